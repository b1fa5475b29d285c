//! The PostgreSQL backend's caller-thread connections (`Backend::direct`,
//! issue 14) against the server on 127.0.0.1:5432 (trust auth, user
//! `postgres`). Each test creates its own database and drops it at the end.
//! PostgreSQL must be running: these tests fail, not skip, without it.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use message_bus_core::backend::postgres::PostgresBackend;
use message_bus_core::backend::{
    Backend, DirectCall, DirectReply, DirectResult, DirectRun, PublishOptions,
};
use message_bus_core::subscription::Batch;
use message_bus_core::Error;
use tokio_postgres::Client;

mod harness;
use harness::{block, done, never, pg_connect, PgDb as Db};

/// The test database, with what these tests also ask of it.
trait DirectDb {
    /// A second connection of the test's (to hold locks on).
    fn other(&self) -> Client;
    fn count(&self, sql: &str) -> i64;
    /// Waits until a statement in this database waits for a lock.
    fn wait_for_a_blocked_statement(&self);
}

impl DirectDb for Db {
    fn other(&self) -> Client {
        block(pg_connect(&self.name))
    }

    fn count(&self, sql: &str) -> i64 {
        block(self.client.query_one(sql, &[])).unwrap().get(0)
    }

    fn wait_for_a_blocked_statement(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.count(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE NOT l.granted AND a.datname = current_database()",
        ) == 0
        {
            assert!(Instant::now() < deadline, "no statement got blocked");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn publish<'a>(
    backend: &'a PostgresBackend,
    data: &'a str,
    opts: &'a PublishOptions,
) -> Box<dyn DirectRun + 'a> {
    backend
        .direct(DirectCall::Publish {
            channel: "/direct",
            data,
            opts,
        })
        .expect("a direct connection for a plain TCP target")
}

fn published(run: &mut Box<dyn DirectRun + '_>) -> i64 {
    match done(run) {
        DirectReply::Published(Some(id)) => id,
        other => panic!("not an id: {other:?}"),
    }
}

#[test]
fn direct_calls_answer_as_the_async_ones_do() {
    let db = Db::new();
    let backend = db.backend();
    let opts = PublishOptions::default();
    // No table yet: nothing ran, the async path creates it.
    let mut first = backend.direct(DirectCall::LastId("/direct")).unwrap();
    assert!(matches!(first.run(&never), Some(DirectResult::Fallback)));
    drop(first);
    assert_eq!(block(backend.last_id("/direct")).unwrap(), 0);

    let sub = block(backend.subscribe(None)).unwrap();
    for expected in 1..=3 {
        assert_eq!(
            published(&mut publish(&backend, &format!("m{expected}"), &opts)),
            expected
        );
    }
    let reply = done(&mut backend.direct(DirectCall::LastId("/direct")).unwrap());
    assert!(matches!(reply, DirectReply::Id(3)), "{reply:?}");
    let reply = done(&mut backend.direct(DirectCall::LastId("/none")).unwrap());
    assert!(matches!(reply, DirectReply::Id(0)), "{reply:?}");
    let channels = vec!["/none".to_string(), "/direct".to_string()];
    let reply = done(&mut backend.direct(DirectCall::LastIds(&channels)).unwrap());
    assert!(
        matches!(&reply, DirectReply::Ids(ids) if ids == &vec![0, 3]),
        "{reply:?}"
    );
    let DirectReply::Messages(direct) =
        done(&mut backend.direct(DirectCall::Backlog("/direct", 1)).unwrap())
    else {
        panic!("not messages")
    };
    assert_eq!(direct, block(backend.backlog("/direct", 1)).unwrap());
    assert_eq!(
        direct.iter().map(|m| m.data.as_str()).collect::<Vec<_>>(),
        vec!["m2", "m3"]
    );
    // The NOTIFYs went out with the rows: the firehose delivers them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut live = Vec::new();
    while live.len() < 3 && Instant::now() < deadline {
        if let Batch::Messages(batch) = sub.next_batch(3, Duration::from_millis(100)).unwrap() {
            live.extend(batch.iter().map(|m| (m.global_id, m.data.clone())));
        }
    }
    assert_eq!(
        live,
        vec![(1, "m1".into()), (2, "m2".into()), (3, "m3".into())]
    );
    block(backend.destroy());
}

#[test]
fn an_interrupted_publish_resumes_and_is_stored_once() {
    let db = Db::new();
    let backend = db.backend();
    let opts = PublishOptions::default();
    assert_eq!(block(backend.last_id("/direct")).unwrap(), 0);
    assert_eq!(published(&mut publish(&backend, "warm", &opts)), 1);

    // Another connection holds a lock the INSERT needs: the statement is
    // sent and its answer outstanding when the interrupt comes.
    let holder = db.other();
    block(holder.batch_execute("BEGIN; LOCK TABLE message_bus IN EXCLUSIVE MODE")).unwrap();
    let mut run = publish(&backend, "once", &opts);
    let flag = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            db.wait_for_a_blocked_statement();
            flag.store(true, Ordering::SeqCst);
        });
        assert!(run.run(&|| flag.load(Ordering::SeqCst)).is_none());
    });
    // Meanwhile the publish slot is taken: another publish goes async.
    assert!(backend
        .direct(DirectCall::Publish {
            channel: "/direct",
            data: "other",
            opts: &opts,
        })
        .is_none());
    // Interrupted again while still blocked: still waiting, not resent.
    assert!(run.run(&|| true).is_none());
    block(holder.batch_execute("COMMIT")).unwrap();
    assert_eq!(published(&mut run), 2);
    drop(run);
    assert_eq!(
        db.count("SELECT count(*) FROM message_bus WHERE value = 'once'"),
        1
    );
    assert_eq!(db.count("SELECT count(*) FROM message_bus"), 2);
    // The slot is free again.
    assert_eq!(published(&mut publish(&backend, "after", &opts)), 3);
}

