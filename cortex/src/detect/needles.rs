//! Shared string search: every case-insensitive string value of every rule (`contains`,
//! `startswith`, `endswith` or whole-value), per field, goes into one Aho-Corasick automaton.
//! Each event's field is scanned once, setting one bit per (needle, placement) found; rules then
//! test bits instead of comparing text again. Keywords (no field) share one more automaton, run
//! over every text field of the event.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use super::fields::{FieldId, FieldType, FieldValue, FieldView};

/// Where in a field's text a string must be found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Placement {
    Equals,
    StartsWith,
    EndsWith,
    Contains,
}

impl Placement {
    fn holds(self, start: usize, end: usize, len: usize) -> bool {
        match self {
            Placement::Contains => true,
            Placement::StartsWith => start == 0,
            Placement::EndsWith => end == len,
            Placement::Equals => start == 0 && end == len,
        }
    }
}

/// The needles of one field (or of all text fields, for keywords) while rules compile.
#[derive(Debug, Default)]
struct FieldPatterns {
    needles: Vec<String>,
    /// Per needle: the placements asked for and their bits.
    placements: Vec<Vec<(Placement, u32)>>,
    positions: HashMap<String, usize>,
}

/// Collects needles while rules compile; identical (field, needle, placement) share a bit.
#[derive(Debug, Default)]
pub struct NeedleRegistry {
    per_field: HashMap<Option<FieldId>, FieldPatterns>,
    bits: HashMap<(Option<FieldId>, String, Placement), u32>,
}

impl NeedleRegistry {
    /// Returns the bit that will say whether `needle` (lowercased, not empty) is found at
    /// `placement` in `field` or, for `None`, in any text field.
    pub fn register(&mut self, field: Option<FieldId>, needle: &str, placement: Placement) -> u32 {
        let key = (field, needle.to_owned(), placement);
        if let Some(bit) = self.bits.get(&key) {
            return *bit;
        }
        let bit = self.bits.len() as u32;
        self.bits.insert(key, bit);
        let patterns = self.per_field.entry(field).or_default();
        let position = *patterns
            .positions
            .entry(needle.to_owned())
            .or_insert_with(|| {
                patterns.needles.push(needle.to_owned());
                patterns.placements.push(Vec::new());
                patterns.needles.len() - 1
            });
        patterns.placements[position].push((placement, bit));
        bit
    }

    /// Builds the automata; fails only if a pattern set is too large for the automaton.
    pub fn build(self) -> Result<NeedleIndex, aho_corasick::BuildError> {
        let mut fields = Vec::new();
        for (field, patterns) in self.per_field {
            let automaton = AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .build(&patterns.needles)?;
            fields.push(FieldNeedles {
                field,
                automaton,
                placements: patterns.placements,
            });
        }
        Ok(NeedleIndex {
            fields,
            bit_count: self.bits.len(),
        })
    }
}

#[derive(Debug)]
struct FieldNeedles {
    field: Option<FieldId>,
    automaton: AhoCorasick,
    /// Pattern index → the placements to check and their bits.
    placements: Vec<Vec<(Placement, u32)>>,
}

/// The built automata, one per field that any rule searches.
#[derive(Debug)]
pub struct NeedleIndex {
    fields: Vec<FieldNeedles>,
    bit_count: usize,
}

impl NeedleIndex {
    pub fn new_hits(&self) -> NeedleHits {
        NeedleHits {
            words: vec![0; self.bit_count.div_ceil(64)],
        }
    }

    /// Scans the event's fields once and records which needles occur.
    pub fn scan(&self, view: &FieldView<'_>, hits: &mut NeedleHits) {
        hits.words.iter_mut().for_each(|w| *w = 0);
        for f in &self.fields {
            match f.field {
                Some(field) => f.scan(view.get(field), hits),
                None => FieldId::ALL
                    .iter()
                    .filter(|field| field.field_type() == FieldType::Text)
                    .for_each(|field| f.scan(view.get(*field), hits)),
            }
        }
    }
}

impl FieldNeedles {
    fn scan(&self, value: Option<FieldValue<'_>>, hits: &mut NeedleHits) {
        if let Some(value) = value {
            value.with_text(|text| {
                for m in self.automaton.find_overlapping_iter(text) {
                    let Some(placements) = self.placements.get(m.pattern().as_usize()) else {
                        continue;
                    };
                    for (placement, bit) in placements {
                        if placement.holds(m.start(), m.end(), text.len()) {
                            hits.set(*bit);
                        }
                    }
                }
            });
        }
    }
}

/// Which needles the current event contains.
#[derive(Debug, Default)]
pub struct NeedleHits {
    words: Vec<u64>,
}

impl NeedleHits {
    fn set(&mut self, bit: u32) {
        if let Some(word) = self.words.get_mut(bit as usize / 64) {
            *word |= 1 << (bit % 64);
        }
    }

    pub fn contains(&self, bit: u32) -> bool {
        self.words
            .get(bit as usize / 64)
            .is_some_and(|w| w & (1 << (bit % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::fields::Scratch;
    use qsc_event::{Event, EventKind, ProcessExec, ProcessInfo, Source};

    #[test]
    fn one_scan_sets_every_overlapping_needle_and_placement() {
        let mut registry = NeedleRegistry::default();
        let cmd = Some(FieldId::CommandLine);
        let a = registry.register(cmd, "nc -e", Placement::Contains);
        let b = registry.register(cmd, "-e /bin", Placement::Contains);
        let again = registry.register(cmd, "nc -e", Placement::Contains);
        let starts = registry.register(cmd, "nc -e", Placement::StartsWith);
        let not_at_end = registry.register(cmd, "nc -e", Placement::EndsWith);
        let ends = registry.register(cmd, "/sh", Placement::EndsWith);
        let whole = registry.register(cmd, "nc -e /bin/sh", Placement::Equals);
        let absent = registry.register(cmd, "socat", Placement::Contains);
        let other_field = registry.register(Some(FieldId::Image), "nc -e", Placement::Contains);
        let keyword = registry.register(None, "/usr/bin/n", Placement::Contains);
        assert_eq!(a, again);
        let index = registry.build().unwrap();
        let event = Event::new(
            "h",
            Source::Alpha,
            1,
            EventKind::ProcessExec(ProcessExec {
                process: ProcessInfo {
                    cmdline: vec!["NC".into(), "-e".into(), "/bin/sh".into()].into(),
                    ..Default::default()
                },
                filename: "/usr/bin/nc".into(),
                argv: vec![],
                folder_world_writable: None,
            }),
        );
        let mut scratch = Scratch::default();
        let view = FieldView::new(&event, &mut scratch);
        let mut hits = index.new_hits();
        index.scan(&view, &mut hits);
        assert!(hits.contains(a));
        assert!(hits.contains(b));
        assert!(!hits.contains(absent));
        assert!(hits.contains(starts));
        assert!(!hits.contains(not_at_end));
        assert!(hits.contains(ends));
        assert!(hits.contains(whole));
        assert!(!hits.contains(other_field));
        assert!(hits.contains(keyword));
    }
}
