//! The real `guardian-beta` binary against real files in temp trees.

use qsc_event::{Event, EventKind};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new(heal: bool) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("etc");
        std::fs::create_dir_all(tree.join("ssh")).unwrap();
        std::fs::write(tree.join("hosts"), b"127.0.0.1 localhost\n").unwrap();
        std::fs::write(tree.join("ssh/sshd_config"), b"PermitRootLogin no\n").unwrap();
        std::fs::write(tree.join("passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(tree.join("motd"), b"hello\n").unwrap();
        let state = dir.path().join("state");
        let config = dir.path().join("beta.toml");
        let text = format!(
            "host_id = \"test-host\"\nstore = \"{s}/baseline.qsb\"\nkey_file = \"{s}/beta.key\"\n\
             heal_dir = \"{s}/heal\"\nworkers = 2\n[[tree]]\npath = \"{t}\"\ncompliance = true\nheal = {heal}\n",
            s = state.display(),
            t = tree.display()
        );
        std::fs::write(&config, text).unwrap();
        Setup { dir, config }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join("etc").join(name)
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("state/baseline.qsb")
    }

    fn run(&self, args: &[&str]) -> (i32, Vec<Event>, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_guardian-beta"))
            .arg("--config")
            .arg(&self.config)
            .arg("--format")
            .arg("json")
            .args(args)
            .output()
            .unwrap();
        parse(output)
    }
}

fn parse(output: Output) -> (i32, Vec<Event>, String) {
    let stdout = String::from_utf8(output.stdout).unwrap();
    let events = stdout
        .lines()
        .map(|l| Event::from_json(l.as_bytes()).unwrap())
        .collect();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    (output.status.code().unwrap_or(-1), events, stderr)
}

