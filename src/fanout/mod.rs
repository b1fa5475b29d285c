//! Parked web clients indexed by channel, fed by the hub: each live message
//! is decoded and encoded once, then written by fan-out threads, each owning
//! a shard of the clients, straight to every permitted client's socket
//! (COMPAT.md §3.10). A connection's task only wakes for what a socket did
//! not take at once, for its timeout (`timeouts`) or keepalive
//! (`keepalive`), both kept by one task for all connections, and for its
//! peer.

mod counters;
mod keepalive;
mod outbox;
mod timeouts;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as channel;
use std::sync::{Arc, OnceLock};

use crate::sync::Mutex;
use tokio::sync::mpsc;

use crate::bus::{decode_channel, decoded_site, Sink, GLOBAL_PREFIX};
use crate::envelope::{Envelope, Identity};
use crate::error::{Error, Result};
use crate::gate::Gate;
use crate::http::frame;
use crate::http::json::{payload, OutMessage};
use crate::message::Message;

use crate::metrics::{Histogram, HistogramValues};
pub use counters::{CloseReason, Transport, TransportStats, WebClientCounters, WebClientStats};
use keepalive::Keepalives;
pub use outbox::{Framing, News, Next, Out, Outbox, Push, QUEUE_BOUND, QUEUE_BYTES_BOUND};
use timeouts::Timeouts;

/// A live message, encoded once for all clients: its JSON once, and once
/// per shared framing in use (on first use), never once per connection.
pub struct Live {
    pub message: OutMessage,
    /// `[message]` as JSON.
    pub body: String,
    /// `body` framed as one HTTP chunk.
    chunk: OnceLock<Vec<u8>>,
    /// `body` as one unmasked WebSocket text frame.
    ws_frame: OnceLock<Vec<u8>>,
    /// When it reached this process's fan-out (with latency metrics on).
    pub arrived: Option<std::time::Instant>,
}

impl Live {
    pub fn new(message: OutMessage) -> Self {
        let body = payload(std::slice::from_ref(&message), &[]);
        Live {
            message,
            body,
            chunk: OnceLock::new(),
            ws_frame: OnceLock::new(),
            arrived: crate::metrics::latency_enabled().then(std::time::Instant::now),
        }
    }

    /// The message as one HTTP chunk of a streamed long poll.
    pub fn chunk(&self) -> &[u8] {
        self.chunk.get_or_init(|| frame::chunk(&self.body))
    }

    /// The message as one WebSocket text frame.
    pub fn ws_frame(&self) -> &[u8] {
        self.ws_frame
            .get_or_init(|| crate::http::ws_codec::text_frame(&self.body))
    }

    /// The bytes every connection of this framing writes for the message.
    pub fn shared(&self, framing: Shared) -> &[u8] {
        match framing {
            Shared::Chunk => self.chunk(),
            Shared::WebSocket => self.ws_frame(),
        }
    }
}

/// The framings whose bytes are the same for every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    Chunk,
    WebSocket,
}

/// What the registry keeps of one parked connection.
pub struct Parked {
    pub conn_id: u64,
    pub seq: i64,
    pub identity: Identity,
    pub channels: Vec<String>,
    pub outbox: Outbox,
    /// When the request arrived (Unix time, milliseconds).
    pub connected_ms: u64,
}

/// Now, as Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Default)]
struct Registry {
    /// By client id; a connection still being answered is kept under
    /// `pending_key` (client ids never contain NUL) until it is parked.
    clients: HashMap<String, Arc<Parked>>,
    pending: usize,
    /// Decoded channel → the connections subscribed to it, by connection id.
    index: HashMap<String, HashMap<u64, Arc<Parked>>>,
}

impl Registry {
    fn remove(&mut self, key: &str) -> Option<Arc<Parked>> {
        let parked = self.clients.remove(key)?;
        if key.starts_with('\0') {
            self.pending -= 1;
        }
        for channel in &parked.channels {
            if let Some(conns) = self.index.get_mut(channel) {
                conns.remove(&parked.conn_id);
                if conns.is_empty() {
                    self.index.remove(channel);
                }
            }
        }
        Some(parked)
    }

    /// Removes the entry under `key` only if it is this connection (§9 Q36).
    fn remove_conn(&mut self, key: &str, conn_id: u64) -> bool {
        if self.clients.get(key).is_some_and(|p| p.conn_id == conn_id) {
            self.remove(key);
            true
        } else {
            false
        }
    }

