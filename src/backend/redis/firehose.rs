//! The firehose: one pub/sub connection per backend and process, handing
//! every message to the hub in global-id order, catching up from the global
//! backlog on gaps and after reconnects (COMPAT.md §4.2.5).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{timeout, Instant};

use super::{Delivery, Inner, ProcState};
use crate::backend::firehose::keep_listening;
use crate::backend::networked::Networked;
use crate::backend::payload;
use crate::error::{Error, Result};
use crate::log;
use crate::message::Message;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A silent connection is checked this often (a dead peer is otherwise only
/// noticed by TCP keepalive, much later).
const PING_EVERY: Duration = Duration::from_secs(15);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// What to do with a live message, given the delivery position.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// It is the next one: hand it over.
    Deliver,
    /// A gap: read the global backlog up to it.
    CatchUp,
    /// Already handed over by a catch-up that ran ahead of the stream.
    Duplicate,
    /// Lower than an id the stream already carried: storage was reset (ids
    /// restarted), or the message is foreign traffic (§9 Q15). To be checked.
    Backwards,
}

/// `highest`: the highest id handed over; `stream_pos`: the highest id seen
/// on this pub/sub connection (one server publishes in id order, so the
/// stream never goes back unless ids restarted).
pub(super) fn next_step(highest: Option<i64>, stream_pos: i64, global_id: i64) -> Step {
    match highest {
        None => Step::Deliver,
        Some(h) if global_id == h.saturating_add(1) => Step::Deliver,
        Some(h) if global_id > h => Step::CatchUp,
        Some(_) if global_id > stream_pos => Step::Duplicate,
        Some(_) => Step::Backwards,
    }
}

/// The messages of a global backlog read to hand over after `highest`:
/// strictly increasing global ids, nothing at or below `highest`.
pub(super) fn select_catch_up(highest: i64, backlog: Vec<Message>) -> Vec<Message> {
    let mut last = highest;
    let mut out = Vec::with_capacity(backlog.len());
    for message in backlog {
        if message.global_id > last {
            last = message.global_id;
            out.push(message);
        }
    }
    out
}

/// Runs until aborted: listens, and reconnects with backoff after errors.
pub(super) async fn run(inner: Arc<Inner>, proc: Arc<ProcState>) {
    let (inner, proc) = (&inner, &proc);
    keep_listening(
        crate::metrics::BackendKind::Redis,
        &proc.firehose,
        &inner.epoch,
        || {
            format!(
                "Redis subscription on {} ({})",
                inner.pubsub_channel, inner.url
            )
        },
        || async move {
            let mut confirmed = false;
            let outcome = listen(inner, proc, &mut confirmed).await;
            // Messages may be missed until the next subscription catches up.
            proc.cache.go_dark();
            (confirmed, outcome)
        },
    )
    .await
}

async fn listen(inner: &Inner, proc: &ProcState, confirmed: &mut bool) -> Result<()> {
    let timed_out = |what: &str| {
        Error::Connection(format!(
            "cannot reach Redis at {}: {what} timed out",
            inner.url
        ))
    };
    let client = inner.client().await.map_err(|e| inner.to_error(e))?;
    if inner.is_sentinel() {
        // The master may have changed: read from the one subscribed to.
        proc.conn.lock().take();
    }
    let pubsub = timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| timed_out("connecting"))?
        .map_err(|e| inner.to_error(e))?;
    let (mut sink, mut stream) = pubsub.split();
    timeout(CONNECT_TIMEOUT, sink.subscribe(&inner.pubsub_channel))
        .await
        .map_err(|_| timed_out("SUBSCRIBE"))?
        .map_err(|e| inner.to_error(e))?;
    {
        let mut delivery = proc.delivery.lock().await;
        if delivery.highest.is_none() {
            delivery.highest = Some(inner.global_id().await?);
        } else if inner.storage_replaced(&delivery).await? {
            log::warn(format!(
                "message_bus: Redis at {} no longer holds the last message delivered (global id {}): storage was reset or replaced; catching up from 0",
                inner.url,
                delivery.highest.unwrap_or(0)
            ));
            inner.storage_was_reset(&mut delivery).await;
        }
        // Whatever this connection carries comes after this position.
        delivery.stream_pos = delivery.highest.unwrap_or(0);
        inner.catch_up(&mut delivery).await?;
    }
    proc.firehose.mark_subscribed();
    // From here on every message reaches the hub (and the cache) in order.
    proc.cache.go_live();
    *confirmed = true;
    // A storage replaced while no message was delivered shows only as a
    // missing epoch: check it on every connection, and with every PING.
    check_epoch(inner).await;
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else {
                    return Ok(());
                };
                on_payload(inner, proc, message.get_payload_bytes()).await?;
            }
            _ = ping.tick() => {
                timeout(PING_TIMEOUT, sink.ping::<::redis::Value>())
                    .await
                    .map_err(|_| timed_out("PING"))?
                    .map_err(|e| inner.to_error(e))?;
                check_epoch(inner).await;
            }
        }
    }
}

