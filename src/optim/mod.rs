//! The optimizer engine. Each algorithm is a [`Rule`]: a config struct (whose `Default` is
//! PyTorch's) that knows its kernels, its state buffers, the scalars it needs per parameter
//! group and per tensor, and the update on host slices. An optimizer is a list of parameter
//! groups ([`ParamGroups`]), each a tensor selection with its own complete configuration, as
//! PyTorch's `param_groups`. Groups whose configurations are of one algorithm share one
//! *segment*: one set of state buffers holding only the segment's tensors, and one dispatch per
//! pass and binding window, with every group's hyperparameters in a small per-group table. So a
//! step records `segments × passes` dispatches (one for a plain Adam over any number of tensors
//! and groups), all in one submission, and LARS on the weights with AdamW on the rest is one
//! optimizer.
//!
//! [`Optimizer`] runs the segments on the GPU; [`crate::CpuOptimizer`] runs the same rules, with
//! the same scalars and the same bookkeeping, on the host. Both expose the same parameter-group,
//! freezing, step-count and state methods with the same names and argument types.
//!
//! Shared semantics (PyTorch's): a frozen tensor (PyTorch: `grad is None`) is skipped
//! entirely, so its state and step count do not advance and bias corrections are per tensor;
//! step counters are integers; every scalar that involves `1 - beta`, `beta^t` or `lr / ...` is
//! computed on the host in f64 and rounded to f32 once.
//!
//! Adding an optimizer: `shaders/x.wgsl`, `src/optim/x.rs` (config, `Rule` impl, presets and
//! test variants), and one row in the `optimizer_table!` invocation below.

pub mod adadelta;
pub mod adafactor;
pub mod adagrad;
pub mod adam;
pub mod adam_hd;
pub mod adamax;
pub mod adopt;
pub mod asgd;
pub mod lamb;
pub mod lars;
pub mod lion;
pub mod muon;
pub mod nadam;
pub mod radam;
pub mod rmsprop;
pub mod rprop;
pub mod schedule_free;
pub mod sgd;
pub mod sgd_hd;

pub(crate) mod book;
mod gpu;
pub(crate) mod hd;
mod tuner;

use std::fmt::Debug;
use std::sync::Arc;

use bytemuck::Pod;

pub use crate::arena::ChunkRange;
use crate::arena::TensorInfo;
use crate::error::Result;
use crate::shaders::KernelDef;

pub use adadelta::AdadeltaConfig;
pub use adafactor::AdafactorConfig;
pub use adagrad::AdagradConfig;
pub use adam::AdamConfig;
pub use adam_hd::AdamHdConfig;
pub use adamax::AdamaxConfig;
pub use adopt::AdoptConfig;
pub use asgd::AsgdConfig;
pub(crate) use book::Book;
pub use book::{ParamGroups, Select};
pub(crate) use gpu::half_window_binding;
pub use gpu::Optimizer;
pub(crate) use gpu::{check_learned, storage_buffer, table_bytes, window_binding, StateReset};
pub use lamb::LambConfig;
pub use lars::LarsConfig;
pub use lion::LionConfig;
pub use muon::{MuonAdjustLr, MuonConfig};
pub use nadam::NadamConfig;
pub use radam::RadamConfig;
pub use rmsprop::RmspropConfig;
pub use rprop::RpropConfig;
pub use schedule_free::{ScheduleFreeAdamWConfig, ScheduleFreeSgdConfig};
pub use sgd::SgdConfig;
pub use sgd_hd::{HdScope, SgdHdConfig};
pub use tuner::tune as tune_kernel;

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

