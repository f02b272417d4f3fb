//! The handshake on the wire: version hello, two Noise messages, allow-list check.
//!
//! ```text
//! agent -> cortex: u16 BE len | "QSC/" | version u8 | mode u8 | Noise message 1
//! cortex -> agent: u16 BE len | Noise message 2
//! ```
//!
//! The six hello bytes are also the Noise prologue, so a peer that rewrites the version or the
//! mode breaks the handshake. The cortex checks them first to give a named error, then reads
//! message 1, then authorizes the agent's static key before it sends message 2. A refused agent
//! sees the connection close without message 2.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::keys::{AuthError, PublicKeyBytes, StaticKeypair};
use crate::noise::{HandshakeMode, InitiatorStart, NoiseError, ResponderStart, TransportKeys};

pub const MAGIC: &[u8; 4] = b"QSC/";
pub const PROTOCOL_VERSION: u8 = 1;
pub const HELLO_LEN: usize = 6;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer closed the connection during the handshake (refused or incompatible)")]
    Closed,
    #[error("not a QSC handshake (bad magic bytes)")]
    BadMagic,
    #[error("peer speaks QSC protocol version {got}; this build speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion { got: u8 },
    #[error("unknown handshake mode byte {0}")]
    UnknownMode(u8),
    #[error("peer offered the classical handshake but this side requires the ML-KEM hybrid")]
    HybridRequired,
    #[error("handshake message is too short ({got} bytes)")]
    TooShort { got: usize },
    #[error("handshake cryptography failed: {0}")]
    Noise(#[from] NoiseError),
    #[error("agent refused: {0}")]
    Unauthorized(#[from] AuthError),
}

/// The cleartext first bytes of message 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u8,
    pub mode: HandshakeMode,
}

impl Hello {
    pub fn encode(self) -> [u8; HELLO_LEN] {
        let mode = match self.mode {
            HandshakeMode::Classic => 0,
            HandshakeMode::Hybrid => 1,
        };
        [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], self.version, mode]
    }
}

/// Parses the hello in front of message 1; returns it and the Noise message that follows.
pub fn parse_hello(msg: &[u8]) -> Result<(Hello, &[u8]), HandshakeError> {
    let Some((hello, rest)) = msg.split_first_chunk::<HELLO_LEN>() else {
        return Err(HandshakeError::TooShort { got: msg.len() });
    };
    if &hello[..4] != MAGIC {
        return Err(HandshakeError::BadMagic);
    }
    if hello[4] != PROTOCOL_VERSION {
        return Err(HandshakeError::UnsupportedVersion { got: hello[4] });
    }
    let mode = match hello[5] {
        0 => HandshakeMode::Classic,
        1 => HandshakeMode::Hybrid,
        other => return Err(HandshakeError::UnknownMode(other)),
    };
    Ok((
        Hello {
            version: hello[4],
            mode,
        },
        rest,
    ))
}

async fn write_message<S: AsyncWrite + Unpin>(
    io: &mut S,
    parts: &[&[u8]],
) -> Result<(), HandshakeError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u16::try_from(len).map_err(|_| NoiseError::MessageTooLong(len))?;
    let mut buf = Vec::with_capacity(2 + len as usize);
    buf.extend_from_slice(&len.to_be_bytes());
    for part in parts {
        buf.extend_from_slice(part);
    }
    io.write_all(&buf).await?;
    io.flush().await?;
    Ok(())
}

async fn read_message<S: AsyncRead + Unpin>(io: &mut S) -> Result<Vec<u8>, HandshakeError> {
    let mut prefix = [0u8; 2];
    io.read_exact(&mut prefix).await.map_err(eof_is_closed)?;
    let mut msg = vec![0u8; u16::from_be_bytes(prefix) as usize];
    io.read_exact(&mut msg).await.map_err(eof_is_closed)?;
    Ok(msg)
}

fn eof_is_closed(err: std::io::Error) -> HandshakeError {
    if err.kind() == std::io::ErrorKind::UnexpectedEof {
        HandshakeError::Closed
    } else {
        HandshakeError::Io(err)
    }
}

/// Agent side: runs the handshake against a pinned cortex key.
/// Returns the transport keys and the cortex's payload from message 2.
pub async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    mode: HandshakeMode,
    local: &StaticKeypair,
    cortex_key: &PublicKeyBytes,
    payload: &[u8],
) -> Result<(TransportKeys, Vec<u8>), HandshakeError> {
    let hello = Hello {
        version: PROTOCOL_VERSION,
        mode,
    }
    .encode();
    let (waiting, m1) =
        InitiatorStart::new(mode, &hello, local, cortex_key).write_message1(payload)?;
    write_message(io, &[&hello, &m1]).await?;
    let m2 = read_message(io).await?;
    Ok(waiting.read_message2(&m2)?)
}

/// What the cortex learns from a successful handshake.
pub struct Accepted<T> {
    pub keys: TransportKeys,
    pub mode: HandshakeMode,
    /// Whatever `authorize` returned for the agent's static key.
    pub peer: T,
    pub payload: Vec<u8>,
}

