//! How a [`qsc_event::Event`] looks to a Sigma rule: its log source category and its fields,
//! named after Sigma's taxonomy (`Image`, `CommandLine`, `TargetFilename`, `DestinationIp`, …)
//! where one exists and after the QSC event otherwise.
//!
//! Fields are looked up one at a time from the event ([`FieldView::get`]); nothing is copied
//! into a map. The few derived strings (the joined command line, addresses as text) are
//! rendered once per event into a reusable [`Scratch`].
//!
//! Categories (the `logsource.category` a rule must name; `product` must be `linux` or absent):
//!
//! | category | QSC kinds |
//! |---|---|
//! | `process_creation` | process_exec |
//! | `process_termination` | process_exit |
//! | `process_fork` | process_fork |
//! | `file_event` | file_open with write/create/truncate flags |
//! | `file_access` | file_open for reading |
//! | `file_change` | file_chmod, file_chown |
//! | `file_delete` | file_unlink |
//! | `file_rename` | file_rename |
//! | `network_connection` | net_connect (`Initiated: true`), net_accept (`Initiated: false`) |
//! | `network_listen` | net_listen |
//! | `network_volume` | net_volume |
//! | `memory_rwx` | memory_rwx |
//! | `privilege_change` | priv_setid, priv_capset |
//! | `process_access` | priv_ptrace |
//! | `module_load` | priv_module_load |
//! | `bpf` | priv_bpf |
//! | `memfd_create` | priv_memfd_create |
//! | `authentication` | auth_failure, auth_success |
//! | `file_integrity` | integrity_file_changed/added/removed, integrity_baseline_tampered |
//! | `backup` | backup_corrupt/missing/unexpected |
//! | `certificate` | cert_expiring/expired/not_yet_valid/revoked/invalid |
//! | `heal` | heal_done, heal_failed |
//! | `host_metrics` | host_metrics |
//! | `agent_health` | event_loss, heartbeat, tamper_attempt |

use std::fmt::Write as _;
use std::net::IpAddr;

use qsc_event::{Event, EventKind, ProcessInfo};

/// The log source category of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    ProcessCreation,
    ProcessTermination,
    ProcessFork,
    FileEvent,
    FileAccess,
    FileChange,
    FileDelete,
    FileRename,
    NetworkConnection,
    NetworkListen,
    NetworkVolume,
    MemoryRwx,
    PrivilegeChange,
    ProcessAccess,
    ModuleLoad,
    Bpf,
    MemfdCreate,
    Authentication,
    FileIntegrity,
    Backup,
    Certificate,
    Heal,
    HostMetrics,
    AgentHealth,
    Enforcement,
}

