//! Agent key lifecycle: GENERATED → DISTRIBUTED → ACTIVE → ROTATING → RETIRED, REVOKED,
//! DESTROYED, with scheduled, triggered and emergency rotation.
//!
//! * [`lifecycle`]: the named transitions; an illegal one is an error.
//! * [`records`]: the key records (state and timestamps per key) and pending rotation requests,
//!   each change a list of [`KeyEvent`]s.
//! * [`KeyStore`]: the records file (`[keys] lifecycle_file`, JSON), read-modify-written under
//!   an exclusive lock (`<file>.lock`) by both the running cortex and `cortex keys`, replaced
//!   atomically.
//! * [`audit_events`]: every transition goes to the audit chain as a `key_event` record.
//!
//! The running side (sessions, the rotation command, closing sessions of refused keys) is in
//! [`crate::ingest::keys`].

pub mod lifecycle;
pub mod records;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

pub use lifecycle::{IllegalTransition, KeyState, Transition};
pub use records::{Cause, KeyEvent, KeyRecord, KeyRecords, RotationRequest};

use crate::audit::{AuditEntry, AuditError, AuditKind, AuditSink};

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot {action} key records file {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key records file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("key record of host `{host_id}`: {reason}")]
    MalformedRecord { host_id: String, reason: String },
    #[error("key {key_id}: {source}")]
    Illegal {
        key_id: String,
        source: IllegalTransition,
    },
    #[error("key {key_id} has no record")]
    UnknownKey { key_id: String },
    #[error("key {key_id} is already recorded")]
    AlreadyRecorded { key_id: String },
    #[error("host `{host_id}` has no key that could still be revoked")]
    NothingToRevoke { host_id: String },
    #[error("host `{host_id}` has no active {agent} key to rotate")]
    NoActiveKey { host_id: String, agent: String },
    #[error("host `{host_id}` {agent} agent is not connected; rotation needs its live session")]
    NotConnected { host_id: String, agent: String },
    #[error("a rotation of host `{host_id}` {agent} agent is already in progress")]
    RotationInProgress { host_id: String, agent: String },
    #[error("sending the rotation command failed: the session of `{host_id}` has ended")]
    SessionEnded { host_id: String },
    #[error("the key rotation of host `{host_id}` did not complete: {detail}")]
    RotationFailed { host_id: String, detail: String },
    #[error("this cortex runs without key records ([keys] lifecycle_file)")]
    LifecycleDisabled,
    #[error("audit: {0}")]
    Audit(#[from] AuditError),
    #[error("cannot start the key lifecycle's audit thread: {0}")]
    AuditThread(std::io::Error),
}

/// The key records file.
#[derive(Clone, Debug)]
pub struct KeyStore {
    path: PathBuf,
}

impl KeyStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        KeyStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and validates the records; a missing file holds none.
    pub fn load(&self) -> Result<KeyRecords, KeysError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(KeyRecords::default());
            }
            Err(source) => return Err(self.io("read", source)),
        };
        let records: KeyRecords =
            serde_json::from_str(&text).map_err(|source| KeysError::Parse {
                path: self.path.clone(),
                source,
            })?;
        records.validate()?;
        Ok(records)
    }

    /// Read-modify-write under the file lock: `change` sees the current records; if it
    /// succeeds and changed them, they are saved (durably) before this returns. On error
    /// nothing is written.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut KeyRecords) -> Result<T, KeysError>,
    ) -> Result<(T, KeyRecords), KeysError> {
        let mut locked = self.lock_records()?;
        let value = change(&mut locked.records)?;
        locked.save()?;
        Ok((value, locked.records))
    }

    /// The records, locked against every other update (this process's and other processes')
    /// until the returned value is dropped; change them and [`LockedRecords::save`].
    pub fn lock_records(&self) -> Result<LockedRecords<'_>, KeysError> {
        let lock = self.lock()?;
        let records = self.load()?;
        Ok(LockedRecords {
            store: self,
            _lock: lock,
            saved: records.clone(),
            records,
        })
    }

    fn lock(&self) -> Result<File, KeysError> {
        let mut lock_path = self.path.as_os_str().to_owned();
        lock_path.push(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PathBuf::from(lock_path))
            .map_err(|source| self.io("open the lock of", source))?;
        file.lock().map_err(|source| self.io("lock", source))?;
        Ok(file)
    }

    fn save(&self, records: &KeyRecords) -> Result<qsc_durable::Replacement, KeysError> {
        let text = serde_json::to_string_pretty(records).map_err(|source| KeysError::Parse {
            path: self.path.clone(),
            source,
        })?;
        let tmp = qsc_durable::with_suffix(&self.path, ".tmp");
        qsc_durable::replace(&self.path, &tmp, 0o644, |file| {
            file.write_all(text.as_bytes())?;
            file.write_all(b"\n")
        })
        .map_err(|source| self.io("replace", source))
    }

    fn io(&self, action: &'static str, source: std::io::Error) -> KeysError {
        KeysError::Io {
            action,
            path: self.path.clone(),
            source,
        }
    }
}

