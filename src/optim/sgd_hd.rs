//! SGD-HD and SGDN-HD: SGD whose learning rate is learned by hypergradient descent (Baydin,
//! Cornish, Martínez Rubio, Schmidt & Wood, "Online Learning Rate Adaptation with Hypergradient
//! Descent", ICLR 2018; SPEC-2 §2.14), with the reference code's (`gbaydin/hypergradient-descent`
//! `SGDHD`) momentum, dampening, Nesterov and weight-decay details.
//!
//! ```text
//! g   = grad (after global-norm clipping, if attached) + weight_decay * p
//! h   = <g, d_prev>                  # over the group's (or the segment's) live tensors
//! lr  = lr + hypergrad_lr * h        # alpha_t, in f32 on the GPU, before the step that uses it
//! d   = g, or with momentum PyTorch SGD momentum (first step: buf = g; then
//!       buf = momentum*buf + (1 - dampening)*g; Nesterov d = g + momentum*buf, else d = buf)
//! p   = p - lr * d;  d_prev = d      # d_prev: state "prev_direction", zero before step 1
//! ```
//! The learned lr is not clamped and may go negative, as in the reference code.
//!
//! Three dispatches per step (`shaders/sgd_hd.wgsl`, the dot and lr passes shared with Adam-HD
//! in `shaders/hd.wgsl` and `src/optim/hd.rs`), with no host round trip: per-chunk
//! partial dots of g and d_prev (deterministic workgroup trees, reduce.wgsl), one workgroup
//! per parameter group folding those partials in a fixed order and updating the learned lr in
//! the segment's `partials` buffer, and the update, which reads it. Sums have a fixed shape
//! that depends only on sizes, so the learned lr is bitwise reproducible from run to run.
//!
//! Our variants ([`HdScope`]): `Global` takes the dot over every tensor of the optimizer's
//! hypergradient segment (all its SGD-HD groups: "global" means global over the segment, so
//! SGD-HD groups and Adam-HD groups of one optimizer keep separate dots); `Group` over the
//! group's own tensors. Each group keeps its own learned lr either way, starting from its
//! configured lr and moving with its own `hypergrad_lr`: a one-group optimizer (the reference
//! code allows only one) has one learned lr, the paper's global form.
//!
//! Semantics we chose (documented differences from the reference code): a frozen tensor
//! (PyTorch `grad is None`) contributes nothing to h and is not updated (the reference counts
//! its gradient as zeros and still updates it); its `prev_direction` keeps the direction of its
//! own last step. `set_group_lr` / `set_lr` / `set_lr_factor` / `set_group_config` restart the
//! group's learned lr from the configured lr at the next step (that step still adds its own
//! hypergradient); `group_lr` returns the configured lr, `read_learned_lr` the learned one.

use bytemuck::{Pod, Zeroable};

use super::hd::{self, check_decay_and_hypergrad_lr, hd_flags, with_decay, HdHyper};
pub use super::hd::{HdScope, HD_GLOBAL, HD_RESET};
use super::rule::{ChunkRange, HyperCtx, MomentumKind, Pass, Rule, StateSpec};
use super::sgd::{check_nesterov, sgd_momentum};
use crate::error::{check_finite, check_non_negative, Result};
use crate::shaders::KernelDef;

const SGD_HD_WGSL: crate::shaders::KernelSources =
    crate::kernel_source!(reduce "hd.wgsl" + "sgd_hd.wgsl");
/// `sgd_hd_dot` in sgd_hd.wgsl (per chunk; hd.wgsl's `hd_dot`): partial sums of `<g, d_prev>`.
pub const SGD_HD_DOT: KernelDef = KernelDef::reducing("sgd_hd_dot", SGD_HD_WGSL, 2);
/// `sgd_hd_lr` in sgd_hd.wgsl (per parameter group; hd.wgsl's `hd_lr`): folds the dots, updates the learned lr.
pub const SGD_HD_LR: KernelDef = KernelDef::reducing("sgd_hd_lr", SGD_HD_WGSL, 2);
/// `sgd_hd_step` in sgd_hd.wgsl (per chunk): the SGD step with the learned lr.
pub const SGD_HD_STEP: KernelDef = KernelDef::reducing("sgd_hd_step", SGD_HD_WGSL, 2);

