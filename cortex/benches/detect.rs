//! Events per second through `Engine::evaluate` on a mixed synthetic stream.
//!
//! Modes, interleaved over several rounds on the same stream:
//! - `json_decode` (baseline): `Event::from_json` of each event, the least any pipeline pays;
//! - `shipped`: the QSC rule set (`cortex/rules`);
//! - `shipped+sigmahq`: the QSC rule set plus SigmaHQ's Linux rules (a copy in `cortex/tests/sigmahq/linux`).
//!
//! Prints per-round paired ratios and writes `target/bench/detect.json` with `events_per_s`
//! (the `shipped+sigmahq` median) and `rules_loaded`.
//!
//! Run: `cargo bench -p cortex --bench detect`

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cortex::detect::Engine;
use qsc_event::*;

const EVENTS: usize = 50_000;
const ROUNDS: usize = 5;

/// A small deterministic generator, so every run sees the same stream.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.next() as usize % items.len()]
    }
}

fn process(rng: &mut Lcg) -> ProcessInfo {
    let exe = rng.pick(&[
        "/usr/bin/bash",
        "/usr/bin/python3",
        "/usr/bin/curl",
        "/usr/sbin/nginx",
        "/usr/bin/ls",
        "/usr/bin/grep",
        "/usr/bin/systemctl",
        "/usr/bin/find",
        "/usr/bin/crontab",
        "/tmp/.x",
    ]);
    let args = rng.pick(&[
        "-la /var/log",
        "-c 'for i in $(seq 1 10); do echo $i; done'",
        "-s https://example.com/install.sh -o /tmp/install.sh",
        "status nginx.service --no-pager",
        "/ -name '*.conf' -type f -mtime -1",
        "-l",
        "-e 'import socket,subprocess,os'",
        "-r password /etc",
    ]);
    let pid = 1000 + (rng.next() % 30_000) as u32;
    ProcessInfo {
        pid,
        ppid: pid - 1,
        uid: (rng.next() % 2) as u32 * 1000,
        user: Some("svc".into()),
        comm: exe.rsplit('/').next().unwrap_or(exe).into(),
        exe: Some(exe.into()),
        cmdline: std::iter::once(exe.to_owned())
            .chain(args.split(' ').map(str::to_owned))
            .collect(),
        guid: format!("g{pid}").into(),
        ancestry: vec![Ancestor {
            pid: pid - 1,
            comm: "sshd".into(),
            exe: Some("/usr/sbin/sshd".into()),
            guid: "p".into(),
        }],
        ..Default::default()
    }
}

fn ip(rng: &mut Lcg) -> std::net::IpAddr {
    std::net::IpAddr::from([203, 0, 113, (rng.next() % 250) as u8])
}

fn synthetic_event(rng: &mut Lcg, seq: u64) -> Event {
    let roll = rng.next() % 100;
    let kind = match roll {
        0..40 => {
            let p = process(rng);
            EventKind::ProcessExec(ProcessExec {
                filename: p.exe.as_deref().unwrap_or_default().to_owned(),
                argv: p.cmdline.to_vec(),
                folder_world_writable: None,
                process: p,
            })
        }
        40..55 => EventKind::FileOpen(FileOpen {
            process: process(rng),
            path: rng
                .pick(&[
                    "/etc/passwd",
                    "/var/log/syslog",
                    "/etc/cron.d/job",
                    "/home/a/.bashrc",
                ])
                .into(),
            flags: 0,
            write: rng.next().is_multiple_of(4),
        }),
        55..70 => EventKind::NetConnect(NetConnection {
            process: process(rng),
            protocol: "tcp".into(),
            src_ip: "10.0.0.5"
                .parse()
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
            src_port: 40_000,
            dst_ip: ip(rng),
            dst_port: 443,
        }),
        70..80 => {
            let attempt = AuthAttempt {
                user: rng.pick(&["root", "admin", "svc"]).into(),
                remote_ip: Some(ip(rng)),
                service: "sshd".into(),
                detail: None,
            };
            if rng.next().is_multiple_of(5) {
                EventKind::AuthSuccess(attempt)
            } else {
                EventKind::AuthFailure(attempt)
            }
        }
        80..85 => EventKind::NetVolume(NetVolume {
            process: None,
            remote_ip: ip(rng),
            bytes_out: rng.next() % 200_000_000,
            bytes_in: 1000,
            interval_ms: 10_000,
        }),
        85..90 => EventKind::ProcessFork(ProcessFork {
            process: process(rng),
            child_pid: 5,
        }),
        90..95 => EventKind::IntegrityFileChanged(IntegrityFileChanged {
            path: "/etc/hosts".into(),
            changes: vec!["content".into()],
            old_hash: None,
            new_hash: None,
        }),
        _ => EventKind::HostMetrics(HostMetrics::default()),
    };
    let host = format!("host-{}", rng.next() % 8);
    let mut event = Event::new(host, Source::Alpha, seq, kind);
    event.time_ns = 1_800_000_000_000_000_000 + seq * 1_000_000;
    event
}

