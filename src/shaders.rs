//! Every WGSL kernel, embedded at compile time. Each kernel is `common.wgsl` followed by its
//! family's file, joined with `concat!` (`kernel_source!`): no build script, no runtime
//! string work, no templating. A kernel is described by a [`KernelDef`] that sits beside the
//! Rust code that dispatches it (each optimizer module defines its own), and compiled once per
//! context through the pipeline cache, keyed by the definition and its WGSL `override`
//! constants. The Rust twins of the WGSL constants live here; `tests/shaders.rs` checks they
//! agree.

use crate::precision::HalfPath;

/// Invocations per workgroup (WGSL `WG_SIZE`).
pub const WG_SIZE: u32 = 256;
/// vec4s each invocation updates per chunk (WGSL `VEC_PER_LANE`).
pub const VEC_PER_LANE: u32 = 4;
/// Elements per chunk, the unit of work of one workgroup (WGSL `CHUNK`).
pub const CHUNK: u32 = WG_SIZE * VEC_PER_LANE * 4;

/// Most parameter groups one segment holds (WGSL `MAX_SEGMENT_GROUPS`): the per-group table is
/// a fixed-size uniform array.
pub const MAX_SEGMENT_GROUPS: u32 = 256;

/// WGSL `FLAG_MAXIMIZE`: negate the gradient first.
pub const FLAG_MAXIMIZE: u32 = 1;
/// WGSL `FLAG_GRAD_SCALE`: multiply the gradient by `aux[0]` (a clip coefficient) first.
pub const FLAG_GRAD_SCALE: u32 = 2;

/// Workgroup size of the per-tensor reduction passes (WGSL `RED_SIZE` in reduce.wgsl).
pub const RED_SIZE: u32 = 32;
/// Virtual lanes of a per-chunk reduction (WGSL `RED_LANES`): lane l folds the vec4s l,
/// l + RED_LANES, ... of its chunk, whatever the workgroup size, so sums keep one order.
pub const RED_LANES: u32 = 256;
/// vec4s per virtual lane (WGSL `RED_VEC`); `RED_LANES * RED_VEC * 4 == CHUNK`.
pub const RED_VEC: u32 = 4;

/// The composed sources of a kernel file ([`KernelSources`]): `common.wgsl`, the storage
/// prelude (`io_f32.wgsl`; `half.wgsl` + `io_packed16.wgsl` for the packed mixed-precision
/// variant; `enable_f16.wgsl` first and `half.wgsl` + `io_native16.wgsl` for the native one;
/// `half.wgsl` + `io_model16.wgsl` for a 16-bit model over f32 gradients), then (with `reduce`)
/// `reduce.wgsl`, then (with `+`) one shared family file, then `shaders/<file>`:
/// `kernel_source!(reduce "hd.wgsl" + "sgd_hd.wgsl")`; with `elementwise`, `elementwise.wgsl`
/// (the chunk body of every elementwise pass) instead of `reduce.wgsl`:
/// `kernel_source!(elementwise "adam.wgsl")`. WGSL module-scope declarations may come in any
/// order, so a shared file may use the bindings and functions the family file declares after
/// it.
#[macro_export]
#[doc(hidden)]
macro_rules! kernel_source {
    ($file:literal) => {
        $crate::kernel_source!(@compose [] $file)
    };
    (elementwise $file:literal) => {
        $crate::kernel_source!(@compose ["elementwise.wgsl"] $file)
    };
    (reduce $file:literal) => {
        $crate::kernel_source!(@compose ["reduce.wgsl"] $file)
    };
    (reduce $shared:literal + $file:literal) => {
        $crate::kernel_source!(@compose ["reduce.wgsl", $shared] $file)
    };
    (@compose [$($mid:literal),*] $file:literal) => {
        $crate::shaders::KernelSources {
            plain: concat!(
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/common.wgsl")),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/io_f32.wgsl")),
                $(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $mid)),)*
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file))
            ),
            packed16: concat!(
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/common.wgsl")),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/half.wgsl")),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/io_packed16.wgsl")),
                $(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $mid)),)*
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file))
            ),
            native16: concat!(
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/enable_f16.wgsl")),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/common.wgsl")),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/half.wgsl")),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/io_native16.wgsl")),
                $(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $mid)),)*
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file))
            ),
            model16: concat!(
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/common.wgsl")),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/half.wgsl")),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/io_model16.wgsl")),
                $(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $mid)),)*
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file))
            ),
        }
    };
}

