//! Replacing a system file (the shadow file) atomically with [`qsc_durable::replace`], keeping
//! its owner and mode. The caller is answered at the rename, where the change takes effect;
//! what makes it durable follows on a background thread, so a crash in the moments after the
//! rename may leave the old, intact file. That thread also frees the replaced file's blocks,
//! which on a filesystem mounted with `discard` waits for the device (up to 190 ms measured
//! during `cargo xtask bench response` when the rename freed them).

use std::{
    io::Write,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use qsc_durable::Replacement;

/// Writes `bytes` to a temporary file beside `path` with `path`'s owner and mode and renames
/// it over `path`; durable shortly after.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    let tmp = qsc_durable::folder_of(path).join(".qsc-replace.tmp");
    let replacement = qsc_durable::replace(path, &tmp, 0o600, |file| {
        file.write_all(bytes)?;
        std::os::unix::fs::fchown(&*file, Some(meta.uid()), Some(meta.gid()))?;
        file.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))
    })?;
    sync_later(replacement, path);
    Ok(())
}

/// Makes the replacement durable without delaying the caller; a failure is logged.
fn sync_later(replacement: Replacement, path: &Path) {
    let path = path.to_path_buf();
    let sync = move || {
        if let Err(err) = replacement.sync() {
            tracing::error!(path = %path.display(), %err, "cannot make a replaced file durable");
        }
    };
    if let Err(err) = std::thread::Builder::new()
        .name("qsc-replace-sync".into())
        .spawn(sync)
    {
        tracing::error!(%err, "cannot start the thread that makes a replaced file durable");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_a_file_keeping_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shadow");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        replace_file(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        assert!(!dir.path().join(".qsc-replace.tmp").exists());
    }
}
