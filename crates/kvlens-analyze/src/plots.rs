//! Plots with plotters, each as PNG and SVG: output-length difference histograms per method,
//! negatives vs threshold, score vs KV memory per task, stacked latency attribution, and
//! heat maps of negatives by needle depth (or hops) × context length for generated tasks.
//!
//! Text is drawn with a TrueType font read at run time from the system's fonts (DejaVu Sans
//! or Liberation Sans; `KVLENS_FONT` names another file): no font file is shipped. Without
//! one, no plot is drawn and the caller is told why.

use crate::analysis::Analysis;
use crate::load::Sample;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

type PlotResult = std::result::Result<(), String>;

const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a system font as `sans-serif` once; the path used, or why none.
pub fn ensure_font() -> std::result::Result<PathBuf, String> {
    static FONT: std::sync::OnceLock<std::result::Result<PathBuf, String>> =
        std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Ok(p) = std::env::var("KVLENS_FONT") {
            candidates.push(p.into());
        }
        candidates.extend(FONT_CANDIDATES.iter().map(PathBuf::from));
        for p in candidates {
            if let Ok(bytes) = std::fs::read(&p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(p);
                }
            }
        }
        Err(format!(
            "no TrueType font found (tried {}; set KVLENS_FONT to a .ttf file)",
            FONT_CANDIDATES.join(", ")
        ))
    })
    .clone()
}

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Method names shortened for legends: the name before `:` when that is unique.
fn short_names(methods: &[String]) -> HashMap<String, String> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for m in methods {
        *count.entry(m.split(':').next().unwrap_or(m)).or_default() += 1;
    }
    methods
        .iter()
        .map(|m| {
            let head = m.split(':').next().unwrap_or(m);
            let s = if count.get(head) == Some(&1) { head } else { m };
            (m.clone(), s.to_string())
        })
        .collect()
}

/// (method, KV ratio, score).
type MethodPoint = (String, f64, f64);

/// Everything the plots draw, gathered once.
struct Data {
    methods: Vec<String>,
    short: HashMap<String, String>,
    /// Per method: output_tokens(method) − output_tokens(baseline), per paired sample.
    length_diff: Vec<(String, Vec<f64>)>,
    /// Per method or joint set: (threshold, negatives summed over tasks).
    negatives: Vec<(String, Vec<(f64, f64)>)>,
    /// Per task: (method, KV ratio, score).
    score_kv: Vec<(String, Vec<MethodPoint>)>,
    /// Per method: mean Δprefill, Δper-token, Δtokens over attributed samples of all tasks.
    latency: Vec<(String, [f64; 3])>,
    /// Per method: the 95 % interval of the mean Δe2e (pooled over tasks).
    latency_ci: HashMap<String, (f64, f64)>,
}

