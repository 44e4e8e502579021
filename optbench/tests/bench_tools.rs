//! The measurement tools in `wgpu_optim::bench`: copy.wgsl validates with naga (no GPU needed),
//! the copy kernel copies exactly the requested elements at odd sizes, across binding windows
//! and on 2-D grids, and the step timer returns positive per-step times with either timer.
//! GPU tests print SKIP without an adapter unless REQUIRE_GPU=1.

// The library's test helpers (REQUIRE_GPU handling, seeded data), shared rather than copied.
#[path = "../../tests/common/mod.rs"]
mod common;

use common::{gpu, gpu_with, randn};
use wgpu_optim::bench::{
    CopyConfig, CopyKernel, StepTimer, TimerChoice, TimerKind, COPY_ENTRY, COPY_WGSL,
};
use wgpu_optim::{readback, ContextOptions, GpuContext};

fn validate(src: &str) -> Result<naga::Module, String> {
    let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .map_err(|e| e.emit_to_string(src))?;
    Ok(module)
}

#[test]
fn copy_wgsl_validates_and_has_its_entry_point_and_overrides() {
    let module = validate(COPY_WGSL).unwrap_or_else(|e| panic!("copy.wgsl: {e}"));
    assert!(module.entry_points.iter().any(|e| e.name == COPY_ENTRY));
    let overrides: Vec<&str> = module
        .overrides
        .iter()
        .filter_map(|(_, o)| o.name.as_deref())
        .collect();
    assert!(overrides.contains(&"WG_SIZE"), "{overrides:?}");
    assert!(overrides.contains(&"VEC_PER_INV"), "{overrides:?}");
    // The uniform is 16 bytes, as src/bench.rs writes it.
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).unwrap();
    let (handle, _) = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some("CopyWindow"))
        .expect("CopyWindow struct");
    assert_eq!(layouter[handle].size, 16);
}

/// Reads `override NAME: u32 = <n>u;` from WGSL.
fn wgsl_override(src: &str, name: &str) -> u32 {
    let line = src
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("override {name}:")))
        .unwrap_or_else(|| panic!("override {name} not found"));
    let value = line.split('=').nth(1).unwrap().trim().trim_end_matches(';');
    value.trim_end_matches('u').parse().unwrap()
}

#[test]
fn copy_wgsl_defaults_match_copy_config_default() {
    let d = CopyConfig::default();
    assert_eq!(wgsl_override(COPY_WGSL, "WG_SIZE"), d.workgroup_size);
    assert_eq!(
        wgsl_override(COPY_WGSL, "VEC_PER_INV"),
        d.vec4_per_invocation
    );
}

fn storage(ctx: &GpuContext, label: &str, elems: u64) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: elems.div_ceil(4).max(1) * 16,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

/// Copies `n` elements and checks the copied prefix and that the padding lanes of the last
/// vec4 (pre-filled with a sentinel) were left alone.
fn check_copy(ctx: &GpuContext, kernel: &CopyKernel, n: u64, seed: u64) {
    let padded = n.div_ceil(4).max(1) * 4;
    let src = storage(ctx, "copy_vec4 test src", padded);
    let dst = storage(ctx, "copy_vec4 test dst", padded);
    let mut rng = fastrand::Rng::with_seed(seed);
    let data = randn(&mut rng, padded as usize, 1.0);
    ctx.queue()
        .write_buffer(&src, 0, bytemuck::cast_slice(&data));
    let sentinel = vec![-7.0f32; padded as usize];
    ctx.queue()
        .write_buffer(&dst, 0, bytemuck::cast_slice(&sentinel));
    let job = kernel.bind(ctx, &src, &dst, n).unwrap();
    assert_eq!(job.len(), n);
    let mut enc = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some(COPY_ENTRY),
        });
    job.encode(&mut enc);
    ctx.queue().submit([enc.finish()]);
    let got = readback::read_f32(ctx, &dst, 0, padded as usize).unwrap();
    let n = n as usize;
    let cfg = kernel.config();
    for i in 0..n {
        assert_eq!(got[i], data[i], "n={n} {cfg:?}: element {i} not copied");
    }
    for (i, &x) in got.iter().enumerate().skip(n) {
        assert_eq!(
            x, -7.0,
            "n={n} {cfg:?}: element {i} past the end was written"
        );
    }
}

const ODD_SIZES: [u64; 9] = [0, 1, 2, 3, 5, 257, 1023, 65_537, 100_003];

