//! Fused dequantize-and-dot kernels: a decode step reads packed codes directly, converting
//! eight at a time in registers, instead of first writing every packed row out as f32.
//!
//! Rows of codes sit `stride` codes apart. Integer codes of 2, 4 or 8 bits are packed
//! little-end first (see [`super::pack`]); E4M3 codes are one byte each. The AVX2 paths need
//! runs whose width is a multiple of 8 starting at code indices that are multiples of 8,
//! which every head width kvlens meets (64, 128); other runs take the scalar path.

use super::unpack;

/// How codes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Unsigned integer codes of this many bits.
    Bits(u32),
    /// FP8 E4M3 bytes.
    E4m3,
}

impl Format {
    /// Code `i` as f32.
    fn get(self, codes: &[u8], i: usize) -> f32 {
        match self {
            Format::Bits(b) => unpack(codes, b, i) as f32,
            Format::E4m3 => super::fp8::e4m3_to_f32(codes[i]),
        }
    }

    /// Bytes holding codes `0..end`.
    fn bytes_for(self, end: usize) -> usize {
        match self {
            Format::Bits(b) => (end * b as usize).div_ceil(8),
            Format::E4m3 => end,
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn simd(self, start: usize, stride: usize, width: usize) -> bool {
        matches!(self, Format::Bits(2 | 4 | 8) | Format::E4m3)
            && start.is_multiple_of(8)
            && stride.is_multiple_of(8)
            && width.is_multiple_of(8)
            && crate::cpu::avx2()
    }
}

/// A run of packed rows: `rows` rows of `width` codes, row `r` starting at code index
/// `start + r·stride`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: usize,
    pub stride: usize,
    pub rows: usize,
    pub width: usize,
}

impl Run {
    /// `rows` whole rows of `dim` codes from row `first` of a chunk stored row by row.
    pub fn rows(first: usize, rows: usize, dim: usize) -> Self {
        Run {
            start: first * dim,
            stride: dim,
            rows,
            width: dim,
        }
    }

