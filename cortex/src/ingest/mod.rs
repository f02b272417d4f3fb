//! Ingest: the qsc-channel server. Each agent session gets an [`IngestSink`] that validates
//! every delivered event against the agent's enrolled host and source, hands the validated
//! events to the detection pipeline at once, and stores them durably in parallel. The channel
//! reads, decrypts and validates the agent's next batches while earlier ones are committed,
//! and acknowledges each batch only once it is durable, so delivery stays exactly-once.
//!
//! Decisions therefore never wait for the disk. An event decided on but not yet durable when
//! the cortex dies is re-delivered by its agent and decided on again by the new process; within
//! one process the pipeline ignores re-deliveries (see [`crate::pipeline`]).
//!
//! The store keys events by `(host, agent, seq)` with the agent's own delivery seq, so where an
//! agent resumes is simply the highest seq the store holds for it.

pub mod agents;
pub mod keys;
pub mod validate;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use qsc_channel::delivery::{
    self, AgentIdentity, CommandStatus, Durable, EventSink, ServerConfig, SinkError,
};
use qsc_channel::keys::{AllowList, PublicKeyBytes};
use qsc_event::{Event, EventKind, EventLoss, Source, now_ns};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use self::agents::{AgentsFile, AgentsFileError, Binding};
use self::keys::{KeyLifecycle, Sessions};
use self::validate::{Limits, rejection_event, validate_event};
use crate::audit::{AuditEntry, AuditKind, AuditSink};
use crate::bus::BusBatch;
use crate::bus::nats::{BusError, EventBus};
use crate::metrics::Metrics;
use crate::pipeline::{Batch, PipelineSender};
use crate::respond::AgentLinks;
use crate::store::{PendingWrite, Store};

/// Events validated per step. Each step goes to detection and to the store's writer while the
/// next one is decoded, so decoding, analysis and the disk overlap even within one agent batch.
const INGEST_CHUNK: usize = 512;

/// The enrolled agents as the running service sees them; reloaded when the file changes.
/// With a [`KeyLifecycle`] the key records decide which keys are admitted (see [`keys`]).
#[derive(Clone)]
pub struct AgentDirectory {
    path: PathBuf,
    agents: Arc<RwLock<AgentsFile>>,
    allow_list: Arc<RwLock<AllowList>>,
    bindings: Arc<RwLock<HashMap<PublicKeyBytes, Binding>>>,
    modified: Arc<RwLock<Option<SystemTime>>>,
    sessions: Arc<Sessions>,
    lifecycle: Option<Arc<KeyLifecycle>>,
}

