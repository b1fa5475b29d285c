//! The Redis backend's own cases (its storage format, what a real server
//! does when it fails, restarts or turns read-only, the last-id cache of web
//! polls), against the shared server on 127.0.0.1:6379 (a database leased per
//! test) or private `redis-server`s started here. What every backend does is
//! in `backend_contract.rs`.

mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{
    block, free_port, global_ids, kill_pubsub_connections, publish, receive, subscribe, wait_until,
    RedisDb, RedisServer,
};
use message_bus_core::backend::redis::RedisBackend;
use message_bus_core::backend::{Backend, PublishOptions, Settings};
use message_bus_core::subscription::Subscription;
use message_bus_core::{Error, Message};
use redis::Commands;

fn zrange(con: &mut redis::Connection, key: &str) -> Vec<(String, f64)> {
    con.zrange_withscores(key, 0, -1).unwrap()
}

fn members(con: &mut redis::Connection, key: &str) -> Vec<String> {
    con.zrange(key, 0, -1).unwrap()
}

fn scores(con: &mut redis::Connection, key: &str) -> Vec<i64> {
    zrange(con, key)
        .into_iter()
        .map(|(_, s)| s as i64)
        .collect()
}

const ENVELOPE: &str = r#"{"data":"s","user_ids":[1,2],"group_ids":null,"client_ids":["c"]}"#;

#[test]
fn publish_writes_the_reference_keys_and_members() {
    let mut db = RedisDb::lease();
    let b = db.backend();
    assert_eq!(publish(&b, "/foo$|$s1", "123"), Some(1));
    assert_eq!(publish(&b, "/foo|bar", "x|y"), Some(1));
    assert_eq!(publish(&b, "/foo$|$s1", ENVELOPE), Some(2));
    assert_eq!(publish(&b, "/global/x", "g"), Some(1));

    let con = &mut db.con;
    assert_eq!(
        zrange(con, "__mb_backlog_n_/foo$|$s1"),
        vec![
            ("1|1|/foo$$$123$$$s1|123".to_string(), 1.0),
            (format!("3|2|/foo$$$123$$$s1|{ENVELOPE}"), 2.0),
        ]
    );
    assert_eq!(
        zrange(con, "__mb_backlog_n_/foo|bar"),
        vec![("2|1|/foo$$123$$bar|x|y".to_string(), 1.0)]
    );
    assert_eq!(
        zrange(con, "__mb_global_backlog_n"),
        vec![
            ("1|/foo$|$s1".to_string(), 1.0),
            ("1|/foo|bar".to_string(), 2.0),
            ("2|/foo$|$s1".to_string(), 3.0),
            ("1|/global/x".to_string(), 4.0),
        ]
    );
    let get = |con: &mut redis::Connection, k: &str| -> Option<String> { con.get(k).unwrap() };
    assert_eq!(get(con, "__mb_global_id_n").as_deref(), Some("4"));
    assert_eq!(
        get(con, "__mb_backlog_id_n_/foo$|$s1").as_deref(),
        Some("2")
    );
    assert_eq!(get(con, "__mb_backlog_id_n_/foo|bar").as_deref(), Some("1"));
    assert_eq!(
        get(con, "__mb_backlog_id_n_/global/x").as_deref(),
        Some("1")
    );

    let mut keys: Vec<String> = con.keys("*").unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "__mb_backlog_id_n_/foo$|$s1",
            "__mb_backlog_id_n_/foo|bar",
            "__mb_backlog_id_n_/global/x",
            "__mb_backlog_n_/foo$|$s1",
            "__mb_backlog_n_/foo|bar",
            "__mb_backlog_n_/global/x",
            "__mb_global_backlog_n",
            "__mb_global_id_n",
        ]
    );

    // TTLs: every publish arms the channel keys and the global backlog; the
    // global id counter never expires.
    let ttl = |con: &mut redis::Connection, k: &str| -> i64 { con.ttl(k).unwrap() };
    assert!((604_790..=604_800).contains(&ttl(con, "__mb_backlog_n_/foo$|$s1")));
    assert!((604_790..=604_800).contains(&ttl(con, "__mb_backlog_id_n_/foo$|$s1")));
    assert_eq!(ttl(con, "__mb_global_id_n"), -1);
    let opts = PublishOptions {
        max_backlog_age: Some(100),
        ..Default::default()
    };
    block(b.publish("/foo|bar", "z", &opts)).unwrap();
    assert!((90..=100).contains(&ttl(con, "__mb_backlog_n_/foo|bar")));
    assert!((90..=100).contains(&ttl(con, "__mb_backlog_id_n_/foo|bar")));
    assert!((90..=100).contains(&ttl(con, "__mb_global_backlog_n")));
    assert!(ttl(con, "__mb_backlog_n_/foo$|$s1") > 604_000);

    // The backend reads back what it wrote.
    assert_eq!(block(b.last_id("/foo$|$s1")).unwrap(), 2);
    let m = block(b.get_message("/foo$|$s1", 2)).unwrap().unwrap();
    assert_eq!(m, Message::new(3, 2, "/foo$|$s1", ENVELOPE));
    let all = block(b.global_backlog(0)).unwrap();
    assert_eq!(global_ids(&all), vec![1, 2, 3, 4, 5]);
    assert_eq!(all[1], Message::new(2, 1, "/foo|bar", "x|y"));
}

