#!/usr/bin/env python3
"""kvlens beside llama.cpp on any GGUF file: greedy continuations and top logits, step by step.

For files too big for CI (or any file you want to trust). Run by hand after
`source scripts/llamacpp_env.sh` and `cargo build --release -p kvlens-cli`:

    $KVLENS_REF_PY scripts/compare_llamacpp.py MODEL.gguf [--tokens 32] [--kvlens PATH]
    $KVLENS_REF_PY scripts/compare_llamacpp.py --mixed OUT.gguf [--from models/SmolLM2-135M-Instruct.Q4_1.gguf]
    $KVLENS_REF_PY scripts/compare_llamacpp.py --quantize Q4_K_M OUT.gguf [--from ...]

Each prompt is tokenized by llama.cpp (special tokens parsed, so chat markers are markers) and
the same ids are given to both engines (`kvlens generate --prompt-ids`), each with an f16
cache, greedy, the last token's logits only. Printed per prompt: the step where the greedy
tokens first part (or `same`), the largest difference of the five top logits over the steps
both took alike, and both texts. Exit status 1 if any prompt parts.

--mixed first writes OUT.gguf: a copy of the default model (or --from) with formats mixed
matrix by matrix, as llama.cpp's quantizer mixes them (attn_q F16, attn_k Q8_0, attn_v Q5_1,
attn_output Q5_0, ffn_gate Q4_0, ffn_up Q4_1 and ffn_down Q8_0 in even layers; attn_q Q8_0,
attn_v Q8_0 and ffn_down Q5_0 in odd ones; embedding and output as they were), requantized
from the dequantized values with the gguf package's quantizers, then compares on it.

--quantize TYPE OUT.gguf has llama.cpp's own quantizer (llama_model_quantize, requantizing
--from) write OUT.gguf as a file of that type would be downloaded (Q4_K_M: Q4_K and Q6_K where
rows are a multiple of 256 wide, its fallbacks Q5_0/Q5_1/Q8_0 elsewhere), then compares on it.
"""
import argparse
import ctypes
import json
import subprocess
import sys

import numpy as np
from llama_cpp import Llama

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"

PROMPTS = [
    SYSTEM + "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    SYSTEM + "<|im_start|>user\nList three primary colors.<|im_end|>\n<|im_start|>assistant\n",
    SYSTEM + "<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "Once upon a time, in a small village by the river,",
    "def add(a, b):\n    return",
]

EVEN = {"attn_q": "F16", "attn_k": "Q8_0", "attn_v": "Q5_1", "attn_output": "Q5_0",
        "ffn_gate": "Q4_0", "ffn_up": "Q4_1", "ffn_down": "Q8_0"}
ODD = {"attn_q": "Q8_0", "attn_v": "Q8_0", "ffn_down": "Q5_0"}


def make_mixed(src, out):
    import gguf
    from gguf import GGMLQuantizationType as T
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"]
    arch = bytes(arch.parts[arch.data[0]]).decode()
    w = gguf.GGUFWriter(out, arch)
    for field in r.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[1]
            if sub == gguf.GGUFValueType.STRING:
                val = [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data]
            else:
                val = [field.parts[i].tolist()[0] for i in field.data]
            w.add_key_value(field.name, val, vtype, sub_type=sub)
        elif vtype == gguf.GGUFValueType.STRING:
            w.add_key_value(field.name, bytes(field.parts[field.data[0]]).decode("utf-8"), vtype)
        else:
            w.add_key_value(field.name, field.parts[field.data[0]].tolist()[0], vtype)
    changed = 0
    for t in r.tensors:
        parts = t.name.split(".")
        want = None
        if len(parts) == 4 and parts[0] == "blk":
            want = (EVEN if int(parts[1]) % 2 == 0 else ODD).get(parts[2])
        shape = [int(x) for x in reversed(t.shape.tolist())]  # numpy order: rows first
        if want is None:
            w.add_tensor(t.name, np.asarray(t.data), raw_shape=np.asarray(t.data).shape, raw_dtype=t.tensor_type)
            continue
        f32 = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape).astype(np.float32)
        qt = getattr(T, want)
        if qt == T.F16:
            w.add_tensor(t.name, f32.astype(np.float16))
        else:
            q = gguf.quants.quantize(f32, qt)
            w.add_tensor(t.name, q, raw_shape=q.shape, raw_dtype=qt)
        changed += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out}: {changed} matrices requantized", file=sys.stderr)


