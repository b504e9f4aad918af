//! The per-sample record: one JSON line per (task, sample, method), the contract between the
//! runner, the scorer and the analyzer (../shared/DESIGN.md).

use kvlens_score::{Metric, PassRule};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    // Identity.
    pub run_id: String,
    pub model: String,
    pub task: String,
    pub sample_id: String,
    /// The method's canonical spec (`snapkv:budget=256,kernel=7,pool=max,window=32`).
    pub method: String,
    /// The first 16 hex digits of the SHA-256 of the prompt text as given to the engine (after
    /// truncation, before the chat template), so runs can be compared prompt by prompt.
    pub prompt_hash: String,

    // Generation.
    pub prompt_tokens: usize,
    #[serde(default)]
    pub truncated: bool,
    pub output_text: String,
    pub output_tokens: usize,
    /// `eos`, `stop` or `length`; absent when the sample failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    pub max_new_tokens: usize,

    // Time, milliseconds of wall clock in this process.
    pub prefill_ms: f64,
    pub ttft_ms: f64,
    pub decode_ms: f64,
    pub e2e_ms: f64,
    #[serde(default)]
    pub decode_ms_p50: f64,
    #[serde(default)]
    pub decode_ms_p90: f64,
    #[serde(default)]
    pub decode_ms_max: f64,
    /// The prefill was computed once and shared by several methods; `prefill_ms` is still
    /// the time that prefill took.
    #[serde(default)]
    pub prefill_shared: bool,
    /// The run's `--batch`: how many requests could decode together.
    #[serde(default = "one")]
    pub batch: usize,
    /// Time waiting for the scheduler to admit it (0 when run alone).
    #[serde(default)]
    pub queue_ms: f64,
    /// Times the scheduler preempted it (and recomputed it from its prompt).
    #[serde(default)]
    pub preemptions: usize,

    // Memory.
    pub kv_bytes_peak: u64,
    /// Bytes the cache held when generation ended (what it keeps for the rest of a request).
    #[serde(default)]
    pub kv_bytes_end: u64,
    pub kv_bytes_full: u64,
    pub kv_tokens_kept: f64,

    // What scoring needs, so records can be re-scored without the dataset or the model.
    pub answers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all_classes: Vec<String>,
    /// Score only the first line of the output (the task's rule).
    #[serde(default)]
    pub first_line: bool,

    // Score.
    #[serde(default)]
    pub metric: Option<Metric>,
    #[serde(default)]
    pub score: Option<f64>,
    #[serde(default)]
    pub pass: Option<bool>,
    /// The pass rule applied, e.g. `score >= 0.5`.
    #[serde(default)]
    pub pass_rule: Option<String>,

    /// Generator parameters and source metadata of the sample.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub meta: Map<String, Value>,
    /// Where a method served elsewhere ran, and which numbers came from the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<Served>,
    /// The load point a request of `kvlens load` belonged to, and how it was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadInfo>,
    /// Set when the sample failed; the other fields then hold what was known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One request of a load point (`kvlens load`): when it was due, when it went out, and the
/// gaps between the pieces of its stream. Times in ms from the start of the load point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadInfo {
    /// The load point's folder name, e.g. `rate=4`.
    pub point: String,
    /// Requests per second (a number), or `inf`.
    pub request_rate: Value,
    pub burstiness: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<usize>,
    /// The request's place in the schedule (0-based).
    pub index: usize,
    /// When the schedule said to send it.
    pub scheduled_ms: f64,
    /// When it was sent (after waiting for a slot under `--max-concurrency`).
    pub sent_ms: f64,
    /// How late the client itself was to send it, not counting the wait for a slot: the
    /// client falling behind its own schedule.
    pub late_ms: f64,
    /// The wait for a slot under `--max-concurrency`.
    pub slot_wait_ms: f64,
    /// When the answer was complete (or the request failed).
    pub done_ms: f64,
    /// Gaps between the pieces of text of the stream after the first (inter-token latency).
    pub itl_ms: Vec<f64>,
    /// Time this process spent on the request itself (writing the body, parsing the stream,
    /// building the record), not waiting on the server.
    pub client_ms: f64,
}

/// How a record of a remote method was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Served {
    /// `openai`.
    pub backend: String,
    /// The API root, without credentials.
    pub server: String,
    /// `usage` (the server counted) or `tokenizer` (counted here with the run's model).
    pub output_tokens_from: String,
    /// `server` (the server reported its prompt time) or `ttft` (time to first token).
    pub prefill_from: String,
    /// Requests sent for this sample (retries included).
    pub attempts: u32,
}

/// The key a run never holds twice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub task: String,
    pub sample_id: String,
    pub method: String,
}

impl Record {
    pub fn key(&self) -> Key {
        Key {
            task: self.task.clone(),
            sample_id: self.sample_id.clone(),
            method: self.method.clone(),
        }
    }

    /// Scores the output with `metric` (the record's own unless given) and the pass rule.
    /// A failed sample scores nothing.
    pub fn rescore(&mut self, metric: Option<Metric>, threshold: Option<f64>) {
        let Some(metric) = metric.or(self.metric) else {
            return;
        };
        self.metric = Some(metric);
        if self.error.is_some() {
            self.score = None;
            self.pass = None;
            self.pass_rule = None;
            return;
        }
        let pred = if self.first_line {
            kvlens_score::first_line(&self.output_text)
        } else {
            self.output_text.as_str()
        };
        let s = kvlens_score::score(metric, pred, &self.answers, &self.all_classes);
        let rule = PassRule::for_metric(metric, threshold);
        self.score = Some(s);
        self.pass = Some(rule.passes(s));
        self.pass_rule = Some(rule.describe());
    }
}

fn one() -> usize {
    1
}
