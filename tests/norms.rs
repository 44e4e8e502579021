//! Segmented norm reductions, global-norm clipping, and their use by the optimizers.
//!
//! Norm accuracy: the GPU sums squares in f32 along a fixed tree (see shaders/reduce.wgsl). For
//! nonnegative terms the relative error of such a sum is at most (depth x u), u = 2^-24; the
//! depth (derived in reduce.wgsl) is 180 for a 16M-element tensor, so the sum is within 1.08e-5
//! and the norm (a square root halves relative error) within 5.4e-6 < 1e-5 of the exact value,
//! which the f64 CPU reference approximates to ~1e-16. The inf norm is exact.

use std::sync::Arc;

use crate::common::{assert_close, gpu, randn, with_lr_wd, ATOL, RTOL};
use wgpu_optim::norm::{cpu_clip_grad_norm, cpu_norms};
use wgpu_optim::ParamGroupTable;
use wgpu_optim::{
    AdamConfig, CpuOptimizer, Error, GpuContext, GradClipper, LambConfig, NormReducer, NormType,
    Optimizer, OptimizerConfig, ParamArena, SgdConfig, TensorSpec,
};

const NORM_RTOL: f64 = 1e-5;

fn specs(lens: &[usize]) -> Vec<TensorSpec> {
    lens.iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n))
        .collect()
}

fn check_norms(ctx: &GpuContext, lens: &[usize], seed: u64) {
    let arena = ParamArena::new(ctx, &specs(lens)).unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    let data: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    arena.write_all_params(&data).unwrap();
    for norm_type in [NormType::L2, NormType::Inf] {
        let r =
            NormReducer::new(ctx, &arena, wgpu_optim::norm::NormSource::Params, norm_type).unwrap();
        let (per, total) = r.compute().unwrap();
        let (want_per, want_total) = cpu_norms(&data, norm_type);
        for (i, (&g, &w)) in per.iter().zip(&want_per).enumerate() {
            let err = (g as f64 - w).abs();
            assert!(
                err <= NORM_RTOL * w || (w == 0.0 && g == 0.0),
                "{norm_type:?} tensor {i} (len {}): got {g} want {w} rel {}",
                lens[i],
                err / w
            );
            if norm_type == NormType::Inf {
                assert_eq!(g as f64, w, "inf norm is exact");
            }
        }
        let err = (total as f64 - want_total).abs();
        assert!(
            err <= NORM_RTOL * want_total,
            "{norm_type:?} total: got {total} want {want_total}"
        );
    }
}

#[test]
fn norms_match_f64_reference_at_awkward_sizes() {
    let Some(ctx) = gpu() else { return };
    check_norms(&ctx, &[1, 255, 257, 278_011, 0], 1);
}

#[test]
fn norms_match_f64_reference_on_16m_elements() {
    let Some(ctx) = gpu() else { return };
    check_norms(&ctx, &[16 << 20], 2);
}

#[test]
fn norms_match_f64_reference_on_10000_small_tensors() {
    let Some(ctx) = gpu() else { return };
    let mut rng = fastrand::Rng::with_seed(3);
    let lens: Vec<usize> = (0..10_000)
        .map(|_| {
            if rng.u8(..) < 25 {
                0
            } else {
                rng.usize(1..300)
            }
        })
        .collect();
    check_norms(&ctx, &lens, 4);
}

