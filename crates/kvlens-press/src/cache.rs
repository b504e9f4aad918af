//! The KV cache the engine's forward pass writes to and attends over.
//!
//! Per layer and key/value head, a [`HeadStore`] holds what is kept. The engine hands the
//! cache each layer's queries, keys and values (rotary embedding already applied at the
//! tokens' absolute positions); the cache appends, attends, lets its [`Method`] observe and
//! compress, and returns the attention output.

use crate::attention::{attend_head, attend_packed, Prepared};
use crate::method::{HeadStats, Method, Needs, Step};
use crate::store::{HeadStore, KvDtype};
use rayon::prelude::*;

/// Queries per parallel task of a prompt chunk.
const QUERY_BLOCK: usize = 32;
/// Chunks of at least this many tokens attend through [`Prepared`] heads.
const PREPARE_MIN: usize = 16;

/// One query head's pass over a block of queries starting at `t0`: outputs (queries,
/// head_dim), accumulated probabilities per row if the method asked, and the probability rows
/// of those of its queries that fall in the method's window.
struct HeadPass {
    h: usize,
    t0: usize,
    outs: Vec<f32>,
    acc: Option<Vec<f32>>,
    win: Vec<Vec<f32>>,
}

/// The attention geometry of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheShape {
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl CacheShape {
    /// Query heads per key/value head (grouped-query attention).
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Bytes a full cache of `tokens` tokens holds in `dtype`.
    pub fn full_bytes(&self, tokens: usize, dtype: KvDtype) -> usize {
        2 * self.n_layers * self.n_kv_heads * self.head_dim * tokens * dtype.bytes()
    }
}

/// A cache forked after a shared prefill, and the time its method's compression took (what
/// its own run would have spent beyond the prefill; the copying is not counted).
pub struct Forked {
    pub cache: KvCache,
    pub compress_ms: f64,
}

pub struct KvCache {
    shape: CacheShape,
    dtype: KvDtype,
    heads: Vec<Vec<HeadStore>>,
    stats: Vec<Vec<HeadStats>>,
    method: Box<dyn Method>,
    step: Step,
    /// Tokens appended since the last reset (what a full cache would hold).
    seen: usize,
    peak_bytes: usize,
    bytes_now: Vec<usize>,
    /// Reused per key/value head: f32 views of what is kept, and a transposing buffer.
    prepared: Vec<(Prepared, Vec<f32>)>,
    /// Statistics collected beyond the method's needs, for caches forked after prefill.
    record: Needs,
    /// Bytes per layer and the peak when the prompt's last chunk began (for forks' peaks).
    bytes_before_last: Vec<usize>,
    peak_before_last: usize,
    /// The step's last query is one llama.cpp would run as a batch of its own: its attention
    /// products are summed in the one-token order ([`crate::sums::SumOrder`]).
    solo_last: bool,
}

impl KvCache {
    pub fn new(shape: CacheShape, dtype: KvDtype, method: Box<dyn Method>) -> Self {
        let heads = (0..shape.n_layers)
            .map(|_| {
                (0..shape.n_kv_heads)
                    .map(|_| HeadStore::new(dtype, shape.head_dim, 0))
                    .collect()
            })
            .collect();
        let stats = (0..shape.n_layers)
            .map(|_| {
                (0..shape.n_kv_heads)
                    .map(|_| HeadStats::default())
                    .collect()
            })
            .collect();
        Self {
            shape,
            dtype,
            heads,
            stats,
            method,
            step: Step::Prefill { last: true },
            seen: 0,
            peak_bytes: 0,
            bytes_now: vec![0; shape.n_layers],
            prepared: Vec::new(),
            record: Needs::default(),
            bytes_before_last: vec![0; shape.n_layers],
            peak_before_last: 0,
            solo_last: false,
        }
    }

    /// Also collect `needs` during attention, so that methods needing them can be forked from
    /// this cache after prefill.
    pub fn record(&mut self, needs: Needs) {
        self.record = needs;
    }

    /// What attention computes for this cache: the method's needs and what is recorded.
    pub fn needs(&self) -> Needs {
        self.method.needs().union(self.record)
    }

