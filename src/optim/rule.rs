//! The rule trait: what an optimization algorithm is, for both engines. A leaf: it knows no
//! engine and no table (src/optim/table.rs lists the rules; the engines in src/optim/gpu.rs,
//! src/optim/segment.rs and src/cpu.rs run any rule through this trait alone).

use std::fmt::Debug;

use bytemuck::Pod;

pub use crate::arena::ChunkRange;
use crate::arena::TensorInfo;
use crate::error::Result;
use crate::shaders::KernelDef;

/// Most host-side scalar state slots a rule keeps per tensor (see [`Rule::scalar_names`]).
pub const MAX_SCALARS: usize = 4;

/// A tensor's host-side scalar state (f64, as PyTorch keeps Python floats).
pub type Scalars = [f64; MAX_SCALARS];

/// One optimizer state buffer, under its PyTorch name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StateSpec {
    /// PyTorch's state key (`exp_avg`, `momentum_buffer`, ...).
    pub name: &'static str,
    /// Binding slot (0 = binding 7).
    pub slot: u32,
    /// Initial value of every element.
    pub init: f32,
}

/// One dispatch of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// One workgroup per chunk, once per binding window.
    Chunks(KernelDef),
    /// One workgroup per tensor (reductions that combine chunk partials).
    Tensors(KernelDef),
    /// One workgroup per parameter group of the segment (reductions over a group's chunk
    /// partials, and the per-group learned scalars of [`Rule::learns_lr`]).
    Groups(KernelDef),
}

impl Pass {
    /// The kernel of the pass.
    pub fn kernel(&self) -> KernelDef {
        match *self {
            Pass::Chunks(k) | Pass::Tensors(k) | Pass::Groups(k) => k,
        }
    }
}

/// What the per-group table may depend on besides the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HyperCtx {
    /// Flags set by the engine (e.g. `FLAG_GRAD_SCALE` when clipping is attached).
    pub extra_flags: u32,
    /// The group's lr was set since its last step (and on its first step): by
    /// `set_group_lr`, `set_lr`, `set_lr_factor` or `set_group_config`. Rules that learn their
    /// lr ([`Rule::learns_lr`]) restart the learned value from the configured lr then.
    pub lr_set: bool,
}

/// Which segment type of the GPU engine runs a rule's tensors: the capability the engine
/// chooses by, so it never needs to recognise a rule by its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// The generic chunked segment: fixed-size chunks of the segment's tensors, one workgroup
    /// each, the rule's [`Rule::passes`] over them, small tensors packed when elementwise.
    Chunked,
    /// Muon's segment: momentum, Newton–Schulz on the batched matmul, apply (2-D tensors).
    NewtonSchulz,
    /// Adafactor's segment: one workgroup per tensor, factored row/column statistics.
    Factored,
}

/// Which hyperparameter a cycling schedule (CyclicLR, OneCycleLR) drives in a group: PyTorch
/// cycles `betas[0]` when the optimizer has `betas`, else `momentum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MomentumKind {
    /// SGD, RMSprop, LARS, Schedule-Free SGD, SGD-HD, Muon: `momentum`.
    Momentum,
    /// Adam/AdamW, NAdam, RAdam, Adamax, LAMB, Lion, ADOPT, Schedule-Free AdamW, Adam-HD:
    /// `beta1`.
    Beta1,
}

/// The seal of [`Rule`]: `optimizer_table!` implements it for each row.
pub(crate) mod sealed {
    /// Implemented by the configurations of the library's table only.
    pub trait Sealed {}
}

