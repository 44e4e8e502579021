//! LARS, layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017), in timm's formulation
//! (`timm.optim.Lars`), the one most large-batch CNN recipes use.
//!
//! ```text
//! g = grad (after global-norm clipping, if attached)
//! if adapt (group weight_decay != 0, or always_adapt):
//!     ratio = trust_coefficient * |p| / (|g| + weight_decay * |p| + eps)   # per tensor
//!     ratio = 1 if |p| == 0 or |g| == 0
//!     if trust_clip (LARC): ratio = min(ratio / lr, 1)
//!     g = (g + weight_decay * p) * ratio
//! PyTorch SGD momentum on g (first step: buf = g; buf = momentum*buf + (1 - dampening)*g;
//! nesterov: g = g + momentum*buf else g = buf)
//! p = p - lr * g
//! ```
//! A group with weight_decay 0 (timm's no-decay group for biases and norm layers) gets neither
//! decay nor adaptation: that is the per-group opt-out. Three dispatches per step whatever the
//! tensor count (`shaders/lars.wgsl`); the CPU reference takes the norms in f64.

use bytemuck::{Pod, Zeroable};

use super::rule::{ChunkRange, HyperCtx, MomentumKind, Pass, Rule, StateSpec};
use super::sgd::{check_nesterov, momentum_states, sgd_momentum};
use crate::error::{check_finite, check_non_negative, Result};
use crate::shaders::{KernelDef, FLAG_MAXIMIZE};

const LARS_WGSL: crate::shaders::KernelSources = crate::kernel_source!(reduce "lars.wgsl");
/// `lars_norms` in lars.wgsl (per chunk).
pub const LARS_NORMS: KernelDef = KernelDef::reducing("lars_norms", LARS_WGSL, 1);
/// `lars_ratio` in lars.wgsl (per tensor).
pub const LARS_RATIO: KernelDef = KernelDef::reducing("lars_ratio", LARS_WGSL, 1);
/// `lars_step` in lars.wgsl (per chunk).
pub const LARS_STEP: KernelDef = KernelDef::reducing("lars_step", LARS_WGSL, 1);

/// WGSL `LARS_MOMENTUM`.
pub const LARS_MOMENTUM: u32 = 256;
/// WGSL `LARS_NESTEROV`.
pub const LARS_NESTEROV: u32 = 512;
/// WGSL `LARS_TRUST_CLIP`.
pub const LARS_TRUST_CLIP: u32 = 1024;

/// LARS hyperparameters; `Default` is timm's `Lars`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LarsConfig {
    /// Learning rate (default 1.0).
    pub lr: f64,
    /// Momentum factor (default 0).
    pub momentum: f64,
    /// Dampening (default 0).
    pub dampening: f64,
    /// Weight decay, added inside the trust ratio and to the gradient (default 0).
    pub weight_decay: f64,
    /// Nesterov momentum (default false; needs momentum > 0 and dampening 0).
    pub nesterov: bool,
    /// Trust coefficient eta (default 0.001).
    pub trust_coefficient: f64,
    /// Added to the denominator of the trust ratio (default 1e-8).
    pub eps: f64,
    /// LARC clipping: `ratio = min(ratio / lr, 1)` (default false).
    pub trust_clip: bool,
    /// Adapt groups with zero weight decay too (default false).
    pub always_adapt: bool,
}

impl Default for LarsConfig {
    fn default() -> Self {
        Self {
            lr: 1.0,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            trust_coefficient: 0.001,
            eps: 1e-8,
            trust_clip: false,
            always_adapt: false,
        }
    }
}

/// Mirrors `LarsHyper` in lars.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct LarsHyper {
    /// FLAG_* | LARS_MOMENTUM | LARS_NESTEROV | LARS_TRUST_CLIP.
    pub flags: u32,
    /// momentum.
    pub momentum: f32,
    /// 1 - dampening, formed in f64.
    pub one_minus_dampening: f32,
    /// eta.
    pub trust_coefficient: f32,
    /// eps.
    pub eps: f32,
    /// Padding to 32 bytes.
    pub pad: [u32; 3],
}

/// Mirrors `LarsTensor` in lars.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct LarsTensor {
    /// 1 when the tensor steps this time.
    pub live: u32,
    /// The tensor's group among its segment's groups (indexes the per-group table).
    pub group: u32,
    /// 1 on the tensor's first step (momentum buffer = gradient).
    pub first: u32,
    /// First chunk of the tensor.
    pub first_chunk: u32,
    /// Chunks of the tensor.
    pub chunk_count: u32,
    /// 1 when the trust ratio applies.
    pub adapt: u32,
    /// -lr.
    pub neg_lr: f32,
    /// lr (for LARC clipping).
    pub lr: f32,
    /// Weight decay of the group.
    pub weight_decay: f32,
}

