//! Adam, AdamW and AMSGrad: `torch.optim.Adam` / `torch.optim.AdamW`.
//!
//! ```text
//! t += 1
//! g = maximize ? -grad : grad
//! if weight_decay != 0:
//!     decoupled (AdamW): p = p * (1 - lr * weight_decay)      # the pre-step p
//!     else (Adam, L2):   g = g + weight_decay * p
//! m = lerp(m, g, 1 - beta1)
//! v = beta2 * v + (1 - beta2) * g * g
//! amsgrad: vmax = max(vmax, v); vv = vmax  else vv = v      # max over the raw v
//! p = p - (lr / (1 - beta1^t)) * m / (sqrt(vv) / sqrt(1 - beta2^t) + eps)   # eps OUTSIDE sqrt
//! ```
//! Bias corrections are per tensor (frozen tensors keep their own `t`), computed on the host in
//! f64 as PyTorch's for-loop does. Kernel: `shaders/adam.wgsl`. Papers: Kingma & Ba 2015 (Adam),
//! Loshchilov & Hutter 2019 (AdamW), Reddi et al. 2018 (AMSGrad).

use bytemuck::{Pod, Zeroable};

use super::common::{lerp_torch, maximize_flag};
use super::rule::{ChunkRange, HyperCtx, MomentumKind, Rule, StateSpec};
use crate::error::{check_non_negative, check_unit_interval, Result};
use crate::shaders::{KernelDef, FLAG_MAXIMIZE};

/// `adam_step` in adam.wgsl.
pub const ADAM_STEP: KernelDef = KernelDef::step(
    "adam_step",
    crate::kernel_source!(elementwise "adam.wgsl"),
    3,
);

/// WGSL `ADAM_AMSGRAD`.
pub const ADAM_AMSGRAD: u32 = 256;
/// WGSL `ADAM_DECOUPLED`.
pub const ADAM_DECOUPLED: u32 = 512;

/// Adam hyperparameters; `Default` is `torch.optim.Adam`'s, [`AdamConfig::adamw`] is
/// `torch.optim.AdamW`'s.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AdamConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Decay of the first moment (default 0.9).
    pub beta1: f64,
    /// Decay of the second moment (default 0.999).
    pub beta2: f64,
    /// Added to the bias-corrected `sqrt(v)`, outside the square root (default 1e-8).
    pub eps: f64,
    /// Weight decay: L2 on the gradient, or decoupled when `decoupled_weight_decay` (default 0;
    /// AdamW's default is 1e-2).
    pub weight_decay: f64,
    /// AMSGrad: use the running maximum of `v` (default false).
    pub amsgrad: bool,
    /// Maximize the objective (default false).
    pub maximize: bool,
    /// Decoupled weight decay, i.e. AdamW (default false).
    pub decoupled_weight_decay: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            maximize: false,
            decoupled_weight_decay: false,
        }
    }
}

impl AdamConfig {
    /// `torch.optim.AdamW` defaults: Adam's, with decoupled weight decay 1e-2.
    pub fn adamw() -> Self {
        Self {
            weight_decay: 1e-2,
            decoupled_weight_decay: true,
            ..Self::default()
        }
    }
}

/// Mirrors `AdamHyper` in adam.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AdamHyper {
    /// FLAG_MAXIMIZE | ADAM_AMSGRAD | ADAM_DECOUPLED.
    pub flags: u32,
    /// 1 - beta1, formed in f64 (the lerp weight).
    pub one_minus_beta1: f32,
    /// beta2.
    pub beta2: f32,
    /// 1 - beta2, formed in f64 (in f32 it would be off by 1.3e-5 relative for 0.999).
    pub one_minus_beta2: f32,
    /// eps.
    pub eps: f32,
    /// Padding to 32 bytes.
    pub pad: [u32; 3],
}

/// Mirrors `AdamTensor` in adam.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AdamTensor {
    /// 1 when the tensor steps this time.
    pub live: u32,
    /// The tensor's group among its segment's groups (indexes the per-group table).
    pub group: u32,
    /// -lr / (1 - beta1^t).
    pub neg_step_size: f32,
    /// sqrt(1 - beta2^t).
    pub bias_correction2_sqrt: f32,
    /// Weight decay of the group.
    pub weight_decay: f32,
    /// 1 - lr * weight_decay (decoupled decay).
    pub decay_factor: f32,
    /// Padding to 32 bytes.
    pub pad: [u32; 2],
}

/// `exp_avg` and `exp_avg_sq`, zero-initialised in slots 0 and 1 (shared with LAMB).
pub(crate) fn moment_states() -> Vec<StateSpec> {
    vec![
        StateSpec {
            name: "exp_avg",
            slot: 0,
            init: 0.0,
        },
        StateSpec {
            name: "exp_avg_sq",
            slot: 1,
            init: 0.0,
        },
    ]
}

