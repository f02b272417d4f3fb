//! The respond stage end to end within the cortex: modes, holds, approvals, guardrails, TTL
//! rollbacks, two-person release, and one real round trip over a qsc-channel connection.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use qsc_channel::delivery::{
    self, AgentIdentity, Client, ClientConfig, CommandHandler, CommandStatus, EventSink,
    FsyncPolicy, Outbox, OutboxConfig, OverflowPolicy, ServerConfig, SinkError,
};
use qsc_channel::keys::{AgentEntry, AllowList, StaticKeypair};
use qsc_channel::transport::TransportConfig;
use qsc_event::{
    Action, ActionOutcome, ActionReport, ActionRequest, Event, EventKind, NetConnection,
    ProcessInfo, Source, mono_now_ns, now_ns,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use zeroize::Zeroizing;

use super::*;
use crate::audit::AuditLog;
use crate::decide::NodeState;
use crate::score::{EntityKey, Evidence, IncidentStatus, Severity, SourceKind};
use crate::store::SqliteStore;

const SECOND: u64 = 1_000_000_000;

struct Harness {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    audit: Arc<AuditLog>,
    nodes: Arc<Mutex<NodeStates>>,
    links: AgentLinks,
    responder: Arc<Responder>,
    dispatcher: Dispatcher,
}

fn harness(config: RespondConfig, playbooks: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open_with_key(&dir.path().join("c.db"), &[3; 32]).unwrap());
    let audit = Arc::new(
        AuditLog::open_with_key(&dir.path().join("a.db"), &Zeroizing::new([4; 32]), 16).unwrap(),
    );
    let nodes = Arc::new(Mutex::new(NodeStates::new(audit.clone(), Vec::new())));
    let links = AgentLinks::default();
    let (responder, dispatcher) = build(&config, playbooks, &store, &nodes, &links);
    Harness {
        dir,
        store,
        audit,
        nodes,
        links,
        responder,
        dispatcher,
    }
}

fn build(
    config: &RespondConfig,
    playbooks: &str,
    store: &Arc<dyn Store>,
    nodes: &Arc<Mutex<NodeStates>>,
    links: &AgentLinks,
) -> (Arc<Responder>, Dispatcher) {
    let playbooks = Playbooks::parse_all(&[("test.yml".into(), playbooks.into())]).unwrap();
    Responder::new(ResponderParts {
        config: config.clone(),
        playbooks,
        links: Arc::new(links.clone()),
        cortex_addr: Some("192.0.2.1".parse().unwrap()),
        ..ResponderParts::for_store(store.clone(), nodes.clone())
    })
    .unwrap()
}

fn config(mode: Mode) -> RespondConfig {
    RespondConfig {
        mode,
        ..RespondConfig::default()
    }
}

fn incident(id: &str, rule: &str) -> Incident {
    Incident {
        id: id.into(),
        host: "web-01".into(),
        entity: EntityKey::Host {
            host: "web-01".into(),
        },
        title: format!("{rule} on web-01"),
        severity: Severity::Critical,
        confidence: 0.99,
        prior: 0.001,
        log_odds: 4.0,
        attack_techniques: vec!["T1059".into()],
        status: IncidentStatus::Open,
        opened_ns: 1,
        updated_ns: 1,
        evidence: vec![Evidence {
            rule_id: rule.into(),
            title: rule.into(),
            source: SourceKind::Network,
            level: None,
            tags: vec!["attack.t1059".into()],
            lr: 80.0,
            contribution: 4.0,
            hits: 1,
            event_refs: Vec::new(),
            first_seen_ns: 1,
            time_ns: 1,
        }],
    }
}

/// A connect by `comm` (pid `pid`, user `user`) to 203.0.113.7, seen at host time `mono`.
fn connect(pid: u32, comm: &str, user: &str, mono: u64) -> Event {
    let mut event = Event::new(
        "web-01",
        Source::Alpha,
        1,
        EventKind::NetConnect(NetConnection {
            process: ProcessInfo {
                pid,
                comm: comm.into(),
                exe: Some(format!("/usr/bin/{comm}").into()),
                user: Some(user.into()),
                ..ProcessInfo::default()
            },
            protocol: "tcp".into(),
            src_ip: "10.0.0.5".parse().unwrap(),
            src_port: 40000,
            dst_ip: "203.0.113.7".parse().unwrap(),
            dst_port: 4444,
        }),
    );
    event.mono_ns = Some(mono);
    event
}

