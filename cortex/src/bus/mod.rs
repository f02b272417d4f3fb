//! The event bus between ingest gateways and detection workers when the cortex runs as several
//! replicas (`[bus] kind = "nats"`); with `kind = "none"` (the default) one cortex stores and
//! detects in process and this module is unused.
//!
//! A gateway publishes each validated batch of one agent to the JetStream subject
//! `<subject_prefix>.<partition>.<host>` and acknowledges the agent only once the stream has
//! it ([`nats::EventBus::publish`]). Hosts hash to `partitions` partitions
//! ([`partition::partition_of`]); each partition has a durable consumer that hands out one
//! batch at a time, and a worker consumes a partition only while it holds the partition's
//! lease, a PostgreSQL session advisory lock ([`lease::Leases`]) that the server drops when the
//! worker's connection dies. So all events of one host go to one worker at a time, in order,
//! and a dead worker's partitions pass to the others. A worker stores each batch (duplicates by
//! `(host, agent, seq)` are refused by the store as always), hands detection the events above
//! the recorded detection progress, records the new progress, and only then acknowledges the
//! message ([`nats::Worker`]).

pub mod commands;
pub mod detection;
pub mod lease;
pub mod nats;
pub mod partition;

use qsc_event::{Event, Source};
use serde::{Deserialize, Serialize};

/// `[bus]`: how replicas pass events; every key is documented in `config/cortex.example.toml`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    pub kind: BusKind,
    /// The NATS server(s), comma-separated `nats://host:port`.
    pub url: String,
    /// The JetStream stream, created if missing.
    pub stream: String,
    /// Subjects are `<subject_prefix>.<partition>.<host>`.
    pub subject_prefix: String,
    /// The workers' durable consumers are `<consumer>-p<partition>`.
    pub consumer: String,
    /// Seconds a worker has to acknowledge a batch before it goes to another worker.
    pub ack_wait_s: u64,
    /// Partitions the hosts hash to: the unit of ownership between workers. Every replica must
    /// use the same number; changing it moves hosts between partitions.
    pub partitions: u32,
    /// Milliseconds between a worker's looks for free partitions and its fair share.
    pub lease_poll_ms: u64,
    /// Commands to agents are NATS requests on `<command_prefix>.<host>`.
    pub command_prefix: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    /// One cortex: ingest stores and detects in process.
    None,
    /// NATS JetStream between gateways and workers.
    Nats,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            kind: BusKind::None,
            url: "nats://127.0.0.1:4233".into(),
            stream: "QSC_EVENTS".into(),
            subject_prefix: "qsc.events".into(),
            consumer: "qsc-workers".into(),
            ack_wait_s: 30,
            partitions: 16,
            lease_poll_ms: 1000,
            command_prefix: "qsc.cmd".into(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusConfigError {
    #[error("bus.{key} = {value:?} must be a non-empty NATS name (letters, digits, - and _)")]
    Name { key: &'static str, value: String },
    #[error("bus.subject_prefix = {0:?} must be dot-separated NATS tokens without wildcards")]
    SubjectPrefix(String),
    #[error("bus.ack_wait_s must be between 1 and 3600")]
    AckWait,
    #[error("bus.partitions must be between 1 and {max}", max = partition::MAX_PARTITIONS)]
    Partitions,
    #[error("bus.lease_poll_ms must be between 10 and 60000")]
    LeasePoll,
    #[error(
        "bus.command_prefix = {0:?} must be dot-separated NATS tokens without wildcards, \
         outside bus.subject_prefix"
    )]
    CommandPrefix(String),
}

impl BusConfig {
    pub fn validate(&self) -> Result<(), BusConfigError> {
        for (key, value) in [("stream", &self.stream), ("consumer", &self.consumer)] {
            if !is_nats_name(value) {
                return Err(BusConfigError::Name {
                    key,
                    value: value.clone(),
                });
            }
        }
        if !self.subject_prefix.split('.').all(is_nats_name) {
            return Err(BusConfigError::SubjectPrefix(self.subject_prefix.clone()));
        }
        if !(1..=3600).contains(&self.ack_wait_s) {
            return Err(BusConfigError::AckWait);
        }
        if !(1..=partition::MAX_PARTITIONS).contains(&self.partitions) {
            return Err(BusConfigError::Partitions);
        }
        if !(10..=60_000).contains(&self.lease_poll_ms) {
            return Err(BusConfigError::LeasePoll);
        }
        let under_events = format!("{}.", self.subject_prefix);
        if !self.command_prefix.split('.').all(is_nats_name)
            || format!("{}.", self.command_prefix).starts_with(&under_events)
            || under_events.starts_with(&format!("{}.", self.command_prefix))
        {
            return Err(BusConfigError::CommandPrefix(self.command_prefix.clone()));
        }
        Ok(())
    }

