//! Encrypted, framed transport over any `AsyncRead`/`AsyncWrite` halves.
//!
//! Each direction has its own [`CipherState`]. The writer rekeys (Noise `Rekey()`) after
//! `rekey_after_messages` frames or `rekey_after` time, announcing it in-band with a
//! [`FrameKind::Rekey`] frame encrypted under the old key; the reader switches keys after
//! that frame. TCP keeps frames in order, so nothing sent before or after is lost.
//!
//! A sender with nothing to say for [`TransportConfig::heartbeat_after`] sends a
//! [`FrameKind::Heartbeat`] frame (the agent's client does; see
//! [`FrameWriter::heartbeat_due_at`]); a reader that receives no frame at all for
//! [`TransportConfig::idle_timeout`] fails with [`TransportError::IdleTimeout`], so a dead
//! or silent peer closes the session instead of holding it open forever.
//!
//! Every failure closes the session: the reader returns a named [`TransportError`] and the
//! caller drops both halves.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::frame::{
    self, FrameError, FrameKind, HARD_MAX_FRAME_LEN, HEADER_LEN, LENGTH_PREFIX_LEN,
};

/// Where a message starts in a frame: after the header and the kind byte.
const PLAINTEXT_START: usize = HEADER_LEN + 1;
use crate::noise::{CipherState, NoiseError};

/// Limits and rekey policy of one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// Largest accepted frame length field; at most [`HARD_MAX_FRAME_LEN`].
    pub max_frame_len: usize,
    /// Rekey the sending direction after this many frames.
    pub rekey_after_messages: u64,
    /// Rekey the sending direction after this much time.
    pub rekey_after: Duration,
    /// A sender that runs a heartbeat (the agent) sends one after this long without a frame.
    pub heartbeat_after: Duration,
    /// A reader fails with [`TransportError::IdleTimeout`] when no frame arrived for this long;
    /// `None` waits forever. Keep it a few times `heartbeat_after`.
    pub idle_timeout: Option<Duration>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_frame_len: HARD_MAX_FRAME_LEN,
            rekey_after_messages: 1 << 20,
            rekey_after: Duration::from_secs(600),
            heartbeat_after: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(30)),
        }
    }
}

impl TransportConfig {
    /// Largest message body that fits in one frame.
    pub fn max_message_len(&self) -> usize {
        self.max_frame_len - frame::MIN_FRAME_LEN
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connection I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer closed the connection")]
    Closed,
    #[error("connection closed in the middle of a frame ({got} of {expected} bytes)")]
    Truncated { expected: usize, got: usize },
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("replayed frame: counter {counter}, expected {expected}")]
    Replayed { counter: u64, expected: u64 },
    #[error("out-of-order frame: counter {counter}, expected {expected}")]
    Reordered { counter: u64, expected: u64 },
    #[error("frame {counter} failed authentication (tampered or wrong key)")]
    Tampered { counter: u64 },
    #[error("no frame from the peer for {0:?}; the peer is gone or stuck")]
    IdleTimeout(Duration),
    #[error("message of {len} bytes exceeds the frame limit of {max}")]
    MessageTooLarge { len: usize, max: usize },
    #[error(transparent)]
    Noise(#[from] NoiseError),
}

/// Sending half: encrypts and frames messages.
pub struct FrameWriter<W> {
    io: W,
    cipher: CipherState,
    config: TransportConfig,
    buf: Vec<u8>,
    frames_since_rekey: u64,
    last_rekey: Instant,
    last_frame: Instant,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W, cipher: CipherState, config: TransportConfig) -> Self {
        let now = Instant::now();
        FrameWriter {
            io,
            cipher,
            config,
            buf: Vec::new(),
            frames_since_rekey: 0,
            last_rekey: now,
            last_frame: now,
        }
    }

    /// When a heartbeat is due if nothing else is sent before: `heartbeat_after` past the last
    /// frame written.
    pub fn heartbeat_due_at(&self) -> Instant {
        self.last_frame + self.config.heartbeat_after
    }

