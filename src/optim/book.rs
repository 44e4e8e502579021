//! Host bookkeeping shared by the GPU and CPU optimizers: which tensor is in which parameter
//! group and segment, each group's configuration and base lr, per-tensor step counts and
//! frozen flags. Pure data; the engines read it when they build a step.

use std::collections::HashMap;

use crate::arena::ChunkRange;
use crate::arena::{ParamLayout, TensorInfo, MAX_GROUP};
use crate::error::{check_finite, Error, Result};
use std::sync::Arc;

use super::rule::{HyperCtx, Scalars, StateSpec};
use super::table::{OptimizerConfig, Row};

/// Which tensors a parameter group takes.
#[derive(Clone)]
pub enum Select {
    /// Every tensor of the arena.
    All,
    /// These tensors, by name (an unknown name is [`Error::UnknownTensor`]).
    Names(Vec<String>),
    /// The tensors whose [`crate::TensorSpec::group`] is this index.
    ArenaGroup(usize),
    /// The tensors for which the predicate holds (for example 2-D weights:
    /// `|t| t.shape.as_ref().is_some_and(|s| s.len() == 2)`).
    Matching(TensorFilter),
    /// Every tensor no other group selects (at most one group may use it).
    Rest,
}

impl std::fmt::Debug for Select {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Select::All => write!(f, "All"),
            Select::Names(n) => f.debug_tuple("Names").field(n).finish(),
            Select::ArenaGroup(g) => f.debug_tuple("ArenaGroup").field(g).finish(),
            Select::Matching(_) => write!(f, "Matching(..)"),
            Select::Rest => write!(f, "Rest"),
        }
    }
}

impl Select {
    /// [`Select::Names`] from anything string-like.
    pub fn names<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        Select::Names(names.into_iter().map(Into::into).collect())
    }

    /// [`Select::Matching`] from a closure.
    pub fn matching(f: impl Fn(&TensorInfo) -> bool + Send + Sync + 'static) -> Self {
        Select::Matching(std::sync::Arc::new(f))
    }

    /// Tensors with a 2-D shape (the hidden weight matrices that LARS, LAMB-style trust ratios
    /// or Muon are meant for).
    pub fn matrices() -> Self {
        Self::matching(|t| t.shape.as_ref().is_some_and(|s| s.len() == 2))
    }
}

/// The parameter groups of an optimizer, in order (PyTorch's `param_groups`): each a tensor
/// selection and a complete configuration. Groups of one algorithm family share a segment.
#[derive(Debug, Clone, Default)]
pub struct ParamGroups {
    groups: Vec<(Select, OptimizerConfig)>,
}

impl ParamGroups {
    /// No groups yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a group: `select`'s tensors, updated by `config`.
    pub fn group(mut self, select: Select, config: impl Into<OptimizerConfig>) -> Self {
        self.groups.push((select, config.into()));
        self
    }

    /// One group per arena group index (`TensorSpec::group`), each with a copy of `config`:
    /// the one-rule shorthand.
    pub fn per_arena_group(layout: &ParamLayout, config: impl Into<OptimizerConfig>) -> Self {
        let config = config.into();
        let mut g = Self::new();
        for i in 0..layout.groups() {
            g = g.group(Select::ArenaGroup(i), config.clone());
        }
        g
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// One parameter group at run time.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    /// Its current configuration.
    pub config: OptimizerConfig,
    /// The lr it was built with.
    pub base_lr: f64,
    /// Its segment.
    pub segment: usize,
    /// Its index among the segment's groups (the kernels' `group` field).
    pub local: usize,
}

/// Each group's initial host scalars.
fn out_groups_scalars(groups: &[Group]) -> Vec<Scalars> {
    groups
        .iter()
        .map(|g| g.config.init_group_scalars())
        .collect()
}

/// Where a tensor is optimized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    /// Parameter group.
    pub group: usize,
    /// Segment.
    pub segment: usize,
    /// Index among the segment's members.
    pub local: usize,
}

