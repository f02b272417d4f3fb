//! The `guardian-beta` command line.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use guardian_beta::backup;
use guardian_beta::cert::{self, CertPolicy, Target};
use guardian_beta::config::{self, Config};
use guardian_beta::integrity::{Integrity, IntegrityError, RunStats};
use guardian_beta::report::{Emitter, Format};
use guardian_beta::store::{StoreError, StoreKeys};
use guardian_beta::uplink::{self, CortexLink};
use guardian_beta::watch::Watcher;
use indicatif::{ProgressBar, ProgressStyle};
use qsc_event::{EventKind, IntegrityBaselineTampered};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Guardian-Beta: file, backup and certificate integrity for QSC.
///
/// Findings are written as qsc-event JSON lines (one event per line) for machines, or as text
/// for people. Exit status: 0 when nothing was found, 1 when there are findings, 2 on errors.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Configuration file (every key is documented in config/guardian-beta.example.toml).
    #[arg(short, long, env = "QSC_BETA_CONFIG", default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Append findings to this file instead of writing them to stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Findings format; `auto` is text on a terminal and JSON otherwise.
    #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
    format: FormatArg,
    /// Log format on stderr (filter with RUST_LOG, default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Also send findings to the cortex at this `host:port`: turns on the config's `[cortex]`
    /// uplink (keys and outbox come from there) and overrides its `address`.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    cortex: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Auto,
    Json,
    Text,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Record, accept or verify the file baseline of the configured trees.
    #[command(subcommand)]
    Baseline(BaselineCommand),
    /// Watch the trees in real time (inotify) with periodic full checks; runs until killed.
    Watch,
    /// Verify backup folders against SHA3-256 manifests, or write a manifest.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Check certificate files and TLS endpoints: expiry, validity, chain, hostname, CRLs.
    Cert(CertArgs),
    /// Create this agent's channel key (a new 0600 file) and print its public key, which the
    /// cortex operator enrolls in the cortex's agent allow-list.
    Keygen {
        /// Where to write the secret key; must not exist yet. Point `[cortex] key_file` at it.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum BaselineCommand {
    /// Hash every file of every tree and write a new signed store (creates the key file).
    Init {
        /// Replace an existing store (otherwise refused, so a tampered state is never
        /// accepted by accident; use `update` to accept changes).
        #[arg(long)]
        force: bool,
    },
    /// Accept the current state: re-hash only entries whose metadata changed, write the store.
    Update,
    /// Print the verified, decrypted baseline as JSON (to stdout or --output).
    Show,
    /// Compare the trees with the store; heal files of `heal = true` trees.
    Check {
        /// Re-hash every file instead of only those whose metadata changed.
        #[arg(long)]
        full: bool,
    },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Verify every configured backup set, or one folder given on the command line.
    Verify {
        /// Only this configured set (repeatable).
        #[arg(long = "set")]
        sets: Vec<String>,
        /// A backup folder to verify instead of the configured sets (needs --manifest).
        #[arg(long, requires = "manifest")]
        dir: Option<PathBuf>,
        /// Manifest for --dir.
        #[arg(long, requires = "dir")]
        manifest: Option<PathBuf>,
    },
    /// Write the SHA3-256 manifest of a backup folder known to be good.
    Manifest {
        #[arg(long)]
        dir: PathBuf,
        /// Where to write the manifest.
        #[arg(long)]
        manifest: PathBuf,
    },
}

