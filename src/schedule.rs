//! Learning-rate schedules: every `torch.optim.lr_scheduler` class of PyTorch 2.15 as a
//! host-side type that drives any optimizer of the library (the GPU [`Optimizer`], the
//! [`CpuOptimizer`], or a plain [`HostGroups`] record), per parameter group.
//!
//! A schedule does what PyTorch's `scheduler.step()` (no epoch argument) does, in f64, with
//! the same operations in the same order: the *recursive* (chainable) forms, which multiply the
//! group's live lr, where PyTorch uses them (so CosineAnnealingLR past `T_max` climbs back
//! towards the base lr as PyTorch's does), the closed forms where PyTorch restarts a schedule
//! (SequentialLR at its milestones). Each group's base lr is the optimizer's
//! [`Scheduled::base_lr`] (PyTorch's `initial_lr`); CyclicLR and OneCycleLR take theirs from
//! their own arguments, as PyTorch does.
//!
//! Constructing a schedule performs PyTorch's initial step (epoch 0): `LinearLR` sets
//! `lr = base · start_factor` at once. Then call [`LrSchedule::step`] once after every
//! optimizer step. A schedule changes the lr (and the momentum or β1 where it cycles them)
//! through the optimizer's setters, which only rewrite the per-group table of the next step:
//! nothing is recompiled, reallocated or read back from the GPU.
//!
//! Errors: a parameter PyTorch rejects (a `ValueError` in its constructor) is
//! [`Error::InvalidSchedule`] at construction; so is one that makes PyTorch divide by zero on
//! the first step (a `step_size` or `T_max` of 0). What PyTorch only rejects later (OneCycleLR
//! stepped past `total_steps`, ConstantLR with factor 0 reaching `total_iters`) fails that
//! `step()`. Optimizers take any finite lr a schedule sets, negative ones included, as
//! PyTorch's groups do (LinearLR decaying to 0 ends at -1.4e-18 by rounding; OneCycleLR's
//! linear anneal goes below 0 at its last step); a NaN or infinite value (from a closure) is a
//! typed error. ChainedScheduler composes its children on a host copy of the groups and writes
//! each group once. On any error nothing changes: the schedule keeps its position and every
//! group keeps its lr and momentum.
//!
//! Saving a schedule's position: [`LrSchedule::state`] / [`LrSchedule::load_state`] (and
//! [`ReduceLROnPlateau::state`]) give plain data. Closures (LambdaLR, MultiplicativeLR) are
//! not part of it, as PyTorch's `state_dict` does not save plain functions: rebuild the
//! schedule with the same closures, then load its state.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::optim::table::OptimizerConfig;

// ---------------------------------------------------------------------------------------------
// Momentum and β1 of a configuration.

pub use crate::optim::rule::MomentumKind;

/// The momentum (or β1) of a configuration, and which of the two it is; `None` for the
/// families with neither, which PyTorch's cycling schedules reject.
pub fn config_momentum(config: &OptimizerConfig) -> Option<(MomentumKind, f64)> {
    config.momentum()
}

/// Sets the momentum (or β1) of a configuration (unchecked: the optimizer's setter validates
/// it); false, and no change, for a family with neither.
pub fn set_config_momentum(config: &mut OptimizerConfig, value: f64) -> bool {
    config.set_momentum(value)
}

// ---------------------------------------------------------------------------------------------
// What a schedule drives.

use crate::optim::face::no_momentum;
pub use crate::optim::face::Scheduled;

/// Parameter groups as plain numbers, with no optimizer behind them (PyTorch's
/// `param_groups` dicts): to preview a schedule's curve, or to drive a training loop of your
/// own. Any lr is accepted, negative ones included.
#[derive(Debug, Clone, PartialEq)]
pub struct HostGroups {
    base_lr: Vec<f64>,
    lr: Vec<f64>,
    momentum: Vec<Option<f64>>,
}

impl HostGroups {
    /// Groups with these base lrs (the live lrs start equal to them), without momentum.
    pub fn new(base_lrs: &[f64]) -> Self {
        Self {
            base_lr: base_lrs.to_vec(),
            lr: base_lrs.to_vec(),
            momentum: vec![None; base_lrs.len()],
        }
    }

    /// The same groups, each with this momentum (or β1).
    pub fn with_momentum(mut self, momentum: f64) -> Self {
        self.momentum.fill(Some(momentum));
        self
    }

    /// Every group's current lr.
    pub fn lrs(&self) -> &[f64] {
        &self.lr
    }

    fn check(&self, group: usize) -> Result<()> {
        if group < self.lr.len() {
            Ok(())
        } else {
            Err(Error::UnknownGroup {
                group,
                groups: self.lr.len(),
            })
        }
    }
}

impl Scheduled for HostGroups {
    fn groups(&self) -> usize {
        self.lr.len()
    }
    fn base_lr(&self, group: usize) -> Result<f64> {
        self.check(group)?;
        Ok(self.base_lr[group])
    }
    fn group_lr(&self, group: usize) -> Result<f64> {
        self.check(group)?;
        Ok(self.lr[group])
    }
    fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        self.check(group)?;
        self.lr[group] = lr;
        Ok(())
    }
    fn group_momentum(&self, group: usize) -> Result<Option<f64>> {
        self.check(group)?;
        Ok(self.momentum[group])
    }
    fn set_group_momentum(&mut self, group: usize, value: f64) -> Result<()> {
        self.check(group)?;
        match &mut self.momentum[group] {
            Some(m) => {
                *m = value;
                Ok(())
            }
            None => Err(no_momentum(group)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared pieces.

/// One value for every group, or one per group (PyTorch accepts a float or a list whose length
/// is the number of groups).
#[derive(Debug, Clone, PartialEq)]
pub enum PerGroup {
    /// The same value for every group.
    All(f64),
    /// One value per group, in group order.
    Each(Vec<f64>),
}

impl From<f64> for PerGroup {
    fn from(v: f64) -> Self {
        PerGroup::All(v)
    }
}

impl From<Vec<f64>> for PerGroup {
    fn from(v: Vec<f64>) -> Self {
        PerGroup::Each(v)
    }
}

impl From<&[f64]> for PerGroup {
    fn from(v: &[f64]) -> Self {
        PerGroup::Each(v.to_vec())
    }
}

impl PerGroup {
    /// The values for `groups` groups (PyTorch's `_format_param`).
    fn resolve(&self, schedule: &'static str, what: &str, groups: usize) -> Result<Vec<f64>> {
        let v = match self {
            PerGroup::All(x) => vec![*x; groups],
            PerGroup::Each(v) if v.len() == groups => v.clone(),
            PerGroup::Each(v) => {
                return Err(invalid(
                    schedule,
                    format!("expected {groups} values for {what}, got {}", v.len()),
                ))
            }
        };
        for &x in &v {
            finite(schedule, what, x)?;
        }
        Ok(v)
    }
}

fn invalid(schedule: &'static str, reason: String) -> Error {
    Error::InvalidSchedule { schedule, reason }
}

fn finite(schedule: &'static str, what: &str, x: f64) -> Result<()> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(invalid(schedule, format!("{what} = {x} must be finite")))
    }
}

/// A schedule's position, as plain data for a checkpoint. Fields a schedule does not use stay
/// at their defaults. Closures (LambdaLR, MultiplicativeLR) are not included: rebuild those
/// schedules with the same closures before loading.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScheduleState {
    /// PyTorch's `last_epoch` (-1 for a sub-schedule of SequentialLR that has not started).
    pub last_epoch: i64,
    /// The base lr of each group (PyTorch's `base_lrs`).
    pub base_lrs: Vec<f64>,
    /// The lr of each group after the last step (PyTorch's `_last_lr`).
    pub last_lr: Vec<f64>,
    /// CosineAnnealingWarmRestarts: the current cycle length `T_i`.
    pub t_i: u64,
    /// CosineAnnealingWarmRestarts: epochs since the last restart, `T_cur`.
    pub t_cur: u64,
    /// SequentialLR and ChainedScheduler: the sub-schedules' states, in order.
    pub children: Vec<ScheduleState>,
}

/// A learning-rate schedule (every `torch.optim.lr_scheduler` class but ReduceLROnPlateau,
/// which needs a metric: [`ReduceLROnPlateau::step`]).
///
/// Object safe, so [`SequentialLR`] and [`ChainedScheduler`] take `Box<dyn LrSchedule>`.
/// Drive a schedule with the optimizer it was built on.
pub trait LrSchedule: Send {
    /// PyTorch's class name (`"CosineAnnealingLR"`).
    fn name(&self) -> &'static str;
    /// One `scheduler.step()`: call it after each optimizer step. Sets every group's lr (and
    /// momentum or β1 where the schedule cycles it) for the next optimizer step.
    fn step(&mut self, opt: &mut dyn Scheduled) -> Result<()>;
    /// The lr of each group after the last step (PyTorch's `get_last_lr()`).
    fn last_lr(&self) -> &[f64];
    /// Steps taken since construction (PyTorch's `last_epoch`; 0 right after construction).
    fn last_epoch(&self) -> i64;
    /// Number of parameter groups the schedule was built for.
    fn groups(&self) -> usize;
    /// The schedule's position (see [`ScheduleState`]).
    fn state(&self) -> ScheduleState;
    /// Restores a position from [`LrSchedule::state`] of a schedule built the same way; the
    /// optimizer's lrs are not touched (restore them with the optimizer). Nothing changes on
    /// error.
    fn load_state(&mut self, state: &ScheduleState) -> Result<()>;
    /// PyTorch's `step(0)`, which SequentialLR uses to start a schedule at its milestone:
    /// epoch 0 through the closed form where the schedule has one (from its base lrs), else
    /// through its recursive rule at epoch 0.
    fn restart(&mut self, opt: &mut dyn Scheduled) -> Result<()>;
    /// Moves the schedule one epoch back without touching any lr (what SequentialLR's
    /// constructor does to its sub-schedules, recursively).
    fn undo(&mut self);
    /// PyTorch's `_initial_step()`, which construction performs and SequentialLR's
    /// constructor re-runs on its first schedule (default: [`LrSchedule::step`], as for the
    /// wrappers).
    fn initial_step(&mut self, opt: &mut dyn Scheduled) -> Result<()> {
        self.step(opt)
    }
    /// Whether this schedule wraps others (SequentialLR, ChainedScheduler), which PyTorch
    /// cannot restart at a milestone.
    fn is_wrapper(&self) -> bool {
        false
    }
}

/// What a step passes a formula besides the epoch: the cycle state of
/// CosineAnnealingWarmRestarts, and whether this is PyTorch's `_initial_step`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Aux {
    t_i: u64,
    t_cur: u64,
    /// PyTorch's `_is_initial`: true only in the step a constructor performs (and the one
    /// SequentialLR re-runs on its first schedule). ExponentialLR, PolynomialLR,
    /// CosineAnnealingLR and MultiplicativeLR leave the lr alone then; at epoch 0 outside it
    /// (a MultiplicativeLR restarted by SequentialLR, a child of a ChainedScheduler that
    /// SequentialLR starts), they apply their rule.
    initial: bool,
}

