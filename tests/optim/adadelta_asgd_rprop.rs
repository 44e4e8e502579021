//! Adadelta, ASGD and Rprop (SPEC-2 §2.4–§2.6): PyTorch's golden cases
//! (`tests/fixtures/torch_optim_more_cases.json`, 3 cases each, 7 steps, frozen tensors, exact
//! zeros in the gradients) through the CPU reference and the GPU kernels (params, every state
//! key including ASGD's host scalars `eta` and `mu`, step counts, state names), every
//! hyperparameter PyTorch's constructors reject, the WGSL struct sizes, the variants' coverage,
//! the sign logic and the host scalars on awkward inputs, and a two-segment optimizer (one of
//! these on some tensors, AdamW on the rest) GPU against CPU.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::more_cases::{self, MoreCase as Case, Probe};
use crate::common::{assert_close, bits_eq, f32s, gpu, randn, ATOL, RTOL};
use wgpu_optim::optim::{adadelta, asgd, rprop, HyperCtx};
use wgpu_optim::shaders::{KernelDef, FLAG_MAXIMIZE};
use wgpu_optim::ParamGroupTable;
use wgpu_optim::{
    AdadeltaConfig, AdamConfig, AsgdConfig, CpuOptimizer, Error, GpuContext, Optimizer,
    OptimizerConfig, ParamArena, ParamGroups, RpropConfig, Rule, Select, TensorSpec,
};

const FAMILIES: [&str; 3] = ["adadelta", "asgd", "rprop"];

/// The fixture cases of our three optimizers.
fn cases() -> Vec<Case> {
    more_cases::cases_of(&FAMILIES)
}

/// The PyTorch constructor call as our config; every keyword must be one we know.
fn config(case: &Case) -> OptimizerConfig {
    let known: &[&str] = match case.optimizer.as_str() {
        "adadelta" => &["lr", "rho", "eps", "weight_decay", "maximize"],
        "asgd" => &["lr", "lambd", "alpha", "t0", "weight_decay", "maximize"],
        "rprop" => &["lr", "etas", "step_sizes", "maximize"],
        o => panic!("not ours: {o}"),
    };
    case.check_keys(known);
    match case.optimizer.as_str() {
        "adadelta" => {
            let d = AdadeltaConfig::default();
            AdadeltaConfig {
                lr: case.f_or("lr", d.lr),
                rho: case.f_or("rho", d.rho),
                eps: case.f_or("eps", d.eps),
                weight_decay: case.f_or("weight_decay", d.weight_decay),
                maximize: case.b_or_false("maximize"),
            }
            .into()
        }
        "asgd" => {
            let d = AsgdConfig::default();
            AsgdConfig {
                lr: case.f_or("lr", d.lr),
                lambd: case.f_or("lambd", d.lambd),
                alpha: case.f_or("alpha", d.alpha),
                t0: case.f_or("t0", d.t0),
                weight_decay: case.f_or("weight_decay", d.weight_decay),
                maximize: case.b_or_false("maximize"),
            }
            .into()
        }
        _ => {
            let d = RpropConfig::default();
            let (etaminus, etaplus) = case.pair("etas", (d.etaminus, d.etaplus));
            let (step_size_min, step_size_max) =
                case.pair("step_sizes", (d.step_size_min, d.step_size_max));
            RpropConfig {
                lr: case.f_or("lr", d.lr),
                etaminus,
                etaplus,
                step_size_min,
                step_size_max,
                maximize: case.b_or_false("maximize"),
            }
            .into()
        }
    }
}

fn describe(case: &Case, ci: usize) -> String {
    format!("{} case {ci} {:?}", case.optimizer, case.hyper)
}

/// What one engine ended with, in the fixture's terms.
struct Got {
    params: Vec<Vec<f32>>,
    /// Every `i.KEY` of the fixture, read with `read_state(KEY, "ti")`.
    state: BTreeMap<String, Vec<f32>>,
    steps: Vec<u64>,
    names: Vec<Vec<&'static str>>,
}

/// The worst `|got - want| / (atol + rtol * |want|)` (1 is the tolerance).
fn margin(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            let w = w as f32;
            ((g - w).abs() / (ATOL + RTOL * w.abs())) as f64
        })
        .fold(0.0, f64::max)
}

