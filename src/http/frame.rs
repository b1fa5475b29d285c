//! Bytes written on a hijacked socket (COMPAT.md §3.7, §3.9).

/// Separator after every streamed payload.
pub const SEPARATOR: &str = "\r\n|\r\n";
const ESCAPED_SEPARATOR: &str = "\r\n||\r\n";

/// The empty chunk written when a stream starts or ends.
pub const EMPTY_CHUNK: &[u8] = b"7\r\n[]\r\n|\r\n\r\n";
/// The terminating zero-length chunk.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// One HTTP chunk carrying `payload` and the separator.
pub fn chunk(payload: &str) -> Vec<u8> {
    let escaped;
    let body = if payload.contains(SEPARATOR) {
        escaped = payload.replace(SEPARATOR, ESCAPED_SEPARATOR);
        escaped.as_str()
    } else {
        payload
    };
    let mut out = Vec::with_capacity(body.len() + 16);
    out.extend_from_slice(format!("{:x}\r\n", body.len() + SEPARATOR.len()).as_bytes());
    out.extend_from_slice(body.as_bytes());
    out.extend_from_slice(SEPARATOR.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// Status line and the default + extra headers, without the content type and
/// framing headers; the gem's own content type wins over an extra one (§9 Q48).
pub fn head_prefix(headers: &[(String, String)]) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\n".to_vec();
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-type") {
            continue;
        }
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"connection: close\r\n");
    out
}

/// The response header naming the storage epoch (see `backend::epoch`).
pub const EPOCH_HEADER: &str = "x-messagebus-epoch";

/// `prefix` (from `head_prefix`) carrying `epoch` in its epoch header;
/// `None` when it already does (or there is no epoch).
pub fn with_epoch(prefix: &[u8], epoch: Option<&str>) -> Option<Vec<u8>> {
    let epoch = epoch?;
    let wanted = format!("{EPOCH_HEADER}: {epoch}\r\n");
    let mut out = Vec::with_capacity(prefix.len() + wanted.len());
    let mut found = false;
    for line in prefix.split_inclusive(|&b| b == b'\n') {
        let is_epoch = line.len() > EPOCH_HEADER.len()
            && line[..EPOCH_HEADER.len()].eq_ignore_ascii_case(EPOCH_HEADER.as_bytes())
            && line[EPOCH_HEADER.len()] == b':';
        if !is_epoch {
            out.extend_from_slice(line);
        } else if line == wanted.as_bytes() {
            return None;
        } else if !found {
            found = true;
            out.extend_from_slice(wanted.as_bytes());
        }
    }
    if !found {
        out.extend_from_slice(wanted.as_bytes());
    }
    Some(out)
}

/// The head of a streamed response.
pub fn chunked_head(prefix: &[u8]) -> Vec<u8> {
    let mut out = prefix.to_vec();
    out.extend_from_slice(
        b"content-type: text/plain; charset=utf-8\r\ntransfer-encoding: chunked\r\nx-content-type-options: nosniff\r\n\r\n",
    );
    out
}

/// A complete non-streamed response.
pub fn full_response(prefix: &[u8], body: &str) -> Vec<u8> {
    let mut out = prefix.to_vec();
    out.extend_from_slice(b"content-type: application/json; charset=utf-8\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Vec<(String, String)> {
        [
            ("cache-control", "must-revalidate, private, max-age=0"),
            ("content-type", "application/json; charset=utf-8"),
            ("pragma", "no-cache"),
            ("expires", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn streamed_head_matches_the_reference_bytes() {
        let head = chunked_head(&head_prefix(&defaults()));
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "HTTP/1.1 200 OK\r\ncache-control: must-revalidate, private, max-age=0\r\npragma: no-cache\r\nexpires: 0\r\n\
             connection: close\r\ncontent-type: text/plain; charset=utf-8\r\ntransfer-encoding: chunked\r\n\
             x-content-type-options: nosniff\r\n\r\n"
        );
    }

    #[test]
    fn chunk_sizes_count_bytes_and_the_separator() {
        let json = r#"[{"global_id":9,"message_id":3,"channel":"/chat/room-1","data":{"from":"bob","body":"see you | later ✓"}}]"#;
        assert_eq!(json.len(), 108);
        let c = chunk(json);
        assert!(c.starts_with(b"71\r\n"));
        assert!(c.ends_with(b"\r\n|\r\n\r\n"));
        assert_eq!(chunk("[]"), EMPTY_CHUNK);
        assert_eq!(
            chunk("a\r\n|\r\nb"),
            b"d\r\na\r\n||\r\nb\r\n|\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn full_response_matches_the_reference_bytes() {
        let r = full_response(&head_prefix(&defaults()), "[]");
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "HTTP/1.1 200 OK\r\ncache-control: must-revalidate, private, max-age=0\r\npragma: no-cache\r\nexpires: 0\r\n\
             connection: close\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: 2\r\n\r\n[]"
        );
    }

    #[test]
    fn the_epoch_header_is_replaced_or_added() {
        let with = |headers: &[(&str, &str)]| {
            head_prefix(
                &headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        let current = with(&[("pragma", "no-cache"), ("x-messagebus-epoch", "aa")]);
        assert_eq!(with_epoch(&current, Some("aa")), None);
        assert_eq!(with_epoch(&current, None), None);
        assert_eq!(
            with_epoch(&current, Some("bb")),
            Some(with(&[
                ("pragma", "no-cache"),
                ("x-messagebus-epoch", "bb")
            ]))
        );
        let none = with(&[("pragma", "no-cache")]);
        let added = String::from_utf8(with_epoch(&none, Some("cc")).unwrap()).unwrap();
        assert!(
            added.starts_with("HTTP/1.1 200 OK\r\npragma: no-cache\r\n"),
            "{added}"
        );
        assert!(added.ends_with("x-messagebus-epoch: cc\r\n"), "{added}");
        let mixed = with(&[("X-MessageBus-Epoch", "aa")]);
        let replaced = String::from_utf8(with_epoch(&mixed, Some("dd")).unwrap()).unwrap();
        assert!(
            replaced.contains("x-messagebus-epoch: dd\r\n") && !replaced.contains("aa"),
            "{replaced}"
        );
    }
}