/// Which kind of step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `_initial_step()`.
    Initial,
    /// `step()`.
    Step,
    /// `step(0)` (SequentialLR at a milestone).
    Restart,
}

/// What a leaf schedule computes (private: each public schedule is a `Leaf` of one of these).
trait Formula: Send {
    const NAME: &'static str;
    /// Whether `get_lr` also writes momenta.
    fn cycles_momentum(&self) -> bool {
        false
    }
    /// The cycle state for epoch `e`; `fresh` when the schedule (re)starts at epoch 0.
    fn advance(&self, prev: Aux, _fresh: bool) -> Aux {
        prev
    }
    /// PyTorch's `get_lr()` at epoch `e`: the new lr of every group from the live ones (and
    /// the momenta, where the schedule cycles them).
    fn get_lr(
        &self,
        e: u64,
        aux: Aux,
        base: &[f64],
        live: &[f64],
        lr: &mut [f64],
        mom: &mut [f64],
    ) -> Result<()>;
    /// Whether a loaded cycle state is one this formula can reach (default: any).
    fn valid_aux(&self, _aux: Aux) -> bool {
        true
    }
    /// PyTorch's `_get_closed_form_lr()` at epoch `e`, for schedules that define one.
    fn closed_form(&self, _e: u64, _base: &[f64], _lr: &mut [f64]) -> Option<Result<()>> {
        None
    }
}

/// Position and scratch of a leaf schedule.
#[derive(Debug, Clone)]
struct Core {
    last_epoch: i64,
    base_lrs: Vec<f64>,
    last_lr: Vec<f64>,
    aux: Aux,
    // Scratch, sized once, so a step allocates nothing.
    live: Vec<f64>,
    next_lr: Vec<f64>,
    next_mom: Vec<f64>,
    saved_lr: Vec<f64>,
    saved_mom: Vec<f64>,
}

impl Core {
    fn new(base_lrs: Vec<f64>) -> Self {
        let n = base_lrs.len();
        Self {
            last_epoch: -1,
            last_lr: base_lrs.clone(),
            base_lrs,
            aux: Aux::default(),
            live: vec![0.0; n],
            next_lr: vec![0.0; n],
            next_mom: vec![0.0; n],
            saved_lr: vec![0.0; n],
            saved_mom: vec![0.0; n],
        }
    }
}

fn check_groups(schedule: &'static str, built: usize, opt: &dyn Scheduled) -> Result<()> {
    if opt.groups() == built {
        Ok(())
    } else {
        Err(invalid(
            schedule,
            format!(
                "built for {built} parameter group(s), driven with {} (a schedule drives the \
                 optimizer it was built on)",
                opt.groups()
            ),
        ))
    }
}

/// Every group must have a momentum or β1 for a schedule that cycles it (PyTorch's
/// `ValueError: optimizer must support momentum or beta1 with cycle_momentum option enabled`).
fn check_momentum(schedule: &'static str, opt: &dyn Scheduled) -> Result<()> {
    for g in 0..opt.groups() {
        if opt.group_momentum(g)?.is_none() {
            return Err(invalid(
                schedule,
                format!(
                    "cycle_momentum needs momentum or betas, and parameter group {g} has \
                     neither (pass cycle_momentum: false)"
                ),
            ));
        }
    }
    Ok(())
}

