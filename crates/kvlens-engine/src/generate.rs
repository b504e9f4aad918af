//! The generation loop: chunked prefill, decode with greedy or seeded sampling, stop rules,
//! and per-request time and memory measured inside the process.

use crate::error::{EngineError, Result};
use crate::model::Logits;
use crate::Model;
use kvlens_press::{KvCache, Step};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sampling {
    /// 0 is greedy.
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Generation ends when the text contains one of these (the text is cut before it).
    pub stop: Vec<String>,
    /// Prompt tokens per forward pass during prefill.
    pub prefill_chunk: usize,
    /// The last prompt chunk holds at least this many tokens (more when the method's window
    /// is larger), so that chunk boundaries do not depend on the method and a shared
    /// prefill equals each method's own.
    pub min_last_chunk: usize,
    /// Keeps this many of the largest logits before each generated token
    /// ([`Generation::top_logits`]); 0 keeps none.
    pub top_logits: usize,
    /// Generates past the end-of-sequence tokens, to exactly `max_new_tokens` unless a stop
    /// string ends it (vLLM's `ignore_eos`, which load generators use for fixed lengths).
    pub ignore_eos: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            sampling: Sampling::default(),
            stop: Vec::new(),
            prefill_chunk: 512,
            min_last_chunk: MIN_LAST_CHUNK,
            top_logits: 0,
            ignore_eos: false,
        }
    }
}

/// Tokens per batch in which llama.cpp processes a prompt (its default `n_ubatch`).
pub const LLAMA_UBATCH: usize = 512;

/// The default smallest last prompt chunk: any method with a window up to this size sees the
/// same chunks as the baseline.
pub const MIN_LAST_CHUNK: usize = 64;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Eos,
    Stop,
    Length,
}

#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub finish_reason: FinishReason,
    /// Time to process the whole prompt.
    pub prefill_ms: f64,
    /// Time until the first new token was known.
    pub ttft_ms: f64,
    /// Time of every later token.
    pub decode_ms: f64,
    pub e2e_ms: f64,
    pub decode_ms_p50: f64,
    pub decode_ms_p90: f64,
    pub decode_ms_max: f64,
    /// Bytes the cache held at its fullest (transient rows before an eviction included).
    pub kv_bytes_peak: usize,
    /// Bytes the cache held at the end.
    pub kv_bytes_end: usize,
    /// Bytes an uncompressed cache would hold at the end.
    pub kv_bytes_full: usize,
    /// Tokens kept at the end, averaged over layers and heads.
    pub kv_tokens_kept: f64,
    /// Per generated token, the largest logits before it was chosen, as (id, logit), when
    /// asked for ([`GenOptions::top_logits`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top_logits: Vec<Vec<(u32, f32)>>,
}

/// Prompt chunks of `chunk` tokens, except the last, which holds at least `min_last` tokens
/// (methods that look at the last queries of the prompt need them in one pass) or the whole
/// prompt when it is shorter.
pub fn prefill_chunks(n: usize, chunk: usize, min_last: usize) -> Vec<(usize, usize)> {
    let chunk = chunk.max(1);
    if n == 0 {
        return Vec::new();
    }
    let natural = match n % chunk {
        0 => chunk,
        r => r,
    };
    let head = n - natural.max(min_last).min(n);
    let mut out: Vec<(usize, usize)> = (0..head)
        .step_by(chunk)
        .map(|a| (a, (a + chunk).min(head)))
        .collect();
    out.push((head, n));
    out
}

/// A processed prompt: the logits of its last token and how long it took.
#[derive(Debug, Clone)]
pub struct Prefilled {
    pub logits: Vec<f32>,
    pub prefill_ms: f64,
}

/// Generates from `prompt` (token ids) with `cache` (reset first).
pub fn generate(
    model: &Model,
    cache: &mut KvCache,
    prompt: &[u32],
    opts: &GenOptions,
) -> Result<Generation> {
    run_alone(model, cache, None, prompt, opts, &mut |_| {})
}

/// One request through the scheduler (the one way generation runs), on the caller's cache.
fn run_alone(
    model: &Model,
    cache: &mut KvCache,
    pre: Option<&Prefilled>,
    prompt: &[u32],
    opts: &GenOptions,
    on_token: &mut dyn FnMut(&[u32]),
) -> Result<Generation> {
    use crate::sched::{CacheSource, Event, Limits, Request, Scheduler};
    let mut s = Scheduler::new(
        model,
        Limits {
            kv_budget: usize::MAX,
            max_batch: 1,
            prefill_chunk: usize::MAX,
        },
    )?;
    s.submit(Request {
        id: 0,
        prompt: prompt.to_vec(),
        cache: CacheSource::Lent(cache, pre.cloned()),
        opts: opts.clone(),
    });
    let mut tokens = Vec::new();
    let mut result = None;
    s.run(&mut |e| match e {
        Event::Token { token, .. } => {
            tokens.push(token);
            on_token(&tokens);
        }
        Event::Done { result: r, .. } => result = Some(r),
    });
    match result {
        Some(r) => r.map(|f| f.generation),
        None => Err(EngineError::Invalid(
            "the scheduler ended without an answer".into(),
        )),
    }
}

