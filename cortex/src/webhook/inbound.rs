//! The inbound approval webhook: a SOAR approves or denies a held response action.
//!
//! The request is signed like the outbound alerts (Standard Webhooks: `webhook-id`,
//! `webhook-timestamp`, `webhook-signature` over `{id}.{timestamp}.{body}`) with the
//! configured `inbound_secret`. Its JSON body is
//!
//! ```json
//! {"action_id": "act-7", "operator": "alice", "approve": true}
//! ```
//!
//! (`action_id`: the held action; `operator`: who decided, recorded in the audit chain;
//! `approve`: `true` runs the action, `false` denies it). Unknown keys are refused.
//! A request is refused when a header is missing, its timestamp is further than the tolerance
//! from our clock, no signature matches, or its webhook-id was already accepted within the
//! tolerance window (replay). With [`InboundVerifier::with_replay_file`] the accepted ids are
//! also written to a SQLite file, so a restart does not reopen the replay window.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use thiserror::Error;

use super::queue::{QueueError, open_private_sqlite};
use super::sign::WebhookSecret;

const REPLAY_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS webhook_inbound_seen (
    id        TEXT PRIMARY KEY,
    timestamp INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_inbound_seen_ts ON webhook_inbound_seen (timestamp);
";

/// Largest accepted body.
pub const MAX_INBOUND_BODY: usize = 16 * 1024;
/// Longest accepted `action_id` or `operator`.
pub const MAX_FIELD_LEN: usize = 128;
/// Most webhook-ids remembered for replay detection (entries expire with the tolerance).
pub const MAX_REMEMBERED_IDS: usize = 100_000;

/// The typed decision of a valid approval request.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDecision {
    /// The held action this decides.
    pub action_id: String,
    /// Who decided (as the SOAR names them), for the audit chain.
    pub operator: String,
    /// `true`: run the action; `false`: deny it.
    pub approve: bool,
}

/// The three Standard Webhooks headers and the raw body of one inbound request.
#[derive(Clone, Copy, Debug, Default)]
pub struct InboundRequest<'a> {
    /// The `webhook-id` header.
    pub webhook_id: Option<&'a str>,
    /// The `webhook-timestamp` header (Unix seconds).
    pub webhook_timestamp: Option<&'a str>,
    /// The `webhook-signature` header (`v1,<base64>`, space-separated when several).
    pub webhook_signature: Option<&'a str>,
    /// The raw request body, exactly as received.
    pub body: &'a [u8],
}

impl<'a> InboundRequest<'a> {
    /// Builds a request from any header map: `header(name)` returns a header's value
    /// (lower-case names are asked for).
    pub fn from_headers(header: impl Fn(&str) -> Option<&'a str>, body: &'a [u8]) -> Self {
        Self {
            webhook_id: header("webhook-id"),
            webhook_timestamp: header("webhook-timestamp"),
            webhook_signature: header("webhook-signature"),
            body,
        }
    }
}

/// Why an inbound request was refused.
#[derive(Debug, Error)]
pub enum InboundError {
    #[error("inbound webhooks are disabled (no inbound_secret configured)")]
    Disabled,
    #[error("the `{0}` header is missing")]
    MissingHeader(&'static str),
    #[error("webhook-id `{0}` is empty, too long or not printable ASCII")]
    BadId(String),
    #[error("webhook-timestamp `{0}` is not a number of seconds")]
    BadTimestamp(String),
    #[error(
        "webhook-timestamp {timestamp} is {skew_s} s away from now (tolerance {tolerance_s} s)"
    )]
    TimestampOutOfTolerance {
        timestamp: i64,
        skew_s: u64,
        tolerance_s: u64,
    },
    #[error("the body is {0} bytes (at most {MAX_INBOUND_BODY})")]
    BodyTooLarge(usize),
    #[error("no webhook-signature matches")]
    BadSignature,
    #[error("webhook-id `{0}` was already accepted (replay)")]
    Replayed(String),
    #[error("too many webhook-ids within the tolerance window; refusing until they expire")]
    ReplayCacheFull,
    #[error("recording webhook-id `{id}` for replay detection failed: {source}")]
    ReplayStore { id: String, source: rusqlite::Error },
    #[error("the body is not a valid approval: {0}")]
    BadBody(serde_json::Error),
    #[error("`{field}` in the body {reason}")]
    BadField {
        field: &'static str,
        reason: &'static str,
    },
}

