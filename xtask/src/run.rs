//! `cargo xtask run`: the whole stack on this host, with embedded defaults. Keys, configs and
//! state go under `.qsc/` at the repository root; detections are shown live until Ctrl-C,
//! then every program is stopped cleanly (the kernel programs detach with guardian-alpha).
//! With `--attack` (or when asked on a terminal) the attack scenarios run against it.

pub mod stack;

use std::{
    io::{BufRead, BufReader, IsTerminal, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::{attack, ebpf, setup, shell};
use stack::{Api, Stack, StackOptions};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Where keys, configs, stores and logs go.
    #[arg(long, default_value = ".qsc")]
    pub state_dir: PathBuf,
    /// Run these attack scenarios once the stack is up (`all`, or names as listed by
    /// `cargo xtask attack --list`), so their incidents appear live. Without it, a terminal
    /// is asked whether to run them all.
    #[arg(long, value_name = "NAME|all")]
    pub attack: Vec<String>,
}

/// The cortex addresses of `cargo xtask run` (fixed, so the API is easy to find).
const CHANNEL: &str = "127.0.0.1:7443";
const API: &str = "127.0.0.1:7080";

/// Installs what is missing, builds the kernel object and the workspace binaries; returns the
/// folder of the binaries.
pub fn prepare() -> anyhow::Result<PathBuf> {
    if !shell::is_root() {
        bail!(
            "guardian-alpha loads eBPF programs: run this as root (or with CAP_BPF + CAP_PERFMON)"
        );
    }
    setup::run(&setup::SetupArgs::default())?;
    ebpf::build()?;
    shell::run(shell::cargo().args(["build", "--workspace", "--bins"]))?;
    Ok(shell::target_dir().join("debug"))
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let bin = prepare()?;
    let state = shell::root().join(&args.state_dir);
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let mut stack = Stack::start(&StackOptions {
        bin,
        state: state.clone(),
        channel: CHANNEL.into(),
        api: API.into(),
        respond_mode: None,
        playbook_dirs: Vec::new(),
    })?;
    eprintln!(
        "\nQSC is running: cortex (API http://{API}), guardian-alpha and guardian-beta on this host.\n\
         State, keys and logs: {}\n\
         Try `cat /etc/shadow`, or edit {} (it is auto-healed). Incidents appear below as the\n\
         cortex decides them; Ctrl-C stops everything.\n",
        state.display(),
        stack.layout.demo_file.display()
    );
    let mut view = LiveView::new(&stack);
    view.refresh(&stack.api);
    let scenarios = scenarios_to_run(&args.attack)?;
    if !scenarios.is_empty() {
        attack::run_with_view(&mut stack, &scenarios, false, &mut |stack| {
            view.refresh(&stack.api)
        })?;
    }
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs(s));
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        stack.check_running()?;
        view.refresh(&stack.api);
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// The scenarios `--attack` names, or all of them when a person at a terminal says yes.
fn scenarios_to_run(names: &[String]) -> anyhow::Result<Vec<&'static attack::Scenario>> {
    if !names.is_empty() {
        return attack::select(names);
    }
    if !std::io::stdin().is_terminal() {
        return Ok(Vec::new());
    }
    eprint!(
        "Run the {} attack scenarios now (safe: test users, temp files, loopback only)? [y/N] ",
        attack::SCENARIOS.len()
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if answer.trim().eq_ignore_ascii_case("y") || answer.trim().eq_ignore_ascii_case("yes") {
        attack::select(&["all".to_owned()])
    } else {
        Ok(Vec::new())
    }
}

/// What the terminal shows: incidents as the cortex decides them (with their evidence), and
/// the agents' notable events as they report them.
pub struct LiveView {
    feeds: Vec<EventFeed>,
    /// Incident id → (severity, confidence) last shown.
    shown: std::collections::HashMap<String, (String, f64)>,
    api_error_shown: bool,
}

impl LiveView {
    pub fn new(stack: &Stack) -> Self {
        LiveView {
            feeds: vec![
                EventFeed::new("alpha", &stack.layout.alpha_events),
                EventFeed::new("beta", &stack.layout.beta_events),
            ],
            shown: Default::default(),
            api_error_shown: false,
        }
    }

    /// Prints what is new since the last call.
    pub fn refresh(&mut self, api: &Api) {
        for feed in &mut self.feeds {
            for line in feed.new_lines() {
                if let Some(summary) = summarize(&line) {
                    println!("  [{}] {summary}", feed.label);
                }
            }
        }
        match api.list("/api/incidents?limit=50") {
            Ok(incidents) => {
                for incident in incidents {
                    self.show_if_changed(&incident);
                }
            }
            Err(err) if !self.api_error_shown => {
                self.api_error_shown = true;
                eprintln!("cannot read incidents from the cortex API: {err:#}");
            }
            Err(_) => {}
        }
    }

    fn show_if_changed(&mut self, incident: &serde_json::Value) {
        let id = incident["id"].as_str().unwrap_or_default().to_owned();
        let severity = incident["severity"].as_str().unwrap_or("?").to_owned();
        let confidence = incident["confidence"].as_f64().unwrap_or(0.0);
        if self
            .shown
            .get(&id)
            .is_some_and(|(s, c)| *s == severity && (c - confidence).abs() < 0.005)
        {
            return;
        }
        println!(
            "\nINCIDENT {} on {}: {} — confidence {:.3} (prior {}), ATT&CK {}",
            severity.to_uppercase(),
            incident["host"].as_str().unwrap_or("?"),
            incident["title"].as_str().unwrap_or("?"),
            confidence,
            incident["prior"],
            incident["attack_techniques"]
        );
        for evidence in incident["evidence"].as_array().into_iter().flatten() {
            println!(
                "    {:<44} LR {:>6.1}  +{:.2} log-odds  ({} hit(s))",
                evidence["title"].as_str().unwrap_or("?"),
                evidence["lr"].as_f64().unwrap_or(0.0),
                evidence["contribution"].as_f64().unwrap_or(0.0),
                evidence["hits"]
            );
        }
        self.shown.insert(id, (severity, confidence));
    }
}

/// Follows a JSON-lines file from its current end.
struct EventFeed {
    label: &'static str,
    path: PathBuf,
    offset: u64,
}

impl EventFeed {
    fn new(label: &'static str, path: &Path) -> Self {
        let offset = std::fs::metadata(path).map_or(0, |m| m.len());
        EventFeed {
            label,
            path: path.to_path_buf(),
            offset,
        }
    }

    fn new_lines(&mut self) -> Vec<String> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut lines = Vec::new();
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 && line.ends_with('\n') {
            self.offset += line.len() as u64;
            lines.push(std::mem::take(&mut line));
        }
        lines
    }
}

