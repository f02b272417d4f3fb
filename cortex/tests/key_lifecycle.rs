//! Agent key lifecycle against the real `cortex serve` binary and a real agent uplink on
//! loopback: `cortex keys revoke` closes the live session and refuses the next handshake;
//! `cortex keys rotate` in the middle of a stream of N events ends with exactly those N events
//! stored once, the old key retired and the agent's retired key file removed; an emergency
//! rotation makes the old key unusable at once; a key older than `max_key_age_s` is rotated by
//! the cortex itself; every transition is in the audit chain.

#[allow(dead_code)] // the harness is shared with the other service tests
mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{Agent, Cortex, Deployment, eventually};
use cortex::audit::AuditLog;
use qsc_channel::delivery::{ClientConfig, OutboxConfig};
use qsc_channel::keys::{PublicKeyBytes, StaticKeypair, retired_path};
use qsc_channel::noise::HandshakeMode;
use qsc_channel::uplink::{AgentCommands, Uplink, UplinkConfig};
use qsc_event::{Event, EventKind, Heartbeat, Source};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn heartbeat(seq: u64) -> Vec<u8> {
    Event::new(
        "web-01",
        Source::Alpha,
        seq,
        EventKind::Heartbeat(Heartbeat {
            version: "test".into(),
            uptime_s: seq,
            active_hooks: Vec::new(),
        }),
    )
    .to_json()
    .into_bytes()
}

/// Enrolls a key written to `alpha.key` (0600) for web-01's alpha agent.
fn enroll_key_file(deployment: &Deployment) -> (std::path::PathBuf, PublicKeyBytes) {
    let key_file = deployment.path("alpha.key");
    let public = StaticKeypair::generate_file(&key_file).expect("agent key");
    deployment.enroll_key("web-01", "alpha", &public.to_hex());
    (key_file, public)
}

fn start_uplink(deployment: &Deployment, cortex: &Cortex, key_file: &Path) -> Uplink {
    let keypair = StaticKeypair::load(key_file).expect("load agent key");
    let mut client = ClientConfig::new(cortex.channel.clone(), deployment.cortex_key(), keypair);
    client.backoff_initial = Duration::from_millis(20);
    client.backoff_max = Duration::from_millis(200);
    let config = UplinkConfig {
        client,
        outbox: OutboxConfig::new(deployment.path("outbox")),
        key_file: Some(key_file.to_owned()),
    };
    Uplink::start(config, AgentCommands::new("guardian-alpha", "test")).expect("uplink")
}

