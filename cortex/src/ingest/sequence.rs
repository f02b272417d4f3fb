//! Sequence numbers across the two agents of a host.
//!
//! The store numbers a host's events with one sequence (`(host, seq)` is unique, re-delivery is
//! ignored), but a host has two agents, guardian-alpha and guardian-beta, each with its own
//! gap-free delivery sequence. They share the host's store sequence in two lanes: alpha's
//! delivery seq `n` is stored as `2n`, beta's as `2n + 1`. Because the mapping is fixed, a
//! re-delivered event lands on the row it already has and is stored once.
//!
//! Where each agent resumes is kept per (host, source) in a small cursor database beside the
//! store, written after each stored batch. A cursor that lags the store (crash between the two
//! writes) only makes the agent resend events the store then ignores as duplicates.

use std::path::Path;
use std::sync::Mutex;

use qsc_event::Source;
use rusqlite::{Connection, OptionalExtension, params};

/// The store seq of an agent's delivery seq; `None` if it does not fit SQLite's integers.
pub fn stored_seq(source: Source, delivery_seq: u64) -> Option<u64> {
    let lane = match source {
        Source::Beta => 1,
        Source::Alpha | Source::Cortex => 0,
    };
    delivery_seq
        .checked_mul(2)?
        .checked_add(lane)
        .filter(|s| *s <= i64::MAX as u64)
}

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("cannot open ingest cursor database {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        source: rusqlite::Error,
    },
    #[error("ingest cursor database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("ingest cursor for {host}/{agent} is corrupt ({value})")]
    Corrupt {
        host: String,
        agent: &'static str,
        value: i64,
    },
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Alpha => "alpha",
        Source::Beta => "beta",
        Source::Cortex => "cortex",
    }
}

/// Highest delivery seq stored per (host, agent source).
pub struct Cursors {
    conn: Mutex<Connection>,
}

impl Cursors {
    pub fn open(path: &Path) -> Result<Self, CursorError> {
        let conn = Connection::open(path).map_err(|source| CursorError::Open {
            path: path.to_owned(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS cursors (
                 host TEXT NOT NULL, source TEXT NOT NULL, delivered INTEGER NOT NULL,
                 PRIMARY KEY (host, source))",
        )?;
        Ok(Cursors {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic mid-statement leaves SQLite consistent; the guard's data is the connection.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn delivered(&self, host: &str, source: Source) -> Result<u64, CursorError> {
        let value: Option<i64> = self
            .lock()
            .query_row(
                "SELECT delivered FROM cursors WHERE host = ?1 AND source = ?2",
                params![host, source_name(source)],
                |row| row.get(0),
            )
            .optional()?;
        match value {
            None => Ok(0),
            Some(v) => u64::try_from(v).map_err(|_| CursorError::Corrupt {
                host: host.to_owned(),
                agent: source_name(source),
                value: v,
            }),
        }
    }

    /// Records that everything up to `delivered` is stored (never moves backwards).
    pub fn advance(&self, host: &str, source: Source, delivered: u64) -> Result<(), CursorError> {
        let value = i64::try_from(delivered).unwrap_or(i64::MAX);
        self.lock().execute(
            "INSERT INTO cursors (host, source, delivered) VALUES (?1, ?2, ?3)
             ON CONFLICT (host, source) DO UPDATE SET delivered = MAX(delivered, excluded.delivered)",
            params![host, source_name(source), value],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_agents_of_a_host_never_share_a_store_seq() {
        assert_eq!(stored_seq(Source::Alpha, 1), Some(2));
        assert_eq!(stored_seq(Source::Beta, 1), Some(3));
        assert_eq!(stored_seq(Source::Alpha, 2), Some(4));
        assert_eq!(stored_seq(Source::Beta, u64::MAX / 2), None);
        assert_eq!(stored_seq(Source::Alpha, i64::MAX as u64), None);
    }

    #[test]
    fn cursors_persist_per_host_and_source_and_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursors.db");
        let cursors = Cursors::open(&path).unwrap();
        assert_eq!(cursors.delivered("web-01", Source::Alpha).unwrap(), 0);
        cursors.advance("web-01", Source::Alpha, 10).unwrap();
        cursors.advance("web-01", Source::Alpha, 4).unwrap();
        cursors.advance("web-01", Source::Beta, 3).unwrap();
        drop(cursors);
        let cursors = Cursors::open(&path).unwrap();
        assert_eq!(cursors.delivered("web-01", Source::Alpha).unwrap(), 10);
        assert_eq!(cursors.delivered("web-01", Source::Beta).unwrap(), 3);
        assert_eq!(cursors.delivered("db-01", Source::Alpha).unwrap(), 0);
    }
}
