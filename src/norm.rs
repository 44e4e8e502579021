//! Deterministic per-tensor and global norms over the arena, and global-norm gradient clipping.
//!
//! [`NormReducer`] takes the L2 (or inf) norm of every tensor of an arena-shaped buffer (params,
//! grads or any optimizer state) and the global norm, in three dispatches whatever the tensor
//! count: per-chunk partials, per-tensor combine, global combine (`shaders/norm.wgsl`, on the
//! tree reductions of `shaders/reduce.wgsl`). No float atomics: the same inputs give bitwise
//! identical norms on every run. Results stay on the GPU (for the next kernel) and can be read
//! back.
//!
//! [`GradClipper`] is a reducer over the gradients that also computes PyTorch's
//! `clip_grad_norm_` coefficient `min(max_norm / (total + 1e-6), 1)` on the GPU. Attached to an
//! optimizer ([`crate::Optimizer::set_grad_clip`]), the coefficient is applied inside the
//! update kernel: no extra pass over the gradients, no host sync.
//!
//! The CPU twins ([`cpu_norms`], [`cpu_clip_grad_norm`]) accumulate in f64.

use bytemuck::{Pod, Zeroable};

use crate::arena::{ArenaTables, ParamArena, ParamLayout};
use crate::context::GpuContext;
use crate::dispatch;
use crate::error::{Error, Result};
use crate::optim::{
    chunk_ranges, storage_buffer, table_bytes, tensor_specs, window_binding, ChunkRange,
};
use crate::pipeline::Kernel;
use crate::readback;
use crate::shaders::KernelId;
use std::sync::Arc;

/// WGSL `NORM_HAS_B`.
pub const NORM_HAS_B: u32 = 256;
/// WGSL `NORM_INF`.
pub const NORM_INF: u32 = 512;
/// WGSL `NORM_CLIP`.
pub const NORM_CLIP: u32 = 1024;

/// Which norm (PyTorch `norm_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NormType {
    /// Euclidean norm (`norm_type=2.0`).
    #[default]
    L2,
    /// Max-abs norm (`norm_type=inf`).
    Inf,
}

/// Mirrors `NormHyper` in norm.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct NormHyper {
    /// NORM_HAS_B | NORM_INF | NORM_CLIP.
    pub flags: u32,
    /// Number of tensors.
    pub n_tensors: u32,
    /// Clip threshold.
    pub max_norm: f32,
    /// Padding.
    pub pad: u32,
}

/// Per-tensor and global norms of an arena-shaped buffer, computed on the GPU.
#[derive(Debug)]
pub struct NormReducer {
    arena_id: u64,
    layout: Arc<ParamLayout>,
    kernels: [Arc<Kernel>; 3],
    hyper_buf: wgpu::Buffer,
    partials: wgpu::Buffer,
    out: wgpu::Buffer,
    bind_groups: Vec<wgpu::BindGroup>,
    grids: Vec<(u32, u32)>,
    tensor_grid: (u32, u32),
    hyper: NormHyper,
}

