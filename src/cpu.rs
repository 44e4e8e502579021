//! The CPU reference: the same [`Rule`]s, scalars, parameter groups and step bookkeeping as
//! the GPU path, applied tensor by tensor on host slices in the kernels' operation order. It is
//! the definition the GPU kernels are checked against, and is usable on its own (for example,
//! to train without a GPU). It knows nothing of the GPU.

use crate::amp::{AmpConfig, AmpHyper, AmpState};
use crate::arena::{ParamLayout, TensorSpec};
use crate::error::{Error, Result};
use crate::norm::ClipConfig;
use crate::optim::book::{Book, ParamGroups};
use crate::optim::face::Engine;
use crate::optim::table::{OptimizerConfig, Row, RuleVisitor};

/// What every CPU segment does, whatever its rule.
trait CpuSegment: std::fmt::Debug + Send + Sync {
    fn step(&mut self, book: &mut Book, seg: usize, params: &mut [&mut [f32]], grads: &[&[f32]]);
    /// The mode swap (`Rule::swap`) of every tensor of the segment that has stepped.
    fn swap(&mut self, book: &Book, seg: usize, params: &mut [&mut [f32]], to_train: bool);
    fn state(&self, name: &str, local: usize) -> Option<&[f32]>;
    fn state_mut(&mut self, name: &str, local: usize) -> Option<&mut Vec<f32>>;
    /// The learned scalar of each of the segment's groups (`Rule::learns_lr`), or `None`.
    fn learned(&self) -> Option<&[f32]>;
    fn learned_mut(&mut self) -> Option<&mut [f32]>;
    /// Every state buffer of member `local` back to its initial value.
    fn reset(&mut self, local: usize);
    /// Adds state buffers the segment did not have, shaped like each member (arena tensor
    /// indices `members`), at their initial values: the GPU segment's `add_states`.
    fn add_states(&mut self, members: &[usize], states: &[crate::optim::rule::StateSpec]);
}

#[derive(Debug)]
struct Segment<R: Row> {
    /// `state[slot][local tensor]`; unused slots hold no vectors.
    state: Vec<Vec<Vec<f32>>>,
    names: Vec<(&'static str, usize)>,
    /// Per segment group: the learned scalar (`Rule::learns_lr`); empty otherwise.
    learned: Vec<f32>,
    /// Initial value per slot (`StateSpec::init`).
    init: Vec<f32>,
    /// Every arena tensor (the rules' `tensor_step_for` sees its shape).
    infos: Vec<crate::arena::TensorInfo>,
    _rule: std::marker::PhantomData<R>,
}

impl<R: Row> CpuSegment for Segment<R> {
    fn step(&mut self, book: &mut Book, seg: usize, params: &mut [&mut [f32]], grads: &[&[f32]]) {
        let slots = self.state.len();
        // Once per step per group, before the tensors (the groups' host scalars advance here).
        let mut hypers = Vec::with_capacity(book.segments[seg].groups.len());
        book.segment_hypers::<R>(seg, 0, &mut hypers);
        if R::learns_lr() {
            self.step_learned(book, seg, &hypers, params, grads);
            return;
        }
        for local in 0..book.segments[seg].members.len() {
            let i = book.segments[seg].members[local];
            let Some(loc) = book.loc[i] else { continue };
            let h = &hypers[book.groups[loc.group].local];
            let range = crate::arena::ChunkRange::default();
            let Some(ts) = book.member_step::<R>(seg, local, range, &self.infos[i]) else {
                continue;
            };
            let mut views: Vec<&mut [f32]> = Vec::with_capacity(slots);
            for slot in self.state.iter_mut() {
                match slot.get_mut(local) {
                    Some(v) => views.push(v.as_mut_slice()),
                    None => views.push(&mut []),
                }
            }
            R::update(h, &ts, &mut *params[i], grads[i], &mut views);
        }
    }

