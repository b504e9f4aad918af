//! What the end-to-end tests share: where the sources and the default model are, and the
//! `kvlens` binary with that model folder.

// Each test binary uses its own share of these.
#![allow(dead_code)]

pub mod rawhttp;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The crate folder: cargo's run-time value first (a build reused from a shared target
/// folder carries another clone's compile-time path).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
}

pub fn models_dir() -> PathBuf {
    std::env::var_os("KVLENS_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir().join("../../models"))
}

/// `kvlens ARGS` with the models folder set.
pub fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvlens"));
    c.args(args).env("KVLENS_HOME", models_dir());
    c
}

/// Standard output of a command that must have succeeded (its stderr in the failure).
pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "kvlens failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
