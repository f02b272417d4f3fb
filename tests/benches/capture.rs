//! `cargo xtask bench capture`: what capturing costs the workloads it watches.
//!
//! Four workloads (openat+close on a watched path and on an unwatched path, fork+exec, loopback
//! TCP connect/accept) run under four modes, interleaved round by round: bare (nothing
//! attached), guardian-alpha (every event decoded, enriched and serialised as JSON), bpftrace
//! printing the same events, and bpftrace counting them in the kernel. Each round's wall time
//! is divided by the same round's bare time (paired ratios); the medians are printed and
//! written to target/bench/capture.json. The CPU seconds the workload itself used (user +
//! system, its children included) are paired the same way: in-context hook cost shows there
//! even when a busy machine makes wall times swing.
//!
//! Environment: QSC_BENCH_ROUNDS (default 3), QSC_BENCH_SCALE (default 1.0: 2,000,000 opens,
//! 5,000 execs, 50,000 connects), QSC_BENCH_WORKLOADS (comma-separated workload names, default
//! all; the summary keys of workloads not run are null), QSC_BENCH_QSC_VARIANTS (bisecting
//! what the agent costs: `;`-separated entries, each either a list of hook families to turn off,
//! e.g. `file,privilege,memory;process`, or one setting written as given at the top of the
//! config (TOML dotted keys reach a section), e.g. `sensor.wake_at_once = []` or `nice = 0`;
//! each entry is one more mode, interleaved with the others, whose ratios
//! are printed and written under `variants`).

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::json;

const ACTOR: &str = env!("CARGO_BIN_EXE_qsc-test-actor");

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    Bare,
    Qsc,
    BpftracePrint,
    BpftraceCount,
    /// The agent with the hook families of `QSC_BENCH_QSC_VARIANTS` entry N turned off.
    QscVariant(usize),
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Bare => "bare",
            Mode::Qsc => "qsc",
            Mode::BpftracePrint => "bpftrace_print",
            Mode::BpftraceCount => "bpftrace_count",
            Mode::QscVariant(_) => "qsc_variant",
        }
    }
}

const MODES: [Mode; 4] = [
    Mode::Bare,
    Mode::Qsc,
    Mode::BpftracePrint,
    Mode::BpftraceCount,
];

/// An agent configuration changed by one `QSC_BENCH_QSC_VARIANTS` entry.
struct Variant {
    /// What changed, e.g. `without file,memory` or `with wake_at_once = []`.
    label: String,
    config: PathBuf,
}

/// The label and the config text for one variant entry: a setting containing `=` written as
/// given before `base`, otherwise the hook families to turn off (the agent rejects unknown
/// names and keys at start).
fn variant_config(entry: &str, base: &str) -> (String, String) {
    if entry.contains('=') {
        return (format!("with {entry}"), format!("{entry}\n{base}"));
    }
    let families: Vec<String> = entry
        .split(',')
        .map(|f| format!("{:?}", f.trim()))
        .collect();
    (
        format!("without {entry}"),
        format!(
            "{base}[sensor]\ndisabled_hooks = [{}]\n",
            families.join(", ")
        ),
    )
}

/// One variant per `;`-separated entry of `spec`, each `base` changed by that entry.
fn variants(spec: Option<String>, base: &str, dir: &Path) -> anyhow::Result<Vec<Variant>> {
    let Some(spec) = spec else {
        return Ok(Vec::new());
    };
    spec.split(';')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .enumerate()
        .map(|(i, entry)| {
            let (label, text) = variant_config(entry, base);
            let config = dir.join(format!("alpha-variant-{i}.toml"));
            std::fs::write(&config, text)?;
            Ok(Variant { label, config })
        })
        .collect()
}

fn mode_label(mode: Mode, variants: &[Variant]) -> String {
    match mode {
        Mode::QscVariant(i) => format!("qsc {}", variants[i].label),
        _ => mode.name().to_owned(),
    }
}

struct Workload {
    name: &'static str,
    actor_args: Vec<String>,
    /// The qsc event kinds this workload generates, and how many.
    kinds: &'static [&'static str],
    generated: u64,
    /// bpftrace probe and filter producing the same events.
    probe: String,
    print: &'static str,
}

