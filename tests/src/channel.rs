//! Driving the real `cortex serve` from the end-to-end tests: a deployment in a test's temporary
//! folder (config, keys made by `cortex keygen`, agents enrolled with `cortex agents add`),
//! starting, SIGKILLing and restarting the service on the same address, and reading back what
//! it stored (`cortex events search`) and its agent key records (`cortex keys list`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use qsc_channel::keys::StaticKeypair;
use qsc_event::Event;
use serde_json::Value;

/// The most events one `cortex events search` returns (the store's query limit).
pub const MAX_EVENTS_READ: usize = 100_000;

/// Runs `cortex --config <config> <args>` with the `cortex` binary at `bin` (the cortex crate's
/// own tests pass theirs, the end-to-end tests the workspace's).
pub fn cortex_cli(bin: &Path, config: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run cortex")
}

/// Like [`cortex_cli`], failing the test unless the command succeeds; returns its stdout.
pub fn cortex_cli_ok(bin: &Path, config: &Path, args: &[&str]) -> String {
    let output = cortex_cli(bin, config, args);
    assert!(
        output.status.success(),
        "cortex {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Enrolls the agent key `public_key_hex` for `host` as `source` (`alpha` or `beta`) with
/// `cortex agents add`, failing the test unless it succeeds.
pub fn cortex_enroll(bin: &Path, config: &Path, host: &str, source: &str, public_key_hex: &str) {
    cortex_cli_ok(
        bin,
        config,
        &[
            "agents",
            "add",
            "--host-id",
            host,
            "--source",
            source,
            "--public-key",
            public_key_hex,
        ],
    );
}

/// A cortex deployment in a folder the test owns: `cortex.toml` and everything it names.
pub struct CortexDeployment {
    dir: PathBuf,
    config: PathBuf,
    /// Tables appended to the generated config (e.g. `[detect]`, `[respond]`, `[score]`).
    extra_config: String,
}

impl CortexDeployment {
    /// Writes the config into `dir` (created if missing) and creates every key with
    /// `cortex keygen`.
    pub fn create(dir: &Path) -> Self {
        Self::create_with(dir, "")
    }

    /// Like [`Self::create`], with `extra_config` (TOML tables the generated config does not
    /// have: `[detect]`, `[respond]`, `[score]`, …) appended.
    pub fn create_with(dir: &Path, extra_config: &str) -> Self {
        std::fs::create_dir_all(dir).expect("create the cortex folder");
        let deployment = CortexDeployment {
            dir: dir.to_path_buf(),
            config: dir.join("cortex.toml"),
            extra_config: extra_config.to_owned(),
        };
        deployment.write_config("127.0.0.1:0", "127.0.0.1:0");
        deployment.cli_ok(&["keygen"]);
        deployment
    }

    /// The config, with the agent channel on `channel_addr` and the API on `api_addr`.
    fn write_config(&self, channel_addr: &str, api_addr: &str) {
        let p = |name: &str| self.dir.join(name).display().to_string();
        let config = format!(
            "[listen]\naddress = \"{channel_addr}\"\n\
             [api]\naddress = \"{api_addr}\"\ntoken_file = \"{}\"\n\
             [agents]\nfile = \"{}\"\nreload_interval_s = 1\n\
             [keys]\nchannel_key_file = \"{}\"\n\
             [store]\npath = \"{}\"\nmaster_key_file = \"{}\"\n\
             [audit]\npath = \"{}\"\nsigning_key_file = \"{}\"\n\
             [anomaly]\nmodels_dir = \"{}\"\n{}",
            p("api.token"),
            p("agents.toml"),
            p("cortex-channel.key"),
            p("cortex.db"),
            p("master.key"),
            p("audit.db"),
            p("audit.key"),
            p("anomaly"),
            self.extra_config,
        );
        std::fs::write(&self.config, config).expect("write cortex.toml");
    }

    /// Runs a `cortex` tool command on this deployment.
    pub fn cli(&self, args: &[&str]) -> Output {
        cortex_cli(&crate::workspace_bin("cortex"), &self.config, args)
    }

    /// Like [`Self::cli`], failing the test unless it succeeds; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        cortex_cli_ok(&crate::workspace_bin("cortex"), &self.config, args)
    }

    /// The cortex's channel public key, hex, for the agents to pin.
    pub fn public_key(&self) -> String {
        StaticKeypair::load(&self.dir.join("cortex-channel.key"))
            .expect("cortex channel key")
            .public()
            .to_hex()
    }

    /// Enrolls an agent key for `host` as `source` (`alpha` or `beta`).
    pub fn enroll(&self, host: &str, source: &str, public_key_hex: &str) {
        cortex_enroll(
            &crate::workspace_bin("cortex"),
            &self.config,
            host,
            source,
            public_key_hex,
        );
    }

    /// Starts `cortex serve` with its agent channel on `channel_addr` (`127.0.0.1:0` for any
    /// port; a restart passes the address the first run got) and its API on any free port.
    /// Then the config names the bound addresses, so the CLI's API commands reach the service.
    pub fn serve(&self, channel_addr: &str) -> RunningCortex {
        self.write_config(channel_addr, "127.0.0.1:0");
        let mut child = Command::new(crate::workspace_bin("cortex"))
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn cortex serve");
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            BufReader::new(stdout)
                .read_line(&mut line)
                .expect("read the LISTENING line");
        }
        let bound = |key: &str| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(key))
                .unwrap_or_else(|| panic!("cortex serve printed {line:?}, not LISTENING {key}…"))
                .to_owned()
        };
        let (channel, api) = (bound("channel="), bound("api="));
        self.write_config(&channel, &api);
        RunningCortex {
            addr: channel,
            child,
        }
    }

    /// The events stored for `host`, oldest first, decrypted by `cortex events search`.
    pub fn events(&self, host: &str) -> Vec<Event> {
        let limit = MAX_EVENTS_READ.to_string();
        self.cli_ok(&["events", "search", "--host", host, "--limit", &limit])
            .lines()
            .map(|line| Event::from_json(line.as_bytes()).expect("cortex printed a valid event"))
            .collect()
    }

    /// `cortex actions list --json` for `host`: its response actions, most recent first.
    pub fn actions(&self, host: &str) -> Vec<Value> {
        let text = self.cli_ok(&["actions", "list", "--host", host, "--json"]);
        let list: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("actions list: {e}: {text}"));
        list.as_array().cloned().unwrap_or_default()
    }

    /// `cortex keys list --json`: one record per agent key.
    pub fn keys(&self) -> Value {
        let text = self.cli_ok(&["keys", "list", "--json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("keys list: {e}: {text}"))
    }

    /// The lifecycle state the cortex records for `public_key` (hex), if it knows the key.
    pub fn key_state(&self, public_key: &str) -> Option<String> {
        let keys = self.keys();
        keys["records"].as_array()?.iter().find_map(|record| {
            (record["public_key"] == public_key)
                .then(|| record["state"].as_str().unwrap_or_default().to_owned())
        })
    }
}

/// The public key of the agent key file at `path`, hex.
pub fn key_hex(path: &Path) -> String {
    StaticKeypair::load(path)
        .expect("agent key file")
        .public()
        .to_hex()
}

/// A running `cortex serve`; SIGKILLed when dropped.
pub struct RunningCortex {
    child: Child,
    /// Where its agent channel listens.
    pub addr: String,
}

impl RunningCortex {
    /// SIGKILLs the service (no chance to flush anything it has not made durable).
    pub fn kill(&mut self) {
        // It may have exited already; then there is nothing to kill.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RunningCortex {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 50 ms until it is true or `timeout` passed.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}
