//! The key records: one per agent static key the cortex has known, with its lifecycle state and
//! timestamps, plus rotation requests waiting for the running cortex. Every change is a list of
//! [`KeyEvent`]s for the audit chain.

use std::collections::{HashMap, HashSet};

use qsc_channel::keys::{AgentEntry, AllowList, PublicKeyBytes};
use qsc_event::Source;
use serde::{Deserialize, Serialize};

use super::KeysError;
use super::lifecycle::{KeyState, Transition};
use crate::ingest::agents::{AgentsFile, Binding};

/// One agent static key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub host_id: String,
    pub source: Source,
    /// 64 hex digits.
    pub public_key: String,
    pub state: KeyState,
    /// When the key entered `state`, ns since the Unix epoch.
    pub since_ns: u64,
    /// When the record was created (the key's age counts from here).
    pub created_ns: u64,
    /// The key this one replaced in a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

impl KeyRecord {
    /// The parsed public key (validated when the records were loaded).
    pub fn key(&self) -> Result<PublicKeyBytes, KeysError> {
        PublicKeyBytes::from_hex(&self.public_key).map_err(|_| KeysError::MalformedRecord {
            host_id: self.host_id.clone(),
            reason: format!("public_key {:?} is not 64 hex digits", self.public_key),
        })
    }
}

/// A rotation asked for by an operator (`cortex keys rotate`) and not yet sent to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationRequest {
    pub host_id: String,
    pub source: Source,
    /// Revoke the old key at once instead of retiring it after the agent reconnected.
    pub emergency: bool,
    pub actor: String,
    pub requested_ns: u64,
}

/// One audited lifecycle step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyEvent {
    pub host_id: String,
    pub source: Source,
    pub key_id: String,
    pub public_key: String,
    pub transition: Transition,
    /// None for [`Transition::Generate`].
    pub from: Option<KeyState>,
    pub to: KeyState,
    #[serde(skip)]
    pub actor: String,
    pub reason: String,
    pub at_ns: u64,
}

/// Who did something and why, for the records and the audit chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    pub actor: String,
    pub reason: String,
    pub now_ns: u64,
}

impl Cause {
    pub fn new(actor: impl Into<String>, reason: impl Into<String>, now_ns: u64) -> Self {
        Cause {
            actor: actor.into(),
            reason: reason.into(),
            now_ns,
        }
    }
}

/// The content of the key records file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecords {
    #[serde(default)]
    pub records: Vec<KeyRecord>,
    #[serde(default)]
    pub requests: Vec<RotationRequest>,
}

impl KeyRecords {
    /// Checks every record: valid keys, each key once, at most one ACTIVE key per agent.
    pub fn validate(&self) -> Result<(), KeysError> {
        let mut keys = HashMap::new();
        let mut active = HashMap::new();
        for record in &self.records {
            let key = record.key()?;
            if keys.insert(key, ()).is_some() {
                return Err(KeysError::MalformedRecord {
                    host_id: record.host_id.clone(),
                    reason: format!("key {} is recorded twice", key.key_id()),
                });
            }
            if record.state == KeyState::Active
                && active
                    .insert((record.host_id.as_str(), record.source), ())
                    .is_some()
            {
                return Err(KeysError::MalformedRecord {
                    host_id: record.host_id.clone(),
                    reason: "two active keys for one agent".into(),
                });
            }
        }
        Ok(())
    }

    pub fn find(&self, key: &PublicKeyBytes) -> Option<&KeyRecord> {
        let hex = key.to_hex();
        self.records.iter().find(|r| r.public_key == hex)
    }

    /// The ACTIVE key of an agent.
    pub fn active(&self, host_id: &str, source: Source) -> Option<&KeyRecord> {
        self.records
            .iter()
            .find(|r| r.host_id == host_id && r.source == source && r.state == KeyState::Active)
    }

    /// Moves `key` along `transition`.
    pub fn transition(
        &mut self,
        key: &PublicKeyBytes,
        transition: Transition,
        cause: &Cause,
    ) -> Result<KeyEvent, KeysError> {
        let hex = key.to_hex();
        let record = self
            .records
            .iter_mut()
            .find(|r| r.public_key == hex)
            .ok_or_else(|| KeysError::UnknownKey {
                key_id: key.key_id(),
            })?;
        let from = record.state;
        let to = transition
            .apply(from)
            .map_err(|source| KeysError::Illegal {
                key_id: key.key_id(),
                source,
            })?;
        record.state = to;
        record.since_ns = cause.now_ns;
        Ok(event(record, transition, Some(from), cause))
    }

