#!/usr/bin/env bash
# The main job on the built-in default: builds kvlens, fetches the default model if needed,
# and runs the default suite (6 generated tasks × 5 samples × full and 6 compression methods)
# into results/default, then prints the per-task table. Rerunning resumes; extra arguments
# go to `kvlens run` (e.g. --out results/other).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kvlens/target}"
cargo build --release --locked -p kvlens-cli
exec "$CARGO_TARGET_DIR/release/kvlens" run "$@"
