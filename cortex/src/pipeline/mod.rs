//! The analysis pipeline: a bounded queue feeds one worker thread that runs each validated
//! event through detection (Sigma rules), scoring (Bayesian fusion), decision (node state,
//! audited) and response (playbooks; see [`crate::respond`], which sends to agents on its own
//! tasks), persisting the incidents it opens or updates.
//!
//! Ingest queues events as soon as they are validated, while they are being stored, so a
//! decision never waits for the disk. One worker keeps every host's events in delivery order.
//! When the queue stays full for `pipeline.max_block_ms` the ingest session gives up on that
//! batch: it is stored all the same, only its analysis is skipped, and the skipped events are
//! counted.
//!
//! Analysis is idempotent per `(host, agent, seq)`: a batch whose store commit failed is
//! re-delivered by its agent, and the worker skips every event at or below the highest seq it
//! has already analysed for that agent, so no rule or correlation counts an event twice.

pub mod adopt;
pub mod anomaly;
pub mod hits;
pub mod rules;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender};
use qsc_event::{Event, EventKind, Source, mono_now_ns, now_ns};
use serde_json::json;

use crate::audit::{AuditEntry, AuditKind, AuditSink};

use crate::decide::NodeStates;
use crate::detect::Engine;
use crate::metrics::Metrics;
use crate::respond::Responder;
use crate::score::{Fusion, Incident, IncidentStatus, Severity};
use crate::store::{IncidentQuery, MAX_QUERY_LIMIT, PendingWrite, Store, StoreError};

/// Batches between two prunes of the scorer's expired evidence.
const PRUNE_EVERY_BATCHES: u64 = 1024;
/// How often an idle worker looks whether its incident writes are durable.
const SETTLE_POLL: Duration = Duration::from_millis(1);

/// Validated events of one agent, in delivery order.
#[derive(Debug)]
pub struct Batch {
    pub host_id: String,
    /// The agent whose delivery sequence the events' seqs are in (events the cortex made in
    /// place of a delivered one have source `cortex` but keep the agent's seq).
    pub agent: Source,
    /// Shared with the store, which encrypts them while the worker analyses them.
    pub events: Arc<[Event]>,
    /// When the batch reached ingest: the start of the decision latency.
    pub arrived: Instant,
    /// `arrived` as this host's `CLOCK_MONOTONIC` (the clock of kernel event timestamps), for
    /// the timelines of the actions the batch triggers.
    pub arrived_mono_ns: u64,
    /// When the batch was queued for analysis: the start of the analysis latency.
    pub queued: Instant,
    /// Told once the incidents the batch touched are durable (scale-out workers wait for it
    /// before they record the batch as detected); `None`: nobody waits.
    pub settled: Option<Sender<()>>,
}

/// What the worker is asked to do, in queue order.
pub enum Work {
    /// Analyse a batch.
    Analyse(Batch),
    /// Take hosts over from another worker (scale-out): rebuild their state from the store
    /// ([`Pipeline::adopt`]) before their next batch, then say so on `done`.
    Adopt(Adoption),
}

/// The hosts a worker takes over and where their detection stands.
pub struct Adoption {
    pub owns: adopt::HostFilter,
    pub detected: adopt::DetectedMarks,
    pub done: Sender<()>,
}

impl Batch {
    /// Events `agent` of `host_id` delivered, arrived at ingest at `arrived`, queued now.
    pub fn new(host_id: &str, agent: Source, events: Arc<[Event]>, arrived: Instant) -> Self {
        // `Instant` is CLOCK_MONOTONIC on Linux but opaque: step back from the clock's now.
        let since = u64::try_from(arrived.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Batch {
            host_id: host_id.to_owned(),
            agent,
            events,
            arrived,
            arrived_mono_ns: mono_now_ns().saturating_sub(since),
            queued: Instant::now(),
            settled: None,
        }
    }
}

/// The ingest side of the bounded queue.
#[derive(Clone)]
pub struct PipelineSender {
    tx: Sender<Work>,
    metrics: Arc<Metrics>,
    max_block: Duration,
}

/// Creates the bounded queue between ingest and the worker.
pub fn queue(
    capacity_batches: usize,
    max_block: Duration,
    metrics: Arc<Metrics>,
) -> (PipelineSender, Receiver<Work>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity_batches);
    (
        PipelineSender {
            tx,
            metrics,
            max_block,
        },
        rx,
    )
}