    /// Records a new key of `host_id`'s `source` agent and takes it to ACTIVE: generate,
    /// distribute, activate (three events).
    pub fn enroll(
        &mut self,
        host_id: &str,
        source: Source,
        key: &PublicKeyBytes,
        replaces: Option<&PublicKeyBytes>,
        cause: &Cause,
    ) -> Result<Vec<KeyEvent>, KeysError> {
        if self.find(key).is_some() {
            return Err(KeysError::AlreadyRecorded {
                key_id: key.key_id(),
            });
        }
        let record = KeyRecord {
            host_id: host_id.to_owned(),
            source,
            public_key: key.to_hex(),
            state: KeyState::Generated,
            since_ns: cause.now_ns,
            created_ns: cause.now_ns,
            replaces: replaces.map(PublicKeyBytes::to_hex),
        };
        let mut events = vec![event(&record, Transition::Generate, None, cause)];
        self.records.push(record);
        for step in [Transition::Distribute, Transition::Activate] {
            events.push(self.transition(key, step, cause)?);
        }
        Ok(events)
    }

    /// Brings the records in line with the agents file: a newly enrolled key gets a record
    /// (ACTIVE), a key revoked in the file is revoked here.
    pub fn sync(&mut self, agents: &AgentsFile, cause: &Cause) -> Vec<KeyEvent> {
        let mut events = Vec::new();
        for entry in &agents.agents {
            let Ok(key) = PublicKeyBytes::from_hex(&entry.public_key) else {
                continue;
            };
            let state = self.find(&key).map(|r| r.state);
            let outcome = match state {
                None if !entry.revoked => {
                    self.enroll(&entry.host_id, entry.source, &key, None, cause)
                }
                Some(state)
                    if entry.revoked
                        && !matches!(state, KeyState::Revoked | KeyState::Destroyed) =>
                {
                    self.transition(&key, Transition::Revoke, cause)
                        .map(|e| vec![e])
                }
                _ => Ok(Vec::new()),
            };
            match outcome {
                Ok(new) => events.extend(new),
                Err(error) => tracing::error!(%error, host_id = %entry.host_id, "key sync"),
            }
        }
        events
    }

    /// Revokes the host's keys that may still open sessions (only `source`'s, if given).
    pub fn revoke_host(
        &mut self,
        host_id: &str,
        source: Option<Source>,
        cause: &Cause,
    ) -> Result<Vec<KeyEvent>, KeysError> {
        let keys: Vec<PublicKeyBytes> = self
            .records
            .iter()
            .filter(|r| r.host_id == host_id && source.is_none_or(|s| s == r.source))
            .filter(|r| {
                matches!(
                    r.state,
                    KeyState::Generated
                        | KeyState::Distributed
                        | KeyState::Active
                        | KeyState::Rotating
                )
            })
            .map(KeyRecord::key)
            .collect::<Result<_, _>>()?;
        if keys.is_empty() {
            return Err(KeysError::NothingToRevoke {
                host_id: host_id.to_owned(),
            });
        }
        keys.iter()
            .map(|key| self.transition(key, Transition::Revoke, cause))
            .collect()
    }

    /// The agent answered a rotation with `new`: enroll it and move `old` to ROTATING (or
    /// REVOKED when `emergency`).
    pub fn apply_rotation(
        &mut self,
        old: &PublicKeyBytes,
        new: &PublicKeyBytes,
        emergency: bool,
        cause: &Cause,
    ) -> Result<Vec<KeyEvent>, KeysError> {
        let record = self.find(old).ok_or_else(|| KeysError::UnknownKey {
            key_id: old.key_id(),
        })?;
        let (host_id, source) = (record.host_id.clone(), record.source);
        let step = if emergency {
            Transition::Revoke
        } else {
            Transition::BeginRotation
        };
        // Check the old key's step first, so a refused rotation changes nothing.
        step.apply(record.state)
            .map_err(|source| KeysError::Illegal {
                key_id: old.key_id(),
                source,
            })?;
        let mut events = vec![self.transition(old, step, cause)?];
        events.extend(self.enroll(&host_id, source, new, Some(old), cause)?);
        Ok(events)
    }

