//! Guardian-Alpha's response executor against the real kernel, driven through
//! `guardian-alpha respond` (the agent's executor and guardrails, reading ActionRequest lines
//! on stdin and answering ActionReport lines). Each test acts only on what it creates: its own
//! process trees, a loopback listener, a network-namespace pair, a temporary user; Drop guards
//! remove them even when an assertion fails. Root only; `cargo xtask test` makes them fail
//! rather than skip when run as root.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    os::unix::process::{CommandExt, ExitStatusExt},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use qsc_event::{ActionOutcome, ActionReport};
use qsc_tests::{
    channel::{key_hex, wait_until},
    root_or_skip, workspace_bin,
};

/// A `guardian-alpha respond` process, optionally inside a network namespace.
struct Executor {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    _config: tempfile::NamedTempFile,
}

impl Executor {
    /// `netns`: run inside it (`ip netns exec`); `kernel`: load the sensor so blocks use the
    /// kernel map.
    fn start(config_toml: &str, netns: Option<&str>, kernel: bool) -> Self {
        let mut config = tempfile::NamedTempFile::new().expect("temp config");
        write!(config, "{config_toml}").expect("write config");
        let alpha = workspace_bin("guardian-alpha");
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(alpha);
                c
            }
            None => Command::new(alpha),
        };
        command.args(["respond", "--config"]).arg(config.path());
        if kernel {
            command.arg("--kernel");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn guardian-alpha respond");
        let stdin = child.stdin.take().expect("executor stdin");
        let stdout = BufReader::new(child.stdout.take().expect("executor stdout"));
        Executor {
            child,
            stdin,
            stdout,
            _config: config,
        }
    }

    /// Sends one request (JSON) and returns its report.
    fn request(&mut self, json: &str) -> ActionReport {
        writeln!(self.stdin, "{json}").expect("write request");
        self.stdin.flush().expect("flush request");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read report");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad report {line:?}: {e}"))
    }

    /// Sends `action` (`revoke_credential`, `restore_credential`) for `user`; it must be done.
    fn on_account(&mut self, id: &str, action: &str, user: &TestUser) -> ActionReport {
        let request = format!(
            r#"{{"action_id":"{id}","action":"{action}","user":"{}"}}"#,
            user.name
        );
        self.expect(&request, ActionOutcome::Done)
    }

    /// Like [`Executor::request`], asserting the outcome.
    fn expect(&mut self, json: &str, outcome: ActionOutcome) -> ActionReport {
        let report = self.request(json);
        assert_eq!(report.outcome, outcome, "{json}: {}", report.detail);
        report
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The agent's list of revoked accounts, in a test's folder.
const REVOKED_LIST: &str = "revoked-accounts.json";

/// A `[respond]` table that keeps the executor's files in `dir`.
fn respond_section(dir: &Path) -> String {
    format!(
        "[respond]\nquarantine_dir = \"{}\"\nrevoked_accounts_file = \"{}\"\n",
        dir.join("quarantine").display(),
        dir.join(REVOKED_LIST).display()
    )
}

/// A config whose quarantine folder is `dir` and whose cortex is `cortex` (host:port).
fn config(dir: &Path, cortex: &str) -> String {
    format!("{}[cortex]\naddress = \"{cortex}\"\n", respond_section(dir))
}

/// Kills a test child by its pid when the test ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stat_field(pid: u32, index_after_comm: usize) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace()
        .nth(index_after_comm)
        .map(str::to_owned)
}

/// Gone, or exited and waiting to be reaped.
fn is_dead(pid: u32) -> bool {
    stat_field(pid, 0).is_none_or(|state| state == "Z" || state == "X")
}

/// Every running descendant of `root`.
fn descendants(root: u32) -> Vec<u32> {
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i].to_string();
        for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if stat_field(pid, 1).as_deref() == Some(parent.as_str())
                && !is_dead(pid)
                && !tree.contains(&pid)
            {
                tree.push(pid);
            }
        }
        i += 1;
    }
    tree.remove(0);
    tree
}

fn pids_of(report: &ActionReport) -> Vec<u32> {
    serde_json::from_value(report.facts["killed_pids"].clone()).expect("killed_pids")
}

#[test]
fn kills_a_test_process_tree() {
    if !root_or_skip("kills_a_test_process_tree") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut executor = Executor::start(&config(dir.path(), ""), None, false);
    let mut tree = ChildGuard(
        Command::new("/bin/sh")
            .args([
                "-c",
                "/bin/sh -c 'sleep 300 & sleep 300 & wait' & sleep 300 & wait",
            ])
            .spawn()
            .expect("spawn a process tree"),
    );
    let root = tree.0.id();
    assert!(
        wait_until(Duration::from_secs(10), || descendants(root).len() == 4),
        "the tree has 4 descendants: {:?}",
        descendants(root)
    );
    let members = descendants(root);
    let ticks = stat_field(root, 19).expect("start time");
    let report = executor.expect(
        &format!(
            r#"{{"action_id":"k1","action":"kill","pid":{root},"start_time_ticks":{ticks},"tree":true}}"#
        ),
        ActionOutcome::Done,
    );
    let killed = pids_of(&report);
    assert_eq!(killed[0], root, "killed top-down, root first");
    for pid in &members {
        assert!(killed.contains(pid), "{pid} killed: {killed:?}");
        assert!(is_dead(*pid), "{pid} is dead");
    }
    let status = tree.0.wait().expect("wait for the root");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    // A pid pinned to another start time is not touched.
    let mut other = ChildGuard(Command::new("sleep").arg("300").spawn().expect("sleep"));
    let report = executor.request(&format!(
        r#"{{"action_id":"k2","action":"kill","pid":{},"start_time_ticks":1}}"#,
        other.0.id()
    ));
    assert_eq!(report.outcome, ActionOutcome::Failed, "{}", report.detail);
    assert_eq!(other.0.try_wait().expect("try_wait"), None, "still running");
}

