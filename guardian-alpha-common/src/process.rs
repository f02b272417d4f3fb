use crate::Header;

/// A process (thread-group leader) exiting (`sched/sched_process_exit`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExitRecord {
    pub header: Header,
    /// `task_struct.exit_code`: `(code << 8) | signal`.
    pub exit_code: u32,
    pub pad: u32,
}

/// A new process (not a thread) created by fork/clone (`task/task_newtask`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ForkRecord {
    pub header: Header,
    pub child_pid: u32,
    pub pad: u32,
    pub clone_flags: u64,
}

/// A signal generated for the agent's own process (`signal/signal_generate`): a tamper attempt.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SignalRecord {
    pub header: Header,
    pub signal: i32,
    pub target_pid: u32,
}
