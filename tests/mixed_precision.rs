//! Mixed precision: 16-bit model copy and gradients beside f32 master weights and state.
//!
//! - The GPU's conversions against the `half` crate, bit for bit: f32 to f16/bf16 on edge
//!   cases (overflow to inf, subnormals, NaN, exact ties, -0.0) and on random bit patterns,
//!   and f16/bf16 to f32 on every one of the 65,536 patterns.
//! - Every optimizer and flag combination of the table on the GPU against the CPU reference
//!   (`CpuOptimizer::step_mixed`) in f16 (native and packed) and bf16 modes, and an f16 model
//!   copy over f32 gradients, 7 steps, at the awkward sizes with
//!   odd lengths (a 16-bit pair straddles a tensor's end): master weights and every state
//!   buffer at PyTorch's fp32 tolerance (rtol 1.3e-6, atol 1e-5), and the 16-bit model copy
//!   bit-equal to the `half` crate's rounding of the master weights, after every step.
//! - Padding lanes of the packed buffers stay zero.
//! - Loss scaling with the unscale inside the kernel, and clipping, over 16-bit gradients.
//! - Typed errors: unsupported combinations, Muon, Lookahead, and a
//!   device that grants fewer storage buffers than a mixed kernel binds.

use crate::common::{assert_close, gpu, randn, ATOL, RTOL};
use wgpu_optim::norm::cpu_clip_grad_norm;
use wgpu_optim::precision::{from_bits16, to_bits16};
use wgpu_optim::ParamGroupTable;
use wgpu_optim::Scheduled;
use wgpu_optim::{
    AdamConfig, AmpConfig, CpuOptimizer, Error, GpuContext, GradClipper, GradScalerConfig,
    HalfPath, Lookahead, LookaheadConfig, LossScale, MuonConfig, NormType, Optimizer,
    OptimizerConfig, ParamArena, Precision, PrecisionOptions, SgdConfig, StorageType, TensorSpec,
};

const STEPS: usize = 7;

fn specs(lens: &[usize]) -> Vec<TensorSpec> {
    lens.iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), n).in_group(i % 2))
        .collect()
}

/// The modes under test: f16 on the native path (where the adapter has SHADER_F16), f16
/// forced onto the packed path, and bf16 (always packed).
const MODES: [(Precision, bool); 3] = [
    (Precision::F16, false),
    (Precision::F16, true),
    (Precision::BF16, false),
];

fn arena(ctx: &GpuContext, lens: &[usize], (p, force_packed): (Precision, bool)) -> ParamArena {
    let opts = PrecisionOptions { force_packed };
    let a = ParamArena::with_precision(ctx, &specs(lens), p, opts).unwrap();
    let native = ctx.features().contains(wgpu::Features::SHADER_F16);
    let want = if p == Precision::F16 && native && !force_packed {
        HalfPath::Native
    } else {
        HalfPath::Packed
    };
    assert_eq!(a.half_path(), want);
    assert_eq!(a.precision(), p);
    a
}

/// Whether the adapter gives the native path, so the native-f16 mode is really tested
/// (REQUIRE_GPU runs on lavapipe, which has SHADER_F16).
fn check_native_offered(ctx: &GpuContext) {
    if std::env::var("REQUIRE_GPU").is_ok_and(|v| v == "1") {
        assert!(
            ctx.features().contains(wgpu::Features::SHADER_F16),
            "the CI adapter should offer SHADER_F16"
        );
    }
}

/// Writes `master` straight into the params buffer (not through `write_params`, which rounds
/// the model copy on the host), so the model copy can only come from the kernel.
fn write_master_only(ctx: &GpuContext, arena: &ParamArena, name: &str, data: &[f32]) {
    let t = arena.tensor(name).unwrap();
    ctx.queue().write_buffer(
        arena.params_buffer(),
        t.byte_offset(),
        bytemuck::cast_slice(data),
    );
}

fn is_f32_subnormal(x: f32) -> bool {
    x != 0.0 && x.abs() < f32::MIN_POSITIVE
}

