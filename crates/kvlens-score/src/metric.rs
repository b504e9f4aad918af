//! The metric names tasks and records use, and the pass rule.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Every metric kvlens computes. The names are those LongBench's `eval.py` and RULER use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// LongBench `qa_f1_score`: normalized token F1.
    QaF1,
    /// LongBench `qa_f1_zh_score`: token F1 over jieba words.
    QaF1Zh,
    /// LongBench `rouge_score`: ROUGE-L F of the PyPI `rouge` package.
    Rouge,
    /// LongBench `rouge_zh_score`: ROUGE-L over jieba words.
    RougeZh,
    /// LongBench `classification_score`.
    Classification,
    /// LongBench `retrieval_score` (`Paragraph N`).
    Retrieval,
    /// LongBench `retrieval_zh_score` (`段落N`).
    RetrievalZh,
    /// LongBench `count_score`.
    Count,
    /// LongBench `code_sim_score`: fuzzywuzzy ratio of the first code line.
    CodeSim,
    /// RULER `string_match_all`: share of the answers found in the prediction.
    StringMatchAll,
    /// RULER `string_match_part`: 1 when any answer is found in the prediction.
    StringMatchPart,
    /// SQuAD exact match after SQuAD normalization.
    ExactMatch,
    /// SQuAD token F1.
    SquadF1,
    /// Math: the extracted final number equals the gold number.
    Math,
}

pub const ALL: [Metric; 14] = [
    Metric::QaF1,
    Metric::QaF1Zh,
    Metric::Rouge,
    Metric::RougeZh,
    Metric::Classification,
    Metric::Retrieval,
    Metric::RetrievalZh,
    Metric::Count,
    Metric::CodeSim,
    Metric::StringMatchAll,
    Metric::StringMatchPart,
    Metric::ExactMatch,
    Metric::SquadF1,
    Metric::Math,
];

impl Metric {
    pub fn all() -> &'static [Metric] {
        &ALL
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::QaF1 => "qa_f1",
            Metric::QaF1Zh => "qa_f1_zh",
            Metric::Rouge => "rouge",
            Metric::RougeZh => "rouge_zh",
            Metric::Classification => "classification",
            Metric::Retrieval => "retrieval",
            Metric::RetrievalZh => "retrieval_zh",
            Metric::Count => "count",
            Metric::CodeSim => "code_sim",
            Metric::StringMatchAll => "string_match_all",
            Metric::StringMatchPart => "string_match_part",
            Metric::ExactMatch => "exact_match",
            Metric::SquadF1 => "squad_f1",
            Metric::Math => "math",
        }
    }

    /// Exact metrics score a sample 0 or 1 (string_match_all gives a share, but passes only
    /// at 1); graded ones give a similarity.
    pub fn exact(self) -> bool {
        !matches!(
            self,
            Metric::QaF1
                | Metric::QaF1Zh
                | Metric::Rouge
                | Metric::RougeZh
                | Metric::CodeSim
                | Metric::SquadF1
        )
    }

    /// Whether scoring needs the Chinese word segmenter.
    pub fn needs_jieba(self) -> bool {
        matches!(self, Metric::QaF1Zh | Metric::RougeZh)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown metric `{given}`; known metrics: {known}")]
pub struct MetricError {
    pub given: String,
    pub known: String,
}

impl FromStr for Metric {
    type Err = MetricError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL.iter()
            .copied()
            .find(|m| m.name() == s.trim())
            .ok_or_else(|| MetricError {
                given: s.to_string(),
                known: ALL.map(|m| m.name()).join(", "),
            })
    }
}

/// When a score counts as a pass.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PassRule {
    /// A sample passes when `score >= threshold`.
    pub threshold: f64,
}

impl PassRule {
    /// Exact metrics pass at 1.0, graded metrics at 0.5, unless `threshold` overrides.
    pub fn for_metric(metric: Metric, threshold: Option<f64>) -> Self {
        let threshold = threshold.unwrap_or(if metric.exact() { 1.0 } else { 0.5 });
        Self { threshold }
    }

    pub fn passes(&self, score: f64) -> bool {
        score >= self.threshold
    }

    /// The rule as written into records, e.g. `score >= 0.5`.
    pub fn describe(&self) -> String {
        format!("score >= {}", self.threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in Metric::all() {
            assert_eq!(m.name().parse::<Metric>().unwrap(), *m);
        }
        let e = "bleu".parse::<Metric>().unwrap_err().to_string();
        assert!(e.contains("bleu") && e.contains("qa_f1"), "{e}");
    }

    #[test]
    fn pass_rule_defaults() {
        assert!(PassRule::for_metric(Metric::Retrieval, None).passes(1.0));
        assert!(!PassRule::for_metric(Metric::Retrieval, None).passes(0.99));
        assert!(PassRule::for_metric(Metric::QaF1, None).passes(0.5));
        assert!(!PassRule::for_metric(Metric::QaF1, Some(0.8)).passes(0.7));
    }
}
