//! What every store backend must do, written once: each backend's test module runs all of it
//! with [`conformance_tests!`] and a [`Backend`] that opens (and reopens) one store.

use qsc_event::{AuthAttempt, Event, EventKind, ProcessExec, ProcessInfo, Source};

use super::{
    EventQuery, IncidentQuery, MAX_QUERY_LIMIT, PendingWrite, RetentionPolicy, Store, StoreError,
};
use crate::decide::{NodeState, NodeStateRecord};
use crate::score::{EntityKey, Incident, IncidentStatus, Severity};

/// The master key the conformance stores are opened with.
pub(super) const KEY: [u8; 32] = [3u8; 32];
/// A secret in every test event's command line, to look for in what is stored.
pub(super) const SECRET: &str = "hunter2-secret-token";

/// Opens the store under test; a second `open` reaches the same stored data.
pub(super) trait Backend {
    fn open(&self) -> Box<dyn Store>;
    /// From now on the database refuses to insert an event with `seq` (standing in for an I/O
    /// error), until [`Backend::stop_failing`].
    fn fail_inserts_of_seq(&self, seq: u64);
    fn stop_failing(&self);
}

/// One `#[test]` per conformance check, each with the backend `$backend` (an
/// `Option<impl Backend>`: `None` skips, its constructor printing why).
macro_rules! conformance_tests {
    ($backend:expr) => {
        $crate::store::conformance::conformance_tests!(@each $backend;
            events_round_trip_and_redelivery_is_idempotent,
            the_two_agents_of_a_host_have_their_own_sequences,
            cortex_made_events_may_stand_in_for_an_agent_but_other_agents_may_not,
            concurrent_appends_are_all_durable_and_in_order_per_agent,
            a_bad_batch_stores_nothing,
            after_a_failed_commit_no_later_batch_of_that_agent_is_stored_until_it_resumes,
            queries_filter_by_host_time_and_kind,
            incidents_and_node_states_persist,
            retention_deletes_by_age_then_oldest_by_size);
    };
    (@each $backend:expr; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                if let Some(backend) = $backend {
                    $crate::store::conformance::$name(&backend);
                }
            }
        )*
    };
}
pub(crate) use conformance_tests;

pub(super) fn exec(host: &str, seq: u64, time_ns: u64) -> Event {
    let mut event = Event::new(
        host,
        Source::Alpha,
        seq,
        EventKind::ProcessExec(ProcessExec {
            process: ProcessInfo {
                pid: 100,
                comm: "curl".into(),
                cmdline: vec!["curl".into(), "-H".into(), SECRET.into()].into(),
                ..Default::default()
            },
            filename: "/usr/bin/curl".into(),
            argv: vec!["curl".into()],
            folder_world_writable: None,
        }),
    );
    event.time_ns = time_ns;
    event
}

pub(super) fn auth(host: &str, seq: u64, time_ns: u64) -> Event {
    let mut event = Event::new(
        host,
        Source::Alpha,
        seq,
        EventKind::AuthFailure(AuthAttempt {
            user: "deploy".into(),
            remote_ip: None,
            service: "sshd".into(),
            detail: None,
        }),
    );
    event.time_ns = time_ns;
    event
}

pub(super) fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

pub(super) fn beta_exec(host: &str, seq: u64, time_ns: u64) -> Event {
    let mut event = exec(host, seq, time_ns);
    event.source = Source::Beta;
    event
}

pub(super) fn incident(id: &str, host: &str, severity: Severity, updated_ns: u64) -> Incident {
    Incident {
        id: id.into(),
        host: host.into(),
        entity: EntityKey::Host { host: host.into() },
        title: "credential stuffing + exfiltration".into(),
        severity,
        confidence: 0.99,
        prior: 0.001,
        log_odds: 4.6,
        attack_techniques: vec!["T1110".into()],
        status: IncidentStatus::Open,
        opened_ns: 1,
        updated_ns,
        evidence: Vec::new(),
    }
}

