//! SGD with momentum, dampening, Nesterov momentum and L2 weight decay: `torch.optim.SGD`.
//!
//! ```text
//! g = maximize ? -grad : grad
//! if weight_decay != 0:  g = g + weight_decay * p
//! if momentum != 0:
//!     buf = first step ? g : momentum * buf + (1 - dampening) * g    # first step: no dampening
//!     g = nesterov ? g + momentum * buf : buf
//! p = p - lr * g
//! ```
//! Velocity convention "lr outside the buffer", as PyTorch (not Sutskever et al.). Kernel:
//! `shaders/sgd.wgsl`. Nesterov momentum: Sutskever et al., ICML 2013.

use bytemuck::{Pod, Zeroable};

use super::common::maximize_flag;
use super::rule::{ChunkRange, HyperCtx, MomentumKind, Rule, StateSpec};
use crate::error::{check_finite, check_non_negative, Error, Result};
use crate::shaders::{KernelDef, FLAG_MAXIMIZE};

/// `sgd_step` in sgd.wgsl.
pub const SGD_STEP: KernelDef =
    KernelDef::step("sgd_step", crate::kernel_source!(elementwise "sgd.wgsl"), 1);

/// WGSL `SGD_MOMENTUM`.
pub const SGD_MOMENTUM: u32 = 256;
/// WGSL `SGD_NESTEROV`.
pub const SGD_NESTEROV: u32 = 512;

/// SGD hyperparameters; `Default` is PyTorch 2.15's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SgdConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Momentum factor (default 0: plain SGD, no state).
    pub momentum: f64,
    /// Dampening of the gradient in the momentum update (default 0; not applied on step 1).
    pub dampening: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
    /// Nesterov momentum; needs `momentum > 0` and `dampening == 0` (default false).
    pub nesterov: bool,
    /// Maximize the objective instead of minimizing (default false).
    pub maximize: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
        }
    }
}

/// Mirrors `SgdHyper` in sgd.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct SgdHyper {
    /// FLAG_MAXIMIZE | SGD_MOMENTUM | SGD_NESTEROV.
    pub flags: u32,
    /// momentum as f32.
    pub momentum: f32,
    /// 1 - dampening, formed in f64.
    pub one_minus_dampening: f32,
    /// Padding.
    pub pad: u32,
}

/// Mirrors `SgdTensor` in sgd.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct SgdTensor {
    /// 1 when the tensor steps this time.
    pub live: u32,
    /// The tensor's group among its segment's groups (indexes the per-group table).
    pub group: u32,
    /// 1 on the tensor's first step (momentum buffer = gradient).
    pub first: u32,
    /// -lr of the tensor's group.
    pub neg_lr: f32,
    /// Weight decay of the tensor's group.
    pub weight_decay: f32,
    /// Padding to 32 bytes (a 20-byte stride is measurably slower on lavapipe).
    pub pad: [u32; 3],
}

/// PyTorch's SGD momentum on one element (mirrors `sgd_momentum` in common.wgsl): updates the
/// buffer and returns the direction. Shared with LARS.
#[inline]
pub(crate) fn sgd_momentum(
    buf: &mut f32,
    g: f32,
    first: bool,
    momentum: f32,
    one_minus_dampening: f32,
    nesterov: bool,
) -> f32 {
    let b = if first {
        g
    } else {
        *buf * momentum + one_minus_dampening * g
    };
    *buf = b;
    if nesterov {
        g + momentum * b
    } else {
        b
    }
}

/// The state of PyTorch-style momentum: a `momentum_buffer` when momentum != 0 (shared with
/// LARS).
pub(crate) fn momentum_states(momentum: f64) -> Vec<StateSpec> {
    if momentum != 0.0 {
        vec![StateSpec {
            name: "momentum_buffer",
            slot: 0,
            init: 0.0,
        }]
    } else {
        Vec::new()
    }
}

/// PyTorch's constructor check: Nesterov needs a momentum and zero dampening.
pub(crate) fn check_nesterov(nesterov: bool, momentum: f64, dampening: f64) -> Result<()> {
    if nesterov && (momentum <= 0.0 || dampening != 0.0) {
        return Err(Error::InvalidConfig(
            "Nesterov momentum requires a momentum and zero dampening",
        ));
    }
    Ok(())
}

impl Rule for SgdConfig {
    type Hyper = SgdHyper;
    type TensorStep = SgdTensor;
    const KERNEL: KernelDef = SGD_STEP;

    fn name(&self) -> &'static str {
        match (self.momentum != 0.0, self.nesterov) {
            (false, _) => "sgd",
            (true, false) => "sgd-momentum",
            (true, true) => "sgd-nesterov",
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
        check_non_negative("momentum", self.momentum)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        check_finite("dampening", self.dampening)?;
        check_nesterov(self.nesterov, self.momentum, self.dampening)
    }

    fn states(&self) -> Vec<StateSpec> {
        momentum_states(self.momentum)
    }

    fn hyper(&self, ctx: HyperCtx) -> SgdHyper {
        let mut flags = maximize_flag(self.maximize) | ctx.extra_flags;
        if self.momentum != 0.0 {
            flags |= SGD_MOMENTUM;
        }
        if self.nesterov {
            flags |= SGD_NESTEROV;
        }
        SgdHyper {
            flags,
            momentum: self.momentum as f32,
            one_minus_dampening: (1.0 - self.dampening) as f32,
            pad: 0,
        }
    }

    fn tensor_step(&self, t: u64, group: u32, _chunks: ChunkRange) -> SgdTensor {
        SgdTensor {
            live: 1,
            group,
            first: (t == 1) as u32,
            neg_lr: (-self.lr) as f32,
            weight_decay: self.weight_decay as f32,
            pad: [0; 3],
        }
    }

    fn update(h: &SgdHyper, ts: &SgdTensor, p: &mut [f32], g: &[f32], state: &mut [&mut [f32]]) {
        let maximize = h.flags & FLAG_MAXIMIZE != 0;
        let momentum = h.flags & SGD_MOMENTUM != 0;
        let nesterov = h.flags & SGD_NESTEROV != 0;
        let [buf] = state else { return };
        for i in 0..p.len() {
            let p0 = p[i];
            let mut gi = if maximize { -g[i] } else { g[i] };
            if ts.weight_decay != 0.0 {
                gi += ts.weight_decay * p0;
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
        if self.momentum != 0.0 {
            20
        } else {
            12
        }
    }

    fn presets() -> Vec<(&'static str, Self)> {
        let sgd = SgdConfig {
            lr: 1e-2,
            ..Default::default()
        };
        vec![
            ("sgd", sgd.clone()),
            (
                "sgd-momentum",
                SgdConfig {
                    momentum: 0.9,
                    ..sgd.clone()
                },
            ),
            (
                "sgd-nesterov",
                SgdConfig {
                    momentum: 0.9,
                    nesterov: true,
                    ..sgd
                },
            ),
        ]
    }

    fn variants() -> Vec<Self> {
        let mut out = Vec::new();
        for (momentum, dampening, nesterov) in [
            (0.0, 0.0, false),
            (0.9, 0.0, false),
            (0.9, 0.3, false),
            (0.9, 0.0, true),
        ] {
            for weight_decay in [0.0, 1e-2] {
                for maximize in [false, true] {
                    out.push(SgdConfig {
                        lr: 0.01,
                        momentum,
                        dampening,
                        weight_decay,
                        nesterov,
                        maximize,
                    });
                }
            }
        }
        out
    }
}
