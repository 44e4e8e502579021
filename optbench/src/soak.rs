//! `optbench soak`: many steps of one optimizer over one tensor, with the process's resident
//! memory (/proc/self/statm) and wgpu-core's live object counts sampled at intervals. Fails
//! (exit status 1) when a buffer, bind group or pipeline is alive after a sample that was not
//! after the first step, or when resident memory grows by more than `--rss-slack` MiB.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use wgpu_optim::{GpuContext, Optimizer, OptimizerConfig, ParamArena, TensorSpec};

use crate::util::randn;
use crate::Opts;

/// One sample.
#[derive(Serialize, Debug, Clone)]
pub(crate) struct SoakSample {
    pub step: u64,
    pub rss_mib: f64,
    pub buffers: usize,
    pub bind_groups: usize,
    pub compute_pipelines: usize,
    pub seconds: f64,
}

/// The run.
#[derive(Serialize, Debug)]
pub(crate) struct SoakReport {
    pub optimizer: String,
    pub elements: u64,
    pub steps: u64,
    pub samples: Vec<SoakSample>,
    pub rss_growth_mib: f64,
    pub objects_created_after_first_step: i64,
    pub passed: bool,
}

fn rss_mib() -> Result<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .context("statm has no resident field")?
        .parse()?;
    // 4 KiB pages (x86-64 and aarch64 Linux defaults).
    Ok(pages * 4096.0 / (1 << 20) as f64)
}

pub(crate) fn soak(
    ctx: &GpuContext,
    opts: &Opts,
    steps: u64,
    every: u64,
    rss_slack_mib: f64,
) -> Result<SoakReport> {
    let name = opts.optimizers.first().map_or("adam", |s| s.as_str());
    let cfg = OptimizerConfig::preset(name).with_context(|| format!("no preset {name:?}"))?;
    let elements = opts.sizes.first().copied().unwrap_or(1 << 20);
    let specs = [TensorSpec::new("w", elements as usize)];
    let arena = ParamArena::new(ctx, &specs)?;
    let mut rng = fastrand::Rng::with_seed(opts.seed);
    arena.write_params("w", &randn(&mut rng, elements as usize, 1.0))?;
    // Small gradients: the params must stay finite over 100 000 steps.
    arena.write_grads("w", &randn(&mut rng, elements as usize, 1e-4))?;
    let mut opt = Optimizer::new(ctx, &arena, cfg.clone())?;
    let t0 = std::time::Instant::now();
    let mut samples = Vec::new();
    let sample = |step: u64| -> Result<SoakSample> {
        ctx.wait()?;
        let c = ctx
            .resource_counts()
            .context("this backend gives no wgpu-core report")?;
        Ok(SoakSample {
            step,
            rss_mib: rss_mib()?,
            buffers: c.buffers,
            bind_groups: c.bind_groups,
            compute_pipelines: c.compute_pipelines,
            seconds: t0.elapsed().as_secs_f64(),
        })
    };
    opt.step(&arena)?;
    samples.push(sample(1)?);
    let pb = crate::util::progress(steps, "soak");
    for k in 2..=steps {
        opt.step(&arena)?;
        if k % every == 0 || k == steps {
            samples.push(sample(k)?);
            pb.set_position(k);
        }
    }
    pb.finish_and_clear();
    let first = &samples[0];
    let created = samples
        .iter()
        .map(|s| {
            (s.buffers + s.bind_groups + s.compute_pipelines) as i64
                - (first.buffers + first.bind_groups + first.compute_pipelines) as i64
        })
        .max()
        .unwrap_or(0);
    // Resident memory from the second sample on (the first step's allocations settle in it).
    let base = samples.get(1).unwrap_or(first).rss_mib;
    let peak = samples
        .iter()
        .skip(1)
        .map(|s| s.rss_mib)
        .fold(base, f64::max);
    let growth = peak - base;
    let p = arena.read_params("w")?;
    if p.iter().any(|x| !x.is_finite()) {
        bail!("the params went non-finite during the soak");
    }
    Ok(SoakReport {
        optimizer: cfg.describe(),
        elements,
        steps,
        passed: created <= 0 && growth <= rss_slack_mib,
        rss_growth_mib: growth,
        objects_created_after_first_step: created,
        samples,
    })
}

pub(crate) fn print_soak(r: &SoakReport) {
    println!(
        "\nsoak: {} steps of {} on {} elements",
        r.steps, r.optimizer, r.elements
    );
    println!(
        "{:>8} {:>10} {:>8} {:>12} {:>10} {:>9}",
        "step", "RSS MiB", "buffers", "bind groups", "pipelines", "seconds"
    );
    for s in &r.samples {
        println!(
            "{:>8} {:>10.1} {:>8} {:>12} {:>10} {:>9.1}",
            s.step, s.rss_mib, s.buffers, s.bind_groups, s.compute_pipelines, s.seconds
        );
    }
    println!(
        "RSS growth after the first sample: {:.1} MiB; objects alive beyond those after step 1: {}; {}",
        r.rss_growth_mib,
        r.objects_created_after_first_step.max(0),
        if r.passed { "PASS" } else { "FAIL" }
    );
}
