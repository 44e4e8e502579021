//! Lion and ADOPT (timm): the timm 1.0.31 golden cases through the CPU reference and the GPU
//! kernels (params, every state key, step counts, state names), Lion's caution against an f64
//! re-implementation of timm's loop (the fixtures have no cautious Lion case), every
//! hyperparameter timm's constructors reject, the WGSL struct sizes, the variants' flag
//! coverage, caution edge cases (all-masked tensors, large tensors over many chunks), and each
//! rule next to AdamW in a two-segment optimizer.

use crate::common::more_cases::{self, three_cases, MoreCase, Probe};
use crate::common::{assert_close, assert_twin, exact_adapter, f32s, gpu, randn, ATOL, RTOL};
use wgpu_optim::optim::{adopt, lion};
use wgpu_optim::ParamGroupTable;
use wgpu_optim::{
    AdamConfig, AdoptConfig, CpuOptimizer, Error, LionConfig, Optimizer, OptimizerConfig,
    ParamArena, ParamGroups, Select, TensorSpec,
};

// ---------------------------------------------------------------------------------------------
// The fixtures (tests/fixtures/torch_optim_more_cases.json, format in tests/fixtures/README.md).

/// The timm constructor call as our config.
fn config(case: &MoreCase) -> OptimizerConfig {
    match case.optimizer.as_str() {
        "lion" => {
            case.check_keys(&["lr", "betas", "weight_decay", "caution", "maximize"]);
            LionConfig {
                lr: case.f("lr"),
                beta1: case.beta(0),
                beta2: case.beta(1),
                weight_decay: case.f("weight_decay"),
                caution: case.b("caution"),
                maximize: case.b("maximize"),
            }
            .into()
        }
        "adopt" => {
            case.check_keys(&[
                "lr",
                "betas",
                "eps",
                "clip_exp",
                "weight_decay",
                "decoupled",
                "caution",
                "maximize",
            ]);
            AdoptConfig {
                lr: case.f("lr"),
                beta1: case.beta(0),
                beta2: case.beta(1),
                eps: case.f("eps"),
                clip_exp: case.hyper["clip_exp"].as_f64(),
                weight_decay: case.f("weight_decay"),
                decoupled: case.b("decoupled"),
                caution: case.b("caution"),
                maximize: case.b("maximize"),
            }
            .into()
        }
        o => panic!("not a case of this file: {o}"),
    }
}

/// Params, every state key of the fixture, step counts (timm's where it keeps them, else the
/// engine's count of live steps) and state names of every tensor that stepped.
fn check_case(what: &str, case: &MoreCase, got_params: &[Vec<f32>], opt: &dyn Probe) {
    for (i, want) in case.expected.params.iter().enumerate() {
        assert_close(
            &format!("{what} param {i}"),
            &got_params[i],
            &f32s(want),
            ATOL,
            RTOL,
        );
    }
    for (key, want) in &case.expected.state {
        let (i, name) = key.split_once('.').unwrap();
        let got = opt.state(name, &format!("t{i}")).unwrap();
        assert_close(
            &format!("{what} state {key}"),
            &got,
            &f32s(want),
            ATOL,
            RTOL,
        );
    }
    for i in 0..case.lengths.len() {
        let t = format!("t{i}");
        let want = match case.expected.step.get(&i.to_string()) {
            Some(&s) => s as u64,
            None => case.steps_of(i),
        };
        assert_eq!(opt.steps(&t), want, "{what} step count of {t}");
        if want > 0 {
            let mut keys: Vec<&str> = case
                .expected
                .state
                .keys()
                .filter_map(|k| k.split_once('.'))
                .filter(|(j, _)| *j == i.to_string())
                .map(|(_, n)| n)
                .collect();
            keys.sort();
            let mut names = opt.names(&t);
            names.sort();
            assert_eq!(names, keys, "{what} state names of {t}");
        }
    }
}

fn run_cpu(case: &MoreCase) -> (Vec<Vec<f32>>, CpuOptimizer) {
    more_cases::run_cpu(case, config(case))
}

