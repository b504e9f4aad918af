//! The kvlens inference engine: Llama-architecture models from GGUF files or Hugging Face
//! checkpoints, their tokenizers and chat templates, and generation with a KV cache from
//! `kvlens-press` as a parameter of every forward pass.

pub mod chat;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod kquant;
pub mod model;
pub mod quant;
pub mod sched;
pub mod source;
pub mod tokenizer;

pub use chat::{ChatTemplate, Message};
pub use error::{EngineError, Result};
pub use generate::{
    decode, decode_with, generate, prefill, prefill_chunks, FinishReason, GenOptions, Generation,
    Prefilled, Sampling, MIN_LAST_CHUNK,
};
pub use model::{Config, Logits, Seq, Transformer};
pub use source::ModelSource;
pub use tokenizer::Tokenizer;

use kvlens_press::{KvCache, KvDtype, Spec};
use std::path::{Path, PathBuf};

/// A model ready to generate: weights, tokenizer and chat template.
pub struct Model {
    /// What the user typed (`default`, a path, `hf:ORG/NAME`).
    pub name: String,
    /// The file or folder the weights came from.
    pub path: PathBuf,
    pub transformer: Transformer,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
}

/// How to find a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Never download; fail with instructions instead.
    pub offline: bool,
}

impl Model {
    /// Loads `spec`: `default`, a `.gguf` file, a Hugging Face folder, or `hf:ORG/NAME`.
    /// `say` receives progress messages meant for people (fetching, loading).
    pub fn load(spec: &str, opts: &LoadOptions, say: &mut dyn FnMut(&str)) -> Result<Self> {
        Self::load_with(spec, opts, say, true)
    }

    /// Loads only what turns text into tokens: the tokenizer, the chat template, the context
    /// length (for prompts sent to a server that runs the weights). A Hugging Face model
    /// downloads no weights; a GGUF file is read for its metadata only. Generating with it
    /// fails.
    pub fn load_tokenizer(
        spec: &str,
        opts: &LoadOptions,
        say: &mut dyn FnMut(&str),
    ) -> Result<Self> {
        Self::load_with(spec, opts, say, false)
    }

    /// Whether this model can generate (see [`Model::load_tokenizer`]).
    pub fn has_weights(&self) -> bool {
        self.transformer.has_weights()
    }

    fn load_with(
        spec: &str,
        opts: &LoadOptions,
        say: &mut dyn FnMut(&str),
        weights: bool,
    ) -> Result<Self> {
        let offline = opts.offline || source::offline_from_env();
        let mut model = match ModelSource::parse(spec)? {
            ModelSource::Default => {
                let (path, _) = source::ensure_default(offline, say)?;
                Self::from_gguf_with(&path, weights)?
            }
            ModelSource::Gguf(p) => Self::from_gguf_with(&p, weights)?,
            ModelSource::HfFolder(p) => Self::from_hf_folder_with(&p, weights)?,
            ModelSource::Hub {
                repo,
                revision,
                file,
            } => {
                let rev = revision.as_deref();
                if let Some(file) = file {
                    let paths = source::hub_files(&repo, rev, &[&file], offline)?;
                    Self::from_gguf_with(&paths[0], weights)?
                } else if !weights {
                    say(&format!("resolving hf:{repo} (tokenizer only)"));
                    let paths =
                        source::hub_files(&repo, rev, &["config.json", "tokenizer.json"], offline)?;
                    let dir = paths[0].parent().map(Path::to_path_buf).unwrap_or_default();
                    let _ = source::hub_optional(&repo, rev, "tokenizer_config.json", offline);
                    Self::from_hf_folder_with(&dir, false)?
                } else {
                    say(&format!("resolving hf:{repo}"));
                    let paths =
                        source::hub_files(&repo, rev, &["config.json", "tokenizer.json"], offline)?;
                    let dir = paths[0].parent().map(Path::to_path_buf).unwrap_or_default();
                    let _ = source::hub_optional(&repo, rev, "tokenizer_config.json", offline);
                    if source::hub_optional(&repo, rev, "model.safetensors", offline).is_none() {
                        let index = source::hub_files(
                            &repo,
                            rev,
                            &["model.safetensors.index.json"],
                            offline,
                        )?;
                        for shard in shard_names(&index[0])? {
                            source::hub_files(&repo, rev, &[&shard], offline)?;
                        }
                    }
                    Self::from_hf_folder(&dir)?
                }
            }
        };
        model.name = spec.to_string();
        Ok(model)
    }

