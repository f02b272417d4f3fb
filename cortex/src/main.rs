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
//!                                    └─▶ respond: playbooks → guardrails → mode (dry_run | assisted
//!                                        hold | autonomous) → dispatch queue
//!                                    └─▶ incidents + node states in the store, transitions in audit
//! respond dispatcher task ──qsc-channel command──▶ guardian-alpha of the host ──ActionReport──▶
//!                          result, latency, TTL rollback (all audited, persisted)
//! webhook: incidents and action results ──signed, retried, dead-lettered──▶ SOAR destinations
//! api (axum): health, metrics, nodes, incidents, events, release, actions (approve/deny),
//!             POST /webhook/approval (a SOAR's signed approve/deny)
//! console (axum, /console/): fleet, incidents, held actions, audit — users with roles, CSRF
//! ```
//!
//! As replicas (`[cluster] role`, `[bus] kind = "nats"`, `[store] backend = "postgres"`):
//!
//! ```text
//! gateway: agents ──qsc-channel──▶ ingest (validate) ──publish──▶ JetStream `<prefix>.<host>`
//!          (the agent's ack waits for the stream) · command server: `qsc.cmd.<host>` requests
//!          for the hosts whose sessions it holds ──▶ agent ──ActionReport──▶ reply
//! worker:  JetStream consumer ─▶ store (new events only) ─▶ the pipeline above
//!          respond dispatcher ──NATS request `qsc.cmd.<host>`──▶ the gateway holding the host
//! all:     both in one process
//! ```

