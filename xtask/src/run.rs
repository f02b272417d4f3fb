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
    let layout = StateLayout::create(&state)?;
    let bin = shell::target_dir().join("debug");

    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;

    let mut programs = Vec::new();
    programs.push(start(
        "guardian-alpha",
        Command::new(bin.join("guardian-alpha"))
            .args(["run", "--config"])
            .arg(&layout.alpha_config),
        &layout.logs,
    )?);
    baseline_init(&bin, &layout)?;
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
    eprintln!(
        "\nQSC is running: guardian-alpha and guardian-beta on this host. The cortex service is \
         not part of this build yet, so events are shown as the agents report them (no \
         correlation). State: {}\nTry: cat /etc/shadow, or edit {} (it is auto-healed). Ctrl-C stops.\n",
        state.display(),
        layout.demo_file.display()
    );
    let mut feeds = vec![
        EventFeed::new("alpha", &layout.alpha_events),
        EventFeed::new("beta", &layout.beta_events),
    ];
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs(s));
    let outcome = watch(&mut programs, &mut feeds, &stop, deadline);
    stop_all(&mut programs);
    outcome
}

struct StateLayout {
    logs: PathBuf,
    alpha_config: PathBuf,
    alpha_events: PathBuf,
    beta_config: PathBuf,
    beta_events: PathBuf,
    demo_file: PathBuf,
}

impl StateLayout {
    /// Writes the configs (each run, so they follow the code) under `state`.
    fn create(state: &Path) -> anyhow::Result<Self> {
        let beta_dir = state.join("beta");
        let demo_dir = state.join("demo");
        let logs = state.join("logs");
        for dir in [state, &beta_dir, &demo_dir, &logs] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let layout = StateLayout {
            alpha_config: state.join("guardian-alpha.toml"),
            alpha_events: state.join("alpha-events.jsonl"),
            beta_config: state.join("guardian-beta.toml"),
            beta_events: state.join("beta-events.jsonl"),
            demo_file: demo_dir.join("app.conf"),
            logs,
        };
        std::fs::write(
            &layout.alpha_config,
            format!(
                "# Written by `cargo xtask run`; see config/guardian-alpha.example.toml.\noutput = \"{}\"\n",
                layout.alpha_events.display()
            ),
        )?;
        if !layout.demo_file.exists() {
            std::fs::write(
                &layout.demo_file,
                "# a protected demo config: edit me\nlisten = 8080\n",
            )?;
        }
        std::fs::write(
            &layout.beta_config,
            format!(
                "# Written by `cargo xtask run`; see config/guardian-beta.example.toml.\n\
                 store = \"{beta}/baseline.qsb\"\nkey_file = \"{beta}/store.key\"\nheal_dir = \"{beta}/heal\"\n\n\
                 [[tree]]\npath = \"/etc\"\nexclude = [\"/etc/mtab\", \"/etc/ld.so.cache\"]\n\n\
                 [[tree]]\npath = \"{demo}\"\nheal = true\n\n[watch]\nfull_check_interval_s = 300\n",
                beta = beta_dir.display(),
                demo = demo_dir.display(),
            ),
        )?;
        Ok(layout)
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
    feeds: &mut [EventFeed],
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
        for feed in feeds.iter_mut() {
            for line in feed.new_lines() {
                if let Some(summary) = summarize(&line) {
                    println!("[{}] {summary}", feed.label);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
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

/// One line for the kinds worth a person's attention; routine activity is not shown.
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
        "file_open" | "file_chmod" | "file_chown" | "file_unlink" | "file_rename" => {
            format!(
                "{kind} {} by {}",
                event["path"].as_str().unwrap_or("?"),
                process()
            )
        }
        "priv_setid" | "priv_capset" | "priv_ptrace" | "priv_module_load" | "priv_bpf"
        | "priv_memfd_create" | "memory_rwx" | "tamper_attempt" => {
            format!("{kind} by {}", process())
        }
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
