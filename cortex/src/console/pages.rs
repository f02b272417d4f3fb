//! The console's pages, as maud templates (checked and compiled into the binary). Every
//! state-changing form carries the session's CSRF token; buttons that the user's role may not
//! use are not shown (and the server refuses them anyway).

use std::collections::{BTreeMap, BTreeSet};

use maud::{DOCTYPE, Markup, PreEscaped, html};
use qsc_event::{Action, Event};

use super::chart;
use super::session::Session;
use crate::audit::{AuditRecord, VerifyReport};
use crate::decide::{NodeState, NodeStateRecord};
use crate::respond::{ActionRecord, ActionStatus};
use crate::score::Incident;

/// One row of the fleet page.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostRow {
    pub host: String,
    pub class: String,
    /// Enrolled agent kinds (`alpha`, `beta`), revoked ones marked.
    pub agents: Vec<String>,
    pub node: Option<NodeStateRecord>,
    pub connected: bool,
    /// Newest heartbeat or health/integrity report in the recent window.
    pub last_seen_ns: Option<u64>,
    /// `source version` from the newest heartbeat of each agent.
    pub versions: BTreeMap<String, String>,
    /// Events the host's agents reported lost (largest running total per stage).
    pub event_loss: u64,
    /// Newest integrity event kind in the window (`integrity_ok` when none).
    pub integrity: String,
}

/// Seconds (or minutes, hours, days) between `then_ns` and `now_ns`, for "how long ago".
pub fn ago(then_ns: u64, now_ns: u64) -> String {
    let s = now_ns.saturating_sub(then_ns) / 1_000_000_000;
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

fn state_class(state: NodeState) -> &'static str {
    match state {
        NodeState::Nominal => "ok",
        NodeState::Warning => "warn",
        NodeState::Critical => "crit",
        NodeState::Isolated => "iso",
    }
}

fn state_name(state: NodeState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{state:?}"))
}

fn enum_text<T: serde::Serialize + std::fmt::Debug>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{value:?}"))
}

/// The page frame: header, navigation, the live-update notice, the content.
pub fn layout(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · QSC console" }
                link rel="stylesheet" href="/console/static/console.css";
                @if session.is_some() { script src="/console/static/console.js" defer {} }
            }
            body {
                header {
                    strong { "QSC" } " console"
                    @if let Some(session) = session {
                        nav {
                            a href="/console/" { "Fleet" }
                            a href="/console/incidents" { "Incidents" }
                            a href="/console/actions" { "Actions" }
                            a href="/console/audit" { "Audit" }
                        }
                        form.logout method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            span.user { (session.user) " (" (session.role.as_str()) ")" }
                            button type="submit" { "Log out" }
                        }
                    }
                }
                p #live hidden { "New activity. " a href="" { "Refresh" } }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// The login form, with an error after a failed attempt.
