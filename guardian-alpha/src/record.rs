//! Decoding of the kernel's ring-buffer records into typed, owned values.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use guardian_alpha_common::{
    EnforceOp, EnforceRecord, ExecRecord, ExitRecord, FileOp, FileRecord, ForkRecord, Header,
    NetCloseRecord, NetOp, NetRecord, PrivOp, PrivRecord, RecordKind, RenameRecord, SignalRecord,
    c_bytes, net::AF_INET6,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {needed}-byte layout")]
    Short { len: usize, needed: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u16),
    #[error("unknown operation {op} for record kind {kind:?}")]
    UnknownOp { kind: RecordKind, op: u16 },
}

/// One kernel record, decoded.
#[derive(Debug, Clone)]
pub enum Record {
    Exec {
        header: Header,
        filename: String,
        argv: Vec<String>,
        /// The executed file's folder mode (`None`: the kernel could not tell).
        folder_mode: Option<u32>,
    },
    Exit {
        header: Header,
        exit_code: i32,
        signal: Option<i32>,
    },
    Fork {
        header: Header,
        child_pid: u32,
    },
    File {
        header: Header,
        op: FileOp,
        path: String,
        flags: u32,
        uid: i64,
        gid: i64,
    },
    Rename {
        header: Header,
        path: String,
        new_path: String,
    },
    Net {
        header: Header,
        op: NetOp,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
    },
    /// The end of a connection, with the bytes it moved over its life.
    NetClose {
        header: Header,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
        bytes_acked: u64,
        bytes_received: u64,
        cookie: u64,
    },
    Priv {
        header: Header,
        op: PrivOp,
        args: [u64; 4],
        name: String,
    },
    Signal {
        header: Header,
        signal: i32,
        target_pid: u32,
    },
    Enforce {
        header: Header,
        op: EnforceOp,
        /// `ip:port` for a blocked connect, the path for a killed exec, `uid N: what` for a
        /// revoked uid.
        target: String,
    },
}

impl Record {
    pub fn header(&self) -> &Header {
        match self {
            Record::Exec { header, .. }
            | Record::Exit { header, .. }
            | Record::Fork { header, .. }
            | Record::File { header, .. }
            | Record::Rename { header, .. }
            | Record::Net { header, .. }
            | Record::NetClose { header, .. }
            | Record::Priv { header, .. }
            | Record::Signal { header, .. }
            | Record::Enforce { header, .. } => header,
        }
    }
}

fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let needed = size_of::<T>();
    if bytes.len() < needed {
        return Err(DecodeError::Short {
            len: bytes.len(),
            needed,
        });
    }
    // SAFETY: length checked; every record type is plain old data valid for any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(c_bytes(bytes)).into_owned()
}

fn ip(family: u16, addr: [u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(addr))
    } else {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    }
}

