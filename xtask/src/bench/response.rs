//! `cargo xtask bench response`: latency of each response action, from the triggering kernel
//! event to the action completed on the host, measured end to end on the real stack.
//!
//! The bench starts the release cortex (bench rules and playbooks, autonomous mode) and the
//! release guardian-alpha inside a bench-created network namespace joined to the root one by a
//! veth pair, so that isolating the agent's namespace never touches this machine's network. For
//! each action, a child process running as a bench-created user connects to a fresh loopback
//! address (one per iteration, so each one opens a new incident on its remote-address entity);
//! a bench rule matches the connect, a bench playbook asks for the action, the agent acts, and
//! the latency (agent's `done_mono_ns` − event's `mono_ns`) is read from `GET /api/actions`.
//! Each iteration is rolled back before the next one. Results go to target/bench/response.json.
//!
//! Each latency is also split into its hops, from the action record's timeline (the cortex's
//! stamps) and the agent's report; the cortex and the agent share this host, so their
//! `CLOCK_MONOTONIC` stamps compare. The agent's emission of the event is its wall-clock
//! `time_ns`, converted with this host's wall − monotonic offset. `QSC_BENCH_ITERATIONS`
//! overrides the iterations per action (for a quick look; the reported figures use 200), and
//! `QSC_BENCH_ACTIONS` (keys such as `revoke,rotate`) measures only those actions. The actions
//! run interleaved: each round measures every action once. The share of CPU time the
//! hypervisor stole during the run (`host_steal_percent`) tells a noisy run from a quiet one.

