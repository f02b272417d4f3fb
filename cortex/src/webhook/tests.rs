//! End-to-end delivery tests against a local HTTP receiver on 127.0.0.1 that this test runs.
//! The receiver checks signatures with its own HMAC-SHA256 (RFC 2104 over `sha2`), not with
//! the code under test.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};

use super::payload::tests::incident;
use super::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WAIT: Duration = Duration::from_secs(20);

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Received {
    headers: HashMap<String, String>,
    body: Vec<u8>,
    at: Instant,
}

/// A scripted answer: status and extra headers.
#[derive(Clone, Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
}

fn reply(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
    }
}

#[derive(Default)]
struct Shared {
    script: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<Received>>,
    connections: AtomicUsize,
    /// While set, the receiver holds its answer (the sender stays busy in its attempt).
    hold: AtomicBool,
    stop: AtomicBool,
}

/// A minimal HTTP/1.1 receiver: answers from its script, then 200.
struct TestReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl TestReceiver {
    fn start(script: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        shared.script.lock().unwrap().extend(script);
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::spawn(move || serve(&listener, &thread_shared));
        Self {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        self.shared.hold.store(false, Ordering::SeqCst);
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: &TcpListener, shared: &Shared) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let _ = handle(stream, shared);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => return,
        }
    }
}

fn handle(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut headers = HashMap::new();
    let mut line = String::new();
    reader.read_line(&mut line)?;
    assert!(line.starts_with("POST "), "request line {line:?}");
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    shared.received.lock().unwrap().push(Received {
        headers,
        body,
        at: Instant::now(),
    });
    while shared.hold.load(Ordering::SeqCst) && !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let answer = shared
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(reply(200));
    let mut out = format!("HTTP/1.1 {} Scripted\r\n", answer.status);
    for (name, value) in &answer.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("content-length: 0\r\nconnection: close\r\n\r\n");
    let mut stream = stream;
    stream.write_all(out.as_bytes())
}

/// HMAC-SHA256 written out from RFC 2104, independent of the `hmac` crate.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(Sha256::digest(key).as_slice());
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner.as_slice())
        .finalize()
        .to_vec()
}

/// Checks a received request's Standard Webhooks signature from first principles.
fn assert_signed(request: &Received, secret: &str) {
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let id = &request.headers["webhook-id"];
    let timestamp = &request.headers["webhook-timestamp"];
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(&request.body);
    let expected = format!("v1,{}", BASE64.encode(hmac_sha256(&key, &signed)));
    assert_eq!(request.headers["webhook-signature"], expected);
    assert_eq!(request.headers["content-type"], "application/json");
    let ts: i64 = timestamp.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - ts).abs() < 60, "timestamp {ts} vs now {now}");
}

fn destination(name: &str, url: &str, format: BodyFormat) -> DestinationConfig {
    DestinationConfig {
        name: name.into(),
        url: url.into(),
        secret: SECRET.into(),
        format,
        addresses: Vec::new(),
        bearer_token: None,
    }
}

fn config(dir: &Path, destinations: Vec<DestinationConfig>) -> ValidConfig {
    WebhookConfig {
        destinations,
        queue_path: dir.join("webhook.sqlite"),
        allow_plain_http: true,
        connect_timeout_ms: 2_000,
        request_timeout_ms: 10_000,
        max_attempts: 5,
        backoff_base_ms: 10,
        backoff_cap_ms: 40,
        ..WebhookConfig::default()
    }
    .validate()
    .unwrap()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn alert() -> Alert {
    Alert::Incident(Box::new(incident()))
}

#[test]
fn two_failures_then_success_is_one_delivery_with_two_retries() {
    let receiver = TestReceiver::start(vec![reply(500), reply(500)]);
    let dir = tempfile::tempdir().unwrap();
    let sender = WebhookSender::start(&config(
        dir.path(),
        vec![destination(
            "soar",
            &receiver.url("/hook"),
            BodyFormat::Native,
        )],
    ))
    .unwrap();
    let ids = sender.enqueue(&alert()).unwrap();
    assert_eq!(ids.len(), 1);
    wait_for("delivery", || sender.counters().snapshot().sent == 1);
    let got = receiver.received();
    assert_eq!(got.len(), 3);
    for request in &got {
        assert_eq!(request.headers["webhook-id"], ids[0]);
        assert_eq!(request.body, got[0].body);
        assert_signed(request, SECRET);
    }
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["type"], "qsc.incident");
    assert_eq!(body["data"]["incident_id"], "inc-42");
    let counters = sender.counters().snapshot();
    assert_eq!(
        (counters.attempts, counters.retried, counters.dead_lettered),
        (3, 2, 0)
    );
    assert_eq!(sender.pending().unwrap(), 0);
}

