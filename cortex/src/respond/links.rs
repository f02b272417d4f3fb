//! Which guardian-alpha session of each host takes commands, and the answers they owe.
//!
//! Ingest registers each alpha session's [`CommandSender`] when it starts and drops it when it
//! ends, and hands every command result to [`AgentLinks::complete`]; the dispatcher sends
//! through a [`CommandRoute`] and awaits the answer: the links themselves when this process
//! holds the agents' sessions, or the bus (`crate::bus::commands`) when another replica does.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use qsc_channel::delivery::{CommandSender, CommandStatus};
use tokio::sync::{Notify, oneshot};

/// A command's answer: the agent's status and its body.
pub type CommandAnswer = (CommandStatus, Vec<u8>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("no guardian-alpha session of host {host} is connected")]
    NotConnected { host: String },
    #[error("the session of host {host} ended before the command was sent")]
    SessionClosed { host: String },
    #[error("host {host} did not answer command {id} within {timeout:?}")]
    Timeout {
        host: String,
        id: u64,
        timeout: Duration,
    },
    #[error("the session of host {host} ended before it answered command {id}")]
    NoAnswer { host: String, id: u64 },
    #[error("no gateway holds a session of host {host}")]
    NoGateway { host: String },
    #[error("the command to host {host} could not go through the bus: {reason}")]
    Bus { host: String, reason: String },
}

/// The answer to one command, or why there is none.
pub type RouteResult = Result<CommandAnswer, LinkError>;

/// Where the dispatcher sends a command for a host's guardian-alpha and awaits its answer.
pub trait CommandRoute: Send + Sync {
    /// Sends command `id` with `body` to the host's agent and waits up to `timeout` for it.
    fn send<'a>(
        &'a self,
        host: &'a str,
        id: u64,
        body: &'a [u8],
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = RouteResult> + Send + 'a>>;
}

/// Registration of one session; only it can remove itself (a newer session may have replaced
/// it meanwhile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTicket(u64);

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, (SessionTicket, CommandSender)>,
    waiting: HashMap<u64, (String, oneshot::Sender<CommandAnswer>)>,
}

/// Shared between ingest (sessions, answers) and the dispatcher (commands).
#[derive(Clone, Default)]
pub struct AgentLinks {
    inner: Arc<Mutex<Inner>>,
    tickets: Arc<AtomicU64>,
    /// Woken when a session registers or unregisters (a gateway follows its hosts on the bus).
    changed: Arc<Notify>,
}

impl AgentLinks {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update replaces whole entries, so a poisoned map is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The host's guardian-alpha session starts taking commands (replacing an older one).
    pub fn register(&self, host: &str, sender: CommandSender) -> SessionTicket {
        let ticket = SessionTicket(self.tickets.fetch_add(1, Ordering::Relaxed));
        self.lock()
            .sessions
            .insert(host.to_owned(), (ticket, sender));
        self.changed.notify_one();
        ticket
    }

    /// The session of `ticket` ended.
    pub fn unregister(&self, host: &str, ticket: SessionTicket) {
        let mut inner = self.lock();
        if inner.sessions.get(host).is_some_and(|(t, _)| *t == ticket) {
            inner.sessions.remove(host);
            self.changed.notify_one();
        }
    }

    /// Whether the host has a session taking commands.
    pub fn is_connected(&self, host: &str) -> bool {
        self.lock().sessions.contains_key(host)
    }

    /// The hosts with a session taking commands.
    pub fn connected_hosts(&self) -> Vec<String> {
        self.lock().sessions.keys().cloned().collect()
    }

    /// Returns once a session registered or unregistered since the last call (one watcher).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// An agent answered command `id`; returns whether someone was waiting for it.
    pub fn complete(&self, host: &str, id: u64, status: CommandStatus, body: &[u8]) -> bool {
        let waiter = {
            let mut inner = self.lock();
            match inner.waiting.get(&id) {
                Some((expected, _)) if expected == host => inner.waiting.remove(&id),
                _ => None,
            }
        };
        match waiter {
            Some((_, reply)) => reply.send((status, body.to_vec())).is_ok(),
            None => false,
        }
    }

    /// Sends command `id` to the host's agent and waits up to `timeout` for its answer.
    pub async fn send(
        &self,
        host: &str,
        id: u64,
        body: &[u8],
        timeout: Duration,
    ) -> Result<CommandAnswer, LinkError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let sender = {
            let mut inner = self.lock();
            let Some((_, sender)) = inner.sessions.get(host) else {
                return Err(LinkError::NotConnected { host: host.into() });
            };
            let sender = sender.clone();
            inner.waiting.insert(id, (host.to_owned(), reply_tx));
            sender
        };
        let outcome = match sender.send(id, body).await {
            Err(_) => Err(LinkError::SessionClosed { host: host.into() }),
            Ok(()) => match tokio::time::timeout(timeout, reply_rx).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(_)) => Err(LinkError::NoAnswer {
                    host: host.into(),
                    id,
                }),
                Err(_) => Err(LinkError::Timeout {
                    host: host.into(),
                    id,
                    timeout,
                }),
            },
        };
        self.lock().waiting.remove(&id);
        outcome
    }
}

impl CommandRoute for AgentLinks {
    fn send<'a>(
        &'a self,
        host: &'a str,
        id: u64,
        body: &'a [u8],
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = RouteResult> + Send + 'a>> {
        Box::pin(AgentLinks::send(self, host, id, body, timeout))
    }
}
