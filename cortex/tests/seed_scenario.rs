//! The seed scenario through score → decide → audit → store, with the public API only:
//! failed logins, a login from the new address, a large outbound transfer and a corrupted backup
//! on one host within minutes give one CRITICAL "credential stuffing + exfiltration" incident,
//! move the host NOMINAL → WARNING → CRITICAL, and leave a verifiable audit trail.

use std::net::IpAddr;
use std::sync::Arc;

use cortex::audit::{AuditLog, AuditSink};
use cortex::decide::{Approval, NodeState, NodeStates};
use cortex::score::{
    EventRef, Fusion, HitEntities, Level, RuleHit, ScoreConfig, Severity, SourceKind,
};
use cortex::store::key_file::create_key_file;
use cortex::store::{IncidentQuery, SqliteStore, Store};

const T0: u64 = 1_700_000_000_000_000_000;

fn hit(rule_id: &str, level: Level, tag: &str, source: SourceKind, at_s: u64, seq: u64) -> RuleHit {
    let attacker = IpAddr::from([203, 0, 113, 7]);
    RuleHit {
        rule_id: rule_id.into(),
        title: rule_id.into(),
        level,
        tags: vec![tag.into()],
        likelihood_ratio: None,
        source,
        entities: HitEntities {
            host: "web-01".into(),
            lineage_root: None,
            user: Some("deploy".into()),
            remote_ip: Some(attacker),
        },
        time_ns: T0 + at_s * 1_000_000_000,
        event_refs: vec![EventRef {
            host_id: "web-01".into(),
            seq,
        }],
    }
}

#[test]
fn seed_scenario_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let audit_key = dir.path().join("audit.key");
    let master_key = dir.path().join("master.key");
    create_key_file(&audit_key).unwrap();
    create_key_file(&master_key).unwrap();
    let audit = Arc::new(AuditLog::open(&dir.path().join("audit.db"), &audit_key, 16).unwrap());
    let store = SqliteStore::open(&dir.path().join("cortex.db"), &master_key).unwrap();
    let mut fusion = Fusion::new(ScoreConfig::default()).unwrap();
    let mut nodes = NodeStates::new(audit.clone(), store.node_states().unwrap());

    let mut hits: Vec<RuleHit> = (0..40)
        .map(|i| {
            hit(
                "qsc.auth.ssh_failure",
                Level::Low,
                "attack.t1110",
                SourceKind::Auth,
                i * 3,
                i + 1,
            )
        })
        .collect();
    hits.push(hit(
        "qsc.auth.credential_stuffing_burst",
        Level::High,
        "attack.t1110.004",
        SourceKind::Auth,
        120,
        40,
    ));
    hits.push(hit(
        "qsc.auth.login_from_new_address",
        Level::Medium,
        "attack.t1078",
        SourceKind::Auth,
        150,
        41,
    ));
    hits.push(hit(
        "qsc.net.large_outbound_transfer",
        Level::High,
        "attack.t1048",
        SourceKind::Network,
        240,
        42,
    ));
    hits.push(hit(
        "qsc.integrity.backup_corrupt",
        Level::High,
        "attack.t1490",
        SourceKind::Integrity,
        270,
        43,
    ));

    let mut states = Vec::new();
    for h in &hits {
        if let Some(incident) = fusion.observe_hit(h).unwrap() {
            store.put_incident(&incident).unwrap();
            if let Some(record) = nodes.on_incident(&incident).unwrap() {
                store.put_node_state(&record).unwrap();
                states.push(record.state);
            }
        }
    }

    let incidents = store.incidents(&IncidentQuery::default()).unwrap();
    assert_eq!(incidents.len(), 1, "one incident, updated in place");
    let incident = &incidents[0];
    assert_eq!(incident.title, "credential stuffing + exfiltration");
    assert_eq!(incident.severity, Severity::Critical);
    assert!(incident.confidence > 0.99, "{}", incident.confidence);
    assert_eq!(incident.evidence.len(), 5);
    assert_eq!(states, vec![NodeState::Warning, NodeState::Critical]);
    assert_eq!(
        store.node_state("web-01").unwrap().map(|r| r.state),
        Some(NodeState::Critical)
    );

    // The response isolates the host; only an operator brings it back.
    let isolated = nodes
        .on_isolated("web-01", "cortex", "playbook isolate-host")
        .unwrap();
    store.put_node_state(&isolated).unwrap();
    let released = nodes
        .release(
            "web-01",
            &Approval {
                operator: "alice".into(),
                reason: "credentials rotated, host reimaged".into(),
            },
        )
        .unwrap();
    store.put_node_state(&released).unwrap();

    let report = audit.verify().unwrap();
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.records, 4);
    let last = audit.records(4, 4).unwrap();
    assert_eq!(last[0].actor, "operator:alice");
    assert_eq!(last[0].seq, released.audit_seq);
    let appended = audit.record(cortex::audit::AuditEntry {
        kind: cortex::audit::AuditKind::Incident,
        actor: "operator:alice".into(),
        body: serde_json::json!({"resolved": incident.id}),
    });
    assert_eq!(appended.unwrap().seq, 5);
}
