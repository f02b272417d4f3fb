//! Sigma correlation rules (`event_count`, `value_count`, `temporal`, `temporal_ordered`)
//! evaluated over sliding windows as events arrive.
//!
//! State is bounded: each group keeps at most [`MAX_ENTRIES_PER_GROUP`] matched events, each
//! correlation at most [`MAX_GROUPS`] groups; entries older than the timespan expire, and what
//! had to be dropped early is counted in [`CorrelationStats`]. Time is the events' own
//! `time_ns`, so replayed or delayed streams correlate the same way as live ones. After a
//! correlation fires for a group, that group's window starts over.

use std::collections::{HashMap, VecDeque};

use yaml_rust2::Yaml;
use yaml_rust2::yaml::Hash;

use super::RuleError;
use super::fields::{FieldId, FieldLookup, FieldView, lookup_field};
use super::rule::{RuleMeta, get, get_str, parse_meta};

/// Matched events kept per group at most; the oldest go first.
pub const MAX_ENTRIES_PER_GROUP: usize = 1024;
/// Groups kept per correlation at most; the least recently active go first.
pub const MAX_GROUPS: usize = 10_000;
/// Contributing events reported with one hit at most (the most recent ones).
pub const MAX_REPORTED_EVENTS: usize = 64;
/// Longest accepted timespan.
const MAX_TIMESPAN_NS: u64 = 31 * 24 * 3600 * 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrelationType {
    EventCount,
    ValueCount,
    Temporal,
    TemporalOrdered,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CountOp {
    Gt,
    Gte,
    Lt,
    Lte,
    Eq,
    Neq,
}

/// The AND of one or more bounds on a count.
#[derive(Clone, Debug, PartialEq)]
struct CountCondition {
    bounds: Vec<(CountOp, u64)>,
}

impl CountCondition {
    fn holds(&self, count: u64) -> bool {
        self.bounds.iter().all(|(op, bound)| match op {
            CountOp::Gt => count > *bound,
            CountOp::Gte => count >= *bound,
            CountOp::Lt => count < *bound,
            CountOp::Lte => count <= *bound,
            CountOp::Eq => count == *bound,
            CountOp::Neq => count != *bound,
        })
    }
}

/// A correlation document as written, before its rule references are resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct CorrelationSpec {
    pub meta: RuleMeta,
    pub kind: CorrelationType,
    /// Names or ids of the rules (or correlations) it correlates, in order.
    pub rules: Vec<String>,
    group_by: Vec<String>,
    timespan_ns: u64,
    condition: Option<CountCondition>,
    value_field: Option<FieldId>,
    /// alias → (referenced rule name → field name)
    aliases: HashMap<String, HashMap<String, String>>,
    /// Whether the referenced rules also report hits of their own.
    pub generate: bool,
}

