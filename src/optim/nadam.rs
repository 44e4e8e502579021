//! NAdam and NAdamW: `torch.optim.NAdam` (with `decoupled_weight_decay`).
//!
//! ```text
//! t += 1
//! g = maximize ? -grad : grad
//! if weight_decay != 0:
//!     decoupled (NAdamW): p = p * (1 - lr * weight_decay)     # the pre-step p
//!     else (L2):          g = g + weight_decay * p
//! mu_t  = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay))       # host, f64
//! mu_t1 = beta1 * (1 - 0.5 * 0.96^((t + 1) * momentum_decay))
//! mu_product = mu_product * mu_t                              # per tensor, starts at 1
//! m = lerp(m, g, 1 - beta1)
//! v = beta2 * v + (1 - beta2) * g * g
//! denom = sqrt(v / (1 - beta2^t)) + eps                       # divide, then sqrt; eps outside
//! p = p + (-lr * (1 - mu_t) / (1 - mu_product)) * g / denom
//! p = p + (-lr * mu_t1 / (1 - mu_product * mu_t1)) * m / denom
//! ```
//! As in torch's for-loop, the update is two `addcdiv`s, so `p` is rounded twice per step (the
//! kernel does the same). The momentum schedule is not beta1: with the default
//! `momentum_decay = 4e-3`, `mu_t` is about `0.45 * beta1 / 0.9` for thousands of steps;
//! `momentum_decay = 0` gives `mu_t = beta1 / 2`. `mu_product` is host-side scalar state per
//! tensor (frozen tensors keep their own), kept in f64 where torch keeps an f32 0-dim tensor
//! (a difference of about 1e-7 relative); it reads back as state `mu_product`. Every scalar
//! coefficient is computed on the host in f64 as torch's for-loop does with Python floats and
//! rounded to f32 once. Kernel: `shaders/nadam.wgsl`. Papers: Dozat 2016 (NAdam, "Incorporating
//! Nesterov Momentum into Adam"), Loshchilov & Hutter 2019 (decoupled weight decay).

use bytemuck::{Pod, Zeroable};

use super::common::{lerp_torch, maximize_flag};
use super::rule::{ChunkRange, HyperCtx, MomentumKind, Rule, Scalars, StateSpec, MAX_SCALARS};
use crate::error::{check_non_negative, check_unit_interval, Result};
use crate::shaders::{KernelDef, FLAG_MAXIMIZE};

/// `nadam_step` in nadam.wgsl.
pub const NADAM_STEP: KernelDef = KernelDef::step(
    "nadam_step",
    crate::kernel_source!(elementwise "nadam.wgsl"),
    2,
);

/// WGSL `NADAM_DECOUPLED`.
pub const NADAM_DECOUPLED: u32 = 256;

