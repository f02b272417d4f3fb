//! The agent's TOML configuration. Every key is documented in
//! `config/guardian-alpha.example.toml`; unknown keys are rejected so typos surface at start.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This host's id in events; defaults to the hostname.
    pub host_id: Option<String>,
    /// Where events go: "-" for stdout, a file path (appended to), or "none" (cortex only).
    pub output: String,
    /// The agent's scheduling niceness (-20..=19), set at start for all its threads.
    pub nice: i32,
    pub sensor: SensorConfig,
    pub metrics: MetricsConfig,
    pub forensics: ForensicsConfig,
    pub network: NetworkConfig,
    pub enforce: EnforceConfig,
    /// Watched path prefixes; the longest matching prefix decides what is reported.
    pub watch: Vec<WatchRule>,
    /// The uplink to the cortex (off unless `enabled`).
    pub cortex: qsc_channel::uplink::CortexSettings,
    /// Response actions the cortex asks for, and the guardrails around them.
    pub respond: RespondConfig,
}

/// `[respond]`: where quarantined files go and what no response action may touch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RespondConfig {
    /// Folder (created 0700) that receives quarantined files and their JSON sidecars.
    pub quarantine_dir: PathBuf,
    /// Executable or command names never killed, in addition to the built-in
    /// `guardian-alpha`, `guardian-beta` and `cortex`.
    pub protected_processes: Vec<String>,
    /// Accounts never locked.
    pub protected_users: Vec<String>,
    /// Allow locking root and accounts with a uid below 1000.
    pub allow_system_users: bool,
    /// Addresses never blocked, in addition to the cortex's.
    pub protected_addresses: Vec<std::net::IpAddr>,
    /// The nftables command (isolation, and address blocking without the cgroup programs).
    pub nft: PathBuf,
    /// Accounts revoked in the kernel (JSON, 0600): a restarted agent refuses them again.
    pub revoked_accounts_file: PathBuf,
}

