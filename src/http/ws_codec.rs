//! RFC 6455 on our own sockets. `tungstenite` does the standard parts: the
//! `Sec-WebSocket-Accept` key, parsing frame headers (opcodes, lengths,
//! masks; reserved opcodes refused) and formatting server frame headers.
//! We do the rest here, with no I/O: the handshake checks, unmasking,
//! reassembling fragmented messages interleaved with control frames, the
//! limits, and the close codes each violation gets. Server frames are
//! unmasked, so one live message's frame is encoded once and written to
//! every connection.

use std::borrow::Cow;
use std::io::Cursor;

use base64::Engine as _;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Client messages above this many bytes close the connection with 1009.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const PROTOCOL_ERROR: u16 = 1002;
pub const UNSUPPORTED_DATA: u16 = 1003;
pub const INVALID_PAYLOAD: u16 = 1007;
pub const POLICY: u16 = 1008;
pub const TOO_BIG: u16 = 1009;
pub const INTERNAL_ERROR: u16 = 1011;

/// Why an upgrade request is refused before the upgrade: an HTTP status
/// and a message for the body.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: &'static str,
}

/// Checks the version and key of an upgrade request (RFC 6455 §4.2.1);
/// returns the `Sec-WebSocket-Accept` value.
pub fn accept_key(version: Option<&str>, key: Option<&str>) -> Result<String, Refusal> {
    if version.map(str::trim) != Some("13") {
        return Err(Refusal {
            status: 426,
            message: "unsupported WebSocket version: Sec-WebSocket-Version must be 13",
        });
    }
    let key = key.map(str::trim).unwrap_or_default();
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if !matches!(decoded, Ok(ref bytes) if bytes.len() == 16) {
        return Err(Refusal {
            status: 400,
            message: "missing or invalid Sec-WebSocket-Key: 16 bytes, base64-encoded",
        });
    }
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// The `101 Switching Protocols` response, with the middleware's extra
/// headers (not those about a body or the connection).
pub fn upgrade_head(accept: &str, headers: &[(String, String)]) -> Vec<u8> {
    let mut out =
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            .to_vec();
    out.extend_from_slice(format!("sec-websocket-accept: {accept}\r\n").as_bytes());
    for (name, value) in headers {
        let skipped = [
            "content-type",
            "content-length",
            "transfer-encoding",
            "connection",
            "upgrade",
            "sec-websocket-accept",
            "expires",
            "pragma",
        ];
        if skipped.iter().any(|s| name.eq_ignore_ascii_case(s)) {
            continue;
        }
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(header.len(payload.len() as u64) + payload.len());
    // Writing to a Vec cannot fail.
    let _ = header.format(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

/// One unmasked text frame.
pub fn text_frame(text: &str) -> Vec<u8> {
    server_frame(OpCode::Data(Data::Text), text.as_bytes())
}

pub fn ping_frame() -> Vec<u8> {
    server_frame(OpCode::Control(Control::Ping), b"")
}

pub fn pong_frame(payload: &[u8]) -> Vec<u8> {
    server_frame(OpCode::Control(Control::Pong), payload)
}

/// A close frame; the reason is cut (on a character boundary) to fit the
/// 125 bytes of a control frame.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    server_frame(OpCode::Control(Control::Close), &payload)
}

/// What the client sent, one complete message at a time.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Text(String),
    Ping(Vec<u8>),
    Pong,
    /// The client's close code, if it sent one.
    Close(Option<u16>),
}

/// A protocol violation: the connection is closed with this code and reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: Cow<'static, str>,
}

fn violation(code: u16, reason: &'static str) -> Violation {
    Violation {
        code,
        reason: Cow::Borrowed(reason),
    }
}

/// Reassembles client frames fed as they arrive. Keeps no memory while
/// idle (the buffers are freed once drained).
#[derive(Default)]
pub struct Decoder {
    input: Vec<u8>,
    /// The text message being reassembled from fragments.
    message: Option<Vec<u8>>,
}

impl Decoder {
    /// Bytes the decoder accepts before the frames they carry are taken
    /// out: one message at its limit plus a few control frames.
    pub const INPUT_BOUND: usize = MAX_MESSAGE_BYTES + 4096;

    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// Room left before `INPUT_BOUND` (the reader stops there until the
    /// frames are taken out).
    pub fn room(&self) -> usize {
        Self::INPUT_BOUND.saturating_sub(self.input.len())
    }

    /// The next complete event, `None` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, Violation> {
        loop {
            let mut cursor = Cursor::new(&self.input[..]);
            let (header, length) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => {
                    self.release();
                    return Ok(None);
                }
                Err(_) => return Err(violation(PROTOCOL_ERROR, "invalid frame: reserved opcode")),
            };
            let start = cursor.position() as usize;
            self.check(&header, length)?;
            // Checked above: at most MAX_MESSAGE_BYTES.
            let length = length as usize;
            if self.input.len() < start + length {
                return Ok(None);
            }
            let mut payload = self.input[start..start + length].to_vec();
            self.input.drain(..start + length);
            if let Some(mask) = header.mask {
                for (i, byte) in payload.iter_mut().enumerate() {
                    *byte ^= mask[i % 4];
                }
            }
            if let Some(event) = self.take(&header, payload)? {
                return Ok(Some(event));
            }
        }
    }

    fn release(&mut self) {
        if self.input.is_empty() {
            self.input = Vec::new();
        }
    }

    /// The checks a header allows before its payload arrives.
    fn check(&self, header: &FrameHeader, length: u64) -> Result<(), Violation> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(violation(
                PROTOCOL_ERROR,
                "reserved bits set: no extension was negotiated",
            ));
        }
        if header.mask.is_none() {
            return Err(violation(PROTOCOL_ERROR, "client frames must be masked"));
        }
        match header.opcode {
            OpCode::Control(_) => {
                if !header.is_final || length > 125 {
                    return Err(violation(
                        PROTOCOL_ERROR,
                        "control frames must be final and at most 125 bytes",
                    ));
                }
            }
            OpCode::Data(Data::Binary) => {
                return Err(violation(
                    UNSUPPORTED_DATA,
                    "binary frames are not accepted: send JSON text",
                ));
            }
            OpCode::Data(Data::Text) if self.message.is_some() => {
                return Err(violation(
                    PROTOCOL_ERROR,
                    "a new message started inside a fragmented one",
                ));
            }
            OpCode::Data(Data::Continue) if self.message.is_none() => {
                return Err(violation(
                    PROTOCOL_ERROR,
                    "a continuation frame without a message",
                ));
            }
            OpCode::Data(_) => {
                let so_far = self.message.as_ref().map_or(0, Vec::len) as u64;
                if so_far + length > MAX_MESSAGE_BYTES as u64 {
                    return Err(violation(TOO_BIG, "message too big: at most 65536 bytes"));
                }
            }
        }
        Ok(())
    }

    fn take(&mut self, header: &FrameHeader, payload: Vec<u8>) -> Result<Option<Event>, Violation> {
        match header.opcode {
            OpCode::Control(Control::Ping) => Ok(Some(Event::Ping(payload))),
            OpCode::Control(Control::Pong) => Ok(Some(Event::Pong)),
            OpCode::Control(Control::Close) => close_event(&payload).map(Some),
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                Err(violation(PROTOCOL_ERROR, "invalid frame: reserved opcode"))
            }
            OpCode::Data(_) => {
                let mut message = self.message.take().unwrap_or_default();
                message.extend_from_slice(&payload);
                if !header.is_final {
                    self.message = Some(message);
                    return Ok(None);
                }
                String::from_utf8(message)
                    .map(|text| Some(Event::Text(text)))
                    .map_err(|_| violation(INVALID_PAYLOAD, "text frames must be valid UTF-8"))
            }
        }
    }
}

