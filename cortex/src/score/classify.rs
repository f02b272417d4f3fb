//! Names an incident from its mix of evidence.
//!
//! Each piece of evidence is reduced to [`Signal`]s, from its ATT&CK tags (technique ids and
//! tactic names, as Sigma writes them) and its source. The [`PATTERNS`] table is read top to
//! bottom and the first pattern whose signals are all present names the incident, so the most
//! specific patterns come first. Without any match the title is "suspicious activity: " and the
//! title of the strongest evidence.
//!
//! | signal | from |
//! |---|---|
//! | brute force | T1110 and its sub-techniques (T1110.004 is credential stuffing) |
//! | valid-account login | T1078 and its sub-techniques (a login that succeeded, e.g. from a new address) |
//! | exfiltration | T1020, T1030, T1041, T1048, T1567, or the `attack.exfiltration` tactic |
//! | backup tampering | T1490 (inhibit system recovery) |
//! | integrity tampering | T1565 (data manipulation), or integrity evidence without a backup tag |
//! | privilege escalation | T1068, T1548, or the `attack.privilege_escalation` tactic |
//! | defense evasion | T1562, T1070, or the `attack.defense_evasion` tactic |
//! | certificate problem | certificate evidence |
//! | anomaly | anomaly-baseline evidence |

use std::collections::BTreeSet;

use super::hit::SourceKind;
use super::incident::{Evidence, attack_techniques};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Signal {
    BruteForce,
    ValidAccountLogin,
    Exfiltration,
    BackupTampering,
    IntegrityTampering,
    PrivilegeEscalation,
    DefenseEvasion,
    CertificateProblem,
    Anomaly,
}

pub struct Pattern {
    pub title: &'static str,
    pub requires: &'static [Signal],
}

use Signal::*;

pub const PATTERNS: &[Pattern] = &[
    Pattern {
        title: "credential stuffing + exfiltration",
        requires: &[BruteForce, ValidAccountLogin, Exfiltration],
    },
    Pattern {
        title: "account takeover + exfiltration",
        requires: &[ValidAccountLogin, Exfiltration],
    },
    Pattern {
        title: "credential stuffing + account takeover",
        requires: &[BruteForce, ValidAccountLogin],
    },
    Pattern {
        title: "ransomware-style impact: backups and files tampered",
        requires: &[BackupTampering, IntegrityTampering],
    },
    Pattern {
        title: "privilege escalation + defense evasion",
        requires: &[PrivilegeEscalation, DefenseEvasion],
    },
    Pattern {
        title: "data exfiltration",
        requires: &[Exfiltration],
    },
    Pattern {
        title: "privilege escalation",
        requires: &[PrivilegeEscalation],
    },
    Pattern {
        title: "defense evasion",
        requires: &[DefenseEvasion],
    },
    Pattern {
        title: "backup tampering",
        requires: &[BackupTampering],
    },
    Pattern {
        title: "brute-force attack",
        requires: &[BruteForce],
    },
    Pattern {
        title: "integrity violation",
        requires: &[IntegrityTampering],
    },
    Pattern {
        title: "certificate trust problem",
        requires: &[CertificateProblem],
    },
    Pattern {
        title: "anomalous host behaviour",
        requires: &[Anomaly],
    },
];

/// The incident title for this evidence (strongest first).
pub fn classify(evidence: &[Evidence]) -> String {
    let signals: BTreeSet<Signal> = evidence.iter().flat_map(signals_of).collect();
    if let Some(pattern) = PATTERNS
        .iter()
        .find(|p| p.requires.iter().all(|s| signals.contains(s)))
    {
        return pattern.title.to_owned();
    }
    match evidence.first() {
        Some(strongest) => format!("suspicious activity: {}", strongest.title),
        None => "suspicious activity".to_owned(),
    }
}

fn signals_of(evidence: &Evidence) -> Vec<Signal> {
    let techniques = attack_techniques(&evidence.tags);
    let has_technique = |ids: &[&str]| {
        techniques.iter().any(|t| {
            ids.iter()
                .any(|id| t == id || t.strip_prefix(id).is_some_and(|r| r.starts_with('.')))
        })
    };
    let has_tactic = |tactic: &str| {
        evidence
            .tags
            .iter()
            .any(|tag| tag.eq_ignore_ascii_case(&format!("attack.{tactic}")))
    };
    let mut signals = Vec::new();
    if has_technique(&["T1110"]) {
        signals.push(BruteForce);
    }
    if has_technique(&["T1078"]) {
        signals.push(ValidAccountLogin);
    }
    if has_technique(&["T1020", "T1030", "T1041", "T1048", "T1567"]) || has_tactic("exfiltration") {
        signals.push(Exfiltration);
    }
    let backup = has_technique(&["T1490"]);
    if backup {
        signals.push(BackupTampering);
    }
    if has_technique(&["T1565"]) || (evidence.source == SourceKind::Integrity && !backup) {
        signals.push(IntegrityTampering);
    }
    if has_technique(&["T1068", "T1548"]) || has_tactic("privilege_escalation") {
        signals.push(PrivilegeEscalation);
    }
    if has_technique(&["T1562", "T1070"]) || has_tactic("defense_evasion") {
        signals.push(DefenseEvasion);
    }
    match evidence.source {
        SourceKind::Certificate => signals.push(CertificateProblem),
        SourceKind::Anomaly => signals.push(Anomaly),
        _ => {}
    }
    signals
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(title: &str, source: SourceKind, tags: &[&str]) -> Evidence {
        Evidence {
            rule_id: title.into(),
            title: title.into(),
            source,
            level: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            lr: 2.0,
            contribution: 2.0f64.ln(),
            hits: 1,
            event_refs: Vec::new(),
            first_seen_ns: 0,
            time_ns: 0,
        }
    }

    #[test]
    fn most_specific_pattern_wins() {
        let burst = evidence("burst", SourceKind::Auth, &["attack.t1110.004"]);
        let login = evidence("new address", SourceKind::Auth, &["attack.t1078"]);
        let outbound = evidence("outbound", SourceKind::Network, &["attack.exfiltration"]);
        assert_eq!(
            classify(&[burst.clone(), login.clone(), outbound.clone()]),
            "credential stuffing + exfiltration"
        );
        assert_eq!(
            classify(&[burst.clone(), login]),
            "credential stuffing + account takeover"
        );
        assert_eq!(classify(&[burst, outbound]), "data exfiltration");
    }

    #[test]
    fn sub_technique_prefixes_do_not_overmatch() {
        // T11100 is not a sub-technique of T1110; only "T1110" and "T1110.xxx" are.
        let odd = evidence("odd", SourceKind::Process, &["attack.t1111"]);
        assert_eq!(classify(&[odd]), "suspicious activity: odd");
    }

    #[test]
    fn sources_alone_give_signals() {
        let backup = evidence("backup", SourceKind::Integrity, &["attack.t1490"]);
        let file = evidence("file", SourceKind::Integrity, &[]);
        assert_eq!(
            classify(&[backup.clone(), file]),
            "ransomware-style impact: backups and files tampered"
        );
        assert_eq!(classify(&[backup]), "backup tampering");
        let cert = evidence("cert", SourceKind::Certificate, &[]);
        assert_eq!(classify(&[cert]), "certificate trust problem");
        assert_eq!(classify(&[]), "suspicious activity");
    }
}
