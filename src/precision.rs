//! Mixed precision: the storage types of an arena's model copy and gradients, and the host
//! (CPU reference) conversions, all through the `half` crate.
//!
//! A [`ParamArena`](crate::ParamArena) built with a 16-bit [`Precision`] keeps three buffers:
//! the **f32 master weights** (its params buffer, so every kernel, the norms, the checkpoints
//! and `read_params` see f32 values), the **16-bit model copy** and the **16-bit gradients**,
//! both packed two values per `u32` (element `2k` in the low half). Each optimizer kernel reads
//! the 16-bit gradient, updates the f32 master weights and f32 state, and writes the model copy,
//! rounded to nearest even from the new master value, in the same pass.
//!
//! Conversions on the GPU are integer operations that reproduce `half::f16::from_f32` and
//! `half::bf16::from_f32` bit for bit (round to nearest, ties to even; overflow to infinity;
//! f16 subnormals; NaN kept NaN with its sign, quiet bit set); 16-bit to f32 is exact.

use half::{bf16, f16};

/// How one kind of arena data is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StorageType {
    /// 32-bit IEEE float.
    #[default]
    F32,
    /// IEEE binary16 (5-bit exponent, 10-bit mantissa).
    F16,
    /// bfloat16 (the upper half of an f32).
    Bf16,
}

impl StorageType {
    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            StorageType::F32 => 4,
            StorageType::F16 | StorageType::Bf16 => 2,
        }
    }

    /// Whether this is a 16-bit type.
    pub fn is_16(self) -> bool {
        self != StorageType::F32
    }

    /// The value of the kernels' `GRAD_BF16` / `MODEL_BF16` override constants.
    pub(crate) fn is_bf16(self) -> bool {
        self == StorageType::Bf16
    }

    /// `x` rounded to this type (round to nearest even) and widened back to f32 (`x` itself
    /// for [`StorageType::F32`]).
    pub fn round(self, x: f32) -> f32 {
        match self {
            StorageType::F32 => x,
            StorageType::F16 => f16::from_f32(x).to_f32(),
            StorageType::Bf16 => bf16::from_f32(x).to_f32(),
        }
    }

    /// The 16-bit pattern of `x` rounded to this type; `None` for [`StorageType::F32`].
    pub fn to_bits16(self, x: f32) -> Option<u16> {
        match self {
            StorageType::F32 => None,
            StorageType::F16 => Some(f16::from_f32(x).to_bits()),
            StorageType::Bf16 => Some(bf16::from_f32(x).to_bits()),
        }
    }

    /// The f32 value of a 16-bit pattern of this type (exact); `None` for [`StorageType::F32`].
    pub fn from_bits16(self, bits: u16) -> Option<f32> {
        match self {
            StorageType::F32 => None,
            StorageType::F16 => Some(f16::from_bits(bits).to_f32()),
            StorageType::Bf16 => Some(bf16::from_bits(bits).to_f32()),
        }
    }
}

/// The storage types of an arena: the model copy the forward pass reads and the gradients the
/// backward pass writes. Master weights and optimizer state are always f32.
///
/// Supported: both [`StorageType::F32`] (the plain arena), or a 16-bit model copy (f16 or
/// bf16) with gradients of any type (f32, f16 or bf16). An f32 model with 16-bit gradients is
/// [`Error::Unsupported`](crate::Error::Unsupported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Precision {
    /// Storage of the model copy.
    pub model: StorageType,
    /// Storage of the gradients.
    pub grads: StorageType,
}

impl Precision {
    /// The plain f32 arena.
    pub const F32: Precision = Precision {
        model: StorageType::F32,
        grads: StorageType::F32,
    };
    /// f16 model copy and f16 gradients, f32 master weights and state.
    pub const F16: Precision = Precision {
        model: StorageType::F16,
        grads: StorageType::F16,
    };
    /// bf16 model copy and bf16 gradients, f32 master weights and state.
    pub const BF16: Precision = Precision {
        model: StorageType::Bf16,
        grads: StorageType::Bf16,
    };

    /// Whether the arena keeps a 16-bit model copy (beside its f32 master weights).
    pub fn is_mixed(self) -> bool {
        self.model.is_16()
    }

