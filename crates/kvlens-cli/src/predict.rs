//! `kvlens predict`: the step-time model fitted to a profile (`fit`), and the throughput and
//! latency a method would have under a load and a memory budget (`throughput`), from a
//! simulation of the scheduler `kvlens serve` runs, fed the output lengths each method really
//! produced on the user's tasks.

use crate::LimitArgs;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kvlens_analyze::serving::{summarize, Goodput, PointSummary};
use kvlens_engine::sched::Limits;
use kvlens_predict::cost::{fit_report, FitReport};
use kvlens_predict::sim::{simulate, SimConfig, SimRequest, SimResult};
use kvlens_predict::{Profile, StepModel};
use kvlens_press::Spec;
use kvlens_run::arrivals::{deal, schedule, Rate};
use kvlens_run::{LoadInfo, Record, RunConfig};
use kvlens_tasks::DataDirs;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum PredictCommand {
    /// Fit the step-time model to profiles and report each method's coefficients and its
    /// error on grid points left out of the fit. A profile is `kvlens bench --profile`'s
    /// JSON Lines, or one of the MLSys 2025 study's throughput CSVs
    /// (`model,method,bsz,prompt_len,stage,thr`).
    Fit(FitArgs),
    /// Request throughput and latency percentiles per method and request rate, simulated
    /// from a profile, a trace of real output lengths and a KV budget; the same arrivals and
    /// prompt order as `kvlens load` with the same flags, and its field names.
    Throughput(Box<ThroughputArgs>),
}

#[derive(Args)]
pub struct FitArgs {
    /// Profiles (.jsonl from `kvlens bench --profile`) or study CSVs (.csv).
    #[arg(required = true)]
    profiles: Vec<PathBuf>,
    /// One JSON array on standard output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ThroughputArgs {
    /// The step-time profile (`kvlens bench --profile FILE`).
    #[arg(long)]
    profile: PathBuf,
    /// A run folder of `kvlens run` whose records give each (sample, method) its prompt and
    /// output tokens; its tasks are dealt as `kvlens load --tasks` deals them.
    #[arg(long)]
    trace: PathBuf,
    /// Methods to predict (specs; repeat). Default: every method in both the profile and the
    /// trace.
    #[arg(long = "method")]
    methods: Vec<String>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Requests per second, or `inf` (every request at time 0, the default).
    #[arg(long, conflicts_with = "rates")]
    request_rate: Option<String>,
    /// Several rates, comma-separated: one prediction each.
    #[arg(long, value_delimiter = ',')]
    rates: Vec<String>,
    /// Shape of the gamma distribution of the gaps (1: Poisson), as `kvlens load`.
    #[arg(long, default_value_t = 1.0)]
    burstiness: f64,
    /// Requests per point (default 100, as `kvlens load`).
    #[arg(long, default_value_t = 100)]
    num_prompts: usize,
    /// Seed of the arrival times, as `kvlens load`.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Latency objectives for goodput, ms: `ttft:500,tpot:50,e2el:5000`.
    #[arg(long)]
    goodput: Option<String>,
    /// Objectives a planner asks about (`ttft:MS,e2el:MS`, also tpot): reports the highest
    /// request rate each method sustains with at least 90 % of requests within all of them
    /// on the budget, and the smallest KV budget that does so at each rate given.
    #[arg(long)]
    slo: Option<String>,
    /// A `kvlens load` run folder measured with the same flags: each prediction is laid
    /// beside its measurement (target names matched to methods by name or spec).
    #[arg(long)]
    measured: Option<PathBuf>,
    /// Folder of the shipped task sets (default: ./datasets, or KVLENS_DATASETS).
    #[arg(long)]
    datasets: Option<PathBuf>,
    /// Standard output holds only one JSON object: {"results": [...]}.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: PredictCommand) -> Result<()> {
    match cmd {
        PredictCommand::Fit(a) => fit(a),
        PredictCommand::Throughput(a) => throughput(*a),
    }
}

