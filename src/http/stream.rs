//! The task that owns one streaming connection, WebSocket or Server-Sent
//! Events, after the upgrade (or the event stream's head): it never ends by
//! itself. Live messages reach it through the fan-out like a chunked long
//! poll's (written straight to the socket by the fan-out threads while it
//! is idle, the frame of each message encoded once for every connection);
//! the task reads the client's frames, answers pings, pings on its own
//! interval and closes a peer that stops answering, and applies
//! subscribe / unsubscribe. A subscription change registers the connection
//! anew (in one step, in place of the old registration) before reading the
//! backlog of every channel from where the client is up to, so that no
//! message falls in between and none is sent twice.

use std::borrow::Cow;
use std::future::poll_fn;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use crate::backend::Backend;
use crate::bus::SITE_TOKEN;
use crate::client::{self, ClientBacklog, Requested};
use crate::envelope::Identity;
use crate::error::Result;
use crate::fanout::{CloseReason, Fanout, Framing, Next, Outbox, Parked};
use crate::http::json::payload;
use crate::http::limits::{limits, INPUT_BOUND};
use crate::http::socket::ClientSocket;
use crate::http::ws_codec::{self as ws, Decoder, Event};
use crate::http::{sse, writer, ws_command};

/// How long a close frame (and the unwritten end before it) may take.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a closed WebSocket waits for the client's close frame (and its
/// FIN) before dropping the socket: unread input would make it a reset.
const LINGER: Duration = Duration::from_secs(2);

/// The channel of the entry that opens a WebSocket's first frame.
const EPOCH_CHANNEL: &str = "/__epoch";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Sse,
}

impl Transport {
    /// The fan-out counters' (and metrics') transport.
    fn counted(self) -> crate::fanout::Transport {
        match self {
            Transport::WebSocket => crate::fanout::Transport::WebSocket,
            Transport::Sse => crate::fanout::Transport::Sse,
        }
    }
}

/// Everything a streaming connection needs (from a `WebRequest`).
pub(crate) struct StreamSession {
    pub identity: Identity,
    pub transport: Transport,
    /// The `101` response or the event stream's head, written first.
    pub head: Vec<u8>,
    /// The subscriptions it starts with (an event stream's: a WebSocket
    /// subscribes with messages).
    pub subscriptions: Vec<Requested>,
    /// WebSocket ping, or SSE keepalive comment, interval.
    pub keepalive: Duration,
    /// At most this many channels (as a poll).
    pub max_channels: usize,
}

/// How a connection ends.
enum End {
    /// Write a close frame (WebSocket) with this code and reason, then close.
    Close(CloseReason, u16, Cow<'static, str>),
    /// Just close: the peer is gone.
    Drop(CloseReason),
}

impl End {
    /// The close a connection gets when the fan-out ended it.
    fn from_reason(reason: CloseReason) -> End {
        let (code, text) = match reason {
            CloseReason::PeerClosed => return End::Drop(reason),
            CloseReason::Replaced => (
                ws::NORMAL,
                "replaced by a newer connection of this client id",
            ),
            CloseReason::Stopped => (ws::GOING_AWAY, "server stopping"),
            CloseReason::SlowConsumer => (
                ws::POLICY,
                "too slow: more than 256 messages or 1 MiB waiting; reconnect with your last ids",
            ),
            CloseReason::WriteTimeout => (
                ws::POLICY,
                "too slow: a write did not complete in time; reconnect with your last ids",
            ),
            CloseReason::Error => (ws::INTERNAL_ERROR, "the backlog could not be read"),
            _ => (ws::NORMAL, ""),
        };
        End::Close(reason, code, Cow::Borrowed(text))
    }

