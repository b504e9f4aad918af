//! The attention step over what a head keeps: `softmax(q·Kᵀ·scale)·V`.
//!
//! With an f16 cache the arithmetic is llama.cpp's CPU path, to the bit: the query is rounded
//! to f16 before the dot products with the keys (ggml converts the f32 operand of an f16
//! matrix product), scores and softmax run in f32, the probabilities are rounded to f16
//! before they weight the values, and both products are summed in the order of the kernel
//! llama.cpp would use for the batch ([`crate::sums`]). Packed (quantized) heads and the f32
//! cache sum in their own order.

use crate::mathf;
use crate::store::{HeadStore, Rows};
use crate::sums::{self, SumOrder};
use half::f16;

/// Attends query `q` (one head, `dim` values) of a batch of `n_tokens` to rows `0..limit`
/// of `store`.
///
/// Writes the result to `out` and leaves the attention probabilities (f32, before any
/// rounding) in `probs[..limit]`. With an f16 cache both products are summed in the order
/// llama.cpp sums them for a batch of that size ([`SumOrder`]).
pub fn attend_head(
    store: &HeadStore,
    limit: usize,
    q: &[f32],
    scale: f32,
    n_tokens: usize,
    out: &mut [f32],
    probs: &mut Vec<f32>,
) {
    let dim = store.dim;
    debug_assert_eq!(q.len(), dim);
    probs.clear();
    probs.resize(limit, 0.0);
    out.fill(0.0);
    if limit == 0 {
        return;
    }
    match (&store.keys, &store.values) {
        (Rows::F16(k), Rows::F16(v)) => {
            let mut qh = [0f32; 256];
            let qh = &mut qh[..dim];
            for (d, &x) in qh.iter_mut().zip(q) {
                *d = f16::from_f32(x).to_f32();
            }
            let order = SumOrder::scores(n_tokens, dim);
            sums::scores_f16(order, qh, &k[..limit * dim], scale, probs);
            softmax_in_place(probs);
            let mut rounded = probs.clone();
            sums::round_f16(&mut rounded);
            sums::values_f16(
                SumOrder::values(n_tokens, dim),
                &rounded,
                &v[..limit * dim],
                out,
            );
        }
        (Rows::F32(k), Rows::F32(v)) => {
            for (j, p) in probs.iter_mut().enumerate() {
                *p = dot_f32(q, &k[j * dim..(j + 1) * dim]) * scale;
            }
            softmax_in_place(probs);
            for (j, &p) in probs.iter().enumerate() {
                axpy_f32(out, p, &v[j * dim..(j + 1) * dim]);
            }
        }
        _ => unreachable!("keys and values always share a dtype"),
    }
}

/// Rows per piece of a decode step over packed heads.
const PIECE_ROWS: usize = 256;

/// Where a piece's rows are held.
#[derive(Debug, Clone, Copy)]
enum Source {
    Chunk(usize),
    Dense,
}

/// Rows `rows` of one source of key/value head `g`, at `at` in the head's row order.
#[derive(Debug, Clone)]
struct Piece {
    g: usize,
    source: Source,
    rows: std::ops::Range<usize>,
    at: usize,
}

/// Every head's rows cut into pieces of at most [`PIECE_ROWS`] (packed chunks on their
/// [`crate::quant::Chunk::align`] boundaries), in row order.
fn pieces(stores: &[HeadStore]) -> Vec<Piece> {
    let mut out = Vec::new();
    for (g, s) in stores.iter().enumerate() {
        let mut at = 0;
        let mut cut = |source: Source, n: usize, step: usize, at: usize| {
            let mut r = 0;
            while r < n {
                let e = (r + step).min(n);
                out.push(Piece {
                    g,
                    source,
                    rows: r..e,
                    at: at + r,
                });
                r = e;
            }
        };
        for (ci, c) in s.packed.iter().enumerate() {
            let align = c.align().max(1);
            cut(
                Source::Chunk(ci),
                c.rows(),
                (PIECE_ROWS / align).max(1) * align,
                at,
            );
            at += c.rows();
        }
        cut(Source::Dense, s.len() - at, PIECE_ROWS, at);
    }
    out
}

