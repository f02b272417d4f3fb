use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use guardian_alpha::{agent, config::Config, output::AGENT, respond};
use qsc_channel::uplink::AgentCommands;
use qsc_event::{ActionOutcome, ActionReport, ActionRequest};

/// Guardian-Alpha: QSC's eBPF host agent. Captures process, file, privilege, memory and
/// network activity with kernel tracepoints, enriches it with process context, and emits
/// qsc events as JSON lines to stdout or a file, and/or to the cortex over qsc-channel.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log as JSON instead of text (logs go to stderr; events to the configured output).
    #[arg(long, global = true)]
    log_json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Load the kernel program and stream events until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Print the default configuration (every key documented) to stdout.
    DefaultConfig,
    /// List the kernel hooks the agent attaches and whether each is required.
    Hooks,
    /// Execute response actions on this host now, without the cortex, with the agent's
    /// executor and guardrails: reads one ActionRequest JSON per line from stdin, prints one
    /// ActionReport JSON line per request. Timed actions (ttl_s > 0) are rolled back at expiry;
    /// at the end of input it waits for those. For operators (e.g. `{"action_id":"op-1",
    /// "action":"release"}` when the cortex is unreachable) and for tests.
    Respond(RespondArgs),
    /// Create this agent's channel key (a new 0600 file) and print its public key, which the
    /// cortex operator enrolls in the cortex's agent allow-list.
    Keygen {
        /// Where to write the secret key; must not exist yet. Point `[cortex] key_file` at it.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML configuration file (see `guardian-alpha default-config`).
    #[arg(long, short, env = "QSC_ALPHA_CONFIG")]
    config: Option<PathBuf>,
    /// Where events go: "-" for stdout or a file path; overrides the config's `output`.
    #[arg(long, short)]
    output: Option<String>,
    /// Load this kernel object instead of the embedded one.
    #[arg(long)]
    ebpf_object: Option<PathBuf>,
    /// Ring buffer size in bytes (power of two); overrides `sensor.ring_buffer_bytes`.
    #[arg(long)]
    ring_buffer_bytes: Option<u32>,
    /// Host id in events; overrides `host_id`.
    #[arg(long)]
    host_id: Option<String>,
    /// At shutdown, write a JSON summary (events emitted by kind, records lost) to this file.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Also send events to the cortex at this `host:port`: turns on the config's `[cortex]`
    /// uplink (keys and outbox come from there) and overrides its `address`.
    #[arg(long, value_name = "HOST:PORT")]
    cortex: Option<String>,
}

#[derive(clap::Args)]
struct RespondArgs {
    /// TOML configuration file: `[respond]` and the `[cortex]` address are used.
    #[arg(long, short, env = "QSC_ALPHA_CONFIG")]
    config: Option<PathBuf>,
    /// Load the kernel program so that block_ip uses its cgroup programs and revoke_credential
    /// has the kernel refuse the account (both end with this process; revocations are applied
    /// again from [respond] revoked_accounts_file at the next start); without it, blocks go
    /// through nftables and revocations through the shadow file alone.
    #[arg(long)]
    kernel: bool,
    /// Load this kernel object instead of the embedded one (with --kernel).
    #[arg(long)]
    ebpf_object: Option<PathBuf>,
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn load_config(args: &RunArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(output) = &args.output {
        config.output = output.clone();
    }
    if let Some(object) = &args.ebpf_object {
        config.sensor.ebpf_object = Some(object.clone());
    }
    if let Some(bytes) = args.ring_buffer_bytes {
        config.sensor.ring_buffer_bytes = bytes;
    }
    if let Some(host) = &args.host_id {
        config.host_id = Some(host.clone());
    }
    if let Some(address) = &args.cortex {
        config.cortex.address = address.clone();
        config.cortex.enabled = true;
    }
    config.validate()?;
    Ok(config)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Sets this thread's niceness; every thread started after inherits it.
fn set_nice(nice: i32) {
    // SAFETY: setpriority has no memory preconditions; `who` 0 is the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        let err = std::io::Error::last_os_error();
        tracing::warn!(nice, %err, "cannot set the configured niceness; keeping the inherited one");
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match cli.command {
        Command::DefaultConfig => {
            print!(
                "{}",
                include_str!("../../config/guardian-alpha.example.toml")
            );
            Ok(())
        }
        Command::Hooks => {
            for hook in guardian_alpha::sensor::HOOKS {
                let need = if hook.required {
                    "required"
                } else {
                    "optional"
                };
                println!("{}/{}\t{need}", hook.category, hook.program);
            }
            Ok(())
        }
        Command::Keygen { out } => {
            let public = qsc_channel::keys::StaticKeypair::generate_file(&out)?;
            println!("{public}");
            eprintln!(
                "guardian-alpha: wrote {} (0600); enroll the public key above in the cortex \
                 allow-list and set `[cortex] key_file` to this path",
                out.display()
            );
            Ok(())
        }
        Command::Respond(args) => respond(&args),
        Command::Run(args) => {
            let config = load_config(&args)?;
            set_nice(config.nice);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async {
                let sensor = agent::start_sensor(&config)?;
                let hooks = sensor.active_hooks.clone();
                let sensor = std::sync::Arc::new(std::sync::Mutex::new(sensor));
                let (events, events_rx) = respond::events::ResponseEvents::channel();
                let responder = respond::Responder::new(&config, Some(sensor.clone()))?
                    .with_events(events);
                let commands = respond::ResponseHandler::new(
                    responder,
                    AgentCommands::new(AGENT, env!("CARGO_PKG_VERSION")),
                );
                let mut agent = agent::Agent::new(&config, hooks, commands)?
                    .with_response_events(events_rx);
                agent.run(&config, sensor, shutdown_signal()).await?;
                if let Some(path) = &args.stats_file {
                    let stats = serde_json::to_vec_pretty(&agent.stats())?;
                    std::fs::write(path, stats)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
                tracing::info!(stats = %serde_json::to_string(&agent.stats())?, "programs detached; bye");
                Ok(())
            })
        }
    }
}

/// `guardian-alpha respond`: executes requests read from stdin, one report line each.
fn respond(args: &RespondArgs) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(object) = &args.ebpf_object {
        config.sensor.ebpf_object = Some(object.clone());
    }
    let sensor = if args.kernel {
        let sensor = agent::start_sensor(&config)?;
        Some(std::sync::Arc::new(std::sync::Mutex::new(sensor)))
    } else {
        None
    };
    let responder = respond::Responder::new(&config, sensor)?;
    let mut stdout = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("cannot read stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let report = match serde_json::from_str::<ActionRequest>(&line) {
            Ok(request) => responder.execute(&request),
            Err(err) => ActionReport {
                action_id: String::new(),
                outcome: ActionOutcome::Failed,
                detail: format!("not an action request: {err}"),
                received_mono_ns: None,
                done_mono_ns: qsc_event::mono_now_ns(),
                facts: Default::default(),
            },
        };
        serde_json::to_writer(&mut stdout, &report)?;
        stdout.write_all(b"\n")?;
        stdout.flush()?;
    }
    if responder.pending_rollbacks() > 0 {
        tracing::info!(
            pending = responder.pending_rollbacks(),
            "end of input: waiting for timed actions to expire"
        );
        responder.wait_rollbacks();
    }
    Ok(())
}
