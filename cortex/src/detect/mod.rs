//! Detection: Sigma rules and Sigma correlation rules evaluated on QSC events.
//!
//! - [`fields`]: how an event maps to Sigma's log source categories and field names;
//! - [`rule`]: Sigma detection rules compiled for fast matching ([`value`] holds the value
//!   tests and modifiers, [`condition`] the condition expressions, `needles` the shared
//!   substring automata);
//! - [`correlation`]: event_count, value_count, temporal and temporal_ordered correlations
//!   over bounded sliding windows;
//! - [`engine`]: loading rule folders ([`Engine::load_dir`]) and evaluating events
//!   ([`Engine::evaluate`]).
//!
//! The rule set QSC ships lives in `cortex/rules/`.

pub mod condition;
pub mod correlation;
pub mod engine;
mod error;
pub mod fields;
mod needles;
mod report;
pub mod rule;
pub mod value;

pub use correlation::{CorrelationStats, CorrelationType, EventRef};
pub use engine::{Engine, EngineError, HitKind, RuleHit};
pub use error::RuleError;
pub use report::{LoadReport, LoadedRule, SkippedRule};
pub use rule::Level;

#[cfg(test)]
mod tests;
