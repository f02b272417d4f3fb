//! The cortex configuration file (`config/cortex.example.toml` documents every key), parsed with
//! unknown keys refused and validated as a whole before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qsc_channel::transport::TransportConfig;
use serde::Deserialize;

use crate::anomaly::{AnomalyConfig, AnomalyError};
use crate::audit::{AuditConfig, AuditError};
use crate::bus::{BusConfig, BusConfigError, BusKind};
use crate::console::{ConsoleConfig, ConsoleConfigError};
use crate::respond::{RespondConfig, RespondConfigError};
use crate::score::ScoreConfig;
use crate::score::config::ScoreConfigError;
use crate::store::StoreConfig;
use crate::store::config::{StoreBackend, StoreConfigError};
use crate::webhook::{ConfigError as WebhookConfigError, WebhookConfig};

/// Largest event accepted anywhere, whatever the configuration says.
pub const HARD_MAX_EVENT_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CortexConfig {
    pub listen: ListenConfig,
    pub ingest: IngestConfig,
    pub pipeline: PipelineConfig,
    pub api: ApiConfig,
    pub detect: DetectConfig,
    pub agents: AgentsConfig,
    pub keys: KeysConfig,
    pub store: StoreConfig,
    pub score: ScoreConfig,
    pub audit: AuditConfig,
    pub anomaly: AnomalyConfig,
    pub respond: RespondConfig,
    pub webhook: WebhookConfig,
    pub console: ConsoleConfig,
    pub bus: BusConfig,
    pub cluster: ClusterConfig,
}

/// `[cluster]`: which part of the cortex this process runs.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub role: Role,
}

/// What one `cortex serve` process does; replicas differ only in this.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything: with `[bus] kind = "none"` the single-node cortex; with `"nats"` a gateway
    /// and a worker in one process.
    #[default]
    All,
    /// Terminates agent channels, validates, publishes each batch to the bus and acknowledges
    /// the agent once the stream has it; delivers commands to the agents it holds.
    Gateway,
    /// Consumes the bus: store, detect, score, decide, respond (commands through the bus).
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Gateway => "gateway",
            Role::Worker => "worker",
        }
    }

    /// Whether this process accepts agent channels.
    pub fn ingests(self) -> bool {
        self != Role::Worker
    }

    /// Whether this process runs detection.
    pub fn detects(self) -> bool {
        self != Role::Gateway
    }
}

/// `[listen]`: the agent channel.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    pub address: String,
    pub require_hybrid: bool,
    pub handshake_timeout_ms: u64,
    pub max_frame_bytes: usize,
    pub idle_timeout_s: u64,
}

/// `[ingest]`: what an event must satisfy to be accepted.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    pub max_event_bytes: usize,
    pub max_past_s: u64,
    pub max_future_s: u64,
}

/// `[pipeline]`: the bounded queue between storage and detection.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub queue_batches: usize,
    pub max_block_ms: u64,
}

/// `[api]`: the HTTP API.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub address: String,
    pub token_file: PathBuf,
}

/// `[detect]`: where the Sigma rules come from.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    pub shipped_rules: bool,
    pub rule_dirs: Vec<PathBuf>,
}

/// `[agents]`: the enrolled agents.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsConfig {
    pub file: PathBuf,
    pub reload_interval_s: u64,
}

