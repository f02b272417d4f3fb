//! Partition leases and detection progress in PostgreSQL.
//!
//! A worker owns a partition while its lease connection holds the session advisory lock
//! `(partition namespace, partition)`; PostgreSQL releases every lock of a connection that
//! dies, so the partitions of a killed worker become free by themselves. Each worker also holds
//! a membership lock `(member namespace, random id)` for as long as it lives, so that every
//! worker can count the live ones and take only its fair share of the partitions.
//!
//! Detection progress (the highest seq of each `(host, agent)` whose detection is over) is
//! written through the same connection: a write can only succeed while the session, and
//! so the lease, is alive.

use qsc_event::Source;
use tokio_postgres::Client;

use super::partition::lock_key;
use crate::pipeline::adopt::DetectedMarks;
use crate::store::codec::{agent_from_name, agent_name};
use crate::store::config::PostgresConfig;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("cannot open the lease connection to PostgreSQL: {0}")]
    Connect(#[from] crate::store::StoreError),
    #[error("partition lease: {what} failed: {source}")]
    Postgres {
        what: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("the lease connection to PostgreSQL was lost: every partition lease with it")]
    Lost,
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    #[error("seq {seq} of host {host_id} does not fit PostgreSQL's signed 64-bit integers")]
    SeqTooLarge { host_id: String, seq: u64 },
}

/// One worker's lease connection.
pub struct Leases {
    client: Client,
    partition_ns: i32,
    member_ns: i32,
    member_id: i32,
}

/// Advisory locks with two `int4` keys show in `pg_locks` with `objsubid = 2`.
const COUNT_MEMBERS: &str = "SELECT count(*) FROM pg_locks \
     WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid::bigint = $1 \
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

impl Leases {
    /// Connects and joins the worker group `group` (one per stream and consumer).
    pub async fn join(pg: &PostgresConfig, group: &str) -> Result<Self, LeaseError> {
        let client = crate::store::postgres::connect(pg.clone()).await?;
        let mut leases = Leases {
            client,
            partition_ns: lock_key(&format!("qsc-partition/{group}")),
            member_ns: lock_key(&format!("qsc-member/{group}")),
            member_id: 0,
        };
        // A random id that no live member holds (a clash only means drawing again).
        loop {
            let mut bytes = [0u8; 4];
            getrandom::fill(&mut bytes).map_err(|e| LeaseError::Random(e.to_string()))?;
            let id = (u32::from_be_bytes(bytes) & 0x7fff_ffff) as i32;
            if leases
                .try_lock(leases.member_ns, id, "joining the worker group")
                .await?
            {
                leases.member_id = id;
                return Ok(leases);
            }
        }
    }

    /// This worker's id in its group (used to spread where workers start taking partitions).
    pub fn member_id(&self) -> u32 {
        self.member_id as u32
    }

    /// True once the connection, and with it every lease, is gone.
    pub fn is_lost(&self) -> bool {
        self.client.is_closed()
    }

    fn check(&self) -> Result<(), LeaseError> {
        if self.is_lost() {
            return Err(LeaseError::Lost);
        }
        Ok(())
    }

    /// How many workers of the group are alive (this one included).
    pub async fn members(&self) -> Result<u32, LeaseError> {
        self.check()?;
        let row = self
            .client
            .query_one(COUNT_MEMBERS, &[&i64::from(self.member_ns)])
            .await
            .map_err(|source| LeaseError::Postgres {
                what: "counting the live workers",
                source,
            })?;
        Ok(u32::try_from(row.get::<_, i64>(0))
            .unwrap_or(u32::MAX)
            .max(1))
    }

    /// Takes the lease of `partition` if no live worker holds it.
    pub async fn try_acquire(&self, partition: u32) -> Result<bool, LeaseError> {
        self.check()?;
        self.try_lock(
            self.partition_ns,
            partition as i32,
            "taking a partition lease",
        )
        .await
    }

    /// Gives the lease of `partition` back.
    pub async fn release(&self, partition: u32) -> Result<(), LeaseError> {
        self.check()?;
        self.client
            .execute(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&self.partition_ns, &(partition as i32)],
            )
            .await
            .map_err(|source| LeaseError::Postgres {
                what: "releasing a partition lease",
                source,
            })?;
        Ok(())
    }

    async fn try_lock(&self, ns: i32, key: i32, what: &'static str) -> Result<bool, LeaseError> {
        let row = self
            .client
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&ns, &key])
            .await
            .map_err(|source| LeaseError::Postgres { what, source })?;
        Ok(row.get(0))
    }

    /// The highest seq of `agent` of `host_id` whose detection is over.
    pub async fn detected(&self, host_id: &str, agent: Source) -> Result<u64, LeaseError> {
        self.check()?;
        let row = self
            .client
            .query_opt(
                "SELECT seq FROM detected WHERE host = $1 AND agent = $2",
                &[&host_id, &agent_name(agent)],
            )
            .await
            .map_err(|source| LeaseError::Postgres {
                what: "reading the detection progress",
                source,
            })?;
        Ok(row.map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
    }

    /// The detection progress of every `(host, agent)` that `owns` accepts.
    pub async fn progress(
        &self,
        owns: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<DetectedMarks, LeaseError> {
        self.check()?;
        let rows = self
            .client
            .query("SELECT host, agent, seq FROM detected", &[])
            .await
            .map_err(|source| LeaseError::Postgres {
                what: "reading the detection progress",
                source,
            })?;
        let mut marks = DetectedMarks::new();
        for row in rows {
            let (host, agent): (String, &str) = (row.get(0), row.get(1));
            if let (true, Some(agent)) = (owns(&host), agent_from_name(agent)) {
                marks.insert(
                    (host, agent),
                    u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
                );
            }
        }
        Ok(marks)
    }

    /// Records that detection of `agent` of `host_id` is over up to `seq`.
    pub async fn mark_detected(
        &self,
        host_id: &str,
        agent: Source,
        seq: u64,
    ) -> Result<(), LeaseError> {
        self.check()?;
        let value = i64::try_from(seq).map_err(|_| LeaseError::SeqTooLarge {
            host_id: host_id.to_owned(),
            seq,
        })?;
        self.client
            .execute(
                "INSERT INTO detected (host, agent, seq) VALUES ($1, $2, $3) \
                 ON CONFLICT (host, agent) DO UPDATE SET seq = GREATEST(detected.seq, excluded.seq)",
                &[&host_id, &agent_name(agent), &value],
            )
            .await
            .map_err(|source| LeaseError::Postgres {
                what: "recording the detection progress",
                source,
            })?;
        Ok(())
    }
}
