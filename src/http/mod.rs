//! The web-client side: JSON payloads, chunk framing and the task that owns
//! a hijacked long-poll socket.

pub mod connection;
pub mod frame;
pub mod json;
pub mod limits;
