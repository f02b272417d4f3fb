//! The process table: what the agent knows about every live process, seeded from /proc at
//! start and kept current by exec, fork and exit records. Events are enriched from it.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, DefaultHasher, Hash, Hasher},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use qsc_event::{Ancestor, ProcessInfo};

use crate::users::UserNames;

/// How many ancestors an event carries.
const ANCESTRY_DEPTH: usize = 8;

#[derive(Clone, Debug, Default)]
pub struct ProcEntry {
    pub pid: u32,
    pub ppid: u32,
    pub comm: Arc<str>,
    pub exe: Option<Arc<str>>,
    /// Shared with the entries forked from this one until one of them execs.
    pub cmdline: Arc<[String]>,
    pub container_id: Option<Arc<str>>,
    pub guid: Arc<str>,
    /// Field 22 of `/proc/PID/stat`: start time in clock ticks since boot (None when unknown).
    pub start_time_ticks: Option<u64>,
}

pub struct ProcessTable {
    proc_root: PathBuf,
    host_salt: u64,
    clock: TickClock,
    entries: HashMap<u32, Arc<ProcEntry>, BuildHasherDefault<PidHasher>>,
    users: UserNames,
}

/// Hashes the table's pid keys with one multiplication: every event looks up its process and
/// up to [`ANCESTRY_DEPTH`] ancestors, and pids are not attacker-chosen in a way SipHash's
/// flooding resistance would matter for (the kernel allocates them).
#[derive(Default)]
pub struct PidHasher(u64);

