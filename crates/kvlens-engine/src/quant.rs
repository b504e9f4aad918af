//! Weight matrices and the matrix products of the forward pass.
//!
//! Quantized weights are multiplied the way llama.cpp's CPU backend does it: the f32
//! activations are first quantized per block of 32 to 8 bits (`Q8_1` for `Q4_1` weights,
//! `Q8_0` for `Q8_0` weights: scale `d = amax/127` rounded to f16, values `round(x·127/amax)`
//! with ties to even, and for `Q8_1` the block sum `s = d·Σq` rounded to f16), then integer
//! dot products per block are scaled and summed in f32.

use half::f16;
use rayon::prelude::*;
use std::sync::Arc;

pub const QK: usize = 32;

const Q4_1_BYTES: usize = 20;
const Q8_0_BYTES: usize = 34;

/// Bytes of a weight tensor: a range of the mapped model file, or owned.
#[derive(Clone)]
pub enum Bytes {
    Mapped(Arc<memmap2::Mmap>, std::ops::Range<usize>),
    Owned(Arc<Vec<u8>>),
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m, r) => &m[r.clone()],
            Bytes::Owned(v) => v,
        }
    }
}

/// Activations quantized to 8 bits per block of 32: (n, cols / 32) blocks.
#[derive(Debug, Default, Clone)]
pub struct Q8Acts {
    pub n: usize,
    pub blocks: usize,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub qs: Vec<i8>,
}

impl Q8Acts {
    /// Quantizes `x` (n rows of `cols`, `cols` a multiple of 32).
    pub fn quantize(x: &[f32], cols: usize) -> Self {
        let mut q = Q8Acts::default();
        q.fill(x, cols);
        q
    }

