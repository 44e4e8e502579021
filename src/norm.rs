//! Deterministic per-tensor and global norms over the arena, and global-norm gradient clipping.
//!
//! [`NormReducer`] takes the L2 (or inf) norm of every tensor of an arena's params or grads
//! and the global norm, in three dispatches whatever the tensor
//! count: per-chunk partials, per-tensor combine, global combine (`shaders/norm.wgsl`, on the
//! tree reductions of `shaders/reduce.wgsl`). No float atomics: the same inputs give bitwise
//! identical norms on every run. Results stay on the GPU (for the next kernel) and can be read
//! back.
//!
//! [`GradClipper`] is a reducer over the gradients that also computes PyTorch's
//! `clip_grad_norm_` coefficient `min(max_norm / (total + 1e-6), 1)` on the GPU. Attached to an
//! optimizer ([`crate::Optimizer::set_grad_clip`]), the coefficient is applied inside the
//! update kernel: no extra pass over the gradients, no host sync. As `clip_grad_norm_`, a NaN
//! or infinite gradient gives a NaN or infinite norm (also for the inf norm: the reductions
//! propagate NaN explicitly), and the coefficient follows; with `error_if_nonfinite` the step
//! is refused instead.
//!
//! The CPU twins ([`cpu_norms`], [`cpu_clip_grad_norm`]) accumulate in f64.

use bytemuck::{Pod, Zeroable};

use crate::arena::{half_window_binding, window_binding};
use crate::arena::{ArenaTables, ChunkRange, ParamArena, ParamLayout};
use crate::autotune;
use crate::context::GpuContext;
use crate::dispatch;
use crate::error::{Error, Result};
use crate::gpu_buffers::{storage_buffer, table_bytes};
use crate::pipeline::Kernel;
use crate::pipeline::PipelineKey;
use crate::precision::{HalfPath, StorageType};
use crate::readback;
use crate::shaders::KernelDef;
use crate::shaders::{NORM_COMBINE, NORM_GLOBAL, NORM_PARTIALS};
use crate::tune::{KernelShape, ShapeChoice};
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

/// Which of an arena's buffers a [`NormReducer`] reads. The reducer binds the arena's own
/// buffer, so it can never be handed a buffer of another device or of the wrong shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormSource {
    /// The parameters.
    Params,
    /// The gradients.
    Grads,
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

/// Times every candidate split of the norm partials pass: an L2 norm of the gradients of one
/// scratch tensor of `elements` (what a clipper runs every step).
fn time_norm(ctx: &GpuContext, elements: usize) -> Result<ShapeChoice> {
    let arena = ParamArena::new(ctx, &[crate::arena::TensorSpec::new("tune", elements)])?;
    arena.write_grads("tune", &autotune::scratch_values(elements))?;
    let candidates = autotune::build_candidates(ctx, KernelShape::default(), |shape| {
        let r = NormReducer::build(ctx, &arena, NormSource::Grads, NormType::L2, Some(shape))?;
        Ok(move || {
            autotune::submit(ctx, NORM_PARTIALS.entry_point(), |e| r.encode(e));
            Ok(())
        })
    })?;
    autotune::time_candidates(ctx, NORM_PARTIALS.entry_point(), elements, candidates)
}

/// Per-tensor and global norms of an arena-shaped buffer, computed on the GPU.
#[derive(Debug)]
pub struct NormReducer {
    ctx: GpuContext,
    arena_id: u64,
    layout: Arc<ParamLayout>,
    kernels: [Arc<Kernel>; 3],
    hyper_buf: wgpu::Buffer,
    range_buf: wgpu::Buffer,
    partials: wgpu::Buffer,
    out: wgpu::Buffer,
    bind_groups: Vec<wgpu::BindGroup>,
    grids: Vec<(u32, u32)>,
    tensor_grid: (u32, u32),
    hyper: NormHyper,
}

impl NormReducer {
    /// A reducer over the arena's params or grads.
    pub fn new(
        ctx: &GpuContext,
        arena: &ParamArena,
        source: NormSource,
        norm_type: NormType,
    ) -> Result<Self> {
        Self::build(ctx, arena, source, norm_type, None)
    }