/// Cortex side: reads message 1, calls `authorize` with the agent's static key, and replies
/// with `reply(&peer)` as the message 2 payload only if it succeeded.
pub async fn respond<S, T, A, P>(
    io: &mut S,
    local: &StaticKeypair,
    require_hybrid: bool,
    authorize: A,
    reply: P,
) -> Result<Accepted<T>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    A: FnOnce(&PublicKeyBytes) -> Result<T, AuthError>,
    P: FnOnce(&T) -> Vec<u8>,
{
    let m1 = read_message(io).await?;
    let (hello, noise_m1) = parse_hello(&m1)?;
    if require_hybrid && hello.mode == HandshakeMode::Classic {
        return Err(HandshakeError::HybridRequired);
    }
    let prologue = hello.encode();
    let (received, payload) =
        ResponderStart::new(hello.mode, &prologue, local).read_message1(noise_m1)?;
    let peer = authorize(received.remote_static())?;
    let (keys, m2) = received.write_message2(&reply(&peer))?;
    write_message(io, &[&m2]).await?;
    Ok(Accepted {
        keys,
        mode: hello.mode,
        peer,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{AgentEntry, AllowList};
    use tokio::io::duplex;

    fn allow(agent: &StaticKeypair, revoked: bool) -> AllowList {
        AllowList::new(vec![AgentEntry {
            host_id: "web-01".into(),
            class: "prod".into(),
            public_key: agent.public(),
            revoked,
        }])
    }

    async fn attempt(
        agent: &StaticKeypair,
        pinned: &PublicKeyBytes,
        cortex: &StaticKeypair,
        list: &AllowList,
        mode: HandshakeMode,
        require_hybrid: bool,
    ) -> (
        Result<(TransportKeys, Vec<u8>), HandshakeError>,
        Result<Accepted<AgentEntry>, HandshakeError>,
    ) {
        let (mut a, mut c) = duplex(1 << 16);
        let agent_side = initiate(&mut a, mode, agent, pinned, b"hi");
        let cortex_side = async {
            let result = respond(
                &mut c,
                cortex,
                require_hybrid,
                |key| list.authorize(key).cloned(),
                |_| b"resume".to_vec(),
            )
            .await;
            drop(c);
            result
        };
        tokio::join!(agent_side, cortex_side)
    }

    #[tokio::test]
    async fn enrolled_agent_is_accepted_in_both_modes() {
        let (agent, cortex) = (StaticKeypair::generate(), StaticKeypair::generate());
        for mode in [HandshakeMode::Hybrid, HandshakeMode::Classic] {
            let (a, c) = attempt(
                &agent,
                &cortex.public(),
                &cortex,
                &allow(&agent, false),
                mode,
                false,
            )
            .await;
            let (keys, payload) = a.unwrap();
            let accepted = c.unwrap();
            assert_eq!(payload, b"resume");
            assert_eq!(accepted.payload, b"hi");
            assert_eq!(accepted.peer.host_id, "web-01");
            assert_eq!(accepted.mode, mode);
            assert_eq!(keys.handshake_hash, accepted.keys.handshake_hash);
        }
    }

    #[tokio::test]
    async fn unknown_agent_is_refused() {
        let (agent, cortex) = (StaticKeypair::generate(), StaticKeypair::generate());
        let stranger = StaticKeypair::generate();
        let (a, c) = attempt(
            &stranger,
            &cortex.public(),
            &cortex,
            &allow(&agent, false),
            HandshakeMode::Hybrid,
            true,
        )
        .await;
        assert!(matches!(
            c,
            Err(HandshakeError::Unauthorized(AuthError::UnknownKey { .. }))
        ));
        assert!(matches!(a, Err(HandshakeError::Closed)));
    }

    #[tokio::test]
    async fn revoked_agent_is_refused() {
        let (agent, cortex) = (StaticKeypair::generate(), StaticKeypair::generate());
        let (a, c) = attempt(
            &agent,
            &cortex.public(),
            &cortex,
            &allow(&agent, true),
            HandshakeMode::Hybrid,
            true,
        )
        .await;
        assert!(matches!(
            c,
            Err(HandshakeError::Unauthorized(AuthError::Revoked { .. }))
        ));
        assert!(matches!(a, Err(HandshakeError::Closed)));
    }

    #[tokio::test]
    async fn agent_pinning_the_wrong_cortex_key_fails() {
        let (agent, cortex) = (StaticKeypair::generate(), StaticKeypair::generate());
        let other = StaticKeypair::generate();
        let (a, c) = attempt(
            &agent,
            &other.public(),
            &cortex,
            &allow(&agent, false),
            HandshakeMode::Hybrid,
            true,
        )
        .await;
        assert!(matches!(
            c,
            Err(HandshakeError::Noise(NoiseError::DecryptFailed))
        ));
        assert!(matches!(a, Err(HandshakeError::Closed)));
    }

    #[tokio::test]
    async fn classic_refused_when_hybrid_required() {
        let (agent, cortex) = (StaticKeypair::generate(), StaticKeypair::generate());
        let (_, c) = attempt(
            &agent,
            &cortex.public(),
            &cortex,
            &allow(&agent, false),
            HandshakeMode::Classic,
            true,
        )
        .await;
        assert!(matches!(c, Err(HandshakeError::HybridRequired)));
    }

    #[test]
    fn hello_parsing_names_each_problem() {
        let good = Hello {
            version: 1,
            mode: HandshakeMode::Hybrid,
        }
        .encode();
        assert_eq!(parse_hello(&good).unwrap().0.mode, HandshakeMode::Hybrid);
        assert!(matches!(
            parse_hello(b"QSC"),
            Err(HandshakeError::TooShort { got: 3 })
        ));
        assert!(matches!(
            parse_hello(b"HTTP/1"),
            Err(HandshakeError::BadMagic)
        ));
        assert!(matches!(
            parse_hello(b"QSC/\x02\x01"),
            Err(HandshakeError::UnsupportedVersion { got: 2 })
        ));
        assert!(matches!(
            parse_hello(b"QSC/\x01\x07"),
            Err(HandshakeError::UnknownMode(7))
        ));
    }
}