fn clip_trial(
    ctx: &GpuContext,
    cfg: OptimizerConfig,
    norm_type: NormType,
    scale: f32,
    max_norm: Option<f64>,
) {
    let lens = [257, 1, 1000, 0, 33];
    let specs = specs(&lens);
    let arena = ParamArena::new(ctx, &specs).unwrap();
    let mut rng = fastrand::Rng::with_seed(9);
    let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    arena.write_all_params(&params).unwrap();
    let mut gpu = Optimizer::new(ctx, &arena, cfg.clone()).unwrap();
    let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
    for step in 0..7 {
        let grads: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, scale)).collect();
        let (_, total) = cpu_norms(&grads, norm_type);
        // None: clip exactly at the current norm (coefficient max/(max+1e-6), just below 1).
        let max = max_norm.unwrap_or(total);
        let clipper = Arc::new(GradClipper::new(ctx, &arena, max, norm_type).unwrap());
        // Re-attaching each step is allowed (bind groups are rebuilt outside the hot path).
        gpu.set_grad_clip(Some(clipper.clone())).unwrap();
        arena.write_all_grads(&grads).unwrap();
        gpu.step(&arena).unwrap();
        let mut clipped = grads.clone();
        let want_total = cpu_clip_grad_norm(&mut clipped, max, norm_type).unwrap();
        cpu.step(&mut params, &clipped).unwrap();
        let got_total = clipper.read_total_norm().unwrap() as f64;
        assert!(
            (got_total - want_total).abs() <= 1e-5 * want_total,
            "step {step}: pre-clip norm {got_total} vs {want_total}"
        );
        let coef = clipper.read_coefficient().unwrap() as f64;
        let want_coef = (max / (want_total + 1e-6)).min(1.0);
        // The GPU forms the coefficient in f32 from an f32 norm: a few ulp (1 ulp = 6e-8).
        assert!(
            (coef - want_coef).abs() <= 2e-6 * want_coef,
            "coef {coef} vs {want_coef}"
        );
        let got = arena.read_all_params().unwrap();
        for i in 0..lens.len() {
            assert_close(
                &format!("{} step {step} tensor {i}", cfg.name()),
                &got[i],
                &params[i],
                ATOL,
                RTOL,
            );
            for name in gpu.state_names() {
                let s = gpu.read_state(name, &format!("t{i}")).unwrap();
                assert_close(
                    &format!("{name} {i}"),
                    &s,
                    &cpu.read_state(name, &specs[i].name).unwrap(),
                    ATOL,
                    RTOL,
                );
            }
        }
        // The gradients themselves are not modified on the GPU.
        assert_eq!(arena.read_grads("t0").unwrap(), grads[0]);
    }
}

#[test]
fn clipping_fused_into_adam_and_sgd_matches_clip_then_step() {
    let Some(ctx) = gpu() else { return };
    let adam = OptimizerConfig::Adam(AdamConfig::default());
    let sgd = OptimizerConfig::Sgd(SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        ..SgdConfig::default()
    });
    for cfg in [adam, sgd] {
        // Below the threshold (coefficient 1), above it, and exactly at it; L2 and inf norms.
        clip_trial(&ctx, cfg.clone(), NormType::L2, 0.01, Some(1e3));
        clip_trial(&ctx, cfg.clone(), NormType::L2, 1.0, Some(0.5));
        clip_trial(&ctx, cfg.clone(), NormType::L2, 1.0, None);
        clip_trial(&ctx, cfg.clone(), NormType::Inf, 1.0, Some(0.1));
        clip_trial(&ctx, cfg, NormType::Inf, 0.01, Some(10.0));
    }
    // And through the multi-pass optimizers.
    clip_trial(
        &ctx,
        OptimizerConfig::Lamb(LambConfig::default()),
        NormType::L2,
        1.0,
        Some(0.5),
    );
    clip_trial(
        &ctx,
        OptimizerConfig::Lars(wgpu_optim::LarsConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            ..Default::default()
        }),
        NormType::L2,
        1.0,
        Some(0.5),
    );
}

