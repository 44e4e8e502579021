//! Learning-rate schedules (src/schedule.rs).
//!
//! - Every configuration of `tests/fixtures/lr_schedules.json` (PyTorch 2.15, 37 configs):
//!   every step, every group, the lr and the cycled momentum / β1, at 1e-12 relative (values
//!   under 1e-16 in magnitude compare absolutely at 1e-16), driving a plain `HostGroups` record
//!   and a `CpuOptimizer` (SGD or Adam, as the fixture's optimizer), to the last step (negative
//!   lrs included, as PyTorch's). `tests/fixtures/regressions.json` too, on the GPU and the CPU
//!   optimizer stepped in lockstep.
//! - Every parameter PyTorch rejects, and every misuse, is its typed error, with nothing changed.
//! - `state()` / `load_state()` resume a schedule exactly where it was.
//! - On the GPU: schedules driving each optimizer family of `OptimizerConfig::presets()` for 20
//!   steps equal the CPU reference driven by the same schedule (params and every state buffer,
//!   PyTorch's fp32 tolerance as in tests/gpu_vs_cpu.rs; the lrs and momenta exactly).

use std::sync::Arc;

use crate::common::{assert_close, gpu, randn, with_lr_wd, ATOL, RTOL};
use serde_json::{Map, Value};
use wgpu_optim::schedule::{
    config_momentum, Anneal, CyclicConfig, CyclicMode, LrLambda, OneCycleConfig, PerGroup,
    PlateauConfig, PlateauMode, ThresholdMode,
};
use wgpu_optim::ParamGroupTable;
use wgpu_optim::{
    AdagradConfig, AdamConfig, ChainedScheduler, ConstantLR, CosineAnnealingLR,
    CosineAnnealingWarmRestarts, CpuOptimizer, CyclicLR, Error, ExponentialLR, HostGroups,
    LambdaLR, LinearLR, LrSchedule, MultiStepLR, MultiplicativeLR, OneCycleLR, Optimizer,
    OptimizerConfig, ParamArena, ParamGroups, PolynomialLR, ReduceLROnPlateau, Scheduled, Select,
    SequentialLR, SgdConfig, StepLR, TensorSpec,
};

// ---------------------------------------------------------------------------------------------
// The fixture.

#[derive(Debug, serde::Deserialize)]
struct Fixture {
    configs: Vec<Config>,
}

#[derive(Debug, serde::Deserialize)]
struct Sub {
    scheduler: String,
    kwargs: Map<String, Value>,
}

#[derive(Debug, serde::Deserialize)]
struct Config {
    scheduler: String,
    kwargs: Map<String, Value>,
    #[serde(default)]
    schedulers: Vec<Sub>,
    optimizer: String,
    opt_momentum: Option<f64>,
    base_lrs: Vec<f64>,
    steps: usize,
    #[serde(default)]
    metrics: Vec<f64>,
    lr: Vec<Vec<f64>>,
    momentum: Option<Vec<Vec<f64>>>,
    beta1: Option<Vec<Vec<f64>>>,
}

/// `tests/fixtures/regressions.json`'s schedules (torch 2.15): decays that end on their own
/// rounding (one slightly negative), a ChainedScheduler through such a decay, a three-phase
/// linear OneCycleLR whose last lr is negative, and a OneCycleLR cycling `momentum` over an SGD
/// built with momentum 0.
fn regression_configs() -> Vec<Config> {
    let text = include_str!("fixtures/regressions.json");
    let f: Fixture = serde_json::from_str(text).expect("regressions.json parses");
    f.configs
}

fn configs() -> Vec<Config> {
    let text = include_str!("fixtures/lr_schedules.json");
    serde_json::from_str::<Fixture>(text)
        .expect("fixture JSON parses")
        .configs
}

/// The fixture's λ formulas (README: Python syntax in `e`).
fn lambda(formula: &str) -> LrLambda {
    match formula {
        "0.95**e" => Arc::new(|e| 0.95f64.powf(e as f64)),
        "min(1,(e+1)/10)" => Arc::new(|e| {
            let x = (e as f64 + 1.0) / 10.0;
            // Python's min(1, x) is 1 unless x < 1.
            if x < 1.0 {
                x
            } else {
                1.0
            }
        }),
        "1/(1+e)" => Arc::new(|e| 1.0 / (1.0 + e as f64)),
        "0.9 if e%3==0 else 1.0" => Arc::new(|e| if e % 3 == 0 { 0.9 } else { 1.0 }),
        f => panic!("unknown lr_lambda {f:?}"),
    }
}

/// Reads kwargs, failing the test on any key the builder does not use.
struct Kw<'a> {
    map: &'a Map<String, Value>,
    used: Vec<&'static str>,
}

impl<'a> Kw<'a> {
    fn new(map: &'a Map<String, Value>) -> Self {
        Self {
            map,
            used: Vec::new(),
        }
    }
    fn get(&mut self, k: &'static str) -> Option<&'a Value> {
        self.used.push(k);
        self.map.get(k)
    }
    fn f(&mut self, k: &'static str, default: f64) -> f64 {
        self.get(k)
            .map_or(default, |v| v.as_f64().expect("a number"))
    }
    fn u(&mut self, k: &'static str, default: u64) -> u64 {
        self.get(k)
            .map_or(default, |v| v.as_u64().expect("an integer"))
    }
    fn opt_u(&mut self, k: &'static str) -> Option<u64> {
        self.get(k).map(|v| v.as_u64().expect("an integer"))
    }
    fn b(&mut self, k: &'static str, default: bool) -> bool {
        self.get(k)
            .map_or(default, |v| v.as_bool().expect("a bool"))
    }
    fn s(&mut self, k: &'static str, default: &'a str) -> &'a str {
        self.get(k)
            .map_or(default, |v| v.as_str().expect("a string"))
    }
    /// A required list of epochs (`milestones`).
    fn epochs(&mut self, k: &'static str) -> Vec<u64> {
        self.get(k)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    }
    fn per_group(&mut self, k: &'static str, default: f64) -> PerGroup {
        match self.get(k) {
            None => PerGroup::All(default),
            Some(Value::Array(a)) => {
                PerGroup::Each(a.iter().map(|x| x.as_f64().unwrap()).collect())
            }
            Some(v) => PerGroup::All(v.as_f64().unwrap()),
        }
    }
    fn done(self) {
        for k in self.map.keys() {
            assert!(
                self.used.contains(&k.as_str()),
                "kwarg {k} is not handled by the test's builder"
            );
        }
    }
}