/// The reference's trimming example at the storage level (what the API
/// reads is in the contract): the global set keeps the entries of channel
/// messages already trimmed, and trims by its own size and `clear_every`.
#[test]
fn trimming_follows_the_reference_example_in_the_sorted_sets() {
    let mut db = RedisDb::lease();
    let b = db.backend();
    let s = b.settings();
    Settings::set(&s.max_backlog_size, 2);
    Settings::set(&s.max_global_backlog_size, 4);
    Settings::set(&s.clear_every, 3);
    let global_expected: [&[i64]; 7] = [
        &[1],
        &[1, 2],
        &[1, 2, 3],
        &[1, 2, 3, 4],
        &[1, 2, 3, 4, 5],
        &[3, 4, 5, 6],
        &[3, 4, 5, 6, 7],
    ];
    for (i, expected) in global_expected.iter().enumerate() {
        assert_eq!(publish(&b, "/t", &i.to_string()), Some(i as i64 + 1));
        assert_eq!(scores(&mut db.con, "__mb_global_backlog_n"), *expected);
    }
    assert_eq!(scores(&mut db.con, "__mb_backlog_n_/t"), [5, 6, 7]);
}

#[test]
fn reads_messages_written_by_reference_processes() {
    let mut db = RedisDb::lease();
    let con = &mut db.con;
    // What a reference process leaves behind, written with plain commands.
    let _: () = con.set("__mb_global_id_n", "5").unwrap();
    let _: () = con.set("__mb_backlog_id_n_/a", "3").unwrap();
    let _: () = con.set("__mb_backlog_id_n_/b|c$|$s", "1").unwrap();
    let _: () = con
        .zadd_multiple(
            "__mb_backlog_n_/a",
            &[
                (1, "1|1|/a|one"),
                (2, "3|2|/a|two|with|pipes"),
                (3, "5|3|/a|three"),
            ],
        )
        .unwrap();
    let _: () = con
        .zadd("__mb_backlog_n_/b|c$|$s", "2|1|/b$$123$$c$$$123$$$s|bc", 1)
        .unwrap();
    let _: () = con
        .zadd_multiple(
            "__mb_global_backlog_n",
            &[
                (1, "1|/a"),
                (2, "1|/b|c$|$s"),
                (3, "2|/a"),
                (4, "9|/gone"), // its channel message vanished
                (5, "3|/a"),
                (6, "garbage"),
            ],
        )
        .unwrap();
    // A value not in the wire format is skipped, not fatal.
    let _: () = con.zadd("__mb_backlog_n_/a", "not a message", 4).unwrap();

    let b = db.backend();
    assert_eq!(block(b.last_id("/a")).unwrap(), 3);
    assert_eq!(block(b.last_id("/nothing")).unwrap(), 0);
    assert_eq!(
        block(b.last_ids(&["/b|c$|$s".into(), "/x".into(), "/a".into()])).unwrap(),
        vec![1, 0, 3]
    );
    assert_eq!(block(b.last_ids(&[])).unwrap(), Vec::<i64>::new());
    let backlog = block(b.backlog("/a", 1)).unwrap();
    assert_eq!(
        backlog,
        vec![
            Message::new(3, 2, "/a", "two|with|pipes"),
            Message::new(5, 3, "/a", "three"),
        ]
    );
    assert_eq!(block(b.backlog("/a", 3)).unwrap(), vec![]);
    assert_eq!(
        block(b.get_message("/b|c$|$s", 1)).unwrap(),
        Some(Message::new(2, 1, "/b|c$|$s", "bc"))
    );
    assert_eq!(block(b.get_message("/a", 9)).unwrap(), None);
    assert_eq!(block(b.get_message("/a", 4)).unwrap(), None);
    assert_eq!(
        global_ids(&block(b.global_backlog(0)).unwrap()),
        vec![1, 2, 3, 5]
    );
    assert_eq!(global_ids(&block(b.global_backlog(2)).unwrap()), vec![3, 5]);

    // Our publishes continue the reference counters.
    assert_eq!(publish(&b, "/a", "four"), Some(4));
    assert_eq!(
        block(b.get_message("/a", 4)).unwrap(),
        Some(Message::new(6, 4, "/a", "four"))
    );
}

