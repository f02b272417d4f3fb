//! The `[webhook]` configuration section and its validation.
//!
//! Every key is documented in `webhook.example.toml` next to this file.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use url::{Host, Url};
use zeroize::Zeroizing;

use super::sign::{SecretError, WebhookSecret};

/// Which JSON body a destination receives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// The QSC alert JSON (`{"type", "timestamp", "data"}`).
    #[default]
    Native,
    /// A TheHive alert (`POST /api/v1/alert` body).
    Thehive,
}

/// One outbound destination as written in the configuration.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Unique name, used in logs, metrics and the persisted queue.
    pub name: String,
    /// Where alerts are POSTed. Its scheme, host and port form the allow-list entry.
    pub url: String,
    /// `whsec_<base64>` shared secret (24 to 64 bytes once decoded).
    pub secret: String,
    /// `native` (default) or `thehive`.
    #[serde(default)]
    pub format: BodyFormat,
    /// The IP addresses the URL's host may resolve to. Empty: an IP-literal host is its own
    /// only address; a DNS name may resolve only to globally routable addresses.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Sent as `Authorization: Bearer <token>` when set (TheHive's API key, a SOAR token).
    #[serde(default)]
    pub bearer_token: Option<String>,
}

impl fmt::Debug for DestinationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DestinationConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("format", &self.format)
            .field("addresses", &self.addresses)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The `[webhook]` section.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Where alerts go; also the allow-list of everything the cortex may contact.
    pub destinations: Vec<DestinationConfig>,
    /// SQLite file holding pending deliveries and dead letters.
    pub queue_path: PathBuf,
    /// In-memory hand-off bound between `enqueue` and the delivery worker.
    pub queue_bound: usize,
    /// Most pending deliveries kept in the queue file; more are dropped and counted.
    pub max_pending: u64,
    /// Most dead letters kept; the oldest beyond this are pruned and counted.
    pub max_dead_letters: u64,
    /// TCP connect timeout.
    pub connect_timeout_ms: u64,
    /// Whole-request timeout (connect, send, response).
    pub request_timeout_ms: u64,
    /// Attempts per delivery before it is dead-lettered.
    pub max_attempts: u32,
    /// Age after which an undelivered message is dead-lettered.
    pub max_age_s: u64,
    /// First retry delay ceiling; doubles per attempt (full jitter draws below it).
    pub backoff_base_ms: u64,
    /// Largest retry delay ceiling.
    pub backoff_cap_ms: u64,
    /// Longest `Retry-After` honoured; a longer one is clamped to this.
    pub max_retry_after_s: u64,
    /// Allow `http://` destinations (test receivers, a collector on the same host).
    pub allow_plain_http: bool,
    /// `whsec_<base64>` secret of the inbound approval webhook; absent: inbound disabled.
    pub inbound_secret: Option<String>,
    /// Largest accepted clock difference of an inbound `webhook-timestamp`.
    pub inbound_tolerance_s: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            destinations: Vec::new(),
            queue_path: PathBuf::from("/var/lib/qsc/webhook-queue.sqlite"),
            queue_bound: 1024,
            max_pending: 100_000,
            max_dead_letters: 10_000,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 15_000,
            max_attempts: 8,
            max_age_s: 24 * 3600,
            backoff_base_ms: 1_000,
            backoff_cap_ms: 300_000,
            max_retry_after_s: 3600,
            allow_plain_http: false,
            inbound_secret: None,
            inbound_tolerance_s: 300,
        }
    }
}

