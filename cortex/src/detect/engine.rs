//! The detection engine: loads Sigma files, indexes rules by log source category and
//! evaluates each event against the relevant rules, feeding matches into correlations.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use qsc_event::Event;
use yaml_rust2::parser::{Event as YamlEvent, Parser};
use yaml_rust2::{Yaml, YamlLoader};

use super::RuleError;
use super::correlation::{
    Correlation, CorrelationSpec, CorrelationStats, CorrelationType, EventRef, parse_correlation,
};
use super::fields::{Category, FieldView, Scratch};
use super::needles::{NeedleHits, NeedleIndex, NeedleRegistry};
use super::report::{LoadReport, LoadedRule};
use super::rule::{
    DetectionRule, Level, RuleMeta, attack_techniques, compile_detection, get, identify,
};

/// Rule files larger than this are rejected unread.
pub const MAX_RULE_FILE_BYTES: u64 = 1 << 20;
/// Deepest YAML nesting accepted in a rule file (Sigma rules need about five levels).
const MAX_YAML_DEPTH: usize = 32;

/// Errors that stop an engine from being built at all (a bad rule never does).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the combined substring automaton could not be built: {0}")]
    NeedleIndex(#[from] aho_corasick::BuildError),
}

/// Whether a hit comes from a single event or a correlation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HitKind {
    Detection,
    Correlation(CorrelationType),
}

/// One rule that matched.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RuleHit {
    pub rule_id: String,
    pub title: String,
    pub level: Level,
    /// Every tag of the rule, ATT&CK ones (`attack.t1059`) included.
    pub tags: Vec<String>,
    /// The rule's own likelihood ratio, when it declares one.
    pub likelihood_ratio: Option<f64>,
    pub kind: HitKind,
    /// The event that completed the match.
    pub event: EventRef,
    /// For correlations: the group-by values of the group that fired.
    pub group: Vec<(String, String)>,
    /// For correlations: the contributing events, oldest first (at most 64).
    pub events: Vec<EventRef>,
}

impl RuleHit {
    /// The ATT&CK technique ids the rule is tagged with (`attack.t1110.001`).
    pub fn attack_techniques(&self) -> impl Iterator<Item = &str> {
        attack_techniques(&self.tags)
    }
}

/// What a correlation listens to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Signal {
    Rule(usize),
    Correlation(usize),
}

/// `(correlation index, position in its rules list)`
type Subscriber = (usize, usize);

/// The loaded rules and the correlation state.
#[derive(Debug)]
pub struct Engine {
    rules: Vec<DetectionRule>,
    /// Per category: the rules that apply to it, in load order.
    by_category: Vec<Vec<usize>>,
    rule_reports: Vec<bool>,
    rule_subscribers: Vec<Vec<Subscriber>>,
    correlations: Vec<Correlation>,
    correlation_reports: Vec<bool>,
    correlation_subscribers: Vec<Vec<Subscriber>>,
    needles: NeedleIndex,
    scratch: Scratch,
    hits: NeedleHits,
}

/// Documents read so far, before correlations are linked.
#[derive(Default)]
struct Collected {
    rules: Vec<DetectionRule>,
    rule_paths: Vec<PathBuf>,
    correlations: Vec<CorrelationSpec>,
    correlation_paths: Vec<PathBuf>,
    ids: HashSet<String>,
    needles: NeedleRegistry,
    report: LoadReport,
}

impl Engine {
    /// Loads every `.yml`/`.yaml` file under the given files and folders (recursively).
    /// Unreadable files and rejected documents are listed in the report, never fatal.
    pub fn load_dir<P: AsRef<Path>>(paths: &[P]) -> Result<(Engine, LoadReport), EngineError> {
        let mut collected = Collected::default();
        for path in paths {
            for file in rule_files(path.as_ref(), &mut collected.report) {
                match read_rule_file(&file) {
                    Ok(text) => collected.add_text(&file, &text),
                    Err(error) => collected.report.skip(&file, 0, (None, None), error),
                }
                collected.report.files += 1;
            }
        }
        collected.finish()
    }

    /// Loads rules from in-memory YAML texts, each named for the report.
    pub fn load_texts(texts: &[(&str, &str)]) -> Result<(Engine, LoadReport), EngineError> {
        let mut collected = Collected::default();
        for (name, text) in texts {
            collected.add_text(Path::new(name), text);
            collected.report.files += 1;
        }
        collected.finish()
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len() + self.correlations.len()
    }

