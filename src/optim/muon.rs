//! Muon (`torch.optim.Muon`, PyTorch 2.15; SPEC-2 §2.8): momentum, then the quintic
//! Newton–Schulz iteration on every 2-D weight matrix, then a decoupled-decay update.
//!
//! ```text
//! B  = lerp(B, g, 1 - μ)                      # an EMA (torch's code, not its docstring)
//! U  = nesterov ? lerp(g, B, μ) : B
//! X  = U / max(‖U‖_F, eps)                    # on Uᵀ when rows > cols
//! repeat ns_steps:  A = X·Xᵀ;  Q = b·A + c·A·A;  X = a·X + Q·X
//! p  = p · (1 - lr·wd)
//! p  = p - lr_adj · X                         # lr_adj from adjust_lr (original: lr·sqrt(max(1, rows/cols)))
//! ```
//! torch runs the iteration in bfloat16; this runs it in f32 and matches torch's f32 variant of
//! the same code (the fixtures' `expected_ns_f32`) at the fp32 tolerance. For tall matrices the
//! iteration runs on the stored (untransposed) matrix as `A = XᵀX`, `X' = X·Q + a·X`: the same
//! products summed in the same order as torch's transposed form (A and Q come out exactly
//! symmetric, so `Qᵀ = Q` bit for bit).
//!
//! On the GPU a Muon segment is its own engine segment (`MuonSegment`): its matrices are split
//! into batches that fit one storage binding each; per batch and step it records one momentum
//! dispatch (with the per-matrix Frobenius norm as a fixed tree reduction), `3·ns_steps` batched
//! matmul dispatches ([`crate::matmul::BatchedMatmul`], every matrix of the batch in each) and one
//! apply dispatch, whatever the number of matrices. The tile tables and the Newton–Schulz scratch
//! are built once. The CPU twin ([`Rule::update`]) performs the same f32 operations in the same
//! order, the matmuls through [`crate::matmul::matmul_cpu`], so the two agree bit for bit on
//! lavapipe.
//!
//! Muon takes 2-D tensors only ([`Error::NotAMatrix`] otherwise): put it next to AdamW with
//! [`MuonConfig::with_adamw`].

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::book::{Book, SegmentPlan};
use super::gpu::{Dispatcher, GpuSegment};
use super::{lerp_torch, HyperCtx, ParamGroups, Pass, Rule, Select, StateSpec};
use crate::arena::{ChunkRange, ParamArena, SegmentLayout, TensorInfo};
use crate::context::GpuContext;
use crate::dispatch;
use crate::error::{check_finite, check_non_negative, Error, Result};
use crate::matmul::{matmul_cpu, BatchedMatmul, MatmulProblem};
use crate::optim::storage_buffer;
use crate::pipeline::Kernel;
use crate::shaders::{KernelDef, LayoutKind, FLAG_GRAD_SCALE};
use crate::AdamConfig;

/// Invocations per workgroup of the momentum and apply passes (WGSL `MUON_WG`).
pub const MUON_WG: u32 = 256;
/// WGSL `MUON_NESTEROV`.
pub const MUON_NESTEROV: u32 = 256;

/// `muon_momentum` in muon.wgsl: momentum, Nesterov, Frobenius norm and normalization.
pub const MUON_MOMENTUM: KernelDef = KernelDef {
    entry: "muon_momentum",
    source: include_str!("../../shaders/muon.wgsl"),
    layout: LayoutKind::Muon,
    packed16: "",
    native16: "",
    io: crate::precision::HalfPath::None,
    model16: "",
    f32_grads: false,
};
/// `muon_apply` in muon.wgsl: decoupled decay and the update.
pub const MUON_APPLY: KernelDef = KernelDef {
    entry: "muon_apply",
    source: include_str!("../../shaders/muon.wgsl"),
    layout: LayoutKind::Muon,
    packed16: "",
    native16: "",
    io: crate::precision::HalfPath::None,
    model16: "",
    f32_grads: false,
};

