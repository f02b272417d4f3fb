//! Shared harness of the service tests: a real `cortex serve` process on loopback ports with a
//! temporary state directory, in-test agents using qsc-channel's client, and a tiny HTTP client;
//! [`scale`]: the servers and scratch names of the scale-out tests.

#[allow(dead_code)] // only the scale-out tests use it
pub mod scale;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use qsc_channel::delivery::{
    Client, ClientConfig, CommandHandler, CommandStatus, Outbox, OutboxConfig, OutboxHandle,
};
use qsc_channel::keys::{PublicKeyBytes, StaticKeypair};
use qsc_tests::channel;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_cortex");

/// A cortex state directory with keys, an agents file and a config.
pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Deployment {
    /// Writes a config (channel on `channel_port`, 0 = any) and creates every key with the CLI.
    pub fn new(channel_port: u16) -> Deployment {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = |name: &str| dir.path().join(name).display().to_string();
        let config = format!(
            "[listen]\naddress = \"127.0.0.1:{channel_port}\"\n\
             [api]\naddress = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\
             [agents]\nfile = \"{}\"\nreload_interval_s = 1\n\
             [keys]\nchannel_key_file = \"{}\"\n\
             [store]\npath = \"{}\"\nmaster_key_file = \"{}\"\n\
             [audit]\npath = \"{}\"\nsigning_key_file = \"{}\"\ncheckpoint_interval = 4\n\
             [anomaly]\nmodels_dir = \"{}\"\n",
            p("api.token"),
            p("agents.toml"),
            p("channel.key"),
            p("cortex.db"),
            p("master.key"),
            p("audit.db"),
            p("audit.key"),
            p("anomaly"),
        );
        let config_path = dir.path().join("cortex.toml");
        std::fs::write(&config_path, config).expect("write config");
        let deployment = Deployment {
            dir,
            config: config_path,
        };
        deployment.cli_ok(&["keygen"]);
        deployment
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        channel::cortex_cli(Path::new(BIN), &self.config, args)
    }

    pub fn cli_ok(&self, args: &[&str]) -> String {
        channel::cortex_cli_ok(Path::new(BIN), &self.config, args)
    }

    pub fn cortex_key(&self) -> PublicKeyBytes {
        StaticKeypair::load(&self.path("channel.key"))
            .expect("cortex key")
            .public()
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.path("api.token"))
            .expect("token")
            .trim()
            .to_owned()
    }

    /// Enrolls a fresh agent key; returns the keypair.
    pub fn enroll(&self, host: &str, source: &str) -> StaticKeypair {
        let keypair = StaticKeypair::generate();
        self.enroll_key(host, source, &keypair.public().to_hex());
        keypair
    }

    /// Enrolls the agent key `public_key_hex` for `host` as `source`.
    pub fn enroll_key(&self, host: &str, source: &str, public_key_hex: &str) {
        channel::cortex_enroll(Path::new(BIN), &self.config, host, source, public_key_hex);
    }

    pub fn serve(&self) -> Cortex {
        self.serve_with(&self.config)
    }

    /// Starts `cortex serve` with another config file using this deployment's keys (a replica).
    pub fn serve_with(&self, config: &Path) -> Cortex {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn cortex serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read LISTENING line");
        let mut channel = None;
        let mut api = None;
        for word in line.split_whitespace() {
            if let Some(addr) = word.strip_prefix("channel=") {
                channel = Some(addr.to_owned());
            }
            if let Some(addr) = word.strip_prefix("api=") {
                api = Some(addr.to_owned());
            }
        }
        Cortex {
            child,
            channel: channel.unwrap_or_else(|| panic!("no channel address in {line:?}")),
            api: api.unwrap_or_else(|| panic!("no api address in {line:?}")),
            token: self.token(),
        }
    }
}

/// A running `cortex serve`.
pub struct Cortex {
    pub child: Child,
    pub channel: String,
    pub api: String,
    pub token: String,
}

