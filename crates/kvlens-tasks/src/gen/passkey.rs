//! Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention"): a five-digit key hidden
//! in repeated filler text.

use super::{budget, insert, rng::Rng, words, Draft, Fit, Generator};
use crate::error::Result;
use crate::spec::{TaskSpec, Truncation};
use kvlens_score::Metric;
use serde_json::{json, Map};

pub struct Passkey;

impl Generator for Passkey {
    fn name(&self) -> &'static str {
        "passkey"
    }
    fn description(&self) -> &'static str {
        "passkey retrieval: a 5-digit key hidden in repeated filler"
    }
    fn source(&self) -> &'static str {
        "Mohtashami & Jaggi 2023 (Landmark Attention)"
    }
    fn spec(&self) -> TaskSpec {
        TaskSpec {
            name: self.name().into(),
            description: self.description().into(),
            template: "There is an important piece of information hidden inside a lot of \
                       irrelevant text. Find it and memorize it. I will quiz you about it.\n\n\
                       {context}\n\n{input}"
                .into(),
            max_new_tokens: 16,
            metric: Metric::StringMatchAll,
            chat: true,
            first_line: false,
            stop: vec![],
            truncation: Truncation::Middle,
        }
    }
    fn draft(&self, rng: &mut Rng, tokens: usize, depth: f64, fit: &Fit) -> Result<Draft> {
        let key = rng.digits(5).to_string();
        let needle = format!("The pass key is {key}. Remember it. {key} is the pass key.");
        let input = "What is the pass key? Answer with the number only.".to_string();
        let over = fit.overhead(&needle, &input)?;
        let mut k = 0;
        let hay = fit.fill(budget(tokens, over), rng, |_| {
            k += 1;
            words::NOISE[(k - 1) % words::NOISE.len()].to_string()
        })?;
        let mut meta = Map::new();
        meta.insert("depth".into(), json!(depth));
        Ok(Draft {
            context: insert(hay, &[needle], &[depth]),
            input,
            answers: vec![key],
            meta,
        })
    }
}
