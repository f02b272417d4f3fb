//! `cargo xtask build-ebpf`: builds the kernel program once with Debian's Rust (which ships the
//! `core` source that `-Z build-std` needs) and bpf-linker. guardian-alpha embeds the result.

use std::{path::PathBuf, process::Command};

use crate::{setup, shell};

/// Where the object lands; guardian-alpha's build script reads it from here.
pub fn object_path() -> PathBuf {
    shell::root().join("target/ebpf/bpfel-unknown-none/release/guardian-alpha")
}

pub fn build() -> anyhow::Result<PathBuf> {
    if !setup::ebpf_toolchain_ready() {
        setup::run(&setup::SetupArgs::default())?;
    }
    let root = shell::root();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![shell::tools_dir().join("bin")];
    paths.extend(std::env::split_paths(&path));
    let mut cmd = Command::new("/usr/bin/cargo");
    cmd.current_dir(root.join("guardian-alpha-ebpf"))
        .args([
            "build",
            "--bins",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(root.join("target/ebpf"))
        .env("PATH", std::env::join_paths(paths)?)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTC", "/usr/bin/rustc")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
        );
    // Variables rustup's cargo set for this xtask must not leak into Debian's cargo.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    shell::run(&mut cmd)?;
    Ok(object_path())
}

/// The binaries QSC ships. Every release build names all three, so that one feature resolution
/// serves the images and the benchmarks (a build of a subset resolves the shared crates'
/// features differently and recompiles them).
const SHIPPED_PACKAGES: &[&str] = &["cortex", "guardian-alpha", "guardian-beta"];

/// Builds the kernel object, then the release binaries (guardian-alpha embeds the object, so it
/// must come first).
pub fn build_release() -> anyhow::Result<()> {
    build()?;
    let mut cmd = shell::cargo();
    cmd.args(["build", "--release", "--bins"]);
    for package in SHIPPED_PACKAGES {
        cmd.args(["-p", package]);
    }
    shell::run(&mut cmd)
}

/// The kernel object, then every dev-profile binary of the workspace (as `cargo xtask test`
/// and `run` build them).
pub fn build_dev() -> anyhow::Result<()> {
    build()?;
    shell::run(shell::cargo().args(["build", "--workspace", "--bins"]))
}