fn compare(case: &Case, what: &str, got: &Got) {
    let worst = case
        .expected
        .params
        .iter()
        .enumerate()
        .map(|(i, w)| margin(&got.params[i], w))
        .chain(
            case.expected
                .state
                .iter()
                .map(|(k, w)| margin(&got.state[k], w)),
        )
        .fold(0.0, f64::max);
    eprintln!("{what}: worst error / tolerance {worst:.3}");
    for (i, want) in case.expected.params.iter().enumerate() {
        assert_close(
            &format!("{what} param {i}"),
            &got.params[i],
            &f32s(want),
            ATOL,
            RTOL,
        );
    }
    for (key, want) in &case.expected.state {
        assert_close(
            &format!("{what} state {key}"),
            &got.state[key],
            &f32s(want),
            ATOL,
            RTOL,
        );
    }
    for i in 0..case.lengths.len() {
        let want = case
            .expected
            .step
            .get(&i.to_string())
            .map_or(0, |&s| s as u64);
        assert_eq!(got.steps[i], want, "{what}: step count of tensor {i}");
        // The state keys PyTorch keeps for a tensor that stepped, exactly.
        let want_names: BTreeSet<&str> = case
            .expected
            .state
            .keys()
            .filter_map(|k| k.split_once('.'))
            .filter(|(t, _)| *t == i.to_string())
            .map(|(_, n)| n)
            .collect();
        if want > 0 {
            let names: BTreeSet<&str> = got.names[i].iter().copied().collect();
            assert_eq!(names, want_names, "{what}: state names of tensor {i}");
        }
    }
}

/// Every `i.KEY` state of the fixture, step counts and state names, from either engine.
fn got(case: &Case, params: Vec<Vec<f32>>, opt: &dyn Probe) -> Got {
    let state = case
        .expected
        .state
        .keys()
        .map(|key| {
            let (i, name) = key.split_once('.').unwrap();
            (key.clone(), opt.state(name, &format!("t{i}")).unwrap())
        })
        .collect();
    let n = case.lengths.len();
    Got {
        params,
        state,
        steps: (0..n).map(|i| opt.steps(&format!("t{i}"))).collect(),
        names: (0..n).map(|i| opt.names(&format!("t{i}"))).collect(),
    }
}

fn run_cpu(case: &Case) -> Got {
    let (params, opt) = more_cases::run_cpu(case, config(case));
    got(case, params, &opt)
}

fn run_gpu(ctx: &GpuContext, case: &Case) -> Got {
    let (params, opt) = more_cases::run_gpu(ctx, case, config(case));
    got(case, params, &opt)
}

#[test]
fn fixture_holds_three_cases_of_each() {
    let cases = cases();
    for f in FAMILIES {
        let n = cases.iter().filter(|c| c.optimizer == f).count();
        assert_eq!(n, 3, "{f}");
    }
    // The sign-based rule's fixture has exact zeros in its gradients (SPEC-2 §2.6).
    let zeros = cases
        .iter()
        .filter(|c| c.optimizer == "rprop")
        .flat_map(|c| c.grads.iter().flatten().flatten().flatten())
        .filter(|&&x| x == 0.0)
        .count();
    assert!(zeros > 0, "no exact zeros in the Rprop gradients");
}

#[test]
fn cpu_matches_pytorch_fixtures() {
    for (ci, case) in cases().iter().enumerate() {
        compare(case, &format!("cpu {}", describe(case, ci)), &run_cpu(case));
    }
}

#[test]
fn gpu_matches_pytorch_fixtures() {
    let Some(ctx) = gpu() else { return };
    for (ci, case) in cases().iter().enumerate() {
        compare(
            case,
            &format!("gpu {}", describe(case, ci)),
            &run_gpu(&ctx, case),
        );
    }
}

fn hyper_name(e: &Error) -> &'static str {
    match e {
        Error::InvalidHyperparameter { name, .. } => name,
        other => panic!("expected InvalidHyperparameter, got {other:?}"),
    }
}

