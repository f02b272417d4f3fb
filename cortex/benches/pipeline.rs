//! Sustained throughput and decision latency of the cortex: ingest (validate) + encrypted
//! durable store + detect (the shipped Sigma rules) + score + decide.
//!
//! Modes, run interleaved over several rounds on fresh state in one temp dir:
//! - `decode` (baseline): JSON decode and schema validation only, the floor of any ingest;
//! - `store` (baseline): decode, validate and durable encrypted store, no analysis;
//! - `pipeline`: the service's `IngestSink` as the channel server drives it (each batch
//!   submitted at once, at most `MAX_UNACKED_BATCHES` waiting for the disk): validated events
//!   go to the pipeline worker over the bounded queue while the store's writer group-commits
//!   them; timed until every batch is durable and the worker has decided on every event;
//! - `channel`: the same behind the real qsc-channel server, fed by an in-process agent over
//!   loopback (hybrid Noise handshake, encrypted frames, acks), timed until all is decided.
//!
//! Decision latency (event arrival at ingest → decision) is measured in a separate paced run
//! at a fixed offered load (`PACED_RATE` events/s in batches of `PACED_BATCH`), since under
//! saturation it only measures the queue length. Decisions do not wait for the store's commit
//! (the agent's ack does), so the commit time is reported beside it, not inside it.
//! Writes `target/bench/cortex.json`.
//! Run: `cargo bench -p cortex --bench pipeline` (or `cargo xtask bench cortex`). Naming modes
//! (`cargo bench -p cortex --bench pipeline -- store channel`, `paced` for the latency run)
//! runs only those, for profiling one stage, and writes no report.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use cortex::audit::AuditLog;
use cortex::config::{DetectConfig, IngestConfig, PipelineConfig};
use cortex::decide::NodeStates;
use cortex::ingest::agents::{AgentsFile, Binding, Enrollment};
use cortex::ingest::validate::Limits;
use cortex::ingest::{self, AgentDirectory, IngestSink, PendingBatch};
use cortex::metrics::Metrics;
use cortex::pipeline::{self, Pipeline, rules};
use cortex::score::{Fusion, ScoreConfig};
use cortex::store::{SqliteStore, Store};
use qsc_channel::delivery::{
    Client, ClientConfig, CommandHandler, CommandStatus, FsyncPolicy, MAX_UNACKED_BATCHES, Outbox,
    OutboxConfig, ServerConfig,
};
use qsc_channel::keys::StaticKeypair;
use qsc_channel::transport::TransportConfig;
use qsc_event::{
    AuthAttempt, Event, EventKind, FileOpen, Heartbeat, NetConnection, ProcessExec, ProcessInfo,
    Source, now_ns,
};
use serde_json::json;

const ROUNDS: usize = 5;
const EVENTS: u64 = 60_000;
/// What an agent sends per message (qsc-channel's default max_batch_events).
const BATCH: usize = 4096;
const PACED_RATE: u64 = 20_000;
const PACED_BATCH: usize = 100;
const PACED_SECONDS: u64 = 3;
const HOST: &str = "bench-01";