/// `cortex keys list --json`: state of each key by its hex.
fn key_states(deployment: &Deployment) -> Vec<(String, String)> {
    let listed: Value =
        serde_json::from_str(&deployment.cli_ok(&["keys", "list", "--json"])).expect("json");
    listed["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            (
                r["public_key"].as_str().unwrap_or_default().to_owned(),
                r["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn state_of(deployment: &Deployment, key: &PublicKeyBytes) -> Option<String> {
    key_states(deployment)
        .into_iter()
        .find(|(hex, _)| *hex == key.to_hex())
        .map(|(_, state)| state)
}

/// The `key_transition` audit records: (key id, transition) in order.
/// Actor and body of every key event in the audit chain.
fn key_audit(deployment: &Deployment) -> Vec<(String, Value)> {
    let audit = AuditLog::open(
        &deployment.path("audit.db"),
        &deployment.path("audit.key"),
        4,
    )
    .expect("open audit");
    audit
        .records(1, u64::MAX >> 1)
        .expect("audit records")
        .into_iter()
        .filter(|r| r.kind == "key_event")
        .filter_map(|r| Some((r.actor, serde_json::from_str(&r.body).ok()?)))
        .collect()
}

fn audited_transitions(deployment: &Deployment) -> Vec<(String, String)> {
    key_audit(deployment)
        .into_iter()
        .filter_map(|(_, body)| {
            (body["event"] == "key_transition").then(|| {
                (
                    body["key_id"].as_str().unwrap_or_default().to_owned(),
                    body["transition"].as_str().unwrap_or_default().to_owned(),
                )
            })
        })
        .collect()
}

fn transitions_of(deployment: &Deployment, key: &PublicKeyBytes) -> Vec<String> {
    audited_transitions(deployment)
        .into_iter()
        .filter(|(id, _)| *id == key.key_id())
        .map(|(_, t)| t)
        .collect()
}

async fn handshake(cortex: &Cortex, cortex_key: PublicKeyBytes, keypair: &StaticKeypair) -> bool {
    let mut stream = tokio::net::TcpStream::connect(&cortex.channel)
        .await
        .expect("connect");
    qsc_channel::handshake::initiate(
        &mut stream,
        HandshakeMode::Hybrid,
        keypair,
        &cortex_key,
        &[],
    )
    .await
    .is_ok()
}

/// The stored seqs of web-01's alpha events.
fn stored_seqs(deployment: &Deployment) -> Vec<u64> {
    deployment
        .cli_ok(&["events", "search", "--host", "web-01", "--limit", "10000"])
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["source"] == "alpha")
        .filter_map(|e| e["seq"].as_u64())
        .collect()
}

/// Starts the cortex and an in-test agent with `keypair`; returns once the agent's first
/// heartbeat is acknowledged and its session is the one live session.
async fn serve_with_agent(deployment: &Deployment, keypair: StaticKeypair) -> (Cortex, Agent) {
    let cortex = deployment.serve();
    let agent = Agent::start(
        &deployment.path("outbox"),
        &cortex.channel,
        deployment.cortex_key(),
        keypair,
    );
    agent.send(&[heartbeat(1)]);
    agent.wait_acked(WAIT).await;
    assert_eq!(cortex.metric("cortex_agent_sessions"), 1.0);
    (cortex, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_closes_the_live_session_and_refuses_the_next_handshake() {
    let deployment = Deployment::new(0);
    let keypair = deployment.enroll("web-01", "alpha");
    let copy = deployment.path("alpha-copy.key");
    keypair.save(&copy).expect("save key");
    let (cortex, agent) = serve_with_agent(&deployment, keypair).await;
    let refused_before = cortex.metric("cortex_handshakes_refused_total");

    let revoked = deployment.cli_ok(&["keys", "revoke", "web-01", "--agent", "alpha"]);
    assert!(revoked.contains("revoked web-01 alpha"), "{revoked}");
    eventually(Duration::from_secs(5), || {
        (cortex.metric("cortex_agent_sessions") == 0.0).then_some(())
    })
    .await;
    let old = StaticKeypair::load(&copy).expect("key copy");
    assert!(
        !handshake(&cortex, deployment.cortex_key(), &old).await,
        "the revoked key is refused"
    );
    assert!(cortex.metric("cortex_handshakes_refused_total") > refused_before);
    agent.send(&[heartbeat(2)]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        agent.handle.unacked().expect("unacked"),
        1,
        "nothing more is accepted"
    );
    assert_eq!(
        state_of(&deployment, &old.public()).as_deref(),
        Some("revoked")
    );
    assert_eq!(
        transitions_of(&deployment, &old.public()),
        ["generate", "distribute", "activate", "revoke"]
    );
    agent.stop().await;
    cortex.stop();
}

/// The audit record of `key`'s revocation: its actor and reason.
fn revocation_audit(deployment: &Deployment, key: &PublicKeyBytes) -> Option<(String, String)> {
    key_audit(deployment).into_iter().find_map(|(actor, body)| {
        (body["transition"] == "revoke" && body["key_id"] == key.key_id().as_str()).then(|| {
            let reason = body["reason"].as_str().unwrap_or_default().to_owned();
            (actor, reason)
        })
    })
}

/// With the cortex running, `cortex keys revoke` goes through `POST /api/keys/{host}/revoke`:
/// the running cortex revokes, audits and closes the live session itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_through_the_running_cortex_closes_the_session_at_once() {
    let deployment = Deployment::new(0);
    let keypair = deployment.enroll("web-02", "alpha");
    let public = keypair.public();
    let (cortex, agent) = serve_with_agent(&deployment, keypair).await;

    let revoke = |body: &str| {
        common::http(
            &cortex.api,
            "POST",
            "/api/keys/web-02/revoke",
            Some(&cortex.token),
            Some(body),
        )
    };
    let (status, text) = revoke(r#"{"operator":""}"#);
    assert_eq!(status, 400, "{text}");
    let (status, text) = revoke(r#"{"operator":"carol","agent":"beta"}"#);
    assert_eq!(status, 404, "no beta key to revoke: {text}");
    assert_eq!(cortex.metric("cortex_agent_sessions"), 1.0);

    // The CLI finds the running cortex's API (the config names its real port now).
    let config = std::fs::read_to_string(&deployment.config).expect("read config");
    let config = config.replace(
        "[api]\naddress = \"127.0.0.1:0\"",
        &format!("[api]\naddress = \"{}\"", cortex.api),
    );
    std::fs::write(&deployment.config, config).expect("write config");
    let revoked = deployment.cli_ok(&[
        "keys",
        "revoke",
        "web-02",
        "--agent",
        "alpha",
        "--operator",
        "carol",
    ]);
    assert!(
        revoked.contains(&format!("revoked web-02 alpha key {}", public.key_id())),
        "{revoked}"
    );
    eventually(Duration::from_secs(2), || {
        (cortex.metric("cortex_agent_sessions") == 0.0).then_some(())
    })
    .await;
    let (actor, reason) = revocation_audit(&deployment, &public).expect("revocation audited");
    assert_eq!(actor, "operator:carol");
    assert!(
        reason.contains("POST /api/keys"),
        "revoked by the cortex: {reason}"
    );
    assert_eq!(state_of(&deployment, &public).as_deref(), Some("revoked"));
    let (status, text) = revoke(r#"{"operator":"carol"}"#);
    assert_eq!(status, 404, "nothing left to revoke: {text}");
    agent.stop().await;
    cortex.stop();
}

/// Appends `count` heartbeats numbered by the uplink, pausing a little between them.
async fn stream_events(uplink: &mut Uplink, count: usize) {
    for _ in 0..count {
        uplink.append_with(heartbeat).expect("append");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The key in `key_file` once it is no longer `old` and the cortex holds it ACTIVE.
async fn new_active_key(
    deployment: &Deployment,
    key_file: &Path,
    old: &PublicKeyBytes,
) -> PublicKeyBytes {
    eventually(WAIT, || {
        let current = StaticKeypair::load(key_file).ok()?.public();
        (current != *old && state_of(deployment, &current).as_deref() == Some("active"))
            .then_some(current)
    })
    .await
}

/// Rotates web-01's alpha key in the middle of a stream of `total` events; returns the old and
/// the new key once the rotation took effect.
async fn rotate_mid_stream(
    deployment: &Deployment,
    cortex: &Cortex,
    key_file: &Path,
    emergency: bool,
    total: usize,
) -> (PublicKeyBytes, PublicKeyBytes, Uplink) {
    let old = StaticKeypair::load(key_file).expect("key").public();
    let mut uplink = start_uplink(deployment, cortex, key_file);
    stream_events(&mut uplink, total / 2).await;
    let mut args = vec!["keys", "rotate", "web-01", "--agent", "alpha"];
    if emergency {
        args.push("--emergency");
    }
    deployment.cli_ok(&args);
    stream_events(&mut uplink, total - total / 2).await;
    let new = new_active_key(deployment, key_file, &old).await;
    let delivery = uplink.delivery();
    assert!(
        tokio::task::block_in_place(|| delivery.wait_delivered(WAIT)).expect("delivery"),
        "every event is acknowledged after the rotation"
    );
    (old, new, uplink)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_mid_stream_delivers_every_event_once_and_retires_the_old_key() {
    const TOTAL: usize = 400;
    let deployment = Deployment::new(0);
    let (key_file, _) = enroll_key_file(&deployment);
    let cortex = deployment.serve();
    let (old, new, uplink) = rotate_mid_stream(&deployment, &cortex, &key_file, false, TOTAL).await;

    let seqs = stored_seqs(&deployment);
    assert_eq!(seqs.len(), TOTAL, "each event stored exactly once");
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique, (1..=TOTAL as u64).collect());
    eventually(WAIT, || {
        (state_of(&deployment, &old).as_deref() == Some("retired")).then_some(())
    })
    .await;
    eventually(WAIT, || (!retired_path(&key_file).exists()).then_some(())).await;
    assert_eq!(
        transitions_of(&deployment, &old),
        [
            "generate",
            "distribute",
            "activate",
            "begin_rotation",
            "retire"
        ]
    );
    assert_eq!(
        transitions_of(&deployment, &new),
        ["generate", "distribute", "activate"]
    );
    let stale = StaticKeypair::load(&retired_path(&key_file)).ok();
    assert!(stale.is_none(), "the retired key file is gone");
    drop(uplink);
    cortex.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_rotation_makes_the_old_key_unusable_at_once() {
    const TOTAL: usize = 100;
    let deployment = Deployment::new(0);
    let (key_file, _) = enroll_key_file(&deployment);
    let old_copy = deployment.path("old-copy.key");
    StaticKeypair::load(&key_file)
        .expect("key")
        .save(&old_copy)
        .expect("copy");
    let cortex = deployment.serve();
    let (old, new, uplink) = rotate_mid_stream(&deployment, &cortex, &key_file, true, TOTAL).await;

    assert_eq!(state_of(&deployment, &old).as_deref(), Some("revoked"));
    let old_keypair = StaticKeypair::load(&old_copy).expect("old key");
    assert!(
        !handshake(&cortex, deployment.cortex_key(), &old_keypair).await,
        "the old key is refused"
    );
    let current = StaticKeypair::load(&key_file).expect("new key");
    assert!(handshake(&cortex, deployment.cortex_key(), &current).await);
    let seqs = stored_seqs(&deployment);
    assert_eq!(seqs.len(), TOTAL);
    assert_eq!(
        transitions_of(&deployment, &old),
        ["generate", "distribute", "activate", "revoke"]
    );
    assert_eq!(
        transitions_of(&deployment, &new),
        ["generate", "distribute", "activate"]
    );
    drop(uplink);
    cortex.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_older_than_max_key_age_is_rotated_on_schedule() {
    let deployment = Deployment::new(0);
    let config = std::fs::read_to_string(&deployment.config).expect("config");
    let config = config.replace("[keys]\n", "[keys]\nmax_key_age_s = 2\n");
    std::fs::write(&deployment.config, config).expect("write config");
    let (key_file, old) = enroll_key_file(&deployment);
    let cortex = deployment.serve();
    let mut uplink = start_uplink(&deployment, &cortex, &key_file);
    stream_events(&mut uplink, 10).await;

    let new = new_active_key(&deployment, &key_file, &old).await;
    eventually(WAIT, || {
        (state_of(&deployment, &old).as_deref() == Some("retired")).then_some(())
    })
    .await;
    let begin = key_audit(&deployment)
        .into_iter()
        .find(|(_, body)| {
            body["key_id"] == old.key_id().as_str() && body["transition"] == "begin_rotation"
        })
        .expect("the rotation is audited");
    assert_eq!(begin.0, "cortex", "the cortex itself started it");
    let reason = begin.1["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("scheduled: key older than 2s"),
        "reason: {reason}"
    );
    assert_eq!(
        transitions_of(&deployment, &new)[..3],
        ["generate", "distribute", "activate"]
    );
    drop(uplink);
    cortex.stop();
}
