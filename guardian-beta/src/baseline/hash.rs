//! Streaming file hashing: BLAKE3 and, when asked, SHA3-256 from the same read pass.
//!
//! Files are read with `read(2)` into a per-thread buffer, never memory-mapped: a mapped file
//! that an attacker truncates turns into SIGBUS. The file is opened with `O_NOFOLLOW` and
//! `O_NONBLOCK` (a path swapped for a symlink or a FIFO fails instead of redirecting or
//! hanging), reads at most the listed size, and is checked with `fstat` after reading so that a
//! file replaced or modified while it is hashed is reported instead of recorded with a
//! mixed-up digest.

use keccak_asm::Digest;
use std::cell::RefCell;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

const READ_BUFFER_BYTES: usize = 64 * 1024;

thread_local! {
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUFFER_BYTES]);
}

/// Which digests to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Algorithms {
    pub blake3: bool,
    pub sha3_256: bool,
}

/// The digests of one file, lowercase hex.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    pub blake3: Option<String>,
    pub sha3_256: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} was replaced between listing and opening (inode or type differs)")]
    Replaced { path: String },
    #[error("{path} changed while it was hashed ({detail})")]
    ChangedWhileHashing { path: String, detail: String },
}

/// Opens `path` without following symlinks and hashes it, checking that it is still the file
/// described by `listed` (the `lstat` taken when the tree was walked).
pub fn hash_path(path: &Path, listed: &Metadata, algos: Algorithms) -> Result<Digests, HashError> {
    let file = open_no_follow(path).map_err(|source| HashError::Open {
        path: path.display().to_string(),
        source,
    })?;
    hash_open_file(path, &file, listed, algos)
}

/// Opens a file for reading without following a final symlink, without blocking on FIFOs and,
/// when permitted, without updating its access time.
pub fn open_no_follow(path: &Path) -> std::io::Result<File> {
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags | libc::O_NOATIME)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path),
        other => other,
    }
}

/// Hashes an already opened file that is expected to match `listed`.
///
/// At most `listed.len()` bytes are read, so a path swapped for an endless device between
/// listing and opening cannot stall the scan; one `fstat` after reading then proves that the
/// descriptor is the listed inode and that size, mtime and ctime did not move.
pub fn hash_open_file(
    path: &Path,
    file: &File,
    listed: &Metadata,
    algos: Algorithms,
) -> Result<Digests, HashError> {
    let display = || path.display().to_string();
    let (digests, bytes_read) = READ_BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        stream_digests(file, &mut buffer, algos, listed.len())
    });
    let bytes_read = bytes_read.map_err(|source| HashError::Read {
        path: display(),
        source,
    })?;
    let after = file.metadata().map_err(|source| HashError::Read {
        path: display(),
        source,
    })?;
    if !after.is_file() || after.ino() != listed.ino() || after.dev() != listed.dev() {
        return Err(HashError::Replaced { path: display() });
    }
    // Compare against the listing: the recorded entry pairs the listed metadata with this
    // digest, so both must describe the same bytes.
    if let Some(detail) = instability(listed, &after, bytes_read) {
        return Err(HashError::ChangedWhileHashing {
            path: display(),
            detail,
        });
    }
    Ok(digests)
}

/// Hashes everything a reader yields (used for protected copies and manifests).
pub fn hash_reader(reader: &mut impl Read, algos: Algorithms) -> std::io::Result<(Digests, u64)> {
    let mut buffer = vec![0; READ_BUFFER_BYTES];
    let (digests, read) = stream_digests(reader, &mut buffer, algos, u64::MAX);
    read.map(|n| (digests, n))
}

