//! File activity under watched path prefixes. The longest configured prefix holding a path
//! decides what is reported: a few prefixes are compared inline as masked words
//! ([`WatchList`]), more (or longer) ones are looked up in an LPM trie keyed by path bytes.
//! Unwatched paths cost one string read and the compare, and produce nothing.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel_buf, bpf_probe_read_user, bpf_probe_read_user_str_bytes},
    macros::{map, tracepoint},
    maps::{LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::TracePointContext,
};
use guardian_alpha_common::{
    FileOp, FileRecord, MAX_WATCHED_PREFIXES, PATH_CAPTURE, RecordKind, RenameRecord, WatchFlags,
    WatchList,
    file::{PathWords, open_modifies},
};

use crate::record::{fill_header, is_agent, record_mut, reserve, submit_flags, syscall_arg};

#[map]
static WATCHED_PREFIXES: LpmTrie<[u8; PATH_CAPTURE], WatchFlags> =
    LpmTrie::with_max_entries(MAX_WATCHED_PREFIXES, 0);

/// The watched prefixes compared inline when they fit (the agent sets it before load);
/// [`WatchList::TRIE`] sends every lookup to [`WATCHED_PREFIXES`].
#[unsafe(no_mangle)]
static WATCH_LIST: WatchList = WatchList::TRIE;

/// [`WATCH_LIST`] through a pointer the compiler cannot see through, so that it reads what the
/// loader wrote instead of folding in the initial value.
#[inline(always)]
fn watch_list() -> &'static WatchList {
    unsafe { &*core::ptr::read_volatile(&(&raw const WATCH_LIST)) }
}

type PathKey = Key<[u8; PATH_CAPTURE]>;

/// A trie key whose path bytes start 8-byte aligned, for [`WatchList::lookup`]'s word loads.
#[repr(C)]
struct PathScratch {
    _align: u32,
    key: PathKey,
}

/// Per-CPU lookup keys (two, for rename's two paths): too large for the 512-byte stack.
#[map]
static PATH_SCRATCH: PerCpuArray<PathScratch> = PerCpuArray::with_max_entries(2, 0);

/// `creat(2)` is `open(O_CREAT | O_WRONLY | O_TRUNC)`.
const CREAT_FLAGS: u32 = 0o1 | 0o100 | 0o1000;

/// No watched prefix holds the path.
const UNWATCHED: WatchFlags = WatchFlags { bits: 0 };

/// Reads the user path at `ptr` into scratch slot `slot` and looks it up: the scratch key when
/// the path was read and is absolute, and the flags of the longest watched prefix holding it
/// (empty when none). Never an `Option` of both: LLVM may then read the flags of `None`
/// (masked out, but the verifier refuses reads of an unset register).
#[inline(always)]
fn lookup_path(ptr: u64, slot: u32) -> (Option<*mut PathKey>, WatchFlags) {
    let Some(scratch) = PATH_SCRATCH.get_ptr_mut(slot) else {
        return (None, UNWATCHED);
    };
    let key = unsafe { &raw mut (*scratch).key };
    let data = unsafe { &mut (*key).data };
    let Ok(path) = (unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, data) }) else {
        return (None, UNWATCHED);
    };
    let len = path.len();
    // Relative paths cannot be resolved here (see the agent's docs on what that means).
    if len == 0 || data[0] != b'/' {
        return (None, UNWATCHED);
    }
    unsafe { (*key).prefix_len = (len * 8) as u32 };
    let list = watch_list();
    let flags = if list.use_trie != 0 {
        WATCHED_PREFIXES.get(unsafe { &*key }).copied()
    } else {
        // SAFETY: map values are 8-byte aligned and `data` is at offset 8 of the value.
        list.lookup(unsafe { &*(data.as_ptr() as *const PathWords) })
    };
    (Some(key), flags.unwrap_or(UNWATCHED))
}

#[inline(always)]
fn emit_file(op: FileOp, path_ptr: u64, flags: u32, uid: i64, gid: i64) {
    // The agent's own files are filtered after the path: unwatched paths skip the check.
    let (Some(key), watch) = lookup_path(path_ptr, 0) else {
        return;
    };
    if is_agent() {
        return;
    }
    let modifies = op != FileOp::Open || open_modifies(flags);
    if !(modifies && watch.reports_modifications() || !modifies && watch.reports_reads()) {
        return;
    }
    let Some(mut entry) = reserve::<FileRecord>(RecordKind::File) else {
        return;
    };
    let record = record_mut(&mut entry);
    fill_header(&mut record.header, RecordKind::File, op as u16);
    record.flags = flags;
    record.path_len = unsafe { (*key).prefix_len } / 8;
    record.uid = uid;
    record.gid = gid;
    copy_path(key, &mut record.path);
    entry.submit(submit_flags(RecordKind::File));
}

