//! Verification of the audit chain: finds the first bad record and says what happened to it.
//!
//! Records are walked in `seq` order. For each one, in this order:
//! 1. its `seq` must be the previous one + 1 — a gap means records were **deleted**;
//! 2. its `prev_hash` must be the previous record's hash — if it is instead the hash of a record
//!    further *down* the file, records were **reordered**; of a record further *up*, the records
//!    in between were **inserted**; of no record at all, a predecessor was deleted and the rest
//!    renumbered (or `prev_hash` was edited);
//! 3. its hash must match its content — else it was **edited**;
//! 4. if a checkpoint signs this `seq`: its Ed25519 signature must verify, it must link to the
//!    previous checkpoint, and the hash it signs must be this record's (else the chain was
//!    rewritten with recomputed hashes, which only a signature can reveal).
//!
//! After the walk: a checkpoint beyond the last record means the newest records were deleted,
//! and `checkpoint_interval` or more records after the last checkpoint means a checkpoint was
//! deleted. Records after the newest checkpoint are protected by the chain alone; deleting them
//! together with nothing else is indistinguishable from their never having been written, so the
//! report states how many records are not yet covered by a signature.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use ed25519_dalek::{Signature, VerifyingKey};
use rusqlite::{Connection, params};
use serde::Serialize;

use super::AuditError;
use super::record::{AuditRecord, Checkpoint, GENESIS_HASH, Hash};

/// What is wrong with the first bad record.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Problem {
    /// Records `seq..=last_missing` are missing.
    Deleted { seq: u64, last_missing: u64 },
    /// This record's content does not match its hash.
    Edited { seq: u64 },
    /// This record is not part of the chain: the next record links past it.
    Inserted { seq: u64 },
    /// This record links to record `belongs_after`, which comes later in the file.
    Reordered { seq: u64, belongs_after: u64 },
    /// This record links to a hash that no record has.
    MissingPredecessor { seq: u64 },
    /// The checkpoint at `seq` has a signature that does not verify with the audit key.
    CheckpointSignature { seq: u64 },
    /// The checkpoint at `seq` signs a different hash than the record's: records after
    /// `previous_checkpoint` up to `seq` were rewritten.
    ChainRewritten { seq: u64, previous_checkpoint: u64 },
    /// The checkpoint expected after `previous_checkpoint` (no later than `seq`) is missing.
    CheckpointMissing { seq: u64, previous_checkpoint: u64 },
    /// Records after `last_seq` were deleted: a checkpoint signs record `checkpoint_seq`.
    Truncated { last_seq: u64, checkpoint_seq: u64 },
}

