//! Loads the kernel program, fills its maps and globals, and attaches its tracepoints.
//! Dropping the [`Sensor`] detaches every program.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSockAddr, TracePoint},
};
use guardian_alpha_common::{
    AGENT_TGID_GLOBAL, BLOCKED_EXEC_MAP, BLOCKED_V4_MAP, BLOCKED_V6_MAP, BlockedV4, BlockedV6,
    ENFORCING_MAP, EVENTS_MAP, EXE_FOLDER_LAYOUT_GLOBAL, EnforceSwitch, ExeFolderLayout,
    KernelLayout, LAYOUT_GLOBAL, LOST_MAP, PATH_CAPTURE, REVOKED_UIDS_MAP, RecordKind,
    WAKE_AT_ONCE_GLOBAL, WAKE_SPACING_NS_GLOBAL, WAKEUP_BYTES_GLOBAL, WATCH_LIST_GLOBAL,
    WATCHED_PREFIXES_MAP, WatchFlags, WatchList,
};

/// The kernel object built by `cargo xtask build-ebpf`, embedded at compile time.
pub static EMBEDDED_OBJECT: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/guardian-alpha.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error(
        "this guardian-alpha was built without its kernel object; run `cargo xtask build-ebpf` and rebuild, or pass --ebpf-object PATH"
    )]
    NoObject,
    #[error("cannot read the kernel object {path}: {source}")]
    ReadObject {
        path: String,
        source: std::io::Error,
    },
    #[error("loading the eBPF object failed: {0} (are you root, or have CAP_BPF + CAP_PERFMON?)")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("required hook {hook} could not be attached: {source}")]
    Attach {
        hook: String,
        source: aya::programs::ProgramError,
    },
    #[error("hook {0} is not attached (see [sensor] disabled_hooks), so this cannot be enforced")]
    HookOff(&'static str),
    #[error("cannot mount tracefs at {path}: {source}")]
    Tracefs {
        path: String,
        source: std::io::Error,
    },
}

/// A group of hooks that `[sensor] disabled_hooks` turns off together: to shed a family's
/// in-kernel cost where its events are not wanted, or to measure what each family costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookFamily {
    /// exec, exit and fork (`sched_process_exec`, `sched_process_exit`, `task_newtask`).
    Process,
    /// Signals sent to the agent (`signal_generate`).
    Tamper,
    /// TCP connect/accept/listen (`inet_sock_set_state`).
    Network,
    /// open/chmod/chown/unlink/rename on watched paths.
    File,
    /// setuid/setgid/capset, ptrace, module load, bpf(), memfd_create; the setuid hooks also
    /// kill a switch to a revoked account.
    Privilege,
    /// Writable+executable mmap/mprotect.
    Memory,
    /// The execve check that kills blocked executables (`blocked_exec`, kill-on-exec actions)
    /// and the processes of revoked accounts.
    ExecBlocking,
}

/// Record kinds as `[sensor] wake_at_once` names them: the records that wake the agent at
/// once instead of waiting for the batch (`wakeup_bytes`, `max_delay_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WakeKind {
    /// A program started (`sched_process_exec`).
    Exec,
    /// A process ended.
    Exit,
    /// A process forked.
    Fork,
    /// open/chmod/chown/unlink on a watched path.
    File,
    /// A rename on a watched path.
    Rename,
    /// TCP connect, accept or listen.
    Net,
    /// Privilege changes, ptrace, module and BPF loads, memfd_create, RWX memory.
    Priv,
    /// A signal sent to the agent (tamper).
    Signal,
    /// The kernel killed a blocked exec or refused a blocked connect.
    Enforce,
}

impl WakeKind {
    /// The kernel's record kind.
    pub fn record_kind(self) -> RecordKind {
        match self {
            WakeKind::Exec => RecordKind::Exec,
            WakeKind::Exit => RecordKind::Exit,
            WakeKind::Fork => RecordKind::Fork,
            WakeKind::File => RecordKind::File,
            WakeKind::Rename => RecordKind::Rename,
            WakeKind::Net => RecordKind::Net,
            WakeKind::Priv => RecordKind::Priv,
            WakeKind::Signal => RecordKind::Signal,
            WakeKind::Enforce => RecordKind::Enforce,
        }
    }

    /// The kernel's `WAKE_AT_ONCE` mask for `kinds`: bit `1 << kind` each.
    pub fn mask(kinds: &[WakeKind]) -> u32 {
        kinds
            .iter()
            .fold(0, |mask, kind| mask | 1 << (kind.record_kind() as u32))
    }
}

