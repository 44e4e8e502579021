//! ADOPT, Adam with the current gradient left out of its own normalisation:
//! `timm.optim.Adopt` (timm 1.0.31, the for-loop path).
//!
//! ```text
//! t += 1
//! g = maximize ? -grad : grad
//! if weight_decay != 0 and not decoupled: g = g + weight_decay * p    # fused; also on step 1
//! if t == 1:                      # the tensor's first step (timm: "state was empty")
//!     v = v + g * g               # v = g^2, NOT (1 - beta2) g^2; m stays 0, p is NOT changed
//!     return
//! if weight_decay != 0 and decoupled: p = p + (-lr * weight_decay) * p  # from step 2 on
//! n = g / max(sqrt(v), eps)       # a clamp, not "+ eps"; v of the previous step
//! if clip_exp is not None: n = clamp(n, -(t-1)^clip_exp, (t-1)^clip_exp)   # bound 1 at t = 2
//! m = lerp(m, n, 1 - beta1)
//! if caution: k = (m * g > 0) per tensor; m_eff = m * (k / max(mean(k), 1e-3)) else m_eff = m
//! p = p + (-lr) * m_eff           # the stored m stays unmasked
//! v = beta2 * v + (1 - beta2) * g * g            # updated AFTER it was used
//! ```
//! Defaults (timm): `lr = 1e-3`, `betas = (0.9, 0.9999)`, `eps = 1e-6`, `clip_exp = 0.333`,
//! `weight_decay = 0`, `decoupled = false`, `caution = false`, `maximize = false`. No bias
//! correction anywhere. The first step is a pure warm-up of `v`, per tensor: a tensor frozen
//! when training starts takes it on the first step that gives it a gradient. The clip bound
//! `(t-1)^clip_exp` is computed per tensor on the host in f64 (as timm does with Python floats)
//! and rounded to f32 once. State: `exp_avg`, `exp_avg_sq` (zeros).
//!
//! The L2 term is one fused multiply-add, as torch's CPU kernels compute
//! `grad.add(param, alpha=weight_decay)` (`fma_exact`; the kernel does it in integer
//! arithmetic, since WGSL's `fma` may be split): where it nearly cancels, an unfused sum would
//! carry an ulp of `wd * p` into a tiny `g`, and the next step divides by its square root.
//!
//! A step is three dispatches whatever the tensor count (`shaders/adopt.wgsl`), as for LARS and
//! LAMB: caution needs the mean of the mask over the whole tensor (per chunk, the count of
//! agreeing elements; per tensor, the count summed in u32, exact, and
//! `1 / max(count / numel, 1e-3)`; then the update). Groups without caution skip the first two
//! (their workgroups return at once). timm's `corrected_weight_decay` (`lr^2 / lr_max`) is not
//! offered. Paper: Taniguchi et al., NeurIPS 2024, "ADOPT: Modified Adam Can Converge with Any
//! beta2 with the Optimal Rate"; caution: Liang et al. 2024, "Cautious Optimizers".

use bytemuck::{Pod, Zeroable};

use super::adam::moment_states;
use super::common::{lerp_torch, maximize_flag};
use super::lion::caution_scale;
use super::rule::{ChunkRange, HyperCtx, MomentumKind, Pass, Rule, StateSpec};
use crate::error::{check_finite, check_non_negative, check_unit_interval, Result};
use crate::shaders::{KernelDef, FLAG_MAXIMIZE};

const ADOPT_WGSL: crate::shaders::KernelSources =
    crate::kernel_source!(reduce "fma.wgsl" + "adopt.wgsl");
/// `adopt_caution_count` in adopt.wgsl (per chunk).
pub const ADOPT_CAUTION_COUNT: KernelDef =
    KernelDef::reducing("adopt_caution_count", ADOPT_WGSL, 2);
/// `adopt_caution_scale` in adopt.wgsl (per tensor).
pub const ADOPT_CAUTION_SCALE: KernelDef =
    KernelDef::reducing("adopt_caution_scale", ADOPT_WGSL, 2);
/// `adopt_step` in adopt.wgsl (per chunk).
pub const ADOPT_STEP: KernelDef = KernelDef::reducing("adopt_step", ADOPT_WGSL, 2);

/// WGSL `ADOPT_CAUTION`.
pub const ADOPT_CAUTION: u32 = 256;
/// WGSL `ADOPT_DECOUPLED`.
pub const ADOPT_DECOUPLED: u32 = 512;
/// WGSL `ADOPT_CLIP`.
pub const ADOPT_CLIP: u32 = 1024;