/// WGSL `HD_MOMENTUM`.
pub const HD_MOMENTUM: u32 = 256;
/// WGSL `HD_NESTEROV`.
pub const HD_NESTEROV: u32 = 512;
/// SGD-HD hyperparameters; `Default` is the reference code's `SGDHD` (one global lr).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SgdHdConfig {
    /// Initial learning rate alpha_0 (default 1e-3).
    pub lr: f64,
    /// Momentum factor (default 0).
    pub momentum: f64,
    /// Dampening (default 0; not applied on a tensor's first step).
    pub dampening: f64,
    /// L2 penalty added to the gradient, before the dot (default 0).
    pub weight_decay: f64,
    /// Nesterov momentum, SGDN-HD; needs momentum > 0 and dampening 0 (default false).
    pub nesterov: bool,
    /// Hypergradient learning rate beta (default 1e-6, the reference code's).
    pub hypergrad_lr: f64,
    /// Dot over the segment or over the group (default [`HdScope::Global`]).
    pub scope: HdScope,
}

impl Default for SgdHdConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            hypergrad_lr: 1e-6,
            scope: HdScope::Global,
        }
    }
}

/// Mirrors `SgdHdHyper` in sgd_hd.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct SgdHdHyper {
    /// FLAG_GRAD_SCALE | HD_MOMENTUM | HD_NESTEROV | HD_GLOBAL | HD_RESET.
    pub flags: u32,
    /// momentum.
    pub momentum: f32,
    /// 1 - dampening, formed in f64.
    pub one_minus_dampening: f32,
    /// weight_decay.
    pub weight_decay: f32,
    /// The configured lr (what a reset restarts from).
    pub lr: f32,
    /// beta.
    pub hypergrad_lr: f32,
    /// Padding to 32 bytes.
    pub pad: [u32; 2],
}

/// Mirrors `SgdHdTensor` in sgd_hd.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct SgdHdTensor {
    /// 1 when the tensor steps this time.
    pub live: u32,
    /// The tensor's group among its segment's groups.
    pub group: u32,
    /// 1 on the tensor's first step (momentum buffer = gradient).
    pub first: u32,
    /// Padding.
    pub pad: u32,
}

impl HdHyper for SgdHdHyper {
    fn lr_terms(&self) -> (u32, f32, f32) {
        (self.flags, self.lr, self.hypergrad_lr)
    }
}

impl Rule for SgdHdConfig {
    type Hyper = SgdHdHyper;
    type TensorStep = SgdHdTensor;
    const KERNEL: KernelDef = SGD_HD_STEP;

