//! `kvlens bench`: prefill and decode throughput per method, batch size and context on a
//! synthetic prompt, on the engine's scheduler ([`kvlens_engine::sched`], as `serve` runs):
//! the sweeps of the MLSys 2025 study (throughput against batch size at a fixed prompt length,
//! and against prompt length at a fixed batch), and with `--kv-budget` the largest batch each
//! method fits in that memory and its throughput there.

use crate::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use kvlens_engine::sched::{CacheSource, Event, Limits, Request, Scheduler};
use kvlens_engine::{GenOptions, Model, Sampling};
use kvlens_predict::profile::{KvPoint, ModelLine};
use kvlens_predict::{MethodProfile, Profile, StepSample};
use kvlens_press::{parse_list, Spec};
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
    /// Prompt lengths in tokens, comma-separated (one row per length). Default 2048; with
    /// --profile 256,512,1024,2048,4096.
    #[arg(long, value_delimiter = ',')]
    context: Vec<usize>,
    /// Batch sizes, comma-separated: that many sequences (the same prompt, each with its own
    /// cache) prefill and then decode together, one engine step for all of them. Default 1;
    /// with --profile 1,2,4,8,16.
    #[arg(long, value_delimiter = ',')]
    batch: Vec<usize>,
    /// Tokens decoded after the prompt (end-of-sequence is ignored). Default 64; with
    /// --profile 16.
    #[arg(long)]
    new_tokens: Option<usize>,
    /// Write a step-time profile for `kvlens predict` (JSON Lines): every engine step of the
    /// grid (methods × --batch × --context) with what it computed and how long it took, and
    /// each method's cache bytes. Prints each method's fitted step-time model and its error
    /// on grid points left out of the fit.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Prompt tokens per forward pass of one sequence (the prompt's chunks, as `generate`
    /// cuts them; llama.cpp's batch of 512 by default).
    #[arg(long, default_value_t = 512)]
    chunk: usize,
    /// The scheduler's prompt tokens per step, as in `serve` (each prompt is cut into 512-token
    /// chunks as `generate` cuts it). Default: batch × context, so that all prompts advance
    /// one chunk per step and then decode together; a smaller budget staggers them, as a
    /// server would, and only the steps in which all sequences decode count.
    #[arg(long)]
    prefill_chunk: Option<usize>,
    /// A KV memory budget (`512MiB`, `2GB`, bytes): also find, per method and context, the
    /// largest batch whose caches fit it at their peak, and measure that batch.
    #[arg(long)]
    kv_budget: Option<String>,
    /// The largest batch `--kv-budget` may measure.
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    /// Also draw decode throughput against batch (a panel per context) and against context
    /// (a panel per batch), one line per method: `bench_batch` and `bench_context`, PNG and
    /// SVG, into this folder.
    #[arg(long)]
    plots: Option<PathBuf>,
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
    /// What one sequence's cache holds at the end (what its last decode steps read).
    kv_bytes_end: usize,
    /// Peak cache bytes of the whole batch (the sum over sequences).
    kv_bytes_batch: usize,
    /// Bytes one decode step reads at the least: the weights once, and every sequence's cache
    /// as it is at the end.
    step_bytes: usize,
    /// The time those bytes take at this machine's measured memory bandwidth: the floor of a
    /// memory-bound step.
    roofline_ms: f64,
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

