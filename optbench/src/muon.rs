//! `optbench muon`: the batched matmul's GFLOP/s on the three Newton–Schulz stages, and the
//! Muon step time against AdamW on the same tensors: the 2-D weights of a transformer
//! (`--layers` blocks of width `--width`: q, k, v, o as width×width, the MLP's 4·width×width
//! and width×4·width).

use anyhow::{bail, Result};
use serde::Serialize;
use wgpu_optim::bench::{StepTimer, Summary};
use wgpu_optim::matmul::MatmulProblem;
use wgpu_optim::{
    AdamConfig, BatchedMatmul, GpuContext, MuonConfig, Optimizer, ParamArena, ParamGroups, Select,
    TensorSpec,
};

use crate::Opts;

/// One Newton–Schulz stage over every matrix, timed alone.
#[derive(Serialize, Debug)]
pub(crate) struct StageRow {
    pub stage: &'static str,
    pub dispatches: usize,
    pub gflop: f64,
    pub ms: Summary,
    pub gflops: f64,
}

/// What `optbench muon` measured.
#[derive(Serialize, Debug)]
pub(crate) struct MuonReport {
    pub layers: usize,
    pub width: usize,
    pub matrices: usize,
    pub params: u64,
    pub timer: &'static str,
    pub stages: Vec<StageRow>,
    pub muon_dispatches: usize,
    pub muon_ms: Summary,
    pub adamw_ms: Summary,
    pub muon_over_adamw: f64,
}

/// The transformer's weight matrices.
pub(crate) fn transformer_matrices(layers: usize, width: usize) -> Vec<TensorSpec> {
    let mut out = Vec::new();
    for l in 0..layers {
        for (name, shape) in [
            ("q", [width, width]),
            ("k", [width, width]),
            ("v", [width, width]),
            ("o", [width, width]),
            ("fc1", [4 * width, width]),
            ("fc2", [width, 4 * width]),
        ] {
            out.push(TensorSpec::shaped(format!("h{l}.{name}"), &shape));
        }
    }
    out
}

/// The three NS stages of every matrix, split into stages whose scratch fits one binding.
fn ns_stage_problems(specs: &[TensorSpec], cap_elems: u64) -> Vec<[Vec<MatmulProblem>; 3]> {
    let mut batches: Vec<[Vec<MatmulProblem>; 3]> = Vec::new();
    let mut cur: [Vec<MatmulProblem>; 3] = Default::default();
    let mut base = 0u64;
    for s in specs {
        let sh = s.shape.as_deref().unwrap_or(&[]);
        let (r, c) = (sh[0] as u32, sh[1] as u32);
        let m = r.min(c);
        let need = 2 * r as u64 * c as u64 + 2 * (m as u64).pow(2);
        if base + need > cap_elems && base > 0 {
            batches.push(std::mem::take(&mut cur));
            base = 0;
        }
        let b = base as u32;
        let (x0, x1, a, q) = (b, b + r * c, b + 2 * r * c, b + 2 * r * c + m * m);
        if r <= c {
            cur[0].push(MatmulProblem::new(r, r, c, x0, x0, a).transpose_b());
            cur[2].push(MatmulProblem::new(r, c, r, q, x0, x1).plus(3.4445, x0));
        } else {
            cur[0].push(MatmulProblem::new(c, c, r, x0, x0, a).transpose_a());
            cur[2].push(MatmulProblem::new(r, c, c, x0, q, x1).plus(3.4445, x0));
        }
        cur[1].push(
            MatmulProblem::new(m, m, m, a, a, q)
                .alpha(2.0315)
                .plus(-4.775, a),
        );
        base += need;
    }
    if !cur[0].is_empty() {
        batches.push(cur);
    }
    batches
}

fn time_steps<F>(
    ctx: &GpuContext,
    timer: &StepTimer,
    warmup: usize,
    iters: usize,
    mut record: F,
) -> Result<Summary>
where
    F: FnMut(&mut wgpu::CommandEncoder) -> wgpu_optim::Result<()>,
{
    timer.time_batch(ctx, warmup.max(1) as u32, |e, _| record(e))?;
    let mut ms = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let b = timer.time_batch(ctx, 1, |e, _| record(e))?;
        ms.push(b.per_step_s() * 1e3);
    }
    Summary::of(&ms).ok_or_else(|| anyhow::anyhow!("no timing samples"))
}

