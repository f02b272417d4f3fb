//! The QSC stack on this host: keys and configs under a state folder, then cortex,
//! guardian-alpha and guardian-beta started as child processes and stopped (SIGTERM, then
//! SIGKILL after 10 s) when the [`Stack`] is dropped. `cargo xtask run`, `attack` and
//! `coverage` all start it through [`Stack::start`].

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::shell;

/// What differs between stacks: where their state lives, their addresses, their response mode.
pub struct StackOptions {
    /// Folder of the built workspace binaries (target/debug).
    pub bin: PathBuf,
    /// Where keys, configs, stores and logs go (created if missing).
    pub state: PathBuf,
    /// The cortex's channel address (`host:port`).
    pub channel: String,
    /// The cortex's HTTP API address (`host:port`).
    pub api: String,
    /// `[respond] mode` of the cortex (`None`: the cortex default, assisted).
    pub respond_mode: Option<&'static str>,
    /// `[respond] playbook_dirs` of the cortex, besides the shipped playbooks.
    pub playbook_dirs: Vec<PathBuf>,
}

impl StackOptions {
    /// Options with two free loopback ports, so a stack can run next to another one.
    pub fn on_free_ports(bin: PathBuf, state: PathBuf) -> anyhow::Result<Self> {
        Ok(StackOptions {
            bin,
            state,
            channel: free_loopback_address()?,
            api: free_loopback_address()?,
            respond_mode: None,
            playbook_dirs: Vec::new(),
        })
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_loopback_address() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(listener.local_addr()?.to_string())
}

/// One program of the stack.
pub struct Program {
    pub name: &'static str,
    child: Child,
}

/// A running stack; dropping it stops every program.
pub struct Stack {
    pub layout: StateLayout,
    pub bin: PathBuf,
    pub api: Api,
    programs: Vec<Program>,
}

impl Stack {
    /// Creates keys and configs when missing, then starts cortex, guardian-alpha (after the
    /// cortex listens) and guardian-beta (after its baseline exists), and waits until
    /// guardian-alpha has attached its hooks.
    pub fn start(options: &StackOptions) -> anyhow::Result<Self> {
        let layout = StateLayout::create(options)?;
        let keys = enroll(&options.bin, &layout)?;
        layout.write_configs(&keys)?;
        let mut stack = Stack {
            api: Api {
                base: format!("http://{}", options.api),
                token: keys.api_token,
            },
            layout,
            bin: options.bin.clone(),
            programs: Vec::new(),
        };
        stack.start_programs()?;
        Ok(stack)
    }

    fn start_programs(&mut self) -> anyhow::Result<()> {
        let (bin, layout) = (&self.bin, &self.layout);
        let cortex_log = layout.logs.join("cortex.log");
        let cortex_from = file_len(&cortex_log);
        let mut cortex = start(
            "cortex",
            Command::new(bin.join("cortex"))
                .arg("--config")
                .arg(&layout.cortex_config)
                .arg("serve"),
            &layout.logs,
        )?;
        wait_for_log(&cortex_log, cortex_from, "LISTENING", &mut cortex)?;
        self.programs.push(cortex);
        let alpha_from = file_len(&layout.alpha_events);
        let mut alpha = start(
            "guardian-alpha",
            Command::new(bin.join("guardian-alpha"))
                .args(["run", "--config"])
                .arg(&layout.alpha_config),
            &layout.logs,
        )?;
        wait_for_log(
            &layout.alpha_events,
            alpha_from,
            "\"heartbeat\"",
            &mut alpha,
        )?;
        self.programs.push(alpha);
        baseline_init(bin, layout)?;
        let beta = self.start_beta_watch()?;
        self.programs.push(beta);
        Ok(())
    }

    /// Starts guardian-beta's watcher and waits until its watches are in place, so that a
    /// change made right afterwards is seen.
    fn start_beta_watch(&self) -> anyhow::Result<Program> {
        let log = self.layout.logs.join("guardian-beta.log");
        let from = file_len(&log);
        let mut beta = start(
            "guardian-beta",
            &mut self.beta_command("watch"),
            &self.layout.logs,
        )?;
        wait_for_log(&log, from, "watching", &mut beta)?;
        Ok(beta)
    }

    /// guardian-beta with the stack's config and event file, for subcommand `args`.
    pub fn beta_command(&self, args: &str) -> Command {
        let mut cmd = Command::new(self.bin.join("guardian-beta"));
        cmd.arg("--config")
            .arg(&self.layout.beta_config)
            .arg("--output")
            .arg(&self.layout.beta_events)
            .args(args.split_whitespace());
        cmd
    }

    /// The process id of a program of the stack.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.programs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.child.id())
    }

