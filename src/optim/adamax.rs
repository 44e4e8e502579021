//! Adamax: `torch.optim.Adamax`, Adam with the infinity norm.
//!
//! ```text
//! t += 1
//! g = maximize ? -grad : grad
//! if weight_decay != 0:  g = g + weight_decay * p        # coupled (L2) only
//! m = lerp(m, g, 1 - beta1)
//! u = max(beta2 * u, |g| + eps)                          # eps INSIDE the max
//! p = p + (-lr / (1 - beta1^t)) * m / u
//! ```
//! `u` (state `exp_inf`) has no bias correction, and is at least eps after a tensor's first
//! step, so exact-zero gradients divide by eps, not by zero. The bias correction is per tensor
//! (frozen tensors keep their own `t`), computed on the host in f64 as torch's for-loop does.
//! The max propagates NaN as `torch.maximum` does (`f32::max` and WGSL's `max` would drop it):
//! a NaN gradient makes `exp_inf`, `exp_avg` and the params NaN, as in torch.
//! Kernel: `shaders/adamax.wgsl`. Paper: Kingma & Ba 2015, section 7.1.

use bytemuck::{Pod, Zeroable};

use super::common::{lerp_torch, maximize_flag};
use super::rule::{ChunkRange, HyperCtx, MomentumKind, Rule, StateSpec};
use crate::error::{check_non_negative, check_unit_interval, Result};
use crate::shaders::{KernelDef, FLAG_MAXIMIZE};

/// `adamax_step` in adamax.wgsl.
pub const ADAMAX_STEP: KernelDef = KernelDef::step(
    "adamax_step",
    crate::kernel_source!(elementwise "adamax.wgsl"),
    2,
);

/// Adamax hyperparameters; `Default` is `torch.optim.Adamax`'s.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AdamaxConfig {
    /// Learning rate (default 2e-3).
    pub lr: f64,
    /// Decay of the first moment (default 0.9).
    pub beta1: f64,
    /// Decay of the infinity norm (default 0.999).
    pub beta2: f64,
    /// Added to `|g|` inside the max (default 1e-8).
    pub eps: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for AdamaxConfig {
    fn default() -> Self {
        Self {
            lr: 2e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// Mirrors `AdamaxHyper` in adamax.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AdamaxHyper {
    /// FLAG_MAXIMIZE (| FLAG_GRAD_SCALE).
    pub flags: u32,
    /// 1 - beta1, formed in f64 (the lerp weight).
    pub one_minus_beta1: f32,
    /// beta2.
    pub beta2: f32,
    /// eps.
    pub eps: f32,
    /// Weight decay of the group.
    pub weight_decay: f32,
    /// Padding to 32 bytes.
    pub pad: [u32; 3],
}

/// Mirrors `AdamaxTensor` in adamax.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AdamaxTensor {
    /// 1 when the tensor steps this time.
    pub live: u32,
    /// The tensor's group among its segment's groups (indexes the per-group table).
    pub group: u32,
    /// -lr / (1 - beta1^t).
    pub neg_clr: f32,
    /// Padding to 16 bytes.
    pub pad: u32,
}

impl Rule for AdamaxConfig {
    type Hyper = AdamaxHyper;
    type TensorStep = AdamaxTensor;
    const KERNEL: KernelDef = ADAMAX_STEP;

    fn name(&self) -> &'static str {
        "adamax"
    }
    fn momentum_mut(&mut self) -> Option<(MomentumKind, &mut f64)> {
        Some((MomentumKind::Beta1, &mut self.beta1))
    }
    fn weight_decay_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.weight_decay)
    }
    fn grad_reads(&self) -> Option<u64> {
        Some(1)
    }

    fn validate(&self) -> Result<()> {
        // torch.optim.Adamax's order.
        check_non_negative("lr", self.lr)?;
        check_non_negative("eps", self.eps)?;
        check_unit_interval("beta1", self.beta1)?;
        check_unit_interval("beta2", self.beta2)?;
        check_non_negative("weight_decay", self.weight_decay)
    }

    fn states(&self) -> Vec<StateSpec> {
        vec![
            StateSpec {
                name: "exp_avg",
                slot: 0,
                init: 0.0,
            },
            StateSpec {
                name: "exp_inf",
                slot: 1,
                init: 0.0,
            },
        ]
    }

    fn hyper(&self, ctx: HyperCtx) -> AdamaxHyper {
        AdamaxHyper {
            flags: maximize_flag(self.maximize) | ctx.extra_flags,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            pad: [0; 3],
        }
    }

    fn tensor_step(&self, t: u64, group: u32, _chunks: ChunkRange) -> AdamaxTensor {
        // As torch's for-loop: `clr = lr / (1 - beta1 ** step)` in Python floats.
        let bias_correction = 1.0 - self.beta1.powf(t as f64);
        let clr = self.lr / bias_correction;
        AdamaxTensor {
            live: 1,
            group,
            neg_clr: (-clr) as f32,
            pad: 0,
        }
    }

    fn update(
        h: &AdamaxHyper,
        ts: &AdamaxTensor,
        p: &mut [f32],
        g: &[f32],
        state: &mut [&mut [f32]],
    ) {
        let maximize = h.flags & FLAG_MAXIMIZE != 0;
        let [m, u] = state else { return };
        for i in 0..p.len() {
            let pi = p[i];
            let mut gi = if maximize { -g[i] } else { g[i] };
            if h.weight_decay != 0.0 {
                gi += h.weight_decay * pi;
            }
            let mi = lerp_torch(m[i], gi, h.one_minus_beta1);
            // torch.maximum propagates NaN (f32::max would drop it), as the kernel does.
            let (a, b) = (u[i] * h.beta2, gi.abs() + h.eps);
            let ui = if a.is_nan() {
                a
            } else if b.is_nan() {
                b
            } else {
                a.max(b)
            };
            m[i] = mi;
            u[i] = ui;
            p[i] = pi + (ts.neg_clr * mi) / ui;
        }
    }

    fn bytes_per_element(&self) -> u64 {
        28
    }

    fn presets() -> Vec<(&'static str, Self)> {
        vec![("adamax", AdamaxConfig::default())]
    }

    fn variants() -> Vec<Self> {
        let mut out = Vec::new();
        for (weight_decay, maximize) in [(0.0, false), (1e-2, false), (1e-2, true)] {
            out.push(AdamaxConfig {
                lr: 0.01,
                weight_decay,
                maximize,
                ..AdamaxConfig::default()
            });
        }
        // beta1 = 0 exercises torch.lerp's second branch; a large eps and a small beta2 make
        // both sides of the max win.
        out.push(AdamaxConfig {
            lr: 0.01,
            beta1: 0.0,
            beta2: 0.5,
            eps: 1e-1,
            maximize: true,
            ..AdamaxConfig::default()
        });
        out
    }
}
