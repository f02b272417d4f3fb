//! The key lifecycle as named transitions over the channel's [`KeyState`]:
//!
//! ```text
//! (new) ─generate─▶ GENERATED ─distribute─▶ DISTRIBUTED ─activate─▶ ACTIVE
//!        ACTIVE ─begin_rotation─▶ ROTATING ─retire─▶ RETIRED ─destroy─▶ DESTROYED
//!        GENERATED | DISTRIBUTED | ACTIVE | ROTATING | RETIRED ─revoke─▶ REVOKED ─destroy─▶ DESTROYED
//!        GENERATED ─destroy─▶ DESTROYED
//! ```
//!
//! The table of allowed moves is [`KeyState::transition`]; anything else is an
//! [`IllegalTransition`].

use serde::{Deserialize, Serialize};

pub use qsc_channel::keys::KeyState;

/// A named step of the lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// A key record comes into being (only ever the first step).
    Generate,
    /// The public key reached the cortex (enrolled by an operator or reported by the agent).
    Distribute,
    /// The key may open sessions.
    Activate,
    /// A successor is active; this key is kept until the agent is back with the successor.
    BeginRotation,
    /// The agent uses the successor; this key is refused from now on.
    Retire,
    /// The key is refused at once and its session closed.
    Revoke,
    /// The key is gone for good.
    Destroy,
}

/// A transition the lifecycle does not allow from the key's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("key transition `{}` is not allowed from state {}", transition.as_str(), from.as_str())]
pub struct IllegalTransition {
    pub transition: Transition,
    pub from: KeyState,
}

impl Transition {
    /// The state the transition leads to.
    pub fn target(self) -> KeyState {
        match self {
            Transition::Generate => KeyState::Generated,
            Transition::Distribute => KeyState::Distributed,
            Transition::Activate => KeyState::Active,
            Transition::BeginRotation => KeyState::Rotating,
            Transition::Retire => KeyState::Retired,
            Transition::Revoke => KeyState::Revoked,
            Transition::Destroy => KeyState::Destroyed,
        }
    }

    /// The name used in audit bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Generate => "generate",
            Transition::Distribute => "distribute",
            Transition::Activate => "activate",
            Transition::BeginRotation => "begin_rotation",
            Transition::Retire => "retire",
            Transition::Revoke => "revoke",
            Transition::Destroy => "destroy",
        }
    }

    /// The state after taking this transition from `from`.
    pub fn apply(self, from: KeyState) -> Result<KeyState, IllegalTransition> {
        let illegal = IllegalTransition {
            transition: self,
            from,
        };
        if self == Transition::Generate {
            return Err(illegal);
        }
        from.transition(self.target()).map_err(|_| illegal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use KeyState::*;

    #[test]
    fn the_normal_path_and_revocation_are_allowed() {
        let mut state = Generated;
        for step in [
            Transition::Distribute,
            Transition::Activate,
            Transition::BeginRotation,
            Transition::Retire,
            Transition::Destroy,
        ] {
            state = step.apply(state).unwrap();
        }
        assert_eq!(state, Destroyed);
        for from in [Generated, Distributed, Active, Rotating, Retired] {
            assert_eq!(Transition::Revoke.apply(from), Ok(Revoked));
        }
        assert_eq!(Transition::Destroy.apply(Revoked), Ok(Destroyed));
    }

    #[test]
    fn illegal_transitions_are_errors_naming_the_step_and_state() {
        let cases = [
            (Transition::Activate, Generated),
            (Transition::Activate, Revoked),
            (Transition::Activate, Retired),
            (Transition::BeginRotation, Distributed),
            (Transition::Retire, Active),
            (Transition::Revoke, Revoked),
            (Transition::Revoke, Destroyed),
            (Transition::Destroy, Active),
            (Transition::Distribute, Destroyed),
            (Transition::Generate, Generated),
        ];
        for (transition, from) in cases {
            let error = transition.apply(from).unwrap_err();
            assert_eq!(error, IllegalTransition { transition, from });
            let text = error.to_string();
            assert!(
                text.contains(transition.as_str()) && text.contains(from.as_str()),
                "{text}"
            );
        }
    }
}