fn invalid(key: &str, reason: impl Into<String>) -> RuleError {
    RuleError::InvalidKey {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Parses `30s`, `5m`, `1h`, `2d`.
pub fn parse_timespan(text: &str) -> Result<u64, RuleError> {
    let err = || {
        invalid(
            "timespan",
            format!("`{text}` is not a number followed by s, m, h or d"),
        )
    };
    let Some(unit) = text.chars().last() else {
        return Err(err());
    };
    let digits = &text[..text.len() - unit.len_utf8()];
    let n: u64 = digits.parse().map_err(|_| err())?;
    let unit_ns: u64 = match unit {
        's' => 1_000_000_000,
        'm' => 60_000_000_000,
        'h' => 3_600_000_000_000,
        'd' => 86_400_000_000_000,
        _ => return Err(err()),
    };
    match n.checked_mul(unit_ns) {
        Some(ns) if ns > 0 && ns <= MAX_TIMESPAN_NS => Ok(ns),
        _ => Err(invalid(
            "timespan",
            format!("`{text}` must be between 1s and 31d"),
        )),
    }
}

fn parse_condition(
    value: Option<&Yaml>,
) -> Result<(Option<CountCondition>, Option<FieldId>), RuleError> {
    let Some(value) = value else {
        return Ok((None, None));
    };
    let Yaml::Hash(map) = value else {
        return Err(invalid("condition", "must be a mapping such as `gte: 10`"));
    };
    let mut bounds = Vec::new();
    let mut field = None;
    for (key, value) in map {
        let key = match key {
            Yaml::String(k) => k.as_str(),
            _ => return Err(invalid("condition", "keys must be strings")),
        };
        if key == "field" {
            let Yaml::String(name) = value else {
                return Err(invalid("condition.field", "must be a field name"));
            };
            field = Some(match lookup_field(name) {
                FieldLookup::Known(f) => f,
                FieldLookup::Unavailable => return Err(RuleError::FieldUnavailable(name.clone())),
                FieldLookup::Unknown => return Err(RuleError::UnknownField(name.clone())),
            });
            continue;
        }
        let op = match key {
            "gt" => CountOp::Gt,
            "gte" => CountOp::Gte,
            "lt" => CountOp::Lt,
            "lte" => CountOp::Lte,
            "eq" => CountOp::Eq,
            "neq" => CountOp::Neq,
            other => {
                return Err(invalid(
                    "condition",
                    format!("`{other}` is not gt, gte, lt, lte, eq or neq"),
                ));
            }
        };
        let Yaml::Integer(n) = value else {
            return Err(invalid(
                "condition",
                format!("`{key}` needs a whole number"),
            ));
        };
        let n = u64::try_from(*n).map_err(|_| invalid("condition", "counts cannot be negative"))?;
        bounds.push((op, n));
    }
    if bounds.is_empty() {
        return Ok((None, field));
    }
    // Hits are decided as events arrive; a count that only has an upper bound would be true
    // at the first event, so it needs a lower bound to mean anything.
    let has_lower = bounds.iter().any(|(op, n)| match op {
        CountOp::Gt => true,
        CountOp::Gte | CountOp::Eq => *n > 0,
        _ => false,
    });
    if !has_lower {
        return Err(RuleError::UnsupportedCorrelationCondition(
            "it needs a lower bound (gt, gte or eq above 0): QSC decides as events arrive and cannot detect the absence of events".into(),
        ));
    }
    Ok((Some(CountCondition { bounds }), field))
}

fn string_list(map: &Hash, key: &'static str) -> Result<Vec<String>, RuleError> {
    match get(map, key) {
        None | Some(Yaml::Null) => Ok(Vec::new()),
        Some(Yaml::String(s)) => Ok(vec![s.clone()]),
        Some(Yaml::Array(items)) => items
            .iter()
            .map(|i| match i {
                Yaml::String(s) => Ok(s.clone()),
                _ => Err(invalid(key, "every entry must be a string")),
            })
            .collect(),
        Some(_) => Err(invalid(key, "must be a list of strings")),
    }
}

fn parse_aliases(map: &Hash) -> Result<HashMap<String, HashMap<String, String>>, RuleError> {
    let mut aliases = HashMap::new();
    let Some(value) = get(map, "aliases") else {
        return Ok(aliases);
    };
    let Yaml::Hash(entries) = value else {
        return Err(invalid(
            "aliases",
            "must map alias names to {rule name: field}",
        ));
    };
    for (alias, per_rule) in entries {
        let (Yaml::String(alias), Yaml::Hash(per_rule)) = (alias, per_rule) else {
            return Err(invalid(
                "aliases",
                "must map alias names to {rule name: field}",
            ));
        };
        let mut fields = HashMap::new();
        for (rule, field) in per_rule {
            let (Yaml::String(rule), Yaml::String(field)) = (rule, field) else {
                return Err(invalid("aliases", "rule names and fields must be strings"));
            };
            fields.insert(rule.clone(), field.clone());
        }
        aliases.insert(alias.clone(), fields);
    }
    Ok(aliases)
}

/// Parses a document that has a `correlation` key.
pub fn parse_correlation(map: &Hash) -> Result<CorrelationSpec, RuleError> {
    let meta = parse_meta(map)?;
    let Some(Yaml::Hash(body)) = get(map, "correlation") else {
        return Err(invalid("correlation", "must be a mapping"));
    };
    let kind = match get_str(body, "type")?.ok_or(RuleError::MissingKey("correlation.type"))? {
        "event_count" => CorrelationType::EventCount,
        "value_count" => CorrelationType::ValueCount,
        "temporal" => CorrelationType::Temporal,
        "temporal_ordered" => CorrelationType::TemporalOrdered,
        other => return Err(RuleError::UnsupportedCorrelationType(other.to_owned())),
    };
    let rules = string_list(body, "rules")?;
    if rules.is_empty() {
        return Err(RuleError::MissingKey("correlation.rules"));
    }
    let timespan =
        get_str(body, "timespan")?.ok_or(RuleError::MissingKey("correlation.timespan"))?;
    let timespan_ns = parse_timespan(timespan)?;
    let (condition, value_field) = parse_condition(get(body, "condition"))?;
    match kind {
        CorrelationType::EventCount | CorrelationType::ValueCount if condition.is_none() => {
            return Err(RuleError::MissingKey("correlation.condition"));
        }
        CorrelationType::ValueCount if value_field.is_none() => {
            return Err(RuleError::MissingKey("correlation.condition.field"));
        }
        _ => {}
    }
    let generate = match get(map, "generate").or_else(|| get(body, "generate")) {
        None => false,
        Some(Yaml::Boolean(b)) => *b,
        Some(_) => return Err(invalid("generate", "must be true or false")),
    };
    let group_by = string_list(body, "group-by")?;
    let aliases = parse_aliases(body)?;
    let fields = aliases.values().flat_map(|per_rule| per_rule.values());
    let plain = group_by.iter().filter(|name| !aliases.contains_key(*name));
    for name in fields.chain(plain) {
        match lookup_field(name) {
            FieldLookup::Known(_) => {}
            FieldLookup::Unavailable => return Err(RuleError::FieldUnavailable(name.clone())),
            FieldLookup::Unknown => return Err(RuleError::UnknownField(name.clone())),
        }
    }
    Ok(CorrelationSpec {
        meta,
        kind,
        rules,
        group_by,
        timespan_ns,
        condition,
        value_field,
        aliases,
        generate,
    })
}

/// A reference to one event, kept as evidence.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EventRef {
    pub host_id: String,
    pub seq: u64,
    pub time_ns: u64,
    /// The rule (or correlation) the event matched.
    pub rule_id: String,
}

/// How one group-by entry is read from an event.
#[derive(Debug)]
enum GroupField {
    Field(Option<FieldId>),
    /// Per position in `rules`: the field holding the alias's value for that rule's events.
    Alias(Vec<Option<FieldId>>),
}

#[derive(Debug)]
struct Entry {
    time_ns: u64,
    position: usize,
    value: Option<String>,
    event: EventRef,
}

#[derive(Debug, Default)]
struct GroupState {
    entries: VecDeque<Entry>,
    last_time_ns: u64,
}

/// Counts of state dropped before its time, to report instead of losing silently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CorrelationStats {
    pub evicted_entries: u64,
    pub evicted_groups: u64,
}

