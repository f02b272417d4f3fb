//! Audit records and their hash chain encoding.
//!
//! `hash = SHA3-256(prev_hash || canonical)`, where `canonical` is
//!
//! ```text
//! "qsc-audit-v1" || seq (u64 BE) || time_ns (u64 BE)
//!   || len(kind) (u32 BE) || kind || len(actor) (u32 BE) || actor || len(body) (u32 BE) || body
//! ```
//!
//! and `body` is the stored JSON text byte for byte (never re-serialised, so the hash does not
//! depend on a JSON library's key order). The first record's `prev_hash` is 32 zero bytes.

use serde::{Deserialize, Serialize};
use sha3::{Digest, Sha3_256};

pub const HASH_LEN: usize = 32;
pub type Hash = [u8; HASH_LEN];
/// `prev_hash` of the first record.
pub const GENESIS_HASH: Hash = [0u8; HASH_LEN];

const RECORD_DOMAIN: &[u8] = b"qsc-audit-v1";
const CHECKPOINT_DOMAIN: &[u8] = b"qsc-audit-checkpoint-v1";

/// What an audit record is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A node moved between NOMINAL / WARNING / CRITICAL / ISOLATED.
    NodeTransition,
    /// An incident was opened, escalated or closed.
    Incident,
    /// A response action was decided, held, executed or rolled back.
    Action,
    /// An operator approved or rejected something.
    Approval,
    /// A key was generated, rotated, revoked or destroyed.
    KeyEvent,
    /// The cortex started, stopped or loaded configuration.
    Service,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::NodeTransition => "node_transition",
            AuditKind::Incident => "incident",
            AuditKind::Action => "action",
            AuditKind::Approval => "approval",
            AuditKind::KeyEvent => "key_event",
            AuditKind::Service => "service",
        }
    }
}

/// What a caller asks to be recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    pub kind: AuditKind,
    /// Who did it: `cortex` for automatic decisions, `operator:<name>` for people.
    pub actor: String,
    pub body: serde_json::Value,
}

/// One record as stored in the chain.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub time_ns: u64,
    pub kind: String,
    pub actor: String,
    /// The body's JSON text, exactly as hashed.
    pub body: String,
    #[serde(with = "hex_hash")]
    pub prev_hash: Hash,
    #[serde(with = "hex_hash")]
    pub hash: Hash,
}

impl AuditRecord {
    /// The hash this record's content and `prev_hash` call for.
    pub fn expected_hash(&self) -> Hash {
        chain_hash(
            &self.prev_hash,
            self.seq,
            self.time_ns,
            &self.kind,
            &self.actor,
            &self.body,
        )
    }
}

pub fn chain_hash(
    prev_hash: &Hash,
    seq: u64,
    time_ns: u64,
    kind: &str,
    actor: &str,
    body: &str,
) -> Hash {
    let mut hasher = Sha3_256::new();
    hasher.update(prev_hash);
    hasher.update(RECORD_DOMAIN);
    hasher.update(seq.to_be_bytes());
    hasher.update(time_ns.to_be_bytes());
    for field in [kind, actor, body] {
        hasher.update((field.len() as u32).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.finalize().into()
}

/// A signed statement "record `seq` of this chain has hash `record_hash`".
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub seq: u64,
    pub record_hash: Hash,
    /// The checkpoint before this one (0 for the first), so a deleted checkpoint is noticed.
    pub prev_checkpoint_seq: u64,
    pub time_ns: u64,
    pub signature: Vec<u8>,
}

impl Checkpoint {
    /// The bytes the Ed25519 signature covers.
    pub fn signed_message(
        seq: u64,
        record_hash: &Hash,
        prev_checkpoint_seq: u64,
        time_ns: u64,
    ) -> Vec<u8> {
        let mut message = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 56);
        message.extend_from_slice(CHECKPOINT_DOMAIN);
        message.extend_from_slice(&seq.to_be_bytes());
        message.extend_from_slice(record_hash);
        message.extend_from_slice(&prev_checkpoint_seq.to_be_bytes());
        message.extend_from_slice(&time_ns.to_be_bytes());
        message
    }

    pub fn message(&self) -> Vec<u8> {
        Self::signed_message(
            self.seq,
            &self.record_hash,
            self.prev_checkpoint_seq,
            self.time_ns,
        )
    }
}

/// Stands in for a stored hash of the wrong length; unlike the genesis hash it never links.
pub const INVALID_HASH: Hash = [0xff; HASH_LEN];

/// A stored hash column as a [`Hash`], [`INVALID_HASH`] when its length is wrong (so that
/// verification reports the row as bad rather than failing to read it).
pub fn to_hash(bytes: Vec<u8>) -> Hash {
    bytes.try_into().unwrap_or(INVALID_HASH)
}

mod hex_hash {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(hash: &super::Hash, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_changes_the_hash() {
        let base = chain_hash(&GENESIS_HASH, 1, 2, "k", "a", "{}");
        assert_ne!(base, chain_hash(&[1u8; 32], 1, 2, "k", "a", "{}"));
        assert_ne!(base, chain_hash(&GENESIS_HASH, 2, 2, "k", "a", "{}"));
        assert_ne!(base, chain_hash(&GENESIS_HASH, 1, 3, "k", "a", "{}"));
        assert_ne!(base, chain_hash(&GENESIS_HASH, 1, 2, "kk", "a", "{}"));
        assert_ne!(base, chain_hash(&GENESIS_HASH, 1, 2, "k", "b", "{}"));
        assert_ne!(base, chain_hash(&GENESIS_HASH, 1, 2, "k", "a", "{ }"));
        // Length prefixes keep field boundaries unambiguous.
        assert_ne!(
            chain_hash(&GENESIS_HASH, 1, 2, "ab", "c", "{}"),
            chain_hash(&GENESIS_HASH, 1, 2, "a", "bc", "{}")
        );
    }
}
