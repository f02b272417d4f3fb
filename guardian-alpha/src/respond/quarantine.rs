//! `quarantine`: move a file into the quarantine folder (0700), strip its permissions (0000)
//! and keep its BLAKE3 hash, original path and owner in a JSON sidecar beside it. Within one
//! filesystem the move is a rename; across filesystems the file is copied (hashed on the way),
//! fsynced, and only then unlinked.

use std::{
    fs::{self, File},
    io::{Read, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{Done, RespondError, guardrails::Guardrails};

/// What the sidecar `<id>.json` records about the quarantined file `<id>.bin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    /// Where the file was.
    pub original_path: String,
    /// Where it is now (`<id>.bin`, mode 0000).
    pub quarantined_path: String,
    /// BLAKE3 of its content, hex.
    pub blake3: String,
    pub size: u64,
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// The file's permission bits before they were stripped.
    pub mode: u32,
    /// Wall clock, nanoseconds since the Unix epoch.
    pub quarantined_at_ns: u128,
}

fn failed(path: &Path, step: &'static str) -> impl FnOnce(std::io::Error) -> RespondError {
    let path = path.display().to_string();
    move |source| RespondError::Quarantine { path, step, source }
}

/// Quarantines the regular file at `path` into `dir`.
pub fn quarantine(rails: &Guardrails, dir: &Path, path: &str) -> Result<Done, RespondError> {
    let source = Path::new(path);
    if !source.is_absolute() {
        return Err(RespondError::NotAbsolute(path.into()));
    }
    rails.check_file(source)?;
    let meta = match fs::symlink_metadata(source) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return already_quarantined(dir, path)?.ok_or_else(|| failed(source, "stat")(err));
        }
        other => other.map_err(failed(source, "stat"))?,
    };
    if !meta.file_type().is_file() {
        return Err(RespondError::NotRegularFile(path.into()));
    }
    ensure_dir(dir)?;
    let id = format!("{}-{}", qsc_event::mono_now_ns(), std::process::id());
    let target = dir.join(format!("{id}.bin"));
    let dir_dev = fs::metadata(dir)
        .map_err(failed(dir, "stat quarantine folder"))?
        .dev();
    let hash = if dir_dev == meta.dev() {
        fs::rename(source, &target).map_err(failed(source, "rename"))?;
        hash_file(&target)?
    } else {
        copy_then_unlink(source, &target)?
    };
    fs::set_permissions(&target, fs::Permissions::from_mode(0o000))
        .map_err(failed(&target, "chmod 0000"))?;
    let sidecar = Sidecar {
        original_path: path.into(),
        quarantined_path: target.display().to_string(),
        blake3: hash,
        size: meta.size(),
        owner_uid: meta.uid(),
        owner_gid: meta.gid(),
        mode: meta.mode() & 0o7777,
        quarantined_at_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    };
    write_sidecar(&dir.join(format!("{id}.json")), &sidecar)?;
    sync_dir(dir)?;
    Ok(report(&sidecar, format!("{path} quarantined")))
}

fn report(sidecar: &Sidecar, detail: String) -> Done {
    Done::new(detail)
        .fact("blake3", &sidecar.blake3)
        .fact("quarantined_path", &sidecar.quarantined_path)
        .fact("size", sidecar.size)
        .fact("owner_uid", sidecar.owner_uid)
}

/// The report of an earlier quarantine of `path`, when its file is gone because of it.
fn already_quarantined(dir: &Path, path: &str) -> Result<Option<Done>, RespondError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(None);
    };
    let found = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| fs::read(e.path()).ok())
        .filter_map(|bytes| serde_json::from_slice::<Sidecar>(&bytes).ok())
        .filter(|s| s.original_path == path)
        .max_by_key(|s| s.quarantined_at_ns);
    Ok(found.map(|s| report(&s, format!("{path} was already quarantined"))))
}

/// Creates the quarantine folder if needed and makes it 0700.
fn ensure_dir(dir: &Path) -> Result<(), RespondError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed(dir, "create quarantine folder"))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(failed(dir, "chmod quarantine folder"))
}

