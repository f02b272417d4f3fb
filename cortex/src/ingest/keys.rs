//! The key lifecycle in the running cortex: live sessions by key, rotation over the live
//! session, and closing the session of a key that is no longer admitted.
//!
//! * Access: the channel allow-list and the ingest bindings are rebuilt from the agents file and
//!   the key records whenever either changes (the records are polled every [`KEYS_POLL`]);
//!   sessions of keys no longer admitted (revoked, retired) are closed at once, and their next
//!   message would be refused anyway (their binding is gone).
//! * Rotation ([`AgentDirectory::request_rotation`]): the cortex sends the agent's live session
//!   an `ActionRequest` with `rotate_keys`; the agent's `ActionReport` carries the new public
//!   key. The cortex enrolls it (GENERATED → DISTRIBUTED → ACTIVE), moves the old key to
//!   ROTATING (emergency: REVOKED) and closes the session. The agent reconnects with the new key,
//!   which retires the old one. Events the old session had not acknowledged are re-sent on the
//!   new one and de-duplicated. Once the records file holds the new key durably, the agent gets
//!   `key-recorded <key>` and drops its retired key file.
//! * Completion: the agent sends the rotation's final `ActionReport` first thing on its new
//!   session, whose handshake proved that the cortex took the new key; its `done_mono_ns` is
//!   when that handshake completed. [`AgentDirectory::rotate_and_wait`] (playbook
//!   `rotate_keys`) returns that report once the records are saved too ([`settling`]); a failed
//!   save fails the rotation.
//! * Requests from `cortex keys rotate` wait in the records file until the agent is connected;
//!   with `[keys] max_key_age_s` set, an ACTIVE key older than that is rotated (scheduled).
//!
//! Rotation commands use ids from [`ROTATION_COMMAND_IDS`] up, so their answers never match a
//! response action's numeric id.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant, SystemTime};

use qsc_channel::delivery::{AgentIdentity, CommandSender, CommandStatus, SessionCloser};
use qsc_channel::keys::PublicKeyBytes;
use qsc_channel::uplink::rotation::key_recorded_command;
use qsc_event::{Action, ActionOutcome, ActionReport, ActionRequest, Source, now_ns};
use serde_json::json;
use tokio::sync::{oneshot, watch};

use super::AgentDirectory;
use super::agents::AgentsFile;
use crate::audit::{AuditEntry, AuditKind, AuditSink};
use crate::keys::{
    Cause, KeyRecords, KeyStore, KeysError, RotationRequest, audit_entries, source_name,
};

mod settling;
use settling::Settling;

/// How often the running cortex looks at the key records file.
pub const KEYS_POLL: Duration = Duration::from_millis(200);
/// First command id of rotation commands (the upper half of the id space).
pub const ROTATION_COMMAND_IDS: u64 = 1 << 63;
/// A scheduled rotation that did not happen (agent away, failed) is retried after this.
const SCHEDULED_RETRY: Duration = Duration::from_secs(60);

/// A connected agent session.
struct LiveSession {
    host_id: String,
    key: PublicKeyBytes,
    sender: CommandSender,
    closer: SessionCloser,
}

/// A rotation sent to an agent and not answered yet.
#[derive(Clone, Debug)]
struct InFlight {
    host_id: String,
    source: Source,
    old_key: PublicKeyBytes,
    emergency: bool,
    actor: String,
    reason: String,
}

/// One rotation to ask an agent for: whose key, how, by whom and why.
#[derive(Clone, Copy, Debug)]
pub struct RotationOrder<'a> {
    pub host_id: &'a str,
    /// Which of the host's agents rotates.
    pub source: Source,
    /// Revoke the old key at once instead of retiring it after the agent reconnected.
    pub emergency: bool,
    /// Who asked (audited).
    pub actor: &'a str,
    /// Why (audited).
    pub reason: &'a str,
}

/// Where the outcome of a rotation goes once the agent completed it (or it failed).
type Waiter = oneshot::Sender<Result<ActionReport, String>>;

/// Registration of one session, returned by [`AgentDirectory::session_started`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTicket(u64);

