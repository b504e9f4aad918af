//! LongBench v1 (Bai et al., 2023, "LongBench: A Bilingual, Multitask Benchmark for Long
//! Context Understanding"): its 21 datasets with the official prompt templates
//! (`config/dataset2prompt.json`), maximum new tokens (`config/dataset2maxlen.json`) and
//! metrics (`eval.py`'s `dataset2metric`), copied from THUDM/LongBench. The prompts are data:
//! they keep the upstream spelling, typos included ("asconcisely").
//!
//! LongBench-E is the length-balanced subset of 13 datasets (files `NAME_e.jsonl`); its
//! samples use the same prompts, and `length_bucket` splits them as `eval.py --e` does.

use super::Ids;
use crate::error::{Result, TaskError};
use crate::jsonl::{read_objects, Fields};
use crate::sample::Sample;
use crate::spec::{TaskSpec, Truncation};
use kvlens_score::Metric;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The Hugging Face dataset repo that holds the official data, and its archive.
pub const HUB_REPO: &str = "THUDM/LongBench";
pub const HUB_FILE: &str = "data.zip";

/// What the samples of a dataset are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    En,
    Zh,
    Code,
}

impl Language {
    pub fn name(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::Zh => "zh",
            Language::Code => "code",
        }
    }
}

/// One LongBench dataset as `pred.py` and `eval.py` run it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LongBenchTask {
    pub name: &'static str,
    pub description: &'static str,
    /// `config/dataset2prompt.json`.
    pub template: &'static str,
    /// `config/dataset2maxlen.json`.
    pub max_new_tokens: usize,
    /// `eval.py`'s `dataset2metric`.
    pub metric: Metric,
    pub language: Language,
    /// `eval.py` scores only the first line of the prediction (after leading newlines).
    pub first_line: bool,
    /// `pred.py` applies the chat template ("chat models are better off without build
    /// prompts on these tasks" for the few-shot and code ones).
    pub chat: bool,
}