/// One tracepoint program of the object and where it attaches.
pub struct Hook {
    pub program: &'static str,
    pub category: &'static str,
    pub family: HookFamily,
    /// Optional hooks may be missing on some kernels or architectures (e.g. `open` on arm64,
    /// `fchmodat2` before 6.6); the agent runs without them and says so.
    pub required: bool,
}

const fn hook(
    family: HookFamily,
    category: &'static str,
    program: &'static str,
    required: bool,
) -> Hook {
    Hook {
        program,
        category,
        family,
        required,
    }
}

use HookFamily::{ExecBlocking, File, Memory, Network, Privilege, Process, Tamper};

pub const HOOKS: &[Hook] = &[
    hook(Process, "sched", "sched_process_exec", true),
    hook(Process, "sched", "sched_process_exit", true),
    hook(Process, "task", "task_newtask", true),
    hook(Tamper, "signal", "signal_generate", true),
    hook(Network, "sock", "inet_sock_set_state", true),
    hook(File, "syscalls", "sys_enter_open", false),
    hook(File, "syscalls", "sys_enter_openat", true),
    hook(File, "syscalls", "sys_enter_openat2", false),
    hook(File, "syscalls", "sys_enter_creat", false),
    hook(File, "syscalls", "sys_enter_chmod", false),
    hook(File, "syscalls", "sys_enter_fchmodat", true),
    hook(File, "syscalls", "sys_enter_fchmodat2", false),
    hook(File, "syscalls", "sys_enter_chown", false),
    hook(File, "syscalls", "sys_enter_lchown", false),
    hook(File, "syscalls", "sys_enter_fchownat", true),
    hook(File, "syscalls", "sys_enter_unlink", false),
    hook(File, "syscalls", "sys_enter_unlinkat", true),
    hook(File, "syscalls", "sys_enter_rename", false),
    hook(File, "syscalls", "sys_enter_renameat", false),
    hook(File, "syscalls", "sys_enter_renameat2", true),
    hook(Privilege, "syscalls", "sys_enter_setuid", true),
    hook(Privilege, "syscalls", "sys_enter_setgid", true),
    hook(Privilege, "syscalls", "sys_enter_setreuid", true),
    hook(Privilege, "syscalls", "sys_enter_setregid", true),
    hook(Privilege, "syscalls", "sys_enter_setresuid", true),
    hook(Privilege, "syscalls", "sys_enter_setresgid", true),
    hook(Privilege, "syscalls", "sys_enter_capset", true),
    hook(Privilege, "syscalls", "sys_enter_ptrace", true),
    hook(Privilege, "syscalls", "sys_enter_init_module", false),
    hook(Privilege, "syscalls", "sys_enter_finit_module", false),
    hook(Privilege, "syscalls", "sys_enter_bpf", true),
    hook(Privilege, "syscalls", "sys_enter_memfd_create", true),
    hook(Memory, "syscalls", "sys_enter_mmap", true),
    hook(Memory, "syscalls", "sys_enter_mprotect", true),
    hook(ExecBlocking, "syscalls", "sys_enter_execve", true),
    hook(ExecBlocking, "syscalls", "sys_enter_execveat", false),
];

const EXECVE_HOOK: &str = "syscalls/sys_enter_execve";

/// The hooks that check [`Sensor::revoke_uid`]'s map.
const REVOKED_UID_HOOKS: &[&str] = &[
    EXECVE_HOOK,
    "task/task_newtask",
    "syscalls/sys_enter_setuid",
    "syscalls/sys_enter_setreuid",
    "syscalls/sys_enter_setresuid",
];

/// cgroup programs that refuse connects/sends to blocked addresses, attached to the v2 root.
const SOCK_ADDR_PROGRAMS: &[&str] = &[
    "block_connect4",
    "block_connect6",
    "block_sendmsg4",
    "block_sendmsg6",
];

/// The reason listed for hooks of a family that `[sensor] disabled_hooks` names.
pub const DISABLED_BY_CONFIG: &str = "disabled by [sensor] disabled_hooks";

/// The sensor shared between the agent's loop and the response executor (which updates its
/// block maps from the channel's thread).
pub type SharedSensor = std::sync::Arc<std::sync::Mutex<Sensor>>;

