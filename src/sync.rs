//! The process's locks: std's, behind parking_lot's signatures (a poisoned
//! lock is still handed out: its data is plain state, never half-moved).
//!
//! Not parking_lot: it keeps every parked thread in one process-global
//! table. A fork copies the table with the entries of threads that no longer
//! exist in the child, whose stacks glibc then reuses for the child's new
//! threads; the next park or wake that walks such an entry reads garbage
//! (a forked child segfaulted in `_next_batch` this way). std's futex locks
//! keep their whole state in the lock itself, so a waiter that vanished in
//! the fork leaves nothing behind.

use std::sync::PoisonError;

pub use std::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

#[derive(Default, Debug)]
pub struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    pub const fn new(value: T) -> Self {
        Mutex(std::sync::Mutex::new(value))
    }

    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default, Debug)]
pub struct RwLock<T>(std::sync::RwLock<T>);

impl<T> RwLock<T> {
    pub const fn new(value: T) -> Self {
        RwLock(std::sync::RwLock::new(value))
    }

    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}