/// A table of each method's fit (as `kvlens bench --profile` prints it).
pub fn fit_table(profile: &Profile) -> Result<String> {
    let reports = profile_fits(&profile.model.model, profile)?;
    Ok(reports_table(&reports))
}

/// Each method's fit as a JSON array (as `kvlens predict fit --json`).
pub fn fit_json(profile: &Profile) -> Result<String> {
    let reports = profile_fits(&profile.model.model, profile)?;
    Ok(serde_json::to_string(&reports_json(&reports))?)
}

fn reports_json(reports: &[(String, FitReport)]) -> Vec<Value> {
    reports
        .iter()
        .map(|(model, r)| {
            let mut o = serde_json::to_value(r).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut o {
                m.insert("model".into(), Value::from(model.clone()));
            }
            o
        })
        .collect()
}

fn profile_fits(model: &str, profile: &Profile) -> Result<Vec<(String, FitReport)>> {
    let mut out = Vec::new();
    for m in &profile.methods {
        let steps: Vec<_> = m.steps.iter().map(|(_, s)| s.clone()).collect();
        out.push((model.to_string(), fit_report(&m.method, &steps)?));
    }
    Ok(out)
}

fn reports_table(reports: &[(String, FitReport)]) -> String {
    let mut s = String::from(
        "| model | method | steps | ms/step | ms/sequence | ms/cache MiB | ms/prompt token | ms/10⁶ attended | held-out MAPE | held-out max |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (model, r) in reports {
        let c = r.model.coef;
        s.push_str(&format!(
            "| {model} | {} | {} | {:.3} | {:.4} | {:.4} | {:.5} | {:.4} | {:.1} % | {:.1} % |\n",
            r.method,
            r.steps,
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            100.0 * r.held_out_mape,
            100.0 * r.held_out_max
        ));
    }
    s
}

fn fit(a: FitArgs) -> Result<()> {
    let mut reports = Vec::new();
    for p in &a.profiles {
        if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
            let rows = kvlens_predict::study::read(p)?;
            for ((model, method), steps) in kvlens_predict::study::to_steps(p, &rows)? {
                reports.push((model, fit_report(&method, &steps)?));
            }
        } else {
            let profile = Profile::read(p)?;
            reports.extend(profile_fits(&profile.model.model, &profile)?);
        }
    }
    if a.json {
        println!("{}", serde_json::to_string(&reports_json(&reports))?);
    } else {
        print!("{}", reports_table(&reports));
        println!(
            "\nHeld out: each (batch, context) grid point left out of the fit in turn, its \
             prefill and decode steps predicted by the rest; the error is that of their total time."
        );
    }
    Ok(())
}

/// One (sample, method) of the trace.
#[derive(Clone)]
struct Traced {
    record: Record,
    request: SimRequest,
}