/// torch's `adjust_lr_fn`: how the lr is scaled by the matrix's shape (rows A, cols B).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MuonAdjustLr {
    /// `None` / `"original"`: `lr·sqrt(max(1, A/B))`.
    #[default]
    Original,
    /// `"match_rms_adamw"`: `lr·0.2·sqrt(max(A, B))` (Moonshot's scaling, to reuse AdamW's lr).
    MatchRmsAdamW,
    /// `"spectral_unclamped"`: `lr·sqrt(A/B)`.
    SpectralUnclamped,
}

impl MuonAdjustLr {
    /// The factor on lr for a `rows`×`cols` matrix (f64, as torch computes it in Python).
    pub fn ratio(self, rows: usize, cols: usize) -> f64 {
        let (a, b) = (rows as f64, cols as f64);
        match self {
            MuonAdjustLr::Original => (a / b).max(1.0).sqrt(),
            MuonAdjustLr::MatchRmsAdamW => 0.2 * a.max(b).sqrt(),
            MuonAdjustLr::SpectralUnclamped => (a / b).sqrt(),
        }
    }
}

/// torch.optim.Muon's hyperparameters; `Default` is torch's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MuonConfig {
    /// Learning rate (torch default 1e-3).
    pub lr: f64,
    /// Decoupled weight decay, `p ← p·(1 − lr·wd)` with the unadjusted lr (default 0.1).
    pub weight_decay: f64,
    /// μ of the EMA momentum (default 0.95; torch checks only `>= 0`).
    pub momentum: f64,
    /// Nesterov: step along `lerp(g, B, μ)` instead of B (default true).
    pub nesterov: bool,
    /// Newton–Schulz coefficients (a, b, c) (default (3.4445, −4.7750, 2.0315)).
    pub ns_coefficients: [f64; 3],
    /// Floor of the Frobenius norm the update is divided by (default 1e-7).
    pub eps: f64,
    /// Newton–Schulz iterations (default 5; torch raises at 100 or more).
    pub ns_steps: u32,
    /// The lr scaling by shape (default [`MuonAdjustLr::Original`]).
    pub adjust_lr: MuonAdjustLr,
}

impl Default for MuonConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            weight_decay: 0.1,
            momentum: 0.95,
            nesterov: true,
            ns_coefficients: [3.4445, -4.7750, 2.0315],
            eps: 1e-7,
            ns_steps: 5,
            adjust_lr: MuonAdjustLr::Original,
        }
    }
}

impl MuonConfig {
    /// Muon on every 2-D tensor ([`Select::matrices`]) and `adamw` on every other tensor
    /// ([`Select::Rest`]): two parameter groups, two segments of one step. (Muon is meant for
    /// hidden weight matrices; to keep embeddings or a classifier head under AdamW, name the
    /// matrices with [`Select::names`] in a `ParamGroups` of your own instead.)
    pub fn with_adamw(self, adamw: AdamConfig) -> ParamGroups {
        ParamGroups::new()
            .group(Select::matrices(), self)
            .group(Select::Rest, adamw)
    }
}

/// Muon's per-group scalars (WGSL `MuonHyper`, 32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct MuonHyper {
    /// μ.
    pub momentum: f32,
    /// 1 − μ (host f64, rounded once).
    pub one_minus_momentum: f32,
    /// Norm floor.
    pub eps: f32,
    /// `MUON_NESTEROV | FLAG_GRAD_SCALE`.
    pub flags: u32,
    /// NS coefficient a.
    pub a: f32,
    /// NS coefficient b.
    pub b: f32,
    /// NS coefficient c.
    pub c: f32,
    /// NS iterations.
    pub ns_steps: u32,
}

/// Muon's per-tensor scalars for one step (32 bytes). All zero: frozen.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct MuonTensor {
    /// 1 when the tensor steps.
    pub live: u32,
    /// Its group among the segment's.
    pub group: u32,
    /// Rows (`shape[0]`).
    pub rows: u32,
    /// Columns (`shape[1]`).
    pub cols: u32,
    /// `1 − lr·wd`.
    pub decay: f32,
    /// `−lr_adj`.
    pub neg_lr_adj: f32,
    /// Padding.
    pub pad0: u32,
    /// Padding.
    pub pad1: u32,
}