/// Sets every group's lr (and momentum), or none: on an error the groups already set are put
/// back.
fn apply(
    opt: &mut dyn Scheduled,
    lr: &[f64],
    mom: Option<&[f64]>,
    saved_lr: &mut [f64],
    saved_mom: &mut [f64],
) -> Result<()> {
    for g in 0..lr.len() {
        saved_lr[g] = opt.group_lr(g)?;
        if mom.is_some() {
            saved_mom[g] = opt.group_momentum(g)?.unwrap_or(0.0);
        }
    }
    for g in 0..lr.len() {
        let r = match mom {
            Some(m) => opt
                .set_group_momentum(g, m[g])
                .and_then(|()| opt.set_group_lr(g, lr[g])),
            None => opt.set_group_lr(g, lr[g]),
        };
        if let Err(e) = r {
            // The old values were accepted before, so putting them back succeeds.
            for h in 0..=g {
                let _ = opt.set_group_lr(h, saved_lr[h]);
                if mom.is_some() {
                    let _ = opt.set_group_momentum(h, saved_mom[h]);
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

/// A leaf schedule: a formula and its position.
struct Leaf<F> {
    core: Core,
    f: F,
}

impl<F: Formula> Leaf<F> {
    /// Builds the schedule over `opt` (base lrs from `opt` unless given) and performs
    /// PyTorch's initial step.
    fn new(opt: &mut dyn Scheduled, f: F, base_lrs: Option<Vec<f64>>) -> Result<Self> {
        let base = match base_lrs {
            Some(b) => b,
            None => (0..opt.groups())
                .map(|g| opt.base_lr(g))
                .collect::<Result<_>>()?,
        };
        if f.cycles_momentum() {
            check_momentum(F::NAME, opt)?;
        }
        let mut leaf = Leaf {
            core: Core::new(base),
            f,
        };
        leaf.advance(opt, Mode::Initial)?;
        Ok(leaf)
    }

    /// One step. Computes everything, sets the groups, and only then moves the position.
    fn advance(&mut self, opt: &mut dyn Scheduled, mode: Mode) -> Result<()> {
        let restart = mode == Mode::Restart;
        let c = &mut self.core;
        check_groups(F::NAME, c.base_lrs.len(), opt)?;
        let e = if restart {
            0
        } else {
            (c.last_epoch + 1).max(0) as u64
        };
        for g in 0..c.live.len() {
            c.live[g] = opt.group_lr(g)?;
        }
        let mut aux = self.f.advance(c.aux, restart || c.last_epoch < 0);
        aux.initial = mode == Mode::Initial;
        let closed = if restart {
            self.f.closed_form(e, &c.base_lrs, &mut c.next_lr)
        } else {
            None
        };
        match closed {
            Some(r) => r?,
            None => self.f.get_lr(
                e,
                aux,
                &c.base_lrs,
                &c.live,
                &mut c.next_lr,
                &mut c.next_mom,
            )?,
        }
        let mom = self.f.cycles_momentum().then_some(&c.next_mom[..]);
        apply(opt, &c.next_lr, mom, &mut c.saved_lr, &mut c.saved_mom)?;
        c.last_epoch = e as i64;
        c.aux = aux;
        c.last_lr.copy_from_slice(&c.next_lr);
        Ok(())
    }

    fn state(&self) -> ScheduleState {
        ScheduleState {
            last_epoch: self.core.last_epoch,
            base_lrs: self.core.base_lrs.clone(),
            last_lr: self.core.last_lr.clone(),
            t_i: self.core.aux.t_i,
            t_cur: self.core.aux.t_cur,
            children: Vec::new(),
        }
    }

    fn load_state(&mut self, s: &ScheduleState) -> Result<()> {
        let n = self.core.base_lrs.len();
        if s.base_lrs.len() != n || s.last_lr.len() != n || !s.children.is_empty() {
            return Err(invalid(
                F::NAME,
                format!(
                    "the state is of a schedule over {} group(s) with {} sub-schedule(s); this \
                     one has {n} group(s) and none",
                    s.base_lrs.len(),
                    s.children.len()
                ),
            ));
        }
        if s.last_epoch < -1 {
            return Err(invalid(
                F::NAME,
                format!("last_epoch = {} must be >= -1", s.last_epoch),
            ));
        }
        let aux = Aux {
            t_i: s.t_i,
            t_cur: s.t_cur,
            initial: false,
        };
        if !self.f.valid_aux(aux) {
            return Err(invalid(
                F::NAME,
                format!("T_cur = {} must be below T_i = {} >= 1", s.t_cur, s.t_i),
            ));
        }
        self.core.last_epoch = s.last_epoch;
        self.core.base_lrs.copy_from_slice(&s.base_lrs);
        self.core.last_lr.copy_from_slice(&s.last_lr);
        self.core.aux = aux;
        Ok(())
    }
}

/// The `LrSchedule` impl and the common accessors of a public leaf schedule `$t(Leaf<$f>)`.
macro_rules! leaf_schedule {
    ($t:ident, $f:ty) => {
        impl LrSchedule for $t {
            fn name(&self) -> &'static str {
                <$f as Formula>::NAME
            }
            fn step(&mut self, opt: &mut dyn Scheduled) -> Result<()> {
                self.0.advance(opt, Mode::Step)
            }
            fn last_lr(&self) -> &[f64] {
                &self.0.core.last_lr
            }
            fn last_epoch(&self) -> i64 {
                self.0.core.last_epoch
            }
            fn groups(&self) -> usize {
                self.0.core.base_lrs.len()
            }
            fn state(&self) -> ScheduleState {
                self.0.state()
            }
            fn load_state(&mut self, state: &ScheduleState) -> Result<()> {
                self.0.load_state(state)
            }
            fn restart(&mut self, opt: &mut dyn Scheduled) -> Result<()> {
                self.0.advance(opt, Mode::Restart)
            }
            fn undo(&mut self) {
                self.0.core.last_epoch -= 1;
            }
            fn initial_step(&mut self, opt: &mut dyn Scheduled) -> Result<()> {
                self.0.advance(opt, Mode::Initial)
            }
        }

        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("last_epoch", &self.0.core.last_epoch)
                    .field("base_lrs", &self.0.core.base_lrs)
                    .field("last_lr", &self.0.core.last_lr)
                    .finish_non_exhaustive()
            }
        }
    };
}

/// Python's `float ** int` and `float ** float` are C's `pow` (not repeated multiplication).
#[inline]
fn pow(x: f64, y: f64) -> f64 {
    x.powf(y)
}

/// Every group's lr: its value in `from` (the base or the live lrs) times one `factor` that
/// depends only on the epoch (the multiplicative schedules' closed and recursive forms).
fn scale(lr: &mut [f64], from: &[f64], factor: f64) {
    for (o, &x) in lr.iter_mut().zip(from) {
        *o = x * factor;
    }
}

/// Every group's lr on the cosine from its base lr down to `eta_min`, at `c` = cos(π · the
/// fraction of the period passed): CosineAnnealingLR's closed form and SGDR's lr.
fn cosine(lr: &mut [f64], base: &[f64], eta_min: f64, c: f64) {
    for (o, &b) in lr.iter_mut().zip(base) {
        *o = eta_min + (b - eta_min) * (1.0 + c) / 2.0;
    }
}

/// LinearLR's and PolynomialLR's closed forms divide by `total_iters`.
fn closed_form_total_iters(schedule: &'static str, total_iters: u64) -> Result<()> {
    if total_iters == 0 {
        return Err(invalid(
            schedule,
            "the closed form divides by total_iters = 0 (PyTorch: ZeroDivisionError)".into(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// StepLR, MultiStepLR, ConstantLR, LinearLR, ExponentialLR, PolynomialLR.

struct StepF {
    step_size: u64,
    gamma: f64,
}

impl Formula for StepF {
    const NAME: &'static str = "StepLR";
    fn get_lr(
        &self,
        e: u64,
        _: Aux,
        _: &[f64],
        live: &[f64],
        lr: &mut [f64],
        _: &mut [f64],
    ) -> Result<()> {
        if e == 0 || e % self.step_size != 0 {
            lr.copy_from_slice(live);
        } else {
            scale(lr, live, self.gamma);
        }
        Ok(())
    }
    fn closed_form(&self, e: u64, base: &[f64], lr: &mut [f64]) -> Option<Result<()>> {
        scale(lr, base, pow(self.gamma, (e / self.step_size) as f64));
        Some(Ok(()))
    }
}

/// `torch.optim.lr_scheduler.StepLR`: the lr times `gamma` every `step_size` epochs.
pub struct StepLR(Leaf<StepF>);
leaf_schedule!(StepLR, StepF);

impl StepLR {
    /// PyTorch's `StepLR(optimizer, step_size, gamma)` (PyTorch's default gamma is 0.1).
    /// `step_size` must be > 0.
    pub fn new(opt: &mut dyn Scheduled, step_size: u64, gamma: f64) -> Result<Self> {
        if step_size == 0 {
            return Err(invalid(
                "StepLR",
                "step_size = 0 must be > 0 (PyTorch divides by it)".into(),
            ));
        }
        finite("StepLR", "gamma", gamma)?;
        Ok(Self(Leaf::new(opt, StepF { step_size, gamma }, None)?))
    }
}

struct MultiStepF {
    /// Sorted; a repeated milestone appears as often as it was given (PyTorch's Counter).
    milestones: Vec<u64>,
    gamma: f64,
}

impl Formula for MultiStepF {
    const NAME: &'static str = "MultiStepLR";
    fn get_lr(
        &self,
        e: u64,
        _: Aux,
        _: &[f64],
        live: &[f64],
        lr: &mut [f64],
        _: &mut [f64],
    ) -> Result<()> {
        let count = self.milestones.iter().filter(|&&m| m == e).count();
        if count == 0 {
            lr.copy_from_slice(live);
        } else {
            scale(lr, live, pow(self.gamma, count as f64));
        }
        Ok(())
    }
    fn closed_form(&self, e: u64, base: &[f64], lr: &mut [f64]) -> Option<Result<()>> {
        let passed = self.milestones.partition_point(|&m| m <= e);
        scale(lr, base, pow(self.gamma, passed as f64));
        Some(Ok(()))
    }
}

/// `torch.optim.lr_scheduler.MultiStepLR`: the lr times `gamma` at each milestone (a
/// milestone given twice decays by `gamma²` at once).
pub struct MultiStepLR(Leaf<MultiStepF>);
leaf_schedule!(MultiStepLR, MultiStepF);

impl MultiStepLR {
    /// PyTorch's `MultiStepLR(optimizer, milestones, gamma)` (default gamma 0.1).
    pub fn new(opt: &mut dyn Scheduled, milestones: &[u64], gamma: f64) -> Result<Self> {
        finite("MultiStepLR", "gamma", gamma)?;
        let mut milestones = milestones.to_vec();
        milestones.sort_unstable();
        Ok(Self(Leaf::new(
            opt,
            MultiStepF { milestones, gamma },
            None,
        )?))
    }
}

struct ConstantF {
    factor: f64,
    total_iters: u64,
}

impl Formula for ConstantF {
    const NAME: &'static str = "ConstantLR";
    fn get_lr(
        &self,
        e: u64,
        _: Aux,
        _: &[f64],
        live: &[f64],
        lr: &mut [f64],
        _: &mut [f64],
    ) -> Result<()> {
        if e != 0 && e == self.total_iters && self.factor == 0.0 {
            return Err(invalid(
                Self::NAME,
                "factor 0 cannot be undone at total_iters (PyTorch: ZeroDivisionError)".into(),
            ));
        }
        if e == 0 {
            scale(lr, live, self.factor);
        } else if e != self.total_iters {
            lr.copy_from_slice(live);
        } else {
            scale(lr, live, 1.0 / self.factor);
        }
        Ok(())
    }
    fn closed_form(&self, e: u64, base: &[f64], lr: &mut [f64]) -> Option<Result<()>> {
        let done = if e >= self.total_iters { 1.0 } else { 0.0 };
        scale(lr, base, self.factor + done * (1.0 - self.factor));
        Some(Ok(()))
    }
}

/// `torch.optim.lr_scheduler.ConstantLR`: the lr times `factor` until `total_iters`.
pub struct ConstantLR(Leaf<ConstantF>);
leaf_schedule!(ConstantLR, ConstantF);

impl ConstantLR {
    /// PyTorch's `ConstantLR(optimizer, factor, total_iters)` (defaults 1/3 and 5). `factor`
    /// must be in [0, 1].
    pub fn new(opt: &mut dyn Scheduled, factor: f64, total_iters: u64) -> Result<Self> {
        if !(0.0..=1.0).contains(&factor) {
            return Err(invalid(
                "ConstantLR",
                format!("factor = {factor} must be in [0, 1]"),
            ));
        }
        Ok(Self(Leaf::new(
            opt,
            ConstantF {
                factor,
                total_iters,
            },
            None,
        )?))
    }
}

struct LinearF {
    start: f64,
    end: f64,
    total_iters: u64,
}

impl Formula for LinearF {
    const NAME: &'static str = "LinearLR";
    fn get_lr(
        &self,
        e: u64,
        _: Aux,
        _: &[f64],
        live: &[f64],
        lr: &mut [f64],
        _: &mut [f64],
    ) -> Result<()> {
        let (s, f, t) = (self.start, self.end, self.total_iters as f64);
        if e == 0 {
            scale(lr, live, s);
        } else if e > self.total_iters {
            lr.copy_from_slice(live);
        } else {
            scale(lr, live, 1.0 + (f - s) / (t * s + (e - 1) as f64 * (f - s)));
        }
        Ok(())
    }
    fn closed_form(&self, e: u64, base: &[f64], lr: &mut [f64]) -> Option<Result<()>> {
        if let Err(err) = closed_form_total_iters(Self::NAME, self.total_iters) {
            return Some(Err(err));
        }
        let (s, f, t) = (self.start, self.end, self.total_iters as f64);
        let m = self.total_iters.min(e) as f64;
        scale(lr, base, s + (f - s) * m / t);
        Some(Ok(()))
    }
}

/// `torch.optim.lr_scheduler.LinearLR`: the lr factor moves linearly from `start_factor` to
/// `end_factor` over `total_iters` epochs (the usual warmup).
pub struct LinearLR(Leaf<LinearF>);
leaf_schedule!(LinearLR, LinearF);

impl LinearLR {
    /// PyTorch's `LinearLR(optimizer, start_factor, end_factor, total_iters)` (defaults 1/3,
    /// 1.0, 5). `start_factor` must be in (0, 1], `end_factor` in [0, 1].
    pub fn new(
        opt: &mut dyn Scheduled,
        start_factor: f64,
        end_factor: f64,
        total_iters: u64,
    ) -> Result<Self> {
        if !(start_factor > 0.0 && start_factor <= 1.0) {
            return Err(invalid(
                "LinearLR",
                format!("start_factor = {start_factor} must be in (0, 1]"),
            ));
        }
        if !(0.0..=1.0).contains(&end_factor) {
            return Err(invalid(
                "LinearLR",
                format!("end_factor = {end_factor} must be in [0, 1]"),
            ));
        }
        let f = LinearF {
            start: start_factor,
            end: end_factor,
            total_iters,
        };
        Ok(Self(Leaf::new(opt, f, None)?))
    }
}

struct ExponentialF {
    gamma: f64,
}

impl Formula for ExponentialF {
    const NAME: &'static str = "ExponentialLR";
    fn get_lr(
        &self,
        _: u64,
        aux: Aux,
        _: &[f64],
        live: &[f64],
        lr: &mut [f64],
        _: &mut [f64],
    ) -> Result<()> {
        if aux.initial {
            lr.copy_from_slice(live);
        } else {
            scale(lr, live, self.gamma);
        }
        Ok(())
    }
    fn closed_form(&self, e: u64, base: &[f64], lr: &mut [f64]) -> Option<Result<()>> {
        scale(lr, base, pow(self.gamma, e as f64));
        Some(Ok(()))
    }
}

/// `torch.optim.lr_scheduler.ExponentialLR`: the lr times `gamma` every epoch.
pub struct ExponentialLR(Leaf<ExponentialF>);
leaf_schedule!(ExponentialLR, ExponentialF);

impl ExponentialLR {
    /// PyTorch's `ExponentialLR(optimizer, gamma)`.
    pub fn new(opt: &mut dyn Scheduled, gamma: f64) -> Result<Self> {
        finite("ExponentialLR", "gamma", gamma)?;
        Ok(Self(Leaf::new(opt, ExponentialF { gamma }, None)?))
    }
}

struct PolynomialF {
    total_iters: u64,
    power: f64,
}

impl Formula for PolynomialF {
    const NAME: &'static str = "PolynomialLR";
    fn get_lr(
        &self,
        e: u64,
        aux: Aux,
        _: &[f64],
        live: &[f64],
        lr: &mut [f64],
        _: &mut [f64],
    ) -> Result<()> {
        if aux.initial || e > self.total_iters {
            lr.copy_from_slice(live);
            return Ok(());
        }
        if self.total_iters == 0 {
            return Err(invalid(
                Self::NAME,
                "epoch 0 outside the initial step divides by total_iters = 0 (PyTorch: \
                 ZeroDivisionError)"
                    .into(),
            ));
        }
        let t = self.total_iters as f64;
        let ratio = (1.0 - e as f64 / t) / (1.0 - (e as f64 - 1.0) / t);
        if ratio == 0.0 && self.power < 0.0 {
            return Err(invalid(
                Self::NAME,
                format!(
                    "power = {} < 0 raises 0 to a negative power at total_iters (PyTorch: \
                     ZeroDivisionError)",
                    self.power
                ),
            ));
        }
        scale(lr, live, pow(ratio, self.power));
        Ok(())
    }
    fn closed_form(&self, e: u64, base: &[f64], lr: &mut [f64]) -> Option<Result<()>> {
        if let Err(err) = closed_form_total_iters(Self::NAME, self.total_iters) {
            return Some(Err(err));
        }
        let t = self.total_iters as f64;
        scale(
            lr,
            base,
            pow(1.0 - self.total_iters.min(e) as f64 / t, self.power),
        );
        Some(Ok(()))
    }
}

/// `torch.optim.lr_scheduler.PolynomialLR`: the lr decays as `(1 - e/total_iters)^power`,
/// reaching 0 at `total_iters`.
pub struct PolynomialLR(Leaf<PolynomialF>);
leaf_schedule!(PolynomialLR, PolynomialF);

impl PolynomialLR {
    /// PyTorch's `PolynomialLR(optimizer, total_iters, power)` (defaults 5 and 1.0).
    pub fn new(opt: &mut dyn Scheduled, total_iters: u64, power: f64) -> Result<Self> {
        finite("PolynomialLR", "power", power)?;
        Ok(Self(Leaf::new(
            opt,
            PolynomialF { total_iters, power },
            None,
        )?))
    }
}

// ---------------------------------------------------------------------------------------------
// CosineAnnealingLR, CosineAnnealingWarmRestarts.

struct CosineF {
    t_max: u64,
    eta_min: f64,
}

impl Formula for CosineF {
    const NAME: &'static str = "CosineAnnealingLR";
    fn get_lr(
        &self,
        e: u64,
        aux: Aux,
        base: &[f64],
        live: &[f64],
        lr: &mut [f64],
        _: &mut [f64],
    ) -> Result<()> {
        use std::f64::consts::PI;
        let (t, eta) = (self.t_max as f64, self.eta_min);
        let ei = e as i64;
        let ti = self.t_max as i64;
        if aux.initial {
            lr.copy_from_slice(live);
        } else if (ei - 1 - ti).rem_euclid(2 * ti) == 0 {
            // The epoch after a minimum: PyTorch's explicit branch, as the recursive ratio
            // would divide by 1 + cos(pi) = 0.
            for ((o, &l), &b) in lr.iter_mut().zip(live).zip(base) {
                *o = l + (b - eta) * (1.0 - (PI / t).cos()) / 2.0;
            }
        } else {
            let ratio =
                (1.0 + (PI * e as f64 / t).cos()) / (1.0 + (PI * (e as f64 - 1.0) / t).cos());
            for (o, &l) in lr.iter_mut().zip(live) {
                *o = ratio * (l - eta) + eta;
            }
        }
        Ok(())
    }
    fn closed_form(&self, e: u64, base: &[f64], lr: &mut [f64]) -> Option<Result<()>> {
        use std::f64::consts::PI;
        cosine(
            lr,
            base,
            self.eta_min,
            (PI * e as f64 / self.t_max as f64).cos(),
        );
        Some(Ok(()))
    }
}

/// `torch.optim.lr_scheduler.CosineAnnealingLR`: cosine from the base lr down to `eta_min`
/// over `T_max` epochs. As PyTorch's recursive form, it keeps following the cosine past
/// `T_max` (back up to the base lr at `2·T_max`, and so on), and it composes with other
/// changes of the lr (ChainedScheduler) multiplicatively.
pub struct CosineAnnealingLR(Leaf<CosineF>);
leaf_schedule!(CosineAnnealingLR, CosineF);

impl CosineAnnealingLR {
    /// PyTorch's `CosineAnnealingLR(optimizer, T_max, eta_min)` (default eta_min 0). `t_max`
    /// must be > 0.
    pub fn new(opt: &mut dyn Scheduled, t_max: u64, eta_min: f64) -> Result<Self> {
        if t_max == 0 {
            return Err(invalid(
                "CosineAnnealingLR",
                "T_max = 0 must be > 0 (PyTorch divides by it)".into(),
            ));
        }
        finite("CosineAnnealingLR", "eta_min", eta_min)?;
        Ok(Self(Leaf::new(opt, CosineF { t_max, eta_min }, None)?))
    }
}

struct WarmRestartsF {
    t_0: u64,
    t_mult: u64,
    eta_min: f64,
}

impl Formula for WarmRestartsF {
    const NAME: &'static str = "CosineAnnealingWarmRestarts";
    fn valid_aux(&self, aux: Aux) -> bool {
        aux.t_i >= 1 && aux.t_cur < aux.t_i
    }
    fn advance(&self, prev: Aux, fresh: bool) -> Aux {
        if fresh {
            return Aux {
                t_i: self.t_0,
                t_cur: 0,
                initial: false,
            };
        }
        let mut a = Aux {
            t_i: prev.t_i,
            t_cur: prev.t_cur + 1,
            initial: false,
        };
        if a.t_cur >= a.t_i {
            a.t_cur -= a.t_i;
            a.t_i = a.t_i.saturating_mul(self.t_mult);
        }
        a
    }
    fn get_lr(
        &self,
        _: u64,
        aux: Aux,
        base: &[f64],
        _: &[f64],
        lr: &mut [f64],
        _: &mut [f64],
    ) -> Result<()> {
        use std::f64::consts::PI;
        cosine(
            lr,
            base,
            self.eta_min,
            (PI * aux.t_cur as f64 / aux.t_i as f64).cos(),
        );
        Ok(())
    }
}

/// `torch.optim.lr_scheduler.CosineAnnealingWarmRestarts` (SGDR): cosine from the base lr to
/// `eta_min` over `T_0` epochs, then restarts, each cycle `T_mult` times longer.
pub struct CosineAnnealingWarmRestarts(Leaf<WarmRestartsF>);
leaf_schedule!(CosineAnnealingWarmRestarts, WarmRestartsF);

impl CosineAnnealingWarmRestarts {
    /// PyTorch's `CosineAnnealingWarmRestarts(optimizer, T_0, T_mult, eta_min)` (defaults
    /// T_mult 1, eta_min 0). `t_0` must be > 0 and `t_mult` >= 1.
    pub fn new(opt: &mut dyn Scheduled, t_0: u64, t_mult: u64, eta_min: f64) -> Result<Self> {
        const N: &str = "CosineAnnealingWarmRestarts";
        if t_0 == 0 {
            return Err(invalid(N, "T_0 = 0 must be a positive integer".into()));
        }
        if t_mult == 0 {
            return Err(invalid(N, "T_mult = 0 must be an integer >= 1".into()));
        }
        finite(N, "eta_min", eta_min)?;
        let f = WarmRestartsF {
            t_0,
            t_mult,
            eta_min,
        };
        Ok(Self(Leaf::new(opt, f, None)?))
    }
}

// ---------------------------------------------------------------------------------------------
// LambdaLR, MultiplicativeLR.

/// A host closure of the epoch, as PyTorch's `lr_lambda`.
pub type LrLambda = Arc<dyn Fn(u64) -> f64 + Send + Sync>;

fn lambdas(
    schedule: &'static str,
    opt: &dyn Scheduled,
    lambdas: Vec<LrLambda>,
) -> Result<Vec<LrLambda>> {
    match lambdas.len() {
        1 => Ok(vec![lambdas[0].clone(); opt.groups()]),
        n if n == opt.groups() => Ok(lambdas),
        n => Err(invalid(
            schedule,
            format!(
                "expected 1 or {} lr_lambdas (one per group), got {n}",
                opt.groups()
            ),
        )),
    }
}

struct LambdaF {
    lambdas: Vec<LrLambda>,
}

impl Formula for LambdaF {
    const NAME: &'static str = "LambdaLR";
    fn get_lr(
        &self,
        e: u64,
        _: Aux,
        base: &[f64],
        _: &[f64],
        lr: &mut [f64],
        _: &mut [f64],
    ) -> Result<()> {
        for ((o, &b), f) in lr.iter_mut().zip(base).zip(&self.lambdas) {
            *o = b * f(e);
        }
        Ok(())
    }
}

/// `torch.optim.lr_scheduler.LambdaLR`: `lr = base_lr · λ(epoch)`, λ a host closure (one for
/// every group, or one per group).
pub struct LambdaLR(Leaf<LambdaF>);
leaf_schedule!(LambdaLR, LambdaF);

impl LambdaLR {
    /// PyTorch's `LambdaLR(optimizer, lr_lambda)` with one closure for every group.
    pub fn new(
        opt: &mut dyn Scheduled,
        lr_lambda: impl Fn(u64) -> f64 + Send + Sync + 'static,
    ) -> Result<Self> {
        Self::per_group(opt, vec![Arc::new(lr_lambda)])
    }

    /// PyTorch's `LambdaLR(optimizer, [λ0, λ1, ...])`: one closure per group (or one for all).
    pub fn per_group(opt: &mut dyn Scheduled, lr_lambdas: Vec<LrLambda>) -> Result<Self> {
        let lambdas = lambdas("LambdaLR", opt, lr_lambdas)?;
        Ok(Self(Leaf::new(opt, LambdaF { lambdas }, None)?))
    }
}

struct MultiplicativeF {
    lambdas: Vec<LrLambda>,
}

impl Formula for MultiplicativeF {
    const NAME: &'static str = "MultiplicativeLR";
    fn get_lr(
        &self,
        e: u64,
        aux: Aux,
        _: &[f64],
        live: &[f64],
        lr: &mut [f64],
        _: &mut [f64],
    ) -> Result<()> {
        for ((o, &l), f) in lr.iter_mut().zip(live).zip(&self.lambdas) {
            *o = if aux.initial { l } else { l * f(e) };
        }
        Ok(())
    }
}

/// `torch.optim.lr_scheduler.MultiplicativeLR`: `lr = lr · λ(epoch)` on every step; the
/// constructor's step leaves the lr alone (λ(0) is called only when SequentialLR restarts it,
/// which multiplies the live lr by λ(0), as PyTorch does).
pub struct MultiplicativeLR(Leaf<MultiplicativeF>);
leaf_schedule!(MultiplicativeLR, MultiplicativeF);

impl MultiplicativeLR {
    /// PyTorch's `MultiplicativeLR(optimizer, lr_lambda)` with one closure for every group.
    pub fn new(
        opt: &mut dyn Scheduled,
        lr_lambda: impl Fn(u64) -> f64 + Send + Sync + 'static,
    ) -> Result<Self> {
        Self::per_group(opt, vec![Arc::new(lr_lambda)])
    }

    /// One closure per group (or one for all).
    pub fn per_group(opt: &mut dyn Scheduled, lr_lambdas: Vec<LrLambda>) -> Result<Self> {
        let lambdas = lambdas("MultiplicativeLR", opt, lr_lambdas)?;
        Ok(Self(Leaf::new(opt, MultiplicativeF { lambdas }, None)?))
    }
}

// ---------------------------------------------------------------------------------------------
// CyclicLR.

/// CyclicLR's amplitude policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CyclicMode {
    /// Constant amplitude (scale 1, per cycle).
    Triangular,
    /// Amplitude halved every cycle (`1 / 2^(cycle - 1)`).
    Triangular2,
    /// Amplitude `gamma^iteration` (per iteration).
    ExpRange {
        /// The per-iteration decay.
        gamma: f64,
    },
}

/// The arguments of [`CyclicLR`], with PyTorch's defaults (`Default` has base_lr 0.001 and
/// max_lr 0.006, PyTorch's documented example; both are required there).
#[derive(Debug, Clone, PartialEq)]
pub struct CyclicConfig {
    /// Lower lr bound of each group (`base_lr`).
    pub base_lr: PerGroup,
    /// Upper lr bound of each group (`max_lr`).
    pub max_lr: PerGroup,
    /// Iterations in the rising half of a cycle (`step_size_up`, default 2000).
    pub step_size_up: u64,
    /// Iterations in the falling half (`step_size_down`; `None`: as `step_size_up`).
    pub step_size_down: Option<u64>,
    /// The amplitude policy (`mode`, `gamma`; default triangular).
    pub mode: CyclicMode,
    /// Cycle momentum (or β1) inversely to the lr (default true).
    pub cycle_momentum: bool,
    /// Lower momentum bound (default 0.8).
    pub base_momentum: PerGroup,
    /// Upper momentum bound (default 0.9).
    pub max_momentum: PerGroup,
}

impl Default for CyclicConfig {
    fn default() -> Self {
        Self {
            base_lr: PerGroup::All(0.001),
            max_lr: PerGroup::All(0.006),
            step_size_up: 2000,
            step_size_down: None,
            mode: CyclicMode::Triangular,
            cycle_momentum: true,
            base_momentum: PerGroup::All(0.8),
            max_momentum: PerGroup::All(0.9),
        }
    }
}

struct CyclicF {
    max_lrs: Vec<f64>,
    total_size: f64,
    step_ratio: f64,
    mode: CyclicMode,
    momentum: Option<(Vec<f64>, Vec<f64>)>,
}

impl Formula for CyclicF {
    const NAME: &'static str = "CyclicLR";
    fn cycles_momentum(&self) -> bool {
        self.momentum.is_some()
    }
    fn get_lr(
        &self,
        e: u64,
        _: Aux,
        base: &[f64],
        _: &[f64],
        lr: &mut [f64],
        mom: &mut [f64],
    ) -> Result<()> {
        let ef = e as f64;
        let cycle = (1.0 + ef / self.total_size).floor();
        let x = 1.0 + ef / self.total_size - cycle;
        let scale_factor = if x <= self.step_ratio {
            x / self.step_ratio
        } else {
            (x - 1.0) / (self.step_ratio - 1.0)
        };
        let scale = match self.mode {
            CyclicMode::Triangular => 1.0,
            CyclicMode::Triangular2 => 1.0 / pow(2.0, cycle - 1.0),
            CyclicMode::ExpRange { gamma } => pow(gamma, ef),
        };
        for ((o, &b), &m) in lr.iter_mut().zip(base).zip(&self.max_lrs) {
            let base_height = (m - b) * scale_factor;
            *o = b + base_height * scale;
        }
        if let Some((base_m, max_m)) = &self.momentum {
            for ((o, &b), &m) in mom.iter_mut().zip(base_m).zip(max_m) {
                let base_height = (m - b) * scale_factor;
                *o = m - base_height * scale;
            }
        }
        Ok(())
    }
}

/// `torch.optim.lr_scheduler.CyclicLR` (per batch): the lr cycles between `base_lr` and
/// `max_lr` (triangular, triangular2 or exp_range), and the momentum or β1 inversely between
/// `max_momentum` and `base_momentum`. The group's own base lr is not used.
pub struct CyclicLR(Leaf<CyclicF>);
leaf_schedule!(CyclicLR, CyclicF);

impl CyclicLR {
    /// PyTorch's `CyclicLR(optimizer, base_lr, max_lr, ...)`. With `cycle_momentum`, every
    /// group needs a momentum or β1 ([`config_momentum`]).
    pub fn new(opt: &mut dyn Scheduled, c: CyclicConfig) -> Result<Self> {
        const N: &str = "CyclicLR";
        let groups = opt.groups();
        let base = c.base_lr.resolve(N, "base_lr", groups)?;
        let max_lrs = c.max_lr.resolve(N, "max_lr", groups)?;
        if c.step_size_up == 0 {
            return Err(invalid(
                N,
                "step_size_up = 0 must be > 0 (PyTorch divides by it)".into(),
            ));
        }
        if let CyclicMode::ExpRange { gamma } = c.mode {
            finite(N, "gamma", gamma)?;
        }
        let up = c.step_size_up as f64;
        let down = c.step_size_down.unwrap_or(c.step_size_up) as f64;
        let total_size = up + down;
        let momentum = if c.cycle_momentum {
            Some((
                c.base_momentum.resolve(N, "base_momentum", groups)?,
                c.max_momentum.resolve(N, "max_momentum", groups)?,
            ))
        } else {
            None
        };
        let f = CyclicF {
            max_lrs,
            total_size,
            step_ratio: up / total_size,
            mode: c.mode,
            momentum,
        };
        Ok(Self(Leaf::new(opt, f, Some(base))?))
    }
}

// ---------------------------------------------------------------------------------------------
// OneCycleLR.

/// OneCycleLR's annealing shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anneal {
    /// Half a cosine (`anneal_strategy="cos"`, the default).
    Cos,
    /// A straight line (`anneal_strategy="linear"`).
    Linear,
}

/// The arguments of [`OneCycleLR`], with PyTorch's defaults (set `max_lr` and either
/// `total_steps` or `epochs` and `steps_per_epoch`).
#[derive(Debug, Clone, PartialEq)]
pub struct OneCycleConfig {
    /// Peak lr of each group (`max_lr`).
    pub max_lr: PerGroup,
    /// Steps in the cycle (`total_steps`), or `None` to use `epochs · steps_per_epoch`.
    pub total_steps: Option<u64>,
    /// Epochs (with `steps_per_epoch`, when `total_steps` is `None`).
    pub epochs: Option<u64>,
    /// Steps per epoch (with `epochs`).
    pub steps_per_epoch: Option<u64>,
    /// Fraction of the cycle spent rising (`pct_start`, default 0.3), in [0, 1].
    pub pct_start: f64,
    /// The annealing shape (default cos).
    pub anneal_strategy: Anneal,
    /// Cycle momentum (or β1) inversely to the lr (default true).
    pub cycle_momentum: bool,
    /// Lowest momentum, at the peak lr (default 0.85).
    pub base_momentum: PerGroup,
    /// Highest momentum, at the ends (default 0.95).
    pub max_momentum: PerGroup,
    /// Initial lr = max_lr / div_factor (default 25).
    pub div_factor: f64,
    /// Final lr = initial lr / final_div_factor (default 1e4).
    pub final_div_factor: f64,
    /// Rise, fall back to the initial lr, then anneal to the final lr (default false: rise,
    /// then anneal to the final lr).
    pub three_phase: bool,
}

impl Default for OneCycleConfig {
    fn default() -> Self {
        Self {
            max_lr: PerGroup::All(0.1),
            total_steps: None,
            epochs: None,
            steps_per_epoch: None,
            pct_start: 0.3,
            anneal_strategy: Anneal::Cos,
            cycle_momentum: true,
            base_momentum: PerGroup::All(0.85),
            max_momentum: PerGroup::All(0.95),
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
        }
    }
}

/// Which of a group's values a phase starts or ends at.
#[derive(Debug, Clone, Copy)]
enum Level {
    Initial,
    Max,
    Min,
}

struct Phase {
    end_step: f64,
    lr: (Level, Level),
    /// Momentum from/to: `true` = max_momentum, `false` = base_momentum.
    mom: (bool, bool),
}

struct OneCycleF {
    total_steps: u64,
    phases: Vec<Phase>,
    anneal: Anneal,
    /// Per group: initial, max, min lr.
    lrs: Vec<[f64; 3]>,
    /// Per group: base and max momentum.
    momentum: Option<Vec<[f64; 2]>>,
}

impl OneCycleF {
    fn anneal(&self, start: f64, end: f64, pct: f64) -> f64 {
        match self.anneal {
            Anneal::Cos => {
                let cos_out = (std::f64::consts::PI * pct).cos() + 1.0;
                end + (start - end) / 2.0 * cos_out
            }
            Anneal::Linear => (end - start) * pct + start,
        }
    }
}

impl Formula for OneCycleF {
    const NAME: &'static str = "OneCycleLR";
    fn cycles_momentum(&self) -> bool {
        self.momentum.is_some()
    }
    fn get_lr(
        &self,
        e: u64,
        _: Aux,
        _: &[f64],
        _: &[f64],
        lr: &mut [f64],
        mom: &mut [f64],
    ) -> Result<()> {
        if e > self.total_steps {
            return Err(invalid(
                Self::NAME,
                format!(
                    "tried to step {e} times; the specified number of total steps is {}",
                    self.total_steps
                ),
            ));
        }
        let step = e as f64;
        let mut start = 0.0;
        let last = self.phases.len() - 1;
        for (i, ph) in self.phases.iter().enumerate() {
            if step <= ph.end_step || i == last {
                if ph.end_step == start {
                    return Err(invalid(
                        Self::NAME,
                        format!(
                            "phase {i} has no steps (pct_start · total_steps = {}; PyTorch: \
                             ZeroDivisionError)",
                            start + 1.0
                        ),
                    ));
                }
                let pct = (step - start) / (ph.end_step - start);
                for (o, v) in lr.iter_mut().zip(&self.lrs) {
                    let at = |l: Level| match l {
                        Level::Initial => v[0],
                        Level::Max => v[1],
                        Level::Min => v[2],
                    };
                    *o = self.anneal(at(ph.lr.0), at(ph.lr.1), pct);
                }
                if let Some(m) = &self.momentum {
                    for (o, v) in mom.iter_mut().zip(m) {
                        let at = |max: bool| if max { v[1] } else { v[0] };
                        *o = self.anneal(at(ph.mom.0), at(ph.mom.1), pct);
                    }
                }
                return Ok(());
            }
            start = ph.end_step;
        }
        // The last phase ends at total_steps - 1 and steps past total_steps are refused
        // before this point, so some phase always matched; an error, not a panic, if not.
        Err(invalid(Self::NAME, format!("step {e} is in no phase")))
    }
}

/// `torch.optim.lr_scheduler.OneCycleLR` (per batch): the 1cycle policy, two- or three-phase,
/// cos or linear, with momentum (or β1) cycling inversely. Its lrs come from `max_lr`, not
/// from the group's base lr. Stepping past `total_steps` is an error, as in PyTorch; the
/// linear strategy extrapolates below the final lr at `e = total_steps` (possibly below 0,
/// which an optimizer refuses).
pub struct OneCycleLR(Leaf<OneCycleF>);
leaf_schedule!(OneCycleLR, OneCycleF);

impl OneCycleLR {
    /// PyTorch's `OneCycleLR(optimizer, max_lr, total_steps | epochs and steps_per_epoch,
    /// ...)`.
    pub fn new(opt: &mut dyn Scheduled, c: OneCycleConfig) -> Result<Self> {
        const N: &str = "OneCycleLR";
        let total_steps = match (c.total_steps, c.epochs, c.steps_per_epoch) {
            (Some(0), ..) => return Err(invalid(N, "total_steps = 0 must be > 0".into())),
            (Some(t), ..) => t,
            (None, Some(0), _) => return Err(invalid(N, "epochs = 0 must be > 0".into())),
            (None, _, Some(0)) => return Err(invalid(N, "steps_per_epoch = 0 must be > 0".into())),
            (None, Some(e), Some(s)) => e
                .checked_mul(s)
                .ok_or_else(|| invalid(N, "epochs · steps_per_epoch overflows a u64".into()))?,
            _ => {
                return Err(invalid(
                    N,
                    "define either total_steps or (epochs and steps_per_epoch)".into(),
                ))
            }
        };
        if !(0.0..=1.0).contains(&c.pct_start) {
            return Err(invalid(
                N,
                format!("pct_start = {} must be in [0, 1]", c.pct_start),
            ));
        }
        for (what, v) in [
            ("div_factor", c.div_factor),
            ("final_div_factor", c.final_div_factor),
        ] {
            if !v.is_finite() || v == 0.0 {
                return Err(invalid(
                    N,
                    format!("{what} = {v} must be finite and non-zero (PyTorch divides by it)"),
                ));
            }
        }
        let groups = opt.groups();
        let max_lrs = c.max_lr.resolve(N, "max_lr", groups)?;
        let momentum = if c.cycle_momentum {
            let base = c.base_momentum.resolve(N, "base_momentum", groups)?;
            let max = c.max_momentum.resolve(N, "max_momentum", groups)?;
            Some(base.into_iter().zip(max).map(|(b, m)| [b, m]).collect())
        } else {
            None
        };
        let lrs: Vec<[f64; 3]> = max_lrs
            .iter()
            .map(|&m| {
                let initial = m / c.div_factor;
                [initial, m, initial / c.final_div_factor]
            })
            .collect();
        let t = total_steps as f64;
        let p = c.pct_start;
        use Level::{Initial, Max, Min};
        let phases = if c.three_phase {
            vec![
                Phase {
                    end_step: p * t - 1.0,
                    lr: (Initial, Max),
                    mom: (true, false),
                },
                Phase {
                    end_step: 2.0 * p * t - 2.0,
                    lr: (Max, Initial),
                    mom: (false, true),
                },
                Phase {
                    end_step: t - 1.0,
                    lr: (Initial, Min),
                    mom: (true, true),
                },
            ]
        } else {
            vec![
                Phase {
                    end_step: p * t - 1.0,
                    lr: (Initial, Max),
                    mom: (true, false),
                },
                Phase {
                    end_step: t - 1.0,
                    lr: (Max, Min),
                    mom: (false, true),
                },
            ]
        };
        let base: Vec<f64> = lrs.iter().map(|v| v[0]).collect();
        let f = OneCycleF {
            total_steps,
            phases,
            anneal: c.anneal_strategy,
            lrs,
            momentum,
        };
        Ok(Self(Leaf::new(opt, f, Some(base))?))
    }

    /// The number of steps of the cycle (`total_steps`, or `epochs · steps_per_epoch`).
    pub fn total_steps(&self) -> u64 {
        self.0.f.total_steps
    }
}

// ---------------------------------------------------------------------------------------------
// SequentialLR, ChainedScheduler.

fn check_children(
    schedule: &'static str,
    opt: &dyn Scheduled,
    schedules: &[Box<dyn LrSchedule>],
) -> Result<()> {
    if schedules.is_empty() {
        return Err(invalid(
            schedule,
            "expects at least one schedule to be chained".into(),
        ));
    }
    for (i, s) in schedules.iter().enumerate() {
        if s.groups() != opt.groups() {
            return Err(invalid(
                schedule,
                format!(
                    "schedule {i} ({}) is built for {} parameter group(s), the optimizer has {}; \
                     every schedule must be built on the same optimizer",
                    s.name(),
                    s.groups(),
                    opt.groups()
                ),
            ));
        }
    }
    Ok(())
}

fn load_children(
    schedule: &'static str,
    schedules: &mut [Box<dyn LrSchedule>],
    state: &ScheduleState,
) -> Result<()> {
    if state.children.len() != schedules.len() {
        return Err(invalid(
            schedule,
            format!(
                "the state has {} sub-schedule(s), this schedule {}",
                state.children.len(),
                schedules.len()
            ),
        ));
    }
    // Check every child first (load into copies of their current states' shape), so that
    // nothing changes on error: a failed load leaves a child as it was, and earlier children
    // are put back.
    let before: Vec<ScheduleState> = schedules.iter().map(|s| s.state()).collect();
    for (i, (s, st)) in schedules.iter_mut().zip(&state.children).enumerate() {
        if let Err(e) = s.load_state(st) {
            put_back(schedules, &before, i);
            return Err(e);
        }
    }
    Ok(())
}

/// Puts the first `n` of a wrapper's schedules back into the states `before` (taken from
/// them, so loading them succeeds).
fn put_back(schedules: &mut [Box<dyn LrSchedule>], before: &[ScheduleState], n: usize) {
    for (s, b) in schedules.iter_mut().zip(before).take(n) {
        let _ = s.load_state(b);
    }
}

/// A wrapper's state: its position and each child's state.
fn wrapper_state(
    last_epoch: i64,
    last_lr: &[f64],
    schedules: &[Box<dyn LrSchedule>],
) -> ScheduleState {
    ScheduleState {
        last_epoch,
        last_lr: last_lr.to_vec(),
        children: schedules.iter().map(|s| s.state()).collect(),
        ..ScheduleState::default()
    }
}

/// A wrapper's `undo`: every child one epoch back.
fn undo_children(schedules: &mut [Box<dyn LrSchedule>]) {
    for s in schedules {
        s.undo();
    }
}

/// A wrapper's `restart`: PyTorch cannot restart a SequentialLR or ChainedScheduler at a
/// milestone.
fn cannot_restart(schedule: &'static str) -> Error {
    invalid(schedule, "cannot be restarted at a milestone".into())
}

/// `torch.optim.lr_scheduler.SequentialLR`: one schedule after another, switching at the
/// milestones. Each later schedule starts at its milestone from epoch 0 of its closed form
/// (from the base lr, not from where the previous one left the lr).
pub struct SequentialLR {
    schedules: Vec<Box<dyn LrSchedule>>,
    milestones: Vec<u64>,
    last_epoch: i64,
    last_lr: Vec<f64>,
}

impl std::fmt::Debug for SequentialLR {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequentialLR")
            .field(
                "schedules",
                &self.schedules.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .field("milestones", &self.milestones)
            .field("last_epoch", &self.last_epoch)
            .field("last_lr", &self.last_lr)
            .finish()
    }
}

impl SequentialLR {
    /// PyTorch's `SequentialLR(optimizer, schedulers, milestones)`: the schedules were built
    /// on `opt` (each ran its initial step); this resets every group's lr to its base lr,
    /// moves every schedule one epoch back and re-runs the first one's initial step.
    /// `milestones` has one entry fewer than `schedules`. A SequentialLR or ChainedScheduler
    /// can only come first (PyTorch cannot restart one at a milestone).
    pub fn new(
        opt: &mut dyn Scheduled,
        mut schedules: Vec<Box<dyn LrSchedule>>,
        milestones: &[u64],
    ) -> Result<Self> {
        const N: &str = "SequentialLR";
        check_children(N, opt, &schedules)?;
        if milestones.len() != schedules.len() - 1 {
            return Err(invalid(
                N,
                format!(
                    "expects {} milestone(s) for {} schedules, got {}",
                    schedules.len() - 1,
                    schedules.len(),
                    milestones.len()
                ),
            ));
        }
        if let Some(i) = schedules.iter().skip(1).position(|s| s.is_wrapper()) {
            return Err(invalid(
                N,
                format!(
                    "schedule {} is a {}, which cannot be restarted at a milestone",
                    i + 1,
                    schedules[i + 1].name()
                ),
            ));
        }
        let n = opt.groups();
        let mut saved = Vec::with_capacity(n);
        for g in 0..n {
            saved.push(opt.group_lr(g)?);
        }
        let base: Vec<f64> = (0..n).map(|g| opt.base_lr(g)).collect::<Result<_>>()?;
        for (g, &b) in base.iter().enumerate() {
            opt.set_group_lr(g, b)?;
        }
        undo_children(&mut schedules);
        if let Err(e) = schedules[0].initial_step(opt) {
            // Put everything back as it was.
            for s in &mut schedules {
                redo(s.as_mut());
            }
            for (g, &l) in saved.iter().enumerate() {
                let _ = opt.set_group_lr(g, l);
            }
            return Err(e);
        }
        let last_lr = schedules[0].last_lr().to_vec();
        Ok(Self {
            schedules,
            milestones: milestones.to_vec(),
            last_epoch: 0,
            last_lr,
        })
    }
}

/// The inverse of `undo` (only needed to put a failed SequentialLR construction back).
fn redo(s: &mut dyn LrSchedule) {
    let mut st = s.state();
    bump(&mut st);
    let _ = s.load_state(&st);
}

fn bump(st: &mut ScheduleState) {
    if st.children.is_empty() {
        st.last_epoch += 1;
    }
    for c in &mut st.children {
        bump(c);
    }
}

impl LrSchedule for SequentialLR {
    fn name(&self) -> &'static str {
        "SequentialLR"
    }
    fn step(&mut self, opt: &mut dyn Scheduled) -> Result<()> {
        let e = (self.last_epoch + 1) as u64;
        let idx = self.milestones.partition_point(|&m| m <= e);
        let s = &mut self.schedules[idx];
        if idx > 0 && self.milestones[idx - 1] == e {
            s.restart(opt)?;
        } else {
            s.step(opt)?;
        }
        self.last_epoch = e as i64;
        self.last_lr.copy_from_slice(s.last_lr());
        Ok(())
    }
    fn last_lr(&self) -> &[f64] {
        &self.last_lr
    }
    fn last_epoch(&self) -> i64 {
        self.last_epoch
    }
    fn groups(&self) -> usize {
        self.last_lr.len()
    }
    fn state(&self) -> ScheduleState {
        wrapper_state(self.last_epoch, &self.last_lr, &self.schedules)
    }
    fn load_state(&mut self, state: &ScheduleState) -> Result<()> {
        if state.last_lr.len() != self.last_lr.len() || state.last_epoch < 0 {
            return Err(invalid(
                "SequentialLR",
                format!(
                    "the state has {} group(s) and last_epoch {}; this schedule has {} group(s)",
                    state.last_lr.len(),
                    state.last_epoch,
                    self.last_lr.len()
                ),
            ));
        }
        load_children("SequentialLR", &mut self.schedules, state)?;
        self.last_epoch = state.last_epoch;
        self.last_lr.copy_from_slice(&state.last_lr);
        Ok(())
    }
    fn restart(&mut self, _opt: &mut dyn Scheduled) -> Result<()> {
        Err(cannot_restart("SequentialLR"))
    }
    fn undo(&mut self) {
        undo_children(&mut self.schedules);
    }
    fn is_wrapper(&self) -> bool {
        true
    }
}

/// `torch.optim.lr_scheduler.ChainedScheduler`: every schedule steps, in order, each on the
/// lr the previous one left (the recursive forms compose multiplicatively; absolute ones such
/// as LambdaLR overwrite what came before them).
pub struct ChainedScheduler {
    schedules: Vec<Box<dyn LrSchedule>>,
    last_epoch: i64,
    last_lr: Vec<f64>,
}

impl std::fmt::Debug for ChainedScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainedScheduler")
            .field(
                "schedules",
                &self.schedules.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .field("last_epoch", &self.last_epoch)
            .field("last_lr", &self.last_lr)
            .finish()
    }
}

impl ChainedScheduler {
    /// PyTorch's `ChainedScheduler(schedulers)`: the schedules were built on `opt`, in this
    /// order; no step of its own at construction.
    pub fn new(opt: &mut dyn Scheduled, schedules: Vec<Box<dyn LrSchedule>>) -> Result<Self> {
        check_children("ChainedScheduler", opt, &schedules)?;
        let last_lr = (0..opt.groups())
            .map(|g| opt.group_lr(g))
            .collect::<Result<_>>()?;
        Ok(Self {
            schedules,
            last_epoch: 0,
            last_lr,
        })
    }
}

impl LrSchedule for ChainedScheduler {
    fn name(&self) -> &'static str {
        "ChainedScheduler"
    }
    fn step(&mut self, opt: &mut dyn Scheduled) -> Result<()> {
        check_groups("ChainedScheduler", self.last_lr.len(), opt)?;
        // The children compose on a host copy of the groups (any finite lr, as PyTorch's
        // dicts), and the optimizer is written once per group with the chained result: an
        // intermediate value (a child's decay past zero) never meets the optimizer's setters.
        let n = opt.groups();
        let mut host = HostGroups {
            base_lr: (0..n).map(|g| opt.base_lr(g)).collect::<Result<_>>()?,
            lr: (0..n).map(|g| opt.group_lr(g)).collect::<Result<_>>()?,
            momentum: (0..n)
                .map(|g| opt.group_momentum(g))
                .collect::<Result<_>>()?,
        };
        let before_mom = host.momentum.clone();
        let before: Vec<ScheduleState> = self.schedules.iter().map(|s| s.state()).collect();
        for i in 0..self.schedules.len() {
            if let Err(e) = self.schedules[i].step(&mut host) {
                put_back(&mut self.schedules, &before, i);
                return Err(e);
            }
        }
        let mom: Option<Vec<f64>> = (host.momentum != before_mom)
            .then(|| host.momentum.iter().map(|m| m.unwrap_or(0.0)).collect());
        let (mut saved_lr, mut saved_mom) = (vec![0.0; n], vec![0.0; n]);
        if let Err(e) = apply(opt, &host.lr, mom.as_deref(), &mut saved_lr, &mut saved_mom) {
            let all = self.schedules.len();
            put_back(&mut self.schedules, &before, all);
            return Err(e);
        }
        self.last_lr.copy_from_slice(&host.lr);
        self.last_epoch += 1;
        Ok(())
    }
    fn last_lr(&self) -> &[f64] {
        &self.last_lr
    }
    fn last_epoch(&self) -> i64 {
        self.last_epoch
    }
    fn groups(&self) -> usize {
        self.last_lr.len()
    }
    fn state(&self) -> ScheduleState {
        wrapper_state(self.last_epoch, &self.last_lr, &self.schedules)
    }
    fn load_state(&mut self, state: &ScheduleState) -> Result<()> {
        if state.last_lr.len() != self.last_lr.len() {
            return Err(invalid(
                "ChainedScheduler",
                format!(
                    "the state has {} group(s), this schedule {}",
                    state.last_lr.len(),
                    self.last_lr.len()
                ),
            ));
        }
        load_children("ChainedScheduler", &mut self.schedules, state)?;
        self.last_epoch = state.last_epoch;
        self.last_lr.copy_from_slice(&state.last_lr);
        Ok(())
    }
    fn restart(&mut self, _opt: &mut dyn Scheduled) -> Result<()> {
        Err(cannot_restart("ChainedScheduler"))
    }
    fn undo(&mut self) {
        undo_children(&mut self.schedules);
    }
    fn is_wrapper(&self) -> bool {
        true
    }
}

// ---------------------------------------------------------------------------------------------
// ReduceLROnPlateau.

/// Whether a lower or a higher metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlateauMode {
    /// Lower is better (a loss; the default).
    Min,
    /// Higher is better (an accuracy).
    Max,
}

/// How the improvement threshold is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThresholdMode {
    /// Relative to the best value (`best · (1 ∓ threshold)`, the default).
    Rel,
    /// Absolute (`best ∓ threshold`).
    Abs,
}

