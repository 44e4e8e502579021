//! The GPU engine: [`Optimizer`] owns one [`Segment`] per algorithm family in its parameter
//! groups, and records all of them into one submission per step.

use std::sync::Arc;

use bytemuck::Zeroable;

use super::book::Book;
use super::{OptimizerConfig, ParamGroups, Pass, Rule, RuleVisitor, StateSpec};
use crate::amp::{AmpConfig, AmpGpu, AmpState};
use crate::arena::{ArenaTables, ChunkRange, ParamArena, ParamLayout, SegmentLayout, Window};
use crate::context::GpuContext;
use crate::dispatch;
use crate::error::{Error, Result};
use crate::norm::GradClipper;
use crate::pipeline::{Kernel, PipelineKey};
use crate::readback;
use crate::shaders::{KernelDef, MAX_SEGMENT_GROUPS};
use crate::tune::KernelShape;

/// A storage buffer that can also be copied to and from.
pub(crate) fn storage_buffer(ctx: &GpuContext, label: &str, size: u64) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

/// Bytes of a buffer holding `n` items of `T`, at least 16 (wgpu rejects empty bindings).
pub(crate) fn table_bytes<T>(n: usize) -> u64 {
    ((n * std::mem::size_of::<T>()) as u64).max(16)
}

/// Binds the params / grads window `w` of an arena-shaped buffer.
pub(crate) fn window_binding<'a>(buf: &'a wgpu::Buffer, w: &Window) -> wgpu::BindingResource<'a> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: buf,
        offset: w.byte_offset(),
        size: std::num::NonZeroU64::new(w.byte_size()),
    })
}

/// Binds window `w` of a 16-bit arena buffer (the model copy, 16-bit grads): half the f32
/// window's offset and size ([`ParamArena::binding_alignment`] keeps the offset aligned).
pub(crate) fn half_window_binding<'a>(
    buf: &'a wgpu::Buffer,
    w: &Window,
) -> wgpu::BindingResource<'a> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: buf,
        offset: w.byte_offset() / 2,
        size: std::num::NonZeroU64::new(w.byte_size() / 2),
    })
}

/// Binds the state window of `w` of a segment's state buffer.
fn state_binding<'a>(buf: &'a wgpu::Buffer, w: &Window) -> wgpu::BindingResource<'a> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: buf,
        offset: w.state_byte_offset(),
        size: std::num::NonZeroU64::new(w.state_byte_size()),
    })
}

/// Issues dispatches directly, or through an indirect-argument buffer that holds, for each
/// dispatch in recording order, the same counts (or zeros: the AMP guard's skipped step).
pub(crate) struct Dispatcher<'a> {
    indirect: Option<&'a wgpu::Buffer>,
    offset: u64,
}

impl<'a> Dispatcher<'a> {
    pub(crate) fn direct() -> Self {
        Self {
            indirect: None,
            offset: 0,
        }
    }

    pub(crate) fn indirect(buf: &'a wgpu::Buffer) -> Self {
        Self {
            indirect: Some(buf),
            offset: 0,
        }
    }

    pub(crate) fn dispatch(&mut self, pass: &mut wgpu::ComputePass<'_>, (x, y): (u32, u32)) {
        match self.indirect {
            Some(buf) => {
                pass.dispatch_workgroups_indirect(buf, self.offset);
                self.offset += 12;
            }
            None => pass.dispatch_workgroups(x, y, 1),
        }
    }
}

/// The buffer the update kernels bind as `aux` (binding 4): the AMP guard's coefficient (which
/// includes the clip), else the clipper's, else the constant 1.
fn aux_binding(
    amp: Option<&AmpGpu>,
    clipper: Option<&GradClipper>,
    constant: &wgpu::Buffer,
) -> wgpu::Buffer {
    match (amp, clipper) {
        (Some(a), _) => a.coef_buffer().clone(),
        (None, Some(c)) => c.scale_buffer().clone(),
        (None, None) => constant.clone(),
    }
}