/// The 21 datasets, in `pred.py`'s order.
pub static TASKS: [LongBenchTask; 21] = [
    LongBenchTask {
        name: "narrativeqa",
        description: "single-doc QA over stories and movie scripts (NarrativeQA)",
        template: "You are given a story, which can be either a novel or a movie script, and a question. Answer the question asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
        max_new_tokens: 128,
        metric: Metric::QaF1,
        language: Language::En,
        first_line: false,
        chat: true,
    },
    LongBenchTask {
        name: "qasper",
        description: "single-doc QA over NLP research papers (Qasper)",
        template: "You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
        max_new_tokens: 128,
        metric: Metric::QaF1,
        language: Language::En,
        first_line: false,
        chat: true,
    },
    LongBenchTask {
        name: "multifieldqa_en",
        description: "single-doc QA over long articles from diverse fields, English",
        template: "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
        max_new_tokens: 64,
        metric: Metric::QaF1,
        language: Language::En,
        first_line: false,
        chat: true,
    },
    LongBenchTask {
        name: "multifieldqa_zh",
        description: "single-doc QA over long articles from diverse fields, Chinese",
        template: "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：{input}\n回答：",
        max_new_tokens: 64,
        metric: Metric::QaF1Zh,
        language: Language::Zh,
        first_line: false,
        chat: true,
    },
    LongBenchTask {
        name: "hotpotqa",
        description: "multi-doc multi-hop QA over Wikipedia passages (HotpotQA)",
        template: "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
        max_new_tokens: 32,
        metric: Metric::QaF1,
        language: Language::En,
        first_line: false,
        chat: true,
    },
    LongBenchTask {
        name: "2wikimqa",
        description: "multi-doc multi-hop QA over Wikipedia passages (2WikiMultihopQA)",
        template: "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
        max_new_tokens: 32,
        metric: Metric::QaF1,
        language: Language::En,
        first_line: false,
        chat: true,
    },
    LongBenchTask {
        name: "musique",
        description: "multi-doc multi-hop QA over Wikipedia passages (MuSiQue)",
        template: "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
        max_new_tokens: 32,
        metric: Metric::QaF1,
        language: Language::En,
        first_line: false,
        chat: true,
    },
    LongBenchTask {
        name: "dureader",
        description: "multi-doc QA over retrieved documents, Chinese (DuReader)",
        template: "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
        max_new_tokens: 128,
        metric: Metric::RougeZh,
        language: Language::Zh,
        first_line: false,
        chat: true,
    },
    LongBenchTask {
        name: "gov_report",
        description: "summary of a government report (GovReport)",
        template: "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
        max_new_tokens: 512,
        metric: Metric::Rouge,
        language: Language::En,
        first_line: false,
        chat: true,
    },
    LongBenchTask {
        name: "qmsum",
        description: "query-based summary of a meeting transcript (QMSum)",
        template: "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
        max_new_tokens: 512,
        metric: Metric::Rouge,
        language: Language::En,
        first_line: false,
        chat: true,
    },
    LongBenchTask {
        name: "multi_news",
        description: "multi-doc news summary (Multi-News)",
        template: "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",
        max_new_tokens: 512,
        metric: Metric::Rouge,
        language: Language::En,
        first_line: false,
        chat: true,
    },
    LongBenchTask {
        name: "vcsum",
        description: "summary of a meeting transcript, Chinese (VCSUM)",
        template: "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
        max_new_tokens: 512,
        metric: Metric::RougeZh,
        language: Language::Zh,
        first_line: false,
        chat: true,
    },
    LongBenchTask {
        name: "trec",
        description: "few-shot question-type classification, 50 classes (TREC)",
        template: "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
        max_new_tokens: 64,
        metric: Metric::Classification,
        language: Language::En,
        first_line: true,
        chat: false,
    },
    LongBenchTask {
        name: "triviaqa",
        description: "few-shot QA over a passage (TriviaQA)",
        template: "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",
        max_new_tokens: 32,
        metric: Metric::QaF1,
        language: Language::En,
        first_line: true,
        chat: false,
    },
    LongBenchTask {
        name: "samsum",
        description: "few-shot dialogue summary (SAMSum)",
        template: "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
        max_new_tokens: 128,
        metric: Metric::Rouge,
        language: Language::En,
        first_line: true,
        chat: false,
    },
    LongBenchTask {
        name: "lsht",
        description: "few-shot news classification, 24 classes, Chinese (LSHT)",
        template: "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}",
        max_new_tokens: 64,
        metric: Metric::Classification,
        language: Language::Zh,
        first_line: true,
        chat: false,
    },
    LongBenchTask {
        name: "passage_count",
        description: "count the unique paragraphs among repeated Wikipedia paragraphs",
        template: "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
        max_new_tokens: 32,
        metric: Metric::Count,
        language: Language::En,
        first_line: false,
        chat: true,
    },
    LongBenchTask {
        name: "passage_retrieval_en",
        description: "which of 30 Wikipedia paragraphs an abstract comes from",
        template: "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ",
        max_new_tokens: 32,
        metric: Metric::Retrieval,
        language: Language::En,
        first_line: false,
        chat: true,
    },
    LongBenchTask {
        name: "passage_retrieval_zh",
        description: "which paragraph a summary comes from, Chinese (C4)",
        template: "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是\"段落1\"，\"段落2\"等格式\n\n答案是：",
        max_new_tokens: 32,
        metric: Metric::RetrievalZh,
        language: Language::Zh,
        first_line: false,
        chat: true,
    },
    LongBenchTask {
        name: "lcc",
        description: "next line of a long code file (LCC)",
        template: "Please complete the code given below. \n{context}Next line of code:\n",
        max_new_tokens: 64,
        metric: Metric::CodeSim,
        language: Language::Code,
        first_line: false,
        chat: false,
    },
    LongBenchTask {
        name: "repobench-p",
        description: "next line of code given cross-file repository context (RepoBench-P)",
        template: "Please complete the code given below. \n{context}{input}Next line of code:\n",
        max_new_tokens: 64,
        metric: Metric::CodeSim,
        language: Language::Code,
        first_line: false,
        chat: false,
    },
];

