//! Crash durability of the SQLite store: a writer process is SIGKILLed mid-write, repeatedly;
//! every batch it reported as committed must be present afterwards and the database must open
//! and pass SQLite's integrity check.
//!
//! The test binary is its own writer: started with `QSC_STORE_CRASH_WRITER` set it appends
//! batches forever and prints `committed <seq>` after each append returns. (`harness = false`
//! in Cargo.toml, so `main` decides which role to play.)

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cortex::store::key_file::create_key_file;
use cortex::store::{EventQuery, SqliteStore, Store};
use qsc_event::{Event, EventKind, Heartbeat, Source};

const WRITER_ENV: &str = "QSC_STORE_CRASH_WRITER";
const HOST: &str = "crash-host";
const BATCH: u64 = 25;
const ROUNDS: usize = 4;

fn main() {
    if let Some(dir) = std::env::var_os(WRITER_ENV) {
        run_writer(Path::new(&dir));
        return;
    }
    println!("running 1 test");
    acknowledged_batches_survive_sigkill();
    println!("test acknowledged_batches_survive_sigkill ... ok");
}

fn db_path(dir: &Path) -> PathBuf {
    dir.join("cortex.db")
}

fn key_path(dir: &Path) -> PathBuf {
    dir.join("master.key")
}

/// The child: append batches until killed, acknowledging each on stdout.
fn run_writer(dir: &Path) {
    let store = match SqliteStore::open(&db_path(dir), &key_path(dir)) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("writer: cannot open store: {e}");
            std::process::exit(2);
        }
    };
    let mut next = match store.highest_seq(HOST, Source::Alpha) {
        Ok(seq) => seq.unwrap_or(0) + 1,
        Err(e) => {
            eprintln!("writer: {e}");
            std::process::exit(2);
        }
    };
    let mut stdout = std::io::stdout().lock();
    loop {
        let batch: Vec<Event> = (next..next + BATCH)
            .map(|seq| {
                Event::new(
                    HOST,
                    Source::Alpha,
                    seq,
                    EventKind::Heartbeat(Heartbeat {
                        version: "crash-test".into(),
                        uptime_s: seq,
                        active_hooks: vec!["x".repeat(200)],
                    }),
                )
            })
            .collect();
        if let Err(e) = store.append_events(HOST, Source::Alpha, &batch) {
            eprintln!("writer: append failed: {e}");
            std::process::exit(2);
        }
        next += BATCH;
        // The parent went away: stop.
        if writeln!(stdout, "committed {}", next - 1)
            .and_then(|()| stdout.flush())
            .is_err()
        {
            std::process::exit(0);
        }
    }
}

fn acknowledged_batches_survive_sigkill() {
    let dir = tempfile::tempdir().expect("temp dir");
    create_key_file(&key_path(dir.path())).expect("master key");
    let exe = std::env::current_exe().expect("own executable");
    let mut acknowledged = 0u64;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .env(WRITER_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().expect("writer stdout");
        let mut lines = BufReader::new(stdout).lines();
        // Let it commit a different number of batches each round, then kill it while it is
        // busy writing the next one.
        let wanted = 10 + round * 7;
        for _ in 0..wanted {
            let line = lines
                .next()
                .expect("writer exited early")
                .expect("read writer output");
            let seq: u64 = line
                .strip_prefix("committed ")
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("unexpected writer output {line:?}"));
            assert!(seq > acknowledged, "acknowledged seqs must grow");
            acknowledged = seq;
        }
        child.kill().expect("SIGKILL writer");
        let status = child.wait().expect("reap writer");
        assert!(!status.success(), "writer must have been killed: {status}");
        check_store(dir.path(), acknowledged, round);
    }
}

/// Everything acknowledged is present, gap-free from 1, and the database is sound.
fn check_store(dir: &Path, acknowledged: u64, round: usize) {
    let store = SqliteStore::open(&db_path(dir), &key_path(dir)).expect("store reopens");
    let highest = store
        .highest_seq(HOST, Source::Alpha)
        .expect("highest seq")
        .expect("something stored");
    assert!(
        highest >= acknowledged,
        "round {round}: acknowledged {acknowledged} but only {highest} stored"
    );
    let events = store
        .query_events(&EventQuery {
            host: Some(HOST.into()),
            limit: cortex::store::MAX_QUERY_LIMIT,
            ..Default::default()
        })
        .expect("query events");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=highest).collect();
    assert_eq!(
        seqs, expected,
        "round {round}: stored seqs must be 1..={highest}"
    );
    drop(store);
    let conn = rusqlite::Connection::open(db_path(dir)).expect("raw open");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity check");
    assert_eq!(check, "ok");
    println!(
        "round {round}: acknowledged up to seq {acknowledged}, stored 1..={highest}, integrity ok"
    );
}