/// What every segment does, whatever its rule (Muon and Adafactor implement it with their own
/// segment types; the defaults are for segments without mode swaps or reductions).
pub(crate) trait GpuSegment: std::fmt::Debug + Send + Sync {
    /// Writes this step's group and tensor tables (after the book advanced the counts).
    fn write_tables(&mut self, ctx: &GpuContext, book: &mut Book, seg: usize, grad_scale: bool);
    /// Records the segment's dispatches (in the order of `dispatch_grids`).
    fn record(&self, pass: &mut wgpu::ComputePass<'_>, d: &mut Dispatcher<'_>);
    /// The workgroup grid of every dispatch `record` issues, in order.
    fn dispatch_grids(&self) -> Vec<(u32, u32)>;
    /// Writes the tensor table of a mode swap (to train mode with `to_train`); false when the
    /// segment's rule has no swap or no tensor to swap (then nothing is written). Default: no
    /// swap.
    fn write_swap_table(
        &mut self,
        _ctx: &GpuContext,
        _book: &Book,
        _seg: usize,
        _to_train: bool,
    ) -> bool {
        false
    }
    /// Records the mode-swap dispatches (after `write_swap_table` returned true).
    fn record_swap(&self, _pass: &mut wgpu::ComputePass<'_>) {}
    /// Bind groups with `aux` as binding 4 (the clip coefficient, or the constant 1).
    fn bind_groups(&self, ctx: &GpuContext, aux: &wgpu::Buffer) -> Vec<wgpu::BindGroup>;
    /// Installs bind groups built by `bind_groups`.
    fn set_bind_groups(&mut self, bgs: Vec<wgpu::BindGroup>);
    /// The segment's tensors and where each sits in its state buffers.
    fn layout(&self) -> &SegmentLayout;
    /// A state buffer, in the segment layout.
    fn state_buffer(&self, name: &str) -> Option<&wgpu::Buffer>;
    /// Where member `local`'s state `name` sits in `state_buffer(name)`: (first element,
    /// elements), given the member's tensor length `len`. Default: at the layout's state
    /// offset, as long as the tensor (Adafactor places its smaller factored state itself).
    fn state_place(&self, _name: &str, local: usize, len: usize) -> Option<(usize, usize)> {
        self.layout()
            .state_offsets()
            .get(local)
            .map(|&off| (off, len))
    }
    /// The state buffers with their specs (what a state reset re-initializes).
    fn states(&self) -> &[(StateSpec, wgpu::Buffer)];
    /// Bytes of the segment's state (and scratch) buffers.
    fn state_bytes(&self) -> u64;
    /// Elements of each state buffer, padding included (default: the layout's).
    fn state_elements(&self) -> u64 {
        self.layout().state_elements()
    }
    /// Dispatches per step (default: those of `dispatch_grids`; Muon adds its matmuls).
    fn dispatches(&self) -> usize {
        self.dispatch_grids().len()
    }
    /// The reduction buffer (per-chunk, per-tensor and per-group results), for rules that
    /// reduce. Default: none.
    fn partials(&self) -> Option<&wgpu::Buffer> {
        None
    }
    /// Where the groups' learned scalars start in `partials`, in f32s, for a rule that learns
    /// its lr (`Rule::learns_lr`); `None` otherwise (the default).
    fn learned_offset(&self) -> Option<u64> {
        None
    }
}

#[derive(Debug)]
struct Segment<R: Rule> {
    label: &'static str,
    layout: SegmentLayout,
    /// Each pass with its pipeline for plain chunks and, where the segment has packed chunks,
    /// the one for packed chunks (WGSL `PACKED`).
    passes: Vec<(Pass, Arc<Kernel>, Option<Arc<Kernel>>)>,
    /// The mode-swap pass (`Rule::swap_kernel`): plain and packed pipelines.
    swap: Option<(Arc<Kernel>, Option<Arc<Kernel>>)>,
    hypers: wgpu::Buffer,
    tables: ArenaTables,
    tensors: wgpu::Buffer,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    /// The arena's 16-bit model copy (bound at 11) in a mixed-precision arena.
    model: Option<wgpu::Buffer>,
    /// Whether the grads buffer holds 16-bit gradients (bound at half offsets).
    half_grads: bool,
    partials: Option<wgpu::Buffer>,
    dummy: wgpu::Buffer,
    states: Vec<(StateSpec, wgpu::Buffer)>,
    bind_groups: Vec<wgpu::BindGroup>,
    grids: Vec<(u32, u32)>,
    tensor_grid: (u32, u32),
    /// Parameter groups of the segment (the `Pass::Groups` grid).
    group_count: u32,
    /// Reused every step: the hot path allocates nothing.
    hyper_table: Vec<R::Hyper>,
    tensor_table: Vec<R::TensorStep>,
    /// The members' infos (for `Rule::tensor_step_for`).
    infos: Vec<crate::arena::TensorInfo>,
}

impl<R: Rule> Segment<R> {
    fn new(
        ctx: &GpuContext,
        arena: &ParamArena,
        plan: &super::book::SegmentPlan,
        aux: &wgpu::Buffer,
        shape: KernelShape,
    ) -> Result<Self> {
        let label = R::KERNEL.entry_point();
        let layout = SegmentLayout::new(
            arena.layout(),
            plan.members.clone(),
            &plan.member_groups,
            ctx.max_binding_bytes(),
            arena.binding_alignment(),
            // Small tensors share packed chunks for the rules whose kernels read them: the
            // elementwise ones (one pass, no per-tensor reduction); how small follows the
            // work split.
            if super::tuner::elementwise::<R>() {
                crate::arena::pack_max_len(shape.workgroup_size)
            } else {
                0
            },
        )?;
        let bytes = layout.state_bytes();
        if !plan.states.is_empty() && bytes > ctx.limits().max_buffer_size {
            // Checked before creating anything, so a too-large optimizer fails cleanly.
            return Err(Error::BufferTooLarge {
                what: format!("{label} state"),
                bytes,
                limit: ctx.limits().max_buffer_size,
            });
        }
        // Specialised when state sits at the params' offsets (WGSL STATE_AT_PARAMS), and for
        // packed chunks (WGSL PACKED).
        let same = if layout.state_at_params(arena.layout()) {
            1.0
        } else {
            0.0
        };
        let any_packed = layout.windows().iter().any(|w| w.packed);
        let precision = arena.precision();
        // Every per-chunk pass (and the swap kernel) runs the adapter's split; those that
        // reduce run 256 virtual lanes whatever the split (reduce.wgsl), so their sums keep
        // one order. The per-tensor and per-group passes run min(32, the split's width)
        // invocations over 32 virtual lanes (reduce.wgsl's RED_WG), so narrow splits keep
        // narrow reductions.
        // (Muon and Adafactor, whose shapes are their own, never build this segment.)
        let pipelines =
            |kernel: KernelDef, per_chunk: bool| -> Result<(Arc<Kernel>, Option<Arc<Kernel>>)> {
                // A mixed-precision arena runs the kernel's io_packed16.wgsl composition, which
                // binds the model copy too: checked against the device's storage-buffer budget
                // here, so a short adapter gets a typed error instead of a validation failure.
                let kernel = match (precision.is_mixed(), precision.grads.is_16()) {
                    (false, _) => Some(kernel),
                    (true, true) => kernel.mixed(arena.half_path()),
                    (true, false) => kernel.mixed_f32_grads(),
                }
                .ok_or(Error::Unsupported(
                    "this optimizer has no mixed-precision kernel",
                ))?;
                let limit = ctx.limits().max_storage_buffers_per_shader_stage;
                if kernel.storage_buffers() > limit {
                    return Err(Error::StorageBufferLimit {
                        kernel: kernel.entry_point(),
                        needed: kernel.storage_buffers(),
                        limit,
                    });
                }
                let bf = |b: bool| if b { 1.0 } else { 0.0 };
                let key = |packed: f64| {
                    let mut constants = vec![("STATE_AT_PARAMS", same), ("PACKED", packed)];
                    if precision.is_mixed() {
                        constants.push(("GRAD_BF16", bf(precision.grads.is_bf16())));
                        constants.push(("MODEL_BF16", bf(precision.model.is_bf16())));
                    }
                    if per_chunk {
                        constants.extend(shape.constants());
                    } else {
                        constants.push(("RED_WG", shape.reduction_width() as f64));
                    }
                    PipelineKey::with_constants(kernel, &constants)
                };
                let plain = ctx.pipelines().get_keyed(ctx, key(0.0))?;
                let packed = match any_packed {
                    true => Some(ctx.pipelines().get_keyed(ctx, key(1.0))?),
                    false => None,
                };
                Ok((plain, packed))
            };
        let mut passes = Vec::new();
        for pass in R::passes() {
            let (plain, packed) = pipelines(pass.kernel(), matches!(pass, Pass::Chunks(_)))?;
            passes.push((pass, plain, packed));
        }
        let swap = R::swap_kernel().map(|k| pipelines(k, true)).transpose()?;
        let n_tensors = layout.members().len();
        let n_chunks = layout.chunks().len();
        let n_groups = plan.groups.len();
        if n_groups > MAX_SEGMENT_GROUPS as usize {
            return Err(Error::LimitExceeded {
                what: format!("parameter groups of the {label} segment"),
                value: n_groups as u64,
                limit: MAX_SEGMENT_GROUPS as u64,
                why: "the per-group table is a uniform array; wgpu_optim::shaders::MAX_SEGMENT_GROUPS",
            });
        }
        let windows = layout.windows().to_vec();
        let mut seg = ctx.scoped(|| -> Result<Self> {
            let storage =
                |name: &str, size: u64| storage_buffer(ctx, &format!("{label} {name}"), size);
            // Per chunk, then per tensor, then per group (the learned scalars of
            // `Rule::learns_lr`, which persist from step to step).
            let partials = R::KERNEL.uses_partials().then(|| {
                storage(
                    "partials",
                    table_bytes::<[f32; 4]>(n_chunks + n_tensors + n_groups),
                )
            });
            let mut states = Vec::with_capacity(plan.states.len());
            for s in &plan.states {
                let buf = storage(s.name, bytes);
                if s.init != 0.0 {
                    // Padding stays zero; only the tensors' elements take the initial value.
                    let mut image = vec![0f32; layout.state_elements() as usize];
                    for (&i, &off) in layout.members().iter().zip(layout.state_offsets()) {
                        let len = arena.layout().tensors()[i].len;
                        image[off..off + len].fill(s.init);
                    }
                    ctx.queue()
                        .write_buffer(&buf, 0, bytemuck::cast_slice(&image));
                }
                states.push((*s, buf));
            }
            Ok(Self {
                label,
                passes,
                swap,
                hypers: ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("{label} hypers")),
                    size: (MAX_SEGMENT_GROUPS as usize * std::mem::size_of::<R::Hyper>()) as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                tables: ArenaTables::new(ctx, &layout, label),
                tensors: storage("tensors", table_bytes::<R::TensorStep>(n_tensors)),
                params: arena.params_buffer().clone(),
                grads: arena.grads_buffer().clone(),
                model: arena.model_buffer().cloned(),
                half_grads: arena.precision().grads.is_16(),
                partials,
                // Slots this configuration does not use are bound to one small dummy.
                dummy: storage("unused state", 16),
                states,
                bind_groups: Vec::new(),
                grids: windows
                    .iter()
                    .map(|w| dispatch::grid(w.chunk_count, ctx.max_workgroups_per_dim()))
                    .collect(),
                tensor_grid: dispatch::grid(n_tensors as u32, ctx.max_workgroups_per_dim()),
                group_count: n_groups as u32,
                hyper_table: Vec::with_capacity(n_groups),
                tensor_table: Vec::with_capacity(n_tensors),
                infos: plan
                    .members
                    .iter()
                    .map(|&i| arena.layout().tensors()[i].clone())
                    .collect(),
                layout,
            })
        })??;
        let bgs = ctx.scoped(|| seg.bind_groups(ctx, aux))?;
        seg.bind_groups = bgs;
        Ok(seg)
    }
}

