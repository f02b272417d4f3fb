//! qsc-test-cortex: a stand-in for the cortex's ingest, for end-to-end channel tests until
//! `cortex serve` exists. It speaks the real qsc-channel protocol (handshake, allow-list,
//! de-duplication, acks after a durable write, commands) and stores events in a plain file.
//!
//! ```text
//! qsc-test-cortex --listen ADDR --key FILE --allow FILE --store DIR [--ping] [--command TEXT]...
//! ```
//!
//! * `--key`: the cortex secret key, created (0600) when missing.
//! * `DIR/<host_id>.events`: one line per event, `<seq> TAB <event JSON>`, or
//!   `<first>-<last> TAB LOST` for outbox losses; fsync-ed before the ack. A restarted stub
//!   resumes after the last complete line.
//! * `DIR/commands.log`: `<host_id> TAB <id> TAB <status> TAB <result>` per command result.
//! * `--ping`: sends the command `ping` (id 1) to every agent that connects.
//! * `--command TEXT`: sends TEXT (e.g. an ActionRequest JSON) to every agent that connects,
//!   after the ping; repeatable, ids 2, 3, … in order.
//!
//! Prints `LISTENING <addr> <cortex public key hex>` once ready.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use qsc_channel::delivery::{
    self, AgentIdentity, CommandStatus, EventSink, ServerConfig, SinkError,
};
use qsc_channel::keys::{AllowList, StaticKeypair};
use qsc_channel::transport::TransportConfig;

struct Args {
    listen: String,
    key: PathBuf,
    allow: PathBuf,
    store: PathBuf,
    ping: bool,
    commands: Vec<String>,
}

const USAGE: &str = "usage: qsc-test-cortex --listen ADDR --key FILE --allow FILE --store DIR [--ping] [--command TEXT]...";

fn parse_args() -> anyhow::Result<Args> {
    let mut values: HashMap<String, String> = HashMap::new();
    let mut ping = false;
    let mut commands = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--ping" {
            ping = true;
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value ({USAGE})"))?;
        if flag == "--command" {
            commands.push(value);
            continue;
        }
        values.insert(flag, value);
    }
    let mut take = |flag: &str| {
        values
            .remove(flag)
            .with_context(|| format!("missing {flag} ({USAGE})"))
    };
    let args = Args {
        listen: take("--listen")?,
        key: take("--key")?.into(),
        allow: take("--allow")?.into(),
        store: take("--store")?.into(),
        ping,
        commands,
    };
    if let Some(extra) = values.keys().next() {
        bail!("unknown argument {extra} ({USAGE})");
    }
    Ok(args)
}

/// One append-only event file per agent.
struct AgentFile {
    file: File,
    stored_up_to: u64,
}

/// The highest seq of a stored line (`<seq>` or `<first>-<last>`); torn lines are ignored.
fn last_seq_of(line: &str) -> Option<u64> {
    let (seqs, _) = line.split_once('\t')?;
    let last = seqs.rsplit('-').next()?;
    last.parse().ok()
}

impl AgentFile {
    /// Opens the file, cutting a torn last line left by a crash.
    fn open(path: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        let mut stored_up_to = 0;
        let mut complete_len = 0u64;
        let mut reader = BufReader::new(&file);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 {
            if !line.ends_with('\n') {
                break;
            }
            complete_len += line.len() as u64;
            stored_up_to = last_seq_of(line.trim_end()).unwrap_or(stored_up_to);
            line.clear();
        }
        file.set_len(complete_len)?;
        Ok(AgentFile { file, stored_up_to })
    }

    fn append(&mut self, text: &str, up_to: u64) -> anyhow::Result<()> {
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()?;
        self.stored_up_to = up_to;
        Ok(())
    }
}

#[derive(Clone)]
struct FileSink {
    dir: PathBuf,
    agents: Arc<Mutex<HashMap<String, AgentFile>>>,
}

