use crate::{Header, PATH_CAPTURE};

/// Privilege- and memory-relevant calls.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivOp {
    Setuid = 1,
    Setgid = 2,
    Setreuid = 3,
    Setregid = 4,
    Setresuid = 5,
    Setresgid = 6,
    /// args: target pid, effective, permitted, inheritable (low 32 bits of each set).
    Capset = 7,
    /// args: request, target pid.
    Ptrace = 8,
    /// args: module image length.
    InitModule = 9,
    /// args: fd, flags.
    FinitModule = 10,
    /// args: command.
    Bpf = 11,
    /// args: flags; `name` holds the memfd name.
    MemfdCreate = 12,
    /// args: addr, len, prot, flags.
    MmapRwx = 13,
    /// args: addr, len, prot.
    MprotectRwx = 14,
}

impl PrivOp {
    pub fn from_u16(value: u16) -> Option<Self> {
        use PrivOp::*;
        Some(match value {
            1 => Setuid,
            2 => Setgid,
            3 => Setreuid,
            4 => Setregid,
            5 => Setresuid,
            6 => Setresgid,
            7 => Capset,
            8 => Ptrace,
            9 => InitModule,
            10 => FinitModule,
            11 => Bpf,
            12 => MemfdCreate,
            13 => MmapRwx,
            14 => MprotectRwx,
            _ => return None,
        })
    }

    /// The syscall's name.
    pub fn syscall(self) -> &'static str {
        use PrivOp::*;
        match self {
            Setuid => "setuid",
            Setgid => "setgid",
            Setreuid => "setreuid",
            Setregid => "setregid",
            Setresuid => "setresuid",
            Setresgid => "setresgid",
            Capset => "capset",
            Ptrace => "ptrace",
            InitModule => "init_module",
            FinitModule => "finit_module",
            Bpf => "bpf",
            MemfdCreate => "memfd_create",
            MmapRwx => "mmap",
            MprotectRwx => "mprotect",
        }
    }
}

/// Bytes of a name captured with a privilege record (memfd names).
pub const NAME_CAPTURE: usize = 64;
const _: () = assert!(NAME_CAPTURE <= PATH_CAPTURE);

/// One privilege-relevant call with its raw arguments (meaning per [`PrivOp`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PrivRecord {
    pub header: Header,
    pub args: [u64; 4],
    pub name: [u8; NAME_CAPTURE],
}
