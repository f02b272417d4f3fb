//! Guardian-Alpha: the eBPF host agent.
//!
//! `sensor` loads and attaches the kernel program; `record` decodes what it writes to the ring
//! buffer; `enrich` turns records into qsc events with the `proctable`'s process context;
//! `agent` runs the loop that also reports losses, samples `metrics`, follows the `authlog`
//! and does `forensics` on memory maps; `volume` sums the bytes of each connection (closes
//! from the kernel, open ones polled with `sockdiag`) per process and remote address;
//! `respond` executes the response actions the cortex sends.

pub mod agent;
pub mod authlog;
pub mod btf;
pub mod config;
pub mod enrich;
pub mod forensics;
pub mod layout;
pub mod metrics;
pub mod output;
pub mod proctable;
pub mod record;
pub mod respond;
pub mod sensor;
pub mod sockdiag;
pub mod users;
pub mod volume;
