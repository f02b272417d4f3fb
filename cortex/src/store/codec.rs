//! What every store backend encodes the same way: event rows validated and sealed with the
//! payload cipher, opened and decoded again; the key-check value that makes a wrong master key
//! fail at open time; JSON bodies of incidents, node states and actions; integer conversions.
//! The SQL around them is the backend's own.

use qsc_event::{Event, Source};

use super::StoreError;
use super::cipher::{NONCE_LEN, PayloadCipher, RowKey, random_nonces};
use super::queue::SealedRow;
use crate::score::Severity;

const KEY_CHECK_ROW: RowKey<'static> = RowKey {
    host_id: "qsc-store-key-check",
    agent: Source::Cortex,
    seq: 0,
};
const KEY_CHECK_PLAINTEXT: &[u8] = b"qsc store key check v1";

/// A fresh key-check value (nonce then ciphertext) to store at creation.
pub(super) fn new_key_check(cipher: &PayloadCipher) -> Result<Vec<u8>, StoreError> {
    let nonce = random_nonces(1)?.remove(0);
    let sealed = cipher.seal(&KEY_CHECK_ROW, nonce, KEY_CHECK_PLAINTEXT)?;
    let mut value = sealed.nonce.to_vec();
    value.extend_from_slice(&sealed.ciphertext);
    Ok(value)
}

/// True when the stored key-check value opens under `cipher`'s key.
pub(super) fn key_check_opens(cipher: &PayloadCipher, value: &[u8]) -> bool {
    let (nonce, ciphertext) = value.split_at(value.len().min(NONCE_LEN));
    cipher
        .open(&KEY_CHECK_ROW, nonce, ciphertext)
        .is_ok_and(|plaintext| plaintext == KEY_CHECK_PLAINTEXT)
}

/// The `agent` column value of a source.
pub(crate) fn agent_name(agent: Source) -> &'static str {
    match agent {
        Source::Alpha => "alpha",
        Source::Beta => "beta",
        Source::Cortex => "cortex",
    }
}

/// The source an `agent` column value names.
pub(crate) fn agent_from_name(name: &str) -> Option<Source> {
    match name {
        "alpha" => Some(Source::Alpha),
        "beta" => Some(Source::Beta),
        "cortex" => Some(Source::Cortex),
        _ => None,
    }
}

/// One stored event row as read back.
pub(super) struct StoredRow {
    pub host_id: String,
    pub agent: String,
    pub seq: i64,
    pub nonce: Vec<u8>,
    pub payload: Vec<u8>,
}

/// Validates and encrypts a whole batch before anything of it is written.
pub(super) fn seal_batch(
    cipher: &PayloadCipher,
    host_id: &str,
    agent: Source,
    events: &[Event],
) -> Result<Vec<SealedRow>, StoreError> {
    seal_delivered(cipher, host_id, agent, events, &[])
}

/// [`seal_batch`] where `delivered[i]`, if present, is the JSON `events[i]` was decoded from:
/// that is sealed as it is instead of encoding the event again ([`open_event`] restores the
/// row's seq, the only field ingest sets after decoding).
pub(super) fn seal_delivered(
    cipher: &PayloadCipher,
    host_id: &str,
    agent: Source,
    events: &[Event],
    delivered: &[Option<&[u8]>],
) -> Result<Vec<SealedRow>, StoreError> {
    let nonces = random_nonces(events.len())?;
    let mut encoded = Vec::new();
    events
        .iter()
        .enumerate()
        .zip(nonces)
        .map(|((index, event), nonce)| {
            check_event(host_id, agent, event)?;
            let plaintext = match delivered.get(index).copied().flatten() {
                Some(json) => json,
                None => {
                    encoded.clear();
                    serde_json::to_writer(&mut encoded, event).map_err(|e| {
                        StoreError::CorruptRow {
                            table: "events",
                            key: format!("{host_id}/{}/{}", agent_name(agent), event.seq),
                            reason: format!("cannot encode: {e}"),
                        }
                    })?;
                    &encoded
                }
            };
            let row = RowKey {
                host_id,
                agent,
                seq: event.seq,
            };
            let sealed = cipher.seal(&row, nonce, plaintext)?;
            Ok(SealedRow {
                seq: to_i64("seq", event.seq)?,
                time_ns: to_i64("time_ns", event.time_ns)?,
                kind: event.kind.name(),
                nonce: sealed.nonce,
                payload: sealed.ciphertext,
            })
        })
        .collect()
}

/// Authenticates, decrypts and decodes one stored event row.
pub(super) fn open_event(cipher: &PayloadCipher, row: StoredRow) -> Result<Event, StoreError> {
    let corrupt = |reason: &str| StoreError::CorruptRow {
        table: "events",
        key: format!("{}/{}/{}", row.host_id, row.agent, row.seq),
        reason: reason.to_owned(),
    };
    let seq = u64::try_from(row.seq).map_err(|_| corrupt("negative seq"))?;
    let agent = agent_from_name(&row.agent).ok_or_else(|| corrupt("unknown agent"))?;
    let key = RowKey {
        host_id: &row.host_id,
        agent,
        seq,
    };
    let plaintext = cipher.open(&key, &row.nonce, &row.payload)?;
    let mut event = Event::from_json(&plaintext).map_err(|source| StoreError::Decode {
        host_id: row.host_id,
        seq,
        source,
    })?;
    // A payload stored as the agent delivered it carries the agent's own seq; the row's
    // (authenticated with the payload) is the delivery seq ingest gave the event.
    event.seq = seq;
    Ok(event)
}

/// An event may be stored for `agent` of `host_id` if it is valid, names that host, and was
/// made by that agent or by the cortex in place of one of its deliveries.
fn check_event(host_id: &str, agent: Source, event: &Event) -> Result<(), StoreError> {
    event
        .validate()
        .map_err(|source| StoreError::InvalidEvent {
            seq: event.seq,
            source,
        })?;
    if event.host_id != host_id {
        return Err(StoreError::HostMismatch {
            expected: host_id.to_owned(),
            found: event.host_id.clone(),
            seq: event.seq,
        });
    }
    if event.source != agent && event.source != Source::Cortex {
        return Err(StoreError::AgentMismatch {
            expected: agent,
            found: event.source,
            seq: event.seq,
        });
    }
    Ok(())
}

pub(super) fn severity_rank(severity: Severity) -> i64 {
    match severity {
        Severity::Low => 1,
        Severity::Medium => 2,
        Severity::High => 3,
        Severity::Critical => 4,
    }
}

pub(super) fn to_json<T: serde::Serialize>(
    table: &'static str,
    key: &str,
    value: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::CorruptRow {
        table,
        key: key.to_owned(),
        reason: format!("cannot encode: {e}"),
    })
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(
    table: &'static str,
    key: &str,
    body: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::CorruptRow {
        table,
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

pub(super) fn to_i64(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::ValueTooLarge { field, value })
}

pub(super) fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
