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

/// A captured path as native-endian 8-byte words (aligned, so compares load whole words).
pub type PathWords = [u64; PATH_CAPTURE / 8];

/// Most prefixes the kernel compares inline ([`WatchList`]). Each costs an unwatched path
/// about 1.5–2 ns; the trie lookup it replaces 45 ns with one prefix, about 60 with 17
/// (`bpf_stats`, 6.18), so the list stays cheaper up to about this many.
pub const WATCH_LIST_ENTRIES: usize = 32;
/// Longest prefix, in 8-byte words, the kernel compares inline.
pub const WATCH_LIST_WORDS: usize = 8;

/// The watched prefixes as the kernel compares them inline, longest first, when they all fit
/// (at most [`WATCH_LIST_ENTRIES`], each at most `8 * WATCH_LIST_WORDS` bytes): masked word
/// compares, most ending at the first word, cost an unwatched path less than an LPM-trie
/// lookup. Otherwise `use_trie` is set and the trie decides. Either way the longest matching
/// prefix decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchList {
    pub use_trie: u32,
    pub count: u32,
    pub entries: [WatchEntry; WATCH_LIST_ENTRIES],
}

/// One prefix as native-endian words of its bytes, each with the mask of the bytes it holds
/// (0 past the prefix's end).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchEntry {
    pub words: [u64; WATCH_LIST_WORDS],
    pub masks: [u64; WATCH_LIST_WORDS],
    pub flags: WatchFlags,
    pub len: u32,
}

impl WatchEntry {
    const EMPTY: WatchEntry = WatchEntry {
        words: [0; WATCH_LIST_WORDS],
        masks: [0; WATCH_LIST_WORDS],
        flags: WatchFlags { bits: 0 },
        len: 0,
    };

    fn of(prefix: &[u8], flags: WatchFlags) -> WatchEntry {
        let mut entry = WatchEntry {
            flags,
            len: prefix.len() as u32,
            ..WatchEntry::EMPTY
        };
        for (k, chunk) in prefix.chunks(8).enumerate() {
            let mut bytes = [0u8; 8];
            let mut mask = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            mask[..chunk.len()].fill(0xff);
            entry.words[k] = u64::from_ne_bytes(bytes);
            entry.masks[k] = u64::from_ne_bytes(mask);
        }
        entry
    }

    /// Whether the NUL-terminated path whose bytes `path` holds starts with this prefix. No
    /// length check is needed: a shorter path has its NUL where the prefix has a byte.
    #[inline(always)]
    fn matches(&self, path: &PathWords) -> bool {
        let mut k = 0;
        while k < WATCH_LIST_WORDS {
            let mask = self.masks[k];
            if mask == 0 {
                return true;
            }
            if (path[k] ^ self.words[k]) & mask != 0 {
                return false;
            }
            k += 1;
        }
        true
    }
}

impl WatchList {
    /// Nothing listed: the trie decides.
    pub const TRIE: WatchList = WatchList {
        use_trie: 1,
        count: 0,
        entries: [WatchEntry::EMPTY; WATCH_LIST_ENTRIES],
    };

