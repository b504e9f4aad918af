//! The negative-sample benchmark end to end: a run, its negatives exported as a task set,
//! that set run again, and the rerun's records equal to the first run's on those samples.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

mod common;
use common::{cmd, ok, record_values};

type Key = (String, String, String);

fn records(dir: &Path) -> BTreeMap<Key, serde_json::Value> {
    record_values(dir)
        .into_iter()
        .map(|v| {
            let k = (
                v["task"].as_str().unwrap().to_string(),
                v["sample_id"].as_str().unwrap().to_string(),
                v["method"].as_str().unwrap().to_string(),
            );
            (k, v)
        })
        .collect()
}

/// NumPy's median.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[test]
fn negatives_export_as_a_task_set_that_runs_again_to_the_same_records() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("datasets");
    ok(cmd(&[
        "datasets",
        "generate",
        "--tasks",
        "passkey,vt",
        "--lengths",
        "150,200,250,300",
        "--out",
        data.to_str().unwrap(),
    ])
    .output()
    .unwrap());
    let method = "streamingllm:budget=24,sink=4";
    let run = tmp.path().join("run");
    let base_args = |tasks: &str, out: &Path| -> Vec<String> {
        [
            "run",
            "--offline",
            "--datasets",
            data.to_str().unwrap(),
            "--tasks",
            tasks,
            "--methods",
            method,
            "--max-new-tokens",
            "14",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = base_args("passkey,vt", &run);
    ok(cmd(&a.iter().map(String::as_str).collect::<Vec<_>>())
        .output()
        .unwrap());
    let first = records(&run);
    let canonical = first
        .keys()
        .map(|k| k.2.clone())
        .find(|m| m.starts_with("streamingllm"))
        .unwrap();

    // The default rule, computed here from the records: b ≥ the task's median baseline
    // score, b > 0, m ≤ 0.9·b.
    let mut want: BTreeSet<(String, String)> = BTreeSet::new();
    for task in ["passkey", "vt"] {
        let b: BTreeMap<&str, f64> = first
            .iter()
            .filter(|(k, _)| k.0 == task && k.2 == "full")
            .map(|(k, v)| (k.1.as_str(), v["score"].as_f64().unwrap()))
            .collect();
        let med = median(b.values().copied().collect());
        for (id, &bs) in &b {
            let m = first[&(task.to_string(), id.to_string(), canonical.clone())]["score"]
                .as_f64()
                .unwrap();
            if bs >= med && bs > 0.0 && m <= bs * 0.9 {
                want.insert((task.to_string(), id.to_string()));
            }
        }
    }
    let outputs: Vec<(&Key, &serde_json::Value)> =
        first.iter().map(|(k, v)| (k, &v["output_text"])).collect();
    assert!(!want.is_empty(), "the method broke no sample: {outputs:?}");

    let bench = tmp.path().join("bench");
    let o = cmd(&[
        "negatives",
        "export",
        run.to_str().unwrap(),
        "--out",
        bench.to_str().unwrap(),
        "--datasets",
        data.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bench.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["rule"], "default");
    assert_eq!(manifest["delta"], 10.0);
    assert_eq!(manifest["baseline"], "full");
    let mut got = BTreeSet::new();
    for (task, t) in manifest["tasks"].as_object().unwrap() {
        for id in t["ids"].as_array().unwrap() {
            got.insert((task.clone(), id.as_str().unwrap().to_string()));
        }
    }
    assert_eq!(got, want);
    // Each exported sample carries the baseline's output and score.
    for (task, id) in &want {
        let text = std::fs::read_to_string(bench.join(format!("{task}.jsonl"))).unwrap();
        let line: serde_json::Value = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["id"] == id.as_str())
            .unwrap();
        let b = &first[&(task.clone(), id.clone(), "full".to_string())];
        assert_eq!(line["meta"]["baseline_score"], b["score"]);
        assert_eq!(line["meta"]["baseline_output"], b["output_text"]);
    }

    // Run again on the exported set: the same prompts, so the same records on them.
    let again = tmp.path().join("again");
    let a = base_args(bench.to_str().unwrap(), &again);
    ok(cmd(&a.iter().map(String::as_str).collect::<Vec<_>>())
        .output()
        .unwrap());
    let second = records(&again);
    assert_eq!(second.len(), 2 * want.len());
    for (k, v) in &second {
        assert!(want.contains(&(k.0.clone(), k.1.clone())), "{k:?}");
        let f = &first[k];
        for field in ["prompt_hash", "output_text", "score", "prompt_tokens"] {
            assert_eq!(v[field], f[field], "{k:?} {field}");
        }
    }

    // The rerun against the baseline scores stored in the benchmark: per task, the stored
    // baseline's and the method's means on the negatives, all still negative (same model,
    // same answers), and the fail ratio over the baseline samples that reached the median.
    let report = ok(cmd(&[
        "negatives",
        "report",
        again.to_str().unwrap(),
        "--benchmark",
        bench.to_str().unwrap(),
        "--json",
    ])
    .output()
    .unwrap());
    let rows: Vec<serde_json::Value> = serde_json::from_str(&report).unwrap();
    let mut group_still = BTreeMap::new();
    for task in ["passkey", "vt"] {
        let ids: Vec<&String> = want.iter().filter(|k| k.0 == task).map(|k| &k.1).collect();
        if ids.is_empty() {
            continue;
        }
        let score = |m: &str, id: &str| {
            first[&(task.to_string(), id.to_string(), m.to_string())]["score"]
                .as_f64()
                .unwrap()
        };
        let mean =
            |m: &str| 100.0 * ids.iter().map(|id| score(m, id)).sum::<f64>() / ids.len() as f64;
        let base: Vec<f64> = first
            .iter()
            .filter(|(k, _)| k.0 == task && k.2 == "full")
            .map(|(_, v)| v["score"].as_f64().unwrap())
            .collect();
        let med = median(base.clone());
        let eligible = base.iter().filter(|&&b| b >= med && b > 0.0).count();
        let row = rows
            .iter()
            .find(|r| {
                r["level"] == "task" && r["name"] == task && r["method"] == canonical.as_str()
            })
            .unwrap_or_else(|| panic!("no row for {task}: {rows:?}"));
        assert_eq!(row["samples"], ids.len());
        assert!(
            (row["baseline_score"].as_f64().unwrap() - mean("full")).abs() < 1e-9,
            "{row}"
        );
        assert!(
            (row["score"].as_f64().unwrap() - mean(&canonical)).abs() < 1e-9,
            "{row}"
        );
        assert_eq!(row["still_negative"], ids.len());
        assert_eq!(row["eligible"], eligible);
        let ratio = ids.len() as f64 / eligible as f64;
        assert!(
            (row["fail_ratio"].as_f64().unwrap() - ratio).abs() < 1e-12,
            "{row}"
        );
        let group = if task == "passkey" {
            "retrieval"
        } else {
            "synthetic"
        };
        group_still.insert(group, ids.len());
    }
    for (group, still) in group_still {
        let row = rows
            .iter()
            .find(|r| {
                r["level"] == "group" && r["name"] == group && r["method"] == canonical.as_str()
            })
            .unwrap();
        assert_eq!(row["still_negative"], still);
    }

    // A joint set of one method is the same selection; a folder without specs is refused.
    let joint = tmp.path().join("joint");
    ok(cmd(&[
        "negatives",
        "export",
        run.to_str().unwrap(),
        "--out",
        joint.to_str().unwrap(),
        "--joint",
        "streamingllm",
        "--datasets",
        data.to_str().unwrap(),
    ])
    .output()
    .unwrap());
    let m2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(joint.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m2["tasks"], manifest["tasks"]);
    // `kvlens analyze --export-negatives` writes the same set.
    let via = tmp.path().join("via_analyze");
    ok(cmd(&[
        "analyze",
        run.to_str().unwrap(),
        "--no-plots",
        "--out",
        tmp.path().join("an").to_str().unwrap(),
        "--export-negatives",
        via.to_str().unwrap(),
    ])
    .current_dir(tmp.path())
    .env("KVLENS_DATASETS", &data)
    .output()
    .unwrap());
    let m3: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(via.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m3["tasks"], manifest["tasks"]);
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let a = base_args(empty.to_str().unwrap(), &tmp.path().join("x"));
    let o = cmd(&a.iter().map(String::as_str).collect::<Vec<_>>())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("holds no task spec"));
}
