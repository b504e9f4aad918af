//! Math word problems in the GSM8K format (Cobbe et al., 2021): JSONL with `question` and
//! `answer`, the answer a worked solution whose last line is `#### N`.
//!
//! The gold answer is N with thousands separators removed. Few-shot prompts show k solved
//! examples; their solutions drop the calculator annotations (`<<48/2=24>>`) and end in
//! "The answer is N." — the form the prompt asks the model to finish with.

use super::Ids;
use crate::error::{Result, TaskError};
use crate::jsonl::{read_objects, Fields};
use crate::sample::Sample;
use crate::spec::{TaskSpec, Truncation};
use kvlens_score::Metric;
use serde_json::{Map, Value};
use std::path::Path;

/// The prompt: an instruction, the `shots` (empty for zero-shot), then the question.
pub const TEMPLATE: &str = "Answer the math question. Think step by step, then end with \
\"The answer is N.\" where N is the final number.\n\n{shots}Question: {question}\nAnswer:";

/// The task spec for `shots` examples: `gsm8k` zero-shot, `gsm8k_8shot` with 8.
pub fn spec(shots: usize) -> TaskSpec {
    let (name, description) = if shots == 0 {
        (
            "gsm8k".to_string(),
            "grade-school math word problems (GSM8K), zero-shot".to_string(),
        )
    } else {
        (
            format!("gsm8k_{shots}shot"),
            format!("grade-school math word problems (GSM8K), {shots}-shot"),
        )
    };
    TaskSpec {
        name,
        description,
        template: TEMPLATE.into(),
        // lm-evaluation-harness generates up to 256 tokens for gsm8k.
        max_new_tokens: 256,
        metric: Metric::Math,
        chat: true,
        first_line: false,
        // A model that goes on past its answer starts the next example's question.
        stop: vec!["\nQuestion:".into()],
        truncation: Truncation::Middle,
    }
}

/// The number after the last `####` with thousands separators removed, or `None` when the
/// answer has no `####` or what follows is not a number.
pub fn gold(answer: &str) -> Option<String> {
    let (_, tail) = answer.rsplit_once("####")?;
    let n: String = tail.trim().chars().filter(|&c| c != ',').collect();
    // `f64` also parses "inf" and "NaN"; a gold answer has digits.
    (n.parse::<f64>().is_ok() && n.chars().any(|c| c.is_ascii_digit())).then_some(n)
}

