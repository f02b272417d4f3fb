//! Agent side: keeps a connection to the cortex, streams the outbox, handles acks and commands.
//!
//! After every (re)connect the cortex tells the agent, inside handshake message 2, the highest
//! sequence number it already stored; the client acknowledges that much in the outbox and
//! streams everything after it. Connection failures are retried with exponential backoff and
//! jitter; the backoff resets after a successful handshake.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc};

use super::envelope::{
    self, CommandStatus, CortexMessage, EVENT_OVERHEAD, EVENTS_HEADER_LEN, EnvelopeError,
};
use super::outbox::{Appended, DropCounters, Outbox, OutboxError, PendingSync, ReadBatch};
use crate::handshake::{self, HandshakeError};
use crate::keys::{KeySlot, PublicKeyBytes, StaticKeypair};
use crate::noise::HandshakeMode;
use crate::transport::{FrameReader, FrameWriter, TransportConfig, TransportError};

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `host:port` of the cortex.
    pub cortex_addr: String,
    /// Further `host:port`s of the same cortex (other gateway replicas): a connection that
    /// cannot be made moves on to the next address, round-robin from `cortex_addr`.
    pub fallback_addrs: Vec<String>,
    /// The pinned cortex static public key.
    pub cortex_key: PublicKeyBytes,
    /// The agent's static keypair; replaceable while running (key rotation): each handshake
    /// uses the key in the slot at that moment.
    pub keypair: KeySlot,
    pub mode: HandshakeMode,
    pub transport: TransportConfig,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Events per Events message.
    pub max_batch_events: usize,
    /// Approximate event bytes per Events message (bounded by the frame limit too).
    pub max_batch_bytes: usize,
    /// Events sent but not yet acknowledged before the client waits for acks.
    pub max_in_flight: u64,
}

impl ClientConfig {
    pub fn new(
        cortex_addr: impl Into<String>,
        cortex_key: PublicKeyBytes,
        keypair: StaticKeypair,
    ) -> Self {
        ClientConfig {
            cortex_addr: cortex_addr.into(),
            fallback_addrs: Vec::new(),
            cortex_key,
            keypair: KeySlot::new(keypair),
            mode: HandshakeMode::Hybrid,
            transport: TransportConfig::default(),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            max_batch_events: 4096,
            max_batch_bytes: 512 << 10,
            max_in_flight: 65536,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to cortex at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to cortex at {0} timed out")]
    ConnectTimeout(String),
    #[error("handshake with cortex failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("handshake with cortex timed out")]
    HandshakeTimeout,
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cortex sent a malformed message: {0}")]
    Envelope(#[from] EnvelopeError),
    #[error("cortex acknowledged seq {acked} but only {sent} was sent")]
    AckBeyondSent { acked: u64, sent: u64 },
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("outbox lock is poisoned")]
    OutboxPoisoned,
    #[error("event of {len} bytes exceeds the per-event limit of {max} bytes")]
    EventTooLarge { len: usize, max: usize },
}

/// A command result the agent sends without being asked: the command id it answers, its
/// status and body.
pub type UnaskedResult = (u64, CommandStatus, Vec<u8>);

/// Executes commands received from the cortex. Runs on the connection's reader task.
pub trait CommandHandler: Send + 'static {
    fn execute(&mut self, id: u64, body: &[u8]) -> (CommandStatus, Vec<u8>);

    /// A session authenticated with `key` is up: results to send on it at once, before any
    /// event (the final report of a key rotation, which that handshake completes).
    fn session_up(&mut self, _key: &PublicKeyBytes) -> Vec<UnaskedResult> {
        Vec::new()
    }
}

/// Shared state between the agent's producers and the client.
struct Shared {
    outbox: Mutex<Outbox>,
    appended: Notify,
    limits: BatchLimits,
}

/// Sizes that guarantee any batch the client builds fits in one transport message:
/// at most `read_bytes - 1` bytes of events, plus one more event of at most `max_event`,
/// plus per-event and header overhead, is at most the message limit.
#[derive(Clone, Copy, Debug)]
struct BatchLimits {
    read_bytes: usize,
    max_event: usize,
}

impl BatchLimits {
    fn new(config: &ClientConfig) -> Self {
        let half = config.transport.max_message_len() / 2;
        let overhead = config.max_batch_events.saturating_mul(EVENT_OVERHEAD) + EVENTS_HEADER_LEN;
        BatchLimits {
            read_bytes: config.max_batch_bytes.clamp(1, half.max(1)),
            max_event: half.saturating_sub(overhead),
        }
    }
}

impl Shared {
    fn outbox(&self) -> Result<MutexGuard<'_, Outbox>, ClientError> {
        self.outbox.lock().map_err(|_| ClientError::OutboxPoisoned)
    }
}