/// A realistic mix: mostly process executions, then file opens, outbound connections, logins.
fn event(i: u64, time_ns: u64) -> Event {
    const COMMANDS: [&str; 8] = ["make", "cc1", "ld", "git", "python3", "sed", "grep", "tar"];
    let process = ProcessInfo {
        pid: 10_000 + (i % 5000) as u32,
        ppid: 900 + (i % 7) as u32,
        uid: 1000,
        gid: 1000,
        user: Some("build".into()),
        comm: COMMANDS[(i % 8) as usize].into(),
        exe: Some(format!("/usr/bin/{}", COMMANDS[(i % 8) as usize]).into()),
        cmdline: vec![COMMANDS[(i % 8) as usize].into(), format!("job-{}", i % 97)].into(),
        guid: format!("guid-{}", i % 5000).into(),
        ..Default::default()
    };
    let kind = match i % 20 {
        0..=13 => EventKind::ProcessExec(ProcessExec {
            filename: process.exe.as_deref().unwrap_or_default().to_owned(),
            argv: process.cmdline.to_vec(),
            folder_world_writable: None,
            process,
        }),
        14..=16 => EventKind::FileOpen(FileOpen {
            process,
            path: format!("/srv/build/obj/{}.o", i % 311),
            flags: 0o101,
            write: true,
        }),
        17 | 18 => EventKind::NetConnect(NetConnection {
            process,
            protocol: "tcp".into(),
            src_ip: IpAddr::from([10, 0, 0, 4]),
            src_port: 40_000 + (i % 1000) as u16,
            dst_ip: IpAddr::from([10, 0, 1, (i % 200) as u8]),
            dst_port: 443,
        }),
        _ if i % 40 == 19 => EventKind::AuthSuccess(AuthAttempt {
            user: "build".into(),
            remote_ip: Some(IpAddr::from([10, 0, 0, 9])),
            service: "sshd".into(),
            detail: None,
        }),
        _ => EventKind::Heartbeat(Heartbeat {
            version: "0.1.0".into(),
            uptime_s: 86_400,
            active_hooks: Vec::new(),
        }),
    };
    let mut event = Event::new(HOST, Source::Alpha, i + 1, kind);
    event.time_ns = time_ns;
    event
}

fn payloads(count: u64) -> Vec<Vec<u8>> {
    let start = now_ns();
    (0..count)
        .map(|i| event(i, start + i * 1000).to_json().into_bytes())
        .collect()
}

fn binding() -> Binding {
    Binding {
        host_id: HOST.into(),
        source: Source::Alpha,
        class: "standard".into(),
    }
}

/// Fresh store, audit and a started pipeline worker in `dir`.
struct Service {
    sink: IngestSink,
    metrics: Arc<Metrics>,
    worker: std::thread::JoinHandle<()>,
    rules_loaded: usize,
}

fn start_service(dir: &Path, directory: AgentDirectory) -> anyhow::Result<Service> {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_with_key(
        &dir.join("cortex.db"),
        &[7u8; 32],
    )?);
    let audit = Arc::new(AuditLog::open_with_key(
        &dir.join("audit.db"),
        &zeroize::Zeroizing::new([9u8; 32]),
        64,
    )?);
    let (engine, _) = rules::load_engine(&DetectConfig::default())?;
    let rules_loaded = engine.rule_count();
    let metrics = Arc::new(Metrics::default());
    let nodes = Arc::new(Mutex::new(NodeStates::new(audit, Vec::new())));
    let fusion = Fusion::new(ScoreConfig::default())?;
    let pipeline = Pipeline::new(engine, fusion, nodes, store.clone(), metrics.clone())?;
    let defaults = PipelineConfig::default();
    let (sender, queue) = pipeline::queue(
        defaults.queue_batches,
        Duration::from_millis(defaults.max_block_ms),
        metrics.clone(),
    );
    let worker = std::thread::spawn(move || pipeline.run(queue));
    let sink = IngestSink::new(
        store,
        directory,
        Limits::from(&IngestConfig::default()),
        metrics.clone(),
        sender,
    );
    Ok(Service {
        sink,
        metrics,
        worker,
        rules_loaded,
    })
}

fn wait_analysed(metrics: &Metrics, count: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while metrics.events_analysed.load(Ordering::Relaxed) < count {
        anyhow::ensure!(Instant::now() < deadline, "pipeline did not drain");
        std::thread::sleep(Duration::from_micros(200));
    }
    anyhow::ensure!(
        metrics.queue_dropped_events.load(Ordering::Relaxed) == 0,
        "events were dropped from the queue"
    );
    Ok(())
}

fn stop(service: Service) -> anyhow::Result<()> {
    drop(service.sink);
    service
        .worker
        .join()
        .map_err(|_| anyhow::anyhow!("pipeline worker panicked"))
}

fn empty_directory(dir: &Path) -> anyhow::Result<AgentDirectory> {
    let mut agents = AgentsFile::default();
    agents.add(Enrollment {
        host_id: HOST.into(),
        source: Source::Alpha,
        class: "standard".into(),
        public_key: hex::encode([1u8; 32]),
        revoked: false,
    })?;
    let path = dir.join("agents.toml");
    agents.save(&path)?;
    Ok(AgentDirectory::load(path)?)
}