fn book(mode: &str, actions: &str) -> String {
    let mode = if mode.is_empty() {
        String::new()
    } else {
        format!("mode: {mode}\n")
    };
    format!("name: contain\n{mode}match:\n  rules: [qsc-reverse-shell]\nactions:\n{actions}")
}

const KILL: &str = "  - action: kill\n    tree: true\n";

fn actions(h: &Harness) -> Vec<ActionRecord> {
    let mut all = h
        .store
        .actions(&ActionQuery {
            limit: 100,
            ..ActionQuery::default()
        })
        .unwrap();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    all
}

fn only(h: &Harness) -> ActionRecord {
    let all = actions(h);
    assert_eq!(all.len(), 1, "{all:#?}");
    all.into_iter().next().unwrap()
}

fn audit_events(h: &Harness) -> Vec<String> {
    audit_events_of(&h.audit)
}

fn audit_events_of(audit: &AuditLog) -> Vec<String> {
    audit
        .records(1, 1000)
        .unwrap()
        .iter()
        .filter_map(|r| {
            let body: serde_json::Value = serde_json::from_str(&r.body).ok()?;
            body["event"].as_str().map(|e| format!("{}:{e}", r.kind))
        })
        .collect()
}

fn report(id: &str, outcome: ActionOutcome, done_mono_ns: u64) -> links::CommandAnswer {
    let report = ActionReport {
        action_id: id.into(),
        outcome,
        detail: "ok".into(),
        received_mono_ns: None,
        done_mono_ns,
        facts: serde_json::Map::new(),
    };
    let status = match outcome {
        ActionOutcome::Done => CommandStatus::Succeeded,
        ActionOutcome::Refused => CommandStatus::Refused,
        ActionOutcome::Failed => CommandStatus::Failed,
    };
    (status, serde_json::to_vec(&report).unwrap())
}

#[test]
fn autonomous_actions_are_queued_and_dry_run_ones_only_audited() {
    let mut h = harness(config(Mode::Autonomous), &book("", KILL));
    h.responder.on_incident(
        &incident("inc-1", "qsc-reverse-shell"),
        Some(&connect(4321, "nc", "www-data", 100)),
    );
    let record = only(&h);
    assert_eq!(record.status, ActionStatus::Dispatched);
    assert_eq!(record.mode, Mode::Autonomous);
    assert_eq!(record.trigger_mono_ns, Some(100));
    let job = h.dispatcher.jobs.try_recv().unwrap();
    assert_eq!(
        job.request.action,
        Action::Kill {
            pid: 4321,
            start_time_ticks: None,
            tree: true
        }
    );
    assert_eq!(job.request.action_id, record.id);

    // A playbook's own mode beats the global one.
    let mut h = harness(config(Mode::Autonomous), &book("dry_run", KILL));
    h.responder.on_incident(
        &incident("inc-1", "qsc-reverse-shell"),
        Some(&connect(4321, "nc", "www-data", 100)),
    );
    assert_eq!(only(&h).status, ActionStatus::WouldRun);
    assert!(
        h.dispatcher.jobs.try_recv().is_err(),
        "dry run sends nothing"
    );
    assert_eq!(audit_events(&h), vec!["action:would_run"]);
}

/// A correlation's hit is triggered by its last event (the shell's exec); the remote address
/// comes from a contributing event of an earlier batch (the connect), which its evidence names.
#[test]
fn parameters_come_from_a_correlations_contributing_events_too() {
    let blocks = "  - action: block_ip\n    ttl_s: 60\n";
    let h = harness(config(Mode::DryRun), &book("", &format!("{KILL}{blocks}")));
    let mut connected = connect(4321, "bash", "www-data", 100);
    connected.seq = 7;
    let mut exec = connect(4321, "sh", "www-data", 200);
    exec.seq = 8;
    exec.kind = EventKind::ProcessExec(qsc_event::ProcessExec {
        process: exec.process().cloned().unwrap(),
        filename: "/bin/sh".into(),
        argv: vec!["sh".into()],
        folder_world_writable: None,
    });
    h.responder.on_events("web-01", vec![connected].into());
    h.responder.on_events("web-01", vec![exec.clone()].into());
    let mut correlated = incident("inc-1", "qsc-reverse-shell");
    correlated.evidence[0].event_refs = [7, 8]
        .map(|seq| crate::score::EventRef {
            host_id: "web-01".into(),
            seq,
        })
        .into();
    h.responder.on_incident(&correlated, Some(&exec));
    let all = actions(&h);
    let block = all.iter().find(|a| a.name == "block_ip").unwrap();
    assert_eq!(block.status, ActionStatus::WouldRun, "{block:#?}");
    assert_eq!(
        block.action,
        Some(Action::BlockIp {
            addr: "203.0.113.7".parse().unwrap(),
            ttl_s: 60
        })
    );

    // Without the contributing event (not among the recent ones) the parameter is missing.
    let h = harness(config(Mode::DryRun), &book("", blocks));
    h.responder.on_incident(&correlated, Some(&exec));
    assert_eq!(only(&h).status, ActionStatus::MissingParameter);
}

