//! Store append throughput: durable commits of one event each (the baseline, what an ingest
//! path without batching would do) against batches of 100 events per commit.
//!
//! Both modes run interleaved over several rounds on fresh databases in one temp dir, so disk
//! and cache conditions are shared; each round prints events/s of both and their paired ratio.
//! Results go to `target/bench/store.json`. Run: `cargo bench -p cortex --bench store`.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use cortex::store::{SqliteStore, Store};
use qsc_event::{Event, EventKind, ProcessExec, ProcessInfo, Source};

const ROUNDS: usize = 5;
const BASELINE_EVENTS: u64 = 200;
const BATCHED_EVENTS: u64 = 5_000;
const BATCH: u64 = 100;

fn event(seq: u64) -> Event {
    Event::new(
        "bench-host",
        Source::Alpha,
        seq,
        EventKind::ProcessExec(ProcessExec {
            process: ProcessInfo {
                pid: 4242,
                ppid: 1,
                comm: "bash".into(),
                exe: Some("/usr/bin/bash".into()),
                cmdline: vec!["bash".into(), "-c".into(), "make -j2 all".into()].into(),
                guid: "0f3a9c1e-guid".into(),
                ..Default::default()
            },
            filename: "/usr/bin/bash".into(),
            argv: vec!["bash".into(), "-c".into(), "make -j2 all".into()],
            folder_world_writable: None,
        }),
    )
}

/// Appends `total` events in batches of `batch`; returns events per second.
fn run(dir: &Path, name: &str, total: u64, batch: u64) -> anyhow::Result<f64> {
    let path = dir.join(format!("{name}.db"));
    let store = SqliteStore::open_with_key(&path, &[7u8; 32]).context("open bench store")?;
    let events: Vec<Event> = (1..=total).map(event).collect();
    let start = Instant::now();
    for chunk in events.chunks(batch as usize) {
        store
            .append_events("bench-host", Source::Alpha, chunk)
            .context("append")?;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    drop(store);
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        std::fs::remove_file(&file).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        })?;
    }
    Ok(rate)
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("create temp dir")?;
    let mut rounds = Vec::new();
    println!("store append: baseline = 1 event per durable commit, batched = {BATCH} per commit");
    for round in 0..ROUNDS {
        let (baseline, batched) = if round % 2 == 0 {
            let b = run(dir.path(), "baseline", BASELINE_EVENTS, 1)?;
            (b, run(dir.path(), "batched", BATCHED_EVENTS, BATCH)?)
        } else {
            let t = run(dir.path(), "batched", BATCHED_EVENTS, BATCH)?;
            (run(dir.path(), "baseline", BASELINE_EVENTS, 1)?, t)
        };
        let ratio = batched / baseline;
        println!(
            "round {round}: baseline {baseline:>9.0} ev/s   batched {batched:>9.0} ev/s   ratio {ratio:>6.1}x"
        );
        rounds.push(serde_json::json!({
            "round": round,
            "baseline_events_per_s": baseline,
            "batched_events_per_s": batched,
            "ratio": ratio,
        }));
    }
    let mut ratios: Vec<f64> = rounds.iter().filter_map(|r| r["ratio"].as_f64()).collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!("median ratio batched/baseline: {median:.1}x");
    let report = serde_json::json!({
        "benchmark": "store_append",
        "baseline": "one event per durable commit (SQLite WAL, synchronous=FULL, AES-256-GCM payloads)",
        "candidate": format!("{BATCH} events per durable commit"),
        "rounds": rounds,
        "median_ratio": median,
    });
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let out_file = out_dir.join("store.json");
    std::fs::create_dir_all(&out_dir)
        .and_then(|()| std::fs::write(&out_file, report.to_string()))
        .with_context(|| format!("write {}", out_file.display()))?;
    println!("wrote {}", out_file.display());
    Ok(())
}