/// (config, the field the error must name): every value PyTorch's constructors reject, plus
/// NaN and infinite values (rejected throughout the crate).
fn bad_configs() -> Vec<(OptimizerConfig, &'static str)> {
    let ad = AdadeltaConfig::default();
    let asgd = AsgdConfig::default();
    let rp = RpropConfig::default();
    let mut out: Vec<(OptimizerConfig, &'static str)> = Vec::new();
    for lr in [-1e-3, f64::NAN, f64::INFINITY] {
        out.push((AdadeltaConfig { lr, ..ad.clone() }.into(), "lr"));
        out.push((AsgdConfig { lr, ..asgd.clone() }.into(), "lr"));
        out.push((RpropConfig { lr, ..rp.clone() }.into(), "lr"));
    }
    for rho in [-0.1, 1.0 + 1e-9, f64::NAN, f64::INFINITY] {
        out.push((AdadeltaConfig { rho, ..ad.clone() }.into(), "rho"));
    }
    for eps in [-1e-6, f64::NAN] {
        out.push((AdadeltaConfig { eps, ..ad.clone() }.into(), "eps"));
    }
    for weight_decay in [-0.1, f64::NAN] {
        out.push((
            AdadeltaConfig {
                weight_decay,
                ..ad.clone()
            }
            .into(),
            "weight_decay",
        ));
        out.push((
            AsgdConfig {
                weight_decay,
                ..asgd.clone()
            }
            .into(),
            "weight_decay",
        ));
    }
    for lambd in [-1e-4, f64::NAN] {
        out.push((
            AsgdConfig {
                lambd,
                ..asgd.clone()
            }
            .into(),
            "lambd",
        ));
    }
    for alpha in [-0.75, f64::NAN] {
        out.push((
            AsgdConfig {
                alpha,
                ..asgd.clone()
            }
            .into(),
            "alpha",
        ));
    }
    out.push((
        AsgdConfig {
            t0: f64::NAN,
            ..asgd.clone()
        }
        .into(),
        "t0",
    ));
    // 0 < etaminus < 1 < etaplus.
    for etaminus in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
        out.push((
            RpropConfig {
                etaminus,
                ..rp.clone()
            }
            .into(),
            "etaminus",
        ));
    }
    for etaplus in [1.0, 0.5, f64::NAN, f64::INFINITY] {
        out.push((
            RpropConfig {
                etaplus,
                ..rp.clone()
            }
            .into(),
            "etaplus",
        ));
    }
    out.push((
        RpropConfig {
            step_size_min: f64::NAN,
            ..rp.clone()
        }
        .into(),
        "step_size_min",
    ));
    out.push((
        RpropConfig {
            step_size_max: f64::NAN,
            ..rp
        }
        .into(),
        "step_size_max",
    ));
    out
}

/// Values PyTorch accepts, some at the edge of the checks.
fn edge_configs() -> Vec<OptimizerConfig> {
    vec![
        AdadeltaConfig {
            rho: 0.0,
            eps: 0.0,
            lr: 0.0,
            ..Default::default()
        }
        .into(),
        AdadeltaConfig {
            rho: 1.0,
            ..Default::default()
        }
        .into(),
        AsgdConfig {
            t0: f64::INFINITY,
            lambd: 0.0,
            alpha: 0.0,
            ..Default::default()
        }
        .into(),
        AsgdConfig {
            t0: -5.0,
            ..Default::default()
        }
        .into(),
        RpropConfig {
            etaminus: 1e-9,
            etaplus: 1.0 + 1e-9,
            ..Default::default()
        }
        .into(),
        RpropConfig {
            step_size_min: 1.0,
            step_size_max: -1.0,
            ..Default::default()
        }
        .into(),
        RpropConfig {
            step_size_max: f64::INFINITY,
            step_size_min: -1.0,
            ..Default::default()
        }
        .into(),
    ]
}

#[test]
fn invalid_hyperparameters_are_rejected_by_name() {
    let specs = [TensorSpec::new("a", 5), TensorSpec::new("b", 3).in_group(1)];
    let ctx = gpu();
    for (cfg, field) in bad_configs() {
        let what = format!("{cfg:?}");
        assert_eq!(hyper_name(&cfg.validate().unwrap_err()), field, "{what}");
        // Nothing is built, on the CPU...
        let e = CpuOptimizer::new(cfg.clone(), &specs).unwrap_err();
        assert_eq!(hyper_name(&e), field, "{what}");
        let groups = ParamGroups::new().group(Select::Rest, cfg.clone());
        let e = CpuOptimizer::with_groups(&specs, groups).unwrap_err();
        assert_eq!(hyper_name(&e), field, "{what}");
        // ...and a group's configuration is not replaced by it.
        let family_default = OptimizerConfig::variants()
            .into_iter()
            .find(|c| c.family() == cfg.family())
            .unwrap();
        let mut cpu = CpuOptimizer::new(family_default.clone(), &specs).unwrap();
        let e = cpu.set_group_config(1, cfg.clone()).unwrap_err();
        assert_eq!(hyper_name(&e), field, "{what}");
        assert_eq!(cpu.group_config(1).unwrap(), &family_default, "{what}");
        if let Some(ctx) = &ctx {
            let arena = ParamArena::new(ctx, &specs).unwrap();
            let e = Optimizer::new(ctx, &arena, cfg.clone()).unwrap_err();
            assert_eq!(hyper_name(&e), field, "{what}");
            let mut opt = Optimizer::new(ctx, &arena, family_default.clone()).unwrap();
            let e = opt.set_group_config(0, cfg.clone()).unwrap_err();
            assert_eq!(hyper_name(&e), field, "{what}");
            assert_eq!(opt.group_config(0).unwrap(), &family_default, "{what}");
        }
    }
    for cfg in edge_configs() {
        cfg.validate().unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
        let mut cpu = CpuOptimizer::new(cfg, &specs).unwrap();
        let mut p = vec![vec![0.5f32; 5], vec![-0.5; 3]];
        cpu.step(&mut p, &[vec![0.1f32; 5], vec![-0.1; 3]]).unwrap();
        assert!(p.iter().flatten().all(|x| x.is_finite()));
    }
}

