#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod arena;
// Measurement tools for optbench; only with the `bench` feature (see src/bench.rs's docs).
#[cfg(feature = "bench")]
pub mod bench;
pub mod context;
pub mod cpu;
pub mod dispatch;
pub mod error;
pub mod norm;
pub mod optim;
pub mod pipeline;
pub mod readback;
pub mod shaders;

pub use arena::{ParamArena, ParamLayout, TensorInfo, TensorSpec};
pub use context::{ContextOptions, GpuContext, ADAPTER_ENV};
pub use cpu::{CpuOptimizer, DynCpuOptimizer};
pub use error::{Error, Result};
pub use norm::{GradClipper, NormReducer, NormType};
pub use optim::{
    AdagradConfig, AdamConfig, DynOptimizer, GroupHyper, LambConfig, LarsConfig, Optimizer,
    OptimizerConfig, RmspropConfig, Rule, SgdConfig,
};

/// `torch.optim.SGD` on the GPU.
pub type Sgd = Optimizer<SgdConfig>;
/// `torch.optim.Adam` / `torch.optim.AdamW` on the GPU (see [`AdamConfig::adamw`]).
pub type Adam = Optimizer<AdamConfig>;
/// `torch.optim.RMSprop` on the GPU.
pub type Rmsprop = Optimizer<RmspropConfig>;
/// `torch.optim.Adagrad` on the GPU.
pub type Adagrad = Optimizer<AdagradConfig>;
/// LARS (timm's `Lars`) on the GPU.
pub type Lars = Optimizer<LarsConfig>;
/// LAMB (timm's `Lamb`) on the GPU.
pub type Lamb = Optimizer<LambConfig>;
