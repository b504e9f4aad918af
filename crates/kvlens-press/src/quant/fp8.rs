//! FP8 E4M3 per token: each row scaled so its largest magnitude maps to 448 (the largest
//! finite E4M3 value), stored as one byte per value plus an f16 scale per row.
//! E4M3 as in Micikevicius et al., "FP8 Formats for Deep Learning" (arXiv:2209.05433).

use super::{Chunk, Codec};
use half::f16;
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
    codes: Vec<u8>,
    scales: Vec<f16>,
}

impl Codec for Fp8 {
    fn encode(&self, keys: &[f32], values: &[f32], rows: usize, dim: usize) -> Box<dyn Chunk> {
        let mut codes = Vec::with_capacity(2 * rows * dim);
        let mut scales = Vec::with_capacity(2 * rows);
        for x in keys.chunks_exact(dim).chain(values.chunks_exact(dim)) {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = f16::from_f32(if amax > 0.0 { amax / E4M3_MAX } else { 1.0 });
            let inv = 1.0 / s.to_f32();
            codes.extend(x.iter().map(|&v| f32_to_e4m3(v * inv)));
            scales.push(s);
        }
        Box::new(Packed {
            rows,
            dim,
            codes,
            scales,
        })
    }
}

impl Chunk for Packed {
    fn rows(&self) -> usize {
        self.rows
    }

    fn bytes(&self) -> usize {
        self.codes.len() + self.scales.len() * 2
    }

    fn decode(&self, keys: &mut [f32], values: &mut [f32]) {
        // Rows in the order they were encoded: keys, then values.
        let lut = decode_table();
        let out = keys
            .chunks_exact_mut(self.dim)
            .chain(values.chunks_exact_mut(self.dim));
        for ((s, row), codes) in self
            .scales
            .iter()
            .zip(out)
            .zip(self.codes.chunks_exact(self.dim))
        {
            let s = s.to_f32();
            for (o, &c) in row.iter_mut().zip(codes) {
                *o = lut[c as usize] * s;
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
