//! Weight matrices and the matrix products of the forward pass, in llama.cpp's numerics.
//!
//! llama.cpp's CPU backend multiplies each weight format against the activations converted to
//! that format's `vec_dot_type` (`type_traits_cpu` in ggml-cpu.c): F16 weights against the
//! activations rounded to f16; Q4_0, Q5_0 and Q8_0 weights against Q8_0 blocks; Q4_1 and Q5_1
//! against Q8_1 blocks (Q8_0 with the block sum). An [`Input`] is one activation matrix with
//! each of these forms made the first time a matrix asks for it, so every matrix reads the
//! form its own kernel needs, whatever the formats of the matrices beside it.
//!
//! 8-bit activations, per block of 32: scale `d = amax/127` rounded to f16, values
//! `round(x·127/amax)` with ties to even, and for Q8_1 the block sum `s = d·Σq` rounded to
//! f16. The block products follow ggml's AVX2 `ggml_vec_dot_*` (ggml-cpu/arch/x86/quants.c):
//! per block the integer products summed in 8 lanes of 4 elements, scaled by `d_w·d_a` and
//! fused into one accumulator per lane, the lanes summed at the end, and for Q4_1/Q5_1 the
//! minima `Σ m·s` fused in a chain beside. Q4_0 matrices of a multiple of 8 rows are what
//! llama.cpp repacks (ggml-cpu/repack.cpp, on by default with AVX2): there each block's
//! integer product is summed whole and fused into one accumulator per output. For several
//! tokens llama.cpp runs Q4_0, Q5_0 and Q8_0 through tinyBLAS, whose operations per output
//! are the same as `ggml_vec_dot_*`'s. F16 weights follow the f16 orders of
//! [`kvlens_press::sums`] (tinyBLAS for several tokens, `ggml_vec_dot_f16` for one). Q4_K,
//! Q5_K and Q6_K follow [`crate::kquant`]. Formats without a kernel here (Q2_K, Q3_K, BF16, ...)
//! run on candle's kernels ([`Weight::kernel`]).

use crate::kquant::{self, KFmt, Q8K};
use candle_core::quantized::{GgmlDType, QMatMul};
use half::f16;
use kvlens_press::cpu;
use kvlens_press::sums::{self, SumOrder};
use rayon::prelude::*;
use std::cell::OnceCell;
use std::sync::Arc;

pub const QK: usize = 32;

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
            if cpu::avx2() {
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

/// One activation matrix (n rows of `cols`) and the forms the weight kernels read, each made
/// on first use and shared by every matrix that multiplies this input.
///
/// The rows may belong to several sequences of a batched step ([`Input::segmented`]): a
/// kernel whose order llama.cpp chooses by the number of tokens (F16), and candle's kernels,
/// then run each sequence's rows on their own, so that a sequence gets the same bits in any
/// batch.
pub struct Input<'a> {
    x: &'a [f32],
    cols: usize,
    /// Rows per sequence, in order; empty for one sequence.
    segments: Vec<usize>,
    q8: OnceCell<Q8Acts>,
    q8k: OnceCell<Q8K>,
    f16: OnceCell<Vec<f32>>,
}

impl<'a> Input<'a> {
    /// The rows of one sequence.
    pub fn new(x: &'a [f32], cols: usize) -> Self {
        Self::segmented(x, cols, &[])
    }

    /// The rows of several sequences, `segments[i]` rows for the i-th (summing to all rows).
    pub fn segmented(x: &'a [f32], cols: usize, segments: &[usize]) -> Self {
        debug_assert_eq!(x.len() % cols, 0);
        debug_assert!(segments.is_empty() || segments.iter().sum::<usize>() * cols == x.len());
        Self {
            x,
            cols,
            segments: segments.to_vec(),
            q8: OnceCell::new(),
            q8k: OnceCell::new(),
            f16: OnceCell::new(),
        }
    }

    /// Row ranges of the sequences (one range when not segmented).
    fn spans(&self) -> Vec<std::ops::Range<usize>> {
        if self.segments.len() <= 1 {
            return std::iter::once(0..self.rows()).collect();
        }
        let mut at = 0;
        self.segments
            .iter()
            .map(|&n| {
                at += n;
                at - n..at
            })
            .collect()
    }

    /// The number of rows (tokens).
    pub fn rows(&self) -> usize {
        self.x.len() / self.cols
    }

    /// Quantized to Q8_0/Q8_1 blocks (the two share scales and values; Q8_1 adds the sums).
    pub fn q8(&self) -> &Q8Acts {
        self.q8.get_or_init(|| Q8Acts::quantize(self.x, self.cols))
    }

    /// Quantized to Q8_K superblocks (the K-quants' activations).
    pub fn q8k(&self) -> &Q8K {
        self.q8k.get_or_init(|| Q8K::quantize(self.x, self.cols))
    }

