//! The negative-sample benchmark of the MLSys 2025 study ("Rethinking Key-Value Cache
//! Compression Techniques for Large Language Model Serving", its `negative_samples` tool):
//! the samples a full cache answers well and compressed caches break, written out as a task
//! set that `kvlens run --tasks DIR` runs again on any model and method, so that a new method
//! is judged on them.
//!
//! Per task, `DIR/<task>.toml` (the task's own spec: template, metric, limits) and
//! `DIR/<task>.jsonl` (the selected samples with their original fields, answers, classes and
//! meta, the baseline's output and score added to `meta` as `baseline_output` and
//! `baseline_score`), and `DIR/manifest.json`: the source run, rule, δ, methods, model,
//! per task the selected sample ids, and per task of the run the baseline's bar and how many
//! of its samples reached it (`baseline_bars`: the denominator of the study's fail ratio).

use crate::analysis::{analyze, resolve_method, Options, Rule};
use crate::error::{AnalyzeError, Result};
use crate::load::{load_records, load_runs};
use kvlens_run::runner::file_safe;
use kvlens_tasks::DataDirs;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// What an export selected and wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    /// Task → the selected sample ids, in the task's sample order.
    pub ids: BTreeMap<String, Vec<String>>,
    /// Tasks whose samples could not be found (their ids are in the manifest only).
    pub without_samples: Vec<String>,
}

fn io(path: &Path, e: std::io::Error) -> AnalyzeError {
    AnalyzeError::Invalid(format!("{}: {e}", path.display()))
}

