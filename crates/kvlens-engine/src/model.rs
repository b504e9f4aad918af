//! The Llama-architecture transformer, with the KV cache as a parameter of the forward pass.
//!
//! Per layer (Touvron et al. 2023):
//!   h = x + Attn(RMSNorm(x)),  Attn = softmax(RoPE(q)·RoPE(k)ᵀ/√d)·v, through the cache
//!   x' = h + W_down(SiLU(W_gate·RMSNorm(h)) ⊙ W_up·RMSNorm(h))
//! then a final RMSNorm and the output head. Grouped-query attention shares each key/value
//! head among `n_heads / n_kv_heads` query heads.

use crate::error::{EngineError, Result};
use crate::gguf::Gguf;
use crate::quant::{Q8Acts, Weight};
use candle_core::quantized::GgmlDType;
use kvlens_press::{mathf, CacheShape, KvCache};
use std::path::Path;
use std::sync::Arc;

/// How rotary embedding pairs dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): GGUF llama files (their q/k weights are permuted for it).
    Interleaved,
    /// Pairs (i, i+d/2): Hugging Face checkpoints.
    Half,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub n_layers: usize,
    pub dim: usize,
    pub ffn_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    pub rope_style: RopeStyle,
    /// The longest context the model was trained for.
    pub context: usize,
}