/// Feeds up to `limit` bytes of `reader` to the requested hashers in one pass.
fn stream_digests(
    mut reader: impl Read,
    buffer: &mut [u8],
    algos: Algorithms,
    limit: u64,
) -> (Digests, std::io::Result<u64>) {
    let mut blake3 = algos.blake3.then(blake3::Hasher::new);
    let mut sha3 = algos.sha3_256.then(keccak_asm::Sha3_256::new);
    let mut total = 0u64;
    while total < limit {
        let want = (limit - total).min(buffer.len() as u64) as usize;
        let n = match reader.read(&mut buffer[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return (Digests::default(), Err(e)),
        };
        let chunk = &buffer[..n];
        if let Some(hasher) = blake3.as_mut() {
            hasher.update(chunk);
        }
        if let Some(hasher) = sha3.as_mut() {
            hasher.update(chunk);
        }
        total += n as u64;
    }
    let digests = Digests {
        blake3: blake3.map(|h| h.finalize().to_hex().to_string()),
        sha3_256: sha3.map(|h| to_hex(&h.finalize())),
    };
    (digests, Ok(total))
}

fn instability(before: &Metadata, after: &Metadata, bytes_read: u64) -> Option<String> {
    if bytes_read != before.len() {
        return Some(format!(
            "read {bytes_read} bytes, size was {}",
            before.len()
        ));
    }
    if after.len() != before.len() {
        return Some(format!(
            "size went from {} to {}",
            before.len(),
            after.len()
        ));
    }
    if (after.mtime(), after.mtime_nsec()) != (before.mtime(), before.mtime_nsec())
        || (after.ctime(), after.ctime_nsec()) != (before.ctime(), before.ctime_nsec())
    {
        return Some("modification or change time moved".to_string());
    }
    None
}

/// Lowercase hex of a byte string.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const BOTH: Algorithms = Algorithms {
        blake3: true,
        sha3_256: true,
    };

    #[test]
    fn digests_match_reference_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let listed = std::fs::symlink_metadata(&path).unwrap();
        let digests = hash_path(&path, &listed, BOTH).unwrap();
        assert_eq!(
            digests.blake3.unwrap(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(
            digests.sha3_256.unwrap(),
            "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"
        );
    }

    #[test]
    fn large_file_is_streamed_across_many_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let data: Vec<u8> = (0..3 * READ_BUFFER_BYTES + 17).map(|i| i as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let listed = std::fs::symlink_metadata(&path).unwrap();
        let digests = hash_path(&path, &listed, BOTH).unwrap();
        assert_eq!(
            digests.blake3.unwrap(),
            blake3::hash(&data).to_hex().to_string()
        );
        assert_eq!(
            digests.sha3_256.unwrap(),
            to_hex(&sha3::Sha3_256::digest(&data))
        );
    }

    #[test]
    fn only_requested_algorithms_run() {
        let mut reader: &[u8] = b"abc";
        let algos = Algorithms {
            blake3: false,
            sha3_256: true,
        };
        let (digests, n) = hash_reader(&mut reader, algos).unwrap();
        assert_eq!(n, 3);
        assert!(digests.blake3.is_none());
        assert!(digests.sha3_256.is_some());
    }

    #[test]
    fn truncation_during_hashing_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("victim");
        std::fs::write(&path, vec![7u8; 100_000]).unwrap();
        let listed = std::fs::symlink_metadata(&path).unwrap();
        let file = open_no_follow(&path).unwrap();
        // The hasher has opened the file; another writer truncates it before the read pass.
        let before = file.metadata().unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(10)
            .unwrap();
        let (_, read) =
            READ_BUFFER.with(|b| stream_digests(&file, &mut b.borrow_mut(), BOTH, u64::MAX));
        let after = file.metadata().unwrap();
        assert!(instability(&before, &after, read.unwrap()).is_some());
        // Through the public entry point the same race surfaces as an error.
        let file = open_no_follow(&path).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"grown")
            .unwrap();
        let result = hash_open_file(&path, &file, &listed, BOTH);
        assert!(
            matches!(result, Err(HashError::ChangedWhileHashing { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn a_device_swapped_in_is_read_only_up_to_the_listed_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small");
        std::fs::write(&path, b"12345").unwrap();
        let listed = std::fs::symlink_metadata(&path).unwrap();
        let endless = File::open("/dev/zero").unwrap();
        assert!(matches!(
            hash_open_file(&path, &endless, &listed, BOTH),
            Err(HashError::Replaced { .. })
        ));
    }

    #[test]
    fn symlink_and_replaced_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let listed = std::fs::symlink_metadata(&target).unwrap();
        assert!(matches!(
            hash_path(&link, &listed, BOTH),
            Err(HashError::Open { .. })
        ));
        let other = dir.path().join("other");
        std::fs::write(&other, b"y").unwrap();
        assert!(matches!(
            hash_path(&other, &listed, BOTH),
            Err(HashError::Replaced { .. })
        ));
    }
}