/// CPU time of the whole process (every thread). The machine is shared, so wall-clock rates
/// move with other load; CPU per event does much less.
fn process_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    if status != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        now.tv_sec.unsigned_abs(),
        now.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Wall clock and process CPU from one point on.
struct Timer {
    wall: Instant,
    cpu: Duration,
}

/// Events per second of wall clock and CPU microseconds per event (all threads).
#[derive(Clone, Copy)]
struct Rate {
    events_per_s: f64,
    cpu_us_per_event: f64,
}

impl Timer {
    fn start() -> Self {
        Timer {
            wall: Instant::now(),
            cpu: process_cpu(),
        }
    }

    fn rate(&self, events: usize) -> Rate {
        let cpu = process_cpu().saturating_sub(self.cpu);
        Rate {
            events_per_s: events as f64 / self.wall.elapsed().as_secs_f64(),
            cpu_us_per_event: cpu.as_secs_f64() * 1e6 / events as f64,
        }
    }
}

fn run_decode(events: &[Vec<u8>]) -> anyhow::Result<Rate> {
    let start = Timer::start();
    for bytes in events {
        std::hint::black_box(Event::from_json(bytes)?);
    }
    Ok(start.rate(events.len()))
}

fn run_store(dir: &Path, events: &[Vec<u8>]) -> anyhow::Result<Rate> {
    let store = SqliteStore::open_with_key(&dir.join("store-only.db"), &[7u8; 32])?;
    let start = Timer::start();
    for (index, chunk) in events.chunks(BATCH).enumerate() {
        let first = (index * BATCH) as u64;
        let decoded = chunk
            .iter()
            .zip(first + 1..)
            .map(|(bytes, seq)| {
                let mut event = Event::from_json(bytes)?;
                event.seq = seq;
                Ok(event)
            })
            .collect::<anyhow::Result<Vec<Event>>>()?;
        store.append_events(HOST, Source::Alpha, &decoded)?;
    }
    Ok(start.rate(events.len()))
}

/// Returns events/s and the rules loaded.
fn run_pipeline(dir: &Path, events: &[Vec<u8>]) -> anyhow::Result<(Rate, usize)> {
    let service = start_service(dir, empty_directory(dir)?)?;
    let agent = binding();
    let start = Timer::start();
    // As the channel server does: each batch is submitted at once, and at most
    // MAX_UNACKED_BATCHES of them wait for the disk.
    let mut unacked: std::collections::VecDeque<PendingBatch> = std::collections::VecDeque::new();
    for (index, chunk) in events.chunks(BATCH).enumerate() {
        if unacked.len() == MAX_UNACKED_BATCHES
            && let Some(oldest) = unacked.pop_front()
        {
            oldest.wait()?;
        }
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        unacked.push_back(
            service
                .sink
                .submit_batch(&agent, (index * BATCH) as u64 + 1, &refs)?,
        );
    }
    for pending in unacked {
        pending.wait()?;
    }
    wait_analysed(&service.metrics, events.len() as u64)?;
    let rate = start.rate(events.len());
    let rules_loaded = service.rules_loaded;
    stop(service)?;
    Ok((rate, rules_loaded))
}

struct NoCommands;

impl CommandHandler for NoCommands {
    fn execute(&mut self, _id: u64, _body: &[u8]) -> (CommandStatus, Vec<u8>) {
        (CommandStatus::Refused, Vec::new())
    }
}

