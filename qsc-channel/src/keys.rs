//! Static X25519 identity keys: generation, 0600 key files, text forms, lifecycle, allow-list.
//!
//! Key file format (one line, 0600, created with that mode and never chmod-ed afterwards):
//!
//! ```text
//! qsc-x25519-secret-v1 <64 hex chars>
//! ```
//!
//! The public key text form is 64 lowercase hex characters; the key id is the first 8 bytes of
//! BLAKE2s-256(public key) in hex, short enough for logs and never secret.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use blake2::{Blake2s256, Digest};
use rand_core::OsRng;
use serde::Deserialize;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

const SECRET_FILE_TAG: &str = "qsc-x25519-secret-v1";
/// A key file is one short line; anything much larger is not a key file.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// Errors from key generation, key files and the allow-list.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path} already exists; refusing to overwrite a key")]
    AlreadyExists { path: PathBuf },
    #[error("cannot {action} key file {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "key file {path} has mode {mode:o}: group/other permission bits must be clear (chmod 600)"
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("key file {path} is not a QSC secret key file: {reason}")]
    MalformedKeyFile { path: PathBuf, reason: String },
    #[error("public key {text:?} is invalid: expected 64 hex characters (32 bytes)")]
    MalformedPublicKey { text: String },
    #[error("key state transition {from:?} -> {to:?} is not allowed")]
    InvalidTransition { from: KeyState, to: KeyState },
}

/// A 32-byte X25519 public key with its text forms.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKeyBytes(pub [u8; 32]);

impl PublicKeyBytes {
    /// Parses the 64-hex-character text form (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let malformed = || KeyError::MalformedPublicKey {
            text: text.chars().take(80).collect(),
        };
        let bytes = hex::decode(text.trim()).map_err(|_| malformed())?;
        let array: [u8; 32] = bytes.try_into().map_err(|_| malformed())?;
        Ok(PublicKeyBytes(array))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Short, non-secret identifier for logs: first 8 bytes of BLAKE2s(public key), hex.
    pub fn key_id(&self) -> String {
        let digest = Blake2s256::digest(self.0);
        hex::encode(&digest[..8])
    }

    pub(crate) fn to_dalek(self) -> PublicKey {
        PublicKey::from(self.0)
    }
}

impl std::fmt::Debug for PublicKeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl std::fmt::Display for PublicKeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A static X25519 keypair. The secret is zeroized on drop and never printed.
#[derive(Clone)]
pub struct StaticKeypair {
    secret: StaticSecret,
    public: PublicKeyBytes,
}

