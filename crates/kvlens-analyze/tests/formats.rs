//! Importers of other tools' formats (RULER, LongBench v2, lm-eval, vLLM and SGLang serving
//! benchmarks) and the lm-eval export, on files written here in each tool's shape.

use kvlens_analyze::import::{bench, lm_eval, longbench_v2, ruler};
use kvlens_analyze::load::load_records;
use serde_json::{json, Value};
use std::path::Path;

fn write_lines(path: &Path, lines: &[Value]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(path, text.join("\n") + "\n").unwrap();
}

#[test]
fn ruler_predictions_are_cleaned_and_scored_per_task_rule() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let pred = src.path().join("llama/synthetic/4096/pred");
    write_lines(
        &pred.join("niah_multikey_1.jsonl"),
        &[
            json!({"index": 0, "pred": " 123\u{1}456 ", "input": "p", "outputs": ["123", "456"], "others": {}, "truncation": -1, "length": 4000}),
            json!({"index": 1, "pred": "789", "input": "q", "outputs": ["123", "789"], "others": {"id": 7}, "truncation": -1, "length": -1}),
        ],
    );
    write_lines(
        &pred.join("qa_1.jsonl"),
        &[json!({"index": 0, "pred": "Paris", "input": "p", "outputs": ["London", "paris"]})],
    );
    let done = ruler::import(src.path(), out.path(), "snapkv@0.50", "llama").unwrap();
    assert_eq!(done.records, 3);
    let rs = load_records(&[out.path().to_path_buf()]).unwrap();
    let get = |task: &str, id: &str| {
        rs.iter()
            .find(|r| r.task == task && r.sample_id == id)
            .unwrap()
    };
    let a = get("niah_multikey_1@4096", "0");
    assert_eq!(a.output_text, "123\n456");
    assert_eq!(a.score, Some(1.0));
    assert_eq!(a.prompt_tokens, 4000);
    // `others.id` names the sample; half of the references found: string_match_all.
    assert_eq!(get("niah_multikey_1@4096", "7").score, Some(0.5));
    // qa_* tasks: string_match_part, case-insensitive.
    assert_eq!(get("qa_1@4096", "0").score, Some(1.0));
    assert!(rs.iter().all(|r| r.method == "snapkv@0.50"));

    // A line without `pred` names the file, line and field.
    write_lines(
        &pred.join("vt.jsonl"),
        &[json!({"index": 0, "outputs": ["x"]})],
    );
    let e = ruler::import(src.path(), out.path(), "m", "x")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("vt.jsonl line 1") && e.contains("\"pred\""),
        "{e}"
    );
}

#[test]
fn longbench_v2_results_keep_judge_and_print_result_py_row() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let row = |id: &str, d: &str, l: &str, pred: Value, answer: &str| {
        json!({"_id": id, "domain": "Single-Document QA", "sub_domain": "x", "difficulty": d,
               "length": l, "question": "q", "answer": answer, "response": "The correct answer is (A)",
               "pred": pred, "judge": pred == json!(answer)})
    };
    write_lines(
        &src.path().join("model_cot.jsonl"),
        &[
            row("a", "easy", "short", json!("A"), "A"),
            row("b", "hard", "long", json!("B"), "C"),
            row("c", "hard", "medium", Value::Null, "D"),
            row("d", "easy", "long", json!("D"), "D"),
        ],
    );
    let done = longbench_v2::import(src.path(), out.path(), "m").unwrap();
    assert_eq!(done.records, 4);
    assert!(
        done.notes[0].contains("overall 50.0 easy 100.0 hard 0.0 short 100.0 medium 0.0 long 50.0"),
        "{:?}",
        done.notes
    );
    let rs = load_records(&[out.path().to_path_buf()]).unwrap();
    let scores: Vec<f64> = rs.iter().filter_map(|r| r.score).collect();
    assert_eq!(scores.iter().sum::<f64>(), 2.0);
    assert!(rs
        .iter()
        .all(|r| r.method == "model_cot" && r.task == "longbench_v2"));
}

fn lm_eval_line(doc_id: u64, filter: &str, resp: &str, em: f64) -> Value {
    json!({"doc_id": doc_id, "doc": {"question": "q"}, "target": "18",
           "arguments": {"gen_args_0": {"arg_0": "Q:", "arg_1": {"until": ["\n"]}}},
           "resps": [[resp]], "filtered_resps": [resp], "filter": filter,
           "metrics": ["exact_match"], "doc_hash": "00", "prompt_hash": "ab".repeat(32),
           "target_hash": "00", "exact_match": em})
}

