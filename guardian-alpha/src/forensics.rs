//! Memory forensics from procfs: writable+executable regions in `/proc/PID/maps`.

use std::collections::HashSet;
use std::path::Path;

/// One mapping line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    /// The backing path or pseudo-name (`[heap]`, `/memfd:x (deleted)`), `[anon]` when empty.
    pub name: String,
}

impl Region {
    pub fn is_writable_executable(&self) -> bool {
        let p = self.perms.as_bytes();
        p.len() >= 3 && p[1] == b'w' && p[2] == b'x'
    }
}

pub fn parse_maps(text: &str) -> Vec<Region> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<Region> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?.to_owned();
    // offset, device, inode, then the optional name (which may contain spaces).
    let name = fields.skip(3).collect::<Vec<_>>().join(" ");
    Some(Region {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        name: if name.is_empty() {
            "[anon]".into()
        } else {
            name
        },
    })
}

/// W+X regions of one process; empty when it is gone or unreadable.
pub fn rwx_regions(proc_root: &Path, pid: u32) -> Vec<Region> {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("maps"))
        .map(|text| {
            parse_maps(&text)
                .into_iter()
                .filter(Region::is_writable_executable)
                .collect()
        })
        .unwrap_or_default()
}

/// Remembers reported regions so each one is reported once per process lifetime.
#[derive(Default)]
pub struct RwxTracker {
    seen: HashSet<(u32, u64)>,
}

impl RwxTracker {
    /// New W+X regions of `pid` since the last call.
    pub fn new_regions(&mut self, proc_root: &Path, pid: u32) -> Vec<Region> {
        self.unseen(pid, rwx_regions(proc_root, pid))
    }

    /// Those of `regions` (W+X regions of `pid`, read elsewhere) not reported before.
    pub fn unseen(&mut self, pid: u32, regions: Vec<Region>) -> Vec<Region> {
        regions
            .into_iter()
            .filter(|r| self.seen.insert((pid, r.start)))
            .collect()
    }

    pub fn forget(&mut self, pid: u32) {
        self.seen.retain(|(p, _)| *p != pid);
    }
}

/// The W+X regions of every process but `except` (the agent), for the processes that have
/// any: one read of each `/proc/PID/maps`, which takes long on a busy host.
pub fn scan_rwx(proc_root: &Path, except: u32) -> Vec<(u32, Vec<Region>)> {
    all_pids(proc_root)
        .into_iter()
        .filter(|&pid| pid != except)
        .map(|pid| (pid, rwx_regions(proc_root, pid)))
        .filter(|(_, regions)| !regions.is_empty())
        .collect()
}

/// Every numeric entry of /proc.
pub fn all_pids(proc_root: &Path) -> Vec<u32> {
    std::fs::read_dir(proc_root)
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let text = "55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0                          [heap]\n\
                    7f0000000000-7f0000001000 rwxp 00000000 00:00 0 \n\
                    7f0000002000-7f0000003000 r-xp 00000000 08:01 1234 /usr/lib/x y.so\n";
        let regions = parse_maps(text);
        assert_eq!(regions.len(), 3);
        assert_eq!(regions[0].name, "[heap]");
        assert!(regions[1].is_writable_executable());
        assert_eq!(regions[1].name, "[anon]");
        assert_eq!(regions[2].name, "/usr/lib/x y.so");
        assert!(!regions[2].is_writable_executable());
    }

    #[test]
    fn finds_a_real_rwx_mapping_once() {
        // SAFETY: an anonymous private mapping owned by this test, unmapped at the end.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let mut tracker = RwxTracker::default();
        let pid = std::process::id();
        let found = tracker.new_regions(Path::new("/proc"), pid);
        assert!(found.iter().any(|r| r.start == addr as u64));
        assert!(
            tracker
                .new_regions(Path::new("/proc"), pid)
                .iter()
                .all(|r| r.start != addr as u64)
        );
        // SAFETY: unmapping the mapping created above.
        unsafe { libc::munmap(addr, 4096) };
    }
}
