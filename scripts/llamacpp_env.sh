#!/usr/bin/env bash
# Creates (once) a Python virtual environment with llama-cpp-python, built from source for
# this machine, for the reference scripts. Usage: source scripts/llamacpp_env.sh
set -euo pipefail
VENV="${KVLENS_REF_VENV:-$HOME/.cache/kvlens/venv-llamacpp}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  python3 -m venv "$VENV"
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" CMAKE_ARGS="-DGGML_NATIVE=ON" \
    "$VENV/bin/pip" install --quiet "llama-cpp-python==0.3.36" numpy
fi
export KVLENS_REF_PY="$VENV/bin/python"
