//! Where events go: JSON lines on stdout or a file, and/or the cortex over qsc-channel.
//!
//! Without the uplink, events are written as the agent numbered them. With the uplink
//! (`[cortex] enabled` or `--cortex`), events are held until [`Output::flush`], numbered by the
//! uplink (so `seq` is the channel sequence number the cortex acknowledges, gap-free across
//! restarts), appended to the durable outbox in one write, and then written locally with the
//! same number. Outbox losses become `event_loss` events with stage `outbox`.

use std::{
    fs::OpenOptions,
    io::{BufWriter, Write},
    path::PathBuf,
};

use std::time::Duration;

use qsc_channel::delivery::CommandHandler;
use qsc_channel::uplink::{AgentCommands, Uplink, UplinkError};
use qsc_event::{Event, EventKind, EventLoss, Source};

use crate::config::Config;

/// `output` value that turns the local copy off (only allowed with the uplink on).
pub const NO_LOCAL_OUTPUT: &str = "none";
/// Name used for the uplink's default paths and in answers to `ping`.
pub const AGENT: &str = "guardian-alpha";

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot open output {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write events: {0}")]
    Write(#[from] std::io::Error),
    #[error("cortex uplink: {0}")]
    Uplink(#[from] UplinkError),
}

/// The agent's event output: a local JSON-lines copy and/or the cortex uplink.
pub struct Output {
    local: Option<JsonLines>,
    cortex: Option<CortexOutput>,
}

impl Output {
    /// Opens what `config` asks for; the uplink connects in the background and answers only
    /// the commands every agent knows (`ping`).
    pub fn open(config: &Config) -> Result<Self, OutputError> {
        Self::open_with(config, AgentCommands::new(AGENT, env!("CARGO_PKG_VERSION")))
    }

    /// Like [`Output::open`], with `commands` executing what the cortex sends.
    pub fn open_with(config: &Config, commands: impl CommandHandler) -> Result<Self, OutputError> {
        let local = match config.output.as_str() {
            NO_LOCAL_OUTPUT => None,
            target => Some(JsonLines::open(target)?),
        };
        let cortex = if config.cortex.enabled {
            let uplink = Uplink::start(config.cortex.resolve(AGENT)?, commands)?;
            Some(CortexOutput {
                uplink,
                pending: Vec::new(),
                drain_timeout: config.cortex.drain_timeout(),
            })
        } else {
            None
        };
        Ok(Output { local, cortex })
    }

    pub fn write(&mut self, event: &Event) -> Result<(), OutputError> {
        match (&mut self.cortex, &mut self.local) {
            (Some(cortex), _) => cortex.pending.push(event.clone()),
            (None, Some(local)) => local.write(event)?,
            (None, None) => {}
        }
        Ok(())
    }

    /// Sends held events to the outbox, writes them locally, and flushes the local copy.
    pub fn flush(&mut self) -> Result<(), OutputError> {
        if let Some(cortex) = &mut self.cortex {
            let sent = cortex.send_pending()?;
            if let Some(local) = &mut self.local {
                sent.iter().try_for_each(|event| local.write(event))?;
            }
        }
        if let Some(local) = &mut self.local {
            local.flush()?;
        }
        Ok(())
    }
}

/// Events held for the next flush, and the uplink that numbers and sends them.
struct CortexOutput {
    uplink: Uplink,
    pending: Vec<Event>,
    drain_timeout: Duration,
}

impl Drop for CortexOutput {
    /// The agent is stopping: give the cortex `drain_timeout` to acknowledge what was sent.
    /// What is left stays in the outbox and is sent after the next start.
    fn drop(&mut self) {
        match self.uplink.delivery().wait_delivered(self.drain_timeout) {
            Ok(true) => tracing::info!("the cortex acknowledged every event"),
            Ok(false) => tracing::warn!(
                "the cortex has not acknowledged every event; the rest stays in the outbox"
            ),
            Err(err) => tracing::warn!(%err, "cannot tell what the cortex acknowledged"),
        }
    }
}

impl CortexOutput {
    /// Appends the held events (and an `event_loss` if the outbox lost any); returns them
    /// with their channel sequence numbers.
    fn send_pending(&mut self) -> Result<Vec<Event>, OutputError> {
        let mut events = std::mem::take(&mut self.pending);
        if events.is_empty() {
            return Ok(events);
        }
        self.append(&mut events)?;
        let loss = self.uplink.take_loss()?;
        if let (Some(loss), Some(last)) = (loss, events.last()) {
            tracing::warn!(
                lost = loss.lost,
                total = loss.total,
                "outbox lost events (full, or too large to send)"
            );
            let kind = EventKind::EventLoss(EventLoss {
                stage: "outbox".into(),
                record: None,
                lost: loss.lost,
                total: loss.total,
            });
            // `append` replaces the placeholder seq with the channel's.
            let mut loss_event = vec![Event::new(last.host_id.clone(), Source::Alpha, 1, kind)];
            self.append(&mut loss_event)?;
            events.append(&mut loss_event);
        }
        Ok(events)
    }

    fn append(&mut self, events: &mut [Event]) -> Result<(), OutputError> {
        self.uplink.append_batch_with(events, |seq, event| {
            event.seq = seq;
            event.to_json().into_bytes()
        })?;
        Ok(())
    }
}

pub struct JsonLines {
    writer: BufWriter<Box<dyn Write + Send>>,
}

impl JsonLines {
    /// "-" is stdout; anything else a file, created 0600 if missing and appended to.
    pub fn open(target: &str) -> Result<Self, OutputError> {
        let sink: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            use std::os::unix::fs::OpenOptionsExt;
            let path = PathBuf::from(target);
            Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|source| OutputError::Open { path, source })?,
            )
        };
        Ok(JsonLines {
            writer: BufWriter::with_capacity(256 * 1024, sink),
        })
    }

    pub fn write(&mut self, event: &Event) -> Result<(), OutputError> {
        serde_json::to_writer(&mut self.writer, event).map_err(std::io::Error::from)?;
        self.writer.write_all(b"\n")?;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), OutputError> {
        Ok(self.writer.flush()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qsc_channel::keys::StaticKeypair;
    use qsc_event::Heartbeat;

    fn heartbeat(seq: u64) -> Event {
        let kind = EventKind::Heartbeat(Heartbeat {
            version: "test".into(),
            uptime_s: 0,
            active_hooks: Vec::new(),
        });
        Event::new("web-01", Source::Alpha, seq, kind)
    }

    /// A config whose cortex is not there: events wait in the outbox.
    fn offline_config(dir: &std::path::Path) -> Config {
        let key_file = dir.join("agent.key");
        StaticKeypair::generate_file(&key_file).unwrap();
        let mut config = Config {
            output: dir.join("events.jsonl").display().to_string(),
            ..Config::default()
        };
        config.cortex.enabled = true;
        config.cortex.address = "127.0.0.1:9".into();
        config.cortex.cortex_public_key = Some(StaticKeypair::generate().public().to_hex());
        config.cortex.key_file = Some(key_file);
        config.cortex.outbox_dir = Some(dir.join("outbox"));
        config.cortex.fsync = qsc_channel::delivery::FsyncPolicy::Never;
        config.cortex.drain_timeout_ms = 10;
        config
    }

    fn local_seqs(dir: &std::path::Path) -> Vec<u64> {
        std::fs::read_to_string(dir.join("events.jsonl"))
            .unwrap()
            .lines()
            .map(|l| Event::from_json(l.as_bytes()).unwrap().seq)
            .collect()
    }

    #[test]
    fn with_the_uplink_the_outbox_numbers_events_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let config = offline_config(dir.path());
        for _run in 0..2 {
            let mut output = Output::open(&config).unwrap();
            // The agent numbers from 1 on every start; the uplink's numbers win.
            output.write(&heartbeat(1)).unwrap();
            output.write(&heartbeat(2)).unwrap();
            output.flush().unwrap();
        }
        assert_eq!(local_seqs(dir.path()), [1, 2, 3, 4]);
    }

    #[test]
    fn without_the_uplink_the_agent_numbers_stand() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = offline_config(dir.path());
        config.cortex.enabled = false;
        let mut output = Output::open(&config).unwrap();
        output.write(&heartbeat(7)).unwrap();
        output.flush().unwrap();
        assert_eq!(local_seqs(dir.path()), [7]);
        assert!(!dir.path().join("outbox").exists());
    }
}
