//! The console's route handlers. Store, audit and password work is synchronous, so it runs on
//! blocking threads; every page needs a session, every POST but the login a CSRF token.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Form;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use futures_util::Stream;
use maud::Markup;
use qsc_event::{EventKind, now_ns};
use serde::Deserialize;

use super::pages::{self, ActionsView, HostRow};
use super::session::{Session, cookie_value};
use super::users::UsersFile;
use super::{ConsoleState, UsersError};
use crate::audit::AuditError;
use crate::decide::NodeState;
use crate::ingest::agents::AgentsFile;
use crate::keys::source_name;
use crate::respond::{ActionStatus, ApprovalError, ReleaseError, ReleaseOutcome, Responder};
use crate::store::{ActionQuery, EventQuery, IncidentQuery, StoreError};

/// How far back the fleet page looks for heartbeats and loss reports.
const FLEET_WINDOW_NS: u64 = 3600 * 1_000_000_000;
/// Timeline window before an incident opened.
const TIMELINE_BEFORE_NS: u64 = 600 * 1_000_000_000;
/// Most rows on the list pages.
const LIST_LIMIT: usize = 200;
/// Audit records searched (the newest ones).
const AUDIT_SEARCH_DEPTH: u64 = 5000;
/// How often the live-update stream looks for changes.
const STREAM_POLL: Duration = Duration::from_secs(2);

/// Why a console request failed on the server's side.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("audit chain: {0}")]
    Audit(#[from] AuditError),
    #[error("users file: {0}")]
    Users(#[from] UsersError),
    #[error("agents file: {0}")]
    Agents(#[from] crate::ingest::agents::AgentsFileError),
    #[error("no randomness for a session id: {0}")]
    Random(getrandom::Error),
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        tracing::error!(error = %self, "console request failed");
        html(
            StatusCode::INTERNAL_SERVER_ERROR,
            pages::message(None, "Error", &self.to_string()),
        )
    }
}

fn html(status: StatusCode, page: Markup) -> Response {
    let mut response = (status, page).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn ok(page: Markup) -> Response {
    html(StatusCode::OK, page)
}

/// Runs synchronous work on a blocking thread.
async fn blocking<T, F>(work: F) -> Result<T, ConsoleError>
where
    F: FnOnce() -> Result<T, ConsoleError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work).await?
}

/// A logged-in user (any role), with the session id; pages that need one redirect to the
/// login otherwise. The role is re-read from the users file, so a removed user is out at once.
pub struct User {
    pub session: Session,
    pub id: String,
}

impl FromRequestParts<ConsoleState> for User {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        let to_login = || Redirect::to("/console/login").into_response();
        let id = parts
            .headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(cookie_value)
            .map(str::to_owned)
            .ok_or_else(to_login)?;
        let mut session = state.sessions.get(&id).ok_or_else(to_login)?;
        let users_file = state.users_file.clone();
        let name = session.user.clone();
        let role = blocking(move || Ok(UsersFile::load(&users_file)?.role_of(&name)))
            .await
            .map_err(IntoResponse::into_response)?;
        match role {
            Some(role) => session.role = role,
            None => {
                state.sessions.close(&id);
                return Err(to_login());
            }
        }
        Ok(User { session, id })
    }
}

/// `/console` → `/console/`.
pub async fn to_fleet() -> Redirect {
    Redirect::permanent("/console/")
}

pub async fn login_page() -> Response {
    ok(pages::login(None))
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
}

/// Checks the password against the argon2id hash and opens a session.
pub async fn login(State(state): State<ConsoleState>, Form(form): Form<LoginForm>) -> Response {
    let users_file = state.users_file.clone();
    let name = form.name.clone();
    let found = blocking(move || {
        let users = UsersFile::load(&users_file)?;
        Ok(users.authenticate(&name, &form.password).map(|u| u.role))
    })
    .await;
    let role = match found {
        Ok(Some(role)) => role,
        Ok(None) => {
            tracing::warn!(user = %form.name, "console login refused");
            return html(
                StatusCode::UNAUTHORIZED,
                pages::login(Some("Wrong user name or password.")),
            );
        }
        Err(e) => return e.into_response(),
    };
    let id = match state.sessions.open(&form.name, role) {
        Ok(id) => id,
        Err(e) => return ConsoleError::Random(e).into_response(),
    };
    tracing::info!(user = %form.name, role = role.as_str(), "console login");
    let cookie = state.sessions.cookie(&id, state.secure_cookie);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/console/")).into_response()
}

/// A form that changes state: its CSRF token, and an optional reason.
#[derive(Deserialize)]
pub struct ChangeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

