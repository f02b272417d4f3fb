//! The embedded SQLite store.
//!
//! WAL journal with `synchronous=FULL`: a commit returns after the WAL is fsynced, so an
//! acknowledged batch survives a crash or power loss. Writes go through one writer thread that
//! commits whatever is queued as one group (see [`super::writer`]); reads use their own
//! connection and never wait for a commit. Events keep only the columns queries need in
//! plaintext (`host`, `agent`, `seq`, `time_ns`, `kind`); the event JSON is sealed with
//! AES-256-GCM (see [`super::cipher`]) by the submitting thread, outside the writer.
//! A key-check value sealed at creation lets a wrong master key fail at open time.
//!
//! The writer's cost per event is mostly B-tree inserts, so the events table is kept lean:
//! hosts are numbered in a `hosts` table (indexes compare integers, not names), and there is
//! no unique index on `(host, agent, seq)`. Re-delivery is still idempotent: an agent's
//! stored seqs are always a prefix of its delivery (a failed commit refuses the agent's later
//! batches until it resumes after the highest stored seq), so an event at or below the
//! agent's `delivered.max_seq` is a re-delivery, and the writer skips it.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use qsc_event::{Event, Source};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::cipher::PayloadCipher;
use super::codec::{
    StoredRow, agent_name, clamp_i64, from_json, key_check_opens, new_key_check, open_event,
    seal_delivered, severity_rank, to_json,
};
use super::key_file::{KEY_LEN, read_key_file};
use super::queue::{IncidentRow, Write};
use super::writer::Writer;
use super::{
    ActionQuery, EventQuery, IncidentQuery, MAX_QUERY_LIMIT, PendingWrite, RetentionPolicy,
    RetentionReport, Store, StoreError,
};
use crate::decide::NodeStateRecord;
use crate::respond::ActionRecord;
use crate::score::Incident;

/// Version 3 numbers hosts and dedups by `delivered.max_seq`; version 2 had the host's name
/// and a unique index on `(host, agent, seq)` in the events table; version 1 keyed events by
/// `(host, seq)`.
const SCHEMA_VERSION: i64 = 3;

