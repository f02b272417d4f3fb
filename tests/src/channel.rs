//! Driving `qsc-test-cortex` (the channel receiver standing in for the cortex) from tests:
//! enrolling agents, starting and SIGKILLing it, and reading what it stored.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use qsc_event::Event;

/// What the receiver stored for one channel sequence number (or range).
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    Event { seq: u64, event: Box<Event> },
    Lost { first: u64, last: u64 },
}

/// A running receiver; killed when dropped. Its files live in the directory it was given:
/// `cortex.key`, `agents.toml` (written by [`enroll`]), `store/`.
pub struct CortexStub {
    child: Child,
    dir: PathBuf,
    /// The address it listens on.
    pub addr: String,
    /// Its public key, hex, for the agents to pin.
    pub public_key: String,
}

/// Writes the receiver's allow-list with one agent.
pub fn enroll(dir: &Path, host_id: &str, public_key_hex: &str) {
    let text = format!(
        "[[agents]]\nhost_id = \"{host_id}\"\npublic_key = \"{public_key_hex}\"\nclass = \"server\"\n"
    );
    std::fs::write(dir.join("agents.toml"), text).expect("write agents.toml");
}

impl CortexStub {
    /// Starts the receiver on `listen` (e.g. `127.0.0.1:0`); with `ping`, it sends `ping` to
    /// every agent that connects.
    pub fn start(dir: &Path, listen: &str, ping: bool) -> Self {
        Self::start_sending(dir, listen, ping, &[])
    }

    /// Like [`CortexStub::start`], also sending each of `commands` (ids 2, 3, …) to every
    /// agent that connects.
    pub fn start_sending(dir: &Path, listen: &str, ping: bool, commands: &[String]) -> Self {
        let mut command = Command::new(crate::workspace_bin("qsc-test-cortex"));
        command
            .args(["--listen", listen, "--key"])
            .arg(dir.join("cortex.key"))
            .arg("--allow")
            .arg(dir.join("agents.toml"))
            .arg("--store")
            .arg(dir.join("store"))
            .stdout(Stdio::piped());
        if ping {
            command.arg("--ping");
        }
        for text in commands {
            command.arg("--command").arg(text);
        }
        let mut child = command.spawn().expect("spawn qsc-test-cortex");
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            BufReader::new(stdout)
                .read_line(&mut line)
                .expect("read receiver output");
        }
        let mut words = line.split_whitespace();
        let (Some("LISTENING"), Some(addr), Some(key)) = (words.next(), words.next(), words.next())
        else {
            panic!("unexpected receiver output {line:?}");
        };
        CortexStub {
            addr: addr.to_string(),
            public_key: key.to_string(),
            dir: dir.to_path_buf(),
            child,
        }
    }

    /// SIGKILLs the receiver (no chance to flush anything it has not made durable).
    pub fn kill(&mut self) {
        // It may have exited already; then there is nothing to kill.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything stored for `host_id`, in file order.
    pub fn stored(&self, host_id: &str) -> Vec<Stored> {
        let path = self.dir.join("store").join(format!("{host_id}.events"));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines().map(parse_stored).collect()
    }

    /// Lines of `commands.log`: `host TAB id TAB status TAB result`.
    pub fn command_results(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.join("store").join("commands.log"));
        text.unwrap_or_default().lines().map(String::from).collect()
    }
}

impl Drop for CortexStub {
    fn drop(&mut self) {
        self.kill();
    }
}

fn parse_stored(line: &str) -> Stored {
    let (seqs, body) = line.split_once('\t').expect("stored line has a tab");
    if body == "LOST" {
        let (first, last) = seqs.split_once('-').expect("lost range");
        return Stored::Lost {
            first: first.parse().expect("first seq"),
            last: last.parse().expect("last seq"),
        };
    }
    Stored::Event {
        seq: seqs.parse().expect("seq"),
        event: Box::new(Event::from_json(body.as_bytes()).expect("stored event is valid")),
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
