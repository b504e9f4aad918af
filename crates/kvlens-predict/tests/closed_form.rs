//! The simulator on a small synthetic profile whose answers are known in closed form: far
//! below capacity a request's latency is the sum of its step times; far above, throughput is
//! the batch the KV budget allows over the time of its steps.

use kvlens_engine::sched::{Limits, StepShape};
use kvlens_predict::profile::{ModelLine, StepSample};
use kvlens_predict::sim::{simulate, SimConfig, SimRequest};
use kvlens_predict::{MethodProfile, Profile, StepModel};
use kvlens_press::{projected_peak_bytes, CacheShape, KvDtype, Spec};
use std::path::Path;

const SHAPE: CacheShape = CacheShape {
    n_layers: 2,
    n_heads: 4,
    n_kv_heads: 2,
    head_dim: 16,
};

/// The machine that "measured" the profile: 3 ms per step, 0.2 ms per sequence, 0.5 ms per
/// MiB of cache read, 0.01 ms per prompt token, 0.05 ms per million attended pairs.
const TRUTH: StepModel = StepModel {
    coef: [3.0, 0.2, 0.5, 0.01, 0.05],
};

/// A profile of `method` over a small grid, timed by [`TRUTH`], written and read back as a
/// file would be.
fn profile(method: &str) -> Profile {
    let mut steps = Vec::new();
    let per_token = SHAPE.full_bytes(1, KvDtype::F16);
    for batch in [1, 2, 4, 8] {
        for context in [64, 128, 256, 512] {
            let mut pre = StepShape::default();
            for _ in 0..batch {
                pre.add_chunk(0, context);
            }
            let mut dec = StepShape::default();
            for _ in 0..batch {
                dec.add_decode(per_token * context);
            }
            for (phase, shape) in [("prefill", pre), ("decode", dec)] {
                steps.push((
                    0,
                    StepSample {
                        method: method.into(),
                        batch,
                        context,
                        phase: phase.into(),
                        shape,
                        ms: TRUTH.step_ms(&shape),
                    },
                ));
            }
        }
    }
    let p = Profile {
        model: ModelLine {
            model: "synthetic".into(),
            n_layers: SHAPE.n_layers,
            n_heads: SHAPE.n_heads,
            n_kv_heads: SHAPE.n_kv_heads,
            head_dim: SHAPE.head_dim,
            context: 4096,
            kv_dtype: "f16".into(),
            weight_bytes: 1 << 20,
            chunk: 512,
            machine: String::new(),
            kvlens_version: String::new(),
            measured_unix_s: 0,
        },
        methods: vec![MethodProfile {
            method: method.into(),
            spec: Spec::parse(method).unwrap(),
            steps,
            kv: Vec::new(),
        }],
    };
    Profile::parse(Path::new("synthetic.jsonl"), &p.to_jsonl()).unwrap()
}

fn fitted(p: &Profile) -> StepModel {
    let steps: Vec<(StepShape, f64)> = p.methods[0]
        .steps
        .iter()
        .map(|(_, s)| (s.shape, s.ms))
        .collect();
    StepModel::fit(&steps).unwrap()
}

fn config(spec: &str, limits: Limits) -> SimConfig {
    SimConfig {
        limits,
        spec: Spec::parse(spec).unwrap(),
        dtype: KvDtype::F16,
        shape: SHAPE,
        chunk: 512,
        min_last_chunk: 64,
    }
}

#[test]
fn far_below_capacity_latency_is_the_sum_of_the_step_times() {
    let p = profile("full");
    let model = fitted(&p);
    let (prompt, out) = (300, 40);
    // One request a minute against requests that take a fraction of a second.
    let requests: Vec<SimRequest> = (0..20)
        .map(|i| SimRequest {
            arrival_s: 60.0 * i as f64,
            prompt_tokens: prompt,
            output_tokens: out,
            stopped: false,
        })
        .collect();
    let cfg = config(
        "full",
        Limits {
            kv_budget: 1 << 30,
            max_batch: 16,
            prefill_chunk: 512,
        },
    );
    let sim = simulate(&cfg, &requests, &|s| model.step_ms(s)).unwrap();
    // By hand: one prompt chunk of 300 tokens, then 39 decode steps over a cache of 300,
    // 301, ... tokens (the last token is never fed back).
    let per_token = SHAPE.full_bytes(1, KvDtype::F16) as f64 / 1048576.0;
    let c = TRUTH.coef;
    let prefill =
        c[0] + c[1] + c[3] * prompt as f64 + c[4] * (prompt * (prompt + 1) / 2) as f64 / 1e6;
    let decode: f64 = (0..out - 1)
        .map(|d| c[0] + c[1] + c[2] * per_token * (prompt + d) as f64)
        .sum();
    for d in &sim.done {
        let ttft = (d.token_s[0] - d.arrival_s) * 1e3;
        let e2e = (d.done_s - d.arrival_s) * 1e3;
        assert!((ttft - prefill).abs() < 1e-6, "ttft {ttft} vs {prefill}");
        assert!(
            (e2e - prefill - decode).abs() < 1e-6,
            "e2e {e2e} vs {}",
            prefill + decode
        );
        assert_eq!(d.queue_ms, 0.0);
    }
    assert_eq!(sim.peak_batch, 1);
}

#[test]
fn far_above_capacity_throughput_is_the_budget_limited_batch_over_its_step_time() {
    // StreamingLLM keeps 64 tokens whatever the prompt, so a cache never grows past what
    // admission counted and the budget alone sets the batch.
    let method = "streamingllm:budget=64,sink=4";
    let p = profile(method);
    let model = fitted(&p);
    let (prompt, out, n) = (200, 30, 48);
    let spec = Spec::parse(method).unwrap();
    let need = projected_peak_bytes(&spec, SHAPE, KvDtype::F16, &[(0, prompt)], 1);
    for fits in [3, 6] {
        let cfg = config(
            method,
            Limits {
                kv_budget: fits * need + need / 2,
                max_batch: 64,
                // Every admitted prompt goes in in one step.
                prefill_chunk: fits * prompt,
            },
        );
        let requests: Vec<SimRequest> = (0..n)
            .map(|_| SimRequest {
                arrival_s: 0.0,
                prompt_tokens: prompt,
                output_tokens: out,
                stopped: false,
            })
            .collect();
        let sim = simulate(&cfg, &requests, &|s| model.step_ms(s)).unwrap();
        assert_eq!(sim.peak_batch, fits);
        assert_eq!(sim.preemptions, 0);
        // Waves of `fits` requests: one prefill step of `fits` prompts, then out − 1 decode
        // steps of `fits` rows over caches of 64 tokens (StreamingLLM's budget).
        let kv = 64.0 * SHAPE.full_bytes(1, KvDtype::F16) as f64 / 1048576.0;
        let c = TRUTH.coef;
        let f = fits as f64;
        let prefill = c[0]
            + c[1] * f
            + c[3] * f * prompt as f64
            + c[4] * f * (prompt * (prompt + 1) / 2) as f64 / 1e6;
        let decode = (out - 1) as f64 * (c[0] + c[1] * f + c[2] * f * kv);
        let wave_s = (prefill + decode) / 1e3;
        let end = sim.done.iter().map(|d| d.done_s).fold(0.0, f64::max);
        let throughput = n as f64 / end;
        let expected = f / wave_s;
        assert!(
            (throughput - expected).abs() / expected < 1e-6,
            "{fits} fit: {throughput} req/s vs {expected}"
        );
    }
}
