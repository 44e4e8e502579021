//! NAdam, RAdam and Adamax (SPEC-2 §2.1-§2.3): PyTorch's golden cases through the CPU
//! reference and the GPU kernels (params, every state key including NAdam's host-side
//! `mu_product`, step counts, state names), every hyperparameter torch's constructors reject,
//! the WGSL struct sizes, the test variants' flag coverage, RAdam's rectification switch, and
//! each rule in a two-segment optimizer with AdamW.

use crate::common::more_cases::{self, three_cases, MoreCase, Probe};
use crate::common::{assert_close, bits_eq, f32s, gpu, randn, ATOL, RTOL};
use wgpu_optim::ParamGroupTable;
use wgpu_optim::{
    AdamConfig, AdamaxConfig, CpuOptimizer, Error, NadamConfig, Optimizer, OptimizerConfig,
    ParamArena, ParamGroups, RadamConfig, Select, TensorSpec,
};

// ---------------------------------------------------------------------------------------------
// The golden cases (tests/fixtures/torch_optim_more_cases.json).

/// The constructor call as our config; every key of `hyper` must be understood.
fn config(case: &MoreCase) -> OptimizerConfig {
    let known: &[&str] = match case.optimizer.as_str() {
        "nadam" => &[
            "lr",
            "betas",
            "eps",
            "weight_decay",
            "momentum_decay",
            "decoupled_weight_decay",
            "maximize",
        ],
        "radam" => &[
            "lr",
            "betas",
            "eps",
            "weight_decay",
            "decoupled_weight_decay",
            "maximize",
        ],
        "adamax" => &["lr", "betas", "eps", "weight_decay", "maximize"],
        other => panic!("not a case of this file: {other}"),
    };
    case.check_keys(known);
    match case.optimizer.as_str() {
        "nadam" => NadamConfig {
            lr: case.f("lr"),
            beta1: case.beta(0),
            beta2: case.beta(1),
            eps: case.f("eps"),
            weight_decay: case.f("weight_decay"),
            momentum_decay: case.f("momentum_decay"),
            decoupled_weight_decay: case.b("decoupled_weight_decay"),
            maximize: case.b("maximize"),
        }
        .into(),
        "radam" => RadamConfig {
            lr: case.f("lr"),
            beta1: case.beta(0),
            beta2: case.beta(1),
            eps: case.f("eps"),
            weight_decay: case.f("weight_decay"),
            decoupled_weight_decay: case.b("decoupled_weight_decay"),
            maximize: case.b("maximize"),
        }
        .into(),
        _ => AdamaxConfig {
            lr: case.f("lr"),
            beta1: case.beta(0),
            beta2: case.beta(1),
            eps: case.f("eps"),
            weight_decay: case.f("weight_decay"),
            maximize: case.b("maximize"),
        }
        .into(),
    }
}

fn label(case: &MoreCase, n: usize, path: &str) -> String {
    format!("{} case {n} {path} {:?}", case.optimizer, case.hyper)
}

/// Worst |got - want| / (atol + rtol |want|) over a comparison.
fn worst_ratio(got: &[f32], want: &[f32]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| ((g - w).abs() / (ATOL + RTOL * w.abs())) as f64)
        .fold(0.0, f64::max)
}

