//! Variable tracking (RULER, Hsieh et al. 2024): a chain of assignments `VAR B = VAR A`
//! hidden in filler; the model names every variable that ends up holding the value.

use super::{budget, insert, rng::Rng, words, Draft, Fit, Generator};
use crate::error::Result;
use crate::spec::{TaskSpec, Truncation};
use kvlens_score::Metric;
use serde_json::{json, Map};

pub struct VariableTracking;

/// Assignments after the first one.
const HOPS: usize = 4;

fn var_name(rng: &mut Rng) -> String {
    (0..5)
        .map(|_| (b'A' + rng.below(26) as u8) as char)
        .collect()
}

impl Generator for VariableTracking {
    fn name(&self) -> &'static str {
        "vt"
    }
    fn description(&self) -> &'static str {
        "variable tracking: follow a chain of 4 assignments through filler"
    }
    fn source(&self) -> &'static str {
        "RULER (Hsieh et al. 2024)"
    }
    fn spec(&self) -> TaskSpec {
        TaskSpec {
            name: self.name().into(),
            description: self.description().into(),
            template: "Memorize and track the chain of variable assignments hidden in the \
                       following text.\n\n{context}\n\n{input}"
                .into(),
            max_new_tokens: 32,
            metric: Metric::StringMatchAll,
            chat: true,
            first_line: false,
            stop: vec![],
            truncation: Truncation::Middle,
        }
    }
    fn draft(&self, rng: &mut Rng, tokens: usize, depth: f64, fit: &Fit) -> Result<Draft> {
        let mut vars: Vec<String> = Vec::new();
        while vars.len() < HOPS + 1 {
            let v = var_name(rng);
            if !vars.contains(&v) {
                vars.push(v);
            }
        }
        let value = rng.digits(5).to_string();
        let mut statements = vec![format!("VAR {} = {value}.", vars[0])];
        for w in vars.windows(2) {
            statements.push(format!("VAR {} = VAR {}.", w[1], w[0]));
        }
        let input = format!(
            "Question: Find all variables that are assigned the value {value} in the text \
             above. Answer with the variable names only."
        );
        let over = fit.overhead(&statements.join(" "), &input)?;
        let mut k = 0;
        let hay = fit.fill(budget(tokens, over), rng, |_| {
            k += 1;
            words::NOISE[(k - 1) % words::NOISE.len()].to_string()
        })?;
        // The chain starts at `depth` and its links follow in order through the rest of
        // the context.
        let span = 1.0 - depth;
        let depths: Vec<f64> = (0..statements.len())
            .map(|j| depth + span * j as f64 / statements.len() as f64)
            .collect();
        let mut meta = Map::new();
        meta.insert("depth".into(), json!(depth));
        meta.insert("hops".into(), json!(HOPS));
        Ok(Draft {
            context: insert(hay, &statements, &depths),
            input,
            answers: vars,
            meta,
        })
    }
}
