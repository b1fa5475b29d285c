//! The Redis backend's caller-thread connections (`Backend::direct`, issue
//! 14) against the shared server on 127.0.0.1:6379, database 15 (flushed
//! before and after, one test at a time). Redis must be running: these tests fail without it.

use std::cell::Cell;
use std::net::TcpListener;
use std::sync::{Mutex, MutexGuard};

use message_bus_core::backend::redis::RedisBackend;
use message_bus_core::backend::{
    Backend, DirectCall, DirectReply, DirectResult, DirectRun, PublishOptions,
};
use message_bus_core::Error;

mod harness;
use harness::{done, never};

const DB: u8 = 15;

/// One database for every test here: they take turns.
static TURN: Mutex<()> = Mutex::new(());

struct Db {
    con: redis::Connection,
    _turn: MutexGuard<'static, ()>,
}

impl Db {
    fn new() -> Db {
        let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let client = redis::Client::open(format!("redis://127.0.0.1:6379/{DB}")).unwrap();
        let mut con = client
            .get_connection()
            .expect("Redis must be running on 127.0.0.1:6379");
        redis::cmd("FLUSHDB").exec(&mut con).unwrap();
        Db { con, _turn: turn }
    }

    fn backend(&self) -> RedisBackend {
        RedisBackend::new(
            &format!("redis://127.0.0.1:6379/{DB}"),
            &format!("_message_bus_{DB}"),
        )
        .unwrap()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = redis::cmd("FLUSHDB").exec(&mut self.con);
    }
}

fn publish<'a>(
    backend: &'a RedisBackend,
    channel: &'a str,
    opts: &'a PublishOptions,
) -> Box<dyn DirectRun + 'a> {
    backend
        .direct(DirectCall::Publish {
            channel,
            data: "hello",
            opts,
        })
        .expect("a direct connection for a plain TCP target")
}

#[test]
fn direct_calls_answer_as_the_async_ones_do() {
    let db = Db::new();
    let backend = db.backend();
    let opts = PublishOptions::default();
    let rt = message_bus_core::runtime::runtime().unwrap();
    for expected in 1..=3 {
        let reply = done(&mut publish(&backend, "/direct", &opts));
        assert!(
            matches!(reply, DirectReply::Published(Some(id)) if id == expected),
            "{reply:?}"
        );
    }
    let reply = done(&mut backend.direct(DirectCall::LastId("/direct")).unwrap());
    assert!(matches!(reply, DirectReply::Id(3)), "{reply:?}");
    let channels = vec!["/direct".to_string(), "/none".to_string()];
    let reply = done(&mut backend.direct(DirectCall::LastIds(&channels)).unwrap());
    assert!(
        matches!(&reply, DirectReply::Ids(ids) if ids == &vec![3, 0]),
        "{reply:?}"
    );
    let DirectReply::Messages(direct) =
        done(&mut backend.direct(DirectCall::Backlog("/direct", 1)).unwrap())
    else {
        panic!("not messages")
    };
    let async_backlog = rt.block_on(backend.backlog("/direct", 1)).unwrap();
    assert_eq!(direct, async_backlog);
    assert_eq!(
        direct.iter().map(|m| m.message_id).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(rt.block_on(backend.last_id("/direct")).unwrap(), 3);
}

#[test]
fn an_interrupted_publish_resumes_and_is_stored_once() {
    let db = Db::new();
    let backend = db.backend();
    let opts = PublishOptions::default();
    // Interrupted before anything was sent: nothing stored, resumable.
    let mut run = publish(&backend, "/interrupted", &opts);
    assert!(run.run(&|| true).is_none());
    // Interrupted while awaiting the reply (the third look at the flag:
    // connect, send, then the wait): resumed, it awaits the same reply.
    let looks = Cell::new(0);
    let third = || {
        looks.set(looks.get() + 1);
        looks.get() == 3
    };
    assert!(run.run(&third).is_none());
    assert_eq!(looks.get(), 3);
    let reply = done(&mut run);
    assert!(
        matches!(reply, DirectReply::Published(Some(1))),
        "{reply:?}"
    );
    drop(run);
    let rt = message_bus_core::runtime::runtime().unwrap();
    let stored = rt.block_on(backend.backlog("/interrupted", 0)).unwrap();
    assert_eq!(stored.len(), 1);
}

#[test]
fn a_full_pool_leaves_the_call_to_the_shared_connection() {
    let db = Db::new();
    let backend = db.backend();
    let opts = PublishOptions::default();
    let held: Vec<_> = (0..4).map(|_| publish(&backend, "/full", &opts)).collect();
    assert!(backend.direct(DirectCall::LastId("/full")).is_none());
    drop(held);
    // Calls that never ran give their places back.
    let reply = done(&mut backend.direct(DirectCall::LastId("/full")).unwrap());
    assert!(matches!(reply, DirectReply::Id(0)), "{reply:?}");
}

#[test]
fn tls_targets_take_the_async_path() {
    let backend = RedisBackend::new("rediss://127.0.0.1:6380/0", "_message_bus_0").unwrap();
    assert!(backend.direct(DirectCall::LastId("/tls")).is_none());
}

#[test]
fn an_unreachable_redis_queues_the_publish_or_fails_it() {
    // A port nobody listens on: the listener is closed before the call.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let backend =
        RedisBackend::new(&format!("redis://127.0.0.1:{port}/0"), "_message_bus_0").unwrap();
    let opts = PublishOptions::default();
    let reply = done(&mut publish(&backend, "/down", &opts));
    assert!(matches!(reply, DirectReply::Published(None)), "{reply:?}");
    assert_eq!(backend.queued_publishes(), 1);
    // With a queue in front, publishes keep their order through it.
    assert!(backend
        .direct(DirectCall::Publish {
            channel: "/down",
            data: "second",
            opts: &opts,
        })
        .is_none());
    let strict = PublishOptions {
        queue_in_memory: Some(false),
        ..PublishOptions::default()
    };
    match publish(&backend, "/down", &strict).run(&never) {
        Some(DirectResult::Done(Err(Error::Connection(_)))) => {}
        Some(DirectResult::Done(other)) => panic!("expected a connection error, got {other:?}"),
        _ => panic!("expected a connection error"),
    }
    let rt = message_bus_core::runtime::runtime().unwrap();
    rt.block_on(backend.destroy());
}
