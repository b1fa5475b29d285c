//! A fork while threads wait on the process's locks: the child's own threads
//! wait and wake on the same subscriptions and locks, and nothing the
//! vanished waiters left behind breaks them.

use std::sync::Arc;
use std::time::Duration;

use message_bus_core::message::Message;
use message_bus_core::subscription::{Batch, Subscription};
use message_bus_core::sync::Mutex;

fn message(global_id: i64) -> Arc<Message> {
    Arc::new(Message {
        global_id,
        message_id: global_id,
        channel: "/forked".into(),
        data: "x".into(),
    })
}

/// What the child does; its exit status says whether it worked.
fn child_round(inherited: &[Arc<Subscription>], lock: &Arc<Mutex<u64>>) -> bool {
    // New threads: glibc hands them the stacks of the parent's threads
    // that did not survive the fork.
    let workers: Vec<_> = (0..4)
        .map(|n| {
            let subs = inherited.to_vec();
            let lock = Arc::clone(lock);
            std::thread::spawn(move || {
                let mine = Subscription::new();
                for round in 0..200 {
                    *lock.lock() += 1;
                    let sub = &subs[(n + round) % subs.len()];
                    sub.push(&message(round as i64 + 1));
                    mine.push(&message(round as i64 + 1));
                    if !matches!(
                        mine.next_batch(1, Duration::from_secs(5)),
                        Ok(Batch::Messages(_))
                    ) {
                        return false;
                    }
                }
                true
            })
        })
        .collect();
    let all_ok = workers.into_iter().all(|w| w.join().unwrap_or(false));
    all_ok && *lock.lock() == 800
}

/// The child's exit status, or None if it did not end within a minute
/// (then it is killed).
fn wait_child(pid: libc::pid_t) -> Option<libc::c_int> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut status = 0;
        // SAFETY: polls the child this test forked.
        let waited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if waited == pid {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            // SAFETY: ends and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_forked_child_waits_and_wakes_where_its_parents_threads_were_waiting() {
    for _round in 0..5 {
        let subs: Vec<Arc<Subscription>> = (0..8).map(|_| Subscription::new()).collect();
        let lock = Arc::new(Mutex::new(0u64));
        // Parent threads parked on every subscription and queued on a lock.
        let held = lock.lock();
        let waiters: Vec<_> = subs
            .iter()
            .map(|sub| {
                let sub = Arc::clone(sub);
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    let _ = sub.next_batch(1, Duration::from_secs(30));
                    *lock.lock() += 0;
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: the child only runs Rust code that allocates and spawns
        // threads (glibc keeps malloc usable across fork) and then exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            drop(held);
            let ok = child_round(&subs, &lock);
            // SAFETY: ends the child without running the test harness's exit.
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        }
        let status = wait_child(pid);
        drop(held);
        for sub in &subs {
            sub.close();
        }
        for w in waiters {
            w.join().expect("parent waiter");
        }
        let status = status.expect("the forked child hung");
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the forked child failed (status {status:#x}: a signal means it crashed)"
        );
    }
}