    fn swap(&mut self, book: &Book, seg: usize, params: &mut [&mut [f32]], to_train: bool) {
        if R::swap_kernel().is_none() {
            return;
        }
        for local in 0..book.segments[seg].members.len() {
            let i = book.segments[seg].members[local];
            let Some(loc) = book.loc[i] else { continue };
            let group = &book.groups[loc.group];
            let Some(ts) = R::of(&group.config)
                .and_then(|c| c.swap_step(book.steps[i], group.local as u32, to_train))
            else {
                continue;
            };
            let mut views: Vec<&mut [f32]> = self
                .state
                .iter_mut()
                .map(|slot| match slot.get_mut(local) {
                    Some(v) => v.as_mut_slice(),
                    None => &mut [],
                })
                .collect();
            R::swap(&ts, &mut *params[i], &mut views);
        }
    }

    fn state(&self, name: &str, local: usize) -> Option<&[f32]> {
        let &(_, slot) = self.names.iter().find(|(n, _)| *n == name)?;
        self.state.get(slot)?.get(local).map(|v| v.as_slice())
    }

    fn state_mut(&mut self, name: &str, local: usize) -> Option<&mut Vec<f32>> {
        let &(_, slot) = self.names.iter().find(|(n, _)| *n == name)?;
        self.state.get_mut(slot)?.get_mut(local)
    }

    fn learned(&self) -> Option<&[f32]> {
        R::learns_lr().then_some(self.learned.as_slice())
    }

    fn learned_mut(&mut self) -> Option<&mut [f32]> {
        R::learns_lr().then_some(self.learned.as_mut_slice())
    }

    fn add_states(&mut self, members: &[usize], states: &[crate::optim::rule::StateSpec]) {
        for s in states {
            let slot = s.slot as usize;
            if self.state.len() <= slot {
                self.state.resize(slot + 1, Vec::new());
                self.init.resize(slot + 1, 0.0);
            }
            self.init[slot] = s.init;
            self.state[slot] = members
                .iter()
                .map(|&i| vec![s.init; self.infos[i].len])
                .collect();
            self.names.push((s.name, slot));
        }
    }

    fn reset(&mut self, local: usize) {
        for (slot, init) in self.state.iter_mut().zip(&self.init) {
            if let Some(v) = slot.get_mut(local) {
                v.fill(*init);
            }
        }
    }
}

impl<R: Row> Segment<R> {
    /// The step of a rule that learns a per-group scalar, in the GPU's three passes: every
    /// live tensor's chunk partials (zeros for the chunks of the others, in the segment's
    /// chunk order), each group's new learned value, then the updates with it.
    fn step_learned(
        &mut self,
        book: &mut Book,
        seg: usize,
        hypers: &[R::Hyper],
        params: &mut [&mut [f32]],
        grads: &[&[f32]],
    ) {
        let members = book.segments[seg].members.clone();
        let mut steps: Vec<Option<R::TensorStep>> = Vec::with_capacity(members.len());
        let mut partials = Vec::new();
        let mut chunk_groups = Vec::new();
        for (local, &i) in members.iter().enumerate() {
            let group = book.segments[seg].member_groups[local] as u32;
            let ts = match (book.live(i), book.loc[i]) {
                (true, Some(loc)) => R::of(&book.groups[loc.group].config).map(|c| {
                    c.tensor_step_with(
                        book.steps[i],
                        group,
                        crate::arena::ChunkRange::default(),
                        &mut book.scalars[i],
                    )
                }),
                _ => None,
            };
            let chunks = params[i].len().div_ceil(crate::shaders::CHUNK as usize);
            let before = partials.len();
            if let Some(ts) = &ts {
                let views: Vec<&mut [f32]> = self.views(local);
                R::chunk_partials(
                    &hypers[group as usize],
                    ts,
                    &*params[i],
                    grads[i],
                    &views,
                    &mut partials,
                );
            }
            partials.resize(before + chunks, 0.0);
            chunk_groups.resize(before + chunks, group);
            steps.push(ts);
        }
        for (local, learned) in self.learned.iter_mut().enumerate() {
            *learned = R::group_update(hypers, local, &partials, &chunk_groups, *learned);
        }
        for (local, &i) in members.iter().enumerate() {
            let Some(ts) = &steps[local] else { continue };
            let group = book.segments[seg].member_groups[local] as usize;
            let learned = self.learned[group];
            let mut views = self.views(local);
            R::update_learned(
                &hypers[group],
                ts,
                learned,
                &mut *params[i],
                grads[i],
                &mut views,
            );
        }
    }

