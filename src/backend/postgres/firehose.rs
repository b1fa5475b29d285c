//! The firehose: one LISTEN connection per backend and process, handing every
//! message to the hub in global-id order (COMPAT.md §4.3.6, improved per §9
//! Q5 and Q11).
//!
//! Ids are not consecutive on PostgreSQL (concurrent inserts commit out of
//! order, failed inserts and rollbacks burn ids, trimming deletes rows), so a
//! gap in the notified ids only means "read the table": the listener reads
//! every row after its position, waits a little for ids that may still be
//! committing, then delivers in order and remembers the ids it skipped (one
//! of those that turns up later is still delivered, late rather than never).
//! The table is also read after every reconnection and every second while
//! idle, which delivers rows whose NOTIFY never came (oversized payloads).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_postgres::{Client, Statement};

use super::{sql, Delivery, Inner, ProcState};
use crate::backend::firehose::keep_listening;
use crate::backend::{networked, payload};
use crate::error::{Error, Result};
use crate::log;
use crate::message::Message;
/// `application_name` of the LISTEN connection.
pub const LISTENER_NAME: &str = "message_bus_listener";
/// The table is read this often while no notification arrives.
const POLL_EVERY: Duration = Duration::from_secs(1);
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Waits for ids that may still be committing before treating them as holes.
const HOLE_WAITS: [Duration; 3] = [
    Duration::from_millis(10),
    Duration::from_millis(40),
    Duration::from_millis(150),
];
/// A notified id at or below the position makes the listener compare the
/// table's epoch at most this often.
const DUPLICATE_EPOCH_CHECK: Duration = Duration::from_millis(100);
/// Skipped ids remembered for late delivery.
const MAX_SKIPPED: usize = 10_000;

/// The listener's own statements (on its dedicated connection).
struct Reader<'a> {
    client: &'a Client,
    global_backlog: Statement,
    last_id: Statement,
}

/// Runs until aborted: listens, and reconnects with backoff after errors.
pub(super) async fn run(inner: Arc<Inner>, proc: Arc<ProcState>) {
    let (inner, proc) = (&inner, &proc);
    keep_listening(
        crate::metrics::BackendKind::Postgres,
        &proc.firehose,
        &inner.epoch,
        || {
            format!(
                "PostgreSQL LISTEN on {} ({})",
                inner.notify_channel, inner.target
            )
        },
        || async move {
            let mut confirmed = false;
            let outcome = listen(inner, proc, &mut confirmed).await;
            (confirmed, outcome)
        },
    )
    .await
}

async fn listen(inner: &Inner, proc: &ProcState, confirmed: &mut bool) -> Result<()> {
    let mut config = inner.config.clone();
    config.application_name(LISTENER_NAME);
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let (client, driver) = super::tls::connect(&config, Some(tx), |e| inner.to_error(e)).await?;
    let result = serve(inner, proc, &client, &mut rx, confirmed).await;
    driver.abort();
    result
}

async fn serve(
    inner: &Inner,
    proc: &ProcState,
    client: &Client,
    rx: &mut mpsc::UnboundedReceiver<String>,
    confirmed: &mut bool,
) -> Result<()> {
    let err = |e| inner.to_error(e);
    let setup = async {
        client
            .batch_execute(&sql::listen_sql(&inner.notify_channel))
            .await?;
        let global_backlog = client
            .prepare("SELECT id, channel, value FROM message_bus WHERE id > $1::bigint ORDER BY id")
            .await?;
        let last_id = client
            .prepare(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM message_bus_id_seq",
            )
            .await?;
        Ok::<_, tokio_postgres::Error>((global_backlog, last_id))
    };
    let (global_backlog, last_id) = timeout(QUERY_TIMEOUT, setup)
        .await
        .map_err(|_| Error::Connection(format!("LISTEN on {} timed out", inner.target)))?
        .map_err(err)?;
    let reader = Reader {
        client,
        global_backlog,
        last_id,
    };
    {
        let mut delivery = proc.delivery.lock().await;
        catch_up(inner, &reader, &mut delivery, true).await?;
    }
    proc.firehose.mark_subscribed();
    *confirmed = true;
    let mut poll = tokio::time::interval_at(Instant::now() + POLL_EVERY, POLL_EVERY);
    loop {
        tokio::select! {
            payload = rx.recv() => {
                let Some(payload) = payload else {
                    return Ok(());
                };
                on_payload(inner, proc, &reader, &payload).await?;
                poll.reset();
            }
            _ = poll.tick() => {
                let mut delivery = proc.delivery.lock().await;
                catch_up(inner, &reader, &mut delivery, true).await?;
            }
            _ = proc.poke.notified() => {
                let mut delivery = proc.delivery.lock().await;
                catch_up(inner, &reader, &mut delivery, false).await?;
            }
        }
    }
}

