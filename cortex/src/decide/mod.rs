//! Node state per host: NOMINAL → WARNING → CRITICAL → ISOLATED.
//!
//! | input | from | to |
//! |---|---|---|
//! | incident of severity LOW | any | unchanged (the incident is still recorded) |
//! | incident of severity MEDIUM or HIGH | NOMINAL | WARNING |
//! | incident of severity CRITICAL | NOMINAL, WARNING | CRITICAL |
//! | host isolated (by the respond stage or an operator) | NOMINAL, WARNING, CRITICAL | ISOLATED |
//! | stand-down (incidents resolved; any actor) | WARNING, CRITICAL | NOMINAL |
//! | release with an operator's approval | ISOLATED | NOMINAL |
//! | the TTL a playbook gave the isolation ran out, and the agent confirmed the release | ISOLATED | NOMINAL |
//!
//! Signals never lower a state (a MEDIUM incident on a CRITICAL host leaves it CRITICAL), and
//! nothing but a release naming an operator, or the end of a TTL the isolating playbook set in
//! advance, leaves ISOLATED. (The respond stage asks for a second operator when
//! `[respond] two_person_release` is on.) Every transition is appended to the
//! audit chain *before* it takes effect: if the audit write fails, the state does not change.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{AuditEntry, AuditError, AuditKind, AuditSink};
use crate::score::{Incident, Severity};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    Nominal,
    Warning,
    Critical,
    Isolated,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Nominal => "NOMINAL",
            NodeState::Warning => "WARNING",
            NodeState::Critical => "CRITICAL",
            NodeState::Isolated => "ISOLATED",
        }
    }

    /// The state an incident of `severity` asks for, if it raises this one.
    fn escalated_by(self, severity: Severity) -> Option<NodeState> {
        let wanted = match severity {
            Severity::Low => return None,
            Severity::Medium | Severity::High => NodeState::Warning,
            Severity::Critical => NodeState::Critical,
        };
        (self != NodeState::Isolated && wanted > self).then_some(wanted)
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The current state of one host, as persisted by the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStateRecord {
    pub host: String,
    pub state: NodeState,
    pub since_ns: u64,
    pub reason: String,
    pub actor: String,
    #[serde(default)]
    pub incident_id: Option<String>,
    /// The audit record of the transition into this state (0 for the implicit initial NOMINAL).
    pub audit_seq: u64,
}

/// An operator's approval to release an isolated host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub operator: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("host {host} is {state}; {action} needs it to be {required}")]
    NotAllowed {
        host: String,
        state: NodeState,
        action: &'static str,
        required: &'static str,
    },
    #[error("an approval must name the operator (1..=128 printable characters)")]
    InvalidOperator,
    #[error("the transition could not be audited, so it was not applied: {0}")]
    Audit(#[from] AuditError),
}

/// Longest operator name accepted in an approval.
const MAX_OPERATOR_LEN: usize = 128;

/// The node state machine for every host, writing each transition to the audit chain.
pub struct NodeStates {
    audit: Arc<dyn AuditSink>,
    hosts: HashMap<String, NodeStateRecord>,
}

impl NodeStates {
    /// Starts from the persisted states (hosts not listed are NOMINAL).
    pub fn new(audit: Arc<dyn AuditSink>, persisted: Vec<NodeStateRecord>) -> Self {
        let hosts = persisted.into_iter().map(|r| (r.host.clone(), r)).collect();
        NodeStates { audit, hosts }
    }

    /// The audit chain the transitions go to, for other decisions the pipeline records.
    pub fn audit(&self) -> Arc<dyn AuditSink> {
        self.audit.clone()
    }

    /// Takes a host's state as stored by the worker that owned it before (scale-out), without
    /// a transition: that worker audited it already.
    pub fn restore(&mut self, record: NodeStateRecord) {
        self.hosts.insert(record.host.clone(), record);
    }

    pub fn state(&self, host: &str) -> NodeState {
        self.hosts.get(host).map_or(NodeState::Nominal, |r| r.state)
    }

    pub fn record(&self, host: &str) -> Option<&NodeStateRecord> {
        self.hosts.get(host)
    }

    /// Applies an incident; returns the new record when the host's state rose.
    pub fn on_incident(
        &mut self,
        incident: &Incident,
    ) -> Result<Option<NodeStateRecord>, DecideError> {
        let current = self.state(&incident.host);
        let Some(next) = current.escalated_by(incident.severity) else {
            return Ok(None);
        };
        let reason = format!(
            "{} incident {} \"{}\" (confidence {:.3})",
            incident.severity, incident.id, incident.title, incident.confidence
        );
        self.transition(
            &incident.host,
            next,
            "cortex",
            reason,
            Some(incident.id.clone()),
        )
        .map(Some)
    }

    /// Records that the host was isolated by `actor` (the respond stage, or an operator).
    pub fn on_isolated(
        &mut self,
        host: &str,
        actor: &str,
        reason: &str,
    ) -> Result<NodeStateRecord, DecideError> {
        if self.state(host) == NodeState::Isolated {
            return Err(self.not_allowed(host, "isolation", "not ISOLATED"));
        }
        let incident_id = self.hosts.get(host).and_then(|r| r.incident_id.clone());
        self.transition(
            host,
            NodeState::Isolated,
            actor,
            reason.to_owned(),
            incident_id,
        )
    }

    /// Returns a WARNING or CRITICAL host to NOMINAL (its incidents were resolved or decayed).
    pub fn stand_down(
        &mut self,
        host: &str,
        actor: &str,
        reason: &str,
    ) -> Result<NodeStateRecord, DecideError> {
        match self.state(host) {
            NodeState::Warning | NodeState::Critical => {
                self.transition(host, NodeState::Nominal, actor, reason.to_owned(), None)
            }
            _ => Err(self.not_allowed(host, "stand-down", "WARNING or CRITICAL")),
        }
    }

    /// Releases an ISOLATED host back to NOMINAL; only with an approval naming an operator.
    pub fn release(
        &mut self,
        host: &str,
        approval: &Approval,
    ) -> Result<NodeStateRecord, DecideError> {
        let operator = approval.operator.trim();
        if operator.is_empty()
            || operator.len() > MAX_OPERATOR_LEN
            || operator.chars().any(char::is_control)
        {
            return Err(DecideError::InvalidOperator);
        }
        if self.state(host) != NodeState::Isolated {
            return Err(self.not_allowed(host, "release", "ISOLATED"));
        }
        let reason = format!("released with approval: {}", approval.reason);
        self.transition(
            host,
            NodeState::Nominal,
            &format!("operator:{operator}"),
            reason,
            None,
        )
    }

    /// Returns an ISOLATED host to NOMINAL because the TTL its isolating playbook set ran out
    /// (the respond stage calls this once the agent confirmed the release).
    pub fn ttl_release(
        &mut self,
        host: &str,
        reason: &str,
    ) -> Result<NodeStateRecord, DecideError> {
        if self.state(host) != NodeState::Isolated {
            return Err(self.not_allowed(host, "TTL release", "ISOLATED"));
        }
        self.transition(
            host,
            NodeState::Nominal,
            "cortex:ttl",
            reason.to_owned(),
            None,
        )
    }

    fn not_allowed(&self, host: &str, action: &'static str, required: &'static str) -> DecideError {
        DecideError::NotAllowed {
            host: host.to_owned(),
            state: self.state(host),
            action,
            required,
        }
    }

    fn transition(
        &mut self,
        host: &str,
        to: NodeState,
        actor: &str,
        reason: String,
        incident_id: Option<String>,
    ) -> Result<NodeStateRecord, DecideError> {
        let from = self.state(host);
        let audit = self.audit.record(AuditEntry {
            kind: AuditKind::NodeTransition,
            actor: actor.to_owned(),
            body: json!({
                "host": host,
                "from": from,
                "to": to,
                "reason": reason,
                "incident_id": incident_id,
            }),
        })?;
        tracing::info!(host, %from, %to, actor, %reason, "node state transition");
        let record = NodeStateRecord {
            host: host.to_owned(),
            state: to,
            since_ns: audit.time_ns,
            reason,
            actor: actor.to_owned(),
            incident_id,
            audit_seq: audit.seq,
        };
        self.hosts.insert(host.to_owned(), record.clone());
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditLog;
    use crate::score::{EntityKey, IncidentStatus};
    use zeroize::Zeroizing;

    fn incident(host: &str, severity: Severity) -> Incident {
        Incident {
            id: format!("inc-{severity}"),
            host: host.into(),
            entity: EntityKey::Host { host: host.into() },
            title: "test".into(),
            severity,
            confidence: 0.5,
            prior: 0.001,
            log_odds: 0.0,
            attack_techniques: Vec::new(),
            status: IncidentStatus::Open,
            opened_ns: 1,
            updated_ns: 1,
            evidence: Vec::new(),
        }
    }

    fn machine() -> (tempfile::TempDir, Arc<AuditLog>, NodeStates) {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(
            AuditLog::open_with_key(&dir.path().join("audit.db"), &Zeroizing::new([1u8; 32]), 8)
                .unwrap(),
        );
        let states = NodeStates::new(log.clone(), Vec::new());
        (dir, log, states)
    }

    #[test]
    fn severities_escalate_and_never_lower() {
        let (_dir, _log, mut states) = machine();
        assert_eq!(states.state("web-01"), NodeState::Nominal);
        assert!(
            states
                .on_incident(&incident("web-01", Severity::Low))
                .unwrap()
                .is_none()
        );
        let warning = states
            .on_incident(&incident("web-01", Severity::High))
            .unwrap()
            .unwrap();
        assert_eq!(warning.state, NodeState::Warning);
        assert!(
            states
                .on_incident(&incident("web-01", Severity::Medium))
                .unwrap()
                .is_none()
        );
        let critical = states
            .on_incident(&incident("web-01", Severity::Critical))
            .unwrap()
            .unwrap();
        assert_eq!(critical.state, NodeState::Critical);
        assert_eq!(critical.incident_id.as_deref(), Some("inc-CRITICAL"));
        assert!(
            states
                .on_incident(&incident("web-01", Severity::High))
                .unwrap()
                .is_none()
        );
        assert_eq!(states.state("web-02"), NodeState::Nominal);
    }

    #[test]
    fn isolated_leaves_only_with_an_operator_approval() {
        let (_dir, log, mut states) = machine();
        states
            .on_incident(&incident("web-01", Severity::Critical))
            .unwrap();
        states
            .on_isolated("web-01", "cortex", "playbook isolate-host")
            .unwrap();
        assert_eq!(states.state("web-01"), NodeState::Isolated);
        assert!(
            states
                .on_incident(&incident("web-01", Severity::Critical))
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            states.stand_down("web-01", "cortex", "decayed"),
            Err(DecideError::NotAllowed {
                state: NodeState::Isolated,
                ..
            })
        ));
        assert!(states.on_isolated("web-01", "cortex", "again").is_err());
        let nameless = Approval {
            operator: "  ".into(),
            reason: "fixed".into(),
        };
        assert!(matches!(
            states.release("web-01", &nameless),
            Err(DecideError::InvalidOperator)
        ));
        let approval = Approval {
            operator: "alice".into(),
            reason: "reimaged".into(),
        };
        let released = states.release("web-01", &approval).unwrap();
        assert_eq!(released.state, NodeState::Nominal);
        assert_eq!(released.actor, "operator:alice");
        assert!(matches!(
            states.release("web-01", &approval),
            Err(DecideError::NotAllowed { .. })
        ));

        // Every transition is in the chain, in order, and the chain verifies.
        let records = log.records(1, 10).unwrap();
        let moves: Vec<(String, String)> = records
            .iter()
            .map(|r| {
                let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                (
                    body["from"].as_str().unwrap().to_owned(),
                    body["to"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let expected = [
            ("NOMINAL", "CRITICAL"),
            ("CRITICAL", "ISOLATED"),
            ("ISOLATED", "NOMINAL"),
        ];
        assert_eq!(moves.len(), expected.len());
        for ((from, to), (want_from, want_to)) in moves.iter().zip(expected) {
            assert_eq!((from.as_str(), to.as_str()), (want_from, want_to));
        }
        assert_eq!(records[2].actor, "operator:alice");
        assert_eq!(released.audit_seq, records[2].seq);
        assert!(log.verify().unwrap().is_intact());
    }

    #[test]
    fn an_isolation_ttl_releases_only_an_isolated_host() {
        let (_dir, _log, mut states) = machine();
        assert!(states.ttl_release("web-01", "ttl").is_err());
        states.on_isolated("web-01", "cortex", "playbook").unwrap();
        let record = states
            .ttl_release("web-01", "isolation TTL of 60 s ran out")
            .unwrap();
        assert_eq!(record.state, NodeState::Nominal);
        assert_eq!(record.actor, "cortex:ttl");
    }

    #[test]
    fn stand_down_returns_a_threatened_host_to_nominal() {
        let (_dir, _log, mut states) = machine();
        assert!(states.stand_down("web-01", "cortex", "nothing").is_err());
        states
            .on_incident(&incident("web-01", Severity::Medium))
            .unwrap();
        let record = states
            .stand_down("web-01", "operator:bob", "false positive")
            .unwrap();
        assert_eq!(record.state, NodeState::Nominal);
    }

    struct FailingAudit;

    impl AuditSink for FailingAudit {
        fn record(&self, _entry: AuditEntry) -> Result<crate::audit::AuditRecord, AuditError> {
            Err(AuditError::ZeroCheckpointInterval)
        }
    }

    #[test]
    fn a_transition_that_cannot_be_audited_does_not_happen() {
        let mut states = NodeStates::new(Arc::new(FailingAudit), Vec::new());
        assert!(matches!(
            states.on_incident(&incident("web-01", Severity::Critical)),
            Err(DecideError::Audit(_))
        ));
        assert_eq!(states.state("web-01"), NodeState::Nominal);
    }

    #[test]
    fn persisted_states_are_restored() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(
            AuditLog::open_with_key(&dir.path().join("a.db"), &Zeroizing::new([1u8; 32]), 8)
                .unwrap(),
        );
        let persisted = NodeStateRecord {
            host: "db-01".into(),
            state: NodeState::Isolated,
            since_ns: 5,
            reason: "isolated".into(),
            actor: "cortex".into(),
            incident_id: None,
            audit_seq: 3,
        };
        let states = NodeStates::new(log, vec![persisted.clone()]);
        assert_eq!(states.state("db-01"), NodeState::Isolated);
        assert_eq!(states.record("db-01"), Some(&persisted));
    }
}