pub fn login(error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            @if let Some(error) = error { p.error #login-error { (error) } }
            form.login method="post" action="/console/login" {
                label { "User " input #name name="name" autocomplete="username" required; }
                label { "Password " input #password name="password" type="password" autocomplete="current-password" required; }
                button #login type="submit" { "Log in" }
            }
        },
    )
}

/// A message page (refusals and failures).
pub fn message(session: Option<&Session>, title: &str, text: &str) -> Markup {
    layout(title, session, html! { p.error #message { (text) } })
}

/// Every host: class, node state and for how long, channel, last seen, versions, event loss.
pub fn fleet(session: &Session, rows: &[HostRow], now_ns: u64) -> Markup {
    let body = html! {
        table #fleet {
            thead { tr { th { "Host" } th { "Class" } th { "Agents" } th { "State" } th { "Since" }
                         th { "Channel" } th { "Last seen" } th { "Versions" } th { "Event loss" }
                         th { "Integrity" } } }
            tbody {
                @for row in rows {
                    @let state = row.node.as_ref().map_or(NodeState::Nominal, |n| n.state);
                    tr {
                        td { (row.host) }
                        td { (row.class) }
                        td { (row.agents.join(", ")) }
                        td { span class=(format!("state {}", state_class(state))) { (state_name(state)) }
                             @if let Some(node) = &row.node { br; small { (node.reason) } } }
                        td { @if let Some(node) = &row.node { (ago(node.since_ns, now_ns)) } @else { "always" } }
                        td { @if row.connected { span.state.ok { "connected" } } @else { span.state.muted { "not connected" } } }
                        td { @if let Some(seen) = row.last_seen_ns { (ago(seen, now_ns)) " ago" } @else { "—" } }
                        td { @for (source, version) in &row.versions { (source) " " (version) br; } }
                        td { (row.event_loss) }
                        td { (row.integrity) }
                    }
                }
            }
        }
    };
    layout("Fleet", Some(session), body)
}

/// Incidents, newest first.
pub fn incidents(session: &Session, incidents: &[Incident], now_ns: u64) -> Markup {
    let body = html! {
        table #incidents {
            thead { tr { th { "Incident" } th { "Severity" } th { "Confidence" } th { "Host" }
                         th { "ATT&CK" } th { "Status" } th { "Updated" } } }
            tbody {
                @for incident in incidents {
                    tr {
                        td { a href=(format!("/console/incidents/{}", incident.id)) { (incident.title) } }
                        td { span class=(format!("sev {}", enum_text(&incident.severity))) { (enum_text(&incident.severity)) } }
                        td { (format!("{:.4}", incident.confidence)) }
                        td { (incident.host) }
                        td { (incident.attack_techniques.join(" ")) }
                        td { (enum_text(&incident.status)) }
                        td { (ago(incident.updated_ns, now_ns)) " ago" }
                    }
                }
            }
        }
    };
    layout("Incidents", Some(session), body)
}

/// One incident: summary, evidence with likelihood ratios, confidence chart, timeline, tree.
pub fn incident(session: &Session, incident: &Incident, events: &[Event]) -> Markup {
    let body = html! {
        dl.summary {
            dt { "Severity" } dd #severity { (enum_text(&incident.severity)) }
            dt { "Host" } dd { (incident.host) }
            dt { "Prior" } dd #prior { (format!("{:.4}", incident.prior)) }
            dt { "Posterior (confidence)" } dd #posterior { (format!("{:.4}", incident.confidence)) }
            dt { "ATT&CK" } dd { (incident.attack_techniques.join(" ")) }
            dt { "Status" } dd { (enum_text(&incident.status)) }
        }
        h2 { "Evidence" }
        table #evidence {
            thead { tr { th { "Rule" } th { "Title" } th { "Level" } th { "Hits" }
                         th { "Likelihood ratio" } th { "ln contribution" } } }
            tbody {
                @for item in &incident.evidence {
                    tr {
                        td.rule { (item.rule_id) }
                        td { (item.title) }
                        td { @if let Some(level) = &item.level { (enum_text(level)) } @else { "anomaly" } }
                        td { (item.hits) }
                        td.lr { (format!("{:.2}", item.lr)) }
                        td { (format!("{:+.3}", item.contribution)) }
                    }
                }
            }
        }
        h2 { "Confidence over time" }
        (PreEscaped(chart::confidence_svg(incident)))
        h2 { "Process tree" }
        (process_tree(events))
        h2 { "Timeline" }
        (timeline(events))
    };
    layout(&incident.title, Some(session), body)
}

fn timeline(events: &[Event]) -> Markup {
    html! {
        table #timeline {
            thead { tr { th { "Time" } th { "Source" } th { "Seq" } th { "Kind" } th { "Details" } } }
            tbody {
                @for event in events {
                    tr {
                        td { (utc(event.time_ns)) }
                        td { (enum_text(&event.source)) }
                        td { (event.seq) }
                        td { (event.kind.name()) }
                        td.details { (details(event)) }
                    }
                }
            }
        }
    }
}

