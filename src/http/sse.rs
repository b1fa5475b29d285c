//! Server-Sent Events wire encoding: the stream's head, one event per
//! payload (its `data` the JSON array a poll would answer, its `id` the
//! positions it covers, so that an `EventSource` reconnecting with
//! `Last-Event-ID` resumes exactly), and the keepalive comment.

/// A comment line: keeps idle connections alive through proxies.
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// Status line and headers of an event stream; `headers` are the default
/// and extra headers of the middleware (their content type is replaced).
pub fn head(headers: &[(String, String)]) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\n".to_vec();
    for (name, value) in headers {
        if [
            "content-type",
            "content-length",
            "transfer-encoding",
            "connection",
        ]
        .iter()
        .any(|skip| name.eq_ignore_ascii_case(skip))
        {
            continue;
        }
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(
        b"content-type: text/event-stream; charset=utf-8\r\nx-accel-buffering: no\r\nconnection: close\r\n\r\n",
    );
    out
}

/// The positions of a connection as an event id: a JSON object of channel
/// to the id the client is up to (`i64::MIN`: not answered yet, left out).
/// JSON escapes line breaks, which an id may not contain.
pub fn positions_id(channels: &[String], positions: &[i64]) -> String {
    let mut map = serde_json::Map::new();
    for (channel, &position) in channels.iter().zip(positions) {
        if position != i64::MIN {
            map.insert(channel.clone(), position.into());
        }
    }
    serde_json::Value::Object(map).to_string()
}

/// One event. Line breaks in `data` (only whitespace between JSON tokens:
/// inside strings they are escaped) start another `data:` line, which the
/// client joins back with a line feed.
pub fn event(id: &str, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(id.len() + data.len() + 16);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id.as_bytes());
    out.push(b'\n');
    for line in data.split(['\n', '\r']) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_carries_the_positions_and_the_payload() {
        let channels = vec!["/a".to_string(), "/b\nc".to_string(), "/new".to_string()];
        let id = positions_id(&channels, &[3, 7, i64::MIN]);
        assert_eq!(id, r#"{"/a":3,"/b\nc":7}"#);
        assert_eq!(
            event(&id, "[1,\n2]"),
            b"id: {\"/a\":3,\"/b\\nc\":7}\ndata: [1,\ndata: 2]\n\n".to_vec()
        );
    }

    #[test]
    fn the_head_replaces_the_content_type_and_keeps_extra_headers() {
        let head = String::from_utf8(head(&[
            ("content-type".into(), "application/json".into()),
            ("x-extra".into(), "1".into()),
        ]))
        .unwrap();
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\nx-extra: 1\r\ncontent-type: text/event-stream")
        );
        assert!(head.ends_with("connection: close\r\n\r\n"));
        assert!(!head.contains("application/json"));
    }
}
