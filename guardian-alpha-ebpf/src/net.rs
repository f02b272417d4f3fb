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
//!
//! The hook runs about ten times per connection, so the tracepoint record is copied once into
//! a per-CPU scratch slot and every field is read from there: a helper call per field (the
//! offsets are only known at load time, so the context cannot be read directly) cost more than
//! the rest of the hook.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel_buf},
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray},
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

/// Bytes of the tracepoint record copied for each call: every field it has (72 bytes on the
/// kernels we know) with room to spare; a field past the end reads as zero.
const RECORD_BYTES: usize = 96;

/// The current call's copy of the tracepoint record.
#[map]
static SCRATCH: PerCpuArray<[u8; RECORD_BYTES]> = PerCpuArray::with_max_entries(1, 0);

/// The tracepoint record of the current call, copied once.
struct Fields {
    bytes: *const u8,
}

impl Fields {
    fn copy(ctx: &TracePointContext) -> Option<Self> {
        let slot = SCRATCH.get_ptr_mut(0)?;
        // SAFETY: the slot is this CPU's, and the hook does not nest on one CPU.
        let slot = unsafe { &mut *slot };
        unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, slot) }.ok()?;
        Some(Fields {
            bytes: slot.as_ptr(),
        })
    }

    /// The `T` at `offset`, or `T`'s zero when it lies past the copy.
    fn get<T: Copy + Default>(&self, offset: u32) -> T {
        let start = offset as usize;
        if start > RECORD_BYTES - core::mem::size_of::<T>() {
            return T::default();
        }
        // SAFETY: in bounds (checked above) of the scratch slot the copy filled.
        unsafe { core::ptr::read_unaligned(self.bytes.add(start) as *const T) }
    }
}

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
    let Some(fields) = Fields::copy(&ctx) else {
        return;
    };
    let layout = LAYOUT.load();
    if fields.get::<u16>(layout.sk_protocol) != IPPROTO_TCP {
        return;
    }
    let t = Transition {
        old: fields.get(layout.sk_oldstate),
        new: fields.get(layout.sk_newstate),
        family: fields.get(layout.sk_family),
        local_port: fields.get(layout.sk_sport),
    };
    if t.family != AF_INET && t.family != AF_INET6 {
        return;
    }
    let key = ListenerKey {
        family: t.family,
        port: t.local_port,
    };
    let skaddr: u64 = fields.get(layout.sk_skaddr);
    match (t.old, t.new) {
        (TCP_CLOSE, TCP_SYN_SENT) if !is_agent() => remember_caller(&CONNECTING, &skaddr),
        (TCP_SYN_SENT, _) => {
            let caller = unsafe { CONNECTING.get(&skaddr) }.map(|o| o.header);
            if let Some(header) = caller {
                let _ = CONNECTING.remove(&skaddr);
                if t.new == TCP_ESTABLISHED {
                    remember_established(skaddr, header);
                }
                emit_for(&fields, &layout, NetOp::Connect, caller);
            }
        }
        (_, TCP_LISTEN) => {
            remember_listener(&key);
            if !is_agent() {
                emit_own(&fields, &layout, NetOp::Listen);
            }
        }
        (TCP_LISTEN, TCP_CLOSE) => {
            let _ = LISTENERS.remove(&key);
        }
        (TCP_SYN_RECV, TCP_ESTABLISHED) => emit_accept(&fields, &layout, &key, skaddr),
        (_, TCP_CLOSE) => emit_close(&fields, &layout, skaddr),
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

fn emit_own(fields: &Fields, layout: &KernelLayout, op: NetOp) {
    let Some(mut entry) = reserve::<NetRecord>(RecordKind::Net) else {
        return;
    };
    let record = record_mut(&mut entry);
    fill_header(&mut record.header, RecordKind::Net, op as u16);
    fill_addresses(fields, layout, record);
    entry.submit(submit_flags(RecordKind::Net));
}

fn remember_established(skaddr: u64, header: Header) {
    let _ = ESTABLISHED.insert(&skaddr, &RememberedCaller { header }, 0);
}

fn emit_accept(fields: &Fields, layout: &KernelLayout, key: &ListenerKey, skaddr: u64) {
    let owner = unsafe { LISTENERS.get(key) }.map(|o| o.header);
    if owner.is_some_and(|h| h.tgid == AGENT_TGID.load()) {
        return;
    }
    if let Some(header) = owner {
        remember_established(skaddr, header);
    }
    emit_for(fields, layout, NetOp::Accept, owner);
}

/// Reports the end of a remembered connection with its byte counters.
fn emit_close(fields: &Fields, layout: &KernelLayout, skaddr: u64) {
    let Some(owner) = unsafe { ESTABLISHED.get(&skaddr) }.map(|o| o.header) else {
        return;
    };
    let _ = ESTABLISHED.remove(&skaddr);
    let Some(mut entry) = reserve::<NetCloseRecord>(RecordKind::NetClose) else {
        return;
    };
    let record = record_mut(&mut entry);
    set_remembered_header(&mut record.net.header, Some(owner), RecordKind::NetClose, 0);
    fill_addresses(fields, layout, &mut record.net);
    let sk = skaddr as *const u8;
    record.bytes_acked = read_kernel_field::<u64>(sk, layout.tcp_bytes_acked).unwrap_or(0);
    record.bytes_received = read_kernel_field::<u64>(sk, layout.tcp_bytes_received).unwrap_or(0);
    record.cookie = read_kernel_field::<u64>(sk, layout.sk_cookie).unwrap_or(0);
    entry.submit(submit_flags(RecordKind::NetClose));
}

/// Emits a record on behalf of a process remembered earlier (or of nobody, when the socket
/// predates the agent).
fn emit_for(fields: &Fields, layout: &KernelLayout, op: NetOp, caller: Option<Header>) {
    let Some(mut entry) = reserve::<NetRecord>(RecordKind::Net) else {
        return;
    };
    let record = record_mut(&mut entry);
    set_remembered_header(&mut record.header, caller, RecordKind::Net, op as u16);
    fill_addresses(fields, layout, record);
    entry.submit(submit_flags(RecordKind::Net));
}

/// A header with a remembered process's identity (zero for nobody) and the current time.
fn set_remembered_header(header: &mut Header, caller: Option<Header>, kind: RecordKind, op: u16) {
    *header = caller.unwrap_or(Header::zeroed());
    header.kind = kind as u16;
    header.op = op;
    header.ktime_ns = unsafe { bpf_ktime_get_ns() };
}

fn fill_addresses(fields: &Fields, layout: &KernelLayout, record: &mut NetRecord) {
    record.family = fields.get(layout.sk_family);
    record.local_port = fields.get(layout.sk_sport);
    record.remote_port = fields.get(layout.sk_dport);
    record.protocol = IPPROTO_TCP;
    if record.family == AF_INET6 {
        record.local_addr = fields.get(layout.sk_saddr_v6);
        record.remote_addr = fields.get(layout.sk_daddr_v6);
    } else {
        record.local_addr = v4_in_16(fields.get(layout.sk_saddr));
        record.remote_addr = v4_in_16(fields.get(layout.sk_daddr));
    }
}

/// An IPv4 address in the record's 16-byte field: its first 4 bytes, the rest zero.
fn v4_in_16(v4: [u8; 4]) -> [u8; 16] {
    let mut addr = [0; 16];
    addr[0] = v4[0];
    addr[1] = v4[1];
    addr[2] = v4[2];
    addr[3] = v4[3];
    addr
}
