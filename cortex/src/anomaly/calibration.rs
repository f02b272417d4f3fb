//! From a value (an isolation score, or one feature) to a tail p-value, and from the window's
//! p-value to a likelihood ratio for the Bayesian fusion.
//!
//! 1. **Tail p-value.** The training windows give the null distribution: `p(x)` is the fraction
//!    of training values at least `x`. The model keeps only knots at `p = 1, 1/2, 1/4, …, ≥1/N`
//!    plus the maximum (log2 p is interpolated linearly in between), so it stays small whatever
//!    N is. Beyond the training maximum the tail is extrapolated as exponential ("peaks over a
//!    threshold"): `p(x) = p(max) · exp(−(x − max) / σ)`, with σ the mean excess of the top 1 %
//!    of training values over their lower bound (or, when those are all equal, `(max − median) /
//!    ln(N + 1)`). So the distance beyond anything seen in training counts: a CPU at 97 % where
//!    training peaked at 46 % is far less likely than one at 47 %.
//! 2. **Likelihood ratio.** `LR(p) = 1 / (−e · p · ln p)` for `p < 1/e`, else 1: the
//!    Sellke–Bayarri–Berger calibration, the largest Bayes factor against "normal" that a p-value
//!    supports over a broad class of alternatives. p = 0.01 gives LR ≈ 8; p = 0.001 gives ≈ 53.
//! 3. **Fusion score.** The fusion turns an anomaly score `a ∈ 0..=1` into `anomaly_max_lr^a`
//!    (`[score]` config), so the baseline hands it `a = ln LR / ln anomaly_max_lr`, clamped to
//!    0..=1: the fusion then applies exactly this LR, capped at `anomaly_max_lr`, and ignores
//!    windows under `anomaly_min_score` (LR < `anomaly_max_lr^anomaly_min_score`).

use serde::{Deserialize, Serialize};

