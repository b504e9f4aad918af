//! `kvlens bench`: prefill and decode throughput per method on a synthetic prompt.

use crate::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use kvlens_engine::generate::{argmax, prefill_chunks};
use kvlens_engine::{Logits, Model};
use kvlens_press::{parse_list, Spec, Step};
use serde::Serialize;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Methods to compare, comma-separated; `key=value` items continue the previous spec.
    #[arg(
        long,
        default_value = "full,streamingllm,h2o,snapkv,pyramidkv,tova,knorm,kivi,gear,int8,int4,fp8"
    )]
    methods: String,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 2048)]
    context: usize,
    /// Tokens decoded after the prompt (end-of-sequence is ignored).
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Prompt tokens per forward pass during prefill.
    #[arg(long, default_value_t = 512)]
    prefill_chunk: usize,
    /// Print one JSON array on standard output and nothing else.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Row {
    method: String,
    context: usize,
    new_tokens: usize,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    decode_ms_per_token: f64,
    /// Median time of one decode step: steadier than the mean on a shared machine.
    decode_ms_p50: f64,
    kv_bytes_peak: usize,
    kv_bytes_full: usize,
}

/// A deterministic prompt of exactly `n` tokens: plain English filler, repeated.
fn prompt(model: &Model, n: usize) -> Result<Vec<u32>> {
    let text = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
    let unit = model.tokenizer.encode_text(text)?;
    if unit.is_empty() {
        bail!("the tokenizer produced no tokens for the filler text");
    }
    Ok(unit.iter().copied().cycle().take(n).collect())
}

pub fn run(a: BenchArgs) -> Result<()> {
    let specs: Vec<Spec> = parse_list(&a.methods).context("--methods")?;
    let model = a.model.load()?;
    let cfg = model.config();
    if a.context + a.new_tokens > cfg.context {
        bail!(
            "--context {} + --new-tokens {} exceeds the model's context of {}",
            a.context,
            a.new_tokens,
            cfg.context
        );
    }
    if a.context == 0 || a.new_tokens == 0 {
        bail!("--context and --new-tokens must be at least 1");
    }
    let ids = prompt(&model, a.context)?;
    // Formats without a kernel of kvlens's own run slower (and not with llama.cpp's bits).
    eprintln!(
        "kvlens: weights {}; {}",
        model.transformer.weight_format(),
        model.transformer.weight_kernels()
    );
    let mut rows = Vec::new();
    for spec in &specs {
        let mut cache = model.new_cache(spec, a.model.dtype());
        cache.reserve(a.context + a.new_tokens);
        let min_last = cache
            .needs()
            .window
            .max(kvlens_engine::generate::MIN_LAST_CHUNK);
        let t0 = Instant::now();
        let mut logits = Vec::new();
        let chunks = prefill_chunks(ids.len(), a.prefill_chunk, min_last);
        for (i, &(s, e)) in chunks.iter().enumerate() {
            cache.begin(
                Step::Prefill {
                    last: i + 1 == chunks.len(),
                },
                e - s,
            );
            logits = model
                .transformer
                .forward(&ids[s..e], s, &mut cache, Logits::Last);
        }
        let prefill_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut next = argmax(&logits);
        let mut steps_ms = Vec::with_capacity(a.new_tokens);
        for i in 0..a.new_tokens {
            let t = Instant::now();
            cache.begin(Step::Decode, 1);
            logits = model
                .transformer
                .forward(&[next], a.context + i, &mut cache, Logits::Last);
            next = argmax(&logits);
            steps_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let decode_s = t1.elapsed().as_secs_f64();
        steps_ms.sort_by(f64::total_cmp);
        let n = steps_ms.len();
        let p50 = if n % 2 == 1 {
            steps_ms[n / 2]
        } else {
            (steps_ms[n / 2 - 1] + steps_ms[n / 2]) / 2.0
        };
        let row = Row {
            method: spec.canonical(),
            context: a.context,
            new_tokens: a.new_tokens,
            prefill_tok_s: a.context as f64 / prefill_s,
            decode_tok_s: a.new_tokens as f64 / decode_s,
            decode_ms_per_token: decode_s * 1e3 / a.new_tokens as f64,
            decode_ms_p50: p50,
            kv_bytes_peak: cache.peak_bytes(),
            kv_bytes_full: cache.full_bytes(),
        };
        if !a.json {
            eprintln!("kvlens: {} done", row.method);
        }
        rows.push(row);
    }
    if a.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    println!(
        "| method | context | prefill tok/s | decode tok/s | decode ms/token | median ms/token | KV peak MiB | KV full MiB | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} |",
            r.method,
            r.context,
            r.prefill_tok_s,
            r.decode_tok_s,
            r.decode_ms_per_token,
            r.decode_ms_p50,
            r.kv_bytes_peak as f64 / 1048576.0,
            r.kv_bytes_full as f64 / 1048576.0,
            r.kv_bytes_peak as f64 / r.kv_bytes_full.max(1) as f64
        );
    }
    Ok(())
}