fn close_event(payload: &[u8]) -> Result<Event, Violation> {
    match payload {
        [] => Ok(Event::Close(None)),
        [_] => Err(violation(PROTOCOL_ERROR, "a close frame of one byte")),
        [high, low, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return Err(violation(
                    INVALID_PAYLOAD,
                    "close reason must be valid UTF-8",
                ));
            }
            let code = u16::from_be_bytes([*high, *low]);
            let allowed = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !allowed {
                return Err(violation(PROTOCOL_ERROR, "invalid close code"));
            }
            Ok(Event::Close(Some(code)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![first];
        if payload.len() < 126 {
            out.push(0x80 | payload.len() as u8);
        } else if payload.len() < 65536 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode(bytes: &[u8]) -> Result<Vec<Event>, Violation> {
        let mut decoder = Decoder::default();
        decoder.feed(bytes);
        let mut events = Vec::new();
        while let Some(event) = decoder.next_event()? {
            events.push(event);
        }
        Ok(events)
    }

    #[test]
    fn the_accept_key_of_the_rfc_example() {
        assert_eq!(
            accept_key(Some("13"), Some("dGhlIHNhbXBsZSBub25jZQ==")).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(
            accept_key(Some("8"), Some("dGhlIHNhbXBsZSBub25jZQ=="))
                .unwrap_err()
                .status,
            426
        );
        assert_eq!(accept_key(Some("13"), None).unwrap_err().status, 400);
        assert_eq!(
            accept_key(Some("13"), Some("c2hvcnQ=")).unwrap_err().status,
            400
        );
        let head = String::from_utf8(upgrade_head("abc", &[("x-a".into(), "1".into())])).unwrap();
        assert!(head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(head.ends_with("sec-websocket-accept: abc\r\nx-a: 1\r\n\r\n"));
    }

    #[test]
    fn fragments_interleaved_with_pings_make_one_message() {
        let mut bytes = client_frame(0x01, b"{\"sub");
        bytes.extend(client_frame(0x89, b"hi"));
        bytes.extend(client_frame(0x00, b"scribe\":"));
        bytes.extend(client_frame(0x80, b"{}}"));
        assert_eq!(
            decode(&bytes).unwrap(),
            vec![
                Event::Ping(b"hi".to_vec()),
                Event::Text("{\"subscribe\":{}}".into())
            ]
        );
    }

    #[test]
    fn a_frame_split_anywhere_waits_for_the_rest() {
        let bytes = client_frame(0x81, "é ✓".as_bytes());
        for cut in 0..bytes.len() {
            let mut decoder = Decoder::default();
            decoder.feed(&bytes[..cut]);
            assert_eq!(decoder.next_event().unwrap(), None);
            decoder.feed(&bytes[cut..]);
            assert_eq!(
                decoder.next_event().unwrap(),
                Some(Event::Text("é ✓".into()))
            );
        }
    }

    #[test]
    fn violations_get_their_close_codes() {
        let code = |bytes: Vec<u8>| decode(&bytes).unwrap_err().code;
        assert_eq!(code(client_frame(0x82, b"\x00")), UNSUPPORTED_DATA);
        assert_eq!(code(client_frame(0x81, b"\xff\xfe")), INVALID_PAYLOAD);
        assert_eq!(
            code(client_frame(0x81, &vec![b'a'; MAX_MESSAGE_BYTES + 1])),
            TOO_BIG
        );
        assert_eq!(code(vec![0x81, 0x01, b'a']), PROTOCOL_ERROR); // unmasked
        assert_eq!(code(client_frame(0x83, b"")), PROTOCOL_ERROR); // reserved opcode
        assert_eq!(code(client_frame(0xC1, b"a")), PROTOCOL_ERROR); // rsv1
        assert_eq!(code(client_frame(0x09, b"")), PROTOCOL_ERROR); // fragmented ping
        assert_eq!(code(client_frame(0x80, b"a")), PROTOCOL_ERROR); // stray continuation
        let mut two = client_frame(0x01, b"a");
        two.extend(client_frame(0x81, b"b"));
        assert_eq!(code(two), PROTOCOL_ERROR);
        assert_eq!(code(client_frame(0x88, b"\x03")), PROTOCOL_ERROR);
        assert_eq!(code(client_frame(0x88, b"\x03\xe8\xff")), INVALID_PAYLOAD);
        // Too big as fragments too.
        let mut big = client_frame(0x01, &vec![b'a'; MAX_MESSAGE_BYTES]);
        big.extend(client_frame(0x80, b"a"));
        assert_eq!(code(big), TOO_BIG);
    }

    #[test]
    fn close_and_server_frames() {
        assert_eq!(
            decode(&client_frame(0x88, b"\x03\xe8bye")).unwrap(),
            vec![Event::Close(Some(1000))]
        );
        assert_eq!(
            decode(&client_frame(0x88, b"")).unwrap(),
            vec![Event::Close(None)]
        );
        assert_eq!(text_frame("[]"), b"\x81\x02[]".to_vec());
        let long = "x".repeat(300);
        assert_eq!(&text_frame(&long)[..4], &[0x81, 126, 1, 44]);
        let close = close_frame(POLICY, &"é".repeat(100));
        assert_eq!(close[1] as usize, close.len() - 2);
        assert!(close.len() - 2 <= 125);
        assert_eq!(ping_frame(), vec![0x89, 0]);
        assert_eq!(pong_frame(b"ab"), vec![0x8A, 2, b'a', b'b']);
    }
}
