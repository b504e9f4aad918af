//! A discrete-event simulation of the scheduler that `kvlens serve` runs
//! ([`kvlens_engine::sched::Scheduler`]), with a step-time model in place of the engine.
//!
//! It follows the server's loop step for step: requests that have arrived when a step begins
//! join the queue; waiting requests are admitted first come, first served while the batch has
//! room and the KV budget holds what their caches will hold once their prompts are in
//! ([`kvlens_press::projected_peak_bytes`], the scheduler's own figure); the newest running
//! request is preempted and recomputed later when the growing caches would pass the budget;
//! each step takes every decoding sequence's next token and prompt chunks while the per-step
//! prompt-token budget lasts. Admission, step composition and preemption are the policy
//! functions the scheduler itself calls ([`kvlens_engine::sched::policy`]); a sequence's
//! prompt chunks are `generate`'s ([`kvlens_engine::prefill_chunks`]); its cache bytes after
//! each chunk and token come from a dry run of the method's byte accounting
//! ([`kvlens_press::KvCache::simulate`]), exact for every method. A step lasts what the
//! step-time model says for its shape ([`StepShape`]).

use crate::error::{PredictError, Result};
use kvlens_engine::prefill_chunks;
use kvlens_engine::sched::{policy, Limits, StepShape};
use kvlens_press::{projected_peak_bytes, CacheShape, KvCache, KvDtype, Spec};
use std::collections::{HashMap, VecDeque};

/// One request of the simulated load.
#[derive(Debug, Clone, PartialEq)]
pub struct SimRequest {
    /// Seconds from the start of the load point.
    pub arrival_s: f64,
    pub prompt_tokens: usize,
    /// Tokens the answer holds.
    pub output_tokens: usize,
    /// The answer ended on an end-of-sequence token or a stop string, which took one more
    /// step than its tokens (the step that chose the ending); false when it ran to its
    /// maximum length.
    pub stopped: bool,
}

impl SimRequest {
    /// Tokens the scheduler accepts for it, the ending included.
    fn accepts(&self) -> usize {
        (self.output_tokens + usize::from(self.stopped)).max(1)
    }
}

/// What the simulated server runs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub limits: Limits,
    pub spec: Spec,
    pub dtype: KvDtype,
    pub shape: CacheShape,
    /// Prompt tokens per chunk of one sequence (`GenOptions::prefill_chunk`).
    pub chunk: usize,
    /// The smallest last chunk (`GenOptions::min_last_chunk`).
    pub min_last_chunk: usize,
}

/// A simulated request's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct SimDone {
    pub arrival_s: f64,
    /// When each of its tokens was reported, seconds.
    pub token_s: Vec<f64>,
    pub done_s: f64,
    /// From arrival to its last admission, ms.
    pub queue_ms: f64,
    pub preemptions: usize,
    /// Refused: the cache its prompt needs does not fit the whole budget.
    pub error: Option<String>,
}

/// The whole simulated load point.
#[derive(Debug, Clone)]
pub struct SimResult {
    /// In the order of the requests given.
    pub done: Vec<SimDone>,
    pub steps: usize,
    /// Sequences per engine step, on average.
    pub mean_batch: f64,
    pub peak_batch: usize,
    /// The most bytes the running caches held together after a step.
    pub peak_kv_bytes: usize,
    pub preemptions: usize,
}

/// A prompt length's cache bytes: after each prompt chunk, and after each decode step.
struct Trajectory {
    chunks: Vec<(usize, usize)>,
    after_chunk: Vec<usize>,
    /// `after_decode[d]`: after `d` decode steps (`[0]` is after the prompt).
    after_decode: Vec<usize>,
    /// What admission reserves.
    need: usize,
}

