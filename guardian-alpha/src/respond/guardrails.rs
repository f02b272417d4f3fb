//! Agent-side guardrails, always on: what no response action may touch, whatever the cortex
//! asks. A refusal names the rule that refused.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use super::procfs;
use crate::config::RespondConfig;

/// Process names that are never killed: the agents and the cortex.
pub const BUILTIN_PROTECTED: &[&str] = &["guardian-alpha", "guardian-beta", "cortex"];
/// Accounts below this uid are system accounts.
pub const FIRST_REGULAR_UID: u32 = 1000;

/// Why a guardrail refused an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("pid 1 (init) is never killed")]
    Init,
    #[error("pid {0} is this agent")]
    Agent(u32),
    #[error("pid {0} is a parent of this agent")]
    AgentParent(u32),
    #[error("pid {pid} runs protected program `{name}`")]
    ProtectedProcess { pid: u32, name: String },
    #[error("pid {pid} is a kernel thread")]
    KernelThread { pid: u32 },
    #[error("user `{0}` is on the protected list")]
    ProtectedUser(String),
    #[error(
        "user `{user}` has uid {uid} (root or a system account); set respond.allow_system_users to allow"
    )]
    SystemUser { user: String, uid: u32 },
    #[error("{0} is the cortex's address")]
    CortexAddress(IpAddr),
    #[error("{0} is on the protected address list")]
    ProtectedAddress(IpAddr),
    #[error("{0} is an unspecified address")]
    Unspecified(IpAddr),
    #[error("`{path}` is the program of a protected process (`{name}`)")]
    ProtectedFile { path: String, name: String },
    #[error("`{0}` names no file on disk (a memfd, or a link under /proc or /dev/fd)")]
    NoFileOnDisk(String),
}

/// The guardrails, built from the agent's config and the cortex address it talks to.
#[derive(Debug, Clone)]
pub struct Guardrails {
    proc_root: PathBuf,
    agent_pid: u32,
    protected_names: BTreeSet<String>,
    protected_users: BTreeSet<String>,
    allow_system_users: bool,
    protected_addresses: BTreeSet<IpAddr>,
    cortex: Vec<SocketAddr>,
}

/// `::ffff:a.b.c.d` as `a.b.c.d`, so both spellings of one address compare equal.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

impl Guardrails {
    /// `cortex`: the resolved addresses of the agent's cortex (never blocked, kept reachable).
    pub fn new(config: &RespondConfig, cortex: Vec<SocketAddr>) -> Self {
        Guardrails {
            proc_root: PathBuf::from("/proc"),
            agent_pid: std::process::id(),
            protected_names: BUILTIN_PROTECTED
                .iter()
                .map(|s| s.to_string())
                .chain(config.protected_processes.iter().cloned())
                .collect(),
            protected_users: config.protected_users.iter().cloned().collect(),
            allow_system_users: config.allow_system_users,
            protected_addresses: config
                .protected_addresses
                .iter()
                .map(|a| canonical(*a))
                .collect(),
            cortex,
        }
    }

    /// The cortex's addresses, as resolved at start-up.
    pub fn cortex(&self) -> &[SocketAddr] {
        &self.cortex
    }

    /// Checks one process about to be signalled: its pid, parent pid and command name.
    pub fn check_process(&self, pid: u32, ppid: u32, comm: &str) -> Result<(), Refusal> {
        if pid == 1 {
            return Err(Refusal::Init);
        }
        if pid == self.agent_pid {
            return Err(Refusal::Agent(pid));
        }
        // Kernel threads: children of kthreadd (pid 2), and kthreadd itself.
        if pid == 2 || ppid == 2 {
            return Err(Refusal::KernelThread { pid });
        }
        if self.agent_parents().contains(&pid) {
            return Err(Refusal::AgentParent(pid));
        }
        let exe = procfs::exe_name(&self.proc_root, pid);
        for name in exe.iter().map(String::as_str).chain(std::iter::once(comm)) {
            if self.protected_names.contains(name) {
                return Err(Refusal::ProtectedProcess {
                    pid,
                    name: name.into(),
                });
            }
        }
        Ok(())
    }

    /// The agent's ancestors, read now (a parent may have changed since start-up).
    fn agent_parents(&self) -> BTreeSet<u32> {
        let mut parents = BTreeSet::new();
        let mut pid = self.agent_pid;
        while let Some(stat) = procfs::stat(&self.proc_root, pid) {
            if stat.ppid == 0 || !parents.insert(stat.ppid) {
                break;
            }
            pid = stat.ppid;
        }
        parents
    }

