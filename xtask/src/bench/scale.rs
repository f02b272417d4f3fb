//! `cargo xtask bench scale`: the cortex on the bus (NATS JetStream and PostgreSQL from
//! `cargo xtask setup --scale`) with 1 and with 3 replicas (`[cluster] role = "all"`), in
//! interleaved rounds so that both see the same machine load.
//!
//! Each run starts the release `cortex serve` replicas on a fresh PostgreSQL schema and JetStream
//! stream (dropped afterwards), connects in-process agents (qsc-channel clients, spread over the
//! replicas' gateways) that deliver a burst of events each, and measures:
//! * events/s: all events delivered, through the bus, stored and analysed (the replicas'
//!   `cortex_events_analysed_total`), over the time since the burst started;
//! * p99 decision latency: the replicas' merged `cortex_decision_latency_seconds` histograms
//!   (gateway receipt → decided), as the upper bound of the bucket holding the 99th percentile.
//!
//! The medians over the rounds go to target/bench/scale.json (`events_per_s_1`,
//! `events_per_s_3`, `decision_p99_ms_1`, `decision_p99_ms_3`), with the ratio 3 : 1.
//! `QSC_BENCH_ROUNDS` overrides the rounds (default 3).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use qsc_channel::delivery::{
    Client, ClientConfig, CommandHandler, CommandStatus, Outbox, OutboxConfig,
};
use qsc_channel::keys::{PublicKeyBytes, StaticKeypair};
use qsc_event::{AuthAttempt, Event, EventKind, Source};
use serde_json::json;

use crate::{setup, shell};

const ROUNDS: usize = 3;
const AGENTS: usize = 6;
const EVENTS_PER_AGENT: u64 = 4000;
const REPLICAS: [usize; 2] = [1, 3];
/// How long one run may take to analyse its burst.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
const POSTGRES_URL: &str = "host=127.0.0.1 port=5432 user=qsc password=qsc dbname=qsc";
const NATS_URL: &str = "nats://127.0.0.1:4233";

/// Runs the benchmark (root: it starts the servers if they are not running).
pub fn run() -> anyhow::Result<()> {
    setup::ensure_scale_services()?;
    crate::ebpf::build_release()?;
    let bin = shell::target_dir().join("release/cortex");
    let dir = tempfile::tempdir().context("bench folder")?;
    let deployment = Deployment::create(&bin, dir.path())?;
    let rounds = rounds()?;
    let runtime = tokio::runtime::Runtime::new().context("async runtime")?;
    let mut results: BTreeMap<usize, Vec<RunResult>> = BTreeMap::new();
    for round in 0..rounds {
        for replicas in REPLICAS {
            let result = runtime.block_on(measure(&deployment, replicas, round))?;
            println!(
                "round {round}: {replicas} replica(s): {:.0} events/s, decision p99 {:.1} ms",
                result.events_per_s, result.decision_p99_ms
            );
            results.entry(replicas).or_default().push(result);
        }
    }
    report(&results, &shell::target_dir().join("bench/scale.json"))
}

fn rounds() -> anyhow::Result<usize> {
    match std::env::var("QSC_BENCH_ROUNDS") {
        Ok(text) => text
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("QSC_BENCH_ROUNDS={text:?} is not a positive number")),
        Err(_) => Ok(ROUNDS),
    }
}

/// The shared keys, agents file and base config of every replica.
struct Deployment {
    bin: PathBuf,
    dir: PathBuf,
    agents: Vec<StaticKeypair>,
    cortex_key: PublicKeyBytes,
}