impl Default for RespondConfig {
    fn default() -> Self {
        RespondConfig {
            quarantine_dir: "/var/lib/qsc/quarantine".into(),
            protected_processes: Vec::new(),
            protected_users: Vec::new(),
            allow_system_users: false,
            protected_addresses: Vec::new(),
            nft: "nft".into(),
            revoked_accounts_file: "/var/lib/qsc/revoked-accounts.json".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorConfig {
    /// Kernel object to load instead of the embedded one.
    pub ebpf_object: Option<PathBuf>,
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
    /// How often the per-CPU loss counters are turned into `event_loss` events.
    pub loss_report_interval_ms: u64,
    /// Where tracefs is mounted.
    pub tracefs: PathBuf,
    /// Records wake the agent only once this many bytes wait in the ring buffer (0: every
    /// record wakes it). At most a quarter of the ring buffer is used, so a small ring buffer
    /// still wakes the agent well before it fills.
    pub wakeup_bytes: u64,
    /// The longest a record waits in the ring buffer before the agent drains it anyway.
    pub max_delay_ms: u64,
    /// Record kinds that wake the agent at once, batching or not, so that neither
    /// `wakeup_bytes` nor `max_delay_ms` delays an action on them. Not exec by default: its
    /// volume on busy hosts would cost a wake-up each (see the example config).
    pub wake_at_once: Vec<crate::sensor::WakeKind>,
    /// Least time between two wake-ups the `wake_at_once` kinds force from one CPU (µs; 0: one
    /// per record). The agent drains again this long after each wake-up, so a record inside
    /// the spacing waits about this long (rounded up to the timer's millisecond) instead of a
    /// batch, and a burst costs one wake-up per spacing instead of one per record.
    pub wake_spacing_us: u64,
    /// Hook families not attached at all (their events are then never reported).
    pub disabled_hooks: Vec<crate::sensor::HookFamily>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Seconds between host metrics samples; 0 turns sampling off.
    pub interval_s: u64,
    /// Auth logs read for failed logins (the first that exists is used).
    pub auth_logs: Vec<PathBuf>,
    /// Milliseconds between reads of the auth log's new lines; 0 stops following it. Login
    /// events wait at most this long, so a credential-stuffing playbook is not held to the
    /// metrics interval.
    pub auth_log_poll_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForensicsConfig {
    /// Seconds between full scans of every process's memory map for W+X regions; 0 = only on
    /// RWX mmap/mprotect events.
    pub scan_interval_s: u64,
}

/// `[network]`: volume accounting (`net_volume` events).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Seconds per volume interval (sock_diag poll and sums); 0 turns volume reporting off.
    pub volume_interval_s: u64,
    /// Bytes out or in of one (process, remote address) in one interval that make an event.
    pub volume_min_bytes: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            volume_interval_s: 10,
            volume_min_bytes: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WatchRule {
    /// An absolute path prefix. `*` as a whole path component is expanded at start-up
    /// (e.g. `/home/*/.ssh/`).
    pub prefix: String,
    /// Report read-only opens.
    #[serde(default)]
    pub reads: bool,
    /// Report writes, creations, truncations, chmod, chown, unlink and rename.
    #[serde(default = "yes")]
    pub modifications: bool,
}

fn yes() -> bool {
    true
}

fn rule(prefix: &str, reads: bool, modifications: bool) -> WatchRule {
    WatchRule {
        prefix: prefix.into(),
        reads,
        modifications,
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host_id: None,
            output: "-".into(),
            nice: -10,
            sensor: SensorConfig::default(),
            metrics: MetricsConfig::default(),
            forensics: ForensicsConfig::default(),
            network: NetworkConfig::default(),
            enforce: EnforceConfig::default(),
            watch: vec![
                rule("/etc/", false, true),
                rule("/etc/shadow", true, true),
                rule("/etc/gshadow", true, true),
                rule("/etc/sudoers", true, true),
                rule("/etc/ssh/", false, true),
                rule("/root/", false, true),
                rule("/root/.ssh/", true, true),
                rule("/home/*/.ssh/", true, true),
                rule("/var/spool/cron/", false, true),
                rule("/etc/cron.d/", false, true),
                rule("/var/backups/", false, true),
                rule("/usr/bin/", false, true),
                rule("/usr/sbin/", false, true),
                rule("/usr/lib/systemd/system/", false, true),
                rule("/etc/ld.so.preload", true, true),
            ],
            cortex: Default::default(),
            respond: RespondConfig::default(),
        }
    }
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            ebpf_object: None,
            ring_buffer_bytes: 8 * 1024 * 1024,
            loss_report_interval_ms: 1000,
            tracefs: "/sys/kernel/tracing".into(),
            wakeup_bytes: 64 * 1024,
            max_delay_ms: 10,
            wake_at_once: {
                use crate::sensor::WakeKind::{Enforce, Net, Priv, Signal};
                vec![Net, Priv, Signal, Enforce]
            },
            wake_spacing_us: 1000,
            disabled_hooks: Vec::new(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            interval_s: 10,
            auth_logs: vec!["/var/log/auth.log".into(), "/var/log/secure".into()],
            auth_log_poll_ms: 250,
        }
    }
}

/// Enforcement in the kernel: static block lists (the cortex adds and removes entries at run
/// time as response actions).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnforceConfig {
    /// The cgroup v2 folder whose processes (and those below it) are subject to address
    /// blocking. Default: the v2 root (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
    pub cgroup: Option<PathBuf>,
    /// Turn the address-blocking programs off entirely.
    pub disable_address_blocking: bool,
    /// Addresses no process may connect or send to (IPv4-mapped IPv6 included).
    pub blocked_ips: Vec<std::net::IpAddr>,
    /// Executable paths (exactly as passed to execve) whose exec kills the caller.
    pub blocked_exec: Vec<String>,
}

impl Default for ForensicsConfig {
    fn default() -> Self {
        ForensicsConfig {
            scan_interval_s: 60,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: key.into(),
            reason,
        };
        if !(-20..=19).contains(&self.nice) {
            return Err(invalid("nice", format!("{} is not in -20..=19", self.nice)));
        }
        let ring = self.sensor.ring_buffer_bytes;
        if !ring.is_power_of_two() || ring < 4096 {
            return Err(invalid(
                "sensor.ring_buffer_bytes",
                format!("{ring} is not a power of two of at least 4096"),
            ));
        }
        if self.sensor.max_delay_ms == 0 {
            return Err(invalid("sensor.max_delay_ms", "must be at least 1".into()));
        }
        if self.sensor.wake_spacing_us > self.sensor.max_delay_ms.saturating_mul(1000) {
            return Err(invalid(
                "sensor.wake_spacing_us",
                format!(
                    "{} µs is longer than max_delay_ms ({} ms): a record would wait longer at once than batched",
                    self.sensor.wake_spacing_us, self.sensor.max_delay_ms
                ),
            ));
        }
        if self.network.volume_min_bytes == 0 {
            return Err(invalid(
                "network.volume_min_bytes",
                "must be at least 1".into(),
            ));
        }
        for rule in &self.watch {
            if !rule.prefix.starts_with('/') {
                return Err(invalid(
                    "watch.prefix",
                    format!("`{}` is not an absolute path", rule.prefix),
                ));
            }
            if rule.prefix.len() >= guardian_alpha_common::PATH_CAPTURE {
                return Err(invalid(
                    "watch.prefix",
                    format!("`{}` is longer than 255 bytes", rule.prefix),
                ));
            }
        }
        if !self.respond.quarantine_dir.is_absolute() {
            return Err(invalid(
                "respond.quarantine_dir",
                format!(
                    "`{}` is not an absolute path",
                    self.respond.quarantine_dir.display()
                ),
            ));
        }
        if let Some(host) = &self.host_id
            && (host.is_empty() || host.len() > qsc_event::MAX_HOST_ID_LEN)
        {
            return Err(invalid("host_id", "must be 1 to 128 bytes".into()));
        }
        self.validate_outputs()
    }