    /// The list of `prefixes` (a later duplicate replaces the earlier one, as in the trie), or
    /// [`WatchList::TRIE`] when they do not fit.
    pub fn new<'a>(prefixes: impl IntoIterator<Item = (&'a [u8], WatchFlags)>) -> WatchList {
        let mut list = WatchList {
            use_trie: 0,
            ..WatchList::TRIE
        };
        for (prefix, flags) in prefixes {
            if prefix.is_empty() || prefix.len() > 8 * WATCH_LIST_WORDS {
                return WatchList::TRIE;
            }
            let count = list.count as usize;
            let listed = &mut list.entries[..count];
            if let Some(same) = listed
                .iter_mut()
                .find(|e| **e == WatchEntry::of(prefix, e.flags))
            {
                same.flags = flags;
                continue;
            }
            if count == WATCH_LIST_ENTRIES {
                return WatchList::TRIE;
            }
            // Longest first, so the first match is the longest.
            let at = listed
                .iter()
                .position(|e| (e.len as usize) < prefix.len())
                .unwrap_or(count);
            list.entries.copy_within(at..count, at + 1);
            list.entries[at] = WatchEntry::of(prefix, flags);
            list.count += 1;
        }
        list
    }

    /// The flags of the longest listed prefix of the NUL-terminated path `path` holds.
    #[inline(always)]
    pub fn lookup(&self, path: &PathWords) -> Option<WatchFlags> {
        let mut i = 0;
        while i < WATCH_LIST_ENTRIES && (i as u32) < self.count {
            if self.entries[i].matches(path) {
                return Some(self.entries[i].flags);
            }
            i += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{format, string::String, vec::Vec};

    const READS: WatchFlags = WatchFlags {
        bits: WatchFlags::READS,
    };
    const MODS: WatchFlags = WatchFlags {
        bits: WatchFlags::MODIFICATIONS,
    };
    const BOTH: WatchFlags = WatchFlags {
        bits: WatchFlags::READS | WatchFlags::MODIFICATIONS,
    };

    /// `path` as the kernel holds it: NUL-terminated, the rest of the buffer left over from
    /// an earlier, longer path.
    fn words(path: &str) -> PathWords {
        let mut bytes = [b'x'; PATH_CAPTURE];
        bytes[..path.len()].copy_from_slice(path.as_bytes());
        bytes[path.len()] = 0;
        core::array::from_fn(|k| u64::from_ne_bytes(bytes[8 * k..8 * k + 8].try_into().unwrap()))
    }

    fn list(prefixes: &[(&str, WatchFlags)]) -> WatchList {
        WatchList::new(prefixes.iter().map(|(p, f)| (p.as_bytes(), *f)))
    }

    #[test]
    fn the_longest_listed_prefix_decides() {
        let list = list(&[
            ("/etc/", MODS),
            ("/etc/shadow", BOTH),
            ("/root/.ssh/", READS),
            ("/home/alice/.ssh/authorized_keys.d/", BOTH),
        ]);
        assert_eq!(list.use_trie, 0);
        assert_eq!(list.count, 4);
        let cases = [
            ("/etc/passwd", Some(MODS)),
            ("/etc/shadow", Some(BOTH)),
            ("/etc/shadow-", Some(BOTH)),
            ("/etc/shado", Some(MODS)),
            ("/etc", None),
            ("/etcx/", None),
            ("/root/.ssh/id_ed25519", Some(READS)),
            ("/root/.ssh", None),
            ("/home/alice/.ssh/authorized_keys.d/x", Some(BOTH)),
            ("/home/alice/.ssh/authorized_keys.", None),
            ("/tmp/x", None),
            ("/", None),
        ];
        for (path, expected) in cases {
            assert_eq!(list.lookup(&words(path)), expected, "{path}");
        }
    }

    #[test]
    fn a_later_duplicate_replaces_the_flags() {
        let list = list(&[("/etc/", MODS), ("/var/", READS), ("/etc/", BOTH)]);
        assert_eq!(list.count, 2);
        assert_eq!(list.lookup(&words("/etc/hosts")), Some(BOTH));
    }

    #[test]
    fn prefixes_that_do_not_fit_go_to_the_trie() {
        let long = "/".repeat(8 * WATCH_LIST_WORDS + 1);
        assert_eq!(list(&[("/etc/", MODS), (&long, MODS)]), WatchList::TRIE);
        let fits = "/".repeat(8 * WATCH_LIST_WORDS);
        assert_eq!(list(&[(&fits, MODS)]).count, 1);
        let many: Vec<String> = (0..=WATCH_LIST_ENTRIES)
            .map(|i| format!("/p{i}/"))
            .collect();
        let many: Vec<(&str, WatchFlags)> = many.iter().map(|p| (p.as_str(), MODS)).collect();
        assert_eq!(list(&many), WatchList::TRIE);
        assert_eq!(
            list(&many[..WATCH_LIST_ENTRIES]).count,
            WATCH_LIST_ENTRIES as u32
        );
        assert_eq!(list(&[("", MODS)]), WatchList::TRIE);
    }

    #[test]
    fn nothing_listed_matches_nothing() {
        let list = list(&[]);
        assert_eq!((list.use_trie, list.count), (0, 0));
        assert_eq!(list.lookup(&words("/etc/passwd")), None);
    }
}
