//! `kvlens run`, `kvlens score` and `kvlens merge`: batch evaluation, offline re-scoring, and
//! joining shard folders.

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kvlens_engine::{LoadOptions, Model};
use kvlens_run::runner::{
    execute, hash_model_files, lock_folder, record_noise, write_run_file, Observer, Plan,
    Provenance, RunNoise,
};
use kvlens_run::{Record, RunConfig};
use kvlens_tasks::DataDirs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct RunArgs {
    /// A suite as TOML (the same fields as these flags); flags given here override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// `default`, a .gguf file, a Hugging Face folder, or hf:ORG/NAME.
    #[arg(long)]
    model: Option<String>,
    /// Tasks, comma-separated: built-in names (`kvlens datasets list`), NAME=FILE, task spec
    /// .toml files, or a folder of them (an exported negative-sample set). Default: the
    /// default suite.
    #[arg(long)]
    tasks: Option<String>,
    /// Method specs, comma-separated (`key=value` items continue the previous spec); `full`
    /// is always added. Default: full, streamingllm, h2o, snapkv, pyramidkv (budget 256),
    /// kivi 2-bit, int8.
    #[arg(long)]
    methods: Option<String>,
    /// The run folder (default: results/<name>, or results/default).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The run id written into records (default: the run folder's name).
    #[arg(long)]
    name: Option<String>,
    /// The first N samples of each task.
    #[arg(long)]
    limit: Option<usize>,
    /// Only these sample ids, comma-separated.
    #[arg(long)]
    samples: Option<String>,
    /// I/N: run the I-th of N disjoint shares of the samples (I from 0), for job arrays;
    /// join the folders with `kvlens merge`.
    #[arg(long)]
    shard: Option<String>,
    #[arg(long)]
    seed: Option<u64>,
    /// 0 is greedy (the default).
    #[arg(long)]
    temperature: Option<f32>,
    /// Override every task's maximum new tokens.
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Truncate longer prompts as the task says (default: context − max new tokens − 64).
    #[arg(long)]
    max_prompt_tokens: Option<usize>,
    /// A sample passes when its score reaches this (default: 1.0 for exact metrics, 0.5 for
    /// graded ones).
    #[arg(long)]
    pass_threshold: Option<f64>,
    /// Requests in flight per server, for methods with `backend = "openai"` in --config
    /// (default 4).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Local requests decoding together: N samples at a time, every method of each, through
    /// the scheduler (default 1: each alone, so that its times are its own). Outputs are the
    /// same either way.
    #[arg(long)]
    batch: Option<usize>,
    /// The scheduler's KV budget with --batch (`512MiB`, bytes; default a quarter of the
    /// machine's memory).
    #[arg(long)]
    kv_budget: Option<String>,
    /// Run again the samples whose records hold an error.
    #[arg(long)]
    retry_errors: bool,
    /// Element type of the KV cache.
    #[arg(long, value_parser = ["f16", "f32"])]
    kv_dtype: Option<String>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Never download anything (also KVLENS_OFFLINE=1).
    #[arg(long)]
    offline: bool,
    /// Folder of the shipped task sets (default: ./datasets, or KVLENS_DATASETS).
    #[arg(long)]
    datasets: Option<PathBuf>,
    /// Give every method its own prefill, even those that compress only after the prompt
    /// (by default they fork the baseline's prefill and pay only their own compression).
    #[arg(long)]
    no_share_prefill: bool,
}

