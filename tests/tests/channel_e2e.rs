//! Agents → cortex over the real channel. A real guardian-beta sends its findings through its
//! `[cortex]` uplink to `qsc-test-cortex` (the qsc-channel receiver standing in for the cortex
//! until `cortex serve` exists; it is a separate process that is SIGKILLed and restarted
//! mid-way). The receiver must end up with every finding the agent reported, numbered
//! gap-free, each event's `seq` equal to its channel sequence number, and a `ping` command
//! must come back with the agent's version.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use qsc_event::{Event, EventKind};
use qsc_tests::channel::{CortexStub, Stored, enroll, wait_until};
use qsc_tests::workspace_bin;

const HOST: &str = "beta-e2e";
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);

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

fn stored_events(stub: &CortexStub) -> Vec<(u64, Event)> {
    stub.stored(HOST)
        .into_iter()
        .map(|s| match s {
            Stored::Event { seq, event } => (seq, *event),
            Stored::Lost { first, last } => panic!("receiver recorded a loss {first}-{last}"),
        })
        .collect()
}

/// Runs `guardian-beta watch` until it reports `finding_path` and the receiver holds
/// `expected` events; returns what the watcher wrote locally.
fn watch_until_delivered(
    config: &Path,
    stub: &CortexStub,
    finding_path: &Path,
    expected: usize,
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
    let delivered = wait_until(DELIVERY_TIMEOUT, || stored_events(stub).len() >= expected);
    let pinged = wait_until(DELIVERY_TIMEOUT, || !stub.command_results().is_empty());
    // SIGKILL: the agent's outbox must not depend on a clean exit.
    child.kill().expect("kill watch");
    let output = child.wait_with_output().expect("watch output");
    assert!(delivered, "receiver did not get {expected} events");
    assert!(pinged, "no ping result reached the receiver");
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
    enroll(d, HOST, &agent_key);
    let mut stub = CortexStub::start(d, "127.0.0.1:0", false);
    std::fs::write(d.join("cortex.pub"), format!("{}\n", stub.public_key)).expect("pin");
    let config = d.join("beta.toml");
    std::fs::write(&config, beta_config(d, &stub.addr)).expect("config");

    let init = beta(&config, &["baseline", "init"]);
    assert!(init.status.success(), "baseline init: {init:?}");

    // Run 1: the receiver is up; findings are acknowledged before the command exits.
    std::fs::write(d.join("tree/kept"), "v2").expect("modify");
    std::fs::write(d.join("tree/new-1"), "x").expect("add");
    let run1 = beta(&config, &["baseline", "check"]);
    assert_eq!(run1.status.code(), Some(1), "findings expected: {run1:?}");
    let mut local = local_events(&run1.stdout);
    assert_eq!(
        stored_events(&stub).len(),
        local.len(),
        "run 1 fully delivered"
    );

    // Run 2: the receiver is SIGKILLed; findings wait in the agent's outbox.
    stub.kill();
    std::fs::remove_file(d.join("tree/doomed")).expect("remove");
    std::fs::write(d.join("tree/new-2"), "y").expect("add");
    let run2 = beta(&config, &["baseline", "check"]);
    assert_eq!(run2.status.code(), Some(1), "findings expected: {run2:?}");
    local.extend(local_events(&run2.stdout));

    // Run 3: the receiver restarts on the same address; the watcher delivers the backlog,
    // its own finding, and answers the ping.
    let addr = stub.addr.clone();
    drop(stub);
    let stub = CortexStub::start(d, &addr, true);
    let watched = d.join("tree/new-3");
    let expected = local.len() + 1;
    local.extend(watch_until_delivered(&config, &stub, &watched, expected));

    let stored = stored_events(&stub);
    let seqs: Vec<u64> = stored.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "gap-free"
    );
    for (seq, event) in &stored {
        assert_eq!(event.seq, *seq, "Event.seq is the channel sequence number");
        assert_eq!(event.host_id, HOST);
    }
    let stored_events: Vec<Event> = stored.into_iter().map(|(_, e)| e).collect();
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
    let results = stub.command_results();
    let expected_ping = format!(
        "{HOST}\t1\tSucceeded\tguardian-beta {}",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        results.contains(&expected_ping),
        "ping result {results:?}, expected {expected_ping:?}"
    );
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
    enroll(d, ALPHA_HOST, &agent_key);
    let stub = CortexStub::start(d, "127.0.0.1:0", true);
    let config = format!(
        "{}\n[cortex]\nenabled = true\naddress = \"{}\"\ncortex_public_key = \"{}\"\n\
         key_file = \"{}/agent.key\"\noutbox_dir = \"{}/outbox\"\n",
        qsc_tests::alpha::config_watching(d),
        stub.addr,
        stub.public_key,
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
        stub.stored(ALPHA_HOST).iter().any(|s| match s {
            Stored::Event { event, .. } => is_our_exec(event),
            Stored::Lost { .. } => false,
        })
    });
    assert!(arrived, "the exec event did not reach the receiver");
    let pinged = wait_until(DELIVERY_TIMEOUT, || !stub.command_results().is_empty());
    agent.stop();

    let stored = stub.stored(ALPHA_HOST);
    for (index, entry) in stored.iter().enumerate() {
        let Stored::Event { seq, event } = entry else {
            panic!("unexpected loss {entry:?}");
        };
        assert_eq!(*seq, index as u64 + 1, "gap-free");
        assert_eq!(event.seq, *seq, "Event.seq is the channel sequence number");
        if is_our_exec(event) {
            assert_eq!(
                event.seq, local.seq,
                "local copy and cortex agree on the seq"
            );
        }
    }
    assert!(pinged, "no ping result");
    let expected_ping = format!(
        "{ALPHA_HOST}\t1\tSucceeded\tguardian-alpha {}",
        env!("CARGO_PKG_VERSION")
    );
    assert!(stub.command_results().contains(&expected_ping));
}
