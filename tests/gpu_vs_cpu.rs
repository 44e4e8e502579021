//! GPU kernels against the CPU reference, and against PyTorch's golden fixtures.
//!
//! Every optimizer and every flag combination runs on fresh seeded random data at awkward sizes
//! (1, 255, 257, 278011, 0), on a 1000-tensor arena of random lengths (some 0), on a windowed
//! arena (binding limit forced to 64 KiB, with a tensor split across windows) and on a grid
//! forced to spill into 2-D. Each trial runs 7 steps with tensors frozen on some steps, and
//! compares params and every state buffer after every step.
//!
//! Tolerance: PyTorch's fp32 defaults (rtol 1.3e-6, atol 1e-5). The CPU reference performs the
//! same f32 operations in the same order as the kernels; on lavapipe results are bit-identical,
//! and on hardware the remaining differences come from WGSL's non-correctly-rounded sqrt and
//! division (2.5 ULP), far inside that tolerance after 7 steps.

mod common;

use common::{assert_close, f32s, fixtures, gpu, gpu_with, randn, ATOL, RTOL};
use wgpu_optim::{
    AdagradConfig, AdamConfig, ContextOptions, GpuContext, GroupHyper, LambConfig, LarsConfig,
    OptimizerConfig, ParamArena, RmspropConfig, SgdConfig, TensorSpec,
};

const STEPS: usize = 7;

fn specs(lens: &[usize]) -> Vec<TensorSpec> {
    lens.iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n).in_group(i % 2))
        .collect()
}

/// Frozen pattern: every tensor is frozen on some steps, never on all of them; some are frozen
/// on step 0 (so their first step comes later, which matters for SGD's buffer and Adam's bias
/// correction).
fn frozen(step: usize, tensor: usize) -> bool {
    (step * 7 + tensor * 3) % 5 == 0
}

/// Runs `cfg` on the GPU and the CPU reference side by side and compares after every step.
fn trial(ctx: &GpuContext, cfg: &OptimizerConfig, lens: &[usize], seed: u64) {
    let specs = specs(lens);
    let arena = ParamArena::new(ctx, &specs).unwrap();
    let mut gpu = cfg.build(ctx, &arena).unwrap();
    let mut cpu = cfg.build_cpu(&specs).unwrap();
    // Group 1 gets its own lr and weight decay (biases / norm layers in a real model).
    let base = GroupHyper {
        lr: cfg.lr(),
        weight_decay: 0.0,
    };
    if arena.layout().groups() > 1 {
        let g1 = GroupHyper {
            lr: base.lr * 0.5,
            weight_decay: 0.0,
        };
        gpu.set_group(1, g1).unwrap();
        cpu.set_group(1, g1).unwrap();
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    arena.write_all_params(ctx, &params).unwrap();
    let names = gpu.state_names();
    let mut prev_gpu = params.clone();
    let mut prev_state: Vec<Vec<Vec<f32>>> = names
        .iter()
        .map(|n| {
            arena
                .layout()
                .unpack(&gpu.read_state_image(ctx, n).unwrap())
        })
        .collect();
    let what = if lens.len() <= 10 {
        format!("{} {lens:?}", cfg.name())
    } else {
        format!("{} over {} tensors", cfg.name(), lens.len())
    };
    for k in 0..STEPS {
        let grads: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 0.5)).collect();
        arena.write_all_grads(ctx, &grads).unwrap();
        for i in 0..lens.len() {
            let fz = frozen(k, i);
            gpu.set_frozen(&format!("t{i}"), fz).unwrap();
            cpu.set_frozen_index(i, fz).unwrap();
        }
        if k == 4 {
            // An LR change mid-run (what a scheduler does) reaches both paths.
            gpu.set_lr(base.lr * 0.7).unwrap();
            cpu.set_lr(base.lr * 0.7).unwrap();
        }
        gpu.step(ctx, &arena).unwrap();
        cpu.step(&mut params, &grads).unwrap();

        let got = arena.read_all_params(ctx).unwrap();
        let mut states = Vec::new();
        for name in &names {
            let img = gpu.read_state_image(ctx, name).unwrap();
            states.push(arena.layout().unpack(&img));
        }
        for i in 0..lens.len() {
            let w = format!("{what} step {k} tensor {i}");
            assert_close(&format!("{w} param"), &got[i], &params[i], ATOL, RTOL);
            for (s, name) in names.iter().enumerate() {
                let want = cpu.state(name, i).unwrap();
                assert_close(&format!("{w} {name}"), &states[s][i], want, ATOL, RTOL);
            }
            if frozen(k, i) {
                // A frozen tensor is untouched, bit for bit.
                assert!(bits_eq(&got[i], &prev_gpu[i]), "{w}: frozen param changed");
                for (st, prev) in states.iter().zip(&prev_state) {
                    assert!(bits_eq(&st[i], &prev[i]), "{w}: frozen state changed");
                }
            }
        }
        for i in 0..lens.len() {
            let steps_taken = (0..=k).filter(|&s| !frozen(s, i)).count() as u64;
            assert_eq!(gpu.step_count(&format!("t{i}")).unwrap(), steps_taken);
        }
        prev_gpu = got;
        prev_state = states;
    }
    // Padding between tensors is still zero in params and every state buffer.
    let image = arena.read_params_image(ctx).unwrap();
    assert_padding_zero(&arena, &image, &format!("{what} params"));
    for name in &names {
        let img = gpu.read_state_image(ctx, name).unwrap();
        assert_padding_zero(&arena, &img, &format!("{what} {name}"));
    }
}

