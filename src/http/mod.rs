//! The web-client side: JSON payloads, chunk framing, the task that owns a
//! hijacked long-poll socket and the table of such sockets.

pub mod connection;
pub mod frame;
pub mod json;
pub mod limits;
pub mod socket;
