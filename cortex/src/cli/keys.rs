//! `cortex keys list|revoke|rotate`: the agent key records ([keys] lifecycle_file).
//!
//! The CLI and a running cortex share the records file (changes under its lock). A revocation
//! goes through the running cortex's API (`POST /api/keys/{host}/revoke`), which revokes,
//! audits and closes the key's live session at once; when no cortex answers, it is applied and
//! audited here, and a cortex started later (or one whose API is unreachable) picks it up from
//! the file within a fraction of a second. A rotation needs the agent's live
//! session, so the CLI files a request the running cortex sends as soon as the agent is
//! connected.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use cortex::audit::AuditLog;
use cortex::config::CortexConfig;
use cortex::ingest::agents::AgentsFile;
use cortex::keys::{
    Cause, KeyRecords, KeyState, KeyStore, RotationRequest, audit_events, source_name,
};
use qsc_channel::keys::PublicKeyBytes;
use qsc_event::{Source, now_ns};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::AgentSource;
use super::client::ApiClient;

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Every agent key: host, agent, fingerprint (key id), lifecycle state and since when;
    /// then the rotations waiting for their agent.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a host's agent keys now: through the running cortex's API, which closes their
    /// sessions at once and refuses their handshakes; in the key records file when no cortex
    /// answers.
    Revoke {
        host: String,
        /// Only this agent's key (default: every agent of the host).
        #[arg(long, value_enum)]
        agent: Option<AgentSource>,
        /// Who asks, for the audit chain (default: $USER).
        #[arg(long)]
        operator: Option<String>,
    },
    /// Ask the agent to generate a new static key over its live session. The old key turns
    /// ROTATING and is RETIRED once the agent reconnected with the new one; with --emergency it
    /// is REVOKED as soon as the agent reports its new key.
    Rotate {
        host: String,
        /// Only this agent (default: every agent of the host with an active key).
        #[arg(long, value_enum)]
        agent: Option<AgentSource>,
        #[arg(long)]
        emergency: bool,
        /// Who asks, for the audit chain (default: $USER).
        #[arg(long)]
        operator: Option<String>,
    },
}

/// Runs one `cortex keys` subcommand.
pub fn run(config: &CortexConfig, action: &KeysAction) -> anyhow::Result<ExitCode> {
    let store = KeyStore::new(config.key_records_file());
    let agents = AgentsFile::load(&config.agents.file)?;
    match action {
        KeysAction::List { json } => list(&store, &agents, *json),
        KeysAction::Revoke {
            host,
            agent,
            operator,
        } => revoke(config, &store, &agents, host, *agent, operator.as_deref()),
        KeysAction::Rotate {
            host,
            agent,
            emergency,
            operator,
        } => rotate(
            &store,
            &agents,
            host,
            *agent,
            *emergency,
            operator.as_deref(),
        ),
    }
}

/// Who asks: `--operator`, else $USER.
fn operator_name(operator: Option<&str>) -> String {
    operator
        .map(str::to_owned)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// `operator:<name>`: the given operator, else the login user.
pub(super) fn actor(operator: Option<&str>) -> String {
    format!("operator:{}", operator_name(operator))
}

fn rfc3339(ns: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ns.to_string())
}

