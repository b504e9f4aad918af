//! Quantized KV storage: rows packed in chunks, dequantized only to attend.
//!
//! A [`Codec`] turns a chunk of rows (keys and values of one key/value head) into a
//! [`Chunk`] that holds nothing but its packed codes, scales, zero points, low-rank factors
//! and outliers; [`Chunk::bytes`] counts exactly those. The [`Quantize`] method moves rows
//! from the head's dense (f16/f32) tail into chunks as its schedule says.

pub mod fp8;
pub mod gear;
pub mod kernels;
pub mod kivi;
pub mod uniform;

use crate::cache::CacheShape;
use crate::method::{HeadStats, Method, Step};
use crate::store::HeadStore;
use std::ops::Range;

/// A packed chunk of rows.
pub trait Chunk: Send + Sync {
    fn rows(&self) -> usize;
    /// Bytes held: codes, scales, zero points, factors, outliers.
    fn bytes(&self) -> usize;
    /// Writes the dequantized keys and values, (rows, dim) each.
    fn decode(&self, keys: &mut [f32], values: &mut [f32]);

    /// This chunk as `Any`, for [`Chunk::absorb`].
    fn as_any(&self) -> &dyn std::any::Any;

    /// Appends the rows of `next` (packed later) when both are of a codec whose rows are
    /// independent; `false` when it cannot.
    fn absorb(&mut self, _next: &dyn Chunk) -> bool {
        false
    }

    /// Piece boundaries inside this chunk fall on multiples of this many rows (KIVI's key
    /// groups); 1 when rows are independent.
    fn align(&self) -> usize {
        1
    }

    /// `out[i·n + j] = q_i · k_{rows.start + j}` (unscaled; `n = rows.len()`) for the `nq`
    /// queries in `qs` ((nq, dim)), read from the codes in place. `rows` starts and ends on
    /// multiples of [`Chunk::align`] or at the chunk's end.
    fn key_dots(&self, qs: &[f32], nq: usize, rows: Range<usize>, out: &mut [f32]);

    /// `outs[i·dim + d] += Σ_j ps[i·n + j] · v_{rows.start + j}[d]` for the `nq` queries,
    /// with `ps` as (nq, n).
    fn add_values(&self, ps: &[f32], nq: usize, rows: Range<usize>, outs: &mut [f32]);
}

/// Packs `rows` rows of keys and values, (rows, dim) each.
pub trait Codec: Send + Sync {
    fn encode(&self, keys: &[f32], values: &[f32], rows: usize, dim: usize) -> Box<dyn Chunk>;

    /// Every row is quantized on its own (per-token codecs): packing n rows as one chunk
    /// stores exactly what n one-row chunks would, in one pass.
    fn rows_independent(&self) -> bool {
        false
    }

    /// Rows per chunk when the whole prompt is packed at once (a multiple of `group`; at
    /// least `group`): `group` unless the method compresses the prompt as one matrix.
    fn prompt_rows(&self, group: usize, _dim: usize) -> usize {
        group
    }
}

/// Asymmetric uniform quantization of `x` to `bits` with the given min and scale; codes
/// clamp to `0..2^bits`.
#[inline]
pub fn quantize_code(x: f32, min: f32, inv_scale: f32, bits: u32) -> u8 {
    let q = ((x - min) * inv_scale).round();
    q.clamp(0.0, ((1u32 << bits) - 1) as f32) as u8
}

/// Packs codes of `bits` (1, 2, 4 or 8) little-end first into bytes.
pub fn pack(codes: &[u8], bits: u32) -> Vec<u8> {
    let per = (8 / bits) as usize;
    let mut out = vec![0u8; codes.len().div_ceil(per)];
    for (i, &c) in codes.iter().enumerate() {
        out[i / per] |= c << ((i % per) as u32 * bits);
    }
    out
}

