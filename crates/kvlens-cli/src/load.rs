//! `kvlens load`: a serving benchmark against OpenAI-compatible servers that also scores
//! every answer. Open-loop arrivals (Poisson or gamma, as vLLM's `bench serve`), one load
//! point per target × rate, a kvlens record per request, and per point a summary with vLLM's
//! field names beside the score and its paired difference from the baseline target's.

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kvlens_analyze::plots::{draw_load_all, LoadPoint};
use kvlens_analyze::serving::{summarize, Goodput, PointSummary, LATE_MS};
use kvlens_engine::{LoadOptions, Model};
use kvlens_run::arrivals::{deal, schedule, Rate};
use kvlens_run::load::{run_point, Job, Progress, Sent};
use kvlens_run::remote::{self, Client, Endpoint, Remote};
use kvlens_run::runner::{
    blank_record, file_safe, fill_remote, lock_folder, prepare_prompt, render_chat, sample_seed,
};
use kvlens_run::store::RecordFile;
use kvlens_run::{LoadInfo, Record, RunConfig};
use kvlens_tasks::{DataDirs, Prompt, Sample, TaskSpec};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[derive(Args)]
pub struct LoadArgs {
    /// A server to load: NAME=URL[,model=M][,api_key_env=VAR], URL the OpenAI base ending in
    /// /v1 (`full=http://127.0.0.1:8000/v1`). Repeat for each target; each is one "method"
    /// of the comparison. Without model=, requests name the first id its /v1/models lists.
    #[arg(long = "target", value_name = "NAME=URL[,...]")]
    targets: Vec<String>,
    /// A suite TOML with `[targets.NAME]` tables (base_url, model, api_key_env, endpoint,
    /// timeout_s, extra_body); --target flags add to it.
    #[arg(long)]
    suite: Option<PathBuf>,
    /// The target the others are compared with (default: the first).
    #[arg(long)]
    baseline: Option<String>,
    /// kvlens tasks, comma-separated (as `kvlens run --tasks`): the prompts are dealt
    /// round-robin over them in sample order and every answer is scored. Default: the default
    /// suite, unless --prompts is given.
    #[arg(long, conflicts_with = "prompts")]
    tasks: Option<String>,
    /// Prompts without answers instead of tasks: a ShareGPT JSON file, a JSONL file with a
    /// `prompt` field (and optionally `output_len`), or `random` (see --random-input-len).
    #[arg(long)]
    prompts: Option<String>,
    /// With --prompts random: prompt length in tokens of the tokenizer model.
    #[arg(long, default_value_t = 1024)]
    random_input_len: usize,
    /// With --prompts random (and prompt files without `output_len`): tokens to generate.
    #[arg(long, default_value_t = 128)]
    random_output_len: usize,
    /// Requests per load point (default 100).
    #[arg(long)]
    num_prompts: Option<usize>,
    /// Requests per second (Poisson arrivals), or `inf` to send all at once (the default).
    #[arg(long, conflicts_with = "rates")]
    request_rate: Option<String>,
    /// Several rates, comma-separated (`1,2,4,inf`): one load point each.
    #[arg(long, value_delimiter = ',')]
    rates: Vec<String>,
    /// Shape of the gamma distribution of the gaps between arrivals: 1 is Poisson, below 1
    /// burstier, above 1 more regular.
    #[arg(long, default_value_t = 1.0)]
    burstiness: f64,
    /// At most this many requests in flight (default: no limit).
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Requests sent before each load point and not counted (default 0).
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Seed of the arrival times only (the prompts and their order do not depend on it).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Latency objectives for goodput, ms: `ttft:500,tpot:50,e2el:5000` (any of them).
    #[arg(long)]
    goodput: Option<String>,
    /// Override every task's maximum new tokens.
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Ask servers to ignore end-of-sequence tokens (vLLM's and kvlens serve's `ignore_eos`),
    /// so every answer has its maximum length.
    #[arg(long)]
    ignore_eos: bool,
    /// Seconds one request may take, stream included.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// The model whose tokenizer and chat template cut and count the prompts (what the
    /// servers run): `default`, a .gguf file, a Hugging Face folder, or hf:ORG/NAME.
    #[arg(long, default_value = "default")]
    model: String,
    /// Never download anything (also KVLENS_OFFLINE=1).
    #[arg(long)]
    offline: bool,
    /// Folder of the shipped task sets (default: ./datasets, or KVLENS_DATASETS).
    #[arg(long)]
    datasets: Option<PathBuf>,
    /// The run folder (default: results/<name>, or results/load).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The run id written into records (default: the run folder's name).
    #[arg(long)]
    name: Option<String>,
    /// Standard output holds only one JSON object: {"results": [...]}, one entry per target
    /// × rate.
    #[arg(long)]
    json: bool,
    /// Skip the plots.
    #[arg(long)]
    no_plots: bool,
}

