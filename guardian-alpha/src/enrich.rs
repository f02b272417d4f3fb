//! Turns decoded kernel records into qsc events, keeping the process table current.

use std::net::IpAddr;

use guardian_alpha_common::{
    EnforceOp, FileOp, Header, NetOp, PrivOp, c_bytes, file::open_modifies,
};
use qsc_event::{
    Enforcement, EnforcementAction, EventKind, FileChmod, FileChown, FileOpen, FileRename,
    FileUnlink, MemoryRwx, NetConnection, NetListen, PrivBpf, PrivCapset, PrivMemfdCreate,
    PrivModuleLoad, PrivPtrace, PrivSetid, ProcessExec, ProcessExit, ProcessFork, RwxSource,
    TamperAttempt,
};

use crate::{
    proctable::{Caller, ProcessTable},
    record::Record,
    volume::VolumeTracker,
};

fn caller(header: &Header) -> Caller<'_> {
    Caller {
        pid: header.tgid,
        tid: header.pid,
        ppid: header.ppid,
        uid: header.uid,
        gid: header.gid,
        cgroup_id: header.cgroup_id,
        comm: std::str::from_utf8(c_bytes(&header.comm)).unwrap_or("?"),
        ktime_ns: header.ktime_ns,
    }
}

/// Counters the host-metrics sampler reads.
#[derive(Default, Debug, Clone, Copy)]
pub struct ActivityCounters {
    pub execs: u64,
    pub connects: u64,
}

pub struct Enricher {
    pub table: ProcessTable,
    pub counters: ActivityCounters,
    /// Where closed connections' byte counts go (reported per interval, not per record).
    pub volume: VolumeTracker,
}

impl Enricher {
    pub fn new(table: ProcessTable, volume: VolumeTracker) -> Self {
        Enricher {
            table,
            counters: ActivityCounters::default(),
            volume,
        }
    }

    /// The event for `record`; `None` for a closed connection, which only feeds the volume
    /// accounting.
    pub fn enrich(&mut self, record: Record) -> Option<EventKind> {
        let header = *record.header();
        let c = caller(&header);
        Some(match record {
            Record::Exec {
                filename,
                argv,
                folder_mode,
                ..
            } => {
                self.counters.execs += 1;
                self.table.on_exec(&c, &filename, &argv);
                let folder_world_writable = match folder_mode {
                    Some(mode) => Some(mode & 0o002 != 0),
                    None => self.table.exec_folder_world_writable(&c, &filename),
                };
                EventKind::ProcessExec(ProcessExec {
                    process: self.table.process_info(&c),
                    folder_world_writable,
                    filename,
                    argv,
                })
            }
            Record::Exit {
                exit_code, signal, ..
            } => {
                let process = self.table.process_info(&c);
                self.table.on_exit(c.pid);
                EventKind::ProcessExit(ProcessExit {
                    process,
                    exit_code,
                    signal,
                })
            }
            Record::Fork { child_pid, .. } => {
                self.table.on_fork(&c, child_pid);
                EventKind::ProcessFork(ProcessFork {
                    process: self.table.process_info(&c),
                    child_pid,
                })
            }
            Record::File {
                op,
                path,
                flags,
                uid,
                gid,
                ..
            } => self.file_event(&c, op, path, flags, uid, gid),
            Record::Rename { path, new_path, .. } => EventKind::FileRename(FileRename {
                process: self.table.process_info(&c),
                path,
                new_path,
            }),
            Record::Net {
                op, local, remote, ..
            } => self.net_event(&c, op, local, remote),
            Record::NetClose {
                remote,
                bytes_acked,
                bytes_received,
                cookie,
                ..
            } => {
                let process = self.table.process_info(&c);
                self.volume
                    .on_close(process, remote.0, cookie, bytes_acked, bytes_received);
                return None;
            }
            Record::Priv { op, args, name, .. } => self.priv_event(&c, op, args, name),
            Record::Enforce { op, target, .. } => EventKind::Enforcement(Enforcement {
                process: self.table.process_info(&c),
                action: match op {
                    EnforceOp::ConnectBlocked => EnforcementAction::ConnectBlocked,
                    EnforceOp::ExecKilled => EnforcementAction::ExecKilled,
                    EnforceOp::RevokedUidExec
                    | EnforceOp::RevokedUidSwitch
                    | EnforceOp::RevokedUidFork => EnforcementAction::RevokedUidKilled,
                },
                target,
            }),
            Record::Signal { signal, .. } => EventKind::TamperAttempt(TamperAttempt {
                action: "signal".into(),
                process: Some(self.table.process_info(&c)),
                signal: Some(signal),
                detail: Some(format!("signal {signal} sent to the agent")),
            }),
        })
    }