/// Why `prompt` cannot be generated from with `opts`, if it cannot.
pub(crate) fn check_prompt(model: &Model, prompt: &[u32], opts: &GenOptions) -> Result<()> {
    let cfg = model.config();
    if prompt.is_empty() {
        return Err(EngineError::Invalid("the prompt is empty".into()));
    }
    if prompt.len() + opts.max_new_tokens > cfg.context {
        return Err(EngineError::TooLong {
            tokens: prompt.len(),
            new: opts.max_new_tokens,
            context: cfg.context,
        });
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= cfg.vocab) {
        return Err(EngineError::Invalid(format!(
            "token id {bad} is outside the vocabulary"
        )));
    }
    Ok(())
}

/// The smallest last chunk for `cache`'s method under `opts`.
pub fn min_last_chunk(cache: &KvCache, opts: &GenOptions) -> usize {
    cache.needs().window.max(opts.min_last_chunk)
}

/// Processes `prompt` into `cache` (reset first) in chunks.
pub fn prefill(
    model: &Model,
    cache: &mut KvCache,
    prompt: &[u32],
    opts: &GenOptions,
) -> Result<Prefilled> {
    check_prompt(model, prompt, opts)?;
    cache.reset();
    cache.reserve(prompt.len() + opts.max_new_tokens);
    let start = Instant::now();
    let chunks = prefill_chunks(
        prompt.len(),
        opts.prefill_chunk,
        min_last_chunk(cache, opts),
    );
    let mut logits = Vec::new();
    for (i, &(a, b)) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        cache.begin(Step::Prefill { last }, b - a);
        // llama.cpp feeds a prompt in batches of 512 tokens; when the last one holds a single
        // token, it sums that token's attention as a one-token batch.
        cache.set_solo_last(last && prompt.len() % LLAMA_UBATCH == 1);
        logits = model
            .transformer
            .forward(&prompt[a..b], a, cache, Logits::Last);
    }
    Ok(Prefilled {
        logits,
        prefill_ms: ms(start),
    })
}

/// Generates after `pre`, the prefill of `prompt` that left `cache` as it is. Times count
/// from the start of that prefill (`pre.prefill_ms` before now).
pub fn decode(
    model: &Model,
    cache: &mut KvCache,
    prompt: &[u32],
    pre: &Prefilled,
    opts: &GenOptions,
) -> Result<Generation> {
    decode_with(model, cache, prompt, pre, opts, &mut |_| {})
}

/// [`decode`], calling `on_token` with the tokens generated so far each time one is accepted
/// (not the EOS token, nor the token that completes a stop string): a server streams from it.
pub fn decode_with(
    model: &Model,
    cache: &mut KvCache,
    prompt: &[u32],
    pre: &Prefilled,
    opts: &GenOptions,
    on_token: &mut dyn FnMut(&[u32]),
) -> Result<Generation> {
    run_alone(model, cache, Some(pre), prompt, opts, on_token)
}

/// One sequence's decoding after its prefill: sampling, the stop rules and the timings of
/// [`decode_with`], one token at a time, so that a loop over one sequence and the
/// scheduler's loop over many ([`crate::sched`]) decide alike.
pub(crate) struct Decoder {
    /// When decoding started; times count from the start of the prefill, `prefill_ms` before.
    start: Instant,
    prefill_ms: f64,
    rng: Rng,
    tokens: Vec<u32>,
    text: String,
    finish: FinishReason,
    step_ms: Vec<f64>,
    ttft_ms: f64,
    t_prev: Instant,
    top_logits: Vec<Vec<(u32, f32)>>,
}

impl Decoder {
    pub(crate) fn new(opts: &GenOptions, prefill_ms: f64) -> Self {
        Self {
            start: Instant::now(),
            prefill_ms,
            rng: Rng::new(opts.sampling.seed),
            tokens: Vec::new(),
            text: String::new(),
            finish: FinishReason::Length,
            step_ms: Vec::new(),
            ttft_ms: 0.0,
            t_prev: Instant::now(),
            top_logits: Vec::new(),
        }
    }

    /// The position of the token [`Decoder::accept`] just returned.
    pub(crate) fn next_position(&self, prompt_len: usize) -> usize {
        prompt_len + self.tokens.len() - 1
    }

