//! The MLSys 2025 study's measured throughputs (`1_thr_predictor/0_exp/*.csv` of
//! LLMkvsys/rethink-kv-compression: columns `model,method,bsz,prompt_len,stage,thr`, `thr` in
//! tokens per second of the whole batch, as its `run_evaluator.py` reads them back into step
//! times) turned into timed steps, so that the step-time model can be fitted to a GPU that
//! someone else profiled.
//!
//! A `decoding` row is one decode step of `bsz` sequences with `prompt_len` tokens cached
//! (`bsz / thr` seconds); a `prefill` row is one step over `bsz` whole prompts
//! (`bsz · prompt_len / thr` seconds). The files give no cache bytes, so the cache term
//! counts the model's full-cache bytes per cached token (the study's four models' shapes are
//! known below); within one method's fit the constant of proportion is absorbed, so the fit
//! is the same whatever a method's real bytes per token are.
//!
//! The fields are plain (no quotes, no commas inside), so the lines are split by hand; any
//! field that is not what the schema says is refused with its line and column name.

use crate::error::{PredictError, Result};
use crate::profile::StepSample;
use kvlens_engine::sched::StepShape;
use std::collections::BTreeMap;
use std::path::Path;

/// One row of a study file.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyRow {
    pub line: usize,
    pub model: String,
    pub method: String,
    pub bsz: usize,
    pub prompt_len: usize,
    pub stage: String,
    pub thr: f64,
}

/// Full-cache bytes per token (fp16 keys and values over all layers) of the study's models,
/// from their published configurations.
pub fn bytes_per_token(model: &str) -> Option<u64> {
    // (layers, key/value heads, head dim)
    let (l, h, d): (u64, u64, u64) = match model {
        "meta-llama-Llama-2-7b-hf" => (32, 32, 128),
        "meta-llama-Llama-2-13b-hf" => (40, 40, 128),
        "mistralai-Mistral-7B-v0.1" => (32, 8, 128),
        "meta-llama-Meta-Llama-3-8B" => (32, 8, 128),
        _ => return None,
    };
    Some(2 * l * h * d * 2)
}

/// Reads one study CSV.
pub fn read(path: &Path) -> Result<Vec<StudyRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| PredictError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Vec<StudyRow>> {
    const HEADER: [&str; 6] = ["model", "method", "bsz", "prompt_len", "stage", "thr"];
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = lines
        .next()
        .map(|(_, h)| h.trim().split(',').collect())
        .unwrap_or_default();
    if header != HEADER {
        return Err(PredictError::Line {
            path: path.to_path_buf(),
            line: 1,
            msg: format!(
                "the header is `{}`, not the study's `{}`",
                header.join(","),
                HEADER.join(",")
            ),
        });
    }
    let mut rows = Vec::new();
    for (i, raw) in lines {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = raw.trim().split(',').collect();
        let bad = |field: &str, msg: String| PredictError::Field {
            path: path.to_path_buf(),
            line,
            field: field.to_string(),
            msg,
        };
        if f.len() != HEADER.len() {
            return Err(PredictError::Line {
                path: path.to_path_buf(),
                line,
                msg: format!("{} fields where the header has {}", f.len(), HEADER.len()),
            });
        }
        let count = |k: usize| -> Result<usize> {
            f[k].parse::<usize>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| {
                    bad(
                        HEADER[k],
                        format!("`{}` is not a positive whole number", f[k]),
                    )
                })
        };
        let thr: f64 = f[5]
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v > 0.0)
            .ok_or_else(|| bad("thr", format!("`{}` is not a positive throughput", f[5])))?;
        let stage = f[4].to_string();
        if stage != "prefill" && stage != "decoding" {
            return Err(bad(
                "stage",
                format!("`{stage}` is not prefill or decoding"),
            ));
        }
        rows.push(StudyRow {
            line,
            model: f[0].to_string(),
            method: f[1].to_string(),
            bsz: count(2)?,
            prompt_len: count(3)?,
            stage,
            thr,
        });
    }
    Ok(rows)
}

/// The rows as timed steps, grouped by (model, method); a grid point is (bsz, prompt_len).
pub fn to_steps(
    path: &Path,
    rows: &[StudyRow],
) -> Result<BTreeMap<(String, String), Vec<StepSample>>> {
    let mut out: BTreeMap<(String, String), Vec<StepSample>> = BTreeMap::new();
    for r in rows {
        let per_token = bytes_per_token(&r.model).ok_or_else(|| PredictError::Field {
            path: path.to_path_buf(),
            line: r.line,
            field: "model".into(),
            msg: format!(
                "`{}` is not one of the study's models (Llama-2 7B and 13B, Mistral 7B, Llama 3 8B), whose shapes kvlens knows",
                r.model
            ),
        })?;
        let mut shape = StepShape::default();
        let (phase, ms) = if r.stage == "decoding" {
            for _ in 0..r.bsz {
                shape.add_decode((per_token * r.prompt_len as u64) as usize);
            }
            ("decode", 1e3 * r.bsz as f64 / r.thr)
        } else {
            for _ in 0..r.bsz {
                shape.add_chunk(0, r.prompt_len);
            }
            ("prefill", 1e3 * (r.bsz * r.prompt_len) as f64 / r.thr)
        };
        out.entry((r.model.clone(), r.method.clone()))
            .or_default()
            .push(StepSample {
                method: r.method.clone(),
                batch: r.bsz,
                context: r.prompt_len,
                phase: phase.to_string(),
                shape,
                ms,
            });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_steps_and_bad_fields_are_named() {
        let text = "model,method,bsz,prompt_len,stage,thr\n\
            meta-llama-Llama-2-7b-hf,None-16,2,256,prefill,5000\n\
            meta-llama-Llama-2-7b-hf,None-16,4,256,decoding,100\n";
        let rows = parse(Path::new("s.csv"), text).unwrap();
        let steps = to_steps(Path::new("s.csv"), &rows).unwrap();
        let s = &steps[&(
            "meta-llama-Llama-2-7b-hf".to_string(),
            "None-16".to_string(),
        )];
        assert!((s[0].ms - 1e3 * 512.0 / 5000.0).abs() < 1e-9);
        assert_eq!(s[0].shape.prompt_tokens, 512);
        assert!((s[1].ms - 40.0).abs() < 1e-9);
        assert_eq!(s[1].shape.decode_rows, 4);
        let e = parse(
            Path::new("s.csv"),
            &text.replace("decoding,100", "decoding,-3"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("s.csv line 3") && e.contains("`thr`"), "{e}");
        let e = parse(Path::new("s.csv"), "a,b\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("header"), "{e}");
        let e = to_steps(
            Path::new("s.csv"),
            &parse(
                Path::new("s.csv"),
                &text.replace("meta-llama-Llama-2-7b-hf,None-16,4", "gpt-9,None-16,4"),
            )
            .unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 3") && e.contains("`model`"), "{e}");
    }
}
