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
            && width <= 8 * avx::MAX_BLOCKS
            && crate::attention::has_avx2_fma_f16c()
    }
}

/// `out[r] = Σ_d w[d] · code(start + r·stride + d)` for every row `r < out.len()`, over
/// `d < w.len()`: one query against many packed rows.
pub fn dot_rows(
    fmt: Format,
    codes: &[u8],
    start: usize,
    stride: usize,
    w: &[f32],
    out: &mut [f32],
) {
    let Some(last) = out.len().checked_sub(1) else {
        return;
    };
    assert!(
        fmt.bytes_for(start + last * stride + w.len()) <= codes.len(),
        "a packed run past its buffer"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if fmt.simd(start, stride, w.len()) {
            // SAFETY: features detected; alignment, widths and bounds checked above.
            unsafe { avx::dot_rows(fmt, codes, start, stride, w, out) };
            return;
        }
    }
    for (r, o) in out.iter_mut().enumerate() {
        let base = start + r * stride;
        *o = w
            .iter()
            .enumerate()
            .map(|(d, &x)| x * fmt.get(codes, base + d))
            .sum();
    }
}

/// `out[d] += Σ_r a[r] · code(start + r·stride + d)` over rows `r < a.len()` and
/// `d < out.len()`: many packed rows weighted into one output.
pub fn axpy_rows(
    fmt: Format,
    codes: &[u8],
    start: usize,
    stride: usize,
    a: &[f32],
    out: &mut [f32],
) {
    let Some(last) = a.len().checked_sub(1) else {
        return;
    };
    assert!(
        fmt.bytes_for(start + last * stride + out.len()) <= codes.len(),
        "a packed run past its buffer"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if fmt.simd(start, stride, out.len()) {
            // SAFETY: as in `dot_rows`.
            unsafe { avx::axpy_rows(fmt, codes, start, stride, a, out) };
            return;
        }
    }
    for (r, &x) in a.iter().enumerate() {
        let base = start + r * stride;
        for (d, o) in out.iter_mut().enumerate() {
            *o += x * fmt.get(codes, base + d);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::Format;
    use std::arch::x86_64::*;

    /// Widest run in blocks of 8 (registers kept in an array).
    pub const MAX_BLOCKS: usize = 32;

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

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
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
        start: usize,
        stride: usize,
        w: &[f32],
        out: &mut [f32],
    ) {
        by_format!(fmt, dot_rows_k(codes, start, stride, w, out))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy_rows(
        fmt: Format,
        codes: &[u8],
        start: usize,
        stride: usize,
        a: &[f32],
        out: &mut [f32],
    ) {
        by_format!(fmt, axpy_rows_k(codes, start, stride, a, out))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_rows_k<const K: u32>(
        codes: &[u8],
        start: usize,
        stride: usize,
        w: &[f32],
        out: &mut [f32],
    ) {
        let blocks = w.len() / 8;
        let mut wv = [_mm256_setzero_ps(); MAX_BLOCKS];
        for (b, x) in wv.iter_mut().enumerate().take(blocks) {
            *x = _mm256_loadu_ps(w.as_ptr().add(8 * b));
        }
        for (r, o) in out.iter_mut().enumerate() {
            let base = start + r * stride;
            let mut acc = _mm256_setzero_ps();
            for (b, x) in wv.iter().enumerate().take(blocks) {
                acc = _mm256_fmadd_ps(*x, load8::<K>(codes, base + 8 * b), acc);
            }
            *o = hsum(acc);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn axpy_rows_k<const K: u32>(
        codes: &[u8],
        start: usize,
        stride: usize,
        a: &[f32],
        out: &mut [f32],
    ) {
        let blocks = out.len() / 8;
        let mut acc = [_mm256_setzero_ps(); MAX_BLOCKS];
        for (b, x) in acc.iter_mut().enumerate().take(blocks) {
            *x = _mm256_loadu_ps(out.as_ptr().add(8 * b));
        }
        for (r, &ar) in a.iter().enumerate() {
            let av = _mm256_set1_ps(ar);
            let base = start + r * stride;
            for (b, x) in acc.iter_mut().enumerate().take(blocks) {
                *x = _mm256_fmadd_ps(av, load8::<K>(codes, base + 8 * b), *x);
            }
        }
        for (b, x) in acc.iter().enumerate().take(blocks) {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * b), *x);
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

    /// Both kernels against sums over single codes, on aligned windows (the AVX2 path where
    /// the CPU has it) and unaligned ones (the scalar path).
    fn check(fmt: Format, codes: &[u8], unpacked: &[f32]) {
        let w: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        for (start, stride, width) in [(0, 64, 64), (32, 64, 32), (8, 72, 40), (3, 61, 61)] {
            let rows = (unpacked.len() - start - width) / stride + 1;
            let mut dots = vec![0f32; rows];
            dot_rows(fmt, codes, start, stride, &w[..width], &mut dots);
            let a: Vec<f32> = (0..rows).map(|r| 0.5 - r as f32 * 0.01).collect();
            let mut acc: Vec<f32> = (0..width).map(|d| d as f32).collect();
            axpy_rows(fmt, codes, start, stride, &a, &mut acc);
            for (r, got) in dots.iter().enumerate() {
                let base = start + r * stride;
                let want: f32 = (0..width).map(|d| w[d] * unpacked[base + d]).sum();
                assert!(close(*got, want), "{fmt:?} {start} row {r}");
            }
            for (d, got) in acc.iter().enumerate() {
                let want = d as f32
                    + (0..rows)
                        .map(|r| a[r] * unpacked[start + r * stride + d])
                        .sum::<f32>();
                assert!(close(*got, want), "{fmt:?} {start} col {d}");
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
        axpy_rows(Format::E4m3, codes, 0, 0, &[2.0], &mut out);
        for (o, &c) in out.iter().zip(codes) {
            assert_eq!(*o, 2.0 * crate::quant::fp8::e4m3_to_f32(c), "byte {c:#x}");
        }
    }
}
