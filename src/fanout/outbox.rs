//! The outgoing side of one parked connection, shared by its task and the
//! fan-out threads. While the connection is idle (head written, nothing
//! queued) a fan-out thread writes a live message straight to the socket
//! without waking the task; what cannot be written at once is queued, in
//! order, for the task to finish writing.
//!
//! A streaming connection's outbox also keeps when its keepalive (a
//! WebSocket ping, an SSE comment) is due, on the fan-out's keepalive clock:
//! the fan-out's one sweep (`keepalive`) tells the task when it is, as news.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Waker};

use crate::sync::Mutex;

use super::{CloseReason, Live, Shared, Transport};
use crate::http::socket::ClientSocket;
use crate::http::{frame, sse};

/// Live messages a connection may have waiting before it counts as a slow
/// reader and is closed (the client reconnects with its last ids).
pub const QUEUE_BOUND: usize = 256;
/// Bytes a connection may have waiting (beyond the first item) before it
/// counts as a slow reader: with big messages the count bound alone would
/// let each slow reader pin hundreds of them.
pub const QUEUE_BYTES_BOUND: usize = 1024 * 1024;

enum Item {
    Live(Arc<Live>),
    /// The unwritten end of a direct write.
    Rest {
        out: Out,
        ends_response: bool,
    },
}

/// Bytes the task must write.
pub enum Out {
    /// A live message's bytes shared by every connection of a framing,
    /// from this offset (the end of a direct write: shared, not copied).
    Shared(Arc<Live>, Shared, usize),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for Out {
    fn as_ref(&self) -> &[u8] {
        match self {
            Out::Shared(live, framing, from) => &live.shared(*framing)[*from..],
            Out::Owned(bytes) => bytes,
        }
    }
}

impl Out {
    /// What is left once the first `written` bytes went out.
    fn after(self, written: usize) -> Out {
        match self {
            Out::Shared(live, framing, from) => Out::Shared(live, framing, from + written),
            Out::Owned(mut bytes) => {
                bytes.drain(..written);
                Out::Owned(bytes)
            }
        }
    }
}

/// How a connection frames what it writes: the transport seam's bottom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// A long poll answered once (`content-length`), ending the response.
    #[default]
    Full,
    /// A streamed long poll: one HTTP chunk per payload.
    Chunked,
    /// One WebSocket text frame per payload.
    WebSocket,
    /// One Server-Sent Event per payload, its `id` the positions it covers
    /// (so encoded per connection).
    Sse,
}

impl From<Framing> for Transport {
    fn from(framing: Framing) -> Self {
        match framing {
            Framing::Full => Transport::LongPoll,
            Framing::Chunked => Transport::Streaming,
            Framing::WebSocket => Transport::WebSocket,
            Framing::Sse => Transport::Sse,
        }
    }
}

/// What the task does next.
pub enum Next {
    /// Write these bytes; `true`: they complete the response.
    Write(Out, bool),
    /// Nothing queued: the fan-out threads write directly from now on.
    Idle,
    /// A newer request of the client replaced this one, the bus stopped, or
    /// the long-polling interval is over: write the close output.
    Close(CloseReason),
    /// Too slow, or the peer is gone: drop the socket.
    Kill(CloseReason),
    /// The response was completed by a direct write.
    Done,
}

/// Outcome of handing a live message to a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Written,
    Queued,
    /// Already covered, or the connection is closing.
    Skipped,
    /// The queue is full: the connection is being closed.
    TooSlow,
    /// The connection has ended.
    Gone,
}

#[derive(Default)]
struct State {
    /// Set once the head is written; direct writes need it.
    stream: Option<Arc<ClientSocket>>,
    direct: bool,
    framing: Framing,
    head_prefix: Option<Arc<[u8]>>,
    /// Per subscribed channel (in the order of `Parked::channels`), the id
    /// the client is up to: live messages at or below it were already
    /// answered (§9 Q43). Empty until the backlog is answered.
    positions: Vec<i64>,
    queue: VecDeque<Item>,
    /// Bytes of `queue`.
    queued_bytes: usize,
    close_requested: Option<CloseReason>,
    killed: Option<CloseReason>,
    finished: bool,
    /// The keepalive is due (set by the sweep, taken by the task).
    keepalive: bool,
    /// The connection's task, waiting for any of the above to change.
    waker: Option<Waker>,
}

