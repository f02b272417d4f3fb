//! What an alert says, and the two JSON bodies it is rendered to.
//!
//! Native body (Standard Webhooks' recommended envelope):
//! `{"type": "qsc.incident" | "qsc.action_result", "timestamp": RFC 3339, "data": {...}}`.
//! TheHive body: the `POST /api/v1/alert` shape (`type`, `source`, `sourceRef`, `title`,
//! `description`, `severity` 1-4, `date` in ms, `tags`, `tlp`, `pap`, `observables`).

use std::time::{SystemTime, UNIX_EPOCH};

use qsc_event::{ActionOutcome, ActionReport, ActionRequest};
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::config::BodyFormat;
use crate::score::{EntityKey, Evidence, Incident, Severity};

/// The `source` of every TheHive alert the cortex sends.
pub const THEHIVE_SOURCE: &str = "qsc-cortex";

/// Something worth telling a SOAR about.
#[derive(Clone, Debug)]
pub enum Alert {
    /// An incident was opened or changed.
    Incident(Box<Incident>),
    /// A response action finished (done, refused or failed).
    ActionResult(ActionResultAlert),
}

/// The outcome of one response action on one host.
#[derive(Clone, Debug, Serialize)]
pub struct ActionResultAlert {
    /// The host the action ran on.
    pub host: String,
    /// The incident that triggered the action, when there was one.
    pub incident_id: Option<String>,
    /// What was asked.
    pub request: ActionRequest,
    /// What the agent answered.
    pub report: ActionReport,
}

/// The `data` of a native incident alert.
#[derive(Serialize)]
struct NativeIncident<'a> {
    incident_id: &'a str,
    host: &'a str,
    entity: &'a EntityKey,
    title: &'a str,
    severity: Severity,
    confidence: f64,
    rule_ids: Vec<&'a str>,
    attack_techniques: &'a [String],
    status: &'a str,
    opened_ns: u64,
    updated_ns: u64,
    evidence: &'a [Evidence],
}

impl Alert {
    /// The Standard Webhooks event type of this alert.
    pub fn event_type(&self) -> &'static str {
        match self {
            Alert::Incident(_) => "qsc.incident",
            Alert::ActionResult(_) => "qsc.action_result",
        }
    }

    /// The JSON body for a destination of the given format.
    pub fn render(
        &self,
        format: BodyFormat,
        now: SystemTime,
    ) -> Result<Vec<u8>, serde_json::Error> {
        let value = match format {
            BodyFormat::Native => self.native(now)?,
            BodyFormat::Thehive => self.thehive(now),
        };
        serde_json::to_vec(&value)
    }

    fn native(&self, now: SystemTime) -> Result<Value, serde_json::Error> {
        let data = match self {
            Alert::Incident(incident) => serde_json::to_value(NativeIncident {
                incident_id: &incident.id,
                host: &incident.host,
                entity: &incident.entity,
                title: &incident.title,
                severity: incident.severity,
                confidence: incident.confidence,
                rule_ids: incident
                    .evidence
                    .iter()
                    .map(|e| e.rule_id.as_str())
                    .collect(),
                attack_techniques: &incident.attack_techniques,
                status: incident.status.as_str(),
                opened_ns: incident.opened_ns,
                updated_ns: incident.updated_ns,
                evidence: &incident.evidence,
            })?,
            Alert::ActionResult(result) => serde_json::to_value(result)?,
        };
        Ok(json!({
            "type": self.event_type(),
            "timestamp": rfc3339(now),
            "data": data,
        }))
    }

    fn thehive(&self, now: SystemTime) -> Value {
        match self {
            Alert::Incident(incident) => thehive_incident(incident, now),
            Alert::ActionResult(result) => thehive_action(result, now),
        }
    }
}

/// TheHive severity: 1 low, 2 medium, 3 high, 4 critical.
pub fn thehive_severity(severity: Severity) -> u8 {
    match severity {
        Severity::Low => 1,
        Severity::Medium => 2,
        Severity::High => 3,
        Severity::Critical => 4,
    }
}