/// NAdam hyperparameters; `Default` is `torch.optim.NAdam`'s.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct NadamConfig {
    /// Learning rate (default 2e-3).
    pub lr: f64,
    /// Decay of the first moment, and the scale of the momentum schedule (default 0.9).
    pub beta1: f64,
    /// Decay of the second moment (default 0.999).
    pub beta2: f64,
    /// Added to the bias-corrected `sqrt(v)`, outside the square root (default 1e-8).
    pub eps: f64,
    /// Weight decay: L2 on the gradient, or decoupled when `decoupled_weight_decay` (default 0).
    pub weight_decay: f64,
    /// psi of the momentum schedule `mu_t = beta1 * (1 - 0.5 * 0.96^(t * psi))` (default 4e-3).
    pub momentum_decay: f64,
    /// Decoupled weight decay, i.e. NAdamW (default false).
    pub decoupled_weight_decay: bool,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for NadamConfig {
    fn default() -> Self {
        Self {
            lr: 2e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum_decay: 4e-3,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

/// Mirrors `NadamHyper` in nadam.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct NadamHyper {
    /// FLAG_MAXIMIZE | NADAM_DECOUPLED (| FLAG_GRAD_SCALE).
    pub flags: u32,
    /// 1 - beta1, formed in f64 (the lerp weight).
    pub one_minus_beta1: f32,
    /// beta2.
    pub beta2: f32,
    /// 1 - beta2, formed in f64.
    pub one_minus_beta2: f32,
    /// eps.
    pub eps: f32,
    /// Weight decay of the group.
    pub weight_decay: f32,
    /// 1 - lr * weight_decay, formed in f64 (decoupled decay).
    pub decay_factor: f32,
    /// Padding to 32 bytes.
    pub pad: u32,
}

/// Mirrors `NadamTensor` in nadam.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct NadamTensor {
    /// 1 when the tensor steps this time.
    pub live: u32,
    /// The tensor's group among its segment's groups (indexes the per-group table).
    pub group: u32,
    /// 1 - beta2^t.
    pub bias_correction2: f32,
    /// -lr * (1 - mu_t) / (1 - mu_product): the gradient's coefficient.
    pub grad_coef: f32,
    /// -lr * mu_{t+1} / (1 - mu_product * mu_{t+1}): the first moment's coefficient.
    pub exp_avg_coef: f32,
    /// Padding to 32 bytes.
    pub pad: [u32; 3],
}

impl NadamConfig {
    /// The momentum schedule `mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay))`, in f64
    /// with a float `t` as torch's for-loop computes it.
    pub fn mu(&self, t: f64) -> f64 {
        self.beta1 * (1.0 - 0.5 * 0.96f64.powf(t * self.momentum_decay))
    }

    /// The per-tensor scalars of step `t`, given the tensor's `mu_product` before this step;
    /// returns them with the product after it.
    fn coefficients(&self, t: u64, group: u32, mu_product: f64) -> (NadamTensor, f64) {
        let t = t as f64;
        let bias_correction2 = 1.0 - self.beta2.powf(t);
        let mu = self.mu(t);
        let mu_next = self.mu(t + 1.0);
        let mu_product = mu_product * mu;
        let mu_product_next = mu_product * mu_next;
        let ts = NadamTensor {
            live: 1,
            group,
            bias_correction2: bias_correction2 as f32,
            grad_coef: (-self.lr * (1.0 - mu) / (1.0 - mu_product)) as f32,
            exp_avg_coef: ((-self.lr * mu_next) / (1.0 - mu_product_next)) as f32,
            pad: [0; 3],
        };
        (ts, mu_product)
    }
}

impl Rule for NadamConfig {
    type Hyper = NadamHyper;
    type TensorStep = NadamTensor;
    const KERNEL: KernelDef = NADAM_STEP;

    fn name(&self) -> &'static str {
        if self.decoupled_weight_decay {
            "nadamw"
        } else {
            "nadam"
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
        // torch.optim.NAdam's order.
        check_non_negative("lr", self.lr)?;
        check_non_negative("eps", self.eps)?;
        check_unit_interval("beta1", self.beta1)?;
        check_unit_interval("beta2", self.beta2)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        check_non_negative("momentum_decay", self.momentum_decay)
    }

    fn states(&self) -> Vec<StateSpec> {
        super::adam::moment_states()
    }

    fn hyper(&self, ctx: HyperCtx) -> NadamHyper {
        let mut flags = maximize_flag(self.maximize) | ctx.extra_flags;
        if self.decoupled_weight_decay {
            flags |= NADAM_DECOUPLED;
        }
        NadamHyper {
            flags,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            decay_factor: (1.0 - self.lr * self.weight_decay) as f32,
            pad: 0,
        }
    }

    /// The scalars of a tensor that has stepped on every step so far (its `mu_product` is
    /// the product of `mu_1..mu_t`); the engines use [`Rule::tensor_step_with`], which keeps
    /// each tensor's own product.
    fn tensor_step(&self, t: u64, group: u32, _chunks: ChunkRange) -> NadamTensor {
        let before: f64 = (1..t).map(|s| self.mu(s as f64)).product();
        self.coefficients(t, group, before).0
    }

    fn scalar_names(&self) -> &'static [&'static str] {
        &["mu_product"]
    }

    fn init_scalars(&self) -> Scalars {
        let mut s = [0.0; MAX_SCALARS];
        s[0] = 1.0;
        s
    }

    fn tensor_step_with(
        &self,
        t: u64,
        group: u32,
        _chunks: ChunkRange,
        scalars: &mut Scalars,
    ) -> NadamTensor {
        let (ts, mu_product) = self.coefficients(t, group, scalars[0]);
        scalars[0] = mu_product;
        ts
    }

    fn update(
        h: &NadamHyper,
        ts: &NadamTensor,
        p: &mut [f32],
        g: &[f32],
        state: &mut [&mut [f32]],
    ) {
        let maximize = h.flags & FLAG_MAXIMIZE != 0;
        let decoupled = h.flags & NADAM_DECOUPLED != 0;
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
            let denom = (vi / ts.bias_correction2).sqrt() + h.eps;
            // Two addcdivs, as torch: p is rounded after each.
            pi += (ts.grad_coef * gi) / denom;
            p[i] = pi + (ts.exp_avg_coef * mi) / denom;
        }
    }

    fn bytes_per_element(&self) -> u64 {
        28
    }

    fn presets() -> Vec<(&'static str, Self)> {
        vec![
            ("nadam", NadamConfig::default()),
            (
                "nadamw",
                NadamConfig {
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
            (false, 1e-2, false),
            (false, 1e-2, true),
            (true, 1e-2, false),
            (true, 1e-2, true),
        ] {
            out.push(NadamConfig {
                lr: 0.01,
                weight_decay,
                decoupled_weight_decay: decoupled,
                maximize,
                ..NadamConfig::default()
            });
        }
        // beta1 = 0 exercises torch.lerp's second branch (weight >= 0.5) and a zero momentum
        // schedule; a large psi moves mu_t towards beta1 within the run.
        out.push(NadamConfig {
            lr: 0.01,
            beta1: 0.0,
            beta2: 0.9,
            eps: 1e-3,
            momentum_decay: 0.0,
            ..NadamConfig::default()
        });
        out.push(NadamConfig {
            lr: 0.01,
            beta1: 0.8,
            momentum_decay: 1.0,
            ..NadamConfig::default()
        });
        out
    }
}
