//! Resilient backpropagation: `torch.optim.Rprop`.
//!
//! ```text
//! g = maximize ? -grad : grad
//! first step of the tensor: prev = 0, step_size = lr     # lr is used here ONLY
//! s = sign(g * prev)                                     # the f32 product's sign
//! f = s > 0 ? etaplus : (s < 0 ? etaminus : 1)
//! step_size = min(max(step_size * f, step_size_min), step_size_max)
//! g = (f == etaminus) ? 0 : g                            # after a sign change: no move
//! p = p - sign(g) * step_size
//! prev = g                                               # the MASKED gradient
//! ```
//! sign(0) = 0: a zero gradient leaves p and step_size as they are (f = 1), and after a sign
//! change prev = 0, so the next step also has f = 1 (iRprop-). Magnitudes of g only matter
//! through the sign of `g * prev` (which torch also takes of the rounded f32 product).
//! `lr` only initialises `step_size`, on each tensor's first step, from its group's lr at that
//! step (as torch's `full_like(p, lr)` at state creation): changing lr later, e.g. with a
//! schedule, affects only tensors that have not stepped yet. No weight decay.
//! Defaults (PyTorch 2.15): `lr = 1e-2`, `etas = (0.5, 1.2)`, `step_sizes = (1e-6, 50)`.
//! Kernel: `shaders/rprop.wgsl`. Paper: Riedmiller & Braun 1993, "A direct adaptive method for
//! faster backpropagation learning: the RPROP algorithm".

use bytemuck::{Pod, Zeroable};

use super::common::maximize_flag;
use super::rule::{ChunkRange, HyperCtx, MomentumKind, Rule, StateSpec};
use crate::error::{check_non_negative, Error, Result};
use crate::shaders::{KernelDef, FLAG_MAXIMIZE};

/// `rprop_step` in rprop.wgsl.
pub const RPROP_STEP: KernelDef = KernelDef::step(
    "rprop_step",
    crate::kernel_source!(elementwise "rprop.wgsl"),
    2,
);

/// Rprop hyperparameters; `Default` is `torch.optim.Rprop`'s. PyTorch's `etas` is
/// `(etaminus, etaplus)` and `step_sizes` is `(step_size_min, step_size_max)`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RpropConfig {
    /// The initial step size of every element (default 1e-2); not used after a tensor's first
    /// step.
    pub lr: f64,
    /// Step-size factor after a sign change, in `(0, 1)` (default 0.5).
    pub etaminus: f64,
    /// Step-size factor while the sign holds, `> 1` (default 1.2).
    pub etaplus: f64,
    /// Smallest step size (default 1e-6; not checked by PyTorch, any value but NaN).
    pub step_size_min: f64,
    /// Largest step size (default 50; not checked by PyTorch, any value but NaN). When it is
    /// below `step_size_min`, every step size becomes `step_size_max`, as `torch.clamp` does.
    pub step_size_max: f64,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for RpropConfig {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            etaminus: 0.5,
            etaplus: 1.2,
            step_size_min: 1e-6,
            step_size_max: 50.0,
            maximize: false,
        }
    }
}

/// Mirrors `RpropHyper` in rprop.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct RpropHyper {
    /// FLAG_MAXIMIZE (| FLAG_GRAD_SCALE).
    pub flags: u32,
    /// etaminus.
    pub etaminus: f32,
    /// etaplus.
    pub etaplus: f32,
    /// step_size_min.
    pub step_size_min: f32,
    /// step_size_max.
    pub step_size_max: f32,
    /// Padding to 32 bytes.
    pub pad: [u32; 3],
}

/// Mirrors `RpropTensor` in rprop.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct RpropTensor {
    /// 1 when the tensor steps this time.
    pub live: u32,
    /// The tensor's group among its segment's groups (indexes the per-group table).
    pub group: u32,
    /// 1 on the tensor's first step: the step size starts at `lr`, not at the buffer.
    pub first: u32,
    /// The group's lr (the initial step size).
    pub lr: f32,
}

/// torch.sign: 1, -1, 0 for both zeros, NaN for NaN. Mirrors `sign3` in rprop.wgsl.
#[inline]
fn sign3(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else if x == 0.0 {
        0.0
    } else {
        x
    }
}

/// torch.clamp(x, lo, hi): `min(max(x, lo), hi)` (so `hi` when `lo > hi`), NaN propagated.
/// Mirrors `clamp_torch` in rprop.wgsl.
#[inline]
fn clamp_torch(x: f32, lo: f32, hi: f32) -> f32 {
    let y = if x < lo { lo } else { x };
    if y > hi {
        hi
    } else {
        y
    }
}