    /// State dropped early by each correlation, by rule id.
    pub fn correlation_stats(&self) -> impl Iterator<Item = (&str, CorrelationStats)> {
        self.correlations
            .iter()
            .map(|c| (c.meta.id.as_str(), c.stats))
    }

    /// The longest timespan of any correlation: how much history rebuilds every window.
    pub fn longest_timespan_ns(&self) -> u64 {
        self.correlations
            .iter()
            .map(Correlation::timespan_ns)
            .max()
            .unwrap_or(0)
    }

    /// Correlation groups currently held in memory, over all correlations.
    pub fn correlation_groups(&self) -> usize {
        self.correlations.iter().map(Correlation::group_count).sum()
    }

    /// Evaluates one event; returns every rule and correlation it completed.
    pub fn evaluate(&mut self, event: &Event) -> Vec<RuleHit> {
        let view = FieldView::new(event, &mut self.scratch);
        self.needles.scan(&view, &mut self.hits);
        let mut out = Vec::new();
        let mut pending: Vec<(Subscriber, String)> = Vec::new();
        for &i in &self.by_category[view.category().index()] {
            let rule = &self.rules[i];
            if !rule.matches(&view, &self.hits) {
                continue;
            }
            if self.rule_reports[i] {
                out.push(detection_hit(&rule.meta, event));
            }
            pending.extend(
                self.rule_subscribers[i]
                    .iter()
                    .map(|s| (*s, rule.meta.id.clone())),
            );
        }
        while !pending.is_empty() {
            // Higher positions first, so one event cannot complete two ordered steps alone.
            pending.sort_by(|((c1, p1), _), ((c2, p2), _)| c1.cmp(c2).then(p2.cmp(p1)));
            for ((c, position), rule_id) in std::mem::take(&mut pending) {
                let event_ref = event_ref(event, rule_id);
                let Some(fired) = self.correlations[c].observe(position, &view, event_ref.clone())
                else {
                    continue;
                };
                let correlation = &self.correlations[c];
                let meta = &correlation.meta;
                if self.correlation_reports[c] {
                    out.push(RuleHit {
                        rule_id: meta.id.clone(),
                        title: meta.title.clone(),
                        level: meta.level,
                        tags: meta.tags.clone(),
                        likelihood_ratio: meta.likelihood_ratio,
                        kind: HitKind::Correlation(correlation.kind),
                        event: event_ref,
                        group: fired.group,
                        events: fired.events,
                    });
                }
                pending.extend(
                    self.correlation_subscribers[c]
                        .iter()
                        .map(|s| (*s, meta.id.clone())),
                );
            }
        }
        out
    }
}

fn event_ref(event: &Event, rule_id: String) -> EventRef {
    EventRef {
        host_id: event.host_id.clone(),
        seq: event.seq,
        time_ns: event.time_ns,
        rule_id,
    }
}

fn detection_hit(meta: &RuleMeta, event: &Event) -> RuleHit {
    RuleHit {
        rule_id: meta.id.clone(),
        title: meta.title.clone(),
        level: meta.level,
        tags: meta.tags.clone(),
        likelihood_ratio: meta.likelihood_ratio,
        kind: HitKind::Detection,
        event: event_ref(event, meta.id.clone()),
        group: Vec::new(),
        events: Vec::new(),
    }
}

fn read_rule_file(path: &Path) -> Result<String, RuleError> {
    let metadata = std::fs::metadata(path).map_err(|e| RuleError::Unreadable(e.to_string()))?;
    if metadata.len() > MAX_RULE_FILE_BYTES {
        return Err(RuleError::TooLarge(MAX_RULE_FILE_BYTES));
    }
    std::fs::read_to_string(path).map_err(|e| RuleError::Unreadable(e.to_string()))
}

/// Rejects, before a tree is built, YAML nested deeper than any rule needs (dropping a tree
/// nested hundreds of thousands of levels deep would overflow the stack) and aliases.
fn check_nesting(text: &str) -> Result<(), RuleError> {
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|e| RuleError::Yaml(e.to_string()))?;
        match event {
            YamlEvent::SequenceStart(..) | YamlEvent::MappingStart(..) => {
                depth += 1;
                if depth > MAX_YAML_DEPTH {
                    return Err(RuleError::Yaml(format!(
                        "nested deeper than {MAX_YAML_DEPTH} levels at line {}",
                        mark.line()
                    )));
                }
            }
            YamlEvent::SequenceEnd | YamlEvent::MappingEnd => depth = depth.saturating_sub(1),
            // The loader copies the anchored node for every alias: a few lines of nested
            // aliases would expand to gigabytes ("billion laughs"). Sigma rules need none.
            YamlEvent::Alias(_) => {
                return Err(RuleError::Yaml(format!(
                    "YAML aliases are not accepted in rules (line {})",
                    mark.line()
                )));
            }
            YamlEvent::StreamEnd => return Ok(()),
            _ => {}
        }
    }
}

