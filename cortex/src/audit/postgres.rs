//! The audit chain in PostgreSQL, in the schema of `[store.postgres]`: one chain for every
//! replica of a scale-out cortex.
//!
//! The records and checkpoints have the same columns and meaning as in the SQLite file.
//! Appends take the transaction-scoped advisory lock of the chain before reading its tail, so
//! appenders in any number of processes write one gap-free chain; triggers refuse UPDATE,
//! DELETE and TRUNCATE, and what a role that drops them does is what `verify` catches.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::AuditError;
use super::log::{Appended, ChainBackend, Tail, TailBuilder, checked_tail};
use super::record::{AuditRecord, Checkpoint, to_hash};
use crate::store::config::PostgresConfig;
use crate::store::postgres::{block_on, connect, create_in_schema, pg_runtime};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_records (
    seq       BIGINT PRIMARY KEY,
    time_ns   BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    actor     TEXT NOT NULL,
    body      TEXT NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash      BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq                 BIGINT PRIMARY KEY,
    record_hash         BYTEA NOT NULL,
    prev_checkpoint_seq BIGINT NOT NULL,
    time_ns             BIGINT NOT NULL,
    signature           BYTEA NOT NULL
);
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'the audit chain is append-only'; END $$;
CREATE OR REPLACE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE OR REPLACE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE OR REPLACE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE
    ON audit_checkpoints FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE OR REPLACE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
";

/// The lock every append of the schema's chain takes (released at commit or rollback).
const LOCK_CHAIN: &str = "SELECT pg_advisory_xact_lock(hashtext('qsc-audit/' || current_schema()))";

/// The chain in a PostgreSQL schema.
pub struct PostgresChain {
    /// Shut down (in the background) in [`Drop`].
    runtime: Option<tokio::runtime::Runtime>,
    /// Appends need a transaction, so exclusive use of the connection.
    client: Arc<tokio::sync::Mutex<Client>>,
}

impl PostgresChain {
    /// Connects and creates the chain's tables and triggers in the schema if missing.
    pub fn open(pg: &PostgresConfig) -> Result<Self, AuditError> {
        let runtime = pg_runtime("cortex-audit-pg")?;
        match connect_chain(&runtime, pg) {
            Ok(client) => Ok(PostgresChain {
                runtime: Some(runtime),
                client: Arc::new(tokio::sync::Mutex::new(client)),
            }),
            Err(error) => {
                // Dropping a runtime inside an async context (`cortex serve` opening the
                // chain before PostgreSQL answers) panics; shutting it down never does.
                runtime.shutdown_background();
                Err(error)
            }
        }
    }

    fn run<T, F>(&self, future: F) -> Result<T, AuditError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, AuditError>> + Send + 'static,
    {
        let runtime = self.runtime.as_ref().ok_or(AuditError::PostgresStopped)?;
        block_on(runtime, future)?
    }
}

fn connect_chain(
    runtime: &tokio::runtime::Runtime,
    pg: &PostgresConfig,
) -> Result<Client, AuditError> {
    let (config, schema) = (pg.clone(), pg.schema.clone());
    block_on(runtime, async move {
        let client = connect(config).await?;
        create_in_schema(&client, &schema, SCHEMA).await?;
        Ok::<_, AuditError>(client)
    })?
}

impl Drop for PostgresChain {
    fn drop(&mut self) {
        // Dropping a runtime inside an async context panics; shutting it down in the
        // background never blocks.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl ChainBackend for PostgresChain {
    fn append(&self, build: TailBuilder) -> Result<Appended, AuditError> {
        let client = self.client.clone();
        self.run(async move {
            let mut client = client.lock().await;
            let tx = client.transaction().await?;
            tx.execute(LOCK_CHAIN, &[]).await?;
            let last = tx
                .query_opt(
                    "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1",
                    &[],
                )
                .await?
                .map(|row| checked_tail(row.get(0), row.get(1)))
                .transpose()?;
            let last_checkpoint: Option<i64> = tx
                .query_one("SELECT MAX(seq) FROM audit_checkpoints", &[])
                .await?
                .get(0);
            let tail = Tail {
                last,
                last_checkpoint: last_checkpoint
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(0),
            };
            let appended = build(&tail)?;
            if let Some(record) = &appended.record {
                insert_record(&tx, record).await?;
            }
            if let Some(checkpoint) = &appended.checkpoint {
                insert_checkpoint(&tx, checkpoint).await?;
            }
            tx.commit().await?;
            Ok(appended)
        })
    }

    fn records(&self, range: Option<(u64, u64)>) -> Result<Vec<AuditRecord>, AuditError> {
        let (from, to) = range.unwrap_or((0, u64::MAX));
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let (from, to) = (clamp(from), clamp(to));
        let client = self.client.clone();
        let rows = self.run(async move {
            let client = client.lock().await;
            Ok(client
                .query(
                    "SELECT seq, time_ns, kind, actor, body, prev_hash, hash FROM audit_records \
                     WHERE seq BETWEEN $1 AND $2 ORDER BY seq",
                    &[&from, &to],
                )
                .await?)
        })?;
        Ok(rows
            .into_iter()
            .map(|row| AuditRecord {
                seq: unsigned(row.get(0)),
                time_ns: unsigned(row.get(1)),
                kind: row.get(2),
                actor: row.get(3),
                body: row.get(4),
                prev_hash: to_hash(row.get(5)),
                hash: to_hash(row.get(6)),
            })
            .collect())
    }

    fn checkpoints(&self) -> Result<BTreeMap<u64, Checkpoint>, AuditError> {
        let client = self.client.clone();
        let rows = self.run(async move {
            let client = client.lock().await;
            Ok(client
                .query(
                    "SELECT seq, record_hash, prev_checkpoint_seq, time_ns, signature \
                     FROM audit_checkpoints ORDER BY seq",
                    &[],
                )
                .await?)
        })?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let checkpoint = Checkpoint {
                    seq: unsigned(row.get(0)),
                    record_hash: to_hash(row.get(1)),
                    prev_checkpoint_seq: unsigned(row.get(2)),
                    time_ns: unsigned(row.get(3)),
                    signature: row.get(4),
                };
                (checkpoint.seq, checkpoint)
            })
            .collect())
    }
}

