use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path} line {line}: {msg}")]
    Line {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error(transparent)]
    Task(#[from] kvlens_tasks::TaskError),
    #[error(transparent)]
    Engine(#[from] kvlens_engine::EngineError),
    #[error("{0}")]
    Invalid(String),
}

impl RunError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        RunError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, RunError>;
