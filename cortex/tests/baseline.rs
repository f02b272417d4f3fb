//! The anomaly baseline in the real service: an agent streams host_metrics samples over the
//! channel, `cortex serve` learns the host, a burst of failed logins becomes anomaly evidence
//! naming the feature in an incident, and `cortex baseline train|show` rebuild and print the
//! host's model from the samples the service stored, leaving the incident's windows out.

// The harness is shared by several test binaries; this one uses only part of it.
#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::{Agent, Deployment, eventually};
use cortex::anomaly::synthetic::{Injection, SyntheticHost};
use qsc_event::{Event, now_ns};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);
const HOST: &str = "web-1";
const NS_PER_S: u64 = 1_000_000_000;
/// Learning takes 600 one-second windows; the login storm ends the stream, so that no later
/// window replaces its evidence before the test sees it.
const SAMPLES: usize = 700;
const STORM_AT: [usize; 3] = [697, 698, 699];

/// One-second windows, a 600 s learning period, and anomalies weighing up to 1000 so that one
/// opens an incident on its own.
fn deployment() -> Deployment {
    let deployment = Deployment::new(0);
    let config = std::fs::read_to_string(&deployment.config).expect("read config");
    let config = config.replace(
        "[anomaly]\n",
        "[anomaly]\nwindow_s = 1\nlearning_period_s = 600\nretrain_every_s = 3600\n\
         history_s = 3600\ntrees = 30\n",
    ) + "[score]\nanomaly_max_lr = 1000.0\n";
    std::fs::write(&deployment.config, config).expect("write config");
    deployment
}

/// The samples, re-timed to one per second ending a second ago.
fn samples(host: &mut SyntheticHost) -> Vec<Event> {
    let storm: Vec<(usize, Injection)> = STORM_AT
        .iter()
        .map(|&at| (at, Injection::LoginStorm))
        .collect();
    let mut events = host.events(HOST, SAMPLES, &storm);
    let first_ns = now_ns() - (SAMPLES as u64 + 1) * NS_PER_S;
    for (i, event) in events.iter_mut().enumerate() {
        event.time_ns = first_ns + i as u64 * NS_PER_S;
    }
    events
}

fn encode(events: &[Event]) -> Vec<Vec<u8>> {
    events
        .iter()
        .map(|e| serde_json::to_vec(e).expect("encode"))
        .collect()
}

fn anomaly_evidence(incidents: &Value) -> Option<Value> {
    incidents.as_array()?.iter().find_map(|incident| {
        incident["evidence"]
            .as_array()?
            .iter()
            .find(|e| e["rule_id"] == "qsc.anomaly.host_baseline")
            .cloned()
    })
}

fn line_value<'a>(output: &'a str, label: &str) -> &'a str {
    output
        .lines()
        .find_map(|line| line.strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no `{label}` line in\n{output}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_scoring_opens_an_incident_and_the_cli_retrains_without_its_windows() {
    let deployment = deployment();
    let key = deployment.enroll(HOST, "alpha");
    let cortex = deployment.serve();
    let agent = Agent::start(
        &deployment.path("outbox"),
        &cortex.channel,
        deployment.cortex_key(),
        key,
    );
    let mut host = SyntheticHost::new(17, 1);
    let events = samples(&mut host);
    let first_ns = events[0].time_ns;
    for chunk in events.chunks(50) {
        agent.send(&encode(chunk));
    }
    agent.wait_acked(WAIT).await;

    // Scores reach the fusion with the detection worker's next batch: keep the host reporting,
    // one sample per second of wall clock, until the storm's evidence shows up (an unusual
    // window of the normal period may have opened the incident before it).
    let mut next_ns = events[SAMPLES - 1].time_ns + NS_PER_S;
    let evidence = eventually(WAIT, || {
        if now_ns() >= next_ns {
            let mut tick = host.events(HOST, 1, &[]);
            tick[0].time_ns = next_ns;
            agent.send(&encode(&tick));
            next_ns += NS_PER_S;
        }
        anomaly_evidence(&cortex.get_json(&format!("/api/incidents?host={HOST}"))).filter(|e| {
            e["title"]
                .as_str()
                .is_some_and(|t| t.contains("failed_logins_per_s="))
        })
    })
    .await;
    assert!(
        evidence["lr"].as_f64().is_some_and(|lr| lr > 100.0),
        "{evidence}"
    );
    agent.wait_acked(WAIT).await;
    agent.stop().await;
    cortex.stop();

    // The model the service learnt, then one trained from the stored samples.
    let shown = deployment.cli_ok(&["baseline", "show", "--host", HOST]);
    assert_eq!(line_value(&shown, "host web-1: model version"), "1");
    let since = first_ns.to_string();
    let trained = deployment.cli_ok(&["baseline", "train", "--host", HOST, "--since", &since]);
    assert_eq!(
        line_value(&trained, "trained host web-1: model version"),
        "2"
    );
    let windows: u64 = line_value(&trained, "windows")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("window count");
    let excluded: u64 = line_value(&trained, "excluded")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("excluded count");
    assert!(excluded >= 1, "{trained}");
    assert!(windows + excluded >= SAMPLES as u64 - 1, "{trained}");
    let json = deployment.cli_ok(&["baseline", "show", "--host", HOST, "--json"]);
    let model: Value = serde_json::from_str(&json).expect("show --json");
    assert_eq!(model["version"], 2);
    assert_eq!(model["excluded_incident_windows"], excluded);
    assert!(
        model["typical"]["failed_logins_per_s"].is_number(),
        "{model}"
    );

    // Clear failures: an unknown host has no model and no samples; a bad time is named.
    let missing = deployment.cli(&["baseline", "show", "--host", "nobody"]);
    assert_eq!(missing.status.code(), Some(1));
    let empty = deployment.cli(&["baseline", "train", "--host", "nobody", "--since", "1h"]);
    assert!(!empty.status.success());
    let stderr = String::from_utf8_lossy(&empty.stderr);
    assert!(stderr.contains("usable windows"), "{stderr}");
    let reversed = deployment.cli(&[
        "baseline", "train", "--host", HOST, "--since", "1h", "--until", "2h",
    ]);
    let stderr = String::from_utf8_lossy(&reversed.stderr);
    assert!(stderr.contains("is not before --until"), "{stderr}");
}
