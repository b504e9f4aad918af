//! `kvlens datasets`: list the built-in tasks, show samples, rebuild the shipped sets, fetch
//! LongBench.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use kvlens_engine::{LoadOptions, Model};
use kvlens_tasks::gen::{self, ship};
use kvlens_tasks::registry::{self, Kind};
use kvlens_tasks::DataDirs;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DatasetsCommand {
    /// Every built-in task with its description, source and shipped set.
    List,
    /// A task's spec and its samples (the first three, or one with --sample).
    Show {
        /// A task name, NAME=FILE, or a task spec .toml.
        task: String,
        /// Show this sample in full, with its rendered prompt.
        #[arg(long)]
        sample: Option<String>,
    },
    /// Rebuild the shipped generated sets (with no arguments: exactly the files under
    /// datasets/, byte for byte).
    Generate {
        /// Tasks to generate, comma-separated (default: all generated tasks).
        #[arg(long)]
        tasks: Option<String>,
        /// Output folder (default: the shipped datasets folder).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = ship::DEFAULT_SEED)]
        seed: u64,
        /// Target prompt lengths in tokens, one sample each, comma-separated (default: 7 ×
        /// 1000, 7 × 1500, 6 × 2000).
        #[arg(long)]
        lengths: Option<String>,
        /// The model whose tokenizer measures lengths.
        #[arg(long, default_value = "default")]
        model: String,
        #[arg(long)]
        offline: bool,
    },
    /// Download a benchmark's official data (needs network access to Hugging Face).
    Fetch {
        /// `longbench`.
        name: String,
        /// Where to put it (default: datasets/).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        offline: bool,
    },
}

pub fn run(cmd: DatasetsCommand) -> Result<()> {
    let dirs = DataDirs::discover();
    match cmd {
        DatasetsCommand::List => {
            for b in registry::builtins() {
                let shipped = match b.kind {
                    Kind::Generated(_) => {
                        let p = dirs.shipped.join(format!("{}.jsonl", b.name));
                        match kvlens_tasks::formats::load_plain(&p) {
                            Ok(s) => format!("{} ({} samples)", p.display(), s.len()),
                            Err(_) => "not generated (kvlens datasets generate)".into(),
                        }
                    }
                    Kind::LongBench => {
                        let p = dirs.longbench.join(format!("{}.jsonl", b.name));
                        if p.is_file() {
                            p.display().to_string()
                        } else {
                            "not fetched (kvlens datasets fetch longbench)".into()
                        }
                    }
                    Kind::Gsm8k | Kind::Squad => format!("bring your own: {}=FILE", b.name),
                };
                println!("{:<22} — {}", b.name, b.description);
                println!("{:<22}   source: {}; data: {}", "", b.source, shipped);
            }
            Ok(())
        }
        DatasetsCommand::Show { task, sample } => {
            let t = registry::load(&task, &dirs)?;
            let s = &t.spec;
            println!(
                "{} — {}\n  data: {} ({} samples)\n  metric: {}, max new tokens: {}, chat: {}, first line only: {}",
                s.name,
                s.description,
                t.origin.display(),
                t.samples.len(),
                s.metric,
                s.max_new_tokens,
                s.chat,
                s.first_line
            );
            let show: Vec<&kvlens_tasks::Sample> = match &sample {
                Some(id) => {
                    let one = t.samples.iter().find(|x| &x.id == id).with_context(|| {
                        let ids: Vec<&str> =
                            t.samples.iter().take(10).map(|x| x.id.as_str()).collect();
                        format!(
                            "{} has no sample `{id}`; its ids start {}",
                            s.name,
                            ids.join(", ")
                        )
                    })?;
                    vec![one]
                }
                None => t.samples.iter().take(3).collect(),
            };
            for x in show {
                println!("\n--- {} ---", x.id);
                println!("answers: {:?}", x.answers);
                if !x.meta.is_empty() {
                    println!("meta: {}", serde_json::Value::Object(x.meta.clone()));
                }
                let prompt = s.render(x)?;
                if sample.is_some() {
                    println!("prompt:\n{prompt}");
                } else {
                    let chars: Vec<char> = prompt.chars().collect();
                    let head: String = chars.iter().take(200).collect();
                    let tail: String = chars[chars.len().saturating_sub(200)..].iter().collect();
                    println!("prompt ({} chars): {head} … {tail}", chars.len());
                }
            }
            Ok(())
        }
        DatasetsCommand::Generate {
            tasks,
            out,
            seed,
            lengths,
            model,
            offline,
        } => {
            let gens: Vec<&'static dyn gen::Generator> = match &tasks {
                None => Vec::new(),
                Some(t) => t
                    .split(',')
                    .map(|n| {
                        gen::generator(n.trim()).with_context(|| {
                            let names: Vec<&str> =
                                gen::generators().iter().map(|g| g.name()).collect();
                            format!(
                                "`{n}` is not a generated task; they are {}",
                                names.join(", ")
                            )
                        })
                    })
                    .collect::<Result<_>>()?,
            };
            let lengths: Option<Vec<usize>> = lengths
                .map(|l| {
                    l.split(',')
                        .map(|x| {
                            x.trim()
                                .parse::<usize>()
                                .with_context(|| format!("--lengths: `{x}` is not a number"))
                        })
                        .collect::<Result<_>>()
                })
                .transpose()?;
            let mut say = |m: &str| eprintln!("kvlens: {m}");
            let m = Model::load(&model, &LoadOptions { offline }, &mut say)
                .with_context(|| format!("loading model `{model}` for its tokenizer"))?;
            let tok_name = m
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| model.clone());
            let out = out.unwrap_or(dirs.shipped);
            let written = ship::write_sets(
                &out,
                &gens,
                seed,
                lengths.as_deref(),
                &tok_name,
                &kvlens_run::runner::Tok(&m),
            )?;
            for w in written {
                println!(
                    "{}/{}.jsonl: {} samples{}",
                    out.display(),
                    w.task,
                    w.samples,
                    if w.changed { "" } else { " (unchanged)" }
                );
            }
            Ok(())
        }
        DatasetsCommand::Fetch { name, out, offline } => {
            if name != "longbench" {
                bail!("`{name}`: kvlens can fetch `longbench`; for GSM8K and SQuAD pass your file as gsm8k=FILE or squad=FILE");
            }
            let dest = out.unwrap_or(dirs.shipped);
            let offline = offline || kvlens_engine::source::offline_from_env();
            let dir = kvlens_tasks::formats::longbench::fetch(&dest, offline)?;
            println!("{}", dir.display());
            Ok(())
        }
    }
}