fn bits_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn assert_padding_zero(arena: &ParamArena, image: &[f32], what: &str) {
    let mut in_tensor = vec![false; image.len()];
    for t in arena.layout().tensors() {
        in_tensor[t.offset..t.offset + t.len].fill(true);
    }
    for (i, (&v, &inside)) in image.iter().zip(&in_tensor).enumerate() {
        assert!(inside || v == 0.0, "{what}: padding element {i} is {v}");
    }
}

fn sgd_configs() -> Vec<OptimizerConfig> {
    let mut out = Vec::new();
    for (momentum, dampening, nesterov) in [
        (0.0, 0.0, false),
        (0.9, 0.0, false),
        (0.9, 0.3, false),
        (0.9, 0.0, true),
    ] {
        for weight_decay in [0.0, 1e-2] {
            for maximize in [false, true] {
                out.push(OptimizerConfig::Sgd(SgdConfig {
                    lr: 0.01,
                    momentum,
                    dampening,
                    weight_decay,
                    nesterov,
                    maximize,
                }));
            }
        }
    }
    out
}

fn adam_configs() -> Vec<OptimizerConfig> {
    let mut out = Vec::new();
    for decoupled in [false, true] {
        for amsgrad in [false, true] {
            for weight_decay in [0.0, 1e-2] {
                for maximize in [false, true] {
                    out.push(OptimizerConfig::Adam(AdamConfig {
                        lr: 0.01,
                        weight_decay,
                        amsgrad,
                        maximize,
                        decoupled_weight_decay: decoupled,
                        ..AdamConfig::default()
                    }));
                }
            }
        }
    }
    // beta1 = 0 exercises torch.lerp's second branch (weight >= 0.5).
    out.push(OptimizerConfig::Adam(AdamConfig {
        beta1: 0.0,
        beta2: 0.9,
        eps: 1e-3,
        ..AdamConfig::adamw()
    }));
    out
}

fn rmsprop_configs() -> Vec<OptimizerConfig> {
    let mut out = Vec::new();
    for centered in [false, true] {
        for momentum in [0.0, 0.9] {
            for weight_decay in [0.0, 1e-2] {
                for maximize in [false, true] {
                    out.push(OptimizerConfig::Rmsprop(RmspropConfig {
                        centered,
                        momentum,
                        weight_decay,
                        maximize,
                        ..RmspropConfig::default()
                    }));
                }
            }
        }
    }
    out
}

fn adagrad_configs() -> Vec<OptimizerConfig> {
    let mut out = Vec::new();
    for lr_decay in [0.0, 0.05] {
        for initial_accumulator_value in [0.0, 0.1] {
            for weight_decay in [0.0, 1e-2] {
                for maximize in [false, true] {
                    out.push(OptimizerConfig::Adagrad(AdagradConfig {
                        lr_decay,
                        initial_accumulator_value,
                        weight_decay,
                        maximize,
                        ..AdagradConfig::default()
                    }));
                }
            }
        }
    }
    out
}

