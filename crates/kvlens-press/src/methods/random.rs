//! Random eviction: every token gets a seeded pseudo-random score, the floor any selection
//! method should beat (kvpress ships the same baseline as `RandomPress`,
//! `kvpress/presses/random_press.py`). The score of a token depends only on the seed, the
//! layer, the key/value head and the token's absolute position, so a sequence keeps the same
//! tokens alone or in any batch, and a `when=decode` cache never re-draws a kept token.

use crate::method::{ScoreInput, Scorer};

pub struct Random {
    pub seed: u64,
}

/// SplitMix64's finalizer (Steele et al., "Fast splittable pseudorandom number
/// generators", OOPSLA 2014): a well-mixed 64-bit hash of one word.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Random {
    /// The score of the token at `position` in `head` of `layer`, in [0, 1).
    pub fn draw(&self, layer: usize, head: usize, position: u32) -> f32 {
        let h =
            mix(self.seed ^ mix((layer as u64) << 40 ^ (head as u64) << 32 ^ u64::from(position)));
        (h >> 40) as f32 / (1u64 << 24) as f32
    }
}

impl Scorer for Random {
    fn score(&self, input: &ScoreInput<'_>) -> Vec<f32> {
        input
            .store
            .positions
            .iter()
            .map(|&p| self.draw(input.layer, input.head, p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_depend_on_seed_layer_head_and_position_only() {
        let a = Random { seed: 1 };
        let b = Random { seed: 2 };
        assert_eq!(a.draw(3, 1, 10), a.draw(3, 1, 10));
        assert_ne!(a.draw(3, 1, 10), b.draw(3, 1, 10));
        assert_ne!(a.draw(3, 1, 10), a.draw(3, 0, 10));
        assert_ne!(a.draw(3, 1, 10), a.draw(2, 1, 10));
        let v: Vec<f32> = (0..10_000).map(|p| a.draw(0, 0, p)).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}