/// A [`MuonTensor`] with the matrix's places in the batch's bindings (WGSL `MuonGpuTensor`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct MuonGpuTensor {
    /// The step's scalars.
    pub step: MuonTensor,
    /// First element in the batch's params / grads window.
    pub p_off: u32,
    /// First element in the batch's momentum window.
    pub b_off: u32,
    /// X0 in the batch's scratch.
    pub x0_off: u32,
    /// The final X in the scratch (X0 or X1 by the parity of ns_steps).
    pub xf_off: u32,
}

/// The batch's rows of the tensor table (WGSL `MuonBatch`, a uniform).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct MuonBatch {
    /// First row.
    pub first: u32,
    /// Matrices.
    pub count: u32,
    /// Padding.
    pub pad0: u32,
    /// Padding.
    pub pad1: u32,
}

/// Where one matrix's Newton–Schulz iterates live in a scratch buffer (element offsets).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NsPlace {
    x: [u32; 2],
    a: u32,
    q: u32,
}

impl NsPlace {
    /// Scratch elements of a rows×cols matrix: X0, X1 (rows·cols each), A and Q (m² each,
    /// m = min(rows, cols)).
    fn elements(rows: u64, cols: u64) -> u64 {
        let m = rows.min(cols);
        2 * rows * cols + 2 * m * m
    }

    fn at(base: u32, rows: u32, cols: u32) -> Self {
        let (n, m) = (rows * cols, rows.min(cols));
        Self {
            x: [base, base + n],
            a: base + 2 * n,
            q: base + 2 * n + m * m,
        }
    }
}

/// One Newton–Schulz iteration of one matrix as matmul problems: `[A from X_p]` for parity p,
/// `Q`, and `[X_{1-p} from Q, X_p]`.
pub(crate) struct NsStages {
    gram: [MatmulProblem; 2],
    poly: MatmulProblem,
    update: [MatmulProblem; 2],
}

fn ns_stages(rows: u32, cols: u32, at: NsPlace, [a, b, c]: [f32; 3]) -> NsStages {
    let m = rows.min(cols);
    let (gram, update) = if rows <= cols {
        // Wide (or square): A = X·Xᵀ (m = rows), X' = Q·X + a·X.
        let g =
            |p: usize| MatmulProblem::new(rows, rows, cols, at.x[p], at.x[p], at.a).transpose_b();
        let u = |p: usize| {
            MatmulProblem::new(rows, cols, rows, at.q, at.x[p], at.x[1 - p]).plus(a, at.x[p])
        };
        ([g(0), g(1)], [u(0), u(1)])
    } else {
        // Tall: torch iterates on Xᵀ. A = XᵀX (m = cols), X' = X·Q + a·X: the transpose of
        // torch's Q·Xᵀ + a·Xᵀ, with Q symmetric.
        let g =
            |p: usize| MatmulProblem::new(cols, cols, rows, at.x[p], at.x[p], at.a).transpose_a();
        let u = |p: usize| {
            MatmulProblem::new(rows, cols, cols, at.x[p], at.q, at.x[1 - p]).plus(a, at.x[p])
        };
        ([g(0), g(1)], [u(0), u(1)])
    };
    NsStages {
        gram,
        poly: MatmulProblem::new(m, m, m, at.a, at.a, at.q)
            .alpha(c)
            .plus(b, at.a),
        update,
    }
}

/// The deterministic Frobenius norm both engines compute: invocation `t` of `MUON_WG` sums the
/// squares of elements `t, t + MUON_WG, ...` in order, then the partial sums are added in a
/// halving tree. Returns the sum of squares.
fn tree_sum_of_squares(u: &[f32]) -> f32 {
    let wg = MUON_WG as usize;
    let mut red = vec![0f32; wg];
    for (t, r) in red.iter_mut().enumerate() {
        let mut acc = 0f32;
        for &x in u.iter().skip(t).step_by(wg) {
            acc += x * x;
        }
        *r = acc;
    }
    let mut s = wg / 2;
    while s > 0 {
        for i in 0..s {
            red[i] += red[i + s];
        }
        s /= 2;
    }
    red[0]
}

impl Rule for MuonConfig {
    type Hyper = MuonHyper;
    type TensorStep = MuonTensor;
    const KERNEL: KernelDef = MUON_APPLY;

