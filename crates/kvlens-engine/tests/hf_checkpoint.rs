//! Hugging Face checkpoints (config.json + safetensors + tokenizer.json): a tiny random
//! Llama written by the test loads from a folder and from a Hugging Face cache
//! (`hf:ORG/NAME`, offline), and its logits equal candle-transformers' Llama.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama as reference;
use common::tiny::Lcg;
use kvlens_engine::{LoadOptions, Logits, Model};
use kvlens_press::{KvDtype, Spec, Step};
use std::path::Path;

const DIM: usize = 64;
const FFN: usize = 96;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const LAYERS: usize = 2;
const VOCAB: usize = 40;

fn write_tiny_llama(dir: &Path) {
    let mut rng = Lcg(42);
    let hd = DIM / HEADS;
    let mut shapes: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![VOCAB, DIM])];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        shapes.push((
            format!("{p}.self_attn.q_proj.weight"),
            vec![HEADS * hd, DIM],
        ));
        shapes.push((
            format!("{p}.self_attn.k_proj.weight"),
            vec![KV_HEADS * hd, DIM],
        ));
        shapes.push((
            format!("{p}.self_attn.v_proj.weight"),
            vec![KV_HEADS * hd, DIM],
        ));
        shapes.push((
            format!("{p}.self_attn.o_proj.weight"),
            vec![DIM, HEADS * hd],
        ));
        shapes.push((format!("{p}.mlp.gate_proj.weight"), vec![FFN, DIM]));
        shapes.push((format!("{p}.mlp.up_proj.weight"), vec![FFN, DIM]));
        shapes.push((format!("{p}.mlp.down_proj.weight"), vec![DIM, FFN]));
        shapes.push((format!("{p}.input_layernorm.weight"), vec![DIM]));
        shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![DIM]));
    }
    shapes.push(("model.norm.weight".into(), vec![DIM]));
    shapes.push(("lm_head.weight".into(), vec![VOCAB, DIM]));
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let norm = name.ends_with("norm.weight");
            (0..n)
                .flat_map(|_| {
                    let v = if norm { 1.0 + rng.next() } else { rng.next() };
                    v.to_le_bytes()
                })
                .collect()
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = shapes
        .iter()
        .zip(&data)
        .map(|((name, shape), d)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": DIM, "intermediate_size": FFN,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "num_hidden_layers": LAYERS,
        "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2,
        "tie_word_embeddings": false
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let words = [
        "[UNK]", "<s>", "</s>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "key",
        "is", "42",
    ];
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i.into()))
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [
            {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let tcfg = serde_json::json!({
        "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true,
        "chat_template": "{% for m in messages %}<s>{{ m['role'] }} {{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<s>assistant{% endif %}"
    });
    std::fs::write(dir.join("tokenizer_config.json"), tcfg.to_string()).unwrap();
}

fn reference_logits(dir: &Path, tokens: &[u32]) -> Vec<Vec<f32>> {
    let cfg: reference::LlamaConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = cfg.into_config(false);
    // SAFETY: the file was just written by this test and is not modified while mapped.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let model = reference::Llama::load(vb, &cfg).unwrap();
    let mut cache = reference::Cache::new(true, DType::F32, &cfg, &Device::Cpu).unwrap();
    let mut out = Vec::new();
    // Prompt in one pass, then one token at a time through the cache.
    let x = Tensor::new(&tokens[..4], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    out.push(
        model
            .forward(&x, 0, &mut cache)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap(),
    );
    for (i, &t) in tokens[4..].iter().enumerate() {
        let x = Tensor::new(&[t], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        out.push(
            model
                .forward(&x, 4 + i, &mut cache)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap(),
        );
    }
    out
}

fn our_logits(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache(&Spec::parse("full").unwrap(), KvDtype::F32);
    cache.begin(Step::Prefill { last: true }, 4);
    let mut out = vec![model
        .transformer
        .forward(&tokens[..4], 0, &mut cache, Logits::Last)];
    for (i, &t) in tokens[4..].iter().enumerate() {
        cache.begin(Step::Decode, 1);
        out.push(
            model
                .transformer
                .forward(&[t], 4 + i, &mut cache, Logits::Last),
        );
    }
    out
}

#[test]
fn tiny_hf_llama_matches_candle_transformers() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(dir.path());
    let model = Model::from_hf_folder(dir.path()).unwrap();
    assert_eq!(model.config().n_kv_heads, KV_HEADS);
    let ids = model
        .encode_prompt("the cat sat on the mat", false)
        .unwrap();
    assert_eq!(ids, vec![1, 3, 4, 5, 6, 3, 7], "BOS then the words");
    let chat = model.encode_prompt("the </s> dog", true).unwrap();
    // The user's `</s>` stays text ([UNK] here); the template's markers are special.
    assert_eq!(chat, vec![1, 0, 3, 0, 0, 0, 9, 2, 1, 0]);
    let tokens = [1u32, 3, 4, 5, 6, 3, 7, 12, 13, 14];
    let want = reference_logits(dir.path(), &tokens);
    let got = our_logits(&model, &tokens);
    for (step, (w, g)) in want.iter().zip(&got).enumerate() {
        let diff = w
            .iter()
            .zip(g)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "step {step}: max |Δlogit| = {diff}");
    }
}

#[test]
fn hub_models_load_from_the_hugging_face_cache_offline() {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/models--kvlens-test--tiny");
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    write_tiny_llama(&snap);
    // This test binary holds only tests that agree on HF_HOME being set here.
    std::env::set_var("HF_HOME", home.path());
    let model = Model::load(
        "hf:kvlens-test/tiny",
        &LoadOptions { offline: true },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(model.config().n_layers, LAYERS);
    assert_eq!(model.name, "hf:kvlens-test/tiny");
    let err = Model::load(
        "hf:kvlens-test/absent",
        &LoadOptions { offline: true },
        &mut |_| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("not in the Hugging Face cache"), "{err}");
}

#[test]
fn a_tokenizer_only_load_reads_no_weights_and_encodes_the_same() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(dir.path());
    let full = Model::from_hf_folder(dir.path()).unwrap();
    // Without the weights file, only the tokenizer-only load works.
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert!(Model::from_hf_folder(dir.path()).is_err());
    let text = Model::load_tokenizer(
        dir.path().to_str().unwrap(),
        &LoadOptions { offline: true },
        &mut |_| {},
    )
    .unwrap();
    assert!(full.has_weights() && !text.has_weights());
    assert_eq!(text.config().context, full.config().context);
    for (prompt, chat) in [("the cat sat on the mat", false), ("the </s> dog", true)] {
        assert_eq!(
            text.encode_prompt(prompt, chat).unwrap(),
            full.encode_prompt(prompt, chat).unwrap()
        );
    }
}
