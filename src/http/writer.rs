//! The socket writer every transport uses for what its task writes itself
//! (the fan-out threads' direct writes go through `Outbox`): a write takes
//! what the socket takes now, and waits for the rest up to a deadline.

use std::future::poll_fn;
use std::io::ErrorKind;
use std::task::Poll;

use tokio::time::{sleep_until, Instant};

use crate::fanout::{CloseReason, Outbox};
use crate::http::socket::ClientSocket;

/// Writes what the socket takes now; returns how many bytes are left. A
/// write of 0 bytes or an error means the peer is gone.
pub fn try_write_all(stream: &ClientSocket, mut bytes: &[u8]) -> Result<usize, CloseReason> {
    while !bytes.is_empty() {
        match stream.try_write(bytes) {
            Ok(0) => return Err(CloseReason::PeerClosed),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => return Err(CloseReason::PeerClosed),
        }
    }
    Ok(bytes.len())
}

/// Writes all of `bytes` by `deadline`; ends early when the fan-out kills
/// the connection meanwhile (through `outbox`).
pub async fn write_by(
    stream: &ClientSocket,
    outbox: Option<&Outbox>,
    bytes: &[u8],
    deadline: Instant,
) -> Result<(), CloseReason> {
    write_tracked(stream, outbox, bytes, deadline)
        .await
        .map_err(|(reason, _)| reason)
}

/// Like `write_by`; a failure tells how many bytes were left unwritten
/// (a frame cut in the middle must be finished before any other).
pub async fn write_tracked(
    stream: &ClientSocket,
    outbox: Option<&Outbox>,
    mut bytes: &[u8],
    deadline: Instant,
) -> Result<(), (CloseReason, usize)> {
    loop {
        let left = try_write_all(stream, bytes).map_err(|r| (r, bytes.len()))?;
        bytes = &bytes[bytes.len() - left..];
        if bytes.is_empty() {
            return Ok(());
        }
        let writable = poll_fn(|cx| {
            if let Some(reason) = outbox.and_then(|o| o.poll_killed(cx)) {
                return Poll::Ready(Err(reason));
            }
            stream
                .poll_write_ready(cx)
                .map_err(|_| CloseReason::PeerClosed)
        });
        tokio::select! {
            ready = writable => ready.map_err(|r| (r, bytes.len()))?,
            _ = sleep_until(deadline) => return Err((CloseReason::WriteTimeout, bytes.len())),
        }
    }
}
