#!/usr/bin/env python3
"""Writes the analyzer benchmark: 20 tasks x 10 methods x 5,000 synthetic records (random
scores, lengths, times; ~200-character outputs; needle depth and context length in meta)
into the folder given, e.g. `python3 scripts/gen_analyze_bench.py /tmp/bench1m`."""
import os, sys, random
out = sys.argv[1]
random.seed(1)
tasks = [f"task{t:02d}" for t in range(20)]
methods = ["full"] + [f"m{k}:budget={64*k}" for k in range(1, 10)]
words = "the of and to in is was for on that with as by at from it an be this are".split()
texts = []
for i in range(500):
    s = " ".join(random.choice(words) for _ in range(45))[:200]
    texts.append(s)
for t in tasks:
    d = os.path.join(out, t); os.makedirs(d, exist_ok=True)
    for mi, m in enumerate(methods):
        lab = m.replace(":", "_").replace("=", "")
        with open(os.path.join(d, lab + ".jsonl"), "w") as f:
            for i in range(5000):
                r = random.random
                sc = round(r(), 3)
                ot = 20 + int(r() * 40)
                pf = 100 + r() * 50
                e2e = pf + ot * (20 + r() * 5)
                fin = "length" if r() < 0.1 else "eos"
                f.write('{"run_id":"bench","model":"m","task":"%s","sample_id":"%s-%05d","method":"%s","prompt_hash":"0123456789abcdef","prompt_tokens":1000,"truncated":false,"output_text":"%s","output_tokens":%d,"finish_reason":"%s","max_new_tokens":64,"prefill_ms":%.3f,"ttft_ms":%.3f,"decode_ms":%.3f,"e2e_ms":%.3f,"decode_ms_p50":20.0,"decode_ms_p90":24.0,"decode_ms_max":30.0,"prefill_shared":false,"kv_bytes_peak":%d,"kv_bytes_end":%d,"kv_bytes_full":24000000,"kv_tokens_kept":%d.0,"answers":["ans"],"first_line":false,"metric":"qa_f1","score":%s,"pass":%s,"pass_rule":"score >= 0.5","meta":{"depth":%.1f,"context_length":%d}}\n' % (
                    t, t, i, m, texts[(i + mi) % 500], ot, fin, pf, pf, e2e - pf, e2e,
                    24000000 if mi == 0 else 64 * mi * 24000, 24000000 if mi == 0 else 64 * mi * 24000, 1000, sc,
                    "true" if sc >= 0.5 else "false", (i % 5) / 4, 1000 * (1 + i % 4)))
