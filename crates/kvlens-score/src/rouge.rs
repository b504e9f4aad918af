//! ROUGE-L F as PyPI `rouge` 1.0.1 computes it in
//! `Rouge().get_scores([hyp], [ref], avg=True)["rouge-l"]["f"]`, wrapped in LongBench's
//! `try: ... except: return 0.0`.
//!
//! What the package does, quirks included (rouge/rouge.py, rouge/rouge_score.py):
//! - Sentences are the pieces of `text.split(".")` that are not empty *before* whitespace is
//!   normalized; each becomes `" ".join(piece.split())`, so a whitespace-only piece is kept as
//!   the sentence `""`, which `split(" ")` turns into the one word `""`.
//! - `rouge_l_summary_level`: `m` and `n` are the numbers of *distinct* words of reference and
//!   hypothesis; the union LCS is a *set of words*: for every reference sentence and every
//!   hypothesis sentence, the words of one reconstructed LCS (its tie-breaking matters) are
//!   added to one set shared across reference sentences, and the LCS count is that set's size.
//! - `f = 2 * ((p * r) / (p + r + 1e-8))`.
//! - Raises (so LongBench scores 0.0) when either text has no sentence (empty, or only dots),
//!   and with `RecursionError` when the recursive LCS reconstruction `_recon` goes deeper
//!   than Python's recursion limit allows: see [`RecursionBudget`].

use std::collections::HashMap;

/// Python frames available to `rouge_score._recon`, which recurses once per step of the LCS
/// traceback: CPython's default limit of 1000 minus the frames below it when LongBench's
/// `eval.py` scores (`<module>`, `scorer`, `rouge_score`, `Rouge.get_scores`,
/// `_get_avg_scores`, the metric lambda, `rouge_l_summary_level`, `_union_lcs`, `_recon_lcs`:
/// 9 frames; `rouge_zh_score` adds one). Measured with CPython 3.11: a 990-word sentence
/// against itself scores, a 991-word one raises. A caller with a deeper stack (a notebook,
/// another harness) gets a smaller budget in Python.
#[derive(Debug, Clone, Copy)]
pub struct RecursionBudget(pub usize);

impl RecursionBudget {
    pub const ROUGE: RecursionBudget = RecursionBudget(1000 - 9);
    pub const ROUGE_ZH: RecursionBudget = RecursionBudget(1000 - 10);
}

/// LongBench `rouge_score(prediction, ground_truth)`.
pub fn rouge_l_f(hyp: &str, reference: &str, budget: RecursionBudget) -> f64 {
    let mut words = Interner::default();
    let hyp = words.sentences(hyp);
    let reference = words.sentences(reference);
    // rouge_n and rouge_l_summary_level: "Hypothesis is empty." / "Reference is empty.".
    if hyp.is_empty() || reference.is_empty() {
        return 0.0;
    }
    let distinct = |sentences: &[Vec<u32>]| {
        let mut seen = vec![false; words.len()];
        let mut count = 0usize;
        for &w in sentences.iter().flatten() {
            if !std::mem::replace(&mut seen[w as usize], true) {
                count += 1;
            }
        }
        count
    };
    let m = distinct(&reference);
    let n = distinct(&hyp);

    let mut in_union = vec![false; words.len()];
    let mut llcs = 0usize;
    let mut scratch = Scratch::default();
    for r in &reference {
        for h in &hyp {
            let Some(()) = lcs_words(r, h, budget, &mut scratch, |w| {
                if !std::mem::replace(&mut in_union[w as usize], true) {
                    llcs += 1;
                }
            }) else {
                return 0.0; // RecursionError
            };
        }
    }
    let r_lcs = llcs as f64 / m as f64;
    let p_lcs = llcs as f64 / n as f64;
    2.0 * ((p_lcs * r_lcs) / (p_lcs + r_lcs + 1e-8))
}

/// Buffers of the LCS tables, reused across sentence pairs.
#[derive(Default)]
struct Scratch {
    window: Vec<u16>,
    prev: Vec<u16>,
    cur: Vec<u16>,
}

#[derive(Default)]
struct Interner<'t> {
    ids: HashMap<&'t str, u32>,
}

impl<'t> Interner<'t> {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn id(&mut self, word: &'t str) -> u32 {
        let next = self.ids.len() as u32;
        *self.ids.entry(word).or_insert(next)
    }

    /// The sentences of rouge's `_get_avg_scores` as word ids: each piece of `split(".")` that
    /// is not empty, as the words of `" ".join(piece.split())` split on `" "`.
    fn sentences(&mut self, text: &'t str) -> Vec<Vec<u32>> {
        text.split('.')
            .filter(|piece| !piece.is_empty())
            .map(|piece| {
                let mut sentence: Vec<u32> =
                    crate::pyunicode::split(piece).map(|w| self.id(w)).collect();
                if sentence.is_empty() {
                    sentence.push(self.id(""));
                }
                sentence
            })
            .collect()
    }
}

