//! The bounded in-memory FIFO of publishes waiting for a writable Redis
//! (COMPAT.md §4.2.8, with per-message options kept, §9 Q17).

use std::collections::VecDeque;

use crate::backend::PublishOptions;

#[derive(Debug, Clone)]
pub struct Queued {
    /// Identifies the entry: the flusher removes the head only if it is still
    /// the entry it published (the bound may have dropped it meanwhile).
    pub seq: u64,
    pub channel: String,
    pub data: String,
    pub opts: PublishOptions,
}

#[derive(Debug, Default)]
pub struct PublishQueue {
    items: VecDeque<Queued>,
    next_seq: u64,
    /// A flush task is running for this queue.
    pub flushing: bool,
    /// The entry the flush task is publishing now. The bound never drops
    /// it: it may be stored already, and a message counted as dropped must
    /// never arrive.
    sending: Option<u64>,
}

impl PublishQueue {
    /// Appends a publish; past `bound` the oldest entries are dropped and
    /// returned so that the caller can count and log them.
    pub fn push(
        &mut self,
        channel: &str,
        data: &str,
        opts: &PublishOptions,
        bound: i64,
    ) -> Vec<Queued> {
        self.next_seq += 1;
        self.items.push_back(Queued {
            seq: self.next_seq,
            channel: channel.to_string(),
            data: data.to_string(),
            opts: opts.clone(),
        });
        let bound = usize::try_from(bound.max(0)).unwrap_or(usize::MAX);
        let mut dropped = Vec::new();
        while self.items.len() > bound {
            let oldest = usize::from(
                self.items
                    .front()
                    .is_some_and(|q| Some(q.seq) == self.sending),
            );
            match self.items.remove(oldest) {
                Some(entry) => dropped.push(entry),
                None => break,
            }
        }
        dropped
    }

    #[cfg(test)]
    fn front(&self) -> Option<&Queued> {
        self.items.front()
    }

    /// The head, marked as being published (until `sent`).
    pub fn start_sending(&mut self) -> Option<Queued> {
        let head = self.items.front()?.clone();
        self.sending = Some(head.seq);
        Some(head)
    }

    /// Ends the attempt begun by `start_sending`; with `remove`, takes the
    /// entry off the queue (true if it was still there).
    pub fn finish_sending(&mut self, seq: u64, remove: bool) -> bool {
        self.sending = None;
        remove && self.pop_if(seq)
    }

    /// Removes the head if it is entry `seq`.
    pub fn pop_if(&mut self, seq: u64) -> bool {
        if self.items.front().is_some_and(|q| q.seq == seq) {
            self.items.pop_front();
            true
        } else {
            false
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn clear(&mut self) -> usize {
        let n = self.items.len();
        self.items.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_drops_the_oldest_past_the_bound() {
        let mut q = PublishQueue::default();
        let opts = PublishOptions {
            max_backlog_age: Some(5),
            ..Default::default()
        };
        assert!(q.push("/a", "1", &opts, 2).is_empty());
        assert!(q.push("/a", "2", &opts, 2).is_empty());
        let dropped = q.push("/a", "3", &opts, 2);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].data, "1");
        assert_eq!(q.len(), 2);
        let head = q.front().unwrap().clone();
        assert_eq!(head.data, "2");
        assert_eq!(head.opts.max_backlog_age, Some(5));
        assert!(q.pop_if(head.seq));
        assert!(!q.pop_if(head.seq));
        assert_eq!(q.front().unwrap().data, "3");
    }

    #[test]
    fn a_head_dropped_meanwhile_is_not_popped_twice() {
        let mut q = PublishQueue::default();
        let opts = PublishOptions::default();
        q.push("/a", "1", &opts, 1);
        let head = q.front().unwrap().seq;
        q.push("/a", "2", &opts, 1); // drops "1"
        assert!(!q.pop_if(head));
        assert_eq!(q.front().unwrap().data, "2");
    }

    #[test]
    fn the_entry_being_sent_is_never_dropped() {
        let mut q = PublishQueue::default();
        let opts = PublishOptions::default();
        q.push("/a", "1", &opts, 2);
        q.push("/a", "2", &opts, 2);
        let head = q.start_sending().unwrap();
        let dropped = q.push("/a", "3", &opts, 2);
        assert_eq!(
            dropped.iter().map(|d| d.data.as_str()).collect::<Vec<_>>(),
            ["2"]
        );
        assert!(q.finish_sending(head.seq, true));
        assert_eq!(q.front().unwrap().data, "3");
        // With the attempt over, the bound drops the oldest again.
        q.push("/a", "4", &opts, 1);
        assert_eq!(q.front().unwrap().data, "4");
    }

    #[test]
    fn a_zero_bound_keeps_nothing() {
        let mut q = PublishQueue::default();
        assert_eq!(q.push("/a", "1", &PublishOptions::default(), 0).len(), 1);
        assert!(q.is_empty());
    }
}
