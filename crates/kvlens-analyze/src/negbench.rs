//! A run on an exported negative-sample benchmark ([`crate::export`]), analyzed against the
//! baseline scores stored in it: no new baseline run is needed, and the method may run on
//! another model or engine. As the MLSys 2025 study's evaluation script reports it
//! (`3_neg_samples/0_neg_extract_score_task.py` of LLMkvsys/rethink-kv-compression), per task
//! and per task group: the baseline's and the method's mean score on the negatives (a group's
//! mean is the mean of its tasks' means), and the fail ratio, the samples still negative under
//! the benchmark's rule and δ over the samples whose baseline score reached the task's bar.

use crate::analysis::{is_negative, Rule};
use crate::error::{AnalyzeError, Result};
use crate::load::load_records;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The task group of a task, by its name: LongBench's and kvlens's own tasks.
pub fn task_group(task: &str) -> &'static str {
    let t = task.to_ascii_lowercase();
    let base = t.strip_suffix("_e").unwrap_or(&t);
    match base {
        "hotpotqa" | "2wikimqa" | "musique" | "narrativeqa" | "qasper" | "multifieldqa_en"
        | "multifieldqa_zh" | "dureader" | "triviaqa" | "doc_qa" | "squad" => "QA",
        "gov_report" | "qmsum" | "multi_news" | "vcsum" | "samsum" => "summarization",
        "lcc" | "repobench-p" => "code",
        "passage_retrieval_en" | "passage_retrieval_zh" | "passkey" | "kv_retrieval" => "retrieval",
        "trec" | "lsht" => "classification",
        "passage_count" | "vt" | "cwe" | "fwe" | "arith" => "synthetic",
        _ if base.starts_with("niah") => "retrieval",
        _ => "other",
    }
}

/// One row of the report: a task or a group, under one method.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NegRow {
    /// `task` or `group`.
    pub level: String,
    pub name: String,
    pub method: String,
    /// Negatives of the benchmark this method answered.
    pub samples: usize,
    /// Means on kvlens's scale (100 × the mean score).
    pub baseline_score: f64,
    pub score: f64,
    /// Of them, still negative under the benchmark's rule and δ.
    pub still_negative: usize,
    /// Baseline samples at or above the bar in the source run (absent in old manifests).
    pub eligible: Option<usize>,
    /// `still_negative / eligible`.
    pub fail_ratio: Option<f64>,
}

fn bad(path: &Path, msg: impl Into<String>) -> AnalyzeError {
    AnalyzeError::Invalid(format!("{}: {}", path.display(), msg.into()))
}

