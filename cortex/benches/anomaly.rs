//! Anomaly baseline: training time on 30 days of 10-second windows (259,200), scoring throughput
//! per window, and ROC AUC on a day with injected attacks (30 CPU bursts, 30 exfiltration-like
//! network spikes, 30 login failure storms), for the isolation-forest model against the named
//! baseline `zscore`: per-feature mean and standard deviation, window score = largest |z|.
//!
//! Both detectors train and score on the same seeded data; each round runs both, alternating
//! which goes first, and prints the paired ratios. Results go to `target/bench/anomaly.json`
//! (`auc`, `train_s`, `score_windows_per_s` of the model, the baseline's, and every round).
//! Run: `cargo bench -p cortex --bench anomaly`.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use rand::SeedableRng;
use rand::seq::index;
use rand_chacha::ChaCha8Rng;

use cortex::anomaly::features::{FEATURE_COUNT, FeatureVector, Window, model_input};
use cortex::anomaly::forest::ForestParams;
use cortex::anomaly::model::{Model, TrainParams, WindowScore};
use cortex::anomaly::synthetic::{Injection, SyntheticHost, roc_auc};

const ROUNDS: usize = 5;
const TRAIN_WINDOWS: usize = 30 * 8640;
const TEST_WINDOWS: usize = 8640;
const PER_KIND: usize = 30;
const SEED: u64 = 2026;

struct Data {
    training: Vec<Window>,
    test: Vec<Window>,
    positives: Vec<bool>,
}

fn data() -> Data {
    let mut host = SyntheticHost::new(SEED, 10);
    let training = host.windows(TRAIN_WINDOWS, &[]);
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let positions = index::sample(&mut rng, TEST_WINDOWS, 3 * PER_KIND).into_vec();
    let injections: Vec<(usize, Injection)> = positions
        .iter()
        .enumerate()
        .map(|(i, &at)| (at, Injection::ALL[i % 3]))
        .collect();
    let test = host.windows(TEST_WINDOWS, &injections);
    let mut positives = vec![false; TEST_WINDOWS];
    for &(at, _) in &injections {
        positives[at] = true;
    }
    Data {
        training,
        test,
        positives,
    }
}

/// The named baseline: per-feature z-scores of the model input, score = the largest |z|.
struct ZScore {
    mean: FeatureVector,
    sd: FeatureVector,
}

impl ZScore {
    fn train(windows: &[Window]) -> Self {
        let n = windows.len() as f64;
        let mut mean = [0.0; FEATURE_COUNT];
        let mut square = [0.0; FEATURE_COUNT];
        for window in windows {
            let x = model_input(&window.features);
            for f in 0..FEATURE_COUNT {
                mean[f] += x[f] / n;
                square[f] += x[f] * x[f] / n;
            }
        }
        let sd = std::array::from_fn(|f| (square[f] - mean[f] * mean[f]).max(1e-12).sqrt());
        ZScore { mean, sd }
    }

    fn score(&self, window: &Window) -> f64 {
        let x = model_input(&window.features);
        (0..FEATURE_COUNT)
            .map(|f| ((x[f] - self.mean[f]) / self.sd[f]).abs())
            .fold(0.0, f64::max)
    }
}

struct Measured {
    train_s: f64,
    score_windows_per_s: f64,
    auc: f64,
}

fn measure_forest(data: &Data) -> anyhow::Result<(Measured, f64)> {
    let params = TrainParams {
        window_s: 10,
        forest: ForestParams {
            trees: 100,
            sample_size: 256,
            seed: SEED,
        },
        version: 1,
        trained_at_ns: 0,
        excluded_incident_windows: 0,
    };
    let start = Instant::now();
    let model = Model::train("bench-host", &data.training, params).context("train")?;
    let train_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let scores: Vec<WindowScore> = data.training.iter().map(|w| model.score(w)).collect();
    let score_windows_per_s = scores.len() as f64 / start.elapsed().as_secs_f64();
    let test: Vec<WindowScore> = data.test.iter().map(|w| model.score(w)).collect();
    let surprise: Vec<f64> = test.iter().map(WindowScore::surprise_bits).collect();
    let forest_only: Vec<f64> = test.iter().map(|s| s.score).collect();
    let auc = roc_auc(&surprise, &data.positives).context("auc")?;
    let forest_auc = roc_auc(&forest_only, &data.positives).context("auc")?;
    Ok((
        Measured {
            train_s,
            score_windows_per_s,
            auc,
        },
        forest_auc,
    ))
}

