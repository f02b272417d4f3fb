//! The baseline operations behind `baseline init|update|check` and `watch`: scanning the
//! configured trees, comparing with the stored baseline, auto-healing and saving the store.

use crate::baseline::compare::{compare, compare_entry, event_path};
use crate::baseline::scan::{self, ScanOptions, ScanResult, path_key};
use crate::baseline::{BASELINE_FORMAT, Baseline, Entry, FileType};
use crate::config::Config;
use crate::heal::{HealError, HealStore};
use crate::store::{self, StoreError, StoreKeys};
use indicatif::ProgressBar;
use qsc_event::{EventKind, Heal};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot prepare the heal store: {0}")]
    Heal(#[from] HealError),
    #[error("no [[tree]] is configured; add at least one tree to the config file")]
    NoTrees,
}

/// Counters of one scan, for the summary line and the benchmark.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub entries: usize,
    pub hashed_files: u64,
    pub hashed_bytes: u64,
    pub warnings: Vec<String>,
}

/// Runs baseline operations for one configuration.
pub struct Integrity<'a> {
    config: &'a Config,
    host_id: String,
    keys: StoreKeys,
    progress: ProgressBar,
}

impl<'a> Integrity<'a> {
    pub fn new(
        config: &'a Config,
        host_id: String,
        keys: StoreKeys,
        progress: ProgressBar,
    ) -> Self {
        Integrity {
            config,
            host_id,
            keys,
            progress,
        }
    }

    pub fn config(&self) -> &Config {
        self.config
    }

    /// Scans everything from scratch, keeps protected copies for heal trees, writes the store.
    pub fn init(&self) -> Result<RunStats, IntegrityError> {
        let result = self.scan(None)?;
        let now = qsc_event::now_ns();
        let baseline = Baseline {
            format: BASELINE_FORMAT,
            host_id: self.host_id.clone(),
            store_path: self.config.store.display().to_string(),
            created_ns: now,
            updated_ns: now,
            generation: 1,
            entries: result.entries.clone(),
        };
        let mut stats = stats_of(&result);
        stats
            .warnings
            .extend(self.preserve_heal_copies(&baseline.entries)?);
        store::save(&self.config.store, &self.keys, &baseline)?;
        Ok(stats)
    }

    /// Loads and verifies the stored baseline.
    pub fn load(&self) -> Result<Baseline, StoreError> {
        store::load(&self.config.store, &self.keys, &self.host_id)
    }

    /// Accepts the current state: re-hashes only entries whose metadata changed and writes a
    /// new generation. Returns the differences that were accepted.
    pub fn update(&self) -> Result<(Vec<EventKind>, RunStats), IntegrityError> {
        let mut baseline = self.load()?;
        let result = self.scan(Some(&baseline.entries))?;
        let accepted = compare(&baseline.entries, &result.entries);
        let mut stats = stats_of(&result);
        stats
            .warnings
            .extend(self.preserve_heal_copies(&result.entries)?);
        baseline.entries = result.entries;
        baseline.generation += 1;
        baseline.updated_ns = qsc_event::now_ns();
        store::save(&self.config.store, &self.keys, &baseline)?;
        Ok((accepted, stats))
    }

    /// Compares the current state with the baseline (metadata first unless `full`), heals
    /// what is marked for it, and returns every finding.
    pub fn check(&self, full: bool) -> Result<(Vec<EventKind>, RunStats), IntegrityError> {
        let mut baseline = self.load()?;
        let result = self.scan((!full).then_some(&baseline.entries))?;
        let mut findings = compare(&baseline.entries, &result.entries);
        let heals = self.heal(&mut baseline, &findings)?;
        findings.extend(heals);
        Ok((findings, stats_of(&result)))
    }

    /// Scans all trees; `reuse` enables metadata-first mode.
    pub fn scan(
        &self,
        reuse: Option<&BTreeMap<String, Entry>>,
    ) -> Result<ScanResult, IntegrityError> {
        if self.config.trees.is_empty() {
            return Err(IntegrityError::NoTrees);
        }
        let options = ScanOptions {
            max_file_size: self.config.max_file_size,
            reuse,
            progress: &self.progress,
        };
        Ok(scan::scan_trees(&self.config.trees, &options))
    }

    /// The current entry of one path (metadata first against the baseline).
    pub fn current_entry(&self, baseline: &Baseline, path: &Path) -> Option<Entry> {
        let tree = self.config.tree_of(path)?;
        let hidden = ProgressBar::hidden();
        let options = ScanOptions {
            max_file_size: self.config.max_file_size,
            reuse: Some(&baseline.entries),
            progress: &hidden,
        };
        scan::scan_path(path, tree, &options).ok().flatten()
    }

