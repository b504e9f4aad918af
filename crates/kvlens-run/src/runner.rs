//! The run loop: every selected sample of every task under every method, one flushed record
//! each, skipping what the run folder already holds.

use crate::config::RunConfig;
use crate::error::{Result, RunError};
use crate::record::{Key, Record, Served};
use crate::remote::{self, Client, Remote};
use crate::store::RecordFile;
use kvlens_engine::generate::MIN_LAST_CHUNK;
use kvlens_engine::sched::{
    CacheSource, Event, Finished, Limits, Request as SchedRequest, Scheduler,
};
use kvlens_engine::{
    decode, generate, prefill, EngineError, FinishReason, GenOptions, Generation, Model, Prefilled,
    Sampling,
};
use kvlens_press::{KvCache, KvDtype, Needs, Spec};
use kvlens_tasks::{DataDirs, Prompt, Task, Tokenize};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a run will do, before any model is loaded.
pub struct Plan {
    pub tasks: Vec<PlannedTask>,
    /// Methods run by kvlens's engine.
    pub methods: Vec<Spec>,
    /// Methods sent to servers, by name.
    pub remote: Vec<(String, Remote)>,
}

pub struct PlannedTask {
    pub task: Task,
    /// Indices into `task.samples` this worker runs.
    pub selected: Vec<usize>,
}

impl Plan {
    /// Loads the tasks, selects samples (`samples`, then `limit`, then `shard`) and parses the
    /// methods, with `full` first.
    pub fn new(cfg: &RunConfig, dirs: &DataDirs) -> Result<Self> {
        let mut methods = Vec::new();
        for m in &cfg.methods.local {
            let list = kvlens_press::parse_list(m)
                .map_err(|e| RunError::Invalid(format!("method `{m}`: {e}")))?;
            methods.extend(list);
        }
        let remote = cfg.methods.remote.clone();
        let named_full = remote.iter().any(|(n, _)| n == "full");
        // A run whose methods are all served elsewhere gets no local baseline: the servers
        // may run a model this machine cannot.
        if !methods.iter().any(|s| s.canonical() == "full")
            && !named_full
            && (remote.is_empty() || !methods.is_empty())
        {
            methods.insert(
                0,
                Spec::parse("full").map_err(|e| RunError::Invalid(e.to_string()))?,
            );
        }
        let mut seen = std::collections::HashSet::new();
        methods.retain(|s| seen.insert(s.canonical()));
        let mut labels = std::collections::HashMap::new();
        let names = methods
            .iter()
            .map(|s| (s.label(), s.canonical()))
            .chain(remote.iter().map(|(n, _)| (file_safe(n), n.clone())));
        for (label, name) in names {
            if let Some(other) = labels.insert(label.clone(), name.clone()) {
                return Err(RunError::Invalid(format!(
                    "methods `{other}` and `{name}` would share the record file {label}.jsonl"
                )));
            }
        }
        for (name, r) in &remote {
            if name.is_empty() || file_safe(name).trim_matches('.').is_empty() {
                return Err(RunError::Invalid(format!(
                    "method name `{name}` cannot name a record file; choose another"
                )));
            }
            r.prepare(name).map_err(RunError::Invalid)?;
        }
        let shard = cfg.shard()?;
        let mut tasks: Vec<PlannedTask> = Vec::new();
        let mut wanted: std::collections::HashSet<&str> =
            cfg.samples.iter().map(String::as_str).collect();
        let mut folders = std::collections::HashMap::new();
        // A folder of task specs (an exported negative-sample benchmark, say) is every
        // `.toml` in it, in name order.
        let mut args: Vec<String> = Vec::new();
        for t in &cfg.tasks {
            let p = Path::new(t.trim());
            if p.is_dir() {
                let mut specs: Vec<String> = std::fs::read_dir(p)
                    .map_err(|e| RunError::io(p, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                    .map(|f| f.display().to_string())
                    .collect();
                specs.sort();
                if specs.is_empty() {
                    return Err(RunError::Invalid(format!(
                        "--tasks {t}: the folder holds no task spec (.toml)"
                    )));
                }
                args.extend(specs);
            } else {
                args.push(t.clone());
            }
        }
        for t in &args {
            let task = kvlens_tasks::registry::load(t, dirs)?;
            let name = &task.spec.name;
            let folder = file_safe(name);
            if folder.trim_matches('.').is_empty() {
                return Err(RunError::Invalid(format!(
                    "task name `{name}` cannot name a folder; choose another `name`"
                )));
            }
            if let Some(other) = folders.insert(folder.clone(), t.clone()) {
                return Err(RunError::Invalid(format!(
                    "tasks `{other}` and `{t}` would both write {folder}/; each task may appear \
                     once (rename a custom task with `name`)"
                )));
            }
            let mut selected: Vec<usize> = (0..task.samples.len())
                .filter(|&i| cfg.samples.is_empty() || cfg.samples.contains(&task.samples[i].id))
                .collect();
            for &i in &selected {
                wanted.remove(task.samples[i].id.as_str());
            }
            if let Some(n) = cfg.limit {
                selected.truncate(n);
            }
            tasks.push(PlannedTask { task, selected });
        }
        // Shards deal the (task, sample) pairs round-robin over the whole run, so that every
        // worker gets a share even when tasks have fewer samples than there are workers.
        if let Some((i, n)) = shard {
            let mut k = 0;
            for pt in &mut tasks {
                pt.selected.retain(|_| {
                    let mine = k % n == i;
                    k += 1;
                    mine
                });
            }
        }
        if !wanted.is_empty() {
            let mut w: Vec<&str> = wanted.into_iter().collect();
            w.sort();
            return Err(RunError::Invalid(format!(
                "--samples: no task has the sample id(s) {}",
                w.join(", ")
            )));
        }
        Ok(Self {
            tasks,
            methods,
            remote,
        })
    }

    /// Methods of both kinds.
    pub fn method_count(&self) -> usize {
        self.methods.len() + self.remote.len()
    }

    pub fn total(&self) -> usize {
        self.tasks.iter().map(|t| t.selected.len()).sum::<usize>() * self.method_count()
    }

    /// The methods' names as records give them, local first.
    pub fn method_names(&self) -> Vec<String> {
        self.methods
            .iter()
            .map(Spec::canonical)
            .chain(self.remote.iter().map(|(n, _)| n.clone()))
            .collect()
    }

    /// The record file of method `j` (local first, then remote).
    fn label(&self, j: usize) -> String {
        match j.checked_sub(self.methods.len()) {
            None => self.methods[j].label(),
            Some(r) => file_safe(&self.remote[r].0),
        }
    }
}

/// Progress events, drawn by the CLI.
pub trait Observer {
    fn start(&mut self, _total: usize, _todo: usize) {}
    /// A task begins, with `todo` records to write.
    fn task(&mut self, _task: &str, _todo: usize) {}
    fn record(&mut self, _r: &Record) {}
    fn end_task(&mut self) {}
}

/// Nothing to show.
pub struct Quiet;
impl Observer for Quiet {}

/// What one invocation did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Outcome {
    pub written: usize,
    pub skipped: usize,
    pub failed: usize,
    /// Time inside the engine's generate calls.
    pub engine_ms: f64,
    /// Time of the whole loop (prompts, files, scoring included).
    pub loop_ms: f64,
}

impl Outcome {
    /// The runner's own share of the loop time, in percent of the engine's time.
    pub fn overhead_percent(&self) -> f64 {
        if self.engine_ms <= 0.0 {
            return 0.0;
        }
        100.0 * (self.loop_ms - self.engine_ms) / self.engine_ms
    }
}

/// The model's tokenizer as task truncation sees it.
pub struct Tok<'a>(pub &'a Model);

