#!/usr/bin/env bash
# Creates (once) a Python virtual environment with llama-cpp-python, built from source for
# this machine, for the reference scripts. Usage: source scripts/llamacpp_env.sh
set -euo pipefail
VENV="${KVLENS_REF_VENV:-$HOME/.cache/kvlens/venv-llamacpp}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  python3 -m venv "$VENV"
  # Not GGML_NATIVE: on CPUs with AMX a native build crashes in llama.cpp's AMX matrix kernel
  # on the first decode. The AVX2/AVX-512 kernels are the ones kvlens follows; AMX stays off.
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON \
    -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON \
    -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
    "$VENV/bin/pip" install --quiet "llama-cpp-python==0.3.36" numpy "gguf==0.17.1"
fi
export KVLENS_REF_PY="$VENV/bin/python"
