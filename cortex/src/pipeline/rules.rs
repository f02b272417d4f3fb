//! Which Sigma rules the service loads: the rule set QSC ships (embedded in the binary, so a bare
//! binary works) and any folders `[detect] rule_dirs` names.

use std::path::{Path, PathBuf};

use include_dir::{Dir, DirEntry, include_dir};

use crate::config::DetectConfig;
use crate::detect::engine::MAX_RULE_FILE_BYTES;
use crate::detect::{Engine, EngineError, LoadReport};

static SHIPPED_RULES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/rules");

/// The shipped rule files as `(name, text)`, `.yml`/`.yaml` only.
pub fn shipped_rule_texts() -> Vec<(String, &'static str)> {
    let mut texts = Vec::new();
    collect(&SHIPPED_RULES, &mut texts);
    texts.sort_by(|a, b| a.0.cmp(&b.0));
    texts
}

fn collect(dir: &'static Dir<'static>, texts: &mut Vec<(String, &'static str)>) {
    for entry in dir.entries() {
        match entry {
            DirEntry::Dir(sub) => collect(sub, texts),
            DirEntry::File(file) => {
                let path = file.path();
                let is_yaml = path.extension().is_some_and(|e| e == "yml" || e == "yaml");
                if let (true, Some(text)) = (is_yaml, file.contents_utf8()) {
                    texts.push((format!("<shipped>/{}", path.display()), text));
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules from {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rule file {path} is larger than {MAX_RULE_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Builds one engine from the shipped rules and every `.yml`/`.yaml` file under the configured
/// folders (correlations may reference rules from either). A rule the engine rejects is skipped
/// and listed in the report; an unreadable folder or file stops start-up.
pub fn load_engine(config: &DetectConfig) -> Result<(Engine, LoadReport), RulesError> {
    let mut texts: Vec<(String, String)> = Vec::new();
    if config.shipped_rules {
        texts.extend(
            shipped_rule_texts()
                .into_iter()
                .map(|(name, text)| (name, text.to_owned())),
        );
    }
    for dir in &config.rule_dirs {
        let mut files = Vec::new();
        rule_files(dir, &mut files)?;
        files.sort();
        for path in files {
            texts.push((path.display().to_string(), read_rule(&path)?));
        }
    }
    let borrowed: Vec<(&str, &str)> = texts
        .iter()
        .map(|(name, text)| (name.as_str(), text.as_str()))
        .collect();
    Ok(Engine::load_texts(&borrowed)?)
}

fn rule_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), RulesError> {
    let read_err = |source| RulesError::Read {
        path: path.to_owned(),
        source,
    };
    if path.metadata().map_err(read_err)?.is_file() {
        out.push(path.to_owned());
        return Ok(());
    }
    for entry in std::fs::read_dir(path).map_err(read_err)? {
        let entry_path = entry.map_err(read_err)?.path();
        if entry_path.is_dir() {
            rule_files(&entry_path, out)?;
        } else if entry_path
            .extension()
            .is_some_and(|e| e == "yml" || e == "yaml")
        {
            out.push(entry_path);
        }
    }
    Ok(())
}

fn read_rule(path: &Path) -> Result<String, RulesError> {
    let read_err = |source| RulesError::Read {
        path: path.to_owned(),
        source,
    };
    if path.metadata().map_err(read_err)?.len() > MAX_RULE_FILE_BYTES {
        return Err(RulesError::TooLarge {
            path: path.to_owned(),
        });
    }
    std::fs::read_to_string(path).map_err(read_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_rules_are_embedded_and_load_cleanly() {
        assert!(shipped_rule_texts().len() >= 7);
        let (engine, report) = load_engine(&DetectConfig::default()).unwrap();
        assert!(report.skipped.is_empty(), "{report}");
        assert!(engine.rule_count() >= 20, "{}", engine.rule_count());
    }

    #[test]
    fn extra_folders_add_to_the_shipped_rules_and_unreadable_ones_stop_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("linux");
        std::fs::create_dir(&nested).unwrap();
        std::fs::write(
            nested.join("extra.yml"),
            "title: Extra\nid: extra-rule\nlogsource: {product: linux, category: authentication}\n\
             detection:\n    selection:\n        QscKind: auth_failure\n    condition: selection\n\
             level: low\n",
        )
        .unwrap();
        std::fs::write(nested.join("notes.txt"), "not a rule").unwrap();
        let shipped = load_engine(&DetectConfig::default())
            .unwrap()
            .0
            .rule_count();
        let config = DetectConfig {
            shipped_rules: true,
            rule_dirs: vec![dir.path().to_owned()],
        };
        let (engine, report) = load_engine(&config).unwrap();
        assert_eq!(engine.rule_count(), shipped + 1, "{report}");
        let missing = DetectConfig {
            shipped_rules: false,
            rule_dirs: vec![dir.path().join("absent")],
        };
        assert!(matches!(
            load_engine(&missing),
            Err(RulesError::Read { .. })
        ));
    }
}
