//! Durable storage of events, incidents and node states, behind the [`Store`] trait.
//!
//! The trait is synchronous and object-safe: the embedded [`SqliteStore`] is the default, and a
//! PostgreSQL implementation can be added as another `[store] backend` without touching callers.
//! Async callers run it on a blocking thread (`tokio::task::spawn_blocking`).
//!
//! Events are keyed by `(host, agent, seq)`: each agent of a host (guardian-alpha,
//! guardian-beta) has its own gap-free delivery sequence, and re-delivery of a stored key is
//! ignored, which makes delivery exactly-once.

pub mod cipher;
pub(crate) mod codec;
pub mod config;
#[cfg(test)]
mod conformance;
pub mod key_file;
pub mod postgres;
mod queue;
pub mod sqlite;
mod writer;

use std::path::PathBuf;

use qsc_event::{Event, EventError, Source};

use crate::decide::NodeStateRecord;
use crate::respond::{ActionRecord, ActionStatus};
use crate::score::{Incident, IncidentStatus, Severity};

pub use config::{RetentionConfig, StoreBackend, StoreConfig};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Most events one query returns, whatever the caller asks for.
pub const MAX_QUERY_LIMIT: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventQuery {
    pub host: Option<String>,
    /// Inclusive lower bound on `time_ns`.
    pub since_ns: Option<u64>,
    /// Exclusive upper bound on `time_ns`.
    pub until_ns: Option<u64>,
    /// Event kind names (`process_exec`, …); empty means all.
    pub kinds: Vec<String>,
    /// Capped at [`MAX_QUERY_LIMIT`].
    pub limit: usize,
}

impl Default for EventQuery {
    fn default() -> Self {
        EventQuery {
            host: None,
            since_ns: None,
            until_ns: None,
            kinds: Vec::new(),
            limit: 1000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncidentQuery {
    pub host: Option<String>,
    pub status: Option<IncidentStatus>,
    pub min_severity: Option<Severity>,
    /// Capped at [`MAX_QUERY_LIMIT`].
    pub limit: usize,
}

impl Default for IncidentQuery {
    fn default() -> Self {
        IncidentQuery {
            host: None,
            status: None,
            min_severity: None,
            limit: 1000,
        }
    }
}

/// Which response actions to list, most recently updated first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionQuery {
    pub host: Option<String>,
    pub status: Option<ActionStatus>,
    /// Only actions something will still happen to: held, dispatched, or awaiting a rollback.
    pub active_only: bool,
    /// Capped at [`MAX_QUERY_LIMIT`].
    pub limit: usize,
}

impl Default for ActionQuery {
    fn default() -> Self {
        ActionQuery {
            host: None,
            status: None,
            active_only: false,
            limit: 1000,
        }
    }
}

/// What an append did. Re-delivered events (same host, agent and seq) are not stored twice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    pub inserted: u64,
    /// Seqs that were already stored.
    pub duplicates: Vec<u64>,
}

/// How much event history to keep. Incidents, node states and the audit chain are not pruned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Delete events older than this many seconds.
    pub max_age_s: Option<u64>,
    /// Delete the oldest events until the stored event bytes are at most this.
    pub max_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_by_age: u64,
    pub deleted_by_size: u64,
    pub remaining_events: u64,
    /// Stored event bytes: index columns, nonce and ciphertext, as counted for `max_bytes`.
    pub remaining_bytes: u64,
}

/// A write on its way to the disk; [`PendingWrite::wait`] returns once it is durable.
#[must_use = "a write is only known to be durable once `wait` returns Ok"]
pub struct PendingWrite {
    reply: crossbeam_channel::Receiver<Result<AppendOutcome, StoreError>>,
}

impl PendingWrite {
    pub(crate) fn new(
        reply: crossbeam_channel::Receiver<Result<AppendOutcome, StoreError>>,
    ) -> Self {
        PendingWrite { reply }
    }

    /// Blocks until the write is committed (or the commit failed). Only event appends report
    /// a non-empty outcome.
    pub fn wait(self) -> Result<AppendOutcome, StoreError> {
        self.reply.recv().map_err(|_| StoreError::WriterStopped)?
    }

    /// The result if the commit is over, without blocking.
    pub fn try_wait(&self) -> Option<Result<AppendOutcome, StoreError>> {
        match self.reply.try_recv() {
            Ok(result) => Some(result),
            Err(crossbeam_channel::TryRecvError::Empty) => None,
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                Some(Err(StoreError::WriterStopped))
            }
        }
    }
}

