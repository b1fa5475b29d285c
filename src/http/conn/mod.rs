//! The task that owns one hijacked client socket, whatever its transport:
//! one driver loop, the transport's parts behind [`Transport`].
//!
//! 1. Opening: the transport writes what opens its answer (a long poll's
//!    head and backlog, a WebSocket's `101` and epoch frame, an event
//!    stream's head) and opens the registration's `Outbox`: from then on
//!    the fan-out threads write live messages straight to the idle socket.
//! 2. Waiting, on the outbox's news (queued, closed, killed, done, and a
//!    streaming connection's keepalive due) and the socket becoming
//!    readable (what input means is the transport's: bytes to discard,
//!    WebSocket frames and commands). No timer: a WebSocket's ping and pong
//!    timeout and an SSE keepalive comment are due by the fan-out's one
//!    keepalive sweep (`Fanout::arm_keepalive`), a long poll's timeout by
//!    its one deadline task (`close_at`).
//! 3. Draining the outbox through the one socket writer (`writer`).
//! 4. The end: the outbox finished, the registration released, the close
//!    counted under its reason, the transport's close output (§3.10's
//!    empty answer, a WebSocket close frame and linger), the socket closed.
//!
//! Idle connections keep only this task: everything but the wait is boxed
//! (the opening, a write's rest, a subscription change, the end), so the
//! task's future is no bigger than the wait needs.
//!
//! The transports: `long_poll` (one-shot and chunked), `stream` (what
//! WebSocket and SSE share), `websocket`, `event_stream`.

pub(crate) mod event_stream;
pub(crate) mod long_poll;
pub(crate) mod stream;
pub(crate) mod websocket;

use std::borrow::Cow;
use std::future::{poll_fn, Future};
use std::io::ErrorKind;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use crate::envelope::Identity;
use crate::fanout::{self, CloseReason, Fanout, News, Next, Out, Outbox, Parked};
use crate::http::limits::INPUT_BOUND;
use crate::http::socket::ClientSocket;
use crate::http::writer::{self, Cut, Rest};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What every connection's task holds, whatever its transport.
pub(crate) struct Link {
    pub socket: Arc<ClientSocket>,
    /// The current registration (a WebSocket's is replaced on every
    /// subscription change).
    pub parked: Arc<Parked>,
    pub fanout: Arc<Fanout>,
}

impl Link {
    pub fn outbox(&self) -> &Outbox {
        &self.parked.outbox
    }
}

/// How a connection ends.
pub(crate) enum End {
    /// Write the transport's close output for this reason (after the
    /// unwritten end of a write that was cut), then close.
    Close(CloseReason, Option<Cut>),
    /// Close with this WebSocket close code and text (the client's close
    /// answered, a protocol violation).
    CloseWith(CloseReason, u16, Cow<'static, str>),
    /// Just drop the socket: the answer is complete, or the peer is gone,
    /// cannot keep up or misbehaves.
    Drop(CloseReason),
}

impl End {
    fn reason(&self) -> CloseReason {
        match self {
            End::Close(reason, _) | End::CloseWith(reason, ..) | End::Drop(reason) => *reason,
        }
    }
}

/// What a transport does with a readable socket.
pub(crate) enum Reaction<'a> {
    /// Done: wait on.
    Wait,
    End(End),
    /// More to do that waits (a WebSocket's frames, a subscription
    /// change): boxed, so that idle tasks keep no room for it.
    Work(BoxFuture<'a, Option<End>>),
}

/// The parts of a connection that depend on its transport.
pub(crate) trait Transport: Send + Sync + Sized + 'static {
    /// The counters' (and metrics') transport.
    fn counted(&self) -> fanout::Transport;

    /// Writes what opens the answer and opens the outbox.
    fn open<'a>(&'a mut self, link: &'a mut Link) -> BoxFuture<'a, Result<(), End>>;

    /// Whether the socket's input is still watched.
    fn reads(&self) -> bool {
        true
    }

    /// The socket is readable.
    fn on_readable<'a>(&'a mut self, link: &'a mut Link) -> Reaction<'a>;

    /// The keepalive the transport armed is due (it arms the next). Only
    /// streams arm one: a long poll's timeout is the fan-out's `close_at`.
    fn on_keepalive(&mut self, _link: &Link) -> Option<End> {
        None
    }

    /// How a connection ends that the fan-out killed, or whose write
    /// failed (`cut`: what it left unwritten).
    fn killed(&self, reason: CloseReason, cut: Option<Cut>) -> End;