impl AgentDirectory {
    pub fn load(path: PathBuf) -> Result<Self, AgentsFileError> {
        let file = AgentsFile::load(&path)?;
        Ok(AgentDirectory {
            modified: Arc::new(RwLock::new(modified_time(&path))),
            allow_list: Arc::new(RwLock::new(file.allow_list())),
            bindings: Arc::new(RwLock::new(file.bindings())),
            agents: Arc::new(RwLock::new(file)),
            sessions: Arc::new(Sessions::default()),
            lifecycle: None,
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
        *write_lock(&self.agents) = file.clone();
        *write_lock(&self.modified) = modified;
        if let Err(error) = self.refresh_access(&file) {
            tracing::error!(%error, "key records could not follow the agents file");
        }
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
    #[error("bus: {0}")]
    Bus(#[from] BusError),
}

/// The cortex side of every agent session.
#[derive(Clone)]
pub struct IngestSink {
    store: Arc<dyn Store>,
    directory: AgentDirectory,
    limits: Limits,
    metrics: Arc<Metrics>,
    pipeline: PipelineSender,
    /// Where guardian-alpha sessions take response commands and hand back their answers.
    links: Option<AgentLinks>,
    /// A gateway publishes validated batches here instead of storing and detecting them.
    bus: Option<EventBus>,
}

impl IngestSink {
    pub fn new(
        store: Arc<dyn Store>,
        directory: AgentDirectory,
        limits: Limits,
        metrics: Arc<Metrics>,
        pipeline: PipelineSender,
    ) -> Self {
        IngestSink {
            store,
            directory,
            limits,
            metrics,
            pipeline,
            links: None,
            bus: None,
        }
    }

    /// Makes this a gateway's sink: each validated batch goes to the bus, and the agent's ack
    /// waits for the stream (workers store and detect it).
    pub fn with_bus(mut self, bus: EventBus) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Publishes validated `events` of `agent` and returns once the stream has them.
    fn publish(
        &self,
        bus: &EventBus,
        agent: &Binding,
        events: Vec<Event>,
    ) -> Result<(), IngestError> {
        let batch = BusBatch {
            host_id: agent.host_id.clone(),
            agent: agent.source,
            received_ns: now_ns(),
            events,
        };
        tokio::runtime::Handle::current()
            .block_on(bus.publish(&batch))
            .map_err(IngestError::Bus)
    }

    /// Registers every guardian-alpha session with the response dispatcher's `links` and hands
    /// them the command results that are not key rotations.
    pub fn with_links(mut self, links: AgentLinks) -> Self {
        self.links = Some(links);
        self
    }

    fn binding(&self, agent: &AgentIdentity) -> Result<Binding, IngestError> {
        self.directory
            .binding(&agent.public_key)
            .ok_or_else(|| IngestError::NotEnrolled {
                host_id: agent.host_id.clone(),
            })
    }

    /// Refuses delivery seqs beyond what the store can key (SQLite integers are signed).
    fn check_seq_range(&self, agent: &Binding, last_seq: u64) -> Result<(), IngestError> {
        if last_seq > i64::MAX as u64 {
            return Err(IngestError::SeqOutOfRange {
                host_id: agent.host_id.clone(),
                seq: last_seq,
            });
        }
        Ok(())
    }

    /// Where the agent resumes: the highest delivery seq stored for it.
    pub fn delivered(&self, agent: &Binding) -> Result<u64, IngestError> {
        Ok(self
            .store
            .highest_seq(&agent.host_id, agent.source)?
            .unwrap_or(0))
    }

    /// Validates delivery seqs `first_seq..` chunk by chunk; each chunk goes to detection and
    /// to the store at once. Returns once the whole batch is durable.
    pub fn ingest_batch(
        &self,
        agent: &Binding,
        first_seq: u64,
        events: &[&[u8]],
    ) -> Result<(), IngestError> {
        self.submit_batch(agent, first_seq, events)?.wait()
    }

    /// [`IngestSink::ingest_batch`] without waiting for the disk: the batch is validated, queued
    /// for detection and for the store, and the returned [`PendingBatch`] tells when it is
    /// durable. The store commits an agent's batches in submission order and stores none after
    /// one that failed (see [`Store::highest_seq`]), so acking each once it is durable keeps
    /// delivery exactly-once.
    pub fn submit_batch(
        &self,
        agent: &Binding,
        first_seq: u64,
        events: &[&[u8]],
    ) -> Result<PendingBatch, IngestError> {
        let arrived = Instant::now();
        let now = now_ns();
        let mut pending = PendingBatch {
            writes: Vec::new(),
            arrived,
            metrics: self.metrics.clone(),
        };
        let Some(count) = u64::try_from(events.len()).ok().filter(|n| *n > 0) else {
            return Ok(pending);
        };
        self.check_seq_range(agent, first_seq.saturating_add(count - 1))?;
        self.metrics
            .events_received
            .fetch_add(count, Ordering::Relaxed);
        if let Some(bus) = &self.bus {
            // Published means durable: JetStream has the batch once `publish` returns.
            let checked = events
                .iter()
                .zip(first_seq..)
                .map(|(bytes, seq)| self.check(agent, seq, bytes, now).0)
                .collect();
            self.publish(bus, agent, checked)?;
            return Ok(pending);
        }
        for (index, chunk) in events.chunks(INGEST_CHUNK).enumerate() {
            let chunk_first = first_seq + (index * INGEST_CHUNK) as u64;
            let (checked, delivered): (Vec<Event>, Vec<Option<&[u8]>>) = chunk
                .iter()
                .zip(chunk_first..)
                .map(|(bytes, seq)| self.check(agent, seq, bytes, now))
                .unzip();
            let checked: Arc<[Event]> = checked.into();
            self.pipeline.submit(Batch::new(
                &agent.host_id,
                agent.source,
                checked.clone(),
                arrived,
            ));
            // The store seals the JSON as delivered, not a new encoding of each event.
            let append =
                self.store
                    .submit_delivered(&agent.host_id, agent.source, &checked, &delivered);
            pending
                .writes
                .push(count_store_error(&self.metrics, append)?);
        }
        Ok(pending)
    }

    /// The event to store for one delivered payload with the JSON it was decoded from, or the
    /// finding about its rejection (made by the cortex, so without delivered JSON).
    fn check<'b>(
        &self,
        agent: &Binding,
        seq: u64,
        bytes: &'b [u8],
        now: u64,
    ) -> (Event, Option<&'b [u8]>) {
        match validate_event(bytes, agent, seq, &self.limits, now) {
            Ok(event) => (event, Some(bytes)),
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
                (rejection_event(agent, seq, &rejection, total, now), None)
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
        self.check_seq_range(agent, last_seq)?;
        // The finding takes the last lost seq, so the agent resumes after the gap.
        let event = Event::new(
            agent.host_id.clone(),
            Source::Cortex,
            last_seq,
            EventKind::EventLoss(EventLoss {
                stage: "outbox".into(),
                record: None,
                lost,
                total: lost,
            }),
        );
        if let Some(bus) = &self.bus {
            return self.publish(bus, agent, vec![event]);
        }
        let arrived = Instant::now();
        let events: Arc<[Event]> = Arc::new([event]);
        self.pipeline.submit(Batch::new(
            &agent.host_id,
            agent.source,
            events.clone(),
            arrived,
        ));
        let stored = self
            .store
            .append_events(&agent.host_id, agent.source, &events);
        count_store_error(&self.metrics, stored)?;
        Ok(())
    }
}

/// A validated batch on its way to the disk (its analysis is already queued).
#[must_use = "a batch is only known to be durable once `wait` returns Ok"]
pub struct PendingBatch {
    writes: Vec<PendingWrite>,
    arrived: Instant,
    metrics: Arc<Metrics>,
}

impl PendingBatch {
    /// Blocks until every chunk of the batch is committed, and counts what was stored.
    pub fn wait(self) -> Result<(), IngestError> {
        for write in self.writes {
            let outcome = count_store_error(&self.metrics, write.wait())?;
            self.metrics
                .events_stored
                .fetch_add(outcome.inserted, Ordering::Relaxed);
            self.metrics
                .events_duplicate
                .fetch_add(outcome.duplicates.len() as u64, Ordering::Relaxed);
        }
        self.metrics.store_latency.observe(self.arrived.elapsed());
        Ok(())
    }
}

fn count_store_error<T>(
    metrics: &Metrics,
    result: Result<T, crate::store::StoreError>,
) -> Result<T, IngestError> {
    result.map_err(|error| {
        metrics.store_errors.fetch_add(1, Ordering::Relaxed);
        IngestError::Store(error)
    })
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

    fn submit(
        &mut self,
        agent: &AgentIdentity,
        first_seq: u64,
        events: &[&[u8]],
    ) -> Result<Durable, SinkError> {
        let binding = self.binding(agent)?;
        let pending =
            tokio::task::block_in_place(|| self.submit_batch(&binding, first_seq, events))?;
        Ok(Box::pin(async move {
            tokio::task::spawn_blocking(move || pending.wait()).await??;
            Ok::<(), SinkError>(())
        }))
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
        // Non-blocking: a rotation's disk work runs on a blocking thread of its own.
        if self.directory.rotation_answered(agent, status, body) {
            return Ok(());
        }
        if let Some(links) = &self.links
            && links.complete(&agent.host_id, id, status, body)
        {
            return Ok(());
        }
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
            let directory = sink.directory.clone();
            let ticket = directory.session_started(
                session.identity(),
                session.command_sender(),
                session.closer(),
            );
            let is_alpha = directory
                .binding(&session.identity().public_key)
                .is_some_and(|b| b.source == Source::Alpha);
            let link = match &sink.links {
                Some(links) if is_alpha => Some((
                    links.clone(),
                    links.register(&host_id, session.command_sender()),
                )),
                _ => None,
            };
            if let Err(error) = session.run(&mut sink).await {
                tracing::warn!(%peer, %host_id, %error, "agent session ended with an error");
            }
            if let Some((links, link_ticket)) = link {
                links.unregister(&host_id, link_ticket);
            }
            directory.session_ended(ticket);
            metrics.sessions_active.fetch_sub(1, Ordering::Relaxed);
        });
        while sessions.try_join_next().is_some() {}
    }
    // Acks are sent only after a batch is stored, so ending sessions here loses nothing.
    sessions.abort_all();
    while sessions.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use qsc_event::{EventKind, Heartbeat};

    use super::agents::Enrollment;
    use super::*;
    use crate::config::IngestConfig;
    use crate::pipeline::{Work, queue};
    use crate::store::{EventQuery, MAX_QUERY_LIMIT, SqliteStore};

    struct Harness {
        _dir: tempfile::TempDir,
        sink: IngestSink,
        store: Arc<dyn Store>,
        analysis: crossbeam_channel::Receiver<Work>,
    }

    impl Harness {
        /// The batches queued for analysis so far.
        fn analysed(&self) -> Vec<Batch> {
            self.analysis
                .try_iter()
                .filter_map(|work| match work {
                    Work::Analyse(batch) => Some(batch),
                    Work::Adopt(_) => None,
                })
                .collect()
        }
    }

    fn harness() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut agents = AgentsFile::default();
        for (source, key) in [(Source::Alpha, 1u8), (Source::Beta, 2u8)] {
            agents
                .add(Enrollment {
                    host_id: "web-01".into(),
                    source,
                    class: "standard".into(),
                    public_key: hex::encode([key; 32]),
                    revoked: false,
                })
                .unwrap();
        }
        let agents_path = dir.path().join("agents.toml");
        agents.save(&agents_path).unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open_with_key(&dir.path().join("cortex.db"), &[7u8; 32]).unwrap(),
        );
        let metrics = Arc::new(Metrics::default());
        let (sender, analysis) = queue(64, Duration::from_millis(10), metrics.clone());
        let sink = IngestSink::new(
            store.clone(),
            AgentDirectory::load(agents_path).unwrap(),
            Limits::from(&IngestConfig::default()),
            metrics,
            sender,
        );
        Harness {
            _dir: dir,
            sink,
            store,
            analysis,
        }
    }

