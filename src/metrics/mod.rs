//! This process's metrics: atomics bumped where things happen (publishes,
//! backlog reads, firehose reconnects, the Ruby gate, web-client writes),
//! read at scrape time into a [`Snapshot`] and rendered as OpenMetrics text
//! by the `prometheus-client` crate. Web-client counters live with their
//! fan-out (`fanout::WebClientCounters`); the Ruby side adds what only it
//! sees (subscriber blocks).
//!
//! Counters always count (diagnostics read the same atomics). Latency
//! histograms cost a clock read per observation, so they can be turned off
//! ([`set_latency_enabled`]).

pub mod histogram;
mod metered;
mod render;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

pub use histogram::{Histogram, HistogramValues};
pub use metered::Metered;
pub use render::{render, BackendValues, Snapshot};

/// The storage a backend counter belongs to (the `backend` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Memory,
    Redis,
    Postgres,
}

impl BackendKind {
    pub const ALL: [BackendKind; 3] = [
        BackendKind::Memory,
        BackendKind::Redis,
        BackendKind::Postgres,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Redis => "redis",
            BackendKind::Postgres => "postgres",
        }
    }
}

/// What the backends of one kind did in this process.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    pub publishes: AtomicU64,
    pub publish_errors: AtomicU64,
    /// Publishes kept in memory while the storage was down or read-only.
    pub publishes_queued: AtomicU64,
    pub backlog_reads: AtomicU64,
    pub firehose_reconnects: AtomicU64,
    /// Gaps in the firehose's ids filled from the backlog.
    pub gaps_caught_up: AtomicU64,
    pub publish_latency: Histogram,
}

impl BackendMetrics {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Messages handed to the Ruby gate (filters, custom codecs).
#[derive(Debug, Default)]
pub struct GateMetrics {
    pub jobs: AtomicU64,
    /// Jobs Ruby has not answered yet.
    pub waiting: AtomicI64,
    /// Jobs withheld because Ruby did not answer in time.
    pub timed_out: AtomicU64,
}

static LATENCY: AtomicBool = AtomicBool::new(true);

/// Whether latency histograms observe (a clock read per publish and per
/// socket write). Counters are unaffected.
pub fn latency_enabled() -> bool {
    LATENCY.load(Ordering::Relaxed)
}

pub fn set_latency_enabled(on: bool) {
    LATENCY.store(on, Ordering::Relaxed);
}

pub fn backend(kind: BackendKind) -> &'static BackendMetrics {
    static BACKENDS: std::sync::OnceLock<[BackendMetrics; 3]> = std::sync::OnceLock::new();
    let all = BACKENDS.get_or_init(Default::default);
    &all[kind as usize]
}

pub fn gate() -> &'static GateMetrics {
    static GATE: std::sync::OnceLock<GateMetrics> = std::sync::OnceLock::new();
    GATE.get_or_init(Default::default)
}
