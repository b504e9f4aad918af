//! Method specs: `snapkv:budget=256,window=32`, their canonical form, and the registry.

use crate::method::{Full, Method, Select, When};
use crate::methods::{
    h2o::H2o,
    knorm::KeyNorm,
    pyramidkv::PyramidKv,
    random::Random,
    snapkv::{Pool, SnapKv},
    streamingllm::StreamingLlm,
    tova::Tova,
};
use crate::quant::{fp8::Fp8, gear::Gear, kivi::Kivi, uniform::PerToken, Quantize, Schedule};
use std::collections::BTreeMap;

/// Generated tokens per GEAR chunk, and newest tokens GEAR keeps in full precision (its
/// streaming buffer); the prompt is packed in larger chunks (`Codec::prompt_rows`).
pub const GEAR_CHUNK: usize = 64;
use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("empty method spec")]
    Empty,
    #[error("unknown method `{name}`; accepted: {accepted}")]
    UnknownMethod { name: String, accepted: String },
    #[error("method `{method}` has no parameter `{param}`; accepted: {accepted}")]
    UnknownParam {
        method: String,
        param: String,
        accepted: String,
    },
    #[error("method `{method}` parameter `{param}` = `{value}`: {reason}")]
    BadValue {
        method: String,
        param: String,
        value: String,
        reason: String,
    },
    #[error("`{item}` is not `key=value`")]
    Malformed { item: String },
    #[error("`{item}` continues a spec, but no method came before it")]
    Orphan { item: String },
    #[error("parameter `{param}` given twice in `{spec}`")]
    Duplicate { param: String, spec: String },
}

/// The kind and range of a parameter's value.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Int { min: i64, max: i64 },
    Float { min: f64, max: f64 },
    Choice(&'static [&'static str]),
}

#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    /// Default value; `None` when it is derived from other parameters (documented in `help`).
    pub default: Option<&'static str>,
    pub kind: Kind,
    pub help: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub struct MethodInfo {
    pub name: &'static str,
    pub summary: &'static str,
    pub paper: &'static str,
    pub params: &'static [Param],
}

const WHEN: &[&str] = &["prefill", "decode"];

const fn budget(default: &'static str) -> Param {
    Param {
        name: "budget",
        default: Some(default),
        kind: Kind::Int {
            min: 1,
            max: 1 << 24,
        },
        help: "tokens kept per layer and key/value head",
    }
}

const fn when(default: &'static str) -> Param {
    Param {
        name: "when",
        default: Some(default),
        kind: Kind::Choice(WHEN),
        help: "prefill: compress once after the prompt; decode: never exceed the budget",
    }
}

const WINDOW: Param = Param {
    name: "window",
    default: Some("32"),
    kind: Kind::Int { min: 1, max: 4096 },
    help: "last prompt tokens whose queries vote (always kept)",
};
const KERNEL: Param = Param {
    name: "kernel",
    default: Some("7"),
    kind: Kind::Int { min: 1, max: 255 },
    help: "width of the pooling over votes (wider keeps whole multi-token spans, e.g. numbers)",
};
const POOL: Param = Param {
    name: "pool",
    default: Some("max"),
    kind: Kind::Choice(&["max", "avg"]),
    help: "pooling of votes",
};