    fn file_event(
        &mut self,
        c: &Caller,
        op: FileOp,
        path: String,
        flags: u32,
        uid: i64,
        gid: i64,
    ) -> EventKind {
        let process = self.table.process_info(c);
        match op {
            FileOp::Open => EventKind::FileOpen(FileOpen {
                process,
                path,
                flags,
                write: open_modifies(flags),
            }),
            FileOp::Chmod => EventKind::FileChmod(FileChmod {
                process,
                path,
                mode: flags,
            }),
            FileOp::Chown => EventKind::FileChown(FileChown {
                process,
                path,
                uid,
                gid,
            }),
            FileOp::Unlink => EventKind::FileUnlink(FileUnlink { process, path }),
        }
    }

    fn net_event(
        &mut self,
        c: &Caller,
        op: NetOp,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
    ) -> EventKind {
        let process = self.table.process_info(c);
        let protocol = "tcp".to_owned();
        match op {
            NetOp::Connect => {
                self.counters.connects += 1;
                EventKind::NetConnect(NetConnection {
                    process,
                    protocol,
                    src_ip: local.0,
                    src_port: local.1,
                    dst_ip: remote.0,
                    dst_port: remote.1,
                })
            }
            // For an accepted connection the remote peer is the source.
            NetOp::Accept => EventKind::NetAccept(NetConnection {
                process,
                protocol,
                src_ip: remote.0,
                src_port: remote.1,
                dst_ip: local.0,
                dst_port: local.1,
            }),
            NetOp::Listen => EventKind::NetListen(NetListen {
                process,
                protocol,
                ip: local.0,
                port: local.1,
            }),
        }
    }

    fn priv_event(&mut self, c: &Caller, op: PrivOp, args: [u64; 4], name: String) -> EventKind {
        let process = self.table.process_info(c);
        // uid_t arguments are 32-bit; (uid_t)-1 means "unchanged".
        let id = |v: u64| v as u32 as i32 as i64;
        match op {
            PrivOp::Setuid | PrivOp::Setgid => EventKind::PrivSetid(PrivSetid {
                process,
                call: op.syscall().into(),
                ids: vec![id(args[0])],
            }),
            PrivOp::Setreuid | PrivOp::Setregid => EventKind::PrivSetid(PrivSetid {
                process,
                call: op.syscall().into(),
                ids: vec![id(args[0]), id(args[1])],
            }),
            PrivOp::Setresuid | PrivOp::Setresgid => EventKind::PrivSetid(PrivSetid {
                process,
                call: op.syscall().into(),
                ids: vec![id(args[0]), id(args[1]), id(args[2])],
            }),
            PrivOp::Capset => EventKind::PrivCapset(PrivCapset {
                process,
                target_pid: args[0] as u32,
                effective: args[1],
                permitted: args[2],
                inheritable: args[3],
            }),
            PrivOp::Ptrace => EventKind::PrivPtrace(PrivPtrace {
                process,
                request: args[0] as i64,
                target_pid: args[1] as u32,
            }),
            PrivOp::InitModule => EventKind::PrivModuleLoad(PrivModuleLoad {
                process,
                call: op.syscall().into(),
                fd: None,
            }),
            PrivOp::FinitModule => EventKind::PrivModuleLoad(PrivModuleLoad {
                process,
                call: op.syscall().into(),
                fd: Some(args[0] as i32),
            }),
            PrivOp::Bpf => EventKind::PrivBpf(PrivBpf {
                process,
                cmd: args[0] as u32,
            }),
            PrivOp::MemfdCreate => EventKind::PrivMemfdCreate(PrivMemfdCreate {
                process,
                name,
                flags: args[0] as u32,
            }),
            PrivOp::MmapRwx | PrivOp::MprotectRwx => EventKind::MemoryRwx(MemoryRwx {
                process,
                origin: if op == PrivOp::MmapRwx {
                    RwxSource::Mmap
                } else {
                    RwxSource::Mprotect
                },
                addr: args[0],
                len: args[1],
                prot: args[2] as u32,
                region: None,
            }),
        }
    }
}