fn gather(a: &Analysis, samples: &[Sample]) -> Data {
    let base: HashMap<(&str, &str, &str), &Sample> = samples
        .iter()
        .filter(|s| s.method == a.baseline)
        .map(|s| ((s.model.as_str(), s.task.as_str(), s.sample_id.as_str()), s))
        .collect();
    let mut diffs: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.method != a.baseline) {
        if let Some(b) = base.get(&(s.model.as_str(), s.task.as_str(), s.sample_id.as_str())) {
            if let (Some(lm), Some(lb)) = (s.output_tokens, b.output_tokens) {
                diffs.entry(&s.method).or_default().push(lm - lb);
            }
        }
    }
    let others: Vec<String> = a.methods.iter().skip(1).cloned().collect();
    let length_diff = others
        .iter()
        .filter_map(|m| diffs.remove(m.as_str()).map(|d| (m.clone(), d)))
        .collect();
    let mut neg: Vec<(String, BTreeMap<u64, f64>)> = Vec::new();
    for r in &a.negatives {
        let i = match neg.iter().position(|(m, _)| *m == r.method) {
            Some(i) => i,
            None => {
                neg.push((r.method.clone(), BTreeMap::new()));
                neg.len() - 1
            }
        };
        *neg[i].1.entry(r.threshold.to_bits()).or_default() += r.count as f64;
    }
    let negatives: Vec<(String, Vec<(f64, f64)>)> = neg
        .into_iter()
        .map(|(m, t)| {
            let mut pts: Vec<(f64, f64)> =
                t.into_iter().map(|(k, v)| (f64::from_bits(k), v)).collect();
            pts.sort_by(|x, y| x.0.total_cmp(&y.0));
            (m, pts)
        })
        .collect();
    let mut score_kv: Vec<(String, Vec<MethodPoint>)> = Vec::new();
    let mut lat: BTreeMap<&str, ([f64; 3], usize)> = BTreeMap::new();
    for r in &a.rows {
        if let (Some(k), Some(s)) = (r.kv_bytes_ratio, r.score) {
            match score_kv.iter_mut().find(|(t, _)| *t == r.task) {
                Some((_, v)) => v.push((r.method.clone(), k, s)),
                None => score_kv.push((r.task.clone(), vec![(r.method.clone(), k, s)])),
            }
        }
        if let (Some(p), Some(t), Some(x)) = (
            r.delta_prefill_ms_sum,
            r.delta_per_token_ms_sum,
            r.delta_extra_tokens_ms_sum,
        ) {
            let e = lat.entry(&r.method).or_default();
            e.0[0] += p;
            e.0[1] += t;
            e.0[2] += x;
            e.1 += r.attributed;
        }
    }
    let latency = others
        .iter()
        .filter_map(|m| {
            lat.get(m.as_str())
                .filter(|(_, n)| *n > 0)
                .map(|(s, n)| (m.clone(), s.map(|x| x / *n as f64)))
        })
        .collect();
    let mut all = a.methods.clone();
    for (m, _) in &negatives {
        if !all.contains(m) {
            all.push(m.clone());
        }
    }
    let latency_ci = a
        .latency
        .iter()
        .filter_map(|l| Some((l.method.clone(), (l.ci_low[0]?, l.ci_high[0]?))))
        .collect();
    Data {
        short: short_names(&all),
        methods: all,
        length_diff,
        negatives,
        score_kv,
        latency,
        latency_ci,
    }
}

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

fn grid(n: usize) -> (usize, usize) {
    let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
    (n.div_ceil(cols).max(1), cols)
}

fn draw_length<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, d: &Data) -> PlotResult {
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            "Output length − baseline's (tokens), per method",
            ("sans-serif", 22),
        )
        .map_err(err)?;
    let (rows, cols) = grid(d.length_diff.len());
    let areas = root.split_evenly((rows, cols));
    for (i, ((m, diffs), area)) in d.length_diff.iter().zip(areas.iter()).enumerate() {
        // Token differences are integers: bins of a whole number of tokens, centred on
        // integers, so that no bin holds more integers than its neighbours.
        let lo = diffs
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .min(-1.0)
            .floor();
        let hi = diffs
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
            .max(1.0)
            .ceil();
        let w = ((hi - lo + 1.0) / 40.0).ceil().max(1.0);
        let lo = lo - 0.5;
        let bins = ((hi + 0.5 - lo) / w).ceil().max(1.0) as usize;
        let hi = lo + bins as f64 * w;
        let mut counts = vec![0u32; bins];
        for &x in diffs {
            let b = (((x - lo) / w) as usize).min(bins - 1);
            counts[b] += 1;
        }
        let top = counts.iter().copied().max().unwrap_or(1).max(1);
        let mut chart = ChartBuilder::on(area)
            .caption(d.short.get(m).unwrap_or(m), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(52)
            .build_cartesian_2d(lo..hi, 0u32..top + top / 10 + 1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("tokens")
            .y_desc("samples")
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(err)?;
        let c = color(i);
        chart
            .draw_series(counts.iter().enumerate().map(|(b, &n)| {
                let x0 = lo + b as f64 * w;
                Rectangle::new([(x0, 0), (x0 + w, n)], c.filled())
            }))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(0.0, 0), (0.0, top)],
                BLACK.stroke_width(1),
            )))
            .map_err(err)?;
    }
    root.present().map_err(err)
}

