//! Common-word extraction (RULER, Hsieh et al. 2024): a numbered list of words in which a few
//! words repeat many times; the model names the most common ones.

use super::{budget, rng::Rng, words::CWE_WORDS, Draft, Fit, Generator};
use crate::error::Result;
use crate::spec::{TaskSpec, Truncation};
use kvlens_score::Metric;
use serde_json::{json, Map};

pub struct CommonWords;

/// Common words to find, and how often each uncommon word appears.
const COMMON: usize = 5;

/// A shuffled list of about `entries` words: the common words take a third of it, and each
/// repeats at least twice as often as any uncommon word.
fn build(
    common: &[&'static str],
    rare: &[&'static str],
    entries: usize,
    rng: &mut Rng,
) -> Vec<&'static str> {
    let common_freq = (entries / 3 / COMMON).max(4);
    let rest = entries.saturating_sub(common_freq * COMMON);
    let rare_freq = rest.div_ceil(rare.len()).clamp(1, common_freq / 2);
    let rare_count = (rest / rare_freq).min(rare.len());
    let mut list = Vec::with_capacity(entries);
    for w in common {
        list.extend(std::iter::repeat_n(*w, common_freq));
    }
    for w in &rare[..rare_count] {
        list.extend(std::iter::repeat_n(*w, rare_freq));
    }
    rng.shuffle(&mut list);
    list
}

fn numbered(list: &[&str]) -> String {
    list.iter()
        .enumerate()
        .map(|(i, w)| format!("{}. {w}", i + 1))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Generator for CommonWords {
    fn name(&self) -> &'static str {
        "cwe"
    }
    fn description(&self) -> &'static str {
        "common-word extraction: the 5 most frequent words of a long list"
    }
    fn source(&self) -> &'static str {
        "RULER (Hsieh et al. 2024)"
    }
    fn spec(&self) -> TaskSpec {
        TaskSpec {
            name: self.name().into(),
            description: self.description().into(),
            template: "Below is a numbered list of words. In these words, some appear more \
                       often than others. Memorize the ones that appear most often.\n\
                       {context}\n\n{input}"
                .into(),
            max_new_tokens: 48,
            metric: Metric::StringMatchAll,
            chat: true,
            first_line: false,
            stop: vec![],
            truncation: Truncation::Middle,
        }
    }
    fn draft(&self, rng: &mut Rng, tokens: usize, _depth: f64, fit: &Fit) -> Result<Draft> {
        let input = format!(
            "Question: What are the {COMMON} most common words in the above list? Answer \
             with the words only, separated by commas."
        );
        let over = fit.overhead("", &input)?;
        let words = rng.sample(CWE_WORDS, CWE_WORDS.len());
        let (common, rare) = words.split_at(COMMON);
        // Every attempt shuffles the same way, so the final list does not depend on how
        // many attempts it took.
        let shuffle = rng.clone();
        let target = budget(tokens, over);
        // Size the list by measuring: a numbered entry's cost depends on the tokenizer.
        let mut entries = target / 4;
        let mut built = Vec::new();
        for _ in 0..4 {
            built = build(common, rare, entries, &mut shuffle.clone());
            let n = fit.count(&numbered(&built))?.max(1);
            if n.abs_diff(target) * 50 < target {
                break;
            }
            entries = (entries * target / n).max(COMMON * 4);
        }
        let list = built;
        let context = numbered(&list);
        let common_freq = list.iter().filter(|w| **w == common[0]).count();
        let mut meta = Map::new();
        meta.insert("common_freq".into(), json!(common_freq));
        meta.insert("words".into(), json!(list.len()));
        Ok(Draft {
            context,
            input,
            answers: common.iter().map(|w| w.to_string()).collect(),
            meta,
        })
    }
}
