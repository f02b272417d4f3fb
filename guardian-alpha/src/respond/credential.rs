//! `revoke_credential` / `restore_credential` through the shadow file: lock a local account by
//! prefixing its shadow password with `!` (what `usermod -L` does) and end its sessions by
//! SIGKILLing every process running with its uid; restore removes the `!`. The shadow file is
//! edited under glibc's `lckpwdf` lock (which shadow-utils also takes) and replaced atomically,
//! keeping its owner and mode ([`replace_file`]: a crash leaves the old file or the new one,
//! never an empty one). With the sensor's hooks, [`super::revocation`] has the kernel refuse
//! the account first and uses these steps around it.

use std::path::Path;

use qsc_event::mono_now_ns;

use super::{
    Done, RespondError,
    guardrails::Guardrails,
    procfs::{self, Pidfd},
    replace::replace_file,
};

/// Where accounts are looked up (uid).
pub const PASSWD: &str = "/etc/passwd";
/// Where accounts are locked.
pub const SHADOW: &str = "/etc/shadow";
/// Scans for processes of the user before giving up (a round finds those forked meanwhile).
const MAX_KILL_ROUNDS: usize = 32;

unsafe extern "C" {
    /// glibc: locks `/etc/.pwd.lock` for the shadow database (waits up to 15 s).
    fn lckpwdf() -> libc::c_int;
    fn ulckpwdf() -> libc::c_int;
}

/// The uid of `user` in a passwd file's text.
pub fn uid_in(passwd: &str, user: &str) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == user)
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
    })
}

/// What changing one account's lock did.
#[derive(Debug, PartialEq, Eq)]
pub enum LockChange {
    Changed,
    AlreadyThere,
}

/// `shadow` with `user`'s password field locked (`lock`) or unlocked.
pub fn relock(shadow: &str, user: &str, lock: bool) -> Result<(String, LockChange), RespondError> {
    let mut change = None;
    let mut out = String::with_capacity(shadow.len() + 1);
    for line in shadow.split_inclusive('\n') {
        let (name, rest) = line.split_once(':').unwrap_or((line, ""));
        if name != user || change.is_some() {
            out.push_str(line);
            continue;
        }
        let (password, tail) = rest.split_once(':').unwrap_or((rest, ""));
        let (new, how) = match (lock, password.strip_prefix('!')) {
            (true, Some(_)) => (password.to_owned(), LockChange::AlreadyThere),
            (true, None) => (format!("!{password}"), LockChange::Changed),
            (false, None) => (password.to_owned(), LockChange::AlreadyThere),
            (false, Some("")) => return Err(RespondError::EmptyPassword(user.into())),
            (false, Some(rest)) => (rest.to_owned(), LockChange::Changed),
        };
        out.push_str(&format!("{name}:{new}:{tail}"));
        change = Some(how);
    }
    let change = change.ok_or_else(|| RespondError::NoShadowEntry(user.into()))?;
    Ok((out, change))
}

/// Holds glibc's password-database lock until dropped.
struct PwdLock;

impl PwdLock {
    fn take() -> Result<Self, RespondError> {
        // SAFETY: lckpwdf has no preconditions; it returns -1 with errno on failure.
        if unsafe { lckpwdf() } != 0 {
            return Err(shadow_err("lock", std::io::Error::last_os_error()));
        }
        Ok(PwdLock)
    }
}

impl Drop for PwdLock {
    fn drop(&mut self) {
        // SAFETY: releases the lock this value took.
        unsafe { ulckpwdf() };
    }
}

pub(super) fn shadow_err(step: &'static str, source: std::io::Error) -> RespondError {
    RespondError::Shadow { step, source }
}

/// Locks or unlocks `user` in the shadow file; a no-op when it already is so.
pub(super) fn set_locked(
    shadow: &Path,
    user: &str,
    lock: bool,
) -> Result<LockChange, RespondError> {
    let _guard = PwdLock::take()?;
    let text = std::fs::read_to_string(shadow).map_err(|e| shadow_err("read", e))?;
    let (new, change) = relock(&text, user, lock)?;
    if change == LockChange::Changed {
        replace_file(shadow, new.as_bytes()).map_err(|e| shadow_err("replace", e))?;
    }
    Ok(change)
}

/// The account's uid, checked against the guardrails.
pub(super) fn checked_uid(rails: &Guardrails, user: &str) -> Result<u32, RespondError> {
    let passwd = std::fs::read_to_string(PASSWD).map_err(|e| shadow_err("read passwd", e))?;
    let uid = uid_in(&passwd, user).ok_or_else(|| RespondError::NoUser(user.into()))?;
    rails.check_user(user, uid)?;
    Ok(uid)
}

/// Locks `user` in the shadow file and kills every process running with its uid; both at
/// once, on two threads, since neither needs the other. The facts say when each was done
/// (`CLOCK_MONOTONIC` ns).
pub fn revoke(rails: &Guardrails, proc_root: &Path, user: &str) -> Result<Done, RespondError> {
    let uid = checked_uid(rails, user)?;
    let stamped = |result| (result, mono_now_ns());
    let ((change, locked_ns), (killed, ended_ns)) = std::thread::scope(|scope| {
        let lock = scope.spawn(|| stamped(set_locked(Path::new(SHADOW), user, true)));
        let killed = (kill_uid(rails, proc_root, uid), mono_now_ns());
        let change = lock.join().unwrap_or_else(|_| {
            stamped(Err(shadow_err(
                "lock",
                std::io::Error::other("thread panicked"),
            )))
        });
        (change, killed)
    });
    let (change, killed) = (change?, killed?);
    let detail = format!(
        "account {user} locked; {} of its processes killed",
        killed.len()
    );
    Ok(revoked(detail, uid, "shadow", change, killed)
        .fact("account_locked_mono_ns", locked_ns)
        .fact("sessions_ended_mono_ns", ended_ns))
}