/// One `[targets.NAME]` table of a suite.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetEntry {
    base_url: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default)]
    endpoint: Endpoint,
    #[serde(default)]
    timeout_s: Option<f64>,
    #[serde(default)]
    extra_body: Map<String, Value>,
}

/// A suite file for `kvlens load`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Suite {
    #[serde(default)]
    targets: toml::Table,
    #[serde(default)]
    baseline: Option<String>,
    #[serde(default)]
    tasks: Option<Vec<String>>,
    #[serde(default)]
    num_prompts: Option<usize>,
    #[serde(default)]
    rates: Option<Vec<String>>,
    #[serde(default)]
    max_concurrency: Option<usize>,
}

fn remote_of(entry: TargetEntry, timeout: f64) -> Remote {
    Remote {
        backend: "openai".into(),
        base_url: entry.base_url,
        model: entry.model.unwrap_or_default(),
        api_key_env: entry.api_key_env,
        endpoint: entry.endpoint,
        concurrency: None,
        timeout_s: entry.timeout_s.unwrap_or(timeout),
        // Under load a failed request is a failed request, as serving benchmarks count it.
        retries: 0,
        backoff_ms: 0,
        extra_body: entry.extra_body,
    }
}

/// `NAME=URL[,model=M][,api_key_env=VAR]`.
fn parse_target(s: &str, timeout: f64) -> Result<(String, Remote)> {
    let (name, rest) = s.split_once('=').with_context(|| {
        format!("--target `{s}`: expected NAME=URL[,model=M][,api_key_env=VAR]")
    })?;
    let mut parts = rest.split(',');
    let url = parts.next().unwrap_or_default().trim().to_string();
    let mut entry = TargetEntry {
        base_url: url,
        model: None,
        api_key_env: None,
        endpoint: Endpoint::Auto,
        timeout_s: None,
        extra_body: Map::new(),
    };
    for p in parts {
        match p.split_once('=') {
            Some(("model", m)) => entry.model = Some(m.trim().to_string()),
            Some(("api_key_env", v)) => entry.api_key_env = Some(v.trim().to_string()),
            _ => bail!("--target `{s}`: `{p}` is not model=NAME or api_key_env=VAR"),
        }
    }
    Ok((name.trim().to_string(), remote_of(entry, timeout)))
}

/// A prompt of the load and what its requests carry.
struct Item {
    spec: Arc<TaskSpec>,
    sample: Sample,
    prepared: Arc<(Prompt, Vec<u32>)>,
    max_new: usize,
    /// The prompt has answers to score.
    scored: bool,
}

fn prompt_spec(name: &str, chat: bool) -> TaskSpec {
    TaskSpec {
        name: name.to_string(),
        description: String::new(),
        template: "{prompt}".into(),
        max_new_tokens: 128,
        metric: kvlens_score::Metric::ExactMatch,
        chat,
        first_line: false,
        stop: Vec::new(),
        truncation: kvlens_tasks::Truncation::Middle,
    }
}