fn fixture_cases_on_cpu(optimizer: &str) {
    for (ci, case) in three_cases(optimizer).iter().enumerate() {
        let (params, cpu) = run_cpu(case);
        let what = format!("cpu {optimizer} case {ci} {:?}", case.hyper);
        check_case(&what, case, &params, &cpu);
    }
}

fn fixture_cases_on_gpu(optimizer: &str) {
    let Some(ctx) = gpu() else { return };
    for (ci, case) in three_cases(optimizer).iter().enumerate() {
        let (got, opt) = more_cases::run_gpu(&ctx, case, config(case));
        let what = format!("gpu {optimizer} case {ci} {:?}", case.hyper);
        check_case(&what, case, &got, &opt);
        // And the CPU reference, bit for bit on lavapipe.
        let (params, _) = run_cpu(case);
        for (i, (g, c)) in got.iter().zip(&params).enumerate() {
            assert_twin(
                &ctx,
                &format!("{what}: tensor {i} vs the CPU reference"),
                g,
                c,
            );
        }
    }
}

#[test]
fn lion_cpu_matches_timm_fixtures() {
    fixture_cases_on_cpu("lion");
}

#[test]
fn lion_gpu_matches_timm_fixtures() {
    fixture_cases_on_gpu("lion");
}

#[test]
fn adopt_cpu_matches_timm_fixtures() {
    fixture_cases_on_cpu("adopt");
}

#[test]
fn adopt_gpu_matches_timm_fixtures() {
    fixture_cases_on_gpu("adopt");
}

// ---------------------------------------------------------------------------------------------
// Lion's caution: the fixtures have no cautious Lion case, so an f64 re-implementation of timm's
// `_single_tensor_lion` (torch's lerp branch rule, the mask mean, the 1e-3 clamp) is the oracle.

fn lerp64(a: f64, b: f64, w: f64) -> f64 {
    if w.abs() < 0.5 {
        a + w * (b - a)
    } else {
        b - (b - a) * (1.0 - w)
    }
}

fn sign64(x: f64) -> f64 {
    (x > 0.0) as i32 as f64 - (x < 0.0) as i32 as f64
}

/// One step of timm's Lion on one tensor, in f64.
fn lion_step64(c: &LionConfig, p: &mut [f64], m: &mut [f64], g: &[f64]) {
    let g: Vec<f64> = g.iter().map(|&x| if c.maximize { -x } else { x }).collect();
    for x in p.iter_mut() {
        *x *= 1.0 - c.lr * c.weight_decay;
    }
    let mut u: Vec<f64> = (0..p.len())
        .map(|i| sign64(lerp64(m[i], g[i], 1.0 - c.beta1)))
        .collect();
    if c.caution && !p.is_empty() {
        let mask: Vec<f64> = (0..p.len())
            .map(|i| (u[i] * g[i] > 0.0) as i32 as f64)
            .collect();
        let mean = (mask.iter().sum::<f64>() / p.len() as f64).max(1e-3);
        for i in 0..p.len() {
            u[i] *= mask[i] / mean;
        }
    }
    for i in 0..p.len() {
        p[i] -= c.lr * u[i];
        m[i] = lerp64(m[i], g[i], 1.0 - c.beta2);
    }
}

