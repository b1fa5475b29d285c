//! The long-poll transport, one-shot and chunked: the opening writes the
//! head and the backlog (or, for a poll registered while its backlog was
//! read, `Pending`, just the chunked head), input is discarded up to a
//! bound, the timeout is the fan-out's (`close_at`), and the close output
//! is §3.10's empty answer (COMPAT.md §3.9, §3.10).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{read_input, BoxFuture, Discard, End, Input, Link, Reaction, Transport};
use crate::backend::Backend;
use crate::client::{self, Requested};
use crate::envelope::Identity;
use crate::error::{Error, Result};
use crate::fanout::{self, Admission, CloseReason, Fanout, Framing, Out, Parked};
use crate::http::frame;
use crate::http::json::payload;
use crate::http::limits::limits;
use crate::http::socket::ClientSocket;
use crate::http::writer::{self, Cut};

/// Everything a parked connection needs (from a `WebRequest`).
pub(crate) struct Session {
    pub seq: i64,
    pub identity: Identity,
    pub subscriptions: Vec<Requested>,
    pub view: View,
}

/// How a parked connection answers.
pub(crate) struct View {
    pub chunked: bool,
    /// Status line and headers (see `frame::head_prefix`).
    /// Shared by the connections of one middleware with the same headers.
    pub head_prefix: Arc<[u8]>,
    pub timeout: Duration,
}

pub(crate) struct LongPoll {
    chunked: bool,
    head_written: bool,
    /// False once the client shut down its side (a FIN after its request
    /// is legal HTTP): it is answered all the same, its socket no longer
    /// watched for reading.
    reading: bool,
    /// Bytes the client sent after its request (they mean nothing).
    discarded: usize,
    head_prefix: Arc<[u8]>,
    /// Taken when the task starts answering (boxed: idle connections keep
    /// only the pointer).
    opening: Option<Box<Opening>>,
}

struct Opening {
    admission: Admission,
    timeout: Duration,
    start: Start,
}

/// Where a parked connection starts.
enum Start {
    /// Read and write the backlog of these subscriptions first.
    Backlog(Vec<Requested>, Arc<dyn Backend>),
    /// The backlog was read (and found empty) with these positions.
    Answered(Vec<(String, i64)>),
}

fn register(
    identity: &Identity,
    seq: i64,
    subscriptions: &[Requested],
    fanout: &Fanout,
) -> Arc<Parked> {
    let channels = subscriptions.iter().map(|(c, _)| c.clone()).collect();
    super::registration(fanout, identity.clone(), seq, channels)
}

/// Takes over `fd` (a connected stream socket), registers the client and
/// spawns its task on the current runtime. Must be called within the runtime.
pub(crate) fn park(
    fd: OwnedFd,
    session: Session,
    fanout: Arc<Fanout>,
    backend: Arc<dyn Backend>,
) -> Result<()> {
    let socket = ClientSocket::take_over(fd)?;
    let parked = register(
        &session.identity,
        session.seq,
        &session.subscriptions,
        &fanout,
    );
    let admission = fanout.admit(&session.identity.client_id, Arc::clone(&parked));
    let start = Start::Backlog(session.subscriptions, backend);
    let transport = LongPoll::new(session.view, admission, start);
    super::spawn(socket, parked, fanout, transport);
    Ok(())
}

/// A poll registered for live messages while its backlog is read: answered
/// at once when the backlog has anything, parked (`attach`) otherwise.
pub(crate) struct Pending {
    parked: Option<Arc<Parked>>,
    fanout: Arc<Fanout>,
}

impl Pending {
    /// Registers under a provisional key (not counted as parked).
    pub(crate) fn new(
        identity: &Identity,
        seq: i64,
        subscriptions: &[Requested],
        fanout: Arc<Fanout>,
    ) -> Self {
        let parked = register(identity, seq, subscriptions, &fanout);
        fanout.admit_pending(Arc::clone(&parked));
        Pending {
            parked: Some(parked),
            fanout,
        }
    }