/// Copies `source` to a new `target` (created 0000), hashing it, fsyncs, then unlinks
/// `source`; returns the hash. The copy is removed if anything fails before the unlink.
fn copy_then_unlink(source: &Path, target: &Path) -> Result<String, RespondError> {
    let mut input = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(source)
        .map_err(failed(source, "open"))?;
    let mut output = File::options()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(target)
        .map_err(failed(target, "create"))?;
    let copied =
        copy_hashing(&mut input, &mut output).and_then(|hash| output.sync_all().map(|()| hash));
    let hash = match copied {
        Ok(hash) => hash,
        Err(err) => {
            let _ = fs::remove_file(target);
            return Err(failed(source, "copy")(err));
        }
    };
    fs::remove_file(source).map_err(failed(source, "unlink"))?;
    if let Some(parent) = source.parent() {
        sync_dir(parent)?;
    }
    Ok(hash)
}

fn copy_hashing(input: &mut File, output: &mut File) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().to_hex().to_string());
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n])?;
    }
}

fn hash_file(path: &Path) -> Result<String, RespondError> {
    let mut file = File::open(path).map_err(failed(path, "open for hashing"))?;
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut file, &mut hasher).map_err(failed(path, "hash"))?;
    Ok(hasher.finalize().to_hex().to_string())
}

fn write_sidecar(path: &PathBuf, sidecar: &Sidecar) -> Result<(), RespondError> {
    let bytes = serde_json::to_vec_pretty(sidecar).map_err(std::io::Error::from);
    let write = |bytes: Vec<u8>| -> std::io::Result<()> {
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(&bytes)?;
        file.sync_all()
    };
    bytes.and_then(write).map_err(failed(path, "write sidecar"))
}

fn sync_dir(dir: &Path) -> Result<(), RespondError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(failed(dir, "fsync folder"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RespondConfig;

    fn quarantine(dir: &Path, path: &str) -> Result<Done, RespondError> {
        let rails = Guardrails::new(&RespondConfig::default(), Vec::new());
        super::quarantine(&rails, dir, path)
    }

    fn sidecar_of(done: &Done) -> Sidecar {
        let bin = PathBuf::from(done.facts["quarantined_path"].as_str().unwrap());
        serde_json::from_slice(&fs::read(bin.with_extension("json")).unwrap()).unwrap()
    }

    #[test]
    fn moves_strips_and_records_within_one_filesystem() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("payload.sh");
        fs::write(&file, b"#!/bin/sh\necho evil\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).unwrap();
        let dir = root.path().join("q");
        let path = file.display().to_string();
        let done = quarantine(&dir, &path).unwrap();
        assert!(!file.exists());
        let sidecar = sidecar_of(&done);
        assert_eq!(sidecar.original_path, path);
        assert_eq!(sidecar.mode, 0o755);
        assert_eq!(
            sidecar.blake3,
            blake3::hash(b"#!/bin/sh\necho evil\n").to_hex().to_string()
        );
        let bin = Path::new(&sidecar.quarantined_path);
        assert_eq!(fs::metadata(bin).unwrap().permissions().mode() & 0o7777, 0);
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        // Repeating it reports the earlier quarantine.
        let again = quarantine(&dir, &path).unwrap();
        assert_eq!(again.facts["blake3"], done.facts["blake3"]);
    }

    #[test]
    fn copies_across_filesystems() {
        let root = tempfile::tempdir().unwrap();
        let source = root.path().join("big");
        let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&source, &content).unwrap();
        let target = root.path().join("copy.bin");
        let hash = copy_then_unlink(&source, &target).unwrap();
        assert!(!source.exists());
        assert_eq!(fs::read(&target).unwrap(), content);
        assert_eq!(hash, blake3::hash(&content).to_hex().to_string());
    }

    #[test]
    fn refuses_what_is_not_a_regular_file() {
        let root = tempfile::tempdir().unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        let dir = root.path().join("q");
        assert!(matches!(
            quarantine(&dir, &link.display().to_string()),
            Err(RespondError::NotRegularFile(_))
        ));
        assert!(matches!(
            quarantine(&dir, "relative/path"),
            Err(RespondError::NotAbsolute(_))
        ));
        assert!(Path::new("/etc/passwd").exists());
    }
}