fn sample_of(id: String, prompt: &str, meta: Map<String, Value>) -> Sample {
    let mut fields = Map::new();
    fields.insert("prompt".into(), Value::from(prompt));
    Sample {
        id,
        fields,
        answers: Vec::new(),
        all_classes: Vec::new(),
        meta,
    }
}

/// Prompts without answers: ShareGPT JSON, JSONL with `prompt`, or `random`.
fn prompt_items(a: &LoadArgs, src: &str, model: &Model, n: usize) -> Result<Vec<Item>> {
    let context = model.config().context;
    let mut raw: Vec<(String, String, usize)> = Vec::new();
    let name;
    let chat;
    if src == "random" {
        name = "random".to_string();
        chat = false;
        use rand::{Rng, SeedableRng};
        let vocab = model.config().vocab as u32;
        // The prompts depend on their index only: --seed draws the arrival times.
        for i in 0..n {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed_0000 + i as u64);
            let ids: Vec<u32> = (0..a.random_input_len)
                .map(|_| rng.random_range(0..vocab))
                .collect();
            let text = model
                .tokenizer
                .decode(&ids)
                .map_err(|e| anyhow::anyhow!("decoding random tokens: {e}"))?;
            raw.push((format!("random-{i}"), text, a.random_output_len));
        }
    } else {
        let path = Path::new(src);
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        chat = true;
        let jsonl = path.extension().is_some_and(|x| x == "jsonl");
        if jsonl {
            name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "prompts".into());
            for (k, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(line).with_context(|| {
                    format!("{} line {}: not valid JSON", path.display(), k + 1)
                })?;
                let prompt = v.get("prompt").and_then(Value::as_str).with_context(|| {
                    format!(
                        "{} line {}: field `prompt` is missing or not a string",
                        path.display(),
                        k + 1
                    )
                })?;
                let out = match v.get("output_len") {
                    None => a.random_output_len,
                    Some(x) => x.as_u64().filter(|&x| x > 0).with_context(|| {
                        format!(
                            "{} line {}: field `output_len` must be a positive integer",
                            path.display(),
                            k + 1
                        )
                    })? as usize,
                };
                let id = v
                    .get("id")
                    .map(|x| x.as_str().map_or_else(|| x.to_string(), String::from))
                    .unwrap_or_else(|| (k + 1).to_string());
                raw.push((id, prompt.to_string(), out));
            }
        } else {
            // ShareGPT: the first turn is the prompt, the second's length the output length
            // (as vLLM's ShareGPT dataset); conversations of fewer than two turns are skipped.
            name = "sharegpt".into();
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON (ShareGPT)", path.display()))?;
            let list = v.as_array().with_context(|| {
                format!("{}: expected a JSON array of conversations", path.display())
            })?;
            for (k, c) in list.iter().enumerate() {
                let turns = c.get("conversations").and_then(Value::as_array);
                let Some(t) = turns.filter(|t| t.len() >= 2) else {
                    continue;
                };
                let text_of = |x: &Value| x.get("value").and_then(Value::as_str).map(String::from);
                let (Some(p), Some(answer)) = (text_of(&t[0]), text_of(&t[1])) else {
                    bail!(
                        "{}: conversation {k}: turns need a string field `value`",
                        path.display()
                    );
                };
                let out = model
                    .tokenizer
                    .encode_text(&answer)
                    .map(|v| v.len().max(1))
                    .unwrap_or(a.random_output_len);
                let id = c
                    .get("id")
                    .and_then(Value::as_str)
                    .map_or_else(|| k.to_string(), String::from);
                raw.push((id, p, out));
                if raw.len() == n {
                    break;
                }
            }
        }
    }
    if raw.is_empty() {
        bail!("{src}: no prompts");
    }
    let spec = Arc::new(prompt_spec(&name, chat));
    let mut items = Vec::new();
    for (id, text, out) in raw.into_iter().take(n) {
        let max_new = a.max_new_tokens.unwrap_or(out).max(1);
        let mut meta = Map::new();
        meta.insert("output_len".into(), Value::from(max_new));
        let sample = sample_of(id, &text, meta);
        let max_prompt = context.saturating_sub(max_new + 64);
        let prepared = prepare_prompt(model, &spec, &sample, max_prompt)
            .map_err(|e| anyhow::anyhow!("{name} prompt {}: {e}", sample.id))?;
        items.push(Item {
            spec: spec.clone(),
            sample,
            prepared: Arc::new(prepared),
            max_new,
            scored: false,
        });
    }
    Ok(items)
}

