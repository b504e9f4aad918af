//! Extractive QA in three layouts, each sample a `context`, a `question` and its answers:
//!
//! - SQuAD v1.1 / v2.0 official JSON (`data[].paragraphs[].qas[]`, answers in
//!   `answers[].text`). v2's unanswerable questions (empty answers or `is_impossible`) are
//!   skipped and counted, since the metrics compare against a gold text.
//! - Flat JSONL: `context`, `question` (or `input`), `answers` as a list, a string or
//!   Hugging Face's `{"text": [...], "answer_start": [...]}`; optional `id`/`_id` (else the
//!   line number) and `title`.
//! - HotpotQA JSON (a list of `_id`, `question`, `answer`, `context` as
//!   `[[title, [sentences]]]`); the context is rendered as LongBench renders its passages,
//!   `Passage 1:\ntitle\ntext`.
//!
//! Scored with SQuAD token F1; [`Metric::ExactMatch`] is the other SQuAD metric.

use super::Ids;
use crate::error::{Result, TaskError};
use crate::jsonl::{read_objects, Fields};
use crate::sample::Sample;
use crate::spec::{TaskSpec, Truncation};
use kvlens_score::Metric;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

pub const TEMPLATE: &str = "Answer the question based on the given text. Only give me the \
answer and do not output any other words.\n\n{context}\n\nQuestion: {question}\nAnswer:";

/// The task spec; set `metric` to [`Metric::ExactMatch`] for SQuAD's other score.
pub fn spec() -> TaskSpec {
    TaskSpec {
        name: "squad".into(),
        description: "extractive QA over a passage (SQuAD / HotpotQA format)".into(),
        template: TEMPLATE.into(),
        max_new_tokens: 32,
        metric: Metric::SquadF1,
        chat: true,
        first_line: false,
        stop: Vec::new(),
        truncation: Truncation::Middle,
    }
}

/// Which layout a file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// SQuAD official JSON: `{"data": [...]}`.
    Squad,
    /// One QA object per line.
    Jsonl,
    /// HotpotQA JSON: a list of questions.
    Hotpot,
}

/// What a QA file gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub format: Format,
    pub samples: Vec<Sample>,
    /// Questions without an answer (SQuAD v2), left out of `samples`.
    pub unanswerable: usize,
}

/// Reads a QA file in whichever layout [`detect`] finds.
pub fn load(path: &Path) -> Result<Loaded> {
    load_as(path, detect(path)?)
}

/// Reads a QA file in the given layout.
pub fn load_as(path: &Path, format: Format) -> Result<Loaded> {
    let (samples, unanswerable) = match format {
        Format::Squad => load_squad(path)?,
        Format::Jsonl => load_jsonl(path)?,
        Format::Hotpot => load_hotpot(path)?,
    };
    if samples.is_empty() {
        return Err(TaskError::File {
            path: path.to_path_buf(),
            msg: format!("holds no answerable questions ({unanswerable} without an answer)"),
        });
    }
    Ok(Loaded {
        format,
        samples,
        unanswerable,
    })
}

/// The layout of `path`: a file whose text starts with `[` is HotpotQA; one whose first
/// line is a whole object without `data` is JSONL; any other object is SQuAD JSON (the
/// official files are one line, or pretty-printed over many).
pub fn detect(path: &Path) -> Result<Format> {
    let io = |source| TaskError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(io)?;
        let t = line.trim_start();
        if t.is_empty() {
            continue;
        }
        if t.starts_with('[') {
            return Ok(Format::Hotpot);
        }
        return Ok(match serde_json::from_str::<Value>(t) {
            Ok(Value::Object(o)) if !o.contains_key("data") => Format::Jsonl,
            _ => Format::Squad,
        });
    }
    Err(TaskError::File {
        path: path.to_path_buf(),
        msg: "the file holds no samples".into(),
    })
}

/// A value inside a JSON document, with where it sits (`data[0].paragraphs[2]`) for errors.
struct Node<'a> {
    file: &'a Path,
    at: String,
    v: &'a Value,
}

impl<'a> Node<'a> {
    fn root(file: &'a Path, v: &'a Value) -> Self {
        Node {
            file,
            at: String::new(),
            v,
        }
    }

    fn err(&self, msg: &str) -> TaskError {
        let at = if self.at.is_empty() {
            "the top level"
        } else {
            &self.at
        };
        TaskError::File {
            path: self.file.to_path_buf(),
            msg: format!("{at} {msg}"),
        }
    }

