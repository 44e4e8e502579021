//! Shared test helpers: the GPU context (SKIP or fail without an adapter), seeded random data,
//! `assert_close` with the worst index, and the PyTorch golden fixtures.
#![allow(dead_code)]

use wgpu_optim::{
    AdagradConfig, AdamConfig, ContextOptions, GpuContext, OptimizerConfig, RmspropConfig,
    SgdConfig,
};

/// `cfg` with another lr and weight decay (what a second parameter group typically changes);
/// an optimizer without weight decay gets only the lr.
pub fn with_lr_wd(cfg: &OptimizerConfig, lr: f64, weight_decay: f64) -> OptimizerConfig {
    let mut c = cfg.clone().with_lr(lr);
    c.set_weight_decay(weight_decay);
    c
}

/// The library's table of flag combinations for one family.
pub fn variants_of(family: &str) -> Vec<OptimizerConfig> {
    OptimizerConfig::variants()
        .into_iter()
        .filter(|c| c.family() == family)
        .collect()
}

/// PyTorch's fp32 `assert_close` defaults.
pub const RTOL: f32 = 1.3e-6;
/// PyTorch's fp32 `assert_close` defaults.
pub const ATOL: f32 = 1e-5;

/// The GPU context, or `None` (with a printed SKIP) when there is no adapter. Under
/// `REQUIRE_GPU=1` (set by .ci/run) a missing adapter fails the test instead.
pub fn gpu_with(mut opts: ContextOptions) -> Option<GpuContext> {
    // Kernel shapes timed by the tests (on a machine busy with other tests) go to a cache of
    // their own, shared by the test binaries of this build, never to the user's.
    if opts.tune_cache_dir.is_none() {
        opts.tune_cache_dir =
            Some(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel-shapes"));
    }
    match GpuContext::with_options(opts) {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            if std::env::var("REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("REQUIRE_GPU=1 but no GPU context: {e}");
            }
            eprintln!("SKIP: no GPU adapter ({e})");
            None
        }
    }
}

/// The default GPU context (see [`gpu_with`]).
pub fn gpu() -> Option<GpuContext> {
    gpu_with(ContextOptions::default())
}

/// `n` values from a normal-ish distribution (sum of uniforms), seeded.
pub fn randn(rng: &mut fastrand::Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.f32() + rng.f32() + rng.f32() - 1.5) * 2.0 * scale)
        .collect()
}

/// Panics with the worst element when `|got - want| > atol + rtol * |want|` anywhere.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let tol = atol + rtol * w.abs();
        let excess = if err.is_nan() || err > tol {
            if err.is_nan() {
                f32::INFINITY
            } else {
                err / tol
            }
        } else {
            continue;
        };
        if worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        panic!(
            "{what}: index {i}: got {} want {} (|diff| {:e} > atol {atol:e} + rtol {rtol:e} * |want|)",
            got[i],
            want[i],
            (got[i] - want[i]).abs()
        );
    }
}

/// One golden case produced by PyTorch (see tests/fixtures/README.md).
#[derive(Debug, serde::Deserialize)]
pub struct Case {
    pub optimizer: String,
    pub hyper: serde_json::Map<String, serde_json::Value>,
    pub lengths: Vec<usize>,
    pub steps: usize,
    pub frozen: Vec<Vec<bool>>,
    pub init: Vec<Vec<f64>>,
    pub grads: Vec<Vec<Vec<f64>>>,
    pub expected: Expected,
}

/// Expected results of a case.
#[derive(Debug, serde::Deserialize)]
pub struct Expected {
    pub params: Vec<Vec<f64>>,
    pub state: std::collections::BTreeMap<String, Vec<f64>>,
    #[serde(default)]
    pub step: std::collections::BTreeMap<String, f64>,
}

#[derive(Debug, serde::Deserialize)]
struct Fixtures {
    cases: Vec<Case>,
}

/// All golden cases.
pub fn fixtures() -> Vec<Case> {
    let text = include_str!("../fixtures/torch_optim_cases.json");
    serde_json::from_str::<Fixtures>(text)
        .expect("fixture JSON parses")
        .cases
}

pub fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

impl Case {
    fn f(&self, key: &str) -> Option<f64> {
        self.hyper.get(key).and_then(|v| v.as_f64())
    }
    fn b(&self, key: &str) -> bool {
        self.hyper
            .get(key)
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    }

