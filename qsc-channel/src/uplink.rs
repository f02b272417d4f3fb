//! The agent side of the channel in one type: [`Uplink`] opens the durable outbox, runs the
//! reconnecting [`Client`] on a runtime thread of its own (so neither the agent's loop nor the
//! connection can stall the other), numbers events and hands cortex commands to the agent's
//! [`CommandHandler`].
//!
//! Sequence numbers: every event an agent sends carries, inside its own bytes (`Event.seq` of
//! qsc-event), the channel sequence number the outbox stores it under. The uplink therefore
//! numbers events itself: [`Uplink::append_with`] and [`Uplink::append_batch_with`] call the
//! agent's builder with the number the outbox will assign, and the numbering continues from
//! the outbox after a restart, so it is gap-free across restarts.
//!
//! Losses: events the outbox drops on overflow and events too large for one message are counted;
//! [`Uplink::take_loss`] returns what is new since the last call so the agent can report an
//! `event_loss` (stage `outbox`).
//!
//! Commands: the cortex sends UTF-8 command text: `ping`, or a JSON
//! [`qsc_event::ActionRequest`]. The uplink answers `rotate_keys` itself for every
//! agent ([`rotation`]); [`AgentCommands`] answers `ping` with the agent's name and version and
//! refuses actions it does not implement; agents wrap it to add their own response actions.

pub mod rotation;
mod settings;

use std::time::Duration;

use tokio::runtime::Runtime;

use crate::delivery::envelope::{EVENT_OVERHEAD, EVENTS_HEADER_LEN};
use crate::delivery::{
    Appended, Client, ClientConfig, ClientError, CommandHandler, CommandStatus, Outbox,
    OutboxError, OutboxHandle, OverflowPolicy, PendingSync,
};
use crate::keys::KeyError;

use qsc_event::ActionOutcome;
use rotation::{KeyRotation, ParsedCommand, UplinkCommands, plain_report, report_result};
pub use settings::{CortexSettings, MIN_OUTBOX_BYTES, UplinkConfig, read_public_key_file};

/// Outbox record header: `len u32 | seq u64 | crc32 u32`.
const OUTBOX_RECORD_HEADER: u64 = 16;
/// How often [`Delivery::wait_delivered`] looks at the acknowledged position.
const DELIVERY_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("config key `{key}` is invalid: {reason}")]
    Setting { key: &'static str, reason: String },
    #[error("pinned cortex public key file {path}: {reason}")]
    PublicKeyFile {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot start the uplink's runtime thread: {0}")]
    Runtime(std::io::Error),
}

/// New outbox losses since the last report, for an `event_loss` event with stage `outbox`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxLoss {
    pub lost: u64,
    /// Lost since the uplink started.
    pub total: u64,
}

/// The agent's connection to the cortex: a numbered, durable, acknowledged event stream.
pub struct Uplink {
    handle: OutboxHandle,
    next_seq: u64,
    overflow: OverflowPolicy,
    max_event_bytes: usize,
    oversize_refused: u64,
    /// Overflow drops the outbox had counted before this start (reported by earlier runs).
    drops_before_start: u64,
    /// Losses of this run already handed out by [`Uplink::take_loss`].
    loss_reported: u64,
    /// Runs the client; shut down (which ends the client) when the uplink is dropped.
    runtime: Option<Runtime>,
}

/// Largest event both one transport message (as the client batches them) and one outbox
/// segment can carry.
fn max_event_bytes(config: &UplinkConfig) -> usize {
    let client: &ClientConfig = &config.client;
    let per_message = (client.transport.max_message_len() / 2).saturating_sub(
        client
            .max_batch_events
            .saturating_mul(EVENT_OVERHEAD)
            .saturating_add(EVENTS_HEADER_LEN),
    );
    let per_segment = config
        .outbox
        .segment_bytes
        .saturating_sub(OUTBOX_RECORD_HEADER);
    per_message.min(usize::try_from(per_segment).unwrap_or(usize::MAX))
}