/// An optimization algorithm: config, kernels, scalars and the host-side update.
///
/// Sealed: a rule runs only as a row of the library's table (`src/optim/table.rs`), whose
/// `OptimizerConfig` enum is what parameter groups, checkpoints and the engines hold. To add
/// one, add its two files and its row (ARCHITECTURE.md, "Adding an optimizer").
///
/// `update` is the definition the GPU kernel is checked against; it must perform the same f32
/// operations in the same order as the kernel.
pub trait Rule:
    sealed::Sealed + TableEntry + Clone + Debug + Default + PartialEq + Send + Sync + 'static
{
    /// Per-group scalars and flags, mirrored field by field by the kernel's `<Kernel>Hyper`.
    type Hyper: Pod + Debug + Send + Sync;
    /// Per-tensor scalars for one step, mirrored by the kernel's `<Kernel>Tensor`.
    /// The first two fields are `live: u32` and `group: u32`; all-zero means "frozen".
    type TensorStep: Pod + Debug + Send + Sync;
    /// The update pass (the last pass; its layout is the family's).
    const KERNEL: KernelDef;
    /// The segment type that runs this rule (default: the generic chunked one).
    const SEGMENT: SegmentKind = SegmentKind::Chunked;

    /// Whether the step is one elementwise pass (no reduction) on the chunked segment: the
    /// rules whose small tensors share packed chunks.
    fn elementwise() -> bool {
        Self::SEGMENT == SegmentKind::Chunked
            && Self::passes().len() == 1
            && !Self::KERNEL.uses_partials()
    }
    /// Whether the passes take the work split chosen per adapter: every rule of the chunked
    /// segment. Those that reduce (LARS and LAMB norms, Lion and ADOPT caution counts,
    /// hypergradient dots) run 256 virtual lanes whatever the split (reduce.wgsl), so their
    /// sums keep one order and their bits.
    fn tuned() -> bool {
        Self::SEGMENT == SegmentKind::Chunked
    }

    /// Short name of this configuration (`"adam"`, `"adamw"`, ...).
    fn name(&self) -> &'static str;
    /// The momentum (or β1) a cycling schedule drives, and which of the two it is; `None` for
    /// rules with neither (Adagrad, Adadelta, ASGD, Rprop, Adafactor), which PyTorch's cycling
    /// schedules reject. Required, like the two below, so that a new rule cannot leave
    /// schedules, tests or the bench guessing.
    fn momentum_mut(&mut self) -> Option<(MomentumKind, &mut f64)>;
    /// The weight decay (`None`: the rule has none, as Rprop).
    fn weight_decay_mut(&mut self) -> Option<&mut f64>;
    /// How many times one step reads each gradient (the bench's byte count), where known:
    /// `None` for rules whose passes are not a fixed count of full reads.
    fn grad_reads(&self) -> Option<u64>;
    /// Checks every hyperparameter the way PyTorch's constructor does.
    fn validate(&self) -> Result<()>;
    /// State buffers this configuration keeps.
    fn states(&self) -> Vec<StateSpec>;
    /// The dispatches of one step, in order (default: the kernel once per window).
    fn passes() -> Vec<Pass> {
        vec![Pass::Chunks(Self::KERNEL)]
    }
    /// The per-group scalars.
    fn hyper(&self, ctx: HyperCtx) -> Self::Hyper;
    /// Scalars for a live tensor at step `t` (the tensor's count after increment, t >= 1),
    /// in segment group `group`, whose chunks are `chunks` of the segment's table.
    fn tensor_step(&self, t: u64, group: u32, chunks: ChunkRange) -> Self::TensorStep;
    /// Host-side scalar state per tensor, kept in f64 like the step counts (NAdam's
    /// `mu_product`, ASGD's `eta` and `mu`): the names of the slots this configuration uses,
    /// under PyTorch's state keys (default: none). Read back with `read_state` as one value.
    fn scalar_names(&self) -> &'static [&'static str] {
        &[]
    }
    /// Initial values of the scalar slots (default 0).
    fn init_scalars(&self) -> Scalars {
        [0.0; MAX_SCALARS]
    }
    /// As [`Rule::tensor_step`], for rules with scalar state: updates the tensor's scalars for
    /// this step and returns its scalars for the kernel. The GPU and CPU engines both call
    /// this once per live step, so their scalar states stay equal. Default: `tensor_step`.
    fn tensor_step_with(
        &self,
        t: u64,
        group: u32,
        chunks: ChunkRange,
        _scalars: &mut Scalars,
    ) -> Self::TensorStep {
        self.tensor_step(t, group, chunks)
    }
    /// Host-side scalar state per parameter group, kept in f64 (Schedule-Free's `k`, `lr_max`,
    /// `weight_sum`, `scheduled_lr`): the names of the slots this configuration uses (default:
    /// none). Read back with `group_state`. Kept when the group's configuration is replaced.
    fn group_scalar_names(&self) -> &'static [&'static str] {
        &[]
    }
    /// Initial values of the group scalar slots (default 0).
    fn init_group_scalars(&self) -> Scalars {
        [0.0; MAX_SCALARS]
    }
    /// Called by both engines once per step for every group of the rule's segments (whether
    /// any of its tensors is live or not), before any `tensor_step_with` of that step: advances
    /// the group's scalars and returns the group's [`Rule::Hyper`] for this step. Default:
    /// [`Rule::hyper`].
    fn group_step(&self, ctx: HyperCtx, _group_scalars: &mut Scalars) -> Self::Hyper {
        self.hyper(ctx)
    }
    /// The train/eval mode-swap pass (Schedule-Free), over the segment's chunks with the step's
    /// bindings and the [`Rule::swap_step`] entries as its tensor table; `None` (default) for
    /// rules without modes, which ignore `train()` / `eval()`.
    fn swap_kernel() -> Option<KernelDef> {
        None
    }
    /// Checked for every group before a mode swap changes anything (default: `Ok`).
    fn check_mode_swap(&self, _to_train: bool) -> Result<()> {
        Ok(())
    }
    /// The swap's table entry for a tensor that has taken `t` steps (`None`: left as it is;
    /// frozen tensors are swapped too, as the package does).
    fn swap_step(&self, _t: u64, _group: u32, _to_train: bool) -> Option<Self::TensorStep> {
        None
    }
    /// The CPU twin of [`Rule::swap_kernel`] on one tensor.
    fn swap(_ts: &Self::TensorStep, _p: &mut [f32], _state: &mut [&mut [f32]]) {}
    /// Checked, when an optimizer is built, for every tensor a group of this configuration
    /// selects (default: any tensor is fine). Muon takes 2-D tensors only.
    fn check_tensor(&self, _info: &TensorInfo) -> Result<()> {
        Ok(())
    }
    /// The shape of state buffer `state` of tensor `info`, under PyTorch's convention, or
    /// `None` when the tensor keeps no such buffer. Default: every state buffer is shaped like
    /// its tensor. Adafactor keeps `row_var` and `col_var` (one value per row and per column)
    /// for tensors of two or more dims and `variance` for the others. The CPU engine sizes its
    /// buffers by it and checkpoints save and check state under it.
    fn state_shape(&self, _state: &str, info: &TensorInfo) -> Option<Vec<usize>> {
        Some(info.shape.clone().unwrap_or_else(|| vec![info.len]))
    }
    /// Checked when two configurations of this rule share a segment: every group's against the
    /// segment's first group's when an optimizer is built, and a replacement against the
    /// configuration it replaces. Settings a segment fixes at construction must agree (Muon's
    /// Newton–Schulz coefficients and step count live in its matmul tables). Default: none.
    fn check_peer(&self, _other: &Self) -> Result<()> {
        Ok(())
    }
    /// As [`Rule::tensor_step_with`], also given the tensor itself (its shape): what both
    /// engines call once per live tensor per step. Default: [`Rule::tensor_step_with`].
    fn tensor_step_for(
        &self,
        t: u64,
        group: u32,
        chunks: ChunkRange,
        scalars: &mut Scalars,
        _info: &TensorInfo,
    ) -> Self::TensorStep {
        self.tensor_step_with(t, group, chunks, scalars)
    }
    /// The update of one tensor on host slices (elementwise, or with f64 norms for LARS and
    /// LAMB); `state[slot]` is empty for unused slots.
    fn update(
        h: &Self::Hyper,
        ts: &Self::TensorStep,
        p: &mut [f32],
        g: &[f32],
        state: &mut [&mut [f32]],
    );
    /// Whether the rule learns one f32 per parameter group on the device (hypergradient
    /// descent's lr, SPEC-2 §2.14). The GPU engine keeps it in the segment's `partials` buffer
    /// after the per-chunk and per-tensor entries (`partials[tensor_base + n_tensors + group]`,
    /// a vec4 whose x is the value), where the rule's [`Pass::Groups`] kernel updates it and its
    /// update pass reads it; the CPU engine keeps one f32 per group. Both then call
    /// [`Rule::chunk_partials`], [`Rule::group_update`] and [`Rule::update_learned`] instead
    /// of [`Rule::update`]. Default: false.
    fn learns_lr() -> bool {
        false
    }
    /// CPU twin of the rule's first (per-chunk) pass on one live tensor: appends one partial
    /// sum per `CHUNK` elements of the tensor, in chunk order, summed in the kernel's order.
    fn chunk_partials(
        _h: &Self::Hyper,
        _ts: &Self::TensorStep,
        _p: &[f32],
        _g: &[f32],
        _state: &[&mut [f32]],
        _out: &mut Vec<f32>,
    ) {
    }
    /// CPU twin of the rule's [`Pass::Groups`] kernel for segment group `group`: the group's
    /// new learned value from its previous one, the hyperparameters of every group of the
    /// segment, and the segment's chunk partials (`partials[c]`, 0 for frozen tensors) with
    /// each chunk's group (`chunk_groups[c]`). Default: the value unchanged.
    fn group_update(
        _hypers: &[Self::Hyper],
        _group: usize,
        _partials: &[f32],
        _chunk_groups: &[u32],
        learned: f32,
    ) -> f32 {
        learned
    }
    /// [`Rule::update`] with the tensor's group's learned value (see [`Rule::learns_lr`]).
    /// Default: `update`.
    fn update_learned(
        h: &Self::Hyper,
        ts: &Self::TensorStep,
        _learned: f32,
        p: &mut [f32],
        g: &[f32],
        state: &mut [&mut [f32]],
    ) {
        Self::update(h, ts, p, g, state)
    }
    /// Bytes read and written per element per step (SPEC §5), for bandwidth figures.
    fn bytes_per_element(&self) -> u64;
    /// The named configurations `optbench bench` and the criterion benches offer.
    fn presets() -> Vec<(&'static str, Self)>;
    /// Every flag combination the tests and `optbench verify` check (each flag at least once,
    /// with a non-default lr so that lr reaches the kernel).
    fn variants() -> Vec<Self>;
}

/// What every config in the library's table has, written by `optimizer_table!` (src/optim/table.rs) (from the
/// config's `lr` field and its table row), so a rule's own file does not repeat it.
pub trait TableEntry {
    /// Learning rate.
    fn lr(&self) -> f64;
    /// Sets the learning rate (already validated).
    fn set_lr(&mut self, lr: f64);
}
