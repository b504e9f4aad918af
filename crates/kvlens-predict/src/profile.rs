//! The step-time profile that `kvlens bench --profile FILE` writes and `kvlens predict` reads:
//! JSON Lines, so that a bad entry is named by its line. The first line describes the model and
//! the machine; every further line is one engine step that was timed, or one point of a
//! method's cache bytes against its length:
//!
//! ```text
//! {"type":"model","model":"SmolLM2-135M-Instruct","n_layers":30,"n_heads":9,"n_kv_heads":3,"head_dim":64,"context":8192,"kv_dtype":"f16","weight_bytes":...,"chunk":512,...}
//! {"type":"step","method":"full","batch":4,"context":1024,"phase":"decode","decode_rows":4,"decode_kv_bytes":...,"prompt_chunks":0,"prompt_tokens":0,"prompt_attended":0,"ms":21.3}
//! {"type":"kv","method":"full","tokens":1024,"bytes":23592960}
//! ```
//!
//! `batch` and `context` name the grid point the step belongs to (held-out error leaves whole
//! points out); the shape fields are [`kvlens_engine::sched::StepShape`]'s, what the step
//! computed.

use crate::error::{PredictError, Result};
use kvlens_engine::sched::StepShape;
use kvlens_press::{CacheShape, KvDtype, Spec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The first line: what was profiled, where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLine {
    pub model: String,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// The model's context length in tokens.
    pub context: usize,
    pub kv_dtype: String,
    /// Bytes of the weights a step reads.
    pub weight_bytes: u64,
    /// Prompt tokens per chunk of one sequence (`generate`'s cut, 512 by default).
    pub chunk: usize,
    #[serde(default)]
    pub machine: String,
    #[serde(default)]
    pub kvlens_version: String,
    /// When the profile was measured, seconds since 1970, to tell profiles apart.
    #[serde(default)]
    pub measured_unix_s: u64,
}

/// One timed engine step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSample {
    pub method: String,
    pub batch: usize,
    pub context: usize,
    /// `prefill` (the step held prompt chunks) or `decode`.
    pub phase: String,
    pub shape: StepShape,
    pub ms: f64,
}

/// A step as its line spells it: the shape's fields beside the others (written out rather
/// than flattened, so that an unknown or mistyped field is named).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepLine {
    pub method: String,
    pub batch: usize,
    pub context: usize,
    pub phase: String,
    pub decode_rows: usize,
    pub decode_kv_bytes: u64,
    pub prompt_chunks: usize,
    pub prompt_tokens: usize,
    pub prompt_attended: u64,
    pub ms: f64,
}

impl From<StepLine> for StepSample {
    fn from(l: StepLine) -> Self {
        Self {
            method: l.method,
            batch: l.batch,
            context: l.context,
            phase: l.phase,
            shape: StepShape {
                decode_rows: l.decode_rows,
                decode_kv_bytes: l.decode_kv_bytes,
                prompt_chunks: l.prompt_chunks,
                prompt_tokens: l.prompt_tokens,
                prompt_attended: l.prompt_attended,
            },
            ms: l.ms,
        }
    }
}

impl From<&StepSample> for StepLine {
    fn from(s: &StepSample) -> Self {
        Self {
            method: s.method.clone(),
            batch: s.batch,
            context: s.context,
            phase: s.phase.clone(),
            decode_rows: s.shape.decode_rows,
            decode_kv_bytes: s.shape.decode_kv_bytes,
            prompt_chunks: s.shape.prompt_chunks,
            prompt_tokens: s.shape.prompt_tokens,
            prompt_attended: s.shape.prompt_attended,
            ms: s.ms,
        }
    }
}

/// One sequence's cache bytes after `tokens` prompt tokens under a method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvPoint {
    pub method: String,
    pub tokens: usize,
    pub bytes: u64,
}

/// One line of a profile, by its `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Model(ModelLine),
    Step(StepSample),
    Kv(KvPoint),
}

impl Line {
    /// The line as JSON, `type` first.
    fn to_json(&self) -> String {
        let (kind, body) = match self {
            Line::Model(m) => ("model", serde_json::to_value(m)),
            Line::Step(s) => ("step", serde_json::to_value(StepLine::from(s))),
            Line::Kv(k) => ("kv", serde_json::to_value(k)),
        };
        let mut out = serde_json::Map::new();
        out.insert("type".into(), kind.into());
        if let Ok(serde_json::Value::Object(m)) = body {
            out.extend(m);
        }
        serde_json::Value::Object(out).to_string()
    }