fn draw_negatives<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, d: &Data) -> PlotResult {
    root.fill(&WHITE).map_err(err)?;
    let xmax = d
        .negatives
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0))
        .fold(1.0, f64::max);
    let ymax = d
        .negatives
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Negative samples vs threshold δ (all tasks)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..xmax * 1.05, 0.0..ymax * 1.1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("δ (%)")
        .y_desc("negative samples")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for (i, (m, pts)) in d.negatives.iter().enumerate() {
        let c = color(i);
        let joint = !d
            .methods
            .iter()
            .take(d.length_diff.len() + 1)
            .any(|x| x == m);
        let style = if joint {
            c.stroke_width(3)
        } else {
            c.stroke_width(2)
        };
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), style))
            .map_err(err)?
            .label(d.short.get(m).cloned().unwrap_or_else(|| m.clone()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

fn draw_score_kv<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, d: &Data) -> PlotResult {
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            "Score (×100) vs KV memory (ratio to baseline), per task",
            ("sans-serif", 22),
        )
        .map_err(err)?;
    let (rows, cols) = grid(d.score_kv.len());
    let areas = root.split_evenly((rows, cols));
    for ((task, pts), area) in d.score_kv.iter().zip(areas.iter()) {
        let xmax = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
        let ymax = pts.iter().map(|p| p.2).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(task, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(52)
            .build_cartesian_2d(0.0..xmax, 0.0..ymax)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("KV bytes / baseline")
            .y_desc("score")
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(err)?;
        for (m, x, y) in pts {
            let i = d.methods.iter().position(|k| k == m).unwrap_or(0);
            let c = color(i);
            let name = d.short.get(m).cloned().unwrap_or_else(|| m.clone());
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at((*x, *y))
                        + Circle::new((0, 0), 4, c.filled())
                        + Text::new(name, (5, -12), ("sans-serif", 10)),
                ))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)
}

fn draw_latency<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, d: &Data) -> PlotResult {
    root.fill(&WHITE).map_err(err)?;
    let n = d.latency.len();
    let mut lo: f64 = 0.0;
    let mut hi: f64 = 0.0;
    for (m, parts) in &d.latency {
        lo = lo.min(parts.iter().filter(|x| **x < 0.0).sum());
        hi = hi.max(parts.iter().filter(|x| **x > 0.0).sum());
        if let Some(&(l, h)) = d.latency_ci.get(m) {
            (lo, hi) = (lo.min(l), hi.max(h));
        }
    }
    let pad = (hi - lo).max(1.0) * 0.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Mean Δe2e per sample = Δprefill + per-token speed + extra tokens (ms), 95 % interval",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n.max(1) as f64, (lo - pad)..(hi + pad))
        .map_err(err)?;
    // A method whose Δe2e interval holds 0 is marked as not distinguishable from noise.
    let names: Vec<String> = d
        .latency
        .iter()
        .map(|(m, _)| {
            let name = d.short.get(m).cloned().unwrap_or_else(|| m.clone());
            match d.latency_ci.get(m) {
                Some(&(l, h)) if l <= 0.0 && h >= 0.0 => format!("{name} (noise)"),
                _ => name,
            }
        })
        .collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n.max(1) * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("ms")
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    let part_names = ["Δprefill", "per-token speed", "extra tokens"];
    let part_colors = [color(0), color(1), color(2)];
    for (k, (pname, pc)) in part_names.iter().zip(part_colors).enumerate() {
        let mut rects = Vec::new();
        for (i, (_, parts)) in d.latency.iter().enumerate() {
            // Positive parts stack upward, negative parts downward, in the same order.
            let v = parts[k];
            let base: f64 = parts[..k]
                .iter()
                .filter(|x| (**x >= 0.0) == (v >= 0.0))
                .sum();
            let x0 = i as f64 + 0.2;
            rects.push(Rectangle::new(
                [(x0, base), (x0 + 0.6, base + v)],
                pc.filled(),
            ));
        }
        chart
            .draw_series(rects)
            .map_err(err)?
            .label(*pname)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], pc.filled()));
    }
    for (i, (m, parts)) in d.latency.iter().enumerate() {
        let total: f64 = parts.iter().sum();
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(i as f64 + 0.15, total), (i as f64 + 0.85, total)],
                BLACK.stroke_width(2),
            )))
            .map_err(err)?;
        if let Some(&(l, h)) = d.latency_ci.get(m) {
            let x = i as f64 + 0.5;
            let bar = [
                vec![(x, l), (x, h)],
                vec![(x - 0.08, l), (x + 0.08, l)],
                vec![(x - 0.08, h), (x + 0.08, h)],
            ];
            chart
                .draw_series(
                    bar.into_iter()
                        .map(|p| PathElement::new(p, BLACK.stroke_width(1))),
                )
                .map_err(err)?;
        }
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 0.0), (n as f64, 0.0)],
            BLACK.stroke_width(1),
        )))
        .map_err(err)?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// One heat map: a task under a method, failures by two generator parameters.