mod cli;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use cortex::api::{self, ApiState, ApiToken};
use cortex::audit::{AuditEntry, AuditKind, AuditLog, AuditSink};
use cortex::bus::commands::{CommandServer, NatsCommands};
use cortex::bus::detection::PipelineDetection;
use cortex::bus::nats::{BusError, EventBus};
use cortex::bus::{self, BusKind};
use cortex::config::CortexConfig;
use cortex::console::{self, ConsoleParts, ConsoleState};
use cortex::decide::NodeStates;
use cortex::ingest::agents::AgentsFile;
use cortex::ingest::keys::{KEYS_POLL, KeyLifecycle, RotationOrder};
use cortex::ingest::validate::Limits;
use cortex::ingest::{self, AgentDirectory, IngestSink};
use cortex::keys::KeyStore;
use cortex::metrics::Metrics;
use cortex::pipeline::anomaly::AnomalyStage;
use cortex::pipeline::{self, Pipeline, rules};
use cortex::respond::{
    AgentLinks, CommandRoute, KeyRotation, Playbooks, Responder, ResponderParts,
};
use cortex::score::{Fusion, ScoreConfig};
use cortex::store::{Store, open_store};
use cortex::webhook::{InboundVerifier, WebhookObserver, WebhookSender};
use qsc_channel::delivery::ServerConfig;
use qsc_channel::keys::StaticKeypair;
use qsc_event::{ActionReport, Source, now_ns};
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
    let role = config.cluster.role;
    // Keys and state.
    let token = ApiToken::load(&config.api.token_file)?;
    let store: Arc<dyn Store> = Arc::from(open_store(&config.store)?);
    let audit = Arc::new(AuditLog::open_configured(&config.audit, &config.store)?);
    let directory =
        AgentDirectory::load(config.agents.file.clone())?.with_lifecycle(KeyLifecycle::new(
            KeyStore::new(config.key_records_file()),
            audit.clone(),
            config.keys.max_key_age(),
        )?)?;
    let agents = AgentsFile::load(&config.agents.file)?;
    let bus = connect_bus(&config).await?;
    let metrics = Arc::new(Metrics::default());
    let nodes = Arc::new(Mutex::new(NodeStates::new(
        audit.clone(),
        store.node_states()?,
    )));

    // respond: commands go to this process's sessions, or over the bus to a gateway's.
    let links = AgentLinks::default();
    let route: Arc<dyn CommandRoute> = match &bus {
        Some(bus) => Arc::new(NatsCommands::new(bus.commands.clone(), &config.bus)),
        None => Arc::new(links.clone()),
    };
    let rotation = Arc::new(LifecycleRotation(directory.clone()));
    let (responder, dispatcher) = respond_stage(&config, &store, &nodes, route, rotation)?;
    let webhooks = webhook_stage(&config)?;
    if let Some(observer) = &webhooks.observer {
        responder.add_observer(observer.clone());
    }

    // detect → score → decide, on one worker thread behind a bounded queue (not on a gateway).
    let (sender, queue) = pipeline::queue(
        config.pipeline.queue_batches,
        Duration::from_millis(config.pipeline.max_block_ms),
        metrics.clone(),
    );
    let detection = if role.detects() {
        let parts = DetectionParts {
            store: &store,
            nodes: &nodes,
            metrics: &metrics,
            responder: &responder,
            agents: &agents,
        };
        Some(detection_stage(&config, parts, queue)?)
    } else {
        drop(queue);
        None
    };

    let api_listener = TcpListener::bind(config.api_addr()?)
        .await
        .with_context(|| format!("binding [api] address {}", config.api.address))?;
    let api_addr = api_listener.local_addr()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    // A worker (or "all" on the bus) consumes the bus into the pipeline.
    let mut bus_task = match (&bus, role.detects()) {
        (Some(bus), true) => {
            let worker = bus
                .events
                .worker(store.clone(), &config.store.postgres)
                .await?;
            let detection = Arc::new(PipelineDetection(sender.clone()));
            Some(tokio::spawn(worker.run(detection, shutdown_rx.clone())))
        }
        _ => None,
    };
    // ingest: the channel server, storing (or publishing) before acknowledging.
    let ingest = if role.ingests() {
        let parts = IngestParts {
            store: &store,
            directory: &directory,
            metrics: &metrics,
            links: &links,
            bus: bus.as_ref(),
        };
        Some(ingest_stage(&config, parts, sender, &shutdown_rx).await?)
    } else {
        drop(sender);
        None
    };
    let channel_addr = ingest
        .as_ref()
        .map_or_else(|| "-".to_owned(), |i| i.addr.to_string());
    audit.record(AuditEntry {
        kind: AuditKind::Service,
        actor: "cortex".into(),
        body: json!({"event": "start", "role": role.as_str(), "channel": channel_addr,
                     "api": api_addr, "version": env!("CARGO_PKG_VERSION")}),
    })?;

    let keys_task = tokio::spawn(directory.clone().watch_keys(KEYS_POLL, shutdown_rx.clone()));
    let watch_task = tokio::spawn(directory.clone().watch(
        Duration::from_secs(config.agents.reload_interval_s),
        audit.clone() as Arc<dyn AuditSink>,
        shutdown_rx.clone(),
    ));
    let dispatch_task = tokio::spawn(dispatcher.run(shutdown_rx.clone()));
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
        respond: responder,
        webhook_counters: webhooks
            .observer
            .as_ref()
            .map(|o| o.sender().counters().clone()),
        inbound: webhooks.inbound,
        keys: Some(directory),
    };
    let console_state = ConsoleState::new(
        &config.console,
        ConsoleParts {
            store: store.clone(),
            respond: api_state.respond.clone(),
            audit: audit.clone(),
            links,
            agents_file: config.agents.file.clone(),
        },
    );
    let mut api_router = api::router(api_state);
    let mut console_task = None;
    if config.console.enabled && config.console.address.is_empty() {
        api_router = api_router.merge(console::router(console_state));
    } else if config.console.enabled {
        let listener = TcpListener::bind(&config.console.address)
            .await
            .with_context(|| format!("binding [console] address {}", config.console.address))?;
        tracing::info!(console_addr = %listener.local_addr()?, "console listening");
        console_task = Some(tokio::spawn(serve_http(
            listener,
            console::router(console_state),
            shutdown_rx.clone(),
        )));
    }
    let api_task = tokio::spawn(serve_http(api_listener, api_router, shutdown_rx.clone()));
    tracing::info!(role = role.as_str(), %channel_addr, %api_addr, "cortex is running");
    println!("LISTENING channel={channel_addr} api={api_addr}");

    // A worker without its bus is no worker: the process stops (and its supervisor restarts it).
    let bus_failure = tokio::select! {
        signal = wait_for_signal() => {
            signal?;
            None
        }
        failure = bus_worker_ended(&mut bus_task) => Some(failure),
    };
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    if let Some(ingest) = ingest {
        ingest.stop().await?;
    }
    if let Some(task) = bus_task {
        task.await.context("bus worker task")??;
    }
    watch_task.await.context("agents watch task")?;
    keys_task.await.context("key lifecycle task")?;
    retention_task.await.context("retention task")?;
    dispatch_task.await.context("respond dispatcher task")?;
    api_task.await.context("api task")??;
    if let Some(task) = console_task {
        task.await.context("console task")??;
    }
    if let Some(detection) = detection {
        detection.join().await?;
    }
    audit.record(AuditEntry {
        kind: AuditKind::Service,
        actor: "cortex".into(),
        body: json!({"event": "stop"}),
    })?;
    if let Some(failure) = bus_failure {
        return Err(failure);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Waits for the bus worker task to end (never, without one) and says why it did.
async fn bus_worker_ended(
    task: &mut Option<tokio::task::JoinHandle<Result<(), BusError>>>,
) -> anyhow::Error {
    let Some(running) = task.as_mut() else {
        return std::future::pending().await;
    };
    let ended = running.await;
    *task = None;
    match ended {
        Ok(Ok(())) => anyhow::anyhow!("the bus worker stopped: the stream's consumer ended"),
        Ok(Err(error)) => anyhow::Error::new(error).context("the bus worker failed"),
        Err(error) => anyhow::Error::new(error).context("the bus worker task failed"),
    }
}

/// The bus connections of a replica: the event stream and core NATS for commands.
struct Bus {
    events: EventBus,
    commands: async_nats::Client,
}

/// Connects to the bus when `[bus] kind = "nats"`.
async fn connect_bus(config: &CortexConfig) -> anyhow::Result<Option<Bus>> {
    if config.bus.kind != BusKind::Nats {
        return Ok(None);
    }
    let events = EventBus::connect(&config.bus).await?;
    let commands = bus::commands::connect(&config.bus).await?;
    tracing::info!(url = %config.bus.url, stream = %config.bus.stream, "bus connected");
    Ok(Some(Bus { events, commands }))
}

/// What the detection stage shares with the rest of the process.
struct DetectionParts<'a> {
    store: &'a Arc<dyn Store>,
    nodes: &'a Arc<Mutex<NodeStates>>,
    metrics: &'a Arc<Metrics>,
    responder: &'a Arc<Responder>,
    agents: &'a AgentsFile,
}

