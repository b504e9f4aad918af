//! Batch invariance: a sequence's logits are the same bits whether it runs alone or in a
//! step with other sequences (other prompts, other methods, some prefilling while others
//! decode), for every compression method, on the default model and on a tiny model whose
//! matrices mix every format.

mod common;

use common::default_model;
use kvlens_engine::generate::{argmax, prefill_chunks, LLAMA_UBATCH, MIN_LAST_CHUNK};
use kvlens_engine::{Logits, Model, Seq};
use kvlens_press::{KvCache, KvDtype, Spec, Step};

/// One sequence's work: its prompt in its own chunks (as `generate` cuts them), then greedy
/// decode steps.
struct Run {
    prompt: Vec<u32>,
    cache: KvCache,
    chunks: Vec<(usize, usize)>,
    done_chunks: usize,
    decoded: Vec<u32>,
    decode_steps: usize,
    /// Logits of every step, in order.
    logits: Vec<Vec<f32>>,
}

impl Run {
    fn new(model: &Model, spec: &Spec, prompt: Vec<u32>, decode_steps: usize) -> Self {
        let mut cache = model.new_cache(spec, KvDtype::F16);
        cache.reserve(prompt.len() + decode_steps);
        let min_last = cache.needs().window.max(MIN_LAST_CHUNK);
        let chunks = prefill_chunks(prompt.len(), 512, min_last);
        Self {
            prompt,
            cache,
            chunks,
            done_chunks: 0,
            decoded: Vec::new(),
            decode_steps,
            logits: Vec::new(),
        }
    }

    fn finished(&self) -> bool {
        self.done_chunks == self.chunks.len() && self.decoded.len() == self.decode_steps
    }

    /// Begins this sequence's next piece of work: its tokens and first position.
    fn begin(&mut self) -> (Vec<u32>, usize) {
        if self.done_chunks < self.chunks.len() {
            let (a, b) = self.chunks[self.done_chunks];
            let last = self.done_chunks + 1 == self.chunks.len();
            self.cache.begin(Step::Prefill { last }, b - a);
            self.cache
                .set_solo_last(last && self.prompt.len() % LLAMA_UBATCH == 1);
            (self.prompt[a..b].to_vec(), a)
        } else {
            let next = argmax(self.logits.last().unwrap());
            self.decoded.push(next);
            self.cache.begin(Step::Decode, 1);
            (vec![next], self.prompt.len() + self.decoded.len() - 1)
        }
    }

    fn end(&mut self, logits: Vec<f32>) {
        if self.done_chunks < self.chunks.len() {
            self.done_chunks += 1;
        }
        self.logits.push(logits);
    }
}

/// Runs every sequence through shared steps: sequence i joins at step `starts[i]`.
fn together(model: &Model, runs: &mut [Run], starts: &[usize]) {
    let mut t = 0;
    while runs.iter().any(|r| !r.finished()) {
        let active: Vec<usize> = (0..runs.len())
            .filter(|&i| starts[i] <= t && !runs[i].finished())
            .collect();
        let work: Vec<(Vec<u32>, usize)> = active.iter().map(|&i| runs[i].begin()).collect();
        let mut refs: Vec<&mut Run> = Vec::new();
        let mut rest: &mut [Run] = runs;
        let mut base = 0;
        for &i in &active {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - base);
            let (one, tail) = tail.split_at_mut(1);
            refs.push(&mut one[0]);
            rest = tail;
            base = i + 1;
        }
        let mut seqs: Vec<Seq> = refs
            .iter_mut()
            .zip(&work)
            .map(|(r, (tokens, pos0))| Seq {
                tokens,
                pos0: *pos0,
                cache: &mut r.cache,
                want: Logits::Last,
            })
            .collect();
        let out = model.transformer.step(&mut seqs);
        drop(seqs);
        for (r, l) in refs.into_iter().zip(out) {
            r.end(l);
        }
        t += 1;
    }
}

/// Prompts of the given lengths, drawn from the vocabulary (past its first 100 ids, the
/// special tokens of real models, when it is large).
fn prompts(vocab: u32, lens: &[usize]) -> Vec<Vec<u32>> {
    let (lo, span) = if vocab > 400 {
        (100, vocab - 200)
    } else {
        (0, vocab)
    };
    lens.iter()
        .enumerate()
        .map(|(j, &n)| {
            (0..n as u32)
                .map(|i| lo + (i * 7919 + j as u32 * 104729) % span)
                .collect()
        })
        .collect()
}