    /// Removes a connection wherever it is registered.
    fn remove_parked(&mut self, parked: &Parked) {
        if !self.remove_conn(&parked.identity.client_id, parked.conn_id) {
            self.remove_conn(&pending_key(parked.conn_id), parked.conn_id);
        }
    }

    fn insert(&mut self, key: String, parked: Arc<Parked>) {
        for channel in &parked.channels {
            let conn = (parked.conn_id, Arc::clone(&parked));
            // No key copy for a channel already watched.
            match self.index.get_mut(channel) {
                Some(conns) => {
                    conns.insert(conn.0, conn.1);
                }
                None => {
                    self.index.insert(channel.clone(), HashMap::from([conn]));
                }
            }
        }
        if key.starts_with('\0') {
            self.pending += 1;
        }
        self.clients.insert(key, parked);
    }
}

fn pending_key(conn_id: u64) -> String {
    format!("\0{conn_id}")
}

/// A message on its way to the fan-out threads.
struct Job {
    /// Its `message.channel` is the decoded channel.
    live: Arc<Live>,
    envelope: Arc<Envelope>,
    site: Option<String>,
}

/// The clients of one fan-out thread: those whose client id hashes to it.
struct Shard {
    registry: Mutex<Registry>,
    counters: Arc<WebClientCounters>,
    /// Arrival → socket write of the messages this shard wrote at once
    /// (one per shard: its thread is the only writer).
    delivery_latency: Histogram,
}

pub struct Fanout {
    shards: Vec<Arc<Shard>>,
    /// One queue per shard thread; dropping them ends the threads.
    queues: Vec<channel::Sender<Arc<Job>>>,
    gate: Arc<Gate>,
    /// Messages Ruby must judge, processed in order by `judge_in_order`.
    judged: mpsc::UnboundedSender<Arc<Message>>,
    next_conn_id: AtomicU64,
    counters: Arc<WebClientCounters>,
    timeouts: Arc<Timeouts>,
    keepalives: Arc<Keepalives>,
    /// The process whose threads serve this fan-out: in a forked child it
    /// is inert (its threads do not exist there, its locks may be held).
    pid: u32,
}

/// Outcome of parking a connection.
pub enum Admission {
    Parked,
    /// A newer request of this client is already parked: close at once.
    Stale,
}

