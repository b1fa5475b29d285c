//! A latency histogram made of atomics: observing is a bucket search and
//! three relaxed adds, with no lock, so it can sit on the fan-out's per-write
//! path. Rendering reads the buckets without stopping writers (a scrape may
//! see a count one observation ahead of a bucket, which Prometheus tolerates).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in seconds, of the buckets every latency histogram uses.
pub const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// A histogram's values at one moment. Buckets are per bucket, not
/// cumulative: the encoder sums them into Prometheus's `le` buckets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramValues {
    /// (upper bound in seconds, observations in this bucket only), +Inf last.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let index = BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BOUNDS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn values(&self) -> HistogramValues {
        let mut values = HistogramValues::default();
        values.add(self);
        values
    }
}

impl HistogramValues {
    /// Adds another histogram's observations (histograms kept per thread
    /// are rendered as one).
    pub fn add(&mut self, histogram: &Histogram) {
        if self.buckets.is_empty() {
            self.buckets = BOUNDS
                .iter()
                .copied()
                .chain(std::iter::once(f64::INFINITY))
                .map(|bound| (bound, 0))
                .collect();
        }
        let mut total = 0;
        for (slot, bucket) in self.buckets.iter_mut().zip(&histogram.buckets) {
            let n = bucket.load(Ordering::Relaxed);
            slot.1 += n;
            total += n;
        }
        // The count is the buckets' sum, so that it agrees with +Inf.
        self.count += total;
        self.sum_seconds += histogram.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_observation_lands_in_one_bucket_and_the_count_is_their_sum() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300)); // 0.0005
        h.observe(Duration::from_millis(1)); // 0.001 (bounds are inclusive)
        h.observe(Duration::from_millis(40)); // 0.05
        h.observe(Duration::from_secs(60)); // +Inf
        let v = h.values();
        assert_eq!(v.count, 4);
        assert_eq!(v.buckets.len(), BOUNDS.len() + 1);
        assert_eq!(v.buckets[0], (0.0005, 1));
        assert_eq!(v.buckets[1], (0.001, 1));
        assert_eq!(v.buckets[5], (0.025, 0));
        assert_eq!(v.buckets[6], (0.05, 1));
        assert_eq!(v.buckets[BOUNDS.len() - 1], (10.0, 0));
        assert_eq!(v.buckets[BOUNDS.len()], (f64::INFINITY, 1));
        assert!((v.sum_seconds - 60.0413).abs() < 1e-9, "{}", v.sum_seconds);
    }

    #[test]
    fn values_of_several_histograms_add_up() {
        let (a, b) = (Histogram::default(), Histogram::default());
        a.observe(Duration::from_millis(2));
        b.observe(Duration::from_millis(2));
        b.observe(Duration::from_millis(700));
        let mut v = a.values();
        v.add(&b);
        assert_eq!(v.count, 3);
        assert_eq!(v.buckets[2], (0.0025, 2));
        assert_eq!(v.buckets[10], (1.0, 1));
    }
}
