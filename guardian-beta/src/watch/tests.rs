//! Real inotify on temp trees: changes, a genuine queue overflow, the periodic full check as a
//! safety net for changes inotify cannot see, and auto-heal while watching.

use super::*;
use crate::config::{Config, TreeConfig};
use crate::store::StoreKeys;
use indicatif::ProgressBar;
use std::io::Write;

struct Fixture {
    dir: tempfile::TempDir,
    config: Config,
}

impl Fixture {
    fn new(heal: bool, full_check_interval_s: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("app.conf"), b"listen 80\n").unwrap();
        std::fs::write(tree.join("sub/nested.conf"), b"x = 1\n").unwrap();
        let state = dir.path().join("state");
        let mut config = Config {
            host_id: Some("test-host".into()),
            store: state.join("baseline.qsb"),
            key_file: state.join("beta.key"),
            heal_dir: state.join("heal"),
            ..Config::default()
        };
        config.trees.push(TreeConfig {
            path: tree,
            exclude: Vec::new(),
            compliance: false,
            heal,
            one_file_system: true,
        });
        config.watch.full_check_interval_s = full_check_interval_s;
        Fixture { dir, config }
    }

    fn tree(&self, name: &str) -> PathBuf {
        self.config.trees[0].path.join(name)
    }

    fn integrity(&self) -> Integrity<'_> {
        let keys = StoreKeys::load_or_create(&self.config.key_file).unwrap();
        Integrity::new(
            &self.config,
            "test-host".into(),
            keys,
            ProgressBar::hidden(),
        )
    }
}

/// Polls until `done` holds for the findings gathered so far, or ten seconds pass.
fn poll_until(watcher: &mut Watcher<'_>, done: impl Fn(&[EventKind]) -> bool) -> Vec<EventKind> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut all = Vec::new();
    while Instant::now() < deadline && !done(&all) {
        all.extend(watcher.poll(Duration::from_millis(200)).unwrap());
    }
    all
}

fn changed(findings: &[EventKind], path: &Path) -> usize {
    let key = path_key(path);
    findings
        .iter()
        .filter(|f| matches!(f, EventKind::IntegrityFileChanged(e) if e.path == key))
        .count()
}

#[test]
fn a_change_is_reported_once() {
    let fixture = Fixture::new(false, 3600);
    let integrity = fixture.integrity();
    integrity.init().unwrap();
    let mut watcher = Watcher::new(&integrity).unwrap();
    assert_eq!(watcher.watched_dirs(), 2);
    let file = fixture.tree("sub/nested.conf");
    let mut handle = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    handle.write_all(b"y = 2\n").unwrap();
    drop(handle);
    let findings = poll_until(&mut watcher, |f| changed(f, &file) > 0);
    assert_eq!(changed(&findings, &file), 1, "{findings:?}");
    let more = watcher.poll(Duration::from_millis(300)).unwrap();
    assert_eq!(
        changed(&more, &file),
        0,
        "no repeat for the same state: {more:?}"
    );

    std::fs::write(fixture.tree("sub/new-dir-file"), b"new").unwrap();
    std::fs::create_dir(fixture.tree("newdir")).unwrap();
    std::fs::write(fixture.tree("newdir/inner"), b"inner").unwrap();
    let inner = path_key(&fixture.tree("newdir/inner"));
    let added = poll_until(&mut watcher, |f| {
        f.iter()
            .any(|e| matches!(e, EventKind::IntegrityFileAdded(a) if a.path == inner))
    });
    assert!(
        added
            .iter()
            .any(|e| matches!(e, EventKind::IntegrityFileAdded(a) if a.path == inner)),
        "{added:?}"
    );
}

#[test]
fn queue_overflow_is_reported_and_rescanned() {
    let fixture = Fixture::new(false, 3600);
    let integrity = fixture.integrity();
    integrity.init().unwrap();
    let mut watcher = Watcher::new(&integrity).unwrap();
    let queue: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16384);
    if queue > 200_000 {
        eprintln!("skipping: max_queued_events is {queue}, too large to overflow quickly");
        return;
    }
    let count = queue + 100;
    for i in 0..count {
        std::fs::write(fixture.tree(&format!("sub/f{i}")), b"x").unwrap();
    }
    let findings = watcher.poll(Duration::from_millis(100)).unwrap();
    let loss = findings
        .iter()
        .find_map(|f| match f {
            EventKind::EventLoss(loss) => Some(loss.clone()),
            _ => None,
        })
        .expect("an event_loss finding");
    assert_eq!(loss.stage, "inotify_queue");
    let added = findings
        .iter()
        .filter(|f| matches!(f, EventKind::IntegrityFileAdded(_)))
        .count();
    assert_eq!(added, count, "the rescan finds every new file");
}

#[test]
fn periodic_full_check_catches_what_inotify_misses() {
    let fixture = Fixture::new(false, 1);
    // A hard link outside the tree: writes through it raise no event on the watched directory.
    let outside = fixture.dir.path().join("outside-link");
    std::fs::hard_link(fixture.tree("app.conf"), &outside).unwrap();
    let integrity = fixture.integrity();
    integrity.init().unwrap();
    let mut watcher = Watcher::new(&integrity).unwrap();
    std::fs::write(&outside, b"listen 8080\n").unwrap();
    let quick = watcher.poll(Duration::from_millis(100)).unwrap();
    assert_eq!(changed(&quick, &fixture.tree("app.conf")), 0, "{quick:?}");
    let file = fixture.tree("app.conf");
    let findings = poll_until(&mut watcher, |f| changed(f, &file) > 0);
    assert_eq!(changed(&findings, &file), 1, "{findings:?}");
}

#[test]
fn heal_while_watching_restores_and_reports() {
    let fixture = Fixture::new(true, 3600);
    let integrity = fixture.integrity();
    integrity.init().unwrap();
    let mut watcher = Watcher::new(&integrity).unwrap();
    let file = fixture.tree("app.conf");
    std::fs::write(&file, b"listen 6666\n").unwrap();
    let findings = poll_until(&mut watcher, |f| {
        f.iter().any(|e| matches!(e, EventKind::HealDone(_)))
    });
    assert!(
        findings
            .iter()
            .any(|e| matches!(e, EventKind::HealDone(h) if h.path == path_key(&file))),
        "{findings:?}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"listen 80\n");
    // The restore itself is not reported as a new change.
    let after = watcher.poll(Duration::from_millis(300)).unwrap();
    assert_eq!(changed(&after, &file), 0, "{after:?}");
    // And a later check of the store agrees with the healed file.
    let (check, _) = integrity.check(false).unwrap();
    assert!(check.is_empty(), "{check:?}");
}

#[test]
fn store_tampering_while_watching_is_reported_by_the_periodic_check() {
    let fixture = Fixture::new(false, 1);
    let integrity = fixture.integrity();
    integrity.init().unwrap();
    let mut watcher = Watcher::new(&integrity).unwrap();
    let mut bytes = std::fs::read(&fixture.config.store).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&fixture.config.store, &bytes).unwrap();
    let findings = poll_until(&mut watcher, |f| {
        f.iter()
            .any(|e| matches!(e, EventKind::IntegrityBaselineTampered(_)))
    });
    assert!(
        findings
            .iter()
            .any(|e| matches!(e, EventKind::IntegrityBaselineTampered(_))),
        "{findings:?}"
    );
}
