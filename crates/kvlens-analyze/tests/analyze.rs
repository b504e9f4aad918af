//! The analyses on records the tests write.

use kvlens_analyze::analysis::{analyze, Options, Rule};
use kvlens_analyze::{load_runs, output};
use kvlens_run::Record;
use serde_json::{json, Value};
use std::path::Path;

struct S {
    task: &'static str,
    id: String,
    method: &'static str,
    score: f64,
    pass: bool,
    tokens: usize,
    finish: &'static str,
    prefill: f64,
    e2e: f64,
    kv: u64,
}

fn s(task: &'static str, id: usize, method: &'static str, score: f64) -> S {
    S {
        task,
        id: format!("s{id}"),
        method,
        score,
        pass: score >= 0.5,
        tokens: 10,
        finish: "eos",
        prefill: 100.0,
        e2e: 200.0,
        kv: if method == "full" { 1000 } else { 250 },
    }
}

fn record(x: &S) -> Record {
    serde_json::from_value(json!({
        "run_id": "t", "model": "m", "task": x.task, "sample_id": x.id, "method": x.method,
        "prompt_hash": "", "prompt_tokens": 100, "output_text": "out", "output_tokens": x.tokens,
        "finish_reason": x.finish, "max_new_tokens": 32, "prefill_ms": x.prefill, "ttft_ms": x.prefill,
        "decode_ms": x.e2e - x.prefill, "e2e_ms": x.e2e, "kv_bytes_peak": x.kv, "kv_bytes_full": 1000,
        "kv_tokens_kept": 1.0, "answers": ["a"], "score": x.score, "pass": x.pass,
        "meta": {"depth": 0.5, "context_length": 1000},
    }))
    .expect("a valid record")
}

fn write_run(dir: &Path, samples: &[S]) {
    use std::collections::BTreeMap;
    let mut by: BTreeMap<(&str, &str), Vec<Record>> = BTreeMap::new();
    for x in samples {
        by.entry((x.task, x.method)).or_default().push(record(x));
    }
    for ((task, method), rs) in by {
        let p = dir
            .join(task)
            .join(format!("{}.jsonl", method.replace(':', "_")));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        kvlens_run::store::write_atomic(&p, &rs).unwrap();
    }
}

fn opts(rule: Rule, thresholds: &[f64]) -> Options {
    Options {
        rule,
        thresholds: thresholds.to_vec(),
        delta: thresholds[0],
        ..Options::default()
    }
}

/// Baseline scores with median 0: the paper's rule counts samples that both score 0.
fn median_zero_run(dir: &Path) {
    let b = [0.0, 0.0, 0.0, 1.0, 0.5];
    let m = [0.0, 0.0, 0.5, 0.5, 0.5];
    let mut v = Vec::new();
    for i in 0..5 {
        v.push(s("qa", i, "full", b[i]));
        v.push(s("qa", i, "snapkv:budget=64", m[i]));
        v.push(s("qa", i, "h2o:budget=64", if i == 3 { 0.0 } else { m[i] }));
    }
    write_run(dir, &v);
}

#[test]
fn negatives_paper_rule_counts_both_zero_default_does_not() {
    let dir = tempfile::tempdir().unwrap();
    median_zero_run(dir.path());
    let samples = load_runs(&[dir.path().to_path_buf()]).unwrap();
    let paper = analyze(&samples, &opts(Rule::Paper, &[10.0])).unwrap();
    let n = paper
        .negatives
        .iter()
        .find(|r| r.method == "snapkv:budget=64")
        .unwrap();
    assert_eq!((n.count, n.both_zero), (3, 2));
    let default = analyze(&samples, &opts(Rule::Default, &[10.0])).unwrap();
    let n = default
        .negatives
        .iter()
        .find(|r| r.method == "snapkv:budget=64")
        .unwrap();
    assert_eq!((n.count, n.both_zero), (1, 0));
}

#[test]
fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
    let dir = tempfile::tempdir().unwrap();
    let b = [0.2, 0.4, 0.6, 0.8];
    let mut v = Vec::new();
    for (i, &x) in b.iter().enumerate() {
        v.push(s("qa", i, "full", x));
        v.push(s("qa", i, "int8", 0.0));
    }
    write_run(dir.path(), &v);
    let samples = load_runs(&[dir.path().to_path_buf()]).unwrap();
    let a = analyze(&samples, &opts(Rule::Default, &[10.0])).unwrap();
    // Median 0.5: only the samples at 0.6 and 0.8 can be negative.
    assert_eq!(a.negatives[0].count, 2);
}

