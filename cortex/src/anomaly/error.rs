use std::path::PathBuf;

use crate::store::StoreError;

use super::calibration::CalibrationError;
use super::forest::ForestError;

#[derive(Debug, thiserror::Error)]
pub enum AnomalyError {
    #[error("[anomaly] {key}: {reason}")]
    Config { key: &'static str, reason: String },
    #[error("host id must not be empty")]
    EmptyHost,
    #[error("host `{host}` has {found} usable windows; training needs at least {needed}")]
    NotEnoughWindows {
        host: String,
        found: usize,
        needed: usize,
    },
    #[error("isolation forest: {0}")]
    Forest(#[from] ForestError),
    #[error("score calibration: {0}")]
    Calibration(#[from] CalibrationError),
    #[error("anomaly model is malformed: {0}")]
    ModelFormat(String),
    #[error("anomaly model format version {found} is not supported (this build reads {supported})")]
    ModelVersion { found: u32, supported: u32 },
    #[error("anomaly model checksum mismatch: header says {expected}, payload hashes to {actual}")]
    Checksum { expected: String, actual: String },
    #[error("anomaly model features {found:?} differ from this build's {expected:?}")]
    FeatureMismatch {
        found: Vec<String>,
        expected: Vec<String>,
    },
    #[error("anomaly model file {path} is for host `{found}`, expected `{expected}`")]
    ModelHost {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("anomaly model file {path}: {source}")]
    ModelFile {
        path: PathBuf,
        source: Box<AnomalyError>,
    },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading host metrics and incidents from the store: {0}")]
    Store(#[from] StoreError),
    #[error(
        "reading host metrics stalled at time {time_ns}: more than {limit} events share one timestamp"
    )]
    PagingStalled { time_ns: u64, limit: usize },
    #[error(
        "already tracking {max} hosts; host `{host}` is not baselined (raise [anomaly] max_hosts)"
    )]
    TooManyHosts { host: String, max: usize },
}