impl Tokenize for Tok<'_> {
    fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
        self.0
            .tokenizer
            .encode_text(text)
            .map_err(|e| e.to_string())
    }
    fn decode(&self, ids: &[u32]) -> std::result::Result<String, String> {
        self.0.tokenizer.decode(ids).map_err(|e| e.to_string())
    }
}

/// SHA-256 of a file or of every file in a folder (names and contents, sorted by name).
pub fn hash_model_files(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .map_err(|e| RunError::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    for f in files {
        let mut file = std::fs::File::open(&f).map_err(|e| RunError::io(&f, e))?;
        if path.is_dir() {
            h.update(
                f.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or_default(),
            );
        }
        std::io::copy(&mut file, &mut h).map_err(|e| RunError::io(&f, e))?;
    }
    Ok(hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn prompt_hash(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))[..16].to_string()
}

/// The provenance written next to the records as `run.toml`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RunFile {
    pub config: RunConfig,
    pub provenance: Provenance,
    /// How much the baseline's timing varied while the run went (written when it ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<RunNoise>,
}

/// The noise floor of a run's timings as `run.toml` keeps it (see `kvlens analyze`'s
/// `noise`): the median relative difference of the baseline's per-token time between samples
/// of like prompt length.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RunNoise {
    pub relative_spread: f64,
    pub pairs: usize,
    pub how: String,
}

