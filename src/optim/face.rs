//! One face for both engines: [`ParamGroupTable`], PyTorch's `optimizer.param_groups` and
//! `optimizer.state`, implemented by the GPU [`crate::Optimizer`] and the [`crate::CpuOptimizer`]
//! over their shared bookkeeping (a Lookahead shows its inner optimizer's: `inner()`).
//! Schedules drive its [`Scheduled`] half; checkpoints and tests read state through it; so the
//! group, freezing, step-count and state methods are written once.

mod sealed {
    use crate::optim::book::Book;

    /// What an engine hands its face: its bookkeeping and its state storage. Public in a
    /// private module, so only the library's engines implement it (and so
    /// [`super::ParamGroupTable`]), and no user can call it.
    pub trait Engine {
        fn book(&self) -> &Book;
        fn book_mut(&mut self) -> &mut Book;
        /// One tensor's state buffer `state` (tensor index `i`, checked by the caller), from
        /// the engine's storage.
        fn read_tensor_state(&self, state: &str, i: usize) -> crate::Result<Vec<f32>>;
        /// Allocates state buffers segment `seg` did not have (each element at its spec's
        /// initial value), for a group whose new configuration keeps them. Nothing changes on
        /// error.
        fn grow_segment_states(
            &mut self,
            seg: usize,
            states: &[crate::optim::rule::StateSpec],
        ) -> crate::Result<()>;
    }
}

/// Replaces group `group`'s configuration, first allocating any state buffer the new one
/// keeps that its segment lacks (an SGD group built with momentum 0 that a schedule or the
/// user gives a momentum: its `momentum_buffer` starts at zero, so with dampening 0 the first
/// step that uses it stores the gradient, as PyTorch's lazily created buffer does). Nothing
/// changes on error.
fn replace_config<T: Engine + ?Sized>(
    eng: &mut T,
    group: usize,
    config: crate::OptimizerConfig,
) -> crate::Result<()> {
    let missing = eng.book().missing_states(group, &config)?;
    let seg = eng.book().group(group)?.segment;
    if !missing.is_empty() {
        eng.grow_segment_states(seg, &missing)?;
        eng.book_mut().add_segment_states(seg, &missing);
    }
    let allowed = eng.book().segment_states(seg);
    eng.book_mut().set_group_config(group, config, &allowed)
}
pub(crate) use sealed::Engine;

/// What a schedule drives: parameter groups with a base lr, a live lr and, for the cycling
/// schedules, a momentum or β1. Implemented by both engines ([`crate::Optimizer`],
/// [`crate::CpuOptimizer`]) and by [`crate::HostGroups`]; the lr half of their
/// [`ParamGroupTable`] face.
pub trait Scheduled {
    /// Number of parameter groups.
    fn groups(&self) -> usize;
    /// The group's base lr (PyTorch's `initial_lr`, what schedules scale).
    fn base_lr(&self, group: usize) -> crate::Result<f64>;
    /// The group's current lr.
    fn group_lr(&self, group: usize) -> crate::Result<f64>;
    /// Sets the group's current lr (its base lr is kept): any finite value, negative included,
    /// as PyTorch's `param_groups[g]["lr"] = lr`. A group that learns its lr (hypergradient
    /// descent) restarts its learned lr from `lr` at its next step.
    fn set_group_lr(&mut self, group: usize, lr: f64) -> crate::Result<()>;
    /// The group's momentum or β1 (`None`: it has neither).
    fn group_momentum(&self, group: usize) -> crate::Result<Option<f64>>;
    /// Sets the group's momentum or β1 (its lr and base lr are kept).
    fn set_group_momentum(&mut self, group: usize, value: f64) -> crate::Result<()>;
}

/// The error of a group that has neither momentum nor β1.
pub(crate) fn no_momentum(group: usize) -> crate::Error {
    crate::Error::InvalidSchedule {
        schedule: "set_group_momentum",
        reason: format!("parameter group {group} has neither momentum nor betas"),
    }
}

/// `Scheduled` for both engines, over their bookkeeping.
impl<T: Engine> Scheduled for T {
    fn groups(&self) -> usize {
        self.book().groups.len()
    }
    fn base_lr(&self, group: usize) -> crate::Result<f64> {
        Ok(self.book().group(group)?.base_lr)
    }
    fn group_lr(&self, group: usize) -> crate::Result<f64> {
        Ok(self.book().group(group)?.config.lr())
    }
    fn set_group_lr(&mut self, group: usize, lr: f64) -> crate::Result<()> {
        self.book_mut().set_group_lr(group, lr)
    }
    fn group_momentum(&self, group: usize) -> crate::Result<Option<f64>> {
        Ok(self.book().group(group)?.config.momentum().map(|(_, m)| m))
    }
    fn set_group_momentum(&mut self, group: usize, value: f64) -> crate::Result<()> {
        let g = self.book().group(group)?;
        let lr = g.config.lr();
        // `set_group_config` makes the config's lr the group's base lr too: give it the
        // base lr, then put the live lr back, so both survive the momentum change.
        let mut cfg = g.config.clone().with_lr(g.base_lr);
        if !cfg.set_momentum(value) {
            return Err(no_momentum(group));
        }
        replace_config(self, group, cfg)?;
        self.book_mut().set_group_lr(group, lr)
    }
}

