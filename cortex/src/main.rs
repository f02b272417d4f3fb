//! `cortex`: the QSC correlation and response service.
//!
//! The data flow of `serve`, stage by stage:
//!
//! ```text
//! agents ──qsc-channel──▶ ingest (validate, bind host+source to the key)
//!                          └─▶ store (encrypted, durable; only then the ack)
//!                               └─▶ bounded queue ─▶ pipeline worker:
//!                                    detect (Sigma) → score (Bayesian fusion) → decide (node state)
//!                                    └─▶ anomaly thread: host_metrics → per-host baseline
//!                                        (learn, score, retrain) → scores back into the fusion
//!                                    └─▶ incidents + node states in the store, transitions in audit
//! api (axum): health, metrics, nodes, incidents, events, release
//! ```

mod cli;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use cortex::api::{self, ApiState, ApiToken};
use cortex::audit::{AuditEntry, AuditKind, AuditLog, AuditSink};
use cortex::config::CortexConfig;
use cortex::decide::NodeStates;
use cortex::ingest::agents::AgentsFile;
use cortex::ingest::validate::Limits;
use cortex::ingest::{self, AgentDirectory, IngestSink};
use cortex::metrics::Metrics;
use cortex::pipeline::anomaly::AnomalyStage;
use cortex::pipeline::{self, Pipeline, rules};
use cortex::score::{Fusion, ScoreConfig};
use cortex::store::{Store, open_store};
use qsc_channel::delivery::ServerConfig;
use qsc_channel::keys::StaticKeypair;
use qsc_event::now_ns;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let outcome = match cli.command {
        Command::Serve => serve_blocking(&cli.config),
        _ => cli::run_tool(&cli),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("cortex: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve_blocking(config_path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = CortexConfig::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))?;
    Ok(ExitCode::SUCCESS)
}

/// The score configuration with each enrolled host's class (explicit [score.hosts] entries win).
fn score_config(config: &CortexConfig, agents: &AgentsFile) -> anyhow::Result<ScoreConfig> {
    let mut score = config.score.clone();
    for agent in &agents.agents {
        score
            .hosts
            .entry(agent.host_id.clone())
            .or_insert_with(|| agent.class.clone());
    }
    score
        .validate()
        .context("[score] with the host classes of the agents file")?;
    Ok(score)
}

async fn serve(config: CortexConfig) -> anyhow::Result<()> {
    // Keys and state.
    let keypair = StaticKeypair::load(&config.keys.channel_key_file).with_context(|| {
        format!(
            "[keys] channel_key_file {}",
            config.keys.channel_key_file.display()
        )
    })?;
    let token = ApiToken::load(&config.api.token_file)?;
    let store: Arc<dyn Store> = Arc::from(open_store(&config.store)?);
    let audit = Arc::new(AuditLog::open(
        &config.audit.path,
        &config.audit.signing_key_file,
        config.audit.checkpoint_interval,
    )?);
    let directory = AgentDirectory::load(config.agents.file.clone())?;
    let agents = AgentsFile::load(&config.agents.file)?;

    // detect → score → decide, on one worker thread behind a bounded queue.
    let (engine, report) = rules::load_engine(&config.detect)?;
    tracing::info!(
        rules = engine.rule_count(),
        "{}",
        report.to_string().trim_end()
    );
    let metrics = Arc::new(Metrics::default());
    let nodes = Arc::new(Mutex::new(NodeStates::new(
        audit.clone(),
        store.node_states()?,
    )));
    let fusion = Fusion::new(score_config(&config, &agents)?)?;
    let pipeline = Pipeline::new(
        engine,
        fusion,
        nodes.clone(),
        store.clone(),
        metrics.clone(),
    )?;
    let (anomaly, anomaly_thread) = AnomalyStage::start(config.anomaly.clone())?;
    let pipeline = pipeline.with_anomaly(anomaly);
    let (sender, queue) = pipeline::queue(
        config.pipeline.queue_batches,
        Duration::from_millis(config.pipeline.max_block_ms),
        metrics.clone(),
    );
    let worker = std::thread::Builder::new()
        .name("cortex-pipeline".into())
        .spawn(move || pipeline.run(queue))
        .context("starting the pipeline worker")?;

    // ingest: the channel server, storing before acknowledging.
    let sink = IngestSink::new(
        store.clone(),
        directory.clone(),
        Limits::from(&config.ingest),
        metrics.clone(),
        sender,
    );
    let server_config = ServerConfig {
        keypair,
        allow_list: directory.allow_list(),
        require_hybrid: config.listen.require_hybrid,
        transport: config.listen.transport(),
        handshake_timeout: config.listen.handshake_timeout(),
    };
    let channel_listener = TcpListener::bind(config.listen_addr()?)
        .await
        .with_context(|| format!("binding [listen] address {}", config.listen.address))?;
    let api_listener = TcpListener::bind(config.api_addr()?)
        .await
        .with_context(|| format!("binding [api] address {}", config.api.address))?;
    let channel_addr = channel_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;
    audit.record(AuditEntry {
        kind: AuditKind::Service,
        actor: "cortex".into(),
        body: json!({"event": "start", "channel": channel_addr, "api": api_addr,
                     "version": env!("CARGO_PKG_VERSION")}),
    })?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ingest_task = tokio::spawn(ingest::serve(
        channel_listener,
        server_config,
        sink,
        shutdown_rx.clone(),
    ));
    let watch_task = tokio::spawn(directory.watch(
        Duration::from_secs(config.agents.reload_interval_s),
        audit.clone() as Arc<dyn AuditSink>,
        shutdown_rx.clone(),
    ));
    let retention_task = tokio::spawn(retention(
        store.clone(),
        config.clone(),
        shutdown_rx.clone(),
    ));
    let api_state = ApiState {
        store: store.clone(),
        metrics,
        nodes,
        token: Arc::new(token),
    };
    let mut api_shutdown = shutdown_rx.clone();
    let api_task = tokio::spawn(async move {
        axum::serve(api_listener, api::router(api_state))
            .with_graceful_shutdown(async move {
                let _ = api_shutdown.changed().await;
            })
            .await
    });
    tracing::info!(%channel_addr, %api_addr, "cortex is running");
    println!("LISTENING channel={channel_addr} api={api_addr}");

    wait_for_signal().await?;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    ingest_task.await.context("ingest task")?;
    watch_task.await.context("agents watch task")?;
    retention_task.await.context("retention task")?;
    api_task.await.context("api task")??;
    // Every ingest session is gone, so the queue's senders are too: the worker drains and ends.
    tokio::task::spawn_blocking(move || worker.join())
        .await
        .context("joining the pipeline worker")?
        .map_err(|_| anyhow::anyhow!("the pipeline worker panicked"))?;
    // The worker owned the anomaly stage: with it gone, the baseline thread drains and ends.
    tokio::task::spawn_blocking(move || anomaly_thread.join())
        .await
        .context("joining the anomaly baseline thread")?
        .map_err(|_| anyhow::anyhow!("the anomaly baseline thread panicked"))?;
    audit.record(AuditEntry {
        kind: AuditKind::Service,
        actor: "cortex".into(),
        body: json!({"event": "stop"}),
    })?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}

/// Applies `[store.retention]` every `interval_s` until shutdown.
async fn retention(
    store: Arc<dyn Store>,
    config: CortexConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let policy = config.store.retention.policy();
    let interval = Duration::from_secs(config.store.retention.interval_s);
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let store = store.clone();
        let policy = policy.clone();
        match tokio::task::spawn_blocking(move || store.apply_retention(&policy, now_ns())).await {
            Ok(Ok(report)) => tracing::info!(?report, "retention applied"),
            Ok(Err(error)) => tracing::error!(%error, "retention failed"),
            Err(error) => tracing::error!(%error, "retention task failed"),
        }
    }
}
