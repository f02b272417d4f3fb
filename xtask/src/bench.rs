//! `cargo xtask bench NAME`: each benchmark compares against its named baseline in one run and
//! writes target/bench/NAME.json.

use anyhow::bail;

use crate::shell;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which benchmark: capture (guardian-alpha vs bare vs bpftrace), channel, integrity, detect.
    pub name: String,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (package, bench) = match args.name.as_str() {
        "capture" => ("qsc-tests", "capture"),
        other => bail!("unknown benchmark `{other}`; known: capture"),
    };
    if args.name == "capture" {
        crate::ebpf::build()?;
        shell::run(shell::cargo().args(["build", "--release", "-p", "guardian-alpha"]))?;
    }
    std::fs::create_dir_all(shell::target_dir().join("bench"))?;
    shell::run(shell::cargo().args(["bench", "-p", package, "--bench", bench]))
}
