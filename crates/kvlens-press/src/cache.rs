//! The KV cache the engine's forward pass writes to and attends over.
//!
//! Per layer and key/value head, a [`HeadStore`] holds what is kept. The engine hands the
//! cache each layer's queries, keys and values (rotary embedding already applied at the
//! tokens' absolute positions); the cache appends, attends, lets its [`Method`] observe and
//! compress, and returns the attention output.

use crate::attention::attend_head;
use crate::method::{HeadStats, Method, Step};
use crate::store::{HeadStore, KvDtype};
use rayon::prelude::*;

/// One query head's pass: outputs (n, head_dim), accumulated probabilities per row if the
/// method asked, and the probabilities of the last queries (window, rows).
type HeadPass = (Vec<f32>, Option<Vec<f32>>, Vec<f32>);

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
        }
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
    }

    /// Declares what the next forward pass is: a chunk of the prompt, or one decode step.
    pub fn begin(&mut self, step: Step, n_new: usize) {
        self.step = step;
        self.seen += n_new;
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

        let needs = self.method.needs();
        let window = needs.window.min(n);
        let scale = 1.0 / (dim as f32).sqrt();
        let stores = &self.heads[layer];
        // Per query head: its outputs for the n tokens, and what the method asked to see.
        let per_head: Vec<HeadPass> = (0..n_heads)
            .into_par_iter()
            .map(|h| {
                let store = &stores[h / group];
                let base = store.len() - n;
                let mut outs = vec![0f32; n * dim];
                let mut probs = Vec::with_capacity(store.len());
                let mut acc = needs.accumulate.then(|| vec![0f32; store.len()]);
                let mut win = vec![0f32; window * store.len()];
                for t in 0..n {
                    let qo = (t * n_heads + h) * dim;
                    attend_head(
                        store,
                        base + t + 1,
                        &q[qo..qo + dim],
                        scale,
                        &mut outs[t * dim..(t + 1) * dim],
                        &mut probs,
                    );
                    if let Some(acc) = acc.as_mut() {
                        for (a, p) in acc.iter_mut().zip(&probs) {
                            *a += p;
                        }
                    }
                    if t + window >= n {
                        let w = t + window - n;
                        let len = store.len();
                        win[w * len..w * len + probs.len()].copy_from_slice(&probs);
                    }
                }
                (outs, acc, win)
            })
            .collect();
        for (h, (outs, _, _)) in per_head.iter().enumerate() {
            for t in 0..n {
                let o = (t * n_heads + h) * dim;
                out[o..o + dim].copy_from_slice(&outs[t * dim..(t + 1) * dim]);
            }
        }

        if needs.accumulate || window > 0 {
            for (g, stats) in self.stats[layer].iter_mut().enumerate() {
                let len = self.heads[layer][g].len();
                stats.accumulated.resize(len, 0.0);
                stats.window_len = window;
                stats.window.clear();
                stats.window.resize(window * len, 0.0);
                for (_, acc, win) in &per_head[g * group..(g + 1) * group] {
                    if let Some(acc) = acc {
                        for (a, x) in stats.accumulated.iter_mut().zip(acc) {
                            *a += x;
                        }
                    }
                    for (a, x) in stats.window.iter_mut().zip(win) {
                        *a += x;
                    }
                }
            }
        }

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
