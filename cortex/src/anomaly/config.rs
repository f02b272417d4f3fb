//! `[anomaly]` configuration. Every key is documented in `anomaly.example.toml` next to this file.

use std::path::PathBuf;

use serde::Deserialize;

use super::error::AnomalyError;
use super::forest::ForestParams;

/// Fewest windows a model is trained on: one full isolation-forest sample.
pub const MIN_TRAINING_WINDOWS: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Directory holding one model file per host.
    pub models_dir: PathBuf,
    /// Length of a feature window in seconds.
    pub window_s: u64,
    /// Seconds of windows a new host is observed for before its first model is trained.
    pub learning_period_s: u64,
    /// Seconds between retrainings of a host's model.
    pub retrain_every_s: u64,
    /// Seconds of recent windows kept per host for retraining.
    pub history_s: u64,
    /// Trees in the isolation forest.
    pub trees: usize,
    /// Windows sampled per tree.
    pub sample_size: usize,
    /// Seed of the forest's random number generator; the same data and seed give the same model.
    pub seed: u64,
    /// Most hosts baselined at once.
    pub max_hosts: usize,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            models_dir: PathBuf::from("/var/lib/qsc/cortex/anomaly"),
            window_s: 10,
            learning_period_s: 86_400,
            retrain_every_s: 86_400,
            history_s: 7 * 86_400,
            trees: 100,
            sample_size: 256,
            seed: 0x5eed,
            max_hosts: 10_000,
        }
    }
}

impl AnomalyConfig {
    pub fn validate(&self) -> Result<(), AnomalyError> {
        let fail = |key, reason: String| Err(AnomalyError::Config { key, reason });
        if self.models_dir.as_os_str().is_empty() {
            return fail("models_dir", "must name a directory".into());
        }
        if !(1..=3600).contains(&self.window_s) {
            return fail("window_s", format!("{} is outside 1..=3600", self.window_s));
        }
        if self.learning_windows() < MIN_TRAINING_WINDOWS {
            return fail(
                "learning_period_s",
                format!(
                    "{} s is {} windows of {} s; at least {MIN_TRAINING_WINDOWS} are needed",
                    self.learning_period_s,
                    self.learning_windows(),
                    self.window_s
                ),
            );
        }
        if self.history_s < self.learning_period_s {
            return fail(
                "history_s",
                format!(
                    "{} is shorter than learning_period_s ({})",
                    self.history_s, self.learning_period_s
                ),
            );
        }
        if self.retrain_every_s < self.window_s {
            return fail(
                "retrain_every_s",
                format!("{} is shorter than one window", self.retrain_every_s),
            );
        }
        if !(1..=10_000).contains(&self.trees) {
            return fail("trees", format!("{} is outside 1..=10000", self.trees));
        }
        if !(2..=65_536).contains(&self.sample_size) {
            return fail(
                "sample_size",
                format!("{} is outside 2..=65536", self.sample_size),
            );
        }
        if self.max_hosts == 0 {
            return fail("max_hosts", "must be at least 1".into());
        }
        Ok(())
    }

    pub fn learning_windows(&self) -> usize {
        (self.learning_period_s / self.window_s.max(1)) as usize
    }

    pub fn history_windows(&self) -> usize {
        (self.history_s / self.window_s.max(1)) as usize
    }

    pub fn forest_params(&self) -> ForestParams {
        ForestParams {
            trees: self.trees,
            sample_size: self.sample_size,
            seed: self.seed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("anomaly.example.toml");

    #[derive(Deserialize)]
    struct ExampleFile {
        anomaly: AnomalyConfig,
    }

    #[test]
    fn the_example_file_is_the_defaults_and_valid() {
        let example: ExampleFile = toml::from_str(EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(example.anomaly, AnomalyConfig::default());
        assert!(example.anomaly.validate().is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<AnomalyConfig>("window = 10").is_err());
        let short = AnomalyConfig {
            learning_period_s: 60,
            ..AnomalyConfig::default()
        };
        assert!(matches!(
            short.validate(),
            Err(AnomalyError::Config {
                key: "learning_period_s",
                ..
            })
        ));
        let no_window = AnomalyConfig {
            window_s: 0,
            ..AnomalyConfig::default()
        };
        assert!(no_window.validate().is_err());
        let short_history = AnomalyConfig {
            history_s: 3600,
            ..AnomalyConfig::default()
        };
        assert!(short_history.validate().is_err());
    }
}
