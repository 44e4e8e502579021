//! RAdam and RAdamW: `torch.optim.RAdam` (with `decoupled_weight_decay`).
//!
//! ```text
//! t += 1
//! g = maximize ? -grad : grad
//! if weight_decay != 0:
//!     decoupled (RAdamW): p = p * (1 - lr * weight_decay)     # the pre-step p
//!     else (L2):          g = g + weight_decay * p
//! m = lerp(m, g, 1 - beta1)
//! v = beta2 * v + (1 - beta2) * g * g
//! bc1 = 1 - beta1^t;  bc2 = 1 - beta2^t
//! rho_inf = 2 / (1 - beta2) - 1
//! rho_t = rho_inf - 2 t beta2^t / bc2                           # host, f64, per tensor
//! if rho_t > 5:
//!     r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
//!     p = p - (((m / bc1) * lr) * ((1 / (sqrt(v) + eps)) * sqrt(bc2))) * r
//! else:
//!     p = p - (m / bc1) * lr
//! ```
//! eps is added to the raw `sqrt(v)`, before the bias correction (Adam adds it after). The
//! rectification switch is decided on the host per tensor from its own step count, in f64
//! exactly as torch's for-loop compares `rho_t > 5`: for every `beta2 >= 0.9` the first
//! rectified step is t = 6, and for `beta2 <= 2/3` it never comes. The un-rectified steps still
//! update `v`. The kernel performs torch's tensor operations in torch's order (`scalar / tensor`
//! is `reciprocal(tensor) * scalar` in torch, and `add_(x, alpha=-1)` is `p - x`). Kernel: `shaders/radam.wgsl`. Paper: Liu et al.
//! 2020, "On the Variance of the Adaptive Learning Rate and Beyond".

use bytemuck::{Pod, Zeroable};

use super::common::{lerp_torch, maximize_flag};
use super::rule::{ChunkRange, HyperCtx, MomentumKind, Rule, StateSpec};
use crate::error::{check_non_negative, check_unit_interval, Result};
use crate::shaders::{KernelDef, FLAG_MAXIMIZE};

/// `radam_step` in radam.wgsl.
pub const RADAM_STEP: KernelDef = KernelDef::step(
    "radam_step",
    crate::kernel_source!(elementwise "radam.wgsl"),
    2,
);

/// WGSL `RADAM_DECOUPLED`.
pub const RADAM_DECOUPLED: u32 = 256;

/// RAdam hyperparameters; `Default` is `torch.optim.RAdam`'s.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RadamConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Decay of the first moment (default 0.9).
    pub beta1: f64,
    /// Decay of the second moment (default 0.999).
    pub beta2: f64,
    /// Added to the raw `sqrt(v)`, before the bias correction (default 1e-8).
    pub eps: f64,
    /// Weight decay: L2 on the gradient, or decoupled when `decoupled_weight_decay` (default 0).
    pub weight_decay: f64,
    /// Decoupled weight decay, i.e. RAdamW (default false).
    pub decoupled_weight_decay: bool,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for RadamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

/// Mirrors `RadamHyper` in radam.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct RadamHyper {
    /// FLAG_MAXIMIZE | RADAM_DECOUPLED (| FLAG_GRAD_SCALE).
    pub flags: u32,
    /// 1 - beta1, formed in f64 (the lerp weight).
    pub one_minus_beta1: f32,
    /// beta2.
    pub beta2: f32,
    /// 1 - beta2, formed in f64.
    pub one_minus_beta2: f32,
    /// eps.
    pub eps: f32,
    /// lr.
    pub lr: f32,
    /// Weight decay of the group.
    pub weight_decay: f32,
    /// 1 - lr * weight_decay, formed in f64 (decoupled decay).
    pub decay_factor: f32,
}

/// Mirrors `RadamTensor` in radam.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct RadamTensor {
    /// 1 when the tensor steps this time.
    pub live: u32,
    /// The tensor's group among its segment's groups (indexes the per-group table).
    pub group: u32,
    /// 1 when `rho_t > 5` (the adaptive, rectified step).
    pub rectified: u32,
    /// 1 - beta1^t.
    pub bias_correction1: f32,
    /// sqrt(1 - beta2^t) (rectified steps).
    pub bias_correction2_sqrt: f32,
    /// The rectification term r (rectified steps).
    pub rect: f32,
    /// Padding to 32 bytes.
    pub pad: [u32; 2],
}

impl RadamConfig {
    /// `rho_inf = 2 / (1 - beta2) - 1`, the maximum length of the approximated SMA.
    pub fn rho_inf(&self) -> f64 {
        2.0 / (1.0 - self.beta2) - 1.0
    }

    /// `rho_t` at step `t`, in f64 as torch's for-loop computes it.
    pub fn rho(&self, t: u64) -> f64 {
        let t = t as f64;
        let bias_correction2 = 1.0 - self.beta2.powf(t);
        self.rho_inf() - 2.0 * t * self.beta2.powf(t) / bias_correction2
    }

