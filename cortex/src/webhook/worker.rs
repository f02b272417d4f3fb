//! The delivery worker: a thread that owns the persisted queue and the HTTP client.
//!
//! [`WebhookSender::enqueue`] renders an alert once per destination and hands each message to
//! the worker through a bounded channel without ever waiting; a full channel drops the message
//! and counts it. The worker writes every message to the queue file before its first attempt,
//! so a restart resumes pending deliveries (messages still in the channel at a crash are lost
//! and were counted as enqueued but never as sent). Each attempt is signed afresh (new
//! `webhook-timestamp`) under the same `webhook-id`.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use serde::Serialize;
use thiserror::Error;
use url::Url;

use super::backoff::{full_jitter, parse_retry_after, random_u64};
use super::config::{DeliverySettings, Destination, ValidConfig};
use super::guard::DestinationGuard;
use super::payload::Alert;
use super::queue::{DeadLetter, Delivery, DeliveryQueue, QueueError};

/// Deliveries fetched from the queue per round.
const DUE_BATCH: usize = 64;
/// Longest idle wait of the worker between queue checks.
const IDLE_WAIT: Duration = Duration::from_secs(60);
/// Most response body bytes read (and discarded) per attempt.
const MAX_RESPONSE_BODY: u64 = 64 * 1024;

/// Delivery counters, for `/metrics`. All only ever increase.
#[derive(Debug, Default)]
pub struct WebhookCounters {
    /// Messages handed to the worker (one per destination per alert).
    pub enqueued: AtomicU64,
    /// Messages dropped because the hand-off queue or the queue file (`max_pending`) was full.
    pub overflow: AtomicU64,
    /// HTTP attempts made.
    pub attempts: AtomicU64,
    /// Messages delivered (2xx).
    pub sent: AtomicU64,
    /// Failed attempts rescheduled for a retry.
    pub retried: AtomicU64,
    /// Messages given up on and moved to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Messages whose destination the guard refused (also dead-lettered).
    pub refused: AtomicU64,
    /// Dead letters deleted because more than `max_dead_letters` were kept.
    pub dead_letters_pruned: AtomicU64,
    /// Queue file failures (a message that could not be persisted is lost and counted here).
    pub queue_errors: AtomicU64,
}

/// A point-in-time copy of [`WebhookCounters`] (same fields, same meanings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CountersSnapshot {
    pub enqueued: u64,
    pub overflow: u64,
    pub attempts: u64,
    pub sent: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub refused: u64,
    pub dead_letters_pruned: u64,
    pub queue_errors: u64,
}

impl WebhookCounters {
    /// Reads every counter.
    pub fn snapshot(&self) -> CountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            enqueued: get(&self.enqueued),
            overflow: get(&self.overflow),
            attempts: get(&self.attempts),
            sent: get(&self.sent),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            refused: get(&self.refused),
            dead_letters_pruned: get(&self.dead_letters_pruned),
            queue_errors: get(&self.queue_errors),
        }
    }
}

impl CountersSnapshot {
    /// Prometheus text exposition, one `cortex_webhook_<counter>_total` per field.
    pub fn render(&self) -> String {
        let counters = [
            (
                "enqueued",
                self.enqueued,
                "messages handed to the delivery worker",
            ),
            (
                "overflow",
                self.overflow,
                "messages dropped because a queue was full",
            ),
            ("attempts", self.attempts, "HTTP attempts made"),
            ("sent", self.sent, "messages delivered (2xx)"),
            ("retried", self.retried, "failed attempts rescheduled"),
            (
                "dead_lettered",
                self.dead_lettered,
                "messages moved to the dead-letter queue",
            ),
            (
                "refused",
                self.refused,
                "messages whose destination the guard refused",
            ),
            (
                "dead_letters_pruned",
                self.dead_letters_pruned,
                "dead letters pruned",
            ),
            ("queue_errors", self.queue_errors, "queue file failures"),
        ];
        let mut text = String::new();
        for (name, value, help) in counters {
            text.push_str(&format!(
                "# HELP cortex_webhook_{name}_total Webhook {help}.\n\
                 # TYPE cortex_webhook_{name}_total counter\n\
                 cortex_webhook_{name}_total {value}\n"
            ));
        }
        text
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Why the sender could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("cannot start the webhook worker thread: {0}")]
    Thread(std::io::Error),
}

