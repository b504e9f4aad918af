//! When each request of a load point is sent, and which prompt it carries: the one piece of
//! code that both `kvlens load` (which sends them) and `kvlens predict` (which simulates them)
//! use, so that with the same seed they see the same requests at the same times.
//!
//! The arrival process follows vLLM's `benchmarks/serve.py` (`get_request`): the first request
//! at time 0, then gaps drawn from a gamma distribution of shape `burstiness` and mean
//! `1 / rate` (shape 1 is a Poisson process; below 1 burstier, above 1 more regular); rate
//! `inf` sends every request at time 0.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};
use std::fmt;

/// Requests per second, or all at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    PerSecond(f64),
    Inf,
}

impl Rate {
    /// `4`, `0.5` or `inf`; a rate must be positive and finite (or `inf`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("inf") {
            return Ok(Rate::Inf);
        }
        match t.parse::<f64>() {
            Ok(r) if r.is_infinite() && r > 0.0 => Ok(Rate::Inf),
            Ok(r) if r > 0.0 && r.is_finite() => Ok(Rate::PerSecond(r)),
            _ => Err(format!(
                "`{s}` is not a request rate: give requests per second above 0, or inf"
            )),
        }
    }

    /// The rate as a JSON value: a number, or the string `inf` (JSON has no infinity).
    pub fn to_json(self) -> serde_json::Value {
        match self {
            Rate::PerSecond(r) => serde_json::Value::from(r),
            Rate::Inf => serde_json::Value::from("inf"),
        }
    }

    /// The folder name of a load point at this rate (`rate=4`, `rate=0.5`, `rate=inf`).
    pub fn folder(self) -> String {
        format!("rate={self}")
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::PerSecond(r) => write!(f, "{r}"),
            Rate::Inf => write!(f, "inf"),
        }
    }
}

/// The send times, in seconds from the start of the load point, of `n` requests.
///
/// A seeded ChaCha8 generator draws the gaps, so a seed gives the same schedule on every
/// machine and in every kvlens version that keeps this function.
pub fn schedule(n: usize, rate: Rate, burstiness: f64, seed: u64) -> Result<Vec<f64>, String> {
    if !(burstiness > 0.0 && burstiness.is_finite()) {
        return Err(format!(
            "--burstiness {burstiness}: must be above 0 (1 is a Poisson process)"
        ));
    }
    let Rate::PerSecond(r) = rate else {
        return Ok(vec![0.0; n]);
    };
    let gamma = Gamma::new(burstiness, 1.0 / (r * burstiness))
        .map_err(|e| format!("--request-rate {r} --burstiness {burstiness}: {e}"))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut t = 0.0;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(t);
        t += gamma.sample(&mut rng);
    }
    Ok(out)
}

/// The order prompts are sent in: round-robin over the tasks in their order, each task's
/// samples in sample order (task 1 sample 0, task 2 sample 0, task 1 sample 1, ...), a task
/// that runs out dropping out of the turn, and the first `n` taken. `sizes[t]` is how many
/// samples task `t` offers. Each entry is `(task, sample)`.
pub fn deal(sizes: &[usize], n: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(n);
    let longest = sizes.iter().copied().max().unwrap_or(0);
    'outer: for i in 0..longest {
        for (t, &len) in sizes.iter().enumerate() {
            if out.len() == n {
                break 'outer;
            }
            if i < len {
                out.push((t, i));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_refuse_nonsense() {
        assert_eq!(Rate::parse("inf"), Ok(Rate::Inf));
        assert_eq!(Rate::parse(" 2.5 "), Ok(Rate::PerSecond(2.5)));
        for bad in ["0", "-1", "nan", "fast", ""] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Rate::PerSecond(0.5).folder(), "rate=0.5");
        assert_eq!(Rate::Inf.folder(), "rate=inf");
    }

    #[test]
    fn inf_sends_everything_at_once() {
        assert_eq!(schedule(3, Rate::Inf, 1.0, 7).unwrap(), vec![0.0; 3]);
    }

    #[test]
    fn a_seed_gives_one_schedule() {
        let a = schedule(50, Rate::PerSecond(4.0), 1.0, 3).unwrap();
        assert_eq!(a, schedule(50, Rate::PerSecond(4.0), 1.0, 3).unwrap());
        assert_ne!(a, schedule(50, Rate::PerSecond(4.0), 1.0, 4).unwrap());
        assert_eq!(a[0], 0.0);
        assert!(a.windows(2).all(|w| w[1] >= w[0]));
    }

    /// Poisson arrivals: the gaps are exponential with mean 1/rate. With 20 000 gaps the
    /// sample mean's standard error is 0.7 % of the mean and the sample coefficient of
    /// variation's about 0.7 %; the bounds sit at more than five standard errors, so a correct
    /// schedule fails them with odds below one in a million, and a wrong mean or shape fails.
    #[test]
    fn poisson_gaps_have_the_rates_mean_and_an_exponential_spread() {
        for (rate, burstiness, cv) in [(4.0, 1.0, 1.0), (0.5, 1.0, 1.0), (2.0, 4.0, 0.5)] {
            let t = schedule(20_001, Rate::PerSecond(rate), burstiness, 11).unwrap();
            let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
            let n = gaps.len() as f64;
            let mean = gaps.iter().sum::<f64>() / n;
            let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / (n - 1.0);
            assert!(
                (mean * rate - 1.0).abs() < 0.04,
                "rate {rate}: mean gap {mean}"
            );
            // Gamma of shape k: coefficient of variation 1/sqrt(k).
            assert!(
                (var.sqrt() / mean - cv).abs() < 0.06,
                "rate {rate}, burstiness {burstiness}: cv {}",
                var.sqrt() / mean
            );
        }
    }

    #[test]
    fn prompts_are_dealt_round_robin_over_tasks() {
        assert_eq!(
            deal(&[3, 1, 2], 10),
            vec![(0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (0, 2)]
        );
        assert_eq!(deal(&[3, 1, 2], 4), vec![(0, 0), (1, 0), (2, 0), (0, 1)]);
        assert!(deal(&[], 4).is_empty());
    }
}