pub async fn logout(
    State(state): State<ConsoleState>,
    user: User,
    Form(form): Form<ChangeForm>,
) -> Response {
    if !user.session.csrf_matches(&form.csrf) {
        return refused_csrf(&user.session);
    }
    state.sessions.close(&user.id);
    let expired = format!(
        "{}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        super::session::COOKIE
    );
    (
        [(header::SET_COOKIE, expired)],
        Redirect::to("/console/login"),
    )
        .into_response()
}

fn refused_csrf(session: &Session) -> Response {
    tracing::warn!(user = %session.user, "console form refused: CSRF token missing or wrong");
    html(
        StatusCode::FORBIDDEN,
        pages::message(
            Some(session),
            "Refused",
            "This form did not carry this session's CSRF token; nothing was changed.",
        ),
    )
}

/// `None` when the user may change state with this form, else the refusal.
fn authorize(session: &Session, form: &ChangeForm) -> Option<Response> {
    if !session.csrf_matches(&form.csrf) {
        return Some(refused_csrf(session));
    }
    if !session.role.may_act() {
        tracing::warn!(user = %session.user, "console change refused: role {}", session.role.as_str());
        return Some(html(
            StatusCode::FORBIDDEN,
            pages::message(
                Some(session),
                "Refused",
                &format!(
                    "Your role ({}) may not approve, deny, release or restore; an operator must.",
                    session.role.as_str()
                ),
            ),
        ));
    }
    None
}

pub async fn fleet(State(state): State<ConsoleState>, user: User) -> Response {
    let now = now_ns();
    match blocking(move || fleet_rows(&state, now)).await {
        Ok(rows) => ok(pages::fleet(&user.session, &rows, now)),
        Err(e) => e.into_response(),
    }
}

/// Every enrolled host and every host with a node state, with what its recent events say.
fn fleet_rows(state: &ConsoleState, now: u64) -> Result<Vec<HostRow>, ConsoleError> {
    let mut rows: BTreeMap<String, HostRow> = BTreeMap::new();
    for agent in AgentsFile::load(&state.agents_file)?.agents {
        let row = rows.entry(agent.host_id.clone()).or_default();
        row.class = agent.class;
        let kind = source_name(agent.source);
        row.agents.push(if agent.revoked {
            format!("{kind} (revoked)")
        } else {
            kind.to_owned()
        });
    }
    for node in state.store.node_states()? {
        let host = node.host.clone();
        rows.entry(host).or_default().node = Some(node);
    }
    for (host, row) in &mut rows {
        row.host = host.clone();
        row.connected = state.links.is_connected(host);
        health_from_events(state, row, now)?;
    }
    Ok(rows.into_values().collect())
}

/// The event kinds the fleet page reads: agent health and integrity reports.
const HEALTH_KINDS: &[&str] = &[
    "heartbeat",
    "event_loss",
    "integrity_file_changed",
    "integrity_file_added",
    "integrity_file_removed",
    "integrity_baseline_tampered",
    "backup_corrupt",
    "backup_missing",
    "backup_unexpected",
];

/// Last seen (newest heartbeat or report), agent versions, event loss and integrity status
/// from the host's recent health and integrity events.
fn health_from_events(state: &ConsoleState, row: &mut HostRow, now: u64) -> Result<(), StoreError> {
    let events = state.store.query_events(&EventQuery {
        host: Some(row.host.clone()),
        since_ns: Some(now.saturating_sub(FLEET_WINDOW_NS)),
        until_ns: None,
        kinds: HEALTH_KINDS.iter().map(|k| (*k).to_owned()).collect(),
        limit: 20_000,
    })?;
    row.last_seen_ns = events.last().map(|e| e.time_ns);
    let mut loss: BTreeMap<(&str, String), u64> = BTreeMap::new();
    row.integrity = "no change reported".into();
    for event in &events {
        match &event.kind {
            EventKind::Heartbeat(beat) => {
                row.versions
                    .insert(source_name(event.source).to_owned(), beat.version.clone());
            }
            EventKind::EventLoss(lost) => {
                let total = loss
                    .entry((source_name(event.source), lost.stage.clone()))
                    .or_default();
                *total = (*total).max(lost.total);
            }
            kind if kind.name().starts_with("integrity_") || kind.name().starts_with("backup_") => {
                row.integrity = kind.name().to_owned();
            }
            _ => {}
        }
    }
    row.event_loss = loss.values().sum();
    Ok(())
}

