//! Autonomic response as one run of the real programs: a network-namespace "host" runs a real
//! guardian-alpha whose uplink reaches a real `cortex serve` (in the test's namespace, which
//! plays the peer) over a veth pair. A process inside the host trips a test rule, the cortex's
//! autonomous playbook isolates the host, and the test checks that the host can no longer reach
//! a peer service while its cortex channel still delivers events and the node is ISOLATED; then
//! two operators release it through the API and the peer is reachable again, the node NOMINAL.
//! The namespace (with its nftables tables), the veth pair and both programs are removed by Drop
//! guards however the test ends. Root only.

use std::{
    collections::HashSet,
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use qsc_tests::{
    channel::wait_until,
    netns::{Netns, NetnsSpec},
    root_or_skip,
    stack::{Api, Layout, Stack, StackSpec},
};
use serde_json::{Value, json};

const HOST_ID: &str = "qsc-r2-host";
const CHANNEL_PORT: u16 = 17_590;
const API_ADDR: &str = "127.0.0.1:17591";
/// How long the cortex may take to decide and the agent to act and report. Generous: the agent
/// reports every process of this (shared, busy) machine, and the debug cortex stores them all
/// before it reads the agent's answer from the same session.
const ACTION_TIMEOUT: Duration = Duration::from_secs(120);

const RULE: &str = "title: QSC netns isolation trigger\nid: r2-isolate\nstatus: test\n\
    logsource: {product: linux, category: process_creation}\n\
    detection:\n    selection:\n        Image|endswith: '/qsc-r2-trigger'\n    condition: selection\n\
    level: critical\n";

const PLAYBOOK: &str = "name: r2-isolate\nmode: autonomous\nmatch:\n  rules: [r2-isolate]\n\
    actions:\n  - action: isolate\n";

fn spec() -> StackSpec {
    StackSpec {
        host_id: HOST_ID.into(),
        channel_port: CHANNEL_PORT,
        api_addr: API_ADDR.into(),
        rules: RULE.into(),
        playbooks: PLAYBOOK.into(),
        // Everything else would be held; releasing needs two operators; answers may take as
        // long as ACTION_TIMEOUT.
        respond: "mode = \"assisted\"\ntwo_person_release = true\ndispatch_timeout_ms = 120000\n"
            .into(),
        cortex_extra: format!(
            "[score.host_classes.standard]\nprior = 0.001\n\
             [score.host_classes.r2_host]\nprior = 0.5\n\
             [score.hosts]\n\"{HOST_ID}\" = \"r2_host\"\n\
             [score.rule_lr]\n\"r2-isolate\" = 100.0\n"
        ),
        alpha_extra: "[metrics]\ninterval_s = 0\n[forensics]\nscan_interval_s = 0\n".into(),
    }
}

/// A copy of /bin/true named `name` in `dir`: its exec is what the rules look for.
fn marker_program(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy("/bin/true", &path).expect("copy /bin/true");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The node state the cortex reports for the host (NOMINAL when it lists none).
fn node_state(api: &Api) -> String {
    let nodes = api.get("/api/nodes").expect("GET /api/nodes");
    nodes
        .as_array()
        .and_then(|n| n.iter().find(|n| n["host"] == HOST_ID))
        .and_then(|n| n["state"].as_str())
        .unwrap_or("NOMINAL")
        .to_owned()
}

/// Every `r2-isolate` action has left `dispatched`/`held`; one of them is `done`.
fn isolated_by_playbook(api: &Api) -> Option<Value> {
    let actions = api.actions(HOST_ID).ok()?;
    let ours: Vec<&Value> = actions
        .iter()
        .filter(|a| a["playbook"] == "r2-isolate")
        .collect();
    let settled = ours
        .iter()
        .all(|a| !matches!(a["status"].as_str(), Some("dispatched" | "held")));
    let done = ours.iter().find(|a| a["status"] == "done");
    settled.then(|| done.map(|a| (*a).clone())).flatten()
}

/// True once a `process_exec` of `program` (run inside the host after `since_ns`) is stored.
fn exec_reached_the_cortex(api: &Api, program: &Path, since_ns: u64) -> bool {
    let path = format!("/api/events?host={HOST_ID}&kind=process_exec&since={since_ns}&limit=1000");
    api.get(&path)
        .map(|events| events.to_string().contains(&*program.to_string_lossy()))
        .unwrap_or(false)
}

#[test]
fn an_isolated_netns_host_keeps_only_its_cortex_channel_until_two_operators_release_it() {
    if !root_or_skip(
        "an_isolated_netns_host_keeps_only_its_cortex_channel_until_two_operators_release_it",
    ) {
        return;
    }
    let netns = Netns::create(NetnsSpec {
        name: HOST_ID.into(),
        veth_outside: "qr2o".into(),
        veth_inside: "qr2i".into(),
        outside_ip: "10.231.90.1".into(),
        inside_ip: "10.231.90.2".into(),
    })
    .expect("create the host namespace");
    let peer_ip = netns.spec.outside_ip.clone();
    let service = TcpListener::bind((peer_ip.as_str(), 0)).expect("bind the peer service");
    let service_port = service.local_addr().expect("service addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = qsc_tests::bin_dir();
    let layout = Layout::write(&dir.path().join("stack"), &bin, spec(), &netns).expect("layout");
    let mut stack = Stack::start(&bin, &layout, &netns).expect("start cortex and agent");
    let api = layout.api();
    assert!(
        netns.can_connect(&peer_ip, service_port),
        "the peer is reachable before"
    );
    assert_eq!(node_state(&api), "NOMINAL");

    // A process inside the host trips the rule; the playbook isolates the host.
    let trigger = marker_program(dir.path(), "qsc-r2-trigger");
    let status = netns.command(&trigger).status().expect("run the trigger");
    assert!(status.success());
    let mut isolation = None;
    assert!(
        wait_until(ACTION_TIMEOUT, || {
            isolation = isolated_by_playbook(&api);
            isolation.is_some()
        }),
        "no isolate action completed: {:?}; logs in {}",
        api.actions(HOST_ID),
        stack.logs().display()
    );
    let isolation = isolation.unwrap_or_default();
    assert_eq!(isolation["report"]["facts"]["table"], "inet qsc_isolate");
    stack.check_alive().expect("cortex and agent alive");

    assert!(
        !netns.can_connect(&peer_ip, service_port),
        "the peer is cut off"
    );
    assert_eq!(node_state(&api), "ISOLATED");
    // The channel is kept: a new exec inside the host still reaches the cortex.
    let alive = marker_program(dir.path(), "qsc-r2-alive");
    let since = now_ns();
    let status = netns.command(&alive).status().expect("run the probe");
    assert!(status.success());
    assert!(
        wait_until(ACTION_TIMEOUT, || exec_reached_the_cortex(
            &api, &alive, since
        )),
        "the isolated agent's events stopped reaching the cortex"
    );

    // Two distinct operators release it.
    let release = format!("/api/nodes/{HOST_ID}/release");
    let (status, body) = api
        .post(
            &release,
            &json!({"operator": "alice", "reason": "netns test: first approval"}),
        )
        .expect("first release approval");
    assert_eq!(status, 202, "{body}");
    assert_eq!(node_state(&api), "ISOLATED", "one operator is not enough");
    let (status, body) = api
        .post(
            &release,
            &json!({"operator": "bob", "reason": "netns test: second approval"}),
        )
        .expect("second release approval");
    assert_eq!(status, 200, "{body}");
    let mut seen = HashSet::new();
    api.wait_for_action(HOST_ID, "operator", &mut seen, ACTION_TIMEOUT)
        .expect("the agent released the host");
    assert!(
        netns.can_connect(&peer_ip, service_port),
        "the peer is reachable again"
    );
    assert_eq!(node_state(&api), "NOMINAL");
    stack.check_alive().expect("cortex and agent alive");
}