/// The report of the runs `runs` on the benchmark folder `bench` (its `manifest.json`).
pub fn report(runs: &[PathBuf], bench: &Path) -> Result<Vec<NegRow>> {
    let mpath = bench.join("manifest.json");
    let text = std::fs::read_to_string(&mpath).map_err(|e| bad(&mpath, e.to_string()))?;
    let manifest: Value =
        serde_json::from_str(&text).map_err(|e| bad(&mpath, format!("not JSON: {e}")))?;
    let rule = match manifest["rule"].as_str() {
        Some("paper") => Rule::Paper,
        Some("paper-mean") => Rule::PaperMean,
        Some("default") | None => Rule::Default,
        Some(other) => {
            return Err(bad(
                &mpath,
                format!("rule `{other}` is not one kvlens wrote"),
            ))
        }
    };
    let delta = manifest["delta"]
        .as_f64()
        .ok_or_else(|| bad(&mpath, "field `delta` is missing or not a number"))?;
    let tasks = manifest["tasks"]
        .as_object()
        .ok_or_else(|| bad(&mpath, "field `tasks` is missing or not an object"))?;
    let bars = manifest["baseline_bars"].as_object();
    let bar_of = |task: &str| {
        bars.and_then(|b| b.get(task))
            .and_then(|v| v["bar"].as_f64())
    };
    let eligible_of = |task: &str| {
        bars.and_then(|b| b.get(task))
            .and_then(|v| v["eligible"].as_u64())
            .map(|n| n as usize)
    };
    let records = load_records(runs)?;
    // (task, method) → (b, m) per negative answered.
    let mut acc: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.error.is_none()) {
        let Some(t) = tasks.get(&r.task) else {
            continue;
        };
        let listed = t["ids"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|i| i.as_str() == Some(&r.sample_id)));
        if !listed {
            continue;
        }
        let Some(b) = r.meta.get("baseline_score").and_then(Value::as_f64) else {
            return Err(AnalyzeError::Invalid(format!(
                "task {} sample {} ({}): the record's meta has no `baseline_score`: was this run made on the benchmark's task files?",
                r.task, r.sample_id, r.method
            )));
        };
        let Some(m) = r.score else { continue };
        acc.entry((r.task.clone(), r.method.clone()))
            .or_default()
            .push((b, m));
    }
    if acc.is_empty() {
        return Err(AnalyzeError::Invalid(format!(
            "no scored record of the benchmark's samples in {} (run `kvlens run --tasks {}` first)",
            runs.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            bench.display()
        )));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let mut rows = Vec::new();
    // Group → method → (task means, still, eligible).
    type GroupAcc = (Vec<f64>, Vec<f64>, usize, usize, Option<usize>);
    let mut groups: BTreeMap<(&'static str, String), GroupAcc> = BTreeMap::new();
    for ((task, method), pairs) in &acc {
        let bar = bar_of(task).unwrap_or(f64::NEG_INFINITY);
        let still = pairs
            .iter()
            .filter(|(b, m)| is_negative(rule, *b, *m, bar, delta))
            .count();
        let b_mean = 100.0 * mean(&pairs.iter().map(|p| p.0).collect::<Vec<_>>());
        let m_mean = 100.0 * mean(&pairs.iter().map(|p| p.1).collect::<Vec<_>>());
        let eligible = eligible_of(task);
        rows.push(NegRow {
            level: "task".into(),
            name: task.clone(),
            method: method.clone(),
            samples: pairs.len(),
            baseline_score: b_mean,
            score: m_mean,
            still_negative: still,
            eligible,
            fail_ratio: eligible.filter(|&e| e > 0).map(|e| still as f64 / e as f64),
        });
        let g = groups.entry((task_group(task), method.clone())).or_insert((
            Vec::new(),
            Vec::new(),
            0,
            0,
            Some(0),
        ));
        g.0.push(b_mean);
        g.1.push(m_mean);
        g.2 += pairs.len();
        g.3 += still;
        g.4 = match (g.4, eligible) {
            (Some(a), Some(e)) => Some(a + e),
            _ => None,
        };
    }
    for ((group, method), (b, m, n, still, eligible)) in groups {
        rows.push(NegRow {
            level: "group".into(),
            name: group.to_string(),
            method,
            samples: n,
            baseline_score: mean(&b),
            score: mean(&m),
            still_negative: still,
            eligible,
            fail_ratio: eligible.filter(|&e| e > 0).map(|e| still as f64 / e as f64),
        });
    }
    Ok(rows)
}

/// The report as a Markdown table.
pub fn table(rows: &[NegRow]) -> String {
    let mut s = String::from(
        "| level | task or group | method | negatives | baseline score | score | still negative | eligible | fail ratio |\n|---|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {} |\n",
            r.level,
            r.name,
            r.method,
            r.samples,
            r.baseline_score,
            r.score,
            r.still_negative,
            r.eligible.map_or("–".into(), |e| e.to_string()),
            r.fail_ratio
                .map_or("–".into(), |f| format!("{:.1} %", 100.0 * f)),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_fall_into_the_studys_groups() {
        assert_eq!(task_group("hotpotqa"), "QA");
        assert_eq!(task_group("2wikimqa_e"), "QA");
        assert_eq!(task_group("gov_report"), "summarization");
        assert_eq!(task_group("repobench-p"), "code");
        assert_eq!(task_group("niah_multikey"), "retrieval");
        assert_eq!(task_group("trec"), "classification");
        assert_eq!(task_group("vt"), "synthetic");
        assert_eq!(task_group("my_task"), "other");
    }
}
