//! A step-time model with physical terms, fitted per method to a profile's timed steps.
//!
//! One engine step reads every weight once, whatever it computes (the constant term); each
//! sequence in it costs a fixed amount (its last row's logits over the vocabulary, sampling,
//! bookkeeping); each decoding sequence's attention reads its cache (ms per MiB held); each
//! prompt token goes through the weight matrices; and each prompt token attends to the tokens
//! before it (ms per million token pairs, the quadratic part of prefill):
//!
//! `ms = w + r·sequences + c·cache MiB read + p·prompt tokens + q·attended pairs / 10⁶`
//!
//! Fitted by least squares on relative error (a 5 ms decode step weighs as much as a 2 s
//! prefill) with every coefficient kept non-negative (Lawson and Hanson's active set, on
//! nalgebra's SVD), so each term keeps its meaning.

use crate::error::{PredictError, Result};
use crate::profile::StepSample;
use kvlens_engine::sched::StepShape;
use nalgebra::{DMatrix, DVector};
use serde::Serialize;
use std::collections::BTreeMap;

/// The names of the terms, in the order of [`StepModel::coef`].
pub const TERMS: [&str; 5] = [
    "ms_per_step",
    "ms_per_sequence",
    "ms_per_cache_mib",
    "ms_per_prompt_token",
    "ms_per_million_attended",
];

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepModel {
    pub coef: [f64; 5],
}

fn features(s: &StepShape) -> [f64; 5] {
    [
        1.0,
        s.rows() as f64,
        s.decode_kv_bytes as f64 / 1048576.0,
        s.prompt_tokens as f64,
        s.prompt_attended as f64 / 1e6,
    ]
}

impl StepModel {
    /// The predicted time of a step of this shape, ms.
    pub fn step_ms(&self, s: &StepShape) -> f64 {
        features(s).iter().zip(&self.coef).map(|(x, c)| x * c).sum()
    }

    /// Fits the model to timed steps.
    pub fn fit(steps: &[(StepShape, f64)]) -> Result<Self> {
        if steps.len() < TERMS.len() {
            return Err(PredictError::Invalid(format!(
                "{} timed steps cannot fit {} terms",
                steps.len(),
                TERMS.len()
            )));
        }
        let n = steps.len();
        let k = TERMS.len();
        // Rows divided by the measured time: least squares on relative error.
        let mut a = DMatrix::<f64>::zeros(n, k);
        let mut b = DVector::<f64>::zeros(n);
        for (i, (s, ms)) in steps.iter().enumerate() {
            for (j, x) in features(s).iter().enumerate() {
                a[(i, j)] = x / ms;
            }
            b[i] = 1.0;
        }
        // Columns scaled to a largest entry of 1, for the SVD's conditioning.
        let scale: Vec<f64> = (0..k)
            .map(|j| {
                let m = a.column(j).iter().fold(0.0f64, |m, x| m.max(x.abs()));
                if m > 0.0 {
                    m
                } else {
                    1.0
                }
            })
            .collect();
        for (j, s) in scale.iter().enumerate() {
            a.column_mut(j).iter_mut().for_each(|x| *x /= s);
        }
        let x = nnls(&a, &b)?;
        let mut coef = [0.0; 5];
        for ((c, x), s) in coef.iter_mut().zip(&x).zip(&scale) {
            *c = x / s;
        }
        Ok(Self { coef })
    }

    /// Named coefficients, for reports.
    pub fn named(&self) -> BTreeMap<&'static str, f64> {
        TERMS.iter().copied().zip(self.coef).collect()
    }
}

/// Non-negative least squares: min ‖Ax − b‖ with x ≥ 0, by repeatedly solving on the free
/// columns and dropping the most negative one (a simplified Lawson–Hanson active set; with
/// five terms it ends in a handful of solves).
fn nnls(a: &DMatrix<f64>, b: &DVector<f64>) -> Result<Vec<f64>> {
    let k = a.ncols();
    let mut free: Vec<usize> = (0..k).collect();
    loop {
        let sub = a.select_columns(&free);
        let svd = sub.svd(true, true);
        let sol = svd
            .solve(b, 1e-12)
            .map_err(|e| PredictError::Invalid(format!("least squares: {e}")))?;
        let worst = sol
            .iter()
            .enumerate()
            .filter(|(_, v)| **v < 0.0)
            .min_by(|x, y| x.1.total_cmp(y.1))
            .map(|(i, _)| i);
        match worst {
            None => {
                let mut x = vec![0.0; k];
                for (i, &j) in free.iter().enumerate() {
                    x[j] = sol[i];
                }
                return Ok(x);
            }
            Some(i) => {
                free.remove(i);
                if free.is_empty() {
                    return Ok(vec![0.0; k]);
                }
            }
        }
    }
}

/// The held-out error of one grid point: the model fitted without it predicts its steps.
#[derive(Debug, Clone, Serialize)]
pub struct HeldOut {
    pub batch: usize,
    pub context: usize,
    pub phase: String,
    pub steps: usize,
    /// Measured and predicted time of the phase's steps together, ms.
    pub measured_ms: f64,
    pub predicted_ms: f64,
    /// |predicted − measured| / measured.
    pub rel_error: f64,
}

/// One method's fit and its leave-one-grid-point-out errors.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    pub method: String,
    pub model: StepModel,
    pub coefficients: BTreeMap<&'static str, f64>,
    pub steps: usize,
    pub held_out: Vec<HeldOut>,
    /// Mean and largest relative error over the held-out (point, phase) pairs.
    pub held_out_mape: f64,
    pub held_out_max: f64,
}