/// Each method of `methods` on each prompt alone, then all (method × prompt) sequences
/// together, staggered so that prefill chunks and decode steps share steps: every step's
/// logits equal bit for bit.
fn check_invariance(model: &Model, methods: &[String], lens: &[usize], decode: usize) {
    let ps = prompts(model.config().vocab as u32, lens);
    let mut alone = Vec::new();
    let mut runs = Vec::new();
    for m in methods {
        let spec = Spec::parse(m).unwrap();
        for p in &ps {
            let mut r = Run::new(model, &spec, p.clone(), decode);
            together(model, std::slice::from_mut(&mut r), &[0]);
            alone.push(r.logits);
            runs.push(Run::new(model, &spec, p.clone(), decode));
        }
    }
    let starts: Vec<usize> = (0..runs.len()).map(|i| i % 3).collect();
    together(model, &mut runs, &starts);
    for (i, (r, want)) in runs.iter().zip(&alone).enumerate() {
        let what = format!(
            "{} on prompt of {}",
            methods[i / ps.len()],
            lens[i % ps.len()]
        );
        assert_eq!(r.logits.len(), want.len(), "{what}");
        for (step, (a, b)) in r.logits.iter().zip(want).enumerate() {
            let same =
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{what}: step {step} differs in a batch");
        }
    }
}

/// Every method with its budget (and window, residual) small enough that it compresses these
/// prompts.
fn all_methods(budget: usize) -> Vec<String> {
    kvlens_press::METHODS
        .iter()
        .map(|m| {
            let has = |p: &str| m.params.iter().any(|x| x.name == p);
            let mut params = Vec::new();
            if has("budget") {
                params.push(format!("budget={budget}"));
            }
            if has("window") {
                params.push("window=8".to_string());
            }
            if has("residual") {
                params.push("residual=16".to_string());
            }
            if params.is_empty() {
                m.name.to_string()
            } else {
                format!("{}:{}", m.name, params.join(","))
            }
        })
        .collect()
}

#[test]
fn every_method_gives_the_same_bits_in_a_batch_as_alone_on_the_default_model() {
    check_invariance(default_model(), &all_methods(48), &[60, 130], 4);
    // 513 tokens: the last one summed as llama.cpp's one-token batch.
    let some: Vec<String> = [
        "full",
        "snapkv:budget=64",
        "h2o:budget=64",
        "kivi:residual=16",
    ]
    .map(String::from)
    .to_vec();
    check_invariance(default_model(), &some, &[513, 40], 2);
}

#[test]
fn every_method_gives_the_same_bits_in_a_batch_as_alone_with_every_format() {
    // F16 matrices (whose summation order llama.cpp picks by the number of tokens) and
    // candle's K-quant kernels next to kvlens's block kernels, heads of 128 (Qwen3) and of 64
    // with biases (Qwen2).
    use common::tiny::{hf_tensors, mixed, write_gguf, write_tokenizer, Arch};
    for arch in [Arch::Qwen3, Arch::Qwen2] {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tiny.gguf");
        write_gguf(&path, arch, &hf_tensors(arch, 23), &mixed, false);
        write_tokenizer(tmp.path());
        let model = Model::from_gguf(&path).unwrap();
        check_invariance(&model, &all_methods(16), &[1, 20, 45, 90], 5);
    }
}

/// A scheduler admits requests on `projected_peak_bytes`: for every method it must be the
/// peak a real generation reaches, prompts of one and of several chunks.
#[test]
fn projected_peak_bytes_are_the_peaks_real_runs_reach() {
    use common::tiny::{hf_tensors, mixed, write_gguf, write_tokenizer, Arch};
    use kvlens_engine::{generate, GenOptions};
    use kvlens_press::projected_peak_bytes;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tiny.gguf");
    write_gguf(
        &path,
        Arch::Qwen2,
        &hf_tensors(Arch::Qwen2, 29),
        &mixed,
        false,
    );
    write_tokenizer(tmp.path());
    let model = Model::from_gguf(&path).unwrap();
    let opts = GenOptions {
        max_new_tokens: 12,
        prefill_chunk: 64,
        ..GenOptions::default()
    };
    for m in all_methods(24) {
        let spec = Spec::parse(&m).unwrap();
        for p in prompts(model.config().vocab as u32, &[30, 150]) {
            let mut cache = model.new_cache(&spec, KvDtype::F16);
            let min_last = kvlens_engine::generate::min_last_chunk(&cache, &opts);
            let chunks = prefill_chunks(p.len(), opts.prefill_chunk, min_last);
            let g = generate(&model, &mut cache, &p, &opts).unwrap();
            let want = projected_peak_bytes(
                &spec,
                model.config().cache_shape(),
                KvDtype::F16,
                &chunks,
                g.output_tokens,
            );
            assert_eq!(
                g.kv_bytes_peak,
                want,
                "{m}, prompt of {} in {} chunks, {} new tokens",
                p.len(),
                chunks.len(),
                g.output_tokens
            );
        }
    }
}