/// Zero tensors, zero gradients and a group excluded from adaptation, for LARS and LAMB.
#[test]
fn trust_ratio_edge_cases_match_cpu() {
    let Some(ctx) = gpu() else { return };
    let specs = vec![
        TensorSpec::new("zero_param", 300),
        TensorSpec::new("zero_grad", 300),
        TensorSpec::new("normal", 300),
        TensorSpec::new("bias", 40).in_group(1),
    ];
    let cfgs = [
        OptimizerConfig::Lars(wgpu_optim::LarsConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-3,
            ..Default::default()
        }),
        OptimizerConfig::Lamb(LambConfig::default()),
    ];
    for cfg in cfgs {
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        let mut rng = fastrand::Rng::with_seed(21);
        let mut params = vec![
            vec![0.0; 300],
            randn(&mut rng, 300, 1.0),
            randn(&mut rng, 300, 1.0),
            randn(&mut rng, 40, 1.0),
        ];
        arena.write_all_params(&params).unwrap();
        let mut gpu = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
        let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
        let no_decay = with_lr_wd(&cfg, cfg.lr(), 0.0);
        gpu.set_group_config(1, no_decay.clone()).unwrap();
        cpu.set_group_config(1, no_decay).unwrap();
        for step in 0..7 {
            let grads = vec![
                randn(&mut rng, 300, 1.0),
                vec![0.0; 300],
                randn(&mut rng, 300, 1.0),
                randn(&mut rng, 40, 1.0),
            ];
            arena.write_all_grads(&grads).unwrap();
            gpu.step(&arena).unwrap();
            cpu.step(&mut params, &grads).unwrap();
            let got = arena.read_all_params().unwrap();
            for i in 0..specs.len() {
                let w = format!("{} step {step} {}", cfg.name(), specs[i].name);
                assert_close(&w, &got[i], &params[i], ATOL, RTOL);
                for name in gpu.state_names() {
                    let s = gpu.read_state(name, &specs[i].name).unwrap();
                    assert_close(
                        &format!("{w} {name}"),
                        &s,
                        &cpu.read_state(name, &specs[i].name).unwrap(),
                        ATOL,
                        RTOL,
                    );
                }
            }
            let ratios = gpu.read_trust_ratios().unwrap().unwrap();
            // The excluded group does not adapt.
            assert_eq!(ratios[3], 1.0, "{}: bias group ratio", cfg.name());
            if let OptimizerConfig::Lars(_) = cfg {
                // |g| = 0 -> ratio 1 (LARS); |p| = 0 on the first step -> ratio 1.
                assert_eq!(ratios[1], 1.0, "zero-grad ratio");
                if step == 0 {
                    assert_eq!(ratios[0], 1.0, "zero-param ratio");
                }
            } else if step == 0 {
                assert_eq!(ratios[0], 1.0, "zero-param ratio (LAMB)");
            }
            assert_ne!(ratios[2], 1.0, "an ordinary tensor adapts");
        }
    }
}

/// The same step, run three times from the same inputs, gives bitwise-identical params, state,
/// trust ratios and norms.
#[test]
fn reductions_and_multi_pass_steps_are_deterministic() {
    let Some(ctx) = gpu() else { return };
    let mut rng = fastrand::Rng::with_seed(31);
    let lens: Vec<usize> = (0..500)
        .map(|_| rng.usize(0..3000))
        .chain([1 << 20])
        .collect();
    let specs = specs(&lens);
    let params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    let grads: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    let run = || {
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        arena.write_all_params(&params).unwrap();
        arena.write_all_grads(&grads).unwrap();
        let clipper = Arc::new(GradClipper::new(&ctx, &arena, 1.0, NormType::L2).unwrap());
        let mut opt = wgpu_optim::Optimizer::new(&ctx, &arena, LambConfig::default()).unwrap();
        opt.set_grad_clip(Some(clipper.clone())).unwrap();
        opt.step(&arena).unwrap();
        opt.step(&arena).unwrap();
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<u32>>();
        (
            bits(arena.read_params_image().unwrap()),
            bits(opt.read_state_image("exp_avg").unwrap()),
            bits(opt.read_state_image("exp_avg_sq").unwrap()),
            bits(opt.read_trust_ratios().unwrap().unwrap()),
            bits(clipper.read_tensor_norms().unwrap()),
            clipper.read_total_norm().unwrap().to_bits(),
        )
    };
    let first = run();
    for _ in 0..2 {
        assert!(run() == first, "a rerun differs");
    }
}