/// Compares params, every state key of the fixture, step counts and state names; returns
/// the worst error / tolerance.
fn check_case(case: &MoreCase, what: &str, params: &[Vec<f32>], opt: &dyn Probe) -> f64 {
    let mut worst = 0.0f64;
    for (i, want) in case.expected.params.iter().enumerate() {
        let name = format!("t{i}");
        let want = f32s(want);
        assert_close(&format!("{what} t{i} param"), &params[i], &want, ATOL, RTOL);
        worst = worst.max(worst_ratio(&params[i], &want));
        let want_steps = case.expected.step[&i.to_string()] as u64;
        assert_eq!(opt.steps(&name), want_steps, "{what} t{i} step");
        let prefix = format!("{i}.");
        let mut keys: Vec<&str> = case
            .expected
            .state
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .collect();
        for key in &keys {
            let want = f32s(&case.expected.state[&format!("{i}.{key}")]);
            let got = opt
                .state(key, &name)
                .unwrap_or_else(|e| panic!("{what} t{i} {key}: {e}"));
            assert_close(&format!("{what} t{i} {key}"), &got, &want, ATOL, RTOL);
            worst = worst.max(worst_ratio(&got, &want));
        }
        if want_steps > 0 {
            let mut names = opt.names(&name);
            names.sort_unstable();
            keys.sort_unstable();
            assert_eq!(names, keys, "{what} t{i} state names");
        }
    }
    worst
}

fn run_cpu(case: &MoreCase) -> (Vec<Vec<f32>>, CpuOptimizer) {
    more_cases::run_cpu(case, config(case))
}

fn fixtures_on_cpu(optimizer: &str) {
    let mut worst = 0.0f64;
    for (n, case) in three_cases(optimizer).iter().enumerate() {
        let (params, cpu) = run_cpu(case);
        worst = worst.max(check_case(case, &label(case, n, "cpu"), &params, &cpu));
    }
    eprintln!("{optimizer} cpu vs torch: worst error / tolerance {worst:.3}");
}

fn fixtures_on_gpu(optimizer: &str) {
    let Some(ctx) = gpu() else { return };
    let mut worst = 0.0f64;
    for (n, case) in three_cases(optimizer).iter().enumerate() {
        let (params, opt) = more_cases::run_gpu(&ctx, case, config(case));
        worst = worst.max(check_case(case, &label(case, n, "gpu"), &params, &opt));
        // The CPU twin, for the same case: close (bit-identical on lavapipe).
        let (cpu_params, _) = run_cpu(case);
        for (i, (g, c)) in params.iter().zip(&cpu_params).enumerate() {
            assert_close(
                &label(case, n, &format!("gpu vs cpu t{i}")),
                g,
                c,
                ATOL,
                RTOL,
            );
        }
    }
    eprintln!("{optimizer} gpu vs torch: worst error / tolerance {worst:.3}");
}

#[test]
fn nadam_fixtures_on_cpu() {
    fixtures_on_cpu("nadam");
}

#[test]
fn radam_fixtures_on_cpu() {
    fixtures_on_cpu("radam");
}

#[test]
fn adamax_fixtures_on_cpu() {
    fixtures_on_cpu("adamax");
}

#[test]
fn nadam_fixtures_on_gpu() {
    fixtures_on_gpu("nadam");
}

#[test]
fn radam_fixtures_on_gpu() {
    fixtures_on_gpu("radam");
}

#[test]
fn adamax_fixtures_on_gpu() {
    fixtures_on_gpu("adamax");
}

/// The fixtures cover what they are meant to: RAdam's rectified and plain steps, NAdam's
/// schedules, both weight decays, maximize, exact-zero gradients.
#[test]
fn fixtures_cover_the_branches() {
    let radam = three_cases("radam");
    let mut rectified = false;
    let mut plain = false;
    for case in &radam {
        let OptimizerConfig::Radam(cfg) = config(case) else {
            unreachable!()
        };
        for &t in case.expected.step.values() {
            rectified |= cfg.rectified(t as u64);
            plain |= (1..=t as u64).any(|s| !cfg.rectified(s));
        }
    }
    assert!(rectified && plain, "RAdam fixtures take both branches");
    let nadam = three_cases("nadam");
    assert!(nadam.iter().any(|c| c.f("momentum_decay") != 4e-3));
    assert!(nadam.iter().any(|c| c.b("maximize")));
    assert!(three_cases("adamax").iter().any(|c| c.b("maximize")));
}

// ---------------------------------------------------------------------------------------------
// Defaults, host scalars and the RAdam switch.

