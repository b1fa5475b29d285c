//! The keepalives of every streaming connection (WebSocket pings and their
//! pong timeout, SSE comments), kept by one sweep for all connections
//! instead of a timer in each: an idle connection then keeps only its due
//! time (in its outbox) and its task no room for a timer.
//!
//! The sweep walks the registry's current registrations (held by the
//! registry: a registration a subscription change replaced is dropped with
//! its last reference, and `Fanout::swap` carries its due time over to the
//! new one) and tells each connection whose keepalive is due; the
//! connection's task writes it (or closes a peer that did not answer the
//! last ping) and arms the next. It sleeps until the next due time, but at
//! least a tick (a tenth of the shortest interval in use, from 10 ms to
//! 1 s: what a keepalive may be late by) and at most the shortest interval
//! and 1 s; while no keepalive is armed, until one is.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{sleep, Instant};

use super::{Outbox, Parked, Shard};

/// The sweep's tick bounds (milliseconds).
const MIN_TICK: u32 = 10;
const MAX_TICK: u32 = 1000;
/// Keepalive intervals' bounds (the upper one well within the 24 days a
/// due time may be ahead of the wrapping 32-bit clock's now).
const MIN_INTERVAL: Duration = Duration::from_millis(10);
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

pub struct Keepalives {
    /// The keepalive clock's zero.
    origin: Instant,
    /// The shortest interval armed so far, in milliseconds (`u32::MAX`:
    /// none yet).
    shortest: AtomicU32,
    /// The sweep found no keepalive armed: it waits for `changed`.
    idle: AtomicBool,
    /// Wakes the sweep: a keepalive armed while it was idle, a shorter
    /// interval, or stop.
    changed: Notify,
    stopped: AtomicBool,
}

/// A keepalive interval as the sweep takes it.
fn bounded(interval: Duration) -> Duration {
    interval.clamp(MIN_INTERVAL, MAX_INTERVAL)
}

impl Keepalives {
    /// Starts the sweep of `shards`. Must be called within the runtime.
    pub fn start(shards: Vec<Arc<Shard>>) -> Arc<Self> {
        let keepalives = Arc::new(Keepalives {
            origin: Instant::now(),
            shortest: AtomicU32::new(u32::MAX),
            idle: AtomicBool::new(true),
            changed: Notify::new(),
            stopped: AtomicBool::new(false),
        });
        tokio::spawn(Arc::clone(&keepalives).run(shards));
        keepalives
    }

    /// Now on the keepalive clock (milliseconds, wrapping).
    fn now(&self) -> u32 {
        self.origin.elapsed().as_millis() as u32
    }

    /// Arms the keepalive of `outbox` an `interval` from now.
    pub fn arm(&self, outbox: &Outbox, interval: Duration) {
        let ms = bounded(interval).as_millis() as u32;
        outbox.arm_keepalive(self.now().wrapping_add(ms));
        let shorter = ms < self.shortest.load(Ordering::Relaxed)
            && self.shortest.fetch_min(ms, Ordering::Relaxed) > ms;
        // After the due time is stored: a sweep that went idle before
        // seeing it is woken (see `run`).
        let woke = self.idle.load(Ordering::SeqCst) && self.idle.swap(false, Ordering::SeqCst);
        if shorter || woke {
            self.changed.notify_one();
        }
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.changed.notify_one();
    }

    async fn run(self: Arc<Self>, shards: Vec<Arc<Shard>>) {
        while !self.stopped.load(Ordering::Relaxed) {
            // Idle from before the walk: a keepalive armed after the walk
            // looked at its connection sees it, and wakes the sweep.
            self.idle.store(true, Ordering::SeqCst);
            let Some(next) = self.sweep(&shards) else {
                self.changed.notified().await;
                continue;
            };
            self.idle.store(false, Ordering::SeqCst);
            // No longer than the shortest interval: a keepalive armed
            // meanwhile is due no earlier than that.
            let shortest = self.shortest.load(Ordering::Relaxed);
            let tick = (shortest / 10).clamp(MIN_TICK, MAX_TICK);
            let wait = next.min(shortest).clamp(tick, MAX_TICK);
            tokio::select! {
                _ = sleep(Duration::from_millis(u64::from(wait))) => {}
                _ = self.changed.notified() => {}
            }
        }
    }

