//! Averaged SGD: `torch.optim.ASGD`.
//!
//! ```text
//! t += 1
//! g = maximize ? -grad : grad
//! if weight_decay != 0:  g = g + weight_decay * p
//! p = p * (1 - lambd * eta)                    # eta of the PREVIOUS step (lr on the first)
//! p = p - eta * g                              # p is rounded twice, as in torch
//! ax = (mu == 1) ? copy(p) : ax + (p - ax) * mu        # exact compare on the previous mu
//! eta = lr / (1 + lambd * lr * t)^alpha        # for the NEXT step
//! mu = 1 / max(1, t - t0)                      # for the NEXT step
//! ```
//! `eta` and `mu` are per-tensor host scalars (state keys `eta`, `mu`, one value each, holding
//! the values for the next step as torch stores them), kept in f64 and recomputed from `t` and
//! the group's current lr. They are created on the tensor's first step, as torch creates them
//! (eta = the group lr at that step, mu = 1). torch keeps them as f32 0-dim tensors and reads
//! them with `.item()`; the kernel's scalars are formed from their f32 roundings the same way
//! (`1 - lambd * f32(eta)` in f64, the `mu == 1` compare on f32(mu)). With the default
//! `t0 = 1e6`, `mu` stays 1 and `ax` is a copy of p (the kernel then does not read it).
//! Defaults (PyTorch 2.15): `lr = 1e-2`, `lambd = 1e-4`, `alpha = 0.75`, `t0 = 1e6`,
//! `weight_decay = 0`. Kernel: `shaders/asgd.wgsl`. Paper: Polyak & Juditsky 1992,
//! "Acceleration of stochastic approximation by averaging".

use bytemuck::{Pod, Zeroable};

use super::common::maximize_flag;
use super::rule::{ChunkRange, HyperCtx, MomentumKind, Rule, Scalars, StateSpec};
use crate::error::{check_non_negative, Error, Result};
use crate::shaders::{KernelDef, FLAG_MAXIMIZE};

/// `asgd_step` in asgd.wgsl.
pub const ASGD_STEP: KernelDef = KernelDef::step(
    "asgd_step",
    crate::kernel_source!(elementwise "asgd.wgsl"),
    1,
);

/// Host scalar slot of `eta`.
const ETA: usize = 0;
/// Host scalar slot of `mu`.
const MU: usize = 1;

/// ASGD hyperparameters; `Default` is `torch.optim.ASGD`'s.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AsgdConfig {
    /// Learning rate: the first step's eta, and the scale of every later eta (default 1e-2).
    pub lr: f64,
    /// Decay term (default 1e-4).
    pub lambd: f64,
    /// Power of the eta schedule (default 0.75).
    pub alpha: f64,
    /// Step after which averaging starts (default 1e6; any value but NaN).
    #[serde(with = "super::common::json_f64")]
    pub t0: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for AsgdConfig {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            lambd: 1e-4,
            alpha: 0.75,
            t0: 1e6,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// Mirrors `AsgdHyper` in asgd.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AsgdHyper {
    /// FLAG_MAXIMIZE (| FLAG_GRAD_SCALE).
    pub flags: u32,
    /// Weight decay.
    pub weight_decay: f32,
    /// Padding to 16 bytes.
    pub pad: [u32; 2],
}

/// Mirrors `AsgdTensor` in asgd.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AsgdTensor {
    /// 1 when the tensor steps this time.
    pub live: u32,
    /// The tensor's group among its segment's groups (indexes the per-group table).
    pub group: u32,
    /// 1 - lambd * eta (eta of the previous step, as f32), formed in f64.
    pub decay_factor: f32,
    /// -eta.
    pub neg_eta: f32,
    /// mu of the previous step.
    pub mu: f32,
    /// 1 when mu == 1: ax is a copy of p.
    pub copy: u32,
    /// Padding to 32 bytes.
    pub pad: [u32; 2],
}

impl Rule for AsgdConfig {
    type Hyper = AsgdHyper;
    type TensorStep = AsgdTensor;
    const KERNEL: KernelDef = ASGD_STEP;