use std::{
    collections::HashSet,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use qsc_tests::{
    netns::{Netns, NetnsSpec},
    stack::{Api, Layout, Polling, Stack, StackSpec},
};
use serde_json::{Value, json};

use super::host_cpu::HostCpu;
use crate::{ebpf, shell};

/// Iterations per action.
const ITERATIONS: usize = 200;
/// The hops of an action's way from the kernel event to the completed action, in order.
const HOPS: [(&str, &str); 6] = [
    (
        "kernel_to_agent",
        "kernel event → agent emits it (ring buffer, decode, enrich)",
    ),
    (
        "agent_to_cortex",
        "agent emit → batch at cortex ingest (outbox, channel)",
    ),
    (
        "arrival_to_decision",
        "ingest → playbook fired (queue, rules, fusion, decide)",
    ),
    (
        "decision_to_dispatch",
        "playbook → queued for the agent (guardrails, rate limit)",
    ),
    (
        "dispatch_to_agent",
        "queued → agent received the request (session, channel)",
    ),
    (
        "agent_execution",
        "agent received → action done on the host",
    ),
];
/// Steps inside the agent's execution that some actions stamp in their report's facts:
/// (fact, row, what); each row is the time from the agent receiving the request to the stamp.
const STEPS: [(&str, &str, &str); 3] = [
    (
        "key_written_mono_ns",
        "of_which_key_written",
        "agent received → new key on disk (the rest: reconnect with it)",
    ),
    (
        "kernel_denied_mono_ns",
        "of_which_kernel_denied",
        "agent received → the account's uid refused by the kernel",
    ),
    (
        "sessions_ended_mono_ns",
        "of_which_sessions_ended",
        "agent received → the account's processes killed and gone",
    ),
];
const CHANNEL_PORT: u16 = 7543;
const API: &str = "127.0.0.1:7581";
const HOST_ID: &str = "qsc-bench-host";
const BENCH_USER: &str = "qscbench";
/// How long one action may take before the iteration fails.
const ACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How the bench asks the API whether an action finished. Latencies come from the stamps in
/// the action record, not from when the bench sees it, so this changes nothing that is
/// measured, except through the CPU the asking takes from the stack on this 2-core machine:
/// every 5 ms for 100 records (each parsed by the debug-built xtask) took ~40% of a core, and
/// every 25 ms still 33–47%. One iteration creates at most two actions (the action and its
/// rollback), so the 8 newest always hold the one awaited. The first request comes one period
/// after the trigger, when nearly every action is done, so it seldom runs alongside one.
const POLL: Polling = Polling {
    every: Duration::from_millis(25),
    newest: 8,
};

/// One measured action: its name in the API, the bench rule/playbook, the loopback /24 its
/// connects go to, and the key prefix in response.json.
struct Case {
    action: &'static str,
    key: &'static str,
    net: u8,
    /// The seed system's budget (ms); `None` when it had none.
    budget_ms: Option<f64>,
    playbook_action: &'static str,
}

const CASES: &[Case] = &[
    Case {
        action: "kill",
        key: "kill",
        net: 1,
        budget_ms: None,
        playbook_action: "action: kill",
    },
    Case {
        action: "block_ip",
        key: "block_ip",
        net: 2,
        budget_ms: Some(300.0),
        playbook_action: "action: block_ip\n    ttl_s: 1",
    },
    Case {
        action: "isolate",
        key: "isolate",
        net: 3,
        budget_ms: Some(500.0),
        playbook_action: "action: isolate",
    },
    Case {
        action: "revoke_credential",
        key: "revoke",
        net: 4,
        budget_ms: Some(100.0),
        playbook_action: "action: revoke_credential",
    },
    Case {
        action: "rotate_keys",
        key: "rotate",
        net: 5,
        budget_ms: Some(200.0),
        playbook_action: "action: rotate_keys",
    },
];

/// Runs the benchmark (root only).
pub fn run() -> anyhow::Result<()> {
    if !shell::is_root() {
        bail!("the response bench creates a network namespace and a user: run it as root");
    }
    ebpf::build_release()?;
    let bin = shell::target_dir().join("release");
    let out_dir = shell::target_dir().join("bench");
    std::fs::create_dir_all(&out_dir)?;
    // The bench's own state (configs, keys, stores, logs), fresh each run and kept afterwards
    // for inspection.
    let state = out_dir.join("response-state");
    if state.exists() {
        std::fs::remove_dir_all(&state)
            .with_context(|| format!("cannot remove {}", state.display()))?;
    }
    let net = Netns::create(NetnsSpec {
        name: "qsc-bench".into(),
        veth_outside: "qscb0".into(),
        veth_inside: "qscb1".into(),
        outside_ip: "10.231.77.1".into(),
        inside_ip: "10.231.77.2".into(),
    })?;
    let user = BenchUser::create()?;
    let layout = Layout::write(&state, &bin, stack_spec(), &net)?;
    let mut stack = Stack::start(&bin, &layout, &net)?;
    let start = HostCpu::read()?;
    let outcome = measure_all(&layout.api(), &mut stack, user.uid);
    let end = HostCpu::read();
    stack.stop();
    let results = outcome?;
    report(
        &results,
        end?.steal_percent_since(&start),
        &out_dir.join("response.json"),
    )
}

/// The bench's unprivileged account (uid ≥ 1000, so the agent may lock it), removed on drop.
struct BenchUser {
    uid: u32,
}

impl BenchUser {
    fn create() -> anyhow::Result<Self> {
        Self::remove();
        shell::run(Command::new("useradd").args([
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            BENCH_USER,
        ]))?;
        let user = BenchUser {
            uid: uid_of(BENCH_USER)?,
        };
        // A (never matching) password hash, so that locking and unlocking toggle a real `!`.
        shell::run(Command::new("usermod").args(["-p", "$6$qscbench$x", BENCH_USER]))?;
        Ok(user)
    }

    fn remove() {
        let _ = Command::new("userdel")
            .arg(BENCH_USER)
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for BenchUser {
    fn drop(&mut self) {
        Self::remove();
    }
}

fn uid_of(user: &str) -> anyhow::Result<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&user))
        .and_then(|f| f.get(2).and_then(|u| u.parse().ok()))
        .with_context(|| format!("user {user} is not in /etc/passwd"))
}

