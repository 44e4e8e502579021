//! Adagrad with learning-rate decay and an initial accumulator: `torch.optim.Adagrad`.
//!
//! ```text
//! t += 1
//! g = maximize ? -grad : grad
//! if weight_decay != 0:  g = g + weight_decay * p
//! clr = lr / (1 + (t - 1) * lr_decay)           # per tensor, on the host in f64
//! sum = sum + g * g                             # sum starts at initial_accumulator_value
//! p = p - clr * g / (sqrt(sum) + eps)           # eps OUTSIDE the sqrt
//! ```
//! Kernel: `shaders/adagrad.wgsl`. Paper: Duchi, Hazan & Singer, JMLR 2011.

use bytemuck::{Pod, Zeroable};

use super::common::maximize_flag;
use super::rule::{ChunkRange, HyperCtx, MomentumKind, Rule, StateSpec};
use crate::error::{check_non_negative, Result};
use crate::shaders::{KernelDef, FLAG_MAXIMIZE};

/// `adagrad_step` in adagrad.wgsl.
pub const ADAGRAD_STEP: KernelDef = KernelDef::step(
    "adagrad_step",
    crate::kernel_source!(elementwise "adagrad.wgsl"),
    1,
);

/// Adagrad hyperparameters; `Default` is PyTorch's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AdagradConfig {
    /// Learning rate (default 1e-2).
    pub lr: f64,
    /// Learning-rate decay per step (default 0).
    pub lr_decay: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
    /// Starting value of the squared-gradient sum (default 0).
    pub initial_accumulator_value: f64,
    /// Added to the root, outside the square root (default 1e-10).
    pub eps: f64,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            maximize: false,
        }
    }
}

/// Mirrors `AdagradHyper` in adagrad.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AdagradHyper {
    /// FLAG_MAXIMIZE.
    pub flags: u32,
    /// eps.
    pub eps: f32,
    /// Padding to 16 bytes.
    pub pad: [u32; 2],
}

/// Mirrors `AdagradTensor` in adagrad.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AdagradTensor {
    /// 1 when the tensor steps this time.
    pub live: u32,
    /// The tensor's group among its segment's groups (indexes the per-group table).
    pub group: u32,
    /// -lr / (1 + (t - 1) * lr_decay).
    pub neg_clr: f32,
    /// Weight decay of the group.
    pub weight_decay: f32,
}

impl Rule for AdagradConfig {
    type Hyper = AdagradHyper;
    type TensorStep = AdagradTensor;
    const KERNEL: KernelDef = ADAGRAD_STEP;

    fn name(&self) -> &'static str {
        "adagrad"
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
        check_non_negative("lr_decay", self.lr_decay)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        check_non_negative("initial_accumulator_value", self.initial_accumulator_value)?;
        check_non_negative("eps", self.eps)
    }

    fn states(&self) -> Vec<StateSpec> {
        vec![StateSpec {
            name: "sum",
            slot: 0,
            init: self.initial_accumulator_value as f32,
        }]
    }

    fn hyper(&self, ctx: HyperCtx) -> AdagradHyper {
        AdagradHyper {
            flags: maximize_flag(self.maximize) | ctx.extra_flags,
            eps: self.eps as f32,
            pad: [0; 2],
        }
    }

    fn tensor_step(&self, t: u64, group: u32, _chunks: ChunkRange) -> AdagradTensor {
        let clr = self.lr / (1.0 + (t as f64 - 1.0) * self.lr_decay);
        AdagradTensor {
            live: 1,
            group,
            neg_clr: (-clr) as f32,
            weight_decay: self.weight_decay as f32,
        }
    }

    fn update(
        h: &AdagradHyper,
        ts: &AdagradTensor,
        p: &mut [f32],
        g: &[f32],
        state: &mut [&mut [f32]],
    ) {
        let maximize = h.flags & FLAG_MAXIMIZE != 0;
        let [sum] = state else { return };
        for i in 0..p.len() {
            let p0 = p[i];
            let mut gi = if maximize { -g[i] } else { g[i] };
            if ts.weight_decay != 0.0 {
                gi += ts.weight_decay * p0;
            }
            let s = sum[i] + gi * gi;
            sum[i] = s;
            p[i] = p0 + (ts.neg_clr * gi) / (s.sqrt() + h.eps);
        }
    }

    fn bytes_per_element(&self) -> u64 {
        20
    }

    fn presets() -> Vec<(&'static str, Self)> {
        vec![("adagrad", AdagradConfig::default())]
    }

    fn variants() -> Vec<Self> {
        let mut out = Vec::new();
        for lr_decay in [0.0, 0.05] {
            for initial_accumulator_value in [0.0, 0.1] {
                for weight_decay in [0.0, 1e-2] {
                    for maximize in [false, true] {
                        out.push(AdagradConfig {
                            lr_decay,
                            initial_accumulator_value,
                            weight_decay,
                            maximize,
                            ..AdagradConfig::default()
                        });
                    }
                }
            }
        }
        out
    }
}