    /// Parks the connection on `fd` with the positions its (empty) backlog
    /// answer covered, as `park` would have. Must be called within the runtime.
    pub(crate) fn attach(
        mut self,
        fd: OwnedFd,
        view: View,
        positions: Vec<(String, i64)>,
    ) -> Result<()> {
        let socket = ClientSocket::take_over(fd)?;
        let Some(parked) = self.parked.take() else {
            return Err(Error::Connection("poll already parked".into()));
        };
        // Closed meanwhile (middleware stopped): answer "[]" and close.
        let admission = self
            .fanout
            .promote(Arc::clone(&parked))
            .unwrap_or(Admission::Stale);
        let transport = LongPoll::new(view, admission, Start::Answered(positions));
        super::spawn(socket, parked, Arc::clone(&self.fanout), transport);
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(parked) = self.parked.take() {
            self.fanout.release_pending(&parked);
        }
    }
}

impl LongPoll {
    fn new(view: View, admission: Admission, start: Start) -> Self {
        LongPoll {
            chunked: view.chunked,
            head_written: false,
            reading: true,
            discarded: 0,
            head_prefix: view.head_prefix,
            opening: Some(Box::new(Opening {
                admission,
                timeout: view.timeout,
                start,
            })),
        }
    }

    /// Checks the admission, writes the head and what the client is owed
    /// now, opens the outbox and sets the timeout.
    async fn answer(&mut self, link: &Link) -> std::result::Result<(), End> {
        let opening = self.opening.take().ok_or(End::Drop(CloseReason::Error))?;
        let Opening {
            admission,
            timeout,
            start,
        } = *opening;
        if let Admission::Stale = admission {
            // Stale, or closed while its backlog was read (stopped, too slow).
            let reason = link.outbox().end_reason().unwrap_or(CloseReason::Refused);
            return Err(End::Close(reason, None));
        }
        let deadline = Instant::now() + timeout;
        let positions = match start {
            Start::Answered(positions) => {
                if self.chunked {
                    self.write_head(link, frame::EMPTY_CHUNK).await?;
                }
                positions
            }
            Start::Backlog(subscriptions, backend) => {
                self.answer_backlog(link, backend.as_ref(), &subscriptions)
                    .await?
            }
        };
        let framing = if self.chunked {
            Framing::Chunked
        } else {
            Framing::Full
        };
        link.outbox().open(
            Arc::clone(&link.socket),
            framing,
            Arc::clone(&self.head_prefix),
            &link.parked.channels,
            positions,
        );
        link.fanout.close_at(deadline, &link.parked);
        Ok(())
    }

    /// Reads the backlog after registration (every message is either in it
    /// or arrives live, and positions drop the overlap) and writes the head
    /// and the backlog.
    async fn answer_backlog(
        &mut self,
        link: &Link,
        backend: &dyn Backend,
        subscriptions: &[Requested],
    ) -> std::result::Result<Vec<(String, i64)>, End> {
        let backlog = client::compute(
            backend,
            link.fanout.gate(),
            &link.parked.identity,
            subscriptions,
        )
        .await
        .map_err(|_| End::Close(CloseReason::Error, None))?;
        // The epoch read after the backlog's ids (see `backend::epoch`).
        let epoch = backend.load_epoch().await.ok().flatten();
        if let Some(prefix) = frame::with_epoch(&self.head_prefix, epoch.as_deref()) {
            self.head_prefix = prefix.into();
        }
        if self.chunked {
            if backlog.is_empty() {
                self.write_head(link, frame::EMPTY_CHUNK).await?;
            } else {
                let first = frame::chunk(&payload(&backlog.messages, &backlog.status));
                self.write_head(link, &first).await?;
            }
        } else if !backlog.is_empty() {
            let body = payload(&backlog.messages, &backlog.status);
            let response = frame::full_response(&self.head_prefix, &body);
            return Err(match write(link, &response).await {
                Ok(()) => End::Drop(CloseReason::Delivered),
                Err(reason) => End::Drop(reason),
            });
        }
        Ok(backlog.positions)
    }