    fn name(&self) -> &'static str {
        "asgd"
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
        check_non_negative("lambd", self.lambd)?;
        check_non_negative("alpha", self.alpha)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        // PyTorch does not check t0; +-inf are meaningful (never / always average), NaN is not.
        if self.t0.is_nan() {
            return Err(Error::InvalidHyperparameter {
                name: "t0",
                value: self.t0,
                reason: "must not be NaN",
            });
        }
        Ok(())
    }

    fn states(&self) -> Vec<StateSpec> {
        vec![StateSpec {
            name: "ax",
            slot: 0,
            init: 0.0,
        }]
    }

    fn scalar_names(&self) -> &'static [&'static str] {
        &["eta", "mu"]
    }

    fn init_scalars(&self) -> Scalars {
        let mut s = [0.0; super::rule::MAX_SCALARS];
        s[ETA] = self.lr;
        s[MU] = 1.0;
        s
    }

    fn hyper(&self, ctx: HyperCtx) -> AsgdHyper {
        AsgdHyper {
            flags: maximize_flag(self.maximize) | ctx.extra_flags,
            weight_decay: self.weight_decay as f32,
            pad: [0; 2],
        }
    }

    fn tensor_step(&self, t: u64, group: u32, chunks: ChunkRange) -> AsgdTensor {
        // Without the tensor's scalar state: as if it had only just been created.
        let mut s = self.init_scalars();
        self.tensor_step_with(t, group, chunks, &mut s)
    }

    fn tensor_step_with(
        &self,
        t: u64,
        group: u32,
        _chunks: ChunkRange,
        scalars: &mut Scalars,
    ) -> AsgdTensor {
        if t == 1 {
            // torch creates eta and mu on the tensor's first step, from the group's lr then.
            *scalars = self.init_scalars();
        }
        // torch stores eta and mu as f32 0-dim tensors and reads them with `.item()`.
        let eta = scalars[ETA] as f32;
        let mu = scalars[MU] as f32;
        let ts = AsgdTensor {
            live: 1,
            group,
            decay_factor: (1.0 - self.lambd * eta as f64) as f32,
            neg_eta: -eta,
            mu,
            copy: (mu == 1.0) as u32,
            pad: [0; 2],
        };
        // The values for the next step, as torch's for-loop computes them (Python floats).
        let step = t as f64;
        scalars[ETA] = self.lr / (1.0 + self.lambd * self.lr * step).powf(self.alpha);
        scalars[MU] = 1.0 / f64::max(1.0, step - self.t0);
        ts
    }

    fn update(h: &AsgdHyper, ts: &AsgdTensor, p: &mut [f32], g: &[f32], state: &mut [&mut [f32]]) {
        let maximize = h.flags & FLAG_MAXIMIZE != 0;
        let [ax] = state else { return };
        let copy = ts.copy != 0;
        for i in 0..p.len() {
            let p0 = p[i];
            let mut gi = if maximize { -g[i] } else { g[i] };
            if h.weight_decay != 0.0 {
                gi += h.weight_decay * p0;
            }
            let decayed = p0 * ts.decay_factor;
            let pi = decayed + ts.neg_eta * gi;
            p[i] = pi;
            ax[i] = if copy {
                pi
            } else {
                let a0 = ax[i];
                a0 + (pi - a0) * ts.mu
            };
        }
    }

    fn bytes_per_element(&self) -> u64 {
        // Reads p, g, ax; writes p, ax (16 while mu == 1: ax is then only written).
        20
    }

    fn presets() -> Vec<(&'static str, Self)> {
        vec![("asgd", AsgdConfig::default())]
    }

    fn variants() -> Vec<Self> {
        let mut out = Vec::new();
        // t0 = 1e6: ax is a copy; t0 = 0: averaging from the third step; 2.5: mu = 1/1.5, ...
        for t0 in [1e6, 0.0, 2.5] {
            for weight_decay in [0.0, 1e-2] {
                for maximize in [false, true] {
                    out.push(AsgdConfig {
                        lr: 0.05,
                        lambd: 0.5,
                        t0,
                        weight_decay,
                        maximize,
                        ..AsgdConfig::default()
                    });
                }
            }
        }
        out.push(AsgdConfig {
            lr: 0.02,
            lambd: 0.01,
            alpha: 1.0,
            t0: f64::NEG_INFINITY,
            ..AsgdConfig::default()
        });
        out
    }
}
