//! The docker compose stack end to end on the real container engine: `docker-compose.yml` comes
//! up from the images `cargo xtask images` built, with the `demo` profile; a real suspicious
//! action on this host becomes an incident in the cortex API and reaches the demo webhook
//! receiver as a signed alert it verified (while a forged one is refused); the cortex container
//! is stopped and started again while the agents keep working and no event is lost; and `down`
//! leaves no container, network or volume of the stack behind.
//!
//! The `scale` profile: NATS, PostgreSQL and three cortex replicas (all, gateway, worker) come
//! up healthy, every agent event is stored once, the incident is visible through the API of
//! every replica, and an approved action travels from the respond stage holding it, over NATS,
//! to the gateway holding guardian-alpha's session, and the agent's report comes back.
//!
//! Ignored by plain `cargo test` (they need the images); `cargo xtask test` builds them and runs
//! the demo test as root once with each Compose flavour, the scale test with Compose v2. By
//! hand: `cargo xtask images --local-base`, then
//! `cargo test -p qsc-tests --test compose -- --ignored --nocapture --test-threads 1`.
//! `QSC_COMPOSE` picks the Compose tool ("docker-compose" or "docker compose"), `QSC_TAG` the
//! image tag.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use qsc_tests::{channel::wait_until, root_or_skip};
use serde_json::Value;

/// The host id the stack's agents report.
const HOST_ID: &str = "qsc-compose-e2e";
/// How long a stage may take before the test fails: generous, because a shared 2-core machine
/// can stall containers for many seconds (a slow pass costs nothing, a spurious failure does).
const PATIENCE: Duration = Duration::from_secs(180);
/// Where the cortex container keeps its config.
const CORTEX_CONFIG: &str = "/var/lib/qsc/cortex.toml";

#[test]
#[ignore = "needs the QSC images: run by `cargo xtask test` (see the file's doc)"]
fn compose_stack_detects_survives_a_cortex_restart_and_leaves_nothing_behind() {
    if !root_or_skip("compose_stack_detects_survives_a_cortex_restart_and_leaves_nothing_behind") {
        return;
    }
    let started = Instant::now();
    let work = drop_folder("qsc-compose-e2e-");
    let mut stack = Stack::up("demo");
    let incident = suspicious_action_becomes_an_incident(&stack, work.path());
    eprintln!(
        "incident: {} {} confidence {}",
        incident["severity"], incident["title"], incident["confidence"]
    );
    the_receiver_verified_an_alert_of(&stack, &incident);
    the_receiver_refuses_forged_alerts(&stack);
    cortex_restart_loses_no_event(&stack, work.path());
    stack.down_and_check_nothing_is_left();
    eprintln!("compose end-to-end test took {:.0?}", started.elapsed());
}

#[test]
#[ignore = "needs the QSC images: run by `cargo xtask test` (see the file's doc)"]
fn compose_scale_profile_runs_replicas_that_share_events_incidents_and_commands() {
    if !root_or_skip("compose_scale_profile_runs_replicas_that_share_events_incidents_and_commands")
    {
        return;
    }
    let started = Instant::now();
    let work = drop_folder("qsc-compose-scale-");
    let mut stack = Stack::up("scale");
    every_service_runs_and_every_replica_answers(&stack);
    let incident = suspicious_action_becomes_an_incident(&stack, work.path());
    every_replica_shows(&stack, &incident);
    tamper_demo_file(&stack, "listen = 3333");
    let seqs = wait_for_seqs(&stack, |seqs| {
        seqs.get("alpha").is_some_and(|s| !s.is_empty())
            && seqs.get("beta").is_some_and(|s| !s.is_empty())
    });
    assert_gap_free(&seqs);
    an_approved_action_reaches_the_agent(&stack, &incident);
    stack.down_and_check_nothing_is_left();
    eprintln!("compose scale test took {:.0?}", started.elapsed());
}

/// NATS, PostgreSQL, the three cortex replicas and both agents are running (the replicas
/// restart until NATS and PostgreSQL answer), and the API of each replica answers.
fn every_service_runs_and_every_replica_answers(stack: &Stack) {
    let wanted = [
        "nats",
        "postgres",
        "cortex",
        "cortex-gateway",
        "cortex-worker",
        "guardian-alpha",
        "guardian-beta",
    ];
    let mut running = String::new();
    let all_up = wait_until(PATIENCE, || {
        running = stack.compose(&["ps", "--services", "--filter", "status=running"]);
        wanted
            .iter()
            .all(|service| running.lines().any(|l| l.trim() == *service))
    });
    assert!(
        all_up,
        "not every service runs: {running}\nlogs:\n{}",
        stack.logs()
    );
    for api in stack.replica_apis() {
        let ok = wait_until(PATIENCE, || {
            http_get(&api, "/health", None).is_some_and(|(status, _)| status == 200)
        });
        assert!(
            ok,
            "the replica API {api} never answered\nlogs:\n{}",
            stack.logs()
        );
    }
}