impl Category {
    pub const ALL: [Category; 25] = [
        Category::ProcessCreation,
        Category::ProcessTermination,
        Category::ProcessFork,
        Category::FileEvent,
        Category::FileAccess,
        Category::FileChange,
        Category::FileDelete,
        Category::FileRename,
        Category::NetworkConnection,
        Category::NetworkListen,
        Category::NetworkVolume,
        Category::MemoryRwx,
        Category::PrivilegeChange,
        Category::ProcessAccess,
        Category::ModuleLoad,
        Category::Bpf,
        Category::MemfdCreate,
        Category::Authentication,
        Category::FileIntegrity,
        Category::Backup,
        Category::Certificate,
        Category::Heal,
        Category::HostMetrics,
        Category::AgentHealth,
        Category::Enforcement,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Category::ProcessCreation => "process_creation",
            Category::ProcessTermination => "process_termination",
            Category::ProcessFork => "process_fork",
            Category::FileEvent => "file_event",
            Category::FileAccess => "file_access",
            Category::FileChange => "file_change",
            Category::FileDelete => "file_delete",
            Category::FileRename => "file_rename",
            Category::NetworkConnection => "network_connection",
            Category::NetworkListen => "network_listen",
            Category::NetworkVolume => "network_volume",
            Category::MemoryRwx => "memory_rwx",
            Category::PrivilegeChange => "privilege_change",
            Category::ProcessAccess => "process_access",
            Category::ModuleLoad => "module_load",
            Category::Bpf => "bpf",
            Category::MemfdCreate => "memfd_create",
            Category::Authentication => "authentication",
            Category::FileIntegrity => "file_integrity",
            Category::Backup => "backup",
            Category::Certificate => "certificate",
            Category::Heal => "heal",
            Category::HostMetrics => "host_metrics",
            Category::AgentHealth => "agent_health",
            Category::Enforcement => "enforcement",
        }
    }

    pub fn from_name(name: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The category of an event.
    pub fn of(event: &Event) -> Category {
        use EventKind::*;
        match &event.kind {
            ProcessExec(_) => Category::ProcessCreation,
            ProcessExit(_) => Category::ProcessTermination,
            ProcessFork(_) => Category::ProcessFork,
            FileOpen(e) if e.write => Category::FileEvent,
            FileOpen(_) => Category::FileAccess,
            FileChmod(_) | FileChown(_) => Category::FileChange,
            FileUnlink(_) => Category::FileDelete,
            FileRename(_) => Category::FileRename,
            NetConnect(_) | NetAccept(_) => Category::NetworkConnection,
            NetListen(_) => Category::NetworkListen,
            NetVolume(_) => Category::NetworkVolume,
            MemoryRwx(_) => Category::MemoryRwx,
            PrivSetid(_) | PrivCapset(_) => Category::PrivilegeChange,
            PrivPtrace(_) => Category::ProcessAccess,
            PrivModuleLoad(_) => Category::ModuleLoad,
            PrivBpf(_) => Category::Bpf,
            PrivMemfdCreate(_) => Category::MemfdCreate,
            AuthFailure(_) | AuthSuccess(_) => Category::Authentication,
            IntegrityFileChanged(_)
            | IntegrityFileAdded(_)
            | IntegrityFileRemoved(_)
            | IntegrityBaselineTampered(_) => Category::FileIntegrity,
            BackupCorrupt(_) | BackupMissing(_) | BackupUnexpected(_) => Category::Backup,
            CertExpiring(_) | CertExpired(_) | CertNotYetValid(_) | CertRevoked(_)
            | CertInvalid(_) => Category::Certificate,
            HealDone(_) | HealFailed(_) => Category::Heal,
            HostMetrics(_) => Category::HostMetrics,
            EventLoss(_) | Heartbeat(_) | TamperAttempt(_) => Category::AgentHealth,
            Enforcement(_) | ResponseRollback(_) | ResponseFollowUp(_) => Category::Enforcement,
        }
    }
}

/// How a field's values are typed; decides how plain rule values compare with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    Text,
    Int,
    Float,
    Bool,
    Ip,
}

macro_rules! fields {
    ($($variant:ident => $name:literal : $ty:ident),+ $(,)?) => {
        /// A field a rule can test. Names are Sigma's where Sigma has one.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum FieldId { $($variant),+ }

        impl FieldId {
            pub const ALL: &'static [FieldId] = &[$(FieldId::$variant),+];

            pub fn name(self) -> &'static str {
                match self { $(FieldId::$variant => $name),+ }
            }

            pub fn field_type(self) -> FieldType {
                match self { $(FieldId::$variant => FieldType::$ty),+ }
            }
        }
    };
}