/// Reads the epoch again (on the command connection; a failure is only
/// logged: the subscription itself is fine).
async fn check_epoch(inner: &Inner) {
    match timeout(PING_TIMEOUT, inner.read_epoch()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => log::warn(format!(
            "message_bus: cannot read the storage epoch of {}: {e}",
            inner.url
        )),
        Err(_) => log::warn(format!(
            "message_bus: reading the storage epoch of {} timed out",
            inner.url
        )),
    }
}

async fn on_payload(inner: &Inner, proc: &ProcState, payload: &[u8]) -> Result<()> {
    let Some(message) = payload::decode(&inner.pubsub_channel, payload) else {
        return Ok(());
    };
    let mut delivery = proc.delivery.lock().await;
    deliver_or_catch_up(inner, &mut delivery, message).await
}

async fn deliver_or_catch_up(
    inner: &Inner,
    delivery: &mut Delivery,
    message: Message,
) -> Result<()> {
    let step = next_step(delivery.highest, delivery.stream_pos, message.global_id);
    if step != Step::Backwards {
        delivery.stream_pos = delivery.stream_pos.max(message.global_id);
    }
    match step {
        Step::Deliver => {
            delivery.hand_over(&inner.hub, message);
            Ok(())
        }
        Step::CatchUp => inner.catch_up(delivery).await,
        Step::Duplicate => Ok(()),
        Step::Backwards => {
            // Ours only if our storage holds exactly this message.
            let stored = inner
                .get_message(&message.channel, message.message_id)
                .await?;
            if stored.as_ref() == Some(&message) {
                log::warn(format!(
                    "message_bus: global ids on {} restarted at or below {} (storage reset or failover); catching up from 0",
                    inner.url, message.global_id
                ));
                inner.storage_was_reset(delivery).await;
                delivery.stream_pos = message.global_id;
                inner.catch_up(delivery).await
            } else {
                log::warn(format!(
                    "message_bus: ignoring a message for {} on {} that is not in this database (another database publishing on the same pub/sub channel?)",
                    message.channel, inner.pubsub_channel
                ));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: i64) -> Message {
        Message::new(id, id, "/c", "d")
    }

    #[test]
    fn only_the_next_id_is_delivered_directly() {
        assert_eq!(next_step(None, 0, 7), Step::Deliver);
        assert_eq!(next_step(Some(6), 6, 7), Step::Deliver);
        assert_eq!(next_step(Some(0), 0, 1), Step::Deliver);
        assert_eq!(next_step(Some(5), 5, 7), Step::CatchUp); // gap
                                                             // a catch-up delivered up to 9 while the stream was at 6
        assert_eq!(next_step(Some(9), 6, 7), Step::Duplicate);
        assert_eq!(next_step(Some(9), 7, 9), Step::Duplicate);
        // the stream went back: reset, failover or foreign traffic
        assert_eq!(next_step(Some(9), 9, 1), Step::Backwards);
        assert_eq!(next_step(Some(9), 9, 9), Step::Backwards);
        assert_eq!(next_step(Some(9), 5, 5), Step::Backwards);
    }

    #[test]
    fn catch_up_skips_holes_and_never_goes_back() {
        let ids = |v: Vec<Message>| v.iter().map(|m| m.global_id).collect::<Vec<_>>();
        assert_eq!(
            ids(select_catch_up(3, vec![m(2), m(3), m(5), m(8), m(9)])),
            vec![5, 8, 9]
        );
        assert_eq!(
            ids(select_catch_up(0, vec![m(1), m(1), m(4), m(2)])),
            vec![1, 4]
        );
        assert!(select_catch_up(10, vec![m(1), m(2)]).is_empty());
    }
}
