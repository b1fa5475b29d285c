//! Group commit of concurrent publishes (client side).
//!
//! A publish made while nothing is in flight is sent at once, as the
//! single-publish statement `publish_all`, by its caller: no timer, no task
//! hand-off. A publish made while a statement is in flight is queued. When
//! the statement returns, a task takes the queue: the oldest pending publish
//! together with up to `MAX_BATCH - 1` later ones that have the same trimming
//! settings go as ONE statement (`publish_batch`, one commit), then the next
//! ones, until the queue is empty. Each caller gets its own id once the
//! statement has returned, i.e. once its row is committed.
//!
//! At most one statement per process is in flight, all on one connection
//! (`PUBLISHER`; a statement whose caller was cancelled may still be running,
//! but the next one then waits behind it on that connection). So the NOTIFYs
//! of one process are sent in id order, and trimming sees the rows of every
//! earlier batch (trimming leaves exactly what trimming after each publish
//! would).
//!
//! Failures: if the batch statement fails with an SQL error, PostgreSQL rolled
//! it back (nothing was stored), and each publish is retried alone, so one bad
//! publish does not fail the others. If the connection broke, whether the
//! commit happened is unknown: every caller of the batch gets the error (a
//! retry could store a message twice).
//!
//! Batches run in a spawned task, so a caller that goes away (an interrupted
//! Ruby thread) does not cancel the publishes of the others; a publish sent
//! at once hands the queue over when it ends, even by cancellation.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::sync::Mutex;
use tokio::sync::oneshot;

use super::{Failure, Inner};
use crate::error::{Error, Result};

/// Publishes per statement at most.
pub(super) const MAX_BATCH: usize = 64;

/// The trimming settings of a publish (COMPAT.md §4.3.4), resolved when it
/// was made; only publishes with equal settings share a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Trim {
    pub clear_every: i64,
    pub global_size: i64,
    /// Seconds.
    pub age: i64,
    /// `max_backlog_size`, at least 1.
    pub size: i64,
}

impl Trim {
    pub fn interval(&self) -> String {
        format!("{} seconds", self.age)
    }
}

/// A publish's message, as queued.
pub(super) struct Publish {
    pub channel: String,
    pub data: String,
    /// `escape_channel(channel)`: the NOTIFY payload is `<id>|<id>|<escaped>|<data>`.
    pub escaped: String,
    pub trim: Trim,
}

/// One publish waiting for its id.
pub(super) struct Request {
    pub msg: Publish,
    reply: oneshot::Sender<Result<i64>>,
}

/// The publishes of one process waiting for a statement.
#[derive(Default)]
pub(super) struct Queue {
    pending: VecDeque<Request>,
    /// A publish statement is in flight (sent at once by its caller, or by
    /// the task that takes batches from `pending`).
    running: bool,
}

/// Removes from `pending` the oldest item and up to `max - 1` later ones
/// that are `same` as it; the others keep their order.
fn take_batch<T>(pending: &mut VecDeque<T>, max: usize, same: impl Fn(&T, &T) -> bool) -> Vec<T> {
    let Some(first) = pending.pop_front() else {
        return Vec::new();
    };
    let mut batch = vec![first];
    let mut rest = VecDeque::new();
    while let Some(item) = pending.pop_front() {
        if batch.len() < max && same(&batch[0], &item) {
            batch.push(item);
        } else {
            rest.push_back(item);
        }
    }
    *pending = rest;
    batch
}

/// Publishes `msg`; resolves to its id once its row is committed.
///
/// If nothing is in flight, the publish is sent at once from here, as a
/// single statement (no task hand-off, no added latency). Otherwise it is
/// queued; the queue is handed to a task when the statement in flight
/// returns.
pub(super) async fn publish(
    inner: &Arc<Inner>,
    queue: &Arc<Mutex<Queue>>,
    msg: Publish,
) -> Result<i64> {
    let (reply, answer) = oneshot::channel();
    let alone = {
        let mut q = queue.lock();
        if q.running {
            q.pending.push_back(Request { msg, reply });
            None
        } else {
            q.running = true;
            Some(msg)
        }
    };
    if let Some(msg) = alone {
        // Dropped when this publish returns or is cancelled.
        let _hand_over = HandOver { inner, queue };
        return inner
            .publish_one(&msg)
            .await
            .map_err(|f| inner.failure_to_error(f));
    }
    answer.await.unwrap_or_else(|_| {
        Err(Error::Backend(
            "PostgreSQL publish: the task running it ended before answering (the message may or may not be stored)".into(),
        ))
    })
}

