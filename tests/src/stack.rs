//! The real stack on one machine: `cortex serve` in the caller's network namespace and
//! `guardian-alpha run` inside a [`Netns`] "host" whose uplink reaches the cortex over the veth
//! pair, with keys, configs, rules and playbooks written by the caller (a test or a bench) into
//! a folder of its own. Both programs are stopped when the [`Stack`] is dropped.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::netns::Netns;

/// How long the cortex and the agent may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The programs' log files (`<name>.log` in the logs folder), in start order.
const LOG_NAMES: [&str; 2] = ["cortex", "guardian-alpha"];
/// How much of each log a failing test prints.
const LOG_TAIL_LINES: usize = 40;
/// How long one API request may take.
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// What the caller chooses about the stack.
#[derive(Clone, Debug, Default)]
pub struct StackSpec {
    /// The agent's host id (enrolled at the cortex).
    pub host_id: String,
    /// The cortex's channel port, on the namespace pair's outside address.
    pub channel_port: u16,
    /// The cortex's API address (`ip:port`, in the caller's namespace).
    pub api_addr: String,
    /// Sigma rules (YAML, documents separated by `---`): the only rules loaded.
    pub rules: String,
    /// Playbooks (YAML): the only playbooks loaded.
    pub playbooks: String,
    /// Extra lines of the cortex's `[respond]` table (`mode = …`, …).
    pub respond: String,
    /// Extra tables of the cortex config (`[score]`, …).
    pub cortex_extra: String,
    /// Extra tables of the agent config (`[sensor]`, …).
    pub alpha_extra: String,
}

/// Where the stack's configs, keys, rules, playbooks, stores and logs are.
#[derive(Debug)]
pub struct Layout {
    pub dir: PathBuf,
    pub cortex_config: PathBuf,
    pub alpha_config: PathBuf,
    pub spec: StackSpec,
    /// The cortex's API token.
    api_token: String,
}