    fn field(&self, key: &str) -> Result<Node<'a>> {
        let v = match self.v {
            Value::Object(o) => o.get(key),
            _ => return Err(self.err("is not an object")),
        };
        let v = v.ok_or_else(|| self.err(&format!("has no field \"{key}\"")))?;
        Ok(self.child(format!(".{key}"), v))
    }

    fn opt_field(&self, key: &str) -> Option<Node<'a>> {
        let v = self.v.as_object()?.get(key).filter(|v| !v.is_null())?;
        Some(self.child(format!(".{key}"), v))
    }

    fn child(&self, step: String, v: &'a Value) -> Node<'a> {
        let at = if self.at.is_empty() {
            step.trim_start_matches('.').to_string()
        } else {
            format!("{}{step}", self.at)
        };
        Node {
            file: self.file,
            at,
            v,
        }
    }

    fn str(&self) -> Result<&'a str> {
        self.v.as_str().ok_or_else(|| self.err("is not a string"))
    }

    fn items(&self) -> Result<Vec<Node<'a>>> {
        let a = self.v.as_array().ok_or_else(|| self.err("is not a list"))?;
        Ok(a.iter()
            .enumerate()
            .map(|(i, v)| self.child(format!("[{i}]"), v))
            .collect())
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| TaskError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| TaskError::File {
        path: path.to_path_buf(),
        msg: format!("invalid JSON: {e}"),
    })
}

/// Ids seen in a JSON document, with where, so that a repeat names both places.
fn unique(seen: &mut HashMap<String, String>, id: &Node, idv: &str) -> Result<()> {
    if let Some(first) = seen.get(idv) {
        return Err(id.err(&format!("is \"{idv}\", already the id at {first}")));
    }
    seen.insert(idv.to_string(), id.at.clone());
    Ok(())
}

fn sample(
    id: String,
    context: String,
    question: String,
    answers: Vec<String>,
    meta: Map<String, Value>,
) -> Sample {
    let mut fields = Map::new();
    fields.insert("context".into(), Value::String(context));
    fields.insert("question".into(), Value::String(question));
    Sample {
        id,
        fields,
        answers,
        all_classes: Vec::new(),
        meta,
    }
}

fn load_squad(path: &Path) -> Result<(Vec<Sample>, usize)> {
    let doc = read_json(path)?;
    let root = Node::root(path, &doc);
    let mut out = Vec::new();
    let mut skipped = 0;
    let mut seen = HashMap::new();
    for article in root.field("data")?.items()? {
        let title = match article.opt_field("title") {
            Some(t) => Some(t.str()?.to_string()),
            None => None,
        };
        for para in article.field("paragraphs")?.items()? {
            let context = para.field("context")?.str()?;
            for qa in para.field("qas")?.items()? {
                let id = qa.field("id")?;
                let idv = id.str()?;
                unique(&mut seen, &id, idv)?;
                let question = qa.field("question")?.str()?;
                let impossible = match qa.opt_field("is_impossible") {
                    Some(n) => n.v.as_bool().ok_or_else(|| n.err("is not true or false"))?,
                    None => false,
                };
                let answers = qa
                    .field("answers")?
                    .items()?
                    .iter()
                    .map(|a| Ok(a.field("text")?.str()?.to_string()))
                    .collect::<Result<Vec<_>>>()?;
                if impossible || answers.is_empty() {
                    skipped += 1;
                    continue;
                }
                let mut meta = Map::new();
                if let Some(t) = &title {
                    meta.insert("title".into(), Value::String(t.clone()));
                }
                out.push(sample(
                    idv.into(),
                    context.into(),
                    question.into(),
                    answers,
                    meta,
                ));
            }
        }
    }
    Ok((out, skipped))
}