/// The groups of one segment and its tensors.
#[derive(Debug, Clone)]
pub(crate) struct SegmentPlan {
    /// Algorithm family.
    pub family: &'static str,
    /// Parameter groups, in group order (local index = position).
    pub groups: Vec<usize>,
    /// Arena tensor indices, ascending.
    pub members: Vec<usize>,
    /// Each member's group among the segment's groups.
    pub member_groups: Vec<u16>,
    /// The state buffers the segment allocates: the union of its groups' states, with each
    /// slot's initial value taken from the segment's first group (PyTorch seeds state from the
    /// constructor's defaults; e.g. Adagrad's `initial_accumulator_value`).
    pub states: Vec<StateSpec>,
}

/// Host bookkeeping of an optimizer (public only so that [`super::face::ParamGroupTable`] can
/// name it; its module is private, so no user can).
#[derive(Debug, Clone)]
pub struct Book {
    index: HashMap<String, usize>,
    /// The groups.
    pub(crate) groups: Vec<Group>,
    /// The segments.
    pub(crate) segments: Vec<SegmentPlan>,
    /// Per arena tensor: where it is optimized.
    pub(crate) loc: Vec<Option<Loc>>,
    /// Per arena tensor: steps taken.
    pub(crate) steps: Vec<u64>,
    /// Per arena tensor: frozen for the next steps.
    pub(crate) frozen: Vec<bool>,
    /// Per arena tensor: host-side scalar state (see `Rule::scalar_names`).
    pub(crate) scalars: Vec<Scalars>,
    /// Per parameter group: host-side scalar state (see `Rule::group_scalar_names`).
    pub(crate) group_scalars: Vec<Scalars>,
    /// Train mode (see `set_train_mode`); starts true.
    pub(crate) train_mode: bool,
    /// Per arena tensor: its name, length and shape (what state shapes depend on).
    pub(crate) infos: Vec<TensorInfo>,
    /// Per parameter group: its lr was set since its last step (true before the first step);
    /// the engines pass it to the rules ([`super::rule::HyperCtx::lr_set`]) and clear it.
    pub(crate) lr_set: Vec<bool>,
}

impl Book {
    /// This step's per-group hyperparameters of segment `seg`, in group order, into `out`
    /// (advancing each group's host scalars: `Rule::group_step`). `extra_flags` is
    /// `FLAG_GRAD_SCALE` when the kernels scale the gradients. Shared by every engine and
    /// segment type, so their tables agree.
    pub(crate) fn segment_hypers<R: Row>(
        &mut self,
        seg: usize,
        extra_flags: u32,
        out: &mut Vec<R::Hyper>,
    ) {
        out.clear();
        for &g in &self.segments[seg].groups {
            let ctx = HyperCtx {
                extra_flags,
                lr_set: self.lr_set[g],
            };
            // Every group of a segment is of the segment's family (checked on every change).
            out.push(match R::of(&self.groups[g].config) {
                Some(c) => c.group_step(ctx, &mut self.group_scalars[g]),
                None => bytemuck::Zeroable::zeroed(),
            });
        }
    }

    /// This step's table entry of member `local` of segment `seg` (advancing its host
    /// scalars: `Rule::tensor_step_for`), or `None` when it does not step (frozen, or in no
    /// group). `range` is its chunk range, `info` the tensor.
    pub(crate) fn member_step<R: Row>(
        &mut self,
        seg: usize,
        local: usize,
        range: ChunkRange,
        info: &TensorInfo,
    ) -> Option<R::TensorStep> {
        let i = self.segments[seg].members[local];
        let l = self.loc[i].filter(|_| self.live(i))?;
        let c = R::of(&self.groups[l.group].config)?;
        Some(c.tensor_step_for(
            self.steps[i],
            self.groups[l.group].local as u32,
            range,
            &mut self.scalars[i],
            info,
        ))
    }

