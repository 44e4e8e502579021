//! `optbench tune-copy` (hidden): sweeps the copy kernel's workgroup size and vec4s per
//! invocation.

use anyhow::Result;
use serde::Serialize;
use wgpu_optim::bench::{
    gb_per_s, CopyConfig, CopyKernel, StepTimer, Summary, TimerKind, COPY_BYTES_PER_ELEMENT,
};
use wgpu_optim::GpuContext;

use crate::tables::{f2, f3, fmt_elems, table};
use crate::util::{copy_buffers, progress, summary};
use crate::Opts;

#[derive(Serialize, Debug)]
struct TuneRow {
    workgroup_size: u32,
    vec4_per_invocation: u32,
    elements: u64,
    ms: Summary,
    gb_per_s: f64,
}

#[derive(Serialize, Debug)]
pub(crate) struct TuneReport {
    timer: TimerKind,
    rows: Vec<TuneRow>,
}

pub(crate) fn tune_copy(ctx: &GpuContext, opts: &Opts) -> Result<TuneReport> {
    let timer = StepTimer::new(ctx, opts.timer.into())?;
    let sizes = if opts.sizes.is_empty() {
        vec![1 << 22, 1 << 24]
    } else {
        opts.sizes.clone()
    };
    let iters = opts.iters.unwrap_or(10).max(1);
    let max_wg = ctx.limits().max_compute_invocations_per_workgroup;
    let configs: Vec<CopyConfig> = [64u32, 128, 256, 512]
        .into_iter()
        .filter(|&w| w <= max_wg)
        .flat_map(|w| {
            [1u32, 2, 4, 8].map(|v| CopyConfig {
                workgroup_size: w,
                vec4_per_invocation: v,
            })
        })
        .collect();
    let pb = progress((sizes.len() * configs.len()) as u64, "tune");
    let mut out = Vec::new();
    for &n in &sizes {
        let (src, dst) = copy_buffers(ctx, n);
        // Interleave configurations over rounds so drift hits them all alike.
        let jobs = configs
            .iter()
            .map(|&c| {
                let k = CopyKernel::with_config(ctx, c)?;
                let j = k.bind(ctx, &src, &dst, n)?;
                Ok((c, k, j))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); jobs.len()];
        for (_, _, j) in &jobs {
            timer.time_batch(ctx, 3, |e, _| {
                j.encode(e);
                Ok(())
            })?;
        }
        for _ in 0..iters {
            for (i, (_, _, j)) in jobs.iter().enumerate() {
                let b = timer.time_batch(ctx, 5, |e, _| {
                    j.encode(e);
                    Ok(())
                })?;
                samples[i].push(b.per_step_s() * 1e3);
            }
        }
        for (i, (c, _, _)) in jobs.iter().enumerate() {
            let s = summary(&samples[i])?;
            out.push(TuneRow {
                workgroup_size: c.workgroup_size,
                vec4_per_invocation: c.vec4_per_invocation,
                elements: n,
                ms: s,
                gb_per_s: gb_per_s((n * COPY_BYTES_PER_ELEMENT) as f64, s.median * 1e-3),
            });
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    Ok(TuneReport {
        timer: timer.kind(),
        rows: out,
    })
}

pub(crate) fn print_tune_copy(t: &TuneReport, opts: &Opts) {
    println!(
        "copy kernel work split, 5 steps per batch, {} batches (timer: {})",
        opts.iters.unwrap_or(10).max(1),
        t.timer.describe()
    );
    let rows: Vec<Vec<String>> = t
        .rows
        .iter()
        .map(|r| {
            vec![
                fmt_elems(r.elements),
                r.workgroup_size.to_string(),
                r.vec4_per_invocation.to_string(),
                f3(r.ms.median),
                f3(r.ms.p10),
                f3(r.ms.p90),
                f2(r.gb_per_s),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "elements",
                "workgroup",
                "vec4/inv",
                "median ms",
                "p10 ms",
                "p90 ms",
                "GB/s"
            ],
            0,
            &rows
        )
    );
}
