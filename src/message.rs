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

    /// `<escaped channel>|<data>` (see [`wire_tail`]).
    pub fn encode_without_ids(&self) -> String {
        wire_tail(&self.channel, &self.data)
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

/// `<escaped channel>|<data>`: the wire string after its ids, what a
/// publish hands the storage (the Redis script, the PostgreSQL NOTIFY) to
/// put its ids in front of.
pub fn wire_tail(channel: &str, data: &str) -> String {
    let mut out = escape_channel(channel);
    out.push('|');
    out.push_str(data);
    out
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
    // Accumulated wider than i64 so that i64::MIN round-trips; Ruby would
    // make a Bignum, we clamp to the i64 range.
    let mut value: i128 = 0;
    let mut previous_digit = false;
    for b in digits.bytes() {
        match b {
            b'0'..=b'9' => {
                value = (value * 10 + i128::from(b - b'0')).min(i128::from(i64::MAX) + 1);
                previous_digit = true;
            }
            b'_' if previous_digit => previous_digit = false,
            _ => break,
        }
    }
    let value = if negative { -value } else { value };
    value.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
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

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Whatever arrives from Redis or NOTIFY: never a panic; with three
            /// pipes it decodes, and the data is everything after the third one.
            #[test]
            fn decode_never_panics(wire in "\\PC*") {
                let pipes = wire.matches('|').count();
                match Message::decode(&wire) {
                    Ok(m) => {
                        prop_assert!(pipes >= 3);
                        prop_assert!(wire.ends_with(&m.data));
                    }
                    Err(_) => prop_assert!(pipes < 3),
                }
            }

            /// Wire-like strings: digits, pipes, the escape and the site token.
            #[test]
            fn decode_wire_like(wire in "([0-9_+ -]|\\||\\$\\$123\\$\\$|\\$\\|\\$|[a-z/])*") {
                let _ = Message::decode(&wire);
            }

            /// encode -> decode is the identity (ids from storage are >= 0, but
            /// any i64 round-trips) for channels without `$`...
            #[test]
            fn round_trip(gid in any::<i64>(), mid in any::<i64>(),
                          channel in "[^$]*", data in "\\PC*") {
                let m = Message::new(gid, mid, channel, data);
                prop_assert_eq!(Message::decode(&m.encode()).unwrap(), m.clone());
                let without = m.encode_without_ids();
                let (c, d) = without.split_once('|').unwrap();
                prop_assert_eq!(unescape_channel(c), m.channel);
                prop_assert_eq!(d, m.data);
            }

            /// ...and for any channel the ids and data survive; the channel
            /// comes back as `unescape(escape(c))` (lossy only for a literal
            /// `$$123$$`, §9 Q19).
            #[test]
            fn round_trip_any_channel(gid in 0..i64::MAX, mid in 0..i64::MAX,
                                      channel in "(\\$|\\||1|2|3|/|a|\\$\\|\\$)*",
                                      data in "(\\||[a-z{}:\"])*") {
                let m = Message::new(gid, mid, channel.clone(), data.clone());
                let back = Message::decode(&m.encode()).unwrap();
                prop_assert_eq!((back.global_id, back.message_id), (gid, mid));
                prop_assert_eq!(&back.data, &data);
                prop_assert_eq!(back.channel, unescape_channel(&escape_channel(&channel)));
                if !channel.contains('$') {
                    prop_assert_eq!(unescape_channel(&escape_channel(&channel)), channel);
                }
            }

            /// `ruby_to_i` agrees with Rust parsing on plain integers and never
            /// panics on anything.
            #[test]
            fn to_i_matches_integers(n in any::<i64>(), junk in "\\PC*") {
                prop_assert_eq!(ruby_to_i(&n.to_string()), n);
                prop_assert_eq!(ruby_to_i(&format!("{n}x{junk}")), n);
                let _ = ruby_to_i(&junk);
            }
        }
    }
}
