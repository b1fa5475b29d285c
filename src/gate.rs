//! Messages whose envelope only Ruby can judge: channels under a
//! `register_client_message_filter` prefix, and every message when a custom
//! transport codec is configured. Rust hands such messages to a Ruby thread
//! (as a job queue) and waits for its verdict: the decoded envelope re-encoded
//! as JSON, or nothing when a filter denies the message. Verdicts are cached
//! by (encoded channel, message id): the filter sees only the message, so one
//! verdict holds for every client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::sync::{Mutex, RwLock};
use tokio::sync::oneshot;

use crate::envelope::Envelope;
use crate::message::Message;
use crate::subscription::Subscription;

/// How long a request waits for Ruby before treating a message as denied.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(5);
/// Cached verdicts kept before the cache starts afresh.
const CACHE_LIMIT: usize = 50_000;

type Key = (String, i64);
type Verdict = Option<Arc<Envelope>>;

#[derive(Default)]
pub struct Gate {
    prefixes: RwLock<Vec<String>>,
    /// A Regexp filter or a custom codec: every message goes through Ruby.
    everything: AtomicBool,
    cache: Mutex<HashMap<Key, Verdict>>,
    waiting: Mutex<HashMap<Key, Vec<oneshot::Sender<Verdict>>>>,
    jobs: Arc<Subscription>,
}

impl Gate {
    pub fn new() -> Arc<Self> {
        Arc::new(Gate::default())
    }

    /// What Ruby judges from now on; cached verdicts are dropped.
    pub fn configure(&self, prefixes: Vec<String>, everything: bool) {
        *self.prefixes.write() = prefixes;
        self.everything.store(everything, Ordering::SeqCst);
        self.cache.lock().clear();
    }

    pub fn is_active(&self) -> bool {
        self.everything.load(Ordering::SeqCst) || !self.prefixes.read().is_empty()
    }

    /// Whether Ruby must judge a message of this (decoded) channel.
    pub fn judges(&self, channel: &str) -> bool {
        self.everything.load(Ordering::SeqCst)
            || self
                .prefixes
                .read()
                .iter()
                .any(|p| channel.starts_with(p.as_str()))
    }

    /// The queue the Ruby thread drains.
    pub fn jobs(&self) -> Arc<Subscription> {
        Arc::clone(&self.jobs)
    }

    /// The envelope of `message` if its web clients may see it; `channel` is
    /// the decoded channel. Messages Ruby need not judge are parsed here.
    pub async fn envelope(&self, message: &Message, channel: &str) -> Verdict {
        if !self.judges(channel) {
            return match Envelope::parse(&message.data) {
                Ok(envelope) => Some(Arc::new(envelope)),
                Err(e) => {
                    crate::log::warn(format!(
                        "skipping message {} on {}: {e}",
                        message.global_id, message.channel
                    ));
                    None
                }
            };
        }
        let key = (message.channel.clone(), message.message_id);
        let (tx, rx) = oneshot::channel();
        let first = {
            // Checked under the waiting lock: `resolve` caches before it takes
            // that lock, so a verdict is either seen here or sent to us.
            let mut waiting = self.waiting.lock();
            if let Some(verdict) = self.cache.lock().get(&key) {
                return verdict.clone();
            }
            let list = waiting.entry(key.clone()).or_default();
            list.push(tx);
            list.len() == 1
        };
        if first {
            let m = crate::metrics::gate();
            m.jobs.fetch_add(1, Ordering::Relaxed);
            m.waiting.fetch_add(1, Ordering::Relaxed);
            self.jobs.push(&Arc::new(message.clone()));
        }
        match tokio::time::timeout(VERDICT_TIMEOUT, rx).await {
            Ok(Ok(verdict)) => verdict,
            _ => {
                crate::log::warn(format!(
                    "no verdict from the client message filters for message {} on {} within {:?}: withheld",
                    message.global_id, message.channel, VERDICT_TIMEOUT
                ));
                if self.waiting.lock().remove(&key).is_some() {
                    let m = crate::metrics::gate();
                    m.waiting.fetch_sub(1, Ordering::Relaxed);
                    m.timed_out.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
        }
    }

    /// Ruby's verdict: `envelope_json` is the envelope in the JSON codec's
    /// format, or `None` when the message is denied.
    pub fn resolve(&self, channel: String, message_id: i64, envelope_json: Option<&str>) {
        let verdict = envelope_json.and_then(|json| match Envelope::parse(json) {
            Ok(envelope) => Some(Arc::new(envelope)),
            Err(e) => {
                crate::log::warn(format!(
                    "unusable verdict for message {message_id} on {channel}: {e}"
                ));
                None
            }
        });
        let key = (channel, message_id);
        {
            let mut cache = self.cache.lock();
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(key.clone(), verdict.clone());
        }
        let Some(waiters) = self.waiting.lock().remove(&key) else {
            return;
        };
        crate::metrics::gate()
            .waiting
            .fetch_sub(1, Ordering::Relaxed);
        for tx in waiters {
            let _ = tx.send(verdict.clone());
        }
    }

    /// Stops handing out jobs (the middleware stopped).
    pub fn close(&self) {
        self.jobs.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::Batch;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn unjudged_channels_are_parsed_in_rust() {
        let gate = Gate::new();
        gate.configure(vec!["/secret".into()], false);
        let m = Message::new(
            1,
            1,
            "/open",
            r#"{"data":1,"user_ids":null,"group_ids":null,"client_ids":null}"#,
        );
        let verdict = rt().block_on(gate.envelope(&m, "/open"));
        assert_eq!(
            verdict.map(|e| e.data.get().to_string()),
            Some("1".to_string())
        );
        assert!(gate.judges("/secret/x"));
        assert!(!gate.judges("/open"));
    }

    #[test]
    fn judged_messages_wait_for_one_ruby_verdict_shared_by_all_waiters() {
        let rt = rt();
        let gate = Gate::new();
        gate.configure(vec!["/secret".into()], false);
        let m = Message::new(7, 3, "/secret$|$s", "opaque");
        let a = rt.spawn({
            let (gate, m) = (Arc::clone(&gate), m.clone());
            async move { gate.envelope(&m, "/secret").await }
        });
        let b = rt.spawn({
            let (gate, m) = (Arc::clone(&gate), m.clone());
            async move { gate.envelope(&m, "/secret").await }
        });
        let job = loop {
            if let Batch::Messages(jobs) = gate
                .jobs()
                .next_batch(10, Duration::from_millis(50))
                .unwrap()
            {
                break jobs;
            }
        };
        assert_eq!(job.len(), 1, "one job per message, however many wait");
        std::thread::sleep(Duration::from_millis(20));
        gate.resolve(
            "/secret$|$s".into(),
            3,
            Some(r#"{"data":"ok","user_ids":null,"group_ids":null,"client_ids":null}"#),
        );
        for handle in [a, b] {
            let verdict = rt.block_on(handle).unwrap();
            assert_eq!(
                verdict.map(|e| e.data.get().to_string()),
                Some("\"ok\"".to_string())
            );
        }
        // cached: no new job
        let cached = rt.block_on(gate.envelope(&m, "/secret"));
        assert!(cached.is_some());
        gate.resolve("/secret$|$s".into(), 4, None);
        let denied = rt.block_on(gate.envelope(&Message::new(8, 4, "/secret$|$s", "x"), "/secret"));
        assert!(denied.is_none());
    }
}