fn thehive_incident(incident: &Incident, now: SystemTime) -> Value {
    let mut tags = vec!["qsc".to_owned(), format!("host:{}", incident.host)];
    tags.extend(
        incident
            .attack_techniques
            .iter()
            .map(|t| format!("attack:{t}")),
    );
    tags.extend(
        incident
            .evidence
            .iter()
            .map(|e| format!("rule:{}", e.rule_id)),
    );
    tags.dedup();
    let mut observables = vec![observable("hostname", &incident.host, "host")];
    observables.extend(entity_observable(&incident.entity));
    json!({
        "type": "qsc-incident",
        "source": THEHIVE_SOURCE,
        // One TheHive alert per incident revision: TheHive refuses a repeated sourceRef.
        "sourceRef": format!("{}-{}", incident.id, incident.updated_ns),
        "title": format!("[{}] {}", incident.severity, incident.title),
        "description": incident_description(incident),
        "severity": thehive_severity(incident.severity),
        "date": unix_ms(now),
        "tags": tags,
        "tlp": 2,
        "pap": 2,
        "observables": observables,
    })
}

fn incident_description(incident: &Incident) -> String {
    let mut text = format!(
        "QSC incident `{}` on host `{}` (entity `{}`), confidence {:.3}.\n\n| rule | title | LR | hits |\n|---|---|---|---|\n",
        incident.id, incident.host, incident.entity, incident.confidence
    );
    for e in &incident.evidence {
        text.push_str(&format!(
            "| {} | {} | {:.1} | {} |\n",
            e.rule_id, e.title, e.lr, e.hits
        ));
    }
    text
}

fn entity_observable(entity: &EntityKey) -> Option<Value> {
    match entity {
        EntityKey::Host { .. } => None,
        EntityKey::RemoteAddress { ip } => {
            Some(observable("ip", &ip.to_string(), "remote-address"))
        }
        EntityKey::User { user, .. } => Some(observable("other", user, "user")),
        EntityKey::Lineage { root_guid, .. } => {
            Some(observable("other", root_guid, "process-guid"))
        }
    }
}

fn observable(data_type: &str, data: &str, tag: &str) -> Value {
    json!({ "dataType": data_type, "data": data, "tags": [tag], "ioc": false })
}

fn thehive_action(result: &ActionResultAlert, now: SystemTime) -> Value {
    let action = result.request.action.name();
    let outcome = outcome_name(result.report.outcome);
    let mut tags = vec![
        "qsc".to_owned(),
        format!("host:{}", result.host),
        format!("action:{action}"),
        format!("outcome:{outcome}"),
    ];
    if let Some(incident) = &result.incident_id {
        tags.push(format!("incident:{incident}"));
    }
    let mut observables = vec![observable("hostname", &result.host, "host")];
    observables.extend(action_observables(result));
    json!({
        "type": "qsc-action",
        "source": THEHIVE_SOURCE,
        "sourceRef": result.request.action_id,
        "title": format!("QSC action {action} on {}: {outcome}", result.host),
        "description": format!(
            "Action `{}` ({action}) on host `{}` ended `{outcome}`: {}",
            result.request.action_id, result.host, result.report.detail
        ),
        "severity": if result.report.outcome == ActionOutcome::Done { 1 } else { 3 },
        "date": unix_ms(now),
        "tags": tags,
        "tlp": 2,
        "pap": 2,
        "observables": observables,
    })
}

fn action_observables(result: &ActionResultAlert) -> Vec<Value> {
    use qsc_event::Action;
    let mut out = Vec::new();
    match &result.request.action {
        Action::BlockIp { addr, .. } | Action::UnblockIp { addr } => {
            out.push(observable("ip", &addr.to_string(), "blocked-address"));
        }
        Action::Quarantine { path } => out.push(observable("filename", path, "quarantined")),
        Action::RevokeCredential { user } | Action::RestoreCredential { user } => {
            out.push(observable("other", user, "user"));
        }
        _ => {}
    }
    if let Some(hash) = result.report.facts.get("sha256").and_then(Value::as_str) {
        out.push(observable("hash", hash, "sha256"));
    }
    out
}

fn outcome_name(outcome: ActionOutcome) -> &'static str {
    match outcome {
        ActionOutcome::Done => "done",
        ActionOutcome::Refused => "refused",
        ActionOutcome::Failed => "failed",
    }
}

