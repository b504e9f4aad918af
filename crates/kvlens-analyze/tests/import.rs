//! Importing LongBench predictions and the MLSys 2025 paper's score files.

use kvlens_analyze::analysis::{analyze, Options};
use kvlens_analyze::import::{longbench_pred, parse_score_file_name, score_files};
use kvlens_analyze::load_runs;

#[test]
fn score_file_names_take_the_longest_dataset_that_ends_the_stem() {
    let p = parse_score_file_name(
        "snapkv_llama-3-8b-instruct_8192_b1_c2048_w32_k7_maxpool_gov_report_eval.json",
    )
    .unwrap();
    assert_eq!(p.method, "snapkv_c2048_w32_k7_maxpool");
    assert_eq!(p.model, "llama-3-8b-instruct");
    assert_eq!((p.max_len.as_str(), p.batch.as_str()), ("8192", "1"));
    assert_eq!(p.dataset, "gov_report");
    // `report` alone is not a dataset; `multifieldqa_en` is longer than nothing else.
    let p = parse_score_file_name("hf_mistral_7b_4096_b4_multifieldqa_en_eval.json").unwrap();
    assert_eq!(
        (p.method.as_str(), p.model.as_str(), p.dataset.as_str()),
        ("hf", "mistral_7b", "multifieldqa_en")
    );
    assert!(parse_score_file_name("notes.json").is_none());
}

#[test]
fn score_files_import_and_analyze_against_hf() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::write(
        src.path().join("hf_llama_8192_b1_gov_report_eval.json"),
        r#"[{"id": "a", "score": 30.0}, {"id": "b", "score": 20.0}, {"id": "c", "score": 0.0}]"#,
    )
    .unwrap();
    std::fs::write(
        src.path()
            .join("snapkv_llama_8192_b1_c2048_w32_k7_maxpool_gov_report_eval.json"),
        r#"[{"id": "a", "score": 10.0}, {"id": "b", "score": 20.0}]"#,
    )
    .unwrap();
    let done = score_files(src.path(), out.path()).unwrap();
    assert_eq!(done.records, 5);
    let samples = load_runs(&[out.path().to_path_buf()]).unwrap();
    assert!(samples
        .iter()
        .all(|s| s.e2e_ms.is_none() && s.output_tokens.is_none()));
    let a = analyze(&samples, &Options::default()).unwrap();
    assert_eq!(a.baseline, "hf");
    let r = a
        .rows
        .iter()
        .find(|r| r.method == "snapkv_c2048_w32_k7_maxpool")
        .unwrap();
    assert_eq!((r.paired, r.missing_method), (2, 1));
    assert_eq!(r.negatives, Some(1)); // a: 30 → 10 (median 20)
    assert_eq!(r.length_ratio_median, None);
    assert_eq!(r.delta_e2e_ms_mean, None);
    assert_eq!(r.pass_to_fail, None);
}

#[test]
fn longbench_predictions_are_scored_and_ids_default_to_the_line() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    for (method, preds) in [("full", ["Paris", "blue"]), ("h2o", ["Lyon", "blue"])] {
        let d = src.path().join(method);
        std::fs::create_dir_all(&d).unwrap();
        let lines: Vec<String> = preds
            .iter()
            .zip([["Paris"], ["blue"]])
            .map(|(p, a)| {
                serde_json::json!({"pred": p, "answers": a, "all_classes": null, "length": 1234})
                    .to_string()
            })
            .collect();
        std::fs::write(d.join("hotpotqa.jsonl"), lines.join("\n") + "\n").unwrap();
    }
    let done = longbench_pred(src.path(), out.path(), "m").unwrap();
    assert_eq!(done.records, 4);
    let samples = load_runs(&[out.path().to_path_buf()]).unwrap();
    let mut ids: Vec<&str> = samples.iter().map(|s| s.sample_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["0", "0", "1", "1"]);
    let a = analyze(&samples, &Options::default()).unwrap();
    let h = a.rows.iter().find(|r| r.method == "h2o").unwrap();
    assert_eq!(h.score, Some(50.0));
    assert_eq!(h.negatives, Some(1));
    assert_eq!(h.e2e_ms_mean, None);
    // A bad line names the file and line.
    std::fs::write(
        src.path().join("full").join("hotpotqa.jsonl"),
        "{\"pred\": 3}\n",
    )
    .unwrap();
    let e = longbench_pred(src.path(), out.path(), "m")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hotpotqa.jsonl line 1") && e.contains("pred"),
        "{e}"
    );
}
