//! Response metrics, appended to the cortex's `/metrics`: action latency per action name
//! (triggering kernel event to completed action, on the host's clock) and actions by status.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Prometheus `le` bounds, in seconds.
const BOUNDS_S: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Default)]
struct Histogram {
    /// Per bound, observations at or below it (not cumulative).
    buckets: [u64; BOUNDS_S.len()],
    count: u64,
    sum_s: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(slot) = BOUNDS_S.iter().position(|b| seconds <= *b) {
            self.buckets[slot] += 1;
        }
        self.count += 1;
        self.sum_s += seconds;
    }
}

#[derive(Default)]
struct Inner {
    latency: BTreeMap<String, Histogram>,
    statuses: BTreeMap<(String, &'static str), u64>,
}

/// Response counters and histograms.
#[derive(Default)]
pub struct RespondMetrics {
    inner: Mutex<Inner>,
}

impl RespondMetrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One completed action of `name` took `latency_ns` from its triggering event.
    pub fn observe_latency(&self, name: &str, latency_ns: u64) {
        self.lock()
            .latency
            .entry(name.to_owned())
            .or_default()
            .observe(latency_ns as f64 / 1e9);
    }

    /// An action of `name` reached `status`.
    pub fn count_status(&self, name: &str, status: &'static str) {
        *self
            .lock()
            .statuses
            .entry((name.to_owned(), status))
            .or_default() += 1;
    }

    /// Observations of `name`'s latency so far.
    pub fn latency_count(&self, name: &str) -> u64 {
        self.lock().latency.get(name).map_or(0, |h| h.count)
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        let name = "cortex_action_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Triggering kernel event to action completed on the host, per action.\n\
             # TYPE {name} histogram"
        );
        for (action, histogram) in &inner.latency {
            let mut cumulative = 0;
            for (bound, count) in BOUNDS_S.iter().zip(histogram.buckets) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{action=\"{action}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{action=\"{action}\",le=\"+Inf\"}} {count}\n\
                 {name}_sum{{action=\"{action}\"}} {sum}\n\
                 {name}_count{{action=\"{action}\"}} {count}",
                count = histogram.count,
                sum = histogram.sum_s,
            );
        }
        let name = "cortex_actions_total";
        let _ = writeln!(
            out,
            "# HELP {name} Response actions by action and status reached.\n# TYPE {name} counter"
        );
        for ((action, status), count) in &inner.statuses {
            let _ = writeln!(
                out,
                "{name}{{action=\"{action}\",status=\"{status}\"}} {count}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_render_per_action() {
        let metrics = RespondMetrics::default();
        metrics.observe_latency("kill", 2_000_000);
        metrics.observe_latency("kill", 30_000_000);
        metrics.count_status("kill", "done");
        let text = metrics.render();
        assert!(
            text.contains("cortex_action_latency_seconds_bucket{action=\"kill\",le=\"0.0025\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cortex_action_latency_seconds_bucket{action=\"kill\",le=\"0.05\"} 2")
        );
        assert!(text.contains("cortex_action_latency_seconds_count{action=\"kill\"} 2"));
        assert!(text.contains("cortex_actions_total{action=\"kill\",status=\"done\"} 1"));
        assert_eq!(metrics.latency_count("kill"), 2);
    }
}