    pub fn fill(&mut self, x: &[f32], cols: usize) {
        debug_assert_eq!(cols % QK, 0);
        let blocks_total = x.len() / QK;
        self.n = x.len() / cols;
        self.blocks = cols / QK;
        self.d.resize(blocks_total, 0.0);
        self.s.resize(blocks_total, 0.0);
        self.qs.resize(blocks_total * QK, 0);
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2() {
                // SAFETY: AVX2 detected; the same scalar code, compiled with round instructions.
                unsafe { fill_avx2(self, x) };
                return;
            }
        }
        fill_blocks(self, x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fill_avx2(q: &mut Q8Acts, x: &[f32]) {
    fill_blocks(q, x)
}

#[inline(always)]
fn fill_blocks(q: &mut Q8Acts, x: &[f32]) {
    for (b, xs) in x.chunks_exact(QK).enumerate() {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (qv, &v) in q.qs[b * QK..(b + 1) * QK].iter_mut().zip(xs) {
            let r = (v * id).round_ties_even() as i32;
            *qv = r as i8;
            sum += r;
        }
        q.d[b] = f16::from_f32(d).to_f32();
        q.s[b] = f16::from_f32(d * sum as f32).to_f32();
    }
}

/// One weight matrix (rows = output features, cols = input features).
#[derive(Clone)]
pub enum Weight {
    Q4_1 {
        data: Bytes,
        rows: usize,
        cols: usize,
    },
    Q8_0 {
        data: Bytes,
        rows: usize,
        cols: usize,
    },
    F32 {
        data: Arc<Vec<f32>>,
        rows: usize,
        cols: usize,
    },
    /// Any other GGUF type, multiplied by candle's quantized kernels.
    Candle(Arc<candle_core::quantized::QMatMul>, usize, usize),
}

impl Weight {
    pub fn rows(&self) -> usize {
        match self {
            Weight::Q4_1 { rows, .. } | Weight::Q8_0 { rows, .. } | Weight::F32 { rows, .. } => {
                *rows
            }
            Weight::Candle(_, r, _) => *r,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Weight::Q4_1 { cols, .. } | Weight::Q8_0 { cols, .. } | Weight::F32 { cols, .. } => {
                *cols
            }
            Weight::Candle(_, _, c) => *c,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Weight::Q4_1 { .. } => "q4_1",
            Weight::Q8_0 { .. } => "q8_0",
            Weight::F32 { .. } => "f32",
            Weight::Candle(..) => "gguf-other",
        }
    }

    /// Whether this weight multiplies 8-bit quantized activations.
    pub fn wants_q8(&self) -> bool {
        matches!(self, Weight::Q4_1 { .. } | Weight::Q8_0 { .. })
    }

    /// `out (n, rows) = x (n, cols) · Wᵀ`; `q8` must hold `x` quantized when `wants_q8`.
    pub fn matmul(&self, x: &[f32], q8: &Q8Acts, out: &mut [f32]) {
        let n = x.len() / self.cols();
        debug_assert_eq!(out.len(), n * self.rows());
        match self {
            Weight::Q4_1 { data, rows, cols } => {
                #[cfg(target_arch = "x86_64")]
                {
                    // Worth unpacking rows into 512-bit form only when many tokens share them.
                    if q8.n >= 16 && x86::has_avx512() {
                        return matmul_q4_1_avx512(data.as_slice(), *rows, *cols, q8, out);
                    }
                }
                matmul_blocks::<Q41>(data.as_slice(), *rows, *cols, q8, out)
            }
            Weight::Q8_0 { data, rows, cols } => {
                matmul_blocks::<Q80>(data.as_slice(), *rows, *cols, q8, out)
            }
            Weight::F32 { data, rows, cols } => matmul_f32(data, *rows, *cols, x, out),
            Weight::Candle(m, _, cols) => {
                use candle_core::{Module, Tensor};
                let t = Tensor::from_slice(x, (n, *cols), &candle_core::Device::Cpu)
                    .and_then(|t| m.forward(&t))
                    .and_then(|y| y.flatten_all())
                    .and_then(|y| y.to_vec1::<f32>());
                match t {
                    Ok(v) => out.copy_from_slice(&v),
                    Err(e) => panic!("candle quantized matmul failed on valid shapes: {e}"),
                }
            }
        }
    }

    /// Row `r` as f32 (used for embeddings).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let cols = self.cols();
        match self {
            Weight::Q4_1 { data, .. } => {
                let rb = cols / QK * Q4_1_BYTES;
                let row = &data.as_slice()[r * rb..(r + 1) * rb];
                for (b, blk) in row.chunks_exact(Q4_1_BYTES).enumerate() {
                    let d = f16_at(blk, 0);
                    let m = f16_at(blk, 2);
                    for j in 0..16 {
                        out[b * QK + j] = (blk[4 + j] & 0xF) as f32 * d + m;
                        out[b * QK + j + 16] = (blk[4 + j] >> 4) as f32 * d + m;
                    }
                }
            }
            Weight::Q8_0 { data, .. } => {
                let rb = cols / QK * Q8_0_BYTES;
                let row = &data.as_slice()[r * rb..(r + 1) * rb];
                for (b, blk) in row.chunks_exact(Q8_0_BYTES).enumerate() {
                    let d = f16_at(blk, 0);
                    for j in 0..QK {
                        out[b * QK + j] = blk[2 + j] as i8 as f32 * d;
                    }
                }
            }
            Weight::F32 { data, .. } => out.copy_from_slice(&data[r * cols..(r + 1) * cols]),
            Weight::Candle(..) => unreachable!("embeddings are dequantized at load"),
        }
    }
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Block formats with a dot product against 8-bit activations, for up to 4 tokens at once
/// (the weight block is loaded and unpacked once for all of them).
trait BlockKind {
    const BYTES: usize;
    /// `out[i] = row · acts[t0 + i]` for `i < tn` (tn ≤ 4).
    fn dot4(row: &[u8], acts: &Q8Acts, t0: usize, tn: usize, out: &mut [f32; 4]);
}

struct Q41;
struct Q80;

impl BlockKind for Q41 {
    const BYTES: usize = Q4_1_BYTES;
    fn dot4(row: &[u8], acts: &Q8Acts, t0: usize, tn: usize, out: &mut [f32; 4]) {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2() {
                // SAFETY: AVX2/FMA/F16C detected at run time; `row` holds `acts.blocks` blocks.
                unsafe { x86::dot4_q4_1(row, acts, t0, tn, out) };
                return;
            }
        }
        let nb = acts.blocks;
        for (i, o) in out.iter_mut().enumerate().take(tn) {
            let t = t0 + i;
            let mut sum = 0f32;
            let mut offs = 0f32;
            for (b, blk) in row.chunks_exact(Q4_1_BYTES).enumerate() {
                let a = &acts.qs[(t * nb + b) * QK..(t * nb + b + 1) * QK];
                let mut si = 0i32;
                for j in 0..16 {
                    si += (blk[4 + j] & 0xF) as i32 * a[j] as i32
                        + (blk[4 + j] >> 4) as i32 * a[j + 16] as i32;
                }
                sum += si as f32 * (f16_at(blk, 0) * acts.d[t * nb + b]);
                offs += f16_at(blk, 2) * acts.s[t * nb + b];
            }
            *o = sum + offs;
        }
    }
}

impl BlockKind for Q80 {
    const BYTES: usize = Q8_0_BYTES;
    fn dot4(row: &[u8], acts: &Q8Acts, t0: usize, tn: usize, out: &mut [f32; 4]) {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2() {
                // SAFETY: as above.
                unsafe { x86::dot4_q8_0(row, acts, t0, tn, out) };
                return;
            }
        }
        let nb = acts.blocks;
        for (i, o) in out.iter_mut().enumerate().take(tn) {
            let t = t0 + i;
            let mut sum = 0f32;
            for (b, blk) in row.chunks_exact(Q8_0_BYTES).enumerate() {
                let a = &acts.qs[(t * nb + b) * QK..(t * nb + b + 1) * QK];
                let si: i32 = (0..QK).map(|j| blk[2 + j] as i8 as i32 * a[j] as i32).sum();
                sum += si as f32 * (f16_at(blk, 0) * acts.d[t * nb + b]);
            }
            *o = sum;
        }
    }
}

