//! The SQLite store's one writer thread: group commit.
//!
//! Callers validate and encrypt on their own threads and queue ready rows. The writer takes the
//! first waiting job and every job queued behind it (up to [`MAX_GROUP_EVENTS`] events), writes
//! them all in one transaction and commits once, so one fsync covers many batches from many
//! agent sessions: while a commit's fsync runs, the next jobs pile up and form the next group.
//! Jobs commit in queue order, and each is answered only once its group is durable.
//!
//! After a failed group the writer refuses the later event writes of the agents whose events
//! were in it until they resume, as every store writer does ([`super::queue::FailedAgents`]).
//! A resume never waits for the queue ([`Writer::resume`]).
//!
//! The writer keeps each host's number and each agent's highest stored seq in memory
//! ([`Known`]), read from the tables on first use and forgotten after a failed group, so an
//! insert needs no lookups.
//!
//! A second thread checkpoints the WAL into the database file in the background, so that the
//! writer's commits never pay for it (the writer's connection has auto-checkpoint off).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::queue::{AgentKey, Answer, FailedAgents, Job, SealedRow, Write};
use super::{AppendOutcome, StoreError};

/// Most events one group transaction takes; the rest wait for the next group.
const MAX_GROUP_EVENTS: usize = 32_768;
/// Jobs that may wait for the writer before submitters block.
const QUEUE_JOBS: usize = 1024;
/// How often the WAL is checkpointed into the database file. Pages rewritten by many commits
/// in between (the growing ends of the indexes) are copied once.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// The writer's page cache, in KiB: large enough that a group's index pages never spill to
/// disk mid-transaction and are not read back for the next group.
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// The queue to the writer and its two threads; dropping it drains the queue and stops both.
pub(super) struct Writer {
    jobs: Option<Sender<Job>>,
    stop_checkpoints: Option<Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer on `conn` and the checkpointer on a second connection to `path`.
    pub fn start(conn: Connection, path: &Path) -> Result<Self, StoreError> {
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        let checkpoint_conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        checkpoint_conn.busy_timeout(Duration::from_secs(5))?;
        let (jobs, queue) = crossbeam_channel::bounded(QUEUE_JOBS);
        let (stop_checkpoints, stop) = crossbeam_channel::bounded(1);
        let spawn_error = |error: std::io::Error| StoreError::Thread(error.to_string());
        let writer = std::thread::Builder::new()
            .name("cortex-store-writer".into())
            .spawn(move || run_writer(conn, queue))
            .map_err(spawn_error)?;
        let checkpointer = std::thread::Builder::new()
            .name("cortex-store-checkpoint".into())
            .spawn({
                let path = path.to_owned();
                move || run_checkpointer(checkpoint_conn, path, stop)
            })
            .map_err(spawn_error)?;
        Ok(Writer {
            jobs: Some(jobs),
            stop_checkpoints: Some(stop_checkpoints),
            threads: vec![writer, checkpointer],
        })
    }

    /// Queues `write`; the returned receiver gets the result once it is committed.
    pub fn submit(&self, write: Write) -> Result<Answer, StoreError> {
        let (job, answer) = Job::new(write);
        self.jobs
            .as_ref()
            .ok_or(StoreError::WriterStopped)
            .and_then(|jobs| jobs.send(job).map_err(|_| StoreError::WriterStopped))?;
        Ok(answer)
    }

    /// Queues the agent's resume, which lifts a refusal its failed commit left for the jobs
    /// behind it, and returns without waiting: the resume point is then read from what is
    /// committed. Writes of the agent still in the queue are delivered again after that point
    /// and skipped as re-deliveries if they commit, stored if they fail; so a reconnect (after
    /// a key rotation, say) never waits for a commit.
    pub fn resume(&self, host_id: &str, agent: &'static str) -> Result<(), StoreError> {
        self.submit(Write::Resume {
            host_id: host_id.to_owned(),
            agent,
        })
        .map(drop)
    }

    /// Queues `write` and waits for its commit.
    pub fn write(&self, write: Write) -> Result<AppendOutcome, StoreError> {
        self.submit(write)?
            .recv()
            .map_err(|_| StoreError::WriterStopped)?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue lets the writer commit what is queued and end.
        self.jobs.take();
        self.stop_checkpoints.take();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a store thread panicked");
            }
        }
    }
}

fn run_writer(mut conn: Connection, queue: Receiver<Job>) {
    let mut failed = FailedAgents::default();
    let mut known = Known::default();
    while let Ok(first) = queue.recv() {
        let mut events = first.write.event_count();
        let mut group = vec![first];
        while events < MAX_GROUP_EVENTS {
            let Ok(next) = queue.try_recv() else {
                break;
            };
            events += next.write.event_count();
            group.push(next);
        }
        let group = failed.admit(group);
        let answers = commit_group(&mut conn, group, &mut failed, &mut known);
        for (job, answer) in answers {
            // A submitter that stopped waiting does not need the answer.
            let _ = job.reply.send(answer);
        }
    }
}