impl Problem {
    /// The first record (or checkpoint position) found bad.
    pub fn seq(&self) -> u64 {
        match self {
            Problem::Deleted { seq, .. }
            | Problem::Edited { seq }
            | Problem::Inserted { seq }
            | Problem::Reordered { seq, .. }
            | Problem::MissingPredecessor { seq }
            | Problem::CheckpointSignature { seq }
            | Problem::ChainRewritten { seq, .. }
            | Problem::CheckpointMissing { seq, .. } => *seq,
            Problem::Truncated { last_seq, .. } => last_seq + 1,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Deleted { seq, last_missing } if seq == last_missing => {
                write!(f, "record {seq} was deleted")
            }
            Problem::Deleted { seq, last_missing } => {
                write!(f, "records {seq}..={last_missing} were deleted")
            }
            Problem::Edited { seq } => {
                write!(
                    f,
                    "record {seq} was edited: its content does not match its hash"
                )
            }
            Problem::Inserted { seq } => write!(
                f,
                "record {seq} was inserted: the record after it links to the one before it"
            ),
            Problem::Reordered { seq, belongs_after } => write!(
                f,
                "record {seq} was reordered: it links to record {belongs_after}, which comes later"
            ),
            Problem::MissingPredecessor { seq } => write!(
                f,
                "record {seq} links to a record that is not in the chain (a record before it was \
                 deleted and the rest renumbered, or its prev_hash was edited)"
            ),
            Problem::CheckpointSignature { seq } => {
                write!(f, "checkpoint at record {seq} has an invalid signature")
            }
            Problem::ChainRewritten {
                seq,
                previous_checkpoint,
            } => write!(
                f,
                "records {}..={seq} were rewritten: record {seq} differs from its signed checkpoint",
                previous_checkpoint + 1
            ),
            Problem::CheckpointMissing {
                seq,
                previous_checkpoint,
            } => write!(
                f,
                "a checkpoint after record {previous_checkpoint} (due by record {seq}) was deleted"
            ),
            Problem::Truncated {
                last_seq,
                checkpoint_seq,
            } => write!(
                f,
                "records from {} on were deleted: the chain ends at {last_seq} but a checkpoint \
                 signs record {checkpoint_seq}",
                last_seq + 1
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VerifyReport {
    pub records: u64,
    pub checkpoints: u64,
    pub last_seq: u64,
    /// Records after the newest valid checkpoint, protected by the hash chain only.
    pub unsigned_tail: u64,
    /// The first problem found; `None` when the chain is intact.
    pub problem: Option<Problem>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            None => write!(
                f,
                "audit chain intact: {} records (1..={}), {} signed checkpoints, {} newest \
                 records not yet covered by a checkpoint",
                self.records, self.last_seq, self.checkpoints, self.unsigned_tail
            ),
            Some(problem) => write!(
                f,
                "audit chain BROKEN at record {}: {problem} ({} records, {} checkpoints)",
                problem.seq(),
                self.records,
                self.checkpoints
            ),
        }
    }
}

/// Verifies the audit file at `path` (opened read-only) — what `cortex audit verify` runs.
pub fn verify_file(
    path: &Path,
    key: &VerifyingKey,
    checkpoint_interval: u64,
) -> Result<VerifyReport, AuditError> {
    let conn = super::log::open_read_only(path)?;
    verify_connection(&conn, key, checkpoint_interval)
}

/// Verifies the chain in `conn` against the audit verifying key.
pub fn verify_connection(
    conn: &Connection,
    key: &VerifyingKey,
    checkpoint_interval: u64,
) -> Result<VerifyReport, AuditError> {
    let records = read_records(conn, None)?;
    let checkpoints = read_checkpoints(conn)?;
    let mut report = VerifyReport {
        records: records.len() as u64,
        checkpoints: checkpoints.len() as u64,
        last_seq: records.last().map_or(0, |r| r.seq),
        unsigned_tail: 0,
        problem: None,
    };
    let walk = walk_chain(&records, &checkpoints, key);
    let last_checkpoint = match walk {
        Err(problem) => {
            report.problem = Some(problem);
            return Ok(report);
        }
        Ok(last_checkpoint) => last_checkpoint,
    };
    report.unsigned_tail = report.last_seq - last_checkpoint;
    report.problem = check_tail(&report, &checkpoints, last_checkpoint, checkpoint_interval);
    Ok(report)
}

/// Walks the records in order; returns the newest checkpoint seen, or the first problem.
fn walk_chain(
    records: &[AuditRecord],
    checkpoints: &BTreeMap<u64, Checkpoint>,
    key: &VerifyingKey,
) -> Result<u64, Problem> {
    let position_of: HashMap<Hash, usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.hash, i))
        .collect();
    let mut expected_prev = GENESIS_HASH;
    let mut last_checkpoint = 0;
    for (i, record) in records.iter().enumerate() {
        let expected_seq = i as u64 + 1;
        if record.seq != expected_seq {
            return Err(Problem::Deleted {
                seq: expected_seq,
                last_missing: record.seq.saturating_sub(1).max(expected_seq),
            });
        }
        if record.prev_hash != expected_prev {
            return Err(link_problem(records, &position_of, i));
        }
        if record.expected_hash() != record.hash {
            return Err(Problem::Edited { seq: record.seq });
        }
        if let Some(checkpoint) = checkpoints.get(&record.seq) {
            check_checkpoint(checkpoint, record, last_checkpoint, key)?;
            last_checkpoint = record.seq;
        }
        expected_prev = record.hash;
    }
    Ok(last_checkpoint)
}

