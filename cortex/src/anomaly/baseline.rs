//! The live baseline: per host, samples → windows → (learning | scoring), with retraining.
//!
//! - **Learning.** A host without a saved model keeps its windows; once it has
//!   `learning_period_s` worth of windows that do not overlap an incident, its first model is
//!   trained, saved, and scoring starts with the next window.
//! - **Scoring.** Each closed window gets a [`WindowScore`]; pass
//!   [`WindowScore::to_anomaly_score`] to `Fusion::observe_anomaly`.
//! - **Drift.** Every `retrain_every_s` (in event time) the model is retrained on the last
//!   `history_s` of windows, leaving out every window that overlaps a span the caller reported
//!   with [`Baseline::mark_incident`]. Windows are not left out for merely scoring high: that
//!   would ratchet the model towards ever-narrower "normal".
//!
//! Samples stamped more than 5 minutes ahead of the cortex's clock, late samples (for a window
//! already closed) and malformed ones are counted in [`Baseline::sample_stats`], not used.
//!
//! Training runs inline: about 0.7 s for a week of 10 s windows, 2–3 s for 30 days (see
//! `cargo bench -p cortex --bench anomaly`); async callers run `observe` on a blocking thread.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use qsc_event::{Event, EventKind};

use super::config::{AnomalyConfig, MIN_TRAINING_WINDOWS};
use super::error::AnomalyError;
use super::features::{AggregatorStats, Window, WindowAggregator};
use super::model::{Model, TrainParams, WindowScore};
use super::model_store::ModelStore;

const NS_PER_S: u64 = 1_000_000_000;
/// A sample stamped further ahead of the cortex's clock than this is refused: accepted, it would
/// make every later (correctly stamped) sample of the host "late".
const MAX_FUTURE_SKEW_NS: u64 = 300 * NS_PER_S;

/// A time span `[start_ns, end_ns]` during which a host was part of an incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IncidentSpan {
    pub start_ns: u64,
    pub end_ns: u64,
}

impl IncidentSpan {
    fn covers(&self, window: &Window) -> bool {
        window.overlaps(self.start_ns, self.end_ns)
    }
}

/// Windows usable for training: those not overlapping any incident span.
pub fn training_windows<'a>(
    windows: impl IntoIterator<Item = &'a Window>,
    incidents: &[IncidentSpan],
) -> (Vec<Window>, u64) {
    let mut kept = Vec::new();
    let mut excluded = 0;
    for window in windows {
        if incidents.iter().any(|span| span.covers(window)) {
            excluded += 1;
        } else {
            kept.push(window.clone());
        }
    }
    (kept, excluded)
}

struct HostState {
    aggregator: WindowAggregator,
    model: Option<Model>,
    history: VecDeque<Window>,
    incidents: Vec<IncidentSpan>,
    /// Event time at or after which the next (re)training is attempted.
    next_training_ns: u64,
}

pub struct Baseline {
    config: AnomalyConfig,
    models: ModelStore,
    hosts: HashMap<String, HostState>,
}

impl Baseline {
    /// Validates the config and opens its model directory.
    pub fn open(config: AnomalyConfig) -> Result<Self, AnomalyError> {
        config.validate()?;
        let models = ModelStore::open(&config.models_dir)?;
        Ok(Baseline {
            config,
            models,
            hosts: HashMap::new(),
        })
    }

    /// Feeds one event; non-`host_metrics` events are ignored. Returns the score of the window
    /// the sample closed, when the host has a model.
    pub fn observe(&mut self, event: &Event) -> Result<Option<WindowScore>, AnomalyError> {
        let EventKind::HostMetrics(metrics) = &event.kind else {
            return Ok(None);
        };
        let state = self.host_state(&event.host_id)?;
        if event.time_ns > qsc_event::now_ns().saturating_add(MAX_FUTURE_SKEW_NS) {
            state.aggregator.reject_future();
            return Ok(None);
        }
        let Some(window) = state.aggregator.push(event.time_ns, metrics) else {
            return Ok(None);
        };
        Ok(self.close_window(&event.host_id, window))
    }

