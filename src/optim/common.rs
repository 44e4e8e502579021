//! Host twins of the math in shaders/common.wgsl that several rules share, so no rule imports
//! a sibling for them.

/// torch.lerp's CPU formula (mirrors `lerp_torch` in common.wgsl).
#[inline]
pub(crate) fn lerp_torch(start: f32, end: f32, w: f32) -> f32 {
    if w.abs() < 0.5 {
        start + w * (end - start)
    } else {
        end - (end - start) * (1.0 - w)
    }
}

/// Flag bit for `maximize`.
pub(crate) fn maximize_flag(maximize: bool) -> u32 {
    if maximize {
        crate::shaders::FLAG_MAXIMIZE
    } else {
        0
    }
}

/// An f64 field that may be infinite (ASGD's `t0 = -inf`), which JSON numbers cannot hold:
/// written as a number when finite and as `"inf"`, `"-inf"` or `"nan"` otherwise (Python's
/// `float()` spellings); read back from either.
pub(crate) mod json_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("nan")
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(f64),
        Str(String),
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::Num(x) => Ok(x),
            NumOrStr::Str(s) => match s.as_str() {
                "inf" | "Infinity" => Ok(f64::INFINITY),
                "-inf" | "-Infinity" => Ok(f64::NEG_INFINITY),
                "nan" | "NaN" => Ok(f64::NAN),
                other => Err(serde::de::Error::custom(format!(
                    "expected a number, \"inf\", \"-inf\" or \"nan\", got {other:?}"
                ))),
            },
        }
    }
}
