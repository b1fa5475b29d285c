//! A firehose subscription as a queue that one consumer (the Ruby dispatcher
//! thread) drains in batches. Producers never block on the consumer.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::message::Message;
use crate::sync::Mutex;

#[derive(Default)]
struct State {
    queue: VecDeque<Arc<Message>>,
    closed: bool,
    interrupted: bool,
    /// While replaying a backlog, live messages at or below this global id are
    /// already queued and are dropped; cleared by the first newer message.
    replay_floor: Option<i64>,
    /// The global id after which live messages come (set by the backend).
    start: Option<i64>,
}

pub struct Subscription {
    state: Mutex<State>,
    ready: Condvar,
    /// The process that opened it: a forked child closes inherited ones.
    owner_pid: u32,
}

impl Default for Subscription {
    fn default() -> Self {
        Subscription {
            state: Mutex::default(),
            ready: Condvar::new(),
            owner_pid: std::process::id(),
        }
    }
}

/// What a wait on a subscription returned.
#[derive(Debug)]
pub enum Batch {
    Messages(Vec<Arc<Message>>),
    TimedOut,
    Closed,
}

impl Subscription {
    pub fn new() -> Arc<Self> {
        Arc::new(Subscription::default())
    }

    /// Queues replayed messages and sets the de-duplication floor for live ones.
    pub fn prefill(&self, messages: Vec<Message>) {
        let mut state = self.state.lock();
        if let Some(last) = messages.last() {
            state.replay_floor = Some(last.global_id);
        }
        state.queue.extend(messages.into_iter().map(Arc::new));
        drop(state);
        self.ready.notify_one();
    }

    pub fn push(&self, message: &Arc<Message>) {
        let mut state = self.state.lock();
        if state.closed {
            return;
        }
        if let Some(floor) = state.replay_floor {
            if message.global_id <= floor {
                return;
            }
            state.replay_floor = None;
        }
        state.queue.push_back(Arc::clone(message));
        drop(state);
        self.ready.notify_one();
    }

    /// Where live delivery starts: messages after this global id arrive live
    /// (or in the replay). A forked child's copy of the consumer, which has
    /// seen up to there, replays what came after.
    pub fn set_start(&self, global_id: Option<i64>) {
        self.state.lock().start = global_id;
    }

    pub fn start(&self) -> Option<i64> {
        self.state.lock().start
    }

    /// Forgets the replay floor (ids restart after a storage reset).
    pub fn clear_floor(&self) {
        self.state.lock().replay_floor = None;
    }

    /// Waits up to `timeout` for messages and takes at most `max` of them.
    /// Queued messages are still handed out after `close`.
    pub fn next_batch(&self, max: usize, timeout: Duration) -> Result<Batch> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock();
        loop {
            if !state.queue.is_empty() {
                let n = state.queue.len().min(max.max(1));
                return Ok(Batch::Messages(state.queue.drain(..n).collect()));
            }
            if state.closed {
                return Ok(Batch::Closed);
            }
            if state.interrupted {
                state.interrupted = false;
                return Err(Error::Interrupted);
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Ok(Batch::TimedOut);
            };
            state = self
                .ready
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Wakes the consumer with `Error::Interrupted` (Ruby's unblocking function).
    pub fn interrupt(&self) {
        self.state.lock().interrupted = true;
        self.ready.notify_all();
    }

    pub fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    pub fn is_inherited(&self) -> bool {
        self.owner_pid != std::process::id()
    }

    pub fn queued(&self) -> usize {
        self.state.lock().queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: i64) -> Arc<Message> {
        Arc::new(Message::new(id, id, "/c", "d"))
    }

    #[test]
    fn replay_floor_drops_live_duplicates_once() {
        let sub = Subscription::new();
        sub.prefill(vec![
            Message::new(1, 1, "/c", "a"),
            Message::new(2, 2, "/c", "b"),
        ]);
        sub.push(&msg(2));
        sub.push(&msg(3));
        sub.push(&msg(1)); // after the floor is cleared, nothing is filtered
        match sub.next_batch(10, Duration::from_millis(1)).unwrap() {
            Batch::Messages(m) => assert_eq!(
                m.iter().map(|m| m.global_id).collect::<Vec<_>>(),
                vec![1, 2, 3, 1]
            ),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn interrupt_wakes_a_waiter_and_close_ends_it() {
        let sub = Subscription::new();
        let waiter = {
            let sub = Arc::clone(&sub);
            std::thread::spawn(move || sub.next_batch(10, Duration::from_secs(30)))
        };
        std::thread::sleep(Duration::from_millis(20));
        sub.interrupt();
        assert_eq!(waiter.join().unwrap().unwrap_err(), Error::Interrupted);
        sub.close();
        assert!(matches!(
            sub.next_batch(1, Duration::from_secs(30)).unwrap(),
            Batch::Closed
        ));
    }

    #[test]
    fn times_out_when_empty() {
        let sub = Subscription::new();
        assert!(matches!(
            sub.next_batch(1, Duration::from_millis(5)).unwrap(),
            Batch::TimedOut
        ));
    }
}
