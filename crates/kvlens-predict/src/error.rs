use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Bad input, with the place it was found.
    #[error("reading {path} line {line}: field `{field}`: {msg}")]
    Field {
        path: PathBuf,
        line: usize,
        field: String,
        msg: String,
    },
    #[error("reading {path} line {line}: {msg}")]
    Line {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, PredictError>;
