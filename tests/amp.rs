//! Loss scaling and the non-finite skip: a NaN or Inf gradient anywhere skips the whole step
//! on the GPU (params, state and step counts bit-identical), GradScaler's growth and backoff
//! sequence (derived here from its rules), fixed scales, the CPU twin, clipping of the unscaled
//! gradients, checkpoints of the scaler, and invalid configurations.

use crate::common::{assert_close, bits_eq, gpu, randn, ATOL, RTOL};
use wgpu_optim::norm::cpu_clip_grad_norm;
use wgpu_optim::ParamGroupTable;
use wgpu_optim::{
    AdamConfig, AmpConfig, CpuOptimizer, Error, GpuContext, GradClipper, GradScalerConfig,
    LossScale, NormType, Optimizer, OptimizerConfig, ParamArena, SgdConfig, TensorSpec,
};

const LENS: &[usize] = &[1, 255, 257, 4099];

fn specs() -> Vec<TensorSpec> {
    LENS.iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n))
        .collect()
}

fn grads(k: usize, scale: f32) -> Vec<Vec<f32>> {
    let mut rng = fastrand::Rng::with_seed(500 + k as u64);
    LENS.iter()
        .map(|&n| randn(&mut rng, n, 0.3).iter().map(|g| g * scale).collect())
        .collect()
}

fn params0() -> Vec<Vec<f32>> {
    let mut rng = fastrand::Rng::with_seed(3);
    LENS.iter().map(|&n| randn(&mut rng, n, 1.0)).collect()
}

/// Every param, state and step count, as bits.
fn snapshot(opt: &Optimizer, arena: &ParamArena) -> Vec<(String, Vec<u32>)> {
    let mut out = Vec::new();
    for s in specs() {
        let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        out.push((
            format!("{} params", s.name),
            bits(arena.read_params(&s.name).unwrap()),
        ));
        out.push((
            format!("{} step", s.name),
            vec![opt.step_count(&s.name).unwrap() as u32],
        ));
        for k in opt.tensor_state_names(&s.name).unwrap() {
            out.push((
                format!("{} {k}", s.name),
                bits(opt.read_state(k, &s.name).unwrap()),
            ));
        }
    }
    out
}

fn setup(ctx: &GpuContext, cfg: OptimizerConfig, amp: AmpConfig) -> (ParamArena, Optimizer) {
    let arena = ParamArena::new(ctx, &specs()).unwrap();
    arena.write_all_params(&params0()).unwrap();
    let mut opt = Optimizer::new(ctx, &arena, cfg).unwrap();
    opt.set_amp(&arena, Some(amp)).unwrap();
    (arena, opt)
}

#[test]
fn a_nan_or_inf_anywhere_skips_the_whole_step_for_every_preset() {
    let Some(ctx) = gpu() else { return };
    for preset in OptimizerConfig::presets() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let (arena, mut opt) = setup(&ctx, preset.config.clone(), AmpConfig::default());
            for k in 0..2 {
                arena.write_all_grads(&grads(k, 1.0)).unwrap();
                opt.step(&arena).unwrap();
            }
            assert_eq!(opt.found_inf().unwrap(), Some(false));
            let before = snapshot(&opt, &arena);
            // One element of one tensor (the last of the largest).
            let mut g = grads(2, 1.0);
            *g[3].last_mut().unwrap() = bad;
            arena.write_all_grads(&g).unwrap();
            opt.step(&arena).unwrap();
            assert_eq!(opt.found_inf().unwrap(), Some(true), "{}", preset.name);
            assert_eq!(
                before,
                snapshot(&opt, &arena),
                "{} with {bad}: the skipped step changed something",
                preset.name
            );
            assert_eq!(opt.amp_state().unwrap().unwrap().skipped, 1);
            // The next clean step runs as the third step.
            arena.write_all_grads(&grads(3, 1.0)).unwrap();
            opt.step(&arena).unwrap();
            assert_eq!(opt.found_inf().unwrap(), Some(false));
            assert_eq!(opt.step_count("t0").unwrap(), 3, "{}", preset.name);
        }
    }
}

