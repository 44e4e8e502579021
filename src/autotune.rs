//! Timing of candidate kernel shapes ([`KernelShape`]) on the context's adapter, shared by
//! every kind of kernel that is tuned: the optimizers' passes (`optim::tuner`), the norm
//! reducers (`norm`) and the copy roofline (`bench`). The choices themselves and their cache
//! live in `tune`, below the context; this module sits above it.
//!
//! Candidates are timed in interleaved rounds (so a burst of other load on the machine hits
//! them all alike), each round a batch of steps between two queue waits, and a candidate's
//! time is its fastest batch. Host wall clock serves: a batch is sized to last about
//! [`BATCH_SECONDS`], far above the submission overhead.

use std::time::Instant;

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::shaders::KernelDef;
use crate::tune::{source_hash, CandidateTime, KernelShape, Resolved, ShapeChoice, ShapeSource};

/// Elements of the scratch tensor on a CPU adapter (lavapipe): 256 chunks, a few ms a step.
pub(crate) const TUNE_ELEMENTS_CPU: usize = 1 << 20;
/// Elements of the scratch tensor on a GPU: enough chunks to fill a large one many times over.
pub(crate) const TUNE_ELEMENTS_GPU: usize = 1 << 24;
/// Target length of one timed batch.
pub(crate) const BATCH_SECONDS: f64 = 0.02;
/// After two rounds, candidates slower than this multiple of the fastest are dropped.
pub(crate) const PRUNE: f64 = 1.25;
/// Timed rounds per candidate.
pub(crate) const ROUNDS: usize = 3;

/// The book's shape for `kernel`, or (policy `Auto`, nothing cached) the result of `time` on
/// the adapter's scratch size ([`default_elements`]), recorded. One timing run at a time per
/// process: a second builder of the same kernel waits for the first's result.
pub(crate) fn resolve_or_time(
    ctx: &GpuContext,
    kernel: KernelDef,
    default: KernelShape,
    time: impl FnOnce(usize) -> Result<ShapeChoice>,
) -> Result<KernelShape> {
    let limits = ctx.limits();
    let (name, hash) = (kernel.entry_point(), source_hash(kernel.source));
    let fits = |s: KernelShape| {
        // Only a pinned shape can be invalid or too wide: cached and timed ones are checked.
        if !s.is_valid() {
            return Err(Error::InvalidConfig(
                "a pinned kernel shape must split the 1024 vec4s of a chunk evenly: \
                 workgroup_size a power of two up to 1024, times vec4_per_invocation = 1024 \
                 (use KernelShape::new)",
            ));
        }
        if s.fits(limits) {
            return Ok(s);
        }
        Err(Error::LimitExceeded {
            what: format!("workgroup size of the pinned kernel shape {s}"),
            value: s.workgroup_size as u64,
            limit: limits
                .max_compute_invocations_per_workgroup
                .min(limits.max_compute_workgroup_size_x) as u64,
            why: "the device's max_compute_invocations_per_workgroup",
        })
    };
    if let Resolved::Shape(s) = ctx.tuner().resolve(name, &hash, limits, default) {
        return fits(s);
    }
    let _busy = ctx.tuner().busy();
    // Another context (of this process, or another process) may have timed it while this one
    // waited: look at the cache file again.
    ctx.tuner().reload_cache();
    if let Resolved::Shape(s) = ctx.tuner().resolve(name, &hash, limits, default) {
        return fits(s);
    }
    let choice = time(default_elements(ctx))?;
    let shape = choice.shape;
    ctx.tuner().record(&hash, choice);
    Ok(shape)
}

/// Times `kernel` now with `time` on `elements` (`None`: the adapter's scratch size),
/// whatever the policy, and records the choice (in memory and in the cache): the on-demand
/// `tune` calls behind `optbench tune`.
pub(crate) fn tune_now(
    ctx: &GpuContext,
    kernel: KernelDef,
    elements: Option<usize>,
    time: impl FnOnce(usize) -> Result<ShapeChoice>,
) -> Result<ShapeChoice> {
    ctx.check_alive()?;
    let elements = elements.unwrap_or_else(|| default_elements(ctx));
    if elements == 0 {
        return Err(Error::InvalidConfig("tuning needs at least one element"));
    }
    let _busy = ctx.tuner().busy();
    let choice = time(elements)?;
    ctx.tuner()
        .record(&source_hash(kernel.source), choice.clone());
    Ok(choice)
}

