//! GEAR: uniform quantization, plus a low-rank approximation of the quantization error, plus
//! the largest-magnitude entries kept exactly as sparse outliers.
//!
//! Kang et al., "GEAR: An Efficient KV Cache Compression Recipe for Near-Lossless Generative
//! Inference of LLM" (arXiv:2403.05527). The prompt is compressed at once (in chunks of up to
//! 1024 tokens at a head width of 64), generated tokens every 64 (the streaming buffer). Per
//! chunk and for keys and values apart:
//! the `outliers` fraction of entries with the largest |x| is set aside; the rest is quantized
//! per token to `bits`; the error of that is approximated by rank `rank` factors (a few power
//! iterations of a randomized range finder), stored in f16. Each outlier is stored as (index,
//! f16 correction): its value minus what quantization and the low-rank term give at its
//! place, so that attention adds it as it is, with no decoding at that place at each step.

use super::kernels::{axpy_rows, dot_rows, Format, Run};
use super::uniform::quantize_row;
use super::{dequant_run, pack, Chunk, Codec};
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::cell::RefCell;
use std::ops::Range;

pub struct Gear {
    pub bits: u32,
    pub rank: usize,
    /// Fraction of entries kept exactly.
    pub outliers: f32,
}

struct Matrix {
    codes: Vec<u8>,
    /// Per row: `x ≈ min + scale·code`.
    mins: Vec<f16>,
    scales: Vec<f16>,
    /// The error's factors `A (rows, rank)`, stored transposed as (rank, rows), and `B (rank,
    /// dim)`: rank by rank, each a contiguous run.
    at: Vec<f16>,
    b: Vec<f16>,
    /// Outliers by index (`row·dim + d`), and for each its value minus the base value there.
    outlier_at: Vec<u16>,
    outlier_delta: Vec<f16>,
}

struct Packed {
    rows: usize,
    dim: usize,
    bits: u32,
    rank: usize,
    k: Matrix,
    v: Matrix,
}

impl Gear {
    fn encode_matrix(&self, x: &[f32], rows: usize, dim: usize) -> Matrix {
        let n = rows * dim;
        let count = ((self.outliers * n as f32).round() as usize).min(n);
        let mut order: Vec<usize> = (0..n).collect();
        if count > 0 && count < n {
            order.select_nth_unstable_by(count, |&i, &j| x[j].abs().total_cmp(&x[i].abs()));
        }
        let mut outliers: Vec<usize> = order[..count].to_vec();
        outliers.sort_unstable();
        let mut rest = x.to_vec();
        for &i in &outliers {
            rest[i] = 0.0;
        }
        let mut codes = Vec::with_capacity(n);
        let (mut mins, mut scales) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        let mut err = vec![0f32; n];
        for (r, row) in rest.chunks_exact(dim).enumerate() {
            let (c, m, s) = quantize_row(row, self.bits);
            for (d, &q) in c.iter().enumerate() {
                err[r * dim + d] = row[d] - (m.to_f32() + s.to_f32() * q as f32);
            }
            codes.extend(c);
            mins.push(m);
            scales.push(s);
        }
        for &i in &outliers {
            err[i] = 0.0;
        }
        let r = self.rank.min(rows).min(dim);
        let (a, b) = low_rank(&err, rows, dim, r);
        let at: Vec<f16> = (0..r * rows)
            .map(|i| f16::from_f32(a[(i % rows) * r + i / rows]))
            .collect();
        let b: Vec<f16> = b.into_iter().map(f16::from_f32).collect();
        // What decoding gives at each outlier's place, from the stored (rounded) parts.
        let outlier_delta = outliers
            .iter()
            .map(|&i| {
                let (row, d) = (i / dim, i % dim);
                let c = codes[i] as f32;
                let low: f32 = (0..r)
                    .map(|k| at[k * rows + row].to_f32() * b[k * dim + d].to_f32())
                    .sum();
                let base = mins[row].to_f32() + scales[row].to_f32() * c + low;
                f16::from_f32(x[i] - base)
            })
            .collect();
        Matrix {
            codes: pack(&codes, self.bits),
            mins,
            scales,
            at,
            b,
            outlier_at: outliers.iter().map(|&i| i as u16).collect(),
            outlier_delta,
        }
    }
}

