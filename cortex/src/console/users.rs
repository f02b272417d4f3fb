//! Console accounts: a TOML file of users with a role and an argon2id password hash, written
//! 0600 by `cortex users add|remove` and read at each login (so changes apply without a restart).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};

/// Longest user name accepted.
const MAX_NAME_LEN: usize = 64;
/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;
/// argon2id memory cost in KiB (OWASP's 19 MiB, 2 passes, 1 lane).
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;

/// What a console user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads every page; changes nothing.
    Viewer,
    /// A viewer who also approves and denies held actions, releases isolated hosts and
    /// restores revoked accounts.
    Operator,
    /// An operator; reserved for account administration.
    Admin,
}

impl Role {
    /// The role's name as written in the users file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Whether the role may approve, deny and release.
    pub fn may_act(self) -> bool {
        self >= Role::Operator
    }
}

/// One account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// PHC string of an argon2id hash.
    pub hash: String,
}

/// The users file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    #[serde(default)]
    pub users: Vec<User>,
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read users file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("users file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("cannot write users file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode the users file: {0}")]
    Encode(#[from] toml::ser::Error),
    #[error("user names are 1..={MAX_NAME_LEN} ASCII letters, digits, '-', '_' or '.'")]
    InvalidName,
    #[error("a password needs at least {MIN_PASSWORD_LEN} characters")]
    WeakPassword,
    #[error("user `{0}` already exists (remove it first)")]
    Exists(String),
    #[error("no user `{0}`")]
    Unknown(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

fn argon2id() -> Result<Argon2<'static>, UsersError> {
    let params =
        Params::new(MEMORY_KIB, PASSES, 1, None).map_err(|e| UsersError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// An argon2id PHC hash of `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(UsersError::WeakPassword);
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| UsersError::Hash(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| UsersError::Hash(e.to_string()))?;
    argon2id()?
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl UsersFile {
    /// Reads the file; a missing file is an empty list (nobody can log in yet).
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(UsersError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        toml::from_str(&text).map_err(|source| UsersError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the file (mode 0600) through a temporary file and a rename.
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        let text = toml::to_string(self)?;
        let temp = path.with_extension("tmp");
        let write = |target: &Path| -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(target)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()
        };
        write(&temp)
            .and_then(|()| std::fs::rename(&temp, path))
            .map_err(|source| UsersError::Write {
                path: path.to_owned(),
                source,
            })
    }

    /// Adds a user with a freshly hashed password.
    pub fn add(&mut self, name: &str, role: Role, password: &str) -> Result<(), UsersError> {
        if !valid_name(name) {
            return Err(UsersError::InvalidName);
        }
        if self.users.iter().any(|u| u.name == name) {
            return Err(UsersError::Exists(name.to_owned()));
        }
        let hash = hash_password(password)?;
        self.users.push(User {
            name: name.to_owned(),
            role,
            hash,
        });
        Ok(())
    }

    /// Removes a user (their open sessions end at the next request).
    pub fn remove(&mut self, name: &str) -> Result<(), UsersError> {
        let before = self.users.len();
        self.users.retain(|u| u.name != name);
        if self.users.len() == before {
            return Err(UsersError::Unknown(name.to_owned()));
        }
        Ok(())
    }

    /// The user, if `name` exists and `password` matches its hash.
    pub fn authenticate(&self, name: &str, password: &str) -> Option<&User> {
        let user = self.users.iter().find(|u| u.name == name)?;
        let hash = PasswordHash::new(&user.hash).ok()?;
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .ok()
            .map(|()| user)
    }

    /// The user's current role, if they still exist.
    pub fn role_of(&self, name: &str) -> Option<Role> {
        self.users.iter().find(|u| u.name == name).map(|u| u.role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_stored_with_argon2id_hashes_and_authenticate_by_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let mut users = UsersFile::load(&path).unwrap();
        users
            .add("alice", Role::Operator, "correct horse battery")
            .unwrap();
        assert!(matches!(
            users.add("alice", Role::Viewer, "another long password"),
            Err(UsersError::Exists(_))
        ));
        assert!(matches!(
            users.add("bob", Role::Viewer, "short"),
            Err(UsersError::WeakPassword)
        ));
        assert!(matches!(
            users.add("bad name", Role::Viewer, "long enough password"),
            Err(UsersError::InvalidName)
        ));
        users.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let loaded = UsersFile::load(&path).unwrap();
        assert!(loaded.users[0].hash.starts_with("$argon2id$"));
        assert!(!loaded.users[0].hash.contains("correct horse"));
        assert_eq!(
            loaded
                .authenticate("alice", "correct horse battery")
                .map(|u| u.role),
            Some(Role::Operator)
        );
        assert!(loaded.authenticate("alice", "wrong password!!").is_none());
        assert!(
            loaded
                .authenticate("nobody", "correct horse battery")
                .is_none()
        );
        let mut loaded = loaded;
        loaded.remove("alice").unwrap();
        assert!(matches!(
            loaded.remove("alice"),
            Err(UsersError::Unknown(_))
        ));
    }
}
