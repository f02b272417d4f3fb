//! Project automation for QSC: `cargo xtask <command>`.

mod attack;
mod bench;
mod coverage;
mod deploy;
mod ebpf;
mod fuzz;
mod images;
mod run;
mod setup;
mod shell;
mod test;
mod venv;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    about = "QSC project automation",
    long_about = "QSC project automation.\n\nOn a fresh Debian/Ubuntu machine, `cargo xtask run` sets up everything (packages, bpf-linker, tracefs), builds, and starts the stack; `cargo xtask test` runs every check CI runs."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and running needs (idempotent): Debian packages, bpf-linker in
    /// .tools/, tracefs mounted.
    Setup(setup::SetupArgs),
    /// Build the kernel object (target/ebpf/bpfel-unknown-none/release/guardian-alpha).
    BuildEbpf,
    /// Set up, build, and start cortex + guardian-alpha + guardian-beta on this host, showing
    /// detections live until Ctrl-C.
    Run(run::RunArgs),
    /// Everything CI checks: fmt, clippy -D warnings, unit tests, and the root-only real-kernel
    /// end-to-end tests (which fail instead of skipping when run as root or with CI=true).
    Test(test::TestArgs),
    /// Safe, self-cleaning attack behaviours (ATT&CK-tagged) against a stack of their own
    /// (cortex in dry-run, free ports, temporary state); checks each scenario's expected
    /// detection, severity, confidence and playbook action. `--list` shows them.
    Attack(attack::AttackArgs),
    /// Runs every attack scenario and prints the ATT&CK coverage table (technique, scenario,
    /// detected, rule ids, severity, time to detect); `--markdown` for the README.
    Coverage(coverage::CoverageArgs),
    /// Benchmarks; each writes target/bench/NAME.json.
    Bench(bench::BenchArgs),
    /// Fuzz the channel's frame decoder and handshake parser for a bounded time (nightly).
    Fuzz(fuzz::FuzzArgs),
    /// Container images of cortex, guardian-alpha, guardian-beta and the demo webhook receiver
    /// from the release binaries (installs and starts the engine when missing).
    Images(images::ImagesArgs),
    /// Validate docker-compose.yml, the systemd units (deploy/systemd) and the Kubernetes
    /// manifests (deploy/k8s, schema-checked), and that they grant the agents the same
    /// privileges (also part of `cargo xtask test`).
    DeployCheck,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup(args) => setup::run(&args),
        Command::BuildEbpf => ebpf::build().map(|path| println!("{}", path.display())),
        Command::Run(args) => run::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Attack(args) => attack::run(&args),
        Command::Coverage(args) => coverage::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Images(args) => images::run(&args),
        Command::DeployCheck => deploy::check(),
    }
}
