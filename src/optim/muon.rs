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

use bytemuck::{Pod, Zeroable};

use super::common::lerp_torch;
use super::rule::{HyperCtx, MomentumKind, Pass, Rule, SegmentKind, StateSpec};
use crate::arena::{ChunkRange, TensorInfo};
use crate::error::{check_finite, check_non_negative, Error, Result};
use crate::matmul::{matmul_cpu, MatmulProblem};
use crate::shaders::{KernelDef, LayoutKind, FLAG_GRAD_SCALE};

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

impl MuonConfig {}

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
    pub(crate) x: [u32; 2],
    pub(crate) a: u32,
    pub(crate) q: u32,
}

impl NsPlace {
    /// Scratch elements of a rows×cols matrix: X0, X1 (rows·cols each), A and Q (m² each,
    /// m = min(rows, cols)).
    pub(crate) fn elements(rows: u64, cols: u64) -> u64 {
        let m = rows.min(cols);
        2 * rows * cols + 2 * m * m
    }

    pub(crate) fn at(base: u32, rows: u32, cols: u32) -> Self {
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
    pub(crate) gram: [MatmulProblem; 2],
    pub(crate) poly: MatmulProblem,
    pub(crate) update: [MatmulProblem; 2],
}

pub(crate) fn ns_stages(rows: u32, cols: u32, at: NsPlace, [a, b, c]: [f32; 3]) -> NsStages {
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
    const SEGMENT: SegmentKind = SegmentKind::NewtonSchulz;
    const KERNEL: KernelDef = MUON_APPLY;

    fn name(&self) -> &'static str {
        "muon"
    }
    fn momentum_mut(&mut self) -> Option<(MomentumKind, &mut f64)> {
        Some((MomentumKind::Momentum, &mut self.momentum))
    }
    fn weight_decay_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.weight_decay)
    }
    fn grad_reads(&self) -> Option<u64> {
        None
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
        _scalars: &mut super::rule::Scalars,
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