fn split(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

impl RunArgs {
    fn config(&self) -> Result<RunConfig> {
        let mut c = match &self.config {
            Some(p) => RunConfig::from_file(p)?,
            None => RunConfig::default(),
        };
        if let Some(m) = &self.model {
            c.model = m.clone();
        }
        if let Some(t) = &self.tasks {
            c.tasks = split(t);
        }
        if let Some(m) = &self.methods {
            c.methods = kvlens_run::config::Methods {
                local: vec![m.clone()],
                remote: Vec::new(),
            };
        }
        if let Some(n) = self.concurrency {
            c.concurrency = n.max(1);
        }
        if let Some(n) = self.batch {
            c.batch = n;
        }
        if self.kv_budget.is_some() {
            c.kv_budget = self.kv_budget.clone();
        }
        if self.out.is_some() {
            c.out = self.out.clone();
        }
        if self.name.is_some() {
            c.name = self.name.clone();
        }
        if self.limit.is_some() {
            c.limit = self.limit;
        }
        if let Some(s) = &self.samples {
            c.samples = split(s);
        }
        if self.shard.is_some() {
            c.shard = self.shard.clone();
        }
        if let Some(s) = self.seed {
            c.seed = s;
        }
        if let Some(t) = self.temperature {
            c.temperature = t;
        }
        if self.max_new_tokens.is_some() {
            c.max_new_tokens = self.max_new_tokens;
        }
        if self.max_prompt_tokens.is_some() {
            c.max_prompt_tokens = self.max_prompt_tokens;
        }
        if self.pass_threshold.is_some() {
            c.pass_threshold = self.pass_threshold;
        }
        if self.retry_errors {
            c.retry_errors = true;
        }
        if let Some(d) = &self.kv_dtype {
            c.kv_dtype = d.clone();
        }
        if self.no_share_prefill {
            c.share_prefill = false;
        }
        Ok(c.with_defaults())
    }
}

/// Two bars: the whole run, and the current task (every method of each sample) with the
/// method running and tokens per second.
struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    task: Option<ProgressBar>,
    task_start: Instant,
    task_tokens: usize,
    terminal: bool,
    task_name: String,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Bars {
    fn new() -> Self {
        let terminal = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let total = multi.add(ProgressBar::new(0));
        total.set_style(style(
            "run            [{bar:30}] {pos}/{len} records, {elapsed} elapsed, ETA {eta}",
        ));
        Self {
            multi,
            total,
            task: None,
            task_start: Instant::now(),
            task_tokens: 0,
            terminal,
            task_name: String::new(),
        }
    }
}

impl Observer for Bars {
    fn start(&mut self, total: usize, todo: usize) {
        self.total.set_length(todo as u64);
        if todo < total {
            let msg = format!(
                "kvlens: {} of {total} records already in the run folder; {todo} to go",
                total - todo
            );
            let _ = self.multi.println(&msg);
            if !self.terminal {
                eprintln!("{msg}");
            }
        }
    }
    fn task(&mut self, task: &str, todo: usize) {
        let bar = self.multi.add(ProgressBar::new(todo as u64));
        bar.set_style(style("{prefix:<14} [{bar:30}] {pos}/{len} {msg}"));
        bar.set_prefix(task.to_string());
        self.task = Some(bar);
        self.task_name = task.to_string();
        self.task_start = Instant::now();
        self.task_tokens = 0;
    }
    fn record(&mut self, r: &Record) {
        self.total.inc(1);
        self.task_tokens += r.prompt_tokens + r.output_tokens;
        let secs = self.task_start.elapsed().as_secs_f64().max(1e-9);
        if let Some(b) = &self.task {
            let method = r.method.split(':').next().unwrap_or(&r.method);
            b.set_message(format!(
                "{} {method}, {:.0} tok/s",
                r.sample_id,
                self.task_tokens as f64 / secs
            ));
            b.inc(1);
        }
        if let Some(e) = &r.error {
            let msg = format!("kvlens: {} {} {}: {e}", r.task, r.sample_id, r.method);
            let _ = self.multi.println(&msg);
            if !self.terminal {
                eprintln!("{msg}");
            }
        }
    }
    fn end_task(&mut self) {
        if let Some(b) = self.task.take() {
            b.finish_and_clear();
            self.multi.remove(&b);
        }
        let secs = self.task_start.elapsed().as_secs_f64();
        let msg = format!(
            "kvlens: {} done in {secs:.1} s ({:.0} tok/s)",
            self.task_name,
            self.task_tokens as f64 / secs.max(1e-9)
        );
        if self.terminal {
            let _ = self.multi.println(msg);
        } else {
            eprintln!("{msg}");
        }
    }
}

pub fn run(a: RunArgs) -> Result<()> {
    let cfg = a.config()?;
    let dirs = DataDirs::from_flag(a.datasets.as_deref());
    let plan = Plan::new(&cfg, &dirs)?;
    let out = cfg.out_dir();
    let _lock = lock_folder(&out)?;
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build_global()
            .context("setting up the thread pool")?;
    }
    let mut say = |m: &str| eprintln!("kvlens: {m}");
    let load_opts = LoadOptions { offline: a.offline };
    // Every method served elsewhere: the model is needed only to cut and count tokens.
    let model = if plan.methods.is_empty() {
        Model::load_tokenizer(&cfg.model, &load_opts, &mut say)
    } else {
        Model::load(&cfg.model, &load_opts, &mut say)
    }
    .with_context(|| format!("loading model `{}`", cfg.model))?;
    let prov = Provenance {
        kvlens_version: env!("CARGO_PKG_VERSION").into(),
        model_file: model.path.display().to_string(),
        model_sha256: hash_model_files(&model.path)?,
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        threads: rayon::current_num_threads(),
        weights: model.transformer.weight_format(),
        weight_kernels: model.transformer.weight_kernels(),
    };
    write_run_file(&out, &cfg, &prov)?;
    eprintln!(
        "kvlens: {} tasks × {} methods, {} records → {}",
        plan.tasks.len(),
        plan.method_count(),
        plan.total(),
        out.display()
    );
    let mut bars = Bars::new();
    let outcome = execute(&plan, &cfg, &model, &out, &mut bars)?;
    let _ = bars.multi.clear();
    eprintln!(
        "kvlens: {} records written, {} already there, {} failed; engine {:.1} s, runner overhead {:.2}%",
        outcome.written,
        outcome.skipped,
        outcome.failed,
        outcome.engine_ms / 1e3,
        outcome.overhead_percent()
    );
    // The noise floor of the baseline's timings, into run.toml and the summary.
    if let Ok(samples) = kvlens_analyze::load_runs(std::slice::from_ref(&out)) {
        let base = if plan.methods.iter().any(|s| s.canonical() == "full") {
            "full".to_string()
        } else {
            plan.method_names().first().cloned().unwrap_or_default()
        };
        match kvlens_analyze::analysis::noise_floor(&samples, &base) {
            Some(n) => {
                let pct = 100.0 * n.relative_spread;
                let warn = if n.relative_spread > kvlens_analyze::analysis::NOISY {
                    " — above 10 %: latency differences of that size are noise (use --threads, \
                     a quieter machine, more samples)"
                } else {
                    ""
                };
                eprintln!(
                    "kvlens: noise floor: {base}'s per-token time varies by {pct:.1} % between \
                     samples of like prompt length ({} pairs){warn}",
                    n.pairs
                );
                record_noise(
                    &out,
                    RunNoise {
                        relative_spread: n.relative_spread,
                        pairs: n.pairs,
                        how: n.how,
                    },
                )?;
            }
            None => eprintln!(
                "kvlens: noise floor: too few baseline samples of like prompt length to measure it"
            ),
        }
    }
    // The records are written; an analysis that cannot run (no baseline among the methods)
    // is a note, not a failure of the run.
    if let Err(e) = print_summary(&out) {
        eprintln!(
            "kvlens: no analysis: {e:#}\nkvlens: run `kvlens analyze {} --baseline NAME`",
            out.display()
        );
    }
    Ok(())
}

