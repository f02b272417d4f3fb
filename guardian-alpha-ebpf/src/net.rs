//! TCP connect, accept and listen from `sock/inet_sock_set_state`.
//!
//! Connect (CLOSE → SYN_SENT) and listen (→ LISTEN) run in the calling process, but at
//! SYN_SENT the local port is not assigned yet: the caller is remembered per socket and the
//! connect is reported when the handshake ends (→ ESTABLISHED, or → CLOSE for a refused or
//! blocked attempt), with the full 4-tuple. Those later transitions and the passive open
//! (SYN_RECV → ESTABLISHED) run in softirq context, where "current" is unrelated, so the
//! remembered connector and the listening process recorded at listen time are reported.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel_buf},
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use guardian_alpha_common::{
    KernelLayout, ListenerKey, NetOp, NetRecord, RecordKind, RememberedCaller,
    net::{AF_INET, AF_INET6},
};

use crate::record::{AGENT_TGID, LAYOUT, fill_header, is_agent, record_mut, reserve, submit_flags};

#[map]
static LISTENERS: HashMap<ListenerKey, RememberedCaller> = HashMap::with_max_entries(8192, 0);

/// Sockets in SYN_SENT, by kernel socket address, with the process that called connect.
#[map]
static CONNECTING: HashMap<u64, RememberedCaller> = HashMap::with_max_entries(16384, 0);

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;
const IPPROTO_TCP: u16 = 6;

struct Transition {
    old: i32,
    new: i32,
    family: u16,
    local_port: u16,
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) {
    let layout = LAYOUT.load();
    let read_u16 = |offset: u32| unsafe { ctx.read_at::<u16>(offset as usize) }.unwrap_or(0);
    if read_u16(layout.sk_protocol) != IPPROTO_TCP {
        return;
    }
    let t = Transition {
        old: unsafe { ctx.read_at::<i32>(layout.sk_oldstate as usize) }.unwrap_or(0),
        new: unsafe { ctx.read_at::<i32>(layout.sk_newstate as usize) }.unwrap_or(0),
        family: read_u16(layout.sk_family),
        local_port: read_u16(layout.sk_sport),
    };
    if t.family != AF_INET && t.family != AF_INET6 {
        return;
    }
    let key = ListenerKey {
        family: t.family,
        port: t.local_port,
    };
    let skaddr = unsafe { ctx.read_at::<u64>(layout.sk_skaddr as usize) }.unwrap_or(0);
    match (t.old, t.new) {
        (TCP_CLOSE, TCP_SYN_SENT) if !is_agent() => remember_caller(&CONNECTING, &skaddr),
        (TCP_SYN_SENT, _) => {
            let caller = unsafe { CONNECTING.get(&skaddr) }.map(|o| o.header);
            if caller.is_some() {
                let _ = CONNECTING.remove(&skaddr);
                emit_for(&ctx, &layout, NetOp::Connect, caller);
            }
        }
        (_, TCP_LISTEN) => {
            remember_listener(&key);
            if !is_agent() {
                emit_own(&ctx, &layout, NetOp::Listen);
            }
        }
        (TCP_LISTEN, TCP_CLOSE) => {
            let _ = LISTENERS.remove(&key);
        }
        (TCP_SYN_RECV, TCP_ESTABLISHED) => emit_accept(&ctx, &layout, &key),
        _ => {}
    }
}

fn remember_listener(key: &ListenerKey) {
    remember_caller(&LISTENERS, key);
}

fn remember_caller<K>(map: &HashMap<K, RememberedCaller>, key: &K) {
    let mut caller = RememberedCaller {
        header: guardian_alpha_common::Header::zeroed(),
    };
    fill_header(&mut caller.header, RecordKind::Net, 0);
    let _ = map.insert(key, &caller, 0);
}

fn emit_own(ctx: &TracePointContext, layout: &KernelLayout, op: NetOp) {
    let Some(mut entry) = reserve::<NetRecord>(RecordKind::Net) else {
        return;
    };
    let record = record_mut(&mut entry);
    fill_header(&mut record.header, RecordKind::Net, op as u16);
    fill_addresses(ctx, layout, record);
    entry.submit(submit_flags(RecordKind::Net));
}

fn emit_accept(ctx: &TracePointContext, layout: &KernelLayout, key: &ListenerKey) {
    let owner = unsafe { LISTENERS.get(key) }.map(|o| o.header);
    if owner.is_some_and(|h| h.tgid == AGENT_TGID.load()) {
        return;
    }
    emit_for(ctx, layout, NetOp::Accept, owner);
}

/// Emits a record on behalf of a process remembered earlier (or of nobody, when the socket
/// predates the agent).
fn emit_for(
    ctx: &TracePointContext,
    layout: &KernelLayout,
    op: NetOp,
    caller: Option<guardian_alpha_common::Header>,
) {
    let Some(mut entry) = reserve::<NetRecord>(RecordKind::Net) else {
        return;
    };
    let record = record_mut(&mut entry);
    record.header = caller.unwrap_or(guardian_alpha_common::Header::zeroed());
    record.header.kind = RecordKind::Net as u16;
    record.header.op = op as u16;
    record.header.ktime_ns = unsafe { bpf_ktime_get_ns() };
    fill_addresses(ctx, layout, record);
    entry.submit(submit_flags(RecordKind::Net));
}

fn fill_addresses(ctx: &TracePointContext, layout: &KernelLayout, record: &mut NetRecord) {
    let read_u16 = |offset: u32| unsafe { ctx.read_at::<u16>(offset as usize) }.unwrap_or(0);
    record.family = read_u16(layout.sk_family);
    record.local_port = read_u16(layout.sk_sport);
    record.remote_port = read_u16(layout.sk_dport);
    record.protocol = IPPROTO_TCP;
    let (local, remote) = if record.family == AF_INET6 {
        (layout.sk_saddr_v6, layout.sk_daddr_v6)
    } else {
        (layout.sk_saddr, layout.sk_daddr)
    };
    let len = if record.family == AF_INET6 { 16 } else { 4 };
    record.local_addr = [0; 16];
    record.remote_addr = [0; 16];
    copy_from_ctx(ctx, local, &mut record.local_addr[..len]);
    copy_from_ctx(ctx, remote, &mut record.remote_addr[..len]);
}

fn copy_from_ctx(ctx: &TracePointContext, offset: u32, dst: &mut [u8]) {
    let src = unsafe { (ctx.as_ptr() as *const u8).add(offset as usize) };
    let _ = unsafe { bpf_probe_read_kernel_buf(src, dst) };
}