#[test]
fn lion_caution_matches_an_f64_timm_loop() {
    let lens = [1usize, 7, 300, 5000, 0, 9000];
    let specs: Vec<TensorSpec> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n))
        .collect();
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    for cfg in [
        LionConfig {
            lr: 1e-3,
            caution: true,
            ..LionConfig::default()
        },
        LionConfig {
            lr: 3e-3,
            beta1: 0.3,
            beta2: 0.95,
            weight_decay: 0.5,
            caution: true,
            maximize: true,
        },
    ] {
        let mut rng = fastrand::Rng::with_seed(77);
        let init: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
        let mut p64: Vec<Vec<f64>> = init
            .iter()
            .map(|v| v.iter().map(|&x| x as f64).collect())
            .collect();
        let mut m64: Vec<Vec<f64>> = lens.iter().map(|&n| vec![0.0; n]).collect();
        let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
        let ctx = gpu();
        let mut gpu_run = ctx.as_ref().map(|ctx| {
            let arena = ParamArena::new(ctx, &specs).unwrap();
            arena.write_all_params(&init).unwrap();
            let opt = Optimizer::new(ctx, &arena, cfg.clone()).unwrap();
            (arena, opt)
        });
        let mut params = init.clone();
        for k in 0..7 {
            // Gradients with exact zeros (about 10%) and a tensor frozen on odd steps.
            let grads: Vec<Vec<f32>> = lens
                .iter()
                .map(|&n| {
                    randn(&mut rng, n, 0.5)
                        .into_iter()
                        .map(|x| if rng.u8(..) < 26 { 0.0 } else { x })
                        .collect()
                })
                .collect();
            let frozen = |i: usize| i == 2 && k % 2 == 1;
            for (i, name) in names.iter().enumerate() {
                cpu.set_frozen(name, frozen(i)).unwrap();
                if let Some((_, opt)) = gpu_run.as_mut() {
                    opt.set_frozen(name, frozen(i)).unwrap();
                }
            }
            cpu.step(&mut params, &grads).unwrap();
            for i in 0..lens.len() {
                if !frozen(i) {
                    let g: Vec<f64> = grads[i].iter().map(|&x| x as f64).collect();
                    lion_step64(&cfg, &mut p64[i], &mut m64[i], &g);
                }
            }
            let what = format!("{cfg:?} step {k}");
            for i in 0..lens.len() {
                assert_close(
                    &format!("{what} cpu param {i}"),
                    &params[i],
                    &f32s(&p64[i]),
                    ATOL,
                    RTOL,
                );
                let m = cpu.read_state("exp_avg", &names[i]).unwrap();
                assert_close(&format!("{what} cpu m {i}"), &m, &f32s(&m64[i]), ATOL, RTOL);
            }
            if let Some((arena, opt)) = gpu_run.as_mut() {
                arena.write_all_grads(&grads).unwrap();
                opt.step(arena).unwrap();
                let got = arena.read_all_params().unwrap();
                let ctx = ctx.as_ref().unwrap();
                for i in 0..lens.len() {
                    assert_twin(ctx, &format!("{what} gpu param {i}"), &got[i], &params[i]);
                    let m = opt.read_state("exp_avg", &names[i]).unwrap();
                    let want = cpu.read_state("exp_avg", &names[i]).unwrap();
                    assert_twin(ctx, &format!("{what} gpu m {i}"), &m, &want);
                }
            }
        }
    }
}

/// A tensor whose every direction disagrees with (or is zero against) its gradient: the mask
/// mean is 0, clamped at 1e-3, and nothing moves (u = 0), on the CPU and the GPU alike. Also an
/// all-zero gradient (sign 0 everywhere).
#[test]
fn caution_with_an_all_masked_tensor_stays_finite() {
    let specs = [TensorSpec::new("a", 9), TensorSpec::new("z", 5000)];
    let lion = LionConfig {
        lr: 0.1,
        beta1: 0.9,
        caution: true,
        ..LionConfig::default()
    };
    let adopt = AdoptConfig {
        lr: 0.1,
        caution: true,
        ..AdoptConfig::default()
    };
    let ctx = gpu();
    for cfg in [OptimizerConfig::from(lion), adopt.into()] {
        let init = vec![vec![0.5f32; 9], vec![-0.25f32; 5000]];
        // Step 0 builds m along +1 (and ADOPT's v); step 1 pushes a small negative gradient,
        // whose interpolation with beta1 = 0.9 stays positive: u*g < 0 everywhere in "a".
        let g0 = vec![vec![1.0f32; 9], vec![0.0; 5000]];
        let g1 = vec![vec![-0.01f32; 9], vec![0.0; 5000]];
        let g2 = vec![vec![-0.01f32; 9], vec![0.0; 5000]];
        let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
        let mut params = init.clone();
        cpu.step(&mut params, &g0).unwrap();
        let after0 = params.clone();
        cpu.step(&mut params, &g1).unwrap();
        cpu.step(&mut params, &g2).unwrap();
        let what = cfg.name();
        assert!(params.iter().flatten().all(|x| x.is_finite()), "{what}");
        // The all-zero gradient never moves "z".
        assert!(params[1].iter().all(|&x| x == -0.25), "{what}");
        if cfg.family() == "lion" {
            // "a" moved on step 0 only.
            assert_eq!(params[0], after0[0], "{what}");
            assert!(after0[0].iter().all(|&x| x < 0.5), "{what}");
        }
        if let Some(ctx) = &ctx {
            let arena = ParamArena::new(ctx, &specs).unwrap();
            arena.write_all_params(&init).unwrap();
            let mut opt = Optimizer::new(ctx, &arena, cfg.clone()).unwrap();
            for g in [&g0, &g1, &g2] {
                arena.write_all_grads(g).unwrap();
                opt.step(&arena).unwrap();
            }
            let got = arena.read_all_params().unwrap();
            for i in 0..2 {
                assert_twin(ctx, &format!("{what} gpu tensor {i}"), &got[i], &params[i]);
            }
        }
    }
}

