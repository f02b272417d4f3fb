//! Running one scenario and watching the cortex for what it should cause: the evidence of the
//! expected rules, the incident holding it, and the action a playbook asked for.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Cleanup, Scenario};
use crate::run::stack::Stack;

/// Incident severity, as the cortex names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        };
        f.write_str(name)
    }
}

/// How an expected action must end: only audited (dry-run), or carried out by the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionResult {
    WouldRun,
    Done,
}

impl ActionResult {
    /// The status the cortex reports for it (`/api/actions`).
    pub fn status(self) -> &'static str {
        match self {
            ActionResult::WouldRun => "would_run",
            ActionResult::Done => "done",
        }
    }
}

impl std::fmt::Display for ActionResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.status())
    }
}

/// What one scenario led to, with what it should have led to.
#[derive(Debug, Serialize, Deserialize)]
pub struct Outcome {
    pub scenario: String,
    pub technique: String,
    pub expected_rules: Vec<String>,
    pub expected_min_severity: Severity,
    pub expected_confidence: (f64, f64),
    pub expected_action: Option<String>,
    /// How the expected action must end: `done` for a real action (the scenario alone, on a
    /// playbook run for real), else `would_run`.
    pub expected_result: Option<ActionResult>,
    /// The scenario ran alone on a fresh stack: its confidence must be within the expected
    /// range (in a sequence, the evidence before can only raise it).
    pub isolated: bool,
    /// Every expected rule was seen as evidence after the behaviour started.
    pub detected: bool,
    /// Expected rule ids seen.
    pub rules: Vec<String>,
    /// The most specific incident holding the evidence.
    pub incident: Option<String>,
    /// Every incident holding the evidence.
    pub incidents: Vec<String>,
    pub severity: Option<Severity>,
    pub confidence: Option<f64>,
    /// Milliseconds from the start of the behaviour until the cortex showed all evidence
    /// (polled every 250 ms).
    pub detect_ms: Option<u64>,
    /// `name:status` of the actions requested for the incident, e.g. `kill:would_run`.
    pub actions: Vec<String>,
    /// Milliseconds from the start of the behaviour until the cortex requested the expected
    /// action (its record's `requested_ns`, wall clock of this host).
    pub action_ms: Option<u64>,
    /// Milliseconds from the start of the behaviour until the expected action was completed
    /// (its record's last update: the agent's report for a real action, the dry-run audit).
    pub action_done_ms: Option<u64>,
    /// What the check after a real action found wrong (a block that did not refuse or lift).
    pub after_action_error: Option<String>,
    /// Why the behaviour could not be performed.
    pub error: Option<String>,
}

impl Outcome {
    /// Every expectation met.
    pub fn passed(&self) -> bool {
        self.problems().is_empty()
    }

    /// The expectations not met, in words.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(err) = &self.error {
            problems.push(format!("behaviour failed: {err}"));
        }
        if !self.detected {
            let missing: Vec<&String> = self
                .expected_rules
                .iter()
                .filter(|r| !self.rules.contains(r))
                .collect();
            problems.push(format!("not detected: no evidence of {missing:?}"));
            return problems;
        }
        if self.severity < Some(self.expected_min_severity) {
            problems.push(format!(
                "severity {:?} below {}",
                self.severity, self.expected_min_severity
            ));
        }
        let (low, high) = self.expected_confidence;
        let high = if self.isolated { high } else { 1.0 };
        if !self.confidence.is_some_and(|c| (low..=high).contains(&c)) {
            problems.push(format!(
                "confidence {:?} outside {low}–{high}",
                self.confidence
            ));
        }
        if let (Some(action), Some(result)) = (&self.expected_action, self.expected_result) {
            let wanted = format!("{action}:{result}");
            if self.action_done_ms.is_none() || !self.actions.contains(&wanted) {
                problems.push(format!("no `{wanted}` action (got {:?})", self.actions));
            }
        }
        if let Some(err) = &self.after_action_error {
            problems.push(format!("after the action: {err}"));
        }
        problems
    }

    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        format!(
            "{verdict} {} {}: {} {} confidence {} in {} actions [{}]{}{}",
            self.scenario,
            self.technique,
            self.rules.join("+"),
            self.severity.map(|s| s.to_string()).unwrap_or("-".into()),
            self.confidence
                .map(|c| format!("{c:.3}"))
                .unwrap_or("-".into()),
            self.detect_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or("-".into()),
            self.actions.join(", "),
            self.action_done_ms
                .map(|ms| format!(" completed after {ms} ms"))
                .unwrap_or_default(),
            if self.passed() {
                String::new()
            } else {
                format!(" — {}", self.problems().join("; "))
            }
        )
    }
}

