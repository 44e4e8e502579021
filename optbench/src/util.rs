//! Helpers shared by the subcommands: progress bars, seeded data, copy buffers, summaries.

use std::io::IsTerminal;

use anyhow::{anyhow, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use wgpu_optim::bench::Summary;
use wgpu_optim::GpuContext;

pub(crate) fn progress(len: u64, prefix: &'static str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let pb = ProgressBar::with_draw_target(Some(len), target);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>7} [{bar:30}] {pos}/{len} {elapsed:>4} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix);
    pb
}

pub(crate) fn randn(rng: &mut fastrand::Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.f32() + rng.f32() + rng.f32() - 1.5) * 2.0 * scale)
        .collect()
}

/// Source and destination buffers for the copy kernel over `n` f32s (whole vec4s).
pub(crate) fn copy_buffers(ctx: &GpuContext, n: u64) -> (wgpu::Buffer, wgpu::Buffer) {
    let make = |label: &str| {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: n.div_ceil(4) * 16,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    (make("copy_vec4 src"), make("copy_vec4 dst"))
}

pub(crate) fn summary(x: &[f64]) -> Result<Summary> {
    Summary::of(x).ok_or_else(|| anyhow!("no valid samples"))
}
