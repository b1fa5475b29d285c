//! The firehose of a networked backend (Redis, PostgreSQL): one task per
//! process holding the pub/sub or LISTEN connection that hands every
//! message to the hub. [`FirehoseTask`] is its handle and whether its
//! subscription is up; [`keep_listening`] is its loop: listen, and after the
//! connection is lost, log it and listen again with exponential backoff.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::sync::Mutex;
use tokio::task::JoinHandle;

use super::epoch::EpochCache;
use crate::error::{Error, Result};
use crate::log;
use crate::metrics::{self, BackendKind, BackendMetrics};

const MIN_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);

/// The firehose task of one process.
#[derive(Default)]
pub(super) struct FirehoseTask {
    task: Mutex<Option<JoinHandle<()>>>,
    /// The subscription is confirmed and its connection is up.
    subscribed: AtomicBool,
}

impl FirehoseTask {
    pub fn is_running(&self) -> bool {
        self.task
            .lock()
            .as_ref()
            .is_some_and(|task| !task.is_finished())
    }

    /// Spawns `run` on the runtime unless a task is running already.
    pub fn start<F>(&self, run: impl FnOnce() -> F) -> Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let rt = crate::runtime::runtime()?;
        let mut slot = self.task.lock();
        if slot.as_ref().is_some_and(|task| !task.is_finished()) {
            return Ok(());
        }
        *slot = Some(rt.spawn(run()));
        Ok(())
    }

    /// Aborts the task (its connection closes with it).
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
        self.subscribed.store(false, Ordering::SeqCst);
    }

    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
    }

    /// From here on every message reaches the hub in order.
    pub fn mark_subscribed(&self) {
        self.subscribed.store(true, Ordering::SeqCst);
    }
}

/// Runs until aborted; every lost connection counts as a reconnect of
/// `kind` and clears `epoch` (the storage may be another one when we are
/// back: the epoch is read again before the next answer). `listen` returns
/// once its connection ends, with whether the subscription had been
/// confirmed (which resets the backoff); `describe` names the subscription
/// in the log line.
pub(super) async fn keep_listening<L, Fut>(
    kind: BackendKind,
    firehose: &FirehoseTask,
    epoch: &EpochCache,
    describe: impl Fn() -> String,
    mut listen: L,
) where
    L: FnMut() -> Fut,
    Fut: Future<Output = (bool, std::result::Result<(), Error>)>,
{
    let mut delay = MIN_DELAY;
    loop {
        let (confirmed, outcome) = listen().await;
        epoch.clear();
        let error = match outcome {
            Ok(()) => Error::Connection("connection closed".into()),
            Err(e) => e,
        };
        firehose.subscribed.store(false, Ordering::SeqCst);
        BackendMetrics::count(&metrics::backend(kind).firehose_reconnects);
        if confirmed {
            delay = MIN_DELAY;
        }
        log::warn(format!(
            "message_bus: {} lost: {error}; reconnecting in {} ms",
            describe(),
            delay.as_millis()
        ));
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}
