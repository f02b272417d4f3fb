//! Cortex side of a connection: handshake, allow-list, de-duplication, acks after storage,
//! and commands to the agent on the same connection.
//!
//! A session is a small pipeline: the reader hands each batch to the sink with
//! [`EventSink::submit`] and goes on reading, decrypting and handing over the next ones while
//! the earlier ones are written; an acker awaits each batch's [`Durable`] in order and only then
//! acknowledges it. At most [`MAX_UNACKED_BATCHES`] batches wait for the disk at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};

use super::dedup::{Dedup, DedupError};
use super::envelope::{self, AgentMessage, CommandStatus, EnvelopeError};
use crate::handshake::{self, HandshakeError};
use crate::keys::{AllowList, PublicKeyBytes, StaticKeypair};
use crate::noise::HandshakeMode;
use crate::transport::{FrameReader, FrameWriter, TransportConfig, TransportError};

/// Error type a sink may return; it ends the session without an ack.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Resolves once a batch handed to [`EventSink::submit`] is durable, or with the error that
/// kept it from being stored.
pub type Durable = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>;

/// Batches of one session that may wait for the disk at once; the reader pauses beyond this.
pub const MAX_UNACKED_BATCHES: usize = 8;

/// Who is on the other end, as established by the handshake and the allow-list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentIdentity {
    pub host_id: String,
    pub class: String,
    pub public_key: PublicKeyBytes,
}

/// Where the cortex stores what agents send. Acks are sent only once the data is durable.
/// Methods run on the session task, so a slow sink slows only that agent.
pub trait EventSink: Send {
    /// Highest sequence number of `agent` already stored (0 if none); delivery resumes after it.
    fn stored_up_to(&mut self, agent: &AgentIdentity) -> Result<u64, SinkError>;
    /// Stores events `first_seq..first_seq + events.len()`, none of which was stored before;
    /// returns once they are durable.
    fn store(
        &mut self,
        agent: &AgentIdentity,
        first_seq: u64,
        events: &[&[u8]],
    ) -> Result<(), SinkError>;
    /// Starts storing events `first_seq..first_seq + events.len()` (none stored before) and
    /// returns what resolves once they are durable, so that the session reads the next batch
    /// meanwhile. Batches of one agent must become durable in the order they were submitted:
    /// if one fails, no later one may be stored. By default this is [`EventSink::store`].
    fn submit(
        &mut self,
        agent: &AgentIdentity,
        first_seq: u64,
        events: &[&[u8]],
    ) -> Result<Durable, SinkError> {
        self.store(agent, first_seq, events)?;
        Ok(stored())
    }
    /// The agent's outbox dropped `first_seq..=last_seq` (overflow); record the loss.
    fn record_loss(
        &mut self,
        agent: &AgentIdentity,
        first_seq: u64,
        last_seq: u64,
    ) -> Result<(), SinkError>;
    /// The outcome of a command sent with [`CommandSender::send`].
    fn command_result(
        &mut self,
        agent: &AgentIdentity,
        id: u64,
        status: CommandStatus,
        body: &[u8],
    ) -> Result<(), SinkError>;
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("agent {host_id} sent a malformed message: {source}")]
    Envelope {
        host_id: String,
        source: EnvelopeError,
    },
    #[error("agent {host_id}: {source}")]
    Sequence { host_id: String, source: DedupError },
    #[error("sink failed for agent {host_id}: {source}")]
    Sink { host_id: String, source: SinkError },
    #[error("the cortex closed the session of agent {host_id}: {reason}")]
    ClosedByCortex { host_id: String, reason: String },
}

/// Cortex-side settings shared by all sessions.
#[derive(Clone)]
pub struct ServerConfig {
    pub keypair: StaticKeypair,
    /// Shared so the cortex can revoke keys while running; new handshakes see the change.
    pub allow_list: Arc<RwLock<AllowList>>,
    /// Refuse agents offering only the classical (non-ML-KEM) handshake.
    pub require_hybrid: bool,
    pub transport: TransportConfig,
    pub handshake_timeout: Duration,
}

/// What is durable already.
fn stored() -> Durable {
    Box::pin(std::future::ready(Ok(())))
}

/// Sends authenticated commands to one connected agent.
#[derive(Clone)]
pub struct CommandSender {
    tx: mpsc::Sender<Vec<u8>>,
}