fn link_problem(records: &[AuditRecord], position_of: &HashMap<Hash, usize>, i: usize) -> Problem {
    let seq = records[i].seq;
    match position_of.get(&records[i].prev_hash) {
        Some(&j) if j > i => Problem::Reordered {
            seq,
            belongs_after: records[j].seq,
        },
        // The record links to one further up: everything in between is foreign.
        Some(&j) if j + 1 < i => Problem::Inserted {
            seq: records[j + 1].seq,
        },
        _ => Problem::MissingPredecessor { seq },
    }
}

fn check_checkpoint(
    checkpoint: &Checkpoint,
    record: &AuditRecord,
    last_checkpoint: u64,
    key: &VerifyingKey,
) -> Result<(), Problem> {
    let signature_ok = Signature::from_slice(&checkpoint.signature)
        .map(|signature| key.verify_strict(&checkpoint.message(), &signature).is_ok())
        .unwrap_or(false);
    if !signature_ok {
        return Err(Problem::CheckpointSignature { seq: record.seq });
    }
    if checkpoint.prev_checkpoint_seq != last_checkpoint {
        return Err(Problem::CheckpointMissing {
            seq: checkpoint.prev_checkpoint_seq,
            previous_checkpoint: last_checkpoint,
        });
    }
    if checkpoint.record_hash != record.hash {
        return Err(Problem::ChainRewritten {
            seq: record.seq,
            previous_checkpoint: last_checkpoint,
        });
    }
    Ok(())
}

fn check_tail(
    report: &VerifyReport,
    checkpoints: &BTreeMap<u64, Checkpoint>,
    last_checkpoint: u64,
    checkpoint_interval: u64,
) -> Option<Problem> {
    if let Some((&checkpoint_seq, _)) = checkpoints.range(report.last_seq + 1..).next() {
        return Some(Problem::Truncated {
            last_seq: report.last_seq,
            checkpoint_seq,
        });
    }
    if report.unsigned_tail >= checkpoint_interval {
        return Some(Problem::CheckpointMissing {
            seq: last_checkpoint + checkpoint_interval,
            previous_checkpoint: last_checkpoint,
        });
    }
    None
}

/// Reads records, optionally limited to `seq` in `from..=to`, in `seq` order. A hash column of
/// the wrong length reads as [`INVALID_HASH`] and a negative number as 0, so that verification
/// reports the row as bad rather than failing to read it.
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

