//! The tables out: polars frames written as CSV and Parquet, Markdown for the terminal, and
//! the JSON object for scripts.

use crate::analysis::{Analysis, Flag, MetaCell, TaskRow};
use crate::error::{AnalyzeError, Result};
use polars::prelude::*;
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

/// A frame with one column per field of `rows` (serde's names and order): numbers as
/// `Int64` when every value is an integer, else `Float64`; `null` where a value is absent.
pub fn frame<T: Serialize>(rows: &[T]) -> Result<DataFrame> {
    let values: Vec<Value> = rows
        .iter()
        .map(serde_json::to_value)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| AnalyzeError::Invalid(format!("serializing a table row: {e}")))?;
    let names: Vec<String> = match rows.first() {
        Some(first) => field_order(first)?,
        None => return Ok(DataFrame::empty()),
    };
    let mut cols = Vec::with_capacity(names.len());
    for name in &names {
        let cells: Vec<&Value> = values
            .iter()
            .map(|v| v.get(name).unwrap_or(&Value::Null))
            .collect();
        let non_null = cells.iter().filter(|v| !v.is_null());
        let col =
            if non_null.clone().all(|v| v.is_boolean()) && cells.iter().any(|v| v.is_boolean()) {
                Column::new(
                    name.into(),
                    cells.iter().map(|v| v.as_bool()).collect::<Vec<_>>(),
                )
            } else if non_null.clone().all(|v| v.is_i64() || v.is_u64())
                && cells.iter().any(|v| !v.is_null())
            {
                Column::new(
                    name.into(),
                    cells.iter().map(|v| v.as_i64()).collect::<Vec<_>>(),
                )
            } else if non_null.clone().all(|v| v.is_number()) {
                Column::new(
                    name.into(),
                    cells.iter().map(|v| v.as_f64()).collect::<Vec<_>>(),
                )
            } else {
                Column::new(
                    name.into(),
                    cells
                        .iter()
                        .map(|v| match v {
                            Value::Null => None,
                            Value::String(s) => Some(s.clone()),
                            other => Some(other.to_string()),
                        })
                        .collect::<Vec<_>>(),
                )
            };
        cols.push(col);
    }
    DataFrame::new_infer_height(cols)
        .map_err(|e| AnalyzeError::Invalid(format!("building a frame: {e}")))
}

/// The top-level keys of `row` as serialized, in order (serde_json's `Value` sorts them).
fn field_order<T: Serialize>(row: &T) -> Result<Vec<String>> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> std::result::Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some(k) = map.next_key::<String>()? {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    let text = serde_json::to_string(row)
        .map_err(|e| AnalyzeError::Invalid(format!("serializing a table row: {e}")))?;
    serde_json::from_str::<Keys>(&text)
        .map(|k| k.0)
        .map_err(|e| AnalyzeError::Invalid(format!("a table row is not an object: {e}")))
}

/// Writes `df` as `<stem>.csv` and `<stem>.parquet` in `dir`.
pub fn write_frame(df: &mut DataFrame, dir: &Path, stem: &str) -> Result<()> {
    let csv = dir.join(format!("{stem}.csv"));
    let f = std::fs::File::create(&csv).map_err(|e| AnalyzeError::io(&csv, e))?;
    CsvWriter::new(std::io::BufWriter::new(f))
        .finish(df)
        .map_err(|e| AnalyzeError::Write {
            path: csv.clone(),
            msg: e.to_string(),
        })?;
    let pq = dir.join(format!("{stem}.parquet"));
    let f = std::fs::File::create(&pq).map_err(|e| AnalyzeError::io(&pq, e))?;
    ParquetWriter::new(std::io::BufWriter::new(f))
        .finish(df)
        .map_err(|e| AnalyzeError::Write {
            path: pq.clone(),
            msg: e.to_string(),
        })?;
    Ok(())
}

/// A value of a typed table column.
trait Cell {
    type Out;
    fn cell(&self) -> Self::Out;
}