/// LARS and LAMB: momentum, Nesterov, LARC clipping, trust clipping, always_adapt. Group 1 of
/// every trial arena has weight decay 0, so it is excluded from adaptation (timm's opt-out).
fn lars_lamb_configs() -> Vec<OptimizerConfig> {
    let mut out = Vec::new();
    for (momentum, nesterov, trust_clip, always_adapt) in [
        (0.0, false, false, false),
        (0.9, false, false, false),
        (0.9, true, false, true),
        (0.9, false, true, false),
    ] {
        out.push(OptimizerConfig::Lars(LarsConfig {
            lr: 0.1,
            momentum,
            nesterov,
            weight_decay: 1e-4,
            trust_clip,
            always_adapt,
            ..LarsConfig::default()
        }));
    }
    for (trust_clip, always_adapt) in [(false, false), (true, false), (false, true)] {
        out.push(OptimizerConfig::Lamb(LambConfig {
            trust_clip,
            always_adapt,
            ..LambConfig::default()
        }));
    }
    out
}

const ODD: [usize; 6] = [1, 255, 257, 278_011, 0, 3];

fn many_lengths(seed: u64) -> Vec<usize> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..1000)
        .map(|_| {
            if rng.u8(..) < 20 {
                0
            } else {
                rng.usize(1..600)
            }
        })
        .collect()
}

fn run_table(configs: Vec<OptimizerConfig>, seed: u64) {
    let Some(ctx) = gpu() else { return };
    let many = many_lengths(seed);
    for (j, cfg) in configs.iter().enumerate() {
        trial(&ctx, cfg, &ODD, seed + j as u64);
        trial(&ctx, cfg, &many, seed + 100 + j as u64);
    }
}

#[test]
fn sgd_all_flags_match_cpu() {
    run_table(sgd_configs(), 1);
}

#[test]
fn adam_all_flags_match_cpu() {
    run_table(adam_configs(), 2);
}

#[test]
fn rmsprop_all_flags_match_cpu() {
    run_table(rmsprop_configs(), 3);
}

#[test]
fn adagrad_all_flags_match_cpu() {
    run_table(adagrad_configs(), 4);
}

#[test]
fn lars_and_lamb_match_cpu() {
    run_table(lars_lamb_configs(), 5);
}

/// Every flag combination on an arena processed in many binding windows (64 KiB each), with a
/// 70 000-element tensor that spans several windows.
#[test]
fn windowed_arena_matches_cpu() {
    let Some(ctx) = gpu_with(ContextOptions {
        max_binding_bytes: Some(64 * 1024),
        ..Default::default()
    }) else {
        return;
    };
    let lens = [257, 5000, 1, 70_000, 0, 16_385, 3];
    let arena = ParamArena::new(&ctx, &specs(&lens)).unwrap();
    assert!(
        arena.layout().windows().len() > 5,
        "windowing path not exercised"
    );
    let all = [
        sgd_configs(),
        adam_configs(),
        rmsprop_configs(),
        adagrad_configs(),
    ]
    .concat();
    for (j, cfg) in all.iter().enumerate() {
        trial(&ctx, cfg, &lens, 500 + j as u64);
    }
}

/// Grids wider than the per-dimension limit spill into y (forced here with a limit of 7).
#[test]
fn two_dimensional_grid_matches_cpu() {
    let Some(ctx) = gpu_with(ContextOptions {
        max_workgroups_per_dim: Some(7),
        ..Default::default()
    }) else {
        return;
    };
    for cfg in [
        OptimizerConfig::Adam(AdamConfig::default()),
        OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.9,
            ..SgdConfig::default()
        }),
    ] {
        trial(&ctx, &cfg, &[278_011, 5, 1023], 900);
    }
}

/// The golden PyTorch fixtures through the GPU kernels.
#[test]
fn gpu_matches_pytorch_fixtures() {
    let Some(ctx) = gpu() else { return };
    for (ci, case) in fixtures().iter().enumerate() {
        let arena = ParamArena::new(&ctx, &case.specs()).unwrap();
        let mut opt = case.config().build(&ctx, &arena).unwrap();
        let init: Vec<Vec<f32>> = case.init.iter().map(|v| f32s(v)).collect();
        arena.write_all_params(&ctx, &init).unwrap();
        for k in 0..case.steps {
            for (i, &fz) in case.frozen[k].iter().enumerate() {
                opt.set_frozen(&format!("t{i}"), fz).unwrap();
            }
            arena.write_all_grads(&ctx, &case.grads_at(k)).unwrap();
            opt.step(&ctx, &arena).unwrap();
        }
        let what = format!("case {ci} ({} {:?})", case.optimizer, case.hyper);
        let got = arena.read_all_params(&ctx).unwrap();
        for (i, want) in case.expected.params.iter().enumerate() {
            assert_close(
                &format!("{what} param {i}"),
                &got[i],
                &f32s(want),
                ATOL,
                RTOL,
            );
        }
        for (key, want) in &case.expected.state {
            let (i, name) = key.split_once('.').unwrap();
            let got = opt.read_state(&ctx, name, &format!("t{i}")).unwrap();
            assert_close(
                &format!("{what} state {key}"),
                &got,
                &f32s(want),
                ATOL,
                RTOL,
            );
        }
        for (i, &want) in &case.expected.step {
            assert_eq!(
                opt.step_count(&format!("t{i}")).unwrap(),
                want as u64,
                "{what}"
            );
        }
    }
}

