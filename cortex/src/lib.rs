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

/// Events cross threads (ingest decodes them, the pipeline worker and the store writer drop
/// them), a pattern on which glibc's malloc spent ~15 % of the pipeline's CPU; with mimalloc
/// `cargo xtask bench cortex` runs about a fifth faster. Set in the library so that the
/// binary, its tests and its benches all run on the same allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
