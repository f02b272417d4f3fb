//! Replacing a file atomically: the new content is written to a temporary file beside it and
//! renamed over it, so that a crash leaves the old content or the new, never an empty or
//! partial file; [`Replacement::sync`] then makes the new content durable.
//!
//! The portable way fsyncs the temporary file before the rename. ext4 in its default modes
//! (`data=ordered` with `auto_da_alloc`) gives the same guarantee by itself: a rename over an
//! existing file makes the journal commit that records the rename wait for the new file's
//! data (Documentation/filesystems/ext4.rst, `auto_da_alloc`). There the rename comes first and
//! the caller decides when to wait for the disk: one fsync of the file afterwards commits its
//! data and the rename together, and the folder's fsync finds nothing left to commit. Elsewhere
//! the file is fsynced before the rename and only the folder's fsync is left.
//!
//! Freeing a file's blocks can be slow: on a filesystem mounted with `discard`, ext4 frees the
//! blocks of a file whose last name and last open handle are gone with a synchronous discard
//! that waits for the device (tens of milliseconds on a busy disk). A rename over an existing
//! file is such a moment for the file it replaces, so [`replace`] holds the replaced file open
//! until [`Replacement::sync`], which pays for it where the caller already waits for the disk;
//! [`remove_file_in_background`] does the same for a removal.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// A replacement renamed into place and not yet known to be durable.
#[must_use = "a replacement is durable only once synced"]
pub struct Replacement {
    file: File,
    folder: PathBuf,
    data_synced: bool,
    /// The file the rename replaced, open so that its blocks are freed when this is dropped
    /// (after the sync) rather than during the rename.
    _replaced: Option<File>,
}

impl Replacement {
    /// Waits until the replacement survives a crash: the file's data (unless it was synced
    /// before the rename), then the folder holding the rename. The replaced file's blocks are
    /// freed last.
    pub fn sync(self) -> io::Result<()> {
        if !self.data_synced {
            self.file.sync_all()?;
        }
        File::open(&self.folder)?.sync_all()
    }
}

/// Writes `path`'s new content with `write` into `tmp` (a file beside `path`, created with
/// `mode`; a stale one is removed first) and renames it over `path`. On error `tmp` is removed
/// and `path` is untouched.
pub fn replace(
    path: &Path,
    tmp: &Path,
    mode: u32,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<Replacement> {
    let folder = folder_of(path).to_path_buf();
    let replaced = open_to_hold(path);
    // auto_da_alloc covers a rename over an existing file only.
    let data_ordered = path.exists() && rename_orders_data(&folder);
    let staged = || -> io::Result<File> {
        remove_if_exists(tmp)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(tmp)?;
        write(&mut file)?;
        if !data_ordered {
            file.sync_all()?;
        }
        std::fs::rename(tmp, path)?;
        Ok(file)
    };
    let file = staged().inspect_err(|_| {
        let _ = std::fs::remove_file(tmp);
    })?;
    Ok(Replacement {
        file,
        folder,
        data_synced: !data_ordered,
        _replaced: replaced,
    })
}

/// Removes `path` now (false when it did not exist); its blocks are freed on a thread of its
/// own, so the caller does not wait for the device (see the module's notes on `discard`).
pub fn remove_file_in_background(path: &Path) -> io::Result<bool> {
    let held = open_to_hold(path);
    if let Err(error) = std::fs::remove_file(path) {
        return match error.kind() {
            io::ErrorKind::NotFound => Ok(false),
            _ => Err(error),
        };
    }
    if let Some(file) = held {
        // Should the thread not start, the closure (and the file) is dropped here instead.
        let _ = std::thread::Builder::new()
            .name("qsc-free-blocks".into())
            .spawn(move || drop(file));
    }
    Ok(true)
}

/// `path` opened only to keep its blocks allocated while it is open; None when it is missing,
/// unreadable or not a plain name (a symlink is replaced itself, not its target).
fn open_to_hold(path: &Path) -> Option<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()
}

