//! The web console in a real browser: Debian's headless Chromium, driven over WebDriver
//! (chromedriver) against the real `cortex serve`. The seed scenario ("credential stuffing +
//! exfiltration") is replayed over the channel by in-test agents; an assisted-mode playbook
//! holds an isolation; an operator logs in, reads the incident's evidence, approves the action,
//! sees it executed by the (in-test) agent and the approval in the audit chain under their
//! name. A viewer is refused, and so is a forged form without the session's CSRF token.
//!
//! Set `QSC_CONSOLE_SCREENSHOTS=DIR` to keep PNG screenshots of the fleet, incident and actions
//! pages (the README's come from here).

#[allow(dead_code)] // the harness is shared with the other service tests
mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, Deployment, eventually, fixture, of_source};
use fantoccini::{Client, ClientBuilder, Locator};
use qsc_channel::delivery::{CommandHandler, CommandStatus};
use qsc_event::{ActionOutcome, ActionReport, ActionRequest, mono_now_ns};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const OPERATOR: (&str, &str) = ("alice", "alice-console-password");
const VIEWER: (&str, &str) = ("victor", "victor-console-password");

/// Whether the browser is there; without it the test skips, unless root tests are required
/// (CI), where a missing browser is a failure of `cargo xtask setup`.
fn browser_or_skip() -> bool {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return true;
    }
    assert!(
        std::env::var_os("QSC_REQUIRE_ROOT_TESTS").is_none(),
        "{CHROMIUM} or {CHROMEDRIVER} is missing (cargo xtask setup installs chromium and \
         chromium-driver)"
    );
    eprintln!(
        "skipping: {CHROMIUM} or {CHROMEDRIVER} is missing (cargo xtask setup installs them)"
    );
    false
}

/// The in-test guardian-alpha: carries out every command and reports it done.
struct Obedient;

impl CommandHandler for Obedient {
    fn execute(&mut self, _id: u64, body: &[u8]) -> (CommandStatus, Vec<u8>) {
        let Ok(request) = serde_json::from_slice::<ActionRequest>(body) else {
            return (CommandStatus::Refused, b"not an action request".to_vec());
        };
        let report = ActionReport {
            action_id: request.action_id,
            outcome: ActionOutcome::Done,
            detail: "test agent: done".into(),
            done_mono_ns: mono_now_ns(),
            received_mono_ns: None,
            facts: serde_json::Map::new(),
        };
        let body = serde_json::to_vec(&report).unwrap_or_default();
        (CommandStatus::Succeeded, body)
    }
}

/// chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
    profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profile: tempfile::tempdir().expect("profile dir"),
        }
    }

    async fn browser(&self) -> Client {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,1000",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", self.profile.path().display())])
        .collect::<Vec<_>>();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": CHROMIUM, "args": args}),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("WebDriver session with headless chromium")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A deployment in assisted mode with one playbook (isolate on a critical incident) and two
/// console users.
fn deployment() -> Deployment {
    let deployment = Deployment::new(0);
    let books = deployment.path("playbooks");
    std::fs::create_dir_all(&books).expect("playbook dir");
    std::fs::write(
        books.join("isolate.yml"),
        "name: console-isolate\nmatch: {min_severity: critical}\nactions: [{action: isolate, ttl_s: 3600}]\n",
    )
    .expect("playbook");
    let extra = format!(
        "[respond]\nmode = \"assisted\"\nshipped_playbooks = false\nplaybook_dirs = [\"{}\"]\n\
         [console]\nusers_file = \"{}\"\n",
        books.display(),
        deployment.path("users.toml").display()
    );
    let mut config = std::fs::read_to_string(&deployment.config).expect("config");
    config.push_str(&extra);
    std::fs::write(&deployment.config, config).expect("config");
    for ((name, password), role) in [(OPERATOR, "operator"), (VIEWER, "viewer")] {
        add_user(&deployment, name, password, role);
    }
    deployment
}

fn add_user(deployment: &Deployment, name: &str, password: &str, role: &str) {
    use std::io::Write;
    let mut child = Command::new(common::BIN)
        .arg("--config")
        .arg(&deployment.config)
        .args(["users", "add", name, "--role", role])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("cortex users add");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{password}").expect("password");
    drop(stdin);
    assert!(child.wait().expect("wait").success(), "users add {name}");
}

/// Replays the seed scenario; the alpha agent stays connected (to carry out the action).
async fn replay(deployment: &Deployment, cortex: &common::Cortex) -> Agent {
    let events = fixture("seed_scenario.jsonl");
    let alpha_key = deployment.enroll("web-01", "alpha");
    let beta_key = deployment.enroll("web-01", "beta");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let alpha = Agent::start_with(
        &deployment.path("outbox-alpha"),
        &cortex.channel,
        deployment.cortex_key(),
        alpha_key,
        Obedient,
    );
    alpha.send(&of_source(&events, "alpha"));
    alpha.wait_acked(WAIT).await;
    let beta = Agent::start(
        &deployment.path("outbox-beta"),
        &cortex.channel,
        deployment.cortex_key(),
        beta_key,
    );
    beta.send(&of_source(&events, "beta"));
    beta.wait_acked(WAIT).await;
    beta.stop().await;
    alpha
}

