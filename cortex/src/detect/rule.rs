//! Sigma detection rules: YAML documents compiled into a form that is quick to evaluate.
//!
//! A search identifier is a map (entries AND-ed), a list of maps (OR-ed) or a list of plain
//! values (keywords, OR-ed, looked for in every text field). Field names are resolved to
//! [`FieldId`]s and values compiled once, at load.

use yaml_rust2::Yaml;
use yaml_rust2::yaml::Hash;

use super::RuleError;
use super::condition::{self, Condition};
use super::fields::{Category, FieldLookup, FieldView, lookup_field};
use super::needles::{NeedleHits, NeedleRegistry};
use super::value::{ValueTest, compile_entry};

/// Sigma rule `level`: the severity a rule's author gives it. Detection reads it from rules;
/// scoring turns it into a default likelihood ratio.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

impl Level {
    fn parse(text: &str) -> Option<Level> {
        Some(match text {
            "informational" => Level::Informational,
            "low" => Level::Low,
            "medium" => Level::Medium,
            "high" => Level::High,
            "critical" => Level::Critical,
            _ => return None,
        })
    }
}

/// What every rule and correlation carries.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleMeta {
    /// The `id`, or the `name` (then the title) when a document has none.
    pub id: String,
    pub name: Option<String>,
    pub title: String,
    /// `medium` when the document does not say.
    pub level: Level,
    pub tags: Vec<String>,
    /// The rule's own likelihood ratio (QSC's `likelihood_ratio` key), used by scoring instead
    /// of its level's default; `[score.rule_lr]` still beats it.
    pub likelihood_ratio: Option<f64>,
}

