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
//! The scale update rounds as `torch.amp.GradScaler` does (`torch._amp_update_scale_`): the f32
//! scale times the f64 growth or backoff factor, computed in double and stored as f32, so with
//! factors such as 1.7 or 0.3 the scale follows torch's bit for bit, on the GPU too (where the
//! product is formed exactly in integers, WGSL having no f64).
//!
//! What counts as "found": by default ([`FoundInfCheck::Unscaled`]) a step is non-finite when
//! some gradient *divided by the scale* is NaN or infinite. torch checks the *scaled* gradient
//! instead ([`FoundInfCheck::Scaled`], selected with [`GradScalerConfig::found_inf_check`]);
//! the two differ only for a scale below 1 and a finite gradient that overflows when unscaled
//! (2e38 at scale 0.5): torch finds nothing and steps with an infinite gradient, the default
//! skips the step.
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

/// Which gradients the non-finite check looks at (see [`crate::amp`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum FoundInfCheck {
    /// The unscaled gradients (the gradients times `1 / scale`, in f32): a finite gradient
    /// that overflows when unscaled (possible only with a scale below 1) is found, and the
    /// step skipped. The library's default: it never applies an infinite gradient.
    #[default]
    Unscaled,
    /// The scaled gradients, as given: PyTorch's `_amp_foreach_non_finite_check_and_unscale_`,
    /// which tests each gradient before multiplying it by `1 / scale`. With a scale below 1, a
    /// huge finite gradient is not found and the step applies its infinite unscaled value, as
    /// torch does.
    Scaled,
}

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
    /// Which gradients the non-finite check looks at: [`FoundInfCheck::Unscaled`] (the
    /// default, the library's safer check) or [`FoundInfCheck::Scaled`] (torch's). A field of
    /// the dynamic scaler because torch's check is GradScaler's; a fixed scale or none always
    /// checks the unscaled gradients (with no scale the two are the same).
    pub found_inf_check: FoundInfCheck,
}

