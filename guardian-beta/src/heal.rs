//! Auto-heal: protected known-good copies of `heal = true` files, and their restoration.
//!
//! Copies live in `heal_dir/objects/<blake3>` (directory mode 0700, files 0400), named by their
//! BLAKE3 digest, and are verified against it before any restore, so a tampered copy is never
//! written back. A restore writes a temporary sibling with the recorded mode, owner, extended
//! attributes and modification time, fsyncs it and renames it over the path: readers see either
//! the tampered file or the exact original, never a half-written one.

use crate::baseline::hash::{self, Algorithms};
use crate::baseline::{Entry, FileType};
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum HealError {
    #[error("{path} is a {kind:?} in the baseline; only regular files are healed")]
    NotAFile { path: String, kind: FileType },
    #[error("{path} has no recorded digest ({reason})")]
    NoDigest { path: String, reason: String },
    #[error("protected copy {object} is missing or unreadable: {source}")]
    CopyUnreadable {
        object: PathBuf,
        source: std::io::Error,
    },
    #[error("protected copy {object} does not match its digest; refusing to restore it")]
    CopyCorrupt { object: PathBuf },
    #[error("{path} changed while its protected copy was taken")]
    SourceChanged { path: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// The directory of protected copies.
pub struct HealStore {
    objects: PathBuf,
}

impl HealStore {
    pub fn open(dir: &Path) -> Result<HealStore, HealError> {
        let objects = dir.join("objects");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&objects)
            .map_err(|source| io_error("create", &objects, source))?;
        Ok(HealStore { objects })
    }

    fn object_path(&self, digest: &str) -> PathBuf {
        self.objects.join(digest)
    }

    /// Keeps a protected copy of `path`, whose baseline entry is `entry`. The copy is hashed
    /// while it is written and must match the entry's digest.
    pub fn preserve(&self, path: &Path, entry: &Entry) -> Result<(), HealError> {
        let digest = recorded_digest(path, entry)?;
        let object = self.object_path(&digest);
        if self.verify_object(&object, &digest).is_ok() {
            return Ok(());
        }
        let mut source =
            hash::open_no_follow(path).map_err(|source| io_error("open", path, source))?;
        let tmp = object.with_extension("tmp");
        let mut copy = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|source| io_error("create", &tmp, source))?;
        let mut tee = HashingWriter {
            inner: &mut copy,
            hasher: blake3::Hasher::new(),
        };
        std::io::copy(&mut source, &mut tee).map_err(|source| io_error("copy", path, source))?;
        let copied = tee.hasher.finalize().to_hex().to_string();
        if copied != digest {
            let _ = std::fs::remove_file(&tmp);
            return Err(HealError::SourceChanged {
                path: path.display().to_string(),
            });
        }
        copy.set_permissions(std::fs::Permissions::from_mode(0o400))
            .and_then(|_| copy.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &object))
            .map_err(|source| io_error("store", &object, source))
    }

    /// Restores `path` to the exact bytes and metadata of its baseline entry.
    pub fn restore(&self, path: &Path, entry: &Entry) -> Result<String, HealError> {
        let digest = recorded_digest(path, entry)?;
        let object = self.object_path(&digest);
        let mut copy = self.verify_object(&object, &digest)?;
        let parent = path.parent().unwrap_or(Path::new("/"));
        let tmp = parent.join(format!(
            ".{}.qsc-heal-{}",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        ));
        let result = write_restored(&mut copy, &tmp, entry)
            .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| io_error("rename", path, e)));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|_| digest)
    }

    /// Opens a protected copy, checking it still hashes to its name; returns it rewound.
    fn verify_object(&self, object: &Path, digest: &str) -> Result<File, HealError> {
        let unreadable = |source| HealError::CopyUnreadable {
            object: object.to_path_buf(),
            source,
        };
        let mut file = hash::open_no_follow(object).map_err(unreadable)?;
        let algos = Algorithms {
            blake3: true,
            sha3_256: false,
        };
        let (digests, _) = hash::hash_reader(&mut file, algos).map_err(unreadable)?;
        if digests.blake3.as_deref() != Some(digest) {
            return Err(HealError::CopyCorrupt {
                object: object.to_path_buf(),
            });
        }
        use std::io::Seek;
        file.rewind().map_err(unreadable)?;
        Ok(file)
    }
}

fn recorded_digest(path: &Path, entry: &Entry) -> Result<String, HealError> {
    if entry.file_type != FileType::File {
        return Err(HealError::NotAFile {
            path: path.display().to_string(),
            kind: entry.file_type,
        });
    }
    entry.blake3.clone().ok_or_else(|| HealError::NoDigest {
        path: path.display().to_string(),
        reason: entry
            .not_hashed
            .clone()
            .unwrap_or_else(|| "never hashed".into()),
    })
}

