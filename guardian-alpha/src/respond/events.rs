//! What the response executor tells the cortex by itself, outside any action's report: a
//! rollback it ran at TTL expiry (`response_rollback`), a step it finished after reporting an
//! action done (`response_follow_up`). These go to the agent's event loop, which sends them as
//! events; without a receiver they are only logged.

use qsc_event::EventKind;

/// How many such events may wait for the agent's event loop.
pub const QUEUE: usize = 64;

/// The sending half; cloned into every thread that may report.
#[derive(Clone, Debug, Default)]
pub struct ResponseEvents(Option<tokio::sync::mpsc::Sender<EventKind>>);

impl ResponseEvents {
    /// Events go to the returned receiver (bounded by [`QUEUE`]).
    pub fn channel() -> (Self, tokio::sync::mpsc::Receiver<EventKind>) {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        (ResponseEvents(Some(tx)), rx)
    }

    /// Queues `event` for the cortex (it was logged by the caller).
    pub fn send(&self, event: EventKind) {
        let Some(sender) = &self.0 else {
            return;
        };
        if let Err(err) = sender.try_send(event) {
            tracing::error!(%err, "response event not queued for the cortex (queue full or agent stopping)");
        }
    }
}
