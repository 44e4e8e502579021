//! The golden cases of `tests/fixtures/torch_optim_more_cases.json` (format in
//! tests/fixtures/README.md): parsing, hyperparameter accessors, and the fixture runs through
//! the CPU reference and the GPU kernels. Each test file keeps its own mapping from `hyper` to
//! a config.
#![allow(dead_code)]

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use wgpu_optim::ParamGroupTable;
use wgpu_optim::{CpuOptimizer, GpuContext, Optimizer, OptimizerConfig, ParamArena, TensorSpec};

use super::f32s;

#[derive(Debug, serde::Deserialize)]
pub struct MoreCase {
    pub optimizer: String,
    pub hyper: Map<String, Value>,
    pub shapes: Vec<Vec<usize>>,
    pub lengths: Vec<usize>,
    pub steps: usize,
    pub frozen: Vec<Vec<bool>>,
    pub init: Vec<Vec<f64>>,
    /// `null` is no gradient (only where frozen).
    pub grads: Vec<Vec<Option<Vec<f64>>>>,
    pub expected: MoreExpected,
}

#[derive(Debug, serde::Deserialize)]
pub struct MoreExpected {
    pub params: Vec<Vec<f64>>,
    pub state: BTreeMap<String, Vec<f64>>,
    #[serde(default)]
    pub step: BTreeMap<String, f64>,
}

/// The fixture's cases of the named optimizers, in file order (the other optimizers' cases are
/// not parsed).
pub fn cases_of(optimizers: &[&str]) -> Vec<MoreCase> {
    let text = include_str!("../fixtures/torch_optim_more_cases.json");
    let all: Value = serde_json::from_str(text).expect("fixture JSON parses");
    all["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|c| optimizers.iter().any(|o| c["optimizer"] == *o))
        .map(|c| serde_json::from_value(c.clone()).expect("case parses"))
        .collect()
}

/// The fixture's three cases of `optimizer`.
pub fn three_cases(optimizer: &str) -> Vec<MoreCase> {
    let out = cases_of(&[optimizer]);
    assert_eq!(out.len(), 3, "{optimizer}: three cases");
    out
}

impl MoreCase {
    /// A number that must be present.
    pub fn f(&self, key: &str) -> f64 {
        self.hyper[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} is a number"))
    }
    /// A number, or `default` where the constructor call left it out.
    pub fn f_or(&self, key: &str, default: f64) -> f64 {
        match self.hyper.get(key) {
            Some(v) => v
                .as_f64()
                .unwrap_or_else(|| panic!("{key} = {v} is not a number")),
            None => default,
        }
    }
    /// A bool that must be present.
    pub fn b(&self, key: &str) -> bool {
        self.hyper[key]
            .as_bool()
            .unwrap_or_else(|| panic!("{key} is a bool"))
    }
    /// A bool, false where the constructor call left it out.
    pub fn b_or_false(&self, key: &str) -> bool {
        self.hyper.get(key).is_some_and(|v| v.as_bool().unwrap())
    }
    pub fn beta(&self, i: usize) -> f64 {
        self.hyper["betas"][i].as_f64().expect("betas")
    }
    /// A two-element array, or `default` where the constructor call left it out.
    pub fn pair(&self, key: &str, default: (f64, f64)) -> (f64, f64) {
        match self.hyper.get(key) {
            Some(Value::Array(a)) if a.len() == 2 => {
                (a[0].as_f64().unwrap(), a[1].as_f64().unwrap())
            }
            Some(v) => panic!("{key} = {v} is not a pair"),
            None => default,
        }
    }
    /// Every key of `hyper` must be one the config mapping understands.
    pub fn check_keys(&self, known: &[&str]) {
        for k in self.hyper.keys() {
            assert!(
                known.contains(&k.as_str()),
                "{} hyperparameter {k} not mapped",
                self.optimizer
            );
        }
    }

    /// `t0`, `t1`, … with the fixture's shapes (and lengths).
    pub fn specs(&self) -> Vec<TensorSpec> {
        self.shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let spec = TensorSpec::shaped(format!("t{i}"), s);
                assert_eq!(spec.len, self.lengths[i], "shape {s:?}");
                spec
            })
            .collect()
    }

    pub fn init(&self) -> Vec<Vec<f32>> {
        self.init.iter().map(|v| f32s(v)).collect()
    }

    /// Step k's gradients (zeros where PyTorch had none: those tensors must be frozen).
    pub fn grads_at(&self, k: usize) -> Vec<Vec<f32>> {
        self.grads[k]
            .iter()
            .zip(&self.lengths)
            .enumerate()
            .map(|(i, (g, &n))| match g {
                Some(g) => f32s(g),
                None => {
                    assert!(self.frozen[k][i], "step {k}: no gradient for live t{i}");
                    vec![0.0; n]
                }
            })
            .collect()
    }

    /// Steps tensor i took (the steps it was not frozen on).
    pub fn steps_of(&self, i: usize) -> u64 {
        (0..self.steps).filter(|&k| !self.frozen[k][i]).count() as u64
    }
}

/// What the CPU and GPU optimizers both answer (the same method names on both).
pub trait Probe {
    fn state(&self, key: &str, tensor: &str) -> wgpu_optim::Result<Vec<f32>>;
    fn steps(&self, tensor: &str) -> u64;
    fn names(&self, tensor: &str) -> Vec<&'static str>;
}

/// Both engines, through their one face.
impl<T: ParamGroupTable> Probe for T {
    fn state(&self, key: &str, tensor: &str) -> wgpu_optim::Result<Vec<f32>> {
        self.read_state(key, tensor)
    }
    fn steps(&self, tensor: &str) -> u64 {
        self.step_count(tensor).unwrap()
    }
    fn names(&self, tensor: &str) -> Vec<&'static str> {
        self.tensor_state_names(tensor).unwrap()
    }
}

/// The case's steps (freezing as it says) through the CPU reference with `cfg`.
pub fn run_cpu(case: &MoreCase, cfg: OptimizerConfig) -> (Vec<Vec<f32>>, CpuOptimizer) {
    let mut cpu = CpuOptimizer::new(cfg, &case.specs()).unwrap();
    let mut params = case.init();
    for k in 0..case.steps {
        for (i, &fz) in case.frozen[k].iter().enumerate() {
            cpu.set_frozen(&format!("t{i}"), fz).unwrap();
        }
        cpu.step(&mut params, &case.grads_at(k)).unwrap();
    }
    (params, cpu)
}

/// The case's steps through the GPU kernels with `cfg`: the final params and the optimizer.
pub fn run_gpu(
    ctx: &GpuContext,
    case: &MoreCase,
    cfg: OptimizerConfig,
) -> (Vec<Vec<f32>>, Optimizer) {
    let arena = ParamArena::new(ctx, &case.specs()).unwrap();
    let mut opt = Optimizer::new(ctx, &arena, cfg).unwrap();
    arena.write_all_params(&case.init()).unwrap();
    for k in 0..case.steps {
        for (i, &fz) in case.frozen[k].iter().enumerate() {
            opt.set_frozen(&format!("t{i}"), fz).unwrap();
        }
        arena.write_all_grads(&case.grads_at(k)).unwrap();
        opt.step(&arena).unwrap();
    }
    (arena.read_all_params().unwrap(), opt)
}