/// Pages of a new store: fewer, larger pages make fewer B-tree splits and WAL frames per
/// event. An existing store keeps its page size.
const PAGE_SIZE: i64 = 16 * 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS hosts (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS events (
    host    INTEGER NOT NULL REFERENCES hosts (id),
    agent   TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    nonce   BLOB NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (time_ns);
CREATE INDEX IF NOT EXISTS events_by_host_time ON events (host, time_ns);
CREATE TABLE IF NOT EXISTS delivered (
    host    TEXT NOT NULL,
    agent   TEXT NOT NULL,
    max_seq INTEGER NOT NULL,
    PRIMARY KEY (host, agent)
);
CREATE TABLE IF NOT EXISTS incidents (
    id            TEXT PRIMARY KEY,
    host          TEXT NOT NULL,
    severity_rank INTEGER NOT NULL,
    status        TEXT NOT NULL,
    updated_ns    INTEGER NOT NULL,
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
    active     INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    body       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS actions_by_updated ON actions (updated_ns);
";

/// A version 2 store's events table is moved aside before [`SCHEMA`] creates the version 3
/// one, and [`COPY_FROM_2`] moves its rows over, all in one transaction.
const MOVE_ASIDE_2: &str = "
DROP INDEX events_by_time;
DROP INDEX events_by_host_time;
ALTER TABLE events RENAME TO events_v2;
";

/// Rows keep their order, so ties in time keep theirs.
const COPY_FROM_2: &str = "
INSERT INTO hosts (name) SELECT DISTINCT host FROM events_v2 ORDER BY host;
INSERT INTO events (host, agent, seq, time_ns, kind, nonce, payload)
    SELECT hosts.id, old.agent, old.seq, old.time_ns, old.kind, old.nonce, old.payload
    FROM events_v2 AS old JOIN hosts ON hosts.name = old.host ORDER BY old.rowid;
DROP TABLE events_v2;
";

/// Bytes counted for one event row: its text and blob columns plus 32 for its four integers.
const EVENT_BYTES_SQL: &str = "length(agent) + length(kind) + length(nonce) + length(payload) + 32";

pub struct SqliteStore {
    /// Reads and retention; writes of events, incidents and node states go to `writer`.
    conn: Mutex<Connection>,
    writer: Writer,
    cipher: PayloadCipher,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` with the master key in `master_key_file`.
    pub fn open(path: &Path, master_key_file: &Path) -> Result<Self, StoreError> {
        let master_key = read_key_file(master_key_file)?;
        Self::open_with_key(path, &master_key)
    }

    pub fn open_with_key(path: &Path, master_key: &[u8; KEY_LEN]) -> Result<Self, StoreError> {
        let open = || {
            Connection::open(path).map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })
        };
        let mut conn = open()?;
        init_schema(&mut conn, path)?;
        let cipher = PayloadCipher::from_master_key(master_key)?;
        check_master_key(&conn, &cipher, path)?;
        let write_conn = open()?;
        write_conn.busy_timeout(std::time::Duration::from_secs(5))?;
        write_conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            writer: Writer::start(write_conn, path)?,
            cipher,
        })
    }

    /// The JSON `body` of the row with this `id` in `table` (one of our own table names).
    fn body_by_id<T: serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
        id: &str,
    ) -> Result<Option<T>, StoreError> {
        let conn = self.lock();
        let body: Option<String> = conn
            .query_row(
                &format!("SELECT body FROM {table} WHERE id = ?1"),
                [id],
                |row| row.get(0),
            )
            .optional()?;
        body.map(|b| from_json(table, id, &b)).transpose()
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves no partial write: SQLite rolls the open
        // transaction back when it is dropped.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn init_schema(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Takes effect only while the file is still empty.
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::JournalMode { mode });
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    let version = user_version(conn)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaVersion {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version == 1 {
        return Err(StoreError::ObsoleteSchema {
            path: path.to_owned(),
            found: version,
        });
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    // Immediate: a second process (`cortex events search` beside the service) opening a store
    // that needs no change never gets here; one that does waits for the write lock, then reads
    // the version again (another process may have created or migrated the store meanwhile).
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version = user_version(&tx)?;
    if version < SCHEMA_VERSION {
        if version == 2 {
            tx.execute_batch(MOVE_ASIDE_2)?;
        }
        tx.execute_batch(SCHEMA)?;
        if version == 2 {
            tx.execute_batch(COPY_FROM_2)?;
            tracing::info!(path = %path.display(), "store migrated from schema version 2 to 3");
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA user_version", [], |row| row.get(0))?)
}

fn check_master_key(
    conn: &Connection,
    cipher: &PayloadCipher,
    path: &Path,
) -> Result<(), StoreError> {
    let stored: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'key_check'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    match stored {
        Some(value) if key_check_opens(cipher, &value) => Ok(()),
        Some(_) => Err(StoreError::WrongMasterKey {
            path: PathBuf::from(path),
        }),
        None => {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('key_check', ?1)",
                [new_key_check(cipher)?],
            )?;
            Ok(())
        }
    }
}

impl Store for SqliteStore {
    fn submit_events(
        &self,
        host_id: &str,
        agent: Source,
        events: &[Event],
    ) -> Result<PendingWrite, StoreError> {
        self.submit_delivered(host_id, agent, events, &[])
    }

    fn submit_delivered(
        &self,
        host_id: &str,
        agent: Source,
        events: &[Event],
        delivered: &[Option<&[u8]>],
    ) -> Result<PendingWrite, StoreError> {
        let rows = seal_delivered(&self.cipher, host_id, agent, events, delivered)?;
        let answer = self.writer.submit(Write::Events {
            host_id: host_id.to_owned(),
            agent: agent_name(agent),
            rows,
        })?;
        Ok(PendingWrite::new(answer))
    }

    /// Asking is how a new delivery session of the agent starts: it queues the lifting of the
    /// refusal a failed commit left for this agent and answers from what is committed, without
    /// waiting for the writes queued before it (see [`super::writer`]). The agent delivers
    /// those again: the writer skips what they stored, and detection what it analysed.
    fn highest_seq(&self, host_id: &str, agent: Source) -> Result<Option<u64>, StoreError> {
        self.writer.resume(host_id, agent_name(agent))?;
        let conn = self.lock();
        let seq: Option<i64> = conn
            .prepare_cached("SELECT max_seq FROM delivered WHERE host = ?1 AND agent = ?2")?
            .query_row(params![host_id, agent_name(agent)], |row| row.get(0))
            .optional()?;
        Ok(seq.and_then(|s| u64::try_from(s).ok()))
    }

    fn query_events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let mut sql = String::from(
            "SELECT hosts.name, agent, seq, nonce, payload FROM events \
             JOIN hosts ON hosts.id = events.host WHERE 1 = 1",
        );
        let mut values: Vec<Value> = Vec::new();
        if let Some(host) = &query.host {
            sql.push_str(" AND events.host = (SELECT id FROM hosts WHERE name = ?)");
            values.push(Value::Text(host.clone()));
        }
        if let Some(since) = query.since_ns {
            sql.push_str(" AND time_ns >= ?");
            values.push(Value::Integer(clamp_i64(since)));
        }
        if let Some(until) = query.until_ns {
            sql.push_str(" AND time_ns < ?");
            values.push(Value::Integer(clamp_i64(until)));
        }
        if !query.kinds.is_empty() {
            let placeholders = vec!["?"; query.kinds.len()].join(", ");
            sql.push_str(&format!(" AND kind IN ({placeholders})"));
            values.extend(query.kinds.iter().cloned().map(Value::Text));
        }
        // Ties in time go in the order hosts were first stored, then by agent and seq.
        sql.push_str(" ORDER BY time_ns, events.host, agent, seq LIMIT ?");
        values.push(Value::Integer(query.limit.min(MAX_QUERY_LIMIT) as i64));

        let conn = self.lock();
        let mut statement = conn.prepare(&sql)?;
        let rows = statement.query_map(params_from_iter(values), |row| {
            Ok(StoredRow {
                host_id: row.get(0)?,
                agent: row.get(1)?,
                seq: row.get(2)?,
                nonce: row.get(3)?,
                payload: row.get(4)?,
            })
        })?;
        let mut events = Vec::new();
        for row in rows {
            events.push(open_event(&self.cipher, row?)?);
        }
        Ok(events)
    }

    fn submit_incident(&self, incident: &Incident) -> Result<PendingWrite, StoreError> {
        let row = IncidentRow::encode(incident)?;
        Ok(PendingWrite::new(self.writer.submit(Write::Incident(row))?))
    }

    fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        self.body_by_id("incidents", id)
    }

    fn incidents(&self, query: &IncidentQuery) -> Result<Vec<Incident>, StoreError> {
        let mut sql = String::from("SELECT id, body FROM incidents WHERE 1 = 1");
        let mut values: Vec<Value> = Vec::new();
        if let Some(host) = &query.host {
            sql.push_str(" AND host = ?");
            values.push(Value::Text(host.clone()));
        }
        if let Some(status) = query.status {
            sql.push_str(" AND status = ?");
            values.push(Value::Text(status.as_str().to_owned()));
        }
        if let Some(severity) = query.min_severity {
            sql.push_str(" AND severity_rank >= ?");
            values.push(Value::Integer(severity_rank(severity)));
        }
        sql.push_str(" ORDER BY updated_ns DESC, id LIMIT ?");
        values.push(Value::Integer(query.limit.min(MAX_QUERY_LIMIT) as i64));
        let conn = self.lock();
        let mut statement = conn.prepare(&sql)?;
        let rows = statement.query_map(params_from_iter(values), |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut incidents = Vec::new();
        for row in rows {
            let (id, body) = row?;
            incidents.push(from_json("incidents", &id, &body)?);
        }
        Ok(incidents)
    }

    fn put_node_state(&self, record: &NodeStateRecord) -> Result<(), StoreError> {
        let body = to_json("node_states", &record.host, record)?;
        self.writer
            .write(Write::NodeState {
                host: record.host.clone(),
                body,
            })
            .map(|_| ())
    }

    fn node_state(&self, host: &str) -> Result<Option<NodeStateRecord>, StoreError> {
        let conn = self.lock();
        let body: Option<String> = conn
            .query_row(
                "SELECT body FROM node_states WHERE host = ?1",
                [host],
                |row| row.get(0),
            )
            .optional()?;
        body.map(|b| from_json("node_states", host, &b)).transpose()
    }

    fn node_states(&self) -> Result<Vec<NodeStateRecord>, StoreError> {
        let conn = self.lock();
        let mut statement = conn.prepare("SELECT host, body FROM node_states ORDER BY host")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut records = Vec::new();
        for row in rows {
            let (host, body) = row?;
            records.push(from_json("node_states", &host, &body)?);
        }
        Ok(records)
    }

    fn put_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        let body = to_json("actions", &record.id, record)?;
        // Response actions are rare: written directly, not through the event writer's groups.
        self.lock().execute(
            "INSERT OR REPLACE INTO actions (id, host, status, active, updated_ns, body) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                record.id,
                record.host,
                record.status.as_str(),
                !record.is_final(),
                clamp_i64(record.updated_ns),
                body
            ],
        )?;
        Ok(())
    }

    fn action(&self, id: &str) -> Result<Option<ActionRecord>, StoreError> {
        self.body_by_id("actions", id)
    }

    fn actions(&self, query: &ActionQuery) -> Result<Vec<ActionRecord>, StoreError> {
        let mut sql = String::from("SELECT id, body FROM actions WHERE 1 = 1");
        let mut values: Vec<Value> = Vec::new();
        if let Some(host) = &query.host {
            sql.push_str(" AND host = ?");
            values.push(Value::Text(host.clone()));
        }
        if let Some(status) = query.status {
            sql.push_str(" AND status = ?");
            values.push(Value::Text(status.as_str().to_owned()));
        }
        if query.active_only {
            sql.push_str(" AND active = 1");
        }
        sql.push_str(" ORDER BY updated_ns DESC, id LIMIT ?");
        values.push(Value::Integer(query.limit.min(MAX_QUERY_LIMIT) as i64));
        let conn = self.lock();
        let mut statement = conn.prepare(&sql)?;
        let rows = statement.query_map(params_from_iter(values), |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut actions = Vec::new();
        for row in rows {
            let (id, body) = row?;
            actions.push(from_json("actions", &id, &body)?);
        }
        Ok(actions)
    }

    fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now_ns: u64,
    ) -> Result<RetentionReport, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut report = RetentionReport::default();
        if let Some(max_age_s) = policy.max_age_s {
            let cutoff = now_ns.saturating_sub(max_age_s.saturating_mul(1_000_000_000));
            report.deleted_by_age =
                tx.execute("DELETE FROM events WHERE time_ns < ?1", [clamp_i64(cutoff)])? as u64;
        }
        if let Some(max_bytes) = policy.max_bytes {
            report.deleted_by_size = delete_oldest_over_budget(&tx, clamp_i64(max_bytes))?;
        }
        let (count, bytes): (i64, i64) = tx.query_row(
            &format!("SELECT COUNT(*), COALESCE(SUM({EVENT_BYTES_SQL}), 0) FROM events"),
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        tx.commit()?;
        report.remaining_events = count.max(0) as u64;
        report.remaining_bytes = bytes.max(0) as u64;
        if report.deleted_by_age + report.deleted_by_size > 0 {
            tracing::info!(
                deleted_by_age = report.deleted_by_age,
                deleted_by_size = report.deleted_by_size,
                remaining_events = report.remaining_events,
                "store retention applied"
            );
        }
        Ok(report)
    }
}

/// Deletes the oldest events until the stored bytes fit `max_bytes`; returns how many.
fn delete_oldest_over_budget(conn: &Connection, max_bytes: i64) -> Result<u64, StoreError> {
    let total: i64 = conn.query_row(
        &format!("SELECT COALESCE(SUM({EVENT_BYTES_SQL}), 0) FROM events"),
        [],
        |row| row.get(0),
    )?;
    let mut excess = total - max_bytes;
    if excess <= 0 {
        return Ok(0);
    }
    let mut statement = conn.prepare(&format!(
        "SELECT rowid, {EVENT_BYTES_SQL} FROM events ORDER BY time_ns, rowid"
    ))?;
    let mut rows = statement.query([])?;
    let mut doomed = Vec::new();
    while excess > 0 {
        let Some(row) = rows.next()? else {
            break;
        };
        doomed.push(row.get::<_, i64>(0)?);
        excess -= row.get::<_, i64>(1)?.max(1);
    }
    drop(rows);
    let mut delete = conn.prepare("DELETE FROM events WHERE rowid = ?1")?;
    for rowid in &doomed {
        delete.execute([rowid])?;
    }
    Ok(doomed.len() as u64)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use qsc_event::Source;

    use super::*;
    use crate::store::conformance::{self, Backend, KEY, SECRET, exec};

    /// A store file in a temporary folder, reopened by each `open`.
    struct SqliteBackend {
        dir: tempfile::TempDir,
    }

    impl SqliteBackend {
        fn new() -> Option<Self> {
            Some(SqliteBackend {
                dir: tempfile::tempdir().unwrap(),
            })
        }
    }

    impl SqliteBackend {
        fn path(&self) -> PathBuf {
            self.dir.path().join("cortex.db")
        }

        fn sql(&self, sql: &str) {
            Connection::open(self.path())
                .unwrap()
                .execute_batch(sql)
                .unwrap();
        }
    }

    impl Backend for SqliteBackend {
        fn open(&self) -> Box<dyn Store> {
            Box::new(SqliteStore::open_with_key(&self.path(), &KEY).unwrap())
        }

        fn fail_inserts_of_seq(&self, seq: u64) {
            self.sql(&format!(
                "CREATE TRIGGER fail_seq BEFORE INSERT ON events WHEN NEW.seq = {seq}
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
            ));
        }

        fn stop_failing(&self) {
            self.sql("DROP TRIGGER fail_seq");
        }
    }

    conformance::conformance_tests!(SqliteBackend::new());

    fn store() -> (tempfile::TempDir, PathBuf, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cortex.db");
        let store = SqliteStore::open_with_key(&path, &KEY).unwrap();
        (dir, path, store)
    }

    #[test]
    fn a_version_1_store_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let raw = Connection::open(&path).unwrap();
        raw.pragma_update(None, "user_version", 1).unwrap();
        drop(raw);
        let error = SqliteStore::open_with_key(&path, &KEY).err().unwrap();
        assert!(matches!(error, StoreError::ObsoleteSchema { found: 1, .. }));
        assert!(error.to_string().contains("move it aside"), "{error}");
    }

    /// A store written by the version 2 schema (host names in the events table, a unique
    /// index on `(host, agent, seq)`) opens with its events, resume points and dedup intact.
    #[test]
    fn a_version_2_store_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.db");
        let raw = Connection::open(&path).unwrap();
        raw.execute_batch(
            "CREATE TABLE events (
                 host TEXT NOT NULL, agent TEXT NOT NULL, seq INTEGER NOT NULL,
                 time_ns INTEGER NOT NULL, kind TEXT NOT NULL, nonce BLOB NOT NULL,
                 payload BLOB NOT NULL, UNIQUE (host, agent, seq));
             CREATE INDEX events_by_time ON events (time_ns);
             CREATE INDEX events_by_host_time ON events (host, time_ns);
             CREATE TABLE delivered (host TEXT NOT NULL, agent TEXT NOT NULL,
                 max_seq INTEGER NOT NULL, PRIMARY KEY (host, agent));
             PRAGMA user_version = 2;",
        )
        .unwrap();
        let cipher = PayloadCipher::from_master_key(&KEY).unwrap();
        let mut stored = Vec::new();
        for (host, time) in [("web-02", 5), ("web-01", 7)] {
            let events = vec![exec(host, 1, time), exec(host, 2, time + 10)];
            let rows =
                super::super::codec::seal_batch(&cipher, host, Source::Alpha, &events).unwrap();
            for row in rows {
                raw.execute(
                    "INSERT INTO events VALUES (?1, 'alpha', ?2, ?3, ?4, ?5, ?6)",
                    params![
                        host,
                        row.seq,
                        row.time_ns,
                        row.kind,
                        &row.nonce[..],
                        row.payload
                    ],
                )
                .unwrap();
            }
            raw.execute("INSERT INTO delivered VALUES (?1, 'alpha', 2)", [host])
                .unwrap();
            stored.extend(events);
        }
        drop(raw);
        let store = SqliteStore::open_with_key(&path, &KEY).unwrap();
        stored.sort_by_key(|event| event.time_ns);
        assert_eq!(store.query_events(&EventQuery::default()).unwrap(), stored);
        let web_01 = EventQuery {
            host: Some("web-01".into()),
            ..EventQuery::default()
        };
        assert_eq!(store.query_events(&web_01).unwrap().len(), 2);
        assert_eq!(store.highest_seq("web-01", Source::Alpha).unwrap(), Some(2));
        let again = store
            .append_events(
                "web-01",
                Source::Alpha,
                &[exec("web-01", 2, 17), exec("web-01", 3, 30)],
            )
            .unwrap();
        assert_eq!((again.inserted, again.duplicates), (1, vec![2]));
        drop(store);
        let version: i64 = Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    /// A second process opens the store while the service's writer holds the write lock (as
    /// `cortex events search` does beside `cortex serve`).
    #[test]
    fn a_store_opens_while_another_connection_writes() {
        let (_dir, path, store) = store();
        let blocker = Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let second = SqliteStore::open_with_key(&path, &KEY);
        blocker.execute_batch("ROLLBACK").unwrap();
        assert!(second.is_ok(), "{:?}", second.err());
        drop(store);
    }

    #[test]
    fn payloads_are_encrypted_at_rest() {
        let (dir, path, store) = store();
        store
            .append_events("web-01", Source::Alpha, &[exec("web-01", 1, 1)])
            .unwrap();
        drop(store);
        let mut on_disk = Vec::new();
        for entry in fs::read_dir(dir.path()).unwrap() {
            on_disk.extend(fs::read(entry.unwrap().path()).unwrap());
        }
        assert!(!on_disk.is_empty());
        assert!(
            !on_disk
                .windows(SECRET.len())
                .any(|w| w == SECRET.as_bytes())
        );
        // Plaintext index columns are there for queries.
        assert!(on_disk.windows(12).any(|w| w == b"process_exec"));
        let reopened = SqliteStore::open_with_key(&path, &KEY).unwrap();
        assert_eq!(
            reopened.query_events(&EventQuery::default()).unwrap().len(),
            1
        );
    }

    #[test]
    fn a_payload_moved_to_another_row_fails_authentication() {
        let (_dir, path, store) = store();
        let batch = vec![exec("web-01", 1, 1), exec("web-01", 2, 2)];
        store
            .append_events("web-01", Source::Alpha, &batch)
            .unwrap();
        let raw = Connection::open(&path).unwrap();
        raw.execute(
            "UPDATE events SET nonce = (SELECT nonce FROM events WHERE seq = 1),
                               payload = (SELECT payload FROM events WHERE seq = 1)
             WHERE seq = 2",
            [],
        )
        .unwrap();
        let err = store.query_events(&EventQuery::default()).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Cipher(super::super::cipher::CipherError::Open { seq: 2, .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_master_key_is_refused_at_open() {
        let (_dir, path, store) = store();
        drop(store);
        assert!(matches!(
            SqliteStore::open_with_key(&path, &[4u8; 32]),
            Err(StoreError::WrongMasterKey { .. })
        ));
    }

    #[test]
    fn the_master_key_file_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("master.key");
        fs::write(&key_path, KEY).unwrap();
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).unwrap();
        let db = dir.path().join("cortex.db");
        assert!(matches!(
            SqliteStore::open(&db, &key_path),
            Err(StoreError::Key(_))
        ));
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(SqliteStore::open(&db, &key_path).is_ok());
    }

    /// While the writer is stuck (another connection holds the write lock), a resume is
    /// answered at once from what is committed. The agent then delivers its queued events
    /// again: skipped if the queued write commits, stored if it fails.
    #[test]
    fn a_resume_answers_from_what_is_committed_and_queued_events_come_again() {
        let (_dir, path, store) = store();
        let alpha = |first: u64, last: u64| -> Vec<Event> {
            (first..=last).map(|seq| exec("web-01", seq, seq)).collect()
        };
        store
            .append_events("web-01", Source::Alpha, &alpha(1, 2))
            .unwrap();
        let blocker = Connection::open(&path).unwrap();

        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let queued = store
            .submit_events("web-01", Source::Alpha, &alpha(3, 4))
            .unwrap();
        assert_eq!(store.highest_seq("web-01", Source::Alpha).unwrap(), Some(2));
        assert!(queued.try_wait().is_none(), "answered before the commit");
        let again = store
            .submit_events("web-01", Source::Alpha, &alpha(3, 5))
            .unwrap();
        blocker.execute_batch("ROLLBACK").unwrap();
        queued.wait().unwrap();
        assert_eq!(again.wait().unwrap().duplicates, vec![3, 4]);
        assert_eq!(store.highest_seq("web-01", Source::Alpha).unwrap(), Some(5));

        blocker
            .execute_batch(
                "CREATE TRIGGER fail_seq BEFORE INSERT ON events WHEN NEW.seq = 6
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;
                 BEGIN IMMEDIATE",
            )
            .unwrap();
        let failing = store
            .submit_events("web-01", Source::Alpha, &alpha(6, 7))
            .unwrap();
        assert_eq!(store.highest_seq("web-01", Source::Alpha).unwrap(), Some(5));
        blocker.execute_batch("ROLLBACK").unwrap();
        assert!(failing.wait().is_err());
        blocker.execute_batch("DROP TRIGGER fail_seq").unwrap();
        let outcome = store
            .append_events("web-01", Source::Alpha, &alpha(6, 7))
            .unwrap();
        assert!(outcome.duplicates.is_empty());
        assert_eq!(store.highest_seq("web-01", Source::Alpha).unwrap(), Some(7));
        let stored = store.query_events(&EventQuery::default()).unwrap();
        assert_eq!(stored.len(), 7);
    }
}
