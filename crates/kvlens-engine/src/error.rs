use std::path::PathBuf;

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model {path}: {msg}")]
    Model { path: PathBuf, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("{0}")]
    Fetch(String),
    #[error(
        "prompt of {tokens} tokens plus {new} new tokens exceeds the model's context of {context}"
    )]
    TooLong {
        tokens: usize,
        new: usize,
        context: usize,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