/// Every method kvlens implements.
pub const METHODS: &[MethodInfo] = &[
    MethodInfo {
        name: "full",
        summary: "the unmodified cache (baseline)",
        paper: "-",
        params: &[],
    },
    MethodInfo {
        name: "streamingllm",
        summary: "attention sinks + recent window",
        paper: "Xiao et al. 2023, arXiv:2309.17453",
        params: &[
            Param {
                name: "sink",
                default: Some("4"),
                kind: Kind::Int { min: 0, max: 4096 },
                help: "first tokens always kept",
            },
            budget("256"),
            when("decode"),
        ],
    },
    MethodInfo {
        name: "h2o",
        summary: "heavy hitters by accumulated attention + recent tokens",
        paper: "Zhang et al. 2023, arXiv:2306.14048",
        params: &[
            budget("256"),
            Param {
                name: "recent",
                default: None,
                kind: Kind::Int {
                    min: 0,
                    max: 1 << 24,
                },
                help: "newest tokens always kept (default: half the budget)",
            },
            when("decode"),
        ],
    },
    MethodInfo {
        name: "snapkv",
        summary: "prompt compression voted by the last window of queries",
        paper: "Li et al. 2024, arXiv:2404.14469",
        params: &[budget("256"), WINDOW, KERNEL, POOL, when("prefill")],
    },
    MethodInfo {
        name: "pyramidkv",
        summary: "SnapKV votes with budgets shrinking with depth",
        paper: "Cai et al. 2024, arXiv:2406.02069",
        params: &[
            budget("256"),
            Param {
                name: "beta",
                default: Some("20"),
                kind: Kind::Int { min: 1, max: 1000 },
                help: "ratio of the mean to the smallest layer budget (without window)",
            },
            WINDOW,
            KERNEL,
            POOL,
            when("prefill"),
        ],
    },
    MethodInfo {
        name: "tova",
        summary: "drop the token the current query attends to least",
        paper: "Oren et al. 2024, arXiv:2401.06104",
        params: &[budget("256"), when("decode")],
    },
    MethodInfo {
        name: "kivi",
        summary: "2/4-bit keys per channel, values per token, recent tokens full precision",
        paper: "Liu et al. 2024, arXiv:2402.02750",
        params: &[
            Param {
                name: "bits",
                default: Some("2"),
                kind: Kind::Choice(&["2", "4"]),
                help: "bits per value",
            },
            Param {
                name: "group",
                default: Some("32"),
                kind: Kind::Int { min: 1, max: 4096 },
                help: "tokens per key group (and channels per value group)",
            },
            Param {
                name: "residual",
                default: Some("128"),
                kind: Kind::Int {
                    min: 0,
                    max: 1 << 20,
                },
                help: "newest tokens kept in full precision",
            },
        ],
    },
    MethodInfo {
        name: "gear",
        summary: "quantization + low-rank error + sparse outliers",
        paper: "Kang et al. 2024, arXiv:2403.05527",
        params: &[
            Param {
                name: "bits",
                default: Some("4"),
                kind: Kind::Choice(&["2", "4", "8"]),
                help: "bits per value",
            },
            Param {
                name: "rank",
                default: Some("4"),
                kind: Kind::Int { min: 0, max: 64 },
                help: "rank of the error approximation",
            },
            Param {
                name: "outliers",
                default: Some("0.02"),
                kind: Kind::Float { min: 0.0, max: 0.5 },
                help: "fraction of entries kept exactly",
            },
        ],
    },
    MethodInfo {
        name: "int8",
        summary: "8-bit per-token asymmetric",
        paper: "-",
        params: &[],
    },
    MethodInfo {
        name: "int4",
        summary: "4-bit per-token asymmetric",
        paper: "-",
        params: &[],
    },
    MethodInfo {
        name: "fp8",
        summary: "FP8 E4M3 with a per-token scale",
        paper: "Micikevicius et al. 2022, arXiv:2209.05433",
        params: &[],
    },
    MethodInfo {
        name: "knorm",
        summary: "keep keys with the lowest L2 norm",
        paper: "Devoto et al. 2024, arXiv:2406.11430",
        params: &[budget("256"), when("prefill")],
    },
    MethodInfo {
        name: "random",
        summary: "keep a seeded random choice of tokens (the floor to beat)",
        paper: "kvpress RandomPress (NVIDIA/kvpress)",
        params: &[
            budget("256"),
            Param {
                name: "seed",
                default: Some("0"),
                kind: Kind::Int {
                    min: 0,
                    max: i64::MAX,
                },
                help:
                    "seed of the draws (each token's draw depends on seed, layer, head, position)",
            },
            when("prefill"),
        ],
    },
];

pub fn method_info(name: &str) -> Option<&'static MethodInfo> {
    METHODS.iter().find(|m| m.name == name)
}

