//! The operator tools: everything but `serve`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use cortex::api::ApiToken;
use cortex::audit::log::verify_backend;
use cortex::audit::postgres::PostgresChain;
use cortex::audit::{self, verify_file};
use cortex::config::CortexConfig;
use cortex::ingest::agents::{AgentsFile, Enrollment};
use cortex::pipeline::rules;
use cortex::respond::Playbooks;
use cortex::store::key_file::{create_key_file, read_key_file};
use cortex::store::{EventQuery, IncidentQuery, StoreBackend, open_store};
use qsc_channel::keys::StaticKeypair;

use super::{
    AgentsAction, AuditAction, BaselineAction, Cli, Command, ConfigAction, EventSearch,
    EventsAction, IncidentsAction,
};
use super::{actions, baseline};

/// Runs a tool subcommand (`serve` is handled by `main`).
pub fn run_tool(cli: &Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Serve => bail!("serve is not a tool command"),
        Command::Keygen { out: Some(out) } => keygen_channel(out),
        Command::Keygen { out: None } => keygen_all(&load_config(&cli.config)?),
        Command::Agents { action } => agents(&load_config(&cli.config)?, action),
        Command::Audit {
            action: AuditAction::Verify { file, public_key },
        } => audit_verify(
            &load_config(&cli.config)?,
            file.as_deref(),
            public_key.as_deref(),
        ),
        Command::Incidents {
            action: IncidentsAction::List { host, limit, json },
        } => incidents_list(&load_config(&cli.config)?, host.clone(), *limit, *json),
        Command::Events {
            action: EventsAction::Search(search),
        } => events_search(&load_config(&cli.config)?, search),
        Command::Config {
            action: ConfigAction::Check,
        } => config_check(&cli.config),
        Command::Baseline {
            action: BaselineAction::Train { host, since, until },
        } => baseline::train(&load_config(&cli.config)?, host, *since, *until),
        Command::Baseline {
            action: BaselineAction::Show { host, json },
        } => baseline::show(&load_config(&cli.config)?, host, *json),
        Command::Actions { action } => actions::run(&load_config(&cli.config)?, action),
        Command::Keys { action } => super::keys::run(&load_config(&cli.config)?, action),
        Command::Users { action } => super::users::run(&load_config(&cli.config)?, action),
    }
}

fn load_config(path: &Path) -> anyhow::Result<CortexConfig> {
    Ok(CortexConfig::load(path)?)
}

fn keygen_channel(out: &Path) -> anyhow::Result<ExitCode> {
    let public = StaticKeypair::generate_file(out)
        .with_context(|| format!("creating channel key {}", out.display()))?;
    println!("channel key written to {} (mode 0600)", out.display());
    println!("public key: {}", public.to_hex());
    Ok(ExitCode::SUCCESS)
}

/// Creates every missing key file the config names; existing ones are kept and reported.
fn keygen_all(config: &CortexConfig) -> anyhow::Result<ExitCode> {
    let channel = &config.keys.channel_key_file;
    if channel.exists() {
        println!("kept     {}", channel.display());
    } else {
        StaticKeypair::generate_file(channel)
            .with_context(|| format!("creating channel key {}", channel.display()))?;
        println!("created  {} (channel static key)", channel.display());
    }
    for (path, what) in [
        (&config.store.master_key_file, "store master key"),
        (&config.audit.signing_key_file, "audit signing key"),
    ] {
        if path.exists() {
            println!("kept     {}", path.display());
        } else {
            create_key_file(path).with_context(|| format!("creating {what} {}", path.display()))?;
            println!("created  {} ({what})", path.display());
        }
    }
    let token = &config.api.token_file;
    if token.exists() {
        println!("kept     {}", token.display());
    } else {
        ApiToken::generate_file(token)?;
        println!("created  {} (API bearer token)", token.display());
    }
    let keypair = StaticKeypair::load(channel)
        .with_context(|| format!("loading channel key {}", channel.display()))?;
    let audit_key = audit::verifying_key_from_file(&config.audit.signing_key_file)?;
    println!("channel public key: {}", keypair.public().to_hex());
    println!(
        "audit public key:   {} (keep a copy off this host)",
        hex::encode(audit_key.to_bytes())
    );
    Ok(ExitCode::SUCCESS)
}

