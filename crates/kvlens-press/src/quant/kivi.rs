//! KIVI: keys quantized per channel over groups of `group` tokens, values per token (in
//! groups of `group` channels), the newest `residual` tokens in full precision.
//!
//! Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache", ICML 2024
//! (arXiv:2402.02750). Keys have outlier channels, so each channel gets its own range over
//! a group of tokens; values are quantized per token. Scales and zero points are f16.

use super::{dequant_run, pack, quantize_code, unpack, Chunk, Codec};
use half::f16;

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
    key_codes: Vec<u8>,
    /// (min, scale) per channel.
    key_params: Vec<(f16, f16)>,
    value_codes: Vec<u8>,
    /// (min, scale) per token and channel group.
    value_params: Vec<(f16, f16)>,
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
            key_params.push((m16, s16));
        }
        let vgroup = self.group.min(dim).max(1);
        let mut vc = Vec::with_capacity(rows * dim);
        let mut value_params = Vec::new();
        for row in values.chunks_exact(dim) {
            for g in row.chunks(vgroup) {
                let (m16, s16, m, inv) = range(g.iter().copied(), bits);
                vc.extend(g.iter().map(|&x| quantize_code(x, m, inv, bits)));
                value_params.push((m16, s16));
            }
        }
        Box::new(Packed {
            rows,
            dim,
            bits,
            vgroup,
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

    fn bytes(&self) -> usize {
        self.key_codes.len()
            + self.value_codes.len()
            + 4 * (self.key_params.len() + self.value_params.len())
    }

    fn decode(&self, keys: &mut [f32], values: &mut [f32]) {
        let dim = self.dim;
        let params: Vec<(f32, f32)> = self
            .key_params
            .iter()
            .map(|(m, s)| (m.to_f32(), s.to_f32()))
            .collect();
        for r in 0..self.rows {
            let row = &mut keys[r * dim..(r + 1) * dim];
            dequant_run(&self.key_codes, self.bits, r * dim, 0.0, 1.0, row);
            for (x, (m, s)) in row.iter_mut().zip(&params) {
                *x = m + s * *x;
            }
        }
        let groups = dim.div_ceil(self.vgroup);
        for r in 0..self.rows {
            for g in 0..groups {
                let (m, s) = self.value_params[r * groups + g];
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
