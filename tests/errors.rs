//! Every bad input returns a typed error that names the problem, and leaves params and state
//! exactly as they were.

use crate::common::{gpu, randn};
use wgpu_optim::ParamGroupTable;
use wgpu_optim::Scheduled;
use wgpu_optim::{
    AdagradConfig, AdamConfig, ContextOptions, CpuOptimizer, Error, GpuContext, LambConfig,
    LarsConfig, Optimizer, OptimizerConfig, ParamArena, RmspropConfig, SgdConfig, TensorSpec,
};

fn hyper_name(e: &Error) -> &'static str {
    match e {
        Error::InvalidHyperparameter { name, .. } => name,
        other => panic!("expected InvalidHyperparameter, got {other:?}"),
    }
}

/// (config, the field that must be named in the error).
fn bad_configs() -> Vec<(OptimizerConfig, &'static str)> {
    let sgd = SgdConfig::default();
    let adam = AdamConfig::default();
    let rms = RmspropConfig::default();
    let ada = AdagradConfig::default();
    use OptimizerConfig as C;
    vec![
        (
            C::Sgd(SgdConfig {
                lr: f64::NAN,
                ..sgd.clone()
            }),
            "lr",
        ),
        (
            C::Sgd(SgdConfig {
                lr: -0.1,
                ..sgd.clone()
            }),
            "lr",
        ),
        (
            C::Sgd(SgdConfig {
                momentum: -0.5,
                ..sgd.clone()
            }),
            "momentum",
        ),
        (
            C::Sgd(SgdConfig {
                weight_decay: -1.0,
                ..sgd.clone()
            }),
            "weight_decay",
        ),
        (
            C::Sgd(SgdConfig {
                dampening: f64::INFINITY,
                ..sgd.clone()
            }),
            "dampening",
        ),
        (
            C::Adam(AdamConfig {
                lr: f64::NAN,
                ..adam.clone()
            }),
            "lr",
        ),
        (
            C::Adam(AdamConfig {
                beta1: 1.0,
                ..adam.clone()
            }),
            "beta1",
        ),
        (
            C::Adam(AdamConfig {
                beta1: -0.1,
                ..adam.clone()
            }),
            "beta1",
        ),
        (
            C::Adam(AdamConfig {
                beta2: 1.5,
                ..adam.clone()
            }),
            "beta2",
        ),
        (
            C::Adam(AdamConfig {
                beta2: f64::NAN,
                ..adam.clone()
            }),
            "beta2",
        ),
        (
            C::Adam(AdamConfig {
                eps: -1e-8,
                ..adam.clone()
            }),
            "eps",
        ),
        (
            C::Adam(AdamConfig {
                weight_decay: -0.01,
                ..adam.clone()
            }),
            "weight_decay",
        ),
        (
            C::Rmsprop(RmspropConfig {
                lr: -1.0,
                ..rms.clone()
            }),
            "lr",
        ),
        (
            C::Rmsprop(RmspropConfig {
                alpha: -0.5,
                ..rms.clone()
            }),
            "alpha",
        ),
        (
            C::Rmsprop(RmspropConfig {
                eps: f64::NAN,
                ..rms.clone()
            }),
            "eps",
        ),
        (
            C::Rmsprop(RmspropConfig {
                momentum: -0.9,
                ..rms.clone()
            }),
            "momentum",
        ),
        (
            C::Rmsprop(RmspropConfig {
                weight_decay: -1.0,
                ..rms.clone()
            }),
            "weight_decay",
        ),
        (
            C::Adagrad(AdagradConfig {
                lr: f64::INFINITY,
                ..ada.clone()
            }),
            "lr",
        ),
        (
            C::Adagrad(AdagradConfig {
                lr_decay: -0.1,
                ..ada.clone()
            }),
            "lr_decay",
        ),
        (
            C::Adagrad(AdagradConfig {
                eps: -1.0,
                ..ada.clone()
            }),
            "eps",
        ),
        (
            C::Adagrad(AdagradConfig {
                initial_accumulator_value: -1.0,
                ..ada.clone()
            }),
            "initial_accumulator_value",
        ),
        (
            C::Adagrad(AdagradConfig {
                weight_decay: f64::NAN,
                ..ada
            }),
            "weight_decay",
        ),
        (
            C::Lars(LarsConfig {
                lr: -1.0,
                ..LarsConfig::default()
            }),
            "lr",
        ),
        (
            C::Lars(LarsConfig {
                trust_coefficient: -1e-3,
                ..LarsConfig::default()
            }),
            "trust_coefficient",
        ),
        (
            C::Lars(LarsConfig {
                eps: f64::NAN,
                ..LarsConfig::default()
            }),
            "eps",
        ),
        (
            C::Lamb(LambConfig {
                beta1: 1.0,
                ..LambConfig::default()
            }),
            "beta1",
        ),
        (
            C::Lamb(LambConfig {
                beta2: -0.5,
                ..LambConfig::default()
            }),
            "beta2",
        ),
        (
            C::Lamb(LambConfig {
                eps: -1.0,
                ..LambConfig::default()
            }),
            "eps",
        ),
        (
            C::Lamb(LambConfig {
                weight_decay: f64::INFINITY,
                ..LambConfig::default()
            }),
            "weight_decay",
        ),
    ]
}