    /// Tensor `local`'s state slices, one per slot (empty for unused slots).
    fn views(&mut self, local: usize) -> Vec<&mut [f32]> {
        self.state
            .iter_mut()
            .map(|slot| match slot.get_mut(local) {
                Some(v) => v.as_mut_slice(),
                None => &mut [],
            })
            .collect()
    }
}

struct BuildSegment<'a> {
    plan: &'a crate::optim::book::SegmentPlan,
    lens: &'a [usize],
    infos: &'a [crate::arena::TensorInfo],
}

impl RuleVisitor for BuildSegment<'_> {
    type Out = Box<dyn CpuSegment>;
    fn visit<R: Row>(self, configs: Vec<R>) -> Self::Out {
        // Kernels with their own binding convention (Muon) declare no slots: count the states.
        let slots = (R::KERNEL.state_slots() as usize).max(
            self.plan
                .states
                .iter()
                .map(|s| s.slot as usize + 1)
                .max()
                .unwrap_or(0),
        );
        let mut state = vec![Vec::new(); slots];
        let mut init = vec![0.0; slots];
        for s in &self.plan.states {
            init[s.slot as usize] = s.init;
            // Each member's buffer as its rule shapes it (Adafactor's factored state is
            // smaller than its tensor; a state the tensor does not keep is empty).
            state[s.slot as usize] = self
                .plan
                .members
                .iter()
                .zip(&self.plan.member_groups)
                .map(|(&i, &g)| {
                    let len = match configs.get(g as usize) {
                        Some(c) => c
                            .state_shape(s.name, &self.infos[i])
                            .map_or(0, |sh| sh.iter().product()),
                        None => self.lens[i],
                    };
                    vec![s.init; len]
                })
                .collect();
        }
        Box::new(Segment::<R> {
            state,
            names: self
                .plan
                .states
                .iter()
                .map(|s| (s.name, s.slot as usize))
                .collect(),
            learned: vec![0.0; self.plan.groups.len()],
            init,
            infos: self.infos.to_vec(),
            _rule: std::marker::PhantomData,
        })
    }
}

/// The optimizer on the host. Owns the optimizer state; the caller owns params and grads.
/// Built from the same configurations and parameter groups as [`crate::Optimizer`], and
/// exposes the same group, freezing, step-count and state methods.
#[derive(Debug)]
pub struct CpuOptimizer {
    book: Book,
    tensors: Vec<crate::arena::TensorInfo>,
    layout: ParamLayout,
    lens: Vec<usize>,
    segments: Vec<Box<dyn CpuSegment>>,
    /// Loss scaling and the non-finite skip, with its state and last decision.
    amp: Option<(AmpConfig, AmpState)>,
    last_found: Option<bool>,
    /// Global-norm gradient clipping, and the pre-clip norm of the last step.
    clip: Option<ClipConfig>,
    last_norm: Option<f64>,
    /// Reused: the gradients times the AMP coefficient.
    scaled: Vec<Vec<f32>>,
}

impl CpuOptimizer {
    /// The one-rule shorthand over tensors shaped like `specs` (one group per arena group).
    pub fn new(config: impl Into<OptimizerConfig>, specs: &[TensorSpec]) -> Result<Self> {
        let layout = host_layout(specs)?;
        let groups = ParamGroups::per_arena_group(&layout, config);
        Self::build(layout, &groups)
    }

    /// An optimizer over explicit parameter groups, as [`crate::Optimizer::with_groups`].
    pub fn with_groups(specs: &[TensorSpec], groups: ParamGroups) -> Result<Self> {
        let layout = host_layout(specs)?;
        Self::build(layout, &groups)
    }

