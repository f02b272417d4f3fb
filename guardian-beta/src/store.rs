//! The baseline store: the serialized [`Baseline`], encrypted with AES-256-GCM and signed with
//! Ed25519, written atomically.
//!
//! # Threat model
//! An attacker who can rewrite, truncate, extend or replace the store file, but cannot read the
//! key file, is detected: every byte of the store is covered by the Ed25519 signature (checked
//! first) and by the GCM tag, so an edit, a truncation or a file from another key fails with
//! [`StoreError::Tampered`]. A store copied from another host or another store path, even when
//! signed by the same key, fails too, because the signed plaintext names both. Not covered: an
//! attacker who can read the key file (they can forge a store), and rolling back to an older
//! store of this same host and path (its generation number is reported so the cortex can
//! compare it with the last one it saw).
//!
//! Layout: `MAGIC (8) | nonce (12) | ciphertext length (u64 LE) | ciphertext | signature (64)`.
//! The header is the GCM associated data; the signature covers everything before it.
//!
//! The key file is `KEY_MAGIC (8) | AES key (32) | Ed25519 seed (32)`, mode 0600, owned by the
//! user running the agent; a looser mode or another owner is refused.

use crate::baseline::Baseline;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"QSCBST01";
const KEY_MAGIC: &[u8; 8] = b"QSCBKEY1";
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = 8 + NONCE_LEN + 8;
const SIGNATURE_LEN: usize = 64;
const KEY_FILE_LEN: usize = 8 + 32 + 32;
/// Refuse to decrypt absurd sizes before allocating.
const MAX_STORE_BYTES: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key file {path}: {source}")]
    KeyIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "key file {path} has mode {mode:o}; it must not be readable or writable by group or others (chmod 600)"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("key file {path} is owned by uid {owner}, not by the running user {euid}")]
    KeyOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("key file {path} is malformed: {reason}")]
    KeyMalformed { path: PathBuf, reason: String },
    #[error("baseline store {path} does not exist; run `guardian-beta baseline init` first")]
    Missing { path: PathBuf },
    #[error("baseline store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("baseline store {path} has been tampered with: {reason}")]
    Tampered { path: PathBuf, reason: String },
    #[error("cannot encode the baseline: {0}")]
    Encode(String),
    #[error("cannot get random bytes from the kernel: {0}")]
    Random(String),
}

/// The store's secret keys.
pub struct StoreKeys {
    aes: [u8; 32],
    signing: SigningKey,
}