    /// Fails when a program of the stack has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for program in &mut self.programs {
            if let Some(status) = program.child.try_wait()? {
                bail!(
                    "{} exited unexpectedly ({status}); see {}/{}.log",
                    program.name,
                    self.layout.logs.display(),
                    program.name
                );
            }
        }
        Ok(())
    }

    /// Runs `f` while guardian-beta's watcher is stopped (the one-shot checks speak for the
    /// same agent identity and outbox, which one process at a time may use), then restarts it.
    pub fn with_beta_paused<T>(
        &mut self,
        f: impl FnOnce(&Stack) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        if let Some(index) = self.programs.iter().position(|p| p.name == "guardian-beta") {
            let mut beta = self.programs.remove(index);
            stop(&mut beta);
        }
        let outcome = f(self);
        let beta = self.start_beta_watch()?;
        self.programs.push(beta);
        outcome
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for program in self.programs.iter().rev() {
            // SAFETY: signalling a child we started.
            unsafe { libc::kill(program.child.id() as i32, libc::SIGTERM) };
        }
        for program in self.programs.iter_mut().rev() {
            stop(program);
        }
    }
}

/// The cortex HTTP API of a stack.
pub struct Api {
    pub base: String,
    pub token: String,
}

impl Api {
    /// GET `path` (e.g. `/api/incidents?limit=50`) as JSON.
    pub fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        ureq::get(&url)
            .set("Authorization", &format!("Bearer {}", self.token))
            .timeout(Duration::from_secs(5))
            .call()
            .with_context(|| format!("GET {url}"))?
            .into_json()
            .with_context(|| format!("GET {url}: not JSON"))
    }

    /// The JSON array at `path`, empty when the answer is not an array.
    pub fn list(&self, path: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(self.get(path)?.as_array().cloned().unwrap_or_default())
    }
}