macro_rules! cell_as_is {
    ($($t:ty),*) => {$(
        impl Cell for $t {
            type Out = $t;
            fn cell(&self) -> $t {
                self.clone()
            }
        }
    )*};
}
cell_as_is!(String, f64, bool, Option<f64>, Option<bool>, &'static str);

impl Cell for usize {
    type Out = u64;
    fn cell(&self) -> u64 {
        *self as u64
    }
}

impl Cell for Option<usize> {
    type Out = Option<u64>;
    fn cell(&self) -> Option<u64> {
        self.map(|x| x as u64)
    }
}

/// A frame with one typed column per listed field (for the large tables: building them
/// through JSON values takes seconds at a million records).
macro_rules! typed_frame {
    ($rows:expr; $($f:ident),* $(,)?) => {{
        let rows = $rows;
        DataFrame::new_infer_height(vec![$(
            Column::new(stringify!($f).into(), rows.iter().map(|r| r.$f.cell()).collect::<Vec<_>>())
        ),*])
        .map_err(|e| AnalyzeError::Invalid(format!("building a frame: {e}")))
    }};
}

pub fn tasks_frame(rows: &[TaskRow]) -> Result<DataFrame> {
    typed_frame!(rows; model, task, method, n, errors, paired, missing_baseline, missing_method, score, delta, delta_ci_low, delta_ci_high, negatives, both_zero, pass_to_fail, fail_to_pass, mcnemar_p, length_ratio_median, length_ratio_p90, pct_longer, pct_ran_to_limit, extra_tokens_mean, e2e_ms_mean, delta_e2e_ms_mean, delta_prefill_ms_mean, delta_per_token_ms_mean, delta_extra_tokens_ms_mean, delta_e2e_ms_mean_ci_low, delta_e2e_ms_mean_ci_high, delta_prefill_ms_mean_ci_low, delta_prefill_ms_mean_ci_high, delta_per_token_ms_mean_ci_low, delta_per_token_ms_mean_ci_high, delta_extra_tokens_ms_mean_ci_low, delta_extra_tokens_ms_mean_ci_high, delta_e2e_ms_sum, delta_prefill_ms_sum, delta_per_token_ms_sum, delta_extra_tokens_ms_sum, attributed, zero_length, zero_length_delta_e2e_ms_sum, kv_bytes_mean, kv_bytes_ratio)
}

pub fn flags_frame(rows: &[Flag]) -> Result<DataFrame> {
    typed_frame!(rows; model, task, method, sample_id, negative, longer, ran_to_limit, slower, baseline_score, score, baseline_tokens, tokens, length_ratio, baseline_e2e_ms, e2e_ms, delta_e2e_ms, delta_prefill_ms, delta_per_token_ms, delta_extra_tokens_ms, depth, length, hops)
}

/// Writes every table of `a` into `dir`: `tasks`, `negatives`, `flags`, `by_meta`, `missing`
/// (CSV + Parquet each).
pub fn write_tables(a: &Analysis, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| AnalyzeError::io(dir, e))?;
    write_frame(&mut tasks_frame(&a.rows)?, dir, "tasks")?;
    write_frame(&mut frame(&a.negatives)?, dir, "negatives")?;
    write_frame(&mut flags_frame(&a.flags)?, dir, "flags")?;
    write_frame(&mut frame(&a.by_meta)?, dir, "by_meta")?;
    write_frame(&mut frame(&a.missing)?, dir, "missing")?;
    let noise = serde_json::json!({"noise": a.noise, "latency": a.latency});
    let path = dir.join("noise.json");
    std::fs::write(&path, format!("{noise:#}\n")).map_err(|e| AnalyzeError::io(&path, e))?;
    Ok(())
}

/// The object `--json` prints: `negatives`, `tasks` and `noise` (the run's noise floor, or
/// null where too few baseline samples share a prompt length).
pub fn json(a: &Analysis) -> Value {
    serde_json::json!({
        "negatives": a.negatives,
        "tasks": a.rows,
        "noise": a.noise,
        "latency": a.latency,
    })
}

