//! The summary of one load point of `kvlens load` (one target at one request rate), with
//! vLLM's field names and definitions (`benchmarks/serve.py`, `calculate_metrics`) so that
//! dashboards built for `vllm bench serve` read it, and beside them what no serving
//! benchmark reports: the score of the answers and its paired difference from the baseline's.
//!
//! Definitions, as vLLM's: `duration` from the first scheduled send to the last answer;
//! TTFT from sending to the first piece of text; TPOT = (e2el − ttft) / (output tokens − 1)
//! over requests with more than one output token; ITL every gap between pieces of text, over
//! all requests; `std_` the population standard deviation; percentiles NumPy's linear ones.
//! A request meets the goodput objective when each of the given TTFT, TPOT and e2el limits
//! holds.

use crate::stats;
use kvlens_run::Record;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;

/// Service-level objectives for goodput, in ms (`ttft:500,tpot:50,e2el:5000`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Goodput {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
}

impl Goodput {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut g = Goodput::default();
        for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let (k, v) = item.split_once(':').ok_or_else(|| {
                format!("--goodput: `{item}` is not KEY:MS (e.g. ttft:500,tpot:50,e2el:5000)")
            })?;
            let ms: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|x: &f64| *x > 0.0 && x.is_finite())
                .ok_or_else(|| {
                    format!("--goodput: `{v}` for {k} is not a positive number of ms")
                })?;
            match k.trim() {
                "ttft" => g.ttft_ms = Some(ms),
                "tpot" => g.tpot_ms = Some(ms),
                "e2el" => g.e2el_ms = Some(ms),
                other => return Err(format!("--goodput: `{other}` is not ttft, tpot or e2el")),
            }
        }
        Ok(g)
    }

    pub fn is_set(&self) -> bool {
        self.ttft_ms.is_some() || self.tpot_ms.is_some() || self.e2el_ms.is_some()
    }

    fn met(&self, ttft: f64, tpot: f64, e2el: f64) -> bool {
        self.ttft_ms.is_none_or(|l| ttft <= l)
            && self.tpot_ms.is_none_or(|l| tpot <= l)
            && self.e2el_ms.is_none_or(|l| e2el <= l)
    }
}

/// One target at one rate.
#[derive(Debug, Clone, Serialize)]
pub struct PointSummary {
    pub target: String,
    pub request_rate: Value,
    pub burstiness: f64,
    pub max_concurrency: Option<usize>,
    pub completed: usize,
    pub failed: usize,
    /// Seconds.
    pub duration: f64,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub max_concurrent_requests: usize,
    /// Requests per second that met `--goodput` (absent without it).
    pub request_goodput: Option<f64>,
    pub mean_ttft_ms: f64,
    pub median_ttft_ms: f64,
    pub std_ttft_ms: f64,
    pub p90_ttft_ms: f64,
    pub p99_ttft_ms: f64,
    pub mean_tpot_ms: f64,
    pub median_tpot_ms: f64,
    pub std_tpot_ms: f64,
    pub p90_tpot_ms: f64,
    pub p99_tpot_ms: f64,
    pub mean_itl_ms: f64,
    pub median_itl_ms: f64,
    pub std_itl_ms: f64,
    pub p90_itl_ms: f64,
    pub p99_itl_ms: f64,
    pub mean_e2el_ms: f64,
    pub median_e2el_ms: f64,
    pub std_e2el_ms: f64,
    pub p90_e2el_ms: f64,
    pub p99_e2el_ms: f64,
    /// The mean score of the completed, scored requests, on `kvlens analyze`'s scale (100 ×
    /// the mean of the per-sample scores); absent for prompts without answers.
    pub score: Option<f64>,
    /// This target's score minus the baseline's at the same rate, over the prompts both
    /// answered, with the paired bootstrap 95 % interval.
    pub delta_score: Option<f64>,
    pub delta_score_ci_low: Option<f64>,
    pub delta_score_ci_high: Option<f64>,
    pub paired: usize,
    /// Share of the requests sent that met the goodput objective and passed (absent without
    /// `--goodput` or without scores).
    pub good_and_right: Option<f64>,
    /// Share of the requests sent that passed.
    pub pass_rate: Option<f64>,
    /// This process's own time per request (writing, parsing, bookkeeping), ms.
    pub client_ms_mean: f64,
    pub client_ms_p99: f64,
    /// How late the client itself sent requests against the schedule (not counting slot
    /// waits), ms.
    pub late_ms_p99: f64,
    pub late_ms_max: f64,
    /// The first failures' reasons, with how many requests failed so.
    pub errors: Vec<(String, usize)>,
}

