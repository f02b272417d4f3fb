//! `cortex users add|list|remove`: console accounts in `[console] users_file` (argon2id hashes,
//! mode 0600). A running cortex re-reads the file at each request; every change is audited.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use cortex::audit::{AuditEntry, AuditKind, AuditLog, AuditSink};
use cortex::config::CortexConfig;
use cortex::console::{Role, UsersFile};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum UsersAction {
    /// Add a console user. The password (at least 12 characters) is read from the first line
    /// of standard input and stored only as an argon2id hash.
    #[command(
        after_help = "Example:\n  printf '%s\\n' \"$PASSWORD\" | cortex --config /etc/qsc/cortex.toml users add alice --role operator"
    )]
    Add {
        /// 1..=64 ASCII letters, digits, '-', '_' or '.'.
        name: String,
        /// viewer: reads everything; operator: also approves, denies and releases; admin: as
        /// operator.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// List users and their roles.
    List,
    /// Remove a user; their open console sessions end at their next request.
    Remove { name: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Viewer,
    Operator,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Operator => Role::Operator,
            RoleArg::Admin => Role::Admin,
        }
    }
}

/// Runs a `users` subcommand.
pub fn run(config: &CortexConfig, action: &UsersAction) -> anyhow::Result<ExitCode> {
    let path = &config.console.users_file;
    let mut users = UsersFile::load(path)?;
    match action {
        UsersAction::List => {
            for user in &users.users {
                println!("{:<24} {}", user.name, user.role.as_str());
            }
            return Ok(ExitCode::SUCCESS);
        }
        UsersAction::Add { name, role } => {
            let password = read_password()?;
            users.add(name, (*role).into(), &password)?;
            users.save(path)?;
            audit(
                config,
                json!({"event": "console_user_added", "user": name,
                                 "role": Role::from(*role).as_str()}),
            )?;
            println!("added {name} ({})", Role::from(*role).as_str());
        }
        UsersAction::Remove { name } => {
            users.remove(name)?;
            users.save(path)?;
            audit(
                config,
                json!({"event": "console_user_removed", "user": name}),
            )?;
            println!("removed {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!(
            "no password on standard input (pipe it in: printf '%s\\n' \"$PASSWORD\" | cortex users add ...)"
        );
    }
    Ok(password)
}

fn audit(config: &CortexConfig, body: serde_json::Value) -> anyhow::Result<()> {
    let log = AuditLog::open_configured(&config.audit, &config.store)?;
    log.record(AuditEntry {
        kind: AuditKind::Service,
        actor: super::keys::actor(None),
        body,
    })?;
    Ok(())
}
