//! Compiled value tests: one `Field|modifier|…: values` entry of a selection.
//!
//! Matching is case-insensitive by default (ASCII case folding; non-ASCII characters compare
//! exactly), case-sensitive with `cased`, and regular expressions are case-sensitive unless the
//! `i` sub-modifier is given, as the Sigma specification says.

use std::net::IpAddr;

use aho_corasick::AhoCorasick;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use yaml_rust2::Yaml;

use super::RuleError;
use super::fields::{FieldId, FieldType, FieldValue, FieldView};
use super::needles::{NeedleHits, NeedleRegistry, Placement};

/// The most values one entry may expand to (windash and base64offset multiply values).
const MAX_EXPANDED_VALUES: usize = 512;
/// Compiled size limit of one regular expression.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// How a string test is carried out.
#[derive(Debug)]
enum Finder {
    /// Found by the engine's shared automaton for this field; the bit says whether it was.
    Shared(u32),
    /// A substring searched on its own (cased values, non-text fields).
    Own(Box<AhoCorasick>),
    /// Compared directly (anchored cased values, non-text fields, empty values).
    Direct,
}

/// One `*`/`?` pattern piece.
#[derive(Clone, Debug, PartialEq)]
enum GlobToken {
    Literal(String),
    AnyRun,
    AnyChar,
}