/// f64 Euclidean norm of a host slice.
pub(crate) fn norm_f64(x: &[f32]) -> f64 {
    x.iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .sqrt()
}

impl Rule for LarsConfig {
    type Hyper = LarsHyper;
    type TensorStep = LarsTensor;
    const KERNEL: KernelDef = LARS_STEP;

    fn name(&self) -> &'static str {
        if self.trust_clip {
            "larc"
        } else {
            "lars"
        }
    }
    fn momentum_mut(&mut self) -> Option<(MomentumKind, &mut f64)> {
        Some((MomentumKind::Momentum, &mut self.momentum))
    }
    fn weight_decay_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.weight_decay)
    }
    fn grad_reads(&self) -> Option<u64> {
        Some(2)
    }

    fn validate(&self) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("momentum", self.momentum)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        check_finite("dampening", self.dampening)?;
        check_non_negative("trust_coefficient", self.trust_coefficient)?;
        check_non_negative("eps", self.eps)?;
        check_nesterov(self.nesterov, self.momentum, self.dampening)
    }

    fn states(&self) -> Vec<StateSpec> {
        momentum_states(self.momentum)
    }

    fn passes() -> Vec<Pass> {
        vec![
            Pass::Chunks(LARS_NORMS),
            Pass::Tensors(LARS_RATIO),
            Pass::Chunks(LARS_STEP),
        ]
    }

    fn hyper(&self, ctx: HyperCtx) -> LarsHyper {
        let mut flags = ctx.extra_flags;
        if self.momentum != 0.0 {
            flags |= LARS_MOMENTUM;
        }
        if self.nesterov {
            flags |= LARS_NESTEROV;
        }
        if self.trust_clip {
            flags |= LARS_TRUST_CLIP;
        }
        LarsHyper {
            flags,
            momentum: self.momentum as f32,
            one_minus_dampening: (1.0 - self.dampening) as f32,
            trust_coefficient: self.trust_coefficient as f32,
            eps: self.eps as f32,
            pad: [0; 3],
        }
    }

    fn tensor_step(&self, t: u64, group: u32, chunks: ChunkRange) -> LarsTensor {
        LarsTensor {
            live: 1,
            group,
            first: (t == 1) as u32,
            first_chunk: chunks.first,
            chunk_count: chunks.count,
            adapt: (self.weight_decay != 0.0 || self.always_adapt) as u32,
            neg_lr: (-self.lr) as f32,
            lr: self.lr as f32,
            weight_decay: self.weight_decay as f32,
        }
    }

    fn update(h: &LarsHyper, ts: &LarsTensor, p: &mut [f32], g: &[f32], state: &mut [&mut [f32]]) {
        let maximize = h.flags & FLAG_MAXIMIZE != 0;
        let momentum = h.flags & LARS_MOMENTUM != 0;
        let nesterov = h.flags & LARS_NESTEROV != 0;
        let [buf] = state else { return };
        let adapt = ts.adapt != 0;
        let mut ratio = 1.0f32;
        if adapt {
            let (w, gn) = (norm_f64(p), norm_f64(g));
            let mut r = 1.0f64;
            if w > 0.0 && gn > 0.0 {
                r = h.trust_coefficient as f64 * w
                    / (gn + w * ts.weight_decay as f64 + h.eps as f64);
            }
            if h.flags & LARS_TRUST_CLIP != 0 {
                r = (r / ts.lr as f64).min(1.0);
            }
            ratio = r as f32;
        }
        for i in 0..p.len() {
            let p0 = p[i];
            let mut gi = if maximize { -g[i] } else { g[i] };
            if adapt {
                gi = (gi + ts.weight_decay * p0) * ratio;
            }
            if momentum {
                let first = ts.first != 0;
                gi = sgd_momentum(
                    &mut buf[i],
                    gi,
                    first,
                    h.momentum,
                    h.one_minus_dampening,
                    nesterov,
                );
            }
            p[i] = p0 + ts.neg_lr * gi;
        }
    }

    fn bytes_per_element(&self) -> u64 {
        // norm pass reads p and g; the update is SGD's.
        8 + if self.momentum != 0.0 { 20 } else { 12 }
    }

    fn presets() -> Vec<(&'static str, Self)> {
        // Weight decay on, so every tensor adapts (timm adapts only decayed groups).
        vec![(
            "lars",
            LarsConfig {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 1e-4,
                ..Default::default()
            },
        )]
    }

    fn variants() -> Vec<Self> {
        [
            (0.0, false, false, false),
            (0.9, false, false, false),
            (0.9, true, false, true),
            (0.9, false, true, false),
        ]
        .into_iter()
        .map(
            |(momentum, nesterov, trust_clip, always_adapt)| LarsConfig {
                lr: 0.1,
                momentum,
                nesterov,
                weight_decay: 1e-4,
                trust_clip,
                always_adapt,
                ..LarsConfig::default()
            },
        )
        .collect()
    }
}