/// The parameter groups and per-tensor state of an optimizer, as PyTorch's `param_groups` and
/// `state`: the same methods, names and argument types on the GPU [`crate::Optimizer`] and the
/// [`crate::CpuOptimizer`] (a Lookahead's are its inner optimizer's: `inner()`,
/// `inner_mut()`). The lr methods (`groups`, `group_lr`, `set_group_lr`, `base_lr`) are its
/// [`Scheduled`] half: bring both into scope (`use wgpu_optim::{ParamGroupTable, Scheduled};`).
/// Sealed: the library's engines implement it.
pub trait ParamGroupTable: Scheduled + Engine {
    /// The configuration of group `group` (its current lr included).
    fn group_config(&self, group: usize) -> crate::Result<&crate::OptimizerConfig> {
        Ok(&self.book().group(group)?.config)
    }

    /// Replaces group `group`'s configuration with one of the same algorithm family. A state
    /// buffer the new configuration keeps that the group's segment did not allocate (an SGD or
    /// RMSprop group built with momentum 0, given a momentum) is allocated now, at its initial
    /// value, on the chunked segments (Muon's and Adafactor's segments are fixed at
    /// construction: [`crate::Error::Unsupported`]). The new configuration's lr becomes the
    /// group's base lr too. Nothing changes on error.
    fn set_group_config(
        &mut self,
        group: usize,
        config: impl Into<crate::OptimizerConfig>,
    ) -> crate::Result<()>
    where
        Self: Sized,
    {
        replace_config(self, group, config.into())
    }

    /// Sets every group's learning rate to `lr`.
    fn set_lr(&mut self, lr: f64) -> crate::Result<()> {
        self.book_mut().set_lr(lr)
    }

    /// Sets every group's learning rate to its base lr times `factor` (what a
    /// multiplicative schedule does).
    fn set_lr_factor(&mut self, factor: f64) -> crate::Result<()> {
        self.book_mut().set_lr_factor(factor)
    }

    /// The parameter group of a tensor (`None`: the tensor is in no group and never
    /// updated).
    fn group_of(&self, tensor: &str) -> crate::Result<Option<usize>> {
        let i = self.book().index_of(tensor)?;
        Ok(self.book().loc[i].map(|l| l.group))
    }

    /// Freezes (PyTorch: `grad = None`) or unfreezes a tensor for the following steps. A
    /// frozen tensor's params, state and step count are left exactly as they are, and
    /// an attached clipper leaves its gradient out of the norm.
    fn set_frozen(&mut self, tensor: &str, frozen: bool) -> crate::Result<()> {
        let i = self.book().index_of(tensor)?;
        self.book_mut().frozen[i] = frozen;
        Ok(())
    }

    /// Whether a tensor is frozen.
    fn is_frozen(&self, tensor: &str) -> crate::Result<bool> {
        Ok(self.book().frozen[self.book().index_of(tensor)?])
    }

    /// Steps this tensor has taken (PyTorch `state["step"]`).
    fn step_count(&self, tensor: &str) -> crate::Result<u64> {
        Ok(self.book().steps[self.book().index_of(tensor)?])
    }

    /// Every state name any segment keeps, under PyTorch's names, in slot order.
    fn state_names(&self) -> Vec<&'static str> {
        self.book().all_state_names()
    }

    /// The state names PyTorch keeps for this tensor (its group's configuration's).
    fn tensor_state_names(&self, tensor: &str) -> crate::Result<Vec<&'static str>> {
        let i = self.book().index_of(tensor)?;
        Ok(self.book().tensor_state_names(i))
    }

    /// One tensor's state buffer `state`, read back to the host. A tensor whose group's
    /// configuration keeps no such state (or that is in no group) is
    /// [`crate::Error::UnknownState`].
    fn read_state(&self, state: &str, tensor: &str) -> crate::Result<Vec<f32>> {
        let i = self.book().index_of(tensor)?;
        self.book().check_state(state, i)?;
        if let Some(slot) = self.book().scalar_slot(state, i) {
            // A host scalar (PyTorch keeps it as a one-element tensor).
            return Ok(vec![self.book().scalars[i][slot] as f32]);
        }
        self.read_tensor_state(state, i)
    }

    /// Group `group`'s host-side scalar state `state` (Schedule-Free's `k`, `lr_max`,
    /// `weight_sum`, `scheduled_lr`; see `OptimizerConfig::group_scalar_names`).
    fn group_state(&self, group: usize, state: &str) -> crate::Result<f64> {
        let g = self.book().group(group)?;
        let names = g.config.group_scalar_names();
        match names.iter().position(|&n| n == state) {
            Some(slot) => Ok(self.book().group_scalars[group][slot]),
            None => Err(crate::Error::UnknownState {
                name: state.to_string(),
                available: names.to_vec(),
            }),
        }
    }

    /// Whether the optimizer is in train mode (see `set_train_mode`). Optimizers start in
    /// train mode; only groups with modes (Schedule-Free) care.
    fn is_train_mode(&self) -> bool {
        self.book().train_mode
    }

    /// Short name of the optimizer: its groups' configuration names, joined by `+` when
    /// they differ (`"lars+adamw"`).
    fn name(&self) -> String {
        self.book().name()
    }
}

impl<T: Engine> ParamGroupTable for T {}
