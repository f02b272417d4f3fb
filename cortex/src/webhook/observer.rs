//! Plugs the webhook sender into the respond stage: incidents and action results become alerts.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use qsc_event::ActionRequest;

use super::payload::{ActionResultAlert, Alert};
use super::worker::{EnqueueError, WebhookSender};
use crate::respond::{ActionRecord, ResponseObserver};
use crate::score::{Incident, Severity};

/// Incidents (and actions) whose alert is remembered; the memory is cleared beyond it (one of
/// them may then alert once more, which is harmless).
const ALERT_MEMORY: usize = 100_000;

/// Sends an alert when an incident opens or its severity rises, and when an agent reports the
/// result of an action. Never blocks: [`WebhookSender::enqueue`] only hands the alert over.
pub struct WebhookObserver {
    sender: WebhookSender,
    alerted: Mutex<HashMap<String, Severity>>,
    reported_actions: Mutex<HashSet<String>>,
}

impl WebhookObserver {
    pub fn new(sender: WebhookSender) -> Self {
        WebhookObserver {
            sender,
            alerted: Mutex::new(HashMap::new()),
            reported_actions: Mutex::new(HashSet::new()),
        }
    }

    pub fn sender(&self) -> &WebhookSender {
        &self.sender
    }

    /// True when `incident` is new or more severe than when it last alerted.
    fn severity_rose(&self, incident: &Incident) -> bool {
        let mut alerted = self.alerted.lock().unwrap_or_else(|p| p.into_inner());
        if alerted.len() >= ALERT_MEMORY {
            alerted.clear();
        }
        match alerted.get(&incident.id) {
            Some(previous) if *previous >= incident.severity => false,
            _ => {
                alerted.insert(incident.id.clone(), incident.severity);
                true
            }
        }
    }

    /// True the first time an action's report is seen (a record is observed again when, say,
    /// its rollback is sent).
    fn first_report(&self, action_id: &str) -> bool {
        let mut reported = self
            .reported_actions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if reported.len() >= ALERT_MEMORY {
            reported.clear();
        }
        reported.insert(action_id.to_owned())
    }

    fn send(&self, alert: &Alert) {
        match self.sender.enqueue(alert) {
            Ok(_) => {}
            // Counted by the sender; the log names what was lost.
            Err(EnqueueError::Overflow { dropped, total, .. }) => {
                tracing::warn!(
                    dropped,
                    total,
                    kind = alert.event_type(),
                    "webhook alert dropped"
                );
            }
            Err(error) => tracing::warn!(%error, "webhook alert not queued"),
        }
    }
}

impl ResponseObserver for WebhookObserver {
    fn incident(&self, incident: &Incident) {
        if self.severity_rose(incident) {
            self.send(&Alert::Incident(Box::new(incident.clone())));
        }
    }

    fn action(&self, record: &ActionRecord) {
        let (Some(action), Some(report)) = (&record.action, &record.report) else {
            return;
        };
        if !self.first_report(&record.id) {
            return;
        }
        self.send(&Alert::ActionResult(ActionResultAlert {
            host: record.host.clone(),
            incident_id: record.incident_id.clone(),
            request: ActionRequest {
                action_id: record.id.clone(),
                action: action.clone(),
            },
            report: report.clone(),
        }));
    }
}