fn read_checkpoints(conn: &Connection) -> Result<BTreeMap<u64, Checkpoint>, AuditError> {
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

/// Stands in for a hash column of the wrong length; unlike the genesis hash it never links.
const INVALID_HASH: Hash = [0xff; 32];

fn to_hash(bytes: Vec<u8>) -> Hash {
    bytes.try_into().unwrap_or(INVALID_HASH)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use ed25519_dalek::SigningKey;
    use rusqlite::Connection;
    use serde_json::json;
    use zeroize::Zeroizing;

    use super::*;
    use crate::audit::record::chain_hash;
    use crate::audit::{AuditEntry, AuditKind, AuditLog, AuditSink};

    const INTERVAL: u64 = 4;
    const SEED: [u8; 32] = [42u8; 32];

    /// A log of 20 records (checkpoints at 4, 8, …, 20) in a fresh temp dir.
    fn chain() -> (tempfile::TempDir, PathBuf, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let log = AuditLog::open_with_key(&path, &Zeroizing::new(SEED), INTERVAL).unwrap();
        for i in 1..=20 {
            log.record(AuditEntry {
                kind: AuditKind::NodeTransition,
                actor: "cortex".into(),
                body: json!({"host": "web-01", "step": i}),
            })
            .unwrap();
        }
        (dir, path, log)
    }

    /// What an attacker with write access to the file does first: drop the append-only triggers.
    fn tamper(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "DROP TRIGGER audit_records_no_update; DROP TRIGGER audit_records_no_delete;
             DROP TRIGGER audit_checkpoints_no_update; DROP TRIGGER audit_checkpoints_no_delete;",
        )
        .unwrap();
        conn
    }

    fn problem(log: &AuditLog) -> Problem {
        let report = log.verify().unwrap();
        let problem = report.problem.expect("tampering must be detected");
        // Every problem renders a sentence naming the record.
        assert!(problem.to_string().contains(&problem.seq().to_string()));
        problem
    }

    /// Moves records with seq >= `from` by `delta` without tripping the primary key.
    fn shift(conn: &Connection, from: u64, delta: i64) {
        conn.execute(
            "UPDATE audit_records SET seq = -(seq + ?2) WHERE seq >= ?1",
            params![from as i64, delta],
        )
        .unwrap();
        conn.execute("UPDATE audit_records SET seq = -seq WHERE seq < 0", [])
            .unwrap();
    }

    fn hash_of(conn: &Connection, seq: u64) -> Hash {
        let bytes: Vec<u8> = conn
            .query_row(
                "SELECT hash FROM audit_records WHERE seq = ?1",
                [seq as i64],
                |r| r.get(0),
            )
            .unwrap();
        bytes.try_into().unwrap()
    }

    #[test]
    fn an_untouched_chain_verifies_and_survives_reopening() {
        let (_dir, path, log) = chain();
        let report = log.verify().unwrap();
        assert_eq!(report.problem, None);
        assert_eq!(report.records, 20);
        assert_eq!(report.checkpoints, 5);
        assert_eq!(report.unsigned_tail, 0);
        drop(log);
        let log = AuditLog::open_with_key(&path, &Zeroizing::new(SEED), INTERVAL).unwrap();
        let next = log
            .record(AuditEntry {
                kind: AuditKind::Approval,
                actor: "operator:alice".into(),
                body: json!({"release": "web-01"}),
            })
            .unwrap();
        assert_eq!(next.seq, 21);
        let report = log.verify().unwrap();
        assert!(report.is_intact());
        assert_eq!(report.unsigned_tail, 1);
        let records = log.records(20, 21).unwrap();
        assert_eq!(records[1].prev_hash, records[0].hash);
    }

    #[test]
    fn ordinary_sql_cannot_update_or_delete() {
        let (_dir, path, _log) = chain();
        let conn = Connection::open(&path).unwrap();
        let update = conn.execute("UPDATE audit_records SET actor = 'x' WHERE seq = 3", []);
        assert!(update.unwrap_err().to_string().contains("append-only"));
        assert!(conn.execute("DELETE FROM audit_records", []).is_err());
        assert!(conn.execute("DELETE FROM audit_checkpoints", []).is_err());
    }

    #[test]
    fn an_edit_is_reported_at_the_edited_record() {
        let (_dir, path, log) = chain();
        tamper(&path)
            .execute(
                "UPDATE audit_records SET body = '{\"host\":\"web-02\",\"step\":7}' WHERE seq = 7",
                [],
            )
            .unwrap();
        assert_eq!(problem(&log), Problem::Edited { seq: 7 });
    }

    #[test]
    fn a_deletion_is_reported_at_the_missing_record() {
        let (_dir, path, log) = chain();
        tamper(&path)
            .execute("DELETE FROM audit_records WHERE seq IN (7, 8)", [])
            .unwrap();
        assert_eq!(
            problem(&log),
            Problem::Deleted {
                seq: 7,
                last_missing: 8
            }
        );
    }

    #[test]
    fn a_deletion_hidden_by_renumbering_is_reported() {
        let (_dir, path, log) = chain();
        let conn = tamper(&path);
        conn.execute("DELETE FROM audit_records WHERE seq = 7", [])
            .unwrap();
        shift(&conn, 8, -1);
        assert_eq!(problem(&log), Problem::MissingPredecessor { seq: 7 });
    }

    #[test]
    fn an_insertion_is_reported_at_the_inserted_record() {
        let (_dir, path, log) = chain();
        let conn = tamper(&path);
        shift(&conn, 7, 1);
        // A well-formed forged record: it links to record 6 and carries a correct hash.
        let prev = hash_of(&conn, 6);
        let body = "{\"host\":\"web-01\",\"forged\":true}";
        let hash = chain_hash(&prev, 7, 1, "approval", "operator:mallory", body);
        conn.execute(
            "INSERT INTO audit_records VALUES (7, 1, 'approval', 'operator:mallory', ?1, ?2, ?3)",
            params![body, prev.as_slice(), hash.as_slice()],
        )
        .unwrap();
        assert_eq!(problem(&log), Problem::Inserted { seq: 7 });
    }

    #[test]
    fn a_reorder_is_reported_at_the_first_moved_record() {
        let (_dir, path, log) = chain();
        let conn = tamper(&path);
        conn.execute_batch(
            "UPDATE audit_records SET seq = -1 WHERE seq = 7;
             UPDATE audit_records SET seq = 7 WHERE seq = 8;
             UPDATE audit_records SET seq = 8 WHERE seq = -1;",
        )
        .unwrap();
        assert_eq!(
            problem(&log),
            Problem::Reordered {
                seq: 7,
                belongs_after: 8
            }
        );
    }

    /// An attacker who edits record 5 and recomputes every later hash defeats the chain alone;
    /// the next signed checkpoint (record 8) catches it.
    #[test]
    fn a_rewritten_chain_is_caught_by_the_next_checkpoint() {
        let (_dir, path, log) = chain();
        let conn = tamper(&path);
        conn.execute(
            "UPDATE audit_records SET actor = 'operator:mallory' WHERE seq = 5",
            [],
        )
        .unwrap();
        let records = read_records(&conn, None).unwrap();
        let mut prev = hash_of(&conn, 4);
        for record in records.iter().skip(4) {
            let hash = chain_hash(
                &prev,
                record.seq,
                record.time_ns,
                &record.kind,
                &record.actor,
                &record.body,
            );
            conn.execute(
                "UPDATE audit_records SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
                params![prev.as_slice(), hash.as_slice(), record.seq as i64],
            )
            .unwrap();
            prev = hash;
        }
        assert_eq!(
            problem(&log),
            Problem::ChainRewritten {
                seq: 8,
                previous_checkpoint: 4
            }
        );
        // Re-pointing the checkpoint at the new hash breaks its signature instead.
        conn.execute(
            "UPDATE audit_checkpoints SET record_hash = ?1 WHERE seq = 8",
            [hash_of(&conn, 8).as_slice()],
        )
        .unwrap();
        assert_eq!(problem(&log), Problem::CheckpointSignature { seq: 8 });
    }

    #[test]
    fn a_deleted_checkpoint_is_reported() {
        let (_dir, path, log) = chain();
        let conn = tamper(&path);
        conn.execute("DELETE FROM audit_checkpoints WHERE seq = 8", [])
            .unwrap();
        assert_eq!(
            problem(&log),
            Problem::CheckpointMissing {
                seq: 8,
                previous_checkpoint: 4
            }
        );
        conn.execute("DELETE FROM audit_checkpoints WHERE seq >= 12", [])
            .unwrap();
        assert!(matches!(problem(&log), Problem::CheckpointMissing { .. }));
    }

    #[test]
    fn truncating_signed_records_is_reported() {
        let (_dir, path, log) = chain();
        tamper(&path)
            .execute("DELETE FROM audit_records WHERE seq > 17", [])
            .unwrap();
        assert_eq!(
            problem(&log),
            Problem::Truncated {
                last_seq: 17,
                checkpoint_seq: 20
            }
        );
    }

    #[test]
    fn a_foreign_key_does_not_verify() {
        let (_dir, path, _log) = chain();
        let other = SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        let conn = crate::audit::open_read_only(&path).unwrap();
        let report = verify_connection(&conn, &other, INTERVAL).unwrap();
        assert_eq!(
            report.problem,
            Some(Problem::CheckpointSignature { seq: 4 })
        );
    }
}
