//! What the scorer consumes: rule hits from detection and anomaly scores from the baseline.

use std::fmt;
use std::net::IpAddr;

use qsc_event::EventKind;
use serde::{Deserialize, Serialize};

pub use crate::detect::Level;

/// Which family of sensor evidence came from; shown in incidents and used by the classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Syscall and process events: exec, file activity, memory, privilege.
    Process,
    Network,
    /// File, baseline and backup integrity.
    Integrity,
    Certificate,
    /// Authentication successes and failures.
    Auth,
    /// The host anomaly baseline.
    Anomaly,
    /// Agent health: event loss, tamper attempts, heartbeats, host metrics.
    Agent,
}

impl SourceKind {
    /// The source family of an event kind.
    pub fn of(kind: &EventKind) -> Self {
        use EventKind::*;
        match kind {
            NetConnect(_) | NetAccept(_) | NetListen(_) | NetVolume(_) => SourceKind::Network,
            AuthFailure(_) | AuthSuccess(_) => SourceKind::Auth,
            IntegrityFileChanged(_)
            | IntegrityFileAdded(_)
            | IntegrityFileRemoved(_)
            | IntegrityBaselineTampered(_)
            | BackupCorrupt(_)
            | BackupMissing(_)
            | BackupUnexpected(_)
            | HealDone(_)
            | HealFailed(_) => SourceKind::Integrity,
            CertExpiring(_) | CertExpired(_) | CertNotYetValid(_) | CertRevoked(_)
            | CertInvalid(_) => SourceKind::Certificate,
            HostMetrics(_) | EventLoss(_) | Heartbeat(_) | TamperAttempt(_)
            | ResponseRollback(_) | ResponseFollowUp(_) => SourceKind::Agent,
            ProcessExec(_) | ProcessExit(_) | ProcessFork(_) | FileOpen(_) | FileChmod(_)
            | FileChown(_) | FileUnlink(_) | FileRename(_) | MemoryRwx(_) | PrivSetid(_)
            | PrivCapset(_) | PrivPtrace(_) | PrivModuleLoad(_) | PrivBpf(_)
            | PrivMemfdCreate(_) | Enforcement(_) => SourceKind::Process,
        }
    }
}

/// One stored event that supports a piece of evidence.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EventRef {
    pub host_id: String,
    pub seq: u64,
}

/// An entity whose threat posterior is tracked separately.
///
/// Users and process lineages are scoped to their host (`root` on two hosts is two accounts);
/// a remote address is global, so evidence about one attacker address fuses across hosts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EntityKey {
    Host { host: String },
    Lineage { host: String, root_guid: String },
    User { host: String, user: String },
    RemoteAddress { ip: IpAddr },
}

impl EntityKey {
    /// The host this entity lives on; `None` for a remote address.
    pub fn host(&self) -> Option<&str> {
        match self {
            EntityKey::Host { host }
            | EntityKey::Lineage { host, .. }
            | EntityKey::User { host, .. } => Some(host),
            EntityKey::RemoteAddress { .. } => None,
        }
    }
}

impl fmt::Display for EntityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntityKey::Host { host } => write!(f, "host:{host}"),
            EntityKey::Lineage { host, root_guid } => write!(f, "lineage:{host}/{root_guid}"),
            EntityKey::User { host, user } => write!(f, "user:{host}/{user}"),
            EntityKey::RemoteAddress { ip } => write!(f, "remote:{ip}"),
        }
    }
}

/// The entities a hit is about. The host is always known; the others when the events carry them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HitEntities {
    pub host: String,
    /// Guid of the root of the process lineage (the oldest known ancestor).
    #[serde(default)]
    pub lineage_root: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub remote_ip: Option<IpAddr>,
}

impl HitEntities {
    /// Every entity key this hit updates, host first.
    pub fn keys(&self) -> Vec<EntityKey> {
        let mut keys = vec![EntityKey::Host {
            host: self.host.clone(),
        }];
        if let Some(root_guid) = self.lineage_root.as_ref().filter(|g| !g.is_empty()) {
            keys.push(EntityKey::Lineage {
                host: self.host.clone(),
                root_guid: root_guid.clone(),
            });
        }
        if let Some(user) = self.user.as_ref().filter(|u| !u.is_empty()) {
            keys.push(EntityKey::User {
                host: self.host.clone(),
                user: user.clone(),
            });
        }
        if let Some(ip) = self.remote_ip {
            keys.push(EntityKey::RemoteAddress { ip });
        }
        keys
    }
}

/// One match of a detection rule (a single-event rule or a Sigma correlation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleHit {
    pub rule_id: String,
    pub title: String,
    pub level: Level,
    /// Sigma tags, e.g. `attack.t1110.004`, `attack.credential_access`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The rule's own likelihood ratio, when it declares one; beats the config's per-level value.
    #[serde(default)]
    pub likelihood_ratio: Option<f64>,
    pub source: SourceKind,
    pub entities: HitEntities,
    /// When the (last) matching event happened, ns since the Unix epoch.
    pub time_ns: u64,
    #[serde(default)]
    pub event_refs: Vec<EventRef>,
}

/// Output of the host anomaly baseline: how unusual the host looks, 0 (normal) ..= 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnomalyScore {
    pub host: String,
    pub score: f64,
    pub time_ns: u64,
    /// Which metrics deviate, for the incident's evidence title.
    #[serde(default)]
    pub detail: String,
}