/// Elements of the scratch tensor the candidates are timed on.
pub(crate) fn default_elements(ctx: &GpuContext) -> usize {
    match ctx.adapter_info().device_type {
        wgpu::DeviceType::Cpu => TUNE_ELEMENTS_CPU,
        _ => TUNE_ELEMENTS_GPU,
    }
}

/// Scratch values: small and nonzero, so no kernel takes a shortcut on zeros.
pub(crate) fn scratch_values(elements: usize) -> Vec<f32> {
    (0..elements)
        .map(|i| ((i % 97) as f32 - 48.0) * 1e-4)
        .collect()
}

/// One candidate per shape the device allows, from `build`. A split the driver refuses is
/// skipped, except `default`, whose error is returned: the kernel must build at its default.
pub(crate) fn build_candidates<T>(
    ctx: &GpuContext,
    default: KernelShape,
    mut build: impl FnMut(KernelShape) -> Result<T>,
) -> Result<Vec<(KernelShape, T)>> {
    let mut out = Vec::new();
    for shape in KernelShape::candidates(ctx.limits()) {
        match build(shape) {
            Ok(t) => out.push((shape, t)),
            Err(e) if shape == default => return Err(e),
            Err(_) => {}
        }
    }
    Ok(out)
}

/// Records `encode` into an encoder of its own (labelled after the kernel) and submits it:
/// one step of a candidate that is not an optimizer.
pub(crate) fn submit(
    ctx: &GpuContext,
    label: &str,
    encode: impl FnOnce(&mut wgpu::CommandEncoder),
) {
    let mut enc = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
    encode(&mut enc);
    ctx.queue().submit([enc.finish()]);
}

/// Times `candidates` (each a closure that submits one step of its shape) in interleaved
/// rounds and returns the fastest as a [`ShapeSource::Tuned`] choice for `kernel`. Shared by
/// the optimizer kernels and the copy roofline (`bench`).
pub(crate) fn time_candidates<F: FnMut() -> Result<()>>(
    ctx: &GpuContext,
    kernel: &str,
    elements: usize,
    mut candidates: Vec<(KernelShape, F)>,
) -> Result<ShapeChoice> {
    // Warm-up (some drivers finish compiling at the first dispatch), and the batch length
    // from the slowest candidate's single step.
    let mut one = 0f64;
    for (_, step) in &mut candidates {
        step()?;
        ctx.wait()?;
        let t = Instant::now();
        step()?;
        ctx.wait()?;
        one = one.max(t.elapsed().as_secs_f64());
    }
    let steps = ((BATCH_SECONDS / one.max(1e-6)).ceil() as usize).clamp(1, 200);
    let mut best = vec![f64::INFINITY; candidates.len()];
    for round in 0..ROUNDS {
        // After two rounds only the contenders are timed again: a candidate whose better
        // batch is over PRUNE x the fastest is not going to win. Not after one: a single
        // batch slowed by other work on the machine would drop the true winner (measured:
        // 1.8x outliers on a busy lavapipe).
        let lead = best.iter().copied().fold(f64::INFINITY, f64::min);
        for ((_, step), best) in candidates.iter_mut().zip(&mut best) {
            if round > 1 && *best > PRUNE * lead {
                continue;
            }
            let t = Instant::now();
            for _ in 0..steps {
                step()?;
            }
            ctx.wait()?;
            *best = best.min(t.elapsed().as_secs_f64() / steps as f64);
        }
    }
    let timings: Vec<CandidateTime> = candidates
        .iter()
        .zip(best)
        .map(|(&(shape, _), s)| CandidateTime {
            shape,
            seconds_per_step: s,
        })
        .collect();
    let fastest = timings
        .iter()
        .min_by(|a, b| a.seconds_per_step.total_cmp(&b.seconds_per_step))
        .map(|c| c.shape)
        .unwrap_or_default();
    Ok(ShapeChoice {
        kernel: kernel.to_string(),
        shape: fastest,
        source: ShapeSource::Tuned,
        timings,
        elements: elements as u64,
        tuned_at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })
}
