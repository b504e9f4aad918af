//! Per-token asymmetric integer quantization (`int8`, `int4`): every row of keys and of
//! values gets its own minimum and scale (f16), codes of `bits` packed.

use super::kernels::{axpy_rows, dot_rows, Format, Run};
use super::{dequant_run, pack, quantize_code, Chunk, Codec};
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::ops::Range;

pub struct PerToken {
    pub bits: u32,
}

struct Packed {
    rows: usize,
    dim: usize,
    bits: u32,
    /// Codes of the key rows, then (separately, so that rows can be appended) of the values.
    key_codes: Vec<u8>,
    value_codes: Vec<u8>,
    /// min, scale, min, scale, ... per row.
    key_params: Vec<f16>,
    value_params: Vec<f16>,
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
    fn rows_independent(&self) -> bool {
        true
    }

    fn encode(&self, keys: &[f32], values: &[f32], rows: usize, dim: usize) -> Box<dyn Chunk> {
        let side = |x: &[f32]| {
            let mut codes = Vec::with_capacity(rows * dim);
            let mut params = Vec::with_capacity(2 * rows);
            for row in x.chunks_exact(dim) {
                let (c, m, s) = quantize_row(row, self.bits);
                codes.extend(c);
                params.extend([m, s]);
            }
            (pack(&codes, self.bits), params)
        };
        let (key_codes, key_params) = side(keys);
        let (value_codes, value_params) = side(values);
        Box::new(Packed {
            rows,
            dim,
            bits: self.bits,
            key_codes,
            value_codes,
            key_params,
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
            + 2 * (self.key_params.len() + self.value_params.len())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    // Rows are independent: a newer chunk's rows append (when rows fill whole bytes).
    fn absorb(&mut self, next: &dyn Chunk) -> bool {
        let Some(n) = next.as_any().downcast_ref::<Packed>() else {
            return false;
        };
        if n.bits != self.bits
            || n.dim != self.dim
            || !(self.dim * self.bits as usize).is_multiple_of(8)
        {
            return false;
        }
        self.key_codes.extend_from_slice(&n.key_codes);
        self.value_codes.extend_from_slice(&n.value_codes);
        self.key_params.extend_from_slice(&n.key_params);
        self.value_params.extend_from_slice(&n.value_params);
        self.rows += n.rows;
        true
    }

    // k_r = m_r + s_r·c_r, so q·k_r = m_r·Σq + s_r·(q·c_r).
    fn key_dots(&self, qs: &[f32], nq: usize, rows: Range<usize>, out: &mut [f32]) {
        let (dim, n) = (self.dim, rows.len());
        let mut pf = vec![0f32; 2 * n];
        self.key_params[2 * rows.start..2 * rows.end].convert_to_f32_slice(&mut pf);
        let run = Run::rows(rows.start, n, dim);
        dot_rows(
            Format::Bits(self.bits),
            &self.key_codes,
            run,
            &qs[..nq * dim],
            out,
        );
        for (q, o) in qs.chunks_exact(dim).zip(out.chunks_exact_mut(n)).take(nq) {
            let qsum: f32 = q.iter().sum();
            for (x, ms) in o.iter_mut().zip(pf.chunks_exact(2)) {
                *x = ms[0] * qsum + ms[1] * *x;
            }
        }
    }

    // Σ_r p_r·v_r = Σ_r p_r·m_r + Σ_r (p_r·s_r)·c_r.
    fn add_values(&self, ps: &[f32], nq: usize, rows: Range<usize>, outs: &mut [f32]) {
        let (dim, n) = (self.dim, rows.len());
        let mut pf = vec![0f32; 2 * n];
        self.value_params[2 * rows.start..2 * rows.end].convert_to_f32_slice(&mut pf);
        let mut a = vec![0f32; nq * n];
        let mut offsets = vec![0f32; nq];
        for ((x, p), off) in a
            .chunks_exact_mut(n)
            .zip(ps.chunks_exact(n))
            .zip(&mut offsets)
        {
            for ((x, &p), ms) in x.iter_mut().zip(p).zip(pf.chunks_exact(2)) {
                *off += p * ms[0];
                *x = p * ms[1];
            }
        }
        let run = Run::rows(rows.start, n, dim);
        axpy_rows(
            Format::Bits(self.bits),
            &self.value_codes,
            run,
            &a,
            outs,
            dim,
        );
        for (o, off) in outs.chunks_exact_mut(dim).zip(&offsets) {
            for x in o.iter_mut() {
                *x += off;
            }
        }
    }

    fn decode(&self, keys: &mut [f32], values: &mut [f32]) {
        let dim = self.dim;
        for (codes, params, out) in [
            (&self.key_codes, &self.key_params, keys),
            (&self.value_codes, &self.value_params, values),
        ] {
            for (r, (ms, row)) in params
                .chunks_exact(2)
                .zip(out.chunks_exact_mut(dim))
                .enumerate()
            {
                dequant_run(
                    codes,
                    self.bits,
                    r * dim,
                    ms[0].to_f32(),
                    ms[1].to_f32(),
                    row,
                );
            }
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