fields! {
    // Every event.
    ComputerName => "ComputerName": Text,
    QscKind => "QscKind": Text,
    QscSource => "QscSource": Text,
    // The process block.
    Image => "Image": Text,
    CommandLine => "CommandLine": Text,
    ProcessId => "ProcessId": Int,
    ParentProcessId => "ParentProcessId": Int,
    ProcessGuid => "ProcessGuid": Text,
    ParentProcessGuid => "ParentProcessGuid": Text,
    ParentImage => "ParentImage": Text,
    ParentComm => "ParentComm": Text,
    User => "User": Text,
    Uid => "Uid": Int,
    Gid => "Gid": Int,
    Comm => "Comm": Text,
    ContainerId => "ContainerId": Text,
    // Process lifecycle.
    ExitCode => "ExitCode": Int,
    Signal => "Signal": Int,
    ChildProcessId => "ChildProcessId": Int,
    ImageFolderWorldWritable => "ImageFolderWorldWritable": Bool,
    // Files.
    TargetFilename => "TargetFilename": Text,
    SourceFilename => "SourceFilename": Text,
    OpenFlags => "OpenFlags": Int,
    FileMode => "FileMode": Int,
    SetuidBit => "SetuidBit": Bool,
    SetgidBit => "SetgidBit": Bool,
    NewOwnerUid => "NewOwnerUid": Int,
    NewOwnerGid => "NewOwnerGid": Int,
    // Network.
    Initiated => "Initiated": Bool,
    Protocol => "Protocol": Text,
    SourceIp => "SourceIp": Ip,
    SourcePort => "SourcePort": Int,
    DestinationIp => "DestinationIp": Ip,
    DestinationPort => "DestinationPort": Int,
    DestinationIsIpv6 => "DestinationIsIpv6": Bool,
    BytesOut => "BytesOut": Int,
    BytesIn => "BytesIn": Int,
    IntervalMs => "IntervalMs": Int,
    // Memory and privilege.
    MemorySource => "MemorySource": Text,
    MemoryRegion => "MemoryRegion": Text,
    MemoryProtection => "MemoryProtection": Int,
    MemoryLength => "MemoryLength": Int,
    Syscall => "Syscall": Text,
    SetidIds => "SetidIds": Text,
    SetidToRoot => "SetidToRoot": Bool,
    TargetProcessId => "TargetProcessId": Int,
    CapEffective => "CapEffective": Int,
    PtraceRequest => "PtraceRequest": Int,
    BpfCommand => "BpfCommand": Int,
    MemfdName => "MemfdName": Text,
    MemfdFlags => "MemfdFlags": Int,
    // Authentication.
    AuthService => "AuthService": Text,
    Detail => "Detail": Text,
    // Integrity, backups, certificates, healing.
    Changes => "Changes": Text,
    OldHash => "OldHash": Text,
    NewHash => "NewHash": Text,
    Hash => "Hash": Text,
    BaselineStore => "BaselineStore": Text,
    Reason => "Reason": Text,
    BackupSet => "BackupSet": Text,
    ExpectedHash => "ExpectedHash": Text,
    ActualHash => "ActualHash": Text,
    CertLocation => "CertLocation": Text,
    CertSubject => "CertSubject": Text,
    CertIssuer => "CertIssuer": Text,
    CertSerial => "CertSerial": Text,
    CertDaysLeft => "CertDaysLeft": Int,
    HealError => "HealError": Text,
    // Host metrics.
    CpuPct => "CpuPct": Float,
    MemUsedBytes => "MemUsedBytes": Int,
    ProcessCount => "ProcessCount": Int,
    FailedLogins => "FailedLogins": Int,
    NewProcesses => "NewProcesses": Int,
    NewConnections => "NewConnections": Int,
    NetTxBytes => "NetTxBytes": Int,
    // Agent health.
    LossStage => "LossStage": Text,
    LostEvents => "LostEvents": Int,
    LostTotal => "LostTotal": Int,
    AgentVersion => "AgentVersion": Text,
    UptimeSeconds => "UptimeSeconds": Int,
    TamperAction => "TamperAction": Text,
    // Enforcement by the kernel.
    EnforcementAction => "EnforcementAction": Text,
    EnforcementTarget => "EnforcementTarget": Text,
}

/// Sigma taxonomy fields that QSC events do not carry: rules that need them are skipped with
/// [`RuleError::FieldUnavailable`](super::RuleError::FieldUnavailable) instead of silently never
/// matching.
const UNAVAILABLE_SIGMA_FIELDS: &[&str] = &[
    "CurrentDirectory",
    "LogonId",
    "LogonGuid",
    "ParentCommandLine",
    "ParentUser",
    "OriginalFileName",
    "Description",
    "Product",
    "Company",
    "FileVersion",
    "IntegrityLevel",
    "TerminalSessionId",
    "Hashes",
    "md5",
    "sha1",
    "sha256",
    "Imphash",
    "DestinationHostname",
    "SourceHostname",
    "DestinationPortName",
    "SourcePortName",
    "CreationUtcTime",
    "UtcTime",
];