pub struct Sensor {
    ebpf: Ebpf,
    /// `category/name` of every attached hook.
    pub active_hooks: Vec<String>,
    /// Optional hooks that could not be attached, with the reason.
    pub skipped_hooks: Vec<(String, String)>,
}

pub struct SensorOptions<'a> {
    pub object: &'a [u8],
    pub ring_buffer_bytes: u32,
    pub layout: KernelLayout,
    /// The exec hook's offsets to the executable's folder.
    pub exe_folder: ExeFolderLayout,
    pub agent_tgid: u32,
    /// The cgroup v2 folder the address-blocking programs attach to (None: not attached).
    pub enforce_cgroup: Option<&'a Path>,
    /// Bytes of waiting records below which a new record does not wake the agent.
    pub wakeup_bytes: u64,
    /// Record kinds that wake the agent at once ([`WakeKind::mask`]).
    pub wake_at_once: u32,
    /// Least time between two wake-ups those kinds force from one CPU (ns; 0: no spacing).
    pub wake_spacing_ns: u64,
    /// Hook families left unattached.
    pub disabled: &'a [HookFamily],
    /// Path prefixes whose file activity is reported, and what is reported under each.
    pub watched: &'a [(String, WatchFlags)],
}

/// Reads the object from `path`, or returns the embedded one.
pub fn object_bytes(path: Option<&Path>) -> Result<std::borrow::Cow<'static, [u8]>, SensorError> {
    match path {
        Some(path) => std::fs::read(path)
            .map(std::borrow::Cow::Owned)
            .map_err(|source| SensorError::ReadObject {
                path: path.display().to_string(),
                source,
            }),
        None if EMBEDDED_OBJECT.is_empty() => Err(SensorError::NoObject),
        None => Ok(std::borrow::Cow::Borrowed(EMBEDDED_OBJECT)),
    }
}

/// Mounts tracefs at `path` when its `events` folder is missing.
pub fn ensure_tracefs(path: &Path) -> Result<(), SensorError> {
    if path.join("events").is_dir() {
        return Ok(());
    }
    let err = |source| SensorError::Tracefs {
        path: path.display().to_string(),
        source,
    };
    let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| err(std::io::Error::other("path contains NUL")))?;
    let fstype = c"tracefs";
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Fills the prefix trie, which decides when the prefixes do not fit the inline [`WatchList`].
fn set_watched_prefixes(
    ebpf: &mut Ebpf,
    prefixes: &[(String, WatchFlags)],
) -> Result<(), SensorError> {
    let map_err = |source| SensorError::Map {
        map: "WATCHED_PREFIXES",
        source,
    };
    let map = ebpf
        .map_mut(WATCHED_PREFIXES_MAP)
        .ok_or(SensorError::Missing("WATCHED_PREFIXES map"))?;
    let mut trie: LpmTrie<&mut MapData, [u8; PATH_CAPTURE], WatchFlags> =
        LpmTrie::try_from(map).map_err(map_err)?;
    for (prefix, flags) in prefixes {
        let len = prefix.len().min(PATH_CAPTURE - 1);
        trie.insert(&Key::new((len * 8) as u32, path_key(prefix)), flags, 0)
            .map_err(map_err)?;
    }
    Ok(())
}

impl Sensor {
    pub fn load(options: &SensorOptions) -> Result<Self, SensorError> {
        let watch_list = WatchList::new(options.watched.iter().map(|(p, f)| (p.as_bytes(), *f)));
        let matching = if watch_list.use_trie == 0 {
            "inline compare"
        } else {
            "LPM trie (too many or too long to compare inline)"
        };
        tracing::info!(
            prefixes = options.watched.len(),
            matching,
            "watched path prefixes"
        );
        let mut ebpf = EbpfLoader::new()
            .override_global(WATCH_LIST_GLOBAL, &watch_list, true)
            .override_global(AGENT_TGID_GLOBAL, &options.agent_tgid, true)
            .override_global(LAYOUT_GLOBAL, &options.layout, true)
            .override_global(EXE_FOLDER_LAYOUT_GLOBAL, &options.exe_folder, true)
            .override_global(WAKEUP_BYTES_GLOBAL, &options.wakeup_bytes, true)
            .override_global(WAKE_AT_ONCE_GLOBAL, &options.wake_at_once, true)
            .override_global(WAKE_SPACING_NS_GLOBAL, &options.wake_spacing_ns, true)
            .map_max_entries(EVENTS_MAP, options.ring_buffer_bytes)
            .load(options.object)?;
        if watch_list.use_trie != 0 {
            set_watched_prefixes(&mut ebpf, options.watched)?;
        }
        let mut active_hooks = Vec::new();
        let mut skipped_hooks = Vec::new();
        for hook in HOOKS {
            let id = format!("{}/{}", hook.category, hook.program);
            if options.disabled.contains(&hook.family) {
                skipped_hooks.push((id, DISABLED_BY_CONFIG.into()));
                continue;
            }
            match attach(&mut ebpf, hook) {
                Ok(()) => active_hooks.push(id),
                Err(source) if hook.required => {
                    return Err(SensorError::Attach { hook: id, source });
                }
                Err(source) => skipped_hooks.push((id, source.to_string())),
            }
        }
        if let Some(cgroup) = options.enforce_cgroup {
            for program in SOCK_ADDR_PROGRAMS {
                let id = format!("cgroup/{program}");
                match attach_sock_addr(&mut ebpf, program, cgroup) {
                    Ok(()) => active_hooks.push(id),
                    Err(reason) => skipped_hooks.push((id, reason)),
                }
            }
        }
        Ok(Sensor {
            ebpf,
            active_hooks,
            skipped_hooks,
        })
    }