    /// Checks a file about to be quarantined: the agent's own executable and files named like a
    /// protected program (the agents, the cortex, the configured names) stay where they are.
    pub fn check_file(&self, path: &std::path::Path) -> Result<(), Refusal> {
        // A fileless program's path (`/memfd:name (deleted)`), or a descriptor link that
        // would resolve in this agent's own process rather than the attacker's.
        if path.to_string_lossy().starts_with("/memfd:")
            || path.starts_with("/proc")
            || path.starts_with("/dev/fd")
        {
            return Err(Refusal::NoFileOnDisk(path.display().to_string()));
        }
        let refuse = |name: &str| Refusal::ProtectedFile {
            path: path.display().to_string(),
            name: name.into(),
        };
        let own_exe = std::fs::read_link(self.proc_root.join("self/exe")).ok();
        let canonical = std::fs::canonicalize(path).ok();
        if own_exe.is_some() && own_exe == canonical {
            return Err(refuse("this agent"));
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if self.protected_names.contains(name) {
            return Err(refuse(name));
        }
        Ok(())
    }

    /// Checks an account about to be locked (or unlocked).
    pub fn check_user(&self, user: &str, uid: u32) -> Result<(), Refusal> {
        if self.protected_users.contains(user) {
            return Err(Refusal::ProtectedUser(user.into()));
        }
        if uid < FIRST_REGULAR_UID && !self.allow_system_users {
            return Err(Refusal::SystemUser {
                user: user.into(),
                uid,
            });
        }
        Ok(())
    }

    /// Checks an address about to be blocked; `cortex_now` is the cortex's address as resolved
    /// now (refused as well as the start-up one).
    pub fn check_address(&self, addr: IpAddr, cortex_now: &[SocketAddr]) -> Result<(), Refusal> {
        let addr = canonical(addr);
        if addr.is_unspecified() {
            return Err(Refusal::Unspecified(addr));
        }
        if self
            .cortex
            .iter()
            .chain(cortex_now)
            .any(|c| canonical(c.ip()) == addr)
        {
            return Err(Refusal::CortexAddress(addr));
        }
        if self.protected_addresses.contains(&addr) {
            return Err(Refusal::ProtectedAddress(addr));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn rails() -> Guardrails {
        let config = RespondConfig {
            protected_users: vec!["alice".into()],
            protected_addresses: vec!["10.1.1.1".parse().unwrap()],
            ..RespondConfig::default()
        };
        Guardrails::new(&config, vec!["192.0.2.7:7443".parse().unwrap()])
    }

    fn check(rails: &Guardrails, pid: u32) -> Result<(), Refusal> {
        let stat = procfs::stat(Path::new("/proc"), pid).unwrap();
        rails.check_process(stat.pid, stat.ppid, &stat.comm)
    }

    #[test]
    fn refuses_init_the_agent_and_its_parents() {
        let rails = rails();
        assert_eq!(check(&rails, 1), Err(Refusal::Init));
        let me = std::process::id();
        assert_eq!(check(&rails, me), Err(Refusal::Agent(me)));
        let parent = procfs::stat(Path::new("/proc"), me).unwrap().ppid;
        assert_eq!(check(&rails, parent), Err(Refusal::AgentParent(parent)));
    }

    #[test]
    fn allows_an_ordinary_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let verdict = check(&rails(), child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(verdict, Ok(()));
    }

    #[test]
    fn refuses_protected_names() {
        let rails = rails();
        assert!(matches!(
            rails.check_process(999_999_999, 1, "guardian-beta"),
            Err(Refusal::ProtectedProcess { .. })
        ));
    }

    #[test]
    fn refuses_the_agents_own_program_and_protected_names() {
        let rails = rails();
        let own = std::env::current_exe().unwrap();
        assert!(matches!(
            rails.check_file(&own),
            Err(Refusal::ProtectedFile { .. })
        ));
        assert!(matches!(
            rails.check_file(Path::new("/usr/local/bin/guardian-beta")),
            Err(Refusal::ProtectedFile { .. })
        ));
        assert_eq!(rails.check_file(Path::new("/tmp/dropper")), Ok(()));
    }

    #[test]
    fn refuses_paths_that_name_no_file_on_disk() {
        let rails = rails();
        for path in ["/memfd:payload (deleted)", "/proc/self/fd/3", "/dev/fd/3"] {
            assert_eq!(
                rails.check_file(Path::new(path)),
                Err(Refusal::NoFileOnDisk(path.into())),
                "{path}"
            );
        }
        assert_eq!(rails.check_file(Path::new("/tmp/memfd:x")), Ok(()));
        assert_eq!(rails.check_file(Path::new("/process/x")), Ok(()));
    }

    #[test]
    fn users_and_addresses() {
        let rails = rails();
        assert!(matches!(
            rails.check_user("root", 0),
            Err(Refusal::SystemUser { .. })
        ));
        assert!(matches!(
            rails.check_user("daemon", 1),
            Err(Refusal::SystemUser { .. })
        ));
        assert!(matches!(
            rails.check_user("alice", 1001),
            Err(Refusal::ProtectedUser(_))
        ));
        assert_eq!(rails.check_user("bob", 1002), Ok(()));
        let cortex: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(matches!(
            rails.check_address(cortex, &[]),
            Err(Refusal::CortexAddress(_))
        ));
        let moved: SocketAddr = "192.0.2.8:7443".parse().unwrap();
        assert!(matches!(
            rails.check_address(moved.ip(), &[moved]),
            Err(Refusal::CortexAddress(_))
        ));
        assert!(matches!(
            rails.check_address("10.1.1.1".parse().unwrap(), &[]),
            Err(Refusal::ProtectedAddress(_))
        ));
        assert!(matches!(
            rails.check_address("0.0.0.0".parse().unwrap(), &[]),
            Err(Refusal::Unspecified(_))
        ));
        assert_eq!(
            rails.check_address("127.0.0.2".parse().unwrap(), &[]),
            Ok(())
        );
    }
}