#[inline(always)]
fn copy_path(key: *mut PathKey, dst: &mut [u8; PATH_CAPTURE]) {
    let src = unsafe { (*key).data.as_ptr() };
    if unsafe { bpf_probe_read_kernel_buf(src, dst) }.is_err() {
        dst[0] = 0;
    }
}

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    syscall_arg(ctx, n)
}

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn sys_enter_open(ctx: TracePointContext) {
    emit_file(FileOp::Open, arg(&ctx, 0), arg(&ctx, 1) as u32, -1, -1);
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn sys_enter_openat(ctx: TracePointContext) {
    emit_file(FileOp::Open, arg(&ctx, 1), arg(&ctx, 2) as u32, -1, -1);
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn sys_enter_openat2(ctx: TracePointContext) {
    // `struct open_how` starts with the u64 flags.
    let flags = unsafe { bpf_probe_read_user(arg(&ctx, 2) as *const u64) }.unwrap_or(0);
    emit_file(FileOp::Open, arg(&ctx, 1), flags as u32, -1, -1);
}

#[tracepoint(category = "syscalls", name = "sys_enter_creat")]
pub fn sys_enter_creat(ctx: TracePointContext) {
    emit_file(FileOp::Open, arg(&ctx, 0), CREAT_FLAGS, -1, -1);
}

#[tracepoint(category = "syscalls", name = "sys_enter_chmod")]
pub fn sys_enter_chmod(ctx: TracePointContext) {
    emit_file(FileOp::Chmod, arg(&ctx, 0), arg(&ctx, 1) as u32, -1, -1);
}

#[tracepoint(category = "syscalls", name = "sys_enter_fchmodat")]
pub fn sys_enter_fchmodat(ctx: TracePointContext) {
    emit_file(FileOp::Chmod, arg(&ctx, 1), arg(&ctx, 2) as u32, -1, -1);
}

#[tracepoint(category = "syscalls", name = "sys_enter_fchmodat2")]
pub fn sys_enter_fchmodat2(ctx: TracePointContext) {
    emit_file(FileOp::Chmod, arg(&ctx, 1), arg(&ctx, 2) as u32, -1, -1);
}

#[tracepoint(category = "syscalls", name = "sys_enter_chown")]
pub fn sys_enter_chown(ctx: TracePointContext) {
    emit_chown(arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2));
}

#[tracepoint(category = "syscalls", name = "sys_enter_lchown")]
pub fn sys_enter_lchown(ctx: TracePointContext) {
    emit_chown(arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2));
}

#[tracepoint(category = "syscalls", name = "sys_enter_fchownat")]
pub fn sys_enter_fchownat(ctx: TracePointContext) {
    emit_chown(arg(&ctx, 1), arg(&ctx, 2), arg(&ctx, 3));
}

#[inline(always)]
fn emit_chown(path: u64, uid: u64, gid: u64) {
    // uid_t/gid_t are 32-bit; (uid_t)-1 means "unchanged".
    emit_file(
        FileOp::Chown,
        path,
        0,
        uid as u32 as i32 as i64,
        gid as u32 as i32 as i64,
    );
}

#[tracepoint(category = "syscalls", name = "sys_enter_unlink")]
pub fn sys_enter_unlink(ctx: TracePointContext) {
    emit_file(FileOp::Unlink, arg(&ctx, 0), 0, -1, -1);
}

#[tracepoint(category = "syscalls", name = "sys_enter_unlinkat")]
pub fn sys_enter_unlinkat(ctx: TracePointContext) {
    emit_file(FileOp::Unlink, arg(&ctx, 1), arg(&ctx, 2) as u32, -1, -1);
}

#[tracepoint(category = "syscalls", name = "sys_enter_rename")]
pub fn sys_enter_rename(ctx: TracePointContext) {
    emit_rename(arg(&ctx, 0), arg(&ctx, 1));
}

#[tracepoint(category = "syscalls", name = "sys_enter_renameat")]
pub fn sys_enter_renameat(ctx: TracePointContext) {
    emit_rename(arg(&ctx, 1), arg(&ctx, 3));
}

#[tracepoint(category = "syscalls", name = "sys_enter_renameat2")]
pub fn sys_enter_renameat2(ctx: TracePointContext) {
    emit_rename(arg(&ctx, 1), arg(&ctx, 3));
}

/// A rename is reported when either side is watched for modifications.
#[inline(always)]
fn emit_rename(old_ptr: u64, new_ptr: u64) {
    if is_agent() {
        return;
    }
    let (old, old_watch) = lookup_path(old_ptr, 0);
    let (new, new_watch) = lookup_path(new_ptr, 1);
    if !old_watch.reports_modifications() && !new_watch.reports_modifications() {
        return;
    }
    let Some(mut entry) = reserve::<RenameRecord>(RecordKind::Rename) else {
        return;
    };
    let record = record_mut(&mut entry);
    fill_header(&mut record.header, RecordKind::Rename, 0);
    read_or_copy(old, old_ptr, &mut record.path);
    read_or_copy(new, new_ptr, &mut record.new_path);
    entry.submit(submit_flags(RecordKind::Rename));
}

/// The path from scratch when it was read there, else straight from user memory (a relative
/// side of a rename is still reported as given).
#[inline(always)]
fn read_or_copy(scratch: Option<*mut PathKey>, ptr: u64, dst: &mut [u8; PATH_CAPTURE]) {
    match scratch {
        Some(key) => copy_path(key, dst),
        None => {
            if unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, dst) }.is_err() {
                dst[0] = 0;
            }
        }
    }
}
