//! The QSC event schema.
//!
//! Every component (guardian-alpha, guardian-beta, cortex) exchanges [`Event`]s. An event is an
//! envelope (`host_id`, `source`, `seq`, `time_ns`) around one [`EventKind`]. The JSON form is
//! flat: the envelope fields plus `"kind": "<snake_case name>"` plus the kind's own fields.

mod action;
mod flat;
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

    /// Parses and validates one event from JSON. Accepts exactly what the derived
    /// `Deserialize` accepts, in one pass over the text when the `"kind"` tag precedes the
    /// kind's fields (as every QSC writer puts it); see `flat.rs`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EventError> {
        let event = flat::decode(bytes)?;
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
                    cmdline: vec!["bash".into(), "-c".into(), "id".into()].into(),
                    ..Default::default()
                },
                filename: "/usr/bin/bash".into(),
                argv: vec!["bash".into(), "-c".into(), "id".into()],
                folder_world_writable: None,
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
    fn process_start_time_is_optional_and_round_trips() {
        let mut event = exec_event();
        let old = event.to_json();
        assert!(
            !old.contains("start_time_ticks"),
            "absent when unknown: {old}"
        );
        assert_eq!(Event::from_json(old.as_bytes()).unwrap(), event);
        if let EventKind::ProcessExec(exec) = &mut event.kind {
            exec.process.start_time_ticks = Some(123_456);
        }
        let json = event.to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["process"]["start_time_ticks"], 123_456);
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

    /// A few kinds with optional, defaulted and nested fields, and tags that need escaping.
    fn sample_events() -> Vec<String> {
        let mut with_mono = exec_event();
        with_mono.mono_ns = Some(123);
        let login = Event::new(
            "web-01",
            Source::Alpha,
            8,
            EventKind::AuthFailure(AuthAttempt {
                user: "root".into(),
                remote_ip: Some("10.0.0.9".parse().unwrap()),
                service: "sshd".into(),
                detail: None,
            }),
        );
        let mut texts: Vec<String> = [exec_event(), with_mono, login]
            .iter()
            .map(Event::to_json)
            .collect();
        // Field order is free, and an escaped tag is still the same tag.
        texts.push(
            r#"{"extra":true,"kind":"heartbeat","version":"1","uptime_s":5,"schema":1,"host_id":"h","source":"alpha","seq":2,"time_ns":4,"mono_ns":null}"#
                .into(),
        );
        texts.push(
            r#"{"kind":"auth\u005fsuccess","user":"u","service":"s","schema":1,"host_id":"h","source":"beta","seq":3,"time_ns":9,"extra":[1,{"a":2}]}"#
                .into(),
        );
        texts
    }

    #[test]
    fn fast_decoder_agrees_with_the_derived_one() {
        for text in sample_events() {
            let derived: Event = serde_json::from_str(&text).unwrap();
            assert_eq!(
                Event::from_json(text.as_bytes()).unwrap(),
                derived,
                "{text}"
            );
        }
    }

    #[test]
    fn fast_decoder_rejects_what_the_derived_one_rejects() {
        let bad = [
            r#"{"schema":1,"host_id":"h","source":"alpha","seq":1,"time_ns":1,"kind":"no_such_kind"}"#,
            r#"{"schema":1,"host_id":"h","source":"alpha","seq":1,"time_ns":1,"kind":"process_exec"}"#,
            r#"{"schema":1,"host_id":"h","source":"alpha","seq":1,"time_ns":1}"#,
            r#"{"schema":1,"host_id":"h","source":"alpha","seq":1,"kind":"heartbeat","version":"1","uptime_s":1}"#,
            r#"{"schema":1,"host_id":"h","source":"alpha","seq":1,"time_ns":1,"kind":"heartbeat","version":7,"uptime_s":1}"#,
            r#"{"schema":1,"host_id":"h","source":"alpha","seq":1,"time_ns":1,"kind":"heartbeat","version":"1","uptime_s":1,"seq":2}"#,
            r#"{"schema":1,"host_id":"h","source":"alpha","seq":1,"time_ns":1,"kind":"heartbeat","version":"1","uptime_s":1,"uptime_s":1}"#,
            r#"{"schema":1,"host_id":"h","source":"alpha","seq":1,"time_ns":1,"mono_ns":null,"kind":"heartbeat","version":"1","uptime_s":1,"mono_ns":3}"#,
            r#"{"schema":1,"host_id":"h","source":"alpha","seq":1,"time_ns":1,"kind":"heartbeat","version":"1","uptime_s":1} x"#,
            r#"{"schema":70000,"host_id":"h","source":"alpha","seq":1,"time_ns":1,"kind":"heartbeat","version":"1","uptime_s":1}"#,
        ];
        for text in bad {
            assert!(serde_json::from_str::<Event>(text).is_err(), "{text}");
            assert!(
                matches!(Event::from_json(text.as_bytes()), Err(EventError::Json(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn every_fast_tag_is_a_serde_tag() {
        assert_eq!(EventKind::TAGGED_DECODERS.len(), 42);
        for tag in EventKind::TAGGED_DECODERS {
            let text = format!(r#"{{"kind":"{tag}"}}"#);
            if let Err(error) = serde_json::from_str::<EventKind>(&text) {
                assert!(
                    !error.to_string().contains("unknown variant"),
                    "{tag}: {error}"
                );
            }
        }
    }

    #[test]
    fn ocsf_classes() {
        assert_eq!(exec_event().ocsf_class(), OcsfClass::ProcessActivity);
        assert_eq!(OcsfClass::NetworkActivity as u32, 4001);
    }
}