pub async fn incidents(State(state): State<ConsoleState>, user: User) -> Response {
    let query = IncidentQuery {
        limit: LIST_LIMIT,
        ..IncidentQuery::default()
    };
    match blocking(move || Ok(state.store.incidents(&query)?)).await {
        Ok(list) => ok(pages::incidents(&user.session, &list, now_ns())),
        Err(e) => e.into_response(),
    }
}

pub async fn incident(
    State(state): State<ConsoleState>,
    user: User,
    Path(id): Path<String>,
) -> Response {
    let found = blocking(move || {
        let Some(incident) = state.store.incident(&id)? else {
            return Ok(None);
        };
        let events = state.store.query_events(&EventQuery {
            host: Some(incident.host.clone()),
            since_ns: Some(incident.opened_ns.saturating_sub(TIMELINE_BEFORE_NS)),
            until_ns: Some(incident.updated_ns.saturating_add(1)),
            kinds: Vec::new(),
            limit: 500,
        })?;
        Ok(Some((incident, events)))
    })
    .await;
    match found {
        Ok(Some((incident, events))) => ok(pages::incident(&user.session, &incident, &events)),
        Ok(None) => html(
            StatusCode::NOT_FOUND,
            pages::message(Some(&user.session), "Not found", "No such incident."),
        ),
        Err(e) => e.into_response(),
    }
}

pub async fn actions(State(state): State<ConsoleState>, user: User) -> Response {
    let loaded = blocking(move || {
        let mut held = state.respond.held();
        held.sort_by_key(|a| a.expires_ns);
        let recent = state.store.actions(&ActionQuery {
            limit: LIST_LIMIT,
            ..ActionQuery::default()
        })?;
        let isolated: Vec<_> = state
            .store
            .node_states()?
            .into_iter()
            .filter(|n| n.state == NodeState::Isolated)
            .collect();
        Ok((held, recent, isolated))
    })
    .await;
    match loaded {
        Ok((held, recent, isolated)) => {
            let view = ActionsView {
                held: &held,
                recent: &recent,
                isolated: &isolated,
                now_ns: now_ns(),
            };
            ok(pages::actions(&user.session, &view))
        }
        Err(e) => e.into_response(),
    }
}

pub async fn approve(
    state: State<ConsoleState>,
    user: User,
    id: Path<String>,
    form: Form<ChangeForm>,
) -> Response {
    decide(state, user, id, form, true).await
}

pub async fn deny(
    state: State<ConsoleState>,
    user: User,
    id: Path<String>,
    form: Form<ChangeForm>,
) -> Response {
    decide(state, user, id, form, false).await
}

/// An operator's decision, audited as `operator:<console user>`.
async fn decide(
    State(state): State<ConsoleState>,
    user: User,
    Path(id): Path<String>,
    Form(form): Form<ChangeForm>,
    approve: bool,
) -> Response {
    let outcome = operator_change(&state, &user, form, move |respond, operator, reason| {
        respond
            .approvals()
            .decide_with_reason(&id, operator, approve, reason)
    });
    let (status, text) = match outcome.await {
        Ok(Ok(record)) if record.status == ActionStatus::Held => {
            let page = pages::message(Some(&user.session), "Approval recorded", &record.detail);
            return html(StatusCode::ACCEPTED, page);
        }
        Ok(Ok(_)) => return Redirect::to("/console/actions").into_response(),
        Ok(Err(e @ ApprovalError::NotHeld { .. })) => (StatusCode::NOT_FOUND, e.to_string()),
        Ok(Err(e @ ApprovalError::Expired { .. })) => (StatusCode::GONE, e.to_string()),
        Ok(Err(e @ ApprovalError::InvalidOperator)) => (StatusCode::BAD_REQUEST, e.to_string()),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(answer) => return answer,
    };
    html(
        status,
        pages::message(Some(&user.session), "Not applied", &text),
    )
}