/// Verifies inbound approval requests; shared by all request handlers.
#[derive(Debug)]
pub struct InboundVerifier {
    secret: Option<WebhookSecret>,
    tolerance: Duration,
    /// Accepted webhook-ids and their timestamps.
    seen: Mutex<HashMap<String, i64>>,
    /// Where accepted ids are also recorded, when persistence is on.
    journal: Option<Mutex<rusqlite::Connection>>,
}

impl InboundVerifier {
    /// A verifier for this secret (`None`: every request is refused with `Disabled`).
    pub fn new(secret: Option<WebhookSecret>, tolerance: Duration) -> Self {
        Self {
            secret,
            tolerance,
            seen: Mutex::new(HashMap::new()),
            journal: None,
        }
    }

    /// Like [`InboundVerifier::new`], and records accepted ids in `path` (a SQLite file,
    /// created 0600; the webhook queue file may be used): ids accepted before a restart, still
    /// within the tolerance window, stay refused.
    pub fn with_replay_file(
        secret: Option<WebhookSecret>,
        tolerance: Duration,
        path: &Path,
    ) -> Result<Self, QueueError> {
        let conn = open_private_sqlite(path, REPLAY_SCHEMA)?;
        let sqlite = |source| QueueError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let since = unix_s(SystemTime::now()).saturating_sub(window_s(tolerance));
        let seen = {
            let mut stmt = conn
                .prepare("SELECT id, timestamp FROM webhook_inbound_seen WHERE timestamp >= ?1")
                .map_err(sqlite)?;
            let rows = stmt
                .query_map([since], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(sqlite)?;
            rows.collect::<Result<HashMap<String, i64>, _>>()
                .map_err(sqlite)?
        };
        Ok(Self {
            secret,
            tolerance,
            seen: Mutex::new(seen),
            journal: Some(Mutex::new(conn)),
        })
    }

    /// Verifies a request at the current time.
    pub fn verify(&self, request: &InboundRequest<'_>) -> Result<ApprovalDecision, InboundError> {
        self.verify_at(request, SystemTime::now())
    }

    /// Verifies a request as of `now`.
    pub fn verify_at(
        &self,
        request: &InboundRequest<'_>,
        now: SystemTime,
    ) -> Result<ApprovalDecision, InboundError> {
        let secret = self.secret.as_ref().ok_or(InboundError::Disabled)?;
        let id = header(request.webhook_id, "webhook-id")?;
        let timestamp = header(request.webhook_timestamp, "webhook-timestamp")?;
        let signature = header(request.webhook_signature, "webhook-signature")?;
        check_id(id)?;
        let timestamp = self.check_timestamp(timestamp, now)?;
        if request.body.len() > MAX_INBOUND_BODY {
            return Err(InboundError::BodyTooLarge(request.body.len()));
        }
        if !secret.verify(id, timestamp, request.body, signature) {
            return Err(InboundError::BadSignature);
        }
        let decision = parse_decision(request.body)?;
        self.remember(id, timestamp, unix_s(now))?;
        Ok(decision)
    }

    fn check_timestamp(&self, text: &str, now: SystemTime) -> Result<i64, InboundError> {
        let timestamp: i64 = text
            .trim()
            .parse()
            .map_err(|_| InboundError::BadTimestamp(text.to_owned()))?;
        let skew_s = unix_s(now).abs_diff(timestamp);
        if skew_s > self.tolerance.as_secs() {
            return Err(InboundError::TimestampOutOfTolerance {
                timestamp,
                skew_s,
                tolerance_s: self.tolerance.as_secs(),
            });
        }
        Ok(timestamp)
    }

    /// Records an accepted id; refuses one already recorded. Ids older than the tolerance
    /// window are forgotten: their timestamps would be refused anyway.
    fn remember(&self, id: &str, timestamp: i64, now_s: i64) -> Result<(), InboundError> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.contains_key(id) {
            return Err(InboundError::Replayed(id.to_owned()));
        }
        let window = window_s(self.tolerance);
        if seen.len() >= MAX_REMEMBERED_IDS {
            seen.retain(|_, ts| ts.saturating_add(window) >= now_s);
        }
        if seen.len() >= MAX_REMEMBERED_IDS {
            return Err(InboundError::ReplayCacheFull);
        }
        self.journal(id, timestamp, now_s.saturating_sub(window))?;
        seen.insert(id.to_owned(), timestamp);
        Ok(())
    }

