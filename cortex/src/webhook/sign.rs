//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
//!
//! Secrets are written `whsec_<base64>` (24 to 64 random bytes once decoded). A
//! `webhook-signature` header may carry several space-separated signatures (during a secret
//! rotation); a request is valid when any `v1` entry matches.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use thiserror::Error;
use zeroize::Zeroizing;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Shortest decoded secret accepted, in bytes.
pub const SECRET_MIN_BYTES: usize = 24;
/// Longest decoded secret accepted, in bytes.
pub const SECRET_MAX_BYTES: usize = 64;

type HmacSha256 = Hmac<Sha256>;

/// Why a secret string is not a usable Standard Webhooks secret.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the secret does not start with `{SECRET_PREFIX}`")]
    MissingPrefix,
    #[error("the secret after `{SECRET_PREFIX}` is not valid base64")]
    NotBase64,
    #[error("the secret decodes to {len} bytes; {SECRET_MIN_BYTES} to {SECRET_MAX_BYTES} needed")]
    BadLength { len: usize },
}

/// A shared HMAC key, zeroized on drop and never printed.
#[derive(Clone)]
pub struct WebhookSecret {
    key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = Zeroizing::new(BASE64.decode(encoded).map_err(|_| SecretError::NotBase64)?);
        if !(SECRET_MIN_BYTES..=SECRET_MAX_BYTES).contains(&key.len()) {
            return Err(SecretError::BadLength { len: key.len() });
        }
        Ok(Self { key })
    }

    /// A fresh random secret (32 bytes), for tests and for `cortex` to suggest in docs.
    pub fn generate() -> Result<(Self, String), getrandom::Error> {
        let mut key = Zeroizing::new(vec![0u8; 32]);
        getrandom::fill(&mut key)?;
        let text = format!("{SECRET_PREFIX}{}", BASE64.encode(&*key));
        Ok((Self { key }, text))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this never fails.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header value for one message: `v1,<base64>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", BASE64.encode(tag))
    }

    /// Whether any `v1` signature of a `webhook-signature` header matches (constant-time
    /// comparison of each candidate).
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        header
            .split_ascii_whitespace()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|encoded| BASE64.decode(encoded).ok())
            .any(|tag| self.mac(id, timestamp, body).verify_slice(&tag).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference libraries.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn matches_the_reference_signature() {
        let secret = WebhookSecret::parse(SPEC_SECRET).unwrap();
        assert_eq!(secret.sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIG);
        assert!(secret.verify(SPEC_ID, SPEC_TS, SPEC_BODY, SPEC_SIG));
    }

    #[test]
    fn any_of_several_signatures_may_match() {
        let secret = WebhookSecret::parse(SPEC_SECRET).unwrap();
        let header = format!("v1,bm90IGl0 v2,xyz {SPEC_SIG}");
        assert!(secret.verify(SPEC_ID, SPEC_TS, SPEC_BODY, &header));
        assert!(!secret.verify(SPEC_ID, SPEC_TS + 1, SPEC_BODY, &header));
        assert!(!secret.verify(SPEC_ID, SPEC_TS, b"{}", SPEC_SIG));
        assert!(!secret.verify(SPEC_ID, SPEC_TS, SPEC_BODY, "v1,!!!"));
    }

    #[test]
    fn bad_secrets_are_named() {
        assert_eq!(
            WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
            SecretError::MissingPrefix
        );
        assert_eq!(
            WebhookSecret::parse("whsec_***").unwrap_err(),
            SecretError::NotBase64
        );
        assert_eq!(
            WebhookSecret::parse("whsec_c2hvcnQ=").unwrap_err(),
            SecretError::BadLength { len: 5 }
        );
        let (_, text) = WebhookSecret::generate().unwrap();
        assert!(WebhookSecret::parse(&text).is_ok());
        assert!(!format!("{:?}", WebhookSecret::parse(&text).unwrap()).contains(&text[6..]));
    }
}
