//! A lock-free latency histogram with log-linear buckets: every power of two is split into eight
//! buckets, so any quantile it reports is within 12.5 % of the true value, from 1 ns to hours.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const SUB_BUCKETS: u64 = 8;
const BUCKETS: usize = 8 * 46;
/// Prometheus `le` bounds, in seconds.
const EXPORT_BOUNDS_S: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < SUB_BUCKETS {
        return ns as usize;
    }
    let exponent = 63 - u64::from(ns.leading_zeros());
    let sub = (ns >> (exponent - 3)) & (SUB_BUCKETS - 1);
    (((exponent - 2) * SUB_BUCKETS + sub) as usize).min(BUCKETS - 1)
}

/// Exclusive upper bound of a bucket, in nanoseconds.
fn bucket_upper_ns(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return index + 1;
    }
    let exponent = index / SUB_BUCKETS + 2;
    let sub = index % SUB_BUCKETS;
    (SUB_BUCKETS + 1 + sub) << (exponent - 3)
}

impl LatencyHistogram {
    pub fn observe(&self, latency: Duration) {
        self.observe_n(latency, 1);
    }

    /// Records `n` observations of the same latency (the events of one batch).
    pub fn observe_n(&self, latency: Duration, n: u64) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)].fetch_add(n, Ordering::Relaxed);
        self.count.fetch_add(n, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The `q` quantile (0..=1) as the upper bound of its bucket; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_nanos(bucket_upper_ns(index)));
            }
        }
        None
    }

    /// Prometheus histogram series `NAME_bucket`, `NAME_sum`, `NAME_count` (in seconds). A
    /// fine bucket is counted under the first `le` at or above its upper bound.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = vec![0u64; EXPORT_BOUNDS_S.len()];
        for (index, bucket) in self.buckets.iter().enumerate() {
            let count = bucket.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let upper_s = bucket_upper_ns(index) as f64 / 1e9;
            for (slot, bound) in cumulative.iter_mut().zip(EXPORT_BOUNDS_S) {
                if upper_s <= bound {
                    *slot += count;
                }
            }
        }
        for (bound, count) in EXPORT_BOUNDS_S.iter().zip(&cumulative) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum_s = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum_s}\n{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values_within_an_eighth() {
        for ns in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            100,
            1_000,
            123_456,
            5_000_000,
            1 << 40,
        ] {
            let index = bucket_of(ns);
            let upper = bucket_upper_ns(index);
            assert!(upper > ns, "{ns} -> bucket {index} upper {upper}");
            assert!(
                (upper - ns) as f64 <= (ns as f64 / 8.0).max(1.0),
                "{ns} -> {upper}"
            );
        }
    }

    #[test]
    fn quantiles_follow_the_distribution() {
        let histogram = LatencyHistogram::default();
        assert_eq!(histogram.quantile(0.5), None);
        for _ in 0..99 {
            histogram.observe(Duration::from_micros(100));
        }
        histogram.observe(Duration::from_millis(20));
        let p50 = histogram.quantile(0.5).unwrap();
        let p99 = histogram.quantile(0.99).unwrap();
        let max = histogram.quantile(1.0).unwrap();
        assert!(p50 >= Duration::from_micros(100) && p50 <= Duration::from_micros(113));
        assert_eq!(p50, p99);
        assert!(max >= Duration::from_millis(20) && max <= Duration::from_micros(22_500));
        let mut text = String::new();
        histogram.render(&mut text, "x", "help");
        assert!(text.contains("x_bucket{le=\"0.00025\"} 99"), "{text}");
        assert!(text.contains("x_bucket{le=\"0.025\"} 100"), "{text}");
        assert!(text.contains("x_count 100"));
    }
}