    /// The head of a streamed answer and its first chunk.
    async fn write_head(
        &mut self,
        link: &Link,
        first_chunk: &[u8],
    ) -> std::result::Result<(), End> {
        let mut out = frame::chunked_head(&self.head_prefix);
        out.extend_from_slice(first_chunk);
        self.head_written = true;
        write(link, &out).await.map_err(End::Drop)
    }

    /// The close output of §3.10, after the unwritten end of a direct write.
    async fn close_output(&self, link: &Link, rest: Option<(Out, bool)>) {
        let mut out = Vec::new();
        if let Some((rest, ends_answer)) = rest {
            if ends_answer {
                let _ = write(link, rest.as_ref()).await;
                return;
            }
            out.extend_from_slice(rest.as_ref());
        }
        if self.chunked {
            if !self.head_written {
                out.extend_from_slice(&frame::chunked_head(&self.head_prefix));
            }
            out.extend_from_slice(frame::EMPTY_CHUNK);
            out.extend_from_slice(frame::LAST_CHUNK);
        } else {
            out.extend_from_slice(&frame::full_response(&self.head_prefix, "[]"));
        }
        let _ = write(link, &out).await;
    }
}

/// Writes all of `bytes` by the write timeout; fails on a write error, or
/// when the fan-out kills the connection meanwhile.
async fn write(link: &Link, bytes: &[u8]) -> std::result::Result<(), CloseReason> {
    let deadline = Instant::now() + limits().write_timeout;
    writer::write_by(&link.socket, Some(link.outbox()), bytes, deadline).await
}

impl Transport for LongPoll {
    fn counted(&self) -> fanout::Transport {
        fanout::Transport::of(self.chunked)
    }

    fn open<'a>(&'a mut self, link: &'a mut Link) -> BoxFuture<'a, std::result::Result<(), End>> {
        Box::pin(self.answer(link))
    }

    fn reads(&self) -> bool {
        self.reading
    }

    /// Reads and drops what the client sent after its request (it means
    /// nothing on a long poll).
    fn on_readable<'a>(&'a mut self, link: &'a mut Link) -> Reaction<'a> {
        let mut sink = Discard(&mut self.discarded);
        match read_input(&link.socket, &mut sink) {
            Input::Drained => {}
            Input::Ended => self.reading = false,
            Input::TooMuch => return Reaction::End(End::Drop(CloseReason::UnexpectedInput)),
            Input::Failed => return Reaction::End(End::Drop(CloseReason::PeerClosed)),
        }
        Reaction::Wait
    }

    /// Too slow, or the peer is gone: no close output.
    fn killed(&self, reason: CloseReason, _cut: Option<Cut>) -> End {
        End::Drop(reason)
    }

    /// §3.10's empty answer when the poll is closed (timed out, replaced,
    /// stopped), then a FIN after what was written.
    fn close<'a>(
        &'a mut self,
        link: &'a Link,
        end: End,
        rest: Option<(Out, bool)>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let End::Close(..) = end {
                self.close_output(link, rest).await;
            }
            link.socket.shutdown_write();
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every idle long poll's task keeps: its state and the waiting
    /// future (everything else is boxed while it runs).
    #[test]
    fn an_idle_long_poll_keeps_a_small_task() {
        for chunked in [false, true] {
            let bytes = super::super::task_size(|_| {
                let view = View {
                    chunked,
                    head_prefix: Arc::from(&b""[..]),
                    timeout: Duration::from_secs(25),
                };
                LongPoll::new(view, Admission::Parked, Start::Answered(Vec::new()))
            });
            eprintln!("long-poll task future: {bytes} bytes");
            // 176 bytes (304 when long polls had a task of their own).
            assert!(bytes <= 184, "the task future is {bytes} bytes");
        }
    }
}
