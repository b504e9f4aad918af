//! StreamingLLM: keep the first `sink` tokens (attention sinks) and the most recent ones.
//!
//! Xiao et al., "Efficient Streaming Language Models with Attention Sinks", ICLR 2024
//! (arXiv:2309.17453). Acts during decode by default, as the paper streams: the cache never
//! holds more than `budget` tokens between steps. Kept tokens keep their original positions
//! (the paper's variant that renumbers positions inside the cache is not this one).

use crate::method::{ScoreInput, Scorer};

pub struct StreamingLlm;

impl Scorer for StreamingLlm {
    fn score(&self, input: &ScoreInput<'_>) -> Vec<f32> {
        // Newer rows rank higher; sinks are protected by `Select`.
        (0..input.store.len()).map(|i| i as f32).collect()
    }
}
