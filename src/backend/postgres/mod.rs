//! The PostgreSQL backend (COMPAT.md §4.3), storage-compatible with the
//! reference gem: same table and indexes, same rows, same NOTIFY payloads on
//! `_message_bus_<db>`, so reference processes and ours can share a database.
//!
//! Deviations allowed by COMPAT.md §9: connection errors raise (Q9), oversized
//! NOTIFY payloads raise with the limit in the message (Q8) but are still
//! delivered to live subscribers of our processes (see below), nothing is
//! broadcast on unsubscribe and a foreign `$$UNSUBSCRIBE` is ignored (Q5), the
//! firehose tracks its position and catches up from the table (Q11), and the
//! table is created with if-not-exists semantics under an advisory lock (Q12).
//!
//! A publish is one statement (insert, NOTIFY and the §4.3.4 trimming as
//! CTEs: one round trip, one commit, NOTIFY atomic with the row), and its
//! trimming DELETEs are bounded below the last threshold applied (see
//! `sql::WriteStatements::publish_all`). Publishes made while another is in
//! flight share one statement and one commit (group commit, `batch.rs`).
//!
//! Oversized payloads: nothing is NOTIFYed for them (a reference listener
//! would parse any short substitute as a message). Our listeners read the
//! table after every id gap, every second while idle, and at once when the
//! publish happened in the same process, so they deliver the row in order.
//!
//! Connections and tasks live in a [`ProcState`] tagged with the pid: a forked
//! child never touches what it inherited (it is leaked) and builds its own.

mod batch;
mod direct;
pub mod firehose;
pub mod sql;
mod tls;

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::sync::Mutex;
use async_trait::async_trait;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config};

use self::sql::{ReadStatements, WriteStatements, NOTIFY_PAYLOAD_LIMIT};
use super::epoch::{self, EpochCache};
use super::firehose::FirehoseTask;
use super::networked::{self, Networked, Position, ProcessState};
use super::per_process::{PerProcess, ProcessLocal};
use super::{Backend, DirectCall, DirectRun, PublishOptions, Settings};
use crate::bus::Hub;
use crate::error::{Error, Result};
use crate::message::{escape_channel, wire_tail, Message};
use crate::subscription::Subscription;

/// Pooled connections per process (for everything but publishes).
const POOL_SIZE: usize = 4;
/// The slot after them: the connection publishes are sent on (one statement
/// at a time, see `batch.rs`).
const PUBLISHER: usize = POOL_SIZE;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One pooled connection and its prepared statements.
struct Conn {
    client: Client,
    reads: ReadStatements,
    /// Prepared on the connection's first write.
    writes: tokio::sync::OnceCell<WriteStatements>,
}

/// A statement of a connection, by which of its sets it is in.
#[derive(Clone, Copy)]
enum Pick {
    Read(fn(&ReadStatements) -> &tokio_postgres::Statement),
    Write(fn(&WriteStatements) -> &tokio_postgres::Statement),
}

impl Conn {
    async fn statement(
        &self,
        pick: Pick,
    ) -> std::result::Result<&tokio_postgres::Statement, tokio_postgres::Error> {
        match pick {
            Pick::Read(pick) => Ok(pick(&self.reads)),
            Pick::Write(pick) => {
                let writes = self
                    .writes
                    .get_or_try_init(|| WriteStatements::prepare(&self.client))
                    .await?;
                Ok(pick(writes))
            }
        }
    }
}

/// Everything that belongs to one process.
struct ProcState {
    pool: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
    /// Held while handing messages to the hub, and while a new subscription
    /// reads its replay, so that the two never interleave.
    delivery: tokio::sync::Mutex<Delivery>,
    firehose: FirehoseTask,
    /// Wakes the firehose to read the table (a local oversized publish).
    poke: tokio::sync::Notify,
    /// Publishes waiting to be sent together (group commit, `batch.rs`).
    publishes: Arc<Mutex<batch::Queue>>,
}

