//! TCP connect, accept and listen from `sock/inet_sock_set_state`.
//!
//! Connect (CLOSE → SYN_SENT) and listen (→ LISTEN) run in the calling process. The passive
//! open (SYN_RECV → ESTABLISHED) runs in softirq context, where "current" is unrelated, so
//! the listening process recorded at listen time is reported as the one that accepts.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel_buf},
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use guardian_alpha_common::{
    KernelLayout, ListenerKey, ListenerOwner, NetOp, NetRecord, RecordKind,
    net::{AF_INET, AF_INET6},
};

use crate::record::{AGENT_TGID, LAYOUT, fill_header, is_agent, record_mut, reserve};

#[map]
static LISTENERS: HashMap<ListenerKey, ListenerOwner> = HashMap::with_max_entries(8192, 0);

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
    match (t.old, t.new) {
        (TCP_CLOSE, TCP_SYN_SENT) if !is_agent() => emit_own(&ctx, &layout, NetOp::Connect),
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
    let mut owner = ListenerOwner {
        header: guardian_alpha_common::Header::zeroed(),
    };
    fill_header(&mut owner.header, RecordKind::Net, NetOp::Accept as u16);
    let _ = LISTENERS.insert(key, &owner, 0);
}

fn emit_own(ctx: &TracePointContext, layout: &KernelLayout, op: NetOp) {
    let Some(mut entry) = reserve::<NetRecord>() else {
        return;
    };
    let record = record_mut(&mut entry);
    fill_header(&mut record.header, RecordKind::Net, op as u16);
    fill_addresses(ctx, layout, record);
    entry.submit(0);
}

fn emit_accept(ctx: &TracePointContext, layout: &KernelLayout, key: &ListenerKey) {
    let owner = unsafe { LISTENERS.get(key) };
    if owner.is_some_and(|o| o.header.tgid == AGENT_TGID.load()) {
        return;
    }
    let Some(mut entry) = reserve::<NetRecord>() else {
        return;
    };
    let record = record_mut(&mut entry);
    record.header = match owner {
        Some(o) => o.header,
        None => guardian_alpha_common::Header::zeroed(),
    };
    record.header.kind = RecordKind::Net as u16;
    record.header.op = NetOp::Accept as u16;
    record.header.ktime_ns = unsafe { bpf_ktime_get_ns() };
    fill_addresses(ctx, layout, record);
    entry.submit(0);
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