/// What resolving a rule's field name gave.
#[derive(Debug, PartialEq, Eq)]
pub enum FieldLookup {
    Known(FieldId),
    Unavailable,
    Unknown,
}

/// Resolves a field name as written in a rule (ASCII case-insensitive).
pub fn lookup_field(name: &str) -> FieldLookup {
    let alias = match name {
        n if n.eq_ignore_ascii_case("Hostname") => Some(FieldId::ComputerName),
        n if n.eq_ignore_ascii_case("ProcessName") => Some(FieldId::Comm),
        _ => None,
    };
    if let Some(field) = alias {
        return FieldLookup::Known(field);
    }
    if let Some(field) = FieldId::ALL
        .iter()
        .find(|f| f.name().eq_ignore_ascii_case(name))
    {
        return FieldLookup::Known(*field);
    }
    if UNAVAILABLE_SIGMA_FIELDS
        .iter()
        .any(|f| f.eq_ignore_ascii_case(name))
    {
        FieldLookup::Unavailable
    } else {
        FieldLookup::Unknown
    }
}

/// One field value of one event, borrowed from the event or the scratch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FieldValue<'a> {
    Text(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    Ip(IpAddr, &'a str),
}

impl FieldValue<'_> {
    /// Calls `f` with the value as text; numbers are rendered on the stack, not the heap.
    pub fn with_text<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match *self {
            FieldValue::Text(s) | FieldValue::Ip(_, s) => f(s),
            FieldValue::Bool(b) => f(if b { "true" } else { "false" }),
            FieldValue::Int(n) => {
                let mut buf = StackText::default();
                let _ = write!(buf, "{n}");
                f(buf.as_str())
            }
            FieldValue::Float(x) => {
                let mut buf = StackText::default();
                let _ = write!(buf, "{x}");
                f(buf.as_str())
            }
        }
    }

    pub fn as_number(&self) -> Option<f64> {
        match *self {
            FieldValue::Int(n) => Some(n as f64),
            FieldValue::Float(x) => Some(x),
            FieldValue::Text(s) => s.trim().parse().ok(),
            FieldValue::Bool(_) | FieldValue::Ip(..) => None,
        }
    }
}

/// A small fixed buffer for rendering numbers without allocating; longer output is truncated
/// (no number renders longer than its capacity).
struct StackText {
    buf: [u8; 64],
    len: usize,
}

impl Default for StackText {
    fn default() -> Self {
        StackText {
            buf: [0; 64],
            len: 0,
        }
    }
}

impl StackText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Reusable buffers for the strings an event does not hold ready-made.
#[derive(Debug, Default)]
pub struct Scratch {
    command_line: String,
    source_ip: String,
    destination_ip: String,
    joined: String,
}

/// One event as seen by rules.
pub struct FieldView<'e> {
    event: &'e Event,
    process: Option<&'e ProcessInfo>,
    category: Category,
    command_line: &'e str,
    source_ip: &'e str,
    destination_ip: &'e str,
    joined: &'e str,
}

impl<'e> FieldView<'e> {
    pub fn new(event: &'e Event, scratch: &'e mut Scratch) -> Self {
        let Scratch {
            command_line,
            source_ip,
            destination_ip,
            joined,
        } = scratch;
        render_command_line(event, command_line);
        let (src, dst) = endpoints(event);
        render_ip(src, source_ip);
        render_ip(dst, destination_ip);
        render_joined(event, joined);
        FieldView {
            event,
            process: event.process(),
            category: Category::of(event),
            command_line,
            source_ip,
            destination_ip,
            joined,
        }
    }

    pub fn category(&self) -> Category {
        self.category
    }

