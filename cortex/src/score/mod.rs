//! Bayesian fusion of rule hits and anomaly scores into per-entity incidents.
//!
//! See [`fusion`] for the model, [`config`] for its knobs (documented defaults in
//! `config/cortex.example.toml`), and [`classify`] for how incidents are named.

pub mod classify;
pub mod config;
pub mod fusion;
pub mod hit;
pub mod incident;

pub use config::ScoreConfig;
pub use fusion::{Assessment, Fusion, ScoreError};
pub use hit::{AnomalyScore, EntityKey, EventRef, HitEntities, Level, RuleHit, SourceKind};
pub use incident::{Evidence, Incident, IncidentStatus, Severity};