#[test]
fn invalid_hyperparameters_are_rejected_by_name_on_cpu() {
    let specs = [TensorSpec::new("w", 4)];
    for (cfg, field) in bad_configs() {
        let e = CpuOptimizer::new(cfg.clone(), &specs)
            .err()
            .unwrap_or_else(|| panic!("{cfg:?} accepted"));
        assert_eq!(hyper_name(&e), field, "{cfg:?}");
        assert!(
            e.to_string().contains(field),
            "message names the field: {e}"
        );
    }
}

#[test]
fn nesterov_needs_momentum_and_no_dampening() {
    let specs = [TensorSpec::new("w", 4)];
    for cfg in [
        SgdConfig {
            nesterov: true,
            ..SgdConfig::default()
        },
        SgdConfig {
            nesterov: true,
            momentum: 0.9,
            dampening: 0.1,
            ..SgdConfig::default()
        },
    ] {
        let e = CpuOptimizer::new(cfg, &specs).unwrap_err();
        assert!(
            matches!(e, Error::InvalidConfig(m) if m.contains("Nesterov")),
            "{e:?}"
        );
    }
    let lars = LarsConfig {
        nesterov: true,
        ..LarsConfig::default()
    };
    assert!(matches!(
        CpuOptimizer::new(lars, &specs),
        Err(Error::InvalidConfig(_))
    ));
    // The valid combination is accepted.
    let ok = SgdConfig {
        nesterov: true,
        momentum: 0.9,
        ..SgdConfig::default()
    };
    CpuOptimizer::new(ok, &specs).unwrap();
}

#[test]
fn invalid_hyperparameters_are_rejected_on_gpu() {
    let Some(ctx) = gpu() else { return };
    let arena = ParamArena::new(&ctx, &[TensorSpec::new("w", 4)]).unwrap();
    for (cfg, field) in bad_configs() {
        let e = Optimizer::new(&ctx, &arena, cfg.clone())
            .err()
            .unwrap_or_else(|| panic!("{cfg:?} accepted"));
        assert_eq!(hyper_name(&e), field);
    }
}