    /// A copy of this cache, right after a prefill, as `method` would have left it had it
    /// run that prefill itself: `method` compresses every layer as at the end of its own
    /// last prompt chunk, on the same rows and attention statistics (trimmed to its window),
    /// and the peak bytes are those its own run would have reached. `None` when `method`
    /// acts before the end of the prompt, needs statistics this cache did not collect, or
    /// this cache holds packed rows. The copy has room for `extra_tokens` more tokens.
    pub fn fork(&self, method: Box<dyn Method>, extra_tokens: usize) -> Option<Forked> {
        let needs = method.needs();
        let have = self.needs();
        if !method.acts_after_prefill_only()
            || needs.accumulate && !have.accumulate
            || needs.window > have.window
        {
            return None;
        }
        let heads = self
            .heads
            .iter()
            .map(|layer| {
                layer
                    .iter()
                    .map(|h| h.try_clone(extra_tokens))
                    .collect::<Option<Vec<_>>>()
            })
            .collect::<Option<Vec<_>>>()?;
        let mut stats = self.stats.clone();
        for st in stats.iter_mut().flatten() {
            if st.window_len > needs.window {
                // Rows are queries in order: the method's window is the last of them.
                let len = st.window.len() / st.window_len;
                st.window.drain(..(st.window_len - needs.window) * len);
                st.window_len = needs.window;
            }
        }
        let mut c = KvCache {
            shape: self.shape,
            dtype: self.dtype,
            heads,
            stats,
            method,
            step: Step::Prefill { last: true },
            seen: self.seen,
            peak_bytes: 0,
            bytes_now: self.bytes_now.clone(),
            prepared: Vec::new(),
            record: Needs::default(),
            bytes_before_last: self.bytes_before_last.clone(),
            peak_before_last: self.peak_before_last,
            solo_last: false,
        };
        // Its own run would have pushed layer l's last chunk with layers < l compressed and
        // layers > l still as before the chunk.
        let mut peak = self.peak_before_last;
        let mut done = 0;
        let start = std::time::Instant::now();
        for layer in 0..self.shape.n_layers {
            let after: usize = self.bytes_before_last[layer + 1..].iter().sum();
            peak = peak.max(done + self.bytes_now[layer] + after);
            c.method.compress(
                layer,
                &self.shape,
                &mut c.heads[layer],
                &mut c.stats[layer],
                Step::Prefill { last: true },
            );
            c.bytes_now[layer] = c.heads[layer].iter().map(|h| h.bytes()).sum();
            done += c.bytes_now[layer];
        }
        c.peak_bytes = peak;
        Some(Forked {
            compress_ms: start.elapsed().as_secs_f64() * 1e3,
            cache: c,
        })
    }

    pub fn shape(&self) -> CacheShape {
        self.shape
    }

    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    pub fn method(&self) -> &dyn Method {
        self.method.as_ref()
    }

    /// Reserves room for `tokens` more tokens in every head, so that appends write in place.
    pub fn reserve(&mut self, tokens: usize) {
        for layer in &mut self.heads {
            for h in layer {
                h.reserve(tokens);
            }
        }
    }

    /// Empties the cache for a new sequence, keeping its allocations.
    pub fn reset(&mut self) {
        for layer in &mut self.heads {
            for h in layer {
                h.clear();
            }
        }
        for layer in &mut self.stats {
            for s in layer {
                *s = HeadStats::default();
            }
        }
        self.method.reset();
        self.seen = 0;
        self.peak_bytes = 0;
        self.bytes_now.fill(0);
        self.bytes_before_last.fill(0);
        self.peak_before_last = 0;
    }

    /// Declares what the next forward pass is: a chunk of the prompt, or one decode step.
    pub fn begin(&mut self, step: Step, n_new: usize) {
        if step == (Step::Prefill { last: true }) {
            self.bytes_before_last.clone_from(&self.bytes_now);
            self.peak_before_last = self.peak_bytes;
        }
        self.step = step;
        self.seen += n_new;
        self.solo_last = false;
    }

    /// Marks the step's last query as one llama.cpp would run alone (a prompt of
    /// `512·k + 1` tokens: its last batch of 512 holds one token), so that its attention is
    /// summed as llama.cpp sums a one-token batch. Cleared by [`KvCache::begin`].
    pub fn set_solo_last(&mut self, solo: bool) {
        self.solo_last = solo;
    }

    /// Tokens a full cache would hold now.
    pub fn tokens_seen(&self) -> usize {
        self.seen
    }

    /// Tokens kept, summed over layers and heads, divided by their count.
    pub fn tokens_kept_mean(&self) -> f64 {
        let n = self.shape.n_layers * self.shape.n_kv_heads;
        let total: usize = self.heads.iter().flatten().map(|h| h.len()).sum();
        total as f64 / n.max(1) as f64
    }

    pub fn layer_heads(&self, layer: usize) -> &[HeadStore] {
        &self.heads[layer]
    }

    /// Bytes the cache holds now.
    pub fn bytes(&self) -> usize {
        self.heads.iter().flatten().map(|h| h.bytes()).sum()
    }

