//! The host's CPU time as `/proc/stat` counts it, to tell a run on a quiet machine from one on
//! a noisy one: on a virtual machine, time the hypervisor gave to other guests is "steal".

use anyhow::Context;

/// The host's CPU time counters (all CPUs, in clock ticks) at one moment.
pub struct HostCpu {
    /// user, nice, system, idle, iowait, irq, softirq, steal (guest time is inside user).
    ticks: [u64; 8],
}

impl HostCpu {
    pub fn read() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
        Self::parse(&stat).context("/proc/stat has no aggregate `cpu` line of 8 counters")
    }

    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let mut ticks = [0u64; 8];
        let mut fields = line.split_whitespace().skip(1);
        for tick in &mut ticks {
            *tick = fields.next()?.parse().ok()?;
        }
        Some(HostCpu { ticks })
    }

    /// The share (percent) of the CPU time since `start` that the hypervisor stole.
    pub fn steal_percent_since(&self, start: &HostCpu) -> f64 {
        let delta = |i: usize| self.ticks[i].saturating_sub(start.ticks[i]) as f64;
        let total: f64 = (0..self.ticks.len()).map(delta).sum();
        if total == 0.0 {
            0.0
        } else {
            100.0 * delta(7) / total
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_its_share_of_all_cpu_time_between_two_reads() {
        let start =
            HostCpu::parse("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n").unwrap();
        let end = HostCpu::parse("cpu  160 0 70 870 10 0 0 90 7 0\n").unwrap();
        assert!((end.steal_percent_since(&start) - 25.0).abs() < 1e-9);
        assert_eq!(start.steal_percent_since(&start), 0.0);
        assert!(HostCpu::parse("cpu  1 2 3\n").is_none());
    }
}
