//! Every task kvlens knows by name, and how a name on the command line becomes samples.
//!
//! A task argument is one of:
//! - a built-in generated task (`passkey`, `vt`, ...): its shipped set under `datasets/`;
//! - a LongBench dataset (`hotpotqa`, `gov_report_e`, ...): the official JSONL under the
//!   LongBench folder (`kvlens datasets fetch longbench` puts it there);
//! - `NAME=FILE`: a built-in task's prompt and metric over another file (`gsm8k=test.jsonl`,
//!   `squad=dev-v1.1.json`, `passkey=my_passkeys.jsonl`, `hotpotqa=hotpotqa.jsonl`);
//! - a `.toml` task spec of the user's own (see `formats::custom`).

use crate::error::{Result, TaskError};
use crate::formats::{custom, gsm8k, load_plain, longbench, squad};
use crate::gen::{self, Generator};
use crate::sample::Sample;
use crate::spec::TaskSpec;
use std::path::{Path, PathBuf};

/// Where a built-in task's samples come from.
#[derive(Clone, Copy)]
pub enum Kind {
    Generated(&'static dyn Generator),
    LongBench,
    Gsm8k,
    Squad,
}

/// A task kvlens knows by name.
pub struct BuiltIn {
    pub name: String,
    pub description: String,
    /// The paper or benchmark.
    pub source: String,
    pub kind: Kind,
}

/// Every built-in task: the generated ones, then the loaders.
pub fn builtins() -> Vec<BuiltIn> {
    let mut out: Vec<BuiltIn> = gen::generators()
        .into_iter()
        .map(|g| BuiltIn {
            name: g.name().into(),
            description: g.description().into(),
            source: g.source().into(),
            kind: Kind::Generated(g),
        })
        .collect();
    out.push(BuiltIn {
        name: "gsm8k".into(),
        description: "grade-school math: gsm8k=FILE zero-shot, gsm8k_8shot=FILE with the file's first 8 problems as examples".into(),
        source: "Cobbe et al. 2021 (GSM8K)".into(),
        kind: Kind::Gsm8k,
    });
    out.push(BuiltIn {
        name: "squad".into(),
        description: "extractive QA over a passage (squad=FILE: SQuAD JSON, JSONL or HotpotQA)"
            .into(),
        source: "Rajpurkar et al. 2016 (SQuAD)".into(),
        kind: Kind::Squad,
    });
    for t in longbench::TASKS.iter() {
        out.push(BuiltIn {
            name: t.name.into(),
            description: t.description.into(),
            source: "LongBench v1 (Bai et al. 2023)".into(),
            kind: Kind::LongBench,
        });
    }
    out
}

/// Folders where task data lives.
#[derive(Debug, Clone)]
pub struct DataDirs {
    /// The shipped generated sets (`datasets/`).
    pub shipped: PathBuf,
    /// LongBench's JSONL files.
    pub longbench: PathBuf,
}

impl DataDirs {
    /// The folders of a `--datasets DIR` flag (DIR and DIR/longbench), or [`discover`]'s
    /// when it is not given.
    ///
    /// [`discover`]: DataDirs::discover
    pub fn from_flag(dir: Option<&Path>) -> Self {
        match dir {
            Some(d) => DataDirs {
                shipped: d.to_path_buf(),
                longbench: d.join("longbench"),
            },
            None => DataDirs::discover(),
        }
    }

    /// `KVLENS_DATASETS` or `datasets/` in the current folder, falling back to the `datasets/`
    /// of the source tree: the one cargo names at run time (`cargo run`, `cargo test`), else
    /// the one this binary was built from. (Cargo reuses a build from a shared target folder
    /// after the checkout moves, so the path baked in at build time may be another clone's.)
    pub fn discover() -> Self {
        let shipped = std::env::var_os("KVLENS_DATASETS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let here = PathBuf::from("datasets");
                let runtime = std::env::var_os("CARGO_MANIFEST_DIR")
                    .map(|d| PathBuf::from(d).join("../../datasets"));
                let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets");
                let src = [Some(here), runtime]
                    .into_iter()
                    .flatten()
                    .find(|d| d.join("manifest.json").is_file())
                    .unwrap_or(built);
                src.canonicalize().unwrap_or(src)
            });
        let longbench = shipped.join("longbench");
        Self { shipped, longbench }
    }
}

