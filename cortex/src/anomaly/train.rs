//! Offline training from the event store: what `cortex baseline train --host H --since …` runs.

use crate::store::{EventQuery, IncidentQuery, MAX_QUERY_LIMIT, Store};

use super::baseline::{IncidentSpan, training_windows};
use super::config::{AnomalyConfig, MIN_TRAINING_WINDOWS};
use super::error::AnomalyError;
use super::features::windows_from_samples;
use super::model::{Model, TrainParams};
use super::model_store::ModelStore;

/// Trains `host`'s model on its `host_metrics` samples in `[since_ns, until_ns)`, leaving out
/// every window that overlaps one of the host's stored incidents (`opened_ns..=updated_ns`,
/// whatever their status), saves it to `config.models_dir` with the next version number, and
/// returns it.
pub fn train(
    host: &str,
    since_ns: u64,
    until_ns: u64,
    events: &dyn Store,
    config: &AnomalyConfig,
) -> Result<Model, AnomalyError> {
    config.validate()?;
    if host.is_empty() {
        return Err(AnomalyError::EmptyHost);
    }
    let models = ModelStore::open(&config.models_dir)?;
    let mut samples = host_metrics(host, since_ns, until_ns, events, MAX_QUERY_LIMIT)?;
    let (windows, stats) = windows_from_samples(&mut samples, config.window_s);
    if stats.invalid_samples > 0 {
        tracing::warn!(
            host,
            invalid = stats.invalid_samples,
            "host_metrics samples skipped"
        );
    }
    let incidents = incident_spans(host, events)?;
    let (windows, excluded) = training_windows(&windows, &incidents);
    if windows.len() < MIN_TRAINING_WINDOWS {
        return Err(AnomalyError::NotEnoughWindows {
            host: host.to_owned(),
            found: windows.len(),
            needed: MIN_TRAINING_WINDOWS,
        });
    }
    let previous = models.load(host).unwrap_or_else(|error| {
        tracing::warn!(host, %error, "previous anomaly model unreadable; starting at version 1");
        None
    });
    let params = TrainParams {
        window_s: config.window_s,
        forest: config.forest_params(),
        version: previous.map_or(1, |m| m.version + 1),
        trained_at_ns: qsc_event::now_ns(),
        excluded_incident_windows: excluded,
    };
    let model = Model::train(host, &windows, params)?;
    models.save(&model)?;
    Ok(model)
}

/// All of the host's samples in the span, paging through the store oldest first.
fn host_metrics(
    host: &str,
    since_ns: u64,
    until_ns: u64,
    events: &dyn Store,
    page_limit: usize,
) -> Result<Vec<(u64, qsc_event::HostMetrics)>, AnomalyError> {
    let mut samples = Vec::new();
    let mut query = EventQuery {
        host: Some(host.to_owned()),
        since_ns: Some(since_ns),
        until_ns: Some(until_ns),
        kinds: vec!["host_metrics".to_owned()],
        limit: page_limit,
    };
    // The store orders by (time, seq); a page resumes at the last time, skipping seqs seen there.
    let mut last: Option<(u64, u64)> = None;
    loop {
        let page = events.query_events(&query)?;
        let full = page.len() >= page_limit;
        let before = samples.len();
        for event in page {
            if last.is_some_and(|(time, seq)| event.time_ns == time && event.seq <= seq) {
                continue;
            }
            last = Some((event.time_ns, event.seq));
            if let qsc_event::EventKind::HostMetrics(metrics) = event.kind {
                samples.push((event.time_ns, metrics));
            }
        }
        if !full {
            return Ok(samples);
        }
        let Some((time_ns, _)) = last.filter(|_| samples.len() > before) else {
            return Err(AnomalyError::PagingStalled {
                time_ns: query.since_ns.unwrap_or(since_ns),
                limit: page_limit,
            });
        };
        query.since_ns = Some(time_ns);
    }
}