/// An optimization algorithm: config, kernels, scalars and the host-side update.
///
/// `update` is the definition the GPU kernel is checked against; it must perform the same f32
/// operations in the same order as the kernel.
pub trait Rule:
    TableEntry + Clone + Debug + Default + PartialEq + Send + Sync + 'static + Into<OptimizerConfig>
{
    /// Per-group scalars and flags, mirrored field by field by the kernel's `<Kernel>Hyper`.
    type Hyper: Pod + Debug + Send + Sync;
    /// Per-tensor scalars for one step, mirrored by the kernel's `<Kernel>Tensor`.
    /// The first two fields are `live: u32` and `group: u32`; all-zero means "frozen".
    type TensorStep: Pod + Debug + Send + Sync;
    /// The update pass (the last pass; its layout is the family's).
    const KERNEL: KernelDef;

    /// Short name of this configuration (`"adam"`, `"adamw"`, ...).
    fn name(&self) -> &'static str;
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

/// What every config in the library's table has, written by `optimizer_table!` (from the
/// config's `lr` field and its table row), so a rule's own file does not repeat it.
pub trait TableEntry {
    /// Learning rate.
    fn lr(&self) -> f64;
    /// Sets the learning rate (already validated).
    fn set_lr(&mut self, lr: f64);
    /// This configuration, if `c` is of this algorithm.
    fn of(c: &OptimizerConfig) -> Option<&Self>;
}

/// Builds something for a rule type chosen at run time (see [`OptimizerConfig::visit`]).
pub(crate) trait RuleVisitor {
    type Out;
    fn visit<R: Rule>(self, configs: Vec<R>) -> Self::Out;
}

/// One named configuration of the library's table (see [`OptimizerConfig::presets`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    /// Name (`"sgd-momentum"`, `"adamw"`, ...), unique in the table.
    pub name: &'static str,
    /// The configuration.
    pub config: OptimizerConfig,
}