/// The arguments of [`ReduceLROnPlateau`], with PyTorch's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct PlateauConfig {
    /// Min or max (default min).
    pub mode: PlateauMode,
    /// lr multiplier on a plateau (default 0.1); must be < 1.
    pub factor: f64,
    /// Non-improving steps tolerated before reducing (default 10).
    pub patience: u64,
    /// Improvement threshold (default 1e-4).
    pub threshold: f64,
    /// Rel or abs (default rel).
    pub threshold_mode: ThresholdMode,
    /// Steps to wait after a reduction before counting bad steps again (default 0).
    pub cooldown: u64,
    /// Lower lr bound of each group (default 0).
    pub min_lr: PerGroup,
    /// Reductions smaller than this are skipped (default 1e-8).
    pub eps: f64,
}

impl Default for PlateauConfig {
    fn default() -> Self {
        Self {
            mode: PlateauMode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: PerGroup::All(0.0),
            eps: 1e-8,
        }
    }
}

/// The position of a [`ReduceLROnPlateau`], as plain data for a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct PlateauState {
    /// Steps taken (PyTorch's `last_epoch`, 0 at construction).
    pub last_epoch: i64,
    /// Best metric so far (±∞ before the first step).
    pub best: f64,
    /// Non-improving steps since the last improvement or reduction.
    pub num_bad_epochs: u64,
    /// Cooldown steps left.
    pub cooldown_counter: u64,
    /// Each group's lr after the last step.
    pub last_lr: Vec<f64>,
}

