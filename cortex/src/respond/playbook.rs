//! Playbooks: YAML documents that map incidents to response actions.
//!
//! ```yaml
//! name: kill-reverse-shell            # unique across every loaded playbook
//! description: Kill a shell wired to a socket and block its peer.
//! mode: autonomous                    # optional: autonomous | assisted | dry_run ([respond] mode)
//! match:                              # every key optional; all given ones must hold
//!   rules: [qsc.process.reverse_shell] # any of these rule ids is in the evidence
//!   tags: [attack.t1059, T1071]       # any of these Sigma tags / ATT&CK ids (T1059 matches T1059.004)
//!   min_severity: high                # low | medium | high | critical (default low)
//!   min_confidence: 0.8               # 0..=1 (default 0)
//! actions:                            # run in this order
//!   - action: kill                    # the evidence's process (pid from its process block)
//!     tree: true
//!   - action: block_ip                # the evidence's remote address
//!     ttl_s: 3600                     # rolled back (unblock_ip) after this; 0 = until unblocked
//!   - action: quarantine              # the evidence's file path
//!   - action: revoke_credential       # the evidence's user
//!   - action: isolate                 # the incident's host; ttl_s as for block_ip
//!   - action: rotate_keys
//!   - action: notify                  # no agent command: audit and observers only
//! ```
//!
//! A playbook fires at most once per incident, the first time the incident matches. Parameters
//! come from the incident's evidence events, newest first; an action whose parameter none of
//! them carries is recorded as not executed, with the reason.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use include_dir::{Dir, DirEntry, include_dir};
use qsc_event::{Action, Event, EventKind, ProcessInfo};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use super::config::Mode;
use crate::score::{EntityKey, EventRef, Incident, Severity};

static SHIPPED_PLAYBOOKS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/playbooks");

/// Largest playbook file read.
pub const MAX_PLAYBOOK_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PlaybookError {
    #[error("cannot read playbooks from {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("playbook file {path} is larger than {MAX_PLAYBOOK_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("playbook file {path} is not valid YAML: {message}")]
    Yaml { path: String, message: String },
    #[error("playbook file {path}, document {document}: {reason}")]
    Invalid {
        path: String,
        document: usize,
        reason: String,
    },
    #[error("playbook name `{name}` is used by both {first} and {second}")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
}

/// What a playbook asks for, before its parameters are resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionSpec {
    Kill {
        #[serde(default)]
        tree: bool,
    },
    Quarantine,
    BlockIp {
        #[serde(default)]
        ttl_s: u64,
    },
    Isolate {
        #[serde(default)]
        ttl_s: u64,
    },
    RevokeCredential,
    RotateKeys,
    /// Audit and tell the observers; no agent command.
    Notify,
}

impl ActionSpec {
    pub fn name(&self) -> &'static str {
        match self {
            ActionSpec::Kill { .. } => "kill",
            ActionSpec::Quarantine => "quarantine",
            ActionSpec::BlockIp { .. } => "block_ip",
            ActionSpec::Isolate { .. } => "isolate",
            ActionSpec::RevokeCredential => "revoke_credential",
            ActionSpec::RotateKeys => "rotate_keys",
            ActionSpec::Notify => "notify",
        }
    }

    /// The agent command for `target`: `Ok(None)` for `notify`, `Err` naming the missing
    /// parameter when the evidence does not carry it.
    pub fn resolve(&self, target: &Target) -> Result<Option<Action>, &'static str> {
        let action = match self {
            ActionSpec::Notify => return Ok(None),
            ActionSpec::Kill { tree } => {
                let process = target.process.as_ref().ok_or("process")?;
                Action::Kill {
                    pid: process.pid,
                    // Pins the process the evidence saw: the agent refuses a recycled pid.
                    start_time_ticks: process.start_time_ticks,
                    tree: *tree,
                }
            }
            ActionSpec::Quarantine => Action::Quarantine {
                path: target.path.clone().ok_or("file path")?,
            },
            ActionSpec::BlockIp { ttl_s } => Action::BlockIp {
                addr: target.remote.ok_or("remote address")?,
                ttl_s: *ttl_s,
            },
            ActionSpec::Isolate { ttl_s } => Action::Isolate { ttl_s: *ttl_s },
            ActionSpec::RevokeCredential => Action::RevokeCredential {
                user: target.user.clone().ok_or("user")?,
            },
            ActionSpec::RotateKeys => Action::RotateKeys,
        };
        Ok(Some(action))
    }
}

