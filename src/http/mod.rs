//! The web-client side. At the bottom, pure wire encoders: `json`
//! (payloads), `frame` (HTTP responses and chunks), `ws_codec` (RFC 6455),
//! `sse` (event streams). Above them, one task per hijacked socket, by
//! transport: `connection` (one-shot and chunked long polls), `stream`
//! (WebSocket and SSE), all writing through `writer` and the fan-out's
//! `Outbox`; `socket` is the table of the process's client sockets.

pub mod connection;
pub mod frame;
pub mod json;
pub mod limits;
pub mod socket;
pub mod sse;
pub mod stream;
pub mod writer;
pub mod ws_codec;
pub mod ws_command;
