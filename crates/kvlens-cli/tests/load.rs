//! `kvlens load` over loopback: against `kvlens serve` with two methods (answers and scores
//! must equal `kvlens run`'s, concurrency must stay under the limit as the server counts it,
//! the schedule must be the seeded one), and against servers that fail on purpose (failed
//! requests counted with their reasons, the point completes, a rerun skips what is done).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::rawhttp as http;
use common::{cmd, ok, record_values, serve_with};
use kvlens_run::arrivals::{schedule, Rate};

/// Two small tasks: one through the chat template, one raw with a stop string.
fn write_tasks(dir: &Path) -> (String, String) {
    let facts = [
        (
            "Lyon",
            "The river that runs through Lyon is the Rhone. Lyon is known for its food.",
            "Which river runs through Lyon?",
            "Rhone",
        ),
        (
            "owl",
            "An owl is a bird that hunts at night. Owls have silent wings.",
            "When does an owl hunt?",
            "at night",
        ),
        (
            "tea",
            "Green tea leaves are steamed or pan-fired soon after picking.",
            "What is done to green tea leaves after picking?",
            "steamed or pan-fired",
        ),
    ];
    let mut data = String::new();
    for (id, ctx, q, a) in facts {
        let line = serde_json::json!({"id": id, "context": ctx, "input": q, "answers": [a]});
        data.push_str(&format!("{line}\n"));
    }
    std::fs::write(dir.join("qa.jsonl"), data).unwrap();
    let chat = dir.join("chatqa.toml");
    let raw = dir.join("rawqa.toml");
    std::fs::write(
        &chat,
        "name = \"chatqa\"\ndata = \"qa.jsonl\"\ntemplate = \"{context}\\n\\nQuestion: {input}\"\n\
         max_new_tokens = 16\nmetric = \"qa_f1\"\n",
    )
    .unwrap();
    std::fs::write(
        &raw,
        "name = \"rawqa\"\ndata = \"qa.jsonl\"\ntemplate = \"{context}\\nQ: {input}\\nA:\"\n\
         max_new_tokens = 16\nmetric = \"qa_f1\"\nchat = false\nstop = [\"\\n\"]\n",
    )
    .unwrap();
    (chat.display().to_string(), raw.display().to_string())
}