fn trajectory(cfg: &SimConfig, prompt: usize, decode_steps: usize) -> Trajectory {
    let window = cfg.spec.build().needs().window;
    let chunks = prefill_chunks(prompt, cfg.chunk, window.max(cfg.min_last_chunk));
    let need = projected_peak_bytes(&cfg.spec, cfg.shape, cfg.dtype, &chunks, 1);
    // One key/value head per layer, times the heads, as `projected_peak_bytes` counts.
    let one = CacheShape {
        n_heads: cfg.shape.group(),
        n_kv_heads: 1,
        ..cfg.shape
    };
    let heads = cfg.shape.n_kv_heads;
    let mut cache = KvCache::new(one, cfg.dtype, cfg.spec.build());
    cache.reserve(prompt + decode_steps + 1);
    let mut after_chunk = Vec::with_capacity(chunks.len());
    for (i, &(a, b)) in chunks.iter().enumerate() {
        cache.simulate_chunk(a, b, i + 1 == chunks.len());
        after_chunk.push(cache.bytes() * heads);
    }
    let mut after_decode = Vec::with_capacity(decode_steps + 1);
    after_decode.push(cache.bytes() * heads);
    for t in 0..decode_steps {
        cache.simulate_decode(prompt + t);
        after_decode.push(cache.bytes() * heads);
    }
    Trajectory {
        chunks,
        after_chunk,
        after_decode,
        need,
    }
}

struct Running {
    req: usize,
    reserved: usize,
    next_chunk: usize,
    /// Decode steps done, once the prompt is in.
    decoded: Option<usize>,
    /// Tokens accepted since this admission.
    accepted: usize,
}

struct Waiting {
    req: usize,
}

