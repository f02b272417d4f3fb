//! Client and server together over loopback TCP: rekeying mid-stream, commands, refused
//! agents, overflow losses reported to the sink, and acks that wait for a slow store while the
//! next batches are already read.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{client, outbox, setup, spawn_server, wait_until};
use qsc_channel::delivery::{
    AgentIdentity, Client, ClientConfig, ClientError, CommandHandler, CommandStatus, Durable,
    EventSink, OverflowPolicy, ServerError, SinkError,
};
use qsc_channel::handshake::HandshakeError;
use qsc_channel::keys::{AuthError, StaticKeypair};
use qsc_channel::transport::TransportConfig;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

#[derive(Default)]
struct Stored {
    events: Vec<(u64, Vec<u8>)>,
    losses: Vec<(u64, u64)>,
    results: Vec<(u64, CommandStatus, Vec<u8>)>,
}

#[derive(Clone, Default)]
struct MemorySink(Arc<Mutex<Stored>>);

impl EventSink for MemorySink {
    fn stored_up_to(&mut self, _agent: &AgentIdentity) -> Result<u64, SinkError> {
        let stored = self.0.lock().unwrap();
        let last_event = stored.events.last().map_or(0, |(seq, _)| *seq);
        let last_loss = stored.losses.last().map_or(0, |(_, last)| *last);
        Ok(last_event.max(last_loss))
    }

    fn store(
        &mut self,
        _agent: &AgentIdentity,
        first_seq: u64,
        events: &[&[u8]],
    ) -> Result<(), SinkError> {
        let mut stored = self.0.lock().unwrap();
        for (i, event) in events.iter().enumerate() {
            stored.events.push((first_seq + i as u64, event.to_vec()));
        }
        Ok(())
    }

    fn record_loss(
        &mut self,
        _agent: &AgentIdentity,
        first_seq: u64,
        last_seq: u64,
    ) -> Result<(), SinkError> {
        self.0.lock().unwrap().losses.push((first_seq, last_seq));
        Ok(())
    }

    fn command_result(
        &mut self,
        _agent: &AgentIdentity,
        id: u64,
        status: CommandStatus,
        body: &[u8],
    ) -> Result<(), SinkError> {
        self.0
            .lock()
            .unwrap()
            .results
            .push((id, status, body.to_vec()));
        Ok(())
    }
}

struct Echo;

impl CommandHandler for Echo {
    fn execute(&mut self, id: u64, body: &[u8]) -> (CommandStatus, Vec<u8>) {
        let mut out = format!("ran {id}: ").into_bytes();
        out.extend_from_slice(body);
        (CommandStatus::Succeeded, out)
    }
}