/// Rank-`r` factors `A (rows, r)`, `B (r, dim)` with `A·B ≈ E`: a randomized range finder
/// with two power iterations (Halko, Martinsson & Tropp 2011).
fn low_rank(e: &[f32], rows: usize, dim: usize, r: usize) -> (Vec<f32>, Vec<f32>) {
    if r == 0 {
        return (Vec::new(), Vec::new());
    }
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let omega: Vec<f32> = (0..dim * r)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    // Y = E·Ω, (rows, r).
    let mut y = matmul(e, &omega, rows, dim, r);
    for _ in 0..2 {
        orthonormalize(&mut y, rows, r);
        // Z = Eᵀ·Y (dim, r); Y = E·Z.
        let z = matmul_tn(e, &y, rows, dim, r);
        y = matmul(e, &z, rows, dim, r);
    }
    orthonormalize(&mut y, rows, r);
    // B = Yᵀ·E, (r, dim).
    let bt = matmul_tn(e, &y, rows, dim, r); // (dim, r)
    let mut b = vec![0f32; r * dim];
    for d in 0..dim {
        for k in 0..r {
            b[k * dim + d] = bt[d * r + k];
        }
    }
    (y, b)
}

/// (m, k)·(k, n).
fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for l in 0..k {
            let x = a[i * k + l];
            for j in 0..n {
                out[i * n + j] += x * b[l * n + j];
            }
        }
    }
    out
}

/// (m, k)ᵀ·(m, n) = (k, n).
fn matmul_tn(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; k * n];
    for i in 0..m {
        for l in 0..k {
            let x = a[i * k + l];
            for j in 0..n {
                out[l * n + j] += x * b[i * n + j];
            }
        }
    }
    out
}

/// Modified Gram-Schmidt on the columns of (rows, r).
fn orthonormalize(y: &mut [f32], rows: usize, r: usize) {
    for c in 0..r {
        for p in 0..c {
            let dot: f32 = (0..rows).map(|i| y[i * r + c] * y[i * r + p]).sum();
            for i in 0..rows {
                y[i * r + c] -= dot * y[i * r + p];
            }
        }
        let norm = (0..rows)
            .map(|i| y[i * r + c] * y[i * r + c])
            .sum::<f32>()
            .sqrt();
        let inv = if norm > 1e-20 { 1.0 / norm } else { 0.0 };
        for i in 0..rows {
            y[i * r + c] *= inv;
        }
    }
}

impl Codec for Gear {
    // The prompt is compressed as one matrix per head, as in the paper (up to the rows that
    // u16 outlier indices reach: 1024 at a head width of 64); generated tokens in chunks of
    // the streaming buffer.
    fn prompt_rows(&self, group: usize, dim: usize) -> usize {
        ((u16::MAX as usize + 1) / dim.max(1)).max(group)
    }

    fn encode(&self, keys: &[f32], values: &[f32], rows: usize, dim: usize) -> Box<dyn Chunk> {
        assert!(
            rows * dim <= u16::MAX as usize + 1,
            "GEAR chunks index outliers with u16"
        );
        Box::new(Packed {
            rows,
            dim,
            bits: self.bits,
            rank: self.rank.min(rows).min(dim),
            k: self.encode_matrix(keys, rows, dim),
            v: self.encode_matrix(values, rows, dim),
        })
    }
}

thread_local! {
    /// Per-thread room for a chunk's parameters widened to f32 (no allocation per step).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A piece of a matrix (rows `lo..lo + n`) with its parameters and factors as f32, read from
/// one scratch buffer.
struct Wide<'a> {
    mins: &'a [f32],
    scales: &'a [f32],
    /// (rank, n).
    at: &'a [f32],
    /// (rank, dim).
    b: &'a [f32],
    /// The outliers in the piece: indices into the chunk, and their corrections.
    outlier_at: &'a [u16],
    deltas: &'a [f32],
    /// `nq·n` free values for the caller.
    tmp: &'a mut [f32],
}

/// `(row, d)` of an outlier index `row·dim + d`: a shift and a mask for the usual
/// power-of-two head widths, a division otherwise.
fn index_split(dim: usize) -> impl Fn(u16) -> (usize, usize) {
    let shift = dim.trailing_zeros();
    let pow2 = dim.is_power_of_two();
    move |at| {
        let at = at as usize;
        if pow2 {
            (at >> shift, at & (dim - 1))
        } else {
            (at / dim, at % dim)
        }
    }
}