#[test]
fn defaults_are_torch_2_15s() {
    assert_eq!(
        NadamConfig::default(),
        NadamConfig {
            lr: 2e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum_decay: 4e-3,
            decoupled_weight_decay: false,
            maximize: false,
        }
    );
    assert_eq!(
        RadamConfig::default(),
        RadamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            maximize: false,
        }
    );
    assert_eq!(
        AdamaxConfig::default(),
        AdamaxConfig {
            lr: 2e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            maximize: false,
        }
    );
    use wgpu_optim::Rule;
    assert_eq!(NadamConfig::default().name(), "nadam");
    assert_eq!(RadamConfig::default().name(), "radam");
    assert_eq!(AdamaxConfig::default().name(), "adamax");
    for (family, bytes) in [("nadam", 28), ("radam", 28), ("adamax", 28)] {
        for c in crate::common::variants_of(family) {
            assert_eq!(c.bytes_per_element(), bytes, "{}", c.describe());
        }
    }
}

/// SPEC-2 §2.2: for every beta2 >= 0.9, rho_t first exceeds 5 at t = 6; for beta2 <= 2/3 never.
#[test]
fn radam_rectification_starts_at_step_six() {
    for beta2 in [0.9, 0.99, 0.999, 0.9999] {
        let c = RadamConfig {
            beta2,
            ..RadamConfig::default()
        };
        let first = (1..100).find(|&t| c.rectified(t));
        assert_eq!(first, Some(6), "beta2 {beta2}");
        assert!((6..10_000).all(|t| c.rectified(t)), "beta2 {beta2}");
    }
    for beta2 in [0.0, 0.5, 2.0 / 3.0] {
        let c = RadamConfig {
            beta2,
            ..RadamConfig::default()
        };
        assert!((1..10_000).all(|t| !c.rectified(t)), "beta2 {beta2}");
    }
}

/// mu_product is per tensor: a tensor frozen on some steps has the product of its own steps'
/// mu_t, on both engines, and an optimizer built afterwards starts again at 1.
#[test]
fn nadam_mu_product_is_per_tensor() {
    let cfg = NadamConfig {
        momentum_decay: 0.3,
        ..NadamConfig::default()
    };
    let specs = [TensorSpec::new("a", 5), TensorSpec::new("b", 3)];
    let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
    assert_eq!(cpu.read_state("mu_product", "a").unwrap(), vec![1.0]);
    let gpu_ctx = gpu();
    let gpu_run = gpu_ctx.as_ref().map(|ctx| {
        let arena = ParamArena::new(ctx, &specs).unwrap();
        let opt = Optimizer::new(ctx, &arena, cfg.clone()).unwrap();
        (arena, opt)
    });
    let mut gpu_run = gpu_run;
    let mut rng = fastrand::Rng::with_seed(11);
    let mut params = vec![randn(&mut rng, 5, 1.0), randn(&mut rng, 3, 1.0)];
    if let Some((arena, _)) = &gpu_run {
        arena.write_all_params(&params).unwrap();
    }
    let frozen_b = [false, true, true, false, false, true, false];
    for (k, &fb) in frozen_b.iter().enumerate() {
        let grads = vec![randn(&mut rng, 5, 1.0), randn(&mut rng, 3, 1.0)];
        cpu.set_frozen("b", fb).unwrap();
        cpu.step(&mut params, &grads).unwrap();
        if let Some((arena, opt)) = &mut gpu_run {
            opt.set_frozen("b", fb).unwrap();
            arena.write_all_grads(&grads).unwrap();
            opt.step(arena).unwrap();
        }
        let t_a = k as u64 + 1;
        let t_b = frozen_b[..=k].iter().filter(|&&f| !f).count() as u64;
        for (name, t) in [("a", t_a), ("b", t_b)] {
            let want: f64 = (1..=t).map(|s| cfg.mu(s as f64)).product();
            assert_eq!(
                cpu.read_state("mu_product", name).unwrap(),
                vec![want as f32]
            );
            if let Some((_, opt)) = &gpu_run {
                assert_eq!(
                    opt.read_state("mu_product", name).unwrap(),
                    vec![want as f32]
                );
                assert_eq!(opt.step_count(name).unwrap(), t);
            }
        }
    }
    // mu_t tends to beta1 only slowly: 0.45 * beta1 / 0.9 at the default psi, beta1 / 2 at 0.
    let d = NadamConfig::default();
    assert!((d.mu(1.0) - 0.45007).abs() < 1e-5);
    let flat = NadamConfig {
        momentum_decay: 0.0,
        ..d
    };
    assert_eq!(flat.mu(7.0), 0.45);
}

