//! `cargo xtask attack [NAME|all]`: safe, self-cleaning attack behaviours on this host, each
//! tagged with its ATT&CK technique, run against a QSC stack; per scenario the expected rule
//! ids, minimum severity, confidence range and playbook action are checked against what the
//! cortex reports (`/api/incidents`, `/api/actions`).
//!
//! Scenarios act only on what they create: test accounts named `qscatk*`, files under the
//! stack's state folder, `/var/tmp/qscatk-*`, `/etc/cron.d/qscatk-*`, their own child
//! processes, a TEST-NET address on the loopback interface, and the stack's own agent. A
//! [`Cleanup`] removes them when the scenario ends, also when it fails.

mod agent;
mod cleanup;
mod files;
mod integrity;
mod observe;
mod process;
mod ssh;

use std::{path::PathBuf, time::Duration};

use anyhow::bail;

use crate::run::{
    self,
    stack::{Stack, StackOptions},
};
pub use cleanup::Cleanup;
pub use observe::{ActionResult, Outcome, Severity, table};

#[derive(clap::Args)]
pub struct AttackArgs {
    /// Scenarios to run: `all` or names (repeatable).
    #[arg(default_value = "all", value_name = "NAME|all")]
    pub names: Vec<String>,
    /// List the scenarios with their ATT&CK techniques and expectations, and exit.
    #[arg(long)]
    pub list: bool,
    /// Write the outcomes as JSON to this file (read by tests/tests/attacks.rs).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// The stack's state folder (default: a new temporary folder, removed afterwards).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Use the binaries in this folder as they are, without setup and builds (for tests that
    /// already built them).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Run each scenario on a fresh stack of its own (new state folder, so a cortex that has
    /// seen nothing before), instead of one after the other on one stack where the host's
    /// incident accumulates their evidence.
    #[arg(long)]
    pub isolated: bool,
}

/// What a scenario must lead to on a cortex that has seen nothing before (the scenario alone).
/// In a sequence on one stack the evidence of the scenarios before adds up, as during a real
/// intrusion, so there the severity and confidence are lower bounds only.
pub struct Expect {
    /// Rule ids that must all appear as evidence after the behaviour.
    pub rules: &'static [&'static str],
    /// The least severity of the incident holding that evidence.
    pub min_severity: Severity,
    /// The range the incident's confidence must fall in (alone; in a sequence, its least).
    pub confidence: (f64, f64),
    /// The action a playbook must request for the incident, and how it must end.
    pub action: Option<ExpectedAction>,
}

/// An action a playbook must request, and what it must end as when the scenario runs alone.
#[derive(Clone, Copy)]
pub struct ExpectedAction {
    pub name: &'static str,
    /// Alone on a fresh stack; in a sequence every action stays a dry run (`would_run`).
    pub result: ActionResult,
}

/// An action requested in dry-run only.
pub const fn would_run(name: &'static str) -> Option<ExpectedAction> {
    Some(ExpectedAction {
        name,
        result: ActionResult::WouldRun,
    })
}

/// An action carried out for real (by a playbook of [`REAL_PLAYBOOKS`]) when the scenario
/// runs alone.
pub const fn done(name: &'static str) -> Option<ExpectedAction> {
    Some(ExpectedAction {
        name,
        result: ActionResult::Done,
    })
}

/// Playbooks run for real (mode autonomous) on a stack that runs one scenario alone; each
/// acts only on what its scenario created. Every other playbook stays in dry-run.
const REAL_PLAYBOOKS: &str = include_str!("real-playbooks.yml");

/// One attack behaviour.
pub struct Scenario {
    pub name: &'static str,
    /// ATT&CK technique id, e.g. `T1003.008`.
    pub technique: &'static str,
    pub description: &'static str,
    pub expect: Expect,
    /// Performs the behaviour; everything it creates is registered in the cleanup.
    pub perform: fn(&mut Stack, &mut Cleanup) -> anyhow::Result<()>,
    /// How long the detection may take (auth logs are read every 2 s; heals after a debounce).
    pub patience: Duration,
    /// Checks what a real action did (e.g. a block refuses connects, then lifts), after the
    /// expected action was done and before the scenario's cleanup; run only when it ran for real.
    pub after_action: Option<fn() -> anyhow::Result<()>>,
}

/// Every scenario, in the order `all` runs them.
pub const SCENARIOS: &[Scenario] = &[
    files::SHADOW_READ,
    process::SETUID_DROP,
    process::PTRACE_ATTACH,
    process::MEMFD_EXEC,
    process::RWX_MEMORY,
    process::REVERSE_SHELL,
    files::CRON_PERSISTENCE,
    files::AUTHORIZED_KEYS,
    files::CONFIG_TAMPER,
    integrity::BACKUP_TAMPER,
    integrity::CERT_EXPIRING,
    integrity::CERT_REVOKED,
    agent::AGENT_TAMPER,
    ssh::CREDENTIAL_STUFFING,
];

