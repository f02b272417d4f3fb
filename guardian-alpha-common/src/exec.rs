use crate::{ARGS_CAPTURE, Header, PATH_CAPTURE};

/// A successful exec (`sched/sched_process_exec`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecRecord {
    pub header: Header,
    /// Bytes of `args` that hold argv (NUL-separated), at most `ARGS_CAPTURE`.
    pub args_len: u32,
    /// Non-zero when argv was longer than what was captured.
    pub args_truncated: u32,
    /// `i_mode` of the folder holding the executed file (its dentry's parent), read in the
    /// kernel at exec; 0 when unknown (no BTF).
    pub folder_mode: u32,
    pub _pad: u32,
    pub filename: [u8; PATH_CAPTURE],
    pub args: [u8; ARGS_CAPTURE],
}
