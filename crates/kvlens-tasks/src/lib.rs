//! Tasks for kvlens: how a dataset becomes prompts, generation settings and a metric for
//! each sample, the loaders for published formats (LongBench v1, GSM8K, SQuAD, plain JSONL
//! with a TOML task spec) and seeded generators for long-context sets.

pub mod error;
pub mod formats;
pub mod gen;
pub mod jsonl;
pub mod registry;
pub mod sample;
pub mod spec;

pub use error::{Result, TaskError};
pub use registry::{builtins, DataDirs, Task};
pub use sample::Sample;
pub use spec::{Prompt, TaskSpec, Tokenize, Truncation};
