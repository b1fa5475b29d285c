//! Parked web clients indexed by channel, fed by the hub: each live message
//! is decoded and encoded once, then handed to every permitted client's
//! bounded queue (COMPAT.md §3.10).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};

use crate::bus::{decode_channel, Sink, GLOBAL_PREFIX};
use crate::envelope::{Envelope, Identity};
use crate::gate::Gate;
use crate::http::frame;
use crate::http::json::{payload, OutMessage};
use crate::message::Message;

/// Live messages a connection may have waiting before it counts as a slow
/// reader and is closed (the client reconnects with its last ids).
pub const QUEUE_BOUND: usize = 256;

/// A live message, encoded once for all clients.
pub struct Live {
    pub message: OutMessage,
    /// `[message]` as JSON.
    pub body: String,
    /// `body` framed as one chunk.
    pub chunk: Vec<u8>,
}

pub enum Event {
    Live(Arc<Live>),
    /// Replaced by a newer request of the same client.
    Close,
}

/// What the registry keeps of one parked connection.
pub struct Parked {
    pub conn_id: u64,
    pub seq: i64,
    pub identity: Identity,
    pub channels: Vec<String>,
    pub events: mpsc::Sender<Event>,
    /// Closes the connection at once, without the close output (slow reader).
    pub kill: Arc<Notify>,
}

#[derive(Default)]
struct Registry {
    /// By client id; a connection still being answered is kept under
    /// `pending_key` (client ids never contain NUL) until it is parked.
    clients: HashMap<String, Arc<Parked>>,
    pending: usize,
    /// Decoded channel → client ids subscribed to it.
    index: HashMap<String, HashSet<String>>,
}

impl Registry {
    fn remove(&mut self, client_id: &str) -> Option<Arc<Parked>> {
        let parked = self.clients.remove(client_id)?;
        for channel in &parked.channels {
            if let Some(ids) = self.index.get_mut(channel) {
                ids.remove(client_id);
                if ids.is_empty() {
                    self.index.remove(channel);
                }
            }
        }
        Some(parked)
    }
}

fn pending_key(conn_id: u64) -> String {
    format!("\0{conn_id}")
}

