//! Guardian-Alpha against the real kernel: each test performs a real action (its own child
//! processes, temp files, loopback sockets) and checks the event the agent reports for it.
//! Root only; `cargo xtask test` makes them fail rather than skip when run as root.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use guardian_alpha_common::file::WATCH_LIST_WORDS;
use qsc_event::{Event, EventKind, RwxSource};
use qsc_tests::{
    alpha::{AlphaAgent, config_network_volume, config_watching},
    root_or_skip,
};

const ACTOR: &str = env!("CARGO_BIN_EXE_qsc-test-actor");

fn pid_of(event: &Event) -> Option<u32> {
    event.process().map(|p| p.pid)
}

fn run_actor(args: &[&str]) -> u32 {
    let child = Command::new(ACTOR).args(args).spawn().expect("spawn actor");
    let pid = child.id();
    let output = child.wait_with_output().expect("actor");
    assert!(output.status.success(), "actor {args:?} failed");
    pid
}

fn agent_watching_tempdir() -> (AlphaAgent, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    (AlphaAgent::start(&config_watching(dir.path()), &[]), dir)
}

#[test]
fn exec_fork_and_exit_of_a_test_process() {
    if !root_or_skip("exec_fork_and_exit_of_a_test_process") {
        return;
    }
    let (agent, _dir) = agent_watching_tempdir();
    let marker = format!("qsc-exec-marker-{}", std::process::id());
    let child = Command::new("/bin/sh")
        .args(["-c", "exit 3", &marker])
        .spawn()
        .expect("spawn sh");
    let pid = child.id();
    let status = child.wait_with_output().expect("wait").status;
    assert_eq!(status.code(), Some(3));

    let exec = agent
        .wait_for(|e| matches!(e.kind, EventKind::ProcessExec(_)) && pid_of(e) == Some(pid))
        .expect("exec event for the test's child");
    let EventKind::ProcessExec(exec_kind) = &exec.kind else {
        unreachable!()
    };
    assert_eq!(exec_kind.filename, "/bin/sh");
    assert_eq!(exec_kind.argv, ["/bin/sh", "-c", "exit 3", marker.as_str()]);
    assert_eq!(
        exec_kind.folder_world_writable,
        Some(false),
        "/bin is root's alone"
    );
    assert_eq!(&*exec_kind.process.comm, "sh");
    assert_eq!(exec_kind.process.ppid, std::process::id());
    assert_eq!(exec.host_id, "e2e-test");
    assert!(exec.mono_ns.is_some_and(|t| t > 0));
    assert!(
        exec_kind
            .process
            .ancestry
            .first()
            .is_some_and(|a| a.pid == std::process::id()),
        "ancestry starts at the test process"
    );

    let fork = agent
        .wait_for(|e| matches!(&e.kind, EventKind::ProcessFork(f) if f.child_pid == pid))
        .expect("fork event");
    assert_eq!(pid_of(&fork), Some(std::process::id()));

    let exit = agent
        .wait_for(|e| matches!(e.kind, EventKind::ProcessExit(_)) && pid_of(e) == Some(pid))
        .expect("exit event");
    let EventKind::ProcessExit(exit_kind) = &exit.kind else {
        unreachable!()
    };
    assert_eq!(exit_kind.exit_code, 3);
    assert_eq!(exit_kind.signal, None);
    agent.stop();
}

/// A program run from a folder every user may write to is reported as such, one run from a
/// folder only its owner may write to is not, even under /tmp (the process has exited by the
/// time the agent looks: the folder is found through its parent, this test).
#[test]
fn exec_reports_whether_its_folder_is_world_writable() {
    if !root_or_skip("exec_reports_whether_its_folder_is_world_writable") {
        return;
    }
    let (agent, dir) = agent_watching_tempdir();
    let mut seen = Vec::new();
    for (folder, mode) in [("shared", 0o1777), ("private", 0o755)] {
        let folder = dir.path().join(folder);
        std::fs::create_dir(&folder).expect("mkdir");
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let program = folder.join("payload");
        std::fs::copy("/bin/true", &program).expect("copy /bin/true");
        let child = Command::new(&program).spawn().expect("run the copy");
        let pid = child.id();
        assert!(child.wait_with_output().expect("wait").status.success());
        let exec = agent
            .wait_for(|e| matches!(e.kind, EventKind::ProcessExec(_)) && pid_of(e) == Some(pid))
            .expect("exec event of the copy");
        let EventKind::ProcessExec(exec_kind) = &exec.kind else {
            unreachable!()
        };
        seen.push(exec_kind.folder_world_writable);
    }
    assert_eq!(seen, [Some(true), Some(false)]);
    agent.stop();
}

