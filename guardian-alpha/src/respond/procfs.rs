//! What the response actions read from `/proc`, and signals sent through pidfds so that a pid
//! recycled between the check and the signal is never hit.

use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

/// The fields of `/proc/PID/stat` the actions need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    /// Field 2: the command name (at most 15 bytes).
    pub comm: String,
    /// Field 4: the parent's pid.
    pub ppid: u32,
    /// Field 3: `R`, `S`, `D`, `T`, `Z` (exited, not yet reaped), …
    pub state: char,
    /// Field 22: start time in clock ticks since boot; with the pid it names one process.
    pub start_time_ticks: u64,
}

/// Parses one `/proc/PID/stat` line. `comm` may hold spaces and parentheses, so the fields
/// are found after the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text.get(..open)?.trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start_time_ticks = fields.get(19)?.parse().ok()?;
    Some(Stat {
        pid,
        comm,
        ppid,
        state,
        start_time_ticks,
    })
}

impl Stat {
    /// False for a process that has exited and waits to be reaped.
    pub fn is_running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// `/proc/PID/stat` of one process, or None when it is gone.
pub fn stat(proc_root: &Path, pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&text)
}

/// Every process's stat, by pid.
pub fn all_stats(proc_root: &Path) -> BTreeMap<u32, Stat> {
    user_pids(proc_root)
        .filter_map(|pid| stat(proc_root, pid).map(|s| (pid, s)))
        .collect()
}

/// The pids under `proc_root` that may run user code. Kernel threads (most of the pids on
/// many hosts) have no executable: their `exe` link reads ENOENT, as does a zombie's, and that
/// lookup costs a fifth of reading their `stat` or `status`. Any other error keeps the pid.
pub fn user_pids(proc_root: &Path) -> impl Iterator<Item = u32> + '_ {
    crate::forensics::all_pids(proc_root)
        .into_iter()
        .filter(move |pid| {
            let exe = std::fs::read_link(proc_root.join(pid.to_string()).join("exe"));
            !exe.is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        })
}

/// The fields of `/proc/PID/status` the actions need (one read, no start time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub pid: u32,
    /// `Name:`, the command name.
    pub comm: String,
    /// `PPid:`.
    pub ppid: u32,
    /// First letter of `State:`.
    pub state: char,
    /// Real, effective, saved and filesystem uids.
    pub uids: [u32; 4],
}

impl Status {
    /// False for a process that has exited and waits to be reaped.
    pub fn is_running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses `/proc/PID/status` text.
pub fn parse_status(pid: u32, text: &str) -> Option<Status> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    let mut uids = field("Uid:")?
        .split_whitespace()
        .map(|v| v.parse::<u32>().ok());
    Some(Status {
        pid,
        comm: field("Name:")?.to_owned(),
        ppid: field("PPid:")?.parse().ok()?,
        state: field("State:")?.chars().next()?,
        uids: [uids.next()??, uids.next()??, uids.next()??, uids.next()??],
    })
}

/// `/proc/PID/status` of one process, or None when it is gone.
pub fn status(proc_root: &Path, pid: u32) -> Option<Status> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    parse_status(pid, &text)
}

/// The file name of a process's executable, when it can be read.
pub fn exe_name(proc_root: &Path, pid: u32) -> Option<String> {
    let exe = std::fs::read_link(proc_root.join(pid.to_string()).join("exe")).ok()?;
    let name = exe.file_name()?.to_str()?;
    // A deleted executable reads as "name (deleted)".
    Some(name.trim_end_matches(" (deleted)").to_owned())
}

/// An open handle on one process: signals go to that process even if its pid is reused.
pub struct Pidfd {
    fd: OwnedFd,
    /// The pid the process had when it was opened (for reports and logs).
    pub pid: u32,
}

impl Pidfd {
    /// Opens `pid`; with `start_time_ticks`, only if it is still that process.
    pub fn open(
        proc_root: &Path,
        pid: u32,
        start_time_ticks: Option<u64>,
    ) -> std::io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // Checked after opening: from now on the fd names the process whatever its pid becomes.
        if let Some(expected) = start_time_ticks {
            let current = stat(proc_root, pid).map(|s| s.start_time_ticks);
            if current != Some(expected) {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        Ok(Pidfd { fd, pid })
    }

    /// Sends `signal`; a process that already exited is not an error.
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal with a valid pidfd, no siginfo and no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        match std::io::Error::last_os_error() {
            err if err.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            err => Err(err),
        }
    }

    /// Waits up to `timeout` for the process to exit; true once it has.
    pub fn wait_exit(&self, timeout: std::time::Duration) -> bool {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd; a pidfd becomes readable when its process exits.
        let rc = unsafe { libc::poll(&mut poll, 1, millis) };
        rc > 0 && poll.revents & libc::POLLIN != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let line = "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.pid, 4242);
        assert_eq!(stat.comm, "a) b (c)");
        assert_eq!(stat.ppid, 17);
        assert_eq!(stat.state, 'S');
        assert!(stat.is_running());
        assert_eq!(stat.start_time_ticks, 987654);
        assert_eq!(parse_stat("12 (x) S"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn parses_status() {
        let text = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t77\nPid:\t77\nPPid:\t5\nUid:\t1001\t1001\t1001\t1001\n";
        let status = parse_status(77, text).unwrap();
        assert_eq!(status.comm, "sleep");
        assert_eq!((status.ppid, status.state), (5, 'S'));
        assert_eq!(status.uids, [1001; 4]);
        assert_eq!(parse_status(77, "Name:\tx\n"), None);
    }

    #[test]
    fn user_pids_leave_out_kernel_threads() {
        let proc_root = Path::new("/proc");
        let users: Vec<u32> = user_pids(proc_root).collect();
        assert!(users.contains(&std::process::id()));
        // kthreadd (pid 2, parent 0) and what it started, where this pid namespace sees them.
        let kernel_threads: Vec<u32> = all_stats_unfiltered(proc_root)
            .into_iter()
            .filter(|s| (s.pid == 2 && s.ppid == 0) || s.ppid == 2)
            .map(|s| s.pid)
            .collect();
        assert!(kernel_threads.iter().all(|pid| !users.contains(pid)));
    }

    fn all_stats_unfiltered(proc_root: &Path) -> Vec<Stat> {
        crate::forensics::all_pids(proc_root)
            .into_iter()
            .filter_map(|pid| stat(proc_root, pid))
            .collect()
    }

    #[test]
    fn reads_own_process() {
        let proc_root = Path::new("/proc");
        let me = std::process::id();
        let own = stat(proc_root, me).unwrap();
        assert_eq!(own.pid, me);
        assert!(all_stats(proc_root).contains_key(&me));
        let status = status(proc_root, me).unwrap();
        assert_eq!((status.pid, status.ppid), (me, own.ppid));
        assert!(status.is_running());
        // SAFETY: getuid has no preconditions.
        assert_eq!(status.uids[0], unsafe { libc::getuid() });
        let pidfd = Pidfd::open(proc_root, me, Some(own.start_time_ticks)).unwrap();
        pidfd.signal(0).unwrap();
        let wrong = Pidfd::open(proc_root, me, Some(own.start_time_ticks + 1));
        assert_eq!(
            wrong.err().and_then(|e| e.raw_os_error()),
            Some(libc::ESRCH)
        );
    }
}