impl std::fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("key_id", &self.public.key_id())
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl StaticKeypair {
    pub fn generate() -> Self {
        Self::from_secret(StaticSecret::random_from_rng(OsRng))
    }

    fn from_secret(secret: StaticSecret) -> Self {
        let public = PublicKeyBytes(PublicKey::from(&secret).to_bytes());
        StaticKeypair { secret, public }
    }

    pub fn public(&self) -> PublicKeyBytes {
        self.public
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }

    /// Raw secret bytes, for handing to another Noise implementation in tests.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// `keygen`: generates a keypair, writes it to a new 0600 file and returns the public key
    /// to print or enroll.
    pub fn generate_file(path: &Path) -> Result<PublicKeyBytes, KeyError> {
        let keypair = Self::generate();
        keypair.save(path)?;
        Ok(keypair.public())
    }

    /// Writes the secret to a new file created with mode 0600; refuses to overwrite.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => KeyError::AlreadyExists {
                    path: path.to_path_buf(),
                },
                _ => KeyError::Io {
                    action: "create",
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        let io_err = |source| KeyError::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        };
        file.write_all(self.secret_line().as_bytes())
            .map_err(io_err)?;
        file.sync_all().map_err(io_err)
    }

    /// The key file's content.
    fn secret_line(&self) -> Zeroizing<String> {
        let secret_hex = Zeroizing::new(hex::encode(self.secret.to_bytes()));
        Zeroizing::new(format!("{SECRET_FILE_TAG} {}\n", secret_hex.as_str()))
    }

    /// Loads a key file, refusing it if any group/other permission bit is set.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io_err = |action| {
            move |source| KeyError::Io {
                action,
                path: path.to_path_buf(),
                source,
            }
        };
        let file = File::open(path).map_err(io_err("open"))?;
        let mode = file.metadata().map_err(io_err("stat"))?.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_KEY_FILE_BYTES)
            .read_to_string(&mut text)
            .map_err(io_err("read"))?;
        Self::parse_secret_file(&text).map_err(|reason| KeyError::MalformedKeyFile {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Key rotation on the agent: replaces the key file at `path` with a fresh keypair, keeping
    /// the previous file as `<path>.retired` until [`Self::discard_retired`] (the cortex
    /// confirmed the new key). The new key is written to `<path>.new` (0600) and renamed over
    /// `path` ([`qsc_durable::replace`]), so the file always holds one complete key; it is
    /// durable when this returns.
    pub fn rotate_file(path: &Path) -> Result<Self, KeyError> {
        let keypair = Self::generate();
        let retired = retired_path(path);
        remove_if_exists(&retired)?;
        std::fs::hard_link(path, &retired).map_err(|source| KeyError::Io {
            action: "keep the previous key as",
            path: retired.clone(),
            source,
        })?;
        let staged = qsc_durable::with_suffix(path, ".new");
        qsc_durable::replace(path, &staged, 0o600, |file| {
            file.write_all(keypair.secret_line().as_bytes())
        })
        .and_then(|replacement| replacement.sync())
        .map_err(|source| KeyError::Io {
            action: "install the new key at",
            path: path.to_path_buf(),
            source,
        })?;
        Ok(keypair)
    }

    /// Deletes `<path>.retired` once the cortex confirmed the rotated key; true if it existed.
    /// Its blocks are freed in the background: the agent's command thread does not wait.
    pub fn discard_retired(path: &Path) -> Result<bool, KeyError> {
        let retired = retired_path(path);
        qsc_durable::remove_file_in_background(&retired).map_err(|source| KeyError::Io {
            action: "remove",
            path: retired,
            source,
        })
    }

    fn parse_secret_file(text: &str) -> Result<Self, String> {
        let (tag, value) = text
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("expected `{SECRET_FILE_TAG} <hex>`"))?;
        if tag != SECRET_FILE_TAG {
            return Err(format!("unknown tag (expected `{SECRET_FILE_TAG}`)"));
        }
        let bytes = Zeroizing::new(
            hex::decode(value.trim()).map_err(|_| "secret is not valid hex".to_string())?,
        );
        let array: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| "secret must be 32 bytes".to_string())?;
        let array = Zeroizing::new(array);
        Ok(Self::from_secret(StaticSecret::from(*array)))
    }
}

/// Where [`StaticKeypair::rotate_file`] keeps the previous key of `path`.
pub fn retired_path(path: &Path) -> PathBuf {
    qsc_durable::with_suffix(path, ".retired")
}

fn remove_if_exists(path: &Path) -> Result<(), KeyError> {
    match std::fs::remove_file(path) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => Err(KeyError::Io {
            action: "remove",
            path: path.to_path_buf(),
            source,
        }),
        _ => Ok(()),
    }
}

/// A static keypair that can be replaced while it is in use: the agent's channel identity
/// during key rotation. Clones share the slot, so a replacement is seen by every holder (the
/// client's next handshake uses the new key).
#[derive(Clone)]
pub struct KeySlot(Arc<RwLock<StaticKeypair>>);

impl KeySlot {
    pub fn new(keypair: StaticKeypair) -> Self {
        KeySlot(Arc::new(RwLock::new(keypair)))
    }