/// The compositions of one kernel file: over an f32 arena, and over a mixed-precision arena
/// (16-bit model copy and gradients, f32 master weights) on either [`HalfPath`].
#[derive(Debug, Clone, Copy)]
pub struct KernelSources {
    /// `common.wgsl` + `io_f32.wgsl` + the kernel.
    pub plain: &'static str,
    /// `common.wgsl` + `half.wgsl` + `io_packed16.wgsl` + the kernel ([`HalfPath::Packed`]).
    pub packed16: &'static str,
    /// `enable_f16.wgsl` + `common.wgsl` + `half.wgsl` + `io_native16.wgsl` + the kernel
    /// ([`HalfPath::Native`], needs `SHADER_F16`).
    pub native16: &'static str,
    /// `common.wgsl` + `half.wgsl` + `io_model16.wgsl` + the kernel: a 16-bit model copy over
    /// f32 gradients.
    pub model16: &'static str,
}

/// The common prelude on its own (for the constant-agreement test).
pub const COMMON: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/common.wgsl"));

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

/// Which binding convention a kernel follows (documented in common.wgsl, norm.wgsl and
/// copy.wgsl). Kernels with equal layouts share one bind group layout object, so one bind
/// group serves every pass of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayoutKind {
    /// An optimizer pass: group hyperparameters, window, chunks, tensor table, aux, params,
    /// grads, `state_slots` state buffers at 7.., and the reduction buffer at 10 when
    /// `partials`.
    Step {
        /// State buffers bound at 7, 8, 9.
        state_slots: u32,
        /// Whether binding 10 (`partials`) is bound.
        partials: bool,
    },
    /// The norm family (norm.wgsl).
    Norm,
    /// The streaming copy (copy.wgsl).
    Copy,
    /// The loss-scaling / non-finite-skip decision (amp.wgsl).
    Amp,
    /// The batched matmul (matmul.wgsl): problems, tiles, data.
    Matmul,
    /// Muon's momentum and apply passes (muon.wgsl).
    Muon,
    /// Adafactor's step (adafactor.wgsl): the bindings of [`LayoutKind::Muon`].
    Adafactor,
}

/// One compute kernel: one entry point of one composed shader.
#[derive(Debug, Clone, Copy)]
pub struct KernelDef {
    /// Entry point; unique across the library, and the label of every wgpu object made for
    /// this kernel.
    pub entry: &'static str,
    /// The composed WGSL source.
    pub source: &'static str,
    /// Its binding convention.
    pub layout: LayoutKind,
    /// The packed mixed-precision composition of the same kernel file, or `""` for kernels
    /// without one (the norms, copy, AMP, matmul, Muon).
    pub packed16: &'static str,
    /// The native-f16 mixed-precision composition, or `""`.
    pub native16: &'static str,
    /// Which storage prelude `source` was composed with ([`KernelDef::mixed`]):
    /// [`HalfPath::None`] for io_f32.wgsl; otherwise the kernel binds the model copy at 11.
    pub io: HalfPath,
    /// The model-copy-over-f32-gradients composition, or `""`.
    pub model16: &'static str,
    /// Whether `source` is that composition ([`KernelDef::mixed_f32_grads`]).
    pub f32_grads: bool,
}

impl PartialEq for KernelDef {
    fn eq(&self, other: &Self) -> bool {
        self.entry == other.entry && self.io == other.io && self.f32_grads == other.f32_grads
    }
}
impl Eq for KernelDef {}
impl std::hash::Hash for KernelDef {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.entry.hash(h);
        self.io.hash(h);
        self.f32_grads.hash(h);
    }
}

impl KernelDef {
    /// A kernel with its own bindings and no mixed-precision composition (Muon's, Adafactor's,
    /// the matmul's and the other standalone files).
    pub const fn standalone(entry: &'static str, source: &'static str, layout: LayoutKind) -> Self {
        Self {
            entry,
            source,
            layout,
            packed16: "",
            native16: "",
            io: HalfPath::None,
            model16: "",
            f32_grads: false,
        }
    }