/// Selects the negatives of the run at `run` as `analyze` flags them under `opts` (its
/// baseline, rule and δ): with `joint` (`A+B`), the samples negative for every method of the
/// set and no other; else those negative for any method. Writes the task set into `out`.
pub fn export_negatives(
    run: &Path,
    out: &Path,
    opts: &Options,
    joint: Option<&str>,
    dirs: &DataDirs,
) -> Result<Exported> {
    let samples = load_runs(&[run.to_path_buf()])?;
    let a = analyze(&samples, opts)?;
    let methods: Vec<String> = match joint {
        Some(set) => set
            .split('+')
            .map(|m| resolve_method(m.trim(), &a.methods))
            .collect::<Result<_>>()?,
        None => a.methods.clone(),
    };
    // (task, sample) → the methods it is negative for.
    let mut neg: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for f in a.flags.iter().filter(|f| f.negative) {
        neg.entry((f.task.clone(), f.sample_id.clone()))
            .or_default()
            .insert(f.method.clone());
    }
    let chosen: BTreeSet<(String, String)> = neg
        .into_iter()
        .filter(|(_, ms)| match joint {
            Some(_) => methods.iter().all(|m| ms.contains(m)),
            None => !ms.is_empty(),
        })
        .map(|(k, _)| k)
        .collect();

    // The baseline's records: its output and score go with each sample.
    let records = load_records(&[run.to_path_buf()])?;
    let base: HashMap<(&str, &str), &kvlens_run::Record> = records
        .iter()
        .filter(|r| r.method == a.baseline)
        .map(|r| ((r.task.as_str(), r.sample_id.as_str()), r))
        .collect();
    let model = records
        .iter()
        .find(|r| r.method == a.baseline)
        .map(|r| r.model.clone())
        .unwrap_or_default();

    // The original samples, from the tasks the run was made with (run.toml).
    let mut tasks: HashMap<String, kvlens_tasks::Task> = HashMap::new();
    let run_toml = run.join("run.toml");
    if run_toml.is_file() {
        let cfg = kvlens_run::RunConfig::from_file(&run_toml)
            .map_err(|e| AnalyzeError::Invalid(e.to_string()))?;
        for t in &cfg.tasks {
            match kvlens_tasks::registry::load(t, dirs) {
                Ok(task) => {
                    tasks.insert(task.spec.name.clone(), task);
                }
                Err(e) => eprintln!("kvlens: task `{t}` of {}: {e}", run_toml.display()),
            }
        }
    }

    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let mut by_task: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (t, id) in &chosen {
        by_task.entry(t.clone()).or_default().push(id.clone());
    }
    let mut ids = BTreeMap::new();
    let mut without = Vec::new();
    let mut manifest_tasks = Map::new();
    for (task, mut chosen_ids) in by_task {
        let bscores: Vec<f64> = chosen_ids
            .iter()
            .filter_map(|id| base.get(&(task.as_str(), id.as_str())))
            .filter_map(|r| r.score)
            .collect();
        match tasks.get(&task) {
            Some(t) => {
                // In the task's own sample order.
                let order: HashMap<&str, usize> = t
                    .samples
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.id.as_str(), i))
                    .collect();
                chosen_ids.sort_by_key(|id| order.get(id.as_str()).copied().unwrap_or(usize::MAX));
                let stem = file_safe(&task);
                let mut lines = String::new();
                for id in &chosen_ids {
                    let Some(&i) = order.get(id.as_str()) else {
                        return Err(AnalyzeError::Invalid(format!(
                            "task {task}: the records' sample `{id}` is not in {} (the data \
                             changed since the run?)",
                            t.origin.display()
                        )));
                    };
                    let s = &t.samples[i];
                    let mut o = Map::new();
                    for (k, v) in &s.fields {
                        if !matches!(
                            k.as_str(),
                            "id" | "_id" | "answers" | "all_classes" | "meta"
                        ) {
                            o.insert(k.clone(), v.clone());
                        }
                    }
                    o.insert("id".into(), Value::from(s.id.clone()));
                    o.insert("answers".into(), json!(s.answers));
                    if !s.all_classes.is_empty() {
                        o.insert("all_classes".into(), json!(s.all_classes));
                    }
                    let mut meta = s.meta.clone();
                    if let Some(r) = base.get(&(task.as_str(), id.as_str())) {
                        meta.insert("baseline_output".into(), Value::from(r.output_text.clone()));
                        meta.insert("baseline_score".into(), json!(r.score));
                        meta.insert("baseline_method".into(), Value::from(a.baseline.clone()));
                    }
                    o.insert("meta".into(), Value::Object(meta));
                    lines.push_str(&Value::Object(o).to_string());
                    lines.push('\n');
                }
                let data = out.join(format!("{stem}.jsonl"));
                std::fs::write(&data, lines).map_err(|e| io(&data, e))?;
                let spec = &t.spec;
                let mut toml = toml::Table::new();
                toml.insert("name".into(), spec.name.clone().into());
                toml.insert(
                    "description".into(),
                    format!(
                        "negatives of {} ({}; {})",
                        spec.name,
                        run.display(),
                        spec.description
                    )
                    .into(),
                );
                toml.insert("data".into(), format!("{stem}.jsonl").into());
                toml.insert("template".into(), spec.template.clone().into());
                toml.insert(
                    "max_new_tokens".into(),
                    toml::Value::Integer(spec.max_new_tokens as i64),
                );
                toml.insert("metric".into(), spec.metric.name().into());
                toml.insert("chat".into(), spec.chat.into());
                toml.insert("first_line".into(), spec.first_line.into());
                toml.insert(
                    "stop".into(),
                    toml::Value::Array(spec.stop.iter().map(|s| s.clone().into()).collect()),
                );
                let trunc = serde_json::to_value(spec.truncation)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_else(|| "middle".into());
                toml.insert("truncation".into(), trunc.into());
                let spec_path = out.join(format!("{stem}.toml"));
                let text = toml::to_string(&toml)
                    .map_err(|e| AnalyzeError::Invalid(format!("writing {stem}.toml: {e}")))?;
                std::fs::write(&spec_path, text).map_err(|e| io(&spec_path, e))?;
            }
            None => without.push(task.clone()),
        }
        manifest_tasks.insert(
            task.clone(),
            json!({
                "ids": chosen_ids,
                "baseline_mean_score": crate::stats::mean(&bscores),
                "samples_written": tasks.contains_key(&task),
            }),
        );
        ids.insert(task, chosen_ids);
    }
    let rule = match opts.rule {
        Rule::Default => "default",
        Rule::Paper => "paper",
        Rule::PaperMean => "paper-mean",
    };
    // Per task of the run, the bar a baseline sample had to reach and how many reached it:
    // the denominator of the study's fail ratio, for `kvlens negatives report`.
    let mut base_scores: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.method == a.baseline && r.error.is_none())
    {
        if let Some(sc) = r.score {
            base_scores.entry(r.task.as_str()).or_default().push(sc);
        }
    }
    let mut eligible = Map::new();
    for (task, scores) in &base_scores {
        let bar = if opts.rule == Rule::PaperMean {
            crate::stats::mean(scores)
        } else {
            crate::stats::median(scores)
        };
        let Some(bar) = bar else { continue };
        let n = scores
            .iter()
            .filter(|&&b| b >= bar && (opts.rule != Rule::Default || b > 0.0))
            .count();
        eligible.insert(
            task.to_string(),
            json!({"bar": bar, "eligible": n, "samples": scores.len()}),
        );
    }
    let manifest = json!({
        "source_run": run.display().to_string(),
        "rule": rule,
        "delta": opts.delta,
        "baseline": a.baseline,
        "methods": methods,
        "joint": joint.is_some(),
        "model": model,
        "tasks": manifest_tasks,
        "baseline_bars": eligible,
    });
    let path = out.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| AnalyzeError::Invalid(e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    Ok(Exported {
        ids,
        without_samples: without,
    })
}
