//! Typed errors of the policies crate; each names the input at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A batch or observation field has the wrong length or shape.
    #[error("{field}: expected {expected}, got {got}")]
    Shape {
        field: &'static str,
        expected: String,
        got: String,
    },
    /// A value is out of range (non-finite weight, empty batch, ...).
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The policy needs an input this batch or observation lacks.
    #[error("policy {policy} needs {what}, which the input lacks")]
    MissingInput {
        policy: &'static str,
        what: &'static str,
    },
    /// A checkpoint directory or file could not be read or written.
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `policy.json` could not be parsed or holds unknown fields.
    #[error("checkpoint config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    /// The Burn record does not match the network the config describes.
    #[error("checkpoint weights {path}: {reason}")]
    Record { path: PathBuf, reason: String },
    /// A checkpoint of one policy kind was loaded where another was expected.
    #[error("checkpoint {path} holds a {found} policy, expected {expected}")]
    KindMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    /// A tensor could not be read back (dtype mismatch inside Burn).
    #[error("reading tensor {what}: {reason}")]
    Tensor { what: &'static str, reason: String },
}

pub type Result<T> = std::result::Result<T, PolicyError>;

pub(crate) fn shape_err(field: &'static str, expected: impl ToString, got: impl ToString) -> PolicyError {
    PolicyError::Shape {
        field,
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

/// A LeRobot folder file (`config.json`, processor files) that cannot be used, naming it and why.
pub(crate) fn config_err(path: &std::path::Path, reason: impl Into<String>) -> PolicyError {
    PolicyError::Config {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// An observation a LeRobot policy cannot take (missing feature, wrong size).
pub(crate) fn input_err(reason: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        field: "observation",
        reason: reason.into(),
    }
}