#[test]
fn a_publish_dropped_while_waiting_frees_its_place() {
    let db = Db::new();
    let backend = db.backend();
    let opts = PublishOptions::default();
    assert_eq!(block(backend.last_id("/direct")).unwrap(), 0);
    let holder = db.other();
    block(holder.batch_execute("BEGIN; LOCK TABLE message_bus IN EXCLUSIVE MODE")).unwrap();
    let mut run = publish(&backend, "dropped", &opts);
    let flag = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            db.wait_for_a_blocked_statement();
            flag.store(true, Ordering::SeqCst);
        });
        assert!(run.run(&|| flag.load(Ordering::SeqCst)).is_none());
    });
    // Thread#kill or Timeout: the call is abandoned, its connection closed.
    drop(run);
    block(holder.batch_execute("COMMIT")).unwrap();
    let id = published(&mut publish(&backend, "next", &opts));
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM message_bus WHERE value = 'next' AND id = {id}"
        )),
        1
    );
    // The abandoned statement ran at most once (it may have committed).
    assert!(db.count("SELECT count(*) FROM message_bus WHERE value = 'dropped'") <= 1);
}

#[test]
fn a_publish_in_flight_on_the_async_path_keeps_publishes_off_the_direct_one() {
    let db = Db::new();
    let backend = Arc::new(db.backend());
    let opts = PublishOptions::default();
    assert_eq!(block(backend.last_id("/direct")).unwrap(), 0);
    let holder = db.other();
    block(holder.batch_execute("BEGIN; LOCK TABLE message_bus IN EXCLUSIVE MODE")).unwrap();
    let rt = message_bus_core::runtime::runtime().unwrap();
    let b = Arc::clone(&backend);
    let pending = rt.spawn(async move {
        b.publish("/direct", "async", &PublishOptions::default())
            .await
    });
    db.wait_for_a_blocked_statement();
    assert!(backend
        .direct(DirectCall::Publish {
            channel: "/direct",
            data: "direct",
            opts: &opts,
        })
        .is_none());
    // Reads are not held up.
    let reply = done(&mut backend.direct(DirectCall::LastId("/direct")).unwrap());
    assert!(matches!(reply, DirectReply::Id(0)), "{reply:?}");
    block(holder.batch_execute("COMMIT")).unwrap();
    assert_eq!(block(pending).unwrap().unwrap(), Some(1));
    assert_eq!(published(&mut publish(&backend, "direct", &opts)), 2);
}