macro_rules! optimizer_table {
    ($($(#[$doc:meta])* $variant:ident($config:ident) = $family:literal;)*) => {
        /// Any optimizer configuration of the library, for choosing the algorithm at run time.
        /// Its variants are the library's table of optimizers: tests, `optbench` and the
        /// criterion benches iterate [`OptimizerConfig::presets`] and
        /// [`OptimizerConfig::variants`].
        #[derive(Debug, Clone, PartialEq)]
        pub enum OptimizerConfig {
            $($(#[$doc])* $variant($config),)*
        }

        $(
            impl From<$config> for OptimizerConfig {
                fn from(c: $config) -> Self {
                    OptimizerConfig::$variant(c)
                }
            }
        )*

        impl OptimizerConfig {
            /// The algorithm family (`"sgd"`, `"adam"`, ...): configurations of one family can
            /// share a segment, and a group's configuration can only be replaced by one of its
            /// family.
            pub fn family(&self) -> &'static str {
                match self { $(OptimizerConfig::$variant(_) => $family,)* }
            }

            /// Short name of the configuration.
            pub fn name(&self) -> &'static str {
                match self { $(OptimizerConfig::$variant(c) => c.name(),)* }
            }

            /// The name and every field that differs from the family's `Default` (PyTorch's),
            /// e.g. `"sgd-momentum lr=0.01 momentum=0.9 maximize=true"`: a readable label
            /// for tables.
            pub fn describe(&self) -> String {
                match self {
                    $(OptimizerConfig::$variant(c) => {
                        describe_fields(c.name(), &format!("{c:?}"), &format!("{:?}", $config::default()))
                    })*
                }
            }

            /// Bytes moved per element per step (SPEC §5).
            pub fn bytes_per_element(&self) -> u64 {
                match self { $(OptimizerConfig::$variant(c) => c.bytes_per_element(),)* }
            }

            /// Learning rate.
            pub fn lr(&self) -> f64 {
                match self { $(OptimizerConfig::$variant(c) => c.lr(),)* }
            }

            pub(crate) fn set_lr(&mut self, lr: f64) {
                match self { $(OptimizerConfig::$variant(c) => c.set_lr(lr),)* }
            }

            /// Checks the hyperparameters the way PyTorch's constructor does.
            pub fn validate(&self) -> Result<()> {
                match self { $(OptimizerConfig::$variant(c) => c.validate(),)* }
            }

            /// State buffers this configuration keeps (PyTorch's names).
            pub fn states(&self) -> Vec<StateSpec> {
                match self { $(OptimizerConfig::$variant(c) => c.states(),)* }
            }

            /// Host-side scalar states this configuration keeps per tensor (PyTorch's names).
            pub fn scalar_names(&self) -> &'static [&'static str] {
                match self { $(OptimizerConfig::$variant(c) => c.scalar_names(),)* }
            }

            pub(crate) fn init_scalars(&self) -> Scalars {
                match self { $(OptimizerConfig::$variant(c) => c.init_scalars(),)* }
            }

            /// Host-side scalar states this configuration keeps per parameter group.
            pub fn group_scalar_names(&self) -> &'static [&'static str] {
                match self { $(OptimizerConfig::$variant(c) => c.group_scalar_names(),)* }
            }

            pub(crate) fn init_group_scalars(&self) -> Scalars {
                match self { $(OptimizerConfig::$variant(c) => c.init_group_scalars(),)* }
            }

            /// Whether this configuration learns its lr on the device (hypergradient descent;
            /// see `Optimizer::read_learned_lr`).
            pub fn learns_lr(&self) -> bool {
                match self { $(OptimizerConfig::$variant(_) => <$config as Rule>::learns_lr(),)* }
            }

            /// Whether this configuration has train and eval modes (Schedule-Free).
            pub fn has_train_mode(&self) -> bool {
                match self { $(OptimizerConfig::$variant(_) => <$config as Rule>::swap_kernel().is_some(),)* }
            }

            pub(crate) fn check_mode_swap(&self, to_train: bool) -> Result<()> {
                match self { $(OptimizerConfig::$variant(c) => c.check_mode_swap(to_train),)* }
            }

            pub(crate) fn check_tensor(&self, info: &TensorInfo) -> Result<()> {
                match self { $(OptimizerConfig::$variant(c) => c.check_tensor(info),)* }
            }

            pub(crate) fn state_shape(&self, state: &str, info: &TensorInfo) -> Option<Vec<usize>> {
                match self { $(OptimizerConfig::$variant(c) => c.state_shape(state, info),)* }
            }

            pub(crate) fn check_peer(&self, other: &OptimizerConfig) -> Result<()> {
                match (self, other) {
                    $((OptimizerConfig::$variant(a), OptimizerConfig::$variant(b)) => a.check_peer(b),)*
                    // Different families never share a segment.
                    #[allow(unreachable_patterns)]
                    _ => Ok(()),
                }
            }

            /// The passes of one step.
            pub fn passes(&self) -> Vec<Pass> {
                match self { $(OptimizerConfig::$variant(_) => <$config as Rule>::passes(),)* }
            }

            /// Every kernel of every optimizer in the table.
            pub fn kernels_of_all() -> Vec<KernelDef> {
                let mut out = Vec::new();
                $(out.extend(<$config as Rule>::passes().iter().map(Pass::kernel));
                  out.extend(<$config as Rule>::swap_kernel());)*
                out
            }

            /// The named configurations of the table, in table order.
            pub fn presets() -> Vec<Preset> {
                let mut out = Vec::new();
                $(out.extend(<$config as Rule>::presets().into_iter().map(|(name, c)| Preset {
                    name,
                    config: OptimizerConfig::$variant(c),
                }));)*
                out
            }

            /// Every flag combination of every optimizer, for the tests and `optbench verify`.
            pub fn variants() -> Vec<OptimizerConfig> {
                let mut out = Vec::new();
                $(out.extend(<$config as Rule>::variants().into_iter().map(OptimizerConfig::$variant));)*
                out
            }

            /// Every algorithm family of the table, in table order.
            pub fn families() -> &'static [&'static str] {
                &[$($family,)*]
            }

            /// The configuration's fields as a JSON object under PyTorch's `param_groups` keys
            /// where they differ from the field names (`betas` for `beta1`/`beta2`), as a
            /// checkpoint stores them.
            pub(crate) fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
                let v = match self { $(OptimizerConfig::$variant(c) => serde_json::to_value(c),)* };
                let mut m = match v {
                    Ok(serde_json::Value::Object(m)) => m,
                    // A struct of numbers and flags always serializes to an object.
                    _ => serde_json::Map::new(),
                };
                json_keys::to_torch(&mut m);
                m
            }

            /// A configuration of `family` from a checkpoint's group object: known keys are
            /// read (PyTorch's spellings too), missing ones take the family's `Default`, and
            /// unknown ones (`foreach`, `capturable`, `params`, ...) are ignored, as PyTorch's
            /// `load_state_dict` keeps them without use. Not validated here.
            pub(crate) fn from_json(
                family: &str,
                mut m: serde_json::Map<String, serde_json::Value>,
            ) -> std::result::Result<Self, String> {
                json_keys::from_torch(&mut m)?;
                let v = serde_json::Value::Object(m);
                $(if family == $family {
                    return serde_json::from_value::<$config>(v)
                        .map(OptimizerConfig::$variant)
                        .map_err(|e| format!("{family} hyperparameters: {e}"));
                })*
                Err(format!(
                    "unknown optimizer family {family:?} (this library has {:?})",
                    Self::families()
                ))
            }

            /// Calls `v` with the rule type of `configs` (all of one family, non-empty).
            pub(crate) fn visit<V: RuleVisitor>(configs: &[&OptimizerConfig], v: V) -> V::Out {
                match configs[0] {
                    $(OptimizerConfig::$variant(_) => v.visit::<$config>(
                        configs.iter().filter_map(|c| <$config as TableEntry>::of(c).cloned()).collect(),
                    ),)*
                }
            }
        }

        $(
            impl TableEntry for $config {
                fn lr(&self) -> f64 {
                    self.lr
                }

                fn set_lr(&mut self, lr: f64) {
                    self.lr = lr;
                }

                fn of(c: &OptimizerConfig) -> Option<&Self> {
                    match c {
                        OptimizerConfig::$variant(x) => Some(x),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    }
                }
            }
        )*
    };
}

