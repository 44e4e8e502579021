//! Loss scaling and the non-finite skip: a NaN or Inf gradient anywhere skips the whole step
//! on the GPU (params, state and step counts bit-identical), GradScaler's growth and backoff
//! sequence (derived here from its rules, and torch's own runs with non-power-of-two factors,
//! bit for bit), the scale times a factor rounded as torch does on the GPU, the non-finite
//! check on the unscaled or (torch's) scaled gradients, fixed scales, the CPU twin, clipping
//! of the unscaled gradients (GPU and the CPU twin's clipper, alone and with AMP, Lookahead and
//! 16-bit gradients), checkpoints of the scaler, and invalid configurations.

use crate::common::{assert_close, bits_eq, gpu, randn, ATOL, RTOL};
use wgpu_optim::amp::FoundInfCheck;
use wgpu_optim::norm::{cpu_clip_grad_norm, ClipConfig};
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
        ..GradScalerConfig::default()
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

// GradScaler as torch computes it.

/// One `torch.amp.GradScaler("cpu")` run of tests/fixtures/regressions.json (`grad_scaler`).
struct ScalerRun {
    cfg: GradScalerConfig,
    /// Per step: the non-finite value put into a gradient (none: a clean step), then torch's
    /// scale and growth tracker after `update()`.
    steps: Vec<(Option<f32>, f32, u32)>,
}

/// Python's `float.hex()`: `[-]0x<hex>[.<hex>]p<exp>`.
fn parse_hex_float(s: &str) -> f64 {
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let s = s.strip_prefix("0x").expect("a hex float starts with 0x");
    let (mant, exp) = s.split_once('p').expect("a hex float has an exponent");
    let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
    let m = u64::from_str_radix(&format!("{int}{frac}"), 16).expect("hex digits");
    assert!(m < 1 << 53, "{s}: more digits than an f64 holds");
    let e: i32 = exp.parse().expect("a decimal exponent");
    let v = m as f64 * 2f64.powi(e - 4 * frac.len() as i32);
    if neg {
        -v
    } else {
        v
    }
}

fn scaler_runs() -> Vec<ScalerRun> {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/regressions.json")).expect("fixture JSON");
    let f = |x: &serde_json::Value, k: &str| x[k].as_f64().unwrap_or_else(|| panic!("{k}"));
    v["grad_scaler"]
        .as_array()
        .expect("grad_scaler runs")
        .iter()
        .map(|run| ScalerRun {
            cfg: GradScalerConfig {
                init_scale: f(run, "init_scale"),
                growth_factor: f(run, "growth_factor"),
                backoff_factor: f(run, "backoff_factor"),
                growth_interval: f(run, "growth_interval") as u32,
                ..GradScalerConfig::default()
            },
            steps: run["steps"]
                .as_array()
                .expect("steps")
                .iter()
                .map(|st| {
                    let bad = match &st["nonfinite"] {
                        serde_json::Value::Null => None,
                        serde_json::Value::String(s) if s == "inf" => Some(f32::INFINITY),
                        serde_json::Value::String(s) if s == "nan" => Some(f32::NAN),
                        other => panic!("nonfinite {other}"),
                    };
                    let hex = parse_hex_float(st["scale_after_hex"].as_str().expect("hex"));
                    let scale = hex as f32;
                    assert_eq!(scale as f64, hex, "the fixture's scale is an f32");
                    // serde_json's decimal parse may miss the f64 by an ulp, not the f32.
                    assert_eq!(f(st, "scale_after") as f32, scale, "decimal and hex agree");
                    (bad, scale, f(st, "growth_tracker") as u32)
                })
                .collect(),
        })
        .collect()
}

