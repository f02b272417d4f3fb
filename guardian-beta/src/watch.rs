//! Real-time detection with inotify, plus a periodic full check as a safety net.
//!
//! Every directory of every tree is watched. An inotify event names a path; that path is
//! examined (metadata first, hashed when the metadata moved) and compared with the baseline.
//! Each distinct state of a path is reported once, however many raw events it caused. When the
//! kernel queue overflows (`IN_Q_OVERFLOW`), events were lost: the overflow is reported as
//! `event_loss` (stage `inotify_queue`; `lost` counts overflows, each losing an unknown number
//! of events) and every tree is rescanned metadata-first, so no change goes unreported. The
//! periodic full check also verifies the store again, so tampering with it while the watcher
//! runs is reported too.

use crate::baseline::scan::path_key;
use crate::baseline::{Baseline, Entry};
use crate::integrity::{Integrity, IntegrityError, finding_for};
use crate::store::StoreError;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use qsc_event::{EventKind, EventLoss, IntegrityBaselineTampered};
use std::collections::{BTreeSet, HashMap};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
    #[error("inotify: {0}")]
    Inotify(std::io::Error),
}

const INOTIFY_BUFFER_BYTES: usize = 64 * 1024;

fn watch_mask() -> WatchMask {
    WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CLOSE_WRITE
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::DONT_FOLLOW
        | WatchMask::EXCL_UNLINK
}

/// A running watch over the configured trees.
pub struct Watcher<'a> {
    integrity: &'a Integrity<'a>,
    baseline: Baseline,
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    /// Last state reported per path, so that one change is reported once.
    reported: HashMap<String, Option<Entry>>,
    overflows: u64,
    last_full_check: Instant,
    buffer: Vec<u8>,
}

impl<'a> Watcher<'a> {
    /// Loads the baseline (a tampered store is an error) and watches every directory.
    pub fn new(integrity: &'a Integrity<'a>) -> Result<Self, WatchError> {
        let baseline = integrity.load().map_err(IntegrityError::from)?;
        let inotify = Inotify::init().map_err(WatchError::Inotify)?;
        let mut watcher = Watcher {
            integrity,
            baseline,
            inotify,
            dirs: HashMap::new(),
            reported: HashMap::new(),
            overflows: 0,
            last_full_check: Instant::now(),
            buffer: vec![0; INOTIFY_BUFFER_BYTES],
        };
        let roots: Vec<PathBuf> = integrity
            .config()
            .trees
            .iter()
            .map(|t| t.path.clone())
            .collect();
        for root in roots {
            watcher.watch_tree(&root);
        }
        Ok(watcher)
    }

    /// Number of watched directories.
    pub fn watched_dirs(&self) -> usize {
        self.dirs.len()
    }

