//! The encrypted agent-to-cortex transport of QSC.
//!
//! * [`aead`]: ChaCha20-Poly1305 from OpenSSL (AVX-512), used by the Noise cipher states.
//! * [`config`]: the TOML settings (`config/channel.example.toml`), validated at start-up.
//! * [`keys`]: static X25519 identities, 0600 key files, lifecycle, the cortex allow-list.
//! * [`noise`]: Noise IK (rev 34, `25519_ChaChaPoly_BLAKE2s`) with an ML-KEM-1024 hybrid.
//! * [`handshake`]: the version hello and the handshake exchange over a stream.
//! * [`frame`] and [`transport`]: length-prefixed encrypted frames, replay/reorder checks, rekey.
//! * [`delivery`]: envelopes, the agent's durable outbox, the reconnecting client, the cortex
//!   session with de-duplication and acks after the sink stored the events.
//! * [`uplink`]: the agent side in one type (outbox, client task, event numbering, commands)
//!   and the agents' `[cortex]` settings.

pub mod aead;
pub mod config;
pub mod delivery;
pub mod frame;
pub mod handshake;
pub mod keys;
pub mod noise;
pub mod transport;
pub mod uplink;