/// argv longer than the kernel's capture (512 bytes) arrives cut at exactly that many bytes.
#[test]
fn exec_with_argv_longer_than_the_capture_is_cut_at_its_end() {
    if !root_or_skip("exec_with_argv_longer_than_the_capture_is_cut_at_its_end") {
        return;
    }
    let (agent, _dir) = agent_watching_tempdir();
    let long = format!("{}-{}", std::process::id(), "x".repeat(600));
    let status = Command::new("/bin/sh")
        .args(["-c", "exit 0", &long])
        .status()
        .expect("run sh");
    assert!(status.success());
    let exec = agent
        .wait_for(|e| {
            matches!(&e.kind, EventKind::ProcessExec(x)
                if x.argv.get(3).is_some_and(|a| long.starts_with(a.as_str())))
        })
        .expect("exec event with the long argument");
    let EventKind::ProcessExec(exec_kind) = &exec.kind else {
        unreachable!()
    };
    // "/bin/sh\0-c\0exit 0\0" is 18 bytes: 494 of the 512 captured are left for the last one.
    assert_eq!(exec_kind.argv[..3], ["/bin/sh", "-c", "exit 0"]);
    assert_eq!(exec_kind.argv[3], long[..494]);
    agent.stop();
}

/// A folder whose path, as a watched prefix, is too long for the kernel's inline compare
/// (`WatchList`), so the LPM trie decides for it.
fn folder_matched_by_the_trie(dir: &Path) -> PathBuf {
    let folder = dir.join("a-folder-whose-name-makes-the-prefix-longer-than-sixty-four-bytes");
    std::fs::create_dir(&folder).expect("create the long folder");
    assert!(folder.as_os_str().len() > 8 * WATCH_LIST_WORDS);
    folder
}

#[test]
fn file_operations_under_a_watched_prefix() {
    if !root_or_skip("file_operations_under_a_watched_prefix") {
        return;
    }
    let (agent, dir) = agent_watching_tempdir();
    check_file_operations(agent, dir.path());
}

#[test]
fn file_operations_under_a_prefix_matched_by_the_trie() {
    if !root_or_skip("file_operations_under_a_prefix_matched_by_the_trie") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = folder_matched_by_the_trie(dir.path());
    let agent = AlphaAgent::start(&config_watching(&folder), &[]);
    check_file_operations(agent, &folder);
}

/// Open for writing and reading, chmod, chown, rename and unlink of a file in `dir`, which
/// `agent` watches (reads and modifications), are reported; a write elsewhere is not.
fn check_file_operations(agent: AlphaAgent, dir: &Path) {
    let me = std::process::id();
    let path = dir.join("secret.conf");
    let path_s = path.display().to_string();
    std::fs::write(&path, b"x").expect("create");
    std::fs::read(&path).expect("read");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    std::os::unix::fs::chown(&path, Some(0), Some(0)).expect("chown");
    let renamed = dir.join("renamed.conf");
    std::fs::rename(&path, &renamed).expect("rename");
    std::fs::remove_file(&renamed).expect("unlink");
    // An unwatched path produces nothing.
    let elsewhere = tempfile::NamedTempFile::new().expect("unwatched file");
    std::fs::write(elsewhere.path(), b"y").expect("write unwatched");

    let open_write = agent
        .wait_for(|e| matches!(&e.kind, EventKind::FileOpen(f) if f.path == path_s && f.write))
        .expect("open for write");
    assert_eq!(pid_of(&open_write), Some(me));
    agent
        .wait_for(|e| matches!(&e.kind, EventKind::FileOpen(f) if f.path == path_s && !f.write))
        .expect("read-only open (reads = true)");
    let chmod = agent
        .wait_for(|e| matches!(&e.kind, EventKind::FileChmod(f) if f.path == path_s))
        .expect("chmod");
    let EventKind::FileChmod(chmod) = chmod.kind else {
        unreachable!()
    };
    assert_eq!(chmod.mode & 0o7777, 0o640);
    let chown = agent
        .wait_for(|e| matches!(&e.kind, EventKind::FileChown(f) if f.path == path_s))
        .expect("chown");
    let EventKind::FileChown(chown) = chown.kind else {
        unreachable!()
    };
    assert_eq!((chown.uid, chown.gid), (0, 0));
    let renamed_s = renamed.display().to_string();
    agent
        .wait_for(|e| {
            matches!(&e.kind, EventKind::FileRename(f) if f.path == path_s && f.new_path == renamed_s)
        })
        .expect("rename");
    agent
        .wait_for(|e| matches!(&e.kind, EventKind::FileUnlink(f) if f.path == renamed_s))
        .expect("unlink");
    let events = agent.stop();
    let unwatched = elsewhere.path().display().to_string();
    assert!(
        !events
            .iter()
            .any(|e| matches!(&e.kind, EventKind::FileOpen(f) if f.path == unwatched)),
        "an unwatched path was reported"
    );
}

