//! Small statistics written out so that every number is reproducible: NumPy's median and
//! linear percentile, McNemar's exact test, a seeded paired bootstrap.

/// NumPy's `np.median`: the mean of the two middle values when the count is even. `None`
/// when empty. NaNs are not expected (scores are finite).
pub fn median(v: &[f64]) -> Option<f64> {
    percentile(v, 50.0)
}

/// NumPy's `np.percentile(v, q)` with the default linear interpolation.
pub fn percentile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some(percentile_sorted(&s, q))
}

fn percentile_sorted(s: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (s.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    if lo == hi {
        s[lo]
    } else {
        s[lo] + (s[hi] - s[lo]) * frac
    }
}

pub fn mean(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        None
    } else {
        Some(v.iter().sum::<f64>() / v.len() as f64)
    }
}

/// McNemar's exact test on the discordant pairs `b` (pass→fail) and `c` (fail→pass): the
/// two-sided binomial p-value `min(1, 2·P[X ≤ min(b, c)])` with `X ~ Bin(b + c, 1/2)`.
/// 1 when there are no discordant pairs.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // Sum in log space: n can be in the thousands.
    let ln_half_n = n as f64 * 0.5f64.ln();
    let mut ln_choose = 0.0; // ln C(n, 0)
    let mut tail = 0.0;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose + ln_half_n).exp();
    }
    (2.0 * tail).min(1.0)
}

/// SplitMix64: a tiny, seedable generator, so intervals are the same on every machine.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-high; the bias is below 2⁻³² for our n).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// FNV-1a of a string, to derive a per-group seed that does not depend on the order of work.
pub fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Percentile bootstrap 95 % interval of the mean of `d` (paired differences), `reps`
/// resamples from `seed`. `None` for fewer than 2 values.
pub fn bootstrap_mean_ci(d: &[f64], reps: usize, seed: u64) -> Option<(f64, f64)> {
    if d.len() < 2 || reps == 0 || d.len() > u32::MAX as usize {
        return None;
    }
    let mut rng = SplitMix64::new(seed);
    let n = d.len();
    let mut means = Vec::with_capacity(reps);
    for _ in 0..reps {
        // Two 32-bit draws per 64-bit number (Lemire's multiply-high on each half): the
        // resampling is most of `kvlens analyze`'s time on large runs.
        let mut s = 0.0;
        let mut left = n;
        while left >= 2 {
            let r = rng.next_u64();
            s += d[(((r & 0xffff_ffff) * n as u64) >> 32) as usize];
            s += d[(((r >> 32) * n as u64) >> 32) as usize];
            left -= 2;
        }
        if left == 1 {
            s += d[rng.below(n)];
        }
        means.push(s / n as f64);
    }
    means.sort_by(f64::total_cmp);
    Some((
        percentile_sorted(&means, 2.5),
        percentile_sorted(&means, 97.5),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_median_and_percentile() {
        assert_eq!(median(&[3.0, 1.0, 2.0, 4.0]), Some(2.5));
        assert_eq!(median(&[0.0, 0.0, 1.0]), Some(0.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 90.0), Some(4.6));
    }

    #[test]
    fn mcnemar_matches_binomial() {
        // b=1, c=9: 2·(1 + 10)/1024.
        assert!((mcnemar_exact(1, 9) - 22.0 / 1024.0).abs() < 1e-12);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(5, 5), 1.0);
    }
}
