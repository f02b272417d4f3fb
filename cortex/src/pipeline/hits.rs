//! Turns a detection hit into the scorer's input: the entities the triggering event names
//! (host, process lineage, user, remote address), its source family and the supporting events.

use std::net::IpAddr;

use qsc_event::{Event, EventKind};

use crate::detect;
use crate::score::{self, EventRef, HitEntities, SourceKind};

/// The scorer's view of `hit`, which `event` completed. The hit's time is its newest supporting
/// event's: a correlation whose events arrive out of order (two agents of one host, or a
/// worker taking the host over) completes at the same time whatever the arrival order.
pub fn score_hit(hit: &detect::RuleHit, event: &Event) -> score::RuleHit {
    let refs: Vec<EventRef> = if hit.events.is_empty() {
        vec![event_ref(&hit.event)]
    } else {
        hit.events.iter().map(event_ref).collect()
    };
    score::RuleHit {
        rule_id: hit.rule_id.clone(),
        title: hit.title.clone(),
        level: hit.level,
        tags: hit.tags.clone(),
        likelihood_ratio: hit.likelihood_ratio,
        source: SourceKind::of(&event.kind),
        entities: entities(event),
        time_ns: hit
            .events
            .iter()
            .map(|e| e.time_ns)
            .fold(event.time_ns, u64::max),
        event_refs: refs,
    }
}

fn event_ref(event: &detect::EventRef) -> EventRef {
    EventRef {
        host_id: event.host_id.clone(),
        seq: event.seq,
    }
}

/// The entities an event is about.
pub fn entities(event: &Event) -> HitEntities {
    let process = event.process();
    let lineage_root = process.map(|p| {
        p.ancestry
            .last()
            .map(|a| &a.guid)
            .filter(|g| !g.is_empty())
            .unwrap_or(&p.guid)
            .to_string()
    });
    let user = match &event.kind {
        EventKind::AuthFailure(a) | EventKind::AuthSuccess(a) => Some(a.user.clone()),
        _ => process.and_then(|p| p.user.as_deref().map(str::to_owned)),
    };
    HitEntities {
        host: event.host_id.clone(),
        lineage_root: lineage_root.filter(|g| !g.is_empty()),
        user,
        remote_ip: remote_ip(&event.kind),
    }
}

/// The other end of a network or authentication event.
fn remote_ip(kind: &EventKind) -> Option<IpAddr> {
    match kind {
        EventKind::NetConnect(c) => Some(c.dst_ip),
        EventKind::NetAccept(c) => Some(c.src_ip),
        EventKind::NetVolume(v) => Some(v.remote_ip),
        EventKind::AuthFailure(a) | EventKind::AuthSuccess(a) => a.remote_ip,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qsc_event::{Ancestor, AuthAttempt, NetVolume, ProcessExec, ProcessInfo, Source};

    fn detect_hit(events: Vec<detect::EventRef>) -> detect::RuleHit {
        detect::RuleHit {
            rule_id: "r".into(),
            title: "R".into(),
            level: detect::Level::High,
            tags: vec!["attack.t1048".into()],
            likelihood_ratio: None,
            kind: detect::HitKind::Detection,
            event: detect::EventRef {
                host_id: "web-01".into(),
                seq: 9,
                time_ns: 5,
                rule_id: "r".into(),
            },
            group: Vec::new(),
            events,
        }
    }

    #[test]
    fn auth_events_name_user_and_remote_address() {
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let event = Event::new(
            "web-01",
            Source::Alpha,
            9,
            EventKind::AuthSuccess(AuthAttempt {
                user: "deploy".into(),
                remote_ip: Some(ip),
                service: "sshd".into(),
                detail: None,
            }),
        );
        let hit = score_hit(&detect_hit(Vec::new()), &event);
        assert_eq!(hit.level, detect::Level::High);
        assert_eq!(hit.source, SourceKind::Auth);
        assert_eq!(hit.entities.user.as_deref(), Some("deploy"));
        assert_eq!(hit.entities.remote_ip, Some(ip));
        assert_eq!(
            hit.event_refs,
            vec![EventRef {
                host_id: "web-01".into(),
                seq: 9
            }]
        );
    }

    #[test]
    fn process_events_name_the_lineage_root_and_correlations_keep_their_events() {
        let event = Event::new(
            "web-01",
            Source::Alpha,
            9,
            EventKind::ProcessExec(ProcessExec {
                process: ProcessInfo {
                    guid: "child".into(),
                    user: Some("www".into()),
                    ancestry: vec![Ancestor {
                        guid: "root-guid".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                filename: "/bin/sh".into(),
                argv: Vec::new(),
                folder_world_writable: None,
            }),
        );
        let refs = (1..=3)
            .map(|seq| detect::EventRef {
                host_id: "web-01".into(),
                seq,
                time_ns: seq,
                rule_id: "r".into(),
            })
            .collect();
        let hit = score_hit(&detect_hit(refs), &event);
        assert_eq!(hit.entities.lineage_root.as_deref(), Some("root-guid"));
        assert_eq!(hit.entities.user.as_deref(), Some("www"));
        assert_eq!(hit.event_refs.len(), 3);
        let volume = EventKind::NetVolume(NetVolume {
            process: None,
            remote_ip: "198.51.100.9".parse().unwrap(),
            bytes_out: 1,
            bytes_in: 0,
            interval_ms: 1,
        });
        assert!(remote_ip(&volume).is_some());
    }

    #[test]
    fn a_correlation_completes_at_its_newest_event_whatever_came_last() {
        let volume = NetVolume {
            process: None,
            remote_ip: "198.51.100.9".parse().unwrap(),
            bytes_out: 1,
            bytes_in: 0,
            interval_ms: 1,
        };
        let mut completing = Event::new("web-01", Source::Alpha, 9, EventKind::NetVolume(volume));
        completing.time_ns = 100;
        let refs = [100, 300, 200]
            .into_iter()
            .zip(1..)
            .map(|(time_ns, seq)| detect::EventRef {
                host_id: "web-01".into(),
                seq,
                time_ns,
                rule_id: "r".into(),
            })
            .collect();
        assert_eq!(score_hit(&detect_hit(refs), &completing).time_ns, 300);
        assert_eq!(score_hit(&detect_hit(Vec::new()), &completing).time_ns, 100);
    }
}