impl PipelineSender {
    /// Queues a batch, waiting at most `max_block` for room; a batch that does not fit is
    /// counted as dropped (it stays in the store, unanalysed).
    pub fn submit(&self, batch: Batch) {
        let count = batch.events.len() as u64;
        if count == 0 {
            return;
        }
        self.metrics
            .queue_depth_events
            .fetch_add(count, Ordering::Relaxed);
        let failure = match self.tx.send_timeout(Work::Analyse(batch), self.max_block) {
            Ok(()) => return,
            Err(SendTimeoutError::Timeout(_)) => "the detection queue stayed full",
            Err(SendTimeoutError::Disconnected(_)) => "the detection worker has stopped",
        };
        self.metrics
            .queue_depth_events
            .fetch_sub(count, Ordering::Relaxed);
        self.metrics
            .queue_dropped_events
            .fetch_add(count, Ordering::Relaxed);
        tracing::error!(events = count, "stored events not analysed: {failure}");
    }
}

impl PipelineSender {
    /// [`PipelineSender::submit`], then waits until the incidents the batch touched are
    /// durable; false when the batch was dropped or the worker stopped first.
    pub fn submit_and_wait(&self, mut batch: Batch) -> bool {
        let (settled, done) = crossbeam_channel::bounded(1);
        batch.settled = Some(settled);
        self.submit(batch);
        done.recv().is_ok()
    }

    /// Has the worker take over the hosts `owns` accepts, after everything queued before;
    /// returns once their state is rebuilt (false when the worker stopped first).
    pub fn adopt(&self, owns: adopt::HostFilter, detected: adopt::DetectedMarks) -> bool {
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let adoption = Adoption {
            owns,
            detected,
            done: done_tx,
        };
        self.tx.send(Work::Adopt(adoption)).is_ok() && done.recv().is_ok()
    }
}

/// Detection, scoring and decision state, owned by the worker.
pub struct Pipeline {
    engine: Engine,
    fusion: Fusion,
    nodes: Arc<Mutex<NodeStates>>,
    audit: Arc<dyn AuditSink>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// Current severity of every incident this cortex has seen, for the metrics.
    severities: HashMap<String, Severity>,
    /// Highest seq analysed per (host, agent): re-deliveries at or below it are skipped.
    analysed: HashMap<(String, Source), u64>,
    /// Decided batches whose incident writes are not yet durable, oldest first, with their
    /// event counts: the worker goes on deciding meanwhile, and the events count as analysed
    /// once their incidents are stored.
    unsettled: VecDeque<Unsettled>,
    batches: u64,
    /// The host anomaly baselines, when attached with `with_anomaly`.
    anomaly: Option<anomaly::AnomalyStage>,
    /// The respond stage, when attached with `with_responder`.
    responder: Option<Arc<Responder>>,
}

/// A decided batch whose incident writes are not all durable yet.
struct Unsettled {
    writes: Vec<PendingWrite>,
    events: u64,
    settled: Option<Sender<()>>,
}

impl Pipeline {
    /// Starts from the store's incidents (for the severity gauges).
    pub fn new(
        engine: Engine,
        fusion: Fusion,
        nodes: Arc<Mutex<NodeStates>>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let open = store.incidents(&IncidentQuery {
            status: Some(IncidentStatus::Open),
            limit: MAX_QUERY_LIMIT,
            ..IncidentQuery::default()
        })?;
        let severities: HashMap<String, Severity> =
            open.into_iter().map(|i| (i.id, i.severity)).collect();
        for severity in severities.values() {
            metrics.incident_severity(None, *severity);
        }
        let audit = nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .audit();
        Ok(Pipeline {
            engine,
            fusion,
            nodes,
            audit,
            store,
            metrics,
            severities,
            analysed: HashMap::new(),
            unsettled: VecDeque::new(),
            batches: 0,
            anomaly: None,
            responder: None,
        })
    }

    /// Hands every incident the worker decides on to the respond stage.
    pub fn with_responder(mut self, responder: Arc<Responder>) -> Self {
        self.responder = Some(responder);
        self
    }

