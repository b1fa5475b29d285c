//! A per-process cache of encoded channel → last message id, fed by a
//! backend's firehose, that answers the `last_ids` round trip of a web poll
//! (COMPAT.md §3.4 step 1) when it can be trusted. Used by web polls only:
//! the Ruby API (`last_id`, `last_ids`) always reads the storage.
//!
//! Why values can be trusted: the firehose hands over every message stored
//! in this database, in global-id order, so an entry that was read from the
//! storage and then updated by every later message is the storage's value,
//! up to the pub/sub delay. A lagging value is harmless for a poll (the
//! message is in the backlog next time, or arrives live to a long poll,
//! which is registered before its backlog is read); a value that is too
//! high would hide messages. Values only get too high when the storage
//! forgets ids without publishing anything (keys expiring, another process's
//! `reset!`), which is why trust lasts [`TRUST_FOR`] after a read only.
//!
//! Rules:
//! 1. Nothing is trusted unless the firehose is live ([`LastIdCache::go_live`]);
//!    losing continuity ([`LastIdCache::go_dark`]) or a storage change
//!    ([`LastIdCache::clear`]) forgets everything and starts a new epoch. A
//!    storage read is kept only when it was sent while live ([`Ticket`]) and
//!    no clear happened before its answer ([`LastIdCache::fill`]).
//! 2. A firehose message sets its channel's entry (assignment: ids restart
//!    after a reset); a storage read raises an entry that a firehose message
//!    or a publish wrote since the read was sent (that value may be newer),
//!    and replaces it otherwise.
//! 3. This process's publishes raise the entry at once (read your own
//!    writes; raise only, as publishes of several threads return out of order).
//! 4. An entry is trusted for [`TRUST_FOR`] after the storage read that
//!    confirmed it was sent; other updates change its value, not its trust.
//! 5. At most [`CAPACITY`] entries: beyond that, entries out of trust are
//!    swept (at most once per [`TRUST_FOR`]) and nothing is inserted while
//!    still full.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::sync::Mutex;

/// How long a storage read is trusted.
pub const TRUST_FOR: Duration = Duration::from_secs(1);
/// The most entries kept.
pub const CAPACITY: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    id: i64,
    /// The write counter when this entry was last written.
    written: u64,
    /// When the storage read that confirmed it was sent.
    confirmed: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Bumped by every clear.
    epoch: u64,
    /// Bumped by every write.
    writes: u64,
    live: bool,
    last_sweep: Option<Instant>,
}

impl State {
    fn forget(&mut self) {
        self.entries = HashMap::new();
        self.epoch += 1;
        self.writes += 1;
    }

    /// Room for one more entry, sweeping entries out of trust if full.
    fn has_room(&mut self, trust_for: Duration, capacity: usize) -> bool {
        if self.entries.len() < capacity {
            return true;
        }
        let now = Instant::now();
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < trust_for)
        {
            return false;
        }
        self.last_sweep = Some(now);
        self.entries
            .retain(|_, e| e.confirmed.is_some_and(|t| trusted(t, now, trust_for)));
        self.entries.len() < capacity
    }
}

fn trusted(confirmed: Instant, now: Instant, trust_for: Duration) -> bool {
    now.saturating_duration_since(confirmed) < trust_for
}

/// Taken before a storage read is sent; [`LastIdCache::fill`] keeps its
/// result only if nothing was cleared since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
    writes: u64,
    sent: Instant,
}

#[derive(Debug)]
pub struct LastIdCache {
    state: Mutex<State>,
    trust_for: Duration,
    capacity: usize,
}

impl Default for LastIdCache {
    fn default() -> Self {
        Self::with_limits(TRUST_FOR, CAPACITY)
    }
}

