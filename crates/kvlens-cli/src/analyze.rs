//! `kvlens analyze`, `kvlens inspect`, `kvlens import`: flags and printing; the work is in
//! kvlens-analyze.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kvlens_analyze::{import, inspect, output, plots, Options, Rule};
use std::path::PathBuf;

#[derive(Args)]
pub struct AnalyzeArgs {
    /// Run folders (or record files); their records are analyzed together.
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// The baseline method (default: `full`, else `hf` for imported paper files).
    #[arg(long)]
    pub baseline: Option<String>,
    /// Negative-sample rule: `paper` (MLSys 2025, as published), `default` (also b > 0), or
    /// `paper-mean` (the task's mean baseline score as the bar, as the study's extractor that
    /// built its released benchmark files).
    #[arg(long, default_value = "default")]
    pub rule: Rule,
    /// Thresholds δ in percent.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,10,16,24,32")]
    pub thresholds: Vec<f64>,
    /// δ (percent) of the table's negatives column and of the flags.
    #[arg(long, default_value_t = 10.0)]
    pub delta: f64,
    /// A joint set of methods, `A+B`: samples negative for all of them (repeatable).
    #[arg(long)]
    pub joint: Vec<String>,
    /// Where tables and plots go (default: analysis/<name of the first results folder>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print one JSON object (`negatives`, `tasks`) and nothing else on stdout.
    #[arg(long)]
    pub json: bool,
    /// Bootstrap resamples for the Δscore intervals.
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip the plots.
    #[arg(long)]
    pub no_plots: bool,
    /// Also write the negatives (at --delta, under --rule; with --joint, those of the first
    /// set) as a task set in this folder, as `kvlens negatives export` does. One run folder.
    #[arg(long, value_name = "DIR")]
    pub export_negatives: Option<PathBuf>,
}

pub fn analyze(a: AnalyzeArgs) -> Result<()> {
    if a.export_negatives.is_some() && a.results.len() != 1 {
        bail!("--export-negatives reads one run folder; give one");
    }
    if a.thresholds.is_empty() || a.thresholds.iter().any(|t| !t.is_finite()) {
        bail!("--thresholds must be numbers (percent)");
    }
    let t0 = std::time::Instant::now();
    let samples = kvlens_analyze::load_runs(&a.results).context("reading the records")?;
    if samples.is_empty() {
        bail!("no records under {}", display(&a.results));
    }
    let t_load = t0.elapsed();
    let opts = Options {
        baseline: a.baseline.clone(),
        rule: a.rule,
        thresholds: a.thresholds.clone(),
        joint: a.joint.clone(),
        delta: a.delta,
        bootstrap_reps: a.bootstrap,
        seed: a.seed,
    };
    let an = kvlens_analyze::analyze(&samples, &opts)?;
    let t_an = t0.elapsed();
    let out = a.out.clone().unwrap_or_else(|| {
        let name = a.results[0]
            .file_name()
            .map_or("run".into(), |n| n.to_string_lossy().to_string());
        PathBuf::from("analysis").join(name)
    });
    // Tables and plots are independent: drawn beside the table writers.
    let (tables, plots) = std::thread::scope(|s| {
        let plots = s.spawn(|| {
            if a.no_plots {
                Ok(Vec::new())
            } else {
                plots::draw_all(&an, &samples, &out.join("plots"))
            }
        });
        let tables = output::write_tables(&an, &out);
        let plots = plots
            .join()
            .unwrap_or_else(|_| Err("drawing the plots panicked".to_string()));
        (tables, plots)
    });
    tables.with_context(|| format!("writing tables to {}", out.display()))?;
    let t_all = t0.elapsed();
    if a.json {
        println!("{}", serde_json::to_string(&output::json(&an))?);
    } else {
        println!(
            "{} records, baseline `{}`, rule {}, negatives at δ = {}%\n",
            samples.len(),
            an.baseline,
            match an.rule {
                Rule::Default => "default (b ≥ median, b > 0)",
                Rule::Paper => "paper (b ≥ median)",
                Rule::PaperMean => "paper-mean (b ≥ mean, the study's extractor)",
            },
            an.delta
        );
        print!("{}", output::markdown(&an));
        println!("{}", output::noise_sentence(&an));
        let meta = output::meta_markdown(&an.by_meta);
        if !meta.is_empty() {
            println!(
                "\nFailures by the generator's meta (negatives at δ = {}%):",
                an.delta
            );
            print!("{meta}");
        }
    }
    if let Some(dir) = &a.export_negatives {
        let e = kvlens_analyze::export::export_negatives(
            &a.results[0],
            dir,
            &opts,
            a.joint.first().map(String::as_str),
            &kvlens_tasks::DataDirs::discover(),
        )
        .with_context(|| format!("exporting the negatives into {}", dir.display()))?;
        eprintln!(
            "kvlens: {} negatives in {} tasks → {} (run them: kvlens run --tasks {})",
            e.ids.values().map(Vec::len).sum::<usize>(),
            e.ids.len(),
            dir.display(),
            dir.display()
        );
    }
    let missing_b = an
        .missing
        .iter()
        .filter(|m| m.missing_side == "baseline")
        .count();
    let missing_m = an.missing.len() - missing_b;
    if missing_b + missing_m > 0 {
        eprintln!(
            "kvlens: {missing_b} samples have no baseline record and {missing_m} baseline samples are missing under some method (listed in {})",
            out.join("missing.csv").display()
        );
    }
    if an.duplicates > 0 {
        eprintln!(
            "kvlens: {} duplicate records ignored (the first of each is used)",
            an.duplicates
        );
    }
    match plots {
        Ok(p) if !p.is_empty() => eprintln!(
            "kvlens: {} plots in {}",
            p.len(),
            out.join("plots").display()
        ),
        Ok(_) => {}
        Err(e) => eprintln!("kvlens: no plots: {e}"),
    }
    eprintln!(
        "kvlens: tables in {} ({} flagged samples); read {:.2}s, analyzed {:.2}s, total {:.2}s",
        out.display(),
        an.flags.len(),
        t_load.as_secs_f64(),
        (t_an - t_load).as_secs_f64(),
        t_all.as_secs_f64()
    );
    Ok(())
}

