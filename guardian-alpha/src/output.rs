//! Where events go: JSON lines on stdout or a file, and/or the cortex over qsc-channel.
//!
//! Without the uplink, events are written as the agent numbered them. With the uplink
//! (`[cortex] enabled` or `--cortex`), events are held until [`Output::flush`], numbered by the
//! uplink (so `seq` is the channel sequence number the cortex acknowledges, gap-free across
//! restarts), appended to the outbox in one write (which wakes the uplink's sender), made
//! durable, and then written locally with the same number. Outbox losses become `event_loss`
//! events with stage `outbox`.
//!
//! The outbox's `fdatasync` (`fsync = "always"`) and the local copy after it run on a thread of
//! their own ([`Durability`]), in order, so that the agent's loop goes back to the ring buffer
//! while the disk syncs: a record that arrives during a sync is emitted at once instead of
//! after it. Flushes that queue up while one sync runs share the next one.

use std::{
    fs::OpenOptions,
    io::{BufWriter, Write},
    path::PathBuf,
    sync::mpsc::{Receiver, SyncSender},
    thread::JoinHandle,
    time::Duration,
};

use qsc_channel::delivery::{CommandHandler, PendingSync};
use qsc_channel::uplink::{AgentCommands, Uplink, UplinkError};
use qsc_event::{Event, EventKind, EventLoss, Source};

use crate::config::Config;

/// `output` value that turns the local copy off (only allowed with the uplink on).
pub const NO_LOCAL_OUTPUT: &str = "none";
/// Name used for the uplink's default paths and in answers to `ping`.
pub const AGENT: &str = "guardian-alpha";
/// Appended batches that may wait for their sync at once; a flush waits beyond this.
const MAX_UNSYNCED_BATCHES: usize = 256;

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
    #[error("cannot make appended events durable: {0}")]
    Sync(#[from] qsc_channel::delivery::OutboxError),
    #[error("cannot start the outbox sync thread: {0}")]
    SyncThread(std::io::Error),
    #[error("the outbox sync thread stopped")]
    SyncThreadStopped,
}

