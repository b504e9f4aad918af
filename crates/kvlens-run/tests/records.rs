//! Record files, merge and run.toml checks, on records the tests write (no model needed).

use kvlens_run::merge::merge;
use kvlens_run::runner::{write_run_file, Provenance};
use kvlens_run::store::{read_file, read_run, RecordFile};
use kvlens_run::{Key, Record, RunConfig};
use std::collections::HashSet;
use std::path::Path;

fn rec(task: &str, id: &str, method: &str) -> Record {
    Record {
        run_id: "r".into(),
        model: "m".into(),
        task: task.into(),
        sample_id: id.into(),
        method: method.into(),
        prompt_hash: "h".into(),
        prompt_tokens: 100,
        truncated: false,
        output_text: "out".into(),
        output_tokens: 10,
        finish_reason: Some("eos".into()),
        max_new_tokens: 32,
        prefill_ms: 100.0,
        ttft_ms: 110.0,
        decode_ms: 90.0,
        e2e_ms: 200.0,
        decode_ms_p50: 10.0,
        decode_ms_p90: 10.0,
        decode_ms_max: 10.0,
        prefill_shared: false,
        batch: 1,
        queue_ms: 0.0,
        preemptions: 0,
        served: None,
        load: None,
        kv_bytes_peak: 1000,
        kv_bytes_end: 1000,
        kv_bytes_full: 1000,
        kv_tokens_kept: 100.0,
        answers: vec!["a".into()],
        all_classes: vec![],
        first_line: false,
        metric: Some(kvlens_score::Metric::StringMatchAll),
        score: Some(1.0),
        pass: Some(true),
        pass_rule: Some("score >= 1".into()),
        meta: Default::default(),
        error: None,
    }
}

fn write(path: &Path, records: &[Record]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut s = String::new();
    for r in records {
        s.push_str(&serde_json::to_string(r).unwrap());
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

#[test]
fn a_torn_last_line_is_repaired_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t/full.jsonl");
    write(&p, &[rec("t", "0", "full")]);
    let mut bytes = std::fs::read(&p).unwrap();
    // Even a complete object without its newline counts as torn: the write was cut.
    bytes.extend_from_slice(
        serde_json::to_string(&rec("t", "1", "full"))
            .unwrap()
            .as_bytes(),
    );
    std::fs::write(&p, bytes).unwrap();
    let (records, torn) = read_file(&p).unwrap();
    assert_eq!((records.len(), torn), (1, Some(2)));

    let mut f = RecordFile::open(&p, &HashSet::new()).unwrap();
    let k1 = rec("t", "1", "full").key();
    assert!(f.is_done(&rec("t", "0", "full").key()) && !f.is_done(&k1));
    f.append(&rec("t", "1", "full")).unwrap();
    let (records, torn) = read_file(&p).unwrap();
    assert_eq!((records.len(), torn), (2, None));
}

#[test]
fn a_bad_line_in_the_middle_is_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t/full.jsonl");
    write(&p, &[rec("t", "0", "full"), rec("t", "1", "full")]);
    let text = std::fs::read_to_string(&p).unwrap();
    let broken = text.replacen("\"score\":1.0", "\"score\":\"high\"", 1);
    std::fs::write(&p, &broken).unwrap();
    let e = read_file(&p).unwrap_err().to_string();
    assert!(
        e.contains("full.jsonl line 1") && e.contains("score"),
        "{e}"
    );
    assert!(RecordFile::open(&p, &HashSet::new()).is_err());
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        broken,
        "nothing rewritten"
    );
}

#[test]
fn retry_removes_only_the_selected_failures() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t/full.jsonl");
    let mut bad0 = rec("t", "0", "full");
    bad0.error = Some("boom".into());
    let mut bad1 = rec("t", "1", "full");
    bad1.error = Some("boom".into());
    write(&p, &[bad0.clone(), bad1.clone(), rec("t", "2", "full")]);
    let retry: HashSet<Key> = [bad0.key()].into_iter().collect();
    let f = RecordFile::open(&p, &retry).unwrap();
    assert!(!f.is_done(&bad0.key()));
    assert!(
        f.is_done(&bad1.key()),
        "a failure outside the selection stays"
    );
    let (records, _) = read_file(&p).unwrap();
    assert_eq!(records.len(), 2);
}

#[test]
fn merge_joins_shards_once_and_refuses_nested_folders() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let mut failed = rec("t", "1", "full");
    failed.error = Some("oom".into());
    write(&a.join("t/full.jsonl"), &[rec("t", "0", "full"), failed]);
    write(
        &b.join("t/full.jsonl"),
        &[rec("t", "1", "full"), rec("t", "0", "full")],
    );
    let out = dir.path().join("merged");
    let r = merge(&[a.clone(), b.clone()], &out).unwrap();
    assert_eq!((r.records, r.duplicates, r.replaced_errors), (2, 1, 1));
    let all = read_run(&out).unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|r| r.error.is_none()));
    // Merging again changes nothing.
    merge(&[a.clone(), b.clone()], &out).unwrap();
    assert_eq!(read_run(&out).unwrap().len(), 2);
    let e = merge(&[dir.path().join("merged")], dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("contain one another"), "{e}");
}

#[test]
fn a_run_folder_refuses_other_weights_and_other_settings() {
    let dir = tempfile::tempdir().unwrap();
    let prov = Provenance {
        kvlens_version: "0".into(),
        model_file: "m.gguf".into(),
        model_sha256: "ab".repeat(32),
        command_line: "kvlens run".into(),
        threads: 2,
        weights: "q4_1+q8_0".into(),
        weight_kernels: "all on kvlens's kernels".into(),
    };
    let cfg = RunConfig::default().with_defaults();
    write_run_file(dir.path(), &cfg, &prov).unwrap();
    // Same settings with another limit: fine.
    let more = RunConfig {
        limit: Some(20),
        ..cfg.clone()
    };
    write_run_file(dir.path(), &more, &prov).unwrap();
    let other = RunConfig {
        max_new_tokens: Some(64),
        ..cfg.clone()
    };
    let e = write_run_file(dir.path(), &other, &prov)
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_new_tokens"), "{e}");
    let e = write_run_file(
        dir.path(),
        &cfg,
        &Provenance {
            model_sha256: "cd".repeat(32),
            ..prov.clone()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("model"), "{e}");
    // run.toml reads back as a suite.
    let again = RunConfig::from_file(&dir.path().join("run.toml")).unwrap();
    assert_eq!(again.limit, Some(20));
}
