//! The HTTP API (axum). Every route but `/health` needs `Authorization: Bearer <token>`, the
//! token read at start-up from a 0600 file and compared in constant time.
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | liveness, no token needed |
//! | `GET /metrics` | Prometheus text |
//! | `GET /api/nodes` | node state of every host that left NOMINAL |
//! | `POST /api/nodes/{host}/release` | operator approval ISOLATED → NOMINAL (audited); the agent is told to release; with `[respond] two_person_release` the first call answers 202 and a second operator's call releases |
//! | `POST /api/nodes/{host}/accounts/{user}/restore` | an operator restores an account a `revoke_credential` locked (`{"operator": "...", "reason": "..."}`): the agent is sent `restore_credential` at once; answers `{"action": ...}` |
//! | `GET /api/actions?status=&host=&limit=` | response actions (held, executed, with their results), newest first |
//! | `GET /api/actions/{id}` | one response action |
//! | `POST /api/actions/{id}/approve`, `/deny` | an operator's decision on a held action: `{"operator": "...", "reason": "..."}` |
//! | `GET /api/incidents?host=&status=&min_severity=&limit=` | incidents, newest first |
//! | `GET /api/incidents/{id}` | one incident with its evidence, and as an OCSF Detection Finding |
//! | `GET /api/events?host=&kind=&since=&until=&limit=` | stored events (decrypted), OCSF-shaped |
//! | `POST /api/keys/{host}/revoke` | revoke the host's agent keys (`{"operator": "...", "agent": "alpha"}`, `agent` optional) in the running cortex: audited, their live sessions closed at once (`cortex keys revoke` calls it) |
//! | `POST /webhook/approval` | a SOAR's signed approve/deny of a held action (Standard Webhooks signature with `[webhook] inbound_secret`, not the token) |
//!
//! `cortex serve` merges in the web console's routes (`/console/…`, session cookies instead of
//! the token; see [`crate::console`]) unless `[console] address` gives it a port of its own.

mod handlers;
pub mod ocsf;
mod token;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use token::{ApiToken, TokenError, read_secret};

use crate::decide::NodeStates;
use crate::ingest::AgentDirectory;
use crate::metrics::Metrics;
use crate::respond::Responder;
use crate::store::Store;
use crate::webhook::{InboundVerifier, WebhookCounters};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub nodes: Arc<Mutex<NodeStates>>,
    pub token: Arc<ApiToken>,
    /// The respond stage: actions, approvals, releases.
    pub respond: Arc<Responder>,
    /// Outbound webhook counters for `/metrics` (none without destinations).
    pub webhook_counters: Option<Arc<WebhookCounters>>,
    /// Verifies inbound approvals (refuses everything without an inbound secret).
    pub inbound: Arc<InboundVerifier>,
    /// The agents and their key lifecycle, for revocations (none: answered 409).
    pub keys: Option<AgentDirectory>,
}

/// The API's routes, with authentication on everything but `/health`.
pub fn router(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/metrics", get(handlers::metrics))
        .route("/api/nodes", get(handlers::nodes))
        .route("/api/nodes/{host}/release", post(handlers::release))
        .route(
            "/api/nodes/{host}/accounts/{user}/restore",
            post(handlers::restore_account),
        )
        .route("/api/incidents", get(handlers::incidents))
        .route("/api/incidents/{id}", get(handlers::incident))
        .route("/api/events", get(handlers::events))
        .route("/api/actions", get(handlers::actions))
        .route("/api/actions/{id}", get(handlers::action))
        .route("/api/actions/{id}/approve", post(handlers::approve))
        .route("/api/actions/{id}/deny", post(handlers::deny))
        .route("/api/keys/{host}/revoke", post(handlers::revoke_keys))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/health", get(handlers::health))
        .route("/webhook/approval", post(handlers::inbound_approval))
        .merge(protected)
        .with_state(state)
}

async fn authenticate(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if state.token.matches(token) => next.run(request).await,
        _ => handlers::error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token from api.token_file>)",
        )
        .into_response(),
    }
}

