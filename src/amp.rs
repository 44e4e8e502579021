//! Mixed-precision training's step guard: gradients carrying a loss scale (divided out inside
//! the update kernels), steps with a NaN or Inf gradient skipped on the device, and
//! `torch.amp.GradScaler`'s dynamic loss scale, all without a host round trip per step.
//!
//! Attach an [`AmpConfig`] with [`crate::Optimizer::set_amp`] (or
//! [`crate::CpuOptimizer::set_amp`], the CPU twin). Each step then records, before the update:
//! an inf-norm reduction over the live gradients (max |g|, NaN-propagating; one extra read of
//! the gradients, 4 B per element), and one single-invocation `amp_decide` kernel (amp.wgsl)
//! that computes `found_inf`, the gradient coefficient the update kernels multiply by
//! (`1 / scale`, times the clip coefficient of the unscaled norm when a clipper is attached),
//! the update's indirect dispatch sizes (zero when skipping), and GradScaler's scale update.
//!
//! Step counts, bias corrections and host scalars live on the host, so a skipped step must be
//! taken back there too: the engine reads the found flag of a step lazily, at the start of the
//! next `step` / `encode_step` or when asked with `found_inf()`, and restores the counts then.
//! Until then `step_count` may count the skipped step. Within a step nothing waits (the check
//! and the update are one submission); the read at the next step waits for the previous step
//! to finish, so the host runs at most one step ahead of the GPU, as with PyTorch's
//! non-fused `GradScaler.step`, which reads `found_inf` with `.item()` every step. `optbench
//! bench --amp` measures what that and the extra gradient read cost.

use crate::error::{check_finite, Error, Result};

/// GradScaler's constructor arguments (PyTorch's defaults).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GradScalerConfig {
    /// The first scale (default 2^16).
    pub init_scale: f64,
    /// Scale multiplier after `growth_interval` steps without a non-finite gradient (2.0).
    pub growth_factor: f64,
    /// Scale multiplier after a step with one (0.5).
    pub backoff_factor: f64,
    /// Clean steps between growths (2000).
    pub growth_interval: u32,
}

impl Default for GradScalerConfig {
    fn default() -> Self {
        Self {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

/// The scale the gradients carry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossScale {
    /// None (the gradients are true gradients).
    None,
    /// A fixed scale `S`: the kernels multiply each gradient by `1 / S` (f32).
    Fixed(f64),
    /// GradScaler's dynamic scale, kept and updated on the GPU.
    Dynamic(GradScalerConfig),
}

/// Loss scaling and the non-finite skip, for [`crate::Optimizer::set_amp`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AmpConfig {
    /// The scale the gradients carry (default none).
    pub loss_scale: LossScale,
    /// Skip a step whose unscaled gradients hold a NaN or Inf anywhere (among the tensors
    /// that step): params, state and step counts stay exactly as they were (default true).
    pub skip_non_finite: bool,
}

impl Default for AmpConfig {
    fn default() -> Self {
        Self {
            loss_scale: LossScale::None,
            skip_non_finite: true,
        }
    }
}

impl AmpConfig {
    /// GradScaler's defaults with the skip on: what `torch.amp.GradScaler()` does.
    pub fn grad_scaler() -> Self {
        Self {
            loss_scale: LossScale::Dynamic(GradScalerConfig::default()),
            skip_non_finite: true,
        }
    }

    /// Checks the values as GradScaler's constructor does (and that scales are positive).
    pub fn validate(&self) -> Result<()> {
        let positive = |name: &'static str, v: f64| {
            check_finite(name, v)?;
            if v > 0.0 && (v as f32).is_finite() && (v as f32) > 0.0 {
                Ok(())
            } else {
                Err(Error::hyper(
                    name,
                    v,
                    "must be > 0 and representable in f32",
                ))
            }
        };
        match self.loss_scale {
            LossScale::None => Ok(()),
            LossScale::Fixed(s) => positive("loss scale", s),
            LossScale::Dynamic(c) => {
                positive("init_scale", c.init_scale)?;
                check_finite("growth_factor", c.growth_factor)?;
                if c.growth_factor <= 1.0 {
                    return Err(Error::hyper(
                        "growth_factor",
                        c.growth_factor,
                        "must be > 1",
                    ));
                }
                if !(c.backoff_factor > 0.0 && c.backoff_factor < 1.0) {
                    return Err(Error::hyper(
                        "backoff_factor",
                        c.backoff_factor,
                        "must be in (0, 1)",
                    ));
                }
                if c.growth_interval == 0 {
                    return Err(Error::hyper(
                        "growth_interval",
                        0.0,
                        "must be a positive integer",
                    ));
                }
                Ok(())
            }
        }
    }