#[test]
fn guardrails_refuse_init_the_agent_its_parents_and_the_cortex() {
    if !root_or_skip("guardrails_refuse_init_the_agent_its_parents_and_the_cortex") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut executor = Executor::start(&config(dir.path(), "127.0.0.9:7443"), None, false);
    let agent = executor.child.id();
    let me = std::process::id();
    for (pid, why) in [
        (1, "pid 1"),
        (agent, "this agent"),
        (me, "parent of this agent"),
    ] {
        let report = executor.expect(
            &format!(r#"{{"action_id":"g","action":"kill","pid":{pid},"tree":true}}"#),
            ActionOutcome::Refused,
        );
        assert!(report.detail.contains(why), "{pid}: {}", report.detail);
        assert!(report.done_mono_ns > 0);
    }
    let report = executor.expect(
        r#"{"action_id":"g","action":"block_ip","addr":"127.0.0.9","ttl_s":5}"#,
        ActionOutcome::Refused,
    );
    assert!(report.detail.contains("cortex"), "{}", report.detail);
    let report = executor.expect(
        r#"{"action_id":"g","action":"revoke_credential","user":"root"}"#,
        ActionOutcome::Refused,
    );
    assert!(report.detail.contains("uid 0"), "{}", report.detail);
}

/// Blocks through the kernel map (the executor loads the sensor), then the executor's own
/// TTL rolls the block back.
#[test]
fn block_ip_refuses_a_loopback_connect_until_the_ttl_expires() {
    if !root_or_skip("block_ip_refuses_a_loopback_connect_until_the_ttl_expires") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let port = listener.local_addr().expect("addr").port();
    TcpStream::connect(("127.0.0.2", port)).expect("reachable before the block");
    let mut executor = Executor::start(&config(dir.path(), "127.0.0.1:9"), None, true);
    let report = executor.expect(
        r#"{"action_id":"b1","action":"block_ip","addr":"127.0.0.2","ttl_s":2}"#,
        ActionOutcome::Done,
    );
    let blocked_at = Instant::now();
    assert_eq!(report.facts["mechanism"], "kernel");
    let refused = TcpStream::connect(("127.0.0.2", port)).expect_err("blocked connect");
    assert_eq!(refused.raw_os_error(), Some(libc::EPERM));
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect((
            "127.0.0.2",
            port
        ))
        .is_ok()),
        "allowed again after the TTL"
    );
    assert!(blocked_at.elapsed() >= Duration::from_millis(1500));
}

/// A network-namespace "host" joined to the test's namespace by a veth pair; removed (with
/// its nftables tables and the pair) when dropped.
struct Netns {
    name: String,
    /// The test side's address, where the "cortex" and the peer services listen.
    peer_ip: String,
    /// A second test-side address, for blocking.
    other_ip: String,
}

impl Netns {
    /// `tag` names it; each concurrent test uses its own `subnet` (10.<subnet>.x.0/24).
    fn create(tag: &str, subnet: u8) -> Self {
        let id = std::process::id();
        let name = format!("qsc-t-{tag}-{id}");
        let outer = format!("qo{tag}{}", id % 100_000);
        let inner = format!("qi{tag}{}", id % 100_000);
        let net = format!("10.{subnet}.{}", id % 250);
        let netns = Netns {
            name: name.clone(),
            peer_ip: format!("{net}.1"),
            other_ip: format!("{net}.3"),
        };
        let host_ip = format!("{net}.2/24");
        for args in [
            vec!["netns", "add", &name],
            vec![
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ],
            vec!["link", "set", &inner, "netns", &name],
            vec![
                "addr",
                "add",
                &format!("{}/24", netns.peer_ip),
                "dev",
                &outer,
            ],
            vec![
                "addr",
                "add",
                &format!("{}/24", netns.other_ip),
                "dev",
                &outer,
            ],
            vec!["link", "set", &outer, "up"],
            vec!["-n", &name, "addr", "add", &host_ip, "dev", &inner],
            vec!["-n", &name, "link", "set", &inner, "up"],
            vec!["-n", &name, "link", "set", "lo", "up"],
        ] {
            let status = Command::new("ip").args(&args).status().expect("run ip");
            assert!(status.success(), "ip {args:?} failed");
        }
        netns
    }