    /// Sends a [`FrameKind::Heartbeat`] frame (rekeying first if due, like [`Self::send`]).
    pub async fn heartbeat(&mut self) -> Result<(), TransportError> {
        self.rekey_if_due().await?;
        self.write_frame(FrameKind::Heartbeat).await
    }

    /// Encrypts `message` into one frame and writes it, rekeying first if the policy says so.
    pub async fn send(&mut self, message: &[u8]) -> Result<(), TransportError> {
        self.send_with(|buf| buf.extend_from_slice(message)).await
    }

    /// Like [`Self::send`], but `build` appends the message to the writer's own frame buffer,
    /// where it is sealed in place: a large message (an events batch) is written once by its
    /// encoder and never copied again before the socket.
    pub async fn send_with(
        &mut self,
        build: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), TransportError> {
        self.rekey_if_due().await?;
        self.start_frame(FrameKind::Data);
        build(&mut self.buf);
        let len = self.buf.len() - PLAINTEXT_START;
        let max = self.config.max_message_len();
        if len > max {
            return Err(TransportError::MessageTooLarge { len, max });
        }
        self.seal_and_write().await
    }

    async fn rekey_if_due(&mut self) -> Result<(), TransportError> {
        if self.rekey_due() {
            self.write_frame(FrameKind::Rekey).await?;
            self.cipher.rekey()?;
            self.frames_since_rekey = 0;
            self.last_rekey = Instant::now();
        }
        Ok(())
    }

    fn rekey_due(&self) -> bool {
        self.frames_since_rekey >= self.config.rekey_after_messages
            || self.last_rekey.elapsed() >= self.config.rekey_after
    }

    /// Writes a frame of `kind` with an empty body.
    async fn write_frame(&mut self, kind: FrameKind) -> Result<(), TransportError> {
        self.start_frame(kind);
        self.seal_and_write().await
    }

    /// Empties the buffer down to room for the header and the kind byte.
    fn start_frame(&mut self, kind: FrameKind) {
        self.buf.clear();
        self.buf.resize(HEADER_LEN, 0);
        self.buf.push(kind as u8);
    }

    /// Fills in the header of the frame in `buf`, seals its plaintext in place and writes it.
    async fn seal_and_write(&mut self) -> Result<(), TransportError> {
        let counter = self.cipher.nonce();
        let mut header = [0u8; HEADER_LEN];
        frame::encode_header(
            counter,
            self.buf.len() - HEADER_LEN + frame::TAG_LEN,
            &mut header,
        );
        self.buf[..HEADER_LEN].copy_from_slice(&header);
        self.cipher
            .encrypt_tail_with_ad(&header, &mut self.buf, HEADER_LEN)?;
        self.io.write_all(&self.buf).await?;
        self.frames_since_rekey += 1;
        self.last_frame = Instant::now();
        Ok(())
    }

    /// Flushes and shuts down the write direction.
    pub async fn shutdown(&mut self) -> Result<(), TransportError> {
        self.io.shutdown().await?;
        Ok(())
    }
}