#[derive(Args)]
struct CertArgs {
    /// Certificate file (PEM with the leaf first, or DER); repeatable. Overrides the config.
    #[arg(long = "file")]
    files: Vec<PathBuf>,
    /// TLS endpoint `host:port`; repeatable. Overrides the config.
    #[arg(long = "endpoint")]
    endpoints: Vec<String>,
    /// Name expected in endpoint certificates (default: the endpoint's host).
    #[arg(long)]
    server_name: Option<String>,
    /// PEM bundle of trusted roots (default from config: the system bundle).
    #[arg(long)]
    ca_bundle: Option<PathBuf>,
    /// CRL file or http:// URL; repeatable. Overrides the config.
    #[arg(long = "crl")]
    crls: Vec<String>,
    /// Warn when fewer days than this are left (default from config: 30).
    #[arg(long)]
    warn_days: Option<i64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(error) => {
            eprintln!("guardian-beta: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs the command; returns the number of findings.
fn run(cli: Cli) -> Result<u64> {
    if let Command::Keygen { out } = &cli.command {
        keygen(out)?;
        return Ok(0);
    }
    let explicit_config = std::env::var_os("QSC_BETA_CONFIG").is_some()
        || cli.config != Path::new(config::DEFAULT_CONFIG_PATH);
    let needs_config = matches!(cli.command, Command::Baseline(_) | Command::Watch);
    let mut config = if needs_config || explicit_config || cli.config.exists() {
        Config::load(&cli.config)?
    } else {
        Config::default()
    };
    if let Some(address) = &cli.cortex {
        config.cortex.address = address.clone();
        config.cortex.enabled = true;
        config.validate()?;
    }
    let threads = config.workers;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("cannot start the hashing threads")?;
    let host_id = config.resolved_host_id()?;
    let (mut emitter, cortex) = open_emitter(&cli, &config, host_id.clone())?;
    match cli.command {
        Command::Baseline(command) => run_baseline(&config, host_id, command, &mut emitter)?,
        Command::Watch => run_watch(&config, host_id, &mut emitter)?,
        Command::Backup(command) => run_backup(&config, command, &mut emitter)?,
        Command::Cert(args) => run_cert(&config, args, &mut emitter)?,
        Command::Keygen { .. } => {}
    }
    if let Some(cortex) = cortex {
        cortex.drain()?;
    }
    Ok(emitter.emitted())
}

fn keygen(out: &Path) -> Result<()> {
    let public = qsc_channel::keys::StaticKeypair::generate_file(out)?;
    println!("{public}");
    eprintln!(
        "guardian-beta: wrote {} (0600); enroll the public key above in the cortex allow-list \
         and set `[cortex] key_file` to this path",
        out.display()
    );
    Ok(())
}

/// Commands whose output is findings; only those go to the cortex.
fn sends_findings(command: &Command) -> bool {
    match command {
        Command::Baseline(BaselineCommand::Init { .. } | BaselineCommand::Show) => false,
        Command::Backup(BackupCommand::Manifest { .. }) | Command::Keygen { .. } => false,
        Command::Baseline(_) | Command::Watch | Command::Backup(_) | Command::Cert(_) => true,
    }
}

/// The emitter, writing locally and, when the uplink is on, to the cortex as well.
fn open_emitter(
    cli: &Cli,
    config: &Config,
    host_id: String,
) -> Result<(Emitter, Option<CortexLink>)> {
    let to_terminal = cli.output.is_none() && std::io::stdout().is_terminal();
    let format = match cli.format {
        FormatArg::Json => Format::Json,
        FormatArg::Text => Format::Text,
        FormatArg::Auto if to_terminal => Format::Text,
        FormatArg::Auto => Format::Json,
    };
    let out: Box<dyn std::io::Write + Send> = match &cli.output {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open output file {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    if !(config.cortex.enabled && sends_findings(&cli.command)) {
        return Ok((Emitter::new(host_id, format, out), None));
    }
    let (link, writer) = CortexLink::start(&config.cortex, out, format).with_context(|| {
        format!(
            "cannot start the uplink to the cortex at {} (agent key {})",
            config.cortex.address,
            config.cortex.key_file_for(uplink::AGENT).display()
        )
    })?;
    // The writer takes JSON and writes the local copy in `format` itself.
    Ok((
        Emitter::new(host_id, Format::Json, Box::new(writer)),
        Some(link),
    ))
}

fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{spinner} [{elapsed}] {bar:40} {pos}/{len} entries")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(0).with_style(style)
}

fn run_baseline(
    config: &Config,
    host_id: String,
    command: BaselineCommand,
    emitter: &mut Emitter,
) -> Result<()> {
    if let BaselineCommand::Init { force } = command {
        if config.store.exists() && !force {
            bail!(
                "{} already exists; use `baseline update` to accept changes or `init --force` to replace it",
                config.store.display()
            );
        }
        let keys = StoreKeys::load_or_create(&config.key_file)?;
        let integrity = Integrity::new(config, host_id, keys, progress_bar());
        let stats = integrity.init()?;
        summarize("baseline written", &stats, 0);
        return Ok(());
    }
    let keys = StoreKeys::load(&config.key_file)?;
    let integrity = Integrity::new(config, host_id, keys, progress_bar());
    if matches!(command, BaselineCommand::Show) {
        return match integrity.load() {
            Ok(baseline) => Ok(emitter.write_json(&baseline)?),
            Err(error) => report_store_problem(config, error.into(), emitter),
        };
    }
    let outcome = match command {
        BaselineCommand::Update => integrity.update(),
        _ => integrity.check(matches!(command, BaselineCommand::Check { full: true })),
    };
    match outcome {
        Ok((findings, stats)) => {
            let count = findings.len();
            emitter.emit_all(findings)?;
            let what = if matches!(command, BaselineCommand::Update) {
                "baseline updated; accepted changes"
            } else {
                "baseline checked; findings"
            };
            summarize(what, &stats, count);
            Ok(())
        }
        Err(error) => report_store_problem(config, error, emitter),
    }
}

/// A tampered (or vanished) store is a finding, not only an error.
fn report_store_problem(
    config: &Config,
    error: IntegrityError,
    emitter: &mut Emitter,
) -> Result<()> {
    let reason = match &error {
        IntegrityError::Store(StoreError::Tampered { reason, .. }) => reason.clone(),
        IntegrityError::Store(StoreError::Missing { .. }) => {
            "the store is missing although its key file exists".to_string()
        }
        _ => return Err(error.into()),
    };
    emitter.emit(EventKind::IntegrityBaselineTampered(
        IntegrityBaselineTampered {
            store: config.store.display().to_string(),
            reason,
        },
    ))?;
    tracing::error!("{error}");
    Ok(())
}

fn summarize(what: &str, stats: &RunStats, findings: usize) {
    for warning in &stats.warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        entries = stats.entries,
        hashed_files = stats.hashed_files,
        hashed_bytes = stats.hashed_bytes,
        "{what}: {findings}"
    );
}

fn run_watch(config: &Config, host_id: String, emitter: &mut Emitter) -> Result<()> {
    let keys = StoreKeys::load(&config.key_file)?;
    let integrity = Integrity::new(config, host_id, keys, ProgressBar::hidden());
    let mut watcher = match Watcher::new(&integrity) {
        Ok(watcher) => watcher,
        Err(guardian_beta::watch::WatchError::Integrity(error)) => {
            return report_store_problem(config, error, emitter);
        }
        Err(other) => return Err(other.into()),
    };
    tracing::info!(directories = watcher.watched_dirs(), "watching");
    // SIGINT/SIGTERM end the loop within one poll; the caller then waits for the uplink to
    // deliver what is queued.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot install the signal handlers")?;
    }
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let findings = watcher.poll(Duration::from_secs(1))?;
        emitter.emit_all(findings)?;
    }
    tracing::info!("stopping: signal received");
    Ok(())
}

fn run_backup(config: &Config, command: BackupCommand, emitter: &mut Emitter) -> Result<()> {
    match command {
        BackupCommand::Manifest { dir, manifest } => {
            let count = backup::write_manifest(&dir, &manifest)?;
            tracing::info!(files = count, manifest = %manifest.display(), "manifest written");
        }
        BackupCommand::Verify {
            sets,
            dir,
            manifest,
        } => {
            let jobs: Vec<(String, PathBuf, PathBuf)> = match (dir, manifest) {
                (Some(dir), Some(manifest)) => vec![(dir.display().to_string(), dir, manifest)],
                _ => selected_sets(config, &sets)?,
            };
            for (name, dir, manifest) in jobs {
                let expected = backup::read_manifest(&manifest)?;
                let findings = backup::verify(&name, &dir, &expected)?;
                tracing::info!(set = %name, files = expected.len(), findings = findings.len(), "backup verified");
                emitter.emit_all(findings)?;
            }
        }
    }
    Ok(())
}

fn selected_sets(config: &Config, names: &[String]) -> Result<Vec<(String, PathBuf, PathBuf)>> {
    if config.backups.is_empty() {
        bail!("no [[backup]] set is configured; pass --dir and --manifest");
    }
    for name in names {
        if !config.backups.iter().any(|b| &b.name == name) {
            bail!("no backup set named {name:?} in the config");
        }
    }
    Ok(config
        .backups
        .iter()
        .filter(|b| names.is_empty() || names.contains(&b.name))
        .map(|b| (b.name.clone(), b.path.clone(), b.manifest.clone()))
        .collect())
}

fn run_cert(config: &Config, args: CertArgs, emitter: &mut Emitter) -> Result<()> {
    let ca_bundle = args
        .ca_bundle
        .unwrap_or_else(|| config.cert.ca_bundle.clone());
    let crls = if args.crls.is_empty() {
        config.cert.crls.clone()
    } else {
        args.crls
    };
    let warn_days = args.warn_days.unwrap_or(config.cert.warn_days);
    let timeout = Duration::from_secs(config.cert.timeout_s);
    let policy = CertPolicy::load(warn_days, &ca_bundle, &crls, timeout)?;
    let from_args = !args.files.is_empty() || !args.endpoints.is_empty();
    let mut targets: Vec<Target<'_>> = Vec::new();
    if from_args {
        targets.extend(args.files.iter().map(|p| Target::File(p)));
        targets.extend(args.endpoints.iter().map(|e| Target::Endpoint {
            endpoint: e,
            server_name: args.server_name.as_deref(),
        }));
    } else {
        for target in &config.cert.targets {
            match (&target.path, &target.endpoint) {
                (Some(path), _) => targets.push(Target::File(path)),
                (None, Some(endpoint)) => targets.push(Target::Endpoint {
                    endpoint,
                    server_name: target.server_name.as_deref(),
                }),
                (None, None) => {}
            }
        }
    }
    if targets.is_empty() {
        bail!("nothing to check: pass --file/--endpoint or add [[cert.target]] to the config");
    }
    let now = (qsc_event::now_ns() / 1_000_000_000) as i64;
    for target in &targets {
        emitter.emit_all(cert::check_target(target, &policy, now))?;
    }
    tracing::info!(
        targets = targets.len(),
        findings = emitter.emitted(),
        "certificates checked"
    );
    Ok(())
}