    /// The most bytes held at any moment since the last reset, transient rows included.
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes
    }

    /// What the full cache would hold for the tokens seen so far.
    pub fn full_bytes(&self) -> usize {
        self.shape.full_bytes(self.seen, self.dtype)
    }

    /// One layer's attention for `n` new tokens.
    ///
    /// `q`: (n, n_heads, head_dim); `k`, `v`: (n, n_kv_heads, head_dim); `positions`: (n).
    /// Writes (n, n_heads, head_dim) to `out`.
    pub fn attend(
        &mut self,
        layer: usize,
        positions: &[u32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
    ) {
        let CacheShape {
            n_heads,
            n_kv_heads,
            head_dim: dim,
            ..
        } = self.shape;
        let n = positions.len();
        let group = self.shape.group();
        let kvw = n_kv_heads * dim;
        for (g, store) in self.heads[layer].iter_mut().enumerate() {
            for (t, &pos) in positions.iter().enumerate() {
                let o = t * kvw + g * dim;
                store.push(pos, &k[o..o + dim], &v[o..o + dim]);
            }
        }
        self.note_bytes(layer);

        let needs = self.needs();
        let window = needs.window.min(n);
        let scale = 1.0 / (dim as f32).sqrt();
        let stores = &self.heads[layer];
        let packed = stores.iter().any(|s| s.packed_rows > 0);
        // A decode step over packed rows: each key/value head's chunks are read in place
        // (fused dequantize-and-dot) for all its query heads at once.
        if n == 1 && packed && !needs.accumulate && window == 0 {
            attend_packed(
                stores,
                &q[..n_heads * dim],
                group,
                scale,
                &mut out[..n_heads * dim],
            );
            self.compress_layer(layer);
            return;
        }
        // Prompt chunks: keys transposed once per key/value head, shared by its query heads.
        let use_prepared = n >= PREPARE_MIN || packed;
        if use_prepared {
            let transpose = n >= PREPARE_MIN;
            self.prepared.resize_with(stores.len(), || {
                (
                    Prepared::new(&HeadStore::new(self.dtype, dim, 0), false),
                    Vec::new(),
                )
            });
            self.prepared
                .par_iter_mut()
                .zip(stores.par_iter())
                .for_each(|((p, scratch), s)| p.refill(s, transpose, scratch));
        }
        let prepared: &[(Prepared, Vec<f32>)] = if use_prepared { &self.prepared } else { &[] };
        let blocks = n.div_ceil(QUERY_BLOCK);
        let solo_last = self.solo_last;
        // Per (query head, block of queries): outputs, and what the method asked to see.
        let passes: Vec<HeadPass> = (0..n_heads * blocks)
            .into_par_iter()
            .map(|task| {
                let (h, blk) = (task / blocks, task % blocks);
                let store = &stores[h / group];
                let len = store.len();
                let base = len - n;
                let (t0, t1) = (blk * QUERY_BLOCK, ((blk + 1) * QUERY_BLOCK).min(n));
                let mut outs = vec![0f32; (t1 - t0) * dim];
                let mut probs = Vec::with_capacity(len);
                let mut acc = needs.accumulate.then(|| vec![0f32; len]);
                let mut win = Vec::new();
                for t in t0..t1 {
                    let qo = (t * n_heads + h) * dim;
                    // The batch size whose summation order this query follows.
                    let batch = if solo_last && t + 1 == n { 1 } else { n };
                    let o = &mut outs[(t - t0) * dim..(t - t0 + 1) * dim];
                    match prepared.get(h / group).map(|(p, _)| p) {
                        Some(p) => {
                            p.attend(base + t + 1, &q[qo..qo + dim], scale, batch, o, &mut probs)
                        }
                        None => attend_head(
                            store,
                            base + t + 1,
                            &q[qo..qo + dim],
                            scale,
                            batch,
                            o,
                            &mut probs,
                        ),
                    }
                    if let Some(acc) = acc.as_mut() {
                        for (a, p) in acc.iter_mut().zip(&probs) {
                            *a += p;
                        }
                    }
                    if t + window >= n {
                        let mut row = probs.clone();
                        row.resize(len, 0.0);
                        win.push(row);
                    }
                }
                HeadPass {
                    h,
                    t0,
                    outs,
                    acc,
                    win,
                }
            })
            .collect();
        for pass in &passes {
            for (i, o) in pass.outs.chunks_exact(dim).enumerate() {
                let at = ((pass.t0 + i) * n_heads + pass.h) * dim;
                out[at..at + dim].copy_from_slice(o);
            }
        }

        if needs.accumulate || window > 0 {
            for (g, stats) in self.stats[layer].iter_mut().enumerate() {
                let len = self.heads[layer][g].len();
                stats.prepare(len, window);
                for pass in passes.iter().filter(|p| p.h / group == g) {
                    if let Some(acc) = &pass.acc {
                        for (a, x) in stats.accumulated.iter_mut().zip(acc) {
                            *a += x;
                        }
                    }
                    // The pass's window rows are its last queries, in order; they end the
                    // window when the pass holds the chunk's last query.
                    let first = (pass.t0 + pass.outs.len() / dim).saturating_sub(pass.win.len());
                    for (i, row) in pass.win.iter().enumerate() {
                        let w = first + i + window - n;
                        for (a, x) in stats.window[w * len..(w + 1) * len].iter_mut().zip(row) {
                            *a += x;
                        }
                    }
                }
            }
        }

        self.compress_layer(layer);
    }

    /// [`KvCache::attend`] without the attention: `n` zero rows at `positions` pushed into
    /// every head of `layer`, the statistics the method asked for left at zero, then the
    /// method's step. Which rows a method keeps depends on the values; how many it keeps
    /// and the bytes they take do not, so this gives the bytes and peak a real run reaches
    /// ([`projected_peak_bytes`]).
    pub fn simulate(&mut self, layer: usize, positions: &[u32]) {
        let dim = self.shape.head_dim;
        let zeros = vec![0f32; dim];
        for store in self.heads[layer].iter_mut() {
            for &pos in positions {
                store.push(pos, &zeros, &zeros);
            }
        }
        self.note_bytes(layer);
        let needs = self.needs();
        let window = needs.window.min(positions.len());
        if needs.accumulate || window > 0 {
            for (g, stats) in self.stats[layer].iter_mut().enumerate() {
                stats.prepare(self.heads[layer][g].len(), window);
            }
        }
        self.compress_layer(layer);
    }

    /// A dry run of one prompt chunk (positions `a..b`) through every layer
    /// ([`KvCache::simulate`]).
    pub fn simulate_chunk(&mut self, a: usize, b: usize, last: bool) {
        let positions: Vec<u32> = (a as u32..b as u32).collect();
        self.begin(Step::Prefill { last }, b - a);
        for layer in 0..self.shape.n_layers {
            self.simulate(layer, &positions);
        }
    }

    /// A dry run of one decode token at `position` through every layer.
    pub fn simulate_decode(&mut self, position: usize) {
        self.begin(Step::Decode, 1);
        for layer in 0..self.shape.n_layers {
            self.simulate(layer, &[position as u32]);
        }
    }

    /// The method's step over one layer after its attention, and the bytes it then holds.
    fn compress_layer(&mut self, layer: usize) {
        let step = self.step;
        self.method.compress(
            layer,
            &self.shape,
            &mut self.heads[layer],
            &mut self.stats[layer],
            step,
        );
        self.bytes_now[layer] = self.heads[layer].iter().map(|h| h.bytes()).sum();
    }

    fn note_bytes(&mut self, layer: usize) {
        self.bytes_now[layer] = self.heads[layer].iter().map(|h| h.bytes()).sum();
        let total: usize = self.bytes_now.iter().sum();
        self.peak_bytes = self.peak_bytes.max(total);
    }
}

