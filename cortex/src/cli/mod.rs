//! The `cortex` command line: the service (`serve`) and the operator tools around it.

mod actions;
mod baseline;
mod client;
mod commands;
mod keys;
mod users;
mod when;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use qsc_event::Source;

pub use when::When;

pub use commands::run_tool;

#[derive(Debug, Parser)]
#[command(
    name = "cortex",
    version,
    about = "QSC cortex: ingests agent events over the encrypted channel, stores them encrypted, \
             detects with Sigma rules, scores incidents and decides node states",
    long_about = "QSC cortex: the correlation and response service of Quantic Security Cortex.\n\n\
        Agents (guardian-alpha, guardian-beta) connect over qsc-channel (Noise IK + ML-KEM); \
        each event is validated against the host and agent kind its key is enrolled for, stored \
        encrypted, run through the Sigma rules, fused into per-entity incidents and turned into \
        node states (NOMINAL, WARNING, CRITICAL, ISOLATED), every transition written to the \
        audit chain.\n\n\
        First start:\n  \
        cortex --config /etc/qsc/cortex.toml keygen          # channel key, store key, audit key, API token\n  \
        cortex --config /etc/qsc/cortex.toml agents add --host-id web-01 --source alpha --public-key HEX\n  \
        cortex --config /etc/qsc/cortex.toml config check\n  \
        cortex --config /etc/qsc/cortex.toml serve"
)]
pub struct Cli {
    /// The cortex configuration file (see config/cortex.example.toml for every key).
    #[arg(
        long,
        global = true,
        env = "QSC_CORTEX_CONFIG",
        default_value = "/etc/qsc/cortex.toml"
    )]
    pub config: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service until SIGINT or SIGTERM. Prints `LISTENING channel=ADDR api=ADDR` on
    /// stdout once both listeners are bound. Log level from RUST_LOG (default info).
    Serve,
    /// Create key files (mode 0600, never overwritten) and print the public keys.
    ///
    /// With --out: only a channel static key at that path. Otherwise every missing key named by
    /// the config: [keys] channel_key_file, [store] master_key_file, [audit] signing_key_file
    /// and [api] token_file.
    Keygen {
        /// Write only a channel static key here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Enroll, list and revoke agents in the [agents] file. A running cortex picks changes up
    /// within [agents] reload_interval_s; revoked keys are refused at the next handshake.
    Agents {
        #[command(subcommand)]
        action: AgentsAction,
    },
    /// Check the audit chain.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Read incidents from the store.
    Incidents {
        #[command(subcommand)]
        action: IncidentsAction,
    },
    /// Read events from the store (decrypted).
    Events {
        #[command(subcommand)]
        action: EventsAction,
    },
    /// Validate the configuration, keys, agents file and rules without starting anything.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// List response actions and approve or deny held ones, through the running cortex's API
    /// ([api] address, with the token in [api] token_file).
    ///
    /// In assisted mode ([respond] mode, or a playbook's own `mode`) every action a playbook
    /// asks for is held until an operator approves it or it expires ([respond] hold_expiry_s).
    #[command(after_help = "Examples:\n  \
        cortex --config /etc/qsc/cortex.toml actions list --status held\n  \
        cortex --config /etc/qsc/cortex.toml actions approve act-1733040000000001 --operator alice\n  \
        cortex --config /etc/qsc/cortex.toml actions deny act-1733040000000001 --operator alice --reason 'false positive'\n  \
        cortex --config /etc/qsc/cortex.toml actions restore-account web-01 deploy --operator alice --reason 'key rotated'")]
    Actions {
        #[command(subcommand)]
        action: ActionsAction,
    },
    /// Train and inspect the per-host anomaly baselines ([anomaly] models_dir).
    ///
    /// `cortex serve` learns each host's baseline by itself (first model after [anomaly]
    /// learning_period_s, retrained every retrain_every_s). Use `train` to build or rebuild a
    /// model from the host_metrics samples already in the store, e.g. after a deployment changed
    /// what normal looks like.
    Baseline {
        #[command(subcommand)]
        action: BaselineAction,
    },
    /// Agent key lifecycle: list keys with their state, revoke, rotate ([keys] lifecycle_file).
    Keys {
        #[command(subcommand)]
        action: keys::KeysAction,
    },
    /// Web console accounts ([console] users_file): add, list, remove, with a role.
    Users {
        #[command(subcommand)]
        action: users::UsersAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum BaselineAction {
    /// Train a host's model from its stored host_metrics samples and save it as the next version.
    ///
    /// Windows overlapping any of the host's stored incidents are left out, so an attack is never
    /// learnt as normal; at least 256 windows must remain. A running cortex loads a host's model
    /// when it first sees the host: restart it to score with a model trained here.
    ///
    /// Times are a duration before now (`90m`, `12h`, `7d`, `2w`, `1d12h`), an RFC 3339
    /// timestamp (`2026-11-16T00:00:00Z`), or ns since the Unix epoch.
    #[command(
        after_help = "Example:\n  cortex --config /etc/qsc/cortex.toml baseline train --host web-01 --since 7d"
    )]
    Train {
        /// The host id whose samples to train on.
        #[arg(long)]
        host: String,
        /// Start of the training span (inclusive).
        #[arg(long, value_name = "DURATION_OR_TIMESTAMP")]
        since: When,
        /// End of the training span (exclusive); default now.
        #[arg(long, value_name = "DURATION_OR_TIMESTAMP")]
        until: Option<When>,
    },
    /// Print a host's current model: version, training span, windows, features.
    Show {
        #[arg(long)]
        host: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ActionsAction {
    /// Response actions, most recently updated first.
    List {
        /// Only this status: held, denied, expired, would_run, blocked, missing_parameter,
        /// notified, dispatched, done, refused, failed.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        host: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Approve a held action: it is sent to the agent at once (subject to the rate limit).
    Approve(Decision),
    /// Deny a held action: it is never sent.
    Deny(Decision),
    /// Restore an account that a revoke_credential action locked on a host: its agent is sent
    /// restore_credential at once (unlocks the shadow entry and lifts the kernel's deny of its
    /// uid). A revocation has no TTL; this is how it ends.
    RestoreAccount(AccountRestore),
}

#[derive(Debug, Args)]
pub struct AccountRestore {
    /// The host id the account was revoked on.
    pub host: String,
    /// The local account name.
    pub user: String,
    /// Who restores it; recorded in the audit chain.
    #[arg(long, env = "QSC_OPERATOR")]
    pub operator: String,
    /// Why (recorded in the audit chain).
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct Decision {
    /// The action id (`cortex actions list --status held`).
    pub id: String,
    /// Who decides; recorded in the audit chain.
    #[arg(long, env = "QSC_OPERATOR")]
    pub operator: String,
    /// Why (recorded in the audit chain).
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Debug, Subcommand)]
pub enum AgentsAction {
    /// Enroll an agent's static public key for one host.
    Add {
        #[arg(long)]
        host_id: String,
        /// Which agent holds the key; its events must carry this source.
        #[arg(long, value_enum)]
        source: AgentSource,
        /// Host class (a [score.host_classes] name), which sets the host's prior.
        #[arg(long, default_value = "standard")]
        class: String,
        /// The agent's public key, 64 hex digits (printed by the agent's keygen).
        #[arg(long)]
        public_key: String,
    },
    /// List enrolled agents.
    List,
    /// Revoke a host's agent keys (kept in the file, refused at the handshake).
    Revoke {
        #[arg(long)]
        host_id: String,
        /// Only the key of this agent (default: both of the host's agents).
        #[arg(long, value_enum)]
        source: Option<AgentSource>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AgentSource {
    Alpha,
    Beta,
}

impl From<AgentSource> for Source {
    fn from(source: AgentSource) -> Self {
        match source {
            AgentSource::Alpha => Source::Alpha,
            AgentSource::Beta => Source::Beta,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Verify the hash chain and signed checkpoints; reports the first bad record (edited,
    /// deleted, inserted or reordered). Exit status 1 when the chain is broken.
    Verify {
        /// An audit database file (default: the chain in PostgreSQL when [store] backend is
        /// "postgres", else [audit] path).
        #[arg(long)]
        file: Option<PathBuf>,
        /// The audit public key, 64 hex digits (default: derived from [audit] signing_key_file).
        #[arg(long)]
        public_key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum IncidentsAction {
    /// Incidents, most recently updated first.
    List {
        #[arg(long)]
        host: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsAction {
    /// Events by host, kind and time, oldest first, one JSON object per line.
    Search(EventSearch),
}

#[derive(Debug, Args)]
pub struct EventSearch {
    #[arg(long)]
    pub host: Option<String>,
    /// Event kind (process_exec, auth_failure, …); repeat for several.
    #[arg(long)]
    pub kind: Vec<String>,
    /// Inclusive lower bound on time, ns since the Unix epoch.
    #[arg(long)]
    pub since: Option<u64>,
    /// Exclusive upper bound on time, ns since the Unix epoch.
    #[arg(long)]
    pub until: Option<u64>,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Parse and validate everything `serve` would load; exit status 1 on the first problem.
    Check,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "cortex",
            "--config",
            "/tmp/c.toml",
            "agents",
            "add",
            "--host-id",
            "web-01",
            "--source",
            "beta",
            "--public-key",
            "ab",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Agents {
                action: AgentsAction::Add {
                    source: AgentSource::Beta,
                    ..
                }
            }
        ));
        let cli = Cli::try_parse_from([
            "cortex", "baseline", "train", "--host", "web-01", "--since", "7d",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Baseline {
                action: BaselineAction::Train {
                    since: When::Ago(_),
                    until: None,
                    ..
                }
            }
        ));
        let bad = Cli::try_parse_from([
            "cortex",
            "baseline",
            "train",
            "--host",
            "h",
            "--since",
            "yesterday",
        ]);
        let error = bad.unwrap_err().to_string();
        assert!(error.contains("yesterday"), "{error}");
        let cli = Cli::try_parse_from([
            "cortex",
            "actions",
            "approve",
            "act-7",
            "--operator",
            "alice",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Actions {
                action: ActionsAction::Approve(Decision { ref id, ref operator, .. })
            } if id == "act-7" && operator == "alice"
        ));
    }
}
