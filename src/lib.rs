//! Core of the `message_bus` gem: pure Rust, no Ruby types. Backends store
//! and read messages in the reference formats, the hub hands live messages to
//! local subscriptions and to the web-client fan-out.

pub mod backend;
pub mod bus;
pub mod client;
pub mod envelope;
pub mod error;
pub mod fanout;
pub mod fork;
pub mod gate;
pub mod http;
pub mod log;
pub mod message;
pub mod metrics;
pub mod runtime;
pub mod subscription;
pub mod sync;

pub use error::{Error, Result};
pub use message::Message;
