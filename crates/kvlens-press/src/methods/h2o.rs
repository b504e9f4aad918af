//! H2O: keep heavy hitters, the tokens with the largest accumulated attention, plus a
//! window of recent tokens.
//!
//! Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large
//! Language Models", NeurIPS 2023 (arXiv:2306.14048). Acts during decode by default, as the
//! paper does. Attention is summed over all queries that saw the token and over the query
//! heads that share its key/value head.

use crate::method::{Needs, ScoreInput, Scorer};

pub struct H2o;

impl Scorer for H2o {
    fn needs(&self) -> Needs {
        Needs {
            accumulate: true,
            window: 0,
        }
    }

    fn score(&self, input: &ScoreInput<'_>) -> Vec<f32> {
        let mut s = input.stats.accumulated.clone();
        s.resize(input.store.len(), 0.0);
        s
    }
}