    fn name(&self) -> &'static str {
        "muon"
    }

    fn validate(&self) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("momentum", self.momentum)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        check_non_negative("eps", self.eps)?;
        for (name, v) in [
            "ns_coefficients[0]",
            "ns_coefficients[1]",
            "ns_coefficients[2]",
        ]
        .into_iter()
        .zip(self.ns_coefficients)
        {
            check_finite(name, v)?;
        }
        if self.ns_steps >= 100 {
            return Err(Error::hyper(
                "ns_steps",
                self.ns_steps as f64,
                "must be < 100 (torch's limit)",
            ));
        }
        Ok(())
    }

    fn states(&self) -> Vec<StateSpec> {
        vec![StateSpec {
            name: "momentum_buffer",
            slot: 0,
            init: 0.0,
        }]
    }

    fn passes() -> Vec<Pass> {
        vec![Pass::Tensors(MUON_MOMENTUM), Pass::Tensors(MUON_APPLY)]
    }

    fn hyper(&self, ctx: HyperCtx) -> MuonHyper {
        let [a, b, c] = self.ns_coefficients;
        MuonHyper {
            momentum: self.momentum as f32,
            one_minus_momentum: (1.0 - self.momentum) as f32,
            eps: self.eps as f32,
            flags: (if self.nesterov { MUON_NESTEROV } else { 0 })
                | (ctx.extra_flags & FLAG_GRAD_SCALE),
            a: a as f32,
            b: b as f32,
            c: c as f32,
            ns_steps: self.ns_steps,
        }
    }

    /// Without the tensor's shape there is nothing to orthogonalize: both engines call
    /// [`Rule::tensor_step_for`], which has it.
    fn tensor_step(&self, _t: u64, group: u32, _chunks: ChunkRange) -> MuonTensor {
        MuonTensor {
            live: 1,
            group,
            ..Zeroable::zeroed()
        }
    }

    fn tensor_step_for(
        &self,
        _t: u64,
        group: u32,
        _chunks: ChunkRange,
        _scalars: &mut super::Scalars,
        info: &TensorInfo,
    ) -> MuonTensor {
        // check_tensor admitted only 2-D shapes.
        let (rows, cols) = match info.shape.as_deref() {
            Some(&[r, c]) => (r, c),
            _ => (0, 0),
        };
        let lr_adj = self.lr * self.adjust_lr.ratio(rows, cols);
        MuonTensor {
            live: 1,
            group,
            rows: rows as u32,
            cols: cols as u32,
            decay: (1.0 - self.lr * self.weight_decay) as f32,
            neg_lr_adj: (-lr_adj) as f32,
            pad0: 0,
            pad1: 0,
        }
    }

    fn check_tensor(&self, info: &TensorInfo) -> Result<()> {
        match info.shape.as_deref() {
            Some(&[rows, cols]) => {
                if cols == 0 && rows > 0 {
                    // torch: ZeroDivisionError in the lr adjustment.
                    return Err(Error::InvalidConfig(
                        "Muon: a [k, 0] matrix has no columns (torch raises ZeroDivisionError)",
                    ));
                }
                // The Newton–Schulz scratch of one matrix is indexed with u32 (on the CPU too).
                let scratch = NsPlace::elements(rows as u64, cols as u64);
                if rows > u32::MAX as usize || cols > u32::MAX as usize || scratch > u32::MAX as u64
                {
                    return Err(Error::LimitExceeded {
                        what: format!("Newton–Schulz scratch elements of tensor {:?}", info.name),
                        value: scratch,
                        limit: u32::MAX as u64,
                        why: "Muon indexes a matrix's iterates with u32",
                    });
                }
                Ok(())
            }
            _ => Err(Error::NotAMatrix {
                tensor: info.name.clone(),
                shape: info.shape.clone(),
                optimizer: "Muon",
            }),
        }
    }

    fn check_peer(&self, other: &Self) -> Result<()> {
        if self.ns_coefficients != other.ns_coefficients || self.ns_steps != other.ns_steps {
            return Err(Error::InvalidConfig(
                "the parameter groups of one Muon segment must share ns_coefficients and \
                 ns_steps (they are fixed in its matmul tables at construction)",
            ));
        }
        Ok(())
    }

    fn update(h: &MuonHyper, ts: &MuonTensor, p: &mut [f32], g: &[f32], state: &mut [&mut [f32]]) {
        let (rows, cols) = (ts.rows as usize, ts.cols as usize);
        let n = rows * cols;
        if n != p.len() || n != g.len() || state.is_empty() || state[0].len() != n {
            // Only reachable without a shape (tensor_step), which no engine uses.
            return;
        }
        let buf = &mut *state[0];
        let nesterov = h.flags & MUON_NESTEROV != 0;
        let place = NsPlace::at(0, ts.rows, ts.cols);
        let mut scratch = vec![0f32; NsPlace::elements(rows as u64, cols as u64) as usize];
        for e in 0..n {
            let b = lerp_torch(buf[e], g[e], h.one_minus_momentum);
            buf[e] = b;
            scratch[e] = if nesterov {
                lerp_torch(g[e], b, h.momentum)
            } else {
                b
            };
        }
        let denom = tree_sum_of_squares(&scratch[..n]).sqrt().max(h.eps);
        for x in &mut scratch[..n] {
            *x /= denom;
        }
        let stages = ns_stages(ts.rows, ts.cols, place, [h.a, h.b, h.c]);
        for it in 0..h.ns_steps as usize {
            let parity = it % 2;
            for prob in [stages.gram[parity], stages.poly, stages.update[parity]] {
                // The stages are valid by construction (disjoint regions inside the scratch).
                if matmul_cpu(&[prob], &mut scratch).is_err() {
                    return;
                }
            }
        }
        let xf = place.x[h.ns_steps as usize % 2] as usize;
        for e in 0..n {
            let q = p[e] * ts.decay;
            p[e] = q + ts.neg_lr_adj * scratch[xf + e];
        }
    }

    fn bytes_per_element(&self) -> u64 {
        // Momentum pass reads g, B and writes B, U (16); apply reads p, X and writes p (12).
        // The Newton–Schulz traffic depends on the shape and is not counted.
        28
    }

    /// None: the table's presets run on tensors of any shape, Muon needs matrices (see the
    /// README's Muon section for its use next to AdamW).
    fn presets() -> Vec<(&'static str, Self)> {
        Vec::new()
    }

    /// None in the table (its sweeps use 1-D tensors, which Muon rejects); tests/optim_muon.rs
    /// runs [`MuonConfig::test_variants`] on matrices.
    fn variants() -> Vec<Self> {
        Vec::new()
    }
}