impl<R: Rule> Segment<R> {
    /// Records a chunk pass whose plain pipeline is set: one dispatch per window with work,
    /// switching to `packed_kernel` at the first packed window.
    fn record_chunks(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        packed_kernel: Option<&Kernel>,
        d: &mut Dispatcher<'_>,
    ) {
        // Plain windows come first, then packed ones (SegmentLayout's order).
        let mut packed_set = false;
        for ((bg, &(x, y)), w) in self
            .bind_groups
            .iter()
            .zip(&self.grids)
            .zip(self.layout.windows())
        {
            if w.packed && !packed_set {
                if let Some(k) = packed_kernel {
                    pass.set_pipeline(&k.pipeline);
                }
                packed_set = true;
            }
            if x > 0 {
                pass.set_bind_group(0, bg, &[]);
                d.dispatch(pass, (x, y));
            }
        }
    }
}

impl<R: Rule> GpuSegment for Segment<R> {
    fn write_tables(&mut self, ctx: &GpuContext, book: &mut Book, seg: usize, grad_scale: bool) {
        let extra_flags = if grad_scale {
            crate::shaders::FLAG_GRAD_SCALE
        } else {
            0
        };
        book.segment_hypers::<R>(seg, extra_flags, &mut self.hyper_table);
        self.tensor_table.clear();
        for local in 0..book.segments[seg].members.len() {
            let entry =
                book.member_step::<R>(seg, local, self.layout.ranges()[local], &self.infos[local]);
            self.tensor_table
                .push(entry.unwrap_or_else(R::TensorStep::zeroed));
        }
        let q = ctx.queue();
        if !self.hyper_table.is_empty() {
            q.write_buffer(&self.hypers, 0, bytemuck::cast_slice(&self.hyper_table));
        }
        if !self.tensor_table.is_empty() {
            q.write_buffer(&self.tensors, 0, bytemuck::cast_slice(&self.tensor_table));
        }
    }

    fn record(&self, pass: &mut wgpu::ComputePass<'_>, d: &mut Dispatcher<'_>) {
        for (p, kernel, packed_kernel) in &self.passes {
            pass.set_pipeline(&kernel.pipeline);
            match p {
                Pass::Chunks(_) => self.record_chunks(pass, packed_kernel.as_deref(), d),
                Pass::Tensors(_) => {
                    // Any window's bind group will do: this pass touches only the tables.
                    if self.tensor_grid.0 > 0 {
                        pass.set_bind_group(0, &self.bind_groups[0], &[]);
                        d.dispatch(pass, self.tensor_grid);
                    }
                }
                Pass::Groups(_) => {
                    // As Tensors: the tables, the whole chunk table and partials only. At most
                    // MAX_SEGMENT_GROUPS workgroups, so the grid never spills into y.
                    if self.group_count > 0 {
                        pass.set_bind_group(0, &self.bind_groups[0], &[]);
                        d.dispatch(pass, (self.group_count, 1));
                    }
                }
            }
        }
    }

    fn dispatch_grids(&self) -> Vec<(u32, u32)> {
        let windows: Vec<(u32, u32)> = self.grids.iter().copied().filter(|g| g.0 > 0).collect();
        let mut out = Vec::new();
        for (p, _, _) in &self.passes {
            match p {
                Pass::Chunks(_) => out.extend(&windows),
                Pass::Tensors(_) if self.tensor_grid.0 > 0 => out.push(self.tensor_grid),
                Pass::Tensors(_) => {}
                Pass::Groups(_) if self.group_count > 0 => out.push((self.group_count, 1)),
                Pass::Groups(_) => {}
            }
        }
        out
    }

    fn write_swap_table(
        &mut self,
        ctx: &GpuContext,
        book: &Book,
        seg: usize,
        to_train: bool,
    ) -> bool {
        if self.swap.is_none() {
            return false;
        }
        self.tensor_table.clear();
        let mut any = false;
        for &i in &book.segments[seg].members {
            let entry = book.loc[i].and_then(|l| {
                R::of(&book.groups[l.group].config).and_then(|c| {
                    c.swap_step(book.steps[i], book.groups[l.group].local as u32, to_train)
                })
            });
            any |= entry.is_some();
            self.tensor_table
                .push(entry.unwrap_or_else(R::TensorStep::zeroed));
        }
        if any {
            ctx.queue()
                .write_buffer(&self.tensors, 0, bytemuck::cast_slice(&self.tensor_table));
        }
        any
    }

    fn record_swap(&self, pass: &mut wgpu::ComputePass<'_>) {
        if let Some((kernel, packed_kernel)) = &self.swap {
            pass.set_pipeline(&kernel.pipeline);
            self.record_chunks(pass, packed_kernel.as_deref(), &mut Dispatcher::direct());
        }
    }

