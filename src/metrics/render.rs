//! A scrape: the values of every metric at one moment ([`Snapshot`]),
//! rendered in the OpenMetrics text format by `prometheus-client` (names,
//! `# HELP`/`# TYPE`/`# UNIT` lines, `_total` and `_bucket` suffixes,
//! label escaping and the closing `# EOF` are the crate's).

use std::sync::atomic::Ordering;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{backend, gate, BackendKind, HistogramValues};
use crate::fanout::{CloseReason, Transport, WebClientStats};

/// What the backends of one kind did in this process.
#[derive(Debug, Clone, Default)]
pub struct BackendValues {
    pub kind: Option<BackendKind>,
    pub publishes: u64,
    pub publish_errors: u64,
    pub publishes_queued: u64,
    pub backlog_reads: u64,
    pub firehose_reconnects: u64,
    pub gaps_caught_up: u64,
    pub publish_latency: HistogramValues,
}

/// Every metric of this process at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The kinds this process used (the configured one always).
    pub backends: Vec<BackendValues>,
    /// The configured backend's in-memory publish queue.
    pub queue_depth: u64,
    pub queue_dropped: u64,
    pub web: WebClientStats,
    pub delivery_latency: HistogramValues,
    pub gate_jobs: u64,
    pub gate_waiting: i64,
    pub gate_timed_out: u64,
    /// Counted by the Ruby side.
    pub subscriber_blocks: u64,
    pub subscriber_errors: u64,
    pub log_lines_dropped: u64,
}

impl Snapshot {
    /// The core's counters; `configured` is listed even before its first use.
    /// The caller adds the web clients, the queue and what Ruby counts.
    pub fn gather(configured: Option<BackendKind>) -> Self {
        let backends = BackendKind::ALL
            .iter()
            .filter_map(|kind| {
                let m = backend(*kind);
                let v = BackendValues {
                    kind: Some(*kind),
                    publishes: m.publishes.load(Ordering::Relaxed),
                    publish_errors: m.publish_errors.load(Ordering::Relaxed),
                    publishes_queued: m.publishes_queued.load(Ordering::Relaxed),
                    backlog_reads: m.backlog_reads.load(Ordering::Relaxed),
                    firehose_reconnects: m.firehose_reconnects.load(Ordering::Relaxed),
                    gaps_caught_up: m.gaps_caught_up.load(Ordering::Relaxed),
                    publish_latency: m.publish_latency.values(),
                };
                let used =
                    v.publishes + v.publish_errors + v.publishes_queued + v.backlog_reads > 0;
                (used || configured == Some(*kind)).then_some(v)
            })
            .collect();
        let g = gate();
        Snapshot {
            backends,
            gate_jobs: g.jobs.load(Ordering::Relaxed),
            gate_waiting: g.waiting.load(Ordering::Relaxed).max(0),
            gate_timed_out: g.timed_out.load(Ordering::Relaxed),
            log_lines_dropped: crate::log::dropped(),
            ..Snapshot::default()
        }
    }
}