    fn validate_outputs(&self) -> Result<(), ConfigError> {
        if self.output.is_empty() {
            return Err(ConfigError::Invalid {
                key: "output".into(),
                reason: "must be \"-\", a file path or \"none\"".into(),
            });
        }
        if self.output == crate::output::NO_LOCAL_OUTPUT && !self.cortex.enabled {
            return Err(ConfigError::Invalid {
                key: "output".into(),
                reason: "\"none\" needs the cortex uplink on, or events would go nowhere".into(),
            });
        }
        self.cortex.validate().map_err(|err| match err {
            qsc_channel::uplink::UplinkError::Setting { key, reason } => ConfigError::Invalid {
                key: key.into(),
                reason,
            },
            other => ConfigError::Invalid {
                key: "cortex".into(),
                reason: other.to_string(),
            },
        })
    }

    pub fn host_id(&self) -> String {
        self.host_id.clone().unwrap_or_else(hostname)
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Expands `*` path components against the file system (e.g. `/home/*/.ssh/`).
pub fn expand_prefix(prefix: &str) -> Vec<String> {
    let Some((head, tail)) = prefix.split_once("/*/") else {
        return vec![prefix.to_owned()];
    };
    let Ok(dir) = std::fs::read_dir(if head.is_empty() { "/" } else { head }) else {
        return Vec::new();
    };
    let mut expanded: Vec<String> = dir
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .flat_map(|name| expand_prefix(&format!("{head}/{name}/{tail}")))
        .collect();
    expanded.sort();
    expanded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_example_file_parses() {
        Config::default().validate().unwrap();
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/guardian-alpha.example.toml"
        );
        let config = Config::load(Path::new(example)).unwrap();
        assert_eq!(config.watch, Config::default().watch);
        assert_eq!(config.nice, Config::default().nice);
        let defaults = NetworkConfig::default();
        assert_eq!(
            (
                config.network.volume_interval_s,
                config.network.volume_min_bytes
            ),
            (defaults.volume_interval_s, defaults.volume_min_bytes)
        );
        assert_eq!(
            (&config.sensor.wake_at_once, config.sensor.wake_spacing_us),
            (
                &Config::default().sensor.wake_at_once,
                Config::default().sensor.wake_spacing_us
            )
        );
    }

    #[test]
    fn wake_at_once_names_record_kinds_and_becomes_the_kernel_mask() {
        use crate::sensor::WakeKind;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, "[sensor]\nwake_at_once = [\"exec\", \"net\"]\n").unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.sensor.wake_at_once, [WakeKind::Exec, WakeKind::Net]);
        // Bits 1 << RecordKind: exec = 1, net = 6.
        assert_eq!(WakeKind::mask(&config.sensor.wake_at_once), 0b100_0010);
        assert_eq!(WakeKind::mask(&[]), 0);
        std::fs::write(&path, "[sensor]\nwake_at_once = [\"connect\"]\n").unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, "outptu = \"-\"\n").unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Parse { .. })
        ));
        std::fs::write(&path, "[sensor]\nring_buffer_bytes = 1000\n").unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Invalid { .. })
        ));
        std::fs::write(
            &path,
            "[sensor]\nmax_delay_ms = 2\nwake_spacing_us = 2001\n",
        )
        .unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Invalid { .. })
        ));
        std::fs::write(&path, "nice = -21\n").unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Invalid { .. })
        ));
        std::fs::write(&path, "[network]\nvolume_min_bytes = 0\n").unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Invalid { .. })
        ));
        std::fs::write(&path, "[[watch]]\nprefix = \"etc/\"\n").unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn hook_families_are_named_and_checked() {
        use crate::sensor::HookFamily;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(
            &path,
            "[sensor]\ndisabled_hooks = [\"file\", \"exec_blocking\"]\n",
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(
            config.sensor.disabled_hooks,
            [HookFamily::File, HookFamily::ExecBlocking]
        );
        std::fs::write(&path, "[sensor]\ndisabled_hooks = [\"files\"]\n").unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn cortex_settings_are_validated_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        let key_of = |text: &str| {
            std::fs::write(&path, text).unwrap();
            match Config::load(&path) {
                Err(ConfigError::Invalid { key, .. }) => key,
                other => panic!("{text}: expected an invalid key, got {other:?}"),
            }
        };
        assert_eq!(key_of("output = \"none\"\n"), "output");
        assert_eq!(
            key_of("[cortex]\nenabled = true\naddress = \"cortex:7700\"\n"),
            "cortex.cortex_public_key"
        );
        assert_eq!(
            key_of("[cortex]\nenabled = true\naddress = \"cortex\"\n"),
            "cortex.address"
        );
        std::fs::write(&path, "[cortex]\nadress = \"cortex:7700\"\n").unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Parse { .. })
        ));
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/guardian-alpha.example.toml"
        );
        let cortex = Config::load(Path::new(example)).unwrap().cortex;
        assert!(!cortex.enabled);
        assert_eq!(
            cortex.overflow,
            qsc_channel::delivery::OverflowPolicy::DropOldest
        );
    }

    #[test]
    fn expands_star_components() {
        let dir = tempfile::tempdir().unwrap();
        for user in ["alice", "bob"] {
            std::fs::create_dir_all(dir.path().join(user).join(".ssh")).unwrap();
        }
        let pattern = format!("{}/*/.ssh/", dir.path().display());
        let expanded = expand_prefix(&pattern);
        assert_eq!(
            expanded,
            [
                format!("{}/alice/.ssh/", dir.path().display()),
                format!("{}/bob/.ssh/", dir.path().display())
            ]
        );
        assert_eq!(expand_prefix("/etc/"), ["/etc/"]);
    }
}
