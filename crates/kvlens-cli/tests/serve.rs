//! The `openai` backend against real servers over loopback: `kvlens serve` itself (greedy
//! outputs and scores must equal a local run's), and servers that this test makes misbehave
//! (down, slow, error statuses, malformed JSON, cut streams), which must give clear error
//! records while the run goes on and keeps what it wrote.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::rawhttp as http;
use common::{cmd, ok, serve_with, Served};

fn serve(method: &str, extra: &[&str]) -> Served {
    let mut args = vec!["--method", method];
    args.extend_from_slice(extra);
    serve_with(&args)
}

/// Two small tasks written here: one through the chat template (sent to
/// /chat/completions), one raw (sent to /completions), with a stop string.
fn write_tasks(dir: &Path) -> String {
    let facts = [
        ("Lyon", "The river that runs through Lyon is the Rhone. Lyon is known for its food and its old town.", "Which river runs through Lyon?", "Rhone"),
        ("owl", "An owl is a bird that hunts at night. Owls can turn their heads very far and have silent wings.", "When does an owl hunt?", "at night"),
        ("tea", "Green tea is made from leaves that are steamed or pan-fired soon after picking, so they do not oxidize.", "What is done to green tea leaves after picking?", "steamed or pan-fired"),
    ];
    let mut chat = String::new();
    let mut raw = String::new();
    for (id, ctx, q, a) in facts {
        let line = serde_json::json!({"id": id, "context": ctx, "input": q, "answers": [a]});
        chat.push_str(&format!("{line}\n"));
        raw.push_str(&format!("{line}\n"));
    }
    std::fs::write(dir.join("chatqa.jsonl"), chat).unwrap();
    std::fs::write(dir.join("rawqa.jsonl"), raw).unwrap();
    std::fs::write(
        dir.join("chatqa.toml"),
        "name = \"chatqa\"\ndata = \"chatqa.jsonl\"\ntemplate = \"{context}\\n\\nQuestion: {input}\"\n\
         max_new_tokens = 24\nmetric = \"qa_f1\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("rawqa.toml"),
        "name = \"rawqa\"\ndata = \"rawqa.jsonl\"\ntemplate = \"{context}\\nQ: {input}\\nA:\"\n\
         max_new_tokens = 24\nmetric = \"qa_f1\"\nchat = false\nstop = [\"\\n\"]\n",
    )
    .unwrap();
    format!(
        "tasks = [\"{}\", \"{}\"]\n",
        dir.join("chatqa.toml").display(),
        dir.join("rawqa.toml").display()
    )
}

/// (task, sample, method) → the record, from every `.jsonl` under `dir`.
fn records(dir: &Path) -> BTreeMap<(String, String, String), serde_json::Value> {
    let mut out = BTreeMap::new();
    for task in std::fs::read_dir(dir).unwrap() {
        let task = task.unwrap().path();
        if !task.is_dir() || task.ends_with("analysis") {
            continue;
        }
        for f in std::fs::read_dir(&task).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_none_or(|x| x != "jsonl") {
                continue;
            }
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let k = (
                    v["task"].as_str().unwrap().to_string(),
                    v["sample_id"].as_str().unwrap().to_string(),
                    v["method"].as_str().unwrap().to_string(),
                );
                assert!(out.insert(k.clone(), v).is_none(), "{k:?} twice");
            }
        }
    }
    out
}

