//! `kvlens bench`: prefill and decode throughput per method, batch size and context on a
//! synthetic prompt, through the engine's batched step ([`kvlens_engine::Transformer::step`]):
//! the sweeps of the MLSys 2025 study (throughput against batch size at a fixed prompt length,
//! and against prompt length at a fixed batch), and with `--kv-budget` the largest batch each
//! method fits in that memory and its throughput there.

use crate::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use kvlens_engine::generate::{argmax, prefill_chunks, LLAMA_UBATCH, MIN_LAST_CHUNK};
use kvlens_engine::{Logits, Model, Seq};
use kvlens_press::{parse_list, KvCache, Spec, Step};
use serde::Serialize;
use std::path::PathBuf;
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
    /// Prompt lengths in tokens, comma-separated (one row per length).
    #[arg(long, value_delimiter = ',', default_value = "2048")]
    context: Vec<usize>,
    /// Batch sizes, comma-separated: that many sequences (the same prompt, each with its own
    /// cache) prefill and then decode together, one engine step for all of them.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    batch: Vec<usize>,
    /// Tokens decoded after the prompt (end-of-sequence is ignored).
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Prompt tokens per forward pass of each sequence during prefill.
    #[arg(long, default_value_t = 512)]
    prefill_chunk: usize,
    /// A KV memory budget (`512MiB`, `2GB`, bytes): also find, per method and context, the
    /// largest batch whose caches fit it at their peak, and measure that batch.
    #[arg(long)]
    kv_budget: Option<String>,
    /// The largest batch `--kv-budget` may measure.
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    /// Print one JSON array on standard output and nothing else.
    #[arg(long)]
    json: bool,
    /// Also write the rows as CSV in the study artifact's schema
    /// (`model,method,bsz,prompt_len,stage,thr`, stage `prefill` or `decoding`, tokens/s).
    #[arg(long)]
    csv: Option<PathBuf>,
}

