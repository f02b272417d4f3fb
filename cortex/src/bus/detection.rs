//! A worker's detection: the newly stored events of each bus batch go to the same pipeline
//! queue ingest feeds on a single-node cortex (detect → score → decide → respond), and the
//! worker waits until what they caused is durable before it records them as detected; a
//! partition taken over has its hosts' state rebuilt by the pipeline first.

use std::time::{Duration, Instant};

use qsc_event::now_ns;

use super::BusBatch;
use super::nats::Detection;
use crate::pipeline::adopt::{DetectedMarks, HostFilter};
use crate::pipeline::{Batch, PipelineSender};

/// Hands bus batches to the pipeline worker through its bounded queue.
pub struct PipelineDetection(pub PipelineSender);

impl Detection for PipelineDetection {
    fn detect(&self, batch: BusBatch) {
        let arrived = arrival(batch.received_ns);
        let host_id = batch.host_id.clone();
        let durable = self.0.submit_and_wait(Batch::new(
            &batch.host_id,
            batch.agent,
            batch.events.into(),
            arrived,
        ));
        if !durable {
            tracing::error!(%host_id, "a bus batch was not analysed to the end");
        }
    }

    fn adopt(&self, partition: u32, owns: HostFilter, detected: DetectedMarks) {
        if !self.0.adopt(owns, detected) {
            tracing::error!(
                partition,
                "the detection pipeline stopped before taking hosts over"
            );
        }
    }
}

/// The gateway's wall-clock receipt as an `Instant` of this process (replicas on one machine
/// share the clock; across machines it is as good as their clock sync). Unknown or in the
/// future: now.
fn arrival(received_ns: u64) -> Instant {
    let now = Instant::now();
    let age = now_ns()
        .checked_sub(received_ns)
        .filter(|_| received_ns > 0);
    age.and_then(|ns| now.checked_sub(Duration::from_nanos(ns)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_latency_starts_at_the_gateway() {
        let received = now_ns() - 250_000_000;
        let age = arrival(received).elapsed();
        assert!(age >= Duration::from_millis(250), "{age:?}");
        assert!(arrival(0).elapsed() < Duration::from_millis(250));
        assert!(arrival(now_ns() + 10_000_000_000).elapsed() < Duration::from_millis(250));
    }
}
