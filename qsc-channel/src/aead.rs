//! ChaCha20-Poly1305 (RFC 8439) for the Noise [`crate::noise::CipherState`], from OpenSSL's
//! libcrypto (built from source by the `openssl` crate's `vendored` feature and linked
//! statically, so the binaries need no system OpenSSL).
//!
//! Why OpenSSL: on this project's machines (x86_64 with AVX-512) its AVX-512 ChaCha20 and
//! Poly1305 code seals and opens about 1.4 times as many bytes per CPU second as `ring`'s AVX2
//! code (BoringSSL's), and `ring` about 1.8 times as many as the RustCrypto crate; the channel
//! benchmark measures both in the same run (`cargo xtask bench channel`). It is the same
//! algorithm, so the Noise construction and the bytes on the wire do not change (the snow
//! compatibility test checks that).
//!
//! Each key keeps one sealing and one opening context; a message only sets the nonce, so no
//! key schedule is rebuilt per frame. OpenSSL wipes a context's key material when it is freed.

use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// Largest input one OpenSSL update call takes (its length is a C `int`).
const MAX_INPUT: usize = i32::MAX as usize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AeadError {
    #[error("ChaCha20-Poly1305 authentication failed (wrong key, nonce or tampered data)")]
    Authentication,
    #[error("{len} bytes exceed what one ChaCha20-Poly1305 call takes ({MAX_INPUT})")]
    TooLong { len: usize },
    /// OpenSSL's error queue, as text (its error type is not comparable).
    #[error("OpenSSL's ChaCha20-Poly1305 failed: {0}")]
    Library(String),
}

impl From<openssl::error::ErrorStack> for AeadError {
    fn from(errors: openssl::error::ErrorStack) -> Self {
        AeadError::Library(errors.to_string())
    }
}

/// One ChaCha20-Poly1305 key, ready to seal and open.
pub struct ChaChaPoly {
    seal: CipherCtx,
    open: CipherCtx,
}

impl ChaChaPoly {
    pub fn new(key: &[u8; KEY_LEN]) -> Result<Self, AeadError> {
        let cipher = Cipher::chacha20_poly1305();
        let mut seal = CipherCtx::new()?;
        seal.encrypt_init(Some(cipher), Some(key.as_slice()), None)?;
        let mut open = CipherCtx::new()?;
        open.decrypt_init(Some(cipher), Some(key.as_slice()), None)?;
        Ok(ChaChaPoly { seal, open })
    }

    /// Encrypts `in_out` in place under `nonce`, authenticating `ad` too; returns the tag.
    pub fn seal_in_place(
        &mut self,
        nonce: &[u8; NONCE_LEN],
        ad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        check_len(in_out.len().max(ad.len()))?;
        let ctx = &mut self.seal;
        ctx.encrypt_init(None, None, Some(nonce.as_slice()))?;
        if !ad.is_empty() {
            ctx.cipher_update(ad, None)?;
        }
        let len = in_out.len();
        if len > 0 {
            ctx.cipher_update_inplace(in_out, len)?;
        }
        ctx.cipher_final(&mut [])?;
        let mut tag = [0u8; TAG_LEN];
        ctx.tag(&mut tag)?;
        Ok(tag)
    }

    /// Decrypts `in_out` (ciphertext followed by the tag) in place and returns the plaintext
    /// length. On failure the buffer holds nothing of the plaintext (it is zeroed).
    pub fn open_in_place(
        &mut self,
        nonce: &[u8; NONCE_LEN],
        ad: &[u8],
        in_out: &mut [u8],
    ) -> Result<usize, AeadError> {
        let body_len = in_out
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(AeadError::Authentication)?;
        check_len(body_len.max(ad.len()))?;
        let (body, tag) = in_out.split_at_mut(body_len);
        let ctx = &mut self.open;
        ctx.decrypt_init(None, None, Some(nonce.as_slice()))?;
        ctx.set_tag(tag)?;
        if !ad.is_empty() {
            ctx.cipher_update(ad, None)?;
        }
        if body_len > 0 {
            ctx.cipher_update_inplace(body, body_len)?;
        }
        if ctx.cipher_final(&mut []).is_err() {
            body.fill(0);
            return Err(AeadError::Authentication);
        }
        Ok(body_len)
    }
}

fn check_len(len: usize) -> Result<(), AeadError> {
    if len > MAX_INPUT {
        return Err(AeadError::TooLong { len });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8439 section 2.8.2.
    #[test]
    fn rfc_8439_test_vector() {
        let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
        let nonce = [
            0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47,
        ];
        let ad = [
            0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
        ];
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only \
one tip for the future, sunscreen would be it.";
        let mut aead = ChaChaPoly::new(&key).unwrap();
        let mut buf = plaintext.to_vec();
        let tag = aead.seal_in_place(&nonce, &ad, &mut buf).unwrap();
        assert_eq!(hex::encode(&buf[..16]), "d31a8d34648e60db7b86afbc53ef7ec2");
        assert_eq!(hex::encode(tag), "1ae10b594f09e26a7e902ecbd0600691");
        buf.extend_from_slice(&tag);
        let len = aead.open_in_place(&nonce, &ad, &mut buf).unwrap();
        assert_eq!(&buf[..len], plaintext);
    }

    #[test]
    fn tampering_fails_and_wipes_the_buffer() {
        let mut aead = ChaChaPoly::new(&[3u8; 32]).unwrap();
        let nonce = [0u8; 12];
        let mut buf = b"secret".to_vec();
        let tag = aead.seal_in_place(&nonce, b"ad", &mut buf).unwrap();
        buf.extend_from_slice(&tag);
        let mut wrong_ad = buf.clone();
        assert!(matches!(
            aead.open_in_place(&nonce, b"AD", &mut wrong_ad),
            Err(AeadError::Authentication)
        ));
        assert!(wrong_ad[..6].iter().all(|b| *b == 0));
        buf[0] ^= 1;
        assert!(matches!(
            aead.open_in_place(&nonce, b"ad", &mut buf),
            Err(AeadError::Authentication)
        ));
        assert!(matches!(
            aead.open_in_place(&nonce, b"ad", &mut [0u8; 15]),
            Err(AeadError::Authentication)
        ));
        // The contexts stay usable after a failure.
        let mut again = b"secret".to_vec();
        let tag = aead.seal_in_place(&nonce, b"ad", &mut again).unwrap();
        again.extend_from_slice(&tag);
        assert_eq!(aead.open_in_place(&nonce, b"ad", &mut again).unwrap(), 6);
        assert_eq!(&again[..6], b"secret");
    }

    #[test]
    fn empty_plaintext_gives_a_tag_only() {
        let mut aead = ChaChaPoly::new(&[9u8; 32]).unwrap();
        let mut buf: Vec<u8> = Vec::new();
        let tag = aead.seal_in_place(&[1u8; 12], &[], &mut buf).unwrap();
        let mut wire = tag.to_vec();
        assert_eq!(aead.open_in_place(&[1u8; 12], &[], &mut wire).unwrap(), 0);
    }
}
