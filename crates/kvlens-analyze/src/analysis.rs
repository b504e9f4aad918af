//! Each method against the baseline, paired by `(model, task, sample_id)`.

use crate::error::{AnalyzeError, Result};
use crate::load::Sample;
use crate::stats;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Which samples count as negative (see [`is_negative`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    /// The paper's rule plus `b > 0`.
    Default,
    /// The published rule as is.
    Paper,
    /// The study's extractor, which built its released benchmark files: the task's **mean**
    /// baseline score in place of the median, no `b > 0` condition.
    #[serde(rename = "paper-mean")]
    PaperMean,
}

impl std::str::FromStr for Rule {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "default" => Ok(Rule::Default),
            "paper" => Ok(Rule::Paper),
            "paper-mean" => Ok(Rule::PaperMean),
            _ => Err(format!("unknown rule `{s}` (default, paper or paper-mean)")),
        }
    }
}

/// A negative sample at threshold `delta` (percent), after Gao et al., "Rethinking Key-Value
/// Cache Compression Techniques for Large Language Model Serving" (MLSys 2025): the
/// baseline's score `b` is at least the task's median baseline score (NumPy's median) and
/// the method's score `m` is at most `b·(1 − δ/100)`, both as recorded. Under
/// [`Rule::Paper`] a task whose median is 0 counts samples where both score 0 (reported as
/// `both_zero`); [`Rule::Default`] also asks `b > 0`. Under [`Rule::PaperMean`] `median` is
/// the task's mean baseline score (see [`Rule::PaperMean`]). `m ≤ b·(1 − δ/100)` is computed
/// in f64 as written: rearranged, it flips samples that sit exactly at the bound.
pub fn is_negative(rule: Rule, b: f64, m: f64, median: f64, delta: f64) -> bool {
    b >= median && m <= b * (1.0 - delta / 100.0) && (rule != Rule::Default || b > 0.0)
}

pub const DEFAULT_THRESHOLDS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 10.0, 16.0, 24.0, 32.0];

#[derive(Debug, Clone)]
pub struct Options {
    /// The baseline method as typed; `None`: `full`, else `hf` (imported paper files).
    pub baseline: Option<String>,
    pub rule: Rule,
    pub thresholds: Vec<f64>,
    /// Joint sets as typed, `A+B`.
    pub joint: Vec<String>,
    /// The δ (percent) of the table's `negatives` column and of the flags.
    pub delta: f64,
    pub bootstrap_reps: usize,
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            baseline: None,
            rule: Rule::Default,
            thresholds: DEFAULT_THRESHOLDS.to_vec(),
            joint: Vec::new(),
            delta: 10.0,
            bootstrap_reps: 1000,
            seed: 0,
        }
    }
}

/// One row of `negatives`: a method or joint set, a task, a threshold.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NegRow {
    pub method: String,
    pub task: String,
    pub threshold: f64,
    pub count: usize,
    pub both_zero: usize,
}