#[test]
fn retry_after_is_honoured() {
    let throttled = Reply {
        status: 503,
        headers: vec![("Retry-After".into(), "1".into())],
    };
    let receiver = TestReceiver::start(vec![throttled]);
    let dir = tempfile::tempdir().unwrap();
    let sender = WebhookSender::start(&config(
        dir.path(),
        vec![destination("soar", &receiver.url("/"), BodyFormat::Native)],
    ))
    .unwrap();
    sender.enqueue(&alert()).unwrap();
    wait_for("delivery", || sender.counters().snapshot().sent == 1);
    let got = receiver.received();
    assert_eq!(got.len(), 2);
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    assert_eq!(got[0].headers["webhook-id"], got[1].headers["webhook-id"]);
}

#[test]
fn max_attempts_dead_letter_is_persisted_and_can_be_retried() {
    let receiver = TestReceiver::start(vec![reply(500); 5]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        vec![destination("soar", &receiver.url("/"), BodyFormat::Native)],
    );
    let sender = WebhookSender::start(&cfg).unwrap();
    let ids = sender.enqueue(&alert()).unwrap();
    wait_for("dead letter", || {
        sender.counters().snapshot().dead_lettered == 1
    });
    assert_eq!(receiver.received().len(), 5);
    assert_eq!(sender.counters().snapshot().retried, 4);
    sender.shutdown();

    let reopened = DeliveryQueue::open(&cfg.queue_path).unwrap();
    let dead = reopened.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].delivery.id, ids[0]);
    assert_eq!(dead[0].delivery.attempts, 5);
    let reason = dead[0].delivery.last_error.as_deref().unwrap();
    assert!(
        reason.contains("5 attempts") && reason.contains("HTTP 500"),
        "{reason}"
    );

    // After a restart the dead letter is listed, and a retry delivers it under the same id.
    let restarted = WebhookSender::start(&cfg).unwrap();
    assert_eq!(restarted.dead_letters().unwrap().len(), 1);
    assert!(restarted.retry_dead_letter(&ids[0]).unwrap());
    wait_for("redelivery", || restarted.counters().snapshot().sent == 1);
    let got = receiver.received();
    assert_eq!(got.len(), 6);
    assert_eq!(got[5].headers["webhook-id"], ids[0]);
    assert!(restarted.dead_letters().unwrap().is_empty());
}

#[test]
fn pending_deliveries_survive_a_restart() {
    let throttled = Reply {
        status: 429,
        headers: vec![("Retry-After".into(), "1".into())],
    };
    let receiver = TestReceiver::start(vec![throttled]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        vec![destination("soar", &receiver.url("/"), BodyFormat::Native)],
    );
    let sender = WebhookSender::start(&cfg).unwrap();
    let ids = sender.enqueue(&alert()).unwrap();
    wait_for("the throttled attempt", || {
        sender.counters().snapshot().retried == 1
    });
    sender.shutdown();
    assert_eq!(
        DeliveryQueue::open(&cfg.queue_path)
            .unwrap()
            .pending_count()
            .unwrap(),
        1
    );

    let restarted = WebhookSender::start(&cfg).unwrap();
    wait_for("delivery after restart", || {
        restarted.counters().snapshot().sent == 1
    });
    let got = receiver.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].headers["webhook-id"], ids[0]);
    assert_signed(&got[1], SECRET);
}