/// The trace's requests per method, in the order `kvlens load` sends the prompts.
fn read_trace(
    a: &ThroughputArgs,
    profile: &Profile,
    methods: &[Spec],
    n: usize,
) -> Result<HashMap<String, Vec<Traced>>> {
    let run_toml = a.trace.join("run.toml");
    let text = std::fs::read_to_string(&run_toml).with_context(|| {
        format!(
            "reading {} (--trace takes a `kvlens run` folder)",
            run_toml.display()
        )
    })?;
    let file: kvlens_run::runner::RunFile =
        toml::from_str(&text).with_context(|| format!("reading {}", run_toml.display()))?;
    // As `kvlens load --tasks` builds its plan: the tasks, no limit of the run's own.
    let cfg = RunConfig {
        tasks: file.config.tasks.clone(),
        ..RunConfig::default()
    }
    .with_defaults();
    let dirs = DataDirs::from_flag(a.datasets.as_deref());
    let plan = kvlens_run::Plan::new(&cfg, &dirs)
        .with_context(|| format!("the tasks of {}", run_toml.display()))?;
    let sizes: Vec<usize> = plan.tasks.iter().map(|t| t.selected.len()).collect();
    let order = deal(&sizes, n);
    if order.len() < n {
        eprintln!(
            "kvlens: the trace's tasks hold {} samples; {} requests per point, not {n}",
            order.len(),
            order.len()
        );
    }
    let records = kvlens_run::store::read_run(&a.trace)?;
    let mut by_key: HashMap<(String, String, String), Record> = HashMap::new();
    for r in records {
        let Ok(spec) = Spec::parse(&r.method) else {
            continue;
        };
        by_key.insert((r.task.clone(), r.sample_id.clone(), spec.canonical()), r);
    }
    let mut out = HashMap::new();
    for spec in methods {
        let c = spec.canonical();
        let mut list = Vec::with_capacity(order.len());
        for &(t, i) in &order {
            let pt = &plan.tasks[t];
            let sample = &pt.task.samples[pt.selected[i]];
            let task = &pt.task.spec.name;
            let key = (task.clone(), sample.id.clone(), c.clone());
            let Some(r) = by_key.get(&key) else {
                bail!(
                    "the trace {} has no record of task {task} sample {} under {c}: run that \
                     method on these tasks first (kvlens run --tasks ... --methods {c})",
                    a.trace.display(),
                    sample.id
                );
            };
            if let Some(e) = &r.error {
                bail!(
                    "the trace {}: task {task} sample {} under {c} failed ({e}); its length is unknown",
                    a.trace.display(),
                    sample.id
                );
            }
            if r.model != profile.model.model {
                bail!(
                    "the trace {} was made with model {}, the profile {} with {}: a profile \
                     predicts only the model it timed",
                    a.trace.display(),
                    r.model,
                    a.profile.display(),
                    profile.model.model
                );
            }
            list.push(Traced {
                request: SimRequest {
                    arrival_s: 0.0,
                    prompt_tokens: r.prompt_tokens,
                    output_tokens: r.output_tokens,
                    stopped: r.finish_reason.as_deref() != Some("length"),
                },
                record: r.clone(),
            });
        }
        out.insert(c, list);
    }
    Ok(out)
}

/// One prediction: the load summary's fields, with the simulation's own.
#[derive(Serialize)]
struct Predicted {
    method: String,
    #[serde(flatten)]
    summary: PointSummary,
    kv_budget: usize,
    max_batch: usize,
    prefill_chunk: usize,
    steps: usize,
    mean_batch: f64,
    peak_batch: usize,
    peak_kv_bytes: usize,
    preemptions: usize,
    /// The measured point of `--measured`, where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    measured: Option<PointSummary>,
}

/// The simulated requests as load records, so that `kvlens load`'s summary reads them.
fn as_records(
    traced: &[Traced],
    sim: &SimResult,
    method: &str,
    rate: Rate,
    burstiness: f64,
) -> Vec<Record> {
    traced
        .iter()
        .zip(&sim.done)
        .enumerate()
        .map(|(i, (t, d))| {
            let mut r = t.record.clone();
            r.run_id = "predict".into();
            r.method = method.to_string();
            let at = |s: f64| (s - d.arrival_s) * 1e3;
            r.e2e_ms = at(d.done_s);
            r.ttft_ms = d.token_s.first().map_or(r.e2e_ms, |&s| at(s));
            r.queue_ms = d.queue_ms;
            r.preemptions = d.preemptions;
            r.error = d.error.clone();
            r.load = Some(LoadInfo {
                point: rate.folder(),
                request_rate: rate.to_json(),
                burstiness,
                max_concurrency: None,
                index: i,
                scheduled_ms: d.arrival_s * 1e3,
                sent_ms: d.arrival_s * 1e3,
                late_ms: 0.0,
                slot_wait_ms: 0.0,
                done_ms: d.done_s * 1e3,
                itl_ms: d.token_s.windows(2).map(|w| (w[1] - w[0]) * 1e3).collect(),
                client_ms: 0.0,
            });
            r
        })
        .collect()
}

struct Setup<'a> {
    profile: &'a Profile,
    model: StepModel,
    spec: Spec,
    traced: &'a [Traced],
}