#[test]
fn grad_scaler_follows_torch_bit_for_bit_on_both_engines() {
    // torch multiplies the f32 scale by the f64 factor in double and rounds once to f32;
    // rounding the factor to f32 first drifts by an ulp with factors such as 1.7 or 1.3.
    let runs = scaler_runs();
    assert_eq!(runs.len(), 3);
    // The fixture tells the two apart: replayed with the factors rounded to f32 first, some
    // scale differs from torch's (so this test fails on such an implementation).
    let mut f32_factor_misses = 0;
    for run in &runs {
        let c = run.cfg;
        let (mut scale, mut tracker) = (c.init_scale as f32, 0);
        for &(bad, want, _) in &run.steps {
            if bad.is_some() {
                scale *= c.backoff_factor as f32;
                tracker = 0;
            } else if tracker + 1 == c.growth_interval {
                scale *= c.growth_factor as f32;
                tracker = 0;
            } else {
                tracker += 1;
            }
            f32_factor_misses += usize::from(scale.to_bits() != want.to_bits());
        }
    }
    assert!(f32_factor_misses > 0);
    let Some(ctx) = gpu() else { return };
    for (r, run) in runs.iter().enumerate() {
        let amp = AmpConfig {
            loss_scale: LossScale::Dynamic(run.cfg),
            skip_non_finite: true,
        };
        let cfg: OptimizerConfig = SgdConfig {
            lr: 0.01,
            momentum: 0.9,
            ..SgdConfig::default()
        }
        .into();
        let (arena, mut opt) = setup(&ctx, cfg.clone(), amp);
        let mut cpu = CpuOptimizer::new(cfg, &specs()).unwrap();
        cpu.set_amp(Some(amp)).unwrap();
        let mut params = params0();
        for (k, &(bad, want_scale, want_tracker)) in run.steps.iter().enumerate() {
            // The gradients carry the scale, as after scaler.scale(loss).backward().
            let scale = cpu.amp_state().unwrap().scale;
            let mut g = grads(k, scale);
            if let Some(bad) = bad {
                g[2][100] = bad;
            }
            arena.write_all_grads(&g).unwrap();
            opt.step(&arena).unwrap();
            cpu.step(&mut params, &g).unwrap();
            let what = format!("run {r} ({:?}) step {k}", run.cfg);
            assert_eq!(opt.found_inf().unwrap(), Some(bad.is_some()), "{what}");
            assert_eq!(cpu.found_inf(), Some(bad.is_some()), "{what}");
            let gpu_state = opt.amp_state().unwrap().unwrap();
            let cpu_state = cpu.amp_state().unwrap();
            for (engine, st) in [("GPU", gpu_state), ("CPU", cpu_state)] {
                assert_eq!(
                    st.scale.to_bits(),
                    want_scale.to_bits(),
                    "{engine} {what}: scale {:e} vs torch's {want_scale:e}",
                    st.scale
                );
                assert_eq!(st.growth_tracker, want_tracker, "{engine} {what}");
            }
            assert_eq!(gpu_state, cpu_state, "{what}");
            let gp = arena.read_all_params().unwrap();
            for i in 0..LENS.len() {
                crate::common::assert_twin(&ctx, &format!("t{i} {what}"), &gp[i], &params[i]);
            }
        }
    }
}

/// A test kernel around amp.wgsl's `scale_times`: case i is (scale bits, factor mantissa low
/// word, high word, exponent bits); result i the product's bits.
const SCALE_TIMES_CASES: &str = r#"
@group(0) @binding(8) var<storage, read> cases: array<vec4<u32>>;
@group(0) @binding(9) var<storage, read_write> results: array<u32>;

@compute @workgroup_size(64)
fn scale_times_cases(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i >= arrayLength(&cases)) {
        return;
    }
    let c = cases[i];
    let f = Factor(c.y, c.z, bitcast<i32>(c.w), 0u);
    results[i] = bitcast<u32>(scale_times(bitcast<f32>(c.x), f));
}
"#;

/// `f`'s f64 bits as amp.wgsl's `Factor` words (mantissa low, high, exponent).
fn factor_words(f: f64) -> [u32; 3] {
    let bits = f.to_bits();
    let biased = (bits >> 52) as i32;
    let frac = bits & ((1 << 52) - 1);
    let (mant, exp) = if biased == 0 {
        (frac, -1074)
    } else {
        (frac | (1 << 52), biased - 1075)
    };
    [mant as u32, (mant >> 32) as u32, exp as u32]
}

/// Runs `scale_times` over `cases` (scale, factor) on the GPU.
fn gpu_scale_times(ctx: &GpuContext, cases: &[(f32, f64)]) -> Vec<u32> {
    use wgpu::util::DeviceExt;
    let dev = ctx.device();
    let source = format!(
        "{}{}",
        include_str!("../shaders/amp.wgsl"),
        SCALE_TIMES_CASES
    );
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("scale_times test"),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("scale_times test"),
        layout: None,
        module: &module,
        entry_point: Some("scale_times_cases"),
        compilation_options: Default::default(),
        cache: None,
    });
    let words: Vec<u32> = cases
        .iter()
        .flat_map(|&(s, f)| {
            let [lo, hi, exp] = factor_words(f);
            [s.to_bits(), lo, hi, exp]
        })
        .collect();
    let input = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("scale_times cases"),
        contents: bytemuck::cast_slice(&words),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let output = dev.create_buffer(&wgpu::BufferDescriptor {
        label: Some("scale_times results"),
        size: cases.len() as u64 * 4,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let bind = dev.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("scale_times test"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 8,
                resource: input.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 9,
                resource: output.as_entire_binding(),
            },
        ],
    });
    let mut enc = dev.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: None,
        });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups((cases.len() as u32).div_ceil(64), 1, 1);
    }
    ctx.queue().submit([enc.finish()]);
    wgpu_optim::readback::read_f32(ctx, &output, 0, cases.len())
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// The next f32 up from a positive finite `x` (`f32::next_up` is newer than the MSRV).
fn next_up32(x: f32) -> f32 {
    f32::from_bits(x.to_bits() + 1)
}

