//! The Redis backend (COMPAT.md §4.2), storage-compatible with the reference
//! gem: same keys, same sorted-set members, same Lua publish algorithm and the
//! same pub/sub payloads, so reference processes and ours can share a Redis.
//!
//! Deviations allowed by COMPAT.md §9: both per-publish limits are honoured
//! (Q3), `expire_all_backlogs` also deletes channel backlogs (Q4), nothing is
//! broadcast on unsubscribe and a foreign `$$UNSUBSCRIBE` is ignored (Q5),
//! the in-memory publish queue keeps options and never gives up (Q17), also
//! buffers on connection errors, catch-up treats vanished messages as holes
//! (Q18), and maintenance uses SCAN (Q21). After a reconnect the firehose
//! also checks that the storage still holds the last message it delivered:
//! a Redis restarted empty restarts its ids, and once they pass the old
//! position the reference's `highest > global id` test no longer sees it.
//! Web polls read last ids from a per-process cache fed by the firehose
//! ([`LastIdCache`]) rather than with one MGET each: another process's
//! publish shows in this process's polls once delivered live.
//!
//! Connections and tasks live in a [`ProcState`] tagged with the pid: a forked
//! child never touches what it inherited (it is leaked) and builds its own.
//!
//! With Redis Sentinel the master is asked of the sentinels whenever a
//! connection is (re)made: the command connection is dropped on READONLY and
//! on connection errors, the pub/sub connection on every reconnect.

mod direct;
mod firehose;
pub mod keys;
mod queue;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::Mutex;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use ::redis::{
    cmd, pipe, Client, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    RedisError, Script, TlsMode, ToRedisArgs,
};
use async_trait::async_trait;
use tokio::task::JoinHandle;

use self::direct::{DirectPool, Exchange, Outcome};
use self::keys::*;
use self::queue::PublishQueue;
use super::epoch::{self, EpochCache};
use super::firehose::FirehoseTask;
use super::last_id_cache::{self, LastIdCache};
use super::networked::{self, Networked, Position, ProcessState};
use super::per_process::{PerProcess, ProcessLocal};
use super::{Backend, DirectCall, DirectReply, DirectResult, DirectRun, PublishOptions, Settings};
use crate::bus::Hub;
use crate::error::{Error, Result};
use crate::log;
use crate::message::{ruby_to_i, truncate, wire_tail, Message};
use crate::subscription::Subscription;

/// Time allowed to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for one command's answer (a publish that times out is
/// queued in memory, so keep this short; every command here is quick).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed to read the global id when a firehose starts.
const START_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed to ask the sentinels for the master.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(5);
/// Retry delays of the in-memory publish queue.
const FLUSH_MIN_DELAY: Duration = Duration::from_millis(50);
const FLUSH_MAX_DELAY: Duration = Duration::from_secs(1);

/// Everything that belongs to one process: connections, tasks, the delivery
/// position and the in-memory publish queue.
struct ProcState {
    conn: Mutex<Option<ConnectionManager>>,
    /// Held while handing messages to the hub, and while a new subscription
    /// reads its replay, so that the two never interleave.
    delivery: tokio::sync::Mutex<Delivery>,
    firehose: FirehoseTask,
    flusher: Mutex<Option<JoinHandle<()>>>,
    queue: Mutex<PublishQueue>,
    /// Last ids for web polls, fed by the firehose (live only while it is).
    cache: Arc<LastIdCache>,
    /// Synchronous connections for callers doing their own I/O.
    direct: Arc<DirectPool>,
}

impl ProcessLocal for ProcState {
    fn fresh() -> Self {
        let cache = Arc::new(LastIdCache::new());
        ProcState {
            conn: Mutex::new(None),
            delivery: tokio::sync::Mutex::new(Delivery {
                highest: None,
                stream_pos: 0,
                last: None,
                cache: Arc::clone(&cache),
            }),
            firehose: FirehoseTask::default(),
            flusher: Mutex::new(None),
            queue: Mutex::new(PublishQueue::default()),
            cache,
            direct: Arc::default(),
        }
    }

    fn shut_down(&self) {
        self.firehose.stop();
        if let Some(task) = self.flusher.lock().take() {
            task.abort();
        }
        self.conn.lock().take();
        self.direct.clear();
        self.cache.go_dark();
    }
}

impl ProcessState for ProcState {
    type Delivery = Delivery;

    fn firehose(&self) -> &FirehoseTask {
        &self.firehose
    }

