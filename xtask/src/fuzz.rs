//! `cargo xtask fuzz`: runs the channel's fuzz targets (frame decoder, handshake parser) for a
//! bounded time each with cargo-fuzz (libFuzzer), which needs the nightly toolchain.

use std::process::Command;

use crate::shell;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
}

const TARGETS: &[&str] = &["frame_decoder", "handshake_message"];

pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    if shell::output(Command::new("cargo").args(["fuzz", "--version"])).is_none() {
        shell::run(shell::cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let dir = shell::root().join("qsc-channel/fuzz");
    for target in TARGETS {
        shell::run(
            Command::new("cargo")
                .current_dir(&dir)
                .args(["+nightly", "fuzz", "run", target, "--"])
                .arg(format!("-max_total_time={}", args.seconds))
                .env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("CARGO"),
        )?;
    }
    Ok(())
}