/// The running pipeline worker and the anomaly thread it feeds.
struct DetectionStage {
    worker: std::thread::JoinHandle<()>,
    anomaly: std::thread::JoinHandle<()>,
}

fn detection_stage(
    config: &CortexConfig,
    parts: DetectionParts<'_>,
    queue: crossbeam_channel::Receiver<pipeline::Work>,
) -> anyhow::Result<DetectionStage> {
    let (engine, report) = rules::load_engine(&config.detect)?;
    tracing::info!(
        rules = engine.rule_count(),
        "{}",
        report.to_string().trim_end()
    );
    let fusion = Fusion::new(score_config(config, parts.agents)?)?;
    let (anomaly, anomaly_thread) = AnomalyStage::start(config.anomaly.clone())?;
    let pipeline = Pipeline::new(
        engine,
        fusion,
        parts.nodes.clone(),
        parts.store.clone(),
        parts.metrics.clone(),
    )?
    .with_anomaly(anomaly)
    .with_responder(parts.responder.clone());
    let worker = std::thread::Builder::new()
        .name("cortex-pipeline".into())
        .spawn(move || pipeline.run(queue))
        .context("starting the pipeline worker")?;
    Ok(DetectionStage {
        worker,
        anomaly: anomaly_thread,
    })
}

impl DetectionStage {
    /// Waits for the worker (it ends once every queue sender is gone) and then the anomaly
    /// thread (it ends once the worker, which owned its stage, is gone).
    async fn join(self) -> anyhow::Result<()> {
        let DetectionStage { worker, anomaly } = self;
        tokio::task::spawn_blocking(move || worker.join())
            .await
            .context("joining the pipeline worker")?
            .map_err(|_| anyhow::anyhow!("the pipeline worker panicked"))?;
        tokio::task::spawn_blocking(move || anomaly.join())
            .await
            .context("joining the anomaly baseline thread")?
            .map_err(|_| anyhow::anyhow!("the anomaly baseline thread panicked"))?;
        Ok(())
    }
}

/// What the ingest stage shares with the rest of the process.
struct IngestParts<'a> {
    store: &'a Arc<dyn Store>,
    directory: &'a AgentDirectory,
    metrics: &'a Arc<Metrics>,
    links: &'a AgentLinks,
    bus: Option<&'a Bus>,
}

/// The running channel server (and, on the bus, the command server for its sessions).
struct IngestStage {
    addr: std::net::SocketAddr,
    server: tokio::task::JoinHandle<()>,
    commands: Option<tokio::task::JoinHandle<()>>,
}