/// The next f32 down from a positive `x`.
fn next_down32(x: f32) -> f32 {
    f32::from_bits(x.to_bits() - 1)
}

/// The f32 nearest the exact `s * f` (one rounding), from the f64 product and its exact
/// residual (`mul_add`): differs from torch's double rounding only when the f64 product is an
/// f32 tie that the exact product is not.
fn single_rounding(s: f32, f: f64) -> f32 {
    let d = s as f64 * f;
    let r = d as f32;
    let err = (s as f64).mul_add(f, -d);
    if err == 0.0 || !r.is_finite() || r == 0.0 {
        return r;
    }
    let other = if (r as f64) < d {
        next_up32(r)
    } else if (r as f64) > d {
        next_down32(r)
    } else {
        return r;
    };
    if (r as f64 + other as f64) / 2.0 != d {
        return r;
    }
    // A tie in f64 only: the exact product lies on the side of the residual.
    if (err > 0.0) == (other > r) {
        other
    } else {
        r
    }
}

#[test]
fn the_gpu_multiplies_the_scale_as_torch_does() {
    // amp.wgsl's scale_times against the host's ((scale as f64) * factor) as f32, over random
    // scales of every exponent (subnormals, overflow to infinity), GradScaler-like and random
    // factors, and products made to land on or next to an f32 tie in f64, where rounding to
    // f64 and then to f32 differs from rounding once.
    let Some(ctx) = gpu() else { return };
    let mut rng = fastrand::Rng::with_seed(2024);
    let mut cases: Vec<(f32, f64)> = Vec::new();
    let named = [
        2.0,
        0.5,
        1.7,
        0.3,
        3.0,
        0.7,
        1.3,
        0.45,
        1.1,
        0.9,
        1.0 + f64::EPSILON,
        1.0 - f64::EPSILON / 2.0,
        f64::MAX,
        1e-300,
        f64::from_bits(1),
    ];
    let any_scale = |rng: &mut fastrand::Rng| f32::from_bits(rng.u32(1..0x7f80_0000));
    for _ in 0..100_000 {
        let f = named[rng.usize(..named.len())];
        cases.push((any_scale(&mut rng), f));
        cases.push((rng.f32() * 1e6 + 1e-3, f));
    }
    for _ in 0..150_000 {
        let grow = 1.0 + rng.f64() * 3.0;
        let back = rng.f64().max(1e-9);
        let wide = f64::from_bits(rng.u64(1..0x7ff0_0000_0000_0000));
        cases.push((any_scale(&mut rng), grow));
        cases.push((any_scale(&mut rng), back));
        cases.push((any_scale(&mut rng), wide));
    }
    // f32 ties: t halfway between two f32s, f = t / s and its f64 neighbours.
    for _ in 0..100_000 {
        let s = f32::from_bits(rng.u32(0x0080_0000..0x7f00_0000));
        let near = ((s as f64) * (0.3 + rng.f64() * 3.0)) as f32;
        if !near.is_normal() || !next_up32(near).is_finite() {
            continue;
        }
        let t = (near as f64 + next_up32(near) as f64) / 2.0;
        let f = t / s as f64;
        cases.push((s, f));
        cases.push((s, f64::from_bits(f.to_bits() + 1)));
        cases.push((s, f64::from_bits(f.to_bits() - 1)));
    }
    cases.extend([
        (0.0, 2.0),
        (f32::INFINITY, 2.0),
        (f32::MAX, 2.0),
        (f32::MAX, 1.0 + f64::EPSILON),
        (f32::from_bits(1), 0.5),
        (f32::from_bits(3), 0.5),
        (f32::from_bits(1), 0.75),
        (f32::MIN_POSITIVE, 0.5),
    ]);
    let got = gpu_scale_times(&ctx, &cases);
    let mut double_differs = 0;
    for (&(s, f), &g) in cases.iter().zip(&got) {
        let want = ((s as f64) * f) as f32;
        assert_eq!(
            g,
            want.to_bits(),
            "{s:e} ({:#x}) * {f:e}: GPU {:e} vs {want:e}",
            s.to_bits(),
            f32::from_bits(g)
        );
        double_differs += usize::from(single_rounding(s, f).to_bits() != want.to_bits());
    }
    // The cases reach where the double rounding matters, so a correctly rounded product (or
    // an f32 factor) would fail above.
    println!(
        "{} cases, {double_differs} where rounding once differs",
        cases.len()
    );
    assert!(double_differs > 100, "{double_differs} cases");
}