/// A narrower prefix overrides a wider one in the kernel, whichever way it matches: under
/// the folder (modifications only) a read goes unreported, under its `loud` file (reads too)
/// it is reported.
#[test]
fn the_longest_watched_prefix_decides() {
    if !root_or_skip("the_longest_watched_prefix_decides") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for folder in [
        dir.path().to_path_buf(),
        folder_matched_by_the_trie(dir.path()),
    ] {
        let config = format!(
            "[metrics]\ninterval_s = 0\n[forensics]\nscan_interval_s = 0\n\
             [[watch]]\nprefix = \"{0}/\"\nreads = false\nmodifications = true\n\
             [[watch]]\nprefix = \"{0}/loud\"\nreads = true\nmodifications = true\n",
            folder.display()
        );
        let agent = AlphaAgent::start(&config, &[]);
        let quiet = folder.join("quiet.conf");
        let loud = folder.join("loud.conf");
        std::fs::write(&quiet, b"x").expect("write quiet");
        std::fs::write(&loud, b"x").expect("write loud");
        std::fs::read(&quiet).expect("read quiet");
        std::fs::read(&loud).expect("read loud");
        let opened = |path: &Path, write: bool| {
            let path = path.display().to_string();
            move |e: &Event| matches!(&e.kind, EventKind::FileOpen(f) if f.path == path && f.write == write)
        };
        agent
            .wait_for(opened(&quiet, true))
            .expect("write under the folder");
        agent
            .wait_for(opened(&loud, false))
            .expect("read under the narrower prefix");
        let events = agent.stop();
        assert!(
            !events.iter().any(opened(&quiet, false)),
            "a read under a modifications-only prefix was reported ({})",
            folder.display()
        );
    }
}

#[test]
fn privilege_calls_of_a_test_process() {
    if !root_or_skip("privilege_calls_of_a_test_process") {
        return;
    }
    let (agent, _dir) = agent_watching_tempdir();
    let setids = run_actor(&["setids"]);
    let capset = run_actor(&["capset"]);
    let memfd = run_actor(&["memfd", "qsc-e2e-memfd"]);
    let bpf = run_actor(&["bpf"]);
    let mut tracee = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn tracee");
    let tracee_pid = tracee.id();
    let tracer = run_actor(&["ptrace-attach", &tracee_pid.to_string()]);
    let _ = tracee.kill();
    let _ = tracee.wait();

    for call in ["setresuid", "setresgid", "setuid", "setgid"] {
        agent
            .wait_for(|e| {
                matches!(&e.kind, EventKind::PrivSetid(s) if s.call == call)
                    && pid_of(e) == Some(setids)
            })
            .unwrap_or_else(|| panic!("{call} event"));
    }
    let cap = agent
        .wait_for(|e| matches!(e.kind, EventKind::PrivCapset(_)) && pid_of(e) == Some(capset))
        .expect("capset event");
    let EventKind::PrivCapset(cap) = cap.kind else {
        unreachable!()
    };
    assert_ne!(cap.effective, 0, "root has capabilities");
    agent
        .wait_for(|e| {
            matches!(&e.kind, EventKind::PrivMemfdCreate(m) if m.name == "qsc-e2e-memfd")
                && pid_of(e) == Some(memfd)
        })
        .expect("memfd_create event");
    agent
        .wait_for(|e| {
            matches!(&e.kind, EventKind::PrivBpf(b) if b.cmd == 0) && pid_of(e) == Some(bpf)
        })
        .expect("bpf event");
    agent
        .wait_for(|e| {
            matches!(&e.kind, EventKind::PrivPtrace(p) if p.target_pid == tracee_pid && p.request == 16)
                && pid_of(e) == Some(tracer)
        })
        .expect("ptrace attach event");
    agent.stop();
}