/// Receiving half: reads, checks and decrypts frames.
pub struct FrameReader<R> {
    io: R,
    cipher: CipherState,
    max_frame_len: usize,
    idle_timeout: Option<Duration>,
    buf: Vec<u8>,
    /// End of the last decrypted plaintext in `buf`.
    plain_end: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R, cipher: CipherState, config: &TransportConfig) -> Self {
        FrameReader {
            io,
            cipher,
            max_frame_len: config.max_frame_len.min(HARD_MAX_FRAME_LEN),
            idle_timeout: config.idle_timeout,
            buf: Vec::new(),
            plain_end: HEADER_LEN + 1,
        }
    }

    /// Replaces the configured idle timeout; `None` waits for the peer forever.
    pub fn with_idle_timeout(mut self, idle_timeout: Option<Duration>) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Returns the next application message. Rekey and heartbeat frames are handled here.
    /// Fails with [`TransportError::IdleTimeout`] if no frame at all arrives in time.
    pub async fn recv(&mut self) -> Result<&[u8], TransportError> {
        loop {
            let kind = match self.idle_timeout {
                Some(limit) => tokio::time::timeout(limit, self.read_frame())
                    .await
                    .map_err(|_| TransportError::IdleTimeout(limit))??,
                None => self.read_frame().await?,
            };
            match kind {
                FrameKind::Data => return Ok(&self.buf[HEADER_LEN + 1..self.plain_end]),
                FrameKind::Rekey => self.cipher.rekey()?,
                FrameKind::Heartbeat => {}
            }
        }
    }

    /// Reads one frame into `buf` and decrypts it in place; returns its kind. The buffer only
    /// grows (up to the frame limit), so steady-state reads neither allocate nor zero memory.
    async fn read_frame(&mut self) -> Result<FrameKind, TransportError> {
        let mut prefix = [0u8; LENGTH_PREFIX_LEN];
        let got = read_full(&mut self.io, &mut prefix).await?;
        if got == 0 {
            return Err(TransportError::Closed);
        }
        if got < LENGTH_PREFIX_LEN {
            return Err(TransportError::Truncated {
                expected: LENGTH_PREFIX_LEN,
                got,
            });
        }
        let len = frame::check_length(prefix, self.max_frame_len)?;
        let total = LENGTH_PREFIX_LEN + len;
        if self.buf.len() < total {
            self.buf.resize(total, 0);
        }
        self.buf[..LENGTH_PREFIX_LEN].copy_from_slice(&prefix);
        let got = read_full(&mut self.io, &mut self.buf[LENGTH_PREFIX_LEN..total]).await?;
        if got < len {
            return Err(TransportError::Truncated { expected: len, got });
        }
        self.open_frame(total)
    }

    fn open_frame(&mut self, total: usize) -> Result<FrameKind, TransportError> {
        let frame = &mut self.buf[..total];
        let expected = self.cipher.nonce();
        let counter = frame::split_frame(frame).counter;
        if counter < expected {
            return Err(TransportError::Replayed { counter, expected });
        }
        if counter > expected {
            return Err(TransportError::Reordered { counter, expected });
        }
        let (header, body) = frame.split_at_mut(HEADER_LEN);
        let plain_len = self
            .cipher
            .decrypt_slice_with_ad(header, body)
            .map_err(|e| match e {
                NoiseError::DecryptFailed => TransportError::Tampered { counter },
                other => TransportError::Noise(other),
            })?;
        // MIN_FRAME_LEN guarantees at least the kind byte.
        let kind_byte = body.first().copied().unwrap_or(u8::MAX);
        self.plain_end = HEADER_LEN + plain_len;
        Ok(FrameKind::from_byte(kind_byte)?)
    }
}

