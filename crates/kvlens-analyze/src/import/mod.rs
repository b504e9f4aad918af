//! Results made elsewhere, as kvlens records: LongBench prediction folders and the per-sample
//! score files released with Gao et al., "Rethinking Key-Value Cache Compression Techniques
//! for Large Language Model Serving" (MLSys 2025). Fields a source lacks are listed under
//! `meta.absent` ([`crate::load::ABSENT_KEY`]) so that the analyses report them as absent,
//! not as zeros.
//!
//! The other tools' formats have a module each: [`lm_eval`], [`bench`] (vLLM's
//! and SGLang's serving benchmarks), [`ruler`] and [`longbench_v2`].

pub mod bench;
pub mod lm_eval;
pub mod longbench_v2;
pub mod pyrepr;
pub mod ruler;

use crate::analysis::label;
use crate::error::{AnalyzeError, Result};
use crate::load::ABSENT_KEY;
use kvlens_run::Record;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What an import wrote.
#[derive(Debug, Default)]
pub struct Imported {
    pub records: usize,
    pub files: Vec<PathBuf>,
    /// What the import checked or could not use (the source's own aggregates against
    /// kvlens's, files skipped), for the user to read.
    pub notes: Vec<String>,
}

pub(crate) const TIMING_FIELDS: [&str; 8] = [
    "prompt_tokens",
    "output_tokens",
    "finish_reason",
    "max_new_tokens",
    "prefill_ms",
    "ttft_ms",
    "decode_ms",
    "e2e_ms",
];
pub(crate) const MEMORY_FIELDS: [&str; 3] = ["kv_bytes_peak", "kv_bytes_full", "kv_tokens_kept"];

pub(crate) fn absent(extra: &[&str]) -> Value {
    let mut v: Vec<&str> = TIMING_FIELDS.to_vec();
    v.extend(MEMORY_FIELDS);
    v.extend(extra);
    json!(v)
}

/// A record from what the source has; the rest zero and listed as absent.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    run_id: &str,
    model: &str,
    task: &str,
    sample_id: &str,
    method: &str,
    output_text: &str,
    answers: Vec<String>,
    all_classes: Vec<String>,
    mut meta: Map<String, Value>,
) -> std::result::Result<Record, String> {
    let v = json!({
        "run_id": run_id, "model": model, "task": task, "sample_id": sample_id,
        "method": method, "prompt_hash": "", "prompt_tokens": 0, "output_text": output_text,
        "output_tokens": 0, "max_new_tokens": 0, "prefill_ms": 0.0, "ttft_ms": 0.0,
        "decode_ms": 0.0, "e2e_ms": 0.0, "kv_bytes_peak": 0, "kv_bytes_full": 0,
        "kv_tokens_kept": 0.0, "answers": answers, "all_classes": all_classes,
    });
    let mut r: Record = serde_json::from_value(v).map_err(|e| e.to_string())?;
    meta.entry(ABSENT_KEY.to_string())
        .or_insert_with(|| absent(&[]));
    r.meta = meta;
    Ok(r)
}

pub(crate) fn write_all(
    out: &Path,
    groups: BTreeMap<(String, String), Vec<Record>>,
) -> Result<Imported> {
    write_grouped(out, groups, &|task, method| {
        PathBuf::from(label(task)).join(format!("{}.jsonl", label(method)))
    })
}

/// Writes each (folder key, method) group to `out/<path_of(key, method)>`, refusing two
/// groups that would share a file.
pub(crate) fn write_grouped(
    out: &Path,
    groups: BTreeMap<(String, String), Vec<Record>>,
    path_of: &dyn Fn(&str, &str) -> PathBuf,
) -> Result<Imported> {
    let mut done = Imported::default();
    let mut seen: BTreeMap<PathBuf, (String, String)> = BTreeMap::new();
    for ((key, method), records) in groups {
        let path = out.join(path_of(&key, &method));
        if let Some((k, m)) = seen.insert(path.clone(), (key.clone(), method.clone())) {
            return Err(AnalyzeError::Invalid(format!(
                "`{k}` method `{m}` and `{key}` method `{method}` would share the file {}: \
                 rename one (--method where the importer takes it)",
                path.display()
            )));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| AnalyzeError::io(dir, e))?;
        }
        kvlens_run::store::write_atomic(&path, &records)?;
        done.records += records.len();
        done.files.push(path);
    }
    Ok(done)
}