#[test]
fn a_run_through_kvlens_serve_equals_the_same_run_done_locally() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = write_tasks(dir.path());
    let full = serve("full", &[]);
    let stream = serve("streamingllm:budget=32,sink=4", &["--api-key-env", "PATH"]);
    let key = std::env::var("PATH").unwrap();
    let config = dir.path().join("remote.toml");
    std::fs::write(
        &config,
        format!(
            "{tasks}\n[methods.full]\nbackend = \"openai\"\nbase_url = \"{}\"\nmodel = \"default\"\n\n\
             [methods.stream32]\nbackend = \"openai\"\nbase_url = \"{}\"\nmodel = \"default\"\n\
             api_key_env = \"PATH\"\n",
            full.url, stream.url
        ),
    )
    .unwrap();
    let remote_out = dir.path().join("remote");
    let local_out = dir.path().join("local");
    ok(cmd(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--out",
        remote_out.to_str().unwrap(),
        "--concurrency",
        "2",
        "--offline",
    ])
    .output()
    .unwrap());
    std::fs::write(dir.path().join("local.toml"), &tasks).unwrap();
    ok(cmd(&[
        "run",
        "--config",
        dir.path().join("local.toml").to_str().unwrap(),
        "--methods",
        "full,streamingllm:budget=32,sink=4",
        "--out",
        local_out.to_str().unwrap(),
        "--offline",
    ])
    .output()
    .unwrap());
    let remote = records(&remote_out);
    let local = records(&local_out);
    assert_eq!(remote.len(), 12);
    assert_eq!(local.len(), 12);
    let mut differ_from_full = 0;
    for ((task, id, method), r) in &remote {
        let local_method = if method == "full" {
            "full".to_string()
        } else {
            let m = local
                .keys()
                .find(|k| k.0 == *task && k.1 == *id && k.2.starts_with("streamingllm"))
                .unwrap();
            m.2.clone()
        };
        let l = &local[&(task.clone(), id.clone(), local_method)];
        assert!(r.get("error").is_none(), "{r}");
        for f in [
            "output_text",
            "score",
            "output_tokens",
            "prompt_tokens",
            "finish_reason",
            "kv_bytes_peak",
        ] {
            assert_eq!(r[f], l[f], "{task}/{id}/{method}: {f}");
        }
        assert_eq!(r["served"]["output_tokens_from"], "usage");
        assert_eq!(r["served"]["prefill_from"], "server");
        let t = |k: &str| r[k].as_f64().unwrap();
        assert!(t("ttft_ms") > 0.0 && t("e2e_ms") >= t("ttft_ms"), "{r}");
        if method != "full" {
            let f = &remote[&(task.clone(), id.clone(), "full".to_string())];
            differ_from_full += (f["output_text"] != r["output_text"]) as usize;
            assert!(
                r["kv_bytes_end"].as_u64() < f["kv_bytes_end"].as_u64(),
                "{r}"
            );
        }
    }
    // The compressed server really compressed: its cache was smaller on every sample (above),
    // and the answers are not all the baseline's.
    eprintln!("streamingllm answers differing from full: {differ_from_full} of 6");
    let text = std::fs::read_to_string(remote_out.join("run.toml")).unwrap();
    assert!(text.contains("api_key_env = \"PATH\"") && !text.contains(&key));
    let stop = remote
        .values()
        .filter(|r| r["task"] == "rawqa" && r["finish_reason"] == "stop")
        .count();
    assert!(stop > 0, "no raw answer ended at the stop string");

    // Inspect finds the question through the run's own task list.
    let shown = ok(cmd(&[
        "inspect",
        remote_out.to_str().unwrap(),
        "--task",
        "chatqa",
        "--sample",
        "owl",
    ])
    .output()
    .unwrap());
    assert!(shown.contains("input: When does an owl hunt?"), "{shown}");
    assert!(
        shown.contains("── full ──") && shown.contains("── stream32 ──"),
        "{shown}"
    );

    // The analysis of the remote folder runs with the remote baseline.
    let analysis = remote_out.join("analysis");
    let a = ok(cmd(&[
        "analyze",
        remote_out.to_str().unwrap(),
        "--json",
        "--out",
        analysis.to_str().unwrap(),
    ])
    .output()
    .unwrap());
    assert!(analysis.join("tasks.csv").is_file());
    let v: serde_json::Value = serde_json::from_str(&a).unwrap();
    assert!(v["tasks"].as_array().is_some_and(|t| !t.is_empty()), "{v}");
}

/// What a test server does with the n-th request it gets.
#[derive(Clone, Copy)]
enum Fault {
    Fine,
    /// 503 with Retry-After: 0 the first time a request body comes, fine the second.
    Flaky,
    Status(u16),
    BadJson,
    Cut,
    Slow,
    /// 401 whose body echoes the Authorization header.
    Echo,
}

fn fake_server(fault: Fault) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let c = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            std::thread::spawn(move || answer(&mut s, fault, &seen));
        }
    });
    (url, count)
}

