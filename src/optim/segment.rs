//! The GPU engine's segments: the [`GpuSegment`] face every segment kind shows the optimizer,
//! the [`Dispatcher`] they record through, and the generic chunked segment that runs any rule
//! of [`SegmentKind::Chunked`] (src/optim/muon_segment.rs and adafactor_segment.rs are the
//! other kinds).

use super::book::Book;
use super::rule::{Pass, StateSpec};
use super::table::Row;
use crate::amp_gpu::AmpGpu;
use crate::arena::{
    half_window_binding, state_binding, window_binding, ArenaTables, ParamArena, SegmentLayout,
};
use crate::context::GpuContext;
use crate::dispatch;
use crate::error::{Error, Result};
use crate::gpu_buffers::{storage_buffer, table_bytes};
use crate::norm::GradClipper;
use crate::pipeline::{Kernel, PipelineKey};
use crate::shaders::{KernelDef, MAX_SEGMENT_GROUPS};
use crate::tune::KernelShape;
use bytemuck::Zeroable;
use std::sync::Arc;

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
pub(crate) fn aux_binding(
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
    /// Allocates state buffers the segment did not have, at their initial values (a group
    /// given a configuration that keeps them); the caller then rebuilds the bind groups.
    /// Default: the segment's buffers are fixed at construction.
    fn add_states(&mut self, _ctx: &GpuContext, _states: &[StateSpec]) -> Result<()> {
        Err(Error::Unsupported(
            "this segment's state buffers are fixed at construction (Muon, Adafactor): build \
             the optimizer with the option on",
        ))
    }
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
pub(crate) struct Segment<R: Row> {
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

impl<R: Row> Segment<R> {
    pub(crate) fn new(
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
            if R::elementwise() {
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
                let plain = ctx.kernel_keyed(key(0.0))?;
                let packed = match any_packed {
                    true => Some(ctx.kernel_keyed(key(1.0))?),
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

impl<R: Row> Segment<R> {
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

impl<R: Row> GpuSegment for Segment<R> {
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

    fn add_states(&mut self, ctx: &GpuContext, states: &[StateSpec]) -> Result<()> {
        if R::learns_lr() {
            return Err(Error::Unsupported(
                "a rule that learns its lr keeps its state buffers fixed at construction",
            ));
        }
        let bytes = self.layout.state_bytes();
        if bytes > ctx.limits().max_buffer_size {
            return Err(Error::BufferTooLarge {
                what: format!("{} state", self.label),
                bytes,
                limit: ctx.limits().max_buffer_size,
            });
        }
        // Built (and error-scoped) before any is installed, so nothing changes on error.
        let new = ctx.scoped(|| {
            states
                .iter()
                .map(|s| {
                    let buf = storage_buffer(ctx, s.name, bytes);
                    if s.init != 0.0 {
                        let mut image = vec![0f32; self.layout.state_elements() as usize];
                        for (info, &off) in self.infos.iter().zip(self.layout.state_offsets()) {
                            image[off..off + info.len].fill(s.init);
                        }
                        ctx.queue()
                            .write_buffer(&buf, 0, bytemuck::cast_slice(&image));
                    }
                    (*s, buf)
                })
                .collect::<Vec<_>>()
        })?;
        self.states.extend(new);
        Ok(())
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