/// The length of a file (0 when missing): where text a program is about to write starts.
fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Waits until `needle` appears in a file (a program's log or events) after byte `from`, or
/// the program exits.
fn wait_for_log(log: &Path, from: u64, needle: &str, program: &mut Program) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let text = std::fs::read(log).unwrap_or_default();
        let new = text.get(from as usize..).unwrap_or_default();
        if String::from_utf8_lossy(new).contains(needle) {
            return Ok(());
        }
        if let Some(status) = program.child.try_wait()? {
            bail!(
                "{} exited ({status}) before it was ready; see {}",
                program.name,
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = program.child.kill();
    bail!(
        "{} was not ready within a minute; see {}",
        program.name,
        log.display()
    )
}

/// Public keys and the API token, created once and reused by later runs.
struct Keys {
    cortex_public: String,
    api_token: String,
}

/// Creates the cortex's keys and each agent's channel key when missing, and enrolls the agents.
fn enroll(bin: &Path, layout: &StateLayout) -> anyhow::Result<Keys> {
    let cortex = |args: &[&str]| {
        let mut cmd = Command::new(bin.join("cortex"));
        cmd.arg("--config").arg(&layout.cortex_config).args(args);
        cmd
    };
    // The cortex reads its config to find where its keys go: write it first.
    layout.write_cortex_config()?;
    let cortex_pub = layout.cortex_dir.join("channel.pub");
    if !cortex_pub.exists() {
        let out = output_of(&mut cortex(&["keygen"]))?;
        let key = out
            .lines()
            .find_map(|l| l.strip_prefix("channel public key:"))
            .map(|k| k.trim().to_owned())
            .context("cortex keygen did not print the channel public key")?;
        std::fs::write(&cortex_pub, &key)?;
    }
    for (agent, source, key_file) in [
        ("guardian-alpha", "alpha", &layout.alpha_key),
        ("guardian-beta", "beta", &layout.beta_key),
    ] {
        let pub_file = key_file.with_extension("pub");
        if !pub_file.exists() {
            let out = output_of(
                Command::new(bin.join(agent))
                    .arg("keygen")
                    .arg("--out")
                    .arg(key_file),
            )?;
            let key = out.lines().next().unwrap_or("").trim().to_owned();
            std::fs::write(&pub_file, &key)?;
        }
        let key = std::fs::read_to_string(&pub_file)?.trim().to_owned();
        let enrolled = std::fs::read_to_string(&layout.agents_file).unwrap_or_default();
        if !enrolled.contains(&key) {
            output_of(&mut cortex(&[
                "agents",
                "add",
                "--host-id",
                &layout.host_id,
                "--source",
                source,
                "--public-key",
                &key,
            ]))?;
        }
    }
    Ok(Keys {
        cortex_public: std::fs::read_to_string(&cortex_pub)?.trim().to_owned(),
        api_token: std::fs::read_to_string(layout.cortex_dir.join("api.token"))?
            .trim()
            .to_owned(),
    })
}

/// Runs `cmd` and returns its stdout; fails with its stderr.
pub fn output_of(cmd: &mut Command) -> anyhow::Result<String> {
    let line = shell::describe(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where a stack keeps its files.
pub struct StateLayout {
    pub host_id: String,
    pub state: PathBuf,
    pub logs: PathBuf,
    channel: String,
    api: String,
    respond_mode: Option<&'static str>,
    playbook_dirs: Vec<PathBuf>,
    cortex_dir: PathBuf,
    cortex_config: PathBuf,
    agents_file: PathBuf,
    alpha_config: PathBuf,
    alpha_key: PathBuf,
    pub alpha_events: PathBuf,
    beta_dir: PathBuf,
    beta_config: PathBuf,
    beta_key: PathBuf,
    pub beta_events: PathBuf,
    /// A tree guardian-beta heals (`heal = true`).
    pub demo_dir: PathBuf,
    pub demo_file: PathBuf,
    /// A backup set guardian-beta verifies against its manifest.
    pub backup_dir: PathBuf,
    pub backup_manifest: PathBuf,
    /// Certificate files guardian-beta checks (`cert check`), and the CRLs it reads.
    pub cert_dir: PathBuf,
    /// The log guardian-alpha follows for logins (the scenario sshd writes it with `-E`).
    pub auth_log: PathBuf,
}

/// guardian-alpha watches these in the stack besides its default prefixes: every home folder
/// (authorized_keys of accounts created after start-up) and the world-writable staging folders
/// where dropped payloads live.
const EXTRA_WATCHES: &[&str] = &["/home/", "/var/tmp/", "/dev/shm/"];

impl StateLayout {
    fn create(options: &StackOptions) -> anyhow::Result<Self> {
        let state = options.state.clone();
        let layout = StateLayout {
            host_id: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into()),
            logs: state.join("logs"),
            channel: options.channel.clone(),
            api: options.api.clone(),
            respond_mode: options.respond_mode,
            playbook_dirs: options.playbook_dirs.clone(),
            cortex_dir: state.join("cortex"),
            cortex_config: state.join("cortex.toml"),
            agents_file: state.join("cortex").join("agents.toml"),
            alpha_config: state.join("guardian-alpha.toml"),
            alpha_key: state.join("alpha").join("channel.key"),
            alpha_events: state.join("alpha-events.jsonl"),
            beta_dir: state.join("beta"),
            beta_config: state.join("guardian-beta.toml"),
            beta_key: state.join("beta").join("channel.key"),
            beta_events: state.join("beta-events.jsonl"),
            demo_dir: state.join("demo"),
            demo_file: state.join("demo").join("app.conf"),
            backup_dir: state.join("backup"),
            backup_manifest: state.join("beta").join("backup.sha3"),
            cert_dir: state.join("certs"),
            auth_log: state.join("logs").join("sshd-auth.log"),
            state,
        };
        for dir in [
            &layout.state,
            &layout.logs,
            &layout.cortex_dir,
            &layout.state.join("alpha"),
            &layout.beta_dir,
            &layout.demo_dir,
            &layout.backup_dir,
            &layout.cert_dir,
        ] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        if !layout.demo_file.exists() {
            std::fs::write(
                &layout.demo_file,
                "# a protected demo config: edit me\nlisten = 8080\n",
            )?;
        }
        // guardian-alpha follows the first auth log that exists when it starts.
        if !layout.auth_log.exists() {
            std::fs::write(&layout.auth_log, "")?;
        }
        Ok(layout)
    }

    fn write_cortex_config(&self) -> anyhow::Result<()> {
        let c = self.cortex_dir.display();
        let mut respond = String::from("[respond]\n");
        if let Some(mode) = self.respond_mode {
            respond.push_str(&format!("mode = \"{mode}\"\n"));
        }
        if !self.playbook_dirs.is_empty() {
            let dirs: Vec<String> = self
                .playbook_dirs
                .iter()
                .map(|d| format!("\"{}\"", d.display()))
                .collect();
            respond.push_str(&format!("playbook_dirs = [{}]\n", dirs.join(", ")));
        }
        std::fs::write(
            &self.cortex_config,
            format!(
                "# Written by `cargo xtask`; every key is documented in config/cortex.example.toml.\n\
                 [listen]\naddress = \"{channel}\"\n[api]\naddress = \"{api}\"\ntoken_file = \"{c}/api.token\"\n\
                 [agents]\nfile = \"{c}/agents.toml\"\n\
                 [keys]\nchannel_key_file = \"{c}/channel.key\"\n\
                 [store]\npath = \"{c}/cortex.db\"\nmaster_key_file = \"{c}/master.key\"\n\
                 [audit]\npath = \"{c}/audit.db\"\nsigning_key_file = \"{c}/audit-signing.key\"\n\
                 [anomaly]\nmodels_dir = \"{c}/anomaly\"\n{respond}",
                channel = self.channel,
                api = self.api,
            ),
        )?;
        Ok(())
    }

    /// The agents' configs (rewritten each run so they follow the code).
    fn write_configs(&self, keys: &Keys) -> anyhow::Result<()> {
        let uplink = |key: &Path, outbox: &Path| {
            format!(
                "[cortex]\nenabled = true\naddress = \"{}\"\ncortex_public_key = \"{}\"\nkey_file = \"{}\"\noutbox_dir = \"{}\"\n",
                self.channel,
                keys.cortex_public,
                key.display(),
                outbox.display()
            )
        };
        std::fs::write(
            &self.alpha_config,
            format!(
                "# Written by `cargo xtask`; see config/guardian-alpha.example.toml.\n\
                 host_id = \"{}\"\noutput = \"{}\"\n\n\
                 [metrics]\ninterval_s = 2\nauth_logs = [\"{}\"]\n\n\
                 [respond]\nquarantine_dir = \"{}\"\nrevoked_accounts_file = \"{}\"\n\n{}\n{}",
                self.host_id,
                self.alpha_events.display(),
                self.auth_log.display(),
                self.state.join("quarantine").display(),
                self.state.join("revoked-accounts.json").display(),
                alpha_watches()?,
                uplink(&self.alpha_key, &self.alpha_key.with_file_name("outbox"))
            ),
        )?;
        let beta = self.beta_dir.display();
        std::fs::write(
            &self.beta_config,
            format!(
                "# Written by `cargo xtask`; see config/guardian-beta.example.toml.\n\
                 host_id = \"{host}\"\nstore = \"{beta}/baseline.qsb\"\nkey_file = \"{beta}/store.key\"\nheal_dir = \"{beta}/heal\"\n\n\
                 [[tree]]\npath = \"/etc\"\nexclude = [\"/etc/mtab\", \"/etc/ld.so.cache\"]\n\n\
                 [[tree]]\npath = \"{demo}\"\nheal = true\n\n[watch]\nfull_check_interval_s = 300\n\n\
                 [[backup]]\nname = \"demo\"\npath = \"{backup}\"\nmanifest = \"{manifest}\"\n\n{uplink}",
                host = self.host_id,
                demo = self.demo_dir.display(),
                backup = self.backup_dir.display(),
                manifest = self.backup_manifest.display(),
                uplink = uplink(&self.beta_key, &self.beta_dir.join("outbox")),
            ),
        )?;
        Ok(())
    }
}

/// guardian-alpha's default `[[watch]]` tables (from its example config, which equals the
/// defaults) followed by [`EXTRA_WATCHES`]: a config's watch list replaces the defaults.
fn alpha_watches() -> anyhow::Result<String> {
    let example = shell::root().join("config/guardian-alpha.example.toml");
    let text = std::fs::read_to_string(&example)
        .with_context(|| format!("cannot read {}", example.display()))?;
    let mut out = String::new();
    let mut in_watch = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_watch = line == "[[watch]]";
        }
        if in_watch && !line.is_empty() && !line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
        }
    }
    for prefix in EXTRA_WATCHES {
        out.push_str(&format!(
            "[[watch]]\nprefix = \"{prefix}\"\nreads = false\nmodifications = true\n"
        ));
    }
    Ok(out)
}

