//! A run described as data: the same fields as `kvlens run`'s flags, in TOML.

use crate::error::{Result, RunError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything that decides what a run computes. Flags on the command line override the
/// fields of a `--config` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// `default`, a .gguf file, a Hugging Face folder, or `hf:ORG/NAME`.
    #[serde(default = "default_model")]
    pub model: String,
    /// Task names, `NAME=FILE`, or task spec `.toml` files.
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Method specs; `full` is added first when missing.
    #[serde(default)]
    pub methods: Vec<String>,
    /// The run folder.
    #[serde(default)]
    pub out: Option<PathBuf>,
    /// The run's id in every record (default: the run folder's name).
    #[serde(default)]
    pub name: Option<String>,
    /// The first N samples of each task.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only these sample ids.
    #[serde(default)]
    pub samples: Vec<String>,
    /// `I/N`: this worker's share of the samples (I from 0).
    #[serde(default)]
    pub shard: Option<String>,
    #[serde(default)]
    pub seed: u64,
    /// 0 is greedy.
    #[serde(default)]
    pub temperature: f32,
    #[serde(default)]
    pub top_k: usize,
    #[serde(default = "one")]
    pub top_p: f32,
    /// Prompts longer than this are truncated as the task says (default: the model's
    /// context minus the task's max new tokens minus 64, as LongBench's pred.py).
    #[serde(default)]
    pub max_prompt_tokens: Option<usize>,
    /// Overrides every task's own limit.
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    #[serde(default = "f16")]
    pub kv_dtype: String,
    /// Overrides the pass rule (exact metrics 1.0, graded 0.5).
    #[serde(default)]
    pub pass_threshold: Option<f64>,
    /// Run failed samples again.
    #[serde(default)]
    pub retry_errors: bool,
    /// Compute one prefill per sample for the baseline and the methods that compress only
    /// after the prompt (each forks the cache and pays its own compression).
    #[serde(default = "yes")]
    pub share_prefill: bool,
}

fn yes() -> bool {
    true
}

fn default_model() -> String {
    "default".into()
}
fn one() -> f32 {
    1.0
}
fn f16() -> String {
    "f16".into()
}

/// The suite `kvlens run` runs without arguments: six generated tasks, five samples each
/// (about 1000 tokens), the baseline and six methods from both families, at budgets of a
/// quarter of the context.
pub const DEFAULT_TASKS: [&str; 6] = [
    "passkey",
    "niah_single",
    "niah_multikey",
    "vt",
    "arith",
    "doc_qa",
];
pub const DEFAULT_METHODS: [&str; 7] = [
    "full",
    "streamingllm:budget=256",
    "h2o:budget=256",
    "snapkv:budget=256",
    "pyramidkv:budget=256",
    "kivi:bits=2",
    "int8",
];
pub const DEFAULT_LIMIT: usize = 5;

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            model: default_model(),
            tasks: Vec::new(),
            methods: Vec::new(),
            out: None,
            name: None,
            limit: None,
            samples: Vec::new(),
            shard: None,
            seed: 0,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            max_prompt_tokens: None,
            max_new_tokens: None,
            kv_dtype: f16(),
            pass_threshold: None,
            retry_errors: false,
            share_prefill: true,
        }
    }
}

impl RunConfig {
    /// Reads a suite file, or the `run.toml` of a run folder (its `[config]` table).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| RunError::io(path, e))?;
        let err = |e: toml::de::Error| RunError::Config {
            path: path.to_path_buf(),
            msg: e.to_string(),
        };
        let table: toml::Table = toml::from_str(&text).map_err(err)?;
        if table.contains_key("provenance") {
            if let Some(toml::Value::Table(c)) = table.get("config") {
                return c.clone().try_into().map_err(err);
            }
        }
        toml::from_str(&text).map_err(err)
    }

    /// The settings that change what records hold, as `(name, value)`; a run folder keeps
    /// them from one invocation to the next.
    pub fn output_settings(&self) -> Vec<(&'static str, String)> {
        let opt = |x: Option<usize>| x.map_or("the task's".to_string(), |v| v.to_string());
        vec![
            ("seed", self.seed.to_string()),
            ("temperature", self.temperature.to_string()),
            ("top_k", self.top_k.to_string()),
            ("top_p", self.top_p.to_string()),
            ("max_new_tokens", opt(self.max_new_tokens)),
            ("max_prompt_tokens", opt(self.max_prompt_tokens)),
            ("kv_dtype", self.kv_dtype.clone()),
        ]
    }

    /// Fills what is still empty with the default suite.
    pub fn with_defaults(mut self) -> Self {
        if self.tasks.is_empty() {
            self.tasks = DEFAULT_TASKS.iter().map(|s| s.to_string()).collect();
            if self.limit.is_none() && self.samples.is_empty() {
                self.limit = Some(DEFAULT_LIMIT);
            }
        }
        if self.methods.is_empty() {
            self.methods = DEFAULT_METHODS.iter().map(|s| s.to_string()).collect();
        }
        self
    }

    /// `I/N` as numbers, checked.
    pub fn shard(&self) -> Result<Option<(usize, usize)>> {
        let Some(s) = &self.shard else {
            return Ok(None);
        };
        let bad = || {
            RunError::Invalid(format!(
                "shard `{s}`: expected I/N with 0 <= I < N, e.g. 0/4 for the first of four workers"
            ))
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let i: usize = i.trim().parse().map_err(|_| bad())?;
        let n: usize = n.trim().parse().map_err(|_| bad())?;
        if n == 0 || i >= n {
            return Err(bad());
        }
        Ok(Some((i, n)))
    }

    /// The run folder: `out`, or `results/<name>`, or `results/default`.
    pub fn out_dir(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            PathBuf::from("results").join(self.name.as_deref().unwrap_or("default"))
        })
    }

    pub fn run_id(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.out_dir()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_errors_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("suite.toml");
        std::fs::write(&p, "tasks = [\"passkey\"]\nlimt = 3\n").unwrap();
        let e = RunConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("suite.toml") && e.contains("limt"), "{e}");
        std::fs::write(&p, "tasks = [\"passkey\"]\nlimit = \"x\"\n").unwrap();
        let e = RunConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("limit"), "{e}");
        std::fs::write(
            &p,
            "tasks = [\"vt\"]\nmethods = [\"h2o\"]\nshard = \"1/2\"\n",
        )
        .unwrap();
        let c = RunConfig::from_file(&p).unwrap();
        assert_eq!(c.shard().unwrap(), Some((1, 2)));
        assert_eq!(c.model, "default");
    }

    #[test]
    fn shards_are_checked() {
        for bad in ["2/2", "x/3", "1", "0/0"] {
            let c = RunConfig {
                shard: Some(bad.into()),
                ..RunConfig::default()
            };
            assert!(c.shard().is_err(), "{bad}");
        }
    }
}