/// Edge cases for f32 -> 16-bit rounding, plus random bit patterns.
fn edge_values(ty: StorageType, rng: &mut fastrand::Rng) -> Vec<f32> {
    let mut v: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN,
        f32::from_bits(0x7fc0_0000),
        f32::from_bits(0xffc0_0000),
        f32::from_bits(0x7fa1_2345),
        f32::from_bits(0xff80_0001),
        // f16: largest finite, just under the rounding boundary, the tie (rounds to inf:
        // 65504's mantissa is odd), over it.
        65504.0,
        65519.99,
        65520.0,
        65536.0,
        -65520.0,
        // f16 subnormals: the smallest, half of it (a tie to 0), a bit over half, the largest,
        // the normal boundary and the tie just under it.
        5.960_464_5e-8,
        2.980_232_2e-8,
        2.980_233e-8,
        6.097_555e-5,
        6.103_515_6e-5,
        6.100_535e-5,
        -5.960_464_5e-8,
        1e-10,
        // bf16: largest finite, and a value that rounds past it to inf.
        f32::from_bits(0x7f7f_0000),
        f32::from_bits(0x7f7f_8000),
        f32::from_bits(0x7f7f_7fff),
        // f32 subnormals.
        f32::from_bits(1),
        f32::from_bits(0x0040_0000),
        f32::from_bits(0x8000_0001),
    ];
    // Exact ties of the target format, even and odd kept bit, normal and subnormal.
    for k in 0..2000u32 {
        let upper = rng.u32(..) & 0xffff_0000;
        match ty {
            StorageType::Bf16 => v.push(f32::from_bits(upper | 0x8000)),
            _ => {
                // f16 normal range: f32 exponents 113..=142.
                let e = 113 + (k % 30);
                let m = rng.u32(..1024);
                let s = (k & 1) << 31;
                v.push(f32::from_bits(s | (e << 23) | (m << 13) | 0x1000));
                // A subnormal tie: (j + 0.5) * 2^-24.
                let j = rng.u32(..1024) as f32;
                v.push((j + 0.5) * 5.960_464_5e-8);
            }
        }
    }
    for _ in 0..20_001 {
        v.push(f32::from_bits(rng.u32(..)));
    }
    v
}

/// The kernel's f32 -> 16-bit rounding (written by an SGD step with lr 0 over zero
/// gradients, which leaves the master weights as they are) against the `half` crate.
#[test]
fn kernel_rounding_to_16_bits_matches_half_bit_for_bit() {
    let Some(ctx) = gpu() else { return };
    check_native_offered(&ctx);
    for mode in MODES {
        let p = mode.0;
        let mut rng = fastrand::Rng::with_seed(7);
        let vals = edge_values(p.model, &mut rng);
        // Two tensors of odd length: the pair at each end straddles into padding.
        let lens = [vals.len(), 3];
        let arena = arena(&ctx, &lens, mode);
        write_master_only(&ctx, &arena, "t0", &vals);
        write_master_only(&ctx, &arena, "t1", &[1.5, -2.25, 3.0e-5]);
        let cfg = SgdConfig {
            lr: 0.0,
            ..Default::default()
        };
        let mut opt = Optimizer::new(&ctx, &arena, cfg).unwrap();
        opt.step(&arena).unwrap();
        let master = arena.read_all_params().unwrap();
        let model: Vec<Vec<u16>> = (0..2)
            .map(|i| arena.read_model_bits(&format!("t{i}")).unwrap().unwrap())
            .collect();
        let mut flushed = 0;
        for (i, (&x, &m)) in vals.iter().zip(&master[0]).enumerate() {
            if x.is_nan() {
                assert!(m.is_nan(), "{p:?} {i}: NaN master became {m}");
            } else if is_f32_subnormal(x) && m == 0.0 {
                // WGSL lets an implementation flush f32 subnormals in arithmetic.
                flushed += 1;
            } else {
                assert_eq!(
                    m.to_bits(),
                    x.to_bits(),
                    "{p:?} {i}: master {x:e} changed to {m:e}"
                );
            }
        }
        eprintln!("{p:?}: {flushed} f32 subnormal master values flushed by the step's add");
        for t in 0..2 {
            let want = to_bits16(p.model, &master[t]);
            for (i, (&g, &w)) in model[t].iter().zip(&want).enumerate() {
                assert_eq!(
                    g, w,
                    "{p:?} tensor {t} element {i}: master {:e} ({:#010x}): kernel {g:#06x}, half {w:#06x}",
                    master[t][i],
                    master[t][i].to_bits()
                );
            }
        }
        assert_packed_padding_zero(&arena, &format!("{p:?} rounding"));
    }
}

