//! Key rotation on the agent, for every agent: the uplink answers the cortex's `rotate_keys`
//! action itself, before the agent's own command handler sees anything.
//!
//! 1. The cortex sends an [`ActionRequest`] with [`Action::RotateKeys`].
//! 2. The agent writes a fresh key over its key file ([`StaticKeypair::rotate_file`]: 0600,
//!    atomic rename, the previous key kept as `<file>.retired`), puts it in the client's
//!    [`KeySlot`] and answers an [`ActionReport`] whose `facts.public_key` is the new key.
//! 3. The cortex enrolls the new key and closes the session; the client reconnects with the new
//!    key and re-sends whatever the cortex had not acknowledged (de-duplicated there).
//! 4. The handshake of the new session proves that the cortex took the new key (it refuses a
//!    key it has not admitted), so the agent sends the rotation's final [`ActionReport`] (done:
//!    new key written, new session up) on that session at once, before anything else.
//! 5. Once the cortex's key records hold the new key durably it sends `key-recorded <public
//!    key>` and the agent deletes `<file>.retired`, which it kept until then in case the cortex
//!    lost the new key in a crash. Steps 4 and 5 come in either order.
//!
//! The client reconnects at once, without backoff, when the session ends after its key changed.

use std::path::PathBuf;

use qsc_event::{Action, ActionOutcome, ActionReport, ActionRequest, mono_now_ns};

use crate::delivery::{CommandHandler, CommandStatus, UnaskedResult};
use crate::keys::{KeySlot, PublicKeyBytes, StaticKeypair};

/// Text command with which the cortex says its records hold a rotated key durably:
/// `key-recorded <64 hex>`.
pub const KEY_RECORDED_COMMAND: &str = "key-recorded";

/// The command body with which the cortex says `public_key` is durably recorded.
pub fn key_recorded_command(public_key: &PublicKeyBytes) -> Vec<u8> {
    format!("{KEY_RECORDED_COMMAND} {}", public_key.to_hex()).into_bytes()
}

/// A command body as the agent understands it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedCommand {
    /// `ping`: answered with the agent's name and version.
    Ping,
    /// A JSON [`ActionRequest`].
    Action(ActionRequest),
    /// `key-recorded <key>`: the cortex's records hold this rotated key durably.
    KeyRecorded(PublicKeyBytes),
    /// Anything else; the text (or why the JSON was refused) for the answer.
    Unknown(String),
}

impl ParsedCommand {
    /// Parses a command body. JSON bodies (starting with `{`) must be an [`ActionRequest`].
    pub fn parse(body: &[u8]) -> Self {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text == "ping" {
            return ParsedCommand::Ping;
        }
        if let Some(key) = text.strip_prefix(KEY_RECORDED_COMMAND) {
            return match PublicKeyBytes::from_hex(key) {
                Ok(key) => ParsedCommand::KeyRecorded(key),
                Err(error) => ParsedCommand::Unknown(error.to_string()),
            };
        }
        if text.starts_with('{') {
            return match serde_json::from_str::<ActionRequest>(text) {
                Ok(request) => ParsedCommand::Action(request),
                Err(error) => ParsedCommand::Unknown(format!("not an action request: {error}")),
            };
        }
        ParsedCommand::Unknown(text.chars().take(80).collect())
    }
}

/// The command status matching a report's outcome.
pub fn status_of(report: &ActionReport) -> CommandStatus {
    match report.outcome {
        ActionOutcome::Done => CommandStatus::Succeeded,
        ActionOutcome::Refused => CommandStatus::Refused,
        ActionOutcome::Failed => CommandStatus::Failed,
    }
}

/// A report as a command result: status and JSON body.
pub fn report_result(report: &ActionReport) -> (CommandStatus, Vec<u8>) {
    let body = serde_json::to_vec(report).unwrap_or_else(|error| {
        format!("{{\"error\":\"cannot encode the action report: {error}\"}}").into_bytes()
    });
    (status_of(report), body)
}

/// A report with no facts, completed now.
pub fn plain_report(action_id: &str, outcome: ActionOutcome, detail: String) -> ActionReport {
    ActionReport {
        action_id: action_id.to_owned(),
        outcome,
        detail,
        received_mono_ns: None,
        done_mono_ns: mono_now_ns(),
        facts: serde_json::Map::new(),
    }
}

/// Rotates the key behind the client's [`KeySlot`].
pub struct KeyRotation {
    key_file: PathBuf,
    slot: KeySlot,
    /// The last rotation: a repeated request (same action id) gets the same answer, so the
    /// action stays idempotent.
    last: Option<ActionReport>,
    /// The command id of the last rotation while its final report is not sent.
    unreported: Option<u64>,
}