    fn bind_groups(&self, ctx: &GpuContext, aux: &wgpu::Buffer) -> Vec<wgpu::BindGroup> {
        let layout = &self.passes[0].1.layout;
        self.layout
            .windows()
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let entry = |binding, resource| wgpu::BindGroupEntry { binding, resource };
                let mut entries = vec![
                    entry(0, self.hypers.as_entire_binding()),
                    entry(1, self.tables.window(i)),
                    entry(2, self.tables.chunks.as_entire_binding()),
                    entry(3, self.tensors.as_entire_binding()),
                    entry(4, aux.as_entire_binding()),
                    entry(5, window_binding(&self.params, w)),
                    match self.half_grads {
                        false => entry(6, window_binding(&self.grads, w)),
                        true => entry(6, half_window_binding(&self.grads, w)),
                    },
                ];
                if let Some(model) = &self.model {
                    entries.push(entry(11, half_window_binding(model, w)));
                }
                for slot in 0..R::KERNEL.state_slots() {
                    let resource = match self.states.iter().find(|(s, _)| s.slot == slot) {
                        Some((_, buf)) => state_binding(buf, w),
                        None => self.dummy.as_entire_binding(),
                    };
                    entries.push(entry(7 + slot, resource));
                }
                if let Some(p) = &self.partials {
                    entries.push(entry(10, p.as_entire_binding()));
                }
                ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(self.label),
                    layout,
                    entries: &entries,
                })
            })
            .collect()
    }

    fn set_bind_groups(&mut self, bgs: Vec<wgpu::BindGroup>) {
        self.bind_groups = bgs;
    }

    fn layout(&self) -> &SegmentLayout {
        &self.layout
    }

    fn state_buffer(&self, name: &str) -> Option<&wgpu::Buffer> {
        self.states
            .iter()
            .find(|(s, _)| s.name == name)
            .map(|(_, b)| b)
    }

    fn states(&self) -> &[(StateSpec, wgpu::Buffer)] {
        &self.states
    }

    fn state_bytes(&self) -> u64 {
        self.states.iter().map(|(_, b)| b.size()).sum()
    }

    fn partials(&self) -> Option<&wgpu::Buffer> {
        self.partials.as_ref()
    }

    fn learned_offset(&self) -> Option<u64> {
        let entries = self.layout.chunks().len() + self.layout.members().len();
        (R::learns_lr() && self.partials.is_some()).then_some(entries as u64 * 4)
    }
}

struct BuildSegment<'a> {
    ctx: &'a GpuContext,
    arena: &'a ParamArena,
    plan: &'a super::book::SegmentPlan,
    aux: &'a wgpu::Buffer,
    /// The work split to build with (the tuner's candidates), instead of the context's.
    shape: Option<KernelShape>,
}

impl RuleVisitor for BuildSegment<'_> {
    type Out = Result<Box<dyn GpuSegment>>;
    fn visit<R: Rule>(self, configs: Vec<R>) -> Self::Out {
        // Muon runs its own segment (momentum, batched Newton–Schulz matmuls, apply).
        let any: &dyn std::any::Any = &configs;
        if let Some(muon) = any.downcast_ref::<Vec<super::muon::MuonConfig>>() {
            if self.arena.precision().is_mixed() {
                return Err(Error::Unsupported(
                    "Muon does not run on a mixed-precision arena (its momentum and apply \
                     passes read f32 gradients and write only the f32 weights)",
                ));
            }
            return Ok(Box::new(super::muon::MuonSegment::new(
                self.ctx, self.arena, self.plan, self.aux, muon,
            )?));
        }
        // Adafactor too (one workgroup per tensor; factored state smaller than the params).
        if any
            .downcast_ref::<Vec<super::adafactor::AdafactorConfig>>()
            .is_some()
        {
            if self.arena.precision().is_mixed() {
                return Err(Error::Unsupported(
                    "Adafactor does not run on a mixed-precision arena yet (its step reads f32 \
                     gradients and writes only the f32 weights)",
                ));
            }
            return Ok(Box::new(super::adafactor::AdafactorSegment::new(
                self.ctx, self.arena, self.plan, self.aux,
            )?));
        }
        // Every rule that reaches the generic segment takes the adapter's split.
        let shape = match self.shape {
            Some(shape) => shape,
            None => super::tuner::shape_for(self.ctx, &configs[0])?,
        };
        Ok(Box::new(Segment::<R>::new(
            self.ctx, self.arena, self.plan, self.aux, shape,
        )?))
    }
}

/// A fused optimizer on the GPU over one [`ParamArena`]: one or more parameter groups, each
/// with its own tensor selection and complete configuration.
///
/// Construction creates every buffer, bind group and pipeline it will use; it keeps the
/// arena's [`GpuContext`], so it can never touch another device's buffers. A step writes the
/// per-group and per-tensor scalar tables with `queue.write_buffer` and records, in one
/// compute pass, one dispatch per segment, pass and binding window (one in all for a one-rule
/// optimizer over an arena that fits a storage binding), whatever the tensor count; LARS and
/// LAMB segments record three passes (norm partials, per-tensor trust ratios, update), and
/// hypergradient segments (SGD-HD, Adam-HD) three too (dot partials, the per-group learned lr,
/// update).
#[derive(Debug)]
pub struct Optimizer {
    ctx: GpuContext,
    arena_id: u64,
    layout: Arc<ParamLayout>,
    book: Book,
    segments: Vec<Box<dyn GpuSegment>>,
    /// Binding 4 without clipping: the constant (1, 0, 0, 0).
    aux: wgpu::Buffer,
    clipper: Option<Arc<GradClipper>>,
    /// Reused every step: which tensors the clipper and the AMP guard count.
    clip_ranges: Vec<ChunkRange>,
    /// Loss scaling and the non-finite skip ([`Optimizer::set_amp`]).
    amp: Option<AmpGpu>,
    /// Whether the last resolved step found a NaN or Inf gradient.
    last_found: Option<bool>,
}

impl Optimizer {
    /// The one-rule shorthand: `config` on every tensor, with one parameter group per arena
    /// group index ([`crate::TensorSpec::in_group`]), each starting as a copy of `config`.
    pub fn new(
        ctx: &GpuContext,
        arena: &ParamArena,
        config: impl Into<OptimizerConfig>,
    ) -> Result<Self> {
        Self::with_groups(
            ctx,
            arena,
            ParamGroups::per_arena_group(arena.layout(), config),
        )
    }

    /// An optimizer over explicit parameter groups (for example LARS on the 2-D weights and
    /// AdamW on the rest). Tensors no group selects are not updated.
    pub fn with_groups(ctx: &GpuContext, arena: &ParamArena, groups: ParamGroups) -> Result<Self> {
        Self::build(ctx, arena, groups, None)
    }