impl Layout {
    /// Writes everything into `dir` (which must not hold an earlier stack) and enrolls the
    /// agent; `bin` holds the `cortex` and `guardian-alpha` binaries, `netns` is the host.
    pub fn write(dir: &Path, bin: &Path, spec: StackSpec, netns: &Netns) -> anyhow::Result<Self> {
        for sub in [
            "cortex",
            "alpha",
            "rules",
            "playbooks",
            "logs",
            "quarantine",
        ] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let channel = format!("{}:{}", netns.spec.outside_ip, spec.channel_port);
        let mut layout = Layout {
            dir: dir.to_path_buf(),
            cortex_config: dir.join("cortex.toml"),
            alpha_config: dir.join("guardian-alpha.toml"),
            spec,
            api_token: String::new(),
        };
        write(
            &layout.cortex_config,
            &cortex_config(dir, &channel, &layout.spec),
        )?;
        write(&dir.join("rules/rules.yml"), &layout.spec.rules)?;
        write(&dir.join("playbooks/playbooks.yml"), &layout.spec.playbooks)?;
        let cortex_public = enroll(bin, &layout)?;
        write(
            &layout.alpha_config,
            &alpha_config(dir, &channel, &cortex_public, &layout.spec),
        )?;
        let token_file = dir.join("cortex/api.token");
        layout.api_token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("cannot read {}", token_file.display()))?
            .trim()
            .to_owned();
        Ok(layout)
    }

    /// The cortex's API.
    pub fn api(&self) -> Api {
        Api {
            base: format!("http://{}", self.spec.api_addr),
            token: self.api_token.clone(),
            http: ureq::AgentBuilder::new().timeout(API_TIMEOUT).build(),
        }
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The cortex config: only the caller's rules and playbooks, everything under `dir`.
fn cortex_config(dir: &Path, channel: &str, spec: &StackSpec) -> String {
    let d = dir.display();
    format!(
        "[listen]\naddress = \"{channel}\"\n\
         [api]\naddress = \"{api}\"\ntoken_file = \"{d}/cortex/api.token\"\n\
         [agents]\nfile = \"{d}/cortex/agents.toml\"\n\
         [keys]\nchannel_key_file = \"{d}/cortex/channel.key\"\n\
         [store]\npath = \"{d}/cortex/cortex.db\"\nmaster_key_file = \"{d}/cortex/master.key\"\n\
         [audit]\npath = \"{d}/cortex/audit.db\"\nsigning_key_file = \"{d}/cortex/audit-signing.key\"\n\
         [detect]\nshipped_rules = false\nrule_dirs = [\"{d}/rules\"]\n\
         [respond]\nshipped_playbooks = false\nplaybook_dirs = [\"{d}/playbooks\"]\n{respond}\n\
         {extra}",
        api = spec.api_addr,
        respond = spec.respond,
        extra = spec.cortex_extra,
    )
}

/// The agent config: its uplink to `channel` over the veth pair, its files under `dir`.
fn alpha_config(dir: &Path, channel: &str, cortex_public: &str, spec: &StackSpec) -> String {
    let d = dir.display();
    format!(
        "host_id = \"{host}\"\noutput = \"{d}/alpha-events.jsonl\"\n\
         [respond]\nquarantine_dir = \"{d}/quarantine\"\n\
         revoked_accounts_file = \"{d}/revoked-accounts.json\"\n\
         [cortex]\nenabled = true\naddress = \"{channel}\"\ncortex_public_key = \"{cortex_public}\"\n\
         key_file = \"{d}/alpha/channel.key\"\noutbox_dir = \"{d}/alpha/outbox\"\n{extra}",
        host = spec.host_id,
        extra = spec.alpha_extra,
    )
}

/// Creates the cortex's keys and the agent's, and enrolls the agent; returns the cortex's
/// channel public key.
fn enroll(bin: &Path, layout: &Layout) -> anyhow::Result<String> {
    let cortex = || {
        let mut cmd = Command::new(bin.join("cortex"));
        cmd.arg("--config").arg(&layout.cortex_config);
        cmd
    };
    let out = output_of(cortex().arg("keygen"))?;
    let cortex_public = out
        .lines()
        .find_map(|l| l.strip_prefix("channel public key:"))
        .map(|k| k.trim().to_owned())
        .context("cortex keygen did not print the channel public key")?;
    let alpha_key = layout.dir.join("alpha/channel.key");
    let out = output_of(
        Command::new(bin.join("guardian-alpha"))
            .arg("keygen")
            .arg("--out")
            .arg(&alpha_key),
    )?;
    let alpha_public = out
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
        .context("guardian-alpha keygen printed nothing")?;
    output_of(cortex().args([
        "agents",
        "add",
        "--host-id",
        &layout.spec.host_id,
        "--source",
        "alpha",
        "--public-key",
        &alpha_public,
    ]))?;
    Ok(cortex_public)
}

/// Runs `cmd` to completion; its stdout, or an error with its stderr.
pub fn output_of(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The running cortex and agent; stopped on drop.
pub struct Stack {
    children: Vec<(&'static str, Child)>,
    logs: PathBuf,
}

impl Stack {
    /// Starts the cortex, then the agent inside `netns`, and waits until the agent's events
    /// reach the cortex.
    pub fn start(bin: &Path, layout: &Layout, netns: &Netns) -> anyhow::Result<Self> {
        let logs = layout.dir.join("logs");
        let mut stack = Stack {
            children: Vec::new(),
            logs: logs.clone(),
        };
        let cortex = spawn_logged(
            Command::new(bin.join("cortex"))
                .arg("--config")
                .arg(&layout.cortex_config)
                .arg("serve"),
            &logs.join("cortex.log"),
        )?;
        stack.children.push(("cortex", cortex));
        stack.wait_for_log("cortex", "LISTENING")?;
        let alpha = spawn_logged(
            netns
                .command(bin.join("guardian-alpha"))
                .args(["run", "--config"])
                .arg(&layout.alpha_config),
            &logs.join("guardian-alpha.log"),
        )?;
        stack.children.push(("guardian-alpha", alpha));
        stack.wait_for_agent(&layout.api(), &layout.spec.host_id)?;
        Ok(stack)
    }

    /// The folder of the programs' logs.
    pub fn logs(&self) -> &Path {
        &self.logs
    }

    fn wait_for_log(&mut self, name: &str, needle: &str) -> anyhow::Result<()> {
        let log = self.logs.join(format!("{name}.log"));
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if std::fs::read_to_string(&log).is_ok_and(|t| t.contains(needle)) {
                return Ok(());
            }
            self.check_alive()?;
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{name} was not ready in {START_TIMEOUT:?}; see {}",
            log.display()
        )
    }

    /// Waits until the agent's events reach the cortex (each probe runs a process it reports).
    fn wait_for_agent(&mut self, api: &Api, host_id: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            self.check_alive()?;
            Command::new("true").status()?;
            let events = api
                .get(&format!("/api/events?host={host_id}&limit=1"))
                .unwrap_or(Value::Null);
            if events.as_array().is_some_and(|e| !e.is_empty()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "guardian-alpha's events did not reach the cortex in {START_TIMEOUT:?}; see {}",
            self.logs.display()
        )
    }

    /// An error naming the program that exited, if one did.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} exited ({status}); see {}/{name}.log",
                    self.logs.display()
                );
            }
        }
        Ok(())
    }

    /// SIGTERM to each program (the agent last started, first stopped), then SIGKILL after
    /// 10 s.
    pub fn stop(&mut self) {
        while let Some((name, mut child)) = self.children.pop() {
            // SAFETY: signalling a child this stack started.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!("{name} did not stop in time: killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Stack {
    /// Stops both programs; when a test is failing, prints the end of their logs first (the
    /// folder is usually a temporary one, gone after the test).
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            for name in LOG_NAMES {
                let log = self.logs.join(format!("{name}.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
                eprintln!("--- last lines of {} ---\n{tail}", log.display());
            }
        }
    }
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))
}