/// Per workload and mode: wall and workload CPU seconds per round, plus what the agent reported.
#[derive(Default)]
struct Results {
    wall: BTreeMap<(&'static str, Mode), Vec<f64>>,
    cpu: BTreeMap<(&'static str, Mode), Vec<f64>>,
    received: BTreeMap<&'static str, u64>,
    lost: BTreeMap<&'static str, u64>,
    agent_cpu_s: BTreeMap<&'static str, f64>,
    agent_rss_mb: f64,
    bpftrace_received: BTreeMap<&'static str, u64>,
}

fn main() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the capture benchmark loads eBPF programs: run it as root");
    }
    ensure_bpftrace()?;
    let rounds: usize = env_or("QSC_BENCH_ROUNDS", 3.0) as usize;
    let scale = env_or("QSC_BENCH_SCALE", 1.0);
    let count = |n: f64| ((n * scale) as u64).max(1);
    let dir = tempfile::tempdir()?;
    let watched_dir = dir.path().join("watched");
    std::fs::create_dir(&watched_dir)?;
    let watched = watched_dir.join("target.conf");
    let unwatched = dir.path().join("unwatched.conf");
    std::fs::write(&watched, b"x")?;
    std::fs::write(&unwatched, b"x")?;
    let prefix = format!("{}/", watched_dir.display());
    let open_probe = format!(
        "tracepoint:syscalls:sys_enter_openat /strncmp(str(args->filename), \"{prefix}\", {}) == 0/",
        prefix.len()
    );
    let all_workloads = [
        Workload {
            name: "openat_watched",
            actor_args: vec![
                "open-loop".into(),
                watched.display().to_string(),
                count(2e6).to_string(),
            ],
            kinds: &["file_open"],
            generated: count(2e6),
            probe: open_probe.clone(),
            print: "printf(\"%d %d %s %s\\n\", pid, uid, comm, str(args->filename));",
        },
        Workload {
            name: "openat_unwatched",
            actor_args: vec![
                "open-loop".into(),
                unwatched.display().to_string(),
                count(2e6).to_string(),
            ],
            kinds: &["file_open"],
            generated: 0,
            probe: open_probe,
            print: "printf(\"%d %d %s %s\\n\", pid, uid, comm, str(args->filename));",
        },
        Workload {
            name: "exec",
            actor_args: vec!["exec-loop".into(), count(5e3).to_string()],
            kinds: &["process_exec"],
            generated: count(5e3),
            probe: "tracepoint:sched:sched_process_exec".into(),
            print: "printf(\"%d %d %s %s\\n\", pid, uid, comm, str(args->filename));",
        },
        Workload {
            name: "connect",
            actor_args: vec!["connect-loop".into(), count(5e4).to_string()],
            kinds: &["net_connect", "net_accept"],
            generated: 2 * count(5e4),
            probe: "tracepoint:sock:inet_sock_set_state /args->newstate == 1/".into(),
            print: "printf(\"%d %s %d %d\\n\", pid, comm, args->sport, args->dport);",
        },
    ];
    let workloads = selected(all_workloads, std::env::var("QSC_BENCH_WORKLOADS").ok())?;
    let config = dir.path().join("alpha.toml");
    let base_config = format!(
        "[metrics]\ninterval_s = 0\n[forensics]\nscan_interval_s = 0\n[[watch]]\nprefix = \"{prefix}\"\nreads = true\nmodifications = true\n"
    );
    std::fs::write(&config, &base_config)?;
    let variants = variants(
        std::env::var("QSC_BENCH_QSC_VARIANTS").ok(),
        &base_config,
        dir.path(),
    )?;
    let all_modes: Vec<Mode> = MODES
        .into_iter()
        .chain((0..variants.len()).map(Mode::QscVariant))
        .collect();
    let mut results = Results::default();
    for round in 0..rounds {
        for workload in &workloads {
            // Rotate the mode order each round so no mode always runs first.
            let mut modes = all_modes.clone();
            modes.rotate_left(round % all_modes.len());
            for mode in modes {
                let (label, mode_config) = match mode {
                    Mode::QscVariant(i) => (mode_label(mode, &variants), &variants[i].config),
                    _ => (mode.name().to_owned(), &config),
                };
                let Timing { wall, cpu } =
                    run_one(workload, mode, mode_config, dir.path(), &mut results)
                        .with_context(|| format!("{} under {label}", workload.name))?;
                eprintln!(
                    "round {round} {:<16} {label:<15} {wall:8.3} s  cpu {cpu:8.3} s",
                    workload.name,
                );
                let key = (workload.name, mode);
                results.wall.entry(key).or_default().push(wall);
                results.cpu.entry(key).or_default().push(cpu);
            }
        }
    }
    report(&workloads, &results, rounds, &variants)
}

