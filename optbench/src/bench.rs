//! `optbench bench`: optimizer-step throughput per size, tensor count and optimizer, against
//! the copy-kernel roofline, the per-tensor baseline and the CPU reference.

use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use wgpu_optim::bench::{
    gb_per_s, host_memcpy, CopyConfig, CopyKernel, StepTimer, Summary, TimerKind,
    COPY_BYTES_PER_ELEMENT,
};
use wgpu_optim::tune::KernelShape;
use wgpu_optim::{
    AmpConfig, CpuOptimizer, GpuContext, Lookahead, LookaheadConfig, Optimizer, OptimizerConfig,
    ParamArena, Precision, PrecisionOptions, StorageType, TensorSpec,
};

use crate::tables::{f2, f3, fmt_elems, opt_f, table};
use crate::util::{copy_buffers, progress, randn, summary};
use crate::Opts;

/// Most tensors one case splits its elements into (the host keeps a name and a table row per
/// tensor; 10 000 is the largest count measured in PERFORMANCE.md).
const MAX_TENSORS: usize = 1_000_000;

#[derive(Debug, Clone)]
pub(crate) struct BenchPlan {
    /// (row label, configuration, storage of the model copy and gradients).
    optimizers: Vec<(String, OptimizerConfig, Precision)>,
    sizes: Vec<u64>,
    tensors: Vec<usize>,
    iters: usize,
    warmup: usize,
    /// Each timed batch should take about this long (wall clock).
    batch_target_s: f64,
    /// (optimizer, size) pairs that get the per-tensor baseline.
    baseline: Vec<(String, u64)>,
    cpu: bool,
    lookahead: bool,
    /// Also time every case with the AMP guard attached (`--amp`).
    amp: bool,
}

