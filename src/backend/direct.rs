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

/// How often a direct call waiting on its socket looks at the caller's
/// interrupt flag.
pub(crate) const INTERRUPT_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// What a wait on a socket of a direct call ended with.
pub(crate) enum Wait {
    /// Ready for `events` (or hung up / in error: the next read or write
    /// reports which).
    Ready,
    Interrupted,
    TimedOut,
    Failed(std::io::Error),
}

/// Waits until `fd` is ready for `events` (`libc::POLLIN`, `POLLOUT`), the
/// deadline passes (`None`: none), or `interrupted()` becomes true (looked at
/// first, then every [`INTERRUPT_POLL`]).
pub(crate) fn wait_ready(
    fd: std::os::fd::RawFd,
    events: libc::c_short,
    deadline: Option<std::time::Instant>,
    interrupted: &dyn Fn() -> bool,
) -> Wait {
    loop {
        if interrupted() {
            return Wait::Interrupted;
        }
        let mut slice = INTERRUPT_POLL;
        if let Some(deadline) = deadline {
            let now = std::time::Instant::now();
            if now >= deadline {
                return Wait::TimedOut;
            }
            slice = slice.min(deadline - now);
        }
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd, on a socket the caller owns.
        let n = unsafe { libc::poll(&mut pfd, 1, slice.as_millis().max(1) as libc::c_int) };
        if n > 0 {
            return Wait::Ready;
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Wait::Failed(e);
            }
        }
    }
}

/// A process's caller-thread connections of one kind: the idle ones, kept
/// for the next caller, and how many are open (idle or checked out), at
/// most the `max` given to `checkout`.
pub(crate) struct IdleConns<C> {
    idle: crate::sync::Mutex<Vec<C>>,
    open: crate::sync::Mutex<usize>,
}

impl<C> Default for IdleConns<C> {
    fn default() -> Self {
        IdleConns {
            idle: crate::sync::Mutex::new(Vec::new()),
            open: crate::sync::Mutex::new(0),
        }
    }
}

impl<C> IdleConns<C> {
    /// An idle connection (`Some(Some)`), leave to open one (`Some(None)`),
    /// or `None` when `max` are open.
    pub(crate) fn checkout(&self, max: usize) -> Option<Option<C>> {
        if let Some(conn) = self.idle.lock().pop() {
            return Some(Some(conn));
        }
        let mut open = self.open.lock();
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(None)
    }

    pub(crate) fn give_back(&self, conn: C) {
        self.idle.lock().push(conn);
    }

    /// Gives up a checked-out connection's place (it is closed or gone).
    pub(crate) fn forget_one(&self) {
        let mut open = self.open.lock();
        *open = open.saturating_sub(1);
    }

    /// Closes the idle connections.
    pub(crate) fn clear(&self) {
        let closed = std::mem::take(&mut *self.idle.lock()).len();
        let mut open = self.open.lock();
        *open = open.saturating_sub(closed);
    }
}
