//! Encryption of stored event payloads.
//!
//! The data key is derived from the cortex master key with HKDF-SHA256 (fixed salt and info
//! strings below, so a new purpose gets a new key from the same master). Each payload is sealed
//! with AES-256-GCM under a fresh random 96-bit nonce; the associated data binds the record to
//! its `(host_id, seq)`, so a ciphertext moved to another row fails to open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::key_file::KEY_LEN;

/// Length of the random nonce stored beside each payload.
pub const NONCE_LEN: usize = 12;

const HKDF_SALT: &[u8] = b"qsc-cortex-store";
const HKDF_INFO_EVENTS: &[u8] = b"qsc cortex event payload aes-256-gcm v1";

#[derive(Debug, thiserror::Error)]
pub enum CipherError {
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    #[error("deriving the data key from the master key failed")]
    KeyDerivation,
    #[error("AES-256-GCM encryption failed")]
    Seal,
    #[error(
        "payload of host {host_id} seq {seq} failed authentication (wrong master key or tampered row)"
    )]
    Open { host_id: String, seq: u64 },
    #[error("stored nonce of host {host_id} seq {seq} has {found} bytes, expected {NONCE_LEN}")]
    NonceLength {
        host_id: String,
        seq: u64,
        found: usize,
    },
}

/// A sealed payload: the nonce and the ciphertext with its 16-byte tag appended.
pub struct Sealed {
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

/// Seals and opens event payloads under the data key derived from the master key.
pub struct PayloadCipher {
    aead: Aes256Gcm,
}

impl PayloadCipher {
    pub fn from_master_key(master_key: &[u8; KEY_LEN]) -> Result<Self, CipherError> {
        let mut data_key = Zeroizing::new([0u8; KEY_LEN]);
        Hkdf::<Sha256>::new(Some(HKDF_SALT), master_key)
            .expand(HKDF_INFO_EVENTS, data_key.as_mut_slice())
            .map_err(|_| CipherError::KeyDerivation)?;
        let aead = Aes256Gcm::new(&(*data_key).into());
        Ok(PayloadCipher { aead })
    }

    pub fn seal(&self, host_id: &str, seq: u64, plaintext: &[u8]) -> Result<Sealed, CipherError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| CipherError::Random(e.to_string()))?;
        let aad = associated_data(host_id, seq);
        let ciphertext = self
            .aead
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| CipherError::Seal)?;
        Ok(Sealed { nonce, ciphertext })
    }

    pub fn open(
        &self,
        host_id: &str,
        seq: u64,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, CipherError> {
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CipherError::NonceLength {
            host_id: host_id.to_owned(),
            seq,
            found: nonce.len(),
        })?;
        let aad = associated_data(host_id, seq);
        self.aead
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| CipherError::Open {
                host_id: host_id.to_owned(),
                seq,
            })
    }
}

/// `len(host_id) as u32 BE || host_id || seq as u64 BE`: unambiguous for any host id.
fn associated_data(host_id: &str, seq: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(4 + host_id.len() + 8);
    aad.extend_from_slice(&(host_id.len() as u32).to_be_bytes());
    aad.extend_from_slice(host_id.as_bytes());
    aad.extend_from_slice(&seq.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_fresh_nonces() {
        let cipher = PayloadCipher::from_master_key(&[9u8; 32]).unwrap();
        let a = cipher.seal("web-01", 5, b"{\"kind\":\"x\"}").unwrap();
        let b = cipher.seal("web-01", 5, b"{\"kind\":\"x\"}").unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert!(!a.ciphertext.windows(4).any(|w| w == b"kind"));
        let opened = cipher.open("web-01", 5, &a.nonce, &a.ciphertext).unwrap();
        assert_eq!(opened, b"{\"kind\":\"x\"}");
    }

    #[test]
    fn moved_or_modified_payloads_fail() {
        let cipher = PayloadCipher::from_master_key(&[9u8; 32]).unwrap();
        let sealed = cipher.seal("web-01", 5, b"payload").unwrap();
        assert!(matches!(
            cipher.open("web-01", 6, &sealed.nonce, &sealed.ciphertext),
            Err(CipherError::Open { seq: 6, .. })
        ));
        assert!(
            cipher
                .open("web-02", 5, &sealed.nonce, &sealed.ciphertext)
                .is_err()
        );
        let mut flipped = sealed.ciphertext.clone();
        flipped[0] ^= 1;
        assert!(cipher.open("web-01", 5, &sealed.nonce, &flipped).is_err());
        let other_key = PayloadCipher::from_master_key(&[8u8; 32]).unwrap();
        assert!(
            other_key
                .open("web-01", 5, &sealed.nonce, &sealed.ciphertext)
                .is_err()
        );
        assert!(matches!(
            cipher.open("web-01", 5, &sealed.nonce[..4], &sealed.ciphertext),
            Err(CipherError::NonceLength { found: 4, .. })
        ));
    }
}