/// The PyTorch constructor call as our schedule (not ReduceLROnPlateau).
fn build(
    opt: &mut dyn Scheduled,
    name: &str,
    kwargs: &Map<String, Value>,
    subs: &[Sub],
) -> wgpu_optim::Result<Box<dyn LrSchedule>> {
    let mut kw = Kw::new(kwargs);
    let s: Box<dyn LrSchedule> = match name {
        "StepLR" => Box::new(StepLR::new(opt, kw.u("step_size", 0), kw.f("gamma", 0.1))?),
        "MultiStepLR" => {
            let m = kw.epochs("milestones");
            Box::new(MultiStepLR::new(opt, &m, kw.f("gamma", 0.1))?)
        }
        "ExponentialLR" => Box::new(ExponentialLR::new(opt, kw.f("gamma", f64::NAN))?),
        "LinearLR" => Box::new(LinearLR::new(
            opt,
            kw.f("start_factor", 1.0 / 3.0),
            kw.f("end_factor", 1.0),
            kw.u("total_iters", 5),
        )?),
        "ConstantLR" => Box::new(ConstantLR::new(
            opt,
            kw.f("factor", 1.0 / 3.0),
            kw.u("total_iters", 5),
        )?),
        "PolynomialLR" => Box::new(PolynomialLR::new(
            opt,
            kw.u("total_iters", 5),
            kw.f("power", 1.0),
        )?),
        "CosineAnnealingLR" => Box::new(CosineAnnealingLR::new(
            opt,
            kw.u("T_max", 0),
            kw.f("eta_min", 0.0),
        )?),
        "CosineAnnealingWarmRestarts" => Box::new(CosineAnnealingWarmRestarts::new(
            opt,
            kw.u("T_0", 0),
            kw.u("T_mult", 1),
            kw.f("eta_min", 0.0),
        )?),
        "LambdaLR" => Box::new(LambdaLR::per_group(
            opt,
            vec![lambda(kw.s("lr_lambda", ""))],
        )?),
        "MultiplicativeLR" => Box::new(MultiplicativeLR::per_group(
            opt,
            vec![lambda(kw.s("lr_lambda", ""))],
        )?),
        "CyclicLR" => {
            let mode = match kw.s("mode", "triangular") {
                "triangular" => CyclicMode::Triangular,
                "triangular2" => CyclicMode::Triangular2,
                "exp_range" => CyclicMode::ExpRange {
                    gamma: kw.f("gamma", 1.0),
                },
                m => panic!("mode {m}"),
            };
            let c = CyclicConfig {
                base_lr: kw.per_group("base_lr", f64::NAN),
                max_lr: kw.per_group("max_lr", f64::NAN),
                step_size_up: kw.u("step_size_up", 2000),
                step_size_down: kw.opt_u("step_size_down"),
                mode,
                cycle_momentum: kw.b("cycle_momentum", true),
                base_momentum: kw.per_group("base_momentum", 0.8),
                max_momentum: kw.per_group("max_momentum", 0.9),
            };
            Box::new(CyclicLR::new(opt, c)?)
        }
        "OneCycleLR" => {
            let c = OneCycleConfig {
                max_lr: kw.per_group("max_lr", f64::NAN),
                total_steps: kw.opt_u("total_steps"),
                epochs: kw.opt_u("epochs"),
                steps_per_epoch: kw.opt_u("steps_per_epoch"),
                pct_start: kw.f("pct_start", 0.3),
                anneal_strategy: match kw.s("anneal_strategy", "cos") {
                    "cos" => Anneal::Cos,
                    "linear" => Anneal::Linear,
                    a => panic!("anneal_strategy {a}"),
                },
                cycle_momentum: kw.b("cycle_momentum", true),
                base_momentum: kw.per_group("base_momentum", 0.85),
                max_momentum: kw.per_group("max_momentum", 0.95),
                div_factor: kw.f("div_factor", 25.0),
                final_div_factor: kw.f("final_div_factor", 1e4),
                three_phase: kw.b("three_phase", false),
            };
            Box::new(OneCycleLR::new(opt, c)?)
        }
        "SequentialLR" | "ChainedScheduler" => {
            let mut children = Vec::new();
            for s in subs {
                children.push(build(opt, &s.scheduler, &s.kwargs, &[])?);
            }
            if name == "SequentialLR" {
                let m = kw.epochs("milestones");
                Box::new(SequentialLR::new(opt, children, &m)?)
            } else {
                Box::new(ChainedScheduler::new(opt, children)?)
            }
        }
        n => panic!("unknown scheduler {n}"),
    };
    kw.done();
    Ok(s)
}

fn plateau_config(kwargs: &Map<String, Value>) -> PlateauConfig {
    let mut kw = Kw::new(kwargs);
    let c = PlateauConfig {
        mode: match kw.s("mode", "min") {
            "min" => PlateauMode::Min,
            "max" => PlateauMode::Max,
            m => panic!("mode {m}"),
        },
        factor: kw.f("factor", 0.1),
        patience: kw.u("patience", 10),
        threshold: kw.f("threshold", 1e-4),
        threshold_mode: match kw.s("threshold_mode", "rel") {
            "rel" => ThresholdMode::Rel,
            "abs" => ThresholdMode::Abs,
            m => panic!("threshold_mode {m}"),
        },
        cooldown: kw.u("cooldown", 0),
        min_lr: kw.per_group("min_lr", 0.0),
        eps: kw.f("eps", 1e-8),
    };
    kw.done();
    c
}

/// `|got - want| <= 1e-12·|want|`, or `<= 1e-16` for values under 1e-16 in magnitude.
fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-12 * want.abs().max(1e-4)
}

/// The fixture optimizer as a CpuOptimizer: one group per base lr, SGD (with the fixture's
/// momentum, PyTorch's default 0 otherwise) or Adam (PyTorch's defaults, β1 = 0.9).
fn cpu_optimizer(c: &Config) -> CpuOptimizer {
    let specs: Vec<TensorSpec> = (0..c.base_lrs.len())
        .map(|g| TensorSpec::new(format!("t{g}"), 3).in_group(g))
        .collect();
    let mut groups = ParamGroups::new();
    for (g, &lr) in c.base_lrs.iter().enumerate() {
        let cfg: OptimizerConfig = match c.optimizer.as_str() {
            "sgd" => SgdConfig {
                lr,
                momentum: c.opt_momentum.unwrap_or(0.0),
                ..Default::default()
            }
            .into(),
            "adam" => AdamConfig {
                lr,
                ..Default::default()
            }
            .into(),
            o => panic!("optimizer {o}"),
        };
        groups = groups.group(Select::ArenaGroup(g), cfg);
    }
    CpuOptimizer::with_groups(&specs, groups).unwrap()
}

fn host_groups(c: &Config) -> HostGroups {
    let m = match c.optimizer.as_str() {
        "adam" => 0.9,
        _ => c.opt_momentum.unwrap_or(0.0),
    };
    HostGroups::new(&c.base_lrs).with_momentum(m)
}