/// Caution over tensors of many chunks (the per-chunk counts and their u32 sum), in several
/// binding windows, GPU against CPU bit for bit, for both rules.
#[test]
fn caution_over_many_chunks_and_windows_matches_cpu() {
    let Some(ctx) = crate::common::gpu_with(wgpu_optim::ContextOptions {
        max_binding_bytes: Some(64 * 1024),
        ..Default::default()
    }) else {
        return;
    };
    let lens = [70_000usize, 3, 40_961, 1];
    let specs: Vec<TensorSpec> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n))
        .collect();
    for cfg in [
        OptimizerConfig::from(LionConfig {
            lr: 1e-3,
            beta1: 0.5,
            caution: true,
            ..LionConfig::default()
        }),
        AdoptConfig {
            lr: 1e-2,
            weight_decay: 0.1,
            caution: true,
            ..AdoptConfig::default()
        }
        .into(),
    ] {
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        let mut opt = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
        assert!(opt.segment_layout(0).unwrap().windows().len() > 3);
        let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
        let mut rng = fastrand::Rng::with_seed(5);
        let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
        arena.write_all_params(&params).unwrap();
        for k in 0..5 {
            let grads: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 0.5)).collect();
            arena.write_all_grads(&grads).unwrap();
            opt.step(&arena).unwrap();
            cpu.step(&mut params, &grads).unwrap();
            let got = arena.read_all_params().unwrap();
            for i in 0..lens.len() {
                let what = format!("{} step {k} tensor {i}", cfg.name());
                assert_twin(&ctx, &what, &got[i], &params[i]);
                for st in cpu.tensor_state_names(&format!("t{i}")).unwrap() {
                    let want = cpu.read_state(st, &format!("t{i}")).unwrap();
                    let g = opt.read_state(st, &format!("t{i}")).unwrap();
                    assert_twin(&ctx, &format!("{what} {st}"), &g, &want);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Constructor checks: what timm's constructors reject, the typed error named after the field.

fn rejects(cfg: OptimizerConfig, field: &str) {
    let specs = [TensorSpec::new("w", 10)];
    let what = format!("{cfg:?}");
    match CpuOptimizer::new(cfg.clone(), &specs) {
        Err(Error::InvalidHyperparameter { name, .. }) => assert_eq!(name, field, "{what}"),
        other => panic!("{what}: expected InvalidHyperparameter({field}), got {other:?}"),
    }
    // A group's configuration cannot be replaced by it either, and nothing changes.
    let good = match &cfg {
        OptimizerConfig::Lion(_) => OptimizerConfig::from(LionConfig::default()),
        _ => AdoptConfig::default().into(),
    };
    let mut ok = CpuOptimizer::new(good.clone(), &specs).unwrap();
    assert!(matches!(
        ok.set_group_config(0, cfg.clone()),
        Err(Error::InvalidHyperparameter { .. })
    ));
    assert_eq!(ok.group_config(0).unwrap(), &good);
    if let Some(ctx) = gpu() {
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        match Optimizer::new(&ctx, &arena, cfg.clone()) {
            Err(Error::InvalidHyperparameter { name, .. }) => assert_eq!(name, field, "{what}"),
            other => panic!("{what}: expected InvalidHyperparameter({field}), got {other:?}"),
        }
    }
}

#[test]
fn lion_rejects_what_timm_rejects() {
    let d = LionConfig::default;
    for (cfg, field) in [
        (LionConfig { lr: -1e-4, ..d() }, "lr"),
        (
            LionConfig {
                lr: f64::NAN,
                ..d()
            },
            "lr",
        ),
        (LionConfig { beta1: 1.0, ..d() }, "beta1"),
        (LionConfig { beta1: -0.1, ..d() }, "beta1"),
        (LionConfig { beta2: 1.0, ..d() }, "beta2"),
        (
            LionConfig {
                beta2: -1e-9,
                ..d()
            },
            "beta2",
        ),
        // timm accepts any weight decay; a non-finite one could only give NaN.
        (
            LionConfig {
                weight_decay: f64::INFINITY,
                ..d()
            },
            "weight_decay",
        ),
    ] {
        rejects(cfg.into(), field);
    }
    // What timm accepts: a negative weight decay, lr 0, beta 0.
    for ok in [
        LionConfig {
            weight_decay: -0.1,
            ..d()
        },
        LionConfig { lr: 0.0, ..d() },
        LionConfig {
            beta1: 0.0,
            beta2: 0.0,
            ..d()
        },
    ] {
        CpuOptimizer::new(ok, &[TensorSpec::new("w", 3)]).unwrap();
    }
}

#[test]
fn adopt_rejects_what_timm_rejects() {
    let d = AdoptConfig::default;
    for (cfg, field) in [
        (AdoptConfig { lr: -1e-3, ..d() }, "lr"),
        (
            AdoptConfig {
                lr: f64::NAN,
                ..d()
            },
            "lr",
        ),
        (AdoptConfig { eps: -1e-6, ..d() }, "eps"),
        (AdoptConfig { beta1: 1.0, ..d() }, "beta1"),
        (AdoptConfig { beta1: -0.5, ..d() }, "beta1"),
        (AdoptConfig { beta2: 1.0, ..d() }, "beta2"),
        (
            AdoptConfig {
                beta2: f64::NAN,
                ..d()
            },
            "beta2",
        ),
        (
            AdoptConfig {
                weight_decay: -0.01,
                ..d()
            },
            "weight_decay",
        ),
        // timm does not check clip_exp; a non-finite one could only give NaN bounds.
        (
            AdoptConfig {
                clip_exp: Some(f64::NAN),
                ..d()
            },
            "clip_exp",
        ),
    ] {
        rejects(cfg.into(), field);
    }
    for ok in [
        AdoptConfig {
            eps: 0.0,
            lr: 0.0,
            ..d()
        },
        AdoptConfig {
            clip_exp: None,
            ..d()
        },
        AdoptConfig {
            clip_exp: Some(-0.5),
            ..d()
        },
    ] {
        CpuOptimizer::new(ok, &[TensorSpec::new("w", 3)]).unwrap();
    }
}

#[test]
fn defaults_are_timm_1_0_31s() {
    assert_eq!(
        LionConfig::default(),
        LionConfig {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.99,
            weight_decay: 0.0,
            caution: false,
            maximize: false,
        }
    );
    assert_eq!(
        AdoptConfig::default(),
        AdoptConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.9999,
            eps: 1e-6,
            clip_exp: Some(0.333),
            weight_decay: 0.0,
            decoupled: false,
            caution: false,
            maximize: false,
        }
    );
    assert_eq!(OptimizerConfig::preset("lion").unwrap().family(), "lion");
    assert_eq!(OptimizerConfig::preset("adopt").unwrap().family(), "adopt");
}

// ---------------------------------------------------------------------------------------------
// WGSL mirrors and the table's variants.

#[test]
fn wgsl_structs_have_the_rust_sizes() {
    use std::mem::size_of;
    use wgpu_optim::shaders::KernelDef;
    let cases: [(KernelDef, &str, usize); 4] = [
        (lion::LION_STEP, "LionHyper", size_of::<lion::LionHyper>()),
        (lion::LION_STEP, "LionTensor", size_of::<lion::LionTensor>()),
        (
            adopt::ADOPT_STEP,
            "AdoptHyper",
            size_of::<adopt::AdoptHyper>(),
        ),
        (
            adopt::ADOPT_STEP,
            "AdoptTensor",
            size_of::<adopt::AdoptTensor>(),
        ),
    ];
    // Uniform array stride and the table rows stay 16-byte multiples.
    crate::common::naga_sizes::assert_wgsl_sizes(&cases, true);
    // The flag constants agree with the WGSL.
    let wgsl_const = |src: &str, name: &str| -> u32 {
        let line = src
            .lines()
            .find(|l| l.starts_with(&format!("const {name}: u32 = ")))
            .unwrap_or_else(|| panic!("{name}"));
        line.split('=')
            .nth(1)
            .unwrap()
            .trim()
            .trim_end_matches("u;")
            .parse()
            .unwrap()
    };
    let (l, a) = (lion::LION_STEP.source, adopt::ADOPT_STEP.source);
    assert_eq!(wgsl_const(l, "LION_CAUTION"), lion::LION_CAUTION);
    assert_eq!(wgsl_const(a, "ADOPT_CAUTION"), adopt::ADOPT_CAUTION);
    assert_eq!(wgsl_const(a, "ADOPT_DECOUPLED"), adopt::ADOPT_DECOUPLED);
    assert_eq!(wgsl_const(a, "ADOPT_CLIP"), adopt::ADOPT_CLIP);
}

#[test]
fn variants_exercise_every_flag() {
    use wgpu_optim::Rule;
    let l = LionConfig::variants();
    let d = LionConfig::default();
    assert!(l.iter().all(|c| c.lr != d.lr));
    for (what, has) in [
        ("caution", l.iter().any(|c| c.caution)),
        ("no caution", l.iter().any(|c| !c.caution)),
        ("maximize", l.iter().any(|c| c.maximize)),
        ("weight_decay", l.iter().any(|c| c.weight_decay != 0.0)),
        ("beta1 <= 0.5", l.iter().any(|c| c.beta1 <= 0.5)),
        ("beta1 > 0.5", l.iter().any(|c| c.beta1 > 0.5)),
    ] {
        assert!(has, "lion variants: {what}");
    }
    let a = AdoptConfig::variants();
    let d = AdoptConfig::default();
    assert!(a.iter().all(|c| c.lr != d.lr));
    for (what, has) in [
        ("caution", a.iter().any(|c| c.caution)),
        ("no caution", a.iter().any(|c| !c.caution)),
        ("maximize", a.iter().any(|c| c.maximize)),
        (
            "L2 decay",
            a.iter().any(|c| c.weight_decay != 0.0 && !c.decoupled),
        ),
        (
            "decoupled decay",
            a.iter().any(|c| c.weight_decay != 0.0 && c.decoupled),
        ),
        (
            "caution with L2 decay",
            a.iter()
                .any(|c| c.caution && c.weight_decay != 0.0 && !c.decoupled),
        ),
        ("clip_exp None", a.iter().any(|c| c.clip_exp.is_none())),
        ("clip_exp Some", a.iter().any(|c| c.clip_exp.is_some())),
        ("beta1 <= 0.5", a.iter().any(|c| c.beta1 <= 0.5)),
    ] {
        assert!(has, "adopt variants: {what}");
    }
    // Both are in the library's table.
    let families: Vec<&str> = OptimizerConfig::variants()
        .iter()
        .map(|c| c.family())
        .collect();
    assert!(families.contains(&"lion") && families.contains(&"adopt"));
}

// ---------------------------------------------------------------------------------------------
// Two segments: each rule on some tensors, AdamW on the rest, GPU against CPU over 7 steps with
// a frozen tensor (and a tensor frozen before its first step, for ADOPT's warm-up).

#[test]
fn next_to_adamw_in_two_segments() {
    let Some(ctx) = gpu() else { return };
    let specs = vec![
        TensorSpec::shaped("w1", &[64, 33]),
        TensorSpec::new("b1", 64),
        TensorSpec::shaped("w2", &[10, 64]),
        TensorSpec::new("b2", 10),
        TensorSpec::new("emb", 5000),
    ];
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let lens: Vec<usize> = specs.iter().map(|s| s.len).collect();
    let ours: [OptimizerConfig; 2] = [
        LionConfig {
            lr: 1e-3,
            weight_decay: 0.1,
            caution: true,
            ..LionConfig::default()
        }
        .into(),
        AdoptConfig {
            lr: 1e-2,
            weight_decay: 1e-2,
            decoupled: true,
            caution: true,
            ..AdoptConfig::default()
        }
        .into(),
    ];
    for cfg in ours {
        let groups = ParamGroups::new()
            .group(Select::names(["w1", "w2", "emb"]), cfg.clone())
            .group(Select::Rest, AdamConfig::adamw());
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        let mut opt = Optimizer::with_groups(&ctx, &arena, groups.clone()).unwrap();
        let mut cpu = CpuOptimizer::with_groups(&specs, groups).unwrap();
        assert_eq!(opt.segments(), 2);
        assert_eq!(opt.group_of("w2").unwrap(), Some(0));
        assert_eq!(opt.group_of("b1").unwrap(), Some(1));
        let mut rng = fastrand::Rng::with_seed(31);
        let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
        arena.write_all_params(&params).unwrap();
        let frozen =
            |k: usize, i: usize| (i == 2 && k < 2) || (i == 1 && k == 3) || (i == 4 && k == 5);
        for k in 0..7 {
            let grads: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 0.5)).collect();
            for (i, n) in names.iter().enumerate() {
                opt.set_frozen(n, frozen(k, i)).unwrap();
                cpu.set_frozen(n, frozen(k, i)).unwrap();
            }
            arena.write_all_grads(&grads).unwrap();
            opt.step(&arena).unwrap();
            cpu.step(&mut params, &grads).unwrap();
            let got = arena.read_all_params().unwrap();
            let what = format!("{} step {k}", opt.name());
            for (i, n) in names.iter().enumerate() {
                assert_close(&format!("{what} {n}"), &got[i], &params[i], ATOL, RTOL);
                let kept = cpu.tensor_state_names(n).unwrap();
                assert_eq!(opt.tensor_state_names(n).unwrap(), kept, "{what} {n}");
                for st in kept {
                    let want = cpu.read_state(st, n).unwrap();
                    let g = opt.read_state(st, n).unwrap();
                    assert_close(&format!("{what} {n} {st}"), &g, &want, ATOL, RTOL);
                }
                let steps = (0..=k).filter(|&s| !frozen(s, i)).count() as u64;
                assert_eq!(opt.step_count(n).unwrap(), steps, "{what} {n}");
                assert_eq!(cpu.step_count(n).unwrap(), steps, "{what} {n}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ADOPT's L2 decay is fused as torch's (`fma_exact` in fma.wgsl, integer arithmetic): the WGSL
// function run on its own over a million awkward triples, bit for bit against f32::mul_add.

const FMA_TEST_MAIN: &str = r#"
@group(0) @binding(0) var<storage, read> fma_in: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> fma_out: array<f32>;

@compute @workgroup_size(64)
fn fma_test(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = id.x + id.y * nwg.x * 64u;
    if (i >= arrayLength(&fma_out)) {
        return;
    }
    let t = fma_in[i];
    fma_out[i] = fma_exact(bitcast<f32>(t.x), bitcast<f32>(t.y), bitcast<f32>(t.z));
}
"#;

/// Triples that reach every branch: random exponents over the whole range (products and sums
/// that overflow, cancel, underflow into subnormals or to zero), near-cancellations
/// `c = -(a * b)(1 + k ulp)`, ties, and the special values.
fn fma_triples(n: usize) -> Vec<[f32; 3]> {
    let mut rng = fastrand::Rng::with_seed(2024);
    let any = |rng: &mut fastrand::Rng| f32::from_bits(rng.u32(..));
    let near = |rng: &mut fastrand::Rng, lo: i32, hi: i32| {
        let m = 1.0 + rng.f32();
        let e = rng.i32(lo..hi);
        let s = if rng.bool() { -1.0 } else { 1.0 };
        s * m * (2.0f32).powi(e)
    };
    let specials = [
        0.0f32,
        -0.0,
        1.0,
        -1.0,
        f32::MIN_POSITIVE,
        f32::MAX,
        -f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e-45,
        f32::EPSILON,
    ];
    (0..n)
        .map(|k| match k % 6 {
            0 => [any(&mut rng), any(&mut rng), any(&mut rng)],
            1 => {
                let (a, b) = (near(&mut rng, -70, 70), near(&mut rng, -70, 70));
                let ulps = rng.i32(-3..4);
                let c = -f32::from_bits(((a * b).to_bits() as i32 + ulps) as u32);
                [a, b, c]
            }
            2 => [
                near(&mut rng, -3, 1),
                near(&mut rng, -2, 2),
                near(&mut rng, -40, 4),
            ],
            3 => [
                near(&mut rng, -80, -40),
                near(&mut rng, -80, -40),
                near(&mut rng, -130, -110),
            ],
            4 => [
                near(&mut rng, 60, 64),
                near(&mut rng, 60, 66),
                near(&mut rng, 120, 128),
            ],
            _ => {
                let pick = |rng: &mut fastrand::Rng| {
                    if rng.bool() {
                        specials[rng.usize(..specials.len())]
                    } else {
                        near(rng, -20, 20)
                    }
                };
                [pick(&mut rng), pick(&mut rng), pick(&mut rng)]
            }
        })
        .collect()
}

#[test]
fn l2_decay_fma_is_exact_on_the_gpu() {
    let Some(ctx) = gpu() else { return };
    let src = adopt::ADOPT_STEP.source;
    let begin = src.find("// BEGIN fma_exact").expect("BEGIN marker");
    let end = src.find("// END fma_exact").expect("END marker");
    let shader = format!("{}{FMA_TEST_MAIN}", &src[begin..end]);
    let triples = fma_triples(1 << 20);
    let words: Vec<[u32; 4]> = triples
        .iter()
        .map(|t| [t[0].to_bits(), t[1].to_bits(), t[2].to_bits(), 0])
        .collect();
    let dev = ctx.device();
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("fma_test"),
        source: wgpu::ShaderSource::Wgsl(shader.into()),
    });
    let pipeline = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("fma_test"),
        layout: None,
        module: &module,
        entry_point: Some("fma_test"),
        compilation_options: Default::default(),
        cache: None,
    });
    use wgpu::util::DeviceExt;
    let input = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("fma_test in"),
        contents: bytemuck::cast_slice(&words),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let output = dev.create_buffer(&wgpu::BufferDescriptor {
        label: Some("fma_test out"),
        size: 4 * triples.len() as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let bind = dev.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("fma_test"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: input.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: output.as_entire_binding(),
            },
        ],
    });
    let mut enc = dev.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        let groups = (triples.len() as u32).div_ceil(64);
        pass.dispatch_workgroups(groups.min(1024), groups.div_ceil(1024), 1);
    }
    ctx.queue().submit([enc.finish()]);
    let got = wgpu_optim::readback::read_f32(&ctx, &output, 0, triples.len()).unwrap();
    let mut fused = 0;
    for (t, g) in triples.iter().zip(&got) {
        let [a, b, c] = *t;
        let normal = a.is_normal() && b.is_normal() && c.is_normal();
        let want = if normal { a.mul_add(b, c) } else { a * b + c };
        fused += normal as usize;
        if !normal && !exact_adapter(&ctx) {
            // The float fallback: other compilers may fuse it or flush subnormals.
            continue;
        }
        assert!(
            g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
            "fma({a:e}, {b:e}, {c:e}): gpu {g:e} ({:#010x}) want {want:e} ({:#010x})",
            g.to_bits(),
            want.to_bits()
        );
    }
    assert!(fused > triples.len() / 2, "{fused} fused triples");
}