impl NormReducer {
    /// A reducer over `source`, which must be shaped like `arena` (its params, grads, or an
    /// optimizer state buffer).
    pub fn new(
        ctx: &GpuContext,
        arena: &ParamArena,
        source: &wgpu::Buffer,
        norm_type: NormType,
    ) -> Result<Self> {
        let layout = arena.layout_arc();
        if source.size() < layout.buffer_bytes() {
            return Err(Error::LengthMismatch {
                what: "norm source buffer (bytes)".into(),
                expected: layout.buffer_bytes() as usize,
                got: source.size() as usize,
            });
        }
        let kernels = [
            ctx.pipelines().get(ctx, KernelId::NormPartials)?,
            ctx.pipelines().get(ctx, KernelId::NormCombine)?,
            ctx.pipelines().get(ctx, KernelId::NormGlobal)?,
        ];
        let n_tensors = layout.tensors().len();
        let n_chunks = layout.chunks().len();
        let hyper = NormHyper {
            flags: if norm_type == NormType::Inf {
                NORM_INF
            } else {
                0
            },
            n_tensors: n_tensors as u32,
            max_norm: 0.0,
            pad: 0,
        };
        ctx.scoped(|| {
            let dev = ctx.device();
            let uniform = |name: &str, size: u64| {
                dev.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(name),
                    size,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            };
            let hyper_buf = uniform("norm hyper", std::mem::size_of::<NormHyper>() as u64);
            ctx.queue()
                .write_buffer(&hyper_buf, 0, bytemuck::bytes_of(&hyper));
            let windows = layout.windows();
            let tables = ArenaTables::new(ctx, &layout, "norm");
            let ranges = chunk_ranges(&tensor_specs(&layout));
            let range_buf =
                storage_buffer(ctx, "norm ranges", table_bytes::<ChunkRange>(n_tensors));
            ctx.queue()
                .write_buffer(&range_buf, 0, bytemuck::cast_slice(&ranges));
            let partials = storage_buffer(
                ctx,
                "norm partials",
                table_bytes::<[f32; 4]>(n_chunks + n_tensors),
            );
            let out = storage_buffer(ctx, "norm out", 16);
            ctx.queue()
                .write_buffer(&out, 0, bytemuck::cast_slice(&[1.0f32, 0.0, 0.0, 0.0]));
            let dummy = storage_buffer(ctx, "norm unused b", 16);
            // One bind group per window; the per-tensor and global passes use the first.
            let bind_groups = windows
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let e = |binding, resource| wgpu::BindGroupEntry { binding, resource };
                    dev.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("norm_partials"),
                        layout: &kernels[0].layout,
                        entries: &[
                            e(0, hyper_buf.as_entire_binding()),
                            e(1, tables.window(i)),
                            e(2, tables.chunks.as_entire_binding()),
                            e(3, range_buf.as_entire_binding()),
                            e(5, window_binding(source, w)),
                            e(6, dummy.as_entire_binding()),
                            e(10, partials.as_entire_binding()),
                            e(12, out.as_entire_binding()),
                        ],
                    })
                })
                .collect();
            Self {
                arena_id: arena.id(),
                grids: windows
                    .iter()
                    .map(|w| dispatch::grid(w.chunk_count, ctx.max_workgroups_per_dim()))
                    .collect(),
                tensor_grid: dispatch::grid(n_tensors as u32, ctx.max_workgroups_per_dim()),
                layout,
                kernels,
                hyper_buf,
                partials,
                out,
                bind_groups,
                hyper,
            }
        })
    }

    /// Id of the arena this reducer reads.
    pub fn arena_id(&self) -> u64 {
        self.arena_id
    }

    /// Records the three reduction passes into `encoder`.
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("norm"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.kernels[0].pipeline);
        for (bg, &(x, y)) in self.bind_groups.iter().zip(&self.grids) {
            if x > 0 {
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(x, y, 1);
            }
        }
        let bg = &self.bind_groups[0];
        pass.set_bind_group(0, bg, &[]);
        pass.set_pipeline(&self.kernels[1].pipeline);
        let (x, y) = self.tensor_grid;
        pass.dispatch_workgroups(x, y, 1);
        pass.set_pipeline(&self.kernels[2].pipeline);
        pass.dispatch_workgroups(1, 1, 1);
    }

    /// Computes the norms now: encodes, submits and waits; returns (per-tensor, global).
    pub fn compute(&self, ctx: &GpuContext) -> Result<(Vec<f32>, f32)> {
        let mut enc = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("norm"),
            });
        self.encode(&mut enc);
        ctx.queue().submit([enc.finish()]);
        Ok((self.read_tensor_norms(ctx)?, self.read_total_norm(ctx)?))
    }

    /// Per-tensor norms from the last encoded reduction.
    pub fn read_tensor_norms(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        let n = self.layout.tensors().len();
        let base = self.layout.chunks().len() as u64 * 4;
        let raw = readback::read_f32(ctx, &self.partials, base, n * 4)?;
        let inf = self.hyper.flags & NORM_INF != 0;
        Ok(raw
            .chunks_exact(4)
            .map(|v| if inf { v[1] } else { v[0].sqrt() })
            .collect())
    }

    /// The global norm from the last encoded reduction.
    pub fn read_total_norm(&self, ctx: &GpuContext) -> Result<f32> {
        Ok(readback::read_f32(ctx, &self.out, 0, 4)?[1])
    }

    /// `out[0] = (clip coefficient, total norm, _, _)`: stays on the GPU for the next kernel.
    pub fn out_buffer(&self) -> &wgpu::Buffer {
        &self.out
    }

    /// Per-chunk partials followed by per-tensor `(sum of squares, max |x|, _, _)` entries
    /// (the per-tensor block starts at entry `layout.chunks().len()`).
    pub fn partials_buffer(&self) -> &wgpu::Buffer {
        &self.partials
    }

    fn set_hyper(&mut self, ctx: &GpuContext, hyper: NormHyper) {
        self.hyper = hyper;
        ctx.queue()
            .write_buffer(&self.hyper_buf, 0, bytemuck::bytes_of(&hyper));
    }
}

