//! Window aggregation: guardian-alpha's `host_metrics` samples → one feature vector per host
//! and window.
//!
//! Windows are aligned to the Unix epoch (`start = ⌊time / window⌋ · window`), so every host's
//! windows line up. A sample belongs to the window containing its `time_ns` (the end of the
//! interval it measured). Counters in a sample are deltas over its `interval_ms`, so rates are
//! `Σ delta / Σ interval`: a window with a missing sample still yields comparable rates.
//!
//! | feature | meaning |
//! |---|---|
//! | `cpu_pct` | busy CPU, % of all CPUs, time-weighted mean over the window |
//! | `mem_used_ratio` | used / total memory, time-weighted mean (0..=1) |
//! | `net_rx_bytes_per_s` | bytes received per second |
//! | `net_tx_bytes_per_s` | bytes sent per second |
//! | `failed_logins_per_s` | failed logins per second |
//! | `process_count` | live processes, time-weighted mean |
//! | `new_processes_per_s` | processes started per second |
//! | `new_connections_per_s` | outbound connections per second |
//!
//! The isolation forest sees [`model_input`]: rates and counts go through `ln(1 + x)` so that a
//! tenfold spike is as visible on a quiet host as on a busy one; percentages and ratios stay
//! linear.

use qsc_event::HostMetrics;
use serde::{Deserialize, Serialize};

/// Number of features per window.
pub const FEATURE_COUNT: usize = 8;

/// Raw feature values of one window, indexed by [`Feature::index`].
pub type FeatureVector = [f64; FEATURE_COUNT];

/// Longest sample interval accepted; a longer one is a clock jump, not a measurement.
const MAX_INTERVAL_MS: u64 = 3_600_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    CpuPct,
    MemUsedRatio,
    NetRxBytesPerS,
    NetTxBytesPerS,
    FailedLoginsPerS,
    ProcessCount,
    NewProcessesPerS,
    NewConnectionsPerS,
}

impl Feature {
    /// All features, in feature-vector order.
    pub const ALL: [Feature; FEATURE_COUNT] = [
        Feature::CpuPct,
        Feature::MemUsedRatio,
        Feature::NetRxBytesPerS,
        Feature::NetTxBytesPerS,
        Feature::FailedLoginsPerS,
        Feature::ProcessCount,
        Feature::NewProcessesPerS,
        Feature::NewConnectionsPerS,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Feature::CpuPct => "cpu_pct",
            Feature::MemUsedRatio => "mem_used_ratio",
            Feature::NetRxBytesPerS => "net_rx_bytes_per_s",
            Feature::NetTxBytesPerS => "net_tx_bytes_per_s",
            Feature::FailedLoginsPerS => "failed_logins_per_s",
            Feature::ProcessCount => "process_count",
            Feature::NewProcessesPerS => "new_processes_per_s",
            Feature::NewConnectionsPerS => "new_connections_per_s",
        }
    }

    /// Whether the forest sees `ln(1 + value)` rather than the value.
    fn log_scaled(self) -> bool {
        !matches!(self, Feature::CpuPct | Feature::MemUsedRatio)
    }
}

/// The names of all features in vector order, as stored in a model.
pub fn feature_names() -> Vec<String> {
    Feature::ALL.iter().map(|f| f.name().to_owned()).collect()
}

/// The vector the isolation forest is trained on and scores: see the module documentation.
pub fn model_input(raw: &FeatureVector) -> FeatureVector {
    let mut input = *raw;
    for feature in Feature::ALL {
        if feature.log_scaled() {
            input[feature.index()] = raw[feature.index()].max(0.0).ln_1p();
        }
    }
    input
}

/// One host's aggregated window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Start of the window, ns since the Unix epoch (inclusive).
    pub start_ns: u64,
    /// End of the window (exclusive).
    pub end_ns: u64,
    /// How many samples it aggregates.
    pub samples: u32,
    pub features: FeatureVector,
}

impl Window {
    /// Whether the window overlaps the closed time span `[start_ns, end_ns]`.
    pub fn overlaps(&self, start_ns: u64, end_ns: u64) -> bool {
        self.start_ns <= end_ns && start_ns < self.end_ns
    }
}

/// Running sums of one window.
#[derive(Clone, Debug)]
struct Accumulator {
    start_ns: u64,
    samples: u32,
    covered_s: f64,
    cpu_pct_s: f64,
    mem_ratio_s: f64,
    mem_covered_s: f64,
    rx_bytes: f64,
    tx_bytes: f64,
    failed_logins: f64,
    process_count_s: f64,
    new_processes: f64,
    new_connections: f64,
}