impl CommandSender {
    /// Queues a command; fails if the session has ended.
    pub async fn send(&self, id: u64, body: &[u8]) -> Result<(), SessionClosed> {
        self.tx
            .send(envelope::encode_command(id, body))
            .await
            .map_err(|_| SessionClosed)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the agent session has ended")]
pub struct SessionClosed;

/// Ends a running [`Session`] from outside, e.g. when its key is revoked or rotated. The
/// session stops at its next await point; batches already stored stay stored, and what was
/// not acknowledged is re-sent by the agent on its next connection (and de-duplicated).
#[derive(Clone, Debug)]
pub struct SessionCloser {
    tx: Arc<watch::Sender<Option<String>>>,
}

impl SessionCloser {
    /// Asks the session to end, logging `reason`. Closing twice keeps the first reason.
    pub fn close(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.tx.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
    }
}

/// Resolves with the reason once [`SessionCloser::close`] was called.
async fn closed(mut rx: watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(reason) = rx.borrow_and_update().clone() {
            return reason;
        }
        if rx.changed().await.is_err() {
            // Every closer is gone: nobody can close the session any more.
            std::future::pending::<()>().await;
        }
    }
}

/// An authenticated agent connection, ready to run.
pub struct Session {
    identity: AgentIdentity,
    mode: HandshakeMode,
    dedup: Dedup,
    reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
    outgoing_tx: mpsc::Sender<Vec<u8>>,
    outgoing_rx: mpsc::Receiver<Vec<u8>>,
    closer: SessionCloser,
    close_rx: watch::Receiver<Option<String>>,
}

/// Runs the handshake on a fresh connection. The agent must be enrolled and not revoked;
/// its resume point comes from `sink`.
pub async fn accept<K: EventSink>(
    mut stream: TcpStream,
    config: &ServerConfig,
    sink: &mut K,
) -> Result<Session, ServerError> {
    stream.set_nodelay(true).map_err(TransportError::Io)?;
    let mut resume_error = None;
    let mut stored_up_to = 0;
    let exchange = handshake::respond(
        &mut stream,
        &config.keypair,
        config.require_hybrid,
        |key| {
            // A poisoned lock still holds a consistent list (writers replace it whole).
            let allow_list = config
                .allow_list
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let entry = allow_list.authorize(key)?;
            Ok(AgentIdentity {
                host_id: entry.host_id.clone(),
                class: entry.class.clone(),
                public_key: *key,
            })
        },
        |identity| {
            match sink.stored_up_to(identity) {
                Ok(seq) => stored_up_to = seq,
                Err(e) => resume_error = Some(e),
            }
            envelope::encode_resume(stored_up_to)
        },
    );
    let accepted = tokio::time::timeout(config.handshake_timeout, exchange)
        .await
        .map_err(|_| ServerError::HandshakeTimeout(config.handshake_timeout))??;
    if let Some(source) = resume_error {
        return Err(ServerError::Sink {
            host_id: accepted.peer.host_id,
            source,
        });
    }
    let (read_half, write_half) = stream.into_split();
    let (outgoing_tx, outgoing_rx) = mpsc::channel(1024);
    let (close_tx, close_rx) = watch::channel(None);
    tracing::info!(
        host_id = %accepted.peer.host_id,
        key_id = %accepted.peer.public_key.key_id(),
        mode = ?accepted.mode,
        resume_after = stored_up_to,
        "agent connected"
    );
    Ok(Session {
        identity: accepted.peer,
        mode: accepted.mode,
        dedup: Dedup::new(stored_up_to),
        reader: FrameReader::new(read_half, accepted.keys.recv, &config.transport),
        writer: FrameWriter::new(write_half, accepted.keys.send, config.transport.clone()),
        outgoing_tx,
        outgoing_rx,
        closer: SessionCloser {
            tx: Arc::new(close_tx),
        },
        close_rx,
    })
}

impl Session {
    pub fn identity(&self) -> &AgentIdentity {
        &self.identity
    }

    pub fn mode(&self) -> HandshakeMode {
        self.mode
    }

    pub fn command_sender(&self) -> CommandSender {
        CommandSender {
            tx: self.outgoing_tx.clone(),
        }
    }

    /// A handle that ends this session from outside.
    pub fn closer(&self) -> SessionCloser {
        self.closer.clone()
    }