    fn policy(reason: impl Into<Cow<'static, str>>) -> End {
        End::Close(CloseReason::ProtocolError, ws::POLICY, reason.into())
    }
}

struct StreamConn {
    stream: Arc<ClientSocket>,
    transport: Transport,
    /// The current registration (replaced on every subscription change).
    parked: Arc<Parked>,
    fanout: Arc<Fanout>,
    backend: Arc<dyn Backend>,
    decoder: Decoder,
    keepalive: Duration,
    max_channels: usize,
    awaiting_pong: bool,
    /// SSE: bytes the client sent (they mean nothing).
    discarded: usize,
    /// The end of a frame whose write the fan-out cut (killing the
    /// connection): written before the close frame.
    unfinished: Option<Vec<u8>>,
}

fn registration(fanout: &Fanout, identity: Identity, channels: Vec<String>) -> Arc<Parked> {
    Arc::new(Parked {
        conn_id: fanout.next_conn_id(),
        // Streaming connections take the place of any other of their
        // client id, and any later request of it takes theirs.
        seq: i64::MIN,
        identity,
        channels,
        outbox: Outbox::default(),
        connected_ms: crate::fanout::unix_ms(),
    })
}

/// Takes over `fd` (a connected stream socket whose request was checked),
/// replaces any connection of the client id and spawns the connection's
/// task on the current runtime. Must be called within the runtime.
pub(crate) fn open(
    fd: OwnedFd,
    session: StreamSession,
    fanout: Arc<Fanout>,
    backend: Arc<dyn Backend>,
) -> Result<()> {
    let stream = Arc::new(ClientSocket::take_over(fd)?);
    let parked = registration(&fanout, session.identity, Vec::new());
    fanout.admit_newest(Arc::clone(&parked));
    let conn = StreamConn {
        stream,
        transport: session.transport,
        parked,
        fanout,
        backend,
        decoder: Decoder::default(),
        keepalive: session.keepalive.max(Duration::from_millis(10)),
        max_channels: session.max_channels,
        awaiting_pong: false,
        discarded: 0,
        unfinished: None,
    };
    conn.fanout
        .counters()
        .connection_opened(conn.transport.counted());
    tokio::spawn(conn.run(session.head, session.subscriptions));
    Ok(())
}

/// The head prefix of a streaming connection's outbox (only a one-shot
/// answer has one): one empty allocation shared by every connection.
fn no_head_prefix() -> Arc<[u8]> {
    static EMPTY: std::sync::OnceLock<Arc<[u8]>> = std::sync::OnceLock::new();
    Arc::clone(EMPTY.get_or_init(|| Arc::from(&b""[..])))
}

/// What woke the waiting task.
enum Woke {
    Outbox,
    Readable,
    Gone,
    Keepalive,
}

/// What reading found.
enum Input {
    Drained,
    Ended,
    TooMuch,
}

impl StreamConn {
    /// The connection's task. Not an `async fn`: that would keep a copy of
    /// its arguments (the whole connection) beside the locals they move to.
    fn run(
        mut self,
        head: Vec<u8>,
        subscriptions: Vec<Requested>,
    ) -> impl std::future::Future<Output = ()> + Send {
        // Boxed, as the close and the opening's state (the first backlog):
        // none of them is kept in the task while the connection waits.
        let opening = Box::new((head, subscriptions));
        async move {
            // Its allocation is freed at the end of this block.
            let (head, subscriptions) = {
                let opening = opening;
                *opening
            };
            let end = match Box::pin(self.start(head, subscriptions)).await {
                Ok(()) => self.wait().await,
                Err(end) => end,
            };
            Box::pin(self.end(end)).await;
        }
    }

    fn framing(&self) -> Framing {
        match self.transport {
            Transport::WebSocket => Framing::WebSocket,
            Transport::Sse => Framing::Sse,
        }
    }

    /// Writes the head (and a WebSocket's epoch frame), opens the outbox
    /// and answers the subscriptions the connection starts with.
    async fn start(
        &mut self,
        head: Vec<u8>,
        subscriptions: Vec<Requested>,
    ) -> std::result::Result<(), End> {
        let deadline = Instant::now() + limits().write_timeout;
        writer::write_by(&self.stream, None, &head, deadline)
            .await
            .map_err(End::Drop)?;
        drop(head);
        if self.transport == Transport::WebSocket {
            self.write_epoch(deadline).await.map_err(End::Drop)?;
        }
        self.parked.outbox.open(
            Arc::clone(&self.stream),
            self.framing(),
            no_head_prefix(),
            &[],
            Vec::new(),
        );
        if !subscriptions.is_empty() {
            self.resubscribe(subscriptions, Vec::new()).await?;
        }
        Ok(())
    }