impl Fanout {
    /// Must be called within the runtime: it spawns the task that delivers
    /// messages Ruby judges, in their order of arrival.
    pub fn new(gate: Arc<Gate>) -> Result<Arc<Self>> {
        let counters = Arc::new(WebClientCounters::default());
        let mut shards = Vec::new();
        let mut queues = Vec::new();
        // Fan-out threads: default 2 (the machine's cores are shared with Ruby).
        for n in 0..crate::runtime::env_count("MESSAGE_BUS_FANOUT_THREADS", 2) {
            let shard = Arc::new(Shard {
                registry: Mutex::default(),
                counters: Arc::clone(&counters),
                delivery_latency: Histogram::default(),
            });
            let (tx, rx) = channel::channel::<Arc<Job>>();
            let worker = Arc::clone(&shard);
            std::thread::Builder::new()
                .name(format!("mb-fanout-{n}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        worker.write(&job);
                    }
                })
                .map_err(|e| Error::Backend(format!("cannot start a fan-out thread: {e}")))?;
            shards.push(shard);
            queues.push(tx);
        }
        let (judged, queue) = mpsc::unbounded_channel();
        let timeouts = Timeouts::start();
        let keepalives = Keepalives::start(shards.clone());
        let fanout = Arc::new(Fanout {
            shards,
            queues,
            gate,
            judged,
            next_conn_id: AtomicU64::default(),
            counters,
            timeouts,
            keepalives,
            pid: std::process::id(),
        });
        tokio::spawn(Self::judge_in_order(Arc::downgrade(&fanout), queue));
        Ok(fanout)
    }

    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    pub fn counters(&self) -> &WebClientCounters {
        &self.counters
    }

    pub fn counters_arc(&self) -> &Arc<WebClientCounters> {
        &self.counters
    }

    async fn judge_in_order(
        fanout: std::sync::Weak<Fanout>,
        mut queue: mpsc::UnboundedReceiver<Arc<Message>>,
    ) {
        while let Some(message) = queue.recv().await {
            let Some(fanout) = fanout.upgrade() else {
                return;
            };
            let (channel, site) = decode_channel(&message.channel);
            if let Some(envelope) = fanout.gate.envelope(&message, channel).await {
                fanout.dispatch(&message, channel, site, envelope);
            }
        }
    }

    /// Closes `parked` at `at` (the end of its long-polling interval).
    pub fn close_at(&self, at: tokio::time::Instant, parked: &Arc<Parked>) {
        self.timeouts.add(at, parked);
    }

    /// Arms the keepalive of `parked` (a streaming connection) an
    /// `interval` (kept within 10 ms and 24 hours) from now: its task then gets
    /// `News::Keepalive`, and arms the next.
    pub fn arm_keepalive(&self, parked: &Parked, interval: std::time::Duration) {
        self.keepalives.arm(&parked.outbox, interval);
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn shard(&self, client_id: &str) -> &Shard {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        client_id.hash(&mut hasher);
        // Never empty: `new` makes at least one.
        &self.shards[(hasher.finish() as usize) % self.shards.len()]
    }

    /// Registers a connection, replacing (and closing) an older request of
    /// the same client id (§3.10).
    pub fn admit(&self, client_id: &str, parked: Arc<Parked>) -> Admission {
        let mut reg = self.shard(client_id).registry.lock();
        Self::admit_locked(&mut reg, client_id, parked)
    }

    fn admit_locked(reg: &mut Registry, client_id: &str, parked: Arc<Parked>) -> Admission {
        if let Some(existing) = reg.clients.get(client_id) {
            if existing.seq > parked.seq {
                return Admission::Stale;
            }
            if let Some(old) = reg.remove(client_id) {
                old.outbox.request_close(CloseReason::Replaced);
            }
        }
        reg.insert(client_id.to_string(), parked);
        Admission::Parked
    }

    /// Registers a streaming connection (WebSocket, SSE): it replaces any
    /// connection of its client id, whatever its seq (a browser's tabs share
    /// one client id: the newest connection wins).
    pub fn admit_newest(&self, parked: Arc<Parked>) {
        let client_id = parked.identity.client_id.clone();
        let mut reg = self.shard(&client_id).registry.lock();
        if let Some(old) = reg.remove(&client_id) {
            old.outbox.request_close(CloseReason::Replaced);
        }
        reg.insert(client_id, parked);
    }

    /// Puts `new` (other subscriptions of the same connection) in the place
    /// of `old`, in one step, with its keepalive; false if `old` is no
    /// longer registered (replaced, stopped, closed as too slow).
    pub fn swap(&self, old: &Parked, new: Arc<Parked>) -> bool {
        let client_id = &old.identity.client_id;
        let mut reg = self.shard(client_id).registry.lock();
        if !reg.remove_conn(client_id, old.conn_id) {
            return false;
        }
        new.outbox.carry_keepalive(&old.outbox);
        reg.insert(client_id.clone(), new);
        true
    }

    /// Removes a connection, only if it is still the registered one (§9 Q36).
    pub fn release(&self, client_id: &str, conn_id: u64) {
        self.shard(client_id)
            .registry
            .lock()
            .remove_conn(client_id, conn_id);
    }

    pub fn parked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let reg = s.registry.lock();
                reg.clients.len() - reg.pending
            })
            .sum()
    }

    /// Starts feeding a connection whose backlog is about to be read, before
    /// it is known whether it will be parked: no message falls in between.
    pub fn admit_pending(&self, parked: Arc<Parked>) {
        let key = pending_key(parked.conn_id);
        let mut reg = self.shard(&parked.identity.client_id).registry.lock();
        reg.insert(key, parked);
    }

    /// Takes a pending connection out; true if it was still registered (not
    /// closed as too slow, nor by `close_all`).
    pub fn release_pending(&self, parked: &Parked) -> bool {
        self.shard(&parked.identity.client_id)
            .registry
            .lock()
            .remove_conn(&pending_key(parked.conn_id), parked.conn_id)
    }

    /// Parks a pending connection under its client id, in one step: no live
    /// message can miss it in between. `None` if it was closed meanwhile.
    pub fn promote(&self, parked: Arc<Parked>) -> Option<Admission> {
        let client_id = parked.identity.client_id.clone();
        let mut reg = self.shard(&client_id).registry.lock();
        if !reg.remove_conn(&pending_key(parked.conn_id), parked.conn_id) {
            return None;
        }
        Some(Self::admit_locked(&mut reg, &client_id, parked))
    }

    fn inherited(&self) -> bool {
        std::process::id() != self.pid
    }

    /// Closes every parked connection (middleware stopped, bus destroyed).
    pub fn close_all(&self) {
        if self.inherited() {
            return;
        }
        for shard in &self.shards {
            let mut reg = shard.registry.lock();
            reg.pending = 0;
            for (_, parked) in reg.clients.drain() {
                parked.outbox.request_close(CloseReason::Stopped);
            }
            reg.index.clear();
        }
    }

    /// Waits until every connection's task has ended (their close output
    /// written), up to `timeout`; true if they all did.
    pub async fn wait_closed(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.counters.open_connections() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        true
    }

    pub fn stats(&self) -> WebClientStats {
        self.counters.snapshot(self.parked())
    }

    /// Adds this fan-out's arrival → socket-write latencies to `into`.
    pub fn add_delivery_latency(&self, into: &mut HistogramValues) {
        for shard in &self.shards {
            into.add(&shard.delivery_latency);
        }
    }

    fn watched(&self, channel: &str) -> bool {
        self.shards
            .iter()
            .any(|s| s.registry.lock().index.contains_key(channel))
    }

    /// The connection parked under `client_id`, if any.
    pub fn lookup(&self, client_id: &str) -> Option<Arc<Parked>> {
        self.shard(client_id)
            .registry
            .lock()
            .clients
            .get(client_id)
            .cloned()
    }

    /// Closes the connection `conn_id` of `client_id` (its close output is
    /// written); false if it is no longer parked.
    pub fn close_client(&self, client_id: &str, conn_id: u64) -> bool {
        let parked = {
            let mut reg = self.shard(client_id).registry.lock();
            match reg.clients.get(client_id) {
                Some(p) if p.conn_id == conn_id => reg.remove(client_id),
                _ => None,
            }
        };
        parked
            .map(|p| p.outbox.request_close(CloseReason::Stopped))
            .is_some()
    }

    /// Hands a message straight to one parked connection (its permission
    /// already checked); false if it was not written or queued.
    pub fn deliver_to(&self, parked: &Arc<Parked>, message: OutMessage) -> bool {
        let live = Arc::new(Live::new(message));
        match parked.outbox.push(&parked.channels, &live) {
            Push::Written | Push::Queued => {
                self.counters.message_delivered(parked.outbox.transport());
                true
            }
            Push::Skipped => false,
            // Too slow or gone: its task counts the close.
            Push::TooSlow | Push::Gone => {
                self.shard(&parked.identity.client_id)
                    .registry
                    .lock()
                    .remove_parked(parked);
                false
            }
        }
    }

    /// Hands a message to every parked connection that may see it, as if
    /// it came off the backend, with its (JSON) envelope already judged.
    pub fn notify(&self, message: &Message, envelope: Envelope) {
        if self.inherited() {
            return;
        }
        let (channel, site) = decode_channel(&message.channel);
        if self.watched(channel) {
            self.dispatch(message, channel, site, Arc::new(envelope));
        }
    }

    /// Encodes a message once and hands it to every fan-out thread.
    fn dispatch(
        &self,
        message: &Message,
        channel: &str,
        site: Option<&str>,
        envelope: Arc<Envelope>,
    ) {
        let out = OutMessage::from_stored(message, channel, envelope.data.get());
        let job = Arc::new(Job {
            live: Arc::new(Live::new(out)),
            envelope,
            site: site.map(str::to_string),
        });
        for queue in &self.queues {
            // A send only fails once the thread is gone (never while we exist).
            let _ = queue.send(Arc::clone(&job));
        }
    }
}