/// `[keys]`: the cortex's channel identity (the store and audit keys are in their sections).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    pub channel_key_file: PathBuf,
    /// The agent key records (lifecycle state per key, pending rotations), JSON; default
    /// `agent-keys.json` next to the agents file.
    pub lifecycle_file: Option<PathBuf>,
    /// Scheduled rotation: ACTIVE agent keys older than this are rotated; 0 = never.
    pub max_key_age_s: u64,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            address: "127.0.0.1:7443".into(),
            require_hybrid: true,
            handshake_timeout_ms: 5000,
            max_frame_bytes: 1 << 20,
            idle_timeout_s: 30,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_event_bytes: 64 << 10,
            max_past_s: 7 * 86_400,
            max_future_s: 300,
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            queue_batches: 1024,
            max_block_ms: 1000,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            address: "127.0.0.1:7080".into(),
            token_file: PathBuf::from("/etc/qsc/api.token"),
        }
    }
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            shipped_rules: true,
            rule_dirs: Vec::new(),
        }
    }
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            file: PathBuf::from("/etc/qsc/agents.toml"),
            reload_interval_s: 5,
        }
    }
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            channel_key_file: PathBuf::from("/etc/qsc/cortex-channel.key"),
            lifecycle_file: None,
            max_key_age_s: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("config key `{key}` is invalid: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("[store] {0}")]
    Store(#[from] StoreConfigError),
    #[error("[score] {0}")]
    Score(#[from] ScoreConfigError),
    #[error("[audit] {0}")]
    Audit(#[from] AuditError),
    /// The respond error names its own `[respond]` key.
    #[error(transparent)]
    Respond(#[from] RespondConfigError),
    /// The anomaly error names its own `[anomaly]` key.
    #[error(transparent)]
    Anomaly(#[from] AnomalyError),
    #[error("[webhook] {0}")]
    Webhook(#[from] WebhookConfigError),
    /// The console error names its own `[console]` key.
    #[error(transparent)]
    Console(#[from] ConsoleConfigError),
    #[error("[bus] {0}")]
    Bus(#[from] BusConfigError),
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl CortexConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: CortexConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_addr("listen.address", &self.listen.address)?;
        parse_addr("api.address", &self.api.address)?;
        self.listen.validate()?;
        self.ingest.validate()?;
        self.pipeline.validate()?;
        self.detect.validate()?;
        if self.agents.reload_interval_s == 0 {
            return Err(invalid("agents.reload_interval_s", "must be at least 1"));
        }
        for (key, path) in [
            ("agents.file", &self.agents.file),
            ("api.token_file", &self.api.token_file),
            ("keys.channel_key_file", &self.keys.channel_key_file),
        ] {
            if path.as_os_str().is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        self.store.validate()?;
        self.bus.validate()?;
        self.validate_cluster()?;
        self.score.validate()?;
        self.audit.validate()?;
        self.anomaly.validate()?;
        self.respond.validate()?;
        self.webhook.validate()?;
        self.console.validate()?;
        Ok(())
    }

    /// Gateways and workers exist only on the bus, and replicas on the bus share PostgreSQL.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let on_bus = self.bus.kind == BusKind::Nats;
        if self.cluster.role != Role::All && !on_bus {
            return Err(invalid(
                "cluster.role",
                format!(
                    "\"{}\" needs [bus] kind = \"nats\" (replicas pass events through it)",
                    self.cluster.role.as_str()
                ),
            ));
        }
        if on_bus && self.store.backend != StoreBackend::Postgres {
            return Err(invalid(
                "store.backend",
                "[bus] kind = \"nats\" needs backend = \"postgres\": every replica must see the same store",
            ));
        }
        Ok(())
    }

    /// `[keys] lifecycle_file`, or `agent-keys.json` next to `[agents] file`.
    pub fn key_records_file(&self) -> PathBuf {
        self.keys
            .lifecycle_file
            .clone()
            .unwrap_or_else(|| self.agents.file.with_file_name("agent-keys.json"))
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("listen.address", &self.listen.address)
    }

    pub fn api_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("api.address", &self.api.address)
    }
}

impl KeysConfig {
    /// `max_key_age_s` as a duration; None when scheduled rotation is off.
    pub fn max_key_age(&self) -> Option<Duration> {
        (self.max_key_age_s > 0).then(|| Duration::from_secs(self.max_key_age_s))
    }
}

impl ListenConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.handshake_timeout_ms == 0 {
            return Err(invalid("listen.handshake_timeout_ms", "must be at least 1"));
        }
        let hard = TransportConfig::default().max_frame_len;
        if !(4096..=hard).contains(&self.max_frame_bytes) {
            return Err(invalid(
                "listen.max_frame_bytes",
                format!("must be between 4096 and {hard}"),
            ));
        }
        Ok(())
    }

    pub fn transport(&self) -> TransportConfig {
        TransportConfig {
            max_frame_len: self.max_frame_bytes,
            idle_timeout: (self.idle_timeout_s > 0)
                .then(|| Duration::from_secs(self.idle_timeout_s)),
            ..TransportConfig::default()
        }
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

impl IngestConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(256..=HARD_MAX_EVENT_BYTES).contains(&self.max_event_bytes) {
            return Err(invalid(
                "ingest.max_event_bytes",
                format!("must be between 256 and {HARD_MAX_EVENT_BYTES}"),
            ));
        }
        if self.max_past_s == 0 || self.max_future_s == 0 {
            return Err(invalid(
                "ingest.max_past_s/max_future_s",
                "must be at least 1",
            ));
        }
        if self.max_past_s > 366 * 86_400 {
            return Err(invalid("ingest.max_past_s", "must be at most a year"));
        }
        Ok(())
    }
}

impl PipelineConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1_000_000).contains(&self.queue_batches) {
            return Err(invalid("pipeline.queue_batches", "must be 1..=1000000"));
        }
        if self.max_block_ms > 60_000 {
            return Err(invalid("pipeline.max_block_ms", "must be at most 60000"));
        }
        Ok(())
    }
}

impl DetectConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.shipped_rules && self.rule_dirs.is_empty() {
            return Err(invalid(
                "detect.rule_dirs",
                "is empty and detect.shipped_rules is false: no rule would be loaded",
            ));
        }
        Ok(())
    }
}