/// Each replica's API serves the incident (they read the shared PostgreSQL store).
fn every_replica_shows(stack: &Stack, incident: &Value) {
    let id = incident["id"].as_str().expect("the incident has an id");
    for api in stack.replica_apis() {
        let (status, body) = http_get(&api, &format!("/api/incidents/{id}"), Some(&stack.token))
            .unwrap_or_else(|| panic!("{api}: no answer"));
        assert_eq!(status, 200, "{api}: GET incident {id}: {body}");
        let seen: Value = serde_json::from_str(&body).expect("an incident as JSON");
        assert_eq!(seen["incident"]["id"], incident["id"], "{api}");
    }
}

/// A held agent action of the incident is approved through the replica whose respond stage
/// holds it; the command goes over NATS to the gateway holding guardian-alpha's session, and
/// the agent's report comes back to the action record.
fn an_approved_action_reaches_the_agent(stack: &Stack, incident: &Value) {
    let mut held = Value::Null;
    let found = wait_until(PATIENCE, || {
        let actions = stack.get(&format!("/api/actions?host={HOST_ID}&status=held"));
        held = actions
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["incident_id"] == incident["id"] && !a["action"].is_null())
            .cloned()
            .unwrap_or(Value::Null);
        !held.is_null()
    });
    assert!(
        found,
        "no held agent action for incident {}: {:#}",
        incident["id"],
        stack.get(&format!("/api/actions?host={HOST_ID}"))
    );
    let id = held["id"].as_str().expect("the action has an id");
    // Held actions live with the replica whose respond stage created them (a known limit):
    // the others answer that they hold no such action.
    let body = r#"{"operator":"compose-test","reason":"scale profile check"}"#;
    let bearer = format!("Bearer {}", stack.token);
    let approved = stack.replica_apis().iter().any(|api| {
        http_post(
            api,
            &format!("/api/actions/{id}/approve"),
            &[("Authorization", &bearer)],
            body,
        ) == Some(200)
    });
    assert!(approved, "no replica took the approval of action {id}");
    let mut record = Value::Null;
    let reported = wait_until(PATIENCE, || {
        record = stack.get(&format!("/api/actions/{id}"));
        record["report"].is_object()
    });
    assert!(
        reported,
        "action {id} got no report from the agent: {record:#}\nlogs:\n{}",
        stack.logs()
    );
    eprintln!(
        "action {id} ({}) reached the agent: {} {}",
        record["name"], record["status"], record["detail"]
    );
}

/// A new folder under /tmp that every user may write to (mode 1777, as /tmp's own), where
/// the test drops the programs it runs.
fn drop_folder(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("temp dir under /tmp");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod 1777 the drop folder");
    dir
}

/// A binary of this host copied under `dir` as `name` (executable), so the test runs a
/// program of its own making from a world-writable folder.
fn copy_program(from: &str, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(from, &to).expect("copy a program");
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    to
}

/// `nc` (a copy of cat) started from /tmp reads /etc/shadow: three rules of the shipped set
/// (shadow read, network tool, execution from a world-writable folder) fire together.
fn suspicious_action_becomes_an_incident(stack: &Stack, work: &Path) -> Value {
    let nc = copy_program("/bin/cat", work, "nc");
    let status = Command::new(&nc)
        .arg("/etc/shadow")
        .stdout(Stdio::null())
        .status()
        .expect("run the copied cat");
    assert!(status.success(), "{} /etc/shadow failed", nc.display());
    // The three rules' evidence may reach the cortex in separate batches: wait for all of it.
    let rules = [
        "qsc-shadow-read",
        "qsc-network-tool-exec",
        "qsc-exec-from-world-writable",
    ];
    let mut found = None;
    let seen = wait_until(PATIENCE, || {
        let incidents = stack.get(&format!("/api/incidents?host={HOST_ID}"));
        found = incidents
            .as_array()
            .into_iter()
            .flatten()
            .find(|incident| {
                let seen = evidence_rules(incident);
                rules.iter().all(|rule| seen.iter().any(|r| r == rule))
            })
            .cloned();
        found.is_some()
    });
    assert!(
        seen,
        "no incident with evidence of {rules:?} for {HOST_ID}; incidents: {:#}\nlogs:\n{}",
        stack.get(&format!("/api/incidents?host={HOST_ID}")),
        stack.logs()
    );
    found.unwrap_or_default()
}

