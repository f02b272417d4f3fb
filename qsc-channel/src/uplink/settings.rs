//! The agents' `[cortex]` TOML table: where the cortex is, which key it must present, the
//! agent's own key and the outbox. Both agents embed it in their configuration file; the keys
//! are documented in `config/guardian-alpha.example.toml` and `config/guardian-beta.example.toml`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::UplinkError;
use crate::delivery::{ClientConfig, FsyncPolicy, OutboxConfig, OverflowPolicy};
use crate::keys::{PublicKeyBytes, StaticKeypair};

/// The smallest outbox accepted: room for a burst of events while the cortex restarts.
pub const MIN_OUTBOX_BYTES: u64 = 1 << 20;
const MAX_SEGMENT_BYTES: u64 = 16 << 20;
/// A public key file holds one 64-hex-character line; anything much larger is not one.
const MAX_PUBLIC_KEY_FILE_BYTES: u64 = 4096;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CortexSettings {
    /// Send events to the cortex (they still go to the agent's local output too).
    pub enabled: bool,
    /// `host:port` of the cortex.
    pub address: String,
    /// Further `host:port`s of the cortex (gateway replicas), tried in turn when one is down.
    pub fallback_addresses: Vec<String>,
    /// The pinned cortex public key, 64 hex characters.
    pub cortex_public_key: Option<String>,
    /// A file holding the pinned cortex public key (64 hex characters).
    pub cortex_public_key_file: Option<PathBuf>,
    /// The agent's 0600 secret key file; default `/etc/qsc/<agent>-channel.key`.
    pub key_file: Option<PathBuf>,
    /// The durable outbox directory; default `/var/lib/qsc/<agent>/outbox`.
    pub outbox_dir: Option<PathBuf>,
    pub outbox_max_bytes: u64,
    pub overflow: OverflowPolicy,
    pub fsync: FsyncPolicy,
    /// How long a stopping agent waits for the cortex to acknowledge what it sent.
    pub drain_timeout_ms: u64,
}

impl Default for CortexSettings {
    fn default() -> Self {
        let outbox = OutboxConfig::new("");
        CortexSettings {
            enabled: false,
            address: String::new(),
            fallback_addresses: Vec::new(),
            cortex_public_key: None,
            cortex_public_key_file: None,
            key_file: None,
            outbox_dir: None,
            outbox_max_bytes: outbox.max_bytes,
            overflow: outbox.overflow,
            fsync: outbox.fsync,
            drain_timeout_ms: 5000,
        }
    }
}

/// Everything [`super::Uplink::start`] needs, with keys loaded.
#[derive(Clone, Debug)]
pub struct UplinkConfig {
    pub client: ClientConfig,
    pub outbox: OutboxConfig,
    /// The file the agent's key was loaded from; key rotation replaces it. Without it the
    /// agent refuses `rotate_keys`.
    pub key_file: Option<PathBuf>,
}

fn invalid(key: &'static str, reason: impl Into<String>) -> UplinkError {
    UplinkError::Setting {
        key,
        reason: reason.into(),
    }
}

fn require_absolute(key: &'static str, path: Option<&Path>) -> Result<(), UplinkError> {
    match path {
        Some(p) if !p.is_absolute() => Err(invalid(
            key,
            format!("`{}` is not an absolute path", p.display()),
        )),
        _ => Ok(()),
    }
}

/// Checks that `address` (the value of `key`) is `host:port` with a non-empty host and a
/// non-zero port.
fn validate_address(key: &'static str, address: &str) -> Result<(), UplinkError> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(invalid(key, format!("`{address}` is not host:port")));
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 && !host.is_empty() => Ok(()),
        _ => Err(invalid(
            key,
            format!("`{address}` is not host:port with a port from 1 to 65535"),
        )),
    }
}

