//! The storage backends. Every method works on *encoded* channel names and
//! undecoded envelopes (COMPAT.md §1.12).

mod caller_socket;
pub mod direct;
pub mod epoch;
mod firehose;
pub mod last_id_cache;
pub mod memory;
mod networked;
mod payload;
mod per_process;
pub mod postgres;
pub mod redis;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::bus::Hub;
use crate::error::Result;
use crate::message::Message;
use crate::subscription::Subscription;

pub use self::direct::{DirectCall, DirectReply, DirectResult, DirectRun};

/// Backend attributes of COMPAT.md §1.9, adjustable at any time.
#[derive(Debug)]
pub struct Settings {
    pub max_backlog_size: AtomicI64,
    pub max_global_backlog_size: AtomicI64,
    /// Seconds.
    pub max_backlog_age: AtomicI64,
    pub clear_every: AtomicI64,
    pub max_in_memory_publish_backlog: AtomicI64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_backlog_size: AtomicI64::new(1000),
            max_global_backlog_size: AtomicI64::new(2000),
            max_backlog_age: AtomicI64::new(604_800),
            clear_every: AtomicI64::new(1),
            max_in_memory_publish_backlog: AtomicI64::new(1000),
        }
    }
}

impl Settings {
    pub fn get(field: &AtomicI64) -> i64 {
        field.load(Ordering::Relaxed)
    }

    pub fn set(field: &AtomicI64, value: i64) {
        field.store(value, Ordering::Relaxed)
    }

    pub fn clear_every(&self) -> i64 {
        Self::get(&self.clear_every).max(1)
    }

    /// The `max_backlog_age` (seconds) a publish with `opts` applies.
    pub fn backlog_age(&self, opts: &PublishOptions) -> i64 {
        opts.max_backlog_age
            .unwrap_or_else(|| Self::get(&self.max_backlog_age))
    }

    /// The `max_backlog_size` a publish with `opts` applies.
    pub fn backlog_size(&self, opts: &PublishOptions) -> i64 {
        opts.max_backlog_size
            .unwrap_or_else(|| Self::get(&self.max_backlog_size))
    }
}

/// Per-publish overrides (COMPAT.md §1.5 step 7; both honoured, §9 Q3).
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    pub max_backlog_age: Option<i64>,
    pub max_backlog_size: Option<i64>,
    /// `None`: the default (true).
    pub queue_in_memory: Option<bool>,
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn settings(&self) -> &Settings;
    fn hub(&self) -> &Arc<Hub>;

    /// Stores a message and returns its message id (`None` when it was queued
    /// in memory for later delivery).
    async fn publish(
        &self,
        channel: &str,
        data: &str,
        opts: &PublishOptions,
    ) -> Result<Option<i64>>;
    async fn last_id(&self, channel: &str) -> Result<i64>;
    async fn last_ids(&self, channels: &[String]) -> Result<Vec<i64>>;
    /// `last_ids` for a web poll (COMPAT.md §3.4 step 1) that requested
    /// `requested` (same order). A backend may answer from ids its firehose
    /// keeps (see [`last_id_cache`]): they may lag behind the storage by the
    /// live delivery delay, never run ahead of it for long. Everything else
    /// (the Ruby API included) reads the storage with `last_ids`.
    async fn last_ids_for_poll(
        &self,
        channels: &[String],
        requested: &[Option<i64>],
    ) -> Result<Vec<i64>> {
        let ids = self.last_ids(channels).await?;
        if epoch::client_ahead(requested, &ids) {
            // Its answer lowers the client's position: it must carry the
            // epoch of the storage these ids came from.
            self.refresh_epoch().await?;
        }
        Ok(ids)
    }
    /// The storage epoch this process knows (see [`epoch`]), without
    /// waiting: `None` before it was first read (or after a detected reset).
    fn epoch(&self) -> Option<Arc<str>> {
        None
    }
    /// The storage epoch: the cached one, else read from the storage (and
    /// created there if missing).
    async fn load_epoch(&self) -> Result<Option<Arc<str>>> {
        Ok(self.epoch())
    }
    /// Reads the storage epoch again (creating it if missing) into the cache.
    async fn refresh_epoch(&self) -> Result<()> {
        Ok(())
    }
    async fn backlog(&self, channel: &str, last_id: i64) -> Result<Vec<Message>>;
    async fn global_backlog(&self, last_id: i64) -> Result<Vec<Message>>;
    async fn get_message(&self, channel: &str, message_id: i64) -> Result<Option<Message>>;
    async fn reset(&self) -> Result<()>;
    async fn expire_all_backlogs(&self) -> Result<()>;

    /// Opens a firehose subscription in this process; with `last_id`, the
    /// retained messages after that global id come first, without duplicates.
    async fn subscribe(&self, last_id: Option<i64>) -> Result<Arc<Subscription>>;
    /// Ends this process's firehose subscriptions (never broadcast, §9 Q5).
    async fn global_unsubscribe(&self) {
        self.hub().close_subscriptions();
    }
    /// Makes sure the firehose feeds the hub's sinks even without subscriptions.
    async fn ensure_listening(&self) -> Result<()> {
        Ok(())
    }
    async fn destroy(&self) {
        self.global_unsubscribe().await;
    }
    /// Drops connections inherited from the parent process.
    fn after_fork(&self) {}
    fn is_subscribed(&self) -> bool {
        self.hub().has_subscriptions()
    }
    /// `call` answered at once, without I/O or a wait worth releasing the
    /// GVL for (see [`direct`]); `None`: this backend cannot.
    fn immediate(&self, call: DirectCall<'_>) -> Option<Result<DirectReply>> {
        let _ = call;
        None
    }
    /// `call` done by the calling thread itself, when this backend can
    /// (see [`direct`]); `None`: use the async method.
    fn direct<'a>(&'a self, call: DirectCall<'a>) -> Option<Box<dyn DirectRun + 'a>> {
        let _ = call;
        None
    }
    /// Messages waiting in the in-memory publish queue.
    fn queued_publishes(&self) -> usize {
        0
    }
    /// Messages dropped from the in-memory publish queue so far.
    fn dropped_publishes(&self) -> u64 {
        0
    }
}
