//! The respond stage: playbooks turn incidents into actions on the agents.
//!
//! ```text
//! pipeline worker ── on_incident ──▶ playbooks match? ─▶ resolve parameters from the evidence
//!                                      ─▶ guardrails (pid 1, cortex, agents, allow-lists, rate)
//!                                      ─▶ mode: dry_run → audited "would run"
//!                                               assisted → held (persisted) until approved,
//!                                                          denied or expired
//!                                               autonomous → dispatch queue
//! dispatcher task ── ActionRequest over qsc-channel ──▶ guardian-alpha of the host
//!                 ◀─ ActionReport ── result audited, latency measured, TTL rollback scheduled
//! ```
//!
//! Every request, approval, denial, expiry, dispatch, result and rollback is an audit record
//! (kind `action`, or `approval` for an operator's decision) and is persisted in the store, so
//! held actions and pending rollbacks survive a restart. The pipeline worker never waits for an
//! agent: sending and awaiting reports happen on the dispatcher's tasks.
//!
//! Hooks for other modules:
//! * [`Approvals`]: approve or deny a held action (API, CLI via the API, inbound webhooks).
//! * [`ResponseObserver`]: sees every incident and every action change (outbound SOAR webhooks).
//! * [`AgentLinks`]: ingest registers guardian-alpha sessions and hands back command results.
//! * [`KeyRotation`]: `rotate_keys` goes through the key lifecycle, which learns the new key.

pub mod config;
pub mod guard;
pub mod links;
pub mod metrics;
pub mod playbook;
mod recent;
pub mod record;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use qsc_channel::delivery::CommandStatus;
use qsc_event::{Action, ActionOutcome, ActionReport, ActionRequest, Event, mono_now_ns, now_ns};
use serde_json::json;
use tokio::sync::{mpsc, watch};

pub use config::{AllowConfig, Mode, RespondConfig, RespondConfigError};
pub use guard::{Cidr, Guardrails, Refusal};
pub use links::{AgentLinks, CommandRoute, LinkError, SessionTicket};
pub use metrics::RespondMetrics;
pub use playbook::{ActionSpec, Playbook, PlaybookError, Playbooks, Target};
use recent::RecentEvents;
pub use record::{ActionRecord, ActionStatus, Decision, Timeline};

use crate::audit::{AuditEntry, AuditError, AuditKind, AuditSink};
use crate::decide::{Approval, DecideError, NodeStateRecord, NodeStates};
use crate::score::Incident;
use crate::store::{ActionQuery, MAX_QUERY_LIMIT, Store, StoreError};

/// Evidence events kept per incident, newest first, to resolve action parameters.
const EVIDENCE_PER_INCIDENT: usize = 16;
/// Incidents whose evidence events are kept; the oldest is forgotten beyond it.
const EVIDENCE_INCIDENTS: usize = 10_000;
/// (incident, playbook) pairs remembered as fired; the oldest is forgotten beyond it.
const FIRED_MEMORY: usize = 100_000;
/// How often held actions are checked for expiry and done actions for their TTL.
const TICK: Duration = Duration::from_secs(1);
/// The `playbook` of an operator's release (not rate-limited).
const OPERATOR_PLAYBOOK: &str = "operator";
/// Longest operator name accepted.
const MAX_OPERATOR_LEN: usize = 128;

/// Sees every incident the pipeline decides on and every change of an action (the outbound
/// SOAR webhook plugs in here). Called on the pipeline worker and the dispatcher: an
/// implementation must not block — queue the item (bounded, counting drops) and deliver it on
/// its own task.
pub trait ResponseObserver: Send + Sync {
    /// An incident was opened or updated.
    fn incident(&self, incident: &Incident);
    /// An action was requested, held, decided, expired, dispatched, completed or rolled back.
    fn action(&self, record: &ActionRecord);
}

/// Carries out `rotate_keys` through the cortex's key lifecycle, which must learn the agent's
/// new key (a rotation it does not know about would lock the agent out at its next handshake).
/// Without one, playbook `rotate_keys` actions are refused.
pub trait KeyRotation: Send + Sync {
    /// Asks the host's guardian-alpha to rotate its key and waits until the rotation is
    /// complete (new key written, the agent's new session up with it): the agent's final
    /// report, or why the rotation could not be asked for or failed. The lifecycle audits the
    /// rotation's steps itself.
    fn rotate<'a>(
        &'a self,
        host: &'a str,
        actor: &'a str,
        reason: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<ActionReport, String>> + Send + 'a>>;
}

