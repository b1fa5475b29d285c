//! State that belongs to the process that created it: connections and tasks
//! of a backend. A forked child gets a fresh one on first use; the inherited
//! one is leaked, never used or dropped (its tasks and sockets belong to the
//! parent's runtime).

use std::sync::Arc;

use crate::sync::Mutex;

pub trait ProcessLocal: Send + Sync {
    fn fresh() -> Self;
    /// Stops this state's tasks and closes its connections.
    fn shut_down(&self);
}

pub struct PerProcess<T: ProcessLocal> {
    slot: Mutex<(u32, Arc<T>)>,
}

impl<T: ProcessLocal> Default for PerProcess<T> {
    fn default() -> Self {
        PerProcess {
            slot: Mutex::new((std::process::id(), Arc::new(T::fresh()))),
        }
    }
}

impl<T: ProcessLocal> PerProcess<T> {
    /// This process's state.
    pub fn current(&self) -> Arc<T> {
        let _section = crate::fork::guard();
        let mut slot = self.slot.lock();
        let pid = std::process::id();
        if slot.0 != pid {
            let inherited = std::mem::replace(&mut *slot, (pid, Arc::new(T::fresh())));
            std::mem::forget(inherited);
        }
        Arc::clone(&slot.1)
    }

    /// Installs a fresh state and returns the previous one if it was this
    /// process's (to be shut down by the caller).
    pub fn replace(&self) -> Option<Arc<T>> {
        let pid = std::process::id();
        let _section = crate::fork::guard();
        let (owner, old) = std::mem::replace(&mut *self.slot.lock(), (pid, Arc::new(T::fresh())));
        if owner == pid {
            Some(old)
        } else {
            std::mem::forget(old);
            None
        }
    }

    /// Shuts down the state if it is this process's (the backend is dropped).
    pub fn shut_down_current(&self) {
        let _section = crate::fork::guard();
        let slot = self.slot.lock();
        if slot.0 == std::process::id() {
            slot.1.shut_down();
        }
    }
}