/// Raw pointer to an output buffer that parallel tasks write at disjoint indices.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a distinct set of (token, row) indices.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `i` is in bounds and no other task writes it.
    #[inline(always)]
    unsafe fn write(&self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }
}

fn row_chunk(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (rows / (threads * 8)).clamp(4, 64)
}

fn matmul_blocks<K: BlockKind>(
    data: &[u8],
    rows: usize,
    cols: usize,
    acts: &Q8Acts,
    out: &mut [f32],
) {
    let rb = cols / QK * K::BYTES;
    let n = acts.n;
    let ptr = OutPtr(out.as_mut_ptr());
    let chunk = row_chunk(rows);
    // Tokens per tile: their activations stay in cache while the tile's rows pass over them.
    const TOKEN_TILE: usize = 64;
    (0..rows.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let r0 = c * chunk;
        let r1 = (r0 + chunk).min(rows);
        let mut y = [0f32; 4];
        for tile in (0..n).step_by(TOKEN_TILE) {
            let tile_end = (tile + TOKEN_TILE).min(n);
            for r in r0..r1 {
                let row = &data[r * rb..(r + 1) * rb];
                for t0 in (tile..tile_end).step_by(4) {
                    let tn = (tile_end - t0).min(4);
                    K::dot4(row, acts, t0, tn, &mut y);
                    for (i, &v) in y.iter().enumerate().take(tn) {
                        // SAFETY: (t, r) is written by this task only; the index is in bounds.
                        unsafe { ptr.write((t0 + i) * rows + r, v) };
                    }
                }
            }
        }
    });
}

