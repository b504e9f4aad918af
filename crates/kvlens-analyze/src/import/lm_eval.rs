//! lm-evaluation-harness sample logs (EleutherAI/lm-evaluation-harness, written by
//! `lm_eval/loggers/evaluation_tracker.py` with `--output_path DIR --log_samples`):
//! `DIR/<model_name_sanitized>/samples_<task>_<date>.jsonl` beside `results_<date>.json`.
//! A samples line holds `doc_id`, `doc`, `target`, `arguments`, `resps`, `filtered_resps`,
//! `filter`, `metrics` (the metric names) and each metric's value as a top-level key, with
//! `doc_hash`, `prompt_hash` and `target_hash` (SHA-256 hex of the document's JSON, the prompt
//! and the target). One line per document and filter.
//!
//! Each folder that holds samples files is one method, named by its path under the imported
//! folder (the model's sanitized name, for lm-eval's own layout; a folder that
//! `kvlens export lm-eval` wrote names it exactly in `config.model_args.kvlens_method`). Of
//! several files of one task in a folder, the latest date is read (as lm-eval's
//! `get_latest_filename` does) and the others are noted. A task logged under several filters becomes one kvlens task per filter,
//! `<task>@<filter>`. The score is the first metric's value (the others go to
//! `meta.lm_eval_metrics`); lm-eval's metrics are not kvlens's, so records carry no metric
//! and no pass rule. The results file's mean for that metric is checked against the mean of
//! the imported scores and any difference noted.

use super::{absent, name_of, record, walk, write_all, Imported};
use crate::error::{AnalyzeError, Result};
use crate::load::ABSENT_KEY;
use kvlens_run::Record;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `samples_<task>_<date>.jsonl` → (task, date), as lm-eval's `get_file_task_name` and
/// `get_file_datetime` split it (the date has no `_`).
pub fn split_samples_name(name: &str) -> Option<(String, String)> {
    let stem = name.strip_prefix("samples_")?.strip_suffix(".jsonl")?;
    let (task, date) = stem.rsplit_once('_')?;
    (!task.is_empty() && !date.is_empty()).then(|| (task.to_string(), date.to_string()))
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// The text a line's model produced: the filtered response when it is text (generation
/// tasks), else the first raw response, else the filtered value as JSON.
fn output_of(o: &Map<String, Value>) -> String {
    let first = |v: Option<&Value>| -> Option<Value> {
        match v? {
            Value::Array(a) => a.first().cloned(),
            other => Some(other.clone()),
        }
    };
    if let Some(Value::String(s)) = first(o.get("filtered_resps")) {
        return s;
    }
    if let Some(Value::Array(inner)) = first(o.get("resps")) {
        if let Some(Value::String(s)) = inner.first() {
            return s.clone();
        }
    }
    o.get("filtered_resps")
        .map_or(String::new(), Value::to_string)
}

struct Line {
    doc_id: String,
    filter: String,
    record: Record,
}

/// Imports every lm-eval output folder under `dir`.
pub fn import(dir: &Path, out: &Path) -> Result<Imported> {
    let files = walk(dir, &|n| split_samples_name(n).is_some())?;
    if files.is_empty() {
        return Err(AnalyzeError::Invalid(format!(
            "no lm-eval samples_<task>_<date>.jsonl files under {}",
            dir.display()
        )));
    }
    // Folder → task → the latest (date, file); the older ones noted.
    let mut latest: BTreeMap<PathBuf, BTreeMap<String, (String, PathBuf)>> = BTreeMap::new();
    let mut notes = Vec::new();
    for f in files {
        let Some((task, date)) = split_samples_name(&name_of(&f)) else {
            continue;
        };
        let folder = f.parent().map_or(dir.to_path_buf(), Path::to_path_buf);
        let slot = latest.entry(folder).or_default();
        match slot.get(&task) {
            Some((d, _)) if d >= &date => {
                notes.push(format!("{}: an older log of {task}, not read", f.display()));
            }
            Some((_, old)) => {
                notes.push(format!(
                    "{}: an older log of {task}, not read",
                    old.display()
                ));
                slot.insert(task, (date, f));
            }
            None => {
                slot.insert(task, (date, f));
            }
        }
    }
    let run_id = name_of(dir);
    let mut groups: BTreeMap<(String, String), Vec<Record>> = BTreeMap::new();
    for (folder, tasks) in latest {
        let method = match folder.strip_prefix(dir) {
            Ok(rel) if !rel.as_os_str().is_empty() => rel.to_string_lossy().replace('\\', "/"),
            _ => run_id.clone(),
        };
        for (task, (date, file)) in tasks {
            let results = read_results(&folder, &date)?;
            // A folder kvlens exported names its method exactly.
            let method = results
                .as_ref()
                .and_then(|r| r.get("config"))
                .and_then(|c| c.get("model_args"))
                .and_then(|a| a.get("kvlens_method"))
                .and_then(Value::as_str)
                .map_or(method.clone(), String::from);
            let model = results
                .as_ref()
                .and_then(|r| r.get("model_name"))
                .and_then(Value::as_str)
                .unwrap_or(&method)
                .to_string();
            let mut lines = Vec::new();
            for (line, o) in super::json_lines(&file)? {
                let bad = |msg: String| AnalyzeError::Line {
                    path: file.clone(),
                    line,
                    msg,
                };
                let doc_id = match o.get("doc_id") {
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::String(s)) => s.clone(),
                    _ => return Err(bad("field \"doc_id\" is missing or not a number".into())),
                };
                let filter = o
                    .get("filter")
                    .and_then(Value::as_str)
                    .unwrap_or("none")
                    .to_string();
                let names: Vec<String> = match o.get("metrics") {
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect(),
                    Some(_) => return Err(bad("field \"metrics\" is not a list of names".into())),
                    None => return Err(bad("field \"metrics\" is missing".into())),
                };
                let mut values = Map::new();
                for n in &names {
                    match o.get(n) {
                        Some(v) => {
                            values.insert(n.clone(), v.clone());
                        }
                        None => return Err(bad(format!("metric field \"{n}\" is missing"))),
                    }
                }
                let score = names.first().and_then(|n| o.get(n)).and_then(number);
                let target = match o.get("target") {
                    Some(Value::String(s)) => vec![s.clone()],
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|x| x.as_str().map_or(x.to_string(), String::from))
                        .collect(),
                    Some(other) => vec![other.to_string()],
                    None => Vec::new(),
                };
                let mut meta = Map::new();
                meta.insert("lm_eval_metrics".into(), Value::Object(values));
                meta.insert("lm_eval_filter".into(), json!(filter));
                for k in ["doc_hash", "prompt_hash", "target_hash", "filtered_resps"] {
                    if let Some(v) = o.get(k) {
                        meta.insert(format!("lm_eval_{k}"), v.clone());
                    }
                }
                let mut extra = vec!["pass"];
                if score.is_none() {
                    extra.push("score");
                }
                meta.insert(ABSENT_KEY.into(), absent(&extra));
                let mut r = record(
                    &run_id,
                    &model,
                    &task,
                    &doc_id,
                    &method,
                    &output_of(&o),
                    target,
                    Vec::new(),
                    meta,
                )
                .map_err(bad)?;
                r.score = score;
                // lm-eval's prompt hash is the SHA-256 of the prompt, as kvlens's is; kvlens
                // keeps its first 16 hex digits.
                if let Some(h) = o.get("prompt_hash").and_then(Value::as_str) {
                    if h.len() >= 16 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
                        r.prompt_hash = h[..16].to_string();
                    }
                }
                lines.push(Line {
                    doc_id,
                    filter,
                    record: r,
                });
            }
            let filters: std::collections::BTreeSet<String> =
                lines.iter().map(|l| l.filter.clone()).collect();
            let mut seen = std::collections::HashSet::new();
            for l in lines {
                let name = if filters.len() > 1 {
                    format!("{task}@{}", l.filter)
                } else {
                    task.clone()
                };
                if !seen.insert((name.clone(), l.doc_id.clone())) {
                    return Err(AnalyzeError::File {
                        path: file.clone(),
                        msg: format!(
                            "doc_id {} appears twice under filter {}",
                            l.doc_id, l.filter
                        ),
                    });
                }
                let mut r = l.record;
                r.task = name.clone();
                groups.entry((name, method.clone())).or_default().push(r);
            }
            if let Some(res) = &results {
                notes.extend(check_means(res, &task, &filters, &groups, &method));
            }
        }
    }
    let mut done = write_all(out, groups)?;
    notes.append(&mut done.notes);
    done.notes = notes;
    Ok(done)
}