impl MuonConfig {
    /// Every flag and option combination the Muon tests run (on matrices): Nesterov on and
    /// off, each lr adjustment, μ = 0, no weight decay, the cubic coefficients, 0 and 1 NS
    /// steps; every one with a non-default lr.
    pub fn test_variants() -> Vec<Self> {
        let base = MuonConfig {
            lr: 0.02,
            ..Default::default()
        };
        vec![
            base.clone(),
            MuonConfig {
                nesterov: false,
                adjust_lr: MuonAdjustLr::MatchRmsAdamW,
                ..base.clone()
            },
            MuonConfig {
                adjust_lr: MuonAdjustLr::SpectralUnclamped,
                momentum: 0.0,
                weight_decay: 0.0,
                ..base.clone()
            },
            MuonConfig {
                ns_coefficients: [1.5, -0.5, 0.0],
                ns_steps: 1,
                momentum: 0.5,
                ..base.clone()
            },
            MuonConfig {
                ns_steps: 0,
                ..base
            },
        ]
    }
}

/// One batch of a Muon segment: matrices whose params, grads and momentum windows and
/// Newton–Schulz scratch each fit one storage binding.
#[derive(Debug)]
struct Batch {
    count: u32,
    grid: (u32, u32),
    uniform: wgpu::Buffer,
    scratch: wgpu::Buffer,
    /// (byte offset, byte size) of the params / grads window.
    p_window: (u64, u64),
    /// (byte offset, byte size) of the momentum window.
    b_window: (u64, u64),
    gram: [BatchedMatmul; 2],
    poly: BatchedMatmul,
    update: [BatchedMatmul; 2],
}