#[derive(Serialize, Clone)]
struct Row {
    method: String,
    batch: usize,
    context: usize,
    new_tokens: usize,
    /// Prompt tokens of all sequences over the prefill's wall time.
    prefill_tok_s: f64,
    /// Tokens of all sequences over the wall time of the decode steps.
    decode_tok_s: f64,
    /// Mean wall time of one decode step (all sequences).
    decode_ms_per_token: f64,
    /// Median time of one decode step: steadier than the mean on a shared machine.
    decode_ms_p50: f64,
    /// Peak cache bytes of one sequence.
    kv_bytes_peak: usize,
    /// What one sequence's full cache holds at the end.
    kv_bytes_full: usize,
    /// Peak cache bytes of the whole batch (the sum over sequences).
    kv_bytes_batch: usize,
    /// Set on the rows measured at the largest batch that fits `--kv-budget`.
    #[serde(skip_serializing_if = "Option::is_none")]
    kv_budget: Option<u64>,
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

/// `batch` sequences of `ids` under `spec`: prefilled together chunk by chunk (each cut as
/// `generate` cuts a prompt), then `new_tokens` decode steps of all of them together.
fn measure(model: &Model, a: &BenchArgs, spec: &Spec, ids: &[u32], batch: usize) -> Result<Row> {
    let dtype = a.model.dtype();
    let mut caches: Vec<KvCache> = (0..batch)
        .map(|_| {
            let mut c = model.new_cache(spec, dtype);
            c.reserve(ids.len() + a.new_tokens);
            c
        })
        .collect();
    let min_last = caches[0].needs().window.max(MIN_LAST_CHUNK);
    let chunks = prefill_chunks(ids.len(), a.prefill_chunk, min_last);
    let t0 = Instant::now();
    let mut logits = Vec::new();
    for (i, &(s, e)) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let mut seqs: Vec<Seq> = caches
            .iter_mut()
            .map(|cache| {
                cache.begin(Step::Prefill { last }, e - s);
                cache.set_solo_last(last && ids.len() % LLAMA_UBATCH == 1);
                Seq {
                    tokens: &ids[s..e],
                    pos0: s,
                    cache,
                    want: Logits::Last,
                }
            })
            .collect();
        logits = model.transformer.step(&mut seqs);
    }
    let prefill_s = t0.elapsed().as_secs_f64();
    let mut next: Vec<u32> = logits.iter().map(|l| argmax(l)).collect();
    let mut steps_ms = Vec::with_capacity(a.new_tokens);
    let t1 = Instant::now();
    for i in 0..a.new_tokens {
        let t = Instant::now();
        let tokens: Vec<[u32; 1]> = next.iter().map(|&n| [n]).collect();
        let mut seqs: Vec<Seq> = caches
            .iter_mut()
            .zip(&tokens)
            .map(|(cache, tok)| {
                cache.begin(Step::Decode, 1);
                Seq {
                    tokens: tok,
                    pos0: ids.len() + i,
                    cache,
                    want: Logits::Last,
                }
            })
            .collect();
        let out = model.transformer.step(&mut seqs);
        next = out.iter().map(|l| argmax(l)).collect();
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
    Ok(Row {
        method: spec.canonical(),
        batch,
        context: ids.len(),
        new_tokens: a.new_tokens,
        prefill_tok_s: (batch * ids.len()) as f64 / prefill_s,
        decode_tok_s: (batch * a.new_tokens) as f64 / decode_s,
        decode_ms_per_token: decode_s * 1e3 / a.new_tokens as f64,
        decode_ms_p50: p50,
        kv_bytes_peak: caches.iter().map(|c| c.peak_bytes()).max().unwrap_or(0),
        kv_bytes_full: caches[0].full_bytes(),
        kv_bytes_batch: caches.iter().map(|c| c.peak_bytes()).sum(),
        kv_budget: None,
    })
}

pub fn run(a: BenchArgs) -> Result<()> {
    let specs: Vec<Spec> = parse_list(&a.methods).context("--methods")?;
    let budget = a
        .kv_budget
        .as_deref()
        .map(|b| crate::parse_bytes("--kv-budget", b).map(|b| b as u64))
        .transpose()?;
    if a.batch.contains(&0) || a.max_batch == 0 {
        bail!("--batch and --max-batch must be at least 1");
    }
    if a.context.contains(&0) || a.new_tokens == 0 {
        bail!("--context and --new-tokens must be at least 1");
    }
    if a.prefill_chunk == 0 {
        bail!("--prefill-chunk must be at least 1");
    }
    let model = a.model.load()?;
    let cfg = model.config();
    if let Some(&c) = a.context.iter().find(|&&c| c + a.new_tokens > cfg.context) {
        bail!(
            "--context {c} + --new-tokens {} exceeds the model's context of {}",
            a.new_tokens,
            cfg.context
        );
    }
    // Formats without a kernel of kvlens's own run slower (and not with llama.cpp's bits).
    eprintln!(
        "kvlens: weights {}; {}",
        model.transformer.weight_format(),
        model.transformer.weight_kernels()
    );
    let mut rows = Vec::new();
    for spec in &specs {
        for &context in &a.context {
            let ids = prompt(&model, context)?;
            let mut per_seq_peak = None;
            for &batch in &a.batch {
                let row = measure(&model, &a, spec, &ids, batch)?;
                per_seq_peak.get_or_insert(row.kv_bytes_peak);
                if !a.json {
                    eprintln!(
                        "kvlens: {} batch {batch} context {context}: {:.1} tok/s decode",
                        row.method, row.decode_tok_s
                    );
                }
                rows.push(row);
            }
            if let Some(b) = budget {
                let peak = per_seq_peak.unwrap_or(0).max(1) as u64;
                let fit = ((b / peak) as usize).min(a.max_batch);
                if fit == 0 {
                    eprintln!(
                        "kvlens: {} at context {context}: one sequence's cache ({peak} bytes at its peak) does not fit --kv-budget {b}",
                        spec.canonical()
                    );
                    continue;
                }
                let mut row = match rows.iter().find(|r| {
                    r.method == spec.canonical() && r.context == context && r.batch == fit
                }) {
                    Some(r) => r.clone(),
                    None => measure(&model, &a, spec, &ids, fit)?,
                };
                row.kv_budget = Some(b);
                if !a.json {
                    eprintln!(
                        "kvlens: {} context {context}: {fit} sequences fit {}; {:.1} tok/s decode",
                        row.method,
                        bytesize::ByteSize(b),
                        row.decode_tok_s
                    );
                }
                rows.push(row);
            }
        }
    }
    if let Some(path) = &a.csv {
        write_csv(path, &model.name, &rows)?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    println!(
        "| method | batch | context | prefill tok/s | decode tok/s | ms/step | median ms/step | KV peak MiB/seq | KV full MiB/seq | ratio | KV MiB (batch) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows.iter().filter(|r| r.kv_budget.is_none()) {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.1} |",
            r.method,
            r.batch,
            r.context,
            r.prefill_tok_s,
            r.decode_tok_s,
            r.decode_ms_per_token,
            r.decode_ms_p50,
            mib(r.kv_bytes_peak),
            mib(r.kv_bytes_full),
            r.kv_bytes_peak as f64 / r.kv_bytes_full.max(1) as f64,
            mib(r.kv_bytes_batch),
        );
    }
    if let Some(b) = budget {
        println!(
            "\nAt equal memory: the largest batch whose caches fit {} (at most {}):\n",
            bytesize::ByteSize(b),
            a.max_batch
        );
        println!("| method | context | batch | decode tok/s | KV MiB (batch) |");
        println!("|---|---:|---:|---:|---:|");
        for r in rows.iter().filter(|r| r.kv_budget.is_some()) {
            println!(
                "| {} | {} | {} | {:.1} | {:.1} |",
                r.method,
                r.context,
                r.batch,
                r.decode_tok_s,
                mib(r.kv_bytes_batch)
            );
        }
    }
    Ok(())
}

fn mib(b: usize) -> f64 {
    b as f64 / 1048576.0
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The rows in the schema of the study artifact's throughput files
/// (`model,method,bsz,prompt_len,stage,thr`), one line per row and stage.
fn write_csv(path: &std::path::Path, model: &str, rows: &[Row]) -> Result<()> {
    let mut out = String::from("model,method,bsz,prompt_len,stage,thr\n");
    for r in rows.iter().filter(|r| r.kv_budget.is_none()) {
        for (stage, thr) in [("prefill", r.prefill_tok_s), ("decoding", r.decode_tok_s)] {
            out.push_str(&format!(
                "{},{},{},{},{stage},{thr:.3}\n",
                field(model),
                field(&r.method),
                r.batch,
                r.context
            ));
        }
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}
