use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A problem at one line of a JSONL file (`line` counts from 1).
    #[error("{path} line {line}: {msg}")]
    Line {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("unknown task `{given}`; built-in tasks: {known}")]
    UnknownTask { given: String, known: String },
    #[error("{0}")]
    Invalid(String),
    /// Downloading a published data set failed or was not allowed; `msg` says what was
    /// tried and how to place the files by hand.
    #[error("fetching {what}: {msg}")]
    Fetch { what: String, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

pub type Result<T> = std::result::Result<T, TaskError>;