impl Hasher for PidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, pid: u32) {
        self.write_u64(u64::from(pid));
    }

    fn write_u64(&mut self, value: u64) {
        // Fibonacci hashing: spreads consecutive pids over the high bits hashbrown uses.
        self.0 = (self.0 ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// What the kernel said about the caller, for filling in what the table does not know yet.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: &'a str,
    pub ktime_ns: u64,
}

impl ProcessTable {
    pub fn new(proc_root: impl Into<PathBuf>, host_id: &str, users: UserNames) -> Self {
        let mut hasher = DefaultHasher::new();
        host_id.hash(&mut hasher);
        read_boot_id().hash(&mut hasher);
        ProcessTable {
            proc_root: proc_root.into(),
            host_salt: hasher.finish(),
            clock: TickClock::new(),
            entries: HashMap::default(),
            users,
        }
    }

    /// Reads every process under /proc.
    pub fn seed(&mut self) -> usize {
        let Ok(dir) = std::fs::read_dir(&self.proc_root) else {
            return 0;
        };
        for entry in dir.flatten() {
            if let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                && let Some(proc_entry) = self.read_proc(pid)
            {
                self.entries.insert(pid, Arc::new(proc_entry));
            }
        }
        self.entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, pid: u32) -> Option<&Arc<ProcEntry>> {
        self.entries.get(&pid)
    }

    fn guid(&self, pid: u32, start: u64) -> Arc<str> {
        let mut hasher = DefaultHasher::new();
        (self.host_salt, pid, start).hash(&mut hasher);
        format!("{:016x}", hasher.finish()).into()
    }

    fn read_proc(&self, pid: u32) -> Option<ProcEntry> {
        let dir = self.proc_root.join(pid.to_string());
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        let (comm, ppid, start) = parse_stat(&stat)?;
        Some(ProcEntry {
            pid,
            ppid,
            comm: comm.into(),
            exe: std::fs::read_link(dir.join("exe"))
                .ok()
                .map(|p| p.display().to_string().into()),
            cmdline: std::fs::read(dir.join("cmdline"))
                .map(|b| split_nul(&b))
                .unwrap_or_default()
                .into(),
            container_id: read_container_id(&dir),
            guid: self.guid(pid, start),
            start_time_ticks: Some(start),
        })
    }

    /// The start time of a child forked at `fork_ktime_ns`: from the event's time when that
    /// is unambiguous, else from `/proc` (None when the child is already gone).
    fn child_start_ticks(&self, child_pid: u32, fork_ktime_ns: u64) -> Option<u64> {
        self.clock.fork_ticks(fork_ktime_ns).or_else(|| {
            let stat =
                std::fs::read_to_string(self.proc_root.join(child_pid.to_string()).join("stat"))
                    .ok()?;
            parse_stat(&stat).map(|(_, _, start)| start)
        })
    }

    /// The entry for `caller`, read from /proc when the table missed its birth.
    fn entry_for(&mut self, caller: &Caller) -> Arc<ProcEntry> {
        if let Some(entry) = self.entries.get(&caller.pid) {
            return entry.clone();
        }
        let entry = Arc::new(self.read_proc(caller.pid).unwrap_or_else(|| ProcEntry {
            pid: caller.pid,
            ppid: caller.ppid,
            comm: caller.comm.into(),
            guid: self.guid(caller.pid, caller.ktime_ns),
            ..ProcEntry::default()
        }));
        self.entries.insert(caller.pid, entry.clone());
        entry
    }

    pub fn on_fork(&mut self, parent: &Caller, child_pid: u32) {
        let parent_entry = self.entry_for(parent);
        let child = ProcEntry {
            pid: child_pid,
            ppid: parent.pid,
            guid: self.guid(child_pid, parent.ktime_ns),
            start_time_ticks: self.child_start_ticks(child_pid, parent.ktime_ns),
            ..(*parent_entry).clone()
        };
        self.entries.insert(child_pid, Arc::new(child));
    }

    pub fn on_exec(&mut self, caller: &Caller, filename: &str, argv: &[String]) {
        let previous = self.entry_for(caller);
        let entry = ProcEntry {
            pid: caller.pid,
            ppid: if caller.ppid != 0 {
                caller.ppid
            } else {
                previous.ppid
            },
            comm: caller.comm.into(),
            exe: Some(filename.into()),
            cmdline: argv.into(),
            container_id: previous.container_id.clone(),
            guid: self.guid(caller.pid, caller.ktime_ns),
            // exec keeps the process, and so its start time.
            start_time_ticks: previous.start_time_ticks,
        };
        self.entries.insert(caller.pid, Arc::new(entry));
    }

    pub fn on_exit(&mut self, pid: u32) {
        self.entries.remove(&pid);
    }

    /// Whether every user may write to the folder holding `filename`, the path `caller` just
    /// executed (its mode has S_IWOTH, as /tmp, /var/tmp and /dev/shm have). The folder is
    /// looked up through the process's own root (absolute paths) or working folder (relative
    /// ones), so a container's paths resolve in the container; through its parent's when the
    /// process is already gone. `None` when neither exists any more.
    pub fn exec_folder_world_writable(&self, caller: &Caller, filename: &str) -> Option<bool> {
        let folder = Path::new(filename).parent()?;
        let (base, folder) = match folder.strip_prefix("/") {
            Ok(below_root) => ("root", below_root),
            Err(_) => ("cwd", folder),
        };
        [caller.pid, caller.ppid]
            .into_iter()
            .filter(|&pid| pid != 0)
            .find_map(|pid| {
                let seen = self.proc_root.join(pid.to_string()).join(base).join(folder);
                let mode = std::fs::metadata(seen).ok()?.permissions().mode();
                Some(mode & 0o002 != 0)
            })
    }

    /// The enriched process block for an event from `caller`.
    pub fn process_info(&mut self, caller: &Caller) -> ProcessInfo {
        let entry = self.entry_for(caller);
        let ppid = if caller.ppid != 0 {
            caller.ppid
        } else {
            entry.ppid
        };
        ProcessInfo {
            pid: caller.pid,
            tid: (caller.tid != caller.pid).then_some(caller.tid),
            ppid,
            uid: caller.uid,
            gid: caller.gid,
            user: self.users.name(caller.uid),
            comm: shared_comm(&entry, caller.comm),
            exe: entry.exe.clone(),
            cmdline: entry.cmdline.clone(),
            container_id: entry.container_id.clone(),
            cgroup_id: caller.cgroup_id,
            guid: entry.guid.clone(),
            start_time_ticks: entry.start_time_ticks,
            ancestry: self.ancestry(ppid),
        }
    }

    fn ancestry(&self, mut pid: u32) -> Vec<Ancestor> {
        let mut chain = Vec::new();
        while pid > 1 && chain.len() < ANCESTRY_DEPTH {
            let Some(entry) = self.entries.get(&pid) else {
                break;
            };
            chain.push(Ancestor {
                pid,
                comm: entry.comm.clone(),
                exe: entry.exe.clone(),
                guid: entry.guid.clone(),
            });
            if entry.ppid == pid {
                break;
            }
            pid = entry.ppid;
        }
        chain
    }
}

/// The kernel stamps a new task's start time (`start_boottime`) before the fork event's
/// hook runs; the hook's time is at most this much later (beyond it, `/proc` decides).
const FORK_SLACK_NS: u64 = 1_000_000;

/// Turns kernel event times (`CLOCK_MONOTONIC` ns) into `/proc` start times (clock ticks of
/// `CLOCK_BOOTTIME`, which also counts suspended time).
#[derive(Clone, Copy, Debug)]
struct TickClock {
    ns_per_tick: u64,
}

impl TickClock {
    fn new() -> Self {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ns_per_tick = u64::try_from(hz)
            .ok()
            .filter(|hz| *hz > 0)
            .map_or(10_000_000, |hz| 1_000_000_000 / hz);
        TickClock { ns_per_tick }
    }

    /// The start tick of a task forked by a hook that ran at `ktime_ns`, when every start time
    /// up to [`FORK_SLACK_NS`] earlier falls in the same tick.
    fn fork_ticks(&self, ktime_ns: u64) -> Option<u64> {
        let boot_ns = ktime_ns.checked_add(boot_offset_ns()?)?;
        ticks_if_unambiguous(boot_ns, FORK_SLACK_NS, self.ns_per_tick)
    }
}

/// The tick of `boot_ns` when `[boot_ns - slack, boot_ns]` lies within one tick.
fn ticks_if_unambiguous(boot_ns: u64, slack: u64, ns_per_tick: u64) -> Option<u64> {
    let late = boot_ns / ns_per_tick;
    let early = boot_ns.saturating_sub(slack) / ns_per_tick;
    (late == early).then_some(late)
}

/// `CLOCK_BOOTTIME` − `CLOCK_MONOTONIC` now (the time spent suspended).
fn boot_offset_ns() -> Option<u64> {
    let monotonic = clock_ns(libc::CLOCK_MONOTONIC)?;
    let boot = clock_ns(libc::CLOCK_BOOTTIME)?;
    boot.checked_sub(monotonic)
}

fn clock_ns(clock: libc::clockid_t) -> Option<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the struct it is given.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return None;
    }
    Some(u64::try_from(now.tv_sec).ok()? * 1_000_000_000 + u64::try_from(now.tv_nsec).ok()?)
}

