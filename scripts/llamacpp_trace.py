#!/usr/bin/env python3
"""llama.cpp's logits (and, on request, its intermediate tensors) along given token paths.

A debugging aid for the bit-level parity of kvlens's engine with llama.cpp. Run by hand after
`source scripts/llamacpp_env.sh`:

    $KVLENS_REF_PY scripts/llamacpp_trace.py MODEL.gguf CASES.json OUT_DIR [--names kq-0,l_out-0]

CASES.json is a list of {"prompt_ids": [...], "tokens": [...]} (the golden fixture's `greedy`
list works). For case i the prompt is evaluated in batches of 512 tokens, then each token of
`tokens` one at a time (as the greedy continuation was made); OUT_DIR/logits_i.f32 holds the logits after
the prompt and after each token (len(tokens)+1 rows of the vocabulary, little-endian f32).
With --names, every tensor of those names computed during the prompt of case 0 is written to
OUT_DIR/NAME.f32 (f32 or f16 tensors, as f32, in ggml's element order ne0 fastest), and
OUT_DIR/tensors.json lists their shapes. Only the last token's logits are computed (as
llama.cpp's own tools do), with an f16 cache and without flash attention.
"""
import argparse
import ctypes
import json
import os

import numpy as np
import llama_cpp


class GgmlTensor(ctypes.Structure):
    # The leading fields of `struct ggml_tensor` (ggml.h), enough to read a tensor's data.
    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
    ]


def read_tensor(t):
    ne = list(t.ne)
    nb = list(t.nb)
    if t.type == 0:
        dt, size = np.float32, 4
    elif t.type == 1:
        dt, size = np.float16, 2
    else:
        return None
    # Strided view over the tensor's bytes, then a contiguous f32 copy (ne0 fastest).
    span = sum((n - 1) * s for n, s in zip(ne, nb)) + size
    buf = (ctypes.c_char * span).from_address(t.data)
    arr = np.ndarray(shape=ne[::-1], dtype=dt, buffer=buf, strides=nb[::-1])
    return np.ascontiguousarray(arr).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("cases")
    ap.add_argument("out")
    ap.add_argument("--names", default="")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    cases = json.load(open(args.cases))
    if isinstance(cases, dict):
        cases = cases["greedy"]
    os.makedirs(args.out, exist_ok=True)
    wanted = set(n for n in args.names.split(",") if n)
    dumps = {}
    state = {"record": False}

    def cb(tp, ask, _ud):
        t = ctypes.cast(tp, ctypes.POINTER(GgmlTensor)).contents
        name = t.name.decode("utf-8", "replace")
        if ask:
            return name in wanted
        if state["record"] and name in wanted:
            a = read_tensor(t)
            if a is not None:
                dumps[name] = a
        return True

    cb_c = llama_cpp.ggml_backend_sched_eval_callback(cb)

    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(args.model.encode(), mp)
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    cp = llama_cpp.llama_context_default_params()
    longest = max(len(c["prompt_ids"]) + len(c["tokens"]) for c in cases)
    cp.n_ctx = max(512, -(-longest // 256) * 256)
    cp.n_batch = 512
    cp.n_ubatch = 512
    cp.n_threads = args.threads
    cp.n_threads_batch = args.threads
    cp.flash_attn_type = 0  # disabled
    if wanted:
        cp.cb_eval = cb_c
    ctx = llama_cpp.llama_init_from_model(model, cp)
    batch = llama_cpp.llama_batch_init(512, 0, 1)

    def decode(ids, pos0):
        # Batches of 512 tokens, as llama.cpp's tools feed a long prompt.
        for a in range(0, len(ids), 512):
            part = ids[a : a + 512]
            batch.n_tokens = len(part)
            for i, tok in enumerate(part):
                batch.token[i] = tok
                batch.pos[i] = pos0 + a + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = a + i == len(ids) - 1
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise SystemExit(f"llama_decode returned {rc}")
        p = llama_cpp.llama_get_logits_ith(ctx, -1)
        return np.ctypeslib.as_array(p, shape=(n_vocab,)).copy()

    mem = llama_cpp.llama_get_memory(ctx)
    for ci, case in enumerate(cases):
        llama_cpp.llama_memory_clear(mem, True)
        prompt = case["prompt_ids"]
        state["record"] = ci == 0
        rows = [decode(prompt, 0)]
        state["record"] = False
        for i, tok in enumerate(case["tokens"]):
            rows.append(decode([tok], len(prompt) + i))
        np.asarray(rows, dtype="<f4").tofile(os.path.join(args.out, f"logits_{ci}.f32"))
    shapes = {}
    for name, a in dumps.items():
        a.astype("<f4").tofile(os.path.join(args.out, f"{name}.f32"))
        shapes[name] = list(a.shape)
    with open(os.path.join(args.out, "tensors.json"), "w") as f:
        json.dump({"n_vocab": n_vocab, "cases": len(cases), "tensors": shapes}, f, indent=1)
    print(f"wrote {len(cases)} logit traces and {len(dumps)} tensors to {args.out}")


if __name__ == "__main__":
    main()
