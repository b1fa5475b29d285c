//! Fork safety. A fork copies only the forking thread: a lock that another
//! thread held at that moment stays held forever in the child. The locks a
//! child needs after a fork (the hubs, the log queue, the per-process state
//! slots, the runtime slot) are therefore taken only inside [`guard`]
//! sections, and the fork waits (`before_fork`) until no thread is inside one.
//!
//! The guard is made of atomics only: a lock's own bookkeeping could be left
//! half-updated in the child.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

static FORKING: AtomicBool = AtomicBool::new(false);
static INSIDE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Guard sections this thread is in (sections nest).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Pause while a fork is under way: forks are quick, and spinning would take
/// a core from the forking thread.
const PAUSE: Duration = Duration::from_micros(50);

/// Marks a section that may take locks a forked child needs.
pub struct Section(());

/// Enters a guard section (waits while a fork is under way).
pub fn guard() -> Section {
    DEPTH.with(|depth| {
        if depth.get() == 0 {
            loop {
                while FORKING.load(Ordering::SeqCst) {
                    std::thread::sleep(PAUSE);
                }
                INSIDE.fetch_add(1, Ordering::SeqCst);
                if !FORKING.load(Ordering::SeqCst) {
                    break;
                }
                INSIDE.fetch_sub(1, Ordering::SeqCst);
            }
        }
        depth.set(depth.get() + 1);
    });
    Section(())
}

impl Drop for Section {
    fn drop(&mut self) {
        DEPTH.with(|depth| {
            depth.set(depth.get() - 1);
            if depth.get() == 0 {
                INSIDE.fetch_sub(1, Ordering::SeqCst);
            }
        });
    }
}

/// A lock taken inside a guard section (held until the guard is dropped).
pub struct Locked<'a, T> {
    // Dropped before the section ends (fields drop in order).
    guard: crate::sync::MutexGuard<'a, T>,
    _section: Section,
}

/// Locks `mutex` inside a guard section.
pub fn lock<T>(mutex: &crate::sync::Mutex<T>) -> Locked<'_, T> {
    let section = guard();
    Locked {
        guard: mutex.lock(),
        _section: section,
    }
}

impl<T> std::ops::Deref for Locked<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for Locked<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// Called right before `fork`, on the forking thread (outside any section):
/// returns once no other thread is inside a guard section; new sections
/// wait until `after_fork_in_parent` / `after_fork_in_child`.
pub fn before_fork() {
    FORKING.store(true, Ordering::SeqCst);
    while INSIDE.load(Ordering::SeqCst) > 0 {
        std::thread::sleep(PAUSE);
    }
}

/// In the parent once `fork` returned (or failed).
pub fn after_fork_in_parent() {
    FORKING.store(false, Ordering::SeqCst);
}

/// In the child, first thing, on the forking thread: the parent's other
/// threads do not exist here (their sections ended before the fork, or
/// never started). Then [`adopt`]. Returns the number of sockets closed.
pub fn after_fork_in_child() -> usize {
    INSIDE.store(0, Ordering::SeqCst);
    FORKING.store(false, Ordering::SeqCst);
    adopt()
}

/// Makes this process the owner of what it runs (idempotent; a no-op in the
/// process that built it): an inherited runtime is forgotten (leaked, never
/// dropped) and every client socket the parent held is closed in this
/// process only, the parent keeping them. Returns the number of sockets closed.
pub fn adopt() -> usize {
    crate::runtime::forget_if_inherited();
    crate::http::socket::close_inherited()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn before_fork_waits_for_sections_and_holds_new_ones() {
        let inside = guard();
        let nested = guard();
        drop(nested);
        let released = Arc::new(AtomicBool::new(false));
        let forker = {
            let released = Arc::clone(&released);
            std::thread::spawn(move || {
                before_fork();
                let was_released = released.load(Ordering::SeqCst);
                let late = std::thread::spawn(|| {
                    let _section = guard();
                });
                std::thread::sleep(Duration::from_millis(20));
                let late_waited = !late.is_finished();
                after_fork_in_parent();
                late.join().unwrap();
                (was_released, late_waited)
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        released.store(true, Ordering::SeqCst);
        drop(inside);
        let (was_released, late_waited) = forker.join().unwrap();
        assert!(was_released, "the fork waited for the open section");
        assert!(
            late_waited,
            "a section started during the fork waited for it"
        );
    }
}
