//! The scheduler: requests batched together give what each gives alone; the KV budget
//! admits as many requests as their methods' caches allow; preempted requests come back with
//! the same tokens, reported once; events come in order. Checked on the schedule of events and
//! steps, never on wall-clock time.

mod common;

use common::tiny::{hf_tensors, mixed, write_gguf, write_tokenizer, Arch};
use kvlens_engine::sched::{CacheSource, Event, Finished, Limits, Request, Scheduler};
use kvlens_engine::{generate, GenOptions, Model};
use kvlens_press::{KvDtype, Spec};
use std::collections::BTreeMap;

fn tiny() -> (tempfile::TempDir, Model) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tiny.gguf");
    write_gguf(
        &path,
        Arch::Qwen2,
        &hf_tensors(Arch::Qwen2, 31),
        &mixed,
        false,
    );
    write_tokenizer(tmp.path());
    let model = Model::from_gguf(&path).unwrap();
    (tmp, model)
}

fn prompt(len: usize, seed: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 37 + seed * 11 + 5) % 96)
        .collect()
}

fn opts(max_new: usize) -> GenOptions {
    GenOptions {
        max_new_tokens: max_new,
        top_logits: 2,
        prefill_chunk: 32,
        ..GenOptions::default()
    }
}

fn request(id: u64, method: &str, len: usize, max_new: usize) -> Request<'static> {
    Request {
        id,
        prompt: prompt(len, id as u32),
        cache: CacheSource::New(Spec::parse(method).unwrap(), KvDtype::F16),
        opts: opts(max_new),
    }
}

/// Runs `reqs` through a scheduler; returns every event in order (as `(id, Some(index))` for
/// tokens and `(id, None)` for the end), the finished requests by id, the number of running
/// requests after each step, and the refusals.
#[allow(clippy::type_complexity)]
fn run(
    model: &Model,
    limits: Limits,
    reqs: Vec<Request<'static>>,
) -> (
    Vec<(u64, Option<usize>)>,
    BTreeMap<u64, Finished>,
    Vec<usize>,
    BTreeMap<u64, String>,
) {
    let mut s = Scheduler::new(model, limits).unwrap();
    for r in reqs {
        s.submit(r);
    }
    let (mut events, mut done, mut running, mut failed) =
        (Vec::new(), BTreeMap::new(), Vec::new(), BTreeMap::new());
    let mut guard = 0;
    while !s.is_idle() {
        s.step(&mut |e| match e {
            Event::Token { id, index, .. } => events.push((id, Some(index))),
            Event::Done { id, result } => {
                events.push((id, None));
                match result {
                    Ok(f) => {
                        done.insert(id, *f);
                    }
                    Err(e) => {
                        failed.insert(id, e.to_string());
                    }
                }
            }
        });
        running.push(s.running());
        guard += 1;
        assert!(guard < 10_000, "the scheduler does not finish");
    }
    (events, done, running, failed)
}

fn alone(model: &Model, r: &Request) -> kvlens_engine::Generation {
    let CacheSource::New(spec, dtype) = &r.cache else {
        unreachable!("the tests' requests bring no cache")
    };
    let mut cache = model.new_cache(spec, *dtype);
    generate(model, &mut cache, &r.prompt, &r.opts).unwrap()
}

fn same_as_alone(model: &Model, reqs: &[Request], done: &BTreeMap<u64, Finished>) {
    for r in reqs {
        let want = alone(model, r);
        let got = &done[&r.id].generation;
        assert_eq!(got.tokens, want.tokens, "request {}", r.id);
        assert_eq!(got.top_logits.len(), want.top_logits.len());
        for (a, b) in got.top_logits.iter().zip(&want.top_logits) {
            for ((ia, la), (ib, lb)) in a.iter().zip(b) {
                assert!(ia == ib && la.to_bits() == lb.to_bits(), "request {}", r.id);
            }
        }
        assert_eq!(got.kv_bytes_peak, want.kv_bytes_peak, "request {}", r.id);
        assert_eq!(got.finish_reason, want.finish_reason);
    }
}

fn reqs_mixed() -> Vec<Request<'static>> {
    vec![
        request(1, "full", 70, 6),
        request(2, "snapkv:budget=16,window=8", 50, 9),
        request(3, "h2o:budget=16", 90, 4),
        request(4, "kivi:residual=16", 33, 7),
        request(5, "streamingllm:budget=24", 61, 5),
        request(6, "int4", 12, 8),
    ]
}