#[test]
fn found_inf_checks_the_unscaled_gradients_unless_torchs_check_is_chosen() {
    // The default is unchanged: the unscaled check.
    assert_eq!(
        GradScalerConfig::default().found_inf_check,
        FoundInfCheck::Unscaled
    );
    assert_eq!(
        AmpConfig::grad_scaler().loss_scale,
        LossScale::Dynamic(GradScalerConfig::default())
    );
    let Some(ctx) = gpu() else { return };
    // A scale of 0.5 and a finite gradient of 2e38: unscaled, 4e38 overflows to infinity.
    // torch checks the scaled 2e38, finds nothing and steps with the infinite gradient.
    for check in [FoundInfCheck::Unscaled, FoundInfCheck::Scaled] {
        let amp = AmpConfig {
            loss_scale: LossScale::Dynamic(GradScalerConfig {
                init_scale: 0.5,
                found_inf_check: check,
                ..GradScalerConfig::default()
            }),
            skip_non_finite: true,
        };
        let cfg: OptimizerConfig = SgdConfig {
            lr: 0.1,
            ..SgdConfig::default()
        }
        .into();
        let (arena, mut opt) = setup(&ctx, cfg.clone(), amp);
        let mut cpu = CpuOptimizer::new(cfg, &specs()).unwrap();
        cpu.set_amp(Some(amp)).unwrap();
        let mut params = params0();
        let mut g = grads(0, 0.5);
        g[3][7] = 2e38;
        arena.write_all_grads(&g).unwrap();
        opt.step(&arena).unwrap();
        cpu.step(&mut params, &g).unwrap();
        let gp = arena.read_all_params().unwrap();
        let found = check == FoundInfCheck::Unscaled;
        assert_eq!(opt.found_inf().unwrap(), Some(found), "{check:?}");
        assert_eq!(cpu.found_inf(), Some(found), "{check:?}");
        let st = opt.amp_state().unwrap().unwrap();
        assert_eq!(Some(st), cpu.amp_state(), "{check:?}");
        for i in 0..LENS.len() {
            crate::common::assert_twin(&ctx, &format!("{check:?} t{i}"), &gp[i], &params[i]);
        }
        if found {
            // Skipped: nothing moved, and the scale backed off.
            assert!(bits_eq(&gp.concat(), &params0().concat()), "{check:?}");
            assert_eq!((st.scale, st.growth_tracker, st.skipped), (0.25, 0, 1));
            assert_eq!(opt.step_count("t3").unwrap(), 0);
        } else {
            // torch's step: p - lr * inf, the others updated as usual.
            assert_eq!(gp[3][7], f32::NEG_INFINITY);
            assert!(gp[3][6].is_finite() && gp[3][6] != params0()[3][6]);
            assert_eq!((st.scale, st.growth_tracker, st.skipped), (0.5, 1, 0));
            assert_eq!(opt.step_count("t3").unwrap(), 1);
        }
        // A NaN or an infinity in the gradients is found either way.
        for bad in [f32::NAN, f32::INFINITY] {
            let mut g = grads(1, 0.5);
            g[0][0] = bad;
            arena.write_all_grads(&g).unwrap();
            opt.step(&arena).unwrap();
            cpu.step(&mut params, &g).unwrap();
            assert_eq!(opt.found_inf().unwrap(), Some(true), "{check:?} {bad}");
            assert_eq!(cpu.found_inf(), Some(true), "{check:?} {bad}");
            assert_eq!(opt.amp_state().unwrap(), cpu.amp_state(), "{check:?}");
        }
    }
}

// The CPU twin's clipper, alone and with AMP, against the GPU's.

/// Awkward sizes: 1, 255, 257, a few thousand, and 40 small tensors.
fn twin_lens() -> Vec<usize> {
    let mut lens = vec![1, 255, 257, 3001];
    lens.extend((0..40).map(|i| 1 + (i * 7) % 13));
    lens
}

fn twin_specs(lens: &[usize]) -> Vec<TensorSpec> {
    lens.iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n))
        .collect()
}

fn adam_and_sgd_momentum() -> [OptimizerConfig; 2] {
    [
        AdamConfig {
            lr: 0.01,
            weight_decay: 0.01,
            ..AdamConfig::default()
        }
        .into(),
        SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            ..SgdConfig::default()
        }
        .into(),
    ]
}

/// GPU against the CPU twin: exact where the decision and the clip coefficient are (no clip,
/// or an inf-norm clip, whose norm is a max), at fp32 tolerance for an L2 clip (f32 tree sum
/// against f64).
fn compare(ctx: &GpuContext, exact: bool, what: &str, gpu: &[f32], cpu: &[f32]) {
    if exact {
        crate::common::assert_twin(ctx, what, gpu, cpu);
    } else {
        assert_close(what, gpu, cpu, ATOL, RTOL);
    }
}

