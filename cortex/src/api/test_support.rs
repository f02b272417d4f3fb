//! The fixture of the HTTP surfaces' tests (the API's and the console's): a cortex's store,
//! audit log, node states and responder in a temporary folder, a router served on a loopback
//! port, and raw HTTP/1.1 requests to it.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::audit::AuditLog;
use crate::decide::NodeStates;
use crate::respond::{AgentLinks, Dispatcher, Playbooks, RespondConfig, Responder, ResponderParts};
use crate::store::{SqliteStore, Store};

/// What the API and the console serve from, as in a running cortex.
pub(crate) struct Fixture {
    /// Holds the store and the audit log; kept for the test's lifetime.
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn Store>,
    pub audit: Arc<AuditLog>,
    pub nodes: Arc<Mutex<NodeStates>>,
    pub respond: Arc<Responder>,
    /// Not run, but kept so that the responder's queue stays open.
    _dispatcher: Dispatcher,
}

impl Fixture {
    /// The default respond config and no playbooks.
    pub fn new() -> Self {
        Self::with(RespondConfig::default(), Playbooks::default())
    }

    /// A responder with `config` and `playbooks`.
    pub fn with(config: RespondConfig, playbooks: Playbooks) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open_with_key(&dir.path().join("c.db"), &[1; 32]).unwrap());
        let seed = zeroize::Zeroizing::new([2u8; 32]);
        let audit = Arc::new(AuditLog::open_with_key(&dir.path().join("a.db"), &seed, 8).unwrap());
        let nodes = Arc::new(Mutex::new(NodeStates::new(audit.clone(), Vec::new())));
        let (respond, dispatcher) = Responder::new(ResponderParts {
            config,
            playbooks,
            store: store.clone(),
            nodes: nodes.clone(),
            links: Arc::new(AgentLinks::default()),
            cortex_addr: None,
            key_rotation: None,
        })
        .unwrap();
        Fixture {
            dir,
            store,
            audit,
            nodes,
            respond,
            _dispatcher: dispatcher,
        }
    }
}

/// Serves `router` on a free loopback port; returns its address.
pub(crate) async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// One raw HTTP/1.1 request; the status line's code and the whole response text.
pub(crate) async fn request(addr: SocketAddr, raw: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(raw.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        (response[9..12].parse().unwrap(), response)
    })
    .await
    .unwrap()
}