/// Every 16-bit pattern as a gradient, widened by the kernel: SGD with lr 1 over master
/// weights of -0.0 leaves exactly -g (for g = ±0 too), which must be the `half` crate's
/// widening, negated.
#[test]
fn kernel_widening_of_every_16_bit_pattern_is_exact() {
    let Some(ctx) = gpu() else { return };
    check_native_offered(&ctx);
    for mode in MODES {
        let p = mode.0;
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let lens = [all.len(), 1];
        let arena = arena(&ctx, &lens, mode);
        arena.write_params("t0", &vec![-0.0; all.len()]).unwrap();
        arena.write_params("t1", &[-0.0]).unwrap();
        arena.write_grads_bits("t0", &all).unwrap();
        arena.write_grads_bits("t1", &[0x3c00]).unwrap();
        assert_eq!(arena.read_grads("t0").unwrap().len(), all.len());
        let cfg = SgdConfig {
            lr: 1.0,
            ..Default::default()
        };
        let mut opt = Optimizer::new(&ctx, &arena, cfg).unwrap();
        opt.step(&arena).unwrap();
        let master = arena.read_params("t0").unwrap();
        let wide = from_bits16(p.grads, &all);
        let mut flushed = 0;
        for (i, (&m, &g)) in master.iter().zip(&wide).enumerate() {
            if g.is_nan() {
                assert!(m.is_nan(), "{p:?} pattern {i:#06x}: NaN gave {m}");
            } else if is_f32_subnormal(g) && m == 0.0 {
                // bf16 subnormals are f32 subnormals; the step's multiply may flush them.
                flushed += 1;
            } else {
                assert_eq!(
                    m.to_bits(),
                    (-g).to_bits(),
                    "{p:?} pattern {i:#06x}: kernel {m:e}, half {:e}",
                    -g
                );
            }
        }
        eprintln!("{p:?}: {flushed} f32-subnormal gradients flushed by the step's multiply");
        // The model copy is the rounding of the master weights (exact here for f16 grads
        // and an f16 model, since -g is representable).
        let model = arena.read_model_bits("t0").unwrap().unwrap();
        assert_eq!(model, to_bits16(p.model, &master));
    }
}

/// Padding lanes of the 16-bit model copy and gradients, and of the master weights, are zero.
fn assert_packed_padding_zero(arena: &ParamArena, what: &str) {
    let n = arena.layout().total_elements() as usize;
    let mut inside = vec![false; n];
    for t in arena.layout().tensors() {
        inside[t.offset..t.offset + t.len].fill(true);
    }
    let model = arena.read_model_image_bits().unwrap().unwrap();
    // 16-bit gradients as bits; f32 gradients (under a 16-bit model) as f32 bits.
    let grads: Vec<u32> = match arena.read_grads_image_bits().unwrap() {
        Some(bits) => bits.iter().map(|&b| u32::from(b)).collect(),
        None => arena
            .read_grads_image()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect(),
    };
    let master = arena.read_params_image().unwrap();
    for j in 0..n {
        if !inside[j] {
            assert_eq!(model[j], 0, "{what}: model padding {j}");
            assert_eq!(grads[j], 0, "{what}: grads padding {j}");
            assert_eq!(master[j].to_bits(), 0, "{what}: master padding {j}");
        }
    }
}

fn frozen(step: usize, tensor: usize) -> bool {
    (step * 7 + tensor * 3) % 5 == 0
}

