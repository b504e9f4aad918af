#!/usr/bin/env bash
# The main job on the built-in default: builds kvlens, fetches the default model if needed,
# and asks it for a passkey hidden in the middle of ~2000 tokens of filler, with the full
# cache and with two compression methods at a 256-token budget.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kvlens/target}"
cargo build --release --locked -p kvlens-cli
K="$CARGO_TARGET_DIR/release/kvlens"
"$K" models fetch
filler="The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
half=""
for _ in $(seq 45); do half="$half$filler"; done
prompt="${half}The pass key is 71432. Remember it. 71432 is the pass key. ${half}

What is the pass key? Answer with the number only."
for method in full streamingllm:budget=256 snapkv:budget=256; do
  echo "== $method"
  "$K" generate --chat --method "$method" --max-new-tokens 16 --prompt "$prompt"
done
