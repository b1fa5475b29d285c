//! The web-client side, in layers. At the bottom, pure wire encoders: `json`
//! (payloads), `frame` (HTTP responses and chunks), `ws_codec` (RFC 6455),
//! `sse` (event streams), `ws_command` (the WebSocket client's commands).
//! Above them, one task per hijacked socket, by transport: `connection`
//! (one-shot and chunked long polls), `stream` (WebSocket and SSE), all
//! writing through `writer` (the socket writer) and the fan-out's `Outbox`;
//! `limits` bounds them, `socket` is the table of the process's client
//! sockets. On top, `endpoint`: the `WebEndpoint` of one middleware (the
//! backend, the fan-out, the shared head prefix), which takes every request
//! as one `WebRequest` and derives the tasks' sessions from it.

pub mod connection;
pub mod endpoint;
pub mod frame;
pub mod json;
pub mod limits;
pub mod socket;
pub mod sse;
pub mod stream;
pub mod writer;
pub mod ws_codec;
pub mod ws_command;
