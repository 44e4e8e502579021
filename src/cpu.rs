//! The CPU reference: the same [`Rule`]s, scalars, parameter groups and step bookkeeping as
//! the GPU path, applied tensor by tensor on host slices in the kernels' operation order. It is
//! the definition the GPU kernels are checked against, and is usable on its own (for example,
//! to train without a GPU). It knows nothing of the GPU.

use crate::arena::{ParamLayout, TensorSpec};
use crate::error::{Error, Result};
use crate::optim::{Book, HyperCtx, OptimizerConfig, ParamGroups, Rule, RuleVisitor};

/// What every CPU segment does, whatever its rule.
trait CpuSegment: std::fmt::Debug + Send + Sync {
    fn step(&mut self, book: &mut Book, seg: usize, params: &mut [&mut [f32]], grads: &[&[f32]]);
    /// The mode swap (`Rule::swap`) of every tensor of the segment that has stepped.
    fn swap(&mut self, book: &Book, seg: usize, params: &mut [&mut [f32]], to_train: bool);
    fn state(&self, name: &str, local: usize) -> Option<&[f32]>;
}

#[derive(Debug)]
struct Segment<R: Rule> {
    /// `state[slot][local tensor]`; unused slots hold no vectors.
    state: Vec<Vec<Vec<f32>>>,
    names: Vec<(&'static str, usize)>,
    /// Every arena tensor (the rules' `tensor_step_for` sees its shape).
    infos: Vec<crate::arena::TensorInfo>,
    _rule: std::marker::PhantomData<R>,
}

impl<R: Rule> CpuSegment for Segment<R> {
    fn step(&mut self, book: &mut Book, seg: usize, params: &mut [&mut [f32]], grads: &[&[f32]]) {
        let slots = self.state.len();
        // Once per step per group, before the tensors (the groups' host scalars advance here).
        let mut hypers = Vec::with_capacity(book.segments[seg].groups.len());
        for &g in &book.segments[seg].groups {
            hypers.push(match R::of(&book.groups[g].config) {
                Some(c) => c.group_step(HyperCtx::default(), &mut book.group_scalars[g]),
                None => bytemuck::Zeroable::zeroed(),
            });
        }
        for local in 0..book.segments[seg].members.len() {
            let i = book.segments[seg].members[local];
            if !book.live(i) {
                continue;
            }
            let Some(loc) = book.loc[i] else { continue };
            let group = &book.groups[loc.group];
            let Some(cfg) = R::of(&group.config) else {
                continue;
            };
            let h = &hypers[group.local];
            let range = crate::arena::ChunkRange::default();
            let ts = cfg.tensor_step_for(
                book.steps[i],
                group.local as u32,
                range,
                &mut book.scalars[i],
                &self.infos[i],
            );
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
}

struct BuildSegment<'a> {
    plan: &'a crate::optim::book::SegmentPlan,
    lens: &'a [usize],
    infos: &'a [crate::arena::TensorInfo],
}

impl RuleVisitor for BuildSegment<'_> {
    type Out = Box<dyn CpuSegment>;
    fn visit<R: Rule>(self, _configs: Vec<R>) -> Self::Out {
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
        for s in &self.plan.states {
            state[s.slot as usize] = self
                .plan
                .members
                .iter()
                .map(|&i| vec![s.init; self.lens[i]])
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
    lens: Vec<usize>,
    segments: Vec<Box<dyn CpuSegment>>,
}

impl CpuOptimizer {
    /// The one-rule shorthand over tensors shaped like `specs` (one group per arena group).
    pub fn new(config: impl Into<OptimizerConfig>, specs: &[TensorSpec]) -> Result<Self> {
        let layout = host_layout(specs)?;
        let groups = ParamGroups::per_arena_group(&layout, config);
        Self::build(&layout, &groups)
    }

    /// An optimizer over explicit parameter groups, as [`crate::Optimizer::with_groups`].
    pub fn with_groups(specs: &[TensorSpec], groups: ParamGroups) -> Result<Self> {
        let layout = host_layout(specs)?;
        Self::build(&layout, &groups)
    }

    fn build(layout: &ParamLayout, groups: &ParamGroups) -> Result<Self> {
        let book = Book::new(layout, groups)?;
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
            lens,
            segments,
        })
    }

    crate::optim::common_optimizer_methods!();

    fn read_state_impl(&self, state: &str, i: usize) -> Result<Vec<f32>> {
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
        self.book.advance();
        let mut p: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut()).collect();
        let g: Vec<&[f32]> = grads.iter().map(|g| g.as_ref()).collect();
        for (s, seg) in self.segments.iter_mut().enumerate() {
            seg.step(&mut self.book, s, &mut p, &g);
        }
        Ok(())
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

    /// State `state` of every tensor, in arena order (empty for tensors without it).
    pub fn read_state_all(&self, state: &str) -> Vec<Vec<f32>> {
        (0..self.lens.len())
            .map(|i| {
                self.book
                    .check_state(state, i)
                    .and_then(|_| self.read_state_impl(state, i))
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
