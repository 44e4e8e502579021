//! LAMB, layer-wise adaptive moments (You et al., ICLR 2020), in timm's formulation
//! (`timm.optim.Lamb`, bias correction and gradient averaging on).
//!
//! ```text
//! t += 1
//! g = grad (after global-norm clipping, if attached; LAMB has no built-in clipping)
//! m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g * g
//! u = (m / (1 - beta1^t)) / (sqrt(v) / sqrt(1 - beta2^t) + eps) + weight_decay * p
//! if adapt (group weight_decay != 0, or always_adapt):
//!     ratio = |p| / |u| per tensor (1 if either is 0); trust_clip: ratio = min(ratio, 1)
//! else ratio = 1
//! p = p - lr * (u * ratio)
//! ```
//! Defaults lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01. Three dispatches per step
//! whatever the tensor count (`shaders/lamb.wgsl`); the CPU reference takes the norms in f64.

use bytemuck::{Pod, Zeroable};

use super::adam::moment_states;
use super::lars::norm_f64;
use super::rule::{ChunkRange, HyperCtx, MomentumKind, Pass, Rule, StateSpec};
use crate::error::{check_non_negative, check_unit_interval, Result};
use crate::shaders::{KernelDef, FLAG_MAXIMIZE};

const LAMB_WGSL: crate::shaders::KernelSources = crate::kernel_source!(reduce "lamb.wgsl");
/// `lamb_moments` in lamb.wgsl (per chunk).
pub const LAMB_MOMENTS: KernelDef = KernelDef::reducing("lamb_moments", LAMB_WGSL, 2);
/// `lamb_ratio` in lamb.wgsl (per tensor).
pub const LAMB_RATIO: KernelDef = KernelDef::reducing("lamb_ratio", LAMB_WGSL, 2);
/// `lamb_apply` in lamb.wgsl (per chunk).
pub const LAMB_APPLY: KernelDef = KernelDef::reducing("lamb_apply", LAMB_WGSL, 2);

/// WGSL `LAMB_TRUST_CLIP`.
pub const LAMB_TRUST_CLIP: u32 = 256;

/// LAMB hyperparameters; `Default` is the SPEC's (timm's, without built-in clipping).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LambConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// First-moment decay (default 0.9).
    pub beta1: f64,
    /// Second-moment decay (default 0.999).
    pub beta2: f64,
    /// Added outside the square root (default 1e-6).
    pub eps: f64,
    /// Decoupled weight decay inside the update direction (default 0.01).
    pub weight_decay: f64,
    /// Clamp the trust ratio at 1 (default false).
    pub trust_clip: bool,
    /// Adapt groups with zero weight decay too (default false).
    pub always_adapt: bool,
}

impl Default for LambConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.01,
            trust_clip: false,
            always_adapt: false,
        }
    }
}

/// Mirrors `LambHyper` in lamb.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct LambHyper {
    /// FLAG_* | LAMB_TRUST_CLIP.
    pub flags: u32,
    /// beta1.
    pub beta1: f32,
    /// 1 - beta1, formed in f64.
    pub one_minus_beta1: f32,
    /// beta2.
    pub beta2: f32,
    /// 1 - beta2, formed in f64.
    pub one_minus_beta2: f32,
    /// eps.
    pub eps: f32,
    /// Padding to 32 bytes.
    pub pad: [u32; 2],
}

/// Mirrors `LambTensor` in lamb.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct LambTensor {
    /// 1 when the tensor steps this time.
    pub live: u32,
    /// The tensor's group among its segment's groups (indexes the per-group table).
    pub group: u32,
    /// First chunk of the tensor.
    pub first_chunk: u32,
    /// Chunks of the tensor.
    pub chunk_count: u32,
    /// 1 when the trust ratio applies.
    pub adapt: u32,
    /// -lr.
    pub neg_lr: f32,
    /// 1 - beta1^t.
    pub bias_correction1: f32,
    /// sqrt(1 - beta2^t).
    pub bias_correction2_sqrt: f32,
    /// Weight decay of the group.
    pub weight_decay: f32,
}