    fn delivery(&self) -> &tokio::sync::Mutex<Delivery> {
        &self.delivery
    }
}

#[derive(Debug)]
struct Delivery {
    /// The highest global id handed to the hub (`None`: not known yet).
    highest: Option<i64>,
    /// The highest global id seen on the current pub/sub connection.
    stream_pos: i64,
    /// The last message handed over (its global id is `highest`): after a
    /// reconnect, storage that no longer holds it was reset or replaced.
    last: Option<Message>,
    /// The process's last-id cache, told of every message handed over.
    cache: Arc<LastIdCache>,
}

impl Delivery {
    /// Hands `message` to the hub and advances the position to it. The
    /// cache learns the id first: a poll that sees it reads the message
    /// from the backlog, one that does not gets it live (if registered).
    fn hand_over(&mut self, hub: &Hub, message: Message) {
        self.highest = Some(message.global_id);
        self.cache.delivered(&message.channel, message.message_id);
        self.last = Some(message.clone());
        hub.deliver(message);
    }

    /// Storage was reset: start again from global id 0.
    fn restart(&mut self) {
        self.highest = Some(0);
        self.stream_pos = 0;
        self.last = None;
        self.cache.clear();
    }
}

impl Position for Delivery {
    fn highest(&self) -> Option<i64> {
        self.highest
    }

    fn set_highest(&mut self, id: i64) {
        self.highest = Some(id);
    }
}

/// Where the Redis is.
enum Target {
    /// A fixed address.
    Direct(Client),
    /// The master named `master` by the sentinels at `sentinels`, reached
    /// with `node` (db, credentials, TLS).
    Sentinel {
        master: String,
        sentinels: Vec<ConnectionInfo>,
        node: SentinelNodeConnectionInfo,
    },
}

struct Inner {
    settings: Settings,
    hub: Arc<Hub>,
    target: Target,
    /// The URL without its password, for messages.
    url: String,
    pubsub_channel: String,
    script: Script,
    /// Where synchronous connections go (`None`: TLS or Sentinel, or
    /// turned off with MESSAGE_BUS_REDIS_DIRECT=0), and what they run first.
    direct_info: Option<Arc<ConnectionInfo>>,
    direct_setup: Arc<Vec<Cmd>>,
    dropped: AtomicU64,
    state: PerProcess<ProcState>,
    /// The storage epoch (`EPOCH_KEY`) as last read.
    epoch: EpochCache,
    epoch_script: Script,
}

pub struct RedisBackend {
    inner: Arc<Inner>,
}

/// How a failed publish is handled.
fn is_readonly(e: &RedisError) -> bool {
    e.code() == Some("READONLY") || e.to_string().contains("READONLY")
}

fn is_connection(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(e.kind(), ErrorKind::Io)
}