async fn ingest_stage(
    config: &CortexConfig,
    parts: IngestParts<'_>,
    sender: pipeline::PipelineSender,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<IngestStage> {
    let keypair = StaticKeypair::load(&config.keys.channel_key_file).with_context(|| {
        format!(
            "[keys] channel_key_file {}",
            config.keys.channel_key_file.display()
        )
    })?;
    let mut sink = IngestSink::new(
        parts.store.clone(),
        parts.directory.clone(),
        Limits::from(&config.ingest),
        parts.metrics.clone(),
        sender,
    )
    .with_links(parts.links.clone());
    let mut commands = None;
    if let Some(bus) = parts.bus {
        sink = sink.with_bus(bus.events.clone());
        let server = CommandServer::new(
            bus.commands.clone(),
            &config.bus,
            parts.links.clone(),
            Duration::from_millis(config.respond.dispatch_timeout_ms),
        );
        commands = Some(tokio::spawn(server.run(shutdown.clone())));
    }
    let server_config = ServerConfig {
        keypair,
        allow_list: parts.directory.allow_list(),
        require_hybrid: config.listen.require_hybrid,
        transport: config.listen.transport(),
        handshake_timeout: config.listen.handshake_timeout(),
    };
    let listener = TcpListener::bind(config.listen_addr()?)
        .await
        .with_context(|| format!("binding [listen] address {}", config.listen.address))?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(ingest::serve(
        listener,
        server_config,
        sink,
        shutdown.clone(),
    ));
    Ok(IngestStage {
        addr,
        server,
        commands,
    })
}

impl IngestStage {
    async fn stop(self) -> anyhow::Result<()> {
        self.server.await.context("ingest task")?;
        if let Some(task) = self.commands {
            task.await.context("command server task")?;
        }
        Ok(())
    }
}

/// The respond stage: playbooks loaded (a bad file stops start-up), persisted actions taken
/// over, and its dispatcher (run as a task) that sends actions through `links`.
fn respond_stage(
    config: &CortexConfig,
    store: &Arc<dyn Store>,
    nodes: &Arc<Mutex<NodeStates>>,
    links: Arc<dyn CommandRoute>,
    rotation: Arc<dyn KeyRotation>,
) -> anyhow::Result<(Arc<Responder>, cortex::respond::Dispatcher)> {
    let playbooks = Playbooks::load(
        config.respond.shipped_playbooks,
        &config.respond.playbook_dirs,
    )?;
    tracing::info!(
        playbooks = playbooks.playbooks.len(),
        mode = config.respond.mode.as_str(),
        "respond stage ready"
    );
    Ok(Responder::new(ResponderParts {
        config: config.respond.clone(),
        playbooks,
        store: store.clone(),
        nodes: nodes.clone(),
        links,
        cortex_addr: Some(config.listen_addr()?.ip()),
        key_rotation: Some(rotation),
    })?)
}

/// The SOAR webhook stage: the outbound sender (only with destinations) observing the respond
/// stage, and the inbound approval verifier (refusing everything without an inbound secret).
struct WebhookStage {
    observer: Option<Arc<WebhookObserver>>,
    inbound: Arc<InboundVerifier>,
}

fn webhook_stage(config: &CortexConfig) -> anyhow::Result<WebhookStage> {
    let valid = config.webhook.validate()?;
    let tolerance = Duration::from_secs(config.webhook.inbound_tolerance_s);
    let inbound = match valid.inbound_secret.clone() {
        Some(secret) => {
            InboundVerifier::with_replay_file(Some(secret), tolerance, &config.webhook.queue_path)
                .context("opening the inbound webhook replay journal")?
        }
        None => InboundVerifier::new(None, tolerance),
    };
    let observer = if valid.destinations.is_empty() {
        None
    } else {
        let sender = WebhookSender::start(&valid).context("starting the webhook sender")?;
        tracing::info!(
            destinations = valid.destinations.len(),
            "webhook sender ready"
        );
        Some(Arc::new(WebhookObserver::new(sender)))
    };
    Ok(WebhookStage {
        observer,
        inbound: Arc::new(inbound),
    })
}

/// Playbook `rotate_keys` actions go through the agents' key lifecycle (an emergency rotation
/// of the host's guardian-alpha key), which records the new key.
struct LifecycleRotation(AgentDirectory);

impl KeyRotation for LifecycleRotation {
    fn rotate<'a>(
        &'a self,
        host: &'a str,
        actor: &'a str,
        reason: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<ActionReport, String>> + Send + 'a>> {
        Box::pin(async move {
            self.0
                .rotate_and_wait(RotationOrder {
                    host_id: host,
                    source: Source::Alpha,
                    emergency: true,
                    actor,
                    reason,
                })
                .await
                .map_err(|error| error.to_string())
        })
    }
}

/// Serves HTTP on `listener` until shutdown.
async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await
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
