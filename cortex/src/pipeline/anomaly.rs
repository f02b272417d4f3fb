//! The anomaly stage: `host_metrics` samples go from the detection worker to a thread that owns
//! the host baselines ([`Baseline`]); the window scores it returns enter the fusion as anomaly
//! evidence at the worker's next batch, and every incident the worker touches is reported back
//! so that retraining leaves its windows out.
//!
//! Learning and retraining (about 0.7 s per week of windows) happen on the baseline thread, so
//! the worker never waits for them. Both queues are bounded; a sample or score that does not fit
//! is dropped, counted and logged, never waited for.

use std::collections::HashMap;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use qsc_event::{Event, EventKind};

use crate::anomaly::{AnomalyConfig, AnomalyError, Baseline, WindowScore};
use crate::score::Incident;

use super::Pipeline;

/// Messages queued for the baseline thread (about 10 s of samples from 1600 hosts).
const SAMPLE_QUEUE: usize = 16_384;
/// Scores waiting for the worker's next batch.
const SCORE_QUEUE: usize = 4_096;
/// After the first, one log line per this many dropped messages or baseline errors.
const LOG_EVERY: u64 = 10_000;
/// Incidents whose reported span is remembered (to send only spans that grew).
const MAX_REMEMBERED_INCIDENTS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum AnomalyStageError {
    #[error("opening the anomaly baseline: {0}")]
    Baseline(#[from] AnomalyError),
    #[error("starting the anomaly baseline thread: {0}")]
    Spawn(std::io::Error),
}

enum Message {
    Sample(Box<Event>),
    Incident {
        host: String,
        start_ns: u64,
        end_ns: u64,
    },
}

/// The worker's side of the baseline thread. Dropping it ends the thread once its queue is
/// drained.
pub struct AnomalyStage {
    to_baseline: Sender<Message>,
    scores: Receiver<WindowScore>,
    /// Incident id → end of the span last reported for it.
    reported: HashMap<String, u64>,
    /// An incident span is reported again once it has grown by a window.
    window_ns: u64,
    dropped_messages: u64,
}

impl AnomalyStage {
    /// Opens the baselines (validating `config`, creating its models directory) and starts the
    /// baseline thread; the handle ends after the stage is dropped.
    pub fn start(config: AnomalyConfig) -> Result<(Self, JoinHandle<()>), AnomalyStageError> {
        let window_ns = config.window_s.saturating_mul(1_000_000_000);
        let baseline = Baseline::open(config)?;
        let (to_baseline, inbox) = crossbeam_channel::bounded(SAMPLE_QUEUE);
        let (outbox, scores) = crossbeam_channel::bounded(SCORE_QUEUE);
        let thread = std::thread::Builder::new()
            .name("cortex-anomaly".into())
            .spawn(move || run_baseline(baseline, &inbox, &outbox))
            .map_err(AnomalyStageError::Spawn)?;
        let stage = AnomalyStage {
            to_baseline,
            scores,
            reported: HashMap::new(),
            window_ns,
            dropped_messages: 0,
        };
        Ok((stage, thread))
    }

    /// Queues the batch's `host_metrics` samples for the baselines.
    fn offer(&mut self, events: &[Event]) {
        for event in events {
            if matches!(event.kind, EventKind::HostMetrics(_)) {
                self.send(Message::Sample(Box::new(event.clone())));
            }
        }
    }

    /// Every window score the baseline thread has produced so far.
    fn take_scores(&self) -> Vec<WindowScore> {
        self.scores.try_iter().collect()
    }

    /// Reports the incidents' spans to their hosts' baselines, each time one has grown.
    fn report_incidents(&mut self, incidents: &[Incident]) {
        for incident in incidents {
            let end_ns = incident.updated_ns.max(incident.opened_ns);
            let grown = self
                .reported
                .get(&incident.id)
                .is_none_or(|&last| end_ns >= last.saturating_add(self.window_ns));
            if !grown {
                continue;
            }
            if self.reported.len() >= MAX_REMEMBERED_INCIDENTS {
                self.reported.clear();
            }
            self.reported.insert(incident.id.clone(), end_ns);
            self.send(Message::Incident {
                host: incident.host.clone(),
                start_ns: incident.opened_ns,
                end_ns,
            });
        }
    }

    fn send(&mut self, message: Message) {
        let failure = match self.to_baseline.try_send(message) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => "its queue is full",
            Err(TrySendError::Disconnected(_)) => "its thread has stopped",
        };
        self.dropped_messages += 1;
        if self.dropped_messages % LOG_EVERY == 1 {
            tracing::error!(
                dropped = self.dropped_messages,
                "anomaly baseline input dropped: {failure}"
            );
        }
    }
}

impl Pipeline {
    /// Attaches the anomaly stage: from now on each batch feeds it and takes its scores.
    pub fn with_anomaly(mut self, stage: AnomalyStage) -> Self {
        self.anomaly = Some(stage);
        self
    }