impl Deployment {
    fn create(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        let mut deployment = Deployment {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            agents: Vec::new(),
            // Set once `keygen` made the channel key.
            cortex_key: PublicKeyBytes([0; 32]),
        };
        let base = deployment.write_config("base", None)?;
        deployment.cli(&base, &["keygen"])?;
        for index in 0..AGENTS {
            let keypair = StaticKeypair::generate();
            let host = format!("bench-{index:02}");
            let key = keypair.public().to_hex();
            let args = ["agents", "add", "--host-id", &host, "--source", "alpha"];
            deployment.cli(&base, &[&args[..], &["--public-key", &key]].concat())?;
            deployment.agents.push(keypair);
        }
        deployment.cortex_key = StaticKeypair::load(&dir.join("channel.key"))?.public();
        Ok(deployment)
    }

    fn cli(&self, config: &Path, args: &[&str]) -> anyhow::Result<()> {
        shell::run(
            Command::new(&self.bin)
                .arg("--config")
                .arg(config)
                .args(args),
        )
    }

    /// A config with the shared keys and agents and its own audit file and anomaly models:
    /// on the bus of `names` as a replica with role "all", or (None) on SQLite for the tools.
    fn write_config(&self, name: &str, names: Option<&Names>) -> anyhow::Result<PathBuf> {
        let p = |file: &str| self.dir.join(file).display().to_string();
        let (backend, bus) = match names {
            Some(names) => (
                "postgres",
                format!(
                    "[store.postgres]\nurl = \"{POSTGRES_URL}\"\nschema = \"{}\"\n\
                     [bus]\nkind = \"nats\"\nurl = \"{NATS_URL}\"\nstream = \"{}\"\n\
                     subject_prefix = \"{}.events\"\ncommand_prefix = \"{}.cmd\"\n\
                     consumer = \"{}\"\n[cluster]\nrole = \"all\"\n",
                    names.schema, names.stream, names.prefix, names.prefix, names.consumer
                ),
            ),
            None => ("sqlite", String::new()),
        };
        let config = format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n\
             [api]\naddress = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\
             [agents]\nfile = \"{}\"\n\
             [keys]\nchannel_key_file = \"{}\"\n\
             [store]\nbackend = \"{}\"\npath = \"{}\"\nmaster_key_file = \"{}\"\n\
             [audit]\npath = \"{}\"\nsigning_key_file = \"{}\"\n\
             [anomaly]\nmodels_dir = \"{}\"\n{bus}",
            p("api.token"),
            p("agents.toml"),
            p("channel.key"),
            backend,
            p("cortex.db"),
            p("master.key"),
            p(&format!("audit-{name}.db")),
            p("audit.key"),
            p(&format!("anomaly-{name}")),
        );
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// One run's PostgreSQL schema and JetStream names.
struct Names {
    schema: String,
    stream: String,
    prefix: String,
    consumer: String,
}

impl Names {
    fn new(replicas: usize, round: usize) -> Self {
        let id = format!("{}r{round}n{replicas}", std::process::id());
        Names {
            schema: format!("qsc_bench_{id}"),
            stream: format!("QSC_BENCH_{id}"),
            prefix: format!("qscbench{id}"),
            consumer: format!("bench-{id}"),
        }
    }

    /// Drops the schema and the stream.
    async fn drop_all(&self) -> anyhow::Result<()> {
        let (client, connection) = tokio_postgres::connect(POSTGRES_URL, tokio_postgres::NoTls)
            .await
            .context("connecting to PostgreSQL")?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .await
            .with_context(|| format!("dropping schema {}", self.schema))?;
        let nats = async_nats::connect(NATS_URL)
            .await
            .context("connecting to NATS")?;
        async_nats::jetstream::new(nats)
            .delete_stream(&self.stream)
            .await
            .map_err(|e| anyhow::anyhow!("deleting stream {}: {e}", self.stream))?;
        Ok(())
    }
}

/// A running replica; SIGKILLed if dropped before `stop`.
struct Replica {
    child: Child,
    channel: String,
    api: String,
}

impl Replica {
    fn start(bin: &Path, config: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .context("starting cortex serve")?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            BufReader::new(stdout).read_line(&mut line)?;
        }
        let bound = |key: &str| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(key))
                .map(str::to_owned)
                .with_context(|| format!("cortex serve printed {line:?}, not LISTENING {key}…"))
        };
        Ok(Replica {
            channel: bound("channel=")?,
            api: bound("api=")?,
            child,
        })
    }

    fn metrics(&self, token: &str) -> anyhow::Result<String> {
        ureq::get(&format!("http://{}/metrics", self.api))
            .set("Authorization", &format!("Bearer {token}"))
            .call()
            .context("GET /metrics")?
            .into_string()
            .context("reading /metrics")
    }

    fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("a cortex replica exited with {status}");
        }
        Ok(())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct RunResult {
    events_per_s: f64,
    decision_p99_ms: f64,
}

