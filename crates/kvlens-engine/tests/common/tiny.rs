//! Tiny models with random weights, written by the tests: as Hugging Face checkpoints
//! (safetensors + config.json + a word-level tokenizer) and as GGUF files with formats chosen
//! matrix by matrix.

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use std::path::Path;

pub const DIM: usize = 256;
pub const FFN: usize = 512;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const LAYERS: usize = 2;
pub const VOCAB: usize = 96;
pub const PROMPT: [u32; 6] = [1, 17, 33, 5, 60, 71];

#[derive(Clone, Copy, PartialEq)]
pub enum Arch {
    /// Llama with Llama 3.1 rope scaling.
    Llama3,
    /// Biases on q, k and v.
    Qwen2,
    /// RMSNorm per head of q and k; heads of 128 (not `DIM / HEADS`).
    Qwen3,
}

impl Arch {
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama3 => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }

    pub fn head_dim(self) -> usize {
        match self {
            Arch::Qwen3 => 128,
            _ => DIM / HEADS,
        }
    }
}

pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.4
    }
}

/// Random weights by Hugging Face tensor name, with their shapes.
pub fn hf_tensors(arch: Arch, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let hd = arch.head_dim();
    let mut shapes: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![VOCAB, DIM])];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        let mut add = |n: &str, s: Vec<usize>| shapes.push((format!("{p}.{n}"), s));
        add("self_attn.q_proj.weight", vec![HEADS * hd, DIM]);
        add("self_attn.k_proj.weight", vec![KV_HEADS * hd, DIM]);
        add("self_attn.v_proj.weight", vec![KV_HEADS * hd, DIM]);
        add("self_attn.o_proj.weight", vec![DIM, HEADS * hd]);
        if arch == Arch::Qwen2 {
            add("self_attn.q_proj.bias", vec![HEADS * hd]);
            add("self_attn.k_proj.bias", vec![KV_HEADS * hd]);
            add("self_attn.v_proj.bias", vec![KV_HEADS * hd]);
        }
        if arch == Arch::Qwen3 {
            add("self_attn.q_norm.weight", vec![hd]);
            add("self_attn.k_norm.weight", vec![hd]);
        }
        add("mlp.gate_proj.weight", vec![FFN, DIM]);
        add("mlp.up_proj.weight", vec![FFN, DIM]);
        add("mlp.down_proj.weight", vec![DIM, FFN]);
        add("input_layernorm.weight", vec![DIM]);
        add("post_attention_layernorm.weight", vec![DIM]);
    }
    shapes.push(("model.norm.weight".into(), vec![DIM]));
    shapes.push(("lm_head.weight".into(), vec![VOCAB, DIM]));
    let mut rng = Lcg(seed);
    shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let norm = name.ends_with("norm.weight");
            let data = (0..n)
                .map(|_| if norm { 1.0 + rng.next() } else { rng.next() })
                .collect();
            (name, shape, data)
        })
        .collect()
}

pub fn config_json(arch: Arch) -> serde_json::Value {
    let mut c = serde_json::json!({
        "hidden_size": DIM, "intermediate_size": FFN, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "num_hidden_layers": LAYERS, "vocab_size": VOCAB,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 4096,
        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": false,
        "hidden_act": "silu", "sliding_window": 4096, "max_window_layers": LAYERS,
        "use_sliding_window": false
    });
    let o = c.as_object_mut().unwrap();
    match arch {
        Arch::Llama3 => {
            o.insert("model_type".into(), "llama".into());
            // Short wavelengths kept, long ones slowed, those between blended: with heads of
            // 64 and base 10⁴ the 32 frequencies fall in all three bands.
            o.insert(
                "rope_scaling".into(),
                serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
            );
        }
        Arch::Qwen2 => {
            o.insert("model_type".into(), "qwen2".into());
        }
        Arch::Qwen3 => {
            o.insert("model_type".into(), "qwen3".into());
            o.insert("head_dim".into(), 128.into());
            o.insert("attention_bias".into(), false.into());
        }
    }
    c
}

/// A word-level tokenizer over `VOCAB` words, enough for a model to load.
pub fn write_tokenizer(dir: &Path) {
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..VOCAB).map(|i| (format!("w{i}"), i.into())).collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
}

pub fn write_hf(dir: &Path, arch: Arch, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .unwrap();
            (name.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), config_json(arch).to_string()).unwrap();
    write_tokenizer(dir);
}

/// The GGUF name of a Hugging Face tensor (llama.cpp's `convert_hf_to_gguf.py` mapping).
pub fn gguf_name(hf: &str) -> String {
    if let Some(rest) = hf.strip_prefix("model.layers.") {
        let (l, n) = rest.split_once('.').unwrap();
        let n = match n {
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "self_attn.q_proj.bias" => "attn_q.bias",
            "self_attn.k_proj.bias" => "attn_k.bias",
            "self_attn.v_proj.bias" => "attn_v.bias",
            "self_attn.q_norm.weight" => "attn_q_norm.weight",
            "self_attn.k_norm.weight" => "attn_k_norm.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            other => panic!("no GGUF name for {other}"),
        };
        return format!("blk.{l}.{n}");
    }
    match hf {
        "model.embed_tokens.weight" => "token_embd.weight",
        "model.norm.weight" => "output_norm.weight",
        "lm_head.weight" => "output.weight",
        other => panic!("no GGUF name for {other}"),
    }
    .into()
}

