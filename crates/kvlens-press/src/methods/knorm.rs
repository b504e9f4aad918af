//! Key-norm: keep the keys with the lowest L2 norm.
//!
//! Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression",
//! EMNLP 2024 (arXiv:2406.11430). Needs no attention probabilities.

use crate::method::{ScoreInput, Scorer};

pub struct KeyNorm;

impl Scorer for KeyNorm {
    fn score(&self, input: &ScoreInput<'_>) -> Vec<f32> {
        let store = input.store;
        let mut row = vec![0f32; store.dim];
        (0..store.len())
            .map(|i| {
                store.keys.row_f32(i, store.dim, &mut row);
                -row.iter().map(|x| x * x).sum::<f32>().sqrt()
            })
            .collect()
    }
}