/// The folder holding `path` (`.` for a bare file name).
pub fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Whether `folder`'s filesystem orders a renamed file's data before the rename (ext4, not
/// `noauto_da_alloc`, not `data=writeback`). Remembered per device: a filesystem's options
/// change only by remounting it, which a running service does not expect under its files.
fn rename_orders_data(folder: &Path) -> bool {
    static BY_DEVICE: OnceLock<Mutex<HashMap<u64, bool>>> = OnceLock::new();
    let Ok(device) = std::fs::metadata(folder).map(|m| m.dev()) else {
        return false;
    };
    let known = BY_DEVICE.get_or_init(Mutex::default);
    if let Some(&ordered) = known.lock().unwrap_or_else(|p| p.into_inner()).get(&device) {
        return ordered;
    }
    let ordered = std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|mountinfo| {
        mount_of_device(&mountinfo, device).is_some_and(|m| m.orders_data_before_rename())
    });
    known
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(device, ordered);
    ordered
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

/// The filesystem of device `device` (`st_dev`) in a `/proc/PID/mountinfo` text. Every mount
/// of one device shares its filesystem type and superblock options.
fn mount_of_device(mountinfo: &str, device: u64) -> Option<Mount<'_>> {
    let wanted = format!("{}:{}", libc::major(device), libc::minor(device));
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if mount.split(' ').nth(2)? != wanted {
            return None;
        }
        let mut fs = fs.split(' ');
        let (fstype, _source, super_options) = (fs.next()?, fs.next()?, fs.next()?);
        Some(Mount {
            fstype,
            super_options,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
30 22 0:26 / /tmp rw,nosuid shared:5 - tmpfs tmpfs rw,size=1024k
31 22 254:1 / /srv rw,relatime shared:6 - ext4 /dev/vdb rw,noauto_da_alloc
32 22 254:2 / /data rw,relatime shared:7 - xfs /dev/vdc rw,attr2
33 22 254:3 / /wb rw,relatime shared:8 - ext4 /dev/vdd rw,data=writeback
34 22 254:0 /var/lib /bound rw,relatime shared:9 - ext4 /dev/vda rw,discard
";

    fn device(major: u32, minor: u32) -> u64 {
        libc::makedev(major, minor)
    }

    #[test]
    fn a_device_is_found_by_its_numbers() {
        let fstype = |d| mount_of_device(MOUNTINFO, d).map(|m| m.fstype);
        assert_eq!(fstype(device(254, 0)), Some("ext4"));
        assert_eq!(fstype(device(0, 26)), Some("tmpfs"));
        assert_eq!(fstype(device(254, 2)), Some("xfs"));
        assert_eq!(fstype(device(254, 9)), None);
    }

    #[test]
    fn only_ext4_in_its_default_modes_orders_data_before_a_rename() {
        let ordered =
            |d| mount_of_device(MOUNTINFO, d).is_some_and(|m| m.orders_data_before_rename());
        assert!(ordered(device(254, 0)));
        assert!(!ordered(device(0, 26)), "tmpfs");
        assert!(!ordered(device(254, 1)), "noauto_da_alloc");
        assert!(!ordered(device(254, 2)), "xfs");
        assert!(!ordered(device(254, 3)), "data=writeback");
    }

    #[test]
    fn replaces_a_file_through_its_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records");
        let tmp = dir.path().join("records.tmp");
        std::fs::write(&path, "old").unwrap();
        std::fs::write(&tmp, "stale").unwrap();
        replace(&path, &tmp, 0o600, |f| f.write_all(b"new"))
            .unwrap()
            .sync()
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert!(!tmp.exists());
    }

    /// Whether this process holds open a file with inode `ino` that has no name left.
    fn holds_unlinked(ino: u64) -> bool {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| m.ino() == ino && m.nlink() == 0))
    }

    #[test]
    fn the_replaced_file_is_freed_at_the_sync_not_at_the_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shadow");
        std::fs::write(&path, "old").unwrap();
        let old_ino = std::fs::metadata(&path).unwrap().ino();
        let replacement = replace(&path, &dir.path().join("shadow.tmp"), 0o600, |f| {
            f.write_all(b"new")
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert!(holds_unlinked(old_ino), "the replaced file is still open");
        replacement.sync().unwrap();
        assert!(!holds_unlinked(old_ino), "and closed once synced");
    }

    #[test]
    fn a_file_removed_in_the_background_is_gone_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key.retired");
        std::fs::write(&path, "old key").unwrap();
        assert!(remove_file_in_background(&path).unwrap());
        assert!(!path.exists());
        assert!(!remove_file_in_background(&path).unwrap());
        let err = remove_file_in_background(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::IsADirectory);
    }

    #[test]
    fn creates_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new");
        replace(&path, &dir.path().join("new.tmp"), 0o600, |f| {
            f.write_all(b"x")
        })
        .unwrap()
        .sync()
        .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records");
        let tmp = dir.path().join("records.tmp");
        std::fs::write(&path, "old").unwrap();
        let failed = replace(&path, &tmp, 0o600, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert_eq!(failed.err().unwrap().to_string(), "disk full");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert!(!tmp.exists());
    }
}