    fn check(&self, fmt: Format, codes: &[u8]) {
        if self.rows > 0 {
            assert!(
                fmt.bytes_for(self.start + (self.rows - 1) * self.stride + self.width)
                    <= codes.len(),
                "a packed run past its buffer"
            );
        }
    }
}

/// `out[i·rows + r] = Σ_d w[i·width + d] · code(start + r·stride + d)` for the queries
/// `i < w.len() / width` against every row `r` of `run`: each row's codes are widened once for
/// all the queries (the query heads that share a key/value head).
pub fn dot_rows(fmt: Format, codes: &[u8], run: Run, w: &[f32], out: &mut [f32]) {
    run.check(fmt, codes);
    let nq = w.len() / run.width.max(1);
    assert!(out.len() >= nq * run.rows, "dot_rows: output too short");
    #[cfg(target_arch = "x86_64")]
    {
        if fmt.simd(run.start, run.stride, run.width) {
            // SAFETY: features detected; alignment, widths and bounds checked above.
            unsafe { avx::dot_rows(fmt, codes, run, w, nq, out) };
            return;
        }
    }
    for i in 0..nq {
        let q = &w[i * run.width..(i + 1) * run.width];
        for (r, o) in out[i * run.rows..(i + 1) * run.rows].iter_mut().enumerate() {
            let base = run.start + r * run.stride;
            *o = q
                .iter()
                .enumerate()
                .map(|(d, &x)| x * fmt.get(codes, base + d))
                .sum();
        }
    }
}

/// `out[i·ostride + d] += Σ_r a[i·rows + r] · code(start + r·stride + d)` for the queries
/// `i < a.len() / rows` and `d < width`: many packed rows weighted into one output per query,
/// each row's codes widened once for all of them.
pub fn axpy_rows(fmt: Format, codes: &[u8], run: Run, a: &[f32], out: &mut [f32], ostride: usize) {
    if run.rows == 0 {
        return;
    }
    run.check(fmt, codes);
    let nq = a.len() / run.rows;
    if nq == 0 {
        return;
    }
    assert!(
        out.len() >= (nq - 1) * ostride + run.width,
        "axpy_rows: output too short"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if fmt.simd(run.start, run.stride, run.width) {
            // SAFETY: as in `dot_rows`.
            unsafe { avx::axpy_rows(fmt, codes, run, a, nq, out, ostride) };
            return;
        }
    }
    for i in 0..nq {
        let o = &mut out[i * ostride..i * ostride + run.width];
        for (r, &x) in a[i * run.rows..(i + 1) * run.rows].iter().enumerate() {
            let base = run.start + r * run.stride;
            for (d, o) in o.iter_mut().enumerate() {
                *o += x * fmt.get(codes, base + d);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::{Format, Run};
    use crate::simd::x86::hsum;
    use std::arch::x86_64::*;

    /// Rows weighted per pass over an output block (their codes stay in L1 between blocks).
    const TILE: usize = 32;

    /// The format as a constant, so that each kernel is compiled once per format with the
    /// choice out of its loops: 0 is E4M3, else the bits of integer codes.
    const E4M3: u32 = 0;

    /// Eight codes from code index `i` (a multiple of 8), as f32. The caller checked that
    /// the run lies inside `codes`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load8<const K: u32>(codes: &[u8], i: usize) -> __m256 {
        let p = codes.as_ptr();
        match K {
            E4M3 => {
                // Each byte sign-extended to 32 bits and shifted left by 20 puts its sign at
                // bit 31 and its 7 magnitude bits under the f32 exponent (the mask drops the
                // sign-extension copies between them); scaling by 2^120 rebiases the
                // exponent (E4M3 subnormals land as f32 subnormals and scale the same).
                let b = _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(i) as *const __m128i));
                let bits = _mm256_and_si256(
                    _mm256_slli_epi32(b, 20),
                    _mm256_set1_epi32(0x87F0_0000u32 as i32),
                );
                _mm256_mul_ps(
                    _mm256_castsi256_ps(bits),
                    _mm256_set1_ps(f32::from_bits((127 + 120) << 23)),
                )
            }
            8 => _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                p.add(i) as *const __m128i
            ))),
            4 => {
                let x = u32::from_le((p.add(i / 2) as *const u32).read_unaligned());
                let shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
                _mm256_cvtepi32_ps(_mm256_and_si256(
                    _mm256_srlv_epi32(_mm256_set1_epi32(x as i32), shifts),
                    _mm256_set1_epi32(0xF),
                ))
            }
            _ => {
                let x = u16::from_le((p.add(i / 4) as *const u16).read_unaligned()) as i32;
                let shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
                _mm256_cvtepi32_ps(_mm256_and_si256(
                    _mm256_srlv_epi32(_mm256_set1_epi32(x), shifts),
                    _mm256_set1_epi32(3),
                ))
            }
        }
    }

    /// Calls `$kernel::<K>` with the constant for `$fmt`.
    macro_rules! by_format {
        ($fmt:expr, $kernel:ident($($arg:expr),*)) => {
            match $fmt {
                Format::E4m3 => $kernel::<E4M3>($($arg),*),
                Format::Bits(8) => $kernel::<8>($($arg),*),
                Format::Bits(4) => $kernel::<4>($($arg),*),
                Format::Bits(_) => $kernel::<2>($($arg),*),
            }
        };
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_rows(
        fmt: Format,
        codes: &[u8],
        run: Run,
        w: &[f32],
        nq: usize,
        out: &mut [f32],
    ) {
        by_format!(fmt, dot_rows_q(codes, run, w, nq, out))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy_rows(
        fmt: Format,
        codes: &[u8],
        run: Run,
        a: &[f32],
        nq: usize,
        out: &mut [f32],
        ostride: usize,
    ) {
        by_format!(fmt, axpy_rows_q(codes, run, a, nq, out, ostride))
    }

    /// Calls `$kernel::<K, NQ>` with `NQ` the number of queries, 1 to 4 (more: 4).
    macro_rules! by_queries {
        ($nq:expr, $kernel:ident::<$k:ident>($($arg:expr),*)) => {
            match $nq {
                1 => $kernel::<$k, 1>($($arg),*),
                2 => $kernel::<$k, 2>($($arg),*),
                3 => $kernel::<$k, 3>($($arg),*),
                _ => $kernel::<$k, 4>($($arg),*),
            }
        };
    }

    /// Queries in groups of up to four, each group compiled for its size.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_rows_q<const K: u32>(
        codes: &[u8],
        run: Run,
        w: &[f32],
        nq: usize,
        out: &mut [f32],
    ) {
        let mut i = 0;
        while i < nq {
            let (w, out) = (&w[i * run.width..], &mut out[i * run.rows..]);
            by_queries!(nq - i, dot_rows_k::<K>(codes, run, w, out));
            i += 4;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn axpy_rows_q<const K: u32>(
        codes: &[u8],
        run: Run,
        a: &[f32],
        nq: usize,
        out: &mut [f32],
        ostride: usize,
    ) {
        let mut i = 0;
        while i < nq {
            let (a, out) = (&a[i * run.rows..], &mut out[i * ostride..]);
            by_queries!(nq - i, axpy_rows_k::<K>(codes, run, a, out, ostride));
            i += 4;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_rows_k<const K: u32, const NQ: usize>(
        codes: &[u8],
        run: Run,
        w: &[f32],
        out: &mut [f32],
    ) {
        let (blocks, width, rows) = (run.width / 8, run.width, run.rows);
        let wp = w.as_ptr();
        for r in 0..rows {
            let base = run.start + r * run.stride;
            let mut acc = [_mm256_setzero_ps(); NQ];
            for b in 0..blocks {
                let x = load8::<K>(codes, base + 8 * b);
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(i * width + 8 * b)), x, *a);
                }
            }
            for (i, a) in acc.iter().enumerate() {
                out[i * rows + r] = hsum(*a);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn axpy_rows_k<const K: u32, const NQ: usize>(
        codes: &[u8],
        run: Run,
        a: &[f32],
        out: &mut [f32],
        ostride: usize,
    ) {
        let (blocks, rows) = (run.width / 8, run.rows);
        let op = out.as_mut_ptr();
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + TILE).min(rows);
            for b in 0..blocks {
                let mut acc = [_mm256_setzero_ps(); NQ];
                for (i, x) in acc.iter_mut().enumerate() {
                    *x = _mm256_loadu_ps(op.add(i * ostride + 8 * b));
                }
                for r in r0..r1 {
                    let x = load8::<K>(codes, run.start + r * run.stride + 8 * b);
                    for (i, y) in acc.iter_mut().enumerate() {
                        *y = _mm256_fmadd_ps(_mm256_set1_ps(a[i * rows + r]), x, *y);
                    }
                }
                for (i, x) in acc.iter().enumerate() {
                    _mm256_storeu_ps(op.add(i * ostride + 8 * b), *x);
                }
            }
            r0 = r1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::pack;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-4 * (1.0 + a.abs().max(b.abs()))
    }

    /// Both kernels against sums over single codes, for one to five queries at once, on
    /// aligned windows (the AVX2 path where the CPU has it) and unaligned ones (the scalar
    /// path).
    fn check(fmt: Format, codes: &[u8], unpacked: &[f32]) {
        for nq in 1..=5 {
            let w: Vec<f32> = (0..64 * nq).map(|i| (i as f32 * 0.37).sin()).collect();
            for (start, stride, width) in [(0, 64, 64), (32, 64, 32), (8, 72, 40), (3, 61, 61)] {
                let rows = (unpacked.len() - start - width) / stride + 1;
                let run = Run {
                    start,
                    stride,
                    rows,
                    width,
                };
                let ws: Vec<f32> = (0..nq)
                    .flat_map(|i| w[i * 64..i * 64 + width].to_vec())
                    .collect();
                let mut dots = vec![0f32; nq * rows];
                dot_rows(fmt, codes, run, &ws, &mut dots);
                let a: Vec<f32> = (0..nq * rows)
                    .map(|x| 0.5 - (x % 97) as f32 * 0.01)
                    .collect();
                // Outputs `width + 3` apart, as rows of a wider buffer.
                let ostride = width + 3;
                let mut acc: Vec<f32> = (0..nq * ostride).map(|d| d as f32).collect();
                axpy_rows(fmt, codes, run, &a, &mut acc, ostride);
                for i in 0..nq {
                    for r in 0..rows {
                        let base = start + r * stride;
                        let want: f32 = (0..width)
                            .map(|d| ws[i * width + d] * unpacked[base + d])
                            .sum();
                        let got = dots[i * rows + r];
                        assert!(close(got, want), "{fmt:?} {start} q{i} row {r}");
                    }
                    for d in 0..ostride {
                        let at = i * ostride + d;
                        let want = at as f32
                            + if d < width {
                                (0..rows)
                                    .map(|r| a[i * rows + r] * unpacked[start + r * stride + d])
                                    .sum::<f32>()
                            } else {
                                0.0
                            };
                        assert!(close(acc[at], want), "{fmt:?} {start} q{i} col {d}");
                    }
                }
            }
        }
    }

    #[test]
    fn kernels_equal_sums_over_single_codes() {
        for bits in [2u32, 4, 8] {
            let codes: Vec<u8> = (0..64 * 40)
                .map(|i| ((i * 37 + 11) % (1 << bits)) as u8)
                .collect();
            let unpacked: Vec<f32> = codes.iter().map(|&c| c as f32).collect();
            check(Format::Bits(bits), &pack(&codes, bits), &unpacked);
        }
        // Every finite E4M3 byte, subnormals and negative zero included.
        let codes: Vec<u8> = (0..64 * 40)
            .map(|i| (i * 7 % 256) as u8)
            .map(|b| if b & 0x7F == 0x7F { 0 } else { b })
            .collect();
        let unpacked: Vec<f32> = codes
            .iter()
            .map(|&c| crate::quant::fp8::e4m3_to_f32(c))
            .collect();
        check(Format::E4m3, &codes, &unpacked);
    }

    #[test]
    fn e4m3_widening_is_exact_for_every_finite_byte() {
        let codes: Vec<u8> = (0u8..=255).filter(|&b| b & 0x7F != 0x7F).collect();
        let codes = &codes[..248];
        let mut out = vec![0f32; codes.len()];
        let run = Run {
            start: 0,
            stride: 0,
            rows: 1,
            width: codes.len(),
        };
        axpy_rows(Format::E4m3, codes, run, &[2.0], &mut out, 0);
        for (o, &c) in out.iter().zip(codes) {
            assert_eq!(*o, 2.0 * crate::quant::fp8::e4m3_to_f32(c), "byte {c:#x}");
        }
    }
}
