//! A minimal cortex-side receiver with a durable file-backed sink.
//!
//! ```text
//! sink --listen 127.0.0.1:7700 --key cortex.key --allow agents.toml --store DIR
//! ```
//!
//! Each agent's events go to `DIR/<host_id>.log` as records `seq u64 LE | len u32 LE | bytes`,
//! fsync-ed before the ack is sent. On start the files are scanned (a torn tail from a crash is
//! cut) to find where each agent resumes. Prints `LISTENING <addr>` once ready. Used by the
//! kill-and-restart test; also a reference for wiring [`EventSink`] into the cortex.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
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
}

fn parse_args() -> anyhow::Result<Args> {
    let mut values: HashMap<String, String> = HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        values.insert(flag, value);
    }
    let mut take = |flag: &str| {
        values.remove(flag).with_context(|| {
            format!(
                "missing {flag} (usage: sink --listen ADDR --key FILE --allow FILE --store DIR)"
            )
        })
    };
    let args = Args {
        listen: take("--listen")?,
        key: take("--key")?.into(),
        allow: take("--allow")?.into(),
        store: take("--store")?.into(),
    };
    if let Some(extra) = values.keys().next() {
        bail!("unknown argument {extra}");
    }
    Ok(args)
}

/// One append-only log per agent.
struct AgentLog {
    file: File,
    stored_up_to: u64,
}

impl AgentLog {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        let (stored_up_to, valid_len) = scan(&file)?;
        if valid_len < file.metadata()?.len() {
            file.set_len(valid_len)?;
            file.sync_all()?;
        }
        Ok(AgentLog { file, stored_up_to })
    }
}

/// Returns the last seq and the length of the valid prefix of a log.
fn scan(file: &File) -> anyhow::Result<(u64, u64)> {
    let mut reader = BufReader::new(file);
    let (mut last, mut valid) = (0u64, 0u64);
    let mut header = [0u8; 12];
    loop {
        if reader.read_exact(&mut header).is_err() {
            return Ok((last, valid));
        }
        let seq = u64::from_le_bytes(header[..8].try_into()?);
        let len = u32::from_le_bytes(header[8..].try_into()?) as usize;
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() || seq != last + 1 {
            return Ok((last, valid));
        }
        last = seq;
        valid += 12 + len as u64;
    }
}

#[derive(Clone)]
struct FileSink {
    dir: PathBuf,
    logs: Arc<Mutex<HashMap<String, AgentLog>>>,
}

impl FileSink {
    fn with_log<T>(
        &self,
        agent: &AgentIdentity,
        f: impl FnOnce(&mut AgentLog) -> anyhow::Result<T>,
    ) -> Result<T, SinkError> {
        let mut logs = self.logs.lock().map_err(|_| "sink lock poisoned")?;
        if !logs.contains_key(&agent.host_id) {
            let log = AgentLog::open(&self.dir.join(format!("{}.log", agent.host_id)))?;
            logs.insert(agent.host_id.clone(), log);
        }
        let log = logs.get_mut(&agent.host_id).ok_or("log vanished")?;
        Ok(f(log)?)
    }
}

impl EventSink for FileSink {
    fn stored_up_to(&mut self, agent: &AgentIdentity) -> Result<u64, SinkError> {
        self.with_log(agent, |log| Ok(log.stored_up_to))
    }

    fn store(
        &mut self,
        agent: &AgentIdentity,
        first_seq: u64,
        events: &[&[u8]],
    ) -> Result<(), SinkError> {
        self.with_log(agent, |log| {
            let mut buf = Vec::new();
            for (i, event) in events.iter().enumerate() {
                buf.extend_from_slice(&(first_seq + i as u64).to_le_bytes());
                buf.extend_from_slice(&(event.len() as u32).to_le_bytes());
                buf.extend_from_slice(event);
            }
            log.file.write_all(&buf)?;
            log.file.sync_data()?;
            log.stored_up_to = first_seq + events.len() as u64 - 1;
            Ok(())
        })
    }

    fn record_loss(
        &mut self,
        agent: &AgentIdentity,
        first_seq: u64,
        last_seq: u64,
    ) -> Result<(), SinkError> {
        eprintln!(
            "agent {} lost events {first_seq}..={last_seq}",
            agent.host_id
        );
        self.with_log(agent, |log| {
            log.stored_up_to = last_seq;
            Ok(())
        })
    }

    fn command_result(
        &mut self,
        agent: &AgentIdentity,
        id: u64,
        status: CommandStatus,
        body: &[u8],
    ) -> Result<(), SinkError> {
        eprintln!(
            "agent {} command {id}: {status:?} {}",
            agent.host_id,
            String::from_utf8_lossy(body)
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let config = ServerConfig {
        keypair: StaticKeypair::load(&args.key)?,
        allow_list: Arc::new(RwLock::new(AllowList::load(&args.allow)?)),
        require_hybrid: true,
        transport: TransportConfig::default(),
        handshake_timeout: Duration::from_secs(5),
    };
    std::fs::create_dir_all(&args.store)?;
    let sink = FileSink {
        dir: args.store.clone(),
        logs: Arc::new(Mutex::new(HashMap::new())),
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    println!("LISTENING {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    loop {
        let (stream, peer) = listener.accept().await?;
        let config = config.clone();
        let mut sink = sink.clone();
        tokio::spawn(async move {
            let outcome = match delivery::accept(stream, &config, &mut sink).await {
                Ok(session) => session.run(&mut sink).await,
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                eprintln!("session from {peer} ended: {e}");
            }
        });
    }
}
