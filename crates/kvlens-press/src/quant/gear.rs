//! GEAR: uniform quantization, plus a low-rank approximation of the quantization error, plus
//! the largest-magnitude entries kept exactly as sparse outliers.
//!
//! Kang et al., "GEAR: An Efficient KV Cache Compression Recipe for Near-Lossless Generative
//! Inference of LLM" (arXiv:2403.05527). Per chunk of tokens and for keys and values apart:
//! the `outliers` fraction of entries with the largest |x| is stored as (index, f16 value);
//! the rest is quantized per token to `bits`; the error of that is approximated by rank
//! `rank` factors (a few power iterations of a randomized range finder), stored in f16.

use super::kernels::{axpy_rows, dot_rows, Format};
use super::uniform::quantize_row;
use super::{dequant_run, pack, unpack, Chunk, Codec};
use half::f16;
use half::slice::HalfFloatSliceExt;

pub struct Gear {
    pub bits: u32,
    pub rank: usize,
    /// Fraction of entries kept exactly.
    pub outliers: f32,
}

struct Matrix {
    codes: Vec<u8>,
    params: Vec<(f16, f16)>,
    /// (rows, rank) and (rank, dim).
    a: Vec<f16>,
    b: Vec<f16>,
    sparse: Vec<(u16, f16)>,
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
        let mut sparse: Vec<(u16, f16)> = order[..count]
            .iter()
            .map(|&i| (i as u16, f16::from_f32(x[i])))
            .collect();
        sparse.sort_unstable_by_key(|s| s.0);
        let mut rest = x.to_vec();
        for &(i, _) in &sparse {
            rest[i as usize] = 0.0;
        }
        let mut codes = Vec::with_capacity(n);
        let mut params = Vec::with_capacity(rows);
        let mut err = vec![0f32; n];
        for (r, row) in rest.chunks_exact(dim).enumerate() {
            let (c, m, s) = quantize_row(row, self.bits);
            for (d, &q) in c.iter().enumerate() {
                err[r * dim + d] = row[d] - (m.to_f32() + s.to_f32() * q as f32);
            }
            codes.extend(c);
            params.push((m, s));
        }
        for &(i, _) in &sparse {
            err[i as usize] = 0.0;
        }
        let (a, b) = low_rank(&err, rows, dim, self.rank.min(rows).min(dim));
        Matrix {
            codes: pack(&codes, self.bits),
            params,
            a: a.into_iter().map(f16::from_f32).collect(),
            b: b.into_iter().map(f16::from_f32).collect(),
            sparse,
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

fn to_f32(x: &[f16]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    x.convert_to_f32_slice(&mut out);
    out
}

impl Packed {
    /// For each outlier, its exact value minus what quantization and the low-rank term give
    /// at its place (what attention must add there).
    fn outlier_deltas(&self, m: &Matrix, params: &[(f32, f32)], a: &[f32], b: &[f32]) -> Vec<f32> {
        m.sparse
            .iter()
            .map(|&(at, v)| {
                let (row, d) = (at as usize / self.dim, at as usize % self.dim);
                v.to_f32() - self.base(m, params, a, b, row, d)
            })
            .collect()
    }

    /// Entry (row, d) as quantization plus low rank give it (what an outlier replaces).
    fn base(
        &self,
        m: &Matrix,
        params: &[(f32, f32)],
        a: &[f32],
        b: &[f32],
        row: usize,
        d: usize,
    ) -> f32 {
        let (dim, r) = (self.dim, self.rank);
        let (mn, sc) = params[row];
        let c = unpack(&m.codes, self.bits, row * dim + d) as f32;
        mn + sc * c + (0..r).map(|k| a[row * r + k] * b[k * dim + d]).sum::<f32>()
    }

    fn decode_matrix(&self, m: &Matrix, out: &mut [f32]) {
        let (dim, r) = (self.dim, self.rank);
        let a: Vec<f32> = m.a.iter().map(|x| x.to_f32()).collect();
        let b: Vec<f32> = m.b.iter().map(|x| x.to_f32()).collect();
        for (row, (mn, s)) in m.params.iter().enumerate() {
            let o = &mut out[row * dim..(row + 1) * dim];
            dequant_run(&m.codes, self.bits, row * dim, mn.to_f32(), s.to_f32(), o);
            for k in 0..r {
                let ak = a[row * r + k];
                for (x, bk) in o.iter_mut().zip(&b[k * dim..(k + 1) * dim]) {
                    *x += ak * bk;
                }
            }
        }
        for &(i, v) in &m.sparse {
            out[i as usize] = v.to_f32();
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
                    + 4 * m.params.len()
                    + 2 * (m.a.len() + m.b.len())
                    + 4 * m.sparse.len()
            })
            .sum()
    }

    fn decode(&self, keys: &mut [f32], values: &mut [f32]) {
        self.decode_matrix(&self.k, keys);
        self.decode_matrix(&self.v, values);
    }

    // Decoding the outliers' places is the costly part: one call serves all the query heads
    // of a key/value head.
    fn fused(&self) -> bool {
        false
    }

    // With k_r = m_r + s_r·c_r + Σ_k a_rk·b_k (and a few entries replaced exactly):
    // q·k_r = m_r·Σq + s_r·(q·c_r) + Σ_k a_rk·(b_k·q) + Σ_outliers q_d·(x − base_rd).
    fn key_dots(&self, qs: &[f32], nq: usize, out: &mut [f32]) {
        let (dim, rows, r) = (self.dim, self.rows, self.rank);
        let m = &self.k;
        let (a, b) = (to_f32(&m.a), to_f32(&m.b));
        let params: Vec<(f32, f32)> = m
            .params
            .iter()
            .map(|(x, y)| (x.to_f32(), y.to_f32()))
            .collect();
        let deltas = self.outlier_deltas(m, &params, &a, &b);
        let mut bq = vec![0f32; r];
        for (i, q) in qs.chunks_exact(dim).enumerate().take(nq) {
            let qsum: f32 = q.iter().sum();
            for (k, x) in bq.iter_mut().enumerate() {
                *x = crate::attention::dot_f32(&b[k * dim..(k + 1) * dim], q);
            }
            let o = &mut out[i * rows..(i + 1) * rows];
            dot_rows(Format::Bits(self.bits), &m.codes, 0, dim, q, o);
            for (row, x) in o.iter_mut().enumerate() {
                let (mn, sc) = params[row];
                let low: f32 = (0..r).map(|k| a[row * r + k] * bq[k]).sum();
                *x = mn * qsum + sc * *x + low;
            }
            for (&(at, _), delta) in m.sparse.iter().zip(&deltas) {
                let (row, d) = (at as usize / dim, at as usize % dim);
                o[row] += q[d] * delta;
            }
        }
    }

    fn add_values(&self, ps: &[f32], nq: usize, outs: &mut [f32]) {
        let (dim, rows, r) = (self.dim, self.rows, self.rank);
        let m = &self.v;
        let (a, b) = (to_f32(&m.a), to_f32(&m.b));
        let params: Vec<(f32, f32)> = m
            .params
            .iter()
            .map(|(x, y)| (x.to_f32(), y.to_f32()))
            .collect();
        let deltas = self.outlier_deltas(m, &params, &a, &b);
        let mut w = vec![0f32; rows];
        let mut wk = vec![0f32; r];
        for (i, o) in outs.chunks_exact_mut(dim).enumerate().take(nq) {
            let p = &ps[i * rows..(i + 1) * rows];
            let mut offset = 0.0;
            wk.fill(0.0);
            for (row, x) in w.iter_mut().enumerate() {
                let (mn, sc) = params[row];
                offset += p[row] * mn;
                *x = p[row] * sc;
                for (k, y) in wk.iter_mut().enumerate() {
                    *y += p[row] * a[row * r + k];
                }
            }
            axpy_rows(Format::Bits(self.bits), &m.codes, 0, dim, &w, o);
            for (k, &y) in wk.iter().enumerate() {
                crate::attention::axpy_f32(o, y, &b[k * dim..(k + 1) * dim]);
            }
            for x in o.iter_mut() {
                *x += offset;
            }
            for (&(at, _), delta) in m.sparse.iter().zip(&deltas) {
                let (row, d) = (at as usize / dim, at as usize % dim);
                o[d] += p[row] * delta;
            }
        }
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
        let want = 2 * (n * dim * 2 / 8 + 4 * n + 2 * (n * 4 + 4 * dim) + 4 * outl);
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