    /// [`Optimizer::with_groups`], with the elementwise kernels' work split forced to `shape`
    /// (the tuner times its candidates this way) instead of the context's choice.
    pub(crate) fn build(
        ctx: &GpuContext,
        arena: &ParamArena,
        groups: ParamGroups,
        shape: Option<KernelShape>,
    ) -> Result<Self> {
        ctx.check_alive()?;
        if ctx.id() != arena.context().id() {
            return Err(Error::Unsupported(
                "the arena was built on another GpuContext; build the optimizer on the arena's",
            ));
        }
        let layout = arena.layout_arc();
        let book = Book::new(&layout, &groups)?;
        let aux = ctx.scoped(|| {
            let aux = storage_buffer(ctx, "optimizer aux", 16);
            ctx.queue()
                .write_buffer(&aux, 0, bytemuck::cast_slice(&[1.0f32, 0.0, 0.0, 0.0]));
            aux
        })?;
        let mut segments = Vec::with_capacity(book.segments.len());
        for plan in &book.segments {
            let configs: Vec<&OptimizerConfig> = plan
                .groups
                .iter()
                .map(|&g| &book.groups[g].config)
                .collect();
            segments.push(OptimizerConfig::visit(
                &configs,
                BuildSegment {
                    ctx,
                    arena,
                    plan,
                    aux: &aux,
                    shape,
                },
            )?);
        }
        Ok(Self {
            ctx: ctx.clone(),
            arena_id: arena.id(),
            clip_ranges: Vec::with_capacity(layout.tensors().len()),
            layout,
            book,
            segments,
            aux,
            clipper: None,
            amp: None,
            last_found: None,
        })
    }

    super::common_optimizer_methods!();

    fn read_state_impl(&self, state: &str, i: usize) -> Result<Vec<f32>> {
        let loc = self.book.loc[i].ok_or_else(|| Error::UnknownState {
            name: state.to_string(),
            available: Vec::new(),
        })?;
        let seg = &self.segments[loc.segment];
        let buf = seg.state_buffer(state).ok_or_else(|| Error::UnknownState {
            name: state.to_string(),
            available: self.book.segment_states(loc.segment),
        })?;
        let len = self.layout.tensors()[i].len;
        let (off, len) =
            seg.state_place(state, loc.local, len)
                .ok_or_else(|| Error::UnknownState {
                    name: state.to_string(),
                    available: self.book.segment_states(loc.segment),
                })?;
        readback::read_f32(&self.ctx, buf, off as u64, len)
    }

    pub(crate) fn book(&self) -> &Book {
        &self.book
    }

    pub(crate) fn book_mut(&mut self) -> &mut Book {
        &mut self.book
    }

    pub(crate) fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// State `name` of every member of segment `s`, in member order (one readback).
    pub(crate) fn read_segment_members(&self, s: usize, name: &str) -> Result<Vec<Vec<f32>>> {
        let img = self.read_segment_state_image(s, name)?;
        let seg = &self.segments[s];
        Ok(seg
            .layout()
            .members()
            .iter()
            .enumerate()
            .map(|(local, &i)| {
                seg.state_place(name, local, self.layout.tensors()[i].len)
                    .and_then(|(off, len)| img.get(off..off + len))
                    .map(|x| x.to_vec())
                    .unwrap_or_default()
            })
            .collect())
    }

    /// Writes state `name` of the listed members (local index, values) of segment `s`
    /// (lengths already checked; takes effect at the next submission, before any step).
    pub(crate) fn write_segment_members(
        &self,
        s: usize,
        name: &str,
        members: &[(usize, Vec<f32>)],
    ) {
        let seg = &self.segments[s];
        let Some(buf) = seg.state_buffer(name) else {
            return;
        };
        let members_of = seg.layout().members();
        for (local, data) in members {
            let Some(&i) = members_of.get(*local) else {
                continue;
            };
            let len = self.layout.tensors()[i].len;
            if let Some((off, n)) = seg.state_place(name, *local, len) {
                if n == data.len() && n > 0 {
                    self.ctx
                        .queue()
                        .write_buffer(buf, off as u64 * 4, bytemuck::cast_slice(data));
                }
            }
        }
    }

    /// The context the optimizer was built on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Attaches (or, with `None`, detaches) global-norm gradient clipping. While attached,
    /// every step first records the clipper's norm passes over the gradients of the tensors
    /// that step (frozen tensors and tensors in no group are left out, as
    /// `clip_grad_norm_` only sees tensors with a gradient), and the update kernels multiply
    /// each gradient by the coefficient the GPU computed, with no extra pass over the
    /// gradients and no host round trip. The grads buffer itself is not modified. Attach a
    /// clipper to one optimizer only. On error nothing changes.
    pub fn set_grad_clip(&mut self, clipper: Option<Arc<GradClipper>>) -> Result<()> {
        self.ctx.check_alive()?;
        if let Some(c) = &clipper {
            if c.arena_id() != self.arena_id {
                return Err(Error::ArenaMismatch {
                    expected: self.arena_id,
                    got: c.arena_id(),
                });
            }
        }
        let aux = aux_binding(self.amp.as_ref(), clipper.as_deref(), &self.aux);
        if let Some(a) = &mut self.amp {
            a.rebind(clipper.as_deref())?;
        }
        // Every segment's new bind groups are built before any is installed.
        let built = self.ctx.scoped(|| {
            self.segments
                .iter()
                .map(|s| s.bind_groups(&self.ctx, &aux))
                .collect::<Vec<_>>()
        })?;
        for (s, bgs) in self.segments.iter_mut().zip(built) {
            s.set_bind_groups(bgs);
        }
        self.clipper = clipper;
        Ok(())
    }

    /// The attached gradient clipper.
    pub fn grad_clip(&self) -> Option<&Arc<GradClipper>> {
        self.clipper.as_ref()
    }

    pub(crate) fn check_arena(&self, arena: &ParamArena) -> Result<()> {
        self.ctx.check_alive()?;
        if arena.id() != self.arena_id {
            return Err(Error::ArenaMismatch {
                expected: self.arena_id,
                got: arena.id(),
            });
        }
        Ok(())
    }

    /// Writes the clipper's live mask (frozen tensors and tensors in no group excluded), and
    /// keeps it for the AMP guard.
    fn write_clip_mask(&mut self) {
        if self.clipper.is_some() || self.amp.is_some() {
            self.clip_ranges.clear();
            for (i, r) in self.layout.all().ranges().iter().enumerate() {
                self.clip_ranges.push(if self.book.live(i) {
                    *r
                } else {
                    ChunkRange {
                        first: r.first,
                        count: 0,
                    }
                });
            }
            if let Some(c) = &self.clipper {
                c.write_ranges(&self.clip_ranges);
            }
        }
    }

