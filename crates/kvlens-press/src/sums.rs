//! The orders in which llama.cpp's CPU backend sums the two products of attention over an
//! f16 cache, reproduced so that the `full` f16 cache gives llama.cpp's bits.
//!
//! Without flash attention, llama.cpp computes `q·Kᵀ` and `p·V` as f16 matrix products
//! (the f32 operand rounded to f16 first). Which kernel sums them depends on the batch:
//! a batch of several tokens goes through llamafile's tinyBLAS (one accumulator of 16 f32
//! lanes per output, fused multiply-adds along the row, then the lanes reduced), a single
//! token through `ggml_vec_dot_f16` (four accumulators of 16 lanes stepping 64 elements,
//! added pairwise, reduced, the tail added in f64). Both are the AVX-512 forms, the ones a
//! native build of llama.cpp uses on the x86 machines kvlens is measured on. The value
//! product runs over llama.cpp's padded row of cache cells (a multiple of 256), whose
//! masked cells weigh 0 and add nothing, so only the lane of each row matters.

use crate::mathf::reduce16;
use std::cell::RefCell;

/// Which of llama.cpp's kernels an attention product follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SumOrder {
    /// `ggml_vec_dot_f16`: a batch of one token.
    Dot,
    /// tinyBLAS: a batch of several tokens, when the shapes suit it.
    Gemm,
}

impl SumOrder {
    /// The order of the scores `q·k` for a batch of `n_tokens` and heads of `dim`
    /// (tinyBLAS needs the row length, `dim`, to be a multiple of 16).
    pub fn scores(n_tokens: usize, dim: usize) -> Self {
        if n_tokens >= 2 && dim.is_multiple_of(16) {
            SumOrder::Gemm
        } else {
            SumOrder::Dot
        }
    }

    /// The order of the weighted values `p·V` (tinyBLAS needs `dim`, its output rows, to be
    /// a multiple of 4).
    pub fn values(n_tokens: usize, dim: usize) -> Self {
        if n_tokens >= 2 && dim.is_multiple_of(4) {
            SumOrder::Gemm
        } else {
            SumOrder::Dot
        }
    }

    /// Accumulators of 16 lanes: the row element `j` goes to accumulator lane `j % lanes`.
    fn lanes(self) -> usize {
        match self {
            SumOrder::Dot => 64,
            SumOrder::Gemm => 16,
        }
    }
}

/// Every value rounded to f16 and back (as ggml rounds the f32 operand of an f16 product).
pub fn round_f16(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::avx2() {
            // SAFETY: features detected.
            unsafe { x86::round_f16(x) };
            return;
        }
    }
    for v in x.iter_mut() {
        *v = half::f16::from_f32(*v).to_f32();
    }
}

/// `q·k` summed in `order` (`q` and `k` of equal length; for [`SumOrder::Gemm`] a
/// multiple of 16).
pub fn dot(order: SumOrder, q: &[f32], k: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::avx2() {
            // SAFETY: features detected; the same operations with fused multiply-adds inlined.
            return unsafe { dot_fma(order, q, k) };
        }
    }
    dot_impl(order, q, k)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_fma(order: SumOrder, q: &[f32], k: &[f32]) -> f32 {
    dot_impl(order, q, k)
}

#[inline(always)]
fn dot_impl(order: SumOrder, q: &[f32], k: &[f32]) -> f32 {
    let n = q.len().min(k.len());
    match order {
        SumOrder::Gemm => {
            debug_assert!(n.is_multiple_of(16));
            let mut a = [0f32; 16];
            for (qs, ks) in q[..n].chunks_exact(16).zip(k[..n].chunks_exact(16)) {
                for l in 0..16 {
                    a[l] = qs[l].mul_add(ks[l], a[l]);
                }
            }
            reduce16(&a)
        }
        SumOrder::Dot => {
            let np = n / 64 * 64;
            let mut s = [0f32; 64];
            for (qs, ks) in q[..np].chunks_exact(64).zip(k[..np].chunks_exact(64)) {
                for e in 0..64 {
                    s[e] = qs[e].mul_add(ks[e], s[e]);
                }
            }
            let mut sum = reduce16(&pairwise4(&s)) as f64;
            for e in np..n {
                sum += (q[e] * k[e]) as f64;
            }
            sum as f32
        }
    }
}