/// One decode step of every query head over key/value heads that hold packed rows. `q` is
/// (heads, dim), query head `h` reading `stores[h / group]`; writes (heads, dim) to `out`.
///
/// The query heads that share a key/value head are served together: each packed chunk scores
/// and weights its rows from its codes for all of them at once ([`crate::quant::Chunk::key_dots`],
/// [`crate::quant::Chunk::add_values`]), so its codes are read and widened once per step, not
/// once per query head and not into an f32 copy of the head. The work is cut into pieces of
/// rows (scores, then the softmax per query head, then the weighted values summed over the
/// pieces in row order) so that every core has some whatever the number of key/value heads.
/// The rounding follows [`Prepared::attend`]: with an f16 cache the queries and the
/// probabilities are rounded to f16.
pub fn attend_packed(stores: &[HeadStore], q: &[f32], group: usize, scale: f32, out: &mut [f32]) {
    use rayon::prelude::*;
    let Some(first) = stores.first() else {
        return;
    };
    let dim = first.dim;
    let f16 = matches!(first.keys, Rows::F16(_));
    let qh: Vec<f32> = q
        .iter()
        .map(|&x| if f16 { f16::from_f32(x).to_f32() } else { x })
        .collect();
    let pieces = pieces(stores);
    let scores: Vec<Vec<f32>> = pieces
        .par_iter()
        .map(|p| {
            let s = &stores[p.g];
            let qs = &qh[p.g * group * dim..(p.g + 1) * group * dim];
            let n = p.rows.len();
            let mut o = vec![0f32; group * n];
            match p.source {
                Source::Chunk(ci) => s.packed[ci].key_dots(qs, group, p.rows.clone(), &mut o),
                Source::Dense => {
                    for (q, o) in qs.chunks_exact(dim).zip(o.chunks_exact_mut(n)) {
                        for (x, r) in o.iter_mut().zip(p.rows.clone()) {
                            *x = match &s.keys {
                                Rows::F16(k) => dot_f16(q, &k[r * dim..(r + 1) * dim]),
                                Rows::F32(k) => dot_f32(q, &k[r * dim..(r + 1) * dim]),
                            };
                        }
                    }
                }
            }
            o
        })
        .collect();
    let probs: Vec<Vec<f32>> = (0..stores.len() * group)
        .into_par_iter()
        .map(|h| {
            let (g, i) = (h / group, h % group);
            let mut row = vec![0f32; stores[g].len()];
            for (p, sc) in pieces.iter().zip(&scores).filter(|(p, _)| p.g == g) {
                let n = p.rows.len();
                row[p.at..p.at + n].copy_from_slice(&sc[i * n..(i + 1) * n]);
            }
            for x in row.iter_mut() {
                *x *= scale;
            }
            softmax_in_place(&mut row);
            if f16 {
                for x in row.iter_mut() {
                    *x = f16::from_f32(*x).to_f32();
                }
            }
            row
        })
        .collect();
    let partials: Vec<Vec<f32>> = pieces
        .par_iter()
        .map(|p| {
            let s = &stores[p.g];
            let n = p.rows.len();
            let mut ps = vec![0f32; group * n];
            for (i, x) in ps.chunks_exact_mut(n).enumerate() {
                x.copy_from_slice(&probs[p.g * group + i][p.at..p.at + n]);
            }
            let mut o = vec![0f32; group * dim];
            match p.source {
                Source::Chunk(ci) => s.packed[ci].add_values(&ps, group, p.rows.clone(), &mut o),
                Source::Dense => {
                    for (o, ps) in o.chunks_exact_mut(dim).zip(ps.chunks_exact(n)) {
                        for (&w, r) in ps.iter().zip(p.rows.clone()) {
                            match &s.values {
                                Rows::F16(v) => axpy_f16(o, w, &v[r * dim..(r + 1) * dim]),
                                Rows::F32(v) => axpy_f32(o, w, &v[r * dim..(r + 1) * dim]),
                            }
                        }
                    }
                }
            }
            o
        })
        .collect();
    out.fill(0.0);
    for (p, part) in pieces.iter().zip(&partials) {
        let o = &mut out[p.g * group * dim..(p.g + 1) * group * dim];
        for (x, y) in o.iter_mut().zip(part) {
            *x += y;
        }
    }
}

