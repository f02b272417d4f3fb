//! Encryption of stored event payloads.
//!
//! The data key is derived from the cortex master key with HKDF-SHA256 (fixed salt and info
//! strings below, so a new purpose gets a new key from the same master). Each payload is sealed
//! with AES-256-GCM under a fresh random 96-bit nonce; the associated data binds the record to
//! its row key `(host_id, agent, seq)`, so a ciphertext moved to another row fails to open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use qsc_event::Source;
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

/// Which row a payload belongs to: the host, the agent whose delivery sequence `seq` is in,
/// and the seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowKey<'a> {
    pub host_id: &'a str,
    pub agent: Source,
    pub seq: u64,
}

/// A sealed payload: the nonce and the ciphertext with its 16-byte tag appended.
pub struct Sealed {
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

/// `count` fresh random nonces from one call to the operating system's generator (one call per
/// batch instead of one per event).
pub fn random_nonces(count: usize) -> Result<Vec<[u8; NONCE_LEN]>, CipherError> {
    let mut bytes = vec![0u8; count * NONCE_LEN];
    getrandom::fill(&mut bytes).map_err(|e| CipherError::Random(e.to_string()))?;
    Ok(bytes
        .chunks_exact(NONCE_LEN)
        .map(|chunk| {
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(chunk);
            nonce
        })
        .collect())
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

    /// Seals `plaintext` for `row` under `nonce`, which must come from [`random_nonces`] and
    /// never be used twice.
    pub fn seal(
        &self,
        row: &RowKey<'_>,
        nonce: [u8; NONCE_LEN],
        plaintext: &[u8],
    ) -> Result<Sealed, CipherError> {
        let aad = associated_data(row);
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
        row: &RowKey<'_>,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, CipherError> {
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CipherError::NonceLength {
            host_id: row.host_id.to_owned(),
            seq: row.seq,
            found: nonce.len(),
        })?;
        let aad = associated_data(row);
        self.aead
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| CipherError::Open {
                host_id: row.host_id.to_owned(),
                seq: row.seq,
            })
    }
}

/// `len(host_id) as u32 BE || host_id || agent byte || seq as u64 BE`: unambiguous for any
/// host id.
fn associated_data(row: &RowKey<'_>) -> Vec<u8> {
    let agent: u8 = match row.agent {
        Source::Alpha => 1,
        Source::Beta => 2,
        Source::Cortex => 3,
    };
    let mut aad = Vec::with_capacity(4 + row.host_id.len() + 1 + 8);
    aad.extend_from_slice(&(row.host_id.len() as u32).to_be_bytes());
    aad.extend_from_slice(row.host_id.as_bytes());
    aad.push(agent);
    aad.extend_from_slice(&row.seq.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(host_id: &str, agent: Source, seq: u64) -> RowKey<'_> {
        RowKey {
            host_id,
            agent,
            seq,
        }
    }

    fn nonce() -> [u8; NONCE_LEN] {
        random_nonces(1).unwrap()[0]
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let cipher = PayloadCipher::from_master_key(&[9u8; 32]).unwrap();
        let nonces = random_nonces(64).unwrap();
        let distinct: std::collections::HashSet<_> = nonces.iter().collect();
        assert_eq!(distinct.len(), 64);
        let key = row("web-01", Source::Alpha, 5);
        let a = cipher.seal(&key, nonces[0], b"{\"kind\":\"x\"}").unwrap();
        let b = cipher.seal(&key, nonces[1], b"{\"kind\":\"x\"}").unwrap();
        assert_ne!(a.ciphertext, b.ciphertext);
        assert!(!a.ciphertext.windows(4).any(|w| w == b"kind"));
        let opened = cipher.open(&key, &a.nonce, &a.ciphertext).unwrap();
        assert_eq!(opened, b"{\"kind\":\"x\"}");
    }

    #[test]
    fn moved_or_modified_payloads_fail() {
        let cipher = PayloadCipher::from_master_key(&[9u8; 32]).unwrap();
        let key = row("web-01", Source::Alpha, 5);
        let sealed = cipher.seal(&key, nonce(), b"payload").unwrap();
        let open = |row: RowKey<'_>| cipher.open(&row, &sealed.nonce, &sealed.ciphertext);
        assert!(matches!(
            open(row("web-01", Source::Alpha, 6)),
            Err(CipherError::Open { seq: 6, .. })
        ));
        assert!(open(row("web-02", Source::Alpha, 5)).is_err());
        assert!(open(row("web-01", Source::Beta, 5)).is_err());
        let mut flipped = sealed.ciphertext.clone();
        flipped[0] ^= 1;
        assert!(cipher.open(&key, &sealed.nonce, &flipped).is_err());
        let other_key = PayloadCipher::from_master_key(&[8u8; 32]).unwrap();
        assert!(
            other_key
                .open(&key, &sealed.nonce, &sealed.ciphertext)
                .is_err()
        );
        assert!(matches!(
            cipher.open(&key, &sealed.nonce[..4], &sealed.ciphertext),
            Err(CipherError::NonceLength { found: 4, .. })
        ));
    }
}