/// An event's fields (without the envelope), compact and cut at 200 characters.
fn details(event: &Event) -> String {
    let mut text = serde_json::to_value(&event.kind)
        .map(|mut v| {
            if let Some(map) = v.as_object_mut() {
                map.remove("kind");
            }
            v.to_string()
        })
        .unwrap_or_default();
    if text.len() > 200 {
        let cut = (0..=200)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// RFC 3339 in UTC, to the second.
pub fn utc(time_ns: u64) -> String {
    let seconds = i64::try_from(time_ns / 1_000_000_000).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| time_ns.to_string())
}

/// The processes of the events (and their recorded ancestors) as a nested list by parent pid.
fn process_tree(events: &[Event]) -> Markup {
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    let mut parent: BTreeMap<u32, u32> = BTreeMap::new();
    for process in events.iter().filter_map(Event::process) {
        let label = process.exe.clone().unwrap_or_else(|| process.comm.clone());
        names.insert(
            process.pid,
            format!("{} [{}] {}", process.comm, process.pid, label),
        );
        parent.insert(process.pid, process.ppid);
        let mut child = process.pid;
        for ancestor in &process.ancestry {
            names
                .entry(ancestor.pid)
                .or_insert_with(|| format!("{} [{}]", ancestor.comm, ancestor.pid));
            parent.entry(child).or_insert(ancestor.pid);
            child = ancestor.pid;
        }
    }
    let mut children: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    for (pid, ppid) in &parent {
        children.entry(*ppid).or_default().insert(*pid);
    }
    let roots: Vec<u32> = names
        .keys()
        .filter(|pid| parent.get(pid).is_none_or(|pp| !names.contains_key(pp)))
        .copied()
        .collect();
    if roots.is_empty() {
        return html! { p.muted #process-tree { "No process events in this incident's window." } };
    }
    html! { ul.tree #process-tree { @for root in roots { (tree_node(root, &names, &children, 0)) } } }
}

fn tree_node(
    pid: u32,
    names: &BTreeMap<u32, String>,
    children: &BTreeMap<u32, BTreeSet<u32>>,
    depth: usize,
) -> Markup {
    html! {
        li {
            (names.get(&pid).cloned().unwrap_or_else(|| pid.to_string()))
            @if let Some(kids) = children.get(&pid).filter(|_| depth < 32) {
                ul { @for kid in kids { @if *kid != pid { (tree_node(*kid, names, children, depth + 1)) } } }
            }
        }
    }
}

/// What the actions page shows.
pub struct ActionsView<'a> {
    pub held: &'a [ActionRecord],
    pub recent: &'a [ActionRecord],
    pub isolated: &'a [NodeStateRecord],
    pub now_ns: u64,
}

/// Held actions with approve/deny and their expiry countdown, isolated hosts with release,
/// and the recent actions with their results and rollbacks (a done revocation with restore).
pub fn actions(session: &Session, view: &ActionsView<'_>) -> Markup {
    let may_act = session.role.may_act();
    let body = html! {
        h2 { "Held for approval" }
        @if view.held.is_empty() { p.muted #no-held { "No action is waiting." } }
        table #held {
            tbody {
                @for action in view.held {
                    tr data-action=(action.id) {
                        td { (action.name) } td { (action.host) } td { (action.playbook) }
                        td { @if let Some(incident) = &action.incident_id {
                            a href=(format!("/console/incidents/{incident}")) { (incident) } } }
                        td { @if let Some(expires) = action.expires_ns {
                            "expires in " span.countdown data-seconds=(expires.saturating_sub(view.now_ns) / 1_000_000_000) {
                                (expires.saturating_sub(view.now_ns) / 1_000_000_000) } " s" } }
                        td { @if may_act {
                            (decision_form(session, &action.id, "approve", "Approve"))
                            (decision_form(session, &action.id, "deny", "Deny"))
                        } @else { span.muted { "viewers cannot decide" } } }
                    }
                }
            }
        }
        h2 { "Isolated hosts" }
        @if view.isolated.is_empty() { p.muted { "No host is isolated." } }
        ul #isolated {
            @for node in view.isolated {
                li { (node.host) " — " (node.reason) " (" (ago(node.since_ns, view.now_ns)) ")"
                    @if may_act {
                        (operator_form(session, &format!("/console/nodes/{}/release", node.host), "Release"))
                    }
                }
            }
        }
        h2 { "Recent actions" }
        table #recent {
            thead { tr { th { "Id" } th { "Action" } th { "Host" } th { "Status" } th { "Result" }
                         th { "Decided by" } th { "Rollback" } th { "Updated" } } }
            tbody {
                @for action in view.recent {
                    tr data-action=(action.id) {
                        td { (action.id) } td { (action.name) } td { (action.host) }
                        td.status { (action.status.as_str()) }
                        td { (action.detail) @if let Some(report) = action.report.as_ref().filter(|r| r.detail != action.detail) { br; small { (report.detail) } } }
                        td { @for decision in &action.decisions {
                            (decision.operator) (if decision.approve { " approved" } else { " denied" }) br; } }
                        td { (rollback_text(action, view.now_ns))
                            @if let (true, Some(user)) = (may_act, revoked_account(action)) {
                                (operator_form(session, &format!("/console/nodes/{}/accounts/{user}/restore", action.host), &format!("Restore {user}")))
                            } }
                        td { (ago(action.updated_ns, view.now_ns)) " ago" }
                    }
                }
            }
        }
    };
    layout("Actions", Some(session), body)
}

