//! Dense per-head storage of cached keys and values.
//!
//! One [`HeadStore`] holds the keys and values of one layer's key/value head, token by
//! token, in a preallocated buffer that grows in place. Rows are kept in the order they were
//! appended; an eviction compacts the buffer without reallocating.

use crate::quant::{Chunk, Codec};
use half::f16;

/// The element type the cache stores keys and values in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// IEEE half precision, as llama.cpp and GPU serving engines store the cache.
    F16,
    /// Single precision.
    F32,
}

impl KvDtype {
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F16 => 2,
            KvDtype::F32 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F16 => "f16",
            KvDtype::F32 => "f32",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f16" => Some(KvDtype::F16),
            "f32" => Some(KvDtype::F32),
            _ => None,
        }
    }
}

/// Row-major rows of `dim` elements, in f16 or f32.
#[derive(Debug, Clone)]
pub enum Rows {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl Rows {
    pub fn new(dtype: KvDtype, capacity_elems: usize) -> Self {
        match dtype {
            KvDtype::F16 => Rows::F16(Vec::with_capacity(capacity_elems)),
            KvDtype::F32 => Rows::F32(Vec::with_capacity(capacity_elems)),
        }
    }

    /// A copy with room for `extra_elems` more elements, copied once.
    fn clone_reserving(&self, extra_elems: usize) -> Self {
        fn copy<T: Copy>(v: &[T], extra: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(v.len() + extra);
            out.extend_from_slice(v);
            out
        }
        match self {
            Rows::F16(v) => Rows::F16(copy(v, extra_elems)),
            Rows::F32(v) => Rows::F32(copy(v, extra_elems)),
        }
    }

    fn push(&mut self, row: &[f32]) {
        match self {
            Rows::F16(v) => v.extend(row.iter().map(|&x| f16::from_f32(x))),
            Rows::F32(v) => v.extend_from_slice(row),
        }
    }

    fn elems(&self) -> usize {
        match self {
            Rows::F16(v) => v.len(),
            Rows::F32(v) => v.len(),
        }
    }

    /// Keeps the rows whose indices are listed (sorted, unique), moving them to the front.
    fn retain_rows(&mut self, keep: &[usize], dim: usize) {
        fn compact<T: Copy>(v: &mut Vec<T>, keep: &[usize], dim: usize) {
            for (dst, &src) in keep.iter().enumerate() {
                if dst != src {
                    v.copy_within(src * dim..(src + 1) * dim, dst * dim);
                }
            }
            v.truncate(keep.len() * dim);
        }
        match self {
            Rows::F16(v) => compact(v, keep, dim),
            Rows::F32(v) => compact(v, keep, dim),
        }
    }

    /// Row `i` converted to f32.
    pub fn row_f32(&self, i: usize, dim: usize, out: &mut [f32]) {
        match self {
            Rows::F16(v) => {
                use half::slice::HalfFloatSliceExt;
                v[i * dim..(i + 1) * dim].convert_to_f32_slice(out);
            }
            Rows::F32(v) => out.copy_from_slice(&v[i * dim..(i + 1) * dim]),
        }
    }

    pub fn clear(&mut self) {
        match self {
            Rows::F16(v) => v.clear(),
            Rows::F32(v) => v.clear(),
        }
    }
}

/// Keys, values and absolute positions of the tokens one key/value head keeps.
///
/// The oldest `packed_rows` rows may be held in quantized chunks (`packed`); `keys` and
/// `values` hold the dense rows after them.
pub struct HeadStore {
    pub dim: usize,
    pub keys: Rows,
    pub values: Rows,
    /// Absolute position of each kept token (rotary position, never renumbered), packed
    /// rows first.
    pub positions: Vec<u32>,
    pub packed: Vec<Box<dyn Chunk>>,
    pub packed_rows: usize,
}

impl HeadStore {
    /// A copy of a head that holds only dense rows, with room for `extra_tokens` more;
    /// `None` when some rows are packed.
    pub fn try_clone(&self, extra_tokens: usize) -> Option<Self> {
        (self.packed_rows == 0 && self.packed.is_empty()).then(|| {
            let mut positions = Vec::with_capacity(self.positions.len() + extra_tokens);
            positions.extend_from_slice(&self.positions);
            Self {
                dim: self.dim,
                keys: self.keys.clone_reserving(extra_tokens * self.dim),
                values: self.values.clone_reserving(extra_tokens * self.dim),
                positions,
                packed: Vec::new(),
                packed_rows: 0,
            }
        })
    }

    pub fn new(dtype: KvDtype, dim: usize, capacity_tokens: usize) -> Self {
        Self {
            dim,
            keys: Rows::new(dtype, capacity_tokens * dim),
            values: Rows::new(dtype, capacity_tokens * dim),
            positions: Vec::with_capacity(capacity_tokens),
            packed: Vec::new(),
            packed_rows: 0,
        }
    }

    /// Rows held dense (f16/f32), after the packed ones.
    pub fn dense_rows(&self) -> usize {
        self.positions.len() - self.packed_rows
    }

