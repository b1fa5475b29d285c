//! What the two streaming transports, WebSocket and Server-Sent Events,
//! share: a connection that never ends by itself. Live messages reach it
//! through the fan-out like a chunked long poll's (written straight to the
//! socket by the fan-out threads while it is idle, the frame of each
//! message encoded once for every connection). The opening writes the
//! `101` (or the event stream's head); the keepalive (armed in the
//! registration, due by the fan-out's one sweep: no timer per connection,
//! and a subscription change carries it to the new registration);
//! subscription changes; the close output (the end of a cut frame, then, for a
//! WebSocket, the close frame, then a linger for the client's FIN).
//!
//! A subscription change registers the connection anew (in one step, in
//! place of the old registration) before reading the backlog of every
//! channel from where the client is up to, so that no message falls in
//! between and none is sent twice.

use std::borrow::Cow;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::event_stream::EventStream;
use super::websocket::WebSocket;
use super::{End, Link};
use crate::backend::Backend;
use crate::bus::SITE_TOKEN;
use crate::client::{self, ClientBacklog, Requested};
use crate::envelope::Identity;
use crate::error::Result;
use crate::fanout::{CloseReason, Fanout, Framing, Out};
use crate::http::json::payload;
use crate::http::limits::limits;
use crate::http::socket::ClientSocket;
use crate::http::sse;
use crate::http::writer::{self, Cut};
use crate::http::ws_codec as ws;

/// How long a close frame (and the unwritten end before it) may take.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a closed stream waits for the client's FIN (after a
/// WebSocket's close frame, the client's) before dropping the socket:
/// unread input would make it a reset.
const LINGER: Duration = Duration::from_secs(2);

/// The channel of the entry that opens a WebSocket's first frame.
const EPOCH_CHANNEL: &str = "/__epoch";

/// Which streaming transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    WebSocket,
    Sse,
}

/// Everything a streaming connection needs (from a `WebRequest`).
pub(crate) struct StreamSession {
    pub identity: Identity,
    pub kind: Kind,
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

/// Takes over `fd` (a connected stream socket whose request was checked),
/// replaces any connection of the client id and spawns the connection's
/// task on the current runtime. Must be called within the runtime.
pub(crate) fn open(
    fd: OwnedFd,
    session: StreamSession,
    fanout: Arc<Fanout>,
    backend: Arc<dyn Backend>,
) -> Result<()> {
    let socket = ClientSocket::take_over(fd)?;
    // Streaming connections take the place of any other of their client
    // id, and any later request of it takes theirs.
    let parked = super::registration(&fanout, session.identity, i64::MIN, Vec::new());
    fanout.admit_newest(Arc::clone(&parked));
    let kind = session.kind;
    let stream = Stream {
        framing: match kind {
            Kind::WebSocket => Framing::WebSocket,
            Kind::Sse => Framing::Sse,
        },
        backend,
        keepalive: session.keepalive,
        max_channels: session.max_channels,
        opening: Some(Box::new((session.head, session.subscriptions))),
    };
    match kind {
        Kind::WebSocket => super::spawn(socket, parked, fanout, WebSocket::new(stream)),
        Kind::Sse => super::spawn(socket, parked, fanout, EventStream::new(stream)),
    }
    Ok(())
}

/// The state a streaming connection keeps, whatever its transport.
pub(crate) struct Stream {
    pub framing: Framing,
    backend: Arc<dyn Backend>,
    keepalive: Duration,
    max_channels: usize,
    /// The head and the first subscriptions, taken by the opening (boxed:
    /// idle connections keep only the pointer).
    opening: Option<Box<(Vec<u8>, Vec<Requested>)>>,
}

/// The head prefix of a streaming connection's outbox (only a one-shot
/// answer has one): one empty allocation shared by every connection.
fn no_head_prefix() -> Arc<[u8]> {
    static EMPTY: std::sync::OnceLock<Arc<[u8]>> = std::sync::OnceLock::new();
    Arc::clone(EMPTY.get_or_init(|| Arc::from(&b""[..])))
}

/// A close the client is told about with a policy violation (1008).
pub(crate) fn policy(reason: impl Into<Cow<'static, str>>) -> End {
    End::CloseWith(CloseReason::ProtocolError, ws::POLICY, reason.into())
}

/// The WebSocket close code and text of a connection closed for `reason`;
/// `None` when the peer is gone (nothing to write).
fn close_frame_of(reason: CloseReason) -> Option<(u16, &'static str)> {
    Some(match reason {
        CloseReason::PeerClosed => return None,
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
    })
}

impl Stream {
    /// Writes the head (and a WebSocket's epoch frame), opens the outbox
    /// and answers the subscriptions the connection starts with.
    pub async fn open(&mut self, link: &mut Link) -> std::result::Result<(), End> {
        let (head, subscriptions) = *self.opening.take().ok_or(End::Drop(CloseReason::Error))?;
        let deadline = Instant::now() + limits().write_timeout;
        writer::write_by(&link.socket, None, &head, deadline)
            .await
            .map_err(End::Drop)?;
        drop(head);
        if self.framing == Framing::WebSocket {
            self.write_epoch(link, deadline).await.map_err(End::Drop)?;
        }
        link.outbox().open(
            Arc::clone(&link.socket),
            self.framing,
            no_head_prefix(),
            &[],
            Vec::new(),
        );
        if !subscriptions.is_empty() {
            self.resubscribe(link, subscriptions, Vec::new()).await?;
        }
        self.rearm(link);
        Ok(())
    }