/// The bench's stack: bench rules and playbooks only, autonomous, rate limit raised, priors
/// that make each fresh remote address (not the host, which sees every iteration) the entity
/// whose incident the playbook acts on. The agent keeps its default ring-buffer batching: the
/// connect records that trigger the actions are of a kind that wakes it at once
/// (`[sensor] wake_at_once`), so no batch timer adds to their latency.
fn stack_spec() -> StackSpec {
    let mut rule_lr = String::new();
    let mut rules = Vec::new();
    let mut playbooks = Vec::new();
    for case in CASES {
        rule_lr.push_str(&format!("\"bench-{}\" = 100.0\n", case.key));
        rules.push(format!(
            "title: Bench {action} trigger\nid: bench-{key}\nstatus: test\n\
             logsource: {{product: linux, category: network_connection}}\n\
             detection:\n    selection:\n        Initiated: 'true'\n        DestinationIp|cidr: '127.78.{net}.0/24'\n    condition: selection\n\
             level: high\n",
            action = case.action,
            key = case.key,
            net = case.net
        ));
        playbooks.push(format!(
            "name: bench-{key}\nmode: autonomous\nmatch:\n  rules: [bench-{key}]\nactions:\n  - {pa}\n",
            key = case.key,
            pa = case.playbook_action
        ));
    }
    StackSpec {
        host_id: HOST_ID.into(),
        channel_port: CHANNEL_PORT,
        api_addr: API.into(),
        rules: rules.join("---\n"),
        playbooks: playbooks.join("---\n"),
        respond: "mode = \"autonomous\"\nmax_actions_per_minute = 10000\n".into(),
        cortex_extra: format!(
            "[score]\ndefault_host_class = \"bench_remote\"\n\
             [score.host_classes.standard]\nprior = 0.001\n\
             [score.host_classes.critical]\nprior = 0.005\n\
             [score.host_classes.bench_host]\nprior = 1e-12\n\
             [score.host_classes.bench_remote]\nprior = 0.9\n\
             [score.hosts]\n\"{HOST_ID}\" = \"bench_host\"\n\
             [score.rule_lr]\n{rule_lr}"
        ),
        alpha_extra: String::new(),
    }
}

/// One completed action: its latency and the time spent in each of [`HOPS`] (ms; none when
/// a stamp is missing).
struct Sample {
    ms: f64,
    hops: [Option<f64>; HOPS.len()],
    /// Received → each of [`STEPS`], when the report stamps it.
    steps: [Option<f64>; STEPS.len()],
}

/// The measured actions of one case, in iteration order.
struct Samples {
    case: &'static Case,
    samples: Vec<Sample>,
    /// Why the action could not be measured, when it could not.
    unmeasured: Option<String>,
}

/// Iterations per action: [`ITERATIONS`], or `QSC_BENCH_ITERATIONS`.
fn iterations() -> anyhow::Result<usize> {
    match std::env::var("QSC_BENCH_ITERATIONS") {
        Ok(text) => text
            .parse()
            .ok()
            .filter(|n| (1..=250).contains(n))
            .with_context(|| format!("QSC_BENCH_ITERATIONS={text}: expected 1..=250")),
        Err(_) => Ok(ITERATIONS),
    }
}

/// The cases to measure: all of [`CASES`], or those `QSC_BENCH_ACTIONS` names (keys, comma
/// separated: `revoke,rotate`).
fn selected_cases() -> anyhow::Result<Vec<&'static Case>> {
    let Ok(text) = std::env::var("QSC_BENCH_ACTIONS") else {
        return Ok(CASES.iter().collect());
    };
    let keys: Vec<&str> = text.split(',').map(str::trim).collect();
    if let Some(unknown) = keys.iter().find(|k| !CASES.iter().any(|c| c.key == **k)) {
        let known: Vec<&str> = CASES.iter().map(|c| c.key).collect();
        bail!(
            "QSC_BENCH_ACTIONS={text}: `{unknown}` is not one of {}",
            known.join(", ")
        );
    }
    Ok(CASES.iter().filter(|c| keys.contains(&c.key)).collect())
}

/// Measures the cases interleaved, one iteration of each per round, so that a noisy stretch
/// of this shared machine falls on every action alike rather than on whichever ran then.
fn measure_all(api: &Api, stack: &mut Stack, uid: u32) -> anyhow::Result<Vec<Samples>> {
    let mut seen = HashSet::new();
    // Actions already in the store (none expected) are not this bench's.
    for record in api.actions(HOST_ID)? {
        seen.insert(record["id"].as_str().unwrap_or_default().to_owned());
    }
    let iterations = iterations()?;
    let mut results: Vec<Samples> = selected_cases()?
        .into_iter()
        .map(|case| Samples {
            case,
            samples: Vec::with_capacity(iterations),
            unmeasured: None,
        })
        .collect();
    for i in 0..iterations {
        for result in results.iter_mut().filter(|r| r.unmeasured.is_none()) {
            stack.check_alive()?;
            let case = result.case;
            match iteration(api, case, i, uid, &mut seen)
                .with_context(|| format!("{} iteration {i}", case.action))?
            {
                Ok(sample) => result.samples.push(sample),
                Err(reason) => result.unmeasured = Some(reason),
            }
        }
        if (i + 1) % 50 == 0 {
            eprintln!("round {}/{iterations}", i + 1);
        }
    }
    Ok(results)
}