    pub(crate) fn initial_scale(&self) -> f32 {
        match self.loss_scale {
            LossScale::None => 1.0,
            LossScale::Fixed(s) => s as f32,
            LossScale::Dynamic(c) => c.init_scale as f32,
        }
    }
}

/// Flag bits of `AmpHyper.flags` (amp.wgsl).
pub(crate) const AMP_SKIP: u32 = 1;
pub(crate) const AMP_DYNAMIC: u32 = 2;
pub(crate) const AMP_CLIP: u32 = 4;

/// Mirrors `AmpHyper` in amp.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AmpHyper {
    pub flags: u32,
    pub n_args: u32,
    pub growth_interval: u32,
    pub fixed_scale: f32,
    pub growth_factor: f32,
    pub backoff_factor: f32,
    pub max_norm: f32,
    pub pad: u32,
}

impl AmpHyper {
    pub(crate) fn new(cfg: &AmpConfig, n_args: u32, max_norm: Option<f64>) -> Self {
        let (dynamic, growth, backoff, interval) = match cfg.loss_scale {
            LossScale::Dynamic(c) => (
                AMP_DYNAMIC,
                c.growth_factor as f32,
                c.backoff_factor as f32,
                c.growth_interval,
            ),
            _ => (0, 1.0, 1.0, 0),
        };
        Self {
            flags: dynamic
                | if cfg.skip_non_finite { AMP_SKIP } else { 0 }
                | if max_norm.is_some() { AMP_CLIP } else { 0 },
            n_args,
            growth_interval: interval,
            fixed_scale: cfg.initial_scale(),
            growth_factor: growth,
            backoff_factor: backoff,
            max_norm: max_norm.unwrap_or(0.0) as f32,
            pad: 0,
        }
    }
}

/// Mirrors `AmpState` in amp.wgsl: the scale, GradScaler's growth tracker, the last step's
/// found flag and the number of skipped steps.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AmpState {
    /// The current scale (the one the next step's gradients should carry).
    pub scale: f32,
    /// Clean steps since the last growth or backoff.
    pub growth_tracker: u32,
    /// 1 when the last step found a NaN or Inf gradient.
    pub found: u32,
    /// Steps skipped so far.
    pub skipped: u32,
}

impl AmpState {
    pub(crate) fn new(cfg: &AmpConfig) -> Self {
        Self {
            scale: cfg.initial_scale(),
            growth_tracker: 0,
            found: 0,
            skipped: 0,
        }
    }
}

/// The decision of one step on the host, in amp.wgsl's f32 operations and order: updates
/// `st` and returns `(coef, skip)`. `max_abs` is max |g| over the live gradients (NaN if
/// any is NaN); `clip` is `(max_norm, scaled total norm)` when clipping.
pub(crate) fn decide(
    h: &AmpHyper,
    st: &mut AmpState,
    max_abs: f32,
    clip: Option<(f32, f32)>,
) -> (f32, bool) {
    let scale = if h.flags & AMP_DYNAMIC != 0 {
        st.scale
    } else {
        h.fixed_scale
    };
    let inv_scale = 1.0 / scale;
    let found = !(max_abs * inv_scale).is_finite();
    let mut c = inv_scale;
    if let Some((max_norm, norm)) = clip {
        let k = max_norm / (norm * inv_scale + 1e-6);
        c = inv_scale * if k.is_nan() { k } else { k.min(1.0) };
    }
    let skip = found && h.flags & AMP_SKIP != 0;
    st.found = u32::from(found);
    if skip {
        st.skipped += 1;
    }
    if h.flags & AMP_DYNAMIC != 0 {
        if found {
            st.scale = scale * h.backoff_factor;
            st.growth_tracker = 0;
        } else {
            let successful = st.growth_tracker + 1;
            if successful == h.growth_interval {
                let grown = scale * h.growth_factor;
                if grown.is_finite() {
                    st.scale = grown;
                }
                st.growth_tracker = 0;
            } else {
                st.growth_tracker = successful;
            }
        }
    }
    (c, skip)
}

/// max |x| over `xs`, NaN when any element is NaN (the GPU reduction's `max_nan`).
pub(crate) fn max_abs_nan<'a>(xs: impl IntoIterator<Item = &'a [f32]>) -> f32 {
    let mut m = 0.0f32;
    for s in xs {
        for &x in s {
            let a = x.abs();
            if a.is_nan() || m.is_nan() {
                m = f32::NAN;
            } else if a > m {
                m = a;
            }
        }
    }
    m
}
