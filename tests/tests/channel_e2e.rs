//! Agents → cortex over the real channel, into the real `cortex serve` (a separate process that
//! is SIGKILLed and restarted mid-way), read back from its encrypted store with `cortex events
//! search`.
//!
//! * A real guardian-beta sends its findings through its `[cortex]` uplink: the cortex ends up
//!   with every finding the agent reported, numbered gap-free by the channel, and a command
//!   from the cortex (a key rotation) comes back with its result and takes effect.
//! * An in-test agent streams 100,000 events while the cortex is SIGKILLed and restarted twice:
//!   exactly those 100,000 events end up stored, each once and intact.
//! * A real guardian-alpha's exec event arrives under its channel sequence number (root).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use qsc_channel::delivery::{
    Appended, Client, ClientConfig, CommandHandler, CommandStatus, FsyncPolicy, Outbox,
    OutboxConfig, OutboxHandle, OverflowPolicy,
};
use qsc_channel::keys::{PublicKeyBytes, StaticKeypair};
use qsc_event::{Event, EventKind, Heartbeat, Source};
use qsc_tests::channel::{CortexDeployment, MAX_EVENTS_READ, RunningCortex, key_hex, wait_until};
use qsc_tests::workspace_bin;

const HOST: &str = "beta-e2e";
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

fn keygen(binary: &str, out: &Path) -> String {
    let output = Command::new(workspace_bin(binary))
        .args(["keygen", "--out"])
        .arg(out)
        .output()
        .expect("run keygen");
    assert!(
        output.status.success(),
        "{binary} keygen failed: {output:?}"
    );
    let mode = std::fs::metadata(out)
        .expect("key file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "{binary} keygen must write a 0600 key");
    String::from_utf8(output.stdout)
        .expect("utf-8 public key")
        .trim()
        .to_string()
}

fn beta_config(dir: &Path, cortex_addr: &str) -> String {
    let d = dir.display();
    format!(
        r#"host_id = "{HOST}"
store = "{d}/baseline.qsb"
key_file = "{d}/store.key"
heal_dir = "{d}/heal"

[[tree]]
path = "{d}/tree"

[cortex]
enabled = true
address = "{cortex_addr}"
cortex_public_key_file = "{d}/cortex.pub"
key_file = "{d}/agent.key"
outbox_dir = "{d}/outbox"
drain_timeout_ms = 3000
"#
    )
}

fn beta(config: &Path, args: &[&str]) -> Output {
    Command::new(workspace_bin("guardian-beta"))
        .arg("--config")
        .arg(config)
        .args(["--format", "json"])
        .args(args)
        .output()
        .expect("run guardian-beta")
}

/// The events an agent wrote to its local output (stdout JSON lines).
fn local_events(stdout: &[u8]) -> Vec<Event> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| Event::from_json(l.as_bytes()).expect("agent wrote a valid event"))
        .collect()
}

fn paths(events: &[Event]) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::IntegrityFileAdded(f) | EventKind::IntegrityFileRemoved(f) => {
                Some(f.path.clone())
            }
            EventKind::IntegrityFileChanged(f) => Some(f.path.clone()),
            _ => None,
        })
        .collect()
}

/// The events the cortex stored for `host`, in channel sequence order; each must come from
/// `source` (a cortex finding in its place would mean the event was rejected or lost).
fn stored_events(cortex: &CortexDeployment, host: &str, source: Source) -> Vec<Event> {
    let mut events = cortex.events(host);
    events.sort_by_key(|e| e.seq);
    for event in &events {
        assert_eq!(event.source, source, "stored as sent: {event:?}");
        assert_eq!(event.host_id, host);
    }
    events
}

fn assert_gap_free(events: &[Event]) {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "gap-free channel sequence numbers"
    );
}

