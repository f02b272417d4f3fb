/// Offsets the kernel program needs but cannot know by itself: fields of kernel structs (read
/// by the agent from the kernel's BTF) and of tracepoint records (read from tracefs `format`
/// files). The agent fills this in before loading; a zero struct offset means "unknown" and the
/// dependent field is reported as 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_mm: u32,
    pub task_exit_code: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    /// sched/sched_process_exec: `__data_loc char[] filename`.
    pub exec_filename: u32,
    /// task/task_newtask: `pid`, `clone_flags`.
    pub newtask_pid: u32,
    pub newtask_clone_flags: u32,
    /// sock/inet_sock_set_state fields.
    pub sk_skaddr: u32,
    pub sk_oldstate: u32,
    pub sk_newstate: u32,
    pub sk_sport: u32,
    pub sk_dport: u32,
    pub sk_family: u32,
    pub sk_protocol: u32,
    pub sk_saddr_v6: u32,
    pub sk_daddr_v6: u32,
    pub sk_saddr: u32,
    pub sk_daddr: u32,
    /// signal/signal_generate: `sig`, `pid`.
    pub signal_sig: u32,
    pub signal_pid: u32,
    /// sched/sched_process_exit: `group_dead` (kernels ≥ 6.16; 0 when absent).
    pub exit_group_dead: u32,
    /// `tcp_sock.bytes_acked` and `tcp_sock.bytes_received` (a `tcp_sock` starts with its
    /// `struct sock`, which is what `skaddr` points at).
    pub tcp_bytes_acked: u32,
    pub tcp_bytes_received: u32,
    /// `sock.__sk_common.skc_cookie`.
    pub sk_cookie: u32,
}

/// The chain of struct member offsets from a task's mm to the folder of its executable, for the
/// exec hook alone (a global of its own: every hook copies [`KernelLayout`] onto its stack).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExeFolderLayout {
    /// `mm_struct.exe_file`, `file.f_path.dentry`, `dentry.d_parent`, `dentry.d_inode`,
    /// `inode.i_mode`.
    pub mm_exe_file: u32,
    pub file_dentry: u32,
    pub dentry_parent: u32,
    pub dentry_inode: u32,
    pub inode_mode: u32,
    /// Non-zero when every offset is known (`inode_mode` may well be 0).
    pub known: u32,
}