/// The test actor holding an RWX mapping for `hold_ms`, and the mapping's address.
fn rwx_holder(hold_ms: u32) -> (std::process::Child, u64) {
    let mut holder = Command::new(ACTOR)
        .args(["mmap-rwx", &hold_ms.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn mmap-rwx");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address");
    let addr = u64::from_str_radix(line.trim().trim_start_matches("0x"), 16).expect("hex address");
    (holder, addr)
}

#[test]
fn rwx_memory_from_mmap_mprotect_and_maps_scan() {
    if !root_or_skip("rwx_memory_from_mmap_mprotect_and_maps_scan") {
        return;
    }
    let (agent, _dir) = agent_watching_tempdir();
    let (mut holder, addr) = rwx_holder(3000);
    let holder_pid = holder.id();
    let mprotect = run_actor(&["mprotect-rwx"]);

    agent
        .wait_for(|e| {
            matches!(&e.kind, EventKind::MemoryRwx(m) if m.origin == RwxSource::Mmap && m.prot & 6 == 6)
                && pid_of(e) == Some(holder_pid)
        })
        .expect("mmap rwx event");
    let scan = agent
        .wait_for(|e| {
            matches!(&e.kind, EventKind::MemoryRwx(m) if m.origin == RwxSource::MapsScan && m.addr == addr)
        })
        .expect("maps scan found the region");
    assert_eq!(pid_of(&scan), Some(holder_pid));
    agent
        .wait_for(|e| {
            matches!(&e.kind, EventKind::MemoryRwx(m) if m.origin == RwxSource::Mprotect)
                && pid_of(e) == Some(mprotect)
        })
        .expect("mprotect rwx event");
    holder.wait().expect("holder exits");
    agent.stop();
}

/// A W+X region mapped before the agent started (so no mmap event) is found by the periodic
/// whole-host scan, which runs off the agent's loop.
#[test]
fn rwx_memory_mapped_before_the_agent_started_is_found_by_the_periodic_scan() {
    if !root_or_skip("rwx_memory_mapped_before_the_agent_started_is_found_by_the_periodic_scan") {
        return;
    }
    let (mut holder, addr) = rwx_holder(8000);
    let holder_pid = holder.id();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_watching(dir.path()).replace("scan_interval_s = 0", "scan_interval_s = 1");
    let agent = AlphaAgent::start(&config, &[]);
    let scan = agent.wait_for(|e| {
        matches!(&e.kind, EventKind::MemoryRwx(m) if m.origin == RwxSource::MapsScan && m.addr == addr)
    });
    let _ = holder.kill();
    let _ = holder.wait();
    agent.stop();
    assert_eq!(
        pid_of(&scan.expect("the periodic scan found the region")),
        Some(holder_pid)
    );
}

fn loopback_connect_accept_listen(bind: &str) {
    let (agent, _dir) = agent_watching_tempdir();
    let listener = TcpListener::bind(bind).expect("bind loopback");
    let server = listener.local_addr().expect("addr");
    let client = TcpStream::connect(server).expect("connect");
    let client_addr = client.local_addr().expect("client addr");
    let (_accepted, _) = listener.accept().expect("accept");
    let me = std::process::id();

    let listen = agent
        .wait_for(|e| matches!(&e.kind, EventKind::NetListen(l) if l.port == server.port()))
        .expect("listen event");
    assert_eq!(pid_of(&listen), Some(me));
    let connect = agent
        .wait_for(|e| {
            matches!(&e.kind, EventKind::NetConnect(c)
                if c.dst_port == server.port() && c.src_port == client_addr.port())
        })
        .expect("connect event");
    let EventKind::NetConnect(c) = &connect.kind else {
        unreachable!()
    };
    assert_eq!(c.dst_ip, server.ip());
    assert_eq!(c.src_ip, client_addr.ip());
    assert_eq!(pid_of(&connect), Some(me));
    let accept = agent
        .wait_for(|e| {
            matches!(&e.kind, EventKind::NetAccept(a)
                if a.dst_port == server.port() && a.src_port == client_addr.port())
        })
        .expect("accept event");
    let EventKind::NetAccept(a) = &accept.kind else {
        unreachable!()
    };
    assert_eq!(a.src_ip, client_addr.ip());
    assert_eq!(
        pid_of(&accept),
        Some(me),
        "accept attributed to the listener"
    );
    agent.stop();
}

#[test]
fn tcp_ipv4_connect_accept_listen() {
    if root_or_skip("tcp_ipv4_connect_accept_listen") {
        loopback_connect_accept_listen("127.0.0.1:0");
    }
}

#[test]
fn tcp_ipv6_connect_accept_listen() {
    if root_or_skip("tcp_ipv6_connect_accept_listen") {
        loopback_connect_accept_listen("[::1]:0");
    }
}

/// The agent's threshold in the volume tests: 1 MB in one interval.
const VOLUME_MIN_BYTES: u64 = 1_000_000;

/// A listener on `ip` whose thread accepts one connection and reads it to its end.
fn sink(ip: &str) -> (SocketAddr, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind((ip, 0)).expect("bind loopback sink");
    let address = listener.local_addr().expect("sink address");
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut received = Vec::new();
        conn.read_to_end(&mut received).expect("read");
        received.len()
    });
    (address, reader)
}

