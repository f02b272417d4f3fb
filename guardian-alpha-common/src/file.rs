use crate::{Header, PATH_CAPTURE};

/// What happened to a watched path.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOp {
    Open = 1,
    Chmod = 2,
    Chown = 3,
    Unlink = 4,
}

impl FileOp {
    pub fn from_u16(value: u16) -> Option<Self> {
        Some(match value {
            1 => FileOp::Open,
            2 => FileOp::Chmod,
            3 => FileOp::Chown,
            4 => FileOp::Unlink,
            _ => return None,
        })
    }
}

/// open/openat/openat2/creat, chmod/fchmodat, chown/lchown/fchownat, unlink/unlinkat of a
/// path under a watched prefix.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileRecord {
    pub header: Header,
    /// open flags, or the chmod mode.
    pub flags: u32,
    /// Length of `path` without the NUL.
    pub path_len: u32,
    /// chown's uid and gid (-1: unchanged).
    pub uid: i64,
    pub gid: i64,
    pub path: [u8; PATH_CAPTURE],
}

/// rename/renameat/renameat2 where either side is under a watched prefix.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RenameRecord {
    pub header: Header,
    pub path: [u8; PATH_CAPTURE],
    pub new_path: [u8; PATH_CAPTURE],
}

/// Value of an entry of the watched-prefix trie: which operations to report under it.
/// The longest matching prefix decides, so a narrower entry can turn reporting off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchFlags {
    pub bits: u32,
}

impl WatchFlags {
    /// Report read-only opens.
    pub const READS: u32 = 1;
    /// Report opens for writing/creating/truncating, chmod, chown, unlink and rename.
    pub const MODIFICATIONS: u32 = 2;

    pub const fn reports_reads(self) -> bool {
        self.bits & Self::READS != 0
    }

    pub const fn reports_modifications(self) -> bool {
        self.bits & Self::MODIFICATIONS != 0
    }
}

/// Flags of `open(2)` that make an open a modification.
pub const OPEN_MODIFY_FLAGS: u32 = 0o1 | 0o2 | 0o100 | 0o1000; // O_WRONLY|O_RDWR|O_CREAT|O_TRUNC

pub const fn open_modifies(flags: u32) -> bool {
    flags & OPEN_MODIFY_FLAGS != 0
}