    /// Writes the close output `end` calls for, after `rest` (the
    /// unwritten end of a direct write; `true`: it completes the answer).
    fn close<'a>(
        &'a mut self,
        link: &'a Link,
        end: End,
        rest: Option<(Out, bool)>,
    ) -> BoxFuture<'a, ()>;
}

/// A new registration of `identity` for `channels`.
pub(crate) fn registration(
    fanout: &Fanout,
    identity: Identity,
    seq: i64,
    channels: Vec<String>,
) -> Arc<Parked> {
    Arc::new(Parked {
        conn_id: fanout.next_conn_id(),
        seq,
        identity,
        channels,
        outbox: Outbox::default(),
        connected_ms: fanout::unix_ms(),
    })
}

/// Spawns the task of `socket` (registered as `parked`) on the current
/// runtime. Must be called within the runtime.
pub(crate) fn spawn<T: Transport>(
    socket: ClientSocket,
    parked: Arc<Parked>,
    fanout: Arc<Fanout>,
    transport: T,
) {
    fanout.counters().connection_opened(transport.counted());
    let conn = Conn {
        link: Link {
            socket: Arc::new(socket),
            parked,
            fanout,
        },
        transport,
    };
    // Everything the task keeps is in `conn`: arguments copied into the
    // future would be kept by every idle connection.
    tokio::spawn(conn.run());
}

struct Conn<T> {
    link: Link,
    transport: T,
}

/// What woke the waiting task.
enum Woke {
    Outbox,
    Readable,
    Gone,
    Keepalive,
}

/// One step of writing what was queued.
enum Step<'a> {
    Idle,
    End(End),
    Wrote { ends_answer: bool },
    Writing { rest: Rest<'a>, ends_answer: bool },
}

impl<T: Transport> Conn<T> {
    /// The connection's task. Not an `async fn`: that would keep a copy
    /// of its argument (the whole connection) beside the local it moves to.
    #[allow(clippy::manual_async_fn)]
    fn run(mut self) -> impl Future<Output = ()> + Send {
        async move {
            let end = self.serve().await;
            self.end(end).await;
        }
    }

    /// The opening, then the wait. (No value of the opening's may be alive
    /// in the wait: every idle connection would keep room for it.)
    async fn serve(&mut self) -> End {
        if let Err(end) = self.transport.open(&mut self.link).await {
            return end;
        }
        self.wait().await
    }

    /// Drains the outbox, then waits on its news (a keepalive due among
    /// them) and the socket's input, until the connection must end.
    async fn wait(&mut self) -> End {
        loop {
            if let Some(end) = self.drain().await {
                return end;
            }
            match self.woken().await {
                Woke::Outbox => {}
                Woke::Gone => return End::Drop(CloseReason::PeerClosed),
                Woke::Readable => {
                    let work = match self.transport.on_readable(&mut self.link) {
                        Reaction::Wait => continue,
                        Reaction::End(end) => return end,
                        Reaction::Work(work) => work,
                    };
                    if let Some(end) = work.await {
                        return end;
                    }
                }
                Woke::Keepalive => {
                    if let Some(end) = self.transport.on_keepalive(&self.link) {
                        return end;
                    }
                }
            }
        }
    }

