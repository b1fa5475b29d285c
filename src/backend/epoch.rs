//! The storage epoch: a random id that names one life of a backend's
//! storage. Message ids restart when the storage is reset or replaced (Redis
//! flushed or restarted empty, the PostgreSQL table recreated); the epoch
//! changes with them, so a web client that sees a new one knows that its
//! last ids refer to a dead backlog (it starts again from 0).
//!
//! Each backend keeps the epoch in its storage (created, with a random value,
//! by the first of our processes that finds none; reference processes never
//! read or write it) and caches it here: web responses carry the cached
//! value, never waiting for the storage. The cache is refreshed when the
//! firehose detects a reset, periodically, and whenever a poll finds a
//! client ahead of the bus (the one answer that would lower a client's
//! position: it must carry an epoch read from the storage after its ids).

use std::io::Read;
use std::sync::Arc;

use crate::sync::Mutex;

use crate::log;

/// Bytes of randomness in an epoch (shown as hex).
const EPOCH_BYTES: usize = 16;

/// A new random epoch: 32 hex digits from the OS's random source (with a
/// time, pid and address based fallback if it cannot be read).
pub fn generate() -> String {
    let mut bytes = [0u8; EPOCH_BYTES];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        fallback(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fallback(bytes: &mut [u8; EPOCH_BYTES]) {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_usize(i);
        h.write_usize(chunk.as_ptr() as usize);
        chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
    }
}

/// Whether an epoch read from storage is one of ours (hex, as `generate`
/// makes them): anything else is treated as absent.
pub fn is_valid(value: &str) -> bool {
    !value.is_empty() && value.len() <= 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether a poll found a client ahead of the bus on some channel (its
/// answer would carry a `/__status` lowering the client's position).
pub fn client_ahead(requested: &[Option<i64>], bus_ids: &[i64]) -> bool {
    requested
        .iter()
        .zip(bus_ids)
        .any(|(requested, bus_id)| requested.is_some_and(|r| r > *bus_id))
}

/// The epoch this process last read from the storage.
#[derive(Default)]
pub struct EpochCache {
    value: Mutex<Option<Arc<str>>>,
    /// What it names, for the log line of a change.
    storage: String,
}

impl EpochCache {
    pub fn new(storage: impl Into<String>) -> Self {
        EpochCache {
            value: Mutex::new(None),
            storage: storage.into(),
        }
    }

    pub fn get(&self) -> Option<Arc<str>> {
        let _section = crate::fork::guard();
        self.value.lock().clone()
    }

    /// Records the epoch read from the storage; returns it.
    pub fn set(&self, epoch: &str) -> Arc<str> {
        let _section = crate::fork::guard();
        let mut slot = self.value.lock();
        match slot.as_ref() {
            Some(current) if &**current == epoch => return Arc::clone(current),
            Some(current) => log::warn(format!(
                "message_bus: the storage epoch of {} changed from {current} to {epoch}: web clients restart from its first message",
                self.storage
            )),
            None => {}
        }
        let value: Arc<str> = Arc::from(epoch);
        *slot = Some(Arc::clone(&value));
        value
    }

    /// Forgets the cached value (the storage was replaced): the next read
    /// goes to the storage.
    pub fn clear(&self) {
        let _section = crate::fork::guard();
        self.value.lock().take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_epochs_are_hex_and_distinct() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 2 * EPOCH_BYTES);
        assert!(is_valid(&a));
        assert_ne!(a, b);
        let mut bytes = [0u8; EPOCH_BYTES];
        fallback(&mut bytes);
        assert_ne!(bytes, [0u8; EPOCH_BYTES]);
    }

    #[test]
    fn validity() {
        assert!(is_valid("0a1B"));
        assert!(!is_valid(""));
        assert!(!is_valid("not hex"));
        assert!(!is_valid(&"a".repeat(65)));
    }

    #[test]
    fn ahead_means_a_requested_id_above_the_bus() {
        assert!(!client_ahead(&[None, Some(3)], &[5, 3]));
        assert!(client_ahead(&[Some(-1), Some(4)], &[5, 3]));
        assert!(!client_ahead(&[Some(-1), Some(-3)], &[0, 0]));
        assert!(!client_ahead(&[], &[]));
    }

    #[test]
    fn the_cache_keeps_the_last_value() {
        let cache = EpochCache::new("test");
        assert!(cache.get().is_none());
        cache.set("ab");
        assert_eq!(cache.get().as_deref(), Some("ab"));
        cache.set("cd");
        assert_eq!(cache.get().as_deref(), Some("cd"));
        cache.clear();
        assert!(cache.get().is_none());
    }
}
