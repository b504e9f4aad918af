//! FP8 E4M3 per token: each row scaled so its largest magnitude maps to 448 (the largest
//! finite E4M3 value), stored as one byte per value plus an f16 scale per row.
//! E4M3 as in Micikevicius et al., "FP8 Formats for Deep Learning" (arXiv:2209.05433).

use super::kernels::{axpy_rows, dot_rows, Format, Run};
use super::{Chunk, Codec};
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::ops::Range;
use std::sync::OnceLock;

const E4M3_MAX: f32 = 448.0;

/// The value of an E4M3 byte (sign, 4 exponent bits with bias 7, 3 mantissa bits; 0x7F and
/// 0xFF are NaN, there are no infinities).
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((b >> 3) & 0xF) as i32;
    let m = (b & 0x7) as f32;
    if e == 0xF && b & 0x7 == 0x7 {
        return f32::NAN;
    }
    let mag = if e == 0 {
        m / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + m / 8.0) * 2f32.powi(e - 7)
    };
    sign * mag
}

fn decode_table() -> &'static [f32; 256] {
    static LUT: OnceLock<[f32; 256]> = OnceLock::new();
    LUT.get_or_init(|| std::array::from_fn(|b| e4m3_to_f32(b as u8)))
}

/// The nearest E4M3 byte to `x` (ties to the even code), saturating at ±448.
pub fn f32_to_e4m3(x: f32) -> u8 {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    // Non-negative finite values by code 0..=0x7E, increasing.
    let t = TABLE.get_or_init(|| (0u8..=0x7E).map(e4m3_to_f32).collect());
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = x.abs().min(E4M3_MAX);
    let i = t.partition_point(|&v| v < a);
    let code = if i == 0 {
        0
    } else if i >= t.len() {
        t.len() - 1
    } else {
        let (lo, hi) = (t[i - 1], t[i]);
        if a - lo < hi - a || (a - lo == hi - a && (i - 1) % 2 == 0) {
            i - 1
        } else {
            i
        }
    };
    sign | code as u8
}

pub struct Fp8;

struct Packed {
    rows: usize,
    dim: usize,
    /// One byte per value, keys and values apart (so that rows can be appended).
    key_codes: Vec<u8>,
    value_codes: Vec<u8>,
    /// One scale per row.
    key_scales: Vec<f16>,
    value_scales: Vec<f16>,
}

impl Codec for Fp8 {
    fn rows_independent(&self) -> bool {
        true
    }

    fn encode(&self, keys: &[f32], values: &[f32], rows: usize, dim: usize) -> Box<dyn Chunk> {
        let side = |x: &[f32]| {
            let mut codes = Vec::with_capacity(rows * dim);
            let mut scales = Vec::with_capacity(rows);
            for row in x.chunks_exact(dim) {
                let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                let s = f16::from_f32(if amax > 0.0 { amax / E4M3_MAX } else { 1.0 });
                let inv = 1.0 / s.to_f32();
                codes.extend(row.iter().map(|&v| f32_to_e4m3(v * inv)));
                scales.push(s);
            }
            (codes, scales)
        };
        let (key_codes, key_scales) = side(keys);
        let (value_codes, value_scales) = side(values);
        Box::new(Packed {
            rows,
            dim,
            key_codes,
            value_codes,
            key_scales,
            value_scales,
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
            + 2 * (self.key_scales.len() + self.value_scales.len())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn absorb(&mut self, next: &dyn Chunk) -> bool {
        let Some(n) = next.as_any().downcast_ref::<Packed>() else {
            return false;
        };
        if n.dim != self.dim {
            return false;
        }
        self.key_codes.extend_from_slice(&n.key_codes);
        self.value_codes.extend_from_slice(&n.value_codes);
        self.key_scales.extend_from_slice(&n.key_scales);
        self.value_scales.extend_from_slice(&n.value_scales);
        self.rows += n.rows;
        true
    }

    fn key_dots(&self, qs: &[f32], nq: usize, rows: Range<usize>, out: &mut [f32]) {
        let (dim, n) = (self.dim, rows.len());
        let mut sf = vec![0f32; n];
        self.key_scales[rows.clone()].convert_to_f32_slice(&mut sf);
        let run = Run::rows(rows.start, n, dim);
        dot_rows(Format::E4m3, &self.key_codes, run, &qs[..nq * dim], out);
        for o in out.chunks_exact_mut(n).take(nq) {
            for (x, s) in o.iter_mut().zip(&sf) {
                *x *= s;
            }
        }
    }

    fn add_values(&self, ps: &[f32], nq: usize, rows: Range<usize>, outs: &mut [f32]) {
        let (dim, n) = (self.dim, rows.len());
        let mut sf = vec![0f32; n];
        self.value_scales[rows.clone()].convert_to_f32_slice(&mut sf);
        let mut a = vec![0f32; nq * n];
        for (x, p) in a.chunks_exact_mut(n).zip(ps.chunks_exact(n)) {
            for ((x, &p), s) in x.iter_mut().zip(p).zip(&sf) {
                *x = p * s;
            }
        }
        let run = Run::rows(rows.start, n, dim);
        axpy_rows(Format::E4m3, &self.value_codes, run, &a, outs, dim);
    }

    fn decode(&self, keys: &mut [f32], values: &mut [f32]) {
        let lut = decode_table();
        for (codes, scales, out) in [
            (&self.key_codes, &self.key_scales, keys),
            (&self.value_codes, &self.value_scales, values),
        ] {
            for ((s, row), c) in scales
                .iter()
                .zip(out.chunks_exact_mut(self.dim))
                .zip(codes.chunks_exact(self.dim))
            {
                let s = s.to_f32();
                for (o, &b) in row.iter_mut().zip(c) {
                    *o = lut[b as usize] * s;
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
    fn e4m3_codes_round_trip_and_round_to_nearest() {
        for b in 0u8..=0xFE {
            if b & 0x7F == 0x7F {
                continue;
            }
            let v = e4m3_to_f32(b);
            let back = f32_to_e4m3(v);
            assert!(
                back == b || (v == 0.0 && back & 0x7F == 0),
                "{b:#x} -> {v} -> {back:#x}"
            );
        }
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(f32_to_e4m3(1000.0), 0x7E);
        assert_eq!(e4m3_to_f32(f32_to_e4m3(1.06)), 1.0); // 1.0 and 1.125 straddle it
        assert_eq!(e4m3_to_f32(f32_to_e4m3(-0.3)), -0.3125);
    }

    #[test]
    fn relative_error_is_within_e4m3_precision() {
        let (n, dim) = (3, 64);
        let k = rows(n * dim, 5, 10.0);
        let v = rows(n * dim, 6, 1.0);
        let c = Fp8.encode(&k, &v, n, dim);
        assert_eq!(c.bytes(), 2 * n * dim + 2 * n * 2);
        let (mut dk, mut dv) = (vec![0f32; n * dim], vec![0f32; n * dim]);
        c.decode(&mut dk, &mut dv);
        for (x, y) in k.iter().zip(&dk).chain(v.iter().zip(&dv)) {
            // 3 mantissa bits: relative error ≤ 1/16, plus the subnormal step near zero.
            assert!(
                (x - y).abs() <= x.abs() / 16.0 + 0.02 * 10.0 / 448.0 * 64.0,
                "{x} vs {y}"
            );
        }
    }
}