    pub fn take_ring_buffer(&mut self) -> Result<RingBuf<MapData>, SensorError> {
        let map = self
            .ebpf
            .take_map(EVENTS_MAP)
            .ok_or(SensorError::Missing("EVENTS ring buffer"))?;
        RingBuf::try_from(map).map_err(|source| SensorError::Map {
            map: "EVENTS",
            source,
        })
    }

    /// True when the cgroup programs that enforce [`Sensor::block_ip`] are attached.
    pub fn blocks_addresses(&self) -> bool {
        SOCK_ADDR_PROGRAMS.iter().all(|p| {
            self.active_hooks
                .iter()
                .any(|h| h.strip_prefix("cgroup/") == Some(*p))
        })
    }

    /// Refuses connects/sends to `ip` (until [`Sensor::unblock_ip`]).
    pub fn block_ip(&mut self, ip: std::net::IpAddr) -> Result<(), SensorError> {
        match ip {
            std::net::IpAddr::V4(v4) => {
                let mut map = self.hash_map::<BlockedV4>(BLOCKED_V4_MAP)?;
                map.insert(BlockedV4 { addr: v4.octets() }, 1, 0)
            }
            std::net::IpAddr::V6(v6) => {
                let mut map = self.hash_map::<BlockedV6>(BLOCKED_V6_MAP)?;
                map.insert(BlockedV6 { addr: v6.octets() }, 1, 0)
            }
        }
        .map_err(|source| SensorError::Map {
            map: "BLOCKED_IP",
            source,
        })
    }

    pub fn unblock_ip(&mut self, ip: std::net::IpAddr) -> Result<(), SensorError> {
        let result = match ip {
            std::net::IpAddr::V4(v4) => self
                .hash_map::<BlockedV4>(BLOCKED_V4_MAP)?
                .remove(&BlockedV4 { addr: v4.octets() }),
            std::net::IpAddr::V6(v6) => self
                .hash_map::<BlockedV6>(BLOCKED_V6_MAP)?
                .remove(&BlockedV6 { addr: v6.octets() }),
        };
        match result {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(SensorError::Map {
                map: "BLOCKED_IP",
                source,
            }),
        }
    }

    /// Kills any process that execs exactly `path` (as passed to execve) before it runs.
    pub fn block_exec(&mut self, path: &str) -> Result<(), SensorError> {
        if let Some(hook) = self.missing_hook(&[EXECVE_HOOK]) {
            return Err(SensorError::HookOff(hook));
        }
        let key = path_key(path);
        self.hash_map::<[u8; PATH_CAPTURE]>(BLOCKED_EXEC_MAP)?
            .insert(key, 1, 0)
            .map_err(|source| SensorError::Map {
                map: "BLOCKED_EXEC",
                source,
            })?;
        self.switch_on(EnforceSwitch::BlockedExec)
    }

    /// True when the hooks that make a revoked uid unusable are attached: exec, fork and the
    /// setuid family.
    pub fn denies_uids(&self) -> bool {
        self.missing_hook(REVOKED_UID_HOOKS).is_none()
    }