/// Splits NUL-separated argv bytes.
fn split_args(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let header: Header = read(bytes)?;
    let kind = header
        .record_kind()
        .ok_or(DecodeError::UnknownKind(header.kind))?;
    let unknown_op = || DecodeError::UnknownOp {
        kind,
        op: header.op,
    };
    Ok(match kind {
        RecordKind::Exec => {
            let r: ExecRecord = read(bytes)?;
            let args_len = (r.args_len as usize).min(r.args.len());
            Record::Exec {
                header,
                filename: text(&r.filename),
                argv: split_args(&r.args[..args_len]),
                folder_mode: (r.folder_mode != 0).then_some(r.folder_mode),
            }
        }
        RecordKind::Exit => {
            let r: ExitRecord = read(bytes)?;
            let signal = (r.exit_code & 0x7f) as i32;
            Record::Exit {
                header,
                exit_code: if signal == 0 {
                    ((r.exit_code >> 8) & 0xff) as i32
                } else {
                    128 + signal
                },
                signal: (signal != 0).then_some(signal),
            }
        }
        RecordKind::Fork => {
            let r: ForkRecord = read(bytes)?;
            Record::Fork {
                header,
                child_pid: r.child_pid,
            }
        }
        RecordKind::File => {
            let r: FileRecord = read(bytes)?;
            Record::File {
                header,
                op: FileOp::from_u16(header.op).ok_or_else(unknown_op)?,
                path: text(&r.path),
                flags: r.flags,
                uid: r.uid,
                gid: r.gid,
            }
        }
        RecordKind::Rename => {
            let r: RenameRecord = read(bytes)?;
            Record::Rename {
                header,
                path: text(&r.path),
                new_path: text(&r.new_path),
            }
        }
        RecordKind::Net => {
            let r: NetRecord = read(bytes)?;
            Record::Net {
                header,
                op: NetOp::from_u16(header.op).ok_or_else(unknown_op)?,
                local: (ip(r.family, r.local_addr), r.local_port),
                remote: (ip(r.family, r.remote_addr), r.remote_port),
            }
        }
        RecordKind::NetClose => {
            let r: NetCloseRecord = read(bytes)?;
            Record::NetClose {
                header,
                local: (ip(r.net.family, r.net.local_addr), r.net.local_port),
                remote: (ip(r.net.family, r.net.remote_addr), r.net.remote_port),
                bytes_acked: r.bytes_acked,
                bytes_received: r.bytes_received,
                cookie: r.cookie,
            }
        }
        RecordKind::Priv => {
            let r: PrivRecord = read(bytes)?;
            Record::Priv {
                header,
                op: PrivOp::from_u16(header.op).ok_or_else(unknown_op)?,
                args: r.args,
                name: text(&r.name),
            }
        }
        RecordKind::Signal => {
            let r: SignalRecord = read(bytes)?;
            Record::Signal {
                header,
                signal: r.signal,
                target_pid: r.target_pid,
            }
        }
        RecordKind::Enforce => {
            let r: EnforceRecord = read(bytes)?;
            let op = EnforceOp::from_u16(header.op).ok_or_else(unknown_op)?;
            let target = match op {
                EnforceOp::ConnectBlocked => {
                    std::net::SocketAddr::new(ip(r.family, r.addr), r.port).to_string()
                }
                EnforceOp::ExecKilled => text(&r.path),
                EnforceOp::RevokedUidExec => format!("uid {}: exec {}", r.uid, text(&r.path)),
                EnforceOp::RevokedUidSwitch => format!("uid {}: switch to it", r.uid),
                EnforceOp::RevokedUidFork => format!("uid {}: fork", r.uid),
            };
            Record::Enforce { header, op, target }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use guardian_alpha_common::{ARGS_CAPTURE, PATH_CAPTURE};

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: test-only view of a plain-old-data record.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn header(kind: RecordKind, op: u16) -> Header {
        let mut h = Header::zeroed();
        h.kind = kind as u16;
        h.op = op;
        h.tgid = 42;
        h.comm[..4].copy_from_slice(b"bash");
        h
    }

    fn path_bytes(s: &str) -> [u8; PATH_CAPTURE] {
        let mut out = [0; PATH_CAPTURE];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out
    }

    #[test]
    fn decodes_exec_with_argv() {
        let mut args = [0u8; ARGS_CAPTURE];
        let argv = b"ls\0-la\0/tmp\0";
        args[..argv.len()].copy_from_slice(argv);
        let record = ExecRecord {
            header: header(RecordKind::Exec, 0),
            args_len: argv.len() as u32,
            args_truncated: 0,
            folder_mode: 0o041777,
            _pad: 0,
            filename: path_bytes("/usr/bin/ls"),
            args,
        };
        let Record::Exec {
            filename,
            argv,
            folder_mode,
            ..
        } = decode(&bytes_of(&record)).unwrap()
        else {
            panic!("not an exec");
        };
        assert_eq!(filename, "/usr/bin/ls");
        assert_eq!(argv, ["ls", "-la", "/tmp"]);
        assert_eq!(folder_mode, Some(0o041777));
    }

    #[test]
    fn decodes_exit_codes_and_signals() {
        let exit = |code: u32| ExitRecord {
            header: header(RecordKind::Exit, 0),
            exit_code: code,
            pad: 0,
        };
        let Record::Exit {
            exit_code, signal, ..
        } = decode(&bytes_of(&exit(3 << 8))).unwrap()
        else {
            panic!()
        };
        assert_eq!((exit_code, signal), (3, None));
        let Record::Exit {
            exit_code, signal, ..
        } = decode(&bytes_of(&exit(9))).unwrap()
        else {
            panic!()
        };
        assert_eq!((exit_code, signal), (137, Some(9)));
    }

    /// A TCP record from 0.0.0.0:40000 to the IPv4 `remote`:`port`.
    fn net_record(header: Header, remote: [u8; 4], port: u16) -> NetRecord {
        let mut record = NetRecord {
            header,
            family: guardian_alpha_common::net::AF_INET,
            local_port: 40000,
            remote_port: port,
            protocol: 6,
            local_addr: [0; 16],
            remote_addr: [0; 16],
        };
        record.remote_addr[..4].copy_from_slice(&remote);
        record
    }

    #[test]
    fn decodes_ipv4_and_ipv6_connections() {
        let mut record = net_record(
            header(RecordKind::Net, NetOp::Connect as u16),
            [127, 0, 0, 2],
            22,
        );
        let Record::Net { remote, op, .. } = decode(&bytes_of(&record)).unwrap() else {
            panic!()
        };
        assert_eq!(op, NetOp::Connect);
        assert_eq!(remote, ("127.0.0.2".parse().unwrap(), 22));
        record.family = AF_INET6;
        record.remote_addr = Ipv6Addr::LOCALHOST.octets();
        let Record::Net { remote, .. } = decode(&bytes_of(&record)).unwrap() else {
            panic!()
        };
        assert_eq!(remote.0, IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn decodes_a_closed_connection_with_its_counters() {
        let record = NetCloseRecord {
            net: net_record(header(RecordKind::NetClose, 0), [198, 51, 100, 88], 9000),
            bytes_acked: 150_000_000,
            bytes_received: 12,
            cookie: 99,
        };
        let Record::NetClose {
            remote,
            bytes_acked,
            bytes_received,
            cookie,
            ..
        } = decode(&bytes_of(&record)).unwrap()
        else {
            panic!("not a close")
        };
        assert_eq!(remote, ("198.51.100.88".parse().unwrap(), 9000));
        assert_eq!((bytes_acked, bytes_received, cookie), (150_000_000, 12, 99));
        // The counters are part of the layout: a plain net record is too short.
        let mut short = bytes_of(&record.net);
        short[0] = RecordKind::NetClose as u8;
        assert!(matches!(decode(&short), Err(DecodeError::Short { .. })));
    }

    #[test]
    fn decodes_what_the_kernel_enforced() {
        let enforce = |op: EnforceOp, uid: u32, path: &str| EnforceRecord {
            header: header(RecordKind::Enforce, op as u16),
            family: guardian_alpha_common::net::AF_INET,
            port: 4444,
            uid,
            addr: [10, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            path: path_bytes(path),
        };
        let target_of = |record: EnforceRecord| match decode(&bytes_of(&record)).unwrap() {
            Record::Enforce { op, target, .. } => (op, target),
            other => panic!("not an enforcement: {other:?}"),
        };
        let cases = [
            (
                enforce(EnforceOp::ConnectBlocked, 0, ""),
                "10.0.0.9:4444".to_owned(),
            ),
            (enforce(EnforceOp::ExecKilled, 0, "/tmp/x"), "/tmp/x".into()),
            (
                enforce(EnforceOp::RevokedUidExec, 1001, "/bin/id"),
                "uid 1001: exec /bin/id".into(),
            ),
            (
                enforce(EnforceOp::RevokedUidSwitch, 1001, ""),
                "uid 1001: switch to it".into(),
            ),
            (
                enforce(EnforceOp::RevokedUidFork, 1001, ""),
                "uid 1001: fork".into(),
            ),
        ];
        for (record, target) in cases {
            let op = EnforceOp::from_u16(record.header.op).unwrap();
            assert_eq!(target_of(record), (op, target));
        }
    }

    #[test]
    fn rejects_short_unknown_and_bad_ops() {
        assert!(matches!(decode(&[0; 8]), Err(DecodeError::Short { .. })));
        let bad_kind = header(RecordKind::Exec, 0);
        let mut bytes = bytes_of(&bad_kind);
        bytes[0] = 99;
        assert_eq!(decode(&bytes).unwrap_err(), DecodeError::UnknownKind(99));
        let file = FileRecord {
            header: header(RecordKind::File, 77),
            flags: 0,
            path_len: 4,
            uid: -1,
            gid: -1,
            path: path_bytes("/etc"),
        };
        assert!(matches!(
            decode(&bytes_of(&file)),
            Err(DecodeError::UnknownOp { op: 77, .. })
        ));
        // A record truncated after its header is rejected, not read past its end.
        let exec_header = bytes_of(&header(RecordKind::Exec, 0));
        assert!(matches!(
            decode(&exec_header),
            Err(DecodeError::Short { .. })
        ));
    }
}
