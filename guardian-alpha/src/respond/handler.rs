//! The agent's qsc-channel command handler: a JSON [`ActionRequest`] is executed by the
//! [`Responder`] and answered with a JSON [`ActionReport`]; everything else (`ping`,
//! `rotate_keys`, unknown commands) goes to the channel's [`AgentCommands`].

use qsc_channel::{
    delivery::{CommandHandler, CommandStatus},
    uplink::AgentCommands,
};
use qsc_event::{Action, ActionOutcome, ActionRequest};

use super::Responder;

/// Executes response actions and delegates the rest.
pub struct ResponseHandler {
    responder: Responder,
    common: AgentCommands,
}

impl ResponseHandler {
    /// `common` answers what `responder` does not execute itself.
    pub fn new(responder: Responder, common: AgentCommands) -> Self {
        ResponseHandler { responder, common }
    }

    /// The request this handler executes itself, if `body` is one.
    fn own_request(body: &[u8]) -> Option<ActionRequest> {
        serde_json::from_slice::<ActionRequest>(body)
            .ok()
            .filter(|r| r.action != Action::RotateKeys)
    }
}

/// The channel status that goes with an outcome.
pub fn status_of(outcome: ActionOutcome) -> CommandStatus {
    match outcome {
        ActionOutcome::Done => CommandStatus::Succeeded,
        ActionOutcome::Refused => CommandStatus::Refused,
        ActionOutcome::Failed => CommandStatus::Failed,
    }
}

impl CommandHandler for ResponseHandler {
    fn execute(&mut self, id: u64, body: &[u8]) -> (CommandStatus, Vec<u8>) {
        let Some(request) = Self::own_request(body) else {
            return self.common.execute(id, body);
        };
        let report = self.responder.execute(&request);
        match serde_json::to_vec(&report) {
            Ok(json) => (status_of(report.outcome), json),
            Err(err) => (
                CommandStatus::Failed,
                format!("cannot encode the report: {err}").into_bytes(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use qsc_event::ActionReport;

    fn handler() -> ResponseHandler {
        let responder = Responder::new(&Config::default(), None).unwrap();
        ResponseHandler::new(responder, AgentCommands::new("guardian-alpha", "9.9"))
    }

    #[test]
    fn ping_and_unknown_commands_go_to_agent_commands() {
        let mut handler = handler();
        let (status, body) = handler.execute(1, b"ping");
        assert_eq!(
            (status, body.as_slice()),
            (CommandStatus::Succeeded, &b"guardian-alpha 9.9"[..])
        );
        let (status, _) = handler.execute(2, br#"{"action_id":"a","action":"format_disk"}"#);
        assert_eq!(status, CommandStatus::Refused);
        assert!(
            ResponseHandler::own_request(br#"{"action_id":"a","action":"rotate_keys"}"#).is_none()
        );
    }

    #[test]
    fn a_refused_kill_of_pid_1_is_reported_with_its_reason() {
        let mut handler = handler();
        let before = qsc_event::mono_now_ns();
        let (status, body) = handler.execute(
            3,
            br#"{"action_id":"act-1","action":"kill","pid":1,"tree":true}"#,
        );
        assert_eq!(status, CommandStatus::Refused);
        let report: ActionReport = serde_json::from_slice(&body).unwrap();
        assert_eq!(report.action_id, "act-1");
        assert_eq!(report.outcome, ActionOutcome::Refused);
        assert!(report.detail.contains("pid 1"), "{}", report.detail);
        assert!(report.done_mono_ns >= before);
    }

    #[test]
    fn blocking_the_cortex_is_refused() {
        let mut config = Config::default();
        config.cortex.address = "127.0.0.9:7443".into();
        let responder = Responder::new(&config, None).unwrap();
        let report = responder.execute(&ActionRequest {
            action_id: "b".into(),
            action: Action::BlockIp {
                addr: "127.0.0.9".parse().unwrap(),
                ttl_s: 5,
            },
        });
        assert_eq!(report.outcome, ActionOutcome::Refused, "{}", report.detail);
        assert_eq!(responder.pending_rollbacks(), 0);
    }
}