#[test]
fn a_channel_expires_after_its_age_without_publishes() {
    let db = RedisDb::lease();
    let b = db.backend();
    let opts = PublishOptions {
        max_backlog_age: Some(1),
        ..Default::default()
    };
    block(b.publish("/short", "1", &opts)).unwrap();
    block(b.publish("/short", "2", &opts)).unwrap();
    assert_eq!(block(b.last_id("/short")).unwrap(), 2);
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(block(b.last_id("/short")).unwrap(), 0);
    assert!(block(b.backlog("/short", 0)).unwrap().is_empty());
    // the global backlog had the same age; the global id keeps counting
    assert!(block(b.global_backlog(0)).unwrap().is_empty());
    assert_eq!(block(b.publish("/short", "3", &opts)).unwrap(), Some(1));
    assert_eq!(
        block(b.get_message("/short", 1))
            .unwrap()
            .unwrap()
            .global_id,
        3
    );
}

#[test]
fn reset_and_expire_all_backlogs() {
    let mut db = RedisDb::lease();
    let b = db.backend();
    publish(&b, "/a", "1");
    publish(&b, "/b", "2");
    let _: () = db.con.set("__mb_is_readonly", "1").unwrap();
    let _: () = db.con.set("unrelated", "x").unwrap();

    block(b.expire_all_backlogs()).unwrap();
    let mut keys: Vec<String> = db.con.keys("*").unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "__mb_backlog_id_n_/a",
            "__mb_backlog_id_n_/b",
            "__mb_global_id_n",
            "__mb_is_readonly",
            "unrelated"
        ]
    );
    assert_eq!(block(b.last_id("/a")).unwrap(), 1);
    assert_eq!(publish(&b, "/a", "3"), Some(2));
    assert_eq!(block(b.get_message("/a", 2)).unwrap().unwrap().global_id, 3);

    block(b.reset()).unwrap();
    let keys: Vec<String> = db.con.keys("*").unwrap();
    assert_eq!(keys, vec!["unrelated"]);
    assert_eq!(publish(&b, "/a", "4"), Some(1));
    assert_eq!(
        block(b.global_backlog(0)).unwrap(),
        vec![Message::new(1, 1, "/a", "4")]
    );

    // SCAN covers more keys than one batch.
    for i in 0..2500 {
        let _: () = db.con.set(format!("__mb_backlog_id_n_/c{i}"), i).unwrap();
    }
    block(b.reset()).unwrap();
    let keys: Vec<String> = db.con.keys("*").unwrap();
    assert_eq!(keys, vec!["unrelated"]);
}

