//! `[score]` configuration: priors, likelihood ratios, decay and severity thresholds.
//! Every key is documented in `config/cortex.example.toml`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::hit::Level;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreConfig {
    /// Seconds after which a piece of evidence weighs half as much.
    pub half_life_s: f64,
    /// Evidence older than this many seconds is forgotten.
    pub max_age_s: f64,
    /// Most entities tracked at once; the least recently updated one is dropped beyond it.
    pub max_entities: usize,
    /// Likelihood ratio of an anomaly score of 1.0; a score `s` contributes `anomaly_max_lr^s`.
    pub anomaly_max_lr: f64,
    /// Anomaly scores below this are not evidence.
    pub anomaly_min_score: f64,
    /// Host class used for hosts not listed in `hosts`, and for remote addresses.
    pub default_host_class: String,
    pub level_lr: LevelLikelihoodRatios,
    pub thresholds: SeverityThresholds,
    pub host_classes: BTreeMap<String, HostClass>,
    /// Host id → host class name.
    pub hosts: BTreeMap<String, String>,
    /// Rule id → likelihood ratio, overriding both the rule's own value and its level's.
    pub rule_lr: BTreeMap<String, f64>,
}

/// Default likelihood ratio per Sigma level: how much more likely the rule fires on a host under
/// attack than on a healthy one.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LevelLikelihoodRatios {
    pub informational: f64,
    pub low: f64,
    pub medium: f64,
    pub high: f64,
    pub critical: f64,
}