optimizer_table! {
    /// torch.optim.SGD
    Sgd(SgdConfig) = "sgd";
    /// torch.optim.Adam / AdamW
    Adam(AdamConfig) = "adam";
    /// torch.optim.RMSprop
    Rmsprop(RmspropConfig) = "rmsprop";
    /// torch.optim.Adagrad
    Adagrad(AdagradConfig) = "adagrad";
    /// LARS (timm)
    Lars(LarsConfig) = "lars";
    /// LAMB (timm)
    Lamb(LambConfig) = "lamb";
    /// torch.optim.NAdam (NAdamW with decoupled_weight_decay)
    Nadam(NadamConfig) = "nadam";
    /// torch.optim.RAdam (RAdamW with decoupled_weight_decay)
    Radam(RadamConfig) = "radam";
    /// torch.optim.Adamax
    Adamax(AdamaxConfig) = "adamax";
    /// torch.optim.Adadelta
    Adadelta(AdadeltaConfig) = "adadelta";
    /// torch.optim.ASGD
    Asgd(AsgdConfig) = "asgd";
    /// torch.optim.Rprop
    Rprop(RpropConfig) = "rprop";
    /// Lion (timm)
    Lion(LionConfig) = "lion";
    /// ADOPT (timm)
    Adopt(AdoptConfig) = "adopt";
    /// AdamWScheduleFree (the schedulefree package)
    ScheduleFreeAdamW(ScheduleFreeAdamWConfig) = "schedule_free_adamw";
    /// SGDScheduleFree (the schedulefree package)
    ScheduleFreeSgd(ScheduleFreeSgdConfig) = "schedule_free_sgd";
    /// SGD-HD and SGDN-HD, hypergradient descent (Baydin et al. 2018)
    SgdHd(SgdHdConfig) = "sgd_hd";
    /// Adam-HD, hypergradient descent (Baydin et al. 2018)
    AdamHd(AdamHdConfig) = "adam_hd";
    /// torch.optim.Muon (2-D tensors only; Newton–Schulz in f32 on the batched matmul)
    Muon(MuonConfig) = "muon";
    /// torch.optim.Adafactor (factored row / column second moments for tensors of 2+ dims)
    Adafactor(AdafactorConfig) = "adafactor";
}

