//! Per-token asymmetric integer quantization (`int8`, `int4`): every row of keys and of
//! values gets its own minimum and scale (f16), codes of `bits` packed.

use super::{dequant_run, pack, quantize_code, Chunk, Codec};
use half::f16;

pub struct PerToken {
    pub bits: u32,
}

struct Packed {
    rows: usize,
    dim: usize,
    bits: u32,
    /// Keys then values: codes per row.
    codes: Vec<u8>,
    /// (min, scale) per row, keys then values.
    params: Vec<(f16, f16)>,
}

/// Quantizes one row; returns its codes, min and scale as stored.
pub fn quantize_row(x: &[f32], bits: u32) -> (Vec<u8>, f16, f16) {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let levels = ((1u32 << bits) - 1) as f32;
    let min16 = f16::from_f32(min);
    let scale16 = f16::from_f32((max - min) / levels);
    let (m, s) = (min16.to_f32(), scale16.to_f32());
    let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
    (
        x.iter().map(|&v| quantize_code(v, m, inv, bits)).collect(),
        min16,
        scale16,
    )
}

impl Codec for PerToken {
    fn encode(&self, keys: &[f32], values: &[f32], rows: usize, dim: usize) -> Box<dyn Chunk> {
        let mut codes = Vec::with_capacity(2 * rows * dim);
        let mut params = Vec::with_capacity(2 * rows);
        for x in keys.chunks_exact(dim).chain(values.chunks_exact(dim)) {
            let (c, m, s) = quantize_row(x, self.bits);
            codes.extend(c);
            params.push((m, s));
        }
        Box::new(Packed {
            rows,
            dim,
            bits: self.bits,
            codes: pack(&codes, self.bits),
            params,
        })
    }
}

impl Chunk for Packed {
    fn rows(&self) -> usize {
        self.rows
    }

    fn bytes(&self) -> usize {
        self.codes.len() + self.params.len() * 4
    }

    fn decode(&self, keys: &mut [f32], values: &mut [f32]) {
        // Rows in the order they were encoded: keys, then values.
        let out = keys
            .chunks_exact_mut(self.dim)
            .chain(values.chunks_exact_mut(self.dim));
        for (r, ((m, s), row)) in self.params.iter().zip(out).enumerate() {
            dequant_run(
                &self.codes,
                self.bits,
                r * self.dim,
                m.to_f32(),
                s.to_f32(),
                row,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testutil::rows;

    #[test]
    fn round_trip_error_is_within_half_a_step_and_sizes_are_exact() {
        for bits in [4u32, 8] {
            let (n, dim) = (5, 64);
            let k = rows(n * dim, 1, 3.0);
            let v = rows(n * dim, 2, 0.5);
            let c = PerToken { bits }.encode(&k, &v, n, dim);
            assert_eq!(c.bytes(), 2 * n * dim * bits as usize / 8 + 2 * n * 4);
            let (mut dk, mut dv) = (vec![0f32; n * dim], vec![0f32; n * dim]);
            c.decode(&mut dk, &mut dv);
            for (x, y, range) in k
                .iter()
                .zip(&dk)
                .map(|(a, b)| (a, b, 6.0))
                .chain(v.iter().zip(&dv).map(|(a, b)| (a, b, 1.0)))
            {
                let step = range / ((1u32 << bits) - 1) as f32;
                assert!(
                    (x - y).abs() <= step * 0.5 + 2e-3 * range,
                    "{bits} bits: {x} vs {y}"
                );
            }
        }
    }
}