/// Fits `steps` (one method's) and leaves each (batch, context) grid point out in turn.
pub fn fit_report(method: &str, steps: &[StepSample]) -> Result<FitReport> {
    let all: Vec<(StepShape, f64)> = steps.iter().map(|s| (s.shape, s.ms)).collect();
    let model =
        StepModel::fit(&all).map_err(|e| PredictError::Invalid(format!("{method}: {e}")))?;
    let mut points: Vec<(usize, usize)> = steps.iter().map(|s| (s.batch, s.context)).collect();
    points.sort_unstable();
    points.dedup();
    let mut held_out = Vec::new();
    if points.len() > 1 {
        for &(batch, context) in &points {
            let train: Vec<(StepShape, f64)> = steps
                .iter()
                .filter(|s| (s.batch, s.context) != (batch, context))
                .map(|s| (s.shape, s.ms))
                .collect();
            let Ok(m) = StepModel::fit(&train) else {
                continue;
            };
            for phase in ["prefill", "decode"] {
                let test: Vec<&StepSample> = steps
                    .iter()
                    .filter(|s| (s.batch, s.context) == (batch, context) && s.phase == phase)
                    .collect();
                if test.is_empty() {
                    continue;
                }
                let measured: f64 = test.iter().map(|s| s.ms).sum();
                let predicted: f64 = test.iter().map(|s| m.step_ms(&s.shape)).sum();
                held_out.push(HeldOut {
                    batch,
                    context,
                    phase: phase.to_string(),
                    steps: test.len(),
                    measured_ms: measured,
                    predicted_ms: predicted,
                    rel_error: (predicted - measured).abs() / measured,
                });
            }
        }
    }
    let errs: Vec<f64> = held_out.iter().map(|h| h.rel_error).collect();
    Ok(FitReport {
        method: method.to_string(),
        model,
        coefficients: model.named(),
        steps: steps.len(),
        held_out_mape: if errs.is_empty() {
            0.0
        } else {
            errs.iter().sum::<f64>() / errs.len() as f64
        },
        held_out_max: errs.iter().copied().fold(0.0, f64::max),
        held_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(rows: usize, kv: u64) -> StepShape {
        StepShape {
            decode_rows: rows,
            decode_kv_bytes: kv,
            ..StepShape::default()
        }
    }

    fn chunk(a: usize, b: usize) -> StepShape {
        let mut s = StepShape::default();
        s.add_chunk(a, b);
        s
    }

    #[test]
    fn the_fit_recovers_the_terms_that_made_the_times() {
        let truth = StepModel {
            coef: [4.0, 0.5, 0.02, 0.08, 0.3],
        };
        let mut steps = Vec::new();
        for rows in [1, 2, 4, 8, 16] {
            for kv in [1u64 << 20, 8 << 20, 64 << 20] {
                let s = decode(rows, kv * rows as u64);
                steps.push((s, truth.step_ms(&s)));
            }
        }
        for (a, b) in [(0, 512), (512, 1024), (1024, 1536), (0, 64), (3000, 3100)] {
            let s = chunk(a, b);
            steps.push((s, truth.step_ms(&s)));
        }
        let fit = StepModel::fit(&steps).unwrap();
        for (got, want) in fit.coef.iter().zip(truth.coef) {
            assert!((got - want).abs() < 1e-6 * want.max(1.0), "{got} vs {want}");
        }
    }

    #[test]
    fn coefficients_stay_non_negative() {
        // Times that fall with the cache would want a negative cache term.
        let steps: Vec<(StepShape, f64)> = (1..=8)
            .map(|i| (decode(1, i << 20), 10.0 - 0.1 * i as f64))
            .chain((1..=4).map(|i| (chunk(0, 128 * i), 20.0 * i as f64)))
            .collect();
        let fit = StepModel::fit(&steps).unwrap();
        assert!(fit.coef.iter().all(|c| *c >= 0.0), "{:?}", fit.coef);
        assert_eq!(fit.coef[2], 0.0);
    }

    #[test]
    fn the_held_out_error_is_small_on_exact_data_and_large_on_a_wrong_point() {
        let truth = StepModel {
            coef: [3.0, 0.4, 0.05, 0.1, 0.2],
        };
        let mut samples = Vec::new();
        for batch in [1, 2, 4, 8] {
            for context in [256, 1024, 2048] {
                let kv = (context as u64) * 20_000;
                let mut s = StepShape::default();
                for _ in 0..batch {
                    s.add_chunk(0, context);
                }
                samples.push(StepSample {
                    method: "full".into(),
                    batch,
                    context,
                    phase: "prefill".into(),
                    shape: s,
                    ms: truth.step_ms(&s),
                });
                let d = decode(batch, kv * batch as u64);
                samples.push(StepSample {
                    method: "full".into(),
                    batch,
                    context,
                    phase: "decode".into(),
                    shape: d,
                    ms: truth.step_ms(&d),
                });
            }
        }
        let r = fit_report("full", &samples).unwrap();
        assert_eq!(r.held_out.len(), 24);
        assert!(r.held_out_max < 1e-6, "{}", r.held_out_max);
        // One point measured twice as slow shows up as its own held-out error.
        let k = samples
            .iter()
            .position(|s| s.batch == 4 && s.context == 1024 && s.phase == "decode")
            .unwrap();
        samples[k].ms *= 2.0;
        let r = fit_report("full", &samples).unwrap();
        let h = r
            .held_out
            .iter()
            .find(|h| h.batch == 4 && h.context == 1024 && h.phase == "decode")
            .unwrap();
        assert!(h.rel_error > 0.4, "{}", h.rel_error);
    }
}