impl FileSink {
    fn with_agent<T>(
        &self,
        agent: &AgentIdentity,
        f: impl FnOnce(&mut AgentFile) -> anyhow::Result<T>,
    ) -> Result<T, SinkError> {
        let mut agents = self.agents.lock().map_err(|_| "sink lock poisoned")?;
        if !agents.contains_key(&agent.host_id) {
            let path = self.dir.join(format!("{}.events", agent.host_id));
            agents.insert(agent.host_id.clone(), AgentFile::open(&path)?);
        }
        let file = agents
            .get_mut(&agent.host_id)
            .ok_or("agent file vanished")?;
        Ok(f(file)?)
    }
}

impl EventSink for FileSink {
    fn stored_up_to(&mut self, agent: &AgentIdentity) -> Result<u64, SinkError> {
        self.with_agent(agent, |file| Ok(file.stored_up_to))
    }

    fn store(
        &mut self,
        agent: &AgentIdentity,
        first_seq: u64,
        events: &[&[u8]],
    ) -> Result<(), SinkError> {
        let mut text = String::new();
        for (i, event) in events.iter().enumerate() {
            let json = std::str::from_utf8(event)?;
            if json.contains('\n') {
                return Err("event contains a newline".into());
            }
            text.push_str(&format!("{}\t{json}\n", first_seq + i as u64));
        }
        let last = first_seq + events.len() as u64 - 1;
        self.with_agent(agent, |file| file.append(&text, last))
    }

    fn record_loss(
        &mut self,
        agent: &AgentIdentity,
        first_seq: u64,
        last_seq: u64,
    ) -> Result<(), SinkError> {
        let text = format!("{first_seq}-{last_seq}\tLOST\n");
        self.with_agent(agent, |file| file.append(&text, last_seq))
    }

    fn command_result(
        &mut self,
        agent: &AgentIdentity,
        id: u64,
        status: CommandStatus,
        body: &[u8],
    ) -> Result<(), SinkError> {
        let line = format!(
            "{}\t{id}\t{status:?}\t{}\n",
            agent.host_id,
            String::from_utf8_lossy(body).replace(['\n', '\t'], " ")
        );
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("commands.log"))?;
        log.write_all(line.as_bytes())?;
        log.sync_data()?;
        Ok(())
    }
}

fn load_or_create_key(path: &Path) -> anyhow::Result<StaticKeypair> {
    if !path.exists() {
        StaticKeypair::generate_file(path)?;
    }
    Ok(StaticKeypair::load(path)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let keypair = load_or_create_key(&args.key)?;
    let public = keypair.public();
    let config = ServerConfig {
        keypair,
        allow_list: Arc::new(RwLock::new(AllowList::load(&args.allow)?)),
        require_hybrid: true,
        transport: TransportConfig::default(),
        handshake_timeout: Duration::from_secs(5),
    };
    std::fs::create_dir_all(&args.store)?;
    let sink = FileSink {
        dir: args.store.clone(),
        agents: Arc::new(Mutex::new(HashMap::new())),
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    println!("LISTENING {} {public}", listener.local_addr()?);
    std::io::stdout().flush()?;
    loop {
        let (stream, peer) = listener.accept().await?;
        let config = config.clone();
        let mut sink = sink.clone();
        let ping = args.ping;
        let commands = args.commands.clone();
        tokio::spawn(async move {
            let outcome = match delivery::accept(stream, &config, &mut sink).await {
                Ok(session) => {
                    if ping && session.command_sender().send(1, b"ping").await.is_err() {
                        eprintln!("qsc-test-cortex: session from {peer} closed before the ping");
                    }
                    for (id, command) in (2..).zip(&commands) {
                        if session
                            .command_sender()
                            .send(id, command.as_bytes())
                            .await
                            .is_err()
                        {
                            eprintln!(
                                "qsc-test-cortex: session from {peer} closed before command {id}"
                            );
                        }
                    }
                    session.run(&mut sink).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                eprintln!("qsc-test-cortex: session from {peer} ended: {e}");
            }
        });
    }
}