async fn text(browser: &Client, css: &str) -> String {
    element(browser, css)
        .await
        .text()
        .await
        .expect("element text")
}

async fn element(browser: &Client, css: &str) -> fantoccini::elements::Element {
    match browser.find(Locator::Css(css)).await {
        Ok(element) => element,
        Err(e) => {
            let url = browser.current_url().await.map(|u| u.to_string());
            let page = browser.source().await.unwrap_or_default();
            panic!("no element {css} at {url:?}: {e}\n{page}")
        }
    }
}

/// Navigations Chromium may abort: other tests on this machine add and remove network
/// interfaces and addresses (network namespaces, loopback aliases), and Chromium then drops
/// what was in flight with ERR_NETWORK_CHANGED. Such a navigation is retried.
const NAVIGATION_TRIES: usize = 5;

async fn network_changed(browser: &Client) -> bool {
    browser
        .source()
        .await
        .is_ok_and(|page| page.contains("ERR_NETWORK_CHANGED"))
}

/// Clicks `css` (a link or a form button) and waits for the page it leads to.
async fn click(browser: &Client, css: &str) {
    for _ in 0..NAVIGATION_TRIES {
        element(browser, css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
        if !network_changed(browser).await {
            return;
        }
        browser.back().await.expect("back after a network change");
    }
    panic!("click {css}: Chromium kept reporting a network change");
}

async fn open(browser: &Client, base: &str, path: &str) {
    for _ in 0..NAVIGATION_TRIES {
        browser
            .goto(&format!("{base}{path}"))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
        if !network_changed(browser).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("open {path}: Chromium kept reporting a network change");
}

async fn log_in(browser: &Client, base: &str, (name, password): (&str, &str)) {
    open(browser, base, "/console/login").await;
    element(browser, "#name")
        .await
        .send_keys(name)
        .await
        .expect("type name");
    element(browser, "#password")
        .await
        .send_keys(password)
        .await
        .expect("type password");
    click(browser, "#login").await;
    let url = left_login_page(browser).await;
    let page = browser.source().await.unwrap_or_default();
    assert_eq!(
        url.path(),
        "/console/",
        "{name} is logged in and sees the fleet; the page: {page}"
    );
}

/// Chromedriver may answer a click on a submit button before the navigation it starts has
/// committed, so the login page's URL is read until it changes (or a few seconds pass).
async fn left_login_page(browser: &Client) -> url::Url {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let url = browser.current_url().await.expect("url");
        if url.path() != "/console/login" || Instant::now() > deadline {
            return url;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn screenshot(browser: &Client, name: &str) {
    let Some(dir) = std::env::var_os("QSC_CONSOLE_SCREENSHOTS").map(PathBuf::from) else {
        return;
    };
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    std::fs::write(dir.join(name), png).expect("write screenshot");
}

/// Submits a hand-made form (as a hostile page would) and returns the page's message.
async fn forge(browser: &Client, action: &str, fields: Value) -> String {
    for _ in 0..NAVIGATION_TRIES {
        browser
            .execute(
                "const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];\
                 for (const [k, v] of Object.entries(arguments[1])) {\
                   const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i); }\
                 document.body.appendChild(f); f.submit();",
                vec![json!(action), fields.clone()],
            )
            .await
            .expect("forge form");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(element) = browser.find(Locator::Css("#message")).await {
                return element.text().await.expect("message");
            }
            if network_changed(browser).await {
                browser.back().await.expect("back after a network change");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    panic!("no answer page for the forged form to {action}");
}

/// Reads `/console/stream` with the session cookie until a `change` event (or a minute).
fn sse_change(api: String, session: String) -> std::thread::JoinHandle<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(&api).expect("connect console");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(
        stream,
        "GET /console/stream HTTP/1.1\r\nHost: {api}\r\nCookie: qsc_session={session}\r\n\r\n"
    )
    .expect("request stream");
    let mut lines = BufReader::new(stream);
    let mut ready = String::new();
    while !ready.contains(": ready") {
        lines.read_line(&mut ready).expect("stream is ready");
    }
    std::thread::spawn(move || {
        let mut seen = String::new();
        while !seen.contains("event: change") && lines.read_line(&mut seen).is_ok_and(|n| n > 0) {}
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_triages_the_seed_incident_and_approves_its_held_action_in_chromium() {
    if !browser_or_skip() {
        return;
    }
    let deployment = deployment();
    let cortex = deployment.serve();
    let alpha = replay(&deployment, &cortex).await;
    let held = eventually(WAIT, || {
        let held = cortex.get_json("/api/actions?status=held");
        held.as_array()?.first()?["id"].as_str().map(str::to_owned)
    })
    .await;
    let base = format!("http://{}", cortex.api);
    let driver = Driver::start();
    let browser = driver.browser().await;

    // The operator: fleet, the incident with its evidence, the held action approved.
    log_in(&browser, &base, OPERATOR).await;
    let fleet = text(&browser, "#fleet").await;
    assert!(
        fleet.contains("web-01") && fleet.contains("connected"),
        "{fleet}"
    );
    screenshot(&browser, "console-fleet.png").await;

    open(&browser, &base, "/console/incidents").await;
    let link = browser
        .find(Locator::LinkText("credential stuffing + exfiltration"))
        .await
        .expect("the seed incident is listed")
        .attr("href")
        .await
        .expect("link target")
        .expect("href");
    open(&browser, &base, &link).await;
    assert_eq!(text(&browser, "#severity").await, "CRITICAL");
    let posterior: f64 = text(&browser, "#posterior")
        .await
        .parse()
        .expect("posterior");
    let prior: f64 = text(&browser, "#prior").await.parse().expect("prior");
    assert!(
        posterior > 0.9 && prior < posterior,
        "prior {prior}, posterior {posterior}"
    );
    let evidence = browser
        .find_all(Locator::Css("#evidence tbody tr"))
        .await
        .expect("evidence rows");
    assert!(evidence.len() >= 3, "several rules contributed");
    let ratios = browser
        .find_all(Locator::Css("#evidence td.lr"))
        .await
        .expect("likelihood ratios");
    for ratio in ratios {
        let lr: f64 = ratio.text().await.expect("lr").parse().expect("lr number");
        assert!(lr > 1.0, "evidence raises the odds: {lr}");
    }
    element(&browser, "svg.chart path.line").await;
    let timeline = text(&browser, "#timeline").await;
    for kind in [
        "auth_failure",
        "auth_success",
        "net_volume",
        "backup_corrupt",
    ] {
        assert!(
            timeline.contains(kind),
            "{kind} in the timeline: {timeline}"
        );
    }
    screenshot(&browser, "console-incident.png").await;

    open(&browser, &base, "/console/actions").await;
    screenshot(&browser, "console-actions.png").await;
    click(
        &browser,
        &format!("tr[data-action='{held}'] button.approve"),
    )
    .await;
    eventually(WAIT, || {
        let action = cortex.get_json(&format!("/api/actions/{held}"));
        (action["status"] == "done").then_some(())
    })
    .await;
    open(&browser, &base, "/console/actions").await;
    assert_eq!(
        cortex.metric("cortex_actions_total{action=\"isolate\",status=\"done\"}"),
        1.0
    );
    let row = text(&browser, &format!("#recent tr[data-action='{held}']")).await;
    assert!(
        row.contains("done") && row.contains("alice approved"),
        "{row}"
    );
    open(&browser, &base, "/console/audit?q=approved").await;
    assert!(text(&browser, "#chain-status").await.contains("intact"));
    let audit = text(&browser, "#audit").await;
    assert!(
        audit.contains("operator:alice") && audit.contains(&held),
        "{audit}"
    );

    // A forged form without the session's CSRF token changes nothing.
    let refused = forge(
        &browser,
        "/console/nodes/web-01/release",
        json!({"reason": "forged"}),
    )
    .await;
    assert!(refused.contains("CSRF"), "{refused}");

    // A viewer sees everything, cannot approve even with a valid token.
    open(&browser, &base, "/console/").await;
    click(&browser, "form.logout button").await;
    log_in(&browser, &base, VIEWER).await;
    let csrf = element(&browser, "form.logout input[name=csrf]")
        .await
        .attr("value")
        .await
        .expect("csrf")
        .expect("csrf value");
    let refused = forge(
        &browser,
        "/console/nodes/web-01/release",
        json!({"csrf": csrf, "reason": "viewer tries"}),
    )
    .await;
    assert!(refused.contains("viewer"), "{refused}");
    assert_eq!(
        cortex.get_json("/api/nodes")[0]["state"],
        "ISOLATED",
        "nothing released by the refused forms"
    );

    // The operator releases the isolated host; a live-update stream reports the change.
    click(&browser, "form.logout button").await;
    log_in(&browser, &base, OPERATOR).await;
    let session = browser
        .get_named_cookie("qsc_session")
        .await
        .expect("session cookie");
    let stream = sse_change(cortex.api.clone(), session.value().to_owned());
    open(&browser, &base, "/console/actions").await;
    element(&browser, "#isolated input[name=reason]")
        .await
        .send_keys("reimaged and checked")
        .await
        .expect("type reason");
    click(&browser, "#isolated button").await;
    eventually(WAIT, || {
        (cortex.get_json("/api/nodes")[0]["state"] == "NOMINAL").then_some(())
    })
    .await;
    let seen = tokio::task::spawn_blocking(move || stream.join())
        .await
        .expect("join")
        .expect("stream thread");
    assert!(seen.contains("event: change"), "{seen}");
    open(&browser, &base, "/console/audit?q=released").await;
    assert!(text(&browser, "#audit").await.contains("operator:alice"));

    browser.close().await.expect("close browser");
    alpha.stop().await;
    cortex.stop();
}