impl Matrix {
    /// Calls `f` with rows `rows` of this matrix (of `total` rows, `dim` wide) widened to
    /// f32, and room for `nq` queries' worth of row values.
    fn with_wide<R>(
        &self,
        total: usize,
        dim: usize,
        rows: Range<usize>,
        nq: usize,
        f: impl FnOnce(Wide<'_>) -> R,
    ) -> R {
        let n = rows.len();
        let rank = self.at.len() / total.max(1);
        let lo = self
            .outlier_at
            .partition_point(|&i| (i as usize) < rows.start * dim);
        let hi = self
            .outlier_at
            .partition_point(|&i| (i as usize) < rows.end * dim);
        SCRATCH.with(|cell| {
            let mut buf = cell.borrow_mut();
            let need = 2 * n + rank * n + self.b.len() + (hi - lo) + nq * n;
            if buf.len() < need {
                buf.resize(need, 0.0);
            }
            let (mins, rest) = buf[..need].split_at_mut(n);
            let (scales, rest) = rest.split_at_mut(n);
            let (at, rest) = rest.split_at_mut(rank * n);
            let (b, rest) = rest.split_at_mut(self.b.len());
            let (deltas, tmp) = rest.split_at_mut(hi - lo);
            self.mins[rows.clone()].convert_to_f32_slice(mins);
            self.scales[rows.clone()].convert_to_f32_slice(scales);
            for (k, a) in at.chunks_exact_mut(n.max(1)).enumerate().take(rank) {
                self.at[k * total + rows.start..k * total + rows.end].convert_to_f32_slice(a);
            }
            self.b.convert_to_f32_slice(b);
            self.outlier_delta[lo..hi].convert_to_f32_slice(deltas);
            f(Wide {
                mins,
                scales,
                at,
                b,
                outlier_at: &self.outlier_at[lo..hi],
                deltas,
                tmp,
            })
        })
    }
}

impl Packed {
    fn decode_matrix(&self, m: &Matrix, out: &mut [f32]) {
        let (dim, rows) = (self.dim, self.rows);
        m.with_wide(rows, dim, 0..rows, 0, |w| {
            for row in 0..rows {
                let o = &mut out[row * dim..(row + 1) * dim];
                dequant_run(
                    &m.codes,
                    self.bits,
                    row * dim,
                    w.mins[row],
                    w.scales[row],
                    o,
                );
                for k in 0..self.rank {
                    let ak = w.at[k * rows + row];
                    crate::attention::axpy_f32(o, ak, &w.b[k * dim..(k + 1) * dim]);
                }
            }
        });
        for (&i, delta) in m.outlier_at.iter().zip(&m.outlier_delta) {
            out[i as usize] += delta.to_f32();
        }
    }
}

impl Chunk for Packed {
    fn rows(&self) -> usize {
        self.rows
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn bytes(&self) -> usize {
        [&self.k, &self.v]
            .iter()
            .map(|m| {
                m.codes.len()
                    + 2 * (m.mins.len() + m.scales.len())
                    + 2 * (m.at.len() + m.b.len())
                    + 4 * m.outlier_at.len()
            })
            .sum()
    }

    fn decode(&self, keys: &mut [f32], values: &mut [f32]) {
        self.decode_matrix(&self.k, keys);
        self.decode_matrix(&self.v, values);
    }

    // With k_r = m_r + s_r·c_r + Σ_k a_rk·b_k (plus a correction at each outlier):
    // q·k_r = m_r·Σq + s_r·(q·c_r) + Σ_k a_rk·(b_k·q) + Σ_outliers q_d·delta.
    fn key_dots(&self, qs: &[f32], nq: usize, rows: Range<usize>, out: &mut [f32]) {
        let (dim, r, n, lo) = (self.dim, self.rank, rows.len(), rows.start);
        let m = &self.k;
        let split = index_split(dim);
        m.with_wide(self.rows, dim, rows, 0, |w| {
            let run = Run::rows(lo, n, dim);
            dot_rows(Format::Bits(self.bits), &m.codes, run, &qs[..nq * dim], out);
            for (q, o) in qs.chunks_exact(dim).zip(out.chunks_exact_mut(n)).take(nq) {
                let qsum: f32 = q.iter().sum();
                for ((x, &mn), &sc) in o.iter_mut().zip(w.mins).zip(w.scales) {
                    *x = mn * qsum + sc * *x;
                }
                for k in 0..r {
                    let bq = crate::attention::dot_f32(&w.b[k * dim..(k + 1) * dim], q);
                    crate::attention::axpy_f32(o, bq, &w.at[k * n..(k + 1) * n]);
                }
            }
            for (&at, &delta) in w.outlier_at.iter().zip(w.deltas) {
                let (row, d) = split(at);
                for i in 0..nq {
                    out[i * n + row - lo] += qs[i * dim + d] * delta;
                }
            }
        })
    }

    fn add_values(&self, ps: &[f32], nq: usize, rows: Range<usize>, outs: &mut [f32]) {
        let (dim, r, n, lo) = (self.dim, self.rank, rows.len(), rows.start);
        let m = &self.v;
        let split = index_split(dim);
        m.with_wide(self.rows, dim, rows, nq, |w| {
            for (x, p) in w.tmp.chunks_exact_mut(n).zip(ps.chunks_exact(n)) {
                for ((x, &pr), &sc) in x.iter_mut().zip(p).zip(w.scales) {
                    *x = pr * sc;
                }
            }
            let run = Run::rows(lo, n, dim);
            axpy_rows(Format::Bits(self.bits), &m.codes, run, w.tmp, outs, dim);
            for (p, o) in ps.chunks_exact(n).zip(outs.chunks_exact_mut(dim)).take(nq) {
                let offset = crate::attention::dot_f32(p, w.mins);
                for k in 0..r {
                    let pa = crate::attention::dot_f32(p, &w.at[k * n..(k + 1) * n]);
                    crate::attention::axpy_f32(o, pa, &w.b[k * dim..(k + 1) * dim]);
                }
                for x in o.iter_mut() {
                    *x += offset;
                }
            }
            for (&at, &delta) in w.outlier_at.iter().zip(w.deltas) {
                let (row, d) = split(at);
                for i in 0..nq {
                    outs[i * dim + d] += ps[i * n + row - lo] * delta;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testutil::rows;
    use crate::quant::uniform::PerToken;

    fn err(x: &[f32], y: &[f32]) -> f32 {
        x.iter()
            .zip(y)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            .sqrt()
    }

    #[test]
    fn outliers_are_exact_and_low_rank_beats_plain_quantization() {
        let (n, dim) = (64, 64);
        let mut k = rows(n * dim, 7, 1.0);
        k[100] = 40.0;
        k[2000] = -35.0;
        let v = rows(n * dim, 8, 1.0);
        let gear = Gear {
            bits: 2,
            rank: 4,
            outliers: 0.01,
        };
        let c = gear.encode(&k, &v, n, dim);
        let (mut dk, mut dv) = (vec![0f32; n * dim], vec![0f32; n * dim]);
        c.decode(&mut dk, &mut dv);
        assert!((dk[100] - 40.0).abs() < 0.05 && (dk[2000] + 35.0).abs() < 0.05);
        let plain = PerToken { bits: 2 }.encode(&k, &v, n, dim);
        let (mut pk, mut pv) = (vec![0f32; n * dim], vec![0f32; n * dim]);
        plain.decode(&mut pk, &mut pv);
        // Outliers no longer stretch their rows' ranges.
        assert!(
            err(&k, &dk) < 0.7 * err(&k, &pk),
            "gear {} plain {}",
            err(&k, &dk),
            err(&k, &pk)
        );
        assert!(err(&v, &dv) < err(&v, &pv));
        // The low-rank term removes part of what quantization left.
        let no_rank = Gear {
            bits: 2,
            rank: 0,
            outliers: 0.01,
        }
        .encode(&k, &v, n, dim);
        let (mut rk, mut rv) = (vec![0f32; n * dim], vec![0f32; n * dim]);
        no_rank.decode(&mut rk, &mut rv);
        assert!(err(&k, &dk) < err(&k, &rk) && err(&v, &dv) < err(&v, &rv));
        let outl = (0.01f32 * (n * dim) as f32).round() as usize;
        let want = 2 * (n * dim * 2 / 8 + 4 * n + 2 * (4 * n + 4 * dim) + 4 * outl);
        assert_eq!(c.bytes(), want);
    }

    #[test]
    fn low_rank_recovers_a_rank_two_matrix() {
        let (m, d) = (16, 12);
        let u = rows(m * 2, 1, 1.0);
        let w = rows(2 * d, 2, 1.0);
        let e = matmul(&u, &w, m, 2, d);
        let (a, b) = low_rank(&e, m, d, 2);
        let back = matmul(&a, &b, m, 2, d);
        assert!(err(&e, &back) < 1e-4 * err(&e, &vec![0.0; m * d]).max(1.0));
    }
}
