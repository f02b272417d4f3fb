//! Noise IK (spec revision 34), written for QSC, with an optional ML-KEM-1024 hybrid.
//!
//! Suite: `25519` / `ChaChaPoly` / `BLAKE2s` (HASHLEN 32, HMAC-BLAKE2s for HKDF). The agent is
//! the initiator and pins the cortex static key (`<- s` pre-message); the cortex is the
//! responder and learns the agent's static key from message 1, then checks its allow-list.
//!
//! Classical pattern, protocol name `Noise_IK_25519_ChaChaPoly_BLAKE2s`:
//!
//! ```text
//! <- s
//! ...
//! -> e, es, s, ss
//! <- e, ee, se
//! ```
//!
//! Hybrid pattern (default), protocol name `Noise_IKhfs_25519+MLKEM1024_ChaChaPoly_BLAKE2s`,
//! token placement as in the Noise HFS extension (`IKhfs`):
//!
//! ```text
//! <- s
//! ...
//! -> e, es, e1, s, ss
//! <- e, ee, ekem1, se
//! ```
//!
//! * `e1` (initiator): generate an ML-KEM-1024 key pair, `EncryptAndHash(ek)` (1568 bytes; it
//!   is encrypted because `es` already set a key), keep `dk`.
//! * `ekem1` (responder): `(ct, ss) = Encaps(ek)`, `EncryptAndHash(ct)`, then `MixKey(ss)`;
//!   the initiator does `ct = DecryptAndHash(..)`, `ss = Decaps(dk, ct)`, `MixKey(ss)`.
//!
//! So the 32-byte ML-KEM shared secret is an extra HKDF input to the chaining key, after `ee`
//! and before `se`; the transport keys depend on it, hence on both X25519 and ML-KEM.
//! A mismatch in mode or in the prologue (which binds the QSC protocol version, see
//! [`crate::handshake`]) makes the first `DecryptAndHash` fail.

use blake2::{Blake2s256, Digest};
use ml_kem::kem::{Decapsulate, Encapsulate};
use ml_kem::{EncodedSizeUser, KemCore, MlKem1024};
use rand_core::OsRng;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use crate::aead::{AeadError, ChaChaPoly};
use crate::keys::{PublicKeyBytes, StaticKeypair};

pub const PROTOCOL_CLASSIC: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
pub const PROTOCOL_HYBRID: &str = "Noise_IKhfs_25519+MLKEM1024_ChaChaPoly_BLAKE2s";

const HASHLEN: usize = 32;
const DHLEN: usize = 32;
pub const TAGLEN: usize = 16;
pub const MLKEM_EK_LEN: usize = 1568;
pub const MLKEM_CT_LEN: usize = 1568;
/// Noise's limit on any message.
pub const MAX_NOISE_MESSAGE: usize = 65535;

/// Handshake flavour; both sides must use the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeMode {
    Classic,
    Hybrid,
}

impl HandshakeMode {
    pub fn protocol_name(self) -> &'static str {
        match self {
            HandshakeMode::Classic => PROTOCOL_CLASSIC,
            HandshakeMode::Hybrid => PROTOCOL_HYBRID,
        }
    }

    /// Exact length of message 1 carrying `payload_len` bytes of payload.
    pub fn message1_len(self, payload_len: usize) -> usize {
        let kem = match self {
            HandshakeMode::Classic => 0,
            HandshakeMode::Hybrid => MLKEM_EK_LEN + TAGLEN,
        };
        DHLEN + kem + DHLEN + TAGLEN + payload_len + TAGLEN
    }

    fn message2_fixed_len(self) -> usize {
        let kem = match self {
            HandshakeMode::Classic => 0,
            HandshakeMode::Hybrid => MLKEM_CT_LEN + TAGLEN,
        };
        DHLEN + kem + TAGLEN
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoiseError {
    #[error("handshake message is {got} bytes, shorter than the {need} bytes required")]
    MessageTooShort { need: usize, got: usize },
    #[error("handshake message of {0} bytes exceeds the Noise limit of 65535")]
    MessageTooLong(usize),
    #[error("decryption failed: wrong keys, protocol mismatch, or tampered data")]
    DecryptFailed,
    #[error("a Diffie-Hellman result was all zeros (low-order public key)")]
    WeakPublicKey,
    #[error("ML-KEM operation failed")]
    Kem,
    #[error("nonce space exhausted; the session must be re-established")]
    NonceExhausted,
    #[error(transparent)]
    Aead(AeadError),
}

/// Noise CipherState: a ChaCha20-Poly1305 key and a 64-bit counter nonce.
pub struct CipherState {
    key: Option<Zeroizing<[u8; 32]>>,
    /// `key` loaded into OpenSSL, made on first use after each new key.
    aead: Option<ChaChaPoly>,
    n: u64,
}

impl std::fmt::Debug for CipherState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CipherState")
            .field("has_key", &self.key.is_some())
            .field("n", &self.n)
            .finish()
    }
}