async fn on_payload(
    inner: &Inner,
    proc: &ProcState,
    reader: &Reader<'_>,
    payload: &str,
) -> Result<()> {
    let Some(message) = payload::decode(&inner.notify_channel, payload.as_bytes()) else {
        return Ok(());
    };
    let mut delivery = proc.delivery.lock().await;
    let highest = delivery.highest.unwrap_or(0);
    match next_step(highest, &delivery.skipped, message.global_id) {
        Step::Deliver => {
            delivery.highest = Some(message.global_id);
            inner.hub.deliver(message);
            Ok(())
        }
        Step::Late => {
            delivery.skipped.remove(&message.global_id);
            inner.hub.deliver(message);
            Ok(())
        }
        Step::CatchUp => catch_up(inner, reader, &mut delivery, false).await,
        // Or the first ids of a recreated table (its epoch tells; checked
        // at most every DUPLICATE_EPOCH_CHECK: duplicates are common).
        Step::Duplicate
            if due(&mut delivery.epoch_checked) && epoch_changed(inner, reader).await? =>
        {
            catch_up(inner, reader, &mut delivery, true).await
        }
        Step::Duplicate => Ok(()),
    }
}

/// What to do with a notified id, given the delivery position.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// The next id: hand it over.
    Deliver,
    /// Beyond the next id: read the table.
    CatchUp,
    /// An id a catch-up skipped because it was not committed yet.
    Late,
    /// Already handed over.
    Duplicate,
}

pub(super) fn next_step(highest: i64, skipped: &BTreeSet<i64>, id: i64) -> Step {
    if id == highest.saturating_add(1) {
        Step::Deliver
    } else if id > highest {
        Step::CatchUp
    } else if skipped.contains(&id) {
        Step::Late
    } else {
        Step::Duplicate
    }
}

/// Whether ids are missing between `highest` and the last row read.
pub(super) fn has_hole(highest: i64, rows: &[Message]) -> bool {
    let mut expected = highest.saturating_add(1);
    for m in rows {
        if m.global_id > expected {
            return true;
        }
        expected = m.global_id.saturating_add(1);
    }
    false
}

async fn read(inner: &Inner, reader: &Reader<'_>, after: i64) -> Result<Vec<Message>> {
    let rows = timeout(
        QUERY_TIMEOUT,
        reader.client.query(&reader.global_backlog, &[&after]),
    )
    .await
    .map_err(|_| Error::Connection(format!("reading {} timed out", inner.target)))?
    .map_err(|e| inner.to_error(e))?;
    rows.iter().map(|r| inner.row_message(r)).collect()
}

/// Whether a check last made at `last` is due again (and records it).
fn due(last: &mut Option<std::time::Instant>) -> bool {
    let now = std::time::Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < DUPLICATE_EPOCH_CHECK) {
        return false;
    }
    *last = Some(now);
    true
}

/// Whether the table no longer carries the epoch this process knows: it was
/// dropped and recreated (its ids may already have passed our position).
async fn epoch_changed(inner: &Inner, reader: &Reader<'_>) -> Result<bool> {
    let Some(known) = inner.epoch.get() else {
        return Ok(false);
    };
    let stored = timeout(QUERY_TIMEOUT, inner.stored_epoch(reader.client))
        .await
        .map_err(|_| Error::Connection(format!("reading {} timed out", inner.target)))??;
    Ok(stored.as_deref() != Some(&*known))
}