#[test]
fn firehose_uses_per_channel_ids_and_catches_up_after_a_gap() {
    let mut db = RedisDb::lease();
    let b = db.backend();
    publish(&b, "/a", "before-1");
    publish(&b, "/a", "before-2");
    assert!(!b.is_subscribed());

    let live = subscribe(&b, None);
    let replay = subscribe(&b, Some(1));
    publish(&b, "/a", "3");
    publish(&b, "/b", "4");
    let got = receive(&live, 2);
    assert_eq!(global_ids(&got), vec![3, 4]);
    assert_eq!(got[1], Message::new(4, 1, "/b", "4"));
    assert_eq!(global_ids(&receive(&replay, 3)), vec![2, 3, 4]);

    // A message stored without being published (as if its PUBLISH was lost):
    // the next live message reveals the gap and the backlog fills it.
    let con = &mut db.con;
    let gid: i64 = con.incr("__mb_global_id_n", 1).unwrap();
    let mid: i64 = con.incr("__mb_backlog_id_n_/b", 1).unwrap();
    let _: () = con
        .zadd("__mb_backlog_n_/b", format!("{gid}|{mid}|/b|silent"), mid)
        .unwrap();
    let _: () = con
        .zadd("__mb_global_backlog_n", format!("{mid}|/b"), gid)
        .unwrap();
    // And a global entry whose channel message is gone: a hole, no stall.
    let hole: i64 = con.incr("__mb_global_id_n", 1).unwrap();
    let _: () = con
        .zadd("__mb_global_backlog_n", "99|/vanished", hole)
        .unwrap();
    let started = Instant::now();
    publish(&b, "/a", "7");
    let got = receive(&live, 2);
    assert_eq!(global_ids(&got), vec![5, 7]);
    assert_eq!(got[0].data, "silent");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(global_ids(&receive(&replay, 2)), vec![5, 7]);

    block(b.destroy());
}

#[test]
fn a_foreign_unsubscribe_and_garbage_payloads_are_ignored() {
    let mut db = RedisDb::lease();
    let b = db.backend();
    let sub = subscribe(&b, None);
    message_bus_core::log::drain();
    let _: () = db
        .con
        .publish(db.pubsub_channel(), "$$UNSUBSCRIBE")
        .unwrap();
    let _: () = db.con.publish(db.pubsub_channel(), "nonsense").unwrap();
    publish(&b, "/a", "still here");
    assert_eq!(
        receive(&sub, 1),
        vec![Message::new(1, 1, "/a", "still here")]
    );
    assert!(b.is_subscribed());
    let log = message_bus_core::log::drain();
    assert!(log.iter().any(|l| l.contains("$$UNSUBSCRIBE")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("nonsense")), "{log:?}");
    block(b.destroy());
}

#[test]
fn firehose_reconnects_and_replays_what_it_missed() {
    let server = RedisServer::start();
    let b = server.backend();
    let sub = subscribe(&b, None);
    publish(&b, "/a", "1");
    assert_eq!(global_ids(&receive(&sub, 1)), vec![1]);

    let mut con = server.con();
    kill_pubsub_connections(&mut con);
    wait_until("the disconnect", || !b.is_subscribed());
    publish(&b, "/a", "2");
    publish(&b, "/a", "3");
    wait_until("the reconnect", || b.is_subscribed());
    publish(&b, "/a", "4");
    assert_eq!(global_ids(&receive(&sub, 3)), vec![2, 3, 4]);
    block(b.destroy());
}