pub(super) fn events_round_trip_and_redelivery_is_idempotent(backend: &dyn Backend) {
    let store = backend.open();
    let batch: Vec<Event> = (1..=5).map(|s| exec("web-01", s, s * 10)).collect();
    let first = store
        .append_events("web-01", Source::Alpha, &batch)
        .unwrap();
    assert_eq!(first.inserted, 5);
    assert!(first.duplicates.is_empty());
    let again = store
        .append_events(
            "web-01",
            Source::Alpha,
            &[batch[3].clone(), exec("web-01", 6, 60)],
        )
        .unwrap();
    assert_eq!(again.inserted, 1);
    assert_eq!(again.duplicates, vec![4]);
    assert_eq!(store.highest_seq("web-01", Source::Alpha).unwrap(), Some(6));
    assert_eq!(store.highest_seq("web-02", Source::Alpha).unwrap(), None);
    let stored = store.query_events(&EventQuery::default()).unwrap();
    assert_eq!(stored.len(), 6);
    assert_eq!(stored[0], batch[0]);
}

pub(super) fn the_two_agents_of_a_host_have_their_own_sequences(backend: &dyn Backend) {
    let store = backend.open();
    let alpha: Vec<Event> = (1..=3).map(|s| exec("web-01", s, s)).collect();
    let beta: Vec<Event> = (1..=2).map(|s| beta_exec("web-01", s, s + 10)).collect();
    assert_eq!(
        store
            .append_events("web-01", Source::Alpha, &alpha)
            .unwrap()
            .inserted,
        3
    );
    assert_eq!(
        store
            .append_events("web-01", Source::Beta, &beta)
            .unwrap()
            .inserted,
        2
    );
    let again = store
        .append_events("web-01", Source::Beta, &beta[1..])
        .unwrap();
    assert_eq!(again.duplicates, vec![2]);
    assert_eq!(store.highest_seq("web-01", Source::Alpha).unwrap(), Some(3));
    assert_eq!(store.highest_seq("web-01", Source::Beta).unwrap(), Some(2));
    let stored = store.query_events(&EventQuery::default()).unwrap();
    let keys: Vec<(Source, u64)> = stored.iter().map(|e| (e.source, e.seq)).collect();
    assert_eq!(
        keys,
        vec![
            (Source::Alpha, 1),
            (Source::Alpha, 2),
            (Source::Alpha, 3),
            (Source::Beta, 1),
            (Source::Beta, 2)
        ]
    );
}

pub(super) fn cortex_made_events_may_stand_in_for_an_agent_but_other_agents_may_not(
    backend: &dyn Backend,
) {
    let store = backend.open();
    let mut finding = auth("web-01", 1, 1);
    finding.source = Source::Cortex;
    store
        .append_events("web-01", Source::Beta, &[finding])
        .unwrap();
    assert_eq!(store.highest_seq("web-01", Source::Beta).unwrap(), Some(1));
    assert!(matches!(
        store.append_events("web-01", Source::Beta, &[exec("web-01", 2, 2)]),
        Err(StoreError::AgentMismatch {
            expected: Source::Beta,
            found: Source::Alpha,
            seq: 2
        })
    ));
}

