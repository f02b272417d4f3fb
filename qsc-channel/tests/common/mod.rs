//! What the channel's loopback tests share: a cortex key with one allowed agent, a server that
//! runs every session it accepts, outboxes, clients of that agent, and waiting for a condition.

// Each test crate uses the part it needs.
#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use qsc_channel::delivery::{
    self, Client, ClientConfig, CommandSender, EventSink, FsyncPolicy, Outbox, OutboxConfig,
    OverflowPolicy, ServerConfig, ServerError,
};
use qsc_channel::keys::{AgentEntry, AllowList, StaticKeypair};
use qsc_channel::transport::TransportConfig;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The cortex's key, the agent's key, and a server config that allows that agent.
pub struct Setup {
    pub cortex: StaticKeypair,
    pub agent: StaticKeypair,
    pub server: ServerConfig,
}

impl Setup {
    /// The agent's client config for the cortex at `addr`, with the client defaults.
    pub fn client_config(&self, addr: impl Into<String>) -> ClientConfig {
        ClientConfig::new(addr, self.cortex.public(), self.agent.clone())
    }
}

/// Fresh keys; the agent `web-01` is allowed (or listed as revoked) and sessions use
/// `transport`.
pub fn setup(revoked: bool, transport: TransportConfig) -> Setup {
    let cortex = StaticKeypair::generate();
    let agent = StaticKeypair::generate();
    let allow = AllowList::new(vec![AgentEntry {
        host_id: "web-01".into(),
        class: "prod".into(),
        public_key: agent.public(),
        revoked,
    }]);
    let server = ServerConfig {
        keypair: cortex.clone(),
        allow_list: Arc::new(RwLock::new(allow)),
        require_hybrid: true,
        transport,
        handshake_timeout: Duration::from_secs(5),
    };
    Setup {
        cortex,
        agent,
        server,
    }
}

/// What a server started by [`spawn_server`] reports.
pub struct Served {
    /// One entry per finished session (or refused connection), in order.
    pub outcomes: mpsc::UnboundedReceiver<Result<(), ServerError>>,
    /// The command sender of each session that got through its handshake.
    pub senders: mpsc::UnboundedReceiver<CommandSender>,
    /// How many connections the listener accepted.
    pub accepted: Arc<AtomicU64>,
}

/// Serves every connection on `listener` with `config`, each session with a clone of `sink`.
pub fn spawn_server<S: EventSink + Clone + 'static>(
    listener: TcpListener,
    config: ServerConfig,
    sink: S,
) -> Served {
    let (outcome_tx, outcomes) = mpsc::unbounded_channel();
    let (sender_tx, senders) = mpsc::unbounded_channel();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let (mut sink, config) = (sink.clone(), config.clone());
            let (outcome_tx, sender_tx) = (outcome_tx.clone(), sender_tx.clone());
            tokio::spawn(async move {
                let outcome = match delivery::accept(stream, &config, &mut sink).await {
                    Ok(session) => {
                        let _ = sender_tx.send(session.command_sender());
                        session.run(&mut sink).await
                    }
                    Err(e) => Err(e),
                };
                let _ = outcome_tx.send(outcome);
            });
        }
    });
    Served {
        outcomes,
        senders,
        accepted,
    }
}

/// An outbox in `dir` that never syncs.
pub fn outbox(dir: &Path, max_bytes: u64, overflow: OverflowPolicy) -> Outbox {
    Outbox::open(OutboxConfig {
        dir: dir.to_path_buf(),
        max_bytes,
        segment_bytes: (max_bytes / 4).max(1024),
        overflow,
        fsync: FsyncPolicy::Never,
    })
    .unwrap()
}

/// A client with `config` and a 16 MiB outbox in `dir` that drops the newest events when full.
pub fn client(config: ClientConfig, dir: &Path) -> Client {
    Client::new(config, outbox(dir, 1 << 24, OverflowPolicy::DropNewest))
}

/// Polls `done` every 5 ms for up to 10 s; panics naming `what` if it never holds.
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}