/// A head's keys transposed and values widened to f32, made once per prompt chunk so that
/// many queries can attend without converting or reducing per row.
pub struct Prepared {
    /// Transposed, (dim, stride): `kt[d·stride + j]` is dimension `d` of key `j`; or, when
    /// `stride` is 0, the keys row by row (len, dim) for single queries.
    pub kt: Vec<f32>,
    /// (len, dim).
    pub v: Vec<f32>,
    pub stride: usize,
    pub dim: usize,
    pub f16: bool,
}

impl Prepared {
    /// `transpose` for many queries (prompt chunks); row by row for a few (decode steps).
    pub fn new(store: &HeadStore, transpose: bool) -> Self {
        let mut p = Self {
            kt: Vec::new(),
            v: Vec::new(),
            stride: 0,
            dim: store.dim,
            f16: false,
        };
        p.refill(store, transpose, &mut Vec::new());
        p
    }

    /// As [`Prepared::new`], reusing this one's buffers (and `scratch` for transposing).
    pub fn refill(&mut self, store: &HeadStore, transpose: bool, scratch: &mut Vec<f32>) {
        let (len, dim) = (store.len(), store.dim);
        self.dim = dim;
        self.f16 = matches!(store.keys, Rows::F16(_));
        if !transpose {
            store.to_f32(&mut self.kt, &mut self.v);
            self.stride = 0;
            return;
        }
        store.to_f32(scratch, &mut self.v);
        // A row stride of an odd number of 64-byte lines: the rows of one column then fall in
        // different L1 sets (a stride of a multiple of 4 KiB would put them all in one).
        let mut stride = len.div_ceil(16) * 16;
        if (stride / 16).is_multiple_of(2) {
            stride += 16;
        }
        self.stride = stride;
        self.kt.resize(dim * stride, 0.0);
        for d in 0..dim {
            let row = &mut self.kt[d * stride..(d + 1) * stride];
            for (j, x) in row[..len].iter_mut().enumerate() {
                *x = scratch[j * dim + d];
            }
            row[len..].fill(0.0);
        }
    }

    /// As [`attend_head`], over rows `0..limit` of the prepared head (with an f16 cache the
    /// probabilities left in `probs` are the f16-rounded ones).
    pub fn attend(
        &self,
        limit: usize,
        q: &[f32],
        scale: f32,
        n_tokens: usize,
        out: &mut [f32],
        probs: &mut Vec<f32>,
    ) {
        let dim = self.dim;
        let mut qh = [0f32; 256];
        let qh = &mut qh[..dim];
        for (d, &x) in qh.iter_mut().zip(q) {
            *d = if self.f16 {
                f16::from_f32(x).to_f32()
            } else {
                x
            };
        }
        probs.clear();
        let order = SumOrder::scores(n_tokens, dim);
        if self.stride == 0 {
            probs.extend(self.kt[..limit * dim].chunks_exact(dim).map(|k| {
                if self.f16 {
                    sums::dot(order, qh, k)
                } else {
                    dot_f32(qh, k)
                }
            }));
        } else {
            probs.resize(limit.div_ceil(8) * 8, 0.0);
            match (self.f16, order) {
                (true, SumOrder::Gemm) => sums::scores_t_gemm(qh, &self.kt, self.stride, probs),
                (true, SumOrder::Dot) => {
                    // A query of a one-token batch inside a prompt chunk (rare): each key's
                    // column gathered into a row.
                    let mut k = [0f32; 256];
                    for (j, p) in probs.iter_mut().enumerate().take(limit) {
                        for (d, x) in k[..dim].iter_mut().enumerate() {
                            *x = self.kt[d * self.stride + j];
                        }
                        *p = sums::dot(order, qh, &k[..dim]);
                    }
                }
                (false, _) => scores_t(qh, &self.kt, self.stride, probs),
            }
            probs.truncate(limit);
        }
        for p in probs.iter_mut() {
            *p *= scale;
        }
        softmax_in_place(probs);
        out.fill(0.0);
        if self.f16 {
            sums::round_f16(probs);
            sums::values_f32(
                SumOrder::values(n_tokens, dim),
                probs,
                &self.v[..probs.len() * dim],
                out,
            );
        } else {
            weighted_sum(probs, &self.v, dim, out);
        }
    }
}