    fn binding(source: Source) -> Binding {
        Binding {
            host_id: "web-01".into(),
            source,
            class: "standard".into(),
        }
    }

    fn heartbeat(source: Source) -> Vec<u8> {
        let event = Event::new(
            "web-01",
            source,
            1,
            EventKind::Heartbeat(Heartbeat {
                version: "test".into(),
                uptime_s: 1,
                active_hooks: Vec::new(),
            }),
        );
        event.to_json().into_bytes()
    }

    fn ingest(harness: &Harness, source: Source, first_seq: u64, payloads: &[Vec<u8>]) {
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        harness
            .sink
            .ingest_batch(&binding(source), first_seq, &refs)
            .unwrap();
    }

    fn stored(harness: &Harness) -> Vec<Event> {
        let query = EventQuery {
            limit: MAX_QUERY_LIMIT,
            ..Default::default()
        };
        harness.store.query_events(&query).unwrap()
    }

    #[test]
    fn each_agent_of_a_host_is_stored_and_resumed_under_its_own_delivery_seqs() {
        let harness = harness();
        ingest(
            &harness,
            Source::Alpha,
            1,
            &vec![heartbeat(Source::Alpha); 3],
        );
        ingest(
            &harness,
            Source::Beta,
            1,
            &[heartbeat(Source::Beta), b"not json".to_vec()],
        );
        assert_eq!(harness.sink.delivered(&binding(Source::Alpha)).unwrap(), 3);
        assert_eq!(harness.sink.delivered(&binding(Source::Beta)).unwrap(), 2);
        let events = stored(&harness);
        assert_eq!(events.len(), 5);
        // Stored as delivered (every payload says seq 1), read back under the delivery seqs.
        let mut alpha: Vec<u64> = events
            .iter()
            .filter(|e| e.source == Source::Alpha)
            .map(|e| e.seq)
            .collect();
        alpha.sort_unstable();
        assert_eq!(alpha, vec![1, 2, 3]);
        // The malformed payload is replaced by the cortex's finding, under beta's seq 2.
        let finding = events.iter().find(|e| e.source == Source::Cortex).unwrap();
        assert_eq!(finding.seq, 2);
        assert!(matches!(finding.kind, EventKind::EventLoss(_)));

        let batches = harness.analysed();
        let seen: Vec<(Source, Vec<u64>)> = batches
            .iter()
            .map(|b| (b.agent, b.events.iter().map(|e| e.seq).collect()))
            .collect();
        assert_eq!(
            seen,
            vec![(Source::Alpha, vec![1, 2, 3]), (Source::Beta, vec![1, 2])]
        );
    }

