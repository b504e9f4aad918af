#!/usr/bin/env python3
"""llama.cpp's prefill and decode speed on the same prompt `kvlens bench` uses.

    source scripts/llamacpp_env.sh
    $KVLENS_REF_PY scripts/bench_llamacpp.py models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --context 2048 --new-tokens 64 --threads 2
Prints one JSON object: context, prefill_tok_s, decode_tok_s.
"""
import argparse
import json
import time

from llama_cpp import Llama

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    kw = dict(model_path=a.model, n_ctx=a.context + a.new_tokens + 16, n_batch=512,
              n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    try:
        llm = Llama(flash_attn=False, **kw)
    except TypeError:
        llm = Llama(**kw)
    unit = llm.tokenize(FILLER.encode(), add_bos=False, special=False)
    ids = (unit * (a.context // len(unit) + 1))[: a.context]
    best = None
    for _ in range(a.repeat):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        nxt = 0
        for _ in range(a.new_tokens):
            llm.eval([nxt])
        t2 = time.perf_counter()
        row = {"engine": "llama.cpp", "context": a.context, "new_tokens": a.new_tokens,
               "prefill_tok_s": a.context / (t1 - t0), "decode_tok_s": a.new_tokens / (t2 - t1)}
        if best is None or row["prefill_tok_s"] > best["prefill_tok_s"]:
            best = row
    print(json.dumps(best))

if __name__ == "__main__":
    main()