    /// Waits up to `timeout` for file activity and returns the findings it caused, plus those
    /// of a periodic full check when one is due.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<EventKind>, WatchError> {
        let interval = Duration::from_secs(self.integrity.config().watch.full_check_interval_s);
        let until_full_check = interval.saturating_sub(self.last_full_check.elapsed());
        wait_readable(&self.inotify, timeout.min(until_full_check));
        let (paths, overflowed) = self.drain_events()?;
        let mut findings = Vec::new();
        if overflowed {
            self.overflows += 1;
            findings.push(EventKind::EventLoss(EventLoss {
                stage: "inotify_queue".into(),
                record: Some("file".into()),
                lost: 1,
                total: self.overflows,
            }));
            tracing::warn!(
                overflows = self.overflows,
                "inotify queue overflowed; rescanning"
            );
            findings.extend(self.rescan(false)?);
        } else {
            findings.extend(self.check_paths(paths));
        }
        if self.last_full_check.elapsed() >= interval {
            tracing::info!("periodic full check");
            findings.extend(self.reload_store());
            findings.extend(self.rescan(true)?);
            self.last_full_check = Instant::now();
        }
        let heals = self.integrity.heal(&mut self.baseline, &findings)?;
        findings.extend(heals);
        Ok(findings)
    }

    /// Verifies the store again and adopts it (it may have been updated by `baseline update`);
    /// a store that fails verification is reported and the baseline in memory, verified when
    /// it was loaded, stays in use.
    fn reload_store(&mut self) -> Option<EventKind> {
        let reason = match self.integrity.load() {
            Ok(stored) => {
                self.baseline = stored;
                return None;
            }
            Err(StoreError::Tampered { reason, .. }) => reason,
            Err(StoreError::Missing { .. }) => "the store has been removed".to_string(),
            Err(other) => {
                tracing::warn!(error = %other, "cannot re-read the baseline store");
                return None;
            }
        };
        Some(EventKind::IntegrityBaselineTampered(
            IntegrityBaselineTampered {
                store: self.integrity.config().store.display().to_string(),
                reason,
            },
        ))
    }

    /// Reads every queued inotify event; returns the paths they name and whether the queue
    /// overflowed.
    fn drain_events(&mut self) -> Result<(BTreeSet<PathBuf>, bool), WatchError> {
        let mut paths = BTreeSet::new();
        let mut overflowed = false;
        let mut new_dirs = Vec::new();
        loop {
            let events = match self.inotify.read_events(&mut self.buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(WatchError::Inotify(e)),
            };
            let mut any = false;
            for event in events {
                any = true;
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    overflowed = true;
                    continue;
                }
                let Some(dir) = self.dirs.get(&event.wd).cloned() else {
                    continue;
                };
                if event.mask.contains(EventMask::IGNORED) {
                    self.dirs.remove(&event.wd);
                }
                let path = event.name.map_or(dir.clone(), |name| dir.join(name));
                if event.mask.contains(EventMask::ISDIR)
                    && event
                        .mask
                        .intersects(EventMask::CREATE | EventMask::MOVED_TO)
                {
                    new_dirs.push(path.clone());
                }
                paths.insert(path);
            }
            if !any {
                break;
            }
        }
        for dir in new_dirs {
            paths.extend(self.watch_tree(&dir));
        }
        Ok((paths, overflowed))
    }

    /// Watches `root` and every directory below it; returns every path found there.
    fn watch_tree(&mut self, root: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let walker = walkdir::WalkDir::new(root)
            .follow_links(false)
            .into_iter()
            .filter_entry(|e| self.integrity.is_watched(e.path()));
        for entry in walker.flatten() {
            if entry.file_type().is_dir() {
                match self.inotify.watches().add(entry.path(), watch_mask()) {
                    Ok(wd) => {
                        self.dirs.insert(wd, entry.path().to_path_buf());
                    }
                    Err(e) => {
                        tracing::warn!(dir = %entry.path().display(), error = %e, "cannot watch")
                    }
                }
            }
            found.push(entry.into_path());
        }
        found
    }

    fn check_paths(&mut self, paths: BTreeSet<PathBuf>) -> Vec<EventKind> {
        paths
            .into_iter()
            .filter(|path| self.integrity.is_watched(path))
            .filter_map(|path| {
                let current = self.integrity.current_entry(&self.baseline, &path);
                self.consider(&path_key(&path), current)
            })
            .collect()
    }

    /// Rescans every tree (metadata first, or re-hashing all when `full`).
    fn rescan(&mut self, full: bool) -> Result<Vec<EventKind>, WatchError> {
        let reuse = (!full).then_some(&self.baseline.entries);
        let mut result = self.integrity.scan(reuse)?;
        let keys: BTreeSet<String> = self
            .baseline
            .entries
            .keys()
            .chain(result.entries.keys())
            .chain(self.reported.keys())
            .cloned()
            .collect();
        Ok(keys
            .into_iter()
            .filter_map(|key| {
                let current = result.entries.remove(&key);
                self.consider(&key, current)
            })
            .collect())
    }

    /// The finding for a path whose state differs from the last one reported for it.
    fn consider(&mut self, key: &str, current: Option<Entry>) -> Option<EventKind> {
        let last = match self.reported.get(key) {
            Some(state) => state.as_ref(),
            None => self.baseline.entries.get(key),
        };
        if last == current.as_ref() {
            return None;
        }
        let finding = finding_for(&self.baseline, key, current.as_ref());
        self.reported.insert(key.to_string(), current);
        finding
    }
}

/// Blocks until the inotify descriptor is readable or the timeout passes.
fn wait_readable(inotify: &Inotify, timeout: Duration) {
    let mut pollfd = libc::pollfd {
        fd: inotify.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call; the result only gates a read.
    unsafe {
        libc::poll(&mut pollfd, 1, millis);
    }
}

#[cfg(test)]
mod tests;
