//! The PostgreSQL backend's own cases (the reference schema and rows, the
//! LISTEN connection, NOTIFY payload limits, group commit of concurrent
//! publishes and its trimming), against the server on 127.0.0.1:5432, each
//! test on a database of its own. What every backend does is in
//! `backend_contract.rs`.

mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{block, cells, free_port, global_ids, receive, subscribe, PgDb};
use message_bus_core::backend::postgres::PostgresBackend;
use message_bus_core::backend::{Backend, PublishOptions, Settings};
use message_bus_core::subscription::Batch;
use message_bus_core::{Error, Message};
use tokio_postgres::{Client, NoTls};

fn opts() -> PublishOptions {
    PublishOptions::default()
}

#[test]
fn schema_matches_the_reference() {
    let db = PgDb::new();
    let b = db.backend();
    assert_eq!(block(b.last_id("/x")).unwrap(), 0);
    assert_eq!(
        db.rows(
            "SELECT column_name, data_type, is_nullable, coalesce(column_default, '') FROM information_schema.columns WHERE table_name = 'message_bus' ORDER BY ordinal_position"
        ),
        vec![
            cells(&["id", "bigint", "NO", "nextval('message_bus_id_seq'::regclass)"]),
            cells(&["channel", "text", "NO", ""]),
            cells(&["value", "text", "NO", ""]),
            cells(&["added_at", "timestamp without time zone", "NO", "CURRENT_TIMESTAMP"]),
        ]
    );
    assert_eq!(
        db.rows("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'message_bus' ORDER BY indexname"),
        vec![
            cells(&["message_bus_pkey", "CREATE UNIQUE INDEX message_bus_pkey ON public.message_bus USING btree (id)"]),
            cells(&["table_added_at_index", "CREATE INDEX table_added_at_index ON public.message_bus USING btree (added_at)"]),
            cells(&["table_channel_id_index", "CREATE INDEX table_channel_id_index ON public.message_bus USING btree (channel, id)"]),
        ]
    );
    assert_eq!(
        db.rows("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'message_bus'::regclass ORDER BY conname"),
        vec![
            cells(&["message_bus_pkey", "PRIMARY KEY (id)"]),
            cells(&["message_bus_value_check", "CHECK ((octet_length(value) >= 2))"]),
        ]
    );
    // A second backend (new connections) leaves the table alone.
    let b2 = db.backend();
    block(b2.publish("/x", "hi", &opts())).unwrap();
    assert_eq!(block(b.last_id("/x")).unwrap(), 1);
}

#[test]
fn rows_are_in_the_reference_format_both_ways() {
    let db = PgDb::new();
    let b = db.backend();
    assert_eq!(
        block(b.publish("/foo$|$s1", "hello", &opts())).unwrap(),
        Some(1)
    );
    assert_eq!(block(b.publish("/bar", "a|b", &opts())).unwrap(), Some(2));
    assert_eq!(
        db.rows("SELECT id, channel, value FROM message_bus ORDER BY id"),
        vec![
            cells(&["1", "/foo$|$s1", "hello"]),
            cells(&["2", "/bar", "a|b"])
        ]
    );
    // Rows a reference process would insert.
    db.exec("INSERT INTO message_bus (channel, value) VALUES ('/foo$|$s1', 'third')");
    assert_eq!(block(b.last_id("/foo$|$s1")).unwrap(), 3);
    assert_eq!(
        block(b.last_ids(&["/bar".into(), "/nope".into(), "/foo$|$s1".into()])).unwrap(),
        vec![2, 0, 3]
    );
    assert_eq!(
        block(b.backlog("/foo$|$s1", 0)).unwrap(),
        vec![
            Message::new(1, 1, "/foo$|$s1", "hello"),
            Message::new(3, 3, "/foo$|$s1", "third")
        ]
    );
    assert_eq!(global_ids(&block(b.global_backlog(1)).unwrap()), vec![2, 3]);
    assert_eq!(
        block(b.get_message("/bar", 2)).unwrap(),
        Some(Message::new(2, 2, "/bar", "a|b"))
    );
    assert_eq!(block(b.get_message("/bar", 1)).unwrap(), None);
    // The check constraint of the reference schema.
    assert!(block(b.publish("/bar", "x", &opts())).is_err());
}