#[test]
fn defaults_are_pytorchs() {
    assert_eq!(
        AdadeltaConfig::default(),
        AdadeltaConfig {
            lr: 1.0,
            rho: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
            maximize: false
        }
    );
    assert_eq!(
        AsgdConfig::default(),
        AsgdConfig {
            lr: 1e-2,
            lambd: 1e-4,
            alpha: 0.75,
            t0: 1e6,
            weight_decay: 0.0,
            maximize: false
        }
    );
    assert_eq!(
        RpropConfig::default(),
        RpropConfig {
            lr: 1e-2,
            etaminus: 0.5,
            etaplus: 1.2,
            step_size_min: 1e-6,
            step_size_max: 50.0,
            maximize: false
        }
    );
    for name in FAMILIES {
        let p = OptimizerConfig::preset(name).unwrap_or_else(|| panic!("preset {name}"));
        assert_eq!(p.family(), name);
        assert_eq!(p.describe(), name, "the preset is the default");
    }
    assert_eq!(
        OptimizerConfig::from(AsgdConfig::default()).scalar_names(),
        ["eta", "mu"]
    );
    assert_eq!(
        OptimizerConfig::from(AdadeltaConfig::default()).bytes_per_element(),
        28
    );
    assert_eq!(
        OptimizerConfig::from(AsgdConfig::default()).bytes_per_element(),
        20
    );
    assert_eq!(
        OptimizerConfig::from(RpropConfig::default()).bytes_per_element(),
        28
    );
}

#[test]
fn uniform_structs_have_the_wgsl_sizes() {
    use std::mem::size_of;
    let cases: [(KernelDef, &str, usize); 6] = [
        (
            adadelta::ADADELTA_STEP,
            "AdadeltaHyper",
            size_of::<adadelta::AdadeltaHyper>(),
        ),
        (
            adadelta::ADADELTA_STEP,
            "AdadeltaTensor",
            size_of::<adadelta::AdadeltaTensor>(),
        ),
        (asgd::ASGD_STEP, "AsgdHyper", size_of::<asgd::AsgdHyper>()),
        (asgd::ASGD_STEP, "AsgdTensor", size_of::<asgd::AsgdTensor>()),
        (
            rprop::RPROP_STEP,
            "RpropHyper",
            size_of::<rprop::RpropHyper>(),
        ),
        (
            rprop::RPROP_STEP,
            "RpropTensor",
            size_of::<rprop::RpropTensor>(),
        ),
    ];
    // Multiples of 16 bytes keep the uniform array's stride equal to the struct size.
    crate::common::naga_sizes::assert_wgsl_sizes(&cases, true);
}

/// Every flag and every branch of the three rules is in the table's variants (which
/// gpu_vs_cpu and `optbench verify` run), each with a non-default lr.
#[test]
fn variants_exercise_every_flag() {
    let ctx = HyperCtx::default();
    let ad = AdadeltaConfig::variants();
    assert!(ad
        .iter()
        .all(|c| c.lr != AdadeltaConfig::default().lr && c.validate().is_ok()));
    assert!(ad.iter().any(|c| c.hyper(ctx).flags & FLAG_MAXIMIZE != 0));
    assert!(ad.iter().any(|c| c.hyper(ctx).flags & FLAG_MAXIMIZE == 0));
    assert!(ad.iter().any(|c| c.weight_decay != 0.0));
    assert!(ad.iter().any(|c| c.rho == 0.0) && ad.iter().any(|c| c.rho == 1.0));

    let sg = AsgdConfig::variants();
    assert!(sg
        .iter()
        .all(|c| c.lr != AsgdConfig::default().lr && c.validate().is_ok()));
    assert!(sg.iter().any(|c| c.maximize) && sg.iter().any(|c| !c.maximize));
    assert!(sg.iter().any(|c| c.weight_decay != 0.0 && c.maximize));
    // Within 7 steps: ax copied only (mu == 1) and ax averaged (mu < 1), with and without decay.
    for wd in [false, true] {
        assert!(sg
            .iter()
            .any(|c| (c.weight_decay != 0.0) == wd && c.t0 > 7.0));
        assert!(sg
            .iter()
            .any(|c| (c.weight_decay != 0.0) == wd && c.t0 < 5.0));
    }
    let averaging = sg.iter().any(|c| {
        let mut s = c.init_scalars();
        (1..=7).any(|t| c.tensor_step_with(t, 0, Default::default(), &mut s).copy == 0)
    });
    assert!(averaging);

    let rp = RpropConfig::variants();
    assert!(rp
        .iter()
        .all(|c| c.lr != RpropConfig::default().lr && c.validate().is_ok()));
    assert!(rp.iter().any(|c| c.maximize) && rp.iter().any(|c| !c.maximize));
    // Both clamps within a few steps (lr 0.02 between them, or min > max).
    assert!(rp
        .iter()
        .any(|c| c.step_size_min > c.lr * 0.3 && c.step_size_max < c.lr * 3.0));
    assert!(rp.iter().any(|c| c.step_size_min > c.step_size_max));
    assert!(rp.iter().any(|c| c.etaminus != 0.5 && c.etaplus != 1.2));

    // Family names and the table.
    for f in FAMILIES {
        assert!(
            OptimizerConfig::variants().iter().any(|c| c.family() == f),
            "{f}"
        );
    }
}

