//! The web-client side, in layers. At the bottom, pure wire encoders: `json`
//! (payloads), `frame` (HTTP responses and chunks), `ws_codec` (RFC 6455),
//! `sse` (event streams), `ws_command` (the WebSocket client's commands).
//! Above them, `conn`: one task per hijacked socket, one driver loop for
//! every transport (opening, waiting on the outbox, the socket's input and
//! the transport's timer, draining, the end), the transport's parts behind
//! one trait: `conn::long_poll` (one-shot and chunked), `conn::websocket`,
//! `conn::event_stream` (SSE), the last two sharing `conn::stream`. Every
//! byte a task writes goes through `writer` (the socket writer), the
//! fan-out threads' through its `Outbox`; `limits` bounds them, `socket` is
//! the table of the process's client sockets. On top, `endpoint`: the
//! `WebEndpoint` of one middleware (the backend, the fan-out, the shared
//! head prefix), which takes every request as one `WebRequest` and derives
//! the tasks' sessions from it.

pub mod conn;
pub mod endpoint;
pub mod frame;
pub mod json;
pub mod limits;
pub mod socket;
pub mod sse;
pub mod writer;
pub mod ws_codec;
pub mod ws_command;