/// A task ready to run: its spec and its samples.
#[derive(Debug, Clone)]
pub struct Task {
    pub spec: TaskSpec,
    pub samples: Vec<Sample>,
    /// The file the samples came from.
    pub origin: PathBuf,
}

fn known_names() -> String {
    builtins()
        .iter()
        .map(|b| b.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The spec of a built-in task, without loading samples.
pub fn builtin_spec(name: &str) -> Option<TaskSpec> {
    if let Some(g) = gen::generator(name) {
        return Some(g.spec());
    }
    match name {
        "gsm8k" => Some(gsm8k::spec(0)),
        "squad" => Some(squad::spec()),
        _ => longbench::spec(name),
    }
}

/// Loads a task from its command-line form (see the module docs).
pub fn load(arg: &str, dirs: &DataDirs) -> Result<Task> {
    let arg = arg.trim();
    if arg.ends_with(".toml") {
        let path = PathBuf::from(arg);
        let (spec, samples) = custom::load(&path)?;
        return Ok(Task {
            spec,
            samples,
            origin: path,
        });
    }
    let (name, file) = match arg.split_once('=') {
        Some((n, f)) => (n.trim(), Some(PathBuf::from(f.trim()))),
        None => (arg, None),
    };
    let unknown = || TaskError::UnknownTask {
        given: name.to_string(),
        known: format!(
            "{}, NAME_e (LongBench-E), or a task spec .toml",
            known_names()
        ),
    };
    if let Some(g) = gen::generator(name) {
        let given = file.is_some();
        let path = file.unwrap_or_else(|| dirs.shipped.join(format!("{name}.jsonl")));
        if !path.is_file() {
            let msg = if given {
                "no such file".to_string()
            } else {
                "the shipped set is missing; `kvlens datasets generate` rebuilds it".to_string()
            };
            return Err(TaskError::File { path, msg });
        }
        return Ok(Task {
            spec: g.spec(),
            samples: load_plain(&path)?,
            origin: path,
        });
    }
    // `gsm8k` is zero-shot; `gsm8k_8shot` takes its 8 examples from the file's first lines.
    let gsm8k_shots = match name {
        "gsm8k" => Some(0),
        n => n
            .strip_prefix("gsm8k_")
            .and_then(|r| r.strip_suffix("shot"))
            .and_then(|k| k.parse::<usize>().ok()),
    };
    if let Some(shots) = gsm8k_shots {
        let path = file.ok_or_else(|| {
            TaskError::Invalid(format!(
                "{name} needs its data file: --tasks {name}=path/to/test.jsonl (GSM8K's JSONL \
                 with `question` and `answer`)"
            ))
        })?;
        return Ok(Task {
            spec: gsm8k::spec(shots),
            samples: gsm8k::load(&path, shots, None)?,
            origin: path,
        });
    }
    match name {
        "squad" => {
            let path = file.ok_or_else(|| {
                TaskError::Invalid(
                    "squad needs its data file: --tasks squad=path/to/dev-v1.1.json".into(),
                )
            })?;
            let loaded = squad::load(&path)?;
            Ok(Task {
                spec: squad::spec(),
                samples: loaded.samples,
                origin: path,
            })
        }
        _ => {
            let spec = longbench::spec(name).ok_or_else(unknown)?;
            let path = file.unwrap_or_else(|| dirs.longbench.clone());
            let samples = longbench::load(&path, name)?;
            let origin = if path.is_dir() {
                path.join(format!("{name}.jsonl"))
            } else {
                path
            };
            Ok(Task {
                spec,
                samples,
                origin,
            })
        }
    }
}