#[test]
fn joint_sets_are_named_as_typed_and_need_every_method() {
    let dir = tempfile::tempdir().unwrap();
    median_zero_run(dir.path());
    let samples = load_runs(&[dir.path().to_path_buf()]).unwrap();
    let mut o = opts(Rule::Default, &[10.0, 60.0]);
    o.joint = vec!["snapkv+h2o".into()];
    let a = analyze(&samples, &o).unwrap();
    let j: Vec<_> = a
        .negatives
        .iter()
        .filter(|r| r.method == "snapkv+h2o")
        .collect();
    assert_eq!(j.len(), 2);
    // Sample 3 (b = 1): snapkv 0.5, h2o 0 → negative for both at 10 %; at 60 % only h2o.
    assert_eq!(j[0].count, 1);
    assert_eq!(j[1].count, 0);
    let h = a
        .negatives
        .iter()
        .find(|r| r.method == "h2o:budget=64" && r.threshold == 60.0)
        .unwrap();
    assert_eq!(h.count, 1);
}

#[test]
fn flips_and_mcnemar() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = Vec::new();
    // 9 pass→fail, 1 fail→pass, 5 unchanged passes.
    for i in 0..15 {
        let (b, m) = match i {
            0..=8 => (1.0, 0.0),
            9 => (0.0, 1.0),
            _ => (1.0, 1.0),
        };
        v.push(s("qa", i, "full", b));
        v.push(s("qa", i, "int8", m));
    }
    write_run(dir.path(), &v);
    let samples = load_runs(&[dir.path().to_path_buf()]).unwrap();
    let a = analyze(&samples, &Options::default()).unwrap();
    let r = a.rows.iter().find(|r| r.method == "int8").unwrap();
    assert_eq!((r.pass_to_fail, r.fail_to_pass), (Some(9), Some(1)));
    assert!((r.mcnemar_p.unwrap() - 22.0 / 1024.0).abs() < 1e-12);
    let (lo, hi) = (r.delta_ci_low.unwrap(), r.delta_ci_high.unwrap());
    assert!(lo < r.delta.unwrap() && r.delta.unwrap() < hi && hi < 0.0);
    // Seeded: the same interval every time.
    let b = analyze(&samples, &Options::default()).unwrap();
    let r2 = b.rows.iter().find(|r| r.method == "int8").unwrap();
    assert_eq!(r.delta_ci_low, r2.delta_ci_low);
}

#[test]
fn attribution_parts_add_up_and_zero_length_is_apart() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = Vec::new();
    let cases = [
        (10, 200.0, 100.0, 14, 330.0, 80.0),
        (20, 500.0, 120.0, 9, 260.0, 60.0),
        (5, 150.0, 90.0, 50, 900.0, 95.0),
    ];
    for (i, &(lb, eb, pb, lm, em, pm)) in cases.iter().enumerate() {
        let mut b = s("qa", i, "full", 1.0);
        (b.tokens, b.e2e, b.prefill) = (lb, eb, pb);
        let mut m = s("qa", i, "streamingllm", 1.0);
        (m.tokens, m.e2e, m.prefill, m.finish) = (lm, em, pm, "length");
        v.push(b);
        v.push(m);
    }
    let mut b = s("qa", 9, "full", 1.0);
    b.tokens = 0;
    let m = s("qa", 9, "streamingllm", 1.0);
    v.push(b);
    v.push(m);
    write_run(dir.path(), &v);
    let samples = load_runs(&[dir.path().to_path_buf()]).unwrap();
    let a = analyze(&samples, &Options::default()).unwrap();
    let r = a.rows.iter().find(|r| r.method == "streamingllm").unwrap();
    assert_eq!((r.attributed, r.zero_length), (3, 1));
    let parts = r.delta_prefill_ms_sum.unwrap()
        + r.delta_per_token_ms_sum.unwrap()
        + r.delta_extra_tokens_ms_sum.unwrap();
    let direct: f64 = cases.iter().map(|c| c.4 - c.1).sum();
    assert!((parts - direct).abs() < 1e-9);
    assert!((r.delta_e2e_ms_sum.unwrap() - direct).abs() < 1e-9);
    assert_eq!(r.pct_ran_to_limit, Some(75.0)); // the L = 0 pair stopped on eos
    assert_eq!(r.kv_bytes_ratio, Some(0.25));
    for f in a.flags.iter().filter(|f| f.delta_prefill_ms.is_some()) {
        let sum = f.delta_prefill_ms.unwrap()
            + f.delta_per_token_ms.unwrap()
            + f.delta_extra_tokens_ms.unwrap();
        assert!((sum - f.delta_e2e_ms.unwrap()).abs() < 1e-9);
    }
}

