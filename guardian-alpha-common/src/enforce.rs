use crate::{Header, PATH_CAPTURE};

/// What the kernel refused on the agent's behalf.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnforceOp {
    /// connect()/sendmsg() to a blocked address, refused with EPERM.
    ConnectBlocked = 1,
    /// execve() of a blocked path: the caller was sent SIGKILL before the new image ran.
    ExecKilled = 2,
    /// execve() by a process whose real uid is revoked: killed before the new image ran.
    RevokedUidExec = 3,
    /// A setuid-family call naming a revoked uid: killed before it returned to user space.
    RevokedUidSwitch = 4,
    /// A fork or new thread of a process whose real uid is revoked: the caller was killed.
    RevokedUidFork = 5,
}

impl EnforceOp {
    pub fn from_u16(value: u16) -> Option<Self> {
        Some(match value {
            1 => EnforceOp::ConnectBlocked,
            2 => EnforceOp::ExecKilled,
            3 => EnforceOp::RevokedUidExec,
            4 => EnforceOp::RevokedUidSwitch,
            5 => EnforceOp::RevokedUidFork,
            _ => return None,
        })
    }
}

/// One enforcement by the kernel. For a blocked connect `addr`/`port`/`family` say where to;
/// for a killed exec `path` is the path the process tried to run; for a revoked uid `uid`
/// is that uid (0 otherwise).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnforceRecord {
    pub header: Header,
    pub family: u16,
    pub port: u16,
    pub uid: u32,
    pub addr: [u8; 16],
    pub path: [u8; PATH_CAPTURE],
}

/// What the agent enforces in the kernel: the slot of each in the `ENFORCING` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnforceSwitch {
    /// Exec of the paths in `BLOCKED_EXEC` is killed.
    BlockedExec = 0,
    /// The uids in `REVOKED_UIDS` can neither exec, fork nor be switched to.
    RevokedUids = 1,
}

impl EnforceSwitch {
    pub const COUNT: u32 = 2;
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
