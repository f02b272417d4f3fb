//! Enforcement in the kernel, where it can act alone and before the action completes:
//! connects/sends to blocked addresses are refused (cgroup sock_addr programs on the v2
//! hierarchy, so they apply to every process and network namespace below it); exec of a
//! blocked path kills the caller before the new image runs (`bpf_send_signal` at
//! `sys_enter_execve`); and a revoked account's uid is unusable: a process running as it is
//! killed when it execs or forks, and any process asking to become it (setuid family, as a
//! login does) is killed before the call returns. The agent fills the maps; each refusal is
//! reported.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_kernel_buf,
        bpf_probe_read_user_str_bytes, generated::bpf_send_signal,
    },
    macros::{cgroup_sock_addr, map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, ring_buf::RingBufEntry},
    programs::{SockAddrContext, TracePointContext},
};
use guardian_alpha_common::{
    BlockedV4, BlockedV6, EnforceOp, EnforceRecord, EnforceSwitch, PATH_CAPTURE, RecordKind,
    net::{AF_INET, AF_INET6},
};

use crate::record::{fill_header, is_agent, record_mut, reserve, submit_flags, syscall_arg};

const ALLOW: i32 = 1;
const DENY: i32 = 0;
const SIGKILL: u32 = 9;
/// `(uid_t)-1`: "leave this id unchanged" in setreuid/setresuid.
const UNCHANGED_UID: u32 = u32::MAX;

#[map]
static BLOCKED_V4: HashMap<BlockedV4, u64> = HashMap::with_max_entries(65536, 0);

#[map]
static BLOCKED_V6: HashMap<BlockedV6, u64> = HashMap::with_max_entries(65536, 0);

/// Blocked executable paths (NUL-padded), as passed to execve.
#[map]
static BLOCKED_EXEC: HashMap<[u8; PATH_CAPTURE], u64> = HashMap::with_max_entries(4096, 0);

/// Uids of revoked accounts (the value is unused).
#[map]
static REVOKED_UIDS: HashMap<u32, u64> = HashMap::with_max_entries(4096, 0);

/// Slot [`EnforceSwitch`] is non-zero once the agent enforces it. Until then a hook costs one
/// array lookup instead of a path copy and a 256-byte hash lookup (exec), or a hash lookup per
/// fork and setuid.
#[map]
static ENFORCING: Array<u32> = Array::with_max_entries(EnforceSwitch::COUNT, 0);

#[map]
static EXEC_SCRATCH: PerCpuArray<[u8; PATH_CAPTURE]> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn enforcing(switch: EnforceSwitch) -> bool {
    ENFORCING.get(switch as u32).is_some_and(|&on| on != 0)
}

/// A reserved enforcement record with its header filled and every other field zero.
#[inline(always)]
fn reserve_enforce(op: EnforceOp) -> Option<RingBufEntry<EnforceRecord>> {
    let mut entry = reserve::<EnforceRecord>(RecordKind::Enforce)?;
    let record = record_mut(&mut entry);
    fill_header(&mut record.header, RecordKind::Enforce, op as u16);
    record.family = 0;
    record.port = 0;
    record.uid = 0;
    record.addr = [0; 16];
    record.path[0] = 0;
    Some(entry)
}

fn report_blocked(family: u16, addr: [u8; 16], port: u16) {
    let Some(mut entry) = reserve_enforce(EnforceOp::ConnectBlocked) else {
        return;
    };
    let record = record_mut(&mut entry);
    record.family = family;
    record.port = port;
    record.addr = addr;
    entry.submit(submit_flags(RecordKind::Enforce));
}

/// `user_port` is the port in network byte order in the low 16 bits.
fn host_port(user_port: u32) -> u16 {
    u16::from_be(user_port as u16)
}

fn check_v4(ip4: u32, port: u32) -> i32 {
    let addr = ip4.to_ne_bytes();
    if unsafe { BLOCKED_V4.get(&BlockedV4 { addr }) }.is_none() {
        return ALLOW;
    }
    let mut full = [0u8; 16];
    full[..4].copy_from_slice(&addr);
    report_blocked(AF_INET, full, host_port(port));
    DENY
}

fn check_v6(words: [u32; 4], port: u32) -> i32 {
    let mut addr = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        addr[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    // An IPv4-mapped address (::ffff:a.b.c.d) must not bypass an IPv4 block.
    if addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff {
        return check_v4(words[3], port);
    }
    if unsafe { BLOCKED_V6.get(&BlockedV6 { addr }) }.is_none() {
        return ALLOW;
    }
    report_blocked(AF_INET6, addr, host_port(port));
    DENY
}

#[cgroup_sock_addr(connect4)]
pub fn block_connect4(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &*ctx.sock_addr };
    check_v4(sa.user_ip4, sa.user_port)
}

