//! The GPU engine: [`Optimizer`] owns one [`Segment`] per algorithm family in its parameter
//! groups, and records all of them into one submission per step.

use std::sync::Arc;

use bytemuck::Zeroable;

use super::book::Book;
use super::{HyperCtx, OptimizerConfig, ParamGroups, Pass, Rule, RuleVisitor, StateSpec};
use crate::arena::{ArenaTables, ChunkRange, ParamArena, ParamLayout, SegmentLayout, Window};
use crate::context::GpuContext;
use crate::dispatch;
use crate::error::{Error, Result};
use crate::norm::GradClipper;
use crate::pipeline::{Kernel, PipelineKey};
use crate::readback;
use crate::shaders::{KernelDef, MAX_SEGMENT_GROUPS};

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

/// Binds the state window of `w` of a segment's state buffer.
fn state_binding<'a>(buf: &'a wgpu::Buffer, w: &Window) -> wgpu::BindingResource<'a> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: buf,
        offset: w.state_byte_offset(),
        size: std::num::NonZeroU64::new(w.state_byte_size()),
    })
}

/// What every segment does, whatever its rule (Muon implements it with its own segment type).
pub(crate) trait GpuSegment: std::fmt::Debug + Send + Sync {
    /// Writes this step's group and tensor tables (after the book advanced the counts).
    fn write_tables(&mut self, ctx: &GpuContext, book: &mut Book, seg: usize, grad_scale: bool);
    /// Records the segment's dispatches.
    fn record(&self, pass: &mut wgpu::ComputePass<'_>);
    /// Writes the tensor table of a mode swap (to train mode with `to_train`); false when the
    /// segment's rule has no swap or no tensor to swap (then nothing is written).
    fn write_swap_table(
        &mut self,
        ctx: &GpuContext,
        book: &Book,
        seg: usize,
        to_train: bool,
    ) -> bool;
    /// Records the mode-swap dispatches (after `write_swap_table` returned true).
    fn record_swap(&self, pass: &mut wgpu::ComputePass<'_>);
    /// Bind groups with `aux` as binding 4 (the clip coefficient, or the constant 1).
    fn bind_groups(&self, ctx: &GpuContext, aux: &wgpu::Buffer) -> Vec<wgpu::BindGroup>;
    /// Installs bind groups built by `bind_groups`.
    fn set_bind_groups(&mut self, bgs: Vec<wgpu::BindGroup>);
    /// The segment's tensors and where each sits in its state buffers.
    fn layout(&self) -> &SegmentLayout;
    /// A state buffer, in the segment layout.
    fn state_buffer(&self, name: &str) -> Option<&wgpu::Buffer>;
    /// Bytes of the segment's state (and scratch) buffers.
    fn state_bytes(&self) -> u64;
    /// Dispatches per step.
    fn dispatches(&self) -> usize;
    /// The reduction buffer (LARS, LAMB).
    fn partials(&self) -> Option<&wgpu::Buffer>;
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
    partials: Option<wgpu::Buffer>,
    dummy: wgpu::Buffer,
    states: Vec<(StateSpec, wgpu::Buffer)>,
    bind_groups: Vec<wgpu::BindGroup>,
    grids: Vec<(u32, u32)>,
    tensor_grid: (u32, u32),
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
    ) -> Result<Self> {
        let label = R::KERNEL.entry_point();
        let layout = SegmentLayout::new(
            arena.layout(),
            plan.members.clone(),
            &plan.member_groups,
            ctx.max_binding_bytes(),
            ctx.limits().min_storage_buffer_offset_alignment as u64,
            // Small tensors share packed chunks for the rules whose kernels read them: the
            // elementwise ones (one pass, no per-tensor reduction).
            R::passes().len() == 1 && !R::KERNEL.uses_partials(),
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
        let pipelines = |kernel: KernelDef| -> Result<(Arc<Kernel>, Option<Arc<Kernel>>)> {
            let key = |packed: f64| {
                PipelineKey::with_constants(
                    kernel,
                    &[("STATE_AT_PARAMS", same), ("PACKED", packed)],
                )
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
            let (plain, packed) = pipelines(pass.kernel())?;
            passes.push((pass, plain, packed));
        }
        let swap = R::swap_kernel().map(pipelines).transpose()?;
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
            let partials = R::KERNEL
                .uses_partials()
                .then(|| storage("partials", table_bytes::<[f32; 4]>(n_chunks + n_tensors)));
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
    fn record_chunks(&self, pass: &mut wgpu::ComputePass<'_>, packed_kernel: Option<&Kernel>) {
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
                pass.dispatch_workgroups(x, y, 1);
            }
        }
    }
}

impl<R: Rule> GpuSegment for Segment<R> {
    fn write_tables(&mut self, ctx: &GpuContext, book: &mut Book, seg: usize, grad_scale: bool) {
        let book = &mut *book;
        let plan = &book.segments[seg];
        let extra_flags = if grad_scale {
            crate::shaders::FLAG_GRAD_SCALE
        } else {
            0
        };
        self.hyper_table.clear();
        for &g in &plan.groups {
            // Every group of a segment is of the segment's family (checked on every change).
            if let Some(c) = R::of(&book.groups[g].config) {
                let h = c.group_step(HyperCtx { extra_flags }, &mut book.group_scalars[g]);
                self.hyper_table.push(h);
            } else {
                self.hyper_table.push(R::Hyper::zeroed());
            }
        }
        self.tensor_table.clear();
        for (local, &i) in book.segments[seg].members.iter().enumerate() {
            let loc = book.loc[i];
            let entry = match (book.live(i), loc) {
                (true, Some(l)) => R::of(&book.groups[l.group].config).map(|c| {
                    c.tensor_step_for(
                        book.steps[i],
                        book.groups[l.group].local as u32,
                        self.layout.ranges()[local],
                        &mut book.scalars[i],
                        &self.infos[local],
                    )
                }),
                _ => None,
            };
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

    fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        for (p, kernel, packed_kernel) in &self.passes {
            pass.set_pipeline(&kernel.pipeline);
            match p {
                Pass::Chunks(_) => self.record_chunks(pass, packed_kernel.as_deref()),
                Pass::Tensors(_) => {
                    // Any window's bind group will do: this pass touches only the tables.
                    let (x, y) = self.tensor_grid;
                    if x > 0 {
                        pass.set_bind_group(0, &self.bind_groups[0], &[]);
                        pass.dispatch_workgroups(x, y, 1);
                    }
                }
            }
        }
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
            self.record_chunks(pass, packed_kernel.as_deref());
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
                    entry(6, window_binding(&self.grads, w)),
                ];
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

    fn state_bytes(&self) -> u64 {
        self.states.iter().map(|(_, b)| b.size()).sum()
    }

    fn dispatches(&self) -> usize {
        let windows = self.grids.iter().filter(|g| g.0 > 0).count();
        self.passes
            .iter()
            .map(|(p, _, _)| match p {
                Pass::Chunks(_) => windows,
                Pass::Tensors(_) => usize::from(self.tensor_grid.0 > 0),
            })
            .sum()
    }

    fn partials(&self) -> Option<&wgpu::Buffer> {
        self.partials.as_ref()
    }
}

struct BuildSegment<'a> {
    ctx: &'a GpuContext,
    arena: &'a ParamArena,
    plan: &'a super::book::SegmentPlan,
    aux: &'a wgpu::Buffer,
}

impl RuleVisitor for BuildSegment<'_> {
    type Out = Result<Box<dyn GpuSegment>>;
    fn visit<R: Rule>(self, configs: Vec<R>) -> Self::Out {
        // Muon runs its own segment (momentum, batched Newton–Schulz matmuls, apply).
        let any: &dyn std::any::Any = &configs;
        if let Some(muon) = any.downcast_ref::<Vec<super::muon::MuonConfig>>() {
            return Ok(Box::new(super::muon::MuonSegment::new(
                self.ctx, self.arena, self.plan, self.aux, muon,
            )?));
        }
        Ok(Box::new(Segment::<R>::new(
            self.ctx, self.arena, self.plan, self.aux,
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
/// LAMB segments record three passes (norm partials, per-tensor trust ratios, update).
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
    /// Reused every step: which tensors the clipper counts.
    clip_ranges: Vec<ChunkRange>,
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
        let off = seg.layout().state_offsets()[loc.local];
        readback::read_f32(&self.ctx, buf, off as u64, self.layout.tensors()[i].len)
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
        let aux = match &clipper {
            Some(c) => c.scale_buffer().clone(),
            None => self.aux.clone(),
        };
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

    fn check_arena(&self, arena: &ParamArena) -> Result<()> {
        self.ctx.check_alive()?;
        if arena.id() != self.arena_id {
            return Err(Error::ArenaMismatch {
                expected: self.arena_id,
                got: arena.id(),
            });
        }
        Ok(())
    }

    /// Writes the clipper's live mask (frozen tensors and tensors in no group excluded).
    fn write_clip_mask(&mut self) {
        if let Some(c) = &self.clipper {
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
            c.write_ranges(&self.clip_ranges);
        }
    }

    fn encode_update(&mut self, encoder: &mut wgpu::CommandEncoder) {
        self.book.advance();
        let grad_scale = self.clipper.is_some();
        for (s, seg) in self.segments.iter_mut().enumerate() {
            seg.write_tables(&self.ctx, &mut self.book, s, grad_scale);
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("optimizer step"),
            timestamp_writes: None,
        });
        for seg in &self.segments {
            seg.record(&mut pass);
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
        self.check_arena(arena)?;
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
        self.ctx.queue().submit([encoder.finish()]);
        Ok(())
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
        readback::read_f32(&self.ctx, buf, 0, seg.layout().state_elements() as usize)
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
            let l = seg.layout();
            for (&i, &off) in l.members().iter().zip(l.state_offsets()) {
                let t = &self.layout.tensors()[i];
                out[t.offset..t.offset + t.len].copy_from_slice(&img[off..off + t.len]);
            }
        }
        Ok(out)
    }

    /// Per-tensor trust ratios of the last step, in arena order (LARS and LAMB segments; 1
    /// for tensors that do not adapt or are in no such segment; the previous value for
    /// tensors frozen in that step), read back from the GPU. `None` when no segment reduces.
    pub fn read_trust_ratios(&self) -> Result<Option<Vec<f32>>> {
        let mut out = vec![1.0f32; self.layout.tensors().len()];
        let mut any = false;
        for seg in &self.segments {
            let Some(p) = seg.partials() else { continue };
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
}