// ---------------------------------------------------------------------------------------------
// Invalid hyperparameters.

fn bad_configs() -> Vec<(OptimizerConfig, &'static str)> {
    let n = NadamConfig::default;
    let r = RadamConfig::default;
    let a = AdamaxConfig::default;
    let mut out: Vec<(OptimizerConfig, &'static str)> = Vec::new();
    for lr in [-1e-3, f64::NAN, f64::INFINITY] {
        out.push((NadamConfig { lr, ..n() }.into(), "lr"));
        out.push((RadamConfig { lr, ..r() }.into(), "lr"));
        out.push((AdamaxConfig { lr, ..a() }.into(), "lr"));
    }
    for eps in [-1e-8, f64::NAN] {
        out.push((NadamConfig { eps, ..n() }.into(), "eps"));
        out.push((RadamConfig { eps, ..r() }.into(), "eps"));
        out.push((AdamaxConfig { eps, ..a() }.into(), "eps"));
    }
    for beta in [1.0, -0.1, 1.5, f64::NAN] {
        out.push((NadamConfig { beta1: beta, ..n() }.into(), "beta1"));
        out.push((NadamConfig { beta2: beta, ..n() }.into(), "beta2"));
        out.push((RadamConfig { beta1: beta, ..r() }.into(), "beta1"));
        out.push((RadamConfig { beta2: beta, ..r() }.into(), "beta2"));
        out.push((AdamaxConfig { beta1: beta, ..a() }.into(), "beta1"));
        out.push((AdamaxConfig { beta2: beta, ..a() }.into(), "beta2"));
    }
    for weight_decay in [-1e-2, f64::NAN] {
        out.push((
            NadamConfig {
                weight_decay,
                decoupled_weight_decay: true,
                ..n()
            }
            .into(),
            "weight_decay",
        ));
        out.push((
            NadamConfig {
                weight_decay,
                ..n()
            }
            .into(),
            "weight_decay",
        ));
        out.push((
            RadamConfig {
                weight_decay,
                ..r()
            }
            .into(),
            "weight_decay",
        ));
        out.push((
            RadamConfig {
                weight_decay,
                decoupled_weight_decay: true,
                ..r()
            }
            .into(),
            "weight_decay",
        ));
        out.push((
            AdamaxConfig {
                weight_decay,
                ..a()
            }
            .into(),
            "weight_decay",
        ));
    }
    for momentum_decay in [-4e-3, f64::NAN, f64::NEG_INFINITY] {
        out.push((
            NadamConfig {
                momentum_decay,
                ..n()
            }
            .into(),
            "momentum_decay",
        ));
    }
    out
}

fn hyper_name(e: &Error) -> &'static str {
    match e {
        Error::InvalidHyperparameter { name, .. } => name,
        other => panic!("expected InvalidHyperparameter, got {other:?}"),
    }
}