    /// The value of `field`, or `None` when this event does not have it.
    pub fn get(&self, field: FieldId) -> Option<FieldValue<'e>> {
        let event = self.event;
        match field {
            FieldId::ComputerName => Some(FieldValue::Text(&event.host_id)),
            FieldId::QscKind => Some(FieldValue::Text(event.kind.name())),
            FieldId::QscSource => Some(FieldValue::Text(match event.source {
                qsc_event::Source::Alpha => "alpha",
                qsc_event::Source::Beta => "beta",
                qsc_event::Source::Cortex => "cortex",
            })),
            FieldId::CommandLine => self.process.map(|_| FieldValue::Text(self.command_line)),
            FieldId::SourceIp => ip_of(endpoints(event).0, self.source_ip),
            FieldId::DestinationIp => ip_of(endpoints(event).1, self.destination_ip),
            FieldId::Changes | FieldId::SetidIds => matches!(
                (&event.kind, field),
                (EventKind::IntegrityFileChanged(_), FieldId::Changes)
                    | (EventKind::PrivSetid(_), FieldId::SetidIds)
            )
            .then_some(FieldValue::Text(self.joined)),
            _ => process_field(self.process, field).or_else(|| kind_field(&event.kind, field)),
        }
    }
}

fn ip_of<'e>(ip: Option<IpAddr>, text: &'e str) -> Option<FieldValue<'e>> {
    ip.map(|ip| FieldValue::Ip(ip, text))
}

fn render_command_line(event: &Event, out: &mut String) {
    out.clear();
    let Some(process) = event.process() else {
        return;
    };
    // The agent's cmdline (from /proc) is complete; the kernel argv is the fallback.
    let args: &[String] = match &event.kind {
        EventKind::ProcessExec(exec) if process.cmdline.is_empty() => &exec.argv,
        _ => &process.cmdline,
    };
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(arg);
    }
}

fn render_ip(ip: Option<IpAddr>, out: &mut String) {
    out.clear();
    if let Some(ip) = ip {
        let _ = write!(out, "{ip}");
    }
}

/// Renders the list-valued field of the kinds that have one, comma-separated.
fn render_joined(event: &Event, out: &mut String) {
    out.clear();
    match &event.kind {
        EventKind::IntegrityFileChanged(e) => {
            for (i, change) in e.changes.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(change);
            }
        }
        EventKind::PrivSetid(e) => {
            for (i, id) in e.ids.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{id}");
            }
        }
        _ => {}
    }
}

/// (source, destination) addresses; for `net_accept` the remote peer is the source.
fn endpoints(event: &Event) -> (Option<IpAddr>, Option<IpAddr>) {
    match &event.kind {
        EventKind::NetConnect(c) | EventKind::NetAccept(c) => (Some(c.src_ip), Some(c.dst_ip)),
        EventKind::NetListen(l) => (Some(l.ip), None),
        EventKind::NetVolume(v) => (None, Some(v.remote_ip)),
        EventKind::AuthFailure(a) | EventKind::AuthSuccess(a) => (a.remote_ip, None),
        _ => (None, None),
    }
}

fn text(s: &str) -> Option<FieldValue<'_>> {
    Some(FieldValue::Text(s))
}

fn opt_text(s: &Option<impl AsRef<str>>) -> Option<FieldValue<'_>> {
    s.as_ref().map(|s| FieldValue::Text(s.as_ref()))
}

fn int(n: impl Into<i64>) -> Option<FieldValue<'static>> {
    Some(FieldValue::Int(n.into()))
}

fn uint(n: u64) -> Option<FieldValue<'static>> {
    Some(FieldValue::Int(i64::try_from(n).unwrap_or(i64::MAX)))
}

fn process_field(process: Option<&ProcessInfo>, field: FieldId) -> Option<FieldValue<'_>> {
    let p = process?;
    let parent = p.ancestry.first();
    match field {
        FieldId::Image => opt_text(&p.exe),
        FieldId::ProcessId => int(p.pid),
        FieldId::ParentProcessId => int(p.ppid),
        FieldId::ProcessGuid => text(&p.guid),
        FieldId::ParentProcessGuid => parent.map(|a| FieldValue::Text(&a.guid)),
        FieldId::ParentImage => parent.and_then(|a| opt_text(&a.exe)),
        FieldId::ParentComm => parent.map(|a| FieldValue::Text(&a.comm)),
        FieldId::User => opt_text(&p.user),
        FieldId::Uid => int(p.uid),
        FieldId::Gid => int(p.gid),
        FieldId::Comm => text(&p.comm),
        FieldId::ContainerId => opt_text(&p.container_id),
        _ => None,
    }
}