    /// Attaches (or, with `None`, detaches) loss scaling and the non-finite skip (see
    /// [`crate::amp`]). While attached, every step records an inf-norm check of the live
    /// gradients and the `amp_decide` kernel before the update, whose dispatches become
    /// indirect: a step with a NaN or Inf gradient dispatches no update workgroups at all,
    /// and its step counts are taken back on the host when the flag is read (lazily: at the
    /// next step, or by [`Optimizer::found_inf`]). With a clipper attached too, the clip
    /// coefficient is computed from the unscaled norm (PyTorch: `scaler.unscale_` before
    /// `clip_grad_norm_`). On error nothing changes.
    pub fn set_amp(&mut self, arena: &ParamArena, amp: Option<AmpConfig>) -> Result<()> {
        self.check_arena(arena)?;
        self.resolve_amp()?;
        let new = match amp {
            Some(cfg) => {
                let grids: Vec<(u32, u32)> = self
                    .segments
                    .iter()
                    .flat_map(|s| s.dispatch_grids())
                    .collect();
                Some(AmpGpu::new(
                    &self.ctx,
                    arena,
                    cfg,
                    &grids,
                    self.clipper.as_deref(),
                )?)
            }
            None => None,
        };
        let aux = aux_binding(new.as_ref(), self.clipper.as_deref(), &self.aux);
        let built = self.ctx.scoped(|| {
            self.segments
                .iter()
                .map(|s| s.bind_groups(&self.ctx, &aux))
                .collect::<Vec<_>>()
        })?;
        for (s, bgs) in self.segments.iter_mut().zip(built) {
            s.set_bind_groups(bgs);
        }
        self.amp = new;
        self.last_found = None;
        Ok(())
    }

    /// The attached AMP configuration.
    pub fn amp(&self) -> Option<&AmpConfig> {
        self.amp.as_ref().map(|a| &a.cfg)
    }

    /// Reads back the decision of the last step if it has not been read (waiting for that
    /// step), and takes a skipped step back in the host bookkeeping.
    fn resolve_amp(&mut self) -> Result<()> {
        let Some(a) = &mut self.amp else {
            return Ok(());
        };
        if let Some(st) = a.take_pending()? {
            let found = st.found != 0;
            if found && a.cfg.skip_non_finite {
                a.snapshot.restore(&mut self.book);
            }
            self.last_found = Some(found);
        }
        Ok(())
    }

    /// Whether the last step's unscaled gradients held a NaN or Inf (PyTorch's `found_inf`),
    /// read back now if it has not been (this waits for that step). With
    /// `skip_non_finite`, such a step changed nothing, and from this call on the step
    /// counts say so. `None` without [`Optimizer::set_amp`] or before the first step.
    pub fn found_inf(&mut self) -> Result<Option<bool>> {
        self.ctx.check_alive()?;
        self.resolve_amp()?;
        Ok(self.last_found)
    }

    /// The AMP guard's state (scale, growth tracker, last found flag, skipped steps), read
    /// back from the GPU. `None` without [`Optimizer::set_amp`].
    pub fn amp_state(&self) -> Result<Option<AmpState>> {
        self.amp.as_ref().map(|a| a.read_state()).transpose()
    }

    /// The buffer whose first f32 is the current loss scale (the scale the next backward
    /// pass should multiply the loss by), for a training loop's own kernels. `None` without
    /// [`Optimizer::set_amp`].
    pub fn loss_scale_buffer(&self) -> Option<&wgpu::Buffer> {
        self.amp.as_ref().map(|a| a.state_buffer())
    }

    pub(crate) fn set_amp_state(&mut self, st: &AmpState) -> bool {
        match &self.amp {
            Some(a) => {
                a.write_state(st);
                true
            }
            None => false,
        }
    }

