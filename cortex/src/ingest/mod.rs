//! Ingest: the qsc-channel server. Each agent session gets an [`IngestSink`] that validates
//! every delivered event against the agent's enrolled host and source, stores the batch durably
//! (the channel acknowledges it only after `store` returns), and hands the stored events to the
//! detection pipeline.

pub mod agents;
pub mod sequence;
pub mod validate;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use qsc_channel::delivery::{
    self, AgentIdentity, CommandStatus, EventSink, ServerConfig, SinkError,
};
use qsc_channel::keys::{AllowList, PublicKeyBytes};
use qsc_event::{Event, EventKind, EventLoss, Source, now_ns};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use self::agents::{AgentsFile, AgentsFileError, Binding};
use self::sequence::{CursorError, Cursors, stored_seq};
use self::validate::{Limits, rejection_event, validate_event};
use crate::audit::{AuditEntry, AuditKind, AuditSink};
use crate::metrics::Metrics;
use crate::pipeline::{Batch, PipelineSender};
use crate::store::Store;

/// The enrolled agents as the running service sees them; reloaded when the file changes.
#[derive(Clone)]
pub struct AgentDirectory {
    path: PathBuf,
    allow_list: Arc<RwLock<AllowList>>,
    bindings: Arc<RwLock<HashMap<PublicKeyBytes, Binding>>>,
    modified: Arc<RwLock<Option<SystemTime>>>,
}

impl AgentDirectory {
    pub fn load(path: PathBuf) -> Result<Self, AgentsFileError> {
        let file = AgentsFile::load(&path)?;
        Ok(AgentDirectory {
            modified: Arc::new(RwLock::new(modified_time(&path))),
            allow_list: Arc::new(RwLock::new(file.allow_list())),
            bindings: Arc::new(RwLock::new(file.bindings())),
            path,
        })
    }

    /// The shared allow-list the channel's handshake consults.
    pub fn allow_list(&self) -> Arc<RwLock<AllowList>> {
        self.allow_list.clone()
    }

    pub fn binding(&self, key: &PublicKeyBytes) -> Option<Binding> {
        read_lock(&self.bindings).get(key).cloned()
    }

    /// Re-reads the file if it changed; returns the new enrollment. A broken file keeps the
    /// previous one.
    pub fn reload_if_changed(&self) -> Result<Option<AgentsFile>, AgentsFileError> {
        let modified = modified_time(&self.path);
        if *read_lock(&self.modified) == modified {
            return Ok(None);
        }
        let file = AgentsFile::load(&self.path)?;
        *write_lock(&self.allow_list) = file.allow_list();
        *write_lock(&self.bindings) = file.bindings();
        *write_lock(&self.modified) = modified;
        Ok(Some(file))
    }

    /// Polls the file every `interval` until shutdown; each applied change is a key event in
    /// the audit chain.
    pub async fn watch(
        self,
        interval: Duration,
        audit: Arc<dyn AuditSink>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            match self.reload_if_changed() {
                Ok(Some(file)) => self.audit_reload(&file, audit.as_ref()),
                Ok(None) => {}
                Err(error) => tracing::error!(
                    %error,
                    "agents file is invalid; keeping the previous enrollment"
                ),
            }
        }
    }

    fn audit_reload(&self, file: &AgentsFile, audit: &dyn AuditSink) {
        let hosts = |revoked: bool| -> Vec<&str> {
            file.agents
                .iter()
                .filter(|a| a.revoked == revoked)
                .map(|a| a.host_id.as_str())
                .collect()
        };
        tracing::info!(path = %self.path.display(), "agents file reloaded");
        let entry = AuditEntry {
            kind: AuditKind::KeyEvent,
            actor: "cortex".into(),
            body: serde_json::json!({
                "event": "agents_reloaded",
                "file": self.path.display().to_string(),
                "active": hosts(false),
                "revoked": hosts(true),
            }),
        };
        if let Err(error) = audit.record(entry) {
            tracing::error!(%error, "could not audit the agents file reload");
        }
    }
}

