//! The QSC event schema.
//!
//! Every component (guardian-alpha, guardian-beta, cortex) exchanges [`Event`]s. An event is an
//! envelope (`host_id`, `source`, `seq`, `time_ns`) around one [`EventKind`]. The JSON form is
//! flat: the envelope fields plus `"kind": "<snake_case name>"` plus the kind's own fields.

mod action;
mod kinds;
mod process;

pub use action::{Action, ActionOutcome, ActionReport, ActionRequest, mono_now_ns};
pub use kinds::*;
pub use process::{Ancestor, ProcessInfo};

use serde::{Deserialize, Serialize};

/// Version of the schema; bumped on any incompatible change.
pub const SCHEMA_VERSION: u16 = 1;

/// Which component produced an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Alpha,
    Beta,
    Cortex,
}

/// One event with its envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub schema: u16,
    pub host_id: String,
    pub source: Source,
    /// Per agent, gap-free, starting at 1.
    pub seq: u64,
    /// Wall clock, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// Kernel monotonic timestamp (`CLOCK_MONOTONIC`/`bpf_ktime_get_ns`) for events captured in
    /// the kernel; used to measure latency from kernel to decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mono_ns: Option<u64>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Errors from decoding or validating an event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("event JSON is malformed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported schema version {found} (this build speaks {SCHEMA_VERSION})")]
    SchemaVersion { found: u16 },
    #[error("field `{field}` is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Open Cybersecurity Schema Framework class of an event, for export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OcsfClass {
    FileSystemActivity = 1001,
    ProcessActivity = 1007,
    NetworkActivity = 4001,
    Authentication = 3002,
    DetectionFinding = 2004,
    DeviceInventoryInfo = 5001,
}

impl Event {
    pub fn new(host_id: impl Into<String>, source: Source, seq: u64, kind: EventKind) -> Self {
        Event {
            schema: SCHEMA_VERSION,
            host_id: host_id.into(),
            source,
            seq,
            time_ns: now_ns(),
            mono_ns: None,
            kind,
        }
    }

    /// Parses and validates one event from JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EventError> {
        let event: Event = serde_json::from_slice(bytes)?;
        event.validate()?;
        Ok(event)
    }

    pub fn to_json(&self) -> String {
        // Serialising this type cannot fail: every field is a plain value or string map.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Structural checks that hold for every event regardless of where it came from.
    pub fn validate(&self) -> Result<(), EventError> {
        if self.schema != SCHEMA_VERSION {
            return Err(EventError::SchemaVersion { found: self.schema });
        }
        if self.host_id.is_empty() || self.host_id.len() > MAX_HOST_ID_LEN {
            return Err(EventError::Invalid {
                field: "host_id",
                reason: format!("must be 1..={MAX_HOST_ID_LEN} bytes"),
            });
        }
        if !self
            .host_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(EventError::Invalid {
                field: "host_id",
                reason: "only ASCII letters, digits, '-', '_' and '.' are allowed".into(),
            });
        }
        if self.seq == 0 {
            return Err(EventError::Invalid {
                field: "seq",
                reason: "sequence numbers start at 1".into(),
            });
        }
        Ok(())
    }

    pub fn ocsf_class(&self) -> OcsfClass {
        self.kind.ocsf_class()
    }

    /// The process block, for the kinds that have one.
    pub fn process(&self) -> Option<&ProcessInfo> {
        self.kind.process()
    }
}

/// Longest host id accepted anywhere.
pub const MAX_HOST_ID_LEN: usize = 128;

/// Current wall clock in nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_event() -> Event {
        Event::new(
            "web-01",
            Source::Alpha,
            7,
            EventKind::ProcessExec(ProcessExec {
                process: ProcessInfo {
                    pid: 42,
                    comm: "bash".into(),
                    cmdline: vec!["bash".into(), "-c".into(), "id".into()],
                    ..Default::default()
                },
                filename: "/usr/bin/bash".into(),
                argv: vec!["bash".into(), "-c".into(), "id".into()],
            }),
        )
    }

    #[test]
    fn json_is_flat_and_round_trips() {
        let event = exec_event();
        let json = event.to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["kind"], "process_exec");
        assert_eq!(value["host_id"], "web-01");
        assert_eq!(value["process"]["pid"], 42);
        assert_eq!(Event::from_json(json.as_bytes()).unwrap(), event);
    }

    #[test]
    fn name_matches_serde_tag() {
        let event = exec_event();
        let value: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["kind"], event.kind.name());
    }

    #[test]
    fn validation_rejects_bad_envelopes() {
        let mut event = exec_event();
        event.host_id = "bad host".into();
        assert!(matches!(
            event.validate(),
            Err(EventError::Invalid {
                field: "host_id",
                ..
            })
        ));
        let mut event = exec_event();
        event.seq = 0;
        assert!(event.validate().is_err());
        let mut event = exec_event();
        event.schema = 99;
        assert!(matches!(
            event.validate(),
            Err(EventError::SchemaVersion { found: 99 })
        ));
        assert!(matches!(
            Event::from_json(b"{\"kind\":"),
            Err(EventError::Json(_))
        ));
    }

    #[test]
    fn ocsf_classes() {
        assert_eq!(exec_event().ocsf_class(), OcsfClass::ProcessActivity);
        assert_eq!(OcsfClass::NetworkActivity as u32, 4001);
    }
}