/// Sends `bytes` to a fresh sink on `ip` and closes; returns the sink's address and ours.
fn send_and_close(ip: &str, bytes: usize) -> (SocketAddr, SocketAddr) {
    let (sink_address, reader) = sink(ip);
    let mut client = TcpStream::connect(sink_address).expect("connect");
    let local = client.local_addr().expect("client address");
    client.write_all(&vec![0x5a; bytes]).expect("send");
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    assert_eq!(reader.join().expect("sink thread"), bytes);
    (sink_address, local)
}

fn volume_to(agent: &AlphaAgent, remote: IpAddr, me: u32) -> Option<qsc_event::NetVolume> {
    agent
        .wait_for(|e| {
            matches!(&e.kind, EventKind::NetVolume(v)
                if v.remote_ip == remote && v.process.as_ref().map(|p| p.pid) == Some(me))
        })
        .and_then(|e| match e.kind {
            EventKind::NetVolume(v) => Some(v),
            _ => None,
        })
}

/// A closed loopback connection that moved more than the threshold is a `net_volume` event of
/// this process for the remote address, out on the sending side and in on the receiving one;
/// one that moved less is not reported.
#[test]
fn a_transfer_over_the_threshold_is_a_net_volume_event() {
    if !root_or_skip("a_transfer_over_the_threshold_is_a_net_volume_event") {
        return;
    }
    let agent = AlphaAgent::start(&config_network_volume(VOLUME_MIN_BYTES), &[]);
    let me = std::process::id();
    let (small_sink, _) = send_and_close("127.0.0.3", 100_000);
    const BIG: usize = 4_000_000;
    let (big_sink, client) = send_and_close("127.0.0.2", BIG);

    let out = volume_to(&agent, big_sink.ip(), me).expect("net_volume to the sink");
    assert!(out.bytes_out >= BIG as u64, "{out:?}");
    assert!(out.interval_ms >= 500, "{out:?}");
    // The sink's side: the accepted connection, attributed to this process (the listener).
    let inbound = agent
        .wait_for(|e| {
            matches!(&e.kind, EventKind::NetVolume(v)
                if v.remote_ip == client.ip() && v.bytes_in >= BIG as u64
                    && v.process.as_ref().map(|p| p.pid) == Some(me))
        })
        .expect("net_volume of the receiving side");
    assert!(inbound.process().is_some());
    // Let one more interval pass: the small transfer is still not reported.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let events = agent.stop();
    assert!(
        !events
            .iter()
            .any(|e| matches!(&e.kind, EventKind::NetVolume(v) if v.remote_ip == small_sink.ip())),
        "a transfer below the threshold was reported"
    );
}

/// Bytes out to `remote` reported so far in all `net_volume` events.
fn bytes_out_to(events: &[Event], remote: IpAddr) -> u64 {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::NetVolume(v) if v.remote_ip == remote => Some(v.bytes_out),
            _ => None,
        })
        .sum()
}