impl Setup<'_> {
    fn run(
        &self,
        limits: Limits,
        rate: Rate,
        a: &ThroughputArgs,
    ) -> Result<(Vec<Record>, SimResult)> {
        let times = schedule(self.traced.len(), rate, a.burstiness, a.seed)
            .map_err(|e| anyhow::anyhow!(e))?;
        let requests: Vec<SimRequest> = self
            .traced
            .iter()
            .zip(&times)
            .map(|(t, &at)| SimRequest {
                arrival_s: at,
                ..t.request.clone()
            })
            .collect();
        let cfg = SimConfig {
            limits,
            spec: self.spec.clone(),
            dtype: self.profile.model.dtype()?,
            shape: self.profile.model.shape(),
            chunk: self.profile.model.chunk,
            min_last_chunk: kvlens_engine::MIN_LAST_CHUNK,
        };
        let model = self.model;
        let sim = simulate(&cfg, &requests, &|s| model.step_ms(s))?;
        let records = as_records(
            self.traced,
            &sim,
            &self.spec.canonical(),
            rate,
            a.burstiness,
        );
        Ok((records, sim))
    }
}

/// The share of the completed requests within every objective.
fn attainment(records: &[Record], slo: &Goodput) -> f64 {
    let ok: Vec<&Record> = records.iter().filter(|r| r.error.is_none()).collect();
    if ok.is_empty() {
        return 0.0;
    }
    let within = ok
        .iter()
        .filter(|r| {
            let tpot = if r.output_tokens > 1 {
                (r.e2e_ms - r.ttft_ms) / (r.output_tokens - 1) as f64
            } else {
                0.0
            };
            slo.ttft_ms.is_none_or(|l| r.ttft_ms <= l)
                && slo.tpot_ms.is_none_or(|l| tpot <= l)
                && slo.e2el_ms.is_none_or(|l| r.e2e_ms <= l)
        })
        .count();
    within as f64 / records.len() as f64
}

/// The share of requests that must meet the objectives for a rate to count as sustained.
const SLO_SHARE: f64 = 0.9;

