//! `kill`: SIGKILL one process, or a whole tree. A tree is first frozen with SIGSTOP (parent
//! first, then every descendant found in `/proc`, until a scan finds no new one), so nothing in
//! it can fork away, and then killed top-down. Every signal goes through a pidfd.

use std::{collections::BTreeMap, path::Path, time::Duration};

use super::{
    Done, RespondError,
    guardrails::Guardrails,
    procfs::{self, Pidfd},
};

/// How long a killed process may take to exit before the action is reported as failed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(2);
/// Scans for new descendants before giving up on freezing a tree that keeps growing.
const MAX_FREEZE_ROUNDS: usize = 64;

/// Kills `pid` (pinned by `start_time_ticks` when given), with its descendants when `tree`.
pub fn kill(
    rails: &Guardrails,
    proc_root: &Path,
    pid: u32,
    start_time_ticks: Option<u64>,
    tree: bool,
) -> Result<Done, RespondError> {
    let stat = procfs::stat(proc_root, pid)
        .filter(|s| start_time_ticks.is_none_or(|t| t == s.start_time_ticks))
        .ok_or(RespondError::NoProcess { pid })?;
    rails.check_process(stat.pid, stat.ppid, &stat.comm)?;
    let root =
        Pidfd::open(proc_root, pid, Some(stat.start_time_ticks)).map_err(|source| match source
            .raw_os_error()
        {
            Some(libc::ESRCH) => RespondError::NoProcess { pid },
            _ => RespondError::Signal { pid, source },
        })?;
    let targets = if tree {
        freeze_tree(rails, proc_root, root)?
    } else {
        vec![root]
    };
    let killed = kill_all(&targets)?;
    let detail = if tree {
        format!("killed process tree of {pid} ({} processes)", killed.len())
    } else {
        format!("killed process {pid}")
    };
    Ok(Done::new(detail).fact("killed_pids", killed))
}

/// SIGSTOPs `root` and then every descendant, scanning `/proc` until no new one appears.
/// Returns them parents first. A protected descendant resumes the tree and refuses.
fn freeze_tree(
    rails: &Guardrails,
    proc_root: &Path,
    root: Pidfd,
) -> Result<Vec<Pidfd>, RespondError> {
    let mut frozen = vec![root];
    stop(&frozen[0])?;
    for _ in 0..MAX_FREEZE_ROUNDS {
        let stats = procfs::all_stats(proc_root);
        let new = new_descendants(&stats, &frozen);
        if new.is_empty() {
            return Ok(frozen);
        }
        for stat in new {
            if let Err(refusal) = rails.check_process(stat.pid, stat.ppid, &stat.comm) {
                resume(&frozen);
                return Err(refusal.into());
            }
            match Pidfd::open(proc_root, stat.pid, Some(stat.start_time_ticks)) {
                Ok(pidfd) => {
                    stop(&pidfd)?;
                    frozen.push(pidfd);
                }
                // Exited between the scan and the open.
                Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {}
                Err(source) => {
                    resume(&frozen);
                    return Err(RespondError::Signal {
                        pid: stat.pid,
                        source,
                    });
                }
            }
        }
    }
    resume(&frozen);
    Err(RespondError::TreeKeepsGrowing {
        pid: frozen[0].pid,
        rounds: MAX_FREEZE_ROUNDS,
    })
}

/// Running processes whose parent is in `frozen` and that are not in it yet, in pid order.
fn new_descendants(stats: &BTreeMap<u32, procfs::Stat>, frozen: &[Pidfd]) -> Vec<procfs::Stat> {
    let known: std::collections::BTreeSet<u32> = frozen.iter().map(|p| p.pid).collect();
    stats
        .values()
        .filter(|s| s.is_running() && known.contains(&s.ppid) && !known.contains(&s.pid))
        .cloned()
        .collect()
}

fn stop(pidfd: &Pidfd) -> Result<(), RespondError> {
    pidfd
        .signal(libc::SIGSTOP)
        .map_err(|source| RespondError::Signal {
            pid: pidfd.pid,
            source,
        })
}

/// Best effort: lets a frozen tree run again after a refusal or failure.
fn resume(frozen: &[Pidfd]) {
    for pidfd in frozen {
        if let Err(err) = pidfd.signal(libc::SIGCONT) {
            tracing::warn!(pid = pidfd.pid, %err, "cannot resume a frozen process");
        }
    }
}

/// SIGKILLs each target in order, then waits for every one to exit; returns their pids.
fn kill_all(targets: &[Pidfd]) -> Result<Vec<u32>, RespondError> {
    for pidfd in targets {
        pidfd
            .signal(libc::SIGKILL)
            .map_err(|source| RespondError::Signal {
                pid: pidfd.pid,
                source,
            })?;
    }
    let survivors: Vec<u32> = targets
        .iter()
        .filter(|p| !p.wait_exit(EXIT_TIMEOUT))
        .map(|p| p.pid)
        .collect();
    if !survivors.is_empty() {
        return Err(RespondError::Survivors { pids: survivors });
    }
    Ok(targets.iter().map(|p| p.pid).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RespondConfig;
    use crate::respond::guardrails::Refusal;
    use std::process::Command;

    fn rails() -> Guardrails {
        Guardrails::new(&RespondConfig::default(), Vec::new())
    }

    #[test]
    fn kills_one_child_and_pins_its_start_time() {
        let proc_root = Path::new("/proc");
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let ticks = procfs::stat(proc_root, pid).unwrap().start_time_ticks;
        let wrong = kill(&rails(), proc_root, pid, Some(ticks + 1), false);
        assert!(matches!(wrong, Err(RespondError::NoProcess { .. })));
        let done = kill(&rails(), proc_root, pid, Some(ticks), false).unwrap();
        assert_eq!(done.facts["killed_pids"], serde_json::json!([pid]));
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn refuses_init_and_self() {
        let proc_root = Path::new("/proc");
        let me = std::process::id();
        assert!(matches!(
            kill(&rails(), proc_root, 1, None, false),
            Err(RespondError::Refused(Refusal::Init))
        ));
        assert!(matches!(
            kill(&rails(), proc_root, me, None, true),
            Err(RespondError::Refused(Refusal::Agent(_)))
        ));
    }
}
