//! Enforcement in the kernel, where it can act alone and before the action completes:
//! connects/sends to blocked addresses are refused (cgroup sock_addr programs on the v2
//! hierarchy, so they apply to every process and network namespace below it), and exec of a
//! blocked path kills the caller before the new image runs (`bpf_send_signal` at
//! `sys_enter_execve`). The agent fills the maps; each refusal is reported.

use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel_buf, bpf_probe_read_user_str_bytes, generated::bpf_send_signal,
    },
    macros::{cgroup_sock_addr, map, tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::{SockAddrContext, TracePointContext},
};
use guardian_alpha_common::{
    BlockedV4, BlockedV6, EnforceOp, EnforceRecord, PATH_CAPTURE, RecordKind,
    net::{AF_INET, AF_INET6},
};

use crate::record::{fill_header, is_agent, record_mut, reserve, submit_flags, syscall_arg};

const ALLOW: i32 = 1;
const DENY: i32 = 0;
const SIGKILL: u32 = 9;

#[map]
static BLOCKED_V4: HashMap<BlockedV4, u64> = HashMap::with_max_entries(65536, 0);

#[map]
static BLOCKED_V6: HashMap<BlockedV6, u64> = HashMap::with_max_entries(65536, 0);

/// Blocked executable paths (NUL-padded), as passed to execve.
#[map]
static BLOCKED_EXEC: HashMap<[u8; PATH_CAPTURE], u64> = HashMap::with_max_entries(4096, 0);

/// Slot 0 is non-zero once the agent has blocked any executable path. Until then an execve
/// costs this hook one array lookup instead of a path copy and a 256-byte hash lookup.
#[map]
static EXEC_BLOCKING: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static EXEC_SCRATCH: PerCpuArray<[u8; PATH_CAPTURE]> = PerCpuArray::with_max_entries(1, 0);

fn report_blocked(family: u16, addr: [u8; 16], port: u16) {
    let Some(mut entry) = reserve::<EnforceRecord>(RecordKind::Enforce) else {
        return;
    };
    let record = record_mut(&mut entry);
    fill_header(
        &mut record.header,
        RecordKind::Enforce,
        EnforceOp::ConnectBlocked as u16,
    );
    record.family = family;
    record.port = port;
    record.pad = 0;
    record.addr = addr;
    record.path[0] = 0;
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
    kill_blocked_exec(syscall_arg(&ctx, 0));
}

#[tracepoint(category = "syscalls", name = "sys_enter_execveat")]
pub fn sys_enter_execveat(ctx: TracePointContext) {
    kill_blocked_exec(syscall_arg(&ctx, 1));
}

fn kill_blocked_exec(filename: u64) {
    if EXEC_BLOCKING.get(0).is_none_or(|&on| on == 0) || is_agent() {
        return;
    }
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
    let Some(mut entry) = reserve::<EnforceRecord>(RecordKind::Enforce) else {
        return;
    };
    let record = record_mut(&mut entry);
    fill_header(
        &mut record.header,
        RecordKind::Enforce,
        EnforceOp::ExecKilled as u16,
    );
    record.family = 0;
    record.port = 0;
    record.pad = 0;
    record.addr = [0; 16];
    if unsafe { bpf_probe_read_kernel_buf(path.as_ptr(), &mut record.path) }.is_err() {
        record.path[0] = 0;
    }
    entry.submit(submit_flags(RecordKind::Enforce));
}