fn accepted_methods() -> String {
    METHODS
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A parsed, validated method spec with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Spec {
    pub name: String,
    pub params: BTreeMap<String, String>,
}

impl Spec {
    /// Parses `name[:k=v,k=v...]`, checks every parameter and fills defaults.
    pub fn parse(s: &str) -> Result<Spec, SpecError> {
        let s = s.trim();
        let (name, rest) = match s.split_once(':') {
            Some((n, r)) => (n.trim(), Some(r)),
            None => (s, None),
        };
        if name.is_empty() {
            return Err(SpecError::Empty);
        }
        let mut given = BTreeMap::new();
        if let Some(rest) = rest {
            for item in rest.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let (k, v) = item.split_once('=').ok_or_else(|| SpecError::Malformed {
                    item: item.to_string(),
                })?;
                if given
                    .insert(k.trim().to_string(), v.trim().to_string())
                    .is_some()
                {
                    return Err(SpecError::Duplicate {
                        param: k.trim().to_string(),
                        spec: s.to_string(),
                    });
                }
            }
        }
        Spec::from_parts(name, given)
    }

    fn from_parts(name: &str, given: BTreeMap<String, String>) -> Result<Spec, SpecError> {
        let info = method_info(name).ok_or_else(|| SpecError::UnknownMethod {
            name: name.to_string(),
            accepted: accepted_methods(),
        })?;
        let mut params = BTreeMap::new();
        for (k, v) in &given {
            let p = info.params.iter().find(|p| p.name == k).ok_or_else(|| {
                SpecError::UnknownParam {
                    method: name.to_string(),
                    param: k.clone(),
                    accepted: if info.params.is_empty() {
                        "none".to_string()
                    } else {
                        info.params
                            .iter()
                            .map(|p| p.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                }
            })?;
            check(name, p, v)?;
            params.insert(k.clone(), normalize(p, v));
        }
        for p in info.params {
            if let (false, Some(d)) = (params.contains_key(p.name), p.default) {
                params.insert(p.name.to_string(), d.to_string());
            }
        }
        // Derived defaults.
        if name == "h2o" && !params.contains_key("recent") {
            let b: usize = params["budget"].parse().unwrap_or(0);
            params.insert("recent".into(), (b / 2).to_string());
        }
        let spec = Spec {
            name: name.to_string(),
            params,
        };
        spec.check_relations()?;
        Ok(spec)
    }

    fn check_relations(&self) -> Result<(), SpecError> {
        let bad = |param: &str, reason: String| SpecError::BadValue {
            method: self.name.clone(),
            param: param.to_string(),
            value: self.params[param].clone(),
            reason,
        };
        let budget = self.int("budget");
        match self.name.as_str() {
            "h2o" if self.int("recent") > budget => {
                Err(bad("recent", format!("must not exceed budget ({budget})")))
            }
            "streamingllm" if self.int("sink") > budget => {
                Err(bad("sink", format!("must not exceed budget ({budget})")))
            }
            "snapkv" | "pyramidkv" if self.int("window") > budget => {
                Err(bad("window", format!("must not exceed budget ({budget})")))
            }
            _ => Ok(()),
        }
    }

    /// Integer parameter (validated at parse time); 0 when absent.
    pub fn int(&self, k: &str) -> usize {
        self.params.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.params.get(k).map(String::as_str)
    }

    /// `name:k=v,...` with parameters sorted and defaults filled.
    pub fn canonical(&self) -> String {
        if self.params.is_empty() {
            return self.name.clone();
        }
        let kv: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{}:{}", self.name, kv.join(","))
    }

    /// A file-safe label: `snapkv_budget256_kernel7_poolmax_whenprefill_window32`.
    pub fn label(&self) -> String {
        let mut s = self.name.clone();
        for (k, v) in &self.params {
            s.push('_');
            s.push_str(k);
            s.extend(v.chars().map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '-'
                }
            }));
        }
        s
    }

    /// The method object that acts on a cache.
    pub fn build(&self) -> Box<dyn Method> {
        let when = self
            .get("when")
            .and_then(When::parse)
            .unwrap_or(When::Prefill);
        let budget = self.int("budget");
        let pool = if self.get("pool") == Some("avg") {
            Pool::Avg
        } else {
            Pool::Max
        };
        match self.name.as_str() {
            "streamingllm" => Box::new(Select {
                scorer: StreamingLlm,
                budget,
                sink: self.int("sink"),
                recent: 0,
                when,
            }),
            "h2o" => Box::new(Select {
                scorer: H2o,
                budget,
                sink: 0,
                recent: self.int("recent"),
                when,
            }),
            "snapkv" => Box::new(Select {
                scorer: SnapKv {
                    window: self.int("window"),
                    kernel: self.int("kernel"),
                    pool,
                },
                budget,
                sink: 0,
                recent: self.int("window"),
                when,
            }),
            "pyramidkv" => Box::new(Select {
                scorer: PyramidKv {
                    window: self.int("window"),
                    kernel: self.int("kernel"),
                    pool,
                    beta: self.int("beta"),
                },
                budget,
                sink: 0,
                recent: self.int("window"),
                when,
            }),
            "tova" => Box::new(Select {
                scorer: Tova,
                budget,
                sink: 0,
                recent: 1,
                when,
            }),
            "kivi" => Box::new(Quantize {
                codec: Box::new(Kivi {
                    bits: self.int("bits") as u32,
                    group: self.int("group"),
                }),
                schedule: Schedule {
                    group: self.int("group"),
                    residual: self.int("residual"),
                },
            }),
            "gear" => Box::new(Quantize {
                codec: Box::new(Gear {
                    bits: self.int("bits") as u32,
                    rank: self.int("rank"),
                    outliers: self
                        .get("outliers")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0.02),
                }),
                schedule: Schedule {
                    group: GEAR_CHUNK,
                    residual: GEAR_CHUNK,
                },
            }),
            "int8" | "int4" => Box::new(Quantize {
                codec: Box::new(PerToken {
                    bits: if self.name == "int8" { 8 } else { 4 },
                }),
                schedule: Schedule {
                    group: 1,
                    residual: 0,
                },
            }),
            "fp8" => Box::new(Quantize {
                codec: Box::new(Fp8),
                schedule: Schedule {
                    group: 1,
                    residual: 0,
                },
            }),
            "knorm" => Box::new(Select {
                scorer: KeyNorm,
                budget,
                sink: 0,
                recent: 0,
                when,
            }),
            "random" => Box::new(Select {
                scorer: Random {
                    seed: self.get("seed").and_then(|v| v.parse().ok()).unwrap_or(0),
                },
                budget,
                sink: 0,
                recent: 0,
                when,
            }),
            _ => Box::new(Full),
        }
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