fn parse_addr(key: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|e| invalid(key, format!("`{text}` is not an IP:port address ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../config/cortex.example.toml");

    #[test]
    fn the_example_config_is_the_defaults() {
        let config: CortexConfig = toml::from_str(EXAMPLE).unwrap();
        assert_eq!(config, CortexConfig::default());
        assert!(config.validate().is_ok());
    }

    #[test]
    fn the_listen_idle_timeout_reaches_the_transport() {
        let mut listen = ListenConfig::default();
        assert_eq!(
            listen.transport().idle_timeout,
            Some(Duration::from_secs(30))
        );
        listen.idle_timeout_s = 0;
        assert_eq!(listen.transport().idle_timeout, None);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<CortexConfig>("[listen]\nadress = \"x\"").is_err());
        let mut config = CortexConfig::default();
        config.listen.address = "localhost".into();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("listen.address"), "{error}");
        let mut config = CortexConfig::default();
        config.ingest.max_event_bytes = 10;
        assert!(config.validate().is_err());
        let mut config = CortexConfig::default();
        config.detect.shipped_rules = false;
        assert!(config.validate().is_err());
        let mut config = CortexConfig::default();
        config.pipeline.queue_batches = 0;
        assert!(config.validate().is_err());
        let mut config = CortexConfig::default();
        config.anomaly.learning_period_s = 60;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("[anomaly] learning_period_s"), "{error}");
        assert!(toml::from_str::<CortexConfig>("[anomaly]\nwindow = 10").is_err());
        let mut config = CortexConfig::default();
        config.respond.hold_expiry_s = 0;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("[respond] hold_expiry_s"), "{error}");
        let bad_cidr = "[respond.allow]\naddresses = [\"10.0.0.0/40\"]";
        let error = toml::from_str::<CortexConfig>(bad_cidr)
            .unwrap_err()
            .to_string();
        assert!(error.contains("10.0.0.0/40"), "{error}");
    }

    #[test]
    fn replica_roles_need_the_bus_and_the_bus_needs_postgres() {
        let mut config: CortexConfig = toml::from_str("[cluster]\nrole = \"gateway\"").unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("cluster.role"), "{error}");
        config.bus.kind = BusKind::Nats;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("store.backend"), "{error}");
        config.store.backend = StoreBackend::Postgres;
        assert!(config.validate().is_ok());
        assert!(toml::from_str::<CortexConfig>("[cluster]\nrole = \"leader\"").is_err());
        assert!(!Role::Worker.ingests() && !Role::Gateway.detects() && Role::All.detects());
    }

    #[test]
    fn load_names_the_file_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cortex.toml");
        std::fs::write(&path, "[api]\naddress = 7").unwrap();
        let error = CortexConfig::load(&path).unwrap_err().to_string();
        assert!(error.contains("cortex.toml"), "{error}");
        let missing = CortexConfig::load(&dir.path().join("nope.toml"));
        assert!(matches!(missing, Err(ConfigError::Read { .. })));
    }
}