impl Config {
    pub fn cache_shape(&self) -> CacheShape {
        CacheShape {
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    wo: Weight,
    ffn_norm: Vec<f32>,
    w_gate: Weight,
    w_up: Weight,
    w_down: Weight,
}

pub struct Transformer {
    pub config: Config,
    embed: Weight,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: Weight,
}

/// Sees an intermediate activation of a forward pass: its llama.cpp tensor name, its layer
/// (none after the last) and its values ([`Transformer::forward_traced`]).
pub type Tracer<'a> = dyn FnMut(&str, Option<usize>, &[f32]) + 'a;

/// Which logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    Last,
    All,
}

fn model_err(path: &Path, msg: impl Into<String>) -> EngineError {
    EngineError::Model {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

impl Transformer {
    /// A transformer without weights, for a model that only tokenizes (prompts sent to a
    /// server): its context length and vocabulary size are known; a forward pass panics.
    pub fn config_only(context: usize, vocab: usize) -> Self {
        let empty = || Weight::F32 {
            data: Arc::new(Vec::new()),
            rows: 0,
            cols: 0,
        };
        Self {
            config: Config {
                n_layers: 0,
                dim: 0,
                ffn_dim: 0,
                n_heads: 0,
                n_kv_heads: 0,
                head_dim: 0,
                vocab,
                rms_eps: 0.0,
                rope_base: 0.0,
                rope_style: RopeStyle::Half,
                context,
            },
            embed: empty(),
            layers: Vec::new(),
            norm: Vec::new(),
            output: empty(),
        }
    }

    /// Whether the weights were loaded (see [`Transformer::config_only`]).
    pub fn has_weights(&self) -> bool {
        !self.layers.is_empty()
    }

    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g.string("general.architecture")?;
        if arch != "llama" {
            return Err(model_err(
                &g.path,
                format!("architecture `{arch}` is not supported; kvlens runs `llama` models"),
            ));
        }
        let key = |k: &str| format!("llama.{k}");
        let dim = g.u32(&key("embedding_length"))? as usize;
        let n_heads = g.u32(&key("attention.head_count"))? as usize;
        let n_kv_heads = g
            .u32(&key("attention.head_count_kv"))
            .unwrap_or(n_heads as u32) as usize;
        let head_dim = dim / n_heads;
        let n_layers = g.u32(&key("block_count"))? as usize;
        let embed = gguf_weight(g, "token_embd.weight")?;
        let config = Config {
            n_layers,
            dim,
            ffn_dim: g.u32(&key("feed_forward_length"))? as usize,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab: embed.rows(),
            rms_eps: g.f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_base: g.f32(&key("rope.freq_base")).unwrap_or(10000.0),
            rope_style: RopeStyle::Interleaved,
            context: g.u32(&key("context_length")).unwrap_or(2048) as usize,
        };
        let mut layers = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let w = |n: &str| gguf_weight(g, &format!("blk.{l}.{n}.weight"));
            let v = |n: &str| gguf_vector(g, &format!("blk.{l}.{n}.weight"));
            layers.push(Layer {
                attn_norm: v("attn_norm")?,
                wq: w("attn_q")?,
                wk: w("attn_k")?,
                wv: w("attn_v")?,
                wo: w("attn_output")?,
                ffn_norm: v("ffn_norm")?,
                w_gate: w("ffn_gate")?,
                w_up: w("ffn_up")?,
                w_down: w("ffn_down")?,
            });
        }
        let output = if g.has_tensor("output.weight") {
            gguf_weight(g, "output.weight")?
        } else {
            embed.clone()
        };
        let embed = match embed {
            Weight::Candle(..) => dequantized(g, "token_embd.weight")?,
            e => e,
        };
        let t = Self {
            config,
            embed,
            layers,
            norm: gguf_vector(g, "output_norm.weight")?,
            output,
        };
        t.check(&g.path)?;
        Ok(t)
    }

    /// Builds a model from Hugging Face `config.json` values and f32 tensors by name.
    pub fn from_hf(
        path: &Path,
        cfg: &serde_json::Value,
        mut take: impl FnMut(&str) -> Result<(Vec<f32>, Vec<usize>)>,
    ) -> Result<Self> {
        let num = |k: &str| -> Result<usize> {
            cfg.get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| {
                    model_err(
                        path,
                        format!("config.json: field `{k}` is missing or not an integer"),
                    )
                })
        };
        let dim = num("hidden_size")?;
        let n_heads = num("num_attention_heads")?;
        let n_layers = num("num_hidden_layers")?;
        let config = Config {
            n_layers,
            dim,
            ffn_dim: num("intermediate_size")?,
            n_heads,
            n_kv_heads: num("num_key_value_heads").unwrap_or(n_heads),
            head_dim: num("head_dim").unwrap_or(dim / n_heads),
            vocab: num("vocab_size")?,
            rms_eps: cfg
                .get("rms_norm_eps")
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-6) as f32,
            rope_base: cfg
                .get("rope_theta")
                .and_then(|v| v.as_f64())
                .unwrap_or(10000.0) as f32,
            rope_style: RopeStyle::Half,
            context: num("max_position_embeddings").unwrap_or(2048),
        };
        let mut weight = |name: &str| -> Result<Weight> {
            let (data, shape) = take(name)?;
            if shape.len() != 2 {
                return Err(model_err(
                    path,
                    format!("tensor `{name}` has shape {shape:?}, expected 2-D"),
                ));
            }
            Ok(Weight::F32 {
                data: Arc::new(data),
                rows: shape[0],
                cols: shape[1],
            })
        };
        let embed = weight("model.embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let p = format!("model.layers.{l}");
            layers.push(Layer {
                wq: weight(&format!("{p}.self_attn.q_proj.weight"))?,
                wk: weight(&format!("{p}.self_attn.k_proj.weight"))?,
                wv: weight(&format!("{p}.self_attn.v_proj.weight"))?,
                wo: weight(&format!("{p}.self_attn.o_proj.weight"))?,
                w_gate: weight(&format!("{p}.mlp.gate_proj.weight"))?,
                w_up: weight(&format!("{p}.mlp.up_proj.weight"))?,
                w_down: weight(&format!("{p}.mlp.down_proj.weight"))?,
                attn_norm: Vec::new(),
                ffn_norm: Vec::new(),
            });
        }
        for (l, layer) in layers.iter_mut().enumerate() {
            layer.attn_norm = take(&format!("model.layers.{l}.input_layernorm.weight"))?.0;
            layer.ffn_norm = take(&format!("model.layers.{l}.post_attention_layernorm.weight"))?.0;
        }
        let norm = take("model.norm.weight")?.0;
        let tied = cfg
            .get("tie_word_embeddings")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let output = match take("lm_head.weight") {
            Ok((data, shape)) if shape.len() == 2 => Weight::F32 {
                data: Arc::new(data),
                rows: shape[0],
                cols: shape[1],
            },
            _ if tied => embed.clone(),
            Ok((_, shape)) => {
                return Err(model_err(
                    path,
                    format!("lm_head.weight has shape {shape:?}"),
                ))
            }
            Err(e) => return Err(e),
        };
        let t = Self {
            config,
            embed,
            layers,
            norm,
            output,
        };
        t.check(path)?;
        Ok(t)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let c = &self.config;
        let kv = c.n_kv_heads * c.head_dim;
        let bad = |what: &str, w: &Weight, rows: usize, cols: usize| -> Result<()> {
            if w.rows() != rows || w.cols() != cols {
                return Err(model_err(
                    path,
                    format!(
                        "{what}: shape ({}, {}), expected ({rows}, {cols})",
                        w.rows(),
                        w.cols()
                    ),
                ));
            }
            Ok(())
        };
        if !c.n_heads.is_multiple_of(c.n_kv_heads) || !c.head_dim.is_multiple_of(2) {
            return Err(model_err(path, "heads do not divide evenly"));
        }
        for (i, l) in self.layers.iter().enumerate() {
            bad(
                &format!("layer {i} q"),
                &l.wq,
                c.n_heads * c.head_dim,
                c.dim,
            )?;
            bad(&format!("layer {i} k"), &l.wk, kv, c.dim)?;
            bad(&format!("layer {i} v"), &l.wv, kv, c.dim)?;
            bad(
                &format!("layer {i} o"),
                &l.wo,
                c.dim,
                c.n_heads * c.head_dim,
            )?;
            bad(&format!("layer {i} gate"), &l.w_gate, c.ffn_dim, c.dim)?;
            bad(&format!("layer {i} up"), &l.w_up, c.ffn_dim, c.dim)?;
            bad(&format!("layer {i} down"), &l.w_down, c.dim, c.ffn_dim)?;
            if l.attn_norm.len() != c.dim || l.ffn_norm.len() != c.dim {
                return Err(model_err(
                    path,
                    format!("layer {i}: norm weights of the wrong length"),
                ));
            }
        }
        bad("output", &self.output, c.vocab, c.dim)?;
        Ok(())
    }

    /// The weight formats of the model, for records (`q4_1`, `q8_0`, `f32`...).
    pub fn weight_format(&self) -> String {
        let mut kinds: Vec<&str> = self
            .layers
            .iter()
            .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down])
            .chain([&self.output])
            .map(|w| w.kind())
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        kinds.join("+")
    }

    /// Runs `tokens` at absolute positions `pos0..` through the model and the cache.
    ///
    /// Returns the logits of the last token (`Logits::Last`, length `vocab`) or of every
    /// token (`Logits::All`, `n × vocab`).
    pub fn forward(
        &self,
        tokens: &[u32],
        pos0: usize,
        cache: &mut KvCache,
        want: Logits,
    ) -> Vec<f32> {
        self.forward_traced(tokens, pos0, cache, want, &mut |_, _, _| {})
    }

    /// [`Transformer::forward`], showing `trace` the intermediate activations by llama.cpp's
    /// tensor name and layer (`attn_norm`, `Qcur` and `Kcur` after rotary embedding, `Vcur`,
    /// `kqv_out`, `ffn_inp`, `ffn_norm`, `l_out`, then `result_norm` and `result_output`
    /// with no layer), each row-major with one row per token: for comparing with llama.cpp's
    /// own tensors bit for bit (scripts/llamacpp_trace.py).
    pub fn forward_traced(
        &self,
        tokens: &[u32],
        pos0: usize,
        cache: &mut KvCache,
        want: Logits,
        trace: &mut Tracer,
    ) -> Vec<f32> {
        let c = &self.config;
        let n = tokens.len();
        let (dim, hd) = (c.dim, c.head_dim);
        let qw = c.n_heads * hd;
        let kvw = c.n_kv_heads * hd;
        let positions: Vec<u32> = (pos0..pos0 + n).map(|p| p as u32).collect();
        let rope = RopeTable::new(c, &positions);

        let mut x = vec![0f32; n * dim]; // (n, dim)
        for (t, &tok) in tokens.iter().enumerate() {
            self.embed.row(tok as usize, &mut x[t * dim..(t + 1) * dim]);
        }
        let mut h = vec![0f32; n * dim];
        let mut q = vec![0f32; n * qw]; // (n, n_heads·hd)
        let mut k = vec![0f32; n * kvw]; // (n, n_kv·hd)
        let mut v = vec![0f32; n * kvw];
        let mut att = vec![0f32; n * qw];
        let mut o = vec![0f32; n * dim];
        let mut gate = vec![0f32; n * c.ffn_dim]; // (n, ffn)
        let mut up = vec![0f32; n * c.ffn_dim];
        let mut acts = Q8Acts::default();

        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, c.rms_eps, &mut h);
            trace("attn_norm", Some(l), &h);
            quantize_for(&layer.wq, &h, dim, &mut acts);
            layer.wq.matmul(&h, &acts, &mut q);
            layer.wk.matmul(&h, &acts, &mut k);
            layer.wv.matmul(&h, &acts, &mut v);
            rope.apply(&mut q, c.n_heads);
            rope.apply(&mut k, c.n_kv_heads);
            trace("Qcur", Some(l), &q);
            trace("Kcur", Some(l), &k);
            trace("Vcur", Some(l), &v);
            cache.attend(l, &positions, &q, &k, &v, &mut att);
            trace("kqv_out", Some(l), &att);
            quantize_for(&layer.wo, &att, qw, &mut acts);
            layer.wo.matmul(&att, &acts, &mut o);
            add_in_place(&mut x, &o);
            trace("ffn_inp", Some(l), &x);

            rms_norm(&x, &layer.ffn_norm, c.rms_eps, &mut h);
            trace("ffn_norm", Some(l), &h);
            quantize_for(&layer.w_gate, &h, dim, &mut acts);
            layer.w_gate.matmul(&h, &acts, &mut gate);
            layer.w_up.matmul(&h, &acts, &mut up);
            mathf::swiglu_in_place(&mut gate, &up);
            quantize_for(&layer.w_down, &gate, c.ffn_dim, &mut acts);
            layer.w_down.matmul(&gate, &acts, &mut o);
            add_in_place(&mut x, &o);
            trace("l_out", Some(l), &x);
        }

        let rows = match want {
            Logits::Last => &x[(n - 1) * dim..],
            Logits::All => &x[..],
        };
        let m = rows.len() / dim;
        let mut hn = vec![0f32; m * dim];
        rms_norm(rows, &self.norm, c.rms_eps, &mut hn);
        trace("result_norm", None, &hn);
        let mut logits = vec![0f32; m * c.vocab];
        quantize_for(&self.output, &hn, dim, &mut acts);
        self.output.matmul(&hn, &acts, &mut logits);
        trace("result_output", None, &logits);
        logits
    }
}