pub trait Store: Send + Sync {
    /// Validates, encrypts and queues a batch of events that `agent` of `host_id` delivered,
    /// without waiting for the disk. Each event's seq is in that agent's delivery sequence;
    /// events the cortex made in place of a delivered one (source `cortex`) are allowed.
    /// Nothing is queued if any event is invalid or belongs to another host or agent. Batches
    /// are committed in the order they were submitted, possibly several in one transaction.
    fn submit_events(
        &self,
        host_id: &str,
        agent: Source,
        events: &[Event],
    ) -> Result<PendingWrite, StoreError>;
    /// [`Store::submit_events`] for events decoded from JSON an agent delivered: `delivered[i]`
    /// is the JSON of `events[i]` (`None` where the cortex made the event), whose only change
    /// since decoding is its `seq`. A backend may store those bytes as they are rather than
    /// encoding the event again; reading restores each event's seq from its row.
    fn submit_delivered(
        &self,
        host_id: &str,
        agent: Source,
        events: &[Event],
        delivered: &[Option<&[u8]>],
    ) -> Result<PendingWrite, StoreError> {
        let _ = delivered;
        self.submit_events(host_id, agent, events)
    }
    /// [`Store::submit_events`] and wait until the batch is durable.
    fn append_events(
        &self,
        host_id: &str,
        agent: Source,
        events: &[Event],
    ) -> Result<AppendOutcome, StoreError> {
        self.submit_events(host_id, agent, events)?.wait()
    }
    /// Highest seq ever stored for the agent of the host (kept even after retention deleted
    /// the events): where the agent's delivery resumes.
    fn highest_seq(&self, host_id: &str, agent: Source) -> Result<Option<u64>, StoreError>;
    /// Events by time, oldest first.
    fn query_events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError>;
    /// Queues an insert-or-replace of an incident by id, without waiting for the disk.
    fn submit_incident(&self, incident: &Incident) -> Result<PendingWrite, StoreError>;
    /// Inserts or replaces an incident by id; returns once it is durable.
    fn put_incident(&self, incident: &Incident) -> Result<(), StoreError> {
        self.submit_incident(incident)?.wait().map(|_| ())
    }
    fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError>;
    /// Incidents, most recently updated first.
    fn incidents(&self, query: &IncidentQuery) -> Result<Vec<Incident>, StoreError>;
    /// Inserts or replaces the host's node state.
    fn put_node_state(&self, record: &NodeStateRecord) -> Result<(), StoreError>;
    fn node_state(&self, host: &str) -> Result<Option<NodeStateRecord>, StoreError>;
    fn node_states(&self) -> Result<Vec<NodeStateRecord>, StoreError>;
    /// Inserts or replaces a response action by id; returns once it is durable.
    fn put_action(&self, record: &ActionRecord) -> Result<(), StoreError>;
    fn action(&self, id: &str) -> Result<Option<ActionRecord>, StoreError>;
    /// Response actions, most recently updated first.
    fn actions(&self, query: &ActionQuery) -> Result<Vec<ActionRecord>, StoreError>;
    /// Deletes events by age, then the oldest ones until under the size budget.
    fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now_ns: u64,
    ) -> Result<RetentionReport, StoreError>;
}

/// Opens the store the configuration names.
pub fn open_store(config: &StoreConfig) -> Result<Box<dyn Store>, StoreError> {
    match config.backend {
        StoreBackend::Sqlite => Ok(Box::new(SqliteStore::open(
            &config.path,
            &config.master_key_file,
        )?)),
        StoreBackend::Postgres => Ok(Box::new(PostgresStore::open(
            &config.postgres,
            &config.master_key_file,
        )?)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("store database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store master key: {0}")]
    Key(#[from] key_file::KeyFileError),
    #[error(transparent)]
    Cipher(#[from] cipher::CipherError),
    #[error("the master key does not open store {path}: it was created with another key")]
    WrongMasterKey { path: PathBuf },
    #[error("store database refused WAL journaling (journal_mode is {mode})")]
    JournalMode { mode: String },
    #[error("store schema version {found} is newer than this build supports ({supported})")]
    SchemaVersion { found: i64, supported: i64 },
    #[error(
        "store {path} has schema version {found}, written by a pre-release build that keyed \
         events by (host, seq) only; move it aside and let the agents re-deliver"
    )]
    ObsoleteSchema { path: PathBuf, found: i64 },
    #[error("event seq {seq} has source {found:?} but the batch is for agent {expected:?}")]
    AgentMismatch {
        expected: Source,
        found: Source,
        seq: u64,
    },
    #[error("cannot start a store thread: {0}")]
    Thread(String),
    #[error("the store's writer thread has stopped")]
    WriterStopped,
    #[error("committing a group of store writes failed: {0}")]
    GroupCommit(String),
    #[error(
        "events of agent {agent} of host {host_id} refused: an earlier batch of it failed to \
         commit, and its delivery must resume from there"
    )]
    EarlierBatchFailed {
        host_id: String,
        agent: &'static str,
    },
    #[error("event seq {seq} names host `{found}` but the batch is for host `{expected}`")]
    HostMismatch {
        expected: String,
        found: String,
        seq: u64,
    },
    #[error("event seq {seq} is invalid: {source}")]
    InvalidEvent { seq: u64, source: EventError },
    #[error("stored event of host {host_id} seq {seq} cannot be decoded: {source}")]
    Decode {
        host_id: String,
        seq: u64,
        source: EventError,
    },
    #[error("stored {table} row `{key}` is corrupt: {reason}")]
    CorruptRow {
        table: &'static str,
        key: String,
        reason: String,
    },
    #[error("cannot connect to PostgreSQL: {source}")]
    PostgresConnect { source: tokio_postgres::Error },
    #[error("PostgreSQL error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("cannot read the PostgreSQL password file {path}: {source}")]
    PostgresPassword {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("PostgreSQL schema name {0:?} is not a plain SQL name")]
    PostgresSchema(String),
    #[error(
        "the master key does not open the store in PostgreSQL schema {0}: it was created with another key"
    )]
    PostgresWrongMasterKey(String),
    #[error("{field} = {value} does not fit SQLite's signed 64-bit integers")]
    ValueTooLarge { field: &'static str, value: u64 },
}
