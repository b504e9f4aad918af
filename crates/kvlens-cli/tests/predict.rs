//! `kvlens bench --profile` → `kvlens run` (the trace) → `kvlens predict throughput`, end to
//! end on the default model: the profile fits, the simulation admits by what each method's
//! cache holds, the arrivals are `kvlens load`'s, and bad inputs are refused by name.

use std::path::Path;

mod common;
use common::{cmd, ok};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_profile_and_a_trace_predict_each_method_and_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("datasets");
    ok(cmd(&[
        "datasets",
        "generate",
        "--tasks",
        "passkey",
        "--lengths",
        "180,190,200,210,220,230",
        "--out",
        s(&data),
    ])
    .output()
    .unwrap());
    let methods = "full,int8";
    let profile = tmp.path().join("profile.jsonl");
    let o = ok(cmd(&[
        "bench",
        "--offline",
        "--methods",
        methods,
        "--batch",
        "1,2,4",
        "--context",
        "64,128,256",
        "--new-tokens",
        "4",
        "--profile",
        s(&profile),
        "--json",
    ])
    .output()
    .unwrap());
    // The fit of each method, as `predict fit --json` gives it.
    let fits: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(fits.as_array().unwrap().len(), 2);
    // Every step of the grid is in the profile, decode steps with their batch's rows.
    let text = std::fs::read_to_string(&profile).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "model");
    let decode: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["type"] == "step" && l["phase"] == "decode")
        .collect();
    assert!(decode
        .iter()
        .all(|l| l["decode_rows"] == l["batch"] && l["prompt_tokens"] == 0));
    // One prefill of 4 sequences per context, then 4 decode steps at each of batch 4, 2, 1
    // (staggered ends): 2 methods × 3 contexts × 12.
    assert_eq!(decode.len(), 2 * 3 * 12);
    for b in [1, 2, 4] {
        assert_eq!(decode.iter().filter(|l| l["batch"] == b).count(), 2 * 3 * 4);
    }

    let fit = ok(cmd(&["predict", "fit", s(&profile), "--json"])
        .output()
        .unwrap());
    let fit: serde_json::Value = serde_json::from_str(&fit).unwrap();
    for m in fit.as_array().unwrap() {
        // 9 decode points and 3 prefill ones, each left out in turn.
        assert_eq!(m["held_out"].as_array().unwrap().len(), 12, "{m}");
        assert!(m["coefficients"]["ms_per_step"].as_f64().unwrap() >= 0.0);
    }

    let trace = tmp.path().join("trace");
    ok(cmd(&[
        "run",
        "--offline",
        "--datasets",
        s(&data),
        "--tasks",
        "passkey",
        "--methods",
        methods,
        "--max-new-tokens",
        "8",
        "--out",
        s(&trace),
    ])
    .output()
    .unwrap());
    // A budget of 1.2 of the largest full cache (the prompts differ by under 15 %): one full
    // cache fits at a time, two int8 ones (about half the bytes), never three.
    let peak = common::record_values(&trace)
        .iter()
        .filter(|r| r["method"] == "full")
        .map(|r| r["kv_bytes_peak"].as_u64().unwrap())
        .max()
        .unwrap();
    let budget = (peak * 6 / 5).to_string();
    let predict = |extra: &[&str]| {
        let mut args = vec![
            "predict",
            "throughput",
            "--profile",
            s(&profile),
            "--trace",
            s(&trace),
            "--datasets",
            s(&data),
            "--kv-budget",
            &budget,
            "--num-prompts",
            "6",
            "--seed",
            "3",
        ];
        args.extend_from_slice(extra);
        cmd(&args).output().unwrap()
    };
    let out = ok(predict(&["--rates", "0.001,inf", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    let get = |method: &str, rate: serde_json::Value| {
        results
            .iter()
            .find(|r| {
                r["method"].as_str().unwrap().starts_with(method) && r["request_rate"] == rate
            })
            .unwrap()
    };
    for r in results {
        assert_eq!(r["completed"], 6, "{r}");
        for k in [
            "request_throughput",
            "output_throughput",
            "median_e2el_ms",
            "p99_e2el_ms",
            "median_ttft_ms",
        ] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {r}");
        }
    }
    // One request every ~17 minutes: each runs alone.
    let slow = get("full", serde_json::json!(0.001));
    assert_eq!(slow["max_concurrent_requests"], 1);
    assert_eq!(slow["peak_batch"], 1);
    // The arrivals are kvlens load's: the duration spans the schedule's last send (seed 3).
    let last =
        kvlens_run::arrivals::schedule(6, kvlens_run::arrivals::Rate::PerSecond(0.001), 1.0, 3)
            .unwrap()
            .into_iter()
            .fold(0.0, f64::max);
    let d = slow["duration"].as_f64().unwrap();
    assert!(d > last && d < last + 60.0, "{d} vs last arrival {last}");
    // All at once under that budget: int8 runs two at a time, full one.
    let full = get("full", serde_json::json!("inf"));
    let int8 = get("int8", serde_json::json!("inf"));
    assert_eq!(full["peak_batch"], 1, "{full}");
    assert_eq!(int8["peak_batch"], 2, "{int8}");
    assert!(full["median_ttft_ms"].as_f64().unwrap() > slow["median_ttft_ms"].as_f64().unwrap());

    // Planner answers.
    let out = ok(predict(&[
        "--request-rate",
        "0.5",
        "--slo",
        "e2el:60000",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for p in v["slo"].as_array().unwrap() {
        assert!(p["max_request_rate"].as_f64().unwrap() > 0.0, "{p}");
        assert!(
            p["budgets"][0]["kv_budget_needed"].as_u64().unwrap() > 0,
            "{p}"
        );
    }

    // Bad input is refused by name.
    let o = predict(&["--method", "h2o"]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("has no steps of h2o"), "{e}");
    let bad = tmp.path().join("bad.jsonl");
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let k = lines
        .iter()
        .position(|l| l.contains("\"type\":\"step\""))
        .unwrap();
    lines[k] = lines[k].replace("\"ms\":", "\"ms\":-");
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let o = cmd(&["predict", "fit", s(&bad)]).output().unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains(&format!("line {}", k + 1)) && e.contains("`ms`"),
        "{e}"
    );
}