impl OptimizerConfig {
    /// The same configuration with another lr (checked when an optimizer is built with it).
    pub fn with_lr(mut self, lr: f64) -> Self {
        self.set_lr(lr);
        self
    }

    /// Whether this configuration runs on a mixed-precision arena (every family but Muon and
    /// Adafactor, whose own segments write only the f32 weights; on a 16-bit arena they are
    /// [`crate::Error::Unsupported`]).
    pub fn runs_mixed_precision(&self) -> bool {
        !matches!(self.family(), "muon" | "adafactor")
    }

    /// Whether this configuration's step is one elementwise pass (no reduction), whose small
    /// tensors share packed chunks: not LARS, LAMB, Lion, ADOPT, the hypergradient rules
    /// (passes that reduce), Muon or Adafactor (their own segments).
    pub fn is_elementwise(&self) -> bool {
        self.kernel_kind().0
    }

    /// Whether this configuration's passes take the work split chosen per adapter
    /// ([`crate::tune`]): every rule but Muon and Adafactor, whose own segments have their own
    /// shapes. The passes that reduce take it too: they fold a fixed set of virtual lanes
    /// whatever the split, so their sums keep one order.
    pub fn is_tuned(&self) -> bool {
        self.kernel_kind().1
    }

    /// (elementwise, tuned) of this configuration's rule.
    fn kernel_kind(&self) -> (bool, bool) {
        struct Kind;
        impl RuleVisitor for Kind {
            type Out = (bool, bool);
            fn visit<R: Rule>(self, _: Vec<R>) -> (bool, bool) {
                (tuner::elementwise::<R>(), tuner::tuned::<R>())
            }
        }
        Self::visit(&[self], Kind)
    }

    /// A preset by name.
    pub fn preset(name: &str) -> Option<OptimizerConfig> {
        Self::presets()
            .into_iter()
            .find(|p| p.name == name)
            .map(|p| p.config)
    }
}

/// An f64 field that may be infinite (ASGD's `t0 = -inf`), which JSON numbers cannot hold:
/// written as a number when finite and as `"inf"`, `"-inf"` or `"nan"` otherwise (Python's
/// `float()` spellings); read back from either.
pub(crate) mod json_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("nan")
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(f64),
        Str(String),
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::Num(x) => Ok(x),
            NumOrStr::Str(s) => match s.as_str() {
                "inf" | "Infinity" => Ok(f64::INFINITY),
                "-inf" | "-Infinity" => Ok(f64::NEG_INFINITY),
                "nan" | "NaN" => Ok(f64::NAN),
                other => Err(serde::de::Error::custom(format!(
                    "expected a number, \"inf\", \"-inf\" or \"nan\", got {other:?}"
                ))),
            },
        }
    }
}

/// PyTorch's `param_groups` spellings of configuration fields.
mod json_keys {
    use serde_json::{Map, Value};

    /// `beta1`, `beta2` -> `betas: [beta1, beta2]` (torch's Adam family, NAdam, RAdam, Adamax).
    pub(super) fn to_torch(m: &mut Map<String, Value>) {
        if let (Some(b1), Some(b2)) = (m.get("beta1").cloned(), m.get("beta2").cloned()) {
            m.remove("beta1");
            m.remove("beta2");
            m.insert("betas".into(), Value::Array(vec![b1, b2]));
        }
    }