/// Seven steps of `cfg` with `clip` and `amp` on both engines, fresh random gradients each
/// step, tensor 2 frozen on step 3; with AMP, an infinity in step 4's gradients (skipped).
fn clip_amp_twin(
    ctx: &GpuContext,
    cfg: &OptimizerConfig,
    clip: Option<(f64, NormType)>,
    amp: Option<AmpConfig>,
    seed: u64,
) {
    let lens = twin_lens();
    let specs = twin_specs(&lens);
    let arena = ParamArena::new(ctx, &specs).unwrap();
    let mut opt = Optimizer::new(ctx, &arena, cfg.clone()).unwrap();
    let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
    let clipper = clip.map(|(max_norm, norm)| {
        let c = std::sync::Arc::new(GradClipper::new(ctx, &arena, max_norm, norm).unwrap());
        opt.set_grad_clip(Some(c.clone())).unwrap();
        cpu.set_grad_clip(Some(ClipConfig::new(max_norm, norm)))
            .unwrap();
        c
    });
    if let Some(a) = amp {
        opt.set_amp(&arena, Some(a)).unwrap();
        cpu.set_amp(Some(a)).unwrap();
    }
    let exact = clip.is_none_or(|(_, n)| n == NormType::Inf);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    arena.write_all_params(&params).unwrap();
    let mut clipped_steps = 0;
    for k in 0..7 {
        let what = format!(
            "{} clip {clip:?} amp {} step {k}",
            cfg.name(),
            amp.is_some()
        );
        let scale = cpu.amp_state().map_or(1.0, |s| s.scale);
        let mut g: Vec<Vec<f32>> = lens
            .iter()
            .map(|&n| randn(&mut rng, n, 0.3).iter().map(|x| x * scale).collect())
            .collect();
        if amp.is_some() && k == 4 {
            g[1][3] = f32::INFINITY;
        }
        let frozen = k == 3;
        opt.set_frozen("t2", frozen).unwrap();
        cpu.set_frozen("t2", frozen).unwrap();
        arena.write_all_grads(&g).unwrap();
        opt.step(&arena).unwrap();
        cpu.step(&mut params, &g).unwrap();
        if amp.is_some() {
            assert_eq!(opt.found_inf().unwrap(), Some(k == 4), "{what}");
            assert_eq!(cpu.found_inf(), Some(k == 4), "{what}");
            assert_eq!(opt.amp_state().unwrap(), cpu.amp_state(), "{what}");
        }
        if let (Some(c), Some((max_norm, _))) = (&clipper, clip) {
            let got = c.read_total_norm().unwrap() as f64;
            let want = cpu.last_grad_norm().unwrap();
            if k != 4 || amp.is_none() {
                assert!(
                    (got - want).abs() <= 1e-5 * want,
                    "{what}: norm {got} vs {want}"
                );
                if exact {
                    assert_eq!(got, want as f32 as f64, "{what}");
                }
                clipped_steps += usize::from(want / scale as f64 > max_norm);
            } else {
                assert_eq!(want, f64::INFINITY, "{what}");
            }
        }
        let gp = arena.read_all_params().unwrap();
        for (i, s) in specs.iter().enumerate() {
            compare(
                ctx,
                exact,
                &format!("{what} {}", s.name),
                &gp[i],
                &params[i],
            );
            for st in cpu.tensor_state_names(&s.name).unwrap() {
                compare(
                    ctx,
                    exact,
                    &format!("{what} {} {st}", s.name),
                    &opt.read_state(st, &s.name).unwrap(),
                    &cpu.read_state(st, &s.name).unwrap(),
                );
            }
            assert_eq!(
                opt.step_count(&s.name).unwrap(),
                cpu.step_count(&s.name).unwrap(),
                "{what} {}",
                s.name
            );
        }
    }
    if clip.is_some() {
        assert!(
            clipped_steps >= 3,
            "the clip was active on {clipped_steps} steps"
        );
    }
    if amp.is_some() {
        assert_eq!(cpu.amp_state().unwrap().skipped, 1);
        assert_eq!(cpu.step_count("t0").unwrap(), 6);
        assert_eq!(cpu.step_count("t2").unwrap(), 5);
    }
}

fn dynamic_amp() -> AmpConfig {
    AmpConfig {
        loss_scale: LossScale::Dynamic(GradScalerConfig {
            init_scale: 1024.0,
            growth_factor: 1.7,
            backoff_factor: 0.3,
            growth_interval: 2,
            ..GradScalerConfig::default()
        }),
        skip_non_finite: true,
    }
}