#[test]
fn gpu_matches_the_cpu_twin_through_skips_and_scale_changes() {
    let Some(ctx) = gpu() else { return };
    let amp = AmpConfig {
        loss_scale: LossScale::Dynamic(GradScalerConfig {
            init_scale: 1024.0,
            growth_interval: 3,
            ..GradScalerConfig::default()
        }),
        skip_non_finite: true,
    };
    for cfg in [
        OptimizerConfig::from(AdamConfig::default()),
        SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            ..SgdConfig::default()
        }
        .into(),
    ] {
        let (arena, mut opt) = setup(&ctx, cfg.clone(), amp);
        let mut cpu = CpuOptimizer::new(cfg.clone(), &specs()).unwrap();
        cpu.set_amp(Some(amp)).unwrap();
        let mut params = params0();
        for k in 0..12 {
            // The gradients carry the scale the scaler holds now; steps 4 and 5 overflow.
            let scale = cpu.amp_state().unwrap().scale;
            let mut g = grads(k, scale);
            if k == 4 || k == 5 {
                g[1][7] = f32::INFINITY;
            }
            arena.write_all_grads(&g).unwrap();
            opt.step(&arena).unwrap();
            cpu.step(&mut params, &g).unwrap();
            assert_eq!(opt.found_inf().unwrap(), cpu.found_inf(), "step {k}");
            assert_eq!(opt.amp_state().unwrap(), cpu.amp_state(), "step {k}");
            let gp = arena.read_all_params().unwrap();
            for (i, s) in specs().iter().enumerate() {
                crate::common::assert_twin(
                    &ctx,
                    &format!("{} step {k}", s.name),
                    &gp[i],
                    &params[i],
                );
                for st in cpu.tensor_state_names(&s.name).unwrap() {
                    crate::common::assert_twin(
                        &ctx,
                        &format!("{} {st} step {k}", s.name),
                        &opt.read_state(st, &s.name).unwrap(),
                        &cpu.read_state(st, &s.name).unwrap(),
                    );
                }
                assert_eq!(
                    opt.step_count(&s.name).unwrap(),
                    cpu.step_count(&s.name).unwrap()
                );
            }
        }
        assert_eq!(cpu.amp_state().unwrap().skipped, 2);
    }
}

#[test]
fn the_scale_follows_grad_scalers_rules() {
    // The expected sequence is derived here from torch.amp.GradScaler's documented update
    // (torch._amp_update_scale_): a step with an inf/NaN multiplies the scale by
    // backoff_factor and resets the tracker; otherwise the tracker counts up, and when it
    // reaches growth_interval the scale is multiplied by growth_factor and the tracker resets.
    let Some(ctx) = gpu() else { return };
    let c = GradScalerConfig {
        init_scale: 256.0,
        growth_factor: 4.0,
        backoff_factor: 0.25,
        growth_interval: 2,
    };
    let amp = AmpConfig {
        loss_scale: LossScale::Dynamic(c),
        skip_non_finite: true,
    };
    let (arena, mut opt) = setup(&ctx, AdamConfig::default().into(), amp);
    let pattern = [
        false, false, false, true, false, true, true, false, false, false, false,
    ];
    let (mut scale, mut tracker) = (c.init_scale, 0u32);
    for (k, &bad) in pattern.iter().enumerate() {
        let mut g = grads(k, 1.0);
        if bad {
            g[0][0] = f32::NAN;
        }
        arena.write_all_grads(&g).unwrap();
        opt.step(&arena).unwrap();
        if bad {
            scale *= c.backoff_factor;
            tracker = 0;
        } else if tracker + 1 == c.growth_interval {
            scale *= c.growth_factor;
            tracker = 0;
        } else {
            tracker += 1;
        }
        let st = opt.amp_state().unwrap().unwrap();
        println!(
            "step {k}: inf={bad} scale {} tracker {}",
            st.scale, st.growth_tracker
        );
        assert_eq!(st.scale as f64, scale, "step {k}");
        assert_eq!(st.growth_tracker, tracker, "step {k}");
        assert_eq!(st.found, u32::from(bad));
    }
    assert_eq!(opt.amp_state().unwrap().unwrap().skipped, 3);
}