/// The snapshot in the OpenMetrics text format (ends with `# EOF`).
pub fn render(snapshot: Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("message_bus");
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

struct Family<'e, 'd> {
    encoder: &'e mut DescriptorEncoder<'d>,
}

impl Family<'_, '_> {
    fn counter(&mut self, name: &str, help: &str, rows: &[(Labels, u64)]) -> std::fmt::Result {
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in rows {
            ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn gauge(&mut self, name: &str, help: &str, rows: &[(Labels, i64)]) -> std::fmt::Result {
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in rows {
            ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        rows: &[(Labels, &HistogramValues)],
    ) -> std::fmt::Result {
        let mut metric = self.encoder.encode_descriptor(
            name,
            help,
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (labels, h) in rows {
            metric
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)?;
        }
        Ok(())
    }
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut f = Family {
            encoder: &mut encoder,
        };
        let by_backend = |value: fn(&BackendValues) -> u64| -> Vec<(Labels, u64)> {
            self.backends
                .iter()
                .map(|b| {
                    (
                        vec![("backend", b.kind.map_or("", BackendKind::name))],
                        value(b),
                    )
                })
                .collect()
        };
        f.counter(
            "published",
            "Messages published (stored) by this process.",
            &by_backend(|b| b.publishes),
        )?;
        f.counter(
            "publish_errors",
            "Publishes that raised an error.",
            &by_backend(|b| b.publish_errors),
        )?;
        f.counter(
            "publishes_queued",
            "Publishes kept in memory while the storage was down or read-only.",
            &by_backend(|b| b.publishes_queued),
        )?;
        f.gauge(
            "publish_queue_depth",
            "Publishes waiting in memory for the storage to come back.",
            &[(vec![], i64::try_from(self.queue_depth).unwrap_or(i64::MAX))],
        )?;
        f.counter(
            "publishes_dropped",
            "Queued publishes dropped because the in-memory queue was full.",
            &[(vec![], self.queue_dropped)],
        )?;
        let latency: Vec<(Labels, &HistogramValues)> = self
            .backends
            .iter()
            .map(|b| {
                (
                    vec![("backend", b.kind.map_or("", BackendKind::name))],
                    &b.publish_latency,
                )
            })
            .collect();
        f.histogram(
            "publish_duration",
            "Time a publish took, until the storage answered.",
            &latency,
        )?;
        f.counter(
            "backlog_reads",
            "Backlog reads (per channel or global).",
            &by_backend(|b| b.backlog_reads),
        )?;
        f.counter(
            "firehose_reconnects",
            "Times the firehose (pub/sub, LISTEN) connection was lost and listened again.",
            &by_backend(|b| b.firehose_reconnects),
        )?;
        f.counter(
            "firehose_gaps_caught_up",
            "Gaps in the firehose's ids filled from the backlog.",
            &by_backend(|b| b.gaps_caught_up),
        )?;

        let transports = |value: &dyn Fn(Transport) -> u64| -> Vec<(Labels, u64)> {
            Transport::ALL
                .iter()
                .map(|t| (vec![("transport", t.name())], value(*t)))
                .collect()
        };
        let web = &self.web;
        f.counter(
            "web_messages_delivered",
            "Live messages written or queued to web clients.",
            &transports(&|t| web.transport(t).delivered),
        )?;
        f.counter(
            "web_messages_unreadable",
            "Live messages whose envelope could not be read for web clients.",
            &[(vec![], web.unreadable)],
        )?;
        let waiting: Vec<(Labels, i64)> = Transport::ALL
            .iter()
            .map(|t| {
                let open = i64::try_from(web.transport(*t).open()).unwrap_or(i64::MAX);
                (vec![("transport", t.name())], open)
            })
            .collect();
        f.gauge(
            "web_connections_waiting",
            "Web client connections this process holds open.",
            &waiting,
        )?;
        f.counter(
            "web_connections_opened",
            "Web client connections taken over by the core.",
            &transports(&|t| web.transport(t).opened),
        )?;
        let closed: Vec<(Labels, u64)> = Transport::ALL
            .iter()
            .flat_map(|t| {
                CloseReason::ALL.iter().map(move |r| {
                    (
                        vec![("transport", t.name()), ("reason", r.name())],
                        web.transport(*t).closed(*r),
                    )
                })
            })
            .collect();
        f.counter(
            "web_connections_closed",
            "Web client connections closed, by reason.",
            &closed,
        )?;
        f.histogram(
            "web_delivery_duration",
            "From a message's arrival in this process to its write on a client's socket.",
            &[(vec![], &self.delivery_latency)],
        )?;

        f.counter(
            "gate_jobs",
            "Messages handed to Ruby for client message filters or a custom codec.",
            &[(vec![], self.gate_jobs)],
        )?;
        f.gauge(
            "gate_jobs_waiting",
            "Gate jobs Ruby has not answered yet.",
            &[(vec![], self.gate_waiting)],
        )?;
        f.counter(
            "gate_jobs_timed_out",
            "Gate jobs withheld from web clients because Ruby did not answer in time.",
            &[(vec![], self.gate_timed_out)],
        )?;
        f.counter(
            "subscriber_blocks",
            "Subscriber blocks run.",
            &[(vec![], self.subscriber_blocks)],
        )?;
        f.counter(
            "subscriber_errors",
            "Exceptions raised by subscriber blocks.",
            &[(vec![], self.subscriber_errors)],
        )?;
        f.counter(
            "log_lines_dropped",
            "Log lines dropped by the rate limit or a full log queue.",
            &[(vec![], self.log_lines_dropped)],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_text_with_labels_units_and_eof() {
        let mut snapshot = Snapshot::gather(Some(BackendKind::Postgres));
        snapshot.subscriber_blocks = 7;
        snapshot.queue_depth = 2;
        let text = render(snapshot).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("# TYPE message_bus_published counter\n"),
            "{text}"
        );
        assert!(
            text.contains("message_bus_published_total{backend=\"postgres\"} "),
            "{text}"
        );
        assert!(
            text.contains("message_bus_subscriber_blocks_total 7\n"),
            "{text}"
        );
        assert!(
            text.contains("message_bus_publish_queue_depth 2\n"),
            "{text}"
        );
        assert!(
            text.contains("# UNIT message_bus_publish_duration_seconds seconds\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "message_bus_publish_duration_seconds_bucket{le=\"+Inf\",backend=\"postgres\"} "
            ) || text.contains(
                "message_bus_publish_duration_seconds_bucket{backend=\"postgres\",le=\"+Inf\"} "
            ),
            "{text}"
        );
        assert!(text.contains(
            "message_bus_web_connections_closed_total{transport=\"streaming\",reason=\"slow_consumer\"} 0\n"
        ), "{text}");
        assert!(
            text.contains("message_bus_web_connections_waiting{transport=\"long_poll\"} 0\n"),
            "{text}"
        );
    }
}