#[test]
fn copy_kernel_copies_exactly_n_elements_at_odd_sizes() {
    let Some(ctx) = gpu() else { return };
    let kernel = CopyKernel::new(&ctx).unwrap();
    for (i, &n) in ODD_SIZES.iter().enumerate() {
        check_copy(&ctx, &kernel, n, i as u64);
    }
    // Other work splits, so the per-invocation loop and the workgroup width are covered too.
    for cfg in [
        CopyConfig {
            workgroup_size: 64,
            vec4_per_invocation: 4,
        },
        CopyConfig {
            workgroup_size: 128,
            vec4_per_invocation: 3,
        },
    ] {
        let kernel = CopyKernel::with_config(&ctx, cfg).unwrap();
        for (i, &n) in ODD_SIZES.iter().enumerate() {
            check_copy(&ctx, &kernel, n, 100 + i as u64);
        }
    }
}

#[test]
fn copy_kernel_handles_binding_windows_and_2d_grids() {
    // 4 KiB bindings (256 vec4s per window) and 3 workgroups per row force both paths on
    // small buffers.
    let Some(ctx) = gpu_with(ContextOptions {
        max_binding_bytes: Some(4096),
        max_workgroups_per_dim: Some(3),
        ..Default::default()
    }) else {
        return;
    };
    let small = CopyKernel::with_config(
        &ctx,
        CopyConfig {
            workgroup_size: 8,
            vec4_per_invocation: 2,
        },
    )
    .unwrap();
    let src = storage(&ctx, "copy_vec4 test src", 100_003);
    let dst = storage(&ctx, "copy_vec4 test dst", 100_003);
    let job = small.bind(&ctx, &src, &dst, 100_003).unwrap();
    assert_eq!(job.dispatches(), 100_003usize.div_ceil(4).div_ceil(256));
    assert!(job.grids().iter().any(|&(x, y)| x == 3 && y > 1));
    for (i, &n) in ODD_SIZES.iter().enumerate() {
        check_copy(&ctx, &small, n, 200 + i as u64);
    }
    let default = CopyKernel::new(&ctx).unwrap();
    check_copy(&ctx, &default, 100_003, 300);
}

#[test]
fn copy_kernel_rejects_short_buffers_and_bad_configs() {
    let Some(ctx) = gpu() else { return };
    let kernel = CopyKernel::new(&ctx).unwrap();
    let src = storage(&ctx, "copy_vec4 test src", 8);
    let dst = storage(&ctx, "copy_vec4 test dst", 8);
    assert!(kernel.bind(&ctx, &src, &dst, 9).is_err());
    for bad in [
        CopyConfig {
            workgroup_size: 0,
            vec4_per_invocation: 1,
        },
        CopyConfig {
            workgroup_size: 64,
            vec4_per_invocation: 0,
        },
        CopyConfig {
            workgroup_size: 1 << 20,
            vec4_per_invocation: 1,
        },
    ] {
        assert!(CopyKernel::with_config(&ctx, bad).is_err(), "{bad:?}");
    }
}

#[test]
fn step_timer_reports_positive_per_step_times() {
    let Some(ctx) = gpu() else { return };
    let kernel = CopyKernel::new(&ctx).unwrap();
    let src = storage(&ctx, "copy_vec4 test src", 1 << 16);
    let dst = storage(&ctx, "copy_vec4 test dst", 1 << 16);
    let job = kernel.bind(&ctx, &src, &dst, 1 << 16).unwrap();
    for choice in [TimerChoice::Auto, TimerChoice::Wall] {
        let timer = StepTimer::new(&ctx, choice).unwrap();
        if choice == TimerChoice::Wall {
            assert_eq!(timer.kind(), TimerKind::WallClock);
        }
        let mut recorded = 0;
        let b = timer
            .time_batch(&ctx, 4, |enc, i| {
                assert_eq!(i, recorded);
                recorded += 1;
                job.encode(enc);
                Ok(())
            })
            .unwrap();
        assert_eq!((recorded, b.steps), (4, 4));
        assert!(b.wall_s > 0.0 && b.per_step_s() > 0.0, "{b:?}");
        assert_eq!(b.gpu_s.is_some(), timer.kind() == TimerKind::GpuTimestamps);
        assert!(timer.time_batch(&ctx, 0, |_, _| Ok(())).is_err());
    }
    if wgpu_optim::bench::encoder_timestamps_supported(&ctx) {
        let t = StepTimer::new(&ctx, TimerChoice::Gpu).unwrap();
        assert_eq!(t.kind(), TimerKind::GpuTimestamps);
    } else {
        assert!(StepTimer::new(&ctx, TimerChoice::Gpu).is_err());
    }
}
