//! Seeded synthetic host metrics with injected attacks, and ROC AUC: for the baseline's tests,
//! its benchmark, and for trying the baseline without a fleet.
//!
//! The normal host follows a daily load cycle (`load` between 0.1 and 0.9) with noise: CPU
//! 10–40 %, memory ≈ 40–50 %, ≈ 100–300 kB/s in and 50–150 kB/s out, ~200 processes, a few new
//! processes and connections per second, and a failed login now and then. Injections:
//! - [`Injection::CpuBurst`]: CPU pinned at 96–100 % (a miner);
//! - [`Injection::Exfiltration`]: 30× the usual outbound bytes and a few more connections;
//! - [`Injection::LoginStorm`]: 2–6 failed logins per second, with the sshd forks they cause.

use qsc_event::{Event, EventKind, HostMetrics, Source};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::features::{Window, windows_from_samples};

/// 2026-01-01T00:00:00Z, where synthetic time starts.
pub const SYNTHETIC_EPOCH_NS: u64 = 1_767_225_600_000_000_000;
const DAY_S: f64 = 86_400.0;
const MEM_TOTAL_BYTES: u64 = 16 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    CpuBurst,
    Exfiltration,
    LoginStorm,
}

impl Injection {
    pub const ALL: [Injection; 3] = [
        Injection::CpuBurst,
        Injection::Exfiltration,
        Injection::LoginStorm,
    ];
}

/// A synthetic host emitting one sample per `interval_s`, continuing in time across calls.
pub struct SyntheticHost {
    rng: ChaCha8Rng,
    interval_s: u64,
    next_index: u64,
}

impl SyntheticHost {
    pub fn new(seed: u64, interval_s: u64) -> Self {
        SyntheticHost {
            rng: ChaCha8Rng::seed_from_u64(seed),
            interval_s: interval_s.max(1),
            next_index: 0,
        }
    }

    /// The next `count` samples with their times; `injections` are `(offset in this batch,
    /// what)` pairs.
    pub fn samples(
        &mut self,
        count: usize,
        injections: &[(usize, Injection)],
    ) -> Vec<(u64, HostMetrics)> {
        (0..count)
            .map(|offset| {
                let injection = injections
                    .iter()
                    .find(|(at, _)| *at == offset)
                    .map(|(_, what)| *what);
                let index = self.next_index;
                self.next_index += 1;
                let time_ns = SYNTHETIC_EPOCH_NS + (index + 1) * self.interval_s * 1_000_000_000;
                (time_ns, self.sample(index, injection))
            })
            .collect()
    }

    /// The next `count` windows (one sample per window when the window is `interval_s` long).
    pub fn windows(&mut self, count: usize, injections: &[(usize, Injection)]) -> Vec<Window> {
        let interval_s = self.interval_s;
        let mut samples = self.samples(count, injections);
        // A sample at the end of its interval lands in the next epoch-aligned window; shift it
        // back by one ns so that sample i fills window i.
        samples.iter_mut().for_each(|(time_ns, _)| *time_ns -= 1);
        windows_from_samples(&mut samples, interval_s).0
    }

    /// The next `count` samples as `host_metrics` events of `host`, seq from 1 upwards.
    pub fn events(
        &mut self,
        host: &str,
        count: usize,
        injections: &[(usize, Injection)],
    ) -> Vec<Event> {
        let first_seq = self.next_index + 1;
        self.samples(count, injections)
            .into_iter()
            .zip(first_seq..)
            .map(|((time_ns, metrics), seq)| {
                let mut event =
                    Event::new(host, Source::Alpha, seq, EventKind::HostMetrics(metrics));
                event.time_ns = time_ns - 1;
                event
            })
            .collect()
    }