#[test]
fn clipper_rejects_bad_thresholds_and_other_arenas() {
    let Some(ctx) = gpu() else { return };
    let arena = ParamArena::new(&ctx, &specs(&[10])).unwrap();
    let other = ParamArena::new(&ctx, &specs(&[10])).unwrap();
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = GradClipper::new(&ctx, &arena, bad, NormType::L2).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidHyperparameter {
                    name: "max_norm",
                    ..
                }
            ),
            "{e:?}"
        );
    }
    let mut c = GradClipper::new(&ctx, &arena, 1.0, NormType::L2).unwrap();
    assert!(c.set_max_norm(-2.0).is_err());
    assert_eq!(c.max_norm(), 1.0);
    let mut opt = wgpu_optim::Optimizer::new(&ctx, &other, AdamConfig::default()).unwrap();
    let e = opt.set_grad_clip(Some(Arc::new(c))).unwrap_err();
    assert!(matches!(e, Error::ArenaMismatch { .. }), "{e:?}");
    assert!(opt.grad_clip().is_none());
    let e = cpu_clip_grad_norm(&mut [vec![1.0]], f64::NAN, NormType::L2).unwrap_err();
    assert!(matches!(e, Error::InvalidHyperparameter { .. }));
}

/// An arena of empty tensors: nothing to dispatch per chunk, but norms are 0, steps count
/// (PyTorch advances `step` for empty tensors too), and nothing fails.
#[test]
fn arena_of_empty_tensors() {
    let Some(ctx) = gpu() else { return };
    let arena = ParamArena::new(&ctx, &specs(&[0, 0])).unwrap();
    let r = NormReducer::new(
        &ctx,
        &arena,
        wgpu_optim::norm::NormSource::Grads,
        NormType::L2,
    )
    .unwrap();
    assert_eq!(r.compute().unwrap(), (vec![0.0, 0.0], 0.0));
    for cfg in [
        OptimizerConfig::Lamb(LambConfig::default()),
        OptimizerConfig::Adam(AdamConfig::default()),
    ] {
        let mut opt = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
        let clip = Arc::new(GradClipper::new(&ctx, &arena, 1.0, NormType::L2).unwrap());
        opt.set_grad_clip(Some(clip.clone())).unwrap();
        opt.step(&arena).unwrap();
        opt.step(&arena).unwrap();
        assert_eq!(opt.step_count("t1").unwrap(), 2);
        assert_eq!(clip.read_total_norm().unwrap(), 0.0);
    }
}

