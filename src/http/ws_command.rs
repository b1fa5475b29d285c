//! What a WebSocket client may send: `{"subscribe": {"/channel": last_id,
//! ...}}` and `{"unsubscribe": ["/channel", ...]}` (both in one message
//! are applied in that order). Last ids follow a poll's rules: null or ""
//! mean "from now", integers (or their decimal text, or a finite number)
//! that id, clamped to 64 bits.

use serde_json::Value;

use crate::client::Requested;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Command {
    pub subscribe: Vec<Requested>,
    pub unsubscribe: Vec<String>,
}

/// Parses one client message; the error is the reason of a 1008 close.
pub fn parse(text: &str) -> Result<Command, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("a message must be a JSON object with subscribe or unsubscribe".into());
    };
    let mut command = Command::default();
    for (key, value) in map {
        match (key.as_str(), value) {
            ("subscribe", Value::Object(channels)) => {
                for (channel, id) in channels {
                    let id = last_id(&channel, &id)?;
                    command.subscribe.push((channel, id));
                }
            }
            ("unsubscribe", Value::Array(channels)) => {
                for channel in channels {
                    match channel {
                        Value::String(name) => command.unsubscribe.push(name),
                        _ => return Err("unsubscribe takes an array of channel names".into()),
                    }
                }
            }
            ("subscribe", _) => {
                return Err("subscribe takes an object of channel => last id".into())
            }
            ("unsubscribe", _) => return Err("unsubscribe takes an array of channel names".into()),
            (other, _) => {
                let shown: String = other.chars().take(40).collect();
                return Err(format!(
                    "unknown command {shown:?}: use subscribe or unsubscribe"
                ));
            }
        }
    }
    Ok(command)
}

fn last_id(channel: &str, id: &Value) -> Result<Option<i64>, String> {
    let invalid = || {
        let shown: String = channel.chars().take(100).collect();
        format!("invalid last id for channel {shown:?}")
    };
    match id {
        Value::Null => Ok(None),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Ok(Some(i)),
            (None, Some(_), _) => Ok(Some(i64::MAX)),
            (None, None, Some(f)) if f.is_finite() => Ok(Some(f as i64)),
            _ => Err(invalid()),
        },
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => {
            let t = s.trim();
            let digits = t.strip_prefix('-').unwrap_or(t);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            // Out of range: clamped, like a poll's.
            Ok(Some(t.parse::<i64>().unwrap_or(if t.starts_with('-') {
                i64::MIN
            } else {
                i64::MAX
            })))
        }
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_and_unsubscribe_with_a_polls_last_ids() {
        let command =
            parse(r#"{"subscribe":{"/a":-1,"/b":"12","/c":null,"/d":"","/e":3.9,"/f":"99999999999999999999"},"unsubscribe":["/x"]}"#)
                .unwrap();
        assert_eq!(
            command.subscribe,
            vec![
                ("/a".into(), Some(-1)),
                ("/b".into(), Some(12)),
                ("/c".into(), None),
                ("/d".into(), None),
                ("/e".into(), Some(3)),
                ("/f".into(), Some(i64::MAX)),
            ]
        );
        assert_eq!(command.unsubscribe, vec!["/x".to_string()]);
    }

    #[test]
    fn bad_messages_get_a_reason() {
        for bad in [
            "nope",
            "[]",
            r#"{"subscribe":[]}"#,
            r#"{"subscribe":{"/a":"x"}}"#,
            r#"{"subscribe":{"/a":true}}"#,
            r#"{"unsubscribe":[1]}"#,
            r#"{"publish":{}}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