/// Cheap handle producers use to add events to the outbox.
#[derive(Clone)]
pub struct OutboxHandle {
    shared: Arc<Shared>,
}

impl OutboxHandle {
    /// Appends events durably (per the outbox fsync policy) and wakes the sender before the
    /// `fdatasync`, which runs without the outbox lock. Refuses the
    /// whole batch if an event is larger than one transport message can carry.
    pub fn append_batch<E: AsRef<[u8]>>(&self, events: &[E]) -> Result<Vec<Appended>, ClientError> {
        let (result, sync) = self.append_batch_deferred(events)?;
        if let Some(sync) = sync {
            sync.wait()?;
        }
        Ok(result)
    }

    /// [`OutboxHandle::append_batch`] that hands the final `fdatasync` to the caller, who may
    /// run it on another thread: the events are written and the sender woken, but they are
    /// durable only once the returned [`PendingSync`] (if any) is waited for.
    pub fn append_batch_deferred<E: AsRef<[u8]>>(
        &self,
        events: &[E],
    ) -> Result<(Vec<Appended>, Option<PendingSync>), ClientError> {
        let max = self.shared.limits.max_event;
        if let Some(big) = events.iter().find(|e| e.as_ref().len() > max) {
            return Err(ClientError::EventTooLarge {
                len: big.as_ref().len(),
                max,
            });
        }
        // The sync runs without the outbox lock: the sender sends meanwhile, and the command
        // reader (which acknowledges under that lock) is not held up by the disk.
        let appended = self.shared.outbox()?.append_batch_unsynced(events)?;
        self.shared.appended.notify_one();
        Ok(appended)
    }

    /// Overflow drop counters, for the agent's event_loss reporting.
    pub fn drops(&self) -> Result<DropCounters, ClientError> {
        Ok(self.shared.outbox()?.drops())
    }

    /// Events stored but not yet acknowledged by the cortex.
    pub fn unacked(&self) -> Result<u64, ClientError> {
        Ok(self.shared.outbox()?.unacked())
    }
}

pub struct Client {
    config: ClientConfig,
    shared: Arc<Shared>,
}

impl Client {
    pub fn new(config: ClientConfig, outbox: Outbox) -> Self {
        let limits = BatchLimits::new(&config);
        Client {
            config,
            shared: Arc::new(Shared {
                outbox: Mutex::new(outbox),
                appended: Notify::new(),
                limits,
            }),
        }
    }

    pub fn handle(&self) -> OutboxHandle {
        OutboxHandle {
            shared: self.shared.clone(),
        }
    }

    /// Connects, streams and reconnects until `shutdown` completes.
    pub async fn run_until<H, F>(self, handler: H, shutdown: F)
    where
        H: CommandHandler,
        F: Future<Output = ()>,
    {
        tokio::select! {
            () = self.reconnect_forever(handler) => {}
            () = shutdown => {}
        }
    }

