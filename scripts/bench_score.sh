#!/usr/bin/env bash
# The speed of `kvlens score` on the scorer's parity corpus: turns every prediction/answer
# pair of crates/kvlens-score/tests/fixtures/parity.jsonl into a record of a throw-away run
# folder (one file per metric), then times the whole command (start-up, reading, scoring,
# writing). Compare with the time the official Python metric functions alone take on the same
# pairs, printed by scripts/score_reference.sh --out /tmp/fixtures (which also rewrites the
# fixtures into that folder).
#
#   scripts/bench_score.sh [REPEAT]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kvlens/target}"
cargo build --release --locked -p kvlens-cli >&2
K="$CARGO_TARGET_DIR/release/kvlens"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
python3 - "$dir" <<'PY'
import json, os, sys
out = sys.argv[1]
files = {}
for i, line in enumerate(open("crates/kvlens-score/tests/fixtures/parity.jsonl")):
    p = json.loads(line)
    m = p["metric"]
    rec = {
        "run_id": "bench", "model": "none", "task": m, "sample_id": str(i), "method": "full",
        "prompt_hash": "", "prompt_tokens": 0, "output_text": p["prediction"],
        "output_tokens": 0, "max_new_tokens": 0, "prefill_ms": 0.0, "ttft_ms": 0.0,
        "decode_ms": 0.0, "e2e_ms": 0.0, "kv_bytes_peak": 0, "kv_bytes_full": 0,
        "kv_tokens_kept": 0.0, "answers": [str(a) for a in p["answers"]],
        "all_classes": p.get("all_classes") or [], "metric": m,
    }
    if m not in files:
        os.makedirs(f"{out}/{m}", exist_ok=True)
        files[m] = open(f"{out}/{m}/full.jsonl", "w")
    files[m].write(json.dumps(rec) + "\n")
for f in files.values():
    f.close()
PY
n=$(cat "$dir"/*/full.jsonl | wc -l)
for _ in $(seq "${1:-3}"); do
  s=$(date +%s.%N)
  "$K" score "$dir" >/dev/null
  e=$(date +%s.%N)
  echo "kvlens score: $n records in $(echo "$e - $s" | bc) s"
done
