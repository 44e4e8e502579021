#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
// No panic path from the public API: bad input is a typed error. These lints keep `unwrap`,
// `expect`, `panic!` and friends out of the library (tests may use them). Indexing is not
// linted (`clippy::indexing_slicing`): the engine indexes tables whose lengths it built and
// checked at construction, and every length that comes from outside (slices, images,
// checkpoint tensors, shapes) is checked before use, which the error tests and the checkpoint
// fuzz target (fuzz/) exercise; the checkpoint parser reads outside bytes only through
// length-checked accessors (`chunks_exact`, matched lengths, `get`).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]
#![warn(missing_docs)]

// Kernel sources are composed by a macro defined here, so this module comes first.
#[macro_use]
pub mod shaders;

pub mod amp;
pub(crate) mod amp_gpu;
pub mod arena;
pub(crate) mod autotune;
// Measurement tools for optbench; only with the `bench` feature (see src/bench.rs's docs).
#[cfg(feature = "bench")]
pub mod bench;
pub mod checkpoint;
pub mod context;
pub mod cpu;
pub(crate) mod dispatch;
pub mod error;
pub(crate) mod gpu_buffers;
pub mod lookahead;
pub mod matmul;
pub mod norm;
pub mod optim;
pub(crate) mod pipeline;
pub mod precision;
pub mod readback;
pub mod schedule;
pub mod tune;

pub use amp::{AmpConfig, AmpState, GradScalerConfig, LossScale};
pub use arena::{ParamArena, ParamLayout, SegmentLayout, TensorInfo, TensorSpec};
pub use checkpoint::{Checkpoint, PendingCheckpoint};
pub use context::{ContextOptions, GpuContext, ResourceCounts, ADAPTER_ENV};
pub use cpu::CpuOptimizer;
pub use error::{Error, Result};
pub use lookahead::{CpuLookahead, Lookahead, LookaheadConfig, LookaheadVariant};
pub use matmul::{BatchedMatmul, MatmulProblem};
pub use norm::{GradClipper, NormReducer, NormSource, NormType};
pub use optim::AdafactorConfig;
pub use optim::{
    AdadeltaConfig, AdagradConfig, AdamConfig, AdamaxConfig, AdoptConfig, AsgdConfig, LambConfig,
    LarsConfig, LionConfig, MuonAdjustLr, MuonConfig, NadamConfig, Optimizer, OptimizerConfig,
    ParamGroupTable, ParamGroups, Preset, RadamConfig, RmspropConfig, RpropConfig, Rule,
    ScheduleFreeAdamWConfig, ScheduleFreeSgdConfig, Select, SgdConfig,
};
pub use optim::{AdamHdConfig, HdScope, SgdHdConfig};
pub use precision::{HalfPath, Precision, PrecisionOptions, StorageType};
pub use schedule::{
    ChainedScheduler, ConstantLR, CosineAnnealingLR, CosineAnnealingWarmRestarts, CyclicLR,
    ExponentialLR, HostGroups, LambdaLR, LinearLR, LrSchedule, MultiStepLR, MultiplicativeLR,
    OneCycleLR, PolynomialLR, ReduceLROnPlateau, Scheduled, SequentialLR, StepLR,
};
