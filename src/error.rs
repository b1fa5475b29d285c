//! Errors of the core. The binding maps each kind to a Ruby exception class.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// Input that can never be stored or parsed (bad wire string, bad argument).
    #[error("{0}")]
    InvalidMessage(String),
    /// An argument the caller got wrong.
    #[error("{0}")]
    Argument(String),
    /// The backend could not be reached or the connection broke.
    #[error("{0}")]
    Connection(String),
    /// The backend answered with an error.
    #[error("{0}")]
    Backend(String),
    /// The bus or backend was destroyed.
    #[error("message bus destroyed")]
    Destroyed,
    /// A blocking call was interrupted (Thread#kill, Timeout, shutdown).
    #[error("interrupted")]
    Interrupted,
}

pub type Result<T> = std::result::Result<T, Error>;
