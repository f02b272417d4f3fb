//! The events the pipeline analysed last, kept by reference (the batches it already shares
//! with the store), so that the events an incident's evidence names but that did not trigger
//! it — a correlation's contributing events, e.g. the connect of a reverse shell whose exec
//! completed the match — can give an action its parameters (the remote address to block).
//!
//! Only the newest [`RECENT_EVENTS`] events are kept: a contributing event older than that is
//! not found, and an action needing a parameter only it carries is recorded as
//! `missing_parameter`, as before.

use std::collections::VecDeque;
use std::sync::Arc;

use qsc_event::Event;

use crate::score::Incident;

/// Events kept (whole batches; the oldest batch goes once more are held).
pub const RECENT_EVENTS: usize = 8192;

/// The newest analysed batches, oldest first.
#[derive(Default)]
pub struct RecentEvents {
    batches: VecDeque<(String, Arc<[Event]>)>,
    held: usize,
}

impl RecentEvents {
    /// Keeps the batch `host_id` delivered (its events in ascending seq order).
    pub fn push(&mut self, host_id: &str, events: Arc<[Event]>) {
        if events.is_empty() {
            return;
        }
        self.held += events.len();
        self.batches.push_back((host_id.to_owned(), events));
        while self.held > RECENT_EVENTS && self.batches.len() > 1 {
            if let Some((_, oldest)) = self.batches.pop_front() {
                self.held -= oldest.len();
            }
        }
    }

    /// The event of `host_id` with delivery seq `seq`, newest batch first (a seq names one
    /// event per agent: where two agents of a host used it, the newer batch's wins).
    fn find(&self, host_id: &str, seq: u64) -> Option<&Event> {
        self.batches
            .iter()
            .rev()
            .filter(|(host, _)| host == host_id)
            .find_map(|(_, events)| {
                events
                    .binary_search_by_key(&seq, |e| e.seq)
                    .ok()
                    .and_then(|index| events.get(index))
            })
    }

    /// The kept events the incident's evidence refers to, newest evidence first, each once.
    pub fn evidence_events(&self, incident: &Incident) -> Vec<Event> {
        let mut evidence: Vec<_> = incident.evidence.iter().collect();
        evidence.sort_by_key(|e| std::cmp::Reverse(e.time_ns));
        let mut found: Vec<Event> = Vec::new();
        for reference in evidence.iter().flat_map(|e| e.event_refs.iter().rev()) {
            let Some(event) = self.find(&reference.host_id, reference.seq) else {
                continue;
            };
            if !found
                .iter()
                .any(|f| f.host_id == event.host_id && f.seq == event.seq)
            {
                found.push(event.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use qsc_event::{EventKind, Heartbeat, Source};

    use super::*;
    use crate::score::{EntityKey, EventRef, Evidence, IncidentStatus, Severity, SourceKind};

    fn event(host: &str, seq: u64) -> Event {
        let heartbeat = Heartbeat {
            version: String::new(),
            uptime_s: seq,
            active_hooks: Vec::new(),
        };
        Event::new(host, Source::Alpha, seq, EventKind::Heartbeat(heartbeat))
    }

    fn batch(host: &str, seqs: std::ops::Range<u64>) -> Arc<[Event]> {
        seqs.map(|seq| event(host, seq)).collect()
    }

    fn incident_naming(refs: &[(&str, u64)]) -> Incident {
        Incident {
            id: "inc".into(),
            host: "web-01".into(),
            entity: EntityKey::Host {
                host: "web-01".into(),
            },
            title: String::new(),
            severity: Severity::High,
            confidence: 0.9,
            prior: 0.001,
            log_odds: 2.0,
            attack_techniques: Vec::new(),
            status: IncidentStatus::Open,
            opened_ns: 1,
            updated_ns: 1,
            evidence: vec![Evidence {
                rule_id: "corr".into(),
                title: String::new(),
                source: SourceKind::Network,
                level: None,
                tags: Vec::new(),
                lr: 10.0,
                contribution: 2.0,
                hits: 1,
                event_refs: refs
                    .iter()
                    .map(|(host, seq)| EventRef {
                        host_id: (*host).into(),
                        seq: *seq,
                    })
                    .collect(),
                first_seen_ns: 1,
                time_ns: 1,
            }],
        }
    }

    #[test]
    fn referenced_events_are_found_across_batches_and_hosts_newest_first() {
        let mut recent = RecentEvents::default();
        recent.push("web-01", batch("web-01", 1..4));
        recent.push("db-01", batch("db-01", 1..4));
        recent.push("web-01", batch("web-01", 4..9));
        let found = recent.evidence_events(&incident_naming(&[
            ("web-01", 2),
            ("db-01", 3),
            ("web-01", 7),
            ("web-01", 99),
        ]));
        let names: Vec<(&str, u64)> = found.iter().map(|e| (e.host_id.as_str(), e.seq)).collect();
        assert_eq!(names, [("web-01", 7), ("db-01", 3), ("web-01", 2)]);
    }

    #[test]
    fn the_oldest_batches_are_dropped_beyond_the_limit() {
        let mut recent = RecentEvents::default();
        recent.push("web-01", batch("web-01", 0..RECENT_EVENTS as u64));
        recent.push(
            "web-01",
            batch("web-01", RECENT_EVENTS as u64..RECENT_EVENTS as u64 + 2),
        );
        let found = recent.evidence_events(&incident_naming(&[
            ("web-01", 5),
            ("web-01", RECENT_EVENTS as u64 + 1),
        ]));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].seq, RECENT_EVENTS as u64 + 1);
    }
}