/// A configuration mistake, naming the key or destination at fault.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("webhook destination #{index} has an empty name")]
    EmptyName { index: usize },
    #[error("webhook destination `{name}` is configured twice")]
    DuplicateName { name: String },
    #[error("webhook destination `{name}`: url `{url}` is not a valid URL: {source}")]
    BadUrl {
        name: String,
        url: String,
        source: url::ParseError,
    },
    #[error(
        "webhook destination `{name}`: scheme `{scheme}` is not allowed (https, or http with allow_plain_http)"
    )]
    SchemeNotAllowed { name: String, scheme: String },
    #[error("webhook destination `{name}`: the url must not carry a user name or password")]
    UrlCredentials { name: String },
    #[error("webhook destination `{name}`: the url has no host")]
    NoHost { name: String },
    #[error("webhook destination `{name}`: host {host} is not in its own `addresses` list")]
    HostNotInAddresses { name: String, host: IpAddr },
    #[error(
        "webhook destination `{name}`: bearer_token must be non-empty printable ASCII without spaces"
    )]
    BadBearerToken { name: String },
    #[error("webhook destination `{name}`: secret: {source}")]
    BadSecret { name: String, source: SecretError },
    #[error("webhook inbound_secret: {source}")]
    BadInboundSecret { source: SecretError },
    #[error("webhook `{key}` must be greater than zero")]
    Zero { key: &'static str },
    #[error("webhook backoff_base_ms ({base}) is larger than backoff_cap_ms ({cap})")]
    BackoffOrder { base: u64, cap: u64 },
}

/// A destination after validation.
#[derive(Clone, Debug)]
pub struct Destination {
    /// Unique name (trimmed).
    pub name: String,
    /// POST target; its origin is this destination's allow-list entry.
    pub url: Url,
    /// Signing key of outbound messages.
    pub secret: WebhookSecret,
    /// Body shape.
    pub format: BodyFormat,
    /// Allowed resolved addresses (empty: see [`DestinationConfig::addresses`]).
    pub addresses: Vec<IpAddr>,
    /// `Authorization: Bearer` token, when configured.
    pub bearer_token: Option<BearerToken>,
}

/// An `Authorization: Bearer` token, zeroized on drop and never printed.
#[derive(Clone)]
pub struct BearerToken(Zeroizing<String>);

impl BearerToken {
    /// The header value: `Bearer <token>`.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0.as_str())
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Delivery timing and limits after validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliverySettings {
    /// See [`WebhookConfig::queue_bound`].
    pub queue_bound: usize,
    /// See [`WebhookConfig::max_pending`].
    pub max_pending: u64,
    /// See [`WebhookConfig::max_dead_letters`].
    pub max_dead_letters: u64,
    /// See [`WebhookConfig::connect_timeout_ms`].
    pub connect_timeout: Duration,
    /// See [`WebhookConfig::request_timeout_ms`].
    pub request_timeout: Duration,
    /// See [`WebhookConfig::max_attempts`].
    pub max_attempts: u32,
    /// See [`WebhookConfig::max_age_s`].
    pub max_age: Duration,
    /// See [`WebhookConfig::backoff_base_ms`].
    pub backoff_base: Duration,
    /// See [`WebhookConfig::backoff_cap_ms`].
    pub backoff_cap: Duration,
    /// See [`WebhookConfig::max_retry_after_s`].
    pub max_retry_after: Duration,
}

/// The whole section after validation: what the sender and the inbound verifier run on.
#[derive(Clone, Debug)]
pub struct ValidConfig {
    /// Where alerts go, in configuration order.
    pub destinations: Vec<Destination>,
    /// The SQLite queue file.
    pub queue_path: PathBuf,
    /// Delivery timing and limits.
    pub settings: DeliverySettings,
    /// Inbound approval secret; `None` disables inbound approvals.
    pub inbound_secret: Option<WebhookSecret>,
    /// Accepted clock difference of inbound timestamps.
    pub inbound_tolerance: Duration,
}

impl WebhookConfig {
    /// Checks every key; the first mistake found is returned.
    pub fn validate(&self) -> Result<ValidConfig, ConfigError> {
        let settings = self.settings()?;
        let mut names = HashSet::new();
        let mut destinations = Vec::with_capacity(self.destinations.len());
        for (index, raw) in self.destinations.iter().enumerate() {
            let destination = validate_destination(index, raw, self.allow_plain_http)?;
            if !names.insert(destination.name.clone()) {
                return Err(ConfigError::DuplicateName {
                    name: destination.name,
                });
            }
            destinations.push(destination);
        }
        let inbound_secret = self
            .inbound_secret
            .as_deref()
            .map(WebhookSecret::parse)
            .transpose()
            .map_err(|source| ConfigError::BadInboundSecret { source })?;
        Ok(ValidConfig {
            destinations,
            queue_path: self.queue_path.clone(),
            settings,
            inbound_secret,
            inbound_tolerance: Duration::from_secs(nonzero(
                self.inbound_tolerance_s,
                "inbound_tolerance_s",
            )?),
        })
    }

