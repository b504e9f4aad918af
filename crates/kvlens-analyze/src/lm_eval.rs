//! A kvlens run in lm-evaluation-harness's output shape (EleutherAI/lm-evaluation-harness,
//! `lm_eval/loggers/evaluation_tracker.py` and `lm_eval/evaluator_utils.py`), so that its
//! tooling (`make_table`, the Zeno and W&B loggers, leaderboard scripts) reads kvlens results:
//! per method a folder `DIR/<method>/` with `results_<date>.json` and one
//! `samples_<task>_<date>.jsonl` per task, the date as lm-eval writes it (local time,
//! ISO 8601 with `:` turned into `-`).
//!
//! - `results[task]` holds `"<metric>,none"` (the mean of the per-sample scores, on lm-eval's
//!   0–1 scale) and `"<metric>_stderr,none"` (lm-eval's `mean_stderr`: the sample standard
//!   deviation with n − 1, over √n; `"N/A"` for one sample), with `alias`; beside it
//!   `group_subtasks`, `configs` (`output_type: generate_until`, the metric with `mean`
//!   aggregation), `versions` (empty: kvlens tasks have none), `n-shot` (0), `higher_is_better`,
//!   `n-samples` (`original`: records, `effective`: those scored), `config` (`model: kvlens`;
//!   `model_args` with `pretrained` and `kvlens_method`, which `kvlens import lm-eval` reads
//!   back as the method's name), `model_name`, `model_name_sanitized` and `date`.
//! - A samples line holds `doc_id` (the sample's place in the task), `doc` (the sample id,
//!   answers, classes and meta), `target` (the one answer, or the answers as a Python list),
//!   `arguments` (the generation limit; kvlens records keep no prompt text, so no `arg_0`),
//!   `resps`, `filtered_resps` (the text scored: the first line where the task says so),
//!   `filter: none`, `metrics`, the metric's value, the hashes (`prompt_hash` is kvlens's own
//!   16-digit prompt hash) and a `kvlens` object with the record's tokens, times and bytes.
//!   Failed samples and samples without a score are left out of the samples and the means,
//!   and counted in `n-samples`.

use crate::error::{AnalyzeError, Result};
use crate::import::pyrepr;
use crate::load::load_records;
use kvlens_run::runner::file_safe;
use kvlens_run::Record;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// lm-eval's `sanitize_model_name`: runs of `"<>:/|\?*[]` become `__`.
pub fn sanitize_model_name(name: &str) -> String {
    let mut out = String::new();
    let mut in_run = false;
    for c in name.chars() {
        if "\"<>:/|\\?*[]".contains(c) {
            if !in_run {
                out.push_str("__");
            }
            in_run = true;
        } else {
            out.push(c);
            in_run = false;
        }
    }
    out
}

/// lm-eval's `mean_stderr` (`lm_eval/api/metrics.py`): `stdev(ddof=1) / sqrt(n)`.
pub fn mean_stderr(v: &[f64]) -> Option<f64> {
    if v.len() < 2 {
        return None;
    }
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    Some(var.sqrt() / n.sqrt())
}

fn metric_name(r: &Record) -> String {
    r.metric
        .map_or("score".to_string(), |m| m.name().to_string())
}

fn sample_line(doc_id: usize, r: &Record) -> Value {
    let mut doc = Map::new();
    doc.insert("sample_id".into(), json!(r.sample_id));
    doc.insert("answers".into(), json!(r.answers));
    if !r.all_classes.is_empty() {
        doc.insert("all_classes".into(), json!(r.all_classes));
    }
    if !r.meta.is_empty() {
        doc.insert("meta".into(), Value::Object(r.meta.clone()));
    }
    let doc = Value::Object(doc);
    let target = match r.answers.as_slice() {
        [one] => one.clone(),
        many => pyrepr::list_repr(many),
    };
    let scored = if r.first_line {
        kvlens_score::first_line(&r.output_text).to_string()
    } else {
        r.output_text.clone()
    };
    let name = metric_name(r);
    let doc_json = serde_json::to_string_pretty(&doc).unwrap_or_default();
    let mut line = Map::new();
    line.insert("doc_id".into(), json!(doc_id));
    line.insert("doc".into(), doc);
    line.insert("target".into(), json!(target));
    line.insert(
        "arguments".into(),
        json!({"gen_args_0": {"arg_1": {"max_gen_toks": r.max_new_tokens, "until": [], "do_sample": false}}}),
    );
    line.insert("resps".into(), json!([[r.output_text]]));
    line.insert("filtered_resps".into(), json!([scored]));
    line.insert("filter".into(), json!("none"));
    line.insert("metrics".into(), json!([name]));
    line.insert("doc_hash".into(), json!(sha256(&doc_json)));
    line.insert("prompt_hash".into(), json!(r.prompt_hash));
    line.insert("target_hash".into(), json!(sha256(&target)));
    line.insert(name, json!(r.score));
    line.insert(
        "kvlens".into(),
        json!({
            "method": r.method, "prompt_tokens": r.prompt_tokens,
            "output_tokens": r.output_tokens, "finish_reason": r.finish_reason,
            "ttft_ms": r.ttft_ms, "e2e_ms": r.e2e_ms, "kv_bytes_peak": r.kv_bytes_peak,
            "kv_bytes_full": r.kv_bytes_full, "pass": r.pass,
        }),
    );
    Value::Object(line)
}