/// Q4_1 × Q8_1 with 512-bit registers: two tokens per register, each in its own 8 lanes
/// doing exactly what [`x86::dot4_q4_1`] (ggml's AVX2 `ggml_vec_dot_q4_1_q8_1`) does for one,
/// so the results are the same bits; 4 rows × 4 tokens share each unpacked weight block and
/// each activation load. Tokens left over (fewer than 4) take the per-token kernel.
#[cfg(target_arch = "x86_64")]
fn matmul_q4_1_avx512(data: &[u8], rows: usize, cols: usize, acts: &Q8Acts, out: &mut [f32]) {
    let nb = cols / QK;
    let n = acts.n;
    let ptr = OutPtr(out.as_mut_ptr());
    let chunk = row_chunk(rows);
    const TOKEN_TILE: usize = 64;
    (0..rows.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let r0 = c * chunk;
        let r1 = (r0 + chunk).min(rows);
        let mut scratch: [x86::RowScratch; 4] = std::array::from_fn(|_| x86::RowScratch::new(nb));
        let row_bytes = |r: usize| &data[r * nb * Q4_1_BYTES..(r + 1) * nb * Q4_1_BYTES];
        for tile in (0..n).step_by(TOKEN_TILE) {
            let tile_end = (tile + TOKEN_TILE).min(n);
            let full_end = tile + (tile_end - tile) / 4 * 4;
            for rg in (r0..r1).step_by(4) {
                let rn = (r1 - rg).min(4);
                // SAFETY: AVX-512 F/BW/DQ/VL/VNNI detected; each row holds `nb` blocks and the
                // activations `n` rows of `nb` blocks; (t, r) pairs are this task's own.
                unsafe {
                    for (i, sc) in scratch.iter_mut().enumerate().take(rn) {
                        sc.unpack_q4_1(row_bytes(rg + i));
                    }
                    for t0 in (tile..full_end).step_by(4) {
                        let y = x86::dot_tile4(&scratch[..rn], acts, t0);
                        for (ri, yr) in y.iter().enumerate().take(rn) {
                            for (ti, &v) in yr.iter().enumerate() {
                                ptr.write((t0 + ti) * rows + rg + ri, v);
                            }
                        }
                    }
                    if full_end < tile_end {
                        let tn = tile_end - full_end;
                        let mut y = [0f32; 4];
                        for ri in 0..rn {
                            x86::dot4_q4_1(row_bytes(rg + ri), acts, full_end, tn, &mut y);
                            for (ti, &v) in y.iter().enumerate().take(tn) {
                                ptr.write((full_end + ti) * rows + rg + ri, v);
                            }
                        }
                    }
                }
            }
        }
    });
}