#[test]
fn a_fixed_power_of_two_scale_is_divided_out_exactly() {
    // Gradients times 1024, unscaled in the kernel: the same bits as unscaled gradients.
    let Some(ctx) = gpu() else { return };
    let cfg: OptimizerConfig = AdamConfig::default().into();
    let (arena, mut scaled) = setup(
        &ctx,
        cfg.clone(),
        AmpConfig {
            loss_scale: LossScale::Fixed(1024.0),
            skip_non_finite: false,
        },
    );
    let plain_arena = ParamArena::new(&ctx, &specs()).unwrap();
    plain_arena.write_all_params(&params0()).unwrap();
    let mut plain = Optimizer::new(&ctx, &plain_arena, cfg).unwrap();
    for k in 0..5 {
        arena.write_all_grads(&grads(k, 1024.0)).unwrap();
        plain_arena.write_all_grads(&grads(k, 1.0)).unwrap();
        scaled.step(&arena).unwrap();
        plain.step(&plain_arena).unwrap();
    }
    assert!(bits_eq(
        &arena.read_params_image().unwrap(),
        &plain_arena.read_params_image().unwrap()
    ));
    assert_eq!(scaled.amp_state().unwrap().unwrap().scale, 1024.0);
}

#[test]
fn without_the_skip_a_non_finite_step_is_reported_and_applied() {
    let Some(ctx) = gpu() else { return };
    let (arena, mut opt) = setup(
        &ctx,
        SgdConfig::default().into(),
        AmpConfig {
            loss_scale: LossScale::None,
            skip_non_finite: false,
        },
    );
    let mut g = grads(0, 1.0);
    g[2][5] = f32::NAN;
    arena.write_all_grads(&g).unwrap();
    opt.step(&arena).unwrap();
    assert_eq!(opt.found_inf().unwrap(), Some(true));
    assert!(arena.read_params("t2").unwrap()[5].is_nan());
    assert_eq!(opt.step_count("t2").unwrap(), 1);
}

#[test]
fn frozen_tensors_are_not_checked() {
    // A frozen tensor's gradient is not part of the step (PyTorch: grad is None).
    let Some(ctx) = gpu() else { return };
    let (arena, mut opt) = setup(&ctx, AdamConfig::default().into(), AmpConfig::default());
    let mut g = grads(0, 1.0);
    g[1][0] = f32::NAN;
    arena.write_all_grads(&g).unwrap();
    opt.set_frozen("t1", true).unwrap();
    opt.step(&arena).unwrap();
    assert_eq!(opt.found_inf().unwrap(), Some(false));
    assert_eq!(opt.step_count("t0").unwrap(), 1);
    assert_eq!(opt.step_count("t1").unwrap(), 0);
}

#[test]
fn encode_step_resolves_the_skip_lazily() {
    let Some(ctx) = gpu() else { return };
    let (arena, mut opt) = setup(&ctx, AdamConfig::default().into(), AmpConfig::default());
    let mut g = grads(0, 1.0);
    g[3][100] = f32::INFINITY;
    arena.write_all_grads(&g).unwrap();
    let before = snapshot(&opt, &arena);
    let mut enc = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    opt.encode_step(&mut enc, &arena).unwrap();
    ctx.queue().submit([enc.finish()]);
    assert_eq!(opt.found_inf().unwrap(), Some(true));
    assert_eq!(before, snapshot(&opt, &arena));
    // A clean step recorded the same way applies.
    arena.write_all_grads(&grads(1, 1.0)).unwrap();
    let mut enc = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    opt.encode_step(&mut enc, &arena).unwrap();
    ctx.queue().submit([enc.finish()]);
    assert_eq!(opt.found_inf().unwrap(), Some(false));
    assert_eq!(opt.step_count("t3").unwrap(), 1);
}

