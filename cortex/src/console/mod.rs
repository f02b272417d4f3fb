//! The web console: server-rendered HTML (maud templates compiled into the binary), a little
//! embedded JavaScript for live updates over server-sent events, and nothing fetched from
//! anywhere else — it works on a machine with no internet.
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /console/login`, `POST /console/login` | anyone | log in (users file, argon2id) |
//! | `POST /console/logout` | any user | end the session |
//! | `GET /console/` | viewer | fleet: hosts, class, node state and since when, channel, versions, event loss |
//! | `GET /console/incidents`, `/console/incidents/{id}` | viewer | incidents; evidence, timeline, process tree, confidence chart |
//! | `GET /console/actions` | viewer | held actions (approve/deny), executed actions, isolated hosts |
//! | `POST /console/actions/{id}/approve`, `/deny` | operator | decide a held action (CSRF token) |
//! | `POST /console/nodes/{host}/release` | operator | release an ISOLATED host (CSRF token) |
//! | `GET /console/audit?q=` | viewer | chain status and a searchable log |
//! | `GET /console/stream` | viewer | server-sent events when something changed |

mod chart;
mod handlers;
mod pages;
pub mod session;
pub mod users;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use serde::Deserialize;

use crate::audit::AuditLog;
use crate::respond::{AgentLinks, Responder};
use crate::store::Store;

pub use session::Sessions;
pub use users::{Role, UsersError, UsersFile};

/// `[console]`: the web console.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console at all.
    pub enabled: bool,
    /// Its own listen address; empty serves it on the `[api]` address under `/console/`.
    pub address: String,
    /// Users, roles and argon2id hashes, written by `cortex users add|remove` (0600).
    pub users_file: PathBuf,
    /// A session ends this many seconds after login.
    pub session_ttl_s: u64,
    /// Mark the session cookie `Secure` (browsers then send it only over HTTPS or to
    /// localhost); turn off only behind a TLS-terminating proxy on a trusted network.
    pub secure_cookie: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            address: String::new(),
            users_file: PathBuf::from("/var/lib/qsc/console-users.toml"),
            session_ttl_s: 8 * 3600,
            secure_cookie: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleConfigError {
    #[error("[console] session_ttl_s must be 60..=604800")]
    SessionTtl,
    #[error("[console] address `{0}` is not host:port")]
    Address(String),
}

impl ConsoleConfig {
    /// Checks the values a running console depends on.
    pub fn validate(&self) -> Result<(), ConsoleConfigError> {
        if !(60..=7 * 24 * 3600).contains(&self.session_ttl_s) {
            return Err(ConsoleConfigError::SessionTtl);
        }
        if !self.address.is_empty() && self.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConsoleConfigError::Address(self.address.clone()));
        }
        Ok(())
    }
}

/// What the console's handlers share.
#[derive(Clone)]
pub struct ConsoleState {
    pub store: Arc<dyn Store>,
    pub respond: Arc<Responder>,
    pub audit: Arc<AuditLog>,
    /// Which hosts' guardian-alpha is connected now.
    pub links: AgentLinks,
    /// The `[agents]` file: enrolled hosts and their class.
    pub agents_file: PathBuf,
    pub users_file: PathBuf,
    pub sessions: Arc<Sessions>,
    pub secure_cookie: bool,
}

impl ConsoleState {
    /// State for the console described by `config`.
    pub fn new(config: &ConsoleConfig, parts: ConsoleParts) -> Self {
        ConsoleState {
            store: parts.store,
            respond: parts.respond,
            audit: parts.audit,
            links: parts.links,
            agents_file: parts.agents_file,
            users_file: config.users_file.clone(),
            sessions: Arc::new(Sessions::new(Duration::from_secs(config.session_ttl_s))),
            secure_cookie: config.secure_cookie,
        }
    }
}

/// What the console reads from the rest of the cortex.
pub struct ConsoleParts {
    pub store: Arc<dyn Store>,
    pub respond: Arc<Responder>,
    pub audit: Arc<AuditLog>,
    pub links: AgentLinks,
    pub agents_file: PathBuf,
}

/// The console's routes, all under `/console`.
pub fn router(state: ConsoleState) -> Router {
    Router::new()
        .route("/console", get(handlers::to_fleet))
        .route("/console/", get(handlers::fleet))
        .route(
            "/console/login",
            get(handlers::login_page).post(handlers::login),
        )
        .route("/console/logout", post(handlers::logout))
        .route("/console/incidents", get(handlers::incidents))
        .route("/console/incidents/{id}", get(handlers::incident))
        .route("/console/actions", get(handlers::actions))
        .route("/console/actions/{id}/approve", post(handlers::approve))
        .route("/console/actions/{id}/deny", post(handlers::deny))
        .route("/console/nodes/{host}/release", post(handlers::release))
        .route("/console/audit", get(handlers::audit))
        .route("/console/stream", get(handlers::stream))
        .route("/console/static/console.css", get(handlers::css))
        .route("/console/static/console.js", get(handlers::js))
        .with_state(state)
}