/// Checks `opt`'s lrs and momenta after `k` calls against the fixture; returns the largest
/// relative difference.
fn check_at(c: &Config, i: usize, k: usize, opt: &dyn Scheduled, last_lr: &[f64]) -> f64 {
    let mut worst = 0.0f64;
    let cycled = c.momentum.as_ref().or(c.beta1.as_ref());
    for g in 0..c.base_lrs.len() {
        let want = c.lr[k][g];
        let got = opt.group_lr(g).unwrap();
        assert!(
            close(got, want),
            "config {i} {} step {k} group {g}: lr {got:e}, PyTorch {want:e}",
            c.scheduler
        );
        assert_eq!(last_lr[g].to_bits(), got.to_bits(), "config {i} last_lr");
        worst = worst.max((got - want).abs() / want.abs().max(1e-300));
        if let Some(m) = cycled {
            let want = m[k][g];
            let got = opt.group_momentum(g).unwrap().unwrap();
            assert!(
                close(got, want),
                "config {i} {} step {k} group {g}: momentum {got:e}, PyTorch {want:e}",
                c.scheduler
            );
        }
    }
    worst
}

/// Runs config `i` on `opt` to its last step (an optimizer takes every finite lr the schedule
/// sets, negative ones included, as PyTorch's groups do). Returns the largest relative
/// difference. `between` runs after each schedule step (an optimizer step, for the GPU trials).
fn run_config(
    c: &Config,
    i: usize,
    opt: &mut dyn Scheduled,
    between: &mut dyn FnMut(&mut dyn Scheduled),
) -> f64 {
    let mut worst = 0.0f64;
    if c.scheduler == "ReduceLROnPlateau" {
        let mut s = ReduceLROnPlateau::new(opt, plateau_config(&c.kwargs)).unwrap();
        assert_eq!(s.last_epoch(), 0);
        worst = worst.max(check_at(c, i, 0, opt, s.last_lr()));
        assert_eq!(c.metrics.len(), c.steps);
        for k in 1..=c.steps {
            between(opt);
            s.step(opt, c.metrics[k - 1]).unwrap();
            assert_eq!(s.last_epoch(), k as i64);
            worst = worst.max(check_at(c, i, k, opt, s.last_lr()));
        }
        return worst;
    }
    let mut s = build(opt, &c.scheduler, &c.kwargs, &c.schedulers).unwrap();
    assert_eq!(s.last_epoch(), 0, "config {i}");
    worst = worst.max(check_at(c, i, 0, opt, s.last_lr()));
    for k in 1..=c.steps {
        between(opt);
        s.step(opt)
            .unwrap_or_else(|e| panic!("config {i} {} step {k}: {e}", c.scheduler));
        assert_eq!(s.last_epoch(), k as i64, "config {i}");
        worst = worst.max(check_at(c, i, k, opt, s.last_lr()));
    }
    worst
}

#[test]
fn every_fixture_config_matches_pytorch() {
    let configs = configs();
    assert_eq!(configs.len(), 37);
    let mut worst = 0.0f64;
    let mut negative = 0;
    for (i, c) in configs.iter().enumerate() {
        assert_eq!(c.lr.len(), c.steps + 1, "config {i}");
        let mut host = host_groups(c);
        worst = worst.max(run_config(c, i, &mut host, &mut |_| {}));
        let mut cpu = cpu_optimizer(c);
        worst = worst.max(run_config(c, i, &mut cpu, &mut |_| {}));
        if c.lr.iter().flatten().any(|&x| x < 0.0) {
            negative += 1;
        }
        // The optimizer's base lrs survive momentum cycling.
        for (g, &b) in c.base_lrs.iter().enumerate() {
            assert_eq!(cpu.base_lr(g).unwrap(), b, "config {i}");
        }
    }
    // OneCycleLR's linear anneal reaches a negative lr at e = total_steps in some configs, and
    // the optimizers follow it there.
    assert!(negative >= 1);
    eprintln!("largest relative difference from PyTorch: {worst:e}");
}

#[test]
fn the_fixture_covers_every_schedule() {
    let configs = configs();
    for name in [
        "StepLR",
        "MultiStepLR",
        "ExponentialLR",
        "LinearLR",
        "ConstantLR",
        "PolynomialLR",
        "CosineAnnealingLR",
        "CosineAnnealingWarmRestarts",
        "LambdaLR",
        "MultiplicativeLR",
        "CyclicLR",
        "OneCycleLR",
        "SequentialLR",
        "ChainedScheduler",
        "ReduceLROnPlateau",
    ] {
        assert!(configs.iter().any(|c| c.scheduler == name), "{name}");
    }
    // Momentum (SGD) and β1 (Adam) cycling are both checked.
    assert!(configs.iter().any(|c| c.momentum.is_some()));
    assert!(configs.iter().any(|c| c.beta1.is_some()));
}

// ---------------------------------------------------------------------------------------------
// Typed errors.

fn sgd2() -> CpuOptimizer {
    let specs = [TensorSpec::new("a", 4), TensorSpec::new("b", 2).in_group(1)];
    CpuOptimizer::new(
        SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            ..Default::default()
        },
        &specs,
    )
    .unwrap()
}

