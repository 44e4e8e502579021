//! Adafactor (`torch.optim.Adafactor`, PyTorch 2.15; SPEC-2 §2.7): factored second moments
//! with the relative step and update clipping, no first moment.
//!
//! ```text
//! t  = t + 1;  β̂ = t^beta2_decay;  ρ = min(lr, 1/sqrt(t))
//! α  = max(ε2, RMS(p)) · ρ                        # RMS of p before the decay
//! p  = p · (1 − lr·wd)
//! ≥ 2-D (over the last two dims, leading dims a batch of matrices):
//!     R = lerp(R, mean_j g², β̂);  C = lerp(C, mean_i g², β̂)
//!     V̂ = R_i·C_j / max(mean_i R, ε1)
//! 0-D and 1-D:  V = lerp(V, g², β̂);  V̂ = V
//! u  = g / sqrt(max(V̂, ε1²));  den = max(1, RMS(u) / d)
//! p  = p − (α / den) · u
//! ```
//! ε1 `None` is the machine epsilon of f32. torch's state: `row_var` (the tensor's shape with
//! the last dim 1), `col_var` (the second-to-last dim 1), `variance` (0-D and 1-D tensors), and
//! `step`: the factored state of an R×C matrix is R + C values, not R·C.
//!
//! On the GPU an Adafactor segment is its own engine segment (`AdafactorSegment`): one
//! workgroup per tensor runs the whole step in one dispatch (‖p‖², the row and column
//! statistics, the per-matrix row mean, ‖u‖² and the update), with every reduction a fixed
//! order (a row or column sum by one invocation in index order; strided lane sums folded by a
//! halving tree), so results are deterministic with no atomics. Tensors are split into batches
//! whose params and state windows each fit one storage binding: one dispatch per batch,
//! whatever the number of tensors, through the AMP guard's dispatcher. The CPU twin
//! ([`Rule::update`]) performs the same f32 operations in the same order. One workgroup per
//! tensor keeps the reductions in workgroup memory; the price is that a single huge tensor is
//! processed by one workgroup (256 invocations), and that each tensor's params and state must
//! fit one storage binding ([`Error::BufferTooLarge`] otherwise).

use bytemuck::{Pod, Zeroable};

use super::common::{lerp_torch, maximize_flag};
use super::rule::{HyperCtx, MomentumKind, Pass, Rule, SegmentKind, StateSpec};
use crate::arena::{ChunkRange, TensorInfo};
use crate::error::{check_non_negative, Error, Result};
use crate::shaders::{KernelDef, LayoutKind, FLAG_GRAD_SCALE, FLAG_MAXIMIZE};

/// Invocations per workgroup (WGSL `ADAFACTOR_WG`): the lanes of every strided reduction.
pub const ADAFACTOR_WG: u32 = 256;

/// `adafactor_step` in adafactor.wgsl: the whole step of one tensor per workgroup.
pub const ADAFACTOR_STEP: KernelDef = KernelDef::standalone(
    "adafactor_step",
    include_str!("../../shaders/adafactor.wgsl"),
    LayoutKind::Adafactor,
);

/// torch.optim.Adafactor's hyperparameters; `Default` is torch's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AdafactorConfig {
    /// Learning rate: the cap of the relative step `ρ = min(lr, 1/sqrt(t))` (default 1e-2).
    pub lr: f64,
    /// c of `β̂ = t^c`, the weight of the new statistics (default −0.8; must be ≤ 0).
    pub beta2_decay: f64,
    /// (ε1, ε2): ε1 floors the variance estimate (`None`: f32's machine epsilon), ε2 floors
    /// RMS(p) in the step size (default `(None, 1e-3)`).
    pub eps: (Option<f64>, f64),
    /// Update clipping threshold d ≥ 1 (default 1; `f64::INFINITY` disables the clipping).
    #[serde(with = "super::common::json_f64")]
    pub d: f64,
    /// Decoupled weight decay `p ← p·(1 − lr·wd)` with the group lr (default 0).
    pub weight_decay: f64,
    /// Maximize the objective (negate the gradient).
    pub maximize: bool,
}

impl Default for AdafactorConfig {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            beta2_decay: -0.8,
            eps: (None, 1e-3),
            d: 1.0,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

impl AdafactorConfig {
    /// ε1 as the kernels use it (`None`: f32's machine epsilon, as torch takes the param
    /// dtype's).
    pub fn eps1(&self) -> f64 {
        self.eps.0.unwrap_or(f32::EPSILON as f64)
    }

