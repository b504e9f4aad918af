#!/usr/bin/env python3
"""Reference scores for kvlens-score's parity tests.

Generates a seeded corpus of prediction/answer pairs covering every metric of
crates/kvlens-score and its edge cases, scores each pair with the reference implementations
(LongBench v1 metrics.py and eval.py's max over answers, with the packages LongBench pins:
rouge==1.0.1, jieba==0.42.1, fuzzywuzzy==0.18.0 without python-Levenshtein; RULER's
string_match_all/part; SQuAD v1.1's evaluate script; kvlens's math rule, which has no official
implementation and is mirrored from crates/kvlens-score/src/math.rs), and writes:

  crates/kvlens-score/tests/fixtures/parity.jsonl          one pair per line
  crates/kvlens-score/tests/fixtures/dataset_scores.jsonl  round(100 * np.mean(s), 2) groups
  crates/kvlens-score/tests/fixtures/jieba_tokens.jsonl    jieba.cut() of Chinese texts

and prints how long the metric functions alone took (Python start-up and jieba's dictionary
load excluded). Run it through scripts/score_reference.sh, which makes the environment.

The LongBench functions below are written from metrics.py's behaviour, statement by
statement, and are called at the same Python stack depth as eval.py calls them
(<module> -> scorer -> metric): rouge 1.0.1 recurses once per LCS step, and whether a long
sentence raises RecursionError (and so scores 0.0) depends on that depth.
"""
import argparse
import json
import os
import random
import re
import string
import sys
import time
import warnings
from collections import Counter

warnings.filterwarnings("ignore", message="Using slow pure-python SequenceMatcher")

import jieba  # noqa: E402
import numpy as np  # noqa: E402
from fuzzywuzzy import fuzz  # noqa: E402
from rouge import Rouge  # noqa: E402

jieba.setLogLevel(60)

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
FIXTURES = os.path.join(ROOT, "crates", "kvlens-score", "tests", "fixtures")

# --------------------------------------------------------------------------------------------
# Reference metrics. LongBench v1 metrics.py, same semantics and call structure.
# --------------------------------------------------------------------------------------------


def normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


CN_PUNCTUATION = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)


def normalize_zh_answer(s):
    all_punctuation = set(string.punctuation + CN_PUNCTUATION)
    text = "".join(ch for ch in s.lower() if ch not in all_punctuation)
    return "".join(text.split())


def count_score(prediction, ground_truth, **kwargs):
    numbers = re.findall(r"\d+", prediction)
    right_num = sum(1 for number in numbers if str(number) == str(ground_truth))
    return 0.0 if len(numbers) == 0 else float(right_num / len(numbers))


def _share_of_id(prediction, pattern, ground_truth):
    ground_truth_id = re.findall(pattern, ground_truth)[0]
    numbers = re.findall(r"\d+", prediction)
    right_num = sum(1 for number in numbers if str(number) == str(ground_truth_id))
    return 0.0 if len(numbers) == 0 else float(right_num / len(numbers))


def retrieval_score(prediction, ground_truth, **kwargs):
    return _share_of_id(prediction, r"Paragraph (\d+)", ground_truth)


def retrieval_zh_score(prediction, ground_truth, **kwargs):
    return _share_of_id(prediction, r"段落(\d+)", ground_truth)


def code_sim_score(prediction, ground_truth, **kwargs):
    line = ""
    for candidate in prediction.lstrip("\n").split("\n"):
        if ("`" not in candidate) and ("#" not in candidate) and ("//" not in candidate):
            line = candidate
            break
    return fuzz.ratio(line, ground_truth) / 100


def classification_score(prediction, ground_truth, **kwargs):
    em_match_list = [c for c in kwargs["all_classes"] if c in prediction]
    # metrics.py removes from the list it is iterating over; keep that.
    for match_term in em_match_list:
        if match_term in ground_truth and match_term != ground_truth:
            em_match_list.remove(match_term)
    if ground_truth in em_match_list:
        return 1.0 / len(em_match_list)
    return 0.0


def rouge_score(prediction, ground_truth, **kwargs):
    rouge = Rouge()
    try:
        scores = rouge.get_scores([prediction], [ground_truth], avg=True)
    except:  # noqa: E722 -- as metrics.py: any failure scores 0.0
        return 0.0
    return scores["rouge-l"]["f"]


def rouge_zh_score(prediction, ground_truth, **kwargs):
    prediction = " ".join(list(jieba.cut(prediction, cut_all=False)))
    ground_truth = " ".join(list(jieba.cut(ground_truth, cut_all=False)))
    return rouge_score(prediction, ground_truth)


def f1_score(prediction, ground_truth, **kwargs):
    common = Counter(prediction) & Counter(ground_truth)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction)
    recall = 1.0 * num_same / len(ground_truth)
    return (2 * precision * recall) / (precision + recall)