fn changes_of<'a>(events: &'a [Event], path: &Path) -> Option<&'a [String]> {
    let key = path.display().to_string();
    events.iter().find_map(|e| match &e.kind {
        EventKind::IntegrityFileChanged(c) if c.path == key => Some(c.changes.as_slice()),
        _ => None,
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn help_explains_the_commands() {
    let output = Command::new(env!("CARGO_BIN_EXE_guardian-beta"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    for word in ["baseline", "watch", "backup", "cert", "Exit status"] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
}

#[test]
fn check_reports_every_kind_of_change() {
    let setup = Setup::new(false);
    let (code, events, stderr) = setup.run(&["baseline", "init"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(events.is_empty());
    let (code, events, stderr) = setup.run(&["baseline", "check"]);
    assert_eq!((code, events.len()), (0, 0), "{stderr} {events:?}");

    std::fs::write(setup.path("hosts"), b"10.6.6.6 localhost\n").unwrap();
    std::fs::set_permissions(
        setup.path("ssh/sshd_config"),
        PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    std::fs::remove_file(setup.path("motd")).unwrap();
    std::fs::write(
        setup.path("ssh/authorized_keys"),
        b"ssh-ed25519 AAAA attacker\n",
    )
    .unwrap();
    // Symlink swap: the real file is replaced by a link to an attacker-chosen target.
    std::fs::remove_file(setup.path("passwd")).unwrap();
    std::os::unix::fs::symlink("/tmp/evil-passwd", setup.path("passwd")).unwrap();
    let xattr_ok = xattr_set(&setup.path("ssh"), "user.qsc-test", b"1");

    let (code, events, _) = setup.run(&["baseline", "check"]);
    assert_eq!(code, 1);
    let hosts = changes_of(&events, &setup.path("hosts")).unwrap();
    assert!(hosts.contains(&"content".to_string()), "{hosts:?}");
    assert_eq!(
        changes_of(&events, &setup.path("ssh/sshd_config")).unwrap(),
        ["mode", "ctime"]
    );
    let passwd = changes_of(&events, &setup.path("passwd")).unwrap();
    assert!(passwd.contains(&"type".to_string()) && passwd.contains(&"link_target".to_string()));
    if xattr_ok {
        assert!(
            changes_of(&events, &setup.path("ssh"))
                .unwrap()
                .contains(&"xattrs".to_string())
        );
    }
    let removed = events.iter().any(|e| {
        matches!(&e.kind, EventKind::IntegrityFileRemoved(r) if r.path == setup.path("motd").display().to_string())
    });
    let added = events.iter().any(|e| {
        matches!(&e.kind, EventKind::IntegrityFileAdded(a) if a.path == setup.path("ssh/authorized_keys").display().to_string())
    });
    assert!(removed && added, "{events:?}");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) -> bool {
    match xattr::set(path, name, value) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("not testing xattrs: this file system refuses user xattrs ({e})");
            false
        }
    }
}

#[test]
fn owner_change_is_reported() {
    if !is_root() {
        eprintln!("skipping owner_change_is_reported: needs root to chown");
        return;
    }
    let setup = Setup::new(false);
    assert_eq!(setup.run(&["baseline", "init"]).0, 0);
    std::os::unix::fs::chown(setup.path("hosts"), Some(4242), Some(4243)).unwrap();
    let (code, events, _) = setup.run(&["baseline", "check"]);
    assert_eq!(code, 1);
    assert_eq!(
        changes_of(&events, &setup.path("hosts")).unwrap(),
        ["uid", "gid", "ctime"]
    );
}

#[test]
fn update_accepts_changes_and_rehashes_only_changed_files() {
    let setup = Setup::new(false);
    assert_eq!(setup.run(&["baseline", "init"]).0, 0);
    std::fs::write(setup.path("motd"), b"maintenance tonight\n").unwrap();
    let (code, events, stderr) = setup.run(&["baseline", "update"]);
    assert_eq!(code, 1, "accepted changes are listed: {stderr}");
    assert_eq!(events.len(), 1);
    assert!(stderr.contains("hashed_files=1"), "{stderr}");
    let (code, events, _) = setup.run(&["baseline", "check", "--full"]);
    assert_eq!((code, events.len()), (0, 0), "{events:?}");
}

#[test]
fn show_prints_the_baseline_and_size_cap_is_reported() {
    let setup = Setup::new(false);
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text = text.replace("workers = 2", "workers = 2\nmax_file_size = 10");
    std::fs::write(&setup.config, text).unwrap();
    let (code, _, stderr) = setup.run(&["baseline", "init"]);
    assert_eq!(code, 0);
    assert!(
        stderr.contains("not hashed") && stderr.contains("exceeds max_file_size"),
        "{stderr}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_guardian-beta"))
        .arg("--config")
        .arg(&setup.config)
        .args(["baseline", "show"])
        .output()
        .unwrap();
    let baseline: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let hosts = &baseline["entries"][setup.path("hosts").display().to_string()];
    assert_eq!(hosts["file_type"], "file");
    assert!(
        hosts["not_hashed"]
            .as_str()
            .unwrap()
            .contains("max_file_size")
    );
    assert_eq!(baseline["host_id"], "test-host");
}

#[test]
fn init_refuses_to_overwrite_a_store() {
    let setup = Setup::new(false);
    assert_eq!(setup.run(&["baseline", "init"]).0, 0);
    let (code, _, stderr) = setup.run(&["baseline", "init"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(setup.run(&["baseline", "init", "--force"]).0, 0);
}

fn assert_tampered(setup: &Setup) {
    let (code, events, stderr) = setup.run(&["baseline", "check"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        matches!(events.as_slice(), [e] if e.kind.name() == "integrity_baseline_tampered"),
        "{events:?} {stderr}"
    );
}

#[test]
fn store_tampering_is_reported() {
    let setup = Setup::new(false);
    assert_eq!(setup.run(&["baseline", "init"]).0, 0);
    let original = std::fs::read(setup.store()).unwrap();

    let mut edited = original.clone();
    let middle = edited.len() / 2;
    edited[middle] ^= 1;
    std::fs::write(setup.store(), &edited).unwrap();
    assert_tampered(&setup);

    std::fs::write(setup.store(), &original[..original.len() - 10]).unwrap();
    assert_tampered(&setup);

    // Swap: a store made with another key (another agent's state directory).
    let other = Setup::new(false);
    assert_eq!(other.run(&["baseline", "init"]).0, 0);
    std::fs::copy(other.store(), setup.store()).unwrap();
    assert_tampered(&setup);

    std::fs::remove_file(setup.store()).unwrap();
    assert_tampered(&setup);

    std::fs::write(setup.store(), &original).unwrap();
    assert_eq!(setup.run(&["baseline", "check"]).0, 0);
}

#[test]
fn check_heals_marked_files_with_exact_bytes_and_metadata() {
    let setup = Setup::new(true);
    let sshd = setup.path("ssh/sshd_config");
    std::fs::set_permissions(&sshd, PermissionsExt::from_mode(0o600)).unwrap();
    assert_eq!(setup.run(&["baseline", "init"]).0, 0);
    let before = std::fs::metadata(&sshd).unwrap();

    std::fs::write(&sshd, b"PermitRootLogin yes\n").unwrap();
    std::fs::set_permissions(&sshd, PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::remove_file(setup.path("hosts")).unwrap();
    let (code, events, _) = setup.run(&["baseline", "check"]);
    assert_eq!(code, 1);
    let healed: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::HealDone(h) => Some(h.path.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(healed.len(), 2, "{events:?}");
    assert_eq!(std::fs::read(&sshd).unwrap(), b"PermitRootLogin no\n");
    assert_eq!(
        std::fs::read(setup.path("hosts")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
    let after = std::fs::metadata(&sshd).unwrap();
    assert_eq!(after.permissions().mode() & 0o7777, 0o600);
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());
    let (code, events, _) = setup.run(&["baseline", "check"]);
    assert_eq!(
        (code, events.len()),
        (0, 0),
        "healed state is the baseline: {events:?}"
    );
}

#[test]
fn backup_verify_from_the_command_line() {
    let setup = Setup::new(false);
    let backup = setup.dir.path().join("backup");
    std::fs::create_dir_all(&backup).unwrap();
    std::fs::write(backup.join("db.sql"), b"insert 1;").unwrap();
    std::fs::write(backup.join("files.tar"), b"tar").unwrap();
    let manifest = setup.dir.path().join("backup.sha3");
    let backup_arg = backup.display().to_string();
    let manifest_arg = manifest.display().to_string();
    let (code, _, stderr) = setup.run(&[
        "backup",
        "manifest",
        "--dir",
        &backup_arg,
        "--manifest",
        &manifest_arg,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let verify = [
        "backup",
        "verify",
        "--dir",
        &backup_arg,
        "--manifest",
        &manifest_arg,
    ];
    assert_eq!(setup.run(&verify).0, 0);
    std::fs::write(backup.join("db.sql"), b"insert 2;").unwrap();
    std::fs::remove_file(backup.join("files.tar")).unwrap();
    let (code, events, _) = setup.run(&verify);
    assert_eq!(code, 1);
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.name()).collect();
    assert_eq!(kinds, ["backup_corrupt", "backup_missing"]);
}

#[test]
fn bad_config_names_the_key() {
    let setup = Setup::new(false);
    std::fs::write(&setup.config, "max_file_size = 0\n").unwrap();
    let (code, _, stderr) = setup.run(&["baseline", "check"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("max_file_size"), "{stderr}");
}

#[test]
fn watch_stops_cleanly_on_sigterm_after_reporting_a_change() {
    let setup = Setup::new(false);
    let (code, _, stderr) = setup.run(&["baseline", "init"]);
    assert_eq!(code, 0, "{stderr}");
    let watch = Command::new(env!("CARGO_BIN_EXE_guardian-beta"))
        .arg("--config")
        .arg(&setup.config)
        .args(["--format", "json", "watch"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Give the watcher time to set its inotify watches, then change a file.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    std::fs::write(setup.path("motd"), b"changed\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    let (code, events, stderr) = parse(watch.wait_with_output().unwrap());
    assert_eq!(
        code, 1,
        "exit status 1: findings were reported, then a clean stop\n{stderr}"
    );
    assert!(
        changes_of(&events, &setup.path("motd")).is_some(),
        "{stderr}"
    );
}
