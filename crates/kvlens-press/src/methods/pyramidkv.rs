//! PyramidKV: SnapKV's window votes with budgets that shrink with depth.
//!
//! Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information
//! Funneling" (arXiv:2406.02069). Lower layers keep more tokens, upper layers fewer; the mean
//! over layers is `budget`. As in the reference implementation, the `window` tokens are
//! added to every layer's share, and the smallest share is `(budget − window) / beta`.

use crate::cache::CacheShape;
use crate::method::{Needs, ScoreInput, Scorer};
use crate::methods::snapkv::{window_votes, Pool};

pub struct PyramidKv {
    pub window: usize,
    pub kernel: usize,
    pub pool: Pool,
    pub beta: usize,
}

impl Scorer for PyramidKv {
    fn needs(&self) -> Needs {
        Needs {
            accumulate: false,
            window: self.window,
        }
    }

    fn score(&self, input: &ScoreInput<'_>) -> Vec<f32> {
        window_votes(input, self.kernel, self.pool)
    }

    fn layer_budget(&self, budget: usize, layer: usize, shape: &CacheShape) -> usize {
        pyramid_budget(budget, self.window, self.beta, layer, shape.n_layers)
    }
}

/// Per-layer budget: a straight line from `2·B − B/beta` at the first layer down to `B/beta`
/// at the last, plus the window, where `B = budget − window`.
pub fn pyramid_budget(
    budget: usize,
    window: usize,
    beta: usize,
    layer: usize,
    n_layers: usize,
) -> usize {
    let total = budget.saturating_sub(window) as f64;
    let min = total / beta as f64;
    let max = 2.0 * total - min;
    if n_layers <= 1 {
        return budget;
    }
    let step = (max - min) / (n_layers - 1) as f64;
    (max - step * layer as f64).round() as usize + window
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_shrink_with_depth_and_average_to_budget() {
        let n = 30;
        let b: Vec<usize> = (0..n).map(|l| pyramid_budget(256, 32, 20, l, n)).collect();
        assert!(b.windows(2).all(|w| w[0] >= w[1]));
        assert_eq!(b[n - 1], (224.0f64 / 20.0).round() as usize + 32);
        let mean = b.iter().sum::<usize>() as f64 / n as f64;
        assert!((mean - 256.0).abs() < 1.0, "mean {mean}");
    }
}