    /// `key` opened a session: the key it replaced, if still ROTATING, is retired (an
    /// emergency rotation revoked it already), and the agent's keys replaced before it are
    /// destroyed (see [`Self::destroy_earlier_replaced`]).
    pub fn confirm_rotation(
        &mut self,
        key: &PublicKeyBytes,
        agents: &AgentsFile,
        cause: &Cause,
    ) -> Result<Vec<KeyEvent>, KeysError> {
        let Some(old) = self.find(key).and_then(|r| r.replaces.clone()) else {
            return Ok(Vec::new());
        };
        let old = PublicKeyBytes::from_hex(&old).map_err(|_| KeysError::MalformedRecord {
            host_id: String::new(),
            reason: format!("replaces {old:?} is not 64 hex digits"),
        })?;
        let mut events = match self.find(&old).map(|r| r.state) {
            Some(KeyState::Rotating) => vec![self.transition(&old, Transition::Retire, cause)?],
            Some(KeyState::Revoked) => Vec::new(),
            _ => return Ok(Vec::new()),
        };
        events.extend(self.destroy_earlier_replaced(&old, agents, cause)?);
        Ok(events)
    }

    /// Destroys the retired and revoked keys of `kept`'s agent other than `kept` (the one it
    /// replaced last) and drops their records, so that the records file holds a record or two
    /// per agent however often its keys rotate, emergencies included (it is rewritten whole on
    /// every change); the audit chain keeps their history, and an unrecorded key is refused
    /// like any unknown one. Keys listed in the agents file keep their records: without one,
    /// `sync` would enrol them again.
    fn destroy_earlier_replaced(
        &mut self,
        kept: &PublicKeyBytes,
        agents: &AgentsFile,
        cause: &Cause,
    ) -> Result<Vec<KeyEvent>, KeysError> {
        let Some((host_id, source)) = self.find(kept).map(|r| (r.host_id.clone(), r.source)) else {
            return Ok(Vec::new());
        };
        let listed: HashSet<PublicKeyBytes> = agents
            .agents
            .iter()
            .filter_map(|e| PublicKeyBytes::from_hex(&e.public_key).ok())
            .collect();
        let earlier: Vec<PublicKeyBytes> = self
            .records
            .iter()
            .filter(|r| r.host_id == host_id && r.source == source)
            .filter(|r| matches!(r.state, KeyState::Retired | KeyState::Revoked))
            .map(KeyRecord::key)
            .collect::<Result<_, _>>()?;
        // A list, not a set: the destructions are audited in the records' order.
        let doomed: Vec<PublicKeyBytes> = earlier
            .into_iter()
            .filter(|k| k != kept && !listed.contains(k))
            .collect();
        let events = doomed
            .iter()
            .map(|k| self.transition(k, Transition::Destroy, cause))
            .collect::<Result<Vec<_>, _>>()?;
        self.records
            .retain(|r| r.key().map_or(true, |k| !doomed.contains(&k)));
        Ok(events)
    }

    /// ACTIVE keys created at or before `created_before_ns`: due for scheduled rotation.
    pub fn due_for_rotation(&self, created_before_ns: u64) -> Vec<(String, Source)> {
        self.records
            .iter()
            .filter(|r| r.state == KeyState::Active && r.created_ns <= created_before_ns)
            .map(|r| (r.host_id.clone(), r.source))
            .collect()
    }

    /// The channel allow-list and the ingest bindings: keys in a state that admits sessions
    /// are allowed, every other recorded key is refused by name. The class comes from the
    /// host's enrollment; a key of a host no longer enrolled is refused. Enrolled keys with no
    /// record yet keep the agents file's verdict.
    pub fn access(&self, agents: &AgentsFile) -> (AllowList, HashMap<PublicKeyBytes, Binding>) {
        let classes: HashMap<(&str, Source), &str> = agents
            .agents
            .iter()
            .map(|e| ((e.host_id.as_str(), e.source), e.class.as_str()))
            .collect();
        let mut entries = Vec::new();
        let mut bindings = HashMap::new();
        for entry in &agents.agents {
            let Ok(key) = PublicKeyBytes::from_hex(&entry.public_key) else {
                continue;
            };
            if self.find(&key).is_none() {
                entries.push(agent_entry(
                    &entry.host_id,
                    &entry.class,
                    key,
                    entry.revoked,
                ));
                if !entry.revoked {
                    bindings.insert(key, binding(&entry.host_id, entry.source, &entry.class));
                }
            }
        }
        for record in &self.records {
            let (Ok(key), Some(class)) = (
                record.key(),
                classes.get(&(record.host_id.as_str(), record.source)),
            ) else {
                continue;
            };
            let admitted = record.state.admits_sessions();
            entries.push(agent_entry(&record.host_id, class, key, !admitted));
            if admitted {
                bindings.insert(key, binding(&record.host_id, record.source, class));
            }
        }
        (AllowList::new(entries), bindings)
    }
}

