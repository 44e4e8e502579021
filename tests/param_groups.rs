//! PyTorch / timm golden cases with several parameter groups and a mid-run lr change
//! (`tests/fixtures/torch_param_groups_cases.json`, see tests/fixtures/README.md), through both
//! the CPU reference and the GPU kernels.
//!
//! Each case splits its tensors into 2–3 groups whose hyperparameters all differ, freezes tensors
//! on random steps, and rewrites every group's lr after 3 of its 7 steps. We compare params,
//! every state buffer PyTorch keeps (and check that we keep exactly those), and the step counts,
//! at PyTorch's fp32 tolerance. Every case runs; the test fails at the end with the list of the
//! cases that did not match.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::common::{assert_close, f32s, gpu, ATOL, RTOL};
use serde_json::{Map, Value};
use wgpu_optim::ParamGroupTable;
use wgpu_optim::Scheduled;
use wgpu_optim::{
    AdagradConfig, AdamConfig, CpuOptimizer, GpuContext, LambConfig, LarsConfig, Optimizer,
    OptimizerConfig, ParamArena, ParamGroups, RmspropConfig, Select, SgdConfig, TensorSpec,
};

/// Cases in the fixture file (3 per optimizer); fewer means a truncated file.
const CASES: usize = 21;
const OPTIMIZERS: [&str; 7] = ["sgd", "adam", "adamw", "rmsprop", "adagrad", "lars", "lamb"];

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixtures {
    #[allow(dead_code)]
    generator: String,
    cases: Vec<Case>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    optimizer: String,
    /// The constructor's keyword arguments (equal to `groups[0].hyper`, plus Lamb's
    /// constructor-only settings).
    hyper: Map<String, Value>,
    lengths: Vec<usize>,
    steps: usize,
    groups: Vec<Group>,
    lr_changes: Vec<LrChange>,
    frozen: Vec<Vec<bool>>,
    init: Vec<Vec<f64>>,
    /// `null` is no gradient (only where frozen).
    grads: Vec<Vec<Option<Vec<f64>>>>,
    expected: Expected,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    tensors: Vec<usize>,
    hyper: Map<String, Value>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LrChange {
    before_step: usize,
    group: usize,
    lr: f64,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    params: Vec<Vec<f64>>,
    /// `"i.KEY"` -> tensor i's state buffer KEY.
    state: BTreeMap<String, Vec<f64>>,
    /// `"i"` -> tensor i's step count (empty for SGD and Lars).
    #[serde(default)]
    step: BTreeMap<String, f64>,
    /// Lamb only: timm's per-group step counts.
    #[serde(default)]
    group_step: Option<Vec<f64>>,
}

/// Every case of the fixture file (panics unless there are exactly [`CASES`]).
fn cases() -> Vec<Case> {
    let text = include_str!("fixtures/torch_param_groups_cases.json");
    let cases = serde_json::from_str::<Fixtures>(text)
        .expect("torch_param_groups_cases.json parses")
        .cases;
    assert_eq!(cases.len(), CASES, "number of cases in the fixture file");
    cases
}

/// Reads a hyperparameter map, remembering which keys were used.
struct Hyper<'a> {
    optimizer: &'a str,
    map: &'a Map<String, Value>,
    used: BTreeSet<&'static str>,
}

impl Hyper<'_> {
    fn get(&mut self, key: &'static str) -> &Value {
        self.used.insert(key);
        self.map
            .get(key)
            .unwrap_or_else(|| panic!("{}: hyperparameter {key} missing", self.optimizer))
    }

    fn f(&mut self, key: &'static str) -> f64 {
        let what = self.optimizer;
        let v = self.get(key);
        v.as_f64()
            .unwrap_or_else(|| panic!("{what}: {key} = {v} is not a number"))
    }

    fn b(&mut self, key: &'static str) -> bool {
        let what = self.optimizer;
        let v = self.get(key);
        v.as_bool()
            .unwrap_or_else(|| panic!("{what}: {key} = {v} is not a bool"))
    }

    fn betas(&mut self) -> (f64, f64) {
        let what = self.optimizer;
        let v = self.get("betas");
        match v.as_array().map(|a| a.as_slice()) {
            Some([b1, b2]) => (
                b1.as_f64().expect("betas[0] is a number"),
                b2.as_f64().expect("betas[1] is a number"),
            ),
            _ => panic!("{what}: betas = {v} is not a pair"),
        }
    }

    /// A setting we implement one way only: if present, it must have that value.
    fn fixed(&mut self, key: &'static str, want: Value) {
        self.used.insert(key);
        if let Some(v) = self.map.get(key) {
            assert_eq!(
                v, &want,
                "{}: {key} = {v}, the library implements only {want}",
                self.optimizer
            );
        }
    }

    /// Panics on any key no field was read from.
    fn finish(&self) {
        let unknown: Vec<&String> = self
            .map
            .keys()
            .filter(|k| !self.used.contains(k.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "{}: unknown hyperparameters {unknown:?}",
            self.optimizer
        );
    }
}