fn direction(m: f32, v: f32, p: f32, h: &LambHyper, ts: &LambTensor) -> f32 {
    let denom = v.sqrt() / ts.bias_correction2_sqrt + h.eps;
    let mut u = (m / ts.bias_correction1) / denom;
    if ts.weight_decay != 0.0 {
        u += ts.weight_decay * p;
    }
    u
}

impl Rule for LambConfig {
    type Hyper = LambHyper;
    type TensorStep = LambTensor;
    const KERNEL: KernelDef = LAMB_APPLY;

    fn name(&self) -> &'static str {
        "lamb"
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
        check_unit_interval("beta1", self.beta1)?;
        check_unit_interval("beta2", self.beta2)?;
        check_non_negative("eps", self.eps)?;
        check_non_negative("weight_decay", self.weight_decay)
    }

    fn states(&self) -> Vec<StateSpec> {
        moment_states()
    }

    fn passes() -> Vec<Pass> {
        vec![
            Pass::Chunks(LAMB_MOMENTS),
            Pass::Tensors(LAMB_RATIO),
            Pass::Chunks(LAMB_APPLY),
        ]
    }

    fn hyper(&self, ctx: HyperCtx) -> LambHyper {
        LambHyper {
            flags: ctx.extra_flags | if self.trust_clip { LAMB_TRUST_CLIP } else { 0 },
            beta1: self.beta1 as f32,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            eps: self.eps as f32,
            pad: [0; 2],
        }
    }

    fn tensor_step(&self, t: u64, group: u32, chunks: ChunkRange) -> LambTensor {
        let t = t as f64;
        LambTensor {
            live: 1,
            group,
            first_chunk: chunks.first,
            chunk_count: chunks.count,
            adapt: (self.weight_decay != 0.0 || self.always_adapt) as u32,
            neg_lr: (-self.lr) as f32,
            bias_correction1: (1.0 - self.beta1.powf(t)) as f32,
            bias_correction2_sqrt: (1.0 - self.beta2.powf(t)).sqrt() as f32,
            weight_decay: self.weight_decay as f32,
        }
    }

    fn update(h: &LambHyper, ts: &LambTensor, p: &mut [f32], g: &[f32], state: &mut [&mut [f32]]) {
        let maximize = h.flags & FLAG_MAXIMIZE != 0;
        let [m, v] = state else { return };
        let mut u = vec![0f32; p.len()];
        for i in 0..p.len() {
            let gi = if maximize { -g[i] } else { g[i] };
            m[i] = m[i] * h.beta1 + h.one_minus_beta1 * gi;
            v[i] = v[i] * h.beta2 + (h.one_minus_beta2 * gi) * gi;
            u[i] = direction(m[i], v[i], p[i], h, ts);
        }
        let mut ratio = 1.0f32;
        if ts.adapt != 0 {
            let (w, un) = (norm_f64(p), norm_f64(&u));
            let mut r = if w > 0.0 && un > 0.0 { w / un } else { 1.0 };
            if h.flags & LAMB_TRUST_CLIP != 0 {
                r = r.min(1.0);
            }
            ratio = r as f32;
        }
        for i in 0..p.len() {
            p[i] += ts.neg_lr * (u[i] * ratio);
        }
    }

    fn bytes_per_element(&self) -> u64 {
        // pass 1 reads p, g, m, v and writes m, v; pass 3 reads p, m, v and writes p.
        40
    }

    fn presets() -> Vec<(&'static str, Self)> {
        vec![("lamb", LambConfig::default())]
    }

    fn variants() -> Vec<Self> {
        [(false, false), (true, false), (false, true)]
            .into_iter()
            .map(|(trust_clip, always_adapt)| LambConfig {
                trust_clip,
                always_adapt,
                ..LambConfig::default()
            })
            .collect()
    }
}
