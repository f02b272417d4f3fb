//! Replacing a file atomically: the new content is written to a temporary file beside it and
//! renamed over it, so that a crash leaves the old content or the new, never an empty or
//! partial file; [`Replacement::sync`] then makes the new content durable.
//!
//! The portable way fsyncs the temporary file before the rename. ext4 with a journal in its
//! default modes (`data=ordered` with `auto_da_alloc`) gives the same guarantee by itself: a
//! rename over an existing file makes the journal commit that records the rename wait for the
//! new file's data (Documentation/filesystems/ext4.rst, `auto_da_alloc`). There the rename
//! comes first and the caller decides when to wait for the disk: one fsync of the file
//! afterwards commits its data and the rename together, and the folder's fsync finds nothing
//! left to commit. Elsewhere the file is fsynced before the rename and only the folder's fsync
//! is left. An ext4 made without a journal has nothing to order the two by, and its mount
//! options (in `/proc/self/mountinfo`) read the same as a journaled one's: the kernel's full
//! list in `/proc/fs/ext4/<device>/options` tells them apart, `data=ordered` being there only
//! with a journal.
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

/// `path` with `suffix` added to its file name: the name of a file kept beside it (the
/// temporary file of a [`replace`], a previous version).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
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

/// Whether `folder`'s filesystem orders a renamed file's data before the rename (ext4 with a
/// journal in `data=ordered`, not `noauto_da_alloc`). Remembered per device: a filesystem's
/// options change only by remounting it, which a running service does not expect under its
/// files.
fn rename_orders_data(folder: &Path) -> bool {
    static BY_DEVICE: OnceLock<Mutex<HashMap<u64, bool>>> = OnceLock::new();
    let Ok(device) = std::fs::metadata(folder).map(|m| m.dev()) else {
        return false;
    };
    let known = BY_DEVICE.get_or_init(Mutex::default);
    if let Some(&ordered) = known.lock().unwrap_or_else(|p| p.into_inner()).get(&device) {
        return ordered;
    }
    let ordered = ext4_options(device).is_some_and(|options| ext4_orders_data(&options));
    known
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(device, ordered);
    ordered
}

/// Every option of the ext4 filesystem on block device `device` (`st_dev`), one per line, as
/// the kernel lists them in `/proc/fs/ext4/<device name>/options`; None when it is not ext4
/// (or not on a block device).
fn ext4_options(device: u64) -> Option<String> {
    let sys = format!(
        "/sys/dev/block/{}:{}",
        libc::major(device),
        libc::minor(device)
    );
    let name = std::fs::read_link(sys).ok()?.file_name()?.to_owned();
    std::fs::read_to_string(Path::new("/proc/fs/ext4").join(name).join("options")).ok()
}

/// Whether an ext4 option list orders a renamed file's data before the rename.
fn ext4_orders_data(options: &str) -> bool {
    let has = |option: &str| options.lines().any(|line| line.trim() == option);
    has("data=ordered") && !has("noauto_da_alloc")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    /// `/proc/fs/ext4/<device>/options` of a journaled ext4 (mkfs.ext4 defaults), trimmed.
    const JOURNALED: &str = "rw\nbsddf\nnogrpid\nblock_validity\ndioread_nolock\ndiscard\n\
        delalloc\nbarrier\nauto_da_alloc\nuser_xattr\nacl\ncommit=5\ndata=ordered\n";

    #[test]
    fn only_a_journaled_ext4_in_data_ordered_orders_data_before_a_rename() {
        assert!(ext4_orders_data(JOURNALED));
        let without_journal = JOURNALED.replace("data=ordered\n", "nojournal_checksum\n");
        assert!(!ext4_orders_data(&without_journal), "no journal");
        let writeback = JOURNALED.replace("data=ordered", "data=writeback");
        assert!(!ext4_orders_data(&writeback), "data=writeback");
        let no_auto = JOURNALED.replace("auto_da_alloc", "noauto_da_alloc");
        assert!(!ext4_orders_data(&no_auto), "noauto_da_alloc");
    }

    #[test]
    fn the_options_of_a_folders_filesystem_are_found_when_it_is_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let device = std::fs::metadata(dir.path()).unwrap().dev();
        let is_ext4 = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|line| line.split_once(" - "))
            .any(|(mount, fs)| {
                let wanted = format!("{}:{}", libc::major(device), libc::minor(device));
                mount.split(' ').nth(2) == Some(wanted.as_str()) && fs.starts_with("ext4 ")
            });
        assert_eq!(ext4_options(device).is_some(), is_ext4);
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