/// `cortex keys rotate` for a connected agent: the rotation command reaches the agent, its
/// result (the new public key) comes back, the cortex activates the new key and retires the
/// old one, and the agent, back with the new key, removes its retired key file.
fn rotate_and_confirm(cortex: &CortexDeployment, host: &str, agent: &str, key_file: &Path) {
    let old = key_hex(key_file);
    cortex.cli_ok(&[
        "keys",
        "rotate",
        host,
        "--agent",
        agent,
        "--operator",
        "e2e",
    ]);
    let rotated = wait_until(DELIVERY_TIMEOUT, || {
        let new = key_hex(key_file);
        new != old
            && cortex.key_state(&new).as_deref() == Some("active")
            && cortex.key_state(&old).as_deref() == Some("retired")
    });
    assert!(rotated, "key rotation did not complete: {}", cortex.keys());
    let retired_file = qsc_channel::keys::retired_path(key_file);
    assert!(
        wait_until(DELIVERY_TIMEOUT, || !retired_file.exists()),
        "the agent kept its retired key file {}",
        retired_file.display()
    );
}

/// Runs `guardian-beta watch` until it reports `finding_path`, the cortex holds `expected`
/// events, and a key rotation went through the running agent; returns what the watcher wrote
/// locally.
fn watch_until_delivered(
    config: &Path,
    cortex: &CortexDeployment,
    finding_path: &Path,
    expected: usize,
    key_file: &Path,
) -> Vec<Event> {
    let mut child = Command::new(workspace_bin("guardian-beta"))
        .arg("--config")
        .arg(config)
        .args(["--format", "json", "watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn guardian-beta watch");
    let stderr = child.stderr.take().expect("watch stderr");
    let mut lines = BufReader::new(stderr).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains("watching"));
    assert!(ready, "guardian-beta watch did not start");
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    std::fs::write(finding_path, "created while watching").expect("write file");
    let delivered = wait_until(DELIVERY_TIMEOUT, || cortex.events(HOST).len() >= expected);
    if delivered {
        rotate_and_confirm(cortex, HOST, "beta", key_file);
    }
    // SIGKILL: the agent's outbox must not depend on a clean exit.
    child.kill().expect("kill watch");
    let output = child.wait_with_output().expect("watch output");
    assert!(delivered, "the cortex did not get {expected} events");
    local_events(&output.stdout)
}

#[test]
fn beta_findings_reach_the_cortex_gap_free_across_a_receiver_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    std::fs::create_dir(d.join("tree")).expect("tree");
    std::fs::write(d.join("tree/kept"), "v1").expect("file");
    std::fs::write(d.join("tree/doomed"), "v1").expect("file");

    let agent_key = keygen("guardian-beta", &d.join("agent.key"));
    let cortex = CortexDeployment::create(&d.join("cortex"));
    cortex.enroll(HOST, "beta", &agent_key);
    let mut service = cortex.serve("127.0.0.1:0");
    std::fs::write(d.join("cortex.pub"), format!("{}\n", cortex.public_key())).expect("pin");
    let config = d.join("beta.toml");
    std::fs::write(&config, beta_config(d, &service.addr)).expect("config");

    let init = beta(&config, &["baseline", "init"]);
    assert!(init.status.success(), "baseline init: {init:?}");

    // Run 1: the cortex is up; findings are acknowledged (stored) before the command exits.
    std::fs::write(d.join("tree/kept"), "v2").expect("modify");
    std::fs::write(d.join("tree/new-1"), "x").expect("add");
    let run1 = beta(&config, &["baseline", "check"]);
    assert_eq!(run1.status.code(), Some(1), "findings expected: {run1:?}");
    let mut local = local_events(&run1.stdout);
    assert_eq!(
        stored_events(&cortex, HOST, Source::Beta).len(),
        local.len(),
        "run 1 fully delivered"
    );

    // Run 2: the cortex is SIGKILLed; findings wait in the agent's outbox.
    service.kill();
    std::fs::remove_file(d.join("tree/doomed")).expect("remove");
    std::fs::write(d.join("tree/new-2"), "y").expect("add");
    let run2 = beta(&config, &["baseline", "check"]);
    assert_eq!(run2.status.code(), Some(1), "findings expected: {run2:?}");
    local.extend(local_events(&run2.stdout));

    // Run 3: the cortex restarts on the same address; the watcher delivers the backlog and its
    // own finding, and carries out a key rotation the cortex asks for.
    let addr = service.addr.clone();
    drop(service);
    let _service = cortex.serve(&addr);
    let watched = d.join("tree/new-3");
    let expected = local.len() + 1;
    let key_file = d.join("agent.key");
    local.extend(watch_until_delivered(
        &config, &cortex, &watched, expected, &key_file,
    ));

    let stored_events = stored_events(&cortex, HOST, Source::Beta);
    assert_gap_free(&stored_events);
    let local_seqs: Vec<u64> = local.iter().map(|e| e.seq).collect();
    let stored_seqs: Vec<u64> = stored_events.iter().map(|e| e.seq).collect();
    assert_eq!(
        local_seqs, stored_seqs,
        "what the agent reported is what was stored"
    );
    let reported = paths(&stored_events);
    for name in ["kept", "new-1", "doomed", "new-2", "new-3"] {
        let path = d.join("tree").join(name).display().to_string();
        assert!(reported.contains(&path), "{path} missing from {reported:?}");
    }
}