/// The demo receiver recorded (so verified, with the secret init generated) a native incident
/// alert of this incident.
fn the_receiver_verified_an_alert_of(stack: &Stack, incident: &Value) {
    let id = incident["id"].as_str().expect("the incident has an id");
    let mut accepted = Vec::new();
    let seen = wait_until(PATIENCE, || {
        accepted = stack.accepted_alerts();
        accepted.iter().any(|record| {
            record["verified"] == true
                && record["body"]["type"] == "qsc.incident"
                && record["body"]["data"]["incident_id"] == id
        })
    });
    assert!(
        seen,
        "the demo receiver accepted no alert of incident {id}; it accepted: {accepted:#?}\nlogs:\n{}",
        stack.logs()
    );
    eprintln!(
        "the demo receiver verified {} alert(s), one of incident {id}",
        accepted.len()
    );
}

/// A message without the signature headers is refused (400), and so is one signed with a
/// different secret (401); neither is recorded (genuine alerts may be, meanwhile: the check
/// looks for the forged body, not at the count).
fn the_receiver_refuses_forged_alerts(stack: &Stack) {
    let body = r#"{"type":"qsc.incident","timestamp":"2026-01-01T00:00:00Z","data":{}}"#;
    let unsigned = http_post(&stack.webhook, "/qsc", &[], body);
    assert_eq!(unsigned, Some(400), "an unsigned message");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
        .to_string();
    let forged = http_post(
        &stack.webhook,
        "/qsc",
        &[
            ("webhook-id", "msg_forged"),
            ("webhook-timestamp", &now),
            // The Standard Webhooks reference example's signature: valid, for another secret.
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ],
        body,
    );
    assert_eq!(forged, Some(401), "a message signed with another secret");
    let forged_body: Value = serde_json::from_str(body).expect("the forged body is JSON");
    let recorded: Vec<Value> = stack
        .accepted_alerts()
        .into_iter()
        .filter(|record| record["webhook_id"] == "msg_forged" || record["body"] == forged_body)
        .collect();
    assert!(
        recorded.is_empty(),
        "a refused message was recorded: {recorded:#?}"
    );
}

fn evidence_rules(incident: &Value) -> Vec<String> {
    incident["evidence"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["rule_id"].as_str().map(str::to_owned))
        .collect()
}

/// The cortex container is stopped; meanwhile guardian-alpha sees a marker program run and
/// guardian-beta heals a tampered file, both spooling what they saw. After the cortex starts
/// again every agent's stored sequence numbers are still gap-free, the old ones are all there,
/// and the events from the outage arrived.
fn cortex_restart_loses_no_event(stack: &Stack, work: &Path) {
    tamper_demo_file(stack, "listen = 1111");
    let before = wait_for_seqs(stack, |seqs| {
        seqs.get("alpha").is_some_and(|s| !s.is_empty())
            && seqs.get("beta").is_some_and(|s| !s.is_empty())
    });
    assert_gap_free(&before);

    stack.compose(&["stop", "cortex"]);
    let marker_name = format!("qsc-outage-marker-{}", std::process::id());
    let marker = copy_program("/bin/true", work, &marker_name);
    let status = Command::new(&marker).status().expect("run the marker");
    assert!(status.success());
    tamper_demo_file(stack, "listen = 2222");
    std::thread::sleep(Duration::from_secs(3));
    stack.compose(&["start", "cortex"]);
    stack.wait_for_api();

    let mut marker_stored = false;
    let after = wait_for_seqs(stack, |seqs| {
        marker_stored = marker_stored || stack.stored_events_mention(&marker_name);
        let grew = ["alpha", "beta"].iter().all(|source| {
            seqs.get(*source).and_then(|s| s.last()) > before.get(*source).and_then(|s| s.last())
        });
        if !(marker_stored && grew) {
            eprintln!("waiting: marker stored {marker_stored}, every agent's seqs grew {grew}");
        }
        marker_stored && grew
    });
    assert_gap_free(&after);
    for (source, old) in &before {
        let new = after.get(source).map(Vec::as_slice).unwrap_or_default();
        assert!(
            old.iter().all(|seq| new.binary_search(seq).is_ok()),
            "{source}: events stored before the restart are gone"
        );
        eprintln!(
            "{source}: {} events before the cortex restart, {} after (seq {}..={})",
            old.len(),
            new.len(),
            new.first().unwrap_or(&0),
            new.last().unwrap_or(&0)
        );
    }
}

