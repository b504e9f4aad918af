//! Fused dequantize-and-dot kernels: a decode step reads packed codes directly, converting
//! eight at a time in registers, instead of first writing every packed row out as f32.
//!
//! Codes of 2, 4 or 8 bits are packed little-end first (see [`super::pack`]); the AVX2 paths
//! need runs whose length is a multiple of 8 starting at a code index that is a multiple of
//! 8, which every head width kvlens meets (64, 128); other runs take the scalar path.

use super::unpack;

/// `Σ_d w[d] · code(start + d)` over `d < w.len()`.
pub fn code_dot(packed: &[u8], bits: u32, start: usize, w: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if simd_ok(bits, start, w.len()) {
            // SAFETY: features detected; `simd_ok` checked alignment and length, and the
            // packed buffer holds every code of the run (bounds checked below).
            check_len(packed, bits, start, w.len());
            return unsafe { avx::code_dot(packed, bits, start, w) };
        }
    }
    w.iter()
        .enumerate()
        .map(|(d, &x)| x * unpack(packed, bits, start + d) as f32)
        .sum()
}

/// `out[d] += a · code(start + d)` over `d < out.len()`.
pub fn code_axpy(packed: &[u8], bits: u32, start: usize, a: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if simd_ok(bits, start, out.len()) {
            check_len(packed, bits, start, out.len());
            // SAFETY: as in `code_dot`.
            unsafe { avx::code_axpy(packed, bits, start, a, out) };
            return;
        }
    }
    for (d, o) in out.iter_mut().enumerate() {
        *o += a * unpack(packed, bits, start + d) as f32;
    }
}

/// `Σ_d w[d] · e4m3(codes[d])`.
pub fn e4m3_dot(codes: &[u8], w: &[f32]) -> f32 {
    assert_eq!(codes.len(), w.len());
    #[cfg(target_arch = "x86_64")]
    {
        if w.len().is_multiple_of(8) && crate::attention::has_avx2_fma_f16c() {
            // SAFETY: features detected; equal lengths, a multiple of 8.
            return unsafe { avx::e4m3_dot(codes, w) };
        }
    }
    codes
        .iter()
        .zip(w)
        .map(|(&c, &x)| x * super::fp8::e4m3_to_f32(c))
        .sum()
}

/// `out[d] += a · e4m3(codes[d])`.
pub fn e4m3_axpy(codes: &[u8], a: f32, out: &mut [f32]) {
    assert_eq!(codes.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    {
        if out.len().is_multiple_of(8) && crate::attention::has_avx2_fma_f16c() {
            // SAFETY: as in `e4m3_dot`.
            unsafe { avx::e4m3_axpy(codes, a, out) };
            return;
        }
    }
    for (o, &c) in out.iter_mut().zip(codes) {
        *o += a * super::fp8::e4m3_to_f32(c);
    }
}

/// `out[r] = Σ_d w[d] · code(start + r·stride + d)` for every row `r < out.len()`, over
/// `d < w.len()`: one query against many packed rows.
pub fn code_dot_rows(
    packed: &[u8],
    bits: u32,
    start: usize,
    stride: usize,
    w: &[f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if simd_ok(bits, start, w.len()) && stride.is_multiple_of(8) && w.len() <= 8 * 32 {
            if let Some(last) = out.len().checked_sub(1) {
                check_len(packed, bits, start + last * stride, w.len());
            }
            // SAFETY: features detected; alignment, widths and bounds checked above.
            unsafe { avx::code_dot_rows(packed, bits, start, stride, w, out) };
            return;
        }
    }
    for (r, o) in out.iter_mut().enumerate() {
        *o = code_dot(packed, bits, start + r * stride, w);
    }
}

/// `out[d] += Σ_r a[r] · code(start + r·stride + d)` over rows `r < a.len()` and
/// `d < out.len()`: many packed rows weighted into one output.
pub fn code_axpy_rows(
    packed: &[u8],
    bits: u32,
    start: usize,
    stride: usize,
    a: &[f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if simd_ok(bits, start, out.len()) && stride.is_multiple_of(8) && out.len() <= 8 * 32 {
            if let Some(last) = a.len().checked_sub(1) {
                check_len(packed, bits, start + last * stride, out.len());
            }
            // SAFETY: as in `code_dot_rows`.
            unsafe { avx::code_axpy_rows(packed, bits, start, stride, a, out) };
            return;
        }
    }
    for (r, &x) in a.iter().enumerate() {
        code_axpy(packed, bits, start + r * stride, x, out);
    }
}

/// [`code_dot_rows`] for E4M3 bytes: `out[r] = Σ_d w[d] · e4m3(codes[start + r·stride + d])`.
pub fn e4m3_dot_rows(codes: &[u8], start: usize, stride: usize, w: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if w.len().is_multiple_of(8) && w.len() <= 8 * 32 && crate::attention::has_avx2_fma_f16c() {
            if let Some(last) = out.len().checked_sub(1) {
                assert!(start + last * stride + w.len() <= codes.len());
            }
            // SAFETY: features detected; width a multiple of 8; bounds checked.
            unsafe { avx::e4m3_dot_rows(codes, start, stride, w, out) };
            return;
        }
    }
    for (r, o) in out.iter_mut().enumerate() {
        let at = start + r * stride;
        *o = e4m3_dot(&codes[at..at + w.len()], w);
    }
}

