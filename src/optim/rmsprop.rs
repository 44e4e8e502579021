//! RMSprop, plain, centered and with momentum: `torch.optim.RMSprop`.
//!
//! ```text
//! g = maximize ? -grad : grad
//! if weight_decay != 0:  g = g + weight_decay * p
//! sq = alpha * sq + (1 - alpha) * g * g
//! centered: ga = lerp(ga, g, 1 - alpha); avg = sqrt(sq - ga * ga)     # no clamp at 0
//! else:     avg = sqrt(sq)
//! avg = avg + eps                                                     # eps OUTSIDE the sqrt
//! momentum > 0: buf = momentum * buf + g / avg;  p = p - lr * buf     # buf starts at ZERO
//! else:         p = p - lr * g / avg
//! ```
//! No bias correction. TensorFlow puts eps inside the sqrt; PyTorch (and this crate) outside.
//! Kernel: `shaders/rmsprop.wgsl`. Source: Hinton, Coursera lecture 6e; centered: Graves 2013.

use bytemuck::{Pod, Zeroable};

use super::common::{lerp_torch, maximize_flag};
use super::rule::{ChunkRange, HyperCtx, MomentumKind, Rule, StateSpec};
use crate::error::{check_non_negative, Result};
use crate::shaders::{KernelDef, FLAG_MAXIMIZE};

/// `rmsprop_step` in rmsprop.wgsl.
pub const RMSPROP_STEP: KernelDef = KernelDef::step(
    "rmsprop_step",
    crate::kernel_source!(elementwise "rmsprop.wgsl"),
    3,
);

/// WGSL `RMS_CENTERED`.
pub const RMS_CENTERED: u32 = 256;
/// WGSL `RMS_MOMENTUM`.
pub const RMS_MOMENTUM: u32 = 512;

/// RMSprop hyperparameters; `Default` is PyTorch's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RmspropConfig {
    /// Learning rate (default 1e-2).
    pub lr: f64,
    /// Smoothing constant of the squared-gradient average (default 0.99).
    pub alpha: f64,
    /// Added to the root, outside the square root (default 1e-8).
    pub eps: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
    /// Momentum factor (default 0: no momentum buffer).
    pub momentum: f64,
    /// Normalise by the estimated variance instead of the raw second moment (default false).
    pub centered: bool,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for RmspropConfig {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            maximize: false,
        }
    }
}

/// Mirrors `RmspropHyper` in rmsprop.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct RmspropHyper {
    /// FLAG_MAXIMIZE | RMS_CENTERED | RMS_MOMENTUM.
    pub flags: u32,
    /// alpha.
    pub alpha: f32,
    /// 1 - alpha, formed in f64.
    pub one_minus_alpha: f32,
    /// eps.
    pub eps: f32,
    /// momentum.
    pub momentum: f32,
    /// Padding to 32 bytes.
    pub pad: [u32; 3],
}

/// Mirrors `RmspropTensor` in rmsprop.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct RmspropTensor {
    /// 1 when the tensor steps this time.
    pub live: u32,
    /// The tensor's group among its segment's groups (indexes the per-group table).
    pub group: u32,
    /// -lr of the group.
    pub neg_lr: f32,
    /// Weight decay of the group.
    pub weight_decay: f32,
}

impl Rule for RmspropConfig {
    type Hyper = RmspropHyper;
    type TensorStep = RmspropTensor;
    const KERNEL: KernelDef = RMSPROP_STEP;