/// `path` itself, or the files of the folder `path` whose extension is one of `exts`.
pub(crate) fn files_with(path: &Path, exts: &[&str]) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    Ok(read_dir_sorted(path)?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| exts.iter().any(|e| x == *e)))
        .collect())
}

pub(crate) fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

pub(crate) fn id_of(o: &Map<String, Value>, index: usize) -> String {
    match o.get("_id").or_else(|| o.get("id")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => index.to_string(),
        Some(other) => other.to_string(),
    }
}

pub(crate) fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| AnalyzeError::io(dir, e))? {
        v.push(e.map_err(|e| AnalyzeError::io(dir, e))?.path());
    }
    v.sort();
    Ok(v)
}

/// Every file under `dir` (recursively) whose name `keep` accepts, sorted by path.
pub(crate) fn walk(dir: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut stack = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        for p in read_dir_sorted(&d)? {
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| keep(&n.to_string_lossy())) {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The file name of `p` as a string (empty for `..`).
pub(crate) fn name_of(p: &Path) -> String {
    p.file_name()
        .map_or(String::new(), |n| n.to_string_lossy().to_string())
}

/// One JSON object per non-blank line of `path`, with its 1-based line number.
pub(crate) fn json_lines(path: &Path) -> Result<Vec<(usize, Map<String, Value>)>> {
    let text = std::fs::read_to_string(path).map_err(|e| AnalyzeError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| AnalyzeError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        match serde_json::from_str(line) {
            Ok(Value::Object(o)) => out.push((i + 1, o)),
            Ok(_) => return Err(bad("not a JSON object".into())),
            Err(e) => return Err(bad(format!("invalid JSON: {e}"))),
        }
    }
    Ok(out)
}

/// `DIR/<method>/<dataset>.jsonl`, lines with `pred`, `answers`, `all_classes`, `length`
/// (LongBench's `pred.py` output). Each prediction is scored with the dataset's metric.
pub fn longbench_pred(dir: &Path, out: &Path, model: &str) -> Result<Imported> {
    let run_id = dir
        .file_name()
        .map_or("imported".into(), |n| n.to_string_lossy().to_string());
    let mut groups: BTreeMap<(String, String), Vec<Record>> = BTreeMap::new();
    for mdir in read_dir_sorted(dir)? {
        if !mdir.is_dir() {
            continue;
        }
        let method = mdir
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().to_string());
        for file in read_dir_sorted(&mdir)? {
            if file.extension().is_none_or(|x| x != "jsonl") {
                continue;
            }
            let task = file
                .file_stem()
                .map_or(String::new(), |n| n.to_string_lossy().to_string());
            let spec = kvlens_tasks::formats::longbench::task(&task);
            let text = std::fs::read_to_string(&file).map_err(|e| AnalyzeError::io(&file, e))?;
            let mut index = 0;
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let bad = |msg: String| AnalyzeError::Line {
                    path: file.clone(),
                    line: i + 1,
                    msg,
                };
                let v: Value =
                    serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
                let Value::Object(o) = v else {
                    return Err(bad("not a JSON object".into()));
                };
                let pred = match o.get("pred") {
                    Some(Value::String(s)) => s.clone(),
                    Some(_) => return Err(bad("field \"pred\" is not a string".into())),
                    None => return Err(bad("field \"pred\" is missing".into())),
                };
                let mut meta = Map::new();
                if let Some(l) = o.get("length") {
                    meta.insert("length".into(), l.clone());
                }
                let mut absent_extra = vec![];
                if spec.is_none() {
                    absent_extra.push("score");
                }
                meta.insert(ABSENT_KEY.into(), absent(&absent_extra));
                let mut r = record(
                    &run_id,
                    model,
                    &task,
                    &id_of(&o, index),
                    &method,
                    &pred,
                    strings(o.get("answers")),
                    strings(o.get("all_classes")),
                    meta,
                )
                .map_err(bad)?;
                if let Some(t) = spec {
                    r.first_line = t.first_line;
                    r.rescore(Some(t.metric), None);
                }
                index += 1;
                groups
                    .entry((task.clone(), method.clone()))
                    .or_default()
                    .push(r);
            }
        }
    }
    write_all(out, groups)
}

