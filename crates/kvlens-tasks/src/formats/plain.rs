//! The JSONL files kvlens ships under `datasets/` and its generators write: one object per
//! line with `id` (string), `context` and `input` (strings), `answers` (a list), optional
//! `all_classes` and `meta` (an object). Any other field must be a string and becomes a
//! template field beside `context` and `input`.

use super::{meta_object, Ids};
use crate::error::Result;
use crate::jsonl::{read_objects, Fields};
use crate::sample::Sample;
use serde_json::{Map, Value};
use std::path::Path;

/// Fields of a line that are not template fields.
const RESERVED: [&str; 4] = ["id", "answers", "all_classes", "meta"];

/// Reads a shipped JSONL file. Ids must be unique within the file.
pub fn load_plain(path: &Path) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    let mut ids = Ids::new(path);
    read_objects(path, |line, obj| {
        let f = Fields {
            path,
            line,
            obj: &obj,
        };
        let id = f.str("id")?;
        ids.insert(id, line, "id")?;
        f.str("context")?;
        f.str("input")?;
        if !matches!(obj.get("answers"), Some(Value::Array(_)) | None) {
            return Err(f.err("answers", "is not a list"));
        }
        let answers = f.answers("answers")?;
        let all_classes = f.str_list("all_classes")?;
        let meta = meta_object(&f, "meta")?;
        let mut fields = Map::new();
        for (k, v) in &obj {
            if RESERVED.contains(&k.as_str()) {
                continue;
            }
            if !v.is_string() {
                return Err(f.err(k, "is not a string"));
            }
            fields.insert(k.clone(), v.clone());
        }
        out.push(Sample {
            id: id.to_string(),
            fields,
            answers,
            all_classes,
            meta,
        });
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load_lines(lines: &[&str]) -> std::result::Result<Vec<Sample>, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vt.jsonl");
        std::fs::write(&p, lines.join("\n")).unwrap();
        load_plain(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn loads_fields_answers_classes_and_meta() {
        let s = load_lines(&[
            r#"{"id": "vt-0", "context": "X = 1", "input": "?", "answers": ["X", 2], "meta": {"hops": 3}, "hint": "h"}"#,
            "",
            r#"{"id": "vt-1", "context": "", "input": "", "answers": [], "all_classes": ["a"]}"#,
        ])
        .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].id, "vt-0");
        assert_eq!(s[0].answers, ["X", "2"]);
        assert_eq!(s[0].meta["hops"], json!(3));
        assert_eq!(s[0].fields.len(), 3);
        assert_eq!(s[0].fields["hint"], json!("h"));
        assert_eq!(s[1].all_classes, ["a"]);
        assert!(s[1].meta.is_empty());
    }

    #[test]
    fn bad_lines_name_file_line_and_field() {
        let ok = r#"{"id": "a", "context": "c", "input": "i", "answers": ["x"]}"#;
        let cases = [
            (
                r#"{"id": "b", "input": "i", "answers": []}"#,
                "field \"context\" is missing",
            ),
            (
                r#"{"context": "c", "input": "i", "answers": []}"#,
                "field \"id\" is missing",
            ),
            (
                r#"{"id": 7, "context": "c", "input": "i", "answers": []}"#,
                "field \"id\" is not a string",
            ),
            (
                r#"{"id": "b", "context": "c", "input": "i", "answers": "x"}"#,
                "field \"answers\" is not a list",
            ),
            (
                r#"{"id": "b", "context": "c", "input": "i", "answers": [[1]]}"#,
                "field \"answers\"",
            ),
            (
                r#"{"id": "b", "context": "c", "input": "i", "answers": [], "meta": 3}"#,
                "field \"meta\" is not an object",
            ),
            (
                r#"{"id": "b", "context": "c", "input": "i", "answers": [], "depth": 0.5}"#,
                "field \"depth\" is not a string",
            ),
            (
                r#"{"id": "b", "context": "c", "input": "i", "answers": [], "all_classes": "x"}"#,
                "field \"all_classes\"",
            ),
            (r#"{"id": "b", "context": "c""#, "invalid JSON"),
            (
                r#"{"id": "a", "context": "c", "input": "i", "answers": []}"#,
                "already the id of line 1",
            ),
        ];
        for (bad, want) in cases {
            let e = load_lines(&[ok, bad]).unwrap_err();
            assert!(
                e.contains("vt.jsonl line 2") && e.contains(want),
                "{e} (wanted {want})"
            );
        }
        let e = load_lines(&[" "]).unwrap_err();
        assert!(e.contains("vt.jsonl") && e.contains("no samples"), "{e}");
    }
}