#[derive(Debug, thiserror::Error)]
pub enum RespondError {
    #[error(transparent)]
    Playbook(#[from] PlaybookError),
    #[error("loading the persisted response actions: {0}")]
    Store(#[from] StoreError),
}

/// Why an operator's approval or denial was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("an approval must name the operator (1..=128 printable characters)")]
    InvalidOperator,
    #[error("no held action has id {id}")]
    NotHeld { id: String },
    #[error("action {id} expired before it was decided")]
    Expired { id: String },
    #[error("the decision could not be audited, so it was not applied: {0}")]
    Audit(#[from] AuditError),
}

/// What an operator's release request did.
#[derive(Debug, Clone, PartialEq)]
pub enum ReleaseOutcome {
    /// Two-person release: this is the first approval; another operator must approve too.
    AwaitingSecond { first: String },
    /// The host is NOMINAL again and the agent was asked to release it.
    Released {
        node: NodeStateRecord,
        action: Box<ActionRecord>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("a release must name the operator (1..=128 printable characters)")]
    InvalidOperator,
    #[error(transparent)]
    Decide(#[from] DecideError),
    #[error("the release was audited but could not be stored: {0}")]
    Store(#[from] StoreError),
    #[error("the release approval could not be audited, so it was not recorded: {0}")]
    Audit(#[from] AuditError),
}

/// Why an operator's restore of an account was refused.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("a restore must name the operator (1..=128 printable characters)")]
    InvalidOperator,
    #[error(
        "`{0}` is not an account name (1..=32 letters, digits, `_`, `-` or `.`, not starting with `-`)"
    )]
    InvalidAccount(String),
}

/// One action on its way to an agent.
struct Job {
    action_id: String,
    host: String,
    request: ActionRequest,
}

#[derive(Default)]
struct State {
    /// Held, dispatched and rollback-pending actions, by id.
    active: HashMap<String, ActionRecord>,
    evidence: HashMap<String, VecDeque<Event>>,
    evidence_order: VecDeque<String>,
    fired: HashSet<(String, String)>,
    fired_order: VecDeque<(String, String)>,
    /// Two-person release: the first operator's approval, per host.
    release_approvals: HashMap<String, String>,
}

impl State {
    fn remember_evidence(&mut self, incident: &str, event: &Event) {
        if !self.evidence.contains_key(incident) {
            if self.evidence_order.len() >= EVIDENCE_INCIDENTS
                && let Some(oldest) = self.evidence_order.pop_front()
            {
                self.evidence.remove(&oldest);
            }
            self.evidence_order.push_back(incident.to_owned());
        }
        let events = self.evidence.entry(incident.to_owned()).or_default();
        events.push_front(event.clone());
        events.truncate(EVIDENCE_PER_INCIDENT);
    }

    /// Marks the playbook fired for the incident; false if it had fired already.
    fn fire(&mut self, incident: &str, playbook: &str) -> bool {
        let key = (incident.to_owned(), playbook.to_owned());
        if !self.fired.insert(key.clone()) {
            return false;
        }
        self.fired_order.push_back(key);
        if self.fired_order.len() > FIRED_MEMORY
            && let Some(oldest) = self.fired_order.pop_front()
        {
            self.fired.remove(&oldest);
        }
        true
    }
}

/// What the responder needs from the rest of the cortex.
pub struct ResponderParts {
    pub config: RespondConfig,
    pub playbooks: Playbooks,
    pub store: Arc<dyn Store>,
    pub nodes: Arc<Mutex<NodeStates>>,
    /// Where commands to agents go: this process's sessions, or the bus to a gateway's.
    pub links: Arc<dyn CommandRoute>,
    /// The channel listener's IP, never blocked.
    pub cortex_addr: Option<IpAddr>,
    /// Where `rotate_keys` goes (none: refused).
    pub key_rotation: Option<Arc<dyn KeyRotation>>,
}

impl ResponderParts {
    /// Parts over `store` and `nodes` with the defaults: the default respond config, no
    /// playbooks, no agent links, no protected cortex address and no key rotation. Callers
    /// override what differs with struct update syntax.
    pub fn for_store(store: Arc<dyn Store>, nodes: Arc<Mutex<NodeStates>>) -> Self {
        ResponderParts {
            config: RespondConfig::default(),
            playbooks: Playbooks::default(),
            store,
            nodes,
            links: Arc::new(AgentLinks::default()),
            cortex_addr: None,
            key_rotation: None,
        }
    }
}

/// The respond stage, shared by the pipeline worker, the dispatcher, the API and webhooks.
pub struct Responder {
    config: RespondConfig,
    playbooks: Playbooks,
    store: Arc<dyn Store>,
    audit: Arc<dyn AuditSink>,
    nodes: Arc<Mutex<NodeStates>>,
    links: Arc<dyn CommandRoute>,
    key_rotation: Option<Arc<dyn KeyRotation>>,
    metrics: RespondMetrics,
    observers: RwLock<Vec<Arc<dyn ResponseObserver>>>,
    guard: Mutex<Guardrails>,
    state: Mutex<State>,
    /// The newest analysed events, for the evidence events that did not trigger an incident.
    recent: Mutex<RecentEvents>,
    queue: mpsc::Sender<Job>,
    ids: AtomicU64,
}

/// Sends queued actions to the agents; run it with [`Dispatcher::run`].
pub struct Dispatcher {
    responder: Arc<Responder>,
    jobs: mpsc::Receiver<Job>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update replaces whole entries, so a poisoned lock still holds consistent data.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How many distinct operators approved `record` so far.
fn distinct_approvers(record: &ActionRecord) -> usize {
    let mut approvers: Vec<&str> = record
        .decisions
        .iter()
        .filter(|d| d.approve)
        .map(|d| d.operator.as_str())
        .collect();
    approvers.sort_unstable();
    approvers.dedup();
    approvers.len()
}

/// A local account name as shadow-utils accepts it (the agent looks it up in /etc/passwd).
fn valid_account(user: &str) -> Result<&str, RestoreError> {
    let valid = (1..=32).contains(&user.len())
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if valid {
        Ok(user)
    } else {
        Err(RestoreError::InvalidAccount(user.to_owned()))
    }
}

fn valid_operator(operator: &str) -> Option<&str> {
    let operator = operator.trim();
    (!operator.is_empty()
        && operator.len() <= MAX_OPERATOR_LEN
        && !operator.chars().any(char::is_control))
    .then_some(operator)
}

impl Responder {
    /// Builds the stage; actions still held or awaiting a rollback are taken over from the
    /// store, and actions that were in flight when the cortex stopped are marked failed.
    pub fn new(parts: ResponderParts) -> Result<(Arc<Responder>, Dispatcher), RespondError> {
        let audit = lock(&parts.nodes).audit();
        let (queue, jobs) = mpsc::channel(parts.config.dispatch_queue);
        let guard = Guardrails::new(
            parts.config.allow.clone(),
            parts.config.max_actions_per_minute,
            parts.cortex_addr,
        );
        let persisted = parts.store.actions(&ActionQuery {
            active_only: true,
            limit: MAX_QUERY_LIMIT,
            ..ActionQuery::default()
        })?;
        let responder = Arc::new(Responder {
            config: parts.config,
            playbooks: parts.playbooks,
            store: parts.store,
            audit,
            nodes: parts.nodes,
            links: parts.links,
            key_rotation: parts.key_rotation,
            metrics: RespondMetrics::default(),
            observers: RwLock::new(Vec::new()),
            guard: Mutex::new(guard),
            state: Mutex::new(State::default()),
            recent: Mutex::new(RecentEvents::default()),
            queue,
            ids: AtomicU64::new(now_ns() / 1000),
        });
        responder.take_over(persisted);
        let dispatcher = Dispatcher {
            responder: responder.clone(),
            jobs,
        };
        Ok((responder, dispatcher))
    }

    fn take_over(&self, persisted: Vec<ActionRecord>) {
        let mut state = lock(&self.state);
        for mut record in persisted {
            if record.status == ActionStatus::Dispatched {
                record.status = ActionStatus::Failed;
                record.detail = "the cortex stopped before the agent answered".into();
                let _ = self.commit(&record, "result", "cortex", AuditKind::Action);
                continue;
            }
            state.active.insert(record.id.clone(), record);
        }
    }

    /// Adds an observer of incidents and actions.
    pub fn add_observer(&self, observer: Arc<dyn ResponseObserver>) {
        self.observers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(observer);
    }

    /// The handle that approves or denies held actions.
    pub fn approvals(self: &Arc<Self>) -> Approvals {
        Approvals(self.clone())
    }

    /// The response metrics, in Prometheus text.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    pub fn metrics(&self) -> &RespondMetrics {
        &self.metrics
    }

    /// The loaded playbooks.
    pub fn playbooks(&self) -> &Playbooks {
        &self.playbooks
    }

    fn observers(&self) -> Vec<Arc<dyn ResponseObserver>> {
        self.observers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// The pipeline is about to analyse `events`, which `host_id` delivered: kept for a while
    /// (shared, not copied), so that playbooks can take parameters from the events an
    /// incident's evidence names besides the one that triggered it.
    pub fn on_events(&self, host_id: &str, events: Arc<[Event]>) {
        lock(&self.recent).push(host_id, events);
    }

    /// The pipeline decided on an incident, `trigger` being the event that updated it. Runs
    /// every playbook that matches it for the first time; never waits for an agent.
    pub fn on_incident(&self, incident: &Incident, trigger: Option<&Event>) {
        self.on_incident_at(incident, trigger, None);
    }

    /// [`Responder::on_incident`] for a trigger whose batch reached ingest at
    /// `arrived_mono_ns` (this host's `CLOCK_MONOTONIC`), kept in the actions' timelines.
    pub fn on_incident_at(
        &self,
        incident: &Incident,
        trigger: Option<&Event>,
        arrived_mono_ns: Option<u64>,
    ) {
        let timeline = Timeline {
            trigger_emitted_ns: trigger.map(|event| event.time_ns),
            arrived_mono_ns,
            decided_mono_ns: Some(mono_now_ns()),
            dispatched_mono_ns: None,
        };
        for observer in self.observers() {
            observer.incident(incident);
        }
        let mut state = lock(&self.state);
        if let Some(event) = trigger {
            state.remember_evidence(&incident.id, event);
        }
        let fired: Vec<&Playbook> = self
            .playbooks
            .matching(incident)
            .filter(|p| state.fire(&incident.id, &p.name))
            .collect();
        if fired.is_empty() {
            return;
        }
        let mut events: Vec<Event> = state
            .evidence
            .get(&incident.id)
            .map(|e| e.iter().cloned().collect())
            .unwrap_or_default();
        // A correlation's contributing events never triggered the incident themselves (the
        // connect of a reverse shell whose exec completed it): they follow the triggers.
        for event in lock(&self.recent).evidence_events(incident) {
            if !events
                .iter()
                .any(|e| e.host_id == event.host_id && e.seq == event.seq)
            {
                events.push(event);
            }
        }
        for playbook in fired {
            let target = Target::for_playbook(playbook, incident, &events);
            let mode = playbook.mode.unwrap_or(self.config.mode);
            tracing::warn!(
                playbook = %playbook.name,
                incident = %incident.id,
                host = %incident.host,
                mode = mode.as_str(),
                "playbook fired"
            );
            for spec in &playbook.actions {
                let mut record = self.request(playbook, mode, incident, spec, &target);
                record.timeline = timeline.clone();
                self.start(&mut state, record);
            }
        }
    }

    /// The record of one action a playbook asks for, before its mode applies.
    fn request(
        &self,
        playbook: &Playbook,
        mode: Mode,
        incident: &Incident,
        spec: &ActionSpec,
        target: &Target,
    ) -> ActionRecord {
        let now = now_ns();
        let mut record = ActionRecord {
            incident_id: Some(incident.id.clone()),
            mode,
            trigger_mono_ns: target.trigger_mono_ns,
            ..ActionRecord::fresh(
                format!("act-{}", self.next_id()),
                incident.host.clone(),
                playbook.name.clone(),
                spec.name().to_owned(),
                now,
            )
        };
        match spec.resolve(target) {
            Err(missing) => {
                record.status = ActionStatus::MissingParameter;
                record.detail = format!("the incident's evidence carries no {missing}");
            }
            Ok(None) => {
                record.status = ActionStatus::Notified;
                record.detail = incident.title.clone();
            }
            Ok(Some(action)) => {
                if let Err(refusal) = lock(&self.guard).check(&action, target) {
                    record.status = ActionStatus::Blocked;
                    record.detail = refusal.to_string();
                } else if action == Action::RotateKeys && self.key_rotation.is_none() {
                    record.status = ActionStatus::Blocked;
                    record.detail = "no key lifecycle is attached to carry out rotate_keys".into();
                }
                record.action = Some(action);
            }
        }
        record
    }

    /// Applies the record's mode to an action that passed its checks, then commits it.
    fn start(&self, state: &mut State, mut record: ActionRecord) {
        if record.status != ActionStatus::Dispatched {
            let _ = self.commit(&record, "requested", "cortex", AuditKind::Action);
            return;
        }
        match record.mode {
            Mode::DryRun => {
                record.status = ActionStatus::WouldRun;
                record.detail = "dry run: nothing was sent".into();
                let _ = self.commit(&record, "would_run", "cortex", AuditKind::Action);
            }
            Mode::Assisted => {
                record.status = ActionStatus::Held;
                record.expires_ns =
                    Some(record.requested_ns + self.config.hold_expiry_s * 1_000_000_000);
                if self
                    .commit(&record, "held", "cortex", AuditKind::Action)
                    .is_ok()
                {
                    state.active.insert(record.id.clone(), record);
                }
            }
            Mode::Autonomous => self.dispatch(state, record, "cortex"),
        }
    }

    /// Rate-limits and queues an action for its agent, then audits and persists it. The
    /// request is queued before its audit record is durable, so the agent acts while the
    /// cortex commits (two fsyncs that would otherwise delay every action); the state lock the
    /// caller holds keeps the agent's result from being recorded before the dispatch. When the
    /// audit chain refuses the dispatch record, the failure is logged and the result, when it
    /// comes, is audited as usual.
    fn dispatch(&self, state: &mut State, mut record: ActionRecord, actor: &str) {
        let now = now_ns();
        record.updated_ns = now;
        if record.playbook != OPERATOR_PLAYBOOK
            && record.rollback_of.is_none()
            && let Err(refusal) = lock(&self.guard).take_rate(&record.host, now)
        {
            record.status = ActionStatus::Blocked;
            record.detail = refusal.to_string();
            let _ = self.commit(&record, "blocked", actor, AuditKind::Action);
            return;
        }
        let Some(action) = record.action.clone() else {
            return;
        };
        record.status = ActionStatus::Dispatched;
        record.timeline.dispatched_mono_ns = Some(mono_now_ns());
        let job = Job {
            action_id: record.id.clone(),
            host: record.host.clone(),
            request: ActionRequest {
                action_id: record.id.clone(),
                action,
            },
        };
        if let Err(error) = self.queue.try_send(job) {
            record.status = ActionStatus::Failed;
            record.detail = match error {
                mpsc::error::TrySendError::Full(_) => "the dispatch queue is full",
                mpsc::error::TrySendError::Closed(_) => "the dispatcher has stopped",
            }
            .into();
            let _ = self.commit(&record, "result", "cortex", AuditKind::Action);
            return;
        }
        // Logged by `commit`; the request is already on its way.
        let _ = self.commit(&record, "dispatched", actor, AuditKind::Action);
        state.active.insert(record.id.clone(), record);
    }

    /// Audits, persists, counts and publishes one change of an action. When the audit chain
    /// refuses it (logged here), nothing else happens and the caller must not act on it.
    fn commit(
        &self,
        record: &ActionRecord,
        event: &str,
        actor: &str,
        kind: AuditKind,
    ) -> Result<(), AuditError> {
        let entry = AuditEntry {
            kind,
            actor: actor.to_owned(),
            body: json!({
                "event": event,
                "id": record.id,
                "host": record.host,
                "incident_id": record.incident_id,
                "playbook": record.playbook,
                "mode": record.mode,
                "name": record.name,
                "action": record.action,
                "status": record.status,
                "detail": record.detail,
                "latency_ns": record.latency_ns,
                "report": record.report,
                "rollback_of": record.rollback_of,
            }),
        };
        if let Err(error) = self.audit.record(entry) {
            tracing::error!(%error, id = %record.id, event, "response action not audited; not applied");
            return Err(error);
        }
        if let Err(error) = self.store.put_action(record) {
            tracing::error!(%error, id = %record.id, "response action audited but not stored");
        }
        self.metrics
            .count_status(&record.name, record.status.as_str());
        tracing::info!(
            id = %record.id,
            host = %record.host,
            action = %record.name,
            status = record.status.as_str(),
            detail = %record.detail,
            event,
            "response action"
        );
        for observer in self.observers() {
            observer.action(record);
        }
        Ok(())
    }

    /// An operator approves (`approve`) or denies a held action.
    pub fn decide(
        &self,
        action_id: &str,
        operator: &str,
        approve: bool,
        reason: &str,
    ) -> Result<ActionRecord, ApprovalError> {
        let operator = valid_operator(operator).ok_or(ApprovalError::InvalidOperator)?;
        let now = now_ns();
        let mut state = lock(&self.state);
        let held = state
            .active
            .get(action_id)
            .filter(|r| r.status == ActionStatus::Held)
            .cloned()
            .ok_or_else(|| ApprovalError::NotHeld {
                id: action_id.to_owned(),
            })?;
        if held.expires_ns.is_some_and(|e| e <= now) {
            self.expire(&mut state, held);
            return Err(ApprovalError::Expired {
                id: action_id.to_owned(),
            });
        }
        let mut record = held;
        record.decisions.push(Decision {
            operator: operator.to_owned(),
            approve,
            time_ns: now,
            reason: reason.to_owned(),
        });
        record.updated_ns = now;
        let actor = format!("operator:{operator}");
        if approve && self.config.two_person_approval && distinct_approvers(&record) < 2 {
            record.detail = format!("approved by {operator}; a second operator must approve");
            self.commit(&record, "approved_first", &actor, AuditKind::Approval)?;
            state.active.insert(record.id.clone(), record.clone());
            return Ok(record);
        }
        if !approve {
            record.status = ActionStatus::Denied;
            record.detail = format!("denied by {operator}");
            self.commit(&record, "denied", &actor, AuditKind::Approval)?;
            state.active.remove(action_id);
            return Ok(record);
        }
        self.audit.record(AuditEntry {
            kind: AuditKind::Approval,
            actor: actor.clone(),
            body: json!({"event": "approved", "id": record.id, "host": record.host,
                         "name": record.name, "reason": reason}),
        })?;
        state.active.remove(action_id);
        self.dispatch(&mut state, record, &actor);
        let current = state.active.get(action_id).cloned();
        drop(state);
        match current {
            Some(record) => Ok(record),
            None => {
                self.store
                    .action(action_id)
                    .ok()
                    .flatten()
                    .ok_or_else(|| ApprovalError::NotHeld {
                        id: action_id.to_owned(),
                    })
            }
        }
    }

    fn expire(&self, state: &mut State, mut record: ActionRecord) {
        state.active.remove(&record.id);
        record.status = ActionStatus::Expired;
        record.updated_ns = now_ns();
        record.detail = format!("no operator decided within {} s", self.config.hold_expiry_s);
        let _ = self.commit(&record, "expired", "cortex", AuditKind::Action);
    }

    /// Expires held actions whose time is up and rolls back done actions whose TTL ran out.
    pub fn tick(&self, now: u64) {
        let mut state = lock(&self.state);
        let expired: Vec<ActionRecord> = state
            .active
            .values()
            .filter(|r| r.status == ActionStatus::Held && r.expires_ns.is_some_and(|e| e <= now))
            .cloned()
            .collect();
        for record in expired {
            self.expire(&mut state, record);
        }
        let due: Vec<ActionRecord> = state
            .active
            .values()
            .filter(|r| r.rollback_due_ns.is_some_and(|d| d <= now))
            .cloned()
            .collect();
        for record in due {
            self.roll_back(&mut state, record);
        }
    }

    /// Sends the undo of a done block or isolation whose TTL ran out.
    fn roll_back(&self, state: &mut State, mut original: ActionRecord) {
        let undo = match &original.action {
            Some(Action::BlockIp { addr, .. }) => Action::UnblockIp { addr: *addr },
            Some(Action::Isolate { .. }) => Action::Release,
            _ => return,
        };
        let now = now_ns();
        let name = undo.name().to_owned();
        let rollback = ActionRecord {
            incident_id: original.incident_id.clone(),
            action: Some(undo),
            detail: format!("TTL of {} ran out", original.id),
            rollback_of: Some(original.id.clone()),
            ..ActionRecord::fresh(
                format!("act-{}", self.next_id()),
                original.host.clone(),
                "ttl".into(),
                name,
                now,
            )
        };
        original.rollback_due_ns = None;
        original.rolled_back_by = Some(rollback.id.clone());
        original.updated_ns = now;
        state.active.remove(&original.id);
        let _ = self.commit(&original, "rollback_due", "cortex", AuditKind::Action);
        self.dispatch(state, rollback, "cortex");
    }

    /// The agent answered (or did not) for an action the dispatcher sent.
    /// `answer` is the agent's status and body, or why none came.
    pub fn on_answer(&self, action_id: &str, answer: Result<links::CommandAnswer, String>) {
        let report = answer.and_then(|(status, body)| parse_report(action_id, status, &body));
        self.on_report(action_id, report);
    }

    /// The agent's report for an action in flight, or why none came.
    fn on_report(&self, action_id: &str, report: Result<ActionReport, String>) {
        let mut state = lock(&self.state);
        let Some(mut record) = state.active.remove(action_id) else {
            tracing::warn!(id = action_id, "answer for an action that is not in flight");
            return;
        };
        let now = now_ns();
        record.updated_ns = now;
        match report {
            Err(detail) => {
                record.status = ActionStatus::Failed;
                record.detail = detail;
            }
            Ok(report) => self.apply_report(&mut record, report, now),
        }
        if self
            .commit(&record, "result", "cortex", AuditKind::Action)
            .is_err()
        {
            return;
        }
        if record.status == ActionStatus::Done {
            self.after_done(&record);
        }
        if record.rollback_due_ns.is_some() {
            state.active.insert(record.id.clone(), record);
        }
    }

    fn apply_report(&self, record: &mut ActionRecord, report: ActionReport, now: u64) {
        record.status = match report.outcome {
            ActionOutcome::Done => ActionStatus::Done,
            ActionOutcome::Refused => ActionStatus::Refused,
            ActionOutcome::Failed => ActionStatus::Failed,
        };
        record.detail = report.detail.clone();
        if let Some(trigger) = record.trigger_mono_ns
            && let Some(latency) = report.done_mono_ns.checked_sub(trigger)
        {
            record.latency_ns = Some(latency);
            self.metrics.observe_latency(&record.name, latency);
        }
        let ttl_s = match record.action {
            Some(Action::BlockIp { ttl_s, .. } | Action::Isolate { ttl_s }) => ttl_s,
            _ => 0,
        };
        if record.status == ActionStatus::Done && ttl_s > 0 {
            record.rollback_due_ns = Some(now + ttl_s.saturating_mul(1_000_000_000));
        }
        record.report = Some(report);
    }

    /// Node-state consequences of a done isolation or TTL release.
    fn after_done(&self, record: &ActionRecord) {
        let transition = {
            let mut nodes = lock(&self.nodes);
            match (&record.action, &record.rollback_of) {
                (Some(Action::Isolate { .. }), _) => Some(nodes.on_isolated(
                    &record.host,
                    "cortex",
                    &format!(
                        "action {} (playbook {}) isolated the host",
                        record.id, record.playbook
                    ),
                )),
                (Some(Action::Release), Some(original)) => Some(nodes.ttl_release(
                    &record.host,
                    &format!(
                        "the isolation TTL of {original} ran out; {} released the host",
                        record.id
                    ),
                )),
                _ => None,
            }
        };
        match transition {
            Some(Ok(node)) => {
                if let Err(error) = self.store.put_node_state(&node) {
                    tracing::error!(%error, host = %node.host, "node state not stored");
                }
            }
            Some(Err(error)) => tracing::warn!(%error, id = %record.id, "node state unchanged"),
            None => {}
        }
    }

    /// An operator asks to release an ISOLATED host. With `two_person_release`, the first
    /// approval is recorded and a second, different operator completes the release.
    pub fn release(
        &self,
        host: &str,
        operator: &str,
        reason: &str,
    ) -> Result<ReleaseOutcome, ReleaseError> {
        let operator = valid_operator(operator).ok_or(ReleaseError::InvalidOperator)?;
        let mut state = lock(&self.state);
        let mut approvers = operator.to_owned();
        if self.config.two_person_release {
            match state.release_approvals.get(host) {
                Some(first) if first != operator => approvers = format!("{first}+{operator}"),
                _ => {
                    self.audit.record(AuditEntry {
                        kind: AuditKind::Approval,
                        actor: format!("operator:{operator}"),
                        body: json!({"event": "release_approval", "host": host,
                                     "approvals": 1, "needed": 2, "reason": reason}),
                    })?;
                    state
                        .release_approvals
                        .insert(host.to_owned(), operator.to_owned());
                    return Ok(ReleaseOutcome::AwaitingSecond {
                        first: operator.to_owned(),
                    });
                }
            }
        }
        let node = lock(&self.nodes).release(
            host,
            &Approval {
                operator: approvers.clone(),
                reason: reason.to_owned(),
            },
        )?;
        state.release_approvals.remove(host);
        self.store.put_node_state(&node)?;
        self.cancel_isolation_rollbacks(&mut state, host);
        let record = self.operator_record(
            host,
            Action::Release,
            format!("released by {approvers}: {reason}"),
        );
        let action = self.dispatch_for_operator(&mut state, record, &approvers);
        Ok(ReleaseOutcome::Released {
            node,
            action: Box::new(action),
        })
    }

    /// An operator restores `user`, whom a revocation locked on `host`: a `restore_credential`
    /// action goes to the host's agent at once, audited as the operator's. A revocation has
    /// no TTL; this is how it ends.
    pub fn restore_account(
        &self,
        host: &str,
        user: &str,
        operator: &str,
        reason: &str,
    ) -> Result<ActionRecord, RestoreError> {
        let operator = valid_operator(operator).ok_or(RestoreError::InvalidOperator)?;
        let user = valid_account(user)?;
        let record = self.operator_record(
            host,
            Action::RestoreCredential { user: user.into() },
            format!("account {user} restored by {operator}: {reason}"),
        );
        let mut state = lock(&self.state);
        Ok(self.dispatch_for_operator(&mut state, record, operator))
    }

    fn operator_record(&self, host: &str, action: Action, detail: String) -> ActionRecord {
        let name = action.name().to_owned();
        ActionRecord {
            action: Some(action),
            detail,
            ..ActionRecord::fresh(
                format!("act-{}", self.next_id()),
                host.to_owned(),
                OPERATOR_PLAYBOOK.into(),
                name,
                now_ns(),
            )
        }
    }

    /// Dispatches an operator's action and returns it as dispatched, or as it failed to queue
    /// (stored by `dispatch`).
    fn dispatch_for_operator(
        &self,
        state: &mut State,
        record: ActionRecord,
        operator: &str,
    ) -> ActionRecord {
        let requested = record.clone();
        self.dispatch(state, record, &format!("operator:{operator}"));
        state
            .active
            .get(&requested.id)
            .cloned()
            .or_else(|| self.store.action(&requested.id).ok().flatten())
            .unwrap_or(requested)
    }

    /// An operator released the host: its isolations need no TTL rollback any more.
    fn cancel_isolation_rollbacks(&self, state: &mut State, host: &str) {
        let ids: Vec<String> = state
            .active
            .values()
            .filter(|r| r.host == host && matches!(r.action, Some(Action::Isolate { .. })))
            .filter(|r| r.rollback_due_ns.is_some())
            .map(|r| r.id.clone())
            .collect();
        for id in ids {
            if let Some(mut record) = state.active.remove(&id) {
                record.rollback_due_ns = None;
                record.updated_ns = now_ns();
                record.detail = "released by an operator before its TTL ran out".into();
                let _ = self.commit(&record, "rollback_cancelled", "cortex", AuditKind::Action);
            }
        }
    }

    /// Held actions, newest first (in memory, as persisted).
    pub fn held(&self) -> Vec<ActionRecord> {
        let mut held: Vec<ActionRecord> = lock(&self.state)
            .active
            .values()
            .filter(|r| r.status == ActionStatus::Held)
            .cloned()
            .collect();
        held.sort_by_key(|r| std::cmp::Reverse(r.requested_ns));
        held
    }
}

/// The agent's report, checked against the action it answers.
fn parse_report(
    action_id: &str,
    status: CommandStatus,
    body: &[u8],
) -> Result<ActionReport, String> {
    let report: ActionReport = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the agent answered {status:?} with a body that is not an action report ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(256)])
        )
    })?;
    if report.action_id != action_id {
        return Err(format!(
            "the agent's report names action {} instead of {action_id}",
            report.action_id
        ));
    }
    Ok(report)
}