/// Live sessions of one cortex.
#[derive(Default)]
pub(super) struct Sessions {
    next: AtomicU64,
    live: Mutex<HashMap<u64, LiveSession>>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, LiveSession>> {
        // Entries are inserted and removed whole, so a poisoned map is still consistent.
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Closes every session whose key fails `admitted`; returns how many.
    fn close_unless(&self, admitted: impl Fn(&PublicKeyBytes) -> bool, reason: &str) -> usize {
        let live = self.lock();
        let mut closed = 0;
        for session in live.values().filter(|s| !admitted(&s.key)) {
            tracing::warn!(host_id = %session.host_id, key_id = %session.key.key_id(), reason, "closing agent session");
            session.closer.close(reason);
            closed += 1;
        }
        closed
    }

    fn sender_for(&self, key: &PublicKeyBytes) -> Option<CommandSender> {
        self.lock()
            .values()
            .find(|s| s.key == *key)
            .map(|s| s.sender.clone())
    }
}

/// The key records of a running cortex, and what is in progress.
pub struct KeyLifecycle {
    store: KeyStore,
    max_key_age: Option<Duration>,
    in_flight: Mutex<HashMap<String, InFlight>>,
    /// New keys durably recorded whose agent was not connected to be told (`key-recorded`,
    /// sent when the key's session starts).
    recorded_unsent: Mutex<HashSet<PublicKeyBytes>>,
    /// Rotations whose records are being saved or whose agent has not answered yet.
    settling: Mutex<Settling>,
    /// Callers of [`AgentDirectory::rotate_and_wait`], by rotation action id, with the host
    /// whose agent alone may complete the rotation.
    waiters: Mutex<HashMap<String, (String, Waiter)>>,
    next_action: AtomicU64,
    modified: Mutex<Option<SystemTime>>,
    /// When each agent's key was last put up for scheduled rotation.
    scheduled: Mutex<HashMap<(String, Source), Instant>>,
    /// The lifecycle's audit records, written in the order they were queued.
    audit: AuditQueue,
}

/// Writes audit records on a thread of its own, in the order they were queued: a rotation's
/// steps (its request, the agent's answer, the retirement of the replaced key) are queued where
/// they happen, so they are in the chain in that order, while neither the session, the
/// dispatcher nor the records' updates wait for the chain's commits.
struct AuditQueue {
    jobs: mpsc::Sender<AuditJob>,
}

struct AuditJob {
    entries: Vec<AuditEntry>,
    /// Told once the entries are written (or failed, which is logged).
    written: Option<mpsc::Sender<()>>,
}

impl AuditQueue {
    fn start(audit: Arc<dyn AuditSink>) -> Result<Self, KeysError> {
        let (jobs, queued) = mpsc::channel::<AuditJob>();
        std::thread::Builder::new()
            .name("key-audit".into())
            .spawn(move || {
                for job in queued {
                    for entry in job.entries {
                        if let Err(error) = audit.record(entry) {
                            tracing::error!(%error, "could not audit a key lifecycle step");
                        }
                    }
                    if let Some(written) = job.written {
                        let _ = written.send(());
                    }
                }
            })
            .map_err(KeysError::AuditThread)?;
        Ok(AuditQueue { jobs })
    }

    /// Queues `entries` behind everything queued before.
    fn queue(&self, entries: Vec<AuditEntry>) {
        self.send(AuditJob {
            entries,
            written: None,
        });
    }

    /// Queues `entries` and waits until they are written.
    fn write(&self, entries: Vec<AuditEntry>) {
        let (written, done) = mpsc::channel();
        self.send(AuditJob {
            entries,
            written: Some(written),
        });
        let _ = done.recv();
    }

