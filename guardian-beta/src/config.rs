//! The TOML configuration: what to watch, where the store and keys live, and the checks to run.
//!
//! Every key is documented in `config/guardian-beta.example.toml`. [`Config::load`] parses and
//! validates the whole file before anything runs, so a bad value never leads to a half-done job.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/qsc/guardian-beta.toml";
/// Default certificate bundle of Debian's `ca-certificates` package.
pub const DEFAULT_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML for guardian-beta: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("config key `{key}` is invalid: {reason}")]
    Invalid { key: String, reason: String },
}

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Host id put in every event; defaults to the kernel hostname.
    #[serde(default)]
    pub host_id: Option<String>,
    /// The encrypted and signed baseline store.
    #[serde(default = "default_store")]
    pub store: PathBuf,
    /// The key file holding the store's AES-256-GCM and Ed25519 keys.
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// Where protected known-good copies of `heal = true` files are kept.
    #[serde(default = "default_heal_dir")]
    pub heal_dir: PathBuf,
    /// Hashing threads; 0 means one per CPU.
    #[serde(default)]
    pub workers: usize,
    /// Regular files larger than this are recorded with their metadata but not hashed.
    #[serde(default = "default_max_file_size")]
    pub max_file_size: u64,
    #[serde(default, rename = "tree")]
    pub trees: Vec<TreeConfig>,
    #[serde(default)]
    pub watch: WatchConfig,
    #[serde(default, rename = "backup")]
    pub backups: Vec<BackupConfig>,
    #[serde(default)]
    pub cert: CertConfig,
    /// The uplink to the cortex (off unless `enabled`).
    #[serde(default)]
    pub cortex: qsc_channel::uplink::CortexSettings,
}

/// One directory tree under the baseline.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeConfig {
    pub path: PathBuf,
    /// Absolute paths inside the tree that are skipped together with everything below them.
    #[serde(default)]
    pub exclude: Vec<PathBuf>,
    /// Also compute SHA-256's successor SHA3-256 for every file (same read pass).
    #[serde(default)]
    pub compliance: bool,
    /// Restore tampered files from the protected known-good copy.
    #[serde(default)]
    pub heal: bool,
    /// Do not descend into other mounted file systems.
    #[serde(default = "default_true")]
    pub one_file_system: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// Seconds between full re-hashing checks while watching (the safety net).
    #[serde(default = "default_full_check_interval")]
    pub full_check_interval_s: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    pub name: String,
    pub path: PathBuf,
    /// Known-good SHA3-256 manifest (`<hex>  <relative path>` lines).
    pub manifest: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    #[serde(default = "default_warn_days")]
    pub warn_days: i64,
    /// PEM bundle of trusted roots.
    #[serde(default = "default_ca_bundle")]
    pub ca_bundle: PathBuf,
    /// CRL files or `http://` URLs, PEM or DER.
    #[serde(default)]
    pub crls: Vec<String>,
    /// Connect, handshake and CRL fetch timeout.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    #[serde(default, rename = "target")]
    pub targets: Vec<CertTarget>,
}

/// A certificate file or a TLS endpoint to check.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertTarget {
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `host:port` of a live TLS endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Name expected in the certificate; defaults to the endpoint's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

fn default_store() -> PathBuf {
    PathBuf::from("/var/lib/qsc/guardian-beta/baseline.qsb")
}
fn default_key_file() -> PathBuf {
    PathBuf::from("/etc/qsc/guardian-beta.key")
}
fn default_heal_dir() -> PathBuf {
    PathBuf::from("/var/lib/qsc/guardian-beta/heal")
}
fn default_max_file_size() -> u64 {
    1 << 30
}
fn default_true() -> bool {
    true
}
fn default_full_check_interval() -> u64 {
    3600
}
fn default_warn_days() -> i64 {
    30
}
fn default_ca_bundle() -> PathBuf {
    PathBuf::from(DEFAULT_CA_BUNDLE)
}
fn default_timeout() -> u64 {
    10
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            full_check_interval_s: default_full_check_interval(),
        }
    }
}

