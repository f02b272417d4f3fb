//! The audit chain in its own SQLite file (`[audit] path`), the single-machine default.
//!
//! The chain lives apart from the event store: the store's retention deletes old rows, while
//! the audit file is never pruned and can be copied off-host and verified alone. Triggers refuse
//! UPDATE and DELETE, so an accident cannot rewrite history; a deliberate edit of the file is
//! what `verify` catches.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::AuditError;
use super::log::{Appended, ChainBackend, Tail, TailBuilder};
use super::record::{AuditRecord, Checkpoint, Hash, to_hash};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_records (
    seq       INTEGER PRIMARY KEY,
    time_ns   INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    actor     TEXT NOT NULL,
    body      TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq                 INTEGER PRIMARY KEY,
    record_hash         BLOB NOT NULL,
    prev_checkpoint_seq INTEGER NOT NULL,
    time_ns             INTEGER NOT NULL,
    signature           BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_records_no_update BEFORE UPDATE ON audit_records
    BEGIN SELECT RAISE(ABORT, 'the audit chain is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_records_no_delete BEFORE DELETE ON audit_records
    BEGIN SELECT RAISE(ABORT, 'the audit chain is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
    BEGIN SELECT RAISE(ABORT, 'the audit chain is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
    BEGIN SELECT RAISE(ABORT, 'the audit chain is append-only'); END;
";

/// The chain in an SQLite file; appends are serialised by the connection's mutex and run in one
/// transaction each.
pub struct SqliteChain {
    conn: Mutex<Connection>,
}

impl SqliteChain {
    /// Opens (creating if needed) the chain file at `path`.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let conn = Connection::open(path).map_err(|source| AuditError::Open {
            path: path.to_owned(),
            source,
        })?;
        init_schema(&conn)?;
        Ok(SqliteChain {
            conn: Mutex::new(conn),
        })
    }

    /// Reads a chain file read-only, for `cortex audit verify` on a copy or a live file.
    pub fn open_read_only(path: &Path) -> Result<Self, AuditError> {
        Ok(SqliteChain {
            conn: Mutex::new(open_read_only(path)?),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-written record: SQLite rolls the
        // open transaction back when it is dropped.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ChainBackend for SqliteChain {
    fn append(&self, build: TailBuilder) -> Result<Appended, AuditError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let tail = Tail {
            last: last_record(&tx)?,
            last_checkpoint: last_checkpoint_seq(&tx)?,
        };
        let appended = build(&tail)?;
        if let Some(record) = &appended.record {
            insert_record(&tx, record)?;
        }
        if let Some(checkpoint) = &appended.checkpoint {
            insert_checkpoint(&tx, checkpoint)?;
        }
        tx.commit()?;
        Ok(appended)
    }

    fn records(&self, range: Option<(u64, u64)>) -> Result<Vec<AuditRecord>, AuditError> {
        read_records(&self.lock(), range)
    }

    fn checkpoints(&self) -> Result<BTreeMap<u64, Checkpoint>, AuditError> {
        read_checkpoints(&self.lock())
    }
}

/// Opens an audit file read-only.
pub fn open_read_only(path: &Path) -> Result<Connection, AuditError> {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|source| {
        AuditError::Open {
            path: path.to_owned(),
            source,
        }
    })
}

fn init_schema(conn: &Connection) -> Result<(), AuditError> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(AuditError::JournalMode { mode });
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(AuditError::SchemaVersion {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    conn.execute_batch(SCHEMA)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}

fn insert_record(conn: &Connection, record: &AuditRecord) -> Result<(), AuditError> {
    conn.execute(
        "INSERT INTO audit_records (seq, time_ns, kind, actor, body, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            to_sql_int(record.seq)?,
            to_sql_int(record.time_ns)?,
            record.kind,
            record.actor,
            record.body,
            record.prev_hash.as_slice(),
            record.hash.as_slice()
        ],
    )?;
    Ok(())
}

fn insert_checkpoint(conn: &Connection, checkpoint: &Checkpoint) -> Result<(), AuditError> {
    conn.execute(
        "INSERT INTO audit_checkpoints (seq, record_hash, prev_checkpoint_seq, time_ns, signature)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            to_sql_int(checkpoint.seq)?,
            checkpoint.record_hash.as_slice(),
            to_sql_int(checkpoint.prev_checkpoint_seq)?,
            to_sql_int(checkpoint.time_ns)?,
            checkpoint.signature.as_slice()
        ],
    )?;
    Ok(())
}

fn last_record(conn: &Connection) -> Result<Option<(u64, Hash)>, AuditError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    row.map(|(seq, hash)| super::log::checked_tail(seq, hash))
        .transpose()
}

fn last_checkpoint_seq(conn: &Connection) -> Result<u64, AuditError> {
    let seq: Option<i64> = conn.query_row("SELECT MAX(seq) FROM audit_checkpoints", [], |row| {
        row.get(0)
    })?;
    Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
}

fn to_sql_int(value: u64) -> Result<i64, AuditError> {
    i64::try_from(value).map_err(|_| AuditError::ValueTooLarge { value })
}

/// Reads records, optionally limited to `seq` in `from..=to`, in `seq` order. A hash column of
/// the wrong length or a negative number reads as a value that cannot verify, so that
/// verification reports the row as bad rather than failing to read it.
pub(crate) fn read_records(
    conn: &Connection,
    range: Option<(u64, u64)>,
) -> Result<Vec<AuditRecord>, AuditError> {
    let (from, to) = range.unwrap_or((0, u64::MAX));
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let mut statement = conn.prepare(
        "SELECT seq, time_ns, kind, actor, body, prev_hash, hash FROM audit_records
         WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
    )?;
    let rows = statement.query_map(params![clamp(from), clamp(to)], |row| {
        Ok(AuditRecord {
            seq: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
            time_ns: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
            kind: row.get(2)?,
            actor: row.get(3)?,
            body: row.get(4)?,
            prev_hash: to_hash(row.get(5)?),
            hash: to_hash(row.get(6)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn read_checkpoints(conn: &Connection) -> Result<BTreeMap<u64, Checkpoint>, AuditError> {
    let mut statement = conn.prepare(
        "SELECT seq, record_hash, prev_checkpoint_seq, time_ns, signature
         FROM audit_checkpoints ORDER BY seq",
    )?;
    let rows = statement.query_map([], |row| {
        Ok(Checkpoint {
            seq: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
            record_hash: to_hash(row.get(1)?),
            prev_checkpoint_seq: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
            time_ns: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
            signature: row.get(4)?,
        })
    })?;
    let mut checkpoints = BTreeMap::new();
    for checkpoint in rows {
        let checkpoint = checkpoint?;
        checkpoints.insert(checkpoint.seq, checkpoint);
    }
    Ok(checkpoints)
}