struct NoCommands;

impl CommandHandler for NoCommands {
    fn execute(&mut self, _id: u64, _body: &[u8]) -> (CommandStatus, Vec<u8>) {
        (CommandStatus::Refused, b"bench agent".to_vec())
    }
}

/// One agent's burst: failed logins (they feed the brute-force correlation) and heartbeats.
fn burst(host: &str) -> Vec<Vec<u8>> {
    (1..=EVENTS_PER_AGENT)
        .map(|seq| {
            let kind = if seq % 4 == 0 {
                EventKind::AuthFailure(AuthAttempt {
                    user: format!("user{}", seq % 50),
                    remote_ip: Some([203, 0, 113, (seq % 200) as u8].into()),
                    service: "sshd".into(),
                    detail: None,
                })
            } else {
                EventKind::Heartbeat(qsc_event::Heartbeat {
                    version: "bench".into(),
                    uptime_s: seq,
                    active_hooks: Vec::new(),
                })
            };
            Event::new(host, Source::Alpha, seq, kind)
                .to_json()
                .into_bytes()
        })
        .collect()
}

async fn measure(
    deployment: &Deployment,
    replicas: usize,
    round: usize,
) -> anyhow::Result<RunResult> {
    let names = Names::new(replicas, round);
    let outcome = run_replicas(deployment, replicas, &names).await;
    let dropped = names.drop_all().await;
    let result = outcome?;
    dropped?;
    Ok(result)
}