impl KeyRotation {
    pub fn new(key_file: PathBuf, slot: KeySlot) -> Self {
        KeyRotation {
            key_file,
            slot,
            last: None,
            unreported: None,
        }
    }

    /// Writes a new key, puts it in use and reports its public key; `id` is the request's
    /// command id, which the final report answers too.
    pub fn rotate(&mut self, id: u64, action_id: &str) -> ActionReport {
        if let Some(last) = self.last.as_ref().filter(|r| r.action_id == action_id) {
            return last.clone();
        }
        let received = mono_now_ns();
        let mut report = match StaticKeypair::rotate_file(&self.key_file) {
            Ok(keypair) => {
                let public = keypair.public();
                let previous = self.slot.replace(keypair);
                tracing::warn!(
                    action_id,
                    old_key_id = %previous.public().key_id(),
                    new_key_id = %public.key_id(),
                    "channel key rotated; reconnecting with the new key"
                );
                let mut report = plain_report(
                    action_id,
                    ActionOutcome::Done,
                    format!(
                        "new key {} written to {}; previous key kept until confirmed",
                        public.key_id(),
                        self.key_file.display()
                    ),
                );
                report
                    .facts
                    .insert("public_key".into(), public.to_hex().into());
                report
                    .facts
                    .insert("previous_key_id".into(), previous.public().key_id().into());
                self.unreported = Some(id);
                report
            }
            Err(error) => {
                tracing::error!(action_id, %error, "key rotation failed; the old key stays");
                plain_report(action_id, ActionOutcome::Failed, error.to_string())
            }
        };
        report.received_mono_ns = Some(received);
        self.last = Some(report.clone());
        report
    }

    /// A session authenticated with `public_key` is up. When that is the key the last
    /// rotation put in, the rotation is complete: its final report, as the answer to the
    /// rotation's command id, once.
    pub fn completed_on(&mut self, public_key: &PublicKeyBytes) -> Option<UnaskedResult> {
        let done_mono_ns = mono_now_ns();
        let rotated = self
            .last
            .as_ref()
            .filter(|r| r.facts.get("public_key") == Some(&public_key.to_hex().into()))?;
        let id = self.unreported.take()?;
        tracing::info!(key_id = %public_key.key_id(), "key rotation complete");
        let mut facts = rotated.facts.clone();
        facts.insert("key_written_mono_ns".into(), rotated.done_mono_ns.into());
        let (status, body) = report_result(&ActionReport {
            detail: format!("new key {} in use on a new session", public_key.key_id()),
            done_mono_ns,
            facts,
            ..rotated.clone()
        });
        Some((id, status, body))
    }

    /// The cortex's records hold `public_key` durably: drops the retired key file if
    /// `public_key` is the key in use.
    pub fn recorded(&mut self, public_key: &PublicKeyBytes) -> (CommandStatus, Vec<u8>) {
        if self.slot.public() != *public_key {
            return (
                CommandStatus::Refused,
                format!("{} is not the key in use", public_key.key_id()).into_bytes(),
            );
        }
        match StaticKeypair::discard_retired(&self.key_file) {
            Ok(existed) => {
                tracing::info!(key_id = %public_key.key_id(), existed, "rotated key recorded by the cortex; retired key file removed");
                (
                    CommandStatus::Succeeded,
                    format!("retired key removed: {existed}").into_bytes(),
                )
            }
            Err(error) => (CommandStatus::Failed, error.to_string().into_bytes()),
        }
    }
}

/// What the uplink's client runs: key rotation first, everything else by the agent's handler.
pub struct UplinkCommands<H> {
    inner: H,
    rotation: Option<KeyRotation>,
}

impl<H> UplinkCommands<H> {
    pub fn new(inner: H, rotation: Option<KeyRotation>) -> Self {
        UplinkCommands { inner, rotation }
    }
}

impl<H: CommandHandler> CommandHandler for UplinkCommands<H> {
    fn execute(&mut self, id: u64, body: &[u8]) -> (CommandStatus, Vec<u8>) {
        let Some(rotation) = self.rotation.as_mut() else {
            return self.inner.execute(id, body);
        };
        match ParsedCommand::parse(body) {
            ParsedCommand::Action(ActionRequest {
                action_id,
                action: Action::RotateKeys,
            }) => {
                tracing::info!(id, %action_id, "key rotation requested by the cortex");
                report_result(&rotation.rotate(id, &action_id))
            }
            ParsedCommand::KeyRecorded(key) => rotation.recorded(&key),
            _ => self.inner.execute(id, body),
        }
    }