/// One point of the tail table: training windows scoring at least `score` are a fraction
/// `2^log2_p` of all of them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TailKnot {
    pub score: f64,
    pub log2_p: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TailCalibration {
    /// Sorted by value, log2_p non-increasing.
    knots: Vec<TailKnot>,
    /// σ of the exponential tail beyond the last knot; 0 when training never varied, in which
    /// case any value beyond it has p = 0.
    beyond_scale: f64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CalibrationError {
    #[error("no training values to calibrate on")]
    Empty,
    #[error("knot {index}: {reason}")]
    BadKnot { index: usize, reason: &'static str },
    #[error("the tail scale must be finite and not negative")]
    BadScale,
}

/// Fraction of the training values whose mean excess sets the exponential tail.
const TAIL_FRACTION: usize = 100;

impl TailCalibration {
    /// Builds the upper-tail table of `values` (non-finite ones are ignored).
    pub fn fit(values: &[f64]) -> Result<Self, CalibrationError> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|s| s.is_finite()).collect();
        if sorted.is_empty() {
            return Err(CalibrationError::Empty);
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let mut knots = Vec::new();
        let mut k = 0;
        // Knot k: the value at or above which a fraction 2^-k of the training values lie.
        while (n >> k) >= 1 {
            let at_or_above = n.div_ceil(1 << k);
            knots.push(TailKnot {
                score: sorted[n - at_or_above],
                log2_p: -(k as f64),
            });
            k += 1;
        }
        knots.push(TailKnot {
            score: sorted[n - 1],
            log2_p: -((n + 1) as f64).log2(),
        });
        Ok(TailCalibration {
            knots,
            beyond_scale: exponential_tail_scale(&sorted),
        })
    }

    /// Tail probability of `value` under the training distribution.
    pub fn p_value(&self, value: f64) -> f64 {
        let Some(last) = self.knots.last() else {
            return 1.0;
        };
        // The first knot at or above the value: ties take the largest p (the conservative side),
        // so a host whose windows all score alike never looks anomalous for that.
        let above = self.knots.partition_point(|knot| knot.score < value);
        if above == 0 {
            return 1.0;
        }
        if above == self.knots.len() {
            let excess = value - last.score;
            let decay = if self.beyond_scale > 0.0 {
                (-excess / self.beyond_scale).exp()
            } else {
                0.0
            };
            return last.log2_p.exp2() * decay;
        }
        let (lo, hi) = (self.knots[above - 1], self.knots[above]);
        let fraction = (value - lo.score) / (hi.score - lo.score);
        (lo.log2_p + fraction * (hi.log2_p - lo.log2_p)).exp2()
    }

    /// Checks a table read from storage.
    pub fn validate(&self) -> Result<(), CalibrationError> {
        if self.knots.is_empty() {
            return Err(CalibrationError::Empty);
        }
        if !self.beyond_scale.is_finite() || self.beyond_scale < 0.0 {
            return Err(CalibrationError::BadScale);
        }
        for (index, knot) in self.knots.iter().enumerate() {
            let bad = |reason| CalibrationError::BadKnot { index, reason };
            if !knot.score.is_finite() || !knot.log2_p.is_finite() || knot.log2_p > 0.0 {
                return Err(bad("score must be finite and log2_p finite and ≤ 0"));
            }
            if let Some(previous) = index.checked_sub(1).map(|i| self.knots[i])
                && (knot.score < previous.score || knot.log2_p > previous.log2_p)
            {
                return Err(bad("knots must be sorted by score with non-increasing p"));
            }
        }
        Ok(())
    }
}

/// σ of the exponential tail over sorted values: see the module documentation.
fn exponential_tail_scale(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    let tail = &sorted[n - n.div_ceil(TAIL_FRACTION)..];
    let floor = tail[0];
    let mean_excess = tail.iter().map(|v| v - floor).sum::<f64>() / tail.len() as f64;
    if mean_excess > 0.0 {
        return mean_excess;
    }
    (sorted[n - 1] - sorted[n / 2]) / ((n + 1) as f64).ln()
}

/// Sellke–Bayarri–Berger: the largest likelihood ratio a tail p-value supports.
pub fn likelihood_ratio(p_value: f64) -> f64 {
    let p = p_value.clamp(f64::MIN_POSITIVE, 1.0);
    if p < (-1f64).exp() {
        1.0 / (-std::f64::consts::E * p * p.ln())
    } else {
        1.0
    }
}

/// The anomaly score that makes the fusion (which applies `max_lr^score`) use likelihood ratio
/// `lr`, capped at `max_lr`. `max_lr` must be above 1 (the score config validates it).
pub fn fusion_score(lr: f64, max_lr: f64) -> f64 {
    if lr <= 1.0 || max_lr <= 1.0 {
        return 0.0;
    }
    (lr.ln() / max_lr.ln()).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_value_follows_the_empirical_tail() {
        let scores: Vec<f64> = (0..1024).map(|i| i as f64 / 1024.0).collect();
        let table = TailCalibration::fit(&scores).unwrap_or_else(|e| panic!("{e}"));
        assert!(table.validate().is_ok());
        assert_eq!(table.p_value(-1.0), 1.0);
        assert!((table.p_value(0.5) - 0.5).abs() < 0.01);
        assert!((table.p_value(0.75) - 0.25).abs() < 0.01);
        assert!((table.p_value(0.9) - 0.1).abs() < 0.02);
        let at_max = table.p_value(1023.0 / 1024.0);
        assert!((at_max - 1.0 / 1024.0).abs() < 1e-12);
        // Beyond the maximum the tail decays with the distance.
        let near = table.p_value(1.0);
        let far = table.p_value(2.0);
        assert!(near < at_max && far < near * 1e-6, "{near} {far}");
        let mut previous = 1.0;
        for i in 0..=200 {
            let p = table.p_value(i as f64 / 200.0);
            assert!(p <= previous, "p must not rise with the score");
            previous = p;
        }
    }

    #[test]
    fn ties_and_a_single_score_calibrate() {
        let table = TailCalibration::fit(&[0.4; 10]).unwrap_or_else(|e| panic!("{e}"));
        assert!(table.validate().is_ok());
        assert_eq!(table.p_value(0.3), 1.0);
        assert_eq!(table.p_value(0.4), 1.0);
        // Training never varied: anything beyond it is impossible under the null.
        assert_eq!(table.p_value(0.41), 0.0);
        assert_eq!(
            TailCalibration::fit(&[f64::NAN]),
            Err(CalibrationError::Empty)
        );
    }

    #[test]
    fn validate_rejects_unsorted_knots() {
        let table = TailCalibration {
            beyond_scale: 1.0,
            knots: vec![
                TailKnot {
                    score: 0.6,
                    log2_p: 0.0,
                },
                TailKnot {
                    score: 0.5,
                    log2_p: -1.0,
                },
            ],
        };
        assert!(matches!(
            table.validate(),
            Err(CalibrationError::BadKnot { index: 1, .. })
        ));
    }

    #[test]
    fn likelihood_ratio_is_sellke_bayarri_berger() {
        assert_eq!(likelihood_ratio(0.5), 1.0);
        assert!((likelihood_ratio(0.01) - 7.988).abs() < 0.01);
        assert!((likelihood_ratio(0.001) - 53.25).abs() < 0.05);
        assert!(likelihood_ratio(0.0).is_finite());
    }

    #[test]
    fn fusion_score_reproduces_the_ratio_under_the_cap() {
        let max_lr: f64 = 10.0;
        let a = fusion_score(5.0, max_lr);
        assert!((max_lr.powf(a) - 5.0).abs() < 1e-9);
        assert_eq!(fusion_score(500.0, max_lr), 1.0);
        assert_eq!(fusion_score(1.0, max_lr), 0.0);
    }
}