fn incident_spans(host: &str, events: &dyn Store) -> Result<Vec<IncidentSpan>, AnomalyError> {
    let query = IncidentQuery {
        host: Some(host.to_owned()),
        limit: MAX_QUERY_LIMIT,
        ..IncidentQuery::default()
    };
    Ok(events
        .incidents(&query)?
        .into_iter()
        .map(|incident| IncidentSpan {
            start_ns: incident.opened_ns,
            end_ns: incident.updated_ns.max(incident.opened_ns),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::synthetic::{Injection, SyntheticHost};
    use crate::score::{EntityKey, Incident, IncidentStatus, Severity};
    use crate::store::SqliteStore;

    fn config(dir: &std::path::Path) -> AnomalyConfig {
        AnomalyConfig {
            models_dir: dir.join("models"),
            trees: 30,
            ..AnomalyConfig::default()
        }
    }

    #[test]
    fn trains_from_stored_samples_and_bumps_the_version() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = SqliteStore::open_with_key(&dir.path().join("events.db"), &[3u8; 32])
            .unwrap_or_else(|e| panic!("{e}"));
        let events = SyntheticHost::new(8, 10).events("db-1", 500, &[(450, Injection::CpuBurst)]);
        store
            .append_events("db-1", qsc_event::Source::Alpha, &events)
            .unwrap_or_else(|e| panic!("{e}"));
        let config = config(dir.path());

        let model =
            train("db-1", 0, u64::MAX / 2, &store, &config).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((model.version, model.training.windows), (1, 500));
        assert_eq!(
            model.training.since_ns,
            events[0].time_ns - events[0].time_ns % 10_000_000_000
        );

        let again =
            train("db-1", 0, u64::MAX / 2, &store, &config).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.version, 2);
        assert_eq!(
            again.forest, model.forest,
            "same data and seed, same forest"
        );

        let saved = ModelStore::open(&config.models_dir).and_then(|s| s.load("db-1"));
        assert_eq!(saved.ok().flatten().map(|m| m.version), Some(2));
    }

    #[test]
    fn windows_of_stored_incidents_are_left_out() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = SqliteStore::open_with_key(&dir.path().join("events.db"), &[3u8; 32])
            .unwrap_or_else(|e| panic!("{e}"));
        let events = SyntheticHost::new(9, 10).events("db-2", 400, &[]);
        store
            .append_events("db-2", qsc_event::Source::Alpha, &events)
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .put_incident(&Incident {
                id: "inc-1".into(),
                host: "db-2".into(),
                entity: EntityKey::Host {
                    host: "db-2".into(),
                },
                title: "exfiltration".into(),
                severity: Severity::High,
                confidence: 0.9,
                prior: 0.01,
                log_odds: 2.0,
                attack_techniques: Vec::new(),
                status: IncidentStatus::Resolved,
                opened_ns: events[100].time_ns,
                updated_ns: events[149].time_ns,
                evidence: Vec::new(),
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let model = train("db-2", 0, u64::MAX / 2, &store, &config(dir.path()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(model.training.excluded_incident_windows, 50);
        assert_eq!(model.training.windows, 350);
    }

    #[test]
    fn paging_reads_every_sample_once_across_shared_timestamps() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = SqliteStore::open_with_key(&dir.path().join("events.db"), &[3u8; 32])
            .unwrap_or_else(|e| panic!("{e}"));
        let mut events = SyntheticHost::new(4, 10).events("h", 50, &[]);
        for i in (1..events.len()).step_by(2) {
            events[i].time_ns = events[i - 1].time_ns;
        }
        store
            .append_events("h", qsc_event::Source::Alpha, &events)
            .unwrap_or_else(|e| panic!("{e}"));
        let samples =
            host_metrics("h", 0, u64::MAX / 2, &store, 7).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(samples.len(), 50);

        let mut crowded = SyntheticHost::new(4, 10).events("c", 10, &[]);
        crowded.iter_mut().for_each(|e| e.time_ns = 1_000);
        store
            .append_events("c", qsc_event::Source::Alpha, &crowded)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            host_metrics("c", 0, u64::MAX / 2, &store, 3),
            Err(AnomalyError::PagingStalled {
                time_ns: 1_000,
                limit: 3
            })
        ));
    }

    #[test]
    fn too_few_windows_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = SqliteStore::open_with_key(&dir.path().join("events.db"), &[3u8; 32])
            .unwrap_or_else(|e| panic!("{e}"));
        let events = SyntheticHost::new(8, 10).events("db-1", 20, &[]);
        store
            .append_events("db-1", qsc_event::Source::Alpha, &events)
            .unwrap_or_else(|e| panic!("{e}"));
        let result = train("db-1", 0, u64::MAX / 2, &store, &config(dir.path()));
        assert!(matches!(
            result,
            Err(AnomalyError::NotEnoughWindows {
                found: 20,
                needed: 256,
                ..
            })
        ));
    }
}