fn health(url: &str) -> serde_json::Value {
    let root = url.trim_end_matches("/v1");
    let addr = root.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn load_against_kvlens_serve_scores_as_run_does_and_keeps_to_its_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (chat, raw) = write_tasks(dir.path());
    let tasks = format!("{chat},{raw}");
    let stream = "streamingllm:budget=32,sink=4";
    let srv = serve_with(&["--method", "full", "--method", stream]);
    let out = dir.path().join("load");
    let json = ok(cmd(&[
        "load",
        "--offline",
        "--target",
        &format!("full={},model=default/full", srv.url),
        "--target",
        &format!("stream={},model=default/streamingllm", srv.url),
        "--tasks",
        &tasks,
        "--num-prompts",
        "5",
        "--request-rate",
        "20",
        "--max-concurrency",
        "2",
        "--seed",
        "3",
        "--goodput",
        "e2el:600000",
        "--json",
        "--no-plots",
        "--out",
        out.to_str().unwrap(),
    ])
    .output()
    .unwrap());
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON object");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        assert_eq!(r["completed"], 5, "{r}");
        assert_eq!(r["failed"], 0, "{r}");
        assert_eq!(r["request_rate"], 20.0);
        let (done, dur) = (
            r["completed"].as_f64().unwrap(),
            r["duration"].as_f64().unwrap(),
        );
        assert!(dur > 0.0);
        let thr = r["request_throughput"].as_f64().unwrap();
        assert!((thr - done / dur).abs() <= 1e-12 * thr.max(1.0), "{r}");
        let tok = r["total_output_tokens"].as_f64().unwrap();
        assert!((r["output_throughput"].as_f64().unwrap() - tok / dur).abs() < 1e-9);
        assert!(r["max_concurrent_requests"].as_u64().unwrap() <= 2, "{r}");
        for k in [
            "median_ttft_ms",
            "p99_e2el_ms",
            "mean_tpot_ms",
            "p90_itl_ms",
        ] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {r}");
        }
        // Every request met a 10-minute objective.
        assert!((r["request_goodput"].as_f64().unwrap() - thr).abs() < 1e-9);
    }
    assert!(results[1]["delta_score"].is_number());
    assert_eq!(results[1]["paired"], 5);
    // Counted by the server: never more than 2 requests in flight, and some overlap.
    let h = health(&srv.url);
    let most = h["max_requests_in_flight"].as_u64().unwrap();
    assert!((1..=2).contains(&most), "{h}");

    // The records: prompts dealt round-robin over the tasks, the seeded schedule, the same
    // for both targets.
    let records = record_values(&out.join("rate=20"));
    assert_eq!(records.len(), 10);
    let want = schedule(5, Rate::PerSecond(20.0), 1.0, 3).unwrap();
    let order = [
        ("chatqa", "Lyon"),
        ("rawqa", "Lyon"),
        ("chatqa", "owl"),
        ("rawqa", "owl"),
        ("chatqa", "tea"),
    ];
    for r in &records {
        let l = &r["load"];
        let i = l["index"].as_u64().unwrap() as usize;
        assert_eq!(
            (
                r["task"].as_str().unwrap(),
                r["sample_id"].as_str().unwrap()
            ),
            order[i]
        );
        assert!((l["scheduled_ms"].as_f64().unwrap() - want[i] * 1e3).abs() < 1e-6);
        assert!(l["sent_ms"].as_f64().unwrap() >= l["scheduled_ms"].as_f64().unwrap());
        assert!(l["client_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(l["point"], "rate=20");
    }

    // The same prompts through `kvlens run`, locally: the same answers and scores.
    let run = dir.path().join("run");
    ok(cmd(&[
        "run",
        "--offline",
        "--tasks",
        &tasks,
        "--methods",
        &format!("full,{stream}"),
        "--out",
        run.to_str().unwrap(),
    ])
    .output()
    .unwrap());
    let local: BTreeMap<(String, String, String), serde_json::Value> = record_values(&run)
        .into_iter()
        .map(|r| {
            (
                (
                    r["task"].as_str().unwrap().to_string(),
                    r["sample_id"].as_str().unwrap().to_string(),
                    r["method"].as_str().unwrap().to_string(),
                ),
                r,
            )
        })
        .collect();
    let canonical = |t: &str| {
        if t == "full" {
            "full".to_string()
        } else {
            local
                .keys()
                .map(|k| k.2.clone())
                .find(|m| m.starts_with("streamingllm"))
                .unwrap()
        }
    };
    for r in &records {
        let key = (
            r["task"].as_str().unwrap().to_string(),
            r["sample_id"].as_str().unwrap().to_string(),
            canonical(r["method"].as_str().unwrap()),
        );
        let l = &local[&key];
        assert_eq!(r["output_text"], l["output_text"], "{key:?}");
        assert_eq!(r["score"], l["score"], "{key:?}");
    }
}

/// A server that answers every request after `delay`, with a 500 or a fine stream, and
/// counts the most requests it held at once (from reading a request to answering it).
fn fake(fail: bool, delay: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let most = Arc::new(AtomicUsize::new(0));
    let now = Arc::new(AtomicUsize::new(0));
    let m = most.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let (m, now) = (m.clone(), now.clone());
            std::thread::spawn(move || {
                let Ok(_req) = http::read_request(&mut s, Duration::from_secs(10)) else {
                    return;
                };
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(n, Ordering::SeqCst);
                std::thread::sleep(delay);
                // Counted out before the answer goes: once the client has it, it may send
                // the next request, which must not find this one still counted.
                now.fetch_sub(1, Ordering::SeqCst);
                if fail {
                    http::respond_error(&mut s, 500, "the model crashed");
                } else {
                    let ev = |t: &str, f: Option<&str>| {
                        serde_json::json!({"choices": [{"index": 0, "delta": {"content": t},
                                                       "finish_reason": f}]})
                        .to_string()
                    };
                    let _ = http::start_events(&mut s)
                        .and_then(|_| http::send_event(&mut s, &ev("Paris", None)))
                        .and_then(|_| http::send_event(&mut s, &ev(" it is", Some("stop"))))
                        .and_then(|_| http::send_event(&mut s, "[DONE]"));
                }
                let _ = s.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (url, most)
}

#[test]
fn failing_targets_count_as_failed_and_a_rerun_skips_finished_points() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    let mut text = String::new();
    for i in 0..6 {
        text.push_str(&format!(
            "{}\n",
            serde_json::json!({"prompt": format!("Question {i}: what is the capital of France?"), "output_len": 4})
        ));
    }
    std::fs::write(&prompts, text).unwrap();
    let (good, good_most) = fake(false, Duration::from_millis(150));
    let (bad, _) = fake(true, Duration::from_millis(10));
    let down = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let out = dir.path().join("load");
    let args = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "load",
            "--offline",
            "--target",
            &format!("good={good},model=m"),
            "--target",
            &format!("bad={bad},model=m"),
            "--target",
            &format!("down={down}"),
            "--prompts",
            prompts.to_str().unwrap(),
            "--num-prompts",
            "6",
            "--rates",
            "50,inf",
            "--max-concurrency",
            "2",
            "--timeout",
            "20",
            "--no-plots",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        cmd(&refs).output().unwrap()
    };
    let o = run(&["--json"]);
    let first = ok(o);
    let v: serde_json::Value = serde_json::from_str(first.trim()).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    for r in results {
        let (done, failed) = (
            r["completed"].as_u64().unwrap(),
            r["failed"].as_u64().unwrap(),
        );
        match r["target"].as_str().unwrap() {
            "good" => assert_eq!((done, failed), (6, 0), "{r}"),
            _ => assert_eq!((done, failed), (0, 6), "{r}"),
        }
        assert!(r["max_concurrent_requests"].as_u64().unwrap() <= 2);
        assert!(
            r["score"].is_null(),
            "prompts without answers have no score"
        );
    }
    // Counted by the server: at most 2 at once, and the limit was reached.
    assert_eq!(good_most.load(Ordering::SeqCst), 2);
    let records = record_values(&out);
    assert_eq!(records.len(), 36);
    let reason = |t: &str| {
        records
            .iter()
            .find(|r| r["method"] == t)
            .and_then(|r| r["error"].as_str())
            .unwrap_or("")
            .to_string()
    };
    assert!(reason("bad").contains("HTTP 500"), "{}", reason("bad"));
    assert!(!reason("down").is_empty());
    assert!(reason("good").is_empty());

    // A rerun finds every point complete and sends nothing.
    let o = run(&[]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert_eq!(err.matches("complete already").count(), 6, "{err}");
    assert_eq!(record_values(&out).len(), 36);
    // A point without its completion mark (an interrupted one) runs again whole; its old
    // records are kept aside.
    std::fs::remove_file(out.join("rate=inf").join("good.done.json")).unwrap();
    let o = run(&[]);
    assert!(o.status.success());
    let aside = out
        .join("rate=inf")
        .join("prompts")
        .join("good.jsonl.interrupted-1");
    assert_eq!(std::fs::read_to_string(aside).unwrap().lines().count(), 6);
    assert_eq!(record_values(&out).len(), 36);

    // Nonsense is refused with the flag named.
    for (flag, value, needle) in [
        ("--max-concurrency", "0", "--max-concurrency"),
        ("--rates", "1,fast", "--rates"),
        ("--burstiness", "0", "--burstiness"),
        ("--goodput", "speed:3", "--goodput"),
    ] {
        let o = cmd(&[
            "load",
            "--offline",
            "--target",
            &format!("good={good},model=m"),
            "--prompts",
            prompts.to_str().unwrap(),
            flag,
            value,
            "--out",
            dir.path().join("x").to_str().unwrap(),
        ])
        .output()
        .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && e.contains(needle),
            "{flag} {value}: {e}"
        );
    }
}