/// One line for the agent events a person should see even before the cortex scores them
/// (integrity findings, heals, tamper attempts, kernel enforcement, losses, logins); routine
/// activity only shows up through the incidents it contributes to.
fn summarize(line: &str) -> Option<String> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    let kind = event["kind"].as_str()?;
    let process = || {
        format!(
            "{} (pid {}, user {})",
            event["process"]["exe"]
                .as_str()
                .or(event["process"]["comm"].as_str())
                .unwrap_or("?"),
            event["process"]["pid"],
            event["process"]["user"].as_str().unwrap_or("?")
        )
    };
    let text = match kind {
        "tamper_attempt" => format!("tamper attempt on the agent by {}", process()),
        "enforcement" => format!(
            "kernel {} {} by {}",
            event["action"].as_str().unwrap_or("?"),
            event["target"].as_str().unwrap_or("?"),
            process()
        ),
        "event_loss" => format!("event_loss: {} lost at {}", event["lost"], event["stage"]),
        k if k.starts_with("integrity_")
            || k.starts_with("backup_")
            || k.starts_with("cert_")
            || k.starts_with("heal_") =>
        {
            format!(
                "{k} {}",
                event["path"]
                    .as_str()
                    .or(event["location"].as_str())
                    .unwrap_or("")
            )
        }
        "auth_failure" | "auth_success" => format!(
            "{kind} user {} from {}",
            event["user"].as_str().unwrap_or("?"),
            event["remote_ip"].as_str().unwrap_or("local")
        ),
        _ => return None,
    };
    Some(text)
}