    /// The inverse of [`to_torch`]; a `betas` that is not a pair of numbers is an error.
    pub(super) fn from_torch(m: &mut Map<String, Value>) -> Result<(), String> {
        if let Some(b) = m.remove("betas") {
            match b.as_array().map(|a| a.as_slice()) {
                Some([b1, b2]) if b1.is_number() && b2.is_number() => {
                    m.insert("beta1".into(), b1.clone());
                    m.insert("beta2".into(), b2.clone());
                }
                _ => return Err(format!("betas must be a pair of numbers, got {b}")),
            }
        }
        Ok(())
    }
}

/// `name` followed by the `field=value` pairs of `debug` (a struct's `Debug` text) that differ
/// from `default_debug`.
fn describe_fields(name: &str, debug: &str, default_debug: &str) -> String {
    let fields = |s: &str| -> Vec<String> {
        let inner = s.split_once('{').map_or("", |x| x.1).trim_end_matches('}');
        inner.split(", ").map(|f| f.trim().to_string()).collect()
    };
    let defaults = fields(default_debug);
    let mut out = name.to_string();
    for f in fields(debug) {
        if !defaults.contains(&f) && !f.is_empty() {
            out.push(' ');
            out.push_str(&f.replacen(": ", "=", 1));
        }
    }
    out
}

/// A predicate over tensors, for [`Select::matching`].
pub type TensorFilter = Arc<dyn Fn(&TensorInfo) -> bool + Send + Sync>;

/// torch.lerp's CPU formula (mirrors `lerp_torch` in common.wgsl).
#[inline]
pub(crate) fn lerp_torch(start: f32, end: f32, w: f32) -> f32 {
    if w.abs() < 0.5 {
        start + w * (end - start)
    } else {
        end - (end - start) * (1.0 - w)
    }
}

/// Flag bit for `maximize`.
pub(crate) fn maximize_flag(maximize: bool) -> u32 {
    if maximize {
        crate::shaders::FLAG_MAXIMIZE
    } else {
        0
    }
}