/// Performs `scenario` on `stack` and waits for its detection and action; `isolated` when
/// nothing else ran on the stack.
pub fn run_scenario(
    stack: &mut Stack,
    scenario: &Scenario,
    isolated: bool,
    view: &mut dyn FnMut(&Stack),
) -> Outcome {
    let expect = &scenario.expect;
    let mut outcome = Outcome {
        scenario: scenario.name.into(),
        technique: scenario.technique.into(),
        expected_rules: expect.rules.iter().map(|r| r.to_string()).collect(),
        expected_min_severity: expect.min_severity,
        expected_confidence: expect.confidence,
        expected_action: expect.action.map(|a| a.name.into()),
        // Only a scenario alone runs its playbooks for real; in a sequence all are dry runs.
        expected_result: expect.action.map(|a| {
            if isolated {
                a.result
            } else {
                ActionResult::WouldRun
            }
        }),
        isolated,
        detected: false,
        rules: Vec::new(),
        incident: None,
        incidents: Vec::new(),
        severity: None,
        confidence: None,
        detect_ms: None,
        actions: Vec::new(),
        action_ms: None,
        action_done_ms: None,
        after_action_error: None,
        error: None,
    };
    let started = Instant::now();
    let started_ns = wall_ns();
    // What the scenario made lives until its actions are over: they act on it.
    let mut cleanup = Cleanup::default();
    if let Err(err) = (scenario.perform)(stack, &mut cleanup) {
        outcome.error = Some(format!("{err:#}"));
        return outcome;
    }
    let deadline = started + scenario.patience;
    while Instant::now() < deadline {
        view(stack);
        if let Ok(incidents) = stack.api.list("/api/incidents?limit=500") {
            observe_incidents(&mut outcome, &incidents, expect.rules, started_ns);
        }
        if outcome.detected {
            outcome.detect_ms = Some(started.elapsed().as_millis() as u64);
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if outcome.detected {
        wait_for_actions(stack, &mut outcome, started_ns, view);
    }
    let done = outcome.expected_result == Some(ActionResult::Done);
    if let (true, Some(_), Some(check)) = (done, outcome.action_done_ms, scenario.after_action) {
        outcome.after_action_error = check().err().map(|err| format!("{err:#}"));
    }
    drop(cleanup);
    outcome
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Finds the evidence of `rules` newer than `since_ns`. The incident reported is the most
/// specific one holding it (fewest pieces of evidence; the host's incident gathers everything
/// the run did), so its severity and confidence speak for this scenario.
fn observe_incidents(outcome: &mut Outcome, incidents: &[Value], rules: &[&str], since_ns: u64) {
    let mut seen = BTreeSet::new();
    let mut best: Option<(usize, Severity, f64, String)> = None;
    outcome.incidents.clear();
    for incident in incidents {
        let evidence = incident["evidence"].as_array().cloned().unwrap_or_default();
        let fresh: Vec<&str> = evidence
            .iter()
            .filter(|e| e["time_ns"].as_u64().is_some_and(|t| t >= since_ns))
            .filter_map(|e| e["rule_id"].as_str())
            .filter(|id| rules.contains(id))
            .collect();
        if fresh.is_empty() {
            continue;
        }
        seen.extend(fresh.iter().map(|id| id.to_string()));
        let id = incident["id"].as_str().unwrap_or_default().to_owned();
        outcome.incidents.push(id.clone());
        let Ok(severity) = serde_json::from_value::<Severity>(incident["severity"].clone()) else {
            continue;
        };
        let confidence = incident["confidence"].as_f64().unwrap_or(0.0);
        let specific = |(n, s, c, _): &(usize, Severity, f64, String)| {
            evidence.len() < *n || (evidence.len() == *n && (severity, confidence) > (*s, *c))
        };
        if best.as_ref().is_none_or(specific) {
            best = Some((evidence.len(), severity, confidence, id));
        }
    }
    outcome.rules = seen.into_iter().collect();
    outcome.detected = rules.iter().all(|r| outcome.rules.iter().any(|s| s == r));
    if let Some((_, severity, confidence, id)) = best {
        outcome.severity = Some(severity);
        outcome.confidence = Some(confidence);
        outcome.incident = Some(id);
    }
}

/// Waits (up to 10 s) for the expected action; records every action requested since the
/// behaviour started for the incidents holding its evidence.
fn wait_for_actions(
    stack: &Stack,
    outcome: &mut Outcome,
    since_ns: u64,
    view: &mut dyn FnMut(&Stack),
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(actions) = stack.api.list("/api/actions?limit=500") {
            outcome.actions = actions
                .iter()
                .filter(|a| {
                    a["incident_id"]
                        .as_str()
                        .is_some_and(|id| outcome.incidents.iter().any(|i| i == id))
                })
                .filter(|a| a["requested_ns"].as_u64().is_some_and(|t| t >= since_ns))
                .map(|a| {
                    format!(
                        "{}:{}",
                        a["name"].as_str().unwrap_or("?"),
                        a["status"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            outcome.actions.sort();
            outcome.actions.dedup();
            outcome.action_ms = first_time_ms(&actions, outcome, since_ns, None, "requested_ns");
            outcome.action_done_ms = outcome.expected_result.and_then(|result| {
                first_time_ms(&actions, outcome, since_ns, Some(result), "updated_ns")
            });
        }
        let found = outcome.expected_action.is_none() || outcome.action_done_ms.is_some();
        if found || Instant::now() > deadline {
            return;
        }
        view(stack);
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Milliseconds from `since_ns` to the earliest `field` (`requested_ns`, `updated_ns`) of the
/// expected action among `actions` for the outcome's incidents, of those with status
/// `result` when given.
fn first_time_ms(
    actions: &[Value],
    outcome: &Outcome,
    since_ns: u64,
    result: Option<ActionResult>,
    field: &str,
) -> Option<u64> {
    let wanted = outcome.expected_action.as_deref()?;
    actions
        .iter()
        .filter(|a| a["name"].as_str() == Some(wanted))
        .filter(|a| result.is_none_or(|r| a["status"].as_str() == Some(r.status())))
        .filter(|a| {
            a["incident_id"]
                .as_str()
                .is_some_and(|id| outcome.incidents.iter().any(|i| i == id))
        })
        .filter_map(|a| a[field].as_u64())
        .filter(|t| *t >= since_ns)
        .min()
        .map(|t| (t - since_ns) / 1_000_000)
}

/// Milliseconds as seconds with one decimal, `-` when unknown.
fn seconds(ms: Option<u64>) -> String {
    ms.map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
        .unwrap_or("-".into())
}

/// The outcomes as a table: aligned text, or Markdown for the README.
pub fn table(outcomes: &[Outcome], markdown: bool) -> String {
    let header = [
        "technique",
        "scenario",
        "detected",
        "rule ids",
        "severity",
        "confidence",
        "time to detect",
        "action",
        "time to action done",
    ];
    let rows: Vec<[String; 9]> = outcomes
        .iter()
        .map(|o| {
            [
                o.technique.clone(),
                o.scenario.clone(),
                if o.detected { "yes" } else { "no" }.into(),
                if o.rules.is_empty() {
                    "-".into()
                } else {
                    o.rules.join(", ")
                },
                o.severity.map(|s| s.to_string()).unwrap_or("-".into()),
                o.confidence
                    .map(|c| format!("{c:.3}"))
                    .unwrap_or("-".into()),
                seconds(o.detect_ms),
                if o.actions.is_empty() {
                    "-".into()
                } else {
                    o.actions.join(", ")
                },
                seconds(o.action_done_ms),
            ]
        })
        .collect();
    if markdown {
        let mut out = format!(
            "| {} |\n|{}\n",
            header.join(" | "),
            "---|".repeat(header.len())
        );
        for row in &rows {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        return out;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text: String = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}  "))
            .collect();
        text.truncate(text.trim_end().len());
        text + "\n"
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}