    /// Feeds the batch's samples to the baselines, folds the scores that are ready into the
    /// fusion (adding the incidents they open or raise to `touched`), and reports every touched
    /// incident back to the baselines. `arrived_mono_ns`: when the batch reached ingest.
    pub(super) fn anomaly_step(
        &mut self,
        events: &[Event],
        arrived_mono_ns: u64,
        touched: &mut Vec<Incident>,
    ) {
        let Some(stage) = self.anomaly.as_mut() else {
            return;
        };
        stage.offer(events);
        for score in stage.take_scores() {
            let evidence = score.to_anomaly_score(self.fusion.config());
            match self.fusion.observe_anomaly(&evidence) {
                Ok(Some(incident)) => {
                    self.respond(&incident, None, arrived_mono_ns);
                    self.decide(&incident);
                    touched.retain(|i| i.id != incident.id);
                    touched.push(incident);
                }
                Ok(None) => {}
                Err(error) => self.error("scoring an anomaly window", &error),
            }
        }
        if let Some(stage) = self.anomaly.as_mut() {
            stage.report_incidents(touched);
        }
    }
}

/// The baseline thread: runs until the stage is dropped and its queue drained.
fn run_baseline(mut baseline: Baseline, inbox: &Receiver<Message>, outbox: &Sender<WindowScore>) {
    let mut errors = 0u64;
    let mut dropped_scores = 0u64;
    for message in inbox {
        let outcome = match message {
            Message::Sample(event) => baseline.observe(&event).map(|score| {
                if let Some(score) = score
                    && outbox.try_send(score).is_err()
                {
                    dropped_scores += 1;
                    if dropped_scores % LOG_EVERY == 1 {
                        tracing::error!(
                            dropped = dropped_scores,
                            "anomaly scores dropped: the detection worker is not taking them"
                        );
                    }
                }
            }),
            Message::Incident {
                host,
                start_ns,
                end_ns,
            } => baseline.mark_incident(&host, start_ns, end_ns),
        };
        if let Err(error) = outcome {
            errors += 1;
            if errors % LOG_EVERY == 1 {
                tracing::warn!(%error, errors, "anomaly baseline refused an input");
            }
        }
    }
    tracing::info!("anomaly baseline stopped");
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use zeroize::Zeroizing;

    use super::*;
    use crate::anomaly::ModelStore;
    use crate::anomaly::synthetic::{Injection, SyntheticHost};
    use crate::audit::AuditLog;
    use crate::config::DetectConfig;
    use crate::decide::NodeStates;
    use crate::metrics::Metrics;
    use crate::pipeline::{Batch, rules};
    use crate::score::fusion::ANOMALY_RULE_ID;
    use crate::score::{Fusion, ScoreConfig};
    use crate::store::{IncidentQuery, SqliteStore, Store};

    const HOST: &str = "web-1";
    const WAIT: Duration = Duration::from_secs(120);

    fn anomaly_config(dir: &Path) -> AnomalyConfig {
        AnomalyConfig {
            models_dir: dir.join("models"),
            learning_period_s: 3000,
            retrain_every_s: 3000,
            history_s: 6000,
            trees: 30,
            ..AnomalyConfig::default()
        }
    }

    /// The real detection worker (shipped rules, fusion, node states, SQLite store) with the
    /// anomaly stage attached. An anomaly alone weighs up to 1000 here, so that it opens an
    /// incident on its own.
    fn pipeline(dir: &Path) -> (Pipeline, JoinHandle<()>, Arc<dyn Store>) {
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open_with_key(&dir.join("cortex.db"), &[7u8; 32])
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let audit = AuditLog::open_with_key(&dir.join("audit.db"), &Zeroizing::new([9u8; 32]), 64)
            .unwrap_or_else(|e| panic!("{e}"));
        let nodes = Arc::new(Mutex::new(NodeStates::new(Arc::new(audit), Vec::new())));
        let (engine, _) =
            rules::load_engine(&DetectConfig::default()).unwrap_or_else(|e| panic!("{e}"));
        let fusion = Fusion::new(ScoreConfig {
            anomaly_max_lr: 1000.0,
            ..ScoreConfig::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let metrics = Arc::new(Metrics::default());
        let (stage, thread) =
            AnomalyStage::start(anomaly_config(dir)).unwrap_or_else(|e| panic!("{e}"));
        let pipeline = Pipeline::new(engine, fusion, nodes, store.clone(), metrics)
            .unwrap_or_else(|e| panic!("{e}"))
            .with_anomaly(stage);
        (pipeline, thread, store)
    }

    fn feed(pipeline: &mut Pipeline, events: Vec<Event>) {
        for chunk in events.chunks(50) {
            let host = chunk.first().map_or("", |e| e.host_id.as_str());
            pipeline.process(Batch::new(
                host,
                qsc_event::Source::Alpha,
                chunk.into(),
                Instant::now(),
            ));
        }
    }

    /// Runs empty batches (which take the baseline's scores) until `check` holds.
    fn until<T>(pipeline: &mut Pipeline, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            pipeline.process(Batch::new(
                "",
                qsc_event::Source::Alpha,
                Arc::new([]),
                Instant::now(),
            ));
            if let Some(value) = check() {
                return value;
            }
            assert!(Instant::now() < deadline, "not reached within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_login_storm_after_learning_becomes_anomaly_evidence_and_is_left_out_of_retraining() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (mut pipeline, thread, store) = pipeline(dir.path());
        let mut host = SyntheticHost::new(21, 10);

        // 300 windows of normal samples: the first model is trained on the baseline thread.
        feed(&mut pipeline, host.events(HOST, 301, &[]));
        let incidents = || {
            store
                .incidents(&IncidentQuery {
                    host: Some(HOST.into()),
                    ..IncidentQuery::default()
                })
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(incidents().is_empty(), "normal samples opened an incident");

        // A burst of failed logins.
        let storm = [(20, Injection::LoginStorm), (21, Injection::LoginStorm)];
        feed(&mut pipeline, host.events(HOST, 40, &storm));
        let incident = until(&mut pipeline, || incidents().into_iter().next());
        let evidence = incident
            .evidence
            .iter()
            .find(|e| e.rule_id == ANOMALY_RULE_ID)
            .unwrap_or_else(|| panic!("no anomaly evidence in {incident:?}"));
        assert!(
            evidence.title.contains("failed_logins_per_s="),
            "{}",
            evidence.title
        );
        assert!(evidence.lr > 100.0, "{evidence:?}");

        // 300 more windows: the model is retrained without the incident's windows.
        feed(&mut pipeline, host.events(HOST, 300, &[]));
        let models = ModelStore::open(&dir.path().join("models")).unwrap_or_else(|e| panic!("{e}"));
        let retrained = until(&mut pipeline, || {
            models
                .load(HOST)
                .ok()
                .flatten()
                .filter(|model| model.version == 2)
        });
        assert!(
            retrained.training.excluded_incident_windows >= 1,
            "{:?}",
            retrained.training
        );

        drop(pipeline);
        assert!(thread.join().is_ok(), "the baseline thread panicked");
    }

    #[test]
    fn a_bad_config_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let bad = AnomalyConfig {
            window_s: 0,
            ..anomaly_config(dir.path())
        };
        assert!(matches!(
            AnomalyStage::start(bad),
            Err(AnomalyStageError::Baseline(AnomalyError::Config {
                key: "window_s",
                ..
            }))
        ));
    }

    fn incident(id: &str, opened_ns: u64, updated_ns: u64) -> Incident {
        Incident {
            id: id.into(),
            host: HOST.into(),
            entity: crate::score::EntityKey::Host { host: HOST.into() },
            title: "t".into(),
            severity: crate::score::Severity::Medium,
            confidence: 0.6,
            prior: 0.001,
            log_odds: 0.4,
            attack_techniques: Vec::new(),
            status: crate::score::IncidentStatus::Open,
            opened_ns,
            updated_ns,
            evidence: Vec::new(),
        }
    }

    #[test]
    fn only_samples_go_to_the_baseline_incident_spans_once_per_window_and_overflow_is_counted() {
        let (to_baseline, inbox) = crossbeam_channel::bounded(3);
        let (_outbox, scores) = crossbeam_channel::bounded(1);
        let mut stage = AnomalyStage {
            to_baseline,
            scores,
            reported: HashMap::new(),
            window_ns: 10,
            dropped_messages: 0,
        };
        let heartbeat = Event::new(
            HOST,
            qsc_event::Source::Alpha,
            1,
            EventKind::Heartbeat(qsc_event::Heartbeat {
                version: "1".into(),
                uptime_s: 1,
                active_hooks: Vec::new(),
            }),
        );
        let mut events = SyntheticHost::new(1, 10).events(HOST, 1, &[]);
        events.insert(0, heartbeat);
        stage.offer(&events);
        assert!(matches!(inbox.try_recv(), Ok(Message::Sample(e)) if e.seq == 1 && e.time_ns > 0));
        assert!(inbox.is_empty());

        // The span is sent when new and when it grew by a window, not for every update.
        for updated_ns in [100, 105, 109, 110] {
            stage.report_incidents(&[incident("i-1", 50, updated_ns)]);
        }
        let spans: Vec<(u64, u64)> = inbox
            .try_iter()
            .filter_map(|m| match m {
                Message::Incident {
                    start_ns, end_ns, ..
                } => Some((start_ns, end_ns)),
                Message::Sample(_) => None,
            })
            .collect();
        assert_eq!(spans, vec![(50, 100), (50, 110)]);

        // A full queue drops and counts instead of waiting.
        stage.offer(&SyntheticHost::new(2, 10).events(HOST, 5, &[]));
        assert_eq!(stage.dropped_messages, 2);
    }
}