    /// Serves the agent until it disconnects (`Ok`) or breaks the protocol (`Err`).
    pub async fn run<K: EventSink>(self, sink: &mut K) -> Result<(), ServerError> {
        let Session {
            identity,
            mut dedup,
            mut reader,
            mut writer,
            outgoing_tx,
            mut outgoing_rx,
            close_rx,
            ..
        } = self;
        let writer_task = tokio::spawn(async move {
            while let Some(message) = outgoing_rx.recv().await {
                writer.send(&message).await?;
            }
            Ok::<(), TransportError>(())
        });
        let (unacked_tx, unacked_rx) = mpsc::channel(MAX_UNACKED_BATCHES);
        let mut acker = tokio::spawn(ack_loop(
            identity.host_id.clone(),
            unacked_rx,
            outgoing_tx.clone(),
        ));
        let result = tokio::select! {
            result = read_loop(&identity, &mut dedup, &mut reader, &outgoing_tx, &unacked_tx, sink) => result,
            joined = &mut acker => match joined {
                Ok(result) => result,
                Err(_) => Err(ServerError::Transport(TransportError::Closed)),
            },
            reason = closed(close_rx) => Err(ServerError::ClosedByCortex {
                host_id: identity.host_id.clone(),
                reason,
            }),
        };
        acker.abort();
        writer_task.abort();
        match result {
            Err(ServerError::Transport(TransportError::Closed)) => {
                tracing::info!(host_id = %identity.host_id, "agent disconnected");
                Ok(())
            }
            other => other,
        }
    }
}

/// A submitted batch (or loss record) and the seq its ack names once it is durable.
struct Unacked {
    up_to_seq: u64,
    durable: Durable,
}

/// Acknowledges each batch once it is durable, in submission order. A batch that failed ends
/// the session without its ack (nor any later one), and the agent re-sends from there.
async fn ack_loop(
    host_id: String,
    mut unacked: mpsc::Receiver<Unacked>,
    outgoing: mpsc::Sender<Vec<u8>>,
) -> Result<(), ServerError> {
    while let Some(Unacked { up_to_seq, durable }) = unacked.recv().await {
        durable.await.map_err(|source| ServerError::Sink {
            host_id: host_id.clone(),
            source,
        })?;
        if outgoing
            .send(envelope::encode_ack(up_to_seq))
            .await
            .is_err()
        {
            return Err(ServerError::Transport(TransportError::Closed));
        }
    }
    // The reader has ended; the session ends with it.
    std::future::pending().await
}

async fn read_loop<K: EventSink>(
    identity: &AgentIdentity,
    dedup: &mut Dedup,
    reader: &mut FrameReader<OwnedReadHalf>,
    outgoing: &mpsc::Sender<Vec<u8>>,
    unacked: &mpsc::Sender<Unacked>,
    sink: &mut K,
) -> Result<(), ServerError> {
    let host_id = || identity.host_id.clone();
    loop {
        let message = reader.recv().await?;
        let decoded = AgentMessage::decode(message).map_err(|source| ServerError::Envelope {
            host_id: host_id(),
            source,
        })?;
        let sink_err = |source| ServerError::Sink {
            host_id: host_id(),
            source,
        };
        let seq_err = |source| ServerError::Sequence {
            host_id: host_id(),
            source,
        };
        let durable = match decoded {
            AgentMessage::Events { first_seq, events } => {
                let count = events.len() as u64;
                let skip = dedup.already_stored(first_seq, count).map_err(seq_err)?;
                if skip < count {
                    let new = &events[skip as usize..];
                    let durable = sink
                        .submit(identity, first_seq + skip, new)
                        .map_err(sink_err)?;
                    dedup.advance_to(first_seq + count - 1);
                    durable
                } else {
                    stored()
                }
            }
            AgentMessage::Lost {
                first_seq,
                last_seq,
            } => {
                let count = last_seq - first_seq + 1;
                let skip = dedup.already_stored(first_seq, count).map_err(seq_err)?;
                if skip < count {
                    sink.record_loss(identity, first_seq + skip, last_seq)
                        .map_err(sink_err)?;
                    dedup.advance_to(last_seq);
                }
                stored()
            }
            AgentMessage::CommandResult { id, status, body } => {
                sink.command_result(identity, id, status, body)
                    .map_err(sink_err)?;
                continue;
            }
        };
        // Acks go through the acker even when nothing waits, so that they stay in order.
        let batch = Unacked {
            up_to_seq: dedup.stored_up_to(),
            durable,
        };
        if unacked.send(batch).await.is_err() || outgoing.is_closed() {
            return Err(ServerError::Transport(TransportError::Closed));
        }
    }
}
