//! Route handlers. Store calls are synchronous (SQLite), so they run on blocking threads.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiState, ocsf};
use crate::decide::DecideError;
use crate::keys::{Cause, KeyEvent, KeyState, KeysError};
use crate::respond::{
    ActionRecord, ActionStatus, ApprovalError, ReleaseError, ReleaseOutcome, RestoreError,
};
use crate::score::{IncidentStatus, Severity};
use crate::store::{ActionQuery, EventQuery, IncidentQuery, MAX_QUERY_LIMIT};
use crate::webhook::{InboundError, InboundRequest};
use qsc_event::{Source, now_ns};

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
    let mut text = state.metrics.render();
    text.push_str(&state.respond.render_metrics());
    if let Some(counters) = &state.webhook_counters {
        text.push_str(&counters.snapshot().render());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
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

/// Operator approval for ISOLATED → NOMINAL; the transition is audited with the operator's name
/// and the agent is told to release the host. With two-person release, the first approval
/// answers 202 Accepted and names who approved.
pub async fn release(
    State(state): State<ApiState>,
    Path(host): Path<String>,
    Json(request): Json<ReleaseRequest>,
) -> Response {
    let outcome = tokio::task::spawn_blocking(move || {
        state
            .respond
            .release(&host, &request.operator, &request.reason)
    })
    .await;
    match outcome {
        Ok(Ok(ReleaseOutcome::Released { node, action })) => {
            Json(json!({"node": node, "action": action})).into_response()
        }
        Ok(Ok(ReleaseOutcome::AwaitingSecond { first })) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "awaiting": "a second operator's approval (two_person_release)",
                "first_operator": first,
            })),
        )
            .into_response(),
        Ok(Err(e @ ReleaseError::Decide(DecideError::NotAllowed { .. }))) => {
            error(StatusCode::CONFLICT, e.to_string()).into_response()
        }
        Ok(Err(
            e
            @ (ReleaseError::InvalidOperator | ReleaseError::Decide(DecideError::InvalidOperator)),
        )) => error(StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// An operator restores an account a revocation locked: the host's agent is sent a
/// `restore_credential` action at once. Answers the action as dispatched.
pub async fn restore_account(
    State(state): State<ApiState>,
    Path((host, user)): Path<(String, String)>,
    Json(request): Json<ReleaseRequest>,
) -> Response {
    let outcome = tokio::task::spawn_blocking(move || {
        state
            .respond
            .restore_account(&host, &user, &request.operator, &request.reason)
    })
    .await;
    match outcome {
        Ok(Ok(action)) => Json(json!({"action": action})).into_response(),
        Ok(Err(e @ (RestoreError::InvalidOperator | RestoreError::InvalidAccount(_)))) => {
            error(StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    operator: String,
    /// Only this agent's key (`alpha` or `beta`); default every agent of the host.
    #[serde(default)]
    agent: Option<Source>,
}

/// Revokes a host's agent keys in the running cortex: audited, live sessions closed at once.
pub async fn revoke_keys(
    State(state): State<ApiState>,
    Path(host): Path<String>,
    Json(request): Json<RevokeRequest>,
) -> Response {
    let Some(directory) = state.keys.clone() else {
        return error(
            StatusCode::CONFLICT,
            "this cortex does not manage agent keys",
        )
        .into_response();
    };
    let operator = request.operator.trim().to_owned();
    if operator.is_empty() || operator.chars().any(char::is_control) {
        return error(StatusCode::BAD_REQUEST, "operator must be a non-empty name").into_response();
    }
    let outcome = tokio::task::spawn_blocking(move || {
        let cause = Cause::new(
            format!("operator:{operator}"),
            "revoked through POST /api/keys/{host}/revoke",
            now_ns(),
        );
        directory.revoke_keys(&host, request.agent, &cause)
    })
    .await;
    match outcome {
        Ok(Ok(events)) => {
            let revoked: Vec<&KeyEvent> = events
                .iter()
                .filter(|e| e.to == KeyState::Revoked)
                .collect();
            Json(json!({ "revoked": revoked })).into_response()
        }
        Ok(Err(e @ KeysError::NothingToRevoke { .. })) => {
            error(StatusCode::NOT_FOUND, e.to_string()).into_response()
        }
        Ok(Err(e @ KeysError::LifecycleDisabled)) => {
            error(StatusCode::CONFLICT, e.to_string()).into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionParams {
    status: Option<String>,
    host: Option<String>,
    limit: Option<usize>,
}

/// Response actions, newest first.
pub async fn actions(
    State(state): State<ApiState>,
    Query(params): Query<ActionParams>,
) -> Response {
    let status = match params.status.as_deref().map(ActionStatus::parse) {
        Some(None) => {
            return error(StatusCode::BAD_REQUEST, "unknown action status").into_response();
        }
        Some(Some(status)) => Some(status),
        None => None,
    };
    let query = ActionQuery {
        host: params.host,
        status,
        active_only: false,
        limit: params.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_QUERY_LIMIT),
    };
    blocking(move || state.store.actions(&query)).await
}

pub async fn action(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match tokio::task::spawn_blocking(move || state.store.action(&id)).await {
        Ok(Ok(Some(record))) => Json(record).into_response(),
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, "no such action").into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    operator: String,
    #[serde(default)]
    reason: String,
}

pub async fn approve(
    state: State<ApiState>,
    id: Path<String>,
    request: Json<DecisionRequest>,
) -> Response {
    decide(state, id, request, true).await
}

pub async fn deny(
    state: State<ApiState>,
    id: Path<String>,
    request: Json<DecisionRequest>,
) -> Response {
    decide(state, id, request, false).await
}

/// An operator's decision on a held action, through [`crate::respond::Approvals`].
async fn decide(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Json(request): Json<DecisionRequest>,
    approve: bool,
) -> Response {
    let approvals = state.respond.approvals();
    let outcome = tokio::task::spawn_blocking(move || {
        approvals.decide_with_reason(&id, &request.operator, approve, &request.reason)
    })
    .await;
    decision_response(outcome)
}

fn decision_response(
    outcome: Result<Result<ActionRecord, ApprovalError>, tokio::task::JoinError>,
) -> Response {
    match outcome {
        // Two-person approval: the first approval is recorded, the action stays held.
        Ok(Ok(record)) if record.status == ActionStatus::Held => {
            (StatusCode::ACCEPTED, Json(record)).into_response()
        }
        Ok(Ok(record)) => Json(record).into_response(),
        Ok(Err(e @ ApprovalError::InvalidOperator)) => {
            error(StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
        Ok(Err(e @ ApprovalError::NotHeld { .. })) => {
            error(StatusCode::NOT_FOUND, e.to_string()).into_response()
        }
        Ok(Err(e @ ApprovalError::Expired { .. })) => {
            error(StatusCode::GONE, e.to_string()).into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// A SOAR's signed decision on a held action (`POST /webhook/approval`). The Standard Webhooks
/// signature replaces the API token; the decision is audited as `webhook:<operator>`.
pub async fn inbound_approval(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let verifier = state.inbound.clone();
    let approvals = state.respond.approvals();
    let outcome = tokio::task::spawn_blocking(move || {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let request = InboundRequest::from_headers(header, &body);
        verifier.verify(&request).map(|decision| {
            let operator = format!("webhook:{}", decision.operator);
            approvals.decide_with_reason(
                &decision.action_id,
                &operator,
                decision.approve,
                "inbound webhook",
            )
        })
    })
    .await;
    match outcome {
        Ok(Err(refused)) => {
            tracing::warn!(error = %refused, "inbound webhook refused");
            let status = match refused {
                InboundError::Disabled => StatusCode::NOT_FOUND,
                InboundError::BadBody(_) | InboundError::BadField { .. } => StatusCode::BAD_REQUEST,
                InboundError::ReplayStore { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::UNAUTHORIZED,
            };
            error(status, refused.to_string()).into_response()
        }
        Ok(Ok(decided)) => decision_response(Ok(decided)),
        Err(e) => internal(e),
    }
}