    #[test]
    fn a_large_batch_goes_to_analysis_in_chunks_and_is_stored_whole() {
        let harness = harness();
        let total = INGEST_CHUNK * 2 + 7;
        ingest(
            &harness,
            Source::Alpha,
            1,
            &vec![heartbeat(Source::Alpha); total],
        );
        assert_eq!(
            harness.sink.delivered(&binding(Source::Alpha)).unwrap(),
            total as u64
        );
        assert_eq!(stored(&harness).len(), total);
        let sizes: Vec<usize> = harness.analysed().iter().map(|b| b.events.len()).collect();
        assert_eq!(sizes, vec![INGEST_CHUNK, INGEST_CHUNK, 7]);
    }

    #[test]
    fn delivery_seqs_beyond_the_store_range_are_refused_before_anything_is_stored() {
        let harness = harness();
        let refs = [heartbeat(Source::Alpha)];
        let refs: Vec<&[u8]> = refs.iter().map(Vec::as_slice).collect();
        let result = harness
            .sink
            .ingest_batch(&binding(Source::Alpha), i64::MAX as u64 + 1, &refs);
        assert!(matches!(result, Err(IngestError::SeqOutOfRange { .. })));
        assert!(stored(&harness).is_empty());
        assert!(harness.analysed().is_empty());
    }
}
