//! Process lifecycle: exec, exit and fork.

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user_buf},
    macros::tracepoint,
    programs::TracePointContext,
};
use guardian_alpha_common::{
    ARGS_CAPTURE, ExeFolderLayout, ExecRecord, ExitRecord, ForkRecord, RecordKind, SignalRecord,
};

use crate::{
    enforce,
    record::{
        AGENT_TGID, LAYOUT, current_task, fill_header, is_agent, read_kernel_field, record_mut,
        reserve, submit_flags,
    },
};

const CLONE_THREAD: u64 = 0x0001_0000;

#[unsafe(no_mangle)]
static EXE_FOLDER_LAYOUT: Global<ExeFolderLayout> = Global::new(ExeFolderLayout {
    mm_exe_file: 0,
    file_dentry: 0,
    dentry_parent: 0,
    dentry_inode: 0,
    inode_mode: 0,
    known: 0,
});

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) {
    if is_agent() {
        return;
    }
    let Some(mut entry) = reserve::<ExecRecord>(RecordKind::Exec) else {
        return;
    };
    let layout = LAYOUT.load();
    let record = record_mut(&mut entry);
    fill_header(&mut record.header, RecordKind::Exec, 0);
    record.filename[0] = 0;
    if let Ok(data_loc) = unsafe { ctx.read_at::<u32>(layout.exec_filename as usize) } {
        let offset = (data_loc & 0xffff) as usize;
        let src = unsafe { (ctx.as_ptr() as *const u8).add(offset) };
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(src, &mut record.filename) };
    }
    let mm: *const u8 =
        read_kernel_field(current_task(), layout.task_mm).unwrap_or(core::ptr::null());
    read_args(&layout, mm, record);
    record.folder_mode = exe_folder_mode(mm).unwrap_or(0);
    record._pad = 0;
    entry.submit(submit_flags(RecordKind::Exec));
}

/// The mode of the folder holding the new image's file (`mm->exe_file`'s parent dentry): read
/// here, it costs a few loads instead of a path walk through `/proc/PID/root` in the agent, and
/// it is the folder of the file really executed (symbolic links resolved, in the process's
/// own mount namespace).
#[inline(always)]
fn exe_folder_mode(mm: *const u8) -> Option<u32> {
    let layout = EXE_FOLDER_LAYOUT.load();
    if layout.known == 0 {
        return None;
    }
    let file: *const u8 = read_kernel_field(mm, layout.mm_exe_file)?;
    let dentry: *const u8 = read_kernel_field(file, layout.file_dentry)?;
    let parent: *const u8 = read_kernel_field(dentry, layout.dentry_parent)?;
    let inode: *const u8 = read_kernel_field(parent, layout.dentry_inode)?;
    if inode.is_null() {
        return None;
    }
    // `i_mode` may sit at offset 0, which `read_kernel_field` takes for "unknown".
    let mode: u16 =
        unsafe { bpf_probe_read_kernel(inode.add(layout.inode_mode as usize) as *const u16) }
            .ok()?;
    Some(u32::from(mode))
}

/// Copies argv (NUL-separated) from the new image's `mm->arg_start..arg_end`. Only the bytes
/// argv really has are read and written: every ring-buffer byte written is a cache line the
/// exec pays for, and most argv are far shorter than `ARGS_CAPTURE`.
#[inline(always)]
fn read_args(layout: &guardian_alpha_common::KernelLayout, mm: *const u8, record: &mut ExecRecord) {
    record.args_len = 0;
    record.args_truncated = 0;
    let (Some(start), Some(end)) = (
        read_kernel_field::<u64>(mm, layout.mm_arg_start),
        read_kernel_field::<u64>(mm, layout.mm_arg_end),
    ) else {
        return;
    };
    let len = end.saturating_sub(start) as usize;
    let src = start as *const u8;
    if len >= ARGS_CAPTURE {
        record.args_truncated = u32::from(len > ARGS_CAPTURE);
        if unsafe { bpf_probe_read_user_buf(src, &mut record.args) }.is_ok() {
            record.args_len = ARGS_CAPTURE as u32;
        }
        return;
    }
    // `len < ARGS_CAPTURE` here; the mask only shows the verifier the bound.
    let bounded = len & (ARGS_CAPTURE - 1);
    if unsafe { bpf_probe_read_user_buf(src, &mut record.args[..bounded]) }.is_ok() {
        record.args_len = bounded as u32;
    }
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) {
    if is_agent() {
        return;
    }
    let layout = LAYOUT.load();
    let process_ended = if layout.exit_group_dead != 0 {
        unsafe { ctx.read_at::<u8>(layout.exit_group_dead as usize) }.unwrap_or(0) != 0
    } else {
        let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
        pid_tgid as u32 == (pid_tgid >> 32) as u32
    };
    if !process_ended {
        return;
    }
    let Some(mut entry) = reserve::<ExitRecord>(RecordKind::Exit) else {
        return;
    };
    let record = record_mut(&mut entry);
    fill_header(&mut record.header, RecordKind::Exit, 0);
    record.exit_code =
        read_kernel_field::<i32>(current_task(), layout.task_exit_code).unwrap_or(0) as u32;
    record.pad = 0;
    entry.submit(submit_flags(RecordKind::Exit));
}

/// `task_newtask` runs in the parent while it creates the child; threads are skipped.
#[tracepoint(category = "task", name = "task_newtask")]
pub fn task_newtask(ctx: TracePointContext) {
    enforce::kill_revoked_fork();
    if is_agent() {
        return;
    }
    let layout = LAYOUT.load();
    let clone_flags =
        unsafe { ctx.read_at::<u64>(layout.newtask_clone_flags as usize) }.unwrap_or(0);
    if clone_flags & CLONE_THREAD != 0 {
        return;
    }
    let Some(mut entry) = reserve::<ForkRecord>(RecordKind::Fork) else {
        return;
    };
    let record = record_mut(&mut entry);
    fill_header(&mut record.header, RecordKind::Fork, 0);
    record.child_pid =
        unsafe { ctx.read_at::<i32>(layout.newtask_pid as usize) }.unwrap_or(0) as u32;
    record.pad = 0;
    record.clone_flags = clone_flags;
    entry.submit(submit_flags(RecordKind::Fork));
}

/// Signals generated for the agent's own process: a tamper attempt (the kill itself is not
/// prevented here; the cortex is told before the agent dies).
#[tracepoint(category = "signal", name = "signal_generate")]
pub fn signal_generate(ctx: TracePointContext) {
    let layout = LAYOUT.load();
    let target = unsafe { ctx.read_at::<i32>(layout.signal_pid as usize) }.unwrap_or(0) as u32;
    if target == 0 || target != AGENT_TGID.load() || is_agent() {
        return;
    }
    let Some(mut entry) = reserve::<SignalRecord>(RecordKind::Signal) else {
        return;
    };
    let record = record_mut(&mut entry);
    fill_header(&mut record.header, RecordKind::Signal, 0);
    record.signal = unsafe { ctx.read_at::<i32>(layout.signal_sig as usize) }.unwrap_or(0);
    record.target_pid = target;
    entry.submit(submit_flags(RecordKind::Signal));
}