/// One trigger → action → rollback; returns the action's latency in ms, or why a completed
/// action carries none.
fn iteration(
    api: &Api,
    case: &Case,
    i: usize,
    uid: u32,
    seen: &mut HashSet<String>,
) -> anyhow::Result<Result<Sample, String>> {
    let addr = format!("127.78.{}.{}", case.net, i + 1);
    let mut child = trigger(case, &addr, uid)?;
    let playbook = format!("bench-{}", case.key);
    let record = api.wait_for_action_polling(HOST_ID, &playbook, seen, ACTION_TIMEOUT, POLL);
    // The child is either killed by the action or has already finished its connect.
    let _ = child.kill();
    let _ = child.wait();
    let record = record?;
    let Some(latency_ns) = record["latency_ns"].as_u64() else {
        return Ok(Err(format!(
            "action {} is done but has no latency (trigger_mono_ns {}, report {})",
            record["id"], record["trigger_mono_ns"], record["report"]
        )));
    };
    let sample = sample(&record, latency_ns);
    rollback(api, case, seen)?;
    Ok(Ok(sample))
}

/// This host's wall clock minus its monotonic clock (ns).
fn wall_minus_mono_ns() -> i128 {
    let read = |clock| {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into the struct it is given.
        unsafe { libc::clock_gettime(clock, &mut now) };
        i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec)
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC)
}

/// The latency of a done action record and its hops, from its timeline and report.
fn sample(record: &Value, latency_ns: u64) -> Sample {
    let stamp = |value: &Value| value.as_u64().map(i128::from);
    let timeline = &record["timeline"];
    let report = &record["report"];
    let emitted = stamp(&timeline["trigger_emitted_ns"]).map(|wall| wall - wall_minus_mono_ns());
    let received = stamp(&report["received_mono_ns"]);
    let stamps = [
        stamp(&record["trigger_mono_ns"]),
        emitted,
        stamp(&timeline["arrived_mono_ns"]),
        stamp(&timeline["decided_mono_ns"]),
        stamp(&timeline["dispatched_mono_ns"]),
        received,
        stamp(&report["done_mono_ns"]),
    ];
    let ms = |from: Option<i128>, to: Option<i128>| Some((to? - from?) as f64 / 1e6);
    let mut hops = [None; HOPS.len()];
    for (hop, pair) in hops.iter_mut().zip(stamps.windows(2)) {
        *hop = ms(pair[0], pair[1]);
    }
    let steps = STEPS.map(|(fact, _, _)| ms(received, stamp(&report["facts"][fact])));
    Sample {
        ms: latency_ns as f64 / 1e6,
        hops,
        steps,
    }
}

/// A child running as the bench user that connects to `addr` (nothing listens there) and, for
/// `kill`, then waits to be killed.
fn trigger(case: &Case, addr: &str, uid: u32) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    let tail = if case.action == "kill" {
        "exec sleep 30"
    } else {
        "exit 0"
    };
    Command::new("bash")
        .arg("-c")
        // A brace group, not a subshell: the connect comes from the process `kill` targets.
        .arg(format!("{{ : </dev/tcp/{addr}/9; }} 2>/dev/null; {tail}"))
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the trigger process")
}

/// Undoes the iteration's action before the next one.
fn rollback(api: &Api, case: &Case, seen: &mut HashSet<String>) -> anyhow::Result<()> {
    let undo_by = match case.action {
        "isolate" => {
            operator_asks(api, &format!("/api/nodes/{HOST_ID}/release"))?;
            "operator"
        }
        "revoke_credential" => {
            operator_asks(
                api,
                &format!("/api/nodes/{HOST_ID}/accounts/{BENCH_USER}/restore"),
            )?;
            "operator"
        }
        "block_ip" => "ttl",
        _ => return Ok(()),
    };
    api.wait_for_action_polling(HOST_ID, undo_by, seen, ACTION_TIMEOUT, POLL)
        .map(drop)
}