#[test]
fn invalid_hyperparameters_are_rejected_by_name() {
    let specs = [TensorSpec::new("w", 4), TensorSpec::new("b", 2)];
    for (cfg, field) in bad_configs() {
        assert_eq!(hyper_name(&cfg.validate().unwrap_err()), field, "{cfg:?}");
        let e = CpuOptimizer::new(cfg.clone(), &specs)
            .err()
            .unwrap_or_else(|| panic!("{cfg:?} accepted"));
        assert_eq!(hyper_name(&e), field, "{cfg:?}");
        assert!(e.to_string().contains(field), "message names {field}: {e}");
        let groups = ParamGroups::new()
            .group(Select::names(["w"]), cfg.clone())
            .group(Select::Rest, AdamConfig::adamw());
        let e = CpuOptimizer::with_groups(&specs, groups).err().unwrap();
        assert_eq!(hyper_name(&e), field, "{cfg:?} in a group");
    }
    // The edges torch accepts.
    let ok: Vec<OptimizerConfig> = vec![
        NadamConfig {
            lr: 0.0,
            eps: 0.0,
            beta1: 0.0,
            beta2: 0.0,
            weight_decay: 0.0,
            momentum_decay: 0.0,
            ..NadamConfig::default()
        }
        .into(),
        RadamConfig {
            lr: 0.0,
            eps: 0.0,
            beta1: 0.0,
            beta2: 0.0,
            ..RadamConfig::default()
        }
        .into(),
        AdamaxConfig {
            lr: 0.0,
            eps: 0.0,
            beta1: 0.0,
            beta2: 0.0,
            ..AdamaxConfig::default()
        }
        .into(),
    ];
    for cfg in ok {
        CpuOptimizer::new(cfg.clone(), &specs).unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
    }
}

#[test]
fn invalid_hyperparameters_are_rejected_on_gpu() {
    let Some(ctx) = gpu() else { return };
    let specs = [TensorSpec::new("w", 4), TensorSpec::new("b", 2)];
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    for (cfg, field) in bad_configs() {
        let e = Optimizer::new(&ctx, &arena, cfg.clone())
            .err()
            .unwrap_or_else(|| panic!("{cfg:?} accepted"));
        assert_eq!(hyper_name(&e), field, "{cfg:?}");
    }
    // A running optimizer refuses a bad group config and keeps the old one.
    let mut opt = Optimizer::new(&ctx, &arena, NadamConfig::default()).unwrap();
    let e = opt
        .set_group_config(
            0,
            NadamConfig {
                momentum_decay: -1.0,
                ..NadamConfig::default()
            },
        )
        .unwrap_err();
    assert_eq!(hyper_name(&e), "momentum_decay");
    assert_eq!(
        opt.group_config(0).unwrap(),
        &OptimizerConfig::from(NadamConfig::default())
    );
}

// ---------------------------------------------------------------------------------------------
// WGSL mirrors and variants.

#[test]
fn uniform_structs_have_the_wgsl_sizes() {
    use std::mem::size_of;
    use wgpu_optim::optim::{adamax, nadam, radam};
    use wgpu_optim::shaders::KernelDef;
    let cases: [(KernelDef, &str, usize); 6] = [
        (
            nadam::NADAM_STEP,
            "NadamHyper",
            size_of::<nadam::NadamHyper>(),
        ),
        (
            nadam::NADAM_STEP,
            "NadamTensor",
            size_of::<nadam::NadamTensor>(),
        ),
        (
            radam::RADAM_STEP,
            "RadamHyper",
            size_of::<radam::RadamHyper>(),
        ),
        (
            radam::RADAM_STEP,
            "RadamTensor",
            size_of::<radam::RadamTensor>(),
        ),
        (
            adamax::ADAMAX_STEP,
            "AdamaxHyper",
            size_of::<adamax::AdamaxHyper>(),
        ),
        (
            adamax::ADAMAX_STEP,
            "AdamaxTensor",
            size_of::<adamax::AdamaxTensor>(),
        ),
    ];
    crate::common::naga_sizes::assert_wgsl_sizes(&cases, true);
    // The WGSL flag constants equal the Rust ones.
    for (k, wgsl, rust) in [
        (nadam::NADAM_STEP, "NADAM_DECOUPLED", nadam::NADAM_DECOUPLED),
        (radam::RADAM_STEP, "RADAM_DECOUPLED", radam::RADAM_DECOUPLED),
    ] {
        let line = format!("const {wgsl}: u32 = {rust}u;");
        assert!(k.source.contains(&line), "{line}");
    }
}