/// A connection that stays open is reported while it lasts (the sock_diag poll), once per
/// byte: its close does not report again what the polls reported. (The threshold is one
/// byte here, so that every interval's share is reported and the sum can be checked.)
#[test]
fn a_long_lived_connection_is_reported_while_open_and_counted_once() {
    if !root_or_skip("a_long_lived_connection_is_reported_while_open_and_counted_once") {
        return;
    }
    let agent = AlphaAgent::start(&config_network_volume(1), &[]);
    let (sink_address, reader) = sink("127.0.0.4");
    let remote = sink_address.ip();
    let mut client = TcpStream::connect(sink_address).expect("connect");
    // Seen by a poll first, so that the next polls account it.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    const PART: u64 = 3_000_000;
    client.write_all(&vec![1; PART as usize]).expect("send");
    let deadline = std::time::Instant::now() + qsc_tests::alpha::EVENT_TIMEOUT;
    while bytes_out_to(&agent.all(|_| true), remote) < PART {
        assert!(
            std::time::Instant::now() < deadline,
            "no net_volume while the connection was open"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let open = volume_to(&agent, remote, std::process::id()).expect("attributed to us");
    assert!(open.process.is_some());
    client
        .write_all(&vec![2; PART as usize])
        .expect("send more");
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    assert_eq!(reader.join().expect("sink thread") as u64, 2 * PART);
    drop(client);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let total = bytes_out_to(&agent.stop(), remote);
    // bytes_acked also counts the SYN and the FIN (one sequence number each).
    assert!(
        (2 * PART..=2 * PART + 2).contains(&total),
        "{total} bytes reported for {} sent: each byte must be reported once",
        2 * PART
    );
}

#[test]
fn a_signal_to_the_agent_is_a_tamper_attempt() {
    if !root_or_skip("a_signal_to_the_agent_is_a_tamper_attempt") {
        return;
    }
    let (agent, _dir) = agent_watching_tempdir();
    // SIGWINCH is ignored by default: the agent survives to report it.
    let sender = run_actor(&[
        "kill",
        &agent.pid().to_string(),
        &libc::SIGWINCH.to_string(),
    ]);
    let tamper = agent
        .wait_for(
            |e| matches!(&e.kind, EventKind::TamperAttempt(t) if t.signal == Some(libc::SIGWINCH)),
        )
        .expect("tamper attempt event");
    assert_eq!(pid_of(&tamper), Some(sender));
    agent.stop();
}

/// The auth log is followed on its own tick: with host metrics off, a failed login appended to
/// the log is still reported (the user and address parsed from the sshd line).
#[test]
fn a_failed_login_in_the_auth_log_is_reported_without_metrics_sampling() {
    if !root_or_skip("a_failed_login_in_the_auth_log_is_reported_without_metrics_sampling") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("auth.log");
    std::fs::write(
        &log,
        "Dec  3 05:00:00 e2e sshd[1]: Server listening on 0.0.0.0 port 22.\n",
    )
    .expect("auth log");
    let agent = AlphaAgent::start(
        &format!(
            "watch = []\n[metrics]\ninterval_s = 0\nauth_logs = [\"{}\"]\nauth_log_poll_ms = 50\n\
             [forensics]\nscan_interval_s = 0\n",
            log.display()
        ),
        &[],
    );
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("open auth log");
    writeln!(
        file,
        "Dec  3 05:00:01 e2e sshd[2]: Failed password for invalid user qsc-e2e from 127.0.0.9 port 5000 ssh2"
    )
    .expect("append");
    let failure = agent
        .wait_for(|e| matches!(e.kind, EventKind::AuthFailure(_)))
        .expect("auth failure event");
    let EventKind::AuthFailure(attempt) = &failure.kind else {
        unreachable!()
    };
    assert_eq!(attempt.user, "qsc-e2e");
    assert_eq!(attempt.remote_ip, Some("127.0.0.9".parse().expect("ip")));
    let events = agent.stop();
    assert!(
        events
            .iter()
            .all(|e| !matches!(e.kind, EventKind::HostMetrics(_))),
        "metrics sampling was off"
    );
}

#[test]
fn agent_does_not_report_itself() {
    if !root_or_skip("agent_does_not_report_itself") {
        return;
    }
    let (agent, dir) = agent_watching_tempdir();
    let agent_pid = agent.pid();
    std::fs::write(dir.path().join("f"), b"x").expect("write");
    agent
        .wait_for(|e| matches!(e.kind, EventKind::FileOpen(_)))
        .expect("some event");
    let events = agent.stop();
    assert!(
        events.iter().all(|e| pid_of(e) != Some(agent_pid)),
        "the agent reported its own activity"
    );
}

/// `[sensor] disabled_hooks = ["file"]`: the file hooks are not attached (the heartbeat lists
/// what is), a watched write goes unreported, and the other families still report.
#[test]
fn a_disabled_hook_family_is_not_attached_and_reports_nothing() {
    if !root_or_skip("a_disabled_hook_family_is_not_attached_and_reports_nothing") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "{}[sensor]\ndisabled_hooks = [\"file\"]\n",
        config_watching(dir.path())
    );
    let agent = AlphaAgent::start(&config, &[]);
    let path = dir.path().join("unseen.conf");
    std::fs::write(&path, b"x").expect("write watched file");
    let actor = run_actor(&["exec-loop", "1"]);
    agent
        .wait_for(|e| matches!(e.kind, EventKind::ProcessExec(_)) && pid_of(e) == Some(actor))
        .expect("exec of the actor (process hooks stay on)");
    let events = agent.stop();
    let heartbeat = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Heartbeat(h) => Some(h),
            _ => None,
        })
        .expect("heartbeat");
    assert!(
        heartbeat.active_hooks.iter().all(|h| !h.contains("open")),
        "file hooks attached: {:?}",
        heartbeat.active_hooks
    );
    assert!(
        heartbeat
            .active_hooks
            .contains(&"sched/sched_process_exec".to_owned())
    );
    let path_s = path.display().to_string();
    assert!(
        !events
            .iter()
            .any(|e| matches!(&e.kind, EventKind::FileOpen(f) if f.path == path_s)),
        "a disabled family reported an event"
    );
}