/// Adds the run's noise floor to its `run.toml` (atomically; the rest unchanged).
pub fn record_noise(out: &Path, noise: RunNoise) -> Result<()> {
    let path = out.join("run.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| RunError::io(&path, e))?;
    let mut file: RunFile = toml::from_str(&text).map_err(|e| RunError::Config {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    file.noise = Some(noise);
    let text = toml::to_string_pretty(&file).map_err(|e| RunError::Invalid(e.to_string()))?;
    crate::store::write_text_atomic(&path, &text)
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Provenance {
    pub kvlens_version: String,
    pub model_file: String,
    pub model_sha256: String,
    pub command_line: String,
    /// Worker threads of the engine (outputs do not depend on it; times do).
    #[serde(default)]
    pub threads: usize,
    /// The formats of the model's matrices (`q4_1+q8_0`).
    #[serde(default)]
    pub weights: String,
    /// Which matrices ran on candle's kernels rather than kvlens's own (llama.cpp's bits).
    #[serde(default)]
    pub weight_kernels: String,
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Writes `run.toml` (the config of this invocation with its provenance), atomically. A run
/// folder made with other model weights or other generation settings is refused: its records
/// would not be comparable with the new ones.
pub fn write_run_file(out: &Path, cfg: &RunConfig, prov: &Provenance) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| RunError::io(out, e))?;
    let path = out.join("run.toml");
    if path.exists() {
        let text = std::fs::read_to_string(&path).map_err(|e| RunError::io(&path, e))?;
        let old: RunFile = toml::from_str(&text).map_err(|e| RunError::Config {
            path: path.clone(),
            msg: format!(
                "{e}\nthis file records how the folder's records were made; fix it, or choose \
                 another --out"
            ),
        })?;
        if old.provenance.model_sha256 != prov.model_sha256 {
            return Err(RunError::Invalid(format!(
                "{} holds records of model {} (sha256 {}), not of {} (sha256 {}); choose \
                 another --out",
                out.display(),
                old.provenance.model_file,
                short(&old.provenance.model_sha256),
                prov.model_file,
                short(&prov.model_sha256)
            )));
        }
        let was = old.config.output_settings();
        let now = cfg.output_settings();
        let diff: Vec<String> = was
            .iter()
            .zip(&now)
            .filter(|(a, b)| a != b)
            .map(|((k, a), (_, b))| format!("{k} = {a} there, {b} now"))
            .collect();
        if !diff.is_empty() {
            return Err(RunError::Invalid(format!(
                "{} holds records made with other settings ({}); resuming would mix them; \
                 choose another --out",
                out.display(),
                diff.join(", ")
            )));
        }
    }
    let file = RunFile {
        config: cfg.clone(),
        provenance: prov.clone(),
        noise: None,
    };
    let text = toml::to_string_pretty(&file).map_err(|e| RunError::Invalid(e.to_string()))?;
    let tmp = out.join(".run.toml.tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| RunError::io(&path, e))
}

/// Holds a run folder for one process: `kvlens run`, `score` and `merge` take it, so that one
/// never rewrites a file another is appending to. Released when dropped.
pub struct FolderLock(#[allow(dead_code)] std::fs::File);

pub fn lock_folder(dir: &Path) -> Result<FolderLock> {
    std::fs::create_dir_all(dir).map_err(|e| RunError::io(dir, e))?;
    let path = dir.join(".kvlens.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| RunError::io(&path, e))?;
    match f.try_lock() {
        Ok(()) => Ok(FolderLock(f)),
        Err(std::fs::TryLockError::WouldBlock) => Err(RunError::Invalid(format!(
            "another kvlens process is using {}; wait for it to finish",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(RunError::io(&path, e)),
    }
}

pub fn sample_seed(seed: u64, task: &str, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in task.bytes().chain([0]).chain(id.bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Whether `spec` can be forked from the baseline's prefill: it acts only after the prompt,
/// needs no summed attention, and its window fits in the last chunk every method gets.
fn shareable(spec: &Spec) -> bool {
    let m = spec.build();
    let n = m.needs();
    m.acts_after_prefill_only() && !n.accumulate && n.window <= MIN_LAST_CHUNK
}

/// Runs `plan` with `model`, writing records under `out`. Task by task: the methods served
/// elsewhere first, their requests in flight together (`concurrency` per server); then,
/// sample by sample, the local ones: the baseline and every method that compresses only
/// after the prompt share one prefill (each forks the cache and pays its own compression);
/// the others run on their own.
pub fn execute(
    plan: &Plan,
    cfg: &RunConfig,
    model: &Model,
    out: &Path,
    obs: &mut dyn Observer,
) -> Result<Outcome> {
    let dtype = KvDtype::parse(&cfg.kv_dtype).ok_or_else(|| {
        RunError::Invalid(format!("kv_dtype `{}`: expected f16 or f32", cfg.kv_dtype))
    })?;
    let run_id = cfg.run_id();
    let context = model.config().context;
    if !plan.methods.is_empty() && !model.has_weights() {
        return Err(RunError::Invalid(format!(
            "{} was loaded without its weights; the local methods need them",
            model.name
        )));
    }
    let local_chat = plan
        .remote
        .iter()
        .any(|(_, r)| r.endpoint == remote::Endpoint::Completions)
        || !plan.methods.is_empty();
    if model.template.is_none() && local_chat {
        let chat: Vec<&str> = plan
            .tasks
            .iter()
            .filter(|t| t.task.spec.chat)
            .map(|t| t.task.spec.name.as_str())
            .collect();
        if !chat.is_empty() {
            return Err(RunError::Invalid(format!(
                "{} has no chat template, and these tasks wrap prompts in one: {}; use a chat \
                 model, or a task spec .toml with `chat = false`",
                model.name,
                chat.join(", ")
            )));
        }
    }
    let clients: Vec<Client> = plan
        .remote
        .iter()
        .map(|(n, r)| r.prepare(n).map_err(RunError::Invalid))
        .collect::<Result<_>>()?;
    let mut outcome = Outcome::default();
    let loop_start = Instant::now();
    let names = plan.method_names();
    let n_local = plan.methods.len();
    let full = plan.methods.iter().position(|s| s.canonical() == "full");
    let share: Vec<bool> = plan
        .methods
        .iter()
        .enumerate()
        .map(|(j, s)| cfg.share_prefill && Some(j) != full && full.is_some() && shareable(s))
        .collect();
    if cfg.batch == 0 {
        return Err(RunError::Invalid(
            "--batch (batch) must be at least 1".into(),
        ));
    }
    let limits = Limits {
        kv_budget: match &cfg.kv_budget {
            None => kvlens_engine::sched::default_kv_budget(),
            Some(b) => b
                .parse::<bytesize::ByteSize>()
                .map_err(|e| RunError::Invalid(format!("kv_budget `{b}`: {e} (e.g. 512MiB)")))?
                .as_u64() as usize,
        },
        max_batch: cfg.batch.max(1),
        prefill_chunk: 512,
    };
    let mut caches: Vec<KvCache> = plan
        .methods
        .iter()
        .map(|s| model.new_cache(s, dtype))
        .collect();

    // Open every record file first: the totals, and torn lines repaired before any work.
    let mut files = Vec::new();
    let mut todo_total = 0;
    let mut todo_per_task = Vec::new();
    for pt in &plan.tasks {
        let mut row = Vec::new();
        let mut todo_task = 0;
        for (j, name) in names.iter().enumerate() {
            let path = out
                .join(file_safe(&pt.task.spec.name))
                .join(format!("{}.jsonl", plan.label(j)));
            let retry: HashSet<Key> = if cfg.retry_errors {
                pt.selected.iter().map(|&i| key(pt, i, name)).collect()
            } else {
                HashSet::new()
            };
            let f = RecordFile::open(&path, &retry)?;
            todo_task += pt
                .selected
                .iter()
                .filter(|&&i| !f.is_done(&key(pt, i, name)))
                .count();
            row.push(f);
        }
        todo_total += todo_task;
        todo_per_task.push(todo_task);
        files.push(row);
    }
    obs.start(plan.total(), todo_total);
    outcome.skipped = plan.total() - todo_total;

    for ((pt, row), &todo) in plan.tasks.iter().zip(files.iter_mut()).zip(&todo_per_task) {
        if todo == 0 {
            continue;
        }
        let spec_t = &pt.task.spec;
        let max_new = cfg.max_new_tokens.unwrap_or(spec_t.max_new_tokens).max(1);
        let max_prompt = cfg
            .max_prompt_tokens
            .unwrap_or_else(|| context.saturating_sub(max_new + 64));
        obs.task(&spec_t.name, todo);
        let blank = |i: usize, j: usize| {
            let model_name = match j.checked_sub(n_local) {
                None => model.name.as_str(),
                Some(r) => plan.remote[r].1.model.as_str(),
            };
            blank_record(
                &run_id,
                model_name,
                spec_t,
                &pt.task.samples[i],
                &names[j],
                max_new,
                cfg.batch.max(1),
            )
        };
        let finish = |row: &mut Vec<RecordFile>,
                      obs: &mut dyn Observer,
                      j: usize,
                      mut r: Record,
                      outcome: &mut Outcome|
         -> Result<()> {
            r.rescore(None, cfg.pass_threshold);
            row[j].append(&r)?;
            if r.error.is_some() {
                outcome.failed += 1;
            }
            outcome.written += 1;
            obs.record(&r);
            Ok(())
        };
        let prepare = |i: usize| prepare_prompt(model, spec_t, &pt.task.samples[i], max_prompt);
        let seed_of = |i: usize| sample_seed(cfg.seed, &spec_t.name, &pt.task.samples[i].id);

        // Methods served elsewhere: every pending request of this task, in flight together.
        if !plan.remote.is_empty() {
            let mut jobs = Vec::new();
            for &i in &pt.selected {
                let pending: Vec<usize> = (n_local..names.len())
                    .filter(|&j| !row[j].is_done(&key(pt, i, &names[j])))
                    .collect();
                if pending.is_empty() {
                    continue;
                }
                match prepare(i) {
                    Err(e) => {
                        for j in pending {
                            let mut r = blank(i, j);
                            r.error = Some(format!("preparing the prompt: {e}"));
                            finish(row, obs, j, r, &mut outcome)?;
                        }
                    }
                    Ok((p, ids)) => {
                        let p = std::sync::Arc::new((p, ids));
                        for j in pending {
                            jobs.push((i, j, p.clone()));
                        }
                    }
                }
            }
            let requests: Vec<RemoteJob> = jobs
                .into_iter()
                .map(|(i, j, p)| {
                    let c = &clients[j - n_local];
                    let rendered = render_chat(model, &p.0, c.remote.endpoint);
                    RemoteJob {
                        i,
                        j,
                        request: remote::Request {
                            prompt: p.0.text.clone(),
                            chat: p.0.chat,
                            max_tokens: max_new,
                            temperature: cfg.temperature,
                            top_p: cfg.top_p,
                            top_k: cfg.top_k,
                            seed: seed_of(i),
                            stop: spec_t.stop.clone(),
                        },
                        rendered,
                        prepared: p,
                    }
                })
                .collect();
            let t = Instant::now();
            let mut sink =
                |job: RemoteJob, reply: std::result::Result<remote::Reply, String>| -> Result<()> {
                    let mut r = blank(job.i, job.j);
                    let c = &clients[job.j - n_local];
                    fill_remote(&mut r, &job.prepared, reply, c, model);
                    finish(row, obs, job.j, r, &mut outcome)
                };
            send_all(requests, &clients, n_local, cfg.concurrency, &mut sink)?;
            outcome.engine_ms += t.elapsed().as_secs_f64() * 1e3;
        }

        // With --batch N: N samples at a time, all their local requests through the
        // scheduler together (the shared prefills first, each method's decoding then batched).
        let opts_of = |i: usize| GenOptions {
            max_new_tokens: max_new,
            sampling: Sampling {
                temperature: cfg.temperature,
                top_k: cfg.top_k,
                top_p: cfg.top_p,
                seed: seed_of(i),
            },
            stop: spec_t.stop.clone(),
            ..GenOptions::default()
        };
        let groups: Vec<&[usize]> = if cfg.batch > 1 && n_local > 0 {
            pt.selected.chunks(cfg.batch).collect()
        } else {
            Vec::new()
        };
        for group in groups {
            let mut jobs: Vec<LocalJob> = Vec::new();
            let mut prompts = std::collections::HashMap::new();
            for &i in group {
                let pending: Vec<usize> = (0..n_local)
                    .filter(|&j| !row[j].is_done(&key(pt, i, &names[j])))
                    .collect();
                if pending.is_empty() {
                    continue;
                }
                let (p, ids) = match prepare(i) {
                    Ok(x) => x,
                    Err(e) => {
                        for &j in &pending {
                            let mut r = blank(i, j);
                            r.error = Some(format!("preparing the prompt: {e}"));
                            finish(row, obs, j, r, &mut outcome)?;
                        }
                        continue;
                    }
                };
                let opts = opts_of(i);
                let forks: Vec<usize> = pending.iter().copied().filter(|&j| share[j]).collect();
                if let (Some(full), false) = (full, forks.is_empty()) {
                    let needs = forks
                        .iter()
                        .map(|&j| caches[j].needs())
                        .fold(Needs::default(), Needs::union);
                    let mut base = model.new_cache(&plan.methods[full], dtype);
                    base.record(needs);
                    match engine(&mut outcome, || prefill(model, &mut base, &ids, &opts)) {
                        Err(e) => {
                            let with_full = pending.contains(&full).then_some(full);
                            for j in forks.iter().copied().chain(with_full) {
                                let mut r = blank(i, j);
                                r.prefill_shared = true;
                                fill_local(
                                    &mut r,
                                    &p,
                                    &ids,
                                    Err(EngineError::Invalid(e.to_string())),
                                );
                                finish(row, obs, j, r, &mut outcome)?;
                            }
                        }
                        Ok(pre) => {
                            for &j in &forks {
                                match base.fork(plan.methods[j].build(), max_new) {
                                    Some(forked) => {
                                        let own = Prefilled {
                                            logits: pre.logits.clone(),
                                            prefill_ms: pre.prefill_ms + forked.compress_ms,
                                        };
                                        jobs.push(LocalJob {
                                            i,
                                            j,
                                            shared: true,
                                            cache: Some((forked.cache, own)),
                                        });
                                    }
                                    None => {
                                        let mut r = blank(i, j);
                                        r.prefill_shared = true;
                                        r.error = Some(format!(
                                            "generating: {} cannot be forked from the shared prefill",
                                            plan.methods[j].canonical()
                                        ));
                                        finish(row, obs, j, r, &mut outcome)?;
                                    }
                                }
                            }
                            if pending.contains(&full) {
                                base.record(Needs::default());
                                jobs.push(LocalJob {
                                    i,
                                    j: full,
                                    shared: true,
                                    cache: Some((base, pre)),
                                });
                            }
                        }
                    }
                }
                for &j in pending.iter().filter(|&&j| !share[j]) {
                    if Some(j) == full && !forks.is_empty() {
                        continue;
                    }
                    jobs.push(LocalJob {
                        i,
                        j,
                        shared: false,
                        cache: None,
                    });
                }
                prompts.insert(i, (p, ids));
            }
            // The lent caches live here, outside the scheduler that borrows them.
            let mut lent: Vec<(KvCache, Prefilled)> = Vec::new();
            let mut sources = Vec::with_capacity(jobs.len());
            for job in &mut jobs {
                sources.push(job.cache.is_some());
                if let Some(c) = job.cache.take() {
                    lent.push(c);
                }
            }
            let mut done: Vec<(u64, std::result::Result<Box<Finished>, EngineError>)> = Vec::new();
            let ran = engine(&mut outcome, || {
                let mut sched = Scheduler::new(model, limits)?;
                let mut lent_iter = lent.iter_mut();
                for (id, (job, &has)) in jobs.iter().zip(&sources).enumerate() {
                    let cache = if has {
                        let (c, pre) = lent_iter
                            .next()
                            .expect("one lent cache per job that has one");
                        CacheSource::Lent(c, Some(pre.clone()))
                    } else {
                        CacheSource::New(plan.methods[job.j].clone(), dtype)
                    };
                    sched.submit(SchedRequest {
                        id: id as u64,
                        prompt: prompts[&job.i].1.clone(),
                        cache,
                        opts: opts_of(job.i),
                    });
                }
                sched.run(&mut |e| {
                    if let Event::Done { id, result } = e {
                        done.push((id, result));
                    }
                });
                Ok(())
            });
            if let Err(e) = ran {
                for id in 0..jobs.len() as u64 {
                    if !done.iter().any(|d| d.0 == id) {
                        done.push((id, Err(EngineError::Invalid(e.to_string()))));
                    }
                }
            }
            for (id, result) in done {
                let job = &jobs[id as usize];
                let (p, ids) = &prompts[&job.i];
                let mut r = blank(job.i, job.j);
                r.prefill_shared = job.shared;
                let g = result.map(|f| {
                    r.queue_ms = f.queue_ms;
                    r.preemptions = f.preemptions;
                    f.generation
                });
                fill_local(&mut r, p, ids, g);
                finish(row, obs, job.j, r, &mut outcome)?;
            }
        }

        for &i in &pt.selected {
            if cfg.batch > 1 {
                break;
            }
            let pending: Vec<usize> = (0..n_local)
                .filter(|&j| !row[j].is_done(&key(pt, i, &names[j])))
                .collect();
            if pending.is_empty() {
                continue;
            }
            let (p, ids) = match prepare(i) {
                Ok(x) => x,
                Err(e) => {
                    for &j in &pending {
                        let mut r = blank(i, j);
                        r.error = Some(format!("preparing the prompt: {e}"));
                        finish(row, obs, j, r, &mut outcome)?;
                    }
                    continue;
                }
            };
            let opts = opts_of(i);
            let fill = |r: &mut Record, g: std::result::Result<Generation, EngineError>| {
                fill_local(r, &p, &ids, g)
            };

            // The shared prefill: the baseline's cache records what the forks need. Only
            // engine calls count as engine time; scoring and writing are the runner's.
            let forks: Vec<usize> = pending.iter().copied().filter(|&j| share[j]).collect();
            if let (Some(full), false) = (full, forks.is_empty()) {
                let record = forks
                    .iter()
                    .map(|&j| caches[j].needs())
                    .fold(Needs::default(), Needs::union);
                let base = &mut caches[full];
                base.record(record);
                let pre = engine(&mut outcome, || prefill(model, base, &ids, &opts));
                for &j in &forks {
                    let mut r = blank(i, j);
                    r.prefill_shared = true;
                    let g = match &pre {
                        Err(e) => Err(EngineError::Invalid(e.to_string())),
                        Ok(pre) => engine(&mut outcome, || {
                            let forked =
                                base.fork(plan.methods[j].build(), max_new).ok_or_else(|| {
                                    EngineError::Invalid(format!(
                                        "{} cannot be forked from the shared prefill",
                                        plan.methods[j].canonical()
                                    ))
                                })?;
                            let mut c = forked.cache;
                            let own = Prefilled {
                                logits: pre.logits.clone(),
                                prefill_ms: pre.prefill_ms + forked.compress_ms,
                            };
                            decode(model, &mut c, &ids, &own, &opts)
                        }),
                    };
                    fill(&mut r, g);
                    finish(row, obs, j, r, &mut outcome)?;
                }
                if pending.contains(&full) {
                    let mut r = blank(i, full);
                    r.prefill_shared = true;
                    let g = match &pre {
                        Ok(pre) => engine(&mut outcome, || decode(model, base, &ids, pre, &opts)),
                        Err(e) => Err(EngineError::Invalid(e.to_string())),
                    };
                    fill(&mut r, g);
                    finish(row, obs, full, r, &mut outcome)?;
                }
                base.record(Needs::default());
            }
            for &j in pending.iter().filter(|&&j| !share[j]) {
                if Some(j) == full && !forks.is_empty() {
                    continue;
                }
                let mut r = blank(i, j);
                let cache = &mut caches[j];
                let g = engine(&mut outcome, || generate(model, cache, &ids, &opts));
                fill(&mut r, g);
                finish(row, obs, j, r, &mut outcome)?;
            }
        }
        obs.end_task();
    }
    outcome.loop_ms = loop_start.elapsed().as_secs_f64() * 1e3;
    Ok(outcome)
}

/// A local generation's outcome in its record.
fn fill_local(
    r: &mut Record,
    p: &Prompt,
    ids: &[u32],
    g: std::result::Result<Generation, EngineError>,
) {
    r.prompt_hash = prompt_hash(&p.text);
    r.prompt_tokens = ids.len();
    r.truncated = p.truncated;
    match g {
        Ok(g) => {
            r.output_text = g.text;
            r.output_tokens = g.output_tokens;
            r.finish_reason = Some(
                match g.finish_reason {
                    FinishReason::Eos => "eos",
                    FinishReason::Stop => "stop",
                    FinishReason::Length => "length",
                }
                .into(),
            );
            r.prefill_ms = g.prefill_ms;
            r.ttft_ms = g.ttft_ms;
            r.decode_ms = g.decode_ms;
            r.e2e_ms = g.e2e_ms;
            r.decode_ms_p50 = g.decode_ms_p50;
            r.decode_ms_p90 = g.decode_ms_p90;
            r.decode_ms_max = g.decode_ms_max;
            r.kv_bytes_peak = g.kv_bytes_peak as u64;
            r.kv_bytes_end = g.kv_bytes_end as u64;
            r.kv_bytes_full = g.kv_bytes_full as u64;
            r.kv_tokens_kept = g.kv_tokens_kept;
        }
        Err(e) => r.error = Some(format!("generating: {e}")),
    }
}

/// One local request of a batched group: sample, method, whether it forks the shared
/// prefill, and the cache it brings (`None`: the scheduler makes one).
struct LocalJob {
    i: usize,
    j: usize,
    shared: bool,
    cache: Option<(KvCache, Prefilled)>,
}

/// One request for a method served elsewhere.
struct RemoteJob {
    /// Sample index in the task.
    i: usize,
    /// Method index (local methods first).
    j: usize,
    request: remote::Request,
    rendered: Option<String>,
    prepared: std::sync::Arc<(Prompt, Vec<u32>)>,
}

/// Sends `jobs`, at most `concurrency` in flight per server (a method's own `concurrency`
/// overrides it), handing each reply to `sink` on this thread, in the order they arrive.
fn send_all(
    jobs: Vec<RemoteJob>,
    clients: &[Client],
    n_local: usize,
    concurrency: usize,
    sink: &mut dyn FnMut(RemoteJob, std::result::Result<remote::Reply, String>) -> Result<()>,
) -> Result<()> {
    use std::collections::{BTreeMap, VecDeque};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    let mut queues: BTreeMap<String, (usize, VecDeque<RemoteJob>)> = BTreeMap::new();
    for job in jobs {
        let c = &clients[job.j - n_local];
        let q = queues.entry(c.remote.server_label()).or_insert_with(|| {
            (
                c.remote.concurrency.unwrap_or(concurrency).max(1),
                VecDeque::new(),
            )
        });
        q.0 = q.0.min(c.remote.concurrency.unwrap_or(q.0).max(1));
        q.1.push_back(job);
    }
    let stop = AtomicBool::new(false);
    let queues: Vec<(usize, Mutex<VecDeque<RemoteJob>>)> = queues
        .into_values()
        .map(|(n, q)| (n, Mutex::new(q)))
        .collect();
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        for (n, q) in &queues {
            let workers = (*n).min(q.lock().map(|q| q.len()).unwrap_or(0));
            for _ in 0..workers {
                let tx = tx.clone();
                let stop = &stop;
                s.spawn(move || loop {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Some(job) = q.lock().ok().and_then(|mut q| q.pop_front()) else {
                        break;
                    };
                    let c = &clients[job.j - n_local];
                    let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        c.complete(&job.request, job.rendered.as_deref())
                    }))
                    .unwrap_or_else(|_| Err("the request panicked".into()));
                    if tx.send((job, reply)).is_err() {
                        break;
                    }
                });
            }
        }
        drop(tx);
        for (job, reply) in rx {
            if let Err(e) = sink(job, reply) {
                stop.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        Ok(())
    })
}

/// A remote reply as a record: the text and the times measured here; token counts and cache
/// bytes where the server gave them (else counted with the run's tokenizer, or absent).
pub fn fill_remote(
    r: &mut Record,
    prepared: &(Prompt, Vec<u32>),
    reply: std::result::Result<remote::Reply, String>,
    c: &Client,
    model: &Model,
) {
    let (p, ids) = prepared;
    r.prompt_hash = prompt_hash(&p.text);
    r.prompt_tokens = ids.len();
    r.truncated = p.truncated;
    let reply = match reply {
        Ok(x) => x,
        Err(e) => {
            r.error = Some(e);
            return;
        }
    };
    let counted = reply.completion_tokens.is_none();
    r.output_tokens = match reply.completion_tokens {
        Some(n) => n,
        None => model
            .tokenizer
            .encode_text(&reply.text)
            .map(|v| v.len())
            .unwrap_or(0),
    };
    if let Some(n) = reply.prompt_tokens {
        r.prompt_tokens = n;
    }
    r.output_text = reply.text;
    r.finish_reason = Some(reply.finish_reason);
    r.ttft_ms = reply.ttft_ms;
    r.e2e_ms = reply.e2e_ms;
    r.prefill_ms = reply.server_prefill_ms.unwrap_or(reply.ttft_ms);
    r.decode_ms = (reply.e2e_ms - reply.ttft_ms).max(0.0);
    r.decode_ms_p50 = remote::quantile(&reply.gaps_ms, 0.5);
    r.decode_ms_p90 = remote::quantile(&reply.gaps_ms, 0.9);
    r.decode_ms_max = reply.gaps_ms.iter().copied().fold(0.0, f64::max);
    match &reply.kvlens {
        Some(k) => {
            r.kv_bytes_peak = k.kv_bytes_peak;
            r.kv_bytes_full = k.kv_bytes_full;
            r.kv_bytes_end = k.kv_bytes_end;
            r.kv_tokens_kept = k.kv_tokens_kept;
        }
        None => {
            let absent = [
                "kv_bytes_peak",
                "kv_bytes_end",
                "kv_bytes_full",
                "kv_tokens_kept",
            ];
            r.meta.insert(
                "absent".into(),
                serde_json::Value::from(absent.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            );
        }
    }
    r.served = Some(Served {
        backend: c.remote.backend.clone(),
        server: c.remote.server_label(),
        output_tokens_from: if counted { "tokenizer" } else { "usage" }.into(),
        prefill_from: if reply.server_prefill_ms.is_some() {
            "server"
        } else {
            "ttft"
        }
        .into(),
        attempts: reply.attempts,
    });
}

/// A record of `sample` under `method` before anything ran: identity, limits and what scoring
/// needs.
pub fn blank_record(
    run_id: &str,
    model: &str,
    spec_t: &kvlens_tasks::TaskSpec,
    sample: &kvlens_tasks::Sample,
    method: &str,
    max_new: usize,
    batch: usize,
) -> Record {
    Record {
        run_id: run_id.to_string(),
        model: model.to_string(),
        task: spec_t.name.clone(),
        sample_id: sample.id.clone(),
        method: method.to_string(),
        prompt_hash: String::new(),
        prompt_tokens: 0,
        truncated: false,
        output_text: String::new(),
        output_tokens: 0,
        finish_reason: None,
        max_new_tokens: max_new,
        prefill_ms: 0.0,
        ttft_ms: 0.0,
        decode_ms: 0.0,
        e2e_ms: 0.0,
        decode_ms_p50: 0.0,
        decode_ms_p90: 0.0,
        decode_ms_max: 0.0,
        prefill_shared: false,
        batch,
        queue_ms: 0.0,
        preemptions: 0,
        kv_bytes_peak: 0,
        kv_bytes_end: 0,
        kv_bytes_full: 0,
        kv_tokens_kept: 0.0,
        answers: sample.answers.clone(),
        all_classes: sample.all_classes.clone(),
        first_line: spec_t.first_line,
        metric: Some(spec_t.metric),
        score: None,
        pass: None,
        pass_rule: None,
        meta: sample.meta.clone(),
        served: None,
        load: None,
        error: None,
    }
}

/// The prompt of `sample` as the task builds it (truncated to `max_prompt` tokens) and its
/// token ids as the model's engine sees them (chat template applied when the task asks).
pub fn prepare_prompt(
    model: &Model,
    spec_t: &kvlens_tasks::TaskSpec,
    sample: &kvlens_tasks::Sample,
    max_prompt: usize,
) -> std::result::Result<(Prompt, Vec<u32>), String> {
    if max_prompt == 0 {
        return Err(format!(
            "the model's context of {} tokens leaves no room for a prompt before the new \
             tokens",
            model.config().context
        ));
    }
    let p = spec_t
        .prompt(sample, &Tok(model), max_prompt)
        .map_err(|e| e.to_string())?;
    let ids = model
        .encode_prompt(&p.text, p.chat)
        .map_err(|e| e.to_string())?;
    Ok((p, ids))
}

/// The chat prompt rendered with the model's template, for a chat task sent to a server's
/// `/completions` (which applies no template).
pub fn render_chat(model: &Model, p: &Prompt, endpoint: remote::Endpoint) -> Option<String> {
    if !(p.chat && endpoint == remote::Endpoint::Completions) {
        return None;
    }
    model.template.as_ref().and_then(|t| {
        t.render(&[kvlens_engine::Message::user(p.text.clone())])
            .ok()
    })
}

/// Runs one engine call, adding its time to the engine's; a panic inside it becomes an error
/// for this sample instead of ending the run.
fn engine<T>(
    outcome: &mut Outcome,
    f: impl FnOnce() -> std::result::Result<T, EngineError>,
) -> std::result::Result<T, EngineError> {
    let t = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown".into());
        Err(EngineError::Invalid(format!("the engine panicked: {msg}")))
    });
    outcome.engine_ms += t.elapsed().as_secs_f64() * 1e3;
    r
}

fn key(pt: &PlannedTask, i: usize, method: &str) -> Key {
    Key {
        task: pt.task.spec.name.clone(),
        sample_id: pt.task.samples[i].id.clone(),
        method: method.to_string(),
    }
}

/// A task name as a folder name: anything but letters, digits, `-`, `_` and `.` becomes `_`.
pub fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