/// A solution as a few-shot example shows it: annotations dropped, `#### N` replaced by
/// "The answer is N.".
fn worked(answer: &str, gold: &str) -> String {
    let body = answer.rsplit_once("####").map_or(answer, |(b, _)| b);
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(start) = rest.find("<<") {
        match rest[start..].find(">>") {
            Some(end) => {
                out.push_str(&rest[..start]);
                rest = &rest[start + end + 2..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    let body = out.trim_end();
    if body.is_empty() {
        format!("The answer is {gold}.")
    } else {
        format!("{body}\nThe answer is {gold}.")
    }
}

struct Row {
    line: usize,
    id: String,
    question: String,
    answer: String,
    gold: String,
}

fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut ids = Ids::new(path);
    read_objects(path, |line, obj| {
        let f = Fields {
            path,
            line,
            obj: &obj,
        };
        let question = f.str("question")?;
        let answer = f.str("answer")?;
        let gold = gold(answer)
            .ok_or_else(|| f.err("answer", "does not end in \"#### N\" with N a number"))?;
        let id = ids.id_or_line(&f)?;
        rows.push(Row {
            line,
            id,
            question: question.to_string(),
            answer: answer.to_string(),
            gold,
        });
        Ok(())
    })?;
    Ok(rows)
}

/// Reads GSM8K JSONL. With `shots` > 0 the first `shots` problems of `shots_from` (a train
/// file) become the examples; without `shots_from` they come from the top of `path` itself
/// and are left out of the samples. Ids are the optional `id` (or `_id`) field, else the
/// line number.
pub fn load(path: &Path, shots: usize, shots_from: Option<&Path>) -> Result<Vec<Sample>> {
    let mut rows = read_rows(path)?;
    let examples: Vec<Row> = match (shots, shots_from) {
        (0, _) => Vec::new(),
        (k, Some(from)) => {
            let mut ex = read_rows(from)?;
            if ex.len() < k {
                return Err(TaskError::File {
                    path: from.to_path_buf(),
                    msg: format!(
                        "holds {} problems, fewer than the {k} shots asked for",
                        ex.len()
                    ),
                });
            }
            ex.truncate(k);
            ex
        }
        (k, None) => {
            if rows.len() <= k {
                return Err(TaskError::File {
                    path: path.to_path_buf(),
                    msg: format!(
                        "holds {} problems: {k} shots taken from its top leave none to ask \
                         (give a train file for the shots)",
                        rows.len()
                    ),
                });
            }
            rows.drain(..k).collect()
        }
    };
    let shot_text: String = examples
        .iter()
        .map(|r| {
            format!(
                "Question: {}\nAnswer: {}\n\n",
                r.question,
                worked(&r.answer, &r.gold)
            )
        })
        .collect();
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut fields = Map::new();
            fields.insert("question".into(), Value::String(r.question));
            fields.insert("shots".into(), Value::String(shot_text.clone()));
            let mut meta = Map::new();
            meta.insert("shots".into(), Value::from(examples.len()));
            meta.insert("line".into(), Value::from(r.line));
            meta.insert("solution".into(), Value::String(r.answer));
            Sample {
                id: r.id,
                fields,
                answers: vec![r.gold],
                all_classes: Vec::new(),
                meta,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problem(q: &str, a: &str) -> String {
        json!({"question": q, "answer": a}).to_string()
    }

    #[test]
    fn gold_is_the_number_after_the_marks() {
        assert_eq!(gold("48/2 = <<48/2=24>>24\n#### 72").as_deref(), Some("72"));
        assert_eq!(gold("x\n#### 1,250").as_deref(), Some("1250"));
        assert_eq!(gold("#### -3.5 ").as_deref(), Some("-3.5"));
        assert_eq!(gold("no marks"), None);
        assert_eq!(gold("#### seven"), None);
        assert_eq!(gold("#### inf"), None);
        assert_eq!(
            worked("She sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
            "She sold 48/2 = 24 clips.\nThe answer is 72."
        );
    }

    #[test]
    fn zero_and_few_shot_prompts() {
        let dir = tempfile::tempdir().unwrap();
        let test = dir.path().join("test.jsonl");
        let train = dir.path().join("train.jsonl");
        std::fs::write(
            &test,
            [
                problem("1+1?", "1+1=<<1+1=2>>2\n#### 2"),
                problem("Big?", "#### 1,000"),
            ]
            .join("\n"),
        )
        .unwrap();
        std::fs::write(
            &train,
            [
                problem("T1?", "a\n#### 5"),
                problem("T2?", "b\n#### 6"),
                problem("T3?", "#### 7"),
            ]
            .join("\n"),
        )
        .unwrap();

        let zero = load(&test, 0, None).unwrap();
        assert_eq!(zero.len(), 2);
        assert_eq!(
            (zero[0].id.as_str(), zero[1].answers[0].as_str()),
            ("1", "1000")
        );
        let p = spec(0).render(&zero[0]).unwrap();
        assert!(
            p.ends_with("final number.\n\nQuestion: 1+1?\nAnswer:"),
            "{p}"
        );
        assert_eq!(spec(0).metric, Metric::Math);

        let two = load(&test, 2, Some(&train)).unwrap();
        assert_eq!(two.len(), 2);
        let p = spec(2).render(&two[1]).unwrap();
        assert!(
            p.ends_with(
                "\n\nQuestion: T1?\nAnswer: a\nThe answer is 5.\n\n\
                 Question: T2?\nAnswer: b\nThe answer is 6.\n\nQuestion: Big?\nAnswer:"
            ),
            "{p}"
        );
        assert_eq!(spec(2).name, "gsm8k_2shot");

        // Shots from the top of the file itself are not asked again.
        let own = load(&train, 1, None).unwrap();
        assert_eq!(
            own.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["2", "3"]
        );
        assert!(own[0].fields["shots"]
            .as_str()
            .unwrap()
            .starts_with("Question: T1?"));

        let e = load(&test, 4, Some(&train)).unwrap_err().to_string();
        assert!(
            e.contains("train.jsonl") && e.contains("fewer than the 4 shots"),
            "{e}"
        );
        assert!(load(&test, 2, None).is_err());
    }

    #[test]
    fn bad_lines_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gsm.jsonl");
        let ok = problem("q", "#### 1");
        for (bad, want) in [
            (
                json!({"answer": "#### 1"}).to_string(),
                "field \"question\" is missing",
            ),
            (
                json!({"question": "q", "answer": 3}).to_string(),
                "field \"answer\" is not a string",
            ),
            (problem("q", "just 4"), "field \"answer\" does not end in"),
            ("{\"question\"".to_string(), "invalid JSON"),
        ] {
            std::fs::write(&p, format!("{ok}\n{bad}\n")).unwrap();
            let e = load(&p, 0, None).unwrap_err().to_string();
            assert!(e.contains("gsm.jsonl line 2") && e.contains(want), "{e}");
        }
        std::fs::write(&p, "").unwrap();
        assert!(load(&p, 0, None)
            .unwrap_err()
            .to_string()
            .contains("no samples"));
    }
}
