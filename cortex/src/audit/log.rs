//! The audit log: the hash chain and its signed checkpoints, on a [`ChainBackend`] — an SQLite
//! file ([`super::sqlite::SqliteChain`], the default) or PostgreSQL
//! ([`super::postgres::PostgresChain`], shared by the replicas of a scale-out cortex).
//!
//! The chain logic lives here once: a backend only reads the chain's tail and writes what
//! [`AuditLog`] built from it, both under the chain's lock in one transaction, so that appenders
//! in several threads or processes produce one chain.
//!
//! After record `s` is appended, a checkpoint signing `(s, hash_s)` is written in the same
//! transaction whenever `s - last_checkpoint >= checkpoint_interval`.

use std::collections::BTreeMap;
use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use super::record::{AuditEntry, AuditRecord, Checkpoint, GENESIS_HASH, Hash, chain_hash};
use super::verify::{VerifyReport, verify_chain};
use super::{AuditConfig, AuditError};
use crate::store::config::{PostgresConfig, StoreBackend, StoreConfig};
use crate::store::key_file::read_key_file;

/// Something that can record audit entries; implemented by [`AuditLog`].
pub trait AuditSink: Send + Sync {
    /// Appends an entry; returns only once the record is durable.
    fn record(&self, entry: AuditEntry) -> Result<AuditRecord, AuditError>;
}

/// The newest record and checkpoint of a chain, read under its lock.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tail {
    /// `(seq, hash)` of the newest record; `None` for an empty chain.
    pub last: Option<(u64, Hash)>,
    /// `seq` of the newest checkpoint, 0 when there is none.
    pub last_checkpoint: u64,
}

/// What one append writes: a record, a checkpoint, or both.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Appended {
    pub record: Option<AuditRecord>,
    pub checkpoint: Option<Checkpoint>,
}

/// Builds what to append from the tail.
pub type TailBuilder = Box<dyn FnOnce(&Tail) -> Result<Appended, AuditError> + Send>;

/// Where a chain is kept.
pub trait ChainBackend: Send + Sync {
    /// Under the chain's lock and in one transaction: reads the tail, calls `build`, and writes
    /// what it returns. Returns once that is durable.
    fn append(&self, build: TailBuilder) -> Result<Appended, AuditError>;
    /// Records with `seq` in `from..=to` (all without a range), in `seq` order.
    fn records(&self, range: Option<(u64, u64)>) -> Result<Vec<AuditRecord>, AuditError>;
    /// Every checkpoint by `seq`.
    fn checkpoints(&self) -> Result<BTreeMap<u64, Checkpoint>, AuditError>;
}

pub struct AuditLog {
    backend: Box<dyn ChainBackend>,
    signing_key: SigningKey,
    checkpoint_interval: u64,
}

impl AuditLog {
    /// Opens (creating if needed) the chain file at `path`, signing checkpoints with the
    /// Ed25519 key whose 32-byte seed is in `signing_key_file` (0600).
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
        check_interval(checkpoint_interval)?;
        let backend = super::sqlite::SqliteChain::open(path)?;
        Self::with_backend(Box::new(backend), seed, checkpoint_interval)
    }

    /// Opens (creating if needed) the chain in the PostgreSQL schema of `pg`.
    pub fn open_postgres_with_key(
        pg: &PostgresConfig,
        seed: &Zeroizing<[u8; 32]>,
        checkpoint_interval: u64,
    ) -> Result<Self, AuditError> {
        check_interval(checkpoint_interval)?;
        let backend = super::postgres::PostgresChain::open(pg)?;
        Self::with_backend(Box::new(backend), seed, checkpoint_interval)
    }

    /// The chain where the configuration keeps it: in PostgreSQL (the schema of
    /// `[store.postgres]`) when the store is there, so that every replica appends to one chain;
    /// else in the file `[audit] path`.
    pub fn open_configured(audit: &AuditConfig, store: &StoreConfig) -> Result<Self, AuditError> {
        let seed = read_key_file(&audit.signing_key_file)?;
        match store.backend {
            StoreBackend::Sqlite => {
                Self::open_with_key(&audit.path, &seed, audit.checkpoint_interval)
            }
            StoreBackend::Postgres => {
                Self::open_postgres_with_key(&store.postgres, &seed, audit.checkpoint_interval)
            }
        }
    }

    fn with_backend(
        backend: Box<dyn ChainBackend>,
        seed: &Zeroizing<[u8; 32]>,
        checkpoint_interval: u64,
    ) -> Result<Self, AuditError> {
        let log = AuditLog {
            backend,
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
        verify_backend(
            self.backend.as_ref(),
            &self.verifying_key(),
            self.checkpoint_interval,
        )
    }

    /// Records with `seq` in `from..=to`, oldest first.
    pub fn records(&self, from: u64, to: u64) -> Result<Vec<AuditRecord>, AuditError> {
        self.backend.records(Some((from, to)))
    }

    /// Writes a checkpoint for the newest record if the interval has passed since the last one
    /// (after a crash between configurations, or a lowered interval).
    fn checkpoint_tail_if_due(&self) -> Result<(), AuditError> {
        let (key, interval) = (self.signing_key.clone(), self.checkpoint_interval);
        self.backend.append(Box::new(move |tail| {
            let checkpoint = tail
                .last
                .and_then(|(seq, hash)| due_checkpoint(&key, interval, tail, seq, &hash));
            Ok(Appended {
                record: None,
                checkpoint,
            })
        }))?;
        Ok(())
    }
}