/// Releases an ISOLATED host (with `[respond] two_person_release`, the second operator does).
pub async fn release(
    State(state): State<ConsoleState>,
    user: User,
    Path(host): Path<String>,
    Form(form): Form<ChangeForm>,
) -> Response {
    let outcome = operator_change(&state, &user, form, move |respond, operator, reason| {
        respond.release(&host, operator, reason)
    });
    let (status, text) = match outcome.await {
        Ok(Ok(ReleaseOutcome::Released { .. })) => {
            return Redirect::to("/console/actions").into_response();
        }
        Ok(Ok(ReleaseOutcome::AwaitingSecond { first })) => (
            StatusCode::ACCEPTED,
            format!("Approved by {first}; a second operator must approve the release too."),
        ),
        Ok(Err(e @ (ReleaseError::InvalidOperator | ReleaseError::Decide(_)))) => {
            (StatusCode::CONFLICT, e.to_string())
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(answer) => return answer,
    };
    html(
        status,
        pages::message(Some(&user.session), "Release", &text),
    )
}

/// Restores an account a revocation refused: its agent unlocks it and lifts the kernel's
/// refusal.
pub async fn restore_account(
    State(state): State<ConsoleState>,
    user: User,
    Path((host, account)): Path<(String, String)>,
    Form(form): Form<ChangeForm>,
) -> Response {
    let outcome = operator_change(&state, &user, form, move |respond, operator, reason| {
        respond.restore_account(&host, &account, operator, reason)
    });
    match outcome.await {
        Ok(Ok(_)) => Redirect::to("/console/actions").into_response(),
        Ok(Err(e)) => html(
            StatusCode::BAD_REQUEST,
            pages::message(Some(&user.session), "Not restored", &e.to_string()),
        ),
        Err(answer) => answer,
    }
}

/// Runs an operator's change on the responder (as the session's user, with the form's
/// reason) off the async runtime, once the form passed the CSRF and role checks. `Err` is the
/// answer to give instead: the refusal, or the failed task.
async fn operator_change<T: Send + 'static>(
    state: &ConsoleState,
    user: &User,
    form: ChangeForm,
    change: impl FnOnce(&Arc<Responder>, &str, &str) -> T + Send + 'static,
) -> Result<T, Response> {
    if let Some(refusal) = authorize(&user.session, &form) {
        return Err(refusal);
    }
    let operator = user.session.user.clone();
    let respond = state.respond.clone();
    tokio::task::spawn_blocking(move || change(&respond, &operator, &form.reason))
        .await
        .map_err(|e| ConsoleError::Task(e).into_response())
}

#[derive(Deserialize)]
pub struct AuditParams {
    #[serde(default)]
    q: String,
}

/// Verifies the chain and lists the newest records matching `q` (kind, actor or body text).
pub async fn audit(
    State(state): State<ConsoleState>,
    user: User,
    Query(params): Query<AuditParams>,
) -> Response {
    let query = params.q.clone();
    let loaded = blocking(move || {
        let report = state.audit.verify()?;
        let from = report
            .last_seq
            .saturating_sub(AUDIT_SEARCH_DEPTH - 1)
            .max(1);
        let needle = query.to_lowercase();
        let records: Vec<_> = state
            .audit
            .records(from, report.last_seq)?
            .into_iter()
            .filter(|r| {
                needle.is_empty()
                    || r.kind.contains(&needle)
                    || r.actor.to_lowercase().contains(&needle)
                    || r.body.to_lowercase().contains(&needle)
            })
            .collect();
        let keep = records.len().saturating_sub(LIST_LIMIT);
        Ok((report, records[keep..].to_vec()))
    })
    .await;
    match loaded {
        Ok((report, records)) => ok(pages::audit(&user.session, &report, &records, &params.q)),
        Err(e) => e.into_response(),
    }
}

/// A fingerprint of what the pages show: it changes when an incident, action or node changes.
fn fingerprint(state: &ConsoleState) -> Result<String, StoreError> {
    let newest_incident = state
        .store
        .incidents(&IncidentQuery {
            limit: 1,
            ..IncidentQuery::default()
        })?
        .first()
        .map(|i| i.updated_ns);
    let newest_action = state
        .store
        .actions(&ActionQuery {
            limit: 1,
            ..ActionQuery::default()
        })?
        .first()
        .map(|a| a.updated_ns);
    let nodes: u64 = state
        .store
        .node_states()?
        .iter()
        .map(|n| n.since_ns)
        .max()
        .unwrap_or(0);
    Ok(format!("{newest_incident:?}/{newest_action:?}/{nodes}"))
}

/// Server-sent events: a `change` event whenever the fingerprint moves.
pub async fn stream(
    State(state): State<ConsoleState>,
    _user: User,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = futures_util::stream::unfold((state, None), |(state, last)| async move {
        loop {
            tokio::time::sleep(STREAM_POLL).await;
            let probe = state.clone();
            let current = tokio::task::spawn_blocking(move || fingerprint(&probe).ok())
                .await
                .ok()
                .flatten();
            if current.is_some() && current != last {
                let event = SseEvent::default().event("change").data("changed");
                let first = last.is_none();
                let next = (state, current);
                if first {
                    // The page was rendered with this state already: only note it.
                    return Some((Ok(SseEvent::default().comment("ready")), next));
                }
                return Some((Ok(event), next));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

pub async fn css() -> Response {
    asset("text/css", include_str!("assets/console.css"))
}

pub async fn js() -> Response {
    asset("text/javascript", include_str!("assets/console.js"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}
