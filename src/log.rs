//! A minimal process-wide log: the core pushes warnings into a bounded queue
//! that the Ruby side drains into `MessageBus.logger`. With the environment
//! variable `MESSAGE_BUS_DEBUG` set, lines also go to stderr at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::sync::Mutex;

/// Lines kept until drained; older ones are dropped (and counted).
const CAPACITY: usize = 1000;

static QUEUE: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
static DROPPED: AtomicU64 = AtomicU64::new(0);

fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("MESSAGE_BUS_DEBUG").is_some_and(|v| !v.is_empty()))
}

/// Records a warning.
pub fn warn(message: impl Into<String>) {
    let message = message.into();
    if debug() {
        eprintln!("[message_bus] {message}");
    }
    let _section = crate::fork::guard();
    let mut queue = QUEUE.lock();
    if queue.len() >= CAPACITY {
        queue.pop_front();
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
    queue.push_back(message);
}

/// Takes every queued line, oldest first.
pub fn drain() -> Vec<String> {
    let _section = crate::fork::guard();
    let lines = QUEUE.lock().drain(..).collect();
    lines
}

/// Lines lost because nobody drained the queue in time.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}