struct HeatPanel {
    task: String,
    title: String,
    x_name: &'static str,
    xs: Vec<f64>,
    /// Context lengths; `None` when the samples do not say.
    ys: Vec<Option<f64>>,
    /// (x index, y index, negatives, samples).
    cells: Vec<(usize, usize, usize, usize)>,
}

/// Panels for every (task, method) whose samples carry a needle depth or hops: depth (or hops)
/// across, context length up.
fn heat_panels(a: &Analysis, short: &HashMap<String, String>) -> Vec<HeatPanel> {
    let mut groups: BTreeMap<(String, usize), Vec<&crate::analysis::MetaCell>> = BTreeMap::new();
    for c in &a.by_meta {
        if c.depth.is_none() && c.hops.is_none() {
            continue;
        }
        let order = a.methods.iter().position(|m| *m == c.method).unwrap_or(0);
        groups.entry((c.task.clone(), order)).or_default().push(c);
    }
    let mut out = Vec::new();
    for ((task, _), cells) in groups {
        // Hops when the generator has them (vt), else the needle depth.
        let depth = !cells.iter().any(|c| c.hops.is_some());
        let x_of = |c: &crate::analysis::MetaCell| if depth { c.depth } else { c.hops };
        let mut xs: Vec<f64> = cells.iter().filter_map(|c| x_of(c)).collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        let mut ys: Vec<Option<f64>> = cells.iter().map(|c| c.length).collect();
        ys.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        ys.dedup();
        let mut grid: BTreeMap<(usize, usize), (usize, usize)> = BTreeMap::new();
        for c in &cells {
            let Some(x) = x_of(c) else { continue };
            let xi = xs.iter().position(|v| *v == x).unwrap_or(0);
            let yi = ys.iter().position(|v| *v == c.length).unwrap_or(0);
            let e = grid.entry((xi, yi)).or_default();
            e.0 += c.negatives;
            e.1 += c.n;
        }
        let method = &cells[0].method;
        out.push(HeatPanel {
            task: task.clone(),
            title: format!("{task} · {}", short.get(method).unwrap_or(method)),
            x_name: if depth { "needle depth" } else { "hops" },
            xs,
            ys,
            cells: grid
                .into_iter()
                .map(|((x, y), (neg, n))| (x, y, neg, n))
                .collect(),
        });
    }
    out
}

/// White at 0, deep red at 1.
fn heat_color(share: f64) -> RGBColor {
    let s = share.clamp(0.0, 1.0);
    let fade = |full: f64| (255.0 - (255.0 - full) * s) as u8;
    RGBColor(fade(190.0), fade(20.0), fade(30.0))
}