impl Default for GradScalerConfig {
    fn default() -> Self {
        Self {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            found_inf_check: FoundInfCheck::Unscaled,
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
    /// that step; [`GradScalerConfig::found_inf_check`] selects torch's test of the scaled
    /// ones instead): params, state and step counts stay exactly as they were (default true).
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
pub(crate) const AMP_SCALED_CHECK: u32 = 8;

/// Mirrors `Factor` in amp.wgsl: a positive f64 exactly, as `mant * 2^exp` with `mant < 2^53`
/// split into two words, so the GPU (which has no f64) can multiply by it exactly.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ExactFactor {
    pub lo: u32,
    pub hi: u32,
    pub exp: i32,
    pub pad: u32,
}

impl ExactFactor {
    /// `|f|` from its bits (a finite f64; the sign is dropped, factors are positive).
    pub(crate) fn new(f: f64) -> Self {
        let bits = f.to_bits() & !(1u64 << 63);
        let biased = (bits >> 52) as i32;
        let frac = bits & ((1u64 << 52) - 1);
        // Subnormals have no implicit bit and the exponent of the least normal.
        let (mant, exp) = if biased == 0 {
            (frac, -1074)
        } else {
            (frac | (1u64 << 52), biased - 1075)
        };
        Self {
            lo: mant as u32,
            hi: (mant >> 32) as u32,
            exp,
            pad: 0,
        }
    }

    /// The f64 it holds (exactly the one it was made from, less the sign).
    pub(crate) fn value(&self) -> f64 {
        let mant = (u64::from(self.hi) << 32) | u64::from(self.lo);
        if mant >= 1u64 << 52 {
            f64::from_bits((((self.exp + 1075) as u64) << 52) | (mant - (1u64 << 52)))
        } else {
            f64::from_bits(mant)
        }
    }
}

/// Mirrors `AmpHyper` in amp.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AmpHyper {
    pub flags: u32,
    pub n_args: u32,
    pub growth_interval: u32,
    pub fixed_scale: f32,
    pub max_norm: f32,
    pub pad: [u32; 3],
    pub growth: ExactFactor,
    pub backoff: ExactFactor,
}

impl AmpHyper {
    pub(crate) fn new(cfg: &AmpConfig, n_args: u32, max_norm: Option<f64>) -> Self {
        let (flags, growth, backoff, interval) = match cfg.loss_scale {
            LossScale::Dynamic(c) => (
                AMP_DYNAMIC
                    | match c.found_inf_check {
                        FoundInfCheck::Unscaled => 0,
                        FoundInfCheck::Scaled => AMP_SCALED_CHECK,
                    },
                c.growth_factor,
                c.backoff_factor,
                c.growth_interval,
            ),
            _ => (0, 1.0, 1.0, 0),
        };
        Self {
            flags: flags
                | if cfg.skip_non_finite { AMP_SKIP } else { 0 }
                | if max_norm.is_some() { AMP_CLIP } else { 0 },
            n_args,
            growth_interval: interval,
            fixed_scale: cfg.initial_scale(),
            max_norm: max_norm.unwrap_or(0.0) as f32,
            pad: [0; 3],
            growth: ExactFactor::new(growth),
            backoff: ExactFactor::new(backoff),
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

/// The f32 scale times an f64 factor as torch rounds it (`_amp_update_scale_` computes
/// `scale * factor` in double and stores it as f32): `scale_times` in amp.wgsl.
pub(crate) fn scale_times(scale: f32, factor: f64) -> f32 {
    ((scale as f64) * factor) as f32
}

/// The decision of one step on the host, in amp.wgsl's operations and order: updates `st` and
/// returns `(coef, skip)`. `max_abs` is max |g| over the live (scaled) gradients (NaN if any is
/// NaN); `clip_norm` is their (scaled) total norm, used when `h` clips (`AMP_CLIP`).
pub(crate) fn decide(h: &AmpHyper, st: &mut AmpState, max_abs: f32, clip_norm: f32) -> (f32, bool) {
    let scale = if h.flags & AMP_DYNAMIC != 0 {
        st.scale
    } else {
        h.fixed_scale
    };
    let inv_scale = 1.0 / scale;
    let found = if h.flags & AMP_SCALED_CHECK != 0 {
        !max_abs.is_finite()
    } else {
        !(max_abs * inv_scale).is_finite()
    };
    let mut c = inv_scale;
    if h.flags & AMP_CLIP != 0 {
        // clip_grad_norm_ on the unscaled gradients, NaN-propagating as torch.clamp(max=1).
        let k = h.max_norm / (clip_norm * inv_scale + 1e-6);
        c = inv_scale * if k.is_nan() { k } else { k.min(1.0) };
    }
    let skip = found && h.flags & AMP_SKIP != 0;
    st.found = u32::from(found);
    if skip {
        st.skipped = st.skipped.wrapping_add(1);
    }
    if h.flags & AMP_DYNAMIC != 0 {
        if found {
            st.scale = scale_times(scale, h.backoff.value());
            st.growth_tracker = 0;
        } else {
            // Wrapping, as the GPU's u32 add (a checkpoint may hold any count).
            let successful = st.growth_tracker.wrapping_add(1);
            if successful == h.growth_interval {
                let grown = scale_times(scale, h.growth.value());
                // torch keeps the scale when the grown one is not finite.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_factors_hold_their_f64() {
        // Normals, subnormals, the extremes and GradScaler-like factors.
        let mut cases = vec![
            2.0,
            0.5,
            1.7,
            0.3,
            1.0 + f64::EPSILON,
            1.0 - f64::EPSILON / 2.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::MIN_POSITIVE / 3.0,
            f64::from_bits(1),
            f64::from_bits((1 << 52) - 1),
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        cases.extend((0..10_000).map(|_| f64::from_bits(rng.u64(..0x7ff0_0000_0000_0000))));
        for f in cases {
            let e = ExactFactor::new(f);
            assert!(u64::from(e.hi) < 1 << 21, "{f:e}");
            assert_eq!(e.value().to_bits(), f.to_bits(), "{f:e}");
            // mant * 2^exp, checked independently of `value` where it is a normal product.
            let mant = ((u64::from(e.hi) << 32) | u64::from(e.lo)) as f64;
            if (1e-280..=1e280).contains(&f) {
                assert_eq!(mant * 2f64.powi(e.exp), f, "{f:e}");
            }
        }
    }
}