fn manifest(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Events per second for one pass of `f` over the stream.
fn timed(events: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    f();
    events as f64 / start.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut rng = Lcg(42);
    let events: Vec<Event> = (1..=EVENTS as u64)
        .map(|seq| synthetic_event(&mut rng, seq))
        .collect();
    let json: Vec<String> = events.iter().map(Event::to_json).collect();
    let sigmahq = manifest("tests/sigmahq/linux");
    let (_, shipped_report) = Engine::load_dir(&[manifest("rules")])?;
    let (_, full_report) = Engine::load_dir(&[manifest("rules"), sigmahq.clone()])?;
    let rules_loaded = full_report.loaded.len();
    println!(
        "stream: {EVENTS} events; rules: shipped {} / shipped+sigmahq {rules_loaded}",
        shipped_report.loaded.len()
    );

    let (mut baseline, mut shipped, mut full) = (Vec::new(), Vec::new(), Vec::new());
    let mut hits = 0usize;
    for round in 1..=ROUNDS {
        // Fresh engines each round so correlation state does not carry over.
        let (mut shipped_engine, _) = Engine::load_dir(&[manifest("rules")])?;
        let (mut full_engine, _) = Engine::load_dir(&[manifest("rules"), sigmahq.clone()])?;
        let b = timed(EVENTS, || {
            for text in &json {
                let _ = black_box(Event::from_json(text.as_bytes()));
            }
        });
        let s = timed(EVENTS, || {
            for e in &events {
                black_box(shipped_engine.evaluate(e));
            }
        });
        let f = timed(EVENTS, || {
            for e in &events {
                hits += black_box(full_engine.evaluate(e)).len();
            }
        });
        println!(
            "round {round}: json_decode {b:>10.0} ev/s | shipped {s:>10.0} ev/s | shipped+sigmahq {f:>10.0} ev/s | shipped/json_decode {:.2} | full/shipped {:.2}",
            s / b,
            f / s
        );
        baseline.push(b);
        shipped.push(s);
        full.push(f);
    }
    let (b, s, f) = (
        median(&mut baseline),
        median(&mut shipped),
        median(&mut full),
    );
    println!(
        "median: json_decode {b:.0} ev/s (baseline), shipped {s:.0} ev/s ({:.2}x baseline), shipped+sigmahq {f:.0} ev/s ({:.2}x baseline); {} hits per round",
        s / b,
        f / b,
        hits / ROUNDS
    );
    let out_dir = manifest("../target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let report = serde_json::json!({
        "bench": "detect",
        "events": EVENTS,
        "rounds": ROUNDS,
        "events_per_s": f,
        "rules_loaded": rules_loaded,
        "modes": {
            "json_decode": b,
            "shipped": s,
            "shipped+sigmahq": f,
        },
        "baseline": "json_decode",
    });
    std::fs::write(
        out_dir.join("detect.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    println!("wrote {}", out_dir.join("detect.json").display());
    Ok(())
}