    /// Woken by the outbox (its keepalive due among its news) or by the
    /// socket becoming readable (while the transport reads).
    async fn woken(&self) -> Woke {
        let outbox = self.link.outbox();
        let socket = &self.link.socket;
        let reads = self.transport.reads();
        poll_fn(|cx| {
            match outbox.poll_news(cx) {
                Some(News::Work) => return Poll::Ready(Woke::Outbox),
                Some(News::Keepalive) => return Poll::Ready(Woke::Keepalive),
                None => {}
            }
            if !reads {
                return Poll::Pending;
            }
            match socket.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Woke::Readable),
                Poll::Ready(Err(_)) => Poll::Ready(Woke::Gone),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Writes what the fan-out queued; `None` once nothing is left (the
    /// fan-out threads then write directly).
    async fn drain(&self) -> Option<End> {
        loop {
            // The step is taken apart before the wait for a rest: no room
            // for its other variants while it waits.
            let (rest, ends_answer) = match self.step() {
                Step::Idle => return None,
                Step::End(end) => return Some(end),
                Step::Wrote { ends_answer } => (None, ends_answer),
                Step::Writing { rest, ends_answer } => (Some(rest), ends_answer),
            };
            if let Some(rest) = rest {
                if let Err(cut) = rest.await {
                    return Some(self.transport.killed(cut.reason, Some(cut)));
                }
            }
            if ends_answer {
                return Some(End::Drop(CloseReason::Delivered));
            }
        }
    }

    /// Takes the next queued item and writes what the socket takes now; a
    /// rest is written by a boxed future that owns it (nothing kept while idle).
    fn step(&self) -> Step<'_> {
        let outbox = self.link.outbox();
        match outbox.next(&self.link.parked.channels) {
            Next::Idle => Step::Idle,
            Next::Close(reason) => Step::End(End::Close(reason, None)),
            Next::Kill(reason) => Step::End(self.transport.killed(reason, None)),
            // The answer was completed by a direct write.
            Next::Done => Step::End(End::Drop(CloseReason::Delivered)),
            Next::Write(out, ends_answer) => {
                match writer::start(&self.link.socket, Some(outbox), out) {
                    Ok(None) => Step::Wrote { ends_answer },
                    Ok(Some(rest)) => Step::Writing { rest, ends_answer },
                    Err(cut) => Step::End(self.transport.killed(cut.reason, Some(cut))),
                }
            }
        }
    }

    /// Finishes the outbox (no more direct writes), unregisters, counts the
    /// close, writes the close output and closes the socket. Boxed with the
    /// connection: the waiting task keeps no room for it.
    fn end(self, end: End) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let Conn {
                link,
                mut transport,
            } = self;
            let rest = link.outbox().finish();
            let parked = &link.parked;
            link.fanout
                .release(&parked.identity.client_id, parked.conn_id);
            // Counted now: the close output may wait on a slow reader.
            let counters = Arc::clone(link.fanout.counters_arc());
            counters.connection_closed(transport.counted(), end.reason());
            transport.close(&link, end, rest).await;
            drop(link);
            counters.connection_ended();
        })
    }
}

/// What reading a connection's input found.
pub(crate) enum Input {
    /// Nothing more for now.
    Drained,
    /// The peer shut down its side: it sends no more, but may still read.
    Ended,
    /// More than the transport takes.
    TooMuch,
    /// The peer reset the connection.
    Failed,
}

/// Where a connection's input goes.
pub(crate) trait Sink {
    /// Bytes taken at most before they are dealt with (0: stop reading).
    fn room(&self) -> usize;
    /// Takes `bytes`; false when that makes too much.
    fn take(&mut self, bytes: &[u8]) -> bool;
}

/// Input that means nothing (after a long poll's request, from an event
/// stream's client): counted (in the `usize`) and dropped, up to
/// `INPUT_BOUND` bytes.
pub(crate) struct Discard<'a>(pub &'a mut usize);

impl Sink for Discard<'_> {
    fn room(&self) -> usize {
        usize::MAX
    }

    fn take(&mut self, bytes: &[u8]) -> bool {
        *self.0 += bytes.len();
        *self.0 <= INPUT_BOUND
    }
}

/// Reads what the socket has now into `sink`. Not async: the scratch
/// buffer never lives in the task.
pub(crate) fn read_input(socket: &ClientSocket, sink: &mut impl Sink) -> Input {
    let mut scratch = [0u8; 4096];
    loop {
        let room = sink.room().min(scratch.len());
        if room == 0 {
            return Input::Drained;
        }
        match socket.try_read(&mut scratch[..room]) {
            Ok(0) => return Input::Ended,
            Ok(n) => {
                if !sink.take(&scratch[..n]) {
                    return Input::TooMuch;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Input::Drained,
            Err(_) => return Input::Failed,
        }
    }
}

/// The size of the future of a connection's task with `transport` (what
/// every idle connection keeps, with tokio's task header and trailer:
/// everything else is boxed while it runs).
#[cfg(test)]
pub(crate) fn task_size<T: Transport>(transport: impl FnOnce(&Fanout) -> T) -> usize {
    fn size<F: Future>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let _guard = rt.enter();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let client = std::net::TcpStream::connect(listener.local_addr().expect("an address"))
        .expect("a connection");
    let socket = ClientSocket::take_over(std::os::fd::OwnedFd::from(client)).expect("a socket");
    let fanout = Fanout::new(crate::gate::Gate::new()).expect("a fan-out");
    let conn = Conn {
        link: Link {
            socket: Arc::new(socket),
            parked: registration(&fanout, Identity::default(), 0, Vec::new()),
            fanout: Arc::clone(&fanout),
        },
        transport: transport(&fanout),
    };
    size(&conn.run())
}