#[test]
fn a_playbook_fires_once_per_incident_and_only_when_it_matches() {
    let h = harness(config(Mode::DryRun), &book("", KILL));
    let trigger = connect(4321, "nc", "www-data", 100);
    h.responder
        .on_incident(&incident("inc-1", "qsc-reverse-shell"), Some(&trigger));
    h.responder
        .on_incident(&incident("inc-1", "qsc-reverse-shell"), Some(&trigger));
    h.responder
        .on_incident(&incident("inc-2", "qsc-other-rule"), Some(&trigger));
    assert_eq!(actions(&h).len(), 1);
}

#[test]
fn held_actions_wait_for_an_operator_and_survive_a_restart() {
    let mut h = harness(config(Mode::Assisted), &book("", KILL));
    let trigger = connect(4321, "nc", "www-data", 100);
    h.responder
        .on_incident(&incident("inc-1", "qsc-reverse-shell"), Some(&trigger));
    h.responder
        .on_incident(&incident("inc-2", "qsc-reverse-shell"), Some(&trigger));
    let held = actions(&h);
    assert!(held.iter().all(|r| r.status == ActionStatus::Held));
    assert!(held.iter().all(|r| r.expires_ns.is_some()));
    assert!(h.dispatcher.jobs.try_recv().is_err(), "held, not sent");

    // A new cortex on the same store keeps them held.
    let (restarted, mut dispatcher) = build(
        &config(Mode::Assisted),
        &book("", KILL),
        &h.store,
        &h.nodes,
        &h.links,
    );
    h.responder = restarted;
    assert_eq!(h.responder.held().len(), 2);
    let approvals = h.responder.approvals();
    assert!(matches!(
        approvals.decide(&held[0].id, " ", true),
        Err(ApprovalError::InvalidOperator)
    ));
    assert!(matches!(
        approvals.decide("act-nope", "alice", true),
        Err(ApprovalError::NotHeld { .. })
    ));
    let approved = approvals.decide(&held[0].id, "alice", true).unwrap();
    assert_eq!(approved.status, ActionStatus::Dispatched);
    assert_eq!(approved.decisions[0].operator, "alice");
    assert_eq!(dispatcher.jobs.try_recv().unwrap().action_id, held[0].id);
    let denied = approvals.decide(&held[1].id, "bob", false).unwrap();
    assert_eq!(denied.status, ActionStatus::Denied);
    assert!(dispatcher.jobs.try_recv().is_err());
    assert!(matches!(
        approvals.decide(&held[1].id, "bob", true),
        Err(ApprovalError::NotHeld { .. })
    ));
    let events = audit_events(&h);
    for wanted in [
        "action:held",
        "approval:approved",
        "action:dispatched",
        "approval:denied",
    ] {
        assert!(events.iter().any(|e| e == wanted), "{wanted}: {events:?}");
    }
    let approval = h
        .audit
        .records(1, 1000)
        .unwrap()
        .into_iter()
        .find(|r| r.body.contains("\"approved\""))
        .unwrap();
    assert_eq!(approval.actor, "operator:alice");
}