impl StoreKeys {
    /// Loads the key file, checking its mode and owner.
    pub fn load(path: &Path) -> Result<StoreKeys, StoreError> {
        let key_io = |source| StoreError::KeyIo {
            path: path.to_path_buf(),
            source,
        };
        let metadata = std::fs::symlink_metadata(path).map_err(key_io)?;
        let mode = metadata.mode() & 0o777;
        if mode & 0o077 != 0 || !metadata.is_file() {
            return Err(StoreError::KeyPermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if metadata.uid() != euid {
            return Err(StoreError::KeyOwner {
                path: path.to_path_buf(),
                owner: metadata.uid(),
                euid,
            });
        }
        let bytes = std::fs::read(path).map_err(key_io)?;
        Self::from_bytes(path, &bytes)
    }

    /// Loads the key file, creating it with fresh random keys when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<StoreKeys, StoreError> {
        if std::fs::symlink_metadata(path).is_ok() {
            return Self::load(path);
        }
        let mut bytes = [0u8; KEY_FILE_LEN];
        bytes[..8].copy_from_slice(KEY_MAGIC);
        getrandom::fill(&mut bytes[8..]).map_err(|e| StoreError::Random(e.to_string()))?;
        let key_io = |source| StoreError::KeyIo {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(key_io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(key_io)?;
        file.write_all(&bytes).map_err(key_io)?;
        file.sync_all().map_err(key_io)?;
        Self::from_bytes(path, &bytes)
    }

    fn from_bytes(path: &Path, bytes: &[u8]) -> Result<StoreKeys, StoreError> {
        let malformed = |reason: &str| StoreError::KeyMalformed {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        if bytes.len() != KEY_FILE_LEN {
            return Err(malformed(&format!(
                "expected {KEY_FILE_LEN} bytes, found {}",
                bytes.len()
            )));
        }
        if &bytes[..8] != KEY_MAGIC {
            return Err(malformed("not a guardian-beta key file (bad magic)"));
        }
        let mut aes = [0u8; 32];
        aes.copy_from_slice(&bytes[8..40]);
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&bytes[40..72]);
        Ok(StoreKeys {
            aes,
            signing: SigningKey::from_bytes(&seed),
        })
    }
}

/// Encrypts, signs and atomically writes a baseline.
pub fn save(path: &Path, keys: &StoreKeys, baseline: &Baseline) -> Result<(), StoreError> {
    let plaintext = serde_json::to_vec(baseline).map_err(|e| StoreError::Encode(e.to_string()))?;
    let bytes = seal(keys, &plaintext)?;
    write_atomically(path, &bytes).map_err(|source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads, verifies and decrypts a baseline; any inconsistency is [`StoreError::Tampered`].
pub fn load(path: &Path, keys: &StoreKeys, expected_host: &str) -> Result<Baseline, StoreError> {
    let bytes = read_store(path)?;
    let tampered = |reason: String| StoreError::Tampered {
        path: path.to_path_buf(),
        reason,
    };
    let plaintext = open(keys, &bytes).map_err(tampered)?;
    let baseline: Baseline = serde_json::from_slice(&plaintext)
        .map_err(|e| tampered(format!("signed content does not decode: {e}")))?;
    if baseline.host_id != expected_host {
        return Err(tampered(format!(
            "store belongs to host {:?}, this is {expected_host:?}",
            baseline.host_id
        )));
    }
    let here = path.display().to_string();
    if baseline.store_path != here {
        return Err(tampered(format!(
            "store was written to {:?}, not {here:?}",
            baseline.store_path
        )));
    }
    Ok(baseline)
}

fn read_store(path: &Path) -> Result<Vec<u8>, StoreError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !metadata.is_file() || metadata.len() > MAX_STORE_BYTES {
        return Err(StoreError::Tampered {
            path: path.to_path_buf(),
            reason: "not a regular file of plausible size".into(),
        });
    }
    std::fs::read(path).map_err(|source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn seal(keys: &StoreKeys, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| StoreError::Random(e.to_string()))?;
    let ciphertext_len = plaintext.len() as u64 + 16;
    let mut out = Vec::with_capacity(HEADER_LEN + ciphertext_len as usize + SIGNATURE_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext_len.to_le_bytes());
    let cipher = Aes256Gcm::new((&keys.aes).into());
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &out[..HEADER_LEN],
            },
        )
        .map_err(|_| StoreError::Encode("AES-GCM encryption failed".into()))?;
    out.extend_from_slice(&ciphertext);
    let signature = keys.signing.sign(&out);
    out.extend_from_slice(&signature.to_bytes());
    Ok(out)
}

/// Verifies and decrypts store bytes; the error is the tampering reason.
fn open(keys: &StoreKeys, bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.len() < HEADER_LEN + 16 + SIGNATURE_LEN {
        return Err(format!(
            "only {} bytes, too short to be a store",
            bytes.len()
        ));
    }
    if &bytes[..8] != MAGIC {
        return Err("bad magic".into());
    }
    let (signed, signature) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
    let signature = Signature::from_slice(signature).map_err(|e| format!("bad signature: {e}"))?;
    keys.signing
        .verifying_key()
        .verify_strict(signed, &signature)
        .map_err(|_| "Ed25519 signature does not match (edited, truncated or foreign store)")?;
    let mut length = [0u8; 8];
    length.copy_from_slice(&signed[8 + NONCE_LEN..HEADER_LEN]);
    let ciphertext = &signed[HEADER_LEN..];
    if u64::from_le_bytes(length) != ciphertext.len() as u64 {
        return Err("ciphertext length does not match the header".into());
    }
    let cipher = Aes256Gcm::new((&keys.aes).into());
    cipher
        .decrypt(
            Nonce::from_slice(&signed[8..8 + NONCE_LEN]),
            Payload {
                msg: ciphertext,
                aad: &signed[..HEADER_LEN],
            },
        )
        .map_err(|_| "AES-GCM authentication failed".to_string())
}

/// Writes a file (mode 0600, its folder created if missing) through a temporary sibling
/// renamed over it ([`qsc_durable::replace`]); durable when this returns.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = qsc_durable::folder_of(path);
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    qsc_durable::replace(path, &tmp, 0o600, |file| {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(bytes)
    })?
    .sync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::BASELINE_FORMAT;
    use std::collections::BTreeMap;

    fn baseline(store: &Path) -> Baseline {
        Baseline {
            format: BASELINE_FORMAT,
            host_id: "web-01".into(),
            store_path: store.display().to_string(),
            created_ns: 1,
            updated_ns: 1,
            generation: 1,
            entries: BTreeMap::new(),
        }
    }

    fn setup() -> (tempfile::TempDir, PathBuf, StoreKeys) {
        let dir = tempfile::tempdir().unwrap();
        let keys = StoreKeys::load_or_create(&dir.path().join("keys/beta.key")).unwrap();
        let store = dir.path().join("baseline.qsb");
        save(&store, &keys, &baseline(&store)).unwrap();
        (dir, store, keys)
    }

    fn assert_tampered(result: Result<Baseline, StoreError>) {
        assert!(
            matches!(result, Err(StoreError::Tampered { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn round_trip_and_key_file_mode() {
        let (dir, store, keys) = setup();
        assert_eq!(load(&store, &keys, "web-01").unwrap(), baseline(&store));
        let key_path = dir.path().join("keys/beta.key");
        let mode = std::fs::metadata(&key_path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Loading again gives the same keys.
        let again = StoreKeys::load_or_create(&key_path).unwrap();
        assert!(load(&store, &again, "web-01").is_ok());
    }

    #[test]
    fn every_single_byte_flip_is_tampering() {
        let (_dir, store, keys) = setup();
        let original = std::fs::read(&store).unwrap();
        for i in (0..original.len()).step_by(7) {
            let mut bytes = original.clone();
            bytes[i] ^= 0x40;
            std::fs::write(&store, &bytes).unwrap();
            assert_tampered(load(&store, &keys, "web-01"));
        }
    }

    #[test]
    fn truncation_and_extension_are_tampering() {
        let (_dir, store, keys) = setup();
        let original = std::fs::read(&store).unwrap();
        for len in [0, 10, original.len() / 2, original.len() - 1] {
            std::fs::write(&store, &original[..len]).unwrap();
            assert_tampered(load(&store, &keys, "web-01"));
        }
        let mut longer = original.clone();
        longer.push(0);
        std::fs::write(&store, &longer).unwrap();
        assert_tampered(load(&store, &keys, "web-01"));
    }

    #[test]
    fn swapped_stores_are_tampering() {
        let (dir, store, keys) = setup();
        // A store signed by another key.
        let other_keys = StoreKeys::load_or_create(&dir.path().join("other.key")).unwrap();
        save(&store, &other_keys, &baseline(&store)).unwrap();
        assert_tampered(load(&store, &keys, "web-01"));
        // A store of the same key, copied from another path.
        let elsewhere = dir.path().join("elsewhere.qsb");
        save(&elsewhere, &keys, &baseline(&elsewhere)).unwrap();
        std::fs::copy(&elsewhere, &store).unwrap();
        assert_tampered(load(&store, &keys, "web-01"));
        // A store of the same key and path, from another host.
        let mut foreign = baseline(&store);
        foreign.host_id = "db-02".into();
        save(&store, &keys, &foreign).unwrap();
        assert_tampered(load(&store, &keys, "web-01"));
    }

    #[test]
    fn loose_key_file_permissions_are_refused() {
        let (dir, _store, _keys) = setup();
        let key_path = dir.path().join("keys/beta.key");
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            StoreKeys::load(&key_path),
            Err(StoreError::KeyPermissions { mode: 0o640, .. })
        ));
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&key_path, b"short").unwrap();
        assert!(matches!(
            StoreKeys::load(&key_path),
            Err(StoreError::KeyMalformed { .. })
        ));
    }

    #[test]
    fn missing_store_is_not_tampering() {
        let (dir, _store, keys) = setup();
        assert!(matches!(
            load(&dir.path().join("none.qsb"), &keys, "web-01"),
            Err(StoreError::Missing { .. })
        ));
    }
}
