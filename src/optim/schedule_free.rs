//! Schedule-Free AdamW and SGD: the `schedulefree` 1.4.1 package's `AdamWScheduleFree` and
//! `SGDScheduleFree` (for-loop path). Paper: Defazio, Yang, Mehta, Mishchenko, Khaled, Cutkosky,
//! "The Road Less Scheduled", NeurIPS 2024.
//!
//! Three sequences per tensor: z (the base iterate, state `z`), x (the weighted average of z, the
//! weights to evaluate) and y = (1 − β1)·z + β1·x (where gradients are taken). In train mode the
//! params hold y; x is implicit. Per step, per parameter group (host, f64, with the group's
//! step count `k`, so a frozen tensor still uses its group's `c` and `bc2`):
//! ```text
//! sched   = (k+1)/warmup_steps if k < warmup_steps else 1     # linear warmup built in
//! lr_k    = lr * sched                                       # group_state "scheduled_lr"
//! lr_max  = max(lr_k, lr_max)                                # starts at -1
//! w       = (k+1)^r * lr_max^weight_lr_power
//! W       = W + w                                            # group_state "weight_sum"
//! c       = w / W  (0 if W == 0)
//! bc2     = 1 - beta2^(k+1)                                  # AdamW
//! k       = k + 1
//! ```
//! Per tensor that steps (z = a copy of the param on its first step, read so by the kernel):
//! ```text
//! AdamW: v = beta2*v + (1-beta2)*g*g;  d = g / (sqrt(v/bc2) + eps)      # exp_avg_sq
//! SGD:   d = g
//! if weight_decay != 0: d = d + weight_decay * y                         # decay at y
//! y = lerp(y, z, c);  y = y + lr_k*(beta1*(1 - c) - 1) * d;  z = z - lr_k * d
//! ```
//! (beta1 is SGD's `momentum`.) Modes: `eval()` sets p = lerp(p, z, 1 − 1/β1) (y → x) and
//! `train()` p = lerp(p, z, 1 − β1) (x → y), on every tensor that has a z (frozen ones too), as
//! one dispatch per window on the GPU; `step()` is refused in eval mode. **Optimizers start in
//! train mode**, unlike the package (which starts in eval mode and raises on a `step()` without
//! `train()`): before the first step y = x = z, so the two agree on every value, and training
//! loops written for any other optimizer work unchanged. Call `eval()` before evaluating or
//! checkpointing the params and `train()` before stepping again; setting the current mode does
//! nothing. The package overwrites `p.grad` with d; the grads here are left as they are.
//!
//! Defaults are the package's: AdamW `lr=0.0025, betas=(0.9, 0.999), eps=1e-8`, SGD `lr=1.0,
//! momentum=0.9`; both `weight_decay=0, warmup_steps=0, r=0, weight_lr_power=2`. AdamW
//! validates nothing (as the package; only `eval()` refuses β1 = 0, where the package divides by
//! zero); SGD rejects lr < 0, weight_decay < 0 and momentum outside (0, 1) (and NaN). Kernel:
//! `shaders/schedule_free.wgsl`.

use bytemuck::{Pod, Zeroable};

use super::common::lerp_torch;
use super::rule::{ChunkRange, HyperCtx, MomentumKind, Rule, Scalars, StateSpec};
use crate::error::{check_non_negative, Error, Result};
use crate::shaders::KernelDef;

/// `schedule_free_adamw_step` in schedule_free.wgsl.
pub const SCHEDULE_FREE_ADAMW_STEP: KernelDef = KernelDef::step(
    "schedule_free_adamw_step",
    crate::kernel_source!(elementwise "schedule_free.wgsl"),
    2,
);
/// `schedule_free_sgd_step` in schedule_free.wgsl (binds a dummy as `exp_avg_sq`).
pub const SCHEDULE_FREE_SGD_STEP: KernelDef = KernelDef::step(
    "schedule_free_sgd_step",
    crate::kernel_source!(elementwise "schedule_free.wgsl"),
    2,
);
/// `schedule_free_swap` in schedule_free.wgsl: the train/eval mode swap of both rules.
pub const SCHEDULE_FREE_SWAP: KernelDef = KernelDef::step(
    "schedule_free_swap",
    crate::kernel_source!(elementwise "schedule_free.wgsl"),
    2,
);

/// The group scalars' slots: `k`, `lr_max`, `weight_sum`, `scheduled_lr`.
const GROUP_SCALARS: &[&str] = &["k", "lr_max", "weight_sum", "scheduled_lr"];