fn list(store: &KeyStore, agents: &AgentsFile, json: bool) -> anyhow::Result<ExitCode> {
    // Show the records as the cortex will see them, without writing anything.
    let mut records = store.load()?;
    records.sync(agents, &Cause::new("cli", "list", now_ns()));
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<6} {:<16} {:<12} since",
        "host", "agent", "fingerprint", "state"
    );
    for record in &records.records {
        let fingerprint = PublicKeyBytes::from_hex(&record.public_key)
            .map(|k| k.key_id())
            .unwrap_or_default();
        println!(
            "{:<24} {:<6} {:<16} {:<12} {}",
            record.host_id,
            source_name(record.source),
            fingerprint,
            record.state.as_str().to_ascii_uppercase(),
            rfc3339(record.since_ns)
        );
    }
    for request in &records.requests {
        println!(
            "pending rotation: {} {}{} requested by {} at {}",
            request.host_id,
            source_name(request.source),
            if request.emergency {
                " (emergency)"
            } else {
                ""
            },
            request.actor,
            rfc3339(request.requested_ns)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn revoke(
    config: &CortexConfig,
    store: &KeyStore,
    agents: &AgentsFile,
    host: &str,
    agent: Option<AgentSource>,
    operator: Option<&str>,
) -> anyhow::Result<ExitCode> {
    if let Some(revoked) = revoke_through_api(config, host, agent, operator)? {
        for event in revoked {
            print_revoked(&event);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let audit = AuditLog::open_configured(&config.audit, &config.store)
        .context("opening the audit chain")?;
    let cause = Cause::new(
        actor(operator),
        "revoked with `cortex keys revoke`",
        now_ns(),
    );
    let (events, _) = store.update(|records| {
        let mut events = records.sync(agents, &cause);
        events.extend(records.revoke_host(host, agent.map(Source::from), &cause)?);
        Ok(events)
    })?;
    audit_events(&audit, &events).context("auditing the revocation")?;
    for event in events.iter().filter(|e| e.to == KeyState::Revoked) {
        print_revoked(&KeyEventSummary {
            host_id: event.host_id.clone(),
            source: event.source,
            key_id: event.key_id.clone(),
        });
    }
    Ok(ExitCode::SUCCESS)
}

/// What the CLI prints of one revoked key.
#[derive(Debug, serde::Deserialize)]
struct KeyEventSummary {
    host_id: String,
    source: Source,
    key_id: String,
}

fn print_revoked(event: &KeyEventSummary) {
    println!(
        "revoked {} {} key {}",
        event.host_id,
        source_name(event.source),
        event.key_id
    );
}

/// Revokes through the running cortex; `Ok(None)` when no cortex answers (not running, no
/// token file), an error when it answered with a refusal.
fn revoke_through_api(
    config: &CortexConfig,
    host: &str,
    agent: Option<AgentSource>,
    operator: Option<&str>,
) -> anyhow::Result<Option<Vec<KeyEventSummary>>> {
    let Ok(client) = ApiClient::from_config(config) else {
        return Ok(None);
    };
    let body = serde_json::json!({
        "operator": operator_name(operator),
        "agent": agent.map(Source::from),
    });
    let Ok((status, answer)) = client.post(&format!("/api/keys/{host}/revoke"), &body) else {
        return Ok(None);
    };
    if status != 200 {
        bail!("the cortex refused the revocation ({status}): {answer}");
    }
    let revoked = serde_json::from_value(answer["revoked"].clone())
        .context("the cortex's answer to the revocation")?;
    Ok(Some(revoked))
}

fn rotate(
    store: &KeyStore,
    agents: &AgentsFile,
    host: &str,
    agent: Option<AgentSource>,
    emergency: bool,
    operator: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let actor = actor(operator);
    let now = now_ns();
    let (requested, _) = store.update(|records: &mut KeyRecords| {
        records.sync(agents, &Cause::new(actor.clone(), "rotate", now));
        let sources: Vec<Source> = [Source::Alpha, Source::Beta]
            .into_iter()
            .filter(|s| agent.is_none_or(|a| Source::from(a) == *s))
            .filter(|s| records.active(host, *s).is_some())
            .collect();
        for source in &sources {
            records
                .requests
                .retain(|r| !(r.host_id == host && r.source == *source));
            records.requests.push(RotationRequest {
                host_id: host.to_owned(),
                source: *source,
                emergency,
                actor: actor.clone(),
                requested_ns: now,
            });
        }
        Ok(sources)
    })?;
    if requested.is_empty() {
        bail!("host `{host}` has no active agent key to rotate");
    }
    for source in requested {
        println!(
            "rotation of {host} {} requested{}; the running cortex sends it over the agent's \
             live session (see `cortex keys list`)",
            source_name(source),
            if emergency { " (emergency)" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}