/// The datasets that have a LongBench-E file (`pred.py --e`).
pub const LONGBENCH_E: [&str; 13] = [
    "qasper",
    "multifieldqa_en",
    "hotpotqa",
    "2wikimqa",
    "gov_report",
    "multi_news",
    "trec",
    "triviaqa",
    "samsum",
    "passage_count",
    "passage_retrieval_en",
    "lcc",
    "repobench-p",
];

/// The 21 dataset names, in `pred.py`'s order.
pub fn names() -> impl Iterator<Item = &'static str> {
    TASKS.iter().map(|t| t.name)
}

/// The LongBench-E names (`hotpotqa_e`, ...).
pub fn e_names() -> impl Iterator<Item = String> {
    LONGBENCH_E.iter().map(|n| format!("{n}_e"))
}

/// The table entry of a dataset; `NAME_e` finds NAME when it has a LongBench-E set.
pub fn task(name: &str) -> Option<&'static LongBenchTask> {
    let (base, _) = split_e(name);
    TASKS.iter().find(|t| t.name == base)
}

/// The task spec of a dataset (`hotpotqa`) or of its LongBench-E set (`hotpotqa_e`, same
/// prompt and metric). Truncation is in the middle, as `pred.py` does it.
pub fn spec(name: &str) -> Option<TaskSpec> {
    let t = task(name)?;
    let description = match split_e(name) {
        (_, true) => format!("{} (LongBench-E)", t.description),
        _ => t.description.to_string(),
    };
    Some(TaskSpec {
        name: name.to_string(),
        description,
        template: t.template.to_string(),
        max_new_tokens: t.max_new_tokens,
        metric: t.metric,
        chat: t.chat,
        first_line: t.first_line,
        stop: Vec::new(),
        truncation: Truncation::Middle,
    })
}

/// `eval.py --e`'s length intervals over the sample's `length` field (words for English
/// and code, characters for Chinese).
pub fn length_bucket(length: u64) -> &'static str {
    if length < 4000 {
        "0-4k"
    } else if length < 8000 {
        "4-8k"
    } else {
        "8k+"
    }
}

/// `hotpotqa_e` → (`hotpotqa`, true). Only names in the LongBench-E list lose the suffix, so
/// a dataset whose own name ended in `_e` would stay whole.
fn split_e(name: &str) -> (&str, bool) {
    match name.strip_suffix("_e") {
        Some(base) if LONGBENCH_E.contains(&base) => (base, true),
        _ => (name, false),
    }
}

fn unknown(name: &str) -> TaskError {
    match name.strip_suffix("_e") {
        Some(b) if TASKS.iter().any(|t| t.name == b) => TaskError::Invalid(format!(
            "{b} has no LongBench-E set (`{name}`); LongBench-E has {}",
            LONGBENCH_E.join(", ")
        )),
        _ => TaskError::UnknownTask {
            given: name.to_string(),
            known: format!(
                "{} (LongBench), and NAME_e for the LongBench-E sets of {}",
                names().collect::<Vec<_>>().join(", "),
                LONGBENCH_E.join(", ")
            ),
        },
    }
}

