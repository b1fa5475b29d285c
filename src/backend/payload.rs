//! What a firehose does first with every pub/sub or NOTIFY payload: the
//! wire string of COMPAT.md §4.1, or something to skip with a log line.

use crate::log;
use crate::message::{truncate, Message};

/// Payload by which reference processes end every firehose subscription
/// (never sent by ours, and ignored when received: COMPAT.md §9 Q5).
pub const UNSUBSCRIBE: &str = "$$UNSUBSCRIBE";

/// The message a payload received on `channel` (the pub/sub or NOTIFY
/// channel) carries; `None`, logged, for a foreign `$$UNSUBSCRIBE` and
/// for anything not in the wire format.
pub(super) fn decode(channel: &str, payload: &[u8]) -> Option<Message> {
    if payload == UNSUBSCRIBE.as_bytes() {
        log::warn(format!(
            "message_bus: ignoring {UNSUBSCRIBE} received on {channel} (sent by another process)"
        ));
        return None;
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        log::warn(format!(
            "message_bus: skipping a non-UTF-8 payload on {channel}"
        ));
        return None;
    };
    match Message::decode(text) {
        Ok(message) => Some(message),
        Err(_) => {
            log::warn(format!(
                "message_bus: skipping a payload on {channel} not in the message_bus format: {}",
                truncate(text, 80)
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wire_strings_are_messages() {
        assert_eq!(
            decode("_message_bus_0", b"3|2|/a$$123$$b|x|y"),
            Some(Message::new(3, 2, "/a|b", "x|y"))
        );
        assert_eq!(decode("_message_bus_0", UNSUBSCRIBE.as_bytes()), None);
        assert_eq!(decode("_message_bus_0", b"nonsense"), None);
        assert_eq!(decode("_message_bus_0", b"1|1|/a|\xff"), None);
    }
}
