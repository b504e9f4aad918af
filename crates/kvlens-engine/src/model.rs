//! The decoder-only transformer of Llama, Qwen2 and Qwen3, with the KV cache as a parameter
//! of the forward pass.
//!
//! Per layer (Touvron et al. 2023):
//!   h = x + Attn(RMSNorm(x)),  Attn = softmax(RoPE(q)·RoPE(k)ᵀ/√d)·v, through the cache
//!   x' = h + W_down(SiLU(W_gate·RMSNorm(h)) ⊙ W_up·RMSNorm(h))
//! then a final RMSNorm and the output head. Grouped-query attention shares each key/value
//! head among `n_heads / n_kv_heads` query heads. Qwen2 (Yang et al. 2024) adds biases to the
//! q, k and v projections; Qwen3 (Yang et al. 2025) instead normalizes each head of q and k
//! (RMSNorm over the head) before rotary embedding. Llama 3.1's rope scaling divides each
//! rotary frequency by a factor (`rope_freqs` in GGUF, `rope_scaling` in config.json).

use crate::error::{EngineError, Result};
use crate::gguf::Gguf;
use crate::quant::{Block, Input, Kernel, Weight};
use candle_core::quantized::GgmlDType;
use kvlens_press::{mathf, CacheShape, KvCache, KvDtype, Spec, Step};
use std::path::Path;
use std::sync::Arc;

/// How rotary embedding pairs dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): GGUF llama files (their q/k weights are permuted for it).
    Interleaved,
    /// Pairs (i, i+d/2): Hugging Face checkpoints, and GGUF Qwen files (llama.cpp's NEOX).
    Half,
}

/// The architectures kvlens runs, by their GGUF names.
pub const ARCHITECTURES: [&str; 3] = ["llama", "qwen2", "qwen3"];

