//! `kvlens run` end to end on the default model: killed mid-run and resumed, a torn last line
//! repaired, shards merged, and the records compared with an uninterrupted run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::{cmd, ok};

/// (task, sample_id, method) → (output_text, error) of every record under `dir`, asserting
/// that none appears twice.
fn records(dir: &Path) -> BTreeMap<(String, String, String), (String, bool)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "jsonl") {
                let text = std::fs::read_to_string(&p).unwrap();
                assert!(text.is_empty() || text.ends_with('\n'), "{}", p.display());
                for line in text.lines() {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    let key = (
                        v["task"].as_str().unwrap().to_string(),
                        v["sample_id"].as_str().unwrap().to_string(),
                        v["method"].as_str().unwrap().to_string(),
                    );
                    let val = (
                        v["output_text"].as_str().unwrap().to_string(),
                        v.get("error").is_some(),
                    );
                    assert!(out.insert(key.clone(), val).is_none(), "{key:?} twice");
                }
            }
        }
    }
    out
}

fn count_lines(dir: &Path) -> usize {
    let mut n = 0;
    for task in ["passkey", "vt"] {
        for f in std::fs::read_dir(dir.join(task)).into_iter().flatten() {
            let p = f.unwrap().path();
            n += std::fs::read_to_string(p)
                .map(|t| t.matches('\n').count())
                .unwrap_or(0);
        }
    }
    n
}

