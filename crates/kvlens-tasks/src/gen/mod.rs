//! Seeded generators for long-context tasks. Every sample's length is measured in the
//! model's own tokens, and every sample records what the generator chose in `meta` (context
//! length, needle depth, hops, ...) so failures can be broken down by them.

mod arith;
mod cwe;
mod doc_qa;
mod kv_retrieval;
mod niah;
mod passkey;
pub mod rng;
pub mod ship;
mod vt;
pub mod words;

use crate::error::{Result, TaskError};
use crate::sample::Sample;
use crate::spec::{TaskSpec, Tokenize};
use rng::Rng;
use serde_json::{json, Map, Value};

/// What one generated sample holds before it gets its id and measured length.
pub struct Draft {
    pub context: String,
    pub input: String,
    pub answers: Vec<String>,
    pub meta: Map<String, Value>,
}

/// A task whose samples kvlens makes itself.
pub trait Generator: Sync {
    fn name(&self) -> &'static str;
    /// One line, for `kvlens datasets list`.
    fn description(&self) -> &'static str;
    /// The paper or benchmark the task follows.
    fn source(&self) -> &'static str;
    fn spec(&self) -> TaskSpec;
    /// A sample whose prompt holds about `tokens` model tokens; `depth` in [0, 1] places the
    /// needle (where the task has one).
    fn draft(&self, rng: &mut Rng, tokens: usize, depth: f64, fit: &Fit) -> Result<Draft>;
}

/// Every generator, in the order `kvlens datasets list` shows them.
pub fn generators() -> Vec<&'static dyn Generator> {
    vec![
        &passkey::Passkey,
        &niah::Niah::Single,
        &niah::Niah::MultiKey,
        &niah::Niah::MultiValue,
        &niah::Niah::MultiQuery,
        &vt::VariableTracking,
        &kv_retrieval::KvRetrieval,
        &cwe::CommonWords,
        &arith::Arith,
        &doc_qa::DocQa,
    ]
}

pub fn generator(name: &str) -> Option<&'static dyn Generator> {
    generators().into_iter().find(|g| g.name() == name)
}

/// The lengths of the shipped sets: 20 samples, the shortest first so that `--limit 5`
/// picks a quick subset.
pub fn default_lengths() -> Vec<usize> {
    let mut v = vec![1000; 7];
    v.extend([1500; 7]);
    v.extend([2000; 6]);
    v
}

/// The needle depth of sample `i`: the eleven depths 0, 0.1, ..., 1 in a fixed order that
/// spreads the first few samples over the context.
pub fn depth_of(i: usize) -> f64 {
    ((i * 7) % 11) as f64 / 10.0
}

/// Generates samples `0..lengths.len()` of `g` with `seed`.
pub fn generate(
    g: &dyn Generator,
    seed: u64,
    lengths: &[usize],
    tok: &dyn Tokenize,
) -> Result<Vec<Sample>> {
    let spec = g.spec();
    let fit = Fit { tok, spec: &spec };
    lengths
        .iter()
        .enumerate()
        .map(|(i, &tokens)| {
            let mut rng = Rng::for_sample(seed, g.name(), i);
            let depth = depth_of(i);
            let d = g.draft(&mut rng, tokens, depth, &fit)?;
            let mut sample = Sample {
                id: format!("{}-{i:03}", g.name()),
                fields: Map::new(),
                answers: d.answers,
                all_classes: Vec::new(),
                meta: Map::new(),
            };
            sample.fields.insert("context".into(), json!(d.context));
            sample.fields.insert("input".into(), json!(d.input));
            let measured = fit.count(&spec.render(&sample)?)?;
            sample.meta.insert("target_tokens".into(), json!(tokens));
            sample.meta.insert("prompt_tokens".into(), json!(measured));
            sample.meta.insert("seed".into(), json!(seed));
            sample.meta.extend(d.meta);
            Ok(sample)
        })
        .collect()
}

/// Measures text in the model's tokens and fills haystacks to a length.
pub struct Fit<'a> {
    pub tok: &'a dyn Tokenize,
    pub spec: &'a TaskSpec,
}

