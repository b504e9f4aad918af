//! Question answering over generated biographies: one document holds the answer, the others
//! are about other people with the same kinds of facts (our own generator, in the style of
//! LongBench's single- and multi-document QA).

use super::{budget, rng::Rng, words, Draft, Fit, Generator};
use crate::error::Result;
use crate::spec::{TaskSpec, Truncation};
use kvlens_score::Metric;
use serde_json::{json, Map};

pub struct DocQa;

struct Person {
    name: String,
    city: String,
    profession: String,
    instrument: String,
    year: u64,
}

fn person(rng: &mut Rng) -> Person {
    Person {
        name: format!(
            "{} {}",
            rng.pick(words::FIRST_NAMES),
            rng.pick(words::LAST_NAMES)
        ),
        city: rng.pick(words::CITIES).to_string(),
        profession: rng.pick(words::PROFESSIONS).to_string(),
        instrument: rng.pick(words::INSTRUMENTS).to_string(),
        year: rng.range(1901, 1999),
    }
}

fn document(p: &Person, rng: &mut Rng, k: usize) -> String {
    let mut lines = vec![
        format!(
            "{} was born in {} in the town of {}.",
            p.name, p.year, p.city
        ),
        format!("{} worked as a {} for many years.", p.name, p.profession),
        format!(
            "In the evenings, {} liked to play the {}.",
            p.name, p.instrument
        ),
    ];
    for _ in 0..k {
        let at = rng.below(lines.len() + 1);
        lines.insert(at, words::sentence(rng));
    }
    format!("Biography of {}\n{}", p.name, lines.join(" "))
}

impl Generator for DocQa {
    fn name(&self) -> &'static str {
        "doc_qa"
    }
    fn description(&self) -> &'static str {
        "document QA: one fact about one person among many generated biographies"
    }
    fn source(&self) -> &'static str {
        "kvlens generator (LongBench-style document QA)"
    }
    fn spec(&self) -> TaskSpec {
        TaskSpec {
            name: self.name().into(),
            description: self.description().into(),
            template: "Answer the question based on the given documents. Only give me the \
                       answer and do not output any other words.\n\nThe following are the \
                       documents:\n\n{context}\n\n{input}"
                .into(),
            max_new_tokens: 32,
            metric: Metric::QaF1,
            chat: true,
            first_line: false,
            stop: vec![],
            truncation: Truncation::Middle,
        }
    }
    fn draft(&self, rng: &mut Rng, tokens: usize, depth: f64, fit: &Fit) -> Result<Draft> {
        let gold = person(rng);
        let (question, answer, asked) = match rng.below(4) {
            0 => (
                format!("In which town was {} born?", gold.name),
                gold.city.clone(),
                "town",
            ),
            1 => (
                format!("What did {} work as?", gold.name),
                gold.profession.clone(),
                "profession",
            ),
            2 => (
                format!("Which instrument did {} like to play?", gold.name),
                gold.instrument.clone(),
                "instrument",
            ),
            _ => (
                format!("In which year was {} born?", gold.name),
                gold.year.to_string(),
                "year",
            ),
        };
        let input = format!("Question: {question}\nAnswer:");
        let gold_doc = document(&gold, rng, 4);
        let over = fit.overhead(&gold_doc, &input)?;
        let mut docs = fit.fill(budget(tokens, over), rng, |rng| {
            let mut p = person(rng);
            while p.name == gold.name {
                p = person(rng);
            }
            let k = 2 + rng.below(5);
            document(&p, rng, k)
        })?;
        let at = ((docs.len() as f64) * depth).round() as usize;
        docs.insert(at.min(docs.len()), gold_doc);
        let n = docs.len();
        let context = docs
            .iter()
            .enumerate()
            .map(|(i, d)| format!("Document {}: {d}", i + 1))
            .collect::<Vec<_>>()
            .join("\n\n");
        let mut meta = Map::new();
        meta.insert("depth".into(), json!(depth));
        meta.insert("documents".into(), json!(n));
        meta.insert("asked".into(), json!(asked));
        Ok(Draft {
            context,
            input,
            answers: vec![answer],
            meta,
        })
    }
}
