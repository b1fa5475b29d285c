//! The PostgreSQL backend against the server on 127.0.0.1:5432 (trust auth,
//! user `postgres`). Each test creates its own database and drops it at the
//! end. PostgreSQL must be running: these tests fail, not skip, without it.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use message_bus_core::backend::postgres::PostgresBackend;
use message_bus_core::backend::{Backend, PublishOptions, Settings};
use message_bus_core::subscription::{Batch, Subscription};
use message_bus_core::{Error, Message};
use tokio_postgres::{Client, NoTls};

fn block<F: Future>(f: F) -> F::Output {
    message_bus_core::runtime::runtime().unwrap().block_on(f)
}

async fn connect(db: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port=5432 user=postgres dbname={db}"),
        NoTls,
    )
    .await
    .expect("PostgreSQL must be running on 127.0.0.1:5432");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A database of its own, dropped at the end.
struct Db {
    name: String,
    client: Client,
}

impl Db {
    fn new() -> Db {
        let name = format!(
            "mb_test_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        block(async {
            let admin = connect("postgres").await;
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            let client = connect(&name).await;
            Db { name, client }
        })
    }

    fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port=5432 user=postgres dbname={}",
            self.name
        )
    }

    fn backend(&self) -> PostgresBackend {
        PostgresBackend::new(&self.conninfo(), "_message_bus_0").unwrap()
    }

    fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
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

    fn exec(&self, sql: &str) {
        block(self.client.batch_execute(sql)).unwrap();
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let name = self.name.clone();
        block(async move {
            let admin = connect("postgres").await;
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        });
    }
}

fn opts() -> PublishOptions {
    PublishOptions::default()
}

fn s(v: &[&str]) -> Vec<Option<String>> {
    v.iter().map(|x| Some(x.to_string())).collect()
}

fn ids(messages: &[Message]) -> Vec<i64> {
    messages.iter().map(|m| m.global_id).collect()
}

fn take(sub: &Subscription, n: usize) -> Vec<Message> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if let Batch::Messages(batch) = sub
            .next_batch(n - out.len(), Duration::from_millis(100))
            .unwrap()
        {
            out.extend(batch.iter().map(|m| (**m).clone()));
        }
    }
    out
}

#[test]
fn schema_matches_the_reference() {
    let db = Db::new();
    let b = db.backend();
    assert_eq!(block(b.last_id("/x")).unwrap(), 0);
    assert_eq!(
        db.rows(
            "SELECT column_name, data_type, is_nullable, coalesce(column_default, '') FROM information_schema.columns WHERE table_name = 'message_bus' ORDER BY ordinal_position"
        ),
        vec![
            s(&["id", "bigint", "NO", "nextval('message_bus_id_seq'::regclass)"]),
            s(&["channel", "text", "NO", ""]),
            s(&["value", "text", "NO", ""]),
            s(&["added_at", "timestamp without time zone", "NO", "CURRENT_TIMESTAMP"]),
        ]
    );
    assert_eq!(
        db.rows("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'message_bus' ORDER BY indexname"),
        vec![
            s(&["message_bus_pkey", "CREATE UNIQUE INDEX message_bus_pkey ON public.message_bus USING btree (id)"]),
            s(&["table_added_at_index", "CREATE INDEX table_added_at_index ON public.message_bus USING btree (added_at)"]),
            s(&["table_channel_id_index", "CREATE INDEX table_channel_id_index ON public.message_bus USING btree (channel, id)"]),
        ]
    );
    assert_eq!(
        db.rows("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'message_bus'::regclass ORDER BY conname"),
        vec![
            s(&["message_bus_pkey", "PRIMARY KEY (id)"]),
            s(&["message_bus_value_check", "CHECK ((octet_length(value) >= 2))"]),
        ]
    );
    // A second backend (new connections) leaves the table alone.
    let b2 = db.backend();
    block(b2.publish("/x", "hi", &opts())).unwrap();
    assert_eq!(block(b.last_id("/x")).unwrap(), 1);
}

