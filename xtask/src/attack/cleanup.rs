//! What a scenario created, undone in reverse order when the scenario ends (also on failure).

use std::{
    path::PathBuf,
    process::{Child, Command, ExitStatus},
};

/// One thing to undo.
enum Undo {
    /// A file or folder (removed recursively).
    Path(PathBuf),
    /// A test account (`userdel -r`).
    User(String),
    /// A child process (killed and reaped).
    Child(Child),
    /// An address added to the loopback interface.
    LoopbackAddress(String),
    /// Something held open until the end (a connection), then dropped.
    Keep(Box<dyn std::any::Any>),
}

/// The undo list of one scenario.
#[derive(Default)]
pub struct Cleanup {
    undo: Vec<Undo>,
}

impl Cleanup {
    /// Removes `path` at the end.
    pub fn path(&mut self, path: impl Into<PathBuf>) {
        self.undo.push(Undo::Path(path.into()));
    }

    /// Keeps `child` until the end, then kills it.
    pub fn child(&mut self, child: Child) -> u32 {
        let pid = child.id();
        self.undo.push(Undo::Child(child));
        pid
    }

    /// How the child `pid` (kept with [`Cleanup::child`]) ended; `None` while it still runs
    /// or when it is not one of ours.
    pub fn exit_status(&mut self, pid: u32) -> Option<ExitStatus> {
        self.undo.iter_mut().find_map(|undo| match undo {
            Undo::Child(child) if child.id() == pid => child.try_wait().ok().flatten(),
            _ => None,
        })
    }

    /// Creates the test account `name` (it must start with `qscatk`) with a home folder and
    /// removes it at the end.
    pub fn user(&mut self, name: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            name.starts_with("qscatk"),
            "test accounts are named qscatk*"
        );
        crate::run::stack::output_of(Command::new("useradd").args([
            "--create-home",
            "--shell",
            "/bin/sh",
            name,
        ]))?;
        self.undo.push(Undo::User(name.to_owned()));
        Ok(())
    }

    /// Keeps `value` (e.g. a scenario's connection) open until the end.
    pub fn keep(&mut self, value: impl std::any::Any) {
        self.undo.push(Undo::Keep(Box::new(value)));
    }

    /// Adds `address` (a /32 of a documentation range) to `lo` and removes it at the end.
    pub fn loopback_address(&mut self, address: &str) -> anyhow::Result<()> {
        crate::run::stack::output_of(Command::new("ip").args([
            "addr",
            "add",
            &format!("{address}/32"),
            "dev",
            "lo",
        ]))?;
        self.undo.push(Undo::LoopbackAddress(address.to_owned()));
        Ok(())
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Path(path) => {
                    let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
                }
                Undo::User(name) => {
                    let _ = Command::new("userdel").args(["--remove", &name]).output();
                }
                Undo::Child(mut child) => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                Undo::Keep(value) => drop(value),
                Undo::LoopbackAddress(address) => {
                    let _ = Command::new("ip")
                        .args(["addr", "del", &format!("{address}/32"), "dev", "lo"])
                        .output();
                }
            }
        }
    }
}

/// A name unique to this run: `qscatk` + the process id (+ a suffix).
pub fn unique(suffix: &str) -> String {
    format!("qscatk{}{suffix}", std::process::id())
}