#[test]
fn the_cpu_twin_clips_as_the_gpu_does() {
    let Some(ctx) = gpu() else { return };
    for cfg in adam_and_sgd_momentum() {
        clip_amp_twin(&ctx, &cfg, Some((1.0, NormType::L2)), None, 1);
        clip_amp_twin(&ctx, &cfg, Some((0.25, NormType::Inf)), None, 2);
    }
}

#[test]
fn the_cpu_twin_matches_amp_alone() {
    let Some(ctx) = gpu() else { return };
    for cfg in adam_and_sgd_momentum() {
        clip_amp_twin(&ctx, &cfg, None, Some(dynamic_amp()), 3);
    }
}

#[test]
fn the_cpu_twin_clips_the_unscaled_gradients_under_amp() {
    let Some(ctx) = gpu() else { return };
    for cfg in adam_and_sgd_momentum() {
        clip_amp_twin(
            &ctx,
            &cfg,
            Some((1.0, NormType::L2)),
            Some(dynamic_amp()),
            4,
        );
        clip_amp_twin(
            &ctx,
            &cfg,
            Some((0.25, NormType::Inf)),
            Some(dynamic_amp()),
            5,
        );
    }
}

#[test]
fn an_l2_norm_past_f32s_range_is_infinite_on_both_engines() {
    // 1e20 squared overflows the GPU's f32 sum of squares: its norm is infinite and the clip
    // coefficient 0. The CPU twin sums in f64 but follows it.
    let Some(ctx) = gpu() else { return };
    let lens = twin_lens();
    let specs = twin_specs(&lens);
    let cfg: OptimizerConfig = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        ..SgdConfig::default()
    }
    .into();
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut opt = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
    let clipper = std::sync::Arc::new(GradClipper::new(&ctx, &arena, 1.0, NormType::L2).unwrap());
    opt.set_grad_clip(Some(clipper.clone())).unwrap();
    let mut cpu = CpuOptimizer::new(cfg, &specs).unwrap();
    cpu.set_grad_clip(Some(ClipConfig::new(1.0, NormType::L2)))
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(31);
    let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    arena.write_all_params(&params).unwrap();
    let mut g: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 0.3)).collect();
    g[3][9] = 1e20;
    arena.write_all_grads(&g).unwrap();
    opt.step(&arena).unwrap();
    cpu.step(&mut params, &g).unwrap();
    assert_eq!(clipper.read_total_norm().unwrap(), f32::INFINITY);
    assert_eq!(cpu.last_grad_norm(), Some(f64::INFINITY));
    let gp = arena.read_all_params().unwrap();
    for (i, s) in specs.iter().enumerate() {
        crate::common::assert_twin(&ctx, &s.name, &gp[i], &params[i]);
    }
}

#[test]
fn the_cpu_clip_equals_clip_grad_norm_then_step() {
    // Without a GPU: the CPU twin's clipper is clip_grad_norm_ (f64 norm, here an f32
    // coefficient) followed by the plain step, over the tensors that have a gradient.
    let lens = twin_lens();
    let specs = twin_specs(&lens);
    let cfg = AdamConfig::default();
    let mut clipped = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
    clipped
        .set_grad_clip(Some(ClipConfig::new(0.5, NormType::L2)))
        .unwrap();
    let mut plain = CpuOptimizer::new(cfg, &specs).unwrap();
    let mut rng = fastrand::Rng::with_seed(8);
    let mut a: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    let mut b = a.clone();
    for k in 0..4 {
        let g: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 0.3)).collect();
        clipped.set_frozen("t1", k == 2).unwrap();
        plain.set_frozen("t1", k == 2).unwrap();
        clipped.step(&mut a, &g).unwrap();
        let live: Vec<usize> = (0..lens.len()).filter(|&i| !(k == 2 && i == 1)).collect();
        let mut lg: Vec<Vec<f32>> = live.iter().map(|&i| g[i].clone()).collect();
        let total = cpu_clip_grad_norm(&mut lg, 0.5, NormType::L2).unwrap();
        assert_eq!(clipped.last_grad_norm(), Some(total));
        assert!(total > 0.5, "the clip is active");
        let mut g2 = g.clone();
        for (v, &i) in lg.into_iter().zip(&live) {
            g2[i] = v;
        }
        plain.step(&mut b, &g2).unwrap();
        for i in 0..lens.len() {
            assert_close(&format!("step {k} t{i}"), &a[i], &b[i], ATOL, RTOL);
        }
    }
}

