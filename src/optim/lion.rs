//! Lion, evolved sign momentum: `timm.optim.Lion` (timm 1.0.31, the for-loop path).
//!
//! ```text
//! g = maximize ? -grad : grad
//! p = p * (1 - lr * weight_decay)           # always (a multiply by 1 without decay)
//! u = sign(lerp(m, g, 1 - beta1))           # interpolate with beta1 for the update...
//! if caution:                               # per tensor: k = (u * g > 0)
//!     u = u * (k / max(mean(k), 1e-3))
//! p = p - lr * u
//! m = lerp(m, g, 1 - beta2)                 # ...but track the EMA with beta2, after the update
//! ```
//! Defaults (timm): `lr = 1e-4`, `betas = (0.9, 0.99)`, `weight_decay = 0`, `caution = false`,
//! `maximize = false`. State: `exp_avg` (zeros). timm keeps no step counter; the engine counts
//! steps anyway (`step_count`), which changes nothing in the rule.
//!
//! `sign(0) = 0` (and `sign(NaN) = 0`, as torch's): where the interpolation is exactly 0 the
//! element does not move. Because the sign makes the update discontinuous, the interpolation
//! is evaluated exactly as torch's `lerp` (its `|w| < 0.5` branch rule, `lerp_torch`), in the
//! same f32 operations on the host and in the kernel: a different rounding within an ulp of 0
//! would move the element by `2 * lr` instead of 0. Decay is decoupled (`p * (1 - lr * wd)`,
//! the factor formed in f64), as in the paper.
//!
//! Caution (Liang et al. 2024, "Cautious Optimizers") needs the mean of the mask over the whole
//! tensor, so a step is three dispatches whatever the tensor count (`shaders/lion.wgsl`), as
//! for LARS and LAMB: per chunk, the count of masked elements; per tensor, the integer count
//! summed in u32 (exact) and `1 / max(count / numel, 1e-3)`; then the update. Groups without
//! caution skip the first two (their workgroups return at once). The clamp keeps an all-masked
//! tensor finite: `u = 0`. timm's `corrected_weight_decay` (`lr^2 / lr_max`) is not offered.
//! Paper: Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms".

use bytemuck::{Pod, Zeroable};

use super::common::{lerp_torch, maximize_flag};
use super::rule::{ChunkRange, HyperCtx, MomentumKind, Pass, Rule, StateSpec};
use crate::error::{check_finite, check_non_negative, check_unit_interval, Result};
use crate::shaders::{KernelDef, FLAG_MAXIMIZE};

const LION_WGSL: crate::shaders::KernelSources = crate::kernel_source!(reduce "lion.wgsl");
/// `lion_caution_count` in lion.wgsl (per chunk).
pub const LION_CAUTION_COUNT: KernelDef = KernelDef::reducing("lion_caution_count", LION_WGSL, 1);
/// `lion_caution_scale` in lion.wgsl (per tensor).
pub const LION_CAUTION_SCALE: KernelDef = KernelDef::reducing("lion_caution_scale", LION_WGSL, 1);
/// `lion_step` in lion.wgsl (per chunk).
pub const LION_STEP: KernelDef = KernelDef::reducing("lion_step", LION_WGSL, 1);

/// WGSL `LION_CAUTION`.
pub const LION_CAUTION: u32 = 256;

/// Lion hyperparameters; `Default` is timm 1.0.31's `Lion`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LionConfig {
    /// Learning rate (default 1e-4).
    pub lr: f64,
    /// Interpolation weight of the update direction (default 0.9).
    pub beta1: f64,
    /// Decay of the momentum EMA (default 0.99).
    pub beta2: f64,
    /// Decoupled weight decay, `p *= 1 - lr * weight_decay` (default 0; timm accepts any sign).
    pub weight_decay: f64,
    /// Cautious update: zero the directions that disagree with the gradient's sign, rescale
    /// by the tensor's mean agreement (default false).
    pub caution: bool,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for LionConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.99,
            weight_decay: 0.0,
            caution: false,
            maximize: false,
        }
    }
}

/// Mirrors `LionHyper` in lion.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct LionHyper {
    /// FLAG_* | LION_CAUTION.
    pub flags: u32,
    /// 1 - beta1, formed in f64 (the update's lerp weight).
    pub one_minus_beta1: f32,
    /// 1 - beta2, formed in f64 (the EMA's lerp weight).
    pub one_minus_beta2: f32,
    /// -lr.
    pub neg_lr: f32,
    /// 1 - lr * weight_decay, formed in f64.
    pub decay_factor: f32,
    /// Padding to 32 bytes.
    pub pad: [u32; 3],
}

/// Mirrors `LionTensor` in lion.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct LionTensor {
    /// 1 when the tensor steps this time.
    pub live: u32,
    /// The tensor's group among its segment's groups (indexes the per-group table).
    pub group: u32,
    /// First chunk of the tensor (for the caution count).
    pub first_chunk: u32,
    /// Chunks of the tensor.
    pub chunk_count: u32,
}