#[test]
fn two_person_approval_needs_two_distinct_operators() {
    let mut two = config(Mode::Assisted);
    two.two_person_approval = true;
    let mut h = harness(two, &book("", KILL));
    h.responder.on_incident(
        &incident("inc-1", "qsc-reverse-shell"),
        Some(&connect(4321, "nc", "www-data", 100)),
    );
    let held = only(&h);
    let approvals = h.responder.approvals();
    let first = approvals.decide(&held.id, "alice", true).unwrap();
    assert_eq!(first.status, ActionStatus::Held);
    assert!(first.detail.contains("second operator"), "{}", first.detail);
    let again = approvals.decide(&held.id, "alice", true).unwrap();
    assert_eq!(again.status, ActionStatus::Held, "the same operator twice");
    assert!(
        h.dispatcher.jobs.try_recv().is_err(),
        "still held, not sent"
    );
    assert_eq!(only(&h).status, ActionStatus::Held, "stored as held");
    let second = approvals.decide(&held.id, "bob", true).unwrap();
    assert_eq!(second.status, ActionStatus::Dispatched);
    let approvers: Vec<&str> = second
        .decisions
        .iter()
        .map(|d| d.operator.as_str())
        .collect();
    assert_eq!(approvers, ["alice", "alice", "bob"]);
    assert_eq!(h.dispatcher.jobs.try_recv().unwrap().action_id, held.id);
    let events = audit_events(&h);
    for wanted in ["approval:approved_first", "approval:approved"] {
        assert!(events.iter().any(|e| e == wanted), "{wanted}: {events:?}");
    }

    // One operator's denial ends it, whatever was approved before.
    h.responder.on_incident(
        &incident("inc-2", "qsc-reverse-shell"),
        Some(&connect(4322, "nc", "www-data", 200)),
    );
    let next = h.responder.held().pop().expect("a second held action");
    approvals.decide(&next.id, "alice", true).unwrap();
    let denied = approvals.decide(&next.id, "carol", false).unwrap();
    assert_eq!(denied.status, ActionStatus::Denied);
    assert!(h.dispatcher.jobs.try_recv().is_err());
}

#[test]
fn held_actions_expire() {
    let h = harness(config(Mode::Assisted), &book("", KILL));
    h.responder.on_incident(
        &incident("inc-1", "qsc-reverse-shell"),
        Some(&connect(4321, "nc", "www-data", 100)),
    );
    let held = only(&h);
    h.responder.tick(now_ns());
    assert_eq!(only(&h).status, ActionStatus::Held, "not yet");
    h.responder.tick(now_ns() + 901 * SECOND);
    let expired = only(&h);
    assert_eq!(expired.status, ActionStatus::Expired);
    assert!(expired.is_final());
    assert!(matches!(
        h.responder.approvals().decide(&held.id, "alice", true),
        Err(ApprovalError::NotHeld { .. })
    ));
    assert!(audit_events(&h).contains(&"action:expired".to_owned()));
}

#[test]
fn guardrails_refuse_init_the_cortex_agents_and_allow_listed_targets() {
    let cases = [
        (connect(1, "init", "www-data", 1), "pid 1"),
        (
            connect(std::process::id(), "x", "www-data", 1),
            "the cortex itself",
        ),
        (connect(600, "guardian-alpha", "qsc", 1), "QSC agent"),
        (connect(601, "sshd", "www-data", 1), "allow] processes"),
        (connect(602, "bash", "root", 1), "allow] users"),
    ];
    for (trigger, needle) in cases {
        let mut h = harness(config(Mode::Autonomous), &book("", KILL));
        h.responder
            .on_incident(&incident("inc-1", "qsc-reverse-shell"), Some(&trigger));
        let record = only(&h);
        assert_eq!(record.status, ActionStatus::Blocked, "{needle}");
        assert!(
            record.detail.contains(needle),
            "{needle}: {}",
            record.detail
        );
        assert!(h.dispatcher.jobs.try_recv().is_err());
    }
    // An allow-listed address is never blocked; a missing parameter is reported, not run.
    let mut allow = config(Mode::Autonomous);
    allow.allow.addresses = vec!["203.0.113.0/24".parse().unwrap()];
    let h = harness(
        allow,
        &book(
            "",
            "  - action: block_ip\n    ttl_s: 60\n  - action: quarantine\n",
        ),
    );
    h.responder.on_incident(
        &incident("inc-1", "qsc-reverse-shell"),
        Some(&connect(4321, "nc", "www-data", 1)),
    );
    let records = actions(&h);
    assert_eq!(records[0].status, ActionStatus::Blocked);
    assert!(records[0].detail.contains("203.0.113.0/24"));
    assert_eq!(records[1].status, ActionStatus::MissingParameter);
    assert!(records[1].detail.contains("file path"));
}