/// `batch` sequences of `ids` under `spec` on the scheduler, as `serve` runs them: submitted
/// together, each prompt cut into chunks as `generate` cuts it, and then `new_tokens` tokens
/// each. Prefill throughput is all prompts' tokens over the steps until every sequence has its
/// first token; decode throughput counts only the steps in which all `batch` sequences decode.
fn measure(model: &Model, a: &BenchArgs, spec: &Spec, ids: &[u32], batch: usize) -> Result<Row> {
    let dtype = a.model.dtype();
    let limits = Limits {
        // The budget at equal memory is worked out from the methods' real peaks (below);
        // here every sequence is admitted.
        kv_budget: usize::MAX / 4,
        max_batch: batch,
        // By default all prompts advance one chunk per step, so that they finish together
        // and then decode together.
        prefill_chunk: a.prefill_chunk.unwrap_or(batch * ids.len()),
    };
    let mut sched = Scheduler::new(model, limits)?;
    let new_tokens = a.new_tokens.unwrap_or(64);
    for id in 0..batch {
        sched.submit(Request {
            id: id as u64,
            prompt: ids.to_vec(),
            cache: CacheSource::New(spec.clone(), dtype),
            opts: GenOptions {
                max_new_tokens: new_tokens + 1,
                sampling: Sampling {
                    temperature: 0.0,
                    ..Sampling::default()
                },
                ignore_eos: true,
                prefill_chunk: a.chunk,
                ..GenOptions::default()
            },
        });
    }
    let (mut firsts, mut prefill_s) = (0, 0.0);
    let mut steps_ms = Vec::new();
    let mut done = Vec::new();
    let t0 = Instant::now();
    while !sched.is_idle() {
        let (mut decoded, mut first) = (0, 0);
        let t = Instant::now();
        sched.step(&mut |e| match e {
            Event::Token { index: 0, .. } => first += 1,
            Event::Token { .. } => decoded += 1,
            Event::Done { result, .. } => done.push(result),
        });
        let ms = t.elapsed().as_secs_f64() * 1e3;
        firsts += first;
        if first > 0 && firsts == batch {
            prefill_s = t0.elapsed().as_secs_f64();
        }
        if decoded == batch {
            steps_ms.push(ms);
        }
    }
    let mut peaks = Vec::new();
    let (mut full, mut end) = (0, 0);
    for r in done {
        let f = r.map_err(|e| anyhow::anyhow!("{}: {e}", spec.canonical()))?;
        peaks.push(f.generation.kv_bytes_peak);
        full = full.max(f.generation.kv_bytes_full);
        end = end.max(f.generation.kv_bytes_end);
    }
    if steps_ms.is_empty() {
        bail!(
            "{} batch {batch}: no step decoded all {batch} sequences together (a --prefill-chunk \
             below batch × context staggers the prompts; raise it or --new-tokens)",
            spec.canonical()
        );
    }
    let decode_ms: f64 = steps_ms.iter().sum();
    let steps = steps_ms.len();
    steps_ms.sort_by(f64::total_cmp);
    let p50 = if steps % 2 == 1 {
        steps_ms[steps / 2]
    } else {
        (steps_ms[steps / 2 - 1] + steps_ms[steps / 2]) / 2.0
    };
    Ok(Row {
        method: spec.canonical(),
        batch,
        context: ids.len(),
        new_tokens,
        prefill_tok_s: (batch * ids.len()) as f64 / prefill_s.max(1e-9),
        decode_tok_s: (batch * steps) as f64 / (decode_ms / 1e3),
        decode_ms_per_token: decode_ms / steps as f64,
        decode_ms_p50: p50,
        kv_bytes_peak: peaks.iter().copied().max().unwrap_or(0),
        kv_bytes_full: full,
        kv_bytes_end: end,
        kv_bytes_batch: peaks.iter().sum(),
        step_bytes: 0,
        roofline_ms: 0.0,
        kv_budget: None,
    })
}