fn measure_zscore(data: &Data) -> anyhow::Result<Measured> {
    let start = Instant::now();
    let detector = ZScore::train(&data.training);
    let train_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let scored: Vec<f64> = data.training.iter().map(|w| detector.score(w)).collect();
    let score_windows_per_s = scored.len() as f64 / start.elapsed().as_secs_f64();
    let test: Vec<f64> = data.test.iter().map(|w| detector.score(w)).collect();
    let auc = roc_auc(&test, &data.positives).context("auc")?;
    Ok(Measured {
        train_s,
        score_windows_per_s,
        auc,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    println!(
        "anomaly: isolation forest (100 trees, ψ=256) + per-feature tails vs baseline zscore; \
         {TRAIN_WINDOWS} training windows, {TEST_WINDOWS} test windows with {} injections",
        3 * PER_KIND
    );
    let data = data();
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        let ((model, forest_auc), baseline) = if round % 2 == 0 {
            let model = measure_forest(&data)?;
            (model, measure_zscore(&data)?)
        } else {
            let baseline = measure_zscore(&data)?;
            (measure_forest(&data)?, baseline)
        };
        let train_ratio = model.train_s / baseline.train_s;
        let score_ratio = model.score_windows_per_s / baseline.score_windows_per_s;
        println!(
            "round {round}: model train {:.3} s, {:>9.0} windows/s, AUC {:.4} (forest only {forest_auc:.4}) | \
             zscore train {:.4} s, {:>10.0} windows/s, AUC {:.4} | train ×{train_ratio:.0}, throughput ×{score_ratio:.3}",
            model.train_s,
            model.score_windows_per_s,
            model.auc,
            baseline.train_s,
            baseline.score_windows_per_s,
            baseline.auc,
        );
        rounds.push(serde_json::json!({
            "round": round,
            "train_s": model.train_s,
            "score_windows_per_s": model.score_windows_per_s,
            "auc": model.auc,
            "forest_only_auc": forest_auc,
            "baseline_train_s": baseline.train_s,
            "baseline_score_windows_per_s": baseline.score_windows_per_s,
            "baseline_auc": baseline.auc,
            "train_ratio": train_ratio,
            "score_throughput_ratio": score_ratio,
        }));
    }
    let column = |key: &str| median(rounds.iter().filter_map(|r| r[key].as_f64()).collect());
    let report = serde_json::json!({
        "benchmark": "anomaly",
        "baseline": "zscore: per-feature mean/sd of the model input, score = max |z|",
        "candidate": "isolation forest (100 trees, sample 256) + per-feature tail p-values",
        "training_windows": TRAIN_WINDOWS,
        "test_windows": TEST_WINDOWS,
        "injected_windows": 3 * PER_KIND,
        "seed": SEED,
        "auc": column("auc"),
        "forest_only_auc": column("forest_only_auc"),
        "train_s": column("train_s"),
        "score_windows_per_s": column("score_windows_per_s"),
        "baseline_auc": column("baseline_auc"),
        "baseline_train_s": column("baseline_train_s"),
        "baseline_score_windows_per_s": column("baseline_score_windows_per_s"),
        "median_train_ratio": column("train_ratio"),
        "median_score_throughput_ratio": column("score_throughput_ratio"),
        "rounds": rounds,
    });
    println!(
        "median: model AUC {:.4}, train {:.3} s, {:.0} windows/s | zscore AUC {:.4} | throughput ratio ×{:.3}",
        column("auc"),
        column("train_s"),
        column("score_windows_per_s"),
        column("baseline_auc"),
        column("score_throughput_ratio"),
    );
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let out_file = out_dir.join("anomaly.json");
    std::fs::create_dir_all(&out_dir)
        .and_then(|()| std::fs::write(&out_file, report.to_string()))
        .with_context(|| format!("write {}", out_file.display()))?;
    println!("wrote {}", out_file.display());
    Ok(())
}