/// Reads until `buf` is full or EOF; returns the number of bytes read.
async fn read_full<R: AsyncRead + Unpin>(io: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = io.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::StaticKeypair;
    use crate::noise::{HandshakeMode, InitiatorStart, ResponderStart, TransportKeys};
    use tokio::io::{AsyncWriteExt, duplex};

    fn keys() -> (TransportKeys, TransportKeys) {
        let agent = StaticKeypair::generate();
        let cortex = StaticKeypair::generate();
        let mode = HandshakeMode::Classic;
        let (waiting, m1) = InitiatorStart::new(mode, b"t", &agent, &cortex.public())
            .write_message1(b"")
            .unwrap();
        let (received, _) = ResponderStart::new(mode, b"t", &cortex)
            .read_message1(&m1)
            .unwrap();
        let (r, m2) = received.write_message2(b"").unwrap();
        let (i, _) = waiting.read_message2(&m2).unwrap();
        (i, r)
    }

    /// Encrypts `messages` with a real writer and returns the raw wire bytes plus a fresh
    /// receiving cipher for them.
    async fn wire_bytes(messages: &[&[u8]], config: TransportConfig) -> (Vec<u8>, CipherState) {
        let (i, r) = keys();
        let (client, mut server) = duplex(1 << 22);
        let mut writer = FrameWriter::new(client, i.send, config);
        for m in messages {
            writer.send(m).await.unwrap();
        }
        writer.shutdown().await.unwrap();
        drop(writer);
        let mut out = Vec::new();
        server.read_to_end(&mut out).await.unwrap();
        (out, r.recv)
    }

    fn reader_over(bytes: Vec<u8>, cipher: CipherState) -> FrameReader<std::io::Cursor<Vec<u8>>> {
        FrameReader::new(
            std::io::Cursor::new(bytes),
            cipher,
            &TransportConfig::default(),
        )
    }

    fn frame_spans(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
        let mut spans = Vec::new();
        let mut at = 0;
        while let Some((_, used)) = frame::decode(&bytes[at..], HARD_MAX_FRAME_LEN).unwrap() {
            spans.push(at..at + used);
            at += used;
        }
        spans
    }

    #[tokio::test]
    async fn round_trip_with_rekey_every_three_frames_loses_nothing() {
        let config = TransportConfig {
            rekey_after_messages: 3,
            ..TransportConfig::default()
        };
        let messages: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; i as usize * 10]).collect();
        let refs: Vec<&[u8]> = messages.iter().map(|m| m.as_slice()).collect();
        let (bytes, cipher) = wire_bytes(&refs, config).await;
        assert!(frame_spans(&bytes).len() > 20, "rekey frames were sent");
        let mut reader = reader_over(bytes, cipher);
        for m in &messages {
            assert_eq!(reader.recv().await.unwrap(), m.as_slice());
        }
        assert!(matches!(reader.recv().await, Err(TransportError::Closed)));
    }

    #[tokio::test]
    async fn tampered_frame_is_rejected() {
        let (mut bytes, cipher) = wire_bytes(&[b"hello world"], TransportConfig::default()).await;
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80;
        let mut reader = reader_over(bytes, cipher);
        assert!(matches!(
            reader.recv().await,
            Err(TransportError::Tampered { counter: 0 })
        ));
    }

    #[tokio::test]
    async fn replayed_frame_is_rejected() {
        let (bytes, cipher) = wire_bytes(&[b"one", b"two"], TransportConfig::default()).await;
        let spans = frame_spans(&bytes);
        let mut replay = bytes[spans[0].clone()].to_vec();
        replay.extend_from_slice(&bytes[spans[0].clone()]);
        let mut reader = reader_over(replay, cipher);
        assert_eq!(reader.recv().await.unwrap(), b"one");
        assert!(matches!(
            reader.recv().await,
            Err(TransportError::Replayed {
                counter: 0,
                expected: 1
            })
        ));
    }

    #[tokio::test]
    async fn reordered_frame_is_rejected() {
        let (bytes, cipher) = wire_bytes(&[b"one", b"two"], TransportConfig::default()).await;
        let spans = frame_spans(&bytes);
        let mut swapped = bytes[spans[1].clone()].to_vec();
        swapped.extend_from_slice(&bytes[spans[0].clone()]);
        let mut reader = reader_over(swapped, cipher);
        assert!(matches!(
            reader.recv().await,
            Err(TransportError::Reordered {
                counter: 1,
                expected: 0
            })
        ));
    }

    #[tokio::test]
    async fn rewritten_counter_cannot_pass_authentication() {
        let (bytes, cipher) = wire_bytes(&[b"one", b"two"], TransportConfig::default()).await;
        let spans = frame_spans(&bytes);
        // Drop frame 0 and relabel frame 1 as counter 0, the value the reader expects.
        let mut forged = bytes[spans[1].clone()].to_vec();
        forged[LENGTH_PREFIX_LEN..HEADER_LEN].copy_from_slice(&0u64.to_be_bytes());
        let mut reader = reader_over(forged, cipher);
        assert!(matches!(
            reader.recv().await,
            Err(TransportError::Tampered { counter: 0 })
        ));
    }

    #[tokio::test]
    async fn truncated_frame_is_rejected() {
        let (bytes, cipher) = wire_bytes(&[b"hello world"], TransportConfig::default()).await;
        let mut reader = reader_over(bytes[..bytes.len() - 3].to_vec(), cipher);
        assert!(matches!(
            reader.recv().await,
            Err(TransportError::Truncated { .. })
        ));
        let (bytes, cipher) = wire_bytes(&[b"x"], TransportConfig::default()).await;
        let mut reader = reader_over(bytes[..2].to_vec(), cipher);
        assert!(matches!(
            reader.recv().await,
            Err(TransportError::Truncated {
                expected: 4,
                got: 2
            })
        ));
    }

    #[tokio::test]
    async fn oversize_frame_is_rejected_before_reading_it() {
        let (_, r) = keys();
        let config = TransportConfig {
            max_frame_len: 1024,
            ..TransportConfig::default()
        };
        let (mut tx, rx) = duplex(64);
        tx.write_all(&2048u32.to_be_bytes()).await.unwrap();
        let mut reader = FrameReader::new(rx, r.recv, &config);
        assert!(matches!(
            reader.recv().await,
            Err(TransportError::Frame(FrameError::Oversize {
                len: 2048,
                max: 1024
            }))
        ));
    }

    #[tokio::test]
    async fn heartbeats_are_consumed_and_the_nonce_stays_in_step() {
        let (i, r) = keys();
        let (client, mut server) = duplex(1 << 16);
        let mut writer = FrameWriter::new(client, i.send, TransportConfig::default());
        writer.heartbeat().await.unwrap();
        writer.send(b"after").await.unwrap();
        writer.heartbeat().await.unwrap();
        writer.shutdown().await.unwrap();
        drop(writer);
        let mut bytes = Vec::new();
        server.read_to_end(&mut bytes).await.unwrap();
        assert_eq!(frame_spans(&bytes).len(), 3);
        let mut reader = reader_over(bytes, r.recv);
        assert_eq!(reader.recv().await.unwrap(), b"after");
        assert!(matches!(reader.recv().await, Err(TransportError::Closed)));
    }

    #[tokio::test]
    async fn silent_peer_hits_the_idle_timeout() {
        let (_, r) = keys();
        let limit = Duration::from_millis(100);
        let config = TransportConfig {
            idle_timeout: Some(limit),
            ..TransportConfig::default()
        };
        let (_tx, rx) = duplex(64);
        let mut reader = FrameReader::new(rx, r.recv, &config);
        let started = Instant::now();
        assert!(matches!(
            reader.recv().await,
            Err(TransportError::IdleTimeout(d)) if d == limit
        ));
        assert!(started.elapsed() >= limit);
    }

    #[tokio::test]
    async fn heartbeats_keep_an_idle_session_open() {
        let (i, r) = keys();
        let config = TransportConfig {
            heartbeat_after: Duration::from_millis(40),
            idle_timeout: Some(Duration::from_millis(200)),
            ..TransportConfig::default()
        };
        let (tx, rx) = duplex(1 << 16);
        let mut writer = FrameWriter::new(tx, i.send, config.clone());
        let mut reader = FrameReader::new(rx, r.recv, &config);
        let sender = tokio::spawn(async move {
            // Quiet for three idle timeouts, heartbeating whenever one is due.
            let quiet_until = Instant::now() + Duration::from_millis(600);
            while Instant::now() < quiet_until {
                tokio::time::sleep_until(writer.heartbeat_due_at()).await;
                writer.heartbeat().await.unwrap();
            }
            writer.send(b"still here").await.unwrap();
            writer
        });
        assert_eq!(reader.recv().await.unwrap(), b"still here");
        let writer = sender.await.unwrap();
        assert!(writer.heartbeat_due_at() > Instant::now());
    }

    #[tokio::test]
    async fn writer_refuses_messages_over_the_limit() {
        let (i, _) = keys();
        let config = TransportConfig {
            max_frame_len: 100,
            ..TransportConfig::default()
        };
        let (tx, _rx) = duplex(1024);
        let mut writer = FrameWriter::new(tx, i.send, config);
        assert!(matches!(
            writer.send(&[0u8; 200]).await,
            Err(TransportError::MessageTooLarge { len: 200, .. })
        ));
    }
}