/// `cfg` in mixed mode `p` on the GPU against the CPU reference, 7 steps.
fn trial(
    ctx: &GpuContext,
    cfg: &OptimizerConfig,
    mode: (Precision, bool),
    lens: &[usize],
    seed: u64,
) {
    let p = mode.0;
    let arena = arena(ctx, lens, mode);
    let specs = specs(lens);
    let mut gpu = Optimizer::new(ctx, &arena, cfg.clone()).unwrap();
    let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
    if gpu.groups() > 1 {
        let g1 = crate::common::with_lr_wd(cfg, cfg.lr() * 0.5, 0.0);
        gpu.set_group_config(1, g1.clone()).unwrap();
        cpu.set_group_config(1, g1).unwrap();
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut master: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    arena.write_all_params(&master).unwrap();
    let what = format!(
        "{} {:?} {} tensors",
        cfg.name(),
        arena.half_path(),
        lens.len()
    );
    let what = format!("{what} {p:?}");
    let states = gpu.state_names();
    let names: Vec<String> = (0..lens.len()).map(|i| format!("t{i}")).collect();
    for k in 0..STEPS {
        // Gradients as the backward pass would store them: already 16-bit (or f32).
        let wide: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 0.5)).collect();
        let grads: Vec<Vec<u16>> = wide.iter().map(|g| to_bits16(p.grads, g)).collect();
        if p.grads.is_16() {
            for (name, g) in names.iter().zip(&grads) {
                arena.write_grads_bits(name, g).unwrap();
            }
        } else {
            arena.write_all_grads(&wide).unwrap();
        }
        for (i, name) in names.iter().enumerate() {
            gpu.set_frozen(name, frozen(k, i)).unwrap();
            cpu.set_frozen(name, frozen(k, i)).unwrap();
        }
        if k == 4 {
            gpu.set_lr(cfg.lr() * 0.7).unwrap();
            cpu.set_lr(cfg.lr() * 0.7).unwrap();
        }
        gpu.step(&arena).unwrap();
        match p.grads.is_16() {
            true => cpu.step_mixed(&mut master, &grads, p.grads).unwrap(),
            false => cpu.step(&mut master, &wide).unwrap(),
        }
        let got = arena.read_all_params().unwrap();
        let model = arena.read_model_image_bits().unwrap().unwrap();
        for (i, name) in names.iter().enumerate() {
            let w = format!("{what} step {k} tensor {i}");
            assert_close(&format!("{w} master"), &got[i], &master[i], ATOL, RTOL);
            for st in &states {
                let Ok(want) = cpu.read_state(st, name) else {
                    continue;
                };
                let have = gpu.read_state(st, name).unwrap();
                assert_close(&format!("{w} {st}"), &have, &want, ATOL, RTOL);
            }
            let t = arena.tensor(name).unwrap();
            let m = &model[t.offset..t.offset + t.len];
            assert!(
                m == to_bits16(p.model, &got[i]).as_slice(),
                "{w}: model copy is not the rounding of the master weights"
            );
        }
    }
    assert_packed_padding_zero(&arena, &what);
}

/// Odd lengths (1, 255, 257, 3: the last pair of each straddles the tensor's end), an empty
/// tensor and one past a chunk.
const LENS: [usize; 7] = [1, 255, 257, 0, 3, 4099, 2];

#[test]
fn every_optimizer_of_the_table_in_f16_and_bf16_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    check_native_offered(&ctx);
    let mut ran = 0;
    // A 16-bit model copy over f32 gradients too (gradients accumulated in f32).
    let f16_over_f32 = (
        Precision {
            model: StorageType::F16,
            grads: StorageType::F32,
        },
        false,
    );
    for cfg in OptimizerConfig::variants() {
        if !cfg.runs_mixed_precision() {
            continue;
        }
        for (m, p) in MODES.into_iter().chain([f16_over_f32]).enumerate() {
            trial(&ctx, &cfg, p, &LENS, 11 + m as u64);
            ran += 1;
        }
    }
    assert!(ran >= 80, "{ran}");
}

#[test]
fn sgd_and_adam_at_large_and_many_small_tensors_match_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut rng = fastrand::Rng::with_seed(5);
    // Many small tensors share packed chunks.
    let many: Vec<usize> = (0..300).map(|_| rng.usize(0..40)).collect();
    let mixed_precisions = [
        (Precision::F16, false),
        (Precision::F16, true),
        (Precision::BF16, false),
        (
            Precision {
                model: StorageType::Bf16,
                grads: StorageType::F16,
            },
            false,
        ),
        (
            Precision {
                model: StorageType::Bf16,
                grads: StorageType::F32,
            },
            false,
        ),
    ];
    for cfg in [
        OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.9,
            nesterov: true,
            ..Default::default()
        }),
        OptimizerConfig::Adam(AdamConfig {
            weight_decay: 0.01,
            decoupled_weight_decay: true,
            ..Default::default()
        }),
    ] {
        for p in mixed_precisions {
            trial(&ctx, &cfg, p, &[278_011, 1], 3);
            trial(&ctx, &cfg, p, &many, 4);
        }
    }
}