fn answer(s: &mut TcpStream, fault: Fault, seen: &Mutex<HashSet<Vec<u8>>>) {
    let Ok(req) = http::read_request(s, Duration::from_secs(10)) else {
        return;
    };
    let first = seen.lock().unwrap().insert(req.body.clone());
    let event = |text: &str, finish: Option<&str>| {
        serde_json::json!({"choices": [{"index": 0, "delta": {"content": text},
                                         "finish_reason": finish}]})
        .to_string()
    };
    // Write errors are ignored: a client that timed out has gone.
    let fine = |s: &mut TcpStream| {
        let _ = http::start_events(s)
            .and_then(|_| http::send_event(s, &event("Paris", None)))
            .and_then(|_| http::send_event(s, &event(" it is", Some("stop"))))
            .and_then(|_| http::send_event(s, "[DONE]"));
    };
    match fault {
        Fault::Fine => fine(s),
        Fault::Flaky if first => {
            let _ = s.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 4\r\n\
                  Connection: close\r\n\r\nbusy",
            );
        }
        Fault::Flaky => fine(s),
        Fault::Status(code) => http::respond_error(s, code, "the model crashed"),
        Fault::BadJson => {
            let _ = http::start_events(s)
                .and_then(|_| http::send_event(s, &event("Par", None)))
                .and_then(|_| http::send_event(s, "{\"choices\": [{\"delta\": "));
        }
        Fault::Cut => {
            // The connection closes after one piece, without a finish_reason.
            let _ = http::start_events(s).and_then(|_| http::send_event(s, &event("Par", None)));
        }
        Fault::Slow => {
            std::thread::sleep(Duration::from_secs(3));
            fine(s);
        }
        Fault::Echo => {
            let auth = req.header("authorization").unwrap_or("").to_string();
            http::respond_error(s, 401, &format!("bad key {auth}"));
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
}

#[test]
fn faulty_servers_give_error_records_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = write_tasks(dir.path());
    let down = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let (fine, _) = fake_server(Fault::Fine);
    let (flaky, flaky_count) = fake_server(Fault::Flaky);
    let (status, status_count) = fake_server(Fault::Status(500));
    let (bad_request, bad_request_count) = fake_server(Fault::Status(400));
    let (bad_json, _) = fake_server(Fault::BadJson);
    let (cut, cut_count) = fake_server(Fault::Cut);
    let (slow, _) = fake_server(Fault::Slow);
    let (echo, _) = fake_server(Fault::Echo);
    let secret = "sk-test-5ecret-never-written";
    let mut config = tasks.clone();
    for (name, url) in [
        ("full", &fine),
        ("flaky", &flaky),
        ("status", &status),
        ("bad_request", &bad_request),
        ("bad_json", &bad_json),
        ("cut", &cut),
        ("slow", &slow),
        ("down", &down),
        ("echo", &echo),
    ] {
        config.push_str(&format!(
            "\n[methods.{name}]\nbackend = \"openai\"\nbase_url = \"{url}\"\nmodel = \"m\"\n\
             retries = 1\nbackoff_ms = 10\ntimeout_s = 1.5\napi_key_env = \"KVLENS_TEST_KEY\"\n"
        ));
    }
    let cfg = dir.path().join("faults.toml");
    std::fs::write(&cfg, &config).unwrap();
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--offline",
        ];
        args.extend_from_slice(extra);
        cmd(&args).env("KVLENS_TEST_KEY", secret).output().unwrap()
    };
    let o = run(&[]);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    assert!(!stderr.contains(secret));
    let recs = records(&out);
    assert_eq!(
        recs.len(),
        6 * 9,
        "every sample of every method has a record"
    );
    let errors = |m: &str| -> Vec<String> {
        recs.iter()
            .filter(|(k, _)| k.2 == m)
            .map(|(_, v)| v["error"].as_str().unwrap_or("").to_string())
            .collect()
    };
    for m in ["full", "flaky"] {
        assert!(
            errors(m).iter().all(String::is_empty),
            "{m}: {:?}",
            errors(m)
        );
    }
    for r in recs.values().filter(|r| r["method"] == "flaky") {
        assert_eq!(r["served"]["attempts"], 2, "{r}");
        assert_eq!(r["output_text"], "Paris it is");
        // Counted with the run's tokenizer: the server sent no usage.
        assert_eq!(r["served"]["output_tokens_from"], "tokenizer");
        assert!(r["output_tokens"].as_u64().unwrap() >= 3);
    }
    assert_eq!(flaky_count.load(Ordering::SeqCst), 12);
    let expect = [
        (
            "status",
            "answered HTTP 500: the model crashed (after 2 attempts)",
        ),
        ("bad_request", "answered HTTP 400: the model crashed"),
        ("bad_json", "stream event 2 is not valid JSON"),
        ("cut", "the stream ended before the answer was complete"),
        (
            "slow",
            "no complete answer within timeout_s = 1.5 s (after 2 attempts)",
        ),
        (
            "down",
            "Connection refused (os error 111) (after 2 attempts)",
        ),
        ("echo", "answered HTTP 401: bad key Bearer [api key]"),
    ];
    for (m, want) in expect {
        eprintln!("{m}: {}", errors(m)[0]);
        for e in errors(m) {
            assert!(e.contains(want), "{m}: `{e}` lacks `{want}`");
        }
    }
    // 400 is not retried; 500 and cut streams are, once.
    assert_eq!(bad_request_count.load(Ordering::SeqCst), 6);
    assert_eq!(status_count.load(Ordering::SeqCst), 12);
    assert_eq!(cut_count.load(Ordering::SeqCst), 12);

    // Run again: nothing is redone; with --retry-errors only the failed samples are, and
    // what succeeded stays byte for byte.
    let fine_file = out.join("chatqa").join("flaky.jsonl");
    let before = std::fs::read(&fine_file).unwrap();
    ok(run(&[]));
    assert_eq!(flaky_count.load(Ordering::SeqCst), 12);
    ok(run(&["--retry-errors"]));
    assert_eq!(flaky_count.load(Ordering::SeqCst), 12);
    assert_eq!(status_count.load(Ordering::SeqCst), 24);
    assert_eq!(std::fs::read(&fine_file).unwrap(), before);
    assert_eq!(records(&out).len(), 6 * 9);
    let mut all = String::new();
    for entry in walk(&out) {
        all.push_str(&String::from_utf8_lossy(&std::fs::read(entry).unwrap()));
    }
    assert!(!all.contains(secret), "the API key reached a file");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// One streaming completion over a raw socket; the `kvlens` object of its last event.