#[test]
fn variants_exercise_every_flag() {
    let nadam: Vec<NadamConfig> = crate::common::variants_of("nadam")
        .into_iter()
        .map(|c| match c {
            OptimizerConfig::Nadam(x) => x,
            _ => unreachable!(),
        })
        .collect();
    let radam: Vec<RadamConfig> = crate::common::variants_of("radam")
        .into_iter()
        .map(|c| match c {
            OptimizerConfig::Radam(x) => x,
            _ => unreachable!(),
        })
        .collect();
    let adamax: Vec<AdamaxConfig> = crate::common::variants_of("adamax")
        .into_iter()
        .map(|c| match c {
            OptimizerConfig::Adamax(x) => x,
            _ => unreachable!(),
        })
        .collect();
    for m in [false, true] {
        assert!(nadam.iter().any(|c| c.maximize == m));
        assert!(radam.iter().any(|c| c.maximize == m));
        assert!(adamax.iter().any(|c| c.maximize == m));
        for d in [false, true] {
            assert!(nadam
                .iter()
                .any(|c| c.decoupled_weight_decay == d && c.weight_decay != 0.0));
            assert!(radam
                .iter()
                .any(|c| c.decoupled_weight_decay == d && c.weight_decay != 0.0));
        }
    }
    assert!(nadam.iter().any(|c| c.weight_decay == 0.0));
    assert!(nadam.iter().any(|c| c.momentum_decay == 0.0));
    assert!(nadam.iter().any(|c| c.momentum_decay >= 1.0));
    assert!(adamax.iter().any(|c| c.weight_decay != 0.0));
    assert!(adamax.iter().any(|c| c.weight_decay == 0.0));
    // torch.lerp's second branch (1 - beta1 >= 0.5).
    assert!(nadam.iter().any(|c| c.beta1 == 0.0));
    assert!(radam.iter().any(|c| c.beta1 == 0.0));
    assert!(adamax.iter().any(|c| c.beta1 == 0.0));
    // RAdam: rectified from step 6 within the tests' 7 steps, and never.
    assert!(radam.iter().any(|c| c.rectified(6)));
    assert!(radam.iter().any(|c| !c.rectified(1000)));
    // lr reaches the kernel.
    assert!(nadam.iter().all(|c| c.lr != NadamConfig::default().lr));
    assert!(radam.iter().all(|c| c.lr != RadamConfig::default().lr));
    assert!(adamax.iter().all(|c| c.lr != AdamaxConfig::default().lr));
    // Presets: unique names of the right families.
    let presets = OptimizerConfig::presets();
    for (name, family) in [
        ("nadam", "nadam"),
        ("nadamw", "nadam"),
        ("radam", "radam"),
        ("radamw", "radam"),
        ("adamax", "adamax"),
    ] {
        let found: Vec<_> = presets.iter().filter(|p| p.name == name).collect();
        assert_eq!(found.len(), 1, "{name}");
        assert_eq!(found[0].config.family(), family);
        assert_eq!(found[0].config.name(), name);
    }
}

// ---------------------------------------------------------------------------------------------
// GPU against CPU: RAdam past its switch, and two segments.