    /// [`NormReducer::new`] with the partials pass's work split forced to `shape` (the tuner's
    /// candidates) instead of the context's choice.
    fn build(
        ctx: &GpuContext,
        arena: &ParamArena,
        source: NormSource,
        norm_type: NormType,
        shape: Option<KernelShape>,
    ) -> Result<Self> {
        ctx.check_alive()?;
        if ctx.id() != arena.context().id() {
            return Err(Error::Unsupported(
                "the arena was built on another GpuContext; build the reducer on the arena's",
            ));
        }
        let layout = arena.layout_arc();
        // 16-bit gradients: the packed composition of norm.wgsl reads them at 6 (both f16
        // paths store the same bytes), with the master weights at 5 unread.
        let half_grads = matches!(source, NormSource::Grads) && arena.precision().grads.is_16();
        let source = match source {
            NormSource::Params => arena.params_buffer(),
            NormSource::Grads if half_grads => arena.params_buffer(),
            NormSource::Grads => arena.grads_buffer(),
        };
        // The partials pass runs the adapter's split, the other two min(32, its width)
        // invocations; their virtual lanes (reduce.wgsl) keep the sums in one order.
        let shape = match shape {
            Some(s) => s,
            None => autotune::resolve_or_time(ctx, NORM_PARTIALS, KernelShape::default(), |n| {
                time_norm(ctx, n)
            })?,
        };
        let get = |k: KernelDef| -> Result<Arc<Kernel>> {
            let mut constants = Vec::new();
            if k == NORM_PARTIALS {
                constants.extend(shape.constants());
            } else {
                constants.push(("RED_WG", shape.reduction_width() as f64));
            }
            if !half_grads {
                return ctx.kernel_keyed(PipelineKey::with_constants(k, &constants));
            }
            let packed = k.mixed(HalfPath::Packed).ok_or(Error::Unsupported(
                "the norm kernels have no 16-bit composition",
            ))?;
            let bf16 = if arena.precision().grads == StorageType::Bf16 {
                1.0
            } else {
                0.0
            };
            constants.extend([("NORM_A_GRADS", 1.0), ("GRAD_BF16", bf16)]);
            ctx.kernel_keyed(PipelineKey::with_constants(packed, &constants))
        };
        let kernels = [get(NORM_PARTIALS)?, get(NORM_COMBINE)?, get(NORM_GLOBAL)?];
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
            let tables = ArenaTables::new(ctx, layout.all(), "norm");
            let ranges = layout.all().ranges();
            let range_buf =
                storage_buffer(ctx, "norm ranges", table_bytes::<ChunkRange>(n_tensors));
            if !ranges.is_empty() {
                ctx.queue()
                    .write_buffer(&range_buf, 0, bytemuck::cast_slice(ranges));
            }
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
                            match half_grads {
                                true => e(6, half_window_binding(arena.grads_buffer(), w)),
                                false => e(6, dummy.as_entire_binding()),
                            },
                            e(10, partials.as_entire_binding()),
                            e(12, out.as_entire_binding()),
                        ],
                    })
                })
                .collect();
            Self {
                ctx: ctx.clone(),
                arena_id: arena.id(),
                grids: windows
                    .iter()
                    .map(|w| dispatch::grid(w.chunk_count, ctx.max_workgroups_per_dim()))
                    .collect(),
                tensor_grid: dispatch::grid(n_tensors as u32, ctx.max_workgroups_per_dim()),
                layout,
                kernels,
                hyper_buf,
                range_buf,
                partials,
                out,
                bind_groups,
                hyper,
            }
        })
    }

    /// Times the partials pass's candidate splits now, whatever the policy, and records the
    /// fastest (in memory and in the cache), on a scratch tensor of `elements` (`None`: the
    /// tuner's size for the adapter): `optbench tune`. Otherwise the first reducer or clipper
    /// built on an adapter does this under [`crate::tune::Tuning::Auto`].
    pub fn tune(ctx: &GpuContext, elements: Option<usize>) -> Result<ShapeChoice> {
        autotune::tune_now(ctx, NORM_PARTIALS, elements, |n| time_norm(ctx, n))
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
    pub fn compute(&self) -> Result<(Vec<f32>, f32)> {
        self.ctx.check_alive()?;
        let mut enc = self
            .ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("norm"),
            });
        self.encode(&mut enc);
        self.ctx.queue().submit([enc.finish()]);
        Ok((self.read_tensor_norms()?, self.read_total_norm()?))
    }

    /// Per-tensor norms from the last encoded reduction (0 for tensors an attached optimizer
    /// left out of the last clip: frozen, or in no group).
    pub fn read_tensor_norms(&self) -> Result<Vec<f32>> {
        let n = self.layout.tensors().len();
        let base = self.layout.chunks().len() as u64 * 4;
        let raw = readback::read_f32(&self.ctx, &self.partials, base, n * 4)?;
        let inf = self.hyper.flags & NORM_INF != 0;
        Ok(raw
            .chunks_exact(4)
            .map(|v| if inf { v[1] } else { v[0].sqrt() })
            .collect())
    }

    /// The global norm from the last encoded reduction.
    pub fn read_total_norm(&self) -> Result<f32> {
        Ok(readback::read_f32(&self.ctx, &self.out, 0, 4)?[1])
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

    fn set_hyper(&mut self, hyper: NormHyper) {
        self.hyper = hyper;
        self.ctx
            .queue()
            .write_buffer(&self.hyper_buf, 0, bytemuck::bytes_of(&hyper));
    }

    /// Replaces the per-tensor chunk ranges the combine pass folds (a range with count 0
    /// leaves its tensor out of the global norm).
    pub(crate) fn write_ranges(&self, ranges: &[ChunkRange]) {
        if !ranges.is_empty() {
            self.ctx
                .queue()
                .write_buffer(&self.range_buf, 0, bytemuck::cast_slice(ranges));
        }
    }
}