impl Cortex {
    pub fn get(&self, path: &str) -> (u16, String) {
        http(&self.api, "GET", path, Some(&self.token), None)
    }

    pub fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// The value of one Prometheus series (exact name with labels).
    pub fn metric(&self, series: &str) -> f64 {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200, "{text}");
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child process, which we have not yet reaped.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill SIGTERM");
        let status = self.child.wait().expect("wait cortex");
        assert!(status.success(), "cortex exited with {status}");
    }
}

impl Drop for Cortex {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect api");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response {head:?}"));
    (status, body.to_owned())
}

/// Refuses every command (the agents of tests that do not exercise the respond stage).
pub struct NoCommands;

impl CommandHandler for NoCommands {
    fn execute(&mut self, _id: u64, _body: &[u8]) -> (CommandStatus, Vec<u8>) {
        (
            CommandStatus::Refused,
            b"test agent runs no commands".to_vec(),
        )
    }
}

/// An in-test agent: a qsc-channel client with its own outbox.
pub struct Agent {
    pub handle: OutboxHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Agent {
    pub fn start(
        outbox_dir: &Path,
        cortex_addr: &str,
        cortex_key: PublicKeyBytes,
        keypair: StaticKeypair,
    ) -> Agent {
        Self::start_with(outbox_dir, cortex_addr, cortex_key, keypair, NoCommands)
    }

    /// [`Agent::start`] with `handler` answering the cortex's commands.
    pub fn start_with(
        outbox_dir: &Path,
        cortex_addr: &str,
        cortex_key: PublicKeyBytes,
        keypair: StaticKeypair,
        handler: impl CommandHandler + 'static,
    ) -> Agent {
        Self::start_failover(outbox_dir, &[cortex_addr], cortex_key, keypair, handler)
    }

    /// An agent that knows several cortex gateways: `addrs[0]` first, the others when the one
    /// it uses cannot be reached.
    pub fn start_failover(
        outbox_dir: &Path,
        addrs: &[&str],
        cortex_key: PublicKeyBytes,
        keypair: StaticKeypair,
        handler: impl CommandHandler + 'static,
    ) -> Agent {
        let outbox = Outbox::open(OutboxConfig::new(outbox_dir)).expect("open outbox");
        let mut config = ClientConfig::new(addrs[0], cortex_key, keypair);
        config.fallback_addrs = addrs[1..].iter().map(|a| a.to_string()).collect();
        config.backoff_initial = Duration::from_millis(50);
        config.backoff_max = Duration::from_millis(500);
        let client = Client::new(config, outbox);
        let handle = client.handle();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(client.run_until(handler, async {
            let _ = stopped.await;
        }));
        Agent {
            handle,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn send(&self, events: &[Vec<u8>]) {
        self.handle.append_batch(events).expect("append to outbox");
    }

    /// Waits until the cortex acknowledged everything in the outbox.
    pub async fn wait_acked(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let unacked = self.handle.unacked().expect("unacked");
            if unacked == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{unacked} events still unacknowledged after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Reads a JSON-lines fixture, shifting its times so the last event is one second ago (the
/// cortex refuses events outside its time window, as it should).
pub fn fixture(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("read fixture");
    let mut events: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fixture line is JSON"))
        .collect();
    let last = events
        .iter()
        .filter_map(|e| e["time_ns"].as_u64())
        .max()
        .expect("times");
    let shift = qsc_event::now_ns() - 1_000_000_000 - last;
    for event in &mut events {
        let time = event["time_ns"].as_u64().expect("time_ns");
        event["time_ns"] = Value::from(time + shift);
    }
    events
}

/// The fixture events of one agent source, as JSON bytes.
pub fn of_source(events: &[Value], source: &str) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter(|e| e["source"] == source)
        .map(|e| serde_json::to_vec(e).expect("encode"))
        .collect()
}

/// Polls `check` until it returns `Some`, or panics after `within`.
pub async fn eventually<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