/// `torch.optim.lr_scheduler.ReduceLROnPlateau`: reduces each group's lr by `factor` when the
/// metric has not improved for more than `patience` steps. No initial step: constructing it
/// changes nothing. Call [`ReduceLROnPlateau::step`] with the metric.
#[derive(Debug, Clone)]
pub struct ReduceLROnPlateau {
    c: PlateauConfig,
    min_lrs: Vec<f64>,
    state: PlateauState,
    next: Vec<f64>,
    saved: Vec<f64>,
    saved_mom: Vec<f64>,
}

impl ReduceLROnPlateau {
    /// PyTorch's `ReduceLROnPlateau(optimizer, ...)`. `factor` must be < 1; `min_lr` one
    /// value or one per group.
    pub fn new(opt: &mut dyn Scheduled, c: PlateauConfig) -> Result<Self> {
        const N: &str = "ReduceLROnPlateau";
        // PyTorch rejects only factor >= 1 (a negative factor passes); NaN fails here too.
        if c.factor >= 1.0 || !c.factor.is_finite() {
            return Err(invalid(N, format!("factor = {} must be < 1.0", c.factor)));
        }
        finite(N, "threshold", c.threshold)?;
        finite(N, "eps", c.eps)?;
        let n = opt.groups();
        let min_lrs = c.min_lr.resolve(N, "min_lr", n)?;
        let last_lr = (0..n).map(|g| opt.group_lr(g)).collect::<Result<_>>()?;
        let best = match c.mode {
            PlateauMode::Min => f64::INFINITY,
            PlateauMode::Max => f64::NEG_INFINITY,
        };
        Ok(Self {
            c,
            min_lrs,
            state: PlateauState {
                last_epoch: 0,
                best,
                num_bad_epochs: 0,
                cooldown_counter: 0,
                last_lr,
            },
            next: vec![0.0; n],
            saved: vec![0.0; n],
            saved_mom: vec![0.0; n],
        })
    }

