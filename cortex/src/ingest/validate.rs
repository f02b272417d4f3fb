//! Checks on every event an agent delivers, beyond the schema's own: size, the host and source
//! bound to the agent's key, and a sane timestamp. A rejected event is replaced in the store by
//! a cortex-made finding about the rejection (see [`rejection_event`]), so the host's delivery
//! sequence stays gap-free and the rejection itself is evidence.

use qsc_event::{Event, EventError, EventKind, EventLoss, Source, TamperAttempt};

use super::agents::Binding;
use crate::config::IngestConfig;
use crate::metrics::RejectReason;

/// Why one event was refused, with a detail for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

/// The limits of [`IngestConfig`] in the units the checks use.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_event_bytes: usize,
    pub max_past_ns: u64,
    pub max_future_ns: u64,
}

impl From<&IngestConfig> for Limits {
    fn from(config: &IngestConfig) -> Self {
        Limits {
            max_event_bytes: config.max_event_bytes,
            max_past_ns: config.max_past_s.saturating_mul(1_000_000_000),
            max_future_ns: config.max_future_s.saturating_mul(1_000_000_000),
        }
    }
}

fn reject(reason: RejectReason, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
    }
}

/// Decodes and checks one delivered event. On success the event carries `delivery_seq`, the
/// channel's sequence number for it, which keys it in the store (with the host and agent) and
/// so makes re-delivery exactly-once.
pub fn validate_event(
    bytes: &[u8],
    agent: &Binding,
    delivery_seq: u64,
    limits: &Limits,
    now_ns: u64,
) -> Result<Event, Rejection> {
    if bytes.len() > limits.max_event_bytes {
        return Err(reject(
            RejectReason::Oversize,
            format!(
                "{} bytes exceeds the limit of {}",
                bytes.len(),
                limits.max_event_bytes
            ),
        ));
    }
    let mut event = Event::from_json(bytes).map_err(|e| match e {
        EventError::SchemaVersion { .. } => reject(RejectReason::Schema, e.to_string()),
        _ => reject(RejectReason::Malformed, e.to_string()),
    })?;
    if event.host_id != agent.host_id {
        return Err(reject(
            RejectReason::HostMismatch,
            format!(
                "event names host `{}` but the agent key is bound to `{}`",
                event.host_id, agent.host_id
            ),
        ));
    }
    if event.source != agent.source {
        return Err(reject(
            RejectReason::SourceMismatch,
            format!(
                "event claims source {:?} but the agent is enrolled as {:?}",
                event.source, agent.source
            ),
        ));
    }
    if event.time_ns < now_ns.saturating_sub(limits.max_past_ns) {
        return Err(reject(
            RejectReason::TooOld,
            format!(
                "time_ns {} is older than the accepted window",
                event.time_ns
            ),
        ));
    }
    if event.time_ns > now_ns.saturating_add(limits.max_future_ns) {
        return Err(reject(
            RejectReason::InFuture,
            format!("time_ns {} is ahead of the cortex clock", event.time_ns),
        ));
    }
    event.seq = delivery_seq;
    Ok(event)
}

/// What the store keeps in place of a rejected event (under the same delivery seq of the same
/// agent): a `tamper_attempt` for spoofing (an agent speaking for another host or kind) and an
/// `event_loss` at stage `ingest` otherwise.
pub fn rejection_event(
    agent: &Binding,
    delivery_seq: u64,
    rejection: &Rejection,
    rejected_total: u64,
    now_ns: u64,
) -> Event {
    let detail = format!("{}: {}", rejection.reason.label(), rejection.detail);
    let kind = if rejection.reason.is_spoofing() {
        EventKind::TamperAttempt(TamperAttempt {
            action: "spoofed_event".into(),
            process: None,
            signal: None,
            detail: Some(detail),
        })
    } else {
        EventKind::EventLoss(EventLoss {
            stage: "ingest".into(),
            record: Some(detail),
            lost: 1,
            total: rejected_total,
        })
    };
    let mut event = Event::new(agent.host_id.clone(), Source::Cortex, delivery_seq, kind);
    event.time_ns = now_ns;
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use qsc_event::{AuthAttempt, now_ns};

    const NOW: u64 = 1_800_000_000_000_000_000;

    fn binding() -> Binding {
        Binding {
            host_id: "web-01".into(),
            source: Source::Alpha,
            class: "standard".into(),
        }
    }

    fn limits() -> Limits {
        Limits::from(&IngestConfig::default())
    }

    fn auth(host: &str, source: Source, time_ns: u64) -> Vec<u8> {
        let mut event = Event::new(
            host,
            source,
            99,
            EventKind::AuthFailure(AuthAttempt {
                user: "root".into(),
                remote_ip: None,
                service: "sshd".into(),
                detail: None,
            }),
        );
        event.time_ns = time_ns;
        event.to_json().into_bytes()
    }

    fn reason(bytes: &[u8]) -> RejectReason {
        validate_event(bytes, &binding(), 1, &limits(), NOW)
            .unwrap_err()
            .reason
    }

    #[test]
    fn a_good_event_takes_the_delivery_seq() {
        let event = validate_event(
            &auth("web-01", Source::Alpha, NOW),
            &binding(),
            7,
            &limits(),
            NOW,
        )
        .unwrap();
        assert_eq!(event.seq, 7);
        assert_eq!(event.host_id, "web-01");
    }

    #[test]
    fn each_check_has_its_reason() {
        assert_eq!(
            reason(&auth("db-01", Source::Alpha, NOW)),
            RejectReason::HostMismatch
        );
        assert_eq!(
            reason(&auth("web-01", Source::Beta, NOW)),
            RejectReason::SourceMismatch
        );
        assert_eq!(
            reason(&auth("web-01", Source::Alpha, NOW - 8 * 86_400_000_000_000)),
            RejectReason::TooOld
        );
        assert_eq!(
            reason(&auth("web-01", Source::Alpha, NOW + 3_600_000_000_000)),
            RejectReason::InFuture
        );
        assert_eq!(reason(b"{\"kind\":"), RejectReason::Malformed);
        assert_eq!(reason(&[0xff; 300]), RejectReason::Malformed);
        assert_eq!(reason(&vec![b' '; 70_000]), RejectReason::Oversize);
        let wrong_schema = String::from_utf8(auth("web-01", Source::Alpha, NOW))
            .unwrap()
            .replace("\"schema\":1", "\"schema\":9");
        assert_eq!(reason(wrong_schema.as_bytes()), RejectReason::Schema);
    }

    #[test]
    fn rejections_are_replaced_by_findings_on_the_agents_host() {
        let spoof = Rejection {
            reason: RejectReason::HostMismatch,
            detail: "x".into(),
        };
        let event = rejection_event(&binding(), 5, &spoof, 1, now_ns());
        assert_eq!((event.host_id.as_str(), event.seq), ("web-01", 5));
        assert_eq!(event.source, Source::Cortex);
        assert_eq!(event.kind.name(), "tamper_attempt");
        assert!(event.validate().is_ok());
        let malformed = Rejection {
            reason: RejectReason::Malformed,
            detail: "x".into(),
        };
        let event = rejection_event(&binding(), 6, &malformed, 2, now_ns());
        assert_eq!(event.kind.name(), "event_loss");
    }
}