/// Gradients with exact zeros, repeated values, sign flips, tiny and huge magnitudes.
fn awkward_grads(rng: &mut fastrand::Rng, prev: Option<&[f32]>, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| match rng.u32(0..10) {
            0 | 1 => 0.0,
            2 => -0.0,
            3 => prev.map_or(0.3, |p| p[i]),
            4 => prev.map_or(-0.3, |p| -p[i]),
            5 => 1e-30 * (rng.f32() - 0.5),
            // Large, but with g * g finite (AdamW and Adadelta square it).
            6 => 1e15 * (rng.f32() - 0.5),
            _ => randn(rng, 1, 0.5)[0],
        })
        .collect()
}

/// GPU against CPU on gradients full of exact zeros and sign changes (what Rprop's masks and
/// ASGD's copy/average switch see), with tensors frozen on some steps, small tensors packed and
/// a large one in several chunks, an lr change mid-run, for every variant of the three rules:
/// within PyTorch's tolerance, and bit for bit on lavapipe.
#[test]
fn gpu_matches_cpu_on_zeros_and_sign_flips() {
    let Some(ctx) = gpu() else { return };
    let lavapipe = ctx.adapter_info().name.to_lowercase().contains("llvmpipe");
    let lens = [1usize, 3, 255, 257, 9000, 0, 64];
    let specs: Vec<TensorSpec> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n).in_group(i % 2))
        .collect();
    let configs: Vec<OptimizerConfig> = OptimizerConfig::variants()
        .into_iter()
        .filter(|c| FAMILIES.contains(&c.family()))
        .collect();
    for (j, cfg) in configs.iter().enumerate() {
        let mut rng = fastrand::Rng::with_seed(40 + j as u64);
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
        arena.write_all_params(&params).unwrap();
        let mut gpu = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
        let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
        let g1 = cfg.clone().with_lr(cfg.lr() * 0.5);
        gpu.set_group_config(1, g1.clone()).unwrap();
        cpu.set_group_config(1, g1).unwrap();
        let mut last: Vec<Vec<f32>> = Vec::new();
        for k in 0..7 {
            let grads: Vec<Vec<f32>> = lens
                .iter()
                .enumerate()
                .map(|(i, &n)| awkward_grads(&mut rng, last.get(i).map(|v| v.as_slice()), n))
                .collect();
            last = grads.clone();
            for i in 0..lens.len() {
                let fz = (k * 5 + i * 3) % 4 == 0;
                gpu.set_frozen(&format!("t{i}"), fz).unwrap();
                cpu.set_frozen(&format!("t{i}"), fz).unwrap();
            }
            if k == 3 {
                gpu.set_lr_factor(0.7).unwrap();
                cpu.set_lr_factor(0.7).unwrap();
            }
            arena.write_all_grads(&grads).unwrap();
            gpu.step(&arena).unwrap();
            cpu.step(&mut params, &grads).unwrap();
            let got = arena.read_all_params().unwrap();
            let what = format!("{} step {k}", cfg.describe());
            for i in 0..lens.len() {
                let name = format!("t{i}");
                assert_close(&format!("{what} {name}"), &got[i], &params[i], ATOL, RTOL);
                if lavapipe {
                    assert!(
                        bits_eq(&got[i], &params[i]),
                        "{what} {name}: not bit-identical"
                    );
                }
                for s in gpu.tensor_state_names(&name).unwrap() {
                    let (g, c) = (
                        gpu.read_state(s, &name).unwrap(),
                        cpu.read_state(s, &name).unwrap(),
                    );
                    assert_close(&format!("{what} {name} {s}"), &g, &c, ATOL, RTOL);
                    if lavapipe {
                        assert!(bits_eq(&g, &c), "{what} {name} {s}: not bit-identical");
                    }
                }
                assert_eq!(
                    gpu.step_count(&name).unwrap(),
                    cpu.step_count(&name).unwrap()
                );
            }
        }
    }
}