/// The rule files under `path`, sorted; unreadable folders are reported.
fn rule_files(path: &Path, report: &mut LoadReport) -> Vec<PathBuf> {
    if !path.is_dir() {
        return vec![path.to_owned()];
    }
    let mut files = Vec::new();
    let mut folders = vec![path.to_owned()];
    while let Some(folder) = folders.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) => {
                report.skip(
                    &folder,
                    0,
                    (None, None),
                    RuleError::Unreadable(e.to_string()),
                );
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let is_rule = path.extension().is_some_and(|e| e == "yml" || e == "yaml");
            // Symlinked folders are not followed: a link to a parent would loop forever.
            if kind.is_dir() {
                folders.push(path);
            } else if is_rule && (kind.is_file() || path.is_file()) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

impl Collected {
    fn add_text(&mut self, path: &Path, text: &str) {
        if let Err(error) = check_nesting(text) {
            self.report.skip(path, 0, (None, None), error);
            return;
        }
        let docs = match YamlLoader::load_from_str(text) {
            Ok(docs) => docs,
            Err(e) => {
                self.report
                    .skip(path, 0, (None, None), RuleError::Yaml(e.to_string()));
                return;
            }
        };
        for (index, doc) in docs.iter().enumerate() {
            if matches!(doc, Yaml::Null) {
                continue;
            }
            if let Err(error) = self.add_document(path, doc) {
                self.report.skip(path, index, identify(doc), error);
            }
        }
    }

    fn add_document(&mut self, path: &Path, doc: &Yaml) -> Result<(), RuleError> {
        let Yaml::Hash(map) = doc else {
            return Err(RuleError::NotAMapping);
        };
        if get(map, "correlation").is_some() {
            let spec = parse_correlation(map)?;
            self.claim_id(&spec.meta)?;
            self.correlations.push(spec);
            self.correlation_paths.push(path.to_owned());
        } else if get(map, "detection").is_some() {
            let rule = compile_detection(map, &mut self.needles)?;
            self.claim_id(&rule.meta)?;
            self.rules.push(rule);
            self.rule_paths.push(path.to_owned());
        } else if get(map, "filter").is_some() {
            return Err(RuleError::FilterDocument);
        } else {
            return Err(RuleError::MissingKey("detection"));
        }
        Ok(())
    }

    fn claim_id(&mut self, meta: &RuleMeta) -> Result<(), RuleError> {
        if self.ids.insert(meta.id.clone()) {
            Ok(())
        } else {
            Err(RuleError::DuplicateId(meta.id.clone()))
        }
    }

    /// Resolves references by `name` or `id`.
    fn lookup(&self, reference: &str, alive: &[bool]) -> Option<Signal> {
        let matches = |m: &RuleMeta| m.id == reference || m.name.as_deref() == Some(reference);
        if let Some(i) = self.rules.iter().position(|r| matches(&r.meta)) {
            return Some(Signal::Rule(i));
        }
        self.correlations
            .iter()
            .enumerate()
            .find(|(i, c)| alive[*i] && matches(&c.meta))
            .map(|(i, _)| Signal::Correlation(i))
    }

    /// Drops correlations whose references do not resolve (repeating, since dropping one can
    /// orphan another) and those that take part in a cycle.
    fn resolve_references(&mut self) -> (Vec<bool>, Vec<Vec<Signal>>) {
        let n = self.correlations.len();
        let mut alive = vec![true; n];
        let mut errors: Vec<Option<RuleError>> = vec![None; n];
        let mut sources = vec![Vec::new(); n];
        loop {
            let mut changed = false;
            for i in 0..n {
                if !alive[i] {
                    continue;
                }
                let mut resolved = Vec::new();
                for reference in &self.correlations[i].rules {
                    match self.lookup(reference, &alive) {
                        Some(signal) => resolved.push(signal),
                        None => {
                            errors[i] = Some(RuleError::UnknownRuleReference(reference.clone()));
                            alive[i] = false;
                            changed = true;
                            break;
                        }
                    }
                }
                sources[i] = resolved;
            }
            if !changed {
                break;
            }
        }
        for i in 0..n {
            if alive[i] && reaches(i, i, &sources, &mut vec![false; n]) {
                errors[i] = Some(RuleError::CorrelationCycle(
                    self.correlations[i].meta.id.clone(),
                ));
            }
        }
        for (i, error) in errors.into_iter().enumerate() {
            if let Some(error) = error {
                alive[i] = false;
                let meta = &self.correlations[i].meta;
                let path = self.correlation_paths[i].clone();
                self.report.skip(
                    &path,
                    0,
                    (Some(meta.id.clone()), Some(meta.title.clone())),
                    error,
                );
            }
        }
        (alive, sources)
    }

    fn finish(mut self) -> Result<(Engine, LoadReport), EngineError> {
        let (alive, sources) = self.resolve_references();
        // Old index → new index for the correlations that survived.
        let mut new_index = vec![None; self.correlations.len()];
        let mut next = 0;
        for (i, a) in alive.iter().enumerate() {
            if *a {
                new_index[i] = Some(next);
                next += 1;
            }
        }
        let mut rule_subscribers = vec![Vec::new(); self.rules.len()];
        let mut correlation_subscribers = vec![Vec::new(); next];
        let mut rule_reports = vec![true; self.rules.len()];
        let mut correlation_reports = vec![true; next];
        let mut generated: HashSet<Signal> = HashSet::new();
        let mut correlations = Vec::with_capacity(next);
        for (old, spec) in self.correlations.iter().enumerate() {
            let Some(new) = new_index[old] else { continue };
            let names: Vec<Option<String>> = sources[old]
                .iter()
                .map(|s| match s {
                    Signal::Rule(r) => self.rules[*r].meta.name.clone(),
                    Signal::Correlation(c) => self.correlations[*c].meta.name.clone(),
                })
                .collect();
            let linked = Correlation::link(spec, &names);
            for (position, signal) in sources[old].iter().enumerate() {
                let signal = match signal {
                    Signal::Rule(r) => Signal::Rule(*r),
                    Signal::Correlation(c) => match new_index[*c] {
                        Some(c) => Signal::Correlation(c),
                        None => continue,
                    },
                };
                match signal {
                    Signal::Rule(r) => {
                        rule_subscribers[r].push((new, position));
                        rule_reports[r] = false;
                    }
                    Signal::Correlation(c) => {
                        correlation_subscribers[c].push((new, position));
                        correlation_reports[c] = false;
                    }
                }
                if spec.generate {
                    generated.insert(signal);
                }
            }
            correlations.push(linked);
            self.report.loaded.push(LoadedRule {
                path: self.correlation_paths[old].clone(),
                id: spec.meta.id.clone(),
                title: spec.meta.title.clone(),
                correlation: true,
            });
        }
        for signal in generated {
            match signal {
                Signal::Rule(r) => rule_reports[r] = true,
                Signal::Correlation(c) => correlation_reports[c] = true,
            }
        }
        let mut by_category = vec![Vec::new(); Category::ALL.len()];
        for (i, rule) in self.rules.iter().enumerate() {
            match rule.category {
                Some(category) => by_category[category.index()].push(i),
                None => by_category.iter_mut().for_each(|list| list.push(i)),
            }
            self.report.loaded.push(LoadedRule {
                path: self.rule_paths[i].clone(),
                id: rule.meta.id.clone(),
                title: rule.meta.title.clone(),
                correlation: false,
            });
        }
        let needles = self.needles.build()?;
        let hits = needles.new_hits();
        let engine = Engine {
            rules: self.rules,
            by_category,
            rule_reports,
            rule_subscribers,
            correlations,
            correlation_reports,
            correlation_subscribers,
            needles,
            scratch: Scratch::default(),
            hits,
        };
        Ok((engine, self.report))
    }
}

/// Whether correlation `from` depends (transitively) on `target`.
fn reaches(from: usize, target: usize, sources: &[Vec<Signal>], visited: &mut Vec<bool>) -> bool {
    for signal in &sources[from] {
        if let Signal::Correlation(c) = signal {
            if *c == target {
                return true;
            }
            if !visited[*c] {
                visited[*c] = true;
                if reaches(*c, target, sources, visited) {
                    return true;
                }
            }
        }
    }
    false
}
