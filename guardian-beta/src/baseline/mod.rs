//! The file baseline: what every watched file looked like when it was last approved.
//!
//! [`scan`] walks the configured trees and builds [`Entry`]s (hashing in parallel), and
//! [`compare`] turns the differences between a stored baseline and the current state into
//! integrity events.

pub mod compare;
pub mod hash;
pub mod scan;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the serialized baseline layout.
pub const BASELINE_FORMAT: u32 = 1;

/// The type of a file system object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Everything recorded about one path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub file_type: FileType,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// Extended attribute name → value in hex (includes `security.*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha3_256: Option<String>,
    /// Why a regular file has no digest (size cap, unreadable, unstable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_hashed: Option<String>,
}

/// A complete baseline as kept in the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub format: u32,
    pub host_id: String,
    /// The store path this baseline was written to: a store copied to another path or host
    /// fails the check instead of vouching for a different machine.
    pub store_path: String,
    pub created_ns: u64,
    pub updated_ns: u64,
    /// Increases by one with every `update`.
    pub generation: u64,
    /// Path (escaped, see [`scan::path_key`]) → entry.
    pub entries: BTreeMap<String, Entry>,
}

impl Entry {
    /// True when the cheap metadata proves the content cannot have changed without a trace:
    /// any write moves ctime, which user space cannot set back.
    pub fn same_metadata(&self, other: &Entry) -> bool {
        self.file_type == other.file_type
            && self.mode == other.mode
            && self.uid == other.uid
            && self.gid == other.gid
            && self.size == other.size
            && self.mtime_ns == other.mtime_ns
            && self.ctime_ns == other.ctime_ns
            && self.inode == other.inode
            && self.link_target == other.link_target
            && self.xattrs == other.xattrs
    }
}