/// NaN gradients propagate through Rprop as in torch (NaN sign, NaN factor, NaN clamp), on
/// both engines; neighbouring elements are unaffected.
#[test]
fn rprop_propagates_nan_like_torch() {
    let specs = [TensorSpec::new("t", 6)];
    let cfg = RpropConfig::default();
    let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
    let mut p = vec![vec![1.0f32; 6]];
    let g1 = vec![vec![0.5f32, -0.5, 0.5, 0.0, 0.5, 0.5]];
    let g2 = vec![vec![f32::NAN, 0.5, 0.5, 0.5, 0.5, 0.5]];
    cpu.step(&mut p, &g1).unwrap();
    cpu.step(&mut p, &g2).unwrap();
    // Element 0: g * prev = NaN, so the factor, the step size, prev and p are NaN (torch).
    assert!(p[0][0].is_nan());
    assert!(cpu.read_state("step_size", "t").unwrap()[0].is_nan());
    assert!(cpu.read_state("prev", "t").unwrap()[0].is_nan());
    assert!(p[0][1..].iter().all(|x| x.is_finite()));
    if let Some(ctx) = gpu() {
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        arena.write_all_params(&[vec![1.0f32; 6]]).unwrap();
        let mut opt = Optimizer::new(&ctx, &arena, cfg).unwrap();
        for g in [&g1, &g2] {
            arena.write_all_grads(g).unwrap();
            opt.step(&arena).unwrap();
        }
        let got = arena.read_all_params().unwrap();
        assert!(bits_eq(&got[0], &p[0]), "{:?} vs {:?}", got[0], p[0]);
        for s in ["prev", "step_size"] {
            let (g, c) = (
                opt.read_state(s, "t").unwrap(),
                cpu.read_state(s, "t").unwrap(),
            );
            assert!(bits_eq(&g, &c), "{s}: {g:?} vs {c:?}");
        }
    }
}

/// Rprop by hand on a few elements: factors, clamps, the mask after a sign change, zeros, and
/// the step size starting at the group's lr of the tensor's first step (lr changes later have
/// no effect).
#[test]
fn rprop_sign_logic_by_hand() {
    let cfg = RpropConfig {
        lr: 0.1,
        etaminus: 0.5,
        etaplus: 2.0,
        step_size_min: 0.02,
        step_size_max: 0.3,
        maximize: false,
    };
    let specs = [TensorSpec::new("a", 4), TensorSpec::new("late", 1)];
    let mut cpu = CpuOptimizer::new(cfg, &specs).unwrap();
    let mut p = vec![vec![0.0f32; 4], vec![0.0f32]];
    cpu.set_frozen("late", true).unwrap();
    // Step 1: prev = 0, so f = 1 everywhere; sign(g) * lr moves, zero grads don't.
    cpu.step(&mut p, &[vec![1.0f32, -1.0, 0.0, 1.0], vec![0.0]])
        .unwrap();
    assert_eq!(p[0], [-0.1, 0.1, 0.0, -0.1]);
    assert_eq!(
        cpu.read_state("step_size", "a").unwrap(),
        [0.1, 0.1, 0.1, 0.1]
    );
    // An lr change now affects only tensors that have not stepped.
    cpu.set_lr(0.25).unwrap();
    cpu.set_frozen("late", false).unwrap();
    // Step 2: same sign (x2), flipped sign (x0.5, no move, prev = 0), zero, same sign.
    cpu.step(&mut p, &[vec![3.0f32, 1.0, 5.0, 1e-3], vec![-2.0]])
        .unwrap();
    assert_eq!(
        cpu.read_state("step_size", "a").unwrap(),
        [0.2, 0.05, 0.1, 0.2]
    );
    assert_eq!(cpu.read_state("prev", "a").unwrap(), [3.0, 0.0, 5.0, 1e-3]);
    assert_eq!(p[0], [-0.1 - 0.2, 0.1, -0.1, -0.1 - 0.2]);
    assert_eq!(
        p[1],
        [0.25],
        "late tensor starts at the lr of its first step"
    );
    assert_eq!(cpu.read_state("step_size", "late").unwrap(), [0.25]);
    // Step 3: the upper clamp (0.4 -> 0.3); prev = 0 for element 1, so f = 1 there; element 2
    // flips (0.1 * 0.5 = 0.05, masked: prev = 0).
    cpu.step(&mut p, &[vec![1.0f32, 1.0, -1.0, 1.0], vec![1.0]])
        .unwrap();
    let s = cpu.read_state("step_size", "a").unwrap();
    assert_eq!(s, [0.3, 0.05, 0.05, 0.3]);
    assert_eq!(cpu.read_state("prev", "a").unwrap(), [1.0, 1.0, 0.0, 1.0]);
    // Step 4: flips on elements 0 and 1 (0.3 * 0.5, 0.05 * 0.5), element 2 after its mask
    // (prev = 0: f = 1), element 3 at the clamp.
    cpu.step(&mut p, &[vec![-1.0f32, -1.0, 1.0, 1.0], vec![1.0]])
        .unwrap();
    let s = cpu.read_state("step_size", "a").unwrap();
    assert_eq!(s, [0.15, 0.025, 0.05, 0.3]);
    // The lower clamp: 0.025 * 0.5 -> 0.02 needs another flip; element 0 was masked (f = 1).
    cpu.step(&mut p, &[vec![1.0f32, 1.0, 1.0, 1.0], vec![1.0]])
        .unwrap();
    let s = cpu.read_state("step_size", "a").unwrap();
    assert_eq!(s[..2], [0.15, 0.025], "prev was masked to 0: f = 1");
    cpu.step(&mut p, &[vec![1.0f32, -1.0, 1.0, 1.0], vec![1.0]])
        .unwrap();
    let s = cpu.read_state("step_size", "a").unwrap();
    assert_eq!(s[..2], [0.3, 0.02]);
}