    fn send(&self, job: AuditJob) {
        if self.jobs.send(job).is_err() {
            tracing::error!(
                "the key audit thread has stopped; a key lifecycle step is not audited"
            );
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update replaces whole entries, so a poisoned lock still holds a consistent value.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Tells the agent on `sender` that the records hold its new `key` durably (it drops its
/// retired key). Call from inside the runtime.
fn send_key_recorded(lifecycle: &KeyLifecycle, key: PublicKeyBytes, sender: CommandSender) {
    let id = ROTATION_COMMAND_IDS | lifecycle.next_action.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        if sender.send(id, &key_recorded_command(&key)).await.is_err() {
            tracing::warn!(key_id = %key.key_id(), "session ended before the key-recorded command");
        }
    });
}

impl KeyLifecycle {
    /// `max_key_age`: rotate ACTIVE keys older than this (scheduled rotation); None: never.
    pub fn new(
        store: KeyStore,
        audit: Arc<dyn AuditSink>,
        max_key_age: Option<Duration>,
    ) -> Result<Self, KeysError> {
        Ok(KeyLifecycle {
            store,
            audit: AuditQueue::start(audit)?,
            max_key_age,
            in_flight: Mutex::new(HashMap::new()),
            recorded_unsent: Mutex::new(HashSet::new()),
            settling: Mutex::new(Settling::default()),
            waiters: Mutex::new(HashMap::new()),
            next_action: AtomicU64::new(1),
            modified: Mutex::new(None),
            scheduled: Mutex::new(HashMap::new()),
        })
    }

    /// Audits the transitions of a change made outside a rotation; returns once written.
    fn audit_events(&self, events: &[crate::keys::KeyEvent]) {
        self.audit.write(audit_entries(events));
    }

    /// Queues the audit of a rotation's transitions behind its earlier steps.
    fn queue_audit_events(&self, events: &[crate::keys::KeyEvent]) {
        self.audit.queue(audit_entries(events));
    }

    /// Queues the audit of a rotation step that is not a state transition (requested, failed,
    /// abandoned).
    fn audit_rotation(&self, actor: &str, body: serde_json::Value) {
        self.audit.queue(vec![AuditEntry {
            kind: AuditKind::KeyEvent,
            actor: actor.to_owned(),
            body,
        }]);
    }

    /// Hands the outcome of rotation `action_id` of `host_id` to its waiter, if it has one;
    /// true if it had.
    fn finish(
        &self,
        host_id: &str,
        action_id: &str,
        outcome: Result<ActionReport, String>,
    ) -> bool {
        let mut waiters = lock(&self.waiters);
        let Some((host, _)) = waiters.get(action_id) else {
            return false;
        };
        if host != host_id {
            return false;
        }
        match waiters.remove(action_id) {
            // A waiter that gave up (timed out) no longer listens; nothing is lost.
            Some((_, waiter)) => {
                let _ = waiter.send(outcome);
                true
            }
            None => false,
        }
    }

    /// Whether a scheduled rotation of this agent may be tried now (at most every
    /// [`SCHEDULED_RETRY`] while its key stays due).
    fn schedule_due(&self, host_id: &str, source: Source) -> bool {
        let mut scheduled = lock(&self.scheduled);
        let key = (host_id.to_owned(), source);
        if scheduled
            .get(&key)
            .is_some_and(|at| at.elapsed() < SCHEDULED_RETRY)
        {
            return false;
        }
        scheduled.insert(key, Instant::now());
        true
    }

    /// Whether the records file changed since the last look (and remembers the new time).
    fn file_changed(&self) -> bool {
        let modified = std::fs::metadata(self.store.path())
            .and_then(|m| m.modified())
            .ok();
        let mut seen = lock(&self.modified);
        let changed = *seen != modified;
        *seen = modified;
        changed
    }
}

impl AgentDirectory {
    /// Adds the key records: enrolled keys get records, and access follows their states.
    pub fn with_lifecycle(mut self, lifecycle: KeyLifecycle) -> Result<Self, KeysError> {
        self.lifecycle = Some(Arc::new(lifecycle));
        let agents = self.agents_snapshot();
        self.refresh_access(&agents)?;
        Ok(self)
    }

    fn agents_snapshot(&self) -> AgentsFile {
        super::read_lock(&self.agents).clone()
    }

    /// Rebuilds the allow-list and bindings (syncing the records with the agents file first)
    /// and closes the sessions of keys no longer admitted.
    pub(super) fn refresh_access(&self, agents: &AgentsFile) -> Result<(), KeysError> {
        let Some(lifecycle) = &self.lifecycle else {
            self.install_access(agents.allow_list(), agents.bindings());
            return Ok(());
        };
        let cause = Cause::new("cortex", "agents file", now_ns());
        let (events, records) = lifecycle
            .store
            .update(|records| Ok(records.sync(agents, &cause)))?;
        lifecycle.audit_events(&events);
        self.install_records(agents, &records);
        Ok(())
    }

    fn install_records(&self, agents: &AgentsFile, records: &KeyRecords) {
        let (allow_list, bindings) = records.access(agents);
        self.install_access(allow_list, bindings);
    }

    fn install_access(
        &self,
        allow_list: qsc_channel::keys::AllowList,
        bindings: HashMap<PublicKeyBytes, super::agents::Binding>,
    ) {
        *super::write_lock(&self.allow_list) = allow_list;
        *super::write_lock(&self.bindings) = bindings;
        let bindings = super::read_lock(&self.bindings);
        self.sessions.close_unless(
            |key| bindings.contains_key(key),
            "its key is no longer admitted (revoked or retired)",
        );
    }

    /// Revokes `host_id`'s keys (one agent's with `source`) in the records, audits the
    /// transitions and closes their live sessions at once (`POST /api/keys/{host}/revoke`).
    pub fn revoke_keys(
        &self,
        host_id: &str,
        source: Option<Source>,
        cause: &Cause,
    ) -> Result<Vec<crate::keys::KeyEvent>, KeysError> {
        let lifecycle = self
            .lifecycle
            .as_ref()
            .ok_or(KeysError::LifecycleDisabled)?;
        let agents = self.agents_snapshot();
        let (events, records) = lifecycle.store.update(|records| {
            let mut events = records.sync(&agents, cause);
            events.extend(records.revoke_host(host_id, source, cause)?);
            Ok(events)
        })?;
        lifecycle.audit_events(&events);
        self.install_records(&agents, &records);
        Ok(events)
    }

    /// Registers a session that just passed the handshake. A key that replaced a rotating one
    /// retires it, and its agent is told when the records hold it durably.
    pub fn session_started(
        &self,
        identity: &AgentIdentity,
        sender: CommandSender,
        closer: SessionCloser,
    ) -> SessionTicket {
        let ticket = SessionTicket(self.sessions.next.fetch_add(1, Ordering::Relaxed));
        self.sessions.lock().insert(
            ticket.0,
            LiveSession {
                host_id: identity.host_id.clone(),
                key: identity.public_key,
                sender: sender.clone(),
                closer,
            },
        );
        if let Some(lifecycle) = &self.lifecycle {
            self.settle_rotated_key(lifecycle, identity, sender);
        }
        ticket
    }

    fn settle_rotated_key(
        &self,
        lifecycle: &KeyLifecycle,
        identity: &AgentIdentity,
        sender: CommandSender,
    ) {
        let key = identity.public_key;
        if lock(&lifecycle.recorded_unsent).remove(&key) {
            send_key_recorded(lifecycle, key, sender);
        }
        // Retiring the replaced key writes the records file and the audit chain (fsyncs): off
        // the session's start, so the session runs meanwhile.
        let directory = self.clone();
        let host_id = identity.host_id.clone();
        tokio::task::spawn_blocking(move || directory.retire_replaced(&key, &host_id));
    }

    /// `key` is in use: the key it replaced (ROTATING) is RETIRED.
    fn retire_replaced(&self, key: &PublicKeyBytes, host_id: &str) {
        let Some(lifecycle) = &self.lifecycle else {
            return;
        };
        // Its audit is queued behind the rotation's that made this key (queued before the old
        // session was closed).
        let cause = Cause::new("cortex", "the agent reconnected with its new key", now_ns());
        let agents = self.agents_snapshot();
        match lifecycle
            .store
            .update(|records| records.confirm_rotation(key, &agents, &cause))
        {
            Ok((events, records)) if !events.is_empty() => {
                lifecycle.queue_audit_events(&events);
                self.install_records(&agents, &records);
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, host_id, "retiring the rotated key")
            }
        }
    }

    /// The session of `ticket` ended; a rotation it had not answered is abandoned.
    pub fn session_ended(&self, ticket: SessionTicket) {
        let Some(session) = self.sessions.lock().remove(&ticket.0) else {
            return;
        };
        let Some(lifecycle) = &self.lifecycle else {
            return;
        };
        let abandoned: Vec<(String, InFlight)> = {
            let mut in_flight = lock(&lifecycle.in_flight);
            let ids: Vec<String> = in_flight
                .iter()
                .filter(|(_, f)| f.old_key == session.key)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| in_flight.remove(&id).map(|f| (id, f)))
                .collect()
        };
        for (action_id, flight) in abandoned {
            tracing::error!(%action_id, host_id = %flight.host_id, "session ended before the agent answered its key rotation");
            lifecycle.finish(
                &flight.host_id,
                &action_id,
                Err("the agent's session ended before it answered the rotation".into()),
            );
            lifecycle.audit_rotation(
                &flight.actor,
                json!({"event": "rotation_abandoned", "action_id": action_id,
                       "host_id": flight.host_id, "source": flight.source,
                       "key_id": flight.old_key.key_id()}),
            );
        }
    }