fn read_results(folder: &Path, date: &str) -> Result<Option<Map<String, Value>>> {
    let path = folder.join(format!("results_{date}.json"));
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| AnalyzeError::io(&path, e))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(o)) => Ok(Some(o)),
        Ok(_) => Err(AnalyzeError::File {
            path,
            msg: "not a JSON object".into(),
        }),
        Err(e) => Err(AnalyzeError::File {
            path,
            msg: format!("invalid JSON: {e}"),
        }),
    }
}

/// The results file's `"<metric>,<filter>"` against the mean of the imported scores.
fn check_means(
    res: &Map<String, Value>,
    task: &str,
    filters: &std::collections::BTreeSet<String>,
    groups: &BTreeMap<(String, String), Vec<Record>>,
    method: &str,
) -> Vec<String> {
    let mut notes = Vec::new();
    let Some(Value::Object(t)) = res.get("results").and_then(|r| r.get(task)) else {
        return notes;
    };
    for f in filters {
        let name = if filters.len() > 1 {
            format!("{task}@{f}")
        } else {
            task.to_string()
        };
        let Some(records) = groups.get(&(name.clone(), method.to_string())) else {
            continue;
        };
        let Some(metric) = records
            .first()
            .and_then(|r| r.meta.get("lm_eval_metrics"))
            .and_then(Value::as_object)
            .and_then(|m| m.keys().next().cloned())
        else {
            continue;
        };
        let Some(theirs) = t.get(&format!("{metric},{f}")).and_then(Value::as_f64) else {
            continue;
        };
        let scores: Vec<f64> = records.iter().filter_map(|r| r.score).collect();
        if scores.is_empty() {
            continue;
        }
        let ours = scores.iter().sum::<f64>() / scores.len() as f64;
        if (ours - theirs).abs() > 1e-9 * theirs.abs().max(1.0) {
            notes.push(format!(
                "{method} {name}: results file {metric},{f} = {theirs}, the mean of the {} \
                 imported scores = {ours}",
                scores.len()
            ));
        } else {
            notes.push(format!(
                "{method} {name}: {metric},{f} = {theirs} matches the samples"
            ));
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(
            split_samples_name("samples_gsm8k_2025-01-07T14-03-22.512345.jsonl"),
            Some(("gsm8k".into(), "2025-01-07T14-03-22.512345".into()))
        );
        assert_eq!(
            split_samples_name("samples_longbench_hotpotqa_2025-01-07T14-03-22.jsonl"),
            Some(("longbench_hotpotqa".into(), "2025-01-07T14-03-22".into()))
        );
        assert_eq!(split_samples_name("results_2025.json"), None);
    }
}
