//! Adam-HD: Adam whose learning rate is learned by hypergradient descent (Baydin et al., ICLR
//! 2018; SPEC-2 §2.14), with the reference code's (`gbaydin/hypergradient-descent` `AdamHD`)
//! torch 1.x Adam: coupled L2 decay, ε added to the raw `sqrt(v)`, bias corrections folded
//! into the step size.
//!
//! ```text
//! g  = grad (after global-norm clipping, if attached) + weight_decay * p
//! h  = <g, d_prev>                   # over the group's (or the segment's) live tensors
//! lr = lr + hypergrad_lr * h         # alpha_t, in f32 on the GPU; h = 0 on step 1 (d_0 = 0)
//! m  = beta1*m + (1 - beta1)*g;   v = beta2*v + (1 - beta2)*g*g
//! d  = sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)
//! p  = p - lr * d;   d_prev = d      # state "prev_direction"
//! ```
//! This is the paper's global (or per-group) form: the reference code instead updates the lr
//! inside its loop over params, so that its result depends on param order (SPEC-2 §2.14); the
//! direction and its ε form are the reference code's. Scopes, frozen tensors, resets by
//! `set_group_lr` and the three-pass structure are as for SGD-HD ([`super::sgd_hd`]).
//! Kernel: `shaders/adam_hd.wgsl` (with the shared `shaders/hd.wgsl`).

use bytemuck::{Pod, Zeroable};

use super::hd::{self, check_decay_and_hypergrad_lr, hd_flags, with_decay, HdHyper, HdScope};
use super::rule::{ChunkRange, HyperCtx, MomentumKind, Pass, Rule, StateSpec};
use crate::error::{check_non_negative, check_unit_interval, Result};
use crate::shaders::KernelDef;

const ADAM_HD_WGSL: crate::shaders::KernelSources =
    crate::kernel_source!(reduce "hd.wgsl" + "adam_hd.wgsl");
/// `adam_hd_dot` in adam_hd.wgsl (per chunk; hd.wgsl's `hd_dot`): partial sums of `<g, d_prev>`.
pub const ADAM_HD_DOT: KernelDef = KernelDef::reducing("adam_hd_dot", ADAM_HD_WGSL, 3);
/// `adam_hd_lr` in adam_hd.wgsl (per parameter group; hd.wgsl's `hd_lr`): folds the dots, updates the learned lr.
pub const ADAM_HD_LR: KernelDef = KernelDef::reducing("adam_hd_lr", ADAM_HD_WGSL, 3);
/// `adam_hd_step` in adam_hd.wgsl (per chunk): the Adam step with the learned lr.
pub const ADAM_HD_STEP: KernelDef = KernelDef::reducing("adam_hd_step", ADAM_HD_WGSL, 3);

/// Adam-HD hyperparameters; `Default` is the reference code's `AdamHD`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AdamHdConfig {
    /// Initial learning rate alpha_0 (default 1e-3).
    pub lr: f64,
    /// First-moment decay (default 0.9).
    pub beta1: f64,
    /// Second-moment decay (default 0.999).
    pub beta2: f64,
    /// Added to `sqrt(v)` (default 1e-8).
    pub eps: f64,
    /// L2 penalty added to the gradient, before the dot (default 0).
    pub weight_decay: f64,
    /// Hypergradient learning rate beta (default 1e-8, the reference code's).
    pub hypergrad_lr: f64,
    /// Dot over the segment or over the group (default [`HdScope::Global`]).
    pub scope: HdScope,
}

impl Default for AdamHdConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            hypergrad_lr: 1e-8,
            scope: HdScope::Global,
        }
    }
}

/// Mirrors `AdamHdHyper` in adam_hd.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AdamHdHyper {
    /// FLAG_GRAD_SCALE | HD_GLOBAL | HD_RESET.
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
    /// weight_decay.
    pub weight_decay: f32,
    /// The configured lr (what a reset restarts from).
    pub lr: f32,
    /// beta (hypergradient lr).
    pub hypergrad_lr: f32,
    /// Padding to 48 bytes.
    pub pad: [u32; 3],
}

/// Mirrors `AdamHdTensor` in adam_hd.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct AdamHdTensor {
    /// 1 when the tensor steps this time.
    pub live: u32,
    /// The tensor's group among its segment's groups.
    pub group: u32,
    /// `sqrt(1 - beta2^t) / (1 - beta1^t)`, formed in f64.
    pub step_scale: f32,
    /// Padding.
    pub pad: u32,
}

