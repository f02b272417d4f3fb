//! Records shared by the guardian-alpha kernel program and its userspace agent.
//!
//! Every record the kernel writes to the ring buffer starts with a [`Header`] whose `kind`
//! names the record type; one small module per record family. All records are `#[repr(C)]`,
//! 8-byte aligned and free of padding holes the kernel could leave uninitialised.
#![no_std]

pub mod enforce;
pub mod exec;
pub mod file;
pub mod layout;
pub mod net;
pub mod privilege;
pub mod process;

pub use enforce::{BlockedV4, BlockedV6, EnforceOp, EnforceRecord, EnforceSwitch};
pub use exec::ExecRecord;
pub use file::{FileOp, FileRecord, RenameRecord, WatchFlags, WatchList};
pub use layout::{ExeFolderLayout, KernelLayout};
pub use net::{ListenerKey, NetCloseRecord, NetOp, NetRecord, RememberedCaller};
pub use privilege::{PrivOp, PrivRecord};
pub use process::{ExitRecord, ForkRecord, SignalRecord};

/// Bytes of a path captured in the kernel (also the LPM-trie key size for watched prefixes).
pub const PATH_CAPTURE: usize = 256;
/// Bytes of NUL-separated argv captured at exec.
pub const ARGS_CAPTURE: usize = 512;
pub const COMM_LEN: usize = 16;

/// Name of the ring buffer map, of the per-CPU loss counter and of the prefix trie.
pub const EVENTS_MAP: &str = "EVENTS";
pub const LOST_MAP: &str = "LOST";
pub const WATCHED_PREFIXES_MAP: &str = "WATCHED_PREFIXES";
pub const LISTENERS_MAP: &str = "LISTENERS";
pub const BLOCKED_V4_MAP: &str = "BLOCKED_V4";
pub const BLOCKED_V6_MAP: &str = "BLOCKED_V6";
pub const BLOCKED_EXEC_MAP: &str = "BLOCKED_EXEC";
pub const REVOKED_UIDS_MAP: &str = "REVOKED_UIDS";
/// One slot per [`EnforceSwitch`]: non-zero once the agent enforces it (until then the hooks
/// skip its lookups).
pub const ENFORCING_MAP: &str = "ENFORCING";
/// Globals the loader sets.
pub const AGENT_TGID_GLOBAL: &str = "AGENT_TGID";
pub const LAYOUT_GLOBAL: &str = "LAYOUT";
pub const WAKEUP_BYTES_GLOBAL: &str = "WAKEUP_BYTES";
pub const WAKE_AT_ONCE_GLOBAL: &str = "WAKE_AT_ONCE";
pub const WAKE_SPACING_NS_GLOBAL: &str = "WAKE_SPACING_NS";
pub const EXE_FOLDER_LAYOUT_GLOBAL: &str = "EXE_FOLDER_LAYOUT";
pub const WATCH_LIST_GLOBAL: &str = "WATCH_LIST";

/// Slots of the per-CPU loss counter: one per [`RecordKind`] value.
pub const LOST_SLOTS: u32 = 16;

/// Maximum number of watched prefixes the kernel keeps.
pub const MAX_WATCHED_PREFIXES: u32 = 4096;

/// What a record is; the first field of every [`Header`].
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Exec = 1,
    Exit = 2,
    Fork = 3,
    File = 4,
    Rename = 5,
    Net = 6,
    Priv = 7,
    Signal = 8,
    Enforce = 9,
    NetClose = 10,
}

impl RecordKind {
    pub const ALL: [RecordKind; 10] = [
        RecordKind::Exec,
        RecordKind::Exit,
        RecordKind::Fork,
        RecordKind::File,
        RecordKind::Rename,
        RecordKind::Net,
        RecordKind::Priv,
        RecordKind::Signal,
        RecordKind::Enforce,
        RecordKind::NetClose,
    ];