#[test]
fn a_destination_outside_the_allow_list_is_never_contacted() {
    let outsider = TestReceiver::start(Vec::new());
    let allowed = TestReceiver::start(Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        vec![destination("soar", &allowed.url("/"), BodyFormat::Native)],
    );
    // A message left in the queue by an earlier configuration that named the outsider.
    let queue = DeliveryQueue::open(&cfg.queue_path).unwrap();
    for (id, name) in [("msg_old_url", "soar"), ("msg_old_name", "gone")] {
        queue
            .insert(&Delivery {
                id: id.into(),
                destination: name.into(),
                url: outsider.url("/"),
                body: b"{}".to_vec(),
                created_ms: super::worker::tests_support::now_ms(),
                attempts: 0,
                next_attempt_ms: 0,
                last_error: None,
            })
            .unwrap();
    }
    let sender = WebhookSender::start(&cfg).unwrap();
    wait_for("refusals", || sender.counters().snapshot().refused == 2);
    assert_eq!(outsider.connections(), 0);
    assert_eq!(allowed.connections(), 0);
    let counters = sender.counters().snapshot();
    assert_eq!((counters.attempts, counters.dead_lettered), (0, 2));
    let dead = sender.dead_letters().unwrap();
    assert!(dead.iter().all(|d| {
        d.delivery
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("refused"))
    }));
}

#[test]
fn a_name_resolving_to_an_unlisted_address_is_never_contacted() {
    let receiver = TestReceiver::start(Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://localhost:{}/", receiver.addr.port());
    let sender = WebhookSender::start(&config(
        dir.path(),
        vec![destination("local-name", &url, BodyFormat::Native)],
    ))
    .unwrap();
    sender.enqueue(&alert()).unwrap();
    wait_for("refusal", || sender.counters().snapshot().refused == 1);
    assert_eq!(receiver.connections(), 0);
    let reason = sender.dead_letters().unwrap()[0]
        .delivery
        .last_error
        .clone();
    assert!(reason.unwrap().contains("outside its allow-list"));
}

#[test]
fn redirects_are_not_followed() {
    let target = TestReceiver::start(Vec::new());
    let redirecting = TestReceiver::start(vec![Reply {
        status: 307,
        headers: vec![("Location".into(), target.url("/"))],
    }]);
    let dir = tempfile::tempdir().unwrap();
    let sender = WebhookSender::start(&config(
        dir.path(),
        vec![
            destination("a", &redirecting.url("/"), BodyFormat::Native),
            destination(
                "b",
                &format!("{}/other", target.url("")),
                BodyFormat::Native,
            ),
        ],
    ))
    .unwrap();
    // Only destination "a" is sent to: hand-craft its message rather than fan out.
    let queue = DeliveryQueue::open(&dir.path().join("webhook.sqlite")).unwrap();
    queue
        .insert(&Delivery {
            id: "msg_redirect".into(),
            destination: "a".into(),
            url: redirecting.url("/"),
            body: b"{}".to_vec(),
            created_ms: super::worker::tests_support::now_ms(),
            attempts: 0,
            next_attempt_ms: 0,
            last_error: None,
        })
        .unwrap();
    assert!(!sender.retry_dead_letter("msg_unknown").unwrap());
    // Enqueuing wakes the worker, which then finds the hand-crafted message too.
    sender.enqueue(&alert()).unwrap();
    wait_for("dead letter", || {
        sender.counters().snapshot().dead_lettered == 1
    });
    let dead = sender.dead_letters().unwrap();
    assert_eq!(dead[0].delivery.id, "msg_redirect");
    assert!(
        dead[0]
            .delivery
            .last_error
            .as_deref()
            .unwrap()
            .contains("not followed")
    );
    wait_for("fan-out", || sender.counters().snapshot().sent == 2);
    // The target saw only its own fan-out message, never the redirected one.
    let got = target.received();
    assert_eq!(got.len(), 1);
    assert_ne!(got[0].headers["webhook-id"], "msg_redirect");
}

#[test]
fn thehive_destination_receives_a_thehive_alert() {
    let receiver = TestReceiver::start(Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let mut hive = destination("hive", &receiver.url("/api/v1/alert"), BodyFormat::Thehive);
    hive.bearer_token = Some("hive-api-key".into());
    let sender = WebhookSender::start(&config(dir.path(), vec![hive])).unwrap();
    sender.enqueue(&alert()).unwrap();
    wait_for("delivery", || sender.counters().snapshot().sent == 1);
    let got = receiver.received();
    assert_signed(&got[0], SECRET);
    assert_eq!(got[0].headers["authorization"], "Bearer hive-api-key");
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    for key in [
        "title",
        "description",
        "type",
        "source",
        "sourceRef",
        "tags",
        "observables",
    ] {
        assert!(!body[key].is_null(), "missing {key} in {body}");
    }
    let severity = body["severity"].as_u64().unwrap();
    assert!((1..=4).contains(&severity));
}

/// A receiver that holds every attempt, and a sender to it (its config adjusted by `adjust`)
/// whose worker is already inside the attempt of a first alert: nothing drains the queue until
/// the test releases the receiver.
fn sender_held_in_its_first_attempt(
    dir: &Path,
    adjust: impl FnOnce(&mut ValidConfig),
) -> (TestReceiver, WebhookSender) {
    let receiver = TestReceiver::start(Vec::new());
    receiver.shared.hold.store(true, Ordering::SeqCst);
    let mut cfg = config(
        dir,
        vec![destination("soar", &receiver.url("/"), BodyFormat::Native)],
    );
    adjust(&mut cfg);
    let sender = WebhookSender::start(&cfg).unwrap();
    sender.enqueue(&alert()).unwrap();
    wait_for("the held attempt", || receiver.received().len() == 1);
    (receiver, sender)
}

#[test]
fn a_full_queue_drops_and_counts_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let (receiver, sender) =
        sender_held_in_its_first_attempt(dir.path(), |cfg| cfg.settings.queue_bound = 1);
    sender.enqueue(&alert()).unwrap();
    for _ in 0..2 {
        let err = sender.enqueue(&alert()).unwrap_err();
        assert!(
            matches!(
                err,
                EnqueueError::Overflow {
                    dropped: 1,
                    total: 1,
                    ..
                }
            ),
            "{err}"
        );
    }
    assert_eq!(sender.counters().snapshot().overflow, 2);
    receiver.shared.hold.store(false, Ordering::SeqCst);
    wait_for("both deliveries", || sender.counters().snapshot().sent == 2);
    assert_eq!(sender.counters().snapshot().enqueued, 2);
}

#[test]
fn the_queue_file_bound_drops_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (receiver, sender) =
        sender_held_in_its_first_attempt(dir.path(), |cfg| cfg.settings.max_pending = 1);
    // Both fit the channel; once the held one is done, only one fits the file.
    sender.enqueue(&alert()).unwrap();
    sender.enqueue(&alert()).unwrap();
    receiver.shared.hold.store(false, Ordering::SeqCst);
    wait_for("the second delivery", || {
        sender.counters().snapshot().sent == 2
    });
    assert_eq!(sender.counters().snapshot().overflow, 1);
    assert_eq!(sender.pending().unwrap(), 0);
    assert_eq!(receiver.received().len(), 2);
}

