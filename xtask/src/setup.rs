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
}

/// Debian packages for building the kernel program (see ../shared/ebpf-toolchain.md): a Rust
/// toolchain with its own `core` source for `-Z build-std`, and LLVM 22 for bpf-linker.
pub const EBPF_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "rust-web-src", "llvm-22-dev"];
/// Debian packages the response actions and their tests use: nftables (isolation, address
/// blocking without the cgroup programs), passwd (useradd/usermod/userdel for test accounts),
/// iproute2 (`ip netns` for the isolation tests).
pub const RESPONSE_PACKAGES: &[&str] = &["nftables", "passwd", "iproute2"];
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
    ensure_bpf_linker()?;
    ensure_tracefs()?;
    if args.containers {
        crate::images::ensure_engine()?;
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