/// comm, ppid and start time (clock ticks since boot) from `/proc/PID/stat`. The comm is in
/// parentheses and may itself contain spaces and parentheses, so split at the last ')'.
pub fn parse_stat(stat: &str) -> Option<(String, u32, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // After the comm: state(0) ppid(1) … starttime is field 22 overall, index 19 here.
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((comm, ppid, start))
}

/// The caller's comm, shared with its entry's when they are the same (they differ only after a
/// thread renamed itself, `prctl(PR_SET_NAME)`).
fn shared_comm(entry: &ProcEntry, comm: &str) -> Arc<str> {
    if &*entry.comm == comm {
        entry.comm.clone()
    } else {
        comm.into()
    }
}

fn split_nul(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn read_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default()
}

fn read_container_id(proc_dir: &Path) -> Option<Arc<str>> {
    container_id_from_cgroup(&std::fs::read_to_string(proc_dir.join("cgroup")).ok()?)
        .map(Into::into)
}

/// A 64-hex-digit container id in a cgroup path (docker, containerd, cri-o, podman), e.g.
/// `0::/system.slice/docker-<id>.scope` or `12:cpu:/docker/<id>`.
pub fn container_id_from_cgroup(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        line.split(['/', '-', ':', '.'])
            .find(|part| part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_owned)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_comm() {
        let stat =
            "1234 (a) b (c)) S 77 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        let (comm, ppid, start) = parse_stat(stat).unwrap();
        assert_eq!(comm, "a) b (c)");
        assert_eq!(ppid, 77);
        assert_eq!(start, 98765);
        assert!(parse_stat("garbage").is_none());
    }

    /// This test process as the caller of an event at `ktime_ns`.
    fn own_caller(ktime_ns: u64) -> Caller<'static> {
        let me = std::process::id();
        Caller {
            pid: me,
            tid: me,
            ppid: 0,
            uid: 0,
            gid: 0,
            cgroup_id: 0,
            comm: "tester",
            ktime_ns,
        }
    }

    #[test]
    fn an_exec_folder_is_world_writable_only_when_its_mode_says_so() {
        let table = ProcessTable::new("/proc", "h", UserNames::default());
        let work = std::env::temp_dir().join(format!("qsc-exec-folder-{}", std::process::id()));
        let open = work.join("open");
        let closed = work.join("closed");
        std::fs::create_dir_all(&open).unwrap();
        std::fs::create_dir_all(&closed).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o755)).unwrap();
        let me = own_caller(0);
        let in_folder = |folder: &Path| folder.join("payload").to_string_lossy().into_owned();
        let open_seen = table.exec_folder_world_writable(&me, &in_folder(&open));
        let closed_seen = table.exec_folder_world_writable(&me, &in_folder(&closed));
        let gone = table.exec_folder_world_writable(&me, &in_folder(&work.join("missing")));
        let relative = table.exec_folder_world_writable(&me, "./payload");
        let mut nobody = own_caller(0);
        nobody.pid = u32::MAX;
        let no_process = table.exec_folder_world_writable(&nobody, &in_folder(&open));
        std::fs::remove_dir_all(&work).unwrap();
        assert_eq!(open_seen, Some(true));
        assert_eq!(closed_seen, Some(false));
        assert_eq!(gone, None);
        let cwd_mode = std::fs::metadata(".").unwrap().permissions().mode();
        assert_eq!(relative, Some(cwd_mode & 0o002 != 0));
        assert_eq!(no_process, None);
    }

    #[test]
    fn fork_ticks_only_when_the_slack_stays_in_one_tick() {
        let tick = 10_000_000;
        assert_eq!(ticks_if_unambiguous(55_000_000, 1_000_000, tick), Some(5));
        assert_eq!(ticks_if_unambiguous(50_500_000, 1_000_000, tick), None);
        assert_eq!(ticks_if_unambiguous(51_000_000, 1_000_000, tick), Some(5));
        assert_eq!(ticks_if_unambiguous(500, 1_000_000, tick), Some(0));
    }

    #[test]
    fn start_times_come_from_proc_and_from_fork_events() {
        let mut table = ProcessTable::new("/proc", "test-host", UserNames::default());
        table.seed();
        let me = std::process::id();
        let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
        let (_, _, start) = parse_stat(&stat).unwrap();
        assert_eq!(table.get(me).unwrap().start_time_ticks, Some(start));
        let caller = own_caller(0);
        assert_eq!(table.process_info(&caller).start_time_ticks, Some(start));
        // A fork in the middle of a tick, of a child /proc does not know: from the event.
        let tick = table.clock.ns_per_tick;
        let offset = boot_offset_ns().unwrap();
        let mid_tick = |n: u64| (n * tick + tick / 2).saturating_sub(offset);
        let child = u32::MAX - 9;
        let fork = |ktime_ns| Caller { ktime_ns, ..caller };
        table.on_fork(&fork(mid_tick(1_000_000)), child);
        assert_eq!(table.get(child).unwrap().start_time_ticks, Some(1_000_000));
        // Just past a tick boundary the event cannot tell, and /proc has no such child.
        let boundary = (1_000_000 * tick + FORK_SLACK_NS / 2).saturating_sub(offset);
        table.on_fork(&fork(boundary), child);
        assert_eq!(table.get(child).unwrap().start_time_ticks, None);
        // exec keeps the start time.
        table.on_fork(&fork(mid_tick(7_000)), child);
        let child_caller = Caller {
            pid: child,
            ppid: me,
            ..caller
        };
        table.on_exec(&child_caller, "/bin/true", &[]);
        assert_eq!(
            table.process_info(&child_caller).start_time_ticks,
            Some(7_000)
        );
    }

    #[test]
    fn pid_hasher_separates_neighbouring_pids() {
        let hash = |pid: u32| {
            let mut h = PidHasher::default();
            pid.hash(&mut h);
            h.finish()
        };
        assert_ne!(hash(1000), hash(1001));
        assert_ne!(hash(1000) >> 57, hash(1001) >> 57, "high bits differ too");
    }

    #[test]
    fn finds_container_ids() {
        let id = "a".repeat(64);
        assert_eq!(
            container_id_from_cgroup(&format!("0::/system.slice/docker-{id}.scope")),
            Some(id.clone())
        );
        assert_eq!(
            container_id_from_cgroup(&format!("12:cpu:/docker/{id}")),
            Some(id)
        );
        assert_eq!(container_id_from_cgroup("0::/user.slice"), None);
    }

    #[test]
    fn seeds_from_proc_and_tracks_fork_exec_exit() {
        let mut table = ProcessTable::new("/proc", "test-host", UserNames::default());
        assert!(table.seed() > 0);
        let me = std::process::id();
        assert!(table.get(me).is_some(), "own process seeded");
        let caller = own_caller(1);
        let child = u32::MAX - 7;
        table.on_fork(&caller, child);
        let child_caller = Caller {
            pid: child,
            ppid: me,
            comm: "sh",
            ktime_ns: 2,
            ..caller
        };
        table.on_exec(&child_caller, "/bin/sh", &["sh".into(), "-c".into()]);
        let info = table.process_info(&child_caller);
        assert_eq!(info.exe.as_deref(), Some("/bin/sh"));
        assert_eq!(*info.cmdline, ["sh", "-c"]);
        assert_eq!(
            table.get(child).map(|e| e.cmdline.len()),
            Some(2),
            "argv kept in the table"
        );
        assert_eq!(info.ancestry.first().map(|a| a.pid), Some(me));
        assert_ne!(info.guid, table.get(me).unwrap().guid);
        table.on_exit(child);
        assert!(table.get(child).is_none());
    }
}
