//! What the backend test files share: a backend of each kind on storage of
//! its own, and the real servers behind them (no mocks). Redis: the server
//! on 127.0.0.1:6379, one database leased per test (flushed when taken and
//! when given back), or a private `redis-server` started (and killed, by
//! pid) by the test. PostgreSQL: the server on 127.0.0.1:5432 (trust auth,
//! user `postgres`), one database created per test and dropped at its end.
//! Both must be running: the tests fail, not skip, without them.
// Each test crate uses a part of this module.
#![allow(dead_code, unused_macros)]

use std::future::Future;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use message_bus_core::backend::memory::MemoryBackend;
use message_bus_core::backend::postgres::PostgresBackend;
use message_bus_core::backend::redis::RedisBackend;
use message_bus_core::backend::{Backend, DirectReply, DirectResult, DirectRun, PublishOptions};
use message_bus_core::subscription::{Batch, Subscription};
use message_bus_core::Message;

pub fn block<F: Future>(f: F) -> F::Output {
    message_bus_core::runtime::runtime().unwrap().block_on(f)
}

/// An interrupt check that never fires.
pub fn never() -> bool {
    false
}

/// Drives a direct call to its reply (panics if it fails, falls back or
/// stops).
pub fn done(run: &mut Box<dyn DirectRun + '_>) -> DirectReply {
    match run.run(&never) {
        Some(DirectResult::Done(Ok(reply))) => reply,
        Some(DirectResult::Done(Err(e))) => panic!("direct call failed: {e}"),
        Some(DirectResult::Fallback) => panic!("direct call fell back"),
        None => panic!("direct call interrupted"),
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn publish(b: &dyn Backend, channel: &str, data: &str) -> Option<i64> {
    block(b.publish(channel, data, &PublishOptions::default())).unwrap()
}

/// Collects messages from a subscription until `n` arrived or 10 s passed.
pub fn receive(sub: &Subscription, n: usize) -> Vec<Message> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if let Batch::Messages(batch) = sub
            .next_batch(n - out.len(), Duration::from_millis(50))
            .unwrap()
        {
            out.extend(batch.iter().map(|m| (**m).clone()));
        }
    }
    out
}

/// A firehose subscription of `b`, once `b` is subscribed.
pub fn subscribe(b: &dyn Backend, last_id: Option<i64>) -> Arc<Subscription> {
    let sub = block(b.subscribe(last_id)).unwrap();
    wait_until("the firehose subscription", || b.is_subscribed());
    sub
}

pub fn global_ids(messages: &[Message]) -> Vec<i64> {
    messages.iter().map(|m| m.global_id).collect()
}

pub fn message_ids(messages: &[Message]) -> Vec<i64> {
    messages.iter().map(|m| m.message_id).collect()
}

pub fn data(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.data.as_str()).collect()
}

/// The backends every contract case runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Redis,
    Postgres,
}

/// A backend on storage of its own for one test.
pub struct Store {
    pub kind: Kind,
    backend: Arc<dyn Backend>,
    redis: Option<RedisDb>,
    postgres: Option<PgDb>,
}

impl Store {
    pub fn new(kind: Kind) -> Store {
        match kind {
            Kind::Memory => Store {
                kind,
                backend: Arc::new(MemoryBackend::new()),
                redis: None,
                postgres: None,
            },
            Kind::Redis => {
                let db = RedisDb::lease();
                Store {
                    kind,
                    backend: Arc::new(db.backend()),
                    redis: Some(db),
                    postgres: None,
                }
            }
            Kind::Postgres => {
                let db = PgDb::new();
                Store {
                    kind,
                    backend: Arc::new(db.backend()),
                    redis: None,
                    postgres: Some(db),
                }
            }
        }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Another process's backend on the same storage. The memory backend's
    /// storage is the backend object itself: it is the same one.
    pub fn another(&self) -> Arc<dyn Backend> {
        match (&self.redis, &self.postgres) {
            (Some(db), _) => Arc::new(db.backend()),
            (_, Some(db)) => Arc::new(db.backend()),
            _ => Arc::clone(&self.backend),
        }
    }

    pub fn subscribe(&self, last_id: Option<i64>) -> Arc<Subscription> {
        subscribe(&*self.backend, last_id)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        block(self.backend.destroy());
    }
}

/// Runs `case` against a fresh store of `kind`.
pub fn run(kind: Kind, case: fn(&Store)) {
    let store = Store::new(kind);
    case(&store);
}

/// One `#[test]` per backend for each case: `mod <case> { memory, redis,
/// postgres }`.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            use crate::harness::{run, Kind};
            #[test]
            fn memory() {
                run(Kind::Memory, super::$case)
            }
            #[test]
            fn redis() {
                run(Kind::Redis, super::$case)
            }
            #[test]
            fn postgres() {
                run(Kind::Postgres, super::$case)
            }
        }
    )*};
}