/// The GPU segment of Muon (see the module docs). Built once; a step writes the group and
/// tensor tables and records `batches × (2 + 3·ns_steps)` dispatches.
#[derive(Debug)]
pub(crate) struct MuonSegment {
    layout: SegmentLayout,
    momentum: Arc<Kernel>,
    apply: Arc<Kernel>,
    hypers: wgpu::Buffer,
    tensors: wgpu::Buffer,
    bufs: wgpu::Buffer,
    /// `momentum_buffer`'s spec with `bufs` (what a Lookahead state reset re-initializes).
    states: Vec<(StateSpec, wgpu::Buffer)>,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    batches: Vec<Batch>,
    bind_groups: Vec<wgpu::BindGroup>,
    ns_steps: u32,
    infos: Vec<TensorInfo>,
    /// Per member: its offsets (the static part of its table row).
    places: Vec<[u32; 4]>,
    /// Reused every step.
    hyper_table: Vec<MuonHyper>,
    tensor_table: Vec<MuonGpuTensor>,
}

fn binding<'a>(buf: &'a wgpu::Buffer, (offset, size): (u64, u64)) -> wgpu::BindingResource<'a> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: buf,
        offset,
        size: std::num::NonZeroU64::new(size),
    })
}

impl MuonSegment {
    pub(crate) fn new(
        ctx: &GpuContext,
        arena: &ParamArena,
        plan: &SegmentPlan,
        aux: &wgpu::Buffer,
        configs: &[MuonConfig],
    ) -> Result<Self> {
        let label = "muon";
        let first = configs.first().cloned().unwrap_or_default();
        let align = (ctx.limits().min_storage_buffer_offset_alignment as u64).max(4);
        let cap = ctx.max_binding_bytes();
        let layout = SegmentLayout::new(
            arena.layout(),
            plan.members.clone(),
            &plan.member_groups,
            cap,
            align,
            0,
        )?;
        let tensors = arena.layout().tensors();
        let infos: Vec<TensorInfo> = plan.members.iter().map(|&i| tensors[i].clone()).collect();
        let shape = |local: usize| -> (u32, u32) {
            match infos[local].shape.as_deref() {
                Some(&[r, c]) => (r as u32, c as u32),
                _ => (0, 0),
            }
        };
        let state_bytes = layout.state_bytes().max(16);
        if state_bytes > ctx.limits().max_buffer_size {
            return Err(Error::BufferTooLarge {
                what: "muon momentum_buffer".into(),
                bytes: state_bytes,
                limit: ctx.limits().max_buffer_size,
            });
        }
        // Batches: consecutive members while every window and the scratch fit one binding.
        let window = |lo_elem: usize, hi_elem: usize| -> (u64, u64) {
            let lo = (lo_elem as u64 * 4) / align * align;
            (lo, hi_elem as u64 * 4 - lo)
        };
        let mut spans: Vec<(usize, usize)> = Vec::new(); // (first local, count)
        let mut start = 0usize;
        while start < infos.len() {
            let mut end = start;
            let mut scratch = 0u64;
            while end < infos.len() {
                let (r, c) = shape(end);
                let s = scratch + NsPlace::elements(r as u64, c as u64) * 4;
                let pw = window(infos[start].offset, infos[end].offset + infos[end].len);
                let so = layout.state_offsets();
                let bw = window(so[start], so[end] + infos[end].len);
                if s > cap || pw.1 > cap || bw.1 > cap || s / 4 > u32::MAX as u64 {
                    if end == start {
                        return Err(Error::BufferTooLarge {
                            what: format!(
                                "muon Newton–Schulz scratch and windows of tensor {:?}",
                                infos[end].name
                            ),
                            bytes: s.max(pw.1).max(bw.1),
                            limit: cap,
                        });
                    }
                    break;
                }
                scratch = s;
                end += 1;
            }
            spans.push((start, end - start));
            start = end;
        }
        let coef = first.ns_coefficients.map(|x| x as f32);
        let momentum = ctx.pipelines().get(ctx, MUON_MOMENTUM)?;
        let apply = ctx.pipelines().get(ctx, MUON_APPLY)?;
        let params = arena.params_buffer().clone();
        let grads = arena.grads_buffer().clone();
        let (hypers, tensor_buf, bufs) = ctx.scoped(|| {
            let hypers = storage_buffer(
                ctx,
                &format!("{label} hypers"),
                (plan.groups.len().max(1) * std::mem::size_of::<MuonHyper>()) as u64,
            );
            let tensor_buf = storage_buffer(
                ctx,
                &format!("{label} tensors"),
                (infos.len().max(1) * std::mem::size_of::<MuonGpuTensor>()) as u64,
            );
            let bufs = storage_buffer(ctx, &format!("{label} momentum_buffer"), state_bytes);
            (hypers, tensor_buf, bufs)
        })?;
        let mut places = vec![[0u32; 4]; infos.len()];
        let mut batches = Vec::with_capacity(spans.len());
        for &(s0, count) in &spans {
            let so = layout.state_offsets();
            let last = s0 + count - 1;
            let p_window = window(infos[s0].offset, infos[last].offset + infos[last].len);
            let b_window = window(so[s0], so[last] + infos[last].len);
            let mut base = 0u32;
            let mut gram = [Vec::new(), Vec::new()];
            let mut poly = Vec::new();
            let mut update = [Vec::new(), Vec::new()];
            for local in s0..s0 + count {
                let (r, c) = shape(local);
                let at = NsPlace::at(base, r, c);
                let st = ns_stages(r, c, at, coef);
                for p in 0..2 {
                    gram[p].push(st.gram[p]);
                    update[p].push(st.update[p]);
                }
                poly.push(st.poly);
                places[local] = [
                    (infos[local].offset as u64 - p_window.0 / 4) as u32,
                    (so[local] as u64 - b_window.0 / 4) as u32,
                    at.x[0],
                    at.x[first.ns_steps as usize % 2],
                ];
                base += NsPlace::elements(r as u64, c as u64) as u32;
            }
            // Bindings cannot be empty; a window past the buffer's end is clipped to it.
            let fit = |buf: &wgpu::Buffer, (off, size): (u64, u64)| {
                (off, size.max(16).min(buf.size() - off))
            };
            let p_window = fit(&params, p_window);
            let b_window = fit(&bufs, b_window);
            let scratch = ctx.scoped(|| {
                storage_buffer(ctx, &format!("{label} scratch"), (base as u64 * 4).max(16))
            })?;
            let uniform = ctx.scoped(|| {
                let u = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("{label} batch")),
                    size: 16,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let row = MuonBatch {
                    first: s0 as u32,
                    count: count as u32,
                    pad0: 0,
                    pad1: 0,
                };
                ctx.queue().write_buffer(&u, 0, bytemuck::bytes_of(&row));
                u
            })?;
            let stage = |probs: &[MatmulProblem]| BatchedMatmul::new(ctx, probs, &scratch);
            batches.push(Batch {
                count: count as u32,
                grid: dispatch::grid(count as u32, ctx.max_workgroups_per_dim()),
                p_window,
                b_window,
                gram: [stage(&gram[0])?, stage(&gram[1])?],
                poly: stage(&poly)?,
                update: [stage(&update[0])?, stage(&update[1])?],
                uniform,
                scratch,
            });
        }
        let mut seg = Self {
            layout,
            momentum,
            apply,
            hypers,
            tensors: tensor_buf,
            states: MuonConfig::default()
                .states()
                .into_iter()
                .map(|st| (st, bufs.clone()))
                .collect(),
            bufs,
            params,
            grads,
            batches,
            bind_groups: Vec::new(),
            ns_steps: first.ns_steps,
            hyper_table: Vec::with_capacity(plan.groups.len()),
            tensor_table: Vec::with_capacity(infos.len()),
            infos,
            places,
        };
        let bgs = ctx.scoped(|| seg.bind_groups(ctx, aux))?;
        seg.bind_groups = bgs;
        Ok(seg)
    }
}