/// The prompts of kvlens tasks, dealt round-robin over the tasks and the first `n` taken.
fn task_items(a: &LoadArgs, tasks: Vec<String>, model: &Model, n: usize) -> Result<Vec<Item>> {
    let dirs = DataDirs::from_flag(a.datasets.as_deref());
    let cfg = RunConfig {
        tasks,
        ..RunConfig::default()
    }
    .with_defaults();
    let plan = kvlens_run::Plan::new(&cfg, &dirs)?;
    let sizes: Vec<usize> = plan.tasks.iter().map(|t| t.selected.len()).collect();
    let specs: Vec<Arc<TaskSpec>> = plan
        .tasks
        .iter()
        .map(|t| Arc::new(t.task.spec.clone()))
        .collect();
    let context = model.config().context;
    let mut items = Vec::new();
    for (t, i) in deal(&sizes, n) {
        let pt = &plan.tasks[t];
        let sample = pt.task.samples[pt.selected[i]].clone();
        let spec = specs[t].clone();
        let max_new = a.max_new_tokens.unwrap_or(spec.max_new_tokens).max(1);
        let max_prompt = context.saturating_sub(max_new + 64);
        let prepared = prepare_prompt(model, &spec, &sample, max_prompt)
            .map_err(|e| anyhow::anyhow!("task {} sample {}: {e}", spec.name, sample.id))?;
        items.push(Item {
            spec,
            sample,
            prepared: Arc::new(prepared),
            max_new,
            scored: true,
        });
    }
    Ok(items)
}

/// What a load folder was made with; a rerun with other settings is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LoadSettings {
    prompts: String,
    num_prompts: usize,
    burstiness: f64,
    max_concurrency: Option<usize>,
    seed: u64,
    max_new_tokens: Option<usize>,
    ignore_eos: bool,
    model: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoadFile {
    settings: LoadSettings,
    /// Target name → server (without credentials).
    targets: toml::Table,
    kvlens_version: String,
    command_line: String,
}

/// Marks a load point complete: `<point>/<target>.done.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Done {
    requests: usize,
    failed: usize,
}