async fn run_replicas(
    deployment: &Deployment,
    replicas: usize,
    names: &Names,
) -> anyhow::Result<RunResult> {
    let mut running = Vec::new();
    for index in 0..replicas {
        let name = format!("n{replicas}-{index}");
        let config = deployment.write_config(&name, Some(names))?;
        // One after the other: the first creates the schema and the stream.
        running.push(Replica::start(&deployment.bin, &config)?);
    }
    let token = std::fs::read_to_string(deployment.dir.join("api.token"))?
        .trim()
        .to_owned();
    let outboxes = tempfile::tempdir()?;
    let started = Instant::now();
    let mut agents = Vec::new();
    for (index, keypair) in deployment.agents.iter().enumerate() {
        let mut config = ClientConfig::new(
            running[index % replicas].channel.clone(),
            deployment.cortex_key,
            keypair.clone(),
        );
        config.fallback_addrs = running.iter().map(|r| r.channel.clone()).collect();
        let outbox = Outbox::open(OutboxConfig::new(outboxes.path().join(index.to_string())))?;
        let client = Client::new(config, outbox);
        client
            .handle()
            .append_batch(&burst(&format!("bench-{index:02}")))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(client.run_until(NoCommands, async {
            let _ = stopped.await;
        }));
        agents.push((stop, task));
    }
    let total = (AGENTS as u64 * EVENTS_PER_AGENT) as f64;
    let mut texts;
    loop {
        texts = running
            .iter()
            .map(|r| r.metrics(&token))
            .collect::<anyhow::Result<Vec<String>>>()?;
        let analysed: f64 = texts
            .iter()
            .map(|t| series(t, "cortex_events_analysed_total"))
            .sum();
        if analysed >= total {
            break;
        }
        if started.elapsed() > RUN_TIMEOUT {
            bail!("{replicas} replica(s) analysed {analysed} of {total} events in {RUN_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    for (stop, task) in agents {
        let _ = stop.send(());
        let _ = task.await;
    }
    for replica in running {
        replica.stop()?;
    }
    Ok(RunResult {
        events_per_s: total / elapsed,
        decision_p99_ms: p99_ms(&texts).context("no decision latency was recorded")?,
    })
}

/// The value of one unlabelled Prometheus series, 0 when absent.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The 99th percentile of the merged decision-latency histograms, as its bucket's bound (ms).
fn p99_ms(texts: &[String]) -> Option<f64> {
    const BUCKET: &str = "cortex_decision_latency_seconds_bucket{le=\"";
    let mut cumulative: BTreeMap<String, f64> = BTreeMap::new();
    for text in texts {
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(BUCKET) else {
                continue;
            };
            let Some((le, count)) = rest.split_once("\"} ") else {
                continue;
            };
            *cumulative.entry(le.to_owned()).or_default() += count.trim().parse::<f64>().ok()?;
        }
    }
    let total = cumulative.get("+Inf").copied()?;
    let mut bounds: Vec<(f64, f64)> = cumulative
        .iter()
        .filter_map(|(le, count)| Some((le.parse::<f64>().ok()?, *count)))
        .collect();
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    bounds
        .into_iter()
        .find(|(_, count)| *count >= 0.99 * total)
        .map(|(le, _)| le * 1000.0)
        .or_else(|| (total > 0.0).then_some(f64::INFINITY))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn report(results: &BTreeMap<usize, Vec<RunResult>>, out: &Path) -> anyhow::Result<()> {
    let pick = |replicas: usize, f: fn(&RunResult) -> f64| {
        median(
            results
                .get(&replicas)
                .into_iter()
                .flatten()
                .map(f)
                .collect(),
        )
    };
    let (eps1, eps3) = (pick(1, |r| r.events_per_s), pick(3, |r| r.events_per_s));
    let (p99_1, p99_3) = (
        pick(1, |r| r.decision_p99_ms),
        pick(3, |r| r.decision_p99_ms),
    );
    let json = json!({
        "events_per_s_1": eps1,
        "events_per_s_3": eps3,
        "decision_p99_ms_1": p99_1,
        "decision_p99_ms_3": p99_3,
        "ratio_events_per_s_3_to_1": eps3 / eps1,
        "agents": AGENTS,
        "events_per_agent": EVENTS_PER_AGENT,
        "rounds": results.values().map(Vec::len).max().unwrap_or(0),
        "note": "replicas share this machine: 3 replicas measure the coordination cost \
                 (bus, shared store), not the scale-out gain of 3 machines",
    });
    std::fs::create_dir_all(out.parent().context("output folder")?)?;
    std::fs::write(out, serde_json::to_string_pretty(&json)?)?;
    println!(
        "scale: 1 replica {eps1:.0} events/s (p99 {p99_1:.1} ms), 3 replicas {eps3:.0} events/s \
         (p99 {p99_3:.1} ms), ratio {:.2} → {}",
        eps3 / eps1,
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_p99_is_the_bound_of_the_bucket_holding_it() {
        let one = "cortex_decision_latency_seconds_bucket{le=\"0.001\"} 50\n\
                   cortex_decision_latency_seconds_bucket{le=\"0.01\"} 99\n\
                   cortex_decision_latency_seconds_bucket{le=\"+Inf\"} 100\n";
        let other = one.replace("} 50", "} 90").replace("} 99", "} 100");
        // Merged: 140 ≤ 1 ms, 199 ≤ 10 ms of 200: the 99th percentile (198) is ≤ 10 ms.
        assert_eq!(p99_ms(&[one.to_owned(), other]), Some(10.0));
        assert_eq!(p99_ms(&[String::new()]), None);
        assert_eq!(series("a_total 7\nb 2\n", "a_total"), 7.0);
    }
}