pub fn run(mut a: BenchArgs) -> Result<()> {
    let profiling = a.profile.is_some();
    if a.batch.is_empty() {
        a.batch = if profiling {
            vec![1, 2, 4, 8, 16]
        } else {
            vec![1]
        };
    }
    if a.context.is_empty() {
        a.context = if profiling {
            vec![256, 512, 1024, 2048, 4096]
        } else {
            vec![2048]
        };
    }
    let new_tokens = *a.new_tokens.get_or_insert(if profiling { 16 } else { 64 });
    let specs: Vec<Spec> = parse_list(&a.methods).context("--methods")?;
    let budget = a
        .kv_budget
        .as_deref()
        .map(|b| crate::parse_bytes("--kv-budget", b).map(|b| b as u64))
        .transpose()?;
    if a.batch.contains(&0) || a.max_batch == 0 {
        bail!("--batch and --max-batch must be at least 1");
    }
    if a.context.contains(&0) || new_tokens == 0 {
        bail!("--context and --new-tokens must be at least 1");
    }
    if a.prefill_chunk == Some(0) || a.chunk == 0 {
        bail!("--prefill-chunk and --chunk must be at least 1");
    }
    let model = a.model.load()?;
    let cfg = model.config();
    if let Some(&c) = a.context.iter().find(|&&c| c + new_tokens > cfg.context) {
        bail!(
            "--context {c} + --new-tokens {} exceeds the model's context of {}",
            new_tokens,
            cfg.context
        );
    }
    // Formats without a kernel of kvlens's own run slower (and not with llama.cpp's bits).
    eprintln!(
        "kvlens: weights {}; {}",
        model.transformer.weight_format(),
        model.transformer.weight_kernels()
    );
    let bandwidth = memory_bandwidth();
    let weights = model.transformer.weight_bytes();
    let roof = |mut r: Row| {
        r.step_bytes = weights + r.batch * r.kv_bytes_end;
        r.roofline_ms = r.step_bytes as f64 / bandwidth * 1e3;
        r
    };
    if let Some(path) = &a.profile {
        return write_profile(path, &model, &a, &specs);
    }
    let mut rows = Vec::new();
    for spec in &specs {
        for &context in &a.context {
            let ids = prompt(&model, context)?;
            let mut per_seq_peak = None;
            for &batch in &a.batch {
                let row = roof(measure(&model, &a, spec, &ids, batch)?);
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
                    None => roof(measure(&model, &a, spec, &ids, fit)?),
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
    if let Some(dir) = &a.plots {
        let points: Vec<kvlens_analyze::plots::Throughput> = rows
            .iter()
            .filter(|r| r.kv_budget.is_none())
            .map(|r| kvlens_analyze::plots::Throughput {
                method: r.method.clone(),
                batch: r.batch,
                context: r.context,
                decode_tok_s: r.decode_tok_s,
            })
            .collect();
        match kvlens_analyze::plots::draw_throughput_all(&points, dir) {
            Ok(files) => {
                if !a.json {
                    eprintln!("kvlens: plots: {} files in {}", files.len(), dir.display());
                }
            }
            Err(e) => eprintln!("kvlens: no plots: {e}"),
        }
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
    println!(
        "\nRoofline: a decode step reads the weights once ({:.1} MB) and every sequence's \
         cache (as it is at the end); at this machine's measured memory bandwidth ({:.1} GB/s, a parallel read of \
         1 GiB) that takes at least the floor below. Share = floor / measured median step: \
         near 1, the step is memory-bound; far below, compute (attention, selection, \
         dequantization) bounds it.\n",
        weights as f64 / 1e6,
        bandwidth / 1e9
    );
    println!("| method | batch | context | MB read/step | floor ms | median ms/step | share |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows.iter().filter(|r| r.kv_budget.is_none()) {
        println!(
            "| {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} |",
            r.method,
            r.batch,
            r.context,
            r.step_bytes as f64 / 1e6,
            r.roofline_ms,
            r.decode_ms_p50,
            r.roofline_ms / r.decode_ms_p50.max(1e-9)
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

/// One context's grid for a profile: the largest batch's sequences prefill together (all
/// their chunks in each step), then decode with staggered ends, so that one prefill gives
/// decode steps at every batch size asked for: with batches 16, 8, 4, 2, 1 and `--new-tokens`
/// D, 8 sequences stop after D tokens, 4 more after 2D, and so on, the last after 5D. Every
/// engine step is timed and kept with its shape; also each finished sequence's cache bytes.
fn profile_point(
    model: &Model,
    a: &BenchArgs,
    spec: &Spec,
    ids: &[u32],
    steps: &mut Vec<StepSample>,
    kv: &mut Vec<KvPoint>,
) -> Result<()> {
    let mut batches = a.batch.clone();
    batches.sort_unstable_by(|x, y| y.cmp(x));
    batches.dedup();
    let most = batches[0];
    let per = a.new_tokens.unwrap_or(16);
    let limits = Limits {
        kv_budget: usize::MAX / 4,
        max_batch: most,
        prefill_chunk: most * ids.len(),
    };
    let mut sched = Scheduler::new(model, limits)?;
    for i in 0..most {
        // Sequence i decodes while the batch is larger than i: in as many phases as there
        // are batch sizes above i. The first token comes from the prefill.
        let phases = batches.iter().filter(|&&b| b > i).count();
        sched.submit(Request {
            id: i as u64,
            prompt: ids.to_vec(),
            cache: CacheSource::New(spec.clone(), a.model.dtype()),
            opts: GenOptions {
                max_new_tokens: per * phases + 1,
                sampling: Sampling {
                    temperature: 0.0,
                    ..Sampling::default()
                },
                ignore_eos: true,
                prefill_chunk: a.chunk,
                ..GenOptions::default()
            },
        });
    }
    while !sched.is_idle() {
        let t = Instant::now();
        let mut failed = None;
        let mut finished = Vec::new();
        sched.step(&mut |e| {
            if let Event::Done { result, .. } = e {
                match result {
                    Ok(f) => finished.push(f),
                    Err(e) => failed = Some(e),
                }
            }
        });
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if let Some(e) = failed {
            bail!("{} at context {}: {e}", spec.canonical(), ids.len());
        }
        let shape = sched.last_step();
        if shape.rows() > 0 {
            let prefill = shape.prompt_chunks > 0;
            steps.push(StepSample {
                method: spec.canonical(),
                batch: if prefill { most } else { shape.decode_rows },
                context: ids.len(),
                phase: if prefill { "prefill" } else { "decode" }.into(),
                shape,
                ms,
            });
        }
        for f in finished {
            kv.push(KvPoint {
                method: spec.canonical(),
                tokens: ids.len() + f.generation.output_tokens,
                bytes: f.generation.kv_bytes_end as u64,
            });
        }
    }
    Ok(())
}

/// `--profile`: the grid of every method, written as a profile, and each method's fit with
/// its held-out error.
fn write_profile(
    path: &std::path::Path,
    model: &Model,
    a: &BenchArgs,
    specs: &[Spec],
) -> Result<()> {
    // A short generation first, so that the first timed step pays no page faults.
    measure(model, a, &Spec::parse("full")?, &prompt(model, 64)?, 1)?;
    let mut methods: Vec<MethodProfile> = Vec::new();
    let started = Instant::now();
    for spec in specs {
        let (mut steps, mut kv) = (Vec::new(), Vec::new());
        for &context in &a.context {
            let ids = prompt(model, context)?;
            let t = Instant::now();
            profile_point(model, a, spec, &ids, &mut steps, &mut kv)?;
            if !a.json {
                eprintln!(
                    "kvlens: profile {} context {context}: {:.0} s ({:.0} s in all)",
                    spec.canonical(),
                    t.elapsed().as_secs_f64(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        methods.push(MethodProfile {
            method: spec.canonical(),
            spec: spec.clone(),
            steps: steps.into_iter().map(|s| (0, s)).collect(),
            kv,
        });
    }
    let cfg = model.config();
    let shape = cfg.cache_shape();
    let machine = format!(
        "{} threads, {}",
        rayon::current_num_threads(),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string())
    );
    let profile = Profile {
        model: ModelLine {
            model: model.name.clone(),
            n_layers: shape.n_layers,
            n_heads: shape.n_heads,
            n_kv_heads: shape.n_kv_heads,
            head_dim: shape.head_dim,
            context: cfg.context,
            kv_dtype: a.model.dtype().name().to_string(),
            weight_bytes: model.transformer.weight_bytes() as u64,
            chunk: a.chunk,
            machine,
            kvlens_version: env!("CARGO_PKG_VERSION").to_string(),
            measured_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        },
        methods,
    };
    kvlens_run::store::write_text_atomic(path, &profile.to_jsonl())
        .with_context(|| format!("writing {}", path.display()))?;
    if a.json {
        println!("{}", crate::predict::fit_json(&profile)?);
    } else {
        eprintln!("kvlens: profile: {}", path.display());
        println!("{}", crate::predict::fit_table(&profile)?);
    }
    Ok(())
}

/// This machine's memory bandwidth for reading, in bytes/s: the best of three parallel passes
/// over 1 GiB (larger than any cache level).
fn memory_bandwidth() -> f64 {
    use rayon::prelude::*;
    let buf = vec![1u64; (1 << 30) / 8];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        let sum: u64 = buf
            .par_chunks(1 << 16)
            .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
            .reduce(|| 0, u64::wrapping_add);
        std::hint::black_box(sum);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (buf.len() * 8) as f64 / best
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
