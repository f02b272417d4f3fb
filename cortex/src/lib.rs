//! The QSC cortex: ingest, store, detect, score, decide, respond, audit.

pub mod audit;
pub mod decide;
pub mod detect;
pub mod score;
pub mod store;
