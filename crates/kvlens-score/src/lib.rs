//! Per-sample metrics that agree with the implementations benchmark authors ship
//! (LongBench v1, RULER, SQuAD, GSM8K-style math), quirks included.
//!
//! [`score`] gives one sample's score in [0, 1]; [`first_line`] is LongBench's first-line rule,
//! which callers apply themselves for the tasks that use it (`score` never does);
//! [`dataset_score`] is LongBench's `round(100 * np.mean(scores), 2)`.
//!
//! Parity with the Python implementations is checked sample by sample against
//! `tests/fixtures/parity.jsonl`, written by `scripts/score_reference.sh`.

mod aggregate;
mod difflib;
mod jieba;
pub mod longbench;
pub mod math;
mod metric;
mod pyunicode;
mod rouge;
pub mod ruler;
pub mod squad;

pub use aggregate::{
    dataset_score, dataset_score_sequential, numpy_sum, python_float_repr, python_round, python_str,
};
pub use difflib::fuzz_ratio;
pub use metric::{Metric, MetricError, PassRule};

/// The score of one sample.
///
/// LongBench metrics take the maximum over the answers, as `eval.py` does
/// (`score = max(score, metric(prediction, gt, all_classes=all_classes))` from 0.0); RULER's
/// string matches, SQuAD and math use their own rules over the whole answer list. No answers
/// score 0.0. `all_classes` is read by `classification` only. Answers that are numbers in the
/// data (LongBench's passage_count) are passed as Python's `str()` prints them
/// ([`python_str`]).
///
/// The prediction is used as given: for the LongBench tasks whose `eval.py` keeps only the
/// first line (trec, triviaqa, samsum, lsht), apply [`first_line`] first.
pub fn score(metric: Metric, prediction: &str, answers: &[String], all_classes: &[String]) -> f64 {
    use longbench as lb;
    let max_over =
        |one: &dyn Fn(&str) -> f64| answers.iter().fold(0.0f64, |best, gt| best.max(one(gt)));
    match metric {
        // The prediction's side is prepared once for all answers.
        Metric::QaF1 | Metric::SquadF1 => squad::f1(prediction, answers),
        Metric::QaF1Zh => {
            if answers.is_empty() {
                return 0.0;
            }
            let p = lb::zh_tokens(prediction);
            max_over(&|gt| lb::f1_tokens(&p, &lb::zh_tokens(gt)))
        }
        Metric::Rouge => max_over(&|gt| lb::rouge_score(prediction, gt)),
        Metric::RougeZh => {
            if answers.is_empty() {
                return 0.0;
            }
            let p = lb::jieba_joined(prediction);
            max_over(&|gt| lb::rouge_zh_joined(&p, &lb::jieba_joined(gt)))
        }
        Metric::Classification => {
            max_over(&|gt| lb::classification_score(prediction, gt, all_classes))
        }
        Metric::Retrieval => max_over(&|gt| lb::retrieval_score(prediction, gt)),
        Metric::RetrievalZh => max_over(&|gt| lb::retrieval_zh_score(prediction, gt)),
        Metric::Count => max_over(&|gt| lb::count_score(prediction, gt)),
        Metric::CodeSim => {
            let line = lb::code_first_line(prediction);
            max_over(&|gt| f64::from(fuzz_ratio(line, gt)) / 100.0)
        }
        Metric::StringMatchAll => ruler::string_match_all(prediction, answers),
        Metric::StringMatchPart => ruler::string_match_part(prediction, answers),
        Metric::ExactMatch => squad::exact_match(prediction, answers),
        Metric::Math => math::math_score(prediction, answers),
    }
}

/// Build the Chinese word segmenter now, for instance on a background thread while records
/// are read, when some metric [needs it](Metric::needs_jieba). Otherwise the first Chinese
/// score builds it (about a quarter of a second); other metrics never do.
pub fn load_segmenter() {
    jieba::load_now();
}

/// LongBench's first-line rule, `prediction.lstrip('\n').split('\n')[0]`, which `eval.py`
/// applies to trec, triviaqa, samsum and lsht before scoring.
pub fn first_line(prediction: &str) -> &str {
    let rest = prediction.trim_start_matches('\n');
    rest.split('\n').next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn max_over_answers_and_no_answers() {
        let answers = strings(&["Paris", "the city of Paris"]);
        assert_eq!(score(Metric::QaF1, "paris", &answers, &[]), 1.0);
        for m in Metric::all() {
            assert_eq!(score(*m, "anything", &[], &[]), 0.0, "{m}");
        }
    }

    #[test]
    fn first_line_rule() {
        assert_eq!(first_line("\n\nfirst\nsecond"), "first");
        assert_eq!(first_line(""), "");
        assert_eq!(first_line("\r\nx"), "\r");
    }
}