impl GpuSegment for MuonSegment {
    fn write_tables(&mut self, ctx: &GpuContext, book: &mut Book, seg: usize, grad_scale: bool) {
        let extra_flags = if grad_scale { FLAG_GRAD_SCALE } else { 0 };
        book.segment_hypers::<MuonConfig>(seg, extra_flags, &mut self.hyper_table);
        self.tensor_table.clear();
        for local in 0..book.segments[seg].members.len() {
            let step = book.member_step::<MuonConfig>(
                seg,
                local,
                self.layout.ranges()[local],
                &self.infos[local],
            );
            let [p_off, b_off, x0_off, xf_off] = self.places[local];
            self.tensor_table.push(MuonGpuTensor {
                step: step.unwrap_or_else(MuonTensor::zeroed),
                p_off,
                b_off,
                x0_off,
                xf_off,
            });
        }
        let q = ctx.queue();
        if !self.hyper_table.is_empty() {
            q.write_buffer(&self.hypers, 0, bytemuck::cast_slice(&self.hyper_table));
        }
        if !self.tensor_table.is_empty() {
            q.write_buffer(&self.tensors, 0, bytemuck::cast_slice(&self.tensor_table));
        }
    }

    fn record(&self, pass: &mut wgpu::ComputePass<'_>, d: &mut Dispatcher<'_>) {
        // The momentum and apply dispatches go through `d` (the AMP guard gates them: a
        // skipped step changes neither the momentum buffers nor the params); the Newton–Schulz
        // stages only rewrite the scratch, so they run either way.
        for (b, bg) in self.batches.iter().zip(&self.bind_groups) {
            if b.count == 0 {
                continue;
            }
            pass.set_pipeline(&self.momentum.pipeline);
            pass.set_bind_group(0, bg, &[]);
            d.dispatch(pass, b.grid);
            for it in 0..self.ns_steps as usize {
                b.gram[it % 2].record(pass);
                b.poly.record(pass);
                b.update[it % 2].record(pass);
            }
            pass.set_pipeline(&self.apply.pipeline);
            pass.set_bind_group(0, bg, &[]);
            d.dispatch(pass, b.grid);
        }
    }