    /// Bytes one step moves per element on an arena of this precision, from the f32 count
    /// (`OptimizerConfig::bytes_per_element`) and how many times the step reads each gradient:
    /// each gradient read shrinks to the gradient type's size, and the model copy is written
    /// (never read) once. Master weights and state stay f32. Adam with bf16 model and grads:
    /// 2 (g) + 4 (p) + 4 + 4 (m, v) read, 2 (model) + 4 + 4 + 4 written = 28, as in f32.
    pub fn bytes_per_element(self, f32_bytes: u64, grad_reads: u64) -> u64 {
        if !self.is_mixed() {
            return f32_bytes;
        }
        f32_bytes - grad_reads * (4 - self.grads.bytes()) + self.model.bytes()
    }

    /// Checks the combination is one the kernels implement.
    pub fn check(self) -> crate::Result<()> {
        if !self.model.is_16() && self.grads.is_16() {
            return Err(crate::Error::Unsupported(
                "16-bit gradients need a 16-bit model copy (an f32 model with 16-bit gradients \
                 is not implemented)",
            ));
        }
        Ok(())
    }
}

/// How the 16-bit storage of an arena is read and written on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HalfPath {
    /// No 16-bit storage (an f32 arena).
    None,
    /// Two 16-bit values packed in each `u32`, converted with integer operations. Works on
    /// every adapter; the only path for bf16, which WGSL lacks.
    Packed,
    /// WGSL `f16` storage (`array<vec4<f16>>`) through wgpu's `SHADER_F16`: taken for an
    /// all-f16 arena ([`Precision::F16`]) on an adapter with the feature, unless
    /// [`PrecisionOptions::force_packed`]. The gradients are loaded and widened natively; the
    /// model copy is still rounded with integer operations (WGSL leaves f32-to-f16 rounding
    /// implementation-defined), so both paths write the same bits.
    Native,
}

/// Options of a mixed-precision arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PrecisionOptions {
    /// Use [`HalfPath::Packed`] even where the adapter offers `SHADER_F16` (for tests and
    /// comparisons); see [`ParamArena::half_path`](crate::ParamArena::half_path).
    pub force_packed: bool,
}

/// Packs 16-bit patterns two per `u32` (element `2k` in the low half), zero-padded to `words`
/// words.
pub fn pack_pairs(bits: &[u16], words: usize) -> Vec<u32> {
    let mut out = vec![0u32; words.max(bits.len().div_ceil(2))];
    for (k, &b) in bits.iter().enumerate() {
        out[k / 2] |= u32::from(b) << (16 * (k % 2));
    }
    out
}

/// Unpacks `n` 16-bit patterns from words packed by [`pack_pairs`].
pub fn unpack_pairs(words: &[u32], n: usize) -> Vec<u16> {
    (0..n.min(words.len() * 2))
        .map(|k| (words[k / 2] >> (16 * (k % 2))) as u16)
        .collect()
}

/// `data` rounded to `ty` (round to nearest even), as 16-bit patterns; empty for f32.
pub fn to_bits16(ty: StorageType, data: &[f32]) -> Vec<u16> {
    data.iter().filter_map(|&x| ty.to_bits16(x)).collect()
}

/// The f32 values of 16-bit patterns of `ty` (exact); empty for f32.
pub fn from_bits16(ty: StorageType, bits: &[u16]) -> Vec<f32> {
    bits.iter().filter_map(|&b| ty.from_bits16(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_and_pad_with_zero() {
        let bits = [1u16, 2, 3];
        let w = pack_pairs(&bits, 4);
        assert_eq!(w, vec![0x0002_0001, 3, 0, 0]);
        assert_eq!(unpack_pairs(&w, 3), bits);
    }

    #[test]
    fn bytes_per_element_count_the_storage_types() {
        // Adam: 16 read + 12 written in f32.
        assert_eq!(Precision::F32.bytes_per_element(28, 1), 28);
        assert_eq!(Precision::BF16.bytes_per_element(28, 1), 28);
        // LARS reads each gradient twice (norms, update).
        assert_eq!(Precision::F16.bytes_per_element(28, 2), 26);
    }

    #[test]
    fn mixed_combinations_are_checked() {
        assert!(Precision::F16.check().is_ok());
        assert!(Precision::BF16.check().is_ok());
        let bad = Precision {
            model: StorageType::F32,
            grads: StorageType::Bf16,
        };
        assert!(matches!(bad.check(), Err(crate::Error::Unsupported(_))));
        let f32_grads = Precision {
            model: StorageType::Bf16,
            grads: StorageType::F32,
        };
        assert!(f32_grads.check().is_ok());
        assert_eq!(f32_grads.bytes_per_element(28, 1), 30);
    }
}
