//! A run described as data: the same fields as `kvlens run`'s flags, in TOML.

use crate::error::{Result, RunError};
use crate::remote::Remote;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
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
    /// Method specs (`full` is added first when missing), or a table of named methods, some
    /// of them served elsewhere (`[methods.NAME] backend = "openai"`).
    #[serde(default)]
    pub methods: Methods,
    /// Requests in flight per server for methods with a remote backend.
    #[serde(default = "four")]
    pub concurrency: usize,
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
    /// Local requests decoding together (samples × methods through the scheduler); 1 runs
    /// each alone, so that its times are its own. Outputs are the same either way.
    #[serde(default = "one_batch")]
    pub batch: usize,
    /// The scheduler's KV budget with `batch` > 1 (`512MiB`, bytes; default a quarter of
    /// the machine's memory).
    #[serde(default)]
    pub kv_budget: Option<String>,
}

fn one_batch() -> usize {
    1
}

fn yes() -> bool {
    true
}
fn four() -> usize {
    4
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
            methods: Methods::default(),
            concurrency: four(),
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
            batch: 1,
            kv_budget: None,
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
            self.methods.local = DEFAULT_METHODS.iter().map(|s| s.to_string()).collect();
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

/// The methods of a run: local specs, and named methods served elsewhere.
///
/// In TOML either a list of specs (`methods = ["full", "snapkv:budget=256"]`) or a table of
/// named methods: `[methods.NAME]` with `spec = "..."` (or nothing, when NAME is the spec)
/// runs locally; with `backend = "openai"`, `base_url` and `model` it is sent to a server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Methods {
    /// Specs run by kvlens's engine (each may hold a comma list).
    pub local: Vec<String>,
    /// `(name, server)`; records name the method by NAME.
    pub remote: Vec<(String, Remote)>,
}

impl Methods {
    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.remote.is_empty()
    }
}

impl Serialize for Methods {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.remote.is_empty() {
            return self.local.serialize(s);
        }
        let mut m = s.serialize_map(Some(self.local.len() + self.remote.len()))?;
        for spec in &self.local {
            m.serialize_entry(spec, &toml::Table::new())?;
        }
        for (name, r) in &self.remote {
            m.serialize_entry(name, r)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Methods {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let v = toml::Value::deserialize(d)?;
        let mut out = Methods::default();
        match v {
            toml::Value::Array(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        toml::Value::String(s) => out.local.push(s),
                        other => {
                            return Err(D::Error::custom(format!(
                                "methods[{i}]: expected a method spec string, found {}",
                                other.type_str()
                            )))
                        }
                    }
                }
            }
            toml::Value::Table(t) => {
                for (name, entry) in t {
                    let toml::Value::Table(mut e) = entry else {
                        return Err(D::Error::custom(format!(
                            "methods.{name}: expected a table"
                        )));
                    };
                    let backend = match e.get("backend") {
                        None => "local".to_string(),
                        Some(toml::Value::String(b)) => b.clone(),
                        Some(_) => {
                            return Err(D::Error::custom(format!(
                                "methods.{name}.backend: expected a string"
                            )))
                        }
                    };
                    if backend == "local" {
                        e.remove("backend");
                        let spec = match e.remove("spec") {
                            None => name.clone(),
                            Some(toml::Value::String(s)) => s,
                            Some(_) => {
                                return Err(D::Error::custom(format!(
                                    "methods.{name}.spec: expected a method spec string"
                                )))
                            }
                        };
                        if let Some(k) = e.keys().next() {
                            return Err(D::Error::custom(format!(
                                "methods.{name}: `{k}` is not a field of a local method \
                                 (fields: spec, backend)"
                            )));
                        }
                        out.local.push(spec);
                    } else {
                        let r: Remote = toml::Value::Table(e)
                            .try_into()
                            .map_err(|err| D::Error::custom(format!("methods.{name}: {err}")))?;
                        out.remote.push((name, r));
                    }
                }
            }
            other => {
                return Err(D::Error::custom(format!(
                    "methods: expected a list of specs or a table of named methods, found {}",
                    other.type_str()
                )))
            }
        }
        Ok(out)
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
    fn methods_as_a_table_mix_servers_and_local_specs_and_survive_run_toml() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("servers.toml");
        std::fs::write(
            &p,
            "tasks = [\"passkey\"]\nconcurrency = 8\n\
             [methods.full]\nbackend = \"openai\"\nbase_url = \"http://h:8000/v1\"\nmodel = \"m\"\n\
             [methods.fp8kv]\nbackend = \"openai\"\nbase_url = \"http://h:8001/v1\"\nmodel = \"m\"\n\
             api_key_env = \"K\"\nretries = 5\nendpoint = \"chat\"\nextra_body = { ignore_eos = false }\n\
             [methods.snap]\nspec = \"snapkv:budget=256\"\n\
             [methods.\"h2o:budget=64\"]\n",
        )
        .unwrap();
        let c = RunConfig::from_file(&p).unwrap();
        assert_eq!(c.concurrency, 8);
        assert_eq!(c.methods.local, vec!["h2o:budget=64", "snapkv:budget=256"]);
        let names: Vec<&str> = c.methods.remote.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["fp8kv", "full"]);
        let fp8 = &c.methods.remote[0].1;
        assert_eq!(fp8.retries, 5);
        assert_eq!(fp8.timeout_s, 600.0);
        assert_eq!(fp8.endpoint, crate::remote::Endpoint::Chat);
        assert_eq!(fp8.extra_body["ignore_eos"], serde_json::json!(false));
        // Written as run.toml and read back: the same config.
        let file = crate::runner::RunFile {
            config: c.clone(),
            provenance: crate::runner::Provenance {
                kvlens_version: "0".into(),
                model_file: "m".into(),
                model_sha256: "0".into(),
                command_line: String::new(),
                threads: 1,
                weights: "q4_1".into(),
                weight_kernels: String::new(),
            },
            noise: None,
        };
        let run_toml = dir.path().join("run.toml");
        std::fs::write(&run_toml, toml::to_string_pretty(&file).unwrap()).unwrap();
        let back = RunConfig::from_file(&run_toml).unwrap();
        assert_eq!(back.methods.remote, c.methods.remote);
        let mut local = back.methods.local.clone();
        local.sort();
        assert_eq!(local, c.methods.local);

        for (bad, want) in [
            (
                "[methods.x]\nbackend = \"openai\"\nbase_url = \"http://h\"\nmodle = \"m\"\n",
                "methods.x",
            ),
            (
                "[methods.x]\nbackend = \"openai\"\nmodel = \"m\"\n",
                "base_url",
            ),
            (
                "[methods.x]\nspec = \"full\"\nbase_url = \"http://h\"\n",
                "not a field of a local method",
            ),
            ("methods = [1]\n", "methods[0]"),
        ] {
            std::fs::write(&p, bad).unwrap();
            let e = RunConfig::from_file(&p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("servers.toml"), "{e}");
        }
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