    /// Resolves `groups` over `layout`: validates every configuration, assigns every selected
    /// tensor to exactly one group, and groups the groups into segments by family.
    pub(crate) fn new(layout: &ParamLayout, groups: &ParamGroups) -> Result<Self> {
        if groups.is_empty() {
            return Err(Error::InvalidConfig(
                "an optimizer needs at least one parameter group",
            ));
        }
        if groups.len() > MAX_GROUP + 1 {
            return Err(Error::LimitExceeded {
                what: "number of parameter groups".into(),
                value: groups.len() as u64,
                limit: MAX_GROUP as u64 + 1,
                why: "wgpu_optim::arena::MAX_GROUP",
            });
        }
        for (_, c) in &groups.groups {
            c.validate()?;
        }
        if groups
            .groups
            .iter()
            .filter(|(s, _)| matches!(s, Select::Rest))
            .count()
            > 1
        {
            return Err(Error::InvalidConfig(
                "at most one parameter group may select the rest",
            ));
        }
        let tensors = layout.tensors();
        let n = tensors.len();
        let mut owner: Vec<Option<usize>> = vec![None; n];
        let take = |owner: &mut Vec<Option<usize>>, i: usize, g: usize| -> Result<()> {
            match owner[i] {
                Some(first) if first != g => Err(Error::TensorInTwoGroups {
                    tensor: tensors[i].name.clone(),
                    first,
                    second: g,
                }),
                _ => {
                    owner[i] = Some(g);
                    Ok(())
                }
            }
        };
        for (g, (sel, _)) in groups.groups.iter().enumerate() {
            match sel {
                Select::All => (0..n).try_for_each(|i| take(&mut owner, i, g))?,
                Select::Names(names) => {
                    for name in names {
                        let i = layout.index_of(name)?;
                        take(&mut owner, i, g)?;
                    }
                }
                Select::ArenaGroup(a) => (0..n)
                    .filter(|&i| tensors[i].group == *a)
                    .try_for_each(|i| take(&mut owner, i, g))?,
                Select::Matching(f) => (0..n)
                    .filter(|&i| f(&tensors[i]))
                    .try_for_each(|i| take(&mut owner, i, g))?,
                Select::Rest => {}
            }
        }
        if let Some(g) = groups
            .groups
            .iter()
            .position(|(s, _)| matches!(s, Select::Rest))
        {
            for o in owner.iter_mut().filter(|o| o.is_none()) {
                *o = Some(g);
            }
        }
        for (i, o) in owner.iter().enumerate() {
            if let Some(g) = *o {
                groups.groups[g].1.check_tensor(&tensors[i])?;
            }
        }
        // Segments by family, in order of first appearance.
        let mut segments: Vec<SegmentPlan> = Vec::new();
        let mut out_groups = Vec::with_capacity(groups.len());
        for (_, c) in &groups.groups {
            let family = c.family();
            let s = match segments.iter().position(|s| s.family == family) {
                Some(s) => s,
                None => {
                    segments.push(SegmentPlan {
                        family,
                        groups: Vec::new(),
                        members: Vec::new(),
                        member_groups: Vec::new(),
                        states: Vec::new(),
                    });
                    segments.len() - 1
                }
            };
            if let Some(&first) = segments[s].groups.first() {
                c.check_peer(&groups.groups[first].1)?;
            }
            let g = out_groups.len();
            out_groups.push(Group {
                config: c.clone(),
                base_lr: c.lr(),
                segment: s,
                local: segments[s].groups.len(),
            });
            segments[s].groups.push(g);
            for st in c.states() {
                if !segments[s].states.iter().any(|x| x.slot == st.slot) {
                    segments[s].states.push(st);
                }
            }
        }
        for s in &mut segments {
            s.states.sort_by_key(|x| x.slot);
        }
        let mut loc = vec![None; n];
        for (i, o) in owner.iter().enumerate() {
            if let Some(g) = *o {
                let s = out_groups[g].segment;
                loc[i] = Some(Loc {
                    group: g,
                    segment: s,
                    local: segments[s].members.len(),
                });
                segments[s].members.push(i);
                // Fits: a segment has at most MAX_GROUP + 1 groups (checked above).
                segments[s].member_groups.push(out_groups[g].local as u16);
            }
        }
        Ok(Self {
            index: tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            segments,
            loc,
            infos: tensors.to_vec(),
            steps: vec![0; n],
            frozen: vec![false; n],
            scalars: Vec::new(),
            group_scalars: out_groups_scalars(&out_groups),
            lr_set: vec![true; out_groups.len()],
            groups: out_groups,
            train_mode: true,
        }
        .with_initial_scalars())
    }