    fn name(&self) -> &'static str {
        match (self.momentum != 0.0, self.nesterov) {
            (false, _) => "sgd-hd",
            (true, false) => "sgdm-hd",
            (true, true) => "sgdn-hd",
        }
    }
    fn momentum_mut(&mut self) -> Option<(MomentumKind, &mut f64)> {
        Some((MomentumKind::Momentum, &mut self.momentum))
    }
    fn weight_decay_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.weight_decay)
    }
    fn grad_reads(&self) -> Option<u64> {
        None
    }

    fn validate(&self) -> Result<()> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("momentum", self.momentum)?;
        check_finite("dampening", self.dampening)?;
        check_decay_and_hypergrad_lr(self.weight_decay, self.hypergrad_lr)?;
        check_nesterov(self.nesterov, self.momentum, self.dampening)
    }

    fn states(&self) -> Vec<StateSpec> {
        let mut s = Vec::new();
        if self.momentum != 0.0 {
            s.push(StateSpec {
                name: "momentum_buffer",
                slot: 0,
                init: 0.0,
            });
        }
        s.push(StateSpec {
            name: "prev_direction",
            slot: 1,
            init: 0.0,
        });
        s
    }

    fn passes() -> Vec<Pass> {
        vec![
            Pass::Chunks(SGD_HD_DOT),
            Pass::Groups(SGD_HD_LR),
            Pass::Chunks(SGD_HD_STEP),
        ]
    }

    fn hyper(&self, ctx: HyperCtx) -> SgdHdHyper {
        let mut flags = hd_flags(self.scope, ctx);
        if self.momentum != 0.0 {
            flags |= HD_MOMENTUM;
        }
        if self.nesterov {
            flags |= HD_NESTEROV;
        }
        SgdHdHyper {
            flags,
            momentum: self.momentum as f32,
            one_minus_dampening: (1.0 - self.dampening) as f32,
            weight_decay: self.weight_decay as f32,
            lr: self.lr as f32,
            hypergrad_lr: self.hypergrad_lr as f32,
            pad: [0; 2],
        }
    }

    fn tensor_step(&self, t: u64, group: u32, _chunks: ChunkRange) -> SgdHdTensor {
        SgdHdTensor {
            live: 1,
            group,
            first: (t == 1) as u32,
            pad: 0,
        }
    }

    fn learns_lr() -> bool {
        true
    }

    fn chunk_partials(
        h: &SgdHdHyper,
        _ts: &SgdHdTensor,
        p: &[f32],
        g: &[f32],
        state: &[&mut [f32]],
        out: &mut Vec<f32>,
    ) {
        hd::chunk_partials(h.weight_decay, p, g, state[1], out)
    }

    fn group_update(
        hypers: &[SgdHdHyper],
        group: usize,
        partials: &[f32],
        chunk_groups: &[u32],
        learned: f32,
    ) -> f32 {
        hd::group_update(hypers, group, partials, chunk_groups, learned)
    }

    fn update(
        h: &SgdHdHyper,
        ts: &SgdHdTensor,
        p: &mut [f32],
        g: &[f32],
        state: &mut [&mut [f32]],
    ) {
        // The engines call update_learned; on its own this is the step at the configured lr.
        Self::update_learned(h, ts, h.lr, p, g, state)
    }

    fn update_learned(
        h: &SgdHdHyper,
        ts: &SgdHdTensor,
        alpha: f32,
        p: &mut [f32],
        g: &[f32],
        state: &mut [&mut [f32]],
    ) {
        let momentum = h.flags & HD_MOMENTUM != 0;
        let nesterov = h.flags & HD_NESTEROV != 0;
        let [buf, dir, ..] = state else { return };
        for i in 0..p.len() {
            let p0 = p[i];
            let gi = with_decay(g[i], p0, h.weight_decay);
            let d = if momentum {
                sgd_momentum(
                    &mut buf[i],
                    gi,
                    ts.first != 0,
                    h.momentum,
                    h.one_minus_dampening,
                    nesterov,
                )
            } else {
                gi
            };
            dir[i] = d;
            p[i] = p0 - alpha * d;
        }
    }

    fn bytes_per_element(&self) -> u64 {
        // Pass 1 reads g and d_prev (and p with weight decay); the update reads p and g and
        // writes p and d_prev (SPEC-2 §5: 24), plus the momentum buffer's read and write.
        let decay = if self.weight_decay != 0.0 { 4 } else { 0 };
        let momentum = if self.momentum != 0.0 { 8 } else { 0 };
        24 + decay + momentum
    }

    fn presets() -> Vec<(&'static str, Self)> {
        // The paper's runs: alpha_0 = 1e-3 and beta = 1e-3 for SGD-HD and SGDN-HD.
        vec![
            (
                "sgd-hd",
                SgdHdConfig {
                    lr: 1e-3,
                    hypergrad_lr: 1e-3,
                    ..Default::default()
                },
            ),
            (
                "sgdn-hd",
                SgdHdConfig {
                    lr: 1e-3,
                    momentum: 0.9,
                    nesterov: true,
                    hypergrad_lr: 1e-3,
                    ..Default::default()
                },
            ),
        ]
    }

    fn variants() -> Vec<Self> {
        [
            (0.0, 0.0, false, 0.0, HdScope::Global),
            (0.9, 0.1, false, 1e-2, HdScope::Group),
            (0.9, 0.0, true, 0.0, HdScope::Global),
            (0.0, 0.0, false, 1e-2, HdScope::Group),
        ]
        .into_iter()
        .map(
            |(momentum, dampening, nesterov, weight_decay, scope)| SgdHdConfig {
                lr: 0.01,
                momentum,
                dampening,
                nesterov,
                weight_decay,
                hypergrad_lr: 1e-4,
                scope,
            },
        )
        .collect()
    }
}