/// The four accumulators of `ggml_vec_dot_f16` added as its reduction does:
/// `(s0 + s2) + (s1 + s3)`, lane by lane.
#[inline(always)]
fn pairwise4(s: &[f32; 64]) -> [f32; 16] {
    std::array::from_fn(|l| (s[l] + s[32 + l]) + (s[16 + l] + s[48 + l]))
}

/// `out[j] = q·k_j` in the [`SumOrder::Gemm`] order for keys stored transposed:
/// `kt[d·stride + j]` is dimension `d` of key `j`; `out.len()` a multiple of 8, `q.len()` of
/// 16.
pub fn scores_t_gemm(q: &[f32], kt: &[f32], stride: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::avx2() {
            // SAFETY: features detected; the same operations with fused multiply-adds inlined.
            unsafe { scores_t_gemm_fma(q, kt, stride, out) };
            return;
        }
    }
    scores_t_gemm_impl(q, kt, stride, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_t_gemm_fma(q: &[f32], kt: &[f32], stride: usize, out: &mut [f32]) {
    let full = if crate::cpu::avx512f() {
        let full = out.len() / 16 * 16;
        x86::scores_t_gemm16(q, kt, stride, &mut out[..full]);
        full
    } else {
        0
    };
    x86::scores_t_gemm8(q, &kt[full..], stride, &mut out[full..])
}

#[inline(always)]
fn scores_t_gemm_impl(q: &[f32], kt: &[f32], stride: usize, out: &mut [f32]) {
    let dim = q.len();
    debug_assert!(dim.is_multiple_of(16) && out.len().is_multiple_of(8));
    for (jb, o) in out.chunks_exact_mut(8).enumerate() {
        let j = jb * 8;
        // a[l][key]: lane l of each of the 8 keys' accumulators.
        let mut a = [[0f32; 8]; 16];
        for s in (0..dim).step_by(16) {
            for (l, al) in a.iter_mut().enumerate() {
                let qd = q[s + l];
                let row = &kt[(s + l) * stride + j..(s + l) * stride + j + 8];
                for (x, &kv) in al.iter_mut().zip(row) {
                    *x = qd.mul_add(kv, *x);
                }
            }
        }
        // reduce16 lane by lane, for 8 keys at once.
        let t3: [[f32; 8]; 8] = std::array::from_fn(|i| add8(&a[i + 8], &a[i]));
        let t6: [[f32; 8]; 4] = std::array::from_fn(|i| add8(&t3[i + 4], &t3[i]));
        let t8 = [add8(&t6[0], &t6[2]), add8(&t6[1], &t6[3])];
        o.copy_from_slice(&add8(&t8[0], &t8[1]));
    }
}

#[inline(always)]
fn add8(a: &[f32; 8], b: &[f32; 8]) -> [f32; 8] {
    std::array::from_fn(|i| a[i] + b[i])
}

thread_local! {
    static LANES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out = Σ_j p[j]·row_j` summed in `order`; `row(j, buf)` writes row `j` (`out.len()`
/// values, at most 256) as f32 into `buf`.
pub fn weighted_rows(
    order: SumOrder,
    p: &[f32],
    out: &mut [f32],
    row: &mut dyn FnMut(usize, &mut [f32]),
) {
    LANES.with(|cell| {
        let mut lanes = cell.borrow_mut();
        let dim = out.len();
        let nl = order.lanes();
        lanes.clear();
        lanes.resize(nl * dim, 0.0);
        let mut buf = [0f32; 256];
        for (j, &pj) in p.iter().enumerate() {
            if pj == 0.0 {
                // A weight of +0 or −0 adds an exact zero to its lane (finite rows).
                continue;
            }
            let l = j % nl;
            let acc = &mut lanes[l * dim..(l + 1) * dim];
            row(j, &mut buf[..dim]);
            axpy(acc, pj, &buf[..dim]);
        }
        combine(order, &lanes, out);
    })
}

/// `acc += p·v` with one rounding per element.
fn axpy(acc: &mut [f32], p: f32, v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::avx2() {
            // SAFETY: features detected.
            unsafe { axpy_fma(acc, p, v) };
            return;
        }
    }
    axpy_impl(acc, p, v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_fma(acc: &mut [f32], p: f32, v: &[f32]) {
    axpy_impl(acc, p, v)
}

#[inline(always)]
fn axpy_impl(acc: &mut [f32], p: f32, v: &[f32]) {
    for (a, &x) in acc.iter_mut().zip(v) {
        *a = p.mul_add(x, *a);
    }
}

/// The lanes' reduction of `order`, for every output element.
fn combine(order: SumOrder, lanes: &[f32], out: &mut [f32]) {
    let dim = out.len();
    for (d, o) in out.iter_mut().enumerate() {
        let at = |l: usize| lanes[l * dim + d];
        let v: [f32; 16] = match order {
            SumOrder::Gemm => std::array::from_fn(at),
            SumOrder::Dot => {
                let s: [f32; 64] = std::array::from_fn(at);
                pairwise4(&s)
            }
        };
        *o = reduce16(&v);
    }
}

/// `out[j] = (q·k_j)·scale` for every f16 key row of `k` (rows of `q.len()`), summed in
/// `order`.
pub fn scores_f16(order: SumOrder, q: &[f32], k: &[half::f16], scale: f32, out: &mut [f32]) {
    let dim = q.len();
    #[cfg(target_arch = "x86_64")]
    {
        if order == SumOrder::Dot && dim.is_multiple_of(64) && crate::cpu::avx2() {
            // SAFETY: features detected; `k` holds `out.len()` rows of `dim`.
            unsafe { x86::scores_f16_dot(q, k, scale, out) };
            return;
        }
    }
    let mut kr = [0f32; 256];
    for (j, o) in out.iter_mut().enumerate() {
        for (x, h) in kr[..dim].iter_mut().zip(&k[j * dim..(j + 1) * dim]) {
            *x = h.to_f32();
        }
        *o = dot(order, q, &kr[..dim]) * scale;
    }
}

/// `out = Σ_j p[j]·v_j` over f16 value rows of `out.len()`, summed in `order`.
pub fn values_f16(order: SumOrder, p: &[f32], v: &[half::f16], out: &mut [f32]) {
    let dim = out.len();
    #[cfg(target_arch = "x86_64")]
    {
        if dim.is_multiple_of(8) && crate::cpu::avx2() {
            with_lanes(order, dim, |lanes| {
                // SAFETY: features detected; `v` holds `p.len()` rows of `dim`, a multiple
                // of 8; `lanes` holds one row of `dim` per lane.
                unsafe {
                    let v = v.as_ptr() as *const <x86::F16Rows as x86::Rows>::Elem;
                    if dim.is_multiple_of(16) && crate::cpu::avx512f() {
                        x86::lanes16::<x86::F16Rows>(order.lanes(), p, v, dim, lanes)
                    } else {
                        x86::lanes::<x86::F16Rows>(order.lanes(), p, v, dim, lanes)
                    }
                }
            });
            combine_lanes(order, out);
            return;
        }
    }
    weighted_rows(order, p, out, &mut |j, buf| {
        for (x, h) in buf.iter_mut().zip(&v[j * dim..(j + 1) * dim]) {
            *x = h.to_f32();
        }
    })
}

/// `out = Σ_j p[j]·v_j` over f32 value rows of `out.len()`, summed in `order`.
pub fn values_f32(order: SumOrder, p: &[f32], v: &[f32], out: &mut [f32]) {
    let dim = out.len();
    #[cfg(target_arch = "x86_64")]
    {
        if dim.is_multiple_of(8) && crate::cpu::avx2() {
            with_lanes(order, dim, |lanes| {
                // SAFETY: as in `values_f16`.
                unsafe {
                    let v = v.as_ptr() as *const <x86::F32Rows as x86::Rows>::Elem;
                    if dim.is_multiple_of(16) && crate::cpu::avx512f() {
                        x86::lanes16::<x86::F32Rows>(order.lanes(), p, v, dim, lanes)
                    } else {
                        x86::lanes::<x86::F32Rows>(order.lanes(), p, v, dim, lanes)
                    }
                }
            });
            combine_lanes(order, out);
            return;
        }
    }
    weighted_rows(order, p, out, &mut |j, buf| {
        buf.copy_from_slice(&v[j * dim..(j + 1) * dim])
    })
}

/// Runs `f` on this thread's lane rows, zeroed, one row of `dim` per lane of `order`.
fn with_lanes(order: SumOrder, dim: usize, f: impl FnOnce(&mut [f32])) {
    LANES.with(|cell| {
        let mut lanes = cell.borrow_mut();
        lanes.clear();
        lanes.resize(order.lanes() * dim, 0.0);
        f(&mut lanes);
    })
}

/// [`combine`] over this thread's lane rows.
fn combine_lanes(order: SumOrder, out: &mut [f32]) {
    LANES.with(|cell| combine(order, &cell.borrow(), out))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::simd::x86::hsum;
    use half::f16;
    use std::arch::x86_64::*;

    /// [`super::SumOrder::Dot`] scores, `q.len()` a multiple of 64: eight registers hold the
    /// four 16-lane accumulators (`s[2a]` lanes 0–7 of accumulator `a`, `s[2a + 1]` lanes
    /// 8–15), added `(a0 + a2) + (a1 + a3)` and reduced as `reduce16`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores_f16_dot(q: &[f32], k: &[f16], scale: f32, out: &mut [f32]) {
        let dim = q.len();
        let kp = k.as_ptr() as *const u16;
        for (j, o) in out.iter_mut().enumerate() {
            let row = kp.add(j * dim);
            let mut s = [_mm256_setzero_ps(); 8];
            for i in (0..dim).step_by(64) {
                for (e, acc) in s.iter_mut().enumerate() {
                    let kv = _mm256_cvtph_ps(_mm_loadu_si128(row.add(i + 8 * e) as *const __m128i));
                    *acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i + 8 * e)), kv, *acc);
                }
            }
            let lo = _mm256_add_ps(_mm256_add_ps(s[0], s[4]), _mm256_add_ps(s[2], s[6]));
            let hi = _mm256_add_ps(_mm256_add_ps(s[1], s[5]), _mm256_add_ps(s[3], s[7]));
            *o = hsum(_mm256_add_ps(hi, lo)) * scale;
        }
    }

    /// How a kernel reads 8 or 16 values of a row as f32.
    pub trait Rows {
        type Elem;
        unsafe fn load8(p: *const Self::Elem) -> __m256;
        unsafe fn load16(p: *const Self::Elem) -> __m512;
    }

    pub struct F16Rows;
    pub struct F32Rows;

    impl Rows for F16Rows {
        type Elem = u16;
        #[inline(always)]
        unsafe fn load8(p: *const u16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
        #[inline(always)]
        unsafe fn load16(p: *const u16) -> __m512 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        }
    }

    impl Rows for F32Rows {
        type Elem = f32;
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn load16(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
    }

    /// Lane row `l` of `lanes` = Σ over rows `j ≡ l (mod nl)`, in increasing `j`, of
    /// `p[j]·v_j`, one fused multiply-add per element. Rows are read in order and each is
    /// added to its lane row in memory (a lane's rows are `nl` rows apart, often a multiple
    /// of 4 KiB, so reading them lane by lane would keep evicting each other from L1).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn lanes<R: Rows>(
        nl: usize,
        p: &[f32],
        v: *const R::Elem,
        dim: usize,
        lanes: &mut [f32],
    ) {
        for (j, &pj) in p.iter().enumerate() {
            if pj == 0.0 {
                continue;
            }
            let pv = _mm256_set1_ps(pj);
            let acc = lanes.as_mut_ptr().add((j % nl) * dim);
            let row = v.add(j * dim);
            for d in (0..dim).step_by(8) {
                let a = _mm256_loadu_ps(acc.add(d));
                _mm256_storeu_ps(acc.add(d), _mm256_fmadd_ps(pv, R::load8(row.add(d)), a));
            }
        }
    }

    /// [`lanes`] with 512-bit registers, lane by lane (`dim` a multiple of 16): each lane's
    /// sums of 128 columns stay in registers while its rows stream past (read once each, so
    /// their 4 KiB spacing costs nothing in L1).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn lanes16<R: Rows>(
        nl: usize,
        p: &[f32],
        v: *const R::Elem,
        dim: usize,
        lanes: &mut [f32],
    ) {
        for c in (0..dim).step_by(128) {
            let w = (dim - c).min(128) / 16;
            for l in 0..nl.min(p.len()) {
                let mut acc = [_mm512_setzero_ps(); 8];
                let mut j = l;
                while j < p.len() {
                    let pj = *p.get_unchecked(j);
                    if pj != 0.0 {
                        let pv = _mm512_set1_ps(pj);
                        let row = v.add(j * dim + c);
                        for (b, a) in acc.iter_mut().enumerate().take(w) {
                            *a = _mm512_fmadd_ps(pv, R::load16(row.add(16 * b)), *a);
                        }
                    }
                    j += nl;
                }
                let out = lanes.as_mut_ptr().add(l * dim + c);
                for (b, a) in acc.iter().enumerate().take(w) {
                    _mm512_storeu_ps(out.add(16 * b), *a);
                }
            }
        }
    }

    /// Rounds to f16 and back, 8 values at a time (round to nearest even, as ggml).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn round_f16(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            let h = _mm256_cvtps_ph(_mm256_loadu_ps(c.as_ptr()), _MM_FROUND_TO_NEAREST_INT);
            _mm256_storeu_ps(c.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
        for v in chunks.into_remainder() {
            *v = half::f16::from_f32(*v).to_f32();
        }
    }

    /// A register of `W` f32 lanes: what the transposed-key score kernels need of it, so that
    /// one body serves 256- and 512-bit registers.
    pub trait Vf: Copy {
        const W: usize;
        unsafe fn zero() -> Self;
        unsafe fn set1(x: f32) -> Self;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn store(self, p: *mut f32);
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
        unsafe fn add(a: Self, b: Self) -> Self;
    }

    impl Vf for __m256 {
        const W: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn set1(x: f32) -> Self {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self)
        }
        #[inline(always)]
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            _mm256_add_ps(a, b)
        }
    }

    impl Vf for __m512 {
        const W: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn set1(x: f32) -> Self {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self)
        }
        #[inline(always)]
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            _mm512_add_ps(a, b)
        }
    }

    /// [`super::scores_t_gemm`] with 8 keys per 256-bit register (`out.len()` a multiple of 8).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores_t_gemm8(q: &[f32], kt: &[f32], stride: usize, out: &mut [f32]) {
        scores_t_gemm_v::<__m256>(q, kt, stride, out)
    }

    /// [`super::scores_t_gemm`] with 16 keys per 512-bit register (`out.len()` a multiple of
    /// 16); heads of 64 hold their query broadcasts in registers.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn scores_t_gemm16(q: &[f32], kt: &[f32], stride: usize, out: &mut [f32]) {
        if q.len() == 64 {
            scores_t_gemm64_v::<__m512>(q, kt, stride, out)
        } else {
            scores_t_gemm_v::<__m512>(q, kt, stride, out)
        }
    }

    /// `V::W` keys per register; lanes `i, i + 4, i + 8, i + 12` are summed and folded into
    /// the reduction tree's `t6[i]` before the next four, so few registers are live.
    #[inline(always)]
    unsafe fn scores_t_gemm_v<V: Vf>(q: &[f32], kt: &[f32], stride: usize, out: &mut [f32]) {
        let dim = q.len();
        let lane = |l: usize, j: usize| -> V {
            let mut a = V::zero();
            let mut d = l;
            while d < dim {
                let k = V::load(kt.as_ptr().add(d * stride + j));
                a = V::fmadd(V::set1(*q.get_unchecked(d)), k, a);
                d += 16;
            }
            a
        };
        for j in (0..out.len()).step_by(V::W) {
            let mut t6 = [V::zero(); 4];
            for (i, t) in t6.iter_mut().enumerate() {
                // t3[i] = a[i + 8] + a[i]; t3[i + 4] = a[i + 12] + a[i + 4]; t6 = t3[i + 4] + t3[i].
                let t3_lo = V::add(lane(i + 8, j), lane(i, j));
                let t3_hi = V::add(lane(i + 12, j), lane(i + 4, j));
                *t = V::add(t3_hi, t3_lo);
            }
            let t8_0 = V::add(t6[0], t6[2]);
            let t8_1 = V::add(t6[1], t6[3]);
            V::add(t8_0, t8_1).store(out.as_mut_ptr().add(j));
        }
    }

    thread_local! {
        static T6: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// [`scores_t_gemm_v`] for heads of 64: the reduction tree's four groups `t6[i]` (lanes
    /// `i, i + 4, i + 8, i + 12`) one at a time over all keys, the group's 16 query values
    /// broadcast once into registers (16 of them: for 512-bit registers, of which there are
    /// 32); the groups' sums wait in a per-thread scratch row.
    #[inline(always)]
    unsafe fn scores_t_gemm64_v<V: Vf>(q: &[f32], kt: &[f32], stride: usize, out: &mut [f32]) {
        let n = out.len();
        // The scratch row is taken out of the thread-local, not used inside its closure: the
        // closure would not inherit this function's target features, and the intrinsics in it
        // would become calls.
        let mut t6 = T6.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
        t6.clear();
        t6.resize(4 * n, 0.0);
        for i in 0..4 {
            // qb[4k + s] = q[lane_k + 16 s] for the group's lanes (i, i + 4, i + 8, i + 12).
            let at = |x: usize| i + 4 * (x / 4) + 16 * (x % 4);
            let qb: [V; 16] = std::array::from_fn(|x| V::set1(q[at(x)]));
            let lane = |k: usize, j: usize| -> V {
                let mut a = V::zero();
                for s in 0..4 {
                    let x = 4 * k + s;
                    a = V::fmadd(qb[x], V::load(kt.as_ptr().add(at(x) * stride + j)), a);
                }
                a
            };
            let dst = t6.as_mut_ptr().add(i * n);
            for j in (0..n).step_by(V::W) {
                // lanes k = 0..4 are i, i + 4, i + 8, i + 12.
                let t3_lo = V::add(lane(2, j), lane(0, j));
                let t3_hi = V::add(lane(3, j), lane(1, j));
                V::add(t3_hi, t3_lo).store(dst.add(j));
            }
        }
        let t = t6.as_ptr();
        for j in (0..n).step_by(V::W) {
            let g = |i: usize| V::load(t.add(i * n + j));
            let t8_0 = V::add(g(0), g(2));
            let t8_1 = V::add(g(1), g(3));
            V::add(t8_0, t8_1).store(out.as_mut_ptr().add(j));
        }
        T6.with(|cell| *cell.borrow_mut() = t6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// The orders written out element by element, as the C kernels run them.
    #[allow(clippy::needless_range_loop)]
    fn dot_reference(order: SumOrder, q: &[f32], k: &[f32]) -> f32 {
        let n = q.len();
        match order {
            SumOrder::Gemm => {
                let mut lanes = [0f32; 16];
                for i in 0..n {
                    lanes[i % 16] = q[i].mul_add(k[i], lanes[i % 16]);
                }
                reduce16(&lanes)
            }
            SumOrder::Dot => {
                let np = n - n % 64;
                let mut acc = [[0f32; 16]; 4];
                for i in 0..np {
                    let (j, l) = ((i % 64) / 16, i % 16);
                    acc[j][l] = q[i].mul_add(k[i], acc[j][l]);
                }
                for l in 0..16 {
                    acc[0][l] += acc[2][l];
                    acc[1][l] += acc[3][l];
                    acc[0][l] += acc[1][l];
                }
                let mut sum = reduce16(&acc[0]) as f64;
                for i in np..n {
                    sum += (q[i] * k[i]) as f64;
                }
                sum as f32
            }
        }
    }

    #[test]
    fn dot_follows_the_kernels_lane_for_lane() {
        let mut seed = 7;
        for n in [16, 64, 80, 128, 200] {
            let q: Vec<f32> = (0..n).map(|_| lcg(&mut seed) * 3.0).collect();
            let k: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let d = dot(SumOrder::Dot, &q, &k);
            assert_eq!(
                d.to_bits(),
                dot_reference(SumOrder::Dot, &q, &k).to_bits(),
                "n={n}"
            );
            if n % 16 == 0 {
                let g = dot(SumOrder::Gemm, &q, &k);
                assert_eq!(g.to_bits(), dot_reference(SumOrder::Gemm, &q, &k).to_bits());
            }
            let exact: f64 = q.iter().zip(&k).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!((d as f64 - exact).abs() < 1e-4, "n={n}: {d} vs {exact}");
        }
    }

    #[test]
    fn transposed_scores_equal_row_scores() {
        let mut seed = 11;
        // 64: the held-broadcast kernel; 128 and 48: the general one; 40 keys: 16-key blocks
        // and an 8-key tail.
        for dim in [64, 128, 48] {
            transposed_scores_case(dim, &mut seed);
        }
    }

    fn transposed_scores_case(dim: usize, seed: &mut u64) {
        let n = 40;
        let q: Vec<f32> = (0..dim).map(|_| lcg(seed)).collect();
        let k: Vec<f32> = (0..n * dim).map(|_| lcg(seed)).collect();
        let stride = 40;
        let mut kt = vec![0f32; dim * stride];
        for j in 0..n {
            for d in 0..dim {
                kt[d * stride + j] = k[j * dim + d];
            }
        }
        let mut out = vec![0f32; n];
        scores_t_gemm(&q, &kt, stride, &mut out);
        for j in 0..n {
            let want = dot_reference(SumOrder::Gemm, &q, &k[j * dim..(j + 1) * dim]);
            assert_eq!(out[j].to_bits(), want.to_bits(), "dim {dim} key {j}");
        }
    }

    #[test]
    fn f16_row_kernels_equal_the_generic_orders() {
        let mut seed = 3;
        // 64 and 128: the vector kernels; 80: a tail past the 64-element steps; 24: 8-wide.
        for dim in [64, 128, 80, 24] {
            f16_row_case(dim, &mut seed);
        }
    }

    fn f16_row_case(dim: usize, seed: &mut u64) {
        use half::f16;
        let n = 70;
        let q: Vec<f32> = (0..dim).map(|_| lcg(seed)).collect();
        let k: Vec<f16> = (0..n * dim).map(|_| f16::from_f32(lcg(seed))).collect();
        let kf: Vec<f32> = k.iter().map(|h| h.to_f32()).collect();
        let p: Vec<f32> = (0..n).map(|_| lcg(seed).abs()).collect();
        for order in [SumOrder::Dot, SumOrder::Gemm] {
            // tinyBLAS takes rows of a multiple of 16 only (SumOrder::scores).
            if order == SumOrder::Dot || dim.is_multiple_of(16) {
                let mut sc = vec![0f32; n];
                scores_f16(order, &q, &k, 0.125, &mut sc);
                for j in 0..n {
                    let want = dot_reference(order, &q, &kf[j * dim..(j + 1) * dim]) * 0.125;
                    assert_eq!(
                        sc[j].to_bits(),
                        want.to_bits(),
                        "{order:?} dim {dim} key {j}"
                    );
                }
            }
            let mut fast = vec![0f32; dim];
            values_f16(order, &p, &k, &mut fast);
            let mut slow = vec![0f32; dim];
            weighted_rows(order, &p, &mut slow, &mut |j, buf| {
                buf.copy_from_slice(&kf[j * dim..(j + 1) * dim]);
            });
            assert_eq!(fast, slow, "{order:?} dim {dim}");
            let mut from_f32 = vec![0f32; dim];
            values_f32(order, &p, &kf, &mut from_f32);
            assert_eq!(from_f32, slow, "{order:?} dim {dim}");
        }
    }

    #[test]
    fn weighted_rows_sum_each_output_in_its_lane_order() {
        let mut seed = 5;
        let (dim, n) = (8, 150);
        let v: Vec<f32> = (0..n * dim).map(|_| lcg(&mut seed)).collect();
        let mut p: Vec<f32> = (0..n).map(|_| lcg(&mut seed).abs()).collect();
        p[3] = 0.0;
        for order in [SumOrder::Dot, SumOrder::Gemm] {
            let mut out = vec![0f32; dim];
            weighted_rows(order, &p, &mut out, &mut |j, buf| {
                buf.copy_from_slice(&v[j * dim..(j + 1) * dim]);
            });
            // Each output is the dot product of p with one column, over the padded row.
            let padded = n.div_ceil(256) * 256;
            for d in 0..dim {
                let mut col = vec![0f32; padded];
                let mut pp = vec![0f32; padded];
                for j in 0..n {
                    col[j] = v[j * dim + d];
                    pp[j] = p[j];
                }
                let want = dot_reference(order, &pp, &col);
                assert_eq!(out[d].to_bits(), want.to_bits(), "{order:?} d={d}");
            }
        }
    }
}