#[derive(Debug, Clone)]
pub struct Config {
    /// The architecture's GGUF name (`llama`, `qwen2`, `qwen3`).
    pub arch: String,
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
    /// Per rotary frequency, the factor its angle is divided by (Llama 3.1 rope scaling).
    pub rope_freq_factors: Option<Vec<f32>>,
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
    /// Biases of q, k and v (Qwen2), added after the products.
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    /// RMSNorm weights over one head of q and of k (Qwen3), before rotary embedding.
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
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
        let empty = || Weight::f32(Arc::new(Vec::new()), 0, 0);
        Self {
            config: Config {
                arch: "llama".into(),
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
                rope_freq_factors: None,
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

    /// Reads a GGUF file of one of [`ARCHITECTURES`] (as llama.cpp's `llama-arch.cpp` names
    /// its metadata keys and tensors), refusing what kvlens would compute wrongly.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g.string("general.architecture")?.to_string();
        if !ARCHITECTURES.contains(&arch.as_str()) {
            return Err(model_err(
                &g.path,
                format!(
                    "architecture `{arch}` is not supported; kvlens runs {}",
                    ARCHITECTURES.join(", ")
                ),
            ));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let dim = g.u32(&key("embedding_length"))? as usize;
        let n_heads = g.u32(&key("attention.head_count"))? as usize;
        let n_kv_heads = g
            .u32(&key("attention.head_count_kv"))
            .unwrap_or(n_heads as u32) as usize;
        if n_heads == 0 || n_kv_heads == 0 {
            return Err(model_err(&g.path, "a head count is 0"));
        }
        let head_dim = g
            .u32(&key("attention.key_length"))
            .map(|v| v as usize)
            .unwrap_or(dim / n_heads);
        if let Ok(v) = g.u32(&key("attention.value_length")) {
            if v as usize != head_dim {
                return Err(model_err(
                    &g.path,
                    format!(
                        "value heads of {v} and key heads of {head_dim}: kvlens needs them equal"
                    ),
                ));
            }
        }
        if let Ok(r) = g.u32(&key("rope.dimension_count")) {
            if r as usize != head_dim {
                return Err(model_err(
                    &g.path,
                    format!("rotary embedding over {r} of {head_dim} head dimensions (partial rotary) is not supported"),
                ));
            }
        }
        let context = g.u32(&key("context_length")).unwrap_or(2048) as usize;
        refuse_sliding_window(
            &g.path,
            g.u32(&key("attention.sliding_window")).ok(),
            context,
        )?;
        if let Ok(t) = g.string(&key("rope.scaling.type")) {
            if t != "none" {
                return Err(model_err(
                    &g.path,
                    format!("rope scaling `{t}` is not supported (Llama 3's, read from `rope_freqs.weight`, is)"),
                ));
            }
        }
        let n_layers = g.u32(&key("block_count"))? as usize;
        let embed = gguf_weight(g, "token_embd.weight")?;
        let rope_freq_factors = if g.has_tensor("rope_freqs.weight") {
            Some(gguf_vector(g, "rope_freqs.weight")?)
        } else {
            None
        };
        let config = Config {
            arch: arch.clone(),
            n_layers,
            dim,
            ffn_dim: g.u32(&key("feed_forward_length"))? as usize,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab: embed.rows(),
            rms_eps: g.f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_base: g.f32(&key("rope.freq_base")).unwrap_or(10000.0),
            // llama.cpp's LLAMA_ROPE_TYPE_NORM for llama, NEOX for the Qwen families.
            rope_style: if arch == "llama" {
                RopeStyle::Interleaved
            } else {
                RopeStyle::Half
            },
            rope_freq_factors,
            context,
        };
        let mut layers = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let w = |n: &str| gguf_weight(g, &format!("blk.{l}.{n}.weight"));
            let v = |n: &str| gguf_vector(g, &format!("blk.{l}.{n}.weight"));
            let opt = |n: &str| -> Result<Option<Vec<f32>>> {
                let name = format!("blk.{l}.{n}");
                g.has_tensor(&name)
                    .then(|| gguf_vector(g, &name))
                    .transpose()
            };
            layers.push(Layer {
                attn_norm: v("attn_norm")?,
                wq: w("attn_q")?,
                wk: w("attn_k")?,
                wv: w("attn_v")?,
                bq: opt("attn_q.bias")?,
                bk: opt("attn_k.bias")?,
                bv: opt("attn_v.bias")?,
                q_norm: opt("attn_q_norm.weight")?,
                k_norm: opt("attn_k_norm.weight")?,
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
        let embed = match embed.kernel() {
            Kernel::Candle => dequantized(g, "token_embd.weight")?,
            Kernel::Kvlens => embed,
        };
        let t = Self {
            config,
            embed,
            layers,
            norm: gguf_vector(g, "output_norm.weight")?,
            output,
        };
        t.check(&g.path)?;
        t.self_test(&g.path)?;
        Ok(t)
    }

    /// Builds a model from Hugging Face `config.json` values and f32 tensors by name
    /// (`take` answers `None` for a tensor the checkpoint does not hold).
    pub fn from_hf(
        path: &Path,
        cfg: &serde_json::Value,
        mut take: impl FnMut(&str) -> Result<Option<(Vec<f32>, Vec<usize>)>>,
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
        let model_type = cfg
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("llama");
        let arch = match model_type {
            "llama" | "mistral" => "llama",
            "qwen2" => "qwen2",
            "qwen3" => "qwen3",
            other => {
                return Err(model_err(
                    path,
                    format!("config.json: model_type `{other}` is not supported; kvlens runs llama, mistral, qwen2 and qwen3"),
                ))
            }
        };
        let dim = num("hidden_size")?;
        let n_heads = num("num_attention_heads")?;
        let n_layers = num("num_hidden_layers")?;
        let context = num("max_position_embeddings").unwrap_or(2048);
        let sliding = match cfg.get("use_sliding_window").and_then(|v| v.as_bool()) {
            Some(false) => None,
            _ => cfg
                .get("sliding_window")
                .and_then(|v| v.as_u64())
                .map(|v| v as u32),
        };
        refuse_sliding_window(path, sliding, context)?;
        let head_dim = num("head_dim").unwrap_or(dim / n_heads.max(1));
        let rope_freq_factors = match cfg.get("rope_scaling") {
            None | Some(serde_json::Value::Null) => None,
            Some(rs) => Some(llama3_freq_factors(path, rs, head_dim, cfg)?),
        };
        let config = Config {
            arch: arch.into(),
            n_layers,
            dim,
            ffn_dim: num("intermediate_size")?,
            n_heads,
            n_kv_heads: num("num_key_value_heads").unwrap_or(n_heads),
            head_dim,
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
            rope_freq_factors,
            context,
        };
        let mut need = |name: &str| -> Result<(Vec<f32>, Vec<usize>)> {
            take(name)?.ok_or_else(|| model_err(path, format!("tensor `{name}` is missing")))
        };
        let mut weight = |name: &str| -> Result<Weight> {
            let (data, shape) = need(name)?;
            if shape.len() != 2 {
                return Err(model_err(
                    path,
                    format!("tensor `{name}` has shape {shape:?}, expected 2-D"),
                ));
            }
            Ok(Weight::f32(Arc::new(data), shape[0], shape[1]))
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
                bq: None,
                bk: None,
                bv: None,
                q_norm: None,
                k_norm: None,
            });
        }
        for (l, layer) in layers.iter_mut().enumerate() {
            let p = format!("model.layers.{l}");
            let mut opt = |n: &str| -> Result<Option<Vec<f32>>> {
                Ok(take(&format!("{p}.{n}"))?.map(|t| t.0))
            };
            layer.attn_norm = need_vec(&mut opt, path, "input_layernorm.weight")?;
            layer.ffn_norm = need_vec(&mut opt, path, "post_attention_layernorm.weight")?;
            layer.bq = opt("self_attn.q_proj.bias")?;
            layer.bk = opt("self_attn.k_proj.bias")?;
            layer.bv = opt("self_attn.v_proj.bias")?;
            layer.q_norm = opt("self_attn.q_norm.weight")?;
            layer.k_norm = opt("self_attn.k_norm.weight")?;
        }
        let norm = take("model.norm.weight")?
            .ok_or_else(|| model_err(path, "tensor `model.norm.weight` is missing"))?
            .0;
        let tied = cfg
            .get("tie_word_embeddings")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let output = match take("lm_head.weight")? {
            Some((data, shape)) if shape.len() == 2 => {
                Weight::f32(Arc::new(data), shape[0], shape[1])
            }
            Some((_, shape)) => {
                return Err(model_err(
                    path,
                    format!("lm_head.weight has shape {shape:?}"),
                ))
            }
            None if tied => embed.clone(),
            None => return Err(model_err(path, "tensor `lm_head.weight` is missing")),
        };
        let t = Self {
            config,
            embed,
            layers,
            norm,
            output,
        };
        t.check(path)?;
        t.self_test(path)?;
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
        let len = |what: String, v: &Option<Vec<f32>>, want: usize| -> Result<()> {
            match v {
                Some(v) if v.len() != want => Err(model_err(
                    path,
                    format!("{what}: length {}, expected {want}", v.len()),
                )),
                _ => Ok(()),
            }
        };
        if c.n_kv_heads == 0
            || !c.n_heads.is_multiple_of(c.n_kv_heads)
            || !c.head_dim.is_multiple_of(2)
        {
            return Err(model_err(path, "heads do not divide evenly"));
        }
        if let Some(f) = &c.rope_freq_factors {
            if f.len() != c.head_dim / 2 {
                return Err(model_err(
                    path,
                    format!(
                        "{} rope frequency factors for heads of {}",
                        f.len(),
                        c.head_dim
                    ),
                ));
            }
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
            len(format!("layer {i} q bias"), &l.bq, c.n_heads * c.head_dim)?;
            len(format!("layer {i} k bias"), &l.bk, kv)?;
            len(format!("layer {i} v bias"), &l.bv, kv)?;
            len(format!("layer {i} q norm"), &l.q_norm, c.head_dim)?;
            len(format!("layer {i} k norm"), &l.k_norm, c.head_dim)?;
        }
        bad("output", &self.output, c.vocab, c.dim)?;
        bad("token embedding", &self.embed, c.vocab, c.dim)?;
        Ok(())
    }

    /// A cheap check that the weights were read as they were meant: one forward pass of a
    /// fixed 8-token prompt, whose logits must be finite and not all equal. A file kvlens
    /// misreads fails here, at load, instead of generating text.
    fn self_test(&self, path: &Path) -> Result<()> {
        let c = &self.config;
        let tokens: Vec<u32> = (0..8u32)
            .map(|i| (i * 7919 + 1) % c.vocab.max(1) as u32)
            .collect();
        let full = Spec::parse("full").map_err(|e| model_err(path, e.to_string()))?;
        let mut cache = KvCache::new(c.cache_shape(), KvDtype::F32, full.build());
        cache.begin(Step::Prefill { last: true }, tokens.len());
        let logits = self.forward(&tokens, 0, &mut cache, Logits::Last);
        let finite = logits.iter().all(|v| v.is_finite());
        let (lo, hi) = logits
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        if !finite || hi <= lo {
            return Err(model_err(
                path,
                format!(
                    "self-test failed: a forward pass of a fixed prompt gave {} logits ({}); \
                     kvlens cannot compute this file correctly (weights: {})",
                    if finite { "constant" } else { "non-finite" },
                    if finite {
                        format!("all {lo}")
                    } else {
                        "NaN or infinite values".into()
                    },
                    self.weight_kernels()
                ),
            ));
        }
        Ok(())
    }

    /// The formats of the model's matrices, for records (`q4_1+q8_0`, `f16+q4_1+q6_k`).
    pub fn weight_format(&self) -> String {
        if !self.has_weights() {
            return "none".into();
        }
        let mut kinds: Vec<String> = self.matrices().map(|(_, w)| w.kind()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        kinds.join("+")
    }

    /// Which matrices run on candle's kernels rather than kvlens's own (llama.cpp's bits),
    /// as `q6_k: 31 matrices (output, blk.*.ffn_down) on candle`; `all on kvlens's kernels`
    /// when none do.
    /// Bytes of the matrices one forward step reads (each matrix once, the output included;
    /// the embedding table is looked up, not read whole).
    pub fn weight_bytes(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        self.matrices()
            .filter(|(_, w)| seen.insert(*w as *const Weight))
            .map(|(_, w)| w.bytes())
            .sum()
    }

    pub fn weight_kernels(&self) -> String {
        if !self.has_weights() {
            return "none (tokenizer only)".into();
        }
        let mut by_kind: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
        for (name, w) in self.matrices() {
            if w.kernel() == Kernel::Candle {
                let names = by_kind.entry(w.kind()).or_default();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        if by_kind.is_empty() {
            return "all on kvlens's kernels".into();
        }
        let parts: Vec<String> = by_kind
            .into_iter()
            .map(|(kind, names)| format!("{kind} ({}) on candle", names.join(", ")))
            .collect();
        parts.join("; ")
    }

    /// Every matrix of the forward pass with its llama.cpp tensor name pattern.
    fn matrices(&self) -> impl Iterator<Item = (&'static str, &Weight)> {
        self.layers
            .iter()
            .flat_map(|l| {
                [
                    ("blk.*.attn_q", &l.wq),
                    ("blk.*.attn_k", &l.wk),
                    ("blk.*.attn_v", &l.wv),
                    ("blk.*.attn_output", &l.wo),
                    ("blk.*.ffn_gate", &l.w_gate),
                    ("blk.*.ffn_up", &l.w_up),
                    ("blk.*.ffn_down", &l.w_down),
                ]
            })
            .chain([("output", &self.output)])
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
        let mut seqs = [Seq {
            tokens,
            pos0,
            cache,
            want,
        }];
        self.step_traced(&mut seqs, trace).pop().unwrap_or_default()
    }

    /// One forward step over several sequences, each with its own new tokens, positions,
    /// cache (begun for this step by the caller, with its own method) and wanted logits: the
    /// weight matrices multiply all rows of the step at once, attention runs per sequence
    /// against its own cache, the sequences in parallel. Returns each sequence's logits.
    ///
    /// Batch invariance: a sequence gets the same bits in any step as alone. Every row is
    /// normalized, quantized and multiplied on its own (the F16 kernel's summation order and
    /// candle's kernels are chosen per sequence), and each sequence's attention sums depend
    /// only on its own tokens.
    pub fn step(&self, seqs: &mut [Seq]) -> Vec<Vec<f32>> {
        self.step_traced(seqs, &mut |_, _, _| {})
    }

    fn step_traced(&self, seqs: &mut [Seq], trace: &mut Tracer) -> Vec<Vec<f32>> {
        let c = &self.config;
        let lens: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
        let n: usize = lens.iter().sum();
        if n == 0 {
            return vec![Vec::new(); seqs.len()];
        }
        let (dim, hd) = (c.dim, c.head_dim);
        let qw = c.n_heads * hd;
        let kvw = c.n_kv_heads * hd;
        let positions: Vec<u32> = seqs
            .iter()
            .flat_map(|s| (s.pos0..s.pos0 + s.tokens.len()).map(|p| p as u32))
            .collect();
        let rope = RopeTable::new(c, &positions);

        let mut x = vec![0f32; n * dim]; // (n, dim), the sequences' rows one after another
        for (t, &tok) in seqs.iter().flat_map(|s| s.tokens).enumerate() {
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

        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, c.rms_eps, &mut h);
            trace("attn_norm", Some(l), &h);
            let input = Input::segmented(&h, dim, &lens);
            layer.wq.matmul(&input, &mut q);
            layer.wk.matmul(&input, &mut k);
            layer.wv.matmul(&input, &mut v);
            add_bias(&mut q, layer.bq.as_deref());
            add_bias(&mut k, layer.bk.as_deref());
            add_bias(&mut v, layer.bv.as_deref());
            if let Some(w) = &layer.q_norm {
                rms_norm_in_place(&mut q, w, c.rms_eps);
            }
            if let Some(w) = &layer.k_norm {
                rms_norm_in_place(&mut k, w, c.rms_eps);
            }
            rope.apply(&mut q, c.n_heads);
            rope.apply(&mut k, c.n_kv_heads);
            trace("Qcur", Some(l), &q);
            trace("Kcur", Some(l), &k);
            trace("Vcur", Some(l), &v);
            attend_each(seqs, l, &positions, &q, &k, &v, &mut att, (qw, kvw));
            trace("kqv_out", Some(l), &att);
            layer.wo.matmul(&Input::segmented(&att, qw, &lens), &mut o);
            add_in_place(&mut x, &o);
            trace("ffn_inp", Some(l), &x);

            rms_norm(&x, &layer.ffn_norm, c.rms_eps, &mut h);
            trace("ffn_norm", Some(l), &h);
            let input = Input::segmented(&h, dim, &lens);
            layer.w_gate.matmul(&input, &mut gate);
            layer.w_up.matmul(&input, &mut up);
            mathf::swiglu_in_place(&mut gate, &up);
            layer
                .w_down
                .matmul(&Input::segmented(&gate, c.ffn_dim, &lens), &mut o);
            add_in_place(&mut x, &o);
            trace("l_out", Some(l), &x);
        }

        // The rows whose logits are wanted, sequence by sequence.
        let mut rows = Vec::new();
        let mut out_lens = Vec::with_capacity(seqs.len());
        let mut start = 0;
        for (s, &len) in seqs.iter().zip(&lens) {
            let take = match (s.want, len) {
                (_, 0) => 0..0,
                (Logits::Last, _) => start + len - 1..start + len,
                (Logits::All, _) => start..start + len,
            };
            out_lens.push(take.len());
            rows.extend_from_slice(&x[take.start * dim..take.end * dim]);
            start += len;
        }
        let m = rows.len() / dim;
        let mut hn = vec![0f32; m * dim];
        rms_norm(&rows, &self.norm, c.rms_eps, &mut hn);
        trace("result_norm", None, &hn);
        let mut logits = vec![0f32; m * c.vocab];
        self.output
            .matmul(&Input::segmented(&hn, dim, &out_lens), &mut logits);
        trace("result_output", None, &logits);
        let mut out = Vec::with_capacity(seqs.len());
        let mut at = 0;
        for len in out_lens {
            out.push(logits[at * c.vocab..(at + len) * c.vocab].to_vec());
            at += len;
        }
        out
    }
}

/// One sequence's share of a batched forward step ([`Transformer::step`]).
pub struct Seq<'a> {
    /// The new tokens, at positions `pos0..`.
    pub tokens: &'a [u32],
    pub pos0: usize,
    /// The sequence's cache, begun for this step (`KvCache::begin`) by the caller.
    pub cache: &'a mut KvCache,
    pub want: Logits,
}

/// Each sequence's attention against its own cache, the sequences in parallel: `q`, `k`, `v`
/// and `att` hold the step's rows, sequence after sequence; `widths` are the (q, kv) row widths.
#[allow(clippy::too_many_arguments)]
fn attend_each(
    seqs: &mut [Seq],
    layer: usize,
    positions: &[u32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    att: &mut [f32],
    (qw, kvw): (usize, usize),
) {
    use rayon::prelude::*;
    if let [s] = seqs {
        s.cache.attend(layer, positions, q, k, v, att);
        return;
    }
    let mut parts = Vec::with_capacity(seqs.len());
    let (mut rest, mut row) = (att, 0);
    for s in seqs.iter() {
        let n = s.tokens.len();
        let (mine, tail) = rest.split_at_mut(n * qw);
        parts.push((row, mine));
        rest = tail;
        row += n;
    }
    seqs.par_iter_mut()
        .zip(parts.into_par_iter())
        .for_each(|(s, (r0, out))| {
            let n = s.tokens.len();
            if n == 0 {
                return;
            }
            s.cache.attend(
                layer,
                &positions[r0..r0 + n],
                &q[r0 * qw..(r0 + n) * qw],
                &k[r0 * kvw..(r0 + n) * kvw],
                &v[r0 * kvw..(r0 + n) * kvw],
                out,
            );
        });
}

fn need_vec(
    opt: &mut impl FnMut(&str) -> Result<Option<Vec<f32>>>,
    path: &Path,
    name: &str,
) -> Result<Vec<f32>> {
    opt(name)?.ok_or_else(|| model_err(path, format!("tensor `…{name}` is missing in a layer")))
}

/// Refuses a model that asks for sliding-window attention over fewer tokens than its context:
/// kvlens attends over the whole cache and would compute something else past the window.
fn refuse_sliding_window(path: &Path, window: Option<u32>, context: usize) -> Result<()> {
    match window {
        Some(w) if w > 0 && (w as usize) < context => Err(model_err(
            path,
            format!(
                "the model asks for sliding-window attention over {w} tokens (its context is \
                 {context}); kvlens does not run sliding-window attention"
            ),
        )),
        _ => Ok(()),
    }
}

/// Llama 3.1's rope scaling as a divisor per rotary frequency (Hugging Face's
/// `_compute_llama3_parameters`; llama.cpp's converter writes the same as `rope_freqs`): long
/// wavelengths are slowed by `factor`, short ones kept, those between blended smoothly.
fn llama3_freq_factors(
    path: &Path,
    rs: &serde_json::Value,
    head_dim: usize,
    cfg: &serde_json::Value,
) -> Result<Vec<f32>> {
    let kind = rs
        .get("rope_type")
        .or_else(|| rs.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("?");
    if kind == "default" {
        return Ok(vec![1.0; head_dim / 2]);
    }
    if kind != "llama3" {
        return Err(model_err(
            path,
            format!("config.json: rope_scaling of type `{kind}` is not supported (llama3 is)"),
        ));
    }
    let f = |k: &str| -> Result<f64> {
        rs.get(k).and_then(|v| v.as_f64()).ok_or_else(|| {
            model_err(
                path,
                format!("config.json: rope_scaling.{k} is missing or not a number"),
            )
        })
    };
    let (factor, low, high, old) = (
        f("factor")?,
        f("low_freq_factor")?,
        f("high_freq_factor")?,
        f("original_max_position_embeddings")?,
    );
    let base = cfg
        .get("rope_theta")
        .and_then(|v| v.as_f64())
        .unwrap_or(10000.0);
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    Ok((0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / base.powf(2.0 * i as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let scaled = if wavelen < high_wavelen {
                freq
            } else if wavelen > low_wavelen {
                freq / factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 - smooth) * freq / factor + smooth * freq
            };
            (freq / scaled) as f32
        })
        .collect())
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Adds `b` to every row of `x` (llama.cpp's `ggml_add` of a bias after the product).
fn add_bias(x: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        for row in x.chunks_exact_mut(b.len()) {
            add_in_place(row, b);
        }
    }
}

/// RMSNorm as ggml: squares in f32 summed in f64, `scale = 1/√(mean + eps)` in f32, then
/// `(x·scale)·w`; over every run of `w.len()` values of `x` (a token, or one head).
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

fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let src = x.to_vec();
    rms_norm(&src, w, eps, x);
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
        // θ_i = p · base^(−2i/d), advanced by repeated multiplication as ggml does, then
        // divided by the frequency's factor where the model has them (ggml's `rope_yarn`
        // with no extrapolation).
        let theta_scale = c.rope_base.powf(-2.0 / c.head_dim as f32);
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            let mut theta = p as f32;
            for i in 0..half {
                let t = match &c.rope_freq_factors {
                    Some(f) => theta / f[i],
                    None => theta,
                };
                cos.push(t.cos());
                sin.push(t.sin());
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

/// One weight matrix of a GGUF file, multiplied by kvlens's kernels where it has one for the
/// format (F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) and by candle's
/// otherwise.
pub fn gguf_weight(g: &Gguf, name: &str) -> Result<Weight> {
    let t = g.tensor(name)?;
    let (rows, cols) = (t.rows, t.cols);
    Ok(match (t.dtype, Block::from_ggml(t.dtype)) {
        (_, Some(block)) => Weight::blocks(block, t.bytes, rows, cols),
        (dtype, None) if crate::kquant::KFmt::from_ggml(dtype).is_some() && cols % 256 == 0 => {
            let fmt = crate::kquant::KFmt::from_ggml(dtype).expect("checked");
            Weight::kquant(fmt, t.bytes, rows, cols)
        }
        (GgmlDType::F16, _) => Weight::f16(t.bytes, rows, cols),
        (GgmlDType::F32, _) => Weight::f32(
            Arc::new(
                t.data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            rows,
            cols,
        ),
        (dtype, None) => {
            let q = g.qtensor(name)?;
            let m = candle_core::quantized::QMatMul::from_qtensor(q)
                .map_err(|e| model_err(&g.path, format!("tensor `{name}`: {e}")))?;
            Weight::candle(Arc::new(m), dtype, rows, cols)
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
    Ok(Weight::f32(Arc::new(dequantized_vec(g, name)?), rows, cols))
}
