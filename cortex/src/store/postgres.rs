//! The PostgreSQL store: the same tables and the same encryption as [`super::SqliteStore`],
//! in a server that several cortex replicas share.
//!
//! The [`Store`] trait is synchronous; this backend runs `tokio-postgres` on a runtime of its own
//! (one thread) and waits for answers on channels, so it may be called from any thread,
//! including an async task of another runtime. Writes of events, incidents and node states go
//! through one writer thread in submission order; each event batch is one statement (insert
//! with `ON CONFLICT DO NOTHING` plus the `delivered` high-water mark), so it commits
//! atomically and a re-delivered `(host, agent, seq)` is reported as a duplicate, never stored
//! twice. After a failed batch the writer refuses the agent's later batches until it resumes,
//! as the SQLite writer does ([`super::queue::FailedAgents`]).

use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use qsc_event::{Event, Source};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

use super::cipher::PayloadCipher;
use super::codec::{
    StoredRow, agent_name, clamp_i64, from_json, key_check_opens, new_key_check, open_event,
    seal_batch, severity_rank, to_json,
};
use super::config::{PostgresConfig, is_sql_name};
use super::key_file::{KEY_LEN, read_key_file};
use super::queue::{FailedAgents, IncidentRow, Job, SealedRow, Write};
use super::{
    ActionQuery, AppendOutcome, EventQuery, IncidentQuery, MAX_QUERY_LIMIT, PendingWrite,
    RetentionPolicy, RetentionReport, Store, StoreError,
};
use crate::decide::NodeStateRecord;
use crate::respond::ActionRecord;
use crate::score::Incident;

