//! A stored message and the reference wire string (COMPAT.md §4.1):
//! `<global_id>|<message_id>|<escaped encoded channel>|<envelope>`.

use crate::error::{Error, Result};

/// Replaces every `|` of a channel name inside the pipe-delimited wire string.
pub const PIPE_ESCAPE: &str = "$$123$$";

/// One message as the backends store it: the channel is the *encoded* channel
/// (site suffix included) and `data` is the codec envelope, untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub global_id: i64,
    pub message_id: i64,
    pub channel: String,
    pub data: String,
}

impl Message {
    pub fn new(
        global_id: i64,
        message_id: i64,
        channel: impl Into<String>,
        data: impl Into<String>,
    ) -> Self {
        Message {
            global_id,
            message_id,
            channel: channel.into(),
            data: data.into(),
        }
    }

    /// The full wire string.
    pub fn encode(&self) -> String {
        let channel = escape_channel(&self.channel);
        let mut out = String::with_capacity(channel.len() + self.data.len() + 24);
        out.push_str(&self.global_id.to_string());
        out.push('|');
        out.push_str(&self.message_id.to_string());
        out.push('|');
        out.push_str(&channel);
        out.push('|');
        out.push_str(&self.data);
        out
    }

    /// `<escaped channel>|<data>`, the form the Redis publish script receives.
    pub fn encode_without_ids(&self) -> String {
        format!("{}|{}", escape_channel(&self.channel), self.data)
    }

    /// Parses a wire string. Ids follow Ruby's `to_i` (leading digits, empty → 0);
    /// fewer than three `|` is an error.
    pub fn decode(wire: &str) -> Result<Message> {
        let mut parts = wire.splitn(4, '|');
        let (Some(gid), Some(mid), Some(channel), Some(data)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::InvalidMessage(format!(
                "not a message_bus wire string (expected 3 '|'): {}",
                truncate(wire, 80)
            )));
        };
        Ok(Message {
            global_id: ruby_to_i(gid),
            message_id: ruby_to_i(mid),
            channel: unescape_channel(channel),
            data: data.to_string(),
        })
    }
}

pub fn escape_channel(channel: &str) -> String {
    if channel.contains('|') {
        channel.replace('|', PIPE_ESCAPE)
    } else {
        channel.to_string()
    }
}

pub fn unescape_channel(channel: &str) -> String {
    if channel.contains(PIPE_ESCAPE) {
        channel.replace(PIPE_ESCAPE, "|")
    } else {
        channel.to_string()
    }
}

/// Ruby's `String#to_i` for base 10: optional whitespace and sign, then digits
/// (underscores between digits allowed); anything else ends the number.
pub fn ruby_to_i(s: &str) -> i64 {
    let s = s.trim_start();
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut value: i64 = 0;
    let mut previous_digit = false;
    for b in digits.bytes() {
        match b {
            b'0'..=b'9' => {
                value = value.saturating_mul(10).saturating_add(i64::from(b - b'0'));
                previous_digit = true;
            }
            b'_' if previous_digit => previous_digit = false,
            _ => break,
        }
    }
    if negative {
        -value
    } else {
        value
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_reference_wire_string() {
        let m = Message::new(
            3,
            1,
            "/foo$|$s1",
            r#"{"data":"s","user_ids":[1,2],"group_ids":null,"client_ids":["c"]}"#,
        );
        assert_eq!(
            m.encode(),
            r#"3|1|/foo$$$123$$$s1|{"data":"s","user_ids":[1,2],"group_ids":null,"client_ids":["c"]}"#
        );
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn data_may_contain_pipes() {
        let m = Message::new(1, 1, "/a|b", "x|y|z");
        assert_eq!(m.encode(), "1|1|/a$$123$$b|x|y|z");
        assert_eq!(Message::decode("1|1|/a$$123$$b|x|y|z").unwrap(), m);
        assert_eq!(m.encode_without_ids(), "/a$$123$$b|x|y|z");
    }

    #[test]
    fn ids_follow_ruby_to_i() {
        assert_eq!(ruby_to_i(""), 0);
        assert_eq!(ruby_to_i("12abc"), 12);
        assert_eq!(ruby_to_i("-3"), -3);
        assert_eq!(ruby_to_i("1_000"), 1000);
        assert_eq!(ruby_to_i("abc"), 0);
        let m = Message::decode("|x|/c|d").unwrap();
        assert_eq!((m.global_id, m.message_id), (0, 0));
    }

    #[test]
    fn rejects_strings_without_three_pipes() {
        assert!(Message::decode("1|2|/chan").is_err());
        assert!(Message::decode("garbage").is_err());
    }
}