    /// Records an accepted id in the replay file (dropping expired ones), when there is one.
    fn journal(&self, id: &str, timestamp: i64, expired_before: i64) -> Result<(), InboundError> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let conn = journal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let store = |source| InboundError::ReplayStore {
            id: id.to_owned(),
            source,
        };
        conn.execute(
            "DELETE FROM webhook_inbound_seen WHERE timestamp < ?1",
            [expired_before],
        )
        .map_err(store)?;
        let added = conn
            .execute(
                "INSERT OR IGNORE INTO webhook_inbound_seen (id, timestamp) VALUES (?1, ?2)",
                rusqlite::params![id, timestamp],
            )
            .map_err(store)?;
        if added == 0 {
            return Err(InboundError::Replayed(id.to_owned()));
        }
        Ok(())
    }
}

fn header<'a>(value: Option<&'a str>, name: &'static str) -> Result<&'a str, InboundError> {
    value.ok_or(InboundError::MissingHeader(name))
}

fn check_id(id: &str) -> Result<(), InboundError> {
    let printable = id.bytes().all(|b| b.is_ascii_graphic());
    if id.is_empty() || id.len() > 256 || !printable {
        return Err(InboundError::BadId(id.chars().take(64).collect()));
    }
    Ok(())
}

fn parse_decision(body: &[u8]) -> Result<ApprovalDecision, InboundError> {
    let decision: ApprovalDecision = serde_json::from_slice(body).map_err(InboundError::BadBody)?;
    check_field(&decision.action_id, "action_id")?;
    check_field(&decision.operator, "operator")?;
    Ok(decision)
}

fn check_field(value: &str, field: &'static str) -> Result<(), InboundError> {
    if value.trim().is_empty() {
        return Err(InboundError::BadField {
            field,
            reason: "is empty",
        });
    }
    if value.len() > MAX_FIELD_LEN {
        return Err(InboundError::BadField {
            field,
            reason: "is longer than 128 bytes",
        });
    }
    if value.chars().any(char::is_control) {
        return Err(InboundError::BadField {
            field,
            reason: "contains control characters",
        });
    }
    Ok(())
}

fn window_s(tolerance: Duration) -> i64 {
    i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX)
}