/// Writes that may wait for the writer task before submitters wait too.
const QUEUE_WRITES: usize = 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id      BIGSERIAL PRIMARY KEY,
    host    TEXT NOT NULL,
    agent   TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    time_ns BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    nonce   BYTEA NOT NULL,
    payload BYTEA NOT NULL,
    UNIQUE (host, agent, seq)
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (time_ns);
CREATE INDEX IF NOT EXISTS events_by_host_time ON events (host, time_ns);
CREATE TABLE IF NOT EXISTS delivered (
    host    TEXT NOT NULL,
    agent   TEXT NOT NULL,
    max_seq BIGINT NOT NULL,
    PRIMARY KEY (host, agent)
);
CREATE TABLE IF NOT EXISTS incidents (
    id            TEXT PRIMARY KEY,
    host          TEXT NOT NULL,
    severity_rank BIGINT NOT NULL,
    status        TEXT NOT NULL,
    updated_ns    BIGINT NOT NULL,
    body          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_by_updated ON incidents (updated_ns);
CREATE TABLE IF NOT EXISTS node_states (
    host TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS actions (
    id         TEXT PRIMARY KEY,
    host       TEXT NOT NULL,
    status     TEXT NOT NULL,
    active     BOOLEAN NOT NULL,
    updated_ns BIGINT NOT NULL,
    body       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS actions_by_updated ON actions (updated_ns);
CREATE TABLE IF NOT EXISTS detected (
    host  TEXT NOT NULL,
    agent TEXT NOT NULL,
    seq   BIGINT NOT NULL,
    PRIMARY KEY (host, agent)
);
";

/// Bytes counted for one event row, as the SQLite store counts them.
const EVENT_BYTES_SQL: &str = "octet_length(host) + octet_length(agent) + octet_length(kind) \
     + octet_length(nonce) + octet_length(payload) + 24";

/// One statement per batch: the rows not stored yet, and the agent's high-water mark.
const INSERT_EVENTS: &str = "
WITH batch AS (
    SELECT * FROM unnest($3::BIGINT[], $4::BIGINT[], $5::TEXT[], $6::BYTEA[], $7::BYTEA[])
        AS b(seq, time_ns, kind, nonce, payload)
), inserted AS (
    INSERT INTO events (host, agent, seq, time_ns, kind, nonce, payload)
    SELECT $1, $2, seq, time_ns, kind, nonce, payload FROM batch
    ON CONFLICT (host, agent, seq) DO NOTHING
    RETURNING seq
), delivered_up AS (
    INSERT INTO delivered (host, agent, max_seq)
    SELECT $1, $2, max(seq) FROM batch HAVING count(*) > 0
    ON CONFLICT (host, agent) DO UPDATE SET max_seq = GREATEST(delivered.max_seq, excluded.max_seq)
)
SELECT seq FROM inserted";

const UPSERT_INCIDENT: &str = "
INSERT INTO incidents (id, host, severity_rank, status, updated_ns, body)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (id) DO UPDATE SET host = excluded.host, severity_rank = excluded.severity_rank,
    status = excluded.status, updated_ns = excluded.updated_ns, body = excluded.body";

pub struct PostgresStore {
    /// Shut down (in the background) in [`Drop`].
    runtime: Option<tokio::runtime::Runtime>,
    /// Reads and the rare direct writes (actions).
    client: Arc<Client>,
    /// Event, incident and node state writes, in order; closed in [`Drop`] so the writer
    /// thread ends.
    writes: Option<crossbeam_channel::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
    cipher: PayloadCipher,
    config: PostgresConfig,
}

impl PostgresStore {
    /// Connects with `[store.postgres]` and the master key in `master_key_file`.
    pub fn open(config: &PostgresConfig, master_key_file: &Path) -> Result<Self, StoreError> {
        let master_key = read_key_file(master_key_file)?;
        Self::open_with_key(config, &master_key)
    }

    /// Connects, creates the schema and tables if missing, and checks the master key.
    pub fn open_with_key(
        config: &PostgresConfig,
        master_key: &[u8; KEY_LEN],
    ) -> Result<Self, StoreError> {
        if !is_sql_name(&config.schema) {
            return Err(StoreError::PostgresSchema(config.schema.clone()));
        }
        let runtime = pg_runtime("cortex-store-pg")?;
        let cipher = PayloadCipher::from_master_key(master_key)?;
        match connect_store(&runtime, config, &cipher) {
            Ok((client, writer_client)) => {
                Self::start_writer(runtime, client, writer_client, cipher, config)
            }
            Err(error) => {
                // Dropping a runtime inside an async context (`cortex serve` opening the
                // store before PostgreSQL answers) panics; shutting it down never does.
                runtime.shutdown_background();
                Err(error)
            }
        }
    }

    fn start_writer(
        runtime: tokio::runtime::Runtime,
        client: Arc<Client>,
        writer_client: Arc<Client>,
        cipher: PayloadCipher,
        config: &PostgresConfig,
    ) -> Result<Self, StoreError> {
        let (writes, queue) = crossbeam_channel::bounded(QUEUE_WRITES);
        let handle = runtime.handle().clone();
        let writer = std::thread::Builder::new()
            .name("cortex-store-pg-writer".into())
            .spawn(move || run_writer(&handle, &writer_client, &queue))
            .map_err(|e| StoreError::Thread(e.to_string()));
        let writer = match writer {
            Ok(writer) => writer,
            Err(error) => {
                runtime.shutdown_background();
                return Err(error);
            }
        };
        Ok(PostgresStore {
            runtime: Some(runtime),
            client,
            writes: Some(writes),
            writer: Some(writer),
            cipher,
            config: config.clone(),
        })
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime, StoreError> {
        self.runtime.as_ref().ok_or(StoreError::WriterStopped)
    }

    /// Runs `future` on the store's runtime and waits for its result.
    fn run<T, F>(&self, future: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        Ok(block_on(self.runtime()?, future)??)
    }

    /// Queues a write for the writer thread.
    fn submit(&self, write: Write) -> Result<PendingWrite, StoreError> {
        let (job, answer) = Job::new(write);
        self.writes
            .as_ref()
            .ok_or(StoreError::WriterStopped)?
            .send(job)
            .map_err(|_| StoreError::WriterStopped)?;
        Ok(PendingWrite::new(answer))
    }

    fn bodies<T: serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
        sql: String,
        params: Vec<SqlValue>,
    ) -> Result<Vec<T>, StoreError> {
        let client = self.client.clone();
        let rows = self.run(async move {
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(SqlValue::as_sql).collect();
            client.query(&sql, &refs).await
        })?;
        rows.iter()
            .map(|row| from_json(table, row.get::<_, &str>(0), row.get::<_, &str>(1)))
            .collect()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Dropping a runtime inside an async context panics; shutting it down in the
        // background never blocks.
        // Closing the queue lets the writer thread commit what is queued and end.
        self.writes.take();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the PostgreSQL store writer thread panicked");
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A query parameter of one of the types the filters use.
enum SqlValue {
    Text(String),
    Int(i64),
    Texts(Vec<String>),
    Bool(bool),
}

impl SqlValue {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            SqlValue::Text(v) => v,
            SqlValue::Int(v) => v,
            SqlValue::Texts(v) => v,
            SqlValue::Bool(v) => v,
        }
    }
}

/// Filters with numbered placeholders, built up one condition at a time.
#[derive(Default)]
struct Filters {
    sql: String,
    params: Vec<SqlValue>,
}

impl Filters {
    fn and(&mut self, condition: &str, value: SqlValue) {
        self.params.push(value);
        let n = self.params.len();
        self.sql.push_str(&format!(
            " AND {}",
            condition.replace('?', &format!("${n}"))
        ));
    }

    fn limit(mut self, limit: usize) -> (String, Vec<SqlValue>) {
        self.params
            .push(SqlValue::Int(limit.min(MAX_QUERY_LIMIT) as i64));
        self.sql.push_str(&format!(" LIMIT ${}", self.params.len()));
        (self.sql, self.params)
    }
}

/// The one-thread runtime a synchronous PostgreSQL client runs its connection on.
pub(crate) fn pg_runtime(thread_name: &str) -> Result<tokio::runtime::Runtime, StoreError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(thread_name)
        .enable_all()
        .build()
        .map_err(|e| StoreError::Thread(e.to_string()))
}

/// Runs `future` on `runtime` from any thread (also from inside another runtime).
pub(crate) fn block_on<T, F>(runtime: &tokio::runtime::Runtime, future: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let (reply, answer) = crossbeam_channel::bounded(1);
    runtime.spawn(async move {
        let _ = reply.send(future.await);
    });
    answer.recv().map_err(|_| StoreError::WriterStopped)
}

/// Connects and spawns the connection task (on the caller's runtime); every statement then
/// runs in `schema`.
pub(crate) async fn connect(config: PostgresConfig) -> Result<Client, StoreError> {
    let mut pg = tokio_postgres::Config::from_str(&config.url)
        .map_err(|source| StoreError::PostgresConnect { source })?;
    if !config.password_file.as_os_str().is_empty() {
        let password = std::fs::read_to_string(&config.password_file).map_err(|source| {
            StoreError::PostgresPassword {
                path: config.password_file.clone(),
                source,
            }
        })?;
        pg.password(password.trim_end_matches(['\n', '\r']));
    }
    pg.application_name("qsc-cortex");
    pg.options(format!("-c search_path={}", config.schema));
    let (client, connection) = pg
        .connect(NoTls)
        .await
        .map_err(|source| StoreError::PostgresConnect { source })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::error!(%error, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// Creates `schema` if missing and runs `ddl` in it, serialised across replicas (and the store
/// and the audit chain of one replica) by an advisory lock.
pub(crate) async fn create_in_schema(
    client: &Client,
    schema: &str,
    ddl: &str,
) -> Result<(), tokio_postgres::Error> {
    let lock = format!("hashtext('qsc-schema-{schema}')");
    client
        .batch_execute(&format!(
            "SELECT pg_advisory_lock({lock});
             CREATE SCHEMA IF NOT EXISTS {schema};
             {ddl}
             SELECT pg_advisory_unlock({lock});"
        ))
        .await
}

/// Connects the reader and the writer clients, creates the schema and tables if missing and
/// checks the master key against the stored key check (storing one if there is none).
fn connect_store(
    runtime: &tokio::runtime::Runtime,
    config: &PostgresConfig,
    cipher: &PayloadCipher,
) -> Result<(Arc<Client>, Arc<Client>), StoreError> {
    let client = Arc::new(block_on(runtime, connect(config.clone()))??);
    let stored = block_on(
        runtime,
        prepare_schema(client.clone(), config.schema.clone()),
    )??;
    let key_check = match stored {
        Some(value) => value,
        None => {
            // Of two replicas creating the store at once, the first key check wins.
            let value = new_key_check(cipher)?;
            block_on(runtime, insert_key_check(client.clone(), value))??
        }
    };
    if !key_check_opens(cipher, &key_check) {
        return Err(StoreError::PostgresWrongMasterKey(config.schema.clone()));
    }
    let writer_client = Arc::new(block_on(runtime, connect(config.clone()))??);
    Ok((client, writer_client))
}

/// Creates the schema and tables (serialised across replicas by an advisory lock) and returns
/// the stored key-check value, if any.
async fn prepare_schema(
    client: Arc<Client>,
    schema: String,
) -> Result<Option<Vec<u8>>, tokio_postgres::Error> {
    create_in_schema(&client, &schema, SCHEMA).await?;
    let row = client
        .query_opt("SELECT value FROM meta WHERE key = 'key_check'", &[])
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Stores `value` unless another replica stored one first; returns the one that is stored.
async fn insert_key_check(
    client: Arc<Client>,
    value: Vec<u8>,
) -> Result<Vec<u8>, tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO meta (key, value) VALUES ('key_check', $1) ON CONFLICT (key) DO NOTHING",
            &[&value],
        )
        .await?;
    let row = client
        .query_one("SELECT value FROM meta WHERE key = 'key_check'", &[])
        .await?;
    Ok(row.get(0))
}

/// Writes the queued jobs one at a time, in order, each in its own transaction, refusing the
/// event writes of agents whose earlier batch failed until they resume.
fn run_writer(
    runtime: &tokio::runtime::Handle,
    client: &Client,
    queue: &crossbeam_channel::Receiver<Job>,
) {
    let mut failed = FailedAgents::default();
    while let Ok(job) = queue.recv() {
        for job in failed.admit([job]) {
            let result = runtime.block_on(apply(client, &job.write));
            if let Err(error) = &result {
                tracing::error!(%error, "PostgreSQL store write failed");
                failed.failed([&job.write]);
            }
            // A submitter that stopped waiting does not need the answer.
            let _ = job.reply.send(result);
        }
    }
}

async fn apply(client: &Client, write: &Write) -> Result<AppendOutcome, StoreError> {
    match write {
        Write::Events {
            host_id,
            agent,
            rows,
        } => return insert_events(client, host_id, agent, rows).await,
        Write::Incident(row) => {
            client
                .execute(
                    UPSERT_INCIDENT,
                    &[
                        &row.id,
                        &row.host,
                        &row.severity_rank,
                        &row.status,
                        &row.updated_ns,
                        &row.body,
                    ],
                )
                .await?;
        }
        Write::NodeState { host, body } => {
            client
                .execute(
                    "INSERT INTO node_states (host, body) VALUES ($1, $2) \
                     ON CONFLICT (host) DO UPDATE SET body = excluded.body",
                    &[host, body],
                )
                .await?;
        }
        Write::Resume { .. } => {}
    }
    Ok(AppendOutcome::default())
}

async fn insert_events(
    client: &Client,
    host_id: &str,
    agent: &str,
    rows: &[SealedRow],
) -> Result<AppendOutcome, StoreError> {
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    let times: Vec<i64> = rows.iter().map(|r| r.time_ns).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind).collect();
    let nonces: Vec<&[u8]> = rows.iter().map(|r| r.nonce.as_slice()).collect();
    let payloads: Vec<&[u8]> = rows.iter().map(|r| r.payload.as_slice()).collect();
    let inserted = client
        .query(
            INSERT_EVENTS,
            &[&host_id, &agent, &seqs, &times, &kinds, &nonces, &payloads],
        )
        .await?;
    let inserted: std::collections::HashSet<i64> = inserted.iter().map(|r| r.get(0)).collect();
    let mut outcome = AppendOutcome::default();
    for seq in seqs {
        if inserted.contains(&seq) {
            outcome.inserted += 1;
        } else {
            outcome.duplicates.push(seq as u64);
        }
    }
    Ok(outcome)
}

impl Store for PostgresStore {
    fn submit_events(
        &self,
        host_id: &str,
        agent: Source,
        events: &[Event],
    ) -> Result<PendingWrite, StoreError> {
        let rows = seal_batch(&self.cipher, host_id, agent, events)?;
        self.submit(Write::Events {
            host_id: host_id.to_owned(),
            agent: agent_name(agent),
            rows,
        })
    }

    /// Asking is how a new delivery session of the agent starts: it waits for the writes
    /// queued before it and lifts the refusal a failed write left for this agent (see
    /// [`super::queue`]), so the answer counts every batch the writer will ever store of it.
    fn highest_seq(&self, host_id: &str, agent: Source) -> Result<Option<u64>, StoreError> {
        self.submit(Write::Resume {
            host_id: host_id.to_owned(),
            agent: agent_name(agent),
        })?
        .wait()?;
        let client = self.client.clone();
        let host = host_id.to_owned();
        let row = self.run(async move {
            client
                .query_opt(
                    "SELECT max_seq FROM delivered WHERE host = $1 AND agent = $2",
                    &[&host, &agent_name(agent)],
                )
                .await
        })?;
        Ok(row.and_then(|r| u64::try_from(r.get::<_, i64>(0)).ok()))
    }

    fn query_events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let mut filters = Filters::default();
        if let Some(host) = &query.host {
            filters.and("host = ?", SqlValue::Text(host.clone()));
        }
        if let Some(since) = query.since_ns {
            filters.and("time_ns >= ?", SqlValue::Int(clamp_i64(since)));
        }
        if let Some(until) = query.until_ns {
            filters.and("time_ns < ?", SqlValue::Int(clamp_i64(until)));
        }
        if !query.kinds.is_empty() {
            filters.and("kind = ANY(?)", SqlValue::Texts(query.kinds.clone()));
        }
        filters.sql.push_str(" ORDER BY time_ns, host, agent, seq");
        let (conditions, params) = filters.limit(query.limit);
        let sql =
            format!("SELECT host, agent, seq, nonce, payload FROM events WHERE TRUE{conditions}");
        let client = self.client.clone();
        let rows = self.run(async move {
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(SqlValue::as_sql).collect();
            client.query(&sql, &refs).await
        })?;
        rows.into_iter()
            .map(|row| {
                open_event(
                    &self.cipher,
                    StoredRow {
                        host_id: row.get(0),
                        agent: row.get(1),
                        seq: row.get(2),
                        nonce: row.get(3),
                        payload: row.get(4),
                    },
                )
            })
            .collect()
    }

    fn submit_incident(&self, incident: &Incident) -> Result<PendingWrite, StoreError> {
        self.submit(Write::Incident(IncidentRow::encode(incident)?))
    }

    fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        let sql = "SELECT id, body FROM incidents WHERE id = $1".to_owned();
        Ok(self
            .bodies("incidents", sql, vec![SqlValue::Text(id.to_owned())])?
            .pop())
    }

    fn incidents(&self, query: &IncidentQuery) -> Result<Vec<Incident>, StoreError> {
        let mut filters = Filters::default();
        if let Some(host) = &query.host {
            filters.and("host = ?", SqlValue::Text(host.clone()));
        }
        if let Some(status) = query.status {
            filters.and("status = ?", SqlValue::Text(status.as_str().to_owned()));
        }
        if let Some(severity) = query.min_severity {
            filters.and("severity_rank >= ?", SqlValue::Int(severity_rank(severity)));
        }
        filters.sql.push_str(" ORDER BY updated_ns DESC, id");
        let (conditions, params) = filters.limit(query.limit);
        let sql = format!("SELECT id, body FROM incidents WHERE TRUE{conditions}");
        self.bodies("incidents", sql, params)
    }

    fn put_node_state(&self, record: &NodeStateRecord) -> Result<(), StoreError> {
        let body = to_json("node_states", &record.host, record)?;
        self.submit(Write::NodeState {
            host: record.host.clone(),
            body,
        })?
        .wait()
        .map(|_| ())
    }

    fn node_state(&self, host: &str) -> Result<Option<NodeStateRecord>, StoreError> {
        let sql = "SELECT host, body FROM node_states WHERE host = $1".to_owned();
        Ok(self
            .bodies("node_states", sql, vec![SqlValue::Text(host.to_owned())])?
            .pop())
    }

    fn node_states(&self) -> Result<Vec<NodeStateRecord>, StoreError> {
        let sql = "SELECT host, body FROM node_states ORDER BY host".to_owned();
        self.bodies("node_states", sql, Vec::new())
    }

    fn put_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        let body = to_json("actions", &record.id, record)?;
        let (id, host) = (record.id.clone(), record.host.clone());
        let status = record.status.as_str();
        let active = !record.is_final();
        let updated_ns = clamp_i64(record.updated_ns);
        let client = self.client.clone();
        self.run(async move {
            client
                .execute(
                    "INSERT INTO actions (id, host, status, active, updated_ns, body) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET \
                     host = excluded.host, status = excluded.status, active = excluded.active, \
                     updated_ns = excluded.updated_ns, body = excluded.body",
                    &[&id, &host, &status, &active, &updated_ns, &body],
                )
                .await
        })
        .map(|_| ())
    }

    fn action(&self, id: &str) -> Result<Option<ActionRecord>, StoreError> {
        let sql = "SELECT id, body FROM actions WHERE id = $1".to_owned();
        Ok(self
            .bodies("actions", sql, vec![SqlValue::Text(id.to_owned())])?
            .pop())
    }

    fn actions(&self, query: &ActionQuery) -> Result<Vec<ActionRecord>, StoreError> {
        let mut filters = Filters::default();
        if let Some(host) = &query.host {
            filters.and("host = ?", SqlValue::Text(host.clone()));
        }
        if let Some(status) = query.status {
            filters.and("status = ?", SqlValue::Text(status.as_str().to_owned()));
        }
        if query.active_only {
            filters.and("active = ?", SqlValue::Bool(true));
        }
        filters.sql.push_str(" ORDER BY updated_ns DESC, id");
        let (conditions, params) = filters.limit(query.limit);
        let sql = format!("SELECT id, body FROM actions WHERE TRUE{conditions}");
        self.bodies("actions", sql, params)
    }

    fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now_ns: u64,
    ) -> Result<RetentionReport, StoreError> {
        let cutoff = policy.max_age_s.map(|max_age_s| {
            clamp_i64(now_ns.saturating_sub(max_age_s.saturating_mul(1_000_000_000)))
        });
        let max_bytes = policy.max_bytes.map(clamp_i64);
        let config = self.config.clone();
        let report = block_on(self.runtime()?, async move {
            // A transaction needs a connection of its own; retention runs every few minutes.
            let client = connect(config).await?;
            Ok::<_, StoreError>(retention(client, cutoff, max_bytes).await?)
        })??;
        if report.deleted_by_age + report.deleted_by_size > 0 {
            tracing::info!(?report, "store retention applied");
        }
        Ok(report)
    }
}