/// ADOPT hyperparameters; `Default` is timm 1.0.31's `Adopt`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AdoptConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// First-moment decay (default 0.9).
    pub beta1: f64,
    /// Second-moment decay (default 0.9999).
    pub beta2: f64,
    /// Lower clamp of `sqrt(v)` (default 1e-6).
    pub eps: f64,
    /// The normalised gradient is clamped to `±(t-1)^clip_exp`; `None`: no clipping
    /// (default `Some(0.333)`).
    pub clip_exp: Option<f64>,
    /// Weight decay: L2 on the gradient, or decoupled when `decoupled` (default 0).
    pub weight_decay: f64,
    /// Decoupled weight decay, `p = p - lr * weight_decay * p` from the second step on
    /// (default false).
    pub decoupled: bool,
    /// Cautious update: zero the moment's components that disagree with the gradient's sign,
    /// rescale by the tensor's mean agreement (default false).
    pub caution: bool,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for AdoptConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.9999,
            eps: 1e-6,
            clip_exp: Some(0.333),
            weight_decay: 0.0,
            decoupled: false,
            caution: false,
            maximize: false,
        }
    }
}

/// Mirrors `AdoptHyper` in adopt.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AdoptHyper {
    /// FLAG_* | ADOPT_CAUTION | ADOPT_DECOUPLED | ADOPT_CLIP.
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
    /// -lr.
    pub neg_lr: f32,
    /// -(lr * weight_decay), formed in f64 (decoupled decay).
    pub neg_lr_wd: f32,
}

/// Mirrors `AdoptTensor` in adopt.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AdoptTensor {
    /// 1 when the tensor steps this time.
    pub live: u32,
    /// The tensor's group among its segment's groups (indexes the per-group table).
    pub group: u32,
    /// First chunk of the tensor (for the caution count).
    pub first_chunk: u32,
    /// Chunks of the tensor.
    pub chunk_count: u32,
    /// 1 on the tensor's first step (v = g^2 only).
    pub first: u32,
    /// (t - 1)^clip_exp, formed in f64 (unused without clipping).
    pub clip: f32,
    /// Padding to 32 bytes.
    pub pad: [u32; 2],
}

/// The gradient the rule sees: maximize, then L2 decay.
#[inline]
fn grad_of(g: f32, p: f32, h: &AdoptHyper) -> f32 {
    let mut gi = if h.flags & FLAG_MAXIMIZE != 0 { -g } else { g };
    if h.weight_decay != 0.0 && h.flags & ADOPT_DECOUPLED == 0 {
        gi = fma_exact(h.weight_decay, p, gi);
    }
    gi
}

