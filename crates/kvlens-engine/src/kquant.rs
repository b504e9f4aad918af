//! The K-quants (Q4_K, Q5_K, Q6_K: superblocks of 256 weights) multiplied in llama.cpp's
//! numerics, against activations quantized to Q8_K.
//!
//! llama.cpp's x86 CPU backend (ggml-cpu, AVX2 build) has three float orders for these formats,
//! chosen per matrix and per number of tokens; the integer parts are exact, so only the float
//! steps below need to be followed:
//! - `ggml_vec_dot_q{4,5,6}_K_q8_K` (arch/x86/quants.c), for fewer than 8 tokens: per
//!   superblock, the integer sums in 8 lanes fused with `d_a·d_w` into 8 accumulators, the
//!   minima `Σ m·bsum` fused beside (4 lanes for Q4_K, one chain for Q5_K), lanes summed at the
//!   end as `hsum_float_8`.
//! - The tiled kernel (ggml-cpu/tiled/), for 8 tokens or more: per superblock
//!   `r = d_w·S − m_w·M` (one rounding for the minimum), then `acc = fma(r, d_a, acc)`.
//! - Q4_K matrices whose row count is a multiple of 8 are repacked at load (repack.cpp,
//!   `q4_K_8x8`). Of n tokens, the first 4·⌊n/4⌋ (when n > 3) go through its gemm and the rest
//!   through its gemv: `A = fma(S, d_w·d_a, A)`, `M = fma(Mi, m_w·d_a, M)`, result `A − M`,
//!   with `S`, `Mi` the sums of a whole superblock in the gemv and of each 64 weights in the
//!   gemm (arch/x86/repack.cpp).
//!
//! Q8_K (ggml-quants.c, `quantize_row_q8_K_ref`): per 256 values, the first value of largest
//! magnitude `max`, `iscale = −127/max`, `q = round_half_even(iscale·x)`, `d = 1/iscale` in
//! f32, and the sums of each 16 values.

use crate::quant::Bytes;
use half::f16;
use kvlens_press::cpu;
use rayon::prelude::*;

pub const QK_K: usize = 256;

/// A K-quant format with a kernel here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KFmt {
    Q4K,
    Q5K,
    Q6K,
}

/// Which of llama.cpp's float orders a product follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    VecDot,
    Tiled,
    /// Repacked Q4_K, one token (`ggml_gemv_q4_K_8x8_q8_K`).
    Repacked,
    /// Repacked Q4_K, groups of 4 tokens (`ggml_gemm_q4_K_8x8_q8_K`): fused per 64 weights.
    RepackedGemm,
}

impl KFmt {
    pub fn from_ggml(t: candle_core::quantized::GgmlDType) -> Option<Self> {
        use candle_core::quantized::GgmlDType as G;
        Some(match t {
            G::Q4K => KFmt::Q4K,
            G::Q5K => KFmt::Q5K,
            G::Q6K => KFmt::Q6K,
            _ => return None,
        })
    }

    /// Bytes per superblock of 256 weights (ggml-common.h).
    pub const fn bytes(self) -> usize {
        match self {
            KFmt::Q4K => 144,
            KFmt::Q5K => 176,
            KFmt::Q6K => 210,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KFmt::Q4K => "q4_k",
            KFmt::Q5K => "q5_k",
            KFmt::Q6K => "q6_k",
        }
    }

    /// The order llama.cpp uses for a matrix of `rows` rows and `n` tokens of one sequence.
    pub fn order(self, rows: usize, n: usize) -> Order {
        if self == KFmt::Q4K && rows.is_multiple_of(8) {
            Order::Repacked
        } else if n >= 8 {
            Order::Tiled
        } else {
            Order::VecDot
        }
    }
}

/// Activations quantized to Q8_K: (n, cols/256) superblocks.
#[derive(Debug, Default, Clone)]
pub struct Q8K {
    pub blocks: usize,
    pub d: Vec<f32>,
    pub qs: Vec<i8>,
    pub bsums: Vec<i32>,
}