#[test]
fn lookahead_wraps_the_cpu_twin_with_clipping_and_amp() {
    use wgpu_optim::{CpuLookahead, Lookahead, LookaheadConfig};
    let Some(ctx) = gpu() else { return };
    let cfg = LookaheadConfig {
        k: 2,
        ..LookaheadConfig::default()
    };
    let lens = twin_lens();
    let specs = twin_specs(&lens);
    let amp = dynamic_amp();
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut opt = Optimizer::new(&ctx, &arena, AdamConfig::default()).unwrap();
    let clipper = std::sync::Arc::new(GradClipper::new(&ctx, &arena, 0.25, NormType::Inf).unwrap());
    opt.set_grad_clip(Some(clipper)).unwrap();
    opt.set_amp(&arena, Some(amp)).unwrap();
    let mut cpu = CpuOptimizer::new(AdamConfig::default(), &specs).unwrap();
    cpu.set_grad_clip(Some(ClipConfig::new(0.25, NormType::Inf)))
        .unwrap();
    cpu.set_amp(Some(amp)).unwrap();
    let mut rng = fastrand::Rng::with_seed(21);
    let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    arena.write_all_params(&params).unwrap();
    let mut la = Lookahead::new(&ctx, &arena, opt, cfg).unwrap();
    let mut cla = CpuLookahead::new(cpu, cfg, &params).unwrap();
    for k in 0..7 {
        let scale = cla.inner().amp_state().unwrap().scale;
        let mut g: Vec<Vec<f32>> = lens
            .iter()
            .map(|&n| randn(&mut rng, n, 0.3).iter().map(|x| x * scale).collect())
            .collect();
        if k == 3 {
            g[0][0] = f32::NAN;
        }
        arena.write_all_grads(&g).unwrap();
        la.step(&arena).unwrap();
        cla.step(&mut params, &g).unwrap();
        assert_eq!(la.inner_mut().found_inf().unwrap(), Some(k == 3));
        assert_eq!(la.inner().amp_state().unwrap(), cla.inner().amp_state());
        let gp = arena.read_all_params().unwrap();
        for (i, s) in specs.iter().enumerate() {
            crate::common::assert_twin(&ctx, &format!("step {k} {}", s.name), &gp[i], &params[i]);
            if let Ok(slow) = cla.read_slow(&s.name) {
                crate::common::assert_twin(
                    &ctx,
                    &format!("step {k} {} slow", s.name),
                    &la.read_slow(&s.name).unwrap(),
                    &slow,
                );
            }
        }
    }
    // 7 calls, one skipped.
    assert_eq!(cla.steps(), 6);
}

