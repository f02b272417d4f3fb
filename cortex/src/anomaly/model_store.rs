//! One model file per host in a directory: `<host>.model`, written atomically (temporary file,
//! fsync, rename, fsync of the directory) so a crash leaves the old model or the new one.
//!
//! Host ids are written into file names with every byte outside `[A-Za-z0-9_-]` (and a `.`)
//! escaped as `%XX`, so no host id can reach outside the directory.

use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::error::AnomalyError;
use super::model::Model;

/// Largest model file read; a default model is a few MB.
const MAX_MODEL_FILE_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct ModelStore {
    dir: PathBuf,
}

impl ModelStore {
    /// Opens (creating, mode 0700) the model directory.
    pub fn open(dir: &Path) -> Result<Self, AnomalyError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| AnomalyError::Io {
                action: "create model directory",
                path: dir.to_owned(),
                source,
            })?;
        Ok(ModelStore {
            dir: dir.to_owned(),
        })
    }

    pub fn path_for(&self, host: &str) -> PathBuf {
        self.dir.join(format!("{}.model", escape_host(host)))
    }

    /// The host's model, or `None` when none was saved yet.
    pub fn load(&self, host: &str) -> Result<Option<Model>, AnomalyError> {
        let path = self.path_for(host);
        let io_error = |action, source| AnomalyError::Io {
            action,
            path: path.clone(),
            source,
        };
        let metadata = match fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("inspect model file", e)),
        };
        if metadata.len() > MAX_MODEL_FILE_BYTES {
            return Err(AnomalyError::ModelFile {
                path,
                source: Box::new(AnomalyError::ModelFormat(format!(
                    "{} bytes exceeds the {MAX_MODEL_FILE_BYTES}-byte limit",
                    metadata.len()
                ))),
            });
        }
        let bytes = fs::read(&path).map_err(|e| io_error("read model file", e))?;
        let model = Model::decode(&bytes).map_err(|source| AnomalyError::ModelFile {
            path: path.clone(),
            source: Box::new(source),
        })?;
        if model.host != host {
            return Err(AnomalyError::ModelHost {
                path,
                expected: host.to_owned(),
                found: model.host,
            });
        }
        Ok(Some(model))
    }

    /// Saves (replacing) the model of `model.host`; returns the file's path.
    pub fn save(&self, model: &Model) -> Result<PathBuf, AnomalyError> {
        if model.host.is_empty() {
            return Err(AnomalyError::EmptyHost);
        }
        let path = self.path_for(&model.host);
        let temporary = path.with_extension("model.tmp");
        let io_error = |action, source| AnomalyError::Io {
            action,
            path: temporary.clone(),
            source,
        };
        let bytes = model.encode()?;
        let mut file = fs::File::create(&temporary).map_err(|e| io_error("create", e))?;
        file.write_all(&bytes).map_err(|e| io_error("write", e))?;
        file.sync_all().map_err(|e| io_error("sync", e))?;
        drop(file);
        fs::rename(&temporary, &path).map_err(|e| io_error("rename into place", e))?;
        fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| AnomalyError::Io {
                action: "sync model directory",
                path: self.dir.clone(),
                source,
            })?;
        Ok(path)
    }
}

fn escape_host(host: &str) -> String {
    let mut name = String::with_capacity(host.len());
    for (i, byte) in host.bytes().enumerate() {
        let plain = byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_';
        let inner_dot = byte == b'.' && i > 0;
        if plain || inner_dot {
            name.push(char::from(byte));
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::features::Window;
    use crate::anomaly::forest::ForestParams;
    use crate::anomaly::model::TrainParams;
    use crate::anomaly::synthetic::SyntheticHost;

    fn model(host: &str) -> Model {
        let windows: Vec<Window> = SyntheticHost::new(3, 10).windows(400, &[]);
        let params = TrainParams {
            window_s: 10,
            forest: ForestParams {
                trees: 20,
                sample_size: 128,
                seed: 9,
            },
            version: 3,
            trained_at_ns: 1,
            excluded_incident_windows: 0,
        };
        Model::train(host, &windows, params).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_model_round_trips_through_the_directory() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = ModelStore::open(&dir.path().join("models")).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(store.load("db-1"), Ok(None)));
        let saved = model("db-1");
        let path = store.save(&saved).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            path.file_name().and_then(|n| n.to_str()),
            Some("db-1.model")
        );
        let loaded = store.load("db-1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded, Some(saved));
    }

    #[test]
    fn hostile_host_ids_stay_inside_the_directory() {
        assert_eq!(escape_host("../etc/passwd"), "%2E.%2Fetc%2Fpasswd");
        assert_eq!(escape_host("web-01.prod"), "web-01.prod");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = ModelStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let path = store.save(&model("../x")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(path.parent(), Some(dir.path()));
    }

    #[test]
    fn a_corrupt_or_misplaced_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = ModelStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let path = store.save(&model("a")).unwrap_or_else(|e| panic!("{e}"));
        fs::copy(&path, store.path_for("b")).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            store.load("b"),
            Err(AnomalyError::ModelHost { .. })
        ));
        fs::write(&path, b"{}\nnot a model").unwrap_or_else(|e| panic!("{e}"));
        let error = store.load("a").err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("a.model")));
    }
}