#[cfg(test)]
pub(crate) mod test_support;

#[cfg(test)]
mod tests {
    use super::test_support::{Fixture, request, serve};
    use super::*;
    use crate::decide::NodeState;
    use crate::respond::{Playbooks, RespondConfig};

    const TOKEN: &str = "test-token-0123456789";

    /// The API's state over `fixture`, with `inbound` verifying inbound approvals.
    fn api_state(fixture: &Fixture, inbound: InboundVerifier) -> ApiState {
        ApiState {
            store: fixture.store.clone(),
            metrics: Arc::new(Metrics::default()),
            nodes: fixture.nodes.clone(),
            token: Arc::new(ApiToken::from_secret(TOKEN)),
            respond: fixture.respond.clone(),
            webhook_counters: None,
            inbound: Arc::new(inbound),
            keys: None,
        }
    }

    /// An inbound verifier without a secret: it refuses every inbound approval.
    fn no_inbound() -> InboundVerifier {
        InboundVerifier::new(None, std::time::Duration::from_secs(300))
    }

    /// The one playbook `book` (YAML).
    fn playbook(book: &str) -> Playbooks {
        Playbooks::parse_all(&[("t.yml".into(), book.into())]).unwrap()
    }

    fn post(path: &str, token: &str, body: &str) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_operator_releases_an_isolated_host_and_the_release_is_audited() {
        let fixture = Fixture::new();
        let isolated = fixture
            .nodes
            .lock()
            .unwrap()
            .on_isolated("web-01", "cortex", "test isolation")
            .unwrap();
        fixture.store.put_node_state(&isolated).unwrap();
        let addr = serve(router(api_state(&fixture, no_inbound()))).await;
        let (store, audit) = (&fixture.store, &fixture.audit);

        let path = "/api/nodes/web-01/release";
        let body = r#"{"operator":"alice","reason":"host reimaged"}"#;
        let (status, _) = request(addr, post(path, "wrong-token", body)).await;
        assert_eq!(status, 401);
        let (status, text) =
            request(addr, post(path, TOKEN, r#"{"operator":"","reason":"x"}"#)).await;
        assert_eq!(status, 400, "{text}");
        let (status, text) = request(addr, post(path, TOKEN, body)).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(
            store.node_state("web-01").unwrap().map(|r| r.state),
            Some(NodeState::Nominal)
        );
        let last = audit.records(2, 2).unwrap();
        assert_eq!(last[0].actor, "operator:alice");
        let (status, text) = request(addr, post(path, TOKEN, body)).await;
        assert_eq!(status, 409, "only an ISOLATED host can be released: {text}");
    }

    fn get(path: &str, token: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
    }

    fn incident() -> crate::score::Incident {
        use crate::score::{EntityKey, Incident, IncidentStatus, Severity};
        Incident {
            id: "inc-1".into(),
            host: "web-01".into(),
            entity: EntityKey::Host {
                host: "web-01".into(),
            },
            title: "test".into(),
            severity: Severity::Critical,
            confidence: 0.99,
            prior: 0.001,
            log_odds: 4.0,
            attack_techniques: Vec::new(),
            status: IncidentStatus::Open,
            opened_ns: 1,
            updated_ns: 1,
            evidence: Vec::new(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn operators_list_approve_and_deny_held_actions_and_release_in_two_steps() {
        let book = "name: hold\nmatch: {}\nactions: [{action: isolate}, {action: isolate}]";
        let config = RespondConfig {
            two_person_release: true,
            ..RespondConfig::default()
        };
        let fixture = Fixture::with(config, playbook(book));
        fixture.respond.on_incident(&incident(), None);
        let held = fixture.respond.held();
        assert_eq!(held.len(), 2);
        let addr = serve(router(api_state(&fixture, no_inbound()))).await;
        let (store, nodes) = (&fixture.store, &fixture.nodes);

        let (status, text) = request(addr, get("/api/actions?status=held", TOKEN)).await;
        assert_eq!(status, 200, "{text}");
        let body = text.split_once("\r\n\r\n").unwrap().1;
        let listed: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(listed.as_array().map(Vec::len), Some(2));
        let (status, _) = request(addr, get("/api/actions?status=bogus", TOKEN)).await;
        assert_eq!(status, 400);

        let approve = format!("/api/actions/{}/approve", held[0].id);
        let deny = format!("/api/actions/{}/deny", held[1].id);
        let alice = r#"{"operator":"alice","reason":"confirmed"}"#;
        let (status, _) = request(addr, post(&approve, "wrong-token", alice)).await;
        assert_eq!(status, 401);
        let (status, _) = request(addr, post(&approve, TOKEN, r#"{"operator":""}"#)).await;
        assert_eq!(status, 400);
        let (status, text) = request(addr, post(&approve, TOKEN, alice)).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("\"status\":\"dispatched\""), "{text}");
        let (status, _) = request(addr, post(&approve, TOKEN, alice)).await;
        assert_eq!(status, 404, "no longer held");
        let (status, text) = request(addr, post(&deny, TOKEN, alice)).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("\"status\":\"denied\""), "{text}");
        let (status, text) =
            request(addr, get(&format!("/api/actions/{}", held[1].id), TOKEN)).await;
        assert_eq!(status, 200, "{text}");
        let (status, text) = request(addr, get("/metrics", TOKEN)).await;
        assert_eq!(status, 200);
        assert!(
            text.contains("cortex_actions_total{action=\"isolate\",status=\"denied\"} 1"),
            "{text}"
        );

        // Two-person release: the first operator is recorded, the second releases.
        nodes
            .lock()
            .unwrap()
            .on_isolated("web-01", "cortex", "test")
            .unwrap();
        let release = "/api/nodes/web-01/release";
        let (status, text) = request(addr, post(release, TOKEN, alice)).await;
        assert_eq!(status, 202, "{text}");
        let bob = r#"{"operator":"bob","reason":"checked"}"#;
        let (status, text) = request(addr, post(release, TOKEN, bob)).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(
            store.node_state("web-01").unwrap().map(|r| r.actor),
            Some("operator:alice+bob".to_owned())
        );
    }

    fn signed_post(path: &str, id: &str, timestamp: i64, signature: &str, body: &str) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nwebhook-id: {id}\r\n\
             webhook-timestamp: {timestamp}\r\nwebhook-signature: {signature}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_signed_inbound_webhook_approves_a_held_action_once() {
        use crate::webhook::WebhookSecret;
        let book = "name: hold\nmatch: {}\nactions: [{action: isolate}]";
        let fixture = Fixture::with(RespondConfig::default(), playbook(book));
        fixture.respond.on_incident(&incident(), None);
        let held = fixture.respond.held();
        assert_eq!(held.len(), 1);
        let (secret, secret_text) = WebhookSecret::generate().unwrap();
        let verifier = InboundVerifier::new(
            WebhookSecret::parse(&secret_text).ok(),
            std::time::Duration::from_secs(300),
        );
        let addr = serve(router(api_state(&fixture, verifier))).await;

        let body = format!(
            r#"{{"action_id":"{}","operator":"soar-bot","approve":true}}"#,
            held[0].id
        );
        let now = qsc_event::now_ns() as i64 / 1_000_000_000;
        let signature = secret.sign("msg_1", now, body.as_bytes());
        let path = "/webhook/approval";
        let forged = secret.sign("msg_1", now, b"{}");
        let (status, _) = request(addr, signed_post(path, "msg_1", now, &forged, &body)).await;
        assert_eq!(status, 401, "a signature over another body is refused");
        let (status, _) = request(addr, post(path, TOKEN, &body)).await;
        assert_eq!(
            status, 401,
            "the API token is no substitute for a signature"
        );
        let (status, text) =
            request(addr, signed_post(path, "msg_1", now, &signature, &body)).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("\"status\":\"dispatched\""), "{text}");
        assert!(text.contains("webhook:soar-bot"), "{text}");
        let (status, _) = request(addr, signed_post(path, "msg_1", now, &signature, &body)).await;
        assert_eq!(status, 401, "a replay is refused");
    }
}
