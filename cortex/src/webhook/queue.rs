//! The persisted delivery queue and dead-letter queue (one SQLite file).
//!
//! A row is `pending` until it is delivered (then deleted) or given up on (then `dead`, with
//! the reason). Dead letters stay until an operator retries them, which makes them pending
//! again with a fresh attempt budget and the same webhook-id.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use thiserror::Error;

/// A failure of the queue file.
#[derive(Debug, Error)]
pub enum QueueError {
    #[error("webhook queue {path}: cannot create the file: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("webhook queue {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// One message to one destination. `id` is the webhook-id: the receiver's idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// The webhook-id (`msg_<32 hex>`), the same on every attempt.
    pub id: String,
    /// Name of the destination whose secret signs it.
    pub destination: String,
    /// The URL it is POSTed to (checked against the allow-list on every attempt).
    pub url: String,
    /// The exact JSON bytes that are signed and sent.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// Unix milliseconds when it was enqueued (max age counts from here).
    pub created_ms: i64,
    /// Attempts made so far.
    pub attempts: u32,
    /// Unix milliseconds of the next attempt.
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
}

/// A delivery that was given up on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// The message; `last_error` says why it was given up on.
    #[serde(flatten)]
    pub delivery: Delivery,
    /// Unix milliseconds when it was dead-lettered.
    pub dead_ms: i64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS webhook_delivery (
    id              TEXT PRIMARY KEY,
    destination     TEXT NOT NULL,
    url             TEXT NOT NULL,
    body            BLOB NOT NULL,
    created_ms      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'dead')),
    last_error      TEXT,
    dead_ms         INTEGER
);
CREATE INDEX IF NOT EXISTS webhook_delivery_due ON webhook_delivery (state, next_attempt_ms);
";

/// Opens a SQLite file created with mode 0600, in WAL mode, and applies `schema`.
pub(crate) fn open_private_sqlite(path: &Path, schema: &str) -> Result<Connection, QueueError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| QueueError::Create {
            path: path.to_owned(),
            source,
        })?;
    let sqlite = |source| QueueError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(sqlite)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(sqlite)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sqlite)?;
    conn.execute_batch(schema).map_err(sqlite)?;
    Ok(conn)
}

const COLUMNS: &str =
    "id, destination, url, body, created_ms, attempts, next_attempt_ms, last_error, dead_ms";

/// An open queue file. Several may be open on one file (the worker's and the API's).
pub struct DeliveryQueue {
    conn: Connection,
    path: PathBuf,
}