impl BenchPlan {
    pub(crate) fn from_opts(opts: &Opts, quick: bool) -> Result<Self> {
        let names: Vec<String> = if !opts.optimizers.is_empty() {
            opts.optimizers.clone()
        } else if quick {
            vec!["adam".into(), "sgd-momentum".into()]
        } else {
            [
                "sgd",
                "sgd-momentum",
                "adam",
                "adamw",
                "adam-amsgrad",
                "rmsprop",
                "rmsprop-centered-momentum",
                "adagrad",
            ]
            .map(String::from)
            .to_vec()
        };
        let optimizers = names
            .iter()
            .map(|n| {
                // The library's table of named configurations.
                OptimizerConfig::preset(n)
                    .map(|c| (n.clone(), c))
                    .ok_or_else(|| {
                        let known: Vec<&str> =
                            OptimizerConfig::presets().iter().map(|p| p.name).collect();
                        anyhow!("unknown optimizer {n:?}; known: {}", known.join(", "))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let precisions = if opts.precision.is_empty() {
            vec![Precision::F32]
        } else {
            opts.precision.clone()
        };
        let mut optimizers_by_precision = Vec::new();
        for (n, c) in optimizers {
            for &p in &precisions {
                if p.is_mixed() && grad_reads(&c).is_none() {
                    bail!(
                        "--precision {}: {n}'s gradient reads per step are not counted for the \
                         bytes per element; bench it in f32",
                        precision_name(p)
                    );
                }
                let label = match p.is_mixed() {
                    false => n.clone(),
                    true => format!("{n} [{}]", precision_name(p)),
                };
                optimizers_by_precision.push((label, c.clone(), p));
            }
        }
        let optimizers = optimizers_by_precision;
        let sizes = if !opts.sizes.is_empty() {
            opts.sizes.clone()
        } else if quick {
            vec![1 << 20, 1 << 22]
        } else {
            vec![1 << 20, 1 << 22, 1 << 24]
        };
        let tensors = if !opts.tensors.is_empty() {
            opts.tensors.clone()
        } else if quick {
            vec![1, 1000]
        } else {
            vec![1, 1000, 10_000]
        };
        if sizes.contains(&0) || tensors.contains(&0) {
            bail!("sizes and tensor counts must be positive");
        }
        let baseline_for: Vec<String> = if opts.no_baseline {
            Vec::new()
        } else if opts.baseline_for.iter().any(|s| s == "all")
            || (opts.baseline_for.is_empty() && quick)
        {
            names.clone()
        } else if opts.baseline_for.is_empty() {
            let adam = names.iter().find(|n| *n == "adam");
            vec![adam.unwrap_or(&names[0]).clone()]
        } else {
            opts.baseline_for.clone()
        };
        let baseline_sizes: Vec<u64> = if !opts.baseline_sizes.is_empty() {
            opts.baseline_sizes.clone()
        } else if quick {
            sizes.clone()
        } else {
            sizes.iter().min().into_iter().copied().collect()
        };
        let mut baseline = Vec::new();
        for n in &baseline_for {
            if !names.contains(n) {
                bail!("--baseline-for {n:?} is not among the benchmarked optimizers {names:?}");
            }
            for &s in &baseline_sizes {
                if !sizes.contains(&s) {
                    bail!("--baseline-sizes {s} is not among the benchmarked sizes {sizes:?}");
                }
                baseline.push((n.clone(), s));
            }
        }
        if opts.iters == Some(0) {
            bail!("--iters 0: at least one timed batch is needed");
        }
        if opts.warmup == Some(0) {
            bail!("--warmup 0: at least one warm-up step is needed (shaders compile on the first)");
        }
        if let Some(t) = tensors.iter().find(|&&t| t == 0 || t > MAX_TENSORS) {
            bail!("--tensors {t}: each count must be in 1..={MAX_TENSORS}");
        }
        Ok(Self {
            optimizers,
            sizes,
            tensors,
            iters: opts.iters.unwrap_or(if quick { 5 } else { 10 }),
            warmup: opts.warmup.unwrap_or(if quick { 2 } else { 3 }),
            batch_target_s: if quick { 0.02 } else { 0.05 },
            baseline,
            cpu: !opts.no_cpu,
            lookahead: opts.lookahead,
            amp: opts.amp,
        })
    }
}

#[derive(Serialize, Debug, Clone)]
struct CopyRow {
    elements: u64,
    steps_per_batch: u32,
    /// Per-copy times measured before the optimizer cases of this size.
    ms_before: Summary,
    /// Per-copy times measured after them.
    ms_after: Summary,
    /// Every candidate split of the copy timed once at this size (3 batches each): the
    /// fastest, and its median ms. The tuned split was chosen on a smaller scratch copy, and
    /// copies this close are hard to rank, so the roofline takes the best of all.
    best_split: CopyConfig,
    best_split_ms: f64,
    /// GB/s of the fastest of the before, after and best-split medians: the roofline for this
    /// size.
    gb_per_s: f64,
}

#[derive(Serialize, Debug, Clone)]
struct HostMemcpy {
    bytes: usize,
    threads: usize,
    gb_per_s: Summary,
    single_thread_gb_per_s: Summary,
}

#[derive(Serialize, Debug, Clone)]
struct BaselineRow {
    /// One arena, one optimizer and one dispatch (its own pass) per tensor, all in one
    /// submission per step.
    ms: Summary,
    steps_per_batch: u32,
    /// Per-tensor median time / fused median time.
    fused_speedup: f64,
}

#[derive(Serialize, Debug, Clone)]
struct CpuRow {
    ms: Summary,
    gb_per_s: f64,
}

/// The same case with the AMP guard attached (`--amp`: GradScaler's dynamic scale and the
/// non-finite skip).
#[derive(Serialize, Debug, Clone)]
struct AmpRow {
    /// Per-step time with the guard.
    ms: Summary,
    /// Median with the guard / the plain step's median (same run).
    cost_vs_plain: f64,
}

/// The same case under Lookahead (`--lookahead`).
#[derive(Serialize, Debug, Clone)]
struct LookaheadRow {
    /// Per-step time with k = 1: the inner step and a sync, in one submission.
    ms_k1: Summary,
    /// Median k = 1 time minus the plain step's median: one sync.
    sync_ms: f64,
    /// (plain + sync / 5) / plain: Lookahead's per-step cost at the paper's k = 5.
    cost_vs_plain_k5: f64,
}

#[derive(Serialize, Debug, Clone)]
pub(crate) struct CaseRow {
    pub(crate) optimizer: String,
    pub(crate) elements: u64,
    pub(crate) tensors: usize,
    bytes_per_element: u64,
    dispatches_per_step: usize,
    steps_per_batch: u32,
    /// Per-step time by the run's timer.
    ms: Summary,
    /// Per-step host wall clock (median), for comparison with the GPU timer.
    wall_ms_median: f64,
    /// bytes_per_element * elements / median time.
    pub(crate) gb_per_s: f64,
    /// gb_per_s / the copy kernel's GB/s at the same element count.
    fraction_of_copy: f64,
    /// Median time / the median time of one tensor of the same size (same optimizer).
    time_vs_one_tensor: Option<f64>,
    per_tensor_baseline: Option<BaselineRow>,
    cpu_reference: Option<CpuRow>,
    lookahead: Option<LookaheadRow>,
    amp: Option<AmpRow>,
}

#[derive(Serialize, Debug)]
pub(crate) struct BenchReport {
    pub(crate) adapter: String,
    timer: TimerKind,
    timer_description: &'static str,
    iters: usize,
    warmup: usize,
    copy_kernel: CopyConfig,
    /// Every kernel's work split in this run, and where it came from (tuned, cached, ...).
    shapes: Vec<wgpu_optim::tune::ShapeChoice>,
    copy: Vec<CopyRow>,
    /// The best copy-kernel GB/s of the run (the plot's roofline).
    pub(crate) roofline_gb_per_s: f64,
    host_memcpy: Option<HostMemcpy>,
    /// (optimizer, elements) pairs for which the per-tensor baseline ran (tensor counts > 1).
    per_tensor_baseline_for: Vec<(String, u64)>,
    pub(crate) cases: Vec<CaseRow>,
    total_s: f64,
    /// 1-minute load average at the start and end of the run (Linux), to judge noise: other
    /// processes on the machine compete with lavapipe's threads.
    load_average_start: Option<f64>,
    load_average_end: Option<f64>,
}

/// 1-minute load average from /proc/loadavg (None elsewhere).
/// How many times one step reads each gradient, for the families whose count is known here:
/// the single-pass elementwise ones (the norm-reducing and caution passes read it again).
fn grad_reads(cfg: &OptimizerConfig) -> Option<u64> {
    cfg.grad_reads()
}

fn precision_name(p: Precision) -> String {
    let n = |t: StorageType| match t {
        StorageType::F32 => "f32",
        StorageType::F16 => "f16",
        StorageType::Bf16 => "bf16",
    };
    if p.model == p.grads {
        n(p.model).to_string()
    } else {
        format!("{} model, {} grads", n(p.model), n(p.grads))
    }
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Splits `n` elements into `t` tensors of nearly equal length.
fn split(n: u64, t: usize) -> Vec<usize> {
    let t64 = t as u64;
    (0..t64)
        .map(|i| (n / t64 + u64::from(i < n % t64)) as usize)
        .collect()
}

fn slices<'a>(flat: &'a [f32], lens: &[usize]) -> Vec<&'a [f32]> {
    let mut at = 0;
    lens.iter()
        .map(|&n| {
            let s = &flat[at..at + n];
            at += n;
            s
        })
        .collect()
}

/// Warm up with `warmup` steps (at least one: shaders compile on the first dispatch), size the
/// batch K from a calibration batch so a batch lasts about `target_s` (K >= `k_min`; K = 1
/// without calibration when one step takes over half a second, where submit overhead is
/// negligible), then take `iters` timed batches. Returns the per-step times in ms by the
/// timer, the wall-clock per-step ms, and K.
fn measure<F>(
    ctx: &GpuContext,
    timer: &StepTimer,
    warmup: usize,
    iters: usize,
    target_s: f64,
    k_min: u32,
    mut record: F,
) -> Result<(Vec<f64>, Vec<f64>, u32)>
where
    F: FnMut(&mut wgpu::CommandEncoder) -> wgpu_optim::Result<()>,
{
    let warm = timer.time_batch(ctx, warmup.max(1) as u32, |e, _| record(e))?;
    let k = if warm.wall_per_step_s() > 0.5 {
        1
    } else {
        let calib = timer.time_batch(ctx, k_min.max(1), |e, _| record(e))?;
        let t = calib.wall_per_step_s().max(1e-7);
        ((target_s / t).ceil() as u32).clamp(k_min.max(1), 1000)
    };
    let mut ms = Vec::with_capacity(iters);
    let mut wall = Vec::with_capacity(iters);
    for _ in 0..iters {
        let b = timer.time_batch(ctx, k, |e, _| record(e))?;
        ms.push(b.per_step_s() * 1e3);
        wall.push(b.wall_per_step_s() * 1e3);
    }
    Ok((ms, wall, k))
}

/// Every size must fit one buffer of the device (and the library's u32 vec4 bound) before any
/// host or GPU memory is allocated for it.
fn check_sizes(ctx: &GpuContext, plan: &BenchPlan) -> Result<()> {
    let limit = ctx.limits().max_buffer_size;
    let max_elems = (limit / 4).min(wgpu_optim::arena::MAX_ARENA_VECS * 4);
    for &n in &plan.sizes {
        if n > max_elems {
            bail!(
                "--sizes {n}: one buffer of {n} f32s needs {} bytes; this adapter's \
                 max_buffer_size is {limit} bytes, so at most {max_elems} elements",
                n.saturating_mul(4)
            );
        }
    }
    Ok(())
}

pub(crate) fn bench(ctx: &GpuContext, opts: &Opts, plan: &BenchPlan) -> Result<BenchReport> {
    check_sizes(ctx, plan)?;
    let started = Instant::now();
    let load_start = load_average();
    let timer = StepTimer::new(ctx, opts.timer.into())?;
    // The copy split measured fastest on this adapter (timed now if nothing is cached), so
    // the fraction of copy compares against the best streaming copy found here.
    let copy_kernel = CopyKernel::tuned(ctx)?;
    let baseline_counts = plan.tensors.iter().filter(|&&t| t > 1).count();
    let cases = plan.sizes.len() * plan.optimizers.len() * plan.tensors.len();
    let work = 2 * plan.sizes.len() + cases + plan.baseline.len() * baseline_counts;
    let pb = progress(work as u64, "bench");
    let mut rng = fastrand::Rng::with_seed(opts.seed);
    let is_cpu_adapter = ctx.adapter_info().device_type == wgpu::DeviceType::Cpu;
    let host = if is_cpu_adapter {
        pb.set_message("host memcpy");
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let bytes = 128 << 20;
        let reps = if plan.iters <= 5 { 5 } else { 10 };
        Some(HostMemcpy {
            bytes,
            threads,
            gb_per_s: summary(&host_memcpy(bytes, threads, reps))?,
            single_thread_gb_per_s: summary(&host_memcpy(bytes, 1, reps))?,
        })
    } else {
        None
    };
    let mut copy_rows = Vec::new();
    let mut rows: Vec<CaseRow> = Vec::new();
    for &n in &plan.sizes {
        let params_flat = randn(&mut rng, n as usize, 1.0);
        let grads_flat = randn(&mut rng, n as usize, 0.5);

        // The copy roofline at this size, measured before and after this size's cases: the
        // machine is shared, and a transient slowdown during one measurement would otherwise
        // lower the roofline for every case.
        pb.set_message(format!("copy {}", fmt_elems(n)));
        let (copy_src, copy_dst) = copy_buffers(ctx, n);
        ctx.queue()
            .write_buffer(&copy_src, 0, bytemuck::cast_slice(&params_flat));
        let job = copy_kernel.bind(ctx, &copy_src, &copy_dst, n)?;
        let measure_copy = || {
            measure(
                ctx,
                &timer,
                plan.warmup,
                plan.iters,
                plan.batch_target_s,
                3,
                |e| {
                    job.encode(e);
                    Ok(())
                },
            )
        };
        let (copy_ms, _, copy_k) = measure_copy()?;
        let copy_before = summary(&copy_ms)?;
        // Every other split at this size too, so the line is the best copy found here.
        let mut best_split = (copy_kernel.config(), copy_before.median);
        for shape in KernelShape::candidates(ctx.limits()) {
            let config = CopyConfig::from(shape);
            if config == copy_kernel.config() {
                continue;
            }
            let k = CopyKernel::with_config(ctx, config)?;
            let j = k.bind(ctx, &copy_src, &copy_dst, n)?;
            let (ms, _, _) = measure(
                ctx,
                &timer,
                1,
                plan.iters.min(3),
                plan.batch_target_s,
                3,
                |e| {
                    j.encode(e);
                    Ok(())
                },
            )?;
            let m = summary(&ms)?.median;
            if m < best_split.1 {
                best_split = (config, m);
            }
        }
        let first_row = rows.len();
        pb.inc(1);

        for (name, cfg, precision) in &plan.optimizers {
            for &t in &plan.tensors {
                let lens = split(n, t);
                let specs: Vec<TensorSpec> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| TensorSpec::new(format!("t{i}"), l))
                    .collect();
                let parts_p = slices(&params_flat, &lens);
                let parts_g = slices(&grads_flat, &lens);
                pb.set_message(format!("{name} {} x{t}", fmt_elems(n)));

                // The fused multi-tensor step.
                let arena = ParamArena::with_precision(
                    ctx,
                    &specs,
                    *precision,
                    PrecisionOptions::default(),
                )?;
                arena.write_all_params(&parts_p)?;
                arena.write_all_grads(&parts_g)?;
                let mut opt = Optimizer::new(ctx, &arena, cfg.clone())?;
                let (ms, wall, k) = measure(
                    ctx,
                    &timer,
                    plan.warmup,
                    plan.iters,
                    plan.batch_target_s,
                    3,
                    |e| opt.encode_step(e, &arena),
                )?;
                let s = summary(&ms)?;
                let bpe = precision
                    .bytes_per_element(cfg.bytes_per_element(), grad_reads(cfg).unwrap_or(1));
                let gbs = gb_per_s((n * bpe) as f64, s.median * 1e-3);
                let dispatches = opt.dispatches_per_step();
                // The AMP guard on the same optimizer and arena (grads stay finite, so every
                // step applies), then detached again.
                let amp = if plan.amp {
                    opt.set_amp(&arena, Some(AmpConfig::grad_scaler()))?;
                    let (ams, _, _) = measure(
                        ctx,
                        &timer,
                        plan.warmup,
                        plan.iters,
                        plan.batch_target_s,
                        3,
                        |e| opt.encode_step(e, &arena),
                    )?;
                    opt.set_amp(&arena, None)?;
                    let a = summary(&ams)?;
                    Some(AmpRow {
                        cost_vs_plain: a.median / s.median,
                        ms: a,
                    })
                } else {
                    None
                };
                // Lookahead around the same optimizer, every step a sync, on the same arena.
                let lookahead = if plan.lookahead && !precision.is_mixed() {
                    let cfg = LookaheadConfig::default().with_k(1);
                    let mut la = Lookahead::new(ctx, &arena, opt, cfg)?;
                    let (lms, _, _) = measure(
                        ctx,
                        &timer,
                        plan.warmup,
                        plan.iters,
                        plan.batch_target_s,
                        3,
                        |e| la.encode_step(e, &arena),
                    )?;
                    let ls = summary(&lms)?;
                    let sync_ms = ls.median - s.median;
                    Some(LookaheadRow {
                        ms_k1: ls,
                        sync_ms,
                        cost_vs_plain_k5: (s.median + sync_ms / 5.0) / s.median,
                    })
                } else {
                    drop(opt);
                    None
                };
                drop(arena);
                pb.inc(1);

                // The naive loop: one arena, one optimizer and one dispatch per tensor.
                let baseline = if t > 1 && plan.baseline.contains(&(name.clone(), n)) {
                    pb.set_message(format!("{name} {} x{t} per-tensor", fmt_elems(n)));
                    let mut per: Vec<(ParamArena, Optimizer)> = Vec::with_capacity(t);
                    for (i, spec) in specs.iter().enumerate() {
                        let a = ParamArena::new(ctx, std::slice::from_ref(spec))?;
                        if lens[i] > 0 {
                            a.write_params(&spec.name, parts_p[i])?;
                            a.write_grads(&spec.name, parts_g[i])?;
                        }
                        let o = Optimizer::new(ctx, &a, cfg.clone())?;
                        per.push((a, o));
                    }
                    let (bms, _, bk) = measure(
                        ctx,
                        &timer,
                        1,
                        plan.iters.min(3),
                        plan.batch_target_s,
                        2,
                        |e| {
                            for (a, o) in per.iter_mut() {
                                o.encode_step(e, a)?;
                            }
                            Ok(())
                        },
                    )?;
                    let bs = summary(&bms)?;
                    pb.inc(1);
                    Some(BaselineRow {
                        ms: bs,
                        steps_per_batch: bk,
                        fused_speedup: bs.median / s.median,
                    })
                } else {
                    None
                };

                // The CPU reference, single-threaded, on the same data.
                // (f32 only: the CPU twin of a mixed step is the f32 step on widened gradients.)
                let cpu_row = if plan.cpu && !precision.is_mixed() {
                    pb.set_message(format!("{name} {} x{t} cpu", fmt_elems(n)));
                    let mut cpu = CpuOptimizer::new(cfg.clone(), &specs)?;
                    let mut p: Vec<Vec<f32>> = parts_p.iter().map(|s| s.to_vec()).collect();
                    let g: Vec<Vec<f32>> = parts_g.iter().map(|s| s.to_vec()).collect();
                    cpu.step(&mut p, &g)?;
                    let mut cms = Vec::new();
                    for _ in 0..plan.iters.min(5) {
                        let t0 = Instant::now();
                        cpu.step(&mut p, &g)?;
                        cms.push(t0.elapsed().as_secs_f64() * 1e3);
                    }
                    std::hint::black_box(&p);
                    let cs = summary(&cms)?;
                    Some(CpuRow {
                        ms: cs,
                        gb_per_s: gb_per_s((n * bpe) as f64, cs.median * 1e-3),
                    })
                } else {
                    None
                };

                rows.push(CaseRow {
                    optimizer: name.clone(),
                    elements: n,
                    tensors: t,
                    bytes_per_element: bpe,
                    dispatches_per_step: dispatches,
                    steps_per_batch: k,
                    ms: s,
                    wall_ms_median: summary(&wall)?.median,
                    gb_per_s: gbs,
                    fraction_of_copy: f64::NAN,
                    time_vs_one_tensor: None,
                    per_tensor_baseline: baseline,
                    cpu_reference: cpu_row,
                    lookahead,
                    amp,
                });
            }
        }
        pb.set_message(format!("copy {}", fmt_elems(n)));
        let (copy_ms, _, _) = measure_copy()?;
        let copy_after = summary(&copy_ms)?;
        let best_ms = copy_before.median.min(copy_after.median).min(best_split.1);
        let copy_gbs = gb_per_s((n * COPY_BYTES_PER_ELEMENT) as f64, best_ms * 1e-3);
        for r in &mut rows[first_row..] {
            r.fraction_of_copy = r.gb_per_s / copy_gbs;
        }
        copy_rows.push(CopyRow {
            elements: n,
            steps_per_batch: copy_k,
            ms_before: copy_before,
            ms_after: copy_after,
            best_split: best_split.0,
            best_split_ms: best_split.1,
            gb_per_s: copy_gbs,
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    let one: Vec<(String, u64, f64)> = rows
        .iter()
        .filter(|r| r.tensors == 1)
        .map(|r| (r.optimizer.clone(), r.elements, r.ms.median))
        .collect();
    for r in &mut rows {
        r.time_vs_one_tensor = one
            .iter()
            .find(|(o, n, _)| *o == r.optimizer && *n == r.elements)
            .map(|(_, _, m)| r.ms.median / m);
    }
    let roofline = copy_rows.iter().map(|c| c.gb_per_s).fold(0.0, f64::max);
    Ok(BenchReport {
        adapter: format!(
            "{} ({:?}, {:?})",
            ctx.adapter_info().name,
            ctx.adapter_info().backend,
            ctx.adapter_info().device_type
        ),
        timer: timer.kind(),
        timer_description: timer.kind().describe(),
        iters: plan.iters,
        warmup: plan.warmup,
        copy_kernel: copy_kernel.config(),
        shapes: ctx.tune_report().choices,
        copy: copy_rows,
        roofline_gb_per_s: roofline,
        host_memcpy: host,
        per_tensor_baseline_for: plan.baseline.clone(),
        cases: rows,
        total_s: started.elapsed().as_secs_f64(),
        load_average_start: load_start,
        load_average_end: load_average(),
    })
}

pub(crate) fn print_bench(r: &BenchReport) {
    println!("== bench on {}", r.adapter);
    println!(
        "   timer: {}; {} timed batches per case after {} warm-up steps; each batch queues K \
         steps (one submission each) and waits once; times are per step",
        r.timer_description, r.iters, r.warmup
    );
    println!(
        "   GB/s = SPEC §5 bytes/element x elements / median step time (decimal GB); \
         copy kernel: {} invocations x {} vec4, 8 B/element",
        r.copy_kernel.workgroup_size, r.copy_kernel.vec4_per_invocation
    );
    let shapes: Vec<String> = r
        .shapes
        .iter()
        .map(|c| format!("{} {} ({:?})", c.kernel, c.shape, c.source).to_lowercase())
        .collect();
    println!(
        "   work splits (invocations x vec4s each; `optbench info` for the timings): {}",
        shapes.join(", ")
    );
    if let Some(h) = &r.host_memcpy {
        println!(
            "   host memcpy ({} MiB, read+write counted): {:.1} GB/s on {} threads \
             (p10 {:.1}, p90 {:.1}), {:.1} GB/s on 1 thread",
            h.bytes >> 20,
            h.gb_per_s.median,
            h.threads,
            h.gb_per_s.p10,
            h.gb_per_s.p90,
            h.single_thread_gb_per_s.median
        );
    }
    println!();
    println!(
        "copy kernel (roofline), the tuned split measured before and after each size's \
         optimizer cases, and every other split once: GB/s of the fastest"
    );
    let rows: Vec<Vec<String>> = r
        .copy
        .iter()
        .map(|c| {
            vec![
                fmt_elems(c.elements),
                c.steps_per_batch.to_string(),
                f3(c.ms_before.median),
                f3(c.ms_before.p10),
                f3(c.ms_before.p90),
                f3(c.ms_after.median),
                f3(c.ms_after.p10),
                f3(c.ms_after.p90),
                format!(
                    "{}x{}",
                    c.best_split.workgroup_size, c.best_split.vec4_per_invocation
                ),
                f3(c.best_split_ms),
                f2(c.gb_per_s),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "elements",
                "K",
                "before: median ms",
                "p10",
                "p90",
                "after: median ms",
                "p10",
                "p90",
                "best split",
                "its ms",
                "GB/s (fastest)",
            ],
            1,
            &rows
        )
    );
    println!();
    println!("optimizer step (fused, one dispatch per step for all tensors)");
    let rows: Vec<Vec<String>> = r
        .cases
        .iter()
        .map(|c| {
            vec![
                c.optimizer.clone(),
                fmt_elems(c.elements),
                c.tensors.to_string(),
                c.bytes_per_element.to_string(),
                c.steps_per_batch.to_string(),
                f3(c.ms.median),
                f3(c.ms.p10),
                f3(c.ms.p90),
                f3(c.wall_ms_median),
                f2(c.gb_per_s),
                f2(c.fraction_of_copy),
                opt_f(c.time_vs_one_tensor, f2),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "optimizer",
                "elements",
                "tensors",
                "B/elem",
                "K",
                "median ms",
                "p10 ms",
                "p90 ms",
                "wall ms",
                "GB/s",
                "x copy",
                "x 1-tensor time",
            ],
            1,
            &rows
        )
    );
    println!();
    println!(
        "baselines: per-tensor = one arena + optimizer + dispatch per tensor (one pass each, \
         one submission per step); CPU = CpuOptimizer, 1 thread"
    );
    let runs: Vec<String> = r
        .per_tensor_baseline_for
        .iter()
        .map(|(o, n)| format!("{o} at {}", fmt_elems(*n)))
        .collect();
    println!(
        "per-tensor baseline measured for: {} (--baseline-for, --baseline-sizes)",
        if runs.is_empty() {
            "none".to_string()
        } else {
            runs.join(", ")
        }
    );
    let rows: Vec<Vec<String>> = r
        .cases
        .iter()
        .map(|c| {
            let b = c.per_tensor_baseline.as_ref();
            let cpu = c.cpu_reference.as_ref();
            vec![
                c.optimizer.clone(),
                fmt_elems(c.elements),
                c.tensors.to_string(),
                f3(c.ms.median),
                opt_f(b.map(|b| b.ms.median), f3),
                opt_f(b.map(|b| b.fused_speedup), f2),
                opt_f(cpu.map(|c| c.ms.median), f3),
                opt_f(cpu.map(|c| c.gb_per_s), f2),
                opt_f(cpu.map(|x| x.ms.median / c.ms.median), f2),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "optimizer",
                "elements",
                "tensors",
                "fused ms",
                "per-tensor ms",
                "fused speedup",
                "CPU ms",
                "CPU GB/s",
                "GPU speedup vs CPU",
            ],
            1,
            &rows
        )
    );
    if r.cases.iter().any(|c| c.amp.is_some()) {
        println!();
        println!(
            "AMP guard (--amp): GradScaler's dynamic scale and the non-finite skip attached; \
             x plain = guarded median / plain median (same run)"
        );
        let rows: Vec<Vec<String>> = r
            .cases
            .iter()
            .filter_map(|c| {
                let a = c.amp.as_ref()?;
                Some(vec![
                    c.optimizer.clone(),
                    fmt_elems(c.elements),
                    c.tensors.to_string(),
                    f3(c.ms.median),
                    f3(a.ms.median),
                    f2(a.cost_vs_plain),
                ])
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "optimizer",
                    "elements",
                    "tensors",
                    "plain ms",
                    "guarded ms",
                    "x plain"
                ],
                1,
                &rows
            )
        );
    }
    if r.cases.iter().any(|c| c.lookahead.is_some()) {
        println!();
        println!(
            "Lookahead (--lookahead): k = 1, so every step also syncs; sync = k=1 median - plain \
             median (same run); cost at k = 5 = (plain + sync / 5) / plain"
        );
        let rows: Vec<Vec<String>> = r
            .cases
            .iter()
            .filter_map(|c| {
                let l = c.lookahead.as_ref()?;
                Some(vec![
                    c.optimizer.clone(),
                    fmt_elems(c.elements),
                    c.tensors.to_string(),
                    f3(c.ms.median),
                    f3(l.ms_k1.median),
                    f3(l.sync_ms),
                    f2(l.cost_vs_plain_k5),
                ])
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "optimizer",
                    "elements",
                    "tensors",
                    "plain ms",
                    "k=1 ms",
                    "sync ms",
                    "x plain at k=5",
                ],
                1,
                &rows
            )
        );
    }
    println!();
    print!("bench took {:.1} s", r.total_s);
    if let (Some(a), Some(b)) = (r.load_average_start, r.load_average_end) {
        print!("; 1-min load average {a:.2} at start, {b:.2} at end");
    }
    println!();
}
