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
use rusqlite::Connection;
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

/// Verifies the audit file at `path` (opened read-only) — what `cortex audit verify` runs for
/// the file chain.
pub fn verify_file(
    path: &Path,
    key: &VerifyingKey,
    checkpoint_interval: u64,
) -> Result<VerifyReport, AuditError> {
    let chain = super::sqlite::SqliteChain::open_read_only(path)?;
    super::log::verify_backend(&chain, key, checkpoint_interval)
}

/// Verifies the chain in an open SQLite connection against the audit verifying key.
pub fn verify_connection(
    conn: &Connection,
    key: &VerifyingKey,
    checkpoint_interval: u64,
) -> Result<VerifyReport, AuditError> {
    let records = super::sqlite::read_records(conn, None)?;
    let checkpoints = super::sqlite::read_checkpoints(conn)?;
    Ok(verify_chain(
        &records,
        &checkpoints,
        key,
        checkpoint_interval,
    ))
}

/// Verifies records (in `seq` order) and checkpoints, wherever they were read from.
pub fn verify_chain(
    records: &[AuditRecord],
    checkpoints: &BTreeMap<u64, Checkpoint>,
    key: &VerifyingKey,
    checkpoint_interval: u64,
) -> VerifyReport {
    let mut report = VerifyReport {
        records: records.len() as u64,
        checkpoints: checkpoints.len() as u64,
        last_seq: records.last().map_or(0, |r| r.seq),
        unsigned_tail: 0,
        problem: None,
    };
    let last_checkpoint = match walk_chain(records, checkpoints, key) {
        Err(problem) => {
            report.problem = Some(problem);
            return report;
        }
        Ok(last_checkpoint) => last_checkpoint,
    };
    report.unsigned_tail = report.last_seq - last_checkpoint;
    report.problem = check_tail(&report, checkpoints, last_checkpoint, checkpoint_interval);
    report
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use ed25519_dalek::SigningKey;
    use rusqlite::Connection;
    use zeroize::Zeroizing;

    use super::*;
    use crate::audit::AuditLog;
    use crate::audit::tamper::{self, Chain, INTERVAL, SEED};

    /// The chain file of one test, in a temp dir of its own.
    struct FileChain {
        _dir: tempfile::TempDir,
        path: PathBuf,
        log: AuditLog,
    }

    impl FileChain {
        fn new() -> Option<Self> {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.db");
            let log = AuditLog::open_with_key(&path, &Zeroizing::new(SEED), INTERVAL).unwrap();
            Some(FileChain {
                _dir: dir,
                path,
                log,
            })
        }

        fn connection(path: &Path) -> Connection {
            Connection::open(path).unwrap()
        }
    }

    impl Chain for FileChain {
        fn log(&self) -> &AuditLog {
            &self.log
        }

        fn reopen(&self) -> AuditLog {
            AuditLog::open_with_key(&self.path, &Zeroizing::new(SEED), INTERVAL).unwrap()
        }

        fn sql(&self, sql: &str) -> Result<(), String> {
            Self::connection(&self.path)
                .execute_batch(sql)
                .map_err(|e| e.to_string())
        }

        fn drop_guards(&self) {
            self.sql(
                "DROP TRIGGER audit_records_no_update; DROP TRIGGER audit_records_no_delete;
                 DROP TRIGGER audit_checkpoints_no_update; DROP TRIGGER audit_checkpoints_no_delete;",
            )
            .unwrap();
        }

        fn bytes(&self, bytes: &[u8]) -> String {
            format!("X'{}'", hex::encode(bytes))
        }
    }

    tamper::tamper_tests!(FileChain::new());

    #[test]
    fn a_foreign_key_does_not_verify_the_file() {
        let chain = FileChain::new().unwrap();
        tamper::fill(&chain);
        let other = SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        let report = verify_file(&chain.path, &other, INTERVAL).unwrap();
        assert_eq!(
            report.problem,
            Some(Problem::CheckpointSignature { seq: 4 })
        );
        let conn = crate::audit::open_read_only(&chain.path).unwrap();
        let key = chain.log.verifying_key();
        assert!(
            verify_connection(&conn, &key, INTERVAL)
                .unwrap()
                .is_intact()
        );
    }
}