impl Uplink {
    /// Opens the outbox and starts the client on its own runtime thread; it connects, and
    /// reconnects with backoff, until the uplink is dropped. Events appended meanwhile wait in
    /// the outbox. May be called from inside or outside another tokio runtime.
    pub fn start<H: CommandHandler>(config: UplinkConfig, handler: H) -> Result<Self, UplinkError> {
        let max_event_bytes = max_event_bytes(&config);
        let overflow = config.outbox.overflow;
        let outbox = Outbox::open(config.outbox)?;
        let next_seq = outbox.next_seq();
        let drops = outbox.drops();
        tracing::info!(
            cortex = %config.client.cortex_addr,
            cortex_key_id = %config.client.cortex_key.key_id(),
            agent_key_id = %config.client.keypair.public().key_id(),
            next_seq,
            outbox_bytes = outbox.total_bytes(),
            "uplink to cortex starting"
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("qsc-uplink")
            .enable_all()
            .build()
            .map_err(UplinkError::Runtime)?;
        let rotation = config
            .key_file
            .map(|file| KeyRotation::new(file, config.client.keypair.clone()));
        let client = Client::new(config.client, outbox);
        let handle = client.handle();
        let commands = UplinkCommands::new(handler, rotation);
        runtime.spawn(client.run_until(commands, std::future::pending()));
        Ok(Uplink {
            handle,
            next_seq,
            overflow,
            max_event_bytes,
            oversize_refused: 0,
            drops_before_start: drops.dropped_oldest + drops.dropped_newest,
            loss_reported: 0,
            runtime: Some(runtime),
        })
    }

    /// The sequence number the next stored event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Builds one event with its sequence number and appends it.
    pub fn append_with(
        &mut self,
        build: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<Appended, UplinkError> {
        let mut build = Some(build);
        let appended = self.append_batch_with(&mut [()], |seq, ()| match build.take() {
            Some(build) => build(seq),
            None => Vec::new(),
        })?;
        Ok(appended.into_iter().next().unwrap_or(Appended::Dropped))
    }

    /// Builds each item's bytes with the sequence number it will be stored under (the builder
    /// may record it in the item, e.g. `event.seq = seq`) and appends them in one durable write.
    /// An item too large to send is refused and counted as lost; it gets no number.
    pub fn append_batch_with<T>(
        &mut self,
        items: &mut [T],
        build: impl FnMut(u64, &mut T) -> Vec<u8>,
    ) -> Result<Vec<Appended>, UplinkError> {
        let (results, sync) = self.append_batch_deferred_with(items, build)?;
        if let Some(sync) = sync {
            sync.wait()?;
        }
        Ok(results)
    }

    /// [`Uplink::append_batch_with`] that leaves the final `fdatasync` to the caller (see
    /// [`OutboxHandle::append_batch_deferred`]): the events are numbered, written and on their
    /// way to the cortex, and durable once the returned [`PendingSync`] (if any) is waited for.
    pub fn append_batch_deferred_with<T>(
        &mut self,
        items: &mut [T],
        mut build: impl FnMut(u64, &mut T) -> Vec<u8>,
    ) -> Result<(Vec<Appended>, Option<PendingSync>), UplinkError> {
        if self.overflow == OverflowPolicy::DropNewest {
            // A refused event in the middle of a batch would shift the numbers of the events
            // after it, so with drop_newest each event is its own append. Segments closed by
            // an append are synced by it, so only the last append's sync is still owed.
            let mut results = Vec::with_capacity(items.len());
            let mut owed = None;
            for item in items.iter_mut() {
                let (appended, sync) =
                    self.append_numbered(std::slice::from_mut(item), &mut build)?;
                results.extend(appended);
                owed = sync.or(owed);
            }
            return Ok((results, owed));
        }
        self.append_numbered(items, &mut build)
    }

    fn append_numbered<T>(
        &mut self,
        items: &mut [T],
        build: &mut impl FnMut(u64, &mut T) -> Vec<u8>,
    ) -> Result<(Vec<Appended>, Option<PendingSync>), UplinkError> {
        let mut encoded = Vec::with_capacity(items.len());
        let mut fits = Vec::with_capacity(items.len());
        let mut seq = self.next_seq;
        for item in items.iter_mut() {
            let bytes = build(seq, item);
            let fit = bytes.len() <= self.max_event_bytes;
            if fit {
                encoded.push(bytes);
                seq += 1;
            } else {
                self.oversize_refused += 1;
                tracing::warn!(
                    len = bytes.len(),
                    max = self.max_event_bytes,
                    "event too large for the channel; not sent"
                );
            }
            fits.push(fit);
        }
        let (stored, sync) = if encoded.is_empty() {
            (Vec::new(), None)
        } else {
            self.handle.append_batch_deferred(&encoded)?
        };
        self.advance_past(&stored);
        let mut stored = stored.into_iter();
        let results = fits
            .into_iter()
            .map(|fit| {
                if fit {
                    stored.next().unwrap_or(Appended::Dropped)
                } else {
                    Appended::Dropped
                }
            })
            .collect();
        Ok((results, sync))
    }

    /// Moves the numbering past what the outbox stored. The outbox only renumbers when the
    /// cortex reports more events than it ever held (its directory was lost); that is logged.
    fn advance_past(&mut self, stored: &[Appended]) {
        let mut expected = self.next_seq;
        for result in stored {
            if let Appended::Stored { seq } = *result {
                if seq != expected {
                    tracing::warn!(
                        expected,
                        stored = seq,
                        "outbox renumbered after the cortex reported a later position; \
                         continuing from the outbox's numbering"
                    );
                }
                expected = seq + 1;
            }
        }
        self.next_seq = expected;
    }

    /// Losses (overflow drops and oversize events) not reported yet.
    pub fn take_loss(&mut self) -> Result<Option<OutboxLoss>, UplinkError> {
        let drops = self.handle.drops()?;
        let total = (drops.dropped_oldest + drops.dropped_newest)
            .saturating_sub(self.drops_before_start)
            + self.oversize_refused;
        if total <= self.loss_reported {
            return Ok(None);
        }
        let lost = total - self.loss_reported;
        self.loss_reported = total;
        Ok(Some(OutboxLoss { lost, total }))
    }

    /// A handle that watches delivery while the uplink itself is owned by the event writer.
    pub fn delivery(&self) -> Delivery {
        Delivery {
            handle: self.handle.clone(),
        }
    }
}

/// Watches how far the cortex has acknowledged an uplink's events.
#[derive(Clone)]
pub struct Delivery {
    handle: OutboxHandle,
}

impl Delivery {
    /// Events stored in the outbox and not yet acknowledged by the cortex.
    pub fn unacked(&self) -> Result<u64, UplinkError> {
        Ok(self.handle.unacked()?)
    }

    /// Blocks the calling thread until the cortex acknowledged everything appended, or
    /// `timeout` passed; true when everything was delivered. Unacknowledged events stay in the
    /// outbox and are sent by the next run.
    pub fn wait_delivered(&self, timeout: Duration) -> Result<bool, UplinkError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.unacked()? == 0 {
                return Ok(true);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(DELIVERY_POLL);
        }
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Unlike a plain drop, this is allowed inside another runtime's async context.
            runtime.shutdown_background();
        }
    }
}

