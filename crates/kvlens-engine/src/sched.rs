//! Continuous batching under a KV memory budget: requests in, events out, one engine step
//! ([`crate::Transformer::step`]) over every running sequence at a time.
//!
//! Iteration-level scheduling as in Orca (Yu et al., OSDI 2022) and vLLM (Kwon et al., SOSP
//! 2023), with chunked prefill as in Sarathi-Serve (Agrawal et al., OSDI 2024): each step
//! holds one decode token of every decoding sequence and as many prompt chunks of prefilling
//! ones as the step's prompt-token budget allows. Requests are admitted first come, first
//! served, while the budget can hold what their caches really hold under their methods once
//! their prompts are in ([`kvlens_press::projected_peak_bytes`]), so a method that keeps less
//! admits more requests. When the growing caches would pass the budget, the newest running
//! request is preempted: its cache is freed and it starts again later from its prompt (as
//! vLLM's recompute), regenerating the same tokens; tokens already reported are not reported
//! again.
//!
//! A sequence's prompt chunks are those `generate` cuts for it alone, and every row of a step
//! is computed on its own, so a request's tokens and logits are the same bits in any batch as
//! alone.

use crate::error::{EngineError, Result};
use crate::generate::{
    check_prompt, prefill_chunks, Decoder, GenOptions, Generation, Prefilled, LLAMA_UBATCH,
};
use crate::model::{Logits, Seq};
use crate::Model;
use kvlens_press::{projected_peak_bytes, KvCache, KvDtype, Spec, Step};
use std::collections::VecDeque;
use std::time::Instant;

/// What the scheduler may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes all running caches may hold together.
    pub kv_budget: usize,
    /// Sequences running at once.
    pub max_batch: usize,
    /// Prompt tokens per step, counted in whole chunks (a step takes at least one chunk).
    pub prefill_chunk: usize,
}

impl Limits {
    /// The defaults of `serve`, `run` and `bench`: a quarter of this machine's memory for
    /// caches, 16 sequences, 512 prompt tokens per step.
    pub fn defaults() -> Self {
        Self {
            kv_budget: default_kv_budget(),
            max_batch: 16,
            prefill_chunk: 512,
        }
    }
}

/// A quarter of the machine's memory (`MemTotal` of /proc/meminfo), or 4 GiB where that
/// cannot be read.
pub fn default_kv_budget() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024 / 4)
        })
        .unwrap_or(4 << 30)
}

/// What one engine step computed: the terms a step-time model prices (`kvlens predict`).
/// The scheduler notes it for every step ([`Scheduler::last_step`]), and `kvlens predict`'s
/// simulator builds the same shape for the steps it simulates.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepShape {
    /// Sequences that decode one token in this step.
    pub decode_rows: usize,
    /// Bytes the decoding sequences' caches hold before the step: what their attention reads.
    pub decode_kv_bytes: u64,
    /// Prompt chunks in this step.
    pub prompt_chunks: usize,
    /// Prompt tokens in this step.
    pub prompt_tokens: usize,
    /// The sum over the step's prompt tokens of the tokens each attends to (its position
    /// plus one): the quadratic part of prefill.
    pub prompt_attended: u64,
}

impl StepShape {
    /// Adds one prompt chunk of the tokens at positions `a..b`.
    pub fn add_chunk(&mut self, a: usize, b: usize) {
        self.prompt_chunks += 1;
        self.prompt_tokens += b - a;
        // Σ_{p=a}^{b-1} (p + 1)
        self.prompt_attended += ((a + 1 + b) * (b - a) / 2) as u64;
    }

    /// Adds one decoding sequence whose cache holds `kv_bytes`.
    pub fn add_decode(&mut self, kv_bytes: usize) {
        self.decode_rows += 1;
        self.decode_kv_bytes += kv_bytes as u64;
    }

    /// Sequences in the step.
    pub fn rows(&self) -> usize {
        self.decode_rows + self.prompt_chunks
    }
}

/// The scheduler's policy, as pure functions that [`Scheduler`] and `kvlens predict`'s
/// simulator both call, so that the simulation admits, batches and preempts as `serve` does.
pub mod policy {
    /// Which running sequences join a step, in order of admission: every decoding one
    /// (`None`), and prefilling ones (`Some(next chunk's tokens)`) while the step's budget of
    /// `prefill_chunk` prompt tokens lasts. The first chunk always goes in, however long; a
    /// chunk too long for what is left is skipped, and a later, shorter one may still fit.
    pub fn join_step(rows: &[Option<usize>], prefill_chunk: usize) -> Vec<bool> {
        let mut left = prefill_chunk;
        let mut took_chunk = false;
        rows.iter()
            .map(|r| match *r {
                None => true,
                Some(n) => {
                    if took_chunk && n > left {
                        return false;
                    }
                    left = left.saturating_sub(n);
                    took_chunk = true;
                    true
                }
            })
            .collect()
    }

