use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The process an event is about, as enriched by the agent. Its text is shared (`Arc`): the
/// agent attaches the same process block, ancestry and all, to every event of a process, and
/// sharing it costs a reference count where copying cost an allocation per string.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Thread-group id (what users call the pid).
    pub pid: u32,
    /// The thread that made the call, when it differs from `pid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Arc<str>>,
    pub comm: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "<[String]>::is_empty")]
    pub cmdline: Arc<[String]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<Arc<str>>,
    #[serde(default)]
    pub cgroup_id: u64,
    /// When the process started, in clock ticks since boot (field 22 of `/proc/PID/stat`):
    /// with `pid` it names this process, so an action on it never hits a recycled pid. Absent
    /// when the agent could not tell (and in events written before the field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time_ticks: Option<u64>,
    /// Stable identity of this process incarnation (host, pid and start time hashed), unique
    /// even when the kernel reuses the pid.
    #[serde(default)]
    pub guid: Arc<str>,
    /// Parent first, then its parent, up to (and excluding) pid 1 or a depth limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestry: Vec<Ancestor>,
}

/// One ancestor of a process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<Arc<str>>,
    #[serde(default)]
    pub guid: Arc<str>,
}

impl ProcessInfo {
    /// The command line joined with spaces, as Sigma's `CommandLine` expects.
    pub fn command_line(&self) -> String {
        self.cmdline.join(" ")
    }
}