    /// A WebSocket's first frame names the storage epoch (issue 16), as
    /// the `X-MessageBus-Epoch` header does on HTTP: `[{"channel":
    /// "/__epoch", "data": <epoch>, ...}]`. Nothing when the backend has none.
    async fn write_epoch(
        &self,
        link: &Link,
        deadline: Instant,
    ) -> std::result::Result<(), CloseReason> {
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
        writer::write_by(&link.socket, None, &frame, deadline).await
    }

    /// The next keepalive is due an interval from now.
    pub fn rearm(&self, link: &Link) {
        link.fanout.arm_keepalive(&link.parked, self.keepalive);
    }

    /// Applies a subscription change: the connection is registered anew
    /// with the new channels in place of the old registration, then the
    /// backlog of every channel is read from where the client is up to and
    /// written; live messages meanwhile wait in the new outbox.
    pub async fn resubscribe(
        &mut self,
        link: &mut Link,
        added: Vec<Requested>,
        removed: Vec<String>,
    ) -> std::result::Result<(), End> {
        // Applied in the order subscribe, unsubscribe: a channel in both ends unsubscribed.
        let added: Vec<Requested> = added
            .into_iter()
            .filter(|(channel, _)| !removed.contains(channel))
            .collect();
        let old = Arc::clone(&link.parked);
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
                return Err(policy(format!(
                    "channel names must not contain {SITE_TOKEN}"
                )));
            }
            channels.push(channel.clone());
        }
        if channels.len() > self.max_channels {
            return Err(policy(format!(
                "too many channels (at most {})",
                self.max_channels
            )));
        }
        let new = super::registration(&link.fanout, old.identity.clone(), i64::MIN, channels);
        if !link.fanout.swap(&old, Arc::clone(&new)) {
            let reason = old.outbox.end_reason().unwrap_or(CloseReason::Stopped);
            return Err(End::Close(reason, None));
        }
        link.parked = Arc::clone(&new);
        // No more direct writes to the old registration; what it queued but
        // did not write is read again from the backlog.
        let rest = old.outbox.finish();
        let covered = old.outbox.positions();
        let deadline = Instant::now() + limits().write_timeout;
        // A write cut in the middle of a frame leaves no room for a close frame.
        if let Some((rest, _)) = rest {
            writer::write_by(&link.socket, None, rest.as_ref(), deadline)
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
            link.fanout.gate(),
            &new.identity,
            &requested,
        )
        .await
        .map_err(|_| End::Close(CloseReason::Error, None))?;
        if !backlog.is_empty() {
            let bytes = self.backlog_frame(&new.channels, &backlog);
            writer::write_by(&link.socket, None, &bytes, deadline)
                .await
                .map_err(End::Drop)?;
        }
        new.outbox.open(
            Arc::clone(&link.socket),
            self.framing,
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
        if self.framing == Framing::WebSocket {
            return ws::text_frame(&body);
        }
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

    /// A killed stream, or one whose write failed, still gets its close
    /// output (a slow reader learns why), unless the peer is gone.
    pub fn killed(reason: CloseReason, cut: Option<Cut>) -> End {
        match reason {
            CloseReason::PeerClosed => End::Drop(reason),
            _ => End::Close(reason, cut),
        }
    }

    /// The close output: what a cut write and a direct write left
    /// unwritten, the WebSocket close frame, then the linger.
    pub async fn close(&self, link: &Link, end: End, rest: Option<(Out, bool)>) {
        let (code, text, cut) = match end {
            End::Drop(_) => return,
            End::Close(reason, cut) => match close_frame_of(reason) {
                Some((code, text)) => (code, Cow::Borrowed(text), cut),
                None => return,
            },
            End::CloseWith(_, code, text) => (code, text, None),
        };
        let deadline = Instant::now() + CLOSE_WRITE_TIMEOUT;
        let socket = &link.socket;
        // The close frame must not land inside a frame: the cut frame's
        // end, then the direct write's, go first.
        if let Some(cut) = cut {
            if writer::write_by(socket, None, cut.unwritten(), deadline)
                .await
                .is_err()
            {
                return;
            }
        }
        if let Some((rest, _)) = rest {
            if writer::write_by(socket, None, rest.as_ref(), deadline)
                .await
                .is_err()
            {
                return;
            }
        }
        if self.framing == Framing::WebSocket {
            let frame = ws::close_frame(code, &text);
            if writer::write_by(socket, None, &frame, deadline)
                .await
                .is_err()
            {
                return;
            }
        }
        linger(socket).await;
    }
}

/// Half-closes, then reads (and drops) what the client still sends, up
/// to its FIN or `LINGER`: closing with unread input would reset the
/// connection, and the client could lose the close frame.
async fn linger(socket: &ClientSocket) {
    socket.shutdown_write();
    let deadline = Instant::now() + LINGER;
    let mut scratch = vec![0u8; 4096];
    loop {
        tokio::select! {
            ready = socket.readable() => {
                if ready.is_err() {
                    return;
                }
            }
            _ = sleep_until(deadline) => return,
        }
        match socket.try_read(&mut scratch) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(framing: Framing) -> Stream {
        Stream {
            framing,
            backend: Arc::new(crate::backend::memory::MemoryBackend::default()),
            keepalive: Duration::from_secs(25),
            max_channels: 1000,
            opening: Some(Box::new((Vec::new(), Vec::new()))),
        }
    }

    /// What every idle WebSocket's or event stream's task keeps: its state
    /// and the waiting future (everything else is boxed while it runs).
    #[test]
    fn an_idle_connection_keeps_a_small_task() {
        let websocket = super::super::task_size(|_| WebSocket::new(stream(Framing::WebSocket)));
        let sse = super::super::task_size(|_| EventStream::new(stream(Framing::Sse)));
        eprintln!("task future: WebSocket {websocket} bytes, SSE {sse} bytes");
        // WebSocket 248 bytes, SSE 200 (376 and 328 with a keepalive timer
        // of their own, a `Sleep`): with tokio's task header and trailer
        // the task is one 384-byte allocation (512 with the timer).
        for bytes in [websocket, sse] {
            assert!(bytes <= 264, "the task future is {bytes} bytes");
        }
    }
}
