//! The backend contract: every case runs against every backend, each on
//! storage of its own (memory; Redis and PostgreSQL on the real servers, see
//! `harness`). What only one backend does (its storage format, its server's
//! failures) is tested in `redis_only.rs` and `postgres_only.rs`.
//!
//! Message ids are per channel on Redis and global ids elsewhere: cases
//! compare them with what `publish` returned, never with constants, except
//! right after a reset (ids restart at 1 everywhere).

#[macro_use]
mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::{block, data, global_ids, message_ids, publish, receive, Store};
use message_bus_core::backend::{Backend, PublishOptions, Settings};
use message_bus_core::subscription::Batch;
use message_bus_core::Message;

contract!(
    publishes_are_read_back_by_channel_and_globally,
    channel_backlogs_keep_their_newest_messages,
    the_global_backlog_keeps_its_newest_messages,
    messages_older_than_their_age_are_gone,
    expire_all_backlogs_empties_them_and_reset_restarts_ids,
    the_firehose_delivers_in_order_and_replays_without_duplicates,
    the_firehose_follows_a_reset,
    global_unsubscribe_ends_the_local_subscriptions,
    destroy_ends_the_subscriptions_and_the_backend_works_on,
    concurrent_publishers_are_delivered_once_each_in_global_id_order,
    the_epoch_is_shared_and_new_after_a_reset,
    a_poll_ahead_of_the_bus_reads_the_storage_and_its_epoch,
);

const ENVELOPE: &str = r#"{"data":"s","user_ids":[1,2],"group_ids":null,"client_ids":["c"]}"#;

fn last_id(b: &dyn Backend, channel: &str) -> i64 {
    block(b.last_id(channel)).unwrap()
}

fn backlog(b: &dyn Backend, channel: &str, after: i64) -> Vec<Message> {
    block(b.backlog(channel, after)).unwrap()
}