/// Bad calls in the middle of training change nothing: the run ends exactly where a run
/// without the bad calls ends, bit for bit.
#[test]
fn bad_calls_mid_training_leave_params_and_state_untouched() {
    let Some(ctx) = gpu() else { return };
    let specs = [
        TensorSpec::new("w", 300),
        TensorSpec::new("b", 3).in_group(1),
    ];
    let mut rng = fastrand::Rng::with_seed(3);
    let init = vec![randn(&mut rng, 300, 1.0), randn(&mut rng, 3, 1.0)];
    let grads = vec![randn(&mut rng, 300, 1.0), randn(&mut rng, 3, 1.0)];
    let run = |bad: bool| {
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        let other = ParamArena::new(&ctx, &specs).unwrap();
        arena.write_all_params(&init).unwrap();
        arena.write_all_grads(&grads).unwrap();
        let mut opt = wgpu_optim::Optimizer::new(&ctx, &arena, AdamConfig::default()).unwrap();
        opt.step(&arena).unwrap();
        if bad {
            let e = opt.set_lr(f64::NAN).unwrap_err();
            assert_eq!(hyper_name(&e), "lr");
            let e = opt.set_lr(f64::INFINITY).unwrap_err();
            assert_eq!(hyper_name(&e), "lr");
            let e = opt
                .set_group_config(
                    1,
                    AdamConfig {
                        weight_decay: -1.0,
                        ..AdamConfig::default()
                    },
                )
                .unwrap_err();
            assert_eq!(hyper_name(&e), "weight_decay");
            let e = opt.set_group_config(1, SgdConfig::default()).unwrap_err();
            assert!(matches!(e, Error::RuleMismatch { group: 1, .. }), "{e:?}");
            let e = opt.set_group_lr(5, 0.1).unwrap_err();
            assert_eq!(
                e,
                Error::UnknownGroup {
                    group: 5,
                    groups: 2
                }
            );
            let e = opt.set_frozen("nope", true).unwrap_err();
            assert_eq!(e, Error::UnknownTensor("nope".into()));
            let e = opt.step(&other).unwrap_err();
            assert!(matches!(e, Error::ArenaMismatch { .. }), "{e:?}");
            let e = arena.write_params("w", &[1.0; 299]).unwrap_err();
            assert_eq!(
                e,
                Error::LengthMismatch {
                    what: "w".into(),
                    expected: 300,
                    got: 299
                }
            );
            let e = arena.write_grads("missing", &[1.0]).unwrap_err();
            assert_eq!(e, Error::UnknownTensor("missing".into()));
            let e = arena.write_all_grads(&[vec![0.0; 300]]).unwrap_err();
            assert!(matches!(e, Error::LengthMismatch { .. }), "{e:?}");
            let e = opt.read_state("momentum_buffer", "w").unwrap_err();
            assert!(matches!(e, Error::UnknownState { .. }), "{e:?}");
            assert!(e.to_string().contains("exp_avg"), "lists what exists: {e}");
            assert_eq!(
                opt.step_count("w").unwrap(),
                1,
                "a refused step must not count"
            );
        }
        opt.step(&arena).unwrap();
        let p = arena.read_params_image().unwrap();
        let m = opt.read_state_image("exp_avg").unwrap();
        let v = opt.read_state_image("exp_avg_sq").unwrap();
        (p, m, v, opt.group_lr(0).unwrap(), opt.group_lr(1).unwrap())
    };
    let clean = run(false);
    let with_bad = run(true);
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&clean.0), bits(&with_bad.0), "params");
    assert_eq!(bits(&clean.1), bits(&with_bad.1), "exp_avg");
    assert_eq!(bits(&clean.2), bits(&with_bad.2), "exp_avg_sq");
    assert_eq!((clean.3, clean.4), (with_bad.3, with_bad.4), "lr");
}

#[test]
fn cpu_step_with_wrong_shapes_changes_nothing() {
    let specs = [TensorSpec::new("a", 3), TensorSpec::new("b", 2)];
    let cfg = SgdConfig {
        momentum: 0.9,
        ..SgdConfig::default()
    };
    let mut opt = CpuOptimizer::new(cfg, &specs).unwrap();
    let mut params = vec![vec![1.0f32; 3], vec![2.0; 2]];
    let before = params.clone();
    let e = opt
        .step(&mut params, &[vec![0.1f32; 3], vec![0.1; 3]])
        .unwrap_err();
    assert_eq!(
        e,
        Error::LengthMismatch {
            what: "grads[1]".into(),
            expected: 2,
            got: 3
        }
    );
    let e = opt.step(&mut params, &[vec![0.1f32; 3]]).unwrap_err();
    assert!(matches!(e, Error::LengthMismatch { .. }));
    assert_eq!(params, before);
    assert_eq!(opt.step_count("a").unwrap(), 0);
    assert!(opt
        .read_state("momentum_buffer", "a")
        .unwrap()
        .iter()
        .all(|&x| x == 0.0));
}

