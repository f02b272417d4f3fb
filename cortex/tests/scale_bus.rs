//! The scale-out event path against the real servers `cargo xtask setup --scale` starts:
//! batches published through NATS JetStream by gateways, consumed by workers that share the
//! partitions through PostgreSQL leases, stored in PostgreSQL. The first worker dies in the
//! middle of a batch's detection (after the store's commit); its partitions pass to two new
//! workers, and every event must end up stored exactly once and handed to detection exactly
//! once, each host's events in order.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cortex::bus::nats::{Detection, EventBus};
use cortex::bus::{BusBatch, BusConfig, BusKind};
use cortex::pipeline::adopt::{DetectedMarks, HostFilter};
use cortex::store::config::PostgresConfig;
use cortex::store::{EventQuery, MAX_QUERY_LIMIT, PostgresStore, Store};
use qsc_event::{AuthAttempt, Event, EventKind, Source};
use tokio::sync::watch;

#[allow(dead_code)] // the replica test uses the rest
#[path = "common/scale.rs"]
mod scale;
use scale::servers_or_skip;

const HOSTS: [&str; 3] = ["web-01", "db-01", "x.odd-host"];
const BATCHES: u64 = 20;
const PER_BATCH: u64 = 10;

fn event(host: &str, seq: u64) -> Event {
    let mut event = Event::new(
        host,
        Source::Alpha,
        seq,
        EventKind::AuthFailure(AuthAttempt {
            user: "deploy".into(),
            remote_ip: None,
            service: "sshd".into(),
            detail: None,
        }),
    );
    event.time_ns = 1_000 + seq;
    event
}

fn batch(host: &str, index: u64) -> BusBatch {
    BusBatch {
        host_id: host.into(),
        agent: Source::Alpha,
        received_ns: 0,
        events: (1..=PER_BATCH)
            .map(|i| event(host, index * PER_BATCH + i))
            .collect(),
    }
}

/// Where the first worker dies: in the detection of this host's batch holding this seq.
const TRAP: (&str, u64) = ("db-01", 5 * PER_BATCH + 1);

/// What detection saw, shared by every worker.
#[derive(Default)]
struct Seen {
    /// Per host, every seq handed to detection and the worker it went to, in that order.
    order: HashMap<String, Vec<(u64, &'static str)>>,
    /// Partitions adopted, per worker name.
    adopted: HashMap<&'static str, BTreeSet<u32>>,
}

impl Seen {
    /// Distinct events detected.
    fn distinct(&self) -> usize {
        self.order
            .values()
            .map(|seqs| {
                seqs.iter()
                    .map(|(seq, _)| seq)
                    .collect::<BTreeSet<_>>()
                    .len()
            })
            .sum()
    }
}

/// One worker's detection: records events; the first worker's dies at [`TRAP`] (it blocks until
/// the test has killed the worker, then returns without having detected anything).
struct Counting {
    name: &'static str,
    seen: Arc<Mutex<Seen>>,
    trap: Option<Mutex<std::sync::mpsc::Receiver<()>>>,
    trapped: Option<Mutex<std::sync::mpsc::Sender<()>>>,
}

impl Detection for Counting {
    fn detect(&self, batch: BusBatch) {
        let (host_id, events) = (batch.host_id.as_str(), &batch.events);
        let hit = host_id == TRAP.0 && events.iter().any(|e| e.seq == TRAP.1);
        if let (true, Some(trap), Some(trapped)) = (hit, &self.trap, &self.trapped) {
            let _ = trapped.lock().unwrap().send(());
            let _ = trap.lock().unwrap().recv();
            return;
        }
        let mut seen = self.seen.lock().unwrap();
        let order = seen.order.entry(host_id.to_owned()).or_default();
        order.extend(events.iter().map(|event| (event.seq, self.name)));
    }