/// Writes the copy to `tmp` with the entry's owner, mode, xattrs and mtime.
fn write_restored(copy: &mut File, tmp: &Path, entry: &Entry) -> Result<(), HealError> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)
        .map_err(|e| io_error("create", tmp, e))?;
    std::io::copy(copy, &mut out).map_err(|e| io_error("write", tmp, e))?;
    let fd = out.as_raw_fd();
    // SAFETY: fd is an open descriptor owned by `out` for the duration of these calls.
    let owner = unsafe { libc::fchown(fd, entry.uid, entry.gid) };
    if owner != 0 {
        return Err(io_error("chown", tmp, std::io::Error::last_os_error()));
    }
    // After fchown, because changing the owner clears setuid and setgid bits.
    out.set_permissions(std::fs::Permissions::from_mode(entry.mode))
        .map_err(|e| io_error("chmod", tmp, e))?;
    restore_xattrs(tmp, entry)?;
    let mtime = libc::timespec {
        tv_sec: entry.mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: entry.mtime_ns.rem_euclid(1_000_000_000),
    };
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        mtime,
    ];
    // SAFETY: fd is open and `times` points to two valid timespecs.
    if unsafe { libc::futimens(fd, times.as_ptr()) } != 0 {
        return Err(io_error(
            "set mtime of",
            tmp,
            std::io::Error::last_os_error(),
        ));
    }
    out.sync_all().map_err(|e| io_error("fsync", tmp, e))
}

fn restore_xattrs(tmp: &Path, entry: &Entry) -> Result<(), HealError> {
    for (name, value) in &entry.xattrs {
        let bytes = from_hex(value).ok_or_else(|| {
            io_error(
                "decode xattr of",
                tmp,
                std::io::Error::other(format!("{name} is not hex")),
            )
        })?;
        let name = unescape_key(name);
        xattr::set(tmp, std::ffi::OsStr::from_bytes(&name), &bytes)
            .map_err(|e| io_error("set xattr on", tmp, e))?;
    }
    Ok(())
}

/// Reverses [`crate::baseline::scan::path_key`] escaping for xattr names.
fn unescape_key(key: &str) -> Vec<u8> {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'\\' && i + 4 <= bytes.len() && bytes[i + 1] == b'x')
            .then(|| from_hex(&key[i + 2..i + 4]))
            .flatten();
        match escaped {
            Some(b) => {
                out.extend_from_slice(&b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> HealError {
    HealError::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

struct HashingWriter<'a> {
    inner: &'a mut File,
    hasher: blake3::Hasher,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::scan::metadata_entry;
    use std::os::unix::fs::MetadataExt;

    fn baseline_entry(path: &Path) -> Entry {
        let metadata = std::fs::symlink_metadata(path).unwrap();
        let mut entry = metadata_entry(path, &metadata);
        entry.blake3 = Some(
            blake3::hash(&std::fs::read(path).unwrap())
                .to_hex()
                .to_string(),
        );
        entry
    }

    #[test]
    fn restores_exact_bytes_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let store = HealStore::open(&dir.path().join("heal")).unwrap();
        let path = dir.path().join("sshd_config");
        std::fs::write(&path, b"PermitRootLogin no\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let has_xattr = xattr::set(&path, "user.qsc", b"v1").is_ok();
        let entry = baseline_entry(&path);
        store.preserve(&path, &entry).unwrap();

        std::fs::write(&path, b"PermitRootLogin yes\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        if has_xattr {
            xattr::remove(&path, "user.qsc").unwrap();
        }
        store.restore(&path, &entry).unwrap();

        assert_eq!(std::fs::read(&path).unwrap(), b"PermitRootLogin no\n");
        let restored = metadata_entry(&path, &std::fs::symlink_metadata(&path).unwrap());
        assert_eq!(restored.mode, 0o640);
        assert_eq!((restored.uid, restored.gid), (entry.uid, entry.gid));
        assert_eq!(restored.mtime_ns, entry.mtime_ns);
        assert_eq!(restored.xattrs, entry.xattrs);
    }

    #[test]
    fn restores_a_deleted_file_and_replaces_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let store = HealStore::open(&dir.path().join("heal")).unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, b"127.0.0.1 localhost\n").unwrap();
        let entry = baseline_entry(&path);
        store.preserve(&path, &entry).unwrap();
        std::fs::remove_file(&path).unwrap();
        store.restore(&path, &entry).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"127.0.0.1 localhost\n");

        let evil = dir.path().join("evil");
        std::fs::write(&evil, b"attacker").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&evil, &path).unwrap();
        store.restore(&path, &entry).unwrap();
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(
            std::fs::read(&evil).unwrap(),
            b"attacker",
            "link target untouched"
        );
    }

    #[test]
    fn corrupt_copy_is_never_restored() {
        let dir = tempfile::tempdir().unwrap();
        let store = HealStore::open(&dir.path().join("heal")).unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"good").unwrap();
        let entry = baseline_entry(&path);
        store.preserve(&path, &entry).unwrap();
        let object = store.object_path(entry.blake3.as_deref().unwrap());
        std::fs::set_permissions(&object, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&object, b"evil").unwrap();
        std::fs::write(&path, b"bad!").unwrap();
        assert!(matches!(
            store.restore(&path, &entry),
            Err(HealError::CopyCorrupt { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"bad!");
        let ino = std::fs::metadata(&path).unwrap().ino();
        assert_eq!(ino, entry.inode, "the file was left in place");
    }

    #[test]
    fn unescape_reverses_key_escaping() {
        assert_eq!(unescape_key("user.a\\x0ab"), b"user.a\nb");
        assert_eq!(unescape_key("security.selinux"), b"security.selinux");
    }
}