/// Why (part of) an alert was not queued.
#[derive(Debug, Error)]
pub enum EnqueueError {
    #[error("webhook queue full: {dropped} of {total} messages dropped (queued: {queued:?})")]
    Overflow {
        dropped: usize,
        total: usize,
        queued: Vec<String>,
    },
    #[error("the webhook worker has stopped")]
    Stopped,
    #[error("rendering the alert for destination `{destination}`: {source}")]
    Render {
        destination: String,
        source: serde_json::Error,
    },
    #[error("no randomness for a webhook-id: {0}")]
    Random(getrandom::Error),
}

enum Command {
    Deliver(Delivery),
    Wake,
}

/// The handle the pipeline holds: enqueue alerts, read counters, manage dead letters.
/// Dropping it stops the worker after it persisted what was handed to it.
pub struct WebhookSender {
    tx: Option<Sender<Command>>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
    counters: Arc<WebhookCounters>,
    destinations: Vec<Destination>,
    admin: Mutex<DeliveryQueue>,
}

impl WebhookSender {
    /// Opens the queue file and starts the worker thread; pending deliveries resume.
    pub fn start(config: &ValidConfig) -> Result<Self, StartError> {
        let counters = Arc::new(WebhookCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::bounded(config.settings.queue_bound);
        let worker = Worker {
            rx,
            stop: Arc::clone(&stop),
            queue: DeliveryQueue::open(&config.queue_path)?,
            clients: config
                .destinations
                .iter()
                .map(|d| (d.name.clone(), Client::new(d.clone(), &config.settings)))
                .collect(),
            guard: DestinationGuard::new(&config.destinations),
            settings: config.settings,
            counters: Arc::clone(&counters),
            pending: Cell::new(0),
        };
        let admin = Mutex::new(DeliveryQueue::open(&config.queue_path)?);
        let handle = std::thread::Builder::new()
            .name("qsc-webhook".into())
            .spawn(move || worker.run())
            .map_err(StartError::Thread)?;
        Ok(Self {
            tx: Some(tx),
            stop,
            worker: Some(handle),
            counters,
            destinations: config.destinations.clone(),
            admin,
        })
    }

    /// Queues an alert for every destination without blocking. Returns the webhook-ids.
    pub fn enqueue(&self, alert: &Alert) -> Result<Vec<String>, EnqueueError> {
        let tx = self.tx.as_ref().ok_or(EnqueueError::Stopped)?;
        let now = SystemTime::now();
        let mut queued = Vec::with_capacity(self.destinations.len());
        let mut dropped = 0;
        for destination in &self.destinations {
            let body =
                alert
                    .render(destination.format, now)
                    .map_err(|source| EnqueueError::Render {
                        destination: destination.name.clone(),
                        source,
                    })?;
            let delivery = Delivery {
                id: new_webhook_id().map_err(EnqueueError::Random)?,
                destination: destination.name.clone(),
                url: destination.url.to_string(),
                body,
                created_ms: unix_ms(now),
                attempts: 0,
                next_attempt_ms: unix_ms(now),
                last_error: None,
            };
            let id = delivery.id.clone();
            match tx.try_send(Command::Deliver(delivery)) {
                Ok(()) => {
                    bump(&self.counters.enqueued);
                    queued.push(id);
                }
                Err(TrySendError::Full(_)) => {
                    bump(&self.counters.overflow);
                    tracing::warn!(destination = %destination.name, "webhook queue full; alert dropped");
                    dropped += 1;
                }
                Err(TrySendError::Disconnected(_)) => return Err(EnqueueError::Stopped),
            }
        }
        if dropped > 0 {
            return Err(EnqueueError::Overflow {
                dropped,
                total: self.destinations.len(),
                queued,
            });
        }
        Ok(queued)
    }

    /// The live counters.
    pub fn counters(&self) -> &Arc<WebhookCounters> {
        &self.counters
    }

    /// Every dead letter, most recent first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        self.admin().dead_letters()
    }

