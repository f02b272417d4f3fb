//! Replacing a file atomically (a temporary file beside it, renamed over it) so that a crash
//! leaves the old content or the new, never an empty or partial file, and without waiting for
//! the disk where the filesystem already guarantees that.
//!
//! The portable way fsyncs the temporary file before the rename. ext4 in its default modes
//! (`data=ordered` with `auto_da_alloc`) gives the same guarantee by itself: a rename over an
//! existing file makes the journal commit that records the rename wait for the new file's
//! data (Documentation/filesystems/ext4.rst, `auto_da_alloc`). There the rename comes first
//! and both fsyncs (file, then folder) follow on a background thread; elsewhere the file is
//! fsynced before the rename and only the folder's fsync is left to the background. Either
//! way a crash in the moments after the rename may leave the old, intact file.

use std::{
    fs::File,
    io::Write,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// Writes `bytes` to a temporary file beside `path` with `path`'s owner and mode and renames
/// it over `path` (see the module doc for when it is synced).
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let tmp = dir.join(".qsc-replace.tmp");
    let data_ordered = rename_orders_data(&dir);
    let write = || -> std::io::Result<File> {
        let _ = std::fs::remove_file(&tmp);
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))?;
        file.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        if !data_ordered {
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(file)
    };
    let file = write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    sync_later(data_ordered.then_some(file), dir);
    Ok(())
}

/// Makes the replacement durable without delaying the caller: `file` (when not yet synced),
/// then the folder holding the rename. A failure is logged.
fn sync_later(file: Option<File>, dir: PathBuf) {
    std::thread::spawn(move || {
        let synced = file
            .map_or(Ok(()), |f| f.sync_all())
            .and_then(|()| File::open(&dir)?.sync_all());
        if let Err(err) = synced {
            tracing::error!(dir = %dir.display(), %err, "cannot make a replaced file durable");
        }
    });
}

/// Whether `dir` is on ext4 mounted so that a rename over a file orders the new file's data
/// before the rename (not `noauto_da_alloc`, not `data=writeback`).
fn rename_orders_data(dir: &Path) -> bool {
    let (Ok(mountinfo), Ok(dir)) = (
        std::fs::read_to_string("/proc/self/mountinfo"),
        dir.canonicalize(),
    ) else {
        return false;
    };
    mount_of(&mountinfo, &dir).is_some_and(|mount| mount.orders_data_before_rename())
}

#[derive(Debug, PartialEq)]
struct Mount<'a> {
    fstype: &'a str,
    super_options: &'a str,
}

impl Mount<'_> {
    fn orders_data_before_rename(&self) -> bool {
        self.fstype == "ext4"
            && !self
                .super_options
                .split(',')
                .any(|o| o == "noauto_da_alloc" || o == "data=writeback")
    }
}

/// The mount holding `path` in a `/proc/PID/mountinfo` text: the deepest mount point above it,
/// the last one mounted when several share it.
fn mount_of<'a>(mountinfo: &'a str, path: &Path) -> Option<Mount<'a>> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let point = Path::new(mount.split(' ').nth(4)?);
            let mut fs = fs.split(' ');
            let (fstype, _source, super_options) = (fs.next()?, fs.next()?, fs.next()?);
            path.starts_with(point).then_some((
                point.components().count(),
                Mount {
                    fstype,
                    super_options,
                },
            ))
        })
        .fold(
            None,
            |deepest: Option<(usize, Mount)>, (depth, mount)| match deepest {
                Some((d, _)) if d > depth => deepest,
                _ => Some((depth, mount)),
            },
        )
        .map(|(_, mount)| mount)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
30 22 0:26 / /tmp rw,nosuid shared:5 - tmpfs tmpfs rw,size=1024k
31 22 254:1 / /srv rw,relatime shared:6 - ext4 /dev/vdb rw,noauto_da_alloc
32 22 254:2 / /data rw,relatime shared:7 - xfs /dev/vdc rw,attr2
33 22 254:3 / /wb rw,relatime shared:8 - ext4 /dev/vdd rw,data=writeback
34 22 0:27 / /srv rw,relatime shared:9 - ext4 /dev/vde rw
";

    #[test]
    fn the_deepest_and_latest_mount_holds_a_path() {
        let fstype = |path: &str| mount_of(MOUNTINFO, Path::new(path)).map(|m| m.fstype);
        assert_eq!(fstype("/etc"), Some("ext4"));
        assert_eq!(fstype("/tmp/x"), Some("tmpfs"));
        assert_eq!(
            fstype("/tmpx"),
            Some("ext4"),
            "components, not string prefixes"
        );
        assert_eq!(fstype("/data/etc"), Some("xfs"));
        assert_eq!(
            mount_of(MOUNTINFO, Path::new("/srv/etc")).map(|m| m.super_options),
            Some("rw"),
            "the mount stacked last on /srv"
        );
    }

    #[test]
    fn only_ext4_in_its_default_modes_orders_data_before_a_rename() {
        let ordered = |path: &str| {
            mount_of(MOUNTINFO, Path::new(path)).is_some_and(|m| m.orders_data_before_rename())
        };
        assert!(ordered("/etc"));
        assert!(!ordered("/tmp/shadow"));
        assert!(!ordered("/data/shadow"));
        assert!(!ordered("/wb/shadow"));
    }

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
