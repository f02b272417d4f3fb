//! An agent streams 100,000 events while the cortex-side sink (examples/sink.rs, a separate
//! process) is SIGKILLed and restarted twice; exactly 100,000 distinct events end up stored.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qsc_channel::delivery::{
    Appended, Client, ClientConfig, CommandHandler, CommandStatus, FsyncPolicy, Outbox,
    OutboxConfig, OverflowPolicy,
};
use qsc_channel::keys::StaticKeypair;

const TOTAL: u64 = 100_000;
const HOST: &str = "agent-under-test";

struct NoCommands;

impl CommandHandler for NoCommands {
    fn execute(&mut self, _id: u64, _body: &[u8]) -> (CommandStatus, Vec<u8>) {
        (CommandStatus::Refused, b"no commands in this test".to_vec())
    }
}

/// `cargo test` builds examples next to the test binaries' `deps` directory.
fn sink_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let path = profile_dir.join("examples").join("sink");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test -p qsc-channel` (it builds examples/sink.rs)",
        path.display()
    );
    path
}

struct Sink {
    child: Child,
    addr: String,
}

fn start_sink(dir: &Path, listen: &str) -> Sink {
    let mut child = Command::new(sink_binary())
        .args(["--listen", listen])
        .arg("--key")
        .arg(dir.join("cortex.key"))
        .arg("--allow")
        .arg(dir.join("agents.toml"))
        .arg("--store")
        .arg(dir.join("store"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("LISTENING ")
        .unwrap_or_else(|| panic!("unexpected sink output {line:?}"))
        .to_string();
    Sink { child, addr }
}

fn kill(sink: &mut Sink) {
    sink.child.kill().unwrap(); // SIGKILL on Unix
    sink.child.wait().unwrap();
}

fn expected_event(seq: u64) -> Vec<u8> {
    format!("event {seq:06} {}", "x".repeat(80)).into_bytes()
}

/// Parses the sink's log: (seq, body) records.
fn stored_records(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let mut bytes = Vec::new();
    let path = dir.join("store").join(format!("{HOST}.log"));
    if let Ok(mut file) = std::fs::File::open(path) {
        file.read_to_end(&mut bytes).unwrap();
    }
    let mut records = Vec::new();
    let mut rest = bytes.as_slice();
    while rest.len() >= 12 {
        let seq = u64::from_le_bytes(rest[..8].try_into().unwrap());
        let len = u32::from_le_bytes(rest[8..12].try_into().unwrap()) as usize;
        if rest.len() < 12 + len {
            break;
        }
        records.push((seq, rest[12..12 + len].to_vec()));
        rest = &rest[12 + len..];
    }
    records
}

fn wait_for_stored(dir: &Path, at_least: usize, timeout: Duration) -> usize {
    let start = Instant::now();
    loop {
        let count = stored_records(dir).len();
        if count >= at_least {
            return count;
        }
        assert!(
            start.elapsed() < timeout,
            "only {count} of {at_least} events stored after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn hundred_thousand_events_survive_two_sink_kills() {
    let dir = tempfile::tempdir().unwrap();
    let cortex = StaticKeypair::generate();
    let agent = StaticKeypair::generate();
    cortex.save(&dir.path().join("cortex.key")).unwrap();
    std::fs::write(
        dir.path().join("agents.toml"),
        format!(
            "[[agents]]\nhost_id = \"{HOST}\"\npublic_key = \"{}\"\nclass = \"test\"\n",
            agent.public()
        ),
    )
    .unwrap();

    let mut sink = start_sink(dir.path(), "127.0.0.1:0");
    let addr = sink.addr.clone();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let outbox = Outbox::open(OutboxConfig {
        fsync: FsyncPolicy::Never,
        overflow: OverflowPolicy::DropNewest,
        ..OutboxConfig::new(dir.path().join("outbox"))
    })
    .unwrap();
    let mut config = ClientConfig::new(addr.clone(), cortex.public(), agent);
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    config.max_batch_events = 500;
    let client = Client::new(config, outbox);
    let handle = client.handle();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let client_task = runtime.spawn(client.run_until(NoCommands, async {
        let _ = stop_rx.await;
    }));

    // The producer is paced (about 1 s for everything) so the kills land mid-stream.
    let producer = std::thread::spawn(move || {
        let mut next = 1u64;
        while next <= TOTAL {
            let batch: Vec<Vec<u8>> = (next..(next + 1000).min(TOTAL + 1))
                .map(expected_event)
                .collect();
            for appended in handle.append_batch(&batch).unwrap() {
                assert_eq!(appended, Appended::Stored { seq: next });
                next += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });

    for threshold in [25_000, 60_000] {
        let seen = wait_for_stored(dir.path(), threshold, Duration::from_secs(120));
        kill(&mut sink);
        assert!(
            seen < TOTAL as usize,
            "kill must happen mid-stream (saw {seen})"
        );
        sink = start_sink(dir.path(), &addr);
    }
    producer.join().unwrap();
    wait_for_stored(dir.path(), TOTAL as usize, Duration::from_secs(120));
    // Give a straggling duplicate, if the de-duplication were broken, time to land.
    std::thread::sleep(Duration::from_millis(300));
    kill(&mut sink);
    let _ = stop_tx.send(());
    runtime.block_on(client_task).unwrap();

    let records = stored_records(dir.path());
    let distinct: HashSet<u64> = records.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(records.len(), TOTAL as usize, "no duplicates stored");
    assert_eq!(
        distinct,
        (1..=TOTAL).collect::<HashSet<u64>>(),
        "every seq stored"
    );
    for (seq, body) in &records {
        assert_eq!(body, &expected_event(*seq), "event {seq} intact");
    }
}