/// One row of the per-task breakdown (task × method). Scores ×100; times in ms.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TaskRow {
    pub model: String,
    pub task: String,
    pub method: String,
    /// Scored samples of this method.
    pub n: usize,
    pub errors: usize,
    /// Samples of this method paired with a baseline sample.
    pub paired: usize,
    /// This method's samples with no baseline sample.
    pub missing_baseline: usize,
    /// Baseline samples this method lacks.
    pub missing_method: usize,
    /// LongBench's `round(100·mean, 2)`.
    pub score: Option<f64>,
    /// Mean paired Δscore ×100 and its bootstrap 95 % interval.
    pub delta: Option<f64>,
    pub delta_ci_low: Option<f64>,
    pub delta_ci_high: Option<f64>,
    /// Negatives at the chosen δ under the chosen rule, and how many of them both score 0.
    pub negatives: Option<usize>,
    pub both_zero: Option<usize>,
    pub pass_to_fail: Option<usize>,
    pub fail_to_pass: Option<usize>,
    pub mcnemar_p: Option<f64>,
    pub length_ratio_median: Option<f64>,
    pub length_ratio_p90: Option<f64>,
    pub pct_longer: Option<f64>,
    pub pct_ran_to_limit: Option<f64>,
    pub extra_tokens_mean: Option<f64>,
    pub e2e_ms_mean: Option<f64>,
    pub delta_e2e_ms_mean: Option<f64>,
    pub delta_prefill_ms_mean: Option<f64>,
    pub delta_per_token_ms_mean: Option<f64>,
    pub delta_extra_tokens_ms_mean: Option<f64>,
    /// Paired bootstrap 95 % intervals of the four means above (the pairs resampled
    /// together); an interval that holds 0 is not distinguishable from noise.
    pub delta_e2e_ms_mean_ci_low: Option<f64>,
    pub delta_e2e_ms_mean_ci_high: Option<f64>,
    pub delta_prefill_ms_mean_ci_low: Option<f64>,
    pub delta_prefill_ms_mean_ci_high: Option<f64>,
    pub delta_per_token_ms_mean_ci_low: Option<f64>,
    pub delta_per_token_ms_mean_ci_high: Option<f64>,
    pub delta_extra_tokens_ms_mean_ci_low: Option<f64>,
    pub delta_extra_tokens_ms_mean_ci_high: Option<f64>,
    pub delta_e2e_ms_sum: Option<f64>,
    pub delta_prefill_ms_sum: Option<f64>,
    pub delta_per_token_ms_sum: Option<f64>,
    pub delta_extra_tokens_ms_sum: Option<f64>,
    /// Pairs in the latency attribution.
    pub attributed: usize,
    /// Pairs with 0 output tokens on a side (no per-token time), reported apart.
    pub zero_length: usize,
    pub zero_length_delta_e2e_ms_sum: Option<f64>,
    pub kv_bytes_mean: Option<f64>,
    /// Mean KV bytes over paired samples / the baseline's.
    pub kv_bytes_ratio: Option<f64>,
    /// The attributed pairs' four terms, for the intervals pooled over tasks.
    #[serde(skip)]
    pub latency_terms: Vec<[f64; 4]>,
}

/// One method's latency attribution over all its tasks' pairs: the mean of each term
/// (Δe2e, Δprefill, Δper-token, Δextra tokens) and its paired bootstrap 95 % interval.
#[derive(Debug, Clone, Serialize)]
pub struct MethodLatency {
    pub method: String,
    pub pairs: usize,
    pub mean: [f64; 4],
    pub ci_low: [Option<f64>; 4],
    pub ci_high: [Option<f64>; 4],
}

/// One flagged sample.
#[derive(Debug, Clone, Serialize)]
pub struct Flag {
    pub model: String,
    pub task: String,
    pub method: String,
    pub sample_id: String,
    pub negative: bool,
    pub longer: bool,
    pub ran_to_limit: bool,
    pub slower: bool,
    pub baseline_score: Option<f64>,
    pub score: Option<f64>,
    pub baseline_tokens: Option<f64>,
    pub tokens: Option<f64>,
    pub length_ratio: Option<f64>,
    pub baseline_e2e_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
    pub delta_e2e_ms: Option<f64>,
    pub delta_prefill_ms: Option<f64>,
    pub delta_per_token_ms: Option<f64>,
    pub delta_extra_tokens_ms: Option<f64>,
    pub depth: Option<f64>,
    pub length: Option<f64>,
    pub hops: Option<f64>,
}

/// Failures of one method on a task by the generator's `meta` (needle depth × context
/// length, or hops).
#[derive(Debug, Clone, Serialize)]
pub struct MetaCell {
    pub task: String,
    pub method: String,
    pub depth: Option<f64>,
    pub length: Option<f64>,
    pub hops: Option<f64>,
    pub n: usize,
    pub negatives: usize,
    pub pass_to_fail: usize,
}

/// A sample present on one side only.
#[derive(Debug, Clone, Serialize)]
pub struct Missing {
    pub model: String,
    pub task: String,
    pub method: String,
    pub sample_id: String,
    /// `baseline` when the baseline lacks it, `method` when the method does.
    pub missing_side: &'static str,
}