/// The client is behind its schedule when its 99th-percentile lateness passes this, ms.
pub const LATE_MS: f64 = 10.0;

fn dist(v: &[f64]) -> [f64; 5] {
    if v.is_empty() {
        return [0.0; 5];
    }
    let m = stats::mean(v).unwrap_or(0.0);
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
    [
        m,
        stats::median(v).unwrap_or(0.0),
        var.sqrt(),
        stats::percentile(v, 90.0).unwrap_or(0.0),
        stats::percentile(v, 99.0).unwrap_or(0.0),
    ]
}

fn tpot(r: &Record) -> Option<f64> {
    (r.output_tokens > 1).then(|| (r.e2e_ms - r.ttft_ms) / (r.output_tokens - 1) as f64)
}

/// The most requests in flight at once, from each request's send and end times.
fn max_concurrent(records: &[&Record]) -> usize {
    let mut ev: Vec<(f64, i32)> = Vec::new();
    for r in records {
        if let Some(l) = &r.load {
            ev.push((l.sent_ms, 1));
            ev.push((l.done_ms.max(l.sent_ms), -1));
        }
    }
    // Ends before starts at the same instant.
    ev.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in ev {
        now += d;
        most = most.max(now);
    }
    most as usize
}

/// Summarizes `records` (one target's requests at one point); `baseline`, the baseline
/// target's at the same point, for the paired score difference (`None` for the baseline
/// itself). `duration_s` from the first scheduled send to the last answer.
pub fn summarize(
    target: &str,
    records: &[Record],
    baseline: Option<&[Record]>,
    goodput: &Goodput,
    bootstrap_reps: usize,
    seed: u64,
) -> PointSummary {
    let all: Vec<&Record> = records.iter().collect();
    let ok: Vec<&Record> = all.iter().copied().filter(|r| r.error.is_none()).collect();
    let load = all.iter().find_map(|r| r.load.as_ref());
    let duration = all
        .iter()
        .filter_map(|r| r.load.as_ref().map(|l| l.done_ms))
        .fold(0.0, f64::max)
        / 1e3;
    let per_s = |x: f64| if duration > 0.0 { x / duration } else { 0.0 };
    let input: usize = ok.iter().map(|r| r.prompt_tokens).sum();
    let output: usize = ok.iter().map(|r| r.output_tokens).sum();
    let ttft: Vec<f64> = ok.iter().map(|r| r.ttft_ms).collect();
    let tpots: Vec<f64> = ok.iter().filter_map(|r| tpot(r)).collect();
    let itl: Vec<f64> = ok
        .iter()
        .filter_map(|r| r.load.as_ref())
        .flat_map(|l| l.itl_ms.iter().copied())
        .collect();
    let e2el: Vec<f64> = ok.iter().map(|r| r.e2e_ms).collect();
    let good = |r: &Record| goodput.met(r.ttft_ms, tpot(r).unwrap_or(0.0), r.e2e_ms);
    let good_n = ok.iter().filter(|r| good(r)).count();
    let scores: Vec<f64> = ok.iter().filter_map(|r| r.score).collect();
    let score = (!scores.is_empty()).then(|| kvlens_score::dataset_score_sequential(&scores));
    let sent = all.len().max(1) as f64;
    let has_pass = ok.iter().any(|r| r.pass.is_some());
    let passed = ok.iter().filter(|r| r.pass == Some(true));
    let pass_rate = has_pass.then(|| passed.clone().count() as f64 / sent);
    let good_and_right =
        (has_pass && goodput.is_set()).then(|| passed.filter(|r| good(r)).count() as f64 / sent);

    let mut d = Vec::new();
    if let Some(base) = baseline {
        let b: HashMap<(&str, &str), f64> = base
            .iter()
            .filter(|r| r.error.is_none())
            .filter_map(|r| Some(((r.task.as_str(), r.sample_id.as_str()), r.score?)))
            .collect();
        for r in &ok {
            if let (Some(m), Some(bs)) = (r.score, b.get(&(r.task.as_str(), r.sample_id.as_str())))
            {
                d.push(100.0 * (m - bs));
            }
        }
    }
    let ci = stats::bootstrap_mean_ci(&d, bootstrap_reps, seed ^ stats::fnv1a(target));
    let client: Vec<f64> = all
        .iter()
        .filter_map(|r| r.load.as_ref().map(|l| l.client_ms))
        .collect();
    let late: Vec<f64> = all
        .iter()
        .filter_map(|r| r.load.as_ref().map(|l| l.late_ms))
        .collect();
    let mut errors: Vec<(String, usize)> = Vec::new();
    for e in all.iter().filter_map(|r| r.error.as_deref()) {
        if let Some(k) = errors.iter().position(|(m, _)| m == e) {
            errors[k].1 += 1;
        } else if errors.len() < 5 {
            errors.push((e.to_string(), 1));
        }
    }
    let [mean_ttft_ms, median_ttft_ms, std_ttft_ms, p90_ttft_ms, p99_ttft_ms] = dist(&ttft);
    let [mean_tpot_ms, median_tpot_ms, std_tpot_ms, p90_tpot_ms, p99_tpot_ms] = dist(&tpots);
    let [mean_itl_ms, median_itl_ms, std_itl_ms, p90_itl_ms, p99_itl_ms] = dist(&itl);
    let [mean_e2el_ms, median_e2el_ms, std_e2el_ms, p90_e2el_ms, p99_e2el_ms] = dist(&e2el);
    PointSummary {
        target: target.to_string(),
        request_rate: load.map_or(Value::Null, |l| l.request_rate.clone()),
        burstiness: load.map_or(1.0, |l| l.burstiness),
        max_concurrency: load.and_then(|l| l.max_concurrency),
        completed: ok.len(),
        failed: all.len() - ok.len(),
        duration,
        total_input_tokens: input,
        total_output_tokens: output,
        request_throughput: per_s(ok.len() as f64),
        output_throughput: per_s(output as f64),
        total_token_throughput: per_s((input + output) as f64),
        max_concurrent_requests: max_concurrent(&all),
        request_goodput: goodput.is_set().then(|| per_s(good_n as f64)),
        mean_ttft_ms,
        median_ttft_ms,
        std_ttft_ms,
        p90_ttft_ms,
        p99_ttft_ms,
        mean_tpot_ms,
        median_tpot_ms,
        std_tpot_ms,
        p90_tpot_ms,
        p99_tpot_ms,
        mean_itl_ms,
        median_itl_ms,
        std_itl_ms,
        p90_itl_ms,
        p99_itl_ms,
        mean_e2el_ms,
        median_e2el_ms,
        std_e2el_ms,
        p90_e2el_ms,
        p99_e2el_ms,
        score,
        delta_score: stats::mean(&d),
        delta_score_ci_low: ci.map(|c| c.0),
        delta_score_ci_high: ci.map(|c| c.1),
        paired: d.len(),
        good_and_right,
        pass_rate,
        client_ms_mean: stats::mean(&client).unwrap_or(0.0),
        client_ms_p99: stats::percentile(&client, 99.0).unwrap_or(0.0),
        late_ms_p99: stats::percentile(&late, 99.0).unwrap_or(0.0),
        late_ms_max: late.iter().copied().fold(0.0, f64::max),
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goodput_parses_and_refuses_nonsense() {
        let g = Goodput::parse("ttft:500, tpot:50").unwrap();
        assert_eq!(g.ttft_ms, Some(500.0));
        assert_eq!(g.tpot_ms, Some(50.0));
        assert_eq!(g.e2el_ms, None);
        assert!(g.met(500.0, 10.0, 1e9) && !g.met(501.0, 10.0, 0.0));
        for bad in ["ttft", "ttft:-1", "speed:3", "e2el:x"] {
            assert!(Goodput::parse(bad).is_err(), "{bad}");
        }
    }
}
