//! What the end-to-end tests share: where the sources and the default model are, and the
//! `kvlens` binary with that model folder.

// Each test binary uses its own share of these.
#![allow(dead_code)]

pub mod rawhttp;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

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

/// A `kvlens serve` child process, killed when dropped.
pub struct Served {
    pub child: Child,
    pub url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kvlens serve --port 0 --offline ARGS`, once it has printed its address.
pub fn serve_with(args: &[&str]) -> Served {
    let mut all = vec!["serve", "--port", "0", "--offline"];
    all.extend_from_slice(args);
    let mut child = cmd(&all)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("http://"), "kvlens serve printed `{line}`");
    Served {
        child,
        url: line.trim().to_string(),
    }
}

/// Every record line of every `.jsonl` under `dir` (an `analysis` folder skipped).
pub fn record_values(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if !p.ends_with("analysis") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "jsonl") {
                for line in std::fs::read_to_string(&p).unwrap().lines() {
                    out.push(serde_json::from_str(line).unwrap());
                }
            }
        }
    }
    out
}