    /// A WebSocket's first frame names the storage epoch (issue 16), as
    /// the `X-MessageBus-Epoch` header does on HTTP: `[{"channel":
    /// "/__epoch", "data": <epoch>, ...}]`. Nothing when the backend has none.
    async fn write_epoch(&self, deadline: Instant) -> std::result::Result<(), CloseReason> {
        let Ok(Some(epoch)) = self.backend.load_epoch().await else {
            return Ok(());
        };
        let entry = serde_json::json!([{
            "global_id": -1,
            "message_id": -1,
            "channel": EPOCH_CHANNEL,
            "data": &*epoch,
        }]);
        let frame = ws::text_frame(&entry.to_string());
        writer::write_by(&self.stream, None, &frame, deadline).await
    }

    async fn wait(&mut self) -> End {
        let mut keepalive_at = Instant::now() + self.keepalive;
        loop {
            if let Some(end) = Box::pin(self.drain()).await {
                return end;
            }
            let woke = {
                let outbox = &self.parked.outbox;
                let stream = &self.stream;
                let readable = poll_fn(|cx| {
                    if outbox.poll_news(cx) {
                        return Poll::Ready(Woke::Outbox);
                    }
                    stream.poll_read_ready(cx).map(|ready| match ready {
                        Ok(()) => Woke::Readable,
                        Err(_) => Woke::Gone,
                    })
                });
                tokio::select! {
                    woke = readable => woke,
                    _ = sleep_until(keepalive_at) => Woke::Keepalive,
                }
            };
            match woke {
                Woke::Outbox => {}
                Woke::Gone => return End::Drop(CloseReason::PeerClosed),
                Woke::Readable => {
                    if let Some(end) = Box::pin(self.on_readable()).await {
                        return end;
                    }
                }
                Woke::Keepalive => {
                    if let Some(end) = self.keep_alive() {
                        return end;
                    }
                    keepalive_at = Instant::now() + self.keepalive;
                }
            }
        }
    }

    /// A ping (closing a peer that did not answer the last one), or an SSE
    /// comment.
    fn keep_alive(&mut self) -> Option<End> {
        match self.transport {
            Transport::WebSocket => {
                if self.awaiting_pong {
                    return Some(End::Close(
                        CloseReason::PingTimeout,
                        ws::POLICY,
                        Cow::Borrowed("no pong: the peer stopped answering pings"),
                    ));
                }
                self.awaiting_pong = true;
                self.parked.outbox.push_owned(ws::ping_frame());
            }
            Transport::Sse => {
                self.parked.outbox.push_owned(sse::KEEPALIVE.to_vec());
            }
        }
        None
    }

