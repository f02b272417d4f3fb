//! A trained host model, how it scores a window, and its file format.
//!
//! A window is judged by two views, each turned into a tail p-value against the training
//! windows (see `calibration`): the isolation forest's score (the window as a whole) and the
//! most extreme single feature (`marginal`). The window's p-value is the smaller of the two,
//! Bonferroni-corrected (`min(1, 2 · min(p_forest, p_marginal))`); its likelihood ratio follows
//! from that p-value.
//!
//! File format `qsc-anomaly-model`, version 1: one JSON header line
//! `{"format":"qsc-anomaly-model","format_version":1,"sha256":"<hex>","payload_bytes":N}`,
//! a `\n`, then N bytes of payload: the [`Model`] in `postcard` encoding (compact, and exact for
//! every `f64`), whose SHA-256 the header names. A reader
//! refuses another format, a newer version, a wrong length or checksum, feature names that differ
//! from this build's, and a forest or calibration that fails structural checks.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::score::{AnomalyScore, ScoreConfig};

use super::calibration::{TailCalibration, fusion_score, likelihood_ratio};
use super::error::AnomalyError;
use super::features::{FEATURE_COUNT, Feature, FeatureVector, Window, feature_names, model_input};
use super::forest::{ForestParams, IsolationForest};
use super::marginal::MarginalTails;

pub const MODEL_FORMAT: &str = "qsc-anomaly-model";
pub const MODEL_FORMAT_VERSION: u32 = 1;
/// Longest header line a reader accepts.
const MAX_HEADER_BYTES: usize = 1024;
/// Features with less than this share of the isolation credit are not listed as drivers.
const MIN_DRIVER_SHARE: f64 = 0.15;
const MAX_DRIVERS: usize = 3;

/// The windows a model was trained on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingWindow {
    /// Start of the first training window, ns since the Unix epoch.
    pub since_ns: u64,
    /// End of the last training window.
    pub until_ns: u64,
    /// Windows trained on.
    pub windows: u64,
    /// Windows in the span left out because they overlapped an incident.
    pub excluded_incident_windows: u64,
}

/// What training needs besides the windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainParams {
    pub window_s: u64,
    pub forest: ForestParams,
    /// 1 for a host's first model, then one more per retraining.
    pub version: u64,
    pub trained_at_ns: u64,
    pub excluded_incident_windows: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub host: String,
    pub version: u64,
    pub trained_at_ns: u64,
    pub training: TrainingWindow,
    pub window_s: u64,
    /// Feature names in vector order; must match this build's.
    pub features: Vec<String>,
    pub seed: u64,
    /// Median raw value of each feature over the training windows (the "typical" value).
    pub medians: FeatureVector,
    pub forest: IsolationForest,
    /// Upper tail of the forest's scores over the training windows.
    pub calibration: TailCalibration,
    pub marginals: MarginalTails,
}

/// One feature that drove a window's score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Driver {
    pub feature: Feature,
    pub value: f64,
    /// Training median.
    pub typical: f64,
    /// Share of the isolation credit, 0..=1.
    pub share: f64,
    /// Two-sided tail p-value of the value against this feature's training values.
    pub tail_p: f64,
}

/// The baseline's verdict on one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowScore {
    pub host: String,
    pub window_start_ns: u64,
    pub window_end_ns: u64,
    pub model_version: u64,
    /// Raw isolation score `2^(−E(h)/c(ψ))`.
    pub score: f64,
    /// Tail p-value of `score` among the training windows' scores.
    pub forest_p_value: f64,
    /// Bonferroni-corrected p-value of the most extreme single feature.
    pub marginal_p_value: f64,
    /// `min(1, 2 · min(forest_p_value, marginal_p_value))`.
    pub p_value: f64,
    /// Evidence strength for the fusion (see `calibration`).
    pub likelihood_ratio: f64,
    /// Strongest first.
    pub drivers: Vec<Driver>,
}