#[test]
fn unsupported_modes_are_typed_errors() {
    let Some(ctx) = gpu() else { return };
    let s = specs(&[5]);
    for bad in [
        Precision {
            model: StorageType::F32,
            grads: StorageType::F16,
        },
        Precision {
            model: StorageType::F32,
            grads: StorageType::Bf16,
        },
    ] {
        assert!(matches!(
            ParamArena::with_precision(&ctx, &s, bad, PrecisionOptions::default()),
            Err(Error::Unsupported(_))
        ));
    }
    let m = ParamArena::with_precision(
        &ctx,
        &[TensorSpec::shaped("w", &[4, 3])],
        Precision::BF16,
        PrecisionOptions::default(),
    )
    .unwrap();
    let r = Optimizer::new(&ctx, &m, MuonConfig::default());
    assert!(matches!(r, Err(Error::Unsupported(_))), "{r:?}");
    let r = Optimizer::new(&ctx, &m, wgpu_optim::AdafactorConfig::default());
    assert!(matches!(r, Err(Error::Unsupported(_))), "{r:?}");
    let a = arena(&ctx, &[5, 7], (Precision::BF16, false));
    let opt = Optimizer::new(&ctx, &a, AdamConfig::default()).unwrap();
    assert!(matches!(
        Lookahead::new(&ctx, &a, opt, LookaheadConfig::default()),
        Err(Error::Unsupported(_))
    ));
    // 16-bit gradient bits: wrong length, and an f32 arena.
    assert!(matches!(
        a.write_grads_bits("t0", &[0; 4]),
        Err(Error::LengthMismatch { .. })
    ));
    // 16-bit gradient bits into an arena of f32 gradients.
    let over_f32 = ParamArena::with_precision(
        &ctx,
        &s,
        Precision {
            model: StorageType::Bf16,
            grads: StorageType::F32,
        },
        PrecisionOptions::default(),
    )
    .unwrap();
    assert!(matches!(
        over_f32.write_grads_bits("t0", &[0; 5]),
        Err(Error::Unsupported(_))
    ));
    assert!(over_f32.read_grads_image_bits().unwrap().is_none());
    let f = ParamArena::new(&ctx, &s).unwrap();
    assert_eq!(f.half_path(), HalfPath::None);
    assert!(f.model_buffer().is_none());
    assert!(matches!(
        f.write_grads_bits("t0", &[0; 5]),
        Err(Error::Unsupported(_))
    ));
    let mut cpu = CpuOptimizer::new(AdamConfig::default(), &s).unwrap();
    let mut m = vec![vec![0f32; 5]];
    assert!(matches!(
        cpu.step_mixed(&mut m, &[vec![0u16; 5]], StorageType::F32),
        Err(Error::Unsupported(_))
    ));
}

/// A device granting WebGPU's default of 8 storage buffers per stage: f32 Adam (8) builds,
/// mixed Adam (9: the model copy) is a typed error, and so is every kernel over the limit;
/// SGD (6 + 1) still runs mixed.
#[test]
fn a_short_storage_buffer_budget_is_a_typed_error() {
    if gpu().is_none() {
        return;
    }
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
    let limits = wgpu::Limits {
        max_storage_buffers_per_shader_stage: 8,
        ..adapter.limits()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("eight storage buffers"),
        required_limits: limits,
        ..Default::default()
    }))
    .unwrap();
    let ctx = GpuContext::from_device(device, queue, adapter.get_info());
    assert_eq!(ctx.limits().max_storage_buffers_per_shader_stage, 8);
    let f32_arena = ParamArena::new(&ctx, &specs(&[9])).unwrap();
    Optimizer::new(&ctx, &f32_arena, AdamConfig::default()).unwrap();
    let a = arena(&ctx, &[9], (Precision::F16, false));
    match Optimizer::new(&ctx, &a, AdamConfig::default()) {
        Err(Error::StorageBufferLimit {
            kernel,
            needed,
            limit,
        }) => {
            assert_eq!((kernel, needed, limit), ("adam_step", 9, 8));
        }
        other => panic!("expected StorageBufferLimit, got {other:?}"),
    }
    let mut sgd = Optimizer::new(&ctx, &a, SgdConfig::default()).unwrap();
    a.write_grads("t0", &[1.0; 9]).unwrap();
    sgd.step(&a).unwrap();
}

