//! `cargo xtask test`: every check CI runs, in the order that fails fastest.

use std::time::Instant;

use anyhow::Context;

use crate::{deploy, ebpf, images, setup, shell};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip fmt and clippy (run only the tests).
    #[arg(long)]
    pub no_lint: bool,
    /// Skip the container steps (images and the compose end-to-end test); the deploy files are
    /// still checked.
    #[arg(long)]
    pub no_containers: bool,
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
    setup::ensure_packages(setup::BUILD_PACKAGES)?;
    ebpf::build()?;
    setup::ensure_tracefs()?;
    if shell::is_root() {
        // The response tests need nft, useradd and ip netns, which a machine set up before
        // they existed may lack.
        setup::ensure_packages(setup::RESPONSE_PACKAGES)?;
        // The console test drives headless Chromium through chromedriver.
        setup::ensure_packages(setup::BROWSER_PACKAGES)?;
        // tests/tests/attacks.rs runs a real sshd and uses sshpass and openssl.
        setup::ensure_attack_packages()?;
        // The scale-out tests (PostgreSQL store, NATS bus) need both servers on loopback.
        setup::ensure_scale_services()?;
    }
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
    let require_root = shell::is_root() || std::env::var("CI").is_ok_and(|v| v == "true");
    if require_root {
        test.env(REQUIRE_ROOT_TESTS, "1");
    }
    shell::run(&mut test)?;
    if require_root && !args.no_containers {
        images::ensure_engine()?;
    }
    deploy::check()?;
    if require_root && !args.no_containers {
        compose_end_to_end()?;
    } else {
        eprintln!(
            "xtask test: the compose end-to-end test did not run ({})",
            if args.no_containers {
                "--no-containers"
            } else {
                "needs root"
            }
        );
    }
    eprintln!("xtask test: all checks passed in {:.0?}", started.elapsed());
    Ok(())
}

/// Builds the images (on a local debootstrap base: our machines reach no image registry; with the
/// dev binaries already built, since a release build of the workspace would take CI's 2 cores
/// 10–17 minutes) and runs tests/tests/compose.rs against them, one stack at a time: the
/// default stack once with each Compose flavour, the scale profile with Compose v2 only.
fn compose_end_to_end() -> anyhow::Result<()> {
    let started = Instant::now();
    images::run(&images::ImagesArgs {
        local_base: true,
        rebuild_base: false,
        base: None,
        tag: "latest".into(),
        // `cargo build --workspace --bins` above built them.
        no_build: true,
        debug_binaries: true,
    })?;
    let built = started.elapsed();
    for flavour in images::Compose::ALL {
        let run_started = Instant::now();
        let mut test = shell::cargo();
        test.args(["test", "-p", "qsc-tests", "--test", "compose", "--"])
            .args(["--ignored", "--nocapture", "--test-threads", "1"]);
        if flavour != images::Compose::V2 {
            test.args(["--skip", "compose_scale_profile"]);
        }
        shell::run(
            test.env(REQUIRE_ROOT_TESTS, "1")
                .env("QSC_COMPOSE", flavour.command_line()),
        )
        .with_context(|| format!("the compose test failed with `{}`", flavour.command_line()))?;
        eprintln!(
            "xtask test: compose end-to-end with `{}` took {:.0?}",
            flavour.command_line(),
            run_started.elapsed()
        );
    }
    eprintln!(
        "xtask test: compose end-to-end step took {:.0?} (images {:.0?})",
        started.elapsed(),
        built
    );
    Ok(())
}