    /// Whether a waiting request needing `need` bytes is admitted beside running caches that
    /// hold (or have reserved) `held` bytes.
    pub fn admits(held: usize, need: usize, kv_budget: usize) -> bool {
        held + need <= kv_budget
    }

    /// What a running sequence may hold after the coming step, for preemption: a decoding
    /// one its bytes now plus one token's full row (`one_row`); a prefilling one the larger
    /// of its bytes now and what admission reserved for it.
    pub fn projected(decoding: bool, bytes_now: usize, reserved: usize, one_row: usize) -> usize {
        if decoding {
            bytes_now + one_row
        } else {
            reserved.max(bytes_now)
        }
    }

    /// Whether the newest running sequence must be preempted: the projection passes the
    /// budget and more than one sequence of the scheduler's own runs.
    pub fn must_preempt(projected: usize, owned: usize, kv_budget: usize) -> bool {
        projected > kv_budget && owned > 1
    }
}

/// One generation to run.
pub struct Request<'c> {
    /// The caller's name for it, repeated in its events.
    pub id: u64,
    pub prompt: Vec<u32>,
    pub cache: CacheSource<'c>,
    pub opts: GenOptions,
}

/// Where a request's cache comes from.
pub enum CacheSource<'c> {
    /// A new cache of this method and element type, counted against the KV budget.
    New(Spec, KvDtype),
    /// The caller's cache (reset first), left as the run leaves it; not counted against the
    /// budget, and never preempted. With the prompt's prefill already in it (and its last
    /// logits), the request starts decoding.
    Lent(&'c mut KvCache, Option<Prefilled>),
}

/// A running request's cache.
enum Slot<'c> {
    Own(Box<KvCache>),
    Lent(&'c mut KvCache),
}

impl std::ops::Deref for Slot<'_> {
    type Target = KvCache;
    fn deref(&self) -> &KvCache {
        match self {
            Slot::Own(c) => c,
            Slot::Lent(c) => c,
        }
    }
}

impl std::ops::DerefMut for Slot<'_> {
    fn deref_mut(&mut self) -> &mut KvCache {
        match self {
            Slot::Own(c) => c,
            Slot::Lent(c) => c,
        }
    }
}

/// What happened to a request.
#[derive(Debug)]
pub enum Event {
    /// Its `index`-th token (from 0) was accepted (not the EOS token, nor one that
    /// completes a stop string).
    Token { id: u64, index: usize, token: u32 },
    /// It finished (or failed: a prompt its cache cannot hold within the budget).
    Done {
        id: u64,
        result: Result<Box<Finished>>,
    },
}

/// A finished request: its generation (times from its last admission), the time it waited
/// in the queue before that admission, and how often it was preempted.
#[derive(Debug)]
pub struct Finished {
    pub generation: Generation,
    pub queue_ms: f64,
    pub preemptions: usize,
    /// The scheduler's steps (counted from 1) in which its first and last tokens were
    /// accepted (0 without tokens): the order of events across requests, free of clocks.
    pub first_step: usize,
    pub last_step: usize,
}

struct Waiting<'c> {
    req: Request<'c>,
    arrived: Instant,
    preemptions: usize,
    /// Tokens already reported in events (a preempted request reports none of them again).
    reported: usize,
}

struct Running<'c> {
    id: u64,
    prompt: Vec<u32>,
    opts: GenOptions,
    /// How to make its cache again after a preemption (a lent cache is never preempted).
    spec: Option<(Spec, KvDtype)>,
    arrived: Instant,
    admitted: Instant,
    queue_ms: f64,
    preemptions: usize,
    reported: usize,
    /// The bytes admission counted for it.
    reserved: usize,
    cache: Slot<'c>,
    chunks: Vec<(usize, usize)>,
    next_chunk: usize,
    /// After the prompt: the decoder, and the token to feed next.
    decoding: Option<(Decoder, u32)>,
    /// Logits of a prefill done before admission, to pick the first token from.
    pending: Option<Vec<f32>>,
    first_step: usize,
    last_step: usize,
}

