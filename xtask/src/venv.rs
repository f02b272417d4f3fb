//! Python tools from PyPI, each in a virtual environment of its own, installed once.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::shell;

/// Makes a virtual environment at `dir` and installs `requirement` (a pip requirement such as
/// `name==1.2.3`) into it, unless `ready` already says the tool works. Fails when the tool
/// still does not work afterwards.
pub fn ensure(dir: &Path, requirement: &str, ready: impl Fn() -> bool) -> anyhow::Result<()> {
    if ready() {
        return Ok(());
    }
    eprintln!("setup: installing {requirement} into {}", dir.display());
    shell::run(Command::new("python3").args(["-m", "venv"]).arg(dir)).context(
        "cannot make a Python virtual environment (Debian: apt-get install python3-venv)",
    )?;
    shell::run(Command::new(dir.join("bin").join("pip")).args(["install", "--quiet", requirement]))
        .with_context(|| format!("cannot install {requirement} from PyPI"))?;
    if !ready() {
        bail!(
            "{requirement} is installed in {} but does not work",
            dir.display()
        );
    }
    Ok(())
}

/// The `lib/pythonX.Y/site-packages` folder of the virtual environment at `dir`, when there is
/// exactly one.
pub fn site_packages(dir: &Path) -> Option<PathBuf> {
    let mut found = std::fs::read_dir(dir.join("lib"))
        .ok()?
        .flatten()
        .map(|entry| entry.path().join("site-packages"))
        .filter(|path| path.is_dir());
    let first = found.next()?;
    found.next().is_none().then_some(first)
}
