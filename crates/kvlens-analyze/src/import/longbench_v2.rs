//! LongBench v2 result files (THUDM/LongBench, `pred.py` and `result.py` at the repository's
//! root): `results/<model>[_cot|_no_context|_rag_N].jsonl`, one line per answered question
//! with `_id`, `domain`, `sub_domain`, `difficulty` (`easy`/`hard`), `length`
//! (`short`/`medium`/`long`), `question`, `choice_A`..`choice_D`, `answer` (a letter),
//! `response`, `pred` (the extracted letter or null) and `judge` (`pred == answer`). A file
//! may also be one JSON array (`result.py` tries that first). Each file is one method, named
//! by its stem; all questions are task `longbench_v2`, the score is `judge` (1 or 0), and the
//! domain, difficulty and length bucket go to `meta`. `result.py`'s table (overall, easy,
//! hard, short, medium, long, ×100 with one decimal) is printed as a note so the import can be
//! checked against it.

use super::{absent, files_with, name_of, record, write_all, Imported};
use crate::error::{AnalyzeError, Result};
use crate::load::ABSENT_KEY;
use kvlens_run::Record;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

pub const TASK: &str = "longbench_v2";

fn items(path: &Path) -> Result<Vec<(usize, Map<String, Value>)>> {
    let text = std::fs::read_to_string(path).map_err(|e| AnalyzeError::io(path, e))?;
    if let Ok(Value::Array(a)) = serde_json::from_str::<Value>(&text) {
        let mut out = Vec::new();
        for (i, v) in a.into_iter().enumerate() {
            match v {
                Value::Object(o) => out.push((i + 1, o)),
                _ => {
                    return Err(AnalyzeError::File {
                        path: path.to_path_buf(),
                        msg: format!("item {i}: not an object"),
                    })
                }
            }
        }
        return Ok(out);
    }
    super::json_lines(path)
}

/// `result.py`'s row for one file: overall, easy, hard, short, medium, long (×100).
fn table_row(rows: &[(bool, String, String)]) -> String {
    let pct = |f: &dyn Fn(&(bool, String, String)) -> bool| {
        let sel: Vec<_> = rows.iter().filter(|r| f(r)).collect();
        if sel.is_empty() {
            "-".to_string()
        } else {
            let k = sel.iter().filter(|r| r.0).count();
            format!("{:.1}", 100.0 * k as f64 / sel.len() as f64)
        }
    };
    format!(
        "overall {} easy {} hard {} short {} medium {} long {}",
        pct(&|_| true),
        pct(&|r| r.1 == "easy"),
        pct(&|r| r.1 != "easy"),
        pct(&|r| r.2 == "short"),
        pct(&|r| r.2 == "medium"),
        pct(&|r| r.2 != "short" && r.2 != "medium"),
    )
}

/// Imports a result file, or every `.jsonl`/`.json` file of a folder, one method per file.
pub fn import(path: &Path, out: &Path, model: &str) -> Result<Imported> {
    let files = files_with(path, &["jsonl", "json"])?;
    if files.is_empty() {
        return Err(AnalyzeError::Invalid(format!(
            "no LongBench v2 result files (*.jsonl) in {}",
            path.display()
        )));
    }
    let run_id = name_of(path);
    let mut groups: BTreeMap<(String, String), Vec<Record>> = BTreeMap::new();
    let mut notes = Vec::new();
    for file in files {
        let method = file
            .file_stem()
            .map_or(String::new(), |n| n.to_string_lossy().to_string());
        let mut rows = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for (line, o) in items(&file)? {
            let bad = |msg: String| AnalyzeError::Line {
                path: file.clone(),
                line,
                msg,
            };
            let text = |k: &str| -> std::result::Result<String, AnalyzeError> {
                match o.get(k) {
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(_) => Err(bad(format!("field \"{k}\" is not a string"))),
                    None => Err(bad(format!("field \"{k}\" is missing"))),
                }
            };
            let id = text("_id")?;
            if !ids.insert(id.clone()) {
                return Err(bad(format!("_id {id} appears twice")));
            }
            let answer = text("answer")?;
            let response = match o.get("response") {
                Some(Value::String(s)) => s.clone(),
                _ => String::new(),
            };
            let pred = match o.get("pred") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Null) | None => None,
                Some(_) => return Err(bad("field \"pred\" is not a string or null".into())),
            };
            // `judge` as written; recomputed from `pred` when a file lacks it.
            let judge = match o.get("judge") {
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(bad("field \"judge\" is not true or false".into())),
                None => pred.as_deref() == Some(answer.as_str()),
            };
            let difficulty = text("difficulty").unwrap_or_default();
            let length = text("length").unwrap_or_default();
            let mut meta = Map::new();
            for k in ["domain", "sub_domain", "difficulty", "length"] {
                if let Some(v) = o.get(k) {
                    meta.insert(k.into(), v.clone());
                }
            }
            meta.insert("pred".into(), json!(pred));
            meta.insert(ABSENT_KEY.into(), absent(&["pass"]));
            let mut r = record(
                &run_id,
                model,
                TASK,
                &id,
                &method,
                &response,
                vec![answer],
                Vec::new(),
                meta,
            )
            .map_err(bad)?;
            r.score = Some(if judge { 1.0 } else { 0.0 });
            rows.push((judge, difficulty, length));
            groups
                .entry((TASK.to_string(), method.clone()))
                .or_default()
                .push(r);
        }
        notes.push(format!(
            "{method}: {} questions; result.py's row: {}",
            rows.len(),
            table_row(&rows)
        ));
    }
    let mut done = write_all(out, groups)?;
    done.notes = notes;
    Ok(done)
}
