//! NATS JetStream: the gateways' publisher and the workers' partitioned consumers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, stream};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::lease::{LeaseError, Leases};
use super::partition::{fair_share, partition_of};
use super::{BusBatch, BusConfig};
use crate::pipeline::adopt::{DetectedMarks, HostFilter};
use crate::store::config::PostgresConfig;
use crate::store::{Store, StoreError};

/// How long the stream keeps a message id to drop a re-published batch.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long one pull request of a partition consumer waits for a message: also how long a
/// released partition may still have a request of its former owner outstanding.
const PULL_EXPIRES: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("JetStream stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error("JetStream consumer {consumer}: {reason}")]
    Consumer { consumer: String, reason: String },
    #[error("publishing to {subject} failed: {reason}")]
    Publish { subject: String, reason: String },
    #[error("cannot encode the batch of host {host_id}: {reason}")]
    Encode { host_id: String, reason: String },
    #[error("bus message {stream_seq} is not a batch: {reason}")]
    Decode { stream_seq: u64, reason: String },
    #[error("bus message {stream_seq} is for host {host_id}, not in partition {partition}")]
    WrongPartition {
        stream_seq: u64,
        host_id: String,
        partition: u32,
    },
    #[error("acknowledging bus message {stream_seq} failed: {reason}")]
    Ack { stream_seq: u64, reason: String },
    #[error("storing a bus batch: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("the storing thread failed: {0}")]
    Join(String),
}

/// A connection to JetStream with the event stream in place.
#[derive(Clone)]
pub struct EventBus {
    jetstream: jetstream::Context,
    config: BusConfig,
}

impl EventBus {
    /// Connects and creates the stream (`<subject_prefix>.>`, file storage) if missing.
    pub async fn connect(config: &BusConfig) -> Result<Self, BusError> {
        let client = async_nats::connect(config.url.as_str())
            .await
            .map_err(|e| BusError::Connect {
                url: config.url.clone(),
                reason: e.to_string(),
            })?;
        let jetstream = jetstream::new(client);
        jetstream
            .get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                subjects: vec![format!("{}.>", config.subject_prefix)],
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Stream {
                stream: config.stream.clone(),
                reason: e.to_string(),
            })?;
        Ok(EventBus {
            jetstream,
            config: config.clone(),
        })
    }

    /// Publishes a batch to its host's subject and returns once the stream has stored it
    /// (or already had it: a duplicate is as good as stored).
    pub async fn publish(&self, batch: &BusBatch) -> Result<(), BusError> {
        let subject = self.config.subject(&batch.host_id);
        let payload = serde_json::to_vec(batch).map_err(|e| BusError::Encode {
            host_id: batch.host_id.clone(),
            reason: e.to_string(),
        })?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", batch.message_id().as_str());
        let failed = |e: &dyn std::fmt::Display| BusError::Publish {
            subject: subject.clone(),
            reason: e.to_string(),
        };
        self.jetstream
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .map_err(|e| failed(&e))?
            .await
            .map_err(|e| failed(&e))?;
        Ok(())
    }

    /// A worker of the group of this stream and consumer, with its lease connection to the
    /// PostgreSQL schema `pg` names (the one the store uses).
    pub async fn worker(
        &self,
        store: Arc<dyn Store>,
        pg: &PostgresConfig,
    ) -> Result<Worker, BusError> {
        let group = format!("{}/{}", self.config.stream, self.config.consumer);
        let leases = Leases::join(pg, &group).await?;
        Ok(Worker {
            bus: self.clone(),
            store,
            leases: Arc::new(leases),
        })
    }

    /// The durable consumer of one partition: one message in flight at a time, so a host's
    /// batches are handled strictly in stream order, also across a change of owner.
    async fn partition_consumer(&self, partition: u32) -> Result<PullConsumer, BusError> {
        let name = self.config.partition_consumer(partition);
        let failed = |e: &dyn std::fmt::Display| BusError::Consumer {
            consumer: name.clone(),
            reason: e.to_string(),
        };
        let stream = self
            .jetstream
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| failed(&e))?;
        stream
            .get_or_create_consumer(
                &name,
                jetstream::consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: self.config.partition_subjects(partition),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(self.config.ack_wait_s),
                    max_ack_pending: 1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| failed(&e))
    }
}

