//! What loading a set of rule files did: which documents loaded and which were skipped, why.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::RuleError;

/// One document that loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedRule {
    pub path: PathBuf,
    pub id: String,
    pub title: String,
    pub correlation: bool,
}

/// One document (or a whole file, when it could not be read or parsed) that was skipped.
#[derive(Clone, Debug, PartialEq)]
pub struct SkippedRule {
    pub path: PathBuf,
    /// Position of the document in a multi-document file (0 for the first or the file).
    pub document: usize,
    pub id: Option<String>,
    pub title: Option<String>,
    pub error: RuleError,
}

/// The outcome of a load.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    pub files: usize,
    pub loaded: Vec<LoadedRule>,
    pub skipped: Vec<SkippedRule>,
}

impl LoadReport {
    pub(super) fn skip(
        &mut self,
        path: &Path,
        document: usize,
        (id, title): (Option<String>, Option<String>),
        error: RuleError,
    ) {
        tracing::debug!(path = %path.display(), ?id, %error, "skipping Sigma document");
        self.skipped.push(SkippedRule {
            path: path.to_owned(),
            document,
            id,
            title,
            error,
        });
    }

    /// How many skips each kind of reason caused, most frequent first.
    pub fn skip_reasons(&self) -> Vec<(&'static str, usize)> {
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for skip in &self.skipped {
            *counts.entry(skip.error.label()).or_default() += 1;
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        counts
    }
}

impl fmt::Display for LoadReport {
    /// A one-paragraph summary followed by one line per skipped document.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let correlations = self.loaded.iter().filter(|r| r.correlation).count();
        writeln!(
            f,
            "{} files: {} rules loaded ({} correlations), {} skipped",
            self.files,
            self.loaded.len(),
            correlations,
            self.skipped.len()
        )?;
        for (label, count) in self.skip_reasons() {
            writeln!(f, "  skipped {count:>4} × {label}")?;
        }
        for skip in &self.skipped {
            writeln!(
                f,
                "  - {}#{} {}: {}",
                skip.path.display(),
                skip.document,
                skip.title.as_deref().unwrap_or("(untitled)"),
                skip.error
            )?;
        }
        Ok(())
    }
}