/// Which incidents a playbook acts on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default)]
    pub rules: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default = "lowest", deserialize_with = "severity_any_case")]
    pub min_severity: Severity,
    #[serde(default)]
    pub min_confidence: f64,
}

fn lowest() -> Severity {
    Severity::Low
}

fn severity_any_case<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Severity, D::Error> {
    let text = String::deserialize(deserializer)?;
    match text.to_ascii_lowercase().as_str() {
        "low" => Ok(Severity::Low),
        "medium" => Ok(Severity::Medium),
        "high" => Ok(Severity::High),
        "critical" => Ok(Severity::Critical),
        _ => Err(serde::de::Error::custom(format!(
            "min_severity `{text}` is not one of low, medium, high, critical"
        ))),
    }
}

/// One loaded playbook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Overrides `[respond] mode` for this playbook.
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(rename = "match")]
    pub matcher: Match,
    pub actions: Vec<ActionSpec>,
    /// Where it was loaded from.
    #[serde(skip)]
    pub source: String,
}

impl Playbook {
    /// Whether the incident satisfies every condition of the playbook's `match`.
    pub fn matches(&self, incident: &Incident) -> bool {
        let m = &self.matcher;
        if incident.severity < m.min_severity || incident.confidence < m.min_confidence {
            return false;
        }
        let rule_ok = m.rules.is_empty()
            || incident
                .evidence
                .iter()
                .any(|e| m.rules.iter().any(|r| r == &e.rule_id));
        let tag_ok = m.tags.is_empty() || m.tags.iter().any(|t| tag_matches(t, incident));
        rule_ok && tag_ok
    }

    fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.name.chars().any(char::is_control) {
            return Err("`name` must be a non-empty printable string".into());
        }
        if self.actions.is_empty() {
            return Err(format!("playbook `{}` has no actions", self.name));
        }
        if !(0.0..=1.0).contains(&self.matcher.min_confidence) {
            return Err(format!(
                "playbook `{}`: min_confidence must be within 0..=1",
                self.name
            ));
        }
        Ok(())
    }
}

/// A tag of the playbook matches a Sigma tag of the evidence (case-insensitive) or an ATT&CK
/// technique of the incident, a parent technique matching its sub-techniques.
fn tag_matches(wanted: &str, incident: &Incident) -> bool {
    let wanted = wanted.to_ascii_lowercase();
    let technique = wanted.strip_prefix("attack.").unwrap_or(&wanted);
    let evidence_tag = incident
        .evidence
        .iter()
        .flat_map(|e| &e.tags)
        .any(|t| t.eq_ignore_ascii_case(&wanted));
    evidence_tag
        || incident.attack_techniques.iter().any(|t| {
            let t = t.to_ascii_lowercase();
            t == technique || t.starts_with(&format!("{technique}."))
        })
}

/// What the evidence events say an action should act on.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Target {
    pub process: Option<ProcessInfo>,
    pub remote: Option<IpAddr>,
    pub user: Option<String>,
    pub path: Option<String>,
    /// Host `CLOCK_MONOTONIC` of the newest evidence event (the latency's start).
    pub trigger_mono_ns: Option<u64>,
}

impl Target {
    /// The target of `playbook`: when it matches on rules, the events those rules' evidence
    /// refers to come first, so it acts on what its own rules saw rather than on the newest
    /// event of another rule in the same incident (a host incident gathers evidence of every
    /// process on the host).
    pub fn for_playbook(playbook: &Playbook, incident: &Incident, events: &[Event]) -> Target {
        let own: Vec<&EventRef> = incident
            .evidence
            .iter()
            .filter(|e| playbook.matcher.rules.contains(&e.rule_id))
            .flat_map(|e| &e.event_refs)
            .collect();
        let seen_by_own_rules = |event: &Event| {
            own.iter()
                .any(|r| r.host_id == event.host_id && r.seq == event.seq)
        };
        let (mut ordered, rest): (Vec<Event>, Vec<Event>) =
            events.iter().cloned().partition(seen_by_own_rules);
        ordered.extend(rest);
        Target::from_evidence(incident, &ordered)
    }

