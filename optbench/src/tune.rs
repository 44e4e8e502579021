//! `optbench tune`: times every candidate work split of the copy kernel, the norm reducers'
//! partials pass (gradient clipping, the AMP guard) and each optimizer kernel on this adapter,
//! now, records the winners in the kernel-shape cache, and
//! prints what each candidate cost. `optbench info` shows what the cache holds.

use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;
use wgpu_optim::bench::CopyKernel;
use wgpu_optim::optim::tune_kernel;
use wgpu_optim::tune::{KernelShape, ShapeChoice, TuneReport};
use wgpu_optim::{GpuContext, OptimizerConfig};

use crate::tables::{f2, f3, fmt_elems, table};
use crate::Opts;

/// What `optbench tune` did.
#[derive(Serialize, Debug)]
pub(crate) struct TuneRun {
    /// One per kernel, the copy first.
    choices: Vec<ShapeChoice>,
    /// Presets with their own segments (Muon, Adafactor), not tuned.
    not_tuned: Vec<String>,
    /// Wall-clock seconds for the whole run, pipeline compilation included.
    seconds: f64,
    /// Where the choices went.
    cache: TuneReport,
}

pub(crate) fn tune(ctx: &GpuContext, opts: &Opts) -> Result<TuneRun> {
    let started = Instant::now();
    let elements = match opts.sizes.as_slice() {
        [] => None,
        [n] => Some(*n as usize),
        _ => bail!("tune times one size; give one --sizes value"),
    };
    let mut choices = vec![
        CopyKernel::tune(ctx, elements)?,
        wgpu_optim::NormReducer::tune(ctx, elements)?,
    ];
    let mut not_tuned = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for p in OptimizerConfig::presets() {
        if !opts.optimizers.is_empty() && !opts.optimizers.iter().any(|o| o == p.name) {
            continue;
        }
        // The update pass's kernel (the last pass): presets that share it are timed once.
        let Some(kernel) = p.config.passes().last().map(|k| k.kernel().entry_point()) else {
            continue;
        };
        if seen.iter().any(|k| k == kernel) {
            continue;
        }
        seen.push(kernel.to_string());
        match tune_kernel(ctx, p.config.clone(), elements)? {
            Some(c) => choices.push(c),
            None => not_tuned.push(p.name.to_string()),
        }
    }
    Ok(TuneRun {
        choices,
        not_tuned,
        seconds: started.elapsed().as_secs_f64(),
        cache: ctx.tune_report(),
    })
}

/// ms per step of `shape` in `c`, if it was timed.
fn ms_of(c: &ShapeChoice, shape: KernelShape) -> Option<f64> {
    c.timings
        .iter()
        .find(|t| t.shape == shape)
        .map(|t| t.seconds_per_step * 1e3)
}

/// One row per kernel: its chosen split, each candidate's ms per step, and the default's
/// time over the chosen one's.
pub(crate) fn shape_rows(choices: &[ShapeChoice]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut shapes: Vec<KernelShape> = Vec::new();
    for c in choices {
        for t in &c.timings {
            if !shapes.contains(&t.shape) {
                shapes.push(t.shape);
            }
        }
    }
    shapes.sort_by_key(|s| s.workgroup_size);
    let mut headers = vec![
        "kernel".to_string(),
        "chosen".into(),
        "from".into(),
        "elements".into(),
    ];
    headers.extend(shapes.iter().map(|s| format!("{s} ms")));
    headers.push("default / chosen".into());
    let rows = choices
        .iter()
        .map(|c| {
            let mut row = vec![
                c.kernel.clone(),
                c.shape.to_string(),
                format!("{:?}", c.source).to_lowercase(),
                if c.elements > 0 {
                    fmt_elems(c.elements)
                } else {
                    "-".into()
                },
            ];
            row.extend(shapes.iter().map(|&s| ms_of(c, s).map_or("-".into(), f3)));
            // The kernels' own default split (the copy's is CopyConfig's).
            let default = if c.kernel == wgpu_optim::bench::COPY_ENTRY {
                wgpu_optim::bench::CopyConfig::default().into()
            } else {
                KernelShape::default()
            };
            row.push(match (ms_of(c, default), ms_of(c, c.shape)) {
                (Some(d), Some(b)) if b > 0.0 => format!("{}x", f2(d / b)),
                _ => "-".into(),
            });
            row
        })
        .collect();
    (headers, rows)
}

pub(crate) fn print_tune(t: &TuneRun) {
    println!("== tune: every candidate work split, ms per step (fastest of interleaved batches)");
    let (headers, rows) = shape_rows(&t.choices);
    let h: Vec<&str> = headers.iter().map(|s| s.as_str()).collect();
    print!("{}", table(&h, 3, &rows));
    if !t.not_tuned.is_empty() {
        println!(
            "not tuned (their own segments have their own shapes): {}",
            t.not_tuned.join(", ")
        );
    }
    println!("tuning took {:.1} s", t.seconds);
    if let Some(f) = &t.cache.cache_file {
        println!("cache: {}", f.display());
    }
    for n in &t.cache.cache_notes {
        println!("  {n}");
    }
    println!();
}