fn bar(n: usize, label: &str) -> ProgressBar {
    let b = ProgressBar::with_draw_target(
        Some(n as u64),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    b.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_prefix(label.to_string());
    b.enable_steady_tick(std::time::Duration::from_millis(200));
    b
}

/// Moves the record files an interrupted point left aside (never deleting them), so the
/// point reruns whole: a point's timings only mean something together.
fn set_aside(point: &Path, target_file: &str) -> Result<usize> {
    let mut moved = 0;
    if !point.is_dir() {
        return Ok(0);
    }
    for f in kvlens_run::store::record_files(point)? {
        if f.file_name().is_some_and(|n| n == target_file) {
            let mut k = 1;
            let dest = loop {
                let d = f.with_extension(format!("jsonl.interrupted-{k}"));
                if !d.exists() {
                    break d;
                }
                k += 1;
            };
            std::fs::rename(&f, &dest).with_context(|| format!("moving {} aside", f.display()))?;
            moved += 1;
        }
    }
    Ok(moved)
}

pub fn load(a: LoadArgs) -> Result<()> {
    if !(a.timeout > 0.0 && a.timeout.is_finite()) {
        bail!(
            "--timeout {}: must be a positive number of seconds",
            a.timeout
        );
    }
    let suite: Suite = match &a.suite {
        None => Suite::default(),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
    };
    let mut targets: Vec<(String, Remote)> = Vec::new();
    for (name, v) in &suite.targets {
        let entry: TargetEntry = v.clone().try_into().map_err(|e| {
            anyhow::anyhow!(
                "{}: targets.{name}: {e}",
                a.suite.as_deref().unwrap_or(Path::new("")).display()
            )
        })?;
        targets.push((name.clone(), remote_of(entry, a.timeout)));
    }
    for t in &a.targets {
        targets.push(parse_target(t, a.timeout)?);
    }
    if targets.is_empty() {
        bail!("no target: give --target NAME=URL (e.g. full=http://127.0.0.1:8000/v1) or a --suite with [targets.NAME]");
    }
    let mut seen = HashSet::new();
    for (n, r) in &mut targets {
        if n.is_empty() || file_safe(n).trim_matches('.').is_empty() {
            bail!("--target: the name `{n}` cannot name a record file; choose another");
        }
        if !seen.insert(file_safe(n)) {
            bail!("--target: two targets are named `{n}`");
        }
        if a.ignore_eos {
            r.extra_body.insert("ignore_eos".into(), Value::Bool(true));
        }
    }
    let baseline = match a.baseline.clone().or(suite.baseline.clone()) {
        None => targets[0].0.clone(),
        Some(b) if targets.iter().any(|(n, _)| *n == b) => b,
        Some(b) => bail!(
            "--baseline {b}: no such target (there are: {})",
            targets
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let rate_strs: Vec<String> = if !a.rates.is_empty() {
        a.rates.clone()
    } else if let Some(r) = &a.request_rate {
        vec![r.clone()]
    } else {
        suite.rates.clone().unwrap_or_else(|| vec!["inf".into()])
    };
    let flag = if a.rates.is_empty() {
        "--request-rate"
    } else {
        "--rates"
    };
    let rates: Vec<Rate> = rate_strs
        .iter()
        .map(|r| Rate::parse(r).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
        .collect::<Result<_>>()?;
    let max_concurrency = a.max_concurrency.or(suite.max_concurrency);
    if max_concurrency == Some(0) {
        bail!("--max-concurrency 0: at least one request must be allowed in flight");
    }
    let n = a.num_prompts.or(suite.num_prompts).unwrap_or(100);
    if n == 0 {
        bail!("--num-prompts 0: a load point needs at least one request");
    }
    if !(a.burstiness > 0.0 && a.burstiness.is_finite()) {
        bail!(
            "--burstiness {}: must be above 0 (1 is Poisson)",
            a.burstiness
        );
    }
    let goodput = match &a.goodput {
        None => Goodput::default(),
        Some(g) => Goodput::parse(g).map_err(|e| anyhow::anyhow!(e))?,
    };
    let mut clients: Vec<Client> = targets
        .iter()
        .map(|(n, r)| r.prepare(n).map_err(|e| anyhow::anyhow!("--target {e}")))
        .collect::<Result<_>>()?;

    let mut say = |m: &str| eprintln!("kvlens: {m}");
    let model = Model::load_tokenizer(&a.model, &LoadOptions { offline: a.offline }, &mut say)
        .with_context(|| format!("loading model `{}` (its tokenizer)", a.model))?;
    let (items, prompts_label) = match &a.prompts {
        Some(p) => (prompt_items(&a, p, &model, n)?, p.clone()),
        None => {
            let tasks = match (&a.tasks, &suite.tasks) {
                (Some(t), _) => t
                    .split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect(),
                (None, Some(t)) => t.clone(),
                (None, None) => RunConfig::default().with_defaults().tasks,
            };
            let label = tasks.join(",");
            (task_items(&a, tasks, &model, n)?, label)
        }
    };
    if items.len() < n {
        eprintln!(
            "kvlens: --num-prompts {n}, but the prompts hold {}; each point sends {}",
            items.len(),
            items.len()
        );
    }
    let n = items.len();

    // Models: what /v1/models lists first, for targets that named none.
    for c in &mut clients {
        if c.remote.model.is_empty() {
            match c.first_model() {
                Ok(m) => c.remote.model = m,
                Err(e) => eprintln!(
                    "kvlens: {e}; its requests name no model (and will fail if it stays down)"
                ),
            }
        }
    }

    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from("results").join(a.name.clone().unwrap_or_else(|| "load".into()))
    });
    let run_id = a.name.clone().unwrap_or_else(|| {
        out.file_name()
            .map_or_else(|| "load".into(), |s| s.to_string_lossy().into_owned())
    });
    let _lock = lock_folder(&out)?;
    let settings = LoadSettings {
        prompts: prompts_label,
        num_prompts: n,
        burstiness: a.burstiness,
        max_concurrency,
        seed: a.seed,
        max_new_tokens: a.max_new_tokens,
        ignore_eos: a.ignore_eos,
        model: model.name.clone(),
    };
    let load_file = out.join("load.toml");
    if load_file.exists() {
        let text = std::fs::read_to_string(&load_file)?;
        let old: LoadFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", load_file.display()))?;
        if old.settings != settings {
            bail!(
                "{} was made with other settings ({:?}); its load points would not compare with \
                 these; choose another --out",
                out.display(),
                old.settings
            );
        }
    }
    let mut servers = toml::Table::new();
    for (c, (name, _)) in clients.iter().zip(&targets) {
        servers.insert(name.clone(), toml::Value::from(c.remote.server_label()));
    }
    let file = LoadFile {
        settings,
        targets: servers,
        kvlens_version: env!("CARGO_PKG_VERSION").into(),
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
    };
    kvlens_run::store::write_text_atomic(
        &load_file,
        &toml::to_string(&file).context("writing load.toml")?,
    )?;

    if !a.json {
        eprintln!(
            "kvlens: {} target(s) × {} rate(s), {n} requests each → {}",
            targets.len(),
            rates.len(),
            out.display()
        );
    }
    for &rate in &rates {
        let point = out.join(rate.folder());
        let times = schedule(n, rate, a.burstiness, a.seed).map_err(|e| anyhow::anyhow!(e))?;
        for (c, (name, _)) in clients.iter().zip(&targets) {
            let done_path = point.join(format!("{}.done.json", file_safe(name)));
            if done_path.exists() {
                if !a.json {
                    eprintln!("kvlens: {name} at rate {rate}: complete already, skipped");
                }
                continue;
            }
            let moved = set_aside(&point, &format!("{}.jsonl", file_safe(name)))?;
            if moved > 0 {
                eprintln!(
                    "kvlens: {name} at rate {rate}: an interrupted point's {moved} record file(s) \
                     moved aside (*.jsonl.interrupted-N); the point runs again whole"
                );
            }
            let job_of = |it: &Item| Job {
                request: remote::Request {
                    prompt: it.prepared.0.text.clone(),
                    chat: it.prepared.0.chat,
                    max_tokens: it.max_new,
                    temperature: 0.0,
                    top_p: 1.0,
                    top_k: 0,
                    seed: sample_seed(0, &it.spec.name, &it.sample.id),
                    stop: it.spec.stop.clone(),
                },
                rendered: render_chat(&model, &it.prepared.0, c.remote.endpoint),
            };
            if a.warmup > 0 {
                let w: Vec<Job> = items.iter().cycle().take(a.warmup).map(job_of).collect();
                let progress = Progress::default();
                run_point(
                    c,
                    w,
                    &vec![0.0; a.warmup],
                    max_concurrency,
                    &progress,
                    &mut |_| Ok(()),
                )
                .map_err(|e| anyhow::anyhow!(e))?;
            }
            let jobs: Vec<Job> = items.iter().map(job_of).collect();
            let progress = Progress::default();
            let pb = bar(n, &format!("{name} @ {rate}/s"));
            let mut files: HashMap<String, RecordFile> = HashMap::new();
            let mut failed = 0;
            let info_base = LoadInfo {
                point: rate.folder(),
                request_rate: rate.to_json(),
                burstiness: a.burstiness,
                max_concurrency,
                index: 0,
                scheduled_ms: 0.0,
                sent_ms: 0.0,
                late_ms: 0.0,
                slot_wait_ms: 0.0,
                done_ms: 0.0,
                itl_ms: Vec::new(),
                client_ms: 0.0,
            };
            let mut sink = |s: Sent| -> std::result::Result<(), String> {
                let it = &items[s.index];
                let t = std::time::Instant::now();
                let mut r = blank_record(
                    &run_id,
                    &c.remote.model,
                    &it.spec,
                    &it.sample,
                    name,
                    it.max_new,
                    1,
                );
                let (itl, client_ms) = match &s.reply {
                    Ok(rep) => (rep.gaps_ms.clone(), rep.client_ms),
                    Err(_) => (Vec::new(), 0.0),
                };
                fill_remote(&mut r, &it.prepared, s.reply, c, &model);
                if !it.scored {
                    r.metric = None;
                }
                r.rescore(None, None);
                if r.error.is_some() {
                    failed += 1;
                }
                let mut info = info_base.clone();
                info.index = s.index;
                info.scheduled_ms = s.scheduled_ms;
                info.sent_ms = s.sent_ms;
                info.late_ms = s.late_ms;
                info.slot_wait_ms = s.slot_wait_ms;
                info.done_ms = s.done_ms;
                info.itl_ms = itl;
                info.client_ms = client_ms + t.elapsed().as_secs_f64() * 1e3;
                r.load = Some(info);
                let f = match files.entry(r.task.clone()) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let path = point
                            .join(file_safe(&r.task))
                            .join(format!("{}.jsonl", file_safe(name)));
                        e.insert(
                            RecordFile::open(&path, &HashSet::new()).map_err(|e| e.to_string())?,
                        )
                    }
                };
                f.append(&r).map_err(|e| e.to_string())?;
                pb.inc(1);
                pb.set_message(format!(
                    "{} in flight, {} failed",
                    progress.in_flight.load(Ordering::SeqCst),
                    progress.failed.load(Ordering::SeqCst)
                ));
                Ok(())
            };
            run_point(c, jobs, &times, max_concurrency, &progress, &mut sink)
                .map_err(|e| anyhow::anyhow!("{name} at rate {rate}: {e}"))?;
            pb.finish_and_clear();
            let done = Done {
                requests: n,
                failed,
            };
            kvlens_run::store::write_text_atomic(
                &done_path,
                &serde_json::to_string_pretty(&done)?,
            )?;
            if !a.json {
                eprintln!("kvlens: {name} at rate {rate}: {n} requests, {failed} failed");
            }
        }
    }

    // Summaries, from the records on disk (so a resumed run reports every point).
    let mut results: Vec<PointSummary> = Vec::new();
    let mut plot_points = Vec::new();
    for &rate in &rates {
        let point = out.join(rate.folder());
        let mut by_target: HashMap<String, Vec<Record>> = HashMap::new();
        for f in kvlens_run::store::record_files(&point)? {
            let (records, _) = kvlens_run::store::read_file(&f)?;
            for r in records {
                by_target.entry(r.method.clone()).or_default().push(r);
            }
        }
        let base = by_target.get(&baseline).cloned();
        for (name, _) in &targets {
            let mine = by_target.get(name).cloned().unwrap_or_default();
            let against = (name != &baseline).then_some(base.as_deref()).flatten();
            let s = summarize(name, &mine, against, &goodput, 1000, a.seed);
            plot_points.push(LoadPoint {
                target: name.clone(),
                rate: rate.to_string(),
                throughput: s.request_throughput,
                p50_e2el_ms: s.median_e2el_ms,
                p99_e2el_ms: s.p99_e2el_ms,
                ttft_ms: mine
                    .iter()
                    .filter(|r| r.error.is_none())
                    .map(|r| r.ttft_ms)
                    .collect(),
            });
            results.push(s);
        }
    }
    let json = serde_json::json!({ "baseline": baseline, "results": results });
    kvlens_run::store::write_text_atomic(
        &out.join("summary.json"),
        &serde_json::to_string_pretty(&json)?,
    )?;
    let mut notes = Vec::new();
    if !a.no_plots {
        match draw_load_all(&plot_points, &out.join("plots")) {
            Ok(files) => notes.push(format!(
                "plots: {} files in {}",
                files.len(),
                out.join("plots").display()
            )),
            Err(e) => notes.push(format!("no plots: {e}")),
        }
    }
    for s in &results {
        if s.late_ms_p99 > LATE_MS {
            notes.push(format!(
                "warning: at rate {} the client itself fell behind its schedule for {} (p99 {:.1} ms \
                 late, at most {:.1} ms): the arrivals were not those asked for; use fewer \
                 requests in flight or a less busy machine",
                rate_label(&s.request_rate),
                s.target,
                s.late_ms_p99,
                s.late_ms_max
            ));
        }
        for (e, k) in &s.errors {
            notes.push(format!(
                "{} at rate {}: {k} request(s) failed: {e}",
                s.target,
                rate_label(&s.request_rate)
            ));
        }
    }
    if a.json {
        println!("{}", serde_json::to_string(&json)?);
    } else {
        println!("{}", table(&results, &baseline, &goodput));
    }
    for n in notes {
        eprintln!("kvlens: {n}");
    }
    Ok(())
}

