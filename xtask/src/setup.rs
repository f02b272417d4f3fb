//! `cargo xtask setup`: installs what building and running QSC needs, idempotently. Each step
//! first checks whether its result is already there and does nothing if so.

use std::{path::Path, process::Command};

use anyhow::{Context, bail};

use crate::shell::{self, is_root};

#[derive(clap::Args, Default)]
pub struct SetupArgs {
    /// Also install the container engine (Debian's docker.io), docker-compose and debootstrap,
    /// and start dockerd when no engine answers. Needed by `cargo xtask images` and the compose
    /// test.
    #[arg(long)]
    pub containers: bool,
    /// Also install Debian's nats-server and postgresql and start them on loopback for the
    /// scale-out cortex (NATS JetStream on 127.0.0.1:4233, PostgreSQL on 127.0.0.1:5432 with
    /// role and database `qsc`), each only when it is not already answering.
    #[arg(long)]
    pub scale: bool,
}

/// Debian packages for building the kernel program (see ../shared/ebpf-toolchain.md): a Rust
/// toolchain with its own `core` source for `-Z build-std`, and LLVM 22 for bpf-linker.
pub const EBPF_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "rust-web-src", "llvm-22-dev"];
/// Debian packages the response actions and their tests use: nftables (isolation, address
/// blocking without the cgroup programs), passwd (useradd/usermod/userdel for test accounts),
/// iproute2 (`ip netns` for the isolation tests).
pub const RESPONSE_PACKAGES: &[&str] = &["nftables", "passwd", "iproute2"];
/// Debian packages the attack scenarios use (`cargo xtask attack`): a real sshd for the
/// credential-stuffing scenario (started only by the scenario, on 127.0.0.1; the package's own
/// service is never enabled or started), sshpass to type passwords into ssh, openssl for the
/// scenario's test CA, util-linux's setpriv.
pub const ATTACK_PACKAGES: &[&str] = &["openssh-server", "openssh-client", "sshpass", "openssl"];
/// Debian packages the console's browser test drives: headless Chromium and its WebDriver
/// server (installed for `cargo xtask test` only; the cortex itself needs no browser).
pub const BROWSER_PACKAGES: &[&str] = &["chromium", "chromium-driver"];
/// Debian packages the userspace build needs besides Rust: a C compiler (ring, SQLite), and make
/// and perl for OpenSSL, which the `openssl` crate builds from source for qsc-channel's AEAD.
pub const BUILD_PACKAGES: &[&str] = &["gcc", "make", "perl"];
pub const BPF_LINKER_VERSION: &str = "0.13.0";
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
pub const TRACEFS: &str = "/sys/kernel/tracing";

pub fn run(args: &SetupArgs) -> anyhow::Result<()> {
    ensure_packages(BUILD_PACKAGES)?;
    ensure_packages(EBPF_PACKAGES)?;
    ensure_packages(RESPONSE_PACKAGES)?;
    ensure_attack_packages()?;
    ensure_bpf_linker()?;
    ensure_tracefs()?;
    if args.containers {
        crate::images::ensure_engine()?;
    }
    if args.scale {
        ensure_scale_services()?;
    }
    eprintln!("setup: everything is in place");
    Ok(())
}

/// True when everything the eBPF build needs is present (cheap: no network, no installs).
pub fn ebpf_toolchain_ready() -> bool {
    missing_packages(EBPF_PACKAGES).is_empty() && bpf_linker_installed()
}

fn is_debian_like() -> bool {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    release.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        (line.starts_with("id=") || line.starts_with("id_like="))
            && (line.contains("debian") || line.contains("ubuntu"))
    })
}

pub fn missing_packages(packages: &[&str]) -> Vec<String> {
    packages
        .iter()
        .filter(|pkg| {
            let status =
                shell::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]));
            !status.is_some_and(|s| s.contains("install ok installed"))
        })
        .map(|pkg| pkg.to_string())
        .collect()
}