    /// The keypair in use now.
    pub fn current(&self) -> StaticKeypair {
        // Writers replace the whole keypair, so a poisoned lock still holds a valid one.
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The public key of the keypair in use now.
    pub fn public(&self) -> PublicKeyBytes {
        self.current().public()
    }

    /// Puts `keypair` in use; returns the one it replaced.
    pub fn replace(&self, keypair: StaticKeypair) -> StaticKeypair {
        let mut slot = self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::replace(&mut *slot, keypair)
    }
}

impl From<StaticKeypair> for KeySlot {
    fn from(keypair: StaticKeypair) -> Self {
        KeySlot::new(keypair)
    }
}

impl std::fmt::Debug for KeySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("KeySlot").field(&self.current()).finish()
    }
}

/// Lifecycle of a static key, as recorded by the operator's tooling and the audit chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Generated,
    Distributed,
    Active,
    Rotating,
    Retired,
    Revoked,
    Destroyed,
}

impl KeyState {
    /// The state's name as written in key records and audit bodies (`active`, `revoked`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Generated => "generated",
            KeyState::Distributed => "distributed",
            KeyState::Active => "active",
            KeyState::Rotating => "rotating",
            KeyState::Retired => "retired",
            KeyState::Revoked => "revoked",
            KeyState::Destroyed => "destroyed",
        }
    }

    /// Whether a key in this state may open and keep a channel session. A rotating key still
    /// may, until its agent is back with the new key.
    pub fn admits_sessions(self) -> bool {
        matches!(self, KeyState::Active | KeyState::Rotating)
    }

    /// Returns the new state if `self -> to` is an allowed transition.
    ///
    /// Normal path: Generated → Distributed → Active → Rotating → Retired → Destroyed.
    /// Any live state may be Revoked; a Generated key may be Destroyed unused; Revoked keys
    /// can only be Destroyed. Destroyed is final.
    pub fn transition(self, to: KeyState) -> Result<KeyState, KeyError> {
        use KeyState::*;
        let allowed = matches!(
            (self, to),
            (Generated, Distributed)
                | (Distributed, Active)
                | (Active, Rotating)
                | (Rotating, Retired)
                | (Retired, Destroyed)
                | (Generated, Destroyed)
                | (Revoked, Destroyed)
                | (
                    Generated | Distributed | Active | Rotating | Retired,
                    Revoked
                )
        );
        if allowed {
            Ok(to)
        } else {
            Err(KeyError::InvalidTransition { from: self, to })
        }
    }
}

/// One enrolled agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentEntry {
    pub host_id: String,
    pub class: String,
    pub public_key: PublicKeyBytes,
    pub revoked: bool,
}

/// Why an agent's key was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("agent key {key_id} is not enrolled")]
    UnknownKey { key_id: String },
    #[error("agent key {key_id} of host {host_id} is revoked")]
    Revoked { key_id: String, host_id: String },
}