impl ProcessLocal for ProcState {
    fn fresh() -> Self {
        ProcState {
            pool: (0..=PUBLISHER)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            delivery: tokio::sync::Mutex::new(Delivery::default()),
            firehose: FirehoseTask::default(),
            poke: tokio::sync::Notify::new(),
            publishes: Arc::default(),
        }
    }

    fn shut_down(&self) {
        self.firehose.stop();
        for slot in &self.pool {
            if let Ok(mut slot) = slot.try_lock() {
                slot.take();
            }
        }
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

#[derive(Debug, Default)]
struct Delivery {
    /// The highest global id handed to the hub (`None`: not known yet).
    highest: Option<i64>,
    /// Ids a catch-up found missing (maybe still committing).
    skipped: std::collections::BTreeSet<i64>,
    /// When a notified id already handed over last made the listener
    /// compare the table's epoch (see `firehose::on_payload`).
    epoch_checked: Option<std::time::Instant>,
}

impl Position for Delivery {
    fn highest(&self) -> Option<i64> {
        self.highest
    }

    fn set_highest(&mut self, id: i64) {
        self.highest = Some(id);
    }
}

struct Inner {
    settings: Settings,
    hub: Arc<Hub>,
    config: Config,
    /// host:port/dbname as user, for messages.
    target: String,
    notify_channel: String,
    state: PerProcess<ProcState>,
    /// The highest global trimming threshold this backend applied: rows at
    /// or below it are deleted (but for late commits, see `trim_floor`).
    trimmed_to: AtomicI64,
    /// Publishes so far (the trim of every `FULL_TRIM_EVERY`-th is unbounded).
    trims: AtomicU64,
    /// The storage epoch (the table's comment, `sql::READ_EPOCH`) as last read.
    epoch: EpochCache,
    /// Connections for callers doing their own I/O (`None`: not for this
    /// target, see `direct.rs`).
    direct: Option<direct::Direct>,
}

/// Rows committed late (ids taken before a trim, committed after it) are
/// caught by bounding trims this far below the last threshold... A row
/// escapes the bound only if its statement was in flight while
/// `max_global_backlog_size` + this many later ids were taken (the batched
/// publishes of a process are never late for its own trims: one statement
/// at a time, `batch.rs`). Every trim reads the index entries of the rows
/// deleted within the margin, so it is kept small.
const TRIM_MARGIN: i64 = 100;
/// ...and by an unbounded trim every this many publishes.
const FULL_TRIM_EVERY: u64 = 1000;

impl Inner {
    /// The message of `channel` with id `id` whose stored value is column `value_column` of `row`.
    fn channel_message(
        &self,
        row: &tokio_postgres::Row,
        value_column: usize,
        id: i64,
        channel: &str,
    ) -> Result<Message> {
        let value: String = row.try_get(value_column).map_err(|e| self.to_error(e))?;
        Ok(Message::new(id, id, channel, value))
    }

    /// The lower bound (exclusive) of the rows the next trim looks at, for
    /// a statement of `publishes` publishes: 0 (unbounded) if their count
    /// includes a multiple of `FULL_TRIM_EVERY`.
    fn trim_floor(&self, publishes: u64) -> i64 {
        let before = self.trims.fetch_add(publishes, Ordering::Relaxed);
        if before.div_ceil(FULL_TRIM_EVERY) * FULL_TRIM_EVERY < before + publishes {
            return 0;
        }
        (self.trimmed_to.load(Ordering::Relaxed) - TRIM_MARGIN).max(0)
    }

    /// One publish (insert, NOTIFY, trimming) as one statement.
    async fn publish_one(&self, msg: &batch::Publish) -> std::result::Result<i64, Failure> {
        let trim = &msg.trim;
        let tail = wire_tail(&msg.channel, &msg.data);
        let floor = self.trim_floor(1);
        let conn = self.conn_at(PUBLISHER).await.map_err(Failure::Pool)?;
        let rows = self
            .run_query(
                &conn,
                Pick::Write(|s| &s.publish_all),
                &[
                    &msg.channel,
                    &msg.data,
                    &self.notify_channel,
                    &tail,
                    &trim.clear_every,
                    &trim.global_size,
                    &trim.interval(),
                    &trim.size,
                    &floor,
                ],
            )
            .await?;
        let id: i64 = rows
            .first()
            .ok_or_else(|| Failure::Other(Error::Backend("INSERT returned no id".into())))?
            .try_get(0)
            .map_err(Failure::Pg)?;
        batch::after_publish(self, &[id], trim);
        Ok(id)
    }

    /// Publishes with equal trimming settings as one statement; their ids
    /// in order.
    async fn publish_many(
        &self,
        requests: &[batch::Request],
    ) -> std::result::Result<Vec<i64>, Failure> {
        let Some(first) = requests.first() else {
            return Ok(Vec::new());
        };
        let trim = &first.msg.trim;
        let channels: Vec<&str> = requests.iter().map(|r| r.msg.channel.as_str()).collect();
        let values: Vec<&str> = requests.iter().map(|r| r.msg.data.as_str()).collect();
        let escaped: Vec<&str> = requests.iter().map(|r| r.msg.escaped.as_str()).collect();
        let floor = self.trim_floor(requests.len() as u64);
        let conn = self.conn_at(PUBLISHER).await.map_err(Failure::Pool)?;
        let rows = self
            .run_query(
                &conn,
                Pick::Write(|s| &s.publish_batch),
                &[
                    &channels,
                    &values,
                    &escaped,
                    &self.notify_channel,
                    &trim.clear_every,
                    &trim.global_size,
                    &trim.interval(),
                    &trim.size,
                    &floor,
                ],
            )
            .await?;
        let pairs = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<std::result::Result<Vec<(i64, i64)>, tokio_postgres::Error>>()
            .map_err(Failure::Pg)?;
        let ids = batch::ids_in_order(requests.len(), &pairs).ok_or_else(|| {
            Failure::Other(Error::Backend(format!(
                "PostgreSQL at {}: a batch of {} publishes returned unexpected ids {pairs:?}",
                self.target,
                requests.len()
            )))
        })?;
        batch::after_publish(self, &ids, trim);
        Ok(ids)
    }

    fn failure_to_error(&self, failure: Failure) -> Error {
        match failure {
            Failure::Pool(e) | Failure::Other(e) => e,
            Failure::Pg(e) => self.to_error(e),
        }
    }
}

/// Why a statement failed.
enum Failure {
    /// No connection (the statement was not sent).
    Pool(Error),
    /// The driver's error (from the server, or the connection broke).
    Pg(tokio_postgres::Error),
    /// Anything else.
    Other(Error),
}

pub struct PostgresBackend {
    inner: Arc<Inner>,
}

fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{} as {}",
        config.get_dbname().or(config.get_user()).unwrap_or(""),
        config.get_user().unwrap_or("")
    )
}

