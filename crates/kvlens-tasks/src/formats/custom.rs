//! Users' own tasks without Rust: a TOML file with the keys of a [`TaskSpec`] plus `data`,
//! the JSONL file of samples (relative to the TOML file):
//!
//! ```toml
//! name = "contracts"
//! data = "contracts.jsonl"
//! template = "{context}\n\nQuestion: {input}\nAnswer:"
//! max_new_tokens = 32
//! metric = "qa_f1"
//! ```
//!
//! Each JSONL line holds `answers` (a list, or one string or number), the fields the
//! template names, and optionally `id` or `_id` (else the line number), `all_classes` and a
//! `meta` object. Every other field is a template field.

use super::{meta_object, Ids};
use crate::error::{Result, TaskError};
use crate::jsonl::{read_objects, Fields};
use crate::sample::Sample;
use crate::spec::{py_format, TaskSpec, Truncation};
use kvlens_score::Metric;
use serde::{Deserialize, Deserializer};
use serde_json::Map;
use std::path::{Path, PathBuf};

/// The TOML file: `data` and the keys of [`TaskSpec`]. serde's `flatten` cannot be combined
/// with `deny_unknown_fields`, so the keys are repeated here; `into_spec` names every field,
/// so a key added to `TaskSpec` and forgotten here does not compile.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    data: PathBuf,
    name: String,
    #[serde(default)]
    description: String,
    template: String,
    max_new_tokens: usize,
    #[serde(deserialize_with = "metric_by_name")]
    metric: Metric,
    #[serde(default = "yes")]
    chat: bool,
    #[serde(default)]
    first_line: bool,
    #[serde(default)]
    stop: Vec<String>,
    #[serde(default)]
    truncation: Truncation,
}

fn yes() -> bool {
    true
}

/// A metric by its name, with the known names in the error.
fn metric_by_name<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Metric, D::Error> {
    let name = String::deserialize(d)?;
    name.parse().map_err(serde::de::Error::custom)
}

impl TaskFile {
    fn into_spec(self) -> (PathBuf, TaskSpec) {
        let TaskFile {
            data,
            name,
            description,
            template,
            max_new_tokens,
            metric,
            chat,
            first_line,
            stop,
            truncation,
        } = self;
        let spec = TaskSpec {
            name,
            description,
            template,
            max_new_tokens,
            metric,
            chat,
            first_line,
            stop,
            truncation,
        };
        (data, spec)
    }
}

/// Fields of a line that are not template fields.
const RESERVED: [&str; 5] = ["id", "_id", "answers", "all_classes", "meta"];

/// Reads a task spec from TOML and its samples from the JSONL file its `data` names.
pub fn load(toml_path: &Path) -> Result<(TaskSpec, Vec<Sample>)> {
    let bad = |msg: String| TaskError::File {
        path: toml_path.to_path_buf(),
        msg,
    };
    let text = std::fs::read_to_string(toml_path).map_err(|source| TaskError::Io {
        path: toml_path.to_path_buf(),
        source,
    })?;
    // toml's message shows the line, the column and the offending key or value.
    let file: TaskFile = toml::from_str(&text).map_err(|e| bad(e.to_string().trim_end().into()))?;
    let (data, spec) = file.into_spec();
    if spec.name.trim().is_empty() {
        return Err(bad("key \"name\" is empty".into()));
    }
    if spec.max_new_tokens == 0 {
        return Err(bad("key \"max_new_tokens\" must be at least 1".into()));
    }
    let mut named = Vec::new();
    py_format(&spec.template, |n| {
        if !named.iter().any(|m| m == n) {
            named.push(n.to_string());
        }
        Ok(String::new())
    })
    .map_err(|e| bad(format!("key \"template\": {e}")))?;
    let data = toml_path.parent().unwrap_or(Path::new("")).join(data);
    let samples = load_samples(&data, &named)?;
    Ok((spec, samples))
}