/// Verifies the chain a backend holds.
pub fn verify_backend(
    backend: &dyn ChainBackend,
    key: &VerifyingKey,
    checkpoint_interval: u64,
) -> Result<VerifyReport, AuditError> {
    let records = backend.records(None)?;
    let checkpoints = backend.checkpoints()?;
    Ok(verify_chain(
        &records,
        &checkpoints,
        key,
        checkpoint_interval,
    ))
}

fn check_interval(checkpoint_interval: u64) -> Result<(), AuditError> {
    if checkpoint_interval == 0 {
        return Err(AuditError::ZeroCheckpointInterval);
    }
    Ok(())
}

/// The signed checkpoint for record `seq` when `interval` records have passed since the last.
fn due_checkpoint(
    key: &SigningKey,
    interval: u64,
    tail: &Tail,
    seq: u64,
    hash: &Hash,
) -> Option<Checkpoint> {
    if seq.saturating_sub(tail.last_checkpoint) < interval {
        return None;
    }
    let time_ns = qsc_event::now_ns();
    let message = Checkpoint::signed_message(seq, hash, tail.last_checkpoint, time_ns);
    Some(Checkpoint {
        seq,
        record_hash: *hash,
        prev_checkpoint_seq: tail.last_checkpoint,
        time_ns,
        signature: key.sign(&message).to_bytes().to_vec(),
    })
}

/// The newest record's `(seq, hash)` as stored, refused when malformed.
pub(crate) fn checked_tail(seq: i64, hash: Vec<u8>) -> Result<(u64, Hash), AuditError> {
    let unsigned = u64::try_from(seq).map_err(|_| AuditError::CorruptTail { seq })?;
    let hash: Hash = hash
        .try_into()
        .map_err(|_| AuditError::CorruptTail { seq })?;
    Ok((unsigned, hash))
}

impl AuditSink for AuditLog {
    fn record(&self, entry: AuditEntry) -> Result<AuditRecord, AuditError> {
        let body = serde_json::to_string(&entry.body).map_err(AuditError::Body)?;
        let (key, interval) = (self.signing_key.clone(), self.checkpoint_interval);
        let kind = entry.kind.as_str().to_owned();
        let actor = entry.actor;
        let appended = self.backend.append(Box::new(move |tail| {
            let (last_seq, prev_hash) = tail.last.unwrap_or((0, GENESIS_HASH));
            let seq = last_seq + 1;
            let time_ns = qsc_event::now_ns();
            let hash = chain_hash(&prev_hash, seq, time_ns, &kind, &actor, &body);
            Ok(Appended {
                checkpoint: due_checkpoint(&key, interval, tail, seq, &hash),
                record: Some(AuditRecord {
                    seq,
                    time_ns,
                    kind,
                    actor,
                    body,
                    prev_hash,
                    hash,
                }),
            })
        }))?;
        appended.record.ok_or(AuditError::NothingAppended)
    }
}