fn stream_completion(url: &str, prompt: &str, max_tokens: usize) -> serde_json::Value {
    let addr = url.trim_start_matches("http://").trim_end_matches("/v1");
    let mut s = TcpStream::connect(addr).unwrap();
    let body = serde_json::json!({"model": "default", "prompt": prompt, "max_tokens": max_tokens,
                                  "temperature": 0, "stream": true, "ignore_eos": true})
    .to_string();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut last = serde_json::Value::Null;
    for line in BufReader::new(s).lines() {
        let line = line.unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(data) {
                if v.get("kvlens").is_some() {
                    last = v["kvlens"].clone();
                }
            }
        }
    }
    last
}

#[test]
fn concurrent_streaming_clients_decode_together() {
    let server = serve("full", &["--max-batch", "8"]);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let url = server.url.clone();
            std::thread::spawn(move || {
                stream_completion(&url, &format!("Count the apples, number {i}: one"), 40)
            })
        })
        .collect();
    let ends: Vec<serde_json::Value> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let step =
        |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    let last_first = ends
        .iter()
        .map(|e| step(e, "first_token_step"))
        .max()
        .unwrap();
    let first_last = ends
        .iter()
        .map(|e| step(e, "last_token_step"))
        .min()
        .unwrap();
    // In the server's own order of steps, every client's first token came before any
    // client's last: all eight decoded in the same steps.
    assert!(last_first < first_last, "{ends:?}");
    for e in &ends {
        assert_eq!(e["preemptions"], 0);
    }
}

fn addr_of(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_string()
}