/// Deletes events older than `cutoff`, then the oldest ones while the stored bytes exceed
/// `max_bytes`, in one transaction.
async fn retention(
    mut client: Client,
    cutoff: Option<i64>,
    max_bytes: Option<i64>,
) -> Result<RetentionReport, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let mut report = RetentionReport::default();
    if let Some(cutoff) = cutoff {
        report.deleted_by_age = tx
            .execute("DELETE FROM events WHERE time_ns < $1", &[&cutoff])
            .await?;
    }
    if let Some(max_bytes) = max_bytes {
        // A row goes while the bytes of the older rows before it are still over the budget.
        report.deleted_by_size = tx
            .execute(
                &format!(
                    "WITH sized AS (
                         SELECT id, time_ns, GREATEST({EVENT_BYTES_SQL}, 1) AS bytes FROM events
                     ), running AS (
                         SELECT id,
                                SUM(bytes) OVER (ORDER BY time_ns, id
                                    ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) - bytes
                                    AS before,
                                SUM(bytes) OVER () AS total
                         FROM sized
                     )
                     DELETE FROM events WHERE id IN
                         (SELECT id FROM running WHERE before < total - $1)"
                ),
                &[&max_bytes],
            )
            .await?;
    }
    let row = tx
        .query_one(
            &format!("SELECT COUNT(*), COALESCE(SUM({EVENT_BYTES_SQL}), 0)::BIGINT FROM events"),
            &[],
        )
        .await?;
    tx.commit().await?;
    report.remaining_events = row.get::<_, i64>(0).max(0) as u64;
    report.remaining_bytes = row.get::<_, i64>(1).max(0) as u64;
    Ok(report)
}

