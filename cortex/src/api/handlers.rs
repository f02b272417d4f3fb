//! Route handlers. Store calls are synchronous (SQLite), so they run on blocking threads.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiState, ocsf};
use crate::decide::{Approval, DecideError};
use crate::score::{IncidentStatus, Severity};
use crate::store::{EventQuery, IncidentQuery, MAX_QUERY_LIMIT};

/// Results per page when the caller gives no `limit`.
const DEFAULT_LIMIT: usize = 100;

pub fn error(status: StatusCode, message: impl Into<String>) -> (StatusCode, Json<Value>) {
    (status, Json(json!({ "error": message.into() })))
}

fn internal(failure: impl std::fmt::Display) -> Response {
    tracing::error!(error = %failure, "API request failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, failure.to_string()).into_response()
}

/// Runs a store call on a blocking thread and turns its result into a JSON response.
async fn blocking<T, E, F>(work: F) -> Response
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: serde::Serialize + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

pub async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

pub async fn nodes(State(state): State<ApiState>) -> Response {
    blocking(move || state.store.node_states()).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentParams {
    host: Option<String>,
    status: Option<IncidentStatus>,
    min_severity: Option<Severity>,
    limit: Option<usize>,
}

pub async fn incidents(
    State(state): State<ApiState>,
    Query(params): Query<IncidentParams>,
) -> Response {
    let query = IncidentQuery {
        host: params.host,
        status: params.status,
        min_severity: params.min_severity,
        limit: params.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_QUERY_LIMIT),
    };
    blocking(move || state.store.incidents(&query)).await
}

pub async fn incident(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let found = tokio::task::spawn_blocking(move || state.store.incident(&id)).await;
    match found {
        Ok(Ok(Some(incident))) => Json(json!({
            "incident": incident,
            "ocsf": ocsf::detection_finding(&incident),
        }))
        .into_response(),
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, "no such incident").into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    host: Option<String>,
    /// Comma-separated event kinds.
    kind: Option<String>,
    /// Inclusive lower bound, ns since the Unix epoch.
    since: Option<u64>,
    /// Exclusive upper bound, ns since the Unix epoch.
    until: Option<u64>,
    limit: Option<usize>,
}

pub async fn events(State(state): State<ApiState>, Query(params): Query<EventParams>) -> Response {
    let query = EventQuery {
        host: params.host,
        since_ns: params.since,
        until_ns: params.until,
        kinds: params
            .kind
            .map(|k| {
                k.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
        limit: params.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_QUERY_LIMIT),
    };
    blocking(move || {
        state
            .store
            .query_events(&query)
            .map(|events| events.iter().map(ocsf::event).collect::<Vec<Value>>())
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    operator: String,
    reason: String,
}

/// Operator approval for ISOLATED → NOMINAL; the transition is audited with the operator's name.
pub async fn release(
    State(state): State<ApiState>,
    Path(host): Path<String>,
    Json(request): Json<ReleaseRequest>,
) -> Response {
    let approval = Approval {
        operator: request.operator,
        reason: request.reason,
    };
    let outcome = tokio::task::spawn_blocking(move || {
        let record = {
            let mut nodes = state
                .nodes
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            nodes.release(&host, &approval)
        }?;
        state
            .store
            .put_node_state(&record)
            .map_err(|e| ReleaseFailure::Store(e.to_string()))?;
        Ok::<_, ReleaseFailure>(record)
    })
    .await;
    match outcome {
        Ok(Ok(record)) => Json(record).into_response(),
        Ok(Err(ReleaseFailure::Decide(e @ DecideError::NotAllowed { .. }))) => {
            error(StatusCode::CONFLICT, e.to_string()).into_response()
        }
        Ok(Err(ReleaseFailure::Decide(e @ DecideError::InvalidOperator))) => {
            error(StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[derive(Debug, thiserror::Error)]
enum ReleaseFailure {
    #[error(transparent)]
    Decide(#[from] DecideError),
    #[error("the release was audited but could not be stored: {0}")]
    Store(String),
}