/// Writes the common parameter-group, freezing, step-count and state methods, once, for the
/// GPU and the CPU optimizer, so the two expose the same names and argument types. The type
/// must have a `book: Book` field and `fn read_state_impl(&self, state, tensor index)`.
macro_rules! common_optimizer_methods {
    () => {
        /// Number of parameter groups.
        pub fn groups(&self) -> usize {
            self.book.groups.len()
        }

        /// The configuration of group `group` (its current lr included).
        pub fn group_config(&self, group: usize) -> $crate::Result<&$crate::OptimizerConfig> {
            Ok(&self.book.group(group)?.config)
        }

        /// Replaces group `group`'s configuration with one of the same algorithm family. It
        /// must keep no state buffer its segment did not allocate at construction. The new
        /// configuration's lr becomes the group's base lr too. Nothing changes on error.
        pub fn set_group_config(
            &mut self,
            group: usize,
            config: impl Into<$crate::OptimizerConfig>,
        ) -> $crate::Result<()> {
            let config = config.into();
            let allowed = self.book.segment_states(self.book.group(group)?.segment);
            self.book.set_group_config(group, config, &allowed)
        }

        /// Current learning rate of group `group`.
        pub fn group_lr(&self, group: usize) -> $crate::Result<f64> {
            Ok(self.book.group(group)?.config.lr())
        }

        /// Sets the learning rate of group `group` alone (PyTorch:
        /// `param_groups[g]["lr"] = lr`). Its base lr is kept. A group that learns its lr
        /// (hypergradient descent) restarts its learned lr from `lr` at its next step.
        pub fn set_group_lr(&mut self, group: usize, lr: f64) -> $crate::Result<()> {
            self.book.set_group_lr(group, lr)
        }

        /// The lr group `group` was built with (PyTorch's `initial_lr`, what schedules scale).
        pub fn base_lr(&self, group: usize) -> $crate::Result<f64> {
            Ok(self.book.group(group)?.base_lr)
        }

        /// Sets every group's learning rate to `lr`.
        pub fn set_lr(&mut self, lr: f64) -> $crate::Result<()> {
            self.book.set_lr(lr)
        }

        /// Sets every group's learning rate to its base lr times `factor` (what a
        /// multiplicative schedule does).
        pub fn set_lr_factor(&mut self, factor: f64) -> $crate::Result<()> {
            self.book.set_lr_factor(factor)
        }

        /// The parameter group of a tensor (`None`: the tensor is in no group and never
        /// updated).
        pub fn group_of(&self, tensor: &str) -> $crate::Result<Option<usize>> {
            let i = self.book.index_of(tensor)?;
            Ok(self.book.loc[i].map(|l| l.group))
        }

        /// Freezes (PyTorch: `grad = None`) or unfreezes a tensor for the following steps. A
        /// frozen tensor's params, state and step count are left exactly as they are, and
        /// an attached clipper leaves its gradient out of the norm.
        pub fn set_frozen(&mut self, tensor: &str, frozen: bool) -> $crate::Result<()> {
            let i = self.book.index_of(tensor)?;
            self.book.frozen[i] = frozen;
            Ok(())
        }

        /// Whether a tensor is frozen.
        pub fn is_frozen(&self, tensor: &str) -> $crate::Result<bool> {
            Ok(self.book.frozen[self.book.index_of(tensor)?])
        }

        /// Steps this tensor has taken (PyTorch `state["step"]`).
        pub fn step_count(&self, tensor: &str) -> $crate::Result<u64> {
            Ok(self.book.steps[self.book.index_of(tensor)?])
        }

        /// Every state name any segment keeps, under PyTorch's names, in slot order.
        pub fn state_names(&self) -> Vec<&'static str> {
            self.book.all_state_names()
        }

        /// The state names PyTorch keeps for this tensor (its group's configuration's).
        pub fn tensor_state_names(&self, tensor: &str) -> $crate::Result<Vec<&'static str>> {
            let i = self.book.index_of(tensor)?;
            Ok(self.book.tensor_state_names(i))
        }

        /// One tensor's state buffer `state`, read back to the host. A tensor whose group's
        /// configuration keeps no such state (or that is in no group) is
        /// [`$crate::Error::UnknownState`].
        pub fn read_state(&self, state: &str, tensor: &str) -> $crate::Result<Vec<f32>> {
            let i = self.book.index_of(tensor)?;
            self.book.check_state(state, i)?;
            if let Some(slot) = self.book.scalar_slot(state, i) {
                // A host scalar (PyTorch keeps it as a one-element tensor).
                return Ok(vec![self.book.scalars[i][slot] as f32]);
            }
            self.read_state_impl(state, i)
        }

        /// Group `group`'s host-side scalar state `state` (Schedule-Free's `k`, `lr_max`,
        /// `weight_sum`, `scheduled_lr`; see `OptimizerConfig::group_scalar_names`).
        pub fn group_state(&self, group: usize, state: &str) -> $crate::Result<f64> {
            let g = self.book.group(group)?;
            let names = g.config.group_scalar_names();
            match names.iter().position(|&n| n == state) {
                Some(slot) => Ok(self.book.group_scalars[group][slot]),
                None => Err($crate::Error::UnknownState {
                    name: state.to_string(),
                    available: names.to_vec(),
                }),
            }
        }

        /// Whether the optimizer is in train mode (see `set_train_mode`). Optimizers start in
        /// train mode; only groups with modes (Schedule-Free) care.
        pub fn is_train_mode(&self) -> bool {
            self.book.train_mode
        }

        /// Short name of the optimizer: its groups' configuration names, joined by `+` when
        /// they differ (`"lars+adamw"`).
        pub fn name(&self) -> String {
            self.book.name()
        }
    };
}
pub(crate) use common_optimizer_methods;