    /// Takes each parameter from the newest event that carries it (`events` newest first), the
    /// remote address and user falling back to the incident's entity.
    pub fn from_evidence(incident: &Incident, events: &[Event]) -> Target {
        let mut target = Target {
            trigger_mono_ns: events.first().and_then(|e| e.mono_ns),
            ..Target::default()
        };
        for event in events {
            if target.process.is_none() {
                target.process = event.process().filter(|p| p.pid != 0).cloned();
            }
            target.remote = target.remote.or_else(|| remote_of(event));
            if target.user.is_none() {
                target.user = user_of(event);
            }
            if target.path.is_none() {
                target.path = path_of(event);
            }
        }
        match &incident.entity {
            EntityKey::RemoteAddress { ip } => target.remote = target.remote.or(Some(*ip)),
            EntityKey::User { user, .. } if target.user.is_none() => {
                target.user = Some(user.clone());
            }
            _ => {}
        }
        target
    }
}

fn remote_of(event: &Event) -> Option<IpAddr> {
    match &event.kind {
        EventKind::NetConnect(c) => Some(c.dst_ip),
        EventKind::NetAccept(c) => Some(c.src_ip),
        EventKind::NetVolume(v) => Some(v.remote_ip),
        EventKind::AuthFailure(a) | EventKind::AuthSuccess(a) => a.remote_ip,
        _ => None,
    }
}

fn user_of(event: &Event) -> Option<String> {
    match &event.kind {
        EventKind::AuthFailure(a) | EventKind::AuthSuccess(a) => Some(a.user.clone()),
        _ => event
            .process()
            .and_then(|p| p.user.as_deref().map(str::to_owned)),
    }
}

fn path_of(event: &Event) -> Option<String> {
    let path = match &event.kind {
        EventKind::FileOpen(f) => &f.path,
        EventKind::FileChmod(f) => &f.path,
        EventKind::FileChown(f) => &f.path,
        EventKind::FileUnlink(f) => &f.path,
        EventKind::FileRename(f) => &f.new_path,
        EventKind::IntegrityFileChanged(f) => &f.path,
        EventKind::IntegrityFileAdded(f) => &f.path,
        EventKind::ProcessExec(e) => &e.filename,
        _ => return None,
    };
    Some(path.clone())
}

/// The loaded playbooks, in load order.
#[derive(Clone, Debug, Default)]
pub struct Playbooks {
    pub playbooks: Vec<Playbook>,
}

impl Playbooks {
    /// The shipped playbooks (when `shipped`) and every `.yml`/`.yaml` file under `dirs`.
    pub fn load(shipped: bool, dirs: &[PathBuf]) -> Result<Self, PlaybookError> {
        let mut texts: Vec<(String, String)> = Vec::new();
        if shipped {
            collect_shipped(&SHIPPED_PLAYBOOKS, &mut texts);
        }
        for dir in dirs {
            collect_files(dir, &mut texts)?;
        }
        texts.sort_by(|a, b| a.0.cmp(&b.0));
        Self::parse_all(&texts)
    }

    /// Parses `(source name, text)` pairs; names must be unique across all of them.
    pub fn parse_all(texts: &[(String, String)]) -> Result<Self, PlaybookError> {
        let mut playbooks = Vec::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        for (path, text) in texts {
            for playbook in parse_file(path, text)? {
                if let Some(first) = seen.insert(playbook.name.clone(), path.clone()) {
                    return Err(PlaybookError::Duplicate {
                        name: playbook.name,
                        first,
                        second: path.clone(),
                    });
                }
                playbooks.push(playbook);
            }
        }
        Ok(Playbooks { playbooks })
    }

    /// The playbooks that match the incident.
    pub fn matching<'a>(&'a self, incident: &'a Incident) -> impl Iterator<Item = &'a Playbook> {
        self.playbooks.iter().filter(|p| p.matches(incident))
    }
}