    /// Processes batches until every sender is gone, then waits for its last writes.
    pub fn run(mut self, rx: Receiver<Work>) {
        loop {
            let next = if self.unsettled.is_empty() {
                rx.recv().ok()
            } else {
                match rx.recv_timeout(SETTLE_POLL) {
                    Ok(work) => Some(work),
                    Err(RecvTimeoutError::Timeout) => {
                        self.settle(false);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => None,
                }
            };
            match next {
                None => break,
                Some(Work::Analyse(batch)) => {
                    self.metrics
                        .queue_depth_events
                        .fetch_sub(batch.events.len() as u64, Ordering::Relaxed);
                    self.process(batch);
                }
                Some(Work::Adopt(adoption)) => self.take_over(adoption),
            }
        }
        self.settle(true);
        tracing::info!("detection pipeline drained and stopped");
    }

    /// Detects, scores and decides on each event of the batch not analysed before, then
    /// queues the writes of the incidents the batch touched (once each, in their latest form)
    /// without waiting for the disk.
    pub fn process(&mut self, mut batch: Batch) {
        let mut touched: Vec<Incident> = Vec::new();
        if let Some(responder) = &self.responder {
            responder.on_events(&batch.host_id, batch.events.clone());
        }
        let fresh = self.fresh_events(&batch);
        for event in fresh {
            self.audit_agent_action(event);
            for hit in self.engine.evaluate(event) {
                self.metrics.rule_hits.fetch_add(1, Ordering::Relaxed);
                match self.fusion.observe_hit(&hits::score_hit(&hit, event)) {
                    Ok(Some(incident)) => {
                        // Playbooks first: their actions go out before the node state's audit
                        // and store writes (which they do not read).
                        self.respond(&incident, Some(event), batch.arrived_mono_ns);
                        self.decide(&incident);
                        touched.retain(|i| i.id != incident.id);
                        touched.push(incident);
                    }
                    Ok(None) => {}
                    Err(error) => self.error("scoring a rule hit", &error),
                }
            }
        }
        self.anomaly_step(fresh, batch.arrived_mono_ns, &mut touched);
        // Every event of the batch is decided on now; persisting the incidents comes after.
        let count = batch.events.len() as u64;
        self.metrics
            .decision_latency
            .observe_n(batch.arrived.elapsed(), count);
        self.metrics
            .analysis_latency
            .observe_n(batch.queued.elapsed(), count);
        let mut writes = Vec::with_capacity(touched.len());
        for incident in &touched {
            match self.store.submit_incident(incident) {
                Ok(write) => writes.push(write),
                Err(error) => self.error("persisting an incident", &error),
            }
        }
        self.unsettled.push_back(Unsettled {
            writes,
            events: count,
            settled: batch.settled.take(),
        });
        self.settle(false);
        self.batches += 1;
        if self.batches.is_multiple_of(PRUNE_EVERY_BATCHES) {
            self.fusion.prune(now_ns());
        }
    }

    /// Counts the events of the oldest batches whose incident writes are over as analysed;
    /// with `wait`, waits for all of them.
    fn settle(&mut self, wait: bool) {
        while let Some(Unsettled { writes, events, .. }) = self.unsettled.front_mut() {
            let mut failures = Vec::new();
            writes.retain(|write| match write.try_wait() {
                None => true,
                Some(Ok(_)) => false,
                Some(Err(error)) => {
                    failures.push(error);
                    false
                }
            });
            let (open, count) = (writes.len(), *events);
            for error in failures {
                self.error("persisting an incident", &error);
            }
            if open > 0 && !wait {
                return;
            }
            if let Some(done) = self.unsettled.pop_front() {
                for write in done.writes {
                    if let Err(error) = write.wait() {
                        self.error("persisting an incident", &error);
                    }
                }
                if let Some(settled) = done.settled {
                    let _ = settled.send(());
                }
            }
            self.metrics
                .events_analysed
                .fetch_add(count, Ordering::Relaxed);
        }
    }

    /// The events of `batch` above the highest seq already analysed for its agent; advances
    /// that mark.
    fn fresh_events<'b>(&mut self, batch: &'b Batch) -> &'b [Event] {
        let mark = self
            .analysed
            .entry((batch.host_id.clone(), batch.agent))
            .or_insert(0);
        let skip = batch.events.iter().take_while(|e| e.seq <= *mark).count();
        if let Some(last) = batch.events.last() {
            *mark = (*mark).max(last.seq);
        }
        if skip > 0 {
            tracing::debug!(
                host_id = %batch.host_id,
                agent = ?batch.agent,
                skip,
                "re-delivered events already analysed"
            );
        }
        &batch.events[skip..]
    }

    /// Actions an agent took on its own (guardian-beta's auto-heal, guardian-alpha's TTL
    /// rollbacks and the steps it finishes after reporting an action done) go into the audit
    /// chain like the cortex's own actions.
    fn audit_agent_action(&self, event: &Event) {
        let Some((agent, mut body)) = agent_action(&event.kind) else {
            return;
        };
        body["action"] = json!(event.kind.name());
        body["host"] = json!(event.host_id);
        body["seq"] = json!(event.seq);
        if body["outcome"] == "failed" {
            tracing::warn!(host = %event.host_id, action = event.kind.name(), detail = %body["detail"], "an agent's own response step failed");
        }
        let entry = AuditEntry {
            kind: AuditKind::Action,
            actor: format!("agent:{agent}@{}", event.host_id),
            body,
        };
        if let Err(error) = self.audit.record(entry) {
            self.error("auditing an agent action", &error);
        }
    }

    fn decide(&mut self, incident: &Incident) {
        let previous = self
            .severities
            .insert(incident.id.clone(), incident.severity);
        self.metrics.incident_severity(previous, incident.severity);
        if previous.is_none() {
            tracing::warn!(
                id = %incident.id,
                host = %incident.host,
                severity = %incident.severity,
                confidence = incident.confidence,
                title = %incident.title,
                "incident opened"
            );
        }
        // The API's release handler shares the state machine; a poisoned lock still holds a
        // consistent map (each transition replaces one record whole).
        let decision = self
            .nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .on_incident(incident);
        match decision {
            Ok(Some(record)) => {
                self.metrics
                    .node_transitions
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(host = %record.host, state = %record.state, "node state changed");
                if let Err(error) = self.store.put_node_state(&record) {
                    self.error("persisting a node state", &error);
                }
            }
            Ok(None) => {}
            Err(error) => self.error("deciding on an incident", &error),
        }
    }

    /// Runs the playbooks on an incident; `trigger` is the event that updated it (none for an
    /// anomaly window), whose batch reached ingest at `arrived_mono_ns`.
    fn respond(&self, incident: &Incident, trigger: Option<&Event>, arrived_mono_ns: u64) {
        if let Some(responder) = &self.responder {
            responder.on_incident_at(incident, trigger, Some(arrived_mono_ns));
        }
    }

    fn error(&self, what: &str, error: &dyn std::error::Error) {
        self.metrics.pipeline_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%error, "pipeline failed {what}");
    }
}