    /// Rounded to f16 (and held as f32), as ggml converts the operand of an f16 product.
    fn f16(&self) -> &[f32] {
        self.f16.get_or_init(|| {
            let mut v = self.x.to_vec();
            sums::round_f16(&mut v);
            v
        })
    }
}

/// The block formats kvlens multiplies with its own kernels (layouts of ggml-common.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// `d`, 16 bytes of nibbles; `w = d·(q − 8)`.
    Q4_0,
    /// `d`, `m`, 16 bytes of nibbles; `w = d·q + m`.
    Q4_1,
    /// `d`, 32 high bits, 16 bytes of nibbles; `w = d·(q − 16)`.
    Q5_0,
    /// `d`, `m`, 32 high bits, 16 bytes of nibbles; `w = d·q + m`.
    Q5_1,
    /// `d`, 32 signed bytes; `w = d·q`.
    Q8_0,
}

impl Block {
    pub fn from_ggml(t: GgmlDType) -> Option<Self> {
        Some(match t {
            GgmlDType::Q4_0 => Block::Q4_0,
            GgmlDType::Q4_1 => Block::Q4_1,
            GgmlDType::Q5_0 => Block::Q5_0,
            GgmlDType::Q5_1 => Block::Q5_1,
            GgmlDType::Q8_0 => Block::Q8_0,
            _ => return None,
        })
    }

    /// Bytes per block of 32 weights.
    pub const fn bytes(self) -> usize {
        match self {
            Block::Q4_0 => Q40::BYTES,
            Block::Q4_1 => Q41::BYTES,
            Block::Q5_0 => Q50::BYTES,
            Block::Q5_1 => Q51::BYTES,
            Block::Q8_0 => Q80::BYTES,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Block::Q4_0 => "q4_0",
            Block::Q4_1 => "q4_1",
            Block::Q5_0 => "q5_0",
            Block::Q5_1 => "q5_1",
            Block::Q8_0 => "q8_0",
        }
    }
}

/// One weight matrix (rows = output features, cols = input features).
#[derive(Clone)]
pub struct Weight {
    rows: usize,
    cols: usize,
    store: Store,
}

#[derive(Clone)]
enum Store {
    Blocks(Block, Bytes),
    /// K-quant superblocks of 256.
    K(KFmt, Bytes),
    /// Little-endian f16 values, row-major.
    F16(Bytes),
    F32(Arc<Vec<f32>>),
    /// Any other GGUF type, multiplied by candle's quantized kernels.
    Candle(Arc<QMatMul>, GgmlDType),
}

/// Which code multiplies a matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// kvlens's own, in llama.cpp's order.
    Kvlens,
    /// candle's quantized kernels (not llama.cpp's bits).
    Candle,
}

impl Weight {
    /// Quantized blocks; `data` holds `rows · cols/32` blocks (`cols` a multiple of 32).
    pub fn blocks(block: Block, data: Bytes, rows: usize, cols: usize) -> Self {
        debug_assert!(cols.is_multiple_of(QK));
        debug_assert_eq!(data.as_slice().len(), rows * cols / QK * block.bytes());
        Self {
            rows,
            cols,
            store: Store::Blocks(block, data),
        }
    }

    /// K-quant superblocks; `data` holds `rows · cols/256` of them.
    pub fn kquant(fmt: KFmt, data: Bytes, rows: usize, cols: usize) -> Self {
        debug_assert!(cols.is_multiple_of(kquant::QK_K));
        debug_assert_eq!(
            data.as_slice().len(),
            rows * cols / kquant::QK_K * fmt.bytes()
        );
        Self {
            rows,
            cols,
            store: Store::K(fmt, data),
        }
    }

    /// Little-endian f16 values, `rows · cols` of them.
    pub fn f16(data: Bytes, rows: usize, cols: usize) -> Self {
        debug_assert_eq!(data.as_slice().len(), rows * cols * 2);
        Self {
            rows,
            cols,
            store: Store::F16(data),
        }
    }