/// The commands every agent understands: `ping`, answered with `<agent> <version>`. Action
/// requests it does not implement are answered with a `refused` [`ActionReport`]
/// (`rotate_keys` is answered by the uplink before it gets here).
///
/// [`ActionReport`]: qsc_event::ActionReport
pub struct AgentCommands {
    agent: String,
    version: String,
}

impl AgentCommands {
    pub fn new(agent: impl Into<String>, version: impl Into<String>) -> Self {
        AgentCommands {
            agent: agent.into(),
            version: version.into(),
        }
    }
}

impl CommandHandler for AgentCommands {
    fn execute(&mut self, id: u64, body: &[u8]) -> (CommandStatus, Vec<u8>) {
        let command = ParsedCommand::parse(body);
        tracing::info!(id, ?command, "command from cortex");
        match command {
            ParsedCommand::Ping => (
                CommandStatus::Succeeded,
                format!("{} {}", self.agent, self.version).into_bytes(),
            ),
            ParsedCommand::Action(request) => report_result(&plain_report(
                &request.action_id,
                ActionOutcome::Refused,
                format!(
                    "{} does not implement the {} action",
                    self.agent,
                    request.action.name()
                ),
            )),
            ParsedCommand::KeyRecorded(_) | ParsedCommand::Unknown(_) => (
                CommandStatus::Refused,
                format!("{} does not know this command", self.agent).into_bytes(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{FsyncPolicy, OutboxConfig};
    use crate::keys::StaticKeypair;

    /// An uplink whose cortex address refuses connections: everything stays in the outbox.
    fn offline_config(dir: &std::path::Path, overflow: OverflowPolicy) -> UplinkConfig {
        let cortex = StaticKeypair::generate().public();
        let mut client = ClientConfig::new("127.0.0.1:9", cortex, StaticKeypair::generate());
        client.backoff_initial = Duration::from_secs(60);
        client.backoff_max = Duration::from_secs(60);
        let mut outbox = OutboxConfig::new(dir.join("outbox"));
        outbox.max_bytes = 4096;
        outbox.segment_bytes = 1024;
        outbox.overflow = overflow;
        outbox.fsync = FsyncPolicy::Never;
        UplinkConfig {
            client,
            outbox,
            key_file: None,
        }
    }

    fn event(seq: u64, len: usize) -> Vec<u8> {
        let mut bytes = format!("{{\"seq\":{seq}}}").into_bytes();
        bytes.resize(len.max(bytes.len()), b' ');
        bytes
    }

    #[test]
    fn numbers_are_the_outbox_numbers_and_continue_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut uplink = Uplink::start(
                offline_config(dir.path(), OverflowPolicy::DropOldest),
                AgentCommands::new("t", "1"),
            )
            .unwrap();
            assert_eq!(uplink.next_seq(), 1);
            let mut seen = Vec::new();
            let results = uplink
                .append_batch_with(&mut [(), (), ()], |seq, ()| {
                    seen.push(seq);
                    event(seq, 10)
                })
                .unwrap();
            assert_eq!(seen, [1, 2, 3]);
            assert_eq!(results[2], Appended::Stored { seq: 3 });
            assert_eq!(uplink.delivery().unacked().unwrap(), 3);
        }
        let mut uplink = Uplink::start(
            offline_config(dir.path(), OverflowPolicy::DropOldest),
            AgentCommands::new("t", "1"),
        )
        .unwrap();
        assert_eq!(uplink.next_seq(), 4);
        let appended = uplink.append_with(|seq| event(seq, 10)).unwrap();
        assert_eq!(appended, Appended::Stored { seq: 4 });
        let delivery = uplink.delivery();
        assert!(!delivery.wait_delivered(Duration::from_millis(50)).unwrap());
    }

    #[test]
    fn drop_newest_refusals_keep_numbers_gap_free_and_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut uplink = Uplink::start(
            offline_config(dir.path(), OverflowPolicy::DropNewest),
            AgentCommands::new("t", "1"),
        )
        .unwrap();
        let mut items: Vec<u64> = vec![0; 40];
        let results = uplink
            .append_batch_with(&mut items, |seq, slot| {
                *slot = seq;
                event(seq, 200)
            })
            .unwrap();
        let stored: Vec<u64> = results
            .iter()
            .filter_map(|r| match r {
                Appended::Stored { seq } => Some(*seq),
                Appended::Dropped => None,
            })
            .collect();
        let dropped = (results.len() - stored.len()) as u64;
        assert!(dropped > 0, "a 4 KiB outbox cannot hold 40 x 200 bytes");
        assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>());
        for (item, result) in items.iter().zip(&results) {
            if let Appended::Stored { seq } = result {
                assert_eq!(item, seq, "the builder saw the number the outbox used");
            }
        }
        assert_eq!(
            uplink.take_loss().unwrap(),
            Some(OutboxLoss {
                lost: dropped,
                total: dropped
            })
        );
        assert_eq!(uplink.take_loss().unwrap(), None);
    }

