//! Helpers for the end-to-end tests: finding the built binaries, deciding whether root-only
//! tests run, driving a real guardian-alpha process, a real `cortex serve` deployment
//! (`channel`), and the real cortex + agent stack around a network-namespace host (`netns`,
//! `stack`).

pub mod alpha;
pub mod channel;
pub mod netns;
pub mod stack;

use std::path::PathBuf;

/// Set by `cargo xtask test` when running as root or in CI: root-only tests then fail instead
/// of skipping, so a green run always means the real-kernel tests ran.
pub const REQUIRE_ROOT_TESTS: &str = "QSC_REQUIRE_ROOT_TESTS";

/// True when the test may use root powers. Otherwise prints why it is skipped, or panics
/// when skipping is not allowed.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os(REQUIRE_ROOT_TESTS).is_some() {
        panic!("{test} needs root, and {REQUIRE_ROOT_TESTS} forbids skipping it");
    }
    eprintln!("skipped {test}: needs root (CI runs it as root)");
    false
}

/// The folder of the workspace's built binaries (target/debug), found from this test's own
/// executable (target/debug/deps/…), so CARGO_TARGET_DIR is honoured.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A workspace binary, built by `cargo xtask test` (or `cargo build --workspace --bins`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo xtask test` or `cargo build --workspace --bins` first",
        path.display()
    );
    path
}