/// What both ways of revoking report.
pub(super) fn revoked(
    detail: String,
    uid: u32,
    mechanism: &str,
    change: LockChange,
    killed: Vec<u32>,
) -> Done {
    Done::new(detail)
        .fact("uid", uid)
        .fact("mechanism", mechanism)
        .fact("already_locked", change == LockChange::AlreadyThere)
        .fact("killed_pids", killed)
}

/// Unlocks `user` in the shadow file. Waits for a lock of the account still being written
/// (both take `lckpwdf`).
pub fn restore(rails: &Guardrails, user: &str) -> Result<Done, RespondError> {
    unlock(user, checked_uid(rails, user)?)
}

/// Unlocks `user`, whose uid is `uid`, in the shadow file.
pub(super) fn unlock(user: &str, uid: u32) -> Result<Done, RespondError> {
    let change = set_locked(Path::new(SHADOW), user, false)?;
    Ok(Done::new(format!("account {user} unlocked"))
        .fact("uid", uid)
        .fact("was_locked", change == LockChange::Changed))
}

/// SIGKILLs every running process with `uid` as real, effective or saved uid, scanning again
/// until a scan finds none it has not seen. Processes a guardrail protects are spared (and
/// logged).
pub(super) fn kill_uid(
    rails: &Guardrails,
    proc_root: &Path,
    uid: u32,
) -> Result<Vec<u32>, RespondError> {
    let mut killed: Vec<Pidfd> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..MAX_KILL_ROUNDS {
        let found: Vec<procfs::Status> = procfs::user_pids(proc_root)
            .filter(|pid| !seen.contains(pid))
            .filter_map(|pid| procfs::status(proc_root, pid))
            .filter(|s| runs_as(s, uid))
            .collect();
        if found.is_empty() {
            wait_all(&killed)?;
            return Ok(killed.iter().map(|k| k.pid).collect());
        }
        for status in found {
            seen.insert(status.pid);
            if let Some(pidfd) = open_checked(rails, proc_root, &status, uid)? {
                pidfd
                    .signal(libc::SIGKILL)
                    .map_err(|source| RespondError::Signal {
                        pid: pidfd.pid,
                        source,
                    })?;
                killed.push(pidfd);
            }
        }
    }
    Err(RespondError::Survivors {
        pids: killed.iter().map(|k| k.pid).collect(),
    })
}

fn runs_as(status: &procfs::Status, uid: u32) -> bool {
    status.is_running() && status.uids[..3].contains(&uid)
}

/// A pidfd on the process `status` describes, unless a guardrail protects it or it is gone.
/// The uid is checked again once the pidfd is open, so a pid reused since the scan is spared.
fn open_checked(
    rails: &Guardrails,
    proc_root: &Path,
    status: &procfs::Status,
    uid: u32,
) -> Result<Option<Pidfd>, RespondError> {
    if let Err(refusal) = rails.check_process(status.pid, status.ppid, &status.comm) {
        tracing::warn!(pid = status.pid, %refusal, "not ending this process of the account");
        return Ok(None);
    }
    let pidfd = match Pidfd::open(proc_root, status.pid, None) {
        Ok(pidfd) => pidfd,
        Err(err) if err.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(source) => {
            return Err(RespondError::Signal {
                pid: status.pid,
                source,
            });
        }
    };
    let still = procfs::status(proc_root, status.pid).is_some_and(|now| runs_as(&now, uid));
    Ok(still.then_some(pidfd))
}

fn wait_all(killed: &[Pidfd]) -> Result<(), RespondError> {
    let survivors: Vec<u32> = killed
        .iter()
        .filter(|p| !p.wait_exit(std::time::Duration::from_secs(2)))
        .map(|p| p.pid)
        .collect();
    if survivors.is_empty() {
        Ok(())
    } else {
        Err(RespondError::Survivors { pids: survivors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHADOW_TEXT: &str =
        "root:*:19000:0:99999:7:::\nbob:$6$salt$hash:19000:0:99999:7:::\nnopw:!:19000::::::\n";

    #[test]
    fn finds_uids() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nbob:x:1001:1001::/home/bob:/bin/sh\n";
        assert_eq!(uid_in(passwd, "bob"), Some(1001));
        assert_eq!(uid_in(passwd, "root"), Some(0));
        assert_eq!(uid_in(passwd, "bo"), None);
    }

    #[test]
    fn locks_and_unlocks_one_line_idempotently() {
        let (locked, change) = relock(SHADOW_TEXT, "bob", true).unwrap();
        assert_eq!(change, LockChange::Changed);
        assert!(locked.contains("\nbob:!$6$salt$hash:19000:0:99999:7:::\n"));
        assert!(locked.starts_with("root:*:19000"));
        let (again, change) = relock(&locked, "bob", true).unwrap();
        assert_eq!(
            (again.as_str(), change),
            (locked.as_str(), LockChange::AlreadyThere)
        );
        let (unlocked, change) = relock(&locked, "bob", false).unwrap();
        assert_eq!(
            (unlocked.as_str(), change),
            (SHADOW_TEXT, LockChange::Changed)
        );
    }

    #[test]
    fn refuses_to_unlock_into_an_empty_password_and_unknown_users() {
        assert!(matches!(
            relock(SHADOW_TEXT, "nopw", false),
            Err(RespondError::EmptyPassword(_))
        ));
        assert!(matches!(
            relock(SHADOW_TEXT, "carol", true),
            Err(RespondError::NoShadowEntry(_))
        ));
    }
}