/// Errors after which a queued publish is retried rather than dropped.
fn is_transient(e: &RedisError) -> bool {
    is_readonly(e)
        || is_connection(e)
        || matches!(
            e.code(),
            Some("LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "OOM" | "CLUSTERDOWN")
        )
}

impl RedisBackend {
    /// `url`: redis://, rediss://, redis+unix:// or unix://, with db and
    /// password; `pubsub_channel`: `_message_bus_<db>` (computed by the Ruby
    /// side, COMPAT.md §9 Q15). Never connects: connections are made on first use.
    pub fn new(url: &str, pubsub_channel: &str) -> Result<Self> {
        let redacted = redact_url(url);
        let client = Client::open(url)
            .map_err(|e| Error::Argument(format!("invalid Redis URL {redacted}: {e}")))?;
        Ok(Self::with_target(
            Target::Direct(client),
            redacted,
            pubsub_channel,
        ))
    }

    /// Redis Sentinel: `node_url` is a Redis URL whose host is the master
    /// name (as in redis-rb) and whose db, credentials and TLS apply to the
    /// master; `sentinel_urls` are the sentinels' own URLs. Never connects.
    pub fn sentinel(
        node_url: &str,
        sentinel_urls: &[String],
        pubsub_channel: &str,
    ) -> Result<Self> {
        let redacted = redact_url(node_url);
        let info = node_url
            .into_connection_info()
            .map_err(|e| Error::Argument(format!("invalid Redis URL {redacted}: {e}")))?;
        let (master, tls) = match info.addr() {
            ConnectionAddr::Tcp(host, _) => (host.clone(), None),
            ConnectionAddr::TcpTls { host, insecure, .. } => (
                host.clone(),
                Some(if *insecure {
                    TlsMode::Insecure
                } else {
                    TlsMode::Secure
                }),
            ),
            _ => {
                return Err(Error::Argument(format!(
                    "Redis Sentinel needs a master name, not {redacted}"
                )))
            }
        };
        if sentinel_urls.is_empty() {
            return Err(Error::Argument("Redis Sentinel: no sentinels given".into()));
        }
        let sentinels = sentinel_urls
            .iter()
            .map(|url| {
                url.as_str().into_connection_info().map_err(|e| {
                    Error::Argument(format!("invalid sentinel URL {}: {e}", redact_url(url)))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(info.redis_settings().clone());
        if let Some(tls) = tls {
            node = node.set_tls_mode(tls);
        }
        let shown = format!(
            "sentinel master {master} (via {})",
            sentinel_urls
                .iter()
                .map(|u| redact_url(u))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(Self::with_target(
            Target::Sentinel {
                master,
                sentinels,
                node,
            },
            shown,
            pubsub_channel,
        ))
    }

    fn with_target(target: Target, url: String, pubsub_channel: &str) -> Self {
        let epoch = EpochCache::new(format!("Redis at {url}"));
        let direct_info = match &target {
            Target::Direct(client)
                if std::env::var("MESSAGE_BUS_REDIS_DIRECT").as_deref() != Ok("0") =>
            {
                let info = client.get_connection_info();
                matches!(
                    info.addr(),
                    ConnectionAddr::Tcp(..) | ConnectionAddr::Unix(_)
                )
                .then(|| Arc::new(info.clone()))
            }
            _ => None,
        };
        let mut load = cmd("SCRIPT");
        load.arg("LOAD").arg(PUBLISH_SCRIPT);
        RedisBackend {
            inner: Arc::new(Inner {
                settings: Settings::default(),
                hub: Hub::new(),
                target,
                url,
                pubsub_channel: pubsub_channel.to_string(),
                script: Script::new(PUBLISH_SCRIPT),
                direct_info,
                direct_setup: Arc::new(vec![load]),
                dropped: AtomicU64::new(0),
                state: PerProcess::default(),
                epoch,
                epoch_script: Script::new(EPOCH_SCRIPT),
            }),
        }
    }

    pub fn pubsub_channel(&self) -> &str {
        &self.inner.pubsub_channel
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.inner.state.shut_down_current();
    }
}

impl Inner {
    fn proc(&self) -> Arc<ProcState> {
        self.state.current()
    }

    fn to_error(&self, e: RedisError) -> Error {
        if is_connection(&e) {
            Error::Connection(format!("cannot reach Redis at {}: {e}", self.url))
        } else {
            Error::Backend(format!("Redis at {}: {e}", self.url))
        }
    }

    fn is_sentinel(&self) -> bool {
        matches!(self.target, Target::Sentinel { .. })
    }

    /// A client for the Redis: with sentinels, for the master they name now.
    /// A failed lookup is a connection error (the publish is queued).
    async fn client(&self) -> std::result::Result<Client, RedisError> {
        let (master, sentinels, node) = match &self.target {
            Target::Direct(client) => return Ok(client.clone()),
            Target::Sentinel {
                master,
                sentinels,
                node,
            } => (master, sentinels, node),
        };
        let lookup = async {
            let mut sentinel = SentinelClient::build(
                sentinels.clone(),
                master.clone(),
                Some(node.clone()),
                SentinelServerType::Master,
            )?;
            sentinel.async_get_client().await
        };
        let failed = |what: String| {
            RedisError::from((
                ErrorKind::Io,
                "Redis Sentinel lookup failed",
                format!("master {master}: {what}"),
            ))
        };
        match tokio::time::timeout(SENTINEL_TIMEOUT, lookup).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) if is_connection(&e) => Err(e),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed("timed out".into())),
        }
    }

    /// After a failed command: forget a connection that may point at a node
    /// that is no longer the master, so that the next command looks it up.
    fn after_error(&self, proc: &ProcState, e: &RedisError) {
        if is_readonly(e) || (self.is_sentinel() && is_connection(e)) {
            proc.conn.lock().take();
        }
        if is_readonly(e) {
            proc.direct.clear();
        }
    }

    async fn conn(&self, proc: &ProcState) -> Result<ConnectionManager> {
        self.conn_raw(proc).await.map_err(|e| self.to_error(e))
    }

    /// The shared multiplexed connection of this process, made on first use.
    async fn conn_raw(
        &self,
        proc: &ProcState,
    ) -> std::result::Result<ConnectionManager, RedisError> {
        let existing = proc.conn.lock().clone();
        if let Some(conn) = existing {
            return Ok(conn);
        }
        let client = self.client().await?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        let mut slot = proc.conn.lock();
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs one command on the shared multiplexed connection.
    async fn query<T: ::redis::FromRedisValue>(&self, command: &::redis::Cmd) -> Result<T> {
        let proc = self.proc();
        let mut conn = self.conn(&proc).await?;
        command.query_async(&mut conn).await.map_err(|e| {
            self.after_error(&proc, &e);
            self.to_error(e)
        })
    }

    /// Runs the publish script; on READONLY the connection is dropped so that
    /// the next attempt reconnects (the name, or the sentinels, may point at
    /// a new primary).
    async fn publish_now(
        &self,
        proc: &ProcState,
        channel: &str,
        data: &str,
        opts: &PublishOptions,
    ) -> std::result::Result<i64, RedisError> {
        let (keys, args) = self.publish_parts(channel, data, opts);
        let mut conn = self.conn_raw(proc).await?;
        let mut invocation = self.script.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        for arg in &args {
            invocation.arg(arg);
        }
        let result = invocation.invoke_async(&mut conn).await;
        if let Err(e) = &result {
            self.after_error(proc, e);
        }
        result
    }

    /// What a publish returns once the script ran or failed: a READONLY or
    /// connection error queues it (unless the caller said not to).
    fn published(
        self: &Arc<Self>,
        proc: &Arc<ProcState>,
        channel: &str,
        data: &str,
        opts: &PublishOptions,
        result: std::result::Result<i64, RedisError>,
    ) -> Result<Option<i64>> {
        let may_queue = opts.queue_in_memory != Some(false);
        match result {
            Ok(id) => {
                // Our next poll sees it, even before its live delivery.
                proc.cache.published(channel, id);
                Ok(Some(id))
            }
            Err(e) if may_queue && (is_readonly(&e) || is_connection(&e)) => {
                log::warn(format!(
                    "message_bus: publish to {channel} queued in memory: {}",
                    self.to_error(e)
                ));
                self.enqueue(proc, channel, data, opts);
                Ok(None)
            }
            Err(e) => Err(self.to_error(e)),
        }
    }

    /// The publish script's keys and arguments.
    fn publish_parts(
        &self,
        channel: &str,
        data: &str,
        opts: &PublishOptions,
    ) -> ([String; 4], Vec<Vec<u8>>) {
        let s = &self.settings;
        let age = s.backlog_age(opts);
        let size = s.backlog_size(opts);
        let global_size = Settings::get(&s.max_global_backlog_size);
        let keys = [
            GLOBAL_ID_KEY.to_string(),
            backlog_id_key(channel),
            backlog_key(channel),
            GLOBAL_BACKLOG_KEY.to_string(),
        ];
        let mut args = Vec::with_capacity(7);
        args.extend(wire_tail(channel, data).to_redis_args());
        args.extend(age.to_redis_args());
        args.extend(size.to_redis_args());
        args.extend(global_size.to_redis_args());
        args.extend(s.clear_every().to_redis_args());
        args.extend(self.pubsub_channel.to_redis_args());
        args.extend(channel.to_redis_args());
        (keys, args)
    }

    /// Queues a publish for the flush task (starting it if needed).
    fn enqueue(
        self: &Arc<Self>,
        proc: &Arc<ProcState>,
        channel: &str,
        data: &str,
        opts: &PublishOptions,
    ) {
        let bound = Settings::get(&self.settings.max_in_memory_publish_backlog);
        let mut queue = proc.queue.lock();
        let dropped = queue.push(channel, data, opts, bound);
        if !dropped.is_empty() {
            self.dropped
                .fetch_add(dropped.len() as u64, Ordering::Relaxed);
            for d in &dropped {
                log::warn(format!(
                    "message_bus: in-memory publish queue full ({bound} messages): dropped the oldest, to {}",
                    d.channel
                ));
            }
        }
        if !queue.flushing && !queue.is_empty() {
            match crate::runtime::runtime() {
                Ok(rt) => {
                    queue.flushing = true;
                    let task = rt.spawn(flush(Arc::clone(self), Arc::clone(proc)));
                    *proc.flusher.lock() = Some(task);
                }
                Err(e) => log::warn(format!(
                    "message_bus: cannot start the publish flusher: {e}"
                )),
            }
        }
    }

    /// The firehose found the storage reset or replaced: positions restart
    /// at 0 (see [`networked::storage_was_reset`] for the rest).
    async fn storage_was_reset(&self, delivery: &mut Delivery) {
        delivery.restart();
        networked::storage_was_reset(self).await;
    }

    async fn global_id(&self) -> Result<i64> {
        let value: Option<Vec<u8>> = self.query(cmd("GET").arg(GLOBAL_ID_KEY)).await?;
        Ok(parse_int(value))
    }

    fn decode(&self, key: &str, raw: &[u8]) -> Option<Message> {
        let text = match std::str::from_utf8(raw) {
            Ok(text) => text,
            Err(_) => {
                log::warn(format!("message_bus: skipping a non-UTF-8 entry of {key}"));
                return None;
            }
        };
        match Message::decode(text) {
            Ok(m) => Some(m),
            Err(_) => {
                log::warn(format!(
                    "message_bus: skipping an entry of {key} not in the message_bus format: {}",
                    truncate(text, 80)
                ));
                None
            }
        }
    }

    async fn backlog(&self, channel: &str, last_id: i64) -> Result<Vec<Message>> {
        let key = backlog_key(channel);
        let raw: Vec<Vec<u8>> = self
            .query(
                cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg(last_id.saturating_add(1))
                    .arg("+inf"),
            )
            .await?;
        Ok(raw.iter().filter_map(|r| self.decode(&key, r)).collect())
    }

    async fn get_message(&self, channel: &str, message_id: i64) -> Result<Option<Message>> {
        let key = backlog_key(channel);
        let raw: Vec<Vec<u8>> = self
            .query(
                cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg(message_id)
                    .arg(message_id),
            )
            .await?;
        Ok(raw.iter().find_map(|r| self.decode(&key, r)))
    }

    async fn global_backlog(&self, last_id: i64) -> Result<Vec<Message>> {
        let members: Vec<Vec<u8>> = self
            .query(
                cmd("ZRANGEBYSCORE")
                    .arg(GLOBAL_BACKLOG_KEY)
                    .arg(last_id.saturating_add(1))
                    .arg("+inf"),
            )
            .await?;
        let mut entries = Vec::with_capacity(members.len());
        for member in &members {
            let parsed = std::str::from_utf8(member)
                .ok()
                .and_then(parse_global_member);
            match parsed {
                Some((id, channel)) => entries.push((id, backlog_key(channel))),
                None => log::warn(format!(
                    "message_bus: skipping a {GLOBAL_BACKLOG_KEY} member not in the message_bus format: {}",
                    truncate(&String::from_utf8_lossy(member), 80)
                )),
            }
        }
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipeline = pipe();
        for (id, key) in &entries {
            pipeline.cmd("ZRANGEBYSCORE").arg(key).arg(*id).arg(*id);
        }
        let proc = self.proc();
        let mut conn = self.conn(&proc).await?;
        let results: Vec<Vec<Vec<u8>>> = pipeline.query_async(&mut conn).await.map_err(|e| {
            self.after_error(&proc, &e);
            self.to_error(e)
        })?;
        Ok(entries
            .iter()
            .zip(results.iter())
            .filter_map(|((_, key), raw)| raw.iter().find_map(|r| self.decode(key, r)))
            .collect())
    }

    /// Deletes every key matching `pattern`, SCANning (§9 Q21).
    async fn delete_matching(&self, pattern: &str) -> Result<()> {
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .query(
                    cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            if !keys.is_empty() {
                self.query::<()>(cmd("DEL").arg(&keys)).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Whether the storage still holds the last message handed over. A Redis
    /// restarted without persistence (or flushed, or failed over to an empty
    /// replica) restarts its ids: once they pass the old position, comparing
    /// ids alone would silently skip the new storage's first messages. Its
    /// vanishing by trimming or expiry is not a reset: only another message
    /// under its ids is.
    async fn storage_replaced(&self, delivery: &Delivery) -> Result<bool> {
        let Some(last) = delivery.last.as_ref() else {
            return Ok(false);
        };
        if delivery.highest != Some(last.global_id) {
            return Ok(false);
        }
        if let Some(stored) = self.get_message(&last.channel, last.message_id).await? {
            return Ok(stored != *last);
        }
        let members: Vec<Vec<u8>> = self
            .query(
                cmd("ZRANGEBYSCORE")
                    .arg(GLOBAL_BACKLOG_KEY)
                    .arg(last.global_id)
                    .arg(last.global_id),
            )
            .await?;
        let ours = format!("{}|{}", last.message_id, last.channel);
        Ok(members.iter().any(|m| m.as_slice() != ours.as_bytes()))
    }

    /// Hands over, in order, every retained message after the delivery
    /// position (§4.2.5; vanished messages are holes, §9 Q18).
    async fn catch_up(&self, delivery: &mut Delivery) -> Result<()> {
        let current = self.global_id().await?;
        let mut highest = delivery.highest.unwrap_or(0);
        if highest > current {
            // Storage was reset (by another process): ids restart.
            highest = 0;
            self.storage_was_reset(delivery).await;
        }
        let backlog = self.global_backlog(highest).await?;
        let missed = firehose::select_catch_up(highest, backlog);
        if !missed.is_empty() {
            let m = crate::metrics::backend(crate::metrics::BackendKind::Redis);
            crate::metrics::BackendMetrics::count(&m.gaps_caught_up);
        }
        for message in missed {
            delivery.hand_over(&self.hub, message);
        }
        if delivery.highest.is_none() {
            delivery.highest = Some(highest);
        }
        Ok(())
    }
}

#[async_trait]
impl Networked for Inner {
    type Proc = ProcState;

    fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    fn state(&self) -> &PerProcess<ProcState> {
        &self.state
    }

    fn epoch_cache(&self) -> &EpochCache {
        &self.epoch
    }

    /// With a Lua get-or-set of `EPOCH_KEY`.
    async fn read_epoch(&self) -> Result<Arc<str>> {
        let proc = self.proc();
        let mut conn = self.conn(&proc).await?;
        let value: String = self
            .epoch_script
            .key(EPOCH_KEY)
            .arg(epoch::generate())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| {
                self.after_error(&proc, &e);
                self.to_error(e)
            })?;
        if !epoch::is_valid(&value) {
            // Not one of ours (written by hand?): replace it.
            let fresh = epoch::generate();
            self.query::<()>(cmd("SET").arg(EPOCH_KEY).arg(&fresh))
                .await?;
            return Ok(self.epoch.set(&fresh));
        }
        Ok(self.epoch.set(&value))
    }

    /// The global id now; not known if Redis does not answer in time (the
    /// firehose reads it once subscribed).
    async fn start_position(&self) -> Result<Option<i64>> {
        match tokio::time::timeout(START_TIMEOUT, self.global_id()).await {
            Ok(Ok(id)) => Ok(Some(id)),
            _ => Ok(None),
        }
    }

    fn firehose(self: Arc<Self>, proc: Arc<ProcState>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(firehose::run(self, proc))
    }

    async fn replay(&self, last_id: i64) -> Result<Vec<Message>> {
        self.global_backlog(last_id).await
    }
}

fn parse_int(value: Option<Vec<u8>>) -> i64 {
    value.map_or(0, |v| ruby_to_i(&String::from_utf8_lossy(&v)))
}

/// Publishes the queued messages in order once Redis accepts writes again.
async fn flush(inner: Arc<Inner>, proc: Arc<ProcState>) {
    let mut delay = FLUSH_MIN_DELAY;
    loop {
        let head = {
            let mut queue = proc.queue.lock();
            match queue.start_sending() {
                Some(head) => head,
                None => {
                    queue.flushing = false;
                    return;
                }
            }
        };
        let opts = PublishOptions {
            queue_in_memory: Some(false),
            ..head.opts.clone()
        };
        let outcome = inner
            .publish_now(&proc, &head.channel, &head.data, &opts)
            .await;
        // The attempt ends and, unless Redis may take the entry later, the
        // entry leaves the queue, under one lock: the bound must not drop
        // (and count) a publish that was stored.
        let retry = matches!(&outcome, Err(e) if is_transient(e));
        let removed = proc.queue.lock().finish_sending(head.seq, !retry);
        match outcome {
            Ok(_) => delay = FLUSH_MIN_DELAY,
            Err(_) if retry => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(FLUSH_MAX_DELAY);
            }
            Err(e) => {
                if removed {
                    inner.dropped.fetch_add(1, Ordering::Relaxed);
                    log::warn(format!(
                        "message_bus: dropping undeliverable message to {}: {}",
                        head.channel,
                        inner.to_error(e)
                    ));
                }
            }
        }
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    async fn publish(
        &self,
        channel: &str,
        data: &str,
        opts: &PublishOptions,
    ) -> Result<Option<i64>> {
        let inner = &self.inner;
        let proc = inner.proc();
        let may_queue = opts.queue_in_memory != Some(false);
        if may_queue && !proc.queue.lock().is_empty() {
            // Earlier publishes are waiting: keep the order.
            inner.enqueue(&proc, channel, data, opts);
            return Ok(None);
        }
        let result = inner.publish_now(&proc, channel, data, opts).await;
        inner.published(&proc, channel, data, opts, result)
    }

    async fn last_id(&self, channel: &str) -> Result<i64> {
        let value: Option<Vec<u8>> = self
            .inner
            .query(cmd("GET").arg(backlog_id_key(channel)))
            .await?;
        Ok(parse_int(value))
    }

    async fn last_ids(&self, channels: &[String]) -> Result<Vec<i64>> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = channels.iter().map(|c| backlog_id_key(c)).collect();
        let values: Vec<Option<Vec<u8>>> = self.inner.query(cmd("MGET").arg(&keys)).await?;
        Ok(values.into_iter().map(parse_int).collect())
    }

    /// From the last-id cache when it trusts every channel (and the client
    /// is not ahead of it), else one MGET whose answer fills the cache.
    async fn last_ids_for_poll(
        &self,
        channels: &[String],
        requested: &[Option<i64>],
    ) -> Result<Vec<i64>> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let cache = Arc::clone(&self.inner.proc().cache);
        if let Some(ids) = cache.lookup(channels, Instant::now()) {
            if last_id_cache::answers(requested, &ids) {
                return Ok(ids);
            }
        }
        let ticket = cache.ticket(Instant::now());
        let ids = self.last_ids(channels).await?;
        if let Some(ticket) = ticket {
            cache.fill(ticket, channels, &ids);
        }
        if epoch::client_ahead(requested, &ids) {
            // Its answer lowers the client's position: it carries the epoch
            // of the storage these ids came from (read after them).
            self.inner.read_epoch().await?;
        }
        Ok(ids)
    }

    async fn backlog(&self, channel: &str, last_id: i64) -> Result<Vec<Message>> {
        self.inner.backlog(channel, last_id).await
    }

    async fn global_backlog(&self, last_id: i64) -> Result<Vec<Message>> {
        self.inner.global_backlog(last_id).await
    }

    async fn get_message(&self, channel: &str, message_id: i64) -> Result<Option<Message>> {
        self.inner.get_message(channel, message_id).await
    }

    async fn reset(&self) -> Result<()> {
        let proc = self.inner.proc();
        let mut delivery = proc.delivery.lock().await;
        let deleted = self.inner.delete_matching(ALL_KEYS_PATTERN).await;
        // After the deletion: reads sent before it are dropped when they answer.
        proc.cache.clear();
        deleted?;
        let known = delivery.highest.is_some();
        // The epoch went with the other keys: the next reader creates one.
        self.inner.epoch.clear();
        delivery.restart();
        self.inner.hub.storage_reset();
        if !known {
            delivery.highest = None;
        }
        Ok(())
    }

    async fn expire_all_backlogs(&self) -> Result<()> {
        let result = async {
            self.inner
                .query::<()>(cmd("DEL").arg(GLOBAL_BACKLOG_KEY))
                .await?;
            self.inner.delete_matching(CHANNEL_BACKLOGS_PATTERN).await
        }
        .await;
        self.inner.proc().cache.clear();
        result
    }

    async fn subscribe(&self, last_id: Option<i64>) -> Result<Arc<Subscription>> {
        networked::subscribe(&self.inner, last_id).await
    }

    async fn ensure_listening(&self) -> Result<()> {
        networked::ensure_listening(&self.inner).await
    }

    fn epoch(&self) -> Option<Arc<str>> {
        self.inner.epoch.get()
    }

    async fn load_epoch(&self) -> Result<Option<Arc<str>>> {
        networked::load_epoch(&*self.inner).await
    }

    async fn refresh_epoch(&self) -> Result<()> {
        self.inner.read_epoch().await.map(|_| ())
    }

    async fn destroy(&self) {
        let Some(old) = networked::destroy(&*self.inner) else {
            return;
        };
        let lost = old.queue.lock().clear();
        if lost > 0 {
            self.inner.dropped.fetch_add(lost as u64, Ordering::Relaxed);
            log::warn(format!(
                "message_bus: destroyed with {lost} publishes still queued in memory; they are lost"
            ));
        }
    }

    fn after_fork(&self) {
        // A forked child gets a fresh state (its cache starts empty and dark).
        self.inner.proc().cache.clear();
    }

    fn is_subscribed(&self) -> bool {
        networked::is_subscribed(&*self.inner)
    }

    fn queued_publishes(&self) -> usize {
        self.inner.proc().queue.lock().len()
    }

    /// Publish and the plain reads, on a synchronous connection of the
    /// caller's (see `direct.rs`), when the target allows one, the pool has
    /// one free, and no queued publish must go first.
    fn direct<'a>(&'a self, call: DirectCall<'a>) -> Option<Box<dyn DirectRun + 'a>> {
        let inner = &self.inner;
        let info = inner.direct_info.as_ref()?;
        let proc = inner.proc();
        let command = match &call {
            DirectCall::Publish {
                channel,
                data,
                opts,
            } => {
                if opts.queue_in_memory != Some(false) && !proc.queue.lock().is_empty() {
                    return None;
                }
                let (keys, args) = inner.publish_parts(channel, data, opts);
                let mut command = cmd("EVALSHA");
                command.arg(inner.script.get_hash()).arg(keys.len());
                for key in &keys {
                    command.arg(key);
                }
                for arg in &args {
                    command.arg(arg);
                }
                command
            }
            DirectCall::LastId(channel) => {
                let mut command = cmd("GET");
                command.arg(backlog_id_key(channel));
                command
            }
            DirectCall::LastIds(channels) => {
                if channels.is_empty() {
                    return None;
                }
                let keys: Vec<String> = channels.iter().map(|c| backlog_id_key(c)).collect();
                let mut command = cmd("MGET");
                command.arg(&keys);
                command
            }
            DirectCall::Backlog(channel, last_id) => {
                let mut command = cmd("ZRANGEBYSCORE");
                command
                    .arg(backlog_key(channel))
                    .arg(last_id.saturating_add(1))
                    .arg("+inf");
                command
            }
        };
        let exchange =
            proc.direct
                .exchange(info, command.get_packed_command(), &inner.direct_setup)?;
        Some(Box::new(RedisDirect {
            inner,
            proc,
            call,
            exchange,
        }))
    }

    fn dropped_publishes(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

/// A call of [`RedisBackend::direct`] in progress.
struct RedisDirect<'a> {
    inner: &'a Arc<Inner>,
    proc: Arc<ProcState>,
    call: DirectCall<'a>,
    exchange: Exchange,
}

impl DirectRun for RedisDirect<'_> {
    fn run(&mut self, interrupted: &dyn Fn() -> bool) -> Option<DirectResult> {
        let outcome = self.exchange.run(RESPONSE_TIMEOUT, interrupted)?;
        Some(self.finish(outcome))
    }
}

impl RedisDirect<'_> {
    fn finish(&self, outcome: Outcome) -> DirectResult {
        let inner = self.inner;
        let reply = match outcome {
            Outcome::Reply(Err(e)) if e.code() == Some("NOSCRIPT") => {
                // Not run: the async path loads the script and runs it.
                return DirectResult::Fallback;
            }
            Outcome::Reply(reply) => reply,
            Outcome::NotSent(e) | Outcome::Lost(e) => Err(e),
        };
        if let Err(e) = &reply {
            inner.after_error(&self.proc, e);
        }
        DirectResult::Done(match &self.call {
            DirectCall::Publish {
                channel,
                data,
                opts,
            } => {
                let id =
                    reply.and_then(|v| ::redis::from_redis_value::<i64>(v).map_err(Into::into));
                inner
                    .published(&self.proc, channel, data, opts, id)
                    .map(DirectReply::Published)
            }
            DirectCall::LastId(_) => reply
                .and_then(|v| ::redis::from_redis_value::<Option<Vec<u8>>>(v).map_err(Into::into))
                .map(|v| DirectReply::Id(parse_int(v)))
                .map_err(|e| inner.to_error(e)),
            DirectCall::LastIds(_) => reply
                .and_then(|v| {
                    ::redis::from_redis_value::<Vec<Option<Vec<u8>>>>(v).map_err(Into::into)
                })
                .map(|v| DirectReply::Ids(v.into_iter().map(parse_int).collect()))
                .map_err(|e| inner.to_error(e)),
            DirectCall::Backlog(channel, _) => {
                let key = backlog_key(channel);
                reply
                    .and_then(|v| ::redis::from_redis_value::<Vec<Vec<u8>>>(v).map_err(Into::into))
                    .map(|raw| {
                        DirectReply::Messages(
                            raw.iter().filter_map(|r| inner.decode(&key, r)).collect(),
                        )
                    })
                    .map_err(|e| inner.to_error(e))
            }
        })
    }
}
