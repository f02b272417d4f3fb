//! The cortex as three replicas — real `cortex serve` processes on NATS JetStream and PostgreSQL
//! (`cargo xtask setup --scale`): R1 `role = "all"` (gateway and worker), R2 a gateway, R3 a
//! worker. Six agents (alpha and beta of three hosts) replay a recorded stream over the real
//! channel, half of them through R2, each knowing the other gateway as its fallback. Mid-stream
//! R2 and R3 are SIGKILLed; their agents move to R1 and R3's unacknowledged batches go to R1's
//! worker. Every event must end up stored exactly once, and the incidents (severity,
//! confidence, evidence) must be those a single-node cortex makes of the same stream.

#[allow(dead_code)] // the harness is shared with the other service tests
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::scale::{Scratch, servers_or_skip};
use common::{Agent, BIN, Cortex, Deployment, NoCommands, eventually, fixture};
use qsc_channel::keys::StaticKeypair;
use qsc_event::Event;
use serde_json::Value;

const HOSTS: [&str; 3] = ["web-01", "web-02", "web-03"];
const SOURCES: [&str; 2] = ["alpha", "beta"];
/// Each agent's stream goes out in this many slices; the replicas die after the second.
const SLICES: usize = 4;
const WAIT: Duration = Duration::from_secs(120);

/// One agent of the recorded stream: its host, source, key and events (JSON, in order).
struct Recorded {
    host: &'static str,
    source: &'static str,
    keypair: StaticKeypair,
    events: Vec<Vec<u8>>,
}

impl Recorded {
    fn slice(&self, index: usize) -> &[Vec<u8>] {
        let size = self.events.len().div_ceil(SLICES);
        let start = (index * size).min(self.events.len());
        &self.events[start..(start + size).min(self.events.len())]
    }

    fn start(&self, dir: &Path, addrs: &[&str], deployment: &Deployment) -> Agent {
        let outbox = dir.join(format!("{}-{}", self.host, self.source));
        Agent::start_failover(
            &outbox,
            addrs,
            deployment.cortex_key(),
            self.keypair.clone(),
            NoCommands,
        )
    }
}

/// The seed scenario (failed logins, a login, an exfiltration, a damaged backup) on every host,
/// each agent enrolled once for both runs.
fn record(deployment: &Deployment) -> Vec<Recorded> {
    let events = fixture("seed_scenario.jsonl");
    let mut agents = Vec::new();
    for host in HOSTS {
        for source in SOURCES {
            let events = events
                .iter()
                .filter(|e| e["source"] == source)
                .map(|e| {
                    let mut e = e.clone();
                    e["host_id"] = Value::from(host);
                    serde_json::to_vec(&e).expect("encode")
                })
                .collect();
            agents.push(Recorded {
                host,
                source,
                keypair: deployment.enroll(host, source),
                events,
            });
        }
    }
    agents
}

/// What must match between the runs: per host and entity, the incident's title, severity,
/// confidence and evidence rules.
fn incidents(cortex: &Cortex) -> BTreeMap<String, Value> {
    let mut found = BTreeMap::new();
    for host in HOSTS {
        let list = cortex.get_json(&format!("/api/incidents?host={host}"));
        for incident in list.as_array().into_iter().flatten() {
            let id = incident["id"].as_str().expect("incident id");
            let detail = cortex.get_json(&format!("/api/incidents/{id}"));
            let mut rules: Vec<&str> = detail["incident"]["evidence"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["rule_id"].as_str())
                .collect();
            rules.sort_unstable();
            let key = format!("{host} {}", incident["entity"]);
            let confidence = incident["confidence"].as_f64().expect("confidence");
            found.insert(
                key,
                serde_json::json!({
                    "title": incident["title"],
                    "severity": incident["severity"],
                    "confidence": format!("{confidence:.9}"),
                    "rules": rules,
                }),
            );
        }
    }
    found
}