impl WindowScore {
    /// How surprising the window is, `−log2 p`: the order to rank windows by.
    pub fn surprise_bits(&self) -> f64 {
        -self.p_value.max(f64::MIN_POSITIVE).log2()
    }

    /// Human-readable drivers, e.g. `cpu_pct=97.3 (typical 24.1, p=1.2e-9, 81%)`.
    pub fn detail(&self) -> String {
        self.drivers
            .iter()
            .map(|d| {
                format!(
                    "{}={:.3} (typical {:.3}, p={:.1e}, {:.0}% of isolation)",
                    d.feature.name(),
                    d.value,
                    d.typical,
                    d.tail_p,
                    d.share * 100.0
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The input of `Fusion::observe_anomaly`: a score that makes the fusion apply this
    /// window's likelihood ratio (capped at `anomaly_max_lr`).
    pub fn to_anomaly_score(&self, config: &ScoreConfig) -> AnomalyScore {
        AnomalyScore {
            host: self.host.clone(),
            score: fusion_score(self.likelihood_ratio, config.anomaly_max_lr),
            time_ns: self.window_end_ns,
            detail: self.detail(),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    format_version: u32,
    sha256: String,
    payload_bytes: usize,
}

impl Model {
    /// Trains a model on `windows` (at least two; the caller enforces its own minimum).
    pub fn train(
        host: &str,
        windows: &[Window],
        params: TrainParams,
    ) -> Result<Model, AnomalyError> {
        if host.is_empty() {
            return Err(AnomalyError::EmptyHost);
        }
        let inputs: Vec<FeatureVector> = windows.iter().map(|w| model_input(&w.features)).collect();
        let forest = IsolationForest::train(&inputs, params.forest)?;
        let scores: Vec<f64> = inputs.iter().map(|x| forest.score(x)).collect();
        let calibration = TailCalibration::fit(&scores)?;
        let marginals = MarginalTails::fit(&inputs)?;
        Ok(Model {
            host: host.to_owned(),
            version: params.version,
            trained_at_ns: params.trained_at_ns,
            training: TrainingWindow {
                since_ns: windows.iter().map(|w| w.start_ns).min().unwrap_or(0),
                until_ns: windows.iter().map(|w| w.end_ns).max().unwrap_or(0),
                windows: windows.len() as u64,
                excluded_incident_windows: params.excluded_incident_windows,
            },
            window_s: params.window_s,
            features: feature_names(),
            seed: params.forest.seed,
            medians: medians(windows),
            forest,
            calibration,
            marginals,
        })
    }

    pub fn score(&self, window: &Window) -> WindowScore {
        let input = model_input(&window.features);
        let (score, shares) = self.forest.score_with_attribution(&input);
        let forest_p_value = self.calibration.p_value(score);
        let tail_p = self.marginals.p_values(&input);
        let marginal_p_value = MarginalTails::window_p_value(&tail_p);
        let p_value = (2.0 * forest_p_value.min(marginal_p_value)).min(1.0);
        WindowScore {
            host: self.host.clone(),
            window_start_ns: window.start_ns,
            window_end_ns: window.end_ns,
            model_version: self.version,
            score,
            forest_p_value,
            marginal_p_value,
            p_value,
            likelihood_ratio: likelihood_ratio(p_value),
            drivers: self.drivers(window, &shares, &tail_p),
        }
    }

    fn drivers(
        &self,
        window: &Window,
        shares: &FeatureVector,
        tail_p: &FeatureVector,
    ) -> Vec<Driver> {
        let mut drivers: Vec<Driver> = Feature::ALL
            .iter()
            .map(|&feature| Driver {
                feature,
                value: window.features[feature.index()],
                typical: self.medians[feature.index()],
                share: shares[feature.index()],
                tail_p: tail_p[feature.index()],
            })
            .filter(|d| d.share > 0.0)
            .collect();
        drivers.sort_by(|a, b| b.share.total_cmp(&a.share));
        let strong = drivers
            .iter()
            .take_while(|d| d.share >= MIN_DRIVER_SHARE)
            .count();
        drivers.truncate(strong.clamp(1, MAX_DRIVERS));
        drivers
    }

    /// Serialises to the versioned, checksummed file format.
    pub fn encode(&self) -> Result<Vec<u8>, AnomalyError> {
        let payload =
            postcard::to_stdvec(self).map_err(|e| AnomalyError::ModelFormat(e.to_string()))?;
        let header = Header {
            format: MODEL_FORMAT.to_owned(),
            format_version: MODEL_FORMAT_VERSION,
            sha256: hex::encode(Sha256::digest(&payload)),
            payload_bytes: payload.len(),
        };
        let mut bytes =
            serde_json::to_vec(&header).map_err(|e| AnomalyError::ModelFormat(e.to_string()))?;
        bytes.push(b'\n');
        bytes.extend_from_slice(&payload);
        Ok(bytes)
    }

    /// Parses and checks a model file's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Model, AnomalyError> {
        let format_error = |reason: &str| AnomalyError::ModelFormat(reason.to_owned());
        let newline = bytes
            .iter()
            .take(MAX_HEADER_BYTES)
            .position(|&b| b == b'\n')
            .ok_or_else(|| format_error("no header line"))?;
        let header: Header = serde_json::from_slice(&bytes[..newline])
            .map_err(|e| AnomalyError::ModelFormat(format!("header: {e}")))?;
        if header.format != MODEL_FORMAT {
            return Err(AnomalyError::ModelFormat(format!(
                "format is `{}`, expected `{MODEL_FORMAT}`",
                header.format
            )));
        }
        if header.format_version != MODEL_FORMAT_VERSION {
            return Err(AnomalyError::ModelVersion {
                found: header.format_version,
                supported: MODEL_FORMAT_VERSION,
            });
        }
        let payload = &bytes[newline + 1..];
        if payload.len() != header.payload_bytes {
            return Err(AnomalyError::ModelFormat(format!(
                "payload is {} bytes, header says {}",
                payload.len(),
                header.payload_bytes
            )));
        }
        let actual = hex::encode(Sha256::digest(payload));
        if actual != header.sha256 {
            return Err(AnomalyError::Checksum {
                expected: header.sha256,
                actual,
            });
        }
        let model: Model = postcard::from_bytes(payload)
            .map_err(|e| AnomalyError::ModelFormat(format!("payload: {e}")))?;
        model.validate()?;
        Ok(model)
    }

    fn validate(&self) -> Result<(), AnomalyError> {
        if self.host.is_empty() {
            return Err(AnomalyError::EmptyHost);
        }
        let expected = feature_names();
        if self.features != expected {
            return Err(AnomalyError::FeatureMismatch {
                found: self.features.clone(),
                expected,
            });
        }
        if self.window_s == 0 || self.training.since_ns > self.training.until_ns {
            return Err(AnomalyError::ModelFormat(
                "window_s is 0 or the training window ends before it starts".into(),
            ));
        }
        if !self.medians.iter().all(|m| m.is_finite()) {
            return Err(AnomalyError::ModelFormat("a median is not finite".into()));
        }
        self.forest.validate()?;
        self.calibration.validate()?;
        self.marginals.validate()?;
        Ok(())
    }
}

fn medians(windows: &[Window]) -> FeatureVector {
    let mut medians = [0.0; FEATURE_COUNT];
    for (feature, median) in medians.iter_mut().enumerate() {
        let mut values: Vec<f64> = windows.iter().map(|w| w.features[feature]).collect();
        values.sort_by(f64::total_cmp);
        if let Some(&middle) = values.get(values.len() / 2) {
            *median = middle;
        }
    }
    medians
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::synthetic::{Injection, SyntheticHost};
    use crate::score::fusion::ANOMALY_RULE_ID;
    use crate::score::{EntityKey, Fusion};

    fn trained() -> (Model, Vec<Window>) {
        let mut host = SyntheticHost::new(11, 10);
        let windows = host.windows(2000, &[]);
        let params = TrainParams {
            window_s: 10,
            forest: ForestParams {
                trees: 50,
                sample_size: 256,
                seed: 5,
            },
            version: 1,
            trained_at_ns: 42,
            excluded_incident_windows: 0,
        };
        let model = Model::train("web-1", &windows, params).unwrap_or_else(|e| panic!("{e}"));
        (model, windows)
    }

    #[test]
    fn round_trips_through_the_file_format() {
        let (model, windows) = trained();
        let bytes = model.encode().unwrap_or_else(|e| panic!("{e}"));
        let decoded = Model::decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decoded, model);
        assert_eq!(decoded.score(&windows[7]), model.score(&windows[7]));
        assert_eq!(decoded.training.windows, 2000);
    }

    #[test]
    fn a_flipped_byte_or_a_foreign_header_is_refused() {
        let (model, _) = trained();
        let bytes = model.encode().unwrap_or_else(|e| panic!("{e}"));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x01;
        assert!(matches!(
            Model::decode(&flipped),
            Err(AnomalyError::Checksum { .. }) | Err(AnomalyError::ModelFormat(_))
        ));
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let newer = text.replacen("\"format_version\":1", "\"format_version\":9", 1);
        assert!(matches!(
            Model::decode(newer.as_bytes()),
            Err(AnomalyError::ModelVersion { found: 9, .. })
        ));
        assert!(matches!(
            Model::decode(b"garbage"),
            Err(AnomalyError::ModelFormat(_))
        ));
        assert!(Model::decode(&bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn a_model_with_other_features_is_refused() {
        let (mut model, _) = trained();
        model.features[0] = "load_avg".into();
        let bytes = model.encode().unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            Model::decode(&bytes),
            Err(AnomalyError::FeatureMismatch { .. })
        ));
    }

    #[test]
    fn an_injected_window_names_its_driver_and_maps_to_fusion_evidence() {
        let (model, _) = trained();
        let mut host = SyntheticHost::new(12, 10);
        let storm = host.windows(1, &[(0, Injection::LoginStorm)]);
        let verdict = model.score(&storm[0]);
        assert_eq!(
            verdict.drivers.first().map(|d| d.feature),
            Some(Feature::FailedLoginsPerS)
        );
        assert!(verdict.likelihood_ratio > 10.0, "{verdict:?}");
        let config = ScoreConfig::default();
        let evidence = verdict.to_anomaly_score(&config);
        assert_eq!(evidence.score, 1.0);
        assert!(evidence.detail.starts_with("failed_logins_per_s="));

        // The fusion applies the window's likelihood ratio, capped at anomaly_max_lr.
        let mut fusion = Fusion::new(config.clone()).unwrap_or_else(|e| panic!("{e}"));
        fusion
            .observe_anomaly(&evidence)
            .unwrap_or_else(|e| panic!("{e}"));
        let host = EntityKey::Host {
            host: "web-1".into(),
        };
        let assessment = fusion
            .assess(&host)
            .unwrap_or_else(|| panic!("no assessment"));
        let applied = assessment
            .evidence
            .first()
            .map(|e| (e.rule_id.clone(), e.lr));
        assert_eq!(
            applied,
            Some((ANOMALY_RULE_ID.to_owned(), config.anomaly_max_lr))
        );
    }

    #[test]
    fn a_mild_window_hands_the_fusion_its_exact_ratio() {
        let (model, windows) = trained();
        let config = ScoreConfig::default();
        let mild = windows
            .iter()
            .map(|w| model.score(w))
            .find(|s| s.likelihood_ratio > 3.2 && s.likelihood_ratio < config.anomaly_max_lr)
            .unwrap_or_else(|| panic!("no window with a mid-range ratio"));
        let evidence = mild.to_anomaly_score(&config);
        let lr = config.anomaly_max_lr.powf(evidence.score);
        assert!((lr - mild.likelihood_ratio).abs() < 1e-9);
    }
}