impl CortexSettings {
    /// Checks every value that is set; an enabled uplink also needs an address and exactly
    /// one way to pin the cortex key. Key files are read later, by [`Self::resolve`].
    pub fn validate(&self) -> Result<(), UplinkError> {
        if self.enabled || !self.address.is_empty() {
            validate_address("cortex.address", &self.address)?;
        }
        for fallback in &self.fallback_addresses {
            validate_address("cortex.fallback_addresses", fallback)?;
        }
        if let Some(hex) = &self.cortex_public_key {
            PublicKeyBytes::from_hex(hex)
                .map_err(|e| invalid("cortex.cortex_public_key", e.to_string()))?;
        }
        let pins = (
            self.cortex_public_key.is_some(),
            self.cortex_public_key_file.is_some(),
        );
        match pins {
            (true, true) => {
                return Err(invalid(
                    "cortex.cortex_public_key",
                    "set either cortex_public_key or cortex_public_key_file, not both",
                ));
            }
            (false, false) if self.enabled => {
                return Err(invalid(
                    "cortex.cortex_public_key",
                    "the cortex key must be pinned: set cortex_public_key or cortex_public_key_file",
                ));
            }
            _ => {}
        }
        require_absolute(
            "cortex.cortex_public_key_file",
            self.cortex_public_key_file.as_deref(),
        )?;
        require_absolute("cortex.key_file", self.key_file.as_deref())?;
        require_absolute("cortex.outbox_dir", self.outbox_dir.as_deref())?;
        if self.outbox_max_bytes < MIN_OUTBOX_BYTES {
            return Err(invalid(
                "cortex.outbox_max_bytes",
                format!("must be at least {MIN_OUTBOX_BYTES} (1 MiB)"),
            ));
        }
        Ok(())
    }

    /// The agent key file, or the default for `agent` (e.g. `guardian-beta`).
    pub fn key_file_for(&self, agent: &str) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/etc/qsc/{agent}-channel.key")))
    }

    pub fn outbox_dir_for(&self, agent: &str) -> PathBuf {
        self.outbox_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/var/lib/qsc/{agent}/outbox")))
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// Validates, loads the agent key (refused unless 0600) and the pinned cortex key.
    pub fn resolve(&self, agent: &str) -> Result<UplinkConfig, UplinkError> {
        self.validate()?;
        let cortex_key = self.pinned_cortex_key()?;
        let key_file = self.key_file_for(agent);
        let keypair = StaticKeypair::load(&key_file)?;
        let mut outbox = OutboxConfig::new(self.outbox_dir_for(agent));
        outbox.max_bytes = self.outbox_max_bytes;
        outbox.segment_bytes = (self.outbox_max_bytes / 8).min(MAX_SEGMENT_BYTES);
        outbox.overflow = self.overflow;
        outbox.fsync = self.fsync;
        let mut client = ClientConfig::new(self.address.clone(), cortex_key, keypair);
        client.fallback_addrs = self.fallback_addresses.clone();
        Ok(UplinkConfig {
            client,
            outbox,
            key_file: Some(key_file),
        })
    }

    fn pinned_cortex_key(&self) -> Result<PublicKeyBytes, UplinkError> {
        if let Some(hex) = &self.cortex_public_key {
            return PublicKeyBytes::from_hex(hex)
                .map_err(|e| invalid("cortex.cortex_public_key", e.to_string()));
        }
        let Some(path) = &self.cortex_public_key_file else {
            return Err(invalid(
                "cortex.cortex_public_key",
                "the cortex key must be pinned: set cortex_public_key or cortex_public_key_file",
            ));
        };
        read_public_key_file(path)
    }
}