/// Approves or denies held actions: the API, the CLI (through the API) and inbound webhooks
/// use this one entry point, so every decision is validated and audited the same way.
#[derive(Clone)]
pub struct Approvals(Arc<Responder>);

impl Approvals {
    /// `approve` true runs the held action `action_id` (subject to the rate limit), false
    /// denies it; `operator` is recorded in the audit chain.
    pub fn decide(
        &self,
        action_id: &str,
        operator: &str,
        approve: bool,
    ) -> Result<ActionRecord, ApprovalError> {
        self.0.decide(action_id, operator, approve, "")
    }

    /// [`Approvals::decide`] with the operator's reason.
    pub fn decide_with_reason(
        &self,
        action_id: &str,
        operator: &str,
        approve: bool,
        reason: &str,
    ) -> Result<ActionRecord, ApprovalError> {
        self.0.decide(action_id, operator, approve, reason)
    }
}

impl Dispatcher {
    /// Sends queued actions (each on its own task, so a slow agent delays nobody else) and
    /// runs the expiry/TTL clock until shutdown.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let timeout = Duration::from_millis(self.responder.config.dispatch_timeout_ms);
        let mut clock = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                job = self.jobs.recv() => match job {
                    Some(job) => self.send(job, timeout),
                    None => return,
                },
                _ = clock.tick() => {
                    let responder = self.responder.clone();
                    let ticked = tokio::task::spawn_blocking(move || responder.tick(now_ns())).await;
                    if let Err(error) = ticked {
                        tracing::error!(%error, "response clock task failed");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    fn send(&self, job: Job, timeout: Duration) {
        let responder = self.responder.clone();
        if let (Action::RotateKeys, Some(rotation)) =
            (&job.request.action, responder.key_rotation.clone())
        {
            tokio::spawn(async move {
                let reason = format!("response action {}", job.action_id);
                let rotated =
                    tokio::time::timeout(timeout, rotation.rotate(&job.host, "cortex", &reason))
                        .await;
                let outcome = match rotated {
                    Ok(Ok(report)) => Ok(ActionReport {
                        action_id: job.action_id.clone(),
                        detail: format!("{} ({})", report.detail, report.action_id),
                        ..report
                    }),
                    Ok(Err(error)) => Err(error),
                    Err(_) => Err(format!(
                        "the key rotation did not complete within {} ms",
                        timeout.as_millis()
                    )),
                };
                let done = tokio::task::spawn_blocking(move || {
                    responder.on_report(&job.action_id, outcome)
                })
                .await;
                if let Err(error) = done {
                    tracing::error!(%error, "recording a key rotation hand-off failed");
                }
            });
            return;
        }
        tokio::spawn(async move {
            let answer = match serde_json::to_vec(&job.request) {
                Ok(body) => {
                    let id = responder.next_id();
                    let sent = responder.links.send(&job.host, id, &body, timeout).await;
                    sent.map_err(|e| e.to_string())
                }
                Err(error) => Err(format!("the action request could not be encoded: {error}")),
            };
            let done = tokio::task::spawn_blocking(move || {
                responder.on_answer(&job.action_id, answer);
            })
            .await;
            if let Err(error) = done {
                tracing::error!(%error, "recording an action result failed");
            }
        });
    }
}