#[test]
fn lm_eval_samples_import_with_filters_latest_dates_and_checked_means() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let model = src.path().join("EleutherAI__pythia-14m");
    let date = "2025-01-07T14-03-22.512345";
    write_lines(
        &model.join(format!("samples_gsm8k_{date}.jsonl")),
        &[
            lm_eval_line(0, "strict-match", "18", 1.0),
            lm_eval_line(1, "strict-match", "[invalid]", 0.0),
            lm_eval_line(0, "flexible-extract", "18", 1.0),
            lm_eval_line(1, "flexible-extract", "18", 1.0),
        ],
    );
    // An older log of the same task is not read.
    write_lines(
        &model.join("samples_gsm8k_2024-12-01T00-00-00.jsonl"),
        &[lm_eval_line(5, "none", "x", 0.0)],
    );
    std::fs::write(
        model.join(format!("results_{date}.json")),
        json!({"results": {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.5,
               "exact_match,flexible-extract": 0.75}},
               "model_name": "EleutherAI/pythia-14m"})
        .to_string(),
    )
    .unwrap();
    let done = lm_eval::import(src.path(), out.path()).unwrap();
    assert_eq!(done.records, 4);
    let notes = done.notes.join("\n");
    assert!(notes.contains("an older log of gsm8k"), "{notes}");
    assert!(
        notes.contains("exact_match,strict-match = 0.5 matches"),
        "{notes}"
    );
    assert!(
        notes.contains("results file exact_match,flexible-extract = 0.75, the mean of the 2 imported scores = 1"),
        "{notes}"
    );
    let rs = load_records(&[out.path().to_path_buf()]).unwrap();
    let strict: Vec<_> = rs
        .iter()
        .filter(|r| r.task == "gsm8k@strict-match")
        .collect();
    assert_eq!(strict.len(), 2);
    assert!(strict.iter().all(|r| r.method == "EleutherAI__pythia-14m"
        && r.model == "EleutherAI/pythia-14m"
        && r.prompt_hash == "abababababababab"));
    assert_eq!(
        strict
            .iter()
            .find(|r| r.sample_id == "1")
            .unwrap()
            .output_text,
        "[invalid]"
    );
}

#[test]
fn lm_eval_export_reads_back_with_its_means_and_stderr() {
    // A kvlens run of two methods, through the RULER importer.
    let src = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    write_lines(
        &src.path().join("pred/niah_single_1.jsonl"),
        &[
            json!({"index": 0, "pred": "42", "outputs": ["42"]}),
            json!({"index": 1, "pred": "7", "outputs": ["8"]}),
            json!({"index": 2, "pred": "9", "outputs": ["9"]}),
        ],
    );
    ruler::import(src.path(), run.path(), "snapkv:budget=64", "m").unwrap();
    let exported = tempfile::tempdir().unwrap();
    let w = kvlens_analyze::lm_eval::export(
        &[run.path().to_path_buf()],
        exported.path(),
        "2026-12-02T10-00-00.000000",
        1.0,
    )
    .unwrap();
    assert_eq!(w.samples, 3);
    let dir = exported.path().join("snapkv_budget_64");
    let res: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("results_2026-12-02T10-00-00.000000.json")).unwrap(),
    )
    .unwrap();
    let t = &res["results"]["niah_single_1"];
    let mean = t["string_match_all,none"].as_f64().unwrap();
    assert!((mean - 2.0 / 3.0).abs() < 1e-12);
    // stdev([1, 0, 1], ddof=1) / √3 = 0.57735 / 1.73205.
    let se = t["string_match_all_stderr,none"].as_f64().unwrap();
    assert!(
        (se - (1.0f64 / 3.0).sqrt() / 3f64.sqrt()).abs() < 1e-12,
        "{se}"
    );
    assert_eq!(res["n-samples"]["niah_single_1"]["effective"], 3);
    // lm-eval's importer reads the export back under the exact method name.
    let back = tempfile::tempdir().unwrap();
    lm_eval::import(exported.path(), back.path()).unwrap();
    let rs = load_records(&[back.path().to_path_buf()]).unwrap();
    assert_eq!(rs.len(), 3);
    assert!(rs.iter().all(|r| r.method == "snapkv:budget=64"));
    let mut scores: Vec<f64> = rs.iter().filter_map(|r| r.score).collect();
    scores.sort_by(f64::total_cmp);
    assert_eq!(scores, vec![0.0, 1.0, 1.0]);
}

