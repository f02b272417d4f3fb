//! The QSC cortex: ingest, store, detect, score, decide, respond, audit.

pub mod anomaly;
pub mod api;
pub mod audit;
pub mod bus;
pub mod config;
pub mod console;
pub mod decide;
pub mod detect;
pub mod ingest;
pub mod keys;
pub mod metrics;
pub mod pipeline;
pub mod respond;
pub mod score;
pub mod store;
pub mod webhook;