#[test]
fn batched_requests_give_what_each_gives_alone_and_events_come_in_order() {
    let (_t, model) = tiny();
    let limits = Limits {
        kv_budget: 1 << 30,
        max_batch: 4,
        prefill_chunk: 64,
    };
    let (events, done, running, failed) = run(&model, limits, reqs_mixed());
    assert!(failed.is_empty(), "{failed:?}");
    same_as_alone(&model, &reqs_mixed(), &done);
    assert!(running.iter().all(|&n| n <= 4));
    assert!(running.contains(&4), "never four at once: {running:?}");
    // Per request: tokens 0, 1, 2, ... each once, then its end.
    for r in reqs_mixed() {
        let mine: Vec<Option<usize>> = events.iter().filter(|e| e.0 == r.id).map(|e| e.1).collect();
        let n = done[&r.id].generation.output_tokens;
        let want: Vec<Option<usize>> = (0..n).map(Some).chain([None]).collect();
        assert_eq!(mine, want, "request {}", r.id);
        assert_eq!(done[&r.id].preemptions, 0);
    }
    // First come, first served: the first four start before the fifth and sixth, whose first
    // tokens come after the first request to end.
    let first_token = |id| events.iter().position(|e| *e == (id, Some(0))).unwrap();
    let first_end = events.iter().position(|e| e.1.is_none()).unwrap();
    for id in 1..=4 {
        assert!(first_token(id) < first_end);
    }
    for id in 5..=6 {
        assert!(first_token(id) > first_end);
    }
}

#[test]
fn the_kv_budget_admits_more_requests_of_a_method_that_keeps_less() {
    let (_t, model) = tiny();
    let shape = model.config().cache_shape();
    // Room for the prompts of three full caches of 64 tokens.
    let budget = 3 * shape.full_bytes(64, KvDtype::F16) + 100;
    let limits = Limits {
        kv_budget: budget,
        max_batch: 16,
        prefill_chunk: 1024,
    };
    let of = |method: &str| -> Vec<Request<'static>> {
        (0..8).map(|i| request(i, method, 64, 3)).collect()
    };
    let (_, done_full, running_full, _) = run(&model, limits, of("full"));
    let (_, done_snap, running_snap, _) = run(&model, limits, of("snapkv:budget=16,window=8"));
    let most = |r: &[usize]| r.iter().copied().max().unwrap();
    assert!(most(&running_full) <= 3, "{running_full:?}");
    assert!(most(&running_snap) > 3, "{running_snap:?}");
    assert_eq!(done_full.len(), 8);
    assert_eq!(done_snap.len(), 8);
    same_as_alone(&model, &of("snapkv:budget=16,window=8"), &done_snap);
    // Those that waited say so.
    assert!(done_full.values().any(|f| f.queue_ms > 0.0));
}

#[test]
fn preempted_requests_come_back_with_the_same_tokens_reported_once() {
    let (_t, model) = tiny();
    let shape = model.config().cache_shape();
    // The prompts of two fit; their 40 new tokens each do not.
    let budget = shape.full_bytes(2 * 20 + 30, KvDtype::F16);
    let limits = Limits {
        kv_budget: budget,
        max_batch: 8,
        prefill_chunk: 1024,
    };
    let reqs: Vec<Request<'static>> = (0..3).map(|i| request(i, "full", 20, 40)).collect();
    let (events, done, _, failed) = run(&model, limits, reqs);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        done.values().any(|f| f.preemptions > 0),
        "no preemption: {:?}",
        done.values().map(|f| f.preemptions).collect::<Vec<_>>()
    );
    let reqs: Vec<Request<'static>> = (0..3).map(|i| request(i, "full", 20, 40)).collect();
    same_as_alone(&model, &reqs, &done);
    for r in &reqs {
        let mine: Vec<Option<usize>> = events.iter().filter(|e| e.0 == r.id).map(|e| e.1).collect();
        let want: Vec<Option<usize>> = (0..40).map(Some).chain([None]).collect();
        assert_eq!(mine, want, "request {}", r.id);
    }
}

#[test]
fn a_request_that_cannot_fit_alone_fails_and_the_others_go_on() {
    let (_t, model) = tiny();
    let shape = model.config().cache_shape();
    let limits = Limits {
        kv_budget: shape.full_bytes(100, KvDtype::F16),
        max_batch: 8,
        prefill_chunk: 256,
    };
    let reqs = vec![
        request(1, "full", 30, 4),
        request(2, "full", 200, 4),
        request(3, "snapkv:budget=16,window=8", 200, 4),
        request(4, "full", 3, 5000),
    ];
    let (_, done, _, failed) = run(&model, limits, reqs);
    assert!(
        failed[&2].contains("more than the whole KV budget"),
        "{failed:?}"
    );
    // The snapkv request's prompt goes in whole before it compresses, so it cannot fit
    // either: compression after prefill does not lower the prefill's peak.
    assert!(
        failed[&3].contains("more than the whole KV budget"),
        "{failed:?}"
    );
    assert!(
        failed[&4].contains("exceeds the model's context"),
        "{failed:?}"
    );
    assert_eq!(done.keys().copied().collect::<Vec<_>>(), vec![1]);
    assert!(Scheduler::new(
        &model,
        Limits {
            kv_budget: 0,
            ..limits
        }
    )
    .is_err());
}