/// Steps `cfgs` (as a single optimizer when `groups` is None) for `steps` steps on the GPU and
/// the CPU side by side, freezing by `frozen(step, tensor)`, comparing params and every state
/// of every tensor after every step. Returns whether everything was bit-identical.
fn side_by_side(
    specs: &[TensorSpec],
    groups: ParamGroups,
    steps: usize,
    frozen: impl Fn(usize, usize) -> bool,
    seed: u64,
    what: &str,
) -> Option<bool> {
    let ctx = gpu()?;
    let arena = ParamArena::new(&ctx, specs).unwrap();
    let mut opt = Optimizer::with_groups(&ctx, &arena, groups.clone()).unwrap();
    let mut cpu = CpuOptimizer::with_groups(specs, groups).unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut params: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 1.0)).collect();
    arena.write_all_params(&params).unwrap();
    let mut bitwise = true;
    let mut taken = vec![0u64; specs.len()];
    for k in 0..steps {
        let mut grads: Vec<Vec<f32>> = specs.iter().map(|s| randn(&mut rng, s.len, 0.5)).collect();
        // Exact zeros (Adamax divides by eps there).
        for g in grads.iter_mut() {
            for (j, x) in g.iter_mut().enumerate() {
                if (j + k) % 7 == 0 {
                    *x = 0.0;
                }
            }
        }
        let before = arena.read_all_params().unwrap();
        for (i, s) in specs.iter().enumerate() {
            let fz = frozen(k, i);
            opt.set_frozen(&s.name, fz).unwrap();
            cpu.set_frozen(&s.name, fz).unwrap();
            if !fz && opt.group_of(&s.name).unwrap().is_some() {
                taken[i] += 1;
            }
        }
        if k == 3 {
            // An lr change mid-run reaches both engines.
            opt.set_lr_factor(0.5).unwrap();
            cpu.set_lr_factor(0.5).unwrap();
        }
        arena.write_all_grads(&grads).unwrap();
        opt.step(&arena).unwrap();
        cpu.step(&mut params, &grads).unwrap();
        let got = arena.read_all_params().unwrap();
        for (i, s) in specs.iter().enumerate() {
            let w = format!("{what} step {k} {}", s.name);
            assert_close(&format!("{w} param"), &got[i], &params[i], ATOL, RTOL);
            bitwise &= bits_eq(&got[i], &params[i]);
            if frozen(k, i) {
                assert!(bits_eq(&got[i], &before[i]), "{w}: frozen param changed");
            }
            assert_eq!(opt.step_count(&s.name).unwrap(), taken[i], "{w}");
            assert_eq!(cpu.step_count(&s.name).unwrap(), taken[i], "{w}");
            let names = cpu.tensor_state_names(&s.name).unwrap();
            assert_eq!(opt.tensor_state_names(&s.name).unwrap(), names, "{w}");
            for st in names {
                let want = cpu.read_state(st, &s.name).unwrap();
                let have = opt.read_state(st, &s.name).unwrap();
                assert_close(&format!("{w} {st}"), &have, &want, ATOL, RTOL);
                bitwise &= bits_eq(&have, &want);
            }
        }
    }
    Some(bitwise)
}

/// Every RAdam variant for 12 steps, so that every tensor, frozen or not, passes its switch
/// at its own step 6 (the table's 7-step runs reach it only on some tensors).
#[test]
fn radam_past_the_switch_matches_cpu() {
    let specs = [
        TensorSpec::new("a", 4097),
        TensorSpec::new("b", 255),
        TensorSpec::new("c", 1),
        TensorSpec::new("d", 0),
        TensorSpec::shaped("e", &[3, 5]),
    ];
    for (j, cfg) in crate::common::variants_of("radam").into_iter().enumerate() {
        let groups = ParamGroups::new().group(Select::Rest, cfg.clone());
        let frozen = |k: usize, i: usize| (k + i) % 4 == 1;
        let Some(bitwise) =
            side_by_side(&specs, groups, 12, frozen, 40 + j as u64, &cfg.describe())
        else {
            return;
        };
        eprintln!("{}: bit-identical {bitwise}", cfg.describe());
    }
}