fn kind_field(kind: &EventKind, field: FieldId) -> Option<FieldValue<'_>> {
    use EventKind::*;
    use FieldId as F;
    match (kind, field) {
        // The exec'd path is what `Image` means at creation, even before `exe` is enriched.
        (ProcessExec(e), F::Image) => text(&e.filename),
        (ProcessExec(e), F::ImageFolderWorldWritable) => {
            e.folder_world_writable.map(FieldValue::Bool)
        }
        (ProcessExit(e), F::ExitCode) => int(e.exit_code),
        (ProcessExit(e), F::Signal) => e.signal.and_then(int),
        (ProcessFork(e), F::ChildProcessId) => int(e.child_pid),
        (FileOpen(e), F::TargetFilename) => text(&e.path),
        (FileOpen(e), F::OpenFlags) => int(e.flags),
        (FileChmod(e), F::TargetFilename) => text(&e.path),
        (FileChmod(e), F::FileMode) => int(e.mode),
        (FileChmod(e), F::SetuidBit) => Some(FieldValue::Bool(e.mode & 0o4000 != 0)),
        (FileChmod(e), F::SetgidBit) => Some(FieldValue::Bool(e.mode & 0o2000 != 0)),
        (FileChown(e), F::TargetFilename) => text(&e.path),
        (FileChown(e), F::NewOwnerUid) => int(e.uid),
        (FileChown(e), F::NewOwnerGid) => int(e.gid),
        (FileUnlink(e), F::TargetFilename) => text(&e.path),
        (FileRename(e), F::SourceFilename) => text(&e.path),
        (FileRename(e), F::TargetFilename) => text(&e.new_path),
        (NetConnect(_), F::Initiated) => Some(FieldValue::Bool(true)),
        (NetAccept(_), F::Initiated) => Some(FieldValue::Bool(false)),
        (NetConnect(c) | NetAccept(c), F::Protocol) => text(&c.protocol),
        (NetConnect(c) | NetAccept(c), F::SourcePort) => int(c.src_port),
        (NetConnect(c) | NetAccept(c), F::DestinationPort) => int(c.dst_port),
        (NetConnect(c) | NetAccept(c), F::DestinationIsIpv6) => {
            Some(FieldValue::Bool(c.dst_ip.is_ipv6()))
        }
        (NetListen(l), F::Protocol) => text(&l.protocol),
        (NetListen(l), F::SourcePort) => int(l.port),
        (NetVolume(v), F::BytesOut) => uint(v.bytes_out),
        (NetVolume(v), F::BytesIn) => uint(v.bytes_in),
        (NetVolume(v), F::IntervalMs) => uint(v.interval_ms),
        (NetVolume(v), F::DestinationIsIpv6) => Some(FieldValue::Bool(v.remote_ip.is_ipv6())),
        (MemoryRwx(m), F::MemorySource) => text(match m.origin {
            qsc_event::RwxSource::Mmap => "mmap",
            qsc_event::RwxSource::Mprotect => "mprotect",
            qsc_event::RwxSource::MapsScan => "maps_scan",
        }),
        (MemoryRwx(m), F::MemoryRegion) => opt_text(&m.region),
        (MemoryRwx(m), F::MemoryProtection) => int(m.prot),
        (MemoryRwx(m), F::MemoryLength) => uint(m.len),
        (PrivSetid(s), F::Syscall) => text(&s.call),
        (PrivSetid(s), F::SetidToRoot) => Some(FieldValue::Bool(s.ids.contains(&0))),
        (PrivCapset(c), F::TargetProcessId) => int(c.target_pid),
        (PrivCapset(c), F::CapEffective) => uint(c.effective),
        (PrivPtrace(p), F::PtraceRequest) => int(p.request),
        (PrivPtrace(p), F::TargetProcessId) => int(p.target_pid),
        (PrivModuleLoad(m), F::Syscall) => text(&m.call),
        (PrivBpf(b), F::BpfCommand) => int(b.cmd),
        (PrivMemfdCreate(m), F::MemfdName) => text(&m.name),
        (PrivMemfdCreate(m), F::MemfdFlags) => int(m.flags),
        (AuthFailure(a) | AuthSuccess(a), F::User) => text(&a.user),
        (AuthFailure(a) | AuthSuccess(a), F::AuthService) => text(&a.service),
        (AuthFailure(a) | AuthSuccess(a), F::Detail) => opt_text(&a.detail),
        (IntegrityFileChanged(e), F::TargetFilename) => text(&e.path),
        (IntegrityFileChanged(e), F::OldHash) => opt_text(&e.old_hash),
        (IntegrityFileChanged(e), F::NewHash) => opt_text(&e.new_hash),
        (IntegrityFileAdded(e) | IntegrityFileRemoved(e), F::TargetFilename) => text(&e.path),
        (IntegrityFileAdded(e) | IntegrityFileRemoved(e), F::Hash) => opt_text(&e.hash),
        (IntegrityBaselineTampered(e), F::BaselineStore) => text(&e.store),
        (IntegrityBaselineTampered(e), F::Reason) => text(&e.reason),
        (BackupCorrupt(b) | BackupMissing(b) | BackupUnexpected(b), f) => backup_field(b, f),
        (
            CertExpiring(c) | CertExpired(c) | CertNotYetValid(c) | CertRevoked(c) | CertInvalid(c),
            f,
        ) => certificate_field(c, f),
        (HealDone(h) | HealFailed(h), F::TargetFilename) => text(&h.path),
        (HealDone(h) | HealFailed(h), F::Hash) => opt_text(&h.hash),
        (HealDone(h) | HealFailed(h), F::HealError) => opt_text(&h.error),
        (HostMetrics(m), f) => metrics_field(m, f),
        (EventLoss(l), F::LossStage) => text(&l.stage),
        (EventLoss(l), F::LostEvents) => uint(l.lost),
        (EventLoss(l), F::LostTotal) => uint(l.total),
        (Heartbeat(h), F::AgentVersion) => text(&h.version),
        (Heartbeat(h), F::UptimeSeconds) => uint(h.uptime_s),
        (TamperAttempt(t), F::TamperAction) => text(&t.action),
        (TamperAttempt(t), F::Signal) => t.signal.and_then(int),
        (TamperAttempt(t), F::Detail) => opt_text(&t.detail),
        (Enforcement(e), F::EnforcementAction) => text(match e.action {
            qsc_event::EnforcementAction::ConnectBlocked => "connect_blocked",
            qsc_event::EnforcementAction::ExecKilled => "exec_killed",
            qsc_event::EnforcementAction::RevokedUidKilled => "revoked_uid_killed",
        }),
        (Enforcement(e), F::EnforcementTarget) => text(&e.target),
        _ => None,
    }
}