/// Lowest posterior probability for each severity; below `low` nothing is reported.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeverityThresholds {
    pub low: f64,
    pub medium: f64,
    pub high: f64,
    pub critical: f64,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostClass {
    /// Prior probability that a host of this class is under active attack at any moment.
    pub prior: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScoreConfigError {
    #[error("score.{key} = {value} must be a finite number greater than {min}")]
    TooSmall { key: String, value: f64, min: f64 },
    #[error("score.{key} = {value} must be a probability strictly between 0 and 1")]
    NotProbability { key: String, value: f64 },
    #[error("score.thresholds must increase: low < medium < high < critical")]
    ThresholdsNotIncreasing,
    #[error("score.max_entities must be at least 1")]
    NoEntities,
    #[error("score.{key} names host class `{class}`, which score.host_classes does not define")]
    UnknownHostClass { key: String, class: String },
}

impl Default for ScoreConfig {
    fn default() -> Self {
        ScoreConfig {
            half_life_s: 1800.0,
            max_age_s: 6.0 * 3600.0,
            max_entities: 100_000,
            anomaly_max_lr: 10.0,
            anomaly_min_score: 0.5,
            default_host_class: "standard".into(),
            level_lr: LevelLikelihoodRatios::default(),
            thresholds: SeverityThresholds::default(),
            host_classes: BTreeMap::from([
                ("standard".into(), HostClass { prior: 0.001 }),
                ("critical".into(), HostClass { prior: 0.005 }),
            ]),
            hosts: BTreeMap::new(),
            rule_lr: BTreeMap::new(),
        }
    }
}

impl Default for LevelLikelihoodRatios {
    fn default() -> Self {
        LevelLikelihoodRatios {
            informational: 1.5,
            low: 3.0,
            medium: 8.0,
            high: 25.0,
            critical: 80.0,
        }
    }
}

impl Default for SeverityThresholds {
    fn default() -> Self {
        SeverityThresholds {
            low: 0.10,
            medium: 0.50,
            high: 0.80,
            critical: 0.95,
        }
    }
}

impl LevelLikelihoodRatios {
    pub fn for_level(&self, level: Level) -> f64 {
        match level {
            Level::Informational => self.informational,
            Level::Low => self.low,
            Level::Medium => self.medium,
            Level::High => self.high,
            Level::Critical => self.critical,
        }
    }
}

impl ScoreConfig {
    pub fn validate(&self) -> Result<(), ScoreConfigError> {
        greater_than("half_life_s", self.half_life_s, 0.0)?;
        greater_than("max_age_s", self.max_age_s, 0.0)?;
        greater_than("anomaly_max_lr", self.anomaly_max_lr, 1.0)?;
        probability("anomaly_min_score", self.anomaly_min_score)?;
        if self.max_entities == 0 {
            return Err(ScoreConfigError::NoEntities);
        }
        let lr = &self.level_lr;
        for (name, value) in [
            ("informational", lr.informational),
            ("low", lr.low),
            ("medium", lr.medium),
            ("high", lr.high),
            ("critical", lr.critical),
        ] {
            greater_than(&format!("level_lr.{name}"), value, 0.0)?;
        }
        for (rule, value) in &self.rule_lr {
            greater_than(&format!("rule_lr.\"{rule}\""), *value, 0.0)?;
        }
        let t = &self.thresholds;
        for (name, value) in [
            ("low", t.low),
            ("medium", t.medium),
            ("high", t.high),
            ("critical", t.critical),
        ] {
            probability(&format!("thresholds.{name}"), value)?;
        }
        if !(t.low < t.medium && t.medium < t.high && t.high < t.critical) {
            return Err(ScoreConfigError::ThresholdsNotIncreasing);
        }
        for (name, class) in &self.host_classes {
            probability(&format!("host_classes.{name}.prior"), class.prior)?;
        }
        self.require_class("default_host_class", &self.default_host_class)?;
        for (host, class) in &self.hosts {
            self.require_class(&format!("hosts.\"{host}\""), class)?;
        }
        Ok(())
    }

    fn require_class(&self, key: &str, class: &str) -> Result<(), ScoreConfigError> {
        if self.host_classes.contains_key(class) {
            Ok(())
        } else {
            Err(ScoreConfigError::UnknownHostClass {
                key: key.to_owned(),
                class: class.to_owned(),
            })
        }
    }

    /// Prior probability for a host (its class's, or the default class's for unknown hosts).
    pub fn prior_for_host(&self, host: Option<&str>) -> f64 {
        let class = host
            .and_then(|h| self.hosts.get(h))
            .unwrap_or(&self.default_host_class);
        self.host_classes
            .get(class)
            .map(|c| c.prior)
            .unwrap_or(HostClass::FALLBACK_PRIOR)
    }
}

impl HostClass {
    /// Used only when a config skipped validation and names a missing class.
    const FALLBACK_PRIOR: f64 = 0.001;
}

fn greater_than(key: &str, value: f64, min: f64) -> Result<(), ScoreConfigError> {
    if value.is_finite() && value > min {
        Ok(())
    } else {
        Err(ScoreConfigError::TooSmall {
            key: key.to_owned(),
            value,
            min,
        })
    }
}

fn probability(key: &str, value: f64) -> Result<(), ScoreConfigError> {
    if value > 0.0 && value < 1.0 {
        Ok(())
    } else {
        Err(ScoreConfigError::NotProbability {
            key: key.to_owned(),
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ScoreConfig::default().validate(), Ok(()));
    }

    #[test]
    fn the_example_config_documents_the_defaults() {
        let doc: toml::Table =
            toml::from_str(include_str!("../../../config/cortex.example.toml")).unwrap();
        let config: ScoreConfig = doc["score"].clone().try_into().unwrap();
        assert_eq!(config, ScoreConfig::default());
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut config = ScoreConfig::default();
        config.level_lr.high = f64::NAN;
        assert!(matches!(
            config.validate(),
            Err(ScoreConfigError::TooSmall { key, .. }) if key == "level_lr.high"
        ));

        let mut config = ScoreConfig::default();
        config.thresholds.high = 0.97;
        assert_eq!(
            config.validate(),
            Err(ScoreConfigError::ThresholdsNotIncreasing)
        );

        let mut config = ScoreConfig::default();
        config.hosts.insert("db-01".into(), "crown-jewel".into());
        assert!(matches!(
            config.validate(),
            Err(ScoreConfigError::UnknownHostClass { class, .. }) if class == "crown-jewel"
        ));

        let mut config = ScoreConfig::default();
        config
            .host_classes
            .insert("x".into(), HostClass { prior: 1.0 });
        assert!(matches!(
            config.validate(),
            Err(ScoreConfigError::NotProbability { .. })
        ));
    }

    #[test]
    fn host_priors_follow_their_class() {
        let mut config = ScoreConfig::default();
        config.hosts.insert("db-01".into(), "critical".into());
        assert_eq!(config.prior_for_host(Some("db-01")), 0.005);
        assert_eq!(config.prior_for_host(Some("web-01")), 0.001);
        assert_eq!(config.prior_for_host(None), 0.001);
    }
}