/// What an agent did on its own, which the audit chain must hold beside the cortex's actions:
/// the agent's name and the details to record, for the events that report such an act.
fn agent_action(kind: &EventKind) -> Option<(&'static str, serde_json::Value)> {
    match kind {
        EventKind::HealDone(heal) | EventKind::HealFailed(heal) => Some((
            "guardian-beta",
            json!({"path": heal.path, "hash": heal.hash, "error": heal.error}),
        )),
        EventKind::ResponseRollback(rollback) => Some((
            "guardian-alpha",
            json!({
                "rollback": rollback.action,
                "reason": rollback.reason,
                "addr": rollback.addr,
                "outcome": rollback.outcome,
                "detail": rollback.detail,
            }),
        )),
        EventKind::ResponseFollowUp(step) => Some((
            "guardian-alpha",
            json!({
                "id": step.action_id,
                "name": step.action,
                "step": step.step,
                "outcome": step.outcome,
                "detail": step.detail,
            }),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::path::Path;

    use qsc_event::{AuthAttempt, EventKind};
    use zeroize::Zeroizing;

    use super::*;
    use crate::audit::AuditLog;
    use crate::config::DetectConfig;
    use crate::score::ScoreConfig;
    use crate::store::SqliteStore;

    pub(super) fn pipeline(dir: &std::path::Path) -> (Pipeline, Arc<Metrics>) {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open_with_key(&dir.join("cortex.db"), &[7u8; 32]).unwrap());
        let audit =
            AuditLog::open_with_key(&dir.join("audit.db"), &Zeroizing::new([9u8; 32]), 64).unwrap();
        let nodes = Arc::new(Mutex::new(NodeStates::new(Arc::new(audit), Vec::new())));
        let (engine, _) = rules::load_engine(&DetectConfig::default()).unwrap();
        let fusion = Fusion::new(ScoreConfig::default()).unwrap();
        let metrics = Arc::new(Metrics::default());
        let pipeline = Pipeline::new(engine, fusion, nodes, store, metrics.clone()).unwrap();
        (pipeline, metrics)
    }

    pub(super) fn failed_login(source: Source, seq: u64) -> Event {
        Event::new(
            "web-01",
            source,
            seq,
            EventKind::AuthFailure(AuthAttempt {
                user: "root".into(),
                remote_ip: Some(IpAddr::from([203, 0, 113, 7])),
                service: "sshd".into(),
                detail: None,
            }),
        )
    }

    pub(super) fn batch(source: Source, seqs: std::ops::RangeInclusive<u64>) -> Batch {
        let events: Arc<[Event]> = seqs.map(|seq| failed_login(source, seq)).collect();
        Batch::new("web-01", source, events, Instant::now())
    }

    pub(super) fn hits(metrics: &Metrics) -> u64 {
        metrics.rule_hits.load(Ordering::Relaxed)
    }

    #[test]
    fn re_delivered_events_are_not_counted_twice_by_rules_or_correlations() {
        let dir = tempfile::tempdir().unwrap();
        let (mut pipeline, metrics) = pipeline(dir.path());
        // Five failed logins within 5 min from one address complete the
        // `qsc-auth-failures-burst` correlation (its building block reports nothing itself).
        pipeline.process(batch(Source::Alpha, 1..=3));
        // Seqs 1..=3 again (their commit failed, the agent re-sent them) and a new seq 4:
        // four distinct failures, so no burst yet.
        pipeline.process(batch(Source::Alpha, 1..=4));
        assert_eq!(hits(&metrics), 0);
        pipeline.process(batch(Source::Alpha, 5..=5));
        assert!(hits(&metrics) >= 1, "the fifth failure completes the burst");
        pipeline.settle(true);
        assert_eq!(metrics.events_analysed.load(Ordering::Relaxed), 3 + 4 + 1);
    }

    #[test]
    fn incidents_reach_the_respond_stage_with_their_triggering_event() {
        use crate::respond::{ActionStatus, Playbooks, Responder, ResponderParts};
        use crate::score::config::HostClass;
        use crate::store::ActionQuery;

        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open_with_key(&dir.path().join("cortex.db"), &[7u8; 32]).unwrap(),
        );
        let audit =
            AuditLog::open_with_key(&dir.path().join("audit.db"), &Zeroizing::new([9u8; 32]), 64)
                .unwrap();
        let nodes = Arc::new(Mutex::new(NodeStates::new(Arc::new(audit), Vec::new())));
        let (engine, _) = rules::load_engine(&DetectConfig::default()).unwrap();
        // A host so exposed that one burst of failed logins makes an incident.
        let mut score = ScoreConfig::default();
        score
            .host_classes
            .insert("exposed".into(), HostClass { prior: 0.5 });
        score.hosts.insert("web-01".into(), "exposed".into());
        let fusion = Fusion::new(score).unwrap();
        let metrics = Arc::new(Metrics::default());
        let book = "name: block-brute-force\nmode: dry_run\nmatch:\n  rules: [qsc-auth-failures-burst]\n\
                    actions:\n  - action: block_ip\n    ttl_s: 60\n";
        let (responder, _dispatcher) = Responder::new(ResponderParts {
            playbooks: Playbooks::parse_all(&[("t.yml".into(), book.into())]).unwrap(),
            ..ResponderParts::for_store(store.clone(), nodes.clone())
        })
        .unwrap();
        let mut pipeline = Pipeline::new(engine, fusion, nodes, store.clone(), metrics)
            .unwrap()
            .with_responder(responder);
        pipeline.process(batch(Source::Alpha, 1..=5));
        let actions = store.actions(&ActionQuery::default()).unwrap();
        assert_eq!(actions.len(), 1, "{actions:#?}");
        assert_eq!(actions[0].status, ActionStatus::WouldRun);
        assert_eq!(
            actions[0].action,
            Some(qsc_event::Action::BlockIp {
                addr: IpAddr::from([203, 0, 113, 7]),
                ttl_s: 60
            })
        );
    }

    #[test]
    fn an_agent_heal_goes_into_the_audit_chain_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut pipeline, _) = pipeline(dir.path());
        let heal = Event::new(
            "web-01",
            Source::Beta,
            1,
            EventKind::HealDone(qsc_event::Heal {
                path: "/etc/app.conf".into(),
                hash: Some("abc".into()),
                error: None,
            }),
        );
        let events: Arc<[Event]> = vec![heal].into();
        pipeline.process(Batch::new(
            "web-01",
            Source::Beta,
            events.clone(),
            Instant::now(),
        ));
        // Re-delivered after a lost ack: not audited twice.
        pipeline.process(Batch::new("web-01", Source::Beta, events, Instant::now()));
        let heals = audited_actions(dir.path());
        assert_eq!(heals.len(), 1, "{heals:?}");
        let (actor, body) = &heals[0];
        assert_eq!(actor, "agent:guardian-beta@web-01");
        assert_eq!(body["path"], "/etc/app.conf");
        assert_eq!(body["action"], "heal_done");
    }

    #[test]
    fn an_agents_own_rollback_and_follow_up_step_go_into_the_audit_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (mut pipeline, _) = pipeline(dir.path());
        let rollback = EventKind::ResponseRollback(qsc_event::ResponseRollback {
            action: "unblock_ip".into(),
            reason: "ttl_expired".into(),
            addr: Some(IpAddr::from([127, 0, 0, 2])),
            outcome: qsc_event::ActionOutcome::Done,
            detail: "unblocked".into(),
        });
        let follow_up = EventKind::ResponseFollowUp(qsc_event::ResponseFollowUp {
            action_id: "act-7".into(),
            action: "revoke_credential".into(),
            step: "persist".into(),
            outcome: qsc_event::ActionOutcome::Failed,
            detail: "/etc/shadow is read-only".into(),
        });
        let events: Arc<[Event]> = [rollback, follow_up]
            .into_iter()
            .zip(1..)
            .map(|(kind, seq)| Event::new("web-01", Source::Alpha, seq, kind))
            .collect();
        pipeline.process(Batch::new("web-01", Source::Alpha, events, Instant::now()));
        let actions = audited_actions(dir.path());
        assert_eq!(actions.len(), 2, "{actions:?}");
        for (actor, _) in &actions {
            assert_eq!(actor, "agent:guardian-alpha@web-01");
        }
        let (_, rollback) = &actions[0];
        assert_eq!(rollback["action"], "response_rollback");
        assert_eq!(rollback["rollback"], "unblock_ip");
        assert_eq!(rollback["addr"], "127.0.0.2");
        assert_eq!(rollback["outcome"], "done");
        let (_, step) = &actions[1];
        assert_eq!(step["action"], "response_follow_up");
        assert_eq!(step["id"], "act-7");
        assert_eq!(step["step"], "persist");
        assert_eq!(step["outcome"], "failed");
        assert_eq!(step["detail"], "/etc/shadow is read-only");
    }

    /// The actor and body of each `action` record of the pipeline's audit chain.
    fn audited_actions(dir: &Path) -> Vec<(String, serde_json::Value)> {
        let audit =
            AuditLog::open_with_key(&dir.join("audit.db"), &Zeroizing::new([9u8; 32]), 64).unwrap();
        audit
            .records(0, u64::MAX)
            .unwrap()
            .into_iter()
            .filter(|r| r.kind == "action")
            .map(|r| (r.actor, serde_json::from_str(&r.body).unwrap()))
            .collect()
    }

    #[test]
    fn the_agents_of_a_host_have_their_own_analysis_marks() {
        let dir = tempfile::tempdir().unwrap();
        let (mut pipeline, metrics) = pipeline(dir.path());
        // Three failures reported by alpha and two by beta under the same seqs: five distinct
        // events, which complete the burst.
        pipeline.process(batch(Source::Alpha, 1..=3));
        pipeline.process(batch(Source::Beta, 1..=2));
        assert!(hits(&metrics) >= 1);
    }

    #[test]
    fn the_worker_analyses_everything_queued_before_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (pipeline, metrics) = pipeline(dir.path());
        let (sender, queue) = queue(8, Duration::from_secs(1), metrics.clone());
        let worker = std::thread::spawn(move || pipeline.run(queue));
        sender.submit(batch(Source::Alpha, 1..=10));
        drop(sender);
        worker.join().unwrap();
        assert_eq!(metrics.events_analysed.load(Ordering::Relaxed), 10);
        assert!(hits(&metrics) >= 1, "the burst correlation fired");
    }
}