/// The CPU includes the in-process agent's (reading its outbox, encrypting, sending).
fn run_channel(dir: &Path, events: &[Vec<u8>]) -> anyhow::Result<Rate> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let cortex_key = StaticKeypair::generate();
        let agent_key = StaticKeypair::generate();
        let mut agents = AgentsFile::default();
        agents.add(Enrollment {
            host_id: HOST.into(),
            source: Source::Alpha,
            class: "standard".into(),
            public_key: agent_key.public().to_hex(),
            revoked: false,
        })?;
        let agents_path = dir.join("agents.toml");
        agents.save(&agents_path)?;
        let directory = AgentDirectory::load(agents_path)?;
        let allow_list = directory.allow_list();
        let service = start_service(dir, directory)?;
        let server = ServerConfig {
            keypair: cortex_key.clone(),
            allow_list,
            require_hybrid: true,
            transport: TransportConfig::default(),
            handshake_timeout: Duration::from_secs(5),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let server_task = tokio::spawn(ingest::serve(
            listener,
            server,
            service.sink.clone(),
            shutdown_rx,
        ));
        // The outbox is filled first (the agent's own disk cost is not the cortex's).
        let mut outbox_config = OutboxConfig::new(dir.join("outbox"));
        outbox_config.fsync = FsyncPolicy::Never;
        let outbox = Outbox::open(outbox_config)?;
        let client = Client::new(
            ClientConfig::new(addr.to_string(), cortex_key.public(), agent_key),
            outbox,
        );
        let handle = client.handle();
        for chunk in events.chunks(BATCH) {
            handle.append_batch(chunk)?;
        }
        let (stop_client, client_stopped) = tokio::sync::oneshot::channel::<()>();
        let start = Timer::start();
        let client_task = tokio::spawn(client.run_until(NoCommands, async {
            let _ = client_stopped.await;
        }));
        let metrics = service.metrics.clone();
        let count = events.len() as u64;
        tokio::task::spawn_blocking(move || wait_analysed(&metrics, count)).await??;
        let rate = start.rate(events.len());
        let _ = stop_client.send(());
        client_task.await?;
        let _ = shutdown_tx.send(true);
        server_task.await?;
        stop(service)?;
        Ok(rate)
    })
}

/// p50 and p99 of each latency at the paced load, in ms, and what the rules found.
struct Latencies {
    decision: (f64, f64),
    store: (f64, f64),
    analysis: (f64, f64),
    samples: u64,
    rule_hits: u64,
}

fn quantiles_ms(histogram: &cortex::metrics::LatencyHistogram) -> (f64, f64) {
    let ms = |q: f64| {
        histogram
            .quantile(q)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    (ms(0.5), ms(0.99))
}

/// Latencies at a fixed offered load below saturation.
fn run_paced(dir: &Path) -> anyhow::Result<Latencies> {
    let service = start_service(dir, empty_directory(dir)?)?;
    let agent = binding();
    let total = PACED_RATE * PACED_SECONDS;
    let events = payloads(total);
    let interval = Duration::from_secs_f64(PACED_BATCH as f64 / PACED_RATE as f64);
    let start = Instant::now();
    for (index, chunk) in events.chunks(PACED_BATCH).enumerate() {
        let due = start + interval * index as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        service
            .sink
            .ingest_batch(&agent, (index * PACED_BATCH) as u64 + 1, &refs)?;
    }
    wait_analysed(&service.metrics, total)?;
    let metrics = &service.metrics;
    let result = Latencies {
        decision: quantiles_ms(&metrics.decision_latency),
        store: quantiles_ms(&metrics.store_latency),
        analysis: quantiles_ms(&metrics.analysis_latency),
        samples: metrics.decision_latency.count(),
        rule_hits: metrics.rule_hits.load(Ordering::Relaxed),
    };
    stop(service)?;
    Ok(result)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn fresh_dir(parent: &Path, name: &str) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(name)
        .tempdir_in(parent)
        .context("bench dir")
}

const MODES: [&str; 4] = ["decode", "store", "pipeline", "channel"];

/// Medians of each mode's rates over the rounds.
fn medians(rates: &BTreeMap<&'static str, Vec<Rate>>, mode: &str) -> Rate {
    let mut wall: Vec<f64> = rates[mode].iter().map(|r| r.events_per_s).collect();
    let mut cpu: Vec<f64> = rates[mode].iter().map(|r| r.cpu_us_per_event).collect();
    Rate {
        events_per_s: median(&mut wall),
        cpu_us_per_event: median(&mut cpu),
    }
}

/// The modes named on the command line (cargo passes its own `--bench` flag too).
fn selected_modes() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|arg| MODES.contains(&arg.as_str()) || arg == "paced")
        .collect()
}