#[cgroup_sock_addr(connect6)]
pub fn block_connect6(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &*ctx.sock_addr };
    check_v6(sa.user_ip6, sa.user_port)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn block_sendmsg4(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &*ctx.sock_addr };
    check_v4(sa.user_ip4, sa.user_port)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn block_sendmsg6(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &*ctx.sock_addr };
    check_v6(sa.user_ip6, sa.user_port)
}

#[tracepoint(category = "syscalls", name = "sys_enter_execve")]
pub fn sys_enter_execve(ctx: TracePointContext) {
    enforce_exec(syscall_arg(&ctx, 0));
}

#[tracepoint(category = "syscalls", name = "sys_enter_execveat")]
pub fn sys_enter_execveat(ctx: TracePointContext) {
    enforce_exec(syscall_arg(&ctx, 1));
}

fn enforce_exec(filename: u64) {
    if is_agent() {
        return;
    }
    if enforcing(EnforceSwitch::RevokedUids) && kill_revoked_exec(filename) {
        return;
    }
    if enforcing(EnforceSwitch::BlockedExec) {
        kill_blocked_exec(filename);
    }
}

/// The caller's real uid (what a login's setuid and `runuser` set).
#[inline(always)]
fn caller_uid() -> u32 {
    bpf_get_current_uid_gid() as u32
}

#[inline(always)]
fn is_revoked(uid: u32) -> bool {
    unsafe { REVOKED_UIDS.get(&uid) }.is_some()
}

/// Never killed for a revoked uid, whatever the map holds: init.
#[inline(always)]
fn is_init() -> bool {
    bpf_get_current_pid_tgid() >> 32 == 1
}

/// Kills the caller when it runs as a revoked uid; true when it did.
fn kill_revoked_exec(filename: u64) -> bool {
    let uid = caller_uid();
    if !is_revoked(uid) || is_init() {
        return false;
    }
    unsafe { bpf_send_signal(SIGKILL) };
    if let Some(mut entry) = reserve_enforce(EnforceOp::RevokedUidExec) {
        let record = record_mut(&mut entry);
        record.uid = uid;
        if unsafe { bpf_probe_read_user_str_bytes(filename as *const u8, &mut record.path) }
            .is_err()
        {
            record.path[0] = 0;
        }
        entry.submit(submit_flags(RecordKind::Enforce));
    }
    true
}

/// At a fork or clone: kills the caller when it runs as a revoked uid, so that a revoked
/// account's processes cannot multiply faster than the agent ends them.
#[inline(always)]
pub fn kill_revoked_fork() {
    if !enforcing(EnforceSwitch::RevokedUids) || is_agent() {
        return;
    }
    let uid = caller_uid();
    if is_revoked(uid) {
        kill_with(EnforceOp::RevokedUidFork, uid);
    }
}

/// At a setuid-family call: kills the caller when one of the first `N` uids it asks for is
/// revoked. The signal is pending before the call runs, so the caller never returns to user
/// space with that uid.
#[inline(always)]
pub fn kill_switch_to_revoked<const N: usize>(uids: &[u64; 4]) {
    if !enforcing(EnforceSwitch::RevokedUids) || is_agent() {
        return;
    }
    for &uid in uids.iter().take(N) {
        let uid = uid as u32;
        if uid != UNCHANGED_UID && is_revoked(uid) {
            kill_with(EnforceOp::RevokedUidSwitch, uid);
            return;
        }
    }
}

fn kill_with(op: EnforceOp, uid: u32) {
    if is_init() {
        return;
    }
    unsafe { bpf_send_signal(SIGKILL) };
    if let Some(mut entry) = reserve_enforce(op) {
        record_mut(&mut entry).uid = uid;
        entry.submit(submit_flags(RecordKind::Enforce));
    }
}

fn kill_blocked_exec(filename: u64) {
    let Some(path) = EXEC_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let path = unsafe { &mut *path };
    *path = [0; PATH_CAPTURE];
    if unsafe { bpf_probe_read_user_str_bytes(filename as *const u8, path) }.is_err() {
        return;
    }
    if unsafe { BLOCKED_EXEC.get(&*path) }.is_none() {
        return;
    }
    unsafe { bpf_send_signal(SIGKILL) };
    let Some(mut entry) = reserve_enforce(EnforceOp::ExecKilled) else {
        return;
    };
    let record = record_mut(&mut entry);
    if unsafe { bpf_probe_read_kernel_buf(path.as_ptr(), &mut record.path) }.is_err() {
        record.path[0] = 0;
    }
    entry.submit(submit_flags(RecordKind::Enforce));
}