/// The agent's event output: a local JSON-lines copy and/or the cortex uplink.
pub struct Output {
    /// The local copy when there is no uplink (with it, [`Durability`] writes the copy).
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
        if !config.cortex.enabled {
            return Ok(Output {
                local,
                cortex: None,
            });
        }
        let uplink = Uplink::start(config.cortex.resolve(AGENT)?, commands)?;
        Ok(Output {
            local: None,
            cortex: Some(CortexOutput {
                uplink,
                pending: Vec::new(),
                drain_timeout: config.cortex.drain_timeout(),
                durability: Durability::start(local)?,
            }),
        })
    }

    /// Takes `event` for the cortex (held until the next flush) or writes it locally.
    pub fn write(&mut self, event: Event) -> Result<(), OutputError> {
        match (&mut self.cortex, &mut self.local) {
            (Some(cortex), _) => cortex.pending.push(event),
            (None, Some(local)) => local.write(&event)?,
            (None, None) => {}
        }
        Ok(())
    }

    /// Sends held events to the outbox and hands them to [`Durability`] (which syncs and then
    /// copies them locally), or flushes the local copy; fails if an earlier batch could not be
    /// made durable or copied.
    pub fn flush(&mut self) -> Result<(), OutputError> {
        if let Some(cortex) = &mut self.cortex {
            cortex.send_pending()?;
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
    durability: Durability,
}

impl Drop for CortexOutput {
    /// The agent is stopping: make what was appended durable, then give the cortex
    /// `drain_timeout` to acknowledge what was sent. What is left stays in the outbox and is
    /// sent after the next start.
    fn drop(&mut self) {
        if let Err(err) = self.durability.finish() {
            tracing::error!(%err, "the last events may not be durable in the outbox");
        }
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
    /// Appends the held events (and an `event_loss` if the outbox lost any) and hands them,
    /// with their channel sequence numbers, to [`Durability`].
    fn send_pending(&mut self) -> Result<(), OutputError> {
        let mut events = std::mem::take(&mut self.pending);
        if events.is_empty() {
            return Ok(());
        }
        let mut owed = self.append(&mut events)?;
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
            owed = self.append(&mut loss_event)?.or(owed);
            events.append(&mut loss_event);
        }
        self.durability.submit(Unsynced { events, owed })
    }

    /// Numbers and appends `events`; returns the sync the append owes.
    fn append(&mut self, events: &mut [Event]) -> Result<Option<PendingSync>, OutputError> {
        let (_, owed) = self
            .uplink
            .append_batch_deferred_with(events, |seq, event| {
                event.seq = seq;
                event.to_json().into_bytes()
            })?;
        Ok(owed)
    }
}

/// A batch appended to the outbox (numbered, on its way to the cortex) and the sync it owes.
struct Unsynced {
    events: Vec<Event>,
    owed: Option<PendingSync>,
}

/// Makes appended batches durable and then writes their local copy, in order, on a thread of
/// its own. Stops at the first failure, which the next [`Durability::submit`] returns.
struct Durability {
    batches: Option<SyncSender<Unsynced>>,
    thread: Option<JoinHandle<Result<(), OutputError>>>,
}

impl Durability {
    fn start(local: Option<JsonLines>) -> Result<Self, OutputError> {
        let (batches, queued) = std::sync::mpsc::sync_channel(MAX_UNSYNCED_BATCHES);
        let thread = std::thread::Builder::new()
            .name("qsc-outbox-sync".into())
            .spawn(move || sync_and_copy(&queued, local))
            .map_err(OutputError::SyncThread)?;
        Ok(Durability {
            batches: Some(batches),
            thread: Some(thread),
        })
    }

    /// Queues a batch (waiting while [`MAX_UNSYNCED_BATCHES`] are queued); fails with the
    /// thread's error once it has stopped.
    fn submit(&mut self, batch: Unsynced) -> Result<(), OutputError> {
        let sent = match &self.batches {
            Some(batches) => batches.send(batch).is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        self.finish()?;
        Err(OutputError::SyncThreadStopped)
    }

    /// Waits until every queued batch is durable and copied; the thread's error, if it failed.
    fn finish(&mut self) -> Result<(), OutputError> {
        self.batches = None;
        match self.thread.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(err))) => Err(err),
            Some(Err(_)) => Err(OutputError::SyncThreadStopped),
        }
    }
}

/// The body of the sync thread: for every batch queued (and those queued meanwhile), one
/// sync, then the local copy. Segments an append closed were synced by that append, so the
/// last sync owed covers every earlier one.
fn sync_and_copy(
    queued: &Receiver<Unsynced>,
    mut local: Option<JsonLines>,
) -> Result<(), OutputError> {
    while let Ok(first) = queued.recv() {
        let mut batches = vec![first];
        batches.extend(queued.try_iter());
        if let Some(owed) = batches.iter_mut().rev().find_map(|b| b.owed.take()) {
            owed.wait()?;
        }
        if let Some(local) = &mut local {
            for event in batches.iter().flat_map(|b| &b.events) {
                local.write(event)?;
            }
            local.flush()?;
        }
    }
    Ok(())
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
            output.write(heartbeat(1)).unwrap();
            output.write(heartbeat(2)).unwrap();
            output.flush().unwrap();
        }
        assert_eq!(local_seqs(dir.path()), [1, 2, 3, 4]);
    }

    #[test]
    fn batches_synced_off_the_loop_are_copied_locally_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = offline_config(dir.path());
        config.cortex.fsync = qsc_channel::delivery::FsyncPolicy::Always;
        {
            let mut output = Output::open(&config).unwrap();
            for _batch in 0..20 {
                for n in 0..5 {
                    output.write(heartbeat(n)).unwrap();
                }
                output.flush().unwrap();
            }
        }
        assert_eq!(local_seqs(dir.path()), (1..=100).collect::<Vec<u64>>());
    }

    #[test]
    fn without_the_uplink_the_agent_numbers_stand() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = offline_config(dir.path());
        config.cortex.enabled = false;
        let mut output = Output::open(&config).unwrap();
        output.write(heartbeat(7)).unwrap();
        output.flush().unwrap();
        assert_eq!(local_seqs(dir.path()), [7]);
        assert!(!dir.path().join("outbox").exists());
    }
}