impl Fit<'_> {
    pub fn count(&self, text: &str) -> Result<usize> {
        self.tok
            .encode(text)
            .map(|ids| ids.len())
            .map_err(TaskError::Tokenizer)
    }

    /// Tokens the prompt takes besides the haystack: the template rendered with `context`
    /// standing in for the haystack's place.
    pub fn overhead(&self, context: &str, input: &str) -> Result<usize> {
        let mut fields = Map::new();
        fields.insert("context".into(), json!(context));
        fields.insert("input".into(), json!(input));
        let s = Sample {
            id: String::new(),
            fields,
            answers: vec![],
            all_classes: vec![],
            meta: Map::new(),
        };
        self.count(&self.spec.render(&s)?)
    }

    /// Sentences from `next` until they hold about `budget` tokens (counted one by one with
    /// the space that joins them).
    pub fn fill(
        &self,
        budget: usize,
        rng: &mut Rng,
        mut next: impl FnMut(&mut Rng) -> String,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut used = 0;
        while used < budget {
            let s = next(rng);
            let n = self.count(&format!(" {s}"))?;
            if used + n > budget && !out.is_empty() {
                break;
            }
            used += n;
            out.push(s);
        }
        Ok(out)
    }
}

/// Inserts `needles` into `hay` at the fraction `depth` of its sentences (several needles
/// are spread evenly from there, wrapping around), and joins everything with spaces.
pub fn insert(mut hay: Vec<String>, needles: &[String], depths: &[f64]) -> String {
    let mut placed: Vec<(usize, &String)> = needles
        .iter()
        .zip(depths)
        .map(|(n, &d)| (((hay.len() as f64) * d.clamp(0.0, 1.0)).round() as usize, n))
        .collect();
    // Insert from the back so earlier indices stay valid; equal depths keep needle order.
    placed.sort_by_key(|p| p.0);
    for (at, n) in placed.into_iter().rev() {
        hay.insert(at.min(hay.len()), n.clone());
    }
    hay.join(" ")
}

/// Depths for `k` needles starting at `depth`, spread over the context.
pub fn spread(depth: f64, k: usize) -> Vec<f64> {
    (0..k)
        .map(|j| (depth + j as f64 / k as f64) % 1.0001)
        .collect()
}

pub fn budget(target: usize, overhead: usize) -> usize {
    target.saturating_sub(overhead).max(16)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Words as tokens: a stand-in tokenizer for tests.
    pub struct Words;
    impl Tokenize for Words {
        fn encode(&self, t: &str) -> std::result::Result<Vec<u32>, String> {
            Ok(t.split_whitespace().map(|w| w.len() as u32).collect())
        }
        fn decode(&self, _: &[u32]) -> std::result::Result<String, String> {
            Err("not needed".into())
        }
    }

    #[test]
    fn every_generator_hits_its_length_and_answers_are_in_context() {
        for g in generators() {
            let lengths = [300, 600, 900];
            let a = generate(g, 42, &lengths, &Words).unwrap();
            let b = generate(g, 42, &lengths, &Words).unwrap();
            assert_eq!(a, b, "{} is not deterministic", g.name());
            let c = generate(g, 43, &lengths, &Words).unwrap();
            assert_ne!(a, c, "{} ignores its seed", g.name());
            for (s, &target) in a.iter().zip(&lengths) {
                let n = s.meta["prompt_tokens"].as_u64().unwrap() as f64;
                let t = target as f64;
                assert!(
                    (n - t).abs() <= 0.1 * t,
                    "{}: {n} tokens for a target of {target}",
                    s.id
                );
                assert!(!s.answers.is_empty(), "{}", s.id);
                let ctx = s.fields["context"].as_str().unwrap();
                if g.name() != "arith" && g.name() != "cwe" {
                    for ans in &s.answers {
                        assert!(ctx.contains(ans.as_str()), "{}: {ans} not in context", s.id);
                    }
                }
                let prompt = g.spec().render(s).unwrap();
                assert!(prompt.contains(ctx));
            }
        }
    }

    #[test]
    fn needles_land_at_their_depth() {
        let hay: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
        let s = insert(hay.clone(), &["N".to_string()], &[0.0]);
        assert!(s.starts_with("N s0"));
        let s = insert(hay.clone(), &["N".to_string()], &[1.0]);
        assert!(s.ends_with("s9 N"));
        let s = insert(hay, &["A".to_string(), "B".to_string()], &[0.5, 0.5]);
        assert!(s.contains("s4 A B s5"), "{s}");
    }
}
