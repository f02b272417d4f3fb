//! Transport frame layout and its pure (I/O-free) decoder.
//!
//! ```text
//! u32 BE  length   = number of bytes that follow (counter + ciphertext)
//! u64 BE  counter  = the sender's Noise nonce for this frame, in clear
//! [..]    ciphertext = ChaCha20-Poly1305(kind u8 || body), AD = length || counter, 16-byte tag
//! ```
//!
//! The counter is sent in clear so a receiver can tell a replayed frame (counter below the
//! expected nonce) from a reordered or skipped one (above) before spending an AEAD check, and
//! name the error. The nonce used is still the receiver's own counter, so a forged counter
//! only changes which error is reported.

/// The hard ceiling on a frame's length field; configuration may only lower it.
pub const HARD_MAX_FRAME_LEN: usize = 1 << 20;
pub const LENGTH_PREFIX_LEN: usize = 4;
pub const COUNTER_LEN: usize = 8;
pub const HEADER_LEN: usize = LENGTH_PREFIX_LEN + COUNTER_LEN;
pub const TAG_LEN: usize = crate::noise::TAGLEN;
/// counter + kind byte + tag.
pub const MIN_FRAME_LEN: usize = COUNTER_LEN + 1 + TAG_LEN;

/// What a decrypted frame carries (the first plaintext byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// An application message.
    Data = 0,
    /// The sender switched its key with Noise `Rekey()` right after this frame.
    Rekey = 1,
    /// Nothing to say: sent after a quiet period so the receiver knows the peer is alive.
    Heartbeat = 2,
}

impl FrameKind {
    pub fn from_byte(byte: u8) -> Result<Self, FrameError> {
        match byte {
            0 => Ok(FrameKind::Data),
            1 => Ok(FrameKind::Rekey),
            2 => Ok(FrameKind::Heartbeat),
            other => Err(FrameError::UnknownKind(other)),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    Oversize { len: usize, max: usize },
    #[error("frame length {len} is below the minimum of {MIN_FRAME_LEN} bytes")]
    Undersize { len: usize },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
}

/// A parsed but still encrypted frame.
#[derive(Debug, PartialEq, Eq)]
pub struct RawFrame<'a> {
    /// The 12 header bytes, authenticated as associated data.
    pub header: &'a [u8],
    pub counter: u64,
    pub ciphertext: &'a [u8],
}

/// Validates a length prefix against `max` and the minimum frame size.
pub fn check_length(prefix: [u8; LENGTH_PREFIX_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::Oversize { len, max });
    }
    if len < MIN_FRAME_LEN {
        return Err(FrameError::Undersize { len });
    }
    Ok(len)
}

/// Decodes one frame from the front of `buf`. `Ok(None)` means more bytes are needed;
/// on success also returns the number of bytes consumed.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(RawFrame<'_>, usize)>, FrameError> {
    let Some(prefix) = buf.first_chunk::<LENGTH_PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = check_length(*prefix, max)?;
    let total = LENGTH_PREFIX_LEN + len;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((split_frame(&buf[..total]), total)))
}

/// Splits a complete frame (prefix included, length already checked) into its parts.
pub fn split_frame(frame: &[u8]) -> RawFrame<'_> {
    let (header, ciphertext) = frame.split_at(HEADER_LEN);
    let mut counter = [0u8; COUNTER_LEN];
    counter.copy_from_slice(&header[LENGTH_PREFIX_LEN..]);
    RawFrame {
        header,
        counter: u64::from_be_bytes(counter),
        ciphertext,
    }
}

/// The header of a frame whose ciphertext (tag included) is `ciphertext_len` bytes.
pub fn encode_header(counter: u64, ciphertext_len: usize, out: &mut [u8; HEADER_LEN]) {
    let len = (COUNTER_LEN + ciphertext_len) as u32;
    out[..LENGTH_PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
    out[LENGTH_PREFIX_LEN..].copy_from_slice(&counter.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_needs_whole_frame() {
        let mut header = [0u8; HEADER_LEN];
        encode_header(7, 20, &mut header);
        let mut buf = header.to_vec();
        buf.extend_from_slice(&[0xaa; 20]);
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut], 1024), Ok(None));
        }
        let (frame, used) = decode(&buf, 1024).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(frame.counter, 7);
        assert_eq!(frame.ciphertext, &[0xaa; 20]);
        assert_eq!(frame.header, &buf[..HEADER_LEN]);
    }

    #[test]
    fn decode_rejects_oversize_and_undersize() {
        let big = (HARD_MAX_FRAME_LEN as u32 + 1).to_be_bytes();
        assert_eq!(
            decode(&big, HARD_MAX_FRAME_LEN),
            Err(FrameError::Oversize {
                len: HARD_MAX_FRAME_LEN + 1,
                max: HARD_MAX_FRAME_LEN
            })
        );
        assert_eq!(
            decode(&3u32.to_be_bytes(), 1024),
            Err(FrameError::Undersize { len: 3 })
        );
    }

    #[test]
    fn frame_kind_bytes() {
        assert_eq!(FrameKind::from_byte(0), Ok(FrameKind::Data));
        assert_eq!(FrameKind::from_byte(1), Ok(FrameKind::Rekey));
        assert_eq!(FrameKind::from_byte(2), Ok(FrameKind::Heartbeat));
        assert_eq!(FrameKind::from_byte(9), Err(FrameError::UnknownKind(9)));
    }
}