    pub fn from_gguf(path: &Path) -> Result<Self> {
        Self::from_gguf_with(path, true)
    }

    fn from_gguf_with(path: &Path, weights: bool) -> Result<Self> {
        let g = gguf::Gguf::open(path)?;
        let mut transformer = if weights {
            Transformer::from_gguf(&g)?
        } else {
            let arch = g.string("general.architecture").unwrap_or_default();
            let context = g
                .u32(&format!("{arch}.context_length"))
                .map(|c| c as usize)
                .unwrap_or(2048);
            Transformer::config_only(context, 0)
        };
        let side = path.with_file_name("tokenizer.json");
        let tokenizer = if side.exists() {
            let t = Tokenizer::from_file(&side)?;
            let bos = g.u32("tokenizer.ggml.bos_token_id").ok();
            let eos = g
                .u32("tokenizer.ggml.eos_token_id")
                .ok()
                .into_iter()
                .collect();
            let add_bos = g
                .get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(true);
            Tokenizer::from_hf(t, bos, eos, add_bos)
        } else {
            Tokenizer::from_gguf(&g)?
        };
        let name_of = |id: Option<u32>| {
            id.and_then(|i| tokenizer.id_to_token(i))
                .unwrap_or_default()
        };
        if !weights {
            transformer.config.vocab = tokenizer.vocab_size();
        }
        let template = g.string("tokenizer.chat_template").ok().map(|t| {
            ChatTemplate::new(
                t,
                name_of(tokenizer.bos),
                name_of(tokenizer.eos.first().copied()),
            )
        });
        Ok(Self {
            name: path.display().to_string(),
            path: path.to_path_buf(),
            transformer,
            tokenizer,
            template,
        })
    }

    /// A folder with `config.json`, `tokenizer.json`, weights in `model.safetensors` (or
    /// shards listed in `model.safetensors.index.json`), and optionally
    /// `tokenizer_config.json` (chat template, special tokens).
    pub fn from_hf_folder(dir: &Path) -> Result<Self> {
        Self::from_hf_folder_with(dir, true)
    }

    fn from_hf_folder_with(dir: &Path, weights: bool) -> Result<Self> {
        let read_json = |name: &str| -> Result<serde_json::Value> {
            let p = dir.join(name);
            let text = std::fs::read_to_string(&p).map_err(|e| EngineError::Model {
                path: p.clone(),
                msg: format!("cannot read: {e}"),
            })?;
            serde_json::from_str(&text).map_err(|e| EngineError::Model {
                path: p.clone(),
                msg: format!("invalid JSON at line {}: {e}", e.line()),
            })
        };
        let cfg = read_json("config.json")?;
        let transformer = if weights {
            Self::hf_weights(dir, &cfg)?
        } else {
            let num = |k: &str| cfg.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
            Transformer::config_only(
                num("max_position_embeddings").unwrap_or(2048),
                num("vocab_size").unwrap_or(0),
            )
        };
        Self::with_hf_tokenizer(dir, &cfg, transformer)
    }

