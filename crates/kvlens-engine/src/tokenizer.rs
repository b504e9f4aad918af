//! Tokenizers: `tokenizer.json` when a model ships one, otherwise built from GGUF metadata.
//!
//! For GGUF vocabularies of type `gpt2` (byte-level BPE) the pre-tokenizer is chosen by
//! `tokenizer.ggml.pre`, as llama.cpp does. SmolLM2's `smollm` splits every digit on its own
//! and then applies the GPT-2 pattern without adding a leading space. Text a user supplies is
//! encoded with special tokens treated as plain text; only a chat template's own markers
//! become special tokens.

use crate::error::{EngineError, Result};
use crate::gguf::Gguf;
use serde_json::{json, Value};
use std::str::FromStr;

/// Llama 3's split pattern (`llama-bpe`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split pattern: Llama 3's with digits one by one.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token texts that end generation wherever a vocabulary marks them as control tokens.
const END_TOKENS: [&str; 6] = [
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|end|>",
    "<end_of_turn>",
];

pub struct Tokenizer {
    /// Recognizes special tokens in the text (for template markers).
    special: tokenizers::Tokenizer,
    /// Treats every character as text (for what users supply).
    plain: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    pub add_bos: bool,
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

impl Tokenizer {
    pub fn from_hf(
        tok: tokenizers::Tokenizer,
        bos: Option<u32>,
        eos: Vec<u32>,
        add_bos: bool,
    ) -> Self {
        let mut plain = tok.clone();
        plain.set_encode_special_tokens(true);
        Self {
            special: tok,
            plain,
            bos,
            eos,
            add_bos,
        }
    }

    pub fn from_file(path: &std::path::Path) -> Result<tokenizers::Tokenizer> {
        tokenizers::Tokenizer::from_file(path)
            .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))
    }

    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let json = gguf_tokenizer_json(g)?;
        let tok = tokenizers::Tokenizer::from_str(&json.to_string()).map_err(tok_err)?;
        let bos = g.u32("tokenizer.ggml.bos_token_id").ok();
        let mut eos: Vec<u32> = g
            .u32("tokenizer.ggml.eos_token_id")
            .ok()
            .into_iter()
            .collect();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Ok(e) = g.u32(key) {
                eos.push(e);
            }
        }
        // As llama.cpp's vocabulary loader: control tokens spelled as a known end of turn or
        // of text end generation too (Qwen ends turns with <|im_end|> and text with
        // <|endoftext|>, and names only one of them).
        let types = g.i32s("tokenizer.ggml.token_type").unwrap_or_default();
        if let Ok(tokens) = g.strings("tokenizer.ggml.tokens") {
            for (i, t) in tokens.iter().enumerate() {
                let control = types.get(i).is_some_and(|&ty| ty == 3);
                if control && END_TOKENS.contains(t) && !eos.contains(&(i as u32)) {
                    eos.push(i as u32);
                }
            }
        }
        let add_bos = g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(true);
        Ok(Self::from_hf(tok, bos, eos, add_bos))
    }

    /// Encodes text a user supplied: special-token strings in it stay plain text.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .plain
            .encode(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Encodes text in which special-token strings are the special tokens (template markers).
    pub fn encode_special(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .special
            .encode(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.special.decode(ids, false).map_err(tok_err)
    }

    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.special.token_to_id(s)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.special.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.special.get_vocab_size(true)
    }
}

/// A `tokenizer.json` document equivalent to the GGUF vocabulary.
fn gguf_tokenizer_json(g: &Gguf) -> Result<Value> {
    let model = g.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(EngineError::Tokenizer(format!(
            "{}: GGUF vocabulary type `{model}` cannot be rebuilt from metadata (only `gpt2` \
             byte-level BPE); put the model's tokenizer.json next to the .gguf file",
            g.path.display()
        )));
    }
    let tokens = g.strings("tokenizer.ggml.tokens")?;
    let merges = g.strings("tokenizer.ggml.merges")?;
    let types = g.i32s("tokenizer.ggml.token_type").unwrap_or_default();
    let pre = g.string("tokenizer.ggml.pre").unwrap_or("default");
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    let pre_tokenizer = match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            json!({
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]
            })
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => json!({
            "type": "Sequence",
            "pretokenizers": [split(LLAMA3_PATTERN), byte_level(false)]
        }),
        "qwen2" | "deepseek-r1-qwen" => json!({
            "type": "Sequence",
            "pretokenizers": [split(QWEN2_PATTERN), byte_level(false)]
        }),
        other => {
            return Err(EngineError::Tokenizer(format!(
                "{}: pre-tokenizer `{other}` is not supported; supported: default, gpt2, smollm, \
                 starcoder, refact, command-r, codeshell, exaone, minerva, llama3, llama-bpe, qwen2; \
                 or put the model's tokenizer.json next to the .gguf file",
                g.path.display()
            )))
        }
    };
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    // Token type 3 is "control" (e.g. <|im_start|>), 4 "user defined": both match as whole
    // strings before BPE; control tokens are special.
    let added: Vec<Value> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == 3 || t == 4)
        .map(|(i, &t)| {
            json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": t == 3})
        })
        .collect();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges
        }
    }))
}