    pub fn f32(data: Arc<Vec<f32>>, rows: usize, cols: usize) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        Self {
            rows,
            cols,
            store: Store::F32(data),
        }
    }

    /// A matrix of any GGUF type candle can multiply.
    pub fn candle(m: Arc<QMatMul>, dtype: GgmlDType, rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            store: Store::Candle(m, dtype),
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The stored format, as llama.cpp names it in lower case (`q4_1`, `f16`, `q6_k`).
    pub fn kind(&self) -> String {
        match &self.store {
            Store::Blocks(b, _) => b.name().to_string(),
            Store::K(f, _) => f.name().to_string(),
            Store::F16(_) => "f16".into(),
            Store::F32(_) => "f32".into(),
            Store::Candle(_, t) => ggml_name(*t),
        }
    }

    /// Bytes the matrix occupies as stored (what one pass over it reads).
    pub fn bytes(&self) -> usize {
        match &self.store {
            Store::Blocks(_, d) | Store::K(_, d) | Store::F16(d) => d.as_slice().len(),
            Store::F32(v) => v.len() * 4,
            Store::Candle(_, t) => self.rows * self.cols / t.block_size() * t.type_size(),
        }
    }

    /// Which code multiplies this matrix.
    pub fn kernel(&self) -> Kernel {
        match self.store {
            Store::Candle(..) => Kernel::Candle,
            _ => Kernel::Kvlens,
        }
    }

    /// `out (n, rows) = x (n, cols) · Wᵀ` for the input `x`.
    pub fn matmul(&self, x: &Input, out: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        debug_assert_eq!(x.cols, cols);
        debug_assert_eq!(out.len(), x.rows() * rows);
        match &self.store {
            Store::Blocks(block, data) => {
                let (data, acts) = (data.as_slice(), x.q8());
                match block {
                    Block::Q4_1 => {
                        #[cfg(target_arch = "x86_64")]
                        {
                            // Worth unpacking rows into 512-bit form only when many tokens
                            // share them.
                            if acts.n >= 16 && cpu::avx512() {
                                return matmul_q4_1_avx512(data, rows, cols, acts, out);
                            }
                        }
                        matmul_blocks::<Q41>(data, rows, cols, acts, out)
                    }
                    Block::Q4_0 if rows.is_multiple_of(8) => {
                        matmul_blocks::<Q40x8>(data, rows, cols, acts, out)
                    }
                    Block::Q4_0 => matmul_blocks::<Q40>(data, rows, cols, acts, out),
                    Block::Q5_0 => matmul_blocks::<Q50>(data, rows, cols, acts, out),
                    Block::Q5_1 => matmul_blocks::<Q51>(data, rows, cols, acts, out),
                    Block::Q8_0 => matmul_blocks::<Q80>(data, rows, cols, acts, out),
                }
            }
            Store::K(fmt, data) => {
                let acts = x.q8k();
                for span in x.spans() {
                    let order = fmt.order(rows, span.len());
                    if order == kquant::Order::Repacked {
                        // llama.cpp's gemm takes whole groups of 4 tokens (from 4 on), its
                        // gemv the rest.
                        let n = span.len();
                        let split = span.start + if n > 3 { n - n % 4 } else { 0 };
                        let gemm = kquant::Order::RepackedGemm;
                        kquant::matmul(*fmt, gemm, data, rows, cols, acts, span.start..split, out);
                        kquant::matmul(*fmt, order, data, rows, cols, acts, split..span.end, out);
                    } else {
                        kquant::matmul(*fmt, order, data, rows, cols, acts, span, out);
                    }
                }
            }
            Store::F16(data) => {
                let x16 = x.f16();
                for span in x.spans() {
                    let (xs, ys) = (
                        span.start * cols..span.end * cols,
                        span.start * rows..span.end * rows,
                    );
                    matmul_f16(data.as_slice(), rows, cols, &x16[xs], &mut out[ys]);
                }
            }
            Store::F32(data) => matmul_f32(data, rows, cols, x.x, out),
            Store::Candle(m, _) => {
                use candle_core::{Module, Tensor};
                for span in x.spans().into_iter().filter(|s| !s.is_empty()) {
                    let xs = &x.x[span.start * cols..span.end * cols];
                    let t = Tensor::from_slice(xs, (span.len(), cols), &candle_core::Device::Cpu)
                        .and_then(|t| m.forward(&t))
                        .and_then(|y| y.flatten_all())
                        .and_then(|y| y.to_vec1::<f32>());
                    match t {
                        Ok(v) => out[span.start * rows..span.end * rows].copy_from_slice(&v),
                        Err(e) => panic!("candle quantized matmul failed on valid shapes: {e}"),
                    }
                }
            }
        }
    }

    /// Row `r` as f32 (used for embeddings; a candle-only format is dequantized at load).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let cols = self.cols;
        match &self.store {
            Store::Blocks(block, data) => {
                let rb = cols / QK * block.bytes();
                let row = &data.as_slice()[r * rb..(r + 1) * rb];
                let mut q = [0i8; QK];
                for (blk, o) in row
                    .chunks_exact(block.bytes())
                    .zip(out.chunks_exact_mut(QK))
                {
                    let (d, m) = match block {
                        Block::Q4_0 => Q40::ints(blk, &mut q),
                        Block::Q4_1 => Q41::ints(blk, &mut q),
                        Block::Q5_0 => Q50::ints(blk, &mut q),
                        Block::Q5_1 => Q51::ints(blk, &mut q),
                        Block::Q8_0 => Q80::ints(blk, &mut q),
                    };
                    // As ggml's dequantize_row_*: `q·d`, plus `m` where the format has one.
                    let with_min = matches!(block, Block::Q4_1 | Block::Q5_1);
                    for (o, &v) in o.iter_mut().zip(&q) {
                        *o = if with_min {
                            v as f32 * d + m
                        } else {
                            v as f32 * d
                        };
                    }
                }
            }
            Store::K(fmt, data) => kquant::row(*fmt, data, cols, r, out),
            Store::F16(data) => {
                let row = &data.as_slice()[r * cols * 2..(r + 1) * cols * 2];
                for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                    *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            Store::F32(data) => out.copy_from_slice(&data[r * cols..(r + 1) * cols]),
            Store::Candle(..) => {
                unreachable!("embeddings in candle-only formats are dequantized at load")
            }
        }
    }
}

