//! The encrypted agent-to-cortex transport: Noise IK + ML-KEM hybrid handshake, framed ChaCha20-Poly1305 transport, keys and the durable outbox.