/// Runs only `selected` modes, prints their CPU and wall rates, writes no report.
fn run_selected(root: &Path, selected: &[String]) -> anyhow::Result<()> {
    for round in 0..ROUNDS {
        let events = payloads(EVENTS);
        let mut line = format!("round {round}:");
        for mode in MODES.iter().filter(|m| selected.iter().any(|s| s == *m)) {
            let dir = fresh_dir(root, mode)?;
            let rate = run_mode(mode, dir.path(), &events)?.0;
            line.push_str(&format!(
                "  {mode} {:>7.0} ev/s {:>5.2} us",
                rate.events_per_s, rate.cpu_us_per_event
            ));
        }
        println!("{line} (CPU per event)");
    }
    if selected.iter().any(|s| s == "paced") {
        let dir = fresh_dir(root, "paced")?;
        let latencies = run_paced(dir.path())?;
        println!(
            "decision latency at {PACED_RATE} ev/s: p50 {:.2} ms  p99 {:.2} ms",
            latencies.decision.0, latencies.decision.1
        );
    }
    Ok(())
}

/// One mode's rate, and the rules loaded when the mode loads them.
fn run_mode(mode: &str, dir: &Path, events: &[Vec<u8>]) -> anyhow::Result<(Rate, Option<usize>)> {
    Ok(match mode {
        "decode" => (run_decode(events)?, None),
        "store" => (run_store(dir, events)?, None),
        "pipeline" => {
            let (rate, rules) = run_pipeline(dir, events)?;
            (rate, Some(rules))
        }
        _ => (run_channel(dir, events)?, None),
    })
}