/// A correlation that fired.
#[derive(Debug)]
pub struct Fired {
    /// `(group-by name, value)` pairs of the group that fired.
    pub group: Vec<(String, String)>,
    pub events: Vec<EventRef>,
}

/// A correlation with its references resolved and its window state.
#[derive(Debug)]
pub struct Correlation {
    pub meta: RuleMeta,
    pub kind: CorrelationType,
    group_names: Vec<String>,
    group_by: Vec<GroupField>,
    timespan_ns: u64,
    condition: Option<CountCondition>,
    value_field: Option<FieldId>,
    positions: usize,
    groups: HashMap<String, GroupState>,
    pub stats: CorrelationStats,
}

impl Correlation {
    /// How far back this correlation looks.
    pub fn timespan_ns(&self) -> u64 {
        self.timespan_ns
    }

    /// Resolves group-by names and aliases (already validated by [`parse_correlation`]).
    /// `rule_names[i]` is the `name` of the i-th referenced rule, if it has one.
    pub fn link(spec: &CorrelationSpec, rule_names: &[Option<String>]) -> Correlation {
        let known = |name: &str| match lookup_field(name) {
            FieldLookup::Known(f) => Some(f),
            _ => None,
        };
        let group_by = spec
            .group_by
            .iter()
            .map(|name| match spec.aliases.get(name) {
                Some(per_rule) => GroupField::Alias(
                    rule_names
                        .iter()
                        .map(|rule| {
                            rule.as_ref()
                                .and_then(|r| per_rule.get(r))
                                .and_then(|f| known(f))
                        })
                        .collect(),
                ),
                None => GroupField::Field(known(name)),
            })
            .collect();
        Correlation {
            meta: spec.meta.clone(),
            kind: spec.kind,
            group_names: spec.group_by.clone(),
            group_by,
            timespan_ns: spec.timespan_ns,
            condition: spec.condition.clone(),
            value_field: spec.value_field,
            positions: rule_names.len(),
            groups: HashMap::new(),
            stats: CorrelationStats::default(),
        }
    }

