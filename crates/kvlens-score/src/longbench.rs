//! The metrics of LongBench v1 (`LongBench/metrics.py` in THUDM/LongBench), one function per
//! Python function, with Python's string semantics and the package quirks described where
//! they happen. Each scores one prediction against one ground truth; [`crate::score`] takes
//! the maximum over the answers as `eval.py` does.

use crate::pyunicode::{self, is_ascii_punct, is_decimal, is_space, is_word};
use crate::{difflib, jieba, rouge};
use std::collections::HashMap;

/// The punctuation `normalize_zh_answer` removes besides `string.punctuation`, copied from
/// metrics.py (it has `》` but not `《`).
const CN_PUNCTUATION: &str = "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.";

/// `normalize_answer`: lower, drop `string.punctuation`, replace the words `a`, `an`, `the`
/// (`re.sub(r"\b(a|an|the)\b", " ", text)`, Unicode word boundaries) by a space, and join the
/// whitespace-separated pieces with single spaces. SQuAD v1.1's evaluation script normalizes
/// the same way.
pub fn normalize_answer(s: &str) -> String {
    let mut buf = String::new();
    normalized_tokens(s, &mut buf).join(" ")
}

/// The tokens of `normalize_answer(s).split()`, borrowed from `buf`.
pub(crate) fn normalized_tokens<'b>(s: &str, buf: &'b mut String) -> Vec<&'b str> {
    buf.clear();
    pyunicode::push_lower_except(s, buf, is_ascii_punct);
    let text: &'b str = buf;
    let mut tokens = Vec::new();
    for_each_piece_without_articles(text, |piece| tokens.push(piece));
    tokens
}

fn is_article(word: &str) -> bool {
    matches!(word, "a" | "an" | "the")
}

/// The whitespace-separated pieces of `text` with every maximal run of word characters equal
/// to `a`, `an` or `the` cut out (it becomes a separator). `\b(a|an|the)\b` can only match a
/// whole run: the boundaries on both sides require a non-word character (or an end) next to
/// the match.
fn for_each_piece_without_articles<'t>(text: &'t str, mut emit: impl FnMut(&'t str)) {
    for word in pyunicode::split(text) {
        if word.bytes().all(|b| b.is_ascii_alphanumeric()) {
            // One run of word characters.
            if !is_article(word) {
                emit(word);
            }
            continue;
        }
        let mut piece_start = 0;
        let mut run_start = None;
        for (i, c) in word
            .char_indices()
            .chain(std::iter::once((word.len(), ' ')))
        {
            if i < word.len() && is_word(c) {
                run_start.get_or_insert(i);
            } else if let Some(start) = run_start.take() {
                if is_article(&word[start..i]) {
                    if piece_start < start {
                        emit(&word[piece_start..start]);
                    }
                    piece_start = i;
                }
            }
        }
        if piece_start < word.len() {
            emit(&word[piece_start..]);
        }
    }
}

/// `normalize_zh_answer`: lower, drop `string.punctuation` and the Chinese punctuation above,
/// drop whitespace.
pub fn normalize_zh_answer(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    pyunicode::push_lower_except(s, &mut out, |c| {
        is_ascii_punct(c) || is_space(c) || (!c.is_ascii() && CN_PUNCTUATION.contains(c))
    });
    out
}

/// `f1_score` over token lists: `Counter(prediction) & Counter(ground_truth)`.
pub fn f1_tokens<S: AsRef<str>>(prediction: &[S], ground_truth: &[S]) -> f64 {
    let num_same = common_tokens(prediction, ground_truth);
    if num_same == 0 {
        return 0.0;
    }
    let precision = 1.0 * num_same as f64 / prediction.len() as f64;
    let recall = 1.0 * num_same as f64 / ground_truth.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

/// The size of the multiset intersection of `a` and `b`: the distinct tokens of the shorter
/// list, counted on both sides (a long prediction against a short answer costs one look-up
/// per prediction token).
fn common_tokens<S: AsRef<str>>(a: &[S], b: &[S]) -> usize {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let mut distinct = Distinct::new(short.len());
    let mut in_short = Vec::new();
    for t in short {
        let k = distinct.index_or_insert(t.as_ref());
        if k == in_short.len() {
            in_short.push(0usize);
        }
        in_short[k] += 1;
    }
    let mut in_long = vec![0usize; in_short.len()];
    for t in long {
        if let Some(k) = distinct.index(t.as_ref()) {
            in_long[k] += 1;
        }
    }
    in_short.iter().zip(&in_long).map(|(&s, &l)| s.min(l)).sum()
}

/// Distinct tokens numbered in order of first appearance; a linear search for a few, a hash
/// map for more.
struct Distinct<'t> {
    tokens: Vec<&'t str>,
    map: Option<HashMap<&'t str, usize>>,
}