/// Writes `m + s·code` for `out.len()` codes starting at code `start` (`start·bits` a
/// multiple of 8).
pub fn dequant_run(packed: &[u8], bits: u32, start: usize, m: f32, s: f32, out: &mut [f32]) {
    let at = start * bits as usize / 8;
    match bits {
        8 => {
            for (o, &b) in out.iter_mut().zip(&packed[at..]) {
                *o = m + s * b as f32;
            }
        }
        4 => {
            for (pair, &b) in out.chunks_mut(2).zip(&packed[at..]) {
                pair[0] = m + s * (b & 0xF) as f32;
                if let Some(o) = pair.get_mut(1) {
                    *o = m + s * (b >> 4) as f32;
                }
            }
        }
        2 => {
            for (quad, &b) in out.chunks_mut(4).zip(&packed[at..]) {
                for (k, o) in quad.iter_mut().enumerate() {
                    *o = m + s * ((b >> (2 * k)) & 3) as f32;
                }
            }
        }
        _ => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = m + s * unpack(packed, bits, start + i) as f32;
            }
        }
    }
}

pub fn unpack(packed: &[u8], bits: u32, i: usize) -> u8 {
    let per = (8 / bits) as usize;
    (packed[i / per] >> ((i % per) as u32 * bits)) & ((1u16 << bits) - 1) as u8
}

/// When rows move from the dense tail into packed chunks.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Rows per chunk.
    pub group: usize,
    /// Newest rows always kept in full precision.
    pub residual: usize,
}

/// A quantizing method: packs the oldest dense rows in chunks of `group`, keeping the newest
/// `residual` rows in full precision. The prompt is attended in full precision and packed once
/// it is all in (after its last chunk), as the KIVI and GEAR reference implementations and
/// serving engines with an unchunked prefill do; from then on rows are packed as they age.
pub struct Quantize {
    pub codec: Box<dyn Codec>,
    pub schedule: Schedule,
}

impl Method for Quantize {
    fn compress(
        &mut self,
        _layer: usize,
        _: &CacheShape,
        heads: &mut [HeadStore],
        _: &mut [HeadStats],
        step: Step,
    ) {
        if step == (Step::Prefill { last: false }) {
            return;
        }
        let Schedule { group, residual } = self.schedule;
        for store in heads {
            if self.codec.rows_independent() {
                let ready = store.dense_rows().saturating_sub(residual) / group * group;
                if ready > 0 {
                    store.pack_oldest(ready, self.codec.as_ref());
                }
                continue;
            }
            let cap = if step == (Step::Prefill { last: true }) {
                self.codec.prompt_rows(group, store.dim) / group * group
            } else {
                group
            };
            loop {
                let ready = store.dense_rows().saturating_sub(residual) / group * group;
                if ready == 0 {
                    break;
                }
                store.pack_oldest(ready.min(cap.max(group)), self.codec.as_ref());
            }
        }
    }

    fn acts_after_prefill_only(&self) -> bool {
        true
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    /// Deterministic pseudo-random rows in [-scale, scale).
    pub fn rows(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequant_runs_match_single_unpacks() {
        for bits in [2u32, 4, 8] {
            let codes: Vec<u8> = (0..128).map(|i| (i * 5 % (1 << bits)) as u8).collect();
            let p = pack(&codes, bits);
            let mut out = vec![0f32; 64];
            dequant_run(&p, bits, 64, 1.0, 0.5, &mut out);
            for (i, o) in out.iter().enumerate() {
                assert_eq!(*o, 1.0 + 0.5 * codes[64 + i] as f32);
            }
        }
    }

    #[test]
    fn packing_round_trips_every_width() {
        for bits in [1u32, 2, 4, 8] {
            let codes: Vec<u8> = (0..37).map(|i| (i * 7 % (1 << bits)) as u8).collect();
            let p = pack(&codes, bits);
            assert_eq!(p.len(), (37 * bits as usize).div_ceil(8));
            for (i, &c) in codes.iter().enumerate() {
                assert_eq!(unpack(&p, bits, i), c);
            }
        }
    }
}