fn agents(config: &CortexConfig, action: &AgentsAction) -> anyhow::Result<ExitCode> {
    let path = &config.agents.file;
    let mut file = AgentsFile::load(path)?;
    match action {
        AgentsAction::List => {
            println!(
                "{:<24} {:<6} {:<10} {:<8} public key",
                "host", "source", "class", "status"
            );
            for agent in &file.agents {
                let status = if agent.revoked { "revoked" } else { "active" };
                let source = match agent.source {
                    qsc_event::Source::Alpha => "alpha",
                    qsc_event::Source::Beta => "beta",
                    qsc_event::Source::Cortex => "cortex",
                };
                println!(
                    "{:<24} {:<6} {:<10} {:<8} {}",
                    agent.host_id, source, agent.class, status, agent.public_key
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        AgentsAction::Add {
            host_id,
            source,
            class,
            public_key,
        } => {
            if !config.score.host_classes.contains_key(class) {
                bail!(
                    "class `{class}` is not a [score.host_classes] entry (known: {})",
                    config
                        .score
                        .host_classes
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            file.add(Enrollment {
                host_id: host_id.clone(),
                source: (*source).into(),
                class: class.clone(),
                public_key: public_key.trim().to_ascii_lowercase(),
                revoked: false,
            })?;
            println!("enrolled {host_id}");
        }
        AgentsAction::Revoke { host_id, source } => {
            file.revoke(host_id, source.map(Into::into))?;
            println!("revoked {host_id}");
        }
    }
    file.save(path)?;
    Ok(ExitCode::SUCCESS)
}

fn audit_verify(
    config: &CortexConfig,
    file: Option<&Path>,
    public_key: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let key = match public_key {
        Some(hex_key) => audit::verifying_key_from_hex(hex_key)?,
        None => audit::verifying_key_from_file(&config.audit.signing_key_file)?,
    };
    let interval = config.audit.checkpoint_interval;
    let report = match (file, config.store.backend) {
        // The replicas of a PostgreSQL-backed cortex keep the chain in the store's schema.
        (None, StoreBackend::Postgres) => {
            let chain = PostgresChain::open(&config.store.postgres)
                .context("opening the audit chain in PostgreSQL")?;
            verify_backend(&chain, &key, interval).with_context(|| {
                format!(
                    "verifying the audit chain in PostgreSQL schema {}",
                    config.store.postgres.schema
                )
            })?
        }
        _ => {
            let path = file.unwrap_or(&config.audit.path);
            verify_file(path, &key, interval)
                .with_context(|| format!("verifying {}", path.display()))?
        }
    };
    println!("{report}");
    Ok(if report.is_intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn incidents_list(
    config: &CortexConfig,
    host: Option<String>,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = open_store(&config.store)?;
    let incidents = store.incidents(&IncidentQuery {
        host,
        limit,
        ..IncidentQuery::default()
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&incidents)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<36} {:<16} {:<8} {:>10}  title",
        "id", "host", "severity", "confidence"
    );
    for incident in &incidents {
        println!(
            "{:<36} {:<16} {:<8} {:>10.4}  {}",
            incident.id,
            incident.host,
            incident.severity.as_str(),
            incident.confidence,
            incident.title
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn events_search(config: &CortexConfig, search: &EventSearch) -> anyhow::Result<ExitCode> {
    let store = open_store(&config.store)?;
    let events = store.query_events(&EventQuery {
        host: search.host.clone(),
        since_ns: search.since,
        until_ns: search.until,
        kinds: search.kind.clone(),
        limit: search.limit,
    })?;
    for event in &events {
        println!("{}", event.to_json());
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads everything `serve` loads, stopping at the first problem with a message naming it.
fn config_check(path: &Path) -> anyhow::Result<ExitCode> {
    let config = load_config(path)?;
    println!("config      {} is valid", path.display());
    StaticKeypair::load(&config.keys.channel_key_file).with_context(|| {
        format!(
            "[keys] channel_key_file {}",
            config.keys.channel_key_file.display()
        )
    })?;
    read_key_file(&config.store.master_key_file).with_context(|| {
        format!(
            "[store] master_key_file {}",
            config.store.master_key_file.display()
        )
    })?;
    audit::verifying_key_from_file(&config.audit.signing_key_file).with_context(|| {
        format!(
            "[audit] signing_key_file {}",
            config.audit.signing_key_file.display()
        )
    })?;
    ApiToken::load(&config.api.token_file)?;
    println!("keys        channel, store master, audit signing and API token files are usable");
    let agents = AgentsFile::load(&config.agents.file)?;
    for agent in &agents.agents {
        if !config.score.host_classes.contains_key(&agent.class) {
            bail!(
                "agent {} has class `{}`, which is not a [score.host_classes] entry",
                agent.host_id,
                agent.class
            );
        }
    }
    let active = agents.agents.iter().filter(|a| !a.revoked).count();
    println!(
        "agents      {} enrolled ({active} active) in {}",
        agents.agents.len(),
        config.agents.file.display()
    );
    let (engine, report) = rules::load_engine(&config.detect)?;
    print!("rules       {report}");
    println!("            {} rules in the engine", engine.rule_count());
    if !report.skipped.is_empty() {
        println!("warning: some rule documents were skipped (listed above)");
    }
    let playbooks = Playbooks::load(
        config.respond.shipped_playbooks,
        &config.respond.playbook_dirs,
    )?;
    println!(
        "playbooks   {} loaded, mode {}",
        playbooks.playbooks.len(),
        config.respond.mode.as_str()
    );
    Ok(ExitCode::SUCCESS)
}