#[test]
fn bad_arenas_are_rejected() {
    let Some(ctx) = gpu() else { return };
    assert_eq!(ParamArena::new(&ctx, &[]).unwrap_err(), Error::EmptyArena);
    let dup = [TensorSpec::new("a", 1), TensorSpec::new("a", 1)];
    assert_eq!(
        ParamArena::new(&ctx, &dup).unwrap_err(),
        Error::DuplicateTensor("a".into())
    );
    // Over the device's buffer limit: refused before anything is allocated.
    let too_big = (ctx.limits().max_buffer_size / 4 + 1024) as usize;
    let e = ParamArena::new(&ctx, &[TensorSpec::new("huge", too_big)]).unwrap_err();
    match e {
        Error::BufferTooLarge { bytes, limit, .. } => {
            assert!(bytes > limit);
            assert_eq!(limit, ctx.limits().max_buffer_size);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_adapter_is_a_clear_error() {
    let e = GpuContext::with_options(ContextOptions {
        adapter: Some("no-such-adapter-xyz".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(e, Error::NoAdapter { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("no-such-adapter-xyz"), "{msg}");
    assert!(
        msg.contains("mesa-vulkan-drivers"),
        "says how to get a driver: {msg}"
    );
}

/// A segment's per-group table is a fixed-size uniform array: more groups of one algorithm than
/// it holds is a typed error naming the limit, before anything is allocated.
#[test]
fn too_many_groups_in_one_segment_is_limit_exceeded() {
    let Some(ctx) = gpu() else { return };
    let n = wgpu_optim::shaders::MAX_SEGMENT_GROUPS as usize + 1;
    let specs: Vec<TensorSpec> = (0..n)
        .map(|i| TensorSpec::new(format!("t{i}"), 3))
        .collect();
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let groups = (0..n).fold(wgpu_optim::ParamGroups::new(), |g, i| {
        g.group(
            wgpu_optim::Select::names([format!("t{i}")]),
            AdamConfig {
                lr: 1e-3 * (1.0 + i as f64),
                ..AdamConfig::default()
            },
        )
    });
    let e = Optimizer::with_groups(&ctx, &arena, groups.clone()).unwrap_err();
    assert!(
        matches!(e, Error::LimitExceeded { value, limit, .. } if value == n as u64 && limit == n as u64 - 1),
        "{e:?}"
    );
    // One group fewer is fine, and so is the CPU reference, which has no such table.
    CpuOptimizer::with_groups(&specs, groups).unwrap();
    let fewer = (0..n - 1).fold(wgpu_optim::ParamGroups::new(), |g, i| {
        g.group(
            wgpu_optim::Select::names([format!("t{i}")]),
            AdamConfig::default(),
        )
    });
    let opt = Optimizer::with_groups(&ctx, &arena, fewer).unwrap();
    assert_eq!((opt.groups(), opt.segments()), (n - 1, 1));
}

#[test]
fn an_impossible_allocation_is_an_error_and_earlier_objects_stay_usable() {
    // Arenas past the device's buffer limit are refused before anything is allocated
    // (`BufferTooLarge`); what the driver itself refuses comes back from wgpu's error scopes as
    // `OutOfMemory`. Either way the objects built before keep working.
    let Some(ctx) = gpu() else { return };
    let specs = [TensorSpec::new("w", 1000)];
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    arena.write_params("w", &vec![1.0; 1000]).unwrap();
    arena.write_grads("w", &vec![0.5; 1000]).unwrap();
    let mut opt = Optimizer::new(&ctx, &arena, SgdConfig::default()).unwrap();
    opt.step(&arena).unwrap();
    for len in [
        (ctx.limits().max_buffer_size / 4) as usize + 4096,
        usize::MAX / 8,
    ] {
        let e = ParamArena::new(&ctx, &[TensorSpec::new("huge", len)]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::BufferTooLarge { .. } | Error::OutOfMemory(_) | Error::LimitExceeded { .. }
            ),
            "{e:?}"
        );
    }
    opt.step(&arena).unwrap();
    let p = arena.read_params("w").unwrap();
    // lr 1e-3 twice: 1 - 2 * 0.0005.
    assert!(
        p.iter()
            .all(|&x| (x - (1.0 - 2.0 * 1e-3 * 0.5)).abs() < 1e-6),
        "{}",
        p[0]
    );
}

#[test]
fn an_uncaught_wgpu_error_is_returned_by_the_next_call_not_a_panic() {
    // wgpu's default handler panics on errors outside error scopes; the context keeps the
    // first one and the next call that checks the context returns it. Here the caller
    // records an invalid copy (unaligned size) on the device the optimizer uses.
    let Some(ctx) = gpu() else { return };
    let specs = [TensorSpec::new("w", 64)];
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut opt = Optimizer::new(&ctx, &arena, SgdConfig::default()).unwrap();
    let a = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("caller a"),
        size: 64,
        usage: wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let b = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("caller b"),
        size: 64,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    enc.copy_buffer_to_buffer(&a, 0, &b, 0, 3);
    ctx.queue().submit([enc.finish()]);
    match opt.step(&arena) {
        Err(Error::Validation(m)) => assert!(!m.is_empty()),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        opt.step_count("w").unwrap(),
        0,
        "the refused step did not count"
    );
    // Reported once: the optimizer works on.
    opt.step(&arena).unwrap();
    assert_eq!(opt.step_count("w").unwrap(), 1);
}