/// One request over a fresh socket (`Connection: close`): the status and the body.
fn raw(url: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let addr = addr_of(url);
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.unwrap_or("");
    // A server that refuses the connection may close it before the request is all written.
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut text);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn json_of(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn one_server_serves_several_methods_by_model_id() {
    let server = serve("full", &["--method", "streamingllm:budget=16"]);
    let (status, body) = raw(&server.url, "GET", "/v1/models", None);
    assert_eq!(status, 200, "{body}");
    let list = json_of(&body);
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["default/full", "default/streamingllm"]);
    let ask = |model: &str| {
        let body = serde_json::json!({"model": model, "prompt": "The capital of France is",
                                      "max_tokens": 4, "temperature": 0})
        .to_string();
        raw(&server.url, "POST", "/v1/completions", Some(&body))
    };
    for (model, method) in [
        ("default", "full"),
        ("default/full", "full"),
        ("default/streamingllm", "streamingllm"),
        ("default/streamingllm:budget=16", "streamingllm"),
    ] {
        let (status, body) = ask(model);
        assert_eq!(status, 200, "{model}: {body}");
        let v = json_of(&body);
        assert_eq!(v["model"], ids[(method != "full") as usize], "{body}");
        let served = v["kvlens"]["method"].as_str().unwrap();
        assert!(served.starts_with(method), "{model} ran {served}");
    }
    let (status, body) = ask("default/snapkv");
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("default/full, default/streamingllm"),
        "{body}"
    );
}

#[test]
fn the_http_stack_keeps_alive_reads_chunked_bodies_and_closes_idle_clients() {
    let server = serve(
        "full",
        &["--max-connections", "3", "--header-timeout", "0.5"],
    );
    let addr = addr_of(&server.url);
    // Keep-alive: two requests on one connection.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    for _ in 0..2 {
        write!(s, "GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut len = 0;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if h == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; len];
        std::io::Read::read_exact(&mut reader, &mut body).unwrap();
        let h: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(h["status"], "ok");
        assert_eq!(h["requests_in_flight"], 0);
    }
    drop(reader);
    drop(s);
    // A chunked request body.
    let body = r#"{"prompt": "Hello", "max_tokens": 2, "temperature": 0}"#;
    let (a, b) = body.split_at(10);
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    )
    .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut s, &mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"completion_tokens\":2"), "{text}");
    // Idle clients hold every connection slot; the server closes them at the header
    // timeout, and then answers again.
    let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let (status, _) = raw(&server.url, "GET", "/health", None);
    assert_eq!(status, 503, "a fourth connection past --max-connections 3");
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = Vec::new();
        // The server ends the connection (with a 408 or without a word).
        let _ = std::io::Read::read_to_end(&mut s, &mut buf);
    }
    let mut status = 0;
    for _ in 0..50 {
        status = raw(&server.url, "GET", "/health", None).0;
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        status, 200,
        "the slots of closed idle connections are free again"
    );
}

#[test]
fn a_prompt_beyond_the_budget_or_an_unknown_role_is_a_400_and_sigterm_lets_streams_finish() {
    // About 90 tokens of full cache: the short prompt below fits, the long one does not.
    let server = serve("full", &["--kv-budget", "2MiB"]);
    let long = "word ".repeat(200);
    for stream in [false, true] {
        let body =
            serde_json::json!({"prompt": long, "max_tokens": 4, "stream": stream}).to_string();
        let (status, body) = raw(&server.url, "POST", "/v1/completions", Some(&body));
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("KV budget"), "{body}");
    }
    // A chat message with a role the OpenAI API does not have is refused, by its index.
    let body = serde_json::json!({"messages": [{"role": "user", "content": "hi"},
        {"role": "narrator", "content": "x"}], "max_tokens": 2})
    .to_string();
    let (status, body) = raw(&server.url, "POST", "/v1/chat/completions", Some(&body));
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("messages[1].role") && body.contains("narrator"),
        "{body}"
    );
    // SIGTERM while a stream is going: it still ends with [DONE], then the process exits 0.
    let addr = addr_of(&server.url);
    let mut s = TcpStream::connect(&addr).unwrap();
    let body = r#"{"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0,
                   "stream": true, "ignore_eos": true}"#;
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut lines = BufReader::new(s).lines();
    let first = lines
        .by_ref()
        .map(|l| l.unwrap())
        .find(|l| l.starts_with("data: "))
        .expect("a first event");
    assert!(first.contains("choices"), "{first}");
    let mut server = server;
    unsafe {
        libc::kill(server.child.id() as i32, libc::SIGTERM);
    }
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(
        rest.iter().any(|l| l == "data: [DONE]"),
        "the stream in flight finished: {rest:?}"
    );
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