impl<'t> Distinct<'t> {
    fn new(expected: usize) -> Self {
        let map = (expected > 16).then(HashMap::new);
        Distinct {
            tokens: Vec::new(),
            map,
        }
    }

    fn index(&self, t: &str) -> Option<usize> {
        match &self.map {
            Some(map) => map.get(t).copied(),
            None => self.tokens.iter().position(|d| *d == t),
        }
    }

    fn index_or_insert(&mut self, t: &'t str) -> usize {
        if let Some(k) = self.index(t) {
            return k;
        }
        let k = self.tokens.len();
        self.tokens.push(t);
        if let Some(map) = &mut self.map {
            map.insert(t, k);
        }
        k
    }
}

/// `qa_f1_score`.
pub fn qa_f1_score(prediction: &str, ground_truth: &str) -> f64 {
    let (mut p, mut g) = (String::new(), String::new());
    f1_tokens(
        &normalized_tokens(prediction, &mut p),
        &normalized_tokens(ground_truth, &mut g),
    )
}

/// `list(jieba.cut(s, cut_all=False))` with Python jieba 0.42.1's dictionary and HMM.
pub fn jieba_cut(s: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    jieba::cut(s, |t| tokens.push(t));
    tokens
}

/// Tokens of `qa_f1_zh_score`: jieba words, each normalized, empty ones dropped.
pub(crate) fn zh_tokens(s: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    jieba::cut(s, |t| {
        let t = normalize_zh_answer(t);
        if !t.is_empty() {
            tokens.push(t);
        }
    });
    tokens
}

/// `qa_f1_zh_score`.
pub fn qa_f1_zh_score(prediction: &str, ground_truth: &str) -> f64 {
    f1_tokens(&zh_tokens(prediction), &zh_tokens(ground_truth))
}

/// `rouge_score`: ROUGE-L F of PyPI `rouge` 1.0.1, 0.0 wherever it raises.
pub fn rouge_score(prediction: &str, ground_truth: &str) -> f64 {
    rouge::rouge_l_f(prediction, ground_truth, rouge::RecursionBudget::ROUGE)
}

/// `" ".join(jieba.cut(s))`.
pub(crate) fn jieba_joined(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    let mut first = true;
    jieba::cut(s, |t| {
        if !std::mem::take(&mut first) {
            out.push(' ');
        }
        out.push_str(t);
    });
    out
}

/// `rouge_zh_score`: `rouge_score` over jieba words joined by spaces.
pub fn rouge_zh_score(prediction: &str, ground_truth: &str) -> f64 {
    rouge_zh_joined(&jieba_joined(prediction), &jieba_joined(ground_truth))
}

/// `rouge_zh_score` on texts already segmented; one Python frame deeper than `rouge_score`.
pub(crate) fn rouge_zh_joined(prediction: &str, ground_truth: &str) -> f64 {
    rouge::rouge_l_f(prediction, ground_truth, rouge::RecursionBudget::ROUGE_ZH)
}

/// `classification_score`: among `all_classes` found in the prediction (substring test), the
/// ones that are part of the ground truth but not equal to it are dropped, and the score is
/// `1 / len(matches)` when the ground truth is among them.
///
/// Quirk kept: metrics.py removes from the list while iterating over it, so the element after
/// each removed one is skipped (never examined), and `list.remove` drops the *first* equal
/// element.
pub fn classification_score(prediction: &str, ground_truth: &str, all_classes: &[String]) -> f64 {
    let mut matches: Vec<&str> = all_classes
        .iter()
        .map(String::as_str)
        .filter(|class| prediction.contains(class))
        .collect();
    // A Python list iterator: an index into the list as it is now.
    let mut index = 0;
    while index < matches.len() {
        let term = matches[index];
        index += 1;
        if ground_truth.contains(term) && term != ground_truth {
            if let Some(first) = matches.iter().position(|m| *m == term) {
                matches.remove(first);
            }
        }
    }
    if matches.contains(&ground_truth) {
        1.0 / matches.len() as f64
    } else {
        0.0
    }
}

/// Runs of Unicode decimal digits: `re.findall(r"\d+", text)`.
fn digit_runs(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !is_decimal(c))
        .filter(|r| !r.is_empty())
}

/// Share of the digit runs of the prediction equal to `target` (as strings, so `01` is not
/// `1`); 0.0 when the prediction has none.
fn share_equal(prediction: &str, target: &str) -> f64 {
    let (mut right, mut total) = (0usize, 0usize);
    for number in digit_runs(prediction) {
        total += 1;
        right += usize::from(number == target);
    }
    if total == 0 {
        0.0
    } else {
        right as f64 / total as f64
    }
}