/// A GGUF type as llama.cpp names it, in lower case (`q6_k`, `bf16`).
pub fn ggml_name(t: GgmlDType) -> String {
    match t {
        GgmlDType::Q2K => "q2_k".into(),
        GgmlDType::Q3K => "q3_k".into(),
        GgmlDType::Q4K => "q4_k".into(),
        GgmlDType::Q5K => "q5_k".into(),
        GgmlDType::Q6K => "q6_k".into(),
        GgmlDType::Q8K => "q8_k".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// A block format with a dot product against 8-bit activations.
trait Fmt {
    const BYTES: usize;
    /// The block has a minimum `m` (multiplied against the activations' block sums, Q8_1).
    const MIN: bool;
    /// The integers are signed (ggml multiplies them through the sign trick).
    const SIGNED: bool;
    /// Each block's integer product is summed whole and fused into one accumulator per
    /// output (ggml's repacked kernels) instead of into 8 lanes summed at the end.
    const WHOLE: bool = false;
    /// The block's 32 weights as integers, with its scale and minimum (0 without one).
    fn ints(blk: &[u8], q: &mut [i8; QK]) -> (f32, f32);
    /// The same integers in one register, element `j` in byte `j`.
    ///
    /// # Safety
    /// AVX2 is available and `blk` points at a whole block.
    #[cfg(target_arch = "x86_64")]
    unsafe fn ints_avx2(blk: *const u8) -> std::arch::x86_64::__m256i;
}

struct Q40;
/// Q4_0 as llama.cpp multiplies it once repacked: on x86 with AVX2 its CPU backend
/// interleaves every Q4_0 matrix whose row count is a multiple of 8 into `block_q4_0x8`
/// (ggml-cpu/repack.cpp, on by default) and sums each block's products whole.
struct Q40x8;
struct Q41;
struct Q50;
struct Q51;
struct Q80;

/// Nibbles of 16 bytes: element `j` the low nibble of byte `j`, element `16 + j` its high one.
#[inline(always)]
fn nibbles(qs: &[u8], q: &mut [i8; QK], offset: i8) {
    for j in 0..16 {
        q[j] = (qs[j] & 0xF) as i8 - offset;
        q[j + 16] = (qs[j] >> 4) as i8 - offset;
    }
}

/// Nibbles with a fifth bit from the 32 bits `qh` (bit `j` for element `j`).
#[inline(always)]
fn nibbles5(qh: &[u8], qs: &[u8], q: &mut [i8; QK], offset: i8) {
    let h = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    for j in 0..16 {
        let lo = (qs[j] & 0xF) | ((((h >> j) & 1) as u8) << 4);
        let hi = (qs[j] >> 4) | ((((h >> (j + 16)) & 1) as u8) << 4);
        q[j] = lo as i8 - offset;
        q[j + 16] = hi as i8 - offset;
    }
}

impl Fmt for Q40 {
    const BYTES: usize = 18;
    const MIN: bool = false;
    const SIGNED: bool = true;
    fn ints(blk: &[u8], q: &mut [i8; QK]) -> (f32, f32) {
        nibbles(&blk[2..18], q, 8);
        (f16_at(blk, 0), 0.0)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn ints_avx2(blk: *const u8) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        _mm256_sub_epi8(x86::nibbles(blk.add(2)), _mm256_set1_epi8(8))
    }
}

impl Fmt for Q40x8 {
    const BYTES: usize = Q40::BYTES;
    const MIN: bool = false;
    const SIGNED: bool = true;
    const WHOLE: bool = true;
    fn ints(blk: &[u8], q: &mut [i8; QK]) -> (f32, f32) {
        Q40::ints(blk, q)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn ints_avx2(blk: *const u8) -> std::arch::x86_64::__m256i {
        Q40::ints_avx2(blk)
    }
}

impl Fmt for Q41 {
    const BYTES: usize = 20;
    const MIN: bool = true;
    const SIGNED: bool = false;
    fn ints(blk: &[u8], q: &mut [i8; QK]) -> (f32, f32) {
        nibbles(&blk[4..20], q, 0);
        (f16_at(blk, 0), f16_at(blk, 2))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn ints_avx2(blk: *const u8) -> std::arch::x86_64::__m256i {
        x86::nibbles(blk.add(4))
    }
}

impl Fmt for Q50 {
    const BYTES: usize = 22;
    const MIN: bool = false;
    const SIGNED: bool = true;
    fn ints(blk: &[u8], q: &mut [i8; QK]) -> (f32, f32) {
        nibbles5(&blk[2..6], &blk[6..22], q, 16);
        (f16_at(blk, 0), 0.0)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn ints_avx2(blk: *const u8) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        // A clear fifth bit makes the byte negative (`q − 16` in two's complement).
        let high = x86::bits(blk.add(2));
        let q = x86::nibbles(blk.add(6));
        _mm256_or_si256(q, _mm256_andnot_si256(high, _mm256_set1_epi8(0xF0u8 as i8)))
    }
}

impl Fmt for Q51 {
    const BYTES: usize = 24;
    const MIN: bool = true;
    const SIGNED: bool = false;
    fn ints(blk: &[u8], q: &mut [i8; QK]) -> (f32, f32) {
        nibbles5(&blk[4..8], &blk[8..24], q, 0);
        (f16_at(blk, 0), f16_at(blk, 2))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn ints_avx2(blk: *const u8) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        let high = x86::bits(blk.add(4));
        let q = x86::nibbles(blk.add(8));
        _mm256_or_si256(q, _mm256_and_si256(high, _mm256_set1_epi8(0x10)))
    }
}

impl Fmt for Q80 {
    const BYTES: usize = 34;
    const MIN: bool = false;
    const SIGNED: bool = true;
    fn ints(blk: &[u8], q: &mut [i8; QK]) -> (f32, f32) {
        for (v, &b) in q.iter_mut().zip(&blk[2..34]) {
            *v = b as i8;
        }
        (f16_at(blk, 0), 0.0)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn ints_avx2(blk: *const u8) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        _mm256_loadu_si256(blk.add(2) as *const __m256i)
    }
}

/// `out[i] = row · acts[t0 + i]` for `i < tn ≤ 4` (the weight block is unpacked once for all
/// of them), in ggml's AVX2 order.
#[inline]
fn dot4<K: Fmt>(row: &[u8], acts: &Q8Acts, t0: usize, tn: usize, out: &mut [f32; 4]) {
    #[cfg(target_arch = "x86_64")]
    {
        if cpu::avx2() {
            // SAFETY: AVX2/FMA/F16C (and VNNI where used) detected; `row` holds `acts.blocks`
            // blocks and `acts` at least `t0 + tn` rows.
            unsafe {
                if cpu::vnni() {
                    x86::dot4_vnni::<K>(row, acts, t0, tn, out)
                } else {
                    x86::dot4_avx2::<K>(row, acts, t0, tn, out)
                }
            }
            return;
        }
    }
    dot4_lanes::<K>(row, acts, t0, tn, out)
}

/// [`dot4`] without SIMD: the same 8 lanes, fused multiply-adds and lane sum, one by one.
fn dot4_lanes<K: Fmt>(row: &[u8], acts: &Q8Acts, t0: usize, tn: usize, out: &mut [f32; 4]) {
    let nb = acts.blocks;
    let mut q = [0i8; QK];
    let mut acc = [[0f32; 8]; 4];
    let mut offs = [0f32; 4];
    for (b, blk) in row.chunks_exact(K::BYTES).enumerate() {
        let (dw, mw) = K::ints(blk, &mut q);
        for i in 0..tn {
            let ab = (t0 + i) * nb + b;
            let a = &acts.qs[ab * QK..(ab + 1) * QK];
            let scale = dw * acts.d[ab];
            if K::WHOLE {
                let p: i32 = (0..QK).map(|j| q[j] as i32 * a[j] as i32).sum();
                acc[i][0] = (p as f32).mul_add(scale, acc[i][0]);
                continue;
            }
            for (l, acc) in acc[i].iter_mut().enumerate() {
                let p: i32 = (4 * l..4 * l + 4).map(|j| q[j] as i32 * a[j] as i32).sum();
                *acc = scale.mul_add(p as f32, *acc);
            }
            if K::MIN {
                offs[i] = mw.mul_add(acts.s[ab], offs[i]);
            }
        }
    }
    for i in 0..tn {
        if K::WHOLE {
            out[i] = acc[i][0];
            continue;
        }
        let a = &acc[i];
        let s: [f32; 4] = std::array::from_fn(|l| a[l] + a[l + 4]);
        let sum = (s[0] + s[2]) + (s[1] + s[3]);
        out[i] = if K::MIN { sum + offs[i] } else { sum };
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

fn matmul_blocks<K: Fmt>(data: &[u8], rows: usize, cols: usize, acts: &Q8Acts, out: &mut [f32]) {
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
                    dot4::<K>(row, acts, t0, tn, &mut y);
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
/// doing exactly what [`dot4`] (ggml's AVX2 `ggml_vec_dot_q4_1_q8_1`) does for one,
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
        let row_bytes = |r: usize| &data[r * nb * Q41::BYTES..(r + 1) * nb * Q41::BYTES];
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
                            dot4::<Q41>(row_bytes(rg + ri), acts, full_end, tn, &mut y);
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

/// F16 weights against activations rounded to f16, each output summed in llama.cpp's order
/// for this many tokens; each weight row is widened to f32 once for all tokens.
fn matmul_f16(w: &[u8], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    let n = x.len() / cols;
    // tinyBLAS takes F16 × F16 products of several tokens when the row length is a multiple of
    // 16 and the row count of 4 (llamafile/sgemm.cpp); otherwise ggml_vec_dot_f16 runs.
    let order = if n >= 2 && cols.is_multiple_of(16) && rows.is_multiple_of(4) {
        SumOrder::Gemm
    } else {
        SumOrder::Dot
    };
    let ptr = OutPtr(out.as_mut_ptr());
    let chunk = row_chunk(rows);
    (0..rows.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let mut wr = vec![0f32; cols];
        for r in c * chunk..((c + 1) * chunk).min(rows) {
            for (o, b) in wr
                .iter_mut()
                .zip(w[r * cols * 2..(r + 1) * cols * 2].chunks_exact(2))
            {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
            for t in 0..n {
                let y = sums::dot(order, &x[t * cols..(t + 1) * cols], &wr);
                // SAFETY: as in `matmul_blocks`.
                unsafe { ptr.write(t * rows + r, y) };
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Fmt, Q8Acts, Q41, QK};
    use kvlens_press::simd::x86::hsum;
    use std::arch::x86_64::*;

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
                let at = b * Q41::BYTES;
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
    /// token the operations are those of [`dot4_impl`]: per block the integer dot product in
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

    /// The sum of the eight 32-bit integer lanes (exact).
    #[inline(always)]
    unsafe fn hsum_i32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
        _mm_cvtsi128_si32(s)
    }

    /// Element `j` of one register: the low nibble of byte `j` of `qs` for `j < 16`, the high
    /// nibble of byte `j − 16` after (ggml's `bytes_from_nibbles_32`).
    #[inline(always)]
    pub unsafe fn nibbles(qs: *const u8) -> __m256i {
        let low = _mm_set1_epi8(0x0F);
        let packed = _mm_loadu_si128(qs as *const __m128i);
        let lo = _mm_and_si128(packed, low);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
        _mm256_set_m128i(hi, lo)
    }

    /// Byte `j` all ones where bit `j` of the 32 bits at `qh` is set, else zero.
    #[inline(always)]
    pub unsafe fn bits(qh: *const u8) -> __m256i {
        let h = u32::from_le_bytes([*qh, *qh.add(1), *qh.add(2), *qh.add(3)]);
        // Byte j takes byte j/8 of the bits, then keeps bit j%8 of it.
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(h as i32),
            _mm256_set_epi64x(
                0x0303030303030303,
                0x0202020202020202,
                0x0101010101010101,
                0,
            ),
        );
        let bit = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
        _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub unsafe fn dot4_vnni<K: Fmt>(
        row: &[u8],
        acts: &Q8Acts,
        t0: usize,
        tn: usize,
        out: &mut [f32; 4],
    ) {
        dot4_impl::<K, true>(row, acts, t0, tn, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot4_avx2<K: Fmt>(
        row: &[u8],
        acts: &Q8Acts,
        t0: usize,
        tn: usize,
        out: &mut [f32; 4],
    ) {
        dot4_impl::<K, false>(row, acts, t0, tn, out)
    }

    /// A block format × Q8 activations as ggml's AVX2 `ggml_vec_dot_*`: per block, the
    /// integer products in 8 lanes (signed formats through the sign trick, as its
    /// `mul_sum_i8_pairs_float`), scaled by `d_w·d_a` and fused into the lane accumulators;
    /// the minima's sum fused in a chain beside; lanes summed at the end (`hsum`).
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn dot4_impl<K: Fmt, const VNNI: bool>(
        row: &[u8],
        acts: &Q8Acts,
        t0: usize,
        tn: usize,
        out: &mut [f32; 4],
    ) {
        let nb = acts.blocks;
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut offs = [0f32; 4];
        let mut whole_acc = [0f32; 4];
        let qs = acts.qs.as_ptr();
        for b in 0..nb {
            let at = b * K::BYTES;
            let w = K::ints_avx2(row.as_ptr().add(at));
            let dw = half(row, at);
            let mw = if K::MIN { half(row, at + 2) } else { 0.0 };
            let wu = if K::SIGNED { _mm256_sign_epi8(w, w) } else { w };
            for i in 0..tn {
                let ab = (t0 + i) * nb + b;
                let a = _mm256_loadu_si256(qs.add(ab * QK) as *const __m256i);
                let a = if K::SIGNED { _mm256_sign_epi8(a, w) } else { a };
                let p = dot_us8::<VNNI>(wu, a);
                if K::WHOLE {
                    let whole = hsum_i32(p) as f32;
                    whole_acc[i] = whole.mul_add(dw * *acts.d.get_unchecked(ab), whole_acc[i]);
                    continue;
                }
                let scale = _mm256_set1_ps(dw * *acts.d.get_unchecked(ab));
                acc[i] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[i]);
                if K::MIN {
                    offs[i] = mw.mul_add(*acts.s.get_unchecked(ab), offs[i]);
                }
            }
        }
        for i in 0..tn {
            out[i] = if K::WHOLE {
                whole_acc[i]
            } else if K::MIN {
                hsum(acc[i]) + offs[i]
            } else {
                hsum(acc[i])
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    /// `rows × cols` random weights quantized to `dtype` by candle, as a kvlens weight.
    fn quantized(dtype: GgmlDType, rows: usize, cols: usize, seed: &mut u64) -> Weight {
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(seed)).collect();
        let t = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        let data = Bytes::Owned(Arc::new(q.data().unwrap().into_owned()));
        match (Block::from_ggml(dtype), KFmt::from_ggml(dtype)) {
            (Some(b), _) => Weight::blocks(b, data, rows, cols),
            (_, Some(f)) => Weight::kquant(f, data, rows, cols),
            _ => {
                assert_eq!(dtype, GgmlDType::F16);
                Weight::f16(data, rows, cols)
            }
        }
    }

    #[test]
    fn k_quants_multiply_as_their_dequantized_rows_and_dequantize_as_candle() {
        // 16 rows (Q4_K repacked by llama.cpp) and 12 (not); 1, 3 and 9 tokens (vec_dot and
        // tiled orders).
        let cols = 512;
        let mut seed = 11;
        for dtype in [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K] {
            for rows in [16, 12] {
                let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
                let t = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
                let q = QTensor::quantize(&t, dtype).unwrap();
                let candle_rows: Vec<f32> = q
                    .dequantize(&Device::Cpu)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let data = Bytes::Owned(Arc::new(q.data().unwrap().into_owned()));
                let wq = Weight::kquant(KFmt::from_ggml(dtype).unwrap(), data, rows, cols);
                let mut row = vec![0f32; cols];
                for r in 0..rows {
                    wq.row(r, &mut row);
                    for c in 0..cols {
                        let (a, b) = (row[c], candle_rows[r * cols + c]);
                        assert!(
                            (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                            "{dtype:?} {a} {b}"
                        );
                    }
                }
                for n in [1, 3, 9] {
                    let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
                    let mut out = vec![0f32; n * rows];
                    wq.matmul(&Input::new(&x, cols), &mut out);
                    // Each token alone: the repacked order gives the same bits for any n.
                    let mut alone = vec![0f32; rows];
                    wq.matmul(&Input::new(&x[(n - 1) * cols..], cols), &mut alone);
                    for r in 0..rows {
                        wq.row(r, &mut row);
                        for t in 0..n {
                            let exact: f64 = (0..cols)
                                .map(|c| row[c] as f64 * x[t * cols + c] as f64)
                                .sum();
                            let got = out[t * rows + r] as f64;
                            assert!(
                                (got - exact).abs() < 0.2,
                                "{dtype:?} rows {rows} n {n} r{r} t{t}: {got} vs {exact}"
                            );
                        }
                        let last = out[(n - 1) * rows + r];
                        let order = KFmt::from_ggml(dtype).unwrap().order(rows, n);
                        if order == kquant::Order::VecDot
                            || (order == kquant::Order::Repacked && n % 4 != 0)
                        {
                            assert_eq!(last.to_bits(), alone[r].to_bits(), "{dtype:?} {order:?}");
                        }
                    }
                }
            }
        }
    }

    const BLOCKS: [GgmlDType; 5] = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
    ];

    #[test]
    fn every_format_multiplies_as_its_dequantized_rows_do() {
        let (rows, cols, n) = (37, 96, 5);
        let mut seed = 7;
        for dtype in BLOCKS.into_iter().chain([GgmlDType::F16]) {
            let wq = quantized(dtype, rows, cols, &mut seed);
            let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
            let mut out = vec![0f32; n * rows];
            wq.matmul(&Input::new(&x, cols), &mut out);
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                wq.row(r, &mut row);
                for t in 0..n {
                    // The exact product of the dequantized weights and the unrounded inputs:
                    // what remains is the activations' rounding (8 bits or f16).
                    let exact: f64 = (0..cols)
                        .map(|c| row[c] as f64 * x[t * cols + c] as f64)
                        .sum();
                    let got = out[t * rows + r] as f64;
                    let tol = if dtype == GgmlDType::F16 { 1e-2 } else { 0.15 };
                    assert!(
                        (got - exact).abs() < tol,
                        "{dtype:?} r{r} t{t}: {got} vs exact {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn simd_kernels_give_the_bits_of_the_lane_by_lane_order() {
        // 96 columns (an odd number of blocks), 3 tokens: every block format's SIMD kernel
        // against the plain-Rust statement of ggml's AVX2 order (8 lanes, fused steps, lane
        // sum), bit for bit.
        let (rows, cols, n) = (9, 96, 3);
        let mut seed = 5;
        for dtype in BLOCKS {
            let wq = quantized(dtype, rows, cols, &mut seed);
            let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed) * 2.0).collect();
            let acts = Q8Acts::quantize(&x, cols);
            let Store::Blocks(block, data) = &wq.store else {
                unreachable!()
            };
            let rb = cols / QK * block.bytes();
            for r in 0..rows {
                let row = &data.as_slice()[r * rb..(r + 1) * rb];
                let (mut simd, mut lanes) = ([0f32; 4], [0f32; 4]);
                macro_rules! both {
                    ($k:ty) => {{
                        dot4::<$k>(row, &acts, 0, n, &mut simd);
                        dot4_lanes::<$k>(row, &acts, 0, n, &mut lanes);
                    }};
                }
                match block {
                    Block::Q4_0 => {
                        both!(Q40x8);
                        let (s8, l8) = (simd, lanes);
                        both!(Q40);
                        for t in 0..n {
                            assert_eq!(
                                s8[t].to_bits(),
                                l8[t].to_bits(),
                                "Q4_0x8 row {r} token {t}"
                            );
                        }
                    }
                    Block::Q4_1 => both!(Q41),
                    Block::Q5_0 => both!(Q50),
                    Block::Q5_1 => both!(Q51),
                    Block::Q8_0 => both!(Q80),
                }
                for t in 0..n {
                    assert_eq!(
                        simd[t].to_bits(),
                        lanes[t].to_bits(),
                        "{dtype:?} row {r} token {t}: {} vs {}",
                        simd[t],
                        lanes[t]
                    );
                }
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
        for dtype in BLOCKS.into_iter().chain([GgmlDType::F16]) {
            let wq = quantized(dtype, rows, cols, &mut seed);
            let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed) * 3.0).collect();
            let mut all = vec![0f32; n * rows];
            wq.matmul(&Input::new(&x, cols), &mut all);
            for t0 in (0..n).step_by(2) {
                let xs = &x[t0 * cols..(t0 + 2) * cols];
                let mut part = vec![0f32; 2 * rows];
                wq.matmul(&Input::new(xs, cols), &mut part);
                for (i, (a, b)) in all[t0 * rows..(t0 + 2) * rows]
                    .iter()
                    .zip(&part)
                    .enumerate()
                {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{dtype:?} token {} row {}: {a} vs {b}",
                        t0 + i / rows,
                        i % rows
                    );
                }
            }
        }
    }

    #[test]
    fn five_bit_high_bits_are_read_per_element() {
        // One Q5_1 block: d = 1, m = 0, element j = j (bit 4 set from 16 on).
        let mut blk = vec![0u8; 24];
        blk[0..2].copy_from_slice(&f16::from_f32(1.0).to_bits().to_le_bytes());
        let mut qh = 0u32;
        for j in 0..32u32 {
            if j & 16 != 0 {
                qh |= 1 << j;
            }
        }
        blk[4..8].copy_from_slice(&qh.to_le_bytes());
        for j in 0..16 {
            blk[8 + j] = (j as u8 & 0xF) | (((j as u8 + 16) & 0xF) << 4);
        }
        let w = Weight::blocks(Block::Q5_1, Bytes::Owned(Arc::new(blk)), 1, 32);
        let mut row = [0f32; 32];
        w.row(0, &mut row);
        let want: Vec<f32> = (0..32).map(|j| j as f32).collect();
        assert_eq!(row.to_vec(), want);
        #[cfg(target_arch = "x86_64")]
        if cpu::avx2() {
            let Store::Blocks(_, data) = &w.store else {
                unreachable!()
            };
            let mut bytes = [0u8; 32];
            // SAFETY: AVX2 checked; the block is 24 bytes.
            unsafe {
                use std::arch::x86_64::*;
                let v = Q51::ints_avx2(data.as_slice().as_ptr());
                _mm256_storeu_si256(bytes.as_mut_ptr() as *mut __m256i, v);
            }
            assert_eq!(bytes.to_vec(), (0..32u8).collect::<Vec<_>>());
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
