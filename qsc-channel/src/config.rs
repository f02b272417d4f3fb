//! The `[channel]` settings shared by the agents and the cortex, parsed from TOML and
//! validated at start-up. Every key is documented in `config/channel.example.toml`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::delivery::{ClientConfig, FsyncPolicy, OutboxConfig, OverflowPolicy};
use crate::frame::{HARD_MAX_FRAME_LEN, MIN_FRAME_LEN};
use crate::noise::HandshakeMode;
use crate::transport::TransportConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("channel config is not valid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("channel config key `{key}` is invalid: {reason}")]
    Invalid { key: &'static str, reason: String },
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelSettings {
    pub transport: TransportSettings,
    pub handshake: HandshakeSettings,
    pub outbox: OutboxSettings,
    pub client: ClientSettings,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TransportSettings {
    pub max_frame_bytes: usize,
    pub rekey_after_messages: u64,
    pub rekey_after_seconds: u64,
    /// Agents send a heartbeat frame after this many seconds without sending anything.
    pub heartbeat_seconds: u64,
    /// A peer silent for this long is dead: the cortex closes a session on which no frame
    /// (events, heartbeat) arrived; an agent aborts a connection whose sent data the cortex's
    /// host has not acknowledged (TCP_USER_TIMEOUT). Must exceed `heartbeat_seconds`.
    pub idle_timeout_seconds: u64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HandshakeSettings {
    pub hybrid: bool,
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub overflow: OverflowPolicy,
    pub fsync: FsyncPolicy,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSettings {
    pub connect_timeout_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub max_batch_events: usize,
    pub max_batch_bytes: usize,
    pub max_in_flight: u64,
}

impl Default for TransportSettings {
    fn default() -> Self {
        let t = TransportConfig::default();
        TransportSettings {
            max_frame_bytes: t.max_frame_len,
            rekey_after_messages: t.rekey_after_messages,
            rekey_after_seconds: t.rekey_after.as_secs(),
            heartbeat_seconds: t.heartbeat_after.as_secs(),
            idle_timeout_seconds: t.idle_timeout.map_or(0, |d| d.as_secs()),
        }
    }
}

impl Default for HandshakeSettings {
    fn default() -> Self {
        HandshakeSettings {
            hybrid: true,
            timeout_ms: 5000,
        }
    }
}

impl Default for OutboxSettings {
    fn default() -> Self {
        let o = OutboxConfig::new("/var/lib/qsc/outbox");
        OutboxSettings {
            dir: o.dir,
            max_bytes: o.max_bytes,
            segment_bytes: o.segment_bytes,
            overflow: o.overflow,
            fsync: o.fsync,
        }
    }
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            connect_timeout_ms: 5000,
            backoff_initial_ms: 100,
            backoff_max_ms: 30_000,
            max_batch_events: 4096,
            max_batch_bytes: 512 << 10,
            max_in_flight: 65536,
        }
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl ChannelSettings {
    /// Parses the `[transport]`, `[handshake]`, `[outbox]`, `[client]` tables and validates them.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let settings: ChannelSettings = toml::from_str(text)?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.transport;
        if !(MIN_FRAME_LEN * 64..=HARD_MAX_FRAME_LEN).contains(&t.max_frame_bytes) {
            return Err(invalid(
                "transport.max_frame_bytes",
                format!(
                    "must be between {} and {HARD_MAX_FRAME_LEN}",
                    MIN_FRAME_LEN * 64
                ),
            ));
        }
        if t.rekey_after_messages == 0 || t.rekey_after_seconds == 0 {
            return Err(invalid("transport.rekey_after_*", "must be greater than 0"));
        }
        if t.heartbeat_seconds == 0 || t.idle_timeout_seconds <= t.heartbeat_seconds {
            return Err(invalid(
                "transport.idle_timeout_seconds",
                "heartbeat_seconds must be at least 1 and idle_timeout_seconds greater than it",
            ));
        }
        if self.handshake.timeout_ms == 0 {
            return Err(invalid("handshake.timeout_ms", "must be greater than 0"));
        }
        let o = &self.outbox;
        if o.dir.as_os_str().is_empty() || !o.dir.is_absolute() {
            return Err(invalid("outbox.dir", "must be an absolute path"));
        }
        if o.segment_bytes == 0 || o.segment_bytes > o.max_bytes {
            return Err(invalid(
                "outbox.segment_bytes",
                "must be greater than 0 and at most outbox.max_bytes",
            ));
        }
        let c = &self.client;
        if c.backoff_initial_ms == 0 || c.backoff_initial_ms > c.backoff_max_ms {
            return Err(invalid(
                "client.backoff_initial_ms",
                "must be greater than 0 and at most client.backoff_max_ms",
            ));
        }
        if c.max_batch_events == 0 || c.max_batch_bytes == 0 || c.max_in_flight == 0 {
            return Err(invalid("client.max_*", "must be greater than 0"));
        }
        // Per-event framing overhead must leave most of a frame for event data.
        if c.max_batch_events
            .saturating_mul(crate::delivery::envelope::EVENT_OVERHEAD * 4)
            > t.max_frame_bytes
        {
            return Err(invalid(
                "client.max_batch_events",
                "too many events per batch for transport.max_frame_bytes (at most max_frame_bytes / 16)",
            ));
        }
        if c.connect_timeout_ms == 0 {
            return Err(invalid(
                "client.connect_timeout_ms",
                "must be greater than 0",
            ));
        }
        Ok(())
    }

    pub fn transport(&self) -> TransportConfig {
        TransportConfig {
            max_frame_len: self.transport.max_frame_bytes,
            rekey_after_messages: self.transport.rekey_after_messages,
            rekey_after: Duration::from_secs(self.transport.rekey_after_seconds),
            heartbeat_after: Duration::from_secs(self.transport.heartbeat_seconds),
            idle_timeout: Some(Duration::from_secs(self.transport.idle_timeout_seconds)),
        }
    }

    pub fn handshake_mode(&self) -> HandshakeMode {
        if self.handshake.hybrid {
            HandshakeMode::Hybrid
        } else {
            HandshakeMode::Classic
        }
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake.timeout_ms)
    }

    pub fn outbox(&self) -> OutboxConfig {
        OutboxConfig {
            dir: self.outbox.dir.clone(),
            max_bytes: self.outbox.max_bytes,
            segment_bytes: self.outbox.segment_bytes,
            overflow: self.outbox.overflow,
            fsync: self.outbox.fsync,
        }
    }

    /// Copies transport, handshake and client settings onto an agent's client config.
    pub fn apply_to_client(&self, client: &mut ClientConfig) {
        let c = &self.client;
        client.mode = self.handshake_mode();
        client.transport = self.transport();
        client.handshake_timeout = self.handshake_timeout();
        client.connect_timeout = Duration::from_millis(c.connect_timeout_ms);
        client.backoff_initial = Duration::from_millis(c.backoff_initial_ms);
        client.backoff_max = Duration::from_millis(c.backoff_max_ms);
        client.max_batch_events = c.max_batch_events;
        client.max_batch_bytes = c.max_batch_bytes;
        client.max_in_flight = c.max_in_flight;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../config/channel.example.toml");

    #[test]
    fn example_file_parses_and_matches_defaults() {
        let parsed = ChannelSettings::from_toml(EXAMPLE).unwrap();
        assert_eq!(parsed, ChannelSettings::default());
        assert_eq!(parsed.handshake_mode(), HandshakeMode::Hybrid);
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(
            ChannelSettings::from_toml("").unwrap(),
            ChannelSettings::default()
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "[transport]\nmax_frame_bytes = 4194304",
                "transport.max_frame_bytes",
            ),
            (
                "[transport]\nrekey_after_messages = 0",
                "transport.rekey_after_*",
            ),
            ("[outbox]\ndir = \"relative\"", "outbox.dir"),
            (
                "[outbox]\nmax_bytes = 10\nsegment_bytes = 100",
                "outbox.segment_bytes",
            ),
            (
                "[client]\nbackoff_initial_ms = 0",
                "client.backoff_initial_ms",
            ),
            ("[handshake]\ntimeout_ms = 0", "handshake.timeout_ms"),
            (
                "[transport]\nheartbeat_seconds = 30\nidle_timeout_seconds = 30",
                "transport.idle_timeout_seconds",
            ),
            (
                "[transport]\nheartbeat_seconds = 0",
                "transport.idle_timeout_seconds",
            ),
            (
                "[client]\nmax_batch_events = 100000",
                "client.max_batch_events",
            ),
        ];
        for (text, key) in cases {
            match ChannelSettings::from_toml(text) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: expected invalid {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_keys_and_bad_enums_are_rejected() {
        assert!(matches!(
            ChannelSettings::from_toml("[transport]\nmax_frame = 1"),
            Err(ConfigError::Toml(_))
        ));
        assert!(matches!(
            ChannelSettings::from_toml("[outbox]\noverflow = \"drop_some\""),
            Err(ConfigError::Toml(_))
        ));
    }
}