fn backup_field(b: &qsc_event::BackupFile, field: FieldId) -> Option<FieldValue<'_>> {
    match field {
        FieldId::BackupSet => text(&b.backup_set),
        FieldId::TargetFilename => text(&b.path),
        FieldId::ExpectedHash => opt_text(&b.expected_sha3_256),
        FieldId::ActualHash => opt_text(&b.actual_sha3_256),
        _ => None,
    }
}

fn certificate_field(c: &qsc_event::Certificate, field: FieldId) -> Option<FieldValue<'_>> {
    match field {
        FieldId::CertLocation => text(&c.location),
        FieldId::CertSubject => text(&c.subject),
        FieldId::CertIssuer => text(&c.issuer),
        FieldId::CertSerial => text(&c.serial),
        FieldId::CertDaysLeft => int(c.days_left),
        FieldId::Reason => opt_text(&c.reason),
        _ => None,
    }
}

fn metrics_field(m: &qsc_event::HostMetrics, field: FieldId) -> Option<FieldValue<'_>> {
    match field {
        FieldId::CpuPct => Some(FieldValue::Float(m.cpu_pct)),
        FieldId::MemUsedBytes => uint(m.mem_used_bytes),
        FieldId::ProcessCount => uint(m.process_count),
        FieldId::FailedLogins => uint(m.failed_logins),
        FieldId::NewProcesses => uint(m.new_processes),
        FieldId::NewConnections => uint(m.new_connections),
        FieldId::NetTxBytes => uint(m.net_tx_bytes),
        FieldId::IntervalMs => uint(m.interval_ms),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qsc_event::{NetConnection, ProcessExec, Source};

    #[test]
    fn exec_maps_to_process_creation_fields() {
        let event = Event::new(
            "web-01",
            Source::Alpha,
            1,
            EventKind::ProcessExec(ProcessExec {
                process: ProcessInfo {
                    pid: 10,
                    ppid: 9,
                    comm: "bash".into(),
                    ancestry: vec![qsc_event::Ancestor {
                        pid: 9,
                        comm: "nginx".into(),
                        exe: Some("/usr/sbin/nginx".into()),
                        guid: "g9".into(),
                    }],
                    ..Default::default()
                },
                filename: "/usr/bin/bash".into(),
                argv: vec!["bash".into(), "-i".into()],
                folder_world_writable: None,
            }),
        );
        let mut scratch = Scratch::default();
        let view = FieldView::new(&event, &mut scratch);
        assert_eq!(view.category(), Category::ProcessCreation);
        assert_eq!(
            view.get(FieldId::Image),
            Some(FieldValue::Text("/usr/bin/bash"))
        );
        assert_eq!(
            view.get(FieldId::CommandLine),
            Some(FieldValue::Text("bash -i"))
        );
        assert_eq!(
            view.get(FieldId::ParentImage),
            Some(FieldValue::Text("/usr/sbin/nginx"))
        );
        assert_eq!(view.get(FieldId::ProcessId), Some(FieldValue::Int(10)));
        assert_eq!(view.get(FieldId::DestinationIp), None);
        assert_eq!(view.get(FieldId::User), None);
    }

    #[test]
    fn connect_and_accept_differ_in_initiated() {
        let conn = NetConnection {
            process: ProcessInfo::default(),
            protocol: "tcp".into(),
            src_ip: "10.0.0.1".parse().unwrap(),
            src_port: 5555,
            dst_ip: "192.0.2.7".parse().unwrap(),
            dst_port: 443,
        };
        let mut scratch = Scratch::default();
        let event = Event::new("h", Source::Alpha, 1, EventKind::NetConnect(conn.clone()));
        let view = FieldView::new(&event, &mut scratch);
        assert_eq!(view.get(FieldId::Initiated), Some(FieldValue::Bool(true)));
        assert_eq!(
            view.get(FieldId::DestinationIp),
            Some(FieldValue::Ip(conn.dst_ip, "192.0.2.7"))
        );
        let event = Event::new("h", Source::Alpha, 2, EventKind::NetAccept(conn));
        let view = FieldView::new(&event, &mut scratch);
        assert_eq!(view.get(FieldId::Initiated), Some(FieldValue::Bool(false)));
    }

    #[test]
    fn field_lookup_distinguishes_unknown_and_unavailable() {
        assert_eq!(
            lookup_field("commandline"),
            FieldLookup::Known(FieldId::CommandLine)
        );
        assert_eq!(lookup_field("CurrentDirectory"), FieldLookup::Unavailable);
        assert_eq!(lookup_field("a0"), FieldLookup::Unknown);
    }

    #[test]
    fn every_category_name_round_trips() {
        for category in Category::ALL {
            assert_eq!(Category::from_name(category.name()), Some(category));
            assert_eq!(Category::ALL[category.index()], category);
        }
    }

    #[test]
    fn numbers_render_without_heap() {
        assert_eq!(FieldValue::Int(-42).with_text(str::to_owned), "-42");
        assert_eq!(FieldValue::Bool(true).with_text(str::to_owned), "true");
    }
}