    /// Arena index of a tensor.
    pub(crate) fn index_of(&self, name: &str) -> Result<usize> {
        self.index
            .get(name)
            .copied()
            .ok_or_else(|| Error::UnknownTensor(name.to_string()))
    }

    /// A group.
    pub(crate) fn group(&self, group: usize) -> Result<&Group> {
        self.groups.get(group).ok_or(Error::UnknownGroup {
            group,
            groups: self.groups.len(),
        })
    }

    /// Whether tensor `i` steps this time: in a group and not frozen.
    pub(crate) fn live(&self, i: usize) -> bool {
        self.loc[i].is_some() && !self.frozen[i]
    }

    /// Advances the step count of every live tensor (call once per step, after every check).
    pub(crate) fn advance(&mut self) {
        for i in 0..self.steps.len() {
            if self.live(i) {
                self.steps[i] += 1;
            }
        }
    }

    /// The state buffers `config` keeps that group `group`'s segment has not allocated (what
    /// an engine must add before the group can take `config`), after the checks
    /// `set_group_config` makes of the configuration itself.
    pub(crate) fn missing_states(
        &self,
        group: usize,
        config: &OptimizerConfig,
    ) -> Result<Vec<StateSpec>> {
        let g = self.group(group)?;
        if g.config.family() != config.family() {
            return Err(Error::RuleMismatch {
                group,
                expected: g.config.family(),
                got: config.family(),
            });
        }
        config.validate()?;
        config.check_peer(&g.config)?;
        let have = self.segment_states(g.segment);
        Ok(config
            .states()
            .into_iter()
            .filter(|s| !have.contains(&s.name))
            .collect())
    }

    /// Records state buffers an engine added to segment `seg` (see `missing_states`).
    pub(crate) fn add_segment_states(&mut self, seg: usize, states: &[StateSpec]) {
        self.segments[seg].states.extend_from_slice(states);
    }

    pub(crate) fn set_group_config(
        &mut self,
        group: usize,
        config: OptimizerConfig,
        allowed_states: &[&'static str],
    ) -> Result<()> {
        // The family, value and peer checks are `missing_states`'s; what it reports missing
        // must be none here (an engine adds them first: see `face::replace_config`).
        self.missing_states(group, &config)?;
        if config
            .states()
            .iter()
            .any(|s| !allowed_states.contains(&s.name))
        {
            return Err(Error::Unsupported(
                "the new configuration keeps a state buffer its segment did not allocate \
                 (build the optimizer with that option on in one of the segment's groups)",
            ));
        }
        let g = &mut self.groups[group];
        g.base_lr = config.lr();
        g.config = config;
        self.lr_set[group] = true;
        Ok(())
    }

    // The lr setters take any finite value, negative included, as PyTorch's
    // `param_groups[g]["lr"] = x` does: schedules end on their own rounding (LinearLR to 0 gives
    // -1.4e-18) or go below zero by design (OneCycleLR's linear anneal at `total_steps`), and a
    // training loop must not abort there. Constructors and `set_group_config` still validate
    // what a user passes.
    pub(crate) fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        check_finite("lr", lr)?;
        let groups = self.groups.len();
        self.groups
            .get_mut(group)
            .ok_or(Error::UnknownGroup { group, groups })?
            .config
            .set_lr(lr);
        self.lr_set[group] = true;
        Ok(())
    }

    pub(crate) fn set_lr(&mut self, lr: f64) -> Result<()> {
        check_finite("lr", lr)?;
        for g in &mut self.groups {
            g.config.set_lr(lr);
        }
        self.lr_set.fill(true);
        Ok(())
    }