/// A whole 1000-tensor model is updated by one `step()` that records one dispatch.
#[test]
fn thousand_tensors_take_one_dispatch() {
    let Some(ctx) = gpu() else { return };
    let arena = ParamArena::new(&ctx, &specs(&many_lengths(7))).unwrap();
    let opt = wgpu_optim::Adam::new(&ctx, &arena, AdamConfig::default()).unwrap();
    assert_eq!(opt.dispatches_per_step(), 1);
}

/// Garbage written into the padding of the grads buffer (as a caller's own kernel might) never
/// reaches params or state, and padding stays zero.
#[test]
fn padding_stays_zero_even_with_garbage_gradient_padding() {
    let Some(ctx) = gpu() else { return };
    let lens = [1, 2, 3, 5, 255];
    let arena = ParamArena::new(&ctx, &specs(&lens)).unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    let params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    arena.write_all_params(&ctx, &params).unwrap();
    let total = arena.layout().total_elements() as usize;
    let garbage: Vec<f32> = (0..total).map(|i| 1000.0 + i as f32).collect();
    ctx.queue()
        .write_buffer(arena.grads_buffer(), 0, bytemuck::cast_slice(&garbage));
    let mut opt = wgpu_optim::Adam::new(&ctx, &arena, AdamConfig::adamw()).unwrap();
    for _ in 0..3 {
        opt.step(&ctx, &arena).unwrap();
    }
    let image = arena.read_params_image(&ctx).unwrap();
    assert_padding_zero(&arena, &image, "params");
    for s in opt.state_names() {
        assert_padding_zero(&arena, &opt.read_state_image(&ctx, s).unwrap(), s);
    }
    // The tensors themselves did move.
    assert_ne!(arena.read_all_params(&ctx).unwrap(), params);
}

/// `encode_step` records into the caller's encoder: zero grads, write grads with a copy (as a
/// backward pass would), and update, in one submission.
#[test]
fn encode_step_into_callers_encoder() {
    let Some(ctx) = gpu() else { return };
    let lens = [300, 7];
    let specs = specs(&lens);
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let mut rng = fastrand::Rng::with_seed(5);
    let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    let grads: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    arena.write_all_params(&ctx, &params).unwrap();
    // The "backward pass" output lives in the caller's own buffer.
    let image = arena.layout().pack(&grads).unwrap();
    let src = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("caller grads"),
        size: (image.len() * 4) as u64,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue()
        .write_buffer(&src, 0, bytemuck::cast_slice(&image));
    let cfg = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        ..SgdConfig::default()
    };
    let mut opt = wgpu_optim::Sgd::new(&ctx, &arena, cfg.clone()).unwrap();
    let mut cpu = wgpu_optim::CpuOptimizer::new(cfg, &specs).unwrap();
    for _ in 0..3 {
        let mut enc = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("train"),
            });
        arena.zero_grads(&mut enc);
        enc.copy_buffer_to_buffer(
            &src,
            0,
            arena.grads_buffer(),
            0,
            Some((image.len() * 4) as u64),
        );
        opt.encode_step(&ctx, &mut enc, &arena).unwrap();
        ctx.queue().submit([enc.finish()]);
        cpu.step(&mut params, &grads).unwrap();
    }
    let got = arena.read_all_params(&ctx).unwrap();
    for i in 0..lens.len() {
        assert_close(&format!("tensor {i}"), &got[i], &params[i], ATOL, RTOL);
    }
}

/// A context wrapped around a device the caller created.
#[test]
fn context_from_callers_device() {
    // Skips (or fails under REQUIRE_GPU) exactly like the other tests.
    if gpu().is_none() {
        return;
    }
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("caller device"),
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .unwrap();
    let ctx = GpuContext::from_device(device, queue, adapter.get_info());
    trial(
        &ctx,
        &OptimizerConfig::Adam(AdamConfig::default()),
        &[1, 257],
        77,
    );
}
