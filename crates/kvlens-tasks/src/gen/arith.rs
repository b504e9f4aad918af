//! Multi-step arithmetic word problems whose facts are scattered through a long story, with
//! a distractor entity whose facts interleave (our own generator, in the spirit of GSM8K's
//! numeric answers and RULER's distractor needles).

use super::{budget, insert, rng::Rng, words, Draft, Fit, Generator};
use crate::error::Result;
use crate::spec::{TaskSpec, Truncation};
use kvlens_score::Metric;
use serde_json::{json, Map};

pub struct Arith;

/// Operations after the starting amount.
const STEPS: usize = 3;

/// The facts about one warehouse and its final count.
fn facts(rng: &mut Rng, city: &str) -> (Vec<String>, i64) {
    let start = rng.range(20, 90) as i64;
    let mut count = start;
    let mut out = vec![format!(
        "At the start of the week, the warehouse in {city} held {start} crates."
    )];
    let days = [
        "On Monday",
        "On Tuesday",
        "On Wednesday",
        "On Thursday",
        "On Friday",
    ];
    for day in days.iter().take(STEPS) {
        // A shipment needs crates to ship: with one left, crates arrive instead.
        let op = rng.below(3);
        let op = if op == 2 && count <= 1 { 0 } else { op };
        match op {
            0 => {
                let n = rng.range(5, 40) as i64;
                count += n;
                out.push(format!(
                    "{day}, the warehouse in {city} received {n} more crates."
                ));
            }
            1 => {
                let n = rng.range(2, 4) as i64;
                let each = rng.range(3, 12) as i64;
                count += n * each;
                out.push(format!(
                    "{day}, {n} trucks each delivered {each} crates to the warehouse in {city}."
                ));
            }
            _ => {
                let n = rng.range(1, count.max(2) as u64 - 1) as i64;
                count -= n;
                out.push(format!(
                    "{day}, the warehouse in {city} shipped out {n} crates."
                ));
            }
        }
    }
    (out, count)
}

impl Generator for Arith {
    fn name(&self) -> &'static str {
        "arith"
    }
    fn description(&self) -> &'static str {
        "arithmetic: a 3-step word problem scattered through a story, with a distractor"
    }
    fn source(&self) -> &'static str {
        "kvlens generator (GSM8K-style numeric answers)"
    }
    fn spec(&self) -> TaskSpec {
        TaskSpec {
            name: self.name().into(),
            description: self.description().into(),
            template: "Read the story and answer the question at the end.\n\n{context}\n\n\
                       {input}"
                .into(),
            max_new_tokens: 48,
            metric: Metric::Math,
            chat: true,
            first_line: false,
            stop: vec![],
            truncation: Truncation::Middle,
        }
    }
    fn draft(&self, rng: &mut Rng, tokens: usize, depth: f64, fit: &Fit) -> Result<Draft> {
        let cities = rng.sample(words::CITIES, 2);
        let (gold, answer) = facts(rng, cities[0]);
        let (other, _) = facts(rng, cities[1]);
        let input = format!(
            "Question: How many crates did the warehouse in {} hold at the end of the \
             week? Give the final answer as a number.",
            cities[0]
        );
        let all: Vec<String> = gold.iter().chain(&other).cloned().collect();
        let over = fit.overhead(&all.join(" "), &input)?;
        let hay = fit.fill(budget(tokens, over), rng, words::sentence)?;
        // The gold facts run in order from `depth` to the end; the distractor's facts are
        // spread over the whole story, in order too.
        let n = gold.len() as f64;
        let mut depths: Vec<f64> = (0..gold.len())
            .map(|j| depth + (1.0 - depth) * j as f64 / n)
            .collect();
        depths.extend((0..other.len()).map(|j| (j as f64 + 0.5) / other.len() as f64));
        let mut meta = Map::new();
        meta.insert("depth".into(), json!(depth));
        meta.insert("steps".into(), json!(STEPS));
        Ok(Draft {
            context: insert(hay, &all, &depths),
            input,
            answers: vec![answer.to_string()],
            meta,
        })
    }
}
