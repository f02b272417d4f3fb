//! `cortex actions list|approve|deny|restore-account`: response actions through the running
//! cortex's API.

use std::process::ExitCode;

use anyhow::{Context, bail};
use cortex::config::CortexConfig;
use cortex::respond::{ActionRecord, ActionStatus};
use serde_json::{Value, json};

use super::client::ApiClient;
use super::{AccountRestore, ActionsAction, Decision};

pub fn run(config: &CortexConfig, action: &ActionsAction) -> anyhow::Result<ExitCode> {
    let client = ApiClient::from_config(config)?;
    match action {
        ActionsAction::List {
            status,
            host,
            limit,
            json,
        } => list(&client, status.as_deref(), host.as_deref(), *limit, *json),
        ActionsAction::Approve(decision) => decide(&client, decision, true),
        ActionsAction::Deny(decision) => decide(&client, decision, false),
        ActionsAction::RestoreAccount(restore) => restore_account(&client, restore),
    }
}

/// Characters allowed unescaped in a query value.
fn query_safe(value: &str) -> anyhow::Result<&str> {
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        Ok(value)
    } else {
        bail!("`{value}` may only hold letters, digits and - _ . :")
    }
}

fn list(
    client: &ApiClient,
    status: Option<&str>,
    host: Option<&str>,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut path = format!("/api/actions?limit={limit}");
    if let Some(status) = status {
        if ActionStatus::parse(status).is_none() {
            bail!("unknown status `{status}` (see `cortex actions list --help`)");
        }
        path.push_str(&format!("&status={status}"));
    }
    if let Some(host) = host {
        path.push_str(&format!("&host={}", query_safe(host)?));
    }
    let body = expect_ok(client.get(&path)?)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let records: Vec<ActionRecord> =
        serde_json::from_value(body).context("the API's action list has an unexpected shape")?;
    println!(
        "{:<22} {:<16} {:<18} {:<17} {:<26} detail",
        "id", "host", "action", "status", "playbook"
    );
    for r in &records {
        println!(
            "{:<22} {:<16} {:<18} {:<17} {:<26} {}",
            r.id,
            r.host,
            r.name,
            r.status.as_str(),
            r.playbook,
            r.detail
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn decide(client: &ApiClient, decision: &Decision, approve: bool) -> anyhow::Result<ExitCode> {
    let verb = if approve { "approve" } else { "deny" };
    let path = format!("/api/actions/{}/{verb}", query_safe(&decision.id)?);
    let body = json!({"operator": decision.operator, "reason": decision.reason});
    let record: ActionRecord = serde_json::from_value(expect_ok(client.post(&path, &body)?)?)
        .context("the API's answer has an unexpected shape")?;
    print_record(&record);
    Ok(ExitCode::SUCCESS)
}

fn restore_account(client: &ApiClient, restore: &AccountRestore) -> anyhow::Result<ExitCode> {
    let path = format!(
        "/api/nodes/{}/accounts/{}/restore",
        query_safe(&restore.host)?,
        query_safe(&restore.user)?
    );
    let body = json!({"operator": restore.operator, "reason": restore.reason});
    let answer = expect_ok(client.post(&path, &body)?)?;
    let record: ActionRecord = serde_json::from_value(answer["action"].clone())
        .context("the API's answer has an unexpected shape")?;
    print_record(&record);
    Ok(ExitCode::SUCCESS)
}

fn print_record(record: &ActionRecord) {
    println!(
        "{} {} ({} on {}): {}",
        record.id,
        record.status.as_str(),
        record.name,
        record.host,
        record.detail
    );
}

/// The body of a 2xx answer, or the API's error message.
fn expect_ok((status, body): (u16, Value)) -> anyhow::Result<Value> {
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let message = body["error"].as_str().unwrap_or("no error message");
    bail!("the cortex API answered {status}: {message}")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Mutex};

    use cortex::api::{self, ApiState, ApiToken};
    use cortex::audit::AuditLog;
    use cortex::decide::NodeStates;
    use cortex::metrics::Metrics;
    use cortex::respond::{Playbooks, Responder, ResponderParts};
    use cortex::score::{EntityKey, Incident, IncidentStatus, Severity};
    use cortex::store::{SqliteStore, Store};

    use super::*;

    const TOKEN: &str = "cli-test-token-0123456789";

    fn incident() -> Incident {
        Incident {
            id: "inc-1".into(),
            host: "web-01".into(),
            entity: EntityKey::Host {
                host: "web-01".into(),
            },
            title: "test".into(),
            severity: Severity::Critical,
            confidence: 0.99,
            prior: 0.001,
            log_odds: 4.0,
            attack_techniques: Vec::new(),
            status: IncidentStatus::Open,
            opened_ns: 1,
            updated_ns: 1,
            evidence: Vec::new(),
        }
    }

    #[test]
    fn the_cli_lists_and_decides_through_a_running_api() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open_with_key(&dir.path().join("c.db"), &[1; 32]).unwrap());
        let seed = zeroize::Zeroizing::new([2u8; 32]);
        let audit = Arc::new(AuditLog::open_with_key(&dir.path().join("a.db"), &seed, 8).unwrap());
        let nodes = Arc::new(Mutex::new(NodeStates::new(audit, Vec::new())));
        let book = "name: hold\nmatch: {}\nactions: [{action: isolate}, {action: isolate}]";
        let (respond, _dispatcher) = Responder::new(ResponderParts {
            playbooks: Playbooks::parse_all(&[("t.yml".into(), book.into())]).unwrap(),
            ..ResponderParts::for_store(store.clone(), nodes.clone())
        })
        .unwrap();
        respond.on_incident(&incident(), None);
        let held = respond.held();
        let state = ApiState {
            store: store.clone(),
            metrics: Arc::new(Metrics::default()),
            nodes,
            token: Arc::new(ApiToken::from_secret(TOKEN)),
            respond,
            webhook_counters: None,
            inbound: Arc::new(cortex::webhook::InboundVerifier::new(
                None,
                std::time::Duration::from_secs(300),
            )),
            keys: None,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, api::router(state)).await });

        let token_file = dir.path().join("api.token");
        std::fs::write(&token_file, TOKEN).unwrap();
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut config = CortexConfig::default();
        config.api.address = addr.to_string();
        config.api.token_file = token_file;

        let list = ActionsAction::List {
            status: Some("held".into()),
            host: Some("web-01".into()),
            limit: 10,
            json: false,
        };
        assert_eq!(run(&config, &list).unwrap(), ExitCode::SUCCESS);
        let bogus = ActionsAction::List {
            status: Some("bogus".into()),
            host: None,
            limit: 10,
            json: true,
        };
        assert!(run(&config, &bogus).is_err());
        let decision = |id: &str| Decision {
            id: id.to_owned(),
            operator: "alice".into(),
            reason: "checked".into(),
        };
        let approve = ActionsAction::Approve(decision(&held[0].id));
        assert_eq!(run(&config, &approve).unwrap(), ExitCode::SUCCESS);
        let again = run(&config, &approve).unwrap_err().to_string();
        assert!(again.contains("404"), "{again}");
        assert_eq!(
            run(&config, &ActionsAction::Deny(decision(&held[1].id))).unwrap(),
            ExitCode::SUCCESS
        );
        let statuses: Vec<ActionStatus> = held
            .iter()
            .map(|h| store.action(&h.id).unwrap().unwrap().status)
            .collect();
        assert_eq!(
            statuses,
            vec![ActionStatus::Dispatched, ActionStatus::Denied]
        );
        let bad_id = ActionsAction::Deny(decision("act-1/../x"));
        assert!(run(&config, &bad_id).is_err());

        let restore = |user: &str| {
            ActionsAction::RestoreAccount(AccountRestore {
                host: "web-01".into(),
                user: user.into(),
                operator: "alice".into(),
                reason: "password reset".into(),
            })
        };
        assert_eq!(run(&config, &restore("deploy")).unwrap(), ExitCode::SUCCESS);
        let restored = store
            .actions(&cortex::store::ActionQuery {
                host: Some("web-01".into()),
                ..Default::default()
            })
            .unwrap()
            .into_iter()
            .find(|r| r.name == "restore_credential")
            .expect("a restore_credential action");
        assert_eq!(
            (restored.status, restored.action, restored.playbook.as_str()),
            (
                ActionStatus::Dispatched,
                Some(qsc_event::Action::RestoreCredential {
                    user: "deploy".into()
                }),
                "operator"
            )
        );
        let refused = run(&config, &restore("-rf")).unwrap_err().to_string();
        assert!(refused.contains("400"), "{refused}");
    }
}