#[test]
fn clipping_sees_the_unscaled_gradients() {
    // PyTorch: scaler.scale(loss).backward(); scaler.unscale_(opt); clip_grad_norm_(...);
    // scaler.step(opt). Compared with the CPU optimizer on host-unscaled, host-clipped
    // gradients (f64 norm on the host, f32 tree on the GPU: fp32 tolerance).
    let Some(ctx) = gpu() else { return };
    let scale = 512.0f32;
    let (arena, mut opt) = setup(
        &ctx,
        AdamConfig::default().into(),
        AmpConfig {
            loss_scale: LossScale::Fixed(scale as f64),
            skip_non_finite: true,
        },
    );
    let clipper = std::sync::Arc::new(GradClipper::new(&ctx, &arena, 0.5, NormType::L2).unwrap());
    opt.set_grad_clip(Some(clipper)).unwrap();
    let mut cpu = CpuOptimizer::new(AdamConfig::default(), &specs()).unwrap();
    let mut params = params0();
    for k in 0..4 {
        arena.write_all_grads(&grads(k, scale)).unwrap();
        opt.step(&arena).unwrap();
        let mut g = grads(k, 1.0);
        cpu_clip_grad_norm(&mut g, 0.5, NormType::L2).unwrap();
        cpu.step(&mut params, &g).unwrap();
    }
    let gp = arena.read_all_params().unwrap();
    for i in 0..LENS.len() {
        assert_close(&format!("t{i}"), &gp[i], &params[i], ATOL, RTOL);
    }
}

#[test]
fn the_scaler_state_is_checkpointed() {
    let Some(ctx) = gpu() else { return };
    let amp = AmpConfig::grad_scaler();
    let (arena, mut opt) = setup(&ctx, AdamConfig::default().into(), amp);
    for k in 0..3 {
        let mut g = grads(k, 65536.0);
        if k == 1 {
            g[0][0] = f32::NAN;
        }
        arena.write_all_grads(&g).unwrap();
        opt.step(&arena).unwrap();
    }
    let ck = opt.save_checkpoint(Some(&arena)).unwrap();
    let want = opt.amp_state().unwrap().unwrap();
    assert_eq!(want.scale, 32768.0);
    assert_eq!(want.skipped, 1);
    let (arena2, mut fresh) = setup(&ctx, AdamConfig::default().into(), amp);
    fresh.load_checkpoint(&ck, Some(&arena2)).unwrap();
    assert_eq!(fresh.amp_state().unwrap().unwrap(), want);
    let mut cpu = CpuOptimizer::new(AdamConfig::default(), &specs()).unwrap();
    cpu.set_amp(Some(amp)).unwrap();
    cpu.load_checkpoint(&ck, None).unwrap();
    assert_eq!(cpu.amp_state(), Some(want));
    assert_eq!(cpu.step_count("t0").unwrap(), 2);
}