fn start(name: &'static str, cmd: &mut Command, logs: &Path) -> anyhow::Result<Program> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("{name}.log")))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    eprintln!(
        "started {name} (pid {}), log in {}/{name}.log",
        child.id(),
        logs.display()
    );
    Ok(Program { name, child })
}

/// The baseline is recorded once; later runs check against it.
fn baseline_init(bin: &Path, layout: &StateLayout) -> anyhow::Result<()> {
    if layout.beta_dir.join("baseline.qsb").exists() {
        return Ok(());
    }
    eprintln!("guardian-beta: recording the integrity baseline of /etc and the demo tree");
    let status = Command::new(bin.join("guardian-beta"))
        .arg("--config")
        .arg(&layout.beta_config)
        .arg("--output")
        .arg(&layout.beta_events)
        .args(["baseline", "init"])
        .status()?;
    // Exit status 1 means "findings", which a first baseline does not have; 2 is an error.
    if status.code() == Some(2) || status.code().is_none() {
        bail!("guardian-beta baseline init failed ({status})");
    }
    Ok(())
}

/// SIGTERM (again, harmless if already sent), then SIGKILL after 10 s.
fn stop(program: &mut Program) {
    // SAFETY: signalling a child we started.
    unsafe { libc::kill(program.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match program.child.try_wait() {
            Ok(Some(status)) => {
                eprintln!("{} stopped ({status})", program.name);
                return;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                eprintln!("{} did not stop in time: killing it", program.name);
                let _ = program.child.kill();
                let _ = program.child.wait();
                return;
            }
        }
    }
}
