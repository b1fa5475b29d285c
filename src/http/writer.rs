//! The socket writer: every byte a connection's task writes goes through
//! it (the fan-out threads' direct writes go through `Outbox`). A write
//! takes what the socket takes now and waits for the rest up to a
//! deadline, ending early when the fan-out kills the connection meanwhile.

use std::future::{poll_fn, Future};
use std::io::ErrorKind;
use std::pin::Pin;
use std::task::Poll;

use tokio::time::{sleep_until, Instant};

use crate::fanout::{CloseReason, Out, Outbox};
use crate::http::limits::limits;
use crate::http::socket::ClientSocket;

/// The rest of a write the socket did not take at once, written by a
/// boxed future that owns it.
pub type Rest<'a> = Pin<Box<dyn Future<Output = Result<(), Cut>> + Send + 'a>>;

/// A write that failed: why, and what it left unwritten (a frame cut in
/// the middle must be finished before any other).
pub struct Cut {
    pub reason: CloseReason,
    out: Out,
    left: usize,
}

impl Cut {
    pub fn unwritten(&self) -> &[u8] {
        let bytes = self.out.as_ref();
        &bytes[bytes.len() - self.left..]
    }
}

/// Writes what the socket takes of `out` now; the rest, if any, is left
/// to the returned future (written by the write timeout). A socket that
/// takes everything at once (the usual case) needs no waiting state, so
/// a task that awaits only the boxed rest keeps none while idle. (Boxed
/// by this plain function: an `async fn` calling `Box::pin(async_fn())`
/// still reserves room for the unboxed future.)
pub fn start<'a>(
    socket: &'a ClientSocket,
    outbox: Option<&'a Outbox>,
    out: Out,
) -> Result<Option<Rest<'a>>, Cut> {
    let total = out.as_ref().len();
    let left = match try_write_all(socket, out.as_ref()) {
        Ok(0) => return Ok(None),
        Ok(left) => left,
        Err(reason) => {
            return Err(Cut {
                reason,
                out,
                left: total,
            })
        }
    };
    let deadline = Instant::now() + limits().write_timeout;
    Ok(Some(Box::pin(async move {
        let bytes = out.as_ref();
        match write_tracked(socket, outbox, &bytes[total - left..], deadline).await {
            Ok(()) => Ok(()),
            Err((reason, left)) => Err(Cut { reason, out, left }),
        }
    })))
}

/// Writes all of `bytes` by `deadline`; ends early when the fan-out kills
/// the connection meanwhile (through `outbox`).
pub async fn write_by(
    socket: &ClientSocket,
    outbox: Option<&Outbox>,
    bytes: &[u8],
    deadline: Instant,
) -> Result<(), CloseReason> {
    write_tracked(socket, outbox, bytes, deadline)
        .await
        .map_err(|(reason, _)| reason)
}

/// Writes what the socket takes now; returns how many bytes are left. A
/// write of 0 bytes or an error means the peer is gone.
fn try_write_all(socket: &ClientSocket, mut bytes: &[u8]) -> Result<usize, CloseReason> {
    while !bytes.is_empty() {
        match socket.try_write(bytes) {
            Ok(0) => return Err(CloseReason::PeerClosed),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => return Err(CloseReason::PeerClosed),
        }
    }
    Ok(bytes.len())
}

/// Like `write_by`; a failure tells how many bytes were left unwritten.
async fn write_tracked(
    socket: &ClientSocket,
    outbox: Option<&Outbox>,
    mut bytes: &[u8],
    deadline: Instant,
) -> Result<(), (CloseReason, usize)> {
    loop {
        let left = try_write_all(socket, bytes).map_err(|r| (r, bytes.len()))?;
        bytes = &bytes[bytes.len() - left..];
        if bytes.is_empty() {
            return Ok(());
        }
        let writable = poll_fn(|cx| {
            if let Some(reason) = outbox.and_then(|o| o.poll_killed(cx)) {
                return Poll::Ready(Err(reason));
            }
            socket
                .poll_write_ready(cx)
                .map_err(|_| CloseReason::PeerClosed)
        });
        tokio::select! {
            ready = writable => ready.map_err(|r| (r, bytes.len()))?,
            _ = sleep_until(deadline) => return Err((CloseReason::WriteTimeout, bytes.len())),
        }
    }
}