    /// Every option the Adafactor tests run (each with a non-default lr): the defaults, ε1
    /// given, ε2 = 0, d > 1, weight decay, maximize, `beta2_decay = 0` (no memory) and an lr
    /// above 1/sqrt(t) for the first steps.
    pub fn test_variants() -> Vec<Self> {
        let base = AdafactorConfig {
            lr: 0.02,
            ..Default::default()
        };
        vec![
            base.clone(),
            AdafactorConfig {
                eps: (Some(1e-6), 0.0),
                d: 2.0,
                weight_decay: 0.1,
                ..base.clone()
            },
            AdafactorConfig {
                lr: 0.7,
                beta2_decay: -0.5,
                maximize: true,
                eps: (Some(1e-30), 1e-2),
                ..base.clone()
            },
            AdafactorConfig {
                beta2_decay: 0.0,
                d: f64::INFINITY,
                weight_decay: 0.01,
                ..base
            },
        ]
    }
}

/// Adafactor's per-group scalars (WGSL `AdafactorHyper`, 32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AdafactorHyper {
    /// ε1 (the floor of the per-matrix row mean).
    pub eps1: f32,
    /// ε1² (host f64, rounded once: the floor of the variance estimate).
    pub eps1_sq: f32,
    /// ε2 (the floor of RMS(p)).
    pub eps2: f32,
    /// d.
    pub d: f32,
    /// `FLAG_MAXIMIZE | FLAG_GRAD_SCALE`.
    pub flags: u32,
    /// Padding.
    pub pad0: u32,
    /// Padding.
    pub pad1: u32,
    /// Padding.
    pub pad2: u32,
}

/// Adafactor's per-tensor scalars for one step (48 bytes). All zero: frozen.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AdafactorTensor {
    /// 1 when the tensor steps (0 also for an empty tensor: its step is a no-op).
    pub live: u32,
    /// Its group among the segment's.
    pub group: u32,
    /// 1 for tensors of two or more dims (row and column statistics), 0 otherwise.
    pub factored: u32,
    /// Elements.
    pub n: u32,
    /// Matrices (the product of the leading dims; 1 when unfactored).
    pub batch: u32,
    /// Rows of each matrix (`shape[-2]`; 1 when unfactored).
    pub rows: u32,
    /// Columns of each matrix (`shape[-1]`; n when unfactored).
    pub cols: u32,
    /// β̂ = t^beta2_decay.
    pub beta_hat: f32,
    /// ρ = min(lr, 1/sqrt(t)).
    pub rho: f32,
    /// 1 − lr·wd.
    pub decay: f32,
    /// Padding.
    pub pad0: u32,
    /// Padding.
    pub pad1: u32,
}

/// An [`AdafactorTensor`] with its places in the batch's bindings (WGSL `AdafactorGpuTensor`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AdafactorGpuTensor {
    /// The step's scalars.
    pub step: AdafactorTensor,
    /// First element in the batch's params / grads window.
    pub p_off: u32,
    /// `row_var` (or `variance`) in the batch's state window.
    pub r_off: u32,
    /// `col_var` in the batch's state window (unused when unfactored).
    pub c_off: u32,
    /// Padding.
    pub pad: u32,
}

/// The batch's rows of the tensor table (WGSL `AdafactorBatch`, a uniform).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AdafactorBatch {
    /// First row.
    pub first: u32,
    /// Tensors.
    pub count: u32,
    /// Padding.
    pub pad0: u32,
    /// Padding.
    pub pad1: u32,
}

/// A tensor's shape for Adafactor: (factored, batch, rows, cols), from its declared shape
/// (a tensor declared without one is 1-D).
pub(crate) fn factors(info: &TensorInfo) -> (bool, usize, usize, usize) {
    match info.shape.as_deref() {
        Some(s) if s.len() >= 2 => {
            let k = s.len();
            (true, s[..k - 2].iter().product(), s[k - 2], s[k - 1])
        }
        _ => (false, 1, 1, info.len),
    }
}

/// Elements of (row_var, col_var) or (variance, 0) of a tensor.
pub(crate) fn state_lens(info: &TensorInfo) -> (usize, usize) {
    match factors(info) {
        (true, b, r, c) => (b.saturating_mul(r), b.saturating_mul(c)),
        _ => (info.len, 0),
    }
}

/// The kernel's lane sums: lane `l` of `ADAFACTOR_WG` adds `f(e)` for `e = l, l + WG, ...`
/// below `n` in order onto `lanes[l]`.
fn add_lanes(lanes: &mut [f32], n: usize, f: impl Fn(usize) -> f32) {
    let wg = ADAFACTOR_WG as usize;
    for (l, acc) in lanes.iter_mut().enumerate() {
        let mut a = *acc;
        let mut e = l;
        while e < n {
            a += f(e);
            e += wg;
        }
        *acc = a;
    }
}

/// The kernel's halving tree over the lane sums.
fn tree(mut lanes: Vec<f32>) -> f32 {
    let mut s = lanes.len() / 2;
    while s > 0 {
        for i in 0..s {
            lanes[i] += lanes[i + s];
        }
        s /= 2;
    }
    lanes.first().copied().unwrap_or(0.0)
}