/// The scenarios `names` selects (`all` selects every one).
pub fn select(names: &[String]) -> anyhow::Result<Vec<&'static Scenario>> {
    if names.iter().any(|n| n == "all") {
        return Ok(SCENARIOS.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            SCENARIOS.iter().find(|s| s.name == name).ok_or_else(|| {
                let known: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
                anyhow::anyhow!("no scenario `{name}`; known: all, {}", known.join(", "))
            })
        })
        .collect()
}

pub fn run(args: &AttackArgs) -> anyhow::Result<()> {
    if args.list {
        print_list();
        return Ok(());
    }
    let scenarios = select(&args.names)?;
    let bin = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => run::prepare()?,
    };
    let outcomes = if args.isolated {
        run_isolated(&scenarios, args.state_dir.as_deref(), &bin)?
    } else {
        run_on_own_stack(&scenarios, args.state_dir.clone(), bin)?
    };
    print!("{}", table(&outcomes, false));
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&outcomes)?)?;
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| o.scenario.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "scenarios not meeting their expectations: {}",
            failed.join(", ")
        );
    }
    Ok(())
}

fn print_list() {
    for s in SCENARIOS {
        println!(
            "{:<22} {:<10} {}\n{:34}expects {} (≥ {}, confidence {:.2}–{:.2}){}",
            s.name,
            s.technique,
            s.description,
            "",
            s.expect.rules.join(" + "),
            s.expect.min_severity,
            s.expect.confidence.0,
            s.expect.confidence.1,
            s.expect
                .action
                .map(|a| format!(", action {} ({} alone)", a.name, a.result))
                .unwrap_or_default()
        );
    }
}

/// Starts a stack of its own (cortex in dry-run, free ports, a temporary state folder unless
/// one is given) from the binaries in `bin`, runs `scenarios` on it one after the other and
/// returns their outcomes.
pub fn run_on_own_stack(
    scenarios: &[&'static Scenario],
    state_dir: Option<PathBuf>,
    bin: PathBuf,
) -> anyhow::Result<Vec<Outcome>> {
    let temp = TempState::new(state_dir)?;
    let mut options = StackOptions::on_free_ports(bin, temp.path.clone())?;
    options.respond_mode = Some("dry_run");
    // A single scenario on a fresh stack is alone: its outcome owes nothing to others, and
    // what its evidence names is what it created, so the safe playbooks may act for real.
    let alone = scenarios.len() == 1;
    if alone {
        let dir = temp.path.join("playbooks");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("attack-real.yml"), REAL_PLAYBOOKS)?;
        options.playbook_dirs.push(dir);
    }
    let mut stack = Stack::start(&options)?;
    run_with_view(&mut stack, scenarios, alone, &mut |_| {})
}

/// Runs each of `scenarios` on a fresh stack of its own (in `state_dir/<scenario>` when a
/// folder is given), so that each outcome is the scenario's alone.
pub fn run_isolated(
    scenarios: &[&'static Scenario],
    state_dir: Option<&std::path::Path>,
    bin: &std::path::Path,
) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for scenario in scenarios {
        let state = state_dir.map(|dir| dir.join(scenario.name));
        outcomes.append(&mut run_on_own_stack(
            &[scenario],
            state,
            bin.to_path_buf(),
        )?);
    }
    Ok(outcomes)
}

/// Runs `scenarios` one after the other on `stack`, calling `view` while waiting for each
/// detection (the live view of `cargo xtask run`); `alone` when the stack is fresh and runs
/// only this one scenario (then its confidence must lie within the expected range).
pub fn run_with_view(
    stack: &mut Stack,
    scenarios: &[&'static Scenario],
    alone: bool,
    view: &mut dyn FnMut(&Stack),
) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for scenario in scenarios {
        eprintln!(
            "\n== attack {} ({}): {}",
            scenario.name, scenario.technique, scenario.description
        );
        let outcome = observe::run_scenario(stack, scenario, alone, view);
        eprintln!("== {}", outcome.summary());
        outcomes.push(outcome);
        stack.check_running()?;
    }
    Ok(outcomes)
}

/// The stack's state folder: a given one, or a temporary one removed at the end.
struct TempState {
    path: PathBuf,
    remove: bool,
}

impl TempState {
    fn new(given: Option<PathBuf>) -> anyhow::Result<Self> {
        Ok(match given {
            Some(path) => TempState {
                path,
                remove: false,
            },
            None => {
                let path =
                    std::env::temp_dir().join(format!("qscatk-stack-{}", std::process::id()));
                std::fs::create_dir_all(&path)?;
                TempState { path, remove: true }
            }
        })
    }
}

impl Drop for TempState {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The test actor binary next to the stack's binaries.
fn actor(stack: &Stack) -> PathBuf {
    stack.bin.join("qsc-test-actor")
}