    fn build(layout: ParamLayout, groups: &ParamGroups) -> Result<Self> {
        let book = Book::new(&layout, groups)?;
        let lens: Vec<usize> = layout.tensors().iter().map(|t| t.len).collect();
        let segments = book
            .segments
            .iter()
            .map(|plan| {
                let configs: Vec<&OptimizerConfig> = plan
                    .groups
                    .iter()
                    .map(|&g| &book.groups[g].config)
                    .collect();
                OptimizerConfig::visit(
                    &configs,
                    BuildSegment {
                        plan,
                        lens: &lens,
                        infos: layout.tensors(),
                    },
                )
            })
            .collect();
        Ok(Self {
            book,
            tensors: layout.tensors().to_vec(),
            layout,
            lens,
            segments,
            amp: None,
            last_found: None,
            clip: None,
            last_norm: None,
            scaled: Vec::new(),
        })
    }

    pub(crate) fn tensor_infos(&self) -> &[crate::arena::TensorInfo] {
        &self.tensors
    }

    /// State `name` of every member of segment `s`, in member order.
    pub(crate) fn read_segment_members(&self, s: usize, name: &str) -> Vec<Vec<f32>> {
        (0..self.book.segments[s].members.len())
            .map(|local| {
                self.segments[s]
                    .state(name, local)
                    .map(|x| x.to_vec())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Writes state `name` of the listed members (local index, values) of segment `s`.
    pub(crate) fn write_segment_members(
        &mut self,
        s: usize,
        name: &str,
        members: &[(usize, Vec<f32>)],
    ) {
        for (local, data) in members {
            if let Some(v) = self.segments[s].state_mut(name, *local) {
                v.clone_from(data);
            }
        }
    }

    /// Re-initializes the optimizer state of every tensor in a group, exactly as
    /// [`crate::Optimizer::reset_state`] defines it (PyTorch: `optimizer.state.clear()`):
    /// state buffers back to their initial values, step counts to 0, host scalars to their
    /// initial values; configurations, group scalars and frozen flags are kept.
    pub fn reset_state(&mut self) {
        let all: Vec<usize> = (0..self.lens.len()).collect();
        self.reset_tensors(&all);
    }

    /// [`CpuOptimizer::reset_state`] for `tensors` (arena indices) alone.
    pub(crate) fn reset_tensors(&mut self, tensors: &[usize]) {
        for &i in tensors {
            if let Some(l) = self.book.loc[i] {
                self.segments[l.segment].reset(l.local);
            }
        }
        self.book.reset_tensors(tensors);
    }

    /// The host layout of the tensors (names, lengths, shapes, groups).
    pub(crate) fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The CPU reference of a mixed-precision step: `grads` are 16-bit patterns of
    /// `grad_type` (one slice per tensor), widened exactly to f32 with the `half` crate, and
    /// `master` holds the f32 master weights, updated as [`CpuOptimizer::step`] does. The
    /// 16-bit model copy is then [`crate::precision::to_bits16`] of the master weights (the
    /// GPU kernels write the same bits in the same pass). `grad_type` must be 16-bit.
    pub fn step_mixed<P: AsMut<[f32]>, G: AsRef<[u16]>>(
        &mut self,
        master: &mut [P],
        grads: &[G],
        grad_type: crate::precision::StorageType,
    ) -> Result<()> {
        if !grad_type.is_16() {
            return Err(Error::Unsupported("step_mixed takes 16-bit gradients"));
        }
        let wide: Vec<Vec<f32>> = grads
            .iter()
            .map(|g| crate::precision::from_bits16(grad_type, g.as_ref()))
            .collect();
        self.step(master, &wide)
    }

    /// One step over every tensor in a group (one slice per arena tensor, in arena order).
    /// Lengths are checked before anything changes.
    pub fn step<P: AsMut<[f32]>, G: AsRef<[f32]>>(
        &mut self,
        params: &mut [P],
        grads: &[G],
    ) -> Result<()> {
        check_shapes(
            &self.lens,
            params.iter_mut().map(|p| p.as_mut().len()),
            "params",
        )?;
        check_shapes(&self.lens, grads.iter().map(|g| g.as_ref().len()), "grads")?;
        self.book.check_train_mode()?;
        let mut g: Vec<&[f32]> = grads.iter().map(|g| g.as_ref()).collect();
        // The gradients the GPU's clipper and AMP guard read: those of the tensors that step
        // (clip_grad_norm_ never sees a frozen tensor's).
        let live: Vec<&[f32]> = (0..g.len())
            .filter(|&i| self.book.live(i))
            .map(|i| g[i])
            .collect();
        // The clipper's total norm of the gradients as given (scaled, under AMP), in f64 where
        // the GPU sums a fixed f32 tree: the two differ by a few ulp (an inf norm not at all).
        let clip = match self.clip {
            Some(c) => {
                let (_, mut total) = crate::norm::cpu_norms(&live, c.norm_type);
                // The GPU's f32 sum of squares overflows where the f64 one does not: its
                // norm is then infinite, and the coefficient 0.
                if c.norm_type == crate::NormType::L2 && ((total * total) as f32).is_infinite() {
                    total = f64::INFINITY;
                }
                if c.error_if_nonfinite && !total.is_finite() {
                    return Err(Error::NonFiniteNorm {
                        norm: total as f32,
                        norm_type: crate::norm::norm_type_name(c.norm_type),
                    });
                }
                self.last_norm = Some(total);
                Some((c.max_norm, total as f32))
            }
            None => None,
        };
        let coef = if let Some((cfg, st)) = &mut self.amp {
            // amp.wgsl's decision (the clip coefficient of the unscaled norm times 1 / scale).
            let h = AmpHyper::new(cfg, 0, clip.map(|(max_norm, _)| max_norm));
            let max_abs = crate::amp::max_abs_nan(live.iter().copied());
            let norm = clip.map_or(0.0, |(_, total)| total);
            let (coef, skip) = crate::amp::decide(&h, st, max_abs, norm);
            self.last_found = Some(st.found != 0);
            if skip {
                return Ok(());
            }
            Some(coef)
        } else {
            // norm.wgsl's norm_global: min(max_norm / (total + 1e-6), 1) in f32, keeping a NaN
            // as torch.clamp does.
            clip.map(|(max_norm, total)| {
                let c = max_norm as f32 / (total + 1e-6);
                if c.is_nan() {
                    c
                } else {
                    c.min(1.0)
                }
            })
        };
        if let Some(coef) = coef {
            // The kernels' `g * aux[0]` on every gradient.
            self.scaled.resize(g.len(), Vec::new());
            for (out, x) in self.scaled.iter_mut().zip(&g) {
                out.clear();
                out.extend(x.iter().map(|v| v * coef));
            }
            g = self.scaled.iter().map(|v| v.as_slice()).collect();
        }
        self.book.advance();
        let mut p: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut()).collect();
        for (s, seg) in self.segments.iter_mut().enumerate() {
            seg.step(&mut self.book, s, &mut p, &g);
        }
        self.book.lr_set.fill(false);
        Ok(())
    }

    /// Attaches (or detaches) loss scaling and the non-finite skip, as
    /// [`crate::Optimizer::set_amp`]; with clipping attached too
    /// ([`CpuOptimizer::set_grad_clip`]), the clip coefficient comes from the unscaled norm, as
    /// on the GPU. A skipped step returns `Ok` with nothing changed; [`CpuOptimizer::found_inf`]
    /// says so. On error nothing changes.
    pub fn set_amp(&mut self, amp: Option<AmpConfig>) -> Result<()> {
        if let Some(c) = &amp {
            c.validate()?;
        }
        self.amp = amp.map(|c| (c, AmpState::new(&c)));
        self.last_found = None;
        Ok(())
    }

    /// The attached AMP configuration.
    pub fn amp(&self) -> Option<&AmpConfig> {
        self.amp.as_ref().map(|(c, _)| c)
    }

    /// Whether the last step found a NaN or Inf gradient (PyTorch's `found_inf`; `None`
    /// without AMP or before the first step). By default
    /// ([`crate::amp::FoundInfCheck::Unscaled`]) that is an unscaled gradient (the gradient
    /// times `1 / scale`) that is NaN or infinite, so with a scale below 1 a huge finite
    /// gradient (2e38 at scale 0.5) is found and, with `skip_non_finite`, the step skipped.
    /// torch tests the scaled gradient instead, finds nothing there and steps with an
    /// infinite unscaled gradient; [`crate::amp::FoundInfCheck::Scaled`] does the same. As
    /// [`crate::Optimizer::found_inf`].
    pub fn found_inf(&self) -> Option<bool> {
        self.last_found
    }

    /// Attaches (or, with `None`, detaches) global-norm gradient clipping, the twin of
    /// [`crate::Optimizer::set_grad_clip`] with a [`crate::GradClipper`] of the same settings:
    /// every step takes the norm of the gradients of the tensors that step (frozen tensors
    /// and tensors in no group are left out, as `clip_grad_norm_` only sees tensors with a
    /// gradient) and multiplies every gradient by `min(max_norm / (norm + 1e-6), 1)` (f32, NaN
    /// kept) before the update; the gradient slices are not modified. With AMP attached the
    /// coefficient is that of the unscaled norm, times `1 / scale` (PyTorch:
    /// `scaler.unscale_` before `clip_grad_norm_`). The norm is summed in f64 (the GPU sums a
    /// fixed f32 tree), so an L2 clip matches the GPU to a few ulp, an inf-norm clip exactly;
    /// a sum of squares past f32's range makes the norm infinite, as the GPU's is.
    /// With `error_if_nonfinite`, a NaN or infinite norm makes `step` return
    /// [`Error::NonFiniteNorm`] with nothing changed (AMP state included). A `max_norm` that is
    /// not finite and > 0 is [`Error::InvalidHyperparameter`], and nothing changes.
    pub fn set_grad_clip(&mut self, clip: Option<ClipConfig>) -> Result<()> {
        if let Some(c) = &clip {
            c.validate()?;
        }
        self.clip = clip;
        self.last_norm = None;
        Ok(())
    }

    /// The attached clipping.
    pub fn grad_clip(&self) -> Option<&ClipConfig> {
        self.clip.as_ref()
    }

    /// The pre-clip total norm of the last step's gradients as given (scaled, under AMP),
    /// what `clip_grad_norm_` returns: `None` without clipping or before the first step.
    pub fn last_grad_norm(&self) -> Option<f64> {
        self.last_norm
    }

    /// The AMP state (scale, growth tracker, last found flag, skipped steps).
    pub fn amp_state(&self) -> Option<AmpState> {
        self.amp.map(|(_, st)| st)
    }

    pub(crate) fn set_amp_state(&mut self, st: crate::amp::AmpState) {
        if let Some((_, s)) = &mut self.amp {
            *s = st;
        }
    }

    /// Switches every group with train and eval modes (Schedule-Free) to train mode
    /// (`train = true`) or eval mode, as [`crate::Optimizer::set_train_mode`]: optimizers start
    /// in train mode, setting the current mode does nothing, `step()` is refused in eval mode.
    /// Lengths are checked before anything changes.
    pub fn set_train_mode<P: AsMut<[f32]>>(&mut self, train: bool, params: &mut [P]) -> Result<()> {
        check_shapes(
            &self.lens,
            params.iter_mut().map(|p| p.as_mut().len()),
            "params",
        )?;
        if !self.book.check_mode_swap(train)? {
            return Ok(());
        }
        let mut p: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut()).collect();
        for (s, seg) in self.segments.iter_mut().enumerate() {
            seg.swap(&self.book, s, &mut p, train);
        }
        self.book.train_mode = train;
        Ok(())
    }

    /// `set_train_mode(true, params)` (the package's `optimizer.train()`).
    pub fn train<P: AsMut<[f32]>>(&mut self, params: &mut [P]) -> Result<()> {
        self.set_train_mode(true, params)
    }

    /// `set_train_mode(false, params)` (the package's `optimizer.eval()`).
    pub fn eval<P: AsMut<[f32]>>(&mut self, params: &mut [P]) -> Result<()> {
        self.set_train_mode(false, params)
    }

    /// The learned learning rate of every parameter group, as
    /// [`crate::Optimizer::read_learned_lr`] (`None` when no group learns its lr).
    pub fn read_learned_lr(&self) -> Result<Option<Vec<f32>>> {
        let mut out: Vec<f32> = self
            .book
            .groups
            .iter()
            .map(|g| g.config.lr() as f32)
            .collect();
        let mut any = false;
        for (s, seg) in self.segments.iter().enumerate() {
            let Some(learned) = seg.learned() else {
                continue;
            };
            any = true;
            for (&g, &v) in self.book.segments[s].groups.iter().zip(learned) {
                if !self.book.lr_set[g] {
                    out[g] = v;
                }
            }
        }
        Ok(any.then_some(out))
    }

    /// Writes back learned learning rates, as [`crate::Optimizer::write_learned_lr`].
    pub fn write_learned_lr(&mut self, lrs: &[f32]) -> Result<()> {
        crate::optim::gpu::check_learned(&self.book, lrs)?;
        for (s, seg) in self.segments.iter_mut().enumerate() {
            let Some(learned) = seg.learned_mut() else {
                continue;
            };
            for (&g, v) in self.book.segments[s].groups.iter().zip(learned) {
                *v = lrs[g];
                self.book.lr_set[g] = false;
            }
        }
        Ok(())
    }

    /// State `state` of every tensor, in arena order (empty for tensors without it).
    pub fn read_state_all(&self, state: &str) -> Vec<Vec<f32>> {
        (0..self.lens.len())
            .map(|i| {
                self.book
                    .check_state(state, i)
                    .and_then(|_| self.read_tensor_state(state, i))
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// The host layout of `specs` (no binding limit on the CPU: the largest multiple of 16).
fn host_layout(specs: &[TensorSpec]) -> Result<ParamLayout> {
    ParamLayout::new(specs, !15, 16)
}

fn check_shapes(
    lens: &[usize],
    got: impl ExactSizeIterator<Item = usize>,
    what: &str,
) -> Result<()> {
    if got.len() != lens.len() {
        return Err(Error::LengthMismatch {
            what: format!("{what} (number of tensors)"),
            expected: lens.len(),
            got: got.len(),
        });
    }
    for (i, (n, &want)) in got.zip(lens).enumerate() {
        if n != want {
            return Err(Error::LengthMismatch {
                what: format!("{what}[{i}]"),
                expected: want,
                got: n,
            });
        }
    }
    Ok(())
}

impl crate::optim::face::Engine for CpuOptimizer {
    fn grow_segment_states(
        &mut self,
        seg: usize,
        states: &[crate::optim::rule::StateSpec],
    ) -> Result<()> {
        // The GPU engine grows only its chunked segments, on rules that do not learn their lr;
        // the twin refuses what it refuses, so the two stay interchangeable.
        let plan = &self.book.segments[seg];
        let kind = self.book.groups[plan.groups[0]].config.segment_kind();
        let learns = self.book.groups[plan.groups[0]].config.learns_lr();
        if kind != crate::optim::rule::SegmentKind::Chunked || learns {
            return Err(Error::Unsupported(
                "this segment's state buffers are fixed at construction (Muon, Adafactor, \
                 learned-lr rules): build the optimizer with the option on",
            ));
        }
        self.segments[seg].add_states(&plan.members, states);
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
        self.segments[loc.segment]
            .state(state, loc.local)
            .map(|s| s.to_vec())
            .ok_or_else(|| Error::UnknownState {
                name: state.to_string(),
                available: self.book.segment_states(loc.segment),
            })
    }
}