fn event(
    record: &KeyRecord,
    transition: Transition,
    from: Option<KeyState>,
    cause: &Cause,
) -> KeyEvent {
    KeyEvent {
        host_id: record.host_id.clone(),
        source: record.source,
        key_id: PublicKeyBytes::from_hex(&record.public_key)
            .map(|k| k.key_id())
            .unwrap_or_default(),
        public_key: record.public_key.clone(),
        transition,
        from,
        to: record.state,
        actor: cause.actor.clone(),
        reason: cause.reason.clone(),
        at_ns: cause.now_ns,
    }
}

fn agent_entry(
    host_id: &str,
    class: &str,
    public_key: PublicKeyBytes,
    revoked: bool,
) -> AgentEntry {
    AgentEntry {
        host_id: host_id.to_owned(),
        class: class.to_owned(),
        public_key,
        revoked,
    }
}

fn binding(host_id: &str, source: Source, class: &str) -> Binding {
    Binding {
        host_id: host_id.to_owned(),
        source,
        class: class.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::agents::Enrollment;

    fn key(byte: u8) -> PublicKeyBytes {
        PublicKeyBytes([byte; 32])
    }

    fn cause(now_ns: u64) -> Cause {
        Cause::new("test", "unit test", now_ns)
    }

    fn agents(revoked: bool) -> AgentsFile {
        let mut file = AgentsFile::default();
        file.add(Enrollment {
            host_id: "web-01".into(),
            source: Source::Alpha,
            class: "standard".into(),
            public_key: key(1).to_hex(),
            revoked,
        })
        .unwrap();
        file
    }

    fn states(records: &KeyRecords) -> Vec<(u8, KeyState)> {
        records
            .records
            .iter()
            .map(|r| (r.key().unwrap().0[0], r.state))
            .collect()
    }

    #[test]
    fn sync_adopts_enrolled_keys_and_follows_revocations_in_the_agents_file() {
        let mut records = KeyRecords::default();
        let events = records.sync(&agents(false), &cause(10));
        let steps: Vec<Transition> = events.iter().map(|e| e.transition).collect();
        assert_eq!(
            steps,
            [
                Transition::Generate,
                Transition::Distribute,
                Transition::Activate
            ]
        );
        assert!(records.sync(&agents(false), &cause(11)).is_empty());
        let events = records.sync(&agents(true), &cause(12));
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].from, events[0].to),
            (Some(KeyState::Active), KeyState::Revoked)
        );
        assert_eq!(records.records[0].since_ns, 12);
        assert_eq!(records.records[0].created_ns, 10);
    }

    #[test]
    fn rotation_moves_the_old_key_through_rotating_to_retired() {
        let mut records = KeyRecords::default();
        records.sync(&agents(false), &cause(1));
        let events = records
            .apply_rotation(&key(1), &key(2), false, &cause(2))
            .unwrap();
        assert_eq!(events.len(), 4);
        assert_eq!(
            states(&records),
            [(1, KeyState::Rotating), (2, KeyState::Active)]
        );
        let (allow, bindings) = records.access(&agents(false));
        assert!(
            allow.authorize(&key(1)).is_ok(),
            "rotating keys still connect"
        );
        assert_eq!(bindings[&key(2)].host_id, "web-01");
        let retired = records
            .confirm_rotation(&key(2), &agents(false), &cause(3))
            .unwrap();
        let steps: Vec<Transition> = retired.iter().map(|e| e.transition).collect();
        assert_eq!(steps, [Transition::Retire]);
        assert!(
            records
                .confirm_rotation(&key(2), &agents(false), &cause(4))
                .unwrap()
                .is_empty()
        );
        let (allow, bindings) = records.access(&agents(false));
        assert!(allow.authorize(&key(1)).is_err());
        assert!(!bindings.contains_key(&key(1)));
        assert!(allow.authorize(&key(2)).is_ok());
        assert_eq!(records.due_for_rotation(1), Vec::new());
        assert_eq!(
            records.due_for_rotation(2),
            [("web-01".to_owned(), Source::Alpha)]
        );
        records.validate().unwrap();
    }

    #[test]
    fn emergency_rotation_revokes_the_old_key_and_illegal_steps_change_nothing() {
        let mut records = KeyRecords::default();
        records.sync(&agents(false), &cause(1));
        records
            .apply_rotation(&key(1), &key(2), true, &cause(2))
            .unwrap();
        assert_eq!(
            states(&records),
            [(1, KeyState::Revoked), (2, KeyState::Active)]
        );
        assert!(records.access(&agents(false)).0.authorize(&key(1)).is_err());
        let before = records.clone();
        let error = records
            .apply_rotation(&key(1), &key(3), false, &cause(3))
            .unwrap_err();
        assert!(matches!(error, KeysError::Illegal { .. }), "{error}");
        assert!(matches!(
            records.transition(&key(1), Transition::Activate, &cause(3)),
            Err(KeysError::Illegal { .. })
        ));
        assert!(matches!(
            records.enroll("web-01", Source::Alpha, &key(2), None, &cause(3)),
            Err(KeysError::AlreadyRecorded { .. })
        ));
        assert_eq!(records, before);
        let revoked = records.revoke_host("web-01", None, &cause(4)).unwrap();
        assert_eq!(revoked.len(), 1);
        assert!(matches!(
            records.revoke_host("web-01", None, &cause(5)),
            Err(KeysError::NothingToRevoke { .. })
        ));
    }

    /// Key `old` rotates to `new` at `now`, and `new` opens its session just after: the
    /// events of that session's start.
    fn rotate_and_reconnect(
        records: &mut KeyRecords,
        (old, new): (u8, u8),
        emergency: bool,
        now: u64,
    ) -> Vec<KeyEvent> {
        records
            .apply_rotation(&key(old), &key(new), emergency, &cause(now))
            .unwrap();
        records
            .confirm_rotation(&key(new), &agents(false), &cause(now + 1))
            .unwrap()
    }

    #[test]
    fn each_completed_rotation_destroys_the_keys_retired_before_it_except_enrolled_ones() {
        let mut records = KeyRecords::default();
        records.sync(&agents(false), &cause(1));
        let mut audited = Vec::new();
        for (step, (old, new)) in [(1, 2), (2, 3), (3, 4), (4, 5)].into_iter().enumerate() {
            let now = 10 * (step as u64 + 1);
            let events = rotate_and_reconnect(&mut records, (old, new), false, now);
            audited.push(
                events
                    .iter()
                    .map(|e| (e.public_key.clone(), e.transition))
                    .collect::<Vec<_>>(),
            );
        }
        // Key 1 is in the agents file: retired, never destroyed, its record kept.
        assert_eq!(audited[0], [(key(1).to_hex(), Transition::Retire)]);
        assert_eq!(audited[1], [(key(2).to_hex(), Transition::Retire)]);
        assert_eq!(
            audited[2],
            [
                (key(3).to_hex(), Transition::Retire),
                (key(2).to_hex(), Transition::Destroy)
            ]
        );
        assert_eq!(
            audited[3],
            [
                (key(4).to_hex(), Transition::Retire),
                (key(3).to_hex(), Transition::Destroy)
            ]
        );
        assert_eq!(
            states(&records),
            [
                (1, KeyState::Retired),
                (4, KeyState::Retired),
                (5, KeyState::Active)
            ]
        );
        let (allow, _) = records.access(&agents(false));
        for dropped in [key(2), key(3)] {
            assert!(
                allow.authorize(&dropped).is_err(),
                "a destroyed key stays refused"
            );
        }
        records.validate().unwrap();
    }

    #[test]
    fn emergency_rotations_destroy_the_keys_revoked_before_the_last() {
        let mut records = KeyRecords::default();
        records.sync(&agents(false), &cause(1));
        let mut destroyed = Vec::new();
        for (step, (old, new)) in [(1, 2), (2, 3), (3, 4)].into_iter().enumerate() {
            let now = 10 * (step as u64 + 1);
            let events = rotate_and_reconnect(&mut records, (old, new), true, now);
            assert!(events.iter().all(|e| e.transition == Transition::Destroy));
            destroyed.extend(events.iter().map(|e| e.public_key.clone()));
            let again = records
                .confirm_rotation(&key(new), &agents(false), &cause(now + 2))
                .unwrap();
            assert!(again.is_empty(), "a reconnection destroys nothing more");
        }
        // Key 1 is in the agents file; key 2 was revoked before key 3, the last replaced.
        assert_eq!(destroyed, [key(2).to_hex()]);
        assert_eq!(
            states(&records),
            [
                (1, KeyState::Revoked),
                (3, KeyState::Revoked),
                (4, KeyState::Active)
            ]
        );
        assert!(records.access(&agents(false)).0.authorize(&key(2)).is_err());
        records.validate().unwrap();
    }
}