fn rollback_text(action: &ActionRecord, now_ns: u64) -> String {
    match (
        &action.rolled_back_by,
        action.rollback_due_ns,
        &action.rollback_of,
    ) {
        (Some(by), _, _) => format!("rolled back by {by}"),
        (None, Some(due), _) if action.status == ActionStatus::Done => {
            format!("in {} s", due.saturating_sub(now_ns) / 1_000_000_000)
        }
        (_, _, Some(of)) => format!("undoes {of}"),
        _ => String::new(),
    }
}

/// The account a done revocation refused: an operator ends it with a restore (it has no TTL).
fn revoked_account(action: &ActionRecord) -> Option<&str> {
    match (&action.action, action.status) {
        (Some(Action::RevokeCredential { user }), ActionStatus::Done) => Some(user),
        _ => None,
    }
}

/// A change only an operator makes, with the reason the audit chain records.
fn operator_form(session: &Session, path: &str, label: &str) -> Markup {
    html! {
        form.inline method="post" action=(path) {
            input type="hidden" name="csrf" value=(session.csrf);
            input name="reason" placeholder="reason" required;
            button type="submit" { (label) }
        }
    }
}

fn decision_form(session: &Session, id: &str, verb: &str, label: &str) -> Markup {
    html! {
        form.inline method="post" action=(format!("/console/actions/{id}/{verb}")) {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="reason" value=(format!("{verb} in console"));
            button type="submit" class=(verb) { (label) }
        }
    }
}

/// The audit chain's status and the records matching the search.
pub fn audit(
    session: &Session,
    report: &VerifyReport,
    records: &[AuditRecord],
    query: &str,
) -> Markup {
    let body = html! {
        @if report.is_intact() {
            p.state.ok #chain-status { (report.to_string()) }
        } @else {
            p.state.crit #chain-status { (report.to_string()) }
        }
        p.muted { "Verified just now, when this page was rendered." }
        form method="get" action="/console/audit" {
            input name="q" value=(query) placeholder="search kind, actor or body";
            button type="submit" { "Search" }
        }
        table #audit {
            thead { tr { th { "Seq" } th { "Time" } th { "Kind" } th { "Actor" } th { "Body" } } }
            tbody {
                @for record in records.iter().rev() {
                    tr { td { (record.seq) } td { (utc(record.time_ns)) } td { (record.kind) }
                         td.actor { (record.actor) } td.details { (record.body) } }
                }
            }
        }
    };
    layout("Audit", Some(session), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally_and_text_is_escaped() {
        let s = 1_000_000_000;
        assert_eq!(ago(0, 5 * s), "5 s");
        assert_eq!(ago(0, 600 * s), "10 min");
        assert_eq!(ago(10 * s, 0), "0 s");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        let page = message(None, "t", "<script>alert(1)</script>").into_string();
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("&lt;script&gt;"));
    }
}