#[test]
fn a_killed_run_resumes_with_every_record_once_and_shards_merge_to_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("datasets");
    let d = data.to_str().unwrap();
    ok(cmd(&[
        "datasets",
        "generate",
        "--tasks",
        "passkey,vt",
        "--lengths",
        "150,200,250",
        "--out",
        d,
    ])
    .output()
    .unwrap());
    let common = |out: &Path| -> Vec<String> {
        [
            "run",
            "--datasets",
            d,
            "--tasks",
            "passkey,vt",
            "--methods",
            "streamingllm:budget=64,sink=4",
            "--max-new-tokens",
            "6",
            "--threads",
            "2",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let expected: BTreeSet<(String, String, String)> = ["passkey", "vt"]
        .iter()
        .flat_map(|t| {
            (0..3).flat_map(move |i| {
                ["full", "streamingllm:budget=64,sink=4,when=decode"]
                    .iter()
                    .map(move |m| (t.to_string(), format!("{t}-{i:03}"), m.to_string()))
            })
        })
        .collect();

    // Uninterrupted.
    let clean = tmp.path().join("clean");
    let args = common(&clean);
    let table = ok(cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .output()
        .unwrap());
    assert!(table.contains("| passkey | full |"), "{table}");
    let want = records(&clean);
    assert_eq!(want.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(want.values().all(|(_, err)| !err));
    // run.toml keeps the noise floor of the baseline's timings, measured over the run.
    let run_toml: toml::Table =
        toml::from_str(&std::fs::read_to_string(clean.join("run.toml")).unwrap()).unwrap();
    let noise = run_toml
        .get("noise")
        .and_then(|n| n.as_table())
        .unwrap_or_else(|| panic!("no [noise] in run.toml: {run_toml}"));
    assert!(noise["pairs"].as_integer().unwrap() >= 3, "{noise}");
    let spread = noise["relative_spread"].as_float().unwrap();
    assert!(spread.is_finite() && spread >= 0.0, "{noise}");

    // Killed after a few records, with a torn line added, then resumed twice.
    let resumed = tmp.path().join("resumed");
    let args = common(&resumed);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = cmd(&argv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while count_lines(&resumed) < 3 && t.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = records(&resumed).len();
    assert!(
        (3..12).contains(&partial),
        "{partial} records before the kill"
    );
    let torn = resumed.join("passkey/full.jsonl");
    let mut bytes = std::fs::read(&torn).unwrap();
    bytes.extend_from_slice(b"{\"run_id\":\"resumed\",\"model\":\"def");
    std::fs::write(&torn, bytes).unwrap();
    ok(cmd(&argv).output().unwrap());
    let again = ok(cmd(&argv).output().unwrap());
    assert!(again.contains("| vt |"), "{again}");
    let got = records(&resumed);
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(
        got, want,
        "a resumed run must give the outputs of an uninterrupted one"
    );

    // Two shards, merged.
    let mut shards = Vec::new();
    for i in 0..2 {
        let dir = tmp.path().join(format!("shard{i}"));
        let mut a = common(&dir);
        a.extend(["--shard".to_string(), format!("{i}/2")]);
        ok(cmd(&a.iter().map(String::as_str).collect::<Vec<_>>())
            .output()
            .unwrap());
        let n = records(&dir).len();
        assert!(n > 0 && n < 12, "shard {i} holds {n} records");
        shards.push(dir.to_str().unwrap().to_string());
    }
    let merged = tmp.path().join("merged");
    ok(cmd(&[
        "merge",
        "--out",
        merged.to_str().unwrap(),
        &shards[0],
        &shards[1],
    ])
    .output()
    .unwrap());
    assert_eq!(records(&merged), want);
    assert!(merged.join("run.toml").is_file());
}

#[test]
fn score_rescores_offline_and_bad_records_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run/passkey");
    std::fs::create_dir_all(&dir).unwrap();
    let rec = |id: &str, method: &str, out: &str| {
        serde_json::json!({
            "run_id": "r", "model": "m", "task": "passkey", "sample_id": id, "method": method,
            "prompt_hash": "x", "prompt_tokens": 100, "output_text": out, "output_tokens": 3,
            "finish_reason": "eos", "max_new_tokens": 16, "prefill_ms": 10.0, "ttft_ms": 11.0,
            "decode_ms": 5.0, "e2e_ms": 16.0, "kv_bytes_peak": 1000, "kv_bytes_full": 1000,
            "kv_tokens_kept": 100.0, "answers": ["12345"], "metric": "string_match_all"
        })
        .to_string()
    };
    std::fs::write(
        dir.join("full.jsonl"),
        format!(
            "{}\n{}\n",
            rec("a", "full", "It is 12345."),
            rec("b", "full", "123")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("int8.jsonl"),
        format!(
            "{}\n{}\n",
            rec("a", "int8", "no idea"),
            rec("b", "int8", "12345")
        ),
    )
    .unwrap();
    let run = tmp.path().join("run");
    let table = ok(cmd(&["score", run.to_str().unwrap()]).output().unwrap());
    assert!(table.contains("| passkey | full | 2 | 50.00 |"), "{table}");
    assert!(
        table.contains("| passkey | int8 | 2 | 50.00 | +0.00"),
        "{table}"
    );
    assert!(
        table.contains("1 / 1 ("),
        "one pass→fail and one fail→pass flip:\n{table}"
    );
    assert!(run.join("analysis/tasks.csv").is_file());
    let text = std::fs::read_to_string(dir.join("full.jsonl")).unwrap();
    assert!(
        text.contains("\"score\":1.0") && text.contains("\"pass\":true"),
        "{text}"
    );
    assert!(text.contains("\"pass_rule\":\"score >= 1\""), "{text}");

    // A broken line in the middle is an error naming the file and line; nothing is lost.
    let broken = format!(
        "{}\n{{\"task\": 3}}\n{}\n",
        rec("a", "full", "x"),
        rec("b", "full", "y")
    );
    std::fs::write(dir.join("full.jsonl"), &broken).unwrap();
    let o = cmd(&["score", run.to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("full.jsonl line 2"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("full.jsonl")).unwrap(),
        broken
    );
}

type RecordKey = (String, String, String);

/// (task, sample, method) → (output text, KV peak bytes, tokens kept, prefill shared).
fn outputs(dir: &Path) -> BTreeMap<RecordKey, (String, u64, f64, bool)> {
    let mut out = BTreeMap::new();
    for task in std::fs::read_dir(dir).unwrap() {
        let task = task.unwrap().path();
        if !task.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(task).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_none_or(|x| x != "jsonl") {
                continue;
            }
            for line in std::fs::read_to_string(f).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let s = |k: &str| v[k].as_str().unwrap().to_string();
                out.insert(
                    (s("task"), s("sample_id"), s("method")),
                    (
                        s("output_text"),
                        v["kv_bytes_peak"].as_u64().unwrap(),
                        v["kv_tokens_kept"].as_f64().unwrap(),
                        v["prefill_shared"].as_bool().unwrap(),
                    ),
                );
            }
        }
    }
    out
}

#[test]
fn a_shared_prefill_gives_each_method_what_its_own_prefill_gives() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("datasets");
    let d = data.to_str().unwrap();
    ok(cmd(&[
        "datasets",
        "generate",
        "--tasks",
        "niah_single,doc_qa",
        "--lengths",
        "700,300",
        "--out",
        d,
    ])
    .output()
    .unwrap());
    let run = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "run",
            "--datasets",
            d,
            "--tasks",
            "niah_single,doc_qa",
            "--methods",
            "snapkv:budget=96,pyramidkv:budget=96,h2o:budget=96,kivi:bits=2,group=32,residual=32",
            "--max-new-tokens",
            "8",
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        ok(cmd(&a).output().unwrap());
        outputs(out)
    };
    let shared = run(&tmp.path().join("shared"), &[]);
    let own = run(&tmp.path().join("own"), &["--no-share-prefill"]);
    // Four samples at a time, all their methods together through the scheduler: the same
    // records but for times (and the batch they ran in).
    let batched_dir = tmp.path().join("batched");
    let batched = run(&batched_dir, &["--batch", "4", "--kv-budget", "2GiB"]);
    assert_eq!(batched, shared);
    let one = std::fs::read_to_string(batched_dir.join("doc_qa/full.jsonl")).unwrap();
    let v: serde_json::Value = serde_json::from_str(one.lines().next().unwrap()).unwrap();
    assert_eq!(v["batch"], 4);
    assert_eq!(v["preemptions"], 0);
    assert_eq!(shared.len(), 2 * 2 * 5);
    for (k, s) in &shared {
        let o = &own[k];
        assert_eq!((&s.0, s.1, s.2), (&o.0, o.1, o.2), "{k:?}");
        // The baseline, the after-prefill selections and the quantizer shared; h2o (summed
        // attention) did not.
        assert_eq!(s.3, !k.2.starts_with("h2o"), "{k:?}");
        assert!(!o.3, "{k:?}");
    }
    // The selection really happened: fewer tokens kept than the baseline's.
    let full = &shared[&(
        "niah_single".into(),
        "niah_single-000".into(),
        "full".into(),
    )];
    let snap = shared
        .iter()
        .find(|(k, _)| k.1 == "niah_single-000" && k.2.starts_with("snapkv"))
        .unwrap()
        .1;
    assert!(snap.2 < full.2 / 2.0, "{} vs {}", snap.2, full.2);
}
