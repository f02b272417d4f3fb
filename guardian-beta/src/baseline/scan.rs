//! Walks the configured trees and builds an [`Entry`] for every path, hashing regular files in
//! parallel on the rayon pool.
//!
//! In metadata-first mode (`reuse` set) a file whose metadata equals its previous entry keeps
//! the previous digests and is not read again; everything else is hashed.

use super::hash::{self, Algorithms, HashError};
use super::{Entry, FileType};
use crate::config::TreeConfig;
use indicatif::ProgressBar;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// How a scan treats digests.
pub struct ScanOptions<'a> {
    pub max_file_size: u64,
    /// Previous entries whose digests are reused when the metadata has not changed.
    pub reuse: Option<&'a BTreeMap<String, Entry>>,
    pub progress: &'a ProgressBar,
}

/// A path found while walking; its `lstat` happens later, on the parallel workers.
struct Found {
    path: PathBuf,
    sha3: bool,
}

/// A path with its `lstat`.
struct Listed {
    path: PathBuf,
    key: String,
    metadata: Metadata,
    sha3: bool,
}

/// The result of scanning trees.
#[derive(Debug, Default)]
pub struct ScanResult {
    pub entries: BTreeMap<String, Entry>,
    /// Paths that could not be listed (permission denied, vanished, …).
    pub warnings: Vec<String>,
    pub hashed_files: u64,
    pub hashed_bytes: u64,
}

/// The stable text key of a path: UTF-8 as is, with `\` and control characters and any
/// non-UTF-8 bytes escaped as `\xHH`, so that every distinct path has a distinct key.
pub fn path_key(path: &Path) -> String {
    let mut key = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' || c.is_control() {
                for byte in c.to_string().bytes() {
                    key.push_str(&format!("\\x{byte:02x}"));
                }
            } else {
                key.push(c);
            }
        }
        for byte in chunk.invalid() {
            key.push_str(&format!("\\x{byte:02x}"));
        }
    }
    key
}

/// Every path of the trees, without following symlinks. Directory entry types come from
/// `getdents`, so the walk itself does not `lstat` every file.
fn walk_trees(trees: &[TreeConfig]) -> (Vec<Found>, Vec<String>) {
    let mut found = Vec::new();
    let mut warnings = Vec::new();
    for tree in trees {
        let walker = walkdir::WalkDir::new(&tree.path)
            .follow_links(false)
            .same_file_system(tree.one_file_system)
            .into_iter()
            .filter_entry(|e| !tree.exclude.iter().any(|x| e.path().starts_with(x)));
        for item in walker {
            match item {
                Ok(entry) => found.push(Found {
                    path: entry.into_path(),
                    sha3: tree.compliance,
                }),
                Err(error) => warnings.push(error.to_string()),
            }
        }
    }
    (found, warnings)
}

/// Walks the trees and builds every entry, stat-ing and hashing in parallel.
pub fn scan_trees(trees: &[TreeConfig], options: &ScanOptions<'_>) -> ScanResult {
    let (found, mut warnings) = walk_trees(trees);
    options.progress.set_length(found.len() as u64);
    let hashed_files = AtomicU64::new(0);
    let hashed_bytes = AtomicU64::new(0);
    let results: Vec<Result<(String, Entry), String>> = found
        .into_par_iter()
        .map(|item| {
            let result = std::fs::symlink_metadata(&item.path)
                .map_err(|e| format!("{}: {e}", item.path.display()))
                .map(|metadata| {
                    let listed = Listed {
                        key: path_key(&item.path),
                        path: item.path,
                        metadata,
                        sha3: item.sha3,
                    };
                    let entry = build_entry(&listed, options, &hashed_files, &hashed_bytes);
                    (listed.key, entry)
                });
            options.progress.inc(1);
            result
        })
        .collect();
    options.progress.finish_and_clear();
    let mut entries = BTreeMap::new();
    for result in results {
        match result {
            Ok((key, entry)) => {
                entries.insert(key, entry);
            }
            Err(warning) => warnings.push(warning),
        }
    }
    ScanResult {
        entries,
        warnings,
        hashed_files: hashed_files.into_inner(),
        hashed_bytes: hashed_bytes.into_inner(),
    }
}

