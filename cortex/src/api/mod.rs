//! The HTTP API (axum). Every route but `/health` needs `Authorization: Bearer <token>`, the
//! token read at start-up from a 0600 file and compared in constant time.
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | liveness, no token needed |
//! | `GET /metrics` | Prometheus text |
//! | `GET /api/nodes` | node state of every host that left NOMINAL |
//! | `POST /api/nodes/{host}/release` | operator approval ISOLATED → NOMINAL (audited) |
//! | `GET /api/incidents?host=&status=&min_severity=&limit=` | incidents, newest first |
//! | `GET /api/incidents/{id}` | one incident with its evidence, and as an OCSF Detection Finding |
//! | `GET /api/events?host=&kind=&since=&until=&limit=` | stored events (decrypted), OCSF-shaped |

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

pub use token::{ApiToken, TokenError};

use crate::decide::NodeStates;
use crate::metrics::Metrics;
use crate::store::Store;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub nodes: Arc<Mutex<NodeStates>>,
    pub token: Arc<ApiToken>,
}

/// The API's routes, with authentication on everything but `/health`.
pub fn router(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/metrics", get(handlers::metrics))
        .route("/api/nodes", get(handlers::nodes))
        .route("/api/nodes/{host}/release", post(handlers::release))
        .route("/api/incidents", get(handlers::incidents))
        .route("/api/incidents/{id}", get(handlers::incident))
        .route("/api/events", get(handlers::events))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/health", get(handlers::health))
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
mod tests {
    use super::*;
    use crate::audit::AuditLog;
    use crate::decide::NodeState;
    use crate::store::SqliteStore;
    use std::io::{Read, Write};

    const TOKEN: &str = "test-token-0123456789";

    async fn request(addr: std::net::SocketAddr, raw: String) -> (u16, String) {
        tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.write_all(raw.as_bytes()).unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            let status = response[9..12].parse().unwrap();
            let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
            (status, body)
        })
        .await
        .unwrap()
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
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open_with_key(&dir.path().join("c.db"), &[1; 32]).unwrap());
        let seed = zeroize::Zeroizing::new([2u8; 32]);
        let audit = Arc::new(AuditLog::open_with_key(&dir.path().join("a.db"), &seed, 8).unwrap());
        let mut nodes = NodeStates::new(audit.clone(), Vec::new());
        let isolated = nodes
            .on_isolated("web-01", "cortex", "test isolation")
            .unwrap();
        store.put_node_state(&isolated).unwrap();
        let state = ApiState {
            store: store.clone(),
            metrics: Arc::new(Metrics::default()),
            nodes: Arc::new(Mutex::new(nodes)),
            token: Arc::new(ApiToken::from_secret(TOKEN)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(state)).await });

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
}