pub struct Fanout {
    registry: Mutex<Registry>,
    gate: Arc<Gate>,
    /// Messages Ruby must judge, processed in order by `judge_in_order`.
    judged: mpsc::UnboundedSender<Arc<Message>>,
    next_conn_id: AtomicU64,
    delivered: AtomicU64,
    slow_closed: AtomicU64,
    unreadable: AtomicU64,
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
    pub fn new(gate: Arc<Gate>) -> Arc<Self> {
        let (judged, queue) = mpsc::unbounded_channel();
        let fanout = Arc::new(Fanout {
            registry: Mutex::default(),
            gate,
            judged,
            next_conn_id: AtomicU64::default(),
            delivered: AtomicU64::default(),
            slow_closed: AtomicU64::default(),
            unreadable: AtomicU64::default(),
        });
        tokio::spawn(Self::judge_in_order(Arc::downgrade(&fanout), queue));
        fanout
    }

    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
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
                fanout.push(&message, channel, site, &envelope);
            }
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a connection, replacing (and closing) an older request of
    /// the same client id (§3.10).
    pub fn admit(&self, client_id: &str, parked: Arc<Parked>) -> Admission {
        let mut reg = self.registry.lock();
        if let Some(existing) = reg.clients.get(client_id) {
            if existing.seq > parked.seq {
                return Admission::Stale;
            }
            if let Some(old) = reg.remove(client_id) {
                if old.events.try_send(Event::Close).is_err() {
                    old.kill.notify_one();
                }
            }
        }
        for channel in &parked.channels {
            reg.index
                .entry(channel.clone())
                .or_default()
                .insert(client_id.to_string());
        }
        reg.clients.insert(client_id.to_string(), parked);
        Admission::Parked
    }

    /// Removes a connection, only if it is still the registered one (§9 Q36).
    pub fn release(&self, client_id: &str, conn_id: u64) {
        let mut reg = self.registry.lock();
        if reg
            .clients
            .get(client_id)
            .is_some_and(|p| p.conn_id == conn_id)
        {
            reg.remove(client_id);
        }
    }

    pub fn parked(&self) -> usize {
        let reg = self.registry.lock();
        reg.clients.len() - reg.pending
    }

    /// Starts feeding a connection whose backlog is about to be read, before
    /// it is known whether it will be parked: no message falls in between.
    pub fn admit_pending(&self, parked: Arc<Parked>) {
        let key = pending_key(parked.conn_id);
        let mut reg = self.registry.lock();
        for channel in &parked.channels {
            reg.index
                .entry(channel.clone())
                .or_default()
                .insert(key.clone());
        }
        reg.clients.insert(key, parked);
        reg.pending += 1;
    }

    /// Takes a pending connection out; true if it was still registered (not
    /// closed as too slow, nor by `close_all`).
    pub fn release_pending(&self, conn_id: u64) -> bool {
        let mut reg = self.registry.lock();
        let found = reg.remove(&pending_key(conn_id)).is_some();
        if found {
            reg.pending -= 1;
        }
        found
    }

    /// Closes every parked connection (middleware stopped, bus destroyed).
    pub fn close_all(&self) {
        let mut reg = self.registry.lock();
        reg.pending = 0;
        for (_, parked) in reg.clients.drain() {
            if parked.events.try_send(Event::Close).is_err() {
                parked.kill.notify_one();
            }
        }
        reg.index.clear();
    }

    pub fn stats(&self) -> FanoutStats {
        FanoutStats {
            parked: self.parked(),
            delivered: self.delivered.load(Ordering::Relaxed),
            slow_closed: self.slow_closed.load(Ordering::Relaxed),
            unreadable: self.unreadable.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanoutStats {
    pub parked: usize,
    pub delivered: u64,
    pub slow_closed: u64,
    pub unreadable: u64,
}

impl Sink for Fanout {
    fn deliver(&self, message: &Arc<Message>) {
        let (channel, site) = decode_channel(&message.channel);
        if !self.registry.lock().index.contains_key(channel) {
            return;
        }
        if self.gate.judges(channel) {
            let _ = self.judged.send(Arc::clone(message));
            return;
        }
        match Envelope::parse(&message.data) {
            Ok(envelope) => self.push(message, channel, site, &envelope),
            Err(e) => {
                crate::log::warn(format!(
                    "not pushing message {} on {}: {e}",
                    message.global_id, message.channel
                ));
                self.unreadable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Fanout {
    /// Hands a live message to every parked client of its channel that may see it.
    fn push(&self, message: &Message, channel: &str, site: Option<&str>, envelope: &Envelope) {
        let global = channel.starts_with(GLOBAL_PREFIX);
        let mut reg = self.registry.lock();
        let Some(ids) = reg.index.get(channel) else {
            return;
        };
        let mut live: Option<Arc<Live>> = None;
        let mut slow = Vec::new();
        for client_id in ids {
            let Some(parked) = reg.clients.get(client_id) else {
                continue;
            };
            // /global/ messages reach clients of every site (§9 Q35).
            if !global && parked.identity.site_id.as_deref() != site {
                continue;
            }
            if !envelope.allows(&parked.identity) {
                continue;
            }
            let live = live
                .get_or_insert_with(|| {
                    let message = OutMessage::from_stored(message, channel, envelope.data.get());
                    let body = payload(std::slice::from_ref(&message), &[]);
                    let chunk = frame::chunk(&body);
                    Arc::new(Live {
                        message,
                        body,
                        chunk,
                    })
                })
                .clone();
            match parked.events.try_send(Event::Live(live)) {
                Ok(()) => {
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Full(_)) => slow.push((client_id.clone(), true)),
                Err(mpsc::error::TrySendError::Closed(_)) => slow.push((client_id.clone(), false)),
            }
        }
        for (client_id, too_slow) in slow {
            if let Some(parked) = reg.remove(&client_id) {
                if client_id.starts_with('\0') {
                    reg.pending -= 1;
                }
                if too_slow {
                    // The client reconnects with its last ids; the backlog has the rest.
                    self.slow_closed.fetch_add(1, Ordering::Relaxed);
                }
                parked.kill.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parked(fanout: &Fanout, client: &str) -> (Arc<Parked>, mpsc::Receiver<Event>) {
        let (events, rx) = mpsc::channel(QUEUE_BOUND);
        let parked = Arc::new(Parked {
            conn_id: fanout.next_conn_id(),
            seq: 0,
            identity: Identity {
                client_id: client.into(),
                user_id: Value::Null,
                group_ids: vec![],
                site_id: None,
            },
            channels: vec!["/c".into()],
            events,
            kill: Arc::new(Notify::new()),
        });
        (parked, rx)
    }

    fn message(id: i64) -> Message {
        Message {
            global_id: id,
            message_id: id,
            channel: "/c".into(),
            data: r#"{"data":1,"user_ids":null,"group_ids":null,"client_ids":null}"#.into(),
        }
    }

    #[test]
    fn pending_polls_get_live_messages_but_do_not_count_as_parked() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let fanout = Fanout::new(Gate::new());
        let (pending, mut rx) = parked(&fanout, "a");
        fanout.admit_pending(Arc::clone(&pending));
        assert_eq!(fanout.parked(), 0);
        let m = message(1);
        let envelope = Envelope::parse(&m.data).unwrap();
        fanout.push(&m, "/c", None, &envelope);
        assert!(matches!(rx.try_recv(), Ok(Event::Live(_))));
        assert!(fanout.release_pending(pending.conn_id));
        assert!(matches!(fanout.admit("a", pending), Admission::Parked));
        assert_eq!(fanout.parked(), 1);
        let (other, _rx) = parked(&fanout, "b");
        fanout.admit_pending(Arc::clone(&other));
        fanout.close_all();
        assert!(!fanout.release_pending(other.conn_id));
        assert_eq!(fanout.parked(), 0);
    }
}