/// The current entry of one path, or `None` when it does not exist.
pub fn scan_path(
    path: &Path,
    tree: &TreeConfig,
    options: &ScanOptions<'_>,
) -> std::io::Result<Option<Entry>> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let listed = Listed {
        key: path_key(path),
        path: path.to_path_buf(),
        metadata,
        sha3: tree.compliance,
    };
    let unused = AtomicU64::new(0);
    Ok(Some(build_entry(&listed, options, &unused, &unused)))
}

fn build_entry(
    item: &Listed,
    options: &ScanOptions<'_>,
    hashed_files: &AtomicU64,
    hashed_bytes: &AtomicU64,
) -> Entry {
    let mut entry = metadata_entry(&item.path, &item.metadata);
    if entry.file_type != FileType::File {
        return entry;
    }
    if let Some(previous) = options.reuse.and_then(|r| r.get(&item.key))
        && previous.same_metadata(&entry)
        && (previous.sha3_256.is_some() || !item.sha3)
        && previous.not_hashed.is_none()
    {
        entry.blake3 = previous.blake3.clone();
        entry.sha3_256 = previous.sha3_256.clone();
        return entry;
    }
    if entry.size > options.max_file_size {
        entry.not_hashed = Some(format!(
            "size {} exceeds max_file_size {}",
            entry.size, options.max_file_size
        ));
        return entry;
    }
    let algos = Algorithms {
        blake3: true,
        sha3_256: item.sha3,
    };
    match hash_with_retry(&item.path, &item.metadata, algos) {
        Ok((digests, relisted)) => {
            hashed_files.fetch_add(1, Ordering::Relaxed);
            if let Some(metadata) = relisted {
                entry = metadata_entry(&item.path, &metadata);
            }
            hashed_bytes.fetch_add(entry.size, Ordering::Relaxed);
            entry.blake3 = digests.blake3;
            entry.sha3_256 = digests.sha3_256;
            entry
        }
        Err(error) => {
            entry.not_hashed = Some(error.to_string());
            entry
        }
    }
}

/// Hashes a file; when it changes underneath, lists it again and retries once. The new
/// listing is returned when there was one, so that the entry describes the hashed bytes.
fn hash_with_retry(
    path: &Path,
    listed: &Metadata,
    algos: Algorithms,
) -> Result<(hash::Digests, Option<Metadata>), HashError> {
    match hash::hash_path(path, listed, algos) {
        Ok(digests) => Ok((digests, None)),
        Err(HashError::ChangedWhileHashing { .. } | HashError::Replaced { .. }) => {
            let relisted = std::fs::symlink_metadata(path).map_err(|source| HashError::Open {
                path: path.display().to_string(),
                source,
            })?;
            if !relisted.is_file() {
                return Err(HashError::Replaced {
                    path: path.display().to_string(),
                });
            }
            hash::hash_path(path, &relisted, algos).map(|d| (d, Some(relisted)))
        }
        Err(other) => Err(other),
    }
}

/// The entry of a path from its `lstat`, its link target and its extended attributes.
pub fn metadata_entry(path: &Path, metadata: &Metadata) -> Entry {
    let file_type = file_type_of(metadata);
    let link_target = (file_type == FileType::Symlink)
        .then(|| std::fs::read_link(path).ok())
        .flatten()
        .map(|target| path_key(&target));
    Entry {
        file_type,
        mode: metadata.mode() & 0o7777,
        uid: metadata.uid(),
        gid: metadata.gid(),
        size: metadata.len(),
        mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
        ctime_ns: metadata.ctime() * 1_000_000_000 + metadata.ctime_nsec(),
        inode: metadata.ino(),
        link_target,
        xattrs: read_xattrs(path),
        blake3: None,
        sha3_256: None,
        not_hashed: None,
    }
}