/// When a publish sent at once is done: hands the publishes queued
/// meanwhile to a task, or marks the queue idle.
struct HandOver<'a> {
    inner: &'a Arc<Inner>,
    queue: &'a Arc<Mutex<Queue>>,
}

impl Drop for HandOver<'_> {
    fn drop(&mut self) {
        hand_over(self.inner, self.queue);
    }
}

/// Marks a publish statement in flight if none is and none is queued (the
/// caller then sends its publish itself and calls [`hand_over`] when done);
/// `false`: queue it behind them instead (`publish`). For the direct path.
pub(super) fn claim(queue: &Mutex<Queue>) -> bool {
    let mut q = queue.lock();
    if q.running {
        return false;
    }
    q.running = true;
    true
}

/// Ends a statement in flight claimed by [`claim`] or `publish`: hands the
/// publishes queued meanwhile to a task, or marks the queue idle.
pub(super) fn hand_over(inner: &Arc<Inner>, queue: &Arc<Mutex<Queue>>) {
    {
        let mut q = queue.lock();
        if q.pending.is_empty() {
            q.running = false;
            return;
        }
    }
    let task = serve(Arc::clone(inner), Arc::clone(queue));
    let spawned = match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(task);
            Ok(())
        }
        Err(_) => crate::runtime::runtime().map(|rt| {
            rt.spawn(task);
        }),
    };
    if let Err(e) = spawned {
        // Nothing will serve the queue.
        fail_queued(queue, &e);
    }
}

/// Fails every queued publish (none was sent) and marks the queue idle, so
/// that the next publish is sent at once.
fn fail_queued(queue: &Mutex<Queue>, e: &Error) {
    let stranded = {
        let mut q = queue.lock();
        q.running = false;
        std::mem::take(&mut q.pending)
    };
    for r in stranded {
        let _ = r.reply.send(Err(e.clone()));
    }
}

/// If the serving task ends other than by emptying the queue (a panic, or
/// dropped unpolled): fails the publishes still queued (nothing would send
/// them) and clears `running`, so that the next publish is sent at once.
struct Running {
    queue: Arc<Mutex<Queue>>,
    armed: bool,
}

impl Running {
    /// The queue is empty and `running` cleared: nothing to do on drop.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        fail_queued(
            &self.queue,
            &Error::Backend(
                "PostgreSQL publish: the task sending it ended unexpectedly (not stored)".into(),
            ),
        );
    }
}

/// Takes batches from the queue until it is empty.
fn serve(inner: Arc<Inner>, queue: Arc<Mutex<Queue>>) -> impl std::future::Future<Output = ()> {
    // Made before the task first runs: it counts even if it never does.
    let mut running = Running { queue, armed: true };
    async move {
        loop {
            let batch = {
                let mut q = running.queue.lock();
                let batch = take_batch(&mut q.pending, MAX_BATCH, |a, b| a.msg.trim == b.msg.trim);
                if batch.is_empty() {
                    // Under the lock: a publish made after this sees
                    // `running` false and is sent at once.
                    q.running = false;
                    drop(q);
                    running.disarm();
                    return;
                }
                batch
            };
            run(&inner, batch).await;
        }
    }
}

/// Runs one batch and answers its callers.
async fn run(inner: &Inner, mut batch: Vec<Request>) {
    if batch.len() == 1 {
        if let Some(r) = batch.pop() {
            publish_alone(inner, r).await;
        }
        return;
    }
    match inner.publish_many(&batch).await {
        Ok(ids) => {
            for (r, id) in batch.into_iter().zip(ids) {
                let _ = r.reply.send(Ok(id));
            }
        }
        Err(failure) if failure.rolled_back() => {
            // Nothing was stored: each alone (the bad one fails by itself).
            for r in batch {
                publish_alone(inner, r).await;
            }
        }
        Err(failure) => {
            let e = inner.failure_to_error(failure);
            for r in batch {
                let _ = r.reply.send(Err(e.clone()));
            }
        }
    }
}