    pub(crate) fn set_lr_factor(&mut self, factor: f64) -> Result<()> {
        check_finite("lr factor", factor)?;
        // Checked for every group before any changes.
        for g in &self.groups {
            check_finite("lr", g.base_lr * factor)?;
        }
        for g in &mut self.groups {
            let lr = g.base_lr * factor;
            g.config.set_lr(lr);
        }
        self.lr_set.fill(true);
        Ok(())
    }

    /// The states PyTorch keeps for tensor `i` (its group's configuration's).
    pub(crate) fn tensor_states(&self, i: usize) -> Vec<StateSpec> {
        match self.loc[i] {
            Some(l) => {
                let c = &self.groups[l.group].config;
                let mut states = c.states();
                states.retain(|s| c.state_shape(s.name, &self.infos[i]).is_some());
                states
            }
            None => Vec::new(),
        }
    }

    /// The shape of state buffer `state` of tensor `i` (`None`: it keeps no such buffer).
    pub(crate) fn state_shape(&self, i: usize, state: &str) -> Option<Vec<usize>> {
        let l = self.loc[i]?;
        self.groups[l.group]
            .config
            .state_shape(state, &self.infos[i])
    }

    /// Elements of state buffer `state` of tensor `i` (0: it keeps no such buffer).
    pub(crate) fn state_len(&self, i: usize, state: &str) -> usize {
        self.state_shape(i, state)
            .map_or(0, |s| s.iter().product::<usize>())
    }

    /// The host-side scalar states PyTorch keeps for tensor `i`.
    pub(crate) fn tensor_scalars(&self, i: usize) -> &'static [&'static str] {
        match self.loc[i] {
            Some(l) => self.groups[l.group].config.scalar_names(),
            None => &[],
        }
    }

    /// Every state name of tensor `i`: buffers, then host scalars.
    pub(crate) fn tensor_state_names(&self, i: usize) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.tensor_states(i).iter().map(|s| s.name).collect();
        names.extend(self.tensor_scalars(i));
        names
    }

    /// `Ok` when tensor `i` keeps state `state` (a buffer or a host scalar).
    pub(crate) fn check_state(&self, state: &str, i: usize) -> Result<()> {
        let names = self.tensor_state_names(i);
        if names.contains(&state) {
            Ok(())
        } else {
            Err(Error::UnknownState {
                name: state.to_string(),
                available: names,
            })
        }
    }

    /// Slot of host scalar `state` of tensor `i`, if it is one.
    pub(crate) fn scalar_slot(&self, state: &str, i: usize) -> Option<usize> {
        self.tensor_scalars(i).iter().position(|&n| n == state)
    }

    /// Union of every segment's state buffer names, in slot order, without repeats (host
    /// scalar states are not buffers and are not listed).
    pub(crate) fn all_state_names(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for s in &self.segments {
            for st in &s.states {
                if !out.contains(&st.name) {
                    out.push(st.name);
                }
            }
        }
        out
    }

    /// Whether some group has train and eval modes (Schedule-Free).
    pub(crate) fn has_modes(&self) -> bool {
        self.groups.iter().any(|g| g.config.has_train_mode())
    }

    /// `step()` refuses while a group with modes is in eval mode (as the package raises).
    pub(crate) fn check_train_mode(&self) -> Result<()> {
        if !self.train_mode && self.has_modes() {
            return Err(Error::Unsupported(
                "the optimizer is in eval mode (a Schedule-Free group holds x, not y): call \
                 train() before step()",
            ));
        }
        Ok(())
    }

    /// Checks a mode swap to train (`to_train`) or eval mode for every group; `Ok(false)` when
    /// the optimizer is already in that mode (nothing to do).
    pub(crate) fn check_mode_swap(&self, to_train: bool) -> Result<bool> {
        if self.train_mode == to_train {
            return Ok(false);
        }
        for g in &self.groups {
            g.config.check_mode_swap(to_train)?;
        }
        Ok(true)
    }

    /// Seeds every tensor's host scalars from its group's configuration.
    fn with_initial_scalars(mut self) -> Self {
        self.scalars = self
            .loc
            .iter()
            .map(|l| match l {
                Some(l) => self.groups[l.group].config.init_scalars(),
                None => [0.0; super::rule::MAX_SCALARS],
            })
            .collect();
        self
    }

    /// The state names segment `s` allocates.
    pub(crate) fn segment_states(&self, s: usize) -> Vec<&'static str> {
        self.segments[s].states.iter().map(|x| x.name).collect()
    }

    /// Forgets the per-tensor state PyTorch keeps in `optimizer.state` for `tensors` (arena
    /// indices): step counts back to 0 and host scalars back to their group's initial values,
    /// as a fresh `state` dict would have them. The engines reset the state buffers
    /// themselves. Groups' scalars (PyTorch `param_groups` entries) and frozen flags are kept.
    pub(crate) fn reset_tensors(&mut self, tensors: &[usize]) {
        for &i in tensors {
            if let Some(l) = self.loc[i] {
                self.steps[i] = 0;
                self.scalars[i] = self.groups[l.group].config.init_scalars();
            }
        }
    }

    /// Names of the groups' configurations, joined by `+` where they differ.
    pub(crate) fn name(&self) -> String {
        let mut names: Vec<&'static str> = Vec::new();
        for g in &self.groups {
            if !names.contains(&g.config.name()) {
                names.push(g.config.name());
            }
        }
        names.join("+")
    }
}

