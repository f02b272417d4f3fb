//! A guardian-alpha process under test: started with a config of the test's own, its JSON-lines
//! output collected by a thread, stopped with SIGINT (and killed if a test panics).

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use qsc_event::{Event, EventKind};

pub struct AlphaAgent {
    child: Child,
    events: Arc<Mutex<Vec<Event>>>,
    _config: tempfile::NamedTempFile,
}

/// How long to wait for an event before a test fails.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

impl AlphaAgent {
    /// Starts the agent with `config_toml` (output forced to stdout) and waits until it has
    /// attached its hooks (its first heartbeat).
    pub fn start(config_toml: &str, extra_args: &[&str]) -> Self {
        let mut config = tempfile::NamedTempFile::new().expect("temp config");
        write!(config, "{config_toml}").expect("write config");
        let mut child = Command::new(crate::workspace_bin("guardian-alpha"))
            .args(["run", "--output", "-", "--host-id", "e2e-test", "--config"])
            .arg(config.path())
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn guardian-alpha");
        let stdout = child.stdout.take().expect("agent stdout");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match Event::from_json(line.as_bytes()) {
                    Ok(event) => sink.lock().expect("events lock").push(event),
                    Err(err) => panic!("agent wrote an invalid event: {err}: {line}"),
                }
            }
        });
        let agent = AlphaAgent {
            child,
            events,
            _config: config,
        };
        agent
            .wait_for(|e| matches!(e.kind, EventKind::Heartbeat(_)))
            .expect("agent started (heartbeat)");
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first event matching `pred` within [`EVENT_TIMEOUT`].
    pub fn wait_for(&self, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            if let Some(event) = self
                .events
                .lock()
                .expect("events lock")
                .iter()
                .find(|e| pred(e))
            {
                return Some(event.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every event received so far that matches `pred`.
    pub fn all(&self, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
        self.events
            .lock()
            .expect("events lock")
            .iter()
            .filter(|e| pred(e))
            .cloned()
            .collect()
    }

    /// SIGINT, then wait for a clean exit; returns all events.
    pub fn stop(mut self) -> Vec<Event> {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("wait for agent");
        assert!(status.success(), "agent exited with {status}");
        // Let the reader thread take the last lines.
        std::thread::sleep(Duration::from_millis(200));
        self.events.lock().expect("events lock").clone()
    }
}

impl Drop for AlphaAgent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A config that watches only `dir` (reads and modifications), quiet otherwise.
pub fn config_watching(dir: &Path) -> String {
    format!(
        "[metrics]\ninterval_s = 0\n[forensics]\nscan_interval_s = 0\n[[watch]]\nprefix = \"{}/\"\nreads = true\nmodifications = true\n",
        dir.display()
    )
}

/// A quiet config (nothing watched) whose network volume interval is one second and whose
/// event threshold is `min_bytes`.
pub fn config_network_volume(min_bytes: u64) -> String {
    format!(
        "watch = []\n[metrics]\ninterval_s = 0\n[forensics]\nscan_interval_s = 0\n\
         [network]\nvolume_interval_s = 1\nvolume_min_bytes = {min_bytes}\n"
    )
}