    /// An optimizer pass with `state_slots` state buffers and no reduction buffer.
    pub const fn step(entry: &'static str, source: KernelSources, state_slots: u32) -> Self {
        Self {
            entry,
            source: source.plain,
            layout: LayoutKind::Step {
                state_slots,
                partials: false,
            },
            packed16: source.packed16,
            native16: source.native16,
            io: HalfPath::None,
            model16: source.model16,
            f32_grads: false,
        }
    }

    /// An optimizer pass of a family that reduces (LARS, LAMB): binds `partials` too.
    pub const fn reducing(entry: &'static str, source: KernelSources, state_slots: u32) -> Self {
        Self {
            entry,
            source: source.plain,
            layout: LayoutKind::Step {
                state_slots,
                partials: true,
            },
            packed16: source.packed16,
            native16: source.native16,
            io: HalfPath::None,
            model16: source.model16,
            f32_grads: false,
        }
    }

    /// The mixed-precision variant of an optimizer pass on `path` (the same entry point
    /// compiled from its `io_packed16.wgsl` or `io_native16.wgsl` composition, binding the
    /// model copy at 11), or of a norm pass over 16-bit gradients (packed only, no model
    /// copy); `None` where the kernel has none (or `path` is [`HalfPath::None`]).
    pub fn mixed(&self, path: HalfPath) -> Option<Self> {
        let source = match path {
            HalfPath::None => return None,
            HalfPath::Packed => self.packed16,
            HalfPath::Native => self.native16,
        };
        if source.is_empty() || !matches!(self.layout, LayoutKind::Step { .. } | LayoutKind::Norm) {
            return None;
        }
        Some(Self {
            source,
            io: path,
            ..*self
        })
    }

    /// The variant of an optimizer pass for a 16-bit model copy over f32 gradients
    /// (`io_model16.wgsl`, packed model copy at 11), or `None` where the kernel has none.
    pub fn mixed_f32_grads(&self) -> Option<Self> {
        if self.model16.is_empty() || !matches!(self.layout, LayoutKind::Step { .. }) {
            return None;
        }
        Some(Self {
            source: self.model16,
            io: HalfPath::Packed,
            f32_grads: true,
            ..*self
        })
    }

    /// Storage buffers the kernel binds (what `max_storage_buffers_per_shader_stage` must
    /// allow).
    pub fn storage_buffers(&self) -> u32 {
        self.bindings()
            .iter()
            .filter(|(_, k)| *k != BindKind::Uniform)
            .count() as u32
    }

    /// Entry point name.
    pub fn entry_point(&self) -> &'static str {
        self.entry
    }

    /// State buffers bound at 7.. (0 for non-optimizer kernels).
    pub fn state_slots(&self) -> u32 {
        match self.layout {
            LayoutKind::Step { state_slots, .. } => state_slots,
            _ => 0,
        }
    }

    /// Whether the kernel binds the reduction buffer `partials` (binding 10).
    pub fn uses_partials(&self) -> bool {
        matches!(self.layout, LayoutKind::Step { partials: true, .. })
    }

    /// The bind group layout entries, following the kernel's convention.
    pub fn bindings(&self) -> Vec<(u32, BindKind)> {
        match self.layout {
            LayoutKind::Norm => vec![
                (0, BindKind::Uniform),
                (1, BindKind::Uniform),
                (2, BindKind::Read),
                (3, BindKind::Read),
                (5, BindKind::ReadWrite),
                (6, BindKind::Read),
                (10, BindKind::ReadWrite),
                (12, BindKind::ReadWrite),
            ],
            LayoutKind::Amp => vec![
                (0, BindKind::Uniform),
                (1, BindKind::Read),
                (2, BindKind::Read),
                (3, BindKind::Read),
                (4, BindKind::ReadWrite),
                (5, BindKind::ReadWrite),
                (6, BindKind::ReadWrite),
            ],
            LayoutKind::Copy => vec![
                (0, BindKind::Uniform),
                (1, BindKind::Read),
                (2, BindKind::ReadWrite),
            ],
            LayoutKind::Matmul => vec![
                (0, BindKind::Read),
                (1, BindKind::Read),
                (2, BindKind::ReadWrite),
            ],
            LayoutKind::Muon | LayoutKind::Adafactor => vec![
                (0, BindKind::Read),
                (1, BindKind::Uniform),
                (2, BindKind::Read),
                (3, BindKind::Read),
                (4, BindKind::ReadWrite),
                (5, BindKind::Read),
                (6, BindKind::ReadWrite),
                (7, BindKind::ReadWrite),
            ],
            LayoutKind::Step {
                state_slots,
                partials,
            } => {
                let mut b = vec![
                    (0, BindKind::Uniform),
                    (1, BindKind::Uniform),
                    (2, BindKind::Read),
                    (3, BindKind::Read),
                    (4, BindKind::Read),
                    (5, BindKind::ReadWrite),
                    (6, BindKind::Read),
                ];
                b.extend((0..state_slots).map(|i| (7 + i, BindKind::ReadWrite)));
                if partials {
                    b.push((10, BindKind::ReadWrite));
                }
                if self.io != HalfPath::None {
                    b.push((11, BindKind::ReadWrite));
                }
                b
            }
        }
    }
}