/// The tensors (arena indices, ascending) `select` picks from `layout`, for features that wrap
/// a selection of an optimizer's tensors (Lookahead). [`Select::Rest`] means nothing outside
/// a list of groups, so it is refused ([`Error::InvalidConfig`]); an unknown name is
/// [`Error::UnknownTensor`].
pub(crate) fn select_tensors(layout: &ParamLayout, select: &Select) -> Result<Vec<usize>> {
    let tensors = layout.tensors();
    let n = tensors.len();
    Ok(match select {
        Select::All => (0..n).collect(),
        Select::Names(names) => {
            let mut out = names
                .iter()
                .map(|name| layout.index_of(name))
                .collect::<Result<Vec<_>>>()?;
            out.sort_unstable();
            out.dedup();
            out
        }
        Select::ArenaGroup(a) => (0..n).filter(|&i| tensors[i].group == *a).collect(),
        Select::Matching(f) => (0..n).filter(|&i| f(&tensors[i])).collect(),
        Select::Rest => {
            return Err(Error::InvalidConfig(
                "Select::Rest means the tensors no parameter group takes; select them explicitly",
            ))
        }
    })
}

/// The host bookkeeping a skipped step takes back (reused, so a step allocates nothing).
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub(crate) steps: Vec<u64>,
    pub(crate) scalars: Vec<Scalars>,
    pub(crate) group_scalars: Vec<Scalars>,
}

impl Snapshot {
    pub(crate) fn take(&mut self, book: &Book) {
        self.steps.clone_from(&book.steps);
        self.scalars.clone_from(&book.scalars);
        self.group_scalars.clone_from(&book.group_scalars);
    }

    pub(crate) fn restore(&self, book: &mut Book) {
        book.steps.clone_from(&self.steps);
        book.scalars.clone_from(&self.scalars);
        book.group_scalars.clone_from(&self.group_scalars);
    }
}

/// A predicate over tensors, for [`Select::matching`].
pub type TensorFilter = Arc<dyn Fn(&TensorInfo) -> bool + Send + Sync>;

// Muon's builder lives beside `ParamGroups`, which it returns (the rule file stays a leaf).
impl super::muon::MuonConfig {
    /// Muon on every 2-D tensor ([`Select::matrices`]) and `adamw` on every other tensor
    /// ([`Select::Rest`]): two parameter groups, two segments of one step. (Muon is meant for
    /// hidden weight matrices; to keep embeddings or a classifier head under AdamW, name the
    /// matrices with [`Select::names`] in a `ParamGroups` of your own instead.)
    pub fn with_adamw(self, adamw: super::adam::AdamConfig) -> ParamGroups {
        ParamGroups::new()
            .group(Select::matrices(), self)
            .group(Select::Rest, adamw)
    }
}
