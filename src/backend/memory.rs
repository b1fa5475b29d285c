//! The in-process memory backend (COMPAT.md §4.4). Message ids are global ids;
//! whole channels expire after `max_backlog_age` seconds without a publish.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::sync::Mutex;
use async_trait::async_trait;

use super::{epoch, Backend, DirectCall, DirectReply, PublishOptions, Settings};
use crate::bus::Hub;
use crate::error::Result;
use crate::message::Message;
use crate::subscription::Subscription;

fn new_epoch() -> (u32, Arc<str>) {
    (std::process::id(), Arc::from(epoch::generate()))
}

/// A point of the monotonic clock (time since an unspecified start).
type Tick = Duration;

/// The monotonic clock at the kernel tick's resolution (a few
/// milliseconds, far below the seconds of `max_backlog_age`): Linux reads
/// it without the hardware clock. `Instant::now` (CLOCK_MONOTONIC) here
/// was about 3% of a memory publish's wall time on a virtual machine
/// (`perf record`), for a few dozen instructions.
fn now() -> Tick {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid place for the result. Both clocks count
        // from the same start, the coarse one lagging by at most a tick.
        let read = unsafe {
            libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) == 0
                || libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) == 0
        };
        if read {
            return Duration::new(
                ts.tv_sec.max(0) as u64,
                ts.tv_nsec.clamp(0, 999_999_999) as u32,
            );
        }
        Duration::ZERO
    }
    #[cfg(not(target_os = "linux"))]
    {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed()
    }
}

/// Expired channels are swept at most this often (reads check expiry lazily).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Entry {
    id: i64,
    data: String,
}

struct Channel {
    /// Shared with the global index's entries.
    name: Arc<str>,
    entries: VecDeque<Entry>,
    last_id: i64,
    newest: Tick,
    /// Set by a publish with `max_backlog_age`; sticky for later publishes.
    ttl_override: Option<i64>,
}

impl Channel {
    fn new(name: &str, now: Tick) -> Self {
        Channel {
            name: Arc::from(name),
            entries: VecDeque::new(),
            last_id: 0,
            newest: now,
            ttl_override: None,
        }
    }

    fn expired(&self, now: Tick, default_ttl: i64) -> bool {
        let ttl = self.ttl_override.unwrap_or(default_ttl).max(0) as u64;
        now.saturating_sub(self.newest) > Duration::from_secs(ttl)
    }

    /// Appends a message (trimming the channel to its size when `trim`)
    /// and returns the name for the global index.
    fn append(
        &mut self,
        entry: Entry,
        now: Tick,
        opts: &PublishOptions,
        trim: bool,
        settings: &Settings,
    ) -> Arc<str> {
        if let Some(age) = opts.max_backlog_age {
            self.ttl_override = Some(age);
        }
        self.last_id = entry.id;
        self.newest = now;
        self.entries.push_back(entry);
        if trim {
            let keep = settings.backlog_size(opts).max(0) as usize;
            if self.entries.len() > keep {
                let excess = self.entries.len() - keep;
                self.entries.drain(..excess);
            }
        }
        Arc::clone(&self.name)
    }

    fn position_after(&self, id: i64) -> usize {
        self.entries.partition_point(|e| e.id <= id)
    }
}

/// Channel names are hashed with foldhash (seeded per process): SipHash,
/// std's default, was a fifth of the store's work per publish.
type Channels = HashMap<String, Channel, foldhash::fast::RandomState>;

struct Store {
    counter: i64,
    channels: Channels,
    /// Every retained message by global id: (id, channel name).
    global: VecDeque<(i64, Arc<str>)>,
    last_sweep: Tick,
}

pub struct MemoryBackend {
    settings: Settings,
    hub: Arc<Hub>,
    store: Mutex<Store>,
    /// The storage epoch and the process it belongs to: the store lives in
    /// one process (a forked child's copy diverges from its parent's), and
    /// `reset` starts a new one.
    epoch: Mutex<(u32, Arc<str>)>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    pub fn new() -> Self {
        MemoryBackend {
            settings: Settings::default(),
            hub: Hub::new(),
            store: Mutex::new(Store {
                counter: 0,
                channels: Channels::default(),
                global: VecDeque::new(),
                last_sweep: now(),
            }),
            epoch: Mutex::new(new_epoch()),
        }
    }

