//! Turns findings into qsc-events and writes them: JSON lines for machines, or one readable
//! line per finding for people.

use qsc_event::{Event, EventKind, Source};
use std::io::Write;

/// How findings are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One qsc-event JSON object per line.
    Json,
    /// One human-readable line per finding.
    Text,
}

/// Wraps findings into events with this host's id and a gap-free sequence, and writes them.
pub struct Emitter {
    host_id: String,
    next_seq: u64,
    format: Format,
    out: Box<dyn Write + Send>,
    emitted: u64,
}

impl Emitter {
    pub fn new(host_id: String, format: Format, out: Box<dyn Write + Send>) -> Self {
        Emitter {
            host_id,
            next_seq: 1,
            format,
            out,
            emitted: 0,
        }
    }

    /// Writes one finding and flushes, so a watcher's output is never held back.
    pub fn emit(&mut self, kind: EventKind) -> std::io::Result<()> {
        let event = Event::new(self.host_id.clone(), Source::Beta, self.next_seq, kind);
        self.next_seq += 1;
        self.emitted += 1;
        let line = match self.format {
            Format::Json => event.to_json(),
            Format::Text => describe(&event.kind),
        };
        writeln!(self.out, "{line}")?;
        self.out.flush()
    }

    pub fn emit_all(&mut self, kinds: impl IntoIterator<Item = EventKind>) -> std::io::Result<()> {
        kinds.into_iter().try_for_each(|kind| self.emit(kind))
    }

    /// Writes a JSON document that is not a finding (such as the baseline itself).
    pub fn write_json(&mut self, value: &impl serde::Serialize) -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut self.out, value)?;
        writeln!(self.out)?;
        self.out.flush()
    }

    /// Number of findings written so far.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }
}

/// A one-line description of a finding.
pub fn describe(kind: &EventKind) -> String {
    let name = kind.name();
    match kind {
        EventKind::IntegrityFileChanged(e) => {
            format!("{name:<28} {} ({})", e.path, e.changes.join(", "))
        }
        EventKind::IntegrityFileAdded(e) | EventKind::IntegrityFileRemoved(e) => {
            format!("{name:<28} {}", e.path)
        }
        EventKind::IntegrityBaselineTampered(e) => format!("{name:<28} {}: {}", e.store, e.reason),
        EventKind::BackupCorrupt(e)
        | EventKind::BackupMissing(e)
        | EventKind::BackupUnexpected(e) => format!("{name:<28} [{}] {}", e.backup_set, e.path),
        EventKind::CertExpiring(c)
        | EventKind::CertExpired(c)
        | EventKind::CertNotYetValid(c)
        | EventKind::CertRevoked(c)
        | EventKind::CertInvalid(c) => format!(
            "{name:<28} {} subject={} days_left={}{}",
            c.location,
            c.subject,
            c.days_left,
            c.reason
                .as_deref()
                .map(|r| format!(" reason={r}"))
                .unwrap_or_default()
        ),
        EventKind::HealDone(h) | EventKind::HealFailed(h) => format!(
            "{name:<28} {}{}",
            h.path,
            h.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
        EventKind::EventLoss(e) => {
            format!(
                "{name:<28} stage={} lost={} total={}",
                e.stage, e.lost, e.total
            )
        }
        other => name.to_string() + " " + &serde_json::to_string(other).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qsc_event::IntegrityFile;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn added(path: &str) -> EventKind {
        EventKind::IntegrityFileAdded(IntegrityFile {
            path: path.into(),
            hash: None,
        })
    }

    #[test]
    fn json_lines_are_valid_events_with_gap_free_seq() {
        let sink = Shared::default();
        let mut emitter = Emitter::new("web-01".into(), Format::Json, Box::new(sink.clone()));
        emitter.emit_all([added("/a"), added("/b")]).unwrap();
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let events: Vec<Event> = text
            .lines()
            .map(|l| Event::from_json(l.as_bytes()).unwrap())
            .collect();
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].seq, events[1].seq), (1, 2));
        assert_eq!(events[0].source, Source::Beta);
        assert_eq!(emitter.emitted(), 2);
    }

    #[test]
    fn text_lines_name_kind_and_path() {
        let line = describe(&added("/etc/shadow"));
        assert!(line.starts_with("integrity_file_added"));
        assert!(line.ends_with("/etc/shadow"));
    }
}