    /// Number of deliveries still pending.
    pub fn pending(&self) -> Result<u64, QueueError> {
        self.admin().pending_count()
    }

    /// Queues a dead letter again (same webhook-id). Returns whether it existed.
    pub fn retry_dead_letter(&self, id: &str) -> Result<bool, QueueError> {
        let found = self.admin().retry_dead(id, unix_ms(SystemTime::now()))?;
        if found && let Some(tx) = &self.tx {
            // A full channel already guarantees a prompt wake-up.
            let _ = tx.try_send(Command::Wake);
        }
        Ok(found)
    }

    fn admin(&self) -> MutexGuard<'_, DeliveryQueue> {
        self.admin
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops the worker: queued messages are persisted, an attempt in flight finishes.
    pub fn shutdown(mut self) {
        self.stop_worker();
    }

    fn stop_worker(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tx = None;
        if let Some(handle) = self.worker.take()
            && handle.join().is_err()
        {
            tracing::error!("the webhook worker thread panicked");
        }
    }
}

impl Drop for WebhookSender {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

fn new_webhook_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(format!("msg_{}", hex::encode(bytes)))
}

fn unix_ms(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// How one attempt ended, when it did not succeed.
#[derive(Debug)]
enum AttemptError {
    /// The guard refused the destination: never contacted, never retried.
    Refused(String),
    /// The receiver answered with something retrying cannot fix.
    Permanent(String),
    /// Worth another try, after `retry_after` when the receiver asked for it.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// One destination's HTTP client. Its resolver hands out only the addresses the guard
/// approved for the current attempt.
struct Client {
    destination: Destination,
    agent: ureq::Agent,
    pinned: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Client {
    fn new(destination: Destination, settings: &DeliverySettings) -> Self {
        let pinned: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let resolver_pins = Arc::clone(&pinned);
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .timeout_connect(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .user_agent(concat!("qsc-cortex-webhook/", env!("CARGO_PKG_VERSION")))
            .resolver(move |_netloc: &str| {
                let pins = resolver_pins
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if pins.is_empty() {
                    return Err(std::io::Error::other("no guard-approved address"));
                }
                Ok(pins.clone())
            })
            .build();
        Self {
            destination,
            agent,
            pinned,
        }
    }

    fn post(
        &self,
        delivery: &Delivery,
        url: &Url,
        addrs: Vec<SocketAddr>,
    ) -> Result<(), AttemptError> {
        *self
            .pinned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = addrs;
        let now = SystemTime::now();
        let timestamp = unix_ms(now) / 1000;
        let signature = self
            .destination
            .secret
            .sign(&delivery.id, timestamp, &delivery.body);
        let mut request = self.agent.post(url.as_str());
        if let Some(token) = &self.destination.bearer_token {
            request = request.set("authorization", &token.header_value());
        }
        let result = request
            .set("content-type", "application/json")
            .set("webhook-id", &delivery.id)
            .set("webhook-timestamp", &timestamp.to_string())
            .set("webhook-signature", &signature)
            .send_bytes(&delivery.body);
        classify(result, now)
    }
}

fn classify(
    result: Result<ureq::Response, ureq::Error>,
    now: SystemTime,
) -> Result<(), AttemptError> {
    match result {
        Ok(response) => {
            let status = response.status();
            let location = response.header("location").unwrap_or("").to_owned();
            drain(response);
            match status {
                200..=299 => Ok(()),
                300..=399 => Err(AttemptError::Permanent(format!(
                    "HTTP {status}: redirect to `{location}` not followed"
                ))),
                _ => Err(AttemptError::Retry {
                    reason: format!("HTTP {status}"),
                    retry_after: None,
                }),
            }
        }
        Err(ureq::Error::Status(status, response)) => {
            let retry_after = match status {
                429 | 503 => response
                    .header("retry-after")
                    .and_then(|value| parse_retry_after(value, now)),
                _ => None,
            };
            drain(response);
            let reason = format!("HTTP {status}");
            match status {
                408 | 425 | 429 | 500..=599 => Err(AttemptError::Retry {
                    reason,
                    retry_after,
                }),
                _ => Err(AttemptError::Permanent(reason)),
            }
        }
        Err(ureq::Error::Transport(transport)) => Err(AttemptError::Retry {
            reason: transport.to_string(),
            retry_after: None,
        }),
    }
}

/// Reads (a bounded part of) the response so the connection can be reused.
fn drain(response: ureq::Response) {
    let mut sink = Vec::new();
    let _ = response
        .into_reader()
        .take(MAX_RESPONSE_BODY)
        .read_to_end(&mut sink);
}

struct Worker {
    rx: Receiver<Command>,
    stop: Arc<AtomicBool>,
    queue: DeliveryQueue,
    clients: HashMap<String, Client>,
    guard: DestinationGuard,
    settings: DeliverySettings,
    counters: Arc<WebhookCounters>,
    /// Pending rows in the queue file, kept to enforce `max_pending` without counting rows.
    pending: Cell<u64>,
}

impl Worker {
    fn run(self) {
        self.recount_pending();
        loop {
            match self.rx.recv_timeout(self.wait_time()) {
                Ok(command) => {
                    self.accept(command);
                    while let Ok(command) = self.rx.try_recv() {
                        self.accept(command);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if self.stopping() {
                self.persist_remaining();
                return;
            }
            self.deliver_due();
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn persist_remaining(&self) {
        while let Ok(command) = self.rx.try_recv() {
            self.accept(command);
        }
    }

    fn wait_time(&self) -> Duration {
        match self.queue.next_due_ms() {
            Ok(Some(due)) => {
                let wait = due.saturating_sub(unix_ms(SystemTime::now())).max(0);
                Duration::from_millis(wait.unsigned_abs()).min(IDLE_WAIT)
            }
            Ok(None) => IDLE_WAIT,
            Err(error) => {
                self.queue_error(&error);
                Duration::from_secs(1)
            }
        }
    }

    fn recount_pending(&self) {
        match self.queue.pending_count() {
            Ok(count) => self.pending.set(count),
            Err(error) => self.queue_error(&error),
        }
    }

    fn accept(&self, command: Command) {
        let delivery = match command {
            Command::Deliver(delivery) => delivery,
            Command::Wake => return self.recount_pending(),
        };
        if self.pending.get() >= self.settings.max_pending {
            bump(&self.counters.overflow);
            tracing::warn!(id = %delivery.id, destination = %delivery.destination, "webhook queue file full (max_pending); alert dropped");
            return;
        }
        match self.queue.insert(&delivery) {
            Ok(true) => self.pending.set(self.pending.get() + 1),
            Ok(false) => {}
            Err(error) => self.queue_error(&error),
        }
    }

    fn settled(&self) {
        self.pending.set(self.pending.get().saturating_sub(1));
    }

    fn queue_error(&self, error: &QueueError) {
        bump(&self.counters.queue_errors);
        tracing::error!(%error, "webhook queue");
    }

    fn deliver_due(&self) {
        loop {
            let due = match self.queue.due(unix_ms(SystemTime::now()), DUE_BATCH) {
                Ok(due) => due,
                Err(error) => {
                    self.queue_error(&error);
                    // Do not spin on a broken queue file; callers never wait for this thread.
                    std::thread::sleep(Duration::from_secs(1));
                    return;
                }
            };
            let count = due.len();
            for delivery in due {
                if self.stopping() {
                    return;
                }
                self.attempt(delivery);
            }
            if count < DUE_BATCH {
                return;
            }
        }
    }

    fn attempt(&self, delivery: Delivery) {
        let now_ms = unix_ms(SystemTime::now());
        if now_ms.saturating_sub(delivery.created_ms) > duration_ms(self.settings.max_age) {
            let reason = format!(
                "older than max_age after {} attempts: {}",
                delivery.attempts,
                delivery.last_error.as_deref().unwrap_or("never attempted")
            );
            return self.dead_letter(&delivery, delivery.attempts, &reason);
        }
        match self.send(&delivery) {
            Ok(()) => self.delivered(&delivery),
            Err(AttemptError::Refused(reason)) => {
                tracing::warn!(id = %delivery.id, destination = %delivery.destination, %reason, "webhook destination refused");
                self.dead_letter(&delivery, delivery.attempts, &format!("refused: {reason}"));
                bump(&self.counters.refused);
            }
            Err(AttemptError::Permanent(reason)) => {
                self.dead_letter(&delivery, delivery.attempts + 1, &reason);
            }
            Err(AttemptError::Retry {
                reason,
                retry_after,
            }) => self.retry(&delivery, &reason, retry_after),
        }
    }

    /// Checks the destination and makes one HTTP attempt.
    fn send(&self, delivery: &Delivery) -> Result<(), AttemptError> {
        let client = self.clients.get(&delivery.destination).ok_or_else(|| {
            AttemptError::Refused(format!(
                "destination `{}` is not configured",
                delivery.destination
            ))
        })?;
        let url = Url::parse(&delivery.url)
            .map_err(|e| AttemptError::Refused(format!("bad url `{}`: {e}", delivery.url)))?;
        if !same_origin(&url, &client.destination.url) {
            return Err(AttemptError::Refused(format!(
                "`{url}` is not the origin of destination `{}`",
                delivery.destination
            )));
        }
        let addrs = self.guard.check(&url).map_err(|error| {
            if error.is_refusal() {
                AttemptError::Refused(error.to_string())
            } else {
                AttemptError::Retry {
                    reason: error.to_string(),
                    retry_after: None,
                }
            }
        })?;
        bump(&self.counters.attempts);
        client.post(delivery, &url, addrs)
    }

    fn delivered(&self, delivery: &Delivery) {
        tracing::debug!(id = %delivery.id, destination = %delivery.destination, "webhook delivered");
        if let Err(error) = self.queue.delete(&delivery.id) {
            self.queue_error(&error);
        }
        self.settled();
        bump(&self.counters.sent);
    }

    fn retry(&self, delivery: &Delivery, reason: &str, retry_after: Option<Duration>) {
        let attempts = delivery.attempts + 1;
        if attempts >= self.settings.max_attempts {
            let reason = format!("gave up after {attempts} attempts: {reason}");
            return self.dead_letter(delivery, attempts, &reason);
        }
        let delay = match retry_after {
            Some(asked) => asked.min(self.settings.max_retry_after),
            None => full_jitter(
                attempts,
                self.settings.backoff_base,
                self.settings.backoff_cap,
                random_u64(),
            ),
        };
        let next = unix_ms(SystemTime::now()).saturating_add(duration_ms(delay));
        let deadline = delivery
            .created_ms
            .saturating_add(duration_ms(self.settings.max_age));
        if next > deadline {
            let reason = format!("next retry would pass max_age: {reason}");
            return self.dead_letter(delivery, attempts, &reason);
        }
        tracing::debug!(id = %delivery.id, %reason, delay_ms = delay.as_millis() as u64, "webhook retry scheduled");
        if let Err(error) = self.queue.reschedule(&delivery.id, attempts, next, reason) {
            self.queue_error(&error);
        }
        bump(&self.counters.retried);
    }

    fn dead_letter(&self, delivery: &Delivery, attempts: u32, reason: &str) {
        tracing::warn!(id = %delivery.id, destination = %delivery.destination, %reason, "webhook dead-lettered");
        let now_ms = unix_ms(SystemTime::now());
        if let Err(error) = self.queue.kill(&delivery.id, attempts, reason, now_ms) {
            self.queue_error(&error);
        }
        self.settled();
        bump(&self.counters.dead_lettered);
        match self.queue.prune_dead(self.settings.max_dead_letters) {
            Ok(pruned) => {
                self.counters
                    .dead_letters_pruned
                    .fetch_add(pruned, Ordering::Relaxed);
            }
            Err(error) => self.queue_error(&error),
        }
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Helpers for the tests of this module's siblings.
#[cfg(test)]
pub(crate) mod tests_support {
    /// Unix milliseconds now.
    pub(crate) fn now_ms() -> i64 {
        super::unix_ms(std::time::SystemTime::now())
    }
}