    /// Whether step `t` is rectified (`rho_t > 5`).
    pub fn rectified(&self, t: u64) -> bool {
        self.rho(t) > 5.0
    }
}

impl Rule for RadamConfig {
    type Hyper = RadamHyper;
    type TensorStep = RadamTensor;
    const KERNEL: KernelDef = RADAM_STEP;

    fn name(&self) -> &'static str {
        if self.decoupled_weight_decay {
            "radamw"
        } else {
            "radam"
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
        // torch.optim.RAdam's order.
        check_non_negative("lr", self.lr)?;
        check_non_negative("eps", self.eps)?;
        check_unit_interval("beta1", self.beta1)?;
        check_unit_interval("beta2", self.beta2)?;
        check_non_negative("weight_decay", self.weight_decay)
    }

    fn states(&self) -> Vec<StateSpec> {
        super::adam::moment_states()
    }

    fn hyper(&self, ctx: HyperCtx) -> RadamHyper {
        let mut flags = maximize_flag(self.maximize) | ctx.extra_flags;
        if self.decoupled_weight_decay {
            flags |= RADAM_DECOUPLED;
        }
        RadamHyper {
            flags,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            eps: self.eps as f32,
            lr: self.lr as f32,
            weight_decay: self.weight_decay as f32,
            decay_factor: (1.0 - self.lr * self.weight_decay) as f32,
        }
    }

    fn tensor_step(&self, t: u64, group: u32, _chunks: ChunkRange) -> RadamTensor {
        // As torch's for-loop: Python floats (f64), `beta ** step` with a float step.
        let tf = t as f64;
        let bias_correction1 = 1.0 - self.beta1.powf(tf);
        let bias_correction2 = 1.0 - self.beta2.powf(tf);
        let rho_inf = self.rho_inf();
        let rho_t = self.rho(t);
        let (rectified, rect) = if rho_t > 5.0 {
            let r = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                .powf(0.5);
            (1, r)
        } else {
            (0, 0.0)
        };
        RadamTensor {
            live: 1,
            group,
            rectified,
            bias_correction1: bias_correction1 as f32,
            bias_correction2_sqrt: bias_correction2.powf(0.5) as f32,
            rect: rect as f32,
            pad: [0; 2],
        }
    }

    fn update(
        h: &RadamHyper,
        ts: &RadamTensor,
        p: &mut [f32],
        g: &[f32],
        state: &mut [&mut [f32]],
    ) {
        let maximize = h.flags & FLAG_MAXIMIZE != 0;
        let decoupled = h.flags & RADAM_DECOUPLED != 0;
        let rectified = ts.rectified != 0;
        let [m, v] = state else { return };
        for i in 0..p.len() {
            let mut pi = p[i];
            let mut gi = if maximize { -g[i] } else { g[i] };
            if h.weight_decay != 0.0 {
                if decoupled {
                    pi *= h.decay_factor;
                } else {
                    gi += h.weight_decay * pi;
                }
            }
            let mi = lerp_torch(m[i], gi, h.one_minus_beta1);
            let vi = v[i] * h.beta2 + (h.one_minus_beta2 * gi) * gi;
            m[i] = mi;
            v[i] = vi;
            let step = (mi / ts.bias_correction1) * h.lr;
            p[i] = if rectified {
                let adaptive = (1.0 / (vi.sqrt() + h.eps)) * ts.bias_correction2_sqrt;
                pi - (step * adaptive) * ts.rect
            } else {
                pi - step
            };
        }
    }

    fn bytes_per_element(&self) -> u64 {
        28
    }

    fn presets() -> Vec<(&'static str, Self)> {
        vec![
            ("radam", RadamConfig::default()),
            (
                "radamw",
                RadamConfig {
                    weight_decay: 1e-2,
                    decoupled_weight_decay: true,
                    ..Default::default()
                },
            ),
        ]
    }

    fn variants() -> Vec<Self> {
        let mut out = Vec::new();
        for (decoupled, weight_decay, maximize) in [
            (false, 0.0, false),
            (false, 1e-2, true),
            (true, 1e-2, false),
            (true, 1e-2, true),
        ] {
            out.push(RadamConfig {
                lr: 0.01,
                weight_decay,
                decoupled_weight_decay: decoupled,
                maximize,
                ..RadamConfig::default()
            });
        }
        // beta1 = 0 exercises torch.lerp's second branch; eps = 1e-3 makes its placement
        // matter; beta2 = 0.5 is never rectified.
        out.push(RadamConfig {
            lr: 0.01,
            beta1: 0.0,
            beta2: 0.9,
            eps: 1e-3,
            ..RadamConfig::default()
        });
        out.push(RadamConfig {
            lr: 0.01,
            beta2: 0.5,
            weight_decay: 1e-2,
            ..RadamConfig::default()
        });
        out
    }
}
