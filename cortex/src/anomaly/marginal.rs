//! The per-feature view: how far out each feature is on its own, against its training tails.
//!
//! The isolation forest judges the window as a whole, but with eight features a window extreme
//! in just one of them is often not isolated sooner than a normal window (most splits on its
//! path are on the other seven). This view catches exactly those: for every feature, a two-sided
//! tail p-value `min(1, 2 · min(p_upper, p_lower))` from [`TailCalibration`] tables (upper tail
//! of the values, and of their negation), with the exponential extrapolation beyond the training
//! range. The window's marginal p-value is the smallest of them, Bonferroni-corrected for the
//! number of features.

use serde::{Deserialize, Serialize};

use super::calibration::{CalibrationError, TailCalibration};
use super::features::{FEATURE_COUNT, FeatureVector};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MarginalTails {
    /// One per feature, in vector order.
    upper: Vec<TailCalibration>,
    /// Upper tails of the negated values, one per feature.
    lower: Vec<TailCalibration>,
}

impl MarginalTails {
    /// Fits both tails of every feature over model-input vectors.
    pub fn fit(inputs: &[FeatureVector]) -> Result<Self, CalibrationError> {
        let mut upper = Vec::with_capacity(FEATURE_COUNT);
        let mut lower = Vec::with_capacity(FEATURE_COUNT);
        for feature in 0..FEATURE_COUNT {
            let values: Vec<f64> = inputs.iter().map(|x| x[feature]).collect();
            upper.push(TailCalibration::fit(&values)?);
            let negated: Vec<f64> = values.iter().map(|v| -v).collect();
            lower.push(TailCalibration::fit(&negated)?);
        }
        Ok(MarginalTails { upper, lower })
    }

    /// Two-sided tail p-value of each feature of a model-input vector.
    pub fn p_values(&self, input: &FeatureVector) -> FeatureVector {
        let mut p = [1.0; FEATURE_COUNT];
        for (feature, (upper, lower)) in self.upper.iter().zip(&self.lower).enumerate() {
            let one_sided = upper
                .p_value(input[feature])
                .min(lower.p_value(-input[feature]));
            p[feature] = (2.0 * one_sided).min(1.0);
        }
        p
    }

    /// The window's marginal p-value: the smallest feature p-value, Bonferroni-corrected.
    pub fn window_p_value(feature_p_values: &FeatureVector) -> f64 {
        let smallest = feature_p_values.iter().copied().fold(1.0, f64::min);
        (smallest * FEATURE_COUNT as f64).min(1.0)
    }

    /// Checks tables read from storage.
    pub fn validate(&self) -> Result<(), CalibrationError> {
        if self.upper.len() != FEATURE_COUNT || self.lower.len() != FEATURE_COUNT {
            return Err(CalibrationError::Empty);
        }
        self.upper
            .iter()
            .chain(&self.lower)
            .try_for_each(TailCalibration::validate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<FeatureVector> {
        (0..n).map(|i| [i as f64; FEATURE_COUNT]).collect()
    }

    #[test]
    fn both_tails_and_the_middle() {
        let tails = MarginalTails::fit(&ramp(1000)).unwrap_or_else(|e| panic!("{e}"));
        assert!(tails.validate().is_ok());
        let middle = tails.p_values(&[500.0; FEATURE_COUNT]);
        assert!(middle.iter().all(|&p| p > 0.9), "{middle:?}");
        let mut low = [500.0; FEATURE_COUNT];
        low[2] = -300.0;
        let p = tails.p_values(&low);
        assert!(p[2] < 1e-6, "{p:?}");
        let window = MarginalTails::window_p_value(&p);
        assert!((window - p[2] * FEATURE_COUNT as f64).abs() < 1e-15);
    }

    #[test]
    fn a_missing_feature_table_is_refused() {
        let mut tails = MarginalTails::fit(&ramp(10)).unwrap_or_else(|e| panic!("{e}"));
        tails.lower.pop();
        assert_eq!(tails.validate(), Err(CalibrationError::Empty));
    }
}