/// `~` after a latency term whose interval holds 0: not distinguishable from noise.
fn mark(lo: Option<f64>, hi: Option<f64>) -> &'static str {
    match (lo, hi) {
        (Some(l), Some(h)) if l <= 0.0 && h >= 0.0 => "~",
        _ => "",
    }
}

/// The noise floor in one plain sentence, with a warning and what to do when it is large.
pub fn noise_sentence(a: &Analysis) -> String {
    match &a.noise {
        None => "Noise floor: too few baseline samples of like prompt length to measure it.".into(),
        Some(n) if n.relative_spread > crate::analysis::NOISY => format!(
            "Warning: the baseline's per-token time varied by {:.0} % between samples of the same \
             prompt length ({} pairs), so per-token and end-to-end differences of that size are \
             noise; rerun on a quieter machine, with --threads set below the core count, with \
             more samples, or with --batch 1.",
            100.0 * n.relative_spread,
            n.pairs
        ),
        Some(n) => format!(
            "Noise floor: the baseline's per-token time varied by {:.1} % between samples of the \
             same prompt length ({} pairs).",
            100.0 * n.relative_spread,
            n.pairs
        ),
    }
}

fn f(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        Some(x) => format!("{x}"),
        None => "–".into(),
    }
}

fn short(method: &str) -> &str {
    method
}

/// The per-task breakdown as a Markdown table.
pub fn markdown(a: &Analysis) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| task | method | n | score | Δ (95% CI) | neg@{}% | p→f / f→p (p) | len ×med | % longer | % to limit | e2e ms | Δe2e = Δprefill + Δper-token + Δtokens (ms) | KV ratio |",
        a.delta
    );
    s.push_str("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for r in &a.rows {
        let base = r.method == a.baseline;
        let delta = if base {
            "baseline".to_string()
        } else {
            match (r.delta, r.delta_ci_low, r.delta_ci_high) {
                (Some(d), Some(lo), Some(hi)) => format!("{d:+.2} ({lo:+.1}, {hi:+.1})"),
                (Some(d), _, _) => format!("{d:+.2}"),
                _ => "–".into(),
            }
        };
        let neg = match (r.negatives, r.both_zero) {
            (Some(n), Some(z)) if z > 0 => format!("{n} ({z} both 0)"),
            (Some(n), _) => n.to_string(),
            _ => "–".into(),
        };
        let flips = match (r.pass_to_fail, r.fail_to_pass, r.mcnemar_p) {
            (Some(a), Some(b), Some(p)) => format!("{a} / {b} ({p:.2})"),
            _ => "–".into(),
        };
        let att = match (
            r.delta_e2e_ms_mean,
            r.delta_prefill_ms_mean,
            r.delta_per_token_ms_mean,
            r.delta_extra_tokens_ms_mean,
        ) {
            (Some(e), Some(p), Some(t), Some(x)) => {
                let ci = match (r.delta_e2e_ms_mean_ci_low, r.delta_e2e_ms_mean_ci_high) {
                    (Some(lo), Some(hi)) => format!(" ({lo:+.0}, {hi:+.0})"),
                    _ => String::new(),
                };
                format!(
                    "{e:+.0}{}{ci} = {p:+.0}{} {t:+.0}{} {x:+.0}{}",
                    mark(r.delta_e2e_ms_mean_ci_low, r.delta_e2e_ms_mean_ci_high),
                    mark(
                        r.delta_prefill_ms_mean_ci_low,
                        r.delta_prefill_ms_mean_ci_high
                    ),
                    mark(
                        r.delta_per_token_ms_mean_ci_low,
                        r.delta_per_token_ms_mean_ci_high
                    ),
                    mark(
                        r.delta_extra_tokens_ms_mean_ci_low,
                        r.delta_extra_tokens_ms_mean_ci_high
                    ),
                )
            }
            _ => "–".into(),
        };
        let att = if r.zero_length > 0 {
            format!("{att} ({} with L=0 apart)", r.zero_length)
        } else {
            att
        };
        let mut n = r.n.to_string();
        if r.missing_baseline + r.missing_method + r.errors > 0 {
            let _ = write!(
                n,
                " ({} no base, {} missing, {} err)",
                r.missing_baseline, r.missing_method, r.errors
            );
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.task,
            short(&r.method),
            n,
            f(r.score, 2),
            delta,
            neg,
            flips,
            f(r.length_ratio_median, 2),
            f(r.pct_longer, 0),
            f(r.pct_ran_to_limit, 0),
            f(r.e2e_ms_mean, 0),
            if base { "".into() } else { att },
            f(r.kv_bytes_ratio, 3),
        );
    }
    s.push_str(
        "\nΔe2e: mean (95 % paired bootstrap interval); `~` marks a term whose interval holds 0 \
         (not distinguishable from noise).\n",
    );
    s
}