    /// True when a TCP connect from inside the namespace to `ip:port` succeeds within 1 s.
    fn can_connect(&self, ip: &str, port: u16) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "timeout", "1", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{ip}/{port}"))
            .stderr(Stdio::null())
            .status()
            .expect("run the probe")
            .success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end (and so the pair) and its tables.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn listen(ip: &str) -> (TcpListener, u16) {
    let listener = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

#[test]
fn isolation_keeps_only_the_cortex_channel_until_release_or_ttl() {
    if !root_or_skip("isolation_keeps_only_the_cortex_channel_until_release_or_ttl") {
        return;
    }
    let netns = Netns::create("i", 201);
    let (_cortex, cortex_port) = listen(&netns.peer_ip);
    let (_service, service_port) = listen(&netns.peer_ip);
    let dir = tempfile::tempdir().expect("tempdir");
    let cortex = format!("{}:{cortex_port}", netns.peer_ip);
    let mut executor = Executor::start(&config(dir.path(), &cortex), Some(&netns.name), false);
    assert!(
        netns.can_connect(&netns.peer_ip, service_port),
        "peer reachable before"
    );

    let report = executor.expect(
        r#"{"action_id":"i1","action":"isolate","ttl_s":0}"#,
        ActionOutcome::Done,
    );
    assert_eq!(report.facts["table"], "inet qsc_isolate");
    assert!(
        netns.can_connect(&netns.peer_ip, cortex_port),
        "cortex channel kept"
    );
    assert!(
        !netns.can_connect(&netns.peer_ip, service_port),
        "peer cut off"
    );
    // Isolating again is idempotent.
    executor.expect(
        r#"{"action_id":"i2","action":"isolate","ttl_s":0}"#,
        ActionOutcome::Done,
    );
    assert!(!netns.can_connect(&netns.peer_ip, service_port));

    executor.expect(
        r#"{"action_id":"r1","action":"release"}"#,
        ActionOutcome::Done,
    );
    assert!(netns.can_connect(&netns.peer_ip, service_port), "released");

    // With a TTL the executor releases by itself.
    executor.expect(
        r#"{"action_id":"i3","action":"isolate","ttl_s":1}"#,
        ActionOutcome::Done,
    );
    assert!(!netns.can_connect(&netns.peer_ip, service_port));
    assert!(
        wait_until(Duration::from_secs(10), || netns
            .can_connect(&netns.peer_ip, service_port)),
        "released at TTL expiry"
    );
}

/// Without the kernel programs, blocks go through nftables (run inside a namespace so that
/// nothing outside the test is affected).
#[test]
fn block_ip_falls_back_to_nftables() {
    if !root_or_skip("block_ip_falls_back_to_nftables") {
        return;
    }
    let netns = Netns::create("b", 202);
    let (_listener, port) = listen(&netns.other_ip);
    let dir = tempfile::tempdir().expect("tempdir");
    let cortex = format!("{}:7443", netns.peer_ip);
    let mut executor = Executor::start(&config(dir.path(), &cortex), Some(&netns.name), false);
    assert!(netns.can_connect(&netns.other_ip, port));
    let json = format!(
        r#"{{"action_id":"n1","action":"block_ip","addr":"{}","ttl_s":1}}"#,
        netns.other_ip
    );
    let report = executor.expect(&json, ActionOutcome::Done);
    assert_eq!(report.facts["mechanism"], "nftables");
    assert!(!netns.can_connect(&netns.other_ip, port), "blocked");
    assert!(
        wait_until(Duration::from_secs(10), || netns
            .can_connect(&netns.other_ip, port)),
        "unblocked at TTL expiry"
    );
    executor.expect(
        &json.replace(r#""ttl_s":1"#, r#""ttl_s":0"#),
        ActionOutcome::Done,
    );
    assert!(!netns.can_connect(&netns.other_ip, port));
    executor.expect(
        &format!(
            r#"{{"action_id":"n2","action":"unblock_ip","addr":"{}"}}"#,
            netns.other_ip
        ),
        ActionOutcome::Done,
    );
    assert!(netns.can_connect(&netns.other_ip, port), "unblocked");
}

/// The test account's password hash (not a valid crypt hash: nobody logs in with it).
const TEST_PASSWORD_HASH: &str = "$6$qsctest$0123456789abcdef";

/// A temporary local account with [`TEST_PASSWORD_HASH`]; deleted when dropped.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    fn create() -> Self {
        // Tests run on parallel threads of one process: the pid alone is not unique.
        static CREATED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("qsc-t-{}-{n}", std::process::id());
        let status = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/bin/sh", &name])
            .status()
            .expect("run useradd");
        assert!(status.success(), "useradd {name}");
        let mut user = TestUser {
            uid: 0,
            gid: 0,
            name: name.clone(),
        };
        let passwd = std::fs::read_to_string("/etc/passwd").expect("read passwd");
        let ids: Vec<u32> = passwd
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:x:")))
            .map(|rest| {
                rest.split(':')
                    .take(2)
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .expect("passwd entry of the test user");
        assert_eq!(ids.len(), 2, "uid and gid of {name}");
        (user.uid, user.gid) = (ids[0], ids[1]);
        let status = Command::new("usermod")
            .args(["-p", TEST_PASSWORD_HASH, &user.name])
            .status()
            .expect("usermod -p");
        assert!(status.success(), "usermod -p {}", user.name);
        user
    }

    /// A long-running process of the account, as its login session would be.
    fn session(&self) -> ChildGuard {
        ChildGuard(
            Command::new("sleep")
                .arg("300")
                .uid(self.uid)
                .gid(self.gid)
                .spawn()
                .expect("spawn a process as the test user"),
        )
    }

    fn shadow_password(&self) -> String {
        let shadow = std::fs::read_to_string("/etc/shadow").expect("read shadow");
        let prefix = format!("{}:", self.name);
        shadow
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(':').next())
            .expect("shadow entry")
            .to_owned()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").args(["-f", &self.name]).status();
    }
}

#[test]
fn revoke_locks_a_test_user_and_ends_its_processes_then_restore_unlocks() {
    if !root_or_skip("revoke_locks_a_test_user_and_ends_its_processes_then_restore_unlocks") {
        return;
    }
    let user = TestUser::create();
    let hash = TEST_PASSWORD_HASH;
    let mut session = user.session();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut executor = Executor::start(&config(dir.path(), ""), None, false);
    // Once this is answered the executor is ready: the next latency is the action's own.
    executor.expect(
        r#"{"action_id":"c0","action":"kill","pid":1}"#,
        ActionOutcome::Refused,
    );
    let sent = qsc_event::mono_now_ns();
    let report = executor.on_account("c1", "revoke_credential", &user);
    eprintln!(
        "revoke_credential: {:.2} ms from request to done (incl. the pipe)",
        (report.done_mono_ns.saturating_sub(sent)) as f64 / 1e6
    );
    assert_eq!(user.shadow_password(), format!("!{hash}"));
    assert!(pids_of(&report).contains(&session.0.id()));
    let status = session.0.wait().expect("wait for the session");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    // Idempotent: a second revoke leaves one '!'.
    executor.on_account("c2", "revoke_credential", &user);
    assert_eq!(user.shadow_password(), format!("!{hash}"));

    executor.on_account("c3", "restore_credential", &user);
    assert_eq!(user.shadow_password(), hash);
}

/// A process of the test user that the guardrails spare (its name is protected), so that it
/// outlives the revocation's kill and shows what the kernel does when it runs `script` after
/// reading a line.
fn spared_process(dir: &Path, user: &TestUser, script: &str) -> ChildGuard {
    let link = dir.join(SPARED_NAME);
    if !link.exists() {
        std::os::unix::fs::symlink("/bin/sh", &link).expect("symlink the spared shell");
    }
    ChildGuard(
        Command::new(&link)
            .args(["-c", &format!("read line; {script}")])
            .uid(user.uid)
            .gid(user.gid)
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn a spared process as the test user"),
    )
}

const SPARED_NAME: &str = "qsc-spared";

/// Root becoming the test user, as a login, `su` or `runuser` does.
fn switch_to(user: &TestUser) -> std::process::ExitStatus {
    Command::new("setpriv")
        .args([
            "--reuid",
            &user.uid.to_string(),
            "--regid",
            &user.gid.to_string(),
        ])
        .args(["--clear-groups", "/bin/true"])
        .status()
        .expect("run setpriv")
}

/// With the sensor loaded, a revocation is enforced by the kernel: a spared process of the
/// account is killed when it forks or execs, and root switching to the account (a login) is
/// killed in its setuid call, until restore. The shadow entry is locked after the report.
#[test]
fn a_kernel_revocation_kills_the_account_at_exec_fork_and_login_until_restore() {
    if !root_or_skip("a_kernel_revocation_kills_the_account_at_exec_fork_and_login_until_restore") {
        return;
    }
    let user = TestUser::create();
    let hash = TEST_PASSWORD_HASH;
    let dir = tempfile::tempdir().expect("tempdir");
    // The user runs the spared shell through this folder.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut execs = spared_process(dir.path(), &user, "exec /bin/true");
    let mut forks = spared_process(dir.path(), &user, "/bin/true; exit 0");
    let mut session = user.session();
    assert!(switch_to(&user).success(), "setpriv before the revocation");
    let config_toml = format!(
        "{}protected_processes = [\"{SPARED_NAME}\"]\n",
        respond_section(dir.path())
    );
    let mut executor = Executor::start(&config_toml, None, true);
    let report = executor.on_account("k1", "revoke_credential", &user);
    assert_eq!(report.facts["mechanism"], "kernel", "{report:?}");
    let killed = pids_of(&report);
    assert!(killed.contains(&session.0.id()), "{killed:?}");
    assert!(!killed.contains(&execs.0.id()) && !killed.contains(&forks.0.id()));
    let status = session.0.wait().expect("wait for the session");
    assert_eq!(status.signal(), Some(libc::SIGKILL));

    for (what, spared) in [("exec", &mut execs), ("fork", &mut forks)] {
        let stdin = spared.0.stdin.as_mut().expect("spared stdin");
        stdin.write_all(b"go\n").expect("wake the spared process");
        let status = spared.0.wait().expect("wait for the spared process");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{what}: {status:?}");
    }
    assert_eq!(switch_to(&user).signal(), Some(libc::SIGKILL), "login");
    wait_until_listed(dir.path(), &user);
    assert_eq!(user.shadow_password(), format!("!{hash}"));

    // A restarted agent refuses the account again.
    drop(executor);
    let mut executor = Executor::start(&config_toml, None, true);
    executor.expect(
        r#"{"action_id":"k2","action":"kill","pid":1}"#,
        ActionOutcome::Refused,
    );
    assert_eq!(
        switch_to(&user).signal(),
        Some(libc::SIGKILL),
        "login after the agent restarted"
    );

    executor.on_account("k3", "restore_credential", &user);
    assert_eq!(user.shadow_password(), hash);
    assert!(switch_to(&user).success(), "setpriv after restore");
    assert_eq!(revoked_list(dir.path()), Default::default());
}

/// The agent's list of revoked accounts in `dir` (user → uid); empty when there is none.
fn revoked_list(dir: &Path) -> std::collections::BTreeMap<String, u32> {
    std::fs::read(dir.join(REVOKED_LIST))
        .map(|bytes| serde_json::from_slice(&bytes).expect("the list is JSON"))
        .unwrap_or_default()
}

/// Waits for the revocation of `user` to be on the list, which follows its report.
fn wait_until_listed(dir: &Path, user: &TestUser) {
    assert!(
        wait_until(Duration::from_secs(10), || revoked_list(dir)
            .get(&user.name)
            == Some(&user.uid)),
        "the revocation is listed after the report: {:?}",
        revoked_list(dir)
    );
}

/// An account deleted while revoked leaves its uid refused by the kernel, where a new
/// account could get it; restoring the deleted account by name lifts that uid.
#[test]
fn restoring_a_deleted_revoked_account_lifts_the_kernel_refusal_of_its_uid() {
    if !root_or_skip("restoring_a_deleted_revoked_account_lifts_the_kernel_refusal_of_its_uid") {
        return;
    }
    let user = TestUser::create();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut executor = Executor::start(&respond_section(dir.path()), None, true);
    let report = executor.on_account("d1", "revoke_credential", &user);
    assert_eq!(report.facts["mechanism"], "kernel", "{report:?}");
    wait_until_listed(dir.path(), &user);
    let status = Command::new("userdel")
        .args(["-f", &user.name])
        .status()
        .expect("run userdel");
    assert!(status.success(), "userdel {}", user.name);
    assert_eq!(
        switch_to(&user).signal(),
        Some(libc::SIGKILL),
        "the deleted account's uid is still refused"
    );

    let report = executor.on_account("d2", "restore_credential", &user);
    assert_eq!(report.facts["revoked_uid"], user.uid, "{report:?}");
    assert!(switch_to(&user).success(), "the uid is free again");
    assert_eq!(revoked_list(dir.path()), Default::default());
}

#[test]
fn quarantine_moves_a_test_file_across_filesystems() {
    if !root_or_skip("quarantine_moves_a_test_file_across_filesystems") {
        return;
    }
    // The file on /dev/shm (tmpfs), the quarantine folder under the temp dir: unless /tmp is
    // on that same tmpfs, this is a cross-filesystem move.
    let source_dir = tempfile::tempdir_in("/dev/shm").expect("tempdir in /dev/shm");
    let file = source_dir.path().join("dropper");
    std::fs::write(&file, b"payload").expect("write");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut executor = Executor::start(&config(dir.path(), ""), None, false);
    let report = executor.expect(
        &format!(
            r#"{{"action_id":"q1","action":"quarantine","path":"{}"}}"#,
            file.display()
        ),
        ActionOutcome::Done,
    );
    assert!(!file.exists());
    let moved = report.facts["quarantined_path"].as_str().expect("path");
    assert!(moved.starts_with(&dir.path().join("quarantine").display().to_string()));
    assert_eq!(std::fs::read(moved).expect("read quarantined"), b"payload");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(moved).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode, 0);
    assert_eq!(report.facts["blake3"].as_str().map(str::len), Some(64));
}

/// The agent's events carry each process's start time (from its process table), equal to
/// `/proc`'s; a kill pinned to another start time is refused, the right one kills.
#[test]
fn exec_events_carry_the_start_time_that_pins_a_kill() {
    if !root_or_skip("exec_events_carry_the_start_time_that_pins_a_kill") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let agent =
        qsc_tests::alpha::AlphaAgent::start(&qsc_tests::alpha::config_watching(dir.path()), &[]);
    let mut victim = ChildGuard(Command::new("sleep").arg("301").spawn().expect("sleep"));
    let pid = victim.0.id();
    let exec = agent
        .wait_for(
            |e| matches!(&e.kind, qsc_event::EventKind::ProcessExec(x) if x.process.pid == pid),
        )
        .expect("the victim's exec event");
    let ticks: u64 = stat_field(pid, 19)
        .and_then(|t| t.parse().ok())
        .expect("start time");
    assert_eq!(exec.process().and_then(|p| p.start_time_ticks), Some(ticks));
    agent.stop();

    let mut executor = Executor::start(&config(dir.path(), ""), None, false);
    let stale = executor.request(&format!(
        r#"{{"action_id":"p1","action":"kill","pid":{pid},"start_time_ticks":{}}}"#,
        ticks + 1
    ));
    assert_eq!(stale.outcome, ActionOutcome::Failed, "{}", stale.detail);
    assert!(
        stale.detail.contains("start_time_ticks"),
        "{}",
        stale.detail
    );
    assert_eq!(
        victim.0.try_wait().expect("try_wait"),
        None,
        "still running"
    );
    executor.expect(
        &format!(r#"{{"action_id":"p2","action":"kill","pid":{pid},"start_time_ticks":{ticks}}}"#),
        ActionOutcome::Done,
    );
    let status = victim.0.wait().expect("wait for the victim");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

/// A real `cortex serve` (in `d/cortex`) with the test's `rule` and autonomous `playbook` and a
/// running agent (host id `e2e-test`) enrolled at it. The tests run as root, so
/// `[respond.allow] users` is emptied of its default `root`.
fn agent_at_cortex(
    d: &Path,
    rule: &str,
    playbook: &str,
) -> (
    qsc_tests::channel::CortexDeployment,
    qsc_tests::channel::RunningCortex,
    qsc_tests::alpha::AlphaAgent,
) {
    for sub in ["rules", "playbooks"] {
        std::fs::create_dir(d.join(sub)).expect("mkdir");
    }
    std::fs::write(d.join("rules/e2e.yml"), rule).expect("rule");
    std::fs::write(d.join("playbooks/e2e.yml"), playbook).expect("playbook");
    let rule_id = rule
        .lines()
        .find_map(|line| line.strip_prefix("id: "))
        .expect("the rule's id");
    let cortex = qsc_tests::channel::CortexDeployment::create_with(
        &d.join("cortex"),
        &format!(
            "[detect]\nshipped_rules = false\nrule_dirs = [\"{d}/rules\"]\n\
             [respond]\nmode = \"autonomous\"\nshipped_playbooks = false\n\
             playbook_dirs = [\"{d}/playbooks\"]\n\
             [respond.allow]\nusers = []\n\
             [score.rule_lr]\n\"{rule_id}\" = 1000.0\n",
            d = d.display()
        ),
    );
    let keygen = Command::new(workspace_bin("guardian-alpha"))
        .args(["keygen", "--out"])
        .arg(d.join("agent.key"))
        .output()
        .expect("run keygen");
    assert!(keygen.status.success(), "keygen: {keygen:?}");
    let agent_key = String::from_utf8_lossy(&keygen.stdout).trim().to_owned();
    // AlphaAgent runs with --host-id e2e-test.
    cortex.enroll("e2e-test", "alpha", &agent_key);
    let service = cortex.serve("127.0.0.1:0");
    let config = format!(
        "{}[cortex]\nenabled = true\naddress = \"{}\"\ncortex_public_key = \"{}\"\n\
         key_file = \"{d}/agent.key\"\noutbox_dir = \"{d}/outbox\"\n\
         {}",
        qsc_tests::alpha::config_watching(d),
        service.addr,
        cortex.public_key(),
        respond_section(d),
        d = d.display(),
    );
    let agent = qsc_tests::alpha::AlphaAgent::start(&config, &[]);
    (cortex, service, agent)
}

/// The first action of `playbook` for host `e2e-test` with `status`, waited for.
fn wait_for_action(
    cortex: &qsc_tests::channel::CortexDeployment,
    playbook: &str,
    status: &str,
) -> serde_json::Value {
    let mut found = None;
    let finished = wait_until(Duration::from_secs(30), || {
        found = cortex
            .actions("e2e-test")
            .into_iter()
            .find(|record| record["playbook"] == playbook && record["status"] == status);
        found.is_some()
    });
    assert!(
        finished,
        "no {playbook} action {status}: {:?}",
        cortex.actions("e2e-test")
    );
    found.expect("action record")
}

/// The whole-path kill: any exec whose command line carries the marker is killed.
const MARKER: &str = "314159";
const KILL_RULE: &str = "title: E2E kill trigger\nid: e2e-kill\nstatus: test\n\
    logsource: {product: linux, category: process_creation}\n\
    detection:\n    selection:\n        CommandLine|contains: '314159'\n    condition: selection\n\
    level: high\n";
const KILL_PLAYBOOK: &str =
    "name: e2e-kill\nmode: autonomous\nmatch:\n  rules: [e2e-kill]\nactions:\n  - action: kill\n";

/// The whole path: a real guardian-alpha reports an exec to the real `cortex serve`, a test rule
/// matches it, a test playbook asks for `kill`, the cortex sends the ActionRequest over
/// qsc-channel, the agent executes it behind its guardrails and the ActionReport comes back
/// into the cortex's action record.
#[test]
fn the_agent_executes_actions_sent_over_the_channel() {
    if !root_or_skip("the_agent_executes_actions_sent_over_the_channel") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (cortex, service, agent) = agent_at_cortex(dir.path(), KILL_RULE, KILL_PLAYBOOK);
    let mut victim = ChildGuard(Command::new("sleep").arg(MARKER).spawn().expect("sleep"));
    let pid = victim.0.id();
    // Each entity's incident (host, process, user) may ask once; one of them kills the victim.
    let record = wait_for_action(&cortex, "e2e-kill", "done");
    let status = victim.0.wait().expect("wait for the victim");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    agent.stop();
    drop(service);
    let report: ActionReport =
        serde_json::from_value(record["report"].clone()).expect("the agent's ActionReport");
    assert_eq!(report.outcome, ActionOutcome::Done);
    assert_eq!(report.action_id, record["id"].as_str().unwrap_or_default());
    assert_eq!(pids_of(&report), [pid]);
}

/// Any exec whose command line carries this marker asks for an emergency key rotation.
const ROTATE_MARKER: &str = "271828";
const ROTATE_RULE: &str = "title: E2E rotate trigger\nid: e2e-rotate\nstatus: test\n\
    logsource: {product: linux, category: process_creation}\n\
    detection:\n    selection:\n        CommandLine|contains: '271828'\n    condition: selection\n\
    level: high\n";
const ROTATE_PLAYBOOK: &str = "name: e2e-rotate\nmode: autonomous\nmatch:\n  rules: [e2e-rotate]\n\
    actions:\n  - action: rotate_keys\n";

/// A playbook's `rotate_keys` on the real agent: the action is done with the agent's final
/// report (sent on its new session), the agent's first key is revoked, and once the cortex
/// recorded the new key the agent drops its retired key file.
#[test]
fn a_rotate_keys_playbook_rotates_the_agent_key_through_the_cortex() {
    if !root_or_skip("a_rotate_keys_playbook_rotates_the_agent_key_through_the_cortex") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (cortex, service, agent) = agent_at_cortex(dir.path(), ROTATE_RULE, ROTATE_PLAYBOOK);
    let key_file = dir.path().join("agent.key");
    let first_key = key_hex(&key_file);
    let status = Command::new("sleep")
        .arg(format!("0.{ROTATE_MARKER}"))
        .status()
        .expect("run the trigger");
    assert!(status.success());
    let record = wait_for_action(&cortex, "e2e-rotate", "done");
    let report: ActionReport =
        serde_json::from_value(record["report"].clone()).expect("the agent's ActionReport");
    assert_eq!(report.outcome, ActionOutcome::Done, "{record}");
    let new_key = report.facts["public_key"].as_str().expect("the new key");
    assert_ne!(new_key, first_key);
    let written = report.facts["key_written_mono_ns"]
        .as_u64()
        .expect("key written");
    assert!(report.received_mono_ns.is_some_and(|r| r <= written));
    assert!(written <= report.done_mono_ns);
    assert_eq!(cortex.key_state(&first_key).as_deref(), Some("revoked"));
    let retired = qsc_channel::keys::retired_path(&key_file);
    assert!(
        wait_until(Duration::from_secs(10), || !retired.exists()),
        "the agent kept {} after the cortex recorded its key",
        retired.display()
    );
    assert_ne!(key_hex(&key_file), first_key);
    agent.stop();
    drop(service);
}

const REVOKE_MARKER: &str = "161803";
const REVOKE_RULE: &str = "title: E2E revoke trigger\nid: e2e-revoke\nstatus: test\n\
    logsource: {product: linux, category: process_creation}\n\
    detection:\n    selection:\n        CommandLine|contains: '161803'\n    condition: selection\n\
    level: high\n";
const REVOKE_PLAYBOOK: &str = "name: e2e-revoke\nmode: autonomous\nmatch:\n  rules: [e2e-revoke]\n\
    actions:\n  - action: revoke_credential\n";

/// The first stored event of `kind` from the test host that `pick` accepts.
fn stored_event<T>(
    cortex: &qsc_tests::channel::CortexDeployment,
    pick: impl Fn(qsc_event::EventKind) -> Option<T>,
) -> Option<T> {
    cortex
        .events("e2e-test")
        .into_iter()
        .find_map(|event| pick(event.kind))
}

/// A playbook's `revoke_credential` on the real agent: the account is revoked in the kernel, a
/// login to it is killed and reported as an enforcement, the shadow lock follows as a
/// `response_follow_up` event, and `cortex actions restore-account` lifts it all.
#[test]
fn a_revoke_playbook_denies_the_account_in_the_kernel_until_an_operator_restores_it() {
    if !root_or_skip(
        "a_revoke_playbook_denies_the_account_in_the_kernel_until_an_operator_restores_it",
    ) {
        return;
    }
    let user = TestUser::create();
    let hash = TEST_PASSWORD_HASH;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cortex, service, agent) = agent_at_cortex(dir.path(), REVOKE_RULE, REVOKE_PLAYBOOK);
    // Ends at once: the revocation kills every process of the account.
    let status = Command::new("/bin/true")
        .arg(REVOKE_MARKER)
        .uid(user.uid)
        .gid(user.gid)
        .status()
        .expect("run the trigger as the test user");
    assert!(status.success());
    let record = wait_for_action(&cortex, "e2e-revoke", "done");
    let report: ActionReport =
        serde_json::from_value(record["report"].clone()).expect("the agent's ActionReport");
    assert_eq!(report.facts["mechanism"], "kernel", "{record}");
    assert_eq!(report.facts["uid"], user.uid, "{record}");
    assert_eq!(switch_to(&user).signal(), Some(libc::SIGKILL), "login");

    let login_killed = |kind| match kind {
        qsc_event::EventKind::Enforcement(e)
            if e.action == qsc_event::EnforcementAction::RevokedUidKilled =>
        {
            Some(e.target)
        }
        _ => None,
    };
    let follow_up = |kind| match kind {
        qsc_event::EventKind::ResponseFollowUp(f) => Some(f),
        _ => None,
    };
    assert!(
        wait_until(Duration::from_secs(30), || {
            stored_event(&cortex, login_killed).is_some()
                && stored_event(&cortex, follow_up).is_some()
        }),
        "no revoked_uid_killed enforcement or response_follow_up event stored"
    );
    assert_eq!(
        stored_event(&cortex, login_killed),
        Some(format!("uid {}: switch to it", user.uid))
    );
    let lock = stored_event(&cortex, follow_up).expect("the follow-up event");
    assert_eq!(
        (lock.action_id.as_str(), lock.step.as_str(), lock.outcome),
        (
            record["id"].as_str().expect("id"),
            "persist",
            ActionOutcome::Done
        ),
        "{}",
        lock.detail
    );
    assert_eq!(user.shadow_password(), format!("!{hash}"));

    cortex.cli_ok(&[
        "actions",
        "restore-account",
        "e2e-test",
        &user.name,
        "--operator",
        "e2e-operator",
    ]);
    let restore = wait_for_action(&cortex, "operator", "done");
    assert_eq!(restore["name"], "restore_credential", "{restore}");
    assert_eq!(user.shadow_password(), hash);
    assert!(switch_to(&user).success(), "setpriv after restore");
    agent.stop();
    drop(service);
}

/// The TTL test's address: a connect to it triggers a block of it with a 2 s TTL.
const TTL_ADDR: &str = "127.0.0.3";
const BLOCK_RULE: &str = "title: E2E block trigger\nid: e2e-block\nstatus: test\n\
    logsource: {product: linux, category: network_connection}\n\
    detection:\n    selection:\n        Initiated: 'true'\n        DestinationIp|cidr: '127.0.0.3/32'\n    condition: selection\n\
    level: high\n";
const BLOCK_PLAYBOOK: &str = "name: e2e-block\nmode: autonomous\nmatch:\n  rules: [e2e-block]\n\
    actions:\n  - action: block_ip\n    ttl_s: 2\n";

/// Whether a connect to the TTL test's address is refused by the block (EPERM) rather than by
/// the closed port.
fn connect_is_blocked() -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 3], 9));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
}