/// `norm_partials` in norm.wgsl (per chunk).
pub const NORM_PARTIALS: KernelDef = KernelDef {
    entry: "norm_partials",
    source: kernel_source!(reduce "norm.wgsl").plain,
    layout: LayoutKind::Norm,
    packed16: kernel_source!(reduce "norm.wgsl").packed16,
    native16: "",
    io: HalfPath::None,
    model16: "",
    f32_grads: false,
};
/// `norm_combine` in norm.wgsl (per tensor).
pub const NORM_COMBINE: KernelDef = KernelDef {
    entry: "norm_combine",
    source: kernel_source!(reduce "norm.wgsl").plain,
    layout: LayoutKind::Norm,
    packed16: kernel_source!(reduce "norm.wgsl").packed16,
    native16: "",
    io: HalfPath::None,
    model16: "",
    f32_grads: false,
};
/// `norm_global` in norm.wgsl (one workgroup).
pub const NORM_GLOBAL: KernelDef = KernelDef {
    entry: "norm_global",
    source: kernel_source!(reduce "norm.wgsl").plain,
    layout: LayoutKind::Norm,
    packed16: kernel_source!(reduce "norm.wgsl").packed16,
    native16: "",
    io: HalfPath::None,
    model16: "",
    f32_grads: false,
};
/// `copy_vec4` in copy.wgsl: the streaming-copy baseline (its shape comes from `override`
/// constants in the pipeline key).
pub const COPY: KernelDef = KernelDef {
    entry: "copy_vec4",
    source: include_str!("../shaders/copy.wgsl"),
    layout: LayoutKind::Copy,
    packed16: "",
    native16: "",
    io: HalfPath::None,
    model16: "",
    f32_grads: false,
};

/// `matmul_tiles` in matmul.wgsl: the batched tiled matmul ([`crate::matmul::BatchedMatmul`]).
/// It stands alone (no common.wgsl prelude: its bindings are its own).
pub const MATMUL: KernelDef = KernelDef {
    entry: "matmul_tiles",
    source: include_str!("../shaders/matmul.wgsl"),
    layout: LayoutKind::Matmul,
    packed16: "",
    native16: "",
    io: HalfPath::None,
    model16: "",
    f32_grads: false,
};

/// `amp_decide` in amp.wgsl: loss scaling and the non-finite skip (one invocation).
pub const AMP_DECIDE: KernelDef = KernelDef {
    entry: "amp_decide",
    source: include_str!("../shaders/amp.wgsl"),
    layout: LayoutKind::Amp,
    packed16: "",
    native16: "",
    io: HalfPath::None,
    model16: "",
    f32_grads: false,
};

/// `lookahead_sync` in lookahead.wgsl (the optimizer-step binding convention, one state slot:
/// the slow weights).
pub const LOOKAHEAD_SYNC: KernelDef =
    KernelDef::step("lookahead_sync", crate::kernel_source!("lookahead.wgsl"), 1);