/// The workloads named in `filter` (comma-separated), or all of them.
fn selected(all: [Workload; 4], filter: Option<String>) -> anyhow::Result<Vec<Workload>> {
    let Some(filter) = filter else {
        return Ok(all.into());
    };
    let names: Vec<&str> = filter.split(',').map(str::trim).collect();
    if let Some(unknown) = names.iter().find(|n| !all.iter().any(|w| w.name == **n)) {
        let known: Vec<&str> = all.iter().map(|w| w.name).collect();
        bail!("QSC_BENCH_WORKLOADS: unknown workload `{unknown}` (known: {known:?})");
    }
    Ok(all
        .into_iter()
        .filter(|w| names.contains(&w.name))
        .collect())
}

fn env_or(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ensure_bpftrace() -> anyhow::Result<()> {
    if Command::new("bpftrace").arg("--version").output().is_ok() {
        return Ok(());
    }
    eprintln!("installing bpftrace (Debian) for the comparison");
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends", "bpftrace"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !status.success() {
        bail!("apt-get install bpftrace failed");
    }
    Ok(())
}

/// One run of a workload: wall seconds, and CPU seconds of the workload and its children.
struct Timing {
    wall: f64,
    cpu: f64,
}

fn run_workload(workload: &Workload) -> anyhow::Result<Timing> {
    let started = Instant::now();
    // Cargo runs benchmarks with its own LD_LIBRARY_PATH (target and toolchain folders): with
    // it, every /bin/true of the exec loop would first look for libc in each of them and their
    // glibc-hwcaps subfolders (44 failed openat calls per exec here), which is not what an
    // exec costs on a host.
    let child = Command::new(ACTOR)
        .args(&workload.actor_args)
        .env_remove("LD_LIBRARY_PATH")
        .spawn()?;
    let (status, usage) = wait_with_usage(child.id() as i32)?;
    let wall = started.elapsed().as_secs_f64();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("workload {} failed (wait status {status})", workload.name);
    }
    Ok(Timing {
        wall,
        cpu: rusage_seconds(&usage),
    })
}

/// Waits for child `pid`; its wait status and resource usage (reaped children included).
fn wait_with_usage(pid: i32) -> anyhow::Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: our own child; wait4 fills a zeroed rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
        bail!("wait4({pid}): {}", std::io::Error::last_os_error());
    }
    Ok((status, usage))
}