/// The most bytes a cache of `shape` and `dtype` under `spec` holds while it takes a prompt of
/// `prompt` tokens in the chunks `chunks` and then `new_tokens` decode steps: what a real run
/// reaches (`KvCache::peak_bytes`), found by a dry run of the method's byte accounting on zero
/// rows ([`KvCache::simulate`]) over one key/value head per layer, times the heads (every
/// method keeps as many rows in each head of a layer). A scheduler admits a request on it.
pub fn projected_peak_bytes(
    spec: &crate::Spec,
    shape: CacheShape,
    dtype: KvDtype,
    chunks: &[(usize, usize)],
    new_tokens: usize,
) -> usize {
    let one = CacheShape {
        n_heads: shape.group(),
        n_kv_heads: 1,
        ..shape
    };
    let prompt = chunks.last().map_or(0, |c| c.1);
    let mut cache = KvCache::new(one, dtype, spec.build());
    cache.reserve(prompt + new_tokens);
    for (i, &(a, b)) in chunks.iter().enumerate() {
        cache.simulate_chunk(a, b, i + 1 == chunks.len());
    }
    // The last generated token is never fed back: `new_tokens − 1` decode steps.
    for t in 0..new_tokens.saturating_sub(1) {
        cache.simulate_decode(prompt + t);
    }
    cache.peak_bytes() * shape.n_kv_heads
}
