//! Record files: `<run>/<task>/<method label>.jsonl`, appended one flushed line at a time.
//! A process killed mid-write can leave a torn last line; opening the file repairs it.

use crate::error::{Result, RunError};
use crate::record::{Key, Record};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The non-blank lines of a record file with their 1-based numbers; `complete` is false for
/// a last line without its newline (a torn write: each record is written with its newline in
/// one write, so such a line was cut short even if what is there happens to parse).
pub fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8], bool)> {
    let mut start = 0;
    let mut line_no = 0;
    std::iter::from_fn(move || loop {
        if start >= bytes.len() {
            return None;
        }
        line_no += 1;
        let (line, complete) = match bytes[start..].iter().position(|&b| b == b'\n') {
            Some(e) => (&bytes[start..start + e], true),
            None => (&bytes[start..], false),
        };
        start += line.len() + 1;
        if !line.iter().all(|b| b.is_ascii_whitespace()) {
            return Some((line_no, line, complete));
        }
    })
}

/// Reads every record of one file. A last line without its newline is a torn write: it is
/// reported as `torn` (and not returned) instead of failing; any other unreadable line is an
/// error naming the file and line.
pub fn read_file(path: &Path) -> Result<(Vec<Record>, Option<usize>)> {
    let bytes = std::fs::read(path).map_err(|e| RunError::io(path, e))?;
    let mut out = Vec::new();
    for (line_no, line, complete) in lines(&bytes) {
        if !complete {
            return Ok((out, Some(line_no)));
        }
        let r = parse_record(line).map_err(|msg| RunError::Line {
            path: path.to_path_buf(),
            line: line_no,
            msg,
        })?;
        out.push(r);
    }
    Ok((out, None))
}

/// One line as a record; the error names the field that is wrong.
fn parse_record(line: &[u8]) -> std::result::Result<Record, String> {
    let mut de = serde_json::Deserializer::from_slice(line);
    serde_path_to_error::deserialize::<_, Record>(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if serde_json::from_slice::<serde::de::IgnoredAny>(line).is_err() {
            format!("invalid JSON: {inner}")
        } else if field == "." {
            format!("not a kvlens record: {inner}")
        } else {
            format!("field \"{field}\": {inner}")
        }
    })
}

/// One record file open for appending.
pub struct RecordFile {
    pub path: PathBuf,
    file: File,
    done: HashSet<Key>,
    errors: HashSet<Key>,
}

impl RecordFile {
    /// Opens (or creates) `path`, repairing a torn last line, and learns which samples are
    /// done. Failed records whose key is in `retry` are removed (the file is rewritten
    /// atomically) so that those samples run again; other failed records stay.
    pub fn open(path: &Path, retry: &HashSet<Key>) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| RunError::io(dir, e))?;
        }
        let mut done = HashSet::new();
        let mut errors = HashSet::new();
        if path.exists() {
            let (mut records, torn) = read_file(path)?;
            if let Some(line) = torn {
                eprintln!(
                    "kvlens: {} line {line} was cut short by an interrupted write; it is \
                     dropped and its sample runs again",
                    path.display()
                );
                truncate_torn(path)?;
            }
            let before = records.len();
            records.retain(|r| r.error.is_none() || !retry.contains(&r.key()));
            if records.len() < before {
                write_atomic(path, &records)?;
            }
            for r in &records {
                if r.error.is_some() {
                    errors.insert(r.key());
                }
                done.insert(r.key());
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| RunError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            done,
            errors,
        })
    }

    pub fn is_done(&self, key: &Key) -> bool {
        self.done.contains(key)
    }

    pub fn failed(&self) -> usize {
        self.errors.len()
    }

    /// Appends one record as one write of one line, then flushes it to the OS.
    pub fn append(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_vec(r).map_err(|e| RunError::Invalid(e.to_string()))?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.flush())
            .map_err(|e| RunError::io(&self.path, e))?;
        self.done.insert(r.key());
        Ok(())
    }
}

/// Cuts the file after its last newline.
fn truncate_torn(path: &Path) -> Result<()> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| RunError::io(path, e))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|e| RunError::io(path, e))?;
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    f.set_len(keep as u64).map_err(|e| RunError::io(path, e))?;
    f.seek(SeekFrom::End(0))
        .map_err(|e| RunError::io(path, e))?;
    Ok(())
}

/// Replaces `path` by `records`, through a temporary file and a rename, so a crash leaves
/// either the old file or the new one.
pub fn write_atomic(path: &Path, records: &[Record]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("records")
    ));
    {
        let mut f = std::io::BufWriter::new(File::create(&tmp).map_err(|e| RunError::io(&tmp, e))?);
        for r in records {
            serde_json::to_writer(&mut f, r).map_err(|e| RunError::Invalid(e.to_string()))?;
            f.write_all(b"\n").map_err(|e| RunError::io(&tmp, e))?;
        }
        let f = f
            .into_inner()
            .map_err(|e| RunError::io(&tmp, e.into_error()))?;
        f.sync_all().map_err(|e| RunError::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| RunError::io(path, e))
}

/// Replaces `path` by `text` through a temporary file and a rename (creating its folder).
pub fn write_text_atomic(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| RunError::io(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    std::fs::write(&tmp, text).map_err(|e| RunError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| RunError::io(path, e))
}

/// Every record file under a run folder (any `.jsonl` below it), sorted.
pub fn record_files(run: &Path) -> Result<Vec<PathBuf>> {
    if !run.is_dir() {
        return Err(RunError::Invalid(format!(
            "{} is not a run folder",
            run.display()
        )));
    }
    let mut out = Vec::new();
    let mut stack = vec![run.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(|e| RunError::io(&dir, e))? {
            let p = e.map_err(|e| RunError::io(&dir, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "jsonl") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Every record of a run (torn last lines skipped with a warning).
pub fn read_run(run: &Path) -> Result<Vec<Record>> {
    let mut all = Vec::new();
    for f in record_files(run)? {
        let (records, torn) = read_file(&f)?;
        if let Some(line) = torn {
            eprintln!(
                "kvlens: {} line {line} is incomplete (an interrupted write) and was skipped",
                f.display()
            );
        }
        all.extend(records);
    }
    Ok(all)
}

/// Lines of a file, for counting (used by tests and progress).
pub fn count_lines(path: &Path) -> Result<usize> {
    let f = File::open(path).map_err(|e| RunError::io(path, e))?;
    Ok(BufReader::new(f).lines().count())
}
