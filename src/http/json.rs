//! JSON output byte-compatible with Ruby's generator (COMPAT.md §3.8): raw
//! UTF-8, `"` `\` and control characters escaped, `/` and U+2028 not.

use crate::message::Message;

pub fn push_string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => out.push_str(&format!("\\u{b:04x}")),
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// One element of a response array; `data` is JSON text written as is.
pub fn push_message(out: &mut String, global_id: i64, message_id: i64, channel: &str, data: &str) {
    out.push_str("{\"global_id\":");
    out.push_str(&global_id.to_string());
    out.push_str(",\"message_id\":");
    out.push_str(&message_id.to_string());
    out.push_str(",\"channel\":");
    push_string(out, channel);
    out.push_str(",\"data\":");
    out.push_str(data);
    out.push('}');
}

/// The `/__status` element: channel → the bus's last id, in order.
pub fn push_status(out: &mut String, status: &[(String, i64)]) {
    out.push_str("{\"global_id\":-1,\"message_id\":-1,\"channel\":\"/__status\",\"data\":{");
    for (i, (channel, id)) in status.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_string(out, channel);
        out.push(':');
        out.push_str(&id.to_string());
    }
    out.push_str("}}");
}

/// A message ready for web clients: channel without site, data as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    pub global_id: i64,
    pub message_id: i64,
    pub channel: String,
    pub data: String,
}

impl OutMessage {
    pub fn from_stored(m: &Message, channel: &str, data: &str) -> Self {
        OutMessage {
            global_id: m.global_id,
            message_id: m.message_id,
            channel: channel.to_string(),
            data: data.to_string(),
        }
    }
}

/// The JSON array of a response body or chunk.
pub fn payload(messages: &[OutMessage], status: &[(String, i64)]) -> String {
    let mut out = String::with_capacity(
        64 + messages
            .iter()
            .map(|m| m.data.len() + m.channel.len() + 60)
            .sum::<usize>(),
    );
    out.push('[');
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_message(&mut out, m.global_id, m.message_id, &m.channel, &m.data);
    }
    if !status.is_empty() {
        if !messages.is_empty() {
            out.push(',');
        }
        push_status(&mut out, status);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_ruby() {
        let mut out = String::new();
        push_string(&mut out, "\u{1}\u{1f}\u{7f}/\u{2028}é\u{8}\t\"\\");
        assert_eq!(out, "\"\\u0001\\u001f\u{7f}/\u{2028}é\\b\\t\\\"\\\\\"");
    }

    #[test]
    fn builds_the_reference_payloads() {
        let m = OutMessage {
            global_id: 5,
            message_id: 5,
            channel: "/notices".into(),
            data: r#"{"n":5,"text":"notice 5"}"#.into(),
        };
        let status = vec![("/chat/room-1".to_string(), 2), ("/notices".to_string(), 6)];
        assert_eq!(
            payload(&[m], &status),
            r#"[{"global_id":5,"message_id":5,"channel":"/notices","data":{"n":5,"text":"notice 5"}},{"global_id":-1,"message_id":-1,"channel":"/__status","data":{"/chat/room-1":2,"/notices":6}}]"#
        );
        assert_eq!(payload(&[], &[]), "[]");
    }
}