pub(super) fn concurrent_appends_are_all_durable_and_in_order_per_agent(backend: &dyn Backend) {
    let store = backend.open();
    let store = std::sync::Arc::new(store);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                let host = format!("host-{w}");
                let pending: Vec<PendingWrite> = (0..20u64)
                    .map(|b| {
                        let batch: Vec<Event> =
                            (1..=10).map(|i| exec(&host, b * 10 + i, i)).collect();
                        store.submit_events(&host, Source::Alpha, &batch).unwrap()
                    })
                    .collect();
                for append in pending {
                    assert_eq!(append.wait().unwrap().inserted, 10);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    drop(store);
    let reopened = backend.open();
    for w in 0..4 {
        let host = format!("host-{w}");
        assert_eq!(
            reopened.highest_seq(&host, Source::Alpha).unwrap(),
            Some(200)
        );
        let query = EventQuery {
            host: Some(host),
            limit: MAX_QUERY_LIMIT,
            ..Default::default()
        };
        assert_eq!(reopened.query_events(&query).unwrap().len(), 200);
    }
}

pub(super) fn a_bad_batch_stores_nothing(backend: &dyn Backend) {
    let store = backend.open();
    let mixed = vec![exec("web-01", 1, 1), exec("web-02", 2, 2)];
    assert!(matches!(
        store.append_events("web-01", Source::Alpha, &mixed),
        Err(StoreError::HostMismatch { seq: 2, .. })
    ));
    let invalid = vec![exec("web-01", 1, 1), exec("web-01", 0, 2)];
    assert!(matches!(
        store.append_events("web-01", Source::Alpha, &invalid),
        Err(StoreError::InvalidEvent { seq: 0, .. })
    ));
    let huge = vec![exec("web-01", u64::MAX, 1)];
    assert!(matches!(
        store.append_events("web-01", Source::Alpha, &huge),
        Err(StoreError::ValueTooLarge { field: "seq", .. })
    ));
    assert!(
        store
            .query_events(&EventQuery::default())
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.highest_seq("web-01", Source::Alpha).unwrap(), None);
}

pub(super) fn after_a_failed_commit_no_later_batch_of_that_agent_is_stored_until_it_resumes(
    backend: &dyn Backend,
) {
    let store = backend.open();
    let alpha = |first: u64, last: u64| -> Vec<Event> {
        (first..=last).map(|seq| exec("web-01", seq, seq)).collect()
    };
    store
        .append_events("web-01", Source::Alpha, &alpha(1, 2))
        .unwrap();
    backend.fail_inserts_of_seq(3);
    let failed = store.submit_events("web-01", Source::Alpha, &alpha(3, 4));
    // Submitted before the failure is known, like ingest's next batch.
    let later = store.submit_events("web-01", Source::Alpha, &alpha(5, 6));
    let failure = failed.unwrap().wait();
    assert!(
        matches!(
            failure,
            Err(StoreError::GroupCommit(_) | StoreError::Postgres(_))
        ),
        "{failure:?}"
    );
    backend.stop_failing();
    // Whether it shared the failed commit or came after it, the later batch is not stored:
    // storing it would leave seqs 3 and 4 behind the point the agent resumes from.
    assert!(later.unwrap().wait().is_err());
    let refused = store.append_events("web-01", Source::Alpha, &alpha(5, 6));
    assert!(
        matches!(refused, Err(StoreError::EarlierBatchFailed { .. })),
        "{refused:?}"
    );
    // Another agent of the host is not held up.
    let beta: Vec<Event> = (1..=2).map(|seq| beta_exec("web-01", seq, seq)).collect();
    store.append_events("web-01", Source::Beta, &beta).unwrap();
    // The agent's next session resumes after seq 2 and delivers from there.
    assert_eq!(store.highest_seq("web-01", Source::Alpha).unwrap(), Some(2));
    store
        .append_events("web-01", Source::Alpha, &alpha(3, 6))
        .unwrap();
    assert_eq!(store.highest_seq("web-01", Source::Alpha).unwrap(), Some(6));
    let stored = store.query_events(&EventQuery::default()).unwrap();
    assert_eq!(stored.len(), 6 + 2);
}

pub(super) fn queries_filter_by_host_time_and_kind(backend: &dyn Backend) {
    let store = backend.open();
    store
        .append_events(
            "web-01",
            Source::Alpha,
            &[
                exec("web-01", 1, 100),
                auth("web-01", 2, 200),
                exec("web-01", 3, 300),
            ],
        )
        .unwrap();
    store
        .append_events("db-01", Source::Alpha, &[auth("db-01", 1, 150)])
        .unwrap();
    let by_host = EventQuery {
        host: Some("web-01".into()),
        ..Default::default()
    };
    assert_eq!(seqs(&store.query_events(&by_host).unwrap()), vec![1, 2, 3]);
    let window = EventQuery {
        since_ns: Some(150),
        until_ns: Some(300),
        ..Default::default()
    };
    let hosts: Vec<String> = store
        .query_events(&window)
        .unwrap()
        .into_iter()
        .map(|e| format!("{}/{}", e.host_id, e.seq))
        .collect();
    assert_eq!(hosts, vec!["db-01/1", "web-01/2"]);
    let kinds = EventQuery {
        kinds: vec!["auth_failure".into()],
        limit: 1,
        ..Default::default()
    };
    let first_auth = store.query_events(&kinds).unwrap();
    assert_eq!(first_auth.len(), 1);
    assert_eq!(first_auth[0].host_id, "db-01");
}

pub(super) fn incidents_and_node_states_persist(backend: &dyn Backend) {
    let store = backend.open();
    store
        .put_incident(&incident("inc-1", "web-01", Severity::Critical, 10))
        .unwrap();
    store
        .put_incident(&incident("inc-2", "web-02", Severity::Low, 20))
        .unwrap();
    let mut resolved = incident("inc-1", "web-01", Severity::Critical, 30);
    resolved.status = IncidentStatus::Resolved;
    store.put_incident(&resolved).unwrap();
    let record = NodeStateRecord {
        host: "web-01".into(),
        state: NodeState::Critical,
        since_ns: 30,
        reason: "incident inc-1".into(),
        actor: "cortex".into(),
        incident_id: Some("inc-1".into()),
        audit_seq: 7,
    };
    store.put_node_state(&record).unwrap();
    drop(store);

    let store = backend.open();
    assert_eq!(store.incident("inc-1").unwrap(), Some(resolved));
    assert_eq!(store.incident("inc-9").unwrap(), None);
    let all = store.incidents(&IncidentQuery::default()).unwrap();
    assert_eq!(
        all.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        vec!["inc-1", "inc-2"]
    );
    let open_high = IncidentQuery {
        status: Some(IncidentStatus::Open),
        min_severity: Some(Severity::High),
        ..Default::default()
    };
    assert!(store.incidents(&open_high).unwrap().is_empty());
    assert_eq!(store.node_state("web-01").unwrap(), Some(record.clone()));
    assert_eq!(store.node_states().unwrap(), vec![record]);
}

pub(super) fn retention_deletes_by_age_then_oldest_by_size(backend: &dyn Backend) {
    let store = backend.open();
    let second = 1_000_000_000u64;
    let now = 10_000 * second;
    let batch: Vec<Event> = (1..=10)
        .map(|s| exec("web-01", s, now - (11 - s) * 100 * second))
        .collect();
    store
        .append_events("web-01", Source::Alpha, &batch)
        .unwrap();
    // Events 1..=3 are older than 750 s.
    let by_age = RetentionPolicy {
        max_age_s: Some(750),
        max_bytes: None,
    };
    let report = store.apply_retention(&by_age, now).unwrap();
    assert_eq!(report.deleted_by_age, 3);
    assert_eq!(report.remaining_events, 7);
    let per_event = report.remaining_bytes / 7;

    let by_size = RetentionPolicy {
        max_age_s: None,
        max_bytes: Some(per_event * 4 + per_event / 2),
    };
    let report = store.apply_retention(&by_size, now).unwrap();
    assert_eq!(report.deleted_by_size, 3);
    assert!(report.remaining_bytes <= per_event * 4 + per_event / 2);
    let left = store.query_events(&EventQuery::default()).unwrap();
    assert_eq!(seqs(&left), vec![7, 8, 9, 10]);
    // De-duplication state outlives the events.
    assert_eq!(
        store.highest_seq("web-01", Source::Alpha).unwrap(),
        Some(10)
    );
    let unchanged = store.apply_retention(&by_size, now).unwrap();
    assert_eq!(unchanged.deleted_by_size, 0);
}