/// Global-norm gradient clipping with `torch.nn.utils.clip_grad_norm_` semantics, computed on
/// the GPU. Attach it to an optimizer with [`crate::Optimizer::set_grad_clip`].
#[derive(Debug)]
pub struct GradClipper {
    reducer: NormReducer,
    max_norm: f64,
}

impl GradClipper {
    /// Clips the gradients of `arena` to a global `norm_type` norm of at most `max_norm`.
    pub fn new(
        ctx: &GpuContext,
        arena: &ParamArena,
        max_norm: f64,
        norm_type: NormType,
    ) -> Result<Self> {
        check_max_norm(max_norm)?;
        let mut reducer = NormReducer::new(ctx, arena, arena.grads_buffer(), norm_type)?;
        let h = NormHyper {
            flags: reducer.hyper.flags | NORM_CLIP,
            max_norm: max_norm as f32,
            ..reducer.hyper
        };
        reducer.set_hyper(ctx, h);
        Ok(Self { reducer, max_norm })
    }

    /// Changes the threshold.
    pub fn set_max_norm(&mut self, ctx: &GpuContext, max_norm: f64) -> Result<()> {
        check_max_norm(max_norm)?;
        self.max_norm = max_norm;
        let h = NormHyper {
            max_norm: max_norm as f32,
            ..self.reducer.hyper
        };
        self.reducer.set_hyper(ctx, h);
        Ok(())
    }

    /// The threshold.
    pub fn max_norm(&self) -> f64 {
        self.max_norm
    }

    /// Id of the arena whose gradients this clips.
    pub fn arena_id(&self) -> u64 {
        self.reducer.arena_id
    }

    /// Records the norm and coefficient passes (an attached optimizer does this itself).
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        self.reducer.encode(encoder);
    }

    /// The pre-clip global gradient norm of the last step (what `clip_grad_norm_` returns).
    /// Reading it waits for the GPU; the step itself never does.
    pub fn read_total_norm(&self, ctx: &GpuContext) -> Result<f32> {
        self.reducer.read_total_norm(ctx)
    }

    /// The clip coefficient of the last step.
    pub fn read_coefficient(&self, ctx: &GpuContext) -> Result<f32> {
        Ok(readback::read_f32(ctx, self.reducer.out_buffer(), 0, 1)?[0])
    }

    /// Per-tensor pre-clip gradient norms of the last step.
    pub fn read_tensor_norms(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        self.reducer.read_tensor_norms(ctx)
    }

    /// The buffer whose first f32 is the clip coefficient (bound as `aux` by the optimizers).
    pub fn scale_buffer(&self) -> &wgpu::Buffer {
        self.reducer.out_buffer()
    }
}

fn check_max_norm(max_norm: f64) -> Result<()> {
    if max_norm.is_finite() && max_norm > 0.0 {
        Ok(())
    } else {
        Err(Error::hyper("max_norm", max_norm, "must be finite and > 0"))
    }
}

/// Per-tensor norms and the global norm of host tensors, accumulated in f64.
pub fn cpu_norms<T: AsRef<[f32]>>(tensors: &[T], norm_type: NormType) -> (Vec<f64>, f64) {
    let per: Vec<f64> = tensors
        .iter()
        .map(|t| {
            let t = t.as_ref();
            match norm_type {
                NormType::L2 => t
                    .iter()
                    .map(|&x| (x as f64) * (x as f64))
                    .sum::<f64>()
                    .sqrt(),
                NormType::Inf => t.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs())),
            }
        })
        .collect();
    let total = match norm_type {
        NormType::L2 => per.iter().map(|n| n * n).sum::<f64>().sqrt(),
        NormType::Inf => per.iter().fold(0.0f64, |m, &x| m.max(x)),
    };
    (per, total)
}

/// `torch.nn.utils.clip_grad_norm_` on host tensors: scales every gradient by
/// `min(max_norm / (total + 1e-6), 1)` (always, as PyTorch does) and returns the pre-clip norm.
pub fn cpu_clip_grad_norm(
    grads: &mut [Vec<f32>],
    max_norm: f64,
    norm_type: NormType,
) -> Result<f64> {
    check_max_norm(max_norm)?;
    let (_, total) = cpu_norms(grads, norm_type);
    let coef = (max_norm / (total + 1e-6)).min(1.0) as f32;
    for g in grads.iter_mut() {
        for x in g.iter_mut() {
            *x *= coef;
        }
    }
    Ok(total)
}