def qa_f1_score(prediction, ground_truth, **kwargs):
    return f1_score(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def qa_f1_zh_score(prediction, ground_truth, **kwargs):
    def tokens(text):
        words = [normalize_zh_answer(t) for t in jieba.cut(text, cut_all=False)]
        return [w for w in words if len(w) > 0]

    return f1_score(tokens(prediction), tokens(ground_truth))


LONGBENCH = {
    "qa_f1": qa_f1_score,
    "qa_f1_zh": qa_f1_zh_score,
    "rouge": rouge_score,
    "rouge_zh": rouge_zh_score,
    "classification": classification_score,
    "retrieval": retrieval_score,
    "retrieval_zh": retrieval_zh_score,
    "count": count_score,
    "code_sim": code_sim_score,
}

# RULER scripts/eval/synthetic/constants.py, per sample.


def string_match_all(pred, refs):
    return sum([1.0 if r.lower() in pred.lower() else 0.0 for r in refs]) / len(refs)


def string_match_part(pred, refs):
    return max([1.0 if r.lower() in pred.lower() else 0.0 for r in refs])


# SQuAD v1.1 evaluate-v1.1.py.


def squad_exact_match(prediction, answers):
    return max(float(normalize_answer(prediction) == normalize_answer(gt)) for gt in answers)


def squad_f1(prediction, answers):
    p = normalize_answer(prediction).split()
    return max(f1_score(p, normalize_answer(gt).split()) for gt in answers)


# kvlens math rule (crates/kvlens-score/src/math.rs documents it), written independently.

def _read_decimal(t, i):
    j = i
    digits = ""
    while j < len(t) and t[j] in string.digits:
        digits += t[j]
        j += 1
        if j < len(t) and t[j] == ",":
            group = t[j + 1:j + 4]
            after = t[j + 4:j + 5]
            if len(group) == 3 and all(c in string.digits for c in group) and not (after and after in string.digits):
                j += 1
    if j + 1 < len(t) and t[j] == "." and t[j + 1] in string.digits:
        digits += "."
        j += 1
        while j < len(t) and t[j] in string.digits:
            digits += t[j]
            j += 1
    if digits.startswith("."):
        digits = "0" + digits
    return float(digits), j


def _numbers(t):
    out = []
    i = 0
    while i < len(t):
        c = t[i]
        starts = c in string.digits or (
            c == "." and i + 1 < len(t) and t[i + 1] in string.digits and (i == 0 or t[i - 1] not in string.digits)
        )
        if not starts:
            i += 1
            continue
        value, end = _read_decimal(t, i)
        if end + 1 < len(t) and t[end] == "/" and t[end + 1] in string.digits:
            den, den_end = _read_decimal(t, end + 1)
            if den != 0.0:
                value, end = value / den, den_end
            else:
                end = den_end
        before = t[:i]
        if before.endswith("$"):
            before = before[:-1]
        if before.endswith("-") or before.endswith("\u2212"):
            prev = before[:-1][-1:]
            if not (prev and prev.isascii() and prev.isalnum()):
                value = -value
        out.append(value)
        i = end
    return out


def _last_boxed(t):
    at = t.rfind("\\boxed{")
    if at < 0:
        return None
    start = at + len("\\boxed{")
    depth = 1
    for k in range(start, len(t)):
        if t[k] == "{":
            depth += 1
        elif t[k] == "}":
            depth -= 1
            if depth == 0:
                return t[start:k]
    return None


def _latex_fraction(content):
    s = content.strip(" \t\n\r$")
    negative = s.startswith("-")
    if negative:
        s = s[1:].lstrip(" \t\n\r")
    for prefix in ("\\frac{", "\\dfrac{", "\\tfrac{"):
        if s.startswith(prefix):
            s = s[len(prefix):]
            break
    else:
        return None
    num, sep, rest = s.partition("}{")
    if not sep or not rest.endswith("}"):
        return None
    den = rest[:-1]

    def plain(x):
        x = x.strip(" \t\n\r")
        if x == "" or not all(c in "0123456789." for c in x):
            return None
        try:
            return float(x)
        except ValueError:
            return None

    a, b = plain(num), plain(den)
    if a is None or b is None or b == 0.0:
        return None
    return -(a / b) if negative else a / b


def math_extract(t):
    at = t.rfind("####")
    if at >= 0:
        nums = _numbers(t[at + 4:])
        if nums:
            return nums[0]
    content = _last_boxed(t)
    if content is not None:
        v = _latex_fraction(content)
        if v is not None:
            return v
        nums = _numbers(content)
        if nums:
            return nums[0]
    low = "".join(c.lower() if c.isascii() else c for c in t)
    at = low.rfind("the answer is")
    if at >= 0:
        nums = _numbers(t[at + len("the answer is"):])
        if nums:
            return nums[0]
    nums = _numbers(t)
    return nums[-1] if nums else None


def math_score(prediction, answers):
    p = math_extract(prediction)
    if p is None:
        return 0.0
    for gold in answers:
        g = math_extract(gold)
        if g is not None and abs(p - g) <= 1e-9 * max(1.0, abs(g)):
            return 1.0
    return 0.0


def scorer(pairs):
    """Score every pair as eval.py's scorer does: max over answers from 0.0. Called from module
    level so each LongBench metric runs at eval.py's stack depth."""
    out = []
    for metric, prediction, answers, all_classes in pairs:
        fn = LONGBENCH.get(metric)
        if fn is not None:
            score = 0.0
            for ground_truth in answers:
                score = max(score, fn(prediction, ground_truth, all_classes=all_classes))
        elif not answers:
            score = 0.0
        elif metric == "string_match_all":
            score = string_match_all(prediction, answers)
        elif metric == "string_match_part":
            score = string_match_part(prediction, answers)
        elif metric == "exact_match":
            score = squad_exact_match(prediction, answers)
        elif metric == "squad_f1":
            score = squad_f1(prediction, answers)
        elif metric == "math":
            score = math_score(prediction, answers)
        else:
            raise ValueError(metric)
        out.append(float(score))
    return out


# --------------------------------------------------------------------------------------------
# Corpus generator.
# --------------------------------------------------------------------------------------------

WORDS = """time person year way day thing man world life hand part child eye woman place work week
case point government company number group problem fact river city mountain history music science
report summary meeting council budget policy school student teacher doctor hospital market price
energy water island village bridge castle forest ocean desert storm winter summer autumn spring
king queen president minister author novel poem film album song band team player coach match
season league cup goal game battle army war peace treaty empire republic state county province
nation border language culture religion church temple museum library university college degree
research study theory model system network computer software data memory cache key value token
attention layer budget window sink residual group bits paper method result table figure answer
question reason cause effect change growth decline increase decrease north south east west early
late first second third last new old great small large long short high low young good bad red
blue green black white open close run walk speak write read build grow move play live die give
take make find know think see come go say tell ask use try leave call keep begin seem help show
hear turn start might must could would should may will can is are was were be been being have
has had do does did not no yes and or but if then so because although while after before since
until during about above across against along among around behind below beneath beside between
beyond into near off onto out over past through toward under upon within without""".split()

NAMES = """Alice Bob Carol David Erin Frank Grace Heidi Ivan Judy Mallory Niaj Olivia Peggy Rupert
Sybil Trent Victor Walter London Paris Berlin Tokyo Denver Broncos Amazon Nile Everest Einstein
Newton Curie Darwin Shakespeare Tolkien Beethoven Mozart Picasso Napoleon Cleopatra""".split()

UNICODE_BITS = [
    "café", "naïve", "Straße", "STRASSE", "ẞ", "İstanbul", "ıi", "ΟΔΟΣ", "ΣΊΣΥΦΟΣ", "ΑΣ'", "Σ",
    "Ωmega", "ǅungla", "ﬁnance", "Ⅷ", "Ⓐⓑ", "ᾼ", "e\u0301", "क्षि", "١٢٣", "１２３", "²³", "½",
    "🙂", "👍🏽", "zero\u200bwidth", "no\u00a0break", "ideo\u3000space", "thin\u2009space",
    "sep\x1crs", "unit\x1fsep", "next\x85line", "line\u2028sep", "\ufeffbom", "Ꭰꭰ", "𐐀𐐨",
    "K", "Å", "ι\u0345", "ʰmod", "Ǆ", "Ａｂｃ", "élan-vital", "«the»", "“a”", "the—an", "a…the",
    "\u0130I", "ΣΑΣ ΣΑ", "Ὀδυσσεύς", "Ꙁ", "ǲ", "Ϊ", "Ⅰⅱ", "𝐀𝐁", "Ⓜ", "ǰ", "ŉ",
]

PUNCT_ONLY = ["", " ", "  \n\t ", "\u3000", "\x1c\x1d", "\u00a0", ".", "...", "!?", ",;:", "—", "。", "？！",
              "``", "#", "//", "\n\n\n", "---", "(…)", "«»", "\u200b"]


def dict_words():
    path = os.path.join(os.path.dirname(jieba.__file__), "dict.txt")
    common, rare = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            word, freq, _tag = line.rstrip("\n").split(" ")
            if not all("\u4e00" <= c <= "\u9fd5" for c in word):
                continue
            (common if int(freq) >= 2000 else rare).append(word)
    return common, rare


ZH_COMMON, ZH_RARE = dict_words()
ZH_PUNCT = list("，。、；：？！“”‘’（）《》【】—…·「」『』") + ["——", "……"]
ZH_EXTRA = ["㐀㑇", "𠀀𠁆", "豈", "\u9fd6\u9fea", "\u9fff", "ＡＢＣ", "3.5%", "v1.2.3-rc_1", "AT&T", "C++", "c#",
            "B超", "T恤", "iPhone", "\r\n", "2024年", "第3章", "1.5.2", "a-b", "x_y", "50%", "100.00",
            "GPT-4", "e.g.", "段落12", "Paragraph 7", " ", "\t", "\u3000", "１２", "٣"]


def zh_char(r):
    return chr(r.randint(0x4E00, 0x9FD5))


def zh_text(r, n_words, extras=0.08, punct=0.1):
    out = []
    for _ in range(n_words):
        x = r.random()
        if x < extras:
            out.append(r.choice(ZH_EXTRA))
        elif x < extras + punct:
            out.append(r.choice(ZH_PUNCT))
        elif x < extras + punct + 0.12:
            out.append("".join(zh_char(r) for _ in range(r.randint(1, 3))))  # unknown to the dictionary
        elif x < extras + punct + 0.2:
            out.append(r.choice(ZH_RARE))
        elif x < extras + punct + 0.24:
            out.append(r.choice(WORDS))
        else:
            out.append(r.choice(ZH_COMMON))
    return "".join(out)


def en_words(r, n, unicode_rate=0.0, name_rate=0.05, number_rate=0.03):
    out = []
    for _ in range(n):
        x = r.random()
        if x < unicode_rate:
            out.append(r.choice(UNICODE_BITS))
        elif x < unicode_rate + name_rate:
            out.append(r.choice(NAMES))
        elif x < unicode_rate + name_rate + number_rate:
            out.append(str(r.choice([r.randint(0, 20), r.randint(100, 99999), r.random() * 100])))
        else:
            out.append(r.choice(WORDS))
    return out


def en_sentence(r, n, **kw):
    words = en_words(r, n, **kw)
    if words and r.random() < 0.5:
        words[0] = words[0].capitalize()
    sep = r.choice([" "] * 12 + ["  ", " \n", "\t", "\u00a0", "\u3000", "\x1c"])
    return sep.join(words)


def perturb_en(r, answer):
    """A prediction related to `answer`, the ways models and graders differ."""
    words = answer.split()
    k = r.randint(0, 11)
    if k == 0:
        return answer
    if k == 1:
        return answer.upper() if r.random() < 0.5 else answer.lower()
    if k == 2:
        return r.choice(["The ", "A ", "an ", "the the "]) + answer + r.choice([".", "!", "", " .", "..."])
    if k == 3:
        return en_sentence(r, r.randint(2, 8)) + " " + answer + " " + en_sentence(r, r.randint(0, 8))
    if k == 4 and words:
        return " ".join(r.sample(words, k=max(1, len(words) // 2)))
    if k == 5:
        return en_sentence(r, r.randint(1, 12))
    if k == 6:
        return "".join(c + r.choice(["", "", "", ",", "-", "'", "\u00a0"]) for c in answer)
    if k == 7:
        return answer + "\n" + en_sentence(r, r.randint(1, 10))
    if k == 8:
        return " ".join(w for w in words for _ in range(r.randint(1, 3)))
    if k == 9:
        return r.choice(PUNCT_ONLY)
    if k == 10:
        return r.choice(UNICODE_BITS) + " " + answer + " " + r.choice(UNICODE_BITS)
    return en_sentence(r, r.randint(1, 6), unicode_rate=0.4)


def gen_qa(r, metric, n):
    pairs = []
    for i in range(n):
        n_answers = r.choice([1, 1, 1, 2, 3, 4])
        if i % 50 == 7:
            n_answers = 0
        answers = []
        for _ in range(n_answers):
            x = r.random()
            if x < 0.1:
                answers.append(r.choice(NAMES) + " " + r.choice(NAMES))
            elif x < 0.2:
                answers.append(r.choice(["the ", "a ", "An ", "THE "]) + en_sentence(r, r.randint(1, 3)))
            elif x < 0.3:
                answers.append(en_sentence(r, r.randint(1, 4), unicode_rate=0.5))
            elif x < 0.35:
                answers.append(r.choice(PUNCT_ONLY))
            elif x < 0.45:
                answers.append(str(r.randint(0, 3000)))
            else:
                answers.append(en_sentence(r, r.randint(1, 7), name_rate=0.2))
        base = r.choice(answers) if answers else en_sentence(r, 3)
        if i % 40 == 3:
            prediction = en_sentence(r, r.randint(1500, 3000))  # a very long line
        else:
            prediction = perturb_en(r, base)
        pairs.append((metric, prediction, answers, []))
    return pairs


def perturb_zh(r, answer):
    k = r.randint(0, 8)
    if k == 0:
        return answer
    if k == 1:
        return zh_text(r, r.randint(1, 6)) + answer + zh_text(r, r.randint(0, 6))
    if k == 2:
        toks = list(jieba.cut(answer))
        r.shuffle(toks)
        return "".join(toks[: max(1, len(toks) * 2 // 3)])
    if k == 3:
        return zh_text(r, r.randint(1, 15))
    if k == 4:
        return r.choice(PUNCT_ONLY)
    if k == 5:
        return " ".join(jieba.cut(answer))
    if k == 6:
        return answer + "\n" + zh_text(r, r.randint(3, 20))
    if k == 7:
        return "".join(r.choice(ZH_EXTRA) + c for c in answer[:20])
    return answer.replace("，", ",").replace("。", ".") + r.choice(["。", "！", ".", ""])


def gen_qa_zh(r, n):
    pairs = []
    for i in range(n):
        answers = [zh_text(r, r.randint(1, 8)) for _ in range(r.choice([1, 1, 1, 2, 3]))]
        if i % 60 == 5:
            answers = []
        base = r.choice(answers) if answers else zh_text(r, 4)
        prediction = zh_text(r, r.randint(300, 600)) if i % 50 == 9 else perturb_zh(r, base)
        pairs.append(("qa_f1_zh", prediction, answers, []))
    return pairs


def summary(r, n_sentences, words=(4, 20), unicode_rate=0.02):
    parts = []
    for _ in range(n_sentences):
        s = en_sentence(r, r.randint(*words), unicode_rate=unicode_rate)
        end = r.choice([". ", ". ", ". ", ".\n", "! ", "? ", "... ", " . ", ".  ", ". . ", "\n", "; "])
        parts.append(s + end)
    text = "".join(parts)
    if r.random() < 0.2:
        text = text.replace(" ", " e.g. ", 1)
    if r.random() < 0.2:
        text += " " + str(round(r.random() * 100, r.randint(1, 3)))
    return text


def perturb_summary(r, ref):
    sentences = [s for s in ref.split(".") if s.strip()]
    k = r.randint(0, 6)
    if k == 0:
        return ref
    if k == 1 and sentences:
        r.shuffle(sentences)
        return ". ".join(sentences[: max(1, len(sentences) // 2)]) + "."
    if k == 2:
        words = ref.split()
        return " ".join(w for w in words if r.random() < 0.7)
    if k == 3:
        words = ref.split()
        for _ in range(len(words) // 5):
            words[r.randrange(len(words))] = r.choice(WORDS)
        return " ".join(words)
    if k == 4:
        return summary(r, r.randint(1, 8))
    if k == 5:
        return r.choice(PUNCT_ONLY)
    return ref.replace(". ", ".\n\n")


def long_pair(r, k_ref, k_hyp, shared=1.0, prefix=""):
    """One long sentence each (no '.'), for rouge's recursion limit."""
    vocab = [f"w{i}" for i in range(max(k_ref, k_hyp) * 2)]
    ref = vocab[:k_ref]
    hyp = [w if r.random() < shared else r.choice(vocab) for w in vocab[:k_hyp]]
    return prefix + " ".join(hyp), " ".join(ref)


def gen_rouge(r, n):
    pairs = []
    # Around the recursion limit: identical sentences of k words take k traceback steps.
    for k in (985, 988, 989, 990, 991, 992, 995, 1200):
        h, g = long_pair(r, k, k)
        pairs.append(("rouge", h, [g], []))
    for k_ref, k_hyp, shared in ((1500, 400, 0.5), (600, 600, 0.7), (980, 30, 0.9), (40, 990, 0.9)):
        h, g = long_pair(r, k_ref, k_hyp, shared)
        pairs.append(("rouge", h, [g], []))
    _, g = long_pair(r, 3000, 2)
    pairs.append(("rouge", "w2998 w2999", [g], []))  # the traceback takes 2 steps
    pairs.append(("rouge", "w0 w1", [g], []))  # the traceback walks 3000 rows up
    for i in range(n - len(pairs)):
        answers = [summary(r, r.randint(1, 12)) for _ in range(r.choice([1, 1, 1, 2]))]
        if i % 50 == 11:
            answers = [r.choice(PUNCT_ONLY)]
        if i % 70 == 13:
            answers = []
        base = answers[0] if answers else summary(r, 3)
        prediction = perturb_summary(r, base)
        if i % 25 == 4:
            prediction = summary(r, r.randint(20, 40), words=(10, 30))
        pairs.append(("rouge", prediction, answers, []))
    return pairs


def gen_rouge_zh(r, n):
    pairs = []
    # ASCII words separated by spaces become exactly one rouge word each: the traceback
    # length is known (rouge_zh runs one Python frame deeper than rouge).
    for k in (987, 988, 989, 990, 991):
        h, g = long_pair(r, k, k)
        pairs.append(("rouge_zh", h, [g], []))
    for i in range(n - len(pairs)):
        answers = [zh_text(r, r.randint(5, 60)) for _ in range(r.choice([1, 1, 2]))]
        if i % 40 == 17:
            answers = [zh_text(r, r.randint(200, 400))]
        if i % 60 == 21:
            answers = []
        base = answers[0] if answers else zh_text(r, 10)
        prediction = perturb_zh(r, base)
        if i % 40 == 17:
            prediction = zh_text(r, r.randint(300, 500))
        if i % 30 == 2:
            prediction = base.replace("。", ". ")
        pairs.append(("rouge_zh", prediction, answers, []))
    return pairs


TREC = ["Abbreviation", "Entity", "Description", "Human being", "Location", "Numeric value",
        "Manner", "Reason", "Definition", "Description and abstract concept", "City", "Country",
        "Other location", "Date", "Distance", "Money", "Other number"]
LSHT = ["体育", "体育新闻", "财经", "财经新闻", "教育", "科技", "娱乐", "时政", "时尚", "游戏", "家居", "房产", "新闻"]
SUBSTRINGS = ["a", "ab", "abc", "b", "bc", "abcd", "c", "", "ab c", "AB"]


def gen_classification(r, n):
    pairs = []
    for i in range(n):
        pool = r.choice([TREC, LSHT, SUBSTRINGS])
        all_classes = r.sample(pool, k=r.randint(1, len(pool)))
        if r.random() < 0.15:
            all_classes += r.sample(all_classes, k=min(len(all_classes), r.randint(1, 3)))  # duplicates
        gt_pool = all_classes if r.random() < 0.9 else pool
        answers = [r.choice(gt_pool) for _ in range(r.choice([1, 1, 1, 2]))]
        k = r.randint(0, 5)
        if k == 0:
            prediction = answers[0]
        elif k == 1:
            prediction = "Type: " + ", ".join(r.sample(all_classes, k=r.randint(1, min(4, len(all_classes)))))
        elif k == 2:
            prediction = "".join(r.sample(pool, k=r.randint(1, min(3, len(pool)))))
        elif k == 3:
            prediction = r.choice(PUNCT_ONLY)
        elif k == 4:
            prediction = answers[0].lower() + "\n" + r.choice(pool)
        else:
            prediction = en_sentence(r, 5) + " " + r.choice(pool)
        pairs.append(("classification", prediction, answers, all_classes))
    return pairs


DIGIT_FORMS = [lambda n: str(n), lambda n: "0" + str(n), lambda n: "".join(chr(0xFF10 + int(d)) for d in str(n)),
               lambda n: "".join(chr(0x660 + int(d)) for d in str(n))]


def gen_retrieval(r, n, zh=False):
    label = "段落" if zh else "Paragraph "
    metric = "retrieval_zh" if zh else "retrieval"
    pairs = []
    for i in range(n):
        target = r.randint(1, 40)
        answers = [f"{label}{target}"]
        if r.random() < 0.1:
            answers = [f"{label}{target} and {label}{r.randint(1, 40)}"]
        if r.random() < 0.05:
            answers.append(f"{label}{r.randint(1, 40)}")
        k = r.randint(0, 6)
        form = r.choice(DIGIT_FORMS)
        if k == 0:
            prediction = answers[0]
        elif k == 1:
            prediction = f"{label}{form(target)}"
        elif k == 2:
            prediction = " ".join(f"{label}{r.randint(1, 40)}" for _ in range(r.randint(1, 4)))
        elif k == 3:
            prediction = r.choice(PUNCT_ONLY)
        elif k == 4:
            prediction = f"The answer is {label.lower()}{target}, since {r.randint(0, 99)} words match."
        elif k == 5:
            prediction = zh_text(r, 5) + str(target) if zh else en_sentence(r, 6)
        else:
            prediction = f"{label}{target}{r.randint(0, 9)}"
        pairs.append((metric, prediction, answers, []))
    return pairs


def gen_count(r, n):
    pairs = []
    for i in range(n):
        target = r.randint(0, 30)
        answers = [str(target)]  # LongBench's passage_count answers are ints; str() of them
        k = r.randint(0, 5)
        form = r.choice(DIGIT_FORMS)
        if k == 0:
            prediction = str(target)
        elif k == 1:
            prediction = f"There are {form(target)} unique paragraphs."
        elif k == 2:
            prediction = ", ".join(str(r.randint(0, 30)) for _ in range(r.randint(1, 6)))
        elif k == 3:
            prediction = r.choice(PUNCT_ONLY)
        elif k == 4:
            prediction = f"{target} out of {r.randint(10, 40)} paragraphs; {target}"
        else:
            prediction = f"{target}{target}"
        pairs.append(("count", prediction, answers, []))
    return pairs


CODE_LINES = [
    "def forward(self, x, index_pos):", "    return self.proj(x) + residual", "for i in range(len(values)):",
    "if (count > 0 && !done) {", "    std::vector<int> out(n, 0);", "public static void main(String[] args) {",
    "let mut cache = HashMap::new();", "x = torch.cat([a, b], dim=-1)", "    result.append(item['value'])",
    "}", "return 0;", "self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])",
    "const char *name = \"kvlens\";", "    print(f\"{name}: {value:.2f}\")", "while (i < n) i++;",
    "import numpy as np", "SELECT id FROM users WHERE age > 21;", "    raise ValueError('bad input')",
]


def code_line(r):
    x = r.random()
    if x < 0.7:
        return r.choice(CODE_LINES)
    if x < 0.85:
        return "    " * r.randint(0, 3) + " ".join(r.choice(WORDS) for _ in range(r.randint(2, 10)))
    if x < 0.95:
        # Long lines: 200+ characters turn difflib's autojunk on.
        return "x = [" + ", ".join(str(r.randint(0, 9)) for _ in range(r.randint(70, 200))) + "]"
    return r.choice(["", "    ", "α = β + γ  # ünïcode", "変数 = 1", "\t"])


def gen_code(r, n):
    pairs = []
    for i in range(n):
        gt = code_line(r)
        answers = [gt] if r.random() < 0.95 else [gt, code_line(r)]
        k = r.randint(0, 8)
        if k == 0:
            line = gt
        elif k == 1:
            chars = list(gt)
            for _ in range(max(1, len(chars) // 10)):
                if chars:
                    chars[r.randrange(len(chars))] = r.choice("abcxyz_() ")
            line = "".join(chars)
        elif k == 2:
            line = gt[: len(gt) // 2]
        elif k == 3:
            line = code_line(r)
        elif k == 4:
            line = gt.replace(" ", "")
        else:
            line = gt + r.choice(["", ";", "  ", " # done"])
        lead = r.choice(["", "", "\n", "\n\n", "```python\n", "```\n", "# completion\n", "// next line\n",
                         "```cpp\n// c\n", "\n# a\n`x`\n"])
        tail = r.choice(["", "\n", "\n```", "\n" + code_line(r)])
        prediction = lead + line + tail
        if r.random() < 0.05:
            prediction = r.choice(["", "```", "# only a comment", "// x\n# y", "\n\n"])
        pairs.append(("code_sim", prediction, answers, []))
    return pairs


def ruler_ref(r):
    x = r.random()
    if x < 0.4:
        return str(r.randint(100000, 9999999))
    if x < 0.6:
        return "-".join("".join(r.choice("0123456789abcdef") for _ in range(n)) for n in (8, 4, 4))
    if x < 0.8:
        return r.choice(WORDS + NAMES)
    if x < 0.9:
        return r.choice(["İstanbul", "ΣΟΦΙΑ", "Straße", "ǅ", "K", "", "Ω"])
    return r.choice(ZH_COMMON)


def gen_ruler(r, metric, n):
    pairs = []
    for i in range(n):
        refs = [ruler_ref(r) for _ in range(r.choice([1, 1, 2, 3, 4]))]
        if i % 40 == 1:
            refs = []
        shown = [x for x in refs if r.random() < 0.6]
        shown = [x.upper() if r.random() < 0.2 else x for x in shown]
        filler = en_sentence(r, r.randint(0, 12))
        prediction = filler + " " + ", ".join(shown) + r.choice(["", ".", "\n"])
        if r.random() < 0.05:
            prediction = r.choice(PUNCT_ONLY)
        pairs.append((metric, prediction, refs, []))
    return pairs


def gsm_gold(r, value):
    return f"{en_sentence(r, 6)} {r.randint(1, 9)} * {r.randint(1, 9)} = {r.randint(1, 81)}.\n#### {value}"


def math_value(r):
    x = r.random()
    if x < 0.5:
        return r.randint(0, 500)
    if x < 0.65:
        return r.randint(1000, 2000000)
    if x < 0.75:
        return -r.randint(1, 100)
    if x < 0.9:
        return round(r.random() * 100, r.randint(1, 2))
    return f"{r.randint(1, 9)}/{r.randint(2, 9)}"


def fmt_value(r, v):
    if isinstance(v, int) and abs(v) >= 1000 and r.random() < 0.5:
        return f"{v:,}"
    return str(v)


def gen_math(r, n):
    pairs = []
    for i in range(n):
        v = math_value(r)
        gold = gsm_gold(r, v) if r.random() < 0.8 else r.choice([str(v), f"\\boxed{{{v}}}", fmt_value(r, v)])
        w = v if r.random() < 0.6 else math_value(r)
        shown = fmt_value(r, w)
        k = r.randint(0, 9)
        if k == 0:
            prediction = f"{en_sentence(r, 8)} {r.randint(1, 50)} + {r.randint(1, 50)}.\n#### {shown}"
        elif k == 1:
            prediction = f"So the total is \\boxed{{{shown}}}."
        elif k == 2:
            prediction = f"{en_sentence(r, 5)}. The answer is {r.choice(['', '$'])}{shown}."
        elif k == 3:
            prediction = f"{en_sentence(r, 10)} {r.randint(1, 99)} {en_sentence(r, 4)} {shown}."
        elif k == 4:
            if isinstance(w, str):
                a, b = w.split("/")
                prediction = f"$\\boxed{{{r.choice(['', '-'])}\\{r.choice(['', 'd', 't'])}frac{{{a}}}{{{b}}}}}$"
            else:
                prediction = f"\\boxed{{x = {shown}}} and then {r.randint(1, 9)}"
        elif k == 5:
            prediction = f"{shown} apples and {r.randint(1, 9)} pears; pages {r.randint(1, 9)}-{r.randint(10, 20)}"
        elif k == 6:
            prediction = r.choice(["", "I don't know.", "#### ", "\\boxed{}", "The answer is unclear."])
        elif k == 7:
            prediction = f"It costs ${shown}. Then -{r.randint(1, 9)} and x-{r.randint(1, 9)}, about .{r.randint(1, 9)}"
        elif k == 8:
            prediction = f"The answer is {shown}%. Check: {r.randint(1, 9)},{r.randint(10, 99)} and 1,2345 or 0/0."
        else:
            prediction = f"{shown}\u2212{r.randint(1, 9)} = \u2212{r.randint(1, 9)} {r.choice(['', '####', 'the ANSWER IS 7'])}"
        pairs.append(("math", prediction, [gold], []))
    return pairs


def generate(seed):
    r = random.Random(seed)
    pairs = []
    pairs += gen_qa(r, "qa_f1", 600)
    pairs += gen_qa(r, "squad_f1", 150)
    pairs += gen_qa(r, "exact_match", 200)
    pairs += gen_qa_zh(r, 350)
    pairs += gen_rouge(r, 450)
    pairs += gen_rouge_zh(r, 300)
    pairs += gen_classification(r, 350)
    pairs += gen_retrieval(r, 200)
    pairs += gen_retrieval(r, 150, zh=True)
    pairs += gen_count(r, 200)
    pairs += gen_code(r, 400)
    pairs += gen_ruler(r, "string_match_all", 150)
    pairs += gen_ruler(r, "string_match_part", 150)
    pairs += gen_math(r, 300)
    return pairs


def dataset_groups(r, pairs, scores):
    """Reference dataset scores: each metric's pairs in runs, and synthetic lists (ties in the
    rounding, lengths around NumPy's pairwise block sizes)."""
    groups = []
    by_metric = {}
    for i, (metric, *_rest) in enumerate(pairs):
        by_metric.setdefault(metric, []).append(i)
    for metric, idx in by_metric.items():
        for start in range(0, len(idx), 97):
            chunk = idx[start:start + 97]
            s = [scores[i] for i in chunk]
            groups.append({"name": f"{metric}[{start}:]", "pairs": chunk, "scores": None, "expected": float(round(100 * np.mean(s), 2)),
                           "expected_sequential": round(100 * sum(s) / len(s), 2)})
    for n in (1, 2, 4, 7, 8, 9, 16, 17, 127, 128, 129, 255, 256, 257, 1000, 1025, 3000):
        for kind in range(3):
            if kind == 0:
                s = [round(r.random(), 4) for _ in range(n)]
            elif kind == 1:
                s = [r.choice([0.0, 1.0, 0.5, 1 / 3, 2 / 3, 0.25]) for _ in range(n)]
            else:
                s = [r.randint(0, 8) / 8 if r.random() < 0.5 else round(r.random() * 0.01, 5) for _ in range(n)]
            groups.append({"name": f"synthetic n={n} kind={kind}", "pairs": None, "scores": s,
                           "expected": float(round(100 * np.mean(s), 2)), "expected_sequential": round(100 * sum(s) / len(s), 2)})
    for v in (0.001, 0.003, 0.013, 0.019, 0.0045, 0.00125):
        s = [v, 0.0, 0.0, 0.0]
        groups.append({"name": f"tie {v}", "pairs": None, "scores": s, "expected": float(round(100 * np.mean(s), 2)),
                       "expected_sequential": round(100 * sum(s) / len(s), 2)})
    return groups


def jieba_texts(r, n):
    texts = [zh_text(r, r.randint(1, 40)) for _ in range(n)]
    texts += ["".join(r.choice(ZH_EXTRA) for _ in range(6)) for _ in range(30)]
    texts += ["".join(zh_char(r) for _ in range(r.randint(2, 12))) for _ in range(60)]  # HMM paths
    return texts


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=20240531)
    ap.add_argument("--out", default=FIXTURES, help="folder for the fixtures")
    ap.add_argument("--repeat", type=int, default=3, help="timing runs; the fastest counts")
    args = ap.parse_args()

    pairs = generate(args.seed)
    jieba.initialize()  # the dictionary load is not part of the timing

    # Called from module level: <module> -> scorer -> metric, as in eval.py.
    best = None
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        scores = scorer(pairs)
        elapsed = time.perf_counter() - t0
        best = elapsed if best is None else min(best, elapsed)

    per_metric = {}
    for (metric, prediction, answers, all_classes) in pairs:
        per_metric.setdefault(metric, []).append((metric, prediction, answers, all_classes))
    metric_times = {}
    for metric, group in per_metric.items():
        t0 = time.perf_counter()
        scorer(group)
        metric_times[metric] = time.perf_counter() - t0

    r = random.Random(args.seed + 1)
    os.makedirs(args.out, exist_ok=True)
    write_jsonl(os.path.join(args.out, "parity.jsonl"), (
        {"metric": m, "prediction": p, "answers": a, "all_classes": c, "expected": s}
        for (m, p, a, c), s in zip(pairs, scores)))
    write_jsonl(os.path.join(args.out, "dataset_scores.jsonl"), dataset_groups(r, pairs, scores))
    write_jsonl(os.path.join(args.out, "jieba_tokens.jsonl"), (
        {"text": t, "tokens": list(jieba.cut(t, cut_all=False))} for t in jieba_texts(r, 400)))

    print(f"{len(pairs)} pairs, {len(per_metric)} metrics; written to {args.out}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}")
    print(f"reference metric functions over the corpus: {best:.3f} s (fastest of {args.repeat})")
    for metric, t in sorted(metric_times.items(), key=lambda kv: -kv[1]):
        print(f"  {metric:18s} {len(per_metric[metric]):5d} pairs {t:8.3f} s")
