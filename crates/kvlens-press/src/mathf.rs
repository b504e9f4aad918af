//! Elementwise functions computed bit for bit as llama.cpp's CPU backend computes them.
//!
//! The model's greedy output is sensitive to the last bit of activations (a handful of
//! flipped 8-bit roundings out of millions moves logits by tenths), so kvlens evaluates exp,
//! SiLU and softmax sums with the same operations in the same order as ggml does on x86 with
//! AVX-512 (`ggml_v_expf`, `ggml_v_silu`, `ggml_vec_soft_max_f32`).

/// ggml's vector exp: the Arm optimized-routines polynomial (max error 1.45 ulp + 0.5),
/// with every fused multiply-add of the original.
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4B40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3FB8_AA3B), r); // log2(e) = 0x1.715476p+0
    let n = z - r;
    // b = x − n·ln2_hi − n·ln2_lo, as two fnmadds.
    let b = (-n).mul_add(f32::from_bits(0x3F31_7200), x); // 0x1.62e4p-1
    let b = (-n).mul_add(f32::from_bits(0x35BF_BE8E), b); // 0x1.7f7d1cp-20
    let u = b * b;
    let p0 = f32::from_bits(0x3C07_2010).mul_add(b, f32::from_bits(0x3D2B_9F17)); // 0x1.0e4020p-7, 0x1.573e2ep-5
    let p1 = f32::from_bits(0x3E2A_AF33).mul_add(b, f32::from_bits(0x3EFF_FEDB)); // 0x1.555e66p-3, 0x1.fffdb6p-2
    let p2 = f32::from_bits(0x3F7F_FFF6).mul_add(b, 1.0); // 0x1.ffffecp-1
    let j = p0.mul_add(u, p1).mul_add(u, p2);
    if n.abs() > 192.0 {
        return if n > 0.0 { f32::INFINITY } else { 0.0 };
    }
    scalef(j, n)
}

/// [`expf`] on 8 lanes: the same operations lane by lane, so the same bits.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn expf8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let c = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
    let r = c(0x4B40_0000);
    let z = _mm256_fmadd_ps(x, c(0x3FB8_AA3B), r);
    let n = _mm256_sub_ps(z, r);
    let b = _mm256_fnmadd_ps(n, c(0x3F31_7200), x);
    let b = _mm256_fnmadd_ps(n, c(0x35BF_BE8E), b);
    let u = _mm256_mul_ps(b, b);
    let p0 = _mm256_fmadd_ps(c(0x3C07_2010), b, c(0x3D2B_9F17));
    let p1 = _mm256_fmadd_ps(c(0x3E2A_AF33), b, c(0x3EFF_FEDB));
    let p2 = _mm256_fmadd_ps(c(0x3F7F_FFF6), b, _mm256_set1_ps(1.0));
    let j = _mm256_fmadd_ps(_mm256_fmadd_ps(p0, u, p1), u, p2);
    // Lanes with n in the normal range: j·2ⁿ by building 2ⁿ from its exponent bits; the rare
    // others fall back to the scalar routine.
    let ni = _mm256_cvtps_epi32(n);
    let in_range = _mm256_and_ps(
        _mm256_cmp_ps(n, _mm256_set1_ps(-126.0), _CMP_GE_OQ),
        _mm256_cmp_ps(n, _mm256_set1_ps(127.0), _CMP_LE_OQ),
    );
    let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_add_epi32(ni, _mm256_set1_epi32(127)),
        23,
    ));
    let res = _mm256_mul_ps(j, pow2);
    if _mm256_movemask_ps(in_range) == 0xFF {
        return res;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), x);
    for l in &mut lanes {
        *l = expf(*l);
    }
    _mm256_loadu_ps(lanes.as_ptr())
}

/// `j · 2ⁿ` for integral `n`, rounded once (as `_mm512_scalef_ps`).
#[inline(always)]
fn scalef(j: f32, n: f32) -> f32 {
    let n = n as i32;
    if (-126..=127).contains(&n) {
        j * f32::from_bits(((n + 127) as u32) << 23)
    } else {
        (j as f64 * 2f64.powi(n)) as f32
    }
}

/// SiLU as `ggml_v_silu`: `x / (1 + exp(0 − x))`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + expf(0.0 - x))
}

/// `g ← silu(g) ⊙ u`, as `ggml_vec_swiglu_f32`.
pub fn swiglu_in_place(g: &mut [f32], u: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::avx2() {
            // SAFETY: features detected; the same code with fused multiply-adds inlined.
            unsafe { swiglu_fma(g, u) };
            return;
        }
    }
    swiglu_impl(g, u)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn swiglu_fma(g: &mut [f32], u: &[f32]) {
    swiglu_impl(g, u)
}

#[inline(always)]
fn swiglu_impl(g: &mut [f32], u: &[f32]) {
    for (a, b) in g.iter_mut().zip(u) {
        *a = silu(*a) * b;
    }
}

/// Sum of 16 lanes in `_mm512_reduce_add_ps` order.
#[inline]
pub fn reduce16(v: &[f32; 16]) -> f32 {
    let mut t3 = [0f32; 8];
    for i in 0..8 {
        t3[i] = v[i + 8] + v[i];
    }
    let mut t6 = [0f32; 4];
    for i in 0..4 {
        t6[i] = t3[i + 4] + t3[i];
    }
    let t8 = [t6[0] + t6[2], t6[1] + t6[3]];
    t8[0] + t8[1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_the_true_value() {
        for i in -2000..=800 {
            let x = i as f32 * 0.1;
            let want = (x as f64).exp();
            let got = expf(x) as f64;
            if want < 1e-37 {
                continue;
            }
            assert!(
                (got - want).abs() / want < 4e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(expf(0.0), 1.0);
        assert_eq!(expf(-200.0), 0.0);
        assert!(expf(100.0).is_infinite());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_has_the_scalar_bits() {
        use std::arch::x86_64::*;
        if !crate::cpu::avx2() {
            return;
        }
        for i in -1300..100 {
            let xs: [f32; 8] = std::array::from_fn(|l| (i * 8 + l as i32) as f32 * 0.0137);
            let mut out = [0f32; 8];
            // SAFETY: features checked above.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), expf8(_mm256_loadu_ps(xs.as_ptr()))) };
            for (x, y) in xs.iter().zip(out) {
                assert_eq!(expf(*x).to_bits(), y.to_bits(), "exp({x})");
            }
        }
    }

    #[test]
    fn reduce16_adds_every_lane() {
        let v: [f32; 16] = std::array::from_fn(|i| i as f32);
        assert_eq!(reduce16(&v), 120.0);
    }
}