#[test]
fn a_message_past_max_age_is_dead_lettered_without_contact() {
    let receiver = TestReceiver::start(Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(
        dir.path(),
        vec![destination("soar", &receiver.url("/"), BodyFormat::Native)],
    );
    cfg.settings.max_age = Duration::from_secs(60);
    DeliveryQueue::open(&cfg.queue_path)
        .unwrap()
        .insert(&Delivery {
            id: "msg_stale".into(),
            destination: "soar".into(),
            url: receiver.url("/"),
            body: b"{}".to_vec(),
            created_ms: super::worker::tests_support::now_ms() - 61_000,
            attempts: 2,
            next_attempt_ms: 0,
            last_error: Some("HTTP 502".into()),
        })
        .unwrap();
    let sender = WebhookSender::start(&cfg).unwrap();
    wait_for("dead letter", || {
        sender.counters().snapshot().dead_lettered == 1
    });
    assert_eq!(receiver.connections(), 0);
    let dead = sender.dead_letters().unwrap();
    let reason = dead[0].delivery.last_error.as_deref().unwrap();
    assert!(
        reason.contains("max_age") && reason.contains("HTTP 502"),
        "{reason}"
    );
}

#[test]
fn the_sender_can_be_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<WebhookSender>();
    shared::<InboundVerifier>();
}