/// The configuration for one group's hyperparameters (every field required; panics on a
/// missing or unknown key, so nothing is silently defaulted or ignored).
fn config_for(optimizer: &str, hyper: &Map<String, Value>) -> OptimizerConfig {
    let mut h = Hyper {
        optimizer,
        map: hyper,
        used: BTreeSet::new(),
    };
    let config: OptimizerConfig = match optimizer {
        "sgd" => SgdConfig {
            lr: h.f("lr"),
            momentum: h.f("momentum"),
            dampening: h.f("dampening"),
            weight_decay: h.f("weight_decay"),
            nesterov: h.b("nesterov"),
            maximize: h.b("maximize"),
        }
        .into(),
        "adam" | "adamw" => {
            let (beta1, beta2) = h.betas();
            AdamConfig {
                lr: h.f("lr"),
                beta1,
                beta2,
                eps: h.f("eps"),
                weight_decay: h.f("weight_decay"),
                amsgrad: h.b("amsgrad"),
                maximize: h.b("maximize"),
                decoupled_weight_decay: optimizer == "adamw",
            }
            .into()
        }
        "rmsprop" => RmspropConfig {
            lr: h.f("lr"),
            alpha: h.f("alpha"),
            eps: h.f("eps"),
            weight_decay: h.f("weight_decay"),
            momentum: h.f("momentum"),
            centered: h.b("centered"),
            maximize: h.b("maximize"),
        }
        .into(),
        "adagrad" => AdagradConfig {
            lr: h.f("lr"),
            lr_decay: h.f("lr_decay"),
            weight_decay: h.f("weight_decay"),
            eps: h.f("eps"),
            initial_accumulator_value: h.f("initial_accumulator_value"),
            maximize: h.b("maximize"),
        }
        .into(),
        "lars" => LarsConfig {
            lr: h.f("lr"),
            momentum: h.f("momentum"),
            dampening: h.f("dampening"),
            weight_decay: h.f("weight_decay"),
            nesterov: h.b("nesterov"),
            trust_coefficient: h.f("trust_coeff"),
            eps: h.f("eps"),
            trust_clip: h.b("trust_clip"),
            always_adapt: h.b("always_adapt"),
        }
        .into(),
        "lamb" => {
            // timm constructor-only settings (top-level `hyper` only).
            h.fixed("bias_correction", Value::Bool(true));
            h.fixed("grad_averaging", Value::Bool(true));
            h.fixed("max_grad_norm", Value::Null);
            h.fixed("caution", Value::Bool(false));
            h.fixed("decoupled_decay", Value::Bool(false));
            let (beta1, beta2) = h.betas();
            LambConfig {
                lr: h.f("lr"),
                beta1,
                beta2,
                eps: h.f("eps"),
                weight_decay: h.f("weight_decay"),
                trust_clip: h.b("trust_clip"),
                always_adapt: h.b("always_adapt"),
            }
            .into()
        }
        other => panic!("unknown optimizer {other}"),
    };
    h.finish();
    config
}

fn name(i: usize) -> String {
    format!("t{i}")
}

impl Case {
    fn specs(&self) -> Vec<TensorSpec> {
        (0..self.lengths.len())
            .map(|i| TensorSpec::new(name(i), self.lengths[i]))
            .collect()
    }

    fn param_groups(&self) -> ParamGroups {
        let mut groups = ParamGroups::new();
        for g in &self.groups {
            groups = groups.group(
                Select::names(g.tensors.iter().map(|&i| name(i))),
                config_for(&self.optimizer, &g.hyper),
            );
        }
        groups
    }

    fn init(&self) -> Vec<Vec<f32>> {
        self.init.iter().map(|v| f32s(v)).collect()
    }

    /// Gradients of step k (zeros for a `null` gradient, which only a frozen tensor has).
    fn grads_at(&self, k: usize) -> Vec<Vec<f32>> {
        self.grads[k]
            .iter()
            .enumerate()
            .map(|(i, g)| match g {
                Some(g) => f32s(g),
                None => {
                    assert!(self.frozen[k][i], "null gradient of live tensor {i} at {k}");
                    vec![0.0; self.lengths[i]]
                }
            })
            .collect()
    }

    /// Steps tensor i takes (its unfrozen steps).
    fn live_steps(&self, i: usize) -> u64 {
        self.frozen.iter().filter(|f| !f[i]).count() as u64
    }

    /// The state KEYs the fixture has for tensor i.
    fn state_keys(&self, i: usize) -> BTreeSet<&str> {
        self.expected
            .state
            .keys()
            .filter_map(|k| k.split_once('.'))
            .filter(|(t, _)| t.parse::<usize>().expect("state key `i.KEY`") == i)
            .map(|(_, key)| key)
            .collect()
    }