/// Hands over, in order, every row after the delivery position.
/// With `check_epoch` (on connection and every idle second), also compares
/// the table's epoch with the known one.
async fn catch_up(
    inner: &Inner,
    reader: &Reader<'_>,
    delivery: &mut Delivery,
    check_epoch: bool,
) -> Result<()> {
    let current: i64 = timeout(QUERY_TIMEOUT, reader.client.query_one(&reader.last_id, &[]))
        .await
        .map_err(|_| Error::Connection(format!("reading {} timed out", inner.target)))?
        .map_err(|e| inner.to_error(e))?
        .try_get(0)
        .map_err(|e| inner.to_error(e))?;
    let mut highest = delivery.highest.unwrap_or(current);
    if highest > current || (check_epoch && epoch_changed(inner, reader).await?) {
        // The table was recreated (by another process): ids restart.
        log::warn(format!(
            "message_bus: ids of {} restarted (table recreated); catching up from 0",
            inner.target
        ));
        highest = 0;
        delivery.skipped.clear();
        networked::storage_was_reset(inner).await;
    }
    let mut rows = read(inner, reader, highest).await?;
    for wait in HOLE_WAITS {
        if !has_hole(highest, &rows) {
            break;
        }
        tokio::time::sleep(wait).await;
        rows = read(inner, reader, highest).await?;
    }
    let mut last = highest;
    if rows.iter().any(|m| m.global_id > last) {
        let m = crate::metrics::backend(crate::metrics::BackendKind::Postgres);
        crate::metrics::BackendMetrics::count(&m.gaps_caught_up);
    }
    for message in rows {
        if message.global_id <= last {
            continue;
        }
        for hole in last.saturating_add(1)..message.global_id {
            if delivery.skipped.len() >= MAX_SKIPPED {
                delivery.skipped.pop_first();
            }
            delivery.skipped.insert(hole);
            if hole - last > MAX_SKIPPED as i64 {
                break;
            }
        }
        last = message.global_id;
        inner.hub.deliver(message);
    }
    delivery.highest = Some(last);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: i64) -> Message {
        Message::new(id, id, "/c", "d")
    }

    #[test]
    fn steps() {
        let skipped: BTreeSet<i64> = [4].into_iter().collect();
        assert_eq!(next_step(5, &skipped, 6), Step::Deliver);
        assert_eq!(next_step(5, &skipped, 8), Step::CatchUp);
        assert_eq!(next_step(5, &skipped, 4), Step::Late);
        assert_eq!(next_step(5, &skipped, 5), Step::Duplicate);
        assert_eq!(next_step(0, &skipped, 1), Step::Deliver);
    }

    #[test]
    fn holes() {
        assert!(!has_hole(3, &[m(4), m(5)]));
        assert!(has_hole(3, &[m(5)]));
        assert!(has_hole(3, &[m(4), m(6)]));
        assert!(!has_hole(3, &[]));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            /// A NOTIFY payload is decoded with the wire parser: arbitrary
            /// payloads never panic, and the unsubscribe marker is never a message.
            #[test]
            fn notification_payloads_never_panic(payload in "\\PC*") {
                let _ = Message::decode(&payload);
                prop_assert!(Message::decode(payload::UNSUBSCRIBE).is_err());
            }

            /// A row as read back (id, channel, value) re-encoded as the NOTIFY
            /// payload of the publish statement decodes to the same message.
            #[test]
            fn row_and_notification_agree(id in 1..i64::MAX, channel in "[^$]*", value in "\\PC*") {
                let row = Message::new(id, id, channel, value);
                prop_assert_eq!(Message::decode(&row.encode()).unwrap(), row);
            }

            /// Ids at the edges of i64 never overflow the delivery logic.
            #[test]
            fn steps_never_overflow(highest in any::<i64>(), id in any::<i64>(),
                                    skipped in proptest::collection::btree_set(any::<i64>(), 0..4)) {
                let step = next_step(highest, &skipped, id);
                if highest < i64::MAX && id == highest + 1 {
                    prop_assert_eq!(step, Step::Deliver);
                } else if id > highest {
                    prop_assert_eq!(step, Step::CatchUp);
                }
            }

            /// `has_hole` is true exactly when the ascending rows are not the
            /// contiguous run after `highest`.
            #[test]
            fn holes_match_contiguity(highest in 0i64..100,
                                      ids in proptest::collection::btree_set(0i64..120, 0..8)) {
                let rows: Vec<Message> = ids.iter().filter(|&&i| i > highest).map(|&i| m(i)).collect();
                let contiguous = rows.iter().enumerate().all(|(k, r)| r.global_id == highest + 1 + k as i64);
                prop_assert_eq!(has_hole(highest, &rows), !contiguous);
            }
        }
    }
}
