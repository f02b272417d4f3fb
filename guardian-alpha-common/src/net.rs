use crate::Header;

/// TCP state transition seen on `sock/inet_sock_set_state`.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetOp {
    /// CLOSE → SYN_SENT, in the connecting process.
    Connect = 1,
    /// SYN_RECV → ESTABLISHED; attributed to the process that listens on the local port.
    Accept = 2,
    /// CLOSE → LISTEN, in the listening process.
    Listen = 3,
}

impl NetOp {
    pub fn from_u16(value: u16) -> Option<Self> {
        Some(match value {
            1 => NetOp::Connect,
            2 => NetOp::Accept,
            3 => NetOp::Listen,
            _ => return None,
        })
    }
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// A TCP connection or listener, seen from this host: `local_*` is this host's side.
/// Addresses are in network byte order (IPv4 in the first four bytes); ports in host order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NetRecord {
    pub header: Header,
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub protocol: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// The end of an established TCP connection (→ CLOSE), with what it moved: the byte counters
/// of its `tcp_sock`, read in the kernel at offsets the agent found in BTF. Attributed to the
/// process that connected or accepted it (remembered when it was established).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NetCloseRecord {
    pub net: NetRecord,
    /// `tcp_sock.bytes_acked`: bytes sent and acknowledged by the peer.
    pub bytes_acked: u64,
    /// `tcp_sock.bytes_received`: bytes received in sequence.
    pub bytes_received: u64,
    /// `sock_common.skc_cookie`: the socket's cookie when sock_diag (or anyone) generated one,
    /// else 0. The agent uses it to subtract what its periodic sock_diag polls reported.
    pub cookie: u64,
}

/// Key of the listener map: which process owns a listening port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerKey {
    pub family: u16,
    pub port: u16,
}

/// The identity of a process remembered for a record emitted later, in softirq context: the
/// listener of a port (for accepts) or the caller of a connect (reported when it completes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RememberedCaller {
    pub header: Header,
}