    fn hf_weights(dir: &Path, cfg: &serde_json::Value) -> Result<Transformer> {
        let files: Vec<PathBuf> = if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else if dir.join("model.safetensors.index.json").exists() {
            shard_names(&dir.join("model.safetensors.index.json"))?
                .into_iter()
                .map(|s| dir.join(s))
                .collect()
        } else {
            return Err(EngineError::Model {
                path: dir.to_path_buf(),
                msg: "no model.safetensors or model.safetensors.index.json".into(),
            });
        };
        let maps = files
            .iter()
            .map(|f| {
                let file = std::fs::File::open(f)?;
                // SAFETY: read-only mapping of a file kvlens does not modify.
                unsafe { memmap2::Mmap::map(&file) }.map_err(EngineError::from)
            })
            .collect::<Result<Vec<_>>>()?;
        let tensors = maps
            .iter()
            .zip(&files)
            .map(|(m, f)| {
                safetensors::SafeTensors::deserialize(m).map_err(|e| EngineError::Model {
                    path: f.clone(),
                    msg: format!("not a safetensors file: {e}"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let take = |name: &str| -> Result<Option<(Vec<f32>, Vec<usize>)>> {
            for st in &tensors {
                if let Ok(t) = st.tensor(name) {
                    return to_f32(&t)
                        .map(|v| Some((v, t.shape().to_vec())))
                        .ok_or_else(|| EngineError::Model {
                            path: dir.to_path_buf(),
                            msg: format!("tensor `{name}` has unsupported dtype {:?}", t.dtype()),
                        });
                }
            }
            Ok(None)
        };
        Transformer::from_hf(dir, cfg, take)
    }

    fn with_hf_tokenizer(
        dir: &Path,
        cfg: &serde_json::Value,
        transformer: Transformer,
    ) -> Result<Self> {
        let tcfg = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        let hf = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
        let token_str = |v: Option<&serde_json::Value>| -> Option<String> {
            match v? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content")?.as_str().map(String::from),
                _ => None,
            }
        };
        let bos_str = tcfg.as_ref().and_then(|c| token_str(c.get("bos_token")));
        let eos_str = tcfg.as_ref().and_then(|c| token_str(c.get("eos_token")));
        let bos = bos_str
            .as_deref()
            .and_then(|s| hf.token_to_id(s))
            .or_else(|| {
                cfg.get("bos_token_id")
                    .and_then(|v| v.as_u64())
                    .map(|v| v as u32)
            });
        let mut eos: Vec<u32> = match cfg.get("eos_token_id") {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect(),
            Some(v) => v.as_u64().map(|v| v as u32).into_iter().collect(),
            None => Vec::new(),
        };
        if let Some(id) = eos_str.as_deref().and_then(|s| hf.token_to_id(s)) {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        let add_bos = tcfg
            .as_ref()
            .and_then(|c| c.get("add_bos_token"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let template = tcfg
            .as_ref()
            .and_then(|c| c.get("chat_template"))
            .and_then(|v| v.as_str())
            .map(|t| {
                ChatTemplate::new(
                    t,
                    bos_str.clone().unwrap_or_default(),
                    eos_str.clone().unwrap_or_default(),
                )
            });
        Ok(Self {
            name: dir.display().to_string(),
            path: dir.to_path_buf(),
            transformer,
            tokenizer: Tokenizer::from_hf(hf, bos, eos, add_bos),
            template,
        })
    }

    pub fn config(&self) -> &Config {
        &self.transformer.config
    }

    /// Token ids of a prompt: through the chat template (`chat`), or as raw text with the
    /// model's BOS token when it asks for one.
    pub fn encode_prompt(&self, prompt: &str, chat: bool) -> Result<Vec<u32>> {
        if chat {
            let t = self.template.as_ref().ok_or_else(|| {
                EngineError::Template(format!(
                    "{} has no chat template; run without --chat",
                    self.name
                ))
            })?;
            return t.encode(&self.tokenizer, &[Message::user(prompt)]);
        }
        let mut ids = Vec::new();
        if self.tokenizer.add_bos {
            ids.extend(self.tokenizer.bos);
        }
        ids.extend(self.tokenizer.encode_text(prompt)?);
        Ok(ids)
    }

    /// A fresh cache for this model under the method `spec`.
    pub fn new_cache(&self, spec: &Spec, dtype: KvDtype) -> KvCache {
        KvCache::new(self.config().cache_shape(), dtype, spec.build())
    }
}

fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| EngineError::Model {
        path: index.to_path_buf(),
        msg: format!("invalid JSON: {e}"),
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| EngineError::Model {
            path: index.to_path_buf(),
            msg: "field `weight_map` is missing".into(),
        })?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

fn to_f32(t: &safetensors::tensor::TensorView<'_>) -> Option<Vec<f32>> {
    use safetensors::Dtype;
    let b = t.data();
    Some(match t.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}