    fn label(&self, ci: usize, backend: &str) -> String {
        format!("case {ci} ({}, {backend})", self.optimizer)
    }

    /// Checks the shape of the case itself (not the library).
    fn check_well_formed(&self, ci: usize) {
        let what = format!("case {ci} ({})", self.optimizer);
        let n = self.lengths.len();
        assert!(OPTIMIZERS.contains(&self.optimizer.as_str()), "{what}");
        assert_eq!(self.frozen.len(), self.steps, "{what}: frozen");
        assert_eq!(self.grads.len(), self.steps, "{what}: grads");
        assert_eq!(self.init.len(), n, "{what}: init");
        assert_eq!(self.expected.params.len(), n, "{what}: expected params");
        for (i, v) in self.init.iter().enumerate() {
            assert_eq!(v.len(), self.lengths[i], "{what}: init {i}");
        }
        for k in 0..self.steps {
            assert_eq!(self.frozen[k].len(), n, "{what}: frozen[{k}]");
            assert_eq!(self.grads[k].len(), n, "{what}: grads[{k}]");
            for (i, g) in self.grads[k].iter().enumerate() {
                if let Some(g) = g {
                    assert_eq!(g.len(), self.lengths[i], "{what}: grads[{k}][{i}]");
                }
            }
        }
        // The groups cover every tensor exactly once.
        let mut covered: Vec<usize> = self.groups.iter().flat_map(|g| g.tensors.clone()).collect();
        covered.sort_unstable();
        assert_eq!(covered, (0..n).collect::<Vec<_>>(), "{what}: group cover");
        // The constructor's arguments are group 0's.
        assert_eq!(
            config_for(&self.optimizer, &self.hyper),
            config_for(&self.optimizer, &self.groups[0].hyper),
            "{what}: hyper vs groups[0].hyper"
        );
        for (key, want) in &self.groups[0].hyper {
            assert_eq!(self.hyper.get(key), Some(want), "{what}: hyper.{key}");
        }
        if self.optimizer == "lamb" {
            for key in [
                "bias_correction",
                "grad_averaging",
                "max_grad_norm",
                "caution",
                "decoupled_decay",
            ] {
                assert!(self.hyper.contains_key(key), "{what}: hyper.{key} missing");
            }
        }
        for c in &self.lr_changes {
            assert!(
                c.before_step < self.steps,
                "{what}: lr change never applied"
            );
            assert!(c.group < self.groups.len(), "{what}: lr change group");
        }
    }
}

/// What a backend ended with.
struct Outcome {
    params: Vec<Vec<f32>>,
    /// Per tensor: every state buffer the optimizer keeps for it.
    states: Vec<BTreeMap<&'static str, Vec<f32>>>,
    steps: Vec<u64>,
}

/// Reads the state and step counts through the methods both optimizers share.
macro_rules! outcome {
    ($opt:expr, $case:expr, $params:expr) => {{
        let opt = &$opt;
        let n = $case.lengths.len();
        let states = (0..n)
            .map(|i| {
                opt.tensor_state_names(&name(i))
                    .unwrap()
                    .into_iter()
                    .map(|s| (s, opt.read_state(s, &name(i)).unwrap()))
                    .collect()
            })
            .collect();
        let steps = (0..n).map(|i| opt.step_count(&name(i)).unwrap()).collect();
        Outcome {
            params: $params,
            states,
            steps,
        }
    }};
}

/// Freezes, applies the lr changes due before step k, in the same way for both optimizers.
macro_rules! prepare_step {
    ($opt:expr, $case:expr, $k:expr) => {{
        let k = $k;
        for (i, &frozen) in $case.frozen[k].iter().enumerate() {
            $opt.set_frozen(&name(i), frozen).unwrap();
        }
        for c in $case.lr_changes.iter().filter(|c| c.before_step == k) {
            $opt.set_group_lr(c.group, c.lr).unwrap();
        }
    }};
}

fn run_cpu(case: &Case) -> Outcome {
    let mut opt = CpuOptimizer::with_groups(&case.specs(), case.param_groups()).unwrap();
    let mut params = case.init();
    for k in 0..case.steps {
        prepare_step!(opt, case, k);
        opt.step(&mut params, &case.grads_at(k)).unwrap();
    }
    outcome!(opt, case, params)
}

fn run_gpu(ctx: &GpuContext, case: &Case) -> Outcome {
    let arena = ParamArena::new(ctx, &case.specs()).unwrap();
    arena.write_all_params(&case.init()).unwrap();
    let mut opt = Optimizer::with_groups(ctx, &arena, case.param_groups()).unwrap();
    for k in 0..case.steps {
        prepare_step!(opt, case, k);
        arena.write_all_grads(&case.grads_at(k)).unwrap();
        opt.step(&arena).unwrap();
    }
    let params = arena.read_all_params().unwrap();
    outcome!(opt, case, params)
}