fn modified_time(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

// Writers replace whole values, so a poisoned lock still holds a consistent one.
fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("agent key of host {host_id} is no longer enrolled; closing its session")]
    NotEnrolled { host_id: String },
    #[error("agent of host {host_id} sent delivery seq {seq}, beyond the store's range")]
    SeqOutOfRange { host_id: String, seq: u64 },
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Cursor(#[from] CursorError),
}

/// The cortex side of every agent session.
#[derive(Clone)]
pub struct IngestSink {
    store: Arc<dyn Store>,
    cursors: Arc<Cursors>,
    directory: AgentDirectory,
    limits: Limits,
    metrics: Arc<Metrics>,
    pipeline: PipelineSender,
}

impl IngestSink {
    pub fn new(
        store: Arc<dyn Store>,
        cursors: Arc<Cursors>,
        directory: AgentDirectory,
        limits: Limits,
        metrics: Arc<Metrics>,
        pipeline: PipelineSender,
    ) -> Self {
        IngestSink {
            store,
            cursors,
            directory,
            limits,
            metrics,
            pipeline,
        }
    }

    fn binding(&self, agent: &AgentIdentity) -> Result<Binding, IngestError> {
        self.directory
            .binding(&agent.public_key)
            .ok_or_else(|| IngestError::NotEnrolled {
                host_id: agent.host_id.clone(),
            })
    }

    fn stored_seq(&self, agent: &Binding, delivery_seq: u64) -> Result<u64, IngestError> {
        stored_seq(agent.source, delivery_seq).ok_or_else(|| IngestError::SeqOutOfRange {
            host_id: agent.host_id.clone(),
            seq: delivery_seq,
        })
    }

    /// Where the agent resumes: the last delivery seq stored for it.
    pub fn delivered(&self, agent: &Binding) -> Result<u64, IngestError> {
        Ok(self.cursors.delivered(&agent.host_id, agent.source)?)
    }

    /// Validates, stores and forwards one batch of delivery seqs `first_seq..`; returns once
    /// it is durable.
    pub fn ingest_batch(
        &self,
        agent: &Binding,
        first_seq: u64,
        events: &[&[u8]],
    ) -> Result<(), IngestError> {
        let arrived = Instant::now();
        let now = now_ns();
        self.metrics
            .events_received
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        let mut checked: Vec<Event> = Vec::with_capacity(events.len());
        for (bytes, delivery_seq) in events.iter().zip(first_seq..) {
            let seq = self.stored_seq(agent, delivery_seq)?;
            checked.push(self.check(agent, seq, bytes, now));
        }
        let outcome = self
            .store
            .append_events(&agent.host_id, &checked)
            .inspect_err(|_| {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
            })?;
        let last = first_seq + events.len().saturating_sub(1) as u64;
        self.cursors.advance(&agent.host_id, agent.source, last)?;
        self.metrics.store_latency.observe(arrived.elapsed());
        self.metrics
            .events_stored
            .fetch_add(outcome.inserted, Ordering::Relaxed);
        self.metrics
            .events_duplicate
            .fetch_add(outcome.duplicates.len() as u64, Ordering::Relaxed);
        let fresh: Vec<Event> = if outcome.duplicates.is_empty() {
            checked
        } else {
            checked
                .into_iter()
                .filter(|e| !outcome.duplicates.contains(&e.seq))
                .collect()
        };
        self.pipeline.submit(Batch {
            events: fresh,
            arrived,
            stored: Instant::now(),
        });
        Ok(())
    }

