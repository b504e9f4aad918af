//! KIVI: keys quantized per channel over groups of `group` tokens, values per token (in
//! groups of `group` channels), the newest `residual` tokens in full precision.
//!
//! Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache", ICML 2024
//! (arXiv:2402.02750). Keys have outlier channels, so each channel gets its own range over
//! a group of tokens; values are quantized per token. Scales and zero points are f16.

use super::kernels::{axpy_rows, dot_rows, Format, Run};
use super::{dequant_run, pack, quantize_code, unpack, Chunk, Codec};
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::ops::Range;

pub struct Kivi {
    pub bits: u32,
    /// Channels per value group.
    pub group: usize,
}

struct Packed {
    rows: usize,
    dim: usize,
    bits: u32,
    vgroup: usize,
    /// Rows sharing one set of per-channel key ranges (the chunk's rows when it was made;
    /// later chunks of the same size are appended group after group).
    kgroup: usize,
    key_codes: Vec<u8>,
    /// (min, scale) per channel, per key group.
    key_params: Vec<f16>,
    value_codes: Vec<u8>,
    /// (min, scale) per token and channel group.
    value_params: Vec<f16>,
}

fn range(xs: impl Iterator<Item = f32>, bits: u32) -> (f16, f16, f32, f32) {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for x in xs {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    let m = f16::from_f32(lo);
    let s = f16::from_f32((hi - lo) / ((1u32 << bits) - 1) as f32);
    let inv = if s.to_f32() > 0.0 {
        1.0 / s.to_f32()
    } else {
        0.0
    };
    (m, s, m.to_f32(), inv)
}

impl Codec for Kivi {
    fn encode(&self, keys: &[f32], values: &[f32], rows: usize, dim: usize) -> Box<dyn Chunk> {
        let bits = self.bits;
        let mut kc = vec![0u8; rows * dim];
        let mut key_params = Vec::with_capacity(dim);
        for d in 0..dim {
            let (m16, s16, m, inv) = range((0..rows).map(|r| keys[r * dim + d]), bits);
            for r in 0..rows {
                kc[r * dim + d] = quantize_code(keys[r * dim + d], m, inv, bits);
            }
            key_params.extend([m16, s16]);
        }
        let vgroup = self.group.min(dim).max(1);
        let mut vc = Vec::with_capacity(rows * dim);
        let mut value_params = Vec::new();
        for row in values.chunks_exact(dim) {
            for g in row.chunks(vgroup) {
                let (m16, s16, m, inv) = range(g.iter().copied(), bits);
                vc.extend(g.iter().map(|&x| quantize_code(x, m, inv, bits)));
                value_params.extend([m16, s16]);
            }
        }
        Box::new(Packed {
            rows,
            dim,
            bits,
            vgroup,
            kgroup: rows,
            key_codes: pack(&kc, bits),
            key_params,
            value_codes: pack(&vc, bits),
            value_params,
        })
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
        self.key_codes.len()
            + self.value_codes.len()
            + 2 * (self.key_params.len() + self.value_params.len())
    }

    // Groups of whole key groups append: the values are per token, the keys keep each
    // group's own channel ranges.
    fn absorb(&mut self, next: &dyn Chunk) -> bool {
        let Some(n) = next.as_any().downcast_ref::<Packed>() else {
            return false;
        };
        if n.bits != self.bits
            || n.dim != self.dim
            || n.vgroup != self.vgroup
            || n.kgroup != self.kgroup
            || n.rows != n.kgroup
            || !(self.dim * self.bits as usize).is_multiple_of(8)
        {
            return false;
        }
        self.key_codes.extend_from_slice(&n.key_codes);
        self.key_params.extend_from_slice(&n.key_params);
        self.value_codes.extend_from_slice(&n.value_codes);
        self.value_params.extend_from_slice(&n.value_params);
        self.rows += n.rows;
        true
    }

    fn align(&self) -> usize {
        self.kgroup
    }

    fn key_dots(&self, qs: &[f32], nq: usize, rows: Range<usize>, out: &mut [f32]) {
        // k[r][d] = m_d + s_d·c[r][d], so q·k_r = Σ_d q_d·m_d + Σ_d (q_d·s_d)·c[r][d], with
        // the ranges of r's key group.
        let (dim, kg, n) = (self.dim, self.kgroup, rows.len());
        let mut scaled = vec![0f32; nq * dim];
        let mut base = vec![0f32; nq];
        let mut part = vec![0f32; nq * kg];
        let mut pf = vec![0f32; 2 * dim];
        let mut r0 = rows.start;
        while r0 < rows.end {
            let gi = r0 / kg;
            let r1 = ((gi + 1) * kg).min(rows.end);
            self.key_params[gi * 2 * dim..(gi + 1) * 2 * dim].convert_to_f32_slice(&mut pf);
            for ((w, b), q) in scaled
                .chunks_exact_mut(dim)
                .zip(&mut base)
                .zip(qs.chunks_exact(dim))
            {
                *b = 0.0;
                for ((w, &x), ms) in w.iter_mut().zip(q).zip(pf.chunks_exact(2)) {
                    *w = x * ms[1];
                    *b += x * ms[0];
                }
            }
            let m = r1 - r0;
            let run = Run::rows(r0, m, dim);
            dot_rows(
                Format::Bits(self.bits),
                &self.key_codes,
                run,
                &scaled,
                &mut part,
            );
            for i in 0..nq {
                let o = &mut out[i * n + (r0 - rows.start)..i * n + (r1 - rows.start)];
                for (x, &y) in o.iter_mut().zip(&part[i * m..(i + 1) * m]) {
                    *x = y + base[i];
                }
            }
            r0 = r1;
        }
    }

    fn add_values(&self, ps: &[f32], nq: usize, rows: Range<usize>, outs: &mut [f32]) {
        let (dim, n) = (self.dim, rows.len());
        let groups = dim.div_ceil(self.vgroup);
        let mut a = vec![0f32; nq * n];
        let mut offsets = vec![0f32; nq];
        let mut pf = vec![0f32; 2 * groups * n];
        self.value_params[2 * groups * rows.start..2 * groups * rows.end]
            .convert_to_f32_slice(&mut pf);
        // Per channel group, the rows' minimums and scales side by side.
        let mut mins = vec![0f32; groups * n];
        let mut scales = vec![0f32; groups * n];
        for (j, ms) in pf.chunks_exact(2).enumerate() {
            let (row, g) = (j / groups, j % groups);
            mins[g * n + row] = ms[0];
            scales[g * n + row] = ms[1];
        }
        for g in 0..groups {
            let d0 = g * self.vgroup;
            let d1 = (d0 + self.vgroup).min(dim);
            let (gm, gs) = (&mins[g * n..(g + 1) * n], &scales[g * n..(g + 1) * n]);
            for ((x, p), off) in a
                .chunks_exact_mut(n)
                .zip(ps.chunks_exact(n))
                .zip(&mut offsets)
            {
                *off = crate::attention::dot_f32(p, gm);
                for ((x, &p), &sc) in x.iter_mut().zip(p).zip(gs) {
                    *x = p * sc;
                }
            }
            let run = Run {
                start: rows.start * dim + d0,
                stride: dim,
                rows: n,
                width: d1 - d0,
            };
            axpy_rows(
                Format::Bits(self.bits),
                &self.value_codes,
                run,
                &a,
                &mut outs[d0..],
                dim,
            );
            for (o, off) in outs.chunks_exact_mut(dim).zip(&offsets) {
                for x in o[d0..d1].iter_mut() {
                    *x += off;
                }
            }
        }
    }

    fn decode(&self, keys: &mut [f32], values: &mut [f32]) {
        let dim = self.dim;
        let params: Vec<(f32, f32)> = self
            .key_params
            .chunks_exact(2)
            .map(|ms| (ms[0].to_f32(), ms[1].to_f32()))
            .collect();
        for r in 0..self.rows {
            let row = &mut keys[r * dim..(r + 1) * dim];
            dequant_run(&self.key_codes, self.bits, r * dim, 0.0, 1.0, row);
            let group = &params[r / self.kgroup * dim..(r / self.kgroup + 1) * dim];
            for (x, (m, s)) in row.iter_mut().zip(group) {
                *x = m + s * *x;
            }
        }
        let groups = dim.div_ceil(self.vgroup);
        for r in 0..self.rows {
            for g in 0..groups {
                let (m, s) = (
                    self.value_params[2 * (r * groups + g)],
                    self.value_params[2 * (r * groups + g) + 1],
                );
                let d0 = g * self.vgroup;
                let d1 = (d0 + self.vgroup).min(dim);
                let start = r * dim + d0;
                let out = &mut values[start..r * dim + d1];
                if (start * self.bits as usize).is_multiple_of(8) {
                    dequant_run(
                        &self.value_codes,
                        self.bits,
                        start,
                        m.to_f32(),
                        s.to_f32(),
                        out,
                    );
                } else {
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = m.to_f32()
                            + s.to_f32() * unpack(&self.value_codes, self.bits, start + i) as f32;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testutil::rows;

    #[test]
    fn fused_dots_equal_dots_with_the_decoded_rows() {
        let (n, dim) = (64, 64);
        let (k, v) = (rows(n * dim, 5, 1.0), rows(n * dim, 6, 1.0));
        let qs = rows(3 * dim, 7, 1.0);
        let ps: Vec<f32> = rows(3 * n, 8, 1.0).iter().map(|x| x.abs()).collect();
        let codecs: Vec<Box<dyn Codec>> = vec![
            Box::new(Kivi { bits: 2, group: 32 }),
            Box::new(Kivi { bits: 4, group: 32 }),
            Box::new(crate::quant::uniform::PerToken { bits: 8 }),
            Box::new(crate::quant::uniform::PerToken { bits: 4 }),
            Box::new(crate::quant::fp8::Fp8),
            Box::new(crate::quant::gear::Gear {
                bits: 4,
                rank: 2,
                outliers: 0.02,
            }),
        ];
        for (ci, codec) in codecs.iter().enumerate() {
            // Two chunks of 32 rows, the second absorbed where the codec can (KIVI: a
            // second key group); one chunk of 64 otherwise.
            let half = 32 * dim;
            let mut c = codec.encode(&k[..half], &v[..half], 32, dim);
            let next = codec.encode(&k[half..], &v[half..], 32, dim);
            if !c.absorb(next.as_ref()) {
                c = codec.encode(&k, &v, n, dim);
            }
            assert_eq!(c.rows(), n);
            let (mut dk, mut dv) = (vec![0f32; n * dim], vec![0f32; n * dim]);
            c.decode(&mut dk, &mut dv);
            let mut dots = vec![0f32; 3 * n];
            c.key_dots(&qs, 3, 0..n, &mut dots);
            let mut outs = vec![0.5f32; 3 * dim];
            c.add_values(&ps, 3, 0..n, &mut outs);
            // A piece from the second key group on gives the same numbers for its rows.
            let (lo, m) = (32, n - 32);
            let mut part = vec![0f32; 3 * m];
            c.key_dots(&qs, 3, lo..n, &mut part);
            let ps_part: Vec<f32> = (0..3)
                .flat_map(|i| ps[i * n + lo..(i + 1) * n].to_vec())
                .collect();
            let mut outs_part = vec![0f32; 3 * dim];
            c.add_values(&ps_part, 3, lo..n, &mut outs_part);
            for i in 0..3 {
                for r in lo..n {
                    let (a, b) = (dots[i * n + r], part[i * m + r - lo]);
                    assert!((a - b).abs() < 1e-4, "codec {ci} piece key {i},{r}");
                }
                for d in 0..dim {
                    let want: f32 = (lo..n).map(|r| ps[i * n + r] * dv[r * dim + d]).sum();
                    let got = outs_part[i * dim + d];
                    assert!((want - got).abs() < 1e-3, "codec {ci} piece value {i},{d}");
                }
            }
            for i in 0..3 {
                let q = &qs[i * dim..(i + 1) * dim];
                for r in 0..n {
                    let want: f32 = q.iter().zip(&dk[r * dim..]).map(|(a, b)| a * b).sum();
                    let got = dots[i * n + r];
                    assert!(
                        (want - got).abs() < 1e-3,
                        "codec {ci} key {i},{r}: {want} vs {got}"
                    );
                }
                for d in 0..dim {
                    let want: f32 =
                        0.5 + (0..n).map(|r| ps[i * n + r] * dv[r * dim + d]).sum::<f32>();
                    let got = outs[i * dim + d];
                    assert!(
                        (want - got).abs() < 1e-3,
                        "codec {ci} value {i},{d}: {want} vs {got}"
                    );
                }
            }
        }
    }

    #[test]
    fn keys_are_ranged_per_channel_values_per_token() {
        let (n, dim) = (32, 64);
        let mut k = rows(n * dim, 3, 1.0);
        // An outlier channel: per-channel ranges keep the other channels precise.
        for r in 0..n {
            k[r * dim + 5] *= 100.0;
        }
        let v = rows(n * dim, 4, 1.0);
        for bits in [2u32, 4] {
            let c = Kivi { bits, group: 32 }.encode(&k, &v, n, dim);
            let codes = 2 * n * dim * bits as usize / 8;
            assert_eq!(c.bytes(), codes + 4 * dim + 4 * n * 2);
            let (mut dk, mut dv) = (vec![0f32; n * dim], vec![0f32; n * dim]);
            c.decode(&mut dk, &mut dv);
            let step = 2.0 / ((1u32 << bits) - 1) as f32;
            for r in 0..n {
                for d in 0..dim {
                    let i = r * dim + d;
                    let tol = if d == 5 {
                        100.0 * step
                    } else {
                        step * 0.5 + 2e-3
                    };
                    assert!(
                        (k[i] - dk[i]).abs() <= tol,
                        "{bits} bits key {r},{d}: {} vs {}",
                        k[i],
                        dk[i]
                    );
                    assert!(
                        (v[i] - dv[i]).abs() <= step * 0.5 + 2e-3,
                        "{bits} bits value {r},{d}"
                    );
                }
            }
        }
    }
}