impl Drop for Fanout {
    fn drop(&mut self) {
        self.timeouts.stop();
        self.keepalives.stop();
    }
}

impl Sink for Fanout {
    fn is_inherited(&self) -> bool {
        self.inherited()
    }

    /// The storage was reset: the parked answers carry the old epoch, so
    /// they end now (their clients come back and see the new one).
    fn reset(&self) {
        self.close_all();
    }

    fn deliver(&self, message: &Arc<Message>) {
        if self.inherited() {
            return;
        }
        let (channel, site) = decode_channel(&message.channel);
        if !self.watched(channel) {
            return;
        }
        if self.gate.judges(channel) {
            let _ = self.judged.send(Arc::clone(message));
            return;
        }
        match Envelope::parse(&message.data) {
            Ok(envelope) => self.dispatch(message, channel, site, Arc::new(envelope)),
            Err(e) => {
                crate::log::warn(format!(
                    "not pushing message {} on {}: {e}",
                    message.global_id, message.channel
                ));
                self.counters.message_unreadable();
            }
        }
    }
}

impl Shard {
    /// Writes a live message to every client of this shard that may see it.
    fn write(&self, job: &Job) {
        // /global/ messages reach clients of every site (§9 Q35). A client
        // whose channels carry an empty site (`/c$|$`) gets the messages
        // stored there, which decode to no site.
        let channel = &job.live.message.channel;
        let global = channel.starts_with(GLOBAL_PREFIX);
        let targets: Vec<Arc<Parked>> = {
            let reg = self.registry.lock();
            let Some(conns) = reg.index.get(channel) else {
                return;
            };
            conns
                .values()
                .filter(|p| {
                    global || decoded_site(p.identity.site_id.as_deref()) == job.site.as_deref()
                })
                .filter(|p| job.envelope.allows(&p.identity))
                .cloned()
                .collect()
        };
        let mut ended = Vec::new();
        for parked in targets {
            match parked.outbox.push(&parked.channels, &job.live) {
                Push::Written => {
                    self.counters.message_delivered(parked.outbox.transport());
                    if let Some(arrived) = job.live.arrived {
                        self.delivery_latency.observe(arrived.elapsed());
                    }
                }
                Push::Queued => self.counters.message_delivered(parked.outbox.transport()),
                Push::Skipped => {}
                // The client reconnects with its last ids; the backlog has the
                // rest. (Its task counts the close.)
                Push::TooSlow | Push::Gone => ended.push(parked),
            }
        }
        if !ended.is_empty() {
            let mut reg = self.registry.lock();
            for parked in ended {
                reg.remove_parked(&parked);
            }
        }
    }
}