/// Noise's ChaChaPoly nonce: 32 zero bits, then `n` little-endian.
fn chacha_nonce(n: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&n.to_le_bytes());
    nonce
}

impl CipherState {
    fn empty() -> Self {
        CipherState {
            key: None,
            aead: None,
            n: 0,
        }
    }

    fn with_key(key: [u8; 32]) -> Self {
        let mut cs = Self::empty();
        cs.initialize_key(key);
        cs
    }

    fn initialize_key(&mut self, key: [u8; 32]) {
        self.aead = None;
        self.key = Some(Zeroizing::new(key));
        self.n = 0;
    }

    /// The key schedule if a key is set; `Ok(None)` means "no key yet" (plaintext per spec).
    fn aead(&mut self) -> Result<Option<&mut ChaChaPoly>, NoiseError> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        if self.aead.is_none() {
            self.aead = Some(ChaChaPoly::new(key).map_err(NoiseError::Aead)?);
        }
        Ok(self.aead.as_mut())
    }

    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// The nonce the next encryption or decryption will use.
    pub fn nonce(&self) -> u64 {
        self.n
    }

    fn next_nonce(&mut self) -> Result<u64, NoiseError> {
        // 2^64-1 is reserved by the spec for Rekey.
        if self.n == u64::MAX {
            return Err(NoiseError::NonceExhausted);
        }
        let n = self.n;
        self.n += 1;
        Ok(n)
    }

    /// Encrypts `buf` in place and appends the tag; without a key, leaves it as plaintext.
    pub fn encrypt_with_ad(&mut self, ad: &[u8], buf: &mut Vec<u8>) -> Result<(), NoiseError> {
        self.encrypt_tail_with_ad(ad, buf, 0)
    }

    /// Like [`Self::encrypt_with_ad`] for the bytes of `buf` from `start` on, so a caller can
    /// keep a cleartext header in front without copying.
    pub fn encrypt_tail_with_ad(
        &mut self,
        ad: &[u8],
        buf: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), NoiseError> {
        if self.key.is_none() {
            return Ok(());
        }
        let nonce = chacha_nonce(self.next_nonce()?);
        let aead = self.aead()?.ok_or(NoiseError::DecryptFailed)?;
        let tag = aead
            .seal_in_place(&nonce, ad, &mut buf[start..])
            .map_err(NoiseError::Aead)?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Decrypts `buf` (ciphertext || tag) in place, truncating the tag; without a key, a no-op.
    /// The nonce advances only on success, as the spec requires.
    pub fn decrypt_with_ad(&mut self, ad: &[u8], buf: &mut Vec<u8>) -> Result<(), NoiseError> {
        let len = self.decrypt_slice_with_ad(ad, buf.as_mut_slice())?;
        buf.truncate(len);
        Ok(())
    }

    /// Decrypts `buf` (ciphertext || tag) in place and returns the plaintext length.
    pub fn decrypt_slice_with_ad(
        &mut self,
        ad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, NoiseError> {
        let n = self.n;
        let Some(aead) = self.aead()? else {
            return Ok(buf.len());
        };
        if n == u64::MAX {
            return Err(NoiseError::NonceExhausted);
        }
        let body_len =
            aead.open_in_place(&chacha_nonce(n), ad, buf)
                .map_err(|error| match error {
                    AeadError::Authentication => NoiseError::DecryptFailed,
                    other => NoiseError::Aead(other),
                })?;
        self.n += 1;
        Ok(body_len)
    }

    /// Noise `Rekey()`: k = ENCRYPT(k, 2^64-1, "", zeros)[..32]. The nonce is not reset.
    pub fn rekey(&mut self) -> Result<(), NoiseError> {
        let aead = self.aead()?.ok_or(NoiseError::DecryptFailed)?;
        let mut block = Zeroizing::new([0u8; 32]);
        // Encrypting 32 zero bytes; the tag is discarded per the spec.
        aead.seal_in_place(&chacha_nonce(u64::MAX), &[], block.as_mut_slice())
            .map_err(NoiseError::Aead)?;
        let n = self.n;
        self.initialize_key(*block);
        self.n = n;
        Ok(())
    }
}

const BLAKE2S_BLOCKLEN: usize = 64;

/// HMAC-BLAKE2s (RFC 2104). Noise only ever passes 32-byte keys, shorter than a block.
fn hmac(key: &[u8], parts: &[&[u8]]) -> Zeroizing<[u8; HASHLEN]> {
    let mut block_key = Zeroizing::new([0u8; BLAKE2S_BLOCKLEN]);
    if key.len() > BLAKE2S_BLOCKLEN {
        block_key[..HASHLEN].copy_from_slice(&Blake2s256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let mut inner = Blake2s256::new();
    inner.update(block_key.map(|b| b ^ 0x36));
    for part in parts {
        inner.update(part);
    }
    let inner_hash = inner.finalize();
    let mut outer = Blake2s256::new();
    outer.update(block_key.map(|b| b ^ 0x5c));
    outer.update(inner_hash);
    Zeroizing::new(outer.finalize().into())
}

/// Noise HKDF with two outputs.
fn hkdf2(chaining_key: &[u8], ikm: &[u8]) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let temp = hmac(chaining_key, &[ikm]);
    let out1 = hmac(temp.as_slice(), &[&[1u8]]);
    let out2 = hmac(temp.as_slice(), &[out1.as_slice(), &[2u8]]);
    (out1, out2)
}

struct SymmetricState {
    cipher: CipherState,
    ck: Zeroizing<[u8; HASHLEN]>,
    h: [u8; HASHLEN],
}

impl SymmetricState {
    fn initialize(protocol_name: &str) -> Self {
        let name = protocol_name.as_bytes();
        let mut h = [0u8; HASHLEN];
        if name.len() <= HASHLEN {
            h[..name.len()].copy_from_slice(name);
        } else {
            h.copy_from_slice(&Blake2s256::digest(name));
        }
        SymmetricState {
            cipher: CipherState::empty(),
            ck: Zeroizing::new(h),
            h,
        }
    }

    fn mix_key(&mut self, ikm: &[u8]) {
        let (ck, temp_k) = hkdf2(self.ck.as_slice(), ikm);
        self.ck = ck;
        self.cipher.initialize_key(*temp_k);
    }

    fn mix_hash(&mut self, data: &[u8]) {
        let mut hasher = Blake2s256::new();
        hasher.update(self.h);
        hasher.update(data);
        self.h = hasher.finalize().into();
    }

    fn encrypt_and_hash(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), NoiseError> {
        let mut buf = plaintext.to_vec();
        self.cipher.encrypt_with_ad(&self.h, &mut buf)?;
        self.mix_hash(&buf);
        out.extend_from_slice(&buf);
        Ok(())
    }

    fn decrypt_and_hash(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let mut buf = ciphertext.to_vec();
        self.cipher.decrypt_with_ad(&self.h, &mut buf)?;
        self.mix_hash(ciphertext);
        Ok(buf)
    }

    fn split(self) -> (CipherState, CipherState) {
        let (k1, k2) = hkdf2(self.ck.as_slice(), &[]);
        (CipherState::with_key(*k1), CipherState::with_key(*k2))
    }
}

fn dh(secret: &StaticSecret, public: &PublicKey) -> Result<Zeroizing<[u8; 32]>, NoiseError> {
    let shared = secret.diffie_hellman(public);
    if !shared.was_contributory() {
        return Err(NoiseError::WeakPublicKey);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// Splits `n` bytes off the front of `msg`, or reports how short it is.
fn take<'a>(msg: &mut &'a [u8], n: usize, total: usize) -> Result<&'a [u8], NoiseError> {
    if msg.len() < n {
        return Err(NoiseError::MessageTooShort {
            need: total - msg.len() + n,
            got: total,
        });
    }
    let (head, rest) = msg.split_at(n);
    *msg = rest;
    Ok(head)
}

fn public_from(bytes: &[u8]) -> PublicKey {
    let mut array = [0u8; 32];
    array.copy_from_slice(bytes);
    PublicKey::from(array)
}

/// The result of a completed handshake: one cipher per direction and the handshake hash.
#[derive(Debug)]
pub struct TransportKeys {
    pub send: CipherState,
    pub recv: CipherState,
    /// Unique per session; both sides hold the same value (channel binding).
    pub handshake_hash: [u8; 32],
}

fn initialize_symmetric(
    mode: HandshakeMode,
    prologue: &[u8],
    responder_static: &[u8],
) -> SymmetricState {
    let mut state = SymmetricState::initialize(mode.protocol_name());
    state.mix_hash(prologue);
    state.mix_hash(responder_static);
    state
}

/// Initiator before message 1.
pub struct InitiatorStart {
    state: SymmetricState,
    mode: HandshakeMode,
    local: StaticKeypair,
    remote: PublicKey,
}

/// Initiator after sending message 1, waiting for message 2.
pub struct InitiatorAwaitingReply {
    state: SymmetricState,
    mode: HandshakeMode,
    local: StaticKeypair,
    ephemeral: StaticSecret,
    kem_secret: Option<<MlKem1024 as KemCore>::DecapsulationKey>,
}

impl InitiatorStart {
    pub fn new(
        mode: HandshakeMode,
        prologue: &[u8],
        local: &StaticKeypair,
        remote: &PublicKeyBytes,
    ) -> Self {
        InitiatorStart {
            state: initialize_symmetric(mode, prologue, &remote.0),
            mode,
            local: local.clone(),
            remote: remote.to_dalek(),
        }
    }

    /// Writes `-> e, es, [e1,] s, ss` followed by the encrypted payload.
    pub fn write_message1(
        mut self,
        payload: &[u8],
    ) -> Result<(InitiatorAwaitingReply, Vec<u8>), NoiseError> {
        let len = self.mode.message1_len(payload.len());
        if len > MAX_NOISE_MESSAGE {
            return Err(NoiseError::MessageTooLong(len));
        }
        let mut out = Vec::with_capacity(len);
        let ephemeral = StaticSecret::random_from_rng(OsRng);
        let e_pub = PublicKey::from(&ephemeral);
        out.extend_from_slice(e_pub.as_bytes());
        self.state.mix_hash(e_pub.as_bytes());
        self.state.mix_key(dh(&ephemeral, &self.remote)?.as_slice());
        let kem_secret = match self.mode {
            HandshakeMode::Classic => None,
            HandshakeMode::Hybrid => {
                let (dk, ek) = MlKem1024::generate(&mut OsRng);
                self.state.encrypt_and_hash(&ek.as_bytes(), &mut out)?;
                Some(dk)
            }
        };
        let s_pub = self.local.public();
        self.state.encrypt_and_hash(&s_pub.0, &mut out)?;
        self.state
            .mix_key(dh(self.local.secret(), &self.remote)?.as_slice());
        self.state.encrypt_and_hash(payload, &mut out)?;
        let next = InitiatorAwaitingReply {
            state: self.state,
            mode: self.mode,
            local: self.local,
            ephemeral,
            kem_secret,
        };
        Ok((next, out))
    }
}

impl InitiatorAwaitingReply {
    /// Reads `<- e, ee, [ekem1,] se` and the payload; returns transport keys and the payload.
    pub fn read_message2(mut self, msg: &[u8]) -> Result<(TransportKeys, Vec<u8>), NoiseError> {
        let total = msg.len();
        if total > MAX_NOISE_MESSAGE {
            return Err(NoiseError::MessageTooLong(total));
        }
        if total < self.mode.message2_fixed_len() {
            return Err(NoiseError::MessageTooShort {
                need: self.mode.message2_fixed_len(),
                got: total,
            });
        }
        let mut rest = msg;
        let re_bytes = take(&mut rest, DHLEN, total)?;
        let re = public_from(re_bytes);
        self.state.mix_hash(re_bytes);
        self.state.mix_key(dh(&self.ephemeral, &re)?.as_slice());
        if let Some(dk) = self.kem_secret.take() {
            let ct_bytes =
                self.state
                    .decrypt_and_hash(take(&mut rest, MLKEM_CT_LEN + TAGLEN, total)?)?;
            let ct = ml_kem::Ciphertext::<MlKem1024>::try_from(ct_bytes.as_slice())
                .map_err(|_| NoiseError::Kem)?;
            let shared = dk.decapsulate(&ct).map_err(|_| NoiseError::Kem)?;
            let mut shared_bytes: [u8; 32] = shared.into();
            self.state.mix_key(&shared_bytes);
            shared_bytes.zeroize();
        }
        self.state.mix_key(dh(self.local.secret(), &re)?.as_slice());
        let payload = self.state.decrypt_and_hash(rest)?;
        let handshake_hash = self.state.h;
        let (c1, c2) = self.state.split();
        let keys = TransportKeys {
            send: c1,
            recv: c2,
            handshake_hash,
        };
        Ok((keys, payload))
    }
}

/// Responder before message 1.
pub struct ResponderStart {
    state: SymmetricState,
    mode: HandshakeMode,
    local: StaticKeypair,
}

/// Responder after reading message 1: the initiator's static key is known but not yet trusted.
pub struct ResponderReceived {
    state: SymmetricState,
    mode: HandshakeMode,
    remote_ephemeral: PublicKey,
    remote_static: PublicKeyBytes,
    kem_public: Option<<MlKem1024 as KemCore>::EncapsulationKey>,
}

impl ResponderStart {
    pub fn new(mode: HandshakeMode, prologue: &[u8], local: &StaticKeypair) -> Self {
        ResponderStart {
            state: initialize_symmetric(mode, prologue, &local.public().0),
            mode,
            local: local.clone(),
        }
    }

    /// Reads `-> e, es, [e1,] s, ss` and the payload.
    pub fn read_message1(mut self, msg: &[u8]) -> Result<(ResponderReceived, Vec<u8>), NoiseError> {
        let total = msg.len();
        if total > MAX_NOISE_MESSAGE {
            return Err(NoiseError::MessageTooLong(total));
        }
        let need = self.mode.message1_len(0);
        if total < need {
            return Err(NoiseError::MessageTooShort { need, got: total });
        }
        let mut rest = msg;
        let re_bytes = take(&mut rest, DHLEN, total)?;
        let remote_ephemeral = public_from(re_bytes);
        self.state.mix_hash(re_bytes);
        self.state
            .mix_key(dh(self.local.secret(), &remote_ephemeral)?.as_slice());
        let kem_public = match self.mode {
            HandshakeMode::Classic => None,
            HandshakeMode::Hybrid => {
                let ek_bytes =
                    self.state
                        .decrypt_and_hash(take(&mut rest, MLKEM_EK_LEN + TAGLEN, total)?)?;
                let encoded =
                    ml_kem::Encoded::<<MlKem1024 as KemCore>::EncapsulationKey>::try_from(
                        ek_bytes.as_slice(),
                    )
                    .map_err(|_| NoiseError::Kem)?;
                Some(<MlKem1024 as KemCore>::EncapsulationKey::from_bytes(
                    &encoded,
                ))
            }
        };
        let s_bytes = self
            .state
            .decrypt_and_hash(take(&mut rest, DHLEN + TAGLEN, total)?)?;
        let remote_static = public_from(&s_bytes);
        self.state
            .mix_key(dh(self.local.secret(), &remote_static)?.as_slice());
        let payload = self.state.decrypt_and_hash(rest)?;
        let next = ResponderReceived {
            state: self.state,
            mode: self.mode,
            remote_ephemeral,
            remote_static: PublicKeyBytes(remote_static.to_bytes()),
            kem_public,
        };
        Ok((next, payload))
    }
}

impl ResponderReceived {
    /// The initiator's static key; check it against the allow-list before replying.
    pub fn remote_static(&self) -> &PublicKeyBytes {
        &self.remote_static
    }

    /// Writes `<- e, ee, [ekem1,] se` and the payload; returns transport keys and the message.
    pub fn write_message2(
        mut self,
        payload: &[u8],
    ) -> Result<(TransportKeys, Vec<u8>), NoiseError> {
        let len = self.mode.message2_fixed_len() + payload.len();
        if len > MAX_NOISE_MESSAGE {
            return Err(NoiseError::MessageTooLong(len));
        }
        let mut out = Vec::with_capacity(len);
        let ephemeral = StaticSecret::random_from_rng(OsRng);
        let e_pub = PublicKey::from(&ephemeral);
        out.extend_from_slice(e_pub.as_bytes());
        self.state.mix_hash(e_pub.as_bytes());
        self.state
            .mix_key(dh(&ephemeral, &self.remote_ephemeral)?.as_slice());
        if let Some(ek) = self.kem_public.take() {
            let (ct, shared) = ek.encapsulate(&mut OsRng).map_err(|_| NoiseError::Kem)?;
            self.state.encrypt_and_hash(&ct, &mut out)?;
            let mut shared_bytes: [u8; 32] = shared.into();
            self.state.mix_key(&shared_bytes);
            shared_bytes.zeroize();
        }
        let remote_static = self.remote_static.to_dalek();
        self.state
            .mix_key(dh(&ephemeral, &remote_static)?.as_slice());
        self.state.encrypt_and_hash(payload, &mut out)?;
        let handshake_hash = self.state.h;
        let (c1, c2) = self.state.split();
        let keys = TransportKeys {
            send: c2,
            recv: c1,
            handshake_hash,
        };
        Ok((keys, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: HandshakeMode) -> (TransportKeys, TransportKeys) {
        let agent = StaticKeypair::generate();
        let cortex = StaticKeypair::generate();
        let (waiting, m1) = InitiatorStart::new(mode, b"QSC/1", &agent, &cortex.public())
            .write_message1(b"hello")
            .unwrap();
        assert_eq!(m1.len(), mode.message1_len(5));
        let (received, p1) = ResponderStart::new(mode, b"QSC/1", &cortex)
            .read_message1(&m1)
            .unwrap();
        assert_eq!(p1, b"hello");
        assert_eq!(received.remote_static(), &agent.public());
        let (r_keys, m2) = received.write_message2(b"welcome").unwrap();
        let (i_keys, p2) = waiting.read_message2(&m2).unwrap();
        assert_eq!(p2, b"welcome");
        (i_keys, r_keys)
    }

    #[test]
    fn classic_and_hybrid_handshakes_agree_on_keys() {
        for mode in [HandshakeMode::Classic, HandshakeMode::Hybrid] {
            let (mut i, mut r) = run(mode);
            assert_eq!(i.handshake_hash, r.handshake_hash);
            let mut buf = b"ping".to_vec();
            i.send.encrypt_with_ad(&[], &mut buf).unwrap();
            r.recv.decrypt_with_ad(&[], &mut buf).unwrap();
            assert_eq!(buf, b"ping");
            let mut buf = b"pong".to_vec();
            r.send.encrypt_with_ad(&[], &mut buf).unwrap();
            i.recv.decrypt_with_ad(&[], &mut buf).unwrap();
            assert_eq!(buf, b"pong");
        }
    }

    #[test]
    fn mode_or_prologue_mismatch_fails() {
        let agent = StaticKeypair::generate();
        let cortex = StaticKeypair::generate();
        let (_, m1) =
            InitiatorStart::new(HandshakeMode::Hybrid, b"QSC/1", &agent, &cortex.public())
                .write_message1(b"")
                .unwrap();
        let err = ResponderStart::new(HandshakeMode::Hybrid, b"QSC/2", &cortex)
            .read_message1(&m1)
            .err();
        assert_eq!(err, Some(NoiseError::DecryptFailed));
        let (_, m1) =
            InitiatorStart::new(HandshakeMode::Classic, b"QSC/1", &agent, &cortex.public())
                .write_message1(&[0u8; 2000])
                .unwrap();
        let err = ResponderStart::new(HandshakeMode::Hybrid, b"QSC/1", &cortex)
            .read_message1(&m1)
            .err();
        assert_eq!(err, Some(NoiseError::DecryptFailed));
    }

    #[test]
    fn wrong_responder_key_fails() {
        let agent = StaticKeypair::generate();
        let cortex = StaticKeypair::generate();
        let impostor = StaticKeypair::generate();
        let (_, m1) =
            InitiatorStart::new(HandshakeMode::Hybrid, b"QSC/1", &agent, &cortex.public())
                .write_message1(b"")
                .unwrap();
        let err = ResponderStart::new(HandshakeMode::Hybrid, b"QSC/1", &impostor)
            .read_message1(&m1)
            .err();
        assert_eq!(err, Some(NoiseError::DecryptFailed));
    }

    #[test]
    fn tampered_message2_fails() {
        let agent = StaticKeypair::generate();
        let cortex = StaticKeypair::generate();
        let mode = HandshakeMode::Hybrid;
        let (waiting, m1) = InitiatorStart::new(mode, b"QSC/1", &agent, &cortex.public())
            .write_message1(b"")
            .unwrap();
        let (received, _) = ResponderStart::new(mode, b"QSC/1", &cortex)
            .read_message1(&m1)
            .unwrap();
        let (_, mut m2) = received.write_message2(b"").unwrap();
        m2[100] ^= 1;
        assert_eq!(
            waiting.read_message2(&m2).err(),
            Some(NoiseError::DecryptFailed)
        );
    }

    #[test]
    fn short_messages_are_named_errors() {
        let cortex = StaticKeypair::generate();
        for len in [0, 31, 79, 100] {
            let err = ResponderStart::new(HandshakeMode::Hybrid, b"", &cortex)
                .read_message1(&vec![0u8; len])
                .err();
            assert!(
                matches!(err, Some(NoiseError::MessageTooShort { .. })),
                "{err:?}"
            );
        }
    }

    #[test]
    fn rekey_changes_key_and_keeps_nonce() {
        let (mut i, mut r) = run(HandshakeMode::Classic);
        i.send.rekey().unwrap();
        let mut buf = b"x".to_vec();
        i.send.encrypt_with_ad(&[], &mut buf).unwrap();
        let mut stale = buf.clone();
        assert_eq!(
            r.recv.decrypt_with_ad(&[], &mut stale),
            Err(NoiseError::DecryptFailed)
        );
        r.recv.rekey().unwrap();
        r.recv.decrypt_with_ad(&[], &mut buf).unwrap();
        assert_eq!(buf, b"x");
        assert_eq!(r.recv.nonce(), 1);
    }
}