#[test]
fn rows_are_in_the_reference_format_both_ways() {
    let db = Db::new();
    let b = db.backend();
    assert_eq!(
        block(b.publish("/foo$|$s1", "hello", &opts())).unwrap(),
        Some(1)
    );
    assert_eq!(block(b.publish("/bar", "a|b", &opts())).unwrap(), Some(2));
    assert_eq!(
        db.rows("SELECT id, channel, value FROM message_bus ORDER BY id"),
        vec![s(&["1", "/foo$|$s1", "hello"]), s(&["2", "/bar", "a|b"])]
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
    assert_eq!(ids(&block(b.global_backlog(1)).unwrap()), vec![2, 3]);
    assert_eq!(
        block(b.get_message("/bar", 2)).unwrap(),
        Some(Message::new(2, 2, "/bar", "a|b"))
    );
    assert_eq!(block(b.get_message("/bar", 1)).unwrap(), None);
    // The check constraint of the reference schema.
    assert!(block(b.publish("/bar", "x", &opts())).is_err());
}

#[test]
fn trims_channels_globally_and_by_age() {
    let db = Db::new();
    let b = db.backend();
    Settings::set(&b.settings().max_backlog_size, 2);
    for i in 0..4 {
        block(b.publish("/t", &format!("m{i}"), &opts())).unwrap();
    }
    assert_eq!(ids(&block(b.backlog("/t", 0)).unwrap()), vec![3, 4]);
    let one = PublishOptions {
        max_backlog_size: Some(1),
        ..opts()
    };
    block(b.publish("/t", "m4", &one)).unwrap();
    assert_eq!(ids(&block(b.backlog("/t", 0)).unwrap()), vec![5]);

    Settings::set(&b.settings().max_global_backlog_size, 3);
    for c in ["/a", "/b", "/c", "/d"] {
        block(b.publish(c, "xx", &opts())).unwrap();
    }
    assert_eq!(ids(&block(b.global_backlog(0)).unwrap()), vec![7, 8, 9]);

    // Old rows of every channel expire on the next trimming publish.
    db.exec("UPDATE message_bus SET added_at = added_at - interval '1 hour' WHERE id <= 8");
    let age = PublishOptions {
        max_backlog_age: Some(60),
        ..opts()
    };
    block(b.publish("/e", "xx", &age)).unwrap();
    assert_eq!(ids(&block(b.global_backlog(0)).unwrap()), vec![9, 10]);

    // clear_every: trimming only on multiples.
    Settings::set(&b.settings().clear_every, 100);
    Settings::set(&b.settings().max_backlog_size, 1);
    block(b.publish("/e", "yy", &opts())).unwrap();
    assert_eq!(ids(&block(b.backlog("/e", 0)).unwrap()), vec![10, 11]);
}

#[test]
fn reset_recreates_the_table() {
    let db = Db::new();
    let b = db.backend();
    block(b.publish("/a", "11", &opts())).unwrap();
    block(b.publish("/a", "22", &opts())).unwrap();
    block(b.reset()).unwrap();
    assert_eq!(block(b.last_id("/a")).unwrap(), 0);
    assert_eq!(block(b.publish("/a", "33", &opts())).unwrap(), Some(1));
    block(b.expire_all_backlogs()).unwrap();
    assert!(block(b.global_backlog(0)).unwrap().is_empty());
    assert_eq!(
        db.rows("SELECT count(*) FROM pg_indexes WHERE tablename = 'message_bus'"),
        vec![s(&["3"])]
    );
}

fn subscribe(b: &PostgresBackend, last: Option<i64>) -> Arc<Subscription> {
    let sub = block(b.subscribe(last)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b.is_subscribed() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(b.is_subscribed());
    sub
}

#[test]
fn firehose_delivers_in_order_and_catches_up() {
    let db = Db::new();
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
    assert_eq!(ids(&take(&sub, 7)), vec![2, 3, 4, 5, 6, 7, 8]);

    // Kill the LISTEN connection; publish meanwhile; everything arrives once.
    let killed = db.rows(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'message_bus_listener' AND datname = current_database()",
    );
    assert_eq!(killed, vec![s(&["t"])]);
    std::thread::sleep(Duration::from_millis(50));
    for i in 0..3 {
        block(other.publish("/c", &format!("r{i}"), &opts())).unwrap();
    }
    let got = take(&sub, 3);
    assert_eq!(ids(&got), vec![9, 10, 11]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(matches!(
        sub.next_batch(10, Duration::from_millis(50)).unwrap(),
        Batch::TimedOut
    ));

    // A replaying subscription.
    let replay = subscribe(&b, Some(9));
    assert_eq!(ids(&take(&replay, 2)), vec![10, 11]);
    block(b.destroy());
}

#[test]
fn a_foreign_unsubscribe_is_ignored() {
    let db = Db::new();
    let b = db.backend();
    let sub = subscribe(&b, None);
    db.exec("NOTIFY _message_bus_0, '$$UNSUBSCRIBE'");
    block(b.publish("/c", "hi", &opts())).unwrap();
    assert_eq!(take(&sub, 1), vec![Message::new(1, 1, "/c", "hi")]);
    block(b.global_unsubscribe());
    assert!(sub.is_closed());
}

#[test]
fn oversized_payloads_raise_but_are_delivered() {
    let db = Db::new();
    let b = db.backend();
    let sub = subscribe(&b, None);
    let big = "x".repeat(9000);
    let e = block(b.publish("/big", &big, &opts())).unwrap_err();
    assert!(e.to_string().contains("8000 bytes"), "{e}");
    assert_eq!(block(b.last_id("/big")).unwrap(), 1);
    block(b.publish("/big", "small", &opts())).unwrap();
    let got = take(&sub, 2);
    assert_eq!(ids(&got), vec![1, 2]);
    assert_eq!(got[0].data.len(), 9000);
    // Another process's listener gets it from its periodic read.
    let c = db.backend();
    let sub_c = subscribe(&c, None);
    assert!(block(b.publish("/big", &big, &opts())).is_err());
    assert_eq!(ids(&take(&sub_c, 1)), vec![3]);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