/// Reads a file holding one public key in hex; `#` comment lines and blank lines are ignored.
pub fn read_public_key_file(path: &Path) -> Result<PublicKeyBytes, UplinkError> {
    use std::io::Read;
    let read_err = |source| UplinkError::PublicKeyFile {
        path: path.to_path_buf(),
        reason: format!("cannot read: {source}"),
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(read_err)?
        .take(MAX_PUBLIC_KEY_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    let key_line = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .unwrap_or_default();
    PublicKeyBytes::from_hex(key_line).map_err(|e| UplinkError::PublicKeyFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_HEX: &str = "0101010101010101010101010101010101010101010101010101010101010101";

    fn enabled() -> CortexSettings {
        CortexSettings {
            enabled: true,
            address: "127.0.0.1:7700".into(),
            cortex_public_key: Some(KEY_HEX.into()),
            ..CortexSettings::default()
        }
    }

    fn rejected_key(settings: &CortexSettings) -> &'static str {
        match settings.validate() {
            Err(UplinkError::Setting { key, .. }) => key,
            other => panic!("expected a setting error, got {other:?}"),
        }
    }

    #[test]
    fn disabled_default_is_valid_and_enabled_needs_address_and_pin() {
        CortexSettings::default().validate().unwrap();
        enabled().validate().unwrap();
        let no_address = CortexSettings {
            address: String::new(),
            ..enabled()
        };
        assert_eq!(rejected_key(&no_address), "cortex.address");
        let no_pin = CortexSettings {
            cortex_public_key: None,
            ..enabled()
        };
        assert_eq!(rejected_key(&no_pin), "cortex.cortex_public_key");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                CortexSettings {
                    address: "cortex:0".into(),
                    ..enabled()
                },
                "cortex.address",
            ),
            (
                CortexSettings {
                    address: "cortex".into(),
                    ..enabled()
                },
                "cortex.address",
            ),
            (
                CortexSettings {
                    fallback_addresses: vec!["cortex-2:7443".into(), "cortex-3".into()],
                    ..enabled()
                },
                "cortex.fallback_addresses",
            ),
            (
                CortexSettings {
                    cortex_public_key: Some("abcd".into()),
                    ..enabled()
                },
                "cortex.cortex_public_key",
            ),
            (
                CortexSettings {
                    cortex_public_key_file: Some("/etc/qsc/cortex.pub".into()),
                    ..enabled()
                },
                "cortex.cortex_public_key",
            ),
            (
                CortexSettings {
                    key_file: Some("agent.key".into()),
                    ..enabled()
                },
                "cortex.key_file",
            ),
            (
                CortexSettings {
                    outbox_dir: Some("outbox".into()),
                    ..enabled()
                },
                "cortex.outbox_dir",
            ),
            (
                CortexSettings {
                    outbox_max_bytes: 1000,
                    ..enabled()
                },
                "cortex.outbox_max_bytes",
            ),
        ];
        for (settings, key) in cases {
            assert_eq!(rejected_key(&settings), key, "{settings:?}");
        }
    }

    #[test]
    fn toml_rejects_unknown_keys_and_policies() {
        assert!(toml::from_str::<CortexSettings>("adress = \"x:1\"").is_err());
        assert!(toml::from_str::<CortexSettings>("overflow = \"drop_some\"").is_err());
        let parsed: CortexSettings = toml::from_str("overflow = \"drop_newest\"").unwrap();
        assert_eq!(parsed.overflow, OverflowPolicy::DropNewest);
    }

    #[test]
    fn resolve_loads_keys_and_sizes_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("agent.key");
        let agent_public = StaticKeypair::generate_file(&key_file).unwrap();
        let pub_file = dir.path().join("cortex.pub");
        std::fs::write(&pub_file, format!("# the cortex\n{KEY_HEX}\n")).unwrap();
        let settings = CortexSettings {
            cortex_public_key: None,
            cortex_public_key_file: Some(pub_file),
            key_file: Some(key_file),
            outbox_dir: Some(dir.path().join("outbox")),
            outbox_max_bytes: 8 << 20,
            ..enabled()
        };
        let config = settings.resolve("guardian-test").unwrap();
        assert_eq!(config.client.keypair.public(), agent_public);
        assert_eq!(config.client.cortex_key.to_hex(), KEY_HEX);
        assert_eq!(config.outbox.segment_bytes, 1 << 20);
        assert_eq!(config.outbox.dir, dir.path().join("outbox"));
    }

    #[test]
    fn resolve_refuses_a_readable_key_file_and_a_bad_pin_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("agent.key");
        StaticKeypair::generate_file(&key_file).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let settings = CortexSettings {
            key_file: Some(key_file),
            ..enabled()
        };
        assert!(matches!(
            settings.resolve("guardian-test"),
            Err(UplinkError::Key(
                crate::keys::KeyError::InsecurePermissions { .. }
            ))
        ));
        let pub_file = dir.path().join("cortex.pub");
        std::fs::write(&pub_file, "not a key\n").unwrap();
        assert!(matches!(
            read_public_key_file(&pub_file),
            Err(UplinkError::PublicKeyFile { .. })
        ));
    }

    #[test]
    fn defaults_are_per_agent() {
        let settings = CortexSettings::default();
        assert_eq!(
            settings.key_file_for("guardian-beta"),
            Path::new("/etc/qsc/guardian-beta-channel.key")
        );
        assert_eq!(
            settings.outbox_dir_for("guardian-alpha"),
            Path::new("/var/lib/qsc/guardian-alpha/outbox")
        );
    }
}