/// Frozen tensors keep stale gradients in the grads buffer; the clip must leave them out, as
/// `clip_grad_norm_` only sees tensors with a gradient. Tensors in no group are left out too.
#[test]
fn clip_ignores_frozen_and_unselected_tensors() {
    let Some(ctx) = gpu() else { return };
    let lens = [257, 1000, 33, 4];
    let specs = specs(&lens);
    let cfg = OptimizerConfig::Sgd(SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        ..SgdConfig::default()
    });
    let groups = wgpu_optim::ParamGroups::new()
        .group(wgpu_optim::Select::names(["t0", "t1", "t2"]), cfg.clone());
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut rng = fastrand::Rng::with_seed(31);
    let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    arena.write_all_params(&params).unwrap();
    let mut gpu = Optimizer::with_groups(&ctx, &arena, groups.clone()).unwrap();
    let mut cpu = CpuOptimizer::with_groups(&specs, groups).unwrap();
    let clipper = Arc::new(GradClipper::new(&ctx, &arena, 0.5, NormType::L2).unwrap());
    gpu.set_grad_clip(Some(clipper.clone())).unwrap();
    for step in 0..5 {
        // Large stale gradients on the frozen tensor (t1 on odd steps) and on t3 (no group):
        // counted, they would dominate the norm.
        let mut grads: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 0.5)).collect();
        let t1_frozen = step % 2 == 1;
        if t1_frozen {
            grads[1] = vec![100.0; 1000];
        }
        grads[3] = vec![1e4; 4];
        gpu.set_frozen("t1", t1_frozen).unwrap();
        cpu.set_frozen("t1", t1_frozen).unwrap();
        arena.write_all_grads(&grads).unwrap();
        gpu.step(&arena).unwrap();
        // The reference: clip_grad_norm_ over the live tensors only, then the step.
        let live: Vec<usize> = (0..3).filter(|&i| !(i == 1 && t1_frozen)).collect();
        let mut live_grads: Vec<Vec<f32>> = live.iter().map(|&i| grads[i].clone()).collect();
        let want_total = cpu_clip_grad_norm(&mut live_grads, 0.5, NormType::L2).unwrap();
        let mut clipped = grads.clone();
        for (k, &i) in live.iter().enumerate() {
            clipped[i] = live_grads[k].clone();
        }
        cpu.step(&mut params, &clipped).unwrap();
        let got_total = clipper.read_total_norm().unwrap() as f64;
        assert!(
            (got_total - want_total).abs() <= 1e-5 * want_total,
            "step {step}: norm {got_total} vs live-only {want_total}"
        );
        let got = arena.read_all_params().unwrap();
        for i in 0..lens.len() {
            assert_close(
                &format!("step {step} tensor {i}"),
                &got[i],
                &params[i],
                ATOL,
                RTOL,
            );
        }
        let per = clipper.read_tensor_norms().unwrap();
        assert_eq!(per[3], 0.0, "unselected tensor counted");
        if t1_frozen {
            assert_eq!(per[1], 0.0, "frozen tensor counted");
        }
    }
}

/// A NaN in one gradient element gives a NaN norm for L2 and inf (WGSL's max would drop it),
/// and the clip coefficient is NaN, as torch's clamp keeps it: every clipped gradient, and so
/// every updated parameter, becomes NaN, exactly as `clip_grad_norm_` then `step` does.
#[test]
fn nan_gradient_gives_nan_norm_and_clip() {
    let Some(ctx) = gpu() else { return };
    let lens = [300, 5000, 7];
    let arena = ParamArena::new(&ctx, &specs(&lens)).unwrap();
    let mut rng = fastrand::Rng::with_seed(8);
    for norm_type in [NormType::L2, NormType::Inf] {
        for nan_at in [0usize, 4999] {
            let mut grads: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
            grads[1][nan_at] = f32::NAN;
            arena.write_all_grads(&grads).unwrap();
            let r = NormReducer::new(&ctx, &arena, wgpu_optim::norm::NormSource::Grads, norm_type)
                .unwrap();
            let (per, total) = r.compute().unwrap();
            assert!(total.is_nan(), "{norm_type:?}: total {total}");
            assert!(
                per[1].is_nan() && !per[0].is_nan() && !per[2].is_nan(),
                "{per:?}"
            );
            let (cpu_per, cpu_total) = cpu_norms(&grads, norm_type);
            assert!(cpu_total.is_nan() && cpu_per[1].is_nan());

            arena
                .write_all_params(&lens.iter().map(|&n| vec![1.0f32; n]).collect::<Vec<_>>())
                .unwrap();
            let clip = Arc::new(GradClipper::new(&ctx, &arena, 1.0, norm_type).unwrap());
            let mut opt = Optimizer::new(&ctx, &arena, SgdConfig::default()).unwrap();
            opt.set_grad_clip(Some(clip.clone())).unwrap();
            opt.step(&arena).unwrap();
            assert!(clip.read_total_norm().unwrap().is_nan());
            assert!(clip.read_coefficient().unwrap().is_nan());
            let mut clipped = grads.clone();
            assert!(cpu_clip_grad_norm(&mut clipped, 1.0, norm_type)
                .unwrap()
                .is_nan());
            assert!(clipped.iter().flatten().all(|g| g.is_nan()));
            let got = arena.read_all_params().unwrap();
            assert!(got.iter().flatten().all(|p| p.is_nan()), "{norm_type:?}");
        }
    }
}