/// Compares an outcome with PyTorch's (panics on the first mismatch).
fn check(case: &Case, got: &Outcome, what: &str) {
    for (i, want) in case.expected.params.iter().enumerate() {
        assert_close(
            &format!("{what}: param {i}"),
            &got.params[i],
            &f32s(want),
            ATOL,
            RTOL,
        );
    }
    // We keep exactly the state buffers PyTorch keeps (for tensors that ever stepped; PyTorch
    // has no state for one that never did).
    for i in 0..case.lengths.len() {
        let want = case.state_keys(i);
        if case.live_steps(i) == 0 {
            assert!(
                want.is_empty(),
                "{what}: tensor {i} never stepped: {want:?}"
            );
            continue;
        }
        let ours: BTreeSet<&str> = got.states[i].keys().copied().collect();
        assert_eq!(ours, want, "{what}: state names of tensor {i}");
    }
    for (key, want) in &case.expected.state {
        let (i, state) = key.split_once('.').unwrap();
        let i: usize = i.parse().unwrap();
        let ours = got.states[i]
            .get(state)
            .unwrap_or_else(|| panic!("{what}: no state {key}"));
        assert_close(
            &format!("{what}: state {key}"),
            ours,
            &f32s(want),
            ATOL,
            RTOL,
        );
    }
    for (i, &want) in &case.expected.step {
        let i: usize = i.parse().unwrap();
        assert_eq!(
            got.steps[i], want as u64,
            "{what}: step count of tensor {i}"
        );
    }
    // A frozen step leaves the count alone (PyTorch's semantics, also where torch keeps none).
    for (i, &steps) in got.steps.iter().enumerate() {
        assert_eq!(steps, case.live_steps(i), "{what}: steps of tensor {i}");
    }
    match (&case.expected.group_step, case.optimizer.as_str()) {
        (Some(group_step), "lamb") => {
            assert_eq!(group_step.len(), case.groups.len(), "{what}: group_step");
            assert!(
                case.frozen.iter().flatten().all(|&f| !f),
                "{what}: a lamb case freezes a tensor; per-tensor counts would differ from timm's"
            );
            for (g, group) in case.groups.iter().enumerate() {
                for &i in &group.tensors {
                    assert_eq!(
                        got.steps[i], group_step[g] as u64,
                        "{what}: tensor {i} vs group {g} step"
                    );
                    assert_eq!(
                        case.expected.step.get(&i.to_string()),
                        Some(&group_step[g]),
                        "{what}: fixture step of tensor {i} vs its group's"
                    );
                }
            }
        }
        (None, "lamb") => panic!("{what}: lamb case without group_step"),
        (Some(_), _) => panic!("{what}: group_step outside lamb"),
        (None, _) => {}
    }
}

/// Runs `f` on every case, then fails listing every case that panicked.
fn for_every_case(backend: &str, mut f: impl FnMut(usize, &Case)) {
    let mut failures = Vec::new();
    for (ci, case) in cases().iter().enumerate() {
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| f(ci, case))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{}: {msg}", case.label(ci, backend)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {CASES} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn fixture_has_21_well_formed_cases() {
    let cases = cases();
    for (ci, case) in cases.iter().enumerate() {
        case.check_well_formed(ci);
    }
    for opt in OPTIMIZERS {
        let n = cases.iter().filter(|c| c.optimizer == opt).count();
        assert_eq!(n, 3, "cases of {opt}");
    }
}

#[test]
#[should_panic(expected = "unknown hyperparameters")]
fn config_for_rejects_unknown_keys() {
    let mut hyper = cases()[0].groups[0].hyper.clone();
    hyper.insert("foreach".into(), Value::Bool(false));
    config_for(&cases()[0].optimizer, &hyper);
}

#[test]
#[should_panic(expected = "the library implements only")]
fn config_for_rejects_other_lamb_settings() {
    let case = cases().into_iter().find(|c| c.optimizer == "lamb").unwrap();
    let mut hyper = case.hyper.clone();
    hyper.insert("caution".into(), Value::Bool(true));
    config_for("lamb", &hyper);
}

#[test]
fn cpu_matches_pytorch_param_groups() {
    for_every_case("cpu", |ci, case| {
        check(case, &run_cpu(case), &case.label(ci, "cpu"))
    });
}

#[test]
fn gpu_matches_pytorch_param_groups() {
    let Some(ctx) = gpu() else { return };
    for_every_case("gpu", |ci, case| {
        check(case, &run_gpu(&ctx, case), &case.label(ci, "gpu"))
    });
}
