//! The task that owns one hijacked long-poll socket: it writes the head and
//! the backlog, finishes what the fan-out threads could not write at once,
//! and closes on timeout, on replacement, when the peer resets, when the
//! client cannot keep up or keeps sending (COMPAT.md §3.9, §3.10). Every
//! close is counted under its reason.

use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

use tokio::time::Instant;

use crate::backend::Backend;
use crate::client::{self, Requested};
use crate::envelope::Identity;
use crate::error::{Error, Result};
use crate::fanout::{
    Admission, CloseReason, Fanout, Framing, Next, Out, Outbox, Parked, Transport,
};
use crate::http::frame;
use crate::http::json::payload;
use crate::http::limits::{limits, INPUT_BOUND};
use crate::http::socket::ClientSocket;
use crate::http::writer;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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

struct Conn {
    stream: Arc<ClientSocket>,
    parked: Arc<Parked>,
    view: View,
    head_written: bool,
    /// Taken when the task starts answering (boxed: idle connections keep
    /// only the pointer).
    start: Option<Box<Start>>,
    fanout: Arc<Fanout>,
}

enum Closed {
    /// Write the close output of §3.10.
    Gracefully(CloseReason),
    /// The peer went away, cannot keep up or misbehaves: just drop the socket.
    Abruptly(CloseReason),
    /// The response is complete.
    Done,
}

impl Closed {
    fn reason(&self) -> CloseReason {
        match self {
            Closed::Gracefully(reason) | Closed::Abruptly(reason) => *reason,
            Closed::Done => CloseReason::Delivered,
        }
    }
}

/// What reading a parked connection found.
enum Input {
    /// Nothing more for now.
    Drained,
    /// The peer shut down its side: it sends no more, but may still read.
    Ended,
    /// More than `INPUT_BOUND` bytes after the request.
    TooMuch,
    /// The peer reset the connection.
    Failed,
}

fn register(
    identity: &Identity,
    seq: i64,
    subscriptions: &[Requested],
    fanout: &Fanout,
) -> Arc<Parked> {
    Arc::new(Parked {
        conn_id: fanout.next_conn_id(),
        seq,
        identity: identity.clone(),
        channels: subscriptions.iter().map(|(c, _)| c.clone()).collect(),
        outbox: Outbox::default(),
        connected_ms: crate::fanout::unix_ms(),
    })
}

/// Takes over `fd` (a connected stream socket), registers the client and
/// spawns its task on the current runtime. Must be called within the runtime.
pub(crate) fn park(
    fd: OwnedFd,
    session: Session,
    fanout: Arc<Fanout>,
    backend: Arc<dyn Backend>,
) -> Result<()> {
    let stream = ClientSocket::take_over(fd)?;
    let parked = register(
        &session.identity,
        session.seq,
        &session.subscriptions,
        &fanout,
    );
    let admission = fanout.admit(&session.identity.client_id, Arc::clone(&parked));
    let start = Start::Backlog(session.subscriptions, backend);
    spawn(stream, parked, session.view, admission, start, fanout);
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
        let stream = ClientSocket::take_over(fd)?;
        let Some(parked) = self.parked.take() else {
            return Err(Error::Connection("poll already parked".into()));
        };
        // Closed meanwhile (middleware stopped): answer "[]" and close.
        let admission = self
            .fanout
            .promote(Arc::clone(&parked))
            .unwrap_or(Admission::Stale);
        let fanout = Arc::clone(&self.fanout);
        spawn(
            stream,
            parked,
            view,
            admission,
            Start::Answered(positions),
            fanout,
        );
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

/// A write in progress: ends when written, or fails with why the
/// connection must end.
type Writing<'a> = BoxFuture<'a, std::result::Result<(), CloseReason>>;

/// One step of writing what was queued.
enum Step<'a> {
    Idle,
    End(Closed),
    Wrote {
        ends_response: bool,
    },
    Writing {
        rest: Writing<'a>,
        ends_response: bool,
    },
}

/// Where a parked connection starts.
enum Start {
    /// Read and write the backlog of these subscriptions first.
    Backlog(Vec<Requested>, Arc<dyn Backend>),
    /// The backlog was read (and found empty) with these positions.
    Answered(Vec<(String, i64)>),
}

fn spawn(
    stream: ClientSocket,
    parked: Arc<Parked>,
    view: View,
    admission: Admission,
    start: Start,
    fanout: Arc<Fanout>,
) {
    fanout
        .counters()
        .connection_opened(Transport::of(view.chunked));
    let conn = Conn {
        stream: Arc::new(stream),
        parked,
        view,
        head_written: false,
        start: Some(Box::new(start)),
        fanout,
    };
    // Everything the task keeps is in `conn`: arguments copied into the
    // future would be kept by every idle connection.
    tokio::spawn(conn.run(admission));
}

impl Conn {
    async fn run(mut self, admission: Admission) {
        let outcome = if let Admission::Parked = admission {
            self.serve().await
        } else {
            // Stale, or closed while its backlog was read (stopped, too slow).
            let reason = self.outbox().end_reason().unwrap_or(CloseReason::Refused);
            Closed::Gracefully(reason)
        };
        self.end(outcome).await;
    }