fn main() -> anyhow::Result<()> {
    let root = tempfile::tempdir().context("temp dir")?;
    let selected = selected_modes();
    if !selected.is_empty() {
        return run_selected(root.path(), &selected);
    }
    let mut rounds = Vec::new();
    let mut rules_loaded = 0;
    let mut rates: BTreeMap<&'static str, Vec<Rate>> = BTreeMap::new();
    println!(
        "cortex pipeline: {EVENTS} events per mode per round, batches of {BATCH}, {ROUNDS} rounds"
    );
    for round in 0..ROUNDS {
        // Fresh timestamps each round so every event is inside the ingest time window.
        let events = payloads(EVENTS);
        let mut order = MODES;
        order.rotate_left(round % MODES.len());
        let mut result = BTreeMap::new();
        for mode in order {
            let dir = fresh_dir(root.path(), mode)?;
            let (rate, rules) = run_mode(mode, dir.path(), &events)?;
            rules_loaded = rules.unwrap_or(rules_loaded);
            result.insert(mode, rate);
            rates.entry(mode).or_default().push(rate);
        }
        let (d, s, p, c) = (
            result["decode"],
            result["store"],
            result["pipeline"],
            result["channel"],
        );
        println!(
            "round {round}: decode {:>7.0} ev/s {:>5.2} us  store {:>7.0} ev/s {:>5.2} us  \
             pipeline {:>7.0} ev/s {:>5.2} us  channel {:>7.0} ev/s {:>5.2} us (CPU per event) \
             | pipeline/store {:.2}  channel/pipeline {:.2}",
            d.events_per_s,
            d.cpu_us_per_event,
            s.events_per_s,
            s.cpu_us_per_event,
            p.events_per_s,
            p.cpu_us_per_event,
            c.events_per_s,
            c.cpu_us_per_event,
            p.events_per_s / s.events_per_s,
            c.events_per_s / p.events_per_s
        );
        let mut row = json!({
            "round": round,
            "pipeline_over_store": p.events_per_s / s.events_per_s,
            "channel_over_pipeline": c.events_per_s / p.events_per_s,
        });
        for (mode, rate) in &result {
            row[format!("{mode}_events_per_s")] = json!(rate.events_per_s);
            row[format!("{mode}_cpu_us_per_event")] = json!(rate.cpu_us_per_event);
        }
        rounds.push(row);
    }
    let paced_dir = fresh_dir(root.path(), "paced")?;
    let latencies = run_paced(paced_dir.path())?;
    let (p50, p99) = latencies.decision;
    let samples = latencies.samples;
    let (decode, store, pipeline, channel) = (
        medians(&rates, "decode"),
        medians(&rates, "store"),
        medians(&rates, "pipeline"),
        medians(&rates, "channel"),
    );
    let events_per_s = channel.events_per_s.min(pipeline.events_per_s);
    println!(
        "median: decode {:.0}  store {:.0}  pipeline {:.0}  channel {:.0} ev/s; CPU per event: \
         decode {:.2}  store {:.2}  pipeline {:.2}  channel {:.2} us",
        decode.events_per_s,
        store.events_per_s,
        pipeline.events_per_s,
        channel.events_per_s,
        decode.cpu_us_per_event,
        store.cpu_us_per_event,
        pipeline.cpu_us_per_event,
        channel.cpu_us_per_event
    );
    println!(
        "decision latency at {PACED_RATE} ev/s offered (batches of {PACED_BATCH}): \
         p50 {p50:.2} ms  p99 {p99:.2} ms  ({samples} events)  rules loaded {rules_loaded}"
    );
    println!(
        "  queued → decided: p50 {:.2} ms  p99 {:.2} ms; rule hits {}; in parallel, arrival → \
         durable (the agent's ack): p50 {:.2} ms  p99 {:.2} ms",
        latencies.analysis.0,
        latencies.analysis.1,
        latencies.rule_hits,
        latencies.store.0,
        latencies.store.1
    );
    println!(
        "targets: >= 100000 ev/s sustained: {}; p99 < 5 ms: {}",
        if events_per_s >= 100_000.0 {
            "met"
        } else {
            "NOT met"
        },
        if p99 < 5.0 { "met" } else { "NOT met" }
    );
    let report = json!({
        "benchmark": "cortex",
        "events_per_s": events_per_s,
        "events_per_s_means": "end to end over the real channel (agent on loopback) or the pipeline alone, whichever is lower",
        "decision_p50_ms": p50,
        "decision_p99_ms": p99,
        "decision_latency_load": {"offered_events_per_s": PACED_RATE, "batch": PACED_BATCH, "events": samples},
        "arrival_to_durable_p50_ms": latencies.store.0,
        "arrival_to_durable_p99_ms": latencies.store.1,
        "queued_to_decision_p50_ms": latencies.analysis.0,
        "queued_to_decision_p99_ms": latencies.analysis.1,
        "paced_rule_hits": latencies.rule_hits,
        "rules_loaded": rules_loaded,
        "medians": {
            "decode_events_per_s": decode.events_per_s,
            "store_events_per_s": store.events_per_s,
            "pipeline_events_per_s": pipeline.events_per_s,
            "channel_events_per_s": channel.events_per_s,
            "decode_cpu_us_per_event": decode.cpu_us_per_event,
            "store_cpu_us_per_event": store.cpu_us_per_event,
            "pipeline_cpu_us_per_event": pipeline.cpu_us_per_event,
            "channel_cpu_us_per_event": channel.cpu_us_per_event,
        },
        "cpu_us_per_event_means": "process CPU time (all threads) per event; the channel mode includes the in-process agent",
        "baselines": {
            "decode": "JSON decode + schema validation only",
            "store": "decode + validation + durable encrypted store (SQLite WAL synchronous=FULL, group commit), one batch at a time, no analysis",
        },
        "rounds": rounds,
        "events_per_round": EVENTS,
        "batch": BATCH,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "targets": {"events_per_s": 100_000, "decision_p99_ms": 5.0},
    });
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let out_file = out_dir.join("cortex.json");
    std::fs::create_dir_all(&out_dir)
        .and_then(|()| std::fs::write(&out_file, report.to_string()))
        .with_context(|| format!("write {}", out_file.display()))?;
    println!("wrote {}", out_file.display());
    Ok(())
}