/// Each rule on some tensors and AdamW on the rest, one optimizer of two segments, GPU
/// against CPU over 7 steps with a frozen tensor in each segment.
#[test]
fn two_segments_with_adamw_match_cpu() {
    let specs = [
        TensorSpec::shaped("fc1.weight", &[40, 30]),
        TensorSpec::new("fc1.bias", 40),
        TensorSpec::shaped("fc2.weight", &[10, 40]),
        TensorSpec::new("fc2.bias", 10),
        TensorSpec::new("frozen.weight", 300),
        TensorSpec::new("frozen.bias", 7),
        TensorSpec::new("empty", 0),
    ];
    let rules: Vec<OptimizerConfig> = vec![
        NadamConfig {
            lr: 0.01,
            weight_decay: 1e-2,
            decoupled_weight_decay: true,
            ..NadamConfig::default()
        }
        .into(),
        NadamConfig {
            lr: 0.01,
            weight_decay: 1e-2,
            maximize: true,
            ..NadamConfig::default()
        }
        .into(),
        RadamConfig {
            lr: 0.01,
            weight_decay: 1e-2,
            decoupled_weight_decay: true,
            ..RadamConfig::default()
        }
        .into(),
        AdamaxConfig {
            lr: 0.01,
            weight_decay: 1e-2,
            ..AdamaxConfig::default()
        }
        .into(),
    ];
    for (j, rule) in rules.into_iter().enumerate() {
        let groups = ParamGroups::new()
            .group(
                Select::names(["fc1.weight", "fc2.weight", "frozen.weight", "empty"]),
                rule.clone(),
            )
            .group(Select::Rest, AdamConfig::adamw());
        if let Some(ctx) = gpu() {
            let arena = ParamArena::new(&ctx, &specs).unwrap();
            let opt = Optimizer::with_groups(&ctx, &arena, groups.clone()).unwrap();
            assert_eq!(opt.segments(), 2);
            assert_eq!(opt.name(), format!("{}+adamw", rule.name()));
        }
        // frozen.weight (the rule's) on steps 0, 2, 3; frozen.bias (AdamW's) on steps 1, 4.
        let frozen = |k: usize, i: usize| match i {
            4 => [0, 2, 3].contains(&k),
            5 => [1, 4].contains(&k),
            _ => false,
        };
        let what = format!("{}+adamw", rule.describe());
        let Some(bitwise) = side_by_side(&specs, groups, 7, frozen, 70 + j as u64, &what) else {
            return;
        };
        eprintln!("{what}: bit-identical {bitwise}");
    }
}

/// A NaN gradient element makes `exp_inf` NaN there, as `torch.maximum` propagates NaN (WGSL's
/// `max` and `f32::max` would drop it), on the CPU and on the GPU alike.
#[test]
fn adamax_nan_gradient_propagates_into_exp_inf() {
    let specs = [wgpu_optim::TensorSpec::new("t", 9)];
    let mut g = vec![0.5f32; 9];
    g[4] = f32::NAN;
    let mut cpu =
        wgpu_optim::CpuOptimizer::new(wgpu_optim::AdamaxConfig::default(), &specs).unwrap();
    let mut p = vec![vec![1.0f32; 9]];
    cpu.step(&mut p, &[g.clone()]).unwrap();
    let u = cpu.read_state("exp_inf", "t").unwrap();
    assert!(u[4].is_nan() && u[3] == 0.5 + 1e-8, "{u:?}");
    let Some(ctx) = crate::common::gpu() else {
        return;
    };
    let arena = wgpu_optim::ParamArena::new(&ctx, &specs).unwrap();
    arena.write_all_params(&[vec![1.0f32; 9]]).unwrap();
    arena.write_all_grads(&[g]).unwrap();
    let mut opt =
        wgpu_optim::Optimizer::new(&ctx, &arena, wgpu_optim::AdamaxConfig::default()).unwrap();
    opt.step(&arena).unwrap();
    let ug = opt.read_state("exp_inf", "t").unwrap();
    assert!(ug[4].is_nan(), "{ug:?}");
    assert_eq!(ug[3].to_bits(), u[3].to_bits());
}