    /// The subject of a host's events: its partition, then its host token.
    pub fn subject(&self, host_id: &str) -> String {
        let partition = partition::partition_of(host_id, self.partitions);
        format!(
            "{}.{partition}.{}",
            self.subject_prefix,
            host_token(host_id)
        )
    }

    /// The subjects of one partition's hosts.
    pub fn partition_subjects(&self, partition: u32) -> String {
        format!("{}.{partition}.*", self.subject_prefix)
    }

    /// The durable consumer of one partition.
    pub fn partition_consumer(&self, partition: u32) -> String {
        format!("{}-p{partition}", self.consumer)
    }

    /// The subject commands for a host's agent are requested on: `<command_prefix>.<host token>`.
    pub fn command_subject(&self, host_id: &str) -> String {
        format!("{}.{}", self.command_prefix, host_token(host_id))
    }
}

/// A host id as one subject token: itself when it is a plain name, else `x` and its hex form
/// (so that `.`, `*`, `>` or spaces in a host id cannot change routing).
fn host_token(host_id: &str) -> String {
    if is_nats_name(host_id) && !host_id.starts_with('x') {
        host_id.to_owned()
    } else {
        format!("x{}", hex::encode(host_id))
    }
}

fn is_nats_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// What one bus message carries: a validated batch of one agent of one host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BusBatch {
    pub host_id: String,
    pub agent: Source,
    /// Wall clock (ns) when the gateway received the batch: where decision latency starts.
    /// 0 when unknown (then it starts when a worker takes the batch).
    #[serde(default)]
    pub received_ns: u64,
    pub events: Vec<Event>,
}

impl BusBatch {
    /// JetStream's de-duplication id: a re-published batch (an agent's retry through another
    /// gateway) is dropped by the stream within its duplicate window.
    pub fn message_id(&self) -> String {
        let first = self.events.first().map_or(0, |e| e.seq);
        let last = self.events.last().map_or(0, |e| e.seq);
        format!(
            "{}/{}/{first}-{last}",
            self.host_id,
            crate::store::codec::agent_name(self.agent)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_keep_hostile_host_ids_in_one_token() {
        let config = BusConfig {
            partitions: 1,
            ..BusConfig::default()
        };
        assert_eq!(config.subject("web-01"), "qsc.events.0.web-01");
        assert_eq!(config.subject("a.b"), "qsc.events.0.x612e62");
        assert_eq!(config.subject(">"), "qsc.events.0.x3e");
        // A plain name starting with `x` could collide with an encoded one.
        assert_eq!(config.subject("x3e"), "qsc.events.0.x783365");
        assert_eq!(config.partition_subjects(0), "qsc.events.0.*");
        let config = BusConfig::default();
        let partition = partition::partition_of("web-01", config.partitions);
        assert_eq!(
            config.subject("web-01"),
            format!("qsc.events.{partition}.web-01")
        );
        assert_eq!(config.partition_consumer(3), "qsc-workers-p3");
    }

    #[test]
    fn defaults_validate_and_bad_names_are_refused() {
        let mut config = BusConfig::default();
        assert_eq!(config.validate(), Ok(()));
        config.subject_prefix = "qsc.*".into();
        assert!(matches!(
            config.validate(),
            Err(BusConfigError::SubjectPrefix(_))
        ));
        config.subject_prefix = "qsc.events".into();
        for overlapping in ["qsc.events.cmd", "qsc", "qsc.*"] {
            config.command_prefix = overlapping.into();
            assert!(matches!(
                config.validate(),
                Err(BusConfigError::CommandPrefix(_))
            ));
        }
        config.command_prefix = "qsc.cmd".into();
        assert_eq!(config.command_subject("a.b"), "qsc.cmd.x612e62");
        config.stream = "a.b".into();
        assert!(matches!(
            config.validate(),
            Err(BusConfigError::Name { key: "stream", .. })
        ));
        config.stream = "QSC_EVENTS".into();
        config.partitions = 0;
        assert_eq!(config.validate(), Err(BusConfigError::Partitions));
        config.partitions = 16;
        config.lease_poll_ms = 0;
        assert_eq!(config.validate(), Err(BusConfigError::LeasePoll));
    }
}