fn display(p: &[PathBuf]) -> String {
    p.iter()
        .map(|x| x.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Args)]
pub struct InspectArgs {
    pub results: Vec<PathBuf>,
    #[arg(long)]
    pub task: String,
    #[arg(long)]
    pub sample: String,
    /// Methods to show (names, specs or file labels; comma-separated); default all.
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    #[arg(long, default_value = "full")]
    pub baseline: String,
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    let records = kvlens_analyze::load::load_records(&a.results)?;
    let source = find_sample(&a.results, &a.task, &a.sample);
    print!(
        "{}",
        inspect::inspect(
            &records,
            &a.task,
            &a.sample,
            &a.methods,
            &a.baseline,
            source.as_ref()
        )?
    );
    Ok(())
}

/// The sample as its task gives it, for the question: through the task list in the run
/// folders' `run.toml` (custom task files, `NAME=FILE`), else the task's built-in name.
fn find_sample(results: &[PathBuf], task: &str, id: &str) -> Option<kvlens_tasks::Sample> {
    let dirs = kvlens_tasks::DataDirs::discover();
    let mut specs: Vec<String> = results
        .iter()
        .filter_map(|d| kvlens_run::RunConfig::from_file(&d.join("run.toml")).ok())
        .flat_map(|c| c.tasks)
        .collect();
    specs.push(task.to_string());
    specs.into_iter().find_map(|spec| {
        let t = kvlens_tasks::registry::load(&spec, &dirs).ok()?;
        if t.spec.name != task {
            return None;
        }
        t.samples.into_iter().find(|s| s.id == id)
    })
}

