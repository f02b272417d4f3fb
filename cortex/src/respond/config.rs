//! `[respond]`: how the cortex acts on incidents (`config/cortex.example.toml` documents each key).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::guard::Cidr;

/// How an action a playbook asks for is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Sent to the agent at once.
    Autonomous,
    /// Held until an operator approves it (or it expires).
    Assisted,
    /// Audited as "would run"; nothing is sent.
    DryRun,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Autonomous => "autonomous",
            Mode::Assisted => "assisted",
            Mode::DryRun => "dry_run",
        }
    }
}

/// `[respond]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RespondConfig {
    /// Mode of every playbook that does not name its own.
    pub mode: Mode,
    /// Load the playbooks QSC ships (cortex/playbooks/, embedded in the binary).
    pub shipped_playbooks: bool,
    /// Extra playbook files or folders (`.yml`/`.yaml`, searched recursively).
    pub playbook_dirs: Vec<PathBuf>,
    /// Seconds a held (assisted) action waits for an operator before it expires.
    pub hold_expiry_s: u64,
    /// Releasing an ISOLATED host needs the approvals of two distinct operators.
    pub two_person_release: bool,
    /// A held action runs only once two distinct operators have approved it.
    pub two_person_approval: bool,
    /// Most actions the cortex starts per host in any 60 seconds (rollbacks not counted).
    pub max_actions_per_minute: u32,
    /// Milliseconds to wait for an agent's report before the action counts as failed.
    pub dispatch_timeout_ms: u64,
    /// Actions waiting to be sent to agents; beyond it an action fails (audited).
    pub dispatch_queue: usize,
    /// What is never acted on.
    pub allow: AllowConfig,
}

/// `[respond.allow]`: processes, users and addresses no action may touch.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AllowConfig {
    /// Process names (`comm`) or executable paths (`exe`) never killed or quarantined.
    pub processes: Vec<String>,
    /// Accounts never locked, and whose processes are never killed.
    pub users: Vec<String>,
    /// Addresses or CIDR blocks never blocked.
    pub addresses: Vec<Cidr>,
}

impl Default for RespondConfig {
    fn default() -> Self {
        RespondConfig {
            mode: Mode::Assisted,
            shipped_playbooks: true,
            playbook_dirs: Vec::new(),
            hold_expiry_s: 900,
            two_person_release: false,
            two_person_approval: false,
            max_actions_per_minute: 10,
            dispatch_timeout_ms: 5000,
            dispatch_queue: 1024,
            allow: AllowConfig::default(),
        }
    }
}

impl Default for AllowConfig {
    fn default() -> Self {
        AllowConfig {
            processes: vec!["systemd".into(), "sshd".into()],
            users: vec!["root".into()],
            addresses: Vec::new(),
        }
    }
}

/// A `[respond]` key with a value out of range.
#[derive(Debug, thiserror::Error)]
#[error("[respond] {key}: {reason}")]
pub struct RespondConfigError {
    pub key: &'static str,
    pub reason: &'static str,
}

impl RespondConfig {
    pub fn validate(&self) -> Result<(), RespondConfigError> {
        let check = |ok: bool, key, reason| {
            if ok {
                Ok(())
            } else {
                Err(RespondConfigError { key, reason })
            }
        };
        check(
            (1..=7 * 86_400).contains(&self.hold_expiry_s),
            "hold_expiry_s",
            "must be 1..=604800",
        )?;
        check(
            (1..=10_000).contains(&self.max_actions_per_minute),
            "max_actions_per_minute",
            "must be 1..=10000",
        )?;
        check(
            (1..=600_000).contains(&self.dispatch_timeout_ms),
            "dispatch_timeout_ms",
            "must be 1..=600000",
        )?;
        check(
            (1..=1_000_000).contains(&self.dispatch_queue),
            "dispatch_queue",
            "must be 1..=1000000",
        )?;
        check(
            self.shipped_playbooks || !self.playbook_dirs.is_empty(),
            "playbook_dirs",
            "is empty and shipped_playbooks is false: no playbook would be loaded",
        )?;
        check(
            self.allow.processes.iter().all(|p| !p.trim().is_empty())
                && self.allow.users.iter().all(|u| !u.trim().is_empty()),
            "allow",
            "process and user names must not be empty",
        )
    }
}
