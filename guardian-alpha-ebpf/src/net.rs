//! TCP connect, accept and listen from `sock/inet_sock_set_state`.
//!
//! Connect (CLOSE → SYN_SENT) and listen (→ LISTEN) run in the calling process, but at
//! SYN_SENT the local port is not assigned yet: the caller is remembered per socket and the
//! connect is reported when the handshake ends (→ ESTABLISHED, or → CLOSE for a refused or
//! blocked attempt), with the full 4-tuple. Those later transitions and the passive open
//! (SYN_RECV → ESTABLISHED) run in softirq context, where "current" is unrelated, so the
//! remembered connector and the listening process recorded at listen time are reported.
//!
//! Connections established by a known process are remembered too, and when one ends (→ CLOSE,
//! from whichever state it was in) its `tcp_sock` byte counters are reported with its owner, so
//! the agent can account the volume each process moved to each remote address.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel_buf},
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::TracePointContext,
};
use guardian_alpha_common::{
    Header, KernelLayout, ListenerKey, NetCloseRecord, NetOp, NetRecord, RecordKind,
    RememberedCaller,
    net::{AF_INET, AF_INET6},
};

use crate::record::{
    AGENT_TGID, LAYOUT, fill_header, is_agent, read_kernel_field, record_mut, reserve, submit_flags,
};

#[map]
static LISTENERS: HashMap<ListenerKey, RememberedCaller> = HashMap::with_max_entries(8192, 0);

/// Sockets in SYN_SENT, by kernel socket address, with the process that called connect.
#[map]
static CONNECTING: HashMap<u64, RememberedCaller> = HashMap::with_max_entries(16384, 0);

/// Established sockets, by kernel socket address, with the process that connected or accepted
/// them (never the agent's own). LRU: a socket whose end was missed cannot fill the map.
#[map]
static ESTABLISHED: LruHashMap<u64, RememberedCaller> = LruHashMap::with_max_entries(32768, 0);

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
            if let Some(header) = caller {
                let _ = CONNECTING.remove(&skaddr);
                if t.new == TCP_ESTABLISHED {
                    remember_established(skaddr, header);
                }
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
        (TCP_SYN_RECV, TCP_ESTABLISHED) => emit_accept(&ctx, &layout, &key, skaddr),
        (_, TCP_CLOSE) => emit_close(&ctx, &layout, skaddr),
        _ => {}
    }
}

fn remember_listener(key: &ListenerKey) {
    remember_caller(&LISTENERS, key);
}

fn remember_caller<K>(map: &HashMap<K, RememberedCaller>, key: &K) {
    let mut caller = RememberedCaller {
        header: Header::zeroed(),
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

fn remember_established(skaddr: u64, header: Header) {
    let _ = ESTABLISHED.insert(&skaddr, &RememberedCaller { header }, 0);
}

fn emit_accept(ctx: &TracePointContext, layout: &KernelLayout, key: &ListenerKey, skaddr: u64) {
    let owner = unsafe { LISTENERS.get(key) }.map(|o| o.header);
    if owner.is_some_and(|h| h.tgid == AGENT_TGID.load()) {
        return;
    }
    if let Some(header) = owner {
        remember_established(skaddr, header);
    }
    emit_for(ctx, layout, NetOp::Accept, owner);
}

/// Reports the end of a remembered connection with its byte counters.
fn emit_close(ctx: &TracePointContext, layout: &KernelLayout, skaddr: u64) {
    let Some(owner) = unsafe { ESTABLISHED.get(&skaddr) }.map(|o| o.header) else {
        return;
    };
    let _ = ESTABLISHED.remove(&skaddr);
    let Some(mut entry) = reserve::<NetCloseRecord>(RecordKind::NetClose) else {
        return;
    };
    let record = record_mut(&mut entry);
    set_remembered_header(&mut record.net.header, Some(owner), RecordKind::NetClose, 0);
    fill_addresses(ctx, layout, &mut record.net);
    let sk = skaddr as *const u8;
    record.bytes_acked = read_kernel_field::<u64>(sk, layout.tcp_bytes_acked).unwrap_or(0);
    record.bytes_received = read_kernel_field::<u64>(sk, layout.tcp_bytes_received).unwrap_or(0);
    record.cookie = read_kernel_field::<u64>(sk, layout.sk_cookie).unwrap_or(0);
    entry.submit(submit_flags(RecordKind::NetClose));
}

/// Emits a record on behalf of a process remembered earlier (or of nobody, when the socket
/// predates the agent).
fn emit_for(ctx: &TracePointContext, layout: &KernelLayout, op: NetOp, caller: Option<Header>) {
    let Some(mut entry) = reserve::<NetRecord>(RecordKind::Net) else {
        return;
    };
    let record = record_mut(&mut entry);
    set_remembered_header(&mut record.header, caller, RecordKind::Net, op as u16);
    fill_addresses(ctx, layout, record);
    entry.submit(submit_flags(RecordKind::Net));
}

/// A header with a remembered process's identity (zero for nobody) and the current time.
fn set_remembered_header(header: &mut Header, caller: Option<Header>, kind: RecordKind, op: u16) {
    *header = caller.unwrap_or(Header::zeroed());
    header.kind = kind as u16;
    header.op = op;
    header.ktime_ns = unsafe { bpf_ktime_get_ns() };
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