#[test]
fn the_rate_limit_caps_actions_per_host() {
    let mut limited = config(Mode::Autonomous);
    limited.max_actions_per_minute = 2;
    let mut h = harness(limited, &book("", KILL));
    for i in 0..3 {
        h.responder.on_incident(
            &incident(&format!("inc-{i}"), "qsc-reverse-shell"),
            Some(&connect(4000 + i, "nc", "www-data", 1)),
        );
    }
    let statuses: Vec<ActionStatus> = actions(&h).iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![
            ActionStatus::Dispatched,
            ActionStatus::Dispatched,
            ActionStatus::Blocked
        ]
    );
    assert!(
        actions(&h)[2]
            .detail
            .contains("2 actions in the last minute")
    );
    assert_eq!(
        std::iter::from_fn(|| h.dispatcher.jobs.try_recv().ok()).count(),
        2
    );
}

#[test]
fn a_dispatched_action_carries_its_timeline_and_one_audit_record() {
    let mut h = harness(config(Mode::Autonomous), &book("", KILL));
    let trigger = connect(4321, "nc", "www-data", 1_000);
    let arrived = mono_now_ns();
    h.responder.on_incident_at(
        &incident("inc-1", "qsc-reverse-shell"),
        Some(&trigger),
        Some(arrived),
    );
    let record = only(&h);
    assert_eq!(record.status, ActionStatus::Dispatched);
    let timeline = &record.timeline;
    assert_eq!(timeline.trigger_emitted_ns, Some(trigger.time_ns));
    assert_eq!(timeline.arrived_mono_ns, Some(arrived));
    let decided = timeline.decided_mono_ns.expect("decision stamped");
    let dispatched = timeline.dispatched_mono_ns.expect("dispatch stamped");
    assert!(arrived <= decided && decided <= dispatched, "{timeline:?}");
    assert_eq!(audit_events(&h), ["action:dispatched"]);
    assert!(h.dispatcher.jobs.try_recv().is_ok());
}

#[test]
fn reports_set_results_latency_and_ttl_rollbacks() {
    let mut h = harness(
        config(Mode::Autonomous),
        &book("", "  - action: block_ip\n    ttl_s: 30\n"),
    );
    h.responder.on_incident(
        &incident("inc-1", "qsc-reverse-shell"),
        Some(&connect(4321, "nc", "www-data", 1_000)),
    );
    let job = h.dispatcher.jobs.try_recv().unwrap();
    h.responder.on_answer(
        &job.action_id,
        Ok(report(&job.action_id, ActionOutcome::Done, 5_000)),
    );
    let done = only(&h);
    assert_eq!(done.status, ActionStatus::Done);
    assert_eq!(done.latency_ns, Some(4_000));
    assert_eq!(h.responder.metrics().latency_count("block_ip"), 1);
    assert!(h.responder.render_metrics().contains("action=\"block_ip\""));
    assert!(done.rollback_due_ns.is_some());

    h.responder.tick(now_ns() + 31 * SECOND);
    let undo = h.dispatcher.jobs.try_recv().unwrap();
    assert_eq!(
        undo.request.action,
        Action::UnblockIp {
            addr: "203.0.113.7".parse().unwrap()
        }
    );
    h.responder.on_answer(
        &undo.action_id,
        Ok(report(&undo.action_id, ActionOutcome::Done, 9_000)),
    );
    let records = actions(&h);
    assert_eq!(
        records[0].rolled_back_by.as_deref(),
        Some(undo.action_id.as_str())
    );
    assert!(records[0].is_final());
    assert_eq!(records[1].rollback_of.as_deref(), Some(done.id.as_str()));
    assert_eq!(records[1].status, ActionStatus::Done);
    let events = audit_events(&h);
    assert!(
        events.contains(&"action:rollback_due".to_owned()),
        "{events:?}"
    );

    // A report that does not parse, or no answer at all, fails the action.
    let h = harness(config(Mode::Autonomous), &book("", KILL));
    h.responder.on_incident(
        &incident("inc-1", "qsc-reverse-shell"),
        Some(&connect(4321, "nc", "www-data", 1)),
    );
    let id = only(&h).id;
    h.responder
        .on_answer(&id, Ok((CommandStatus::Succeeded, b"not json".to_vec())));
    let failed = only(&h);
    assert_eq!(failed.status, ActionStatus::Failed);
    assert!(failed.detail.contains("not an action report"));
}

