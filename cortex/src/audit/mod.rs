//! The audit chain: append-only, SHA3-256 hash-chained, with Ed25519-signed checkpoints.
//!
//! [`record`] defines the records and the hashing, [`log`] the chain logic over a backend —
//! [`sqlite`] (its own file, the default) or [`postgres`] (shared by scale-out replicas) — and
//! [`verify`] the verification behind `cortex audit verify`.

pub mod log;
pub mod postgres;
pub mod record;
pub mod sqlite;
#[cfg(test)]
mod tamper;
pub mod verify;

use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::Deserialize;

pub use log::{AuditLog, AuditSink, ChainBackend};
pub use record::{AuditEntry, AuditKind, AuditRecord};
pub use sqlite::open_read_only;
pub use verify::{Problem, VerifyReport, verify_chain, verify_connection, verify_file};

use crate::store::StoreError;
use crate::store::key_file::KeyFileError;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("audit database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("audit signing key: {0}")]
    Key(#[from] KeyFileError),
    #[error("audit database refused WAL journaling (journal_mode is {mode})")]
    JournalMode { mode: String },
    #[error(
        "audit database schema version {found} is newer than this build supports ({supported})"
    )]
    SchemaVersion { found: i64, supported: i64 },
    #[error("the audit public key must be 64 hex digits encoding a valid Ed25519 point")]
    PublicKey,
    #[error("audit.checkpoint_interval must be at least 1")]
    ZeroCheckpointInterval,
    #[error("audit body cannot be encoded as JSON: {0}")]
    Body(serde_json::Error),
    #[error("value {value} does not fit SQLite's signed 64-bit integers")]
    ValueTooLarge { value: u64 },
    #[error(
        "the newest audit record ({seq}) is malformed; run `cortex audit verify` before appending"
    )]
    CorruptTail { seq: i64 },
    #[error("cannot reach the audit chain in PostgreSQL: {0}")]
    PostgresOpen(#[from] StoreError),
    #[error("audit chain in PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the audit chain's PostgreSQL runtime has stopped")]
    PostgresStopped,
    #[error("an audit append wrote no record")]
    NothingAppended,
}

/// The public key that verifies checkpoints, from the signing key file.
pub fn verifying_key_from_file(signing_key_file: &Path) -> Result<VerifyingKey, AuditError> {
    let seed = crate::store::key_file::read_key_file(signing_key_file)?;
    Ok(SigningKey::from_bytes(&seed).verifying_key())
}

/// The public key that verifies checkpoints, from its 64 hex digits (for verifying a copied
/// audit file on a machine that does not hold the signing key).
pub fn verifying_key_from_hex(hex_key: &str) -> Result<VerifyingKey, AuditError> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key.trim(), &mut bytes).map_err(|_| AuditError::PublicKey)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| AuditError::PublicKey)
}

/// `[audit]` configuration.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// The audit chain's SQLite file.
    pub path: PathBuf,
    /// 32-byte Ed25519 seed (raw or hex), mode 0600, that signs checkpoints.
    pub signing_key_file: PathBuf,
    /// A signed checkpoint is written every this many records.
    pub checkpoint_interval: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: PathBuf::from("/var/lib/qsc/audit.db"),
            signing_key_file: PathBuf::from("/etc/qsc/audit-signing.key"),
            checkpoint_interval: 64,
        }
    }
}

impl AuditConfig {
    pub fn validate(&self) -> Result<(), AuditError> {
        if self.checkpoint_interval == 0 {
            return Err(AuditError::ZeroCheckpointInterval);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_documents_the_defaults() {
        let doc: toml::Table =
            toml::from_str(include_str!("../../../config/cortex.example.toml")).unwrap();
        let config: AuditConfig = doc["audit"].clone().try_into().unwrap();
        assert_eq!(config, AuditConfig::default());
        assert!(config.validate().is_ok());
        let zero = AuditConfig {
            checkpoint_interval: 0,
            ..AuditConfig::default()
        };
        assert!(matches!(
            zero.validate(),
            Err(AuditError::ZeroCheckpointInterval)
        ));
    }

    #[test]
    fn verifying_keys_load_from_the_key_file_or_hex() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("audit.key");
        let seed = crate::store::key_file::create_key_file(&key_file).unwrap();
        let public = SigningKey::from_bytes(&seed).verifying_key();
        assert_eq!(verifying_key_from_file(&key_file).unwrap(), public);
        let hex_key = hex::encode(public.to_bytes());
        assert_eq!(verifying_key_from_hex(&hex_key).unwrap(), public);
        assert!(matches!(
            verifying_key_from_hex("zz"),
            Err(AuditError::PublicKey)
        ));
    }

    #[test]
    fn a_readable_signing_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("audit.key");
        std::fs::write(&key_file, [5u8; 32]).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let opened = AuditLog::open(&dir.path().join("audit.db"), &key_file, 8);
        assert!(matches!(opened, Err(AuditError::Key(_))));
    }
}