/// The words of the LCS that rouge's `_recon_lcs(x, y)` reconstructs (x: reference sentence,
/// y: hypothesis sentence), each handed to `word`; `None` where Python's `_recon` recursion
/// would exceed `budget` frames (one per traceback step, plus the call that reaches row or
/// column 0).
fn lcs_words(
    x: &[u32],
    y: &[u32],
    budget: RecursionBudget,
    scratch: &mut Scratch,
    mut word: impl FnMut(u32),
) -> Option<()> {
    let (n, m) = (x.len(), y.len());
    // Every step lowers i or j and the traceback stops at the first zero, so it takes at least
    // min(n, m) steps: past the budget no table is needed to know Python fails.
    if n.min(m) + 1 > budget.0 {
        return None;
    }
    // A traceback within budget never leaves the last `budget` rows and columns, so only that
    // window of the DP table is kept (values fit u16: an LCS is at most min(n, m) < budget).
    let r0 = n.saturating_sub(budget.0);
    let c0 = m.saturating_sub(budget.0);
    let width = m + 1 - c0;
    let Scratch {
        window: table,
        prev,
        cur,
    } = scratch;
    table.clear();
    table.resize((n + 1 - r0) * width, 0);
    prev.clear();
    prev.resize(m + 1, 0);
    cur.clear();
    cur.resize(m + 1, 0);
    for i in 1..=n {
        let xi = x[i - 1];
        for j in 1..=m {
            cur[j] = if xi == y[j - 1] {
                prev[j - 1] + 1
            } else {
                prev[j].max(cur[j - 1])
            };
        }
        if i >= r0 {
            table[(i - r0) * width..(i - r0 + 1) * width].copy_from_slice(&cur[c0..]);
        }
        std::mem::swap(prev, cur);
    }
    let at = |i: usize, j: usize| table[(i - r0) * width + (j - c0)];
    let (mut i, mut j) = (n, m);
    let mut calls = 1;
    // `_recon`: a match goes diagonally, otherwise up only when table[i-1, j] is strictly
    // greater than table[i, j-1].
    while i > 0 && j > 0 {
        calls += 1;
        if calls > budget.0 {
            return None;
        }
        if x[i - 1] == y[j - 1] {
            word(x[i - 1]);
            i -= 1;
            j -= 1;
        } else if at(i - 1, j) > at(i, j - 1) {
            i -= 1;
        } else {
            j -= 1;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rouge(h: &str, r: &str) -> f64 {
        rouge_l_f(h, r, RecursionBudget::ROUGE)
    }

    #[test]
    fn empty_and_dot_only_texts_score_zero() {
        assert_eq!(rouge("", "a b"), 0.0);
        assert_eq!(rouge("a b", "..."), 0.0);
        // A whitespace-only text is one sentence, the empty word.
        assert!(rouge(" ", " ") > 0.99);
    }

    #[test]
    fn union_is_a_set_of_words() {
        // Reference "a b. b a", hypothesis "a b": both reference sentences share LCS words,
        // so the union has 2 words; m = n = 2 distinct words.
        let f = rouge("a b", "a b. b a");
        assert_eq!(f, 2.0 * ((1.0 * 1.0) / (1.0 + 1.0 + 1e-8)));
    }

    #[test]
    fn traceback_prefers_left_on_ties() {
        // x = [a, b], y = [b, a]: the tie goes left (j - 1), so the LCS word is "b", not "a".
        let mut words = Vec::new();
        lcs_words(
            &[0, 1],
            &[1, 0],
            RecursionBudget::ROUGE,
            &mut Scratch::default(),
            |w| words.push(w),
        )
        .unwrap();
        assert_eq!(words, [1]);
    }

    #[test]
    fn recursion_limit() {
        let text = |k: usize| {
            (0..k)
                .map(|i| format!("w{i}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert!(rouge(&text(990), &text(990)) > 0.99);
        assert_eq!(rouge(&text(991), &text(991)), 0.0);
        assert_eq!(
            rouge_l_f(&text(990), &text(990), RecursionBudget::ROUGE_ZH),
            0.0
        );
        // A long reference against a short hypothesis: the traceback length decides.
        assert!(rouge("x y", &format!("{} x y", text(3000))) > 0.0); // 2 steps
        assert_eq!(rouge("x y", &format!("x y {}", text(3000))), 0.0); // 3000 steps
    }
}