    fn sample(&mut self, index: u64, injection: Option<Injection>) -> HostMetrics {
        let seconds = self.interval_s as f64;
        let phase = (index * self.interval_s) as f64 / DAY_S * std::f64::consts::TAU;
        let load = 0.5 + 0.4 * phase.sin();
        let cpu_pct = (10.0 + 30.0 * load + self.normal(0.0, 3.0)).clamp(0.0, 100.0);
        let mem_ratio = (0.4 + 0.1 * load + self.normal(0.0, 0.01)).clamp(0.0, 1.0);
        let rx_per_s = 200_000.0 * (0.5 + load) * self.normal(0.0, 0.3).exp();
        let tx_per_s = 100_000.0 * (0.5 + load) * self.normal(0.0, 0.3).exp();
        let process_count = 180.0 + 40.0 * load + self.normal(0.0, 3.0);
        let new_processes = self.count((0.5 + load) * seconds);
        let new_connections = self.count((2.0 + 3.0 * load) * seconds);
        let failed_logins = u64::from(self.rng.random_bool(0.02));
        let mut metrics = HostMetrics {
            interval_ms: self.interval_s * 1000,
            cpu_pct,
            mem_used_bytes: (mem_ratio * MEM_TOTAL_BYTES as f64) as u64,
            mem_total_bytes: MEM_TOTAL_BYTES,
            net_rx_bytes: (rx_per_s * seconds) as u64,
            net_tx_bytes: (tx_per_s * seconds) as u64,
            process_count: process_count.max(1.0) as u64,
            failed_logins,
            new_processes,
            new_connections,
        };
        match injection {
            Some(Injection::CpuBurst) => {
                metrics.cpu_pct = self.rng.random_range(96.0..=100.0);
                metrics.process_count += 1;
            }
            Some(Injection::Exfiltration) => {
                metrics.net_tx_bytes *= 30;
                metrics.new_connections += self.count(0.5 * seconds);
            }
            Some(Injection::LoginStorm) => {
                let per_s = self.rng.random_range(2.0..6.0);
                metrics.failed_logins = (per_s * seconds) as u64;
                metrics.new_processes += metrics.failed_logins;
            }
            None => {}
        }
        metrics
    }

    fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        // Box–Muller; 1 − u keeps the logarithm's argument in (0, 1].
        let u: f64 = 1.0 - self.rng.random::<f64>();
        let v: f64 = self.rng.random();
        mean + sd * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// A Poisson-like count with the given mean (normal approximation, floored at 0).
    fn count(&mut self, mean: f64) -> u64 {
        self.normal(mean, mean.sqrt()).round().max(0.0) as u64
    }
}

/// Area under the ROC curve of `scores` for telling `positives` apart: the probability that a
/// random positive outranks a random negative, ties counting half. `None` without both classes.
pub fn roc_auc(scores: &[f64], positives: &[bool]) -> Option<f64> {
    let mut ranked: Vec<(f64, bool)> = scores
        .iter()
        .copied()
        .zip(positives.iter().copied())
        .collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n_pos = ranked.iter().filter(|(_, p)| *p).count() as f64;
    let n_neg = ranked.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return None;
    }
    // Mann–Whitney U with mid-ranks for ties.
    let mut positive_rank_sum = 0.0;
    let mut start = 0;
    while start < ranked.len() {
        let end = start + ranked[start..].partition_point(|r| r.0 == ranked[start].0);
        let mid_rank = (start + 1 + end) as f64 / 2.0;
        let tied_positives = ranked[start..end].iter().filter(|(_, p)| *p).count() as f64;
        positive_rank_sum += mid_rank * tied_positives;
        start = end;
    }
    Some((positive_rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::features::Feature;

    #[test]
    fn same_seed_same_data() {
        let a = SyntheticHost::new(1, 10).windows(100, &[(5, Injection::CpuBurst)]);
        let b = SyntheticHost::new(1, 10).windows(100, &[(5, Injection::CpuBurst)]);
        let c = SyntheticHost::new(2, 10).windows(100, &[(5, Injection::CpuBurst)]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 100);
    }

    #[test]
    fn injections_land_in_their_window() {
        let injections = [
            (3, Injection::CpuBurst),
            (4, Injection::Exfiltration),
            (5, Injection::LoginStorm),
        ];
        let windows = SyntheticHost::new(1, 10).windows(10, &injections);
        let cpu = Feature::CpuPct.index();
        assert!(windows[3].features[cpu] >= 96.0);
        assert!(windows[2].features[cpu] < 80.0);
        let tx = Feature::NetTxBytesPerS.index();
        assert!(windows[4].features[tx] > 5.0 * windows[6].features[tx]);
        assert!(windows[5].features[Feature::FailedLoginsPerS.index()] >= 2.0);
    }

    #[test]
    fn events_carry_increasing_seq_and_time() {
        let events = SyntheticHost::new(1, 10).events("h", 3, &[]);
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert!(events.windows(2).all(|w| w[0].time_ns < w[1].time_ns));
        assert!(events.iter().all(|e| e.validate().is_ok()));
    }

    #[test]
    fn roc_auc_of_known_rankings() {
        let labels = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.3, 0.4], &labels), Some(1.0));
        assert_eq!(roc_auc(&[0.4, 0.3, 0.2, 0.1], &labels), Some(0.0));
        assert_eq!(roc_auc(&[0.5, 0.5, 0.5, 0.5], &labels), Some(0.5));
        assert_eq!(roc_auc(&[0.1, 0.3, 0.2, 0.4], &labels), Some(0.75));
        assert_eq!(roc_auc(&[0.1, 0.2], &[false, false]), None);
    }
}
