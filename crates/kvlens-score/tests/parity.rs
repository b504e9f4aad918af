//! Agreement with the reference implementations on the corpus of
//! `scripts/score_reference.sh`: every pair within 1e-9, every dataset score exact, every jieba
//! segmentation identical. Failures list every disagreement.

use kvlens_score::{dataset_score, dataset_score_sequential, longbench, score, Metric};
use serde::Deserialize;
use std::fmt::Write;

const TOLERANCE: f64 = 1e-9;

#[derive(Deserialize)]
struct Pair {
    metric: String,
    prediction: String,
    answers: Vec<String>,
    all_classes: Vec<String>,
    expected: f64,
}

#[derive(Deserialize)]
struct Group {
    name: String,
    pairs: Option<Vec<usize>>,
    scores: Option<Vec<f64>>,
    expected: f64,
    expected_sequential: f64,
}

#[derive(Deserialize)]
struct Segmentation {
    text: String,
    tokens: Vec<String>,
}

fn fixture<T: for<'de> Deserialize<'de>>(name: &str) -> Vec<T> {
    let path = format!(
        "{}/tests/fixtures/{name}",
        std::path::PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        )
        .display()
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{path} line {}: {e}", i + 1))
        })
        .collect()
}

fn clip(s: &str) -> String {
    let mut c: String = s.chars().take(120).collect();
    if c.len() < s.len() {
        c.push('…');
    }
    format!("{c:?}")
}

#[test]
fn every_pair_agrees_with_the_reference() {
    let pairs: Vec<Pair> = fixture("parity.jsonl");
    assert!(pairs.len() >= 3000, "the corpus has {} pairs", pairs.len());
    // Load the segmenter first so the timing below is the scoring alone.
    let load = std::time::Instant::now();
    longbench::jieba_cut("预热");
    println!(
        "jieba dictionary loaded in {:.3} s",
        load.elapsed().as_secs_f64()
    );
    let started = std::time::Instant::now();
    let mut per_metric: Vec<(Metric, usize, f64)> = Vec::new();
    let got: Vec<f64> = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let metric: Metric = p
                .metric
                .parse()
                .unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
            let t = std::time::Instant::now();
            let s = score(metric, &p.prediction, &p.answers, &p.all_classes);
            match per_metric.iter_mut().find(|(m, _, _)| *m == metric) {
                Some(entry) => {
                    entry.1 += 1;
                    entry.2 += t.elapsed().as_secs_f64();
                }
                None => per_metric.push((metric, 1, t.elapsed().as_secs_f64())),
            }
            s
        })
        .collect();
    // Shown with `--nocapture`.
    println!(
        "scored {} pairs in {:.3} s",
        pairs.len(),
        started.elapsed().as_secs_f64()
    );
    for (m, n, secs) in &per_metric {
        println!("  {:18} {n:5} pairs {secs:8.4} s", m.name());
    }
    let mut failures = String::new();
    let mut count = 0;
    for (i, (p, &got)) in pairs.iter().zip(&got).enumerate() {
        if (got - p.expected).abs() > TOLERANCE {
            count += 1;
            let answers: Vec<String> = p.answers.iter().map(|a| clip(a)).collect();
            let _ = writeln!(
                failures,
                "line {} {}: got {got}, expected {} | prediction {} | answers [{}]",
                i + 1,
                p.metric,
                p.expected,
                clip(&p.prediction),
                answers.join(", ")
            );
        }
    }
    assert!(
        count == 0,
        "{count} of {} pairs disagree:\n{failures}",
        pairs.len()
    );
}

#[test]
fn dataset_scores_agree_with_numpy_and_eval_py() {
    let pairs: Vec<Pair> = fixture("parity.jsonl");
    let groups: Vec<Group> = fixture("dataset_scores.jsonl");
    let mut failures = String::new();
    for g in &groups {
        let scores: Vec<f64> = match (&g.scores, &g.pairs) {
            (Some(s), _) => s.clone(),
            (None, Some(idx)) => idx.iter().map(|&i| pairs[i].expected).collect(),
            (None, None) => panic!("group {} has neither scores nor pairs", g.name),
        };
        let (np, seq) = (dataset_score(&scores), dataset_score_sequential(&scores));
        if np != g.expected || seq != g.expected_sequential {
            let _ = writeln!(
                failures,
                "{}: numpy-style {np} (expected {}), sequential {seq} (expected {})",
                g.name, g.expected, g.expected_sequential
            );
        }
    }
    assert!(failures.is_empty(), "dataset scores disagree:\n{failures}");
}

#[test]
fn jieba_segmentation_matches_python() {
    let texts: Vec<Segmentation> = fixture("jieba_tokens.jsonl");
    let mut failures = String::new();
    for (i, t) in texts.iter().enumerate() {
        let got = longbench::jieba_cut(&t.text);
        if got != t.tokens {
            let _ = writeln!(
                failures,
                "line {}: {:?}\n  got      {got:?}\n  expected {:?}",
                i + 1,
                t.text,
                t.tokens
            );
        }
    }
    assert!(failures.is_empty(), "segmentations differ:\n{failures}");
}