    fn session_up(&mut self, key: &PublicKeyBytes) -> Vec<UnaskedResult> {
        let mut unasked = self.inner.session_up(key);
        unasked.extend(self.rotation.as_mut().and_then(|r| r.completed_on(key)));
        unasked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Refuse;

    impl CommandHandler for Refuse {
        fn execute(&mut self, _id: u64, _body: &[u8]) -> (CommandStatus, Vec<u8>) {
            (CommandStatus::Refused, b"inner".to_vec())
        }
    }

    fn rotate_request(action_id: &str) -> Vec<u8> {
        serde_json::to_vec(&ActionRequest {
            action_id: action_id.into(),
            action: Action::RotateKeys,
        })
        .unwrap()
    }

    #[test]
    fn rotation_writes_the_new_key_swaps_the_slot_and_reports_it_once_per_action() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("agent.key");
        let old = StaticKeypair::generate_file(&key_file).unwrap();
        let slot = KeySlot::new(StaticKeypair::load(&key_file).unwrap());
        let rotation = KeyRotation::new(key_file.clone(), slot.clone());
        let mut commands = UplinkCommands::new(Refuse, Some(rotation));

        let (status, body) = commands.execute(1, &rotate_request("rot-1"));
        assert_eq!(status, CommandStatus::Succeeded);
        let report: ActionReport = serde_json::from_slice(&body).unwrap();
        assert_eq!(report.outcome, ActionOutcome::Done);
        assert!(report.done_mono_ns > 0);
        let new = PublicKeyBytes::from_hex(report.facts["public_key"].as_str().unwrap()).unwrap();
        assert_ne!(new, old);
        assert_eq!(slot.public(), new);
        assert_eq!(StaticKeypair::load(&key_file).unwrap().public(), new);
        let retired = crate::keys::retired_path(&key_file);
        assert_eq!(StaticKeypair::load(&retired).unwrap().public(), old);

        let (_, again) = commands.execute(2, &rotate_request("rot-1"));
        assert_eq!(again, body, "the same action id does not rotate twice");

        assert_eq!(commands.session_up(&old), []);
        let mut unasked = commands.session_up(&new);
        assert_eq!(commands.session_up(&new), [], "the final report goes once");
        let (id, status, done) = unasked.pop().unwrap();
        assert_eq!(
            (id, status, unasked.len()),
            (1, CommandStatus::Succeeded, 0)
        );
        let done: ActionReport = serde_json::from_slice(&done).unwrap();
        assert_eq!(done.action_id, "rot-1");
        assert_eq!(done.outcome, ActionOutcome::Done);
        assert_eq!(done.received_mono_ns, report.received_mono_ns);
        assert!(done.done_mono_ns >= report.done_mono_ns);
        assert_eq!(done.facts["key_written_mono_ns"], report.done_mono_ns);
        assert!(retired.exists(), "kept until the cortex recorded the key");

        assert_eq!(
            commands.execute(5, &key_recorded_command(&old)).0,
            CommandStatus::Refused
        );
        assert!(retired.exists());
        let (status, body) = commands.execute(6, &key_recorded_command(&new));
        assert_eq!(
            (status, body.as_slice()),
            (
                CommandStatus::Succeeded,
                b"retired key removed: true".as_slice()
            )
        );
        assert!(!retired.exists());
        assert_eq!(commands.execute(7, b"ping").1, b"inner");
    }

    #[test]
    fn a_failed_rotation_keeps_the_old_key() {
        let dir = tempfile::tempdir().unwrap();
        let keypair = StaticKeypair::generate();
        let slot = KeySlot::new(keypair.clone());
        let missing = dir.path().join("no-such-dir").join("agent.key");
        let mut rotation = KeyRotation::new(missing, slot.clone());
        let report = rotation.rotate(2, "rot-2");
        assert_eq!(report.outcome, ActionOutcome::Failed);
        assert_eq!(slot.public(), keypair.public());
        assert_eq!(rotation.completed_on(&keypair.public()), None);
    }

    #[test]
    fn commands_parse() {
        assert_eq!(ParsedCommand::parse(b" ping\n"), ParsedCommand::Ping);
        assert!(matches!(
            ParsedCommand::parse(&rotate_request("a")),
            ParsedCommand::Action(ActionRequest {
                action: Action::RotateKeys,
                ..
            })
        ));
        assert!(matches!(
            ParsedCommand::parse(br#"{"action_id":"a","action":"format_disk"}"#),
            ParsedCommand::Unknown(_)
        ));
        assert!(matches!(
            ParsedCommand::parse(b"key-recorded zz"),
            ParsedCommand::Unknown(_)
        ));
        let key = StaticKeypair::generate().public();
        assert_eq!(
            ParsedCommand::parse(&key_recorded_command(&key)),
            ParsedCommand::KeyRecorded(key)
        );
    }
}