    /// Reads what the socket has (not async: the scratch buffer never
    /// lives in the task). WebSocket input goes to the decoder; an event
    /// stream's client has nothing to say, its bytes are dropped.
    fn read_input(&mut self) -> Input {
        let mut scratch = [0u8; 4096];
        loop {
            let room = match self.transport {
                Transport::WebSocket => self.decoder.room().min(scratch.len()),
                Transport::Sse => scratch.len(),
            };
            if room == 0 {
                return Input::Drained;
            }
            match self.stream.try_read(&mut scratch[..room]) {
                Ok(0) => return Input::Ended,
                Ok(n) => match self.transport {
                    Transport::WebSocket => self.decoder.feed(&scratch[..n]),
                    Transport::Sse => {
                        self.discarded += n;
                        if self.discarded > INPUT_BOUND {
                            return Input::TooMuch;
                        }
                    }
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Input::Drained,
                Err(_) => return Input::Ended,
            }
        }
    }

    async fn on_readable(&mut self) -> Option<End> {
        let input = self.read_input();
        loop {
            match self.decoder.next_event() {
                Ok(None) => break,
                Ok(Some(event)) => {
                    if let Some(end) = self.on_event(event).await {
                        return Some(end);
                    }
                }
                Err(violation) => {
                    return Some(End::Close(
                        CloseReason::ProtocolError,
                        violation.code,
                        violation.reason,
                    ))
                }
            }
        }
        match input {
            Input::Drained => None,
            Input::Ended => Some(End::Drop(CloseReason::PeerClosed)),
            Input::TooMuch => Some(End::Drop(CloseReason::UnexpectedInput)),
        }
    }

    async fn on_event(&mut self, event: Event) -> Option<End> {
        // Any frame shows the peer is alive.
        self.awaiting_pong = false;
        match event {
            Event::Pong => None,
            Event::Ping(data) => {
                self.parked.outbox.push_owned(ws::pong_frame(&data));
                None
            }
            Event::Close(code) => Some(End::Close(
                CloseReason::ClientClosed,
                code.unwrap_or(ws::NORMAL),
                Cow::Borrowed(""),
            )),
            // Boxed: what a subscription change takes (a backlog read) is
            // not kept by every idle connection's task.
            Event::Text(text) => match ws_command::parse(&text) {
                Ok(command) => Box::pin(self.resubscribe(command.subscribe, command.unsubscribe))
                    .await
                    .err(),
                Err(reason) => Some(End::policy(reason)),
            },
        }
    }

    /// Applies a subscription change: the connection is registered anew
    /// with the new channels in place of the old registration, then the
    /// backlog of every channel is read from where the client is up to and
    /// written; live messages meanwhile wait in the new outbox.
    async fn resubscribe(
        &mut self,
        added: Vec<Requested>,
        removed: Vec<String>,
    ) -> std::result::Result<(), End> {
        // Applied in the order subscribe, unsubscribe: a channel in both ends unsubscribed.
        let added: Vec<Requested> = added
            .into_iter()
            .filter(|(channel, _)| !removed.contains(channel))
            .collect();
        let old = Arc::clone(&self.parked);
        let kept: Vec<&String> = old
            .channels
            .iter()
            .filter(|c| !removed.contains(c) && !added.iter().any(|(a, _)| a == *c))
            .collect();
        // Exactly as long as needed: every registration keeps it while idle.
        let mut channels: Vec<String> = Vec::with_capacity(kept.len() + added.len());
        channels.extend(kept.iter().map(|c| (*c).clone()));
        for (channel, _) in &added {
            if channel.contains(SITE_TOKEN) {
                return Err(End::policy(format!(
                    "channel names must not contain {SITE_TOKEN}"
                )));
            }
            channels.push(channel.clone());
        }
        if channels.len() > self.max_channels {
            return Err(End::policy(format!(
                "too many channels (at most {})",
                self.max_channels
            )));
        }
        let new = registration(&self.fanout, old.identity.clone(), channels);
        if !self.fanout.swap(&old, Arc::clone(&new)) {
            let reason = old.outbox.end_reason().unwrap_or(CloseReason::Stopped);
            return Err(End::from_reason(reason));
        }
        self.parked = Arc::clone(&new);
        // No more direct writes to the old registration; what it queued but
        // did not write is read again from the backlog.
        let rest = old.outbox.finish();
        let covered = old.outbox.positions();
        let deadline = Instant::now() + limits().write_timeout;
        // A write cut in the middle of a frame leaves no room for a close frame.
        if let Some((rest, _)) = rest {
            writer::write_by(&self.stream, None, rest.as_ref(), deadline)
                .await
                .map_err(End::Drop)?;
        }
        let mut requested: Vec<Requested> = kept
            .iter()
            .map(|c| {
                let index = old.channels.iter().position(|o| o == *c);
                let position = index.and_then(|i| covered.get(i).copied().flatten());
                ((*c).clone(), position)
            })
            .collect();
        requested.extend(added);
        let backlog = client::compute(
            self.backend.as_ref(),
            self.fanout.gate(),
            &new.identity,
            &requested,
        )
        .await
        .map_err(|_| End::from_reason(CloseReason::Error))?;
        if !backlog.is_empty() {
            let bytes = self.backlog_frame(&new.channels, &backlog);
            writer::write_by(&self.stream, None, &bytes, deadline)
                .await
                .map_err(End::Drop)?;
        }
        new.outbox.open(
            Arc::clone(&self.stream),
            self.framing(),
            no_head_prefix(),
            &new.channels,
            backlog.positions,
        );
        Ok(())
    }

    /// The frame (or event) carrying a backlog answer: the place where
    /// entries written ahead of the backlog (such as a storage epoch) go.
    fn backlog_frame(&self, channels: &[String], backlog: &ClientBacklog) -> Vec<u8> {
        let body = payload(&backlog.messages, &backlog.status);
        match self.transport {
            Transport::WebSocket => ws::text_frame(&body),
            Transport::Sse => {
                let positions: Vec<i64> = channels
                    .iter()
                    .map(|c| {
                        backlog
                            .positions
                            .iter()
                            .find(|(name, _)| name == c)
                            .map_or(i64::MIN, |(_, id)| *id)
                    })
                    .collect();
                sse::event(&sse::positions_id(channels, &positions), &body)
            }
        }
    }

    /// Writes what the fan-out queued; `Some` once the connection must end.
    async fn drain(&mut self) -> Option<End> {
        loop {
            match self.parked.outbox.next(&self.parked.channels) {
                Next::Idle => return None,
                Next::Close(reason) | Next::Kill(reason) => return Some(End::from_reason(reason)),
                // Only a one-shot answer is ever done.
                Next::Done => return Some(End::Drop(CloseReason::Delivered)),
                Next::Write(out, _) => {
                    let deadline = Instant::now() + limits().write_timeout;
                    let bytes = out.as_ref();
                    let written = writer::write_tracked(
                        &self.stream,
                        Some(&self.parked.outbox),
                        bytes,
                        deadline,
                    )
                    .await;
                    if let Err((reason, left)) = written {
                        // The close frame must not land inside a frame: this
                        // may be the end of one a direct write cut, so all
                        // that is left goes first.
                        if left > 0 {
                            self.unfinished = Some(bytes[bytes.len() - left..].to_vec());
                        }
                        return Some(End::from_reason(reason));
                    }
                }
            }
        }
    }

    /// Writes the close frame (after the unwritten end of a direct write),
    /// waits a little for the client's, unregisters and counts the close.
    async fn end(mut self, end: End) {
        let rest = self.parked.outbox.finish();
        self.fanout
            .release(&self.parked.identity.client_id, self.parked.conn_id);
        // Counted now: the close output may wait on a slow reader.
        let counters = Arc::clone(self.fanout.counters_arc());
        match &end {
            End::Drop(reason) | End::Close(reason, ..) => {
                counters.connection_closed(self.transport.counted(), *reason)
            }
        }
        if let End::Close(_, code, text) = end {
            let deadline = Instant::now() + CLOSE_WRITE_TIMEOUT;
            let mut ok = true;
            if let Some(unfinished) = self.unfinished.take() {
                ok = writer::write_by(&self.stream, None, &unfinished, deadline)
                    .await
                    .is_ok();
            }
            if ok {
                if let Some((rest, _)) = rest {
                    ok = writer::write_by(&self.stream, None, rest.as_ref(), deadline)
                        .await
                        .is_ok();
                }
            }
            if ok && self.transport == Transport::WebSocket {
                let frame = ws::close_frame(code, &text);
                ok = writer::write_by(&self.stream, None, &frame, deadline)
                    .await
                    .is_ok();
            }
            if ok {
                self.linger().await;
            }
        }
        counters.connection_ended();
    }

    /// Half-closes, then reads (and drops) what the client still sends, up
    /// to its FIN or `LINGER`: closing with unread input would reset the
    /// connection, and the client could lose the close frame.
    async fn linger(&self) {
        // SAFETY: a shutdown of the descriptor this connection owns.
        unsafe { libc::shutdown(self.stream.as_raw_fd(), libc::SHUT_WR) };
        let deadline = Instant::now() + LINGER;
        let mut scratch = vec![0u8; 4096];
        loop {
            tokio::select! {
                ready = self.stream.readable() => {
                    if ready.is_err() {
                        return;
                    }
                }
                _ = sleep_until(deadline) => return,
            }
            match self.stream.try_read(&mut scratch) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every idle connection's task keeps: its state and the waiting
    /// future (everything else is boxed while it runs).
    #[test]
    fn an_idle_connection_keeps_a_small_task() {
        fn size<F: std::future::Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let fd = OwnedFd::from(client);
        let fanout = Fanout::new(crate::gate::Gate::new()).unwrap();
        let conn = StreamConn {
            stream: Arc::new(ClientSocket::take_over(fd).unwrap()),
            transport: Transport::WebSocket,
            parked: registration(&fanout, Identity::default(), Vec::new()),
            fanout: Arc::clone(&fanout),
            backend: Arc::new(crate::backend::memory::MemoryBackend::default()),
            decoder: Decoder::default(),
            keepalive: Duration::from_secs(25),
            max_channels: 1000,
            awaiting_pong: false,
            discarded: 0,
            unfinished: None,
        };
        let task = conn.run(Vec::new(), Vec::new());
        let bytes = size(&task);
        eprintln!("stream task future: {bytes} bytes");
        // 392 bytes (was 672): with tokio's task header and trailer the
        // task is one 512-byte allocation (was 896).
        assert!(bytes <= 400, "the task future is {bytes} bytes");
    }
}