/// Global-norm gradient clipping with `torch.nn.utils.clip_grad_norm_` semantics, computed on
/// the GPU. Attach it to an optimizer with [`crate::Optimizer::set_grad_clip`].
#[derive(Debug)]
pub struct GradClipper {
    reducer: NormReducer,
    max_norm: f64,
    norm_type: NormType,
    error_if_nonfinite: bool,
    /// Preallocated readback of `out[0]`, for `error_if_nonfinite`'s per-step check.
    staging: wgpu::Buffer,
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
        let mut reducer = NormReducer::new(ctx, arena, NormSource::Grads, norm_type)?;
        let h = NormHyper {
            flags: reducer.hyper.flags | NORM_CLIP,
            max_norm: max_norm as f32,
            ..reducer.hyper
        };
        reducer.set_hyper(h);
        let staging = ctx.scoped(|| {
            ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("norm_global readback"),
                size: 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        Ok(Self {
            reducer,
            max_norm,
            norm_type,
            error_if_nonfinite: false,
            staging,
        })
    }

    /// PyTorch's `error_if_nonfinite`: when set, [`crate::Optimizer::step`] waits for the norm
    /// after the norm passes (one host round trip per step) and, if it is NaN or infinite,
    /// returns [`Error::NonFiniteNorm`] without updating anything. `encode_step` refuses a
    /// clipper with this set, since it cannot wait.
    pub fn with_error_if_nonfinite(mut self, on: bool) -> Self {
        self.error_if_nonfinite = on;
        self
    }

    /// Whether `error_if_nonfinite` is set.
    pub fn error_if_nonfinite(&self) -> bool {
        self.error_if_nonfinite
    }

    /// Changes the threshold.
    pub fn set_max_norm(&mut self, max_norm: f64) -> Result<()> {
        self.reducer.ctx.check_alive()?;
        check_max_norm(max_norm)?;
        self.max_norm = max_norm;
        let h = NormHyper {
            max_norm: max_norm as f32,
            ..self.reducer.hyper
        };
        self.reducer.set_hyper(h);
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

    pub(crate) fn write_ranges(&self, ranges: &[ChunkRange]) {
        self.reducer.write_ranges(ranges);
    }

    /// Waits for the submitted norm passes and checks the total norm is finite.
    pub(crate) fn check_finite(&self) -> Result<()> {
        let ctx = &self.reducer.ctx;
        let mut enc = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("norm_global readback"),
            });
        enc.copy_buffer_to_buffer(&self.reducer.out, 0, &self.staging, 0, 16);
        ctx.queue().submit([enc.finish()]);
        let total = readback::map_read::<f32>(ctx, &self.staging)?[1];
        if total.is_finite() {
            Ok(())
        } else {
            Err(Error::NonFiniteNorm {
                norm: total,
                norm_type: match self.norm_type {
                    NormType::L2 => "L2",
                    NormType::Inf => "inf",
                },
            })
        }
    }