fn draw_heat<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    (panels, delta): (&[&HeatPanel], f64),
) -> PlotResult {
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            &format!(
                "{}: negative samples (δ = {delta} %) / samples, by {} × context length",
                panels.first().map_or("", |p| p.task.as_str()),
                panels.first().map_or("needle depth", |p| p.x_name)
            ),
            ("sans-serif", 20),
        )
        .map_err(err)?;
    let (rows, cols) = grid(panels.len());
    let areas = root.split_evenly((rows, cols));
    for (p, area) in panels.iter().zip(areas.iter()) {
        let (nx, ny) = (p.xs.len().max(1), p.ys.len().max(1));
        let mut chart = ChartBuilder::on(area)
            .caption(&p.title, ("sans-serif", 14))
            .margin(6)
            .x_label_area_size(34)
            .y_label_area_size(52)
            .build_cartesian_2d(0.0..nx as f64, 0.0..ny as f64)
            .map_err(err)?;
        let label = |v: f64| {
            if v.fract() == 0.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        };
        let xs = &p.xs;
        let ys = &p.ys;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(nx * 2 + 1)
            .y_labels(ny * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 0.01 {
                    xs.get(i).map(|v| label(*v)).unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| {
                let i = y.floor() as usize;
                if (y - i as f64 - 0.5).abs() < 0.01 {
                    match ys.get(i) {
                        Some(Some(v)) => label(*v),
                        Some(None) => "?".into(),
                        None => String::new(),
                    }
                } else {
                    String::new()
                }
            })
            .x_desc(p.x_name)
            .y_desc("context tokens")
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(p.cells.iter().map(|&(x, y, neg, n)| {
                let share = if n > 0 { neg as f64 / n as f64 } else { 0.0 };
                Rectangle::new(
                    [(x as f64, y as f64), (x as f64 + 1.0, y as f64 + 1.0)],
                    heat_color(share).filled(),
                )
            }))
            .map_err(err)?;
        chart
            .draw_series(p.cells.iter().map(|&(x, y, neg, n)| {
                let dark = n > 0 && 2 * neg > n;
                let style =
                    ("sans-serif", 12)
                        .into_font()
                        .color(if dark { &WHITE } else { &BLACK });
                Text::new(
                    format!("{neg}/{n}"),
                    (x as f64 + 0.38, y as f64 + 0.55),
                    style,
                )
            }))
            .map_err(err)?;
    }
    root.present().map_err(err)
}

macro_rules! both {
    ($dir:expr, $stem:expr, $size:expr, $f:ident, $d:expr, $out:expr) => {{
        let png = $dir.join(format!("{}.png", $stem));
        let svg = $dir.join(format!("{}.svg", $stem));
        $f(BitMapBackend::new(&png, $size).into_drawing_area(), $d)
            .map_err(|e| format!("{}: {e}", png.display()))?;
        $f(SVGBackend::new(&svg, $size).into_drawing_area(), $d)
            .map_err(|e| format!("{}: {e}", svg.display()))?;
        $out.push(png);
        $out.push(svg);
    }};
}

/// Draws every plot into `dir`; the files written, or why not.
pub fn draw_all(
    a: &Analysis,
    samples: &[Sample],
    dir: &Path,
) -> std::result::Result<Vec<PathBuf>, String> {
    ensure_font()?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let d = gather(a, samples);
    let mut out = Vec::new();
    if !d.length_diff.is_empty() {
        let (r, c) = grid(d.length_diff.len());
        let size = (320 * c as u32 + 40, 240 * r as u32 + 60);
        both!(dir, "length_diff", size, draw_length, &d, out);
    }
    if !d.negatives.is_empty() {
        both!(dir, "negatives", (900, 600), draw_negatives, &d, out);
    }
    if !d.score_kv.is_empty() {
        let (r, c) = grid(d.score_kv.len());
        let size = (340 * c as u32 + 40, 260 * r as u32 + 60);
        both!(dir, "score_kv", size, draw_score_kv, &d, out);
    }
    if !d.latency.is_empty() {
        let size = ((140 * d.latency.len() as u32).max(600) + 120, 600);
        both!(dir, "latency", size, draw_latency, &d, out);
    }
    // One heat-map file per task, a panel per method.
    let panels = heat_panels(a, &d.short);
    let mut tasks: Vec<&str> = panels.iter().map(|p| p.task.as_str()).collect();
    tasks.dedup();
    for task in tasks {
        let mine: Vec<&HeatPanel> = panels.iter().filter(|p| p.task == task).collect();
        let (r, c) = grid(mine.len());
        let size = (300 * c as u32 + 40, 240 * r as u32 + 60);
        let stem = format!("by_meta_{}", kvlens_run::runner::file_safe(task));
        both!(dir, stem, size, draw_heat, (mine.as_slice(), a.delta), out);
    }
    Ok(out)
}

/// One measured point of `kvlens bench`.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub method: String,
    pub batch: usize,
    pub context: usize,
    pub decode_tok_s: f64,
}

