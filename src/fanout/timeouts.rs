//! The end of every parked connection's long-polling interval, kept by one
//! task for all connections instead of a timer in each (an idle connection
//! then costs a heap entry rather than a timer and its future state).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};

use super::Parked;

struct Entry {
    at: Instant,
    conn_id: u64,
    parked: Weak<Parked>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed: the earliest deadline is the heap's top.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.conn_id).cmp(&(self.at, self.conn_id))
    }
}

pub struct Timeouts {
    heap: Mutex<BinaryHeap<Entry>>,
    /// Wakes the task: an earlier deadline was added, or stop.
    changed: Notify,
    stopped: AtomicBool,
}

impl Timeouts {
    /// Must be called within the runtime.
    pub fn start() -> Arc<Self> {
        let timeouts = Arc::new(Timeouts {
            heap: Mutex::default(),
            changed: Notify::new(),
            stopped: AtomicBool::new(false),
        });
        tokio::spawn(Arc::clone(&timeouts).run());
        timeouts
    }

    pub fn add(&self, at: Instant, parked: &Arc<Parked>) {
        let mut heap = self.heap.lock();
        let earliest = heap.peek().is_none_or(|top| at < top.at);
        heap.push(Entry {
            at,
            conn_id: parked.conn_id,
            parked: Arc::downgrade(parked),
        });
        drop(heap);
        if earliest {
            self.changed.notify_one();
        }
    }

    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.changed.notify_one();
    }

    async fn run(self: Arc<Self>) {
        while !self.stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let next = self.expire(Instant::now());
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = sleep_until(at) => {}
                        _ = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }

    /// Asks every connection whose interval ended by `now` to close; returns
    /// the next deadline.
    fn expire(&self, now: Instant) -> Option<Instant> {
        loop {
            let mut heap = self.heap.lock();
            match heap.peek() {
                Some(top) if top.at <= now => {
                    let entry = heap.pop();
                    drop(heap);
                    // Gone already if the connection ended earlier.
                    if let Some(parked) = entry.and_then(|e| e.parked.upgrade()) {
                        parked.outbox.request_close();
                    }
                }
                Some(top) => return Some(top.at),
                None => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Identity;
    use crate::fanout::{Next, Outbox};
    use std::time::Duration;

    fn parked(conn_id: u64) -> Arc<Parked> {
        Arc::new(Parked {
            conn_id,
            seq: 0,
            identity: Identity {
                client_id: format!("c{conn_id}"),
                user_id: serde_json::Value::Null,
                group_ids: vec![],
                site_id: None,
            },
            channels: vec![],
            outbox: Outbox::default(),
        })
    }

    #[test]
    fn connections_close_in_deadline_order_and_ended_ones_are_skipped() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let timeouts = Timeouts::start();
            let now = Instant::now();
            let (a, b, c) = (parked(1), parked(2), parked(3));
            timeouts.add(now + Duration::from_secs(20), &b);
            timeouts.add(now + Duration::from_secs(10), &a);
            timeouts.add(now + Duration::from_secs(15), &c);
            drop(c);
            tokio::time::sleep(Duration::from_secs(11)).await;
            assert!(matches!(a.outbox.next(&[]), Next::Close));
            assert!(matches!(b.outbox.next(&[]), Next::Idle));
            tokio::time::sleep(Duration::from_secs(10)).await;
            assert!(matches!(b.outbox.next(&[]), Next::Close));
            assert!(timeouts.heap.lock().is_empty());
            timeouts.stop();
        });
    }
}
