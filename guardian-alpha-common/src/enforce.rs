use crate::{Header, PATH_CAPTURE};

/// What the kernel refused on the agent's behalf.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnforceOp {
    /// connect()/sendmsg() to a blocked address, refused with EPERM.
    ConnectBlocked = 1,
    /// execve() of a blocked path: the caller was sent SIGKILL before the new image ran.
    ExecKilled = 2,
}

impl EnforceOp {
    pub fn from_u16(value: u16) -> Option<Self> {
        Some(match value {
            1 => EnforceOp::ConnectBlocked,
            2 => EnforceOp::ExecKilled,
            _ => return None,
        })
    }
}

/// One enforcement by the kernel. For a blocked connect `addr`/`port`/`family` say where to;
/// for a killed exec `path` is the path the process tried to run.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnforceRecord {
    pub header: Header,
    pub family: u16,
    pub port: u16,
    pub pad: u32,
    pub addr: [u8; 16],
    pub path: [u8; PATH_CAPTURE],
}

/// Blocked IPv4 address key (network byte order as the kernel stores it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockedV4 {
    pub addr: [u8; 4],
}

/// Blocked IPv6 address key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockedV6 {
    pub addr: [u8; 16],
}