    /// Moves the oldest `n` dense rows into one packed chunk made by `codec`.
    pub fn pack_oldest(&mut self, n: usize, codec: &dyn Codec) {
        let dim = self.dim;
        let mut k = vec![0f32; n * dim];
        let mut v = vec![0f32; n * dim];
        for i in 0..n {
            self.keys.row_f32(i, dim, &mut k[i * dim..(i + 1) * dim]);
            self.values.row_f32(i, dim, &mut v[i * dim..(i + 1) * dim]);
        }
        let chunk = codec.encode(&k, &v, n, dim);
        // Per-token codecs grow one chunk instead of adding one per decode step.
        let absorbed = self
            .packed
            .last_mut()
            .is_some_and(|last| last.absorb(chunk.as_ref()));
        if !absorbed {
            self.packed.push(chunk);
        }
        self.packed_rows += n;
        let keep: Vec<usize> = (n..self.dense_rows() + n).collect();
        self.keys.retain_rows(&keep, dim);
        self.values.retain_rows(&keep, dim);
    }

    /// Every row's keys and values as f32, (len, dim) each: packed chunks decoded. The
    /// buffers' earlier contents are overwritten, not cleared first.
    pub fn to_f32(&self, keys: &mut Vec<f32>, values: &mut Vec<f32>) {
        let dim = self.dim;
        keys.resize(self.len() * dim, 0.0);
        values.resize(self.len() * dim, 0.0);
        let mut at = 0;
        for c in &self.packed {
            let r = c.rows();
            c.decode(
                &mut keys[at * dim..(at + r) * dim],
                &mut values[at * dim..(at + r) * dim],
            );
            at += r;
        }
        for i in 0..self.dense_rows() {
            let o = (at + i) * dim;
            self.keys.row_f32(i, dim, &mut keys[o..o + dim]);
            self.values.row_f32(i, dim, &mut values[o..o + dim]);
        }
    }

    /// Makes room for `tokens` more rows without reallocating on push.
    pub fn reserve(&mut self, tokens: usize) {
        let elems = tokens * self.dim;
        match (&mut self.keys, &mut self.values) {
            (Rows::F16(k), Rows::F16(v)) => {
                k.reserve(elems);
                v.reserve(elems);
            }
            (Rows::F32(k), Rows::F32(v)) => {
                k.reserve(elems);
                v.reserve(elems);
            }
            _ => unreachable!("keys and values always share a dtype"),
        }
        self.positions.reserve(tokens);
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    pub fn push(&mut self, pos: u32, k: &[f32], v: &[f32]) {
        debug_assert_eq!(k.len(), self.dim);
        self.keys.push(k);
        self.values.push(v);
        self.positions.push(pos);
    }

    /// Keeps only the listed rows (sorted ascending, unique). Token selection runs on dense
    /// heads only: a spec names one method.
    pub fn retain(&mut self, keep: &[usize]) {
        debug_assert!(keep.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(self.packed_rows, 0, "selection over packed rows");
        self.keys.retain_rows(keep, self.dim);
        self.values.retain_rows(keep, self.dim);
        for (dst, &src) in keep.iter().enumerate() {
            self.positions[dst] = self.positions[src];
        }
        self.positions.truncate(keep.len());
    }

    /// Bytes of keys and values really held (positions are bookkeeping, not cache).
    pub fn bytes(&self) -> usize {
        let per = match self.keys {
            Rows::F16(_) => 2,
            Rows::F32(_) => 4,
        };
        (self.keys.elems() + self.values.elems()) * per
            + self.packed.iter().map(|c| c.bytes()).sum::<usize>()
    }

    pub fn clear(&mut self) {
        self.keys.clear();
        self.values.clear();
        self.positions.clear();
        self.packed.clear();
        self.packed_rows = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retain_compacts_rows_and_positions() {
        let mut s = HeadStore::new(KvDtype::F32, 2, 4);
        for i in 0..5u32 {
            let x = i as f32;
            s.push(i * 10, &[x, x + 0.5], &[-x, -x - 0.5]);
        }
        s.retain(&[0, 3, 4]);
        assert_eq!(s.positions, vec![0, 30, 40]);
        let mut row = [0.0; 2];
        s.keys.row_f32(1, 2, &mut row);
        assert_eq!(row, [3.0, 3.5]);
        s.values.row_f32(2, 2, &mut row);
        assert_eq!(row, [-4.0, -4.5]);
        assert_eq!(s.bytes(), 3 * 2 * 2 * 4);
    }

    #[test]
    fn f16_rows_round_trip_within_half_precision() {
        let mut s = HeadStore::new(KvDtype::F16, 3, 1);
        s.push(7, &[1.0, -2.5, 0.1], &[3.0, 0.0, 65504.0]);
        let mut row = [0.0; 3];
        s.keys.row_f32(0, 3, &mut row);
        assert_eq!(row[0], 1.0);
        assert!((row[2] - 0.1).abs() < 1e-4);
        assert_eq!(s.bytes(), 2 * 3 * 2);
    }
}
