//! The scale-out event path against the real servers `cargo xtask setup --scale` starts:
//! batches published through NATS JetStream by gateways, consumed by several workers sharing a
//! durable consumer, stored in PostgreSQL. One worker is stopped mid-stream; every event must
//! end up stored exactly once and handed to detection exactly once.

#[allow(dead_code)] // the harness is shared with the other service tests
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::scale::{Scratch, servers_or_skip};
use cortex::bus::nats::{Detection, EventBus};
use cortex::bus::{BusBatch, BusConfig};
use cortex::store::{EventQuery, MAX_QUERY_LIMIT, PostgresStore, Store};
use qsc_event::{AuthAttempt, Event, EventKind, Source};
use tokio::sync::watch;

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

/// Counts every event handed to detection, by (host, seq).
#[derive(Default)]
struct Counting(Mutex<HashMap<(String, u64), u32>>);

impl Detection for Counting {
    fn detect(&self, batch: BusBatch) {
        let mut seen = self.0.lock().unwrap();
        for event in batch.events {
            *seen.entry((batch.host_id.clone(), event.seq)).or_default() += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_stored_and_detected_once_when_a_worker_stops_mid_stream() {
    if !servers_or_skip() {
        return;
    }
    let scratch = Scratch::new("bus");
    let store: Arc<dyn Store> =
        Arc::new(PostgresStore::open_with_key(&scratch.postgres, &[5u8; 32]).unwrap());
    let config = BusConfig {
        ack_wait_s: 1,
        ..scratch.bus.clone()
    };
    let gateway = EventBus::connect(&config).await.unwrap();
    for index in 0..BATCHES {
        for host in HOSTS {
            gateway.publish(&batch(host, index)).await.unwrap();
        }
    }
    // An agent's retry of a batch (same message id: dropped by the stream) and an overlapping
    // re-delivery under another id (reaches a worker; the store refuses the stored seqs).
    gateway.publish(&batch("web-01", 3)).await.unwrap();
    let mut overlapping = batch("db-01", 4);
    overlapping.events.push(event("db-01", 4 * PER_BATCH + 1));
    overlapping.events.rotate_right(1);
    gateway.publish(&overlapping).await.unwrap();
    // A batch that can never be stored (its event names another host) is dropped, not retried.
    let mut poison = batch("web-01", 0);
    poison.events[0].host_id = "db-01".into();
    poison.events.truncate(1);
    poison.events[0].seq = 999_999;
    gateway.publish(&poison).await.unwrap();

    let detected = Arc::new(Counting::default());
    let (stop_first, first_stopped) = watch::channel(false);
    let first = tokio::spawn(
        gateway
            .worker(store.clone())
            .await
            .unwrap()
            .run(detected.clone(), first_stopped),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.abort();
    drop(stop_first);
    let (stop, stopped) = watch::channel(false);
    let others: Vec<_> = spawn_workers(&gateway, &store, &detected, &stopped).await;

    let expected = HOSTS.len() * (BATCHES * PER_BATCH) as usize;
    let started = Instant::now();
    let query = EventQuery {
        limit: MAX_QUERY_LIMIT,
        ..Default::default()
    };
    loop {
        let done = detected.0.lock().unwrap().len() == expected;
        if done || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(true);
    for worker in others {
        worker.await.unwrap().unwrap();
    }
    let stored = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.query_events(&query).unwrap())
            .await
            .unwrap()
    };
    assert_eq!(stored.len(), expected, "every event stored exactly once");
    let counts: Vec<u32> = detected.0.lock().unwrap().values().copied().collect();
    assert_eq!(counts.len(), expected, "every event reached detection");
    assert!(
        counts.iter().all(|n| *n == 1),
        "no event reached detection twice"
    );
}

/// Two more workers on the same durable consumer.
async fn spawn_workers(
    gateway: &EventBus,
    store: &Arc<dyn Store>,
    detected: &Arc<Counting>,
    stopped: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<Result<(), cortex::bus::nats::BusError>>> {
    let mut handles = Vec::new();
    for _ in 0..2 {
        let worker = gateway.worker(store.clone()).await.unwrap();
        handles.push(tokio::spawn(worker.run(detected.clone(), stopped.clone())));
    }
    handles
}