impl Accumulator {
    fn new(start_ns: u64) -> Self {
        Accumulator {
            start_ns,
            samples: 0,
            covered_s: 0.0,
            cpu_pct_s: 0.0,
            mem_ratio_s: 0.0,
            mem_covered_s: 0.0,
            rx_bytes: 0.0,
            tx_bytes: 0.0,
            failed_logins: 0.0,
            process_count_s: 0.0,
            new_processes: 0.0,
            new_connections: 0.0,
        }
    }

    fn add(&mut self, m: &HostMetrics) {
        let seconds = m.interval_ms as f64 / 1000.0;
        self.samples += 1;
        self.covered_s += seconds;
        self.cpu_pct_s += m.cpu_pct.clamp(0.0, 100.0) * seconds;
        if m.mem_total_bytes > 0 {
            let ratio = (m.mem_used_bytes as f64 / m.mem_total_bytes as f64).clamp(0.0, 1.0);
            self.mem_ratio_s += ratio * seconds;
            self.mem_covered_s += seconds;
        }
        self.rx_bytes += m.net_rx_bytes as f64;
        self.tx_bytes += m.net_tx_bytes as f64;
        self.failed_logins += m.failed_logins as f64;
        self.process_count_s += m.process_count as f64 * seconds;
        self.new_processes += m.new_processes as f64;
        self.new_connections += m.new_connections as f64;
    }

    fn finish(&self, window_ns: u64) -> Window {
        let per_s = |total: f64| total / self.covered_s;
        let mut features = [0.0; FEATURE_COUNT];
        features[Feature::CpuPct.index()] = per_s(self.cpu_pct_s);
        features[Feature::MemUsedRatio.index()] = if self.mem_covered_s > 0.0 {
            self.mem_ratio_s / self.mem_covered_s
        } else {
            0.0
        };
        features[Feature::NetRxBytesPerS.index()] = per_s(self.rx_bytes);
        features[Feature::NetTxBytesPerS.index()] = per_s(self.tx_bytes);
        features[Feature::FailedLoginsPerS.index()] = per_s(self.failed_logins);
        features[Feature::ProcessCount.index()] = per_s(self.process_count_s);
        features[Feature::NewProcessesPerS.index()] = per_s(self.new_processes);
        features[Feature::NewConnectionsPerS.index()] = per_s(self.new_connections);
        Window {
            start_ns: self.start_ns,
            end_ns: self.start_ns.saturating_add(window_ns),
            samples: self.samples,
            features,
        }
    }
}

/// Samples the aggregator could not use, for the operator to see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AggregatorStats {
    /// Samples for a window that was already closed.
    pub late_samples: u64,
    /// Samples with a zero or implausibly long interval, or a non-finite CPU value.
    pub invalid_samples: u64,
    /// Samples stamped further in the future than the clock skew allowed.
    pub future_samples: u64,
}

/// Builds one host's windows from its samples as they arrive (in time order).
#[derive(Clone, Debug)]
pub struct WindowAggregator {
    window_ns: u64,
    current: Option<Accumulator>,
    stats: AggregatorStats,
}

impl WindowAggregator {
    /// `window_s` must be at least 1 (the configuration validates it).
    pub fn new(window_s: u64) -> Self {
        WindowAggregator {
            window_ns: window_s.max(1).saturating_mul(1_000_000_000),
            current: None,
            stats: AggregatorStats::default(),
        }
    }

    /// Adds a sample taken at `time_ns`; returns the previous window when this sample opens a
    /// later one.
    pub fn push(&mut self, time_ns: u64, metrics: &HostMetrics) -> Option<Window> {
        if !is_valid(metrics) {
            self.stats.invalid_samples += 1;
            return None;
        }
        let start_ns = time_ns - time_ns % self.window_ns;
        let closed = match &self.current {
            Some(current) if start_ns < current.start_ns => {
                self.stats.late_samples += 1;
                return None;
            }
            Some(current) if start_ns == current.start_ns => None,
            Some(current) => Some(current.finish(self.window_ns)),
            None => None,
        };
        let accumulator = match &mut self.current {
            Some(current) if current.start_ns == start_ns => current,
            slot => slot.insert(Accumulator::new(start_ns)),
        };
        accumulator.add(metrics);
        closed
    }

    /// Counts a sample the caller refused for being stamped in the future.
    pub fn reject_future(&mut self) {
        self.stats.future_samples += 1;
    }

    /// Closes the open window, if any (end of a batch).
    pub fn flush(&mut self) -> Option<Window> {
        self.current
            .take()
            .map(|current| current.finish(self.window_ns))
    }

    pub fn stats(&self) -> AggregatorStats {
        self.stats
    }
}

fn is_valid(metrics: &HostMetrics) -> bool {
    (1..=MAX_INTERVAL_MS).contains(&metrics.interval_ms) && metrics.cpu_pct.is_finite()
}