/// Writes every job of the group in one transaction and returns each job with its answer,
/// to be sent now that the group is durable. If anything fails nothing of the group is
/// stored, every job gets the error, and the agents whose events were in it are refused until
/// they resume.
fn commit_group(
    conn: &mut Connection,
    group: Vec<Job>,
    failed: &mut FailedAgents,
    known: &mut Known,
) -> Vec<(Job, Result<AppendOutcome, StoreError>)> {
    if group.is_empty() {
        return Vec::new();
    }
    // Immediate: the group reads (`Known`) before it writes, and a read transaction that
    // then finds the write lock taken (by retention, say) fails at once instead of waiting.
    let result = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(StoreError::from)
        .and_then(|tx| {
            let outcomes = group
                .iter()
                .map(|job| apply(&tx, known, &job.write))
                .collect::<Result<Vec<_>, _>>()?;
            tx.commit()?;
            Ok(outcomes)
        });
    match result {
        Ok(outcomes) => group
            .into_iter()
            .zip(outcomes.into_iter().map(Ok))
            .collect(),
        Err(error) => {
            tracing::error!(%error, jobs = group.len(), "store group commit failed");
            // The rollback undid whatever of the group `known` learnt.
            *known = Known::default();
            let reason = error.to_string();
            failed.failed(group.iter().map(|job| &job.write));
            group
                .into_iter()
                .map(|job| (job, Err(StoreError::GroupCommit(reason.clone()))))
                .collect()
        }
    }
}

fn apply(
    tx: &Transaction<'_>,
    known: &mut Known,
    write: &Write,
) -> Result<AppendOutcome, StoreError> {
    match write {
        Write::Events {
            host_id,
            agent,
            rows,
        } => insert_events(tx, known, host_id, agent, rows),
        Write::Incident(row) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO incidents (id, host, severity_rank, status, updated_ns, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                row.id,
                row.host,
                row.severity_rank,
                row.status,
                row.updated_ns,
                row.body
            ])?;
            Ok(AppendOutcome::default())
        }
        Write::NodeState { host, body } => {
            tx.prepare_cached("INSERT OR REPLACE INTO node_states (host, body) VALUES (?1, ?2)")?
                .execute(params![host, body])?;
            Ok(AppendOutcome::default())
        }
        Write::Resume { .. } => Ok(AppendOutcome::default()),
    }
}

/// Inserts the rows above the agent's highest stored seq; the others are re-deliveries.
fn insert_events(
    tx: &Transaction<'_>,
    known: &mut Known,
    host_id: &str,
    agent: &'static str,
    rows: &[SealedRow],
) -> Result<AppendOutcome, StoreError> {
    let host = known.host_number(tx, host_id)?;
    let agent_key = (host_id.to_owned(), agent);
    let mut max_seq = known.max_seq(tx, &agent_key)?;
    let mut outcome = AppendOutcome::default();
    let mut insert = tx.prepare_cached(
        "INSERT INTO events (host, agent, seq, time_ns, kind, nonce, payload)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for row in rows {
        if max_seq.is_some_and(|max| row.seq <= max) {
            outcome.duplicates.push(row.seq as u64);
            continue;
        }
        insert.execute(params![
            host,
            agent,
            row.seq,
            row.time_ns,
            row.kind,
            row.nonce.as_slice(),
            row.payload
        ])?;
        outcome.inserted += 1;
        max_seq = Some(row.seq);
    }
    if outcome.inserted > 0
        && let Some(max_seq) = max_seq
    {
        tx.prepare_cached(
            "INSERT INTO delivered (host, agent, max_seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (host, agent) DO UPDATE SET max_seq = MAX(max_seq, excluded.max_seq)",
        )?
        .execute(params![host_id, agent, max_seq])?;
        known.max_seqs.insert(agent_key, Some(max_seq));
    }
    Ok(outcome)
}

/// What the writer has read or written of the `hosts` and `delivered` tables.
#[derive(Default)]
struct Known {
    host_numbers: HashMap<String, i64>,
    max_seqs: HashMap<AgentKey, Option<i64>>,
}

impl Known {
    /// The host's number, numbering it if it is new.
    fn host_number(&mut self, tx: &Transaction<'_>, host_id: &str) -> Result<i64, StoreError> {
        if let Some(number) = self.host_numbers.get(host_id) {
            return Ok(*number);
        }
        tx.prepare_cached("INSERT OR IGNORE INTO hosts (name) VALUES (?1)")?
            .execute([host_id])?;
        let number = tx
            .prepare_cached("SELECT id FROM hosts WHERE name = ?1")?
            .query_row([host_id], |row| row.get(0))?;
        self.host_numbers.insert(host_id.to_owned(), number);
        Ok(number)
    }

    /// The agent's highest stored seq, if it has any.
    fn max_seq(
        &mut self,
        tx: &Transaction<'_>,
        agent: &AgentKey,
    ) -> Result<Option<i64>, StoreError> {
        if let Some(max_seq) = self.max_seqs.get(agent) {
            return Ok(*max_seq);
        }
        let max_seq = tx
            .prepare_cached("SELECT max_seq FROM delivered WHERE host = ?1 AND agent = ?2")?
            .query_row(params![agent.0, agent.1], |row| row.get(0))
            .optional()?;
        self.max_seqs.insert(agent.clone(), max_seq);
        Ok(max_seq)
    }
}

/// Checkpoints the WAL every [`CHECKPOINT_INTERVAL`] until the writer is dropped. `PASSIVE`
/// never blocks the writer; what it cannot copy now it copies next time.
fn run_checkpointer(conn: Connection, path: PathBuf, stop: Receiver<()>) {
    // Nothing is ever sent on `stop`: it disconnects when the writer is dropped.
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_INTERVAL) {
        if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(%error, path = %path.display(), "store WAL checkpoint failed");
        }
    }
    // A last full checkpoint keeps the WAL small across restarts.
    if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::warn!(%error, path = %path.display(), "store WAL checkpoint failed");
    }
}