    fn encode_update(&mut self, encoder: &mut wgpu::CommandEncoder) {
        let max_norm = self.clipper.as_ref().map(|c| c.max_norm());
        if let Some(a) = &mut self.amp {
            a.snapshot.take(&self.book);
            a.encode(encoder, &self.clip_ranges, max_norm);
        }
        self.book.advance();
        let grad_scale = self.clipper.is_some() || self.amp.is_some();
        for (s, seg) in self.segments.iter_mut().enumerate() {
            seg.write_tables(&self.ctx, &mut self.book, s, grad_scale);
        }
        // Every group's lr change has now reached its rule.
        self.book.lr_set.fill(false);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("optimizer step"),
            timestamp_writes: None,
        });
        let mut d = match &self.amp {
            Some(a) => Dispatcher::indirect(a.indirect_buffer()),
            None => Dispatcher::direct(),
        };
        for seg in &self.segments {
            seg.record(&mut pass, &mut d);
        }
    }

    /// Switches every group with train and eval modes (Schedule-Free) to train mode
    /// (`train = true`: the params hold y, where gradients are taken, and `step()` is allowed)
    /// or eval mode (the params hold x, the average to evaluate and checkpoint; `step()` is
    /// refused). Optimizers start in train mode (the package starts in eval mode, but before the
    /// first step y = x = z, so only the refusal differs). Setting the current mode does
    /// nothing, as the package's `train()` / `eval()`. Otherwise one submission of one swap
    /// dispatch per window of each Schedule-Free segment, over the tensors that have stepped
    /// (frozen ones included); rules without modes are left alone. Submit a step recorded with
    /// `encode_step` before calling this (the swap reuses the step's tensor table). On error
    /// nothing changes.
    pub fn set_train_mode(&mut self, train: bool, arena: &ParamArena) -> Result<()> {
        self.check_arena(arena)?;
        self.resolve_amp()?;
        if !self.book.check_mode_swap(train)? {
            return Ok(());
        }
        let mut encoder =
            self.ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("optimizer mode swap"),
                });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("optimizer mode swap"),
                timestamp_writes: None,
            });
            for (s, seg) in self.segments.iter_mut().enumerate() {
                if seg.write_swap_table(&self.ctx, &self.book, s, train) {
                    seg.record_swap(&mut pass);
                }
            }
        }
        self.ctx.queue().submit([encoder.finish()]);
        self.book.train_mode = train;
        Ok(())
    }

    /// `set_train_mode(true, arena)` (the package's `optimizer.train()`).
    pub fn train(&mut self, arena: &ParamArena) -> Result<()> {
        self.set_train_mode(true, arena)
    }

    /// `set_train_mode(false, arena)` (the package's `optimizer.eval()`).
    pub fn eval(&mut self, arena: &ParamArena) -> Result<()> {
        self.set_train_mode(false, arena)
    }

    /// Records one optimizer step into `encoder`: writes this step's scalar tables, the
    /// clipper's norm passes if one is attached, and the update dispatches. Put forward,
    /// backward and update in one submission this way.
    ///
    /// The tables are written with `queue.write_buffer`, which takes effect at the next
    /// `queue.submit`; record at most one step of a given optimizer per submission. Step
    /// counts advance here, on the assumption that the encoder is submitted. The encoder must
    /// come from this optimizer's device. A clipper with `error_if_nonfinite` needs a host
    /// check between the norm and the update, so it is refused here ([`Error::Unsupported`]);
    /// use [`Optimizer::step`].
    pub fn encode_step(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        arena: &ParamArena,
    ) -> Result<()> {
        self.check_arena(arena)?;
        self.resolve_amp()?;
        self.book.check_train_mode()?;
        if self
            .clipper
            .as_ref()
            .is_some_and(|c| c.error_if_nonfinite())
        {
            return Err(Error::Unsupported(
                "error_if_nonfinite waits for the norm on the host; use step(), not encode_step()",
            ));
        }
        self.write_clip_mask();
        if let Some(c) = &self.clipper {
            c.encode(encoder);
        }
        self.encode_update(encoder);
        Ok(())
    }

    /// Encodes and submits one step. With a clipper whose `error_if_nonfinite` is set, the
    /// norm passes are submitted first and the host waits for the total norm (one round trip
    /// per step); a NaN or infinite norm returns [`Error::NonFiniteNorm`] with params, state
    /// and step counts untouched.
    pub fn step(&mut self, arena: &ParamArena) -> Result<()> {
        self.step_then(arena, |_| {})
    }

    /// [`Optimizer::step`], with `after` recording more commands (Lookahead's sync) behind the
    /// update in the same submission; `after` runs only once every check has passed.
    pub(crate) fn step_then(
        &mut self,
        arena: &ParamArena,
        after: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<()> {
        self.check_arena(arena)?;
        self.resolve_amp()?;
        self.book.check_train_mode()?;
        let device = self.ctx.device().clone();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("optimizer step"),
        });
        self.write_clip_mask();
        if let Some(c) = self.clipper.clone() {
            c.encode(&mut encoder);
            if c.error_if_nonfinite() {
                self.ctx.queue().submit([encoder.finish()]);
                c.check_finite()?;
                encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("optimizer step"),
                });
            }
        }
        self.encode_update(&mut encoder);
        after(&mut encoder);
        self.ctx.queue().submit([encoder.finish()]);
        Ok(())
    }

    /// Re-initializes the optimizer state of every tensor in a group, as if the optimizer had
    /// just been built (PyTorch: `optimizer.state.clear()`): every state buffer element back
    /// to its [`StateSpec::init`] (0, or e.g. Adagrad's `initial_accumulator_value`), step
    /// counts back to 0 (so the next step is each tensor's first: SGD's momentum buffer
    /// starts as the gradient, Adam's bias corrections restart), host scalars (NAdam's
    /// `mu_product`, ASGD's `eta` and `mu`) back to their initial values. Kept: the
    /// parameters, the groups' configurations and their scalars (Schedule-Free's `k`,
    /// `weight_sum`: `param_groups` entries in PyTorch), frozen flags, the train mode and an
    /// attached clipper. One submission; not for the hot path (it builds its commands and,
    /// for non-zero initial values, an image buffer each call).
    pub fn reset_state(&mut self) -> Result<()> {
        self.ctx.check_alive()?;
        let all: Vec<usize> = (0..self.layout.tensors().len())
            .filter(|&i| self.book.loc[i].is_some())
            .collect();
        let reset = self.prepare_reset(&all)?;
        let mut encoder =
            self.ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("optimizer state reset"),
                });
        reset.record(&mut encoder);
        self.ctx.queue().submit([encoder.finish()]);
        self.forget_steps(&all);
        Ok(())
    }

    /// The commands that re-initialize the state buffers of `tensors` (arena indices, each in
    /// a group), built once (Lookahead records them at every sync). Consecutive tensors of a
    /// segment share one command per state buffer.
    pub(crate) fn prepare_reset(&self, tensors: &[usize]) -> Result<StateReset> {
        let mut wanted = vec![false; self.layout.tensors().len()];
        for &i in tensors {
            wanted[i] = true;
        }
        let mut ops = Vec::new();
        for (s, seg) in self.segments.iter().enumerate() {
            let l = seg.layout();
            for (spec, buf) in seg.states() {
                // Element ranges [start, end) of this state buffer, merged.
                let mut ranges: Vec<(usize, usize)> = Vec::new();
                for (local, &i) in l.members().iter().enumerate() {
                    if !wanted[i] {
                        continue;
                    }
                    let len = self.layout.tensors()[i].len;
                    let Some((start, n)) = seg.state_place(spec.name, local, len) else {
                        continue;
                    };
                    if n == 0 {
                        continue;
                    }
                    // Padding lanes up to the next vec4 are zero and stay zero.
                    let end = start + n.next_multiple_of(4);
                    match ranges.last_mut() {
                        Some(r) if r.1 == start => r.1 = end,
                        _ => ranges.push((start, end)),
                    }
                }
                if ranges.is_empty() {
                    continue;
                }
                let source = if spec.init == 0.0 {
                    None
                } else {
                    // The initial image, padding zero (a copy cannot broadcast a value).
                    let mut image = vec![0f32; seg.state_elements() as usize];
                    for (local, &i) in l.members().iter().enumerate() {
                        let len = self.layout.tensors()[i].len;
                        if let Some((off, n)) = seg.state_place(spec.name, local, len) {
                            image[off..off + n].fill(spec.init);
                        }
                    }
                    let src = self.ctx.scoped(|| {
                        let b = storage_buffer(
                            &self.ctx,
                            &format!("{} {} initial", self.book.segments[s].family, spec.name),
                            buf.size(),
                        );
                        self.ctx
                            .queue()
                            .write_buffer(&b, 0, bytemuck::cast_slice(&image));
                        b
                    })?;
                    Some(src)
                };
                for &(a, b) in &ranges {
                    ops.push(ResetOp {
                        source: source.clone(),
                        target: buf.clone(),
                        offset: a as u64 * 4,
                        size: (b - a) as u64 * 4,
                    });
                }
            }
        }
        Ok(StateReset { ops })
    }

    /// Step counts and host scalars of `tensors` back to a fresh state's (the book's half of
    /// a state reset; the buffers' half is [`StateReset::record`]).
    pub(crate) fn forget_steps(&mut self, tensors: &[usize]) {
        self.book.reset_tensors(tensors);
    }

    /// Dispatches recorded per step by this optimizer (one per segment, pass and binding
    /// window with work), not counting an attached clipper's.
    pub fn dispatches_per_step(&self) -> usize {
        self.segments.iter().map(|s| s.dispatches()).sum()
    }

    /// Number of segments (algorithm families among the groups).
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// The layout of segment `s`: its tensors and where each sits in its state buffers.
    pub fn segment_layout(&self, s: usize) -> Result<&SegmentLayout> {
        self.segments
            .get(s)
            .map(|x| x.layout())
            .ok_or(Error::LimitExceeded {
                what: "segment index".into(),
                value: s as u64,
                limit: self.segments.len().saturating_sub(1) as u64,
                why: "segments are numbered from 0",
            })
    }

    /// Bytes of GPU memory the optimizer's state buffers take, over all segments.
    pub fn state_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.state_bytes()).sum()
    }

    /// Segment `s`'s whole state buffer `state`, padding included, in segment layout.
    pub fn read_segment_state_image(&self, s: usize, state: &str) -> Result<Vec<f32>> {
        let seg = self.segments.get(s).ok_or(Error::LimitExceeded {
            what: "segment index".into(),
            value: s as u64,
            limit: self.segments.len().saturating_sub(1) as u64,
            why: "segments are numbered from 0",
        })?;
        let buf = seg.state_buffer(state).ok_or_else(|| Error::UnknownState {
            name: state.to_string(),
            available: self.book.segment_states(s),
        })?;
        readback::read_f32(&self.ctx, buf, 0, seg.state_elements() as usize)
    }

    /// State `state` gathered into one arena-shaped image (zeros for tensors without it and
    /// for padding): one readback per segment.
    pub fn read_state_image(&self, state: &str) -> Result<Vec<f32>> {
        if !self.state_names().contains(&state) {
            return Err(Error::UnknownState {
                name: state.to_string(),
                available: self.state_names(),
            });
        }
        let mut out = vec![0f32; self.layout.total_elements() as usize];
        for (s, seg) in self.segments.iter().enumerate() {
            if seg.state_buffer(state).is_none() {
                continue;
            }
            let img = self.read_segment_state_image(s, state)?;
            for (local, &i) in seg.layout().members().iter().enumerate() {
                let t = &self.layout.tensors()[i];
                match seg.state_place(state, local, t.len) {
                    Some((off, len)) if len == t.len => {
                        out[t.offset..t.offset + t.len].copy_from_slice(&img[off..off + t.len])
                    }
                    // A tensor that keeps no such state stays zero.
                    Some((_, 0)) | None => {}
                    Some(_) => {
                        return Err(Error::Unsupported(
                            "read_state_image: this state is not shaped like its tensor \
                             (Adafactor's row_var / col_var); read it per tensor with read_state",
                        ))
                    }
                }
            }
        }
        Ok(out)
    }

    /// Per-tensor trust ratios of the last step, in arena order (LARS and LAMB segments; 1
    /// for tensors that do not adapt or are in no such segment; the previous value for
    /// tensors frozen in that step), read back from the GPU. `None` when no segment reduces.
    /// Hypergradient segments are not counted (their reduction is a learned lr per group; see
    /// [`Optimizer::read_learned_lr`]).
    pub fn read_trust_ratios(&self) -> Result<Option<Vec<f32>>> {
        let mut out = vec![1.0f32; self.layout.tensors().len()];
        let mut any = false;
        for seg in &self.segments {
            let Some(p) = seg.partials() else { continue };
            if seg.learned_offset().is_some() {
                // Hypergradient segments keep learned lrs there, not ratios.
                continue;
            }
            any = true;
            let l = seg.layout();
            let base = l.chunks().len() as u64 * 4;
            let raw = readback::read_f32(&self.ctx, p, base, l.members().len() * 4)?;
            for (k, &i) in l.members().iter().enumerate() {
                out[i] = raw[k * 4];
            }
        }
        Ok(any.then_some(out))
    }

    /// The learned learning rate of every parameter group (hypergradient descent: SGD-HD,
    /// SGDN-HD, Adam-HD), read back from the GPU, in group order: the lr the group's last step
    /// used, which its next step starts from. Before a group's first step, and after its lr was
    /// set (`set_group_lr`, `set_lr`, `set_lr_factor`, `set_group_config`), that is its
    /// configured lr. Groups that do not learn their lr report their configured lr. `None` when
    /// no group learns its lr. One readback per hypergradient segment.
    pub fn read_learned_lr(&self) -> Result<Option<Vec<f32>>> {
        self.ctx.check_alive()?;
        let mut out: Vec<f32> = self
            .book
            .groups
            .iter()
            .map(|g| g.config.lr() as f32)
            .collect();
        let mut any = false;
        for (s, seg) in self.segments.iter().enumerate() {
            let (Some(p), Some(off)) = (seg.partials(), seg.learned_offset()) else {
                continue;
            };
            any = true;
            let groups = &self.book.segments[s].groups;
            let raw = readback::read_f32(&self.ctx, p, off, groups.len() * 4)?;
            for (local, &g) in groups.iter().enumerate() {
                if !self.book.lr_set[g] {
                    out[g] = raw[local * 4];
                }
            }
        }
        Ok(any.then_some(out))
    }

    /// Writes back learned learning rates (one per group, as [`Optimizer::read_learned_lr`]
    /// returns them, e.g. from a checkpoint): the next step of each group that learns its lr
    /// starts from its value instead of from its configured lr. Entries of groups that do not
    /// learn their lr are ignored. The learned lr may be negative (it is not clamped), but it
    /// must be finite. Errors: a length other than the group count, a non-finite value, or no
    /// group that learns its lr ([`Error::Unsupported`]); nothing changes on error.
    pub fn write_learned_lr(&mut self, lrs: &[f32]) -> Result<()> {
        self.ctx.check_alive()?;
        check_learned(&self.book, lrs)?;
        for (s, seg) in self.segments.iter().enumerate() {
            let (Some(p), Some(off)) = (seg.partials(), seg.learned_offset()) else {
                continue;
            };
            let groups = &self.book.segments[s].groups;
            let image: Vec<f32> = groups
                .iter()
                .flat_map(|&g| [lrs[g], 0.0, 0.0, 0.0])
                .collect();
            self.ctx
                .queue()
                .write_buffer(p, off * 4, bytemuck::cast_slice(&image));
            for &g in groups {
                self.book.lr_set[g] = false;
            }
        }
        Ok(())
    }
}