    /// Reads one line; the error names the field (`batch`, `ms`, ...) and what is wrong.
    fn parse(raw: &str) -> std::result::Result<Line, (String, String)> {
        let mut v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(raw).map_err(|e| (String::new(), e.to_string()))?;
        let kind = v
            .remove("type")
            .and_then(|t| t.as_str().map(String::from))
            .ok_or_else(|| ("type".to_string(), "missing: model, step or kv".to_string()))?;
        fn typed<T: serde::de::DeserializeOwned>(
            v: serde_json::Map<String, serde_json::Value>,
        ) -> std::result::Result<T, (String, String)> {
            serde_path_to_error::deserialize(serde_json::Value::Object(v)).map_err(|e| {
                let inner = e.inner().to_string();
                // serde names an unknown or missing field in its message; the path is empty.
                let field = e.path().to_string();
                let field = if field == "." {
                    inner.split('`').nth(1).map(String::from).unwrap_or(field)
                } else {
                    field
                };
                (field, inner)
            })
        }
        match kind.as_str() {
            "model" => typed(v).map(Line::Model),
            "step" => typed::<StepLine>(v).map(|l| Line::Step(l.into())),
            "kv" => typed(v).map(Line::Kv),
            other => Err((
                "type".to_string(),
                format!("`{other}` is not model, step or kv"),
            )),
        }
    }
}

/// Everything profiled for one method.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodProfile {
    /// The canonical spec.
    pub method: String,
    pub spec: Spec,
    /// The steps, each with the line it came from (0 for profiles built in memory).
    pub steps: Vec<(usize, StepSample)>,
    pub kv: Vec<KvPoint>,
}

/// A whole profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub model: ModelLine,
    /// By canonical spec, in the order first seen.
    pub methods: Vec<MethodProfile>,
}

impl ModelLine {
    pub fn shape(&self) -> CacheShape {
        CacheShape {
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
    }

    pub fn dtype(&self) -> Result<KvDtype> {
        KvDtype::parse(&self.kv_dtype).ok_or_else(|| {
            PredictError::Invalid(format!("kv_dtype `{}` is not f16 or f32", self.kv_dtype))
        })
    }
}

impl Profile {
    /// Reads and checks a profile: every line parses, times are positive, the shape is sane,
    /// and every method spec is one kvlens knows.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| PredictError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::parse(path, &text)
    }

    /// [`Profile::read`] on text already read (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let field_err = |line: usize, field: &str, msg: String| PredictError::Field {
            path: path.to_path_buf(),
            line,
            field: field.to_string(),
            msg,
        };
        let mut model: Option<ModelLine> = None;
        let mut methods: Vec<MethodProfile> = Vec::new();
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            if raw.trim().is_empty() {
                continue;
            }
            let line = Line::parse(raw).map_err(|(field, msg)| {
                if field.is_empty() {
                    PredictError::Line {
                        path: path.to_path_buf(),
                        line: line_no,
                        msg,
                    }
                } else {
                    field_err(line_no, &field, msg)
                }
            })?;
            match line {
                Line::Model(m) => {
                    if model.is_some() {
                        return Err(PredictError::Line {
                            path: path.to_path_buf(),
                            line: line_no,
                            msg: "a second model line (one profile holds one model)".into(),
                        });
                    }
                    for (name, v) in [
                        ("n_layers", m.n_layers),
                        ("n_heads", m.n_heads),
                        ("n_kv_heads", m.n_kv_heads),
                        ("head_dim", m.head_dim),
                        ("context", m.context),
                        ("chunk", m.chunk),
                    ] {
                        if v == 0 {
                            return Err(field_err(line_no, name, "must be at least 1".into()));
                        }
                    }
                    if m.n_heads % m.n_kv_heads != 0 {
                        return Err(field_err(
                            line_no,
                            "n_kv_heads",
                            format!("{} does not divide n_heads {}", m.n_kv_heads, m.n_heads),
                        ));
                    }
                    m.dtype()
                        .map_err(|e| field_err(line_no, "kv_dtype", e.to_string()))?;
                    model = Some(m);
                }
                Line::Step(s) => {
                    if model.is_none() {
                        return Err(PredictError::Line {
                            path: path.to_path_buf(),
                            line: line_no,
                            msg: "a step before the model line".into(),
                        });
                    }
                    if !(s.ms.is_finite() && s.ms > 0.0) {
                        return Err(field_err(
                            line_no,
                            "ms",
                            format!("{} is not a positive time", s.ms),
                        ));
                    }
                    if s.shape.rows() == 0 {
                        return Err(field_err(
                            line_no,
                            "decode_rows",
                            "a step with no decode row and no prompt chunk".into(),
                        ));
                    }
                    if s.phase != "prefill" && s.phase != "decode" {
                        return Err(field_err(
                            line_no,
                            "phase",
                            format!("`{}` is not prefill or decode", s.phase),
                        ));
                    }
                    let k = method_slot(&mut methods, &mut index, &s.method)
                        .map_err(|e| field_err(line_no, "method", e))?;
                    methods[k].steps.push((line_no, s));
                }
                Line::Kv(p) => {
                    let k = method_slot(&mut methods, &mut index, &p.method)
                        .map_err(|e| field_err(line_no, "method", e))?;
                    methods[k].kv.push(p);
                }
            }
        }
        let model = model.ok_or_else(|| PredictError::Line {
            path: path.to_path_buf(),
            line: 1,
            msg: "no model line (`{\"type\":\"model\",...}`): is this a kvlens profile?".into(),
        })?;
        Ok(Self { model, methods })
    }

    /// The profile as JSON Lines.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        let mut push = |l: Line| {
            out.push_str(&l.to_json());
            out.push('\n');
        };
        push(Line::Model(self.model.clone()));
        for m in &self.methods {
            for p in &m.kv {
                push(Line::Kv(p.clone()));
            }
            for (_, s) in &m.steps {
                push(Line::Step(s.clone()));
            }
        }
        out
    }

    /// The method whose canonical spec is `spec`'s.
    pub fn method(&self, spec: &Spec) -> Option<&MethodProfile> {
        let c = spec.canonical();
        self.methods.iter().find(|m| m.method == c)
    }
}