    /// The pre-clip global gradient norm of the last step (what `clip_grad_norm_` returns).
    /// Reading it waits for the GPU; the step itself never does.
    pub fn read_total_norm(&self) -> Result<f32> {
        self.reducer.read_total_norm()
    }

    /// The clip coefficient of the last step.
    pub fn read_coefficient(&self) -> Result<f32> {
        Ok(readback::read_f32(&self.reducer.ctx, self.reducer.out_buffer(), 0, 1)?[0])
    }

    /// Per-tensor pre-clip gradient norms of the last step (0 for tensors left out).
    pub fn read_tensor_norms(&self) -> Result<Vec<f32>> {
        self.reducer.read_tensor_norms()
    }

    /// The buffer whose first f32 is the clip coefficient (bound as `aux` by the optimizers).
    pub fn scale_buffer(&self) -> &wgpu::Buffer {
        self.reducer.out_buffer()
    }
}

/// Global-norm gradient clipping for [`crate::CpuOptimizer::set_grad_clip`]: the settings of a
/// [`GradClipper`], for the CPU twin (which clips inside its step as the GPU optimizer does).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipConfig {
    /// The threshold (finite, > 0).
    pub max_norm: f64,
    /// The norm (PyTorch `norm_type`).
    pub norm_type: NormType,
    /// PyTorch's `error_if_nonfinite`, as [`GradClipper::with_error_if_nonfinite`]: a NaN or
    /// infinite total norm refuses the step with [`Error::NonFiniteNorm`] (default false).
    pub error_if_nonfinite: bool,
}

impl ClipConfig {
    /// Clipping to a global `norm_type` norm of at most `max_norm`, without
    /// `error_if_nonfinite` (checked when attached).
    pub fn new(max_norm: f64, norm_type: NormType) -> Self {
        Self {
            max_norm,
            norm_type,
            error_if_nonfinite: false,
        }
    }

    /// Checks `max_norm` as [`GradClipper::new`] does (finite and > 0).
    pub fn validate(&self) -> Result<()> {
        check_max_norm(self.max_norm)
    }
}

/// `"L2"` or `"inf"`, for [`Error::NonFiniteNorm`].
pub(crate) fn norm_type_name(norm_type: NormType) -> &'static str {
    match norm_type {
        NormType::L2 => "L2",
        NormType::Inf => "inf",
    }
}

fn check_max_norm(max_norm: f64) -> Result<()> {
    if max_norm.is_finite() && max_norm > 0.0 {
        Ok(())
    } else {
        Err(Error::hyper("max_norm", max_norm, "must be finite and > 0"))
    }
}

/// `max` that propagates NaN (f64::max drops it), as torch's inf norm does.
fn max_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Per-tensor norms and the global norm of host tensors, accumulated in f64 (a NaN anywhere
/// gives NaN norms, for L2 and inf).
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
                NormType::Inf => t.iter().fold(0.0f64, |m, &x| max_nan(m, (x as f64).abs())),
            }
        })
        .collect();
    let total = match norm_type {
        NormType::L2 => per.iter().map(|n| n * n).sum::<f64>().sqrt(),
        NormType::Inf => per.iter().fold(0.0f64, |m, &x| max_nan(m, x)),
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
    let c = max_norm / (total + 1e-6);
    // torch.clamp(max=1) keeps NaN; f64::min would drop it.
    let coef = if c.is_nan() { c } else { c.min(1.0) } as f32;
    for g in grads.iter_mut() {
        for x in g.iter_mut() {
            *x *= coef;
        }
    }
    Ok(total)
}
