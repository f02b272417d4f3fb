//! Findings to the cortex: the `[cortex]` uplink of guardian-beta.
//!
//! The [`Emitter`](crate::report::Emitter) writes one JSON event per line into an
//! [`UplinkWriter`]; the writer renumbers each event with the channel sequence number (so
//! `Event.seq` is the number the cortex acknowledges, gap-free across runs), appends it to the
//! durable outbox, and writes the same event to the local output (JSON line or text). Outbox
//! losses become `event_loss` events with stage `outbox`.

use std::io::Write;
use std::time::Duration;

use qsc_channel::uplink::{AgentCommands, CortexSettings, Delivery, Uplink, UplinkError};
use qsc_event::{Event, EventKind, EventLoss, Source};

use crate::report::{Format, describe};

/// Name used for default paths and in answers to `ping`.
pub const AGENT: &str = "guardian-beta";

/// Watches the delivery of what the [`UplinkWriter`] sent.
pub struct CortexLink {
    delivery: Delivery,
    drain_timeout: Duration,
}

impl CortexLink {
    /// Loads the keys, opens the outbox and connects in the background. Returns the link and
    /// the writer the emitter should write JSON lines into.
    pub fn start(
        settings: &CortexSettings,
        local: Box<dyn Write + Send>,
        local_format: Format,
    ) -> Result<(Self, UplinkWriter), UplinkError> {
        let config = settings.resolve(AGENT)?;
        let commands = AgentCommands::new(AGENT, env!("CARGO_PKG_VERSION"));
        let uplink = Uplink::start(config, commands)?;
        let link = CortexLink {
            delivery: uplink.delivery(),
            drain_timeout: settings.drain_timeout(),
        };
        let writer = UplinkWriter {
            uplink,
            local,
            local_format,
            line: Vec::new(),
        };
        Ok((link, writer))
    }

    /// Waits up to `drain_timeout_ms` for the cortex to acknowledge everything; what is not
    /// acknowledged stays in the outbox and goes out with the next run.
    pub fn drain(&self) -> Result<(), UplinkError> {
        let delivered = self.delivery.wait_delivered(self.drain_timeout)?;
        if delivered {
            tracing::info!("the cortex acknowledged every finding");
        } else {
            tracing::warn!(
                unacknowledged = self.delivery.unacked()?,
                "the cortex has not acknowledged every finding yet; they stay in the outbox \
                 and are sent by the next run"
            );
        }
        Ok(())
    }
}

/// Takes the emitter's JSON lines, numbers and sends each event, and writes it locally.
pub struct UplinkWriter {
    uplink: Uplink,
    local: Box<dyn Write + Send>,
    local_format: Format,
    line: Vec<u8>,
}

fn invalid_data(reason: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, reason)
}

impl UplinkWriter {
    fn send_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let mut event = Event::from_json(line)
            .map_err(|e| invalid_data(format!("a finding is not a valid event: {e}")))?;
        self.send(&mut event)?;
        let loss = self.uplink.take_loss().map_err(std::io::Error::other)?;
        if let Some(loss) = loss {
            tracing::warn!(
                lost = loss.lost,
                total = loss.total,
                "outbox lost findings (full, or too large to send)"
            );
            let kind = EventKind::EventLoss(EventLoss {
                stage: "outbox".into(),
                record: None,
                lost: loss.lost,
                total: loss.total,
            });
            // `send` replaces the placeholder seq with the channel's.
            let mut loss_event = Event::new(event.host_id.clone(), Source::Beta, 1, kind);
            self.send(&mut loss_event)?;
        }
        Ok(())
    }

    fn send(&mut self, event: &mut Event) -> std::io::Result<()> {
        self.uplink
            .append_with(|seq| {
                event.seq = seq;
                event.to_json().into_bytes()
            })
            .map_err(std::io::Error::other)?;
        let local = match self.local_format {
            Format::Json => event.to_json(),
            Format::Text => describe(&event.kind),
        };
        writeln!(self.local, "{local}")
    }
}

impl Write for UplinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        while let Some(end) = self.line.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.line.drain(..=end).collect();
            self.send_line(&line[..end])?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.local.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Emitter;
    use qsc_channel::keys::StaticKeypair;
    use qsc_event::IntegrityFile;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Settings for a cortex that is not there: findings wait in the outbox.
    fn offline_settings(dir: &std::path::Path) -> CortexSettings {
        let key_file = dir.join("agent.key");
        StaticKeypair::generate_file(&key_file).unwrap();
        CortexSettings {
            enabled: true,
            address: "127.0.0.1:9".into(),
            cortex_public_key: Some(StaticKeypair::generate().public().to_hex()),
            key_file: Some(key_file),
            outbox_dir: Some(dir.join("outbox")),
            fsync: qsc_channel::delivery::FsyncPolicy::Never,
            drain_timeout_ms: 10,
            ..CortexSettings::default()
        }
    }

    fn added(path: &str) -> EventKind {
        EventKind::IntegrityFileAdded(IntegrityFile {
            path: path.into(),
            hash: None,
        })
    }

    fn emit_two(settings: &CortexSettings) -> Vec<Event> {
        let local = Captured::default();
        let (link, writer) =
            CortexLink::start(settings, Box::new(local.clone()), Format::Json).unwrap();
        let mut emitter = Emitter::new("web-01".into(), Format::Json, Box::new(writer));
        emitter.emit_all([added("/a"), added("/b")]).unwrap();
        link.drain().unwrap();
        let text = String::from_utf8(local.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| Event::from_json(l.as_bytes()).unwrap())
            .collect()
    }

    #[test]
    fn findings_are_renumbered_by_the_outbox_across_runs() {
        let dir = tempfile::tempdir().unwrap();
        let settings = offline_settings(dir.path());
        let first = emit_two(&settings);
        let second = emit_two(&settings);
        let seqs: Vec<u64> = first.iter().chain(&second).map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            [1, 2, 3, 4],
            "each run's emitter starts at 1; the outbox does not"
        );
        assert_eq!(second[1].host_id, "web-01");
    }

    #[test]
    fn a_finding_too_large_to_send_is_reported_as_outbox_loss() {
        let dir = tempfile::tempdir().unwrap();
        let local = Captured::default();
        let (_link, writer) = CortexLink::start(
            &offline_settings(dir.path()),
            Box::new(local.clone()),
            Format::Json,
        )
        .unwrap();
        let mut emitter = Emitter::new("web-01".into(), Format::Json, Box::new(writer));
        // Larger than one transport message can carry, whatever the outbox size.
        let huge = format!("/{}", "x".repeat(600 << 10));
        emitter.emit_all([added(&huge), added("/small")]).unwrap();
        let text = String::from_utf8(local.0.lock().unwrap().clone()).unwrap();
        let sent: Vec<(String, u64)> = text
            .lines()
            .map(|l| Event::from_json(l.as_bytes()).unwrap())
            .filter(|e| !matches!(&e.kind, EventKind::IntegrityFileAdded(f) if f.path == huge))
            .map(|e| (e.kind.name().to_string(), e.seq))
            .collect();
        assert_eq!(
            sent,
            [
                ("event_loss".to_string(), 1),
                ("integrity_file_added".to_string(), 2)
            ]
        );
        assert!(text.contains("\"stage\":\"outbox\""));
    }

    #[test]
    fn text_that_is_not_an_event_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (_link, mut writer) = CortexLink::start(
            &offline_settings(dir.path()),
            Box::new(Captured::default()),
            Format::Text,
        )
        .unwrap();
        let err = writer.write_all(b"integrity_file_added /a\n").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
