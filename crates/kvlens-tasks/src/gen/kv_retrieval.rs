//! Key-value retrieval over a JSON object of random UUIDs (Liu et al. 2023, "Lost in the
//! Middle: How Language Models Use Long Contexts").

use super::{budget, rng::Rng, Draft, Fit, Generator};
use crate::error::Result;
use crate::spec::{TaskSpec, Truncation};
use kvlens_score::Metric;
use serde_json::{json, Map};

pub struct KvRetrieval;

fn uuid(rng: &mut Rng) -> String {
    let hex = |rng: &mut Rng, n: usize| -> String {
        (0..n)
            .map(|_| char::from_digit(rng.below(16) as u32, 16).unwrap_or('0'))
            .collect()
    };
    format!(
        "{}-{}-{}-{}-{}",
        hex(rng, 8),
        hex(rng, 4),
        hex(rng, 4),
        hex(rng, 4),
        hex(rng, 12)
    )
}

fn pair(k: &str, v: &str) -> String {
    format!("\"{k}\": \"{v}\"")
}

impl Generator for KvRetrieval {
    fn name(&self) -> &'static str {
        "kv_retrieval"
    }
    fn description(&self) -> &'static str {
        "key-value retrieval: the value of one UUID key in a JSON object"
    }
    fn source(&self) -> &'static str {
        "Liu et al. 2023 (Lost in the Middle)"
    }
    fn spec(&self) -> TaskSpec {
        TaskSpec {
            name: self.name().into(),
            description: self.description().into(),
            template: "Extract the value corresponding to the specified key in the JSON \
                       object below.\n\nJSON data:\n{context}\n\n{input}"
                .into(),
            max_new_tokens: 48,
            metric: Metric::StringMatchAll,
            chat: true,
            first_line: false,
            stop: vec![],
            truncation: Truncation::Middle,
        }
    }
    fn draft(&self, rng: &mut Rng, tokens: usize, depth: f64, fit: &Fit) -> Result<Draft> {
        let key = uuid(rng);
        let value = uuid(rng);
        let input = format!("Key: \"{key}\"\nCorresponding value:");
        let over = fit.overhead(&format!("{{{}}}", pair(&key, &value)), &input)?;
        let mut pairs = fit.fill(budget(tokens, over), rng, |rng| {
            let k = uuid(rng);
            let v = uuid(rng);
            format!("{},", pair(&k, &v))
        })?;
        let at = ((pairs.len() as f64) * depth).round() as usize;
        pairs.insert(at.min(pairs.len()), format!("{},", pair(&key, &value)));
        let n = pairs.len();
        if let Some(last) = pairs.last_mut() {
            last.pop();
        }
        let mut meta = Map::new();
        meta.insert("depth".into(), json!(depth));
        meta.insert("pairs".into(), json!(n));
        Ok(Draft {
            context: format!("{{{}}}", pairs.join(" ")),
            input,
            answers: vec![value],
            meta,
        })
    }
}