/// Aggregates a batch of `(time_ns, sample)` pairs in any order into windows, oldest first.
pub fn windows_from_samples(
    samples: &mut [(u64, HostMetrics)],
    window_s: u64,
) -> (Vec<Window>, AggregatorStats) {
    samples.sort_by_key(|(time_ns, _)| *time_ns);
    let mut aggregator = WindowAggregator::new(window_s);
    let mut windows: Vec<Window> = samples
        .iter()
        .filter_map(|(time_ns, metrics)| aggregator.push(*time_ns, metrics))
        .collect();
    windows.extend(aggregator.flush());
    (windows, aggregator.stats())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn sample(interval_ms: u64, cpu_pct: f64, tx: u64, logins: u64) -> HostMetrics {
        HostMetrics {
            interval_ms,
            cpu_pct,
            mem_used_bytes: 4,
            mem_total_bytes: 16,
            net_rx_bytes: 1000,
            net_tx_bytes: tx,
            process_count: 100,
            failed_logins: logins,
            new_processes: 5,
            new_connections: 2,
        }
    }

    #[test]
    fn rates_are_deltas_over_covered_time() {
        let mut samples = vec![
            (100 * SECOND + 2 * SECOND, sample(5000, 10.0, 5000, 1)),
            (100 * SECOND + 7 * SECOND, sample(5000, 30.0, 15000, 0)),
        ];
        let (windows, stats) = windows_from_samples(&mut samples, 10);
        assert_eq!(stats, AggregatorStats::default());
        assert_eq!(windows.len(), 1);
        let w = &windows[0];
        assert_eq!(
            (w.start_ns, w.end_ns, w.samples),
            (100 * SECOND, 110 * SECOND, 2)
        );
        assert_eq!(w.features[Feature::CpuPct.index()], 20.0);
        assert_eq!(w.features[Feature::MemUsedRatio.index()], 0.25);
        assert_eq!(w.features[Feature::NetRxBytesPerS.index()], 200.0);
        assert_eq!(w.features[Feature::NetTxBytesPerS.index()], 2000.0);
        assert_eq!(w.features[Feature::FailedLoginsPerS.index()], 0.1);
        assert_eq!(w.features[Feature::ProcessCount.index()], 100.0);
        assert_eq!(w.features[Feature::NewProcessesPerS.index()], 1.0);
        assert_eq!(w.features[Feature::NewConnectionsPerS.index()], 0.4);
    }

    #[test]
    fn a_later_sample_closes_the_window_and_late_ones_are_counted() {
        let mut aggregator = WindowAggregator::new(10);
        assert!(
            aggregator
                .push(15 * SECOND, &sample(10_000, 5.0, 0, 0))
                .is_none()
        );
        let closed = aggregator.push(25 * SECOND, &sample(10_000, 7.0, 0, 0));
        assert_eq!(closed.map(|w| w.start_ns), Some(10 * SECOND));
        assert!(
            aggregator
                .push(12 * SECOND, &sample(10_000, 9.0, 0, 0))
                .is_none()
        );
        assert_eq!(aggregator.stats().late_samples, 1);
        let last = aggregator.flush();
        assert_eq!(last.map(|w| w.features[Feature::CpuPct.index()]), Some(7.0));
    }

    #[test]
    fn hostile_samples_are_rejected_or_clamped() {
        let mut aggregator = WindowAggregator::new(10);
        assert!(aggregator.push(SECOND, &sample(0, 5.0, 0, 0)).is_none());
        assert!(
            aggregator
                .push(SECOND, &sample(10_000, f64::NAN, 0, 0))
                .is_none()
        );
        assert!(
            aggregator
                .push(SECOND, &sample(MAX_INTERVAL_MS + 1, 5.0, 0, 0))
                .is_none()
        );
        assert_eq!(aggregator.stats().invalid_samples, 3);
        let mut wild = sample(10_000, 250.0, u64::MAX, u64::MAX);
        wild.mem_used_bytes = 100;
        aggregator.push(SECOND, &wild);
        let window = aggregator.flush().map(|w| w.features);
        let features = window.unwrap_or([f64::NAN; FEATURE_COUNT]);
        assert_eq!(features[Feature::CpuPct.index()], 100.0);
        assert_eq!(features[Feature::MemUsedRatio.index()], 1.0);
        assert!(model_input(&features).iter().all(|v| v.is_finite()));
    }

    #[test]
    fn model_input_log_scales_rates_only() {
        let mut raw = [0.0; FEATURE_COUNT];
        raw[Feature::CpuPct.index()] = 50.0;
        raw[Feature::NetTxBytesPerS.index()] = std::f64::consts::E - 1.0;
        let input = model_input(&raw);
        assert_eq!(input[Feature::CpuPct.index()], 50.0);
        assert!((input[Feature::NetTxBytesPerS.index()] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn feature_names_follow_vector_order() {
        let names = feature_names();
        assert_eq!(names.len(), FEATURE_COUNT);
        for feature in Feature::ALL {
            assert_eq!(names[feature.index()], feature.name());
        }
    }
}