impl LastIdCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_limits(trust_for: Duration, capacity: usize) -> Self {
        LastIdCache {
            state: Mutex::new(State::default()),
            trust_for,
            capacity,
        }
    }

    /// The firehose is subscribed and delivers every message from now on.
    pub fn go_live(&self) {
        self.state.lock().live = true;
    }

    /// The firehose lost (or may have lost) continuity: forget everything
    /// and trust nothing until [`go_live`](Self::go_live).
    pub fn go_dark(&self) {
        let mut state = self.state.lock();
        state.live = false;
        state.forget();
    }

    /// The storage changed in a way no message reports (reset, expiry):
    /// forget everything. Reads sent before are dropped when they answer.
    pub fn clear(&self) {
        self.state.lock().forget();
    }

    #[cfg(test)]
    fn is_live(&self) -> bool {
        self.state.lock().live
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state.lock().entries.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids of `channels` if every one is trusted at `now`.
    pub fn lookup(&self, channels: &[String], now: Instant) -> Option<Vec<i64>> {
        let state = self.state.lock();
        if !state.live {
            return None;
        }
        channels
            .iter()
            .map(|c| match state.entries.get(c.as_str()) {
                Some(Entry {
                    id,
                    confirmed: Some(t),
                    ..
                }) if trusted(*t, now, self.trust_for) => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// To take right before sending a storage read whose result goes to
    /// [`fill`](Self::fill); `None` while the firehose is not live (the
    /// result must not be kept then).
    pub fn ticket(&self, now: Instant) -> Option<Ticket> {
        let state = self.state.lock();
        state.live.then_some(Ticket {
            epoch: state.epoch,
            writes: state.writes,
            sent: now,
        })
    }

    /// Keeps the storage's answer `ids` (for `channels`, in order) to a read
    /// sent with `ticket`, unless the cache was cleared in between.
    pub fn fill(&self, ticket: Ticket, channels: &[String], ids: &[i64]) {
        let mut state = self.state.lock();
        if !state.live || state.epoch != ticket.epoch {
            return;
        }
        state.writes += 1;
        let writes = state.writes;
        for (channel, &id) in channels.iter().zip(ids) {
            if let Some(entry) = state.entries.get_mut(channel.as_str()) {
                if entry.written > ticket.writes {
                    // Written since the read was sent: may be newer.
                    entry.id = entry.id.max(id);
                } else {
                    entry.id = id;
                }
                entry.written = writes;
                entry.confirmed = Some(ticket.sent);
            } else if state.has_room(self.trust_for, self.capacity) {
                state.entries.insert(
                    channel.clone(),
                    Entry {
                        id,
                        written: writes,
                        confirmed: Some(ticket.sent),
                    },
                );
            }
        }
    }

    /// The firehose handed over a message with id `id` (rule 2): the
    /// channel's last id is now `id`.
    pub fn delivered(&self, channel: &str, id: i64) {
        self.write(channel, id, |_, id| id);
    }

    /// This process published a message that got id `id` (rule 3).
    pub fn published(&self, channel: &str, id: i64) {
        self.write(channel, id, i64::max);
    }

    fn write(&self, channel: &str, id: i64, merge: impl Fn(i64, i64) -> i64) {
        let mut state = self.state.lock();
        if !state.live {
            return;
        }
        state.writes += 1;
        let writes = state.writes;
        if let Some(entry) = state.entries.get_mut(channel) {
            entry.id = merge(entry.id, id);
            entry.written = writes;
        } else if state.has_room(self.trust_for, self.capacity) {
            // Not trusted yet, but a read in flight must not lower it.
            state.entries.insert(
                channel.to_string(),
                Entry {
                    id,
                    written: writes,
                    confirmed: None,
                },
            );
        }
    }
}

/// Whether cached ids may answer a poll that requested `requested` (in the
/// same order): not for a look-behind (`< -1`, counted back from the exact
/// last id), and not when the client is ahead of a cached id (it may have
/// seen a newer id through another process; only the storage can tell it
/// that it is really ahead of the bus).
pub fn answers(requested: &[Option<i64>], ids: &[i64]) -> bool {
    requested.len() == ids.len()
        && requested.iter().zip(ids).all(|(r, id)| match *r {
            None | Some(-1) => true,
            Some(r) => r >= 0 && r <= *id,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn live() -> LastIdCache {
        let c = LastIdCache::new();
        c.go_live();
        c
    }

    #[test]
    fn a_filled_read_answers_until_its_trust_runs_out() {
        let c = live();
        let t0 = Instant::now();
        let chans = names(&["/a", "/b"]);
        assert_eq!(c.lookup(&chans, t0), None);
        let ticket = c.ticket(t0).unwrap();
        c.fill(ticket, &chans, &[3, 0]);
        assert_eq!(c.lookup(&chans, t0), Some(vec![3, 0]));
        assert_eq!(
            c.lookup(&chans, t0 + Duration::from_millis(999)),
            Some(vec![3, 0])
        );
        // Rule 4: trust is counted from when the read was sent.
        assert_eq!(c.lookup(&chans, t0 + TRUST_FOR), None);
        // Every channel must be trusted.
        assert_eq!(c.lookup(&names(&["/a", "/c"]), t0), None);
        assert_eq!(c.lookup(&names(&["/a"]), t0), Some(vec![3]));
        assert_eq!(c.lookup(&[], t0), Some(vec![]));
    }

    #[test]
    fn nothing_is_trusted_or_kept_unless_live() {
        let c = LastIdCache::new();
        let t0 = Instant::now();
        let chans = names(&["/a"]);
        // Rule 1: no ticket while the firehose is not subscribed.
        assert_eq!(c.ticket(t0), None);
        c.delivered("/a", 4);
        assert!(c.is_empty());
        c.go_live();
        let ticket = c.ticket(t0).unwrap();
        c.fill(ticket, &chans, &[4]);
        assert_eq!(c.lookup(&chans, t0), Some(vec![4]));
        // Any loss of continuity forgets everything and stops trusting.
        c.go_dark();
        assert!(c.is_empty());
        assert_eq!(c.lookup(&chans, t0), None);
        assert_eq!(c.ticket(t0), None);
        c.go_live();
        assert_eq!(c.lookup(&chans, t0), None);
    }

    #[test]
    fn a_read_sent_while_dark_is_dropped_even_if_it_answers_once_live() {
        let c = LastIdCache::new();
        let t0 = Instant::now();
        assert_eq!(c.ticket(t0), None);
        c.go_live();
        let ticket = c.ticket(t0).unwrap();
        c.go_dark();
        c.go_live();
        c.fill(ticket, &names(&["/a"]), &[7]);
        assert_eq!(c.lookup(&names(&["/a"]), t0), None);
    }

    #[test]
    fn a_read_racing_a_clear_is_dropped() {
        let c = live();
        let t0 = Instant::now();
        let chans = names(&["/a"]);
        let before = c.ticket(t0).unwrap();
        c.clear(); // e.g. reset! while the MGET was in flight
        c.fill(before, &chans, &[9]);
        assert_eq!(c.lookup(&chans, t0), None);
        assert!(c.is_empty());
        let after = c.ticket(t0).unwrap();
        c.fill(after, &chans, &[0]);
        assert_eq!(c.lookup(&chans, t0), Some(vec![0]));
        // A clear also drops what was trusted.
        c.clear();
        assert_eq!(c.lookup(&chans, t0), None);
        assert!(c.is_live());
    }

    #[test]
    fn firehose_messages_assign_and_do_not_extend_trust() {
        let c = live();
        let t0 = Instant::now();
        let chans = names(&["/a"]);
        c.fill(c.ticket(t0).unwrap(), &chans, &[5]);
        c.delivered("/a", 6);
        assert_eq!(c.lookup(&chans, t0), Some(vec![6]));
        // Assignment: after a reset ids restart lower.
        c.delivered("/a", 1);
        assert_eq!(c.lookup(&chans, t0), Some(vec![1]));
        // Not trusted past the read's trust, however recent the message.
        c.delivered("/a", 2);
        assert_eq!(c.lookup(&chans, t0 + TRUST_FOR), None);
        // A message alone does not make an entry trusted.
        c.delivered("/b", 1);
        assert_eq!(c.lookup(&names(&["/b"]), t0), None);
    }

    #[test]
    fn a_read_raises_entries_written_since_it_was_sent_and_replaces_older_ones() {
        let c = live();
        let t0 = Instant::now();
        let chans = names(&["/a", "/b", "/c"]);
        c.delivered("/a", 10); // before the read: the read is newer
        let ticket = c.ticket(t0).unwrap();
        c.delivered("/b", 8); // during the read, newer than its answer
        c.delivered("/c", 2); // during the read, older than its answer (it saw 3)
        c.fill(ticket, &chans, &[0, 7, 3]);
        // /a: keys deleted without a message (foreign reset!): the read wins.
        assert_eq!(c.lookup(&chans, t0), Some(vec![0, 8, 3]));
        // A new channel whose first message arrives during the read.
        let ticket = c.ticket(t0).unwrap();
        c.delivered("/d", 1);
        c.fill(ticket, &names(&["/d"]), &[0]);
        assert_eq!(c.lookup(&names(&["/d"]), t0), Some(vec![1]));
        // The next read replaces an entry nothing wrote since.
        let later = t0 + Duration::from_millis(500);
        c.fill(c.ticket(later).unwrap(), &names(&["/b"]), &[0]);
        assert_eq!(c.lookup(&names(&["/b"]), later), Some(vec![0]));
        // ...and extends its trust from that read.
        assert_eq!(
            c.lookup(&names(&["/b"]), t0 + Duration::from_millis(1200)),
            Some(vec![0])
        );
    }

    #[test]
    fn own_publishes_show_at_once_and_win_over_an_older_read() {
        let c = live();
        let t0 = Instant::now();
        let chans = names(&["/a"]);
        c.fill(c.ticket(t0).unwrap(), &chans, &[4]);
        let ticket = c.ticket(t0).unwrap();
        c.published("/a", 5); // our publish returned 5 while a read was in flight
        assert_eq!(c.lookup(&chans, t0), Some(vec![5]));
        c.fill(ticket, &chans, &[4]);
        assert_eq!(c.lookup(&chans, t0), Some(vec![5]));
        // Two threads' publishes returning out of order.
        c.published("/a", 7);
        c.published("/a", 6);
        assert_eq!(c.lookup(&chans, t0), Some(vec![7]));
        // A first publish to a channel is not trusted before a read.
        c.published("/new", 1);
        assert_eq!(c.lookup(&names(&["/new"]), t0), None);
    }

    #[test]
    fn size_is_bounded_and_entries_out_of_trust_are_swept() {
        let c = LastIdCache::with_limits(TRUST_FOR, 2);
        c.go_live();
        let t0 = Instant::now();
        c.fill(c.ticket(t0).unwrap(), &names(&["/a", "/b"]), &[1, 2]);
        // Full of trusted entries: nothing more is inserted.
        c.fill(c.ticket(t0).unwrap(), &names(&["/c"]), &[3]);
        c.delivered("/d", 4);
        assert_eq!(c.len(), 2);
        assert_eq!(c.lookup(&names(&["/c"]), t0), None);
        // Existing entries still update.
        c.delivered("/a", 5);
        assert_eq!(c.lookup(&names(&["/a", "/b"]), t0), Some(vec![5, 2]));

        // Entries never confirmed by a read are swept when full.
        let c = LastIdCache::with_limits(TRUST_FOR, 2);
        c.go_live();
        c.delivered("/x", 1);
        c.delivered("/y", 1);
        assert_eq!(c.len(), 2);
        let now = Instant::now();
        c.fill(c.ticket(now).unwrap(), &names(&["/z"]), &[3]);
        assert_eq!(c.lookup(&names(&["/z"]), now), Some(vec![3]));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn cached_ids_answer_only_plain_polls_not_behind_the_client() {
        assert!(answers(&[None, Some(-1), Some(0), Some(5)], &[3, 3, 3, 5]));
        // Look-behind needs the exact id.
        assert!(!answers(&[Some(-2)], &[3]));
        // The client knows a newer id (seen through another process?).
        assert!(!answers(&[Some(6)], &[5]));
        assert!(!answers(&[Some(1)], &[]));
        assert!(answers(&[], &[]));
    }
}