/// The index of `method`'s profile (by canonical spec), added when new.
fn method_slot(
    methods: &mut Vec<MethodProfile>,
    index: &mut BTreeMap<String, usize>,
    method: &str,
) -> std::result::Result<usize, String> {
    let spec = Spec::parse(method).map_err(|e| format!("`{method}`: {e}"))?;
    let c = spec.canonical();
    if let Some(&k) = index.get(&c) {
        return Ok(k);
    }
    methods.push(MethodProfile {
        method: c.clone(),
        spec,
        steps: Vec::new(),
        kv: Vec::new(),
    });
    index.insert(c, methods.len() - 1);
    Ok(methods.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = r#"{"type":"model","model":"m","n_layers":2,"n_heads":4,"n_kv_heads":2,"head_dim":8,"context":4096,"kv_dtype":"f16","weight_bytes":1000,"chunk":512}"#;

    #[test]
    fn a_profile_reads_back_what_it_wrote() {
        let text = format!(
            "{MODEL}\n{}\n{}\n",
            r#"{"type":"step","method":"snapkv:budget=64","batch":1,"context":128,"phase":"decode","decode_rows":1,"decode_kv_bytes":100,"prompt_chunks":0,"prompt_tokens":0,"prompt_attended":0,"ms":2.5}"#,
            r#"{"type":"kv","method":"full","tokens":128,"bytes":4096}"#
        );
        let p = Profile::parse(Path::new("p.jsonl"), &text).unwrap();
        assert_eq!(p.methods.len(), 2);
        assert_eq!(p.methods[0].steps[0].0, 2);
        let again = Profile::parse(Path::new("p.jsonl"), &p.to_jsonl()).unwrap();
        assert_eq!(again.model, p.model);
        assert_eq!(again.methods[0].steps[0].1, p.methods[0].steps[0].1);
    }

    #[test]
    fn bad_lines_are_named_by_line_and_field() {
        let bad_ms = format!(
            "{MODEL}\n{}\n",
            r#"{"type":"step","method":"full","batch":1,"context":128,"phase":"decode","decode_rows":1,"decode_kv_bytes":100,"prompt_chunks":0,"prompt_tokens":0,"prompt_attended":0,"ms":-1}"#
        );
        let e = Profile::parse(Path::new("p.jsonl"), &bad_ms)
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.jsonl line 2") && e.contains("`ms`"), "{e}");
        let bad_type = format!(
            "{MODEL}\n{}\n",
            r#"{"type":"step","method":"full","batch":"two","context":128,"phase":"decode","decode_rows":1,"decode_kv_bytes":100,"prompt_chunks":0,"prompt_tokens":0,"prompt_attended":0,"ms":1}"#
        );
        let e = Profile::parse(Path::new("p.jsonl"), &bad_type)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("batch"), "{e}");
        let bad_method = format!(
            "{MODEL}\n{}\n",
            r#"{"type":"kv","method":"nosuch:x=1","tokens":1,"bytes":1}"#
        );
        let e = Profile::parse(Path::new("p.jsonl"), &bad_method)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("`method`"), "{e}");
        let e = Profile::parse(
            Path::new("p.jsonl"),
            "{\"type\":\"kv\",\"method\":\"full\",\"tokens\":1,\"bytes\":1}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no model line"), "{e}");
    }
}
