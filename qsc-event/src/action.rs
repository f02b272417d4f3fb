//! Response actions: what the cortex asks an agent to do, and what the agent answers.
//!
//! The cortex sends an [`ActionRequest`] as the JSON body of a qsc-channel command; the agent
//! answers with an [`ActionReport`] as the JSON body of the command result. Timestamps are the
//! host's `CLOCK_MONOTONIC` (the clock of kernel event timestamps, [`Event::mono_ns`]), so the
//! latency from a triggering kernel event to the completed action is one subtraction on the
//! host's own clock.
//!
//! [`Event::mono_ns`]: crate::Event::mono_ns

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One response action. Every action is idempotent: repeating it leaves the host as one run did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// SIGKILL a process, or it and all its descendants. `start_time_ticks` (field 22 of
    /// `/proc/PID/stat`) pins the process so a recycled pid is never hit.
    Kill {
        pid: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_time_ticks: Option<u64>,
        #[serde(default)]
        tree: bool,
    },
    /// Move a file into the agent's quarantine folder, strip its permissions, keep its hash.
    Quarantine { path: String },
    /// Refuse connects and sends to `addr` for `ttl_s` seconds (0: until unblocked).
    BlockIp { addr: IpAddr, ttl_s: u64 },
    /// Roll back [`Action::BlockIp`].
    UnblockIp { addr: IpAddr },
    /// Drop all traffic of the host except its cortex channel, for `ttl_s` seconds (0: until
    /// released).
    Isolate { ttl_s: u64 },
    /// Roll back [`Action::Isolate`].
    Release,
    /// Lock a local account and end its sessions.
    RevokeCredential { user: String },
    /// Roll back [`Action::RevokeCredential`]: unlock the account.
    RestoreCredential { user: String },
    /// Emergency rotation of the agent's channel key; the report carries the new public key.
    RotateKeys,
}

impl Action {
    /// Stable snake_case name, as used in playbooks, audit records and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Kill { .. } => "kill",
            Action::Quarantine { .. } => "quarantine",
            Action::BlockIp { .. } => "block_ip",
            Action::UnblockIp { .. } => "unblock_ip",
            Action::Isolate { .. } => "isolate",
            Action::Release => "release",
            Action::RevokeCredential { .. } => "revoke_credential",
            Action::RestoreCredential { .. } => "restore_credential",
            Action::RotateKeys => "rotate_keys",
        }
    }
}

/// What the cortex sends: one action with its id (unique per cortex, used in audit records).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRequest {
    pub action_id: String,
    #[serde(flatten)]
    pub action: Action,
}

/// How an action ended on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionOutcome {
    /// The host is now in the requested state.
    Done,
    /// An agent-side guardrail refused it (pid 1, an agent, the cortex, an allow-list, …).
    Refused,
    /// It was attempted and failed; `detail` says why.
    Failed,
}

/// What the agent answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionReport {
    pub action_id: String,
    pub outcome: ActionOutcome,
    /// Human-readable result: what was done, or why not.
    pub detail: String,
    /// Host `CLOCK_MONOTONIC` when the agent received the request (none from agents that do
    /// not say): with `done_mono_ns`, how long the host took to act.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_mono_ns: Option<u64>,
    /// Host `CLOCK_MONOTONIC` when the action completed (or was refused).
    pub done_mono_ns: u64,
    /// Action-specific facts: the quarantined file's hash and new path, the killed pids,
    /// the new public key after a rotation, …
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub facts: serde_json::Map<String, serde_json::Value>,
}

/// Host `CLOCK_MONOTONIC` in nanoseconds: the clock of [`crate::Event::mono_ns`].
pub fn mono_now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the struct it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return 0;
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_is_flat_and_round_trips() {
        let request = ActionRequest {
            action_id: "act-7".into(),
            action: Action::BlockIp {
                addr: "127.0.0.2".parse().unwrap(),
                ttl_s: 30,
            },
        };
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(
            json,
            r#"{"action_id":"act-7","action":"block_ip","addr":"127.0.0.2","ttl_s":30}"#
        );
        let back: ActionRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, request);
        assert_eq!(back.action.name(), "block_ip");
    }

    #[test]
    fn unknown_action_is_an_error() {
        let bad = r#"{"action_id":"a","action":"format_disk"}"#;
        assert!(serde_json::from_str::<ActionRequest>(bad).is_err());
    }

    #[test]
    fn monotonic_clock_advances() {
        let a = mono_now_ns();
        let b = mono_now_ns();
        assert!(a > 0 && b >= a);
    }
}