/// An arena in many binding windows (64 KiB of f32 each, so 32 KiB windows of the 16-bit
/// buffers, whose offsets must stay aligned): SGD, Adam, LAMB and LARS in both modes.
#[test]
fn windowed_mixed_arena_matches_cpu() {
    let Some(ctx) = crate::common::gpu_with(wgpu_optim::ContextOptions {
        max_binding_bytes: Some(64 * 1024),
        ..Default::default()
    }) else {
        return;
    };
    let lens = [257, 5000, 1, 70_001, 0, 16_385, 3];
    for mode in MODES {
        let a = arena(&ctx, &lens, mode);
        assert!(a.layout().windows().len() > 5, "windowing not exercised");
        let align = ctx.limits().min_storage_buffer_offset_alignment as u64;
        assert!(a
            .layout()
            .windows()
            .iter()
            .all(|w| (w.byte_offset() / 2) % align == 0));
    }
    for family in ["sgd", "adam", "lamb", "lars"] {
        for cfg in crate::common::variants_of(family).into_iter().take(3) {
            for mode in MODES {
                trial(&ctx, &cfg, mode, &lens, 21);
            }
        }
    }
}

/// f16 training as it is done: a dynamic loss scale multiplies the gradients before they are
/// stored in f16 (so large scales overflow to inf and the step is skipped, and the scale backs
/// off), and the kernel unscales them in f32 (`g * aux[0]`) after widening. GPU against the CPU
/// twin (`step_mixed` with the same AmpConfig) in every mode, with Adam and SGD.
#[test]
fn loss_scaling_unscales_16_bit_gradients_inside_the_kernel() {
    let Some(ctx) = gpu() else { return };
    let amp = AmpConfig {
        loss_scale: LossScale::Dynamic(GradScalerConfig {
            // 2^17: 0.3 * 2^17 overflows f16's 65504, so the first steps skip and back off.
            init_scale: 131_072.0,
            growth_interval: 3,
            ..GradScalerConfig::default()
        }),
        skip_non_finite: true,
    };
    let lens = [1, 255, 257, 4099];
    for cfg in [
        OptimizerConfig::from(AdamConfig::default()),
        SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            ..SgdConfig::default()
        }
        .into(),
    ] {
        for mode in MODES {
            let p = mode.0;
            let a = arena(&ctx, &lens, mode);
            let specs = specs(&lens);
            let mut opt = Optimizer::new(&ctx, &a, cfg.clone()).unwrap();
            opt.set_amp(&a, Some(amp)).unwrap();
            let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
            cpu.set_amp(Some(amp)).unwrap();
            let mut rng = fastrand::Rng::with_seed(9);
            let mut master: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
            a.write_all_params(&master).unwrap();
            let mut skipped = 0;
            for k in 0..10 {
                let scale = cpu.amp_state().unwrap().scale;
                let g: Vec<Vec<u16>> = lens
                    .iter()
                    .map(|&n| {
                        let v: Vec<f32> =
                            randn(&mut rng, n, 0.3).iter().map(|x| x * scale).collect();
                        to_bits16(p.grads, &v)
                    })
                    .collect();
                for (i, gi) in g.iter().enumerate() {
                    a.write_grads_bits(&format!("t{i}"), gi).unwrap();
                }
                opt.step(&a).unwrap();
                cpu.step_mixed(&mut master, &g, p.grads).unwrap();
                let what = format!("{} {p:?} {:?} step {k}", cfg.name(), a.half_path());
                assert_eq!(opt.found_inf().unwrap(), cpu.found_inf(), "{what}");
                assert_eq!(opt.amp_state().unwrap(), cpu.amp_state(), "{what}");
                skipped += usize::from(cpu.found_inf() == Some(true));
                let got = a.read_all_params().unwrap();
                for (i, spec) in specs.iter().enumerate() {
                    assert_close(&format!("{what} t{i}"), &got[i], &master[i], ATOL, RTOL);
                    for st in cpu.tensor_state_names(&spec.name).unwrap() {
                        assert_close(
                            &format!("{what} t{i} {st}"),
                            &opt.read_state(st, &spec.name).unwrap(),
                            &cpu.read_state(st, &spec.name).unwrap(),
                            ATOL,
                            RTOL,
                        );
                    }
                    let m = a.read_model_bits(&spec.name).unwrap().unwrap();
                    assert_eq!(m, to_bits16(p.model, &got[i]), "{what} t{i} model");
                }
            }
            // bf16 has f32's range, so only f16 overflows at this scale.
            if p.grads == StorageType::F16 {
                assert!(skipped >= 1, "{p:?}: no step overflowed");
            }
        }
    }
}