    fn is_better(&self, a: f64, best: f64) -> bool {
        let t = self.c.threshold;
        match (self.c.mode, self.c.threshold_mode) {
            (PlateauMode::Min, ThresholdMode::Rel) => a < best * (1.0 - t),
            (PlateauMode::Min, ThresholdMode::Abs) => a < best - t,
            (PlateauMode::Max, ThresholdMode::Rel) => a > best * (t + 1.0),
            (PlateauMode::Max, ThresholdMode::Abs) => a > best + t,
        }
    }

    /// One `scheduler.step(metric)`, after each epoch's evaluation.
    pub fn step(&mut self, opt: &mut dyn Scheduled, metric: f64) -> Result<()> {
        check_groups("ReduceLROnPlateau", self.min_lrs.len(), opt)?;
        let mut s = self.state.clone();
        s.last_epoch += 1;
        if self.is_better(metric, s.best) {
            s.best = metric;
            s.num_bad_epochs = 0;
        } else {
            s.num_bad_epochs += 1;
        }
        if s.cooldown_counter > 0 {
            s.cooldown_counter -= 1;
            s.num_bad_epochs = 0;
        }
        for g in 0..self.next.len() {
            self.next[g] = opt.group_lr(g)?;
        }
        if s.num_bad_epochs > self.c.patience {
            for (l, &min) in self.next.iter_mut().zip(&self.min_lrs) {
                let old = *l;
                let reduced = old * self.c.factor;
                // Python's max(a, b): a unless b > a.
                let new = if min > reduced { min } else { reduced };
                if old - new > self.c.eps {
                    *l = new;
                }
            }
            apply(opt, &self.next, None, &mut self.saved, &mut self.saved_mom)?;
            s.cooldown_counter = self.c.cooldown;
            s.num_bad_epochs = 0;
        }
        s.last_lr.copy_from_slice(&self.next);
        self.state = s;
        Ok(())
    }

    /// Each group's lr after the last step (PyTorch's `get_last_lr()`).
    pub fn last_lr(&self) -> &[f64] {
        &self.state.last_lr
    }

    /// Steps taken (0 at construction).
    pub fn last_epoch(&self) -> i64 {
        self.state.last_epoch
    }

    /// The position (best metric, bad-step and cooldown counters), for a checkpoint.
    pub fn state(&self) -> PlateauState {
        self.state.clone()
    }

    /// Restores a position from [`ReduceLROnPlateau::state`]; the optimizer's lrs are not
    /// touched. Nothing changes on error.
    pub fn load_state(&mut self, state: &PlateauState) -> Result<()> {
        if state.last_lr.len() != self.state.last_lr.len() {
            return Err(invalid(
                "ReduceLROnPlateau",
                format!(
                    "the state has {} group(s), this schedule {}",
                    state.last_lr.len(),
                    self.state.last_lr.len()
                ),
            ));
        }
        self.state = state.clone();
        Ok(())
    }
}