/// The highest Poisson rate at which the objectives hold, by doubling and then bisection
/// (to 2 %); `None` when even the lowest rate tried (0.01/s) fails.
fn max_rate(
    setup: &Setup,
    limits: Limits,
    slo: &Goodput,
    a: &ThroughputArgs,
) -> Result<Option<f64>> {
    let holds = |r: f64| -> Result<bool> {
        let (records, _) = setup.run(limits, Rate::PerSecond(r), a)?;
        Ok(attainment(&records, slo) >= SLO_SHARE)
    };
    let mut lo = 0.01;
    if !holds(lo)? {
        return Ok(None);
    }
    let mut hi = lo * 2.0;
    while holds(hi)? {
        lo = hi;
        hi *= 2.0;
        if hi > 1e6 {
            return Ok(Some(lo));
        }
    }
    while hi / lo > 1.02 {
        let mid = (lo * hi).sqrt();
        if holds(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Some(lo))
}

/// The smallest KV budget (to 2 %) at which the objectives hold at `rate`; `None` when the
/// largest budget tried (every request's cache at once) fails too.
fn min_budget(
    setup: &Setup,
    limits: Limits,
    rate: Rate,
    slo: &Goodput,
    a: &ThroughputArgs,
) -> Result<Option<usize>> {
    let holds = |b: usize| -> Result<bool> {
        let (records, _) = setup.run(
            Limits {
                kv_budget: b,
                ..limits
            },
            rate,
            a,
        )?;
        Ok(attainment(&records, slo) >= SLO_SHARE)
    };
    let shape = setup.profile.model.shape();
    let dtype = setup.profile.model.dtype()?;
    let all: usize = setup
        .traced
        .iter()
        .map(|t| shape.full_bytes(t.request.prompt_tokens + t.request.output_tokens + 1, dtype))
        .sum();
    let mut hi = all.max(1);
    if !holds(hi)? {
        return Ok(None);
    }
    let mut lo = 1usize;
    while hi as f64 / lo as f64 > 1.02 {
        let mid = ((lo as f64) * (hi as f64)).sqrt() as usize;
        if mid <= lo || mid >= hi {
            break;
        }
        if holds(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Some(hi))
}

/// Which target of a measured load run is `spec`: its name is the method's spec, or the
/// method's name when the trace holds one spec of that method.
fn matches_target(target: &str, spec: &Spec) -> bool {
    target == spec.canonical()
        || Spec::parse(target).is_ok_and(|t| t.canonical() == spec.canonical())
}

/// The measured load points: target → rate folder → records.
fn read_measured(dir: &Path) -> Result<HashMap<(String, String), Vec<Record>>> {
    let mut out: HashMap<(String, String), Vec<Record>> = HashMap::new();
    for f in kvlens_run::store::record_files(dir)? {
        let (records, _) = kvlens_run::store::read_file(&f)?;
        for r in records {
            let Some(l) = &r.load else { continue };
            out.entry((r.method.clone(), l.point.clone()))
                .or_default()
                .push(r);
        }
    }
    if out.is_empty() {
        bail!(
            "{}: no load records (--measured takes a `kvlens load` run folder)",
            dir.display()
        );
    }
    Ok(out)
}

fn throughput(a: ThroughputArgs) -> Result<()> {
    let profile = Profile::read(&a.profile)?;
    let limits = a.limits.limits()?;
    let goodput = match &a.goodput {
        Some(g) => Goodput::parse(g).map_err(|e| anyhow::anyhow!(e))?,
        None => Goodput::default(),
    };
    let slo = a
        .slo
        .as_deref()
        .map(|s| Goodput::parse(s).map_err(|e| anyhow::anyhow!(e.replace("--goodput", "--slo"))))
        .transpose()?;
    let rates: Vec<Rate> = if a.rates.is_empty() {
        vec![Rate::parse(a.request_rate.as_deref().unwrap_or("inf"))
            .map_err(|e| anyhow::anyhow!("--request-rate: {e}"))?]
    } else {
        a.rates
            .iter()
            .map(|r| Rate::parse(r).map_err(|e| anyhow::anyhow!("--rates: {e}")))
            .collect::<Result<_>>()?
    };
    if a.num_prompts == 0 {
        bail!("--num-prompts must be at least 1");
    }
    // The methods: those asked for (each must be in the profile), or every profiled method
    // the trace holds.
    let methods: Vec<Spec> = if a.methods.is_empty() {
        let records = kvlens_run::store::read_run(&a.trace)?;
        let traced: std::collections::HashSet<String> = records
            .iter()
            .filter_map(|r| Spec::parse(&r.method).ok().map(|s| s.canonical()))
            .collect();
        let both: Vec<Spec> = profile
            .methods
            .iter()
            .filter(|m| traced.contains(&m.method))
            .map(|m| m.spec.clone())
            .collect();
        if both.is_empty() {
            bail!(
                "no method is in both the profile {} ({}) and the trace {}",
                a.profile.display(),
                profile
                    .methods
                    .iter()
                    .map(|m| m.method.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                a.trace.display()
            );
        }
        both
    } else {
        let mut v = Vec::new();
        for m in &a.methods {
            let spec = Spec::parse(m).with_context(|| format!("--method {m}"))?;
            if profile.method(&spec).is_none() {
                bail!(
                    "--method {m}: the profile {} has no steps of {} (it has: {})",
                    a.profile.display(),
                    spec.canonical(),
                    profile
                        .methods
                        .iter()
                        .map(|m| m.method.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            v.push(spec);
        }
        v
    };
    let traces = read_trace(&a, &profile, &methods, a.num_prompts)?;
    let measured = a.measured.as_deref().map(read_measured).transpose()?;
    let mut results = Vec::new();
    let mut planner = Vec::new();
    for spec in &methods {
        let mp = profile.method(spec).expect("checked above");
        let steps: Vec<_> = mp.steps.iter().map(|(_, s)| s.clone()).collect();
        let report = fit_report(&mp.method, &steps)?;
        let setup = Setup {
            profile: &profile,
            model: report.model,
            spec: spec.clone(),
            traced: &traces[&spec.canonical()],
        };
        for &rate in &rates {
            let (records, sim) = setup.run(limits, rate, &a)?;
            let summary = summarize(&spec.canonical(), &records, None, &goodput, 0, a.seed);
            let measured = measured.as_ref().and_then(|m| {
                m.iter()
                    .find(|((t, p), _)| p == &rate.folder() && matches_target(t, spec))
                    .map(|((t, _), recs)| summarize(t, recs, None, &goodput, 0, a.seed))
            });
            results.push(Predicted {
                method: spec.canonical(),
                summary,
                kv_budget: limits.kv_budget,
                max_batch: limits.max_batch,
                prefill_chunk: limits.prefill_chunk,
                steps: sim.steps,
                mean_batch: sim.mean_batch,
                peak_batch: sim.peak_batch,
                peak_kv_bytes: sim.peak_kv_bytes,
                preemptions: sim.preemptions,
                measured,
            });
        }
        if let Some(slo) = &slo {
            let best = max_rate(&setup, limits, slo, &a)?;
            let mut budgets = Vec::new();
            for &rate in &rates {
                budgets.push(serde_json::json!({
                    "request_rate": rate.to_json(),
                    "kv_budget_needed": min_budget(&setup, limits, rate, slo, &a)?,
                }));
            }
            planner.push(serde_json::json!({
                "method": spec.canonical(),
                "slo": slo,
                "slo_share": SLO_SHARE,
                "kv_budget": limits.kv_budget,
                "max_request_rate": best,
                "budgets": budgets,
            }));
        }
    }
    if a.json {
        let mut out = serde_json::json!({ "results": results });
        if slo.is_some() {
            out["slo"] = Value::from(planner);
        }
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!(
        "Predicted on {} (KV budget {}, max batch {}, {} prompt tokens per step), {} requests per point:\n",
        profile.model.model,
        bytesize::ByteSize(limits.kv_budget as u64),
        limits.max_batch,
        limits.prefill_chunk,
        traces.values().next().map_or(0, Vec::len)
    );
    println!("| method | rate | req/s | out tok/s | p50 TTFT ms | p50 e2e ms | p99 e2e ms | mean batch | peak KV MiB | preempted |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &results {
        let s = &p.summary;
        println!(
            "| {} | {} | {:.3} | {:.1} | {:.0} | {:.0} | {:.0} | {:.2} | {:.1} | {} |",
            p.method,
            rate_text(&s.request_rate),
            s.request_throughput,
            s.output_throughput,
            s.median_ttft_ms,
            s.median_e2el_ms,
            s.p99_e2el_ms,
            p.mean_batch,
            p.peak_kv_bytes as f64 / 1048576.0,
            p.preemptions
        );
    }
    if results.iter().any(|p| p.measured.is_some()) {
        println!(
            "\nPredicted against measured (`--measured`), relative error of the prediction:\n"
        );
        println!("| method | rate | req/s pred | req/s meas | err | p50 e2e pred | p50 e2e meas | err | p99 e2e pred | p99 e2e meas | err |");
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let err = |p: f64, m: f64| 100.0 * (p - m) / m.max(1e-9);
        for p in &results {
            let Some(m) = &p.measured else { continue };
            let s = &p.summary;
            println!(
                "| {} | {} | {:.3} | {:.3} | {:+.1} % | {:.0} | {:.0} | {:+.1} % | {:.0} | {:.0} | {:+.1} % |",
                p.method,
                rate_text(&s.request_rate),
                s.request_throughput,
                m.request_throughput,
                err(s.request_throughput, m.request_throughput),
                s.median_e2el_ms,
                m.median_e2el_ms,
                err(s.median_e2el_ms, m.median_e2el_ms),
                s.p99_e2el_ms,
                m.p99_e2el_ms,
                err(s.p99_e2el_ms, m.p99_e2el_ms),
            );
        }
    }
    if !planner.is_empty() {
        println!(
            "\nWithin --slo for at least {:.0} % of requests:\n",
            100.0 * SLO_SHARE
        );
        for p in &planner {
            println!("{}", serde_json::to_string(p)?);
        }
    }
    Ok(())
}

fn rate_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