    /// Asks the agent's live session to rotate its key; returns the action id. The answer is
    /// handled by [`Self::rotation_answered`].
    pub async fn request_rotation(&self, order: RotationOrder<'_>) -> Result<String, KeysError> {
        self.send_rotation(order, None).await
    }

    /// [`Self::request_rotation`], then waits until the agent completed the rotation (its new
    /// session is up and it heard that the cortex took the new key): the agent's final report.
    /// The caller bounds the wait (a rotation whose new session never comes is never
    /// answered); the waiter of a caller that gave up is dropped at the next rotation.
    pub async fn rotate_and_wait(
        &self,
        order: RotationOrder<'_>,
    ) -> Result<ActionReport, KeysError> {
        let (waiter, outcome) = oneshot::channel();
        let action_id = self.send_rotation(order, Some(waiter)).await?;
        let failed = |detail: String| KeysError::RotationFailed {
            host_id: order.host_id.to_owned(),
            detail,
        };
        let report = outcome
            .await
            .map_err(|_| failed(format!("rotation {action_id} was dropped unanswered")))?;
        report.map_err(failed)
    }

    async fn send_rotation(
        &self,
        order: RotationOrder<'_>,
        waiter: Option<Waiter>,
    ) -> Result<String, KeysError> {
        let RotationOrder {
            host_id,
            source,
            emergency,
            actor,
            reason,
        } = order;
        let lifecycle = self
            .lifecycle
            .as_ref()
            .ok_or(KeysError::LifecycleDisabled)?;
        let agent = || (host_id.to_owned(), source_name(source).to_owned());
        let records = lifecycle.store.load()?;
        let old_key = records
            .active(host_id, source)
            .ok_or_else(|| {
                let (host_id, agent) = agent();
                KeysError::NoActiveKey { host_id, agent }
            })?
            .key()?;
        let sender = self.sessions.sender_for(&old_key).ok_or_else(|| {
            let (host_id, agent) = agent();
            KeysError::NotConnected { host_id, agent }
        })?;
        let number = lifecycle.next_action.fetch_add(1, Ordering::Relaxed);
        let action_id = format!("rotate-keys-{host_id}-{}-{number}", source_name(source));
        {
            let mut in_flight = lock(&lifecycle.in_flight);
            if in_flight.values().any(|f| f.old_key == old_key) {
                let (host_id, agent) = agent();
                return Err(KeysError::RotationInProgress { host_id, agent });
            }
            in_flight.insert(
                action_id.clone(),
                InFlight {
                    host_id: host_id.to_owned(),
                    source,
                    old_key,
                    emergency,
                    actor: actor.to_owned(),
                    reason: reason.to_owned(),
                },
            );
            if let Some(waiter) = waiter {
                let mut waiters = lock(&lifecycle.waiters);
                // Callers that gave up (their rotation never completed) are forgotten here.
                waiters.retain(|_, (_, waiter)| !waiter.is_closed());
                waiters.insert(action_id.clone(), (host_id.to_owned(), waiter));
            }
        }
        lifecycle.audit_rotation(
            actor,
            json!({"event": "rotation_requested", "action_id": action_id, "host_id": host_id,
                   "source": source, "key_id": old_key.key_id(), "emergency": emergency,
                   "reason": reason}),
        );
        let request = ActionRequest {
            action_id: action_id.clone(),
            action: Action::RotateKeys,
        };
        let body = serde_json::to_vec(&request).map_err(|source| KeysError::Parse {
            path: lifecycle.store.path().to_owned(),
            source,
        })?;
        if sender
            .send(ROTATION_COMMAND_IDS | number, &body)
            .await
            .is_err()
        {
            lock(&lifecycle.in_flight).remove(&action_id);
            lock(&lifecycle.waiters).remove(&action_id);
            return Err(KeysError::SessionEnded {
                host_id: host_id.to_owned(),
            });
        }
        tracing::info!(%action_id, emergency, "key rotation sent to the agent");
        Ok(action_id)
    }

