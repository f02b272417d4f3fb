//! `cargo xtask test`: every check CI runs, in the order that fails fastest.

use crate::{ebpf, setup, shell};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip fmt and clippy (run only the tests).
    #[arg(long)]
    pub no_lint: bool,
    /// Extra arguments for `cargo test` (e.g. a test name filter), after `--`.
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}

/// Root-only tests read this: when set they fail instead of skipping, so CI (root) can never
/// pass by skipping the real-kernel tests.
pub const REQUIRE_ROOT_TESTS: &str = "QSC_REQUIRE_ROOT_TESTS";

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    if !args.no_lint {
        shell::run(shell::cargo().args(["fmt", "--all", "--", "--check"]))?;
        shell::run(shell::cargo().args([
            "fmt",
            "--manifest-path",
            "guardian-alpha-ebpf/Cargo.toml",
            "--",
            "--check",
        ]))?;
    }
    ebpf::build()?;
    setup::ensure_tracefs()?;
    if !args.no_lint {
        shell::run(shell::cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    // The end-to-end tests in tests/ run the real binaries: build them first.
    shell::run(shell::cargo().args(["build", "--workspace", "--bins"]))?;
    let mut test = shell::cargo();
    test.args(["test", "--workspace"]);
    if !args.cargo_test_args.is_empty() {
        test.arg("--").args(&args.cargo_test_args);
    }
    if shell::is_root() || std::env::var("CI").is_ok_and(|v| v == "true") {
        test.env(REQUIRE_ROOT_TESTS, "1");
    }
    shell::run(&mut test)?;
    eprintln!("xtask test: all checks passed in {:.0?}", started.elapsed());
    Ok(())
}