/// With batching stretched to its limits (wake after 2 MiB, drain every 10 minutes), a record of
/// a `wake_at_once` kind (exec) still reaches the agent's output at once, and takes the batched
/// record waiting before it (a watched write) along.
#[test]
fn a_wake_at_once_record_is_reported_without_waiting_for_the_batch() {
    if !root_or_skip("a_wake_at_once_record_is_reported_without_waiting_for_the_batch") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "{}[sensor]\nwakeup_bytes = 2097152\nmax_delay_ms = 600000\nwake_at_once = [\"exec\"]\n",
        config_watching(dir.path())
    );
    let agent = AlphaAgent::start(&config, &[]);
    let reported = |actor: u32| {
        agent
            .wait_for(|e| matches!(e.kind, EventKind::ProcessExec(_)) && pid_of(e) == Some(actor))
            .is_some()
    };
    // A first exec: once it is reported, the agent's start-up drain (which takes whatever
    // waits in the ring buffer, batched or not) is behind it.
    assert!(reported(run_actor(&["exec-loop", "1"])), "first exec");
    let path = dir.path().join("batched.conf");
    std::fs::write(&path, b"x").expect("write watched file");
    let started = std::time::Instant::now();
    assert!(reported(run_actor(&["exec-loop", "1"])), "second exec");
    let waited = started.elapsed();
    // Far below the 10-minute drain timer; generous for a loaded machine.
    assert!(
        waited < std::time::Duration::from_secs(5),
        "the exec took {waited:?} to be reported"
    );
    let path_s = path.display().to_string();
    assert!(
        !agent
            .all(|e| matches!(&e.kind, EventKind::FileOpen(f) if f.path == path_s))
            .is_empty(),
        "the batched write before the exec was not drained with it"
    );
    agent.stop();
}

/// A burst of `wake_at_once` records shares wake-ups: with a spacing of half a second, 300
/// execs wake the agent a few times per second (per CPU, whatever runs there), not once each,
/// and the drain after each wake-up still delivers all of them long before the 10-minute
/// batch timer.
#[test]
fn a_burst_of_wake_at_once_records_shares_its_wake_ups() {
    if !root_or_skip("a_burst_of_wake_at_once_records_shares_its_wake_ups") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let stats_file = dir.path().join("stats.json");
    let config = format!(
        "{}[sensor]\nwakeup_bytes = 2097152\nmax_delay_ms = 600000\nwake_at_once = [\"exec\"]\nwake_spacing_us = 500000\n",
        config_watching(dir.path())
    );
    let started = std::time::Instant::now();
    let agent = AlphaAgent::start(
        &config,
        &["--stats-file", &stats_file.display().to_string()],
    );
    const EXECS: usize = 300;
    let actor = run_actor(&["exec-loop", &EXECS.to_string()]);
    let children = || {
        agent
            .all(|e| matches!(&e.kind, EventKind::ProcessExec(x) if x.process.ppid == actor))
            .len()
    };
    let deadline = std::time::Instant::now() + qsc_tests::alpha::EVENT_TIMEOUT;
    while children() < EXECS && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(children(), EXECS, "execs reported before the batch timer");
    agent.stop();
    let lifetime_s = started.elapsed().as_secs_f64();
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats_file).expect("stats file")).expect("stats");
    let wakeups = stats["ring_wakeups"].as_u64().expect("ring_wakeups");
    // At most one forced wake-up per CPU per spacing over the agent's life, plus the start.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let bound = (cpus * (lifetime_s / 0.5 + 1.0)).ceil() as u64 + 2;
    assert!(
        wakeups <= bound && wakeups < EXECS as u64 / 4,
        "{wakeups} wake-ups for {EXECS} execs in {lifetime_s:.1} s (bound {bound})"
    );
}