/// Every stored event of `host`, through `cortex events search` with `config`.
fn stored(config: &Path, host: &str) -> Vec<Event> {
    let output = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(["events", "search", "--host", host, "--limit", "100000"])
        .output()
        .expect("run cortex events search");
    assert!(
        output.status.success(),
        "events search: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| Event::from_json(line.as_bytes()).expect("a stored event"))
        .collect()
}

/// The single-node run: one cortex on SQLite, every agent replays its whole stream.
async fn single_node(deployment: &Deployment, agents: &[Recorded]) -> BTreeMap<String, Value> {
    let cortex = deployment.serve();
    let dir = deployment.path("single-outboxes");
    for agent in agents {
        let running = agent.start(&dir, &[&cortex.channel], deployment);
        running.send(&agent.events);
        running.wait_acked(WAIT).await;
        running.stop().await;
    }
    let total: usize = agents.iter().map(|a| a.events.len()).sum();
    eventually(WAIT, || {
        (cortex.metric("cortex_events_analysed_total") >= total as f64).then_some(())
    })
    .await;
    let found = incidents(&cortex);
    cortex.stop();
    found
}

/// A replica's config: the deployment's, on the shared PostgreSQL schema and bus, with its own
/// audit file and anomaly models.
fn replica_config(deployment: &Deployment, scratch: &Scratch, name: &str, role: &str) -> PathBuf {
    let base = std::fs::read_to_string(&deployment.config).expect("read config");
    let config = base
        .replace("[store]\n", "[store]\nbackend = \"postgres\"\n")
        .replace("audit.db", &format!("audit-{name}.db"))
        .replace("/anomaly\"", &format!("/anomaly-{name}\""))
        + &scratch.config_tables()
        + &format!("[cluster]\nrole = \"{role}\"\n");
    let path = deployment.path(&format!("{name}.toml"));
    std::fs::write(&path, config).expect("write replica config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_lose_a_gateway_and_a_worker_and_agree_with_a_single_node() {
    if !servers_or_skip() {
        return;
    }
    let deployment = Deployment::new(0);
    let agents = record(&deployment);
    // The running cortex reloads the agents file every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expected = single_node(&deployment, &agents).await;
    assert!(
        expected.values().any(|i| i["severity"] == "CRITICAL"),
        "the recorded stream must give incidents: {expected:#?}"
    );

    let scratch = Scratch::new("replicas");
    let r1_config = replica_config(&deployment, &scratch, "r1", "all");
    let r1 = deployment.serve_with(&r1_config);
    let mut r2 = deployment.serve_with(&replica_config(&deployment, &scratch, "r2", "gateway"));
    let mut r3 = deployment.serve_with(&replica_config(&deployment, &scratch, "r3", "worker"));
    let dir = deployment.path("replica-outboxes");
    let running: Vec<Agent> = agents
        .iter()
        .enumerate()
        .map(|(index, agent)| {
            let addrs = match index % 2 {
                0 => [r2.channel.as_str(), r1.channel.as_str()],
                _ => [r1.channel.as_str(), r2.channel.as_str()],
            };
            agent.start(&dir, &addrs, &deployment)
        })
        .collect();
    for slice in 0..2 {
        for (agent, recorded) in running.iter().zip(&agents) {
            agent.send(recorded.slice(slice));
        }
    }
    for agent in &running {
        agent.wait_acked(WAIT).await;
    }
    // Mid-stream: the third slice is on its way when a gateway and a worker die.
    for (agent, recorded) in running.iter().zip(&agents) {
        agent.send(recorded.slice(2));
    }
    r2.child.kill().expect("SIGKILL the gateway");
    r3.child.kill().expect("SIGKILL the worker");
    let _ = (r2.child.wait(), r3.child.wait());
    for (agent, recorded) in running.iter().zip(&agents) {
        agent.send(recorded.slice(3));
    }
    for agent in running {
        agent.wait_acked(WAIT).await;
        agent.stop().await;
    }

    for host in HOSTS {
        let expected_count: usize = agents
            .iter()
            .filter(|a| a.host == host)
            .map(|a| a.events.len())
            .sum();
        let events = eventually(WAIT, || {
            let events = stored(&r1_config, host);
            (events.len() >= expected_count).then_some(events)
        })
        .await;
        let mut keys: Vec<(String, u64)> = events
            .iter()
            .map(|e| (format!("{:?}", e.source), e.seq))
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(events.len(), expected_count, "{host}: every event once");
        assert_eq!(keys.len(), expected_count, "{host}: no event twice");
    }
    // The incidents settle once the last batches are analysed.
    let deadline = std::time::Instant::now() + WAIT;
    let mut found = incidents(&r1);
    while found != expected && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        found = incidents(&r1);
    }
    assert_eq!(
        found, expected,
        "the replicas' incidents against the single node's"
    );
    r1.stop();
}
