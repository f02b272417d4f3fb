//! The last two steps of a rotation, which come in either order: the key records saved with
//! the new key, and the agent's final report (sent once its new session's handshake proved
//! that the cortex took the key, without waiting for the records' fsyncs). The rotation
//! completes with whichever step comes second, and fails if the save does.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use qsc_event::ActionReport;

/// A rotation that never completes (its agent never came back) is forgotten after this.
const FORGET_AFTER: Duration = Duration::from_secs(600);

enum Step {
    /// Neither step yet.
    Saving,
    /// The agent's report came before the save finished.
    SavingReported(ActionReport),
    /// The records are saved; the agent's report has not come.
    Recorded,
}

/// Rotations between their new key's admission and their completion, by action id.
#[derive(Default)]
pub(super) struct Settling {
    by_action: HashMap<String, (Instant, Step)>,
}

impl Settling {
    /// Rotation `action_id` admitted its new key and is saving its records.
    pub fn start(&mut self, action_id: &str) {
        self.by_action
            .retain(|_, (since, _)| since.elapsed() < FORGET_AFTER);
        self.by_action
            .insert(action_id.to_owned(), (Instant::now(), Step::Saving));
    }

    /// The records of `action_id` are saved: its agent's report if that came first (the
    /// rotation is complete), else None.
    pub fn recorded(&mut self, action_id: &str) -> Option<ActionReport> {
        let (_, step) = self.by_action.get_mut(action_id)?;
        match std::mem::replace(step, Step::Recorded) {
            Step::SavingReported(report) => {
                self.by_action.remove(action_id);
                Some(report)
            }
            Step::Saving | Step::Recorded => None,
        }
    }

    /// The records of `action_id` could not be saved: the rotation failed.
    pub fn failed(&mut self, action_id: &str) {
        self.by_action.remove(action_id);
    }

    /// The agent's final report: back when the rotation is complete with it (its records are
    /// saved, or it is not one settling here), None while its records are being saved.
    pub fn reported(&mut self, report: ActionReport) -> Option<ActionReport> {
        let Some((_, step)) = self.by_action.get_mut(&report.action_id) else {
            return Some(report);
        };
        match step {
            Step::Recorded => {
                self.by_action.remove(&report.action_id);
                Some(report)
            }
            Step::Saving | Step::SavingReported(_) => {
                *step = Step::SavingReported(report);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qsc_event::ActionOutcome;

    fn report(action_id: &str) -> ActionReport {
        ActionReport {
            action_id: action_id.into(),
            outcome: ActionOutcome::Done,
            detail: String::new(),
            received_mono_ns: None,
            done_mono_ns: 7,
            facts: serde_json::Map::new(),
        }
    }

    #[test]
    fn completes_with_the_second_step_in_either_order() {
        let mut settling = Settling::default();
        settling.start("saved-first");
        assert_eq!(settling.recorded("saved-first"), None);
        assert_eq!(
            settling.reported(report("saved-first")),
            Some(report("saved-first"))
        );

        settling.start("reported-first");
        assert_eq!(settling.reported(report("reported-first")), None);
        assert_eq!(
            settling.recorded("reported-first"),
            Some(report("reported-first"))
        );
        assert!(settling.by_action.is_empty());
    }

    #[test]
    fn a_failed_save_drops_the_report_that_came_first() {
        let mut settling = Settling::default();
        settling.start("rot");
        assert_eq!(settling.reported(report("rot")), None);
        settling.failed("rot");
        assert_eq!(settling.recorded("rot"), None);
        assert!(settling.by_action.is_empty());
    }

    #[test]
    fn a_report_of_a_rotation_not_settling_here_completes_at_once() {
        let mut settling = Settling::default();
        assert_eq!(settling.reported(report("other")), Some(report("other")));
    }
}