    /// A command result from `agent`: if it answers a rotation (the new key, or the final
    /// report once the new session is up), hand it over and return true. Applying a new key
    /// writes the records file and the audit chain: that runs on a blocking thread, so the
    /// session goes on (and can be closed) meanwhile. Call from inside the runtime.
    pub fn rotation_answered(
        &self,
        agent: &AgentIdentity,
        status: CommandStatus,
        body: &[u8],
    ) -> bool {
        let Some(lifecycle) = &self.lifecycle else {
            return false;
        };
        let Ok(report) = serde_json::from_slice::<ActionReport>(body) else {
            return false;
        };
        let flight = {
            let mut in_flight = lock(&lifecycle.in_flight);
            match in_flight.get(&report.action_id) {
                Some(f) if f.old_key == agent.public_key => in_flight.remove(&report.action_id),
                _ => None,
            }
        };
        let Some(flight) = flight else {
            let action_id = report.action_id.clone();
            let Some(report) = lock(&lifecycle.settling).reported(report) else {
                // Completed once its records are saved (`apply_rotation`).
                return true;
            };
            return lifecycle.finish(&agent.host_id, &action_id, Ok(report));
        };
        let directory = self.clone();
        tokio::task::spawn_blocking(move || directory.settle_rotation(&flight, status, &report));
        true
    }