/// [`code_axpy_rows`] for E4M3 bytes.
pub fn e4m3_axpy_rows(codes: &[u8], start: usize, stride: usize, a: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if out.len().is_multiple_of(8)
            && out.len() <= 8 * 32
            && crate::attention::has_avx2_fma_f16c()
        {
            if let Some(last) = a.len().checked_sub(1) {
                assert!(start + last * stride + out.len() <= codes.len());
            }
            // SAFETY: features detected; width a multiple of 8; bounds checked.
            unsafe { avx::e4m3_axpy_rows(codes, start, stride, a, out) };
            return;
        }
    }
    for (r, &x) in a.iter().enumerate() {
        let at = start + r * stride;
        e4m3_axpy(&codes[at..at + out.len()], x, out);
    }
}

#[cfg(target_arch = "x86_64")]
fn simd_ok(bits: u32, start: usize, len: usize) -> bool {
    matches!(bits, 2 | 4 | 8)
        && start.is_multiple_of(8)
        && len.is_multiple_of(8)
        && crate::attention::has_avx2_fma_f16c()
}

#[cfg(target_arch = "x86_64")]
fn check_len(packed: &[u8], bits: u32, start: usize, len: usize) {
    let end = (start + len) * bits as usize / 8;
    assert!(end <= packed.len(), "a packed run past its buffer");
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// Eight codes from code index `i` (a multiple of 8), as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn codes8(packed: &[u8], bits: u32, i: usize) -> __m256 {
        let ints = match bits {
            8 => _mm256_cvtepu8_epi32(_mm_loadl_epi64(packed.as_ptr().add(i) as *const __m128i)),
            4 => {
                // The caller checked that the run lies inside `packed`.
                let x = u32::from_le((packed.as_ptr().add(i / 2) as *const u32).read_unaligned());
                let shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
                _mm256_and_si256(
                    _mm256_srlv_epi32(_mm256_set1_epi32(x as i32), shifts),
                    _mm256_set1_epi32(0xF),
                )
            }
            _ => {
                let x = u16::from_le((packed.as_ptr().add(i / 4) as *const u16).read_unaligned())
                    as i32;
                let shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
                _mm256_and_si256(
                    _mm256_srlv_epi32(_mm256_set1_epi32(x), shifts),
                    _mm256_set1_epi32(3),
                )
            }
        };
        _mm256_cvtepi32_ps(ints)
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

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn code_dot(packed: &[u8], bits: u32, start: usize, w: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for k in (0..w.len()).step_by(8) {
            let c = codes8(packed, bits, start + k);
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(w.as_ptr().add(k)), c, acc);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn code_axpy(packed: &[u8], bits: u32, start: usize, a: f32, out: &mut [f32]) {
        let av = _mm256_set1_ps(a);
        for k in (0..out.len()).step_by(8) {
            let c = codes8(packed, bits, start + k);
            let p = out.as_mut_ptr().add(k);
            _mm256_storeu_ps(p, _mm256_fmadd_ps(av, c, _mm256_loadu_ps(p)));
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn code_dot_rows(
        packed: &[u8],
        bits: u32,
        start: usize,
        stride: usize,
        w: &[f32],
        out: &mut [f32],
    ) {
        let blocks = w.len() / 8;
        let mut wv = [_mm256_setzero_ps(); 32];
        for (b, x) in wv.iter_mut().enumerate().take(blocks) {
            *x = _mm256_loadu_ps(w.as_ptr().add(8 * b));
        }
        for (r, o) in out.iter_mut().enumerate() {
            let base = start + r * stride;
            let mut acc = _mm256_setzero_ps();
            for (b, x) in wv.iter().enumerate().take(blocks) {
                acc = _mm256_fmadd_ps(*x, codes8(packed, bits, base + 8 * b), acc);
            }
            *o = hsum(acc);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn code_axpy_rows(
        packed: &[u8],
        bits: u32,
        start: usize,
        stride: usize,
        a: &[f32],
        out: &mut [f32],
    ) {
        let blocks = out.len() / 8;
        let mut acc = [_mm256_setzero_ps(); 32];
        for (b, x) in acc.iter_mut().enumerate().take(blocks) {
            *x = _mm256_loadu_ps(out.as_ptr().add(8 * b));
        }
        for (r, &ar) in a.iter().enumerate() {
            let av = _mm256_set1_ps(ar);
            let base = start + r * stride;
            for (b, x) in acc.iter_mut().enumerate().take(blocks) {
                *x = _mm256_fmadd_ps(av, codes8(packed, bits, base + 8 * b), *x);
            }
        }
        for (b, x) in acc.iter().enumerate().take(blocks) {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * b), *x);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn e4m3_dot_rows(
        codes: &[u8],
        start: usize,
        stride: usize,
        w: &[f32],
        out: &mut [f32],
    ) {
        let blocks = w.len() / 8;
        let mut wv = [_mm256_setzero_ps(); 32];
        for (b, x) in wv.iter_mut().enumerate().take(blocks) {
            *x = _mm256_loadu_ps(w.as_ptr().add(8 * b));
        }
        for (r, o) in out.iter_mut().enumerate() {
            let base = start + r * stride;
            let mut acc = _mm256_setzero_ps();
            for (b, x) in wv.iter().enumerate().take(blocks) {
                acc = _mm256_fmadd_ps(*x, e4m3x8(codes, base + 8 * b), acc);
            }
            *o = hsum(acc);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn e4m3_axpy_rows(
        codes: &[u8],
        start: usize,
        stride: usize,
        a: &[f32],
        out: &mut [f32],
    ) {
        let blocks = out.len() / 8;
        let mut acc = [_mm256_setzero_ps(); 32];
        for (b, x) in acc.iter_mut().enumerate().take(blocks) {
            *x = _mm256_loadu_ps(out.as_ptr().add(8 * b));
        }
        for (r, &ar) in a.iter().enumerate() {
            let av = _mm256_set1_ps(ar);
            let base = start + r * stride;
            for (b, x) in acc.iter_mut().enumerate().take(blocks) {
                *x = _mm256_fmadd_ps(av, e4m3x8(codes, base + 8 * b), *x);
            }
        }
        for (b, x) in acc.iter().enumerate().take(blocks) {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * b), *x);
        }
    }

    /// Eight E4M3 bytes as f32: each byte sign-extended to 32 bits and shifted left by 20
    /// puts its sign at bit 31 and its 7 magnitude bits under the f32 exponent (the mask
    /// drops the sign-extension copies between them); scaling by 2^120 rebiases the exponent
    /// (E4M3 subnormals land as f32 subnormals and scale the same).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn e4m3x8(codes: &[u8], k: usize) -> __m256 {
        let b = _mm256_cvtepi8_epi32(_mm_loadl_epi64(codes.as_ptr().add(k) as *const __m128i));
        let bits = _mm256_and_si256(
            _mm256_slli_epi32(b, 20),
            _mm256_set1_epi32(0x87F0_0000u32 as i32),
        );
        _mm256_mul_ps(
            _mm256_castsi256_ps(bits),
            _mm256_set1_ps(f32::from_bits((127 + 120) << 23)),
        )
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn e4m3_dot(codes: &[u8], w: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for k in (0..w.len()).step_by(8) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(w.as_ptr().add(k)), e4m3x8(codes, k), acc);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn e4m3_axpy(codes: &[u8], a: f32, out: &mut [f32]) {
        let av = _mm256_set1_ps(a);
        for k in (0..out.len()).step_by(8) {
            let p = out.as_mut_ptr().add(k);
            _mm256_storeu_ps(p, _mm256_fmadd_ps(av, e4m3x8(codes, k), _mm256_loadu_ps(p)));
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

    #[test]
    fn fused_runs_equal_unpacking_every_code() {
        for bits in [2u32, 4, 8] {
            let codes: Vec<u8> = (0..256)
                .map(|i| ((i * 37 + 11) % (1 << bits)) as u8)
                .collect();
            let p = pack(&codes, bits);
            let w: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
            for start in [0usize, 64, 128, 192, 8, 3] {
                let len = if start == 3 { 61 } else { 64 };
                let want: f32 = (0..len).map(|d| w[d] * codes[start + d] as f32).sum();
                assert!(
                    close(code_dot(&p, bits, start, &w[..len]), want),
                    "{bits} {start}"
                );
                let mut out: Vec<f32> = (0..len).map(|d| d as f32).collect();
                code_axpy(&p, bits, start, 0.5, &mut out);
                for d in 0..len {
                    assert!(close(out[d], d as f32 + 0.5 * codes[start + d] as f32));
                }
            }
        }
    }

    #[test]
    fn row_batched_kernels_equal_one_row_at_a_time() {
        for bits in [2u32, 4, 8] {
            let codes: Vec<u8> = (0..64 * 40)
                .map(|i| ((i * 13 + 5) % (1 << bits)) as u8)
                .collect();
            let p = pack(&codes, bits);
            let w: Vec<f32> = (0..32).map(|i| (i as f32 * 0.7).cos()).collect();
            // Rows of 64 codes, a 32-wide window starting at column 32.
            let mut dots = vec![0f32; 39];
            code_dot_rows(&p, bits, 32, 64, &w, &mut dots);
            for (r, d) in dots.iter().enumerate() {
                assert!(
                    close(*d, code_dot(&p, bits, 32 + 64 * r, &w)),
                    "{bits} row {r}"
                );
            }
            let a: Vec<f32> = (0..39).map(|r| r as f32 * 0.01).collect();
            let mut fused = vec![1f32; 32];
            code_axpy_rows(&p, bits, 32, 64, &a, &mut fused);
            let mut each = vec![1f32; 32];
            for (r, &x) in a.iter().enumerate() {
                code_axpy(&p, bits, 32 + 64 * r, x, &mut each);
            }
            for (f, e) in fused.iter().zip(&each) {
                assert!(close(*f, *e), "{bits}: {f} vs {e}");
            }
        }
        let codes: Vec<u8> = (0..64 * 10).map(|i| (i * 7 % 0x7E) as u8).collect();
        let w: Vec<f32> = (0..64).map(|i| (i as f32 * 0.3).sin()).collect();
        let mut dots = vec![0f32; 10];
        e4m3_dot_rows(&codes, 0, 64, &w, &mut dots);
        for (r, d) in dots.iter().enumerate() {
            assert!(close(*d, e4m3_dot(&codes[64 * r..64 * (r + 1)], &w)));
        }
        let a: Vec<f32> = (0..10).map(|r| 0.5 + r as f32).collect();
        let mut fused = vec![0f32; 64];
        e4m3_axpy_rows(&codes, 0, 64, &a, &mut fused);
        let mut each = vec![0f32; 64];
        for (r, &x) in a.iter().enumerate() {
            e4m3_axpy(&codes[64 * r..64 * (r + 1)], x, &mut each);
        }
        for (f, e) in fused.iter().zip(&each) {
            assert!(close(*f, *e));
        }
    }

    #[test]
    fn fused_e4m3_equals_the_table_for_every_finite_byte() {
        let codes: Vec<u8> = (0u8..=255)
            .filter(|&b| b & 0x7F != 0x7F)
            .take(248)
            .collect();
        let w: Vec<f32> = (0..codes.len()).map(|i| 1.0 + (i % 7) as f32).collect();
        let want: f32 = codes
            .iter()
            .zip(&w)
            .map(|(&c, &x)| x * crate::quant::fp8::e4m3_to_f32(c))
            .sum();
        assert!(close(e4m3_dot(&codes, &w), want));
        let mut out = vec![0f32; codes.len()];
        e4m3_axpy(&codes, 2.0, &mut out);
        for (o, &c) in out.iter().zip(&codes) {
            assert_eq!(*o, 2.0 * crate::quant::fp8::e4m3_to_f32(c), "byte {c:#x}");
        }
    }
}
