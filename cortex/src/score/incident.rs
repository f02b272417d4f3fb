//! What the scorer reports: incidents with their severity, confidence and evidence.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::config::SeverityThresholds;
use super::hit::{EntityKey, EventRef, Level, SourceKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// The severity of a posterior probability; `None` below the LOW threshold.
    pub fn from_confidence(confidence: f64, thresholds: &SeverityThresholds) -> Option<Self> {
        if confidence >= thresholds.critical {
            Some(Severity::Critical)
        } else if confidence >= thresholds.high {
            Some(Severity::High)
        } else if confidence >= thresholds.medium {
            Some(Severity::Medium)
        } else if confidence >= thresholds.low {
            Some(Severity::Low)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    Open,
    Acknowledged,
    Resolved,
}

impl IncidentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Open => "open",
            IncidentStatus::Acknowledged => "acknowledged",
            IncidentStatus::Resolved => "resolved",
        }
    }
}

/// One rule's (or the anomaly baseline's) share of an incident's posterior.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub rule_id: String,
    pub title: String,
    pub source: SourceKind,
    /// The Sigma level, absent for anomaly evidence.
    #[serde(default)]
    pub level: Option<Level>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Likelihood ratio applied (before decay).
    pub lr: f64,
    /// What this evidence adds to the posterior log-odds (natural log) after decay:
    /// `ln(lr) × 2^(-age / half_life)`.
    pub contribution: f64,
    /// How many hits of this rule were folded into this one piece of evidence.
    pub hits: u64,
    pub event_refs: Vec<EventRef>,
    pub first_seen_ns: u64,
    /// Time of the most recent hit.
    pub time_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    /// The host of the entity, or of the latest evidence for a remote-address entity.
    pub host: String,
    pub entity: EntityKey,
    pub title: String,
    pub severity: Severity,
    /// Posterior probability that the entity is under attack.
    pub confidence: f64,
    /// Prior probability before any evidence (from the host class).
    pub prior: f64,
    /// Posterior log-odds: `ln(prior / (1 - prior)) + Σ contribution`.
    pub log_odds: f64,
    /// ATT&CK technique ids from the evidence tags, e.g. `T1110.004`.
    pub attack_techniques: Vec<String>,
    pub status: IncidentStatus,
    pub opened_ns: u64,
    pub updated_ns: u64,
    /// Strongest contribution first.
    pub evidence: Vec<Evidence>,
}

/// The ATT&CK technique ids named by Sigma tags (`attack.t1110.004` → `T1110.004`).
pub fn attack_techniques<'a>(tags: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut techniques: Vec<String> = tags
        .into_iter()
        .filter_map(|tag| technique_id(tag))
        .collect();
    techniques.sort();
    techniques.dedup();
    techniques
}

fn technique_id(tag: &str) -> Option<String> {
    let id = tag
        .to_ascii_lowercase()
        .strip_prefix("attack.t")?
        .to_owned();
    let (number, sub) = match id.split_once('.') {
        Some((number, sub)) => (number.to_owned(), Some(sub.to_owned())),
        None => (id, None),
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(&number, 4) || sub.as_deref().is_some_and(|s| !digits(s, 3)) {
        return None;
    }
    Some(match sub {
        Some(sub) => format!("T{number}.{sub}"),
        None => format!("T{number}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_thresholds_are_inclusive_lower_bounds() {
        let t = SeverityThresholds::default();
        assert_eq!(Severity::from_confidence(0.09, &t), None);
        assert_eq!(Severity::from_confidence(0.10, &t), Some(Severity::Low));
        assert_eq!(Severity::from_confidence(0.5, &t), Some(Severity::Medium));
        assert_eq!(Severity::from_confidence(0.94, &t), Some(Severity::High));
        assert_eq!(
            Severity::from_confidence(0.95, &t),
            Some(Severity::Critical)
        );
    }

    #[test]
    fn technique_ids_come_from_attack_tags_only() {
        let tags: Vec<String> = [
            "attack.t1110.004",
            "attack.credential_access",
            "attack.T1048",
            "attack.t1110.004",
            "attack.t12",
            "cve.2021-4034",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(attack_techniques(&tags), vec!["T1048", "T1110.004"]);
    }
}