/// Runs the requests (sorted by arrival or not: each joins when its time comes) through the
/// simulated scheduler, each step lasting `step_ms(shape)` milliseconds.
pub fn simulate(
    cfg: &SimConfig,
    requests: &[SimRequest],
    step_ms: &dyn Fn(&StepShape) -> f64,
) -> Result<SimResult> {
    let l = cfg.limits;
    if l.max_batch == 0 || l.prefill_chunk == 0 || l.kv_budget == 0 || cfg.chunk == 0 {
        return Err(PredictError::Invalid(format!(
            "scheduler limits must be positive: kv budget {} bytes, max batch {}, prefill chunk {}, chunk {}",
            l.kv_budget, l.max_batch, l.prefill_chunk, cfg.chunk
        )));
    }
    if let Some((i, r)) = requests
        .iter()
        .enumerate()
        .find(|(_, r)| !(r.arrival_s.is_finite() && r.arrival_s >= 0.0) || r.prompt_tokens == 0)
    {
        return Err(PredictError::Invalid(format!(
            "request {i}: arrival {} s and prompt of {} tokens (an arrival at or after 0 and a non-empty prompt are needed)",
            r.arrival_s, r.prompt_tokens
        )));
    }
    // Every prompt length's byte trajectory, long enough for its longest answer.
    let mut longest: HashMap<usize, usize> = HashMap::new();
    for r in requests {
        let e = longest.entry(r.prompt_tokens).or_default();
        *e = (*e).max(r.accepts() - 1);
    }
    let traj: HashMap<usize, Trajectory> = longest
        .into_iter()
        .map(|(p, d)| (p, trajectory(cfg, p, d)))
        .collect();
    let one_row = cfg.shape.full_bytes(1, cfg.dtype);

    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by(|&a, &b| requests[a].arrival_s.total_cmp(&requests[b].arrival_s));
    let mut arrivals = order.into_iter().peekable();
    let mut done: Vec<SimDone> = requests
        .iter()
        .map(|r| SimDone {
            arrival_s: r.arrival_s,
            token_s: Vec::new(),
            done_s: f64::NAN,
            queue_ms: 0.0,
            preemptions: 0,
            error: None,
        })
        .collect();
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let mut running: Vec<Running> = Vec::new();
    let (mut t, mut steps, mut rows_total, mut peak_batch, mut peak_kv) = (0.0f64, 0, 0, 0, 0);
    let mut preemptions = 0;

    let bytes_now = |r: &Running| -> usize {
        let tr = &traj[&requests[r.req].prompt_tokens];
        match r.decoded {
            Some(d) => tr.after_decode[d],
            None if r.next_chunk == 0 => 0,
            None => tr.after_chunk[r.next_chunk - 1],
        }
    };

    loop {
        while let Some(&i) = arrivals.peek() {
            if requests[i].arrival_s > t {
                break;
            }
            waiting.push_back(Waiting { req: i });
            arrivals.next();
        }
        if waiting.is_empty() && running.is_empty() {
            match arrivals.peek() {
                Some(&i) => {
                    t = t.max(requests[i].arrival_s);
                    continue;
                }
                None => break,
            }
        }
        // Admission, as `Scheduler::admit`.
        while running.len() < l.max_batch {
            let Some(w) = waiting.front() else { break };
            let req = w.req;
            let need = traj[&requests[req].prompt_tokens].need;
            if need > l.kv_budget {
                waiting.pop_front();
                done[req].error = Some(format!(
                    "the prompt of {} tokens needs {need} bytes of cache under {}, more than the whole KV budget of {} bytes",
                    requests[req].prompt_tokens,
                    cfg.spec.canonical(),
                    l.kv_budget
                ));
                done[req].done_s = t;
                continue;
            }
            let held: usize = running.iter().map(|r| r.reserved.max(bytes_now(r))).sum();
            if !policy::admits(held, need, l.kv_budget) {
                break;
            }
            waiting.pop_front();
            done[req].queue_ms = (t - requests[req].arrival_s) * 1e3;
            running.push(Running {
                req,
                reserved: need,
                next_chunk: 0,
                decoded: None,
                accepted: 0,
            });
        }
        // Preemption, as `Scheduler::preempt_to_fit`.
        loop {
            let projected: usize = running
                .iter()
                .map(|r| policy::projected(r.decoded.is_some(), bytes_now(r), r.reserved, one_row))
                .sum();
            if !policy::must_preempt(projected, running.len(), l.kv_budget) {
                break;
            }
            let r = running.pop().expect("more than one sequence runs");
            done[r.req].preemptions += 1;
            preemptions += 1;
            waiting.push_front(Waiting { req: r.req });
        }
        if running.is_empty() {
            continue;
        }
        // The step, as `Scheduler::step`.
        let wants: Vec<Option<usize>> = running
            .iter()
            .map(|r| match r.decoded {
                Some(_) => None,
                None => {
                    let (a, b) = traj[&requests[r.req].prompt_tokens].chunks[r.next_chunk];
                    Some(b - a)
                }
            })
            .collect();
        let joins = policy::join_step(&wants, l.prefill_chunk);
        let mut shape = StepShape::default();
        for (r, _) in running.iter().zip(&joins).filter(|(_, j)| **j) {
            match r.decoded {
                Some(_) => shape.add_decode(bytes_now(r)),
                None => {
                    let (a, b) = traj[&requests[r.req].prompt_tokens].chunks[r.next_chunk];
                    shape.add_chunk(a, b);
                }
            }
        }
        let ms = step_ms(&shape);
        if !(ms.is_finite() && ms > 0.0) {
            return Err(PredictError::Invalid(format!(
                "the step-time model gives {ms} ms for a step of {shape:?}"
            )));
        }
        t += ms / 1e3;
        steps += 1;
        rows_total += shape.rows();
        peak_batch = peak_batch.max(shape.rows());
        let mut finished = Vec::new();
        for (k, (r, _)) in running
            .iter_mut()
            .zip(&joins)
            .enumerate()
            .filter(|(_, (_, j))| **j)
        {
            let tr = &traj[&requests[r.req].prompt_tokens];
            match r.decoded.as_mut() {
                Some(d) => *d += 1,
                None => {
                    r.next_chunk += 1;
                    if r.next_chunk < tr.chunks.len() {
                        continue;
                    }
                    r.decoded = Some(0);
                }
            }
            r.accepted += 1;
            let q = &requests[r.req];
            let out = &mut done[r.req];
            // A token reported before a preemption is not reported again.
            if r.accepted <= q.output_tokens && r.accepted > out.token_s.len() {
                out.token_s.push(t);
            }
            if r.accepted == q.accepts() {
                out.done_s = t;
                finished.push(k);
            }
        }
        peak_kv = peak_kv.max(running.iter().map(bytes_now).sum::<usize>());
        for k in finished.into_iter().rev() {
            running.remove(k);
        }
    }
    Ok(SimResult {
        done,
        steps,
        mean_batch: if steps > 0 {
            rows_total as f64 / steps as f64
        } else {
            0.0
        },
        peak_batch,
        peak_kv_bytes: peak_kv,
        preemptions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(spec: &str, kv_budget: usize, max_batch: usize) -> SimConfig {
        SimConfig {
            limits: Limits {
                kv_budget,
                max_batch,
                prefill_chunk: 512,
            },
            spec: Spec::parse(spec).unwrap(),
            dtype: KvDtype::F16,
            shape: CacheShape {
                n_layers: 2,
                n_heads: 4,
                n_kv_heads: 2,
                head_dim: 8,
            },
            chunk: 512,
            min_last_chunk: 64,
        }
    }

    fn req(arrival_s: f64, prompt: usize, out: usize) -> SimRequest {
        SimRequest {
            arrival_s,
            prompt_tokens: prompt,
            output_tokens: out,
            stopped: false,
        }
    }

    /// Every step costs 10 ms.
    fn flat(_: &StepShape) -> f64 {
        10.0
    }

    #[test]
    fn alone_a_request_takes_its_chunks_and_tokens_in_steps() {
        // 1000 prompt tokens: chunks of 512 and 488; then 9 decode steps for 10 tokens.
        let c = cfg("full", 1 << 30, 16);
        let r = simulate(&c, &[req(0.0, 1000, 10)], &flat).unwrap();
        let d = &r.done[0];
        assert_eq!(r.steps, 2 + 9);
        assert!((d.token_s[0] - 0.020).abs() < 1e-12);
        assert!((d.done_s - 0.110).abs() < 1e-12);
        assert_eq!(d.token_s.len(), 10);
        // A stopped answer takes one more step, and reports no more tokens.
        let r = simulate(
            &c,
            &[SimRequest {
                stopped: true,
                ..req(0.0, 1000, 10)
            }],
            &flat,
        )
        .unwrap();
        assert_eq!(r.steps, 12);
        assert_eq!(r.done[0].token_s.len(), 10);
    }

    #[test]
    fn the_budget_admits_by_what_the_method_keeps() {
        let shape = cfg("full", 1, 1).shape;
        let full_need = shape.full_bytes(300 + 1, KvDtype::F16);
        // Room for two full caches: the third request waits for one to finish.
        let c = cfg("full", 2 * full_need + full_need / 2, 16);
        let reqs: Vec<SimRequest> = (0..3).map(|_| req(0.0, 300, 5)).collect();
        let r = simulate(&c, &reqs, &flat).unwrap();
        assert_eq!(r.peak_batch, 2);
        assert!(r.done[2].queue_ms > 0.0 && r.done[0].queue_ms == 0.0);
        // A method keeping 64 tokens fits all three in the same memory.
        let c = cfg("streamingllm:budget=64", 2 * full_need + full_need / 2, 16);
        let r = simulate(&c, &reqs, &flat).unwrap();
        assert_eq!(r.peak_batch, 3);
        assert!(r.done.iter().all(|d| d.queue_ms == 0.0));
    }

    #[test]
    fn a_prompt_larger_than_the_budget_fails_and_the_rest_go_on() {
        let c = cfg("full", 8192, 16);
        let r = simulate(&c, &[req(0.0, 4000, 4), req(0.0, 10, 4)], &flat).unwrap();
        assert!(r.done[0]
            .error
            .as_deref()
            .unwrap()
            .contains("more than the whole KV budget"));
        assert!(r.done[1].error.is_none() && r.done[1].token_s.len() == 4);
    }

    #[test]
    fn growing_caches_preempt_the_newest_and_it_is_recomputed() {
        // Admission counts the cache once the prompt is in (plus a token); long answers then
        // grow past a tight budget, and the newest running request is preempted.
        let shape = cfg("full", 1, 1).shape;
        let need = shape.full_bytes(64 + 1, KvDtype::F16);
        let c = cfg("full", 2 * need + need / 4, 16);
        let reqs = vec![req(0.0, 64, 60), req(0.0, 64, 60)];
        let r = simulate(&c, &reqs, &flat).unwrap();
        assert!(r.preemptions >= 1);
        assert_eq!(r.done[1].preemptions, r.preemptions);
        // Both still get all their tokens, each reported once.
        for d in &r.done {
            assert_eq!(d.token_s.len(), 60);
            assert!(d.token_s.windows(2).all(|w| w[1] > w[0]));
        }
        assert!(r.done[1].done_s > r.done[0].done_s);
    }

    #[test]
    fn requests_join_when_they_arrive() {
        let c = cfg("full", 1 << 30, 16);
        let r = simulate(&c, &[req(0.0, 100, 3), req(5.0, 100, 3)], &flat).unwrap();
        assert!((r.done[0].done_s - 0.03).abs() < 1e-12);
        assert!((r.done[1].token_s[0] - 5.01).abs() < 1e-12);
        assert_eq!(r.done[1].queue_ms, 0.0);
    }
}