fn unix_s(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"action_id":"act-7","operator":"alice","approve":true}"#;

    fn setup() -> (InboundVerifier, WebhookSecret, SystemTime, i64) {
        let (secret, _) = WebhookSecret::generate().unwrap();
        let verifier = InboundVerifier::new(Some(secret.clone()), Duration::from_secs(300));
        let now_s = 1_700_000_000;
        (
            verifier,
            secret,
            UNIX_EPOCH + Duration::from_secs(now_s as u64),
            now_s,
        )
    }

    fn signed<'a>(
        secret: &WebhookSecret,
        id: &'a str,
        ts: &'a str,
        body: &'a [u8],
        sig: &'a mut String,
    ) -> InboundRequest<'a> {
        *sig = secret.sign(id, ts.parse().unwrap(), body);
        let sig: &'a str = sig.as_str();
        InboundRequest::from_headers(
            |name| match name {
                "webhook-id" => Some(id),
                "webhook-timestamp" => Some(ts),
                "webhook-signature" => Some(sig),
                _ => None,
            },
            body,
        )
    }

    #[test]
    fn a_valid_request_is_a_decision_and_its_replay_is_refused() {
        let (verifier, secret, now, now_s) = setup();
        let ts = (now_s - 10).to_string();
        let mut sig = String::new();
        let request = signed(&secret, "msg_1", &ts, BODY, &mut sig);
        let decision = verifier.verify_at(&request, now).unwrap();
        assert_eq!(
            decision,
            ApprovalDecision {
                action_id: "act-7".into(),
                operator: "alice".into(),
                approve: true
            }
        );
        let replay = verifier.verify_at(&request, now).unwrap_err();
        assert!(
            matches!(replay, InboundError::Replayed(ref id) if id == "msg_1"),
            "{replay}"
        );
    }

    #[test]
    fn bad_signature_is_refused() {
        let (verifier, secret, now, now_s) = setup();
        let ts = now_s.to_string();
        let mut sig = String::new();
        let mut request = signed(&secret, "msg_2", &ts, BODY, &mut sig);
        let tampered = br#"{"action_id":"act-8","operator":"alice","approve":true}"#;
        request.body = tampered;
        let err = verifier.verify_at(&request, now).unwrap_err();
        assert!(matches!(err, InboundError::BadSignature), "{err}");
        let (other, _) = WebhookSecret::generate().unwrap();
        let mut sig2 = String::new();
        let foreign = signed(&other, "msg_2", &ts, BODY, &mut sig2);
        let err = verifier.verify_at(&foreign, now).unwrap_err();
        assert!(matches!(err, InboundError::BadSignature), "{err}");
    }

    #[test]
    fn old_and_future_timestamps_are_refused() {
        let (verifier, secret, now, now_s) = setup();
        for ts in [now_s - 301, now_s + 301] {
            let ts = ts.to_string();
            let mut sig = String::new();
            let request = signed(&secret, "msg_3", &ts, BODY, &mut sig);
            let err = verifier.verify_at(&request, now).unwrap_err();
            assert!(
                matches!(
                    err,
                    InboundError::TimestampOutOfTolerance { skew_s: 301, .. }
                ),
                "{err}"
            );
        }
        let mut request = InboundRequest {
            webhook_id: Some("msg_3"),
            webhook_timestamp: Some("yesterday"),
            webhook_signature: Some("v1,AAAA"),
            body: BODY,
        };
        assert!(matches!(
            verifier.verify_at(&request, now).unwrap_err(),
            InboundError::BadTimestamp(_)
        ));
        request.webhook_timestamp = None;
        assert!(matches!(
            verifier.verify_at(&request, now).unwrap_err(),
            InboundError::MissingHeader("webhook-timestamp")
        ));
    }

    #[test]
    fn bodies_are_checked_after_the_signature() {
        let (verifier, secret, now, now_s) = setup();
        let ts = now_s.to_string();
        let cases: [(&[u8], &str); 4] = [
            (br#"{"action_id":"a","operator":"o"}"#, "missing approve"),
            (
                br#"{"action_id":"a","operator":"o","approve":true,"x":1}"#,
                "unknown key",
            ),
            (
                br#"{"action_id":" ","operator":"o","approve":true}"#,
                "empty id",
            ),
            (
                br#"{"action_id":"a","operator":"o\u0007","approve":false}"#,
                "control char",
            ),
        ];
        for (i, (body, what)) in cases.iter().enumerate() {
            let id = format!("msg_body_{i}");
            let mut sig = String::new();
            let request = signed(&secret, &id, &ts, body, &mut sig);
            let err = verifier.verify_at(&request, now).unwrap_err();
            assert!(
                matches!(
                    err,
                    InboundError::BadBody(_) | InboundError::BadField { .. }
                ),
                "{what}: {err}"
            );
        }
        let disabled = InboundVerifier::new(None, Duration::from_secs(300));
        assert!(matches!(
            disabled
                .verify_at(&InboundRequest::default(), now)
                .unwrap_err(),
            InboundError::Disabled
        ));
    }
}
