//! The end of every parked connection's long-polling interval, kept by one
//! task for all connections instead of a timer in each (an idle connection
//! then costs a heap entry rather than a timer and its future state).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};

use crate::sync::Mutex;
use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};

use super::{CloseReason, Parked};

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

/// Fewest entries at which ended connections are swept out of the heap.
const MIN_SWEEP: usize = 1024;

struct Heap {
    entries: BinaryHeap<Entry>,
    /// Size at which entries of ended connections are swept out: their
    /// `Weak` would keep each connection's allocation until its deadline
    /// (clients that reconnect after every message leave many).
    sweep_at: usize,
}

pub struct Timeouts {
    heap: Mutex<Heap>,
    /// Wakes the task: an earlier deadline was added, or stop.
    changed: Notify,
    stopped: AtomicBool,
}

impl Timeouts {
    /// Must be called within the runtime.
    pub fn start() -> Arc<Self> {
        let timeouts = Arc::new(Timeouts {
            heap: Mutex::new(Heap {
                entries: BinaryHeap::new(),
                sweep_at: MIN_SWEEP,
            }),
            changed: Notify::new(),
            stopped: AtomicBool::new(false),
        });
        tokio::spawn(Arc::clone(&timeouts).run());
        timeouts
    }

    pub fn add(&self, at: Instant, parked: &Arc<Parked>) {
        let mut heap = self.heap.lock();
        if heap.entries.len() >= heap.sweep_at {
            heap.entries.retain(|e| e.parked.strong_count() > 0);
            heap.sweep_at = (2 * heap.entries.len()).max(MIN_SWEEP);
        }
        let earliest = heap.entries.peek().is_none_or(|top| at < top.at);
        heap.entries.push(Entry {
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
            match heap.entries.peek() {
                Some(top) if top.at <= now => {
                    let entry = heap.entries.pop();
                    drop(heap);
                    // Gone already if the connection ended earlier.
                    if let Some(parked) = entry.and_then(|e| e.parked.upgrade()) {
                        parked.outbox.request_close(CloseReason::Timeout);
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
    use crate::fanout::paused_runtime;
    use crate::fanout::{Next, Outbox};
    use std::time::Duration;

    fn parked(conn_id: u64) -> Arc<Parked> {
        Arc::new(Parked {
            conn_id,
            seq: 0,
            identity: Identity {
                client_id: format!("c{conn_id}"),
                ..Identity::default()
            },
            channels: vec![],
            outbox: Outbox::default(),
            connected_ms: 0,
        })
    }

    #[test]
    fn connections_close_in_deadline_order_and_ended_ones_are_skipped() {
        paused_runtime().block_on(async {
            let timeouts = Timeouts::start();
            let now = Instant::now();
            let (a, b, c) = (parked(1), parked(2), parked(3));
            timeouts.add(now + Duration::from_secs(20), &b);
            timeouts.add(now + Duration::from_secs(10), &a);
            timeouts.add(now + Duration::from_secs(15), &c);
            drop(c);
            tokio::time::sleep(Duration::from_secs(11)).await;
            assert!(matches!(
                a.outbox.next(&[]),
                Next::Close(CloseReason::Timeout)
            ));
            assert!(matches!(b.outbox.next(&[]), Next::Idle));
            tokio::time::sleep(Duration::from_secs(10)).await;
            assert!(matches!(
                b.outbox.next(&[]),
                Next::Close(CloseReason::Timeout)
            ));
            assert!(timeouts.heap.lock().entries.is_empty());
            timeouts.stop();
        });
    }

    #[test]
    fn ended_connections_are_swept_out_before_their_deadline() {
        paused_runtime().block_on(async {
            let timeouts = Timeouts::start();
            let at = Instant::now() + Duration::from_secs(60);
            let kept = parked(0);
            timeouts.add(at, &kept);
            for n in 1..=(3 * MIN_SWEEP as u64) {
                // Ended at once, like clients that reconnect after every message.
                timeouts.add(at, &parked(n));
            }
            let left = timeouts.heap.lock().entries.len();
            assert!(left <= MIN_SWEEP, "{left} entries kept");
            assert!(timeouts
                .heap
                .lock()
                .entries
                .iter()
                .any(|e| e.conn_id == 0 && e.parked.strong_count() == 1));
            timeouts.stop();
        });
    }
}
