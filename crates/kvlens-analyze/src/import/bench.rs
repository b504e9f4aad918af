//! Serving-benchmark results as latency records, in `kvlens load`'s layout
//! (`OUT/rate=<r>/<method>.jsonl`, one record per request with its [`LoadInfo`]), so that
//! `kvlens analyze`, `kvlens predict throughput --measured` and kvlens's load summary read them.
//!
//! - **vLLM** `vllm bench serve --save-result --save-detailed` (vllm-project/vllm,
//!   `vllm/benchmarks/serve.py`; before it `benchmarks/benchmark_serving.py`): one JSON object
//!   (several, one per line, with `--append-result`) with the run's settings (`request_rate`,
//!   a number or `"inf"`; `burstiness`; `max_concurrency`; `label`, `backend`, `model_id`), its
//!   summary (`duration` in s, `completed`, `request_throughput`, `median_ttft_ms`, ...) and per
//!   request, in order and failures included: `input_lens`, `output_lens`, `ttfts` (s), `itls`
//!   (lists, s), `latencies` (s), `start_times` (s, `perf_counter`, so only differences count),
//!   `generated_texts`, `errors` (`""` when the request succeeded).
//! - **SGLang** `python -m sglang.bench_serving --output-file F --output-details`
//!   (sgl-project/sglang, `python/sglang/bench_serving.py`): JSON Lines, one line per run,
//!   with the same per-request arrays but no `latencies` nor `start_times`; e2e latency is then
//!   TTFT plus the inter-token gaps, and send times are unknown (listed as absent).
//!
//! With `--prompts FILE` (JSON Lines, one line per request in the benchmark's order), each
//! record takes the line's `task`, `sample_id` (or `id`, `_id`) and `answers` (or `answer`,
//! `outputs`), and is scored with `--metric`. The file's own summary is compared with kvlens's
//! recomputation from the per-request arrays and differences are noted.

use super::{files_with, name_of, record, strings, write_grouped, Imported};
use crate::error::{AnalyzeError, Result};
use crate::load::ABSENT_KEY;
use crate::serving::{summarize, Goodput};
use kvlens_run::arrivals::Rate;
use kvlens_run::runner::file_safe;
use kvlens_run::{LoadInfo, Record};
use kvlens_score::Metric;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which benchmark wrote the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bench {
    Vllm,
    Sglang,
}

impl Bench {
    fn name(self) -> &'static str {
        match self {
            Bench::Vllm => "vllm-bench",
            Bench::Sglang => "sglang-bench",
        }
    }
}

/// What to join each request to.
#[derive(Debug, Clone, Default)]
pub struct Join {
    pub prompts: Option<PathBuf>,
    pub metric: Option<Metric>,
}

struct Prompt {
    task: String,
    sample_id: String,
    answers: Vec<String>,
}

fn read_prompts(path: &Path) -> Result<Vec<Prompt>> {
    let mut out = Vec::new();
    for (i, (line, o)) in super::json_lines(path)?.into_iter().enumerate() {
        let id = ["sample_id", "id", "_id"]
            .iter()
            .find_map(|k| o.get(*k))
            .map_or(i.to_string(), |v| {
                v.as_str().map_or(v.to_string(), String::from)
            });
        let task = match o.get("task") {
            Some(Value::String(s)) => s.clone(),
            None => "bench".to_string(),
            Some(_) => {
                return Err(AnalyzeError::Line {
                    path: path.to_path_buf(),
                    line,
                    msg: "field \"task\" is not a string".into(),
                })
            }
        };
        let answers = strings(
            ["answers", "answer", "outputs"]
                .iter()
                .find_map(|k| o.get(*k)),
        );
        out.push(Prompt {
            task,
            sample_id: id,
            answers,
        });
    }
    Ok(out)
}

/// One run's records, its own summary, and whether it had send times.
type Point = (Vec<Record>, Map<String, Value>, bool);

/// Every run object of a file: one JSON document, or JSON Lines.
fn runs_of(path: &Path) -> Result<Vec<(usize, Map<String, Value>)>> {
    let text = std::fs::read_to_string(path).map_err(|e| AnalyzeError::io(path, e))?;
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(&text) {
        return Ok(vec![(1, o)]);
    }
    super::json_lines(path)
}

fn array<'a>(o: &'a Map<String, Value>, k: &str) -> Option<&'a Vec<Value>> {
    o.get(k).and_then(Value::as_array)
}

