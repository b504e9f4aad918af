#!/usr/bin/env python3
"""Golden token ids and greedy continuations from llama.cpp (llama-cpp-python).

Run by hand after `source scripts/llamacpp_env.sh`:
    $KVLENS_REF_PY scripts/make_golden.py models/SmolLM2-135M-Instruct.Q4_1.gguf \
        crates/kvlens-engine/tests/fixtures/llamacpp_golden.json
The Rust tests compare kvlens's tokenizer and greedy decoding (f16 KV cache) against it.
"""
import json
import random
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama

TEXTS = [
    "Hello world",
    "Hello, world! How are you today?",
    " leading space and  double  spaces",
    "Numbers: 0 1 12 123 1234 12345 3.14159 -42 1e10 2024-11-26",
    "Tabs\tand\ttabs\t\tdouble",
    "Line one\nLine two\n\nLine four\r\nWindows line",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < 10; ++i) { printf(\"%d\\n\", i); }",
    "Accents: café, naïve, façade, résumé, Ångström, São Paulo, Zürich",
    "中文文本测试：你好，世界！长上下文压缩。",
    "日本語のテキスト、カタカナとひらがな。한국어 문장입니다.",
    "Emoji: 🙂 👍🏽 🚀✨ 👨‍👩‍👧‍👦 and flags 🇫🇷",
    "Mixed: The passkey is 71432. Remember it. ÄÖÜ äöü ß €100",
    "   \n\t  whitespace only start",
    "URL https://example.com/path?q=1&r=two#frag and email a.b@c.org",
    "Punctuation!!! ??? ... --- *** ((nested)) [brackets] {braces} <angle>",
    "It's they're we've I'm you'll he'd DON'T",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "Text with a stray <|im_end|> marker inside",
    "<|endoftext|>",
]

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"

def chat(user):
    return SYSTEM + "<|im_start|>user\n" + user + "<|im_end|>\n<|im_start|>assistant\n"

PROMPTS = [
    ("chat", chat("What is the capital of France?")),
    ("chat", chat("Write a haiku about the sea.")),
    ("chat", chat("List three primary colors.")),
    ("chat", chat("What is 12 times 7?")),
    ("chat", chat("Explain gravity in one sentence.")),
    ("raw", "The quick brown fox jumps over the lazy dog. The quick brown fox"),
    ("raw", "Once upon a time, in a small village by the river,"),
    ("raw", "def add(a, b):\n    return"),
    # 513 token ids drawn at random (seeded): llama.cpp runs the last one as a batch of its
    # own (batches of 512), and on such a prompt that changes its logits.
    ("ids513", ""),
]

def main():
    path, out = sys.argv[1], sys.argv[2]
    # Only the last token's logits, as llama.cpp's own tools compute them (with every
    # token's, the output matrix of a prompt would go through another kernel).
    kw = dict(model_path=path, n_ctx=1024, n_batch=512, n_threads=2, verbose=False, seed=0, logits_all=False)
    try:
        llm = Llama(flash_attn=False, **kw)
    except TypeError:
        llm = Llama(**kw)
    tok = []
    for t in TEXTS:
        for special in (False, True):
            ids = llm.tokenize(t.encode("utf-8"), add_bos=False, special=special)
            tok.append({"text": t, "special": special, "ids": ids})
    greedy = []
    for kind, p in PROMPTS:
        ids = llm.tokenize(p.encode("utf-8"), add_bos=False, special=True)
        if kind == "ids513":
            # (a draw on which summing the last token as a batch of several moves the logits
            # by up to 0.43; on many other prompts it changes nothing)
            rng = random.Random(1)
            ids = [1] + [rng.randrange(100, 40000) for _ in range(512)]
            p = llm.detokenize(ids).decode("utf-8", errors="replace")
        llm.reset()
        llm.eval(ids)
        outs, margins, tops = [], [], []
        for _ in range(32):
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()
            nxt = int(np.argmax(logits))
            top2 = np.sort(logits)[-2:]
            outs.append(nxt)
            margins.append(round(float(top2[1] - top2[0]), 4))
            # The five largest logits, exactly (f32 values print and parse back exactly).
            best = np.argsort(-logits, kind="stable")[:5]
            tops.append([[int(i), float(logits[i])] for i in best])
            llm.eval([nxt])
        greedy.append({"kind": kind, "prompt": p, "prompt_ids": ids, "tokens": outs, "margins": margins, "top5": tops,
                       "text": llm.detokenize(outs).decode("utf-8", errors="replace")})
    doc = {
        "model": path.split("/")[-1],
        "llama_cpp_python": llama_cpp.__version__,
        "kv_cache": "f16",
        "tokenize": tok,
        "greedy": greedy,
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {out}: {len(tok)} tokenizations, {len(greedy)} greedy continuations")

if __name__ == "__main__":
    main()