fn lrs(opt: &dyn Scheduled) -> Vec<(f64, Option<f64>)> {
    (0..opt.groups())
        .map(|g| (opt.group_lr(g).unwrap(), opt.group_momentum(g).unwrap()))
        .collect()
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(r: wgpu_optim::Result<T>, schedule: &str, what: &str) {
    match r {
        Err(Error::InvalidSchedule {
            schedule: s,
            reason,
        }) => {
            assert_eq!(s, schedule, "{reason}");
            assert!(
                reason.contains(what),
                "{schedule}: {reason:?} should mention {what:?}"
            );
        }
        other => panic!("{schedule} ({what}): expected InvalidSchedule, got {other:?}"),
    }
}

/// `build(opt)` must fail with InvalidSchedule naming `schedule` and mentioning `what`, and
/// leave every lr and momentum of a fresh optimizer as it was.
#[track_caller]
fn rejects<T: std::fmt::Debug>(
    schedule: &str,
    what: &str,
    build: impl FnOnce(&mut CpuOptimizer) -> wgpu_optim::Result<T>,
) {
    let mut opt = sgd2();
    let before = lrs(&opt);
    assert_invalid(build(&mut opt), schedule, what);
    assert_eq!(lrs(&opt), before, "{schedule}: changed on error");
}

#[test]
fn invalid_parameters_are_typed_errors() {
    rejects("StepLR", "step_size", |o| StepLR::new(o, 0, 0.1));
    rejects("StepLR", "gamma", |o| StepLR::new(o, 3, f64::NAN));
    rejects("ConstantLR", "factor", |o| ConstantLR::new(o, 1.5, 5));
    rejects("ConstantLR", "factor", |o| ConstantLR::new(o, -0.1, 5));
    rejects("LinearLR", "start_factor", |o| {
        LinearLR::new(o, 0.0, 1.0, 5)
    });
    rejects("LinearLR", "start_factor", |o| {
        LinearLR::new(o, 1.2, 1.0, 5)
    });
    rejects("LinearLR", "end_factor", |o| LinearLR::new(o, 0.5, 1.1, 5));
    rejects("LinearLR", "end_factor", |o| LinearLR::new(o, 0.5, -0.1, 5));
    rejects("ExponentialLR", "gamma", |o| {
        ExponentialLR::new(o, f64::INFINITY)
    });
    rejects("MultiStepLR", "gamma", |o| {
        MultiStepLR::new(o, &[2], f64::NAN)
    });
    rejects("PolynomialLR", "power", |o| {
        PolynomialLR::new(o, 5, f64::NAN)
    });
    rejects("CosineAnnealingLR", "T_max", |o| {
        CosineAnnealingLR::new(o, 0, 0.0)
    });
    rejects("CosineAnnealingLR", "eta_min", |o| {
        CosineAnnealingLR::new(o, 5, f64::NAN)
    });
    rejects("CosineAnnealingWarmRestarts", "T_0", |o| {
        CosineAnnealingWarmRestarts::new(o, 0, 1, 0.0)
    });
    rejects("CosineAnnealingWarmRestarts", "T_mult", |o| {
        CosineAnnealingWarmRestarts::new(o, 5, 0, 0.0)
    });
    let three =
        || -> Vec<LrLambda> { vec![Arc::new(|_| 1.0), Arc::new(|_| 1.0), Arc::new(|_| 1.0)] };
    rejects("LambdaLR", "lr_lambdas", |o| {
        LambdaLR::per_group(o, three())
    });
    rejects("LambdaLR", "lr_lambdas", |o| LambdaLR::per_group(o, vec![]));
    rejects("MultiplicativeLR", "lr_lambdas", |o| {
        MultiplicativeLR::per_group(o, three())
    });

    let cyc = || CyclicConfig {
        base_lr: 0.01.into(),
        max_lr: 0.1.into(),
        step_size_up: 4,
        ..Default::default()
    };
    for (what, c) in [
        (
            "base_lr",
            CyclicConfig {
                base_lr: vec![0.01, 0.02, 0.03].into(),
                ..cyc()
            },
        ),
        (
            "max_lr",
            CyclicConfig {
                max_lr: vec![0.1].into(),
                ..cyc()
            },
        ),
        (
            "max_momentum",
            CyclicConfig {
                max_momentum: vec![0.9; 3].into(),
                ..cyc()
            },
        ),
        (
            "step_size_up",
            CyclicConfig {
                step_size_up: 0,
                ..cyc()
            },
        ),
        (
            "gamma",
            CyclicConfig {
                mode: CyclicMode::ExpRange { gamma: f64::NAN },
                ..cyc()
            },
        ),
    ] {
        rejects("CyclicLR", what, |o| CyclicLR::new(o, c));
    }

    let one = || OneCycleConfig {
        max_lr: 0.1.into(),
        total_steps: Some(20),
        ..Default::default()
    };
    for (what, c) in [
        (
            "total_steps",
            OneCycleConfig {
                total_steps: Some(0),
                ..one()
            },
        ),
        (
            "either total_steps",
            OneCycleConfig {
                total_steps: None,
                epochs: Some(3),
                ..one()
            },
        ),
        (
            "epochs",
            OneCycleConfig {
                total_steps: None,
                epochs: Some(0),
                steps_per_epoch: Some(3),
                ..one()
            },
        ),
        (
            "steps_per_epoch",
            OneCycleConfig {
                total_steps: None,
                epochs: Some(2),
                steps_per_epoch: Some(0),
                ..one()
            },
        ),
        (
            "pct_start",
            OneCycleConfig {
                pct_start: 1.1,
                ..one()
            },
        ),
        (
            "pct_start",
            OneCycleConfig {
                pct_start: -0.1,
                ..one()
            },
        ),
        (
            "max_lr",
            OneCycleConfig {
                max_lr: vec![0.1; 3].into(),
                ..one()
            },
        ),
        (
            "base_momentum",
            OneCycleConfig {
                base_momentum: vec![0.8].into(),
                ..one()
            },
        ),
        (
            "div_factor",
            OneCycleConfig {
                div_factor: 0.0,
                ..one()
            },
        ),
        (
            "final_div_factor",
            OneCycleConfig {
                final_div_factor: 0.0,
                ..one()
            },
        ),
        // pct_start · total_steps = 1: the first phase has no steps (PyTorch divides by zero).
        (
            "phase 0",
            OneCycleConfig {
                pct_start: 0.05,
                ..one()
            },
        ),
    ] {
        rejects("OneCycleLR", what, |o| OneCycleLR::new(o, c));
    }

    rejects("ReduceLROnPlateau", "factor", |o| {
        ReduceLROnPlateau::new(
            o,
            PlateauConfig {
                factor: 1.0,
                ..Default::default()
            },
        )
    });
    rejects("ReduceLROnPlateau", "factor", |o| {
        ReduceLROnPlateau::new(
            o,
            PlateauConfig {
                factor: f64::NAN,
                ..Default::default()
            },
        )
    });
    rejects("ReduceLROnPlateau", "min_lr", |o| {
        ReduceLROnPlateau::new(
            o,
            PlateauConfig {
                min_lr: vec![0.0].into(),
                ..Default::default()
            },
        )
    });
    // A negative factor passes, as in PyTorch.
    ReduceLROnPlateau::new(
        &mut sgd2(),
        PlateauConfig {
            factor: -0.5,
            ..Default::default()
        },
    )
    .unwrap();
}

#[test]
fn cycling_momentum_needs_momentum() {
    // Adagrad has neither momentum nor betas: PyTorch's ValueError.
    let specs = [TensorSpec::new("a", 4)];
    let mut ada = CpuOptimizer::new(AdagradConfig::default(), &specs).unwrap();
    let before = lrs(&ada);
    let c = CyclicConfig {
        base_lr: 0.01.into(),
        max_lr: 0.1.into(),
        step_size_up: 3,
        ..Default::default()
    };
    assert_invalid(
        CyclicLR::new(&mut ada, c.clone()),
        "CyclicLR",
        "cycle_momentum",
    );
    let o = OneCycleConfig {
        total_steps: Some(10),
        ..Default::default()
    };
    assert_invalid(
        OneCycleLR::new(&mut ada, o.clone()),
        "OneCycleLR",
        "cycle_momentum",
    );
    assert_eq!(lrs(&ada), before);
    // Without momentum cycling both work on it.
    CyclicLR::new(
        &mut ada,
        CyclicConfig {
            cycle_momentum: false,
            ..c.clone()
        },
    )
    .unwrap();
    OneCycleLR::new(
        &mut ada,
        OneCycleConfig {
            cycle_momentum: false,
            ..o
        },
    )
    .unwrap();
    assert_eq!(config_momentum(ada.group_config(0).unwrap()), None);

    // SGD built without momentum has a momentum of 0, which a cycling schedule drives: the
    // group's momentum buffer is allocated then (PyTorch creates it lazily).
    let mut sgd = CpuOptimizer::new(
        SgdConfig {
            lr: 0.1,
            ..Default::default()
        },
        &specs,
    )
    .unwrap();
    assert!(sgd.tensor_state_names("a").unwrap().is_empty());
    CyclicLR::new(&mut sgd, c).unwrap();
    assert_eq!(
        sgd.tensor_state_names("a").unwrap(),
        vec!["momentum_buffer"]
    );
    // HostGroups without momentum: the cycle check.
    let mut host = HostGroups::new(&[0.1]);
    assert_invalid(
        OneCycleLR::new(
            &mut host,
            OneCycleConfig {
                total_steps: Some(10),
                ..Default::default()
            },
        ),
        "OneCycleLR",
        "cycle_momentum",
    );
}

#[test]
fn errors_at_a_step_change_nothing() {
    // OneCycleLR past total_steps (PyTorch's ValueError on the extra step).
    let mut opt = sgd2();
    let mut s = OneCycleLR::new(
        &mut opt,
        OneCycleConfig {
            max_lr: 0.1.into(),
            total_steps: Some(5),
            ..Default::default()
        },
    )
    .unwrap();
    for _ in 0..5 {
        s.step(&mut opt).unwrap();
    }
    let (before, state) = (lrs(&opt), s.state());
    assert_invalid(s.step(&mut opt), "OneCycleLR", "total steps is 5");
    assert_eq!((lrs(&opt), s.state()), (before, state));

    // ConstantLR with factor 0 cannot be undone at total_iters (ZeroDivisionError in PyTorch).
    let mut opt = sgd2();
    let mut s = ConstantLR::new(&mut opt, 0.0, 2).unwrap();
    s.step(&mut opt).unwrap();
    assert_eq!(opt.group_lr(0).unwrap(), 0.0);
    let state = s.state();
    assert_invalid(s.step(&mut opt), "ConstantLR", "factor 0");
    assert_eq!(s.state(), state);

    // PolynomialLR with a negative power reaches 0^negative at total_iters.
    let mut opt = sgd2();
    let mut s = PolynomialLR::new(&mut opt, 2, -1.0).unwrap();
    s.step(&mut opt).unwrap();
    let (before, state) = (lrs(&opt), s.state());
    assert_invalid(s.step(&mut opt), "PolynomialLR", "power");
    assert_eq!((lrs(&opt), s.state()), (before, state));

    // A schedule driven with an optimizer of another group count.
    let mut opt = sgd2();
    let mut s = StepLR::new(&mut opt, 2, 0.5).unwrap();
    let mut other = HostGroups::new(&[0.1]);
    assert_invalid(s.step(&mut other), "StepLR", "parameter group");
    let mut p = ReduceLROnPlateau::new(&mut opt, PlateauConfig::default()).unwrap();
    assert_invalid(
        p.step(&mut other, 1.0),
        "ReduceLROnPlateau",
        "parameter group",
    );

    // A negative lr is PyTorch's too: the optimizer takes it (schedules end on their own
    // rounding below zero).
    let mut opt = sgd2();
    let mut s = LambdaLR::per_group(
        &mut opt,
        vec![Arc::new(|_| 1.0), Arc::new(|e| 1.0 - e as f64)],
    )
    .unwrap();
    s.step(&mut opt).unwrap(); // group 1 at lr 0
    s.step(&mut opt).unwrap(); // group 1 at -base lr
    assert!(opt.group_lr(1).unwrap() < 0.0);
    // A non-finite lr from a closure, mid-way through the groups: a typed error, and the first
    // group is put back.
    let mut opt = sgd2();
    let mut s = LambdaLR::per_group(
        &mut opt,
        vec![
            Arc::new(|e| 1.0 + e as f64),
            Arc::new(|e| if e >= 2 { f64::NAN } else { 1.0 }),
        ],
    )
    .unwrap();
    s.step(&mut opt).unwrap();
    let (before, state) = (lrs(&opt), s.state());
    let r = s.step(&mut opt); // group 1 would be NaN
    assert!(
        matches!(
            r,
            Err(Error::InvalidHyperparameter { name: "lr", .. } | Error::InvalidSchedule { .. })
        ),
        "{r:?}"
    );
    assert_eq!((lrs(&opt), s.state()), (before, state));

    // SequentialLR with a restart that fails (LinearLR's closed form with total_iters 0).
    let mut opt = sgd2();
    let a = StepLR::new(&mut opt, 3, 0.5).unwrap();
    let b = LinearLR::new(&mut opt, 0.5, 1.0, 0).unwrap();
    let mut s = SequentialLR::new(&mut opt, vec![Box::new(a), Box::new(b)], &[2]).unwrap();
    s.step(&mut opt).unwrap();
    let (before, state) = (lrs(&opt), s.state());
    assert_invalid(s.step(&mut opt), "LinearLR", "total_iters");
    assert_eq!((lrs(&opt), s.state()), (before, state));

    // ChainedScheduler: a failing child puts back the children before it.
    let mut opt = sgd2();
    let a = ExponentialLR::new(&mut opt, 0.5).unwrap();
    let b = OneCycleLR::new(
        &mut opt,
        OneCycleConfig {
            total_steps: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let mut s = ChainedScheduler::new(&mut opt, vec![Box::new(a), Box::new(b)]).unwrap();
    s.step(&mut opt).unwrap();
    s.step(&mut opt).unwrap();
    let (before, state) = (lrs(&opt), s.state());
    assert_invalid(s.step(&mut opt), "OneCycleLR", "total steps");
    assert_eq!((lrs(&opt), s.state()), (before, state));
}

#[test]
fn wrappers_reject_what_pytorch_rejects() {
    rejects("SequentialLR", "at least one", |o| {
        SequentialLR::new(o, vec![], &[])
    });
    rejects("ChainedScheduler", "at least one", |o| {
        ChainedScheduler::new(o, vec![])
    });
    rejects("SequentialLR", "milestone", |o| {
        let a = StepLR::new(o, 2, 0.5)?;
        let b = StepLR::new(o, 2, 0.5)?;
        SequentialLR::new(o, vec![Box::new(a), Box::new(b)], &[])
    });
    // A schedule of another optimizer (another group count).
    let mut other = HostGroups::new(&[0.1]);
    let foreign = StepLR::new(&mut other, 2, 0.5).unwrap();
    rejects("SequentialLR", "same optimizer", |o| {
        SequentialLR::new(o, vec![Box::new(foreign)], &[])
    });
    let foreign = StepLR::new(&mut other, 2, 0.5).unwrap();
    rejects("ChainedScheduler", "same optimizer", |o| {
        ChainedScheduler::new(o, vec![Box::new(foreign)])
    });
    // A wrapper after the first place cannot be restarted at its milestone.
    let mut opt = sgd2();
    let a = StepLR::new(&mut opt, 2, 0.5).unwrap();
    let inner_a = ExponentialLR::new(&mut opt, 0.9).unwrap();
    let inner = ChainedScheduler::new(&mut opt, vec![Box::new(inner_a)]).unwrap();
    let r = SequentialLR::new(&mut opt, vec![Box::new(a), Box::new(inner)], &[3]);
    assert_invalid(r, "SequentialLR", "ChainedScheduler");
    // In first place it works: epoch_zero_outside_the_initial_step.
}

/// PyTorch's `_is_initial`: only the constructor's step (and the one SequentialLR re-runs on its
/// first schedule) leaves ExponentialLR / MultiplicativeLR alone at epoch 0; epoch 0 reached
/// otherwise applies the rule.
#[test]
fn epoch_zero_outside_the_initial_step() {
    // MultiplicativeLR restarted by SequentialLR multiplies the live lr by λ(0).
    let mut opt = HostGroups::new(&[0.1]);
    let a = StepLR::new(&mut opt, 100, 0.5).unwrap();
    let m = MultiplicativeLR::new(&mut opt, |e| 0.5 + e as f64).unwrap();
    assert_eq!(opt.lrs(), [0.1]); // λ(0) not applied at construction
    let mut s = SequentialLR::new(&mut opt, vec![Box::new(a), Box::new(m)], &[3]).unwrap();
    let mut want = vec![0.1, 0.1, 0.1];
    want.push(0.1 * 0.5); // restart at the milestone: λ(0)
    want.push(want[3] * 1.5); // then λ(1), λ(2)
    want.push(want[4] * 2.5);
    assert_eq!(opt.lrs(), [want[0]]);
    for w in &want[1..] {
        s.step(&mut opt).unwrap();
        assert_eq!(opt.lrs(), [*w]);
        assert_eq!(s.last_lr(), [*w]);
    }

    // A ChainedScheduler first in a SequentialLR: its children take a plain step at epoch 0.
    let mut opt = HostGroups::new(&[0.1]);
    let e = ExponentialLR::new(&mut opt, 0.9).unwrap();
    assert_eq!(opt.lrs(), [0.1]);
    let ch = ChainedScheduler::new(&mut opt, vec![Box::new(e)]).unwrap();
    let c = ConstantLR::new(&mut opt, 0.5, 100).unwrap();
    let mut s = SequentialLR::new(&mut opt, vec![Box::new(ch), Box::new(c)], &[3]).unwrap();
    assert_eq!(opt.lrs(), [0.1 * 0.9]);
    s.step(&mut opt).unwrap();
    assert_eq!(opt.lrs(), [0.1 * 0.9 * 0.9]);
    s.step(&mut opt).unwrap();
    s.step(&mut opt).unwrap(); // milestone: ConstantLR's closed form at 0 from the base lr
    assert_eq!(opt.lrs(), [0.1 * 0.5]);
}

// ---------------------------------------------------------------------------------------------
// Saving and restoring a schedule's position.

/// Runs `make` for 5 steps, saves, rebuilds with `make` on a fresh optimizer, restores the lrs
/// and momenta and the schedule's state, and checks the next 25 steps equal an uninterrupted
/// run's, bit for bit.
fn resumes(name: &str, make: impl Fn(&mut HostGroups) -> Box<dyn LrSchedule>) {
    let fresh = || HostGroups::new(&[0.1, 0.03]).with_momentum(0.9);
    let mut a = fresh();
    let mut s = make(&mut a);
    for _ in 0..5 {
        s.step(&mut a).unwrap();
    }
    let saved = s.state();
    let saved_opt = a.clone();
    let mut b = fresh();
    let mut r = make(&mut b);
    r.load_state(&saved).unwrap();
    b = saved_opt;
    assert_eq!(r.last_lr(), s.last_lr(), "{name}");
    assert_eq!(r.last_epoch(), 5, "{name}");
    for k in 0..25 {
        s.step(&mut a).unwrap();
        r.step(&mut b).unwrap();
        assert_eq!(a, b, "{name}: step {k} after resuming");
        assert_eq!(r.state(), s.state(), "{name}");
    }
    // A state of another shape is refused, and changes nothing.
    let mut other = saved.clone();
    if other.children.is_empty() {
        other.base_lrs.pop();
        other.last_lr.pop();
    } else {
        other.children.pop();
    }
    let before = r.state();
    let e = r.load_state(&other);
    assert!(
        matches!(e, Err(Error::InvalidSchedule { .. })),
        "{name}: {e:?}"
    );
    assert_eq!(r.state(), before, "{name}");
}

#[test]
fn state_resumes_where_it_was() {
    resumes("StepLR", |o| Box::new(StepLR::new(o, 3, 0.5).unwrap()));
    resumes("CosineAnnealingLR", |o| {
        Box::new(CosineAnnealingLR::new(o, 4, 0.001).unwrap())
    });
    resumes("CosineAnnealingWarmRestarts", |o| {
        Box::new(CosineAnnealingWarmRestarts::new(o, 2, 2, 0.001).unwrap())
    });
    resumes("CyclicLR", |o| {
        Box::new(
            CyclicLR::new(
                o,
                CyclicConfig {
                    base_lr: 0.01.into(),
                    max_lr: vec![0.1, 0.05].into(),
                    step_size_up: 3,
                    step_size_down: Some(2),
                    mode: CyclicMode::Triangular2,
                    ..Default::default()
                },
            )
            .unwrap(),
        )
    });
    resumes("OneCycleLR", |o| {
        Box::new(
            OneCycleLR::new(
                o,
                OneCycleConfig {
                    total_steps: Some(40),
                    ..Default::default()
                },
            )
            .unwrap(),
        )
    });
    resumes("LambdaLR", |o| {
        Box::new(LambdaLR::new(o, |e| 1.0 / (1.0 + e as f64)).unwrap())
    });
    resumes("SequentialLR", |o| {
        let a = LinearLR::new(o, 0.1, 1.0, 4).unwrap();
        let b = CosineAnnealingWarmRestarts::new(o, 3, 2, 0.0).unwrap();
        let c = ExponentialLR::new(o, 0.9).unwrap();
        Box::new(
            SequentialLR::new(o, vec![Box::new(a), Box::new(b), Box::new(c)], &[4, 12]).unwrap(),
        )
    });
    resumes("ChainedScheduler", |o| {
        let a = ConstantLR::new(o, 0.5, 7).unwrap();
        let b = CosineAnnealingLR::new(o, 6, 0.0).unwrap();
        Box::new(ChainedScheduler::new(o, vec![Box::new(a), Box::new(b)]).unwrap())
    });

    // ReduceLROnPlateau: best, bad epochs and cooldown.
    let metric = |k: usize| [1.0, 0.9, 0.95, 0.97, 0.99, 0.8, 0.85, 0.9, 0.91, 0.92][k % 10];
    let cfg = PlateauConfig {
        patience: 1,
        cooldown: 2,
        factor: 0.5,
        ..Default::default()
    };
    let mut a = HostGroups::new(&[0.1, 0.03]);
    let mut s = ReduceLROnPlateau::new(&mut a, cfg.clone()).unwrap();
    for k in 0..4 {
        s.step(&mut a, metric(k)).unwrap();
    }
    let mut b = a.clone();
    let mut r = ReduceLROnPlateau::new(&mut b, cfg).unwrap();
    r.load_state(&s.state()).unwrap();
    for k in 4..30 {
        s.step(&mut a, metric(k)).unwrap();
        r.step(&mut b, metric(k)).unwrap();
        assert_eq!(a, b, "plateau step {k}");
        assert_eq!(r.state(), s.state());
    }
    assert!(a.lrs()[0] < 0.1, "the plateau test never reduced the lr");
    // A warm-restart cycle state no schedule reaches is refused.
    let mut h = HostGroups::new(&[0.1]);
    let mut w = CosineAnnealingWarmRestarts::new(&mut h, 3, 2, 0.0).unwrap();
    let good = w.state();
    for (t_i, t_cur) in [(0, 0), (3, 3)] {
        let bad = wgpu_optim::schedule::ScheduleState {
            t_i,
            t_cur,
            ..good.clone()
        };
        assert_invalid(w.load_state(&bad), "CosineAnnealingWarmRestarts", "T_cur");
        assert_eq!(w.state(), good);
    }
    let mut one = HostGroups::new(&[0.1]);
    let other = ReduceLROnPlateau::new(&mut one, PlateauConfig::default())
        .unwrap()
        .state();
    assert!(matches!(
        r.load_state(&other),
        Err(Error::InvalidSchedule { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// The GPU optimizer against the CPU reference, both driven by a schedule.

const GPU_STEPS: usize = 20;

/// Steps a GPU optimizer and its CPU reference (two groups, the second with half the lr and no
/// weight decay) for GPU_STEPS steps on fresh random gradients, each driven by its own copy of
/// the schedule `make` builds, and compares lrs and momenta exactly, params and every state
/// buffer at PyTorch's fp32 tolerance, after every step.
fn gpu_trial(
    ctx: &wgpu_optim::GpuContext,
    cfg: &OptimizerConfig,
    what: &str,
    make: &dyn Fn(&mut dyn Scheduled) -> Box<dyn LrSchedule>,
) {
    let lens = [1usize, 257, 4099];
    let specs: Vec<TensorSpec> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n).in_group(i % 2))
        .collect();
    let arena = ParamArena::new(ctx, &specs).unwrap();
    let mut gpu = Optimizer::new(ctx, &arena, cfg.clone()).unwrap();
    let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
    let g1 = with_lr_wd(cfg, cfg.lr() * 0.5, 0.0);
    gpu.set_group_config(1, g1.clone()).unwrap();
    cpu.set_group_config(1, g1).unwrap();
    let mut rng = fastrand::Rng::with_seed(0x5c4ed);
    let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    arena.write_all_params(&params).unwrap();
    let mut gs = make(&mut gpu);
    let mut cs = make(&mut cpu);
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let mut lr_moved = false;
    for k in 0..GPU_STEPS {
        for g in 0..2 {
            let w = format!("{what} step {k} group {g}");
            assert_eq!(gpu.group_lr(g).unwrap(), cpu.group_lr(g).unwrap(), "{w}");
            assert_eq!(
                gpu.group_config(g).unwrap(),
                cpu.group_config(g).unwrap(),
                "{w}"
            );
            assert_eq!(gpu.base_lr(g).unwrap(), cpu.base_lr(g).unwrap(), "{w}");
            lr_moved |= gpu.group_lr(g).unwrap() != gpu.base_lr(g).unwrap();
        }
        let grads: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 0.5)).collect();
        arena.write_all_grads(&grads).unwrap();
        gpu.step(&arena).unwrap();
        cpu.step(&mut params, &grads).unwrap();
        gs.step(&mut gpu).unwrap();
        cs.step(&mut cpu).unwrap();
        assert_eq!(gs.last_lr(), cs.last_lr(), "{what} step {k}");

        let got = arena.read_all_params().unwrap();
        for (i, name) in names.iter().enumerate() {
            let w = format!("{what} step {k} tensor {i}");
            assert_close(&format!("{w} param"), &got[i], &params[i], ATOL, RTOL);
            let states = cpu.tensor_state_names(name).unwrap();
            assert_eq!(gpu.tensor_state_names(name).unwrap(), states, "{w}");
            for st in states {
                let want = cpu.read_state(st, name).unwrap();
                let have = gpu.read_state(st, name).unwrap();
                assert_close(&format!("{w} {st}"), &have, &want, ATOL, RTOL);
            }
        }
    }
    assert!(lr_moved, "{what}: the schedule never moved the lr");
}

#[test]
fn cosine_on_every_preset_gpu_equals_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut families = Vec::new();
    for p in OptimizerConfig::presets() {
        if families.contains(&p.config.family()) {
            continue;
        }
        families.push(p.config.family());
        // T_max 8 over 20 steps: down, back up past T_max, and down again.
        gpu_trial(&ctx, &p.config, &format!("{} cosine", p.name), &|o| {
            Box::new(CosineAnnealingLR::new(o, 8, 1e-4).unwrap())
        });
    }
    assert_eq!(
        families.len(),
        OptimizerConfig::presets()
            .iter()
            .map(|p| p.config.family())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
}

#[test]
fn momentum_cycling_gpu_equals_cpu() {
    let Some(ctx) = gpu() else { return };
    // OneCycleLR with β1 cycling on Adam (three-phase, linear), and cos on AdamW.
    let adam = OptimizerConfig::preset("adam").unwrap();
    gpu_trial(&ctx, &adam, "adam onecycle", &|o| {
        Box::new(
            OneCycleLR::new(
                o,
                OneCycleConfig {
                    max_lr: vec![0.01, 0.004].into(),
                    // e = total_steps is the last step; linear is below 0 there (refused).
                    total_steps: Some(GPU_STEPS as u64 + 1),
                    three_phase: true,
                    anneal_strategy: Anneal::Linear,
                    ..Default::default()
                },
            )
            .unwrap(),
        )
    });
    let adamw = OptimizerConfig::preset("adamw").unwrap();
    gpu_trial(&ctx, &adamw, "adamw onecycle", &|o| {
        Box::new(
            OneCycleLR::new(
                o,
                OneCycleConfig {
                    max_lr: 0.01.into(),
                    total_steps: Some(GPU_STEPS as u64 + 5),
                    ..Default::default()
                },
            )
            .unwrap(),
        )
    });
    // CyclicLR with momentum cycling on SGD with momentum, exp_range.
    let sgd = OptimizerConfig::preset("sgd-momentum").unwrap();
    gpu_trial(&ctx, &sgd, "sgd-momentum cyclic", &|o| {
        Box::new(
            CyclicLR::new(
                o,
                CyclicConfig {
                    base_lr: 0.001.into(),
                    max_lr: vec![0.02, 0.01].into(),
                    step_size_up: 4,
                    step_size_down: Some(3),
                    mode: CyclicMode::ExpRange { gamma: 0.97 },
                    ..Default::default()
                },
            )
            .unwrap(),
        )
    });
    // Every other family with a momentum or β1: OneCycleLR cycles it (on the family's first
    // preset with a non-zero one; a zero momentum keeps no buffer to cycle).
    let mut covered = vec!["adam", "sgd"];
    for p in OptimizerConfig::presets() {
        let Some((_, m)) = config_momentum(&p.config) else {
            continue;
        };
        if m == 0.0 || covered.contains(&p.config.family()) {
            continue;
        }
        covered.push(p.config.family());
        let lr = p.config.lr();
        gpu_trial(
            &ctx,
            &p.config,
            &format!("{} onecycle", p.name),
            &move |o| {
                Box::new(
                    OneCycleLR::new(
                        o,
                        OneCycleConfig {
                            max_lr: (lr * 2.0).into(),
                            total_steps: Some(GPU_STEPS as u64),
                            base_momentum: 0.8.into(),
                            max_momentum: (m.max(0.81)).into(),
                            ..Default::default()
                        },
                    )
                    .unwrap(),
                )
            },
        );
    }
    // Every family with a momentum or β1 was cycled on the GPU.
    for p in OptimizerConfig::presets() {
        if config_momentum(&p.config).is_some() {
            assert!(covered.contains(&p.config.family()), "{}", p.name);
        }
    }
}

#[test]
fn plateau_and_sequential_gpu_equal_cpu() {
    let Some(ctx) = gpu() else { return };
    // Warmup then cosine, the usual recipe, on Lion's preset.
    let lion = OptimizerConfig::presets()
        .into_iter()
        .find(|p| p.config.family() == "lion")
        .unwrap()
        .config;
    gpu_trial(&ctx, &lion, "lion warmup+cosine", &|o| {
        let w = LinearLR::new(o, 0.1, 1.0, 5).unwrap();
        let c = CosineAnnealingLR::new(o, 15, 0.0).unwrap();
        Box::new(SequentialLR::new(o, vec![Box::new(w), Box::new(c)], &[5]).unwrap())
    });

    // ReduceLROnPlateau on the loss ½‖p‖² of both copies (each metric from its own params).
    let cfg = OptimizerConfig::preset("sgd-momentum").unwrap();
    let specs = [
        TensorSpec::new("w", 257),
        TensorSpec::new("b", 1).in_group(1),
    ];
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut gpu_opt = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
    let mut cpu = CpuOptimizer::new(cfg, &specs).unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut params: Vec<Vec<f32>> = [257, 1].iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    arena.write_all_params(&params).unwrap();
    let pc = PlateauConfig {
        patience: 0,
        factor: 0.5,
        cooldown: 1,
        ..Default::default()
    };
    let mut gp = ReduceLROnPlateau::new(&mut gpu_opt, pc.clone()).unwrap();
    let mut cp = ReduceLROnPlateau::new(&mut cpu, pc).unwrap();
    let loss = |p: &[Vec<f32>]| {
        p.iter()
            .flatten()
            .map(|&x| 0.5 * (x as f64).powi(2))
            .sum::<f64>()
    };
    let mut reduced = false;
    for k in 0..GPU_STEPS {
        // Noisy gradients, so the loss stalls and the plateau logic acts.
        let grads: Vec<Vec<f32>> = params
            .iter()
            .map(|p| p.iter().map(|&x| x + 4.0 * (rng.f32() - 0.5)).collect())
            .collect();
        arena.write_all_grads(&grads).unwrap();
        gpu_opt.step(&arena).unwrap();
        cpu.step(&mut params, &grads).unwrap();
        let got = arena.read_all_params().unwrap();
        for i in 0..2 {
            assert_close(
                &format!("plateau step {k} tensor {i}"),
                &got[i],
                &params[i],
                ATOL,
                RTOL,
            );
        }
        // The GPU copy's metric is computed from its own params.
        gp.step(&mut gpu_opt, loss(&got)).unwrap();
        cp.step(&mut cpu, loss(&params)).unwrap();
        assert_eq!(gp.last_lr(), cp.last_lr(), "plateau step {k}");
        reduced |= cp.last_lr()[0] < 0.5;
    }
    assert!(reduced, "the plateau never reduced the lr");
}

/// The regression schedules run to their last step on `HostGroups`, the CPU optimizer and the
/// GPU optimizer (an optimizer step between schedule steps), every lr (and cycled momentum)
/// within 1e-12 of torch's, and the GPU's params and state equal to the CPU's after the run.
/// An SGD built with momentum 0 gets its momentum buffers when OneCycleLR first sets a
/// momentum (at construction), on both engines.
#[test]
fn regression_schedules_reach_their_last_step() {
    let configs = regression_configs();
    assert_eq!(configs.len(), 5);
    let Some(ctx) = gpu() else { return };
    for (i, c) in configs.iter().enumerate() {
        assert_eq!(c.lr.len(), c.steps + 1, "config {i}");
        run_config(c, i, &mut host_groups(c), &mut |_| {});
        let specs: Vec<TensorSpec> = (0..c.base_lrs.len())
            .map(|g| TensorSpec::new(format!("t{g}"), 3).in_group(g))
            .collect();
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        let mut cpu = cpu_optimizer(c);
        let groups: Vec<OptimizerConfig> = (0..c.base_lrs.len())
            .map(|g| cpu.group_config(g).unwrap().clone())
            .collect();
        let groups = groups
            .into_iter()
            .enumerate()
            .fold(ParamGroups::new(), |p, (g, cfg)| {
                p.group(Select::ArenaGroup(g), cfg)
            });
        let mut gpu_opt = Optimizer::with_groups(&ctx, &arena, groups).unwrap();
        let mut rng = fastrand::Rng::with_seed(17 + i as u64);
        let mut params: Vec<Vec<f32>> = specs.iter().map(|_| randn(&mut rng, 3, 1.0)).collect();
        arena.write_all_params(&params).unwrap();
        let grads: Vec<Vec<Vec<f32>>> = (0..c.steps)
            .map(|_| specs.iter().map(|_| randn(&mut rng, 3, 0.5)).collect())
            .collect();
        // The CPU and the GPU optimizer, stepped and scheduled in lockstep.
        let mut s_cpu = build(&mut cpu, &c.scheduler, &c.kwargs, &c.schedulers).unwrap();
        let mut s_gpu = build(&mut gpu_opt, &c.scheduler, &c.kwargs, &c.schedulers).unwrap();
        for (k, g) in grads.iter().enumerate() {
            arena.write_all_grads(g).unwrap();
            gpu_opt.step(&arena).unwrap();
            cpu.step(&mut params, g).unwrap();
            s_cpu.step(&mut cpu).unwrap();
            s_gpu.step(&mut gpu_opt).unwrap();
            check_at(c, i, k + 1, &gpu_opt, s_gpu.last_lr());
            check_at(c, i, k + 1, &cpu, s_cpu.last_lr());
        }
        let got = arena.read_all_params().unwrap();
        for (t, (g, w)) in got.iter().zip(&params).enumerate() {
            assert_close(&format!("config {i} params of t{t}"), g, w, ATOL, RTOL);
        }
        for name in gpu_opt.state_names() {
            for t in 0..specs.len() {
                let t = format!("t{t}");
                assert_close(
                    &format!("config {i} {name} of {t}"),
                    &gpu_opt.read_state(name, &t).unwrap(),
                    &cpu.read_state(name, &t).unwrap(),
                    ATOL,
                    RTOL,
                );
            }
        }
    }
}
