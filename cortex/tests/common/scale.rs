//! The scale-out servers `cargo xtask setup --scale` starts (NATS with JetStream on
//! 127.0.0.1:4233, PostgreSQL on 127.0.0.1:5432 with role and database `qsc`), and names of a
//! test's own in them, dropped when the test ends.

use std::time::Duration;

use cortex::bus::{BusConfig, BusKind};
use cortex::store::config::PostgresConfig;

const SERVERS: [&str; 2] = ["127.0.0.1:4233", "127.0.0.1:5432"];
const POSTGRES_URL: &str = "host=127.0.0.1 port=5432 user=qsc password=qsc dbname=qsc";

/// True when the servers answer; otherwise skips with the reason, or fails when the run
/// requires the server tests (`QSC_REQUIRE_ROOT_TESTS=1`, as `cargo xtask test` sets).
pub fn servers_or_skip() -> bool {
    let up = SERVERS.iter().all(|addr| {
        addr.parse()
            .is_ok_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
    });
    if !up {
        assert!(
            std::env::var("QSC_REQUIRE_ROOT_TESTS").map_or(true, |v| v != "1"),
            "NATS (127.0.0.1:4233) and PostgreSQL (127.0.0.1:5432) are required: run `cargo xtask setup --scale`"
        );
        eprintln!(
            "skipping: NATS/PostgreSQL not running; `sudo cargo xtask setup --scale` starts them"
        );
    }
    up
}

/// A PostgreSQL schema and a JetStream stream (with its subjects and consumer) of the test's
/// own; both are dropped when this is, also when the test fails.
pub struct Scratch {
    pub postgres: PostgresConfig,
    pub bus: BusConfig,
}

impl Scratch {
    /// Fresh names under `tag` (letters and digits).
    pub fn new(tag: &str) -> Self {
        let id = format!(
            "{tag}{}_{}",
            std::process::id(),
            qsc_event::now_ns() % 1_000_000
        );
        Scratch {
            postgres: PostgresConfig {
                url: POSTGRES_URL.into(),
                password_file: Default::default(),
                schema: format!("qsc_{id}"),
            },
            bus: BusConfig {
                kind: BusKind::Nats,
                stream: format!("QSC_TEST_{id}"),
                subject_prefix: format!("qsctest{id}.events"),
                command_prefix: format!("qsctest{id}.cmd"),
                consumer: format!("workers-{id}"),
                ack_wait_s: 2,
                ..Default::default()
            },
        }
    }

    /// The `[store.postgres]` and `[bus]` tables of a replica's config.
    pub fn config_tables(&self) -> String {
        let (p, b) = (&self.postgres, &self.bus);
        format!(
            "[store.postgres]\nurl = \"{}\"\nschema = \"{}\"\n\
             [bus]\nkind = \"nats\"\nurl = \"{}\"\nstream = \"{}\"\nsubject_prefix = \"{}\"\n\
             command_prefix = \"{}\"\nconsumer = \"{}\"\nack_wait_s = {}\n",
            p.url,
            p.schema,
            b.url,
            b.stream,
            b.subject_prefix,
            b.command_prefix,
            b.consumer,
            b.ack_wait_s
        )
    }

    async fn drop_all(postgres: PostgresConfig, bus: BusConfig) -> Result<(), String> {
        let (client, connection) = tokio_postgres::connect(&postgres.url, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", postgres.schema);
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| e.to_string())?;
        let nats = async_nats::connect(bus.url.as_str())
            .await
            .map_err(|e| e.to_string())?;
        match async_nats::jetstream::new(nats)
            .delete_stream(&bus.stream)
            .await
        {
            Ok(_) => Ok(()),
            // Never created (the test stopped early): nothing to drop.
            Err(error) if error.to_string().contains("not found") => Ok(()),
            Err(error) => Err(error.to_string()),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let (postgres, bus) = (self.postgres.clone(), self.bus.clone());
        // Its own thread and runtime: drop may run inside the test's runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(Self::drop_all(postgres, bus))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "cannot drop test schema {} / stream {}: {dropped:?}",
                self.postgres.schema, self.bus.stream
            );
        }
    }
}
