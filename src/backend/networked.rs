//! The shape the networked backends (Redis, PostgreSQL) share: per-process
//! state (connections, the firehose task, the delivery position) in a
//! [`PerProcess`] slot, the firehose lifecycle (started by the first
//! subscription or sink, replaced by `destroy`), replay-then-live
//! subscriptions, and the storage epoch cached in an [`EpochCache`]. A
//! backend implements [`Networked`] with what is specific to its storage;
//! the functions here are the rest, and its `Backend` methods call them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use super::epoch::EpochCache;
use super::firehose::FirehoseTask;
use super::per_process::{PerProcess, ProcessLocal};
use crate::bus::Hub;
use crate::error::Result;
use crate::log;
use crate::message::Message;
use crate::subscription::Subscription;

/// The firehose's delivery position, kept under the lock that orders
/// hand-overs to the hub and the replays of new subscriptions.
pub(super) trait Position: Send + Sync {
    /// The highest global id handed to the hub (`None`: not known yet).
    fn highest(&self) -> Option<i64>;
    fn set_highest(&mut self, id: i64);
}

/// A backend's state in one process.
pub(super) trait ProcessState: ProcessLocal + 'static {
    type Delivery: Position;
    fn firehose(&self) -> &FirehoseTask;
    /// Held while handing messages to the hub, and while a new subscription
    /// reads its replay, so that the two never interleave.
    fn delivery(&self) -> &tokio::sync::Mutex<Self::Delivery>;
}

/// What a networked backend provides to the shared skeleton.
#[async_trait]
pub(super) trait Networked: Send + Sync + Sized + 'static {
    type Proc: ProcessState;

    fn hub(&self) -> &Arc<Hub>;
    fn state(&self) -> &PerProcess<Self::Proc>;
    /// The storage epoch as last read.
    fn epoch_cache(&self) -> &EpochCache;
    /// Reads the epoch from the storage (creating it if missing) into the
    /// cache.
    async fn read_epoch(&self) -> Result<Arc<str>>;
    /// Where a new firehose starts: nothing published from then on is
    /// missed, even before its subscription is confirmed. `None`: not known
    /// (the firehose reads it once subscribed).
    async fn start_position(&self) -> Result<Option<i64>>;
    /// The firehose task of `proc` (runs until aborted).
    fn firehose(self: Arc<Self>, proc: Arc<Self::Proc>)
        -> Pin<Box<dyn Future<Output = ()> + Send>>;
    /// The retained messages after global id `last_id`, for a subscription
    /// that replays them before going live.
    async fn replay(&self, last_id: i64) -> Result<Vec<Message>>;
}

/// Starts this process's firehose task if it is not running.
pub(super) async fn ensure_firehose<N: Networked>(
    backend: &Arc<N>,
    proc: &Arc<N::Proc>,
) -> Result<()> {
    if proc.firehose().is_running() {
        return Ok(());
    }
    {
        let mut delivery = proc.delivery().lock().await;
        if delivery.highest().is_none() {
            if let Some(id) = backend.start_position().await? {
                delivery.set_highest(id);
            }
        }
    }
    let (backend, task_proc) = (Arc::clone(backend), Arc::clone(proc));
    proc.firehose().start(move || backend.firehose(task_proc))
}

/// A firehose subscription of this process; with `last_id`, the retained
/// messages after it come first (read under the delivery lock: no gap, no
/// duplicate with the live ones).
pub(super) async fn subscribe<N: Networked>(
    backend: &Arc<N>,
    last_id: Option<i64>,
) -> Result<Arc<Subscription>> {
    let proc = backend.state().current();
    ensure_firehose(backend, &proc).await?;
    let sub = Subscription::new();
    let delivery = proc.delivery().lock().await;
    if let Some(last_id) = last_id {
        sub.prefill(backend.replay(last_id).await?);
    }
    sub.set_start(delivery.highest());
    backend.hub().add_subscription(Arc::clone(&sub));
    Ok(sub)
}

/// Makes sure the firehose feeds the hub's sinks even without subscriptions.
pub(super) async fn ensure_listening<N: Networked>(backend: &Arc<N>) -> Result<()> {
    let proc = backend.state().current();
    ensure_firehose(backend, &proc).await
}

/// Ends this process's subscriptions and shuts its state down (the next
/// use builds a fresh one); returns that state when it was this process's,
/// for what else the backend must release.
pub(super) fn destroy<N: Networked>(backend: &N) -> Option<Arc<N::Proc>> {
    backend.hub().close_subscriptions();
    let old = backend.state().replace()?;
    old.shut_down();
    Some(old)
}

/// The firehose is subscribed and has someone to deliver to.
pub(super) fn is_subscribed<N: Networked>(backend: &N) -> bool {
    let hub = backend.hub();
    backend.state().current().firehose().is_subscribed()
        && (hub.has_subscriptions() || hub.has_sinks())
}

/// The cached epoch, else the storage's.
pub(super) async fn load_epoch<N: Networked>(backend: &N) -> Result<Option<Arc<str>>> {
    match backend.epoch_cache().get() {
        Some(epoch) => Ok(Some(epoch)),
        None => backend.read_epoch().await.map(Some),
    }
}

/// The firehose found the storage reset or replaced: forget the epoch, tell
/// the hub (parked connections end), and read the new epoch (the reset
/// deleted it: the first process to read it creates the new one).
pub(super) async fn storage_was_reset<N: Networked>(backend: &N) {
    backend.epoch_cache().clear();
    backend.hub().storage_reset();
    if let Err(e) = backend.read_epoch().await {
        log::warn(format!(
            "message_bus: cannot read the storage epoch after a reset: {e}"
        ));
    }
}