pub(crate) fn muon_bench(
    ctx: &GpuContext,
    opts: &Opts,
    layers: usize,
    width: usize,
) -> Result<MuonReport> {
    if layers == 0 || width == 0 {
        bail!("--layers and --width must be at least 1");
    }
    let iters = opts.iters.unwrap_or(if opts.quick { 2 } else { 5 });
    let warmup = opts.warmup.unwrap_or(1);
    let timer = StepTimer::new(ctx, opts.timer.into())?;
    let specs = transformer_matrices(layers, width);
    let params: u64 = specs.iter().map(|s| s.len as u64).sum();
    let mut rng = fastrand::Rng::with_seed(opts.seed);

    // The matmul alone: each stage over every matrix (one dispatch per binding-sized batch).
    let batches = ns_stage_problems(&specs, ctx.max_binding_bytes() / 4);
    let mut stages = Vec::new();
    let mut built: Vec<[BatchedMatmul; 3]> = Vec::new();
    for b in &batches {
        let elems = b
            .iter()
            .flatten()
            .map(|p| (p.c_offset + p.m * p.n) as u64)
            .max()
            .unwrap_or(0);
        let data: Vec<f32> = (0..elems).map(|_| rng.f32() - 0.5).collect();
        let buf = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("optbench matmul data"),
            size: (elems * 4).max(16),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue()
            .write_buffer(&buf, 0, bytemuck::cast_slice(&data));
        built.push([
            BatchedMatmul::new(ctx, &b[0], &buf)?,
            BatchedMatmul::new(ctx, &b[1], &buf)?,
            BatchedMatmul::new(ctx, &b[2], &buf)?,
        ]);
    }
    for (k, stage) in ["X·Xᵀ", "c·A·A + b·A", "Q·X + a·X"].into_iter().enumerate() {
        let flops: u64 = built.iter().map(|b| b[k].flops()).sum();
        let ms = time_steps(ctx, &timer, warmup, iters, |enc| {
            for b in &built {
                b[k].encode(enc);
            }
            Ok(())
        })?;
        stages.push(StageRow {
            stage,
            dispatches: built.len(),
            gflop: flops as f64 * 1e-9,
            gflops: flops as f64 * 1e-9 / (ms.median * 1e-3),
            ms,
        });
    }
    drop(built);

    // Muon and AdamW steps on the same tensors.
    let arena = ParamArena::new(ctx, &specs)?;
    let init: Vec<Vec<f32>> = specs
        .iter()
        .map(|s| (0..s.len).map(|_| rng.f32() - 0.5).collect())
        .collect();
    arena.write_all_params(&init)?;
    arena.write_all_grads(&init)?;
    let mut muon = Optimizer::with_groups(
        ctx,
        &arena,
        ParamGroups::new().group(Select::All, MuonConfig::default()),
    )?;
    let muon_ms = time_steps(ctx, &timer, warmup, iters, |enc| {
        muon.encode_step(enc, &arena)
    })?;
    let muon_dispatches = muon.dispatches_per_step();
    drop(muon);
    let mut adamw = Optimizer::new(ctx, &arena, AdamConfig::adamw())?;
    let adamw_ms = time_steps(ctx, &timer, warmup, iters, |enc| {
        adamw.encode_step(enc, &arena)
    })?;
    Ok(MuonReport {
        layers,
        width,
        matrices: specs.len(),
        params,
        timer: timer.kind().describe(),
        stages,
        muon_dispatches,
        muon_over_adamw: muon_ms.median / adamw_ms.median,
        muon_ms,
        adamw_ms,
    })
}

pub(crate) fn print_muon(r: &MuonReport) {
    println!(
        "\nMuon on {} layers of width {}: {} matrices, {} params (timer: {})",
        r.layers, r.width, r.matrices, r.params, r.timer
    );
    println!(
        "{:<14} {:>10} {:>10} {:>12} {:>10}",
        "NS stage", "dispatches", "GFLOP", "median ms", "GFLOP/s"
    );
    for s in &r.stages {
        println!(
            "{:<14} {:>10} {:>10.4} {:>12.3} {:>10.2}",
            s.stage, s.dispatches, s.gflop, s.ms.median, s.gflops
        );
    }
    println!(
        "Muon step: {:.3} ms median ({} dispatches); AdamW step on the same tensors: {:.3} ms; \
         Muon / AdamW = {:.1}",
        r.muon_ms.median, r.muon_dispatches, r.adamw_ms.median, r.muon_over_adamw
    );
}
