//! The enrolled agents file (`[agents] file`): which static key speaks for which host, as which
//! kind of agent (alpha or beta), in which host class, and whether it is revoked.
//!
//! ```toml
//! [[agents]]
//! host_id = "web-01"
//! source = "alpha"
//! class = "standard"
//! public_key = "64 hex digits"
//! revoked = false
//! ```
//!
//! The channel's [`AllowList`] is built from it for the handshake; ingest uses the same entries
//! to bind each session's events to its host and source. A host has at most one agent of each
//! source, and both carry the same class.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use qsc_channel::keys::{AgentEntry, AllowList, PublicKeyBytes};
use qsc_event::{MAX_HOST_ID_LEN, Source};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    pub host_id: String,
    pub source: Source,
    pub class: String,
    pub public_key: String,
    #[serde(default)]
    pub revoked: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentsFileError {
    #[error("cannot read agents file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write agents file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agents file is not valid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("agents file cannot be encoded: {0}")]
    Encode(#[from] toml::ser::Error),
    #[error("agent entry {index} ({host_id}): {reason}")]
    InvalidEntry {
        index: usize,
        host_id: String,
        reason: String,
    },
    #[error("no such agent is enrolled for host `{0}`")]
    UnknownHost(String),
}

/// Who a key speaks for, once the handshake authenticated it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub host_id: String,
    pub source: Source,
    pub class: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsFile {
    #[serde(default)]
    pub agents: Vec<Enrollment>,
}

impl AgentsFile {
    /// Parses and validates the file's text.
    pub fn from_toml(text: &str) -> Result<Self, AgentsFileError> {
        let file: AgentsFile = toml::from_str(text)?;
        file.validate()?;
        Ok(file)
    }

    /// Loads the file; a missing file is an empty enrollment (nothing can connect yet).
    pub fn load(path: &Path) -> Result<Self, AgentsFileError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentsFile::default()),
            Err(source) => Err(AgentsFileError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Writes the file atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), AgentsFileError> {
        self.validate()?;
        let text = format!(
            "# QSC cortex: enrolled agents. Edit with `cortex agents add|revoke`.\n\n{}",
            toml::to_string(self)?
        );
        let write_err = |source| AgentsFileError::Write {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension("toml.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(write_err)?;
        file.write_all(text.as_bytes()).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        std::fs::rename(&tmp, path).map_err(write_err)
    }

    pub fn validate(&self) -> Result<(), AgentsFileError> {
        let mut agents: HashMap<(&str, Source), usize> = HashMap::new();
        let mut classes: HashMap<&str, &str> = HashMap::new();
        let mut keys: HashMap<PublicKeyBytes, usize> = HashMap::new();
        for (index, entry) in self.agents.iter().enumerate() {
            let invalid = |reason: String| AgentsFileError::InvalidEntry {
                index,
                host_id: entry.host_id.clone(),
                reason,
            };
            validate_host_id(&entry.host_id).map_err(invalid)?;
            if entry.source == Source::Cortex {
                return Err(invalid("source must be alpha or beta".into()));
            }
            if entry.class.trim().is_empty() {
                return Err(invalid("class is empty".into()));
            }
            let key = PublicKeyBytes::from_hex(&entry.public_key)
                .map_err(|e| invalid(format!("public_key: {e}")))?;
            if keys.insert(key, index).is_some() {
                return Err(invalid("public_key is already enrolled".into()));
            }
            if let Some(other) = agents.insert((&entry.host_id, entry.source), index) {
                return Err(invalid(format!(
                    "the host already has an agent of this source (entry {other}); remove that \
                     entry first to replace its key"
                )));
            }
            if let Some(class) = classes.insert(&entry.host_id, &entry.class)
                && class != entry.class
            {
                return Err(invalid(format!(
                    "class `{}` differs from the host's other agent (`{class}`)",
                    entry.class
                )));
            }
        }
        Ok(())
    }

    /// The channel's allow-list (revoked entries included, so they are refused by name).
    pub fn allow_list(&self) -> AllowList {
        AllowList::new(
            self.agents
                .iter()
                .filter_map(|entry| {
                    let public_key = PublicKeyBytes::from_hex(&entry.public_key).ok()?;
                    Some(AgentEntry {
                        host_id: entry.host_id.clone(),
                        class: entry.class.clone(),
                        public_key,
                        revoked: entry.revoked,
                    })
                })
                .collect(),
        )
    }

    /// Host, source and class of each non-revoked key.
    pub fn bindings(&self) -> HashMap<PublicKeyBytes, Binding> {
        self.agents
            .iter()
            .filter(|entry| !entry.revoked)
            .filter_map(|entry| {
                let key = PublicKeyBytes::from_hex(&entry.public_key).ok()?;
                let binding = Binding {
                    host_id: entry.host_id.clone(),
                    source: entry.source,
                    class: entry.class.clone(),
                };
                Some((key, binding))
            })
            .collect()
    }

    /// Enrolls a new agent.
    pub fn add(&mut self, entry: Enrollment) -> Result<(), AgentsFileError> {
        let mut next = self.clone();
        next.agents.push(entry);
        next.validate()?;
        *self = next;
        Ok(())
    }

    /// Marks the host's agent keys revoked (only the given source's, if named): they are
    /// refused at the next handshake.
    pub fn revoke(&mut self, host_id: &str, source: Option<Source>) -> Result<(), AgentsFileError> {
        let mut found = false;
        for entry in self
            .agents
            .iter_mut()
            .filter(|e| e.host_id == host_id && source.is_none_or(|s| s == e.source))
        {
            entry.revoked = true;
            found = true;
        }
        if found {
            Ok(())
        } else {
            Err(AgentsFileError::UnknownHost(host_id.to_owned()))
        }
    }
}

/// The same rules as the event schema's `host_id`.
fn validate_host_id(host_id: &str) -> Result<(), String> {
    if host_id.is_empty() || host_id.len() > MAX_HOST_ID_LEN {
        return Err(format!("host_id must be 1..={MAX_HOST_ID_LEN} bytes"));
    }
    if !host_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err("host_id may hold only ASCII letters, digits, '-', '_' and '.'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(host: &str, key_byte: u8) -> Enrollment {
        Enrollment {
            host_id: host.into(),
            source: Source::Alpha,
            class: "standard".into(),
            public_key: hex::encode([key_byte; 32]),
            revoked: false,
        }
    }

    #[test]
    fn add_revoke_save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agents.toml");
        let mut file = AgentsFile::load(&path).unwrap();
        assert!(file.agents.is_empty());
        file.add(entry("web-01", 1)).unwrap();
        file.add(entry("db-01", 2)).unwrap();
        file.revoke("db-01", None).unwrap();
        file.save(&path).unwrap();
        let loaded = AgentsFile::load(&path).unwrap();
        assert_eq!(loaded, file);
        let bindings = loaded.bindings();
        assert_eq!(bindings.len(), 1);
        assert_eq!(bindings[&PublicKeyBytes([1; 32])].host_id, "web-01");
        let allow = loaded.allow_list();
        assert!(allow.authorize(&PublicKeyBytes([1; 32])).is_ok());
        assert!(allow.authorize(&PublicKeyBytes([2; 32])).is_err());
        assert!(matches!(
            file.revoke("nope", None),
            Err(AgentsFileError::UnknownHost(_))
        ));
    }

    #[test]
    fn duplicates_and_bad_entries_are_refused_whole() {
        let mut file = AgentsFile::default();
        file.add(entry("web-01", 1)).unwrap();
        assert!(file.add(entry("web-02", 1)).is_err(), "same key twice");
        assert!(
            file.add(entry("web-01", 3)).is_err(),
            "same host and source twice"
        );
        let mut beta = entry("web-01", 7);
        beta.source = Source::Beta;
        beta.class = "critical".into();
        assert!(
            file.add(beta.clone()).is_err(),
            "class differs between agents"
        );
        beta.class = "standard".into();
        file.add(beta).unwrap();
        assert!(file.add(entry("bad host", 4)).is_err());
        let mut cortex = entry("web-03", 5);
        cortex.source = Source::Cortex;
        assert!(file.add(cortex).is_err());
        let mut short = entry("web-04", 6);
        short.public_key = "abcd".into();
        assert!(file.add(short).is_err());
        assert_eq!(file.agents.len(), 2);
        file.revoke("web-01", Some(Source::Beta)).unwrap();
        assert_eq!(file.bindings().len(), 1);
        assert!(AgentsFile::from_toml("[[agents]]\nhost_id = 1").is_err());
    }
}