/// `out[j] = Σ_d q[d]·kt[d·stride + j]` for every `j < out.len()` (a multiple of 8).
fn scores_t(q: &[f32], kt: &[f32], stride: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::avx2() {
            // SAFETY: features detected; `out.len() ≤ stride`, a multiple of 8.
            unsafe { x86::scores_t(q, kt, stride, out) };
            return;
        }
    }
    for (j, o) in out.iter_mut().enumerate() {
        *o = q
            .iter()
            .enumerate()
            .map(|(d, x)| x * kt[d * stride + j])
            .sum();
    }
}

/// `out = Σ_j p[j]·v[j]` with `v` rows of `dim`.
fn weighted_sum(p: &[f32], v: &[f32], dim: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::avx2() && dim == 64 {
            // SAFETY: features detected; `v` holds `p.len()` rows of 64.
            unsafe { x86::weighted_sum64(p, v, out) };
            return;
        }
    }
    for (j, &pj) in p.iter().enumerate() {
        axpy_f32(out, pj, &v[j * dim..(j + 1) * dim]);
    }
}

/// Softmax as `ggml_vec_soft_max_f32`: exp of `x − max` per lane, lanes of 16 summed in f32,
/// the chunk sums accumulated in f64, then one multiplication by `1/sum`.
pub fn softmax_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::avx2() {
            // SAFETY: features detected; the same code with fused multiply-adds inlined.
            unsafe { softmax_fma(x) };
            return;
        }
    }
    softmax_impl(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax_fma(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    let full = x.len() / 16 * 16;
    let mv = _mm256_set1_ps(max);
    for chunk in x[..full].chunks_exact_mut(16) {
        let mut lanes = [0f32; 16];
        for h in 0..2 {
            let p = chunk.as_mut_ptr().add(8 * h);
            let e = mathf::expf8(_mm256_sub_ps(_mm256_loadu_ps(p), mv));
            _mm256_storeu_ps(p, e);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * h), e);
        }
        sum += mathf::reduce16(&lanes) as f64;
    }
    if full < x.len() {
        let mut lanes = [0f32; 16];
        for (l, v) in lanes.iter_mut().zip(x[full..].iter_mut()) {
            *v = mathf::expf(*v - max);
            *l = *v;
        }
        sum += mathf::reduce16(&lanes) as f64;
    }
    let inv = _mm256_set1_ps((1.0 / sum) as f32);
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        _mm256_storeu_ps(
            c.as_mut_ptr(),
            _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), inv),
        );
    }
    let inv = (1.0 / sum) as f32;
    for v in chunks.into_remainder() {
        *v *= inv;
    }
}

#[inline(always)]
fn softmax_impl(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for chunk in x.chunks_mut(16) {
        let mut lanes = [0f32; 16];
        for (l, v) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *v = mathf::expf(*v - max);
            *l = *v;
        }
        sum += mathf::reduce16(&lanes) as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::avx2() && a.len().is_multiple_of(8) {
            // SAFETY: the features were detected at run time; lengths are equal multiples of 8.
            return unsafe { x86::dot_f32(a, b) };
        }
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::avx2() && a.len().is_multiple_of(8) {
            // SAFETY: as above.
            return unsafe { x86::dot_f16(a, b) };
        }
    }
    a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum()
}