    /// A lower-case name for reports.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Exec => "exec",
            RecordKind::Exit => "exit",
            RecordKind::Fork => "fork",
            RecordKind::File => "file",
            RecordKind::Rename => "rename",
            RecordKind::Net => "net",
            RecordKind::Priv => "priv",
            RecordKind::Signal => "signal",
            RecordKind::Enforce => "enforce",
            RecordKind::NetClose => "net_close",
        }
    }

    pub fn from_u16(value: u16) -> Option<Self> {
        Some(match value {
            1 => RecordKind::Exec,
            2 => RecordKind::Exit,
            3 => RecordKind::Fork,
            4 => RecordKind::File,
            5 => RecordKind::Rename,
            6 => RecordKind::Net,
            7 => RecordKind::Priv,
            8 => RecordKind::Signal,
            9 => RecordKind::Enforce,
            10 => RecordKind::NetClose,
            _ => return None,
        })
    }
}

/// Common to every record: who did it, when, where.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub kind: u16,
    /// Record-specific sub-operation (a [`FileOp`], [`NetOp`], [`PrivOp`], …).
    pub op: u16,
    pub reserved: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ktime_ns: u64,
    /// Thread id.
    pub pid: u32,
    /// Thread-group id (the process id users see).
    pub tgid: u32,
    /// The parent's thread-group id (0 when the kernel layout was not known).
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub pad: u32,
    /// v2 cgroup id (the cgroup folder's inode number).
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

impl Header {
    pub const fn zeroed() -> Self {
        Header {
            kind: 0,
            op: 0,
            reserved: 0,
            ktime_ns: 0,
            pid: 0,
            tgid: 0,
            ppid: 0,
            uid: 0,
            gid: 0,
            pad: 0,
            cgroup_id: 0,
            comm: [0; COMM_LEN],
        }
    }

    pub fn record_kind(&self) -> Option<RecordKind> {
        RecordKind::from_u16(self.kind)
    }
}

/// The bytes before the first NUL (all of them when there is none).
pub fn c_bytes(buf: &[u8]) -> &[u8] {
    match buf.iter().position(|&b| b == 0) {
        Some(end) => &buf[..end],
        None => buf,
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data records: repr(C), integer and byte-array fields only.
    unsafe impl aya::Pod for crate::KernelLayout {}
    unsafe impl aya::Pod for crate::ExeFolderLayout {}
    unsafe impl aya::Pod for crate::file::WatchFlags {}
    unsafe impl aya::Pod for crate::file::WatchList {}
    unsafe impl aya::Pod for crate::net::ListenerKey {}
    unsafe impl aya::Pod for crate::net::RememberedCaller {}
    unsafe impl aya::Pod for crate::enforce::BlockedV4 {}
    unsafe impl aya::Pod for crate::enforce::BlockedV6 {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn records_are_eight_byte_aligned_without_tail_padding() {
        assert_eq!(size_of::<Header>(), 64);
        for (size, align) in [
            (size_of::<ExecRecord>(), align_of::<ExecRecord>()),
            (size_of::<FileRecord>(), align_of::<FileRecord>()),
            (size_of::<RenameRecord>(), align_of::<RenameRecord>()),
            (size_of::<NetRecord>(), align_of::<NetRecord>()),
            (size_of::<PrivRecord>(), align_of::<PrivRecord>()),
            (size_of::<ExitRecord>(), align_of::<ExitRecord>()),
            (size_of::<ForkRecord>(), align_of::<ForkRecord>()),
            (size_of::<SignalRecord>(), align_of::<SignalRecord>()),
            (size_of::<EnforceRecord>(), align_of::<EnforceRecord>()),
            (size_of::<NetCloseRecord>(), align_of::<NetCloseRecord>()),
        ] {
            assert_eq!(size % 8, 0);
            assert!(align <= 8);
        }
    }

    #[test]
    fn c_bytes_stops_at_nul() {
        assert_eq!(c_bytes(b"abc\0def"), b"abc");
        assert_eq!(c_bytes(b"abc"), b"abc");
    }
}
