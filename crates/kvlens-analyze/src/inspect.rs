//! One sample under every method: answers, outputs, scores, lengths, timings, the
//! generator's `meta`, and where each output first leaves the baseline's.

use crate::error::{AnalyzeError, Result};
use kvlens_run::Record;
use std::fmt::Write as _;

/// The character offset where `a` and `b` first differ; `None` when equal.
pub fn first_divergence(a: &str, b: &str) -> Option<usize> {
    let mut ai = a.chars();
    let mut bi = b.chars();
    let mut i = 0;
    loop {
        match (ai.next(), bi.next()) {
            (None, None) => return None,
            (Some(x), Some(y)) if x == y => i += 1,
            _ => return Some(i),
        }
    }
}

/// Words of `s` around character `at`, for showing a divergence.
fn context(s: &str, at: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    let lo = at.saturating_sub(20);
    let hi = (at + 30).min(chars.len());
    let before: String = chars[lo..at.min(chars.len())].iter().collect();
    let after: String = chars[at.min(chars.len())..hi].iter().collect();
    format!(
        "…{}⟦{}⟧…",
        before.replace('\n', "⏎"),
        after.replace('\n', "⏎")
    )
}

/// The text `kvlens inspect` prints. `methods` (names, specs or labels) narrows the methods;
/// the baseline comes first.
pub fn inspect(
    records: &[Record],
    task: &str,
    sample: &str,
    methods: &[String],
    baseline: &str,
    source: Option<&kvlens_tasks::Sample>,
) -> Result<String> {
    let mut rs: Vec<&Record> = records
        .iter()
        .filter(|r| r.task == task && r.sample_id == sample)
        .collect();
    if rs.is_empty() {
        return Err(AnalyzeError::Invalid(format!(
            "no record of task `{task}` sample `{sample}`"
        )));
    }
    let all: Vec<String> = rs.iter().map(|r| r.method.clone()).collect();
    let base = crate::analysis::resolve_method(baseline, &all).ok();
    if !methods.is_empty() {
        let mut keep = Vec::new();
        for m in methods {
            keep.push(crate::analysis::resolve_method(m, &all)?);
        }
        if let Some(b) = &base {
            keep.push(b.clone());
        }
        rs.retain(|r| keep.contains(&r.method));
    }
    rs.sort_by_key(|r| (Some(&r.method) != base.as_ref(), r.method.clone()));
    let mut s = String::new();
    let first = rs[0];
    let _ = writeln!(s, "task {task} · sample {sample} · model {}", first.model);
    let _ = writeln!(
        s,
        "prompt: {} tokens{} (hash {})",
        first.prompt_tokens,
        if first.truncated { ", truncated" } else { "" },
        first.prompt_hash
    );
    match source {
        Some(sample) => s.push_str(&sample_fields(sample)),
        None => s.push_str(
            "(the question is not in the records, and the task's data was not found: run from \
             the folder the run was made in, or set KVLENS_DATASETS)\n",
        ),
    }
    if !first.meta.is_empty() {
        let _ = writeln!(s, "meta: {}", serde_json::Value::Object(first.meta.clone()));
    }
    let _ = writeln!(s, "answers: {:?}", first.answers);
    let base_text = base
        .as_ref()
        .and_then(|b| rs.iter().find(|r| &r.method == b))
        .map(|r| r.output_text.clone());
    for r in &rs {
        let _ = writeln!(s, "\n── {} ──", r.method);
        let score = r.score.map_or("–".into(), |x| format!("{x:.3}"));
        let pass = r.pass.map_or("–", |p| if p { "pass" } else { "fail" });
        let _ = writeln!(
            s,
            "score {score} ({pass}) · {} tokens · {} · prefill {:.0} ms · e2e {:.0} ms · KV {} bytes",
            r.output_tokens,
            r.finish_reason.as_deref().unwrap_or("–"),
            r.prefill_ms,
            r.e2e_ms,
            if r.kv_bytes_end > 0 { r.kv_bytes_end } else { r.kv_bytes_peak },
        );
        if let Some(e) = &r.error {
            let _ = writeln!(s, "error: {e}");
        }
        if Some(&r.method) != base.as_ref() {
            if let Some(bt) = &base_text {
                match first_divergence(bt, &r.output_text) {
                    None => s.push_str("same output as the baseline\n"),
                    Some(at) => {
                        let _ = writeln!(
                            s,
                            "diverges at character {at}: baseline {} / here {}",
                            context(bt, at),
                            context(&r.output_text, at)
                        );
                    }
                }
            }
        }
        let _ = writeln!(s, "{}", r.output_text);
    }
    Ok(s)
}

/// The sample's template fields, short ones whole, long ones (contexts) by their ends.
pub fn sample_fields(sample: &kvlens_tasks::Sample) -> String {
    let mut fields: Vec<(&String, String)> = sample
        .fields
        .iter()
        .map(|(k, v)| (k, kvlens_tasks::sample::py_str(v)))
        .collect();
    fields.sort_by_key(|(k, v)| (v.chars().count(), (*k).clone()));
    let mut s = String::new();
    for (k, v) in fields {
        let n = v.chars().count();
        if n <= 400 {
            let _ = writeln!(s, "{k}: {v}");
        } else {
            let head: String = v.chars().take(160).collect();
            let tail: String = v.chars().skip(n - 160).collect();
            let _ = writeln!(s, "{k}: {n} characters: {head} […] {tail}");
        }
    }
    s
}