/// The age of §4.3.4 is the rows' `added_at`: a trimming publish deletes
/// the old rows of every channel.
#[test]
fn old_rows_of_every_channel_expire_on_the_next_trimming_publish() {
    let db = PgDb::new();
    let b = db.backend();
    for c in ["/a", "/b", "/c", "/d"] {
        block(b.publish(c, "xx", &opts())).unwrap();
    }
    db.exec("UPDATE message_bus SET added_at = added_at - interval '1 hour' WHERE id <= 3");
    let age = PublishOptions {
        max_backlog_age: Some(60),
        ..opts()
    };
    block(b.publish("/e", "xx", &age)).unwrap();
    assert_eq!(global_ids(&block(b.global_backlog(0)).unwrap()), vec![4, 5]);
}

#[test]
fn reset_recreates_the_table_and_expire_all_backlogs_is_a_reset() {
    let db = PgDb::new();
    let b = db.backend();
    block(b.publish("/a", "11", &opts())).unwrap();
    block(b.reset()).unwrap();
    assert_eq!(
        db.rows("SELECT count(*) FROM pg_indexes WHERE tablename = 'message_bus'"),
        vec![cells(&["3"])]
    );
    block(b.publish("/a", "22", &opts())).unwrap();
    block(b.expire_all_backlogs()).unwrap();
    assert_eq!(block(b.publish("/a", "33", &opts())).unwrap(), Some(1));
    assert_eq!(
        db.rows("SELECT count(*) FROM pg_indexes WHERE tablename = 'message_bus'"),
        vec![cells(&["3"])]
    );
}

#[test]
fn firehose_delivers_in_order_and_catches_up() {
    let db = PgDb::new();
    let b = db.backend();
    block(b.publish("/old", "00", &opts())).unwrap();
    let sub = subscribe(&b, None);
    let other = db.backend();
    for i in 0..5 {
        block(other.publish("/c", &format!("m{i}"), &opts())).unwrap();
    }
    // A row inserted without NOTIFY (a gap), then a notified one.
    db.exec("INSERT INTO message_bus (channel, value) VALUES ('/c', 'silent')");
    block(other.publish("/c", "after", &opts())).unwrap();
    assert_eq!(global_ids(&receive(&sub, 7)), vec![2, 3, 4, 5, 6, 7, 8]);

    // Kill the LISTEN connection; publish meanwhile; everything arrives once.
    let killed = db.rows(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'message_bus_listener' AND datname = current_database()",
    );
    assert_eq!(killed, vec![cells(&["t"])]);
    std::thread::sleep(Duration::from_millis(50));
    for i in 0..3 {
        block(other.publish("/c", &format!("r{i}"), &opts())).unwrap();
    }
    let got = receive(&sub, 3);
    assert_eq!(global_ids(&got), vec![9, 10, 11]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(matches!(
        sub.next_batch(10, Duration::from_millis(50)).unwrap(),
        Batch::TimedOut
    ));

    // A replaying subscription.
    let replay = subscribe(&b, Some(9));
    assert_eq!(global_ids(&receive(&replay, 2)), vec![10, 11]);
    block(b.destroy());
}

#[test]
fn a_foreign_unsubscribe_is_ignored() {
    let db = PgDb::new();
    let b = db.backend();
    let sub = subscribe(&b, None);
    db.exec("NOTIFY _message_bus_0, '$$UNSUBSCRIBE'");
    block(b.publish("/c", "hi", &opts())).unwrap();
    assert_eq!(receive(&sub, 1), vec![Message::new(1, 1, "/c", "hi")]);
    block(b.global_unsubscribe());
    assert!(sub.is_closed());
}

#[test]
fn oversized_payloads_raise_but_are_delivered() {
    let db = PgDb::new();
    let b = db.backend();
    let sub = subscribe(&b, None);
    let big = "x".repeat(9000);
    let e = block(b.publish("/big", &big, &opts())).unwrap_err();
    assert!(e.to_string().contains("8000 bytes"), "{e}");
    assert_eq!(block(b.last_id("/big")).unwrap(), 1);
    block(b.publish("/big", "small", &opts())).unwrap();
    let got = receive(&sub, 2);
    assert_eq!(global_ids(&got), vec![1, 2]);
    assert_eq!(got[0].data.len(), 9000);
    // Another process's listener gets it from its periodic read.
    let c = db.backend();
    let sub_c = subscribe(&c, None);
    assert!(block(b.publish("/big", &big, &opts())).is_err());
    assert_eq!(global_ids(&receive(&sub_c, 1)), vec![3]);
}

#[test]
fn connection_errors_say_what_is_wrong() {
    let missing = PostgresBackend::new(
        "host=127.0.0.1 port=5432 user=postgres dbname=mb_no_such_db",
        "_message_bus_0",
    )
    .unwrap();
    match block(missing.last_id("/a")) {
        Err(Error::Connection(m)) => assert!(m.contains("does not exist"), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
    let down = PostgresBackend::new(
        &format!("host=127.0.0.1 port={} user=postgres dbname=x", free_port()),
        "_message_bus_0",
    )
    .unwrap();
    match block(down.publish("/a", "xx", &opts())) {
        Err(Error::Connection(m)) => assert!(m.contains("server down"), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
    let bad_user = PostgresBackend::new(
        "host=127.0.0.1 port=5432 user=mb_no_such_user dbname=postgres",
        "_message_bus_0",
    )
    .unwrap();
    match block(bad_user.last_id("/a")) {
        Err(Error::Connection(m)) => assert!(
            m.contains("authentication failed") || m.contains("does not exist"),
            "{m}"
        ),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        PostgresBackend::new("host='unterminated", "c"),
        Err(Error::Argument(_))
    ));
}

/// A LISTEN connection on the backend's NOTIFY channel: its payloads in
/// arrival order.
fn listen(db: &PgDb) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    block(async {
        let (client, mut conn) = tokio_postgres::connect(&db.conninfo(), NoTls)
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                if let tokio_postgres::AsyncMessage::Notification(n) = m {
                    let _ = tx.send(n.payload().to_string());
                }
            }
        });
        client.batch_execute("LISTEN _message_bus_0").await.unwrap();
        (client, rx)
    })
}