fn lane_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut lanes = vec![0f32; ADAFACTOR_WG as usize];
    add_lanes(&mut lanes, n, f);
    tree(lanes)
}

impl Rule for AdafactorConfig {
    type Hyper = AdafactorHyper;
    type TensorStep = AdafactorTensor;
    const SEGMENT: SegmentKind = SegmentKind::Factored;
    const KERNEL: KernelDef = ADAFACTOR_STEP;

    fn name(&self) -> &'static str {
        "adafactor"
    }
    fn momentum_mut(&mut self) -> Option<(MomentumKind, &mut f64)> {
        None
    }
    fn weight_decay_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.weight_decay)
    }
    fn grad_reads(&self) -> Option<u64> {
        None
    }

    fn validate(&self) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        if !(self.beta2_decay.is_finite() && self.beta2_decay <= 0.0) {
            return Err(Error::hyper(
                "beta2_decay",
                self.beta2_decay,
                "must be finite and <= 0",
            ));
        }
        if let Some(e1) = self.eps.0 {
            check_non_negative("eps[0]", e1)?;
        }
        check_non_negative("eps[1]", self.eps.1)?;
        // torch: `not 1.0 <= d` (NaN refused, +inf allowed: no clipping).
        if self.d.is_nan() || self.d < 1.0 {
            return Err(Error::hyper("d", self.d, "must be >= 1"));
        }
        check_non_negative("weight_decay", self.weight_decay)?;
        Ok(())
    }

    fn states(&self) -> Vec<StateSpec> {
        ["row_var", "col_var", "variance"]
            .into_iter()
            .enumerate()
            .map(|(slot, name)| StateSpec {
                name,
                slot: slot as u32,
                init: 0.0,
            })
            .collect()
    }

    fn passes() -> Vec<Pass> {
        vec![Pass::Tensors(ADAFACTOR_STEP)]
    }

    fn hyper(&self, ctx: HyperCtx) -> AdafactorHyper {
        let e1 = self.eps1();
        AdafactorHyper {
            eps1: e1 as f32,
            eps1_sq: (e1 * e1) as f32,
            eps2: self.eps.1 as f32,
            d: self.d as f32,
            flags: maximize_flag(self.maximize) | (ctx.extra_flags & FLAG_GRAD_SCALE),
            pad0: 0,
            pad1: 0,
            pad2: 0,
        }
    }

    /// The shape decides the path: both engines call [`Rule::tensor_step_for`], which has it;
    /// without it the tensor is taken as 1-D.
    fn tensor_step(&self, t: u64, group: u32, _chunks: ChunkRange) -> AdafactorTensor {
        AdafactorTensor {
            live: 1,
            group,
            factored: 0,
            n: 0,
            batch: 1,
            rows: 1,
            cols: 0,
            beta_hat: (t as f64).powf(self.beta2_decay) as f32,
            rho: self.lr.min(1.0 / (t as f64).sqrt()) as f32,
            decay: (1.0 - self.lr * self.weight_decay) as f32,
            pad0: 0,
            pad1: 0,
        }
    }

    fn tensor_step_for(
        &self,
        t: u64,
        group: u32,
        chunks: ChunkRange,
        _scalars: &mut super::rule::Scalars,
        info: &TensorInfo,
    ) -> AdafactorTensor {
        // check_tensor bounded every count by u32::MAX.
        let (factored, batch, rows, cols) = factors(info);
        AdafactorTensor {
            live: u32::from(info.len > 0),
            factored: u32::from(factored),
            n: info.len as u32,
            batch: batch as u32,
            rows: rows as u32,
            cols: cols as u32,
            ..self.tensor_step(t, group, chunks)
        }
    }

    fn state_shape(&self, state: &str, info: &TensorInfo) -> Option<Vec<usize>> {
        let shape = info.shape.clone().unwrap_or_else(|| vec![info.len]);
        let k = shape.len();
        match (state, k >= 2) {
            ("row_var", true) => {
                let mut s = shape;
                s[k - 1] = 1;
                Some(s)
            }
            ("col_var", true) => {
                let mut s = shape;
                s[k - 2] = 1;
                Some(s)
            }
            ("variance", false) => Some(shape),
            _ => None,
        }
    }

    fn check_tensor(&self, info: &TensorInfo) -> Result<()> {
        let (_, b, r, c) = factors(info);
        let (rl, cl) = state_lens(info);
        let biggest = [info.len, b, r, c, rl, cl].into_iter().max().unwrap_or(0);
        if biggest > u32::MAX as usize || rl == usize::MAX || cl == usize::MAX {
            return Err(Error::LimitExceeded {
                what: format!("elements of a dim or a state of tensor {:?}", info.name),
                value: biggest as u64,
                limit: u32::MAX as u64,
                why: "Adafactor indexes a tensor's elements and state with u32",
            });
        }
        Ok(())
    }

    fn update(
        h: &AdafactorHyper,
        ts: &AdafactorTensor,
        p: &mut [f32],
        g: &[f32],
        state: &mut [&mut [f32]],
    ) {
        let n = ts.n as usize;
        if ts.live == 0 || n == 0 || p.len() != n || g.len() != n || state.len() < 3 {
            return;
        }
        let flags = h.flags;
        // The gradient as the kernel loads it (AMP scaling is applied by the CPU engine to
        // the grads it passes in).
        let grad = |e: usize| {
            let x = g[e];
            if flags & FLAG_MAXIMIZE != 0 {
                -x
            } else {
                x
            }
        };
        let pn2 = lane_sum(n, |e| p[e] * p[e]);
        let wg = ADAFACTOR_WG as usize;
        let (b, r, c) = (ts.batch as usize, ts.rows as usize, ts.cols as usize);
        let rsqrt = |v: f32| 1.0 / v.max(h.eps1_sq).sqrt();
        let mut lanes = vec![0f32; wg];
        let un2;
        if ts.factored != 0 {
            let [rv, cv, ..] = state else { return };
            if rv.len() != b * r || cv.len() != b * c || b * r * c != n {
                return;
            }
            for m in 0..b {
                let base = m * r * c;
                for i in 0..r {
                    let mut s = 0f32;
                    for j in 0..c {
                        let x = grad(base + i * c + j);
                        s += x * x;
                    }
                    rv[m * r + i] = lerp_torch(rv[m * r + i], s / c as f32, ts.beta_hat);
                }
                for j in 0..c {
                    let mut s = 0f32;
                    for i in 0..r {
                        let x = grad(base + i * c + j);
                        s += x * x;
                    }
                    cv[m * c + j] = lerp_torch(cv[m * c + j], s / r as f32, ts.beta_hat);
                }
            }
            let (rv, cv) = (&**rv, &**cv);
            let rdiv = |m: usize| (lane_sum(r, |i| rv[m * r + i]) / r as f32).max(h.eps1);
            let u = |m: usize, div: f32, e: usize| {
                let v = rv[m * r + e / c] * cv[m * c + e % c] / div;
                grad(m * r * c + e) * rsqrt(v)
            };
            for m in 0..b {
                let div = rdiv(m);
                add_lanes(&mut lanes, r * c, |e| {
                    let x = u(m, div, e);
                    x * x
                });
            }
            un2 = tree(lanes);
            let (alpha, den) = scales(h, ts, pn2, un2);
            let step = alpha / den;
            for m in 0..b {
                let div = rdiv(m);
                for e in 0..r * c {
                    let k = m * r * c + e;
                    p[k] = p[k] * ts.decay - step * u(m, div, e);
                }
            }
        } else {
            let v = &mut *state[2];
            if v.len() != n {
                return;
            }
            for (e, ve) in v.iter_mut().enumerate() {
                let x = grad(e);
                *ve = lerp_torch(*ve, x * x, ts.beta_hat);
            }
            let v = &*v;
            let u = |e: usize| grad(e) * rsqrt(v[e]);
            add_lanes(&mut lanes, n, |e| {
                let x = u(e);
                x * x
            });
            un2 = tree(lanes);
            let (alpha, den) = scales(h, ts, pn2, un2);
            let step = alpha / den;
            for (e, pe) in p.iter_mut().enumerate() {
                *pe = *pe * ts.decay - step * u(e);
            }
        }
    }

    fn bytes_per_element(&self) -> u64 {
        // Reads p (‖p‖²), g (statistics), g (‖u‖²), p and g, writes p: 24; the factored state
        // is O(rows + cols) (a 0-D or 1-D tensor adds its variance, 12 more).
        24
    }

    /// torch's defaults.
    fn presets() -> Vec<(&'static str, Self)> {
        vec![("adafactor", AdafactorConfig::default())]
    }

    /// [`AdafactorConfig::test_variants`].
    fn variants() -> Vec<Self> {
        AdafactorConfig::test_variants()
    }
}

/// α = max(ε2, RMS(p))·ρ and den = max(1, RMS(u)/d), as the kernel computes them in f32.
fn scales(h: &AdafactorHyper, ts: &AdafactorTensor, pn2: f32, un2: f32) -> (f32, f32) {
    let sn = (ts.n as f32).sqrt();
    let alpha = h.eps2.max(pn2.sqrt() / sn) * ts.rho;
    let den = (un2.sqrt() / (sn * h.d)).max(1.0);
    (alpha, den)
}