impl State {
    /// True if the message is new to the client (and records it).
    fn advance(&mut self, channels: &[String], live: &Live) -> bool {
        let (channel, id) = (&live.message.channel, live.message.message_id);
        let Some(n) = channels.iter().position(|c| c == channel) else {
            return true;
        };
        match self.positions.get_mut(n) {
            Some(position) if id <= *position => false,
            Some(position) => {
                *position = id;
                true
            }
            None => true,
        }
    }

    fn has_news(&self) -> bool {
        self.killed.is_some()
            || self.finished
            || self.close_requested.is_some()
            || !self.queue.is_empty()
    }

    /// The bytes a live message costs a connection, streamed or not (about
    /// the same: whether it streams is only known once it is open).
    fn size_of(live: &Live) -> usize {
        live.body.len() + 16
    }

    fn enqueue(&mut self, item: Item, bytes: usize) {
        self.queued_bytes += bytes;
        self.queue.push_back(item);
    }

    fn dequeue(&mut self) -> Option<Item> {
        let item = self.queue.pop_front()?;
        let bytes = match &item {
            Item::Live(live) => Self::size_of(live),
            Item::Rest { out, .. } => out.as_ref().len(),
        };
        self.queued_bytes = self.queued_bytes.saturating_sub(bytes);
        Some(item)
    }

    /// True when queuing `bytes` more makes a slow reader of the connection.
    fn over_bounds(&self, bytes: usize) -> bool {
        self.queue.len() >= QUEUE_BOUND
            || (!self.queue.is_empty() && self.queued_bytes + bytes > QUEUE_BYTES_BOUND)
    }

    /// What the connection writes for a live message (after `advance`).
    fn response(&self, channels: &[String], live: &Arc<Live>) -> Out {
        match self.framing {
            Framing::Chunked => Out::Shared(Arc::clone(live), Shared::Chunk, 0),
            Framing::WebSocket => Out::Shared(Arc::clone(live), Shared::WebSocket, 0),
            Framing::Sse => Out::Owned(sse::event(
                &sse::positions_id(channels, &self.positions),
                &live.body,
            )),
            Framing::Full => {
                let prefix = self.head_prefix.as_deref().unwrap_or_default();
                Out::Owned(frame::full_response(prefix, &live.body))
            }
        }
    }

    /// Writes `out` straight to the socket (the connection is idle); what
    /// the socket does not take is queued for the task.
    fn write_direct(
        mut s: crate::sync::MutexGuard<'_, State>,
        out: Out,
        ends_response: bool,
    ) -> Push {
        let bytes = out.as_ref();
        let Some(stream) = s.stream.as_ref() else {
            return Push::Gone;
        };
        let mut written = 0;
        while written < bytes.len() {
            match stream.try_write(&bytes[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    // The peer is gone; the task sees it too and ends.
                    s.killed = Some(CloseReason::PeerClosed);
                    wake(s);
                    return Push::Gone;
                }
            }
        }
        let left = bytes.len() - written;
        if left == 0 {
            if ends_response {
                s.finished = true;
                wake(s);
            }
            return Push::Written;
        }
        let rest = Item::Rest {
            out: out.after(written),
            ends_response,
        };
        s.enqueue(rest, left);
        s.direct = false;
        wake(s);
        Push::Queued
    }
}

/// What woke the task, by `poll_news`.
#[derive(Debug, PartialEq, Eq)]
pub enum News {
    /// Something to write, or the end: see `next`.
    Work,
    /// The keepalive is due (taken: reported once).
    Keepalive,
}

/// `Outbox::keepalive_at` of a connection with no keepalive (a long poll,
/// a stream not yet open).
const UNARMED: u32 = 0;
/// `Outbox::keepalive_at` of a keepalive the sweep reported as due, until
/// the task arms the next one.
const FIRED: u32 = 1;

#[derive(Default)]
pub struct Outbox {
    state: Mutex<State>,
    /// The `Transport` of `State::framing`, readable by the fan-out's
    /// counters without the lock.
    transport: AtomicU8,
    /// When the keepalive is due, in milliseconds on the fan-out's
    /// keepalive clock (wrapping; never `UNARMED` or `FIRED`), or one of
    /// those two. (Beside `transport`, in room the outbox has anyway.)
    keepalive_at: AtomicU32,
}