/// Installs the missing ones of `packages` with apt-get (root on Debian/Ubuntu), or explains
/// exactly what to install.
pub fn ensure_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing = missing_packages(packages);
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_debian_like() {
        bail!(
            "this is not a Debian/Ubuntu system, so setup cannot install packages itself.\n\
             Install the equivalents of these Debian packages: {list}\n\
             (a Rust 1.96 toolchain with rust-src, and LLVM 22 development files), then run `cargo xtask setup` again."
        );
    }
    if !is_root() {
        bail!(
            "these packages are missing: {list}\nInstall them as root:\n  sudo apt-get update && sudo apt-get install -y --no-install-recommends {list}\nthen run `cargo xtask setup` again."
        );
    }
    eprintln!("setup: installing {list}");
    shell::run(Command::new("apt-get").arg("update").arg("-q"))?;
    shell::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Installs [`ATTACK_PACKAGES`] without letting openssh-server's install start or enable the
/// host's ssh service: Debian's maintainer scripts ask /usr/sbin/policy-rc.d, which answers
/// "forbidden" (101) while the install runs, and a systemd unit that got enabled anyway is
/// disabled again.
pub fn ensure_attack_packages() -> anyhow::Result<()> {
    if missing_packages(ATTACK_PACKAGES).is_empty() {
        return Ok(());
    }
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let placed = is_root() && !policy.exists();
    if placed {
        std::fs::write(
            policy,
            "#!/bin/sh\n# placed by cargo xtask setup during its install\nexit 101\n",
        )?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let installed = ensure_packages(ATTACK_PACKAGES);
    if placed {
        std::fs::remove_file(policy)?;
    }
    installed?;
    // `systemctl disable` also works without a running systemd (it only removes the links).
    let running = Path::new("/run/systemd/system").is_dir();
    shell::output(
        Command::new("systemctl")
            .arg("disable")
            .args(running.then_some("--now"))
            .args(["ssh.service", "ssh.socket"]),
    );
    if Path::new("/etc/init.d/ssh").exists() {
        shell::output(Command::new("update-rc.d").args(["ssh", "disable"]));
    }
    Ok(())
}

pub fn bpf_linker() -> std::path::PathBuf {
    shell::tools_dir().join("bin").join("bpf-linker")
}

fn bpf_linker_installed() -> bool {
    shell::output(Command::new(bpf_linker()).arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
}

/// Builds bpf-linker against Debian's LLVM 22 into the project's tools folder, once.
pub fn ensure_bpf_linker() -> anyhow::Result<()> {
    if bpf_linker_installed() {
        return Ok(());
    }
    if !Path::new(LLVM_PREFIX).join("lib/libLLVM.so").exists() {
        ensure_packages(&["llvm-22-dev"])?;
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} into {} (about a minute)",
        shell::tools_dir().display()
    );
    // LLVM_PREFIX is required: otherwise bpf-linker's build follows the first llvm-config on
    // PATH (an older LLVM) and fails to link.
    shell::run(
        shell::cargo()
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
            ])
            .args(["--no-default-features", "--features", "llvm-22", "--root"])
            .arg(shell::tools_dir())
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
    .context("building bpf-linker failed")
}

/// Mounts tracefs when the kernel's tracing folder is not mounted yet.
pub fn ensure_tracefs() -> anyhow::Result<()> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    if !is_root() {
        bail!("tracefs is not mounted; as root run: mount -t tracefs tracefs {TRACEFS}");
    }
    eprintln!("setup: mounting tracefs at {TRACEFS}");
    shell::run(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))
}

/// Debian packages of the scale-out stack: the event bus and the shared store.
pub const SCALE_PACKAGES: &[&str] = &["nats-server", "postgresql"];
/// Where the loopback NATS server of `setup --scale` listens (not 4222, so that a NATS the
/// machine runs for something else is left alone).
pub const SCALE_NATS_ADDR: &str = "127.0.0.1:4233";
/// Where Debian's default PostgreSQL cluster listens.
pub const SCALE_PG_ADDR: &str = "127.0.0.1:5432";
/// JetStream's storage and the server's log.
pub const SCALE_STATE_DIR: &str = "/var/lib/qsc-scale";
/// The loopback-only test credentials `setup --scale` creates (role, password and database).
pub const SCALE_PG_ROLE: &str = "qsc";