/// The ATT&CK technique tags (`attack.t1059`, `attack.t1059.004`) among `tags`.
pub fn attack_techniques(tags: &[String]) -> impl Iterator<Item = &str> {
    tags.iter().map(String::as_str).filter(|t| {
        t.strip_prefix("attack.t")
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// One compiled search identifier: OR over alternatives, each an AND of value tests.
#[derive(Debug)]
struct Search {
    alternatives: Vec<Vec<ValueTest>>,
}

impl Search {
    fn matches(&self, view: &FieldView<'_>, hits: &NeedleHits) -> bool {
        self.alternatives
            .iter()
            .any(|tests| tests.iter().all(|t| t.matches(view, hits)))
    }
}

/// A compiled Sigma detection rule.
#[derive(Debug)]
pub struct DetectionRule {
    pub meta: RuleMeta,
    /// `None` when the rule names no category and so applies to every event.
    pub category: Option<Category>,
    searches: Vec<Search>,
    condition: Condition,
}

impl DetectionRule {
    pub fn matches(&self, view: &FieldView<'_>, hits: &NeedleHits) -> bool {
        self.condition
            .evaluate(&mut |i| self.searches[i].matches(view, hits))
    }
}

/// Text of a scalar key in a mapping.
pub fn get<'a>(map: &'a Hash, key: &str) -> Option<&'a Yaml> {
    map.get(&Yaml::String(key.to_owned()))
}

pub fn get_str<'a>(map: &'a Hash, key: &'static str) -> Result<Option<&'a str>, RuleError> {
    match get(map, key) {
        None | Some(Yaml::Null) => Ok(None),
        Some(Yaml::String(s)) => Ok(Some(s)),
        Some(_) => Err(RuleError::InvalidKey {
            key: key.into(),
            reason: "must be a string".into(),
        }),
    }
}

/// Id and title as well as they can be read, for naming a document in the load report even
/// when it is rejected.
pub fn identify(doc: &Yaml) -> (Option<String>, Option<String>) {
    let Yaml::Hash(map) = doc else {
        return (None, None);
    };
    let text = |key| match get(map, key) {
        Some(Yaml::String(s)) => Some(s.clone()),
        _ => None,
    };
    (text("id").or_else(|| text("name")), text("title"))
}

/// Reads the fields common to rules and correlations.
pub fn parse_meta(map: &Hash) -> Result<RuleMeta, RuleError> {
    let title = get_str(map, "title")?
        .ok_or(RuleError::MissingKey("title"))?
        .to_owned();
    let name = get_str(map, "name")?.map(str::to_owned);
    let id = get_str(map, "id")?
        .map(str::to_owned)
        .or_else(|| name.clone())
        .unwrap_or_else(|| title.clone());
    let level = match get_str(map, "level")? {
        None => Level::Medium,
        Some(text) => Level::parse(text).ok_or_else(|| RuleError::InvalidKey {
            key: "level".into(),
            reason: format!("`{text}` is not informational, low, medium, high or critical"),
        })?,
    };
    let tags = match get(map, "tags") {
        None | Some(Yaml::Null) => Vec::new(),
        Some(Yaml::Array(items)) => items
            .iter()
            .map(|t| match t {
                Yaml::String(s) => Ok(s.clone()),
                _ => Err(RuleError::InvalidKey {
                    key: "tags".into(),
                    reason: "every tag must be a string".into(),
                }),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(RuleError::InvalidKey {
                key: "tags".into(),
                reason: "must be a list".into(),
            });
        }
    };
    Ok(RuleMeta {
        id,
        name,
        title,
        level,
        tags,
        likelihood_ratio: parse_likelihood_ratio(map)?,
    })
}

/// The optional `likelihood_ratio` key: a finite number above 0 (YAML integer or real).
fn parse_likelihood_ratio(map: &Hash) -> Result<Option<f64>, RuleError> {
    let value = match get(map, "likelihood_ratio") {
        None | Some(Yaml::Null) => return Ok(None),
        Some(Yaml::Integer(n)) => *n as f64,
        Some(Yaml::Real(text)) => text.parse::<f64>().unwrap_or(f64::NAN),
        Some(_) => f64::NAN,
    };
    if value.is_finite() && value > 0.0 {
        Ok(Some(value))
    } else {
        Err(RuleError::InvalidKey {
            key: "likelihood_ratio".into(),
            reason: "must be a finite number above 0".into(),
        })
    }
}

/// Which events a rule applies to, from its `logsource`.
fn parse_logsource(map: &Hash) -> Result<Option<Category>, RuleError> {
    let Some(Yaml::Hash(logsource)) = get(map, "logsource") else {
        return Err(RuleError::MissingKey("logsource"));
    };
    if let Some(product) = get_str(logsource, "product")?
        && !matches!(product, "linux" | "qsc")
    {
        return Err(RuleError::UnsupportedLogsource(format!(
            "product `{product}` (QSC watches Linux hosts: use `linux`)"
        )));
    }
    if let Some(service) = get_str(logsource, "service")? {
        let why = if service == "auditd" {
            "QSC reads the kernel through eBPF, not auditd records"
        } else {
            "QSC does not ingest this service's log lines"
        };
        return Err(RuleError::UnsupportedLogsource(format!(
            "service `{service}`: {why}"
        )));
    }
    match get_str(logsource, "category")? {
        None => Ok(None),
        Some(name) => Category::from_name(name).map(Some).ok_or_else(|| {
            RuleError::UnsupportedLogsource(format!("category `{name}` is not one QSC produces"))
        }),
    }
}

/// Compiles a detection document (one with a `detection` key).
pub fn compile_detection(
    map: &Hash,
    needles: &mut NeedleRegistry,
) -> Result<DetectionRule, RuleError> {
    let meta = parse_meta(map)?;
    let category = parse_logsource(map)?;
    let Some(Yaml::Hash(detection)) = get(map, "detection") else {
        return Err(RuleError::InvalidKey {
            key: "detection".into(),
            reason: "must be a mapping of search identifiers and a condition".into(),
        });
    };
    let mut names = Vec::new();
    let mut searches = Vec::new();
    for (key, value) in detection {
        let Yaml::String(name) = key else {
            return Err(RuleError::InvalidKey {
                key: "detection".into(),
                reason: "search identifiers must be strings".into(),
            });
        };
        // `timeframe` belongs to the obsolete aggregation syntax; it is harmless without one.
        if name == "condition" || name == "timeframe" {
            continue;
        }
        searches.push(compile_search(name, value, needles)?);
        names.push(name.clone());
    }
    let condition = match get(detection, "condition") {
        Some(Yaml::String(text)) => condition::parse(text, &names)?,
        Some(Yaml::Array(list)) => {
            let mut parts = Vec::new();
            for item in list {
                let Yaml::String(text) = item else {
                    return Err(RuleError::InvalidKey {
                        key: "condition".into(),
                        reason: "a condition list must hold strings".into(),
                    });
                };
                parts.push(condition::parse(text, &names)?);
            }
            Condition::Or(parts)
        }
        _ => return Err(RuleError::MissingKey("condition")),
    };
    Ok(DetectionRule {
        meta,
        category,
        searches,
        condition,
    })
}

fn compile_search(
    name: &str,
    value: &Yaml,
    needles: &mut NeedleRegistry,
) -> Result<Search, RuleError> {
    let invalid = |reason: &str| RuleError::InvalidSearch {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let alternatives = match value {
        Yaml::Hash(map) => vec![compile_map(map, needles)?],
        Yaml::Array(items) if items.is_empty() => return Err(invalid("an empty list")),
        Yaml::Array(items) if items.iter().all(|i| matches!(i, Yaml::Hash(_))) => items
            .iter()
            .filter_map(|i| match i {
                Yaml::Hash(map) => Some(compile_map(map, needles)),
                _ => None,
            })
            .collect::<Result<_, _>>()?,
        Yaml::Array(items) if items.iter().any(|i| matches!(i, Yaml::Hash(_))) => {
            return Err(invalid("a list must hold either maps or plain values"));
        }
        // A list of plain values (or one value): keywords.
        keywords => vec![vec![compile_entry(name, None, &[], keywords, needles)?]],
    };
    Ok(Search { alternatives })
}

fn compile_map(map: &Hash, needles: &mut NeedleRegistry) -> Result<Vec<ValueTest>, RuleError> {
    let mut tests = Vec::with_capacity(map.len());
    for (key, value) in map {
        let key = match key {
            Yaml::String(s) => s.clone(),
            Yaml::Integer(n) => n.to_string(),
            _ => {
                return Err(RuleError::InvalidKey {
                    key: "detection".into(),
                    reason: "field names must be strings".into(),
                });
            }
        };
        let mut parts = key.split('|');
        let field_name = parts.next().unwrap_or_default();
        let modifiers: Vec<&str> = parts.collect();
        let field = if field_name.is_empty() {
            None
        } else {
            match lookup_field(field_name) {
                FieldLookup::Known(field) => Some(field),
                FieldLookup::Unavailable => {
                    return Err(RuleError::FieldUnavailable(field_name.to_owned()));
                }
                FieldLookup::Unknown => return Err(RuleError::UnknownField(field_name.to_owned())),
            }
        };
        tests.push(compile_entry(&key, field, &modifiers, value, needles)?);
    }
    Ok(tests)
}
