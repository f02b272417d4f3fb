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
//! | `GET /console/actions` | viewer | held actions (approve/deny), executed actions (restore of a revoked account), isolated hosts |
//! | `POST /console/actions/{id}/approve`, `/deny` | operator | decide a held action (CSRF token) |
//! | `POST /console/nodes/{host}/release` | operator | release an ISOLATED host (CSRF token) |
//! | `POST /console/nodes/{host}/accounts/{user}/restore` | operator | end a revocation (CSRF token) |
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
        .route(
            "/console/nodes/{host}/accounts/{user}/restore",
            post(handlers::restore_account),
        )
        .route("/console/audit", get(handlers::audit))
        .route("/console/stream", get(handlers::stream))
        .route("/console/static/console.css", get(handlers::css))
        .route("/console/static/console.js", get(handlers::js))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use qsc_event::{Action, now_ns};

    use super::*;
    use crate::api::test_support::{Fixture, request, serve};
    use crate::respond::{ActionRecord, ActionStatus};
    use crate::store::ActionQuery;

    fn form(path: &str, cookie: &str, body: &str) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {cookie}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn get(path: &str, cookie: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {cookie}\r\n\r\n")
    }

    /// A console on the fixture's store and responder, whose one user is the operator olga.
    async fn console(fixture: &Fixture) -> SocketAddr {
        let dir = fixture.dir.path();
        let config = ConsoleConfig {
            users_file: dir.join("users.toml"),
            ..ConsoleConfig::default()
        };
        let mut users = UsersFile::default();
        users
            .add("olga", Role::Operator, "olga's long password")
            .unwrap();
        users.save(&config.users_file).unwrap();
        let state = ConsoleState::new(
            &config,
            ConsoleParts {
                store: fixture.store.clone(),
                respond: fixture.respond.clone(),
                audit: fixture.audit.clone(),
                links: AgentLinks::default(),
                agents_file: dir.join("agents.toml"),
            },
        );
        serve(router(state)).await
    }

    /// Logs olga in: the answer's `Set-Cookie` line and the cookie to send back.
    async fn log_in(addr: SocketAddr) -> (String, String) {
        let right = "name=olga&password=olga%27s+long+password";
        let (status, text) = request(addr, form("/console/login", "", right)).await;
        assert_eq!(status, 303, "{text}");
        let cookie_line = text
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
            .unwrap()
            .to_owned();
        let cookie = cookie_line
            .split_once(':')
            .unwrap()
            .1
            .split(';')
            .next()
            .unwrap()
            .trim()
            .to_owned();
        (cookie_line, cookie)
    }

    /// The session's CSRF token, as a page's forms carry it.
    fn csrf_of(page: &str) -> &str {
        page.split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn login_sessions_and_csrf_without_a_browser() {
        let fixture = Fixture::new();
        let addr = console(&fixture).await;

        let (status, text) = request(addr, get("/console/", "")).await;
        assert_eq!(status, 303, "no session: to the login page: {text}");
        let wrong = "name=olga&password=not+her+password";
        let (status, _) = request(addr, form("/console/login", "", wrong)).await;
        assert_eq!(status, 401);
        let (cookie_line, cookie) = log_in(addr).await;
        assert!(cookie_line.contains("HttpOnly") && cookie_line.contains("SameSite=Strict"));
        assert!(cookie_line.contains("; Secure"));
        let (status, page) = request(addr, get("/console/actions", &cookie)).await;
        assert_eq!(status, 200, "{page}");
        assert!(page.contains("content-security-policy"), "{page}");
        let (status, _) = request(
            addr,
            form("/console/nodes/web-01/release", &cookie, "reason=x"),
        )
        .await;
        assert_eq!(status, 403, "no CSRF token");
        let (status, _) = request(
            addr,
            form("/console/nodes/web-01/release", &cookie, "csrf=00&reason=x"),
        )
        .await;
        assert_eq!(status, 403, "a wrong CSRF token");
        let body = format!("csrf={}&reason=x", csrf_of(&page));
        let (status, text) =
            request(addr, form("/console/nodes/web-01/release", &cookie, &body)).await;
        assert_eq!(
            status, 409,
            "past the CSRF check, web-01 is not isolated: {text}"
        );
        let (status, _) = request(addr, form("/console/logout", &cookie, &body)).await;
        assert_eq!(status, 303);
        let (status, _) = request(addr, get("/console/actions", &cookie)).await;
        assert_eq!(status, 303, "the session ended");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_operator_restores_a_revoked_account_from_the_actions_page() {
        let fixture = Fixture::new();
        let revoke = ActionRecord {
            action: Some(Action::RevokeCredential {
                user: "mallory".into(),
            }),
            status: ActionStatus::Done,
            ..ActionRecord::fresh(
                "act-1".into(),
                "web-01".into(),
                "revoke-on-brute-force".into(),
                "revoke_credential".into(),
                now_ns(),
            )
        };
        fixture.store.put_action(&revoke).unwrap();
        let addr = console(&fixture).await;
        let (_, cookie) = log_in(addr).await;
        let (status, page) = request(addr, get("/console/actions", &cookie)).await;
        assert_eq!(status, 200, "{page}");
        let restore = "/console/nodes/web-01/accounts/mallory/restore";
        assert!(page.contains(&format!("action=\"{restore}\"")), "{page}");
        let body = format!("csrf={}&reason=cleared", csrf_of(&page));

        let (status, _) = request(addr, form(restore, &cookie, "reason=cleared")).await;
        assert_eq!(status, 403, "no CSRF token");
        let bad_name = "/console/nodes/web-01/accounts/-rf/restore";
        let (status, text) = request(addr, form(bad_name, &cookie, &body)).await;
        assert_eq!(status, 400, "{text}");
        let (status, text) = request(addr, form(restore, &cookie, &body)).await;
        assert_eq!(status, 303, "{text}");

        let actions = fixture.store.actions(&ActionQuery::default()).unwrap();
        let restored: Vec<_> = actions
            .iter()
            .filter(|a| a.name == "restore_credential")
            .collect();
        assert_eq!(restored.len(), 1, "{actions:#?}");
        assert_eq!(restored[0].host, "web-01");
        assert_eq!(
            restored[0].action,
            Some(Action::RestoreCredential {
                user: "mallory".into()
            })
        );
        assert!(
            restored[0].detail.contains("by olga: cleared"),
            "{}",
            restored[0].detail
        );
    }
}