/// A stored number as read for verification: a negative one reads as 0 (and fails there).
fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn signed(value: u64) -> Result<i64, AuditError> {
    i64::try_from(value).map_err(|_| AuditError::ValueTooLarge { value })
}

async fn insert_record(
    tx: &tokio_postgres::Transaction<'_>,
    record: &AuditRecord,
) -> Result<(), AuditError> {
    let params: [&(dyn ToSql + Sync); 7] = [
        &signed(record.seq)?,
        &signed(record.time_ns)?,
        &record.kind,
        &record.actor,
        &record.body,
        &record.prev_hash.as_slice(),
        &record.hash.as_slice(),
    ];
    tx.execute(
        "INSERT INTO audit_records (seq, time_ns, kind, actor, body, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &params,
    )
    .await?;
    Ok(())
}

async fn insert_checkpoint(
    tx: &tokio_postgres::Transaction<'_>,
    checkpoint: &Checkpoint,
) -> Result<(), AuditError> {
    let params: [&(dyn ToSql + Sync); 5] = [
        &signed(checkpoint.seq)?,
        &checkpoint.record_hash.as_slice(),
        &signed(checkpoint.prev_checkpoint_seq)?,
        &signed(checkpoint.time_ns)?,
        &checkpoint.signature,
    ];
    tx.execute(
        "INSERT INTO audit_checkpoints \
         (seq, record_hash, prev_checkpoint_seq, time_ns, signature) VALUES ($1, $2, $3, $4, $5)",
        &params,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use zeroize::Zeroizing;

    use crate::audit::tamper::{self, Chain, INTERVAL, SEED};
    use crate::audit::{AuditEntry, AuditKind, AuditLog, AuditSink};
    use crate::store::postgres::test_support::TestSchema;

    #[test]
    fn an_unreachable_server_is_an_error_also_inside_an_async_task() {
        let config = crate::store::postgres::test_support::unreachable_config();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let opened = runtime.block_on(async { super::PostgresChain::open(&config).err() });
        assert!(opened.is_some(), "opened a chain on a closed port");
    }

    /// A chain in a PostgreSQL schema of its own.
    struct PgChain {
        log: AuditLog,
        schema: TestSchema,
    }

    impl PgChain {
        fn new() -> Option<Self> {
            let schema = TestSchema::new("qsc_audit")?;
            let log =
                AuditLog::open_postgres_with_key(&schema.config, &Zeroizing::new(SEED), INTERVAL)
                    .unwrap();
            Some(PgChain { log, schema })
        }
    }

    impl Chain for PgChain {
        fn log(&self) -> &AuditLog {
            &self.log
        }

        fn reopen(&self) -> AuditLog {
            AuditLog::open_postgres_with_key(&self.schema.config, &Zeroizing::new(SEED), INTERVAL)
                .unwrap()
        }

        fn sql(&self, sql: &str) -> Result<(), String> {
            self.schema.sql(sql.to_owned()).map_err(|e| {
                // The server's own message (e.g. the trigger's) is in the source chain.
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    text.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                text
            })
        }

        fn drop_guards(&self) {
            self.sql(
                "ALTER TABLE audit_records DISABLE TRIGGER USER;
                 ALTER TABLE audit_checkpoints DISABLE TRIGGER USER;",
            )
            .unwrap();
        }

        fn bytes(&self, bytes: &[u8]) -> String {
            format!("'\\x{}'::bytea", hex::encode(bytes))
        }
    }

    tamper::tamper_tests!(PgChain::new());

    /// Two logs on connections of their own (as two replicas have) append at once from several
    /// threads: one gap-free chain, every record linked, checkpoints where they are due.
    #[test]
    fn concurrent_appenders_write_one_valid_chain() {
        let Some(chain) = PgChain::new() else {
            return;
        };
        let replicas = [Arc::new(chain.reopen()), Arc::new(chain.reopen())];
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = replicas[t % 2].clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        log.record(AuditEntry {
                            kind: AuditKind::Action,
                            actor: format!("replica-{}", t % 2),
                            body: json!({"thread": t, "i": i}),
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let report = chain.log().verify().unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.records, 100);
        assert_eq!(report.checkpoints, 100 / INTERVAL);
    }
}