#[test]
fn invalid_amp_configs_are_typed_errors_and_change_nothing() {
    let Some(ctx) = gpu() else { return };
    let arena = ParamArena::new(&ctx, &specs()).unwrap();
    let mut opt = Optimizer::new(&ctx, &arena, AdamConfig::default()).unwrap();
    let dynamic = |f: fn(&mut GradScalerConfig)| {
        let mut c = GradScalerConfig::default();
        f(&mut c);
        AmpConfig {
            loss_scale: LossScale::Dynamic(c),
            skip_non_finite: true,
        }
    };
    let fixed = |s: f64| AmpConfig {
        loss_scale: LossScale::Fixed(s),
        skip_non_finite: true,
    };
    let cases: Vec<(AmpConfig, &str)> = vec![
        (fixed(0.0), "loss scale"),
        (fixed(-2.0), "loss scale"),
        (fixed(f64::NAN), "loss scale"),
        (fixed(f64::INFINITY), "loss scale"),
        (fixed(1e39), "loss scale"),
        (dynamic(|c| c.init_scale = 0.0), "init_scale"),
        (dynamic(|c| c.growth_factor = 1.0), "growth_factor"),
        (dynamic(|c| c.growth_factor = f64::NAN), "growth_factor"),
        (dynamic(|c| c.backoff_factor = 1.0), "backoff_factor"),
        (dynamic(|c| c.backoff_factor = 0.0), "backoff_factor"),
        (dynamic(|c| c.growth_interval = 0), "growth_interval"),
    ];
    for (cfg, name) in cases {
        match opt.set_amp(&arena, Some(cfg)) {
            Err(Error::InvalidHyperparameter { name: n, .. }) => assert_eq!(n, name),
            other => panic!("{cfg:?}: {other:?}"),
        }
        assert!(opt.amp().is_none(), "nothing attached");
        let mut cpu = CpuOptimizer::new(AdamConfig::default(), &specs()).unwrap();
        assert!(matches!(
            cpu.set_amp(Some(cfg)),
            Err(Error::InvalidHyperparameter { .. })
        ));
    }
    // Another arena is refused.
    let other = ParamArena::new(&ctx, &specs()).unwrap();
    assert!(matches!(
        opt.set_amp(&other, Some(AmpConfig::default())),
        Err(Error::ArenaMismatch { .. })
    ));
}

#[test]
fn lookahead_neither_counts_nor_syncs_a_skipped_step() {
    // PyTorch: GradScaler.step never calls the wrapped optimizer's step on an inf, so
    // Lookahead's counter does not move and no sync happens. GPU against the CPU twin.
    use wgpu_optim::{CpuLookahead, Lookahead, LookaheadConfig};
    let Some(ctx) = gpu() else { return };
    let cfg = LookaheadConfig {
        k: 3,
        ..LookaheadConfig::default()
    };
    let (arena, opt) = setup(&ctx, AdamConfig::default().into(), AmpConfig::default());
    let mut la = Lookahead::new(&ctx, &arena, opt, cfg).unwrap();
    let mut cpu = CpuOptimizer::new(AdamConfig::default(), &specs()).unwrap();
    cpu.set_amp(Some(AmpConfig::default())).unwrap();
    let mut params = params0();
    let mut cla = CpuLookahead::new(cpu, cfg, &params).unwrap();
    // Steps 1 and 2 clean; the third (a sync step) and the sixth overflow; then clean.
    for k in 0..10 {
        let mut g = grads(k, 1.0);
        if k == 2 || k == 5 {
            g[2][9] = f32::INFINITY;
        }
        arena.write_all_grads(&g).unwrap();
        la.step(&arena).unwrap();
        cla.step(&mut params, &g).unwrap();
        la.inner_mut().found_inf().unwrap();
        let gp = arena.read_all_params().unwrap();
        for i in 0..LENS.len() {
            crate::common::assert_twin(&ctx, &format!("t{i} step {k}"), &gp[i], &params[i]);
            let n = format!("t{i}");
            crate::common::assert_twin(
                &ctx,
                &format!("{n} slow at step {k}"),
                &la.read_slow(&n).unwrap(),
                &cla.read_slow(&n).unwrap(),
            );
        }
    }
    // 10 calls, 2 skipped: 8 counted on both sides (the GPU's last one settles at its next
    // step or here).
    assert_eq!(cla.steps(), 8);
    arena.write_all_grads(&grads(10, 1.0)).unwrap();
    la.step(&arena).unwrap();
    cla.step(&mut params, &grads(10, 1.0)).unwrap();
    assert_eq!(la.steps(), cla.steps());
    for s in specs() {
        crate::common::assert_twin(
            &ctx,
            &format!("{} slow", s.name),
            &la.read_slow(&s.name).unwrap(),
            &cla.read_slow(&s.name).unwrap(),
        );
    }
}
