#!/usr/bin/env bash
# Passkey retrieval (Mohtashami & Jaggi 2023) under several methods on the default model:
# N prompts of ~2000 tokens with a 5-digit key in the middle; counts correct answers.
# Usage: scripts/passkey_methods.sh [N] [METHOD...]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kvlens/target}"
K="$CARGO_TARGET_DIR/release/kvlens"
n="${1:-5}"
shift || true
methods=("$@")
[ ${#methods[@]} -gt 0 ] || methods=(full streamingllm:budget=256 snapkv:budget=256)
filler="The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
half=""
for _ in $(seq 45); do half="$half$filler"; done
for m in "${methods[@]}"; do
  ok=0
  for i in $(seq "$n"); do
    key=$(( (i * 7919 + 12345) % 90000 + 10000 ))
    prompt="${half}The pass key is $key. Remember it. $key is the pass key. ${half}

What is the pass key? Answer with the number only."
    out=$("$K" generate --chat --method "$m" --max-new-tokens 16 --prompt "$prompt" 2>/dev/null)
    if [[ "$out" == *"$key"* ]]; then ok=$((ok + 1)); fi
    echo "$m key=$key -> $(echo "$out" | head -c 60)" >&2
  done
  echo "$m: $ok/$n"
done