    /// Writes the close output if the outcome wants one, closes the socket,
    /// unregisters and counts the close. Boxed with the connection: the
    /// waiting task keeps no room for it.
    fn end(self, outcome: Closed) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let rest = self.parked.outbox.finish();
            if let Closed::Gracefully(_) = outcome {
                self.close_output(rest).await;
            }
            let Conn {
                stream,
                parked,
                fanout,
                view,
                ..
            } = self;
            // A FIN after what was written.
            if let Some(stream) = Arc::into_inner(stream).and_then(ClientSocket::into_std) {
                let _ = stream.shutdown(std::net::Shutdown::Write);
            }
            fanout.release(&parked.identity.client_id, parked.conn_id);
            fanout
                .counters()
                .connection_closed(Transport::of(view.chunked), outcome.reason());
            fanout.counters().connection_ended();
        })
    }

    fn outbox(&self) -> &Outbox {
        &self.parked.outbox
    }

    /// The head of a streamed answer and its first chunk.
    async fn write_head(&mut self, first_chunk: &[u8]) -> std::result::Result<(), Closed> {
        let mut out = frame::chunked_head(&self.view.head_prefix);
        out.extend_from_slice(first_chunk);
        self.head_written = true;
        self.write(Out::Owned(out)).await.map_err(Closed::Abruptly)
    }

    /// Writes all of `out`; fails on a write error, after the write
    /// timeout, or when the fan-out kills the connection meanwhile.
    async fn write(&self, out: Out) -> std::result::Result<(), CloseReason> {
        match self.start_write(out)? {
            Some(rest) => rest.await,
            None => Ok(()),
        }
    }

    /// Writes what the socket takes of `out` now. The rest, if any, is left
    /// to a boxed future that owns it: a socket that takes everything at
    /// once (the usual case) needs no waiting state, and idle connections
    /// keep none. (Boxed by this plain function: an `async fn` calling
    /// `Box::pin(async_fn())` still reserves room for the unboxed future.)
    fn start_write(&self, out: Out) -> std::result::Result<Option<Writing<'_>>, CloseReason> {
        let left = self.try_write_all(out.as_ref())?;
        if left == 0 {
            return Ok(None);
        }
        Ok(Some(Box::pin(async move {
            let bytes = out.as_ref();
            self.write_slowly(&bytes[bytes.len() - left..]).await
        })))
    }

    /// Writes what the socket takes now; returns how many bytes are left.
    fn try_write_all(&self, bytes: &[u8]) -> std::result::Result<usize, CloseReason> {
        writer::try_write_all(&self.stream, bytes)
    }

    async fn write_slowly(&self, bytes: &[u8]) -> std::result::Result<(), CloseReason> {
        let deadline = Instant::now() + limits().write_timeout;
        writer::write_by(&self.stream, Some(self.outbox()), bytes, deadline).await
    }

    /// Reads the backlog after registration (every message is either in it
    /// or arrives live, and positions drop the overlap) and writes the head
    /// and the backlog.
    async fn answer_backlog(
        &mut self,
        backend: &dyn Backend,
        subscriptions: &[Requested],
    ) -> std::result::Result<Vec<(String, i64)>, Closed> {
        let backlog = client::compute(
            backend,
            self.fanout.gate(),
            &self.parked.identity,
            subscriptions,
        )
        .await
        .map_err(|_| Closed::Gracefully(CloseReason::Error))?;
        // The epoch read after the backlog's ids (see `backend::epoch`).
        let epoch = backend.load_epoch().await.ok().flatten();
        if let Some(prefix) = frame::with_epoch(&self.view.head_prefix, epoch.as_deref()) {
            self.view.head_prefix = prefix.into();
        }
        if self.view.chunked {
            if backlog.is_empty() {
                self.write_head(frame::EMPTY_CHUNK).await?;
            } else {
                self.write_head(&frame::chunk(&payload(&backlog.messages, &backlog.status)))
                    .await?;
            }
        } else if !backlog.is_empty() {
            let body = payload(&backlog.messages, &backlog.status);
            let response = frame::full_response(&self.view.head_prefix, &body);
            return Err(match self.write(Out::Owned(response)).await {
                Ok(()) => Closed::Done,
                Err(reason) => Closed::Abruptly(reason),
            });
        }
        Ok(backlog.positions)
    }

    async fn serve(&mut self) -> Closed {
        let deadline = Instant::now() + self.view.timeout;
        // Boxed: what answering takes is freed before the long wait.
        let positions = match self.answer().await {
            Ok(positions) => positions,
            Err(closed) => return closed,
        };
        let framing = if self.view.chunked {
            Framing::Chunked
        } else {
            Framing::Full
        };
        self.outbox().open(
            Arc::clone(&self.stream),
            framing,
            Arc::clone(&self.view.head_prefix),
            &self.parked.channels,
            positions,
        );
        self.fanout.close_at(deadline, &self.parked);
        self.wait().await
    }

    /// Writes the head and what the client is owed now; returns the
    /// positions that answer covered.
    fn answer(&mut self) -> BoxFuture<'_, std::result::Result<Vec<(String, i64)>, Closed>> {
        Box::pin(self.answer_unboxed())
    }

    async fn answer_unboxed(&mut self) -> std::result::Result<Vec<(String, i64)>, Closed> {
        let start = self
            .start
            .take()
            .ok_or(Closed::Abruptly(CloseReason::Error))?;
        match *start {
            Start::Answered(positions) => {
                if self.view.chunked {
                    self.write_head(frame::EMPTY_CHUNK).await?;
                }
                Ok(positions)
            }
            Start::Backlog(subscriptions, backend) => {
                self.answer_backlog(backend.as_ref(), &subscriptions).await
            }
        }
    }

    /// The long wait: live messages, replacement, timeout, a reset, bytes
    /// from the client. A client that shut down its side (a FIN after its
    /// request is legal HTTP) still reads: it is answered all the same, and
    /// its socket is no longer watched for reading.
    async fn wait(&self) -> Closed {
        let mut reading = true;
        let mut discarded = 0;
        loop {
            if let Some(closed) = self.drain().await {
                return closed;
            }
            // Woken by the outbox (queued, closed, killed, timed out) or by
            // the socket becoming readable; no state of its own to keep.
            let readable = poll_fn(|cx| {
                if self.outbox().poll_news(cx) {
                    return Poll::Ready(Ok(false));
                }
                if !reading {
                    return Poll::Pending;
                }
                self.stream.poll_read_ready(cx).map_ok(|()| true)
            })
            .await;
            match readable {
                Ok(false) => {}
                Ok(true) => match self.discard_input(&mut discarded) {
                    Input::Drained => {}
                    Input::Ended => reading = false,
                    Input::TooMuch => return Closed::Abruptly(CloseReason::UnexpectedInput),
                    Input::Failed => return Closed::Abruptly(CloseReason::PeerClosed),
                },
                Err(_) => return Closed::Abruptly(CloseReason::PeerClosed),
            }
        }
    }

    /// Reads and drops what the client sent after its request (it means
    /// nothing on a long poll), `discarded` bytes so far. Not async: the
    /// scratch buffer never lives in the task.
    fn discard_input(&self, discarded: &mut usize) -> Input {
        let mut scratch = [0u8; 4096];
        loop {
            match self.stream.try_read(&mut scratch) {
                Ok(0) => return Input::Ended,
                Ok(n) => {
                    *discarded += n;
                    if *discarded > INPUT_BOUND {
                        return Input::TooMuch;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Input::Drained,
                Err(_) => return Input::Failed,
            }
        }
    }

    /// Writes what the fan-out queued; `None` once nothing is left (the
    /// fan-out threads then write directly).
    async fn drain(&self) -> Option<Closed> {
        loop {
            match self.step() {
                Step::Idle => return None,
                Step::End(closed) => return Some(closed),
                Step::Wrote { ends_response } => {
                    if ends_response {
                        return Some(Closed::Done);
                    }
                }
                Step::Writing {
                    rest,
                    ends_response,
                } => {
                    if let Err(reason) = rest.await {
                        return Some(Closed::Abruptly(reason));
                    }
                    if ends_response {
                        return Some(Closed::Done);
                    }
                }
            }
        }
    }

    /// Takes the next queued item and writes what the socket takes now; a
    /// rest is written by a boxed future that owns it (nothing kept while idle).
    fn step(&self) -> Step<'_> {
        match self.outbox().next(&self.parked.channels) {
            Next::Idle => Step::Idle,
            Next::Close(reason) => Step::End(Closed::Gracefully(reason)),
            Next::Kill(reason) => Step::End(Closed::Abruptly(reason)),
            Next::Done => Step::End(Closed::Done),
            Next::Write(out, ends_response) => match self.start_write(out) {
                Ok(None) => Step::Wrote { ends_response },
                Ok(Some(rest)) => Step::Writing {
                    rest,
                    ends_response,
                },
                Err(reason) => Step::End(Closed::Abruptly(reason)),
            },
        }
    }

    /// The close output of §3.10, after the unwritten end of a direct write.
    async fn close_output(&self, rest: Option<(Out, bool)>) {
        let mut out = Vec::new();
        if let Some((rest, ends_response)) = rest {
            if ends_response {
                let _ = self.write(rest).await;
                return;
            }
            out.extend_from_slice(rest.as_ref());
        }
        if self.view.chunked {
            if !self.head_written {
                out.extend_from_slice(&frame::chunked_head(&self.view.head_prefix));
            }
            out.extend_from_slice(frame::EMPTY_CHUNK);
            out.extend_from_slice(frame::LAST_CHUNK);
        } else {
            out.extend_from_slice(&frame::full_response(&self.view.head_prefix, "[]"));
        }
        let _ = self.write(Out::Owned(out)).await;
    }
}
