//! One response action as the cortex tracks, persists and shows it.

use qsc_event::{Action, ActionReport};
use serde::{Deserialize, Serialize};

use super::config::Mode;

/// Where an action stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// Assisted mode: waiting for an operator's approval.
    Held,
    /// An operator denied it.
    Denied,
    /// Nobody approved it in time.
    Expired,
    /// Dry-run: audited, nothing sent.
    WouldRun,
    /// A cortex guardrail refused it; nothing sent.
    Blocked,
    /// The evidence lacks a parameter it needs; nothing sent.
    MissingParameter,
    /// `notify`: audited and published, no agent command.
    Notified,
    /// Sent to the agent, no report yet.
    Dispatched,
    /// The agent reports the host is in the requested state.
    Done,
    /// The agent's own guardrail refused it.
    Refused,
    /// It could not be delivered, timed out, or failed on the host.
    Failed,
}

impl ActionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Held => "held",
            ActionStatus::Denied => "denied",
            ActionStatus::Expired => "expired",
            ActionStatus::WouldRun => "would_run",
            ActionStatus::Blocked => "blocked",
            ActionStatus::MissingParameter => "missing_parameter",
            ActionStatus::Notified => "notified",
            ActionStatus::Dispatched => "dispatched",
            ActionStatus::Done => "done",
            ActionStatus::Refused => "refused",
            ActionStatus::Failed => "failed",
        }
    }

    /// Parses [`ActionStatus::as_str`] (API and CLI filters).
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(text.to_owned())).ok()
    }
}

/// An operator's decision on a held action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub operator: String,
    pub approve: bool,
    pub time_ns: u64,
    #[serde(default)]
    pub reason: String,
}

/// One action: what was asked, why, and how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub id: String,
    pub host: String,
    /// The incident that triggered it (none for an operator's release).
    #[serde(default)]
    pub incident_id: Option<String>,
    /// The playbook that asked for it (`operator` for an operator's release, `ttl` for a
    /// rollback).
    pub playbook: String,
    pub mode: Mode,
    /// `notify`, or an agent action's name.
    pub name: String,
    /// The agent command (none for `notify` and for a parameter the evidence lacked).
    #[serde(default)]
    pub action: Option<Action>,
    pub status: ActionStatus,
    /// Why it is in this status (refusal, missing parameter, failure).
    #[serde(default)]
    pub detail: String,
    pub requested_ns: u64,
    pub updated_ns: u64,
    /// When a held action expires.
    #[serde(default)]
    pub expires_ns: Option<u64>,
    /// Host `CLOCK_MONOTONIC` of the triggering event.
    #[serde(default)]
    pub trigger_mono_ns: Option<u64>,
    #[serde(default)]
    pub decisions: Vec<Decision>,
    #[serde(default)]
    pub report: Option<ActionReport>,
    /// `report.done_mono_ns − trigger_mono_ns`: triggering kernel event to completed action.
    #[serde(default)]
    pub latency_ns: Option<u64>,
    /// When the TTL of a done block or isolation runs out and the rollback is sent.
    #[serde(default)]
    pub rollback_due_ns: Option<u64>,
    /// The rollback action sent for this one.
    #[serde(default)]
    pub rolled_back_by: Option<String>,
    /// For a rollback: the action it undoes.
    #[serde(default)]
    pub rollback_of: Option<String>,
    /// When the action passed each stage of the cortex (for the latency breakdown).
    #[serde(default)]
    pub timeline: Timeline,
}

/// When an action passed each stage before it reached its agent. `*_mono_ns` are the cortex
/// host's `CLOCK_MONOTONIC`: they compare with the agent's report and the triggering event's
/// `mono_ns` only when the cortex and the agent share a host (a benchmark, a one-box install).
/// The agent's own stages are in the report (`received_mono_ns`, `done_mono_ns`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    /// The triggering event's `time_ns`: the agent's wall clock when it emitted the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_emitted_ns: Option<u64>,
    /// When the event's batch reached ingest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrived_mono_ns: Option<u64>,
    /// When the playbook asked for the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_mono_ns: Option<u64>,
    /// When the action was handed to the dispatcher for the agent's session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_mono_ns: Option<u64>,
}

impl ActionRecord {
    /// A new autonomous action on `host`, about to be dispatched, with no result yet; callers
    /// set what differs (incident, mode, command, status, detail, trigger, rollback link).
    pub fn fresh(id: String, host: String, playbook: String, name: String, now_ns: u64) -> Self {
        ActionRecord {
            id,
            host,
            incident_id: None,
            playbook,
            mode: Mode::Autonomous,
            name,
            action: None,
            status: ActionStatus::Dispatched,
            detail: String::new(),
            requested_ns: now_ns,
            updated_ns: now_ns,
            expires_ns: None,
            trigger_mono_ns: None,
            decisions: Vec::new(),
            report: None,
            latency_ns: None,
            rollback_due_ns: None,
            rolled_back_by: None,
            rollback_of: None,
            timeline: Timeline::default(),
        }
    }

    /// Whether nothing more will happen to it (a done action may still await its rollback).
    pub fn is_final(&self) -> bool {
        !matches!(self.status, ActionStatus::Held | ActionStatus::Dispatched)
            && self.rollback_due_ns.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_their_names() {
        for status in [
            ActionStatus::Held,
            ActionStatus::WouldRun,
            ActionStatus::Done,
        ] {
            assert_eq!(ActionStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(ActionStatus::parse("bogus"), None);
    }
}