    /// Applies the agent's answer to rotation `flight`: its new key, or its failure.
    fn settle_rotation(&self, flight: &InFlight, status: CommandStatus, report: &ActionReport) {
        let Some(lifecycle) = &self.lifecycle else {
            return;
        };
        let new_key = report
            .facts
            .get("public_key")
            .and_then(|v| v.as_str())
            .and_then(|hex| PublicKeyBytes::from_hex(hex).ok());
        match (report.outcome, new_key) {
            (ActionOutcome::Done, Some(new_key)) => {
                self.apply_rotation(lifecycle, flight, report, new_key);
            }
            _ => {
                tracing::error!(action_id = %report.action_id, ?status, detail = %report.detail, "the agent did not rotate its key");
                lifecycle.finish(
                    &flight.host_id,
                    &report.action_id,
                    Err(report.detail.clone()),
                );
                lifecycle.audit_rotation(
                    &flight.actor,
                    json!({"event": "rotation_failed", "action_id": report.action_id,
                           "host_id": flight.host_id, "source": flight.source,
                           "outcome": report.outcome, "detail": report.detail}),
                );
            }
        }
    }

    fn apply_rotation(
        &self,
        lifecycle: &KeyLifecycle,
        flight: &InFlight,
        report: &ActionReport,
        new_key: PublicKeyBytes,
    ) {
        let kind = if flight.emergency {
            "emergency rotation"
        } else {
            "rotation"
        };
        let cause = Cause::new(
            flight.actor.clone(),
            format!("{kind} {}: {}", report.action_id, flight.reason),
            now_ns(),
        );
        let old_key = flight.old_key;
        let agents = self.agents_snapshot();
        let mut acted = false;
        let applied = lifecycle.store.lock_records().and_then(|mut locked| {
            let events = locked.records.apply_rotation(
                &flight.old_key,
                &new_key,
                flight.emergency,
                &cause,
            )?;
            locked.records.validate()?;
            // The new key is admitted and the old session ended before the records are
            // written: the agent reconnects, and completes the rotation, while they are made
            // durable.
            lock(&lifecycle.settling).start(&report.action_id);
            self.install_records(&agents, &locked.records);
            self.sessions
                .close_unless(|key| *key != old_key, "its key was rotated");
            acted = true;
            locked.save()?;
            // Still under the file lock, so ahead of the retirement the new session causes.
            lifecycle.queue_audit_events(&events);
            Ok(())
        });
        match applied {
            Ok(()) => {
                // The agent drops its retired key once told, by whichever comes second: this,
                // or its new session's start.
                self.tell_recorded_when_connected(lifecycle, new_key);
                if let Some(done) = lock(&lifecycle.settling).recorded(&report.action_id) {
                    lifecycle.finish(&flight.host_id, &report.action_id, Ok(done));
                }
                tracing::info!(host_id = %flight.host_id, old = %old_key.key_id(), new = %new_key.key_id(), done_mono_ns = report.done_mono_ns, "{kind} applied");
            }
            Err(error) => {
                tracing::error!(%error, host_id = %flight.host_id, "could not record the rotated key");
                lock(&lifecycle.settling).failed(&report.action_id);
                if acted {
                    self.reinstall_saved_records(lifecycle, &flight.host_id);
                }
                lifecycle.finish(&flight.host_id, &report.action_id, Err(error.to_string()));
                lifecycle.audit_rotation(
                    &flight.actor,
                    json!({"event": "rotation_failed", "action_id": report.action_id,
                           "host_id": flight.host_id, "source": flight.source,
                           "detail": error.to_string()}),
                );
            }
        }
    }

