//! Idle sessions over loopback TCP: an agent with nothing to send keeps its session open with
//! heartbeats, and the cortex closes the session of a peer that falls silent.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Served, Setup, client, setup, spawn_server, wait_until};
use qsc_channel::delivery::{
    AgentIdentity, CommandHandler, CommandStatus, EventSink, ServerError, SinkError,
};
use qsc_channel::handshake;
use qsc_channel::noise::HandshakeMode;
use qsc_channel::transport::{TransportConfig, TransportError};
use tokio::net::{TcpListener, TcpStream};

/// Counts stored events; nothing else matters here.
#[derive(Clone, Default)]
struct CountingSink(Arc<AtomicU64>);

impl EventSink for CountingSink {
    fn stored_up_to(&mut self, _agent: &AgentIdentity) -> Result<u64, SinkError> {
        Ok(self.0.load(Ordering::SeqCst))
    }

    fn store(
        &mut self,
        _agent: &AgentIdentity,
        _first_seq: u64,
        events: &[&[u8]],
    ) -> Result<(), SinkError> {
        self.0.fetch_add(events.len() as u64, Ordering::SeqCst);
        Ok(())
    }

    fn record_loss(&mut self, _: &AgentIdentity, _: u64, _: u64) -> Result<(), SinkError> {
        Ok(())
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

struct NoCommands;

impl CommandHandler for NoCommands {
    fn execute(&mut self, _id: u64, _body: &[u8]) -> (CommandStatus, Vec<u8>) {
        (CommandStatus::Refused, Vec::new())
    }
}

/// Heartbeat every 50 ms, a peer silent for 250 ms is dead.
fn transport() -> TransportConfig {
    TransportConfig {
        heartbeat_after: Duration::from_millis(50),
        idle_timeout: Some(Duration::from_millis(250)),
        ..TransportConfig::default()
    }
}

struct Cortex {
    addr: String,
    keys: Setup,
    sink: CountingSink,
    served: Served,
}

async fn start_cortex() -> Cortex {
    let keys = setup(false, transport());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let sink = CountingSink::default();
    let served = spawn_server(listener, keys.server.clone(), sink.clone());
    Cortex {
        addr,
        keys,
        sink,
        served,
    }
}

#[tokio::test]
async fn idle_agent_keeps_its_session_open_with_heartbeats() {
    let mut cortex = start_cortex().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = cortex.keys.client_config(cortex.addr.clone());
    config.transport = transport();
    let client = client(config, dir.path());
    let handle = client.handle();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(client.run_until(NoCommands, async {
        let _ = stop_rx.await;
    }));

    // Four idle timeouts with nothing to send: the one session must survive them.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        cortex.served.outcomes.try_recv().is_err(),
        "the idle agent's session was closed"
    );
    assert_eq!(cortex.served.accepted.load(Ordering::SeqCst), 1);

    handle
        .append_batch(&[b"after the quiet".as_slice()])
        .unwrap();
    wait_until("the event after the quiet stored", || {
        cortex.sink.0.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(cortex.served.accepted.load(Ordering::SeqCst), 1);
    let _ = stop_tx.send(());
    task.await.unwrap();
}

#[tokio::test]
async fn cortex_closes_the_session_of_a_silent_peer() {
    let mut cortex = start_cortex().await;
    let mut stream = TcpStream::connect(&cortex.addr).await.unwrap();
    handshake::initiate(
        &mut stream,
        HandshakeMode::Hybrid,
        &cortex.keys.agent,
        &cortex.keys.cortex.public(),
        &[],
    )
    .await
    .unwrap();
    // Handshaken, then silent (no heartbeat): the session must end with the idle timeout.
    let outcome = tokio::time::timeout(Duration::from_secs(5), cortex.served.outcomes.recv())
        .await
        .expect("the silent session was not closed")
        .expect("server task ended");
    assert!(
        matches!(
            outcome,
            Err(ServerError::Transport(TransportError::IdleTimeout(limit)))
                if limit == Duration::from_millis(250)
        ),
        "{outcome:?}"
    );
    drop(stream);
}