fn file_type_of(metadata: &Metadata) -> FileType {
    let t = metadata.file_type();
    if t.is_symlink() {
        FileType::Symlink
    } else if t.is_dir() {
        FileType::Dir
    } else if t.is_fifo() {
        FileType::Fifo
    } else if t.is_socket() {
        FileType::Socket
    } else if t.is_char_device() {
        FileType::CharDevice
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else {
        FileType::File
    }
}

/// Extended attributes of a path (not following symlinks); an unsupported file system or a
/// vanished file has none.
fn read_xattrs(path: &Path) -> BTreeMap<String, String> {
    let Ok(names) = xattr::list(path) else {
        return BTreeMap::new();
    };
    names
        .filter_map(|name| {
            let value = xattr::get(path, &name).ok().flatten()?;
            Some((path_key(Path::new(&name)), hash::to_hex(&value)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(path: &Path) -> TreeConfig {
        TreeConfig {
            path: path.to_path_buf(),
            exclude: Vec::new(),
            compliance: false,
            heal: false,
            one_file_system: true,
        }
    }

    fn options(reuse: Option<&BTreeMap<String, Entry>>) -> ScanOptions<'_> {
        static HIDDEN: std::sync::OnceLock<ProgressBar> = std::sync::OnceLock::new();
        ScanOptions {
            max_file_size: 1 << 20,
            reuse,
            progress: HIDDEN.get_or_init(ProgressBar::hidden),
        }
    }

    #[test]
    fn path_keys_escape_hostile_names() {
        use std::ffi::OsStr;
        assert_eq!(path_key(Path::new("/etc/passwd")), "/etc/passwd");
        assert_eq!(path_key(Path::new("/a\nb")), "/a\\x0ab");
        assert_eq!(path_key(Path::new("/a\\x0ab")), "/a\\x5cx0ab");
        let raw = Path::new(OsStr::from_bytes(b"/bad\xffname"));
        assert_eq!(path_key(raw), "/bad\\xffname");
    }

    #[test]
    fn scan_records_types_hashes_links_and_excludes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("file"), b"abc").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/skip"), b"x").unwrap();
        std::os::unix::fs::symlink("file", root.join("link")).unwrap();
        let mut config = tree(root);
        config.exclude = vec![root.join("sub")];
        config.compliance = true;
        let result = scan_trees(&[config], &options(None));
        let key = |p: &str| path_key(&root.join(p));
        let file = &result.entries[&key("file")];
        assert_eq!(file.file_type, FileType::File);
        assert_eq!(file.size, 3);
        assert!(file.blake3.is_some() && file.sha3_256.is_some());
        let link = &result.entries[&key("link")];
        assert_eq!(link.file_type, FileType::Symlink);
        assert_eq!(link.link_target.as_deref(), Some("file"));
        assert!(link.blake3.is_none());
        assert!(!result.entries.contains_key(&key("sub")));
        assert_eq!(result.hashed_files, 1);
    }

    #[test]
    fn size_cap_gives_a_not_hashed_entry() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![0u8; 2 << 20]).unwrap();
        let result = scan_trees(&[tree(dir.path())], &options(None));
        let big = &result.entries[&path_key(&dir.path().join("big"))];
        assert!(big.blake3.is_none());
        assert!(big.not_hashed.as_deref().unwrap().contains("max_file_size"));
    }

    #[test]
    fn metadata_first_reuses_digests_only_for_unchanged_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("same"), b"same").unwrap();
        std::fs::write(dir.path().join("edited"), b"before").unwrap();
        let first = scan_trees(&[tree(dir.path())], &options(None));
        std::fs::write(dir.path().join("edited"), b"after!").unwrap();
        let second = scan_trees(&[tree(dir.path())], &options(Some(&first.entries)));
        assert_eq!(second.hashed_files, 1, "only the edited file is read again");
        let key = path_key(&dir.path().join("edited"));
        assert_ne!(first.entries[&key].blake3, second.entries[&key].blake3);
    }

    #[test]
    fn xattrs_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tagged");
        std::fs::write(&path, b"x").unwrap();
        if let Err(e) = xattr::set(&path, "user.qsc", b"v1") {
            eprintln!("skipping: this file system refuses user xattrs ({e})");
            return;
        }
        let result = scan_trees(&[tree(dir.path())], &options(None));
        let entry = &result.entries[&path_key(&path)];
        assert_eq!(
            entry.xattrs.get("user.qsc").map(String::as_str),
            Some("7631")
        );
    }
}