    fn settings(&self) -> Result<DeliverySettings, ConfigError> {
        let base = nonzero(self.backoff_base_ms, "backoff_base_ms")?;
        let cap = nonzero(self.backoff_cap_ms, "backoff_cap_ms")?;
        if base > cap {
            return Err(ConfigError::BackoffOrder { base, cap });
        }
        Ok(DeliverySettings {
            queue_bound: usize::try_from(nonzero(self.queue_bound as u64, "queue_bound")?)
                .unwrap_or(usize::MAX),
            max_pending: nonzero(self.max_pending, "max_pending")?,
            max_dead_letters: nonzero(self.max_dead_letters, "max_dead_letters")?,
            connect_timeout: Duration::from_millis(nonzero(
                self.connect_timeout_ms,
                "connect_timeout_ms",
            )?),
            request_timeout: Duration::from_millis(nonzero(
                self.request_timeout_ms,
                "request_timeout_ms",
            )?),
            max_attempts: nonzero(u64::from(self.max_attempts), "max_attempts")? as u32,
            max_age: Duration::from_secs(nonzero(self.max_age_s, "max_age_s")?),
            backoff_base: Duration::from_millis(base),
            backoff_cap: Duration::from_millis(cap),
            max_retry_after: Duration::from_secs(self.max_retry_after_s),
        })
    }
}

fn nonzero(value: u64, key: &'static str) -> Result<u64, ConfigError> {
    if value == 0 {
        Err(ConfigError::Zero { key })
    } else {
        Ok(value)
    }
}

fn validate_destination(
    index: usize,
    raw: &DestinationConfig,
    allow_plain_http: bool,
) -> Result<Destination, ConfigError> {
    let name = raw.name.trim().to_owned();
    if name.is_empty() {
        return Err(ConfigError::EmptyName { index });
    }
    let url = Url::parse(&raw.url).map_err(|source| ConfigError::BadUrl {
        name: name.clone(),
        url: raw.url.clone(),
        source,
    })?;
    match url.scheme() {
        "https" => {}
        "http" if allow_plain_http => {}
        scheme => {
            return Err(ConfigError::SchemeNotAllowed {
                name,
                scheme: scheme.to_owned(),
            });
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::UrlCredentials { name });
    }
    let host_ip = match url.host() {
        None => return Err(ConfigError::NoHost { name }),
        Some(Host::Domain(_)) => None,
        Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
    };
    if let Some(ip) = host_ip.filter(|ip| !raw.addresses.is_empty() && !raw.addresses.contains(ip))
    {
        return Err(ConfigError::HostNotInAddresses { name, host: ip });
    }
    let secret = WebhookSecret::parse(&raw.secret).map_err(|source| ConfigError::BadSecret {
        name: name.clone(),
        source,
    })?;
    let bearer_token = raw
        .bearer_token
        .as_deref()
        .map(|token| bearer_token(&name, token))
        .transpose()?;
    Ok(Destination {
        name,
        url,
        secret,
        format: raw.format,
        addresses: raw.addresses.clone(),
        bearer_token,
    })
}

fn bearer_token(name: &str, token: &str) -> Result<BearerToken, ConfigError> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::BadBearerToken {
            name: name.to_owned(),
        });
    }
    Ok(BearerToken(Zeroizing::new(token.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn destination(name: &str, url: &str) -> DestinationConfig {
        DestinationConfig {
            name: name.into(),
            url: url.into(),
            secret: SECRET.into(),
            format: BodyFormat::Native,
            addresses: Vec::new(),
            bearer_token: None,
        }
    }

    fn config(destinations: Vec<DestinationConfig>) -> WebhookConfig {
        WebhookConfig {
            destinations,
            ..WebhookConfig::default()
        }
    }

    #[test]
    fn example_file_parses_and_validates() {
        let text = include_str!("webhook.example.toml");
        let table: toml::Table = toml::from_str(text).unwrap();
        let section = table["webhook"].clone();
        let config: WebhookConfig = section.try_into().unwrap();
        let valid = config.validate().unwrap();
        assert_eq!(valid.destinations.len(), 2);
        assert_eq!(valid.destinations[1].format, BodyFormat::Thehive);
        assert!(valid.inbound_secret.is_some());
    }

    #[test]
    fn mistakes_are_named() {
        let err = |c: WebhookConfig| c.validate().unwrap_err();
        assert!(matches!(
            err(config(vec![destination(" ", "https://a.example/")])),
            ConfigError::EmptyName { index: 0 }
        ));
        assert!(matches!(
            err(config(vec![
                destination("a", "https://a.example/"),
                destination("a", "https://b.example/")
            ])),
            ConfigError::DuplicateName { .. }
        ));
        assert!(matches!(
            err(config(vec![destination("a", "not a url")])),
            ConfigError::BadUrl { .. }
        ));
        assert!(matches!(
            err(config(vec![destination("a", "http://a.example/")])),
            ConfigError::SchemeNotAllowed { .. }
        ));
        assert!(matches!(
            err(config(vec![destination("a", "https://u:p@a.example/")])),
            ConfigError::UrlCredentials { .. }
        ));
        let mut pinned = destination("a", "https://192.0.2.1/");
        pinned.addresses = vec!["192.0.2.2".parse().unwrap()];
        assert!(matches!(
            err(config(vec![pinned])),
            ConfigError::HostNotInAddresses { .. }
        ));
        let mut bad_secret = destination("a", "https://a.example/");
        bad_secret.secret = "hunter2".into();
        let shown = err(config(vec![bad_secret])).to_string();
        assert!(shown.contains("`a`") && shown.contains("whsec_"), "{shown}");
        let mut spaced = destination("a", "https://a.example/");
        spaced.bearer_token = Some("two words".into());
        assert!(matches!(
            err(config(vec![spaced])),
            ConfigError::BadBearerToken { .. }
        ));
        let mut zero = config(Vec::new());
        zero.max_attempts = 0;
        assert!(matches!(
            err(zero),
            ConfigError::Zero {
                key: "max_attempts"
            }
        ));
        let mut order = config(Vec::new());
        order.backoff_base_ms = 10;
        order.backoff_cap_ms = 5;
        assert!(matches!(err(order), ConfigError::BackoffOrder { .. }));
        let mut inbound = config(Vec::new());
        inbound.inbound_secret = Some("whsec_".into());
        assert!(matches!(err(inbound), ConfigError::BadInboundSecret { .. }));
    }

    #[test]
    fn secrets_are_not_printed() {
        let mut raw = destination("a", "https://a.example/");
        raw.bearer_token = Some("tok-123456".into());
        let shown = format!("{raw:?}");
        assert!(
            !shown.contains("MfKQ9r8") && !shown.contains("tok-1"),
            "{shown}"
        );
        let valid = config(vec![raw]).validate().unwrap();
        let shown = format!("{valid:?}");
        assert!(!shown.contains("tok-1"), "{shown}");
        let token = valid.destinations[0].bearer_token.as_ref().unwrap();
        assert_eq!(token.header_value(), "Bearer tok-123456");
    }
}