#[test]
fn step_mixed_clips_and_scales_16_bit_gradients_as_the_gpu() {
    use wgpu_optim::precision::to_bits16;
    use wgpu_optim::{Precision, PrecisionOptions};
    let Some(ctx) = gpu() else { return };
    let lens = [1, 255, 257, 3001, 3];
    let specs = twin_specs(&lens);
    let amp = dynamic_amp();
    for p in [Precision::F16, Precision::BF16] {
        for cfg in adam_and_sgd_momentum() {
            let arena = ParamArena::with_precision(
                &ctx,
                &specs,
                p,
                PrecisionOptions {
                    force_packed: false,
                },
            )
            .unwrap();
            let mut opt = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
            let clipper =
                std::sync::Arc::new(GradClipper::new(&ctx, &arena, 1.0, NormType::L2).unwrap());
            opt.set_grad_clip(Some(clipper)).unwrap();
            opt.set_amp(&arena, Some(amp)).unwrap();
            let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
            cpu.set_grad_clip(Some(ClipConfig::new(1.0, NormType::L2)))
                .unwrap();
            cpu.set_amp(Some(amp)).unwrap();
            let mut rng = fastrand::Rng::with_seed(17);
            let mut master: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
            arena.write_all_params(&master).unwrap();
            // write_all_params rounds through the 16-bit model on some paths: start the CPU
            // from what the GPU holds.
            master = arena.read_all_params().unwrap();
            for k in 0..5 {
                let scale = cpu.amp_state().unwrap().scale;
                let g: Vec<Vec<u16>> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| {
                        let mut v: Vec<f32> =
                            randn(&mut rng, n, 0.3).iter().map(|x| x * scale).collect();
                        if k == 2 && i == 3 {
                            v[10] = f32::INFINITY;
                        }
                        to_bits16(p.grads, &v)
                    })
                    .collect();
                for (i, gi) in g.iter().enumerate() {
                    arena.write_grads_bits(&format!("t{i}"), gi).unwrap();
                }
                opt.step(&arena).unwrap();
                cpu.step_mixed(&mut master, &g, p.grads).unwrap();
                let what = format!("{p:?} {} step {k}", cfg.name());
                assert_eq!(opt.found_inf().unwrap(), Some(k == 2), "{what}");
                assert_eq!(cpu.found_inf(), Some(k == 2), "{what}");
                assert_eq!(opt.amp_state().unwrap(), cpu.amp_state(), "{what}");
                let got = arena.read_all_params().unwrap();
                for (i, s) in specs.iter().enumerate() {
                    assert_close(&format!("{what} t{i}"), &got[i], &master[i], ATOL, RTOL);
                    for st in cpu.tensor_state_names(&s.name).unwrap() {
                        assert_close(
                            &format!("{what} t{i} {st}"),
                            &opt.read_state(st, &s.name).unwrap(),
                            &cpu.read_state(st, &s.name).unwrap(),
                            ATOL,
                            RTOL,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn bad_cpu_clip_settings_are_typed_errors_and_change_nothing() {
    let lens = twin_lens();
    let specs = twin_specs(&lens);
    let good = ClipConfig::new(0.5, NormType::L2);
    let mut cpu = CpuOptimizer::new(AdamConfig::default(), &specs).unwrap();
    let mut reference = CpuOptimizer::new(AdamConfig::default(), &specs).unwrap();
    for (attached, max_norm) in [
        (None, 0.0),
        (None, -1.0),
        (None, f64::NAN),
        (Some(good), f64::INFINITY),
        (Some(good), -0.0),
        (Some(good), f64::NAN),
    ] {
        cpu.set_grad_clip(attached).unwrap();
        for norm in [NormType::L2, NormType::Inf] {
            match cpu.set_grad_clip(Some(ClipConfig::new(max_norm, norm))) {
                Err(Error::InvalidHyperparameter { name, .. }) => assert_eq!(name, "max_norm"),
                other => panic!("max_norm {max_norm}: {other:?}"),
            }
            assert_eq!(
                cpu.grad_clip(),
                attached.as_ref(),
                "still attached as before"
            );
        }
    }
    // The clip attached before the refusals is the one that steps.
    reference.set_grad_clip(Some(good)).unwrap();
    let mut rng = fastrand::Rng::with_seed(4);
    let mut a: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    let mut b = a.clone();
    let g: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 0.3)).collect();
    cpu.step(&mut a, &g).unwrap();
    reference.step(&mut b, &g).unwrap();
    assert!(bits_eq(&a.concat(), &b.concat()));
}

#[test]
fn error_if_nonfinite_refuses_the_step_on_both_engines() {
    // A NaN gradient with error_if_nonfinite: the step is refused before the AMP guard, with
    // params, state, step counts and the scaler untouched, on the GPU and on the CPU twin.
    let Some(ctx) = gpu() else { return };
    let lens = twin_lens();
    let specs = twin_specs(&lens);
    let amp = dynamic_amp();
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut opt = Optimizer::new(&ctx, &arena, AdamConfig::default()).unwrap();
    let clipper = GradClipper::new(&ctx, &arena, 1.0, NormType::L2)
        .unwrap()
        .with_error_if_nonfinite(true);
    opt.set_grad_clip(Some(std::sync::Arc::new(clipper)))
        .unwrap();
    opt.set_amp(&arena, Some(amp)).unwrap();
    let mut cpu = CpuOptimizer::new(AdamConfig::default(), &specs).unwrap();
    cpu.set_grad_clip(Some(ClipConfig {
        error_if_nonfinite: true,
        ..ClipConfig::new(1.0, NormType::L2)
    }))
    .unwrap();
    cpu.set_amp(Some(amp)).unwrap();
    let mut rng = fastrand::Rng::with_seed(6);
    let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    arena.write_all_params(&params).unwrap();
    let g: Vec<Vec<f32>> = lens
        .iter()
        .map(|&n| randn(&mut rng, n, 0.3 * 1024.0))
        .collect();
    arena.write_all_grads(&g).unwrap();
    opt.step(&arena).unwrap();
    cpu.step(&mut params, &g).unwrap();
    let before_params = params.clone();
    let before_state = cpu.read_state_all("exp_avg");
    let before_amp = cpu.amp_state();
    let mut bad = g.clone();
    bad[3][5] = f32::NAN;
    arena.write_all_grads(&bad).unwrap();
    let gpu_err = opt.step(&arena).unwrap_err();
    let cpu_err = cpu.step(&mut params, &bad).unwrap_err();
    for e in [&gpu_err, &cpu_err] {
        assert!(
            matches!(e, Error::NonFiniteNorm { norm_type: "L2", norm } if norm.is_nan()),
            "{e:?}"
        );
    }
    assert!(bits_eq(&params.concat(), &before_params.concat()));
    assert_eq!(cpu.read_state_all("exp_avg"), before_state);
    assert_eq!(cpu.amp_state(), before_amp);
    assert_eq!(opt.amp_state().unwrap(), before_amp);
    assert_eq!(cpu.step_count("t0").unwrap(), 1);
    assert_eq!(opt.step_count("t0").unwrap(), 1);
    assert_eq!(cpu.found_inf(), Some(false));
    crate::common::assert_twin(
        &ctx,
        "params after the refusal",
        &arena.read_all_params().unwrap().concat(),
        &params.concat(),
    );
}