/// The running cortex's HTTP API, with its bearer token.
#[derive(Clone, Debug)]
pub struct Api {
    base: String,
    token: String,
    /// Keeps its connection open between requests: a connection per request would add a
    /// connect and an accept to the events the agent reports and the cortex stores, each time
    /// a test or bench polls.
    http: ureq::Agent,
}

impl Api {
    /// `GET path`: the JSON body of a 2xx answer.
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(&format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
            .call()
            .with_context(|| format!("GET {path}"))?
            .into_json()?)
    }

    /// `POST path` with a JSON body: the status and JSON body of a 2xx answer.
    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .post(&format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
            .send_json(body.clone())
            .with_context(|| format!("POST {path}"))?;
        Ok((response.status(), response.into_json()?))
    }
}

/// How [`Api::wait_for_action_polling`] asks: how often, and for how many of the newest
/// actions (the one awaited must be among them).
#[derive(Clone, Copy, Debug)]
pub struct Polling {
    pub every: Duration,
    pub newest: usize,
}

impl Api {
    /// The host's response actions, newest first (at most 100).
    pub fn actions(&self, host: &str) -> anyhow::Result<Vec<Value>> {
        self.newest_actions(host, 100)
    }

    /// The host's `limit` newest response actions, newest first.
    pub fn newest_actions(&self, host: &str, limit: usize) -> anyhow::Result<Vec<Value>> {
        let body = self.get(&format!("/api/actions?host={host}&limit={limit}"))?;
        Ok(body.as_array().cloned().unwrap_or_default())
    }

    /// Waits up to `timeout` for an action of `playbook` on `host` whose id is not in `seen`
    /// to finish; records and returns it when `done`, fails on any other end.
    pub fn wait_for_action(
        &self,
        host: &str,
        playbook: &str,
        seen: &mut HashSet<String>,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let polling = Polling {
            every: Duration::from_millis(5),
            newest: 100,
        };
        self.wait_for_action_polling(host, playbook, seen, timeout, polling)
    }

    /// [`Self::wait_for_action`], asking for the `polling.newest` actions every
    /// `polling.every`, the first time after one period: a request at once would make the
    /// cortex answer it while it handles the event that triggers the action.
    pub fn wait_for_action_polling(
        &self,
        host: &str,
        playbook: &str,
        seen: &mut HashSet<String>,
        timeout: Duration,
        polling: Polling,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            std::thread::sleep(polling.every);
            for record in self.newest_actions(host, polling.newest)? {
                let id = record["id"].as_str().unwrap_or_default().to_owned();
                if seen.contains(&id) || record["playbook"] != playbook {
                    continue;
                }
                match record["status"].as_str() {
                    Some("dispatched" | "held") => continue,
                    Some("done") => {
                        seen.insert(id);
                        return Ok(record);
                    }
                    _ => bail!(
                        "action {id} ended {}: {}",
                        record["status"],
                        record["detail"]
                    ),
                }
            }
        }
        bail!("no `{playbook}` action on {host} completed within {timeout:?}")
    }
}
