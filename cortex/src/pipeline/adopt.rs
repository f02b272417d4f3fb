//! Taking hosts over from another worker (scale-out, `[bus] kind = "nats"`): when a worker
//! gains a partition, the detection state of its hosts is rebuilt from the shared store before
//! their first batch, so that a host that moves keeps its correlation windows, its open
//! incidents and its node state, and no rule hit is counted twice.

use std::collections::HashMap;
use std::sync::Arc;

use qsc_event::{Source, now_ns};

use super::{Adoption, Pipeline};
use crate::score::IncidentStatus;
use crate::store::{EventQuery, IncidentQuery, MAX_QUERY_LIMIT, StoreError};

/// Detection progress per `(host, agent)`: the highest seq whose detection is over.
pub type DetectedMarks = HashMap<(String, Source), u64>;

/// Which hosts a worker takes over (those of one partition it gained).
pub type HostFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What an adoption rebuilt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdoptReport {
    /// Open or acknowledged incidents taken back into the fusion.
    pub incidents: usize,
    /// Node states taken back.
    pub node_states: usize,
    /// Events replayed through the rules to refill the correlation windows.
    pub replayed: usize,
}

impl Pipeline {
    /// Runs an adoption from the queue: the writes of earlier batches settle first, then the
    /// hosts' state is rebuilt; `done` is told either way (a failed rebuild is logged, and the
    /// hosts go on with what this worker knows).
    pub(super) fn take_over(&mut self, adoption: Adoption) {
        self.settle(true);
        match self.adopt(&*adoption.owns, &adoption.detected) {
            Ok(report) => tracing::info!(
                incidents = report.incidents,
                node_states = report.node_states,
                replayed = report.replayed,
                "took hosts over"
            ),
            Err(error) => self.error("taking hosts over", &error),
        }
        let _ = adoption.done.send(());
    }

    /// Rebuilds the state of the hosts `owns` accepts from the store:
    /// - their incidents that are not resolved go back into the fusion (same ids, same
    ///   evidence), and into the severity gauges;
    /// - their node states replace what this worker last knew;
    /// - their events of the last longest-correlation-timespan whose detection is over
    ///   (`detected`) run through the rules again with the hits dropped (their effect is in
    ///   the restored incidents), so every correlation window is whole again;
    /// - the analysed marks move up to `detected`, so only events after it are analysed.
    pub fn adopt(
        &mut self,
        owns: &dyn Fn(&str) -> bool,
        detected: &DetectedMarks,
    ) -> Result<AdoptReport, StoreError> {
        let mut report = AdoptReport::default();
        for incident in self.store.incidents(&IncidentQuery {
            limit: MAX_QUERY_LIMIT,
            ..IncidentQuery::default()
        })? {
            if incident.status == IncidentStatus::Resolved || !owns(&incident.host) {
                continue;
            }
            self.fusion.restore(&incident);
            let previous = self
                .severities
                .insert(incident.id.clone(), incident.severity);
            self.metrics.incident_severity(previous, incident.severity);
            report.incidents += 1;
        }
        {
            let mut nodes = self
                .nodes
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for record in self.store.node_states()? {
                if owns(&record.host) {
                    nodes.restore(record);
                    report.node_states += 1;
                }
            }
        }
        report.replayed = self.replay_windows(owns, detected)?;
        for ((host, agent), seq) in detected {
            if owns(host) {
                let mark = self.analysed.entry((host.clone(), *agent)).or_insert(0);
                *mark = (*mark).max(*seq);
            }
        }
        Ok(report)
    }

    /// Runs the detected events of the owned hosts within the longest correlation timespan
    /// through the rules, dropping the hits; returns how many.
    fn replay_windows(
        &mut self,
        owns: &dyn Fn(&str) -> bool,
        detected: &DetectedMarks,
    ) -> Result<usize, StoreError> {
        let window = self.engine.longest_timespan_ns();
        if window == 0 {
            return Ok(0);
        }
        let events = self.store.query_events(&EventQuery {
            since_ns: Some(now_ns().saturating_sub(window)),
            limit: MAX_QUERY_LIMIT,
            ..EventQuery::default()
        })?;
        let mut replayed = 0;
        for event in events {
            let done = detected
                .get(&(event.host_id.clone(), event.source))
                .is_some_and(|mark| event.seq <= *mark);
            if done && owns(&event.host_id) {
                self.engine.evaluate(&event);
                replayed += 1;
            }
        }
        Ok(replayed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::tests::{batch, hits, pipeline};

    /// Worker one detects three failed logins of web-01 and dies; worker two adopts web-01 and
    /// gets the next two: the five-failure burst correlation fires there as it would have on
    /// one worker, and the re-delivered first three are not analysed again.
    #[test]
    fn an_adopted_host_keeps_its_correlation_window() {
        let dir = tempfile::tempdir().unwrap();
        let (mut first, _) = pipeline(dir.path());
        let early = batch(Source::Alpha, 1..=3);
        first
            .store
            .append_events("web-01", Source::Alpha, &early.events)
            .unwrap();
        first.process(early);
        drop(first);

        let (mut second, metrics) = pipeline(dir.path());
        let detected = DetectedMarks::from([(("web-01".to_owned(), Source::Alpha), 3)]);
        let report = second
            .adopt(&|host: &str| host == "web-01", &detected)
            .unwrap();
        assert_eq!(report.replayed, 3);
        assert_eq!(hits(&metrics), 0, "replayed events report no hits");
        second.process(batch(Source::Alpha, 1..=4));
        assert_eq!(hits(&metrics), 0, "four distinct failures: no burst yet");
        second.process(batch(Source::Alpha, 5..=5));
        assert!(hits(&metrics) >= 1, "the fifth failure completes the burst");

        let (mut unadopted, metrics) = pipeline(dir.path());
        unadopted.process(batch(Source::Alpha, 4..=5));
        assert_eq!(hits(&metrics), 0, "without adoption the window is lost");
    }
}