    /// Reports that `host` was part of an incident during `[start_ns, end_ns]`: windows in that
    /// span, already seen or still to come, are never trained on.
    pub fn mark_incident(
        &mut self,
        host: &str,
        start_ns: u64,
        end_ns: u64,
    ) -> Result<(), AnomalyError> {
        let state = self.host_state(host)?;
        state.incidents.push(IncidentSpan {
            start_ns: start_ns.min(end_ns),
            end_ns: start_ns.max(end_ns),
        });
        Ok(())
    }

    /// The host's current model, if it has one.
    pub fn model(&self, host: &str) -> Option<&Model> {
        self.hosts.get(host).and_then(|state| state.model.as_ref())
    }

    /// Samples of the host that could not be used.
    pub fn sample_stats(&self, host: &str) -> Option<AggregatorStats> {
        self.hosts.get(host).map(|state| state.aggregator.stats())
    }

    fn host_state(&mut self, host: &str) -> Result<&mut HostState, AnomalyError> {
        if host.is_empty() {
            return Err(AnomalyError::EmptyHost);
        }
        let tracked = self.hosts.len();
        match self.hosts.entry(host.to_owned()) {
            Entry::Occupied(entry) => Ok(entry.into_mut()),
            Entry::Vacant(entry) => {
                if tracked >= self.config.max_hosts {
                    return Err(AnomalyError::TooManyHosts {
                        host: host.to_owned(),
                        max: self.config.max_hosts,
                    });
                }
                let model = self.models.load(host)?;
                let next_training_ns = model
                    .as_ref()
                    .map_or(0, |m| retraining_time(&self.config, m.training.until_ns));
                Ok(entry.insert(HostState {
                    aggregator: WindowAggregator::new(self.config.window_s),
                    model,
                    history: VecDeque::new(),
                    incidents: Vec::new(),
                    next_training_ns,
                }))
            }
        }
    }

    fn close_window(&mut self, host: &str, window: Window) -> Option<WindowScore> {
        let history_cap = self.config.history_windows();
        let state = self.hosts.get_mut(host)?;
        let score = state.model.as_ref().map(|model| model.score(&window));
        let window_end_ns = window.end_ns;
        state.history.push_back(window);
        while state.history.len() > history_cap {
            state.history.pop_front();
        }
        if let Some(oldest) = state.history.front().map(|w| w.start_ns) {
            state.incidents.retain(|span| span.end_ns >= oldest);
        }
        let due = match state.model {
            Some(_) => window_end_ns >= state.next_training_ns,
            None => state.history.len() >= self.config.learning_windows(),
        };
        if due {
            self.train_from_history(host, window_end_ns);
        }
        score
    }

    /// Trains on the host's history and saves the model; failures are logged and retried at the
    /// next retraining time (or with the next window while learning).
    fn train_from_history(&mut self, host: &str, now_ns: u64) {
        let Some(state) = self.hosts.get_mut(host) else {
            return;
        };
        let (windows, excluded) = training_windows(&state.history, &state.incidents);
        let needed = match state.model {
            Some(_) => MIN_TRAINING_WINDOWS,
            None => self.config.learning_windows(),
        };
        state.next_training_ns = retraining_time(&self.config, now_ns);
        if windows.len() < needed {
            if state.model.is_some() {
                tracing::warn!(
                    host,
                    usable = windows.len(),
                    excluded,
                    needed,
                    "anomaly retraining skipped: too few windows outside incidents"
                );
            }
            return;
        }
        let params = TrainParams {
            window_s: self.config.window_s,
            forest: self.config.forest_params(),
            version: state.model.as_ref().map_or(1, |m| m.version + 1),
            trained_at_ns: qsc_event::now_ns(),
            excluded_incident_windows: excluded,
        };
        let model = match Model::train(host, &windows, params) {
            Ok(model) => model,
            Err(error) => {
                tracing::error!(host, %error, "anomaly model training failed");
                return;
            }
        };
        if let Err(error) = self.models.save(&model) {
            tracing::error!(host, %error, "anomaly model could not be saved; using it unsaved");
        }
        tracing::info!(
            host,
            version = model.version,
            windows = model.training.windows,
            excluded,
            "anomaly model trained"
        );
        state.model = Some(model);
    }
}