/// Wakes the task (outside the lock).
fn wake(mut s: crate::sync::MutexGuard<'_, State>) {
    let waker = s.waker.take();
    drop(s);
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl Outbox {
    /// Called by the task once the head (and any backlog) is written, with
    /// the positions that answer covered, per channel of `channels`.
    pub fn open(
        &self,
        stream: Arc<ClientSocket>,
        framing: Framing,
        head_prefix: Arc<[u8]>,
        channels: &[String],
        covered: Vec<(String, i64)>,
    ) {
        let mut s = self.state.lock();
        s.stream = Some(stream);
        s.framing = framing;
        let transport = Transport::from(framing);
        self.transport
            .store(transport.index() as u8, Ordering::Relaxed);
        s.head_prefix = Some(head_prefix);
        s.positions = channels
            .iter()
            .map(|c| {
                covered
                    .iter()
                    .find(|(name, _)| name == c)
                    .map_or(i64::MIN, |(_, id)| *id)
            })
            .collect();
    }

    /// What the task has to do, if anything; otherwise the task is woken
    /// when it has. A due keepalive is reported once, after any other news.
    pub fn poll_news(&self, cx: &mut Context<'_>) -> Option<News> {
        let mut s = self.state.lock();
        if s.has_news() {
            return Some(News::Work);
        }
        if s.keepalive {
            s.keepalive = false;
            return Some(News::Keepalive);
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        None
    }

    /// The next keepalive is due at `at` (on the fan-out's keepalive clock).
    pub fn arm_keepalive(&self, at: u32) {
        // The two marks are two milliseconds of 49 days: late by one or two.
        self.keepalive_at.store(at.max(FIRED + 1), Ordering::SeqCst);
    }

    /// For the sweep, at `now` (under the registry's lock): `Some(0)` when
    /// the keepalive is due (now marked as reported: the caller reports it
    /// with `keepalive_due`), `Some(ms)` when it is due in `ms`, `None`
    /// when none is armed.
    pub fn claim_keepalive(&self, now: u32) -> Option<u32> {
        let at = self.keepalive_at.load(Ordering::SeqCst);
        if at == UNARMED || at == FIRED {
            return None;
        }
        // Wrapping: armed keepalives are within a day of `now` (the sweep
        // looks at every one at least every second).
        let left = at.wrapping_sub(now) as i32;
        if left > 0 {
            return Some(left as u32);
        }
        // Lost to the task arming the next one: that is not due.
        match self
            .keepalive_at
            .compare_exchange(at, FIRED, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => Some(0),
            Err(_) => None,
        }
    }

    /// Tells the task its keepalive is due.
    pub fn keepalive_due(&self) {
        let mut s = self.state.lock();
        s.keepalive = true;
        wake(s);
    }

    /// Takes over the keepalive of `old`, the registration this one
    /// replaces (under the registry's lock, so that the sweep sees one or
    /// the other): when it is due, a keepalive the sweep reported to `old`
    /// (whose news its task no longer reads) is reported here.
    pub fn carry_keepalive(&self, old: &Outbox) {
        let at = old.keepalive_at.load(Ordering::SeqCst);
        self.keepalive_at.store(at, Ordering::SeqCst);
        if at == FIRED {
            self.state.lock().keepalive = true;
        }
    }

    /// The reason once killed; registers the task otherwise.
    pub fn poll_killed(&self, cx: &mut Context<'_>) -> Option<CloseReason> {
        let mut s = self.state.lock();
        if s.killed.is_none() {
            s.waker = Some(cx.waker().clone());
        }
        s.killed
    }

    /// Why the connection was asked to end, if it was.
    pub fn end_reason(&self) -> Option<CloseReason> {
        let s = self.state.lock();
        s.killed.or(s.close_requested)
    }

    /// Hands a live message over: written at once when the connection is
    /// idle and the socket takes it, queued otherwise. `channels` are the
    /// connection's subscriptions.
    pub fn push(&self, channels: &[String], live: &Arc<Live>) -> Push {
        let mut s = self.state.lock();
        if s.finished || s.killed.is_some() {
            return Push::Gone;
        }
        if s.close_requested.is_some() {
            return Push::Skipped;
        }
        if !s.direct {
            let bytes = State::size_of(live);
            if s.over_bounds(bytes) {
                s.killed = Some(CloseReason::SlowConsumer);
                wake(s);
                return Push::TooSlow;
            }
            s.enqueue(Item::Live(Arc::clone(live)), bytes);
            wake(s);
            return Push::Queued;
        }
        if !s.advance(channels, live) {
            return Push::Skipped;
        }
        let out = s.response(channels, live);
        let ends_response = s.framing == Framing::Full;
        State::write_direct(s, out, ends_response)
    }

    /// Hands over bytes of the connection's own (a WebSocket pong or ping,
    /// an SSE keepalive comment), in order with the live messages: written
    /// at once when idle, queued otherwise. A peer that lets them pile up
    /// past the bounds (a ping flood it does not read) is killed.
    pub fn push_owned(&self, bytes: Vec<u8>) -> Push {
        let mut s = self.state.lock();
        if s.finished || s.killed.is_some() {
            return Push::Gone;
        }
        if !s.direct {
            let len = bytes.len();
            if s.over_bounds(len) {
                s.killed = Some(CloseReason::SlowConsumer);
                wake(s);
                return Push::TooSlow;
            }
            let rest = Item::Rest {
                out: Out::Owned(bytes),
                ends_response: false,
            };
            s.enqueue(rest, len);
            wake(s);
            return Push::Queued;
        }
        State::write_direct(s, Out::Owned(bytes), false)
    }

    /// The task's next step (see `Next`).
    pub fn next(&self, channels: &[String]) -> Next {
        let mut s = self.state.lock();
        if let Some(reason) = s.killed {
            return Next::Kill(reason);
        }
        if s.finished {
            return Next::Done;
        }
        while let Some(item) = s.dequeue() {
            match item {
                Item::Rest { out, ends_response } => {
                    s.finished |= ends_response;
                    return Next::Write(out, ends_response);
                }
                Item::Live(live) => {
                    if !s.advance(channels, &live) {
                        continue;
                    }
                    let ends_response = s.framing == Framing::Full;
                    s.finished |= ends_response;
                    return Next::Write(s.response(channels, &live), ends_response);
                }
            }
        }
        if let Some(reason) = s.close_requested {
            return Next::Close(reason);
        }
        s.direct = s.stream.is_some();
        Next::Idle
    }

    /// Stops all writing but the task's own: returns the unwritten end of a
    /// direct write, which must go out before any close output.
    pub fn finish(&self) -> Option<(Out, bool)> {
        let mut s = self.state.lock();
        s.finished = true;
        s.direct = false;
        s.stream = None;
        match s.dequeue() {
            Some(Item::Rest { out, ends_response }) => Some((out, ends_response)),
            _ => None,
        }
    }

    /// The transport the counters file this connection's messages under
    /// (long poll until the answer is opened).
    pub fn transport(&self) -> Transport {
        Transport::from_index(usize::from(self.transport.load(Ordering::Relaxed)))
    }

    /// Whether the answer streams (known once the head is written).
    pub fn is_chunked(&self) -> bool {
        self.state.lock().framing != Framing::Full
    }

    /// Per subscribed channel, the id the client is up to (`None` until
    /// its backlog was answered).
    pub fn positions(&self) -> Vec<Option<i64>> {
        let s = self.state.lock();
        s.positions
            .iter()
            .map(|&p| (p != i64::MIN).then_some(p))
            .collect()
    }

    /// Asks the task to write the close output after what is queued (the
    /// first reason asked for is the one counted).
    pub fn request_close(&self, reason: CloseReason) {
        let mut s = self.state.lock();
        s.close_requested.get_or_insert(reason);
        wake(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::json::OutMessage;

    fn live(channel: &str, id: i64) -> Arc<Live> {
        live_with(channel, id, "1".into())
    }

    fn live_with(channel: &str, id: i64, data: String) -> Arc<Live> {
        Arc::new(Live::new(OutMessage {
            global_id: id,
            message_id: id,
            channel: channel.into(),
            data,
        }))
    }

    fn written(next: Next) -> Vec<u8> {
        match next {
            Next::Write(out, _) => out.as_ref().to_vec(),
            _ => panic!("expected a write"),
        }
    }

    /// The subscriptions of the connections below.
    fn ab() -> Vec<String> {
        vec!["/a".into(), "/b".into()]
    }

    #[test]
    fn queued_messages_are_deduplicated_against_the_answered_positions() {
        let outbox = Outbox::default();
        assert_eq!(outbox.push(&ab(), &live("/a", 3)), Push::Queued);
        assert_eq!(outbox.push(&ab(), &live("/a", 4)), Push::Queued);
        assert_eq!(outbox.push(&ab(), &live("/b", 1)), Push::Queued);
        // The backlog answer covered /a up to 3.
        outbox.state.lock().positions = vec![3, i64::MIN];
        outbox.state.lock().framing = Framing::Chunked;
        assert_eq!(written(outbox.next(&ab())), live("/a", 4).chunk());
        assert_eq!(written(outbox.next(&ab())), live("/b", 1).chunk());
        // No socket yet: stays queued mode.
        assert!(matches!(outbox.next(&ab()), Next::Idle));
        assert_eq!(outbox.push(&ab(), &live("/a", 4)), Push::Queued);
        assert!(matches!(outbox.next(&ab()), Next::Idle));
    }

    #[test]
    fn a_full_queue_kills_and_a_close_waits_for_the_queue() {
        let outbox = Outbox::default();
        for id in 0..QUEUE_BOUND as i64 {
            assert_eq!(outbox.push(&ab(), &live("/a", id + 1)), Push::Queued);
        }
        assert_eq!(outbox.push(&ab(), &live("/a", 999)), Push::TooSlow);
        assert!(matches!(
            outbox.next(&ab()),
            Next::Kill(CloseReason::SlowConsumer)
        ));
        assert_eq!(outbox.push(&ab(), &live("/a", 1000)), Push::Gone);

        let closing = Outbox::default();
        closing.state.lock().framing = Framing::Chunked;
        assert_eq!(closing.push(&ab(), &live("/a", 1)), Push::Queued);
        closing.request_close(CloseReason::Timeout);
        closing.request_close(CloseReason::Replaced);
        assert_eq!(closing.push(&ab(), &live("/a", 2)), Push::Skipped);
        assert!(matches!(closing.next(&ab()), Next::Write(_, false)));
        assert!(matches!(
            closing.next(&ab()),
            Next::Close(CloseReason::Timeout)
        ));
        assert!(closing.finish().is_none());
        assert_eq!(closing.push(&ab(), &live("/a", 3)), Push::Gone);
    }

    fn big_live(id: i64, bytes: usize) -> Arc<Live> {
        live_with("/a", id, format!("\"{}\"", "x".repeat(bytes)))
    }

    #[test]
    fn big_messages_make_a_slow_reader_by_their_bytes() {
        let outbox = Outbox::default();
        outbox.state.lock().framing = Framing::Chunked;
        // The first item is taken whatever its size.
        assert_eq!(
            outbox.push(&ab(), &big_live(1, 2 * QUEUE_BYTES_BOUND)),
            Push::Queued
        );
        assert!(matches!(outbox.next(&ab()), Next::Write(..)));
        let per = QUEUE_BYTES_BOUND / 4;
        for id in 2..=4 {
            assert_eq!(outbox.push(&ab(), &big_live(id, per)), Push::Queued);
        }
        assert_eq!(outbox.push(&ab(), &big_live(5, per)), Push::TooSlow);
        assert!(matches!(
            outbox.next(&ab()),
            Next::Kill(CloseReason::SlowConsumer)
        ));
    }

    #[test]
    fn the_rest_of_a_direct_write_shares_the_message() {
        let live = big_live(1, 100);
        let rest = Out::Shared(Arc::clone(&live), Shared::Chunk, 0)
            .after(10)
            .after(5);
        assert_eq!(rest.as_ref(), &live.chunk()[15..]);
        assert!(
            matches!(rest, Out::Shared(ref shared, Shared::Chunk, 15) if Arc::ptr_eq(shared, &live))
        );
        let owned = Out::Owned(b"abcdef".to_vec()).after(2);
        assert_eq!(owned.as_ref(), b"cdef");
    }

    #[test]
    fn a_non_streamed_answer_ends_with_its_first_message() {
        let outbox = Outbox::default();
        outbox.state.lock().head_prefix = Some(Arc::from(&b"HTTP/1.1 200 OK\r\n"[..]));
        assert_eq!(outbox.push(&ab(), &live("/a", 1)), Push::Queued);
        assert_eq!(outbox.push(&ab(), &live("/a", 2)), Push::Queued);
        let bytes = written(outbox.next(&ab()));
        assert!(bytes.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(bytes.ends_with(live("/a", 1).body.as_bytes()));
        assert!(matches!(outbox.next(&ab()), Next::Done));
    }
}
