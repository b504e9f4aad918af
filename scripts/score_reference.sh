#!/usr/bin/env bash
# Reference scores for crates/kvlens-score's parity tests: makes a Python environment with the
# packages LongBench pins (rouge 1.0.1, jieba 0.42.1, fuzzywuzzy 0.18.0 without
# python-Levenshtein, so fuzzywuzzy runs on difflib) and NumPy, then runs
# scripts/score_reference.py, which writes the fixtures under
# crates/kvlens-score/tests/fixtures/ and prints the reference timing.
#
#   scripts/score_reference.sh [score_reference.py options]
#
# The environment lives in ${KVLENS_SCORE_VENV:-${KVLENS_HOME:-$HOME/.cache/kvlens}/venv-score}.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${KVLENS_SCORE_VENV:-${KVLENS_HOME:-$HOME/.cache/kvlens}/venv-score}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import rouge, jieba, fuzzywuzzy, numpy" 2>/dev/null; then
    "$venv/bin/pip" install --quiet "rouge==1.0.1" "jieba==0.42.1" "fuzzywuzzy==0.18.0" numpy
fi
if "$venv/bin/python" -c "import Levenshtein" 2>/dev/null; then
    echo "python-Levenshtein is installed in $venv; LongBench's fuzzywuzzy scores come from difflib" >&2
    exit 1
fi
exec "$venv/bin/python" "$here/score_reference.py" "$@"
