//! Backup verification: a backup folder against a manifest of known-good SHA3-256 digests.
//!
//! The manifest has one `<64 hex digits>  <relative path>` line per file (the format of
//! `sha3sum -a 256` and of `guardian-beta backup manifest`); blank lines and `#` comments are
//! ignored. Files are hashed in parallel, each in one streaming read.

use crate::baseline::hash::{self, Algorithms};
use crate::baseline::scan::path_key;
use qsc_event::{BackupFile, EventKind};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot read manifest {path}: {source}")]
    ManifestRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("manifest {path} line {line}: {reason}")]
    ManifestSyntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("backup folder {path} cannot be listed: {reason}")]
    Walk { path: PathBuf, reason: String },
    #[error("cannot write manifest {path}: {source}")]
    ManifestWrite {
        path: PathBuf,
        source: std::io::Error,
    },
}

const SHA3_ONLY: Algorithms = Algorithms {
    blake3: false,
    sha3_256: true,
};

/// Relative path → expected SHA3-256 hex.
pub type Manifest = BTreeMap<String, String>;

/// Parses a manifest file.
pub fn read_manifest(path: &Path) -> Result<Manifest, BackupError> {
    let text = std::fs::read_to_string(path).map_err(|source| BackupError::ManifestRead {
        path: path.to_path_buf(),
        source,
    })?;
    parse_manifest(path, &text)
}

fn parse_manifest(path: &Path, text: &str) -> Result<Manifest, BackupError> {
    let mut manifest = Manifest::new();
    for (i, line) in text.lines().enumerate() {
        let syntax = |reason: &str| BackupError::ManifestSyntax {
            path: path.to_path_buf(),
            line: i + 1,
            reason: reason.to_string(),
        };
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (digest, name) = line
            .split_once("  ")
            .ok_or_else(|| syntax("expected `<sha3-256 hex>  <relative path>`"))?;
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(syntax("the digest must be 64 hex digits (SHA3-256)"));
        }
        let relative = Path::new(name);
        if name.is_empty()
            || !relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(syntax("the path must be relative, without `..` or `.`"));
        }
        if manifest
            .insert(name.to_string(), digest.to_ascii_lowercase())
            .is_some()
        {
            return Err(syntax(&format!("{name} is listed twice")));
        }
    }
    Ok(manifest)
}

/// What a backup folder holds.
struct Listing {
    /// Regular files as (relative key, absolute path).
    files: Vec<(String, PathBuf)>,
    /// Symlinks and special files: always unexpected, since a backup holds plain files.
    others: Vec<String>,
}