impl Q8K {
    /// Quantizes `x` (rows of `cols`, `cols` a multiple of 256).
    pub fn quantize(x: &[f32], cols: usize) -> Self {
        debug_assert_eq!(cols % QK_K, 0);
        let nb = x.len() / QK_K;
        let mut q = Q8K {
            blocks: cols / QK_K,
            d: vec![0.0; nb],
            qs: vec![0; nb * QK_K],
            bsums: vec![0; nb * 16],
        };
        for (b, xs) in x.chunks_exact(QK_K).enumerate() {
            let (mut amax, mut max) = (0f32, 0f32);
            for &v in xs {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            if amax == 0.0 {
                continue;
            }
            let iscale = -127.0f32 / max;
            let qs = &mut q.qs[b * QK_K..(b + 1) * QK_K];
            for (o, &v) in qs.iter_mut().zip(xs) {
                *o = ((iscale * v).round_ties_even() as i32).min(127) as i8;
            }
            for (g, s) in q.bsums[b * 16..(b + 1) * 16].iter_mut().enumerate() {
                *s = qs[g * 16..(g + 1) * 16].iter().map(|&v| v as i32).sum();
            }
            q.d[b] = 1.0 / iscale;
        }
        q
    }
}

/// One superblock unpacked: its 256 weights as unsigned integers in element order, the
/// scales (8 for Q4_K/Q5_K, per 32 weights; 16 signed ones for Q6_K, per 16) and minima.
#[derive(Clone)]
struct Unpacked {
    w: [u8; QK_K],
    sc: [i32; 16],
    mn: [i32; 8],
    dw: f32,
    mw: f32,
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// ggml's `get_scale_min_k4`: 6-bit scales and minima packed in 12 bytes.
fn scales_k4(s: &[u8], sc: &mut [i32; 16], mn: &mut [i32; 8]) {
    for j in 0..8 {
        let (a, m) = if j < 4 {
            (s[j] & 63, s[j + 4] & 63)
        } else {
            (
                (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
                (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
            )
        };
        sc[j] = a as i32;
        mn[j] = m as i32;
    }
}

fn unpack(fmt: KFmt, b: &[u8], u: &mut Unpacked) {
    match fmt {
        KFmt::Q4K | KFmt::Q5K => {
            u.dw = f16_at(b, 0);
            u.mw = f16_at(b, 2);
            scales_k4(&b[4..16], &mut u.sc, &mut u.mn);
            let (qh, qs) = if fmt == KFmt::Q5K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for c in 0..4 {
                for l in 0..32 {
                    let q = qs[32 * c + l];
                    let (mut lo, mut hi) = (q & 0xF, q >> 4);
                    if let Some(h) = qh {
                        lo |= ((h[l] >> (2 * c)) & 1) << 4;
                        hi |= ((h[l] >> (2 * c + 1)) & 1) << 4;
                    }
                    u.w[64 * c + l] = lo;
                    u.w[64 * c + 32 + l] = hi;
                }
            }
        }
        KFmt::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            u.dw = f16_at(b, 208);
            u.mw = 0.0;
            for (o, &s) in u.sc.iter_mut().zip(sc) {
                *o = s as i8 as i32;
            }
            for h in 0..2 {
                let (ql, qh, e0) = (&ql[64 * h..], &qh[32 * h..], 128 * h);
                for l in 0..32 {
                    u.w[e0 + l] = (ql[l] & 15) | (qh[l] & 3) << 4;
                    u.w[e0 + 32 + l] = (ql[32 + l] & 15) | ((qh[l] >> 2) & 3) << 4;
                    u.w[e0 + 64 + l] = (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4;
                    u.w[e0 + 96 + l] = (ql[32 + l] >> 4) | ((qh[l] >> 6) & 3) << 4;
                }
            }
        }
    }
}

/// The integer sums of one superblock against one token's Q8_K block: per lane `u` (elements
/// `4u..4u+4` of every 32), the scaled sums `S[u]` as ggml's AVX2 `vec_dot` forms them, and the
/// minima sum per pair of 32-weight groups `P[v]` (Q4_K/Q5_K).
#[inline(always)]
fn ints(fmt: KFmt, u: &Unpacked, q: &[i8], bs: &[i32]) -> ([i32; 8], [i32; 4], [i32; 4]) {
    let mut s = [0i32; 8];
    // Per 64 weights (Q4_K/Q5_K): the scaled sums of its two groups of 32.
    let mut per64 = [0i32; 4];
    for c in 0..8 {
        let (w, q) = (&u.w[32 * c..32 * c + 32], &q[32 * c..32 * c + 32]);
        let mut lane = [0i32; 8];
        for (e, l) in lane.iter_mut().enumerate() {
            *l = (0..4)
                .map(|k| w[4 * e + k] as i32 * q[4 * e + k] as i32)
                .sum();
        }
        for (k, (o, l)) in s.iter_mut().zip(lane).enumerate() {
            let sc = match fmt {
                KFmt::Q6K => u.sc[2 * c + (k >= 4) as usize],
                _ => u.sc[c],
            };
            *o += sc * l;
        }
        if fmt != KFmt::Q6K {
            per64[c / 2] += u.sc[c] * lane.iter().sum::<i32>();
        }
    }
    let mut p = [0i32; 4];
    match fmt {
        KFmt::Q6K => {
            for (k, o) in s.iter_mut().enumerate() {
                *o -= 32 * (u.sc[2 * k] * bs[2 * k] + u.sc[2 * k + 1] * bs[2 * k + 1]);
            }
        }
        _ => {
            for (v, o) in p.iter_mut().enumerate() {
                let pair = |g: usize| u.mn[g] * (bs[2 * g] + bs[2 * g + 1]);
                *o = pair(2 * v) + pair(2 * v + 1);
            }
        }
    }
    (s, p, per64)
}

#[inline(always)]
fn hsum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// One output: a row's superblocks against one token's.
#[inline(always)]
fn dot(fmt: KFmt, order: Order, row: &[Unpacked], acts: &Q8K, t: usize) -> f32 {
    let nb = acts.blocks;
    let mut acc = [0f32; 8];
    let mut accm = [0f32; 4];
    let (mut summs, mut whole, mut mins) = (0f32, 0f32, 0f32);
    for (b, u) in row.iter().enumerate() {
        let at = t * nb + b;
        let d = acts.d[at];
        let q = &acts.qs[at * QK_K..(at + 1) * QK_K];
        let bs = &acts.bsums[at * 16..(at + 1) * 16];
        let (s, p, per64) = ints(fmt, u, q, bs);
        match order {
            Order::VecDot => {
                let dd = d * u.dw;
                let dm = -d * u.mw;
                for (a, &si) in acc.iter_mut().zip(&s) {
                    *a = dd.mul_add(si as f32, *a);
                }
                match fmt {
                    KFmt::Q4K => {
                        for (a, &pi) in accm.iter_mut().zip(&p) {
                            *a = dm.mul_add(pi as f32, *a);
                        }
                    }
                    KFmt::Q5K => {
                        let m: i32 = p.iter().sum();
                        summs = (m as f32).mul_add(dm, summs);
                    }
                    KFmt::Q6K => {}
                }
            }
            Order::Tiled => {
                let total: i32 = s.iter().sum();
                let mut r = u.dw * total as f32;
                if fmt != KFmt::Q6K {
                    let m: i32 = p.iter().sum();
                    r = (-u.mw).mul_add(m as f32, r);
                }
                whole = r.mul_add(d, whole);
            }
            Order::Repacked => {
                let total: i32 = s.iter().sum();
                let m: i32 = p.iter().sum();
                whole = (total as f32).mul_add(u.dw * d, whole);
                mins = (m as f32).mul_add(u.mw * d, mins);
            }
            Order::RepackedGemm => {
                for (&si, &mi) in per64.iter().zip(&p) {
                    whole = (si as f32).mul_add(u.dw * d, whole);
                    mins = (mi as f32).mul_add(u.mw * d, mins);
                }
            }
        }
    }
    match order {
        Order::VecDot => {
            let h = hsum8(&acc);
            match fmt {
                KFmt::Q4K => h + ((accm[0] + accm[2]) + (accm[1] + accm[3])),
                KFmt::Q5K => h + summs,
                KFmt::Q6K => h,
            }
        }
        Order::Tiled => whole,
        Order::Repacked | Order::RepackedGemm => whole - mins,
    }
}

/// `out[t·rows + r]` for the tokens `tokens` of `acts`: `W (rows, cols) · x_t`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    fmt: KFmt,
    order: Order,
    data: &Bytes,
    rows: usize,
    cols: usize,
    acts: &Q8K,
    tokens: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let nb = cols / QK_K;
    let rb = nb * fmt.bytes();
    let data = data.as_slice();
    let n = tokens.len();
    if n == 0 {
        return;
    }
    // Row-major results, each row's tokens together; scattered into `out` below.
    let mut by_row = vec![0f32; rows * n];
    by_row
        .par_chunks_mut(n * 8)
        .enumerate()
        .for_each(|(chunk, ys)| {
            let blank = Unpacked {
                w: [0; QK_K],
                sc: [0; 16],
                mn: [0; 8],
                dw: 0.0,
                mw: 0.0,
            };
            let mut row = vec![blank; nb];
            for (i, ys) in ys.chunks_mut(n).enumerate() {
                let r = chunk * 8 + i;
                for (b, u) in row.iter_mut().enumerate() {
                    unpack(fmt, &data[r * rb + b * fmt.bytes()..][..fmt.bytes()], u);
                }
                for (y, t) in ys.iter_mut().zip(tokens.clone()) {
                    *y = dot_dispatch(fmt, order, &row, acts, t);
                }
            }
        });
    for (r, ys) in by_row.chunks_exact(n).enumerate() {
        for (y, t) in ys.iter().zip(tokens.clone()) {
            out[t * rows + r] = *y;
        }
    }
}

fn dot_dispatch(fmt: KFmt, order: Order, row: &[Unpacked], acts: &Q8K, t: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if cpu::avx2() {
            // SAFETY: AVX2 and FMA detected; the same code, compiled with them (fused
            // multiply-adds in hardware rather than in software).
            return unsafe { dot_avx2(fmt, order, row, acts, t) };
        }
    }
    dot(fmt, order, row, acts, t)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(fmt: KFmt, order: Order, row: &[Unpacked], acts: &Q8K, t: usize) -> f32 {
    dot(fmt, order, row, acts, t)
}

/// Row `r` dequantized as ggml's `dequantize_row_q*_K` does.
pub fn row(fmt: KFmt, data: &Bytes, cols: usize, r: usize, out: &mut [f32]) {
    let nb = cols / QK_K;
    let rb = nb * fmt.bytes();
    let data = data.as_slice();
    let mut u = Unpacked {
        w: [0; QK_K],
        sc: [0; 16],
        mn: [0; 8],
        dw: 0.0,
        mw: 0.0,
    };
    for (b, o) in out.chunks_exact_mut(QK_K).enumerate() {
        unpack(
            fmt,
            &data[r * rb + b * fmt.bytes()..][..fmt.bytes()],
            &mut u,
        );
        for (e, y) in o.iter_mut().enumerate() {
            *y = match fmt {
                KFmt::Q6K => u.dw * u.sc[e / 16] as f32 * (u.w[e] as i32 - 32) as f32,
                _ => {
                    let g = e / 32;
                    (u.dw * u.sc[g] as f32) * u.w[e] as f32 - u.mw * u.mn[g] as f32
                }
            };
        }
    }
}
