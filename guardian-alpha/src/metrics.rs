//! Host metrics sampled from procfs, the input of the cortex's anomaly baseline.

use std::path::{Path, PathBuf};

use qsc_event::HostMetrics;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

pub struct Sampler {
    proc_root: PathBuf,
    previous_cpu: Option<CpuTimes>,
    previous_net: Option<(u64, u64)>,
}

/// Counts since the previous sample that the sampler cannot read from procfs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Activity {
    pub failed_logins: u64,
    pub new_processes: u64,
    pub new_connections: u64,
}

impl Sampler {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        let mut sampler = Sampler {
            proc_root: proc_root.into(),
            previous_cpu: None,
            previous_net: None,
        };
        // Prime the deltas so the first real sample covers one interval.
        sampler.previous_cpu = sampler.cpu_times();
        sampler.previous_net = sampler.net_bytes();
        sampler
    }

    pub fn sample(&mut self, interval_ms: u64, activity: Activity) -> HostMetrics {
        let cpu = self.cpu_times();
        let cpu_pct = match (self.previous_cpu, cpu) {
            (Some(a), Some(b)) if b.total > a.total => {
                (b.busy.saturating_sub(a.busy)) as f64 * 100.0 / (b.total - a.total) as f64
            }
            _ => 0.0,
        };
        self.previous_cpu = cpu;
        let net = self.net_bytes();
        let (net_rx_bytes, net_tx_bytes) = match (self.previous_net, net) {
            (Some((rx0, tx0)), Some((rx1, tx1))) => {
                (rx1.saturating_sub(rx0), tx1.saturating_sub(tx0))
            }
            _ => (0, 0),
        };
        self.previous_net = net;
        let (mem_total_bytes, mem_used_bytes) = self.memory().unwrap_or((0, 0));
        HostMetrics {
            interval_ms,
            cpu_pct,
            mem_used_bytes,
            mem_total_bytes,
            net_rx_bytes,
            net_tx_bytes,
            process_count: crate::forensics::all_pids(&self.proc_root).len() as u64,
            failed_logins: activity.failed_logins,
            new_processes: activity.new_processes,
            new_connections: activity.new_connections,
        }
    }

    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.proc_root.join(name)).ok()
    }

    fn cpu_times(&self) -> Option<CpuTimes> {
        parse_cpu_line(self.read("stat")?.lines().next()?)
    }

    fn memory(&self) -> Option<(u64, u64)> {
        parse_meminfo(&self.read("meminfo")?)
    }

    fn net_bytes(&self) -> Option<(u64, u64)> {
        Some(parse_net_dev(&self.read("net/dev")?))
    }

    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }
}

/// The aggregate `cpu` line of /proc/stat: busy = total − idle − iowait.
fn parse_cpu_line(line: &str) -> Option<CpuTimes> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.filter_map(|v| v.parse().ok()).collect();
    if values.len() < 5 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values[3] + values[4];
    Some(CpuTimes {
        busy: total - idle,
        total,
    })
}

/// (total, used) bytes; used = total − available.
fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let kib = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let total = kib("MemTotal:")?;
    let available = kib("MemAvailable:").unwrap_or(0);
    Some((total * 1024, total.saturating_sub(available) * 1024))
}

/// (received, transmitted) bytes over every interface except loopback.
fn parse_net_dev(text: &str) -> (u64, u64) {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (iface, rest) = line.split_once(':')?;
            if iface.trim() == "lo" {
                return None;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            Some((*v.first()?, *v.get(8)?))
        })
        .fold((0, 0), |(rx, tx), (r, t)| (rx + r, tx + t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_procfs_formats() {
        let cpu = parse_cpu_line("cpu  100 0 50 800 50 0 0 0 0 0").unwrap();
        assert_eq!(
            cpu,
            CpuTimes {
                busy: 150,
                total: 1000
            }
        );
        assert_eq!(
            parse_meminfo("MemTotal: 1000 kB\nMemFree: 10 kB\nMemAvailable: 400 kB\n"),
            Some((1_024_000, 614_400))
        );
        let dev = "Inter-|   Receive\n face |bytes\n    lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\n  eth0: 100 1 0 0 0 0 0 0 200 2 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(dev), (100, 200));
    }

    #[test]
    fn samples_the_real_host() {
        let mut sampler = Sampler::new("/proc");
        let metrics = sampler.sample(1000, Activity::default());
        assert!(metrics.mem_total_bytes > 0);
        assert!(metrics.process_count > 0);
        assert!((0.0..=100.0).contains(&metrics.cpu_pct));
    }
}