/// Reads one LongBench JSONL file. `path` is the file (`hotpotqa.jsonl` or
/// `hotpotqa_e.jsonl`) or the folder that holds `NAME.jsonl`; `name` is the dataset, with
/// `_e` for LongBench-E. Each sample gets `context` and `input` as fields, `_id` as its id,
/// and `length`, `language` and `length_bucket` in `meta`.
pub fn load(path: &Path, name: &str) -> Result<Vec<Sample>> {
    let t = task(name).ok_or_else(|| unknown(name))?;
    let file = if path.is_dir() {
        let f = path.join(format!("{name}.jsonl"));
        if !f.is_file() {
            return Err(TaskError::File {
                path: f,
                msg: format!(
                    "no such file; put LongBench's {name}.jsonl there (`kvlens datasets fetch \
                     longbench`, or by hand: {})",
                    by_hand_hint(path)
                ),
            });
        }
        f
    } else {
        path.to_path_buf()
    };
    let mut out = Vec::new();
    let mut ids = Ids::new(&file);
    read_objects(&file, |line, obj| {
        let f = Fields {
            path: &file,
            line,
            obj: &obj,
        };
        let id = f.str("_id")?;
        ids.insert(id, line, "_id")?;
        // A file of another dataset renders with the wrong prompt; catch it here.
        if let Some(d) = f.opt_str("dataset")? {
            let (base, _) = split_e(d);
            if base != t.name {
                return Err(f.err("dataset", &format!("is \"{d}\", not {}", t.name)));
            }
        }
        let mut fields = Map::new();
        fields.insert(
            "context".into(),
            Value::String(f.str("context")?.to_string()),
        );
        fields.insert("input".into(), Value::String(f.str("input")?.to_string()));
        let length = match f.obj.get("length") {
            None => return Err(f.err("length", "is missing")),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| f.err("length", "is not a non-negative integer"))?,
        };
        let language = f.opt_str("language")?.unwrap_or(t.language.name());
        let mut meta = Map::new();
        meta.insert("length".into(), Value::from(length));
        meta.insert("language".into(), Value::from(language));
        meta.insert("length_bucket".into(), Value::from(length_bucket(length)));
        out.push(Sample {
            id: id.to_string(),
            fields,
            answers: f.answers("answers")?,
            all_classes: f.str_list("all_classes")?,
            meta,
        });
        Ok(())
    })?;
    Ok(out)
}

fn by_hand_hint(dir: &Path) -> String {
    format!(
        "download {} from the Hugging Face dataset {HUB_REPO} and put it at {} (the next \
         fetch unzips it), or unzip it and put its JSONL files in {}, one per dataset, e.g. \
         {}/hotpotqa.jsonl and {}/hotpotqa_e.jsonl (LongBench-E)",
        hub_url(),
        dir.join(HUB_FILE).display(),
        dir.display(),
        dir.display(),
        dir.display(),
    )
}

fn hub_url() -> String {
    format!("https://huggingface.co/datasets/{HUB_REPO}/resolve/main/{HUB_FILE}")
}

/// The v1 files missing from `dir`.
fn missing_files(dir: &Path) -> Vec<String> {
    names()
        .map(|n| format!("{n}.jsonl"))
        .filter(|f| !dir.join(f).is_file())
        .collect()
}

/// Installs the official data under `dest/longbench/` and returns that folder: nothing to do
/// when the 21 files are there; a `data.zip` placed there by hand is unzipped; otherwise
/// `data.zip` comes from the Hugging Face cache or, unless `offline`, is downloaded with
/// hf-hub. When that fails the error says what was tried and where to put the files.
pub fn fetch(dest: &Path, offline: bool) -> Result<PathBuf> {
    fetch_with(dest, offline, hf_hub::Cache::from_env())
}

fn fetch_with(dest: &Path, offline: bool, cache: hf_hub::Cache) -> Result<PathBuf> {
    use hf_hub::{Repo, RepoType};
    let out = dest.join("longbench");
    if missing_files(&out).is_empty() {
        return Ok(out);
    }
    let fail = |tried: String| TaskError::Fetch {
        what: "LongBench".into(),
        msg: format!("{tried}. To install by hand, {}", by_hand_hint(&out)),
    };
    let placed = out.join(HUB_FILE);
    let zip = if placed.is_file() {
        placed
    } else {
        let repo = Repo::new(HUB_REPO.to_string(), RepoType::Dataset);
        match cache.repo(repo.clone()).get(HUB_FILE) {
            Some(p) => p,
            None if offline => {
                return Err(fail(format!(
                    "{HUB_FILE} of the dataset {HUB_REPO} is not in the Hugging Face cache at \
                     {} and downloads are off",
                    cache.path().display()
                )))
            }
            None => {
                let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(cache);
                if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
                    builder = builder.with_endpoint(endpoint);
                }
                let api = builder.build().map_err(|e| {
                    fail(format!(
                        "could not set up the download of {}: {e}",
                        hub_url()
                    ))
                })?;
                let r = api.repo(repo);
                let url = r.url(HUB_FILE);
                r.get(HUB_FILE)
                    .map_err(|e| fail(format!("tried to download {url}: {e}")))?
            }
        }
    };
    unzip_jsonl(&zip, &out)?;
    let missing = missing_files(&out);
    if !missing.is_empty() {
        return Err(fail(format!(
            "{} did not hold {}",
            zip.display(),
            missing.join(", ")
        )));
    }
    Ok(out)
}