#[test]
fn isolation_sets_the_node_state_and_its_ttl_releases_it() {
    let mut h = harness(
        config(Mode::Autonomous),
        &book("", "  - action: isolate\n    ttl_s: 60\n"),
    );
    h.responder.on_incident(
        &incident("inc-1", "qsc-reverse-shell"),
        Some(&connect(4321, "nc", "www-data", 1)),
    );
    let job = h.dispatcher.jobs.try_recv().unwrap();
    h.responder.on_answer(
        &job.action_id,
        Ok(report(&job.action_id, ActionOutcome::Done, 2)),
    );
    let state = |h: &Harness| lock(&h.nodes).state("web-01");
    assert_eq!(state(&h), NodeState::Isolated);
    assert_eq!(
        h.store.node_state("web-01").unwrap().map(|r| r.state),
        Some(NodeState::Isolated)
    );
    h.responder.tick(now_ns() + 61 * SECOND);
    let release = h.dispatcher.jobs.try_recv().unwrap();
    assert_eq!(release.request.action, Action::Release);
    assert_eq!(
        state(&h),
        NodeState::Isolated,
        "released only once the agent confirms"
    );
    h.responder.on_answer(
        &release.action_id,
        Ok(report(&release.action_id, ActionOutcome::Done, 3)),
    );
    assert_eq!(state(&h), NodeState::Nominal);
}

#[test]
fn two_person_release_needs_two_distinct_operators() {
    let mut two = config(Mode::Autonomous);
    two.two_person_release = true;
    let mut h = harness(two, &book("", KILL));
    lock(&h.nodes)
        .on_isolated("web-01", "cortex", "test")
        .unwrap();
    assert!(matches!(
        h.responder.release("web-01", "", "x"),
        Err(ReleaseError::InvalidOperator)
    ));
    let first = h.responder.release("web-01", "alice", "reimaged").unwrap();
    assert_eq!(
        first,
        ReleaseOutcome::AwaitingSecond {
            first: "alice".into()
        }
    );
    let again = h.responder.release("web-01", "alice", "really").unwrap();
    assert!(matches!(again, ReleaseOutcome::AwaitingSecond { .. }));
    assert_eq!(lock(&h.nodes).state("web-01"), NodeState::Isolated);
    let ReleaseOutcome::Released { node, action } =
        h.responder.release("web-01", "bob", "checked").unwrap()
    else {
        panic!("the second operator releases");
    };
    assert_eq!(node.state, NodeState::Nominal);
    assert_eq!(node.actor, "operator:alice+bob");
    assert_eq!(action.action, Some(Action::Release));
    assert_eq!(
        h.dispatcher.jobs.try_recv().unwrap().request.action,
        Action::Release
    );
    assert!(matches!(
        h.responder.release("web-01", "carol", "x"),
        Ok(ReleaseOutcome::AwaitingSecond { .. })
    ));
    // With one-person release, a single operator releases at once.
    let mut h = harness(config(Mode::Autonomous), &book("", KILL));
    lock(&h.nodes)
        .on_isolated("web-01", "cortex", "test")
        .unwrap();
    assert!(matches!(
        h.responder.release("web-01", "alice", "ok"),
        Ok(ReleaseOutcome::Released { .. })
    ));
    assert!(h.dispatcher.jobs.try_recv().is_ok());
    assert!(matches!(
        h.responder.release("web-01", "alice", "again"),
        Err(ReleaseError::Decide(DecideError::NotAllowed { .. }))
    ));
}

#[derive(Default)]
struct Recorder {
    incidents: Mutex<Vec<String>>,
    actions: Mutex<Vec<(String, ActionStatus)>>,
}

impl ResponseObserver for Recorder {
    fn incident(&self, incident: &Incident) {
        lock(&self.incidents).push(incident.id.clone());
    }

    fn action(&self, record: &ActionRecord) {
        lock(&self.actions).push((record.name.clone(), record.status));
    }
}

#[test]
fn observers_see_every_incident_and_action_change() {
    let h = harness(
        config(Mode::Assisted),
        &book("", "  - action: kill\n  - action: notify\n"),
    );
    let recorder = Arc::new(Recorder::default());
    h.responder.add_observer(recorder.clone());
    h.responder.on_incident(
        &incident("inc-1", "qsc-reverse-shell"),
        Some(&connect(4321, "nc", "www-data", 1)),
    );
    h.responder
        .on_incident(&incident("inc-9", "qsc-unrelated"), None);
    assert_eq!(*lock(&recorder.incidents), vec!["inc-1", "inc-9"]);
    assert_eq!(
        *lock(&recorder.actions),
        vec![
            ("kill".to_owned(), ActionStatus::Held),
            ("notify".to_owned(), ActionStatus::Notified)
        ]
    );
}

