//! The audit log: an append-only SQLite file holding the hash chain and its signed checkpoints.
//!
//! The chain lives in its own database file (`[audit] path`), apart from the event store: the
//! store's retention deletes old rows and may move to PostgreSQL, while the audit file is never
//! pruned and can be copied off-host and verified alone. Triggers refuse UPDATE and DELETE, so
//! an accident cannot rewrite history; a deliberate edit of the file is what `verify` catches.
//!
//! After record `s` is appended, a checkpoint signing `(s, hash_s)` is written in the same
//! transaction whenever `s - last_checkpoint >= checkpoint_interval`.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use zeroize::Zeroizing;

use super::AuditError;
use super::record::{AuditEntry, AuditRecord, Checkpoint, GENESIS_HASH, Hash, chain_hash};
use super::verify::{VerifyReport, verify_connection};
use crate::store::key_file::read_key_file;

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

/// Something that can record audit entries; implemented by [`AuditLog`].
pub trait AuditSink: Send + Sync {
    /// Appends an entry; returns only once the record is durable.
    fn record(&self, entry: AuditEntry) -> Result<AuditRecord, AuditError>;
}

pub struct AuditLog {
    conn: Mutex<Connection>,
    signing_key: SigningKey,
    checkpoint_interval: u64,
}

impl AuditLog {
    /// Opens (creating if needed) the chain at `path`, signing checkpoints with the Ed25519 key
    /// whose 32-byte seed is in `signing_key_file` (0600).
    pub fn open(
        path: &Path,
        signing_key_file: &Path,
        checkpoint_interval: u64,
    ) -> Result<Self, AuditError> {
        let seed = read_key_file(signing_key_file)?;
        Self::open_with_key(path, &seed, checkpoint_interval)
    }

    pub fn open_with_key(
        path: &Path,
        seed: &Zeroizing<[u8; 32]>,
        checkpoint_interval: u64,
    ) -> Result<Self, AuditError> {
        if checkpoint_interval == 0 {
            return Err(AuditError::ZeroCheckpointInterval);
        }
        let conn = Connection::open(path).map_err(|source| AuditError::Open {
            path: path.to_owned(),
            source,
        })?;
        init_schema(&conn)?;
        let log = AuditLog {
            conn: Mutex::new(conn),
            signing_key: SigningKey::from_bytes(seed),
            checkpoint_interval,
        };
        log.checkpoint_tail_if_due()?;
        Ok(log)
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing_key.verifying_key()
    }

    /// Verifies the whole chain with this log's own key and interval.
    pub fn verify(&self) -> Result<VerifyReport, AuditError> {
        let conn = self.lock();
        verify_connection(&conn, &self.verifying_key(), self.checkpoint_interval)
    }

    /// Records with `seq` in `from..=to`, oldest first.
    pub fn records(&self, from: u64, to: u64) -> Result<Vec<AuditRecord>, AuditError> {
        let conn = self.lock();
        super::verify::read_records(&conn, Some((from, to)))
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-written record: SQLite rolls the
        // open transaction back when it is dropped.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes a checkpoint for the newest record if the interval has passed since the last one
    /// (after a crash between configurations, or a lowered interval).
    fn checkpoint_tail_if_due(&self) -> Result<(), AuditError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if let Some((seq, hash)) = last_record(&tx)? {
            self.checkpoint_if_due(&tx, seq, &hash)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn checkpoint_if_due(
        &self,
        conn: &Connection,
        seq: u64,
        hash: &Hash,
    ) -> Result<(), AuditError> {
        let last = last_checkpoint_seq(conn)?;
        if seq.saturating_sub(last) < self.checkpoint_interval {
            return Ok(());
        }
        let time_ns = qsc_event::now_ns();
        let message = Checkpoint::signed_message(seq, hash, last, time_ns);
        let signature = self.signing_key.sign(&message).to_bytes();
        conn.execute(
            "INSERT INTO audit_checkpoints (seq, record_hash, prev_checkpoint_seq, time_ns, signature)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                to_sql_int(seq)?,
                hash.as_slice(),
                to_sql_int(last)?,
                to_sql_int(time_ns)?,
                signature.as_slice()
            ],
        )?;
        Ok(())
    }
}

impl AuditSink for AuditLog {
    fn record(&self, entry: AuditEntry) -> Result<AuditRecord, AuditError> {
        let body = serde_json::to_string(&entry.body).map_err(AuditError::Body)?;
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let (last_seq, prev_hash) = last_record(&tx)?.unwrap_or((0, GENESIS_HASH));
        let seq = last_seq + 1;
        let time_ns = qsc_event::now_ns();
        let kind = entry.kind.as_str().to_owned();
        let hash = chain_hash(&prev_hash, seq, time_ns, &kind, &entry.actor, &body);
        tx.execute(
            "INSERT INTO audit_records (seq, time_ns, kind, actor, body, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                to_sql_int(seq)?,
                to_sql_int(time_ns)?,
                kind,
                entry.actor,
                body,
                prev_hash.as_slice(),
                hash.as_slice()
            ],
        )?;
        self.checkpoint_if_due(&tx, seq, &hash)?;
        tx.commit()?;
        Ok(AuditRecord {
            seq,
            time_ns,
            kind,
            actor: entry.actor,
            body,
            prev_hash,
            hash,
        })
    }
}

/// Opens an audit file read-only, for `cortex audit verify` on a copy or a live file.
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

fn last_record(conn: &Connection) -> Result<Option<(u64, Hash)>, AuditError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let Some((seq, hash)) = row else {
        return Ok(None);
    };
    let seq = u64::try_from(seq).map_err(|_| AuditError::CorruptTail { seq })?;
    let hash: Hash = hash
        .try_into()
        .map_err(|_| AuditError::CorruptTail { seq: seq as i64 })?;
    Ok(Some((seq, hash)))
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