/// What a worker hands detection. Both calls may block; the worker calls them on a blocking
/// thread, never two at once for one partition.
pub trait Detection: Send + Sync {
    /// Detects on events of `batch` (its host's events not recorded as detected, in delivery
    /// order) and returns once what they caused (incidents, node states) is durable: the worker
    /// then records them as detected. A worker that dies between the two leaves them to the
    /// partition's next owner, which hands them to detection again: detection must then take
    /// hits it already folded as repeats (the pipeline's fusion does, by their event refs).
    fn detect(&self, batch: BusBatch);
    /// This worker now owns `partition`: rebuild the detection state (correlation windows,
    /// open incidents and their evidence, node states) of the hosts `owns` accepts from the
    /// store, up to their detection progress `detected`, before the partition's first batch
    /// ([`crate::pipeline::Pipeline::adopt`] does it for the pipeline).
    fn adopt(&self, partition: u32, owns: HostFilter, detected: DetectedMarks);
}

/// Owns a fair share of the partitions: for each, stores the batches, hands what detection has
/// not seen to detection, records the progress, acknowledges.
pub struct Worker {
    bus: EventBus,
    store: Arc<dyn Store>,
    leases: Arc<Leases>,
}

/// A partition this worker holds the lease of, and the task consuming it. Dropping it (when
/// the worker's future is dropped) aborts the task, as the death of the process would.
struct Owned {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), BusError>>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Worker {
    /// Runs until `shutdown` turns true or the bus, the store or the lease connection fails.
    /// Every `lease_poll_ms` it takes free partitions up to its fair share of the live workers
    /// and gives back what is above it (after the batch in hand).
    pub async fn run(
        self,
        detection: Arc<dyn Detection>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), BusError> {
        let mut owned: BTreeMap<u32, Owned> = BTreeMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(self.bus.config.lease_poll_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break Ok(()),
            }
            if *shutdown.borrow() {
                break Ok(());
            }
            if let Err(error) = self.rebalance(&mut owned, &detection).await {
                break Err(error);
            }
        };
        let stopped = self.stop_all(owned).await;
        result.and(stopped)
    }

    /// Reaps finished partition tasks, gives back partitions above the fair share and takes
    /// free ones up to it.
    async fn rebalance(
        &self,
        owned: &mut BTreeMap<u32, Owned>,
        detection: &Arc<dyn Detection>,
    ) -> Result<(), BusError> {
        let finished: Vec<u32> = owned
            .iter()
            .filter(|(_, o)| o.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for partition in finished {
            if let Some(mut done) = owned.remove(&partition) {
                join(&mut done.task).await?;
                self.leases.release(partition).await?;
            }
        }
        let partitions = self.bus.config.partitions;
        let share = fair_share(partitions, self.leases.members().await?) as usize;
        while owned.len() > share {
            let Some((partition, mut excess)) = owned.pop_last() else {
                break;
            };
            let _ = excess.stop.send(true);
            join(&mut excess.task).await?;
            self.leases.release(partition).await?;
            tracing::info!(partition, "gave a partition back for balance");
        }
        let start = self.leases.member_id() % partitions;
        for offset in 0..partitions {
            if owned.len() >= share {
                break;
            }
            let partition = (start + offset) % partitions;
            if owned.contains_key(&partition) || !self.leases.try_acquire(partition).await? {
                continue;
            }
            tracing::info!(partition, "took a partition");
            match self.start(partition, detection.clone()).await {
                Ok(started) => {
                    owned.insert(partition, started);
                }
                Err(error) => {
                    self.leases.release(partition).await?;
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    async fn start(
        &self,
        partition: u32,
        detection: Arc<dyn Detection>,
    ) -> Result<Owned, BusError> {
        let consumer = self.bus.partition_consumer(partition).await?;
        let (stop, stopped) = watch::channel(false);
        let consumer = PartitionConsumer {
            partition,
            partitions: self.bus.config.partitions,
            consumer,
            store: self.store.clone(),
            leases: self.leases.clone(),
            detection,
        };
        Ok(Owned {
            stop,
            task: tokio::spawn(consumer.run(stopped)),
        })
    }

    /// Stops every partition task after its batch in hand; the leases go with the connection.
    async fn stop_all(&self, owned: BTreeMap<u32, Owned>) -> Result<(), BusError> {
        let mut result = Ok(());
        for (partition, mut owned) in owned {
            let _ = owned.stop.send(true);
            let joined = join(&mut owned.task).await;
            let released = match &joined {
                Ok(()) => self.leases.release(partition).await.map_err(BusError::from),
                Err(_) => Ok(()),
            };
            result = result.and(joined).and(released);
        }
        result
    }
}

async fn join(task: &mut JoinHandle<Result<(), BusError>>) -> Result<(), BusError> {
    task.await.map_err(|e| BusError::Join(e.to_string()))?
}

/// Consumes one owned partition, one batch at a time.
struct PartitionConsumer {
    partition: u32,
    partitions: u32,
    consumer: PullConsumer,
    store: Arc<dyn Store>,
    leases: Arc<Leases>,
    detection: Arc<dyn Detection>,
}

impl PartitionConsumer {
    async fn run(self, mut stop: watch::Receiver<bool>) -> Result<(), BusError> {
        self.adopt().await?;
        let mut messages = self
            .consumer
            .stream()
            .max_messages_per_batch(1)
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .map_err(|e| BusError::Consumer {
                consumer: format!("partition {}", self.partition),
                reason: e.to_string(),
            })?;
        loop {
            let message = tokio::select! {
                next = messages.next() => next,
                _ = stop.changed() => return Ok(()),
            };
            let Some(message) = message else {
                return Ok(());
            };
            let message = message.map_err(|e| BusError::Consumer {
                consumer: format!("partition {}", self.partition),
                reason: e.to_string(),
            })?;
            let stream_seq = message.info().map_or(0, |info| info.stream_sequence);
            let ack = match self.handle(stream_seq, &message.payload).await {
                Ok(()) => AckKind::Ack,
                // A message no worker can ever store would come back forever: refuse it for good.
                Err(
                    error @ (BusError::Decode { .. }
                    | BusError::WrongPartition { .. }
                    | BusError::Store(
                        StoreError::InvalidEvent { .. }
                        | StoreError::HostMismatch { .. }
                        | StoreError::AgentMismatch { .. }
                        | StoreError::ValueTooLarge { .. },
                    )),
                ) => {
                    tracing::error!(%error, stream_seq, "dropping a bus message that cannot be stored");
                    AckKind::Term
                }
                Err(error) => return Err(error),
            };
            message.ack_with(ack).await.map_err(|e| BusError::Ack {
                stream_seq,
                reason: e.to_string(),
            })?;
        }
    }

    /// Has detection rebuild the state of this partition's hosts.
    async fn adopt(&self) -> Result<(), BusError> {
        let (detection, partition, partitions) =
            (self.detection.clone(), self.partition, self.partitions);
        let owns: HostFilter =
            Arc::new(move |host: &str| partition_of(host, partitions) == partition);
        let detected = self.leases.progress(&*owns).await?;
        tokio::task::spawn_blocking(move || detection.adopt(partition, owns, detected))
            .await
            .map_err(|e| BusError::Join(e.to_string()))
    }

    /// Stores a batch, detects its events above the detection progress, records the progress.
    /// A worker that dies anywhere in here leaves the message unacknowledged: the partition's
    /// next owner gets it again, the store refuses what is stored, and detection gets exactly
    /// the events whose detection was not recorded as over.
    async fn handle(&self, stream_seq: u64, payload: &[u8]) -> Result<(), BusError> {
        let batch: BusBatch = serde_json::from_slice(payload).map_err(|e| BusError::Decode {
            stream_seq,
            reason: e.to_string(),
        })?;
        if partition_of(&batch.host_id, self.partitions) != self.partition {
            return Err(BusError::WrongPartition {
                stream_seq,
                host_id: batch.host_id,
                partition: self.partition,
            });
        }
        let Some(last) = batch.events.iter().map(|e| e.seq).max() else {
            return Ok(());
        };
        let store = self.store.clone();
        let stored = batch.clone();
        tokio::task::spawn_blocking(move || {
            store.append_events(&stored.host_id, stored.agent, &stored.events)
        })
        .await
        .map_err(|e| BusError::Join(e.to_string()))??;
        let detected = self.leases.detected(&batch.host_id, batch.agent).await?;
        let (host_id, agent) = (batch.host_id.clone(), batch.agent);
        let fresh = BusBatch {
            events: batch
                .events
                .into_iter()
                .filter(|event| event.seq > detected)
                .collect(),
            ..batch
        };
        if !fresh.events.is_empty() {
            let detection = self.detection.clone();
            tokio::task::spawn_blocking(move || detection.detect(fresh))
                .await
                .map_err(|e| BusError::Join(e.to_string()))?;
        }
        self.leases.mark_detected(&host_id, agent, last).await?;
        Ok(())
    }
}