/// The agent's own TTL safety net: the cortex blocks an address with a TTL and is then killed,
/// so it cannot roll the block back; the agent unblocks at expiry by itself, and its
/// `response_rollback` event reaches the restarted cortex.
#[test]
fn the_agent_reports_its_own_ttl_rollback_to_the_cortex() {
    if !root_or_skip("the_agent_reports_its_own_ttl_rollback_to_the_cortex") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (cortex, mut service, agent) = agent_at_cortex(dir.path(), BLOCK_RULE, BLOCK_PLAYBOOK);
    assert!(
        wait_until(Duration::from_secs(30), || {
            connect_is_blocked();
            cortex
                .actions("e2e-test")
                .iter()
                .any(|record| record["playbook"] == "e2e-block" && record["status"] == "done")
        }),
        "no e2e-block action done: {:?}",
        cortex.actions("e2e-test")
    );
    service.kill();
    assert!(
        wait_until(Duration::from_secs(10), || !connect_is_blocked()),
        "{TTL_ADDR} still blocked after the TTL with the cortex away"
    );
    let restarted = cortex.serve(&service.addr);
    let rollback = || {
        cortex
            .events("e2e-test")
            .into_iter()
            .find_map(|event| match event.kind {
                qsc_event::EventKind::ResponseRollback(r) => Some(r),
                _ => None,
            })
    };
    assert!(
        wait_until(Duration::from_secs(30), || rollback().is_some()),
        "no response_rollback event stored"
    );
    agent.stop();
    drop(restarted);
    let report = rollback().expect("the rollback event");
    assert_eq!(report.action, "unblock_ip");
    assert_eq!(report.reason, "ttl_expired");
    assert_eq!(report.addr, Some(TTL_ADDR.parse().expect("ip")));
    assert_eq!(report.outcome, ActionOutcome::Done, "{}", report.detail);
}