/// llama.cpp's converter reorders the rows of Llama's q and k so that rotary pairs are
/// adjacent (GGUF llama files rotate interleaved pairs): row `(h, 2i + j)` of the file is row
/// `(h, j·hd/2 + i)` of the checkpoint.
pub fn permute_rows(data: &[f32], heads: usize, hd: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let (to, from) = (h * hd + 2 * i + j, h * hd + j * hd / 2 + i);
                out[to * cols..(to + 1) * cols]
                    .copy_from_slice(&data[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

/// Llama 3.1's frequency divisors, computed here from Hugging Face's formula
/// (`_compute_llama3_parameters`) as llama.cpp's converter writes them to `rope_freqs`.
pub fn llama3_rope_freqs(hd: usize) -> Vec<f32> {
    let (factor, low, high, old, base) = (8.0f64, 1.0f64, 4.0f64, 64.0f64, 10000.0f64);
    (0..hd / 2)
        .map(|i| {
            let inv = 1.0 / base.powf((2 * i) as f64 / hd as f64);
            let wavelen = 2.0 * std::f64::consts::PI / inv;
            let new = if wavelen < old / high {
                inv
            } else if wavelen > old / low {
                inv / factor
            } else {
                let s = (old / wavelen - low) / (high - low);
                (1.0 - s) * inv / factor + s * inv
            };
            (inv / new) as f32
        })
        .collect()
}

/// Writes the same weights as a GGUF file, each matrix in the format `format(gguf_name)`
/// gives (vectors stay f32); `tied` leaves out `output.weight`.
pub fn write_gguf(
    path: &Path,
    arch: Arch,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    format: &dyn Fn(&str) -> GgmlDType,
    tied: bool,
) {
    use gguf_file::Value;
    let hd = arch.head_dim();
    let a = arch.gguf_name();
    let mut qts: Vec<(String, QTensor)> = Vec::new();
    for (name, shape, data) in tensors {
        let g = gguf_name(name);
        if tied && g == "output.weight" {
            continue;
        }
        let mut data = data.clone();
        if arch == Arch::Llama3 && (g.ends_with("attn_q.weight") || g.ends_with("attn_k.weight")) {
            data = permute_rows(&data, shape[0] / hd, hd, shape[1]);
        }
        let t = Tensor::from_vec(data, shape.as_slice(), &Device::Cpu).unwrap();
        let dtype = if shape.len() == 1 {
            GgmlDType::F32
        } else {
            format(&g)
        };
        qts.push((g, QTensor::quantize(&t, dtype).unwrap()));
    }
    if arch == Arch::Llama3 {
        let f = llama3_rope_freqs(hd);
        let t = Tensor::from_vec(f, hd / 2, &Device::Cpu).unwrap();
        qts.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&t, GgmlDType::F32).unwrap(),
        ));
    }
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.dtype".into(), Value::U32(0)),
        (format!("{a}.embedding_length"), Value::U32(DIM as u32)),
        (format!("{a}.feed_forward_length"), Value::U32(FFN as u32)),
        (format!("{a}.block_count"), Value::U32(LAYERS as u32)),
        (format!("{a}.context_length"), Value::U32(4096)),
        (
            format!("{a}.attention.head_count"),
            Value::U32(HEADS as u32),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            Value::U32(KV_HEADS as u32),
        ),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-6),
        ),
        (format!("{a}.rope.freq_base"), Value::F32(10000.0)),
        (format!("{a}.rope.dimension_count"), Value::U32(hd as u32)),
    ];
    if arch == Arch::Qwen3 {
        meta.push((format!("{a}.attention.key_length"), Value::U32(hd as u32)));
        meta.push((format!("{a}.attention.value_length"), Value::U32(hd as u32)));
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qts.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    gguf_file::write(&mut out, &meta_refs, &t_refs).unwrap();
    std::io::Write::flush(&mut out).unwrap();
}

/// Formats spread over the matrices of both layers so that every kvlens kernel and several of
/// candle's (K-quants) sit next to each other, in both the embedding and the output.
pub fn mixed(name: &str) -> GgmlDType {
    use GgmlDType::*;
    let layer0 = [
        ("attn_q", F16),
        ("attn_k", Q8_0),
        ("attn_v", Q5_1),
        ("attn_output", Q4_0),
        ("ffn_gate", Q4_1),
        ("ffn_up", Q5_0),
        ("ffn_down", Q6K),
    ];
    let layer1 = [
        ("attn_q", Q4K),
        ("attn_k", Q5K),
        ("attn_v", Q8_0),
        ("attn_output", F16),
        ("ffn_gate", Q5_1),
        ("ffn_up", Q4_0),
        ("ffn_down", Q5_0),
    ];
    match name {
        "token_embd.weight" => Q8_0,
        "output.weight" => Q4_0,
        _ => {
            let table = if name.starts_with("blk.0.") {
                &layer0
            } else {
                &layer1
            };
            let m = name.split('.').nth(2).unwrap();
            table.iter().find(|(n, _)| *n == m).unwrap().1
        }
    }
}

/// The same spread, shifted: F16 embedding, K-quant output.
pub fn mixed_shifted(name: &str) -> GgmlDType {
    match name {
        "token_embd.weight" => GgmlDType::F16,
        "output.weight" => GgmlDType::Q6K,
        n if n.starts_with("blk.0.") => mixed(&n.replacen("blk.0.", "blk.1.", 1)),
        n => mixed(&n.replacen("blk.1.", "blk.0.", 1)),
    }
}