    /// True when the path is inside a tree and not excluded.
    pub fn is_watched(&self, path: &Path) -> bool {
        self.config
            .tree_of(path)
            .is_some_and(|tree| !tree.exclude.iter().any(|x| path.starts_with(x)))
    }

    /// Restores heal-marked files named by findings; returns heal events. The baseline entries
    /// of restored files get their new inode and ctime, and the store is saved.
    pub fn heal(
        &self,
        baseline: &mut Baseline,
        findings: &[EventKind],
    ) -> Result<Vec<EventKind>, IntegrityError> {
        let targets: Vec<&str> = findings
            .iter()
            .filter(|f| {
                matches!(
                    f,
                    EventKind::IntegrityFileChanged(_) | EventKind::IntegrityFileRemoved(_)
                )
            })
            .map(event_path)
            .filter(|key| self.heal_enabled(key))
            .filter(|key| {
                baseline
                    .entries
                    .get(*key)
                    .is_some_and(|e| e.file_type == FileType::File)
            })
            .collect();
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let heal_store = HealStore::open(&self.config.heal_dir)?;
        let mut events = Vec::new();
        for key in targets {
            let Some(entry) = baseline.entries.get(key).cloned() else {
                continue;
            };
            let path = Path::new(key);
            match heal_store.restore(path, &entry) {
                Ok(digest) => {
                    if let Some(restored) = self.current_entry(baseline, path) {
                        baseline.entries.insert(key.to_string(), restored);
                    }
                    self.refresh_parent_times(baseline, path);
                    events.push(EventKind::HealDone(Heal {
                        path: key.to_string(),
                        hash: Some(digest),
                        error: None,
                    }));
                }
                Err(error) => events.push(EventKind::HealFailed(Heal {
                    path: key.to_string(),
                    hash: entry.blake3.clone(),
                    error: Some(error.to_string()),
                })),
            }
        }
        if events.iter().any(|e| matches!(e, EventKind::HealDone(_))) {
            baseline.updated_ns = qsc_event::now_ns();
            store::save(&self.config.store, &self.keys, baseline)?;
        }
        Ok(events)
    }

    /// A restore renames a file into its directory, which moves the directory's mtime and
    /// ctime; only those two are taken over so that any other change stays visible.
    fn refresh_parent_times(&self, baseline: &mut Baseline, path: &Path) {
        let Some(parent) = path.parent() else {
            return;
        };
        let key = path_key(parent);
        let Some(current) = self.current_entry(baseline, parent) else {
            return;
        };
        if let Some(entry) = baseline.entries.get_mut(&key) {
            entry.mtime_ns = current.mtime_ns;
            entry.ctime_ns = current.ctime_ns;
        }
    }

    /// Heal applies to keys that are plain paths (no escaping) inside a `heal = true` tree.
    fn heal_enabled(&self, key: &str) -> bool {
        let path = Path::new(key);
        path_key(path) == key && self.config.tree_of(path).is_some_and(|tree| tree.heal)
    }

    fn preserve_heal_copies(
        &self,
        entries: &BTreeMap<String, Entry>,
    ) -> Result<Vec<String>, IntegrityError> {
        let mut to_keep = entries
            .iter()
            .filter(|(key, entry)| entry.blake3.is_some() && self.heal_enabled(key))
            .peekable();
        if to_keep.peek().is_none() {
            return Ok(Vec::new());
        }
        let heal_store = HealStore::open(&self.config.heal_dir)?;
        Ok(to_keep
            .filter_map(|(key, entry)| {
                heal_store
                    .preserve(Path::new(key), entry)
                    .err()
                    .map(|e| format!("no protected copy for {key}: {e}"))
            })
            .collect())
    }
}

/// The finding for one path given its current state.
pub fn finding_for(baseline: &Baseline, key: &str, current: Option<&Entry>) -> Option<EventKind> {
    compare_entry(key, baseline.entries.get(key), current)
}

fn stats_of(result: &ScanResult) -> RunStats {
    let not_hashed = result.entries.iter().filter_map(|(key, entry)| {
        entry
            .not_hashed
            .as_ref()
            .map(|reason| format!("not hashed: {key}: {reason}"))
    });
    RunStats {
        entries: result.entries.len(),
        hashed_files: result.hashed_files,
        hashed_bytes: result.hashed_bytes,
        warnings: result.warnings.iter().cloned().chain(not_hashed).collect(),
    }
}