    /// After a rotation admitted its new key but could not save it: back to what the records
    /// file says, so that this cortex admits what it would after a restart. The agent, which
    /// uses its new key, is refused until an operator enrolls that key (its previous key stays
    /// in its key file's `.retired` copy).
    fn reinstall_saved_records(&self, lifecycle: &KeyLifecycle, host_id: &str) {
        if let Err(error) = self.install_saved_records(lifecycle) {
            tracing::error!(%error, host_id, "cannot reload the key records after a failed rotation")
        }
    }

    /// `key` is durably recorded: tell its agent if its session is up, else when it starts
    /// ([`Self::settle_rotated_key`]). Sessions are registered before they look at
    /// `recorded_unsent`, and this looks at sessions while holding it, so exactly one side
    /// sends.
    fn tell_recorded_when_connected(&self, lifecycle: &KeyLifecycle, key: PublicKeyBytes) {
        let mut unsent = lock(&lifecycle.recorded_unsent);
        match self.sessions.sender_for(&key) {
            Some(sender) => send_key_recorded(lifecycle, key, sender),
            None => {
                unsent.insert(key);
            }
        }
    }

    /// Installs the access the records file grants, read under its lock: a rotation admits its
    /// new key before it writes the file (see `apply_rotation`), and a read in between would
    /// take that key away again. Blocks while a rotation holds the lock through its fsyncs.
    fn install_saved_records(&self, lifecycle: &KeyLifecycle) -> Result<KeyRecords, KeysError> {
        let locked = lifecycle.store.lock_records()?;
        self.install_records(&self.agents_snapshot(), &locked.records);
        Ok(locked.records.clone())
    }

    /// One round of the key watcher: reload the records if they changed, send requested and
    /// scheduled rotations to connected agents.
    pub async fn tick_keys(&self) {
        let Some(lifecycle) = &self.lifecycle else {
            return;
        };
        if !lifecycle.file_changed() && lifecycle.max_key_age.is_none() {
            return;
        }
        let records = match tokio::task::block_in_place(|| self.install_saved_records(lifecycle)) {
            Ok(records) => records,
            Err(error) => {
                tracing::error!(%error, "key records are unreadable; keeping the previous access");
                return;
            }
        };
        for request in &records.requests {
            self.send_requested(lifecycle, request).await;
        }
        if let Some(age) = lifecycle.max_key_age {
            let cutoff = now_ns().saturating_sub(u64::try_from(age.as_nanos()).unwrap_or(u64::MAX));
            for (host_id, source) in records.due_for_rotation(cutoff) {
                if !lifecycle.schedule_due(&host_id, source) {
                    continue;
                }
                let reason = format!("scheduled: key older than {}s", age.as_secs());
                match self
                    .request_rotation(RotationOrder {
                        host_id: &host_id,
                        source,
                        emergency: false,
                        actor: "cortex",
                        reason: &reason,
                    })
                    .await
                {
                    Ok(_) | Err(KeysError::RotationInProgress { .. }) => {}
                    Err(KeysError::NotConnected { .. }) => {
                        // Try again as soon as the agent is back.
                        lock(&lifecycle.scheduled).remove(&(host_id, source));
                    }
                    Err(error) => tracing::warn!(%error, %host_id, "scheduled key rotation"),
                }
            }
        }
    }

    /// Sends one operator request; it leaves the file once sent, or once it can never be.
    async fn send_requested(&self, lifecycle: &KeyLifecycle, request: &RotationRequest) {
        let outcome = self
            .request_rotation(RotationOrder {
                host_id: &request.host_id,
                source: request.source,
                emergency: request.emergency,
                actor: &request.actor,
                reason: "requested with `cortex keys rotate`",
            })
            .await;
        match outcome {
            Err(KeysError::NotConnected { .. } | KeysError::RotationInProgress { .. }) => return,
            Err(error) => {
                tracing::error!(%error, host_id = %request.host_id, "requested key rotation dropped")
            }
            Ok(_) => {}
        }
        let removed = lifecycle.store.update(|records| {
            records.requests.retain(|r| r != request);
            Ok(())
        });
        if let Err(error) = removed {
            tracing::error!(%error, "could not remove a sent rotation request");
        }
    }

    /// Runs [`Self::tick_keys`] every `interval` until shutdown.
    pub async fn watch_keys(self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            self.tick_keys().await;
        }
    }
}
