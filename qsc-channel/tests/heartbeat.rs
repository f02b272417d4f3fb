//! Idle sessions over loopback TCP: an agent with nothing to send keeps its session open with
//! heartbeats, and the cortex closes the session of a peer that falls silent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use qsc_channel::delivery::{
    self, AgentIdentity, Client, ClientConfig, CommandHandler, CommandStatus, EventSink,
    FsyncPolicy, Outbox, OutboxConfig, OverflowPolicy, ServerConfig, ServerError, SinkError,
};
use qsc_channel::handshake;
use qsc_channel::keys::{AgentEntry, AllowList, StaticKeypair};
use qsc_channel::noise::HandshakeMode;
use qsc_channel::transport::{TransportConfig, TransportError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

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
    key: StaticKeypair,
    agent: StaticKeypair,
    sink: CountingSink,
    /// One entry per finished session, in order.
    outcomes: mpsc::UnboundedReceiver<Result<(), ServerError>>,
    accepted: Arc<AtomicU64>,
}

async fn start_cortex() -> Cortex {
    let key = StaticKeypair::generate();
    let agent = StaticKeypair::generate();
    let allow = AllowList::new(vec![AgentEntry {
        host_id: "idle-01".into(),
        class: "test".into(),
        public_key: agent.public(),
        revoked: false,
    }]);
    let config = ServerConfig {
        keypair: key.clone(),
        allow_list: Arc::new(RwLock::new(allow)),
        require_hybrid: true,
        transport: transport(),
        handshake_timeout: Duration::from_secs(5),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let sink = CountingSink::default();
    let accepted = Arc::new(AtomicU64::new(0));
    let (outcome_tx, outcomes) = mpsc::unbounded_channel();
    tokio::spawn({
        let (sink, accepted) = (sink.clone(), accepted.clone());
        async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (mut sink, config, outcome_tx) =
                    (sink.clone(), config.clone(), outcome_tx.clone());
                tokio::spawn(async move {
                    let outcome = match delivery::accept(stream, &config, &mut sink).await {
                        Ok(session) => session.run(&mut sink).await,
                        Err(e) => Err(e),
                    };
                    let _ = outcome_tx.send(outcome);
                });
            }
        }
    });
    Cortex {
        addr,
        key,
        agent,
        sink,
        outcomes,
        accepted,
    }
}

#[tokio::test]
async fn idle_agent_keeps_its_session_open_with_heartbeats() {
    let mut cortex = start_cortex().await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(OutboxConfig {
        fsync: FsyncPolicy::Never,
        overflow: OverflowPolicy::DropNewest,
        ..OutboxConfig::new(dir.path())
    })
    .unwrap();
    let mut config = ClientConfig::new(cortex.addr.clone(), cortex.key.public(), cortex.agent);
    config.transport = transport();
    let client = Client::new(config, outbox);
    let handle = client.handle();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(client.run_until(NoCommands, async {
        let _ = stop_rx.await;
    }));

    // Four idle timeouts with nothing to send: the one session must survive them.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        cortex.outcomes.try_recv().is_err(),
        "the idle agent's session was closed"
    );
    assert_eq!(cortex.accepted.load(Ordering::SeqCst), 1);

    handle
        .append_batch(&[b"after the quiet".as_slice()])
        .unwrap();
    for _ in 0..400 {
        if cortex.sink.0.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(cortex.sink.0.load(Ordering::SeqCst), 1);
    assert_eq!(cortex.accepted.load(Ordering::SeqCst), 1);
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
        &cortex.agent,
        &cortex.key.public(),
        &[],
    )
    .await
    .unwrap();
    // Handshaken, then silent (no heartbeat): the session must end with the idle timeout.
    let outcome = tokio::time::timeout(Duration::from_secs(5), cortex.outcomes.recv())
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
