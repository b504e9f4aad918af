//! Joining the run folders of several shard workers into one.

use crate::error::{Result, RunError};
use crate::record::{Key, Record};
use crate::runner::file_safe;
use crate::store::{read_run, write_atomic};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

#[derive(Debug, Default)]
pub struct MergeReport {
    pub records: usize,
    /// The same (task, sample, method) in several inputs: the first kept.
    pub duplicates: usize,
    /// Failed records replaced by a successful one from another input.
    pub replaced_errors: usize,
    pub files: usize,
}

/// Merges the records of `inputs` (and of `out`, when it already holds some) into `out`,
/// one record per (task, sample, method). Files are written atomically; the first input's
/// `run.toml` is copied. Inputs made with different model weights are refused.
pub fn merge(inputs: &[PathBuf], out: &Path) -> Result<MergeReport> {
    // The merged folder must not hold an input (it would read the input twice) nor sit
    // inside one.
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let out_c = canon(out);
    for dir in inputs {
        if !dir.is_dir() {
            return Err(RunError::Invalid(format!(
                "{} is not a run folder",
                dir.display()
            )));
        }
        let d = canon(dir);
        if d == out_c || d.starts_with(&out_c) || out_c.starts_with(&d) {
            return Err(RunError::Invalid(format!(
                "--out {} and the input {} contain one another; merge into a separate folder \
                 (e.g. results/big with inputs results/big-shard-*)",
                out.display(),
                dir.display()
            )));
        }
    }
    let mut model_hash: Option<(PathBuf, String)> = None;
    let mut sources_with_config: Vec<PathBuf> = inputs.to_vec();
    if out.join("run.toml").is_file() {
        sources_with_config.insert(0, out.to_path_buf());
    }
    for dir in &sources_with_config {
        let path = dir.join("run.toml");
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!(
                "kvlens: {} has no run.toml; its model cannot be checked",
                dir.display()
            );
            continue;
        };
        {
            let rf =
                toml::from_str::<crate::runner::RunFile>(&text).map_err(|e| RunError::Config {
                    path: path.clone(),
                    msg: e.to_string(),
                })?;
            {
                let h = rf.provenance.model_sha256;
                match &model_hash {
                    Some((first, h0)) if *h0 != h => {
                        return Err(RunError::Invalid(format!(
                        "{} and {} were run with different model weights; they cannot be merged",
                        first.display(),
                        dir.display()
                    )))
                    }
                    None => model_hash = Some((dir.clone(), h)),
                    _ => {}
                }
            }
        }
    }
    let mut report = MergeReport::default();
    let mut by_key: HashMap<Key, Record> = HashMap::new();
    let mut order: Vec<Key> = Vec::new();
    let mut sources: Vec<PathBuf> = Vec::new();
    if out.is_dir() {
        sources.push(out.to_path_buf());
    }
    sources.extend(inputs.iter().cloned());
    for dir in &sources {
        for r in read_run(dir)? {
            let k = r.key();
            match by_key.get_mut(&k) {
                None => {
                    order.push(k.clone());
                    by_key.insert(k, r);
                }
                Some(old) if old.error.is_some() && r.error.is_none() => {
                    *old = r;
                    report.replaced_errors += 1;
                }
                Some(_) => report.duplicates += 1,
            }
        }
    }
    // Group into files by task and method label.
    let mut files: BTreeMap<PathBuf, Vec<Record>> = BTreeMap::new();
    for k in order {
        if let Some(r) = by_key.remove(&k) {
            let label = kvlens_press::Spec::parse(&r.method)
                .map(|s| s.label())
                .unwrap_or_else(|_| file_safe(&r.method));
            let path = out.join(file_safe(&r.task)).join(format!("{label}.jsonl"));
            files.entry(path).or_default().push(r);
        }
    }
    for (path, records) in &files {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| RunError::io(d, e))?;
        }
        write_atomic(path, records)?;
        report.records += records.len();
    }
    report.files = files.len();
    // The merged folder keeps the first input's config, without its shard.
    if !out.join("run.toml").is_file() {
        if let Some(text) = inputs
            .iter()
            .find_map(|d| std::fs::read_to_string(d.join("run.toml")).ok())
        {
            if let Ok(mut rf) = toml::from_str::<crate::runner::RunFile>(&text) {
                rf.config.shard = None;
                rf.config.out = Some(out.to_path_buf());
                let text =
                    toml::to_string_pretty(&rf).map_err(|e| RunError::Invalid(e.to_string()))?;
                let path = out.join("run.toml");
                std::fs::write(&path, text).map_err(|e| RunError::io(&path, e))?;
            }
        }
    }
    Ok(report)
}
