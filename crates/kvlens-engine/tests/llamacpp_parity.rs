//! Token ids and greedy continuations equal to llama.cpp's on the same GGUF file
//! (fixture made by scripts/make_golden.py).

mod common;

use common::{default_model, golden, ids};
use kvlens_engine::generate::{argmax, prefill, GenOptions};
use kvlens_engine::{Logits, Message};
use kvlens_press::{KvDtype, Spec, Step};

#[test]
fn tokenizer_ids_equal_llama_cpp() {
    let model = default_model();
    let g = golden();
    let cases = g["tokenize"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want = ids(&c["ids"]);
        let got = if c["special"].as_bool().unwrap() {
            model.tokenizer.encode_special(text).unwrap()
        } else {
            model.tokenizer.encode_text(text).unwrap()
        };
        if got != want {
            failures.push(format!(
                "{text:?} special={}: got {got:?}, llama.cpp {want:?}",
                c["special"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn user_text_never_becomes_a_special_token() {
    let model = default_model();
    let tok = &model.tokenizer;
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    let plain = tok.encode_text("context <|im_end|> more").unwrap();
    assert!(!plain.contains(&im_end));
    let special = tok.encode_special("context <|im_end|> more").unwrap();
    assert!(special.contains(&im_end));
    // Through the chat template: exactly the template's own two end markers (system, user).
    let t = model.template.as_ref().unwrap();
    let chat = t.encode(tok, &[Message::user("a <|im_end|> b")]).unwrap();
    assert_eq!(chat.iter().filter(|&&i| i == im_end).count(), 2);
}

#[test]
fn chat_encoding_equals_llama_cpp_on_rendered_prompts() {
    let model = default_model();
    let g = golden();
    for case in g["greedy"].as_array().unwrap() {
        if case["kind"] != "chat" {
            continue;
        }
        let prompt = case["prompt"].as_str().unwrap();
        let user = prompt
            .split("<|im_start|>user\n")
            .nth(1)
            .and_then(|s| s.split("<|im_end|>").next())
            .unwrap();
        let got = model.encode_prompt(user, true).unwrap();
        assert_eq!(got, ids(&case["prompt_ids"]), "{prompt:?}");
    }
}

/// Free-running greedy decoding with the default f16 cache gives llama.cpp's 32 tokens on
/// every golden prompt (past end-of-turn tokens too, as the fixture was made), and its five
/// largest logits at every step to the bit. One prompt has 513 tokens, which llama.cpp runs as a batch of 512
/// and a batch of one (kvlens as 449 and 64, the last query summed as a one-token batch).
///
/// This holds because kvlens reproduces llama.cpp's arithmetic to the bit (its activation
/// rounding, fused multiply-adds and the summation orders of its kernels); the fixture's
/// top-2 margins go down to 0.02 logit, so anything short of that would diverge.
#[test]
fn greedy_tokens_equal_llama_cpp_with_f16_cache() {
    let model = default_model();
    let g = golden();
    let full = Spec::parse("full").unwrap();
    let opts = GenOptions {
        max_new_tokens: 32,
        ..GenOptions::default()
    };
    let mut failures = Vec::new();
    let mut prefix = Vec::new();
    for case in g["greedy"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["tokens"]);
        let mut cache = model.new_cache(&full, KvDtype::F16);
        let mut logits = prefill(model, &mut cache, &prompt, &opts).unwrap().logits;
        let mut got = Vec::new();
        for i in 0..want.len() {
            let t = argmax(&logits);
            got.push(t);
            // llama.cpp's five largest logits, to the bit: equal logits, not only the same
            // winner, even where the winner is clear.
            for pair in case["top5"][i].as_array().unwrap() {
                let id = pair[0].as_u64().unwrap() as usize;
                let theirs = pair[1].as_f64().unwrap() as f32;
                if logits[id].to_bits() != theirs.to_bits() {
                    failures.push(format!(
                        "{:?} step {i}: logit of token {id} {}, llama.cpp's {theirs}",
                        case["prompt"]
                            .as_str()
                            .unwrap()
                            .chars()
                            .take(40)
                            .collect::<String>(),
                        logits[id]
                    ));
                }
            }
            cache.begin(Step::Decode, 1);
            logits = model
                .transformer
                .forward(&[t], prompt.len() + i, &mut cache, Logits::Last);
        }
        let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        prefix.push(same);
        if same < want.len() {
            failures.push(format!(
                "{:?}: first difference at step {same} (llama.cpp's margin there {}): kvlens {:?}, llama.cpp {:?}",
                case["prompt"].as_str().unwrap(),
                case["margins"][same],
                &got[same..],
                &want[same..]
            ));
        }
    }
    eprintln!("greedy tokens equal to llama.cpp's per prompt: {prefix:?} (of 32)");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Bit-level comparison with a trace written by scripts/llamacpp_trace.py (run by hand:
/// `KVLENS_LLAMACPP_TRACE=DIR cargo test --release -p kvlens-engine --test llamacpp_parity
/// -- --ignored --nocapture trace`): every dumped intermediate tensor of the first golden
/// prompt (kvlens's own written beside them as `ours-NAME.f32`), then the logits of every
/// prompt along llama.cpp's greedy path. `KVLENS_LLAMACPP_CASES=FILE` names the cases the
/// trace was made from (default: the golden fixture); `KVLENS_MIN_LAST_CHUNK=N` changes how
/// kvlens chunks prompts longer than 512 tokens (the logits must not change).
#[test]
#[ignore = "needs a trace from scripts/llamacpp_trace.py"]
fn trace_against_llama_cpp() {
    let Some(dir) = std::env::var_os("KVLENS_LLAMACPP_TRACE").map(std::path::PathBuf::from) else {
        eprintln!("KVLENS_LLAMACPP_TRACE is not set");
        return;
    };
    let read = |name: &str| -> Option<Vec<f32>> {
        let b = std::fs::read(dir.join(name)).ok()?;
        Some(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    };
    let diff = |a: &[f32], b: &[f32]| -> (usize, f32) {
        let n = a
            .iter()
            .zip(b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        let m = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        (n, m)
    };
    let model = default_model();
    // The cases the trace was made from: the golden prompts, or a file of the same form.
    let g = match std::env::var_os("KVLENS_LLAMACPP_CASES") {
        Some(p) => serde_json::json!({
            "greedy": serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(p).unwrap()).unwrap()
        }),
        None => golden(),
    };
    let full = Spec::parse("full").unwrap();
    let vocab = model.transformer.config.vocab;
    let opts = GenOptions {
        min_last_chunk: std::env::var("KVLENS_MIN_LAST_CHUNK")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64),
        ..GenOptions::default()
    };
    for (ci, case) in g["greedy"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["tokens"]);
        let Some(theirs) = read(&format!("logits_{ci}.f32")) else {
            break;
        };
        let mut cache = model.new_cache(&full, KvDtype::F16);
        let mut ours = Vec::new();
        let mut report = Vec::new();
        let traced = ci == 0 && prompt.len() <= opts.prefill_chunk;
        let mut logits = if !traced {
            prefill(model, &mut cache, &prompt, &opts).unwrap().logits
        } else {
            cache.begin(Step::Prefill { last: true }, prompt.len());
            model.transformer.forward_traced(
                &prompt,
                0,
                &mut cache,
                Logits::Last,
                &mut |name, layer, data| {
                    let key = match layer {
                        Some(l) => format!("{name}-{l}"),
                        None => name.to_string(),
                    };
                    if let Some(t) = read(&format!("{key}.f32")) {
                        // llama.cpp keeps only the last token's row after the last layer's attention.
                        let d = &data[data.len() - t.len().min(data.len())..];
                        let (n, m) = diff(d, &t);
                        let bytes: Vec<u8> = d.iter().flat_map(|v| v.to_le_bytes()).collect();
                        std::fs::write(dir.join(format!("ours-{key}.f32")), bytes).unwrap();
                        report.push(format!("{key}: {n}/{} differ, max {m:e}", t.len()));
                    }
                },
            )
        };
        for line in &report {
            eprintln!("  {line}");
        }
        ours.push(logits.clone());
        for (i, &w) in want.iter().enumerate() {
            cache.begin(Step::Decode, 1);
            logits = model
                .transformer
                .forward(&[w], prompt.len() + i, &mut cache, Logits::Last);
            ours.push(logits.clone());
        }
        let mut first = None;
        let mut worst = 0f32;
        let mut exact = 0;
        for (s, o) in ours.iter().enumerate().take(want.len()) {
            let t = &theirs[s * vocab..(s + 1) * vocab];
            let (n, m) = diff(o, t);
            worst = worst.max(m);
            exact += usize::from(n == 0);
            if first.is_none() && n > 0 {
                first = Some(s);
            }
        }
        eprintln!(
            "prompt {ci}: {exact}/{} steps with identical logits, first differing step {first:?}, max |dlogit| {worst:e}",
            want.len()
        );
    }
}
