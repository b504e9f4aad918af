//! TOVA: drop the tokens the current query attends to least.
//!
//! Oren et al., "Transformers are Multi-State RNNs" (arXiv:2401.06104). At every step the
//! attention of the newest query, averaged over the query heads of each key/value head,
//! ranks the kept tokens; the lowest go once the cache exceeds `budget`.

use crate::method::{Needs, ScoreInput, Scorer};

pub struct Tova;

impl Scorer for Tova {
    fn needs(&self) -> Needs {
        Needs {
            accumulate: false,
            window: 1,
        }
    }

    fn score(&self, input: &ScoreInput<'_>) -> Vec<f32> {
        let len = input.store.len();
        if input.stats.window_len == 0 {
            return vec![0.0; len];
        }
        input
            .stats
            .window_row(input.stats.window_len - 1, len)
            .to_vec()
    }
}