/// `count_score`: share of the numbers in the prediction equal to `str(ground_truth)`.
/// LongBench's passage_count answers are integers; callers pass them as Python's `str()`
/// prints them ([`crate::python_str`]).
pub fn count_score(prediction: &str, ground_truth: &str) -> f64 {
    share_equal(prediction, ground_truth)
}

/// The number of the first `{label}N` in `ground_truth` (`re.findall(label + r"(\d+)", gt)[0]`).
fn paragraph_id<'g>(ground_truth: &'g str, label: &str) -> Option<&'g str> {
    ground_truth.match_indices(label).find_map(|(at, _)| {
        let rest = &ground_truth[at + label.len()..];
        let end = rest.find(|c: char| !is_decimal(c)).unwrap_or(rest.len());
        (end > 0).then(|| &rest[..end])
    })
}

/// `retrieval_score`: share of the numbers in the prediction equal to the `N` of the first
/// `Paragraph N` in the ground truth. Python raises IndexError when the ground truth has no
/// `Paragraph N` (LongBench's answers always do); this scores 0.0.
pub fn retrieval_score(prediction: &str, ground_truth: &str) -> f64 {
    paragraph_id(ground_truth, "Paragraph ").map_or(0.0, |id| share_equal(prediction, id))
}

/// `retrieval_zh_score`: as [`retrieval_score`] with `段落N`.
pub fn retrieval_zh_score(prediction: &str, ground_truth: &str) -> f64 {
    paragraph_id(ground_truth, "段落").map_or(0.0, |id| share_equal(prediction, id))
}

/// The line `code_sim_score` compares: after dropping leading newlines, the first line with no
/// backtick, `#` or `//`; empty when there is none.
pub fn code_first_line(prediction: &str) -> &str {
    prediction
        .trim_start_matches('\n')
        .split('\n')
        .find(|line| !(line.contains('`') || line.contains('#') || line.contains("//")))
        .unwrap_or("")
}

/// `code_sim_score`: `fuzz.ratio(line, ground_truth) / 100`.
pub fn code_sim_score(prediction: &str, ground_truth: &str) -> f64 {
    f64::from(difflib::fuzz_ratio(
        code_first_line(prediction),
        ground_truth,
    )) / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn normalize_like_squad() {
        assert_eq!(normalize_answer("The  Cat, a dog & AN owl."), "cat dog owl");
        assert_eq!(normalize_answer("theater an-t a_b"), "theater ant ab");
        // Non-ASCII punctuation stays and bounds words: «the» loses its article.
        assert_eq!(normalize_answer("«the» «a»b"), "« » « »b");
        assert_eq!(normalize_answer("x\u{a0}a\x1cy"), "x y");
        assert_eq!(normalize_answer("...!"), "");
    }

    #[test]
    fn normalize_zh() {
        assert_eq!(normalize_zh_answer("《你好》，World！ 1"), "《你好world1");
    }

    #[test]
    fn f1_counts_multiset_overlap() {
        assert_eq!(qa_f1_score("a cat cat", "cat"), 2.0 * 0.5 * 1.0 / 1.5);
        assert_eq!(qa_f1_score("", "cat"), 0.0);
        assert_eq!(qa_f1_score("the", "a"), 0.0);
    }

    #[test]
    fn classification_quirks() {
        // "ab" matched and dropped (part of "abc"); the element after it ("b") is skipped,
        // so it stays, and the score is 1/2 instead of 1.
        let c = classes(&["ab", "b", "abc"]);
        assert_eq!(classification_score("abc", "abc", &c), 0.5);
        assert_eq!(classification_score("xyz", "abc", &c), 0.0);
        // Duplicates: remove() drops the first "ab", the iterator then skips the second.
        let c = classes(&["ab", "ab", "abc"]);
        assert_eq!(classification_score("abc", "abc", &c), 0.5);
    }

    #[test]
    fn retrieval_and_count() {
        assert_eq!(
            retrieval_score("Paragraph 3, not 13 or 03", "Paragraph 3"),
            1.0 / 3.0
        );
        assert_eq!(retrieval_zh_score("段落12", "段落12"), 1.0);
        assert_eq!(retrieval_score("3", "no paragraph"), 0.0);
        assert_eq!(count_score("there are 4 or ٤ passages", "4"), 0.5);
        assert_eq!(count_score("none", "4"), 0.0);
    }

    #[test]
    fn code_line() {
        assert_eq!(
            code_first_line("\n\n```python\n# c\nx = 1 // 2\ny = 2\n"),
            "y = 2"
        );
        assert_eq!(code_first_line("```"), "");
        assert_eq!(code_sim_score("```", ""), 1.0);
    }
}