/// The JSONL of a custom task; every line must hold each field in `named`.
fn load_samples(path: &Path, named: &[String]) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    let mut ids = Ids::new(path);
    read_objects(path, |line, obj| {
        let f = Fields {
            path,
            line,
            obj: &obj,
        };
        let id = ids.id_or_line(&f)?;
        let answers = f.answers("answers")?;
        let all_classes = f.str_list("all_classes")?;
        let meta = meta_object(&f, "meta")?;
        if let Some(n) = named.iter().find(|n| !obj.contains_key(n.as_str())) {
            return Err(f.err(n, "is missing (the prompt template names it)"));
        }
        let fields: Map<_, _> = obj
            .into_iter()
            .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
            .collect();
        out.push(Sample {
            id,
            fields,
            answers,
            all_classes,
            meta,
        });
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TOML: &str = r#"
name = "contracts"
description = "clauses"
data = "contracts.jsonl"
template = "{context}\n\nQ: {input} ({party})\nA:"
max_new_tokens = 16
metric = "qa_f1"
stop = ["\n"]
"#;

    fn setup(toml: &str, jsonl: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("task.toml");
        std::fs::write(&t, toml).unwrap();
        std::fs::write(dir.path().join("contracts.jsonl"), jsonl).unwrap();
        (dir, t)
    }

    #[test]
    fn loads_spec_and_samples() {
        let jsonl = [
            json!({"context": "C", "input": "who", "party": "A", "answers": ["x"], "meta": {"k": 1}}),
            json!({"_id": "s2", "context": "D", "input": "why", "party": 2, "answers": 5,
                   "all_classes": ["p", "q"]}),
        ]
        .map(|v| v.to_string())
        .join("\n");
        let (_d, t) = setup(TOML, &jsonl);
        let (spec, samples) = load(&t).unwrap();
        assert_eq!(spec.name, "contracts");
        assert_eq!(spec.metric, Metric::QaF1);
        assert!(spec.chat && !spec.first_line);
        assert_eq!(spec.stop, ["\n"]);
        assert_eq!(spec.truncation, Truncation::Middle);
        assert_eq!(samples[0].id, "1");
        assert_eq!(samples[1].id, "s2");
        assert_eq!(samples[1].answers, ["5"]);
        assert_eq!(samples[1].all_classes, ["p", "q"]);
        assert_eq!(samples[0].meta["k"], json!(1));
        assert_eq!(samples[0].fields.len(), 3);
        assert_eq!(spec.render(&samples[1]).unwrap(), "D\n\nQ: why (2)\nA:");
    }

    #[test]
    fn every_task_spec_key_is_accepted() {
        let spec = crate::formats::longbench::spec("trec").unwrap();
        let mut table: toml::Table = toml::from_str(&toml::to_string(&spec).unwrap()).unwrap();
        table.insert("data".into(), "contracts.jsonl".into());
        let line = json!({"context": "c", "input": "i", "answers": ["LOC"]}).to_string();
        let (_d, t) = setup(&toml::to_string(&table).unwrap(), &line);
        assert_eq!(load(&t).unwrap().0, spec);
    }

    #[test]
    fn toml_errors_name_the_file_and_key() {
        let line =
            json!({"context": "c", "input": "i", "party": "p", "answers": ["x"]}).to_string();
        for (toml, want) in [
            (
                TOML.replace("qa_f1", "bleu"),
                vec!["unknown metric `bleu`", "squad_f1", "metric"],
            ),
            (
                TOML.replace("stop =", "stops ="),
                vec!["unknown field `stops`"],
            ),
            (
                TOML.replace("max_new_tokens = 16\n", ""),
                vec!["max_new_tokens"],
            ),
            (
                TOML.replace("16", "\"16\""),
                vec!["max_new_tokens", "line 6"],
            ),
            (
                TOML.replace("max_new_tokens = 16", "max_new_tokens = 0"),
                vec!["max_new_tokens"],
            ),
            (TOML.replace("({party})", "({party)"), vec!["template"]),
            (
                TOML.replace("contracts.jsonl", "nope.jsonl"),
                vec!["nope.jsonl"],
            ),
            ("name = \n".to_string(), vec!["line 1"]),
        ] {
            let (_d, t) = setup(&toml, &line);
            let e = load(&t).unwrap_err().to_string();
            assert!(e.contains("task.toml") || e.contains("nope.jsonl"), "{e}");
            for w in want {
                assert!(e.contains(w), "{e} (wanted {w})");
            }
        }
    }

    #[test]
    fn data_errors_name_file_line_and_field() {
        let ok = json!({"context": "c", "input": "i", "party": "p", "answers": ["x"]}).to_string();
        for (bad, want) in [
            (
                json!({"context": "c", "input": "i", "answers": ["x"]}),
                "field \"party\" is missing",
            ),
            (
                json!({"context": "c", "input": "i", "party": "p"}),
                "field \"answers\" is missing",
            ),
            (
                json!({"context": "c", "input": "i", "party": "p", "answers": [{}]}),
                "field \"answers\"",
            ),
            (
                json!({"id": [1], "context": "c", "input": "i", "party": "p", "answers": []}),
                "field \"id\"",
            ),
            (
                json!({"id": "1", "context": "c", "input": "i", "party": "p", "answers": []}),
                "already the id of line 1",
            ),
            (
                json!({"context": "c", "input": "i", "party": "p", "answers": [], "meta": []}),
                "field \"meta\"",
            ),
        ] {
            let (_d, t) = setup(TOML, &format!("{ok}\n{bad}\n"));
            let e = load(&t).unwrap_err().to_string();
            assert!(
                e.contains("contracts.jsonl line 2") && e.contains(want),
                "{e} (wanted {want})"
            );
        }
        let (_d, t) = setup(TOML, "\n");
        assert!(load(&t).unwrap_err().to_string().contains("no samples"));
    }
}
