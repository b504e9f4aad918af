//! Every architecture kvlens runs, on tiny models with random weights written by the test:
//! as safetensors + config.json against candle-transformers' model for that architecture
//! (Llama with Llama 3.1 rope scaling, Qwen2, Qwen3), and as GGUF files, with formats mixed
//! matrix by matrix, against candle's quantized model for it. Every check walks candle's
//! greedy path: a 6-token prompt, then 6 decode steps, comparing the logits at each step.

mod common;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::tiny::*;
use kvlens_engine::generate::argmax;
use kvlens_engine::{Logits, Model};
use kvlens_press::{KvDtype, Spec, Step};
use std::path::{Path, PathBuf};

/// A reference model stepped token by token: `step(tokens, pos)` gives the last logits.
type Reference = Box<dyn FnMut(&[u32], usize) -> Vec<f32>>;

fn to_vec(t: candle_core::Result<Tensor>) -> Vec<f32> {
    t.unwrap()
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn ids(tokens: &[u32]) -> Tensor {
    Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

fn candle_hf(dir: &Path, arch: Arch) -> Reference {
    use candle_transformers::models::{llama, qwen2, qwen3};
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    // SAFETY: the file was just written by this test and is not modified while mapped.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    match arch {
        Arch::Llama3 => {
            let cfg: llama::LlamaConfig = serde_json::from_str(&text).unwrap();
            let cfg = cfg.into_config(false);
            let model = llama::Llama::load(vb, &cfg).unwrap();
            let mut cache = llama::Cache::new(true, DType::F32, &cfg, &Device::Cpu).unwrap();
            Box::new(move |t, pos| to_vec(model.forward(&ids(t), pos, &mut cache)))
        }
        Arch::Qwen2 => {
            let cfg: qwen2::Config = serde_json::from_str(&text).unwrap();
            let mut model = qwen2::ModelForCausalLM::new(&cfg, vb).unwrap();
            Box::new(move |t, pos| to_vec(model.forward(&ids(t), pos)))
        }
        Arch::Qwen3 => {
            let cfg: qwen3::Config = serde_json::from_str(&text).unwrap();
            let mut model = qwen3::ModelForCausalLM::new(&cfg, vb).unwrap();
            Box::new(move |t, pos| to_vec(model.forward(&ids(t), pos)))
        }
    }
}

fn candle_gguf(path: &Path, arch: Arch) -> Reference {
    use candle_transformers::models::{quantized_llama, quantized_qwen2, quantized_qwen3};
    let mut f = std::fs::File::open(path).unwrap();
    let c = gguf_file::Content::read(&mut f).unwrap();
    let dev = Device::Cpu;
    match arch {
        Arch::Llama3 => {
            let mut m = quantized_llama::ModelWeights::from_gguf(c, &mut f, &dev).unwrap();
            Box::new(move |t, pos| to_vec(m.forward(&ids(t), pos)))
        }
        Arch::Qwen2 => {
            let mut m = quantized_qwen2::ModelWeights::from_gguf(c, &mut f, &dev).unwrap();
            Box::new(move |t, pos| to_vec(m.forward(&ids(t), pos)))
        }
        Arch::Qwen3 => {
            let mut m = quantized_qwen3::ModelWeights::from_gguf(c, &mut f, &dev).unwrap();
            Box::new(move |t, pos| to_vec(m.forward(&ids(t), pos)))
        }
    }
}

/// kvlens's logits along the reference's greedy path, beside the reference's: one pair of
/// vectors per step (the prompt, then each decoded token).
fn side_by_side(model: &Model, mut reference: Reference) -> Vec<(Vec<f32>, Vec<f32>)> {
    let full = Spec::parse("full").unwrap();
    let mut cache = model.new_cache(&full, KvDtype::F32);
    cache.begin(Step::Prefill { last: true }, PROMPT.len());
    let mut ours = model
        .transformer
        .forward(&PROMPT, 0, &mut cache, Logits::Last);
    let mut theirs = reference(&PROMPT, 0);
    let mut steps = Vec::new();
    for step in 0..6 {
        let next = argmax(&theirs);
        steps.push((ours, theirs));
        let pos = PROMPT.len() + step;
        cache.begin(Step::Decode, 1);
        ours = model
            .transformer
            .forward(&[next], pos, &mut cache, Logits::Last);
        theirs = reference(&[next], pos);
    }
    steps.push((ours, theirs));
    steps
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn margin(l: &[f32]) -> f32 {
    let mut s = l.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    s[0] - s[1]
}

/// Asserts every step's logits within `tol` of the reference's and the same greedy token
/// wherever the reference's top two are at least `clear` apart; returns the largest difference.
fn check(what: &str, steps: &[(Vec<f32>, Vec<f32>)], tol: f32, clear: f32) -> f32 {
    let mut worst = 0f32;
    for (i, (ours, theirs)) in steps.iter().enumerate() {
        let d = max_abs_diff(ours, theirs);
        worst = worst.max(d);
        assert!(d <= tol, "{what}: step {i}: max |Δlogit| {d} > {tol}");
        if margin(theirs) >= clear {
            assert_eq!(
                argmax(ours),
                argmax(theirs),
                "{what}: step {i}: greedy token"
            );
        }
    }
    let spread = steps[0].1.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!(
        "{what}: max |Δlogit| {worst:.2e} over {} steps (logits up to {spread:.2})",
        steps.len()
    );
    worst
}

const ARCHES: [Arch; 3] = [Arch::Llama3, Arch::Qwen2, Arch::Qwen3];

#[test]
fn hf_checkpoints_of_every_architecture_match_candle_transformers() {
    for arch in ARCHES {
        let tmp = tempfile::tempdir().unwrap();
        let tensors = hf_tensors(arch, 3);
        write_hf(tmp.path(), arch, &tensors);
        let model = Model::from_hf_folder(tmp.path()).unwrap();
        assert_eq!(model.config().arch, arch.gguf_name());
        let steps = side_by_side(&model, candle_hf(tmp.path(), arch));
        check(
            &format!("{} checkpoint", arch.gguf_name()),
            &steps,
            1e-3,
            0.01,
        );
    }
}

fn all_f32(_: &str) -> GgmlDType {
    GgmlDType::F32
}

#[test]
fn f32_gguf_files_of_every_architecture_match_candle_and_the_checkpoint() {
    for arch in ARCHES {
        let tmp = tempfile::tempdir().unwrap();
        let tensors = hf_tensors(arch, 5);
        write_hf(tmp.path(), arch, &tensors);
        let path = tmp.path().join("tiny.gguf");
        write_gguf(&path, arch, &tensors, &all_f32, false);
        let gguf = Model::from_gguf(&path).unwrap();
        let name = arch.gguf_name();
        // candle's quantized Llama has no rope scaling: there the reference is kvlens's own
        // checkpoint path (itself checked against candle-transformers above), which also
        // checks the row permutation and `rope_freqs`.
        if arch != Arch::Llama3 {
            let steps = side_by_side(&gguf, candle_gguf(&path, arch));
            check(&format!("{name} f32 GGUF vs candle"), &steps, 1e-3, 0.01);
        }
        let hf = Model::from_hf_folder(tmp.path()).unwrap();
        let mut hf_cache = hf.new_cache(&Spec::parse("full").unwrap(), KvDtype::F32);
        let reference: Reference = Box::new(move |t, pos| {
            hf_cache.begin(
                if pos == 0 {
                    Step::Prefill { last: true }
                } else {
                    Step::Decode
                },
                t.len(),
            );
            hf.transformer.forward(t, pos, &mut hf_cache, Logits::Last)
        });
        let steps = side_by_side(&gguf, reference);
        check(
            &format!("{name} f32 GGUF vs checkpoint"),
            &steps,
            1e-3,
            0.01,
        );
    }
}

#[test]
fn mixed_format_gguf_files_match_candle_quantized_models() {
    // candle's kernels are not llama.cpp's (its Q8_0 product is 0.5 % away from the 8-bit
    // one, its activations round halves away from zero), so the logits differ by a few
    // tenths; reading a matrix with another's activations, the bug this guards against,
    // moves them by whole units.
    for arch in ARCHES {
        for (label, format, tied) in [
            ("mixed", &mixed as &dyn Fn(&str) -> GgmlDType, false),
            ("mixed-shifted, tied output", &mixed_shifted, true),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let tensors = hf_tensors(arch, 7);
            let path = tmp.path().join("tiny.gguf");
            write_gguf(&path, arch, &tensors, format, tied);
            write_tokenizer(tmp.path());
            let model = Model::from_gguf(&path).unwrap();
            let kinds = model.transformer.weight_format();
            for k in [
                "f16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k",
            ] {
                assert!(kinds.contains(k), "{kinds} lacks {k}");
            }
            // Every one of these formats, the K-quants included, has a kernel of kvlens's.
            let kernels = model.transformer.weight_kernels();
            assert_eq!(kernels, "all on kvlens's kernels");
            if arch == Arch::Llama3 {
                // candle's quantized Llama ignores `rope_freqs`; the next test compares a
                // Llama file without them.
                continue;
            }
            let steps = side_by_side(&model, candle_gguf(&path, arch));
            check(
                &format!("{} {label} GGUF vs candle", arch.gguf_name()),
                &steps,
                0.5,
                0.5,
            );
        }
    }
}

/// A Llama GGUF without rope scaling (candle's quantized Llama has none), mixed formats.
#[test]
fn mixed_format_llama_gguf_matches_candle_quantized_llama() {
    let tmp = tempfile::tempdir().unwrap();
    let tensors = hf_tensors(Arch::Llama3, 9);
    let path = tmp.path().join("tiny.gguf");
    write_gguf(&path, Arch::Llama3, &tensors, &mixed, false);
    // The same file without `rope_freqs.weight`.
    let plain = tmp.path().join("plain.gguf");
    {
        let mut f = std::fs::File::open(&path).unwrap();
        let c = gguf_file::Content::read(&mut f).unwrap();
        let mut names: Vec<String> = c
            .tensor_infos
            .keys()
            .filter(|n| *n != "rope_freqs.weight")
            .cloned()
            .collect();
        names.sort();
        let qts: Vec<(String, QTensor)> = names
            .iter()
            .map(|n| (n.clone(), c.tensor(&mut f, n, &Device::Cpu).unwrap()))
            .collect();
        let meta: Vec<(&str, &gguf_file::Value)> =
            c.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let refs: Vec<(&str, &QTensor)> = qts.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut out = std::io::BufWriter::new(std::fs::File::create(&plain).unwrap());
        gguf_file::write(&mut out, &meta, &refs).unwrap();
        std::io::Write::flush(&mut out).unwrap();
    }
    write_tokenizer(tmp.path());
    let model = Model::from_gguf(&plain).unwrap();
    assert!(model.config().rope_freq_factors.is_none());
    let steps = side_by_side(&model, candle_gguf(&plain, Arch::Llama3));
    check("llama mixed GGUF vs candle", &steps, 0.5, 0.5);
}

fn load_err(path: &Path) -> String {
    match Model::from_gguf(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrites the GGUF at `path` with `edit` applied to its metadata and tensors.
fn rewrite(
    path: &Path,
    to: &Path,
    edit: impl FnOnce(&mut Vec<(String, gguf_file::Value)>, &mut Vec<(String, QTensor)>),
) -> PathBuf {
    let mut f = std::fs::File::open(path).unwrap();
    let c = gguf_file::Content::read(&mut f).unwrap();
    let mut names: Vec<String> = c.tensor_infos.keys().cloned().collect();
    names.sort();
    let mut qts: Vec<(String, QTensor)> = names
        .iter()
        .map(|n| (n.clone(), c.tensor(&mut f, n, &Device::Cpu).unwrap()))
        .collect();
    let mut meta: Vec<(String, gguf_file::Value)> = c
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    edit(&mut meta, &mut qts);
    let meta_refs: Vec<(&str, &gguf_file::Value)> =
        meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = qts.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = std::io::BufWriter::new(std::fs::File::create(to).unwrap());
    gguf_file::write(&mut out, &meta_refs, &refs).unwrap();
    std::io::Write::flush(&mut out).unwrap();
    to.to_path_buf()
}

#[test]
fn files_kvlens_cannot_compute_are_refused_at_load_with_the_reason() {
    use gguf_file::Value;
    let tmp = tempfile::tempdir().unwrap();
    let tensors = hf_tensors(Arch::Qwen2, 11);
    let path = tmp.path().join("tiny.gguf");
    write_gguf(&path, Arch::Qwen2, &tensors, &all_f32, false);
    write_tokenizer(tmp.path());

    let p = rewrite(&path, &tmp.path().join("gemma.gguf"), |meta, _| {
        for (k, v) in meta.iter_mut() {
            if k == "general.architecture" {
                *v = Value::String("gemma2".into());
            }
        }
    });
    let e = load_err(&p);
    assert!(
        e.contains("architecture `gemma2` is not supported") && e.contains("qwen3"),
        "{e}"
    );

    let p = rewrite(&path, &tmp.path().join("swa.gguf"), |meta, _| {
        meta.push(("qwen2.attention.sliding_window".into(), Value::U32(512)));
    });
    let e = load_err(&p);
    assert!(
        e.contains("sliding-window attention over 512 tokens"),
        "{e}"
    );

    // A norm of NaNs: every logit NaN, caught by the self-test at load.
    let p = rewrite(&path, &tmp.path().join("nan.gguf"), |_, qts| {
        for (n, t) in qts.iter_mut() {
            if n == "output_norm.weight" {
                let nan = Tensor::from_vec(vec![f32::NAN; DIM], DIM, &Device::Cpu).unwrap();
                *t = QTensor::quantize(&nan, GgmlDType::F32).unwrap();
            }
        }
    });
    let e = load_err(&p);
    assert!(
        e.contains("self-test failed") && e.contains("non-finite"),
        "{e}"
    );

    // An output matrix of zeros: every logit equal.
    let p = rewrite(&path, &tmp.path().join("zero.gguf"), |_, qts| {
        for (n, t) in qts.iter_mut() {
            if n == "output.weight" {
                let z = Tensor::zeros((VOCAB, DIM), DType::F32, &Device::Cpu).unwrap();
                *t = QTensor::quantize(&z, GgmlDType::F32).unwrap();
            }
        }
    });
    let e = load_err(&p);
    assert!(
        e.contains("self-test failed") && e.contains("constant"),
        "{e}"
    );

    // The unedited file loads.
    Model::from_gguf(&path).unwrap();
}

#[test]
fn hf_configs_kvlens_cannot_compute_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let tensors = hf_tensors(Arch::Qwen2, 13);
    write_hf(tmp.path(), Arch::Qwen2, &tensors);
    let cfg_path = tmp.path().join("config.json");
    let base = config_json(Arch::Qwen2);
    let try_with = |edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| -> String {
        let mut c = base.clone();
        edit(c.as_object_mut().unwrap());
        std::fs::write(&cfg_path, c.to_string()).unwrap();
        match Model::from_hf_folder(tmp.path()) {
            Ok(_) => panic!("loaded"),
            Err(e) => e.to_string(),
        }
    };
    let e = try_with(&|o| {
        o.insert("model_type".into(), "phi3".into());
    });
    assert!(e.contains("model_type `phi3` is not supported"), "{e}");
    let e = try_with(&|o| {
        o.insert("use_sliding_window".into(), true.into());
        o.insert("sliding_window".into(), 1024.into());
    });
    assert!(
        e.contains("sliding-window attention over 1024 tokens"),
        "{e}"
    );
    let e = try_with(&|o| {
        o.insert(
            "rope_scaling".into(),
            serde_json::json!({"type": "yarn", "factor": 4.0}),
        );
    });
    assert!(
        e.contains("rope_scaling of type `yarn` is not supported"),
        "{e}"
    );
}

/// Each kernel of kvlens's own computes the product of exactly what llama.cpp multiplies:
/// the weights as stored and the activations converted to the format's `vec_dot_type` (8-bit
/// blocks, or f16 for F16 weights), up to float summation order (and, for Q4_1/Q5_1, the f16
/// rounding of the activations' block sums that llama.cpp's Q8_1 stores). candle is no
/// reference here: its Q8_0 kernel differs from this product by 0.5 % of the outputs.
#[test]
fn every_formats_products_equal_the_exact_product_of_its_operands() {
    use kvlens_engine::quant::{Block, Bytes, Input, Q8Acts, Weight};
    use std::sync::Arc;
    let (rows, cols, n) = (64, 512, 5);
    let mut rng = Lcg(21);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.next()).collect();
    let x: Vec<f32> = (0..n * cols).map(|_| rng.next() * 10.0).collect();
    let wt = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
    let acts = Q8Acts::quantize(&x, cols);
    use GgmlDType::*;
    for dtype in [F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0] {
        let q = QTensor::quantize(&wt, dtype).unwrap();
        let data = Bytes::Owned(Arc::new(q.data().unwrap().into_owned()));
        let ours = match Block::from_ggml(dtype) {
            Some(b) => Weight::blocks(b, data, rows, cols),
            None => Weight::f16(data, rows, cols),
        };
        let mut y = vec![0f32; n * rows];
        ours.matmul(&Input::new(&x, cols), &mut y);
        let operand = |t: usize, c: usize| -> f64 {
            if dtype == F16 {
                half::f16::from_f32(x[t * cols + c]).to_f64()
            } else {
                acts.qs[t * cols + c] as f64 * acts.d[(t * cols + c) / 32] as f64
            }
        };
        let mut row = vec![0f32; cols];
        let (mut worst, mut scale) = (0f64, 0f64);
        for r in 0..rows {
            ours.row(r, &mut row);
            for t in 0..n {
                let exact: f64 = (0..cols).map(|c| row[c] as f64 * operand(t, c)).sum();
                worst = worst.max((y[t * rows + r] as f64 - exact).abs());
                scale = scale.max(exact.abs());
            }
        }
        let tol = if matches!(dtype, Q4_1 | Q5_1) {
            5e-4
        } else {
            1e-5
        };
        eprintln!(
            "{dtype:?}: max |Δ| {worst:.3e} from the exact product (outputs up to {scale:.2})"
        );
        assert!(
            worst <= tol * scale,
            "{dtype:?}: max |Δ| {worst} against outputs up to {scale}"
        );
    }
}

/// Every compression method on every architecture: the cache sees keys after rotary
/// embedding (after Qwen3's per-head norms), heads of 64 and of 128. Each method runs a
/// 96-token prompt and 8 greedy steps with a budget of 48 where it has one; its logits stay
/// finite and a selection method keeps at most its budget (plus, for one that compresses the
/// prompt only, the tokens decoded after it).
#[test]
fn every_compression_method_runs_on_every_architecture() {
    use kvlens_engine::{generate, GenOptions};
    let prompt: Vec<u32> = (0..96u32).map(|i| (i * 37 + 3) % VOCAB as u32).collect();
    let opts = GenOptions {
        max_new_tokens: 8,
        top_logits: 1,
        ..GenOptions::default()
    };
    for arch in ARCHES {
        let tmp = tempfile::tempdir().unwrap();
        write_hf(tmp.path(), arch, &hf_tensors(arch, 17));
        let model = Model::from_hf_folder(tmp.path()).unwrap();
        for m in kvlens_press::METHODS {
            let has = |p: &str| m.params.iter().any(|x| x.name == p);
            let mut params = Vec::new();
            for (p, v) in [
                ("budget", "budget=48"),
                ("residual", "residual=16"),
                ("window", "window=8"),
            ] {
                if has(p) {
                    params.push(v);
                }
            }
            let text = if params.is_empty() {
                m.name.to_string()
            } else {
                format!("{}:{}", m.name, params.join(","))
            };
            let spec = Spec::parse(&text).unwrap();
            let mut cache = model.new_cache(&spec, KvDtype::F16);
            let g = generate(&model, &mut cache, &prompt, &opts).unwrap();
            let what = format!("{} {text}", arch.gguf_name());
            assert!(!g.top_logits.is_empty(), "{what}: no step");
            for step in &g.top_logits {
                assert!(step[0].1.is_finite(), "{what}: logit {}", step[0].1);
            }
            if has("budget") {
                let most = 48 + opts.max_new_tokens;
                assert!(
                    g.kv_tokens_kept <= most as f64,
                    "{what}: kept {}",
                    g.kv_tokens_kept
                );
            } else {
                assert!(
                    g.kv_tokens_kept >= prompt.len() as f64,
                    "{what}: kept {}",
                    g.kv_tokens_kept
                );
            }
        }
    }
}