/// `AdamWScheduleFree` hyperparameters; `Default` is the package's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ScheduleFreeAdamWConfig {
    /// Learning rate, the peak of the built-in warmup (default 0.0025).
    pub lr: f64,
    /// The interpolation between z and x where gradients are taken (`betas[0]`, default 0.9).
    pub beta1: f64,
    /// Decay of the second moment (`betas[1]`, default 0.999).
    pub beta2: f64,
    /// Added to the bias-corrected `sqrt(v)` (default 1e-8).
    pub eps: f64,
    /// Weight decay, evaluated at y and added to the normalised direction (default 0).
    pub weight_decay: f64,
    /// Steps of linear lr warmup, counted by the group (default 0).
    pub warmup_steps: u64,
    /// Averaging weight exponent on the step: w = (k+1)^r · lr_max^weight_lr_power (default 0).
    pub r: f64,
    /// Averaging weight exponent on the largest lr so far (default 2).
    pub weight_lr_power: f64,
}

impl Default for ScheduleFreeAdamWConfig {
    fn default() -> Self {
        Self {
            lr: 0.0025,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
            r: 0.0,
            weight_lr_power: 2.0,
        }
    }
}

/// `SGDScheduleFree` hyperparameters; `Default` is the package's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ScheduleFreeSgdConfig {
    /// Learning rate, the peak of the built-in warmup (default 1.0).
    pub lr: f64,
    /// The interpolation between z and x where gradients are taken (β1; default 0.9).
    pub momentum: f64,
    /// Weight decay, evaluated at y and added to the gradient (default 0).
    pub weight_decay: f64,
    /// Steps of linear lr warmup, counted by the group (default 0).
    pub warmup_steps: u64,
    /// Averaging weight exponent on the step (default 0).
    pub r: f64,
    /// Averaging weight exponent on the largest lr so far (default 2).
    pub weight_lr_power: f64,
}

impl Default for ScheduleFreeSgdConfig {
    fn default() -> Self {
        Self {
            lr: 1.0,
            momentum: 0.9,
            weight_decay: 0.0,
            warmup_steps: 0,
            r: 0.0,
            weight_lr_power: 2.0,
        }
    }
}

/// Mirrors `ScheduleFreeHyper` in schedule_free.wgsl (both rules).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct ScheduleFreeHyper {
    /// FLAG_GRAD_SCALE (no flags of its own).
    pub flags: u32,
    /// c = w / W of this step.
    pub c: f32,
    /// lr_k, the lr with warmup applied.
    pub lr: f32,
    /// lr_k · (β1·(1 − c) − 1), formed in f64.
    pub y_coef: f32,
    /// Weight decay.
    pub weight_decay: f32,
    /// β2 (AdamW).
    pub beta2: f32,
    /// 1 − β2, formed in f64 (AdamW).
    pub one_minus_beta2: f32,
    /// 1 − β2^(k+1) with the group's k (AdamW).
    pub bias_correction2: f32,
    /// eps (AdamW).
    pub eps: f32,
    /// Padding to 48 bytes.
    pub pad: [u32; 3],
}

/// Mirrors `ScheduleFreeTensor` in schedule_free.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct ScheduleFreeTensor {
    /// 1 when the tensor steps (or, in a swap, is swapped) this time.
    pub live: u32,
    /// The tensor's group among its segment's groups.
    pub group: u32,
    /// 1 on the tensor's first step: z starts as a copy of the param.
    pub first: u32,
    /// The swap's lerp weight (swap tables only).
    pub swap_w: f32,
}

/// The hyperparameters both rules share.
struct Common {
    lr: f64,
    beta1: f64,
    weight_decay: f64,
    warmup_steps: u64,
    r: f64,
    weight_lr_power: f64,
}

impl Common {
    /// One step of the group scalars `[k, lr_max, weight_sum, scheduled_lr]`, in the
    /// package's order with Python floats; returns the Hyper without the AdamW fields, and k.
    fn group_step(&self, flags: u32, s: &mut Scalars) -> (ScheduleFreeHyper, f64) {
        let k = s[0];
        let sched = if k < self.warmup_steps as f64 {
            (k + 1.0) / self.warmup_steps as f64
        } else {
            1.0
        };
        let lr = self.lr * sched;
        s[3] = lr;
        // Python's max(lr, lr_max): the first argument unless the second is larger.
        let lr_max = if s[1] > lr { s[1] } else { lr };
        s[1] = lr_max;
        let weight = (k + 1.0).powf(self.r) * lr_max.powf(self.weight_lr_power);
        s[2] += weight;
        let c = if s[2] == 0.0 { 0.0 } else { weight / s[2] };
        s[0] = k + 1.0;
        let h = ScheduleFreeHyper {
            flags,
            c: c as f32,
            lr: lr as f32,
            y_coef: (lr * (self.beta1 * (1.0 - c) - 1.0)) as f32,
            weight_decay: self.weight_decay as f32,
            ..Zeroable::zeroed()
        };
        (h, k)
    }