fn quantize_for(w: &Weight, x: &[f32], cols: usize, acts: &mut Q8Acts) {
    if w.wants_q8() {
        acts.fill(x, cols);
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// RMSNorm as ggml: squares in f32 summed in f64, `scale = 1/√(mean + eps)` in f32, then
/// `(x·scale)·w`.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let dim = w.len();
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let sum: f64 = xr.iter().map(|&v| (v * v) as f64).sum();
        let mean = (sum / dim as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = (v * scale) * g;
        }
    }
}

/// cos/sin of every (position, frequency) pair of one forward pass.
struct RopeTable {
    style: RopeStyle,
    head_dim: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    fn new(c: &Config, positions: &[u32]) -> Self {
        let half = c.head_dim / 2;
        // θ_i = p · base^(−2i/d), advanced by repeated multiplication as ggml does.
        let theta_scale = c.rope_base.powf(-2.0 / c.head_dim as f32);
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            let mut theta = p as f32;
            for _ in 0..half {
                cos.push(theta.cos());
                sin.push(theta.sin());
                theta *= theta_scale;
            }
        }
        Self {
            style: c.rope_style,
            head_dim: c.head_dim,
            cos,
            sin,
        }
    }

    /// Rotates every head of `x` (n, heads·head_dim) in place.
    fn apply(&self, x: &mut [f32], heads: usize) {
        let hd = self.head_dim;
        let half = hd / 2;
        for (t, row) in x.chunks_exact_mut(heads * hd).enumerate() {
            let cos = &self.cos[t * half..(t + 1) * half];
            let sin = &self.sin[t * half..(t + 1) * half];
            for head in row.chunks_exact_mut(hd) {
                for i in 0..half {
                    let (a, b) = match self.style {
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        RopeStyle::Half => (i, i + half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    // As ggml's compiled loop: each cos product fused with the rounded
                    // sin product (`vfmaddsub`).
                    head[a] = x0.mul_add(cos[i], -(x1 * sin[i]));
                    head[b] = x0.mul_add(sin[i], x1 * cos[i]);
                }
            }
        }
    }
}

fn gguf_vector(g: &Gguf, name: &str) -> Result<Vec<f32>> {
    let t = g.tensor(name)?;
    match t.dtype {
        GgmlDType::F32 => Ok(t
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        _ => dequantized_vec(g, name),
    }
}

/// One weight matrix of a GGUF file, multiplied by kvlens's kernels where it has one.
pub fn gguf_weight(g: &Gguf, name: &str) -> Result<Weight> {
    let t = g.tensor(name)?;
    let (rows, cols) = (t.rows, t.cols);
    Ok(match t.dtype {
        GgmlDType::Q4_1 => Weight::Q4_1 {
            data: t.bytes,
            rows,
            cols,
        },
        GgmlDType::Q8_0 => Weight::Q8_0 {
            data: t.bytes,
            rows,
            cols,
        },
        GgmlDType::F32 => Weight::F32 {
            data: Arc::new(
                t.data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            rows,
            cols,
        },
        _ => {
            let q = g.qtensor(name)?;
            let m = candle_core::quantized::QMatMul::from_qtensor(q)
                .map_err(|e| model_err(&g.path, format!("tensor `{name}`: {e}")))?;
            Weight::Candle(Arc::new(m), rows, cols)
        }
    })
}

fn dequantized_vec(g: &Gguf, name: &str) -> Result<Vec<f32>> {
    g.qtensor(name)?
        .dequantize(&candle_core::Device::Cpu)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| model_err(&g.path, format!("tensor `{name}`: {e}")))
}

fn dequantized(g: &Gguf, name: &str) -> Result<Weight> {
    let t = g.tensor(name)?;
    let (rows, cols) = (t.rows, t.cols);
    Ok(Weight::F32 {
        data: Arc::new(dequantized_vec(g, name)?),
        rows,
        cols,
    })
}