/// The parts of a score file's name
/// `<method>_<model>_<maxlen>_b<batch>[_<params>]_<dataset>_eval.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreFileName {
    /// `<method>[_<params>]`.
    pub method: String,
    pub model: String,
    pub max_len: String,
    pub batch: String,
    pub dataset: String,
}

/// Parses a score file's name. The dataset is the longest LongBench dataset name that ends
/// the stem (parameters contain `_` too: `..._c2048_w32_k7_maxpool_gov_report_eval.json`).
pub fn parse_score_file_name(name: &str) -> Option<ScoreFileName> {
    let stem = name.strip_suffix(".json")?.strip_suffix("_eval")?;
    let dataset = kvlens_tasks::formats::longbench::names()
        .map(String::from)
        .chain(kvlens_tasks::formats::longbench::e_names())
        .filter(|d| stem.ends_with(&format!("_{d}")))
        .max_by_key(|d| d.len())?;
    let rest = &stem[..stem.len() - dataset.len() - 1];
    let parts: Vec<&str> = rest.split('_').collect();
    let is_num = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let i = (2..parts.len().saturating_sub(1))
        .find(|&i| is_num(parts[i]) && parts[i + 1].strip_prefix('b').is_some_and(is_num))?;
    let mut method = parts[0].to_string();
    for p in &parts[i + 2..] {
        method.push('_');
        method.push_str(p);
    }
    Some(ScoreFileName {
        method,
        model: parts[1..i].join("_"),
        max_len: parts[i].to_string(),
        batch: parts[i + 1][1..].to_string(),
        dataset,
    })
}

/// Every `*_eval.json` under `dir` (recursively): a JSON array of `{"id", "score"}`.
pub fn score_files(dir: &Path, out: &Path) -> Result<Imported> {
    let run_id = dir
        .file_name()
        .map_or("imported".into(), |n| n.to_string_lossy().to_string());
    let mut groups: BTreeMap<(String, String), Vec<Record>> = BTreeMap::new();
    let files = walk(dir, &|n| n.ends_with("_eval.json"))?;
    if files.is_empty() {
        return Err(AnalyzeError::Invalid(format!(
            "no *_eval.json score files under {}",
            dir.display()
        )));
    }
    for file in files {
        let name = file
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().to_string());
        let Some(parsed) = parse_score_file_name(&name) else {
            return Err(AnalyzeError::File {
                path: file.clone(),
                msg: "the name is not <method>_<model>_<maxlen>_b<batch>[_<params>]_<dataset>_eval.json with a LongBench dataset".into(),
            });
        };
        let text = std::fs::read_to_string(&file).map_err(|e| AnalyzeError::io(&file, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| AnalyzeError::File {
            path: file.clone(),
            msg: format!("invalid JSON: {e}"),
        })?;
        let Value::Array(items) = v else {
            return Err(AnalyzeError::File {
                path: file.clone(),
                msg: "not a JSON array of {\"id\", \"score\"}".into(),
            });
        };
        for (i, item) in items.iter().enumerate() {
            let bad = |msg: String| AnalyzeError::File {
                path: file.clone(),
                msg: format!("item {i}: {msg}"),
            };
            let Value::Object(o) = item else {
                return Err(bad("not an object".into()));
            };
            let score = match o.get("score") {
                Some(Value::Number(n)) => n.as_f64(),
                Some(Value::Bool(b)) => Some(f64::from(*b as u8)),
                Some(Value::Null) | None => None,
                Some(_) => return Err(bad("field \"score\" is not a number".into())),
            };
            let mut meta = Map::new();
            meta.insert(
                ABSENT_KEY.into(),
                absent(&["output_text", "answers", "pass"]),
            );
            meta.insert("max_len".into(), json!(parsed.max_len));
            meta.insert("batch".into(), json!(parsed.batch));
            let mut r = record(
                &run_id,
                &parsed.model,
                &parsed.dataset,
                &id_of(o, i),
                &parsed.method,
                "",
                Vec::new(),
                Vec::new(),
                meta,
            )
            .map_err(bad)?;
            r.score = score;
            groups
                .entry((parsed.dataset.clone(), parsed.method.clone()))
                .or_default()
                .push(r);
        }
    }
    write_all(out, groups)
}