fn load_hotpot(path: &Path) -> Result<(Vec<Sample>, usize)> {
    let doc = read_json(path)?;
    let root = Node::root(path, &doc);
    let mut out = Vec::new();
    let mut seen = HashMap::new();
    for q in root.items()? {
        let id = q.field("_id")?;
        let idv = id.str()?;
        unique(&mut seen, &id, idv)?;
        let question = q.field("question")?.str()?;
        let answer = q.field("answer")?.str()?;
        let mut passages = Vec::new();
        for (i, p) in q.field("context")?.items()?.iter().enumerate() {
            let parts = p.items()?;
            let [title, sentences] = parts.as_slice() else {
                return Err(p.err("is not a [title, [sentences]] pair"));
            };
            let text: String = sentences
                .items()?
                .iter()
                .map(|s| s.str())
                .collect::<Result<_>>()?;
            passages.push(format!("Passage {}:\n{}\n{text}", i + 1, title.str()?));
        }
        let mut meta = Map::new();
        for key in ["type", "level"] {
            if let Some(n) = q.opt_field(key) {
                meta.insert(key.into(), Value::String(n.str()?.to_string()));
            }
        }
        out.push(sample(
            idv.into(),
            passages.join("\n\n"),
            question.into(),
            vec![answer.into()],
            meta,
        ));
    }
    Ok((out, 0))
}

/// `answers` of a flat line: a list, one string, or `{"text": [...]}`.
fn flat_answers(f: &Fields) -> Result<Vec<String>> {
    match f.obj.get("answers") {
        Some(Value::Object(m)) => match m.get("text") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        f.err("answers", "holds a \"text\" entry that is not a string")
                    })
                })
                .collect(),
            _ => Err(f.err("answers", "is an object without a \"text\" list")),
        },
        _ => f.answers("answers"),
    }
}