#[test]
fn missing_samples_are_reported_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let v = vec![
        s("qa", 0, "full", 1.0),
        s("qa", 1, "full", 1.0),
        s("qa", 0, "kivi", 1.0),
        s("qa", 2, "kivi", 1.0),
    ];
    write_run(dir.path(), &v);
    let samples = load_runs(&[dir.path().to_path_buf()]).unwrap();
    let a = analyze(&samples, &Options::default()).unwrap();
    let r = a.rows.iter().find(|r| r.method == "kivi").unwrap();
    assert_eq!((r.paired, r.missing_baseline, r.missing_method), (1, 1, 1));
    let mut m: Vec<(String, &str)> = a
        .missing
        .iter()
        .map(|m| (m.sample_id.clone(), m.missing_side))
        .collect();
    m.sort();
    assert_eq!(m, vec![("s1".into(), "method"), ("s2".into(), "baseline")]);
}

#[test]
fn json_interface_shape_and_tables_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    median_zero_run(dir.path());
    let samples = load_runs(&[dir.path().to_path_buf()]).unwrap();
    let mut o = opts(Rule::Paper, &[1.0, 2.0, 4.0]);
    o.joint = vec!["snapkv:budget=64+h2o".into()];
    let a = analyze(&samples, &o).unwrap();
    let v = output::json(&a);
    let obj = v.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["latency", "negatives", "noise", "tasks"]);
    let negs = obj["negatives"].as_array().unwrap();
    // 2 methods + 1 joint set, 1 task, 3 thresholds.
    assert_eq!(negs.len(), 9);
    for n in negs {
        let mut k: Vec<&str> = n.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        k.sort();
        assert_eq!(k, ["both_zero", "count", "method", "task", "threshold"]);
    }
    assert!(negs.iter().any(|n| n["method"] == "snapkv:budget=64+h2o"));
    let tasks = obj["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3);
    assert!(tasks
        .iter()
        .all(|t| t["task"] == "qa" && t.get("kv_bytes_ratio").is_some()));
    let out = dir.path().join("analysis");
    output::write_tables(&a, &out).unwrap();
    for f in ["tasks", "negatives", "flags", "by_meta", "missing"] {
        assert!(out.join(format!("{f}.csv")).exists(), "{f}.csv");
        assert!(out.join(format!("{f}.parquet")).exists(), "{f}.parquet");
    }
    let noise: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("noise.json")).unwrap()).unwrap();
    assert!(noise.get("noise").is_some() && noise["latency"].is_array());
    let csv = std::fs::read_to_string(out.join("tasks.csv")).unwrap();
    assert!(csv.starts_with("model,task,method,n,"));
    assert!(csv
        .lines()
        .next()
        .unwrap()
        .contains("delta_per_token_ms_mean_ci_low"));
    assert_eq!(csv.lines().count(), 4);
    let _: Value = v;
}

#[test]
fn the_fast_reader_agrees_with_the_record_type_and_skips_torn_lines() {
    let dir = tempfile::tempdir().unwrap();
    median_zero_run(dir.path());
    let mut fast = load_runs(&[dir.path().to_path_buf()]).unwrap();
    let mut slow: Vec<kvlens_analyze::Sample> = kvlens_run::store::read_run(dir.path())
        .unwrap()
        .iter()
        .map(kvlens_analyze::Sample::from_record)
        .collect();
    let key = |s: &kvlens_analyze::Sample| (s.method.clone(), s.sample_id.clone());
    fast.sort_by_key(key);
    slow.sort_by_key(key);
    assert_eq!(fast, slow);
    // A torn last line is skipped; a broken complete line names the file and line.
    let f = dir.path().join("qa").join("full.jsonl");
    let mut text = std::fs::read_to_string(&f).unwrap();
    text.push_str("{\"run_id\": \"t\", \"mod");
    std::fs::write(&f, &text).unwrap();
    assert_eq!(load_runs(&[dir.path().to_path_buf()]).unwrap().len(), 15);
    text.push('\n');
    std::fs::write(&f, &text).unwrap();
    let e = load_runs(&[dir.path().to_path_buf()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("full.jsonl line 6"), "{e}");
}

#[test]
fn heat_maps_of_failures_by_meta_are_drawn_per_task_with_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    median_zero_run(dir.path());
    let samples = load_runs(&[dir.path().to_path_buf()]).unwrap();
    let a = analyze(&samples, &opts(Rule::Paper, &[10.0])).unwrap();
    let files = kvlens_analyze::plots::draw_all(&a, &samples, &dir.path().join("plots")).unwrap();
    let svg = files
        .iter()
        .find(|p| p.ends_with("by_meta_qa.svg"))
        .expect("a heat map for task qa");
    assert!(files.iter().any(|p| p.ends_with("by_meta_qa.png")));
    let text = std::fs::read_to_string(svg).unwrap();
    // Every method's cell (depth 0.5, 1000 tokens) is labelled negatives/samples.
    for m in a.methods.iter().filter(|m| **m != a.baseline) {
        let (neg, n) = a
            .by_meta
            .iter()
            .filter(|c| &c.method == m && c.task == "qa")
            .fold((0, 0), |(x, y), c| (x + c.negatives, y + c.n));
        assert!(n > 0, "{m}");
        assert!(text.contains(&format!(">\n{neg}/{n}\n<")), "{m}: {neg}/{n}");
    }
}