impl Rule for AdamConfig {
    type Hyper = AdamHyper;
    type TensorStep = AdamTensor;
    const KERNEL: KernelDef = ADAM_STEP;

    fn name(&self) -> &'static str {
        match (self.decoupled_weight_decay, self.amsgrad) {
            (false, false) => "adam",
            (false, true) => "adam-amsgrad",
            (true, false) => "adamw",
            (true, true) => "adamw-amsgrad",
        }
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
        check_non_negative("lr", self.lr)?;
        check_non_negative("eps", self.eps)?;
        check_unit_interval("beta1", self.beta1)?;
        check_unit_interval("beta2", self.beta2)?;
        check_non_negative("weight_decay", self.weight_decay)
    }

    fn states(&self) -> Vec<StateSpec> {
        let mut s = moment_states();
        if self.amsgrad {
            s.push(StateSpec {
                name: "max_exp_avg_sq",
                slot: 2,
                init: 0.0,
            });
        }
        s
    }

    fn hyper(&self, ctx: HyperCtx) -> AdamHyper {
        let mut flags = maximize_flag(self.maximize) | ctx.extra_flags;
        if self.amsgrad {
            flags |= ADAM_AMSGRAD;
        }
        if self.decoupled_weight_decay {
            flags |= ADAM_DECOUPLED;
        }
        AdamHyper {
            flags,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            eps: self.eps as f32,
            pad: [0; 3],
        }
    }

    fn tensor_step(&self, t: u64, group: u32, _chunks: ChunkRange) -> AdamTensor {
        // As torch's for-loop: Python floats (f64), `beta ** step` with a float step.
        let t = t as f64;
        let bias_correction1 = 1.0 - self.beta1.powf(t);
        let bias_correction2 = 1.0 - self.beta2.powf(t);
        AdamTensor {
            live: 1,
            group,
            neg_step_size: (-(self.lr / bias_correction1)) as f32,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
            weight_decay: self.weight_decay as f32,
            decay_factor: (1.0 - self.lr * self.weight_decay) as f32,
            pad: [0; 2],
        }
    }

    fn update(h: &AdamHyper, ts: &AdamTensor, p: &mut [f32], g: &[f32], state: &mut [&mut [f32]]) {
        let maximize = h.flags & FLAG_MAXIMIZE != 0;
        let amsgrad = h.flags & ADAM_AMSGRAD != 0;
        let decoupled = h.flags & ADAM_DECOUPLED != 0;
        let [m, v, vmax] = state else { return };
        for i in 0..p.len() {
            let mut pi = p[i];
            let mut gi = if maximize { -g[i] } else { g[i] };
            if ts.weight_decay != 0.0 {
                if decoupled {
                    pi *= ts.decay_factor;
                } else {
                    gi += ts.weight_decay * pi;
                }
            }
            let mi = lerp_torch(m[i], gi, h.one_minus_beta1);
            let vi = v[i] * h.beta2 + (h.one_minus_beta2 * gi) * gi;
            m[i] = mi;
            v[i] = vi;
            let vv = if amsgrad {
                let x = vmax[i].max(vi);
                vmax[i] = x;
                x
            } else {
                vi
            };
            let denom = vv.sqrt() / ts.bias_correction2_sqrt + h.eps;
            p[i] = pi + (ts.neg_step_size * mi) / denom;
        }
    }

    fn bytes_per_element(&self) -> u64 {
        if self.amsgrad {
            36
        } else {
            28
        }
    }

    fn presets() -> Vec<(&'static str, Self)> {
        vec![
            ("adam", AdamConfig::default()),
            ("adamw", AdamConfig::adamw()),
            (
                "adam-amsgrad",
                AdamConfig {
                    amsgrad: true,
                    ..Default::default()
                },
            ),
            (
                "adamw-amsgrad",
                AdamConfig {
                    amsgrad: true,
                    ..AdamConfig::adamw()
                },
            ),
        ]
    }

    fn variants() -> Vec<Self> {
        let mut out = Vec::new();
        for decoupled in [false, true] {
            for amsgrad in [false, true] {
                for weight_decay in [0.0, 1e-2] {
                    for maximize in [false, true] {
                        out.push(AdamConfig {
                            lr: 0.01,
                            weight_decay,
                            amsgrad,
                            maximize,
                            decoupled_weight_decay: decoupled,
                            ..AdamConfig::default()
                        });
                    }
                }
            }
        }
        // beta1 = 0 exercises torch.lerp's second branch (weight >= 0.5).
        out.push(AdamConfig {
            beta1: 0.0,
            beta2: 0.9,
            eps: 1e-3,
            ..AdamConfig::adamw()
        });
        out
    }
}