fn rusage_seconds(usage: &libc::rusage) -> f64 {
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn run_one(
    workload: &Workload,
    mode: Mode,
    config: &Path,
    dir: &Path,
    results: &mut Results,
) -> anyhow::Result<Timing> {
    match mode {
        Mode::Bare => run_workload(workload),
        Mode::QscVariant(_) => {
            let mut agent = start_agent(config, &dir.join("variant-stats.json"))?;
            let timing = run_workload(workload)?;
            stop_and_cpu(&mut agent)?;
            Ok(timing)
        }
        Mode::Qsc => {
            let stats_file = dir.join("stats.json");
            let mut agent = start_agent(config, &stats_file)?;
            let cpu_before = cpu_seconds(agent.id());
            let timing = run_workload(workload)?;
            let rss = rss_mb(agent.id());
            results.agent_rss_mb = results.agent_rss_mb.max(rss);
            let cpu_total = stop_and_cpu(&mut agent)?;
            let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats_file)?)?;
            let received: u64 = workload
                .kinds
                .iter()
                .map(|k| stats["emitted"][k].as_u64().unwrap_or(0))
                .sum();
            let lost: u64 = stats["lost_by_record"]
                .as_object()
                .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
                .unwrap_or(0);
            *results.received.entry(workload.name).or_default() += received;
            *results.lost.entry(workload.name).or_default() += lost;
            *results.agent_cpu_s.entry(workload.name).or_default() += cpu_total - cpu_before;
            Ok(timing)
        }
        Mode::BpftracePrint | Mode::BpftraceCount => {
            let action = if mode == Mode::BpftracePrint {
                workload.print
            } else {
                "@events = count();"
            };
            let out = PathBuf::from(format!(
                "/dev/shm/qsc-bench-bpftrace-{}.txt",
                std::process::id()
            ));
            let ready = out.with_extension("ready");
            let _ = std::fs::remove_file(&ready);
            // Output is fully buffered (fair to bpftrace), so readiness is signalled by a file
            // that BEGIN creates once the probes are attached.
            let script = format!(
                "BEGIN {{ system(\"touch {}\"); }} {} {{ {action} }}",
                ready.display(),
                workload.probe
            );
            let mut tracer = Command::new("bpftrace")
                .args(["--unsafe", "-o"])
                .arg(&out)
                .args(["-e", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()?;
            wait_until(Duration::from_secs(60), || ready.exists())
                .context("bpftrace did not start")?;
            let _ = std::fs::remove_file(&ready);
            let timing = run_workload(workload)?;
            stop_tracer(&mut tracer)?;
            if mode == Mode::BpftracePrint {
                let lines = std::fs::read_to_string(&out)?
                    .lines()
                    .filter(|l| !l.starts_with("Attaching"))
                    .count() as u64;
                *results.bpftrace_received.entry(workload.name).or_default() += lines;
            }
            let _ = std::fs::remove_file(&out);
            Ok(timing)
        }
    }
}

fn start_agent(config: &Path, stats_file: &Path) -> anyhow::Result<Child> {
    let agent_bin = qsc_tests::workspace_bin("guardian-alpha");
    let log = tempfile::NamedTempFile::new()?;
    let (log_file, log_path) = log.keep()?;
    let child = Command::new(agent_bin)
        .args([
            "run",
            "--output",
            "/dev/null",
            "--host-id",
            "bench",
            "--config",
        ])
        .arg(config)
        .arg("--stats-file")
        .arg(stats_file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()?;
    let ready = wait_until(Duration::from_secs(60), || {
        std::fs::read_to_string(&log_path).is_ok_and(|t| t.contains("process table seeded"))
    });
    let _ = std::fs::remove_file(&log_path);
    ready.context("guardian-alpha did not start")?;
    // The heartbeat is written right after seeding; give the loop a moment to start polling.
    std::thread::sleep(Duration::from_millis(200));
    Ok(child)
}

/// SIGINT (which makes bpftrace flush its output and exit), repeated each second: once in a
/// few hundred runs bpftrace let the first one pass and waited forever. SIGKILL after 10 s.
fn stop_tracer(tracer: &mut Child) -> anyhow::Result<()> {
    for _ in 0..10 {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if tracer.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!("bpftrace ignored SIGINT for 10 s: killed");
    tracer.kill()?;
    tracer.wait()?;
    Ok(())
}

fn wait_until(limit: Duration, ready: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    after_comm.split_whitespace().map(str::to_owned).collect()
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

fn cpu_seconds(pid: u32) -> f64 {
    let f = stat_fields(pid);
    // utime and stime are fields 14 and 15 overall: 11 and 12 after the comm.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / ticks_per_second()
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// SIGINT, wait, and the child's total CPU seconds from wait4's rusage.
fn stop_and_cpu(agent: &mut Child) -> anyhow::Result<f64> {
    let pid = agent.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let (status, usage) = wait_with_usage(pid)?;
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("guardian-alpha exited abnormally (status {status})");
    }
    Ok(rusage_seconds(&usage))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Median over rounds of wall(mode) / wall(bare) in the same round.
fn paired_ratio(results: &Results, workload: &str, mode: Mode) -> f64 {
    paired(&results.wall, workload, mode)
}

/// Median over rounds of `measure`(mode) / `measure`(bare) in the same round.
fn paired(measure: &BTreeMap<(&'static str, Mode), Vec<f64>>, workload: &str, mode: Mode) -> f64 {
    paired_against(measure, workload, mode, Mode::Bare)
}

/// Median over rounds of `measure`(mode) / `measure`(baseline) in the same round.
fn paired_against(
    measure: &BTreeMap<(&'static str, Mode), Vec<f64>>,
    workload: &str,
    mode: Mode,
    baseline: Mode,
) -> f64 {
    let get = |m: Mode| {
        measure
            .iter()
            .find(|((w, mm), _)| *w == workload && *mm == m)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (runs, base) = (get(mode), get(baseline));
    median(runs.iter().zip(&base).map(|(r, b)| r / b).collect())
}

fn report(
    workloads: &[Workload],
    results: &Results,
    rounds: usize,
    variants: &[Variant],
) -> anyhow::Result<()> {
    let mut per_workload = serde_json::Map::new();
    println!("\ncapture benchmark: {rounds} rounds, paired ratios vs bare (median)");
    println!(
        "{:<17} {:>9} {:>9} {:>9} {:>9} {:>12} {:>10} {:>10} {:>7} {:>9}",
        "workload",
        "bare s",
        "qsc ×",
        "bt-print×",
        "bt-count×",
        "qsc ev/s",
        "generated",
        "received",
        "drops",
        "agent cpu"
    );
    let (mut generated_total, mut received_total, mut drops_total) = (0, 0, 0);
    for w in workloads {
        let bare = median(
            results
                .wall
                .get(&(w.name, Mode::Bare))
                .cloned()
                .unwrap_or_default(),
        );
        let qsc_wall = median(
            results
                .wall
                .get(&(w.name, Mode::Qsc))
                .cloned()
                .unwrap_or_default(),
        );
        let received = results.received.get(w.name).copied().unwrap_or(0) / rounds as u64;
        let lost = results.lost.get(w.name).copied().unwrap_or(0) / rounds as u64;
        let cpu = results.agent_cpu_s.get(w.name).copied().unwrap_or(0.0) / rounds as f64;
        let traced = [Mode::Qsc, Mode::BpftracePrint, Mode::BpftraceCount];
        let ratios: Vec<f64> = traced
            .iter()
            .map(|&m| paired_ratio(results, w.name, m))
            .collect();
        let cpu_ratios: Vec<f64> = traced
            .iter()
            .map(|&m| paired(&results.cpu, w.name, m))
            .collect();
        let events_per_s = received as f64 / qsc_wall;
        println!(
            "{:<17} {bare:>9.3} {:>9.3} {:>9.3} {:>9.3} {events_per_s:>12.0} {:>10} {received:>10} {lost:>7} {cpu:>8.2}s",
            w.name, ratios[0], ratios[1], ratios[2], w.generated
        );
        println!(
            "{:<17} workload cpu × vs bare: qsc {:.3}, bt-print {:.3}, bt-count {:.3}",
            "", cpu_ratios[0], cpu_ratios[1], cpu_ratios[2]
        );
        // The head-to-head: QSC's wall time over bpftrace printing's, paired in each round.
        let over_print = paired_against(&results.wall, w.name, Mode::Qsc, Mode::BpftracePrint);
        println!(
            "{:<17} qsc ÷ bt-print (paired per round): {over_print:.3}",
            ""
        );
        let mut variant_ratios = serde_json::Map::new();
        for (i, variant) in variants.iter().enumerate() {
            let mode = Mode::QscVariant(i);
            let (wall, cpu) = (
                paired(&results.wall, w.name, mode),
                paired(&results.cpu, w.name, mode),
            );
            println!(
                "{:<17} {}: wall × {wall:.3}, workload cpu × {cpu:.3}",
                "",
                mode_label(mode, variants)
            );
            variant_ratios.insert(
                variant.label.clone(),
                json!({ "wall_ratio": wall, "cpu_ratio": cpu }),
            );
        }
        generated_total += w.generated;
        received_total += received;
        drops_total += lost;
        per_workload.insert(
            w.name.into(),
            json!({
                "bare_s": bare,
                "qsc_s": qsc_wall,
                "qsc_ratio": ratios[0],
                "bpftrace_print_ratio": ratios[1],
                "bpftrace_count_ratio": ratios[2],
                "qsc_over_bpftrace_print": over_print,
                "qsc_cpu_ratio": cpu_ratios[0],
                "bpftrace_print_cpu_ratio": cpu_ratios[1],
                "bpftrace_count_cpu_ratio": cpu_ratios[2],
                "events_generated": w.generated,
                "events_received": received,
                "bpftrace_print_received": results.bpftrace_received.get(w.name).copied().unwrap_or(0) / rounds as u64,
                "drops": lost,
                "events_per_s": events_per_s,
                "agent_cpu_s": cpu,
                "variants": variant_ratios,
            }),
        );
    }
    let summary = json!({
        "openat_watched_ratio": paired_ratio(results, "openat_watched", Mode::Qsc),
        "openat_unwatched_ratio": paired_ratio(results, "openat_unwatched", Mode::Qsc),
        "bpftrace_print_ratio": paired_ratio(results, "openat_watched", Mode::BpftracePrint),
        "bpftrace_count_ratio": paired_ratio(results, "openat_unwatched", Mode::BpftraceCount),
        "exec_ratio": paired_ratio(results, "exec", Mode::Qsc),
        "connect_ratio": paired_ratio(results, "connect", Mode::Qsc),
        "events_generated": generated_total,
        "events_received": received_total,
        "drops": drops_total,
        "agent_rss_mb": results.agent_rss_mb,
        "rounds": rounds,
        "workloads": per_workload,
    });
    println!(
        "agent RSS after a workload (max): {:.1} MB",
        results.agent_rss_mb
    );
    let out = qsc_tests::bin_dir()
        .parent()
        .map(|t| t.join("bench"))
        .context("no target dir")?;
    std::fs::create_dir_all(&out)?;
    let path = out.join("capture.json");
    std::fs::File::create(&path)?.write_all(serde_json::to_string_pretty(&summary)?.as_bytes())?;
    println!("wrote {}", path.display());
    Ok(())
}