#[test]
fn latency_terms_get_intervals_and_a_noisy_baseline_is_called_noise() {
    // The baseline's per-token time varies by ±20 % around 10 ms at one prompt length; the
    // method's prefill is 50 ms slower on every sample and its per-token time differs by
    // ±0.5 ms in pairs that cancel: a real Δprefill, a per-token term that is noise.
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 9u64;
    let mut unit = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
    };
    let mut v = Vec::new();
    for i in 0..40 {
        let t = 10.0 * (1.0 + 0.2 * unit());
        let wobble = if i % 2 == 0 { 0.5 } else { -0.5 };
        let mut b = s("qa", i, "full", 1.0);
        (b.prefill, b.e2e) = (100.0, 100.0 + 10.0 * t);
        let mut m = s("qa", i, "snapkv", 1.0);
        (m.prefill, m.e2e) = (150.0, 150.0 + 10.0 * (t + wobble));
        v.push(b);
        v.push(m);
    }
    write_run(dir.path(), &v);
    let samples = load_runs(&[dir.path().to_path_buf()]).unwrap();
    let a = analyze(&samples, &Options::default()).unwrap();
    let r = a.rows.iter().find(|r| r.method == "snapkv").unwrap();
    let (plo, phi) = (
        r.delta_prefill_ms_mean_ci_low.unwrap(),
        r.delta_prefill_ms_mean_ci_high.unwrap(),
    );
    assert!(
        (plo - 50.0).abs() < 1e-9 && (phi - 50.0).abs() < 1e-9,
        "{plo} {phi}"
    );
    let (tlo, thi) = (
        r.delta_per_token_ms_mean_ci_low.unwrap(),
        r.delta_per_token_ms_mean_ci_high.unwrap(),
    );
    assert!(tlo < 0.0 && thi > 0.0, "{tlo} {thi}");
    // The table marks the per-token term (and only it, with the extra-token term of 0).
    let md = output::markdown(&a);
    let line = md.lines().find(|l| l.contains("snapkv")).unwrap();
    assert!(line.contains("+50 +0~ +0~"), "{line}");
    // The noise floor: pairs of like prompt length differ by about 2/3 of the ±20 %.
    let n = a.noise.as_ref().expect("a noise floor");
    assert!(n.relative_spread > 0.05 && n.relative_spread < 0.3, "{n:?}");
    assert!(output::noise_sentence(&a).starts_with("Warning:"));
    let j = output::json(&a);
    assert!(j["noise"]["relative_spread"].as_f64().is_some());
    let t = j["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["method"] == "snapkv")
        .unwrap();
    for k in ["e2e", "prefill", "per_token", "extra_tokens"] {
        for side in ["low", "high"] {
            let f = format!("delta_{k}_ms_mean_ci_{side}");
            assert!(t[&f].as_f64().is_some(), "{f}");
        }
    }
    let pooled = a.latency.iter().find(|l| l.method == "snapkv").unwrap();
    assert_eq!(pooled.pairs, 40);
}

/// The study's extractor: the bar is the task's mean baseline score (here 0.475; the median is
/// 0.425), and a score exactly at b·(1 − δ) is negative.
#[test]
fn the_paper_mean_rule_uses_the_mean_and_keeps_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let b = [1.0, 1.0, 0.4, 0.0, 0.0, 0.45];
    let m = [0.9, 1.0, 0.0, 0.0, 0.0, 0.0];
    let mut v = Vec::new();
    for i in 0..b.len() {
        v.push(s("qa", i, "full", b[i]));
        v.push(s("qa", i, "snapkv:budget=64", m[i]));
    }
    write_run(dir.path(), &v);
    let samples = load_runs(&[dir.path().to_path_buf()]).unwrap();
    let negatives = |rule: Rule| -> Vec<String> {
        let a = analyze(&samples, &opts(rule, &[10.0])).unwrap();
        let mut ids: Vec<String> = a
            .flags
            .iter()
            .filter(|f| f.negative)
            .map(|f| f.sample_id.clone())
            .collect();
        ids.sort();
        ids
    };
    // Mean 0.475: s0 (m = 0.9 = 1.0 × 0.9, at the bound) only; 0.45 and 0.4 are below it.
    assert_eq!(negatives(Rule::PaperMean), vec!["s0"]);
    // The median, 0.425, lets s5 in (and still not s2, at 0.4).
    assert_eq!(negatives(Rule::Paper), vec!["s0", "s5"]);
    assert_eq!("paper-mean".parse::<Rule>(), Ok(Rule::PaperMean));
}
