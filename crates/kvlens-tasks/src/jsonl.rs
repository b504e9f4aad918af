//! Reading JSONL files with errors that name the file, the line and the field.

use crate::error::{Result, TaskError};
use serde_json::{Map, Value};
use std::io::BufRead;
use std::path::Path;

/// Calls `f` with each non-blank line's object and its 1-based line number. An empty file,
/// malformed JSON or a line that is not an object is an error naming the file and line.
pub fn read_objects(
    path: &Path,
    mut f: impl FnMut(usize, Map<String, Value>) -> Result<()>,
) -> Result<usize> {
    let file = std::fs::File::open(path).map_err(|source| TaskError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut n = 0;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => TaskError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                msg: "not valid UTF-8".into(),
            },
            _ => TaskError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| TaskError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            msg: format!("invalid JSON: {e}"),
        })?;
        let Value::Object(obj) = v else {
            return Err(TaskError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                msg: "expected a JSON object".into(),
            });
        };
        f(i + 1, obj)?;
        n += 1;
    }
    if n == 0 {
        return Err(TaskError::File {
            path: path.to_path_buf(),
            msg: "the file holds no samples".into(),
        });
    }
    Ok(n)
}

/// Field access that reports which field of which line is wrong.
pub struct Fields<'a> {
    pub path: &'a Path,
    pub line: usize,
    pub obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    pub fn err(&self, field: &str, msg: &str) -> TaskError {
        TaskError::Line {
            path: self.path.to_path_buf(),
            line: self.line,
            msg: format!("field \"{field}\" {msg}"),
        }
    }

    pub fn opt(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    pub fn str(&self, field: &str) -> Result<&'a str> {
        match self.obj.get(field) {
            None => Err(self.err(field, "is missing")),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(self.err(field, "is not a string")),
        }
    }

    pub fn opt_str(&self, field: &str) -> Result<Option<&'a str>> {
        match self.opt(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.err(field, "is not a string")),
        }
    }

    /// A list of answers (strings or numbers, as Python's `str()` prints them), or a single
    /// string or number.
    pub fn answers(&self, field: &str) -> Result<Vec<String>> {
        let v = self
            .obj
            .get(field)
            .ok_or_else(|| self.err(field, "is missing"))?;
        let scalar = |v: &Value| match v {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(crate::sample::py_str(v)),
            _ => Err(self.err(field, "holds something other than strings and numbers")),
        };
        match v {
            Value::Array(a) => a.iter().map(scalar).collect(),
            v => Ok(vec![scalar(v)?]),
        }
    }

    /// A list of strings, or nothing when the field is absent or null.
    pub fn str_list(&self, field: &str) -> Result<Vec<String>> {
        match self.opt(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(self.err(field, "holds something other than strings")),
                })
                .collect(),
            Some(_) => Err(self.err(field, "is not a list")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        std::fs::write(&p, "{\"a\": 1}\n\n{\"a\": \n").unwrap();
        let e = read_objects(&p, |_, _| Ok(())).unwrap_err().to_string();
        assert!(
            e.contains("x.jsonl line 3") && e.contains("invalid JSON"),
            "{e}"
        );

        std::fs::write(&p, "{\"a\": 1}\n{\"a\": [1, {}]}\n").unwrap();
        let e = read_objects(&p, |line, obj| {
            Fields {
                path: &p,
                line,
                obj: &obj,
            }
            .answers("a")
            .map(|_| ())
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 2") && e.contains("field \"a\""), "{e}");

        std::fs::write(&p, "\n  \n").unwrap();
        let e = read_objects(&p, |_, _| Ok(())).unwrap_err().to_string();
        assert!(e.contains("no samples"), "{e}");
        std::fs::write(&p, "[1]\n").unwrap();
        assert!(read_objects(&p, |_, _| Ok(())).is_err());
    }
}