fn not_nan(name: &'static str, value: f64) -> Result<()> {
    if value.is_nan() {
        Err(Error::InvalidHyperparameter {
            name,
            value,
            reason: "must not be NaN",
        })
    } else {
        Ok(())
    }
}

impl Rule for RpropConfig {
    type Hyper = RpropHyper;
    type TensorStep = RpropTensor;
    const KERNEL: KernelDef = RPROP_STEP;

    fn name(&self) -> &'static str {
        "rprop"
    }
    fn momentum_mut(&mut self) -> Option<(MomentumKind, &mut f64)> {
        None
    }
    fn weight_decay_mut(&mut self) -> Option<&mut f64> {
        None
    }
    fn grad_reads(&self) -> Option<u64> {
        Some(1)
    }

    fn validate(&self) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        // PyTorch: `0 < etaminus < 1 < etaplus`.
        if !(self.etaminus > 0.0 && self.etaminus < 1.0) {
            return Err(Error::InvalidHyperparameter {
                name: "etaminus",
                value: self.etaminus,
                reason: "must be in (0, 1)",
            });
        }
        if !(self.etaplus > 1.0 && self.etaplus.is_finite()) {
            return Err(Error::InvalidHyperparameter {
                name: "etaplus",
                value: self.etaplus,
                reason: "must be finite and > 1",
            });
        }
        not_nan("step_size_min", self.step_size_min)?;
        not_nan("step_size_max", self.step_size_max)
    }

    fn states(&self) -> Vec<StateSpec> {
        vec![
            StateSpec {
                name: "prev",
                slot: 0,
                init: 0.0,
            },
            StateSpec {
                name: "step_size",
                slot: 1,
                init: self.lr as f32,
            },
        ]
    }

    fn hyper(&self, ctx: HyperCtx) -> RpropHyper {
        RpropHyper {
            flags: maximize_flag(self.maximize) | ctx.extra_flags,
            etaminus: self.etaminus as f32,
            etaplus: self.etaplus as f32,
            step_size_min: self.step_size_min as f32,
            step_size_max: self.step_size_max as f32,
            pad: [0; 3],
        }
    }

    fn tensor_step(&self, t: u64, group: u32, _chunks: ChunkRange) -> RpropTensor {
        RpropTensor {
            live: 1,
            group,
            first: (t == 1) as u32,
            lr: self.lr as f32,
        }
    }

    fn update(
        h: &RpropHyper,
        ts: &RpropTensor,
        p: &mut [f32],
        g: &[f32],
        state: &mut [&mut [f32]],
    ) {
        let maximize = h.flags & FLAG_MAXIMIZE != 0;
        let first = ts.first != 0;
        let [prev, step_size] = state else {
            return;
        };
        for i in 0..p.len() {
            let gi = if maximize { -g[i] } else { g[i] };
            // On the first step prev is still 0 (torch creates it then).
            let (prev0, size0) = if first {
                (0.0, ts.lr)
            } else {
                (prev[i], step_size[i])
            };
            let prod = gi * prev0;
            // torch replaces sign(g * prev) by the factors; a NaN sign stays NaN.
            let f = if prod > 0.0 {
                h.etaplus
            } else if prod < 0.0 {
                h.etaminus
            } else if prod == 0.0 {
                1.0
            } else {
                prod
            };
            let size = clamp_torch(size0 * f, h.step_size_min, h.step_size_max);
            step_size[i] = size;
            let gm = if f == h.etaminus { 0.0 } else { gi };
            p[i] -= sign3(gm) * size;
            prev[i] = gm;
        }
    }

    fn bytes_per_element(&self) -> u64 {
        // Reads p, g, prev, step_size; writes p, prev, step_size.
        28
    }

    fn presets() -> Vec<(&'static str, Self)> {
        vec![("rprop", RpropConfig::default())]
    }

    fn variants() -> Vec<Self> {
        let mut out = Vec::new();
        for maximize in [false, true] {
            out.push(RpropConfig {
                lr: 0.02,
                maximize,
                ..RpropConfig::default()
            });
        }
        // Step sizes that both clamps reach within a few steps, other etas, and min > max.
        out.push(RpropConfig {
            lr: 0.02,
            etaminus: 0.3,
            etaplus: 1.5,
            step_size_min: 1e-2,
            step_size_max: 0.05,
            ..RpropConfig::default()
        });
        out.push(RpropConfig {
            lr: 0.02,
            step_size_min: 0.1,
            step_size_max: 0.03,
            maximize: true,
            ..RpropConfig::default()
        });
        out
    }
}