    fn swap_step(&self, t: u64, group: u32, to_train: bool) -> Option<ScheduleFreeTensor> {
        let w = if to_train {
            1.0 - self.beta1
        } else {
            1.0 - 1.0 / self.beta1
        };
        (t > 0).then_some(ScheduleFreeTensor {
            live: 1,
            group,
            first: 0,
            swap_w: w as f32,
        })
    }
}

fn z_state() -> StateSpec {
    StateSpec {
        name: "z",
        slot: 0,
        init: 0.0,
    }
}

fn tensor_step(t: u64, group: u32) -> ScheduleFreeTensor {
    ScheduleFreeTensor {
        live: 1,
        group,
        first: (t == 1) as u32,
        swap_w: 0.0,
    }
}

/// Decay at y, then the y and z updates (the tail of both rules, as the kernel's `sf_vec`).
#[inline]
fn apply(h: &ScheduleFreeHyper, ts: &ScheduleFreeTensor, p: &mut f32, z: &mut f32, d: f32) {
    let p0 = *p;
    let mut d = d;
    if h.weight_decay != 0.0 {
        d += h.weight_decay * p0;
    }
    let z0 = if ts.first != 0 { p0 } else { *z };
    let y = lerp_torch(p0, z0, h.c);
    *p = y + h.y_coef * d;
    *z = z0 - h.lr * d;
}

fn swap_update(ts: &ScheduleFreeTensor, p: &mut [f32], state: &mut [&mut [f32]]) {
    let Some(z) = state.first() else { return };
    for (pi, &zi) in p.iter_mut().zip(z.iter()) {
        *pi = lerp_torch(*pi, zi, ts.swap_w);
    }
}

fn mode_swap_check(beta1: f64, name: &'static str, to_train: bool) -> Result<()> {
    if !to_train && beta1 == 0.0 {
        return Err(Error::InvalidHyperparameter {
            name,
            value: beta1,
            reason: "must be nonzero for eval() (its lerp weight is 1 - 1/beta1)",
        });
    }
    Ok(())
}

impl ScheduleFreeAdamWConfig {
    fn common(&self) -> Common {
        Common {
            lr: self.lr,
            beta1: self.beta1,
            weight_decay: self.weight_decay,
            warmup_steps: self.warmup_steps,
            r: self.r,
            weight_lr_power: self.weight_lr_power,
        }
    }
}

impl ScheduleFreeSgdConfig {
    fn common(&self) -> Common {
        Common {
            lr: self.lr,
            beta1: self.momentum,
            weight_decay: self.weight_decay,
            warmup_steps: self.warmup_steps,
            r: self.r,
            weight_lr_power: self.weight_lr_power,
        }
    }
}

impl Rule for ScheduleFreeAdamWConfig {
    type Hyper = ScheduleFreeHyper;
    type TensorStep = ScheduleFreeTensor;
    const KERNEL: KernelDef = SCHEDULE_FREE_ADAMW_STEP;