/// When a model trained up to `trained_until_ns` is next retrained.
fn retraining_time(config: &AnomalyConfig, trained_until_ns: u64) -> u64 {
    trained_until_ns.saturating_add(config.retrain_every_s.saturating_mul(NS_PER_S))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::synthetic::{Injection, SyntheticHost};

    fn config(dir: &std::path::Path) -> AnomalyConfig {
        AnomalyConfig {
            models_dir: dir.to_owned(),
            learning_period_s: 3000,
            retrain_every_s: 3000,
            history_s: 6000,
            trees: 30,
            ..AnomalyConfig::default()
        }
    }

    fn feed(baseline: &mut Baseline, events: &[Event]) -> Vec<WindowScore> {
        events
            .iter()
            .filter_map(|e| baseline.observe(e).unwrap_or_else(|err| panic!("{err}")))
            .collect()
    }

    #[test]
    fn learns_then_scores_then_retrains_without_incident_windows() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut baseline = Baseline::open(config(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        let mut host = SyntheticHost::new(21, 10);

        // 300 windows of learning (the 301st sample closes the 300th window).
        let scores = feed(&mut baseline, &host.events("web-1", 301, &[]));
        assert!(scores.is_empty());
        let first = baseline.model("web-1").map(|m| m.version);
        assert_eq!(first, Some(1));

        // Scoring: a login storm stands out; it is part of an incident.
        let storm = host.events("web-1", 40, &[(20, Injection::LoginStorm)]);
        let scores = feed(&mut baseline, &storm);
        assert_eq!(scores.len(), 40);
        let top = scores.iter().max_by(|a, b| a.score.total_cmp(&b.score));
        let top_start = top.map(|s| s.window_start_ns);
        assert_eq!(
            top_start,
            Some(storm[20].time_ns - storm[20].time_ns % 10_000_000_000)
        );
        baseline
            .mark_incident("web-1", storm[15].time_ns, storm[25].time_ns)
            .unwrap_or_else(|e| panic!("{e}"));

        // Another 300 windows pass: retrained, leaving the incident's windows out.
        feed(&mut baseline, &host.events("web-1", 300, &[]));
        let model = baseline
            .model("web-1")
            .unwrap_or_else(|| panic!("no model"));
        assert_eq!(model.version, 2);
        assert_eq!(model.training.excluded_incident_windows, 11);

        // The saved model is the one in use, and a fresh baseline picks it up.
        let saved = ModelStore::open(dir.path())
            .and_then(|store| store.load("web-1"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(saved.as_ref(), Some(model));
        let mut restarted = Baseline::open(config(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        let scores = feed(&mut restarted, &host.events("web-1", 3, &[]));
        assert_eq!(scores.len(), 2);
        assert!(scores.iter().all(|s| s.model_version == 2));
    }

    #[test]
    fn training_windows_skip_every_overlap() {
        let windows = SyntheticHost::new(1, 10).windows(10, &[]);
        let span = IncidentSpan {
            start_ns: windows[2].start_ns + 5,
            end_ns: windows[4].start_ns,
        };
        let (kept, excluded) = training_windows(&windows, &[span]);
        assert_eq!(excluded, 3);
        assert_eq!(kept.len(), 7);
    }

    #[test]
    fn other_events_future_samples_and_extra_hosts_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let one_host = AnomalyConfig {
            max_hosts: 1,
            ..config(dir.path())
        };
        let mut baseline = Baseline::open(one_host).unwrap_or_else(|e| panic!("{e}"));
        let heartbeat = Event::new(
            "a",
            qsc_event::Source::Alpha,
            1,
            EventKind::Heartbeat(qsc_event::Heartbeat {
                version: "1".into(),
                uptime_s: 1,
                active_hooks: Vec::new(),
            }),
        );
        assert!(matches!(baseline.observe(&heartbeat), Ok(None)));
        let mut host = SyntheticHost::new(1, 10);
        feed(&mut baseline, &host.events("a", 2, &[]));
        let mut future = host.events("a", 1, &[]);
        future[0].time_ns = qsc_event::now_ns() + 3600 * NS_PER_S;
        assert!(matches!(baseline.observe(&future[0]), Ok(None)));
        let stats = baseline.sample_stats("a").unwrap_or_default();
        assert_eq!(stats.future_samples, 1);
        let other = host.events("b", 1, &[]);
        assert!(matches!(
            baseline.observe(&other[0]),
            Err(AnomalyError::TooManyHosts { max: 1, .. })
        ));
    }
}