/// Databases of the shared Redis that tests lease (15 is tests/redis_direct.rs's).
const REDIS_DBS: std::ops::RangeInclusive<u8> = 1..=14;

struct Leases {
    free: Mutex<Vec<u8>>,
    returned: Condvar,
}

static LEASES: std::sync::OnceLock<Leases> = std::sync::OnceLock::new();

fn leases() -> &'static Leases {
    LEASES.get_or_init(|| Leases {
        free: Mutex::new(REDIS_DBS.rev().collect()),
        returned: Condvar::new(),
    })
}

/// One database of the shared Redis, flushed when leased and when dropped.
pub struct RedisDb {
    pub n: u8,
    pub con: redis::Connection,
}

impl RedisDb {
    /// A free database (waits while every one is leased).
    pub fn lease() -> RedisDb {
        let leases = leases();
        let mut free = leases.free.lock().unwrap_or_else(|p| p.into_inner());
        let n = loop {
            if let Some(n) = free.pop() {
                break n;
            }
            free = leases
                .returned
                .wait(free)
                .unwrap_or_else(|p| p.into_inner());
        };
        drop(free);
        let client = redis::Client::open(format!("redis://127.0.0.1:6379/{n}")).unwrap();
        let mut con = client
            .get_connection()
            .expect("Redis must be running on 127.0.0.1:6379");
        redis::cmd("FLUSHDB").exec(&mut con).unwrap();
        RedisDb { n, con }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:6379/{}", self.n)
    }

    pub fn pubsub_channel(&self) -> String {
        format!("_message_bus_{}", self.n)
    }

    pub fn backend(&self) -> RedisBackend {
        RedisBackend::new(&self.url(), &self.pubsub_channel()).unwrap()
    }
}

impl Drop for RedisDb {
    fn drop(&mut self) {
        let _ = redis::cmd("FLUSHDB").exec(&mut self.con);
        let leases = leases();
        leases
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.n);
        leases.returned.notify_one();
    }
}

/// A private redis-server, killed (by pid) when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    dir: std::path::PathBuf,
}

impl RedisServer {
    pub fn start_on(port: u16) -> RedisServer {
        // Replication may write an RDB file: keep it out of the work tree.
        let dir = std::env::temp_dir().join(format!("mb-redis-test-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--dir",
                dir.to_str().unwrap(),
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        let server = RedisServer { port, child, dir };
        wait_until("redis-server to start", || {
            server
                .client()
                .get_connection()
                .is_ok_and(|mut con| redis::cmd("PING").query::<String>(&mut con).is_ok())
        });
        server
    }

    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}/0", self.port)).unwrap()
    }

    pub fn con(&self) -> redis::Connection {
        self.client().get_connection().unwrap()
    }

    pub fn backend(&self) -> RedisBackend {
        RedisBackend::new(
            &format!("redis://127.0.0.1:{}/0", self.port),
            "_message_bus_0",
        )
        .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Drops every pub/sub connection of a Redis (the firehose's).
pub fn kill_pubsub_connections(con: &mut redis::Connection) {
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(con)
        .unwrap();
}

pub async fn pg_connect(db: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port=5432 user=postgres dbname={db}"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("PostgreSQL must be running on 127.0.0.1:5432");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A PostgreSQL database of its own, dropped at the end.
pub struct PgDb {
    pub name: String,
    pub client: tokio_postgres::Client,
}

impl PgDb {
    pub fn new() -> PgDb {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "mb_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        block(async {
            let admin = pg_connect("postgres").await;
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            let client = pg_connect(&name).await;
            PgDb { name, client }
        })
    }

    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port=5432 user=postgres dbname={}",
            self.name
        )
    }

    pub fn backend(&self) -> PostgresBackend {
        PostgresBackend::new(&self.conninfo(), "_message_bus_0").unwrap()
    }

    /// The rows of `sql` as text.
    pub fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        block(async {
            self.client
                .simple_query(sql)
                .await
                .unwrap()
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(String::from)).collect())
                    }
                    _ => None,
                })
                .collect()
        })
    }

    pub fn exec(&self, sql: &str) {
        block(self.client.batch_execute(sql)).unwrap();
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        block(async move {
            let admin = pg_connect("postgres").await;
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        });
    }
}

/// Text cells, for comparing with [`PgDb::rows`].
pub fn cells(v: &[&str]) -> Vec<Option<String>> {
    v.iter().map(|x| Some(x.to_string())).collect()
}
