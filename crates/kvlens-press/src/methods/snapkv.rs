//! SnapKV: the last `window` queries of the prompt vote for the tokens to keep.
//!
//! Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation", NeurIPS 2024
//! (arXiv:2404.14469). After prefill, each key/value head sums the attention that the
//! window's queries (of every query head in its group) give each earlier token, smooths the
//! votes with a 1-D pooling of width `kernel` (`pool=max|avg`), keeps the top tokens and the
//! window itself.

use crate::method::{Needs, ScoreInput, Scorer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    Max,
    Avg,
}

pub struct SnapKv {
    pub window: usize,
    pub kernel: usize,
    pub pool: Pool,
}

impl Scorer for SnapKv {
    fn needs(&self) -> Needs {
        Needs {
            accumulate: false,
            window: self.window,
        }
    }

    fn score(&self, input: &ScoreInput<'_>) -> Vec<f32> {
        window_votes(input, self.kernel, self.pool)
    }
}

/// Window votes per row, pooled; shared with PyramidKV.
pub fn window_votes(input: &ScoreInput<'_>, kernel: usize, pool: Pool) -> Vec<f32> {
    let len = input.store.len();
    let stats = input.stats;
    let mut votes = vec![0f32; len];
    for w in 0..stats.window_len {
        for (v, p) in votes.iter_mut().zip(stats.window_row(w, len)) {
            *v += p;
        }
    }
    pool1d(&votes, kernel, pool)
}

/// Same-size 1-D pooling with `kernel / 2` padding, as `max_pool1d` / `avg_pool1d` with
/// `padding = kernel // 2, stride = 1` in the reference code (avg counts the padding zeros).
pub fn pool1d(x: &[f32], kernel: usize, pool: Pool) -> Vec<f32> {
    if kernel <= 1 {
        return x.to_vec();
    }
    let half = kernel / 2;
    (0..x.len())
        .map(|i| {
            let lo = i.saturating_sub(half);
            let hi = (i + kernel - half).min(x.len());
            let win = &x[lo..hi];
            match pool {
                Pool::Max => win.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                Pool::Avg => win.iter().sum::<f32>() / kernel as f32,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_spreads_votes_to_neighbours() {
        let x = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        assert_eq!(pool1d(&x, 3, Pool::Max), vec![0.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
        let avg = pool1d(&x, 3, Pool::Avg);
        assert!((avg[1] - 1.0 / 3.0).abs() < 1e-7);
        assert_eq!(avg[4], 0.0);
        assert_eq!(pool1d(&x, 1, Pool::Max), x.to_vec());
    }
}
