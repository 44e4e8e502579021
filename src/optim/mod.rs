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
//! Rooms: [`rule`] (the trait, a leaf), one file per rule, [`table`] (the list of rules), then
//! the engines: `book` (bookkeeping both share), `segment` and `gpu` (the GPU engine), and
//! `crate::cpu` (the CPU engine). Adding an optimizer: `shaders/x.wgsl`, `src/optim/x.rs`
//! (config, `Rule` impl, presets and test variants), and one row in the `optimizer_table!`
//! invocation in `table.rs`.

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

pub(crate) mod adafactor_segment;
pub(crate) mod book;
pub(crate) mod common;
pub(crate) mod face;
pub(crate) mod gpu;
pub(crate) mod hd;
pub(crate) mod muon_segment;
pub mod rule;
pub(crate) mod segment;
pub mod table;
pub(crate) mod tuner;

pub use crate::arena::ChunkRange;
pub use adadelta::AdadeltaConfig;
pub use adafactor::AdafactorConfig;
pub use adagrad::AdagradConfig;
pub use adam::AdamConfig;
pub use adam_hd::AdamHdConfig;
pub use adamax::AdamaxConfig;
pub use adopt::AdoptConfig;
pub use asgd::AsgdConfig;
pub use book::{ParamGroups, Select, TensorFilter};
pub use face::ParamGroupTable;
pub use gpu::Optimizer;
pub use lamb::LambConfig;
pub use lars::LarsConfig;
pub use lion::LionConfig;
pub use muon::{MuonAdjustLr, MuonConfig};
pub use nadam::NadamConfig;
pub use radam::RadamConfig;
pub use rmsprop::RmspropConfig;
pub use rprop::RpropConfig;
pub use rule::{HyperCtx, Pass, Rule, Scalars, SegmentKind, StateSpec, TableEntry, MAX_SCALARS};
pub use schedule_free::{ScheduleFreeAdamWConfig, ScheduleFreeSgdConfig};
pub use sgd::SgdConfig;
pub use sgd_hd::{HdScope, SgdHdConfig};
pub use table::{OptimizerConfig, Preset};
pub use tuner::tune as tune_kernel;