impl PostgresBackend {
    /// `conninfo`: libpq keyword/value string or postgres:// URL;
    /// `notify_channel`: `_message_bus_<db>`. Never connects.
    pub fn new(conninfo: &str, notify_channel: &str) -> Result<Self> {
        let mut config = Config::from_str(conninfo)
            .map_err(|e| Error::Argument(format!("invalid PostgreSQL connection string: {e}")))?;
        if config.get_user().is_none() {
            let user = std::env::var("PGUSER")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| "postgres".into());
            config.user(&user);
        }
        if config.get_hosts().is_empty() {
            let host = std::env::var("PGHOST").unwrap_or_else(|_| "localhost".into());
            config.host(&host);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("message_bus");
        let target = describe(&config);
        let epoch = EpochCache::new(format!("PostgreSQL at {target}"));
        let direct = direct::Direct::new(&config);
        Ok(PostgresBackend {
            inner: Arc::new(Inner {
                settings: Settings::default(),
                hub: Hub::new(),
                config,
                target,
                notify_channel: notify_channel.to_string(),
                state: PerProcess::default(),
                trimmed_to: AtomicI64::new(0),
                trims: AtomicU64::new(0),
                epoch,
                direct,
            }),
        })
    }

    pub fn notify_channel(&self) -> &str {
        &self.inner.notify_channel
    }
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        self.inner.state.shut_down_current();
    }
}

impl Inner {
    fn proc(&self) -> Arc<ProcState> {
        self.state.current()
    }

