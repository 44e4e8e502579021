//! The library's table of optimizers: `optimizer_table!` and its one invocation, which make
//! [`OptimizerConfig`] (any configuration, chosen at run time), the presets, the JSON mapping
//! of checkpoints and the kernel list. It imports the rules; the engines import it; no rule
//! imports it.

use crate::arena::TensorInfo;
use crate::error::Result;
use crate::shaders::KernelDef;

use super::adadelta::AdadeltaConfig;
use super::adafactor::AdafactorConfig;
use super::adagrad::AdagradConfig;
use super::adam::AdamConfig;
use super::adam_hd::AdamHdConfig;
use super::adamax::AdamaxConfig;
use super::adopt::AdoptConfig;
use super::asgd::AsgdConfig;
use super::lamb::LambConfig;
use super::lars::LarsConfig;
use super::lion::LionConfig;
use super::muon::MuonConfig;
use super::nadam::NadamConfig;
use super::radam::RadamConfig;
use super::rmsprop::RmspropConfig;
use super::rprop::RpropConfig;
use super::rule::{MomentumKind, Pass, Rule, Scalars, SegmentKind, StateSpec, TableEntry};
use super::schedule_free::{ScheduleFreeAdamWConfig, ScheduleFreeSgdConfig};
use super::sgd::SgdConfig;
use super::sgd_hd::SgdHdConfig;

/// A rule of the library's table: a [`Rule`] whose configuration is one variant of
/// [`OptimizerConfig`] (written by `optimizer_table!`), which is what lets the engines pick a
/// group's configuration out of the table.
pub(crate) trait Row: Rule + Into<OptimizerConfig> {
    /// This configuration, if `c` is of this algorithm.
    fn of(c: &OptimizerConfig) -> Option<&Self>;
}

/// Builds something for a rule type chosen at run time (see [`OptimizerConfig::visit`]).
pub(crate) trait RuleVisitor {
    type Out;
    fn visit<R: Row>(self, configs: Vec<R>) -> Self::Out;
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

            /// The momentum (or β1) a cycling schedule drives, and which it is (`None`: the
            /// rule has neither; see [`Rule::momentum_mut`]).
            pub fn momentum(&self) -> Option<(MomentumKind, f64)> {
                let mut c = self.clone();
                match &mut c { $(OptimizerConfig::$variant(c) => c.momentum_mut().map(|(k, v)| (k, *v)),)* }
            }

            /// Sets the momentum (or β1), unchecked (an optimizer's setter validates it); false,
            /// and no change, for a rule with neither.
            pub fn set_momentum(&mut self, value: f64) -> bool {
                let m = match self { $(OptimizerConfig::$variant(c) => c.momentum_mut(),)* };
                m.map(|(_, v)| *v = value).is_some()
            }

            /// The weight decay (`None`: the rule has none).
            pub fn weight_decay(&self) -> Option<f64> {
                let mut c = self.clone();
                match &mut c { $(OptimizerConfig::$variant(c) => c.weight_decay_mut().map(|v| *v),)* }
            }

            /// Sets the weight decay, unchecked; false, and no change, for a rule without one.
            pub fn set_weight_decay(&mut self, value: f64) -> bool {
                let w = match self { $(OptimizerConfig::$variant(c) => c.weight_decay_mut(),)* };
                w.map(|v| *v = value).is_some()
            }

            /// Full reads of each gradient per step, where known ([`Rule::grad_reads`]).
            pub fn grad_reads(&self) -> Option<u64> {
                match self { $(OptimizerConfig::$variant(c) => c.grad_reads(),)* }
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
                        configs.iter().filter_map(|c| <$config as Row>::of(c).cloned()).collect(),
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
            }

            impl super::rule::sealed::Sealed for $config {}

            impl Row for $config {
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
        self.segment_kind() == SegmentKind::Chunked
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

    /// The segment type of the GPU engine that runs this configuration.
    pub fn segment_kind(&self) -> SegmentKind {
        struct Kind;
        impl RuleVisitor for Kind {
            type Out = SegmentKind;
            fn visit<R: Row>(self, _: Vec<R>) -> SegmentKind {
                R::SEGMENT
            }
        }
        Self::visit(&[self], Kind)
    }

    /// (elementwise, tuned) of this configuration's rule.
    fn kernel_kind(&self) -> (bool, bool) {
        struct Kind;
        impl RuleVisitor for Kind {
            type Out = (bool, bool);
            fn visit<R: Row>(self, _: Vec<R>) -> (bool, bool) {
                (R::elementwise(), R::tuned())
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

/// Every kernel of the library: the norm family, the copy kernel, the AMP decision, the
/// matmul, the Lookahead sync, and every pass of every optimizer in the table (what the naga
/// and layout tests walk).
pub fn all_kernels() -> Vec<KernelDef> {
    use crate::shaders::*;
    let mut out = vec![NORM_PARTIALS, NORM_COMBINE, NORM_GLOBAL, COPY, AMP_DECIDE];
    out.push(LOOKAHEAD_SYNC);
    out.push(MATMUL);
    for k in OptimizerConfig::kernels_of_all() {
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}