    fn name(&self) -> &'static str {
        "schedule-free-adamw"
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
        // The package checks nothing.
        Ok(())
    }

    fn states(&self) -> Vec<StateSpec> {
        vec![
            z_state(),
            StateSpec {
                name: "exp_avg_sq",
                slot: 1,
                init: 0.0,
            },
        ]
    }

    fn hyper(&self, ctx: HyperCtx) -> ScheduleFreeHyper {
        // The engines call group_step; this is the group's first step's table.
        self.group_step(ctx, &mut self.init_group_scalars())
    }

    fn group_scalar_names(&self) -> &'static [&'static str] {
        GROUP_SCALARS
    }

    fn init_group_scalars(&self) -> Scalars {
        [0.0, -1.0, 0.0, 0.0]
    }

    fn group_step(&self, ctx: HyperCtx, s: &mut Scalars) -> ScheduleFreeHyper {
        let (mut h, k) = self.common().group_step(ctx.extra_flags, s);
        h.beta2 = self.beta2 as f32;
        h.one_minus_beta2 = (1.0 - self.beta2) as f32;
        h.bias_correction2 = (1.0 - self.beta2.powf(k + 1.0)) as f32;
        h.eps = self.eps as f32;
        h
    }

    fn tensor_step(&self, t: u64, group: u32, _chunks: ChunkRange) -> ScheduleFreeTensor {
        tensor_step(t, group)
    }

    fn swap_kernel() -> Option<KernelDef> {
        Some(SCHEDULE_FREE_SWAP)
    }

    fn check_mode_swap(&self, to_train: bool) -> Result<()> {
        mode_swap_check(self.beta1, "beta1", to_train)
    }

    fn swap_step(&self, t: u64, group: u32, to_train: bool) -> Option<ScheduleFreeTensor> {
        self.common().swap_step(t, group, to_train)
    }

    fn swap(ts: &ScheduleFreeTensor, p: &mut [f32], state: &mut [&mut [f32]]) {
        swap_update(ts, p, state)
    }

    fn update(
        h: &ScheduleFreeHyper,
        ts: &ScheduleFreeTensor,
        p: &mut [f32],
        g: &[f32],
        state: &mut [&mut [f32]],
    ) {
        let [z, v] = state else { return };
        for i in 0..p.len() {
            let gi = g[i];
            let vi = v[i] * h.beta2 + (h.one_minus_beta2 * gi) * gi;
            v[i] = vi;
            let d = gi / ((vi / h.bias_correction2).sqrt() + h.eps);
            apply(h, ts, &mut p[i], &mut z[i], d);
        }
    }

    fn bytes_per_element(&self) -> u64 {
        28
    }

    fn presets() -> Vec<(&'static str, Self)> {
        vec![("schedule-free-adamw", Self::default())]
    }

    fn variants() -> Vec<Self> {
        vec![
            Self {
                lr: 0.01,
                ..Self::default()
            },
            // Warmup, r != 0, another weight_lr_power, weight decay.
            Self {
                lr: 0.02,
                beta1: 0.95,
                beta2: 0.99,
                eps: 1e-3,
                weight_decay: 1e-2,
                warmup_steps: 3,
                r: 0.5,
                weight_lr_power: 1.0,
            },
            // beta1 = 0: y = z (torch.lerp's second branch in the swap weight is unused).
            Self {
                lr: 0.01,
                beta1: 0.0,
                weight_decay: 0.1,
                warmup_steps: 10,
                ..Self::default()
            },
        ]
    }
}

impl Rule for ScheduleFreeSgdConfig {
    type Hyper = ScheduleFreeHyper;
    type TensorStep = ScheduleFreeTensor;
    const KERNEL: KernelDef = SCHEDULE_FREE_SGD_STEP;

    fn name(&self) -> &'static str {
        "schedule-free-sgd"
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
        check_non_negative("weight_decay", self.weight_decay)?;
        if !(self.momentum > 0.0 && self.momentum < 1.0) {
            return Err(Error::InvalidHyperparameter {
                name: "momentum",
                value: self.momentum,
                reason: "must be in (0, 1)",
            });
        }
        Ok(())
    }

    fn states(&self) -> Vec<StateSpec> {
        vec![z_state()]
    }

    fn hyper(&self, ctx: HyperCtx) -> ScheduleFreeHyper {
        self.group_step(ctx, &mut self.init_group_scalars())
    }

    fn group_scalar_names(&self) -> &'static [&'static str] {
        GROUP_SCALARS
    }

    fn init_group_scalars(&self) -> Scalars {
        [0.0, -1.0, 0.0, 0.0]
    }

    fn group_step(&self, ctx: HyperCtx, s: &mut Scalars) -> ScheduleFreeHyper {
        self.common().group_step(ctx.extra_flags, s).0
    }

    fn tensor_step(&self, t: u64, group: u32, _chunks: ChunkRange) -> ScheduleFreeTensor {
        tensor_step(t, group)
    }

    fn swap_kernel() -> Option<KernelDef> {
        Some(SCHEDULE_FREE_SWAP)
    }

    fn check_mode_swap(&self, to_train: bool) -> Result<()> {
        mode_swap_check(self.momentum, "momentum", to_train)
    }

    fn swap_step(&self, t: u64, group: u32, to_train: bool) -> Option<ScheduleFreeTensor> {
        self.common().swap_step(t, group, to_train)
    }

    fn swap(ts: &ScheduleFreeTensor, p: &mut [f32], state: &mut [&mut [f32]]) {
        swap_update(ts, p, state)
    }

    fn update(
        h: &ScheduleFreeHyper,
        ts: &ScheduleFreeTensor,
        p: &mut [f32],
        g: &[f32],
        state: &mut [&mut [f32]],
    ) {
        let Some(z) = state.first_mut() else { return };
        for i in 0..p.len() {
            apply(h, ts, &mut p[i], &mut z[i], g[i]);
        }
    }

    fn bytes_per_element(&self) -> u64 {
        20
    }

    fn presets() -> Vec<(&'static str, Self)> {
        vec![("schedule-free-sgd", Self::default())]
    }

    fn variants() -> Vec<Self> {
        vec![
            Self {
                lr: 0.05,
                ..Self::default()
            },
            Self {
                lr: 0.1,
                momentum: 0.5,
                weight_decay: 1e-2,
                warmup_steps: 4,
                r: 1.0,
                weight_lr_power: 0.0,
            },
        ]
    }
}
