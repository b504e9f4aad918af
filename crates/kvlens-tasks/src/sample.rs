//! One sample of a task, as every loader produces it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One sample: the fields its prompt template reads, its reference answers and what the
/// generator that made it chose (`meta`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Unique within its task.
    pub id: String,
    /// Fields a prompt template may name (`context`, `input`, `question`, ...).
    pub fields: Map<String, Value>,
    /// Reference answers, as Python's `str()` prints them (LongBench's passage_count has
    /// integers).
    pub answers: Vec<String>,
    /// Class names for classification tasks (LongBench `all_classes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all_classes: Vec<String>,
    /// Generator parameters or source metadata (context length, needle depth, hops, ...).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub meta: Map<String, Value>,
}

/// A JSON value as Python's `str()` prints it (scalars as `kvlens_score::python_str`; lists
/// and objects as JSON text, which only error messages show).
pub fn py_str(v: &Value) -> String {
    kvlens_score::python_str(v).unwrap_or_else(|| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_str_of_json_scalars() {
        assert_eq!(py_str(&json!(3)), "3");
        assert_eq!(py_str(&json!("x")), "x");
        assert_eq!(py_str(&json!(2.0)), "2.0");
        assert_eq!(py_str(&json!(0.1)), "0.1");
        assert_eq!(py_str(&json!(1e16)), "1e+16");
        assert_eq!(py_str(&json!(1.5e-5)), "1.5e-05");
        assert_eq!(py_str(&json!(true)), "True");
        assert_eq!(py_str(&json!([1])), "[1]");
        assert_eq!(py_str(&json!(null)), "None");
    }
}
