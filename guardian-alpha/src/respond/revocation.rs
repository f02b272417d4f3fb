//! `revoke_credential` / `restore_credential` enforced by the kernel, when the sensor's exec,
//! fork and setuid hooks are attached.
//!
//! The account's uid goes into the sensor's `REVOKED_UIDS` map first: every process running
//! as it dies at its next exec or fork, and any process asking to become it (a login, `su`,
//! `sudo`, `runuser`, an SSH key login) dies in its setuid call. Every process running with
//! the uid is then killed and the action is reported done. What makes the revocation outlive
//! the agent follows on a thread of its own and is reported as a `response_follow_up` event:
//! the shadow entry is locked ([`credential`]) and the account joins the list of revoked
//! accounts ([`RevokedAccounts`]), which a restarted agent applies again.

use std::{
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    thread::JoinHandle,
};

use qsc_event::{ActionOutcome, EventKind, ResponseFollowUp, mono_now_ns};

use super::{
    Done, RespondError,
    credential::{self, LockChange, SHADOW},
    events::ResponseEvents,
    guardrails::Guardrails,
    revoked::RevokedAccounts,
};
use crate::sensor::{Sensor, SharedSensor};

/// Never refused by the kernel, even where `allow_system_users` lets root be revoked: every
/// fork of init and of each daemon would die. Root is locked in the shadow file only.
const ROOT_UID: u32 = 0;

/// Where a revocation's follow-up step is reported.
pub struct FollowUp {
    pub action_id: String,
    pub events: ResponseEvents,
}

/// Revocations through the sensor's map, and the list that outlives the agent.
pub struct KernelRevocation {
    sensor: SharedSensor,
    revoked: Arc<RevokedAccounts>,
    /// Follow-up steps still running after their revocation was reported.
    pending: Mutex<Vec<JoinHandle<()>>>,
}

impl KernelRevocation {
    /// Refuses again, in `sensor`, every account of `revoked` that still has the uid it was
    /// revoked with, and kills its processes (started while no agent refused it); accounts
    /// gone or renumbered since are dropped from the list.
    pub fn start(
        sensor: SharedSensor,
        revoked: RevokedAccounts,
        rails: &Guardrails,
        proc_root: &Path,
    ) -> Self {
        let revocation = KernelRevocation {
            sensor,
            revoked: Arc::new(revoked),
            pending: Mutex::new(Vec::new()),
        };
        revocation.apply_list(rails, proc_root);
        revocation
    }

    fn apply_list(&self, rails: &Guardrails, proc_root: &Path) {
        let accounts = self.revoked.accounts();
        if accounts.is_empty() {
            return;
        }
        // Unreadable, it cannot tell a gone account: every listed uid is refused.
        let passwd = std::fs::read_to_string(credential::PASSWD)
            .inspect_err(|err| tracing::error!(%err, "cannot read {}", credential::PASSWD))
            .ok();
        let mut dropped = false;
        for (user, uid) in accounts {
            if let Some(passwd) = &passwd
                && credential::uid_in(passwd, &user) != Some(uid)
            {
                tracing::warn!(%user, uid, "a revoked account is gone or has another uid now; dropped from the list");
                dropped |= self.revoked.remove(&user);
                continue;
            }
            let applied = self
                .deny(uid)
                .and_then(|()| credential::kill_uid(rails, proc_root, uid));
            match applied {
                Ok(killed) => {
                    tracing::info!(%user, uid, ?killed, "revoked account refused by the kernel again")
                }
                Err(err) => {
                    tracing::error!(%user, uid, %err, "cannot refuse a revoked account again")
                }
            }
        }
        if dropped && let Err(err) = self.revoked.save() {
            tracing::error!(%err, "the list of revoked accounts was not saved");
        }
    }