fn notifications(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    block(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while out.len() < n {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => out.push(p),
                _ => break,
            }
        }
        // Nothing more.
        if let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            out.push(p);
        }
    });
    out
}

/// One publish of `concurrently`: what was sent and what came back.
#[derive(Debug, Clone)]
struct Sent {
    channel: String,
    data: String,
    id: Result<Option<i64>, Error>,
}

/// `tasks` tasks publishing `each` messages at once; `what(task, i)` gives
/// the channel, data and options of each.
fn concurrently(
    b: &Arc<PostgresBackend>,
    tasks: usize,
    each: usize,
    what: fn(usize, usize) -> (String, String, PublishOptions),
) -> Vec<Sent> {
    block(async {
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let b = Arc::clone(b);
                tokio::spawn(async move {
                    let mut sent = Vec::new();
                    for i in 0..each {
                        let (channel, data, opts) = what(t, i);
                        let id = b.publish(&channel, &data, &opts).await;
                        sent.push(Sent { channel, data, id });
                    }
                    sent
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        all
    })
}

fn wire(id: i64, channel: &str, data: &str) -> String {
    Message::new(id, id, channel, data).encode()
}

/// What trimming after each publish in id order leaves (COMPAT.md §4.3.4,
/// without age expiry): `published` is (id, channel, max_backlog_size).
fn trimmed_in_turn(
    published: &[(i64, String, i64)],
    global_size: i64,
    clear_every: i64,
) -> Vec<i64> {
    let mut sorted = published.to_vec();
    sorted.sort();
    let mut rows: Vec<(i64, String)> = Vec::new();
    for (id, channel, size) in sorted {
        rows.push((id, channel.clone()));
        if id % clear_every != 0 {
            continue;
        }
        rows.retain(|(i, _)| *i > id - global_size);
        let mut of_channel: Vec<i64> = rows
            .iter()
            .filter(|(_, c)| *c == channel)
            .map(|(i, _)| *i)
            .collect();
        of_channel.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(&cut) = of_channel.get(size as usize) {
            rows.retain(|(i, c)| *c != channel || *i > cut);
        }
    }
    let mut ids: Vec<i64> = rows.into_iter().map(|(i, _)| i).collect();
    ids.sort_unstable();
    ids
}

#[test]
fn concurrent_publishes_are_committed_together_with_the_rows_and_notifications_of_single_ones() {
    let db = PgDb::new();
    let b = Arc::new(db.backend());
    Settings::set(&b.settings().max_backlog_size, 10_000);
    Settings::set(&b.settings().max_global_backlog_size, 10_000);
    let (_listener, mut rx) = listen(&db);
    let sent = concurrently(&b, 8, 200, |t, i| {
        let channel = ["/a", "/b", "/p|ipe$|$s1", "/d"][(t + i) % 4].to_string();
        (
            channel,
            format!("{{\"t\":{t},\"i\":{i},\"x\":\"a|b\"}}"),
            opts(),
        )
    });
    let mut expected: Vec<Vec<Option<String>>> = sent
        .iter()
        .map(|s| {
            let id = s.id.clone().unwrap().unwrap();
            vec![
                Some(id.to_string()),
                Some(s.channel.clone()),
                Some(s.data.clone()),
            ]
        })
        .collect();
    expected.sort_by_key(|r| r[0].as_deref().unwrap_or("").parse::<i64>().unwrap());
    // Every id once, no gap: ids 1..=1600 in the table, byte for byte.
    let ids: Vec<i64> = expected
        .iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, (1..=1600).collect::<Vec<i64>>());
    assert_eq!(
        db.rows("SELECT id, channel, value FROM message_bus ORDER BY id"),
        expected
    );
    // Publishes did share commits.
    let commits: i64 = db.rows("SELECT count(DISTINCT xmin::text) FROM message_bus")[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(commits < 1600, "{commits} commits for 1600 publishes");
    eprintln!("1600 concurrent publishes in {commits} commits");
    // NOTIFYs: one per publish, in id order, the wire string of §4.1.
    let mut by_id: Vec<&Sent> = sent.iter().collect();
    by_id.sort_by_key(|s| s.id.clone().unwrap().unwrap());
    let wanted: Vec<String> = by_id
        .iter()
        .map(|s| wire(s.id.clone().unwrap().unwrap(), &s.channel, &s.data))
        .collect();
    assert_eq!(notifications(&mut rx, 1600), wanted);
}

#[test]
fn concurrent_publishes_trim_as_publishes_in_turn_would() {
    for clear_every in [1, 3] {
        let db = PgDb::new();
        let b = Arc::new(db.backend());
        Settings::set(&b.settings().max_backlog_size, 7);
        Settings::set(&b.settings().max_global_backlog_size, 100);
        Settings::set(&b.settings().clear_every, clear_every);
        let (_listener, mut rx) = listen(&db);
        // Tasks 0-5: four channels with the default size; tasks 6-7 (a
        // channel of their own, and a shared one) with max_backlog_size 2.
        let sent = concurrently(&b, 8, 200, |t, i| {
            if t >= 6 {
                let channel = if i % 2 == 0 { "/small" } else { "/a" };
                let o = PublishOptions {
                    max_backlog_size: Some(2),
                    ..opts()
                };
                (channel.to_string(), format!("s{t}-{i}"), o)
            } else {
                let channel = ["/a", "/b", "/c", "/d"][(t * 7 + i) % 4];
                (channel.to_string(), format!("m{t}-{i}"), opts())
            }
        });
        let published: Vec<(i64, String, i64)> = sent
            .iter()
            .map(|s| {
                let size = if s.data.starts_with('s') { 2 } else { 7 };
                (s.id.clone().unwrap().unwrap(), s.channel.clone(), size)
            })
            .collect();
        let mut ids: Vec<i64> = published.iter().map(|p| p.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=1600).collect::<Vec<i64>>());
        let expected = trimmed_in_turn(&published, 100, clear_every);
        let left: Vec<i64> = db
            .rows("SELECT id FROM message_bus ORDER BY id")
            .into_iter()
            .map(|r| r[0].as_deref().unwrap().parse().unwrap())
            .collect();
        assert_eq!(left, expected, "clear_every {clear_every}");
        // The rows left are the published ones, byte for byte.
        for row in db.rows("SELECT id, channel, value FROM message_bus ORDER BY id") {
            let id: i64 = row[0].as_deref().unwrap().parse().unwrap();
            let s = sent.iter().find(|s| s.id == Ok(Some(id))).unwrap();
            assert_eq!(row[1].as_deref(), Some(s.channel.as_str()));
            assert_eq!(row[2].as_deref(), Some(s.data.as_str()));
        }
        if clear_every == 1 {
            // Here that is the plain rule for the channels published with
            // one size: the newest 7 (2 for /small) among the newest 100
            // rows. (/a mixes sizes: a size-2 trim deletes rows a later
            // size-7 one would keep, so only the model above applies.)
            for (channel, size) in [("/b", 7), ("/c", 7), ("/d", 7), ("/small", 2)] {
                let mut of: Vec<i64> = published
                    .iter()
                    .filter(|p| p.0 > 1500 && p.1 == channel)
                    .map(|p| p.0)
                    .collect();
                of.sort_unstable();
                let rule = of.split_off(of.len().saturating_sub(size));
                let kept: Vec<i64> = db
                    .rows(&format!(
                        "SELECT id FROM message_bus WHERE channel = '{channel}' ORDER BY id"
                    ))
                    .into_iter()
                    .map(|r| r[0].as_deref().unwrap().parse().unwrap())
                    .collect();
                assert_eq!(kept, rule, "{channel}");
            }
        }
        // Every publish was NOTIFYed, in id order, trimmed or not.
        let got: Vec<i64> = notifications(&mut rx, 1600)
            .iter()
            .map(|p| Message::decode(p).unwrap().global_id)
            .collect();
        assert_eq!(got, (1..=1600).collect::<Vec<i64>>());
    }
}

#[test]
fn a_failing_publish_does_not_fail_the_others_of_its_batch() {
    let db = PgDb::new();
    let b = Arc::new(db.backend());
    let (_listener, mut rx) = listen(&db);
    // One value in ten is too short for the table's check constraint.
    let sent = concurrently(&b, 8, 100, |t, i| {
        let data = if i % 10 == 3 {
            "x".to_string()
        } else {
            format!("m{t}-{i}")
        };
        ("/f".to_string(), data, opts())
    });
    let mut ok: Vec<(i64, &Sent)> = Vec::new();
    for s in &sent {
        match &s.id {
            Ok(Some(id)) => ok.push((*id, s)),
            Ok(None) => panic!("queued?"),
            Err(e) => {
                assert_eq!(s.data, "x", "{e}");
                assert!(e.to_string().contains("message_bus_value_check"), "{e}");
            }
        }
    }
    assert_eq!(ok.len(), 720);
    ok.sort_by_key(|(id, _)| *id);
    let expected: Vec<Vec<Option<String>>> = ok
        .iter()
        .map(|(id, s)| vec![Some(id.to_string()), Some(s.data.clone())])
        .collect();
    assert_eq!(
        db.rows("SELECT id, value FROM message_bus ORDER BY id"),
        expected
    );
    let wanted: Vec<String> = ok.iter().map(|(id, s)| wire(*id, "/f", &s.data)).collect();
    assert_eq!(notifications(&mut rx, 720), wanted);
}

type Queued = (&'static str, String, PublishOptions);

/// Makes `first` while a lock holds the table, then queues `rest` in order
/// behind it (the batcher takes them when `first` returns); their ids.
fn held_then_batched(
    db: &PgDb,
    b: &Arc<PostgresBackend>,
    first: Queued,
    rest: &[Queued],
) -> Vec<i64> {
    db.exec("BEGIN; LOCK TABLE message_bus IN EXCLUSIVE MODE");
    block(async {
        let spawn = |(channel, data, o): Queued| {
            let b = Arc::clone(b);
            tokio::spawn(async move { b.publish(channel, &data, &o).await.unwrap().unwrap() })
        };
        let mut tasks = vec![spawn(first)];
        tokio::time::sleep(Duration::from_millis(100)).await;
        for q in rest {
            tasks.push(spawn(q.clone()));
            // Queued in this order (the ids are then always the same).
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        db.client.batch_execute("COMMIT").await.unwrap();
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        ids
    })
}

#[test]
fn a_batch_trims_its_own_rows_as_publishes_in_turn_would() {
    // (max_backlog_size, max_global_backlog_size, clear_every, rows before,
    // which batch goes first)
    for (size, global_size, clear_every, old, ones_first) in [
        (3, 12, 1, 10, false),
        (3, 12, 1, 10, true),
        (3, 12, 4, 10, true),
        (8, 60, 1, 40, false),
        (8, 60, 4, 40, false),
        (8, 60, 4, 40, true),
        (100, 20, 1, 10, false),
        (100, 20, 1, 10, true),
    ] {
        let case = format!(
            "size {size}, global size {global_size}, clear_every {clear_every}, ones first {ones_first}"
        );
        let db = PgDb::new();
        let b = Arc::new(db.backend());
        Settings::set(&b.settings().max_backlog_size, size);
        Settings::set(&b.settings().max_global_backlog_size, global_size);
        Settings::set(&b.settings().clear_every, clear_every);
        let mut published: Vec<(i64, String, i64)> = Vec::new();
        for i in 0..old {
            let channel = ["/a", "/b", "/c", "/z"][i % 4];
            let id = block(b.publish(channel, &format!("old{i}"), &opts())).unwrap();
            published.push((id.unwrap(), channel.to_string(), size));
        }
        let (_listener, mut rx) = listen(&db);
        // 26 publishes queued while one is in flight go as two statements:
        // 20 with the default size and 6 with max_backlog_size 1 (settings
        // differ: not in one statement), in the order of the first of each
        // in the queue.
        let mut queued = Vec::new();
        for i in 0..26 {
            let one = if ones_first { i % 4 == 0 } else { i % 4 == 1 };
            queued.push(if one && i < 24 {
                let o = PublishOptions {
                    max_backlog_size: Some(1),
                    ..opts()
                };
                (["/a", "/z"][(i / 4) % 2], format!("one{i}"), o)
            } else {
                (["/a", "/b", "/c"][i % 3], format!("new{i}"), opts())
            });
        }
        let ids = held_then_batched(&db, &b, ("/a", "first".into(), opts()), &queued);
        let sizes = std::iter::once(size)
            .chain(queued.iter().map(|q| q.2.max_backlog_size.unwrap_or(size)));
        let channels = std::iter::once("/a").chain(queued.iter().map(|q| q.0));
        let sent: Vec<(i64, String, i64)> = ids
            .iter()
            .zip(channels.zip(sizes))
            .map(|(&id, (channel, size))| (id, channel.to_string(), size))
            .collect();
        let first = sent[0].0;
        published.extend(sent);
        let old = old as i64;
        let mut ids: Vec<i64> = published.iter().map(|p| p.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=old + 27).collect::<Vec<i64>>(), "{case}");
        let left: Vec<i64> = db
            .rows("SELECT id FROM message_bus ORDER BY id")
            .into_iter()
            .map(|r| r[0].as_deref().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            left,
            trimmed_in_turn(&published, global_size, clear_every),
            "{case}"
        );
        // The 20 and the 6 were each committed at once.
        let xmins = db.rows(&format!(
            "SELECT count(DISTINCT xmin::text) FROM message_bus WHERE id > {first}"
        ));
        assert!(
            xmins == vec![cells(&["1"])] || xmins == vec![cells(&["2"])],
            "{case}: {xmins:?}"
        );
        let got: Vec<i64> = notifications(&mut rx, 27)
            .iter()
            .map(|p| Message::decode(p).unwrap().global_id)
            .collect();
        assert_eq!(got, (old + 1..=old + 27).collect::<Vec<i64>>(), "{case}");
    }
}

#[test]
fn a_batch_expires_old_rows() {
    let db = PgDb::new();
    let b = Arc::new(db.backend());
    for i in 0..5 {
        block(b.publish("/x", &format!("old{i}"), &opts())).unwrap();
    }
    db.exec("UPDATE message_bus SET added_at = added_at - interval '2 hours' WHERE id <= 3");
    let hour = PublishOptions {
        max_backlog_age: Some(3600),
        ..opts()
    };
    let rest: Vec<Queued> = (0..5)
        .map(|i| (["/x", "/y"][i % 2], format!("new{i}"), hour.clone()))
        .collect();
    // The first (default age: a week) expires nothing, the batch does.
    let mut ids = held_then_batched(&db, &b, ("/y", "first".into(), opts()), &rest);
    ids.sort_unstable();
    assert_eq!(ids, (6..=11).collect::<Vec<i64>>());
    assert_eq!(
        db.rows("SELECT id FROM message_bus ORDER BY id"),
        (4..=11)
            .map(|i| cells(&[&i.to_string()]))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        db.rows("SELECT count(DISTINCT xmin::text) FROM message_bus WHERE id > 6"),
        vec![cells(&["1"])]
    );
}

#[test]
fn cancelled_callers_do_not_cancel_the_others() {
    let db = PgDb::new();
    let b = Arc::new(db.backend());
    block(b.publish("/c", "before", &opts())).unwrap();
    let (_listener, mut rx) = listen(&db);
    db.exec("BEGIN; LOCK TABLE message_bus IN EXCLUSIVE MODE");
    let ids = block(async {
        let spawn = |data: String| {
            let b = Arc::clone(&b);
            tokio::spawn(async move { b.publish("/c", &data, &opts()).await })
        };
        // Sent at once (then held by the lock), its caller goes away.
        let first = spawn("first".into());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut queued = Vec::new();
        for i in 0..5 {
            queued.push(spawn(format!("queued{i}")));
            // Queued in this order.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        first.abort();
        // A queued caller goes away too.
        queued.remove(2).abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
        db.client.batch_execute("COMMIT").await.unwrap();
        let mut ids = Vec::new();
        for (i, t) in queued.into_iter().enumerate() {
            let data = format!("queued{}", if i < 2 { i } else { i + 1 });
            ids.push((t.await.unwrap().unwrap().unwrap(), data));
        }
        ids
    });
    // The statements were sent: all six are stored, the first alone, the
    // queued ones (the abandoned one too) after it; each caller left got
    // the id of its row.
    let rows = db.rows("SELECT id, value FROM message_bus ORDER BY id");
    assert_eq!(rows.len(), 7);
    assert_eq!(rows[..2], [cells(&["1", "before"]), cells(&["2", "first"])]);
    let mut values: Vec<&str> = rows[2..].iter().map(|r| r[1].as_deref().unwrap()).collect();
    values.sort_unstable();
    assert_eq!(
        values,
        ["queued0", "queued1", "queued2", "queued3", "queued4"]
    );
    for (id, data) in &ids {
        assert!(
            *id >= 3 && rows.contains(&cells(&[&id.to_string(), data])),
            "{id} {data}"
        );
    }
    let got: Vec<i64> = notifications(&mut rx, 6)
        .iter()
        .map(|p| Message::decode(p).unwrap().global_id)
        .collect();
    assert_eq!(got, (2..=7).collect::<Vec<i64>>());
    // And publishing goes on.
    assert_eq!(block(b.publish("/c", "after", &opts())).unwrap(), Some(8));
}

#[test]
fn the_epoch_is_the_tables_comment_and_a_recreated_table_gets_a_new_one() {
    let db = PgDb::new();
    let a = db.backend();
    let first = block(a.load_epoch()).unwrap().unwrap();
    assert_eq!(first.len(), 32);
    let comment = db.rows("SELECT obj_description('message_bus'::regclass, 'pg_class')");
    assert_eq!(
        comment,
        vec![cells(&[&format!("message_bus epoch {first}")])]
    );
    let b = db.backend();
    assert_eq!(block(b.load_epoch()).unwrap().as_deref(), Some(&*first));

    // The listener sees the table recreated (from another connection, as
    // the reference's reset! does it), even once its ids passed ours.
    let sub = subscribe(&a, None);
    block(b.publish("/e", "\"before\"", &opts())).unwrap();
    assert_eq!(receive(&sub, 1).len(), 1);
    db.exec(
        "BEGIN; DROP TABLE message_bus;
         CREATE TABLE message_bus (id bigserial PRIMARY KEY, channel text NOT NULL,
           value text NOT NULL CHECK (octet_length(value) >= 2), added_at timestamp DEFAULT CURRENT_TIMESTAMP NOT NULL);
         COMMIT;",
    );
    for i in 0..3 {
        block(b.publish("/e", &format!("\"after {i}\""), &opts())).unwrap();
    }
    let after = receive(&sub, 3);
    assert_eq!(global_ids(&after), vec![1, 2, 3]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.epoch().is_none_or(|e| e == first) {
        assert!(Instant::now() < deadline, "a new epoch");
        std::thread::sleep(Duration::from_millis(20));
    }
    let epoch = a.epoch().unwrap();
    let comment = db.rows("SELECT obj_description('message_bus'::regclass, 'pg_class')");
    assert_eq!(
        comment,
        vec![cells(&[&format!("message_bus epoch {epoch}")])]
    );
}
