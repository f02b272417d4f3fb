//! OCSF-shaped JSON (schema 1.1): stored events under their activity class, incidents as
//! Detection Findings (class 2004) with the scorer's evidence kept in full.

use qsc_event::Event;
use serde_json::{Value, json};

use crate::score::{Incident, IncidentStatus, Severity};

const OCSF_VERSION: &str = "1.1.0";

fn metadata(uid: String) -> Value {
    json!({
        "version": OCSF_VERSION,
        "uid": uid,
        "product": {"name": "QSC cortex", "vendor_name": "QSC", "version": env!("CARGO_PKG_VERSION")},
    })
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

/// One stored event: OCSF envelope fields, with the QSC event itself under `unmapped`.
pub fn event(event: &Event) -> Value {
    let class_uid = event.ocsf_class() as u32;
    json!({
        "class_uid": class_uid,
        "category_uid": class_uid / 1000,
        "time": ms(event.time_ns),
        "severity_id": 1,
        "metadata": metadata(format!("{}:{}", event.host_id, event.seq)),
        "device": {"hostname": event.host_id},
        "unmapped": event,
    })
}

/// OCSF `severity_id`: 2 Low, 3 Medium, 4 High, 5 Critical.
fn severity_id(severity: Severity) -> u8 {
    match severity {
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    }
}

/// OCSF finding `status_id`: 1 New, 2 In Progress, 4 Resolved.
fn status_id(status: IncidentStatus) -> u8 {
    match status {
        IncidentStatus::Open => 1,
        IncidentStatus::Acknowledged => 2,
        IncidentStatus::Resolved => 4,
    }
}

/// An incident as an OCSF Detection Finding (2004).
pub fn detection_finding(incident: &Incident) -> Value {
    let activity_id = if incident.opened_ns == incident.updated_ns {
        1
    } else {
        2
    };
    let evidences: Vec<Value> = incident
        .evidence
        .iter()
        .map(|e| {
            json!({
                "data": {
                    "rule_id": e.rule_id,
                    "title": e.title,
                    "source": e.source,
                    "level": e.level,
                    "likelihood_ratio": e.lr,
                    "contribution": e.contribution,
                    "hits": e.hits,
                    "first_seen_time": ms(e.first_seen_ns),
                    "last_seen_time": ms(e.time_ns),
                    "events": e.event_refs,
                }
            })
        })
        .collect();
    let attacks: Vec<Value> = incident
        .attack_techniques
        .iter()
        .map(|t| json!({"technique": {"uid": t}, "version": "v14"}))
        .collect();
    json!({
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "activity_id": activity_id,
        "type_uid": 200400 + activity_id,
        "time": ms(incident.updated_ns),
        "severity_id": severity_id(incident.severity),
        "severity": incident.severity.as_str(),
        "status_id": status_id(incident.status),
        "confidence_score": (incident.confidence * 100.0).round() as u8,
        "metadata": metadata(incident.id.clone()),
        "device": {"hostname": incident.host},
        "finding_info": {
            "uid": incident.id,
            "title": incident.title,
            "created_time": ms(incident.opened_ns),
            "modified_time": ms(incident.updated_ns),
            "attacks": attacks,
        },
        "evidences": evidences,
        "unmapped": {
            "entity": incident.entity,
            "prior": incident.prior,
            "posterior": incident.confidence,
            "log_odds": incident.log_odds,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::{EntityKey, EventRef, Evidence, Level, SourceKind};
    use qsc_event::{EventKind, Heartbeat, Source};

    #[test]
    fn a_critical_incident_is_a_detection_finding_with_its_evidence() {
        let incident = Incident {
            id: "inc-1".into(),
            host: "web-01".into(),
            entity: EntityKey::Host {
                host: "web-01".into(),
            },
            title: "credential stuffing + exfiltration".into(),
            severity: Severity::Critical,
            confidence: 0.996,
            prior: 0.001,
            log_odds: 5.5,
            attack_techniques: vec!["T1048".into()],
            status: IncidentStatus::Open,
            opened_ns: 1_000_000_000,
            updated_ns: 2_000_000_000,
            evidence: vec![Evidence {
                rule_id: "qsc-large-outbound-transfer".into(),
                title: "Large Outbound Transfer".into(),
                source: SourceKind::Network,
                level: Some(Level::Medium),
                tags: vec!["attack.t1048".into()],
                lr: 8.0,
                contribution: 2.07,
                hits: 1,
                event_refs: vec![EventRef {
                    host_id: "web-01".into(),
                    seq: 42,
                }],
                first_seen_ns: 2_000_000_000,
                time_ns: 2_000_000_000,
            }],
        };
        let finding = detection_finding(&incident);
        assert_eq!(finding["class_uid"], 2004);
        assert_eq!(finding["type_uid"], 200402);
        assert_eq!(finding["severity_id"], 5);
        assert_eq!(finding["confidence_score"], 100);
        assert_eq!(
            finding["finding_info"]["attacks"][0]["technique"]["uid"],
            "T1048"
        );
        assert_eq!(finding["evidences"][0]["data"]["likelihood_ratio"], 8.0);
        assert_eq!(finding["evidences"][0]["data"]["events"][0]["seq"], 42);
        assert_eq!(finding["unmapped"]["prior"], 0.001);
    }

    #[test]
    fn events_keep_their_class_and_body() {
        let heartbeat = Event::new(
            "web-01",
            Source::Alpha,
            3,
            EventKind::Heartbeat(Heartbeat {
                version: "1".into(),
                uptime_s: 5,
                active_hooks: Vec::new(),
            }),
        );
        let value = event(&heartbeat);
        assert_eq!(value["class_uid"], 5001);
        assert_eq!(value["category_uid"], 5);
        assert_eq!(value["unmapped"]["kind"], "heartbeat");
        assert_eq!(value["metadata"]["uid"], "web-01:3");
    }
}
