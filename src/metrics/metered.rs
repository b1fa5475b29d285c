//! A backend that counts what goes through it: publishes (and their
//! latency), publish errors, publishes queued in memory, backlog reads.
//! Every backend the binding builds is wrapped in one, so the backends
//! themselves only count what only they see (reconnects, gaps).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{latency_enabled, BackendKind, BackendMetrics};
use crate::backend::{
    Backend, DirectCall, DirectReply, DirectResult, DirectRun, PublishOptions, Settings,
};
use crate::bus::Hub;
use crate::error::Result;
use crate::message::Message;
use crate::subscription::Subscription;

pub struct Metered {
    inner: Arc<dyn Backend>,
    metrics: &'static BackendMetrics,
}

impl Metered {
    pub fn wrap(kind: BackendKind, inner: Arc<dyn Backend>) -> Arc<dyn Backend> {
        Arc::new(Metered {
            inner,
            metrics: super::backend(kind),
        })
    }

    fn read<T>(&self, result: Result<T>) -> Result<T> {
        count_read(self.metrics);
        result
    }
}

fn count_read(m: &BackendMetrics) {
    BackendMetrics::count(&m.backlog_reads);
}

fn count_publish(m: &BackendMetrics, started: Option<Instant>, result: &Result<Option<i64>>) {
    match result {
        Ok(Some(_)) => BackendMetrics::count(&m.publishes),
        Ok(None) => BackendMetrics::count(&m.publishes_queued),
        Err(_) => BackendMetrics::count(&m.publish_errors),
    }
    if let (Some(started), Ok(Some(_))) = (started, result) {
        m.publish_latency.observe(started.elapsed());
    }
}

/// What a request/response call counts, as its async twin does.
struct CallCounter {
    metrics: &'static BackendMetrics,
    started: Option<Instant>,
    publish: bool,
    backlog: bool,
}

impl CallCounter {
    /// Starts the clock of a publish (when latency is measured).
    fn new(call: DirectCall<'_>, metrics: &'static BackendMetrics) -> Self {
        let publish = matches!(call, DirectCall::Publish { .. });
        CallCounter {
            metrics,
            started: (publish && latency_enabled()).then(Instant::now),
            publish,
            backlog: matches!(call, DirectCall::Backlog(..)),
        }
    }

    fn count(&self, done: &Result<DirectReply>) {
        if self.publish {
            let published = match done {
                Ok(DirectReply::Published(id)) => Ok(*id),
                Ok(_) => Ok(None),
                Err(e) => Err(e.clone()),
            };
            count_publish(self.metrics, self.started, &published);
        } else if self.backlog {
            count_read(self.metrics);
        }
    }
}

/// A direct call of the wrapped backend, counted.
struct MeteredRun<'a> {
    run: Box<dyn DirectRun + 'a>,
    counter: CallCounter,
}

impl DirectRun for MeteredRun<'_> {
    fn run(&mut self, interrupted: &dyn Fn() -> bool) -> Option<DirectResult> {
        let result = self.run.run(interrupted)?;
        if let DirectResult::Done(done) = &result {
            self.counter.count(done);
        }
        Some(result)
    }
}

#[async_trait]
impl Backend for Metered {
    fn settings(&self) -> &Settings {
        self.inner.settings()
    }

    fn hub(&self) -> &Arc<Hub> {
        self.inner.hub()
    }

    async fn publish(
        &self,
        channel: &str,
        data: &str,
        opts: &PublishOptions,
    ) -> Result<Option<i64>> {
        let started = latency_enabled().then(Instant::now);
        let result = self.inner.publish(channel, data, opts).await;
        count_publish(self.metrics, started, &result);
        result
    }

    async fn last_id(&self, channel: &str) -> Result<i64> {
        self.inner.last_id(channel).await
    }

    async fn last_ids(&self, channels: &[String]) -> Result<Vec<i64>> {
        self.inner.last_ids(channels).await
    }

    async fn last_ids_for_poll(
        &self,
        channels: &[String],
        requested: &[Option<i64>],
    ) -> Result<Vec<i64>> {
        self.inner.last_ids_for_poll(channels, requested).await
    }

    fn epoch(&self) -> Option<Arc<str>> {
        self.inner.epoch()
    }

    async fn load_epoch(&self) -> Result<Option<Arc<str>>> {
        self.inner.load_epoch().await
    }

    async fn refresh_epoch(&self) -> Result<()> {
        self.inner.refresh_epoch().await
    }

    async fn backlog(&self, channel: &str, last_id: i64) -> Result<Vec<Message>> {
        self.read(self.inner.backlog(channel, last_id).await)
    }

    async fn global_backlog(&self, last_id: i64) -> Result<Vec<Message>> {
        self.read(self.inner.global_backlog(last_id).await)
    }

    async fn get_message(&self, channel: &str, message_id: i64) -> Result<Option<Message>> {
        self.inner.get_message(channel, message_id).await
    }

    async fn reset(&self) -> Result<()> {
        self.inner.reset().await
    }

    async fn expire_all_backlogs(&self) -> Result<()> {
        self.inner.expire_all_backlogs().await
    }

    async fn subscribe(&self, last_id: Option<i64>) -> Result<Arc<Subscription>> {
        self.inner.subscribe(last_id).await
    }

    async fn global_unsubscribe(&self) {
        self.inner.global_unsubscribe().await
    }

    async fn ensure_listening(&self) -> Result<()> {
        self.inner.ensure_listening().await
    }

    async fn destroy(&self) {
        self.inner.destroy().await
    }

    fn after_fork(&self) {
        self.inner.after_fork()
    }

    fn is_subscribed(&self) -> bool {
        self.inner.is_subscribed()
    }

    fn queued_publishes(&self) -> usize {
        self.inner.queued_publishes()
    }

    fn immediate(&self, call: DirectCall<'_>) -> Option<Result<DirectReply>> {
        let counter = CallCounter::new(call, self.metrics);
        let done = self.inner.immediate(call)?;
        counter.count(&done);
        Some(done)
    }

    fn direct<'a>(&'a self, call: DirectCall<'a>) -> Option<Box<dyn DirectRun + 'a>> {
        let counter = CallCounter::new(call, self.metrics);
        let run = self.inner.direct(call)?;
        Some(Box::new(MeteredRun { run, counter }))
    }

    fn dropped_publishes(&self) -> u64 {
        self.inner.dropped_publishes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use std::sync::atomic::Ordering;

    #[tokio::test]
    async fn counts_publishes_and_backlog_reads_of_its_kind() {
        // Memory is the kind no other core test wraps, so the counts are ours.
        let m = crate::metrics::backend(BackendKind::Memory);
        let before = (
            m.publishes.load(Ordering::Relaxed),
            m.backlog_reads.load(Ordering::Relaxed),
            m.publish_latency.values().count,
        );
        let backend = Metered::wrap(BackendKind::Memory, Arc::new(MemoryBackend::new()));
        for n in 0..3 {
            let id = backend
                .publish("/m", &format!("d{n}"), &PublishOptions::default())
                .await
                .unwrap();
            assert_eq!(id, Some(n + 1));
        }
        assert_eq!(backend.backlog("/m", 0).await.unwrap().len(), 3);
        assert_eq!(backend.global_backlog(0).await.unwrap().len(), 3);
        assert_eq!(m.publishes.load(Ordering::Relaxed) - before.0, 3);
        assert_eq!(m.backlog_reads.load(Ordering::Relaxed) - before.1, 2);
        assert_eq!(m.publish_latency.values().count - before.2, 3);
    }
}