/// Appends a line to the demo config guardian-beta heals (from inside its container, where the
/// tree is mounted read-write).
fn tamper_demo_file(stack: &Stack, line: &str) {
    stack.compose(&[
        "exec",
        "-T",
        "guardian-beta",
        "sh",
        "-c",
        &format!("echo '{line}' >> /srv/qsc-demo/app.conf"),
    ]);
}

type Seqs = BTreeMap<String, Vec<u64>>;

fn wait_for_seqs(stack: &Stack, mut ready: impl FnMut(&Seqs) -> bool) -> Seqs {
    let mut seqs = Seqs::new();
    let ok = wait_until(PATIENCE, || {
        seqs = stack.stored_seqs();
        ready(&seqs)
    });
    assert!(
        ok,
        "the stored events never reached the expected state: {:?}\nlogs:\n{}",
        seqs.iter()
            .map(|(s, v)| (s, v.len(), v.last()))
            .collect::<Vec<_>>(),
        stack.logs()
    );
    seqs
}

/// Each agent's stored seqs start at 0 or 1 and have neither gaps nor duplicates.
fn assert_gap_free(seqs: &Seqs) {
    for (source, list) in seqs {
        let first = list.first().copied().unwrap_or(1);
        assert!(first <= 1, "{source}: the first stored seq is {first}");
        for pair in list.windows(2) {
            assert_eq!(
                pair[1],
                pair[0] + 1,
                "{source}: gap or duplicate after seq {}",
                pair[0]
            );
        }
    }
}

/// One compose project of the stack with the given profiles, on free loopback ports; taken
/// down on drop.
struct Stack {
    project: String,
    /// `COMPOSE_PROFILES` (the environment variable rather than --profile: init reads it too).
    profiles: &'static str,
    channel: String,
    /// The cortex API; with the scale profile the gateway's and the worker's follow it.
    api_port: u16,
    webhook: String,
    /// Profile scale: the second gateway's channel, NATS and PostgreSQL.
    gateway: String,
    nats_port: u16,
    pg_port: u16,
    token: String,
    down: bool,
}

impl Stack {
    fn up(profiles: &'static str) -> Self {
        let mut stack = Stack {
            project: format!("qsc-e2e-{profiles}-{}", std::process::id()),
            profiles,
            channel: format!("127.0.0.1:{}", free_port()),
            api_port: free_ports(3),
            webhook: format!("127.0.0.1:{}", free_port()),
            gateway: format!("127.0.0.1:{}", free_port()),
            nats_port: free_port(),
            pg_port: free_port(),
            token: String::new(),
            down: false,
        };
        stack.compose(&["up", "-d"]);
        stack.wait_for_api();
        stack.token = stack
            .compose(&["exec", "-T", "cortex", "cat", "/var/lib/qsc/api.token"])
            .trim()
            .to_owned();
        // guardian-alpha attaches its kernel programs after the cortex answers: what a test
        // does before its first event (the heartbeat sent once attached) is stored goes unseen.
        wait_for_seqs(&stack, |seqs| {
            seqs.get("alpha").is_some_and(|s| !s.is_empty())
        });
        stack
    }

    fn compose_command(&self) -> Command {
        let tool = std::env::var("QSC_COMPOSE").unwrap_or_else(|_| {
            let v1 = Command::new("docker-compose")
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if v1 {
                "docker-compose"
            } else {
                "docker compose"
            }
            .to_owned()
        });
        let mut words = tool.split_whitespace();
        let mut cmd = Command::new(words.next().unwrap_or("docker-compose"));
        cmd.args(words)
            .arg("--project-name")
            .arg(&self.project)
            .arg("--file")
            .arg(repo_root().join("docker-compose.yml"))
            .env("QSC_HOST_ID", HOST_ID)
            .env("QSC_CHANNEL_LISTEN", &self.channel)
            .env("QSC_API_LISTEN", self.api())
            .env("QSC_WEBHOOK_PORT", port_of(&self.webhook))
            .env("QSC_GATEWAY_LISTEN", &self.gateway)
            .env("QSC_NATS_PORT", self.nats_port.to_string())
            .env("QSC_PG_PORT", self.pg_port.to_string())
            .env("COMPOSE_PROFILES", self.profiles)
            .env("DOCKER_BUILDKIT", "0");
        cmd
    }

