//! Service counters, gauges and the decision-latency histogram, rendered as Prometheus text.
//!
//! Everything is a lock-free atomic so the ingest sessions and the pipeline worker update them
//! without contention; `/metrics` reads a consistent-enough snapshot.

mod histogram;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

pub use histogram::LatencyHistogram;

use crate::score::Severity;

/// Why an event was rejected at ingest; each reason is a separate Prometheus series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// Larger than `ingest.max_event_bytes`.
    Oversize,
    /// Not a JSON event of the schema.
    Malformed,
    /// A schema version this build does not speak.
    Schema,
    /// Names a host other than the one bound to the agent's key.
    HostMismatch,
    /// Claims a source other than the agent's enrolled kind.
    SourceMismatch,
    /// Older than `ingest.max_past_s`.
    TooOld,
    /// Further ahead than `ingest.max_future_s`.
    InFuture,
}

impl RejectReason {
    pub const ALL: [RejectReason; 7] = [
        RejectReason::Oversize,
        RejectReason::Malformed,
        RejectReason::Schema,
        RejectReason::HostMismatch,
        RejectReason::SourceMismatch,
        RejectReason::TooOld,
        RejectReason::InFuture,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Oversize => "oversize",
            RejectReason::Malformed => "malformed",
            RejectReason::Schema => "schema_version",
            RejectReason::HostMismatch => "host_mismatch",
            RejectReason::SourceMismatch => "source_mismatch",
            RejectReason::TooOld => "too_old",
            RejectReason::InFuture => "in_future",
        }
    }

    /// A host or source that does not match the agent's key is an attempt to speak for someone
    /// else, not a bug.
    pub fn is_spoofing(self) -> bool {
        matches!(
            self,
            RejectReason::HostMismatch | RejectReason::SourceMismatch
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

const SEVERITIES: [Severity; 4] = [
    Severity::Low,
    Severity::Medium,
    Severity::High,
    Severity::Critical,
];

fn severity_index(severity: Severity) -> usize {
    severity as usize
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub events_received: AtomicU64,
    rejected: [AtomicU64; 7],
    pub events_stored: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub events_lost_by_agents: AtomicU64,
    pub handshakes_refused: AtomicU64,
    pub sessions_active: AtomicU64,
    pub store_errors: AtomicU64,
    pub queue_depth_events: AtomicU64,
    pub queue_dropped_events: AtomicU64,
    pub events_analysed: AtomicU64,
    pub rule_hits: AtomicU64,
    pub pipeline_errors: AtomicU64,
    pub node_transitions: AtomicU64,
    incidents_open: [AtomicU64; 4],
    pub store_latency: LatencyHistogram,
    pub decision_latency: LatencyHistogram,
    pub analysis_latency: LatencyHistogram,
}

impl Metrics {
    pub fn reject(&self, reason: RejectReason) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason.index()].load(Ordering::Relaxed)
    }

    /// Moves one incident between severities (`None`: it did not exist before).
    pub fn incident_severity(&self, from: Option<Severity>, to: Severity) {
        if from == Some(to) {
            return;
        }
        if let Some(from) = from {
            self.incidents_open[severity_index(from)].fetch_sub(1, Ordering::Relaxed);
        }
        self.incidents_open[severity_index(to)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn incidents_open(&self, severity: Severity) -> u64 {
        self.incidents_open[severity_index(severity)].load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            &mut out,
            "cortex_events_received_total",
            "Events received from agents, before validation.",
            get(&self.events_received),
        );
        header(
            &mut out,
            "cortex_events_rejected_total",
            "counter",
            "Events rejected at ingest, by reason.",
        );
        for reason in RejectReason::ALL {
            let _ = writeln!(
                out,
                "cortex_events_rejected_total{{reason=\"{}\"}} {}",
                reason.label(),
                self.rejected(reason)
            );
        }
        counter(
            &mut out,
            "cortex_events_stored_total",
            "Events durably stored (rejections are stored as ingest findings).",
            get(&self.events_stored),
        );
        counter(
            &mut out,
            "cortex_events_duplicate_total",
            "Re-delivered events that were already stored.",
            get(&self.events_duplicate),
        );
        counter(
            &mut out,
            "cortex_events_lost_by_agents_total",
            "Events agents reported dropped before delivery (outbox overflow).",
            get(&self.events_lost_by_agents),
        );
        counter(
            &mut out,
            "cortex_handshakes_refused_total",
            "Agent connections refused (unknown or revoked key, bad handshake).",
            get(&self.handshakes_refused),
        );
        gauge(
            &mut out,
            "cortex_agent_sessions",
            "Agent sessions currently connected.",
            get(&self.sessions_active),
        );
        counter(
            &mut out,
            "cortex_store_errors_total",
            "Batches the store failed to write (not acknowledged; the agent resends).",
            get(&self.store_errors),
        );
        gauge(
            &mut out,
            "cortex_pipeline_queue_depth_events",
            "Stored events waiting for detection.",
            get(&self.queue_depth_events),
        );
        counter(
            &mut out,
            "cortex_pipeline_dropped_events_total",
            "Stored events not analysed because the detection queue stayed full.",
            get(&self.queue_dropped_events),
        );
        counter(
            &mut out,
            "cortex_events_analysed_total",
            "Events run through detection, scoring and decision.",
            get(&self.events_analysed),
        );
        counter(
            &mut out,
            "cortex_rule_hits_total",
            "Sigma rule and correlation matches.",
            get(&self.rule_hits),
        );
        counter(
            &mut out,
            "cortex_pipeline_errors_total",
            "Scoring, decision or persistence errors in the pipeline (logged).",
            get(&self.pipeline_errors),
        );
        counter(
            &mut out,
            "cortex_node_transitions_total",
            "Audited node state transitions.",
            get(&self.node_transitions),
        );
        header(
            &mut out,
            "cortex_incidents",
            "gauge",
            "Incidents known to this cortex, by current severity.",
        );
        for severity in SEVERITIES {
            let _ = writeln!(
                out,
                "cortex_incidents{{severity=\"{}\"}} {}",
                severity.as_str(),
                self.incidents_open(severity)
            );
        }
        self.store_latency.render(
            &mut out,
            "cortex_store_batch_seconds",
            "Time to validate and durably store one agent batch.",
        );
        self.decision_latency.render(
            &mut out,
            "cortex_decision_latency_seconds",
            "Time from an event's arrival at ingest to its decision (after detect, score, decide).",
        );
        self.analysis_latency.render(
            &mut out,
            "cortex_analysis_latency_seconds",
            "Time from an event being validated and queued to its decision (queue wait + analysis).",
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rejects_are_counted_per_reason_and_rendered() {
        let metrics = Metrics::default();
        metrics.reject(RejectReason::HostMismatch);
        metrics.reject(RejectReason::HostMismatch);
        metrics.reject(RejectReason::Malformed);
        let text = metrics.render();
        assert!(text.contains("cortex_events_rejected_total{reason=\"host_mismatch\"} 2"));
        assert!(text.contains("cortex_events_rejected_total{reason=\"malformed\"} 1"));
        assert!(text.contains("cortex_events_rejected_total{reason=\"oversize\"} 0"));
        assert!(RejectReason::SourceMismatch.is_spoofing());
        assert!(!RejectReason::TooOld.is_spoofing());
    }

    #[test]
    fn incidents_move_between_severities() {
        let metrics = Metrics::default();
        metrics.incident_severity(None, Severity::Low);
        metrics.incident_severity(Some(Severity::Low), Severity::Critical);
        metrics.incident_severity(Some(Severity::Critical), Severity::Critical);
        assert_eq!(metrics.incidents_open(Severity::Low), 0);
        assert_eq!(metrics.incidents_open(Severity::Critical), 1);
        metrics.decision_latency.observe(Duration::from_micros(300));
        let text = metrics.render();
        assert!(text.contains("cortex_incidents{severity=\"CRITICAL\"} 1"));
        assert!(text.contains("cortex_decision_latency_seconds_count 1"));
    }
}