    /// The store, locked in a fork guard section (connection tasks read it
    /// on runtime threads).
    fn store(&self) -> crate::fork::Locked<'_, Store> {
        crate::fork::lock(&self.store)
    }

    fn default_ttl(&self) -> i64 {
        Settings::get(&self.settings.max_backlog_age)
    }

    /// The channel if it exists and has not expired (an expired one is removed).
    fn live_channel<'a>(&self, store: &'a mut Store, name: &str) -> Option<&'a Channel> {
        let expired = store.channels.get(name)?.expired(now(), self.default_ttl());
        if expired {
            store.channels.remove(name);
            return None;
        }
        store.channels.get(name)
    }

    fn sweep(&self, store: &mut Store, now: Tick) {
        if now.saturating_sub(store.last_sweep) < SWEEP_EVERY {
            return;
        }
        store.last_sweep = now;
        let ttl = self.default_ttl();
        store.channels.retain(|_, c| !c.expired(now, ttl));
        let channels = &store.channels;
        store
            .global
            .retain(|(_, name)| channels.contains_key(&**name));
    }

    /// The global backlog's trimming: every message of id <= `id` -
    /// `max_global_backlog_size`, whatever its channel.
    fn trim_global(&self, store: &mut Store, id: i64) {
        let max_global = Settings::get(&self.settings.max_global_backlog_size);
        if id <= max_global {
            return;
        }
        let cutoff = id - max_global;
        while store.global.front().is_some_and(|(gid, _)| *gid <= cutoff) {
            let Some((gid, chan)) = store.global.pop_front() else {
                break;
            };
            if let Some(c) = store.channels.get_mut(&*chan) {
                // The channel's oldest entries (usually just the front one).
                while c.entries.front().is_some_and(|e| e.id <= gid) {
                    c.entries.pop_front();
                }
            }
        }
    }

    fn publish_now(&self, channel: &str, data: &str, opts: &PublishOptions) -> i64 {
        let mut store = self.store();
        let now = now();
        self.sweep(&mut store, now);
        store.counter += 1;
        let id = store.counter;
        let trim = id % self.settings.clear_every() == 0;
        let ttl = self.default_ttl();
        let entry = Entry {
            id,
            data: data.to_string(),
        };
        // One lookup for a channel published to before (its name is not
        // allocated again); a new or expired one starts afresh.
        let name = match store.channels.get_mut(channel) {
            Some(c) if !c.expired(now, ttl) => c.append(entry, now, opts, trim, &self.settings),
            _ => {
                let mut c = Channel::new(channel, now);
                let name = c.append(entry, now, opts, trim, &self.settings);
                store.channels.insert(channel.to_string(), c);
                name
            }
        };
        store.global.push_back((id, name));
        if trim {
            // After the channel's own trimming: the same messages remain
            // in either order (both drop a channel's oldest).
            self.trim_global(&mut store, id);
        }
        // Delivered under the lock so that subscribers see global-id order.
        self.hub
            .deliver_with(|| Message::new(id, id, channel, data));
        id
    }

    fn last_id_now(&self, channel: &str) -> i64 {
        let mut store = self.store();
        self.live_channel(&mut store, channel)
            .map_or(0, |c| c.last_id)
    }

    fn last_ids_now(&self, channels: &[String]) -> Vec<i64> {
        let mut store = self.store();
        channels
            .iter()
            .map(|name| self.live_channel(&mut store, name).map_or(0, |c| c.last_id))
            .collect()
    }

    fn backlog_now(&self, channel: &str, last_id: i64) -> Vec<Message> {
        let mut store = self.store();
        let Some(c) = self.live_channel(&mut store, channel) else {
            return Vec::new();
        };
        let start = c.position_after(last_id);
        c.entries
            .range(start..)
            .map(|e| Message::new(e.id, e.id, channel, e.data.clone()))
            .collect()
    }

    fn global_backlog_locked(&self, store: &mut Store, last_id: i64) -> Vec<Message> {
        let now = now();
        let ttl = self.default_ttl();
        let start = store.global.partition_point(|(id, _)| *id <= last_id);
        let mut out = Vec::new();
        for (id, name) in store.global.range(start..) {
            let Some(c) = store.channels.get(&**name) else {
                continue;
            };
            if c.expired(now, ttl) {
                continue;
            }
            let pos = c.entries.partition_point(|e| e.id < *id);
            if let Some(e) = c.entries.get(pos).filter(|e| e.id == *id) {
                out.push(Message::new(e.id, e.id, &**name, e.data.clone()));
            }
        }
        out
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn settings(&self) -> &Settings {
        &self.settings
    }

    fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    async fn publish(
        &self,
        channel: &str,
        data: &str,
        opts: &PublishOptions,
    ) -> Result<Option<i64>> {
        Ok(Some(self.publish_now(channel, data, opts)))
    }

    async fn last_id(&self, channel: &str) -> Result<i64> {
        Ok(self.last_id_now(channel))
    }

    async fn last_ids(&self, channels: &[String]) -> Result<Vec<i64>> {
        Ok(self.last_ids_now(channels))
    }

    async fn backlog(&self, channel: &str, last_id: i64) -> Result<Vec<Message>> {
        Ok(self.backlog_now(channel, last_id))
    }

    /// Every request/response call: nothing here waits but for the store's
    /// lock, held for microseconds.
    fn immediate(&self, call: DirectCall<'_>) -> Option<Result<DirectReply>> {
        Some(Ok(match call {
            DirectCall::Publish {
                channel,
                data,
                opts,
            } => DirectReply::Published(Some(self.publish_now(channel, data, opts))),
            DirectCall::LastId(channel) => DirectReply::Id(self.last_id_now(channel)),
            DirectCall::LastIds(channels) => DirectReply::Ids(self.last_ids_now(channels)),
            DirectCall::Backlog(channel, last_id) => {
                DirectReply::Messages(self.backlog_now(channel, last_id))
            }
        }))
    }

    async fn global_backlog(&self, last_id: i64) -> Result<Vec<Message>> {
        let mut store = self.store();
        Ok(self.global_backlog_locked(&mut store, last_id))
    }

    async fn get_message(&self, channel: &str, message_id: i64) -> Result<Option<Message>> {
        let mut store = self.store();
        let Some(c) = self.live_channel(&mut store, channel) else {
            return Ok(None);
        };
        let pos = c.entries.partition_point(|e| e.id < message_id);
        Ok(c.entries
            .get(pos)
            .filter(|e| e.id == message_id)
            .map(|e| Message::new(e.id, e.id, channel, e.data.clone())))
    }

    async fn reset(&self) -> Result<()> {
        let mut store = self.store();
        store.counter = 0;
        store.channels.clear();
        store.global.clear();
        *crate::fork::lock(&self.epoch) = new_epoch();
        self.hub.storage_reset();
        Ok(())
    }

    fn epoch(&self) -> Option<Arc<str>> {
        let mut slot = crate::fork::lock(&self.epoch);
        if slot.0 != std::process::id() {
            *slot = new_epoch();
        }
        Some(Arc::clone(&slot.1))
    }

    async fn expire_all_backlogs(&self) -> Result<()> {
        let mut store = self.store();
        store.channels.clear();
        store.global.clear();
        Ok(())
    }

    async fn subscribe(&self, last_id: Option<i64>) -> Result<Arc<Subscription>> {
        let sub = Subscription::new();
        let mut store = self.store();
        if let Some(last_id) = last_id {
            sub.prefill(self.global_backlog_locked(&mut store, last_id));
        }
        sub.set_start(Some(store.counter));
        self.hub.add_subscription(Arc::clone(&sub));
        Ok(sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::Batch;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn publish(b: &MemoryBackend, channel: &str, data: &str) -> i64 {
        block(b.publish(channel, data, &PublishOptions::default()))
            .unwrap()
            .unwrap()
    }

    fn ids(messages: &[Message]) -> Vec<i64> {
        messages.iter().map(|m| m.message_id).collect()
    }

    #[test]
    fn message_ids_are_global_ids() {
        let b = MemoryBackend::new();
        assert_eq!(publish(&b, "/a", "1"), 1);
        assert_eq!(publish(&b, "/b", "2"), 2);
        assert_eq!(publish(&b, "/a", "3"), 3);
        assert_eq!(block(b.last_id("/a")).unwrap(), 3);
        assert_eq!(
            block(b.last_ids(&["/b".into(), "/zz".into(), "/a".into()])).unwrap(),
            vec![2, 0, 3]
        );
        assert_eq!(ids(&block(b.backlog("/a", 0)).unwrap()), vec![1, 3]);
        assert_eq!(ids(&block(b.backlog("/a", 1)).unwrap()), vec![3]);
        assert_eq!(ids(&block(b.global_backlog(1)).unwrap()), vec![2, 3]);
        assert_eq!(block(b.get_message("/b", 2)).unwrap().unwrap().data, "2");
        assert_eq!(block(b.get_message("/b", 3)).unwrap(), None);
    }

    #[test]
    fn trims_channels_by_count_and_the_global_backlog_by_id_window() {
        let b = MemoryBackend::new();
        Settings::set(&b.settings.max_backlog_size, 2);
        Settings::set(&b.settings.max_global_backlog_size, 3);
        for i in 0..4 {
            publish(&b, "/a", &i.to_string());
        }
        assert_eq!(ids(&block(b.backlog("/a", 0)).unwrap()), vec![3, 4]);
        publish(&b, "/b", "x");
        publish(&b, "/b", "y");
        // global window: ids > 6 - 3
        assert_eq!(ids(&block(b.global_backlog(0)).unwrap()), vec![4, 5, 6]);
        assert_eq!(ids(&block(b.backlog("/a", 0)).unwrap()), vec![4]);
        // the channel's last id survives trimming
        assert_eq!(block(b.last_id("/a")).unwrap(), 4);
    }

    #[test]
    fn channel_and_global_trimming_keep_what_both_limits_allow() {
        let b = MemoryBackend::new();
        Settings::set(&b.settings.max_backlog_size, 3);
        Settings::set(&b.settings.max_global_backlog_size, 5);
        let names = ["/a", "/b", "/c"];
        let mut published: Vec<(i64, &str)> = Vec::new();
        for n in 0..40u32 {
            // An uneven order: runs on one channel, others left alone.
            let name = names[((n * 7 + n / 5) % 3) as usize];
            let id = publish(&b, name, &n.to_string());
            published.push((id, name));
            for name in names {
                // The model: the channel's last 3 messages with an id above
                // the global window.
                let mine: Vec<i64> = published
                    .iter()
                    .filter(|(_, c)| *c == name)
                    .map(|(id, _)| *id)
                    .collect();
                let expected: Vec<i64> = mine[mine.len().saturating_sub(3)..]
                    .iter()
                    .copied()
                    .filter(|i| *i > id - 5)
                    .collect();
                assert_eq!(
                    ids(&block(b.backlog(name, 0)).unwrap()),
                    expected,
                    "{name} after {id}"
                );
            }
            let global = ids(&block(b.global_backlog(0)).unwrap());
            assert!(
                global.iter().all(|i| *i > id - 5),
                "global after {id}: {global:?}"
            );
        }
    }

    #[test]
    fn clear_every_delays_trimming_and_per_publish_size_overrides() {
        let b = MemoryBackend::new();
        Settings::set(&b.settings.max_backlog_size, 1);
        Settings::set(&b.settings.clear_every, 3);
        publish(&b, "/a", "1");
        publish(&b, "/a", "2");
        assert_eq!(ids(&block(b.backlog("/a", 0)).unwrap()), vec![1, 2]);
        let opts = PublishOptions {
            max_backlog_size: Some(2),
            ..Default::default()
        };
        block(b.publish("/a", "3", &opts)).unwrap();
        assert_eq!(ids(&block(b.backlog("/a", 0)).unwrap()), vec![2, 3]);
    }

    #[test]
    fn whole_channels_expire_and_their_ids_read_zero() {
        let b = MemoryBackend::new();
        let opts = PublishOptions {
            max_backlog_age: Some(0),
            ..Default::default()
        };
        block(b.publish("/a", "1", &opts)).unwrap();
        publish(&b, "/keep", "2");
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(block(b.last_id("/a")).unwrap(), 0);
        assert!(block(b.backlog("/a", 0)).unwrap().is_empty());
        assert_eq!(ids(&block(b.global_backlog(0)).unwrap()), vec![2]);
        // the counter keeps counting
        assert_eq!(publish(&b, "/a", "3"), 3);
    }

    #[test]
    fn reset_restarts_ids_and_expire_keeps_the_counter() {
        let b = MemoryBackend::new();
        publish(&b, "/a", "1");
        block(b.expire_all_backlogs()).unwrap();
        assert_eq!(block(b.last_id("/a")).unwrap(), 0);
        assert_eq!(publish(&b, "/a", "2"), 2);
        block(b.reset()).unwrap();
        assert_eq!(publish(&b, "/a", "3"), 1);
    }

    #[test]
    fn subscription_with_last_id_replays_then_goes_live_without_duplicates() {
        let b = MemoryBackend::new();
        publish(&b, "/a", "1");
        publish(&b, "/a", "2");
        let sub = block(b.subscribe(Some(1))).unwrap();
        publish(&b, "/a", "3");
        match sub.next_batch(100, Duration::from_millis(10)).unwrap() {
            Batch::Messages(m) => assert_eq!(
                m.iter().map(|m| m.global_id).collect::<Vec<_>>(),
                vec![2, 3]
            ),
            other => panic!("unexpected {other:?}"),
        }
        block(b.global_unsubscribe());
        assert!(matches!(
            sub.next_batch(1, Duration::from_millis(10)).unwrap(),
            Batch::Closed
        ));
        assert!(!b.is_subscribed());
    }
}