/// `a * b + c` as torch's CPU kernels compute `grad.add(param, alpha=weight_decay)`: one fused
/// multiply-add (ATen's vectorized add is `fmadd`). Mirrors `fma_exact` in fma.wgsl, which
/// computes it in integer arithmetic because WGSL's `fma` may be split (lavapipe splits it):
/// fused on normal operands, `a * b + c` on zeros, subnormals, infinities and NaN (where the
/// two agree, or differ only below 2^-126). Fused matters here: where `g + wd * p` nearly
/// cancels, an unfused sum is off by an ulp of `wd * p`, a large relative error in `g`, which
/// ADOPT divides the next gradient by (through `sqrt(v)`); one timm fixture misses torch's
/// fp32 tolerance by 3x without it.
#[inline]
pub(crate) fn fma_exact(a: f32, b: f32, c: f32) -> f32 {
    if a.is_normal() && b.is_normal() && c.is_normal() {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// The new first moment from step 2 on (mirrors `adopt_moment` in adopt.wgsl).
#[inline]
fn moment(g: f32, m: f32, v: f32, h: &AdoptHyper, ts: &AdoptTensor) -> f32 {
    let s = v.sqrt();
    // torch.clamp(sqrt(v), eps): NaN stays NaN.
    let denom = if s < h.eps { h.eps } else { s };
    let mut n = g / denom;
    if h.flags & ADOPT_CLIP != 0 {
        if n < -ts.clip {
            n = -ts.clip;
        }
        if n > ts.clip {
            n = ts.clip;
        }
    }
    lerp_torch(m, n, h.one_minus_beta1)
}

impl Rule for AdoptConfig {
    type Hyper = AdoptHyper;
    type TensorStep = AdoptTensor;
    const KERNEL: KernelDef = ADOPT_STEP;

    fn name(&self) -> &'static str {
        match (self.decoupled, self.caution) {
            (false, false) => "adopt",
            (false, true) => "adopt-caution",
            (true, false) => "adoptw",
            (true, true) => "adoptw-caution",
        }
    }
    fn momentum_mut(&mut self) -> Option<(MomentumKind, &mut f64)> {
        Some((MomentumKind::Beta1, &mut self.beta1))
    }
    fn weight_decay_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.weight_decay)
    }
    fn grad_reads(&self) -> Option<u64> {
        None
    }

    fn validate(&self) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("eps", self.eps)?;
        check_unit_interval("beta1", self.beta1)?;
        check_unit_interval("beta2", self.beta2)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        // timm does not check clip_exp; a non-finite one could only give NaN bounds.
        match self.clip_exp {
            Some(e) => check_finite("clip_exp", e),
            None => Ok(()),
        }
    }

    fn states(&self) -> Vec<StateSpec> {
        moment_states()
    }

    fn passes() -> Vec<Pass> {
        vec![
            Pass::Chunks(ADOPT_CAUTION_COUNT),
            Pass::Tensors(ADOPT_CAUTION_SCALE),
            Pass::Chunks(ADOPT_STEP),
        ]
    }

    fn hyper(&self, ctx: HyperCtx) -> AdoptHyper {
        let mut flags = maximize_flag(self.maximize) | ctx.extra_flags;
        if self.caution {
            flags |= ADOPT_CAUTION;
        }
        if self.decoupled {
            flags |= ADOPT_DECOUPLED;
        }
        if self.clip_exp.is_some() {
            flags |= ADOPT_CLIP;
        }
        AdoptHyper {
            flags,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            neg_lr: (-self.lr) as f32,
            neg_lr_wd: (-(self.lr * self.weight_decay)) as f32,
        }
    }

    fn tensor_step(&self, t: u64, group: u32, chunks: ChunkRange) -> AdoptTensor {
        // As timm: `(step - 1) ** clip_exp` with a Python float step.
        let clip = match self.clip_exp {
            Some(e) if t >= 2 => ((t - 1) as f64).powf(e) as f32,
            _ => 0.0,
        };
        AdoptTensor {
            live: 1,
            group,
            first_chunk: chunks.first,
            chunk_count: chunks.count,
            first: (t == 1) as u32,
            clip,
            pad: [0; 2],
        }
    }

    fn update(
        h: &AdoptHyper,
        ts: &AdoptTensor,
        p: &mut [f32],
        g: &[f32],
        state: &mut [&mut [f32]],
    ) {
        let caution = h.flags & ADOPT_CAUTION != 0;
        let decoupled = h.flags & ADOPT_DECOUPLED != 0;
        let [m, v] = state else { return };
        if ts.first != 0 {
            for i in 0..p.len() {
                let gi = grad_of(g[i], p[i], h);
                v[i] += gi * gi;
            }
            return;
        }
        let mut scale = 0.0f32;
        if caution {
            let count = (0..p.len())
                .filter(|&i| {
                    let gi = grad_of(g[i], p[i], h);
                    moment(gi, m[i], v[i], h, ts) * gi > 0.0
                })
                .count();
            scale = caution_scale(count, p.len());
        }
        for i in 0..p.len() {
            let gi = grad_of(g[i], p[i], h);
            let mut pi = p[i];
            if h.weight_decay != 0.0 && decoupled {
                pi += h.neg_lr_wd * pi;
            }
            let mi = moment(gi, m[i], v[i], h, ts);
            m[i] = mi;
            let mut me = mi;
            if caution {
                me = mi * if mi * gi > 0.0 { scale } else { 0.0 };
            }
            p[i] = pi + h.neg_lr * me;
            v[i] = v[i] * h.beta2 + (h.one_minus_beta2 * gi) * gi;
        }
    }

    fn bytes_per_element(&self) -> u64 {
        // reads p, g, m, v, writes p, m, v; caution's count pass reads g, m, v (and p for L2
        // decay).
        let l2 = self.weight_decay != 0.0 && !self.decoupled;
        28 + if self.caution { 12 + 4 * l2 as u64 } else { 0 }
    }

    fn presets() -> Vec<(&'static str, Self)> {
        vec![("adopt", AdoptConfig::default())]
    }

    fn variants() -> Vec<Self> {
        let mut out = Vec::new();
        for decoupled in [false, true] {
            for caution in [false, true] {
                out.push(AdoptConfig {
                    lr: 0.01,
                    weight_decay: 1e-2,
                    decoupled,
                    caution,
                    ..AdoptConfig::default()
                });
            }
        }
        // No clipping, maximize, no decay.
        out.push(AdoptConfig {
            lr: 0.01,
            clip_exp: None,
            maximize: true,
            ..AdoptConfig::default()
        });
        // beta1 = 0 takes torch.lerp's second branch (weight >= 0.5); a large eps clamps; a
        // clip exponent of 0.5 with caution and maximize.
        out.push(AdoptConfig {
            lr: 0.02,
            beta1: 0.0,
            beta2: 0.9,
            eps: 1e-2,
            clip_exp: Some(0.5),
            caution: true,
            maximize: true,
            ..AdoptConfig::default()
        });
        out
    }
}