#[test]
fn an_agent_key_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    std::fs::create_dir(d.join("tree")).expect("tree");
    keygen("guardian-beta", &d.join("agent.key"));
    std::fs::set_permissions(d.join("agent.key"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    std::fs::write(d.join("cortex.pub"), format!("{}\n", "ab".repeat(32))).expect("pin");
    let config = d.join("beta.toml");
    std::fs::write(&config, beta_config(d, "127.0.0.1:9")).expect("config");
    let init = beta(&config, &["baseline", "init"]);
    assert!(init.status.success(), "baseline init: {init:?}");
    let check = beta(&config, &["baseline", "check"]);
    assert_eq!(check.status.code(), Some(2), "refused: {check:?}");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains("chmod 600"),
        "error names the fix: {stderr}"
    );
}

#[test]
fn alpha_exec_event_reaches_the_cortex_with_its_channel_seq() {
    if !qsc_tests::root_or_skip("alpha_exec_event_reaches_the_cortex_with_its_channel_seq") {
        return;
    }
    const ALPHA_HOST: &str = "e2e-test";
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let agent_key = keygen("guardian-alpha", &d.join("agent.key"));
    let cortex = CortexDeployment::create(&d.join("cortex"));
    cortex.enroll(ALPHA_HOST, "alpha", &agent_key);
    let service = cortex.serve("127.0.0.1:0");
    let config = format!(
        "{}\n[cortex]\nenabled = true\naddress = \"{}\"\ncortex_public_key = \"{}\"\n\
         key_file = \"{}/agent.key\"\noutbox_dir = \"{}/outbox\"\n",
        qsc_tests::alpha::config_watching(d),
        service.addr,
        cortex.public_key(),
        d.display(),
        d.display()
    );
    let agent = qsc_tests::alpha::AlphaAgent::start(&config, &[]);
    let child = Command::new("/bin/sh")
        .args(["-c", "exit 0", "qsc-channel-e2e-marker"])
        .spawn()
        .expect("spawn sh");
    let pid = child.id();
    child.wait_with_output().expect("wait for sh");
    let is_our_exec =
        |e: &Event| matches!(&e.kind, EventKind::ProcessExec(x) if x.process.pid == pid);
    let local = agent
        .wait_for(is_our_exec)
        .expect("exec event reported locally");
    let arrived = wait_until(DELIVERY_TIMEOUT, || {
        cortex.events(ALPHA_HOST).iter().any(is_our_exec)
    });
    assert!(arrived, "the exec event did not reach the cortex");
    rotate_and_confirm(&cortex, ALPHA_HOST, "alpha", &d.join("agent.key"));
    agent.stop();

    let stored = stored_events(&cortex, ALPHA_HOST, Source::Alpha);
    assert_gap_free(&stored);
    let ours = stored
        .iter()
        .find(|e| is_our_exec(e))
        .expect("exec event stored");
    assert_eq!(
        ours.seq, local.seq,
        "local copy and cortex agree on the seq"
    );
}

const STREAM_HOST: &str = "stream-e2e";
const STREAM_TOTAL: u64 = 100_000;

struct NoCommands;

impl CommandHandler for NoCommands {
    fn execute(&mut self, _id: u64, _body: &[u8]) -> (CommandStatus, Vec<u8>) {
        (CommandStatus::Refused, b"no commands in this test".to_vec())
    }
}

/// The event the in-test agent sends as delivery seq `seq`: a heartbeat whose uptime is the seq,
/// so each stored event shows it is the one sent under its number.
fn stream_event(seq: u64) -> Vec<u8> {
    Event::new(
        STREAM_HOST,
        Source::Beta,
        seq,
        EventKind::Heartbeat(Heartbeat {
            version: "e2e".into(),
            uptime_s: seq,
            active_hooks: Vec::new(),
        }),
    )
    .to_json()
    .into_bytes()
}

