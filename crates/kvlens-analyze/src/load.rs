//! Records → [`Sample`]s: the fields the analyses use, with absent values as `None`.

use crate::error::{AnalyzeError, Result};
use kvlens_run::Record;
use rayon::prelude::*;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// The `meta` key under which an importer lists the record fields its source did not have
/// (`["output_tokens", "e2e_ms", ...]`): the record holds 0 there, the analyses `None`.
pub const ABSENT_KEY: &str = "absent";

/// One record as the analyses see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub model: String,
    pub task: String,
    pub sample_id: String,
    pub method: String,
    pub score: Option<f64>,
    pub pass: Option<bool>,
    pub output_tokens: Option<f64>,
    pub prompt_tokens: Option<f64>,
    pub finish_reason: Option<String>,
    pub max_new_tokens: Option<usize>,
    pub prefill_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
    /// `kv_bytes_end` when recorded, else `kv_bytes_peak`.
    pub kv_bytes: Option<f64>,
    pub kv_bytes_full: Option<f64>,
    /// The sample failed (the record has an `error`).
    pub error: bool,
    /// Needle depth (0..1) of generated tasks.
    pub depth: Option<f64>,
    /// Context length of generated tasks (`context_length`, else `target_tokens`).
    pub length: Option<f64>,
    /// Variable-tracking hops.
    pub hops: Option<f64>,
}

fn meta_f64(r: &Record, key: &str) -> Option<f64> {
    r.meta.get(key).and_then(Value::as_f64)
}

impl Sample {
    pub fn from_record(r: &Record) -> Self {
        let absent: Vec<&str> = r
            .meta
            .get(ABSENT_KEY)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let has = |f: &str| !absent.contains(&f);
        let ok = r.error.is_none();
        let kv = if r.kv_bytes_end > 0 {
            Some(r.kv_bytes_end as f64)
        } else if has("kv_bytes_peak") {
            Some(r.kv_bytes_peak as f64)
        } else {
            None
        };
        Sample {
            model: r.model.clone(),
            task: r.task.clone(),
            sample_id: r.sample_id.clone(),
            method: r.method.clone(),
            score: if ok { r.score } else { None },
            pass: if ok { r.pass } else { None },
            output_tokens: (ok && has("output_tokens")).then_some(r.output_tokens as f64),
            prompt_tokens: (ok && has("prompt_tokens")).then_some(r.prompt_tokens as f64),
            finish_reason: if ok && has("finish_reason") {
                r.finish_reason.clone()
            } else {
                None
            },
            max_new_tokens: has("max_new_tokens").then_some(r.max_new_tokens),
            prefill_ms: (ok && has("prefill_ms")).then_some(r.prefill_ms),
            e2e_ms: (ok && has("e2e_ms")).then_some(r.e2e_ms),
            kv_bytes: kv.filter(|_| ok),
            kv_bytes_full: has("kv_bytes_full").then_some(r.kv_bytes_full as f64),
            error: !ok,
            depth: meta_f64(r, "depth"),
            length: meta_f64(r, "context_length").or_else(|| meta_f64(r, "target_tokens")),
            hops: meta_f64(r, "hops"),
        }
    }
}

/// Every record of every run folder (or single `.jsonl` file), read in parallel. Torn last
/// lines (an interrupted write) are skipped with a warning on stderr.
pub fn load_runs(paths: &[PathBuf]) -> Result<Vec<Sample>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_file() {
            files.push(p.clone());
        } else {
            files.extend(kvlens_run::store::record_files(p)?);
        }
    }
    let parts: Vec<Result<Vec<Sample>>> = files.par_iter().map(|f| load_file(f)).collect();
    let mut out = Vec::new();
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

/// The fields of a record line the analyses read; the rest (output text, answers, ...) is
/// skipped without being stored, which makes reading a million records several times
/// faster than through [`Record`]. Same line rules as `kvlens_run::store::read_file`.
#[derive(serde::Deserialize)]
struct Lite<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(borrow)]
    task: Cow<'a, str>,
    #[serde(borrow)]
    sample_id: Cow<'a, str>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    output_tokens: Option<f64>,
    #[serde(default)]
    prompt_tokens: Option<f64>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    max_new_tokens: Option<usize>,
    prefill_ms: Option<f64>,
    e2e_ms: Option<f64>,
    kv_bytes_peak: Option<f64>,
    #[serde(default)]
    kv_bytes_end: Option<f64>,
    kv_bytes_full: Option<f64>,
    #[serde(default)]
    score: Option<f64>,
    #[serde(default)]
    pass: Option<bool>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    meta: Option<Map<String, Value>>,
}

fn load_file(f: &Path) -> Result<Vec<Sample>> {
    let bytes = std::fs::read(f).map_err(|e| AnalyzeError::io(f, e))?;
    let mut out = Vec::new();
    for (line_no, line, complete) in kvlens_run::store::lines(&bytes) {
        if !complete {
            eprintln!(
                "kvlens: {} line {line_no} is incomplete (an interrupted write) and was skipped",
                f.display()
            );
            break;
        }
        let r: Lite = serde_json::from_slice(line).map_err(|e| AnalyzeError::Line {
            path: f.to_path_buf(),
            line: line_no,
            msg: if serde_json::from_slice::<serde::de::IgnoredAny>(line).is_err() {
                format!("invalid JSON: {e}")
            } else {
                format!("not a kvlens record: {e}")
            },
        })?;
        out.push(Sample::from_lite(r));
    }
    Ok(out)
}

impl Sample {
    fn from_lite(r: Lite) -> Self {
        let meta = r.meta.unwrap_or_default();
        let absent: Vec<&str> = meta
            .get(ABSENT_KEY)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let ok = r.error.is_none();
        let has = |f: &str| ok && !absent.contains(&f);
        let get = |k: &str| meta.get(k).and_then(Value::as_f64);
        let kv = match r.kv_bytes_end {
            Some(e) if e > 0.0 => Some(e),
            _ => r.kv_bytes_peak.filter(|_| has("kv_bytes_peak")),
        };
        Sample {
            model: r.model.into_owned(),
            task: r.task.into_owned(),
            sample_id: r.sample_id.into_owned(),
            method: r.method.into_owned(),
            score: r.score.filter(|_| ok),
            pass: r.pass.filter(|_| ok),
            output_tokens: r.output_tokens.filter(|_| has("output_tokens")),
            prompt_tokens: r.prompt_tokens.filter(|_| has("prompt_tokens")),
            finish_reason: r
                .finish_reason
                .filter(|_| has("finish_reason"))
                .map(Cow::into_owned),
            max_new_tokens: r
                .max_new_tokens
                .filter(|_| !absent.contains(&"max_new_tokens")),
            prefill_ms: r.prefill_ms.filter(|_| has("prefill_ms")),
            e2e_ms: r.e2e_ms.filter(|_| has("e2e_ms")),
            kv_bytes: kv.filter(|_| ok),
            kv_bytes_full: r
                .kv_bytes_full
                .filter(|_| !absent.contains(&"kv_bytes_full")),
            error: !ok,
            depth: get("depth"),
            length: get("context_length").or_else(|| get("target_tokens")),
            hops: get("hops"),
        }
    }
}

/// Every record of the runs, whole (for `inspect`).
pub fn load_records(paths: &[PathBuf]) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_file() {
            out.extend(kvlens_run::store::read_file(p)?.0);
        } else {
            out.extend(kvlens_run::store::read_run(p)?);
        }
    }
    Ok(out)
}