/// Checks learned lrs written back (shared with the CPU engine): one finite value per group,
/// and some group that learns its lr.
pub(crate) fn check_learned(book: &Book, lrs: &[f32]) -> Result<()> {
    if !book.groups.iter().any(|g| g.config.learns_lr()) {
        return Err(Error::Unsupported(
            "no parameter group learns its lr (only hypergradient configurations do)",
        ));
    }
    if lrs.len() != book.groups.len() {
        return Err(Error::LengthMismatch {
            what: "learned lrs (one per parameter group)".into(),
            expected: book.groups.len(),
            got: lrs.len(),
        });
    }
    if let Some(&bad) = lrs.iter().find(|v| !v.is_finite()) {
        return Err(Error::hyper("learned lr", bad as f64, "must be finite"));
    }
    Ok(())
}

/// One command of a state reset: clear a range of a state buffer, or copy it from the
/// buffer's initial image.
#[derive(Debug)]
struct ResetOp {
    source: Option<wgpu::Buffer>,
    target: wgpu::Buffer,
    offset: u64,
    size: u64,
}

/// Prepared commands that re-initialize some tensors' optimizer state buffers
/// ([`Optimizer::prepare_reset`]); recording them allocates nothing.
#[derive(Debug)]
pub(crate) struct StateReset {
    ops: Vec<ResetOp>,
}

impl StateReset {
    /// Records the reset into `encoder` (after the commands that read the old state).
    pub(crate) fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        for op in &self.ops {
            match &op.source {
                None => encoder.clear_buffer(&op.target, op.offset, Some(op.size)),
                Some(src) => {
                    encoder.copy_buffer_to_buffer(src, op.offset, &op.target, op.offset, op.size)
                }
            }
        }
    }
}
