//! Quantizing methods through the cache: what is packed, what stays dense, exact bytes, and
//! attention close to the full cache's.

use kvlens_press::{CacheShape, KvCache, KvDtype, Spec, Step};

const SHAPE: CacheShape = CacheShape {
    n_layers: 2,
    n_heads: 4,
    n_kv_heads: 2,
    head_dim: 64,
};

fn lcg_vec(seed: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// Feeds `prompt` tokens in one chunk, then `decode` steps; returns the last outputs.
fn run(spec: &str, prompt: usize, decode: usize) -> (Vec<f32>, KvCache) {
    let mut cache = KvCache::new(SHAPE, KvDtype::F16, Spec::parse(spec).unwrap().build());
    let mut seed = 3;
    let qw = SHAPE.n_heads * SHAPE.head_dim;
    let kvw = SHAPE.n_kv_heads * SHAPE.head_dim;
    let mut last = Vec::new();
    let mut feed = |cache: &mut KvCache, pos0: usize, n: usize, step: Step| {
        cache.begin(step, n);
        for layer in 0..SHAPE.n_layers {
            let (q, k, v) = (
                lcg_vec(&mut seed, n * qw),
                lcg_vec(&mut seed, n * kvw),
                lcg_vec(&mut seed, n * kvw),
            );
            let pos: Vec<u32> = (pos0..pos0 + n).map(|p| p as u32).collect();
            let mut out = vec![0f32; n * qw];
            cache.attend(layer, &pos, &q, &k, &v, &mut out);
            last = out;
        }
    };
    feed(&mut cache, 0, prompt, Step::Prefill { last: true });
    for i in 0..decode {
        feed(&mut cache, prompt + i, 1, Step::Decode);
    }
    (last, cache)
}

#[test]
fn kivi_packs_whole_groups_and_keeps_the_residual_dense() {
    let (_, cache) = run("kivi:bits=2,group=4,residual=8", 37, 6);
    for layer in 0..SHAPE.n_layers {
        for h in cache.layer_heads(layer) {
            assert_eq!(h.len(), 43);
            assert_eq!(h.packed_rows % 4, 0);
            assert!(
                (8..12).contains(&h.dense_rows()),
                "dense {}",
                h.dense_rows()
            );
            let packed: usize = h.packed.iter().map(|c| c.bytes()).sum();
            // Per group of 4 tokens: 2-bit codes for keys and values, a (min, scale) per key
            // channel and per value group of 4 channels.
            let groups = h.packed_rows / 4;
            assert_eq!(packed, groups * (2 * 4 * 64 / 4 + 4 * 64 + 4 * 4 * 16));
            assert_eq!(h.bytes(), packed + h.dense_rows() * 64 * 2 * 2);
        }
    }
}

#[test]
fn per_token_methods_pack_every_token_at_their_width() {
    for (spec, per_row) in [("int8", 64 + 4), ("int4", 32 + 4), ("fp8", 64 + 2)] {
        let (_, cache) = run(spec, 20, 3);
        let h = &cache.layer_heads(1)[0];
        assert_eq!(h.dense_rows(), 0, "{spec}");
        assert_eq!(h.bytes(), 23 * 2 * per_row, "{spec}");
        assert!(cache.peak_bytes() < cache.full_bytes(), "{spec}");
    }
}

#[test]
fn quantized_attention_stays_close_to_full() {
    let (full, _) = run("full", 160, 4);
    for (spec, tol) in [
        ("int8", 0.01),
        ("fp8", 0.05),
        ("int4", 0.1),
        ("kivi:bits=4,group=8,residual=8", 0.1),
        ("gear:bits=4", 0.1),
    ] {
        let (out, cache) = run(spec, 160, 4);
        let err = out
            .iter()
            .zip(&full)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < tol, "{spec}: max |Δ| {err}");
        assert!(err > 0.0, "{spec} changed nothing");
        assert!(
            cache.bytes() < run("full", 160, 4).1.bytes(),
            "{spec} holds no fewer bytes"
        );
    }
}