impl std::str::FromStr for Spec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Spec::parse(s)
    }
}

fn check(method: &str, p: &Param, v: &str) -> Result<(), SpecError> {
    let bad = |reason: String| SpecError::BadValue {
        method: method.to_string(),
        param: p.name.to_string(),
        value: v.to_string(),
        reason,
    };
    match p.kind {
        Kind::Int { min, max } => {
            let x: i64 = v.parse().map_err(|_| bad("not an integer".into()))?;
            if x < min || x > max {
                return Err(bad(format!("must be in {min}..={max}")));
            }
        }
        Kind::Float { min, max } => {
            let x: f64 = v.parse().map_err(|_| bad("not a number".into()))?;
            if !(min..=max).contains(&x) {
                return Err(bad(format!("must be in {min}..={max}")));
            }
        }
        Kind::Choice(options) => {
            if !options.contains(&v) {
                return Err(bad(format!("accepted: {}", options.join(", "))));
            }
        }
    }
    Ok(())
}

fn normalize(p: &Param, v: &str) -> String {
    match p.kind {
        Kind::Int { .. } => v
            .parse::<i64>()
            .map(|x| x.to_string())
            .unwrap_or_else(|_| v.to_string()),
        Kind::Float { .. } => v
            .parse::<f64>()
            .map(|x| x.to_string())
            .unwrap_or_else(|_| v.to_string()),
        Kind::Choice(_) => v.to_string(),
    }
}

/// Parses a comma-separated list of specs; an item `key=value` continues the previous spec:
/// `full,snapkv:budget=256,window=32,h2o` is three methods.
pub fn parse_list(s: &str) -> Result<Vec<Spec>, SpecError> {
    let mut groups: Vec<String> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let continues = item.contains('=') && !item.contains(':');
        if continues {
            let last = groups.last_mut().ok_or_else(|| SpecError::Orphan {
                item: item.to_string(),
            })?;
            last.push(if last.contains(':') { ',' } else { ':' });
            last.push_str(item);
        } else {
            groups.push(item.to_string());
        }
    }
    if groups.is_empty() {
        return Err(SpecError::Empty);
    }
    groups.iter().map(|g| Spec::parse(g)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorts_and_fills_defaults() {
        let s = Spec::parse("snapkv:window=16,budget=128").unwrap();
        assert_eq!(
            s.canonical(),
            "snapkv:budget=128,kernel=7,pool=max,when=prefill,window=16"
        );
        assert_eq!(Spec::parse(&s.canonical()).unwrap(), s);
        assert_eq!(Spec::parse("full").unwrap().canonical(), "full");
        assert_eq!(
            Spec::parse("h2o:budget=100").unwrap().canonical(),
            "h2o:budget=100,recent=50,when=decode"
        );
    }

    #[test]
    fn list_items_with_equals_continue_the_previous_spec() {
        let l = parse_list("full,snapkv:budget=256,window=32,h2o").unwrap();
        let names: Vec<_> = l.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["full", "snapkv", "h2o"]);
        assert_eq!(l[1].int("window"), 32);
        assert_eq!(l[1].int("budget"), 256);
        assert!(matches!(
            parse_list("budget=3"),
            Err(SpecError::Orphan { .. })
        ));
    }

    #[test]
    fn errors_list_what_is_accepted() {
        let e = Spec::parse("snapk").unwrap_err().to_string();
        assert!(e.contains("snapkv") && e.contains("streamingllm"), "{e}");
        let e = Spec::parse("snapkv:budjet=3").unwrap_err().to_string();
        assert!(e.contains("budget, window, kernel, pool, when"), "{e}");
        let e = Spec::parse("snapkv:pool=min").unwrap_err().to_string();
        assert!(e.contains("max, avg"), "{e}");
        let e = Spec::parse("h2o:budget=0").unwrap_err().to_string();
        assert!(e.contains("1..="), "{e}");
        let e = Spec::parse("h2o:budget=10,recent=20")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must not exceed budget"), "{e}");
        assert!(Spec::parse("full:budget=3").is_err());
    }

    #[test]
    fn labels_are_file_safe() {
        let s = Spec::parse("snapkv:budget=64").unwrap();
        let l = s.label();
        assert!(
            l.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)),
            "{l}"
        );
    }
}