/// Extracts every `.jsonl` member of the archive `zip` into `out` by its file name alone
/// (`data/hotpotqa.jsonl` → `out/hotpotqa.jsonl`), skipping macOS resource forks and names
/// that would leave the archive. Returns how many files it wrote.
pub fn unzip_jsonl(zip: &Path, out: &Path) -> Result<usize> {
    let bad = |msg: String| TaskError::File {
        path: zip.to_path_buf(),
        msg,
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TaskError::Io { path, source }
    };
    let file = std::fs::File::open(zip).map_err(io(zip))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| bad(format!("not a readable zip archive: {e}")))?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut written = 0;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| bad(format!("member {i}: {e}")))?;
        if entry.is_dir() {
            continue;
        }
        let Some(inner) = entry.enclosed_name() else {
            continue;
        };
        if inner.components().any(|c| c.as_os_str() == "__MACOSX") {
            continue;
        }
        let Some(fname) = inner.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !fname.ends_with(".jsonl") || fname.starts_with("._") {
            continue;
        }
        let target = out.join(fname);
        let part = out.join(format!("{fname}.part"));
        let mut w = std::fs::File::create(&part).map_err(io(&part))?;
        if let Err(e) = std::io::copy(&mut entry, &mut w) {
            drop(w);
            let _ = std::fs::remove_file(&part);
            return Err(bad(format!("extracting {}: {e}", inner.display())));
        }
        drop(w);
        std::fs::rename(&part, &target).map_err(io(&target))?;
        written += 1;
    }
    if written == 0 {
        return Err(bad("holds no .jsonl files".into()));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    fn line(id: &str, dataset: &str, length: u64) -> String {
        json!({
            "input": "Q?", "context": "C.", "answers": ["a", 3], "length": length,
            "dataset": dataset, "language": "en", "all_classes": null, "_id": id
        })
        .to_string()
    }

    fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        p
    }

    #[test]
    fn table_matches_eval_and_pred() {
        assert_eq!(names().count(), 21);
        let t = task("repobench-p").unwrap();
        assert_eq!(
            (t.metric, t.max_new_tokens, t.chat),
            (Metric::CodeSim, 64, false)
        );
        let firsts: Vec<_> = TASKS
            .iter()
            .filter(|t| t.first_line)
            .map(|t| t.name)
            .collect();
        assert_eq!(firsts, ["trec", "triviaqa", "samsum", "lsht"]);
        let no_chat: Vec<_> = TASKS.iter().filter(|t| !t.chat).map(|t| t.name).collect();
        assert_eq!(
            no_chat,
            ["trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"]
        );
        assert_eq!(task("vcsum").unwrap().metric, Metric::RougeZh);
        assert_eq!(task("passage_count").unwrap().metric, Metric::Count);
        assert_eq!(task("gov_report").unwrap().max_new_tokens, 512);
        for t in &TASKS {
            assert!(!t.description.is_empty());
            // Every template names only `context` and `input`.
            let mut seen = Vec::new();
            crate::spec::py_format(t.template, |n| {
                seen.push(n.to_string());
                Ok(String::new())
            })
            .unwrap();
            assert!(
                seen.iter().all(|n| n == "context" || n == "input"),
                "{}",
                t.name
            );
        }
        assert_eq!(spec("hotpotqa_e").unwrap().name, "hotpotqa_e");
        assert!(spec("narrativeqa_e").is_none());
        assert!(spec("nope").is_none());
        assert_eq!(e_names().count(), 13);
    }

    #[test]
    fn renders_the_official_prompts() {
        let mut fields = Map::new();
        fields.insert("context".into(), json!("Passage 1:\nX"));
        fields.insert("input".into(), json!("Who?"));
        let s = Sample {
            id: "x".into(),
            fields,
            answers: vec![],
            all_classes: vec![],
            meta: Map::new(),
        };
        let hotpot = spec("hotpotqa").unwrap().render(&s).unwrap();
        assert_eq!(
            hotpot,
            "Answer the question based on the given passages. Only give me the answer and do \
             not output any other words.\n\nThe following are given passages.\nPassage 1:\nX\n\n\
             Answer the question based on the given passages. Only give me the answer and do \
             not output any other words.\n\nQuestion: Who?\nAnswer:"
        );
        let zh = spec("passage_retrieval_zh").unwrap().render(&s).unwrap();
        assert_eq!(
            zh,
            "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n\
             Passage 1:\nX\n\n下面是一个摘要\n\nWho?\n\n请输入摘要所属段落的编号。答案格式必须是\
             \"段落1\"，\"段落2\"等格式\n\n答案是："
        );
        let lcc = spec("lcc").unwrap().render(&s).unwrap();
        assert_eq!(
            lcc,
            "Please complete the code given below. \nPassage 1:\nXNext line of code:\n"
        );
        let narr = spec("narrativeqa").unwrap().render(&s).unwrap();
        assert!(narr.starts_with(
            "You are given a story, which can be either a novel or a movie script, and a \
             question. Answer the question asconcisely as you can"
        ));
        assert!(narr.ends_with("\n\nQuestion: Who?\n\nAnswer:"));
    }

    #[test]
    fn length_buckets_are_eval_e_intervals() {
        assert_eq!(length_bucket(0), "0-4k");
        assert_eq!(length_bucket(3999), "0-4k");
        assert_eq!(length_bucket(4000), "4-8k");
        assert_eq!(length_bucket(7999), "4-8k");
        assert_eq!(length_bucket(8000), "8k+");
    }

    #[test]
    fn loads_v1_and_e_files() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "hotpotqa.jsonl",
            &[line("a", "hotpotqa", 120), line("b", "hotpotqa", 9000)],
        );
        let e = write(
            dir.path(),
            "hotpotqa_e.jsonl",
            &[line("c", "hotpotqa_e", 5000)],
        );
        let v1 = load(dir.path(), "hotpotqa").unwrap();
        assert_eq!(v1.len(), 2);
        assert_eq!(v1[0].id, "a");
        assert_eq!(v1[0].answers, ["a", "3"]);
        assert_eq!(v1[0].fields["context"], json!("C."));
        assert_eq!(v1[0].fields["input"], json!("Q?"));
        assert!(v1[0].all_classes.is_empty());
        assert_eq!(v1[0].meta["length"], json!(120));
        assert_eq!(v1[0].meta["language"], json!("en"));
        assert_eq!(v1[0].meta["length_bucket"], json!("0-4k"));
        assert_eq!(v1[1].meta["length_bucket"], json!("8k+"));
        // The E file by folder and `_e` name, or by its path under the plain name.
        let by_dir = load(dir.path(), "hotpotqa_e").unwrap();
        assert_eq!(by_dir[0].meta["length_bucket"], json!("4-8k"));
        assert_eq!(load(&e, "hotpotqa").unwrap(), by_dir);

        let trec = write(
            dir.path(),
            "trec.jsonl",
            &[
                json!({"input": "q", "context": "c", "answers": ["LOC"], "length": 3,
                     "dataset": "trec", "language": "en", "all_classes": ["LOC", "HUM"],
                     "_id": "t"})
                .to_string(),
            ],
        );
        assert_eq!(load(&trec, "trec").unwrap()[0].all_classes, ["LOC", "HUM"]);
    }

    #[test]
    fn bad_input_names_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let err = |lines: &[String], name: &str| {
            let p = write(dir.path(), "f.jsonl", lines);
            load(&p, name).unwrap_err().to_string()
        };
        let mut no_ctx: Value = serde_json::from_str(&line("b", "qasper", 1)).unwrap();
        no_ctx.as_object_mut().unwrap().remove("context");
        let e = err(&[line("a", "qasper", 1), no_ctx.to_string()], "qasper");
        assert!(
            e.contains("f.jsonl line 2") && e.contains("field \"context\" is missing"),
            "{e}"
        );
        let e = err(&[line("a", "qasper", 1), "{\"_id\": ".into()], "qasper");
        assert!(
            e.contains("f.jsonl line 2") && e.contains("invalid JSON"),
            "{e}"
        );
        let mut bad_len: Value = serde_json::from_str(&line("a", "qasper", 1)).unwrap();
        bad_len["length"] = json!("long");
        let e = err(&[bad_len.to_string()], "qasper");
        assert!(
            e.contains("line 1") && e.contains("field \"length\""),
            "{e}"
        );
        let e = err(&[line("a", "qasper", 1)], "hotpotqa");
        assert!(
            e.contains("field \"dataset\"") && e.contains("qasper"),
            "{e}"
        );
        let e = err(&[line("a", "qasper", 1), line("a", "qasper", 2)], "qasper");
        assert!(
            e.contains("line 2") && e.contains("line 1") && e.contains("\"a\""),
            "{e}"
        );
        let e = err(&["".into()], "qasper");
        assert!(e.contains("no samples"), "{e}");
        let e = err(&[line("a", "qasper", 1)], "qaspr");
        assert!(
            e.contains("qaspr") && e.contains("narrativeqa") && e.contains("repobench-p"),
            "{e}"
        );
        let e = err(&[line("a", "narrativeqa", 1)], "narrativeqa_e");
        assert!(e.contains("no LongBench-E"), "{e}");
        let e = load(dir.path(), "musique").unwrap_err().to_string();
        assert!(
            e.contains("musique.jsonl") && e.contains("fetch longbench"),
            "{e}"
        );
    }

    fn zip_of(path: &Path, members: &[(&str, &str)]) {
        let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, body) in members {
            w.start_file(*name, opts).unwrap();
            w.write_all(body.as_bytes()).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn unzips_only_jsonl_members_by_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let z = dir.path().join("data.zip");
        let body = line("a", "hotpotqa", 10) + "\n";
        zip_of(
            &z,
            &[
                ("data/hotpotqa.jsonl", &body),
                ("data/README.md", "x"),
                ("__MACOSX/data/._hotpotqa.jsonl", "junk"),
                ("../escape.jsonl", "junk"),
            ],
        );
        let out = dir.path().join("out");
        assert_eq!(unzip_jsonl(&z, &out).unwrap(), 1);
        assert_eq!(
            std::fs::read_to_string(out.join("hotpotqa.jsonl")).unwrap(),
            body
        );
        assert!(!dir.path().join("escape.jsonl").exists());
        assert_eq!(load(&out, "hotpotqa").unwrap().len(), 1);

        std::fs::write(&z, "not a zip").unwrap();
        let e = unzip_jsonl(&z, &out).unwrap_err().to_string();
        assert!(e.contains("data.zip") && e.contains("zip"), "{e}");
    }

    #[test]
    fn fetch_offline_says_what_it_tried_and_where_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let cache = hf_hub::Cache::new(dir.path().join("hf"));
        let dest = dir.path().join("data");
        let e = fetch_with(&dest, true, cache.clone())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("THUDM/LongBench") && e.contains("data.zip"),
            "{e}"
        );
        assert!(e.contains("downloads are off"), "{e}");
        assert!(
            e.contains(
                &dest
                    .join("longbench")
                    .join("hotpotqa.jsonl")
                    .display()
                    .to_string()
            ),
            "{e}"
        );

        // A data.zip placed by hand is unzipped without the network.
        let out = dest.join("longbench");
        std::fs::create_dir_all(&out).unwrap();
        let bodies: Vec<(String, String)> = names()
            .map(|n| (format!("data/{n}.jsonl"), line("a", n, 1) + "\n"))
            .collect();
        let members: Vec<(&str, &str)> = bodies
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        zip_of(&out.join(HUB_FILE), &members[1..]);
        let e = fetch_with(&dest, true, cache.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("narrativeqa.jsonl"), "{e}");
        zip_of(&out.join(HUB_FILE), &members);
        assert_eq!(fetch_with(&dest, true, cache).unwrap(), out);
        assert_eq!(load(&out, "repobench-p").unwrap().len(), 1);
    }
}