fn list_files(dir: &Path) -> Result<Listing, BackupError> {
    let mut files = Vec::new();
    let mut others = Vec::new();
    for item in walkdir::WalkDir::new(dir).follow_links(false).min_depth(1) {
        let item = item.map_err(|e| BackupError::Walk {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let relative = item.path().strip_prefix(dir).unwrap_or(item.path());
        let key = path_key(relative);
        if item.file_type().is_file() {
            files.push((key, item.into_path()));
        } else if !item.file_type().is_dir() {
            others.push(key);
        }
    }
    Ok(Listing { files, others })
}

/// Verifies `dir` against `manifest`; returns corrupt, missing and unexpected findings.
pub fn verify(set: &str, dir: &Path, manifest: &Manifest) -> Result<Vec<EventKind>, BackupError> {
    let Listing { files, others } = list_files(dir)?;
    let on_disk: BTreeMap<&str, &Path> = files
        .iter()
        .map(|(key, path)| (key.as_str(), path.as_path()))
        .collect();
    let finding = |path: &str, expected: Option<&String>, actual: Option<String>| BackupFile {
        backup_set: set.to_string(),
        path: path.to_string(),
        expected_sha3_256: expected.cloned(),
        actual_sha3_256: actual,
    };
    let checked: Vec<EventKind> = manifest
        .par_iter()
        .filter_map(|(name, expected)| match on_disk.get(name.as_str()) {
            None => Some(EventKind::BackupMissing(finding(
                name,
                Some(expected),
                None,
            ))),
            Some(path) => match sha3_of(path) {
                Ok(actual) if &actual == expected => None,
                Ok(actual) => Some(EventKind::BackupCorrupt(finding(
                    name,
                    Some(expected),
                    Some(actual),
                ))),
                Err(_) => Some(EventKind::BackupCorrupt(finding(
                    name,
                    Some(expected),
                    None,
                ))),
            },
        })
        .collect();
    let unexpected = files
        .iter()
        .map(|(key, _)| key.clone())
        .chain(others)
        .filter(|key| !manifest.contains_key(key))
        .map(|key| EventKind::BackupUnexpected(finding(&key, None, None)));
    Ok(checked.into_iter().chain(unexpected).collect())
}

fn sha3_of(path: &Path) -> Result<String, hash::HashError> {
    let listed = std::fs::symlink_metadata(path).map_err(|source| hash::HashError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let digests = hash::hash_path(path, &listed, SHA3_ONLY)?;
    Ok(digests.sha3_256.unwrap_or_default())
}

/// Writes a manifest of every regular file under `dir` (for a backup known to be good).
pub fn write_manifest(dir: &Path, out: &Path) -> Result<usize, BackupError> {
    let files = list_files(dir)?.files;
    let lines: Vec<String> = files
        .par_iter()
        .map(|(key, path)| sha3_of(path).map(|digest| format!("{digest}  {key}\n")))
        .collect::<Result<_, _>>()
        .map_err(|e| BackupError::Walk {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
    let mut sorted = lines;
    sorted.sort_by(|a, b| a[66..].cmp(&b[66..]));
    crate::store::write_atomically(out, sorted.concat().as_bytes()).map_err(|source| {
        BackupError::ManifestWrite {
            path: out.to_path_buf(),
            source,
        }
    })?;
    Ok(sorted.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_corrupt_missing_and_unexpected_files() {
        let dir = tempfile::tempdir().unwrap();
        let backup = dir.path().join("backup");
        std::fs::create_dir_all(backup.join("db")).unwrap();
        std::fs::write(backup.join("db/dump.sql"), b"create table t;").unwrap();
        std::fs::write(backup.join("etc.tar"), b"tarball").unwrap();
        std::fs::write(backup.join("gone"), b"soon deleted").unwrap();
        let manifest_path = dir.path().join("manifest.sha3");
        assert_eq!(write_manifest(&backup, &manifest_path).unwrap(), 3);
        let manifest = read_manifest(&manifest_path).unwrap();
        assert!(verify("nightly", &backup, &manifest).unwrap().is_empty());

        std::fs::write(backup.join("etc.tar"), b"tarbalL").unwrap();
        std::fs::remove_file(backup.join("gone")).unwrap();
        std::fs::write(backup.join("dropped.sh"), b"#!/bin/sh").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", backup.join("link")).unwrap();
        let findings = verify("nightly", &backup, &manifest).unwrap();
        let names: Vec<(&str, String)> = findings
            .iter()
            .map(|f| match f {
                EventKind::BackupCorrupt(b) => ("corrupt", b.path.clone()),
                EventKind::BackupMissing(b) => ("missing", b.path.clone()),
                EventKind::BackupUnexpected(b) => ("unexpected", b.path.clone()),
                other => panic!("unexpected kind {other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                ("corrupt", "etc.tar".to_string()),
                ("missing", "gone".to_string()),
                ("unexpected", "dropped.sh".to_string()),
                ("unexpected", "link".to_string()),
            ]
        );
        let EventKind::BackupCorrupt(corrupt) = &findings[0] else {
            panic!("first finding is the corrupt file");
        };
        assert_eq!(
            corrupt.expected_sha3_256.as_deref(),
            Some(hash::to_hex(&<sha3::Sha3_256 as sha3::Digest>::digest(b"tarball")).as_str())
        );
    }

    #[test]
    fn malformed_manifests_name_the_line() {
        let good = "0".repeat(64);
        let cases = [
            format!("{good} one-space"),
            format!("{}  short", "0".repeat(63)),
            format!("{good}  ../escape"),
            format!("{good}  /absolute"),
            format!("{good}  a\n{good}  a"),
        ];
        for text in cases {
            let result = parse_manifest(Path::new("m"), &text);
            assert!(
                matches!(result, Err(BackupError::ManifestSyntax { .. })),
                "{text}: {result:?}"
            );
        }
        let ok = parse_manifest(Path::new("m"), &format!("# comment\n\n{good}  a/b\n")).unwrap();
        assert_eq!(ok.len(), 1);
    }
}
