//! SOAR webhooks: signed alerts out, signed approvals in.
//!
//! - [`config`]: the `[webhook]` section (example: `webhook.example.toml`) and its validation.
//! - [`payload`]: what an [`Alert`] says, rendered as native QSC JSON or a TheHive alert.
//! - [`sign`]: Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature: v1,<base64 HMAC-SHA256>`), secrets written `whsec_<base64>`.
//! - [`worker`]: [`WebhookSender`], the non-blocking enqueue and the delivery thread (retries
//!   with full-jitter backoff, `Retry-After`, max attempts and age, counters).
//! - [`queue`]: the persisted pending and dead-letter queue (SQLite).
//! - [`guard`]: only configured origins, at checked addresses, are ever contacted.
//! - [`inbound`]: verifies a signed approval request and returns an [`ApprovalDecision`].
//! - [`observer`]: [`WebhookObserver`], the respond stage's hook that turns incidents and action
//!   results into alerts.

pub mod backoff;
pub mod config;
pub mod guard;
pub mod inbound;
pub mod observer;
pub mod payload;
pub mod queue;
pub mod sign;
pub mod worker;

#[cfg(test)]
mod tests;

pub use config::{BodyFormat, ConfigError, DestinationConfig, ValidConfig, WebhookConfig};
pub use guard::{DestinationGuard, GuardError};
pub use inbound::{ApprovalDecision, InboundError, InboundRequest, InboundVerifier};
pub use observer::WebhookObserver;
pub use payload::{ActionResultAlert, Alert};
pub use queue::{DeadLetter, Delivery, DeliveryQueue, QueueError};
pub use sign::{SecretError, WebhookSecret};
pub use worker::{CountersSnapshot, EnqueueError, StartError, WebhookCounters, WebhookSender};