/// A PostgreSQL schema of a test's own, for the tests of every PostgreSQL-backed part.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::{PostgresConfig, StoreError, connect};

    /// A server that never answers (nothing listens on port 1).
    pub fn unreachable_config() -> PostgresConfig {
        PostgresConfig {
            url: "host=127.0.0.1 port=1 user=qsc dbname=qsc connect_timeout=2".into(),
            password_file: std::path::PathBuf::new(),
            schema: "qsc".into(),
        }
    }

    /// Where the tests find PostgreSQL: `cargo xtask setup --scale` starts it there.
    fn test_url() -> String {
        std::env::var("QSC_TEST_PG_URL").unwrap_or_else(|_| {
            "host=127.0.0.1 port=5432 user=qsc password=qsc dbname=qsc connect_timeout=5".into()
        })
    }

    /// A schema named for the test process, dropped (with everything in it) at the end.
    pub(crate) struct TestSchema {
        pub(crate) config: PostgresConfig,
    }

    impl TestSchema {
        /// `None` (printing why) when no PostgreSQL answers, unless the run requires the
        /// server tests (`QSC_REQUIRE_ROOT_TESTS=1`, as in `cargo xtask test`).
        pub(crate) fn new(prefix: &str) -> Option<Self> {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let schema = TestSchema {
                config: PostgresConfig {
                    url: test_url(),
                    password_file: std::path::PathBuf::new(),
                    schema: format!(
                        "{prefix}_{}_{}",
                        std::process::id(),
                        NEXT.fetch_add(1, Ordering::Relaxed)
                    ),
                },
            };
            match schema.sql("SELECT 1".into()) {
                Ok(()) => Some(schema),
                Err(error) if std::env::var("QSC_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1") => {
                    panic!("PostgreSQL is required ({error}); run `cargo xtask setup --scale`")
                }
                Err(error) => {
                    eprintln!(
                        "skipping: no PostgreSQL ({error}); `sudo cargo xtask setup --scale` starts one"
                    );
                    None
                }
            }
        }

        /// Runs SQL statements in the schema on a connection of their own.
        pub(crate) fn sql(&self, sql: String) -> Result<(), StoreError> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| StoreError::Thread(e.to_string()))?;
            let config = self.config.clone();
            runtime.block_on(async move {
                let client = connect(config).await?;
                Ok(client.batch_execute(&sql).await?)
            })
        }
    }

    impl Drop for TestSchema {
        fn drop(&mut self) {
            let schema = self.config.schema.clone();
            if let Err(error) = self.sql(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")) {
                eprintln!("cannot drop test schema {schema}: {error}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::TestSchema;
    use super::*;
    use crate::store::conformance::{self, Backend, KEY, exec};

    /// A store in a schema of its own per test.
    struct PgBackend {
        schema: TestSchema,
        config: PostgresConfig,
    }

    impl PgBackend {
        fn new() -> Option<Self> {
            let schema = TestSchema::new("qsc_test")?;
            let config = schema.config.clone();
            Some(PgBackend { schema, config })
        }

        fn sql(&self, sql: String) -> Result<(), StoreError> {
            self.schema.sql(sql)
        }
    }

    impl Backend for PgBackend {
        fn open(&self) -> Box<dyn Store> {
            Box::new(PostgresStore::open_with_key(&self.config, &KEY).unwrap())
        }

        fn fail_inserts_of_seq(&self, seq: u64) {
            let schema = &self.config.schema;
            self.sql(format!(
                "CREATE FUNCTION {schema}.fail_seq() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN RAISE EXCEPTION 'injected failure'; END $$;
                 CREATE TRIGGER fail_seq BEFORE INSERT ON {schema}.events FOR EACH ROW
                 WHEN (NEW.seq = {seq}) EXECUTE FUNCTION {schema}.fail_seq();"
            ))
            .unwrap();
        }

        fn stop_failing(&self) {
            let schema = &self.config.schema;
            self.sql(format!(
                "DROP TRIGGER fail_seq ON {schema}.events; DROP FUNCTION {schema}.fail_seq();"
            ))
            .unwrap();
        }
    }

    conformance::conformance_tests!(PgBackend::new());

    #[test]
    fn a_wrong_master_key_is_refused_and_payloads_are_sealed() {
        let Some(backend) = PgBackend::new() else {
            return;
        };
        let store = backend.open();
        store
            .append_events("web-01", Source::Alpha, &[exec("web-01", 1, 1)])
            .unwrap();
        drop(store);
        assert!(matches!(
            PostgresStore::open_with_key(&backend.config, &[4u8; 32]),
            Err(StoreError::PostgresWrongMasterKey(_))
        ));
        // A payload moved to another row fails to open.
        backend
            .sql(format!(
                "INSERT INTO {0}.events (host, agent, seq, time_ns, kind, nonce, payload) \
                 SELECT host, agent, 2, time_ns, kind, nonce, payload FROM {0}.events",
                backend.config.schema
            ))
            .unwrap();
        let err = backend
            .open()
            .query_events(&EventQuery::default())
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Cipher(super::super::cipher::CipherError::Open { seq: 2, .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn an_unreachable_server_is_an_error_also_inside_an_async_task() {
        let config = test_support::unreachable_config();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let opened = runtime.block_on(async { PostgresStore::open_with_key(&config, &KEY).err() });
        assert!(
            matches!(opened, Some(StoreError::PostgresConnect { .. })),
            "{opened:?}"
        );
    }

    #[test]
    fn it_works_from_inside_an_async_task() {
        let Some(backend) = PgBackend::new() else {
            return;
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stored = runtime.block_on(async {
            let store = backend.open();
            store
                .append_events("web-01", Source::Alpha, &[exec("web-01", 1, 1)])
                .unwrap();
            store.highest_seq("web-01", Source::Alpha).unwrap()
        });
        assert_eq!(stored, Some(1));
    }
}