#[derive(Debug, Clone)]
pub struct Analysis {
    pub baseline: String,
    pub rule: Rule,
    pub delta: f64,
    pub methods: Vec<String>,
    pub rows: Vec<TaskRow>,
    pub negatives: Vec<NegRow>,
    pub flags: Vec<Flag>,
    pub by_meta: Vec<MetaCell>,
    pub missing: Vec<Missing>,
    /// Records whose `(model, task, sample_id, method)` was seen before (the first is used).
    pub duplicates: usize,
    /// How much the baseline's own timing varied while the runs went.
    pub noise: Option<Noise>,
    /// Per method (the baseline aside), the attribution pooled over its tasks.
    pub latency: Vec<MethodLatency>,
}

/// The noise floor of a run's timings: how much the same work's time varied on the machine
/// while it ran.
#[derive(Debug, Clone, Serialize)]
pub struct Noise {
    /// The median, over pairs of the baseline's samples next to each other in prompt length
    /// (within 10 % of each other, same model), of the relative difference of their per-token
    /// times `(e2e − prefill) / output tokens`: work of the same cost, timed twice.
    pub relative_spread: f64,
    pub pairs: usize,
    pub how: String,
}

/// Above this relative spread, latency differences of that size are noise.
pub const NOISY: f64 = 0.10;