/// Installs and starts NATS (with JetStream) and PostgreSQL on loopback, with the `qsc` role
/// and database; does nothing for what already answers.
pub fn ensure_scale_services() -> anyhow::Result<()> {
    ensure_packages(SCALE_PACKAGES)?;
    if !is_root() {
        bail!("starting nats-server and PostgreSQL for the scale-out tests needs root");
    }
    ensure_nats()?;
    ensure_postgres()?;
    eprintln!("setup: NATS JetStream on {SCALE_NATS_ADDR}, PostgreSQL on {SCALE_PG_ADDR}");
    Ok(())
}

fn answers(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>().is_ok_and(|addr| {
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500)).is_ok()
    })
}

/// Waits up to 20 s for `addr` to accept connections.
fn wait_until_answering(addr: &str, what: &str) -> anyhow::Result<()> {
    for _ in 0..80 {
        if answers(addr) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    bail!("{what} did not start listening on {addr} within 20 s")
}

/// Starts a detached nats-server with JetStream, bound to loopback only.
fn ensure_nats() -> anyhow::Result<()> {
    if answers(SCALE_NATS_ADDR) {
        return Ok(());
    }
    let dir = Path::new(SCALE_STATE_DIR);
    std::fs::create_dir_all(dir.join("jetstream"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let (host, port) = SCALE_NATS_ADDR
        .split_once(':')
        .context("SCALE_NATS_ADDR has no port")?;
    let mut command = Command::new("nats-server");
    command
        .args(["--jetstream", "--addr", host, "--port", port, "--store_dir"])
        .arg(dir.join("jetstream"))
        .arg("--log")
        .arg(dir.join("nats-server.log"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // Its own process group: a Ctrl-C of the calling xtask does not stop the shared server.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    eprintln!("+ {}", shell::describe(&command));
    command.spawn().context("cannot start nats-server")?;
    wait_until_answering(SCALE_NATS_ADDR, "nats-server")
}

/// Starts Debian's PostgreSQL cluster (creating one if the package made none) and creates the
/// `qsc` role and database.
fn ensure_postgres() -> anyhow::Result<()> {
    if !answers(SCALE_PG_ADDR) {
        let clusters =
            shell::output(Command::new("pg_lsclusters").arg("--no-header")).unwrap_or_default();
        let Some(version) = clusters.split_whitespace().next().map(str::to_owned) else {
            bail!(
                "no PostgreSQL cluster exists; create one with `pg_createcluster <version> main`"
            );
        };
        let cluster = clusters
            .split_whitespace()
            .nth(1)
            .context("pg_lsclusters printed no cluster name")?
            .to_owned();
        shell::run(Command::new("pg_ctlcluster").args([&version, &cluster, "start"]))?;
        wait_until_answering(SCALE_PG_ADDR, "PostgreSQL")?;
    }
    let role = SCALE_PG_ROLE;
    psql(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN \
         CREATE ROLE {role} LOGIN PASSWORD '{role}'; END IF; END $$;"
    ))?;
    let exists = shell::output(&mut psql_command(&format!(
        "SELECT 1 FROM pg_database WHERE datname = '{role}'"
    )))
    .is_some_and(|out| out.trim() == "1");
    if !exists {
        psql(&format!("CREATE DATABASE {role} OWNER {role}"))?;
    }
    Ok(())
}

fn psql_command(sql: &str) -> Command {
    let mut command = Command::new("runuser");
    command.args([
        "-u",
        "postgres",
        "--",
        "psql",
        "-qtAX",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ]);
    command
}

fn psql(sql: &str) -> anyhow::Result<()> {
    shell::run(&mut psql_command(sql))
}