#[test]
fn an_independently_signed_approval_is_accepted_once() {
    let secret = WebhookSecret::parse(SECRET).unwrap();
    let verifier = InboundVerifier::new(Some(secret), Duration::from_secs(300));
    let key = BASE64
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let body = br#"{"action_id":"act-9","operator":"soar-bot","approve":false}"#;
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let mut signed = format!("msg_inbound_1.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let signature = format!("v1,{}", BASE64.encode(hmac_sha256(&key, &signed)));
    let headers: HashMap<&str, &str> = [
        ("webhook-id", "msg_inbound_1"),
        ("webhook-timestamp", timestamp.as_str()),
        ("webhook-signature", signature.as_str()),
    ]
    .into_iter()
    .collect();
    let request = InboundRequest::from_headers(|name| headers.get(name).copied(), body);
    let decision = verifier.verify(&request).unwrap();
    assert_eq!(
        decision,
        ApprovalDecision {
            action_id: "act-9".into(),
            operator: "soar-bot".into(),
            approve: false,
        }
    );
    assert!(matches!(
        verifier.verify(&request).unwrap_err(),
        InboundError::Replayed(_)
    ));
}

#[test]
fn replayed_approvals_stay_refused_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("webhook.sqlite");
    let (secret, _) = WebhookSecret::generate().unwrap();
    let body = br#"{"action_id":"act-1","operator":"alice","approve":true}"#;
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let ts_text = timestamp.to_string();
    let signature = secret.sign("msg_once", timestamp, body);
    let request = InboundRequest {
        webhook_id: Some("msg_once"),
        webhook_timestamp: Some(&ts_text),
        webhook_signature: Some(&signature),
        body,
    };
    let tolerance = Duration::from_secs(300);
    let first = InboundVerifier::with_replay_file(Some(secret.clone()), tolerance, &path).unwrap();
    assert!(first.verify(&request).unwrap().approve);
    drop(first);
    // The queue file and the replay table can share one file.
    DeliveryQueue::open(&path).unwrap();
    let restarted = InboundVerifier::with_replay_file(Some(secret), tolerance, &path).unwrap();
    assert!(matches!(
        restarted.verify(&request).unwrap_err(),
        InboundError::Replayed(_)
    ));
}

#[test]
fn the_observer_alerts_on_new_or_more_severe_incidents_and_once_per_action_report() {
    use crate::respond::{ActionRecord, ResponseObserver};
    use crate::score::Severity;

    let receiver = TestReceiver::start(Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let sender = WebhookSender::start(&config(
        dir.path(),
        vec![destination(
            "soar",
            &receiver.url("/hook"),
            BodyFormat::Native,
        )],
    ))
    .unwrap();
    let observer = WebhookObserver::new(sender);
    let mut incident = incident();
    incident.severity = Severity::Medium;
    observer.incident(&incident);
    observer.incident(&incident);
    incident.severity = Severity::Critical;
    observer.incident(&incident);

    let mut record: ActionRecord = serde_json::from_value(serde_json::json!({
        "id": "act-1", "host": "web-1", "playbook": "contain", "mode": "autonomous",
        "name": "kill", "status": "dispatched", "requested_ns": 1, "updated_ns": 1,
        "action": {"action": "kill", "pid": 4242, "tree": true},
    }))
    .unwrap();
    observer.action(&record);
    record.status = crate::respond::ActionStatus::Done;
    record.report = Some(qsc_event::ActionReport {
        action_id: "act-1".into(),
        outcome: qsc_event::ActionOutcome::Done,
        detail: "killed 1 process".into(),
        received_mono_ns: None,
        done_mono_ns: 7,
        facts: serde_json::Map::new(),
    });
    observer.action(&record);
    observer.action(&record);

    wait_for("three alerts", || {
        observer.sender().counters().snapshot().sent == 3
    });
    std::thread::sleep(Duration::from_millis(100));
    let types: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            body["type"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        types,
        ["qsc.incident", "qsc.incident", "qsc.action_result"],
        "opened, escalated, one action result"
    );
}