    /// Tells every connection whose keepalive is due; returns the time to
    /// the next due keepalive (milliseconds; `None`: none armed).
    fn sweep(&self, shards: &[Arc<Shard>]) -> Option<u32> {
        let mut next: Option<u32> = None;
        let mut due: Vec<Arc<Parked>> = Vec::new();
        for shard in shards {
            let now = self.now();
            {
                let reg = shard.registry.lock();
                for parked in reg.clients.values() {
                    match parked.outbox.claim_keepalive(now) {
                        None => {}
                        Some(0) => due.push(Arc::clone(parked)),
                        Some(left) => next = Some(next.map_or(left, |n| n.min(left))),
                    }
                }
            }
            // Out of the registry's lock. (One replaced meanwhile has its
            // report carried over by `Fanout::swap`.) Its task arms the
            // next keepalive, waking the sweep if it is idle.
            for parked in due.drain(..) {
                parked.outbox.keepalive_due();
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Identity;
    use crate::fanout::paused_runtime;
    use crate::fanout::{Fanout, News};
    use crate::gate::Gate;
    use std::task::{Context, Waker};

    fn stream(fanout: &Fanout, client: &str) -> Arc<Parked> {
        Arc::new(Parked {
            conn_id: fanout.next_conn_id(),
            seq: i64::MIN,
            identity: Identity {
                client_id: client.into(),
                ..Identity::default()
            },
            channels: vec![],
            outbox: Outbox::default(),
            connected_ms: 0,
        })
    }

    fn news(parked: &Parked) -> Option<News> {
        parked
            .outbox
            .poll_news(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn due_keepalives_are_reported_once_and_carried_over_a_swap() {
        paused_runtime().block_on(async {
            let fanout = Fanout::new(Gate::new()).unwrap();
            let (soon, late, poll) = (
                stream(&fanout, "soon"),
                stream(&fanout, "late"),
                stream(&fanout, "poll"),
            );
            for parked in [&soon, &late, &poll] {
                fanout.admit_newest(Arc::clone(parked));
            }
            fanout.arm_keepalive(&soon, Duration::from_secs(1));
            fanout.arm_keepalive(&late, Duration::from_secs(30));
            tokio::time::sleep(Duration::from_millis(1200)).await;
            assert_eq!(news(&soon), Some(News::Keepalive));
            assert_eq!(news(&soon), None, "reported once");
            assert_eq!(news(&late), None);
            assert_eq!(news(&poll), None, "no keepalive: never reported");
            // Not armed again: not reported again.
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert_eq!(news(&soon), None);

            // Replaced by a subscription change: the new registration keeps
            // the due time, the old one is freed at once.
            let replaced = stream(&fanout, "late");
            assert!(fanout.swap(&late, Arc::clone(&replaced)));
            let old = Arc::downgrade(&late);
            drop(late);
            assert!(old.upgrade().is_none(), "the replaced registration is kept");
            tokio::time::sleep(Duration::from_secs(20)).await;
            assert_eq!(news(&replaced), None);
            tokio::time::sleep(Duration::from_secs(8)).await;
            assert_eq!(news(&replaced), Some(News::Keepalive));

            // Reported to a registration being replaced: the report moves.
            fanout.arm_keepalive(&replaced, Duration::from_secs(1));
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let again = stream(&fanout, "late");
            assert!(fanout.swap(&replaced, Arc::clone(&again)));
            assert_eq!(news(&again), Some(News::Keepalive));
            drop(fanout);
        });
    }

    #[test]
    fn the_tick_follows_the_shortest_interval() {
        paused_runtime().block_on(async {
            let fanout = Fanout::new(Gate::new()).unwrap();
            let parked = stream(&fanout, "fast");
            fanout.admit_newest(Arc::clone(&parked));
            let start = Instant::now();
            let mut reported = 0;
            fanout.arm_keepalive(&parked, Duration::from_millis(100));
            while reported < 10 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if news(&parked) == Some(News::Keepalive) {
                    reported += 1;
                    fanout.arm_keepalive(&parked, Duration::from_millis(100));
                }
            }
            // Each one late by at most a tick (10 ms) and the poll (5 ms)
            // (the paused clock: no timing window).
            let took = start.elapsed();
            assert!(took < Duration::from_millis(1150), "took {took:?}");
        });
    }
}