    async fn reconnect_forever<H: CommandHandler>(self, handler: H) {
        let handler = Arc::new(Mutex::new(handler));
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let addrs: Vec<&str> = std::iter::once(&self.config.cortex_addr)
            .chain(&self.config.fallback_addrs)
            .map(String::as_str)
            .collect();
        let mut next = 0;
        loop {
            let mut connected = false;
            let key = self.config.keypair.public();
            let addr = addrs[next % addrs.len()];
            match self
                .connect_and_stream(addr, &handler, &mut connected)
                .await
            {
                Ok(()) => tracing::info!(addr, "cortex closed the connection"),
                Err(e) => tracing::warn!(addr, error = %e, "cortex connection failed"),
            }
            if connected {
                backoff.reset();
                if self.config.keypair.public() != key {
                    // A key rotation: the cortex took the new key and ended the old session.
                    continue;
                }
            } else {
                // This address is down: the next attempt goes to the next one.
                next += 1;
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    async fn connect_and_stream<H: CommandHandler>(
        &self,
        addr: &str,
        handler: &Arc<Mutex<H>>,
        connected: &mut bool,
    ) -> Result<(), ClientError> {
        let cfg = &self.config;
        let mut stream = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::ConnectTimeout(addr.to_owned()))?
            .map_err(|source| ClientError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        stream.set_nodelay(true).map_err(TransportError::Io)?;
        if let Some(limit) = cfg.transport.idle_timeout {
            set_user_timeout(&stream, limit).map_err(TransportError::Io)?;
        }
        let keypair = cfg.keypair.current();
        let exchange = handshake::initiate(&mut stream, cfg.mode, &keypair, &cfg.cortex_key, &[]);
        let (keys, payload) = tokio::time::timeout(cfg.handshake_timeout, exchange)
            .await
            .map_err(|_| ClientError::HandshakeTimeout)??;
        let resume_after = envelope::decode_resume(&payload)?;
        self.shared.outbox()?.acknowledge(resume_after)?;
        *connected = true;
        tracing::info!(addr, resume_after, "connected to cortex");

        let (read_half, write_half) = stream.into_split();
        // The cortex speaks only to ack or command, so silence from it is normal; a dead cortex
        // shows as a heartbeat its host does not acknowledge (TCP_USER_TIMEOUT, set above).
        let reader = FrameReader::new(read_half, keys.recv, &cfg.transport).with_idle_timeout(None);
        let mut writer = FrameWriter::new(write_half, keys.send, cfg.transport.clone());
        let unasked = match handler.lock() {
            Ok(mut handler) => handler.session_up(&keypair.public()),
            Err(_) => Vec::new(),
        };
        for (id, status, body) in unasked {
            writer
                .send(&envelope::encode_command_result(id, status, &body))
                .await?;
        }
        let progress = Arc::new(Progress {
            acked: AtomicU64::new(resume_after),
            sent: AtomicU64::new(resume_after),
            ack_notify: Notify::new(),
        });
        let (results_tx, results_rx) = mpsc::channel(64);
        let mut reader_task = tokio::spawn(read_loop(
            reader,
            self.shared.clone(),
            progress.clone(),
            handler.clone(),
            results_tx,
        ));
        let result = self
            .write_loop(writer, &progress, results_rx, &mut reader_task)
            .await;
        reader_task.abort();
        result
    }

    async fn write_loop(
        &self,
        mut writer: FrameWriter<OwnedWriteHalf>,
        progress: &Progress,
        mut results: mpsc::Receiver<Vec<u8>>,
        reader_task: &mut tokio::task::JoinHandle<Result<(), ClientError>>,
    ) -> Result<(), ClientError> {
        let cfg = &self.config;
        let max_bytes = self.shared.limits.read_bytes;
        loop {
            while let Ok(result) = results.try_recv() {
                writer.send(&result).await?;
            }
            let next = progress.sent.load(Ordering::Acquire) + 1;
            let in_flight = next - 1 - progress.acked.load(Ordering::Acquire);
            if in_flight < cfg.max_in_flight {
                let batch = self
                    .shared
                    .outbox()?
                    .read(next, cfg.max_batch_events, max_bytes)?;
                match batch {
                    ReadBatch::Lost {
                        first_seq,
                        last_seq,
                    } => {
                        tracing::warn!(
                            first_seq,
                            last_seq,
                            "reporting events dropped by outbox overflow"
                        );
                        writer
                            .send(&envelope::encode_lost(first_seq, last_seq))
                            .await?;
                        progress.sent.store(last_seq, Ordering::Release);
                        continue;
                    }
                    ReadBatch::Events { first_seq, events } => {
                        writer
                            .send_with(|buf| envelope::encode_events(buf, first_seq, &events))
                            .await?;
                        progress
                            .sent
                            .store(first_seq + events.len() as u64 - 1, Ordering::Release);
                        continue;
                    }
                    ReadBatch::Empty => {}
                }
            }
            tokio::select! {
                () = self.shared.appended.notified() => {}
                () = progress.ack_notify.notified() => {}
                Some(result) = results.recv() => writer.send(&result).await?,
                () = tokio::time::sleep_until(writer.heartbeat_due_at()) => writer.heartbeat().await?,
                joined = &mut *reader_task => {
                    return match joined {
                        Ok(result) => result,
                        Err(_) => Err(ClientError::Transport(TransportError::Closed)),
                    };
                }
            }
        }
    }
}

/// What the writer sent and the reader saw acknowledged, for flow control.
struct Progress {
    acked: AtomicU64,
    sent: AtomicU64,
    ack_notify: Notify,
}

async fn read_loop<H: CommandHandler>(
    mut reader: FrameReader<OwnedReadHalf>,
    shared: Arc<Shared>,
    progress: Arc<Progress>,
    handler: Arc<Mutex<H>>,
    results: mpsc::Sender<Vec<u8>>,
) -> Result<(), ClientError> {
    loop {
        let message = reader.recv().await?;
        match CortexMessage::decode(message)? {
            CortexMessage::Ack { up_to_seq } => {
                let sent = progress.sent.load(Ordering::Acquire);
                if up_to_seq > sent {
                    return Err(ClientError::AckBeyondSent {
                        acked: up_to_seq,
                        sent,
                    });
                }
                shared.outbox()?.acknowledge(up_to_seq)?;
                progress.acked.fetch_max(up_to_seq, Ordering::AcqRel);
                progress.ack_notify.notify_one();
            }
            CortexMessage::Command { id, body } => {
                let (status, output) = match handler.lock() {
                    Ok(mut h) => h.execute(id, body),
                    Err(_) => (CommandStatus::Failed, b"command handler poisoned".to_vec()),
                };
                let reply = envelope::encode_command_result(id, status, &output);
                if results.send(reply).await.is_err() {
                    return Err(ClientError::Transport(TransportError::Closed));
                }
            }
        }
    }
}

/// Makes the kernel abort the connection (ETIMEDOUT on the next read or write) when data sent
/// on it stays unacknowledged for `limit`: with heartbeats flowing, this is how the agent
/// notices a cortex host that vanished without closing the connection.
fn set_user_timeout(stream: &TcpStream, limit: Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let millis = libc::c_uint::try_from(limit.as_millis()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: a valid socket descriptor, and an option value of the size passed.
    let status = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&raw const millis).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if status != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Exponential backoff with equal jitter: each delay is in [d/2, d], d doubling up to `max`.
struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }

    fn next_delay(&mut self) -> Duration {
        let ceiling = self.current.min(self.max);
        self.current = (self.current * 2).min(self.max);
        let half = ceiling / 2;
        let jitter_ns = half.as_nanos() as u64;
        let extra = if jitter_ns == 0 {
            0
        } else {
            OsRng.next_u64() % (jitter_ns + 1)
        };
        half + Duration::from_nanos(extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        let ceilings = [100, 200, 400, 800, 1000, 1000];
        for (delay, ceiling) in delays.iter().zip(ceilings) {
            let ceiling = Duration::from_millis(ceiling);
            assert!(
                *delay >= ceiling / 2 && *delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
