//! Needle-in-a-haystack variants as RULER defines them (Hsieh et al. 2024, "RULER: What's
//! the Real Context Size of Your Long-Context Language Models?"): one needle, several keys
//! with distractors, several values for one key, several keys asked at once.

use super::{budget, insert, rng::Rng, spread, words, Draft, Fit, Generator};
use crate::error::Result;
use crate::spec::{TaskSpec, Truncation};
use kvlens_score::Metric;
use serde_json::{json, Map};

pub enum Niah {
    Single,
    MultiKey,
    MultiValue,
    MultiQuery,
}

/// Needles per sample for the variants with several.
const NEEDLES: usize = 4;

impl Generator for Niah {
    fn name(&self) -> &'static str {
        match self {
            Niah::Single => "niah_single",
            Niah::MultiKey => "niah_multikey",
            Niah::MultiValue => "niah_multivalue",
            Niah::MultiQuery => "niah_multiquery",
        }
    }
    fn description(&self) -> &'static str {
        match self {
            Niah::Single => "needle in a haystack: one key, one 7-digit value in prose",
            Niah::MultiKey => "needle in a haystack: one key asked among 4 distractor needles",
            Niah::MultiValue => "needle in a haystack: all 4 values stored under one key",
            Niah::MultiQuery => "needle in a haystack: the values of 2 keys among 4 needles",
        }
    }
    fn source(&self) -> &'static str {
        "RULER (Hsieh et al. 2024)"
    }
    fn spec(&self) -> TaskSpec {
        let many = matches!(self, Niah::MultiValue | Niah::MultiQuery);
        TaskSpec {
            name: self.name().into(),
            description: self.description().into(),
            template: "Some special magic numbers are hidden within the following text. \
                       Make sure to memorize them. I will quiz you about the numbers \
                       afterwards.\n\n{context}\n\n{input}"
                .into(),
            max_new_tokens: if many { 64 } else { 32 },
            metric: Metric::StringMatchAll,
            chat: true,
            first_line: false,
            stop: vec![],
            truncation: Truncation::Middle,
        }
    }
    fn draft(&self, rng: &mut Rng, tokens: usize, depth: f64, fit: &Fit) -> Result<Draft> {
        let n = if matches!(self, Niah::Single) {
            1
        } else {
            NEEDLES
        };
        let mut keys: Vec<String> = Vec::new();
        while keys.len() < n {
            let k = words::key(rng);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        if matches!(self, Niah::MultiValue) {
            let k = keys[0].clone();
            keys.iter_mut().for_each(|x| *x = k.clone());
        }
        let mut values: Vec<String> = Vec::new();
        while values.len() < n {
            let v = rng.digits(7).to_string();
            if !values.contains(&v) {
                values.push(v);
            }
        }
        let needles: Vec<String> = keys
            .iter()
            .zip(&values)
            .map(|(k, v)| format!("One of the special magic numbers for {k} is: {v}."))
            .collect();
        // Which needles the question asks about.
        let asked: Vec<usize> = match self {
            Niah::Single | Niah::MultiValue => vec![0],
            Niah::MultiKey => vec![rng.below(n)],
            Niah::MultiQuery => {
                let mut a = rng.sample(&(0..n).collect::<Vec<_>>(), 2);
                a.sort();
                a
            }
        };
        let input = match self {
            Niah::Single | Niah::MultiKey => format!(
                "What is the special magic number for {} mentioned in the provided text? \
                 Answer with the number only.",
                keys[asked[0]]
            ),
            Niah::MultiValue => format!(
                "What are all the special magic numbers for {} mentioned in the provided \
                 text? Answer with the numbers only.",
                keys[0]
            ),
            Niah::MultiQuery => format!(
                "What are all the special magic numbers for {} and {} mentioned in the \
                 provided text? Answer with the numbers only.",
                keys[asked[0]], keys[asked[1]]
            ),
        };
        let answers: Vec<String> = match self {
            Niah::MultiValue => values.clone(),
            _ => asked.iter().map(|&i| values[i].clone()).collect(),
        };
        let over = fit.overhead(&needles.join(" "), &input)?;
        let hay = fit.fill(budget(tokens, over), rng, words::sentence)?;
        // The first asked needle sits at `depth`; the others are spread around the context.
        let mut order: Vec<usize> = asked.clone();
        order.extend((0..n).filter(|i| !asked.contains(i)));
        let depths_in_order = spread(depth, n);
        let mut depths = vec![0.0; n];
        for (slot, &i) in order.iter().enumerate() {
            depths[i] = depths_in_order[slot];
        }
        let mut meta = Map::new();
        meta.insert("depth".into(), json!(depth));
        meta.insert("needles".into(), json!(n));
        Ok(Draft {
            context: insert(hay, &needles, &depths),
            input,
            answers,
            meta,
        })
    }
}