impl Default for CertConfig {
    fn default() -> Self {
        CertConfig {
            warn_days: default_warn_days(),
            ca_bundle: default_ca_bundle(),
            crls: Vec::new(),
            timeout_s: default_timeout(),
            targets: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host_id: None,
            store: default_store(),
            key_file: default_key_file(),
            heal_dir: default_heal_dir(),
            workers: 0,
            max_file_size: default_max_file_size(),
            trees: Vec::new(),
            watch: WatchConfig::default(),
            backups: Vec::new(),
            cert: CertConfig::default(),
            cortex: Default::default(),
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; the error names the key and what is wrong with it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(host_id) = &self.host_id {
            validate_host_id(host_id)?;
        }
        require_absolute("store", &self.store)?;
        require_absolute("key_file", &self.key_file)?;
        require_absolute("heal_dir", &self.heal_dir)?;
        if self.workers > 1024 {
            return Err(invalid("workers", "must be 0 (one per CPU) up to 1024"));
        }
        if self.max_file_size == 0 {
            return Err(invalid("max_file_size", "must be greater than 0"));
        }
        for (i, tree) in self.trees.iter().enumerate() {
            validate_tree(i, tree)?;
        }
        if self.watch.full_check_interval_s == 0 {
            return Err(invalid(
                "watch.full_check_interval_s",
                "must be at least 1 second",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, backup) in self.backups.iter().enumerate() {
            if backup.name.is_empty() || !names.insert(backup.name.as_str()) {
                return Err(invalid(
                    &format!("backup[{i}].name"),
                    "must be non-empty and unique",
                ));
            }
            require_absolute(&format!("backup[{i}].path"), &backup.path)?;
            require_absolute(&format!("backup[{i}].manifest"), &backup.manifest)?;
        }
        self.validate_cert()?;
        self.cortex.validate().map_err(|e| match e {
            qsc_channel::uplink::UplinkError::Setting { key, reason } => invalid(key, &reason),
            other => invalid("cortex", &other.to_string()),
        })
    }

    fn validate_cert(&self) -> Result<(), ConfigError> {
        if !(0..=3650).contains(&self.cert.warn_days) {
            return Err(invalid("cert.warn_days", "must be between 0 and 3650"));
        }
        if self.cert.timeout_s == 0 || self.cert.timeout_s > 300 {
            return Err(invalid("cert.timeout_s", "must be between 1 and 300"));
        }
        for (i, target) in self.cert.targets.iter().enumerate() {
            if target.path.is_some() == target.endpoint.is_some() {
                return Err(invalid(
                    &format!("cert.target[{i}]"),
                    "set exactly one of `path` or `endpoint`",
                ));
            }
        }
        Ok(())
    }

    /// The host id from the config, else the kernel hostname.
    pub fn resolved_host_id(&self) -> Result<String, ConfigError> {
        match &self.host_id {
            Some(id) => Ok(id.clone()),
            None => {
                let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map_err(|e| invalid("host_id", &format!("cannot read the hostname: {e}")))?;
                let name = name.trim().to_string();
                validate_host_id(&name).map_err(|_| {
                    invalid(
                        "host_id",
                        &format!("the hostname {name:?} is not a valid host id; set host_id"),
                    )
                })?;
                Ok(name)
            }
        }
    }

    /// The tree a path belongs to (the most specific one).
    pub fn tree_of(&self, path: &Path) -> Option<&TreeConfig> {
        self.trees
            .iter()
            .filter(|tree| path.starts_with(&tree.path))
            .max_by_key(|tree| tree.path.as_os_str().len())
    }
}

fn validate_tree(i: usize, tree: &TreeConfig) -> Result<(), ConfigError> {
    require_absolute(&format!("tree[{i}].path"), &tree.path)?;
    for exclude in &tree.exclude {
        require_absolute(&format!("tree[{i}].exclude"), exclude)?;
        if !exclude.starts_with(&tree.path) {
            return Err(invalid(
                &format!("tree[{i}].exclude"),
                &format!(
                    "{} is not inside {}",
                    exclude.display(),
                    tree.path.display()
                ),
            ));
        }
    }
    Ok(())
}

fn validate_host_id(host_id: &str) -> Result<(), ConfigError> {
    let ok = !host_id.is_empty()
        && host_id.len() <= qsc_event::MAX_HOST_ID_LEN
        && host_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "host_id",
            "must be 1-128 ASCII letters, digits, '-', '_' or '.'",
        ))
    }
}

fn require_absolute(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(invalid(
            key,
            &format!("{} must be an absolute path", path.display()),
        ))
    }
}

fn invalid(key: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::from("test.toml"),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn example_config_is_valid() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/guardian-beta.example.toml");
        let config = Config::load(&path).unwrap();
        assert!(!config.trees.is_empty());
        assert_eq!(config.cert.warn_days, 30);
    }

    #[test]
    fn defaults_apply() {
        let config = parse("[[tree]]\npath = \"/etc\"\n").unwrap();
        assert_eq!(config.max_file_size, 1 << 30);
        assert!(config.trees[0].one_file_system);
        assert!(!config.trees[0].compliance);
        assert_eq!(config.watch.full_check_interval_s, 3600);
    }

    #[test]
    fn rejects_bad_values_with_the_key_name() {
        let cases = [
            ("[[tree]]\npath = \"etc\"\n", "tree[0].path"),
            ("host_id = \"bad host\"\n", "host_id"),
            ("max_file_size = 0\n", "max_file_size"),
            (
                "[[tree]]\npath = \"/etc\"\nexclude = [\"/var\"]\n",
                "tree[0].exclude",
            ),
            ("[[cert.target]]\n", "cert.target[0]"),
            (
                "[watch]\nfull_check_interval_s = 0\n",
                "watch.full_check_interval_s",
            ),
        ];
        for (text, key) in cases {
            match parse(text) {
                Err(ConfigError::Invalid { key: found, .. }) => assert_eq!(found, key, "{text}"),
                other => panic!("{text}: expected invalid {key}, got {other:?}"),
            }
        }
        assert!(matches!(
            parse("unknown_key = 1\n"),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn tree_of_picks_the_most_specific_tree() {
        let config =
            parse("[[tree]]\npath = \"/srv\"\n[[tree]]\npath = \"/srv/app\"\nheal = true\n")
                .unwrap();
        assert!(config.tree_of(Path::new("/srv/app/x")).unwrap().heal);
        assert!(!config.tree_of(Path::new("/srv/other")).unwrap().heal);
        assert!(config.tree_of(Path::new("/etc")).is_none());
    }
}