    /// The PyTorch constructor call as our config (unspecified keys keep PyTorch defaults).
    pub fn config(&self) -> OptimizerConfig {
        match self.optimizer.as_str() {
            "sgd" => {
                let d = SgdConfig::default();
                OptimizerConfig::Sgd(SgdConfig {
                    lr: self.f("lr").unwrap_or(d.lr),
                    momentum: self.f("momentum").unwrap_or(d.momentum),
                    dampening: self.f("dampening").unwrap_or(d.dampening),
                    weight_decay: self.f("weight_decay").unwrap_or(d.weight_decay),
                    nesterov: self.b("nesterov"),
                    maximize: self.b("maximize"),
                })
            }
            "adam" | "adamw" => {
                let d = if self.optimizer == "adamw" {
                    AdamConfig::adamw()
                } else {
                    AdamConfig::default()
                };
                let betas = self.hyper.get("betas").and_then(|b| b.as_array());
                let beta = |i: usize, dflt: f64| {
                    betas
                        .and_then(|b| b.get(i))
                        .and_then(|x| x.as_f64())
                        .unwrap_or(dflt)
                };
                OptimizerConfig::Adam(AdamConfig {
                    lr: self.f("lr").unwrap_or(d.lr),
                    beta1: beta(0, d.beta1),
                    beta2: beta(1, d.beta2),
                    eps: self.f("eps").unwrap_or(d.eps),
                    weight_decay: self.f("weight_decay").unwrap_or(d.weight_decay),
                    amsgrad: self.b("amsgrad"),
                    maximize: self.b("maximize"),
                    decoupled_weight_decay: d.decoupled_weight_decay,
                })
            }
            "rmsprop" => {
                let d = RmspropConfig::default();
                OptimizerConfig::Rmsprop(RmspropConfig {
                    lr: self.f("lr").unwrap_or(d.lr),
                    alpha: self.f("alpha").unwrap_or(d.alpha),
                    eps: self.f("eps").unwrap_or(d.eps),
                    weight_decay: self.f("weight_decay").unwrap_or(d.weight_decay),
                    momentum: self.f("momentum").unwrap_or(d.momentum),
                    centered: self.b("centered"),
                    maximize: self.b("maximize"),
                })
            }
            "adagrad" => {
                let d = AdagradConfig::default();
                OptimizerConfig::Adagrad(AdagradConfig {
                    lr: self.f("lr").unwrap_or(d.lr),
                    lr_decay: self.f("lr_decay").unwrap_or(d.lr_decay),
                    weight_decay: self.f("weight_decay").unwrap_or(d.weight_decay),
                    initial_accumulator_value: self
                        .f("initial_accumulator_value")
                        .unwrap_or(d.initial_accumulator_value),
                    eps: self.f("eps").unwrap_or(d.eps),
                    maximize: self.b("maximize"),
                })
            }
            other => panic!("unknown optimizer {other} in fixtures"),
        }
    }

    pub fn specs(&self) -> Vec<wgpu_optim::TensorSpec> {
        self.lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| wgpu_optim::TensorSpec::new(format!("t{i}"), n))
            .collect()
    }

    /// Gradients of step k (frozen tensors get zeros; they are not read).
    pub fn grads_at(&self, k: usize) -> Vec<Vec<f32>> {
        self.grads[k].iter().map(|g| f32s(g)).collect()
    }
}

pub mod more_cases;
pub mod naga_sizes;

/// The same f32 bits, element for element.
pub fn bits_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Whether the adapter is lavapipe (a CPU adapter): its compiler neither fuses `a * b + c` nor
/// reorders, so the kernels equal their CPU twins bit for bit there. Other compilers may fuse
/// (SPIR-V from naga carries no NoContraction).
pub fn exact_adapter(ctx: &GpuContext) -> bool {
    ctx.adapter_info().device_type == wgpu::DeviceType::Cpu
}

/// GPU against the CPU twin: bit for bit on lavapipe, at the fp32 tolerance elsewhere.
pub fn assert_twin(ctx: &GpuContext, what: &str, gpu: &[f32], cpu: &[f32]) {
    if exact_adapter(ctx) {
        assert!(bits_eq(gpu, cpu), "{what}: not bit-identical");
    } else {
        assert_close(what, gpu, cpu, ATOL, RTOL);
    }
}