fn unix_ms(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn rfc3339(now: SystemTime) -> String {
    OffsetDateTime::from(now)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::score::{IncidentStatus, SourceKind};
    use qsc_event::Action;

    pub(crate) fn incident() -> Incident {
        Incident {
            id: "inc-42".into(),
            host: "web-1".into(),
            entity: EntityKey::RemoteAddress {
                ip: "203.0.113.9".parse().unwrap(),
            },
            title: "SSH brute force then login".into(),
            severity: Severity::High,
            confidence: 0.97,
            prior: 0.01,
            log_odds: 3.5,
            attack_techniques: vec!["T1110.001".into()],
            status: IncidentStatus::Open,
            opened_ns: 1,
            updated_ns: 2,
            evidence: vec![Evidence {
                rule_id: "qsc-ssh-bruteforce".into(),
                title: "Many SSH failures".into(),
                source: SourceKind::Auth,
                level: None,
                tags: vec!["attack.t1110.001".into()],
                lr: 20.0,
                contribution: 3.0,
                hits: 12,
                event_refs: Vec::new(),
                first_seen_ns: 1,
                time_ns: 2,
            }],
        }
    }

    fn parse(alert: &Alert, format: BodyFormat) -> Value {
        serde_json::from_slice(&alert.render(format, UNIX_EPOCH).unwrap()).unwrap()
    }

    #[test]
    fn native_incident_carries_the_explanation() {
        let body = parse(&Alert::Incident(Box::new(incident())), BodyFormat::Native);
        assert_eq!(body["type"], "qsc.incident");
        assert_eq!(body["timestamp"], "1970-01-01T00:00:00Z");
        let data = &body["data"];
        assert_eq!(data["incident_id"], "inc-42");
        assert_eq!(data["host"], "web-1");
        assert_eq!(data["severity"], "HIGH");
        assert_eq!(data["confidence"], 0.97);
        assert_eq!(data["rule_ids"], json!(["qsc-ssh-bruteforce"]));
        assert_eq!(data["attack_techniques"], json!(["T1110.001"]));
        assert_eq!(data["evidence"][0]["lr"], 20.0);
    }

    #[test]
    fn thehive_incident_shape() {
        let body = parse(&Alert::Incident(Box::new(incident())), BodyFormat::Thehive);
        assert_eq!(body["type"], "qsc-incident");
        assert_eq!(body["source"], THEHIVE_SOURCE);
        assert_eq!(body["sourceRef"], "inc-42-2");
        assert_eq!(body["severity"], 3);
        assert_eq!(body["date"], 0);
        assert!(body["title"].as_str().unwrap().contains("SSH brute force"));
        assert!(
            body["description"]
                .as_str()
                .unwrap()
                .contains("qsc-ssh-bruteforce")
        );
        let tags = body["tags"].as_array().unwrap();
        assert!(tags.contains(&json!("attack:T1110.001")));
        assert_eq!(
            body["observables"],
            json!([
                {"dataType": "hostname", "data": "web-1", "tags": ["host"], "ioc": false},
                {"dataType": "ip", "data": "203.0.113.9", "tags": ["remote-address"], "ioc": false},
            ])
        );
        for severity in [Severity::Low, Severity::Critical] {
            let mut i = incident();
            i.severity = severity;
            let s = parse(&Alert::Incident(Box::new(i)), BodyFormat::Thehive)["severity"].clone();
            assert_eq!(s, json!(thehive_severity(severity)));
        }
        assert_eq!(thehive_severity(Severity::Low), 1);
        assert_eq!(thehive_severity(Severity::Critical), 4);
    }

    #[test]
    fn action_result_in_both_shapes() {
        let alert = Alert::ActionResult(ActionResultAlert {
            host: "web-1".into(),
            incident_id: Some("inc-42".into()),
            request: ActionRequest {
                action_id: "act-7".into(),
                action: Action::BlockIp {
                    addr: "203.0.113.9".parse().unwrap(),
                    ttl_s: 60,
                },
            },
            report: ActionReport {
                action_id: "act-7".into(),
                outcome: ActionOutcome::Done,
                detail: "blocked".into(),
                received_mono_ns: None,
                done_mono_ns: 5,
                facts: serde_json::Map::new(),
            },
        });
        let native = parse(&alert, BodyFormat::Native);
        assert_eq!(native["type"], "qsc.action_result");
        assert_eq!(native["data"]["request"]["action"], "block_ip");
        assert_eq!(native["data"]["report"]["outcome"], "done");
        let hive = parse(&alert, BodyFormat::Thehive);
        assert_eq!(hive["sourceRef"], "act-7");
        assert_eq!(hive["severity"], 1);
        assert_eq!(hive["observables"][1]["dataType"], "ip");
        assert!(
            hive["tags"]
                .as_array()
                .unwrap()
                .contains(&json!("incident:inc-42"))
        );
    }
}
