//! RULER's prediction files (NVIDIA/RULER, `scripts/pred/call_api.py`): `pred/<task>.jsonl`
//! (or `<task>-<chunk>.jsonl`), one line per sample with `index`, `pred`, `input` (the prompt
//! with its answer prefix), `outputs` (the references), `others` (`id` among them), `truncation`
//! and `length` (the prompt's tokens, −1 when unknown). RULER's usual layout is
//! `<model>/synthetic/<length>/pred/`; every `pred` folder under the path is read, and when the
//! folder above it is a number (the length), tasks are named `<task>@<length>` so the lengths
//! stay apart.
//!
//! Scoring is RULER's `scripts/eval/evaluate.py`: the prediction stripped, control characters
//! (U+0000–U+001F) turned into newlines, stripped again; `qa_*` tasks by `string_match_part`,
//! the others by `string_match_all` (its `synthetic.yaml`). RULER reports ×100 means, as
//! `kvlens analyze` does.

use super::{absent, json_lines, name_of, read_dir_sorted, record, strings, write_all, Imported};
use crate::error::{AnalyzeError, Result};
use crate::load::ABSENT_KEY;
use kvlens_run::Record;
use kvlens_score::Metric;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// RULER's `postprocess_pred`.
pub fn postprocess(pred: &str) -> String {
    let t: String = pred
        .trim()
        .chars()
        .map(|c| if (c as u32) < 0x20 { '\n' } else { c })
        .collect();
    t.trim().to_string()
}

/// The metric RULER's `synthetic.yaml` gives a task (its base name, before `@length`).
pub fn metric_for(task: &str) -> Metric {
    if task.starts_with("qa") {
        Metric::StringMatchPart
    } else {
        Metric::StringMatchAll
    }
}

fn pred_folders(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if name_of(&d) == "pred" {
            out.push(d.clone());
        }
        for p in read_dir_sorted(&d)? {
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The task of `<task>.jsonl` or `<task>-<chunk>.jsonl`.
fn task_of(stem: &str) -> &str {
    match stem.rsplit_once('-') {
        Some((t, k)) if !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) => t,
        _ => stem,
    }
}

/// Imports every `pred` folder under `dir` (or `dir` itself when it holds the files) as
/// method `method`.
pub fn import(dir: &Path, out: &Path, method: &str, model: &str) -> Result<Imported> {
    let mut folders = pred_folders(dir)?;
    if folders.is_empty() {
        folders.push(dir.to_path_buf());
    }
    let run_id = name_of(dir);
    let mut groups: BTreeMap<(String, String), Vec<Record>> = BTreeMap::new();
    let mut seen: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
    let mut files = 0;
    for folder in folders {
        let length = folder
            .parent()
            .map(name_of)
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        for file in read_dir_sorted(&folder)? {
            if file.extension().is_none_or(|x| x != "jsonl") {
                continue;
            }
            files += 1;
            let stem = file
                .file_stem()
                .map_or(String::new(), |n| n.to_string_lossy().to_string());
            let base = task_of(&stem).to_string();
            let task = match &length {
                Some(l) => format!("{base}@{l}"),
                None => base.clone(),
            };
            let metric = metric_for(&base);
            for (line, o) in json_lines(&file)? {
                let bad = |msg: String| AnalyzeError::Line {
                    path: file.clone(),
                    line,
                    msg,
                };
                let pred = match o.get("pred") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) => String::new(),
                    Some(_) => return Err(bad("field \"pred\" is not a string".into())),
                    None => return Err(bad("field \"pred\" is missing".into())),
                };
                let refs = match o.get("outputs").or_else(|| o.get("output")) {
                    Some(v @ (Value::Array(_) | Value::String(_))) => strings(Some(v)),
                    Some(_) => {
                        return Err(bad("field \"outputs\" is not a list of strings".into()))
                    }
                    None => return Err(bad("field \"outputs\" is missing".into())),
                };
                let index = match o.get("index") {
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::String(s)) => s.clone(),
                    _ => return Err(bad("field \"index\" is missing or not a number".into())),
                };
                let id = match o.get("others").and_then(|x| x.get("id")) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => index.clone(),
                };
                if let Some(first) = seen.insert((task.clone(), id.clone()), file.clone()) {
                    return Err(bad(format!(
                        "sample {id} of task {task} is also in {}",
                        first.display()
                    )));
                }
                let mut meta = Map::new();
                let length_tokens = o.get("length").and_then(Value::as_i64).filter(|&l| l >= 0);
                for k in ["truncation", "length"] {
                    if let Some(v) = o.get(k) {
                        meta.insert(k.into(), v.clone());
                    }
                }
                if let Some(l) = &length {
                    meta.insert(
                        "context_length".into(),
                        json!(l.parse::<u64>().unwrap_or(0)),
                    );
                }
                meta.insert("ruler_index".into(), json!(index));
                let mut abs = absent(&[]);
                if let (Value::Array(a), Some(_)) = (&mut abs, length_tokens) {
                    a.retain(|x| x != "prompt_tokens");
                }
                meta.insert(ABSENT_KEY.into(), abs);
                let mut r = record(
                    &run_id,
                    model,
                    &task,
                    &id,
                    method,
                    &postprocess(&pred),
                    refs,
                    Vec::new(),
                    meta,
                )
                .map_err(bad)?;
                if let Some(l) = length_tokens {
                    r.prompt_tokens = l as usize;
                }
                if let Some(Value::String(input)) = o.get("input") {
                    r.prompt_hash = kvlens_run::runner::prompt_hash(input);
                }
                r.rescore(Some(metric), None);
                groups
                    .entry((task.clone(), method.to_string()))
                    .or_default()
                    .push(r);
            }
        }
    }
    if files == 0 {
        return Err(AnalyzeError::Invalid(format!(
            "no RULER prediction files (pred/<task>.jsonl) under {}",
            dir.display()
        )));
    }
    write_all(out, groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_and_metric_choice() {
        assert_eq!(postprocess("  a\u{1}b\u{0}\n "), "a\nb");
        assert_eq!(metric_for("qa_1"), Metric::StringMatchPart);
        assert_eq!(metric_for("niah_single_1"), Metric::StringMatchAll);
        assert_eq!(task_of("vt-3"), "vt");
        assert_eq!(task_of("niah_single_1"), "niah_single_1");
    }
}