    /// Maps a driver error to a connection error (server unreachable, no such
    /// database, authentication) or a backend error.
    fn to_error(&self, e: tokio_postgres::Error) -> Error {
        let target = &self.target;
        match e.code() {
            Some(c) if *c == SqlState::INVALID_CATALOG_NAME => Error::Connection(format!(
                "PostgreSQL database {:?} does not exist ({target}): {e}",
                self.config.get_dbname().unwrap_or("")
            )),
            Some(c)
                if *c == SqlState::INVALID_PASSWORD
                    || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
            {
                Error::Connection(format!(
                    "PostgreSQL authentication failed for user {:?} ({target}): {}",
                    self.config.get_user().unwrap_or(""),
                    e.as_db_error()
                        .map_or(e.to_string(), |d| d.message().to_string())
                ))
            }
            Some(c)
                if c.code().starts_with("08")
                    || c.code().starts_with("57P")
                    || *c == SqlState::TOO_MANY_CONNECTIONS =>
            {
                Error::Connection(format!("PostgreSQL connection to {target} failed: {e}"))
            }
            Some(_) => Error::Backend(format!(
                "PostgreSQL at {target}: {}",
                e.as_db_error()
                    .map_or(e.to_string(), |d| d.message().to_string())
            )),
            None if e.is_closed() => {
                Error::Connection(format!("PostgreSQL connection to {target} was closed: {e}"))
            }
            // tokio-postgres tells a TLS failure only by its text.
            None if e.to_string().contains("TLS") => Error::Connection(format!(
                "no TLS connection to PostgreSQL at {target} (sslmode=require): {}",
                source_chain(&e)
            )),
            None => Error::Connection(format!(
                "cannot reach PostgreSQL at {target} (server down or unreachable?): {}",
                source_chain(&e)
            )),
        }
    }

