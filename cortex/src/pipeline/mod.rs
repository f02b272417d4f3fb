//! The analysis pipeline after storage: a bounded queue feeds one worker thread that runs each
//! event through detection (Sigma rules), scoring (Bayesian fusion) and decision (node state,
//! audited), persisting the incidents it opens or updates.
//!
//! One worker keeps every host's events in delivery order. When the queue stays full for
//! `pipeline.max_block_ms` the ingest session gives up on that batch: it is already stored, so
//! only its analysis is skipped, and the skipped events are counted.

pub mod hits;
pub mod rules;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender};
use qsc_event::{Event, now_ns};

use crate::decide::NodeStates;
use crate::detect::Engine;
use crate::metrics::Metrics;
use crate::score::{Fusion, Incident, IncidentStatus, Severity};
use crate::store::{IncidentQuery, MAX_QUERY_LIMIT, Store, StoreError};

/// Batches between two prunes of the scorer's expired evidence.
const PRUNE_EVERY_BATCHES: u64 = 1024;

/// Stored events of one agent batch, in delivery order.
#[derive(Debug)]
pub struct Batch {
    pub events: Vec<Event>,
    /// When the batch reached ingest: the start of the decision latency.
    pub arrived: Instant,
    /// When the batch was durable: the start of the analysis latency.
    pub stored: Instant,
}

/// The ingest side of the bounded queue.
#[derive(Clone)]
pub struct PipelineSender {
    tx: Sender<Batch>,
    metrics: Arc<Metrics>,
    max_block: Duration,
}

/// Creates the bounded queue between ingest and the worker.
pub fn queue(
    capacity_batches: usize,
    max_block: Duration,
    metrics: Arc<Metrics>,
) -> (PipelineSender, Receiver<Batch>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity_batches);
    (
        PipelineSender {
            tx,
            metrics,
            max_block,
        },
        rx,
    )
}

impl PipelineSender {
    /// Queues a batch, waiting at most `max_block` for room; a batch that does not fit is
    /// counted as dropped (it stays in the store, unanalysed).
    pub fn submit(&self, batch: Batch) {
        let count = batch.events.len() as u64;
        if count == 0 {
            return;
        }
        self.metrics
            .queue_depth_events
            .fetch_add(count, Ordering::Relaxed);
        let failure = match self.tx.send_timeout(batch, self.max_block) {
            Ok(()) => return,
            Err(SendTimeoutError::Timeout(_)) => "the detection queue stayed full",
            Err(SendTimeoutError::Disconnected(_)) => "the detection worker has stopped",
        };
        self.metrics
            .queue_depth_events
            .fetch_sub(count, Ordering::Relaxed);
        self.metrics
            .queue_dropped_events
            .fetch_add(count, Ordering::Relaxed);
        tracing::error!(events = count, "stored events not analysed: {failure}");
    }
}

/// Detection, scoring and decision state, owned by the worker.
pub struct Pipeline {
    engine: Engine,
    fusion: Fusion,
    nodes: Arc<Mutex<NodeStates>>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// Current severity of every incident this cortex has seen, for the metrics.
    severities: HashMap<String, Severity>,
    batches: u64,
}

impl Pipeline {
    /// Starts from the store's incidents (for the severity gauges).
    pub fn new(
        engine: Engine,
        fusion: Fusion,
        nodes: Arc<Mutex<NodeStates>>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let open = store.incidents(&IncidentQuery {
            status: Some(IncidentStatus::Open),
            limit: MAX_QUERY_LIMIT,
            ..IncidentQuery::default()
        })?;
        let severities: HashMap<String, Severity> =
            open.into_iter().map(|i| (i.id, i.severity)).collect();
        for severity in severities.values() {
            metrics.incident_severity(None, *severity);
        }
        Ok(Pipeline {
            engine,
            fusion,
            nodes,
            store,
            metrics,
            severities,
            batches: 0,
        })
    }

    /// Processes batches until every sender is gone.
    pub fn run(mut self, rx: Receiver<Batch>) {
        while let Ok(batch) = rx.recv() {
            self.metrics
                .queue_depth_events
                .fetch_sub(batch.events.len() as u64, Ordering::Relaxed);
            self.process(batch);
        }
        tracing::info!("detection pipeline drained and stopped");
    }

    /// Detects, scores and decides on each event of the batch, then persists the incidents the
    /// batch touched (once each, in their latest form).
    pub fn process(&mut self, batch: Batch) {
        let mut touched: Vec<Incident> = Vec::new();
        for event in &batch.events {
            for hit in self.engine.evaluate(event) {
                self.metrics.rule_hits.fetch_add(1, Ordering::Relaxed);
                match self.fusion.observe_hit(&hits::score_hit(&hit, event)) {
                    Ok(Some(incident)) => {
                        self.decide(&incident);
                        touched.retain(|i| i.id != incident.id);
                        touched.push(incident);
                    }
                    Ok(None) => {}
                    Err(error) => self.error("scoring a rule hit", &error),
                }
            }
        }
        for incident in &touched {
            if let Err(error) = self.store.put_incident(incident) {
                self.error("persisting an incident", &error);
            }
        }
        let count = batch.events.len() as u64;
        self.metrics
            .events_analysed
            .fetch_add(count, Ordering::Relaxed);
        self.metrics
            .decision_latency
            .observe_n(batch.arrived.elapsed(), count);
        self.metrics
            .analysis_latency
            .observe_n(batch.stored.elapsed(), count);
        self.batches += 1;
        if self.batches.is_multiple_of(PRUNE_EVERY_BATCHES) {
            self.fusion.prune(now_ns());
        }
    }

    fn decide(&mut self, incident: &Incident) {
        let previous = self
            .severities
            .insert(incident.id.clone(), incident.severity);
        self.metrics.incident_severity(previous, incident.severity);
        if previous.is_none() {
            tracing::warn!(
                id = %incident.id,
                host = %incident.host,
                severity = %incident.severity,
                confidence = incident.confidence,
                title = %incident.title,
                "incident opened"
            );
        }
        // The API's release handler shares the state machine; a poisoned lock still holds a
        // consistent map (each transition replaces one record whole).
        let decision = self
            .nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .on_incident(incident);
        match decision {
            Ok(Some(record)) => {
                self.metrics
                    .node_transitions
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(host = %record.host, state = %record.state, "node state changed");
                if let Err(error) = self.store.put_node_state(&record) {
                    self.error("persisting a node state", &error);
                }
            }
            Ok(None) => {}
            Err(error) => self.error("deciding on an incident", &error),
        }
    }

    fn error(&self, what: &str, error: &dyn std::error::Error) {
        self.metrics.pipeline_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%error, "pipeline failed {what}");
    }
}