fn load_jsonl(path: &Path) -> Result<(Vec<Sample>, usize)> {
    let mut out = Vec::new();
    let mut skipped = 0;
    let mut ids = Ids::new(path);
    read_objects(path, |line, obj| {
        let f = Fields {
            path,
            line,
            obj: &obj,
        };
        let id = ids.id_or_line(&f)?;
        let context = f.str("context")?;
        let question = match f.opt_str("question")? {
            Some(q) => q,
            None if f.obj.contains_key("input") => f.str("input")?,
            None => return Err(f.err("question", "is missing")),
        };
        let answers = flat_answers(&f)?;
        if answers.is_empty() {
            skipped += 1;
            return Ok(());
        }
        let mut meta = Map::new();
        if let Some(t) = f.opt_str("title")? {
            meta.insert("title".into(), Value::String(t.to_string()));
        }
        out.push(sample(id, context.into(), question.into(), answers, meta));
        Ok(())
    })?;
    Ok((out, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn squad_doc() -> Value {
        json!({"version": "v2.0", "data": [{"title": "Normans", "paragraphs": [
            {"context": "The Normans were in Normandy.", "qas": [
                {"id": "q1", "question": "Where?", "answers": [
                    {"text": "Normandy", "answer_start": 20}, {"text": "in Normandy", "answer_start": 17}]},
                {"id": "q2", "question": "When?", "answers": [], "is_impossible": true,
                 "plausible_answers": [{"text": "x", "answer_start": 0}]}
            ]},
            {"context": "Second.", "qas": [
                {"id": "q3", "question": "What?", "answers": [{"text": "Second", "answer_start": 0}]}
            ]}
        ]}]})
    }

    #[test]
    fn squad_json_skips_and_counts_unanswerable() {
        let dir = tempfile::tempdir().unwrap();
        // The official files are one line; pretty-printed ones are read too.
        for text in [
            squad_doc().to_string(),
            serde_json::to_string_pretty(&squad_doc()).unwrap(),
        ] {
            let p = write(dir.path(), "dev-v2.0.json", &text);
            let l = load(&p).unwrap();
            assert_eq!(l.format, Format::Squad);
            assert_eq!(l.unanswerable, 1);
            assert_eq!(l.samples.len(), 2);
            let s = &l.samples[0];
            assert_eq!(s.id, "q1");
            assert_eq!(s.answers, ["Normandy", "in Normandy"]);
            assert_eq!(s.meta["title"], json!("Normans"));
            assert_eq!(
                spec().render(s).unwrap(),
                "Answer the question based on the given text. Only give me the answer and do \
                 not output any other words.\n\nThe Normans were in Normandy.\n\nQuestion: \
                 Where?\nAnswer:"
            );
        }
        let mut bad = squad_doc();
        bad["data"][0]["paragraphs"][1]["qas"][0]["question"] = json!(5);
        let p = write(dir.path(), "bad.json", &bad.to_string());
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("bad.json")
                && e.contains("data[0].paragraphs[1].qas[0].question is not a string"),
            "{e}"
        );
        let mut bad = squad_doc();
        bad["data"][0]["paragraphs"][1]["qas"][0]["id"] = json!("q1");
        let e = load_as(
            &write(dir.path(), "bad.json", &bad.to_string()),
            Format::Squad,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("already the id at data[0].paragraphs[0].qas[0].id"),
            "{e}"
        );
        let e = load_as(
            &write(dir.path(), "bad.json", "{\"data\": [}"),
            Format::Squad,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("invalid JSON") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn flat_jsonl_takes_lists_strings_and_hf_answers() {
        let dir = tempfile::tempdir().unwrap();
        let lines = [
            json!({"id": "a", "context": "c1", "question": "q1", "answers": ["x", "y"], "title": "T"}),
            json!({"context": "c2", "input": "q2", "answers": {"text": ["z"], "answer_start": [0]}}),
            json!({"_id": 9, "context": "c3", "question": "q3", "answers": {"text": [], "answer_start": []}}),
            json!({"context": "c4", "question": "q4", "answers": "w"}),
        ]
        .map(|v| v.to_string())
        .join("\n");
        let l = load(&write(dir.path(), "qa.jsonl", &lines)).unwrap();
        assert_eq!(l.format, Format::Jsonl);
        assert_eq!(l.unanswerable, 1);
        let got: Vec<_> = l
            .samples
            .iter()
            .map(|s| (s.id.as_str(), s.answers.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", vec!["x".to_string(), "y".into()]),
                ("2", vec!["z".into()]),
                ("4", vec!["w".into()])
            ]
        );
        assert_eq!(l.samples[1].fields["question"], json!("q2"));
        assert_eq!(l.samples[0].meta["title"], json!("T"));

        let ok = json!({"id": "a", "context": "c", "question": "q", "answers": ["x"]}).to_string();
        for (bad, want) in [
            (
                json!({"id": "b", "question": "q", "answers": []}),
                "field \"context\" is missing",
            ),
            (
                json!({"id": "b", "context": "c", "answers": []}),
                "field \"question\" is missing",
            ),
            (
                json!({"id": "b", "context": "c", "question": 1, "answers": []}),
                "field \"question\" is not a string",
            ),
            (
                json!({"id": "b", "context": "c", "question": "q"}),
                "field \"answers\" is missing",
            ),
            (
                json!({"id": "b", "context": "c", "question": "q", "answers": {"start": 1}}),
                "field \"answers\"",
            ),
            (
                json!({"id": "a", "context": "c", "question": "q", "answers": ["x"]}),
                "already the id of line 1",
            ),
        ] {
            let p = write(dir.path(), "qa.jsonl", &format!("{ok}\n{bad}\n"));
            let e = load(&p).unwrap_err().to_string();
            assert!(
                e.contains("qa.jsonl line 2") && e.contains(want),
                "{e} (wanted {want})"
            );
        }
        let p = write(dir.path(), "qa.jsonl", &format!("{ok}\n{{\"id\": \n"));
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("qa.jsonl line 2") && e.contains("invalid JSON"),
            "{e}"
        );
    }

    #[test]
    fn hotpot_json_renders_passages() {
        let dir = tempfile::tempdir().unwrap();
        let doc = json!([{"_id": "h1", "question": "Which?", "answer": "yes", "type": "comparison",
            "level": "hard", "supporting_facts": [["A", 0]],
            "context": [["A", ["First.", " Second."]], ["B", ["Other."]]]}]);
        let l = load(&write(dir.path(), "hotpot_dev.json", &doc.to_string())).unwrap();
        assert_eq!(l.format, Format::Hotpot);
        let s = &l.samples[0];
        assert_eq!(
            s.fields["context"],
            json!("Passage 1:\nA\nFirst. Second.\n\nPassage 2:\nB\nOther.")
        );
        assert_eq!(s.answers, ["yes"]);
        assert_eq!(s.meta["level"], json!("hard"));

        let mut bad = doc.clone();
        bad[0]["context"][1] = json!(["B"]);
        let e = load(&write(dir.path(), "h.json", &bad.to_string()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("h.json") && e.contains("[0].context[1] is not a [title, [sentences]] pair"),
            "{e}"
        );
        let mut bad = doc;
        bad[0].as_object_mut().unwrap().remove("answer");
        let e = load(&write(dir.path(), "h.json", &bad.to_string()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[0] has no field \"answer\""), "{e}");
        let e = load(&write(dir.path(), "h.json", "[]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no answerable questions"), "{e}");
        let e = load(&write(dir.path(), "h.json", "\n\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no samples"), "{e}");
    }
}
