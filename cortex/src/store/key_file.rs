//! 32-byte secret key files (the store master key, the audit signing key).
//!
//! A key file holds exactly 32 bytes, either raw or as 64 hex digits (a trailing newline is
//! allowed). It must be a regular file that neither group nor others can read or write: a file
//! with looser permissions is refused, as OpenSSH does for private keys.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Length of every secret key QSC keeps in a file.
pub const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create key file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is not a regular file")]
    NotRegularFile { path: PathBuf },
    #[error(
        "key file {path} has mode {mode:04o}; group and others must have no access (run `chmod 600 {path}`)"
    )]
    LoosePermissions { path: PathBuf, mode: u32 },
    #[error("key file {path} must hold 32 raw bytes or 64 hex digits, found {found} bytes")]
    BadLength { path: PathBuf, found: usize },
    #[error("key file {path} holds 64 characters that are not all hex digits")]
    BadHex { path: PathBuf },
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

/// Reads a 32-byte key from `path`, refusing files that group or others can access.
pub fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyFileError> {
    let metadata = fs::metadata(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !metadata.is_file() {
        return Err(KeyFileError::NotRegularFile {
            path: path.to_owned(),
        });
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::LoosePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let contents = Zeroizing::new(fs::read(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?);
    decode_key(path, &contents)
}

fn decode_key(path: &Path, contents: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyFileError> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if contents.len() == KEY_LEN {
        key.copy_from_slice(contents);
        return Ok(key);
    }
    let text = contents.strip_suffix(b"\n").unwrap_or(contents);
    if text.len() != 2 * KEY_LEN {
        return Err(KeyFileError::BadLength {
            path: path.to_owned(),
            found: contents.len(),
        });
    }
    hex::decode_to_slice(text, key.as_mut_slice()).map_err(|_| KeyFileError::BadHex {
        path: path.to_owned(),
    })?;
    Ok(key)
}

/// Creates a new key file with 32 random bytes (hex encoded), mode 0600. Never overwrites an
/// existing file.
pub fn create_key_file(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyFileError> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    getrandom::fill(key.as_mut_slice()).map_err(|e| KeyFileError::Random(e.to_string()))?;
    let encoded = Zeroizing::new(format!("{}\n", hex::encode(key.as_slice())));
    let create_error = |source| KeyFileError::Create {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(create_error)?;
    file.write_all(encoded.as_bytes()).map_err(create_error)?;
    file.sync_all().map_err(create_error)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_with_mode(path: &Path, contents: &[u8], mode: u32) {
        fs::write(path, contents).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn created_key_reads_back_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let created = create_key_file(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(*read_key_file(&path).unwrap(), *created);
        assert!(matches!(
            create_key_file(&path),
            Err(KeyFileError::Create { .. })
        ));
    }

    #[test]
    fn raw_and_hex_forms_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.key");
        write_with_mode(&raw, &[7u8; 32], 0o600);
        assert_eq!(*read_key_file(&raw).unwrap(), [7u8; 32]);
        let hex_path = dir.path().join("hex.key");
        write_with_mode(&hex_path, "ab".repeat(32).as_bytes(), 0o400);
        assert_eq!(*read_key_file(&hex_path).unwrap(), [0xab; 32]);
    }

    #[test]
    fn loose_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loose.key");
        write_with_mode(&path, &[1u8; 32], 0o640);
        let err = read_key_file(&path).unwrap_err();
        assert!(
            matches!(err, KeyFileError::LoosePermissions { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn malformed_contents_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.key");
        write_with_mode(&short, b"too short", 0o600);
        assert!(matches!(
            read_key_file(&short),
            Err(KeyFileError::BadLength { found: 9, .. })
        ));
        let not_hex = dir.path().join("nothex.key");
        write_with_mode(&not_hex, "zz".repeat(32).as_bytes(), 0o600);
        assert!(matches!(
            read_key_file(&not_hex),
            Err(KeyFileError::BadHex { .. })
        ));
        assert!(matches!(
            read_key_file(dir.path()),
            Err(KeyFileError::NotRegularFile { .. })
        ));
        assert!(matches!(
            read_key_file(&dir.path().join("absent")),
            Err(KeyFileError::Read { .. })
        ));
    }
}