    fn sensor(&self) -> Result<MutexGuard<'_, Sensor>, RespondError> {
        self.sensor.lock().map_err(|_| RespondError::SensorPoisoned)
    }

    fn deny(&self, uid: u32) -> Result<(), RespondError> {
        Ok(self.sensor()?.revoke_uid(uid)?)
    }

    /// Revokes `user` in the kernel and kills every process running with its uid; the shadow
    /// lock and the list follow, reported to `follow_up`. An account without a shadow entry
    /// is refused before anything is done.
    pub fn revoke(
        &self,
        rails: &Guardrails,
        proc_root: &Path,
        user: &str,
        follow_up: FollowUp,
    ) -> Result<Done, RespondError> {
        let uid = credential::checked_uid(rails, user)?;
        if uid == ROOT_UID {
            return credential::revoke(rails, proc_root, user);
        }
        let shadow =
            std::fs::read_to_string(SHADOW).map_err(|e| credential::shadow_err("read", e))?;
        let (_, change) = credential::relock(&shadow, user, true)?;
        self.deny(uid)?;
        let denied_ns = mono_now_ns();
        self.revoked.insert(user, uid);
        self.persist_later(user, follow_up)?;
        let killed = credential::kill_uid(rails, proc_root, uid)?;
        let ended_ns = mono_now_ns();
        let detail = format!(
            "account {user} revoked in the kernel; {} of its processes killed; its shadow entry is being locked",
            killed.len()
        );
        Ok(credential::revoked(detail, uid, "kernel", change, killed)
            .fact("kernel_denied_mono_ns", denied_ns)
            .fact("sessions_ended_mono_ns", ended_ns))
    }

    /// Unlocks `user`'s shadow entry (after a lock still being written), lifts the kernel's
    /// refusal and takes the account off the list. The uid the account was revoked with is
    /// lifted too: the account may have been renumbered since, or deleted, which leaves only
    /// that uid to lift (a later account given it would otherwise stay refused).
    pub fn restore(&self, rails: &Guardrails, user: &str) -> Result<Done, RespondError> {
        let listed = self.revoked.uid_of(user);
        let (done, uid) = match (credential::checked_uid(rails, user), listed) {
            (Ok(uid), _) => (credential::unlock(user, uid)?, uid),
            (Err(RespondError::NoUser(_)), Some(uid)) => (
                Done::new(format!("account {user} no longer exists")).fact("uid", uid),
                uid,
            ),
            (Err(err), _) => return Err(err),
        };
        {
            let mut sensor = self.sensor()?;
            sensor.restore_uid(uid)?;
            if let Some(revoked_as) = listed.filter(|&listed| listed != uid) {
                sensor.restore_uid(revoked_as)?;
            }
        }
        if self.revoked.remove(user) {
            self.revoked.save()?;
        }
        Ok(done.fact("mechanism", "kernel").fact("revoked_uid", listed))
    }

    /// Locks `user`'s shadow entry and saves the list on a thread of its own, and reports how
    /// that went.
    fn persist_later(&self, user: &str, follow_up: FollowUp) -> Result<(), RespondError> {
        let user = user.to_owned();
        let revoked = self.revoked.clone();
        let thread = std::thread::Builder::new()
            .name("qsc-revocation".into())
            .spawn(move || {
                let result = credential::set_locked(Path::new(SHADOW), &user, true)
                    .and_then(|change| Ok((change, revoked.save()?)));
                report_persisted(&user, result.map(|(change, ())| change), follow_up);
            })
            .map_err(|e| credential::shadow_err("start the lock thread", e))?;
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|t| !t.is_finished());
        pending.push(thread);
        Ok(())
    }
}

impl Drop for KernelRevocation {
    /// Waits for the follow-up steps still running.
    fn drop(&mut self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for thread in pending {
            let _ = thread.join();
        }
    }
}

/// Logs how a revocation was made to outlive the agent and sends it as a `response_follow_up`
/// event.
fn report_persisted(user: &str, result: Result<LockChange, RespondError>, follow_up: FollowUp) {
    let (outcome, detail) = match result {
        Ok(LockChange::Changed) => (
            ActionOutcome::Done,
            format!("account {user} locked in {SHADOW} and listed as revoked"),
        ),
        Ok(LockChange::AlreadyThere) => (
            ActionOutcome::Done,
            format!("account {user} was already locked in {SHADOW}; listed as revoked"),
        ),
        Err(err) => (
            ActionOutcome::Failed,
            format!("account {user} may be refused only while this agent runs: {err}"),
        ),
    };
    match outcome {
        ActionOutcome::Done => {
            tracing::info!(action_id = %follow_up.action_id, %detail, "revocation persisted")
        }
        _ => tracing::error!(action_id = %follow_up.action_id, %detail, "revocation not persisted"),
    }
    follow_up
        .events
        .send(EventKind::ResponseFollowUp(ResponseFollowUp {
            action_id: follow_up.action_id,
            action: "revoke_credential".into(),
            step: "persist".into(),
            outcome,
            detail,
        }));
}