impl DeliveryQueue {
    /// Opens (creating 0600) the queue file.
    pub fn open(path: &Path) -> Result<Self, QueueError> {
        let conn = open_private_sqlite(path, SCHEMA)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    fn err(&self, source: rusqlite::Error) -> QueueError {
        QueueError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Adds a new pending delivery. Returns `false` for a repeated id (already queued).
    pub fn insert(&self, delivery: &Delivery) -> Result<bool, QueueError> {
        let added = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO webhook_delivery
                 (id, destination, url, body, created_ms, attempts, next_attempt_ms, state, last_error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8)",
                params![
                    delivery.id,
                    delivery.destination,
                    delivery.url,
                    delivery.body,
                    delivery.created_ms,
                    delivery.attempts,
                    delivery.next_attempt_ms,
                    delivery.last_error,
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(added == 1)
    }

    /// Pending deliveries due at `now_ms`, oldest due first.
    pub fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<Delivery>, QueueError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM webhook_delivery
             WHERE state = 'pending' AND next_attempt_ms <= ?1
             ORDER BY next_attempt_ms LIMIT ?2"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.select(&sql, params![now_ms, limit])
            .map(|rows| rows.into_iter().map(|d| d.delivery).collect())
    }

    /// When the next pending delivery is due, if any is pending.
    pub fn next_due_ms(&self) -> Result<Option<i64>, QueueError> {
        self.conn
            .query_row(
                "SELECT MIN(next_attempt_ms) FROM webhook_delivery WHERE state = 'pending'",
                [],
                |row| row.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Number of pending deliveries.
    pub fn pending_count(&self) -> Result<u64, QueueError> {
        self.count("pending")
    }

    /// Number of dead letters.
    pub fn dead_count(&self) -> Result<u64, QueueError> {
        self.count("dead")
    }

    fn count(&self, state: &str) -> Result<u64, QueueError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM webhook_delivery WHERE state = ?1",
                [state],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n.unsigned_abs())
            .map_err(|e| self.err(e))
    }

    /// Removes a delivered message.
    pub fn delete(&self, id: &str) -> Result<(), QueueError> {
        self.conn
            .execute("DELETE FROM webhook_delivery WHERE id = ?1", [id])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records a failed attempt and when to try again.
    pub fn reschedule(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_ms: i64,
        error: &str,
    ) -> Result<(), QueueError> {
        self.conn
            .execute(
                "UPDATE webhook_delivery SET attempts = ?2, next_attempt_ms = ?3, last_error = ?4
                 WHERE id = ?1 AND state = 'pending'",
                params![id, attempts, next_attempt_ms, error],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Gives up on a delivery: it becomes a dead letter with the reason.
    pub fn kill(
        &self,
        id: &str,
        attempts: u32,
        error: &str,
        now_ms: i64,
    ) -> Result<(), QueueError> {
        self.conn
            .execute(
                "UPDATE webhook_delivery SET state = 'dead', attempts = ?2, last_error = ?3, dead_ms = ?4
                 WHERE id = ?1",
                params![id, attempts, error, now_ms],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Deletes the oldest dead letters beyond `keep`; returns how many were deleted.
    pub fn prune_dead(&self, keep: u64) -> Result<u64, QueueError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let deleted = self
            .conn
            .execute(
                "DELETE FROM webhook_delivery WHERE state = 'dead' AND id NOT IN
                 (SELECT id FROM webhook_delivery WHERE state = 'dead'
                  ORDER BY dead_ms DESC, id LIMIT ?1)",
                [keep],
            )
            .map_err(|e| self.err(e))?;
        Ok(deleted as u64)
    }

    /// Every dead letter, most recent first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM webhook_delivery WHERE state = 'dead' ORDER BY dead_ms DESC, id"
        );
        self.select(&sql, [])
    }

    /// Makes a dead letter pending again (same webhook-id, fresh attempt budget and age).
    /// Returns whether such a dead letter existed.
    pub fn retry_dead(&self, id: &str, now_ms: i64) -> Result<bool, QueueError> {
        let changed = self
            .conn
            .execute(
                "UPDATE webhook_delivery SET state = 'pending', attempts = 0, created_ms = ?2,
                 next_attempt_ms = ?2, dead_ms = NULL
                 WHERE id = ?1 AND state = 'dead'",
                params![id, now_ms],
            )
            .map_err(|e| self.err(e))?;
        Ok(changed == 1)
    }

    /// One delivery by id, whatever its state.
    pub fn get(&self, id: &str) -> Result<Option<Delivery>, QueueError> {
        let sql = format!("SELECT {COLUMNS} FROM webhook_delivery WHERE id = ?1");
        self.conn
            .query_row(&sql, [id], row_to_dead)
            .optional()
            .map(|row| row.map(|d| d.delivery))
            .map_err(|e| self.err(e))
    }

    fn select(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params, row_to_dead)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

fn row_to_dead(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        delivery: Delivery {
            id: row.get(0)?,
            destination: row.get(1)?,
            url: row.get(2)?,
            body: row.get(3)?,
            created_ms: row.get(4)?,
            attempts: row.get(5)?,
            next_attempt_ms: row.get(6)?,
            last_error: row.get(7)?,
        },
        dead_ms: row.get::<_, Option<i64>>(8)?.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn delivery(id: &str, due: i64) -> Delivery {
        Delivery {
            id: id.into(),
            destination: "d".into(),
            url: "https://a.example/".into(),
            body: b"{}".to_vec(),
            created_ms: 0,
            attempts: 0,
            next_attempt_ms: due,
            last_error: None,
        }
    }

    #[test]
    fn lifecycle_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sqlite");
        {
            let q = DeliveryQueue::open(&path).unwrap();
            q.insert(&delivery("a", 10)).unwrap();
            assert!(q.insert(&delivery("b", 5)).unwrap());
            assert!(!q.insert(&delivery("b", 5)).unwrap());
            assert_eq!(q.pending_count().unwrap(), 2);
            assert_eq!(q.next_due_ms().unwrap(), Some(5));
            let due: Vec<String> = q.due(10, 10).unwrap().into_iter().map(|d| d.id).collect();
            assert_eq!(due, ["b", "a"]);
            assert!(q.due(4, 10).unwrap().is_empty());
            q.reschedule("a", 1, 100, "HTTP 500").unwrap();
            q.kill("b", 3, "max attempts", 50).unwrap();
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let q = DeliveryQueue::open(&path).unwrap();
        let a = q.get("a").unwrap().unwrap();
        assert_eq!((a.attempts, a.next_attempt_ms), (1, 100));
        assert_eq!(a.last_error.as_deref(), Some("HTTP 500"));
        let dead = q.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].delivery.id, "b");
        assert_eq!(dead[0].dead_ms, 50);
        q.insert(&delivery("c", 0)).unwrap();
        q.kill("c", 1, "older", 40).unwrap();
        assert_eq!(q.dead_count().unwrap(), 2);
        assert_eq!(q.prune_dead(1).unwrap(), 1);
        assert_eq!(q.get("c").unwrap(), None);
        assert!(q.retry_dead("b", 60).unwrap());
        assert!(!q.retry_dead("b", 60).unwrap());
        assert_eq!(q.dead_count().unwrap(), 0);
        assert_eq!(q.next_due_ms().unwrap(), Some(60));
        q.delete("a").unwrap();
        q.delete("b").unwrap();
        assert_eq!(q.next_due_ms().unwrap(), None);
    }
}