    /// Makes `uid` unusable (until [`Sensor::restore_uid`]): a process running as it is killed
    /// when it execs or forks, one switching to it is killed in the call.
    pub fn revoke_uid(&mut self, uid: u32) -> Result<(), SensorError> {
        if let Some(hook) = self.missing_hook(REVOKED_UID_HOOKS) {
            return Err(SensorError::HookOff(hook));
        }
        self.hash_map::<u32>(REVOKED_UIDS_MAP)?
            .insert(uid, 1, 0)
            .map_err(|source| SensorError::Map {
                map: "REVOKED_UIDS",
                source,
            })?;
        self.switch_on(EnforceSwitch::RevokedUids)
    }

    /// Lifts [`Sensor::revoke_uid`]; a uid that is not revoked is left as it is.
    pub fn restore_uid(&mut self, uid: u32) -> Result<(), SensorError> {
        match self.hash_map::<u32>(REVOKED_UIDS_MAP)?.remove(&uid) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(SensorError::Map {
                map: "REVOKED_UIDS",
                source,
            }),
        }
    }

    /// The first of `hooks` that is not attached.
    fn missing_hook(&self, hooks: &[&'static str]) -> Option<&'static str> {
        hooks
            .iter()
            .find(|hook| !self.active_hooks.iter().any(|h| h == *hook))
            .copied()
    }

    /// Turns on a check the hooks skip while the agent enforces nothing of its kind.
    fn switch_on(&mut self, switch: EnforceSwitch) -> Result<(), SensorError> {
        let map_err = |source| SensorError::Map {
            map: "ENFORCING",
            source,
        };
        let map = self
            .ebpf
            .map_mut(ENFORCING_MAP)
            .ok_or(SensorError::Missing("ENFORCING map"))?;
        let mut flags: Array<&mut MapData, u32> = Array::try_from(map).map_err(map_err)?;
        flags.set(switch as u32, 1, 0).map_err(map_err)
    }

    fn hash_map<K: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<aya::maps::HashMap<&mut MapData, K, u64>, SensorError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(SensorError::Missing("block map"))?;
        aya::maps::HashMap::try_from(map).map_err(|source| SensorError::Map { map: name, source })
    }

    /// Records the kernel could not deliver since load, per record kind, summed over CPUs.
    pub fn lost_records(&self) -> Result<Vec<(RecordKind, u64)>, SensorError> {
        let map_err = |source| SensorError::Map {
            map: "LOST",
            source,
        };
        let map = self
            .ebpf
            .map(LOST_MAP)
            .ok_or(SensorError::Missing("LOST counter"))?;
        let counter: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(map_err)?;
        RecordKind::ALL
            .iter()
            .map(|&kind| {
                let per_cpu = counter.get(&(kind as u32), 0).map_err(map_err)?;
                Ok((kind, per_cpu.iter().sum()))
            })
            .collect()
    }
}

/// `path` as the kernel compares it: NUL-padded, truncated to fit with its NUL.
fn path_key(path: &str) -> [u8; PATH_CAPTURE] {
    let mut data = [0u8; PATH_CAPTURE];
    let bytes = path.as_bytes();
    let len = bytes.len().min(PATH_CAPTURE - 1);
    data[..len].copy_from_slice(&bytes[..len]);
    data
}

fn attach_sock_addr(ebpf: &mut Ebpf, name: &str, cgroup: &Path) -> Result<(), String> {
    let program: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("no program {name} in the object"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    program.load().map_err(|e| e.to_string())?;
    let dir = std::fs::File::open(cgroup).map_err(|e| format!("{}: {e}", cgroup.display()))?;
    // Attached as a bpf_link (flags 0): links are multi-attach by nature, so several agents
    // (or tests) can enforce at once and every one of their programs must pass.
    program
        .attach(dir, CgroupAttachMode::Single)
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The cgroup v2 mount: `/sys/fs/cgroup` on a pure v2 host, `/sys/fs/cgroup/unified` on a
/// hybrid one.
pub fn cgroup_v2_root() -> Option<std::path::PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| {
            p.join("cgroup.controllers").exists() || p.join("cgroup.subtree_control").exists()
        })
}

fn attach(ebpf: &mut Ebpf, hook: &Hook) -> Result<(), aya::programs::ProgramError> {
    let program: &mut TracePoint = ebpf
        .program_mut(hook.program)
        .ok_or_else(|| aya::programs::ProgramError::UnexpectedProgramType)?
        .try_into()?;
    program.load()?;
    program.attach(hook.category, hook.program)?;
    Ok(())
}