/// Global-norm clipping over 16-bit gradients: the norm kernels read the packed gradients
/// (both f16 paths store the same bytes), and the clipped step matches the CPU optimizer on
/// the widened gradients clipped on the host (f64 norm there, f32 tree on the GPU).
#[test]
fn clipping_reads_16_bit_gradients() {
    let Some(ctx) = gpu() else { return };
    let lens = [1, 255, 257, 4099, 3];
    for mode in MODES {
        let p = mode.0;
        for norm in [NormType::L2, NormType::Inf] {
            let a = arena(&ctx, &lens, mode);
            let specs = specs(&lens);
            let mut opt = Optimizer::new(&ctx, &a, AdamConfig::default()).unwrap();
            let clipper = std::sync::Arc::new(GradClipper::new(&ctx, &a, 0.5, norm).unwrap());
            opt.set_grad_clip(Some(clipper)).unwrap();
            let mut cpu = CpuOptimizer::new(AdamConfig::default(), &specs).unwrap();
            let mut rng = fastrand::Rng::with_seed(13);
            let mut master: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
            a.write_all_params(&master).unwrap();
            for k in 0..4 {
                let g: Vec<Vec<u16>> = lens
                    .iter()
                    .map(|&n| to_bits16(p.grads, &randn(&mut rng, n, 0.5)))
                    .collect();
                for (i, gi) in g.iter().enumerate() {
                    a.write_grads_bits(&format!("t{i}"), gi).unwrap();
                }
                opt.step(&a).unwrap();
                let mut wide: Vec<Vec<f32>> = g.iter().map(|x| from_bits16(p.grads, x)).collect();
                cpu_clip_grad_norm(&mut wide, 0.5, norm).unwrap();
                cpu.step(&mut master, &wide).unwrap();
                let got = a.read_all_params().unwrap();
                for i in 0..lens.len() {
                    let what = format!("{p:?} {:?} {norm:?} step {k} t{i}", a.half_path());
                    assert_close(&what, &got[i], &master[i], ATOL, RTOL);
                }
            }
        }
    }
}

