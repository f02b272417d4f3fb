//! NATS JetStream: the gateways' publisher and the workers' durable consumer.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, stream};
use futures_util::StreamExt;
use qsc_event::Event;
use tokio::sync::watch;

use super::{BusBatch, BusConfig};
use crate::store::{AppendOutcome, Store, StoreError};

/// How long the stream keeps a message id to drop a re-published batch.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

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
    #[error("acknowledging bus message {stream_seq} failed: {reason}")]
    Ack { stream_seq: u64, reason: String },
    #[error("storing a bus batch: {0}")]
    Store(#[from] StoreError),
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

    /// The durable consumer the workers share, created if missing.
    pub async fn worker(&self, store: Arc<dyn Store>) -> Result<Worker, BusError> {
        let failed = |e: &dyn std::fmt::Display| BusError::Consumer {
            consumer: self.config.consumer.clone(),
            reason: e.to_string(),
        };
        let stream = self
            .jetstream
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| failed(&e))?;
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                &self.config.consumer,
                jetstream::consumer::pull::Config {
                    durable_name: Some(self.config.consumer.clone()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(self.config.ack_wait_s),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| failed(&e))?;
        Ok(Worker { consumer, store })
    }
}

/// What a worker hands to detection: the events of one batch the store had not seen before.
pub trait Detection: Send + Sync {
    /// `batch` holds the events not stored before, in their agent's delivery order.
    fn detect(&self, batch: BusBatch);
}

/// Consumes batches: store, detect what is new, acknowledge.
pub struct Worker {
    consumer: PullConsumer,
    store: Arc<dyn Store>,
}

impl Worker {
    /// Runs until `shutdown` turns true or the bus fails. A batch is acknowledged only after
    /// it is stored and its new events went to `detection`; a worker that dies before that
    /// leaves it to be redelivered (to another worker after `ack_wait_s`), where the store
    /// refuses what was already stored, so no event is stored or detected twice. Known gap: a
    /// worker killed between the store's commit and `detection` loses those events for
    /// detection (they stay stored); closing it needs the detection progress in the store.
    pub async fn run(
        self,
        detection: Arc<dyn Detection>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), BusError> {
        let mut messages = self
            .consumer
            .messages()
            .await
            .map_err(|e| BusError::Consumer {
                consumer: "messages".into(),
                reason: e.to_string(),
            })?;
        loop {
            let message = tokio::select! {
                next = messages.next() => next,
                _ = shutdown.changed() => return Ok(()),
            };
            let Some(message) = message else {
                return Ok(());
            };
            let message = message.map_err(|e| BusError::Consumer {
                consumer: "next message".into(),
                reason: e.to_string(),
            })?;
            let stream_seq = message.info().map_or(0, |info| info.stream_sequence);
            let ack = match self
                .handle(stream_seq, &message.payload, detection.clone())
                .await
            {
                Ok(()) => AckKind::Ack,
                // A message no worker can ever store would come back forever: refuse it for good.
                Err(
                    error @ (BusError::Decode { .. }
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

    /// Decodes, stores and detects one message.
    async fn handle(
        &self,
        stream_seq: u64,
        payload: &[u8],
        detection: Arc<dyn Detection>,
    ) -> Result<(), BusError> {
        let batch: BusBatch = serde_json::from_slice(payload).map_err(|e| BusError::Decode {
            stream_seq,
            reason: e.to_string(),
        })?;
        self.store_and_detect(batch, detection).await.map(|_| ())
    }

    async fn store_and_detect(
        &self,
        batch: BusBatch,
        detection: Arc<dyn Detection>,
    ) -> Result<AppendOutcome, BusError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let outcome = store.append_events(&batch.host_id, batch.agent, &batch.events)?;
            let fresh: Vec<Event> = batch
                .events
                .into_iter()
                .filter(|event| !outcome.duplicates.contains(&event.seq))
                .collect();
            if !fresh.is_empty() {
                detection.detect(BusBatch {
                    events: fresh,
                    ..batch
                });
            }
            Ok(outcome)
        })
        .await
        .map_err(|e| BusError::Join(e.to_string()))?
    }
}