#[test]
fn read_only_publishes_are_queued_and_flushed_in_order() {
    let primary = RedisServer::start();
    let replica = RedisServer::start();
    let b = replica.backend();
    let sub = subscribe(&b, None);
    publish(&b, "/a", "writable");
    assert_eq!(global_ids(&receive(&sub, 1)), vec![1]);

    let mut rcon = replica.con();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(primary.port)
        .query(&mut rcon)
        .unwrap();
    // Wait until the replica has taken the (empty) primary's data set.
    wait_until("the replication link", || {
        redis::cmd("INFO")
            .arg("replication")
            .query::<String>(&mut rcon)
            .is_ok_and(|info| info.contains("master_link_status:up"))
    });

    Settings::set(&b.settings().max_in_memory_publish_backlog, 3);
    let refused = block(b.publish(
        "/a",
        "x",
        &PublishOptions {
            queue_in_memory: Some(false),
            ..Default::default()
        },
    ));
    assert!(
        matches!(refused, Err(Error::Backend(ref m)) if m.contains("read only")),
        "{refused:?}"
    );
    assert_eq!(publish(&b, "/a", "q0"), None);
    let with_age = PublishOptions {
        max_backlog_age: Some(500),
        ..Default::default()
    };
    assert_eq!(block(b.publish("/kept", "q1", &with_age)).unwrap(), None);
    assert_eq!(publish(&b, "/a", "q2"), None);
    assert_eq!(publish(&b, "/a", "q3"), None); // drops q0
    assert_eq!(b.queued_publishes(), 3);
    assert_eq!(b.dropped_publishes(), 1);

    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut rcon)
        .unwrap();
    wait_until("the flush", || b.queued_publishes() == 0);
    let got = receive(&sub, 3);
    let data: Vec<&str> = got.iter().map(|m| m.data.as_str()).collect();
    // q3 dropped the oldest entry not being published: q0, or q1 when the
    // flusher was publishing q0 at that moment (q0 may have been stored;
    // a publish counted as dropped must never arrive).
    let q0_was_being_sent = data == ["q0", "q2", "q3"];
    assert!(data == ["q1", "q2", "q3"] || q0_was_being_sent, "{data:?}");
    // The replica took the (empty) primary's data: ids restarted.
    assert_eq!(global_ids(&got), vec![1, 2, 3]);
    if !q0_was_being_sent {
        let ttl: i64 = rcon.ttl("__mb_backlog_n_/kept").unwrap();
        assert!(
            (490..=500).contains(&ttl),
            "per-message age kept, got {ttl}"
        );
    }
    let on_a = if q0_was_being_sent { 4 } else { 3 };
    assert_eq!(publish(&b, "/a", "direct"), Some(on_a));
    block(b.destroy());
}

#[test]
fn unreachable_redis_is_a_connection_error_and_publishes_wait_for_it() {
    let port = free_port();
    let b = RedisBackend::new(
        &format!("redis://:sekrit@127.0.0.1:{port}/15"),
        "_message_bus_15",
    )
    .unwrap();
    let err = block(b.last_id("/a")).unwrap_err();
    match &err {
        Error::Connection(m) => {
            assert!(m.contains(&format!("127.0.0.1:{port}")), "{m}");
            assert!(!m.contains("sekrit"), "{m}");
        }
        other => panic!("expected a connection error, got {other:?}"),
    }
    let refused = block(b.publish(
        "/a",
        "x",
        &PublishOptions {
            queue_in_memory: Some(false),
            ..Default::default()
        },
    ));
    assert!(matches!(refused, Err(Error::Connection(_))), "{refused:?}");
    assert_eq!(publish(&b, "/a", "queued-1"), None);
    assert_eq!(publish(&b, "/a", "queued-2"), None);
    assert_eq!(b.queued_publishes(), 2);

    let server = RedisServer::start_on(port);
    let mut con = server.con();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("sekrit")
        .query(&mut con)
        .unwrap();
    wait_until("the flush", || b.queued_publishes() == 0);
    let mut con = redis::Client::open(format!("redis://:sekrit@127.0.0.1:{port}/15"))
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(
        members(&mut con, "__mb_backlog_n_/a"),
        vec!["1|1|/a|queued-1", "2|2|/a|queued-2"]
    );
    assert_eq!(b.dropped_publishes(), 0);
    block(b.destroy());
}