#[test]
fn vllm_and_sglang_results_become_load_records_checked_against_their_summary() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // Two requests and one failure, sent 0.5 s apart.
    let vllm = json!({
        "backend": "vllm", "label": null, "model_id": "m", "request_rate": 2.0,
        "burstiness": 1.0, "max_concurrency": null, "duration": 1.6, "completed": 2,
        "total_input_tokens": 30, "total_output_tokens": 5, "mean_ttft_ms": 150.0,
        "median_ttft_ms": 150.0, "mean_tpot_ms": 999.0,
        "input_lens": [10, 20, 5], "output_lens": [2, 3, 0], "ttfts": [0.1, 0.2, 0.0],
        "itls": [[0.05], [0.1, 0.1], []], "latencies": [0.15, 0.4, 0.0],
        "start_times": [100.0, 100.5, 101.0], "generated_texts": ["ab", "Paris", ""],
        "errors": ["", "", "HTTP 500"]
    });
    std::fs::write(src.path().join("vllm.json"), vllm.to_string()).unwrap();
    let prompts = src.path().join("prompts.jsonl");
    write_lines(
        &prompts,
        &[
            json!({"task": "qa", "id": "x", "answers": ["nope"]}),
            json!({"task": "qa", "id": "y", "answers": ["paris"]}),
            json!({"task": "qa", "id": "z", "answers": ["z"]}),
        ],
    );
    let join = bench::Join {
        prompts: Some(prompts),
        metric: Some(kvlens_score::Metric::StringMatchAll),
    };
    let done = bench::import(
        bench::Bench::Vllm,
        &src.path().join("vllm.json"),
        out.path(),
        None,
        &join,
    )
    .unwrap();
    assert_eq!(done.records, 3);
    let notes = done.notes.join("\n");
    // tpot of the file is wrong on purpose: (150−100)/1 and (400−200)/2 average to 75.
    assert!(
        notes.contains("mean_tpot_ms 999 (kvlens 75.0000)"),
        "{notes}"
    );
    assert!(!notes.contains("mean_ttft_ms 150"), "{notes}");
    let rs = load_records(&[out.path().join("rate=2")]).unwrap();
    let y = rs.iter().find(|r| r.sample_id == "y").unwrap();
    assert_eq!((y.method.as_str(), y.task.as_str()), ("vllm", "qa"));
    assert_eq!(y.score, Some(1.0));
    let l = y.load.as_ref().unwrap();
    assert_eq!((l.sent_ms, l.done_ms), (500.0, 900.0));
    assert_eq!(l.itl_ms, vec![100.0, 100.0]);
    assert_eq!(
        rs.iter()
            .find(|r| r.sample_id == "z")
            .unwrap()
            .error
            .as_deref(),
        Some("HTTP 500")
    );

    // SGLang: JSON Lines, no start times nor latencies (e2e = TTFT + the gaps).
    let sg = src.path().join("sglang.jsonl");
    write_lines(
        &sg,
        &[
            json!({"backend": "sglang", "request_rate": "inf", "completed": 1,
                 "input_lens": [8], "output_lens": [3], "ttfts": [0.2], "itls": [[0.1, 0.3]],
                 "generated_texts": ["hey"], "errors": [""]}),
        ],
    );
    let out2 = tempfile::tempdir().unwrap();
    let done = bench::import(
        bench::Bench::Sglang,
        &sg,
        out2.path(),
        Some("sg"),
        &bench::Join::default(),
    )
    .unwrap();
    assert!(done.notes.join("\n").contains("no start_times"));
    let rs = load_records(&[out2.path().join("rate=inf")]).unwrap();
    assert!((rs[0].e2e_ms - 600.0).abs() < 1e-9);
    assert_eq!(rs[0].method, "sg");

    // Without the per-request arrays the import says which flag writes them.
    std::fs::write(
        src.path().join("bare.json"),
        json!({"request_rate": 1}).to_string(),
    )
    .unwrap();
    let e = bench::import(
        bench::Bench::Vllm,
        &src.path().join("bare.json"),
        out.path(),
        None,
        &bench::Join::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--save-detailed"), "{e}");
}