#[test]
fn reconnects_after_the_server_ends_its_sessions() {
    let db = Db::new();
    let backend = db.backend();
    let opts = PublishOptions::default();
    assert_eq!(block(backend.last_id("/direct")).unwrap(), 0);
    assert_eq!(published(&mut publish(&backend, "before", &opts)), 1);
    let reply = done(&mut backend.direct(DirectCall::LastId("/direct")).unwrap());
    assert!(matches!(reply, DirectReply::Id(1)), "{reply:?}");

    let ours = "SELECT count(*) FROM pg_stat_activity \
                WHERE datname = current_database() AND pid <> pg_backend_pid()";
    assert!(db.count(ours) >= 2, "the direct connections are open");
    db.count(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM ({}) t",
        ours.replace("count(*)", "pid")
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while db.count(ours) > 0 {
        assert!(Instant::now() < deadline, "sessions still there");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Found closed before sending: reopened, and the call goes direct.
    let reply = done(&mut backend.direct(DirectCall::LastId("/direct")).unwrap());
    assert!(matches!(reply, DirectReply::Id(1)), "{reply:?}");
    assert_eq!(published(&mut publish(&backend, "after", &opts)), 2);
    assert_eq!(db.count("SELECT count(*) FROM message_bus"), 2);
}

#[test]
fn an_unreachable_server_falls_back_to_the_async_path() {
    // A port nobody listens on: the listener is closed before the call.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let backend = PostgresBackend::new(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=x"),
        "_message_bus_0",
    )
    .unwrap();
    let opts = PublishOptions::default();
    for _ in 0..2 {
        // Each time: nothing was sent, and the publish slot is given back.
        let mut run = publish(&backend, "down", &opts);
        assert!(matches!(run.run(&never), Some(DirectResult::Fallback)));
    }
    let mut run = backend.direct(DirectCall::LastId("/direct")).unwrap();
    assert!(matches!(run.run(&never), Some(DirectResult::Fallback)));
    drop(run);
    // The async path then reports the error.
    assert!(matches!(
        block(backend.publish("/direct", "down", &opts)),
        Err(Error::Connection(_))
    ));
}

#[test]
fn a_full_pool_tls_and_several_hosts_take_the_async_path() {
    let db = Db::new();
    let backend = db.backend();
    let held: Vec<_> = (0..4)
        .map(|_| backend.direct(DirectCall::LastId("/full")).unwrap())
        .collect();
    assert!(backend.direct(DirectCall::LastId("/full")).is_none());
    drop(held);
    // Calls that never ran give their places back.
    assert!(block(backend.last_id("/full")).is_ok());
    let reply = done(&mut backend.direct(DirectCall::LastId("/full")).unwrap());
    assert!(matches!(reply, DirectReply::Id(0)), "{reply:?}");

    for conninfo in [
        "host=127.0.0.1 user=postgres dbname=x sslmode=require",
        "host=127.0.0.1,127.0.0.2 user=postgres dbname=x",
        "host=127.0.0.1 user=postgres dbname=x target_session_attrs=read-write",
    ] {
        let backend = PostgresBackend::new(conninfo, "_message_bus_0").unwrap();
        assert!(
            backend.direct(DirectCall::LastId("/x")).is_none(),
            "{conninfo}"
        );
    }
}

#[test]
fn unix_socket_targets_go_direct() {
    let db = Db::new();
    // bin/isolated mounts its server's socket directory there.
    let backend = PostgresBackend::new(
        &format!("host=/var/run/postgresql user=postgres dbname={}", db.name),
        "_message_bus_0",
    )
    .unwrap();
    assert_eq!(block(backend.last_id("/unix")).unwrap(), 0);
    let opts = PublishOptions::default();
    let mut run = backend
        .direct(DirectCall::Publish {
            channel: "/unix",
            data: "over a socket",
            opts: &opts,
        })
        .unwrap();
    assert_eq!(published(&mut run), 1);
    drop(run);
    let reply = done(&mut backend.direct(DirectCall::LastId("/unix")).unwrap());
    assert!(matches!(reply, DirectReply::Id(1)), "{reply:?}");
}
