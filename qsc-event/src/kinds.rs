use serde::{Deserialize, Serialize};
use std::net::IpAddr;

use crate::{ActionOutcome, OcsfClass, ProcessInfo};

/// Every kind of event QSC knows, tagged in JSON by `"kind"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    // Process activity (guardian-alpha).
    ProcessExec(ProcessExec),
    ProcessExit(ProcessExit),
    ProcessFork(ProcessFork),
    // File activity on watched paths (guardian-alpha).
    FileOpen(FileOpen),
    FileChmod(FileChmod),
    FileChown(FileChown),
    FileUnlink(FileUnlink),
    FileRename(FileRename),
    // Network activity (guardian-alpha).
    NetConnect(NetConnection),
    NetAccept(NetConnection),
    NetListen(NetListen),
    NetVolume(NetVolume),
    // Memory (guardian-alpha).
    MemoryRwx(MemoryRwx),
    // Privilege (guardian-alpha).
    PrivSetid(PrivSetid),
    PrivCapset(PrivCapset),
    PrivPtrace(PrivPtrace),
    PrivModuleLoad(PrivModuleLoad),
    PrivBpf(PrivBpf),
    PrivMemfdCreate(PrivMemfdCreate),
    // Authentication (guardian-alpha, from the auth log / journal).
    AuthFailure(AuthAttempt),
    AuthSuccess(AuthAttempt),
    // Integrity (guardian-beta).
    IntegrityFileChanged(IntegrityFileChanged),
    IntegrityFileAdded(IntegrityFile),
    IntegrityFileRemoved(IntegrityFile),
    IntegrityBaselineTampered(IntegrityBaselineTampered),
    BackupCorrupt(BackupFile),
    BackupMissing(BackupFile),
    BackupUnexpected(BackupFile),
    CertExpiring(Certificate),
    CertExpired(Certificate),
    CertNotYetValid(Certificate),
    CertRevoked(Certificate),
    CertInvalid(Certificate),
    HealDone(Heal),
    HealFailed(Heal),
    // Host state (guardian-alpha).
    HostMetrics(HostMetrics),
    // Enforcement done by the kernel on the agent's behalf (guardian-alpha).
    Enforcement(Enforcement),
    // A timed response action the agent rolled back by itself (guardian-alpha).
    ResponseRollback(ResponseRollback),
    // A step the agent finished after reporting its action done (guardian-alpha).
    ResponseFollowUp(ResponseFollowUp),
    // Agent health (any agent).
    EventLoss(EventLoss),
    Heartbeat(Heartbeat),
    TamperAttempt(TamperAttempt),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessExec {
    pub process: ProcessInfo,
    /// The path the kernel executed.
    pub filename: String,
    /// The first argv entries, as captured in the kernel (truncated).
    pub argv: Vec<String>,
    /// Whether every user may write to the folder holding `filename` (mode o+w, as /tmp's),
    /// as the agent found it right after the exec; absent when it could not tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder_world_writable: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessExit {
    pub process: ProcessInfo,
    /// Exit status as `wait` reports it: the code when it exited, else 128 + signal.
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessFork {
    /// The parent, which called fork/clone.
    pub process: ProcessInfo,
    pub child_pid: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileOpen {
    pub process: ProcessInfo,
    pub path: String,
    /// `open(2)` flags as passed.
    pub flags: u32,
    /// True when the flags ask for writing, creating or truncating.
    pub write: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileChmod {
    pub process: ProcessInfo,
    pub path: String,
    pub mode: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileChown {
    pub process: ProcessInfo,
    pub path: String,
    /// -1 means unchanged, as in `chown(2)`.
    pub uid: i64,
    pub gid: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileUnlink {
    pub process: ProcessInfo,
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileRename {
    pub process: ProcessInfo,
    pub path: String,
    pub new_path: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetConnection {
    pub process: ProcessInfo,
    pub protocol: String,
    pub src_ip: IpAddr,
    pub src_port: u16,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetListen {
    pub process: ProcessInfo,
    pub protocol: String,
    pub ip: IpAddr,
    pub port: u16,
}

/// Bytes exchanged with one remote address over an interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetVolume {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessInfo>,
    pub remote_ip: IpAddr,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub interval_ms: u64,
}

/// Where a writable+executable memory region was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RwxSource {
    Mmap,
    Mprotect,
    /// Found by scanning `/proc/PID/maps`.
    MapsScan,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryRwx {
    pub process: ProcessInfo,
    pub origin: RwxSource,
    pub addr: u64,
    pub len: u64,
    pub prot: u32,
    /// The mapping's path or pseudo-name (`[heap]`, `[anon]`, `/memfd:x`) when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrivSetid {
    pub process: ProcessInfo,
    /// The syscall: setuid, setgid, setreuid, setregid, setresuid, setresgid.
    pub call: String,
    /// The ids passed, in argument order; -1 means unchanged.
    pub ids: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrivCapset {
    pub process: ProcessInfo,
    pub target_pid: u32,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrivPtrace {
    pub process: ProcessInfo,
    pub request: i64,
    pub target_pid: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrivModuleLoad {
    pub process: ProcessInfo,
    /// init_module or finit_module.
    pub call: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrivBpf {
    pub process: ProcessInfo,
    /// The `bpf(2)` command number (BPF_PROG_LOAD = 5, …).
    pub cmd: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrivMemfdCreate {
    pub process: ProcessInfo,
    pub name: String,
    pub flags: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuthAttempt {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip: Option<IpAddr>,
    /// sshd, sudo, login, …
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntegrityFileChanged {
    pub path: String,
    /// What differs: content, mode, uid, gid, size, mtime, ctime, inode, type, link_target, xattrs.
    pub changes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_hash: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntegrityFile {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntegrityBaselineTampered {
    pub store: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackupFile {
    pub backup_set: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_sha3_256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_sha3_256: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Certificate {
    /// A file path or a `host:port` endpoint.
    pub location: String,
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub days_left: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heal {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One sample of host state, the input of the anomaly baseline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostMetrics {
    pub interval_ms: u64,
    /// Busy CPU over the interval, 0..=100 summed over all CPUs divided by the CPU count.
    pub cpu_pct: f64,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub process_count: u64,
    pub failed_logins: u64,
    pub new_processes: u64,
    pub new_connections: u64,
}

/// What the kernel refused on the agent's behalf.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnforcementAction {
    /// A connect or send to a blocked address, refused with EPERM.
    ConnectBlocked,
    /// An exec of a blocked path: the caller was killed before the new image ran.
    ExecKilled,
    /// A process of a revoked account exec'd or forked, or a process asked to become that
    /// account (setuid family): it was killed before it could go on.
    RevokedUidKilled,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enforcement {
    pub process: ProcessInfo,
    pub action: EnforcementAction,
    /// The blocked address (`ip:port`), the executable path, or for a revoked uid
    /// `uid N: exec PATH`, `uid N: fork` or `uid N: switch to it`.
    pub target: String,
}

/// Events that were generated but could not be delivered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventLoss {
    /// Where they were lost: kernel_ringbuf, outbox, ingest, webhook.
    pub stage: String,
    /// Which kind of record was lost, where the stage knows (exec, file, net, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// Lost since the previous `event_loss` report from this stage.
    pub lost: u64,
    /// Lost in total since the component started.
    pub total: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub version: String,
    pub uptime_s: u64,
    /// Which kernel hooks (or watchers) are active.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_hooks: Vec<String>,
}

/// The agent's own safety net ran: a timed block or isolation reached its TTL and the agent
/// rolled it back by itself (whether or not the cortex was reachable to ask for it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseRollback {
    /// The rollback that ran: `unblock_ip` or `release`.
    pub action: String,
    /// Why it ran: `ttl_expired`.
    pub reason: String,
    /// The address unblocked (`unblock_ip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<IpAddr>,
    /// `done` when the host is back in its state before the action, else `failed`.
    pub outcome: ActionOutcome,
    /// What was done, or why it failed.
    pub detail: String,
}

/// A step of a response action that the agent finished after reporting the action done: what
/// makes a revocation the kernel already enforces outlive the agent (the shadow-file lock and
/// the agent's list of revoked accounts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseFollowUp {
    /// The action the step belongs to.
    pub action_id: String,
    /// Its name: `revoke_credential`.
    pub action: String,
    /// The step: `persist`.
    pub step: String,
    /// `done`, or `failed`: the action then holds only as long as the agent runs.
    pub outcome: ActionOutcome,
    /// What was done, or why it failed.
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TamperAttempt {
    /// What was attempted: signal, ptrace, config_change, …
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl EventKind {
    /// The snake_case name used as `"kind"` in JSON.
    pub fn name(&self) -> &'static str {
        use EventKind::*;
        match self {
            ProcessExec(_) => "process_exec",
            ProcessExit(_) => "process_exit",
            ProcessFork(_) => "process_fork",
            FileOpen(_) => "file_open",
            FileChmod(_) => "file_chmod",
            FileChown(_) => "file_chown",
            FileUnlink(_) => "file_unlink",
            FileRename(_) => "file_rename",
            NetConnect(_) => "net_connect",
            NetAccept(_) => "net_accept",
            NetListen(_) => "net_listen",
            NetVolume(_) => "net_volume",
            MemoryRwx(_) => "memory_rwx",
            PrivSetid(_) => "priv_setid",
            PrivCapset(_) => "priv_capset",
            PrivPtrace(_) => "priv_ptrace",
            PrivModuleLoad(_) => "priv_module_load",
            PrivBpf(_) => "priv_bpf",
            PrivMemfdCreate(_) => "priv_memfd_create",
            AuthFailure(_) => "auth_failure",
            AuthSuccess(_) => "auth_success",
            IntegrityFileChanged(_) => "integrity_file_changed",
            IntegrityFileAdded(_) => "integrity_file_added",
            IntegrityFileRemoved(_) => "integrity_file_removed",
            IntegrityBaselineTampered(_) => "integrity_baseline_tampered",
            BackupCorrupt(_) => "backup_corrupt",
            BackupMissing(_) => "backup_missing",
            BackupUnexpected(_) => "backup_unexpected",
            CertExpiring(_) => "cert_expiring",
            CertExpired(_) => "cert_expired",
            CertNotYetValid(_) => "cert_not_yet_valid",
            CertRevoked(_) => "cert_revoked",
            CertInvalid(_) => "cert_invalid",
            HealDone(_) => "heal_done",
            HealFailed(_) => "heal_failed",
            HostMetrics(_) => "host_metrics",
            Enforcement(_) => "enforcement",
            ResponseRollback(_) => "response_rollback",
            ResponseFollowUp(_) => "response_follow_up",
            EventLoss(_) => "event_loss",
            Heartbeat(_) => "heartbeat",
            TamperAttempt(_) => "tamper_attempt",
        }
    }

    pub fn ocsf_class(&self) -> OcsfClass {
        use EventKind::*;
        match self {
            ProcessExec(_) | ProcessExit(_) | ProcessFork(_) | MemoryRwx(_) | PrivSetid(_)
            | PrivCapset(_) | PrivPtrace(_) | PrivModuleLoad(_) | PrivBpf(_)
            | PrivMemfdCreate(_) | TamperAttempt(_) | Enforcement(_) => OcsfClass::ProcessActivity,
            FileOpen(_)
            | FileChmod(_)
            | FileChown(_)
            | FileUnlink(_)
            | FileRename(_)
            | IntegrityFileChanged(_)
            | IntegrityFileAdded(_)
            | IntegrityFileRemoved(_)
            | IntegrityBaselineTampered(_)
            | BackupCorrupt(_)
            | BackupMissing(_)
            | BackupUnexpected(_)
            | HealDone(_)
            | HealFailed(_) => OcsfClass::FileSystemActivity,
            NetConnect(_) | NetAccept(_) | NetListen(_) | NetVolume(_) => {
                OcsfClass::NetworkActivity
            }
            AuthFailure(_) | AuthSuccess(_) => OcsfClass::Authentication,
            CertExpiring(_) | CertExpired(_) | CertNotYetValid(_) | CertRevoked(_)
            | CertInvalid(_) => OcsfClass::DetectionFinding,
            HostMetrics(_) | EventLoss(_) | Heartbeat(_) | ResponseRollback(_)
            | ResponseFollowUp(_) => OcsfClass::DeviceInventoryInfo,
        }
    }

    pub fn process(&self) -> Option<&ProcessInfo> {
        use EventKind::*;
        match self {
            ProcessExec(e) => Some(&e.process),
            ProcessExit(e) => Some(&e.process),
            ProcessFork(e) => Some(&e.process),
            FileOpen(e) => Some(&e.process),
            FileChmod(e) => Some(&e.process),
            FileChown(e) => Some(&e.process),
            FileUnlink(e) => Some(&e.process),
            FileRename(e) => Some(&e.process),
            NetConnect(e) | NetAccept(e) => Some(&e.process),
            NetListen(e) => Some(&e.process),
            NetVolume(e) => e.process.as_ref(),
            MemoryRwx(e) => Some(&e.process),
            PrivSetid(e) => Some(&e.process),
            PrivCapset(e) => Some(&e.process),
            PrivPtrace(e) => Some(&e.process),
            PrivModuleLoad(e) => Some(&e.process),
            PrivBpf(e) => Some(&e.process),
            PrivMemfdCreate(e) => Some(&e.process),
            TamperAttempt(e) => e.process.as_ref(),
            Enforcement(e) => Some(&e.process),
            _ => None,
        }
    }
}

/// Generates [`EventKind::deserialize_tagged`] from a `"tag" => Variant(Struct)` table.
macro_rules! tagged_decoders {
    ($($tag:literal => $variant:ident($ty:ty)),* $(,)?) => {
        impl EventKind {
            /// Deserializes the fields of the kind whose `"kind"` tag is `tag` straight into
            /// the variant's struct, without the buffering that internal tagging costs (see
            /// [`crate::Event::from_json`]). `None` for a tag not in the table.
            pub(crate) fn deserialize_tagged<'de, D: serde::Deserializer<'de>>(
                tag: &str,
                fields: D,
            ) -> Option<Result<EventKind, D::Error>> {
                Some(match tag {
                    $($tag => <$ty>::deserialize(fields).map(EventKind::$variant),)*
                    _ => return None,
                })
            }

            /// Every tag [`Self::deserialize_tagged`] knows.
            #[cfg(test)]
            pub(crate) const TAGGED_DECODERS: &[&str] = &[$($tag),*];
        }
    };
}

tagged_decoders! {
    "process_exec" => ProcessExec(ProcessExec),
    "process_exit" => ProcessExit(ProcessExit),
    "process_fork" => ProcessFork(ProcessFork),
    "file_open" => FileOpen(FileOpen),
    "file_chmod" => FileChmod(FileChmod),
    "file_chown" => FileChown(FileChown),
    "file_unlink" => FileUnlink(FileUnlink),
    "file_rename" => FileRename(FileRename),
    "net_connect" => NetConnect(NetConnection),
    "net_accept" => NetAccept(NetConnection),
    "net_listen" => NetListen(NetListen),
    "net_volume" => NetVolume(NetVolume),
    "memory_rwx" => MemoryRwx(MemoryRwx),
    "priv_setid" => PrivSetid(PrivSetid),
    "priv_capset" => PrivCapset(PrivCapset),
    "priv_ptrace" => PrivPtrace(PrivPtrace),
    "priv_module_load" => PrivModuleLoad(PrivModuleLoad),
    "priv_bpf" => PrivBpf(PrivBpf),
    "priv_memfd_create" => PrivMemfdCreate(PrivMemfdCreate),
    "auth_failure" => AuthFailure(AuthAttempt),
    "auth_success" => AuthSuccess(AuthAttempt),
    "integrity_file_changed" => IntegrityFileChanged(IntegrityFileChanged),
    "integrity_file_added" => IntegrityFileAdded(IntegrityFile),
    "integrity_file_removed" => IntegrityFileRemoved(IntegrityFile),
    "integrity_baseline_tampered" => IntegrityBaselineTampered(IntegrityBaselineTampered),
    "backup_corrupt" => BackupCorrupt(BackupFile),
    "backup_missing" => BackupMissing(BackupFile),
    "backup_unexpected" => BackupUnexpected(BackupFile),
    "cert_expiring" => CertExpiring(Certificate),
    "cert_expired" => CertExpired(Certificate),
    "cert_not_yet_valid" => CertNotYetValid(Certificate),
    "cert_revoked" => CertRevoked(Certificate),
    "cert_invalid" => CertInvalid(Certificate),
    "heal_done" => HealDone(Heal),
    "heal_failed" => HealFailed(Heal),
    "host_metrics" => HostMetrics(HostMetrics),
    "enforcement" => Enforcement(Enforcement),
    "response_rollback" => ResponseRollback(ResponseRollback),
    "response_follow_up" => ResponseFollowUp(ResponseFollowUp),
    "event_loss" => EventLoss(EventLoss),
    "heartbeat" => Heartbeat(Heartbeat),
    "tamper_attempt" => TamperAttempt(TamperAttempt),
}
