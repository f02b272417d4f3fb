//! Privilege changes, tracing, kernel module and BPF loading, fileless memory and RWX memory.

use aya_ebpf::{
    helpers::{bpf_probe_read_user, bpf_probe_read_user_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};
use guardian_alpha_common::{PrivOp, PrivRecord, RecordKind};

use crate::{
    enforce,
    record::{fill_header, is_agent, record_mut, reserve, submit_flags, syscall_arg},
};

const PROT_WRITE: u64 = 0x2;
const PROT_EXEC: u64 = 0x4;

#[inline(always)]
fn emit(op: PrivOp, args: [u64; 4]) -> Option<()> {
    if is_agent() {
        return None;
    }
    let mut entry = reserve::<PrivRecord>(RecordKind::Priv)?;
    let record = record_mut(&mut entry);
    fill_header(&mut record.header, RecordKind::Priv, op as u16);
    record.args = args;
    record.name[0] = 0;
    entry.submit(submit_flags(RecordKind::Priv));
    Some(())
}

/// The syscall's first `N` arguments, the rest 0. `N` must not exceed the syscall's own count:
/// the record is read in place, and a program that reads past its tracepoint's record is
/// refused when attached.
#[inline(always)]
fn args<const N: usize>(ctx: &TracePointContext) -> [u64; 4] {
    // Spelled out rather than a loop, so every offset is a constant the verifier accepts.
    let arg = |n: usize| if n < N { syscall_arg(ctx, n) } else { 0 };
    [arg(0), arg(1), arg(2), 0]
}

#[tracepoint(category = "syscalls", name = "sys_enter_setuid")]
pub fn sys_enter_setuid(ctx: TracePointContext) {
    let args = args::<1>(&ctx);
    enforce::kill_switch_to_revoked::<1>(&args);
    let _ = emit(PrivOp::Setuid, args);
}

#[tracepoint(category = "syscalls", name = "sys_enter_setgid")]
pub fn sys_enter_setgid(ctx: TracePointContext) {
    let _ = emit(PrivOp::Setgid, args::<1>(&ctx));
}

#[tracepoint(category = "syscalls", name = "sys_enter_setreuid")]
pub fn sys_enter_setreuid(ctx: TracePointContext) {
    let args = args::<2>(&ctx);
    enforce::kill_switch_to_revoked::<2>(&args);
    let _ = emit(PrivOp::Setreuid, args);
}

#[tracepoint(category = "syscalls", name = "sys_enter_setregid")]
pub fn sys_enter_setregid(ctx: TracePointContext) {
    let _ = emit(PrivOp::Setregid, args::<2>(&ctx));
}

#[tracepoint(category = "syscalls", name = "sys_enter_setresuid")]
pub fn sys_enter_setresuid(ctx: TracePointContext) {
    let args = args::<3>(&ctx);
    enforce::kill_switch_to_revoked::<3>(&args);
    let _ = emit(PrivOp::Setresuid, args);
}

#[tracepoint(category = "syscalls", name = "sys_enter_setresgid")]
pub fn sys_enter_setresgid(ctx: TracePointContext) {
    let _ = emit(PrivOp::Setresgid, args::<3>(&ctx));
}

/// `struct __user_cap_header_struct { u32 version; int pid; }` and the first
/// `struct __user_cap_data_struct { u32 effective, permitted, inheritable; }`.
#[tracepoint(category = "syscalls", name = "sys_enter_capset")]
pub fn sys_enter_capset(ctx: TracePointContext) {
    let header = syscall_arg(&ctx, 0) as *const [u32; 2];
    let data = syscall_arg(&ctx, 1) as *const [u32; 3];
    let target = unsafe { bpf_probe_read_user(header) }.map_or(0, |h| h[1]);
    let caps = unsafe { bpf_probe_read_user(data) }.unwrap_or([0; 3]);
    let _ = emit(
        PrivOp::Capset,
        [
            target as u64,
            caps[0] as u64,
            caps[1] as u64,
            caps[2] as u64,
        ],
    );
}

#[tracepoint(category = "syscalls", name = "sys_enter_ptrace")]
pub fn sys_enter_ptrace(ctx: TracePointContext) {
    let _ = emit(PrivOp::Ptrace, args::<3>(&ctx));
}

#[tracepoint(category = "syscalls", name = "sys_enter_init_module")]
pub fn sys_enter_init_module(ctx: TracePointContext) {
    let _ = emit(PrivOp::InitModule, [syscall_arg(&ctx, 1), 0, 0, 0]);
}

#[tracepoint(category = "syscalls", name = "sys_enter_finit_module")]
pub fn sys_enter_finit_module(ctx: TracePointContext) {
    let _ = emit(
        PrivOp::FinitModule,
        [syscall_arg(&ctx, 0), syscall_arg(&ctx, 2), 0, 0],
    );
}

#[tracepoint(category = "syscalls", name = "sys_enter_bpf")]
pub fn sys_enter_bpf(ctx: TracePointContext) {
    let _ = emit(PrivOp::Bpf, [syscall_arg(&ctx, 0), 0, 0, 0]);
}

#[tracepoint(category = "syscalls", name = "sys_enter_memfd_create")]
pub fn sys_enter_memfd_create(ctx: TracePointContext) {
    if is_agent() {
        return;
    }
    let Some(mut entry) = reserve::<PrivRecord>(RecordKind::Priv) else {
        return;
    };
    let record = record_mut(&mut entry);
    fill_header(
        &mut record.header,
        RecordKind::Priv,
        PrivOp::MemfdCreate as u16,
    );
    record.args = [syscall_arg(&ctx, 1), 0, 0, 0];
    let name = syscall_arg(&ctx, 0) as *const u8;
    if unsafe { bpf_probe_read_user_str_bytes(name, &mut record.name) }.is_err() {
        record.name[0] = 0;
    }
    entry.submit(submit_flags(RecordKind::Priv));
}

#[inline(always)]
fn is_rwx(prot: u64) -> bool {
    prot & (PROT_WRITE | PROT_EXEC) == PROT_WRITE | PROT_EXEC
}

#[tracepoint(category = "syscalls", name = "sys_enter_mmap")]
pub fn sys_enter_mmap(ctx: TracePointContext) {
    let prot = syscall_arg(&ctx, 2);
    if is_rwx(prot) {
        let args = [
            syscall_arg(&ctx, 0),
            syscall_arg(&ctx, 1),
            prot,
            syscall_arg(&ctx, 3),
        ];
        let _ = emit(PrivOp::MmapRwx, args);
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_mprotect")]
pub fn sys_enter_mprotect(ctx: TracePointContext) {
    let args = args::<3>(&ctx);
    if is_rwx(args[2]) {
        let _ = emit(PrivOp::MprotectRwx, args);
    }
}
