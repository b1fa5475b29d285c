//! The process-wide tokio runtime, created lazily and tagged with the pid: a
//! forked child builds its own (the parent's threads do not exist there; the
//! stale runtime is leaked, never dropped or joined).

use std::sync::Arc;

use crate::sync::Mutex;
use tokio::runtime::Runtime;

use crate::error::{Error, Result};

static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);

/// A positive count from the environment variable `name`, else `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// The runtime of this process, built on first use.
pub fn runtime() -> Result<Arc<Runtime>> {
    let pid = std::process::id();
    let _section = crate::fork::guard();
    let mut slot = RUNTIME.lock();
    if let Some((owner, rt)) = slot.as_ref() {
        if *owner == pid {
            return Ok(Arc::clone(rt));
        }
    }
    if let Some((_, stale)) = slot.take() {
        // Inherited from the parent: its worker threads are gone; never drop it.
        std::mem::forget(stale);
        // A child that did not go through the fork hook: let go of the
        // parent's clients before serving any of its own.
        crate::http::socket::close_inherited();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env_count("MESSAGE_BUS_WORKER_THREADS", 2))
        .thread_name("message-bus")
        .enable_all()
        .build()
        .map_err(|e| Error::Backend(format!("cannot start the message_bus runtime: {e}")))?;
    let rt = Arc::new(rt);
    *slot = Some((pid, Arc::clone(&rt)));
    Ok(rt)
}

/// Forgets the runtime if it belongs to another process (called after fork).
pub fn forget_if_inherited() {
    let pid = std::process::id();
    let _section = crate::fork::guard();
    let mut slot = RUNTIME.lock();
    if slot.as_ref().is_some_and(|(owner, _)| *owner != pid) {
        if let Some((_, stale)) = slot.take() {
            std::mem::forget(stale);
        }
    }
}
