//! Loaders for published dataset formats.
//!
//! - [`longbench`]: the 21 LongBench v1 datasets (and LongBench-E), official prompts.
//! - [`gsm8k`]: math word problems in the GSM8K format, zero- or few-shot.
//! - [`squad`]: extractive QA (SQuAD v1.1/v2 JSON, flat JSONL, HotpotQA JSON).
//! - [`custom`]: a user's JSONL with a task spec in TOML.
//! - [`plain`]: the JSONL files kvlens ships under `datasets/`.

pub mod custom;
pub mod gsm8k;
pub mod longbench;
pub mod plain;
pub mod squad;

pub use plain::load_plain;

use crate::error::{Result, TaskError};
use crate::jsonl::Fields;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;

/// Sample ids seen so far in one JSONL file, so that a repeated id names both lines: the
/// runner resumes by `(task, sample_id, method)`, and two samples with one id would be
/// confused.
pub(crate) struct Ids<'a> {
    path: &'a Path,
    first_line: HashMap<String, usize>,
}

impl<'a> Ids<'a> {
    pub(crate) fn new(path: &'a Path) -> Self {
        Self {
            path,
            first_line: HashMap::new(),
        }
    }

    /// Records `id` as the id of `line`; an error when an earlier line has it.
    pub(crate) fn insert(&mut self, id: &str, line: usize, field: &str) -> Result<()> {
        if let Some(&first) = self.first_line.get(id) {
            return Err(TaskError::Line {
                path: self.path.to_path_buf(),
                line,
                msg: format!("field \"{field}\": id \"{id}\" is already the id of line {first}"),
            });
        }
        self.first_line.insert(id.to_string(), line);
        Ok(())
    }

    /// The line's `id` or `_id` (a string or an integer), else its line number; recorded.
    pub(crate) fn id_or_line(&mut self, f: &Fields) -> Result<String> {
        let (id, field) = match opt_id(f, "id")? {
            Some(id) => (id, "id"),
            None => match opt_id(f, "_id")? {
                Some(id) => (id, "_id"),
                None => (f.line.to_string(), "id"),
            },
        };
        self.insert(&id, f.line, field)?;
        Ok(id)
    }
}

/// The optional `meta` object of a line (absent or null: empty).
pub(crate) fn meta_object(f: &Fields, field: &str) -> Result<Map<String, Value>> {
    match f.opt(field) {
        None => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(f.err(field, "is not an object")),
    }
}

/// An optional id given as a string or an integer; `None` when absent or null.
fn opt_id(f: &Fields, field: &str) -> Result<Option<String>> {
    match f.opt(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v @ Value::Number(n)) if n.is_i64() || n.is_u64() => {
            Ok(Some(crate::sample::py_str(v)))
        }
        Some(_) => Err(f.err(field, "is not a string or an integer")),
    }
}