    /// Picks the next token from `logits` (the last forward pass's): `Some(token)` when it
    /// is to be fed to the model, `None` when generation is over.
    pub(crate) fn accept(
        &mut self,
        model: &Model,
        logits: &mut [f32],
        opts: &GenOptions,
        on_token: &mut dyn FnMut(&[u32]),
    ) -> Result<Option<u32>> {
        if self.tokens.len() >= opts.max_new_tokens {
            return Ok(None);
        }
        if opts.top_logits > 0 {
            self.top_logits.push(largest(logits, opts.top_logits));
        }
        let next = sample(logits, &opts.sampling, &mut self.rng);
        if self.tokens.is_empty() {
            self.ttft_ms = self.prefill_ms + ms(self.start);
        } else {
            self.step_ms.push(ms(self.t_prev));
        }
        if !opts.ignore_eos && model.tokenizer.eos.contains(&next) {
            self.finish = FinishReason::Eos;
            return Ok(None);
        }
        self.tokens.push(next);
        if !opts.stop.is_empty() {
            self.text = model.tokenizer.decode(&self.tokens)?;
            if let Some(cut) = opts
                .stop
                .iter()
                .filter_map(|s| self.text.find(s.as_str()))
                .min()
            {
                self.text.truncate(cut);
                self.finish = FinishReason::Stop;
                return Ok(None);
            }
        }
        on_token(&self.tokens);
        if self.tokens.len() == opts.max_new_tokens {
            return Ok(None);
        }
        self.t_prev = Instant::now();
        Ok(Some(next))
    }

    /// The generation's record, with `cache`'s bytes.
    pub(crate) fn finish(
        mut self,
        model: &Model,
        cache: &KvCache,
        prompt_len: usize,
    ) -> Result<Generation> {
        let e2e_ms = self.prefill_ms + ms(self.start);
        if self.finish != FinishReason::Stop {
            self.text = model.tokenizer.decode(&self.tokens)?;
        }
        if self.tokens.is_empty() {
            self.ttft_ms = e2e_ms;
        }
        let mut sorted = self.step_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let pct = |p: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let i = ((sorted.len() - 1) as f64 * p).round() as usize;
            sorted[i]
        };
        Ok(Generation {
            output_tokens: self.tokens.len(),
            text: self.text,
            tokens: self.tokens,
            prompt_tokens: prompt_len,
            finish_reason: self.finish,
            prefill_ms: self.prefill_ms,
            ttft_ms: self.ttft_ms,
            decode_ms: e2e_ms - self.ttft_ms,
            e2e_ms,
            decode_ms_p50: pct(0.5),
            decode_ms_p90: pct(0.9),
            decode_ms_max: sorted.last().copied().unwrap_or(0.0),
            kv_bytes_peak: cache.peak_bytes(),
            kv_bytes_end: cache.bytes(),
            kv_bytes_full: cache.full_bytes(),
            kv_tokens_kept: cache.tokens_kept_mean(),
            top_logits: self.top_logits,
        })
    }
}

/// The `k` largest logits as (id, logit), largest first (ties: the smaller id first).
fn largest(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    ids.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    ids.truncate(k);
    ids.into_iter().map(|i| (i, logits[i as usize])).collect()
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The first index of the largest logit.
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn sample(logits: &mut [f32], s: &Sampling, rng: &mut Rng) -> u32 {
    if s.temperature <= 0.0 {
        return argmax(logits);
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if s.top_k > 0 {
        idx.truncate(s.top_k);
    }
    let max = logits[idx[0]];
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| (((logits[i] - max) / s.temperature) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    for p in &mut probs {
        *p /= total;
    }
    if s.top_p < 1.0 {
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cum += p;
            if cum >= s.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        let total: f64 = probs.iter().sum();
        for p in &mut probs {
            *p /= total;
        }
    }
    let r = rng.next_f64();
    let mut cum = 0.0;
    for (i, p) in probs.iter().enumerate() {
        cum += p;
        if r < cum {
            return idx[i] as u32;
        }
    }
    idx[probs.len() - 1] as u32
}

/// SplitMix64: small, seedable, the same on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_prompt_and_keep_a_long_last_chunk() {
        assert_eq!(prefill_chunks(10, 4, 0), vec![(0, 4), (4, 8), (8, 10)]);
        assert_eq!(prefill_chunks(10, 4, 3), vec![(0, 4), (4, 7), (7, 10)]);
        assert_eq!(prefill_chunks(5, 4, 4), vec![(0, 1), (1, 5)]);
        assert_eq!(prefill_chunks(3, 8, 32), vec![(0, 3)]);
        // The last chunk takes as many earlier tokens as it needs, not just one chunk.
        assert_eq!(
            prefill_chunks(96, 16, 64),
            vec![(0, 16), (16, 32), (32, 96)]
        );
    }

    #[test]
    fn sampling_is_seeded_and_greedy_at_zero_temperature() {
        let logits = vec![0.1, 2.0, 1.9, -1.0];
        let greedy = Sampling::default();
        assert_eq!(sample(&mut logits.clone(), &greedy, &mut Rng::new(1)), 1);
        let hot = Sampling {
            temperature: 1.0,
            seed: 3,
            ..Sampling::default()
        };
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..20)
                .map(|_| sample(&mut logits.clone(), &hot, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert!(
            draw(3).iter().any(|&t| t != 1),
            "temperature 1 never left the argmax"
        );
        let top1 = Sampling {
            temperature: 1.0,
            top_k: 1,
            ..Sampling::default()
        };
        let mut rng = Rng::new(9);
        assert!((0..20).all(|_| sample(&mut logits.clone(), &top1, &mut rng) == 1));
    }
}