/// A runtime whose clock only moves when every task waits (for the
/// deadline and keepalive tests).
#[cfg(test)]
pub(crate) fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn parked(fanout: &Fanout, client: &str) -> Arc<Parked> {
        Arc::new(Parked {
            conn_id: fanout.next_conn_id(),
            seq: 0,
            identity: Identity {
                client_id: client.into(),
                ..Identity::default()
            },
            channels: vec!["/c".into()],
            outbox: Outbox::default(),
            connected_ms: unix_ms(),
        })
    }

    fn message(id: i64) -> Arc<Message> {
        Arc::new(Message {
            global_id: id,
            message_id: id,
            channel: "/c".into(),
            data: r#"{"data":1,"user_ids":null,"group_ids":null,"client_ids":null}"#.into(),
        })
    }

    /// Fan-outs spawn their deadline task on the runtime they are made in.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// Waits for the fan-out thread to queue a message for `parked`.
    fn next_write(parked: &Parked) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Next::Write(out, _) = parked.outbox.next(&parked.channels) {
                return Some(out.as_ref().to_vec());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }

    #[test]
    fn pending_polls_get_live_messages_but_do_not_count_as_parked() {
        let rt = runtime();
        let _guard = rt.enter();
        let fanout = Fanout::new(Gate::new()).unwrap();
        let pending = parked(&fanout, "a");
        fanout.admit_pending(Arc::clone(&pending));
        assert_eq!(fanout.parked(), 0);
        fanout.deliver(&message(1));
        let written = next_write(&pending).expect("the live message");
        assert!(String::from_utf8_lossy(&written).contains(r#""message_id":1"#));
        assert!(matches!(
            fanout.promote(Arc::clone(&pending)),
            Some(Admission::Parked)
        ));
        assert_eq!(fanout.parked(), 1);
        let other = parked(&fanout, "b");
        fanout.admit_pending(Arc::clone(&other));
        fanout.close_all();
        assert!(!fanout.release_pending(&other));
        assert!(fanout.promote(other).is_none());
        assert_eq!(fanout.parked(), 0);
        // Not streamed: its answer ended with the first message.
        assert!(matches!(pending.outbox.next(&pending.channels), Next::Done));
    }

    #[test]
    fn a_newer_request_replaces_the_parked_one_and_a_stale_one_is_refused() {
        let rt = runtime();
        let _guard = rt.enter();
        let fanout = Fanout::new(Gate::new()).unwrap();
        let first = parked(&fanout, "a");
        assert!(matches!(
            fanout.admit("a", Arc::clone(&first)),
            Admission::Parked
        ));
        let mut newer = Parked {
            seq: 2,
            ..Arc::try_unwrap(parked(&fanout, "a")).ok().unwrap()
        };
        newer.conn_id = fanout.next_conn_id();
        let newer = Arc::new(newer);
        assert!(matches!(
            fanout.admit("a", Arc::clone(&newer)),
            Admission::Parked
        ));
        assert!(matches!(
            first.outbox.next(&first.channels),
            Next::Close(CloseReason::Replaced)
        ));
        assert!(matches!(
            fanout.admit("a", parked(&fanout, "a")),
            Admission::Stale
        ));
        fanout.release("a", first.conn_id);
        assert_eq!(fanout.parked(), 1);
        fanout.release("a", newer.conn_id);
        assert_eq!(fanout.parked(), 0);
    }
}
