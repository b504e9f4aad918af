#!/usr/bin/env python3
"""llama.cpp's prefill and decode speed on the same prompt `kvlens bench` uses.

    source scripts/llamacpp_env.sh
    $KVLENS_REF_PY scripts/bench_llamacpp.py models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --context 2048 --new-tokens 64 --threads 2 [--batch 4]
Prints one JSON object: context, batch, prefill_tok_s, decode_tok_s. With --batch B, B
sequences of the same prompt (one sequence id each, each in its own cache stream, as
llama.cpp's default `kv_unified = false`) are prefilled one after another and then decoded
together, one `llama_batch` of B tokens per step, as `kvlens bench --batch B` decodes them;
decode_tok_s is B × new tokens over the decode steps' wall time.
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
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    if a.batch > 1:
        print(json.dumps(batched(a)))
        return
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

def batched(a):
    import llama_cpp as L

    L.llama_backend_init()
    model = L.llama_model_load_from_file(a.model.encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    per_seq = a.context + a.new_tokens + 16
    cp.n_ctx = per_seq * a.batch
    cp.n_batch = cp.n_ubatch = 512
    cp.n_seq_max = a.batch
    cp.n_threads = cp.n_threads_batch = a.threads
    cp.flash_attn_type = 0  # disabled, as the single-sequence measurement
    cp.kv_unified = False
    ctx = L.llama_init_from_model(model, cp)
    vocab = L.llama_model_get_vocab(model)
    buf = (L.llama_token * 4096)()
    n = L.llama_tokenize(vocab, FILLER.encode(), len(FILLER.encode()), buf, 4096, False, False)
    unit = list(buf[:n])
    ids = (unit * (a.context // len(unit) + 1))[: a.context]
    batch = L.llama_batch_init(max(512, a.batch), 0, a.batch)

    def run(items):
        # items: (token, pos, seq, wants logits)
        batch.n_tokens = len(items)
        for k, (tok, pos, seq, out) in enumerate(items):
            batch.token[k] = tok
            batch.pos[k] = pos
            batch.n_seq_id[k] = 1
            batch.seq_id[k][0] = seq
            batch.logits[k] = out
        if L.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")

    t0 = time.perf_counter()
    for seq in range(a.batch):
        for s0 in range(0, len(ids), 512):
            chunk = ids[s0 : s0 + 512]
            run([(t, s0 + k, seq, s0 + k == len(ids) - 1) for k, t in enumerate(chunk)])
    t1 = time.perf_counter()
    for step in range(a.new_tokens):
        run([(0, a.context + step, seq, True) for seq in range(a.batch)])
    t2 = time.perf_counter()
    L.llama_batch_free(batch)
    return {"engine": "llama.cpp", "batch": a.batch, "context": a.context, "new_tokens": a.new_tokens,
            "prefill_tok_s": a.batch * a.context / (t1 - t0),
            "decode_tok_s": a.batch * a.new_tokens / (t2 - t1)}

if __name__ == "__main__":
    main()
