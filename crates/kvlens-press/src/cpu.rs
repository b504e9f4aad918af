//! What this processor can do, asked once per process: every SIMD kernel of the cache and of
//! the engine branches on these answers, and none asks the processor itself.

/// The instruction sets kvlens's kernels are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// AVX2 with FMA and F16C: the 256-bit kernels (ggml's AVX2 orders).
    pub avx2: bool,
    /// AVX-512 F: the 512-bit attention sums (with `avx2`).
    pub avx512f: bool,
    /// AVX-512 F, BW, DQ, VL and VNNI: the engine's 512-bit Q4_1 prompt kernel (with `avx2`).
    pub avx512: bool,
    /// AVX-512 VNNI with VL: u8×i8 dot products in one instruction on 256-bit registers.
    pub vnni: bool,
}

impl Features {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            let vnni = has!("avx512vnni") && has!("avx512vl");
            let avx512f = avx2 && has!("avx512f");
            let avx512 = avx512f && has!("avx512bw") && has!("avx512dq") && vnni;
            Features {
                avx2,
                avx512f,
                avx512,
                vnni: avx2 && vnni,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Features {
                avx2: false,
                avx512f: false,
                avx512: false,
                vnni: false,
            }
        }
    }
}

/// This processor's features (detected on the first call).
pub fn features() -> Features {
    use std::sync::OnceLock;
    static F: OnceLock<Features> = OnceLock::new();
    *F.get_or_init(Features::detect)
}

/// AVX2 with FMA and F16C.
#[inline]
pub fn avx2() -> bool {
    features().avx2
}

/// AVX-512 F (with AVX2, FMA, F16C).
#[inline]
pub fn avx512f() -> bool {
    features().avx512f
}

/// AVX-512 F, BW, DQ, VL and VNNI (with AVX2, FMA, F16C).
#[inline]
pub fn avx512() -> bool {
    features().avx512
}

/// AVX-512 VNNI with VL (with AVX2).
#[inline]
pub fn vnni() -> bool {
    features().vnni
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_wider_sets_imply_the_narrower() {
        let f = super::features();
        assert!(!f.avx512 || f.avx512f);
        assert!(!f.avx512f || f.avx2);
        assert!(!f.vnni || f.avx2);
    }
}