/// `out += p · v`.
pub fn axpy_f32(out: &mut [f32], p: f32, v: &[f32]) {
    for (o, x) in out.iter_mut().zip(v) {
        *o += p * x;
    }
}

/// `out += p · v` with `v` in f16.
pub fn axpy_f16(out: &mut [f32], p: f32, v: &[f16]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::avx2() && out.len().is_multiple_of(8) {
            // SAFETY: as above.
            unsafe { x86::axpy_f16(out, p, v) };
            return;
        }
    }
    for (o, x) in out.iter_mut().zip(v) {
        *o += p * x.to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::simd::x86::hsum;
    use half::f16;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            acc = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
                acc,
            );
            i += 8;
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let kb = _mm_loadu_si128(b.as_ptr().add(i) as *const __m128i);
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_cvtph_ps(kb), acc);
            i += 8;
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores_t(q: &[f32], kt: &[f32], stride: usize, out: &mut [f32]) {
        let n = out.len();
        let mut j = 0;
        // Four blocks of 8 keys at a time keep four independent accumulators in flight.
        while j + 32 <= n {
            let mut a = [_mm256_setzero_ps(); 4];
            for (d, &qd) in q.iter().enumerate() {
                let qv = _mm256_set1_ps(qd);
                let row = kt.as_ptr().add(d * stride + j);
                for (b, acc) in a.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(qv, _mm256_loadu_ps(row.add(8 * b)), *acc);
                }
            }
            for (b, acc) in a.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(j + 8 * b), *acc);
            }
            j += 32;
        }
        while j < n {
            let mut acc = _mm256_setzero_ps();
            for (d, &qd) in q.iter().enumerate() {
                acc = _mm256_fmadd_ps(
                    _mm256_set1_ps(qd),
                    _mm256_loadu_ps(kt.as_ptr().add(d * stride + j)),
                    acc,
                );
            }
            _mm256_storeu_ps(out.as_mut_ptr().add(j), acc);
            j += 8;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weighted_sum64(p: &[f32], v: &[f32], out: &mut [f32]) {
        let mut acc = [_mm256_setzero_ps(); 8];
        for (j, &pj) in p.iter().enumerate() {
            let pv = _mm256_set1_ps(pj);
            let row = v.as_ptr().add(j * 64);
            for (b, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(pv, _mm256_loadu_ps(row.add(8 * b)), *a);
            }
        }
        for (b, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * b), *a);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy_f16(out: &mut [f32], p: f32, v: &[f16]) {
        let n = out.len().min(v.len());
        let pv = _mm256_set1_ps(p);
        let mut i = 0;
        while i + 8 <= n {
            let vb = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i) as *const __m128i));
            let o = _mm256_loadu_ps(out.as_ptr().add(i));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_fmadd_ps(pv, vb, o));
            i += 8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KvDtype;

    #[test]
    fn fused_packed_attention_equals_attending_the_dequantized_head() {
        use crate::quant::{fp8::Fp8, gear::Gear, kivi::Kivi, uniform::PerToken, Codec};
        let dim = 64;
        let rows = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    (((i as u32).wrapping_mul(2654435761u32) ^ seed) % 1000) as f32 / 500.0 - 1.0
                })
                .collect()
        };
        let gear = Gear {
            bits: 4,
            rank: 2,
            outliers: 0.02,
        };
        let codecs: Vec<(Box<dyn Codec>, usize)> = vec![
            (Box::new(Kivi { bits: 2, group: 32 }), 32),
            (Box::new(PerToken { bits: 8 }), 1),
            (Box::new(PerToken { bits: 4 }), 1),
            (Box::new(Fp8), 1),
            (Box::new(gear), 64),
        ];
        // 600 rows: 512 packed (pieces of 256 rows), 88 dense.
        let (total, packed) = (600, 512);
        for dtype in [KvDtype::F16, KvDtype::F32] {
            for (codec, group) in &codecs {
                let mut s = HeadStore::new(dtype, dim, total);
                let (k, v) = (rows(total * dim, 1), rows(total * dim, 2));
                for t in 0..total {
                    s.push(
                        t as u32,
                        &k[t * dim..(t + 1) * dim],
                        &v[t * dim..(t + 1) * dim],
                    );
                }
                for _ in 0..packed / group {
                    s.pack_oldest(*group, codec.as_ref());
                }
                assert_eq!(s.packed_rows, packed);
                // Chunks grow in place: per-token codecs row by row, KIVI group by group;
                // GEAR keeps a chunk per 64 rows.
                let chunks = if *group == 64 { packed / 64 } else { 1 };
                assert_eq!(s.packed.len(), chunks);
                assert!(pieces(std::slice::from_ref(&s)).len() >= 3);
                let qs = rows(3 * dim, 3);
                let mut fused = vec![0f32; 3 * dim];
                attend_packed(std::slice::from_ref(&s), &qs, 3, 0.125, &mut fused);
                let prepared = Prepared::new(&s, false);
                for i in 0..3 {
                    let mut want = vec![0f32; dim];
                    let mut probs = Vec::new();
                    prepared.attend(
                        total,
                        &qs[i * dim..(i + 1) * dim],
                        0.125,
                        1,
                        &mut want,
                        &mut probs,
                    );
                    for d in 0..dim {
                        let got = fused[i * dim + d];
                        assert!(
                            (got - want[d]).abs() < 1e-4,
                            "{dtype:?} group {group} query {i} dim {d}: {got} vs {}",
                            want[d]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn attention_matches_hand_computation() {
        // Two keys; the query aligns with the second, so it gets weight e/(1+e).
        let mut s = HeadStore::new(KvDtype::F32, 8, 2);
        let mut k0 = [0.0; 8];
        let mut k1 = [0.0; 8];
        k1[0] = 1.0;
        k0[1] = 1.0;
        s.push(0, &k0, &[1.0; 8]);
        s.push(1, &k1, &[3.0; 8]);
        let mut q = [0.0; 8];
        q[0] = 1.0;
        let mut out = [0.0; 8];
        let mut probs = Vec::new();
        attend_head(&s, 2, &q, 1.0, 1, &mut out, &mut probs);
        let e = std::f32::consts::E;
        let p1 = e / (1.0 + e);
        assert!((probs[1] - p1).abs() < 1e-6);
        assert!((out[0] - (1.0 * (1.0 - p1) + 3.0 * p1)).abs() < 1e-5);
        // Only the first row visible: all weight on it.
        attend_head(&s, 1, &q, 1.0, 1, &mut out, &mut probs);
        assert_eq!(probs, vec![1.0]);
        assert_eq!(out, [1.0; 8]);
    }

    #[test]
    fn f16_and_f32_paths_agree_closely() {
        let dim = 64;
        let mut a = HeadStore::new(KvDtype::F32, dim, 16);
        let mut b = HeadStore::new(KvDtype::F16, dim, 16);
        for t in 0..16 {
            let k: Vec<f32> = (0..dim)
                .map(|d| ((t * 7 + d * 3) % 11) as f32 / 11.0 - 0.5)
                .collect();
            let v: Vec<f32> = (0..dim).map(|d| ((t * 5 + d) % 13) as f32 / 13.0).collect();
            a.push(t as u32, &k, &v);
            b.push(t as u32, &k, &v);
        }
        let q: Vec<f32> = (0..dim).map(|d| (d % 5) as f32 * 0.3).collect();
        let (mut oa, mut ob) = (vec![0.0; dim], vec![0.0; dim]);
        let mut p = Vec::new();
        for n_tokens in [1, 16] {
            attend_head(&a, 16, &q, 0.125, n_tokens, &mut oa, &mut p);
            attend_head(&b, 16, &q, 0.125, n_tokens, &mut ob, &mut p);
            for (x, y) in oa.iter().zip(&ob) {
                assert!((x - y).abs() < 2e-3, "{x} vs {y}");
            }
        }
    }
}