/// The baseline's noise floor (needs at least 3 pairs of samples of like prompt length).
pub fn noise_floor(samples: &[Sample], baseline: &str) -> Option<Noise> {
    let mut v: Vec<(&str, f64, f64)> = samples
        .iter()
        .filter(|s| s.method == baseline && !s.error)
        .filter_map(|s| {
            let (e, p, l, n) = (s.e2e_ms?, s.prefill_ms?, s.output_tokens?, s.prompt_tokens?);
            (l >= 2.0 && e > p).then(|| (s.model.as_str(), n, (e - p) / l))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(b.0).then(a.1.total_cmp(&b.1)));
    let rel: Vec<f64> = v
        .windows(2)
        .filter(|w| w[0].0 == w[1].0 && w[1].1 <= w[0].1 * 1.1)
        .map(|w| (w[1].2 - w[0].2).abs() / ((w[0].2 + w[1].2) / 2.0))
        .collect();
    if rel.len() < 3 {
        return None;
    }
    Some(Noise {
        relative_spread: stats::median(&rel)?,
        pairs: rel.len(),
        how: format!(
            "median relative difference of the baseline's per-token time between {} pairs of \
             its samples with prompts within 10 % of each other in length",
            rel.len()
        ),
    })
}

/// `name` as typed → a method of the records: the exact canonical spec, else the one
/// method whose name (before `:`) or file label is `name`.
pub fn resolve_method(name: &str, methods: &[String]) -> Result<String> {
    if methods.iter().any(|m| m == name) {
        return Ok(name.to_string());
    }
    let hits: Vec<&String> = methods
        .iter()
        .filter(|m| m.split(':').next() == Some(name) || label(m) == name)
        .collect();
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(AnalyzeError::Invalid(format!(
            "no method `{name}` in the records (there are: {})",
            methods.join(", ")
        ))),
        many => Err(AnalyzeError::Invalid(format!(
            "`{name}` names several methods: {}; give the full spec",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The file-safe label of a spec, as run folders name method files
/// (`snapkv:budget=256,window=32` → `snapkv_budget256_window32`).
pub fn label(spec: &str) -> String {
    let mut out = String::new();
    for c in spec.chars() {
        match c {
            ':' | ',' => out.push('_'),
            '=' => {}
            c if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' => out.push(c),
            _ => out.push('_'),
        }
    }
    out
}

/// The paired numbers of one sample.
struct Pair<'a> {
    b: &'a Sample,
    m: &'a Sample,
}

/// `(Δe2e, Δprefill, (T_m − T_b)·L_b, T_m·(L_m − L_b))` where both sides have output and
/// timings; `Err(Δe2e)` when a side has `L = 0`; `None` when timings are absent.
type Attribution = Option<std::result::Result<[f64; 4], Option<f64>>>;

fn attribution(b: &Sample, m: &Sample) -> Attribution {
    let (eb, pb, lb) = (b.e2e_ms?, b.prefill_ms?, b.output_tokens?);
    let (em, pm, lm) = (m.e2e_ms?, m.prefill_ms?, m.output_tokens?);
    if lb <= 0.0 || lm <= 0.0 {
        return Some(Err(Some(em - eb)));
    }
    let tb = (eb - pb) / lb;
    let tm = (em - pm) / lm;
    Some(Ok([em - eb, pm - pb, (tm - tb) * lb, tm * (lm - lb)]))
}

impl Pair<'_> {
    fn scores(&self) -> Option<(f64, f64)> {
        Some((self.b.score?, self.m.score?))
    }
    fn ratio(&self) -> Option<f64> {
        let lb = self.b.output_tokens?;
        (lb > 0.0).then_some(self.m.output_tokens? / lb)
    }
    fn ran_to_limit(&self) -> Option<bool> {
        let fb = self.b.finish_reason.as_deref()?;
        let fm = self.m.finish_reason.as_deref()?;
        Some(fm == "length" && fb != "length")
    }
}

type GroupKey<'a> = (&'a str, &'a str, &'a str); // model, task, method

pub fn analyze(samples: &[Sample], opts: &Options) -> Result<Analysis> {
    // Methods and tasks in order of appearance.
    let mut methods: Vec<String> = Vec::new();
    let mut seen_m: HashSet<&str> = HashSet::new();
    for s in samples {
        if seen_m.insert(&s.method) {
            methods.push(s.method.clone());
        }
    }
    let baseline = match &opts.baseline {
        Some(b) => resolve_method(b, &methods)?,
        None => resolve_method("full", &methods)
            .or_else(|_| resolve_method("hf", &methods))
            .map_err(|_| {
                AnalyzeError::Invalid(format!(
                    "no baseline: neither `full` nor `hf` is among the methods ({}); name one with --baseline",
                    methods.join(", ")
                ))
            })?,
    };
    methods.retain(|m| *m != baseline);
    methods.insert(0, baseline.clone());
    let joints: Vec<(String, Vec<String>)> = opts
        .joint
        .iter()
        .map(|j| {
            let parts = j
                .split('+')
                .map(|p| resolve_method(p.trim(), &methods))
                .collect::<Result<Vec<_>>>()?;
            Ok((j.clone(), parts))
        })
        .collect::<Result<_>>()?;

    // Index: (model, task, method) → sample_id → sample.
    let mut groups: BTreeMap<GroupKey, HashMap<&str, &Sample>> = BTreeMap::new();
    let mut task_order: Vec<(&str, &str)> = Vec::new();
    let mut seen_t: HashSet<(&str, &str)> = HashSet::new();
    let mut duplicates = 0;
    for s in samples {
        if seen_t.insert((&s.model, &s.task)) {
            task_order.push((&s.model, &s.task));
        }
        let g = groups.entry((&s.model, &s.task, &s.method)).or_default();
        if g.contains_key(s.sample_id.as_str()) {
            duplicates += 1;
        } else {
            g.insert(&s.sample_id, s);
        }
    }
    let empty = HashMap::new();
    let method_idx: HashMap<&str, usize> = methods
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();

    // Work items: every (model, task) × method present, baseline first.
    let mut items: Vec<(&str, &str, &str)> = Vec::new();
    for &(model, task) in &task_order {
        for m in &methods {
            if groups.contains_key(&(model, task, m.as_str())) {
                items.push((model, task, m.as_str()));
            }
        }
    }
    let medians: HashMap<(&str, &str), Option<f64>> = task_order
        .iter()
        .map(|&(model, task)| {
            let base = groups
                .get(&(model, task, baseline.as_str()))
                .unwrap_or(&empty);
            let scores: Vec<f64> = base.values().filter_map(|s| s.score).collect();
            // The bar a baseline sample must reach: the median, or the mean under paper-mean.
            let bar = if opts.rule == Rule::PaperMean {
                stats::mean(&scores)
            } else {
                stats::median(&scores)
            };
            ((model, task), bar)
        })
        .collect();

    struct Out {
        row: TaskRow,
        negs: Vec<(f64, usize, usize)>,
        flags: Vec<Flag>,
        cells: Vec<MetaCell>,
        missing: Vec<Missing>,
    }
    let outs: Vec<Out> = items
        .par_iter()
        .map(|&(model, task, method)| {
            let base = groups
                .get(&(model, task, baseline.as_str()))
                .unwrap_or(&empty);
            let mine = groups.get(&(model, task, method)).unwrap_or(&empty);
            let median = medians.get(&(model, task)).copied().flatten();
            group_stats(model, task, method, &baseline, base, mine, median, opts)
        })
        .map(|(row, negs, flags, cells, missing)| Out {
            row,
            negs,
            flags,
            cells,
            missing,
        })
        .collect();

    // Negatives per method (summed over models) and per joint set.
    let mut neg_acc: BTreeMap<(usize, String, usize), (usize, usize)> = BTreeMap::new();
    let task_pos: HashMap<&str, usize> = {
        let mut m = HashMap::new();
        for &(_, t) in &task_order {
            let n = m.len();
            m.entry(t).or_insert(n);
        }
        m
    };
    for o in &outs {
        if o.row.method == baseline {
            continue;
        }
        let mi = method_idx.get(o.row.method.as_str()).copied().unwrap_or(0);
        for (ti, &(_, count, bz)) in o.negs.iter().enumerate() {
            let e = neg_acc
                .entry((mi, o.row.task.clone(), ti))
                .or_insert((0, 0));
            e.0 += count;
            e.1 += bz;
        }
    }
    let mut negatives = Vec::new();
    let mut order: Vec<(usize, &str)> = task_pos.iter().map(|(t, i)| (*i, *t)).collect();
    order.sort();
    for (mi, m) in methods.iter().enumerate().skip(1) {
        for &(_, task) in &order {
            for (ti, &th) in opts.thresholds.iter().enumerate() {
                // A method without records of the task counts 0 there (its rows in `tasks`
                // and `missing` say why).
                let (count, both_zero) = neg_acc
                    .get(&(mi, task.to_string(), ti))
                    .copied()
                    .unwrap_or((0, 0));
                negatives.push(NegRow {
                    method: m.clone(),
                    task: task.to_string(),
                    threshold: th,
                    count,
                    both_zero,
                });
            }
        }
    }
    for (name, parts) in &joints {
        for &(_, task) in &order {
            for &th in &opts.thresholds {
                let (mut count, mut both_zero) = (0, 0);
                for &(model, t) in &task_order {
                    if t != task {
                        continue;
                    }
                    let base = groups.get(&(model, t, baseline.as_str())).unwrap_or(&empty);
                    let Some(median) = medians.get(&(model, t)).copied().flatten() else {
                        continue;
                    };
                    for (sid, b) in base {
                        let Some(bs) = b.score else { continue };
                        let mut all = !parts.is_empty();
                        let mut zero = bs == 0.0;
                        for p in parts {
                            let ms = groups
                                .get(&(model, t, p.as_str()))
                                .and_then(|g| g.get(sid))
                                .and_then(|s| s.score);
                            match ms {
                                Some(ms) if is_negative(opts.rule, bs, ms, median, th) => {
                                    zero &= ms == 0.0;
                                }
                                _ => {
                                    all = false;
                                    break;
                                }
                            }
                        }
                        if all {
                            count += 1;
                            both_zero += zero as usize;
                        }
                    }
                }
                negatives.push(NegRow {
                    method: name.clone(),
                    task: task.to_string(),
                    threshold: th,
                    count,
                    both_zero,
                });
            }
        }
    }

    let mut rows = Vec::new();
    let mut flags = Vec::new();
    let mut by_meta = Vec::new();
    let mut missing = Vec::new();
    let mut pooled: Vec<(String, Vec<[f64; 4]>)> = Vec::new();
    for o in &outs {
        if o.row.latency_terms.is_empty() {
            continue;
        }
        match pooled.iter_mut().find(|(m, _)| *m == o.row.method) {
            Some((_, v)) => v.extend_from_slice(&o.row.latency_terms),
            None => pooled.push((o.row.method.clone(), o.row.latency_terms.clone())),
        }
    }
    let latency = pooled
        .into_iter()
        .map(|(method, v)| {
            let seed = opts.seed ^ stats::fnv1a(&method) ^ 0x01a7_e0c1;
            let mut m = MethodLatency {
                method,
                pairs: v.len(),
                mean: [0.0; 4],
                ci_low: [None; 4],
                ci_high: [None; 4],
            };
            for k in 0..4 {
                let col: Vec<f64> = v.iter().map(|t| t[k]).collect();
                m.mean[k] = stats::mean(&col).unwrap_or(0.0);
                if let Some((lo, hi)) = stats::bootstrap_mean_ci(&col, opts.bootstrap_reps, seed) {
                    (m.ci_low[k], m.ci_high[k]) = (Some(lo), Some(hi));
                }
            }
            m
        })
        .collect();
    for o in outs {
        rows.push(o.row);
        flags.extend(o.flags);
        by_meta.extend(o.cells);
        missing.extend(o.missing);
    }
    Ok(Analysis {
        baseline,
        rule: opts.rule,
        delta: opts.delta,
        methods,
        rows,
        negatives,
        flags,
        by_meta,
        missing,
        duplicates,
        noise: None,
        latency,
    })
    .map(|mut a| {
        a.noise = noise_floor(samples, &a.baseline);
        a
    })
}

type GroupOut = (
    TaskRow,
    Vec<(f64, usize, usize)>,
    Vec<Flag>,
    Vec<MetaCell>,
    Vec<Missing>,
);

#[allow(clippy::too_many_arguments)]
fn group_stats(
    model: &str,
    task: &str,
    method: &str,
    baseline: &str,
    base: &HashMap<&str, &Sample>,
    mine: &HashMap<&str, &Sample>,
    median: Option<f64>,
    opts: &Options,
) -> GroupOut {
    // Pairs in a stable order (by sample id) so results do not depend on hashing.
    let mut ids: Vec<&str> = mine.keys().copied().collect();
    ids.sort_unstable();
    let mut missing = Vec::new();
    let mut pairs = Vec::new();
    for id in &ids {
        match base.get(id) {
            Some(b) => pairs.push(Pair { b, m: mine[id] }),
            None => missing.push(Missing {
                model: model.into(),
                task: task.into(),
                method: method.into(),
                sample_id: (*id).into(),
                missing_side: "baseline",
            }),
        }
    }
    let missing_baseline = missing.len();
    let mut lacking: Vec<&str> = base
        .keys()
        .copied()
        .filter(|id| !mine.contains_key(id))
        .collect();
    lacking.sort_unstable();
    let missing_method = lacking.len();
    for id in lacking {
        missing.push(Missing {
            model: model.into(),
            task: task.into(),
            method: method.into(),
            sample_id: id.into(),
            missing_side: "method",
        });
    }

    let scores: Vec<f64> = ids.iter().filter_map(|id| mine[id].score).collect();
    let errors = ids.iter().filter(|id| mine[*id].error).count();
    let e2e: Vec<f64> = ids.iter().filter_map(|id| mine[id].e2e_ms).collect();
    let mut row = TaskRow {
        model: model.into(),
        task: task.into(),
        method: method.into(),
        n: scores.len(),
        errors,
        paired: pairs.len(),
        missing_baseline,
        missing_method,
        score: (!scores.is_empty()).then(|| kvlens_score::dataset_score_sequential(&scores)),
        e2e_ms_mean: stats::mean(&e2e),
        ..TaskRow::default()
    };
    let kv_m: Vec<f64> = pairs.iter().filter_map(|p| p.m.kv_bytes).collect();
    row.kv_bytes_mean = stats::mean(&kv_m);
    if method == baseline {
        row.kv_bytes_ratio = row.kv_bytes_mean.map(|_| 1.0);
        return (row, Vec::new(), Vec::new(), Vec::new(), missing);
    }

    // Scores.
    let scored: Vec<(f64, f64)> = pairs.iter().filter_map(Pair::scores).collect();
    let d: Vec<f64> = scored.iter().map(|(b, m)| 100.0 * (m - b)).collect();
    row.delta = stats::mean(&d);
    let seed = opts.seed ^ stats::fnv1a(&format!("{model}\u{1f}{task}\u{1f}{method}"));
    if let Some((lo, hi)) = stats::bootstrap_mean_ci(&d, opts.bootstrap_reps, seed) {
        row.delta_ci_low = Some(lo);
        row.delta_ci_high = Some(hi);
    }
    let negs: Vec<(f64, usize, usize)> = opts
        .thresholds
        .iter()
        .map(|&th| {
            let (mut c, mut z) = (0, 0);
            if let Some(med) = median {
                for &(b, m) in &scored {
                    if is_negative(opts.rule, b, m, med, th) {
                        c += 1;
                        z += (b == 0.0 && m == 0.0) as usize;
                    }
                }
            }
            (th, c, z)
        })
        .collect();
    let neg_at =
        |b: f64, m: f64| median.is_some_and(|med| is_negative(opts.rule, b, m, med, opts.delta));
    if median.is_some() {
        let chosen: Vec<(f64, f64)> = scored
            .iter()
            .copied()
            .filter(|&(b, m)| neg_at(b, m))
            .collect();
        row.negatives = Some(chosen.len());
        row.both_zero = Some(
            chosen
                .iter()
                .filter(|&&(b, m)| b == 0.0 && m == 0.0)
                .count(),
        );
    }
    let passes: Vec<(bool, bool)> = pairs
        .iter()
        .filter_map(|p| Some((p.b.pass?, p.m.pass?)))
        .collect();
    if !passes.is_empty() {
        let pf = passes.iter().filter(|&&(b, m)| b && !m).count();
        let fp = passes.iter().filter(|&&(b, m)| !b && m).count();
        row.pass_to_fail = Some(pf);
        row.fail_to_pass = Some(fp);
        row.mcnemar_p = Some(stats::mcnemar_exact(pf, fp));
    }

    // Length.
    let ratios: Vec<f64> = pairs.iter().filter_map(Pair::ratio).collect();
    row.length_ratio_median = stats::median(&ratios);
    row.length_ratio_p90 = stats::percentile(&ratios, 90.0);
    if !ratios.is_empty() {
        row.pct_longer =
            Some(100.0 * ratios.iter().filter(|&&r| r > 1.1).count() as f64 / ratios.len() as f64);
    }
    let limits: Vec<bool> = pairs.iter().filter_map(Pair::ran_to_limit).collect();
    if !limits.is_empty() {
        row.pct_ran_to_limit =
            Some(100.0 * limits.iter().filter(|&&x| x).count() as f64 / limits.len() as f64);
    }
    let extra: Vec<f64> = pairs
        .iter()
        .filter_map(|p| Some(p.m.output_tokens? - p.b.output_tokens?))
        .collect();
    row.extra_tokens_mean = stats::mean(&extra);

    // Latency attribution.
    let mut sums = [0.0f64; 4];
    let mut terms: [Vec<f64>; 4] = Default::default();
    let mut zero_sum: Option<f64> = None;
    let mut any_timing = false;
    for p in &pairs {
        match attribution(p.b, p.m) {
            Some(Ok(parts)) => {
                any_timing = true;
                row.attributed += 1;
                for ((s, t), x) in sums.iter_mut().zip(terms.iter_mut()).zip(parts) {
                    *s += x;
                    t.push(x);
                }
                row.latency_terms.push(parts);
            }
            Some(Err(d)) => {
                any_timing = true;
                row.zero_length += 1;
                if let Some(d) = d {
                    *zero_sum.get_or_insert(0.0) += d;
                }
            }
            None => {}
        }
    }
    if any_timing {
        row.zero_length_delta_e2e_ms_sum = zero_sum.or(Some(0.0));
    }
    if row.attributed > 0 {
        let n = row.attributed as f64;
        row.delta_e2e_ms_sum = Some(sums[0]);
        row.delta_prefill_ms_sum = Some(sums[1]);
        row.delta_per_token_ms_sum = Some(sums[2]);
        row.delta_extra_tokens_ms_sum = Some(sums[3]);
        row.delta_e2e_ms_mean = Some(sums[0] / n);
        row.delta_prefill_ms_mean = Some(sums[1] / n);
        row.delta_per_token_ms_mean = Some(sums[2] / n);
        row.delta_extra_tokens_ms_mean = Some(sums[3] / n);
        // One seed for the four terms: each resample takes the same pairs for all of them.
        let ci: Vec<Option<(f64, f64)>> = terms
            .iter()
            .map(|t| stats::bootstrap_mean_ci(t, opts.bootstrap_reps, seed ^ 0x01a7_e0c1))
            .collect();
        let lo_hi = |i: usize| (ci[i].map(|c| c.0), ci[i].map(|c| c.1));
        (row.delta_e2e_ms_mean_ci_low, row.delta_e2e_ms_mean_ci_high) = lo_hi(0);
        (
            row.delta_prefill_ms_mean_ci_low,
            row.delta_prefill_ms_mean_ci_high,
        ) = lo_hi(1);
        (
            row.delta_per_token_ms_mean_ci_low,
            row.delta_per_token_ms_mean_ci_high,
        ) = lo_hi(2);
        (
            row.delta_extra_tokens_ms_mean_ci_low,
            row.delta_extra_tokens_ms_mean_ci_high,
        ) = lo_hi(3);
    }
    let kv_pairs: Vec<(f64, f64)> = pairs
        .iter()
        .filter_map(|p| Some((p.b.kv_bytes?, p.m.kv_bytes?)))
        .collect();
    if !kv_pairs.is_empty() {
        let sb: f64 = kv_pairs.iter().map(|x| x.0).sum();
        let sm: f64 = kv_pairs.iter().map(|x| x.1).sum();
        row.kv_bytes_ratio = (sb > 0.0).then_some(sm / sb);
    }

    // Flags and failures by meta.
    let mut flags = Vec::new();
    // Keyed by the bits of (depth, length, hops).
    type CellKey = (Option<u64>, Option<u64>, Option<u64>);
    let mut cells: BTreeMap<CellKey, MetaCell> = BTreeMap::new();
    for p in &pairs {
        let neg = p.scores().is_some_and(|(b, m)| neg_at(b, m));
        let ratio = p.ratio();
        let longer = ratio.is_some_and(|r| r > 1.1);
        let limit = p.ran_to_limit() == Some(true);
        let slower = matches!((p.b.e2e_ms, p.m.e2e_ms), (Some(b), Some(m)) if m > 1.1 * b);
        let p2f = matches!((p.b.pass, p.m.pass), (Some(true), Some(false)));
        if p.m.depth.is_some() || p.m.length.is_some() || p.m.hops.is_some() {
            let key = (
                p.m.depth.map(f64::to_bits),
                p.m.length.map(f64::to_bits),
                p.m.hops.map(f64::to_bits),
            );
            let c = cells.entry(key).or_insert_with(|| MetaCell {
                task: task.into(),
                method: method.into(),
                depth: p.m.depth,
                length: p.m.length,
                hops: p.m.hops,
                n: 0,
                negatives: 0,
                pass_to_fail: 0,
            });
            c.n += 1;
            c.negatives += neg as usize;
            c.pass_to_fail += p2f as usize;
        }
        if !(neg || longer || limit || slower) {
            continue;
        }
        let att = attribution(p.b, p.m);
        let parts = match att {
            Some(Ok(a)) => [Some(a[0]), Some(a[1]), Some(a[2]), Some(a[3])],
            Some(Err(d)) => [d, None, None, None],
            None => [None; 4],
        };
        flags.push(Flag {
            model: model.into(),
            task: task.into(),
            method: method.into(),
            sample_id: p.m.sample_id.clone(),
            negative: neg,
            longer,
            ran_to_limit: limit,
            slower,
            baseline_score: p.b.score,
            score: p.m.score,
            baseline_tokens: p.b.output_tokens,
            tokens: p.m.output_tokens,
            length_ratio: ratio,
            baseline_e2e_ms: p.b.e2e_ms,
            e2e_ms: p.m.e2e_ms,
            delta_e2e_ms: parts[0],
            delta_prefill_ms: parts[1],
            delta_per_token_ms: parts[2],
            delta_extra_tokens_ms: parts[3],
            depth: p.m.depth,
            length: p.m.length,
            hops: p.m.hops,
        });
    }
    let mut cells: Vec<MetaCell> = cells.into_values().collect();
    cells.sort_by(|a, b| {
        (a.depth, a.length, a.hops)
            .partial_cmp(&(b.depth, b.length, b.hops))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    (row, negs, flags, cells, missing)
}