    #[test]
    fn oversize_events_get_no_number_and_count_as_loss() {
        let dir = tempfile::tempdir().unwrap();
        let mut uplink = Uplink::start(
            offline_config(dir.path(), OverflowPolicy::DropOldest),
            AgentCommands::new("t", "1"),
        )
        .unwrap();
        let mut sizes = [10usize, 5000, 10];
        let results = uplink
            .append_batch_with(&mut sizes, |seq, len| event(seq, *len))
            .unwrap();
        assert_eq!(
            results,
            [
                Appended::Stored { seq: 1 },
                Appended::Dropped,
                Appended::Stored { seq: 2 }
            ]
        );
        assert_eq!(uplink.take_loss().unwrap().map(|l| l.lost), Some(1));
    }

    #[test]
    fn ping_answers_with_agent_and_version_and_unknown_commands_are_refused() {
        let mut commands = AgentCommands::new("guardian-beta", "0.1.0");
        assert_eq!(
            commands.execute(1, b"ping\n"),
            (CommandStatus::Succeeded, b"guardian-beta 0.1.0".to_vec())
        );
        assert_eq!(commands.execute(2, b"rm -rf /").0, CommandStatus::Refused);
        let (status, body) = commands.execute(3, br#"{"action_id":"a-1","action":"release"}"#);
        assert_eq!(status, CommandStatus::Refused);
        let report: qsc_event::ActionReport = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (report.action_id.as_str(), report.outcome),
            ("a-1", ActionOutcome::Refused)
        );
    }
}
