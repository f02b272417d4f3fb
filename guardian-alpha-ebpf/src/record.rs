//! Maps, globals and the helpers every hook uses to fill a record header.

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_task, bpf_ktime_get_ns,
        },
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use guardian_alpha_common::{Header, KernelLayout, LOST_SLOTS, RecordKind};

/// Default size; the agent may change it at load time (`set_max_entries`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Records that did not fit in the ring buffer, per CPU and per record kind.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

/// Batching of wake-ups: below this many bytes waiting in the ring buffer, records are
/// submitted without waking the agent, which drains them on its own timer
/// (`sensor.max_delay_ms`). 0 wakes the agent for every record.
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: Global<u64> = Global::new(0);

/// Record kinds that wake the agent at once, whatever [`WAKEUP_BYTES`] says: bit
/// `1 << kind` for each (`sensor.wake_at_once`, the kinds responses act on). High-volume
/// kinds left out keep the batching.
#[unsafe(no_mangle)]
pub static WAKE_AT_ONCE: Global<u32> = Global::new(0);

/// Spacing of the wake-ups [`WAKE_AT_ONCE`] records force, per CPU (ns; 0: every such record
/// wakes the agent). A record within this long of the CPU's last forced wake-up is submitted
/// without one: the agent drains again this long after every wake-up (`sensor.wake_spacing_us`),
/// so it waits at most about that long, and a burst costs one wake-up per spacing instead of
/// one per record.
#[unsafe(no_mangle)]
pub static WAKE_SPACING_NS: Global<u64> = Global::new(0);

/// When this CPU last forced a wake-up for a [`WAKE_AT_ONCE`] record (`bpf_ktime_get_ns`).
#[map]
static LAST_WAKE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Submit flags for a record of `kind`: a forced wake-up for the kinds of [`WAKE_AT_ONCE`]
/// (a plain one would not come while batched records wait before it) spaced by
/// [`WAKE_SPACING_NS`], else a wake-up only once enough data waits. A wake-up per record costs
/// the traced process more than the rest of the hook together (an inter-processor interrupt,
/// which in a VM is a trap to the hypervisor).
#[inline(always)]
pub fn submit_flags(kind: RecordKind) -> u64 {
    if WAKE_AT_ONCE.load() & (1 << (kind as u32)) != 0 {
        return spaced_wakeup();
    }
    let threshold = WAKEUP_BYTES.load();
    if threshold == 0 {
        0
    } else if EVENTS.query(BPF_RB_AVAIL_DATA) >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// A forced wake-up, unless this CPU forced one less than [`WAKE_SPACING_NS`] ago.
#[inline(always)]
fn spaced_wakeup() -> u64 {
    let spacing = WAKE_SPACING_NS.load();
    if spacing == 0 {
        return BPF_RB_FORCE_WAKEUP;
    }
    let Some(last) = LAST_WAKE.get_ptr_mut(0) else {
        return BPF_RB_FORCE_WAKEUP;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a per-CPU slot, touched only by this CPU with preemption off.
    unsafe {
        if now.wrapping_sub(*last) < spacing {
            return BPF_RB_NO_WAKEUP;
        }
        *last = now;
    }
    BPF_RB_FORCE_WAKEUP
}

/// The agent's own process: never reported (it would report itself reporting).
#[unsafe(no_mangle)]
pub static AGENT_TGID: Global<u32> = Global::new(0);

#[unsafe(no_mangle)]
pub static LAYOUT: Global<KernelLayout> = Global::new(KernelLayout {
    task_real_parent: 0,
    task_tgid: 0,
    task_mm: 0,
    task_exit_code: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    exec_filename: 0,
    newtask_pid: 0,
    newtask_clone_flags: 0,
    sk_skaddr: 0,
    sk_oldstate: 0,
    sk_newstate: 0,
    sk_sport: 0,
    sk_dport: 0,
    sk_family: 0,
    sk_protocol: 0,
    sk_saddr_v6: 0,
    sk_daddr_v6: 0,
    sk_saddr: 0,
    sk_daddr: 0,
    signal_sig: 0,
    signal_pid: 0,
    exit_group_dead: 0,
    tcp_bytes_acked: 0,
    tcp_bytes_received: 0,
    sk_cookie: 0,
});

/// Offset of syscall argument `n` in a `syscalls/sys_enter_*` record (a stable layout:
/// common header, `__syscall_nr`, then `unsigned long args[6]`).
const fn syscall_arg_offset(n: usize) -> usize {
    16 + 8 * n
}

/// Argument `n` of a `syscalls:sys_enter_*` record. The record is read in place: the verifier
/// allows direct loads at constant offsets of a tracepoint's context, where `read_at` calls
/// `bpf_probe_read_kernel` for each argument (a helper call on every hooked syscall). `n` must
/// be a constant after inlining.
#[inline(always)]
pub fn syscall_arg(ctx: &TracePointContext, n: usize) -> u64 {
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(syscall_arg_offset(n)) as *const u64) }
}

#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// True when the calling process is the agent itself.
#[inline(always)]
pub fn is_agent() -> bool {
    current_tgid() == AGENT_TGID.load()
}

pub fn count_lost(kind: RecordKind) {
    if let Some(counter) = LOST.get_ptr_mut(kind as u32) {
        unsafe { *counter += 1 };
    }
}

/// The current task's `task_struct` as raw bytes, for offset-based reads.
#[inline(always)]
pub fn current_task() -> *const u8 {
    unsafe { bpf_get_current_task() as *const u8 }
}

/// Reads a `T` at `offset` into kernel struct `base`; `None` when the offset is unknown (0).
#[inline(always)]
pub fn read_kernel_field<T>(base: *const u8, offset: u32) -> Option<T> {
    if offset == 0 || base.is_null() {
        return None;
    }
    unsafe { bpf_probe_read_kernel(base.add(offset as usize) as *const T) }.ok()
}

#[inline(always)]
fn parent_tgid(layout: &KernelLayout) -> u32 {
    let parent: *const u8 =
        read_kernel_field(current_task(), layout.task_real_parent).unwrap_or(core::ptr::null());
    read_kernel_field::<i32>(parent, layout.task_tgid).unwrap_or(0) as u32
}

/// Fills `header` with the identity of the current task.
#[inline(always)]
pub fn fill_header(header: &mut Header, kind: RecordKind, op: u16) {
    let layout = LAYOUT.load();
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    header.kind = kind as u16;
    header.op = op;
    header.reserved = 0;
    header.ktime_ns = unsafe { bpf_ktime_get_ns() };
    header.pid = pid_tgid as u32;
    header.tgid = (pid_tgid >> 32) as u32;
    header.ppid = parent_tgid(&layout);
    header.uid = uid_gid as u32;
    header.gid = (uid_gid >> 32) as u32;
    header.pad = 0;
    header.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // Straight into the record: the helper NUL-pads the whole buffer (and zeroes it on
    // failure), where the safe wrapper zeroes a stack copy byte by byte and copies it again.
    unsafe {
        bpf_get_current_comm(
            header.comm.as_mut_ptr() as *mut core::ffi::c_void,
            header.comm.len() as u32,
        )
    };
}

/// Reserves a `T` in the ring buffer, counting the loss when it is full.
#[inline(always)]
pub fn reserve<T: 'static>(kind: RecordKind) -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count_lost(kind);
    }
    entry
}

/// The reserved record as a `&mut T`; every field is then written before submit.
#[inline(always)]
pub fn record_mut<T>(entry: &mut aya_ebpf::maps::ring_buf::RingBufEntry<T>) -> &mut T {
    unsafe { &mut *entry.as_mut_ptr() }
}
