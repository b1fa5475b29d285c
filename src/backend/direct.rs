//! Calls a backend can do on the caller's own thread (issue 14), tried in
//! this order by the binding:
//! * [`super::Backend::immediate`]: answered at once, with no I/O and no
//!   wait but for a lock held for microseconds (the memory backend). The
//!   binding calls it with the GVL held: releasing and reacquiring it would
//!   cost more than the call.
//! * [`super::Backend::direct`]: the binding releases the GVL and drives a
//!   [`DirectRun`] there, with no hop to a runtime worker. A backend that
//!   cannot (or not now) returns `None`, or [`DirectResult::Fallback`]
//!   before anything was sent.
//! * Otherwise the async method, on the runtime.

use crate::error::Result;
use crate::message::Message;

use super::PublishOptions;

/// The request/response calls that may run directly.
#[derive(Clone, Copy)]
pub enum DirectCall<'a> {
    Publish {
        channel: &'a str,
        data: &'a str,
        opts: &'a PublishOptions,
    },
    LastId(&'a str),
    LastIds(&'a [String]),
    Backlog(&'a str, i64),
}

/// Their answers, in the shape of the async methods' results.
#[derive(Debug)]
pub enum DirectReply {
    Published(Option<i64>),
    Id(i64),
    Ids(Vec<i64>),
    Messages(Vec<Message>),
}

impl DirectReply {
    /// The answer as the caller's type (a mismatch is a bug of ours, reported
    /// as an error rather than a panic).
    pub fn into_answer<T: TryFrom<DirectReply>>(self) -> Result<T> {
        T::try_from(self).map_err(|_| {
            crate::error::Error::Backend("internal error: unexpected direct reply".into())
        })
    }
}

pub enum DirectResult {
    Done(Result<DirectReply>),
    /// Nothing was sent: do the call on the async path instead.
    Fallback,
}

/// A call in progress on the caller's thread.
pub trait DirectRun {
    /// Blocks (call it without the GVL). `None`: `interrupted()` became true
    /// first; calling again resumes it (a command already sent is not sent
    /// again, its reply is awaited).
    fn run(&mut self, interrupted: &dyn Fn() -> bool) -> Option<DirectResult>;
}

macro_rules! reply_into {
    ($variant:ident, $t:ty) => {
        impl TryFrom<DirectReply> for $t {
            type Error = DirectReply;
            fn try_from(reply: DirectReply) -> std::result::Result<Self, DirectReply> {
                match reply {
                    DirectReply::$variant(v) => Ok(v),
                    other => Err(other),
                }
            }
        }
    };
}

reply_into!(Published, Option<i64>);
reply_into!(Id, i64);
reply_into!(Ids, Vec<i64>);
reply_into!(Messages, Vec<Message>);