/// Sends one queued publish as its own statement and answers its caller.
async fn publish_alone(inner: &Inner, r: Request) {
    let result = inner
        .publish_one(&r.msg)
        .await
        .map_err(|f| inner.failure_to_error(f));
    let _ = r.reply.send(result);
}

/// Bookkeeping after publishes got `ids` (in any order) with `trim`.
pub(super) fn after_publish(inner: &Inner, ids: &[i64], trim: &Trim) {
    let Some(&lowest) = ids.iter().min() else {
        return;
    };
    if lowest <= inner.trimmed_to.load(Ordering::Relaxed) {
        // Ids restarted (a reset, maybe by another process).
        inner.trimmed_to.store(0, Ordering::Relaxed);
    }
    let top = ids
        .iter()
        .copied()
        .filter(|id| id % trim.clear_every == 0)
        .max();
    if let Some(top) = top {
        if top > trim.global_size {
            inner
                .trimmed_to
                .fetch_max(top - trim.global_size, Ordering::Relaxed);
        }
    }
}

/// Maps the `(ordinality, id)` rows of `publish_batch` to the ids of the
/// publishes `1..=n` in order; `None` unless each publish has exactly one.
pub(super) fn ids_in_order(n: usize, rows: &[(i64, i64)]) -> Option<Vec<i64>> {
    let mut ids = vec![None; n];
    for &(ordinality, id) in rows {
        let slot = usize::try_from(ordinality)
            .ok()
            .and_then(|o| o.checked_sub(1))
            .and_then(|i| ids.get_mut(i))?;
        if slot.replace(id).is_some() {
            return None;
        }
    }
    ids.into_iter().collect()
}

impl Failure {
    /// The statement failed with an SQL error on a working connection:
    /// PostgreSQL rolled it back, nothing of it was stored.
    fn rolled_back(&self) -> bool {
        match self {
            Failure::Pool(_) | Failure::Other(_) => false,
            Failure::Pg(e) => {
                !e.is_closed()
                    && e.as_db_error().is_some_and(|d| {
                        d.parsed_severity() == Some(tokio_postgres::error::Severity::Error)
                            && !d.code().code().starts_with("08")
                            && !d.code().code().starts_with("57P")
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_take_the_oldest_and_the_same_after_it() {
        let mut pending: VecDeque<(u32, char)> =
            [(1, 'a'), (2, 'b'), (3, 'a'), (4, 'a'), (5, 'b'), (6, 'a')]
                .into_iter()
                .collect();
        let same = |x: &(u32, char), y: &(u32, char)| x.1 == y.1;
        assert_eq!(
            take_batch(&mut pending, 3, same),
            vec![(1, 'a'), (3, 'a'), (4, 'a')]
        );
        assert_eq!(
            pending.iter().copied().collect::<Vec<_>>(),
            vec![(2, 'b'), (5, 'b'), (6, 'a')]
        );
        assert_eq!(take_batch(&mut pending, 3, same), vec![(2, 'b'), (5, 'b')]);
        assert_eq!(take_batch(&mut pending, 3, same), vec![(6, 'a')]);
        assert!(take_batch(&mut pending, 3, same).is_empty());
    }

    #[test]
    fn ids_are_mapped_by_ordinality() {
        assert_eq!(
            ids_in_order(3, &[(2, 11), (1, 10), (3, 12)]),
            Some(vec![10, 11, 12])
        );
        assert_eq!(ids_in_order(3, &[(1, 10), (3, 12)]), None);
        assert_eq!(ids_in_order(2, &[(1, 10), (1, 11)]), None);
        assert_eq!(ids_in_order(2, &[(1, 10), (3, 11)]), None);
        assert_eq!(ids_in_order(2, &[(0, 10), (1, 11)]), None);
        assert_eq!(ids_in_order(1, &[(-1, 10)]), None);
    }
}