fn collect_shipped(dir: &'static Dir<'static>, texts: &mut Vec<(String, String)>) {
    for entry in dir.entries() {
        match entry {
            DirEntry::Dir(sub) => collect_shipped(sub, texts),
            DirEntry::File(file) => {
                if let (true, Some(text)) = (is_yaml(file.path()), file.contents_utf8()) {
                    let name = format!("<shipped>/{}", file.path().display());
                    texts.push((name, text.to_owned()));
                }
            }
        }
    }
}

fn is_yaml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yml" || e == "yaml")
}

fn collect_files(path: &Path, texts: &mut Vec<(String, String)>) -> Result<(), PlaybookError> {
    let read_err = |source| PlaybookError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(read_err)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(read_err)?;
        entries.sort();
        for entry in entries {
            if entry.is_dir() || is_yaml(&entry) {
                collect_files(&entry, texts)?;
            }
        }
        return Ok(());
    }
    if meta.len() > MAX_PLAYBOOK_FILE_BYTES {
        return Err(PlaybookError::TooLarge {
            path: path.to_owned(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    texts.push((path.display().to_string(), text));
    Ok(())
}

/// Every non-empty YAML document of one file, as a playbook.
fn parse_file(path: &str, text: &str) -> Result<Vec<Playbook>, PlaybookError> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| PlaybookError::Yaml {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut playbooks = Vec::new();
    for (index, doc) in docs.iter().enumerate() {
        if matches!(doc, Yaml::Null) {
            continue;
        }
        let invalid = |reason: String| PlaybookError::Invalid {
            path: path.to_owned(),
            document: index + 1,
            reason,
        };
        let value = yaml_to_json(doc).map_err(invalid)?;
        let mut playbook: Playbook =
            serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
        playbook.validate().map_err(invalid)?;
        playbook.source = path.to_owned();
        playbooks.push(playbook);
    }
    Ok(playbooks)
}

/// A YAML value as JSON, so serde's derived, strict deserializers can check it.
fn yaml_to_json(yaml: &Yaml) -> Result<Value, String> {
    Ok(match yaml {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(text) => {
            let number: f64 = text
                .parse()
                .map_err(|_| format!("`{text}` is not a number"))?;
            serde_json::Number::from_f64(number)
                .map(Value::Number)
                .ok_or_else(|| format!("`{text}` is not a finite number"))?
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => {
            Value::Array(items.iter().map(yaml_to_json).collect::<Result<_, _>>()?)
        }
        Yaml::Hash(map) => {
            let mut object = serde_json::Map::new();
            for (key, value) in map {
                let Yaml::String(key) = key else {
                    return Err(format!("mapping key {key:?} is not a string"));
                };
                object.insert(key.clone(), yaml_to_json(value)?);
            }
            Value::Object(object)
        }
        Yaml::Alias(_) | Yaml::BadValue => return Err("aliases are not supported".into()),
    })
}

#[cfg(test)]
mod tests {
    use qsc_event::{AuthAttempt, FileOpen, NetConnection, Source};

    use super::*;
    use crate::score::{Evidence, IncidentStatus, SourceKind};

    pub(crate) fn incident(rule: &str, tags: &[&str], severity: Severity, conf: f64) -> Incident {
        let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        Incident {
            id: "inc-1".into(),
            host: "web-01".into(),
            entity: EntityKey::Host {
                host: "web-01".into(),
            },
            title: "test".into(),
            severity,
            confidence: conf,
            prior: 0.001,
            log_odds: 0.0,
            attack_techniques: crate::score::incident::attack_techniques(&tags),
            status: IncidentStatus::Open,
            opened_ns: 1,
            updated_ns: 1,
            evidence: vec![Evidence {
                rule_id: rule.into(),
                title: rule.into(),
                source: SourceKind::Process,
                level: None,
                tags,
                lr: 10.0,
                contribution: 1.0,
                hits: 1,
                event_refs: Vec::new(),
                first_seen_ns: 1,
                time_ns: 1,
            }],
        }
    }

    const BOOK: &str = "
name: contain-shell
mode: dry_run
match:
  rules: [qsc.process.reverse_shell]
  tags: [attack.t1059]
  min_severity: high
  min_confidence: 0.8
actions:
  - action: kill
    tree: true
  - action: block_ip
    ttl_s: 60
  - action: notify
---
name: lock-brute-forced-user
match:
  tags: [T1110]
actions:
  - action: revoke_credential
";

    fn books() -> Playbooks {
        Playbooks::parse_all(&[("test.yml".into(), BOOK.into())]).unwrap()
    }

    #[test]
    fn playbooks_parse_with_their_actions_and_modes() {
        let books = books();
        assert_eq!(books.playbooks.len(), 2);
        let first = &books.playbooks[0];
        assert_eq!(first.mode, Some(Mode::DryRun));
        assert_eq!(first.matcher.min_severity, Severity::High);
        assert_eq!(
            first.actions,
            vec![
                ActionSpec::Kill { tree: true },
                ActionSpec::BlockIp { ttl_s: 60 },
                ActionSpec::Notify
            ]
        );
        assert_eq!(first.source, "test.yml");
        assert_eq!(books.playbooks[1].mode, None);
    }

    #[test]
    fn matching_needs_rule_tag_severity_and_confidence() {
        let books = books();
        let book = &books.playbooks[0];
        let hit = incident(
            "qsc.process.reverse_shell",
            &["attack.t1059"],
            Severity::Critical,
            0.97,
        );
        assert!(book.matches(&hit));
        let weak = incident(
            "qsc.process.reverse_shell",
            &["attack.t1059"],
            Severity::High,
            0.5,
        );
        assert!(!book.matches(&weak), "confidence below 0.8");
        let low = incident(
            "qsc.process.reverse_shell",
            &["attack.t1059"],
            Severity::Medium,
            0.9,
        );
        assert!(!book.matches(&low), "severity below HIGH");
        let other_rule = incident("qsc.other", &["attack.t1059"], Severity::Critical, 0.99);
        assert!(!book.matches(&other_rule));
        // A parent technique matches its sub-techniques.
        let brute = incident("r", &["attack.t1110.001"], Severity::Low, 0.2);
        assert!(books.playbooks[1].matches(&brute));
        assert_eq!(books.matching(&brute).count(), 1);
    }

    #[test]
    fn bad_playbooks_are_named_errors_with_the_path() {
        let cases = [
            (
                "name: x\nmatch: {}\nactions: [{action: format_disk}]",
                "format_disk",
            ),
            ("name: x\nmatch: {}\nactions: []", "no actions"),
            (
                "name: x\nmatch: {min_severity: dire}\nactions: [{action: notify}]",
                "dire",
            ),
            (
                "name: x\nmatch: {min_confidence: 2.0}\nactions: [{action: notify}]",
                "min_confidence",
            ),
            (
                "name: x\nmatch: {}\nactions: [{action: kill, signal: 9}]",
                "signal",
            ),
            (
                "name: x\nmatch: {}\nactions: [{action: notify}]\nextra: 1",
                "extra",
            ),
            ("name: [unclosed", "not valid YAML"),
        ];
        for (text, needle) in cases {
            let error = Playbooks::parse_all(&[("/etc/qsc/bad.yml".into(), text.into())])
                .unwrap_err()
                .to_string();
            assert!(error.contains("/etc/qsc/bad.yml"), "{error}");
            assert!(error.contains(needle), "{needle}: {error}");
        }
        let twice = Playbooks::parse_all(&[
            (
                "a.yml".into(),
                "name: x\nmatch: {}\nactions: [{action: notify}]".into(),
            ),
            (
                "b.yml".into(),
                "name: x\nmatch: {}\nactions: [{action: notify}]".into(),
            ),
        ]);
        assert!(matches!(twice, Err(PlaybookError::Duplicate { .. })));
    }

    #[test]
    fn files_load_from_folders_and_the_shipped_set_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("sub/one.yaml"),
            "name: mine\nmatch: {}\nactions: [{action: notify}]",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a playbook").unwrap();
        let loaded = Playbooks::load(false, &[dir.path().to_owned()]).unwrap();
        assert_eq!(loaded.playbooks.len(), 1);
        let shipped = Playbooks::load(true, &[]).unwrap();
        assert!(shipped.playbooks.len() >= 3);
        let missing = Playbooks::load(false, &[dir.path().join("nope")]);
        assert!(matches!(missing, Err(PlaybookError::Read { .. })));
    }

    fn event(kind: EventKind, mono: Option<u64>) -> Event {
        let mut event = Event::new("web-01", Source::Alpha, 1, kind);
        event.mono_ns = mono;
        event
    }

    #[test]
    fn a_playbook_matched_on_rules_acts_on_what_its_rules_saw() {
        let open = |seq: u64, path: &str| {
            let mut e = event(
                EventKind::FileOpen(FileOpen {
                    process: ProcessInfo::default(),
                    path: path.into(),
                    flags: 0,
                    write: true,
                }),
                Some(seq),
            );
            e.seq = seq;
            e
        };
        let dropped = open(1, "/var/tmp/dropped");
        let newer_other = open(2, "/tmp/checkout/target/debug/cortex");
        let mut inc = incident("own-rule", &[], Severity::High, 0.9);
        inc.evidence[0].event_refs = vec![EventRef {
            host_id: "web-01".into(),
            seq: 1,
        }];
        let mut other = inc.evidence[0].clone();
        other.rule_id = "other-rule".into();
        other.event_refs = vec![EventRef {
            host_id: "web-01".into(),
            seq: 2,
        }];
        inc.evidence.push(other);
        let events = [newer_other, dropped];
        let book = |rules: &[&str]| Playbook {
            name: "q".into(),
            description: String::new(),
            mode: None,
            matcher: Match {
                rules: rules.iter().map(|r| (*r).to_owned()).collect(),
                tags: Vec::new(),
                min_severity: Severity::Low,
                min_confidence: 0.0,
            },
            actions: vec![ActionSpec::Quarantine],
            source: String::new(),
        };
        let own = Target::for_playbook(&book(&["own-rule"]), &inc, &events);
        assert_eq!(own.path.as_deref(), Some("/var/tmp/dropped"));
        let any = Target::for_playbook(&book(&[]), &inc, &events);
        assert_eq!(
            any.path.as_deref(),
            Some("/tmp/checkout/target/debug/cortex")
        );
    }

    #[test]
    fn parameters_come_from_the_newest_evidence_that_has_them() {
        let process = ProcessInfo {
            pid: 4321,
            comm: "nc".into(),
            user: Some("www-data".into()),
            start_time_ticks: Some(98_765),
            ..ProcessInfo::default()
        };
        let connect = event(
            EventKind::NetConnect(NetConnection {
                process: process.clone(),
                protocol: "tcp".into(),
                src_ip: "10.0.0.5".parse().unwrap(),
                src_port: 40000,
                dst_ip: "203.0.113.7".parse().unwrap(),
                dst_port: 4444,
            }),
            Some(900),
        );
        let login = event(
            EventKind::AuthFailure(AuthAttempt {
                user: "alice".into(),
                remote_ip: Some("198.51.100.1".parse().unwrap()),
                service: "sshd".into(),
                detail: None,
            }),
            Some(100),
        );
        let inc = incident("r", &[], Severity::High, 0.9);
        let target = Target::from_evidence(&inc, &[connect, login]);
        assert_eq!(target.process.as_ref().map(|p| p.pid), Some(4321));
        assert_eq!(target.remote, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(target.user.as_deref(), Some("www-data"));
        assert_eq!(target.trigger_mono_ns, Some(900));
        assert_eq!(target.path, None);
        assert_eq!(
            ActionSpec::Kill { tree: true }.resolve(&target),
            Ok(Some(Action::Kill {
                pid: 4321,
                start_time_ticks: Some(98_765),
                tree: true
            }))
        );
        assert_eq!(ActionSpec::Quarantine.resolve(&target), Err("file path"));
        assert_eq!(ActionSpec::Notify.resolve(&target), Ok(None));
        let empty = Target::default();
        assert_eq!(
            ActionSpec::Kill { tree: false }.resolve(&empty),
            Err("process")
        );
        assert_eq!(
            ActionSpec::Isolate { ttl_s: 5 }.resolve(&empty),
            Ok(Some(Action::Isolate { ttl_s: 5 }))
        );
    }
}