/// The cortex side of the test channel: command results go to the links, events nowhere.
struct LinkSink(AgentLinks);

impl EventSink for LinkSink {
    fn stored_up_to(&mut self, _agent: &AgentIdentity) -> Result<u64, SinkError> {
        Ok(0)
    }

    fn store(&mut self, _: &AgentIdentity, _: u64, _: &[&[u8]]) -> Result<(), SinkError> {
        Ok(())
    }

    fn record_loss(&mut self, _: &AgentIdentity, _: u64, _: u64) -> Result<(), SinkError> {
        Ok(())
    }

    fn command_result(
        &mut self,
        agent: &AgentIdentity,
        id: u64,
        status: CommandStatus,
        body: &[u8],
    ) -> Result<(), SinkError> {
        self.0.complete(&agent.host_id, id, status, body);
        Ok(())
    }
}

/// The agent side: records each request and reports it done on the host's monotonic clock.
#[derive(Clone, Default)]
struct FakeAgent(Arc<Mutex<Vec<ActionRequest>>>);

impl CommandHandler for FakeAgent {
    fn execute(&mut self, _id: u64, body: &[u8]) -> (CommandStatus, Vec<u8>) {
        let Ok(request) = serde_json::from_slice::<ActionRequest>(body) else {
            return (CommandStatus::Refused, b"not an action request".to_vec());
        };
        let report = ActionReport {
            action_id: request.action_id.clone(),
            outcome: ActionOutcome::Done,
            detail: format!("{} done", request.action.name()),
            received_mono_ns: None,
            done_mono_ns: mono_now_ns(),
            facts: serde_json::Map::new(),
        };
        lock(&self.0).push(request);
        let body = serde_json::to_vec(&report).unwrap_or_default();
        (CommandStatus::Succeeded, body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_round_trips_over_a_real_channel_with_its_latency() {
    let h = harness(config(Mode::Autonomous), &book("", KILL));
    let cortex_key = StaticKeypair::generate();
    let agent_key = StaticKeypair::generate();
    let server = ServerConfig {
        keypair: cortex_key.clone(),
        allow_list: Arc::new(RwLock::new(AllowList::new(vec![AgentEntry {
            host_id: "web-01".into(),
            class: "standard".into(),
            public_key: agent_key.public(),
            revoked: false,
        }]))),
        require_hybrid: true,
        transport: TransportConfig::default(),
        handshake_timeout: Duration::from_secs(5),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let links = h.links.clone();
    let server_task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut sink = LinkSink(links.clone());
        let session = delivery::accept(stream, &server, &mut sink).await.unwrap();
        let ticket = links.register("web-01", session.command_sender());
        let outcome = session.run(&mut sink).await;
        links.unregister("web-01", ticket);
        outcome
    });
    let outbox = Outbox::open(OutboxConfig {
        dir: h.dir.path().join("outbox"),
        max_bytes: 1 << 20,
        segment_bytes: 1 << 18,
        overflow: OverflowPolicy::DropNewest,
        fsync: FsyncPolicy::Never,
    })
    .unwrap();
    let client = Client::new(
        ClientConfig::new(addr, cortex_key.public(), agent_key),
        outbox,
    );
    let agent = FakeAgent::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let client_task = tokio::spawn(client.run_until(agent.clone(), async {
        let _ = stop_rx.await;
    }));
    for _ in 0..1000 {
        if h.links.is_connected("web-01") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        h.links.is_connected("web-01"),
        "the agent session registered"
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let dispatcher_task = tokio::spawn(h.dispatcher.run(shutdown_rx));
    let trigger = connect(4321, "nc", "www-data", mono_now_ns());
    let responder = h.responder.clone();
    tokio::task::spawn_blocking(move || {
        responder.on_incident(&incident("inc-1", "qsc-reverse-shell"), Some(&trigger));
    })
    .await
    .unwrap();

    let store = h.store.clone();
    let mut record = None;
    for _ in 0..1000 {
        let current = store
            .actions(&ActionQuery::default())
            .unwrap()
            .into_iter()
            .next();
        if current
            .as_ref()
            .is_some_and(|r| r.status == ActionStatus::Done)
        {
            record = current;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = shutdown_tx.send(true);
    let _ = stop_tx.send(());
    dispatcher_task.await.unwrap();
    client_task.await.unwrap();
    server_task.abort();

    let record = record.expect("the action completed");
    let sent = lock(&agent.0).clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].action_id, record.id);
    assert_eq!(
        sent[0].action,
        Action::Kill {
            pid: 4321,
            start_time_ticks: None,
            tree: true
        }
    );
    let latency = record.latency_ns.expect("latency measured");
    assert!(latency > 0 && latency < 10 * SECOND, "{latency} ns");
    let report = record.report.expect("the agent's report is kept");
    assert_eq!(
        Some(latency),
        report
            .done_mono_ns
            .checked_sub(record.trigger_mono_ns.unwrap())
    );
    assert_eq!(h.responder.metrics().latency_count("kill"), 1);
    let events = audit_events_of(&h.audit);
    assert!(
        events.contains(&"action:dispatched".to_owned()),
        "{events:?}"
    );
    assert!(events.contains(&"action:result".to_owned()), "{events:?}");
    assert!(h.audit.verify().unwrap().is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_for_a_host_without_an_agent_fails_without_blocking() {
    let mut limited = config(Mode::Autonomous);
    limited.dispatch_timeout_ms = 200;
    let h = harness(limited, &book("", KILL));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let dispatcher_task = tokio::spawn(h.dispatcher.run(shutdown_rx));
    let responder = h.responder.clone();
    tokio::task::spawn_blocking(move || {
        responder.on_incident(
            &incident("inc-1", "qsc-reverse-shell"),
            Some(&connect(4321, "nc", "www-data", 1)),
        );
    })
    .await
    .unwrap();
    let mut failed = None;
    for _ in 0..400 {
        let current = h.store.actions(&ActionQuery::default()).unwrap();
        if current
            .first()
            .is_some_and(|r| r.status == ActionStatus::Failed)
        {
            failed = current.into_iter().next();
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = shutdown_tx.send(true);
    dispatcher_task.await.unwrap();
    let failed = failed.expect("the action failed");
    assert!(
        failed.detail.contains("no guardian-alpha session"),
        "{}",
        failed.detail
    );
}

/// Records the rotations asked for.
#[derive(Default)]
struct FakeLifecycle(Mutex<Vec<String>>);

impl KeyRotation for FakeLifecycle {
    fn rotate<'a>(
        &'a self,
        host: &'a str,
        _actor: &'a str,
        _reason: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<ActionReport, String>> + Send + 'a>> {
        Box::pin(async move {
            lock(&self.0).push(host.to_owned());
            Ok(ActionReport {
                action_id: format!("rotate-keys-{host}-alpha-1"),
                outcome: ActionOutcome::Done,
                detail: "new session up".into(),
                received_mono_ns: Some(1),
                done_mono_ns: 2,
                facts: serde_json::Map::new(),
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_keys_goes_through_the_key_lifecycle_or_is_refused() {
    let rotate = book("", "  - action: rotate_keys\n");
    let h = harness(config(Mode::Autonomous), &rotate);
    h.responder
        .on_incident(&incident("inc-1", "qsc-reverse-shell"), None);
    let refused = only(&h);
    assert_eq!(refused.status, ActionStatus::Blocked);
    assert!(refused.detail.contains("key lifecycle"));

    let h = harness(config(Mode::Autonomous), &rotate);
    let lifecycle = Arc::new(FakeLifecycle::default());
    let playbooks = Playbooks::parse_all(&[("t.yml".into(), rotate.clone())]).unwrap();
    let (responder, dispatcher) = Responder::new(ResponderParts {
        config: config(Mode::Autonomous),
        playbooks,
        links: Arc::new(h.links.clone()),
        key_rotation: Some(lifecycle.clone()),
        ..ResponderParts::for_store(h.store.clone(), h.nodes.clone())
    })
    .unwrap();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(dispatcher.run(shutdown_rx));
    let on_incident = responder.clone();
    tokio::task::spawn_blocking(move || {
        on_incident.on_incident(&incident("inc-1", "qsc-reverse-shell"), None);
    })
    .await
    .unwrap();
    let mut done = None;
    for _ in 0..400 {
        let current = h.store.actions(&ActionQuery::default()).unwrap();
        if current
            .first()
            .is_some_and(|r| r.status == ActionStatus::Done)
        {
            done = current.into_iter().next();
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = shutdown_tx.send(true);
    task.await.unwrap();
    let done = done.expect("the rotation completed");
    assert!(
        done.detail.contains("rotate-keys-web-01-alpha-1"),
        "{}",
        done.detail
    );
    assert_eq!(*lock(&lifecycle.0), vec!["web-01"]);
}