/// An in-process agent (qsc-channel's client and outbox) with the cortex's address and key.
fn start_stream_agent(
    runtime: &tokio::runtime::Runtime,
    outbox_dir: &Path,
    addr: &str,
    cortex_key: PublicKeyBytes,
    agent: StaticKeypair,
) -> (
    OutboxHandle,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let outbox = Outbox::open(OutboxConfig {
        fsync: FsyncPolicy::Never,
        overflow: OverflowPolicy::DropNewest,
        ..OutboxConfig::new(outbox_dir)
    })
    .expect("open outbox");
    let mut config = ClientConfig::new(addr, cortex_key, agent);
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    config.max_batch_events = 500;
    let client = Client::new(config, outbox);
    let handle = client.handle();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = runtime.spawn(client.run_until(NoCommands, async {
        let _ = stop_rx.await;
    }));
    (handle, stop_tx, task)
}

/// Appends `STREAM_TOTAL` events in paced batches; `appended` counts them as they go in.
fn produce(handle: OutboxHandle, appended: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut next = 1u64;
        while next <= STREAM_TOTAL {
            let batch: Vec<Vec<u8>> = (next..(next + 1000).min(STREAM_TOTAL + 1))
                .map(stream_event)
                .collect();
            for outcome in handle.append_batch(&batch).expect("append") {
                assert_eq!(outcome, Appended::Stored { seq: next });
                next += 1;
            }
            appended.store(next - 1, Ordering::Release);
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// Events the cortex acknowledged (stored durably): appended minus still unacknowledged.
fn acknowledged(handle: &OutboxHandle, appended: &AtomicU64) -> u64 {
    let unacked = handle.unacked().expect("outbox");
    appended.load(Ordering::Acquire).saturating_sub(unacked)
}

#[test]
fn hundred_thousand_events_survive_two_cortex_kills() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cortex = CortexDeployment::create(&dir.path().join("cortex"));
    let agent = StaticKeypair::generate();
    cortex.enroll(STREAM_HOST, "beta", &agent.public().to_hex());
    let mut service: RunningCortex = cortex.serve("127.0.0.1:0");
    let addr = service.addr.clone();
    let cortex_key = PublicKeyBytes::from_hex(&cortex.public_key()).expect("cortex key");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (handle, stop, client) = start_stream_agent(
        &runtime,
        &dir.path().join("outbox"),
        &addr,
        cortex_key,
        agent,
    );
    let appended = Arc::new(AtomicU64::new(0));
    let producer = produce(handle.clone(), appended.clone());

    let patience = Duration::from_secs(180);
    for threshold in [25_000, 60_000] {
        let reached = wait_until(patience, || acknowledged(&handle, &appended) >= threshold);
        assert!(
            reached,
            "the cortex did not store {threshold} events in {patience:?}"
        );
        service.kill();
        let seen = acknowledged(&handle, &appended);
        assert!(
            seen < STREAM_TOTAL,
            "kill must happen mid-stream (saw {seen})"
        );
        service = cortex.serve(&addr);
    }
    producer.join().expect("producer");
    let all = wait_until(patience, || {
        acknowledged(&handle, &appended) == STREAM_TOTAL
    });
    assert!(
        all,
        "only {} events acknowledged",
        acknowledged(&handle, &appended)
    );
    let _ = stop.send(());
    runtime.block_on(client).expect("client task");
    service.kill();

    let stored = cortex.events(STREAM_HOST);
    assert!(STREAM_TOTAL as usize <= MAX_EVENTS_READ);
    assert_eq!(
        stored.len(),
        STREAM_TOTAL as usize,
        "each event stored once"
    );
    let distinct: BTreeSet<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(
        distinct,
        (1..=STREAM_TOTAL).collect::<BTreeSet<u64>>(),
        "every seq stored"
    );
    for event in &stored {
        let intact = matches!(&event.kind, EventKind::Heartbeat(h) if h.uptime_s == event.seq);
        assert!(intact, "event {} intact: {event:?}", event.seq);
        assert_eq!(event.source, Source::Beta);
    }
}