/// Errors in the allow-list file.
#[derive(Debug, thiserror::Error)]
pub enum AllowListError {
    #[error("cannot read allow-list {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("allow-list is not valid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("allow-list entry {index} ({host_id}): {reason}")]
    InvalidEntry {
        index: usize,
        host_id: String,
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowListFile {
    #[serde(default)]
    agents: Vec<AllowListRow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowListRow {
    host_id: String,
    public_key: String,
    class: String,
    #[serde(default)]
    revoked: bool,
}

/// The cortex's list of enrolled agent static keys, indexed by key.
#[derive(Clone, Debug, Default)]
pub struct AllowList {
    entries: Vec<AgentEntry>,
    by_key: HashMap<PublicKeyBytes, usize>,
}

impl AllowList {
    /// Builds a list from already validated entries; a later duplicate key wins.
    pub fn new(entries: Vec<AgentEntry>) -> Self {
        let by_key = entries
            .iter()
            .enumerate()
            .map(|(index, entry)| (entry.public_key, index))
            .collect();
        AllowList { entries, by_key }
    }

    /// Parses and validates `[[agents]]` rows: hex keys, non-empty ids, no duplicate host or key.
    pub fn from_toml(text: &str) -> Result<Self, AllowListError> {
        let file: AllowListFile = toml::from_str(text)?;
        let mut entries: Vec<AgentEntry> = Vec::with_capacity(file.agents.len());
        for (index, row) in file.agents.into_iter().enumerate() {
            let invalid = |reason: String| AllowListError::InvalidEntry {
                index,
                host_id: row.host_id.clone(),
                reason,
            };
            if row.host_id.trim().is_empty() {
                return Err(invalid("host_id is empty".into()));
            }
            if row.class.trim().is_empty() {
                return Err(invalid("class is empty".into()));
            }
            let public_key =
                PublicKeyBytes::from_hex(&row.public_key).map_err(|e| invalid(e.to_string()))?;
            if entries.iter().any(|e| e.host_id == row.host_id) {
                return Err(invalid("duplicate host_id".into()));
            }
            if entries.iter().any(|e| e.public_key == public_key) {
                return Err(invalid(
                    "public_key already enrolled for another host".into(),
                ));
            }
            entries.push(AgentEntry {
                host_id: row.host_id,
                class: row.class,
                public_key,
                revoked: row.revoked,
            });
        }
        Ok(AllowList::new(entries))
    }

    pub fn load(path: &Path) -> Result<Self, AllowListError> {
        let text = std::fs::read_to_string(path).map_err(|source| AllowListError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Finds the enrolled, non-revoked agent owning `key`.
    pub fn authorize(&self, key: &PublicKeyBytes) -> Result<&AgentEntry, AuthError> {
        let entry = self
            .by_key
            .get(key)
            .and_then(|&index| self.entries.get(index))
            .ok_or_else(|| AuthError::UnknownKey {
                key_id: key.key_id(),
            })?;
        if entry.revoked {
            return Err(AuthError::Revoked {
                key_id: key.key_id(),
                host_id: entry.host_id.clone(),
            });
        }
        Ok(entry)
    }

    pub fn entries(&self) -> &[AgentEntry] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn save_creates_0600_and_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        let public = StaticKeypair::generate_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = StaticKeypair::load(&path).unwrap();
        assert_eq!(loaded.public(), public);
    }

    #[test]
    fn save_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        StaticKeypair::generate().save(&path).unwrap();
        let err = StaticKeypair::generate().save(&path).unwrap_err();
        assert!(matches!(err, KeyError::AlreadyExists { .. }), "{err}");
    }

    #[test]
    fn load_refuses_group_or_other_bits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        StaticKeypair::generate().save(&path).unwrap();
        for mode in [0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = StaticKeypair::load(&path).unwrap_err();
            assert!(
                matches!(err, KeyError::InsecurePermissions { mode: m, .. } if m == mode),
                "{err}"
            );
        }
    }

    #[test]
    fn load_rejects_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in [
            ("a", "not a key"),
            ("b", "qsc-x25519-secret-v1 zz"),
            ("c", "qsc-x25519-secret-v1 0011"),
            ("d", "other-tag 00"),
        ] {
            let path = dir.path().join(name);
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
            let err = StaticKeypair::load(&path).unwrap_err();
            assert!(matches!(err, KeyError::MalformedKeyFile { .. }), "{err}");
        }
    }

    #[test]
    fn rotate_file_installs_a_new_0600_key_and_keeps_the_old_until_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        let old = StaticKeypair::generate_file(&path).unwrap();
        let new = StaticKeypair::rotate_file(&path).unwrap();
        assert_ne!(new.public(), old);
        assert_eq!(StaticKeypair::load(&path).unwrap().public(), new.public());
        let retired = retired_path(&path);
        assert_eq!(StaticKeypair::load(&retired).unwrap().public(), old);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!qsc_durable::with_suffix(&path, ".new").exists());
        assert!(StaticKeypair::discard_retired(&path).unwrap());
        assert!(!retired.exists());
        assert!(!StaticKeypair::discard_retired(&path).unwrap());
    }

    #[test]
    fn key_slot_clones_share_the_replacement() {
        let first = StaticKeypair::generate();
        let slot = KeySlot::new(first.clone());
        let holder = slot.clone();
        let second = StaticKeypair::generate();
        let replaced = slot.replace(second.clone());
        assert_eq!(replaced.public(), first.public());
        assert_eq!(holder.public(), second.public());
    }

    #[test]
    fn debug_never_shows_secret() {
        let kp = StaticKeypair::generate();
        let secret_hex = hex::encode(kp.secret_bytes().as_slice());
        let shown = format!("{kp:?}");
        assert!(!shown.contains(&secret_hex));
        assert!(shown.contains(&kp.public().key_id()));
    }

    #[test]
    fn public_key_hex_round_trip_and_errors() {
        let kp = StaticKeypair::generate();
        let text = kp.public().to_hex();
        assert_eq!(PublicKeyBytes::from_hex(&text).unwrap(), kp.public());
        assert!(PublicKeyBytes::from_hex("abcd").is_err());
        assert!(PublicKeyBytes::from_hex(&"g".repeat(64)).is_err());
        assert_eq!(kp.public().key_id().len(), 16);
    }

    #[test]
    fn key_state_transitions() {
        use KeyState::*;
        let mut state = Generated;
        for next in [Distributed, Active, Rotating, Retired, Destroyed] {
            state = state.transition(next).unwrap();
        }
        assert_eq!(state, Destroyed);
        assert!(Active.transition(Revoked).is_ok());
        assert!(Revoked.transition(Active).is_err());
        assert!(Destroyed.transition(Generated).is_err());
        assert!(Generated.transition(Active).is_err());
        assert!(Retired.transition(Active).is_err());
    }

    fn allow_list_toml(a: &PublicKeyBytes, b: &PublicKeyBytes) -> String {
        format!(
            "[[agents]]\nhost_id = \"web-01\"\npublic_key = \"{a}\"\nclass = \"production\"\n\n\
             [[agents]]\nhost_id = \"old-02\"\npublic_key = \"{b}\"\nclass = \"lab\"\nrevoked = true\n"
        )
    }

    #[test]
    fn allow_list_authorizes_known_and_refuses_unknown_or_revoked() {
        let (a, b, c) = (
            StaticKeypair::generate().public(),
            StaticKeypair::generate().public(),
            StaticKeypair::generate().public(),
        );
        let list = AllowList::from_toml(&allow_list_toml(&a, &b)).unwrap();
        let entry = list.authorize(&a).unwrap();
        assert_eq!(
            (entry.host_id.as_str(), entry.class.as_str()),
            ("web-01", "production")
        );
        assert!(matches!(list.authorize(&b), Err(AuthError::Revoked { .. })));
        assert!(matches!(
            list.authorize(&c),
            Err(AuthError::UnknownKey { .. })
        ));
    }

    #[test]
    fn allow_list_rejects_bad_rows() {
        let a = StaticKeypair::generate().public();
        let dup_key = allow_list_toml(&a, &a);
        assert!(matches!(
            AllowList::from_toml(&dup_key),
            Err(AllowListError::InvalidEntry { index: 1, .. })
        ));
        let bad_hex = "[[agents]]\nhost_id = \"x\"\npublic_key = \"xyz\"\nclass = \"c\"\n";
        assert!(matches!(
            AllowList::from_toml(bad_hex),
            Err(AllowListError::InvalidEntry { index: 0, .. })
        ));
        let unknown_field =
            "[[agents]]\nhost_id = \"x\"\npublic_key = \"\"\nclass = \"c\"\nfoo = 1\n";
        assert!(matches!(
            AllowList::from_toml(unknown_field),
            Err(AllowListError::Toml(_))
        ));
    }
}
