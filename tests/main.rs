//! The integration tests, one target (one link of wgpu on a 2-core machine instead of one per
//! file), organised by concept: each module is one subject; `optim/` holds the per-family
//! tests. `tests/tuning.rs` (it sets the process-wide WGPU_OPTIM_TUNE) and `tests/soak.rs`
//! (it counts wgpu objects while nothing else runs) are targets of their own.

mod common;

mod amp;
mod checkpoint;
mod cpu_reference;
mod errors;
mod gpu_vs_cpu;
mod lookahead;
mod matmul;
mod mixed_precision;
mod mlp_gradients;
mod norms;
mod optim;
mod param_groups;
mod robustness;
mod schedules;
mod shaders;
