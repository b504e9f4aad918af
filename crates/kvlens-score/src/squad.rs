//! SQuAD v1.1's official `evaluate-v1.1.py`: `exact_match_score` and `f1_score` over
//! `normalize_answer` (the same normalization and token F1 LongBench copied as `qa_f1_score`),
//! each the maximum over the ground truths.

use crate::longbench::{f1_tokens, normalized_tokens};

/// `max(exact_match_score(prediction, gt) for gt in answers)`; 0.0 without answers.
pub fn exact_match(prediction: &str, answers: &[String]) -> f64 {
    let (mut p, mut g) = (String::new(), String::new());
    let p = normalized_tokens(prediction, &mut p);
    // Equal normalized strings are equal token lists: both are the tokens joined by spaces.
    let hit = answers.iter().any(|gt| normalized_tokens(gt, &mut g) == p);
    if hit {
        1.0
    } else {
        0.0
    }
}

/// `max(f1_score(prediction, gt) for gt in answers)`; 0.0 without answers.
pub fn f1(prediction: &str, answers: &[String]) -> f64 {
    let (mut p, mut g) = (String::new(), String::new());
    let p = normalized_tokens(prediction, &mut p);
    answers.iter().fold(0.0, |best: f64, gt| {
        best.max(f1_tokens(&p, &normalized_tokens(gt, &mut g)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squad_examples() {
        let answers = vec!["Denver Broncos".to_string(), "the Broncos".to_string()];
        assert_eq!(exact_match("broncos!", &answers), 1.0);
        assert_eq!(exact_match("Denver", &answers), 0.0);
        assert_eq!(f1("Denver", &answers), 2.0 * 1.0 * 0.5 / 1.5);
        assert_eq!(f1("x", &[]), 0.0);
    }
}