/// An operator's undo through the API (release, restore).
fn operator_asks(api: &Api, path: &str) -> anyhow::Result<()> {
    api.post(
        path,
        &json!({"operator": "respbench", "reason": "bench rollback"}),
    )
    .map(drop)
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50 and p99 (nearest rank) of some values, sorted here.
fn p50_p99(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (percentile(&values, 50.0), percentile(&values, 99.0))
}

/// Prints and records where one action's time went: p50/p99 of each hop.
fn breakdown(samples: &Samples, json: &mut serde_json::Map<String, Value>) {
    if samples.samples.is_empty() {
        return;
    }
    println!("\n{} — per hop (ms):", samples.case.action);
    println!("  {:<22} {:>9} {:>9}  what", "hop", "p50", "p99");
    let mut hops = serde_json::Map::new();
    let mut row = |name: &str, what: &str, value: &dyn Fn(&Sample) -> Option<f64>| {
        let values: Vec<f64> = samples.samples.iter().filter_map(value).collect();
        if values.is_empty() {
            return;
        }
        let (p50, p99) = p50_p99(values);
        println!("  {name:<22} {p50:>9.3} {p99:>9.3}  {what}");
        hops.insert(name.into(), json!({"p50_ms": p50, "p99_ms": p99}));
    };
    for (index, (name, what)) in HOPS.iter().enumerate() {
        row(name, what, &|s| s.hops[index]);
    }
    for (index, (_, name, what)) in STEPS.iter().enumerate() {
        row(name, what, &|s| s.steps[index]);
    }
    json.insert(format!("{}_hops", samples.case.key), Value::Object(hops));
}

fn report(results: &[Samples], steal_percent: f64, out: &Path) -> anyhow::Result<()> {
    let mut json = serde_json::Map::new();
    println!(
        "{:<18} {:>6} {:>9} {:>9} {:>9} {:>11} {:>11}",
        "action", "n", "p50 ms", "p99 ms", "max ms", "budget ms", "target ms"
    );
    for Samples {
        case,
        samples,
        unmeasured,
    } in results
    {
        if let Some(reason) = unmeasured {
            println!("{:<18} not measured: {reason}", case.action);
            json.insert(format!("{}_error", case.key), json!(reason));
        }
        let mut sorted: Vec<f64> = samples.iter().map(|s| s.ms).collect();
        sorted.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&sorted, 50.0), percentile(&sorted, 99.0));
        let max = sorted.last().copied().unwrap_or(f64::NAN);
        let budget = case.budget_ms.map_or("-".into(), |b| format!("{b:.0}"));
        let target = case
            .budget_ms
            .map_or("-".into(), |b| format!("{:.0}", b / 10.0));
        println!(
            "{:<18} {:>6} {p50:>9.3} {p99:>9.3} {max:>9.3} {budget:>11} {target:>11}",
            case.action,
            sorted.len()
        );
        json.insert(format!("{}_p50_ms", case.key), json!(p50));
        json.insert(format!("{}_p99_ms", case.key), json!(p99));
        json.insert(format!("{}_max_ms", case.key), json!(max));
        json.insert(format!("{}_count", case.key), json!(sorted.len()));
        if let Some(budget) = case.budget_ms {
            json.insert(format!("{}_budget_ms", case.key), json!(budget));
        }
    }
    for samples in results {
        breakdown(samples, &mut json);
    }
    println!(
        "host: {steal_percent:.2}% of the CPU time during the run was stolen by the hypervisor"
    );
    json.insert("host_steal_percent".into(), json!(steal_percent));
    json.insert(
        "agent_ring_buffer".into(),
        json!("default batching; the triggering connects wake the agent at once (wake_at_once)"),
    );
    std::fs::write(out, serde_json::to_string_pretty(&Value::Object(json))?)?;
    println!("wrote {}", out.display());
    Ok(())
}