fn global_backlog(b: &dyn Backend, after: i64) -> Vec<Message> {
    block(b.global_backlog(after)).unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn publishes_are_read_back_by_channel_and_globally(store: &Store) {
    let b = &**store.backend();
    // Site suffixes and pipes in channel names, pipes in data.
    let a1 = publish(b, "/foo$|$s1", "123").unwrap();
    let p1 = publish(b, "/foo|bar", "x|y").unwrap();
    let a2 = publish(b, "/foo$|$s1", ENVELOPE).unwrap();
    let g1 = publish(b, "/global/x", "gg").unwrap();
    assert!(a2 > a1);

    assert_eq!(last_id(b, "/foo$|$s1"), a2);
    assert_eq!(last_id(b, "/foo|bar"), p1);
    assert_eq!(last_id(b, "/nothing"), 0);
    let ids = block(b.last_ids(&strings(&["/foo|bar", "/x", "/foo$|$s1", "/global/x"])));
    assert_eq!(ids.unwrap(), vec![p1, 0, a2, g1]);
    assert_eq!(block(b.last_ids(&[])).unwrap(), Vec::<i64>::new());

    let all = backlog(b, "/foo$|$s1", 0);
    assert_eq!(data(&all), ["123", ENVELOPE]);
    assert_eq!(message_ids(&all), [a1, a2]);
    assert!(all.iter().all(|m| m.channel == "/foo$|$s1"));
    assert_eq!(data(&backlog(b, "/foo$|$s1", a1)), [ENVELOPE]);
    assert!(backlog(b, "/foo$|$s1", a2).is_empty());
    assert!(backlog(b, "/nothing", 0).is_empty());

    let piped = block(b.get_message("/foo|bar", p1)).unwrap().unwrap();
    assert_eq!(
        (
            piped.message_id,
            piped.channel.as_str(),
            piped.data.as_str()
        ),
        (p1, "/foo|bar", "x|y")
    );
    assert_eq!(block(b.get_message("/foo|bar", p1 + 1000)).unwrap(), None);
    assert_eq!(block(b.get_message("/nothing", 1)).unwrap(), None);

    // The global backlog: every message in publish order, global ids
    // increasing, each the same as read by channel.
    let global = global_backlog(b, 0);
    assert_eq!(data(&global), ["123", "x|y", ENVELOPE, "gg"]);
    assert!(global.windows(2).all(|w| w[0].global_id < w[1].global_id));
    assert_eq!(global[1], piped);
    assert_eq!(global[0], all[0]);
    assert_eq!(global_backlog(b, global[1].global_id), global[2..]);
    assert!(global_backlog(b, global[3].global_id).is_empty());
}

/// The reference's example of trimming (one channel: message ids are the
/// global ids), through the API: what `backlog` and `global_backlog` read.
fn channel_backlogs_keep_their_newest_messages(store: &Store) {
    let b = &**store.backend();
    let s = b.settings();
    Settings::set(&s.max_backlog_size, 2);
    Settings::set(&s.max_global_backlog_size, 4);
    Settings::set(&s.clear_every, 3);
    let expected: [&[i64]; 7] = [
        &[1],
        &[1, 2],
        &[2, 3],
        &[2, 3, 4],
        &[2, 3, 4, 5],
        &[5, 6],
        &[5, 6, 7],
    ];
    for (i, kept) in expected.iter().enumerate() {
        assert_eq!(publish(b, "/t", &format!("m{i}")), Some(i as i64 + 1));
        assert_eq!(global_ids(&backlog(b, "/t", 0)), *kept, "after {}", i + 1);
        assert_eq!(global_ids(&global_backlog(b, 0)), *kept, "after {}", i + 1);
    }

    // Both per-publish limits are honoured together (§9 Q3).
    Settings::set(&s.clear_every, 1);
    let opts = PublishOptions {
        max_backlog_age: Some(100),
        max_backlog_size: Some(1),
        ..Default::default()
    };
    assert_eq!(block(b.publish("/t", "last", &opts)).unwrap(), Some(8));
    assert_eq!(data(&backlog(b, "/t", 0)), ["last"]);

    // clear_every: trimming only on its multiples.
    Settings::set(&s.clear_every, 100);
    publish(b, "/t", "no trim");
    assert_eq!(data(&backlog(b, "/t", 0)), ["last", "no trim"]);
}

fn the_global_backlog_keeps_its_newest_messages(store: &Store) {
    let b = &**store.backend();
    Settings::set(&b.settings().max_global_backlog_size, 3);
    for c in ["/a", "/b", "/c", "/d", "/e"] {
        publish(b, c, "xx");
    }
    let global = global_backlog(b, 0);
    assert_eq!(global_ids(&global), [3, 4, 5]);
    assert_eq!(
        global
            .iter()
            .map(|m| m.channel.as_str())
            .collect::<Vec<_>>(),
        ["/c", "/d", "/e"]
    );
}

/// A channel's messages older than their `max_backlog_age` are gone once
/// it passed and something was published (PostgreSQL trims by age on
/// publish; Redis keys and memory channels expire by themselves).
fn messages_older_than_their_age_are_gone(store: &Store) {
    let b = &**store.backend();
    let second = PublishOptions {
        max_backlog_age: Some(1),
        ..Default::default()
    };
    block(b.publish("/short", "s1", &second)).unwrap();
    let last = block(b.publish("/short", "s2", &second)).unwrap().unwrap();
    assert_eq!(last_id(b, "/short"), last);
    let before = global_backlog(b, 0);
    assert_eq!(before.len(), 2);
    std::thread::sleep(Duration::from_millis(2200));
    block(b.publish("/other", "oo", &second)).unwrap();
    assert_eq!(last_id(b, "/short"), 0);
    assert!(backlog(b, "/short", 0).is_empty());
    let global = global_backlog(b, 0);
    assert_eq!(data(&global), ["oo"]);
    // The global id keeps counting.
    assert!(global[0].global_id > before[1].global_id);
    let again = block(b.publish("/short", "s3", &second)).unwrap().unwrap();
    let stored = block(b.get_message("/short", again)).unwrap().unwrap();
    assert!(stored.global_id > global[0].global_id);
}

fn expire_all_backlogs_empties_them_and_reset_restarts_ids(store: &Store) {
    let b = &**store.backend();
    publish(b, "/a", "11");
    publish(b, "/b", "22");
    block(b.expire_all_backlogs()).unwrap();
    assert!(backlog(b, "/a", 0).is_empty());
    assert!(backlog(b, "/b", 0).is_empty());
    assert!(global_backlog(b, 0).is_empty());
    let id = publish(b, "/a", "33").unwrap();
    assert_eq!(data(&backlog(b, "/a", 0)), ["33"]);
    assert_eq!(last_id(b, "/a"), id);

    block(b.reset()).unwrap();
    assert_eq!(last_id(b, "/a"), 0);
    assert_eq!(block(b.last_ids(&strings(&["/a", "/b"]))).unwrap(), [0, 0]);
    assert!(global_backlog(b, 0).is_empty());
    assert_eq!(publish(b, "/a", "44"), Some(1));
    assert_eq!(global_backlog(b, 0), [Message::new(1, 1, "/a", "44")]);
}

fn the_firehose_delivers_in_order_and_replays_without_duplicates(store: &Store) {
    let b = &**store.backend();
    publish(b, "/a", "before-1");
    publish(b, "/a", "before-2");
    let first = global_backlog(b, 0)[0].global_id;
    assert!(!b.is_subscribed());

    let live = store.subscribe(None);
    let replay = store.subscribe(Some(first));
    publish(b, "/a", "m3");
    // Another process's publish (the memory backend has one process).
    let other = store.another();
    publish(&*other, "/b", "m4");
    let got = receive(&live, 2);
    assert_eq!(data(&got), ["m3", "m4"]);
    assert_eq!(got[1].channel, "/b");
    assert!(got[0].global_id < got[1].global_id);
    let replayed = receive(&replay, 3);
    assert_eq!(data(&replayed), ["before-2", "m3", "m4"]);
    assert_eq!(replayed[1..], got[..]);

    // Nothing twice: the next message each gets is the next one published.
    publish(b, "/a", "m5");
    assert_eq!(data(&receive(&live, 1)), ["m5"]);
    assert_eq!(data(&receive(&replay, 1)), ["m5"]);
    assert!(b.is_subscribed());
}

fn the_firehose_follows_a_reset(store: &Store) {
    let b = &**store.backend();
    let live = store.subscribe(None);
    publish(b, "/a", "m1");
    publish(b, "/a", "m2");
    assert_eq!(data(&receive(&live, 2)), ["m1", "m2"]);
    block(b.reset()).unwrap();
    publish(b, "/a", "after-reset");
    assert_eq!(receive(&live, 1), [Message::new(1, 1, "/a", "after-reset")]);
}

fn global_unsubscribe_ends_the_local_subscriptions(store: &Store) {
    let b = &**store.backend();
    let sub = store.subscribe(None);
    publish(b, "/a", "m1");
    assert_eq!(data(&receive(&sub, 1)), ["m1"]);
    block(b.global_unsubscribe());
    assert!(matches!(
        sub.next_batch(1, Duration::from_millis(10)).unwrap(),
        Batch::Closed
    ));
    assert!(sub.is_closed());
    assert!(!b.is_subscribed());
}

fn destroy_ends_the_subscriptions_and_the_backend_works_on(store: &Store) {
    let b = &**store.backend();
    let sub = store.subscribe(None);
    publish(b, "/a", "m1");
    assert_eq!(data(&receive(&sub, 1)), ["m1"]);
    block(b.destroy());
    assert!(sub.is_closed());
    assert!(!b.is_subscribed());
    // Its next use starts afresh (new connections, a new firehose).
    let again = store.subscribe(None);
    publish(b, "/a", "m2");
    assert_eq!(data(&receive(&again, 1)), ["m2"]);
    assert_eq!(data(&backlog(b, "/a", 0)), ["m1", "m2"]);
}

fn concurrent_publishers_are_delivered_once_each_in_global_id_order(store: &Store) {
    let b = Arc::clone(store.backend());
    let sub = store.subscribe(None);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                for i in 0..50 {
                    assert!(publish(&*b, &format!("/c{}", t % 3), &format!("{t}-{i}")).is_some());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let got = receive(&sub, 400);
    assert_eq!(global_ids(&got), (1..=400).collect::<Vec<i64>>());
    // Each thread's publishes in its order.
    for t in 0..8 {
        let mine: Vec<&str> = got
            .iter()
            .map(|m| m.data.as_str())
            .filter(|d| d.starts_with(&format!("{t}-")))
            .collect();
        let sent: Vec<String> = (0..50).map(|i| format!("{t}-{i}")).collect();
        assert_eq!(mine, sent);
    }
}

fn is_epoch(value: &str) -> bool {
    value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

fn the_epoch_is_shared_and_new_after_a_reset(store: &Store) {
    let b = &**store.backend();
    let first = block(b.load_epoch()).unwrap().unwrap();
    assert!(is_epoch(&first), "{first}");
    assert_eq!(b.epoch().as_deref(), Some(&*first));
    let other = store.another();
    assert_eq!(block(other.load_epoch()).unwrap().as_deref(), Some(&*first));

    block(b.reset()).unwrap();
    let second = block(b.load_epoch()).unwrap().unwrap();
    assert!(is_epoch(&second), "{second}");
    assert_ne!(second, first);
}

fn a_poll_ahead_of_the_bus_reads_the_storage_and_its_epoch(store: &Store) {
    let b = &**store.backend();
    let id = publish(b, "/e", "ee").unwrap();
    let channels = strings(&["/e", "/none"]);
    let poll = |requested: &[Option<i64>]| block(b.last_ids_for_poll(&channels, requested));
    assert_eq!(poll(&[Some(-1), None]).unwrap(), [id, 0]);
    let stale = block(b.load_epoch()).unwrap();

    // Reset by another process: this one's cached epoch may be stale until
    // a client ahead of the bus makes it read the storage's.
    let other = store.another();
    block(other.reset()).unwrap();
    assert_eq!(poll(&[Some(id + 5), None]).unwrap(), [0, 0]);
    let current = block(other.load_epoch()).unwrap();
    assert!(b.epoch().is_some());
    assert_eq!(b.epoch(), current);
    assert_ne!(b.epoch(), stale);
}