/// A rate as people write it: `4`, `0.5`, `inf`.
fn rate_label(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), |x| format!("{x}")),
        other => other.to_string(),
    }
}

fn f(x: Option<f64>, d: usize) -> String {
    x.map_or_else(|| "–".into(), |v| format!("{v:.d$}"))
}

/// The Markdown table: one row per target × rate.
fn table(results: &[PointSummary], baseline: &str, goodput: &Goodput) -> String {
    let mut s = String::from(
        "| target | rate | done / failed | req/s | out tok/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | ITL p50 ms | e2e p50 / p99 ms | max in flight | score | Δscore (95% CI) |",
    );
    if goodput.is_set() {
        s.push_str(" goodput req/s | good & right |");
    }
    s.push('\n');
    let cols = if goodput.is_set() { 14 } else { 12 };
    s.push_str(&"|---".repeat(cols));
    s.push_str("|\n");
    for r in results {
        let rate = rate_label(&r.request_rate);
        let delta = if r.target == baseline {
            "baseline".to_string()
        } else {
            match (r.delta_score, r.delta_score_ci_low, r.delta_score_ci_high) {
                (Some(d), Some(lo), Some(hi)) => format!("{d:+.2} [{lo:+.2}, {hi:+.2}]"),
                (Some(d), _, _) => format!("{d:+.2}"),
                _ => "–".into(),
            }
        };
        s.push_str(&format!(
            "| {} | {rate} | {} / {} | {:.2} | {:.1} | {:.0} / {:.0} | {:.1} / {:.1} | {:.1} | {:.0} / {:.0} | {} | {} | {delta} |",
            r.target,
            r.completed,
            r.failed,
            r.request_throughput,
            r.output_throughput,
            r.median_ttft_ms,
            r.p99_ttft_ms,
            r.median_tpot_ms,
            r.p99_tpot_ms,
            r.median_itl_ms,
            r.median_e2el_ms,
            r.p99_e2el_ms,
            r.max_concurrent_requests,
            f(r.score, 2),
        ));
        if goodput.is_set() {
            s.push_str(&format!(
                " {} | {} |",
                f(r.request_goodput, 2),
                f(r.good_and_right.map(|x| 100.0 * x), 1).to_string() + "%"
            ));
        }
        s.push('\n');
    }
    s
}