impl HdHyper for AdamHdHyper {
    fn lr_terms(&self) -> (u32, f32, f32) {
        (self.flags, self.lr, self.hypergrad_lr)
    }
}

impl Rule for AdamHdConfig {
    type Hyper = AdamHdHyper;
    type TensorStep = AdamHdTensor;
    const KERNEL: KernelDef = ADAM_HD_STEP;

    fn name(&self) -> &'static str {
        "adam-hd"
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
        check_decay_and_hypergrad_lr(self.weight_decay, self.hypergrad_lr)
    }

    fn states(&self) -> Vec<StateSpec> {
        ["exp_avg", "exp_avg_sq", "prev_direction"]
            .into_iter()
            .zip(0..)
            .map(|(name, slot)| StateSpec {
                name,
                slot,
                init: 0.0,
            })
            .collect()
    }

    fn passes() -> Vec<Pass> {
        vec![
            Pass::Chunks(ADAM_HD_DOT),
            Pass::Groups(ADAM_HD_LR),
            Pass::Chunks(ADAM_HD_STEP),
        ]
    }

    fn hyper(&self, ctx: HyperCtx) -> AdamHdHyper {
        AdamHdHyper {
            flags: hd_flags(self.scope, ctx),
            beta1: self.beta1 as f32,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            lr: self.lr as f32,
            hypergrad_lr: self.hypergrad_lr as f32,
            pad: [0; 3],
        }
    }

    fn tensor_step(&self, t: u64, group: u32, _chunks: ChunkRange) -> AdamHdTensor {
        let t = t as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        AdamHdTensor {
            live: 1,
            group,
            step_scale: (bc2.sqrt() / bc1) as f32,
            pad: 0,
        }
    }

    fn learns_lr() -> bool {
        true
    }

    fn chunk_partials(
        h: &AdamHdHyper,
        _ts: &AdamHdTensor,
        p: &[f32],
        g: &[f32],
        state: &[&mut [f32]],
        out: &mut Vec<f32>,
    ) {
        hd::chunk_partials(h.weight_decay, p, g, state[2], out)
    }

    fn group_update(
        hypers: &[AdamHdHyper],
        group: usize,
        partials: &[f32],
        chunk_groups: &[u32],
        learned: f32,
    ) -> f32 {
        hd::group_update(hypers, group, partials, chunk_groups, learned)
    }

    fn update(
        h: &AdamHdHyper,
        ts: &AdamHdTensor,
        p: &mut [f32],
        g: &[f32],
        state: &mut [&mut [f32]],
    ) {
        // The engines call update_learned; on its own this is the step at the configured lr.
        Self::update_learned(h, ts, h.lr, p, g, state)
    }

    fn update_learned(
        h: &AdamHdHyper,
        ts: &AdamHdTensor,
        alpha: f32,
        p: &mut [f32],
        g: &[f32],
        state: &mut [&mut [f32]],
    ) {
        let [m, v, dir, ..] = state else { return };
        for i in 0..p.len() {
            let p0 = p[i];
            let gi = with_decay(g[i], p0, h.weight_decay);
            let mi = m[i] * h.beta1 + h.one_minus_beta1 * gi;
            let vi = v[i] * h.beta2 + (h.one_minus_beta2 * gi) * gi;
            let d = ts.step_scale * (mi / (vi.sqrt() + h.eps));
            m[i] = mi;
            v[i] = vi;
            dir[i] = d;
            p[i] = p0 - alpha * d;
        }
    }

    fn bytes_per_element(&self) -> u64 {
        // Pass 1 reads g and d_prev (and p with weight decay); the update reads p, g, m, v and
        // writes p, m, v, d_prev (SPEC-2 §5: 40, storing d).
        40 + if self.weight_decay != 0.0 { 4 } else { 0 }
    }

    fn presets() -> Vec<(&'static str, Self)> {
        // The paper's logreg and MLP runs: alpha_0 = 1e-3, beta = 1e-7.
        vec![(
            "adam-hd",
            AdamHdConfig {
                hypergrad_lr: 1e-7,
                ..Default::default()
            },
        )]
    }

    fn variants() -> Vec<Self> {
        [
            (0.0, HdScope::Global),
            (1e-2, HdScope::Group),
            (0.0, HdScope::Group),
        ]
        .into_iter()
        .map(|(weight_decay, scope)| AdamHdConfig {
            lr: 2e-3,
            beta1: 0.8,
            weight_decay,
            hypergrad_lr: 1e-6,
            scope,
            ..Default::default()
        })
        .collect()
    }
}