    fn name(&self) -> &'static str {
        match (self.centered, self.momentum > 0.0) {
            (false, false) => "rmsprop",
            (false, true) => "rmsprop-momentum",
            (true, false) => "rmsprop-centered",
            (true, true) => "rmsprop-centered-momentum",
        }
    }
    fn momentum_mut(&mut self) -> Option<(MomentumKind, &mut f64)> {
        Some((MomentumKind::Momentum, &mut self.momentum))
    }
    fn weight_decay_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.weight_decay)
    }
    fn grad_reads(&self) -> Option<u64> {
        Some(1)
    }

    fn validate(&self) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("eps", self.eps)?;
        check_non_negative("momentum", self.momentum)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        check_non_negative("alpha", self.alpha)
    }

    fn states(&self) -> Vec<StateSpec> {
        let mut s = vec![StateSpec {
            name: "square_avg",
            slot: 0,
            init: 0.0,
        }];
        if self.momentum > 0.0 {
            s.push(StateSpec {
                name: "momentum_buffer",
                slot: 1,
                init: 0.0,
            });
        }
        if self.centered {
            s.push(StateSpec {
                name: "grad_avg",
                slot: 2,
                init: 0.0,
            });
        }
        s
    }

    fn hyper(&self, ctx: HyperCtx) -> RmspropHyper {
        let mut flags = maximize_flag(self.maximize) | ctx.extra_flags;
        if self.centered {
            flags |= RMS_CENTERED;
        }
        if self.momentum > 0.0 {
            flags |= RMS_MOMENTUM;
        }
        RmspropHyper {
            flags,
            alpha: self.alpha as f32,
            one_minus_alpha: (1.0 - self.alpha) as f32,
            eps: self.eps as f32,
            momentum: self.momentum as f32,
            pad: [0; 3],
        }
    }

    fn tensor_step(&self, _t: u64, group: u32, _chunks: ChunkRange) -> RmspropTensor {
        RmspropTensor {
            live: 1,
            group,
            neg_lr: (-self.lr) as f32,
            weight_decay: self.weight_decay as f32,
        }
    }

    fn update(
        h: &RmspropHyper,
        ts: &RmspropTensor,
        p: &mut [f32],
        g: &[f32],
        state: &mut [&mut [f32]],
    ) {
        let maximize = h.flags & FLAG_MAXIMIZE != 0;
        let centered = h.flags & RMS_CENTERED != 0;
        let momentum = h.flags & RMS_MOMENTUM != 0;
        let [sq, buf, ga] = state else { return };
        for i in 0..p.len() {
            let p0 = p[i];
            let mut gi = if maximize { -g[i] } else { g[i] };
            if ts.weight_decay != 0.0 {
                gi += ts.weight_decay * p0;
            }
            let s = sq[i] * h.alpha + (h.one_minus_alpha * gi) * gi;
            sq[i] = s;
            let mut avg = if centered {
                let a = lerp_torch(ga[i], gi, h.one_minus_alpha);
                ga[i] = a;
                (s - a * a).sqrt()
            } else {
                s.sqrt()
            };
            avg += h.eps;
            p[i] = if momentum {
                let b = buf[i] * h.momentum + gi / avg;
                buf[i] = b;
                p0 + ts.neg_lr * b
            } else {
                p0 + (ts.neg_lr * gi) / avg
            };
        }
    }

    fn bytes_per_element(&self) -> u64 {
        20 + if self.momentum > 0.0 { 8 } else { 0 } + if self.centered { 8 } else { 0 }
    }

    fn presets() -> Vec<(&'static str, Self)> {
        let rms = RmspropConfig::default();
        vec![
            ("rmsprop", rms.clone()),
            (
                "rmsprop-momentum",
                RmspropConfig {
                    momentum: 0.9,
                    ..rms.clone()
                },
            ),
            (
                "rmsprop-centered",
                RmspropConfig {
                    centered: true,
                    ..rms.clone()
                },
            ),
            (
                "rmsprop-centered-momentum",
                RmspropConfig {
                    centered: true,
                    momentum: 0.9,
                    ..rms
                },
            ),
        ]
    }

    fn variants() -> Vec<Self> {
        let mut out = Vec::new();
        for centered in [false, true] {
            for momentum in [0.0, 0.9] {
                for weight_decay in [0.0, 1e-2] {
                    for maximize in [false, true] {
                        out.push(RmspropConfig {
                            centered,
                            momentum,
                            weight_decay,
                            maximize,
                            ..RmspropConfig::default()
                        });
                    }
                }
            }
        }
        out
    }
}
