//! The byte counters of every open TCP connection, read with sock_diag (`NETLINK_SOCK_DIAG`,
//! `SOCK_DIAG_BY_FAMILY` with `INET_DIAG_INFO`): what `ss -ti` shows as `bytes_acked` and
//! `bytes_received`. The agent polls it to report long-lived connections periodically; the
//! kernel program reports each connection's final counters when it closes.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    #[error("cannot open a NETLINK_SOCK_DIAG socket: {0}")]
    Open(std::io::Error),
    #[error("cannot send the sock_diag dump request for address family {family}: {source}")]
    Send { family: u8, source: std::io::Error },
    #[error("cannot receive the sock_diag dump for address family {family}: {source}")]
    Receive { family: u8, source: std::io::Error },
    #[error("the kernel refused the sock_diag dump for address family {family}: errno {errno}")]
    Refused { family: u8, errno: i32 },
    #[error("malformed sock_diag message: {0}")]
    Malformed(&'static str),
}

/// One TCP socket with its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocket {
    /// The socket cookie (stable for the socket's life; the kernel program reads the same one).
    pub cookie: u64,
    /// The socket's inode (0 for an orphan whose file is closed).
    pub inode: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// `tcpi_bytes_acked`: bytes sent and acknowledged by the peer.
    pub bytes_acked: u64,
    /// `tcpi_bytes_received`: bytes received in sequence.
    pub bytes_received: u64,
}

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const INET_DIAG_INFO: u16 = 2;
const IPPROTO_TCP: u8 = 6;
const NLMSG_HEADER_LEN: usize = 16;
/// `struct inet_diag_msg`: family, state, timer, retrans, the 48-byte socket id, expires,
/// rqueue, wqueue, uid, inode.
const DIAG_MSG_LEN: usize = 72;
/// Offsets in `struct tcp_info` (stable ABI since Linux 4.1, which added `bytes_received`).
const TCPI_BYTES_ACKED: usize = 120;
const TCPI_BYTES_RECEIVED: usize = 128;

/// TCP states whose connection can still move data: ESTABLISHED, FIN_WAIT1, FIN_WAIT2,
/// CLOSE_WAIT, LAST_ACK, CLOSING (`1 << state`).
const OPEN_STATES: u32 = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 11);

/// Every open TCP connection (IPv4 and IPv6) with its byte counters.
pub fn tcp_sockets() -> Result<Vec<TcpSocket>, SockDiagError> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(SockDiagError::Open(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut sockets = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        send_request(&fd, family)?;
        receive_dump(&fd, family, &mut sockets)?;
    }
    Ok(sockets)
}

