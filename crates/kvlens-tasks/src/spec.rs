//! What a task asks of the model: its prompt template, generation limits, metric and rules.

use crate::error::{Result, TaskError};
use crate::sample::{py_str, Sample};
use kvlens_score::Metric;
use serde::{Deserialize, Serialize};

/// How a task turns samples into prompts and scores answers. Built-in tasks have one each;
/// users write the same as TOML for their own JSONL files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A Python `str.format` template over the sample's fields, e.g. `"{context}\n\n{input}"`
    /// (`{{` and `}}` are literal braces).
    pub template: String,
    pub max_new_tokens: usize,
    pub metric: Metric,
    /// Wrap the prompt in the model's chat template.
    #[serde(default = "yes")]
    pub chat: bool,
    /// Score only the first line of the answer (LongBench trec, triviaqa, samsum, lsht).
    #[serde(default)]
    pub first_line: bool,
    /// Generation stops at any of these strings.
    #[serde(default)]
    pub stop: Vec<String>,
    /// What to do with prompts longer than the limit.
    #[serde(default)]
    pub truncation: Truncation,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Truncation {
    /// Keep the first and last halves of the tokens, as LongBench's `pred.py` does.
    #[default]
    Middle,
    /// Keep the last tokens.
    Left,
    /// Refuse: the sample is recorded with an error.
    None,
}

/// Token counting for truncation; the runner adapts the model's tokenizer to it.
pub trait Tokenize {
    /// Ids of `text` without special tokens.
    fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, String>;
    /// Text of `ids`, special tokens skipped.
    fn decode(&self, ids: &[u32]) -> std::result::Result<String, String>;
}

/// A prompt ready for the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub text: String,
    pub chat: bool,
    /// Tokens of the raw prompt before truncation.
    pub raw_tokens: usize,
    pub truncated: bool,
}

impl TaskSpec {
    /// The raw prompt of `sample` (before truncation and chat template).
    pub fn render(&self, sample: &Sample) -> Result<String> {
        py_format(&self.template, |name| {
            sample.fields.get(name).map(py_str).ok_or_else(|| {
                TaskError::Invalid(format!(
                    "task {}: sample {} has no field `{name}`, which the prompt template names",
                    self.name, sample.id
                ))
            })
        })
    }

    /// The prompt of `sample`, truncated to at most `max_prompt_tokens` raw tokens.
    pub fn prompt(
        &self,
        sample: &Sample,
        tok: &dyn Tokenize,
        max_prompt_tokens: usize,
    ) -> Result<Prompt> {
        let text = self.render(sample)?;
        let ids = tok.encode(&text).map_err(TaskError::Tokenizer)?;
        let raw_tokens = ids.len();
        if raw_tokens <= max_prompt_tokens {
            return Ok(Prompt {
                text,
                chat: self.chat,
                raw_tokens,
                truncated: false,
            });
        }
        let text = match self.truncation {
            Truncation::None => {
                return Err(TaskError::Invalid(format!(
                    "sample {} has {raw_tokens} prompt tokens, more than {max_prompt_tokens}, \
                     and task {} does not truncate",
                    sample.id, self.name
                )))
            }
            Truncation::Middle => {
                // pred.py: half = int(max_length/2); first half + last half, decoded apart.
                let half = max_prompt_tokens / 2;
                let head = tok.decode(&ids[..half]).map_err(TaskError::Tokenizer)?;
                let tail = tok
                    .decode(&ids[ids.len() - half..])
                    .map_err(TaskError::Tokenizer)?;
                head + &tail
            }
            Truncation::Left => tok
                .decode(&ids[ids.len() - max_prompt_tokens..])
                .map_err(TaskError::Tokenizer)?,
        };
        Ok(Prompt {
            text,
            chat: self.chat,
            raw_tokens,
            truncated: true,
        })
    }
}

/// Python's `str.format` with named fields only: `{name}` is replaced, `{{`/`}}` are braces.
pub fn py_format(template: &str, mut field: impl FnMut(&str) -> Result<String>) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut chars = template.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|p| p.1) == Some('{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek().map(|p| p.1) == Some('}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let rest = &template[i + 1..];
                let end = rest.find('}').ok_or_else(|| {
                    TaskError::Invalid(format!("template: `{{` at byte {i} is never closed"))
                })?;
                let name = &rest[..end];
                if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                    return Err(TaskError::Invalid(format!(
                        "template: `{{{name}}}` is not a field name (write `{{{{` for a brace)"
                    )));
                }
                out.push_str(&field(name)?);
                // Skip the name and its closing brace (counted in characters, not bytes).
                for _ in 0..=name.chars().count() {
                    chars.next();
                }
            }
            '}' => {
                return Err(TaskError::Invalid(format!(
                    "template: single `}}` at byte {i} (write `}}}}` for a brace)"
                )))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    fn sample() -> Sample {
        let mut fields = Map::new();
        fields.insert("context".into(), json!("C"));
        fields.insert("input".into(), json!(7));
        Sample {
            id: "s1".into(),
            fields,
            answers: vec!["a".into()],
            all_classes: vec![],
            meta: Map::new(),
        }
    }

    fn spec(template: &str) -> TaskSpec {
        TaskSpec {
            name: "t".into(),
            description: String::new(),
            template: template.into(),
            max_new_tokens: 8,
            metric: Metric::QaF1,
            chat: true,
            first_line: false,
            stop: vec![],
            truncation: Truncation::Middle,
        }
    }

    #[test]
    fn formats_like_python() {
        let s = spec("{{x}} {context}: {input}\n")
            .render(&sample())
            .unwrap();
        assert_eq!(s, "{x} C: 7\n");
        let e = spec("{missing}").render(&sample()).unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains("s1"), "{e}");
        assert!(spec("{context").render(&sample()).is_err());
        assert!(spec("a } b").render(&sample()).is_err());
        assert!(spec("{input:>3}").render(&sample()).is_err());
    }

    struct Chars;
    impl Tokenize for Chars {
        fn encode(&self, t: &str) -> std::result::Result<Vec<u32>, String> {
            Ok(t.chars().map(|c| c as u32).collect())
        }
        fn decode(&self, ids: &[u32]) -> std::result::Result<String, String> {
            Ok(ids.iter().filter_map(|&i| char::from_u32(i)).collect())
        }
    }

    #[test]
    fn middle_truncation_keeps_both_ends() {
        let mut s = sample();
        s.fields.insert("context".into(), json!("abcdefghij"));
        let p = spec("{context}").prompt(&s, &Chars, 5).unwrap();
        // int(5/2) = 2 from each end, as pred.py does.
        assert_eq!(p.text, "abij");
        assert!(p.truncated);
        assert_eq!(p.raw_tokens, 10);
        let p = spec("{context}").prompt(&s, &Chars, 10).unwrap();
        assert!(!p.truncated);
        let mut none = spec("{context}");
        none.truncation = Truncation::None;
        assert!(none.prompt(&s, &Chars, 5).is_err());
    }
}