/// Panels of decode throughput: one per `panel` value, `x` on the horizontal axis (log 2),
/// one line per method.
fn draw_throughput<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    (points, by_batch): (&[Throughput], bool),
) -> PlotResult {
    root.fill(&WHITE).map_err(err)?;
    let title = if by_batch {
        "Decode throughput against batch size, per context length"
    } else {
        "Decode throughput against context length, per batch size"
    };
    let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
    let panel_of = |p: &Throughput| if by_batch { p.context } else { p.batch };
    let x_of = |p: &Throughput| if by_batch { p.batch } else { p.context };
    let mut panels: Vec<usize> = points.iter().map(panel_of).collect();
    panels.sort_unstable();
    panels.dedup();
    let mut methods: Vec<String> = Vec::new();
    for p in points {
        if !methods.contains(&p.method) {
            methods.push(p.method.clone());
        }
    }
    let short = short_names(&methods);
    let (rows, cols) = grid(panels.len());
    let areas = root.split_evenly((rows, cols));
    for (&panel, area) in panels.iter().zip(areas.iter()) {
        let mine: Vec<&Throughput> = points.iter().filter(|p| panel_of(p) == panel).collect();
        let xs = mine.iter().map(|p| x_of(p) as f64);
        let (lo, hi) = xs.fold((f64::INFINITY, 0f64), |(a, b), x| (a.min(x), b.max(x)));
        let (lo, hi) = (lo.log2() - 0.2, hi.log2() + 0.2);
        let top = mine.iter().map(|p| p.decode_tok_s).fold(1.0, f64::max) * 1.15;
        let caption = if by_batch {
            format!("context {panel}")
        } else {
            format!("batch {panel}")
        };
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(lo..hi, 0.0..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(if by_batch {
                "batch"
            } else {
                "context (tokens)"
            })
            .y_desc("decode tokens/s")
            // A log-2 axis labelled at the powers of two only.
            .x_labels(40)
            .light_line_style(WHITE)
            .x_label_formatter(&|v| {
                if (v - v.round()).abs() < 1e-6 {
                    format!("{}", 2f64.powi(v.round() as i32))
                } else {
                    String::new()
                }
            })
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(err)?;
        for (i, m) in methods.iter().enumerate() {
            let mut line: Vec<(f64, f64)> = mine
                .iter()
                .filter(|p| &p.method == m)
                .map(|p| ((x_of(p) as f64).log2(), p.decode_tok_s))
                .collect();
            if line.is_empty() {
                continue;
            }
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            let c = color(i);
            chart
                .draw_series(LineSeries::new(line.clone(), c.stroke_width(2)))
                .map_err(err)?
                .label(short.get(m).unwrap_or(m).clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
            chart
                .draw_series(
                    line.iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, c.filled())),
                )
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

/// `bench_batch` (throughput against batch, a panel per context) and `bench_context`
/// (against context, a panel per batch), PNG and SVG, into `dir`; the files written.
pub fn draw_throughput_all(
    points: &[Throughput],
    dir: &Path,
) -> std::result::Result<Vec<PathBuf>, String> {
    ensure_font()?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for (stem, by_batch) in [("bench_batch", true), ("bench_context", false)] {
        let mut panels: Vec<usize> = points
            .iter()
            .map(|p| if by_batch { p.context } else { p.batch })
            .collect();
        panels.sort_unstable();
        panels.dedup();
        let (r, c) = grid(panels.len());
        let size = ((420 * c as u32 + 40).max(760), 320 * r as u32 + 60);
        both!(dir, stem, size, draw_throughput, (points, by_batch), out);
    }
    Ok(out)
}

/// One load point of `kvlens load`, as its plots need it.
#[derive(Debug, Clone)]
pub struct LoadPoint {
    pub target: String,
    /// The rate's label (`4`, `inf`).
    pub rate: String,
    /// Completed requests per second.
    pub throughput: f64,
    pub p50_e2el_ms: f64,
    pub p99_e2el_ms: f64,
    /// Every completed request's time to first token.
    pub ttft_ms: Vec<f64>,
}

/// p50 (solid) and p99 (dashed) end-to-end latency against achieved request throughput, one
/// curve per target through its rates in the order given.
fn draw_load_latency<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    points: &[LoadPoint],
) -> PlotResult {
    root.fill(&WHITE).map_err(err)?;
    let mut targets: Vec<&str> = Vec::new();
    for p in points {
        if !targets.contains(&p.target.as_str()) {
            targets.push(&p.target);
        }
    }
    let right = points.iter().map(|p| p.throughput).fold(0.0, f64::max) * 1.15 + 1e-9;
    let top = points.iter().map(|p| p.p99_e2el_ms).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "End-to-end latency against achieved throughput (solid p50, dashed p99)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..right, 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("completed requests/s")
        .y_desc("end-to-end latency (ms)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    for (i, t) in targets.iter().enumerate() {
        let c = color(i);
        // In rate order, as the points come: achieved throughput need not grow with the rate.
        let mine: Vec<&LoadPoint> = points.iter().filter(|p| p.target == *t).collect();
        let p50: Vec<(f64, f64)> = mine.iter().map(|p| (p.throughput, p.p50_e2el_ms)).collect();
        let p99: Vec<(f64, f64)> = mine.iter().map(|p| (p.throughput, p.p99_e2el_ms)).collect();
        chart
            .draw_series(LineSeries::new(p50.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(t.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        chart
            .draw_series(p50.iter().map(|&(x, y)| Circle::new((x, y), 3, c.filled())))
            .map_err(err)?;
        chart
            .draw_series(DashedLineSeries::new(p99.clone(), 6, 4, c.stroke_width(2)))
            .map_err(err)?;
        chart
            .draw_series(
                p99.iter()
                    .map(|&(x, y)| TriangleMarker::new((x, y), 4, c.filled())),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// The distribution of time to first token: one panel per rate, one empirical CDF per target.
fn draw_load_ttft<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    points: &[LoadPoint],
) -> PlotResult {
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            "Time to first token, per rate (share of requests at or below)",
            ("sans-serif", 18),
        )
        .map_err(err)?;
    let mut rates: Vec<&str> = Vec::new();
    let mut targets: Vec<&str> = Vec::new();
    for p in points {
        if !rates.contains(&p.rate.as_str()) {
            rates.push(&p.rate);
        }
        if !targets.contains(&p.target.as_str()) {
            targets.push(&p.target);
        }
    }
    let (rows, cols) = grid(rates.len());
    let areas = root.split_evenly((rows, cols));
    for (rate, area) in rates.iter().zip(areas.iter()) {
        let mine: Vec<&LoadPoint> = points.iter().filter(|p| p.rate == *rate).collect();
        let right = mine
            .iter()
            .flat_map(|p| p.ttft_ms.iter().copied())
            .fold(1.0, f64::max)
            * 1.05;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("rate {rate} req/s"), ("sans-serif", 14))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(44)
            .build_cartesian_2d(0.0..right, 0.0..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("TTFT (ms)")
            .x_labels(6)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(err)?;
        for (i, t) in targets.iter().enumerate() {
            let Some(p) = mine.iter().find(|p| p.target == *t) else {
                continue;
            };
            let mut v = p.ttft_ms.clone();
            if v.is_empty() {
                continue;
            }
            v.sort_by(f64::total_cmp);
            let n = v.len() as f64;
            let mut line = vec![(0.0, 0.0)];
            for (k, x) in v.iter().enumerate() {
                line.push((*x, k as f64 / n));
                line.push((*x, (k + 1) as f64 / n));
            }
            let c = color(i);
            chart
                .draw_series(LineSeries::new(line, c.stroke_width(2)))
                .map_err(err)?
                .label(t.to_string())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 11))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

/// `load_latency` (p50/p99 e2e latency against throughput) and `load_ttft` (TTFT
/// distributions), PNG and SVG, into `dir`; the files written.
pub fn draw_load_all(
    points: &[LoadPoint],
    dir: &Path,
) -> std::result::Result<Vec<PathBuf>, String> {
    ensure_font()?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    both!(
        dir,
        "load_latency",
        (900, 600),
        draw_load_latency,
        points,
        out
    );
    let mut rates: Vec<&str> = points.iter().map(|p| p.rate.as_str()).collect();
    rates.dedup();
    let (r, c) = grid(rates.len().max(1));
    let size = ((420 * c as u32 + 40).max(700), 320 * r as u32 + 60);
    both!(dir, "load_ttft", size, draw_load_ttft, points, out);
    Ok(out)
}