/// The scheduler over one model. `submit` requests, then call `step` until `is_idle`.
pub struct Scheduler<'m> {
    model: &'m Model,
    limits: Limits,
    waiting: VecDeque<Waiting<'m>>,
    running: Vec<Running<'m>>,
    /// Events of requests refused at submission, reported by the next step.
    refused: Vec<Event>,
    steps: usize,
    peak_batch: usize,
    last: StepShape,
}

impl<'m> Scheduler<'m> {
    pub fn new(model: &'m Model, limits: Limits) -> Result<Self> {
        if limits.max_batch == 0 || limits.prefill_chunk == 0 || limits.kv_budget == 0 {
            return Err(EngineError::Invalid(format!(
                "scheduler limits must be positive: kv budget {} bytes, max batch {}, prefill chunk {}",
                limits.kv_budget, limits.max_batch, limits.prefill_chunk
            )));
        }
        Ok(Self {
            model,
            limits,
            waiting: VecDeque::new(),
            running: Vec::new(),
            refused: Vec::new(),
            steps: 0,
            peak_batch: 0,
            last: StepShape::default(),
        })
    }

    /// Queues a request; one that cannot run at all (an empty or too long prompt) is
    /// reported as failed by the next step.
    pub fn submit(&mut self, req: Request<'m>) {
        if let Err(e) = check_prompt(self.model, &req.prompt, &req.opts) {
            self.refused.push(Event::Done {
                id: req.id,
                result: Err(e),
            });
            return;
        }
        self.waiting.push_back(Waiting {
            req,
            arrived: Instant::now(),
            preemptions: 0,
            reported: 0,
        });
    }