/// ASGD's host scalars: eta and mu are the next step's values, per tensor (own step counts),
/// created on the tensor's first step from the group's lr then, and switch ax from a copy to
/// an average once t > t0 + 1.
#[test]
fn asgd_scalars_follow_torch() {
    let cfg = AsgdConfig {
        lr: 0.1,
        lambd: 0.5,
        alpha: 0.75,
        t0: 1.5,
        weight_decay: 0.0,
        maximize: false,
    };
    let specs = [TensorSpec::new("a", 2), TensorSpec::new("late", 2)];
    let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
    let mut p = vec![vec![1.0f32, -1.0], vec![1.0f32, 2.0]];
    let g = vec![vec![0.5f32, 0.25], vec![0.5f32, -0.5]];
    cpu.set_frozen("late", true).unwrap();
    cpu.step(&mut p, &g).unwrap();
    let eta = |lr: f64, t: f64| (lr / (1.0 + 0.5 * lr * t).powf(0.75)) as f32;
    assert_eq!(cpu.read_state("eta", "a").unwrap(), [eta(0.1, 1.0)]);
    assert_eq!(cpu.read_state("mu", "a").unwrap(), [1.0]);
    // Step 1 used eta = lr, and ax is a copy of p.
    let p1 = (1.0f32 * (1.0 - 0.5 * 0.1f32 as f64) as f32) + (-0.1f32) * 0.5;
    assert_eq!(p[0][0], p1);
    assert_eq!(cpu.read_state("ax", "a").unwrap(), p[0]);
    // The late tensor's state is created at its first step, from the lr at that step.
    cpu.set_lr(0.2).unwrap();
    cpu.set_frozen("late", false).unwrap();
    cpu.step(&mut p, &g).unwrap();
    let late1 = (1.0f32 * (1.0 - 0.5 * 0.2f32 as f64) as f32) + (-0.2f32) * 0.5;
    assert_eq!(p[1][0], late1);
    assert_eq!(cpu.read_state("eta", "late").unwrap(), [eta(0.2, 1.0)]);
    assert_eq!(cpu.read_state("eta", "a").unwrap(), [eta(0.2, 2.0)]);
    // t = 2: mu for step 3 is 1 / max(1, 2 - 1.5) = 1; still a copy at step 2.
    assert_eq!(cpu.read_state("mu", "a").unwrap(), [1.0]);
    assert_eq!(cpu.read_state("ax", "a").unwrap(), p[0]);
    // Step 3 (t = 3): mu was 1 -> copy; new mu = 1 / 1.5.
    cpu.step(&mut p, &g).unwrap();
    assert_eq!(cpu.read_state("ax", "a").unwrap(), p[0]);
    assert_eq!(cpu.read_state("mu", "a").unwrap(), [(1.0 / 1.5) as f32]);
    // Step 4: ax = ax + (p - ax) * mu, with the previous ax (= p after step 3).
    let ax3 = cpu.read_state("ax", "a").unwrap();
    cpu.step(&mut p, &g).unwrap();
    let mu = (1.0 / 1.5f64) as f32;
    let want: Vec<f32> = (0..2).map(|i| ax3[i] + (p[0][i] - ax3[i]) * mu).collect();
    assert_eq!(cpu.read_state("ax", "a").unwrap(), want);
    assert_ne!(want, p[0]);
    // The late tensor is one step behind, with its own t, eta and mu.
    assert_eq!(cpu.step_count("late").unwrap(), 3);
    assert_eq!(cpu.read_state("mu", "late").unwrap(), [(1.0 / 1.5) as f32]);
    assert_eq!(cpu.read_state("eta", "late").unwrap(), [eta(0.2, 3.0)]);
    assert_eq!(cpu.read_state("eta", "a").unwrap(), [eta(0.2, 4.0)]);
}