/// A checkpoint of a mixed-precision run stores the f32 master weights and state; loading
/// it into a fresh arena rounds the model copy from them, and the resumed run is bit-identical
/// to the uninterrupted one (master, state and model copy), in every mode.
#[test]
fn checkpoints_resume_mixed_runs_exactly() {
    let Some(ctx) = gpu() else { return };
    let lens = [1, 255, 257, 3];
    let grads = |k: usize, p: Precision| -> Vec<Vec<u16>> {
        let mut rng = fastrand::Rng::with_seed(100 + k as u64);
        lens.iter()
            .map(|&n| to_bits16(p.grads, &randn(&mut rng, n, 0.5)))
            .collect()
    };
    let feed = |a: &ParamArena, g: &[Vec<u16>]| {
        for (i, gi) in g.iter().enumerate() {
            a.write_grads_bits(&format!("t{i}"), gi).unwrap();
        }
    };
    for mode in MODES {
        let p = mode.0;
        let cfg = AdamConfig {
            weight_decay: 0.01,
            ..Default::default()
        };
        let mut rng = fastrand::Rng::with_seed(1);
        let init: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
        let a = arena(&ctx, &lens, mode);
        a.write_all_params(&init).unwrap();
        let mut opt = Optimizer::new(&ctx, &a, cfg.clone()).unwrap();
        for k in 0..5 {
            feed(&a, &grads(k, p));
            opt.step(&a).unwrap();
            if k == 2 {
                let ck = opt.save_checkpoint(Some(&a)).unwrap();
                let bytes = ck.to_bytes().unwrap();
                // Resume in a fresh arena and optimizer, then compare after step 4.
                let ck = wgpu_optim::Checkpoint::from_bytes(&bytes).unwrap();
                let b = arena(&ctx, &lens, mode);
                let mut resumed = Optimizer::new(&ctx, &b, cfg.clone()).unwrap();
                resumed.load_checkpoint(&ck, Some(&b)).unwrap();
                assert_eq!(
                    b.read_model_image_bits().unwrap(),
                    a.read_model_image_bits().unwrap(),
                    "{p:?}: the loaded model copy is the rounding of the master weights"
                );
                for j in 3..5 {
                    feed(&b, &grads(j, p));
                    resumed.step(&b).unwrap();
                }
                // Run the original to the same point and compare.
                for j in 3..5 {
                    feed(&a, &grads(j, p));
                    opt.step(&a).unwrap();
                }
                let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(b.read_params_image().unwrap()),
                    bits(a.read_params_image().unwrap()),
                    "{p:?} master"
                );
                assert_eq!(
                    b.read_model_image_bits().unwrap(),
                    a.read_model_image_bits().unwrap(),
                    "{p:?} model"
                );
                for st in opt.state_names() {
                    assert_eq!(
                        bits(resumed.read_state_image(st).unwrap()),
                        bits(opt.read_state_image(st).unwrap()),
                        "{p:?} {st}"
                    );
                }
                break;
            }
        }
    }
}

/// Schedule-Free's train/eval swap rewrites the master weights in its own pass; in a mixed
/// arena it rewrites the model copy too, so the forward pass in eval mode reads the rounding
/// of the swapped weights. GPU against the CPU twin's `set_train_mode`.
#[test]
fn schedule_free_eval_swap_rewrites_the_model_copy() {
    let Some(ctx) = gpu() else { return };
    let lens = [1, 255, 257, 3];
    for family in ["schedule_free_adamw", "schedule_free_sgd"] {
        let cfg = crate::common::variants_of(family).remove(0);
        for mode in MODES {
            let p = mode.0;
            let a = arena(&ctx, &lens, mode);
            let specs = specs(&lens);
            let mut opt = Optimizer::new(&ctx, &a, cfg.clone()).unwrap();
            let mut cpu = CpuOptimizer::new(cfg.clone(), &specs).unwrap();
            let mut rng = fastrand::Rng::with_seed(17);
            let mut master: Vec<Vec<f32>> = lens.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
            a.write_all_params(&master).unwrap();
            for _ in 0..3 {
                let g: Vec<Vec<u16>> = lens
                    .iter()
                    .map(|&n| to_bits16(p.grads, &randn(&mut rng, n, 0.5)))
                    .collect();
                for (i, gi) in g.iter().enumerate() {
                    a.write_grads_bits(&format!("t{i}"), gi).unwrap();
                }
                opt.step(&a).unwrap();
                cpu.step_mixed(&mut master, &g, p.grads).unwrap();
            }
            for train in [false, true] {
                opt.set_train_mode(train, &a).unwrap();
                cpu.set_train_mode(train, &mut master).unwrap();
                let got = a.read_all_params().unwrap();
                for i in 0..lens.len() {
                    let what = format!("{family} {p:?} {:?} train={train} t{i}", a.half_path());
                    assert_close(&what, &got[i], &master[i], ATOL, RTOL);
                    let m = a.read_model_bits(&format!("t{i}")).unwrap().unwrap();
                    assert_eq!(m, to_bits16(p.model, &got[i]), "{what} model");
                }
            }
        }
    }
}