/// A deliberately tiny ring buffer and a flood of watched opens: every record the kernel could
/// not deliver is counted, so generated = received + reported lost, exactly.
#[test]
fn ring_buffer_overflow_is_counted_exactly() {
    if !root_or_skip("ring_buffer_overflow_is_counted_exactly") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("flood");
    std::fs::write(&target, b"x").expect("create");
    let agent = AlphaAgent::start(
        &config_watching(dir.path()),
        &["--ring-buffer-bytes", "4096"],
    );
    const GENERATED: u64 = 50_000;
    let flooder = run_actor(&[
        "open-loop",
        &target.display().to_string(),
        &GENERATED.to_string(),
    ]);
    // Give the agent a loss-report interval to publish the counts.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let events = agent.stop();
    let target_s = target.display().to_string();
    let received = events
        .iter()
        .filter(|e| {
            matches!(&e.kind, EventKind::FileOpen(f) if f.path == target_s)
                && pid_of(e) == Some(flooder)
        })
        .count() as u64;
    let lost: u64 = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::EventLoss(l) if l.record.as_deref() == Some("file") => Some(l.lost),
            _ => None,
        })
        .sum();
    eprintln!("generated {GENERATED}, received {received}, lost {lost}");
    assert!(
        lost > 0,
        "a 4 KiB ring buffer must overflow under this flood"
    );
    assert_eq!(received + lost, GENERATED);
}

/// Kernel enforcement from the agent's block lists: a connect to a blocked loopback address
/// fails with EPERM (IPv4-mapped IPv6 too), an exec of a blocked path is killed before it
/// runs, and both are reported. Unblocked addresses and paths are untouched.
#[test]
fn kernel_blocks_listed_addresses_and_kills_listed_executables() {
    if !root_or_skip("kernel_blocks_listed_addresses_and_kills_listed_executables") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let blocked_exe = dir.path().join("blocked-tool");
    std::fs::copy("/bin/true", &blocked_exe).expect("copy /bin/true");
    let blocked_s = blocked_exe.display().to_string();
    let config = format!(
        "{}[enforce]\nblocked_ips = [\"127.0.0.2\"]\nblocked_exec = [\"{blocked_s}\"]\n",
        config_watching(dir.path())
    );
    let agent = AlphaAgent::start(&config, &[]);
    let listener = TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let port = listener.local_addr().expect("addr").port();

    let refused = TcpStream::connect(("127.0.0.2", port)).expect_err("blocked connect");
    assert_eq!(refused.raw_os_error(), Some(libc::EPERM));
    let mapped = TcpStream::connect(format!("[::ffff:127.0.0.2]:{port}"))
        .expect_err("IPv4-mapped IPv6 must not bypass the block");
    assert_eq!(mapped.raw_os_error(), Some(libc::EPERM));
    let other = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    TcpStream::connect(other.local_addr().expect("addr")).expect("unblocked address still works");

    let status = Command::new(&blocked_exe)
        .status()
        .expect("spawn blocked exe");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "killed before it ran");
    assert!(Command::new("/bin/true").status().expect("true").success());

    let target = format!("127.0.0.2:{port}");
    agent
        .wait_for(|e| {
            matches!(&e.kind, EventKind::Enforcement(x)
                if x.action == qsc_event::EnforcementAction::ConnectBlocked && x.target == target)
                && pid_of(e) == Some(std::process::id())
        })
        .expect("connect_blocked event");
    agent
        .wait_for(|e| {
            matches!(&e.kind, EventKind::Enforcement(x)
                if x.action == qsc_event::EnforcementAction::ExecKilled && x.target == blocked_s)
        })
        .expect("exec_killed event");
    agent.stop();
    // With the agent gone its programs are detached: the address works again.
    TcpStream::connect(("127.0.0.2", port)).expect("block removed with the agent");
}
