//! `[store]` configuration; every key is documented in `config/cortex.example.toml`.

use std::path::PathBuf;

use serde::Deserialize;

use super::RetentionPolicy;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// Embedded SQLite (WAL, synchronous=FULL): the single-machine default.
    Sqlite,
    /// PostgreSQL (`[store.postgres]`): shared by several cortex replicas.
    Postgres,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// The SQLite database file.
    pub path: PathBuf,
    /// 32-byte master key (raw or hex), mode 0600, from which the payload key is derived.
    pub master_key_file: PathBuf,
    pub retention: RetentionConfig,
    pub postgres: PostgresConfig,
}

/// `[store.postgres]`: where the PostgreSQL backend connects.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// A libpq connection string or `postgresql://` URL.
    pub url: String,
    /// A file holding the role's password; empty means none (or the one in `url`).
    pub password_file: PathBuf,
    /// The schema of the tables, created if missing.
    pub schema: String,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: "host=127.0.0.1 port=5432 user=qsc dbname=qsc".into(),
            password_file: PathBuf::new(),
            schema: "qsc".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Events older than this many days are deleted; 0 keeps them regardless of age.
    pub max_age_days: u64,
    /// Oldest events are deleted while stored event bytes exceed this; 0 means no size limit.
    pub max_bytes: u64,
    /// Seconds between retention runs.
    pub interval_s: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreConfigError {
    #[error("store.retention.interval_s must be at least 1")]
    ZeroInterval,
    #[error("store.retention.max_age_days = {0} is too large (at most 36500)")]
    AgeTooLarge(u64),
    #[error("store.{key} must not be empty")]
    EmptyPath { key: &'static str },
    #[error(
        "store.postgres.schema = {0:?} is not a plain SQL name (letters, digits and _, \
         not starting with a digit, at most 63 bytes)"
    )]
    SchemaName(String),
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Sqlite,
            path: PathBuf::from("/var/lib/qsc/cortex.db"),
            master_key_file: PathBuf::from("/etc/qsc/master.key"),
            retention: RetentionConfig::default(),
            postgres: PostgresConfig::default(),
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age_days: 30,
            max_bytes: 10 * 1024 * 1024 * 1024,
            interval_s: 300,
        }
    }
}

impl StoreConfig {
    pub fn validate(&self) -> Result<(), StoreConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(StoreConfigError::EmptyPath { key: "path" });
        }
        if self.master_key_file.as_os_str().is_empty() {
            return Err(StoreConfigError::EmptyPath {
                key: "master_key_file",
            });
        }
        if self.retention.interval_s == 0 {
            return Err(StoreConfigError::ZeroInterval);
        }
        if self.retention.max_age_days > 36_500 {
            return Err(StoreConfigError::AgeTooLarge(self.retention.max_age_days));
        }
        if self.backend == StoreBackend::Postgres {
            if self.postgres.url.is_empty() {
                return Err(StoreConfigError::EmptyPath {
                    key: "postgres.url",
                });
            }
            if !is_sql_name(&self.postgres.schema) {
                return Err(StoreConfigError::SchemaName(self.postgres.schema.clone()));
            }
        }
        Ok(())
    }
}

/// A name that can be put into SQL unquoted: ASCII letters, digits and `_`, not starting with
/// a digit, at most 63 bytes (PostgreSQL's identifier limit).
pub fn is_sql_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl RetentionConfig {
    pub fn policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            max_age_s: (self.max_age_days > 0).then(|| self.max_age_days * 86_400),
            max_bytes: (self.max_bytes > 0).then_some(self.max_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_documents_the_defaults() {
        let doc: toml::Table =
            toml::from_str(include_str!("../../../config/cortex.example.toml")).unwrap();
        let config: StoreConfig = doc["store"].clone().try_into().unwrap();
        assert_eq!(config, StoreConfig::default());
        let unknown: Result<StoreConfig, _> = toml::from_str("pth = \"/tmp/x\"");
        assert!(unknown.is_err());
    }

    #[test]
    fn defaults_validate_and_zero_means_unlimited() {
        let mut config = StoreConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.retention.policy().max_age_s, Some(30 * 86_400));
        config.retention.max_age_days = 0;
        config.retention.max_bytes = 0;
        assert_eq!(config.retention.policy(), RetentionPolicy::default());
        config.retention.interval_s = 0;
        assert_eq!(config.validate(), Err(StoreConfigError::ZeroInterval));
    }

    #[test]
    fn a_postgres_schema_must_be_a_plain_name() {
        let mut config = StoreConfig {
            backend: StoreBackend::Postgres,
            ..Default::default()
        };
        assert_eq!(config.validate(), Ok(()));
        for bad in [
            "",
            "1qsc",
            "qsc; DROP TABLE events",
            "q\"sc",
            &"x".repeat(64),
        ] {
            config.postgres.schema = bad.to_owned();
            assert!(
                matches!(config.validate(), Err(StoreConfigError::SchemaName(_))),
                "{bad}"
            );
        }
    }
}
