//! `cargo xtask run`: the whole stack on this host, with embedded defaults. Keys, configs and
//! state go under `.qsc/` at the repository root; detections are shown live until Ctrl-C,
//! then every program is stopped cleanly (the kernel programs detach with guardian-alpha).

use std::{
    io::{BufRead, BufReader, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{ebpf, setup, shell};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Where keys, configs, stores and logs go.
    #[arg(long, default_value = ".qsc")]
    pub state_dir: PathBuf,
}

/// One program of the stack.
struct Program {
    name: &'static str,
    child: Child,
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    if !shell::is_root() {
        bail!(
            "guardian-alpha loads eBPF programs: run `cargo xtask run` as root (or with CAP_BPF + CAP_PERFMON)"
        );
    }
    setup::run(&setup::SetupArgs::default())?;
    ebpf::build()?;
    shell::run(shell::cargo().args(["build", "--workspace", "--bins"]))?;
    let state = shell::root().join(&args.state_dir);
    let bin = shell::target_dir().join("debug");
    let layout = StateLayout::create(&state)?;
    let keys = enroll(&bin, &layout)?;
    layout.write_configs(&keys)?;

    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;

    let mut programs = Vec::new();
    let outcome = start_stack(&bin, &layout, &mut programs).and_then(|()| {
        eprintln!(
            "\nQSC is running: cortex (API http://{API}), guardian-alpha and guardian-beta on this host.\n\
             State, keys and logs: {}\n\
             Try `cat /etc/shadow`, or edit {} (it is auto-healed). Incidents appear below as the\n\
             cortex decides them; Ctrl-C stops everything.\n",
            state.display(),
            layout.demo_file.display()
        );
        let mut view = LiveView::new(&layout, keys.api_token.clone());
        let deadline = args.seconds.map(|s| Instant::now() + Duration::from_secs(s));
        watch(&mut programs, &mut view, &stop, deadline)
    });
    stop_all(&mut programs);
    outcome
}

const CHANNEL: &str = "127.0.0.1:7443";
const API: &str = "127.0.0.1:7080";

fn start_stack(
    bin: &Path,
    layout: &StateLayout,
    programs: &mut Vec<Program>,
) -> anyhow::Result<()> {
    programs.push(start(
        "cortex",
        Command::new(bin.join("cortex"))
            .arg("--config")
            .arg(&layout.cortex_config)
            .arg("serve"),
        &layout.logs,
    )?);
    wait_for_log(
        &layout.logs.join("cortex.log"),
        "LISTENING",
        &mut programs[0],
    )?;
    programs.push(start(
        "guardian-alpha",
        Command::new(bin.join("guardian-alpha"))
            .args(["run", "--config"])
            .arg(&layout.alpha_config),
        &layout.logs,
    )?);
    baseline_init(bin, layout)?;
    programs.push(start(
        "guardian-beta",
        Command::new(bin.join("guardian-beta"))
            .arg("--config")
            .arg(&layout.beta_config)
            .arg("--output")
            .arg(&layout.beta_events)
            .arg("watch"),
        &layout.logs,
    )?);
    Ok(())
}

/// Waits until `needle` appears in a program's log (or it exits).
fn wait_for_log(log: &Path, needle: &str, program: &mut Program) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::fs::read_to_string(log).is_ok_and(|t| t.contains(needle)) {
            return Ok(());
        }
        if let Some(status) = program.child.try_wait()? {
            bail!(
                "{} exited ({status}) before it was ready; see {}",
                program.name,
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{} was not ready within a minute; see {}",
        program.name,
        log.display()
    )
}

/// Public keys and the API token, created once and reused by later runs.
struct Keys {
    cortex_public: String,
    api_token: String,
}

/// Creates the cortex's keys and each agent's channel key when missing, and enrolls the agents.
fn enroll(bin: &Path, layout: &StateLayout) -> anyhow::Result<Keys> {
    let cortex = |args: &[&str]| {
        let mut cmd = Command::new(bin.join("cortex"));
        cmd.arg("--config").arg(&layout.cortex_config).args(args);
        cmd
    };
    // The cortex reads its config to find where its keys go: write a first version now.
    layout.write_cortex_config()?;
    let cortex_pub = layout.cortex_dir.join("channel.pub");
    if !cortex_pub.exists() {
        let out = output_of(&mut cortex(&["keygen"]))?;
        let key = out
            .lines()
            .find_map(|l| l.strip_prefix("channel public key:"))
            .map(|k| k.trim().to_owned())
            .context("cortex keygen did not print the channel public key")?;
        std::fs::write(&cortex_pub, &key)?;
    }
    for (agent, source, key_file) in [
        ("guardian-alpha", "alpha", &layout.alpha_key),
        ("guardian-beta", "beta", &layout.beta_key),
    ] {
        let pub_file = key_file.with_extension("pub");
        if !pub_file.exists() {
            let out = output_of(
                Command::new(bin.join(agent))
                    .arg("keygen")
                    .arg("--out")
                    .arg(key_file),
            )?;
            let key = out.lines().next().unwrap_or("").trim().to_owned();
            std::fs::write(&pub_file, &key)?;
        }
        let key = std::fs::read_to_string(&pub_file)?.trim().to_owned();
        let enrolled = std::fs::read_to_string(&layout.agents_file).unwrap_or_default();
        if !enrolled.contains(&key) {
            output_of(&mut cortex(&[
                "agents",
                "add",
                "--host-id",
                &layout.host_id,
                "--source",
                source,
                "--public-key",
                &key,
            ]))?;
        }
    }
    Ok(Keys {
        cortex_public: std::fs::read_to_string(&cortex_pub)?.trim().to_owned(),
        api_token: std::fs::read_to_string(layout.cortex_dir.join("api.token"))?
            .trim()
            .to_owned(),
    })
}

fn output_of(cmd: &mut Command) -> anyhow::Result<String> {
    let line = shell::describe(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct StateLayout {
    host_id: String,
    logs: PathBuf,
    cortex_dir: PathBuf,
    cortex_config: PathBuf,
    agents_file: PathBuf,
    alpha_config: PathBuf,
    alpha_key: PathBuf,
    alpha_events: PathBuf,
    beta_dir: PathBuf,
    beta_config: PathBuf,
    beta_key: PathBuf,
    beta_events: PathBuf,
    demo_dir: PathBuf,
    demo_file: PathBuf,
}

impl StateLayout {
    fn create(state: &Path) -> anyhow::Result<Self> {
        let layout = StateLayout {
            host_id: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into()),
            logs: state.join("logs"),
            cortex_dir: state.join("cortex"),
            cortex_config: state.join("cortex.toml"),
            agents_file: state.join("cortex").join("agents.toml"),
            alpha_config: state.join("guardian-alpha.toml"),
            alpha_key: state.join("alpha").join("channel.key"),
            alpha_events: state.join("alpha-events.jsonl"),
            beta_dir: state.join("beta"),
            beta_config: state.join("guardian-beta.toml"),
            beta_key: state.join("beta").join("channel.key"),
            beta_events: state.join("beta-events.jsonl"),
            demo_dir: state.join("demo"),
            demo_file: state.join("demo").join("app.conf"),
        };
        for dir in [
            state,
            &layout.logs,
            &layout.cortex_dir,
            &state.join("alpha"),
            &layout.beta_dir,
            &layout.demo_dir,
        ] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        if !layout.demo_file.exists() {
            std::fs::write(
                &layout.demo_file,
                "# a protected demo config: edit me\nlisten = 8080\n",
            )?;
        }
        Ok(layout)
    }

    fn write_cortex_config(&self) -> anyhow::Result<()> {
        let c = self.cortex_dir.display();
        std::fs::write(
            &self.cortex_config,
            format!(
                "# Written by `cargo xtask run`; every key is documented in config/cortex.example.toml.\n\
                 [listen]\naddress = \"{CHANNEL}\"\n[api]\naddress = \"{API}\"\ntoken_file = \"{c}/api.token\"\n\
                 [agents]\nfile = \"{c}/agents.toml\"\n\
                 [keys]\nchannel_key_file = \"{c}/channel.key\"\n\
                 [store]\npath = \"{c}/cortex.db\"\nmaster_key_file = \"{c}/master.key\"\n\
                 [audit]\npath = \"{c}/audit.db\"\nsigning_key_file = \"{c}/audit-signing.key\"\n"
            ),
        )?;
        Ok(())
    }

    /// The agents' configs (rewritten each run so they follow the code).
    fn write_configs(&self, keys: &Keys) -> anyhow::Result<()> {
        let uplink = |key: &Path, outbox: &Path| {
            format!(
                "[cortex]\nenabled = true\naddress = \"{CHANNEL}\"\ncortex_public_key = \"{}\"\nkey_file = \"{}\"\noutbox_dir = \"{}\"\n",
                keys.cortex_public,
                key.display(),
                outbox.display()
            )
        };
        std::fs::write(
            &self.alpha_config,
            format!(
                "# Written by `cargo xtask run`; see config/guardian-alpha.example.toml.\nhost_id = \"{}\"\noutput = \"{}\"\n\n{}",
                self.host_id,
                self.alpha_events.display(),
                uplink(&self.alpha_key, &self.alpha_key.with_file_name("outbox"))
            ),
        )?;
        let beta = self.beta_dir.display();
        std::fs::write(
            &self.beta_config,
            format!(
                "# Written by `cargo xtask run`; see config/guardian-beta.example.toml.\n\
                 host_id = \"{host}\"\nstore = \"{beta}/baseline.qsb\"\nkey_file = \"{beta}/store.key\"\nheal_dir = \"{beta}/heal\"\n\n\
                 [[tree]]\npath = \"/etc\"\nexclude = [\"/etc/mtab\", \"/etc/ld.so.cache\"]\n\n\
                 [[tree]]\npath = \"{demo}\"\nheal = true\n\n[watch]\nfull_check_interval_s = 300\n\n{uplink}",
                host = self.host_id,
                demo = self.demo_dir.display(),
                uplink = uplink(&self.beta_key, &self.beta_dir.join("outbox")),
            ),
        )?;
        Ok(())
    }
}

fn start(name: &'static str, cmd: &mut Command, logs: &Path) -> anyhow::Result<Program> {
    let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    eprintln!(
        "started {name} (pid {}), log in {}/{name}.log",
        child.id(),
        logs.display()
    );
    Ok(Program { name, child })
}

/// The baseline is recorded once; later runs check against it.
fn baseline_init(bin: &Path, layout: &StateLayout) -> anyhow::Result<()> {
    let store = layout
        .beta_config
        .with_file_name("beta")
        .join("baseline.qsb");
    if store.exists() {
        return Ok(());
    }
    eprintln!("guardian-beta: recording the integrity baseline of /etc and the demo tree");
    let status = Command::new(bin.join("guardian-beta"))
        .arg("--config")
        .arg(&layout.beta_config)
        .arg("--output")
        .arg(&layout.beta_events)
        .args(["baseline", "init"])
        .status()?;
    // Exit status 1 means "findings", which a first baseline does not have; 2 is an error.
    if status.code() == Some(2) || status.code().is_none() {
        bail!("guardian-beta baseline init failed ({status})");
    }
    Ok(())
}

fn watch(
    programs: &mut [Program],
    view: &mut LiveView,
    stop: &AtomicBool,
    deadline: Option<Instant>,
) -> anyhow::Result<()> {
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        for program in programs.iter_mut() {
            if let Some(status) = program.child.try_wait()? {
                bail!(
                    "{} exited unexpectedly ({status}); see its log",
                    program.name
                );
            }
        }
        view.refresh();
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// What the terminal shows: incidents as the cortex decides them (with their evidence), and
/// the agents' notable events as they report them.
struct LiveView {
    feeds: Vec<EventFeed>,
    api_token: String,
    /// Incident id → (severity, confidence) last shown.
    shown: std::collections::HashMap<String, (String, f64)>,
    api_error_shown: bool,
}

impl LiveView {
    fn new(layout: &StateLayout, api_token: String) -> Self {
        LiveView {
            feeds: vec![
                EventFeed::new("alpha", &layout.alpha_events),
                EventFeed::new("beta", &layout.beta_events),
            ],
            api_token,
            shown: Default::default(),
            api_error_shown: false,
        }
    }

    fn refresh(&mut self) {
        for feed in &mut self.feeds {
            for line in feed.new_lines() {
                if let Some(summary) = summarize(&line) {
                    println!("  [{}] {summary}", feed.label);
                }
            }
        }
        match self.incidents() {
            Ok(incidents) => {
                for incident in incidents {
                    self.show_if_changed(&incident);
                }
            }
            Err(err) if !self.api_error_shown => {
                self.api_error_shown = true;
                eprintln!("cannot read incidents from the cortex API: {err}");
            }
            Err(_) => {}
        }
    }

    fn incidents(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let body: serde_json::Value = ureq::get(&format!("http://{API}/api/incidents?limit=50"))
            .set("Authorization", &format!("Bearer {}", self.api_token))
            .timeout(Duration::from_secs(2))
            .call()?
            .into_json()?;
        Ok(body.as_array().cloned().unwrap_or_default())
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

fn stop_all(programs: &mut [Program]) {
    for program in programs.iter() {
        // SAFETY: signalling a child we started.
        unsafe { libc::kill(program.child.id() as i32, libc::SIGTERM) };
    }
    for program in programs.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match program.child.try_wait() {
                Ok(Some(status)) => {
                    eprintln!("{} stopped ({status})", program.name);
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    eprintln!("{} did not stop in time: killing it", program.name);
                    let _ = program.child.kill();
                    let _ = program.child.wait();
                    break;
                }
            }
        }
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
