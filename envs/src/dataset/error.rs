//! Errors of the LeRobotDataset reader and writer. Each names the file, field or value at fault.

use std::path::PathBuf;

/// What went wrong reading or writing a LeRobotDataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: required file is missing (is {root} a LeRobotDataset?)")]
    MissingFile { root: PathBuf, path: PathBuf },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} line {line}: invalid JSON: {source}")]
    JsonLine {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: unsupported codebase_version {version:?} (expected v2.1 or v3.0)")]
    UnsupportedVersion { path: PathBuf, version: String },
    #[error("{path}: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow_schema::ArrowError,
    },
    #[error("{path}: column {column:?} is missing (declared in meta/info.json or required by the format)")]
    MissingColumn { path: PathBuf, column: String },
    #[error("{path}: column {column:?} has type {found}, expected {expected}")]
    ColumnType {
        path: PathBuf,
        column: String,
        found: String,
        expected: String,
    },
    #[error("{path}: column {column:?} has a null in row {row}")]
    NullValue {
        path: PathBuf,
        column: String,
        row: usize,
    },
    #[error("{path}: feature {feature:?}: {reason}")]
    BadFeature {
        path: PathBuf,
        feature: String,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Inconsistent { path: PathBuf, reason: String },
    #[error("episode {episode} is out of range (the dataset has {count} episodes)")]
    EpisodeOutOfRange { episode: usize, count: usize },
    #[error("frame {frame} of episode {episode} is out of range (the episode has {len} frames)")]
    FrameOutOfRange {
        episode: usize,
        frame: usize,
        len: usize,
    },
    #[error("camera {camera:?} is not in this dataset (cameras: {available})")]
    UnknownCamera { camera: String, available: String },
    #[error("{path}: ffmpeg: {context}: {source}")]
    Ffmpeg {
        path: PathBuf,
        context: String,
        #[source]
        source: ffmpeg_next::Error,
    },
    #[error(
        "{path}: no frame at {timestamp:.4} s (nearest decoded frame {nearest}); the video is truncated or out of sync"
    )]
    MissingVideoFrame {
        path: PathBuf,
        timestamp: f64,
        nearest: String,
    },
    #[error("{path}: {reason}")]
    Video { path: PathBuf, reason: String },
    #[error("episode {episode}: {reason}")]
    BadEpisode { episode: usize, reason: String },
    #[error("{path}: already exists; refusing to overwrite a dataset")]
    AlreadyExists { path: PathBuf },
    #[error("hub repo {repo}: {reason}")]
    Hub { repo: String, reason: String },
    #[error("{path}: {source}; a dataset's files must lie inside its folder")]
    UnsafePath {
        path: PathBuf,
        #[source]
        source: crate::safe_path::UnsafePath,
    },
}

pub type Result<T, E = DatasetError> = std::result::Result<T, E>;

/// Attach a path to an I/O error.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DatasetError {
    let path = path.into();
    move |source| DatasetError::Io { path, source }
}