#[derive(Debug)]
enum Pattern {
    Str {
        placement: Placement,
        needle: String,
        cased: bool,
        finder: Finder,
        number: Option<f64>,
    },
    Glob {
        tokens: Vec<GlobToken>,
        cased: bool,
        /// Bit of the glob's longest literal: when it is not set, the glob cannot match.
        required: Option<u32>,
    },
    Regex(regex::Regex),
    Cidr {
        network: IpAddr,
        prefix: u8,
    },
    Compare {
        op: CompareOp,
        value: f64,
    },
    Null,
    FieldRef(FieldId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl CompareOp {
    pub fn holds(self, left: f64, right: f64) -> bool {
        match self {
            CompareOp::Gt => left > right,
            CompareOp::Gte => left >= right,
            CompareOp::Lt => left < right,
            CompareOp::Lte => left <= right,
        }
    }
}

/// What a `Field|modifiers: values` entry tests.
#[derive(Debug)]
enum Test {
    /// Each group is one rule value (after expansion, its alternatives are OR-ed).
    Values {
        groups: Vec<Vec<Pattern>>,
        all: bool,
    },
    Exists(bool),
}

/// One compiled entry: a field (or none, for keywords) and its test.
#[derive(Debug)]
pub struct ValueTest {
    field: Option<FieldId>,
    test: Test,
    negate: bool,
}

/// The modifier chain of one entry, parsed.
#[derive(Debug, Default)]
struct Modifiers {
    placement: Option<Placement>,
    all: bool,
    cased: bool,
    regex: Option<String>,
    cidr: bool,
    exists: bool,
    neq: bool,
    fieldref: bool,
    compare: Option<CompareOp>,
    transforms: Vec<Transform>,
}

#[derive(Clone, Copy, Debug)]
enum Transform {
    Base64,
    Base64Offset,
    Windash,
}

fn parse_modifiers(field: &str, names: &[&str]) -> Result<Modifiers, RuleError> {
    let mut m = Modifiers::default();
    for &name in names {
        let unsupported = |reason| RuleError::UnsupportedModifier {
            field: field.to_owned(),
            modifier: name.to_owned(),
            reason,
        };
        match name {
            "contains" => m.placement = Some(Placement::Contains),
            "startswith" => m.placement = Some(Placement::StartsWith),
            "endswith" => m.placement = Some(Placement::EndsWith),
            "all" => m.all = true,
            "cased" => m.cased = true,
            "re" => m.regex = Some(String::new()),
            "i" | "m" | "s" => match &mut m.regex {
                Some(flags) => flags.push_str(name),
                None => return Err(unsupported("regex flags need the `re` modifier first")),
            },
            "cidr" => m.cidr = true,
            "exists" => m.exists = true,
            "neq" => m.neq = true,
            "fieldref" => m.fieldref = true,
            "gt" => m.compare = Some(CompareOp::Gt),
            "gte" => m.compare = Some(CompareOp::Gte),
            "lt" => m.compare = Some(CompareOp::Lt),
            "lte" => m.compare = Some(CompareOp::Lte),
            "base64" => m.transforms.push(Transform::Base64),
            "base64offset" => m.transforms.push(Transform::Base64Offset),
            "windash" => m.transforms.push(Transform::Windash),
            "utf16le" | "utf16be" | "utf16" | "wide" => {
                return Err(unsupported(
                    "QSC fields are UTF-8 text; UTF-16 only applies together with base64 on Windows logs",
                ));
            }
            "expand" => {
                return Err(unsupported(
                    "placeholders have no QSC value list; the specification requires rejecting the rule",
                ));
            }
            "minute" | "hour" | "day" | "week" | "month" | "year" => {
                return Err(unsupported("QSC events carry no date-valued fields"));
            }
            _ => {
                return Err(RuleError::UnknownModifier {
                    field: field.to_owned(),
                    modifier: name.to_owned(),
                });
            }
        }
    }
    Ok(m)
}

/// Compiles one selection entry. `field` is `None` for keyword lists (`|all` keyword maps).
pub fn compile_entry(
    key: &str,
    field: Option<FieldId>,
    modifier_names: &[&str],
    value: &Yaml,
    needles: &mut NeedleRegistry,
) -> Result<ValueTest, RuleError> {
    let m = parse_modifiers(key, modifier_names)?;
    let invalid = |reason: String| RuleError::InvalidValue {
        field: key.to_owned(),
        reason,
    };
    let values: Vec<&Yaml> = match value {
        Yaml::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    if values.is_empty() {
        return Err(invalid("an empty list matches nothing".into()));
    }
    if m.exists {
        if field.is_none() {
            return Err(invalid("`exists` needs a field name".into()));
        }
        let [Yaml::Boolean(wanted)] = values.as_slice() else {
            return Err(invalid(
                "`exists` takes exactly one true/false value".into(),
            ));
        };
        return Ok(ValueTest {
            field,
            test: Test::Exists(*wanted),
            negate: m.neq,
        });
    }
    let mut groups = Vec::with_capacity(values.len());
    let mut expanded = 0;
    for value in values {
        let group = compile_value(key, field, &m, value, needles)?;
        expanded += group.len();
        if expanded > MAX_EXPANDED_VALUES {
            return Err(invalid(format!(
                "expands to more than {MAX_EXPANDED_VALUES} values"
            )));
        }
        groups.push(group);
    }
    Ok(ValueTest {
        field,
        test: Test::Values { groups, all: m.all },
        negate: m.neq,
    })
}

fn scalar_text(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(n) => Some(n.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn compile_value(
    key: &str,
    field: Option<FieldId>,
    m: &Modifiers,
    value: &Yaml,
    needles: &mut NeedleRegistry,
) -> Result<Vec<Pattern>, RuleError> {
    let invalid = |reason: String| RuleError::InvalidValue {
        field: key.to_owned(),
        reason,
    };
    if matches!(value, Yaml::Null) {
        return Ok(vec![Pattern::Null]);
    }
    let Some(text) = scalar_text(value) else {
        return Err(invalid(
            "values must be strings, numbers, booleans or null".into(),
        ));
    };
    if let Some(op) = m.compare {
        let number = text
            .parse::<f64>()
            .map_err(|_| invalid(format!("`{text}` is not a number")))?;
        return Ok(vec![Pattern::Compare { op, value: number }]);
    }
    if m.cidr {
        return Ok(vec![parse_cidr(&text).map_err(invalid)?]);
    }
    if m.fieldref {
        return match super::fields::lookup_field(&text) {
            super::fields::FieldLookup::Known(other) => Ok(vec![Pattern::FieldRef(other)]),
            _ => Err(RuleError::UnknownField(text)),
        };
    }
    if let Some(flags) = &m.regex {
        let regex = regex::RegexBuilder::new(&text)
            .case_insensitive(flags.contains('i'))
            .multi_line(flags.contains('m'))
            .dot_matches_new_line(flags.contains('s'))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| invalid(format!("regular expression: {e}")))?;
        return Ok(vec![Pattern::Regex(regex)]);
    }
    // Keywords (no field) share the any-text-field automaton; numeric fields search alone.
    let shared = match field {
        None => Some(None),
        Some(f) if f.field_type() == FieldType::Text => Some(Some(f)),
        Some(_) => None,
    };
    let mut patterns = Vec::new();
    for variant in transform(&text, &m.transforms) {
        // Keywords are looked for anywhere in a field, as in the whole log line.
        let default = if field.is_none() {
            Placement::Contains
        } else {
            Placement::Equals
        };
        let tokens = parse_glob(&variant, m.placement.unwrap_or(default));
        patterns.push(simplify_glob(tokens, m.cased, shared, needles).map_err(invalid)?);
    }
    Ok(patterns)
}

/// Applies the transformation modifiers in order; each may multiply the values.
fn transform(text: &str, transforms: &[Transform]) -> Vec<String> {
    let mut values = vec![text.to_owned()];
    for t in transforms {
        values = values
            .iter()
            .flat_map(|v| match t {
                Transform::Base64 => vec![BASE64.encode(v.as_bytes())],
                Transform::Base64Offset => base64_offsets(v.as_bytes()),
                Transform::Windash => windash(v),
            })
            .collect();
    }
    values
}

/// The three shifted encodings of a value that may sit anywhere inside base64 text, with the
/// position-dependent first and last characters cut (as pySigma does).
fn base64_offsets(value: &[u8]) -> Vec<String> {
    const START: [usize; 3] = [0, 2, 3];
    const END_TRIM: [usize; 3] = [0, 3, 2];
    (0..3)
        .filter_map(|shift| {
            let mut shifted = vec![b' '; shift];
            shifted.extend_from_slice(value);
            let encoded = BASE64.encode(&shifted);
            let end = encoded.len() - END_TRIM[(value.len() + shift) % 3];
            encoded.get(START[shift]..end).map(str::to_owned)
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Every permutation of the dash characters at the start of command-line flags.
fn windash(value: &str) -> Vec<String> {
    const DASHES: [char; 5] = ['-', '/', '\u{2013}', '\u{2014}', '\u{2015}'];
    let mut variants = vec![String::new()];
    let mut previous = ' ';
    for c in value.chars() {
        let is_flag = (c == '-' || c == '/') && previous == ' ';
        let choices: &[char] = if is_flag { &DASHES } else { &[c] };
        if variants.len() * choices.len() > MAX_EXPANDED_VALUES {
            // Past the cap, the remaining flags keep their written dash.
            variants.iter_mut().for_each(|v| v.push(c));
        } else {
            variants = variants
                .iter()
                .flat_map(|v| {
                    choices.iter().map(move |d| {
                        let mut next = v.clone();
                        next.push(*d);
                        next
                    })
                })
                .collect();
        }
        previous = c;
    }
    variants
}

/// Splits a Sigma value into literal text and wildcards, honouring `\*`, `\?` and `\\`, and
/// adds the wildcards implied by the placement modifier.
fn parse_glob(value: &str, placement: Placement) -> Vec<GlobToken> {
    let mut tokens = Vec::new();
    if matches!(placement, Placement::Contains | Placement::EndsWith) {
        tokens.push(GlobToken::AnyRun);
    }
    let mut literal = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some('*' | '?' | '\\')) => {
                literal.extend(chars.next());
            }
            '*' | '?' => {
                if !literal.is_empty() {
                    tokens.push(GlobToken::Literal(std::mem::take(&mut literal)));
                }
                tokens.push(if c == '*' {
                    GlobToken::AnyRun
                } else {
                    GlobToken::AnyChar
                });
            }
            _ => literal.push(c),
        }
    }
    if !literal.is_empty() {
        tokens.push(GlobToken::Literal(literal));
    }
    if matches!(placement, Placement::Contains | Placement::StartsWith) {
        tokens.push(GlobToken::AnyRun);
    }
    tokens.dedup_by(|a, b| *a == GlobToken::AnyRun && *b == GlobToken::AnyRun);
    tokens
}

/// Turns the common shapes (`x`, `x*`, `*x`, `*x*`) into plain string tests and keeps the
/// rest as glob patterns.
fn simplify_glob(
    tokens: Vec<GlobToken>,
    cased: bool,
    shared: Option<Option<FieldId>>,
    needles: &mut NeedleRegistry,
) -> Result<Pattern, String> {
    let fold = |s: &str| {
        if cased {
            s.to_owned()
        } else {
            s.to_ascii_lowercase()
        }
    };
    let shape = match tokens.as_slice() {
        [] => Some((Placement::Equals, String::new())),
        [GlobToken::AnyRun] => Some((Placement::StartsWith, String::new())),
        [GlobToken::Literal(s)] => Some((Placement::Equals, fold(s))),
        [GlobToken::Literal(s), GlobToken::AnyRun] => Some((Placement::StartsWith, fold(s))),
        [GlobToken::AnyRun, GlobToken::Literal(s)] => Some((Placement::EndsWith, fold(s))),
        [GlobToken::AnyRun, GlobToken::Literal(s), GlobToken::AnyRun] => {
            Some((Placement::Contains, fold(s)))
        }
        _ => None,
    };
    let Some((placement, needle)) = shape else {
        let tokens: Vec<GlobToken> = tokens
            .into_iter()
            .map(|t| match t {
                GlobToken::Literal(s) => GlobToken::Literal(fold(&s)),
                other => other,
            })
            .collect();
        let longest = tokens
            .iter()
            .filter_map(|t| match t {
                GlobToken::Literal(s) => Some(s.to_ascii_lowercase()),
                _ => None,
            })
            .max_by_key(String::len);
        // A case-insensitive hit is necessary for a cased match too, so the bit filters both.
        let required = match (shared, longest) {
            (Some(field), Some(literal)) => {
                Some(needles.register(field, &literal, Placement::Contains))
            }
            _ => None,
        };
        return Ok(Pattern::Glob {
            tokens,
            cased,
            required,
        });
    };
    let finder = match shared.filter(|_| !cased && !needle.is_empty()) {
        Some(field) => Finder::Shared(needles.register(field, &needle, placement)),
        None if placement == Placement::Contains => Finder::Own(Box::new(
            AhoCorasick::builder()
                .ascii_case_insensitive(!cased)
                .build([&needle])
                .map_err(|e| format!("substring search: {e}"))?,
        )),
        None => Finder::Direct,
    };
    let number = (placement == Placement::Equals)
        .then(|| needle.parse::<f64>().ok())
        .flatten();
    Ok(Pattern::Str {
        placement,
        needle,
        cased,
        finder,
        number,
    })
}

fn parse_cidr(text: &str) -> Result<Pattern, String> {
    let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
    let network: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a CIDR network"))?;
    let max = if network.is_ipv4() { 32 } else { 128 };
    let prefix = if prefix.is_empty() {
        max
    } else {
        prefix
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("`{text}` has an invalid prefix length"))?
    };
    Ok(Pattern::Cidr { network, prefix })
}

fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn cidr_contains(network: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    let ip = match (network, ip) {
        (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => return false,
        },
        (IpAddr::V6(_), IpAddr::V4(_)) => return false,
        _ => ip,
    };
    if prefix == 0 {
        return true;
    }
    // Both addresses sit in the top bits, so the prefix masks the same bits for v4 and v6.
    let mask = u128::MAX << (128 - u32::from(prefix));
    ip_bits(network) & mask == ip_bits(ip) & mask
}

fn glob_matches(tokens: &[GlobToken], haystack: &str, cased: bool) -> bool {
    let eq = |a: &[u8], b: &[u8]| {
        if cased {
            a == b
        } else {
            a.eq_ignore_ascii_case(b)
        }
    };
    let hay = haystack.as_bytes();
    // Iterative matching with backtracking to the most recent `*` (linear for most patterns).
    let (mut t, mut h) = (0usize, 0usize);
    let mut backtrack: Option<(usize, usize)> = None;
    loop {
        let step = match tokens.get(t) {
            None if h == hay.len() => return true,
            None => None,
            Some(GlobToken::AnyRun) => {
                backtrack = Some((t, h));
                t += 1;
                continue;
            }
            Some(GlobToken::AnyChar) => char_len(hay, h).map(|n| h + n),
            Some(GlobToken::Literal(lit)) => {
                let end = h + lit.len();
                (end <= hay.len() && eq(&hay[h..end], lit.as_bytes())).then_some(end)
            }
        };
        match (step, backtrack) {
            (Some(next), _) => {
                h = next;
                t += 1;
            }
            (None, Some((star, from))) => match char_len(hay, from) {
                Some(n) => {
                    backtrack = Some((star, from + n));
                    t = star + 1;
                    h = from + n;
                }
                None => return false,
            },
            (None, None) => return false,
        }
    }
}

/// Length of the UTF-8 character starting at `at`, if any.
fn char_len(hay: &[u8], at: usize) -> Option<usize> {
    let first = *hay.get(at)?;
    let n = match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    };
    Some(n.min(hay.len() - at))
}

fn str_matches(placement: Placement, needle: &str, hay: &str, cased: bool) -> bool {
    let (n, h) = (needle.as_bytes(), hay.as_bytes());
    let eq = |a: &[u8]| {
        if cased {
            a == n
        } else {
            a.eq_ignore_ascii_case(n)
        }
    };
    match placement {
        Placement::Equals => h.len() == n.len() && eq(h),
        Placement::StartsWith => h.len() >= n.len() && eq(&h[..n.len()]),
        Placement::EndsWith => h.len() >= n.len() && eq(&h[h.len() - n.len()..]),
        // Contains always has a finder of its own or a shared bit.
        Placement::Contains => false,
    }
}

impl Pattern {
    fn matches(
        &self,
        value: Option<FieldValue<'_>>,
        view: &FieldView<'_>,
        hits: &NeedleHits,
    ) -> bool {
        let Some(value) = value else {
            return matches!(self, Pattern::Null);
        };
        match self {
            Pattern::Null => false,
            Pattern::Str {
                placement,
                needle,
                cased,
                finder,
                number,
            } => {
                if let (Some(wanted), Some(actual)) = (number, numeric(&value)) {
                    return *wanted == actual;
                }
                match finder {
                    Finder::Shared(bit) => hits.contains(*bit),
                    Finder::Own(ac) => value.with_text(|s| ac.is_match(s)),
                    Finder::Direct => {
                        value.with_text(|s| str_matches(*placement, needle, s, *cased))
                    }
                }
            }
            Pattern::Glob {
                tokens,
                cased,
                required,
            } => {
                required.is_none_or(|bit| hits.contains(bit))
                    && value.with_text(|s| glob_matches(tokens, s, *cased))
            }
            Pattern::Regex(re) => value.with_text(|s| re.is_match(s)),
            Pattern::Cidr { network, prefix } => match value {
                FieldValue::Ip(ip, _) => cidr_contains(*network, *prefix, ip),
                FieldValue::Text(s) => s
                    .parse()
                    .is_ok_and(|ip| cidr_contains(*network, *prefix, ip)),
                _ => false,
            },
            Pattern::Compare { op, value: bound } => {
                value.as_number().is_some_and(|n| op.holds(n, *bound))
            }
            Pattern::FieldRef(other) => match view.get(*other) {
                Some(other) => value.with_text(|a| other.with_text(|b| a.eq_ignore_ascii_case(b))),
                None => false,
            },
        }
    }
}

/// For a group made only of shared substring needles: whether any was found, answered from
/// the scan bits alone (no field needs to be looked at).
/// Returns `Some(false)` when no pattern of the group can match whatever the field (its needle
/// or required literal was not seen), `Some(true)` when a plain needle was seen, and `None`
/// when fields must be looked at.
fn shared_bits_match(group: &[Pattern], hits: &NeedleHits) -> Option<bool> {
    let mut undecided = false;
    for pattern in group {
        match pattern {
            Pattern::Str {
                finder: Finder::Shared(bit),
                ..
            } => {
                if hits.contains(*bit) {
                    return Some(true);
                }
            }
            Pattern::Glob {
                required: Some(bit),
                ..
            } => undecided |= hits.contains(*bit),
            _ => undecided = true,
        }
    }
    if undecided { None } else { Some(false) }
}

/// Numbers compare as numbers only when the field itself is numeric.
fn numeric(value: &FieldValue<'_>) -> Option<f64> {
    match value {
        FieldValue::Int(_) | FieldValue::Float(_) => value.as_number(),
        _ => None,
    }
}

impl ValueTest {
    /// Tests one event. Keyword tests (no field) look at every text field of the event; with
    /// `all`, each keyword may be found in a different field.
    pub fn matches(&self, view: &FieldView<'_>, hits: &NeedleHits) -> bool {
        let result = match (self.field, &self.test) {
            (Some(field), _) => self.test_value(view.get(field), view, hits),
            (None, Test::Values { groups, all }) => {
                let found = |group: &Vec<Pattern>| {
                    if let Some(found) = shared_bits_match(group, hits) {
                        return found;
                    }
                    FieldId::ALL.iter().any(|f| {
                        f.field_type() == FieldType::Text
                            && view.get(*f).is_some_and(|v| {
                                group.iter().any(|p| p.matches(Some(v), view, hits))
                            })
                    })
                };
                if *all {
                    groups.iter().all(found)
                } else {
                    groups.iter().any(found)
                }
            }
            (None, Test::Exists(_)) => false,
        };
        result != self.negate
    }

    fn test_value(
        &self,
        value: Option<FieldValue<'_>>,
        view: &FieldView<'_>,
        hits: &NeedleHits,
    ) -> bool {
        match &self.test {
            Test::Exists(wanted) => value.is_some() == *wanted,
            Test::Values { groups, all } => {
                let group_matches =
                    |group: &Vec<Pattern>| group.iter().any(|p| p.matches(value, view, hits));
                if *all {
                    groups.iter().all(group_matches)
                } else {
                    groups.iter().any(group_matches)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_parsing_honours_escapes_and_placement() {
        use GlobToken::*;
        assert_eq!(
            parse_glob(r"a\*b*c?", Placement::Equals),
            vec![Literal("a*b".into()), AnyRun, Literal("c".into()), AnyChar]
        );
        assert_eq!(
            parse_glob("*x*", Placement::Contains),
            vec![AnyRun, Literal("x".into()), AnyRun]
        );
        assert_eq!(
            parse_glob(r"C:\Windows", Placement::Equals),
            vec![Literal(r"C:\Windows".into())]
        );
    }

    #[test]
    fn glob_matching() {
        let tokens = parse_glob("/tmp/*.s?", Placement::Equals);
        assert!(glob_matches(&tokens, "/TMP/a/b.sh", false));
        assert!(!glob_matches(&tokens, "/TMP/a/b.sh", true));
        assert!(!glob_matches(&tokens, "/tmp/a.s", false));
        let tokens = parse_glob("a*b*c", Placement::Equals);
        assert!(glob_matches(&tokens, "axxbyybzc", false));
        assert!(!glob_matches(&tokens, "axxbyybz", false));
        assert!(glob_matches(
            &parse_glob("?é", Placement::Equals),
            "xé",
            false
        ));
    }

    #[test]
    fn cidr_membership() {
        let Ok(Pattern::Cidr { network, prefix }) = parse_cidr("10.0.0.0/8") else {
            panic!("cidr must parse");
        };
        assert!(cidr_contains(
            network,
            prefix,
            "10.200.1.1".parse().unwrap()
        ));
        assert!(!cidr_contains(network, prefix, "11.0.0.1".parse().unwrap()));
        assert!(cidr_contains(
            network,
            prefix,
            "::ffff:10.1.1.1".parse().unwrap()
        ));
        let Ok(Pattern::Cidr { network, prefix }) = parse_cidr("fd00::/8") else {
            panic!("cidr must parse");
        };
        assert!(cidr_contains(network, prefix, "fd12::1".parse().unwrap()));
        assert!(!cidr_contains(network, prefix, "fe80::1".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nonsense/8").is_err());
    }

    #[test]
    fn base64_offsets_match_pysigma() {
        // pySigma's documented example: "/bin/bash" → "L2Jpbi9iYXNo", "9iaW4vYmFza", "vYmluL2Jhc2"
        assert_eq!(
            base64_offsets(b"/bin/bash"),
            vec!["L2Jpbi9iYXNo", "9iaW4vYmFza", "vYmluL2Jhc2"]
        );
    }

    #[test]
    fn windash_permutes_flag_dashes_only() {
        let variants = windash("x -a re-b");
        assert_eq!(variants.len(), 5);
        assert!(variants.contains(&"x /a re-b".to_owned()));
        assert!(variants.iter().all(|v| v.ends_with("re-b")));
    }
}