/// torch's `sign`: 1, -1, or 0 for zeros and NaN (mirrors `sign_torch` in lion.wgsl).
#[inline]
pub(crate) fn sign_torch(x: f32) -> f32 {
    (if x > 0.0 { 1.0 } else { 0.0 }) - (if x < 0.0 { 1.0 } else { 0.0 })
}

/// The caution rescale `1 / max(mean(k), 1e-3)` of a tensor with `count` agreeing elements out
/// of `numel`, in the kernels' f32 operations (`count` is exact; torch's f32 sum of the 0/1
/// mask is exact up to 2^24 elements).
pub(crate) fn caution_scale(count: usize, numel: usize) -> f32 {
    if numel == 0 {
        return 0.0;
    }
    let mean = count as f32 / numel as f32;
    let clamped = if mean < 1e-3f32 { 1e-3f32 } else { mean };
    1.0 / clamped
}

/// The update direction before caution.
#[inline]
fn direction(m: f32, g: f32, h: &LionHyper) -> f32 {
    sign_torch(lerp_torch(m, g, h.one_minus_beta1))
}

impl Rule for LionConfig {
    type Hyper = LionHyper;
    type TensorStep = LionTensor;
    const KERNEL: KernelDef = LION_STEP;

    fn name(&self) -> &'static str {
        if self.caution {
            "lion-caution"
        } else {
            "lion"
        }
    }
    fn momentum_mut(&mut self) -> Option<(MomentumKind, &mut f64)> {
        Some((MomentumKind::Beta1, &mut self.beta1))
    }
    fn weight_decay_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.weight_decay)
    }
    fn grad_reads(&self) -> Option<u64> {
        None
    }

    fn validate(&self) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_unit_interval("beta1", self.beta1)?;
        check_unit_interval("beta2", self.beta2)?;
        // timm does not check weight_decay; a non-finite one could only give NaN.
        check_finite("weight_decay", self.weight_decay)
    }

    fn states(&self) -> Vec<StateSpec> {
        vec![StateSpec {
            name: "exp_avg",
            slot: 0,
            init: 0.0,
        }]
    }

    fn passes() -> Vec<Pass> {
        vec![
            Pass::Chunks(LION_CAUTION_COUNT),
            Pass::Tensors(LION_CAUTION_SCALE),
            Pass::Chunks(LION_STEP),
        ]
    }

    fn hyper(&self, ctx: HyperCtx) -> LionHyper {
        let mut flags = maximize_flag(self.maximize) | ctx.extra_flags;
        if self.caution {
            flags |= LION_CAUTION;
        }
        LionHyper {
            flags,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            neg_lr: (-self.lr) as f32,
            decay_factor: (1.0 - self.lr * self.weight_decay) as f32,
            pad: [0; 3],
        }
    }

    fn tensor_step(&self, _t: u64, group: u32, chunks: ChunkRange) -> LionTensor {
        LionTensor {
            live: 1,
            group,
            first_chunk: chunks.first,
            chunk_count: chunks.count,
        }
    }

    fn update(h: &LionHyper, _ts: &LionTensor, p: &mut [f32], g: &[f32], state: &mut [&mut [f32]]) {
        let maximize = h.flags & FLAG_MAXIMIZE != 0;
        let caution = h.flags & LION_CAUTION != 0;
        let [m] = state else { return };
        let grad = |i: usize| if maximize { -g[i] } else { g[i] };
        let mut scale = 0.0f32;
        if caution {
            let count = (0..p.len())
                .filter(|&i| {
                    let gi = grad(i);
                    direction(m[i], gi, h) * gi > 0.0
                })
                .count();
            scale = caution_scale(count, p.len());
        }
        for i in 0..p.len() {
            let gi = grad(i);
            let pi = p[i] * h.decay_factor;
            let mut u = direction(m[i], gi, h);
            if caution {
                u *= if u * gi > 0.0 { scale } else { 0.0 };
            }
            p[i] = pi + h.neg_lr * u;
            m[i] = lerp_torch(m[i], gi, h.one_minus_beta2);
        }
    }

    fn bytes_per_element(&self) -> u64 {
        // reads p, g, m, writes p, m; caution's count pass reads g and m.
        if self.caution {
            28
        } else {
            20
        }
    }

    fn presets() -> Vec<(&'static str, Self)> {
        vec![("lion", LionConfig::default())]
    }

    fn variants() -> Vec<Self> {
        let mut out = Vec::new();
        for caution in [false, true] {
            for weight_decay in [0.0, 0.1] {
                for maximize in [false, true] {
                    out.push(LionConfig {
                        lr: 1e-3,
                        weight_decay,
                        caution,
                        maximize,
                        ..LionConfig::default()
                    });
                }
            }
        }
        // beta1 = 0 takes torch.lerp's second branch (weight >= 0.5): the update is sign(g).
        out.push(LionConfig {
            lr: 2e-3,
            beta1: 0.0,
            beta2: 0.9,
            caution: true,
            ..LionConfig::default()
        });
        out
    }
}
