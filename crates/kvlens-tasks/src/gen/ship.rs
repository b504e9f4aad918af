//! The sets kvlens ships under `datasets/`: one JSONL file per generated task and a manifest,
//! rebuilt byte for byte by `kvlens datasets generate`.

use super::{default_lengths, generate, generators, Generator};
use crate::error::{Result, TaskError};
use crate::sample::Sample;
use crate::spec::Tokenize;
use serde_json::{json, Map, Value};
use std::path::Path;

/// Bumped whenever a generator changes what it writes for the same seed.
pub const GENERATOR_VERSION: u32 = 1;
/// The seed of the shipped sets.
pub const DEFAULT_SEED: u64 = 20241126;

/// A sample as one line of a shipped file: `id, context, input, answers, meta`, in that
/// order (the format `formats::plain` reads).
pub fn plain_line(s: &Sample) -> String {
    let mut o = Map::new();
    o.insert("id".into(), json!(s.id));
    for (k, v) in &s.fields {
        o.insert(k.clone(), v.clone());
    }
    o.insert("answers".into(), json!(s.answers));
    if !s.all_classes.is_empty() {
        o.insert("all_classes".into(), json!(s.all_classes));
    }
    if !s.meta.is_empty() {
        o.insert("meta".into(), Value::Object(s.meta.clone()));
    }
    Value::Object(o).to_string()
}

/// What one call of [`write_sets`] produced.
pub struct Written {
    pub task: &'static str,
    pub samples: usize,
    pub changed: bool,
}

/// Generates `tasks` (all generators when empty) and writes `<dir>/<task>.jsonl` and
/// `<dir>/manifest.json`. Files whose content would not change are left untouched.
pub fn write_sets(
    dir: &Path,
    tasks: &[&'static dyn Generator],
    seed: u64,
    lengths: Option<&[usize]>,
    tokenizer: &str,
    tok: &dyn Tokenize,
) -> Result<Vec<Written>> {
    let all = generators();
    let tasks: Vec<&'static dyn Generator> = if tasks.is_empty() {
        all
    } else {
        tasks.to_vec()
    };
    let default = default_lengths();
    let lengths = lengths.unwrap_or(&default);
    std::fs::create_dir_all(dir).map_err(|source| TaskError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    // The manifest keeps an entry per task, so generating some tasks leaves the others'.
    let manifest_path = dir.join("manifest.json");
    let mut entries: Map<String, Value> = std::fs::read_to_string(&manifest_path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("tasks").and_then(Value::as_object).cloned())
        .unwrap_or_default();
    let mut out = Vec::new();
    for g in tasks {
        let samples = generate(g, seed, lengths, tok)?;
        let mut text = String::new();
        for s in &samples {
            text.push_str(&plain_line(s));
            text.push('\n');
        }
        let file = format!("{}.jsonl", g.name());
        let changed = write_if_changed(&dir.join(&file), &text)?;
        let tokens: Vec<u64> = samples
            .iter()
            .filter_map(|s| s.meta.get("prompt_tokens").and_then(Value::as_u64))
            .collect();
        entries.insert(
            g.name().to_string(),
            json!({
                "file": file,
                "seed": seed,
                "target_tokens": lengths,
                "samples": samples.len(),
                "prompt_tokens_min": tokens.iter().min(),
                "prompt_tokens_max": tokens.iter().max(),
            }),
        );
        out.push(Written {
            task: g.name(),
            samples: samples.len(),
            changed,
        });
    }
    let manifest = json!({
        "generator": "kvlens-tasks",
        "generator_version": GENERATOR_VERSION,
        "tokenizer": tokenizer,
        "tasks": entries,
    });
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default() + "\n";
    write_if_changed(&manifest_path, &text)?;
    Ok(out)
}

fn write_if_changed(path: &Path, text: &str) -> Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| TaskError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::load_plain;
    use crate::gen::tests::Words;

    #[test]
    fn shipped_files_round_trip_through_the_plain_loader() {
        let dir = tempfile::tempdir().unwrap();
        let lengths = [200, 300];
        let w = write_sets(dir.path(), &[], 5, Some(&lengths), "words", &Words).unwrap();
        assert_eq!(w.len(), generators().len());
        assert!(w.iter().all(|x| x.changed && x.samples == 2));
        for g in generators() {
            let loaded = load_plain(&dir.path().join(format!("{}.jsonl", g.name()))).unwrap();
            let made = generate(g, 5, &lengths, &Words).unwrap();
            assert_eq!(loaded, made, "{}", g.name());
        }
        let again = write_sets(dir.path(), &[], 5, Some(&lengths), "words", &Words).unwrap();
        assert!(again.iter().all(|x| !x.changed));
        let m = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap();
        assert!(m.contains("\"seed\": 5") && !m.contains("time"), "{m}");
        // Regenerating one task with another seed keeps the others' entries.
        let vt = crate::gen::generator("vt").unwrap();
        write_sets(dir.path(), &[vt], 6, Some(&lengths), "words", &Words).unwrap();
        let m: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("manifest.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(m["tasks"]["vt"]["seed"], 6);
        assert_eq!(m["tasks"]["passkey"]["seed"], 5);
    }
}
