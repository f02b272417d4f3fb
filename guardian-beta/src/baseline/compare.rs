//! Turns the difference between a baseline and the current state into integrity events.

use super::{Entry, FileType};
use qsc_event::{EventKind, IntegrityFile, IntegrityFileChanged};
use std::collections::BTreeMap;

/// Names of the attributes that differ between two entries of one path, in a fixed order.
pub fn changed_attributes(old: &Entry, new: &Entry) -> Vec<String> {
    let checks: [(&str, bool); 11] = [
        ("type", old.file_type != new.file_type),
        (
            "content",
            old.blake3 != new.blake3 || (old.sha3_256.is_some() && old.sha3_256 != new.sha3_256),
        ),
        ("mode", old.mode != new.mode),
        ("uid", old.uid != new.uid),
        ("gid", old.gid != new.gid),
        ("size", old.size != new.size),
        ("mtime", old.mtime_ns != new.mtime_ns),
        ("ctime", old.ctime_ns != new.ctime_ns),
        ("inode", old.inode != new.inode),
        ("link_target", old.link_target != new.link_target),
        ("xattrs", old.xattrs != new.xattrs),
    ];
    checks
        .into_iter()
        .filter(|(_, differs)| *differs)
        .map(|(name, _)| name.to_string())
        .collect()
}

/// The event for one path, or `None` when nothing differs.
pub fn compare_entry(path: &str, old: Option<&Entry>, new: Option<&Entry>) -> Option<EventKind> {
    match (old, new) {
        (None, None) => None,
        (None, Some(new)) => Some(EventKind::IntegrityFileAdded(IntegrityFile {
            path: path.to_string(),
            hash: new.blake3.clone(),
        })),
        (Some(old), None) => Some(EventKind::IntegrityFileRemoved(IntegrityFile {
            path: path.to_string(),
            hash: old.blake3.clone(),
        })),
        (Some(old), Some(new)) => {
            let changes = changed_attributes(old, new);
            if changes.is_empty() {
                return None;
            }
            let hashes_matter = old.file_type == FileType::File || new.file_type == FileType::File;
            Some(EventKind::IntegrityFileChanged(IntegrityFileChanged {
                path: path.to_string(),
                changes,
                old_hash: old.blake3.clone().filter(|_| hashes_matter),
                new_hash: new.blake3.clone().filter(|_| hashes_matter),
            }))
        }
    }
}

/// Events for every added, removed or changed path, in path order.
pub fn compare(old: &BTreeMap<String, Entry>, new: &BTreeMap<String, Entry>) -> Vec<EventKind> {
    let removed_or_changed = old
        .iter()
        .filter_map(|(path, entry)| compare_entry(path, Some(entry), new.get(path)));
    let added = new
        .iter()
        .filter(|(path, _)| !old.contains_key(*path))
        .filter_map(|(path, entry)| compare_entry(path, None, Some(entry)));
    let mut events: Vec<EventKind> = removed_or_changed.chain(added).collect();
    events.sort_by(|a, b| event_path(a).cmp(event_path(b)));
    events
}

/// The path an integrity event is about.
pub fn event_path(event: &EventKind) -> &str {
    match event {
        EventKind::IntegrityFileChanged(e) => &e.path,
        EventKind::IntegrityFileAdded(e) | EventKind::IntegrityFileRemoved(e) => &e.path,
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            file_type: FileType::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 3,
            mtime_ns: 1,
            ctime_ns: 1,
            inode: 9,
            link_target: None,
            xattrs: BTreeMap::new(),
            blake3: Some("aa".into()),
            sha3_256: None,
            not_hashed: None,
        }
    }

    #[test]
    fn identical_entries_give_no_event() {
        assert!(compare_entry("/a", Some(&entry()), Some(&entry())).is_none());
    }

    #[test]
    fn every_attribute_is_named() {
        let old = entry();
        let mut new = entry();
        new.blake3 = Some("bb".into());
        new.mode = 0o4755;
        new.xattrs.insert("security.capability".into(), "01".into());
        let Some(EventKind::IntegrityFileChanged(event)) =
            compare_entry("/a", Some(&old), Some(&new))
        else {
            panic!("expected a change");
        };
        assert_eq!(event.changes, ["content", "mode", "xattrs"]);
        assert_eq!(event.old_hash.as_deref(), Some("aa"));
        assert_eq!(event.new_hash.as_deref(), Some("bb"));
    }

    #[test]
    fn added_and_removed_paths_are_reported_in_order() {
        let old = BTreeMap::from([("/a".to_string(), entry()), ("/b".to_string(), entry())]);
        let new = BTreeMap::from([("/b".to_string(), entry()), ("/c".to_string(), entry())]);
        let events = compare(&old, &new);
        assert_eq!(events.len(), 2);
        assert!(matches!(&events[0], EventKind::IntegrityFileRemoved(e) if e.path == "/a"));
        assert!(matches!(&events[1], EventKind::IntegrityFileAdded(e) if e.path == "/c"));
    }
}
