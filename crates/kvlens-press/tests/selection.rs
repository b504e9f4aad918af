//! Token selection through the cache: budgets, protected rows, and equality with `full`.

use kvlens_press::{CacheShape, KvCache, KvDtype, Spec, Step};

const SHAPE: CacheShape = CacheShape {
    n_layers: 3,
    n_heads: 4,
    n_kv_heads: 2,
    head_dim: 8,
};

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as f32 / (1u64 << 31) as f32 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// Runs a prompt of `prompt` tokens in chunks of `chunk`, then `decode` single steps,
/// returning every attention output and the cache.
fn run(spec: &str, prompt: usize, chunk: usize, decode: usize) -> (Vec<Vec<f32>>, KvCache) {
    let spec = Spec::parse(spec).unwrap();
    let mut cache = KvCache::new(SHAPE, KvDtype::F32, spec.build());
    let mut rng = Lcg(5);
    let mut outs = Vec::new();
    let qw = SHAPE.n_heads * SHAPE.head_dim;
    let kvw = SHAPE.n_kv_heads * SHAPE.head_dim;
    let mut step = |cache: &mut KvCache, pos0: usize, n: usize, s: Step| {
        cache.begin(s, n);
        for layer in 0..SHAPE.n_layers {
            let (q, k, v) = (rng.vec(n * qw), rng.vec(n * kvw), rng.vec(n * kvw));
            let positions: Vec<u32> = (pos0..pos0 + n).map(|p| p as u32).collect();
            let mut out = vec![0f32; n * qw];
            cache.attend(layer, &positions, &q, &k, &v, &mut out);
            outs.push(out);
        }
    };
    let mut p = 0;
    while p < prompt {
        let n = chunk.min(prompt - p);
        step(
            &mut cache,
            p,
            n,
            Step::Prefill {
                last: p + n == prompt,
            },
        );
        p += n;
    }
    for i in 0..decode {
        step(&mut cache, prompt + i, 1, Step::Decode);
    }
    (outs, cache)
}

fn kept(cache: &KvCache, layer: usize, head: usize) -> Vec<u32> {
    cache.layer_heads(layer)[head].positions.clone()
}

#[test]
fn budget_at_least_the_context_reproduces_full() {
    let (full, _) = run("full", 40, 16, 10);
    for spec in [
        "streamingllm:budget=64",
        "h2o:budget=64",
        "snapkv:budget=64,window=8",
        "pyramidkv:budget=64,window=8,beta=1",
        "tova:budget=64",
        "knorm:budget=64",
    ] {
        let (outs, cache) = run(spec, 40, 16, 10);
        assert_eq!(outs, full, "{spec} changed attention without evicting");
        assert_eq!(cache.tokens_kept_mean(), 50.0, "{spec}");
    }
}

#[test]
fn streamingllm_keeps_sinks_and_the_recent_window() {
    let (_, cache) = run("streamingllm:budget=12,sink=4", 40, 8, 5);
    for layer in 0..SHAPE.n_layers {
        for head in 0..SHAPE.n_kv_heads {
            let want: Vec<u32> = (0..4).chain(37..45).collect();
            assert_eq!(kept(&cache, layer, head), want);
        }
    }
}

#[test]
fn decode_methods_never_exceed_their_budget_between_steps() {
    for spec in [
        "h2o:budget=10,recent=4",
        "tova:budget=10",
        "streamingllm:budget=10,sink=2",
    ] {
        let (_, cache) = run(spec, 30, 4, 7);
        for layer in 0..SHAPE.n_layers {
            for head in 0..SHAPE.n_kv_heads {
                let k = kept(&cache, layer, head);
                assert_eq!(k.len(), 10, "{spec}");
                // The newest token is always still there.
                assert_eq!(*k.last().unwrap(), 36, "{spec}");
            }
        }
        // Peak: layers compress one after another, so at most one layer holds the budget
        // plus the chunk of 4 in flight while the others hold the budget.
        let per_layer_token = SHAPE.full_bytes(1, KvDtype::F32) / SHAPE.n_layers;
        assert_eq!(
            cache.peak_bytes(),
            (14 + 10 + 10) * per_layer_token,
            "{spec}"
        );
    }
}

#[test]
fn h2o_keeps_its_recent_window() {
    let (_, cache) = run("h2o:budget=10,recent=4", 30, 30, 0);
    for layer in 0..SHAPE.n_layers {
        for head in 0..SHAPE.n_kv_heads {
            let k = kept(&cache, layer, head);
            assert_eq!(k.len(), 10);
            assert_eq!(&k[6..], &[26, 27, 28, 29]);
        }
    }
}

#[test]
fn prefill_methods_compress_once_then_grow_by_one_per_token() {
    for spec in ["snapkv:budget=16,window=4", "knorm:budget=16"] {
        let (_, cache) = run(spec, 48, 16, 5);
        for layer in 0..SHAPE.n_layers {
            for head in 0..SHAPE.n_kv_heads {
                let k = kept(&cache, layer, head);
                assert_eq!(k.len(), 21, "{spec}");
                assert_eq!(
                    &k[16..],
                    &[48, 49, 50, 51, 52],
                    "{spec}: generated tokens all kept"
                );
            }
        }
        // The whole prompt is held until the last chunk: 48 tokens in the layer that
        // compresses first, 32 in the layers still waiting, 16 in those done.
        let per_layer_token = SHAPE.full_bytes(1, KvDtype::F32) / SHAPE.n_layers;
        assert_eq!(
            cache.peak_bytes(),
            (48 + 32 + 32) * per_layer_token,
            "{spec}"
        );
    }
    // SnapKV always keeps its observation window.
    let (_, cache) = run("snapkv:budget=16,window=4", 48, 16, 0);
    let k = kept(&cache, 1, 0);
    assert_eq!(&k[12..], &[44, 45, 46, 47]);
}

#[test]
fn pyramidkv_gives_lower_layers_more() {
    let (_, cache) = run("pyramidkv:budget=16,window=4,beta=4", 48, 48, 0);
    let lens: Vec<usize> = (0..SHAPE.n_layers)
        .map(|l| kept(&cache, l, 0).len())
        .collect();
    assert!(lens[0] > lens[1] && lens[1] > lens[2], "{lens:?}");
    assert_eq!(
        lens.iter().sum::<usize>(),
        48,
        "mean budget 16 over 3 layers: {lens:?}"
    );
}

#[test]
fn knorm_keeps_the_smallest_keys() {
    let spec = Spec::parse("knorm:budget=2").unwrap();
    let shape = CacheShape {
        n_layers: 1,
        n_heads: 1,
        n_kv_heads: 1,
        head_dim: 8,
    };
    let mut cache = KvCache::new(shape, KvDtype::F32, spec.build());
    let norms = [5.0f32, 1.0, 3.0, 0.5, 4.0];
    let k: Vec<f32> = norms
        .iter()
        .flat_map(|&n| [n, 0., 0., 0., 0., 0., 0., 0.])
        .collect();
    let q = vec![0.1f32; 5 * 8];
    let mut out = vec![0f32; 5 * 8];
    cache.begin(Step::Prefill { last: true }, 5);
    cache.attend(0, &[0, 1, 2, 3, 4], &q, &k, &k, &mut out);
    assert_eq!(cache.layer_heads(0)[0].positions, vec![1, 3]);
}
