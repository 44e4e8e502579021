//! Criterion benchmarks of one optimizer step.
//!
//! `gpu/<optimizer>/<elements>`: one fused step of each optimizer over one tensor of 2^16, 2^20
//! and 2^24 elements. Each measurement queues K steps (one submission each, as a training loop
//! does) and waits for the queue once, so submit latency is amortised; the time is host wall
//! clock. Throughput is the bytes a step moves (SPEC §5 bytes per element x elements).
//!
//! `cpu/<optimizer>/<elements>`: the single-threaded CPU reference on the same sizes, for
//! comparison.
//!
//! `QUICK=1 cargo bench --bench step` shrinks the sizes and measurement times for CI smoke runs.
//! Without an adapter the GPU group is skipped (printed as SKIP).

use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use wgpu_optim::{CpuOptimizer, GpuContext, Optimizer, OptimizerConfig, ParamArena, TensorSpec};

fn quick() -> bool {
    std::env::var("QUICK").is_ok_and(|v| v == "1")
}

fn sizes() -> Vec<usize> {
    if quick() {
        vec![1 << 10, 1 << 14]
    } else {
        vec![1 << 16, 1 << 20, 1 << 24]
    }
}

/// The library's named configurations (its one table of optimizers).
fn optimizers() -> Vec<(&'static str, OptimizerConfig)> {
    OptimizerConfig::presets()
        .into_iter()
        .map(|p| (p.name, p.config))
        .collect()
}

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.f32() - 0.5).collect()
}

/// Short runs for large sizes (a 2^24 step takes tens of ms on lavapipe) and under QUICK=1.
fn configure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    n: usize,
) {
    if quick() {
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(500));
    } else if n >= 1 << 22 {
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(8));
    } else {
        group
            .sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
    }
}

fn gpu_steps(c: &mut Criterion) {
    let ctx = match GpuContext::new() {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("SKIP gpu benchmarks: {e}");
            return;
        }
    };
    for n in sizes() {
        let mut group = c.benchmark_group("gpu");
        configure(&mut group, n);
        let specs = [TensorSpec::new("w", n)];
        let arena = ParamArena::new(&ctx, &specs).expect("arena");
        arena.write_params("w", &data(n, 1)).expect("params upload");
        arena.write_grads("w", &data(n, 2)).expect("grads upload");
        for (name, cfg) in optimizers() {
            let mut opt = Optimizer::new(&ctx, &arena, cfg.clone()).expect("optimizer");
            // First dispatch compiles the shader on lavapipe; keep it out of the samples.
            opt.step(&arena).expect("step");
            ctx.wait().expect("wait");
            group.throughput(Throughput::Bytes(cfg.bytes_per_element() * n as u64));
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter_custom(|k| {
                    ctx.wait().expect("wait");
                    let t = Instant::now();
                    for _ in 0..k {
                        opt.step(&arena).expect("step");
                    }
                    ctx.wait().expect("wait");
                    t.elapsed()
                })
            });
        }
        group.finish();
    }
}

fn cpu_steps(c: &mut Criterion) {
    for n in sizes() {
        let mut group = c.benchmark_group("cpu");
        configure(&mut group, n);
        let specs = [TensorSpec::new("w", n)];
        let grads = vec![data(n, 2)];
        for (name, cfg) in optimizers() {
            let mut opt = CpuOptimizer::new(cfg.clone(), &specs).expect("cpu optimizer");
            let mut params = vec![data(n, 1)];
            group.throughput(Throughput::Bytes(cfg.bytes_per_element() * n as u64));
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| opt.step(&mut params, &grads).expect("cpu step"))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, gpu_steps, cpu_steps);
criterion_main!(benches);
