//! Guardian-Beta: config, backup and certificate integrity with a signed baseline and auto-heal.
//!
//! - [`baseline`]: scanning trees (BLAKE3, optional SHA3-256, metadata, xattrs) and comparing.
//! - [`store`]: the encrypted (AES-256-GCM) and signed (Ed25519) baseline file.
//! - [`integrity`]: `baseline init|update|check` and auto-heal built from the above.
//! - [`watch`]: inotify-driven detection with overflow rescans and periodic full checks.
//! - [`backup`]: backup folders against SHA3-256 manifests.
//! - [`cert`]: certificate files and TLS endpoints (expiry, chain, hostname, CRL revocation).
//! - [`heal`]: protected known-good copies and their restoration.
//! - [`report`]: findings as qsc-events (JSON lines) or readable text.
//! - [`uplink`]: findings to the cortex over qsc-channel, numbered by its outbox.

pub mod backup;
pub mod baseline;
pub mod cert;
pub mod config;
pub mod heal;
pub mod integrity;
pub mod report;
pub mod store;
pub mod uplink;
pub mod watch;