    fn dispatch_grids(&self) -> Vec<(u32, u32)> {
        self.batches
            .iter()
            .filter(|b| b.count > 0)
            .flat_map(|b| [b.grid, b.grid])
            .collect()
    }

    fn states(&self) -> &[(StateSpec, wgpu::Buffer)] {
        &self.states
    }

    fn bind_groups(&self, ctx: &GpuContext, aux: &wgpu::Buffer) -> Vec<wgpu::BindGroup> {
        self.batches
            .iter()
            .map(|b| {
                let entry = |binding, resource| wgpu::BindGroupEntry { binding, resource };
                ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("muon"),
                    layout: &self.momentum.layout,
                    entries: &[
                        entry(0, self.hypers.as_entire_binding()),
                        entry(1, b.uniform.as_entire_binding()),
                        entry(2, self.tensors.as_entire_binding()),
                        entry(3, aux.as_entire_binding()),
                        entry(4, binding(&self.params, b.p_window)),
                        entry(5, binding(&self.grads, b.p_window)),
                        entry(6, binding(&self.bufs, b.b_window)),
                        entry(7, b.scratch.as_entire_binding()),
                    ],
                })
            })
            .collect()
    }

    fn set_bind_groups(&mut self, bgs: Vec<wgpu::BindGroup>) {
        self.bind_groups = bgs;
    }

    fn layout(&self) -> &SegmentLayout {
        &self.layout
    }

    fn state_buffer(&self, name: &str) -> Option<&wgpu::Buffer> {
        (name == "momentum_buffer").then_some(&self.bufs)
    }

    /// The momentum buffers and the Newton–Schulz scratch.
    fn state_bytes(&self) -> u64 {
        self.bufs.size() + self.batches.iter().map(|b| b.scratch.size()).sum::<u64>()
    }

    fn dispatches(&self) -> usize {
        self.batches
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| {
                let stages = |m: &BatchedMatmul| usize::from(m.tiles() > 0);
                let per_iter =
                    |p: usize| stages(&b.gram[p]) + stages(&b.poly) + stages(&b.update[p]);
                2 + (0..self.ns_steps as usize)
                    .map(|it| per_iter(it % 2))
                    .sum::<usize>()
            })
            .sum()
    }
}