/// What [`export`] wrote.
#[derive(Debug, Default)]
pub struct Written {
    pub files: Vec<PathBuf>,
    pub samples: usize,
    /// Records left out (failed or unscored).
    pub skipped: usize,
}

/// Writes the run at `run` (a folder or record files) into `out` in lm-eval's shape, one
/// folder per method; `date_id` names the files (lm-eval's `date_id`).
pub fn export(runs: &[PathBuf], out: &Path, date_id: &str, unix_s: f64) -> Result<Written> {
    let records = load_records(runs)?;
    if records.is_empty() {
        return Err(AnalyzeError::Invalid("the run holds no records".into()));
    }
    // method → task → records in sample order.
    let mut by: BTreeMap<String, BTreeMap<String, Vec<Record>>> = BTreeMap::new();
    for r in records {
        by.entry(r.method.clone())
            .or_default()
            .entry(r.task.clone())
            .or_default()
            .push(r);
    }
    let mut w = Written::default();
    let mut folders: BTreeMap<String, String> = BTreeMap::new();
    for (method, tasks) in by {
        let folder_name = file_safe(&method);
        if let Some(other) = folders.insert(folder_name.clone(), method.clone()) {
            return Err(AnalyzeError::Invalid(format!(
                "methods `{other}` and `{method}` would share the folder {folder_name}"
            )));
        }
        let dir = out.join(&folder_name);
        std::fs::create_dir_all(&dir).map_err(|e| AnalyzeError::io(&dir, e))?;
        let model = tasks
            .values()
            .flatten()
            .next()
            .map_or(String::new(), |r| r.model.clone());
        let mut results = Map::new();
        let mut configs = Map::new();
        let mut subtasks = Map::new();
        let mut n_shot = Map::new();
        let mut hib = Map::new();
        let mut n_samples = Map::new();
        for (task, mut rs) in tasks {
            rs.sort_by(|a, b| natural(&a.sample_id, &b.sample_id));
            let name = rs.first().map_or("score".into(), metric_name);
            let mut text = String::new();
            let mut scores = Vec::new();
            for (i, r) in rs.iter().enumerate() {
                let Some(s) = r.score.filter(|_| r.error.is_none()) else {
                    w.skipped += 1;
                    continue;
                };
                scores.push(s);
                let line = serde_json::to_string(&sample_line(i, r))
                    .map_err(|e| AnalyzeError::Invalid(format!("{task} {}: {e}", r.sample_id)))?;
                text.push_str(&line);
                text.push('\n');
            }
            w.samples += scores.len();
            let path = dir.join(format!("samples_{task}_{date_id}.jsonl"));
            kvlens_run::store::write_text_atomic(&path, &text)?;
            w.files.push(path);
            let mean =
                (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64);
            let stderr = mean_stderr(&scores).map_or(json!("N/A"), |x| json!(x));
            results.insert(
                task.clone(),
                json!({"alias": task, format!("{name},none"): mean, format!("{name}_stderr,none"): stderr}),
            );
            configs.insert(
                task.clone(),
                json!({"task": task, "output_type": "generate_until", "num_fewshot": 0,
                       "metric_list": [{"metric": name, "aggregation": "mean", "higher_is_better": true}]}),
            );
            subtasks.insert(task.clone(), json!([]));
            n_shot.insert(task.clone(), json!(0));
            hib.insert(task.clone(), json!({ name.clone(): true }));
            n_samples.insert(
                task.clone(),
                json!({"original": rs.len(), "effective": scores.len()}),
            );
        }
        let doc = json!({
            "results": results, "group_subtasks": subtasks, "configs": configs,
            "versions": {}, "n-shot": n_shot, "higher_is_better": hib, "n-samples": n_samples,
            "config": {"model": "kvlens",
                       "model_args": {"pretrained": model, "kvlens_method": method},
                       "batch_size": 1, "batch_sizes": [], "limit": null, "bootstrap_iters": 0},
            "date": unix_s, "model_name": model,
            "model_name_sanitized": sanitize_model_name(&model),
            "kvlens_version": env!("CARGO_PKG_VERSION"),
        });
        let path = dir.join(format!("results_{date_id}.json"));
        let text =
            serde_json::to_string_pretty(&doc).map_err(|e| AnalyzeError::Invalid(e.to_string()))?;
        kvlens_run::store::write_text_atomic(&path, &text)?;
        w.files.push(path);
    }
    Ok(w)
}

/// Sample ids in numeric order when both are numbers, else as text.
fn natural(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lm_eval_helpers() {
        assert_eq!(
            sanitize_model_name("EleutherAI/pythia-14m"),
            "EleutherAI__pythia-14m"
        );
        assert_eq!(sanitize_model_name("a:/b"), "a__b");
        assert_eq!(mean_stderr(&[1.0]), None);
        // stdev([0, 1], ddof=1) = 0.7071…, over √2.
        assert!((mean_stderr(&[0.0, 1.0]).unwrap() - 0.5).abs() < 1e-12);
    }
}
