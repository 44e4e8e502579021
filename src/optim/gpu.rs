//! The GPU engine: [`Optimizer`] owns one [`Segment`] per algorithm family in its parameter
//! groups, and records all of them into one submission per step.

use super::face::ParamGroupTable;
use std::sync::Arc;

use super::book::Book;
use super::book::ParamGroups;
use super::muon::MuonConfig;
use super::rule::SegmentKind;
use super::segment::{aux_binding, Dispatcher, GpuSegment, Segment};
use super::table::{OptimizerConfig, Row, RuleVisitor};
use crate::amp::{AmpConfig, AmpState};
use crate::amp_gpu::AmpGpu;
use crate::arena::{ChunkRange, ParamArena, ParamLayout, SegmentLayout, TensorSpec};
use crate::autotune::{build_candidates, resolve_or_time, scratch_values, time_candidates};
use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::gpu_buffers::storage_buffer;
use crate::norm::GradClipper;
use crate::readback;
use crate::tune::{KernelShape, ShapeChoice};

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
    fn visit<R: Row>(self, configs: Vec<R>) -> Self::Out {
        // The segment kind is the rule's capability; Muon's and Adafactor's segments take their
        // own configurations, picked out of the table by the rule's row.
        let mixed = self.arena.precision().is_mixed();
        match R::SEGMENT {
            SegmentKind::NewtonSchulz => {
                if mixed {
                    return Err(Error::Unsupported(
                        "Muon does not run on a mixed-precision arena (its momentum and apply \
                         passes read f32 gradients and write only the f32 weights)",
                    ));
                }
                let muon: Vec<MuonConfig> = configs
                    .into_iter()
                    .filter_map(|c| MuonConfig::of(&c.into()).cloned())
                    .collect();
                return Ok(Box::new(super::muon_segment::MuonSegment::new(
                    self.ctx, self.arena, self.plan, self.aux, &muon,
                )?));
            }
            SegmentKind::Factored => {
                if mixed {
                    return Err(Error::Unsupported(
                        "Adafactor does not run on a mixed-precision arena yet (its step reads f32 \
                         gradients and writes only the f32 weights)",
                    ));
                }
                return Ok(Box::new(super::adafactor_segment::AdafactorSegment::new(
                    self.ctx, self.arena, self.plan, self.aux,
                )?));
            }
            SegmentKind::Chunked => {}
        }
        // Every rule that reaches the generic segment takes the adapter's split.
        let shape = match self.shape {
            Some(shape) => shape,
            None => shape_for(self.ctx, &configs[0])?,
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
    ///
    /// By default ([`crate::amp::FoundInfCheck::Unscaled`]) the check is on the unscaled
    /// gradients (each gradient times `1 / scale`), so with a scale below 1 a huge finite
    /// gradient (2e38 at scale 0.5) is found and the step skipped. torch tests the scaled
    /// gradient instead, finds nothing there and steps with an infinite unscaled gradient;
    /// [`crate::amp::FoundInfCheck::Scaled`] (in [`crate::GradScalerConfig`]) does the same.
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

/// The split `R`'s kernel runs on this context: pinned, cached, or (policy `Auto`, nothing
/// cached) timed now on a scratch tensor with `config`'s settings and recorded.
fn shape_for<R: Row>(ctx: &GpuContext, config: &R) -> Result<KernelShape> {
    resolve_or_time(ctx, R::KERNEL, KernelShape::default(), |elements| {
        time_rule(ctx, config, elements)
    })
}

/// Times every candidate split of `config`'s kernel on a scratch tensor of `elements`, each a
/// complete [`Optimizer`] with the split forced (the tuner's candidates).
pub(crate) fn time_rule<R: Row>(
    ctx: &GpuContext,
    config: &R,
    elements: usize,
) -> Result<ShapeChoice> {
    let arena = ParamArena::new(ctx, &[TensorSpec::new("tune", elements)])?;
    let values = scratch_values(elements);
    arena.write_params("tune", &values)?;
    arena.write_grads("tune", &values)?;
    let arena = &arena;
    let candidates = build_candidates(ctx, KernelShape::default(), |shape| {
        let groups = ParamGroups::per_arena_group(arena.layout(), config.clone());
        let mut opt = Optimizer::build(ctx, arena, groups, Some(shape))?;
        Ok(move || opt.step(arena))
    })?;
    time_candidates(ctx, R::KERNEL.entry_point(), elements, candidates)
}

impl crate::optim::face::Engine for Optimizer {
    fn grow_segment_states(
        &mut self,
        seg: usize,
        states: &[crate::optim::rule::StateSpec],
    ) -> Result<()> {
        self.ctx.check_alive()?;
        let aux = aux_binding(self.amp.as_ref(), self.clipper.as_deref(), &self.aux);
        let segment = &mut self.segments[seg];
        segment.add_states(&self.ctx, states)?;
        let bgs = self.ctx.scoped(|| segment.bind_groups(&self.ctx, &aux))?;
        segment.set_bind_groups(bgs);
        Ok(())
    }

    fn book(&self) -> &Book {
        &self.book
    }

    fn book_mut(&mut self) -> &mut Book {
        &mut self.book
    }

    fn read_tensor_state(&self, state: &str, i: usize) -> Result<Vec<f32>> {
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
}