/// `nlmsghdr` + `inet_diag_req_v2` asking for the TCP sockets of `family` with `tcp_info`.
fn request(family: u8) -> Vec<u8> {
    let mut msg = Vec::with_capacity(NLMSG_HEADER_LEN + 56);
    msg.extend_from_slice(&((NLMSG_HEADER_LEN + 56) as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    msg.extend_from_slice(&[family, IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0]);
    msg.extend_from_slice(&OPEN_STATES.to_ne_bytes());
    msg.extend_from_slice(&[0; 48]); // inet_diag_sockid: no filter
    msg
}

fn send_request(fd: &OwnedFd, family: u8) -> Result<(), SockDiagError> {
    let msg = request(family);
    // SAFETY: an all-zero sockaddr_nl is valid; nl_family set below (destination: the kernel).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: `msg` and `kernel` outlive the call; lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(SockDiagError::Send {
            family,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn receive_dump(
    fd: &OwnedFd,
    family: u8,
    sockets: &mut Vec<TcpSocket>,
) -> Result<(), SockDiagError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is writable for its length.
        let len = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if len < 0 {
            let source = std::io::Error::last_os_error();
            if source.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(SockDiagError::Receive { family, source });
        }
        if parse_datagram(&buf[..len as usize], family, sockets)? == Dump::Done {
            return Ok(());
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Dump {
    More,
    Done,
}

fn u16_at(data: &[u8], at: usize) -> Result<u16, SockDiagError> {
    data.get(at..at + 2)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .ok_or(SockDiagError::Malformed("truncated message"))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, SockDiagError> {
    data.get(at..at + 4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(SockDiagError::Malformed("truncated message"))
}

fn u64_at(data: &[u8], at: usize) -> Result<u64, SockDiagError> {
    data.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_ne_bytes)
        .ok_or(SockDiagError::Malformed("truncated tcp_info"))
}

const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// Parses the netlink messages of one datagram into `sockets`.
fn parse_datagram(
    mut data: &[u8],
    family: u8,
    sockets: &mut Vec<TcpSocket>,
) -> Result<Dump, SockDiagError> {
    while data.len() >= NLMSG_HEADER_LEN {
        let len = u32_at(data, 0)? as usize;
        let kind = u16_at(data, 4)?;
        if len < NLMSG_HEADER_LEN || len > data.len() {
            return Err(SockDiagError::Malformed("bad netlink message length"));
        }
        let body = &data[NLMSG_HEADER_LEN..len];
        match kind {
            NLMSG_DONE => return Ok(Dump::Done),
            NLMSG_ERROR => {
                let errno = -(u32_at(body, 0)? as i32);
                return Err(SockDiagError::Refused { family, errno });
            }
            SOCK_DIAG_BY_FAMILY => {
                if let Some(socket) = parse_socket(body)? {
                    sockets.push(socket);
                }
            }
            _ => {}
        }
        data = data.get(align4(len)..).unwrap_or_default();
    }
    Ok(Dump::More)
}

/// One `inet_diag_msg` and its attributes; `None` when it carries no `tcp_info`.
fn parse_socket(body: &[u8]) -> Result<Option<TcpSocket>, SockDiagError> {
    if body.len() < DIAG_MSG_LEN {
        return Err(SockDiagError::Malformed("inet_diag_msg too short"));
    }
    let family = body[0];
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    let addr = |at: usize| -> IpAddr {
        let b = &body[at..at + 16];
        if family == libc::AF_INET6 as u8 {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(b);
            IpAddr::V6(Ipv6Addr::from(octets))
        } else {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
    };
    // inet_diag_sockid at 4: sport, dport, src[16], dst[16], interface, cookie[2].
    let local = SocketAddr::new(addr(8), port(4));
    let remote = SocketAddr::new(addr(24), port(6));
    let cookie = u64::from(u32_at(body, 44)?) | u64::from(u32_at(body, 48)?) << 32;
    let inode = u64::from(u32_at(body, 68)?);
    let mut attrs = &body[DIAG_MSG_LEN..];
    while attrs.len() >= 4 {
        let len = usize::from(u16_at(attrs, 0)?);
        let kind = u16_at(attrs, 2)?;
        if len < 4 || len > attrs.len() {
            return Err(SockDiagError::Malformed("bad attribute length"));
        }
        if kind == INET_DIAG_INFO {
            let info = &attrs[4..len];
            return Ok(Some(TcpSocket {
                cookie,
                inode,
                local,
                remote,
                bytes_acked: u64_at(info, TCPI_BYTES_ACKED)?,
                bytes_received: u64_at(info, TCPI_BYTES_RECEIVED)?,
            }));
        }
        attrs = attrs.get(align4(len)..).unwrap_or_default();
    }
    Ok(None)
}

/// The process holding each of `inodes` open (the first found, for a shared socket), from
/// the `socket:[INODE]` links in `/proc/PID/fd`.
pub fn socket_owners(
    proc_root: &std::path::Path,
    inodes: &std::collections::HashSet<u64>,
) -> std::collections::HashMap<u64, u32> {
    let mut owners = std::collections::HashMap::new();
    if inodes.is_empty() {
        return owners;
    }
    for pid in crate::forensics::all_pids(proc_root) {
        let Ok(fds) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(inode) = std::fs::read_link(fd.path()).ok().and_then(|target| {
                target
                    .to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            }) else {
                continue;
            };
            if inodes.contains(&inode) {
                owners.entry(inode).or_insert(pid);
            }
        }
        if owners.len() == inodes.len() {
            break;
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SOCK_DIAG_BY_FAMILY message as the kernel writes it, for an IPv4 socket.
    fn diag_message(acked: u64, received: u64) -> Vec<u8> {
        let mut body = vec![libc::AF_INET as u8, 1, 0, 0];
        body.extend_from_slice(&40000u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[198, 51, 100, 9]);
        body.extend_from_slice(&src);
        body.extend_from_slice(&dst);
        body.extend_from_slice(&0u32.to_ne_bytes()); // interface
        body.extend_from_slice(&0x2au32.to_ne_bytes()); // cookie low
        body.extend_from_slice(&0x1u32.to_ne_bytes()); // cookie high
        body.extend_from_slice(&[0; 16]); // expires, rqueue, wqueue, uid
        body.extend_from_slice(&777u32.to_ne_bytes()); // inode
        let mut info = vec![0u8; 232];
        info[TCPI_BYTES_ACKED..TCPI_BYTES_ACKED + 8].copy_from_slice(&acked.to_ne_bytes());
        info[TCPI_BYTES_RECEIVED..TCPI_BYTES_RECEIVED + 8].copy_from_slice(&received.to_ne_bytes());
        body.extend_from_slice(&((4 + info.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        body.extend_from_slice(&info);
        let mut msg = Vec::new();
        msg.extend_from_slice(&((NLMSG_HEADER_LEN + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn parses_a_socket_with_its_counters() {
        let mut sockets = Vec::new();
        let dump = parse_datagram(&diag_message(5_000, 70), 2, &mut sockets).unwrap();
        assert_eq!(dump, Dump::More);
        assert_eq!(
            sockets,
            [TcpSocket {
                cookie: (1 << 32) | 0x2a,
                inode: 777,
                local: "127.0.0.1:40000".parse().unwrap(),
                remote: "198.51.100.9:443".parse().unwrap(),
                bytes_acked: 5_000,
                bytes_received: 70,
            }]
        );
    }

    #[test]
    fn done_error_and_truncation() {
        let mut done = vec![0u8; 20];
        done[..4].copy_from_slice(&20u32.to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        assert_eq!(
            parse_datagram(&done, 2, &mut Vec::new()).unwrap(),
            Dump::Done
        );
        let mut error = done.clone();
        error[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        assert!(matches!(
            parse_datagram(&error, 2, &mut Vec::new()),
            Err(SockDiagError::Refused { errno: 1, .. })
        ));
        let message = diag_message(1, 1);
        let mut cut = message[..100].to_vec();
        cut[..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(matches!(
            parse_datagram(&cut, 2, &mut Vec::new()),
            Err(SockDiagError::Malformed(_))
        ));
    }

    #[test]
    fn dumps_a_live_loopback_connection_with_its_owner() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(&[7u8; 10_000]).unwrap();
        let mut got = vec![0u8; 10_000];
        server.read_exact(&mut got).unwrap();
        let local = client.local_addr().unwrap();
        let sockets = match tcp_sockets() {
            Ok(sockets) => sockets,
            Err(SockDiagError::Open(err)) => {
                eprintln!("skipped: no sock_diag here ({err})");
                return;
            }
            Err(err) => panic!("{err}"),
        };
        let mine = sockets
            .iter()
            .find(|s| s.local == local)
            .expect("the client socket is listed");
        assert_eq!(mine.remote, listener.local_addr().unwrap());
        assert!(mine.bytes_acked >= 10_000, "{mine:?}");
        let owners = socket_owners(
            std::path::Path::new("/proc"),
            &std::collections::HashSet::from([mine.inode]),
        );
        assert_eq!(owners.get(&mine.inode), Some(&std::process::id()));
    }
}