    /// The event to store for one delivered payload: itself, or the finding about its rejection.
    fn check(&self, agent: &Binding, seq: u64, bytes: &[u8], now: u64) -> Event {
        match validate_event(bytes, agent, seq, &self.limits, now) {
            Ok(event) => event,
            Err(rejection) => {
                self.metrics.reject(rejection.reason);
                tracing::warn!(
                    host_id = %agent.host_id,
                    seq,
                    reason = rejection.reason.label(),
                    detail = %rejection.detail,
                    "event rejected"
                );
                let total = self.metrics.rejected(rejection.reason);
                rejection_event(agent, seq, &rejection, total, now)
            }
        }
    }

    fn record_agent_loss(
        &self,
        agent: &Binding,
        first_seq: u64,
        last_seq: u64,
    ) -> Result<(), IngestError> {
        let lost = last_seq - first_seq + 1;
        self.metrics
            .events_lost_by_agents
            .fetch_add(lost, Ordering::Relaxed);
        tracing::warn!(host_id = %agent.host_id, first_seq, last_seq, "agent outbox dropped events");
        let event = Event::new(
            agent.host_id.clone(),
            Source::Cortex,
            self.stored_seq(agent, last_seq)?,
            EventKind::EventLoss(EventLoss {
                stage: "outbox".into(),
                record: None,
                lost,
                total: lost,
            }),
        );
        let arrived = Instant::now();
        self.store
            .append_events(&agent.host_id, std::slice::from_ref(&event))?;
        self.cursors
            .advance(&agent.host_id, agent.source, last_seq)?;
        self.pipeline.submit(Batch {
            events: vec![event],
            arrived,
            stored: Instant::now(),
        });
        Ok(())
    }
}

impl EventSink for IngestSink {
    fn stored_up_to(&mut self, agent: &AgentIdentity) -> Result<u64, SinkError> {
        let binding = self.binding(agent)?;
        Ok(tokio::task::block_in_place(|| self.delivered(&binding))?)
    }

    fn store(
        &mut self,
        agent: &AgentIdentity,
        first_seq: u64,
        events: &[&[u8]],
    ) -> Result<(), SinkError> {
        let binding = self.binding(agent)?;
        tokio::task::block_in_place(|| self.ingest_batch(&binding, first_seq, events))?;
        Ok(())
    }

    fn record_loss(
        &mut self,
        agent: &AgentIdentity,
        first_seq: u64,
        last_seq: u64,
    ) -> Result<(), SinkError> {
        let binding = self.binding(agent)?;
        tokio::task::block_in_place(|| self.record_agent_loss(&binding, first_seq, last_seq))?;
        Ok(())
    }

    fn command_result(
        &mut self,
        agent: &AgentIdentity,
        id: u64,
        status: CommandStatus,
        body: &[u8],
    ) -> Result<(), SinkError> {
        tracing::info!(
            host_id = %agent.host_id,
            id,
            ?status,
            body = %String::from_utf8_lossy(body),
            "command result"
        );
        Ok(())
    }
}

/// Accepts agent connections until shutdown; each runs its own session task.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    sink: IngestSink,
    mut shutdown: watch::Receiver<bool>,
) {
    let metrics = sink.metrics.clone();
    let mut sessions = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting an agent connection failed");
                continue;
            }
        };
        let config = config.clone();
        let mut sink = sink.clone();
        let metrics = metrics.clone();
        sessions.spawn(async move {
            let session = match delivery::accept(stream, &config, &mut sink).await {
                Ok(session) => session,
                Err(error) => {
                    metrics.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, %error, "agent connection refused");
                    return;
                }
            };
            metrics.sessions_active.fetch_add(1, Ordering::Relaxed);
            let host_id = session.identity().host_id.clone();
            if let Err(error) = session.run(&mut sink).await {
                tracing::warn!(%peer, %host_id, %error, "agent session ended with an error");
            }
            metrics.sessions_active.fetch_sub(1, Ordering::Relaxed);
        });
        while sessions.try_join_next().is_some() {}
    }
    // Acks are sent only after a batch is stored, so ending sessions here loses nothing.
    sessions.abort_all();
    while sessions.join_next().await.is_some() {}
}
