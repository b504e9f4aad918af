//! RULER's `string_match_all` and `string_match_part` (`scripts/eval/synthetic/constants.py`),
//! per sample: each reference is looked for, lowercased, in the lowercased prediction.
//! RULER's evaluate.py first strips the prediction and replaces control characters; that is
//! the caller's business, as is the task's choice of metric.

use crate::pyunicode;

fn found(prediction_lower: &str, reference: &str) -> bool {
    prediction_lower.contains(pyunicode::lower(reference).as_str())
}

/// `sum(r.lower() in pred.lower() for r in refs) / len(refs)`; 0.0 without references.
pub fn string_match_all(prediction: &str, references: &[String]) -> f64 {
    if references.is_empty() {
        return 0.0;
    }
    let p = pyunicode::lower(prediction);
    let hits = references.iter().filter(|r| found(&p, r)).count();
    hits as f64 / references.len() as f64
}

/// `max(r.lower() in pred.lower() for r in refs)`; 0.0 without references.
pub fn string_match_part(prediction: &str, references: &[String]) -> f64 {
    let p = pyunicode::lower(prediction);
    if references.iter().any(|r| found(&p, r)) {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruler_string_match() {
        let refs = vec!["Apple".to_string(), "42".to_string(), "pear".to_string()];
        assert_eq!(string_match_all("APPLE and 42", &refs), 2.0 / 3.0);
        assert_eq!(string_match_part("apple", &refs), 1.0);
        assert_eq!(string_match_part("plum", &refs), 0.0);
        assert_eq!(string_match_all("x", &[]), 0.0);
        // The empty reference is in every prediction.
        assert_eq!(string_match_part("", &[String::new()]), 1.0);
    }
}
