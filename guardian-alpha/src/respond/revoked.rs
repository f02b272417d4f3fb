//! The accounts this agent revoked in the kernel, kept in a file (`[respond]
//! revoked_accounts_file`) so that a restarted agent refuses their uids again: the kernel's map
//! ends with the agent, and the shadow lock that outlives it does not stop SSH-key logins.
//! Revoking adds an account, restoring removes it; each save replaces the file atomically (a
//! crash leaves the old list or the new one).

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

/// Account name → the uid it had when revoked.
pub type Accounts = BTreeMap<String, u32>;

#[derive(Debug, thiserror::Error)]
pub enum RevokedListError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a list of revoked accounts: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("cannot save {path}: {source}")]
    Save {
        path: String,
        source: std::io::Error,
    },
}

/// The list, shared by the executor and the threads that save it.
#[derive(Debug)]
pub struct RevokedAccounts {
    path: PathBuf,
    accounts: Mutex<Accounts>,
    /// Held while a save writes: saves run one at a time, each writing the list as it is when
    /// it starts, so the last one writes the latest list.
    saving: Mutex<()>,
}

impl RevokedAccounts {
    /// An empty list that saves to `path`.
    pub fn empty(path: &Path) -> Self {
        RevokedAccounts {
            path: path.to_path_buf(),
            accounts: Mutex::new(Accounts::new()),
            saving: Mutex::new(()),
        }
    }

    /// The list saved in `path`; empty when there is no such file.
    pub fn load(path: &Path) -> Result<Self, RevokedListError> {
        let list = Self::empty(path);
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(list),
            Err(source) => {
                return Err(RevokedListError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        *list.lock() =
            serde_json::from_slice(&bytes).map_err(|source| RevokedListError::Parse {
                path: path.display().to_string(),
                source,
            })?;
        Ok(list)
    }

    fn lock(&self) -> MutexGuard<'_, Accounts> {
        // Every change is a single insert or remove: a poisoned lock still holds a whole list.
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The accounts listed, with the uid each had when revoked.
    pub fn accounts(&self) -> Accounts {
        self.lock().clone()
    }

    /// The uid `user` had when revoked, if listed.
    pub fn uid_of(&self, user: &str) -> Option<u32> {
        self.lock().get(user).copied()
    }

    pub fn insert(&self, user: &str, uid: u32) {
        self.lock().insert(user.to_owned(), uid);
    }

    /// False when `user` was not listed.
    pub fn remove(&self, user: &str) -> bool {
        self.lock().remove(user).is_some()
    }

    /// Writes the list as it is now, durably (mode 0600; its folder is created if missing).
    pub fn save(&self) -> Result<(), RevokedListError> {
        let _saving = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let save_err = |source| RevokedListError::Save {
            path: self.path.display().to_string(),
            source,
        };
        let json = serde_json::to_vec_pretty(&*self.lock())
            .map_err(|e| save_err(std::io::Error::other(e)))?;
        std::fs::create_dir_all(qsc_durable::folder_of(&self.path)).map_err(save_err)?;
        let tmp = qsc_durable::with_suffix(&self.path, ".tmp");
        qsc_durable::replace(&self.path, &tmp, 0o600, |file| file.write_all(&json))
            .and_then(|replacement| replacement.sync())
            .map_err(save_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_the_list_and_starts_empty_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/revoked-accounts");
        let list = RevokedAccounts::load(&path).unwrap();
        assert!(list.accounts().is_empty());
        list.insert("bob", 1001);
        list.insert("eve", 1002);
        assert!(list.remove("eve"));
        assert!(!list.remove("eve"));
        list.save().unwrap();
        let again = RevokedAccounts::load(&path).unwrap();
        assert_eq!(again.accounts(), Accounts::from([("bob".into(), 1001)]));
        assert_eq!(
            (again.uid_of("bob"), again.uid_of("eve")),
            (Some(1001), None)
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_damaged_list_is_a_named_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked-accounts");
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(
            RevokedAccounts::load(&path),
            Err(RevokedListError::Parse { .. })
        ));
    }
}