    /// Runs a compose command and returns its stdout; panics with its stderr on failure.
    fn compose(&self, args: &[&str]) -> String {
        let mut cmd = self.compose_command();
        cmd.args(args);
        let out = cmd.output().expect("run the Compose tool");
        assert!(
            out.status.success(),
            "compose {args:?} failed: {}\nlogs:\n{}",
            String::from_utf8_lossy(&out.stderr),
            if args.first() == Some(&"logs") {
                String::new()
            } else {
                self.logs()
            }
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn logs(&self) -> String {
        let mut cmd = self.compose_command();
        cmd.args(["logs", "--no-color", "--tail", "40"]);
        cmd.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The API of the `cortex` service.
    fn api(&self) -> String {
        format!("127.0.0.1:{}", self.api_port)
    }

    /// The APIs of the three replicas of the scale profile (cortex, cortex-gateway,
    /// cortex-worker).
    fn replica_apis(&self) -> [String; 3] {
        [0, 1, 2].map(|offset| format!("127.0.0.1:{}", self.api_port + offset))
    }

    fn wait_for_api(&self) {
        let ok = wait_until(PATIENCE, || {
            http_get(&self.api(), "/health", None).is_some_and(|(status, _)| status == 200)
        });
        assert!(ok, "the cortex API never answered\nlogs:\n{}", self.logs());
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = http_get(&self.api(), path, Some(&self.token))
            .unwrap_or_else(|| panic!("GET {path}: no answer from the cortex"));
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// Every stored event of the test host, read with the cortex CLI inside its container.
    fn stored_events(&self) -> String {
        self.compose(&[
            "exec",
            "-T",
            "cortex",
            "cortex",
            "--config",
            CORTEX_CONFIG,
            "events",
            "search",
            "--host",
            HOST_ID,
            "--limit",
            "100000",
        ])
    }

    /// What the demo receiver recorded as verified, one JSON value per accepted message.
    fn accepted_alerts(&self) -> Vec<Value> {
        let text = self.compose(&[
            "exec",
            "-T",
            "webhook-demo",
            "sh",
            "-c",
            "cat /var/lib/qsc-webhook/accepted.jsonl 2>/dev/null || true",
        ]);
        text.lines()
            .map(|line| serde_json::from_str(line).expect("a JSON record per line"))
            .collect()
    }

    fn stored_events_mention(&self, needle: &str) -> bool {
        self.stored_events().contains(needle)
    }

    /// Stored seqs per agent (alpha, beta), sorted.
    fn stored_seqs(&self) -> Seqs {
        let text = self.stored_events();
        let mut seqs = Seqs::new();
        let mut lines = 0;
        for line in text.lines() {
            lines += 1;
            let event: Value = serde_json::from_str(line).expect("an event per line");
            let source = event["source"].as_str().unwrap_or_default();
            if source == "alpha" || source == "beta" {
                let seq = event["seq"].as_u64().expect("seq");
                seqs.entry(source.to_owned()).or_default().push(seq);
            }
        }
        assert!(
            lines < 100_000,
            "too many events to account for in one query"
        );
        for list in seqs.values_mut() {
            list.sort_unstable();
        }
        seqs
    }

    fn down_and_check_nothing_is_left(&mut self) {
        self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "30"]);
        self.down = true;
        let label = format!("label=com.docker.compose.project={}", self.project);
        for what in [
            &["ps", "--all", "--quiet", "--filter"][..],
            &["volume", "ls", "--quiet", "--filter"][..],
            &["network", "ls", "--quiet", "--filter"][..],
        ] {
            let out = Command::new("docker")
                .args(what)
                .arg(&label)
                .output()
                .expect("run docker");
            assert!(out.status.success(), "docker {what:?} failed");
            let left = String::from_utf8_lossy(&out.stdout);
            assert!(left.trim().is_empty(), "left behind ({what:?}): {left}");
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.down {
            let mut cmd = self.compose_command();
            cmd.args(["down", "--volumes", "--remove-orphans", "--timeout", "30"]);
            if let Err(e) = cmd.status() {
                eprintln!("cannot take the stack {} down: {e}", self.project);
            }
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').map(|(_, port)| port).unwrap_or(addr)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The first of `count` consecutive free loopback ports.
fn free_ports(count: u16) -> u16 {
    loop {
        let first = free_port();
        let rest_free = (1..count).all(|offset| {
            first
                .checked_add(offset)
                .is_some_and(|port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        });
        if rest_free {
            return first;
        }
    }
}

/// A plain HTTP/1.0 GET (so the answer is never chunked); `None` when nothing answers.
fn http_get(addr: &str, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    http(
        addr,
        &format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n"),
    )
}

/// A plain HTTP/1.0 POST of a JSON body with extra headers; the status, or `None` when nothing
/// answers.
fn http_post(addr: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Option<u16> {
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    );
    http(addr, &request).map(|(status, _)| status)
}

/// Sends one request and reads the whole answer: its status and body.
fn http(addr: &str, request: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}