def llama_steps(llm, ids, n, k=5):
    llm.reset()
    llm.eval(ids)
    toks, tops = [], []
    for _ in range(n):
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()
        best = np.argsort(-logits, kind="stable")[:k]
        tops.append([(int(i), float(logits[i])) for i in best])
        nxt = int(best[0])
        if llm.token_eos() == nxt:
            break
        toks.append(nxt)
        llm.eval([nxt])
    return toks, tops


FTYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q4_K_S": 14, "Q4_K_M": 15,
          "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18}


def quantize(src, out, kind, pure=False):
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.allow_requantize = True
    params.pure = pure
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(src.encode(), out.encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize failed ({rc})")
    print(f"wrote {out}: {kind} by llama.cpp's quantizer", file=sys.stderr)


def kvlens_steps(binary, model, ids, n, k=5):
    cmd = [binary, "generate", "--model", model, "--prompt-ids", ",".join(map(str, ids)),
           "--max-new-tokens", str(n), "--kv-dtype", "f16", "--top-logits", str(k), "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    g = json.loads(out)
    return g["tokens"], [[(int(i), float(v)) for i, v in step] for step in g["top_logits"]], g


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--mixed", metavar="OUT", help="write a mixed-format copy of --from and compare on it")
    ap.add_argument("--quantize", nargs=2, metavar=("TYPE", "OUT"), help=f"one of {', '.join(FTYPES)}")
    ap.add_argument("--pure", action="store_true", help="--quantize: every matrix in TYPE where its width allows (llama.cpp's --pure)")
    ap.add_argument("--from", dest="src", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--kvlens", default="target/release/kvlens")
    a = ap.parse_args()
    model = a.model
    if a.mixed:
        make_mixed(a.src, a.mixed)
        model = a.mixed
    if a.quantize:
        quantize(a.src, a.quantize[1], a.quantize[0], a.pure)
        model = a.quantize[1]
    if not model:
        ap.error("give MODEL.gguf, --mixed OUT.gguf or --quantize TYPE OUT.gguf")
    kw = dict(model_path=model, n_ctx=1024, n_batch=512, n_threads=2, verbose=False, seed=0, logits_all=False)
    try:
        llm = Llama(flash_attn=False, **kw)
    except TypeError:
        llm = Llama(**kw)
    parted = 0
    for p in PROMPTS:
        ids = llm.tokenize(p.encode("utf-8"), add_bos=True, special=True)
        ref_toks, ref_tops = llama_steps(llm, ids, a.tokens)
        our_toks, our_tops, g = kvlens_steps(a.kvlens, model, ids, a.tokens)
        first = next((i for i, (x, y) in enumerate(zip(ref_toks, our_toks)) if x != y), None)
        if first is None and len(ref_toks) != len(our_toks):
            first = min(len(ref_toks), len(our_toks))
        alike = len(ref_toks) if first is None else first
        worst = 0.0
        for rt, ot in zip(ref_tops[: alike + 1], our_tops[: alike + 1]):
            ours = dict(ot)
            for i, v in rt:
                if i in ours:
                    worst = max(worst, abs(ours[i] - v))
        verdict = "same" if first is None else f"parts at step {first}"
        parted += first is not None
        print(f"{verdict:>16}  top-5 max |Δlogit| {worst:.3g}  ({len(ids)} prompt tokens, weights {g.get('weights')})")
        print(f"   llama.cpp: {llm.detokenize(ref_toks).decode('utf-8', errors='replace')!r}")
        print(f"   kvlens:    {g['text']!r}")
    print(f"{len(PROMPTS) - parted}/{len(PROMPTS)} prompts with the same greedy continuation")
    sys.exit(1 if parted else 0)


if __name__ == "__main__":
    main()