/// Imports one result file or every `.json`/`.jsonl` file of a folder.
pub fn import(
    kind: Bench,
    path: &Path,
    out: &Path,
    method: Option<&str>,
    join: &Join,
) -> Result<Imported> {
    let files = files_with(path, &["json", "jsonl"])?;
    if files.is_empty() {
        return Err(AnalyzeError::Invalid(format!(
            "no {} result files (*.json, *.jsonl) in {}",
            kind.name(),
            path.display()
        )));
    }
    let prompts = match &join.prompts {
        Some(p) => Some(read_prompts(p)?),
        None => None,
    };
    let run_id = name_of(path);
    // (point, method) → records; each point's file summary for the check.
    let mut points: BTreeMap<(String, String), Point> = BTreeMap::new();
    for file in &files {
        for (line, o) in runs_of(file)? {
            let bad = |msg: String| AnalyzeError::Line {
                path: file.clone(),
                line,
                msg,
            };
            let name = method
                .map(String::from)
                .or_else(|| o.get("label").and_then(Value::as_str).map(String::from))
                .or_else(|| o.get("backend").and_then(Value::as_str).map(String::from))
                .unwrap_or_else(|| kind.name().to_string());
            let model = ["model_id", "model", "tokenizer_id"]
                .iter()
                .find_map(|k| o.get(*k).and_then(Value::as_str))
                .unwrap_or("imported")
                .to_string();
            let rate = match o.get("request_rate") {
                Some(Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => json!(n),
                Some(Value::String(s)) if s.eq_ignore_ascii_case("inf") => json!("inf"),
                Some(Value::Null) | None => json!("inf"),
                Some(v) => return Err(bad(format!("field \"request_rate\" is {v}, not a rate"))),
            };
            let point = match rate.as_f64() {
                Some(r) => Rate::PerSecond(r).folder(),
                None => Rate::Inf.folder(),
            };
            let Some(input) = array(&o, "input_lens") else {
                return Err(bad(
                    "field \"input_lens\" is missing: the per-request arrays are written only \
                     with --save-detailed (vLLM) or --output-details (SGLang)"
                        .into(),
                ));
            };
            let n = input.len();
            let get = |k: &str| -> std::result::Result<Option<&Vec<Value>>, AnalyzeError> {
                match array(&o, k) {
                    Some(a) if a.len() != n => Err(bad(format!(
                        "field \"{k}\" has {} entries, \"input_lens\" {n}",
                        a.len()
                    ))),
                    a => Ok(a),
                }
            };
            let outputs = get("output_lens")?;
            let ttfts = get("ttfts")?;
            let itls = get("itls")?;
            let latencies = get("latencies")?;
            let starts = get("start_times")?;
            let texts = get("generated_texts")?;
            let errors = get("errors")?;
            let (Some(outputs), Some(ttfts)) = (outputs, ttfts) else {
                return Err(bad(
                    "fields \"output_lens\" and \"ttfts\" are required".into()
                ));
            };
            let f = |v: Option<&Value>| v.and_then(Value::as_f64).unwrap_or(0.0);
            let t0 = starts
                .map(|s| {
                    s.iter()
                        .filter_map(Value::as_f64)
                        .fold(f64::INFINITY, f64::min)
                })
                .filter(|t| t.is_finite());
            let key = (point.clone(), name.clone());
            if points.contains_key(&key) {
                return Err(bad(format!(
                    "a second run of `{name}` at {point}: import it with another --method"
                )));
            }
            let mut records = Vec::with_capacity(n);
            for i in 0..n {
                let ttft_ms = 1e3 * f(ttfts.get(i));
                let itl_ms: Vec<f64> = itls
                    .and_then(|a| a.get(i))
                    .and_then(Value::as_array)
                    .map(|g| {
                        g.iter()
                            .filter_map(Value::as_f64)
                            .map(|x| 1e3 * x)
                            .collect()
                    })
                    .unwrap_or_default();
                let e2e_ms = match latencies {
                    Some(l) => 1e3 * f(l.get(i)),
                    None => ttft_ms + itl_ms.iter().sum::<f64>(),
                };
                let error = errors
                    .and_then(|e| e.get(i))
                    .and_then(Value::as_str)
                    .filter(|e| !e.is_empty())
                    .map(String::from);
                let sent_ms = match (starts, t0) {
                    (Some(s), Some(t0)) => 1e3 * (f(s.get(i)) - t0),
                    _ => 0.0,
                };
                let (task, sample_id, answers) = match prompts.as_ref().map(|p| p.get(i)) {
                    Some(Some(p)) => (p.task.clone(), p.sample_id.clone(), p.answers.clone()),
                    Some(None) => {
                        return Err(bad(format!(
                            "request {i} has no line in the prompt file (it has {})",
                            prompts.as_ref().map_or(0, Vec::len)
                        )))
                    }
                    None => ("bench".to_string(), i.to_string(), Vec::new()),
                };
                let mut missing = vec!["prefill_ms", "kv_bytes_peak", "kv_bytes_full"];
                missing.extend(["kv_tokens_kept", "max_new_tokens"]);
                if answers.is_empty() || join.metric.is_none() {
                    missing.extend(["score", "pass", "answers"]);
                }
                if starts.is_none() {
                    missing.extend(["sent_ms", "done_ms", "max_concurrent_requests"]);
                }
                let mut meta = Map::new();
                meta.insert(ABSENT_KEY.into(), json!(missing));
                meta.insert("source".into(), json!(kind.name()));
                let text = texts
                    .and_then(|t| t.get(i))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let mut r = record(
                    &run_id,
                    &model,
                    &task,
                    &sample_id,
                    &name,
                    text,
                    answers,
                    Vec::new(),
                    meta,
                )
                .map_err(&bad)?;
                r.prompt_tokens = input[i].as_u64().unwrap_or(0) as usize;
                r.output_tokens = outputs[i].as_u64().unwrap_or(0) as usize;
                r.ttft_ms = ttft_ms;
                r.e2e_ms = e2e_ms;
                r.decode_ms = (e2e_ms - ttft_ms).max(0.0);
                r.finish_reason = error.is_none().then(|| "length".to_string());
                r.error = error;
                r.load = Some(LoadInfo {
                    point: point.clone(),
                    request_rate: rate.clone(),
                    burstiness: o.get("burstiness").and_then(Value::as_f64).unwrap_or(1.0),
                    max_concurrency: o
                        .get("max_concurrency")
                        .and_then(Value::as_u64)
                        .map(|c| c as usize),
                    index: i,
                    scheduled_ms: sent_ms,
                    sent_ms,
                    late_ms: 0.0,
                    slot_wait_ms: 0.0,
                    done_ms: sent_ms + e2e_ms,
                    itl_ms,
                    client_ms: 0.0,
                });
                if let Some(m) = join.metric {
                    if !r.answers.is_empty() {
                        r.rescore(Some(m), None);
                    }
                }
                records.push(r);
            }
            points.insert(key, (records, o.clone(), starts.is_some()));
        }
    }
    let mut notes = Vec::new();
    let mut groups = BTreeMap::new();
    for ((point, name), (records, theirs, timed)) in points {
        notes.extend(check(&point, &name, &records, &theirs, timed));
        groups.insert((point, name), records);
    }
    // `kvlens load`'s layout: OUT/rate=<r>/<method>.jsonl.
    let mut done = write_grouped(out, groups, &|point, name| {
        PathBuf::from(point).join(format!("{}.jsonl", file_safe(name)))
    })?;
    done.notes = notes;
    Ok(done)
}

/// kvlens's summary of the imported requests against the file's own, field by field.
fn check(
    point: &str,
    name: &str,
    records: &[Record],
    theirs: &Map<String, Value>,
    timed: bool,
) -> Vec<String> {
    let s = summarize(name, records, None, &Goodput::default(), 0, 0);
    let ours = serde_json::to_value(&s).unwrap_or(Value::Null);
    let mut fields = vec![
        "completed",
        "total_input_tokens",
        "total_output_tokens",
        "mean_ttft_ms",
        "median_ttft_ms",
        "p99_ttft_ms",
        "mean_tpot_ms",
        "median_tpot_ms",
        "mean_itl_ms",
        "median_itl_ms",
        "p99_itl_ms",
    ];
    if timed {
        fields.extend(["duration", "request_throughput", "output_throughput"]);
    }
    let mut same = 0;
    let mut differ = Vec::new();
    for k in fields {
        let (Some(a), Some(b)) = (
            ours.get(k).and_then(Value::as_f64),
            theirs.get(k).and_then(Value::as_f64),
        ) else {
            continue;
        };
        if (a - b).abs() <= 1e-3 * b.abs().max(1e-9) {
            same += 1;
        } else {
            differ.push(format!("{k} {b} (kvlens {a:.4})"));
        }
    }
    let mut notes = vec![format!(
        "{name} at {point}: {} requests; {same} summary fields match kvlens's recomputation",
        records.len()
    )];
    if !differ.is_empty() {
        notes.push(format!("{name} at {point}: differ: {}", differ.join(", ")));
    }
    if !timed {
        notes.push(format!(
            "{name} at {point}: no start_times, so send times, duration and throughput are \
             the file's own"
        ));
    }
    notes
}