/// One of the three on some tensors (matrices and a frozen one), AdamW on the rest: one
/// optimizer of two segments, GPU against CPU over 7 steps.
#[test]
fn two_segments_with_adamw_match_cpu() {
    let Some(ctx) = gpu() else { return };
    let specs = [
        TensorSpec::shaped("w0", &[16, 9]),
        TensorSpec::new("b0", 16),
        TensorSpec::shaped("w1", &[5000]),
        TensorSpec::new("frozen", 33),
        TensorSpec::new("b1", 1),
        TensorSpec::new("empty", 0),
    ];
    let lens: Vec<usize> = specs.iter().map(|s| s.len).collect();
    let rules: [OptimizerConfig; 3] = [
        AdadeltaConfig {
            lr: 0.5,
            weight_decay: 1e-2,
            ..Default::default()
        }
        .into(),
        AsgdConfig {
            lr: 0.05,
            lambd: 0.5,
            t0: 2.0,
            ..Default::default()
        }
        .into(),
        RpropConfig {
            lr: 0.02,
            step_size_max: 0.05,
            ..Default::default()
        }
        .into(),
    ];
    for (j, rule) in rules.iter().enumerate() {
        let groups = || {
            ParamGroups::new()
                .group(Select::names(["w0", "w1", "frozen", "empty"]), rule.clone())
                .group(Select::Rest, AdamConfig::adamw())
        };
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        let mut gpu = Optimizer::with_groups(&ctx, &arena, groups()).unwrap();
        let mut cpu = CpuOptimizer::with_groups(&specs, groups()).unwrap();
        assert_eq!(gpu.segments(), 2);
        let mut rng = fastrand::Rng::with_seed(70 + j as u64);
        let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
        let init = params.clone();
        arena.write_all_params(&params).unwrap();
        gpu.set_frozen("frozen", true).unwrap();
        cpu.set_frozen("frozen", true).unwrap();
        let mut last: Vec<Vec<f32>> = Vec::new();
        for k in 0..7 {
            let grads: Vec<Vec<f32>> = lens
                .iter()
                .enumerate()
                .map(|(i, &n)| awkward_grads(&mut rng, last.get(i).map(|v| v.as_slice()), n))
                .collect();
            last = grads.clone();
            // b0 skips a step too (its own AdamW bias correction).
            gpu.set_frozen("b0", k == 2).unwrap();
            cpu.set_frozen("b0", k == 2).unwrap();
            arena.write_all_grads(&grads).unwrap();
            gpu.step(&arena).unwrap();
            cpu.step(&mut params, &grads).unwrap();
            let got = arena.read_all_params().unwrap();
            let what = format!("{} + adamw step {k}", rule.name());
            for (i, s) in specs.iter().enumerate() {
                assert_close(
                    &format!("{what} {}", s.name),
                    &got[i],
                    &params[i],
                    ATOL,
                    RTOL,
                );
                for st in gpu.tensor_state_names(&s.name).unwrap() {
                    assert_close(
                        &format!("{what} {} {st}", s.name),
                        &gpu.read_state(st, &s.name).unwrap(),
                        &cpu.read_state(st, &s.name).unwrap(),
                        ATOL,
                        RTOL,
                    );
                }
                assert_eq!(
                    gpu.step_count(&s.name).unwrap(),
                    cpu.step_count(&s.name).unwrap()
                );
            }
        }
        // The frozen tensor never moved and never stepped; the others did.
        let got = arena.read_all_params().unwrap();
        assert!(bits_eq(&got[3], &init[3]));
        assert_eq!(gpu.step_count("frozen").unwrap(), 0);
        assert_eq!(gpu.step_count("w0").unwrap(), 7);
        assert_eq!(gpu.step_count("b0").unwrap(), 6);
        assert_eq!(gpu.group_of("b1").unwrap(), Some(1));
        assert_eq!(
            gpu.tensor_state_names("b1").unwrap(),
            ["exp_avg", "exp_avg_sq"],
            "AdamW's tensors keep AdamW's state"
        );
        let mut names = gpu.tensor_state_names("w0").unwrap();
        names.sort();
        let mut want: Vec<&str> = match rule.family() {
            "adadelta" => vec!["acc_delta", "square_avg"],
            "asgd" => vec!["ax", "eta", "mu"],
            _ => vec!["prev", "step_size"],
        };
        want.sort();
        assert_eq!(names, want);
    }
}