    /// Opens a connection, drives it on the runtime, creates the table if
    /// missing and prepares the statements. The publisher connection plans
    /// its statements once (generic plans): PostgreSQL would otherwise make
    /// a custom plan on every execution of `publish_batch`, which costs more
    /// than running it. (Not the others: generic plans of the backlog reads
    /// would scan the whole table.)
    async fn connect(&self, publisher: bool) -> Result<Arc<Conn>> {
        // Its driver ends when the client is dropped or the connection breaks.
        let (client, _driver) = tls::connect(&self.config, None, |e| self.to_error(e)).await?;
        if publisher {
            // Since PostgreSQL 12; older servers keep their default.
            let _ = client
                .batch_execute("SET plan_cache_mode = force_generic_plan")
                .await;
        }
        // A concurrent reset may drop the table between the check and the
        // preparation: check again then.
        let mut attempts = 0;
        loop {
            let exists: bool = client
                .query_one(sql::TABLE_EXISTS, &[])
                .await
                .map_err(|e| self.to_error(e))?
                .try_get(0)
                .map_err(|e| self.to_error(e))?;
            if !exists {
                client
                    .batch_execute(&sql::create_schema_sql())
                    .await
                    .map_err(|e| self.to_error(e))?;
            }
            match ReadStatements::prepare(&client).await {
                Ok(reads) => {
                    return Ok(Arc::new(Conn {
                        client,
                        reads,
                        writes: tokio::sync::OnceCell::new(),
                    }))
                }
                Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) && attempts < 5 => {
                    attempts += 1;
                }
                Err(e) => return Err(self.to_error(e)),
            }
        }
    }

    /// A pooled connection (round robin over `POOL_SIZE` lazily opened ones).
    async fn conn(&self) -> Result<Arc<Conn>> {
        let i = self.proc().next.fetch_add(1, Ordering::Relaxed) % POOL_SIZE;
        self.conn_at(i).await
    }

    /// The connection of pool slot `i`, opened if needed.
    async fn conn_at(&self, i: usize) -> Result<Arc<Conn>> {
        let proc = self.proc();
        let Some(slot) = proc.pool.get(i) else {
            return Err(Error::Backend(format!("no connection slot {i}")));
        };
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.as_ref() {
            if !conn.client.is_closed() {
                return Ok(Arc::clone(conn));
            }
        }
        slot.take();
        let conn = self.connect(i == PUBLISHER).await?;
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Runs one prepared statement on a pooled connection. When the table is
    /// missing (dropped by a concurrent reset), recreates it and retries once.
    async fn query(
        &self,
        pick: Pick,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let conn = self.conn().await?;
        self.run_query(&conn, pick, params)
            .await
            .map_err(|f| self.failure_to_error(f))
    }

    /// `query` on `conn`, keeping the driver's error.
    async fn run_query(
        &self,
        conn: &Conn,
        pick: Pick,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> std::result::Result<Vec<tokio_postgres::Row>, Failure> {
        let attempt = async { conn.client.query(conn.statement(pick).await?, params).await };
        match attempt.await {
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
                conn.client
                    .batch_execute(&sql::create_schema_sql())
                    .await
                    .map_err(Failure::Pg)?;
                let statement = conn.statement(pick).await.map_err(Failure::Pg)?;
                conn.client
                    .query(statement, params)
                    .await
                    .map_err(Failure::Pg)
            }
            r => r.map_err(Failure::Pg),
        }
    }

    async fn max_id(&self) -> Result<i64> {
        let rows = self.query(Pick::Read(|s| &s.max_id), &[]).await?;
        let Some(row) = rows.first() else {
            return Ok(0);
        };
        Ok(row
            .try_get::<_, Option<i64>>(0)
            .map_err(|e| self.to_error(e))?
            .unwrap_or(0))
    }

    async fn global_backlog(&self, last_id: i64) -> Result<Vec<Message>> {
        let rows = self
            .query(Pick::Read(|s| &s.global_backlog), &[&last_id])
            .await?;
        rows.iter().map(|r| self.row_message(r)).collect()
    }

    /// The message of a row read as `id, channel, value`.
    fn row_message(&self, row: &tokio_postgres::Row) -> Result<Message> {
        let id: i64 = row.try_get(0).map_err(|e| self.to_error(e))?;
        let channel: String = row.try_get(1).map_err(|e| self.to_error(e))?;
        let value: String = row.try_get(2).map_err(|e| self.to_error(e))?;
        Ok(Message::new(id, id, channel, value))
    }

    /// The epoch recorded on the table, if any (on `client`).
    async fn stored_epoch(&self, client: &Client) -> Result<Option<String>> {
        let row = client
            .query_one(sql::READ_EPOCH, &[])
            .await
            .map_err(|e| self.to_error(e))?;
        let comment: Option<String> = row.try_get(0).map_err(|e| self.to_error(e))?;
        Ok(sql::parse_epoch(comment.as_deref()).map(str::to_string))
    }

    async fn recreate_table(&self) -> Result<()> {
        self.trimmed_to.store(0, Ordering::Relaxed);
        let conn = self.conn().await?;
        conn.client
            .batch_execute(&sql::reset_sql())
            .await
            .map_err(|e| self.to_error(e))
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

    /// The table's comment (`sql::READ_EPOCH`), set under an advisory lock
    /// when missing.
    async fn read_epoch(&self) -> Result<Arc<str>> {
        let conn = self.conn().await?;
        if let Some(stored) = self.stored_epoch(&conn.client).await? {
            return Ok(self.epoch.set(&stored));
        }
        conn.client
            .batch_execute(&sql::create_epoch_sql(&epoch::generate()))
            .await
            .map_err(|e| self.to_error(e))?;
        match self.stored_epoch(&conn.client).await? {
            Some(stored) => Ok(self.epoch.set(&stored)),
            None => Err(Error::Backend(format!(
                "PostgreSQL at {}: the storage epoch could not be recorded on the message_bus table",
                self.target
            ))),
        }
    }

    /// The last id taken (a failure fails the subscription).
    async fn start_position(&self) -> Result<Option<i64>> {
        self.max_id().await.map(Some)
    }

    fn firehose(self: Arc<Self>, proc: Arc<ProcState>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(firehose::run(self, proc))
    }

    /// From the start when `last_id` is ahead of the table (recreated).
    async fn replay(&self, last_id: i64) -> Result<Vec<Message>> {
        let from = if last_id > self.max_id().await? {
            0
        } else {
            last_id
        };
        self.global_backlog(from).await
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[async_trait]
impl Backend for PostgresBackend {
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
        let s = &inner.settings;
        let err = |e| inner.to_error(e);
        let tail = wire_tail(channel, data);
        let global_size = Settings::get(&s.max_global_backlog_size);
        let age = s.backlog_age(opts);
        let size = s.backlog_size(opts);
        // The payload is "<id>|<id>|<tail>"; ids have at most 19 digits.
        if tail.len() + 2 * 20 < NOTIFY_PAYLOAD_LIMIT && size >= 1 {
            // Insert, NOTIFY and trimming in one statement, shared with the
            // publishes made meanwhile (group commit, see `batch.rs`).
            let msg = batch::Publish {
                channel: channel.to_string(),
                data: data.to_string(),
                escaped: escape_channel(channel),
                trim: batch::Trim {
                    clear_every: s.clear_every(),
                    global_size,
                    age,
                    size,
                },
            };
            let id = batch::publish(&self.inner, &inner.proc().publishes, msg).await?;
            return Ok(Some(id));
        }
        let (id, oversized, notify_error) = if tail.len() + 2 * 20 < NOTIFY_PAYLOAD_LIMIT {
            let rows = inner
                .query(
                    Pick::Write(|s| &s.insert_and_notify),
                    &[&channel, &data, &inner.notify_channel, &tail],
                )
                .await?;
            let id: i64 = rows
                .first()
                .ok_or_else(|| Error::Backend("INSERT returned no id".into()))?
                .try_get(0)
                .map_err(err)?;
            (id, false, None)
        } else {
            // Maybe too large to NOTIFY: store, then NOTIFY if it fits.
            let rows = inner
                .query(Pick::Write(|s| &s.insert_message), &[&channel, &data])
                .await?;
            let id: i64 = rows
                .first()
                .ok_or_else(|| Error::Backend("INSERT returned no id".into()))?
                .try_get(0)
                .map_err(err)?;
            let payload = format!("{id}|{id}|{tail}");
            let oversized = payload.len() >= NOTIFY_PAYLOAD_LIMIT;
            let mut notify_error = None;
            if !oversized {
                if let Err(e) = inner
                    .query(
                        Pick::Write(|s| &s.publish),
                        &[&inner.notify_channel, &payload],
                    )
                    .await
                {
                    notify_error = Some(e);
                }
            }
            (id, oversized, notify_error)
        };
        if id % s.clear_every() == 0 {
            // The three trimming steps of §4.3.4 in one statement (one round
            // trip, one commit); each deletes oldest rows, so running them
            // on one snapshot leaves the same rows as running them in turn.
            let global_floor = if id > global_size {
                id - global_size
            } else {
                0
            };
            inner
                .query(
                    Pick::Write(|s| &s.trim),
                    &[
                        &global_floor,
                        &format!("{age} seconds"),
                        &channel,
                        &id,
                        &size,
                    ],
                )
                .await?;
        }
        if oversized {
            // Our own listener reads it from the table now; others within a second.
            inner.proc().poke.notify_one();
            return Err(Error::Backend(format!(
                "message {id} to {channel} is stored, but its NOTIFY payload is {} bytes and PostgreSQL only accepts payloads shorter than {NOTIFY_PAYLOAD_LIMIT} bytes: reference message_bus processes will not receive it live (pollers and our processes will)",
                format!("{id}|{id}|").len() + tail.len()
            )));
        }
        if let Some(e) = notify_error {
            return Err(e);
        }
        Ok(Some(id))
    }

    async fn last_id(&self, channel: &str) -> Result<i64> {
        let inner = &self.inner;
        let rows = inner
            .query(Pick::Read(|s| &s.max_channel_id), &[&channel])
            .await?;
        let Some(row) = rows.first() else {
            return Ok(0);
        };
        Ok(row
            .try_get::<_, Option<i64>>(0)
            .map_err(|e| inner.to_error(e))?
            .unwrap_or(0))
    }

    async fn last_ids(&self, channels: &[String]) -> Result<Vec<i64>> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let rows = inner
            .query(Pick::Read(|s| &s.max_channel_ids), &[&channels])
            .await?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            let channel: String = r.try_get(0).map_err(|e| inner.to_error(e))?;
            let id: Option<i64> = r.try_get(1).map_err(|e| inner.to_error(e))?;
            found.insert(channel, id.unwrap_or(0));
        }
        Ok(channels
            .iter()
            .map(|c| found.get(c).copied().unwrap_or(0))
            .collect())
    }

    async fn backlog(&self, channel: &str, last_id: i64) -> Result<Vec<Message>> {
        let inner = &self.inner;
        let rows = inner
            .query(Pick::Read(|s| &s.channel_backlog), &[&channel, &last_id])
            .await?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.try_get(0).map_err(|e| inner.to_error(e))?;
                inner.channel_message(r, 1, id, channel)
            })
            .collect()
    }

    async fn global_backlog(&self, last_id: i64) -> Result<Vec<Message>> {
        self.inner.global_backlog(last_id).await
    }

    async fn get_message(&self, channel: &str, message_id: i64) -> Result<Option<Message>> {
        let inner = &self.inner;
        let rows = inner
            .query(Pick::Read(|s| &s.get_message), &[&channel, &message_id])
            .await?;
        rows.first()
            .map(|r| inner.channel_message(r, 0, message_id, channel))
            .transpose()
    }

    async fn reset(&self) -> Result<()> {
        let proc = self.inner.proc();
        let mut delivery = proc.delivery.lock().await;
        self.inner.recreate_table().await?;
        if delivery.highest.is_some() {
            delivery.highest = Some(0);
        }
        delivery.skipped.clear();
        // The epoch went with the table: the next reader creates one.
        self.inner.epoch.clear();
        self.inner.hub.storage_reset();
        Ok(())
    }

    async fn expire_all_backlogs(&self) -> Result<()> {
        self.reset().await
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
        if let Some(direct) = &self.inner.direct {
            direct.clear();
        }
        networked::destroy(&*self.inner);
    }

    fn after_fork(&self) {
        self.inner.proc();
    }

    fn is_subscribed(&self) -> bool {
        networked::is_subscribed(&*self.inner)
    }

    /// Publish and the plain reads on a synchronous connection of the
    /// caller's (see `direct.rs`), when the target allows one.
    fn direct<'a>(&'a self, call: DirectCall<'a>) -> Option<Box<dyn DirectRun + 'a>> {
        self.inner.direct.as_ref()?.start(&self.inner, call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_are_bounded_below_the_last_threshold_with_periodic_full_trims() {
        let backend = PostgresBackend::new("host=localhost dbname=x", "_message_bus_0").unwrap();
        let inner = &backend.inner;
        assert_eq!(inner.trim_floor(1), 0); // the first trim is full
        assert_eq!(inner.trim_floor(1), 0); // nothing trimmed yet
        inner.trimmed_to.fetch_max(5000, Ordering::Relaxed);
        assert_eq!(inner.trim_floor(1), 5000 - TRIM_MARGIN);
        inner.trims.store(FULL_TRIM_EVERY, Ordering::Relaxed);
        assert_eq!(inner.trim_floor(1), 0);
        assert_eq!(inner.trim_floor(1), 5000 - TRIM_MARGIN);
        // A batch is unbounded if it covers a multiple of FULL_TRIM_EVERY.
        inner
            .trims
            .store(2 * FULL_TRIM_EVERY - 10, Ordering::Relaxed);
        assert_eq!(inner.trim_floor(10), 5000 - TRIM_MARGIN); // up to 2F - 1
        assert_eq!(inner.trim_floor(64), 0); // 2F .. 2F + 63
        assert_eq!(inner.trim_floor(64), 5000 - TRIM_MARGIN);
        inner
            .trims
            .store(3 * FULL_TRIM_EVERY - 1, Ordering::Relaxed);
        assert_eq!(inner.trim_floor(2), 0); // 3F - 1 and 3F
    }
}