    /// No request waits or runs.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty() && self.refused.is_empty()
    }

    /// Requests running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Engine steps run so far, and the most sequences one of them held.
    pub fn stats(&self) -> (usize, usize) {
        (self.steps, self.peak_batch)
    }

    /// What the last engine step computed (all zero before the first, and after a call of
    /// [`Scheduler::step`] that ran no engine step).
    pub fn last_step(&self) -> StepShape {
        self.last
    }

    /// Bytes the running caches hold now.
    pub fn kv_bytes(&self) -> usize {
        self.running.iter().map(|r| r.cache.bytes()).sum()
    }

    /// Admits what fits, runs one engine step over every running sequence, and reports what
    /// happened through `on_event`, in order.
    pub fn step(&mut self, on_event: &mut dyn FnMut(Event)) {
        for e in self.refused.drain(..) {
            on_event(e);
        }
        self.last = StepShape::default();
        self.admit(on_event);
        self.preempt_to_fit();
        // Requests admitted with their prompt already in pick their first token first.
        let mut finished = Vec::new();
        for (i, r) in self.running.iter_mut().enumerate() {
            if let Some(mut l) = r.pending.take() {
                if let Some(end) = accept(self.model, r, &mut l, self.steps, on_event) {
                    finished.push((i, end));
                }
            }
        }
        self.retire(finished, on_event);
        if self.running.is_empty() {
            return;
        }
        // This step's work: every decoding sequence's next token, prompt chunks in order of
        // admission while the prompt-token budget lasts.
        let wants: Vec<Option<usize>> = self
            .running
            .iter()
            .map(|r| match r.decoding {
                Some(_) => None,
                None => {
                    let (a, b) = r.chunks[r.next_chunk];
                    Some(b - a)
                }
            })
            .collect();
        let joins = policy::join_step(&wants, self.limits.prefill_chunk);
        let mut shape = StepShape::default();
        let mut work: Vec<(usize, Vec<u32>, usize)> = Vec::new();
        for ((i, r), _) in self
            .running
            .iter_mut()
            .enumerate()
            .zip(joins)
            .filter(|(_, j)| *j)
        {
            match &r.decoding {
                Some((dec, next)) => {
                    shape.add_decode(r.cache.bytes());
                    r.cache.begin(Step::Decode, 1);
                    work.push((i, vec![*next], dec.next_position(r.prompt.len())));
                }
                None => {
                    let (a, b) = r.chunks[r.next_chunk];
                    shape.add_chunk(a, b);
                    let last = r.next_chunk + 1 == r.chunks.len();
                    r.cache.begin(Step::Prefill { last }, b - a);
                    r.cache
                        .set_solo_last(last && r.prompt.len() % LLAMA_UBATCH == 1);
                    work.push((i, r.prompt[a..b].to_vec(), a));
                }
            }
        }
        let logits = {
            let mut chosen: Vec<&mut Running> = Vec::with_capacity(work.len());
            let mut rest: &mut [Running] = &mut self.running;
            let mut base = 0;
            for &(i, _, _) in &work {
                let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - base);
                let (one, tail) = tail.split_at_mut(1);
                chosen.push(&mut one[0]);
                rest = tail;
                base = i + 1;
            }
            let mut seqs: Vec<Seq> = chosen
                .into_iter()
                .zip(&work)
                .map(|(r, (_, tokens, pos0))| Seq {
                    tokens,
                    pos0: *pos0,
                    cache: &mut r.cache,
                    want: Logits::Last,
                })
                .collect();
            self.model.transformer.step(&mut seqs)
        };
        self.steps += 1;
        self.last = shape;
        self.peak_batch = self.peak_batch.max(work.len());
        let mut finished = Vec::new();
        for ((i, _, _), mut l) in work.into_iter().zip(logits) {
            let r = &mut self.running[i];
            if r.decoding.is_none() {
                r.next_chunk += 1;
                if r.next_chunk < r.chunks.len() {
                    continue;
                }
                let prefill_ms = r.admitted.elapsed().as_secs_f64() * 1e3;
                r.decoding = Some((Decoder::new(&r.opts, prefill_ms), 0));
            }
            if let Some(end) = accept(self.model, r, &mut l, self.steps, on_event) {
                finished.push((i, end));
            }
        }
        self.retire(finished, on_event);
    }

    /// Removes the finished sequences (by index) and reports them, in order of admission.
    fn retire(&mut self, mut finished: Vec<(usize, Result<()>)>, on_event: &mut dyn FnMut(Event)) {
        // From the back, so that the indices stay valid.
        finished.sort_by_key(|f| std::cmp::Reverse(f.0));
        let mut done = Vec::new();
        for (i, status) in finished {
            let r = self.running.remove(i);
            let id = r.id;
            let result = status.and_then(|()| {
                let (dec, _) = r.decoding.expect("a finished sequence has decoded");
                dec.finish(self.model, &r.cache, r.prompt.len())
                    .map(|generation| {
                        Box::new(Finished {
                            generation,
                            queue_ms: r.queue_ms,
                            preemptions: r.preemptions,
                            first_step: r.first_step,
                            last_step: r.last_step,
                        })
                    })
            });
            done.push((r.admitted, Event::Done { id, result }));
        }
        done.sort_by_key(|d| d.0);
        for (_, e) in done {
            on_event(e);
        }
    }

    /// Forgets a request, waiting or running (its client went away); its cache is freed at
    /// once and no event comes for it.
    pub fn cancel(&mut self, id: u64) {
        self.waiting.retain(|w| w.req.id != id);
        self.running.retain(|r| r.id != id);
    }

    /// Runs steps until every submitted request is done.
    pub fn run(&mut self, on_event: &mut dyn FnMut(Event)) {
        while !self.is_idle() {
            self.step(on_event);
        }
    }

    /// Admits waiting requests, first come first served, while the batch has room and the
    /// budget holds their caches as they will be once their prompts are in.
    fn admit(&mut self, on_event: &mut dyn FnMut(Event)) {
        let shape = self.model.config().cache_shape();
        while self.running.len() < self.limits.max_batch {
            let Some(w) = self.waiting.front() else { break };
            let opts = &w.req.opts;
            let (window, need) = match &w.req.cache {
                CacheSource::New(spec, _) => (spec.build().needs().window, None),
                CacheSource::Lent(c, _) => (c.needs().window, Some(0)),
            };
            let prefilled = matches!(w.req.cache, CacheSource::Lent(_, Some(_)));
            let chunks = if prefilled {
                Vec::new()
            } else {
                prefill_chunks(
                    w.req.prompt.len(),
                    opts.prefill_chunk,
                    window.max(opts.min_last_chunk),
                )
            };
            let need = match (&w.req.cache, need) {
                (_, Some(n)) => n,
                (CacheSource::New(spec, dtype), None) => {
                    projected_peak_bytes(spec, shape, *dtype, &chunks, 1)
                }
                (CacheSource::Lent(..), None) => 0,
            };
            if need > self.limits.kv_budget {
                let w = self.waiting.pop_front().expect("the front request exists");
                let spec = match &w.req.cache {
                    CacheSource::New(spec, _) => spec.canonical(),
                    CacheSource::Lent(..) => String::new(),
                };
                on_event(Event::Done {
                    id: w.req.id,
                    result: Err(EngineError::Invalid(format!(
                        "the prompt of {} tokens needs {need} bytes of cache under {spec}, more than the whole KV budget of {} bytes",
                        w.req.prompt.len(),
                        self.limits.kv_budget
                    ))),
                });
                continue;
            }
            let held: usize = self
                .running
                .iter()
                .filter(|r| r.spec.is_some())
                .map(|r| r.reserved.max(r.cache.bytes()))
                .sum();
            if !policy::admits(held, need, self.limits.kv_budget) {
                break;
            }
            let w = self.waiting.pop_front().expect("the front request exists");
            let Request {
                id,
                prompt,
                cache,
                opts,
            } = w.req;
            let room = prompt.len() + opts.max_new_tokens;
            let (slot, spec, pending) = match cache {
                CacheSource::New(spec, dtype) => {
                    let mut c = self.model.new_cache(&spec, dtype);
                    c.reserve(room);
                    (Slot::Own(Box::new(c)), Some((spec, dtype)), None)
                }
                CacheSource::Lent(c, Some(pre)) => (Slot::Lent(c), None, Some(pre)),
                CacheSource::Lent(c, None) => {
                    c.reset();
                    c.reserve(room);
                    (Slot::Lent(c), None, None)
                }
            };
            let now = Instant::now();
            let decoding = pending
                .as_ref()
                .map(|pre| (Decoder::new(&opts, pre.prefill_ms), 0));
            self.running.push(Running {
                id,
                prompt,
                opts,
                spec,
                queue_ms: now.duration_since(w.arrived).as_secs_f64() * 1e3,
                arrived: w.arrived,
                admitted: now,
                preemptions: w.preemptions,
                reported: w.reported,
                reserved: need,
                cache: slot,
                chunks,
                next_chunk: 0,
                decoding,
                pending: pending.map(|pre| pre.logits),
                first_step: 0,
                last_step: 0,
            });
        }
    }

    /// Preempts the newest running requests (of the scheduler's own caches) while the caches
    /// after this step could pass the budget: each sequence's bytes now (or what admission
    /// reserved, while its prompt goes in) plus one full row per layer and head for a decode
    /// token.
    fn preempt_to_fit(&mut self) {
        let shape = self.model.config().cache_shape();
        loop {
            let projected: usize = self
                .running
                .iter()
                .filter_map(|r| {
                    let (_, dtype) = r.spec.as_ref()?;
                    Some(policy::projected(
                        r.decoding.is_some(),
                        r.cache.bytes(),
                        r.reserved,
                        shape.full_bytes(1, *dtype),
                    ))
                })
                .sum();
            let owned = self.running.iter().filter(|r| r.spec.is_some()).count();
            if !policy::must_preempt(projected, owned, self.limits.kv_budget) {
                return;
            }
            let Some(i) = self.running.iter().rposition(|r| r.spec.is_some()) else {
                return;
            };
            let r = self.running.remove(i);
            let (spec, dtype) = r.spec.expect("an owned cache has its method");
            self.waiting.push_front(Waiting {
                req: Request {
                    id: r.id,
                    prompt: r.prompt,
                    cache: CacheSource::New(spec, dtype),
                    opts: r.opts,
                },
                arrived: r.arrived,
                preemptions: r.preemptions + 1,
                reported: r.reported,
            });
        }
    }
}

/// Picks `r`'s next token from `logits`, reporting it; `Some(result)` when `r` is done.
fn accept(
    model: &Model,
    r: &mut Running,
    logits: &mut [f32],
    step_no: usize,
    on_event: &mut dyn FnMut(Event),
) -> Option<Result<()>> {
    let id = r.id;
    let reported = &mut r.reported;
    let (first_step, last_step) = (&mut r.first_step, &mut r.last_step);
    let (dec, next) = r.decoding.as_mut()?;
    let mut report = |tokens: &[u32]| {
        if *first_step == 0 {
            *first_step = step_no.max(1);
        }
        *last_step = step_no.max(1);
        let index = tokens.len() - 1;
        if index >= *reported {
            *reported = index + 1;
            on_event(Event::Token {
                id,
                index,
                token: tokens[index],
            });
        }
    };
    match dec.accept(model, logits, &r.opts, &mut report) {
        Ok(Some(t)) => {
            *next = t;
            None
        }
        Ok(None) => Some(Ok(())),
        Err(e) => Some(Err(e)),
    }
}