#[tokio::test]
async fn rekey_mid_stream_loses_nothing_and_commands_round_trip() {
    let transport = TransportConfig {
        rekey_after_messages: 5,
        ..TransportConfig::default()
    };
    let s = setup(false, transport.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let sink = MemorySink::default();
    let mut served = spawn_server(listener, s.server.clone(), sink.clone());

    let dir = tempfile::tempdir().unwrap();
    let mut config = s.client_config(addr);
    config.transport = transport;
    config.max_batch_events = 7;
    let client = client(config, dir.path());
    let handle = client.handle();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(client.run_until(Echo, async {
        let _ = stop_rx.await;
    }));

    let events: Vec<Vec<u8>> = (1..=2000u32)
        .map(|i| i.to_be_bytes().repeat(i as usize % 50 + 1))
        .collect();
    for chunk in events.chunks(100) {
        handle.append_batch(chunk).unwrap();
    }
    let commands = served.senders.recv().await.unwrap();
    commands.send(42, b"isolate").await.unwrap();

    let stored = sink.0.clone();
    wait_until("all events stored", || {
        stored.lock().unwrap().events.len() == 2000
    })
    .await;
    wait_until("command result", || {
        !stored.lock().unwrap().results.is_empty()
    })
    .await;
    wait_until("outbox acknowledged", || handle.unacked().unwrap() == 0).await;
    let _ = stop_tx.send(());
    task.await.unwrap();

    let stored = sink.0.lock().unwrap();
    let expected: Vec<(u64, Vec<u8>)> = (1..).zip(events).collect();
    assert_eq!(
        stored.events, expected,
        "in order, none lost, none duplicated"
    );
    assert_eq!(
        stored.results,
        vec![(42, CommandStatus::Succeeded, b"ran 42: isolate".to_vec())]
    );
}

#[tokio::test]
async fn revoked_and_unknown_agents_are_refused() {
    for (revoked, stranger) in [(true, false), (false, true)] {
        let s = setup(revoked, TransportConfig::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let sink = MemorySink::default();
        let mut outcomes = spawn_server(listener, s.server.clone(), sink.clone()).outcomes;
        let key = if stranger {
            StaticKeypair::generate()
        } else {
            s.agent.clone()
        };
        let dir = tempfile::tempdir().unwrap();
        let client = client(ClientConfig::new(addr, s.cortex.public(), key), dir.path());
        client.handle().append_batch(&[b"secret"]).unwrap();
        let task = tokio::spawn(client.run_until(Echo, std::future::pending()));
        let outcome = outcomes.recv().await.unwrap();
        task.abort();
        let auth = match outcome {
            Err(ServerError::Handshake(HandshakeError::Unauthorized(auth))) => auth,
            other => panic!("expected a refusal, got {other:?}"),
        };
        if revoked {
            assert!(matches!(auth, AuthError::Revoked { .. }), "{auth}");
        } else {
            assert!(matches!(auth, AuthError::UnknownKey { .. }), "{auth}");
        }
        assert!(sink.0.lock().unwrap().events.is_empty());
    }
}

#[test]
fn events_too_large_for_one_message_are_refused_up_front() {
    let s = setup(false, TransportConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let client = client(s.client_config("127.0.0.1:9"), dir.path());
    let err = client
        .handle()
        .append_batch(&[vec![0u8; 600 << 10]])
        .unwrap_err();
    assert!(
        matches!(err, ClientError::EventTooLarge { len, .. } if len == 600 << 10),
        "{err}"
    );
    assert_eq!(
        client.handle().unacked().unwrap(),
        0,
        "nothing from the batch was stored"
    );
}

#[tokio::test]
async fn overflow_losses_reach_the_sink_as_a_range() {
    let s = setup(false, TransportConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let client_outbox = outbox(dir.path(), 4096, OverflowPolicy::DropOldest);
    let mut config = s.client_config(String::new());
    // The cortex is away while the agent overflows its outbox.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    config.cortex_addr = listener.local_addr().unwrap().to_string();
    let client = Client::new(config, client_outbox);
    let handle = client.handle();
    let events: Vec<Vec<u8>> = (0..200u32).map(|i| vec![i as u8; 60]).collect();
    handle.append_batch(&events).unwrap();
    let dropped = handle.drops().unwrap().dropped_oldest;
    assert!(dropped > 0);

    let sink = MemorySink::default();
    let _server = spawn_server(listener, s.server.clone(), sink.clone());
    let task = tokio::spawn(client.run_until(Echo, std::future::pending()));
    let stored = sink.0.clone();
    wait_until("all delivered", || {
        let s = stored.lock().unwrap();
        s.events.len() as u64 + s.losses.iter().map(|(a, b)| b - a + 1).sum::<u64>() == 200
    })
    .await;
    task.abort();
    let stored = sink.0.lock().unwrap();
    assert_eq!(stored.losses, vec![(1, dropped)]);
    assert_eq!(
        stored.events.first().map(|(seq, _)| *seq),
        Some(dropped + 1)
    );
}

/// One batch handed to [`GatedSink::submit`]: durable once the test sends on `release`, failed
/// if the test drops it.
struct Submitted {
    first_seq: u64,
    count: u64,
    release: tokio::sync::oneshot::Sender<()>,
}

/// A store whose writes become durable only when the test says so.
#[derive(Clone)]
struct GatedSink {
    submitted: mpsc::UnboundedSender<Submitted>,
    durable_up_to: Arc<AtomicU64>,
}

impl EventSink for GatedSink {
    fn stored_up_to(&mut self, _agent: &AgentIdentity) -> Result<u64, SinkError> {
        Ok(self.durable_up_to.load(Ordering::SeqCst))
    }

    fn store(&mut self, _: &AgentIdentity, _: u64, _: &[&[u8]]) -> Result<(), SinkError> {
        Err("the session must submit, not store".into())
    }

    fn submit(
        &mut self,
        _agent: &AgentIdentity,
        first_seq: u64,
        events: &[&[u8]],
    ) -> Result<Durable, SinkError> {
        let (release, released) = tokio::sync::oneshot::channel();
        let count = events.len() as u64;
        self.submitted.send(Submitted {
            first_seq,
            count,
            release,
        })?;
        let durable_up_to = self.durable_up_to.clone();
        Ok(Box::pin(async move {
            released.await.map_err(|_| "write failed")?;
            durable_up_to.fetch_max(first_seq + count - 1, Ordering::SeqCst);
            Ok::<(), SinkError>(())
        }))
    }

    fn record_loss(&mut self, _: &AgentIdentity, _: u64, _: u64) -> Result<(), SinkError> {
        Err("no losses expected".into())
    }

    fn command_result(
        &mut self,
        _: &AgentIdentity,
        _: u64,
        _: CommandStatus,
        _: &[u8],
    ) -> Result<(), SinkError> {
        Ok(())
    }
}

#[tokio::test]
async fn batches_are_read_ahead_but_acked_only_once_durable_and_in_order() {
    let s = setup(false, TransportConfig::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (submitted_tx, mut submitted) = mpsc::unbounded_channel();
    let sink = GatedSink {
        submitted: submitted_tx,
        durable_up_to: Arc::new(AtomicU64::new(0)),
    };
    let mut outcomes = spawn_server(listener, s.server.clone(), sink).outcomes;
    let dir = tempfile::tempdir().unwrap();
    let mut config = s.client_config(addr);
    config.max_batch_events = 10;
    let client = client(config, dir.path());
    let handle = client.handle();
    let events: Vec<Vec<u8>> = (0..30u8).map(|i| vec![i; 20]).collect();
    handle.append_batch(&events).unwrap();
    let task = tokio::spawn(client.run_until(Echo, std::future::pending()));

    // All three batches reach the store while none of them is durable.
    let mut batches = Vec::new();
    for _ in 0..3 {
        batches.push(submitted.recv().await.unwrap());
    }
    let firsts: Vec<(u64, u64)> = batches.iter().map(|b| (b.first_seq, b.count)).collect();
    assert_eq!(firsts, vec![(1, 10), (11, 10), (21, 10)]);
    let settle = || tokio::time::sleep(Duration::from_millis(200));
    settle().await;
    assert_eq!(handle.unacked().unwrap(), 30, "nothing is durable yet");

    // The second batch is durable first: its ack waits for the first one's.
    let third = batches.pop().unwrap();
    let second = batches.pop().unwrap();
    let first = batches.pop().unwrap();
    second.release.send(()).unwrap();
    settle().await;
    assert_eq!(handle.unacked().unwrap(), 30, "acks stay in order");
    first.release.send(()).unwrap();
    wait_until("the first two batches acked", || {
        handle.unacked().unwrap() == 10
    })
    .await;

    // The third batch's write fails: the session ends without its ack and the agent re-sends it.
    drop(third);
    let outcome = outcomes.recv().await.unwrap();
    assert!(
        matches!(outcome, Err(ServerError::Sink { .. })),
        "{outcome:?}"
    );
    assert_eq!(handle.unacked().unwrap(), 10);
    let resent = submitted.recv().await.unwrap();
    assert_eq!((resent.first_seq, resent.count), (21, 10));
    resent.release.send(()).unwrap();
    wait_until("everything acked", || handle.unacked().unwrap() == 0).await;
    task.abort();
}

#[tokio::test]
async fn an_agent_whose_cortex_is_down_delivers_through_its_fallback_address() {
    let s = setup(false, TransportConfig::default());
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on: bound, noted and closed again.
    let down = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down_addr = down.local_addr().unwrap().to_string();
    drop(down);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = ClientConfig::new(down_addr, s.cortex.public(), s.agent.clone());
    config.fallback_addrs = vec![listener.local_addr().unwrap().to_string()];
    config.backoff_initial = Duration::from_millis(10);
    let client = Client::new(
        config,
        outbox(dir.path(), 1 << 20, OverflowPolicy::DropNewest),
    );
    let events: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 32]).collect();
    client.handle().append_batch(&events).unwrap();
    let sink = MemorySink::default();
    let _server = spawn_server(listener, s.server.clone(), sink.clone());
    let task = tokio::spawn(client.run_until(Echo, std::future::pending()));
    let stored = sink.0.clone();
    wait_until("delivery through the fallback", || {
        stored.lock().unwrap().events.len() == 50
    })
    .await;
    task.abort();
}