fn matmul_f32(w: &[f32], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    let n = x.len() / cols;
    let ptr = OutPtr(out.as_mut_ptr());
    let chunk = row_chunk(rows);
    (0..rows.div_ceil(chunk)).into_par_iter().for_each(|c| {
        for r in c * chunk..((c + 1) * chunk).min(rows) {
            let wr = &w[r * cols..(r + 1) * cols];
            for t in 0..n {
                let y = kvlens_press::attention::dot_f32(wr, &x[t * cols..(t + 1) * cols]);
                // SAFETY: as in `matmul_blocks`.
                unsafe { ptr.write(t * rows + r, y) };
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Q8Acts, QK};
    use kvlens_press::simd::x86::hsum;
    use std::arch::x86_64::*;

    pub fn has_avx512() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512dq")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512vnni")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
        })
    }

    /// One Q4_1 weight row unpacked for 512-bit products: per block, its 32 4-bit values as
    /// bytes in both halves of a register, its scale, and its minimum.
    pub struct RowScratch {
        w: Vec<__m512i>,
        d: Vec<f32>,
        m: Vec<f32>,
    }

    impl RowScratch {
        pub fn new(nb: usize) -> Self {
            // SAFETY: zeroed vectors are valid values of these types.
            unsafe {
                Self {
                    w: vec![_mm512_setzero_si512(); nb],
                    d: vec![0.0; nb],
                    m: vec![0.0; nb],
                }
            }
        }

        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
        pub unsafe fn unpack_q4_1(&mut self, row: &[u8]) {
            let low = _mm_set1_epi8(0x0F);
            for b in 0..self.w.len() {
                let at = b * super::Q4_1_BYTES;
                self.d[b] = half(row, at);
                self.m[b] = half(row, at + 2);
                let packed = _mm_loadu_si128(row.as_ptr().add(at + 4) as *const __m128i);
                let lo = _mm_and_si128(packed, low);
                let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
                self.w[b] = _mm512_broadcast_i64x4(_mm256_set_m128i(hi, lo));
            }
        }
    }

    /// Up to four rows × four tokens (`t0..t0 + 4`), tokens in pairs per register. For each
    /// token the operations are those of [`dot4_q4_1`]: per block the integer dot product in
    /// 8 lanes, scaled by `d_w·d_a` (rounded) and fused into the accumulator, then the lanes
    /// summed as `hsum` and the minima's sum (a fused chain over blocks) added.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot_tile4(rows: &[RowScratch], acts: &Q8Acts, t0: usize) -> [[f32; 4]; 4] {
        let rn = rows.len();
        let nb = acts.blocks;
        let mut acc = [[_mm512_setzero_ps(); 2]; 4];
        let qs = acts.qs.as_ptr();
        for b in 0..nb {
            let mut x = [_mm512_setzero_si512(); 2];
            let mut da = [_mm512_setzero_ps(); 2];
            for p in 0..2 {
                let (ta, tb) = ((t0 + 2 * p) * nb + b, (t0 + 2 * p + 1) * nb + b);
                let a = _mm256_loadu_si256(qs.add(ta * QK) as *const __m256i);
                let c = _mm256_loadu_si256(qs.add(tb * QK) as *const __m256i);
                x[p] = _mm512_inserti64x4(_mm512_castsi256_si512(a), c, 1);
                da[p] = _mm512_insertf32x8(
                    _mm512_castps256_ps512(_mm256_set1_ps(*acts.d.get_unchecked(ta))),
                    _mm256_set1_ps(*acts.d.get_unchecked(tb)),
                    1,
                );
            }
            for r in 0..rn {
                let w = *rows[r].w.get_unchecked(b);
                let dw = _mm512_set1_ps(*rows[r].d.get_unchecked(b));
                for p in 0..2 {
                    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x[p]);
                    let scale = _mm512_mul_ps(dw, da[p]);
                    acc[r][p] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[r][p]);
                }
            }
        }
        let mut y = [[0f32; 4]; 4];
        for r in 0..rn {
            for t in 0..4 {
                let s = &acts.s[(t0 + t) * nb..(t0 + t + 1) * nb];
                let mut offs = 0f32;
                for (m, s) in rows[r].m.iter().zip(s) {
                    offs = m.mul_add(*s, offs);
                }
                let v = acc[r][t / 2];
                let half = if t % 2 == 0 {
                    _mm512_castps512_ps256(v)
                } else {
                    _mm512_extractf32x8_ps(v, 1)
                };
                y[r][t] = hsum(half) + offs;
            }
        }
        y
    }

    /// Whether AVX-512 VNNI (with VL) can sum u8×i8 products in one instruction.
    pub fn has_vnni() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vl")
        })
    }

    /// Σ of u8×i8 products per 32-bit lane: one `vpdpbusd` with VNNI, else maddubs + madd
    /// (the same integers either way: the i16 pair sums cannot saturate for 4-bit or |i8|
    /// weights against i8 activations, since 2·127·127 < 32768).
    #[inline(always)]
    unsafe fn dot_us8<const VNNI: bool>(w: __m256i, a: __m256i) -> __m256i {
        if VNNI {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a)
        } else {
            _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1))
        }
    }

    #[inline]
    #[target_feature(enable = "f16c")]
    unsafe fn half(b: &[u8], i: usize) -> f32 {
        let bits = u16::from_le_bytes([*b.get_unchecked(i), *b.get_unchecked(i + 1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    pub unsafe fn dot4_q4_1(row: &[u8], acts: &Q8Acts, t0: usize, tn: usize, out: &mut [f32; 4]) {
        if has_vnni() {
            dot4_q4_1_vnni(row, acts, t0, tn, out)
        } else {
            dot4_q4_1_avx2(row, acts, t0, tn, out)
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    unsafe fn dot4_q4_1_vnni(row: &[u8], acts: &Q8Acts, t0: usize, tn: usize, out: &mut [f32; 4]) {
        dot4_q4_1_impl::<true>(row, acts, t0, tn, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot4_q4_1_avx2(row: &[u8], acts: &Q8Acts, t0: usize, tn: usize, out: &mut [f32; 4]) {
        dot4_q4_1_impl::<false>(row, acts, t0, tn, out)
    }

    /// Q4_1 weights × Q8_1 activations, as ggml_vec_dot_q4_1_q8_1 on AVX2.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn dot4_q4_1_impl<const VNNI: bool>(
        row: &[u8],
        acts: &Q8Acts,
        t0: usize,
        tn: usize,
        out: &mut [f32; 4],
    ) {
        let nb = acts.blocks;
        let low = _mm_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut offs = [0f32; 4];
        let qs = acts.qs.as_ptr();
        for b in 0..nb {
            let blk = row.as_ptr().add(b * super::Q4_1_BYTES);
            let dw = half(row, b * super::Q4_1_BYTES);
            let mw = half(row, b * super::Q4_1_BYTES + 2);
            let packed = _mm_loadu_si128(blk.add(4) as *const __m128i);
            let lo = _mm_and_si128(packed, low);
            let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
            let w = _mm256_set_m128i(hi, lo);
            for i in 0..tn {
                let ab = (t0 + i) * nb + b;
                let a = _mm256_loadu_si256(qs.add(ab * QK) as *const __m256i);
                let p = dot_us8::<VNNI>(w, a);
                let scale = _mm256_set1_ps(dw * *acts.d.get_unchecked(ab));
                acc[i] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[i]);
                offs[i] = mw.mul_add(*acts.s.get_unchecked(ab), offs[i]);
            }
        }
        for i in 0..tn {
            out[i] = hsum(acc[i]) + offs[i];
        }
    }

    pub unsafe fn dot4_q8_0(row: &[u8], acts: &Q8Acts, t0: usize, tn: usize, out: &mut [f32; 4]) {
        if has_vnni() {
            dot4_q8_0_vnni(row, acts, t0, tn, out)
        } else {
            dot4_q8_0_avx2(row, acts, t0, tn, out)
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    unsafe fn dot4_q8_0_vnni(row: &[u8], acts: &Q8Acts, t0: usize, tn: usize, out: &mut [f32; 4]) {
        dot4_q8_0_impl::<true>(row, acts, t0, tn, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot4_q8_0_avx2(row: &[u8], acts: &Q8Acts, t0: usize, tn: usize, out: &mut [f32; 4]) {
        dot4_q8_0_impl::<false>(row, acts, t0, tn, out)
    }

    /// Q8_0 weights × Q8_0 activations, as ggml_vec_dot_q8_0_q8_0 on AVX2.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn dot4_q8_0_impl<const VNNI: bool>(
        row: &[u8],
        acts: &Q8Acts,
        t0: usize,
        tn: usize,
        out: &mut [f32; 4],
    ) {
        let nb = acts.blocks;
        let mut acc = [_mm256_setzero_ps(); 4];
        let qs = acts.qs.as_ptr();
        for b in 0..nb {
            let blk = row.as_ptr().add(b * super::Q8_0_BYTES);
            let dw = half(row, b * super::Q8_0_BYTES);
            let w = _mm256_loadu_si256(blk.add(2) as *const __m256i);
            let wabs = _mm256_sign_epi8(w, w);
            for i in 0..tn {
                let ab = (t0 + i) * nb + b;
                let a = _mm256_loadu_si256(qs.add(ab * QK) as *const __m256i);
                let p = dot_us8::<VNNI>(wabs, _mm256_sign_epi8(a, w));
                let scale = _mm256_set1_ps(dw * *acts.d.get_unchecked(ab));
                acc[i] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[i]);
            }
        }
        for i in 0..tn {
            out[i] = hsum(acc[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    /// Packs f32 rows into Q4_1 blocks (the reference quantizer, for tests).
    fn pack_q4_1(w: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for blk in w.chunks_exact(QK) {
            let min = blk.iter().copied().fold(f32::INFINITY, f32::min);
            let max = blk.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend(f16::from_f32(d).to_bits().to_le_bytes());
            out.extend(f16::from_f32(min).to_bits().to_le_bytes());
            for j in 0..16 {
                let lo = (((blk[j] - min) * id + 0.5) as u8).min(15);
                let hi = (((blk[j + 16] - min) * id + 0.5) as u8).min(15);
                out.push(lo | (hi << 4));
            }
        }
        out
    }

    #[test]
    fn q4_1_matmul_matches_dequantized_product() {
        let (rows, cols, n) = (37, 96, 5);
        let mut seed = 7;
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
        let wq = Weight::Q4_1 {
            data: Bytes::Owned(Arc::new(pack_q4_1(&w))),
            rows,
            cols,
        };
        let acts = Q8Acts::quantize(&x, cols);
        let mut out = vec![0f32; n * rows];
        wq.matmul(&x, &acts, &mut out);
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            wq.row(r, &mut row);
            for t in 0..n {
                // Exact reference: dequantized weights times dequantized activations.
                let mut want = 0f64;
                for b in 0..cols / QK {
                    let d = acts.d[t * cols / QK + b] as f64;
                    for j in 0..QK {
                        let a = acts.qs[t * cols + b * QK + j] as f64 * d;
                        want += row[b * QK + j] as f64 * a;
                    }
                }
                let got = out[t * rows + r] as f64;
                // The offset term uses s = d·Σq rounded to f16, as llama.cpp does.
                assert!((got - want).abs() < 2e-2, "r{r} t{t}: {got} vs {want}");
                let exact: f64 = (0..cols)
                    .map(|c| row[c] as f64 * x[t * cols + c] as f64)
                    .sum();
                assert!(
                    (got - exact).abs() < 0.15,
                    "r{r} t{t}: {got} vs exact {exact}"
                );
            }
        }
    }

    #[test]
    fn prompt_kernels_agree_with_the_per_token_kernel() {
        // 37 rows (not a multiple of the 4-row tile), 22 tokens (tile of 4 plus a remainder),
        // 96 columns (an odd number of blocks): the many-token path gives the same bits as the
        // same rows taken 2 tokens at a time (llama.cpp's per-token order either way).
        let (rows, cols, n) = (37, 96, 22);
        let mut seed = 9;
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed) * 3.0).collect();
        let wq = Weight::Q4_1 {
            data: Bytes::Owned(Arc::new(pack_q4_1(&w))),
            rows,
            cols,
        };
        let mut all = vec![0f32; n * rows];
        wq.matmul(&x, &Q8Acts::quantize(&x, cols), &mut all);
        for t0 in (0..n).step_by(2) {
            let xs = &x[t0 * cols..(t0 + 2) * cols];
            let mut part = vec![0f32; 2 * rows];
            wq.matmul(xs, &Q8Acts::quantize(xs, cols), &mut part);
            for (i, (a, b)) in all[t0 * rows..(t0 + 2) * rows]
                .iter()
                .zip(&part)
                .enumerate()
            {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "token {} row {}: {a} vs {b}",
                    t0 + i / rows,
                    i % rows
                );
            }
        }
    }

    #[test]
    fn activation_quantization_follows_llama_cpp() {
        let mut x = vec![0f32; 32];
        x[0] = 127.0;
        x[1] = 0.5; // tie: rounds to even (0)
        x[2] = 1.5; // tie: rounds to even (2)
        x[3] = -63.4;
        let q = Q8Acts::quantize(&x, 32);
        assert_eq!(q.d[0], 1.0);
        assert_eq!(&q.qs[..4], &[127, 0, 2, -63]);
        assert_eq!(q.s[0], 66.0);
    }
}