/// Analyzes a run folder against `full`, as `kvlens analyze RUN` does: the table on standard
/// output, tables and plots under `analysis/<name>` beside `results/<name>`, or in the run
/// folder's `analysis/` when it is not under a `results` folder.
pub fn print_summary(out: &Path) -> Result<()> {
    let name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let parent = out.parent().unwrap_or(Path::new(""));
    let dest = if parent.file_name().is_some_and(|p| p == "results") {
        parent
            .parent()
            .unwrap_or(Path::new(""))
            .join("analysis")
            .join(name)
    } else {
        out.join("analysis")
    };
    crate::analyze::analyze(crate::analyze::AnalyzeArgs {
        results: vec![out.to_path_buf()],
        baseline: None,
        rule: kvlens_analyze::Rule::Default,
        thresholds: vec![1.0, 2.0, 4.0, 8.0, 10.0, 16.0, 24.0, 32.0],
        delta: 10.0,
        joint: Vec::new(),
        out: Some(dest),
        json: false,
        bootstrap: 1000,
        seed: 0,
        no_plots: false,
        export_negatives: None,
    })
}

#[derive(Args)]
pub struct ScoreArgs {
    /// A run folder or a record file (.jsonl).
    results: PathBuf,
    /// Score with this metric instead of each record's own.
    #[arg(long)]
    metric: Option<String>,
    /// A sample passes when its score reaches this (default: 1.0 for exact metrics, 0.5 for
    /// graded ones).
    #[arg(long)]
    pass_threshold: Option<f64>,
}

pub fn score(a: ScoreArgs) -> Result<()> {
    let t = Instant::now();
    let metric = a
        .metric
        .as_deref()
        .map(str::parse::<kvlens_score::Metric>)
        .transpose()?;
    let folder = if a.results.is_file() {
        a.results
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."))
            .to_path_buf()
    } else {
        a.results.clone()
    };
    let _lock = lock_folder(&folder)?;
    let files = if a.results.is_file() {
        vec![a.results.clone()]
    } else {
        kvlens_run::store::record_files(&a.results)?
    };
    let mut n = 0;
    for f in &files {
        let (mut records, torn) = kvlens_run::store::read_file(f)?;
        if let Some(line) = torn {
            eprintln!(
                "kvlens: {} line {line} is incomplete (an interrupted write) and is dropped",
                f.display()
            );
        }
        for r in &mut records {
            r.rescore(metric, a.pass_threshold);
        }
        kvlens_run::store::write_atomic(f, &records)?;
        n += records.len();
    }
    eprintln!(
        "kvlens: scored {n} records in {} files in {:.3} s",
        files.len(),
        t.elapsed().as_secs_f64()
    );
    if a.results.is_dir() {
        // The scores are written; the table after them is a courtesy that needs a baseline.
        if let Err(e) = print_summary(&a.results) {
            eprintln!("kvlens: the scores are written; the analysis after them was skipped: {e:#}");
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct MergeArgs {
    /// The merged run folder (records already there are kept).
    #[arg(long)]
    out: PathBuf,
    /// Shard run folders.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

pub fn merge(a: MergeArgs) -> Result<()> {
    let _lock = lock_folder(&a.out)?;
    let r = kvlens_run::merge::merge(&a.inputs, &a.out)?;
    eprintln!(
        "kvlens: {} records in {} files → {} ({} duplicates dropped, {} failed records replaced)",
        r.records,
        r.files,
        a.out.display(),
        r.duplicates,
        r.replaced_errors
    );
    print_summary(&a.out)
}
