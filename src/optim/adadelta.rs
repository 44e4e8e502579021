//! Adadelta: `torch.optim.Adadelta`.
//!
//! ```text
//! g = maximize ? -grad : grad
//! if weight_decay != 0:  g = g + weight_decay * p
//! s = rho * s + (1 - rho) * g * g                        # square_avg, starts at 0
//! delta = sqrt(a + eps) / sqrt(s + eps) * g              # eps INSIDE both square roots
//! a = rho * a + (1 - rho) * delta * delta                # acc_delta, starts at 0
//! p = p - lr * delta
//! ```
//! Defaults (PyTorch 2.15): `lr = 1.0`, `rho = 0.9`, `eps = 1e-6`, `weight_decay = 0`. `rho = 1`
//! keeps both averages at 0 and is plain SGD (`delta = g` exactly); `rho = 0` keeps no memory.
//! The first steps move by about `lr * sqrt(eps)`, by design. The step count is kept (PyTorch's
//! `state["step"]`) but the math does not use it. Kernel: `shaders/adadelta.wgsl`. Paper:
//! Zeiler 2012, "ADADELTA: An Adaptive Learning Rate Method".

use bytemuck::{Pod, Zeroable};

use super::common::maximize_flag;
use super::rule::{ChunkRange, HyperCtx, MomentumKind, Rule, StateSpec};
use crate::error::{check_non_negative, Error, Result};
use crate::shaders::{KernelDef, FLAG_MAXIMIZE};

/// `adadelta_step` in adadelta.wgsl.
pub const ADADELTA_STEP: KernelDef = KernelDef::step(
    "adadelta_step",
    crate::kernel_source!(elementwise "adadelta.wgsl"),
    2,
);

/// Adadelta hyperparameters; `Default` is `torch.optim.Adadelta`'s.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AdadeltaConfig {
    /// Learning rate, a factor on `delta` (default 1.0).
    pub lr: f64,
    /// Decay of both running averages, in `[0, 1]` (default 0.9).
    pub rho: f64,
    /// Added inside both square roots (default 1e-6).
    pub eps: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for AdadeltaConfig {
    fn default() -> Self {
        Self {
            lr: 1.0,
            rho: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// Mirrors `AdadeltaHyper` in adadelta.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AdadeltaHyper {
    /// FLAG_MAXIMIZE (| FLAG_GRAD_SCALE).
    pub flags: u32,
    /// rho.
    pub rho: f32,
    /// 1 - rho, formed in f64.
    pub one_minus_rho: f32,
    /// eps.
    pub eps: f32,
    /// -lr.
    pub neg_lr: f32,
    /// Weight decay.
    pub weight_decay: f32,
    /// Padding to 32 bytes.
    pub pad: [u32; 2],
}

/// Mirrors `AdadeltaTensor` in adadelta.wgsl (nothing depends on the step count).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AdadeltaTensor {
    /// 1 when the tensor steps this time.
    pub live: u32,
    /// The tensor's group among its segment's groups (indexes the per-group table).
    pub group: u32,
    /// Padding to 16 bytes.
    pub pad: [u32; 2],
}

impl Rule for AdadeltaConfig {
    type Hyper = AdadeltaHyper;
    type TensorStep = AdadeltaTensor;
    const KERNEL: KernelDef = ADADELTA_STEP;

    fn name(&self) -> &'static str {
        "adadelta"
    }
    fn momentum_mut(&mut self) -> Option<(MomentumKind, &mut f64)> {
        None
    }
    fn weight_decay_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.weight_decay)
    }
    fn grad_reads(&self) -> Option<u64> {
        Some(1)
    }

    fn validate(&self) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        // PyTorch: `0 <= rho <= 1`, both ends allowed.
        if !(0.0..=1.0).contains(&self.rho) {
            return Err(Error::InvalidHyperparameter {
                name: "rho",
                value: self.rho,
                reason: "must be in [0, 1]",
            });
        }
        check_non_negative("eps", self.eps)?;
        check_non_negative("weight_decay", self.weight_decay)
    }

    fn states(&self) -> Vec<StateSpec> {
        vec![
            StateSpec {
                name: "square_avg",
                slot: 0,
                init: 0.0,
            },
            StateSpec {
                name: "acc_delta",
                slot: 1,
                init: 0.0,
            },
        ]
    }

    fn hyper(&self, ctx: HyperCtx) -> AdadeltaHyper {
        AdadeltaHyper {
            flags: maximize_flag(self.maximize) | ctx.extra_flags,
            rho: self.rho as f32,
            one_minus_rho: (1.0 - self.rho) as f32,
            eps: self.eps as f32,
            neg_lr: (-self.lr) as f32,
            weight_decay: self.weight_decay as f32,
            pad: [0; 2],
        }
    }

    fn tensor_step(&self, _t: u64, group: u32, _chunks: ChunkRange) -> AdadeltaTensor {
        AdadeltaTensor {
            live: 1,
            group,
            pad: [0; 2],
        }
    }

    fn update(
        h: &AdadeltaHyper,
        _ts: &AdadeltaTensor,
        p: &mut [f32],
        g: &[f32],
        state: &mut [&mut [f32]],
    ) {
        let maximize = h.flags & FLAG_MAXIMIZE != 0;
        let [square_avg, acc_delta] = state else {
            return;
        };
        for i in 0..p.len() {
            let p0 = p[i];
            let mut gi = if maximize { -g[i] } else { g[i] };
            if h.weight_decay != 0.0 {
                gi += h.weight_decay * p0;
            }
            // square_avg.mul_(rho).addcmul_(g, g, value=1 - rho)
            let s = square_avg[i] * h.rho + (h.one_minus_rho * gi) * gi;
            square_avg[i] = s;
            // std = sqrt(s + eps); delta = sqrt(a + eps) / std * g (WGSL reserves `std`)
            let root_s = (s + h.eps).sqrt();
            let a0 = acc_delta[i];
            let delta = (a0 + h.eps).sqrt() / root_s * gi;
            acc_delta[i] = a0 * h.rho + (h.one_minus_rho * delta) * delta;
            p[i] = p0 + h.neg_lr * delta;
        }
    }

    fn bytes_per_element(&self) -> u64 {
        // Reads p, g, square_avg, acc_delta; writes p, square_avg, acc_delta.
        28
    }

    fn presets() -> Vec<(&'static str, Self)> {
        vec![("adadelta", AdadeltaConfig::default())]
    }

    fn variants() -> Vec<Self> {
        let mut out = Vec::new();
        for weight_decay in [0.0, 1e-2] {
            for maximize in [false, true] {
                out.push(AdadeltaConfig {
                    lr: 0.5,
                    weight_decay,
                    maximize,
                    ..AdadeltaConfig::default()
                });
            }
        }
        // The ends of rho's range (no memory; plain SGD) and a large eps.
        for (rho, eps) in [(0.0, 1e-6), (1.0, 1e-8), (0.5, 1e-3)] {
            out.push(AdadeltaConfig {
                lr: 0.5,
                rho,
                eps,
                ..AdadeltaConfig::default()
            });
        }
        out
    }
}
