//! Response actions sent by the cortex, executed on this host: one small module per action,
//! the always-on [`guardrails`], the TTL safety net ([`ttl`]) and the channel command
//! [`handler`]. The contract is `qsc_event::action`: an [`ActionRequest`] in, an
//! [`ActionReport`] out, whose `done_mono_ns` is taken when the action completed.

pub mod block;
pub mod credential;
pub mod events;
pub mod guardrails;
pub mod handler;
pub mod isolate;
pub mod kill;
pub mod nft;
pub mod procfs;
pub mod quarantine;
pub mod replace;
pub mod revocation;
pub mod revoked;
pub mod ttl;

use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use qsc_event::{Action, ActionOutcome, ActionReport, ActionRequest, mono_now_ns};

use crate::{config::Config, sensor::SharedSensor};
use block::IpBlocker;
use events::ResponseEvents;
use guardrails::{Guardrails, Refusal};
use revocation::{FollowUp, KernelRevocation};
use revoked::RevokedAccounts;
use ttl::{RollbackKey, RollbackScheduler, report_expiry};

pub use handler::ResponseHandler;

/// Why an action was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RespondError {
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    #[error("process {pid} does not exist (or is not the one start_time_ticks names)")]
    NoProcess { pid: u32 },
    #[error("cannot signal process {pid}: {source}")]
    Signal { pid: u32, source: std::io::Error },
    #[error("the process tree of {pid} kept growing for {rounds} scans; it was resumed")]
    TreeKeepsGrowing { pid: u32, rounds: usize },
    #[error("processes {pids:?} did not exit after SIGKILL")]
    Survivors { pids: Vec<u32> },
    #[error("quarantine path `{0}` is not absolute")]
    NotAbsolute(String),
    #[error("`{0}` is not a regular file (symlinks and devices are not quarantined)")]
    NotRegularFile(String),
    #[error("quarantine of {path}: {step}: {source}")]
    Quarantine {
        path: String,
        step: &'static str,
        source: std::io::Error,
    },
    #[error("{nft}: {reason}")]
    Nft { nft: String, reason: String },
    #[error("kernel block map: {0}")]
    Sensor(#[from] crate::sensor::SensorError),
    #[error("the sensor lock is poisoned (a thread panicked while holding it)")]
    SensorPoisoned,
    #[error("no cortex address is known (set [cortex] address): isolating would cut the channel")]
    NoCortexAddress,
    #[error("cortex address `{address}` cannot be resolved: {source}")]
    CortexAddress {
        address: String,
        source: std::io::Error,
    },
    #[error("no local account `{0}` in /etc/passwd")]
    NoUser(String),
    #[error("account `{0}` has no line in /etc/shadow")]
    NoShadowEntry(String),
    #[error("unlocking `{0}` would leave it without a password; set one instead")]
    EmptyPassword(String),
    #[error("shadow file: {step}: {source}")]
    Shadow {
        step: &'static str,
        source: std::io::Error,
    },
    #[error("{0} is not executed by the response executor")]
    NotHandled(&'static str),
    #[error("list of revoked accounts: {0}")]
    RevokedList(#[from] revoked::RevokedListError),
    #[error("cannot start the rollback thread: {0}")]
    RollbackThread(std::io::Error),
}

/// A completed action: what was done, and facts for the report.
#[derive(Debug, Clone, Default)]
pub struct Done {
    /// One line for the report: what was done.
    pub detail: String,
    /// Action-specific facts (killed pids, hash, mechanism, …).
    pub facts: serde_json::Map<String, serde_json::Value>,
}

impl Done {
    /// A result without facts yet.
    pub fn new(detail: impl Into<String>) -> Self {
        Done {
            detail: detail.into(),
            facts: serde_json::Map::new(),
        }
    }

    /// Adds one fact (a value that cannot be represented in JSON is recorded as null).
    pub fn fact(mut self, key: &str, value: impl serde::Serialize) -> Self {
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.facts.insert(key.into(), value);
        self
    }
}

/// Resolves the `[cortex] address` (`host:port`); empty means none.
pub fn resolve_cortex(address: &str) -> Result<Vec<SocketAddr>, RespondError> {
    if address.is_empty() {
        return Ok(Vec::new());
    }
    address
        .to_socket_addrs()
        .map(|addrs| addrs.collect())
        .map_err(|source| RespondError::CortexAddress {
            address: address.into(),
            source,
        })
}

/// Executes response actions behind the guardrails.
pub struct Responder {
    rails: Guardrails,
    /// `[cortex] address`, resolved again at each isolation (falls back to start-up's).
    cortex_address: String,
    proc_root: PathBuf,
    quarantine_dir: PathBuf,
    nft: PathBuf,
    blocker: Arc<Mutex<IpBlocker>>,
    /// Revocations the kernel enforces, when the sensor's hooks can.
    kernel_revocation: Option<KernelRevocation>,
    rollbacks: RollbackScheduler,
    /// Where rollbacks run at TTL expiry and steps finished after an action's report go.
    events: ResponseEvents,
}

impl Responder {
    /// `sensor`: the running sensor, whose kernel map blocks addresses when its cgroup
    /// programs are attached (otherwise nftables does), and revokes accounts when its exec,
    /// fork and setuid hooks are (otherwise only the shadow file does).
    pub fn new(config: &Config, sensor: Option<SharedSensor>) -> Result<Self, RespondError> {
        // The agent starts even when DNS does not answer yet; each action resolves again.
        let cortex = resolve_cortex(&config.cortex.address).unwrap_or_else(|err| {
            tracing::warn!(%err, "cortex address not resolved at start-up");
            Vec::new()
        });
        let nft = config.respond.nft.clone();
        let rails = Guardrails::new(&config.respond, cortex);
        let proc_root = PathBuf::from("/proc");
        let kernel_revocation = sensor
            .clone()
            .filter(|s| s.lock().is_ok_and(|sensor| sensor.denies_uids()))
            .map(|sensor| {
                let list = revoked_accounts(&config.respond.revoked_accounts_file);
                KernelRevocation::start(sensor, list, &rails, &proc_root)
            });
        let blocker = IpBlocker::new(sensor, nft.clone());
        tracing::info!(
            address_blocking = blocker.mechanism(),
            account_revocation = if kernel_revocation.is_some() {
                "kernel"
            } else {
                "shadow"
            },
            cortex = ?rails.cortex(),
            "response executor ready"
        );
        Ok(Responder {
            rails,
            cortex_address: config.cortex.address.clone(),
            proc_root,
            quarantine_dir: config.respond.quarantine_dir.clone(),
            nft,
            blocker: Arc::new(Mutex::new(blocker)),
            kernel_revocation,
            rollbacks: RollbackScheduler::start().map_err(RespondError::RollbackThread)?,
            events: ResponseEvents::default(),
        })
    }

    /// Sends what the executor reports by itself (rollbacks at TTL expiry, follow-up steps)
    /// to `events` (the agent's event stream).
    pub fn with_events(mut self, events: ResponseEvents) -> Self {
        self.events = events;
        self
    }

    /// How many timed actions wait for their automatic rollback.
    pub fn pending_rollbacks(&self) -> usize {
        self.rollbacks.pending()
    }

    /// Blocks until every timed action has been rolled back (or cancelled).
    pub fn wait_rollbacks(&self) {
        self.rollbacks.wait_idle()
    }

    /// Runs one request and reports how it ended; never panics on a bad request.
    pub fn execute(&self, request: &ActionRequest) -> ActionReport {
        let received_mono_ns = mono_now_ns();
        let result = self.run(request);
        let done_mono_ns = mono_now_ns();
        let (outcome, detail, facts) = match result {
            Ok(done) => (ActionOutcome::Done, done.detail, done.facts),
            Err(RespondError::Refused(refusal)) => (
                ActionOutcome::Refused,
                refusal.to_string(),
                Default::default(),
            ),
            Err(err) => (ActionOutcome::Failed, err.to_string(), Default::default()),
        };
        tracing::info!(
            action_id = %request.action_id,
            action = request.action.name(),
            ?outcome,
            %detail,
            "response action"
        );
        ActionReport {
            action_id: request.action_id.clone(),
            outcome,
            detail,
            received_mono_ns: Some(received_mono_ns),
            done_mono_ns,
            facts,
        }
    }

    fn run(&self, request: &ActionRequest) -> Result<Done, RespondError> {
        match &request.action {
            Action::Kill {
                pid,
                start_time_ticks,
                tree,
            } => kill::kill(&self.rails, &self.proc_root, *pid, *start_time_ticks, *tree),
            Action::Quarantine { path } => {
                quarantine::quarantine(&self.rails, &self.quarantine_dir, path)
            }
            Action::BlockIp { addr, ttl_s } => self.block(*addr, *ttl_s),
            Action::UnblockIp { addr } => self.unblock(*addr),
            Action::Isolate { ttl_s } => self.isolate(*ttl_s),
            Action::Release => {
                self.rollbacks.cancel(RollbackKey::Isolation);
                isolate::release(&self.nft)
            }
            Action::RevokeCredential { user } => self.revoke(&request.action_id, user),
            Action::RestoreCredential { user } => match &self.kernel_revocation {
                Some(kernel) => kernel.restore(&self.rails, user),
                None => credential::restore(&self.rails, user),
            },
            Action::RotateKeys => Err(RespondError::NotHandled("rotate_keys")),
        }
    }

    /// In the kernel when the sensor can, else through the shadow file alone.
    fn revoke(&self, action_id: &str, user: &str) -> Result<Done, RespondError> {
        let Some(kernel) = &self.kernel_revocation else {
            return credential::revoke(&self.rails, &self.proc_root, user);
        };
        let follow_up = FollowUp {
            action_id: action_id.to_owned(),
            events: self.events.clone(),
        };
        kernel.revoke(&self.rails, &self.proc_root, user, follow_up)
    }

    fn lock_blocker(&self) -> Result<std::sync::MutexGuard<'_, IpBlocker>, RespondError> {
        self.blocker
            .lock()
            .map_err(|_| RespondError::SensorPoisoned)
    }

    /// The cortex's addresses resolved now, or those of start-up when DNS does not answer.
    fn cortex_now(&self) -> Vec<SocketAddr> {
        match resolve_cortex(&self.cortex_address) {
            Ok(now) if !now.is_empty() => now,
            _ => self.rails.cortex().to_vec(),
        }
    }

    fn block(&self, addr: IpAddr, ttl_s: u64) -> Result<Done, RespondError> {
        self.rails.check_address(addr, &self.cortex_now())?;
        let mut blocker = self.lock_blocker()?;
        blocker.block(addr)?;
        let key = RollbackKey::Block(guardrails::canonical(addr));
        if ttl_s > 0 {
            let shared = self.blocker.clone();
            let events = self.events.clone();
            self.rollbacks.schedule(
                key,
                Duration::from_secs(ttl_s),
                Box::new(move || {
                    let result = unblock_at_expiry(&shared, addr);
                    report_expiry(&events, Action::UnblockIp { addr }, result);
                }),
            );
        } else {
            self.rollbacks.cancel(key);
        }
        Ok(Done::new(format!("{addr} blocked"))
            .fact("mechanism", blocker.mechanism())
            .fact("ttl_s", ttl_s))
    }

    fn unblock(&self, addr: IpAddr) -> Result<Done, RespondError> {
        self.rollbacks
            .cancel(RollbackKey::Block(guardrails::canonical(addr)));
        let mut blocker = self.lock_blocker()?;
        blocker.unblock(addr)?;
        Ok(Done::new(format!("{addr} unblocked")).fact("mechanism", blocker.mechanism()))
    }

    fn isolate(&self, ttl_s: u64) -> Result<Done, RespondError> {
        let done = isolate::isolate(&self.nft, &self.cortex_now())?;
        if ttl_s > 0 {
            let nft = self.nft.clone();
            let events = self.events.clone();
            self.rollbacks.schedule(
                RollbackKey::Isolation,
                Duration::from_secs(ttl_s),
                Box::new(move || report_expiry(&events, Action::Release, isolate::release(&nft))),
            );
        } else {
            self.rollbacks.cancel(RollbackKey::Isolation);
        }
        Ok(done.fact("ttl_s", ttl_s))
    }
}

/// The list of accounts revoked in the kernel; empty (and logged) when it cannot be read.
fn revoked_accounts(path: &std::path::Path) -> RevokedAccounts {
    RevokedAccounts::load(path).unwrap_or_else(|err| {
        tracing::error!(%err, "revoked accounts not applied again; the list starts empty");
        RevokedAccounts::empty(path)
    })
}

fn unblock_at_expiry(blocker: &Mutex<IpBlocker>, addr: IpAddr) -> Result<Done, RespondError> {
    let mut blocker = blocker.lock().map_err(|_| RespondError::SensorPoisoned)?;
    blocker.unblock(addr)?;
    Ok(Done::new(format!("{addr} unblocked at TTL expiry")).fact("mechanism", blocker.mechanism()))
}