    fn group_values(&self, position: usize, view: &FieldView<'_>) -> Vec<String> {
        self.group_by
            .iter()
            .map(|g| {
                let field = match g {
                    GroupField::Field(f) => *f,
                    GroupField::Alias(per_position) => {
                        per_position.get(position).copied().flatten()
                    }
                };
                field
                    .and_then(|f| view.get(f))
                    .map(|v| v.with_text(str::to_owned))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Records that the event in `view` matched the rule at `position` of this correlation's
    /// `rules` list; returns a hit when the correlation's condition is met.
    pub fn observe(
        &mut self,
        position: usize,
        view: &FieldView<'_>,
        event: EventRef,
    ) -> Option<Fired> {
        let values = self.group_values(position, view);
        let key = values.join("\u{1f}");
        let now = event.time_ns;
        let value = self
            .value_field
            .and_then(|f| view.get(f))
            .map(|v| v.with_text(str::to_owned));
        if !self.groups.contains_key(&key) && self.groups.len() >= MAX_GROUPS {
            self.make_room(now);
        }
        let timespan = self.timespan_ns;
        let group = self.groups.entry(key.clone()).or_default();
        group.last_time_ns = group.last_time_ns.max(now);
        let horizon = group.last_time_ns.saturating_sub(timespan);
        if now < horizon {
            // Arrived after its window had already passed.
            return None;
        }
        while group.entries.front().is_some_and(|e| e.time_ns < horizon) {
            group.entries.pop_front();
        }
        if group.entries.len() >= MAX_ENTRIES_PER_GROUP {
            group.entries.pop_front();
            self.stats.evicted_entries += 1;
        }
        // Keep time order even when events arrive slightly out of order.
        let at = group.entries.partition_point(|e| e.time_ns <= now);
        group.entries.insert(
            at,
            Entry {
                time_ns: now,
                position,
                value,
                event,
            },
        );
        if !self.groups.get(&key).is_some_and(|g| self.condition_met(g)) {
            return None;
        }
        let group = self.groups.remove(&key)?;
        let skip = group.entries.len().saturating_sub(MAX_REPORTED_EVENTS);
        Some(Fired {
            group: self.group_names.iter().cloned().zip(values).collect(),
            events: group
                .entries
                .into_iter()
                .skip(skip)
                .map(|e| e.event)
                .collect(),
        })
    }

    fn condition_met(&self, group: &GroupState) -> bool {
        let count = match self.kind {
            CorrelationType::EventCount => group.entries.len() as u64,
            CorrelationType::ValueCount => {
                let mut values: Vec<&str> = group
                    .entries
                    .iter()
                    .filter_map(|e| e.value.as_deref())
                    .collect();
                values.sort_unstable();
                values.dedup();
                values.len() as u64
            }
            CorrelationType::Temporal => {
                let mut seen = vec![false; self.positions];
                for e in &group.entries {
                    seen[e.position] = true;
                }
                seen.iter().filter(|s| **s).count() as u64
            }
            CorrelationType::TemporalOrdered => {
                // Longest prefix of `rules` found in order (greedy subsequence match).
                let mut next = 0;
                for e in &group.entries {
                    if e.position == next {
                        next += 1;
                    }
                }
                next as u64
            }
        };
        match &self.condition {
            Some(condition) => condition.holds(count),
            None => count == self.positions as u64,
        }
    }

    /// Drops expired groups, or the least recently active one when none has expired.
    fn make_room(&mut self, now: u64) {
        let horizon = now.saturating_sub(self.timespan_ns);
        let before = self.groups.len();
        self.groups.retain(|_, g| g.last_time_ns >= horizon);
        if self.groups.len() < before {
            return;
        }
        let oldest = self
            .groups
            .iter()
            .min_by_key(|(_, g)| g.last_time_ns)
            .map(|(k, _)| k.clone());
        if let Some(key) = oldest {
            self.groups.remove(&key);
            self.stats.evicted_groups += 1;
        }
    }

    /// Groups currently held (for metrics and tests).
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yaml_rust2::YamlLoader;

    fn spec(text: &str) -> Result<CorrelationSpec, RuleError> {
        let docs = YamlLoader::load_from_str(text).unwrap();
        let Yaml::Hash(map) = &docs[0] else {
            panic!("not a map")
        };
        parse_correlation(map)
    }

    #[test]
    fn timespans() {
        assert_eq!(parse_timespan("90s").unwrap(), 90_000_000_000);
        assert_eq!(parse_timespan("5m").unwrap(), 300_000_000_000);
        assert_eq!(parse_timespan("1d").unwrap(), 86_400_000_000_000);
        for bad in ["", "m", "5", "5x", "0s", "99999d", "-1m", "5é", "é"] {
            assert!(parse_timespan(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn condition_needs_a_lower_bound_and_value_count_a_field() {
        let base = "title: t\ncorrelation:\n  type: event_count\n  rules: [a]\n  timespan: 1m\n";
        assert!(spec(&format!("{base}  condition:\n    gte: 3\n")).is_ok());
        assert!(spec(&format!("{base}  condition:\n    gt: 3\n    lte: 9\n")).is_ok());
        assert!(matches!(
            spec(&format!("{base}  condition:\n    lt: 3\n")),
            Err(RuleError::UnsupportedCorrelationCondition(_))
        ));
        assert!(matches!(
            spec(base),
            Err(RuleError::MissingKey("correlation.condition"))
        ));
        let vc = "title: t\ncorrelation:\n  type: value_count\n  rules: [a]\n  timespan: 1m\n  condition:\n    gte: 3\n";
        assert!(matches!(
            spec(vc),
            Err(RuleError::MissingKey("correlation.condition.field"))
        ));
        let other = "title: t\ncorrelation:\n  type: value_sum\n  rules: [a]\n  timespan: 1m\n";
        assert!(matches!(
            spec(other),
            Err(RuleError::UnsupportedCorrelationType(_))
        ));
    }

    #[test]
    fn count_conditions() {
        let c = CountCondition {
            bounds: vec![(CountOp::Gt, 2), (CountOp::Lte, 4)],
        };
        assert!(!c.holds(2));
        assert!(c.holds(3));
        assert!(c.holds(4));
        assert!(!c.holds(5));
        let c = CountCondition {
            bounds: vec![(CountOp::Eq, 2), (CountOp::Neq, 3)],
        };
        assert!(c.holds(2));
        assert!(!c.holds(3));
    }
}