#[test]
fn invalid_urls_are_argument_errors_and_construction_never_connects() {
    assert!(matches!(
        RedisBackend::new("http://nope", "_message_bus_0"),
        Err(Error::Argument(_))
    ));
    // Nothing listens there; constructing still succeeds.
    let b = RedisBackend::new("redis://127.0.0.1:1/0", "_message_bus_0").unwrap();
    assert_eq!(b.pubsub_channel(), "_message_bus_0");
    assert_eq!(b.queued_publishes(), 0);
    let unix = RedisBackend::new("redis+unix:///tmp/nonexistent.sock?db=3", "_message_bus_3");
    assert!(unix.is_ok());
}

// The last-id cache of web polls (`last_ids_for_poll`), each test on a
// private server so that `INFO commandstats` counts only its own MGETs.

fn mget_calls(con: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_mget:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

fn poll_ids(b: &RedisBackend, channels: &[&str], requested: &[Option<i64>]) -> Vec<i64> {
    let channels: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
    block(b.last_ids_for_poll(&channels, requested)).unwrap()
}

/// A backend whose firehose is subscribed, with its subscription.
fn listening(server: &RedisServer) -> (RedisBackend, Arc<Subscription>) {
    let b = server.backend();
    let sub = subscribe(&b, None);
    (b, sub)
}

#[test]
fn polls_read_cached_ids_fed_by_the_firehose_and_by_own_publishes() {
    let server = RedisServer::start();
    let mut con = server.con();
    let (b, sub) = listening(&server);
    let other = server.backend(); // another process: same Redis, its own state

    assert_eq!(poll_ids(&b, &["/a", "/b"], &[Some(-1), None]), vec![0, 0]);
    let mgets = mget_calls(&mut con);
    assert_eq!(
        poll_ids(&b, &["/a", "/b"], &[Some(-1), Some(0)]),
        vec![0, 0]
    );
    assert_eq!(mget_calls(&mut con), mgets, "answered from the cache");

    // Our own publish shows in the very next poll.
    assert_eq!(publish(&b, "/a", "mine"), Some(1));
    assert_eq!(poll_ids(&b, &["/a"], &[Some(0)]), vec![1]);

    // Another process's publish shows once it is delivered live.
    assert_eq!(publish(&other, "/b", "theirs"), Some(1));
    assert_eq!(global_ids(&receive(&sub, 2)), vec![1, 2]);
    assert_eq!(poll_ids(&b, &["/a", "/b"], &[Some(1), Some(0)]), vec![1, 1]);
    assert_eq!(mget_calls(&mut con), mgets, "still from the cache");

    // A client ahead of a cached id, or looking behind, gets a storage read.
    assert_eq!(poll_ids(&b, &["/b"], &[Some(5)]), vec![1]);
    assert_eq!(poll_ids(&b, &["/b"], &[Some(-2)]), vec![1]);
    assert_eq!(mget_calls(&mut con), mgets + 2);

    // The Ruby API always reads Redis (an id written without a message).
    let _: () = con.set("__mb_backlog_id_n_/b", 7).unwrap();
    assert_eq!(block(b.last_ids(&["/b".to_string()])).unwrap(), vec![7]);
    assert_eq!(block(b.last_id("/b")).unwrap(), 7);
    block(b.destroy());
    block(other.destroy());
}

#[test]
fn a_foreign_reset_shows_in_polls_within_the_trust_period() {
    let server = RedisServer::start();
    let (b, _sub) = listening(&server);
    let other = server.backend();
    publish(&b, "/a", "1");
    publish(&b, "/a", "2");
    assert_eq!(poll_ids(&b, &["/a"], &[Some(-1)]), vec![2]);
    // Deleted by another process: no message tells this one.
    let deleted = Instant::now();
    block(other.reset()).unwrap();
    let deadline = deleted + Duration::from_secs(3);
    loop {
        if poll_ids(&b, &["/a"], &[Some(-1)]) == vec![0] {
            break;
        }
        assert!(Instant::now() < deadline, "the reset never showed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let waited = deleted.elapsed();
    assert!(
        waited < Duration::from_secs(2),
        "took {waited:?} (trust lasts 1 s)"
    );
    // Our own reset clears at once.
    publish(&b, "/a", "1");
    assert_eq!(poll_ids(&b, &["/a"], &[Some(-1)]), vec![1]);
    block(b.reset()).unwrap();
    assert_eq!(poll_ids(&b, &["/a"], &[Some(-1)]), vec![0]);
    block(b.destroy());
    block(other.destroy());
}

#[test]
fn losing_the_firehose_connection_clears_the_cache() {
    let server = RedisServer::start();
    let mut con = server.con();
    let (b, _sub) = listening(&server);
    publish(&b, "/a", "1");
    // Conclusive only if the poll after the kill comes before the cached
    // entry's trust ran out by itself (1 s): retried on a slow machine.
    let mut conclusive = false;
    for _ in 0..5 {
        wait_until("the subscription", || b.is_subscribed());
        let filled = Instant::now();
        assert_eq!(poll_ids(&b, &["/a"], &[Some(-1)]), vec![1]);
        let mgets = mget_calls(&mut con);
        assert_eq!(poll_ids(&b, &["/a"], &[Some(-1)]), vec![1]);
        assert_eq!(mget_calls(&mut con), mgets, "answered from the cache");
        kill_pubsub_connections(&mut con);
        wait_until("the disconnect", || !b.is_subscribed());
        assert_eq!(poll_ids(&b, &["/a"], &[Some(-1)]), vec![1]);
        let reread = mget_calls(&mut con) == mgets + 1;
        if filled.elapsed() < Duration::from_millis(900) {
            assert!(reread, "the poll after the disconnect read Redis");
            conclusive = true;
            break;
        }
    }
    assert!(conclusive, "the machine was too slow for 5 attempts");
    // Once subscribed again the cache works again.
    wait_until("the reconnect", || b.is_subscribed());
    assert_eq!(poll_ids(&b, &["/a"], &[Some(-1)]), vec![1]);
    let mgets = mget_calls(&mut con);
    assert_eq!(poll_ids(&b, &["/a"], &[Some(-1)]), vec![1]);
    assert_eq!(mget_calls(&mut con), mgets);
    block(b.destroy());
}

#[test]
fn without_a_firehose_every_poll_reads_redis() {
    let server = RedisServer::start();
    let mut con = server.con();
    let b = server.backend();
    publish(&b, "/a", "1");
    let mgets = mget_calls(&mut con);
    for _ in 0..3 {
        assert_eq!(poll_ids(&b, &["/a"], &[Some(-1)]), vec![1]);
    }
    assert_eq!(mget_calls(&mut con), mgets + 3);
    block(b.destroy());
}

#[test]
fn the_epoch_is_a_key_of_its_own_shared_by_processes_and_new_after_a_flush() {
    let mut db = RedisDb::lease();
    let a = db.backend();
    let first = block(a.load_epoch()).unwrap().unwrap();
    assert_eq!(first.len(), 32);
    let stored: String = db.con.get("__mb_epoch").unwrap();
    assert_eq!(stored, &*first);
    let b = db.backend();
    assert_eq!(block(b.load_epoch()).unwrap().as_deref(), Some(&*first));

    // The firehose sees the ids go back after a FLUSHDB and reads a new one.
    let sub = subscribe(&a, None);
    publish(&b, "/e", "before");
    assert_eq!(receive(&sub, 1).len(), 1);
    redis::cmd("FLUSHDB").exec(&mut db.con).unwrap();
    publish(&b, "/e", "after");
    wait_until("a new epoch", || a.epoch().is_some_and(|e| e != first));
    let stored: String = db.con.get("__mb_epoch").unwrap();
    assert_eq!(a.epoch().as_deref(), Some(stored.as_str()));

    // Without a firehose, a poll from a client ahead of the bus reads it.
    let stale = b.epoch();
    redis::cmd("FLUSHDB").exec(&mut db.con).unwrap();
    let ids = block(b.last_ids_for_poll(&["/e".to_string()], &[Some(5)])).unwrap();
    assert_eq!(ids, vec![0]);
    assert!(b.epoch().is_some());
    assert_ne!(b.epoch(), stale);
    let stored: String = db.con.get("__mb_epoch").unwrap();
    assert_eq!(b.epoch().as_deref(), Some(stored.as_str()));
}
