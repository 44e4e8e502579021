//! Every WGSL kernel, embedded at compile time. Each kernel is `common.wgsl` followed by its
//! family's file, joined with `concat!`: no build script, no runtime string work, no templating.
//! The Rust twins of the WGSL constants live here; `tests/shaders.rs` checks they agree.

/// Invocations per workgroup (WGSL `WG_SIZE`).
pub const WG_SIZE: u32 = 256;
/// vec4s each invocation updates per chunk (WGSL `VEC_PER_LANE`).
pub const VEC_PER_LANE: u32 = 4;
/// Elements per chunk, the unit of work of one workgroup (WGSL `CHUNK`).
pub const CHUNK: u32 = WG_SIZE * VEC_PER_LANE * 4;

/// WGSL `FLAG_MAXIMIZE`: negate the gradient first.
pub const FLAG_MAXIMIZE: u32 = 1;
/// WGSL `FLAG_GRAD_SCALE`: multiply the gradient by `aux[0]` (a clip coefficient) first.
pub const FLAG_GRAD_SCALE: u32 = 2;

/// Workgroup size of the per-tensor reduction passes (WGSL `RED_SIZE` in reduce.wgsl).
pub const RED_SIZE: u32 = 32;

macro_rules! kernel {
    ($file:literal) => {
        concat!(
            include_str!("../shaders/common.wgsl"),
            include_str!(concat!("../shaders/", $file))
        )
    };
    (reduce $file:literal) => {
        concat!(
            include_str!("../shaders/common.wgsl"),
            include_str!("../shaders/reduce.wgsl"),
            include_str!(concat!("../shaders/", $file))
        )
    };
}

/// The common prelude on its own (for the constant-agreement test).
pub const COMMON: &str = include_str!("../shaders/common.wgsl");

/// How a binding is declared in a kernel's bind group layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindKind {
    /// `var<uniform>`
    Uniform,
    /// `var<storage, read>`
    Read,
    /// `var<storage, read_write>`
    ReadWrite,
}

/// Identity of one compute kernel (one entry point of one composed shader).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelId {
    /// `sgd_step` in sgd.wgsl
    SgdStep,
    /// `adam_step` in adam.wgsl
    AdamStep,
    /// `rmsprop_step` in rmsprop.wgsl
    RmspropStep,
    /// `adagrad_step` in adagrad.wgsl
    AdagradStep,
    /// `lars_norms` in lars.wgsl (per chunk)
    LarsNorms,
    /// `lars_ratio` in lars.wgsl (per tensor)
    LarsRatio,
    /// `lars_step` in lars.wgsl (per chunk)
    LarsStep,
    /// `lamb_moments` in lamb.wgsl (per chunk)
    LambMoments,
    /// `lamb_ratio` in lamb.wgsl (per tensor)
    LambRatio,
    /// `lamb_apply` in lamb.wgsl (per chunk)
    LambApply,
    /// `norm_partials` in norm.wgsl (per chunk)
    NormPartials,
    /// `norm_combine` in norm.wgsl (per tensor)
    NormCombine,
    /// `norm_global` in norm.wgsl (one workgroup)
    NormGlobal,
}

impl KernelId {
    /// Every kernel, for validation and warm-up.
    pub const ALL: [KernelId; 13] = [
        KernelId::SgdStep,
        KernelId::AdamStep,
        KernelId::RmspropStep,
        KernelId::AdagradStep,
        KernelId::LarsNorms,
        KernelId::LarsRatio,
        KernelId::LarsStep,
        KernelId::LambMoments,
        KernelId::LambRatio,
        KernelId::LambApply,
        KernelId::NormPartials,
        KernelId::NormCombine,
        KernelId::NormGlobal,
    ];

    /// The composed WGSL source.
    pub fn source(self) -> &'static str {
        match self {
            KernelId::SgdStep => kernel!("sgd.wgsl"),
            KernelId::AdamStep => kernel!("adam.wgsl"),
            KernelId::RmspropStep => kernel!("rmsprop.wgsl"),
            KernelId::AdagradStep => kernel!("adagrad.wgsl"),
            KernelId::LarsNorms | KernelId::LarsRatio | KernelId::LarsStep => {
                kernel!(reduce "lars.wgsl")
            }
            KernelId::LambMoments | KernelId::LambRatio | KernelId::LambApply => {
                kernel!(reduce "lamb.wgsl")
            }
            KernelId::NormPartials | KernelId::NormCombine | KernelId::NormGlobal => {
                kernel!(reduce "norm.wgsl")
            }
        }
    }

    /// Entry point name; also the label of every wgpu object made for this kernel.
    pub fn entry_point(self) -> &'static str {
        match self {
            KernelId::SgdStep => "sgd_step",
            KernelId::AdamStep => "adam_step",
            KernelId::RmspropStep => "rmsprop_step",
            KernelId::AdagradStep => "adagrad_step",
            KernelId::LarsNorms => "lars_norms",
            KernelId::LarsRatio => "lars_ratio",
            KernelId::LarsStep => "lars_step",
            KernelId::LambMoments => "lamb_moments",
            KernelId::LambRatio => "lamb_ratio",
            KernelId::LambApply => "lamb_apply",
            KernelId::NormPartials => "norm_partials",
            KernelId::NormCombine => "norm_combine",
            KernelId::NormGlobal => "norm_global",
        }
    }

    /// Number of optimizer state buffers the kernel binds at 7.. (unused ones get a dummy).
    pub fn state_slots(self) -> u32 {
        match self {
            KernelId::SgdStep | KernelId::AdagradStep => 1,
            KernelId::LarsNorms | KernelId::LarsRatio | KernelId::LarsStep => 1,
            KernelId::LambMoments | KernelId::LambRatio | KernelId::LambApply => 2,
            KernelId::AdamStep | KernelId::RmspropStep => 3,
            KernelId::NormPartials | KernelId::NormCombine | KernelId::NormGlobal => 0,
        }
    }

    /// Whether the kernel's family uses the reduction buffer `partials` (binding 10).
    pub fn uses_partials(self) -> bool {
        !matches!(
            self,
            KernelId::SgdStep | KernelId::AdamStep | KernelId::RmspropStep | KernelId::AdagradStep
        )
    }

    /// The bind group layout, following the convention documented in common.wgsl. Kernels of
    /// one family (LARS, LAMB, norms) share one layout, so one bind group serves every pass.
    pub fn bindings(self) -> Vec<(u32, BindKind)> {
        if matches!(
            self,
            KernelId::NormPartials | KernelId::NormCombine | KernelId::NormGlobal
        ) {
            return vec![
                (0, BindKind::Uniform),
                (1, BindKind::Uniform),
                (2, BindKind::Read),
                (3, BindKind::Read),
                (5, BindKind::ReadWrite),
                (6, BindKind::Read),
                (10, BindKind::ReadWrite),
                (12, BindKind::ReadWrite),
            ];
        }
        let mut b = vec![
            (0, BindKind::Uniform),
            (1, BindKind::Uniform),
            (2, BindKind::Read),
            (3, BindKind::Read),
            (4, BindKind::Read),
            (5, BindKind::ReadWrite),
            (6, BindKind::Read),
        ];
        b.extend((0..self.state_slots()).map(|i| (7 + i, BindKind::ReadWrite)));
        if self.uses_partials() {
            b.push((10, BindKind::ReadWrite));
        }
        b
    }
}
