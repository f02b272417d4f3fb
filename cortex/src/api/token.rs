//! The API bearer token: a 0600 file, compared in constant time.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Shortest token accepted.
const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read API token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create API token file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "API token file {path} has mode {mode:o}; it must not be readable by group or others (chmod 600)"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("API token in {path} must be at least {MIN_TOKEN_LEN} printable characters")]
    TooShort { path: PathBuf },
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

/// The token's SHA-256: comparing digests keeps the comparison constant-time in the length too.
pub struct ApiToken {
    digest: [u8; 32],
}

impl ApiToken {
    pub fn from_secret(secret: &str) -> Self {
        ApiToken {
            digest: Sha256::digest(secret.as_bytes()).into(),
        }
    }

    /// Reads the token file, refusing one that group or others can access.
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        Ok(Self::from_secret(&read_secret(path)?))
    }
}

/// The token itself, from a file that group and others cannot access (for clients of the API,
/// such as `cortex actions`).
pub fn read_secret(path: &Path) -> Result<Zeroizing<String>, TokenError> {
    let read_err = |source| TokenError::Read {
        path: path.to_owned(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map_err(read_err)?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(TokenError::Permissions {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(read_err)?);
    let secret = text.trim();
    if secret.len() < MIN_TOKEN_LEN || secret.chars().any(|c| c.is_control()) {
        return Err(TokenError::TooShort {
            path: path.to_owned(),
        });
    }
    Ok(Zeroizing::new(secret.to_owned()))
}

impl ApiToken {
    /// Writes a new random token (64 hex digits) to a new 0600 file; refuses to overwrite.
    pub fn generate_file(path: &Path) -> Result<(), TokenError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).map_err(|e| TokenError::Random(e.to_string()))?;
        let secret = Zeroizing::new(format!("{}\n", hex::encode(&bytes[..])));
        let create_err = |source| TokenError::Create {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(create_err)?;
        file.write_all(secret.as_bytes()).map_err(create_err)?;
        file.sync_all().map_err(create_err)
    }

    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digest.ct_eq(&digest).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_load_and_match_only_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.token");
        ApiToken::generate_file(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let secret = std::fs::read_to_string(&path).unwrap();
        let token = ApiToken::load(&path).unwrap();
        assert!(token.matches(secret.trim()));
        assert!(!token.matches("wrong-token-wrong-token"));
        assert!(!token.matches(""));
        assert!(matches!(
            ApiToken::generate_file(&path),
            Err(TokenError::Create { .. })
        ));
    }

    #[test]
    fn readable_or_short_token_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.token");
        std::fs::write(&path, "0123456789abcdef0123").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            ApiToken::load(&path),
            Err(TokenError::Permissions { .. })
        ));
        std::fs::write(&path, "short").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            ApiToken::load(&path),
            Err(TokenError::TooShort { .. })
        ));
    }
}
