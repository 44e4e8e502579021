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

use crate::common::{
    assert_close, f32s, fixtures, gpu, gpu_with, randn, variants_of, with_lr_wd, ATOL, RTOL,
};
use wgpu_optim::ParamGroupTable;
use wgpu_optim::Scheduled;
use wgpu_optim::{
    AdamConfig, ContextOptions, CpuOptimizer, Error, GpuContext, Optimizer, OptimizerConfig,
    ParamArena, SgdConfig, TensorSpec,
};

const STEPS: usize = 7;

fn specs(lens: &[usize]) -> Vec<TensorSpec> {
    lens.iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n).in_group(i % 2))
        .collect()
}

/// A context whose kernels run the default split, whatever the adapter's tuned one.
fn default_shapes() -> Option<GpuContext> {
    gpu_with(ContextOptions {
        tuning: Some(wgpu_optim::tune::Tuning::Defaults),
        ..Default::default()
    })
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
    let mut gpu = Optimizer::new(ctx, &arena, cfg.clone()).unwrap();
    let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
    // Group 1 gets its own lr and no weight decay (biases / norm layers in a real model).
    if gpu.groups() > 1 {
        let g1 = with_lr_wd(cfg, cfg.lr() * 0.5, 0.0);
        gpu.set_group_config(1, g1.clone()).unwrap();
        cpu.set_group_config(1, g1).unwrap();
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    arena.write_all_params(&params).unwrap();
    let what = if lens.len() <= 10 {
        format!("{} {lens:?}", cfg.name())
    } else {
        format!("{} over {} tensors", cfg.name(), lens.len())
    };
    run_side_by_side(
        &arena,
        &mut gpu,
        &mut cpu,
        params,
        &what,
        &mut rng,
        |k, _| {
            if k == 4 {
                // An lr change mid-run (what a scheduler does) reaches both paths.
                Some(cfg.lr() * 0.7)
            } else {
                None
            }
        },
    );
}

/// Steps `gpu` and `cpu` side by side for STEPS steps on fresh random gradients, with the
/// frozen pattern, and compares params and every state buffer of every tensor after every
/// step; `lr_at(k, groups)` may set every group's lr before step k. Frozen tensors must stay
/// bit-identical, step counts must match, and each segment's state padding stays zero.
fn run_side_by_side(
    arena: &ParamArena,
    gpu: &mut Optimizer,
    cpu: &mut CpuOptimizer,
    mut params: Vec<Vec<f32>>,
    what: &str,
    rng: &mut fastrand::Rng,
    lr_at: impl Fn(usize, usize) -> Option<f64>,
) {
    let names: Vec<String> = arena
        .layout()
        .tensors()
        .iter()
        .map(|t| t.name.clone())
        .collect();
    let lens: Vec<usize> = arena.layout().tensors().iter().map(|t| t.len).collect();
    let states = gpu.state_names();
    let read_states = |gpu: &Optimizer| -> Vec<Vec<Vec<f32>>> {
        states
            .iter()
            .map(|n| {
                arena
                    .layout()
                    .unpack(&gpu.read_state_image(n).unwrap())
                    .unwrap()
            })
            .collect()
    };
    let mut prev_gpu = params.clone();
    let mut prev_state = read_states(gpu);
    for k in 0..STEPS {
        let grads: Vec<Vec<f32>> = lens.iter().map(|&n| randn(rng, n, 0.5)).collect();
        arena.write_all_grads(&grads).unwrap();
        for (i, name) in names.iter().enumerate() {
            let fz = frozen(k, i);
            gpu.set_frozen(name, fz).unwrap();
            cpu.set_frozen(name, fz).unwrap();
        }
        if let Some(lr) = lr_at(k, gpu.groups()) {
            gpu.set_lr(lr).unwrap();
            cpu.set_lr(lr).unwrap();
        }
        gpu.step(arena).unwrap();
        cpu.step(&mut params, &grads).unwrap();

        let got = arena.read_all_params().unwrap();
        let states_now = read_states(gpu);
        for (i, name) in names.iter().enumerate() {
            let w = format!("{what} step {k} tensor {i}");
            assert_close(&format!("{w} param"), &got[i], &params[i], ATOL, RTOL);
            let kept = cpu.tensor_state_names(name).unwrap();
            assert_eq!(gpu.tensor_state_names(name).unwrap(), kept, "{w}");
            for (s, st) in states.iter().enumerate() {
                if kept.contains(st) {
                    let want = cpu.read_state(st, name).unwrap();
                    assert_close(&format!("{w} {st}"), &states_now[s][i], &want, ATOL, RTOL);
                } else {
                    assert!(
                        matches!(cpu.read_state(st, name), Err(Error::UnknownState { .. })),
                        "{w}: {st} should not exist"
                    );
                }
            }
            if frozen(k, i) {
                // A frozen tensor is untouched, bit for bit.
                assert!(bits_eq(&got[i], &prev_gpu[i]), "{w}: frozen param changed");
                for (st, prev) in states_now.iter().zip(&prev_state) {
                    assert!(bits_eq(&st[i], &prev[i]), "{w}: frozen state changed");
                }
            }
            let in_group = gpu.group_of(name).unwrap().is_some();
            let steps_taken = if in_group {
                (0..=k).filter(|&s| !frozen(s, i)).count() as u64
            } else {
                0
            };
            assert_eq!(gpu.step_count(name).unwrap(), steps_taken, "{w}");
            assert_eq!(cpu.step_count(name).unwrap(), steps_taken, "{w}");
        }
        prev_gpu = got;
        prev_state = states_now;
    }
    // Padding between tensors is still zero in params and in every segment's state buffers.
    let image = arena.read_params_image().unwrap();
    assert_padding_zero(arena, &image, &format!("{what} params"));
    for s in 0..gpu.segments() {
        let l = gpu.segment_layout(s).unwrap().clone();
        for st in &states {
            let Ok(img) = gpu.read_segment_state_image(s, st) else {
                continue;
            };
            let mut inside = vec![false; img.len()];
            for (&i, &off) in l.members().iter().zip(l.state_offsets()) {
                inside[off..off + lens[i]].fill(true);
            }
            for (j, (&v, &ins)) in img.iter().zip(&inside).enumerate() {
                assert!(
                    ins || v == 0.0,
                    "{what} segment {s} {st}: padding {j} is {v}"
                );
            }
        }
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
    variants_of("sgd")
}

fn adam_configs() -> Vec<OptimizerConfig> {
    variants_of("adam")
}

fn rmsprop_configs() -> Vec<OptimizerConfig> {
    variants_of("rmsprop")
}

fn adagrad_configs() -> Vec<OptimizerConfig> {
    variants_of("adagrad")
}

/// LARS and LAMB: momentum, Nesterov, LARC clipping, trust clipping, always_adapt. Group 1 of
/// every trial arena has weight decay 0, so it is excluded from adaptation (timm's opt-out).
fn lars_lamb_configs() -> Vec<OptimizerConfig> {
    [variants_of("lars"), variants_of("lamb")].concat()
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

/// The families with a test of their own above.
const FAMILIES_TESTED_ABOVE: [&str; 6] = ["sgd", "adam", "rmsprop", "adagrad", "lars", "lamb"];

/// Every other family of the library's table, so that an optimizer added with one table row is
/// checked against its CPU twin without a new test (none yet beyond the six above).
#[test]
fn every_other_family_of_the_table_matches_cpu() {
    let rest: Vec<OptimizerConfig> = OptimizerConfig::variants()
        .into_iter()
        .filter(|c| !FAMILIES_TESTED_ABOVE.contains(&c.family()))
        .collect();
    run_table(rest, 6);
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
    // Every flag combination of every optimizer in the table.
    let all = OptimizerConfig::variants();
    for (j, cfg) in all.iter().enumerate() {
        if cfg.family() == "adafactor" {
            // Adafactor needs each tensor in one binding (BufferTooLarge otherwise: checked in
            // tests/optim_adafactor.rs, which also runs it split into binding batches).
            continue;
        }
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
        let mut opt = Optimizer::new(&ctx, &arena, case.config()).unwrap();
        let init: Vec<Vec<f32>> = case.init.iter().map(|v| f32s(v)).collect();
        arena.write_all_params(&init).unwrap();
        for k in 0..case.steps {
            for (i, &fz) in case.frozen[k].iter().enumerate() {
                opt.set_frozen(&format!("t{i}"), fz).unwrap();
            }
            arena.write_all_grads(&case.grads_at(k)).unwrap();
            opt.step(&arena).unwrap();
        }
        let what = format!("case {ci} ({} {:?})", case.optimizer, case.hyper);
        let got = arena.read_all_params().unwrap();
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
            let got = opt.read_state(name, &format!("t{i}")).unwrap();
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
    // The default split (256 x 4), whose packing limit is a quarter chunk: the tensors here
    // are all below it (a narrower tuned split packs only smaller ones, `pack_max_len`).
    let Some(ctx) = default_shapes() else { return };
    let arena = ParamArena::new(&ctx, &specs(&many_lengths(7))).unwrap();
    let opt = Optimizer::new(&ctx, &arena, AdamConfig::default()).unwrap();
    // Two arena groups, one segment, every tensor small enough to share packed chunks: one
    // dispatch (a model of large and small tensors takes one per chunk kind, so two).
    assert_eq!(opt.groups(), 2);
    let windows = opt.segment_layout(0).unwrap().windows();
    assert!(windows.iter().all(|w| w.packed), "{windows:?}");
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
    arena.write_all_params(&params).unwrap();
    let total = arena.layout().total_elements() as usize;
    let garbage: Vec<f32> = (0..total).map(|i| 1000.0 + i as f32).collect();
    ctx.queue()
        .write_buffer(arena.grads_buffer(), 0, bytemuck::cast_slice(&garbage));
    let mut opt = wgpu_optim::Optimizer::new(&ctx, &arena, AdamConfig::adamw()).unwrap();
    for _ in 0..3 {
        opt.step(&arena).unwrap();
    }
    let image = arena.read_params_image().unwrap();
    assert_padding_zero(&arena, &image, "params");
    for s in opt.state_names() {
        let img = opt.read_segment_state_image(0, s).unwrap();
        // One segment over every tensor: its state layout is the arena's.
        assert_padding_zero(&arena, &img, s);
    }
    // The tensors themselves did move.
    assert_ne!(arena.read_all_params().unwrap(), params);
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
    arena.write_all_params(&params).unwrap();
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
    let mut opt = wgpu_optim::Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
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
        opt.encode_step(&mut enc, &arena).unwrap();
        ctx.queue().submit([enc.finish()]);
        cpu.step(&mut params, &grads).unwrap();
    }
    let got = arena.read_all_params().unwrap();
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

/// Lengths for the multi-segment trials: the awkward sizes, each twice, so every segment gets
/// some of them (and an empty tensor).
const SEG_LENS: [usize; 10] = [1, 255, 257, 278_011, 0, 3, 1, 255, 257, 4099];

fn seg_specs(lens: &[usize]) -> Vec<TensorSpec> {
    lens.iter()
        .enumerate()
        .map(|(i, &n)| {
            // Every third tensor is a "matrix" (for Select::matrices); the rest are flat.
            if i % 3 == 0 && n > 0 {
                TensorSpec::new(format!("t{i}"), n).with_shape(&[1, n])
            } else {
                TensorSpec::new(format!("t{i}"), n)
            }
        })
        .collect()
}

/// The configurations of the multi-segment trials: one of each family, with flags on.
fn seg_rules() -> Vec<OptimizerConfig> {
    OptimizerConfig::variants()
        .into_iter()
        .filter(|c| {
            matches!(
                c.name(),
                "lars" | "adamw-amsgrad" | "sgd-nesterov" | "rmsprop-centered-momentum" | "lamb"
            )
        })
        .fold(Vec::new(), |mut out: Vec<OptimizerConfig>, c| {
            if !out.iter().any(|o| o.name() == c.name()) {
                out.push(c);
            }
            out
        })
}

fn names_where(lens: &[usize], f: impl Fn(usize) -> bool) -> Vec<String> {
    (0..lens.len())
        .filter(|&i| f(i))
        .map(|i| format!("t{i}"))
        .collect()
}

/// Two and three segments with different rules in one optimizer: params and every state
/// buffer equal the CPU reference after every step, with frozen tensors, a tensor in no group,
/// and one submission per step.
#[test]
fn two_and_three_segments_match_cpu() {
    let Some(ctx) = gpu() else { return };
    let rules = seg_rules();
    assert_eq!(
        rules.len(),
        5,
        "{:?}",
        rules.iter().map(|r| r.name()).collect::<Vec<_>>()
    );
    let specs = seg_specs(&SEG_LENS);
    for (j, pair) in rules.windows(3).enumerate() {
        // Two segments: a rule on the matrices, another on the rest.
        let two = wgpu_optim::ParamGroups::new()
            .group(wgpu_optim::Select::matrices(), pair[0].clone())
            .group(wgpu_optim::Select::Rest, pair[1].clone());
        // Three segments (four groups): the third rule on two tensors, the second rule in
        // two groups with different lrs, and t5 in no group at all.
        let three = wgpu_optim::ParamGroups::new()
            .group(wgpu_optim::Select::matrices(), pair[0].clone())
            .group(wgpu_optim::Select::names(["t1", "t2"]), pair[2].clone())
            .group(wgpu_optim::Select::names(["t4", "t7"]), pair[1].clone())
            .group(
                wgpu_optim::Select::names(names_where(&SEG_LENS, |i| i == 8)),
                with_lr_wd(&pair[1], pair[1].lr() * 0.5, 0.0),
            );
        for (k, groups) in [two, three].into_iter().enumerate() {
            let arena = ParamArena::new(&ctx, &specs).unwrap();
            let mut gpu = Optimizer::with_groups(&ctx, &arena, groups.clone()).unwrap();
            let mut cpu = CpuOptimizer::with_groups(&specs, groups).unwrap();
            assert_eq!(gpu.segments(), 2 + k);
            // One dispatch per segment, pass and window (a window per chunk kind here: plain
            // chunks of large tensors, packed chunks of small ones), all in one submission.
            let want: usize = (0..gpu.segments())
                .map(|s| {
                    let l = gpu.segment_layout(s).unwrap();
                    let windows = l.windows().iter().filter(|w| w.chunk_count > 0).count();
                    // The segment's rule, through the group of its first tensor.
                    let first = format!("t{}", l.members()[0]);
                    let g = gpu.group_of(&first).unwrap().unwrap();
                    gpu.group_config(g).unwrap().passes().len() * windows
                })
                .sum();
            assert_eq!(gpu.dispatches_per_step(), want, "{}", gpu.name());
            assert!(want <= 2 * 3 + 2 * 3 + 2 * 3);
            let mut rng = fastrand::Rng::with_seed(1000 + j as u64 * 10 + k as u64);
            let params: Vec<Vec<f32>> = SEG_LENS.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
            arena.write_all_params(&params).unwrap();
            let what = format!("{} ({} segments)", gpu.name(), 2 + k);
            run_side_by_side(
                &arena,
                &mut gpu,
                &mut cpu,
                params,
                &what,
                &mut rng,
                |s, _| (s == 4).then_some(1e-3),
            );
            if k == 1 {
                assert_eq!(gpu.group_of("t5").unwrap(), None);
                assert_eq!(gpu.step_count("t5").unwrap(), 0);
            }
        }
    }
}

/// A multi-segment optimizer gives, bit for bit, what each rule alone gives on its tensors.
#[test]
fn segments_equal_each_rule_alone() {
    let Some(ctx) = gpu() else { return };
    let rules = seg_rules();
    let specs = seg_specs(&SEG_LENS);
    let a = names_where(&SEG_LENS, |i| i % 3 == 0);
    let b = names_where(&SEG_LENS, |i| i % 3 != 0);
    let mut rng = fastrand::Rng::with_seed(77);
    let init: Vec<Vec<f32>> = SEG_LENS.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..STEPS)
        .map(|_| SEG_LENS.iter().map(|&n| randn(&mut rng, n, 0.5)).collect())
        .collect();
    let run = |groups: wgpu_optim::ParamGroups| {
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        arena.write_all_params(&init).unwrap();
        let mut opt = Optimizer::with_groups(&ctx, &arena, groups).unwrap();
        for (k, g) in grads.iter().enumerate() {
            arena.write_all_grads(g).unwrap();
            for i in 0..SEG_LENS.len() {
                opt.set_frozen(&format!("t{i}"), frozen(k, i)).unwrap();
            }
            opt.step(&arena).unwrap();
        }
        let params = arena.read_all_params().unwrap();
        let mut state = std::collections::BTreeMap::new();
        for i in 0..SEG_LENS.len() {
            let t = format!("t{i}");
            for s in opt.tensor_state_names(&t).unwrap() {
                state.insert((t.clone(), s), opt.read_state(s, &t).unwrap());
            }
        }
        (params, state)
    };
    for pair in rules.windows(2) {
        let sel = |names: &[String]| wgpu_optim::Select::names(names.iter().cloned());
        let (both_p, both_s) = run(wgpu_optim::ParamGroups::new()
            .group(sel(&a), pair[0].clone())
            .group(sel(&b), pair[1].clone()));
        let (a_p, a_s) = run(wgpu_optim::ParamGroups::new().group(sel(&a), pair[0].clone()));
        let (b_p, b_s) = run(wgpu_optim::ParamGroups::new().group(sel(&b), pair[1].clone()));
        for i in 0..SEG_LENS.len() {
            let alone = if i % 3 == 0 { &a_p[i] } else { &b_p[i] };
            assert!(
                bits_eq(&both_p[i], alone),
                "{}+{} tensor {i}",
                pair[0].name(),
                pair[1].name()
            );
            // The tensors the other rule alone did not select stayed at their initial values.
            let other = if i % 3 == 0 { &b_p[i] } else { &a_p[i] };
            assert!(bits_eq(other, &init[i]), "unselected tensor {i} moved");
        }
        let mut alone_s = a_s;
        alone_s.extend(b_s);
        assert_eq!(both_s.len(), alone_s.len());
        for (key, v) in &both_s {
            assert!(bits_eq(v, &alone_s[key]), "{key:?}");
        }
    }
}

/// State memory is proportional to what a segment optimizes: AdamW on 1% of the elements
/// allocates about 1% of the arena per AdamW state buffer.
#[test]
fn state_memory_follows_the_segment() {
    let Some(ctx) = gpu() else { return };
    // 100 tensors of 10 000 elements; AdamW on one of them, SGD without momentum (no state)
    // on the rest.
    let specs: Vec<TensorSpec> = (0..100)
        .map(|i| TensorSpec::new(format!("t{i}"), 10_000))
        .collect();
    let arena = ParamArena::new(&ctx, &specs).unwrap();
    let arena_bytes = arena.layout().buffer_bytes();
    let groups = wgpu_optim::ParamGroups::new()
        .group(wgpu_optim::Select::names(["t42"]), AdamConfig::adamw())
        .group(wgpu_optim::Select::Rest, SgdConfig::default());
    let opt = Optimizer::with_groups(&ctx, &arena, groups).unwrap();
    let adam = opt.segment_layout(0).unwrap();
    assert_eq!(adam.members(), &[42]);
    let per_state = adam.state_bytes();
    assert_eq!(per_state, 10_000 * 4);
    assert_eq!(per_state * 100, arena_bytes);
    // exp_avg and exp_avg_sq: 2% of one arena buffer in all; SGD keeps nothing.
    assert_eq!(opt.state_bytes(), 2 * per_state);
    println!(
        "AdamW on 1% of a {arena_bytes}-byte arena: {per_state} bytes per state buffer \
         (an arena-sized buffer would be {arena_bytes})"
    );
    // Whole-arena AdamW for comparison: each state buffer is the arena's size.
    let full = Optimizer::new(&ctx, &arena, AdamConfig::adamw()).unwrap();
    assert_eq!(full.state_bytes(), 2 * arena_bytes);
    // The whole-arena segment runs the kernels specialised for state at the params' offsets
    // (WGSL STATE_AT_PARAMS); the 1% segment runs the general ones. Both are checked against
    // the CPU by the trials above.
    let l = arena.layout();
    assert!(full.segment_layout(0).unwrap().state_at_params(l));
    assert!(!opt.segment_layout(0).unwrap().state_at_params(l));
}

/// Segments over an arena processed in many 64 KiB binding windows: each segment's params
/// windows skip the other segment's tensors, and its state windows are its own.
#[test]
fn windowed_segments_match_cpu() {
    let Some(ctx) = gpu_with(ContextOptions {
        max_binding_bytes: Some(64 * 1024),
        ..Default::default()
    }) else {
        return;
    };
    let lens = [257, 5000, 1, 70_000, 0, 16_385, 3, 40_000, 9];
    let specs = seg_specs(&lens);
    for pair in seg_rules().windows(2) {
        let groups = wgpu_optim::ParamGroups::new()
            .group(wgpu_optim::Select::matrices(), pair[0].clone())
            .group(wgpu_optim::Select::Rest, pair[1].clone());
        let arena = ParamArena::new(&ctx, &specs).unwrap();
        let mut gpu = Optimizer::with_groups(&ctx, &arena, groups.clone()).unwrap();
        let mut cpu = CpuOptimizer::with_groups(&specs, groups).unwrap();
        assert!(
            gpu.segment_layout(0).unwrap().windows().len() > 1
                && gpu.segment_layout(1).unwrap().windows().len() > 1,
            "windowing path not exercised"
        );
        let mut rng = fastrand::Rng::with_seed(4242);
        let params: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
        arena.write_all_params(&params).unwrap();
        let what = format!("windowed {}", gpu.name());
        run_side_by_side(
            &arena,
            &mut gpu,
            &mut cpu,
            params,
            &what,
            &mut rng,
            |_, _| None,
        );
    }
}

/// Small tensors share packed chunks: 10,000 tensors of 0 to 300 elements (two interleaved
/// parameter groups, frozen tensors among them) against the CPU reference for every
/// elementwise family, with padding still zero.
#[test]
fn packed_small_tensors_match_cpu() {
    // At 256 x 4 every tensor here is packed (tests/tuning.rs runs narrower splits, which
    // pack only the smaller ones).
    let Some(ctx) = default_shapes() else { return };
    let mut rng = fastrand::Rng::with_seed(314);
    let lens: Vec<usize> = (0..10_000).map(|_| rng.usize(0..=300)).collect();
    let arena = ParamArena::new(&ctx, &specs(&lens)).unwrap();
    let names = [
        "sgd-nesterov",
        "adamw-amsgrad",
        "rmsprop-centered-momentum",
        "adagrad",
    ];
    for (j, name) in names.iter().enumerate() {
        let cfg = OptimizerConfig::variants()
            .into_iter()
            .rev()
            .find(|c| c.name() == *name)
            .unwrap();
        let opt = Optimizer::new(&ctx, &arena, cfg.clone()).unwrap();
        let l = opt.segment_layout(0).unwrap();
        let packed = l
            .chunks()
            .iter()
            .filter(|c| c.group & wgpu_optim::arena::CHUNK_PACKED != 0)
            .count();
        // About 10,000 tensors x 150 elements / 4096 per chunk.
        assert!(packed > 300, "{name}: only {packed} packed chunks");
        assert!(l.chunks().len() < 500, "{}", l.chunks().len());
        drop(opt);
        trial(&ctx, &cfg, &lens, 3000 + j as u64);
    }
}