#[derive(Subcommand)]
pub enum ImportCommand {
    /// LongBench prediction folders: DIR/<method>/<dataset>.jsonl (pred, answers,
    /// all_classes, length), scored here with each dataset's metric.
    LongbenchPred {
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The model name the records carry.
        #[arg(long, default_value = "imported")]
        model: String,
    },
    /// Per-sample score files of the MLSys 2025 paper:
    /// <method>_<model>_<maxlen>_b<batch>[_<params>]_<dataset>_eval.json.
    ScoreFiles {
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// lm-evaluation-harness sample logs (--output_path --log_samples):
    /// <model>/samples_<task>_<date>.jsonl with results_<date>.json; one method per folder.
    LmEval {
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// `vllm bench serve --save-result --save-detailed` JSON: per-request lengths, TTFT,
    /// inter-token gaps, latency and text, as load records (OUT/rate=<r>/<method>.jsonl).
    VllmBench(BenchImport),
    /// `python -m sglang.bench_serving --output-file F --output-details` JSON Lines, as load
    /// records (OUT/rate=<r>/<method>.jsonl).
    SglangBench(BenchImport),
    /// RULER prediction files: every pred/<task>.jsonl under DIR (index, pred, input, outputs,
    /// others, truncation, length), scored as RULER's evaluate.py scores them.
    Ruler {
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The method the predictions came from.
        #[arg(long, default_value = "full")]
        method: String,
        /// The model name the records carry.
        #[arg(long, default_value = "imported")]
        model: String,
    },
    /// LongBench v2 result files (pred.py's results/<model>.jsonl: _id, domain, difficulty,
    /// length, answer, response, pred, judge), one method per file, named by its stem.
    LongbenchV2 {
        path: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The model name the records carry.
        #[arg(long, default_value = "imported")]
        model: String,
    },
}

#[derive(Args)]
pub struct BenchImport {
    /// A result file, or a folder of them.
    path: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// The method's name in the records (default: the file's label or backend).
    #[arg(long)]
    method: Option<String>,
    /// JSON Lines in the benchmark's request order (task, sample_id or id, answers): each
    /// request takes its line's task, id and answers.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Score the generated texts against the prompt file's answers with this metric.
    #[arg(long, requires = "prompts")]
    metric: Option<String>,
}

impl BenchImport {
    fn run(&self, kind: import::bench::Bench) -> Result<import::Imported> {
        let metric = match &self.metric {
            Some(m) => Some(m.parse::<kvlens_score::Metric>()?),
            None => None,
        };
        let join = import::bench::Join {
            prompts: self.prompts.clone(),
            metric,
        };
        Ok(import::bench::import(
            kind,
            &self.path,
            &self.out,
            self.method.as_deref(),
            &join,
        )?)
    }
}

#[derive(Subcommand)]
pub enum ExportCommand {
    /// The run in lm-evaluation-harness's output shape: OUT/<method>/results_<date>.json and
    /// samples_<task>_<date>.jsonl ("metric,none" and "metric_stderr,none" keys), so that
    /// lm-eval's tooling and leaderboard scripts read it.
    LmEval {
        /// Run folders (or record files).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn export(c: ExportCommand) -> Result<()> {
    match c {
        ExportCommand::LmEval { runs, out } => {
            let now = chrono::Local::now();
            let date_id = now.format("%Y-%m-%dT%H-%M-%S%.6f").to_string();
            let unix_s = now.timestamp_micros() as f64 / 1e6;
            let w = kvlens_analyze::lm_eval::export(&runs, &out, &date_id, unix_s)?;
            println!(
                "{} samples in {} files under {}{}",
                w.samples,
                w.files.len(),
                out.display(),
                if w.skipped > 0 {
                    format!(" ({} failed or unscored records left out)", w.skipped)
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(())
}

pub fn import(c: ImportCommand) -> Result<()> {
    let done = match &c {
        ImportCommand::LongbenchPred { dir, out, model } => {
            import::longbench_pred(dir, out, model)?
        }
        ImportCommand::ScoreFiles { dir, out } => import::score_files(dir, out)?,
        ImportCommand::LmEval { dir, out } => import::lm_eval::import(dir, out)?,
        ImportCommand::VllmBench(b) => b.run(import::bench::Bench::Vllm)?,
        ImportCommand::SglangBench(b) => b.run(import::bench::Bench::Sglang)?,
        ImportCommand::Ruler {
            dir,
            out,
            method,
            model,
        } => import::ruler::import(dir, out, method, model)?,
        ImportCommand::LongbenchV2 { path, out, model } => {
            import::longbench_v2::import(path, out, model)?
        }
    };
    for n in &done.notes {
        eprintln!("kvlens: {n}");
    }
    println!("{} records in {} files", done.records, done.files.len());
    Ok(())
}

#[derive(Subcommand)]
pub enum NegativesCommand {
    /// Write the samples the baseline answers well and the methods break as a task set that
    /// `kvlens run --tasks DIR` runs again (the study's negative-sample benchmark):
    /// DIR/<task>.toml and .jsonl (original fields, answers, meta with the baseline's output
    /// and score) and DIR/manifest.json (source run, rule, δ, methods, the ids per task).
    Export {
        /// The run folder.
        run: PathBuf,
        /// The folder of the task set.
        #[arg(long)]
        out: PathBuf,
        /// The baseline method, as `kvlens analyze` chooses it (default: full).
        #[arg(long)]
        baseline: Option<String>,
        /// `default` (b ≥ median, b > 0), `paper` (b ≥ median, as published) or `paper-mean`
        /// (b ≥ the task's mean, the study's extractor).
        #[arg(long, default_value = "default")]
        rule: Rule,
        /// δ in percent: a method's score at most b·(1 − δ/100) is a failure.
        #[arg(long, default_value_t = 10.0)]
        delta: f64,
        /// Only the samples negative for every method of this set (`A+B`, names as the
        /// records spell them); default: negative for any method.
        #[arg(long)]
        joint: Option<String>,
        /// Folder of the shipped task sets (default: ./datasets, or KVLENS_DATASETS).
        #[arg(long)]
        datasets: Option<PathBuf>,
    },
    /// A run on an exported benchmark against the baseline scores stored in it (no baseline
    /// run needed): per task and task group, the baseline's and each method's mean score on
    /// the negatives, how many are still negative, and the fail ratio (still negative over
    /// the baseline samples that reached the bar), as the study's evaluation reports.
    Report {
        /// Run folders made with `kvlens run --tasks BENCH`.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// The benchmark folder (`negatives export --out`).
        #[arg(long)]
        benchmark: PathBuf,
        /// One JSON array on standard output.
        #[arg(long)]
        json: bool,
    },
}

pub fn negatives(c: NegativesCommand) -> Result<()> {
    let (run, out, baseline, rule, delta, joint, datasets) = match c {
        NegativesCommand::Export {
            run,
            out,
            baseline,
            rule,
            delta,
            joint,
            datasets,
        } => (run, out, baseline, rule, delta, joint, datasets),
        NegativesCommand::Report {
            runs,
            benchmark,
            json,
        } => {
            let rows = kvlens_analyze::negbench::report(&runs, &benchmark)
                .with_context(|| format!("the benchmark {}", benchmark.display()))?;
            if json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                print!("{}", kvlens_analyze::negbench::table(&rows));
            }
            return Ok(());
        }
    };
    if !(delta > 0.0 && delta < 100.0) {
        anyhow::bail!("--delta {delta}: give a percentage between 0 and 100 (10 means 10 %)");
    }
    let dirs = kvlens_tasks::DataDirs::from_flag(datasets.as_deref());
    let opts = kvlens_analyze::Options {
        baseline,
        rule,
        thresholds: vec![delta],
        joint: Vec::new(),
        delta,
        ..kvlens_analyze::Options::default()
    };
    let e = kvlens_analyze::export::export_negatives(&run, &out, &opts, joint.as_deref(), &dirs)
        .with_context(|| format!("exporting the negatives of {}", run.display()))?;
    let total: usize = e.ids.values().map(Vec::len).sum();
    for (task, ids) in &e.ids {
        eprintln!("kvlens: {task}: {} negatives", ids.len());
    }
    for t in &e.without_samples {
        eprintln!(
            "kvlens: {t}: its samples were not found (no run.toml task for it); the manifest \
             lists its ids only"
        );
    }
    eprintln!(
        "kvlens: {total} samples in {} tasks → {} (run them: kvlens run --tasks {})",
        e.ids.len(),
        out.display(),
        out.display()
    );
    Ok(())
}
