//! The host anomaly baseline: an isolation forest per host over windows of guardian-alpha's
//! `host_metrics` samples, turned into likelihood ratios for the Bayesian fusion.
//!
//! - [`features`]: samples → per-window feature vectors (the feature list is documented there);
//! - [`forest`]: the seeded Isolation Forest and its per-feature attribution;
//! - [`marginal`]: the per-feature tail view that catches a window extreme in one feature;
//! - [`calibration`]: value → tail p-value → likelihood ratio → fusion score;
//! - [`model`]: a trained model, its scoring, and its checksummed, versioned file format;
//! - [`model_store`]: one model file per host in `[anomaly] models_dir`;
//! - [`baseline`]: the live path (learning period, scoring, retraining without incident
//!   windows);
//! - [`train()`]: offline training from the event store (`cortex baseline train`);
//! - [`synthetic`]: seeded synthetic hosts with injected attacks, and ROC AUC.
//!
//! Wiring into the pipeline: feed every event to [`Baseline::observe`]; for each
//! [`WindowScore`] it returns, call
//! `fusion.observe_anomaly(&score.to_anomaly_score(&score_config))`; report incident spans of a
//! host with [`Baseline::mark_incident`].

pub mod baseline;
pub mod calibration;
pub mod config;
mod error;
pub mod features;
pub mod forest;
pub mod marginal;
pub mod model;
pub mod model_store;
pub mod synthetic;
mod train;

pub use baseline::{Baseline, IncidentSpan};
pub use config::AnomalyConfig;
pub use error::AnomalyError;
pub use features::{Feature, Window};
pub use model::{Driver, Model, WindowScore};
pub use model_store::ModelStore;
pub use train::train;

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::seq::index;
    use rand_chacha::ChaCha8Rng;

    use super::features::Window;
    use super::forest::ForestParams;
    use super::model::{Model, TrainParams};
    use super::synthetic::{Injection, SyntheticHost, roc_auc};
    use super::*;

    const DAY_WINDOWS: usize = 8640;
    const PER_KIND: usize = 30;

    /// One day of normal windows to train on, then a day with 30 injections of each kind.
    fn scenario(data_seed: u64) -> (Vec<Window>, Vec<Window>, Vec<Option<Injection>>) {
        let mut host = SyntheticHost::new(data_seed, 10);
        let training = host.windows(DAY_WINDOWS, &[]);
        let mut rng = ChaCha8Rng::seed_from_u64(data_seed);
        let positions = index::sample(&mut rng, DAY_WINDOWS, 3 * PER_KIND).into_vec();
        let injections: Vec<(usize, Injection)> = positions
            .iter()
            .enumerate()
            .map(|(i, &at)| (at, Injection::ALL[i % 3]))
            .collect();
        let mut labels = vec![None; DAY_WINDOWS];
        for &(at, what) in &injections {
            labels[at] = Some(what);
        }
        (training, host.windows(DAY_WINDOWS, &injections), labels)
    }

    fn train_and_score(
        data_seed: u64,
        forest_seed: u64,
    ) -> (Vec<WindowScore>, Vec<Option<Injection>>) {
        let (training, test, labels) = scenario(data_seed);
        let params = TrainParams {
            window_s: 10,
            forest: ForestParams {
                trees: 100,
                sample_size: 256,
                seed: forest_seed,
            },
            version: 1,
            trained_at_ns: 0,
            excluded_incident_windows: 0,
        };
        let model = Model::train("web-1", &training, params).unwrap_or_else(|e| panic!("{e}"));
        (test.iter().map(|w| model.score(w)).collect(), labels)
    }

    #[test]
    fn injected_windows_rank_highest_with_auc_above_0_95() {
        let (scores, labels) = train_and_score(42, 7);
        let surprise: Vec<f64> = scores.iter().map(WindowScore::surprise_bits).collect();
        let positives: Vec<bool> = labels.iter().map(Option::is_some).collect();
        let auc = roc_auc(&surprise, &positives).unwrap_or(0.0);
        assert!(auc >= 0.95, "ROC AUC {auc}");

        // The 90 most surprising windows are the 90 injected ones.
        let mut order: Vec<usize> = (0..surprise.len()).collect();
        order.sort_by(|&a, &b| surprise[b].total_cmp(&surprise[a]));
        let hits = order[..3 * PER_KIND]
            .iter()
            .filter(|&&i| positives[i])
            .count();
        assert_eq!(hits, 3 * PER_KIND, "injected windows among the top 90");

        // The forest alone also separates them.
        let forest: Vec<f64> = scores.iter().map(|s| s.score).collect();
        let forest_auc = roc_auc(&forest, &positives).unwrap_or(0.0);
        assert!(forest_auc >= 0.95, "forest-only ROC AUC {forest_auc}");

        // Each injection is explained by the feature it changed.
        for (score, label) in scores.iter().zip(&labels) {
            let expected = match label {
                Some(Injection::CpuBurst) => Feature::CpuPct,
                Some(Injection::Exfiltration) => Feature::NetTxBytesPerS,
                Some(Injection::LoginStorm) => Feature::FailedLoginsPerS,
                None => continue,
            };
            let top = score.drivers.first().map(|d| d.feature);
            assert_eq!(top, Some(expected), "{label:?}: {}", score.detail());
        }

        // Normal windows rarely reach the fusion: p < 1 % for about 1 % of them.
        let normal_evidence = scores
            .iter()
            .zip(&positives)
            .filter(|(s, positive)| !**positive && s.p_value < 0.01)
            .count();
        assert!(
            normal_evidence < DAY_WINDOWS / 50,
            "{normal_evidence} normal windows with p < 0.01"
        );
    }

    #[test]
    fn a_fixed_seed_reproduces_the_scores() {
        let (first, _) = train_and_score(5, 9);
        let (second, _) = train_and_score(5, 9);
        let (other_forest, _) = train_and_score(5, 10);
        assert_eq!(first, second);
        assert_ne!(first, other_forest);
    }
}