/// Key records under the file lock ([`KeyStore::lock_records`]).
pub struct LockedRecords<'a> {
    store: &'a KeyStore,
    _lock: File,
    /// What the file holds.
    saved: KeyRecords,
    /// What it will hold once saved.
    pub records: KeyRecords,
}

impl LockedRecords<'_> {
    /// Validates the records and, if they changed, writes them durably.
    pub fn save(&mut self) -> Result<(), KeysError> {
        if self.records == self.saved {
            return Ok(());
        }
        self.records.validate()?;
        self.store
            .save(&self.records)?
            .sync()
            .map_err(|source| self.store.io("sync", source))?;
        self.saved = self.records.clone();
        Ok(())
    }
}

/// `alpha`, `beta` or `cortex`, as in the agents file.
pub fn source_name(source: qsc_event::Source) -> &'static str {
    match source {
        qsc_event::Source::Alpha => "alpha",
        qsc_event::Source::Beta => "beta",
        qsc_event::Source::Cortex => "cortex",
    }
}

/// Writes each event to the audit chain as a `key_event` record, in order.
pub fn audit_events(audit: &dyn AuditSink, events: &[KeyEvent]) -> Result<(), AuditError> {
    for entry in audit_entries(events) {
        audit.record(entry)?;
    }
    Ok(())
}

/// The `key_event` audit records of `events`, in order.
pub fn audit_entries(events: &[KeyEvent]) -> Vec<AuditEntry> {
    events
        .iter()
        .map(|event| AuditEntry {
            kind: AuditKind::KeyEvent,
            actor: event.actor.clone(),
            body: json!({
                "event": "key_transition",
                "host_id": event.host_id,
                "source": event.source,
                "key_id": event.key_id,
                "public_key": event.public_key,
                "transition": event.transition,
                "from": event.from,
                "to": event.to,
                "reason": event.reason,
                "at_ns": event.at_ns,
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use qsc_channel::keys::PublicKeyBytes;
    use qsc_event::Source;

    #[test]
    fn updates_persist_and_a_failed_change_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("keys.json"));
        assert_eq!(store.load().unwrap(), KeyRecords::default());
        let key = PublicKeyBytes([4; 32]);
        let cause = Cause::new("operator:test", "test", 5);
        let (events, _) = store
            .update(|records| records.enroll("web-01", Source::Beta, &key, None, &cause))
            .unwrap();
        assert_eq!(events.len(), 3);
        let loaded = store.load().unwrap();
        assert_eq!(loaded.records[0].state, KeyState::Active);
        let refused = store.update(|records| {
            records.transition(&key, Transition::Retire, &cause)?;
            Ok(())
        });
        assert!(matches!(refused, Err(KeysError::Illegal { .. })));
        assert_eq!(store.load().unwrap(), loaded);
        std::fs::write(store.path(), "{not json").unwrap();
        assert!(matches!(store.load(), Err(KeysError::Parse { .. })));
    }

    #[test]
    fn locked_records_hold_off_other_updates_and_reach_the_file_when_saved() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("keys.json"));
        let key = PublicKeyBytes([5; 32]);
        let cause = Cause::new("operator:test", "test", 5);
        let mut locked = store.lock_records().unwrap();
        locked
            .records
            .enroll("web-01", Source::Alpha, &key, None, &cause)
            .unwrap();
        assert_eq!(
            store.load().unwrap(),
            KeyRecords::default(),
            "not saved yet"
        );
        let other = std::thread::spawn({
            let store = store.clone();
            move || store.update(|records| Ok(records.records.len())).unwrap().0
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!other.is_finished(), "another update waits for the lock");
        locked.save().unwrap();
        assert_eq!(store.load().unwrap(), locked.records);
        drop(locked);
        assert_eq!(other.join().unwrap(), 1, "and then sees the saved records");
    }

    #[test]
    fn every_event_becomes_a_key_event_audit_record() {
        let dir = tempfile::tempdir().unwrap();
        let seed = zeroize::Zeroizing::new([3u8; 32]);
        let audit =
            crate::audit::AuditLog::open_with_key(&dir.path().join("a.db"), &seed, 4).unwrap();
        let mut records = KeyRecords::default();
        let events = records
            .enroll(
                "web-01",
                Source::Alpha,
                &PublicKeyBytes([9; 32]),
                None,
                &Cause::new("operator:alice", "enrolled", 1),
            )
            .unwrap();
        audit_events(&audit, &events).unwrap();
        let stored = audit.records(1, 10).unwrap();
        assert_eq!(stored.len(), 3);
        assert!(
            stored
                .iter()
                .all(|r| r.kind == "key_event" && r.actor == "operator:alice")
        );
        assert!(
            stored[2].body.contains("\"to\":\"active\""),
            "{}",
            stored[2].body
        );
        assert!(audit.verify().unwrap().is_intact());
    }
}