/// Failures by the generator's `meta` as Markdown, one table per task: rows are methods,
/// columns the (needle depth × context length) cells of the heat map, or the hops of `vt`;
/// each cell is negatives / samples.
pub fn meta_markdown(cells: &[MetaCell]) -> String {
    use std::collections::BTreeMap;
    let key = |x: Option<f64>| x.map(|v| (v * 1e6).round() as i64);
    let show = |x: Option<i64>| x.map_or("–".to_string(), |v| format!("{}", v as f64 / 1e6));
    let mut tasks: Vec<&str> = Vec::new();
    for c in cells {
        if !tasks.contains(&c.task.as_str()) {
            tasks.push(&c.task);
        }
    }
    let mut s = String::new();
    for task in tasks {
        let cs: Vec<&MetaCell> = cells.iter().filter(|c| c.task == task).collect();
        let by_hops = cs.iter().any(|c| c.hops.is_some());
        if !by_hops && !cs.iter().any(|c| c.depth.is_some()) {
            continue;
        }
        let col = |c: &MetaCell| {
            if by_hops {
                (key(c.hops), None)
            } else {
                (key(c.depth), key(c.length))
            }
        };
        let mut cols: Vec<(Option<i64>, Option<i64>)> = cs.iter().map(|c| col(c)).collect();
        cols.sort_by_key(|&(a, b)| (b, a));
        cols.dedup();
        // (method order, method) → heat-map column → (negatives, samples).
        type Row = BTreeMap<(Option<i64>, Option<i64>), (usize, usize)>;
        let mut table: BTreeMap<(usize, &str), Row> = BTreeMap::new();
        let mut order: Vec<&str> = Vec::new();
        for c in &cs {
            if !order.contains(&c.method.as_str()) {
                order.push(&c.method);
            }
            let i = order.iter().position(|m| *m == c.method).unwrap_or(0);
            let e = table
                .entry((i, &c.method))
                .or_default()
                .entry(col(c))
                .or_default();
            e.0 += c.negatives;
            e.1 += c.n;
        }
        let head = if by_hops { "hops" } else { "depth @ length" };
        let _ = writeln!(s, "\n{task}: negatives / samples by {head}");
        s.push_str("| method |");
        for (a, b) in &cols {
            if by_hops {
                let _ = write!(s, " {} |", show(*a));
            } else {
                let _ = write!(s, " {} @ {} |", show(*a), show(*b));
            }
        }
        s.push_str("\n|---|");
        s.push_str(&"--:|".repeat(cols.len()));
        s.push('\n');
        for ((_, m), row) in &table {
            let _ = write!(s, "| {} |", m.split(':').next().unwrap_or(m));
            for c in &cols {
                match row.get(c) {
                    Some((neg, n)) => {
                        let _ = write!(s, " {neg}/{n} |");
                    }
                    None => s.push_str(" |"),
                }
            }
            s.push('\n');
        }
    }
    s
}

/// Rows of `rows` for one method, for plots.
pub fn rows_of<'a>(rows: &'a [TaskRow], method: &'a str) -> impl Iterator<Item = &'a TaskRow> {
    rows.iter().filter(move |r| r.method == method)
}