    fn adopt(&self, partition: u32, owns: HostFilter, detected: DetectedMarks) {
        assert!(
            HOSTS
                .iter()
                .all(|h| owns(h) == (bus_config_partition(h) == partition))
        );
        assert!(detected.keys().all(|(host, _)| owns(host)));
        self.seen
            .lock()
            .unwrap()
            .adopted
            .entry(self.name)
            .or_default()
            .insert(partition);
    }
}

const PARTITIONS: u32 = 4;

fn bus_config_partition(host: &str) -> u32 {
    cortex::bus::partition::partition_of(host, PARTITIONS)
}

/// A PostgreSQL schema of the test's own, dropped at the end.
struct Schema(PostgresConfig);

impl Drop for Schema {
    fn drop(&mut self) {
        let url = self.0.url.clone();
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0.schema);
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .map_err(std::io::Error::other)?;
                tokio::spawn(connection);
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(std::io::Error::other)
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("cannot drop test schema {}", self.0.schema);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_stored_and_detected_once_in_order_when_a_worker_dies_mid_batch() {
    if !servers_or_skip() {
        return;
    }
    let id = format!("{}_{}", std::process::id(), qsc_event::now_ns() % 1_000_000);
    let schema = Schema(PostgresConfig {
        url: "host=127.0.0.1 port=5432 user=qsc password=qsc dbname=qsc".into(),
        password_file: Default::default(),
        schema: format!("qsc_scale_{id}"),
    });
    let store: Arc<dyn Store> =
        Arc::new(PostgresStore::open_with_key(&schema.0, &[5u8; 32]).unwrap());
    let config = BusConfig {
        kind: BusKind::Nats,
        stream: format!("QSC_TEST_{id}"),
        subject_prefix: format!("qsctest{id}.events"),
        consumer: format!("workers-{id}"),
        ack_wait_s: 1,
        partitions: PARTITIONS,
        lease_poll_ms: 100,
        ..Default::default()
    };
    let gateway = EventBus::connect(&config).await.unwrap();
    publish_all(&gateway).await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let (release_trap, trap) = std::sync::mpsc::channel();
    let (trapped, in_trap) = std::sync::mpsc::channel();
    let first_detection = Arc::new(Counting {
        name: "first",
        seen: seen.clone(),
        trap: Some(Mutex::new(trap)),
        trapped: Some(Mutex::new(trapped)),
    });
    let (_keep_first, first_stopped) = watch::channel(false);
    let first = tokio::spawn(
        gateway
            .worker(store.clone(), &schema.0)
            .await
            .unwrap()
            .run(first_detection, first_stopped),
    );
    // The first worker owns every partition; it dies inside the trapped batch's detection.
    tokio::task::spawn_blocking(move || in_trap.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the first worker reached the trapped batch");
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    drop(release_trap);

    let (stop, stopped) = watch::channel(false);
    let mut others = Vec::new();
    for name in ["second", "third"] {
        let detection = Arc::new(Counting {
            name,
            seen: seen.clone(),
            trap: None,
            trapped: None,
        });
        let worker = gateway.worker(store.clone(), &schema.0).await.unwrap();
        others.push(tokio::spawn(worker.run(detection, stopped.clone())));
    }

    let expected = HOSTS.len() * (BATCHES * PER_BATCH) as usize;
    let started = Instant::now();
    while seen.lock().unwrap().distinct() < expected && started.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(true);
    for worker in others {
        worker.await.unwrap().unwrap();
    }
    let query = EventQuery {
        limit: MAX_QUERY_LIMIT,
        ..Default::default()
    };
    let stored = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.query_events(&query).unwrap())
            .await
            .unwrap()
    };
    // The test's stream goes before the verdict, so that a failure leaves nothing behind.
    let nats = async_nats::connect(config.url.as_str()).await.unwrap();
    async_nats::jetstream::new(nats)
        .delete_stream(&config.stream)
        .await
        .unwrap();
    assert_eq!(stored.len(), expected, "every event stored exactly once");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.distinct(), expected, "every event reached detection");
    for (host, order) in &seen.order {
        check_host(host, order);
    }
    let taken_over: BTreeSet<u32> = ["second", "third"]
        .iter()
        .filter_map(|name| seen.adopted.get(name))
        .flatten()
        .copied()
        .collect();
    assert_eq!(
        taken_over,
        (0..PARTITIONS).collect(),
        "the new workers adopted every partition of the dead one"
    );
    assert!(
        seen.adopted.get("second").is_some_and(|p| !p.is_empty())
            && seen.adopted.get("third").is_some_and(|p| !p.is_empty()),
        "both new workers own a share: {:?}",
        seen.adopted
    );
}

/// Every host's batches, an agent's retry of a batch (same message id: dropped by the stream),
/// an overlapping re-delivery under another id (reaches a worker; the store refuses the stored
/// seqs) and a batch that can never be stored (its event names another host: dropped, not
/// retried).
async fn publish_all(gateway: &EventBus) {
    for index in 0..BATCHES {
        for host in HOSTS {
            gateway.publish(&batch(host, index)).await.unwrap();
        }
    }
    gateway.publish(&batch("web-01", 3)).await.unwrap();
    let mut overlapping = batch("db-01", 4);
    overlapping.events.push(event("db-01", 4 * PER_BATCH + 1));
    overlapping.events.rotate_right(1);
    gateway.publish(&overlapping).await.unwrap();
    let mut poison = batch("web-01", 0);
    poison.events[0].host_id = "db-01".into();
    poison.events.truncate(1);
    poison.events[0].seq = 999_999;
    gateway.publish(&poison).await.unwrap();
}

/// One host's detections: in seq order; the trapped batch (stored, never detected by the dead
/// worker) detected once by its next owner; an event handed twice only when the dead worker
/// had detected it but died before recording that (then its detection must ignore the repeat,
/// as the pipeline's fusion does by event refs), which is at most the one batch it had in hand.
fn check_host(host: &str, order: &[(u64, &'static str)]) {
    let mut first_seen = BTreeSet::new();
    let mut distinct = Vec::new();
    let mut twice = BTreeSet::new();
    for (seq, worker) in order {
        if first_seen.insert(*seq) {
            distinct.push(*seq);
        } else {
            assert!(
                *worker != "first" && order.contains(&(*seq, "first")),
                "{host} seq {seq} reached detection twice, not after the first worker died"
            );
            twice.insert((seq - 1) / PER_BATCH);
        }
    }
    assert!(
        distinct.windows(2).all(|w| w[0] < w[1]),
        "{host}'s events reached detection in order: {distinct:?}"
    );
    assert!(
        twice.len() <= 1,
        "{host}: more than the batch in hand was repeated: {twice:?}"
    );
    if host == TRAP.0 {
        let trapped: Vec<_> = order.iter().filter(|(seq, _)| *seq == TRAP.1).collect();
        assert_eq!(
            trapped.len(),
            1,
            "the trapped batch was detected once: {trapped:?}"
        );
        assert_ne!(trapped[0].1, "first");
    }
}
